"""Hydra configs of fair-lightning (the canonical copy); a package so that Hydra can find them."""
