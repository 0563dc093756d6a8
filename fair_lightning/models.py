"""Small model builders that configs can name with ``_target_``.

The Hydra application (:mod:`fair_lightning.train`) builds the model as
``instantiate(cfg.model, in_features=datamodule.num_features)``, so a model config gives every
argument but the input width:

.. code-block:: yaml

    # fair_lightning/conf/model/mlp.yaml
    _target_: fair_lightning.models.MLP
    hidden: [64, 64]
    dropout: 0.1
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import nn

#: Activations known by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def _check_width(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    return int(value)


class MLP(nn.Sequential):
    """A multilayer perceptron returning one logit (or prediction) per sample, shape ``(N, 1)``,
    or ``(N, out_features)`` class logits.

    ``Linear -> activation -> Dropout`` for every hidden width, then ``Linear(..., out_features)``. It is an
    ``nn.Sequential`` ending in ``nn.Linear``, so
    :meth:`~fair_lightning.module.FairLightningModule.forward_with_representation` hands an
    adversary the last hidden layer (``adversary_input="representation"``).

    Args:
        in_features: width of the input (``TabularDataModule.num_features``).
        hidden: widths of the hidden layers; ``()`` gives logistic regression.
        dropout: dropout probability after every hidden activation, in ``[0, 1)``.
        activation: ``"relu"``, ``"gelu"``, ``"tanh"``, ``"silu"`` or ``"leaky_relu"``.
        out_features: width of the output: 1 (binary classification, regression) or ``K``
            (K-class logits; the Hydra application passes the data set's ``num_classes``).

    Raises:
        ValueError: a width that is not an int >= 1, ``dropout`` outside ``[0, 1)``, or an
            unknown ``activation`` (the valid names are listed).

    Example:
        >>> import torch
        >>> MLP(10, hidden=(32, 16))(torch.randn(4, 10)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128, 128),
        dropout: float = 0.0,
        activation: str = "relu",
        out_features: int = 1,
    ) -> None:
        in_features = _check_width(in_features, "in_features")
        out_features = _check_width(out_features, "out_features")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ValueError(f"`hidden` must be a sequence of ints, got {hidden!r}")
        widths = [_check_width(h, f"hidden[{i}]") for i, h in enumerate(hidden)]
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be a number in [0, 1), got {dropout!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = in_features
        for h in widths:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.in_features, self.hidden, self.dropout = in_features, tuple(widths), float(dropout)

    def __getitem__(self, idx: int | slice) -> nn.Module:
        # nn.Sequential rebuilds a slice with `self.__class__`, whose arguments differ here: slice into
        # a plain nn.Sequential (FairLightningModule.forward_with_representation uses `model[:-1]`)
        if isinstance(idx, slice):
            return nn.Sequential(*list(self._modules.values())[idx])
        return super().__getitem__(idx)


__all__ = ["ACTIVATIONS", "MLP"]
