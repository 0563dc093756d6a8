"""Gradient reversal and the default adversary for adversarial debiasing.

The adversary learns to predict the sensitive group from the model's logit (or representation,
and with the label as extra input for equalized odds), or to regress a continuous sensitive
attribute (``Adversarial(sensitive="continuous")``: one output, mean squared error); the
gradient reversal layer passes the
adversary's gradient back to the model multiplied by ``-strength``, so that one backward pass
trains the adversary to predict the group and the model to defeat it (Ganin & Lempitsky 2015).
Zhang et al. (2018) instead project the model's gradient onto the orthogonal complement of the
adversary's gradient (as fairlearn's ``AdversarialFairnessClassifier`` does); reversal is the
simpler, widely used alternative implemented here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class GradientReversalFunction(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-strength``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, strength: float) -> Tensor:
        ctx.strength = float(strength)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad_output, None


def gradient_reversal(x: Tensor, strength: float = 1.0) -> Tensor:
    """Functional gradient reversal."""
    return GradientReversalFunction.apply(x, strength)


class GradientReversalLayer(nn.Module):
    """Module form of :func:`gradient_reversal`; ``strength`` may be changed between steps."""

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        if strength < 0:
            raise ValueError(f"`strength` must be >= 0, got {strength}")
        self.strength = strength

    def forward(self, x: Tensor) -> Tensor:
        return gradient_reversal(x, self.strength)

    def extra_repr(self) -> str:
        return f"strength={self.strength}"


def make_adversary(in_features: int, num_groups: int, hidden: int = 32) -> nn.Module:
    """A small MLP ``in_features -> hidden -> num_groups`` (group logits; ``num_groups=1`` for the
    regression of a continuous attribute)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_groups))


__all__ = ["GradientReversalFunction", "GradientReversalLayer", "gradient_reversal", "make_adversary"]
