"""``Adversarial``: an adversary predicts the group (or regresses a continuous sensitive attribute);
gradient reversal trains the model to defeat it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fair_lightning.adversarial import GradientReversalLayer, make_adversary
from fair_lightning.functional._rates import check_definition
from fair_lightning.methods._base import FairnessMethod, all_reduce_sum, check_number, register_method
from fair_lightning.schedules import EtaSchedule

ADVERSARY_INPUTS = ("logit", "representation")
#: what the sensitive argument of the call holds: integer group ids, or one real value per sample
SENSITIVE_KINDS = ("groups", "continuous")


@register_method("adversarial")
class Adversarial(FairnessMethod):
    """Adversarial debiasing through a gradient-reversal layer (Ganin & Lempitsky 2015).

    The term is the adversary's cross-entropy at predicting the group (with
    ``sensitive="continuous"``: its mean squared error at regressing a real-valued sensitive
    attribute, such as age or income); the reversal layer between
    model and adversary multiplies the gradient reaching the model by ``-eta``, so one backward
    pass trains the adversary to predict the group and the model to hide it. In an existing
    LightningModule, the adversary's parameters (``method.parameters()``) may simply join the
    model's optimizer (they do when it is built from ``self.parameters()``);
    ``FairLightningModule`` gives them their own Adam (:meth:`configure_optimizers`).

    A continuous attribute goes in the call's ``groups`` argument as a float tensor ``(N,)``:
    ``loss + self.fairness(logits, target, age)``. The adversary regresses it standardized by the
    running mean and variance of the training batches seen so far (buffers, so checkpoints carry
    them): its loss is then about 1 when the prediction carries no (learnable) information about
    the attribute and ``eta`` means the same whatever the attribute's units. This is the drop-in
    path; ``FairLightningModule`` needs integer groups for its metrics.

    Args:
        num_groups: number of groups; ``None`` (the default) with ``sensitive="continuous"``.
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
        sensitive: ``"groups"`` (integer group ids, the adversary classifies) or ``"continuous"``
            (a float attribute, the adversary regresses it; one output). For ``"continuous"``,
            ``"demographic_parity"`` asks the prediction to carry no information about the
            attribute, ``"equalized_odds"`` none beyond what the label carries.

    Raises:
        ValueError: a bad argument, named; in the call with ``sensitive="continuous"``, a
            ``groups`` that is not a float tensor of one finite value per sample.

    Example:
        >>> method = Adversarial(sensitive="continuous", eta=1.0)
        >>> logits, age = torch.randn(8), torch.randn(8)
        >>> method(logits, None, age).shape
        torch.Size([])
    """

    term_name = "train/adversary_loss"
    accepts_continuous = True

    def __init__(
        self,
        num_groups: int | None = None,
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
        sensitive: str = "groups",
    ) -> None:
        if sensitive not in SENSITIVE_KINDS:
            raise ValueError(f"`sensitive` must be one of {list(SENSITIVE_KINDS)}, got {sensitive!r}")
        if sensitive == "continuous" and num_groups is not None:
            raise ValueError(
                f"`num_groups` must be None with sensitive='continuous' (the adversary regresses one real value; "
                f"FairLightningModule, which needs groups for its metrics, cannot use it), got {num_groups!r}"
            )
        if sensitive == "groups" and num_groups is None:
            raise ValueError("`num_groups` is required (an int >= 2) unless sensitive='continuous', got None")
        super().__init__(num_groups, group_names=group_names, num_classes=num_classes)
        self.sensitive = sensitive
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
            outputs = 1 if sensitive == "continuous" else num_groups
            adversary = make_adversary(in_features + label_features, outputs, adversary_hidden)
        self.adversary = adversary
        if sensitive == "continuous":  # running statistics of the attribute, to standardize it (training batches)
            for name in ("sensitive_count", "sensitive_mean", "sensitive_m2"):
                self.register_buffer(name, torch.zeros((), dtype=torch.float64))

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
        if self.sensitive == "continuous":
            guess = self.adversary(features)
            if guess.ndim > 2 or guess.numel() != features.shape[0]:
                raise ValueError(
                    f"with sensitive='continuous' the `adversary` must return one value per sample, got shape {tuple(guess.shape)}"
                )
            loss = nn.functional.mse_loss(guess.reshape(-1), self._standardize(groups).to(guess.dtype))
        else:
            loss = nn.functional.cross_entropy(self.adversary(features), groups.reshape(-1).long())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the adversary loss is {loss.item()} at step {int(self.num_steps)}; lower `adversary_lr`")
        self._last = {"train/adversary_loss": loss.detach(), "train/eta": eta}
        return loss

    def _standardize(self, values: Tensor) -> Tensor:
        """``values`` standardized by the running mean and variance (updated first in training)."""
        values = values.detach().double()
        if self.training:  # Chan et al.'s merge of the (all ranks') batch moments into the running ones
            shift = self.sensitive_mean  # sums around the running mean: no cancellation for large values
            local = torch.stack((values.new_tensor(float(values.numel())), (values - shift).sum(), ((values - shift) ** 2).sum()))
            n, first, second = all_reduce_sum(local).unbind(0)
            if float(n) == 0:
                return values
            mean = shift + first / n
            m2 = second - first**2 / n
            total = self.sensitive_count + n
            delta = mean - self.sensitive_mean
            self.sensitive_m2.add_(m2 + delta**2 * self.sensitive_count * n / total)
            self.sensitive_mean.add_(delta * n / total)
            self.sensitive_count.copy_(total)
        if self.sensitive_count > 1:
            mean, var = self.sensitive_mean, self.sensitive_m2 / (self.sensitive_count - 1)
        elif values.numel() > 1:  # nothing seen in training yet: the batch's own moments
            mean, var = values.mean(), values.var()
        else:
            return values - values.mean()
        return (values - mean) / var.clamp_min(1e-12).sqrt()

    def _check_inputs(self, logits: Tensor, target: Tensor | None, groups: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        if self.sensitive != "continuous":
            return super()._check_inputs(logits, target, groups)
        from fair_lightning.functional._checks import as_vector
        from fair_lightning.losses import check_fairness_batch

        what = "`groups` (the continuous sensitive attribute, sensitive='continuous')"
        if not isinstance(groups, Tensor):
            raise ValueError(f"{what} must be a torch.Tensor, got {type(groups).__name__}")
        if not groups.is_floating_point():
            raise ValueError(
                f"{what} must be a floating-point tensor, got dtype {groups.dtype}: integer group ids need "
                "Adversarial(num_groups=...) (sensitive='groups'); a numeric attribute stored as integers, `.float()` it"
            )
        values = as_vector(groups, "groups")
        n = values.numel()
        if isinstance(logits, Tensor) and logits.ndim:  # samples of the predictions (checked below)
            n = logits.shape[0] if self.num_classes is not None else logits.numel()
        if values.numel() != n:
            raise ValueError(f"{what} must have one value per sample ({n}), got {values.numel()}")
        # the prediction and label checks, with a stand-in for the groups (every sample in one group)
        logits, target, _ = check_fairness_batch(
            logits, target, torch.zeros(n, dtype=torch.long, device=values.device), 1, self.num_classes,
            requires_target=self.requires_target, owner=type(self).__name__,
        )
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            raise ValueError(f"{what} must be finite, got {int((~finite).sum())} NaN or infinite values of {n}")
        return logits, target, values

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.adversary.parameters(), lr=self.adversary_lr)]


__all__ = ["ADVERSARY_INPUTS", "SENSITIVE_KINDS", "Adversarial"]
