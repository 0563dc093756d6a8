"""``ERM``: empirical risk minimization, the unconstrained baseline (no fairness term)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fair_lightning.methods._base import FairnessMethod, register_method


@register_method("erm")
class ERM(FairnessMethod):
    """The task loss alone: the baseline every fairness method is compared with.

    Its term is 0, so that ``loss = task + method(logits, target, groups)`` works for every
    method; ``FairLightningModule`` does not even call it.
    """

    term_name = None

    def __init__(self, num_groups: int, *, group_names: Sequence[str] | None = None, num_classes: int | None = None) -> None:
        super().__init__(num_groups, group_names=group_names, num_classes=num_classes)

    @classmethod
    def requires_groups(cls) -> bool:
        return False

    def compute_term(self, logits: Tensor, target: Tensor | None, groups: Tensor, representation: Tensor | None) -> Tensor:
        return logits.new_zeros(())


__all__ = ["ERM"]
