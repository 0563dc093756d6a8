"""fair-lightning: fairness-aware training for PyTorch Lightning."""

__version__ = "0.1.0"
