"""``FairLightningCLI``: a LightningCLI run from the example YAML with the group count, the group
names and the model's input width linked from the data module, and ``--optimizer`` /
``--lr_scheduler`` built into the module (the scheduler stepped, the method's own optimizers kept)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from fair_lightning.cli import FairLightningCLI, OptimizerFromConfig, SchedulerFromConfig
from fair_lightning.models import MLP

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "conf" / "cli_example.yaml"
#: biased_lending with 300 rows: 192 training rows, 3 features, groups A and B
TINY = ["--data.dataset_kwargs", "{n: 300, bias: 0.8}", "--data.batch_size", "64"]


def _args(tmp_path: Path, *extra: str, epochs: int = 2) -> list[str]:
    return [
        "fit", "--config", str(EXAMPLE), *TINY,
        "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        *extra,
    ]


def _lr(trainer: pl.Trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"]


def test_example_config_links_data_into_model_and_fits(tmp_path):
    cli = FairLightningCLI(args=_args(tmp_path, "--model.method_args", "{tolerance: 0.05}"))
    dm, module, trainer = cli.datamodule, cli.model, cli.trainer
    assert trainer.state.finished and trainer.current_epoch == 2
    # linked from the set-up data module: nothing of this is in the YAML
    body = "\n".join(line.split("#")[0] for line in EXAMPLE.read_text().splitlines())
    assert not {"num_groups", "group_names", "in_features"} & set(body.replace(":", " ").split())
    assert module.num_groups == dm.num_groups == 2
    assert module.group_names == dm.group_names == ["group=A", "group=B"]
    assert isinstance(module.model, MLP) and module.model.in_features == dm.num_features == 3
    assert module.model[0].weight.shape == (64, 3)  # hidden: [64, 64] from the YAML
    assert module.mode == "lagrangian" and set(module.constraint_state()["tolerance"]) == {0.05}
    assert int(module.method.num_steps) == 2 * 3  # two epochs of ceil(192 / 64) batches
    # optimizer: Adam(lr=0.003) from the YAML; StepLR(step_size=5): not yet decayed after 2 epochs
    assert isinstance(trainer.optimizers[0], torch.optim.Adam)
    assert _lr(trainer) == pytest.approx(0.003)
    assert module.hparams["num_groups"] == 2 and list(module.hparams["group_names"]) == ["group=A", "group=B"]


def test_lr_scheduler_option_is_stepped(tmp_path):
    cli = FairLightningCLI(args=_args(tmp_path, "--lr_scheduler.init_args.step_size", "1", "--lr_scheduler.init_args.gamma", "0.1"))
    trainer = cli.trainer
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.StepLR)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
    assert _lr(trainer) == pytest.approx(0.003 * 0.1**2)  # stepped once an epoch, twice


def test_lr_scheduler_alone_schedules_the_default_optimizer(tmp_path):
    """``--lr_scheduler`` without ``optimizer:`` (Lightning's own CLI would drop it silently)."""
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "data: {dataset: biased_lending}\n"
        "model:\n  model: {class_path: fair_lightning.models.MLP, init_args: {hidden: [8]}}\n  mode: penalty\n"
        "  method_args: {eta: 1.0}\n  lr: 0.02\n"
    )
    args = _args(tmp_path, "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "1",
                 "--lr_scheduler.gamma", "0.5")
    args[2] = str(config)
    cli = FairLightningCLI(args=args)
    assert cli.model.optimizer_factory is None
    assert isinstance(cli.model.lr_scheduler_factory, SchedulerFromConfig)
    assert isinstance(cli.trainer.optimizers[0], torch.optim.Adam)
    assert _lr(cli.trainer) == pytest.approx(0.02 * 0.5**2)


def test_optimizer_option_leaves_the_adversary_its_own_optimizer(tmp_path):
    cli = FairLightningCLI(args=_args(tmp_path, "--model.mode", "adversarial", "--model.method_args", "{eta: 1.0}",
                                      "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.05", epochs=1))
    module, trainer = cli.model, cli.trainer
    assert isinstance(module.optimizer_factory, OptimizerFromConfig)
    assert len(trainer.optimizers) == 2
    model_opt, adversary_opt = trainer.optimizers
    assert isinstance(model_opt, torch.optim.SGD) and model_opt.param_groups[0]["lr"] == pytest.approx(0.05)
    in_model_opt = {id(p) for g in model_opt.param_groups for p in g["params"]}
    assert in_model_opt == {id(p) for p in module.model.parameters()}
    assert {id(p) for g in adversary_opt.param_groups for p in g["params"]} == {id(p) for p in module.method.adversary.parameters()}


def test_optimizer_given_twice_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="`optimizer` or as `model.optimizer`"):
        FairLightningCLI(args=_args(tmp_path, "--model.optimizer", "torch.optim.SGD"))


class _NoGroupsDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()


def test_link_from_a_data_module_without_groups_names_the_attribute(tmp_path):
    with pytest.raises(ValueError, match=r"links `data\.num_\w+` into the model, but _NoGroupsDataModule has no"):
        FairLightningCLI(datamodule_class=_NoGroupsDataModule, args=["--model.mode", "erm"], run=False)


def test_link_data_must_be_bool():
    with pytest.raises(ValueError, match="link_data"):
        FairLightningCLI(link_data="yes", args=[], run=False)


def test_module_entry_point_runs_fit_in_a_new_process(tmp_path):
    """``python -m fair_lightning.cli fit --config ...``: a checkpoint of the linked model is written."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    args = _args(tmp_path, "--trainer.enable_checkpointing", "true", epochs=1)
    result = subprocess.run([sys.executable, "-m", "fair_lightning.cli", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    (ckpt,) = tmp_path.glob("**/*.ckpt")
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["num_groups"] == 2
    assert checkpoint["state_dict"]["model.0.weight"].shape == (64, 3)
    assert (tmp_path / "config.yaml").is_file()  # LightningCLI's SaveConfigCallback
