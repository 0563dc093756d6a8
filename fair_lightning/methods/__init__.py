"""Fairness methods as objects: ``ERM``, ``Penalty``, ``Lagrangian``, ``Adversarial`` and, for
regression, ``BoundedGroupLossConstraint`` (``Penalty`` also takes the regression loss
``fairness="regression_demographic_parity"``).

Each method takes only its own arguments and works two ways:

* inside :class:`~fair_lightning.module.FairLightningModule` (``mode="lagrangian"`` picks the
  registered class by name, ``mode=Lagrangian(...)`` takes an instance);
* in any LightningModule with automatic optimization (the drop-in path)::

      self.fairness = Lagrangian(num_groups=2, tolerance=0.02)       # in __init__
      loss = task_loss + self.fairness(logits, target, groups)        # in training_step

  The multipliers' ascent runs after each optimizer step by itself; the state is in the
  module's checkpoint and DDP-synced.

A new method subclasses :class:`FairnessMethod` (one file here) and registers a name with
:func:`register_method`; add a yaml under ``fair_lightning/conf/fairness/`` for Hydra.
"""

# registration order is the order `mode` names are listed in
from fair_lightning.methods._base import METHODS, FairnessMethod, make_method, register_method
from fair_lightning.methods.erm import ERM  # isort: skip
from fair_lightning.methods.penalty import Penalty  # isort: skip
from fair_lightning.methods.lagrangian import Lagrangian  # isort: skip
from fair_lightning.methods.adversarial import Adversarial  # isort: skip
from fair_lightning.methods.bounded_group_loss import BoundedGroupLossConstraint  # isort: skip

__all__ = ["Adversarial", "BoundedGroupLossConstraint", "ERM", "FairnessMethod", "Lagrangian", "METHODS", "Penalty", "make_method", "register_method"]
