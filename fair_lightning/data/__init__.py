"""Data for fair-lightning: bundled real data sets, a synthetic generator and a fast DataModule.

* :func:`load_adult`, :func:`load_compas`, :func:`load_german`, :func:`load_census_kdd` (a
  seeded 60,000-row sample; ``source="download"`` for all rows): real data sets shipped with the
  package (gzip'd CSV in ``_bundled/``, see its ``PROVENANCE.md``); ``source="download"`` fetches
  the publisher's files instead (:func:`fetch_adult`, ...) and preprocesses them the same way.
* :func:`make_biased_lending`: synthetic loan decisions with a tunable label bias;
  :func:`make_group_shift_regression` and :func:`make_group_shift_classes`: a regression target
  and K classes with a known group shift.
* All of them return a :class:`TabularData` (frame + column roles).
* :class:`TabularDataModule`: group ids, train-only preprocessing, stratified splits, and batches
  ``(x, y, groups)`` served a whole batch at a time from memory, DDP-ready.
"""

from fair_lightning.data._batching import (
    BatchIndexSampler,
    GroupStratifiedBatchSampler,
    InMemoryDataLoader,
    TensorBatchDataset,
)
from fair_lightning.data._checks import check_finite_features, check_groups_in_splits, check_sensitive_levels
from fair_lightning.data._container import TabularData
from fair_lightning.data._datamodule import DATASETS, TabularDataModule, stratified_folds, stratified_split
from fair_lightning.data._datasets import (
    fetch_adult,
    fetch_census_kdd,
    fetch_compas,
    fetch_german,
    get_data_home,
    load_adult,
    load_census_kdd,
    load_compas,
    load_german,
    prepare_adult,
    prepare_census_kdd,
    prepare_compas,
    prepare_german,
)
from fair_lightning.data._synthetic import make_biased_lending, make_group_shift_classes, make_group_shift_regression

__all__ = [
    "DATASETS",
    "BatchIndexSampler",
    "GroupStratifiedBatchSampler",
    "InMemoryDataLoader",
    "TabularData",
    "TabularDataModule",
    "TensorBatchDataset",
    "check_finite_features",
    "check_groups_in_splits",
    "check_sensitive_levels",
    "fetch_adult",
    "fetch_census_kdd",
    "fetch_compas",
    "fetch_german",
    "get_data_home",
    "load_adult",
    "load_census_kdd",
    "load_compas",
    "load_german",
    "make_biased_lending",
    "make_group_shift_classes",
    "make_group_shift_regression",
    "prepare_adult",
    "prepare_census_kdd",
    "prepare_compas",
    "prepare_german",
    "stratified_folds",
    "stratified_split",
]
