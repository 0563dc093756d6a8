"""Schedules for the fairness strength ``eta``: start training on accuracy, then phase fairness in."""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("constant", "linear", "step")


@dataclass(frozen=True)
class EtaSchedule:
    """``eta`` as a function of the primal step.

    * ``"constant"``: ``eta`` from the first step.
    * ``"linear"``: warm-up from 0 to ``eta`` over ``warmup_steps`` steps, then ``eta``.
    * ``"step"``: 0 for ``warmup_steps`` steps, then ``eta``.
    """

    eta: float
    kind: str = "constant"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)):
            raise ValueError(f"`eta` must be a number >= 0, got {self.eta!r} ({type(self.eta).__name__})")
        if not 0 <= self.eta < float("inf"):
            raise ValueError(f"`eta` must be >= 0, got {self.eta}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise ValueError(f"`eta_warmup_steps` must be an int >= 0, got {self.warmup_steps!r}")
        if self.kind not in SCHEDULES:
            raise ValueError(f"`eta_schedule` must be one of {list(SCHEDULES)}, got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"`eta_warmup_steps` must be >= 0, got {self.warmup_steps}")

    def __call__(self, step: int) -> float:
        if self.kind == "constant" or self.warmup_steps == 0:
            return self.eta
        if self.kind == "linear":
            return self.eta * min(1.0, step / self.warmup_steps)
        return self.eta if step >= self.warmup_steps else 0.0


__all__ = ["EtaSchedule", "SCHEDULES"]
