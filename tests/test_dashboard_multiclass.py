"""FairnessDashboard with a K-class FairLightningModule: per-class group-rate figure, HParams, no crash."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.callbacks import FairnessDashboard
from fair_lightning.callbacks._dashboard import group_rates_figure, render, run_hparams
from fair_lightning.functional import GroupSums, multiclass_group_sums
from fair_lightning.module import FairLightningModule

K, G = 4, 3
CLASSES = ["cat", "dog", "fish", "bird"]


def _data(n=600, seed=0):
    """Class 2 is more frequent in group 2; a feature leaks the group."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(0, G, (n,), generator=gen)
    x = torch.randn(n, 5, generator=gen)
    x[:, 4] += 1.5 * g
    score = torch.stack((x[:, 0], x[:, 1], x[:, 2] + 1.0 * g, x[:, 3]), 1) + 0.3 * torch.randn(n, K, generator=gen)
    return x, score.argmax(1), g


def _events(log_dir):
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_dashboard_with_k_classes_logs_figures_scalars_and_hparams(tmp_path):
    x, y, g = _data()
    train = DataLoader(TensorDataset(x[:400], y[:400], g[:400]), batch_size=100, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[400:], y[400:], g[400:]), batch_size=64)  # several batches: sums accumulate
    pl.seed_everything(0, verbose=False)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, K))
    module = FairLightningModule(model, num_groups=G, num_classes=K, class_names=CLASSES, group_names=["a", "b", "c"],
                                 mode="penalty", eta=1.0, lr=2e-2)
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, callbacks=[FairnessDashboard()],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train, val)
    val_dp = float(trainer.callback_metrics["val/dp_difference"])
    trainer.test(module, val, verbose=False)
    events = _events(logger.log_dir)

    images = events.Tags()["images"]
    for tag, count in (("figures/val/group_rates", 2), ("figures/val/reliability", 2),
                       ("figures/test/group_rates", 1), ("figures/test/reliability", 1)):
        assert tag in images and len(events.Images(tag)) == count, tag
    scalars = set(events.Tags()["scalars"])
    expected = {"val/dp_difference", "val/eo_difference", "val/accuracy", "val/selection_rate/fish/c",
                "hp/accuracy", "hp/dp_difference", "hp/eo_difference", "hp/test_accuracy", "hp/test_dp_difference"}
    assert expected <= scalars, expected - scalars
    assert events.Scalars("hp/dp_difference")[-1].value == pytest.approx(val_dp)
    assert events.Scalars("hp/test_dp_difference")[-1].value == pytest.approx(float(trainer.callback_metrics["test/dp_difference"]))

    hparams = {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
               for tag, content in events.PluginTagToContent("hparams").items()}
    session = hparams["_hparams_/session_start_info"].session_start_info
    assert session.hparams["mode"].string_value == "penalty"
    assert session.hparams["num_classes"].number_value == K
    assert "threshold" not in session.hparams  # K classes predict the argmax


def test_k_class_rates_figure_has_classes_on_the_x_axis_and_a_bar_per_group():
    x, y, g = _data(n=900)
    logits = torch.randn(len(y), K, generator=torch.Generator().manual_seed(1)) + 3 * nn.functional.one_hot(y, K)
    sums = multiclass_group_sums(logits, y, g, G, K, from_logits=True)
    figure = group_rates_figure(sums, ["a", "b", "c"], title="val, step 3", class_names=CLASSES)
    top, bottom = figure.axes[:2]
    assert [t.get_text() for t in bottom.get_xticklabels()] == CLASSES
    assert len(top.patches) == len(bottom.patches) == K * G
    heights = np.array([p.get_height() for p in top.patches]).reshape(G, K)  # drawn group by group
    np.testing.assert_allclose(heights, sums.selection_rate().value.T.numpy(), atol=1e-12)
    assert "largest gap" in top.get_title(loc="left")
    assert render(figure).ndim == 3
    with pytest.raises(ValueError, match="classes, groups"):
        group_rates_figure(GroupSums.from_stacked(sums.stack()[:, :2]), ["a", "b", "c"], class_names=CLASSES)


def test_run_hparams_for_k_classes():
    module = {"mode": "penalty", "eta": 2.0, "lr": 0.1, "threshold": 0.5, "num_classes": None}
    binary = run_hparams(module, {})
    assert "threshold" in binary and "num_classes" not in binary
    multi = run_hparams(module, {}, num_classes=10)
    assert multi["num_classes"] == 10 and "threshold" not in multi
    assert list(multi) == ["mode", "eta", "num_classes", "lr"]  # the mode's own settings, then num_classes
