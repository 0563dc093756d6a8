import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from fair_lightning.callbacks import ConstrainedModelSelection
from fair_lightning.functional import demographic_parity_difference
from tests._ddp import DestroyProcessGroup

# per epoch: (weight, bias of group 0, bias of group 1) of logits = weight * x + bias[group];
# epoch 0 unfair, 1 and 2 fair (2 the more accurate), 3 (the last) more accurate still but unfair
SCHEDULE = [(0.5, -2.0, 2.0), (1.0, 0.2, 0.2), (3.0, 0.0, 0.0), (4.0, 0.6, -0.4)]


def _data(n=800, seed=0):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, generator=gen)
    y = (x + 0.8 * torch.randn(n, generator=gen) > 0).float()
    return x, y, groups


class Oscillating(pl.LightningModule):
    """A plain LightningModule whose weights follow SCHEDULE (an injected oscillation; lr 0)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x, groups):
        return self.weight * x + self.bias[groups]

    def on_train_epoch_start(self):
        w, b0, b1 = SCHEDULE[self.current_epoch]
        with torch.no_grad():
            self.weight.fill_(w)
            self.bias.copy_(torch.tensor([b0, b1]))

    def training_step(self, batch, batch_idx):
        return (self.weight * 0).sum() + (self.bias * 0).sum()

    def validation_step(self, batch, batch_idx):
        x, y, groups = batch
        logits = self(x, groups)
        self.log("val_neg_acc", -((logits > 0).float() == y).float().mean(), on_epoch=True)
        return {"logits": logits, "target": y, "groups": groups}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _loaders():
    data = TensorDataset(*_data())
    return DataLoader(data, batch_size=200), DataLoader(data, batch_size=200)


def _expected(tolerance):
    """(accuracy, dp difference) of each epoch, computed independently of the callback."""
    x, y, groups = _data()
    out = []
    for w, b0, b1 in SCHEDULE:
        preds = ((w * x + torch.tensor([b0, b1])[groups]) > 0).float()
        out.append((float((preds == y).float().mean()), float(demographic_parity_difference(preds, groups, 2))))
    return out


def _trainer(tmp_path, callbacks, epochs=4, **kwargs):
    return pl.Trainer(
        max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, default_root_dir=tmp_path, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


def test_restores_the_best_feasible_epoch_not_the_last(tmp_path):
    tol = 0.1
    expected = _expected(tol)
    feasible = [i for i, (_, dp) in enumerate(expected) if dp <= tol]
    assert expected[-1][1] > tol and feasible  # the injected oscillation: last infeasible, earlier feasible
    best = max(feasible, key=lambda i: expected[i][0])
    assert expected[-1][0] > expected[best][0]  # the last epoch is the most accurate one

    selection = ConstrainedModelSelection([("demographic_parity", tol)])
    module = Oscillating()
    _trainer(tmp_path, [selection], enable_checkpointing=False).fit(module, *_loaders())
    assert selection.best_epoch == best == 2
    assert "best validation accuracy" in selection.reason
    w, b0, b1 = SCHEDULE[best]
    assert float(module.weight) == w and module.bias.tolist() == [b0, b1]
    table = selection.report()
    assert table["objective"].tolist() == pytest.approx([acc for acc, _ in expected])
    assert table["difference/demographic_parity"].tolist() == pytest.approx([dp for _, dp in expected])
    assert table["chosen"].tolist() == [i == best for i in range(4)]


def test_monitor_mode_keep_and_least_violating_fallback(tmp_path):
    expected = _expected(0.0)
    selection = ConstrainedModelSelection({"demographic_parity": 0.0}, monitor="val_neg_acc", mode="min", keep=1)
    module = Oscillating()
    _trainer(tmp_path, [selection], enable_checkpointing=False).fit(module, *_loaders())
    least = min(range(4), key=lambda i: (expected[i][1], -expected[i][0]))
    if expected[least][1] > 0:
        assert "no validation run meets every constraint" in selection.reason
    assert selection.best_epoch == least
    assert len(selection.snapshots) <= 2
    assert selection.report()["objective"].tolist() == pytest.approx([-acc for acc, _ in expected])


def test_mixture_meets_the_constraint_in_expectation(tmp_path):
    selection = ConstrainedModelSelection([("demographic_parity", 0.1)])
    _trainer(tmp_path, [selection], enable_checkpointing=False).fit(Oscillating(), *_loaders())
    mixture = selection.mixture()
    weights = [w for w, _, _ in mixture]
    assert sum(weights) == pytest.approx(1.0) and len(mixture) <= 1 + 2  # at most (active constraints + 1)
    by_epoch = {r["epoch"]: r for r in selection.records}
    rate = sum(w * by_epoch[e]["rates"]["selection_rate"] for w, e, _ in mixture)
    assert float(rate.max() - rate.min()) <= 0.1 + 1e-9
    objective = sum(w * by_epoch[e]["objective"] for w, e, _ in mixture)
    assert objective >= by_epoch[selection.best_epoch]["objective"] - 1e-9  # never worse than the best single one


def test_checkpoint_resume_reproduces_an_uninterrupted_run(tmp_path):
    straight = ConstrainedModelSelection([("demographic_parity", 0.1)])
    _trainer(tmp_path / "a", [straight], enable_checkpointing=False).fit(Oscillating(), *_loaders())

    first = ConstrainedModelSelection([("demographic_parity", 0.1)])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path / "b", [first, ckpt], epochs=2).fit(Oscillating(), *_loaders())
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert len(state["records"]) == 2 and set(state["snapshots"]) == {0, 1}

    resumed = ConstrainedModelSelection([("demographic_parity", 0.1)])
    module = Oscillating()
    _trainer(tmp_path / "b", [resumed]).fit(module, *_loaders(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.report().drop(columns=["step"]).equals(straight.report().drop(columns=["step"]))
    assert float(module.weight) == SCHEDULE[straight.best_epoch][0]


def test_argument_errors():
    with pytest.raises(ValueError, match="`constraints` must be"):
        ConstrainedModelSelection([("parity", 0.1)])
    with pytest.raises(ValueError, match="`constraints` must be"):
        ConstrainedModelSelection([("demographic_parity", -1)])
    with pytest.raises(ValueError, match="`mode` must be 'max' or 'min', got 'up'"):
        ConstrainedModelSelection(mode="up")
    with pytest.raises(ValueError, match="`keep` must be an int >= 1 or None, got 0"):
        ConstrainedModelSelection(keep=0)


class _Report(pl.Callback):
    def __init__(self, selection, out_dir, tag=""):
        self.selection, self.out_dir, self.tag = selection, out_dir, tag

    def on_fit_end(self, trainer, pl_module):
        torch.save({"best": self.selection.best_epoch, "objective": [r["objective"] for r in self.selection.records],
                    "thresholds": [r.get("thresholds") for r in self.selection.records]},
                   self.out_dir / f"{self.tag}rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_ddp_chooses_the_same_epoch_as_one_process(tmp_path):
    # and with group thresholds judged by cross-fitting: the folds do not depend on how the rows
    # were split across ranks, so the cross-fitted accuracies equal one process's
    single = ConstrainedModelSelection([("demographic_parity", 0.1)])
    single_thr = ConstrainedModelSelection([("demographic_parity", 0.05)], thresholds=True, restore=False)
    _trainer(tmp_path / "single", [single, single_thr], enable_checkpointing=False).fit(Oscillating(), *_loaders())
    selection = ConstrainedModelSelection([("demographic_parity", 0.1)])
    with_thr = ConstrainedModelSelection([("demographic_parity", 0.05)], thresholds=True, restore=False)
    trainer = _trainer(
        tmp_path / "ddp", [selection, with_thr, _Report(selection, tmp_path), _Report(with_thr, tmp_path, "thr"),
                           DestroyProcessGroup()],
        enable_checkpointing=False, strategy="ddp_spawn", accelerator="cpu", devices=2,
    )  # fmt: skip
    module = Oscillating()
    trainer.fit(module, *_loaders())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["best"] == single.best_epoch
    assert ranks[0]["objective"] == pytest.approx([r["objective"] for r in single.records], abs=1e-12)
    thr = [torch.load(tmp_path / f"thrrank{r}.pt") for r in range(2)]
    assert thr[0] == thr[1]
    assert thr[0]["best"] == single_thr.best_epoch
    assert thr[0]["thresholds"] == [r["thresholds"] for r in single_thr.records]
    assert thr[0]["objective"] == pytest.approx([r["objective"] for r in single_thr.records], abs=1e-12)
    assert float(module.weight) == SCHEDULE[single.best_epoch][0]  # rank zero's restored weights come back


def test_thresholds_option_judges_each_epoch_after_group_thresholds(tmp_path):
    """With ``thresholds=True`` every epoch is judged after per-group thresholds fitted on the
    validation outputs at the tolerance: the unfair but accurate last epoch becomes feasible, is
    chosen, and its thresholds are set on the module (equal to fitting them directly)."""
    from fair_lightning.postprocessing import GroupThresholds

    tol = 0.05
    selection = ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True, margin=0.0)
    cautious = ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True, restore=False, margin=1.0)
    module = Oscillating()
    train, val = _loaders()
    _trainer(tmp_path, [selection, cautious]).fit(module, train, val)
    # aiming at tolerance - 1 SE (SE of a 50/50 split of 800 rows: about 0.035) leaves room below the tolerance
    for exact, careful in zip(selection.records, cautious.records):
        assert careful["difference/demographic_parity"] <= exact["difference/demographic_parity"] + 1e-12
        assert careful["difference/demographic_parity"] <= tol - 0.02
    assert all(r["feasible"] for r in selection.records)
    assert all(r["difference/demographic_parity"] <= tol + 1e-12 for r in selection.records)
    best = max(range(len(selection.records)), key=lambda i: selection.records[i]["objective"])
    assert selection.best_index == best
    x, y, groups = _data()
    w, b0, b1 = SCHEDULE[selection.best_epoch]
    probs = torch.sigmoid(w * x + torch.tensor([b0, b1])[groups]).double()
    direct = GroupThresholds("demographic_parity", tolerance=tol).fit(probs, y.long(), groups, 2)
    assert module.prediction_thresholds is not None
    torch.testing.assert_close(module.prediction_thresholds.predict(probs, groups), direct.predict(probs, groups))
    state = selection.state_dict()
    fresh = ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True)
    fresh.load_state_dict(state)
    assert set(fresh.threshold_states) == set(selection.threshold_states)
    with pytest.raises(ValueError, match="one constraint"):
        ConstrainedModelSelection([("demographic_parity", 0.1), ("equal_opportunity", 0.1)], thresholds=True)


def test_thresholds_are_judged_by_their_cross_fitted_accuracy(tmp_path):
    """Thresholds fitted on the validation rows look better there than they are: each run records
    the snapshot's own accuracy, the thresholds' in-sample accuracy and their cross-fitted one
    (lower), and is judged with thresholds only where they win on the cross-fitted accuracy. The
    module gets thresholds exactly when the chosen run used them."""
    from fair_lightning.postprocessing import GroupThresholds

    tol = 0.1
    expected = _expected(tol)
    selection = ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True)
    module = Oscillating()
    _trainer(tmp_path, [selection]).fit(module, *_loaders())
    for record, (accuracy, dp) in zip(selection.records, expected):
        assert record["objective/own"] == pytest.approx(accuracy, abs=1e-6)
        # the snapshot's own 0.5 threshold is among the candidates whenever it is feasible
        if dp <= tol:
            assert record["objective/thresholds_in_sample"] >= record["objective/own"] - 1e-12
        # out of fold, the thresholds lose some of their in-sample accuracy on these 800 rows
        assert record["objective/thresholds"] < record["objective/thresholds_in_sample"]
        if not record["thresholds"]:
            assert dp <= tol and record["objective"] == record["objective/own"]
            assert record["objective/own"] >= record["objective/thresholds"]
        else:
            assert record["objective"] == record["objective/thresholds"]
            assert record["objective/thresholds"] > record["objective/own"] or dp > tol
    assert selection.records[0]["thresholds"] and selection.records[3]["thresholds"]  # unfair: thresholds
    assert all(r["feasible"] for r in selection.records)
    best = max(range(4), key=lambda i: selection.records[i]["objective"])
    assert selection.best_index == best
    chosen = selection.records[best]
    assert selection.uses_thresholds() == chosen["thresholds"]
    # the module applies what the run was judged with: its thresholds, or its own shared 0.5
    shared = bool((module.prediction_thresholds.thresholds_ == 0.5).all())
    assert shared != chosen["thresholds"]
    # the same rows in another order (as another DDP split would gather them): the same records
    x, y, groups = _data()
    order = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(1))
    shuffled = DataLoader(TensorDataset(x[order], y[order], groups[order]), batch_size=200)
    again = ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True, restore=False)
    _trainer(tmp_path / "again", [again]).fit(Oscillating(), _loaders()[0], shuffled)
    for a, b in zip(selection.records, again.records):
        assert a["objective"] == pytest.approx(b["objective"], abs=1e-12) and a["thresholds"] == b["thresholds"]
    # cv_folds=0: thresholds judged on the rows they were fitted on and always applied (0.1)
    in_sample = ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True, restore=False, cv_folds=0)
    _trainer(tmp_path / "in_sample", [in_sample]).fit(Oscillating(), *_loaders())
    assert set(in_sample.threshold_states) == {0, 1, 2, 3}
    assert all("thresholds" not in r for r in in_sample.records)
    for a, b in zip(in_sample.records, selection.records):
        assert a["objective"] == pytest.approx(b["objective/thresholds_in_sample"], abs=1e-12)
    # labels that are the sign of x: epoch 2 (logits 3x) is exact and fair, thresholds cannot beat it
    x, y, groups = _data()
    exact = DataLoader(TensorDataset(x, (x > 0).float(), groups), batch_size=200)
    plain = ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True, restore=False)
    _trainer(tmp_path / "exact", [plain]).fit(Oscillating(), exact, exact)
    assert plain.records[2]["objective/own"] == 1.0 and not plain.records[2]["thresholds"]
    assert plain.best_epoch == 2 and not plain.uses_thresholds()
    own = GroupThresholds.from_state_dict(plain.threshold_states[plain.best_index])
    torch.testing.assert_close(own.predict(torch.sigmoid(3 * x.double()), groups).double(), (x > 0).double())
    # too few validation rows to cross-fit over 5 folds: a clear error, not a silent estimate
    tiny = DataLoader(TensorDataset(x[:6], y[:6], groups[:6]), batch_size=6)
    with pytest.raises(ValueError, match=r"cv_folds=5\) cross-fits .* needs at least 10 of them; got 6"):
        _trainer(tmp_path / "tiny", [ConstrainedModelSelection([("demographic_parity", tol)], thresholds=True)]).fit(
            Oscillating(), _loaders()[0], tiny
        )
    for bad in (1, -2, 2.5, True, "5"):
        with pytest.raises(ValueError, match=r"`cv_folds` must be 0 \(no cross-fitting\) or an int >= 2, got"):
            ConstrainedModelSelection(thresholds=True, cv_folds=bad)


def test_certification_at_a_stated_confidence(tmp_path):
    """Each record says whether its constraint is certified at `confidence` on validation, exactly as
    constraint_holds (simultaneous intervals) says on the same sums; the verdict warns when the chosen
    model meets the tolerance but cannot be certified, and is silent when it is certified."""
    from fair_lightning.functional import GroupSums, confusion_counts, constraint_holds

    x, y, groups = _data()
    tol = 0.1
    selection = ConstrainedModelSelection([("demographic_parity", tol)], restore=False, confidence=0.9)
    trainer = _trainer(tmp_path, [selection])
    with pytest.warns(UserWarning, match=r"cannot be certified at 90% confidence"):
        trainer.fit(Oscillating(), *_loaders())
    for record, (w, b0, b1) in zip(selection.records, SCHEDULE):
        preds = (w * x + torch.tensor([b0, b1])[groups]) > 0
        sums = GroupSums.from_confusion(confusion_counts(preds, y.long(), groups, 2))
        verdict = constraint_holds(sums, "demographic_parity", tol, 0.9, method="conservative")
        assert record["certified/demographic_parity"] == verdict.status
        assert record["ci_high/demographic_parity"] == pytest.approx(float(verdict.interval.high))
    # 800 rows cannot certify 0.1 (the chosen epoch meets it on validation)
    chosen = selection.records[selection.best_index]
    assert chosen["feasible"] and chosen["certified/demographic_parity"] == "uncertain"
    # a tolerance the interval clears: certified, no certification warning
    loose = ConstrainedModelSelection([("demographic_parity", 0.5)], restore=False)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, [loose]).fit(Oscillating(), *_loaders())
    assert loose.records[loose.best_index]["certified/demographic_parity"] == "holds"
    assert not [w for w in caught if "certified" in str(w.message)]
    with pytest.raises(ValueError, match=r"`confidence` must be a level in \(0, 1\), got 1.5"):
        ConstrainedModelSelection(confidence=1.5)


class OscillatingRegressor(Oscillating):
    """A plain regression LightningModule (``task = "regression"``) whose weights follow SCHEDULE."""

    task = "regression"

    def validation_step(self, batch, batch_idx):
        x, y, groups = batch
        preds = self(x, groups)
        self.log("val_mse", ((preds - y) ** 2).mean(), on_epoch=True)
        return {"logits": preds, "target": y, "groups": groups}


def _regression_loaders():
    x, _, groups = _data()
    y = 2.0 * x + 0.5 * groups + 0.3 * torch.randn(len(x), generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, y, groups)
    return DataLoader(data, batch_size=200), DataLoader(data, batch_size=200)


@pytest.mark.ddp
def test_ddp_regression_selection_records_the_one_process_values(tmp_path):
    """Selection on a regression model's group MSEs gathers every rank's rows: the records (and the
    chosen epoch) under 2-process DDP equal one process's."""
    constraints = [("bounded_group_loss", 1.5), ("demographic_parity", 1.0)]
    single = ConstrainedModelSelection(constraints)
    _trainer(tmp_path / "single", [single], enable_checkpointing=False).fit(OscillatingRegressor(), *_regression_loaders())
    assert single.records[0]["objective_name"] == "minus the validation MSE"
    selection = ConstrainedModelSelection(constraints)
    trainer = _trainer(
        tmp_path / "ddp", [selection, _Report(selection, tmp_path), DestroyProcessGroup()], enable_checkpointing=False,
        strategy="ddp_spawn", accelerator="cpu", devices=2,
    )  # fmt: skip
    trainer.fit(OscillatingRegressor(), *_regression_loaders())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["best"] == single.best_epoch
    assert ranks[0]["objective"] == pytest.approx([r["objective"] for r in single.records], rel=1e-6)


def test_choose_run_ships_across_runs_by_the_epoch_rule(tmp_path):
    """Across runs judged against the same constraints, choose_run orders their summaries as the
    selection orders epochs: feasible and non-constant first by objective, then feasible constant,
    then the least violating; ties to the first; different constraints are refused."""
    from fair_lightning.callbacks import choose_run, rank_key

    c = [["demographic_parity", 0.05]]
    feasible = {"feasible": True, "max_violation": -0.01, "objective": 0.80, "constant": False, "constraints": c}
    better = {**feasible, "objective": 0.82}
    constant = {**feasible, "objective": 0.90, "constant": True}
    violating = {"feasible": False, "max_violation": 0.03, "objective": 0.95, "constant": False, "constraints": c}
    less = {**violating, "max_violation": 0.01, "objective": 0.70}
    assert choose_run([feasible, better, constant, violating]) == 1
    assert choose_run([constant, violating]) == 0  # a feasible constant predictor before a violation
    assert choose_run([violating, less]) == 1  # the least violating, whatever its objective
    assert choose_run([feasible, dict(feasible)]) == 0  # ties: the first
    assert choose_run([feasible, better], maximize=False) == 0  # e.g. a monitored loss
    assert rank_key(better) < rank_key(feasible) < rank_key(constant) < rank_key(less) < rank_key(violating)
    with pytest.raises(ValueError, match="different constraints"):
        choose_run([feasible, {**better, "constraints": [["demographic_parity", 0.02]]}])
    with pytest.raises(ValueError, match="at least one run"):
        choose_run([])
    # a fitted selection's summary is such a record, and the same rule picks its own epoch
    selection = ConstrainedModelSelection([("demographic_parity", 0.1)], thresholds=True, restore=False)
    _trainer(tmp_path, [selection]).fit(Oscillating(), *_loaders())
    summary = selection.summary()
    chosen = selection.records[selection.best_index]
    assert summary["epoch"] == selection.best_epoch and summary["objective"] == chosen["objective"]
    assert summary["constraints"] == [["demographic_parity", 0.1]] and summary["thresholds"] == selection.uses_thresholds()
    per_epoch = [{**summary, **{k: r[k] for k in ("objective", "feasible", "max_violation", "constant")}} for r in selection.records]
    assert choose_run(per_epoch) == selection.best_index
    assert ConstrainedModelSelection().summary() == {}


def test_checkpoint_resume_keeps_the_thresholds_judgement(tmp_path):
    """With thresholds judged by cross-fitting, a run resumed from a mid-fit checkpoint (loaded
    with weights_only=True) makes the same records, choice and module thresholds as one that was
    not interrupted."""
    def make():
        return ConstrainedModelSelection([("demographic_parity", 0.05)], thresholds=True)

    straight, module_a = make(), Oscillating()
    _trainer(tmp_path / "a", [straight], enable_checkpointing=False).fit(module_a, *_loaders())
    first = make()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path / "b", [first, ckpt], epochs=2).fit(Oscillating(), *_loaders())
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert set(state["threshold_states"]) == {0, 1} and all("thresholds" in r for r in state["records"])
    resumed, module_b = make(), Oscillating()
    _trainer(tmp_path / "b", [resumed]).fit(module_b, *_loaders(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.best_epoch == straight.best_epoch and resumed.uses_thresholds() == straight.uses_thresholds()
    assert resumed.report().drop(columns=["step"]).equals(straight.report().drop(columns=["step"]))
    x, _, groups = _data()
    probs = torch.sigmoid(module_a(x, groups)).double()
    torch.testing.assert_close(module_b.prediction_thresholds.predict(probs, groups),
                               module_a.prediction_thresholds.predict(probs, groups))


class _SaveReturned(pl.Callback):
    """Rank 0's returned model at the end of fit: weights and group thresholds."""

    def __init__(self, path):
        self.path = path

    def on_fit_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            thresholds = pl_module.prediction_thresholds
            torch.save({"weights": {k: v.clone() for k, v in pl_module.model.state_dict().items()},
                        "thresholds": None if thresholds is None else thresholds.state_dict()}, self.path)


@pytest.mark.ddp
def test_ddp_spawn_returns_the_selected_thresholds_to_the_calling_process(tmp_path):
    """Under ``ddp_spawn`` only ``state_dict()`` comes back from the workers: a FairLightningModule's
    group thresholds are part of it, so the calling process's module predicts with the selected
    epoch's weights *and* thresholds (they were lost before)."""
    from fair_lightning.module import FairLightningModule

    x, y, groups = _data()
    data = TensorDataset((x + 0.8 * groups).unsqueeze(1), y, groups)  # an unfair feature
    torch.manual_seed(0)
    module = FairLightningModule(torch.nn.Linear(1, 1), num_groups=2, lr=0.05, grad_ratio_every_n_steps=0)
    selection = ConstrainedModelSelection([("demographic_parity", 0.02)], thresholds=True)
    trainer = _trainer(tmp_path, [selection, _SaveReturned(tmp_path / "rank0.pt"), DestroyProcessGroup()], epochs=2,
                       enable_checkpointing=False, strategy="ddp_spawn", accelerator="cpu", devices=2)
    trainer.fit(module, DataLoader(data, batch_size=100), DataLoader(data, batch_size=100))
    worker = torch.load(tmp_path / "rank0.pt")
    assert worker["thresholds"] is not None
    assert module.prediction_thresholds is not None
    returned = module.prediction_thresholds.state_dict()
    assert returned.keys() == worker["thresholds"].keys()
    for key, value in worker["thresholds"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(returned[key], value, rtol=0, atol=0)
        else:
            assert returned[key] == value, key
    for key, value in worker["weights"].items():
        torch.testing.assert_close(module.model.state_dict()[key], value, rtol=0, atol=0)


class _CatchWarnings(pl.Callback):
    """Records the warnings of fit in the worker (a worker's warnings never reach the caller)."""

    def on_fit_start(self, trainer, pl_module):
        import warnings

        self.catcher = warnings.catch_warnings(record=True)
        self.caught = self.catcher.__enter__()
        warnings.simplefilter("always")


class _SaveCaught(pl.Callback):
    """After the callbacks before it ended fit: rank 0 saves what ``catch`` recorded."""

    def __init__(self, catch, path):
        self.catch, self.path = catch, path

    def on_fit_end(self, trainer, pl_module):
        self.catch.catcher.__exit__(None, None, None)
        if trainer.global_rank == 0:
            torch.save([str(w.message) for w in self.catch.caught], self.path)


@pytest.mark.ddp
def test_ddp_spawn_warns_that_a_plain_modules_thresholds_stay_in_the_worker(tmp_path):
    catch = _CatchWarnings()
    selection = ConstrainedModelSelection([("demographic_parity", 0.05)], thresholds=True)
    callbacks = [catch, selection, _SaveCaught(catch, tmp_path / "warnings.pt"), DestroyProcessGroup()]
    trainer = _trainer(tmp_path, callbacks, enable_checkpointing=False, strategy="ddp_spawn", accelerator="cpu", devices=2)
    module = Oscillating()
    trainer.fit(module, *_loaders())
    messages = torch.load(tmp_path / "warnings.pt")
    assert any("only the weights (state_dict) come back to the process that called fit" in m for m in messages), messages
    assert getattr(module, "prediction_thresholds", None) is None  # what the warning says
