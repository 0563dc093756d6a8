"""FairnessDashboard with a regression FairLightningModule: group statistics and prediction CDFs."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.callbacks import FairnessDashboard, prediction_cdf_figure, regression_statistics_figure
from fair_lightning.callbacks._dashboard import render
from fair_lightning.functional._regression import cdf_gap_from_histogram, prediction_histogram, regression_group_sums
from fair_lightning.module import FairLightningModule


def _data(n=600, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 3, generator=gen)
    x[:, 2] += g
    y = x[:, 0] + 1.5 * g + 0.3 * torch.randn(n, generator=gen)
    return x, y, g


def test_dashboard_draws_regression_figures_with_the_modules_cdf_edges(tmp_path):
    x, y, g = _data()
    train = DataLoader(TensorDataset(x[:400], y[:400], g[:400]), batch_size=100, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(x[400:], y[400:], g[400:]), batch_size=64)  # several batches: sums accumulate
    pl.seed_everything(0, verbose=False)
    module = FairLightningModule(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)), num_groups=2,
                                 group_names=["A", "B"], task="regression", value_range=(-4.0, 6.0), lr=1e-2)
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    dashboard = FairnessDashboard()
    trainer = pl.Trainer(max_epochs=2, logger=logger, callbacks=[dashboard], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train, val)
    trainer.test(module, val, verbose=False)
    events = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0})
    events.Reload()
    images = events.Tags()["images"]
    for tag, count in (("figures/val/group_rates", 2), ("figures/val/prediction_cdf", 2),
                       ("figures/test/group_rates", 1), ("figures/test/prediction_cdf", 1)):
        assert tag in images and len(events.Images(tag)) == count, tag
    # the CDFs are drawn on the module's cdf_gap edges, so the figure's largest gap is the logged one
    edges = module.val_metrics["cdf_gap"].bin_edges
    assert torch.equal(dashboard._edges, edges.double().cpu())
    with torch.no_grad():
        preds = module(x[400:]).reshape(-1).double()
    histogram = prediction_histogram(preds, g[400:], 2, edges)
    assert float(cdf_gap_from_histogram(histogram)) == pytest.approx(float(trainer.callback_metrics["test/cdf_gap"]), abs=1e-6)


def test_regression_figures_render_and_mark_the_largest_gap():
    preds = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    target = preds + 0.1
    sums = regression_group_sums(preds, target, groups, 2)
    figure = regression_statistics_figure(sums, ["A", "B"], title="val")
    assert "prediction gap 1.500" in figure.axes[0].get_title()
    edges = torch.linspace(-0.5, 3.0, 8, dtype=torch.float64)
    cdf = prediction_cdf_figure(prediction_histogram(preds, groups, 2, edges), edges, ["A", "B"], title="val")
    assert "largest CDF gap 1.000" in cdf.axes[0].get_title()
    image = render(cdf)
    assert image.ndim == 3 and image.shape[2] == 3 and np.ptp(image) > 0
    with pytest.raises(ValueError, match="`bin_edges` must be strictly increasing"):
        FairnessDashboard(bin_edges=[1.0, 0.0])
