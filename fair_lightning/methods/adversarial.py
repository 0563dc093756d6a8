"""``Adversarial``: an adversary predicts the group; gradient reversal trains the model to defeat it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fair_lightning.adversarial import GradientReversalLayer, make_adversary
from fair_lightning.functional._rates import check_definition
from fair_lightning.methods._base import FairnessMethod, check_number, register_method
from fair_lightning.schedules import EtaSchedule

ADVERSARY_INPUTS = ("logit", "representation")


@register_method("adversarial")
class Adversarial(FairnessMethod):
    """Adversarial debiasing through a gradient-reversal layer (Ganin & Lempitsky 2015).

    The term is the adversary's cross-entropy at predicting the group; the reversal layer between
    model and adversary multiplies the gradient reaching the model by ``-eta``, so one backward
    pass trains the adversary to predict the group and the model to hide it. In an existing
    LightningModule, the adversary's parameters (``method.parameters()``) may simply join the
    model's optimizer (they do when it is built from ``self.parameters()``);
    ``FairLightningModule`` gives them their own Adam (:meth:`configure_optimizers`).

    Args:
        num_groups: number of groups.
        fairness: the definition the adversary targets: ``"demographic_parity"`` (it sees the
            prediction only) or ``"equalized_odds"`` / ``"equal_opportunity"`` (it also sees the
            label, so the prediction may carry group information only through the label).
        eta: reversal strength, ``>= 0``.
        eta_schedule, eta_warmup_steps: schedule of ``eta`` (see :class:`~fair_lightning.schedules.EtaSchedule`).
        adversary: the adversary module (group logits out); default a small MLP.
        adversary_input: ``"logit"`` or ``"representation"`` (pass ``representation=`` to the call).
        representation_features: width of the representation, to size the default adversary.
        adversary_lr: learning rate of the adversary's own Adam (:meth:`configure_optimizers`).
        adversary_hidden: hidden width of the default adversary.
        group_names: names of the groups.
        num_classes: ``None`` (binary, one logit) or ``K`` for ``(N, K)`` logits: with
            ``adversary_input="logit"`` the adversary sees the ``K`` softmax probabilities (and,
            for equalized odds / equal opportunity, the one-hot label).
    """

    term_name = "train/adversary_loss"

    def __init__(
        self,
        num_groups: int,
        *,
        fairness: str = "demographic_parity",
        eta: float = 1.0,
        eta_schedule: str = "constant",
        eta_warmup_steps: int = 0,
        adversary: nn.Module | None = None,
        adversary_input: str = "logit",
        representation_features: int | None = None,
        adversary_lr: float = 1e-3,
        adversary_hidden: int = 32,
        group_names: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(num_groups, group_names=group_names, num_classes=num_classes)
        definition = check_definition(fairness, "fairness")
        if definition == "accuracy_parity":
            raise ValueError("`fairness` for the adversarial method must be one of demographic_parity, "
                             f"equal_opportunity, equalized_odds, got {fairness!r}")
        if adversary_input not in ADVERSARY_INPUTS:
            raise ValueError(f"`adversary_input` must be one of {list(ADVERSARY_INPUTS)}, got {adversary_input!r}")
        self.fairness = definition
        self.schedule = EtaSchedule(eta, eta_schedule, eta_warmup_steps)
        self.uses_label = definition != "demographic_parity"
        self.requires_target = self.uses_label
        self.adversary_input = adversary_input
        self.needs_representation = adversary_input == "representation"
        self.adversary_lr = check_number(adversary_lr, "adversary_lr", low=0, low_open=True)
        self.reversal = GradientReversalLayer(eta)
        if adversary is None:
            if adversary_input == "logit":
                in_features = self.num_classes or 1
            elif representation_features is None:
                raise ValueError(
                    "adversary_input='representation' with the default adversary needs `representation_features` "
                    "(the width of the representation), or pass `adversary=`"
                )
            else:
                in_features = int(representation_features)
            label_features = (self.num_classes or 1) if self.uses_label else 0
            adversary = make_adversary(in_features + label_features, num_groups, adversary_hidden)
        self.adversary = adversary

    @property
    def eta(self) -> float:
        """``eta`` at the current step of the schedule."""
        return self.schedule(int(self.num_steps))

    def compute_term(self, logits: Tensor, target: Tensor | None, groups: Tensor, representation: Tensor | None) -> Tensor:
        if self.needs_representation:
            if representation is None:
                raise ValueError("adversary_input='representation' needs `representation=` in the call")
            features = representation.reshape(representation.shape[0], -1)
        elif self.num_classes is not None:
            features = torch.softmax(logits, 1)
        else:
            features = logits.reshape(-1, 1)
        self.reversal.strength = eta = self.eta
        features = self.reversal(features)
        if self.uses_label:
            if self.num_classes is not None:
                label = nn.functional.one_hot(target.reshape(-1).long(), self.num_classes).to(features.dtype)
            else:
                label = target.reshape(-1, 1).to(features.dtype)
            features = torch.cat((features, label), 1)
        loss = nn.functional.cross_entropy(self.adversary(features), groups.reshape(-1).long())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the adversary loss is {loss.item()} at step {int(self.num_steps)}; lower `adversary_lr`")
        self._last = {"train/adversary_loss": loss.detach(), "train/eta": eta}
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.adversary.parameters(), lr=self.adversary_lr)]


__all__ = ["ADVERSARY_INPUTS", "Adversarial"]
