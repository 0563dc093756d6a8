"""``FairLightningCLI``: Lightning's command line for a :class:`~fair_lightning.module.FairLightningModule`.

``python -m fair_lightning.cli fit --config conf/cli_example.yaml`` trains from a YAML of the
usual LightningCLI shape (``data:``, ``model:``, ``trainer:``, ``optimizer:``,
``lr_scheduler:``). What it adds to :class:`~lightning.pytorch.cli.LightningCLI`:

* **Links from the data module.** The group count, the group names and the feature width exist
  only once a :class:`~fair_lightning.data.TabularDataModule` is set up; the CLI sets the data
  module up when it is instantiated (``setup("fit")``, which the Trainer's own call then finds
  done) and links ``data.num_groups -> model.num_groups``, ``data.group_names ->
  model.group_names`` and ``data.num_features -> model.model.init_args.in_features`` (the input
  width of a model given by ``class_path``, such as :class:`fair_lightning.models.MLP`). The YAML
  gives none of them.
* **``optimizer:`` and ``lr_scheduler:``** (``--optimizer``, ``--lr_scheduler``) build the
  model's optimizer and its scheduler through the module's ``optimizer``/``lr_scheduler``
  factories instead of Lightning's replacement of ``configure_optimizers``: the optimizer gets the
  model's parameters only (the method keeps its own optimizers, such as the adversary's), and the
  module steps the scheduler itself under manual optimization (once an epoch; Lightning's
  ``ReduceLROnPlateau`` with its ``monitor``). ``lr_scheduler:`` alone schedules the module's
  default Adam (``model.lr``).

The fairness method is chosen by name with its arguments in ``method_args``:

.. code-block:: yaml

    model:
      mode: lagrangian
      method_args: {tolerance: 0.02}
      model:
        class_path: fair_lightning.models.MLP
        init_args: {hidden: [64, 64]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple, instantiate_class
from torch import Tensor
from torch.optim import Optimizer

from fair_lightning.data import TabularDataModule
from fair_lightning.module import FairLightningModule

#: what the CLI links from the set-up data module: (attribute of the data module, target key)
DATA_LINKS = (
    ("num_groups", "model.num_groups"),
    ("group_names", "model.group_names"),
    ("num_features", "model.model.init_args.in_features"),
)


def _set_up(datamodule: LightningDataModule) -> LightningDataModule:
    setup = getattr(datamodule, "setup", None)
    if callable(setup):
        setup("fit")  # TabularDataModule.setup runs once; the Trainer's later call returns at once
    return datamodule


def _data_attribute(name: str):
    def compute(datamodule: LightningDataModule) -> Any:
        if not hasattr(type(datamodule), name) and not hasattr(datamodule, name):
            raise ValueError(
                f"FairLightningCLI links `data.{name}` into the model, but {type(datamodule).__name__} has no "
                f"`{name}`; use a TabularDataModule or pass `link_data=False` and give the value in the config"
            )
        value = getattr(_set_up(datamodule), name)
        return list(value) if name == "group_names" else value

    compute.__name__ = f"data_{name}"
    return compute


def _as_dict(init: Any) -> dict[str, Any]:
    return init.as_dict() if hasattr(init, "as_dict") else dict(init)


class OptimizerFromConfig:
    """``params -> optimizer`` from a ``{"class_path": ..., "init_args": ...}`` (picklable)."""

    def __init__(self, init: Mapping[str, Any]) -> None:
        self.init = _as_dict(init)

    def __call__(self, params: Iterable[Tensor]) -> Optimizer:
        return instantiate_class(params, self.init)

    def __repr__(self) -> str:
        return f"OptimizerFromConfig({self.init!r})"


class SchedulerFromConfig:
    """``optimizer -> scheduler`` from a ``{"class_path": ..., "init_args": ...}`` (picklable).

    A scheduler with a ``monitor`` (Lightning's CLI ``ReduceLROnPlateau``) comes back as
    Lightning's scheduler config ``{"scheduler": ..., "monitor": ...}``.
    """

    def __init__(self, init: Mapping[str, Any]) -> None:
        self.init = _as_dict(init)

    def __call__(self, optimizer: Optimizer) -> Any:
        scheduler = instantiate_class(optimizer, self.init)
        monitor = getattr(scheduler, "monitor", None)
        if monitor is not None:
            return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor}
        return scheduler

    def __repr__(self) -> str:
        return f"SchedulerFromConfig({self.init!r})"


class FairLightningCLI(LightningCLI):
    """:class:`~lightning.pytorch.cli.LightningCLI` for a fairness module and a tabular data module.

    Defaults to ``FairLightningCLI(FairLightningModule, TabularDataModule)``; every argument of
    :class:`~lightning.pytorch.cli.LightningCLI` is accepted. See the module docstring.

    Args:
        model_class: the LightningModule (a :class:`FairLightningModule` or a subclass, for the
            ``optimizer:``/``lr_scheduler:`` handling).
        datamodule_class: the data module; with ``link_data`` it must have ``num_groups``,
            ``group_names`` and ``num_features`` once set up.
        link_data: link the group count, the group names and the model's input width from the
            data module (see above). ``False`` leaves them to the config.
        auto_configure_optimizers: add the ``optimizer:`` and ``lr_scheduler:`` options.
        *args, **kwargs: passed on to :class:`~lightning.pytorch.cli.LightningCLI`.
    """

    def __init__(
        self,
        model_class: type[LightningModule] | None = FairLightningModule,
        datamodule_class: type[LightningDataModule] | None = TabularDataModule,
        *args: Any,
        link_data: bool = True,
        auto_configure_optimizers: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(link_data, bool):
            raise ValueError(f"`link_data` must be a bool, got {link_data!r}")
        self.link_data = link_data
        self.fair_optimizers = bool(auto_configure_optimizers)
        # Lightning's own automatic optimizer replaces `configure_optimizers` with one optimizer over
        # all parameters (the adversary's included) and no stepping under manual optimization:
        # the options are added here and handed to the module's factories instead.
        super().__init__(model_class, datamodule_class, *args, auto_configure_optimizers=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.link_data:
            for name, target in DATA_LINKS:
                parser.link_arguments("data", target, compute_fn=_data_attribute(name), apply_on="instantiate")
        if self.fair_optimizers:
            parser.add_optimizer_args((Optimizer,))
            parser.add_lr_scheduler_args(LRSchedulerTypeTuple)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if not self.fair_optimizers:
            return
        config = self.config_init.get(str(self.subcommand), self.config_init)
        optimizer, scheduler = config.get("optimizer"), config.get("lr_scheduler")
        if optimizer is None and scheduler is None:
            return
        model = self.model
        if not hasattr(model, "optimizer_factory") or not hasattr(model, "lr_scheduler_factory"):
            raise ValueError(
                f"`optimizer`/`lr_scheduler` of FairLightningCLI configure a FairLightningModule; "
                f"{type(model).__name__} is not one (give its optimizers in its own `configure_optimizers`)"
            )
        for key, value, attribute, make in (
            ("optimizer", optimizer, "optimizer_factory", OptimizerFromConfig),
            ("lr_scheduler", scheduler, "lr_scheduler_factory", SchedulerFromConfig),
        ):
            if value is None:
                continue
            if getattr(model, attribute) is not None:
                raise ValueError(f"give the model's {key} either as `{key}` or as `model.{key}`, not both")
            setattr(model, attribute, make(value))


def main(args: list[str] | None = None) -> None:
    """``python -m fair_lightning.cli {fit,validate,test,predict} --config cfg.yaml`` (also the
    ``fair-lightning-cli`` console script)."""
    FairLightningCLI(args=args)


__all__ = ["DATA_LINKS", "FairLightningCLI", "OptimizerFromConfig", "SchedulerFromConfig", "main"]

if __name__ == "__main__":
    main()
