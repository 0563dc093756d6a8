"""Adult, COMPAS and German credit: bundled copies, their preprocessing, and download code.

Each data set has one preprocessing function (``prepare_*``) that turns the publisher's raw
files into a tidy frame. ``scripts/make_bundled_data.py`` runs it on the raw files and writes the
gzip'd CSV shipped in ``fair_lightning/data/_bundled/``; ``load_*(source="download")`` runs the
same function on freshly downloaded files, so the bundled copy and a download agree.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from fair_lightning.data._container import TabularData, categorize

#: Environment variable naming the cache directory for downloads.
DATA_HOME_ENV = "FAIR_LIGHTNING_DATA"
#: Options of the bundled gzip'd CSV files (fixed gzip mtime so the bytes are reproducible).
BUNDLED_CSV_COMPRESSION = {"method": "gzip", "compresslevel": 9, "mtime": 0}

ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country", "income",
)  # fmt: skip

# --- German credit: attribute codes of the UCI documentation (german.doc) --------------------
GERMAN_COLUMNS = (
    "checking_status", "duration_months", "credit_history", "purpose", "credit_amount", "savings",
    "employment_since", "installment_rate", "personal_status", "other_debtors", "residence_since",
    "property", "age", "other_installment_plans", "housing", "existing_credits", "job",
    "num_dependents", "telephone", "foreign_worker", "credit",
)  # fmt: skip
GERMAN_CODES: dict[str, dict[str, str]] = {
    "checking_status": {
        "A11": "<0 DM",
        "A12": "0-200 DM",
        "A13": ">=200 DM or salary assignment",
        "A14": "no checking account",
    },
    "credit_history": {
        "A30": "no credits or all paid back duly",
        "A31": "all paid back duly at this bank",
        "A32": "existing credits paid back duly",
        "A33": "delay in paying off in the past",
        "A34": "critical account or credits elsewhere",
    },
    "purpose": {
        "A40": "car (new)",
        "A41": "car (used)",
        "A42": "furniture/equipment",
        "A43": "radio/television",
        "A44": "domestic appliances",
        "A45": "repairs",
        "A46": "education",
        "A47": "vacation",
        "A48": "retraining",
        "A49": "business",
        "A410": "others",
    },
    "savings": {
        "A61": "<100 DM",
        "A62": "100-500 DM",
        "A63": "500-1000 DM",
        "A64": ">=1000 DM",
        "A65": "unknown or none",
    },
    "employment_since": {
        "A71": "unemployed",
        "A72": "<1 year",
        "A73": "1-4 years",
        "A74": "4-7 years",
        "A75": ">=7 years",
    },
    "personal_status": {
        "A91": "male: divorced/separated",
        "A92": "female: divorced/separated/married",
        "A93": "male: single",
        "A94": "male: married/widowed",
        "A95": "female: single",
    },
    "other_debtors": {"A101": "none", "A102": "co-applicant", "A103": "guarantor"},
    "property": {
        "A121": "real estate",
        "A122": "building society savings or life insurance",
        "A123": "car or other",
        "A124": "unknown or none",
    },
    "other_installment_plans": {"A141": "bank", "A142": "stores", "A143": "none"},
    "housing": {"A151": "rent", "A152": "own", "A153": "for free"},
    "job": {
        "A171": "unemployed or unskilled non-resident",
        "A172": "unskilled resident",
        "A173": "skilled employee or official",
        "A174": "management, self-employed or highly qualified",
    },
    "telephone": {"A191": "none", "A192": "yes"},
    "foreign_worker": {"A201": "yes", "A202": "no"},
}
#: Attribute 9 (personal status and sex) -> sex.
GERMAN_SEX = {"A91": "Male", "A92": "Female", "A93": "Male", "A94": "Male", "A95": "Female"}
#: Age threshold of German credit's usual sensitive attribute (Kamiran & Calders 2009).
GERMAN_AGE_THRESHOLD = 25


# --- Census-Income (KDD): 41 attributes + label, no header (UCI census-income.names) ----------
CENSUS_KDD_COLUMNS = (
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code",
    "major_occupation_code", "race", "hispanic_origin", "sex", "member_of_a_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat", "capital_gains", "capital_losses",
    "dividends_from_stocks", "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
)  # fmt: skip
#: Rows of each official split kept in the bundled copy (a seeded uniform sample, about 20% of each).
CENSUS_KDD_BUNDLED_ROWS = {"train": 40_000, "test": 20_000}
#: Seed of that sample.
CENSUS_KDD_SAMPLE_SEED = 0


# --- preprocessing: raw files -> tidy frame ---------------------------------------------------
def _read_adult_file(path: Path, *, skip_first_line: bool) -> pd.DataFrame:
    frame = pd.read_csv(
        path,
        header=None,
        names=list(ADULT_COLUMNS),
        skiprows=1 if skip_first_line else 0,
        skipinitialspace=True,
        na_values=["?"],
        keep_default_na=False,
    )
    return frame.dropna().reset_index(drop=True)


def prepare_adult(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Tidy frame from UCI's ``adult.data`` and ``adult.test`` (official split kept).

    Rows with a missing value (``?``) are dropped, the test file's junk first line is skipped,
    the test labels' trailing ``.`` is removed and the label becomes ``income_over_50k``
    (1 for ``>50K``). Column names use ``snake_case``; a ``split`` column says ``"train"`` or
    ``"test"``.

    Args:
        raw_dir: directory holding ``adult.data`` and ``adult.test``.

    Returns:
        45,222 rows (30,162 train + 15,060 test) for the published files.
    """
    raw_dir = Path(raw_dir)
    parts = []
    for split, filename, skip in (("train", "adult.data", False), ("test", "adult.test", True)):
        part = _read_adult_file(raw_dir / filename, skip_first_line=skip)
        part["split"] = split
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    label = frame.pop("income").astype(str).str.rstrip(".").str.strip()
    unknown = sorted(set(label) - {">50K", "<=50K"})
    if unknown:
        raise ValueError(f"unexpected Adult labels {unknown}; expected '>50K' and '<=50K'")
    frame["income_over_50k"] = (label == ">50K").astype(np.int64)
    return frame


def prepare_compas(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Tidy frame from ProPublica's ``compas-scores-two-years.csv``.

    ProPublica's filter: ``days_b_screening_arrest`` within ±30 days, ``is_recid != -1``,
    ``c_charge_degree != "O"`` and ``score_text != "N/A"`` (6,172 of 7,214 rows). Names, dates
    of birth and case numbers are not kept. ``length_of_stay`` is the number of days between
    ``c_jail_in`` and ``c_jail_out`` (dates, as in ProPublica's analysis); ``c_charge_degree``
    is decoded to ``"Felony"`` / ``"Misdemeanor"``. COMPAS's own ``decile_score`` and
    ``score_text`` are kept for auditing the tool, not as features.

    Args:
        raw_dir: directory holding ``compas-scores-two-years.csv``.
    """
    raw = pd.read_csv(Path(raw_dir) / "compas-scores-two-years.csv", keep_default_na=False, na_values=[""])
    days = pd.to_numeric(raw["days_b_screening_arrest"], errors="coerce")
    keep = (
        days.between(-30, 30)
        & (raw["is_recid"] != -1)
        & (raw["c_charge_degree"] != "O")
        & raw["score_text"].notna()
        & (raw["score_text"] != "N/A")
    )
    raw = raw.loc[keep].reset_index(drop=True)
    jail_in = pd.to_datetime(raw["c_jail_in"]).dt.normalize()
    jail_out = pd.to_datetime(raw["c_jail_out"]).dt.normalize()
    return pd.DataFrame(
        {
            "sex": raw["sex"],
            "race": raw["race"],
            "age": raw["age"].astype(np.int64),
            "age_cat": raw["age_cat"],
            "juv_fel_count": raw["juv_fel_count"].astype(np.int64),
            "juv_misd_count": raw["juv_misd_count"].astype(np.int64),
            "juv_other_count": raw["juv_other_count"].astype(np.int64),
            "priors_count": raw["priors_count"].astype(np.int64),
            "c_charge_degree": raw["c_charge_degree"].map({"F": "Felony", "M": "Misdemeanor"}),
            "length_of_stay": (jail_out - jail_in).dt.days.astype(np.int64),
            "decile_score": raw["decile_score"].astype(np.int64),
            "score_text": raw["score_text"],
            "two_year_recid": raw["two_year_recid"].astype(np.int64),
        }
    )


def prepare_german(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Tidy frame from UCI's Statlog ``german.data`` (symbolic attributes).

    Attribute codes (``A11``, ...) are decoded to the UCI documentation's meanings. ``sex``
    comes from attribute 9 (personal status and sex: A91, A93, A94 male; A92, A95 female);
    ``age_group`` is ``"age>25"`` or ``"age<=25"``; the label ``good_credit`` is 1 for good
    (raw 1), 0 for bad (raw 2).

    Args:
        raw_dir: directory holding ``german.data``.
    """
    raw = pd.read_csv(
        Path(raw_dir) / "german.data", sep=" ", header=None, names=list(GERMAN_COLUMNS), keep_default_na=False
    )
    frame = pd.DataFrame(index=raw.index)
    for col in GERMAN_COLUMNS[:-1]:
        if col in GERMAN_CODES:
            decoded = raw[col].map(GERMAN_CODES[col])
            if decoded.isna().any():
                raise ValueError(f"unknown German credit codes in {col!r}: {sorted(set(raw[col][decoded.isna()]))}")
            frame[col] = decoded
        else:
            frame[col] = raw[col].astype(np.int64)
    frame["sex"] = raw["personal_status"].map(GERMAN_SEX)
    frame["age_group"] = np.where(
        raw["age"] > GERMAN_AGE_THRESHOLD, f"age>{GERMAN_AGE_THRESHOLD}", f"age<={GERMAN_AGE_THRESHOLD}"
    )
    if not raw["credit"].isin([1, 2]).all():
        raise ValueError("German credit labels must be 1 (good) or 2 (bad)")
    frame["good_credit"] = (raw["credit"] == 1).astype(np.int64)
    return frame


def prepare_census_kdd(raw_dir: str | os.PathLike) -> pd.DataFrame:
    """Tidy frame from UCI's ``census-income.data.gz`` and ``census-income.test.gz`` (official split kept).

    Columns are named as in the UCI documentation (``snake_case``), values stripped of their
    leading space; ``?`` (not asked, mostly in the migration columns) is kept as its own level
    (half the rows have it, so dropping them would change the population). Coded categorical
    columns (``detailed_industry_recode``, ``detailed_occupation_recode``,
    ``own_business_or_self_employed``, ``veterans_benefits``, ``year``) stay integers in the
    frame and are treated as categorical. The label ``income_over_50k`` is 1 for ``50000+.``;
    ``instance_weight`` (a survey weight) is kept but is not a feature. A ``split`` column says
    ``"train"`` or ``"test"``.

    Args:
        raw_dir: directory holding the two gzip'd files.

    Returns:
        299,285 rows (199,523 train + 99,762 test) for the published files.
    """
    raw_dir = Path(raw_dir)
    parts = []
    for split, filename in (("train", "census-income.data.gz"), ("test", "census-income.test.gz")):
        part = pd.read_csv(
            raw_dir / filename, header=None, names=list(CENSUS_KDD_COLUMNS), skipinitialspace=True,
            keep_default_na=False, compression="gzip",
        )  # fmt: skip
        part["split"] = split
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    label = frame.pop("income").astype(str).str.strip()
    unknown = sorted(set(label) - {"- 50000.", "50000+."})
    if unknown:
        raise ValueError(f"unexpected Census-KDD labels {unknown}; expected '- 50000.' and '50000+.'")
    frame["income_over_50k"] = (label == "50000+.").astype(np.int64)
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
            frame[col] = frame[col].astype(str).str.strip()
    return frame


def sample_census_kdd(frame: pd.DataFrame) -> pd.DataFrame:
    """The bundled sample of a prepared Census-KDD frame: a seeded uniform sample per official split.

    :data:`CENSUS_KDD_BUNDLED_ROWS` rows of each split (``numpy.random.default_rng(0)``, without
    replacement), kept in the original row order.
    """
    rng = np.random.default_rng(CENSUS_KDD_SAMPLE_SEED)
    keep = []
    for split, rows in CENSUS_KDD_BUNDLED_ROWS.items():
        index = np.flatnonzero((frame["split"] == split).to_numpy())
        if len(index) < rows:
            raise ValueError(f"Census-KDD split {split!r} has {len(index)} rows, fewer than the {rows} to sample")
        keep.append(np.sort(rng.choice(index, size=rows, replace=False)))
    return frame.iloc[np.concatenate(keep)].reset_index(drop=True)


# --- data set specifications ------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInfo:
    """Everything fixed about one bundled data set: files, column roles, provenance."""

    name: str
    target: str
    sensitive: tuple[str, ...]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    description: str
    raw_files: Mapping[str, str]  # file name -> URL
    sha256: Mapping[str, str]  # file name -> checksum of the publisher's file
    prepare: Callable[[str | os.PathLike], pd.DataFrame]
    proxies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    has_split: bool = False
    #: folder of the raw files under ``../shared/data`` / the download cache (default: ``name``)
    raw_folder: str | None = None
    #: what the bundled copy keeps of the prepared frame (default: everything)
    bundle: Callable[[pd.DataFrame], pd.DataFrame] | None = None

    @property
    def bundled_file(self) -> str:
        return f"{self.name}.csv.gz"


_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases"

ADULT = DatasetInfo(
    name="adult",
    target="income_over_50k",
    sensitive=("sex", "race"),
    numeric=("age", "education_num", "capital_gain", "capital_loss", "hours_per_week"),
    categorical=("workclass", "marital_status", "occupation", "relationship", "race", "sex", "native_country"),
    description=(
        "UCI Adult (Census Income, 1994 CPS; Becker & Kohavi 1996, CC BY 4.0). Predict whether income "
        "exceeds 50K USD a year. Rows with missing values dropped; official split kept (30,162 train, "
        "15,060 test). `fnlwgt` (a survey weight, not an attribute of the person) and `education` "
        "(one-to-one with `education_num`) stay in the frame but are not features."
    ),
    raw_files={"adult.data": f"{_UCI}/adult/adult.data", "adult.test": f"{_UCI}/adult/adult.test"},
    sha256={
        "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
        "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
    },
    prepare=prepare_adult,
    proxies={},
    has_split=True,
)

COMPAS = DatasetInfo(
    name="compas",
    target="two_year_recid",
    sensitive=("race", "sex"),
    numeric=("age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count", "length_of_stay"),
    categorical=("c_charge_degree", "age_cat", "sex", "race"),
    description=(
        "ProPublica COMPAS two-year recidivism (Broward County, FL, 2013-2014; ProPublica compas-analysis "
        "repository). Label: re-offended within two years (1). ProPublica's filter leaves 6,172 rows. "
        "COMPAS's own `decile_score` and `score_text` are kept for auditing the tool but are not "
        "features: they are the output of the risk model under audit, so using them would make the "
        "model a wrapper around COMPAS and carry over its biases."
    ),
    raw_files={
        "compas-scores-two-years.csv": (
            "https://raw.githubusercontent.com/propublica/compas-analysis/master/compas-scores-two-years.csv"
        )
    },
    sha256={"compas-scores-two-years.csv": "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d"},
    prepare=prepare_compas,
    proxies={},
)

GERMAN = DatasetInfo(
    name="german",
    target="good_credit",
    sensitive=("age_group", "sex"),
    numeric=(
        "duration_months", "credit_amount", "installment_rate", "residence_since", "age",
        "existing_credits", "num_dependents",
    ),  # fmt: skip
    categorical=(
        "checking_status", "credit_history", "purpose", "savings", "employment_since", "personal_status",
        "other_debtors", "property", "other_installment_plans", "housing", "job", "telephone",
        "foreign_worker", "sex", "age_group",
    ),  # fmt: skip
    description=(
        "Statlog German credit (Hofmann 1994, UCI, CC BY 4.0). Label: good credit risk (1) or bad (0); "
        "1,000 rows, no official split. Attribute codes decoded; `sex` derived from attribute 9 "
        "(personal status and sex), `age_group` is age > 25. `age` and `personal_status` determine the "
        "sensitive columns exactly and are registered as their proxies."
    ),
    raw_files={"german.data": f"{_UCI}/statlog/german/german.data"},
    sha256={"german.data": "b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871"},
    prepare=prepare_german,
    proxies={"age_group": ("age",), "sex": ("personal_status",)},
)

CENSUS_KDD = DatasetInfo(
    name="census_kdd",
    target="income_over_50k",
    sensitive=("sex", "race"),
    numeric=(
        "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
        "num_persons_worked_for_employer", "weeks_worked_in_year",
    ),  # fmt: skip
    categorical=(
        "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
        "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code", "major_occupation_code", "race",
        "hispanic_origin", "sex", "member_of_a_labor_union", "reason_for_unemployment",
        "full_or_part_time_employment_stat", "tax_filer_stat", "region_of_previous_residence",
        "state_of_previous_residence", "detailed_household_and_family_stat",
        "detailed_household_summary_in_household", "migration_code_change_in_msa", "migration_code_change_in_reg",
        "migration_code_move_within_reg", "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt",
        "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
        "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
        "veterans_benefits", "year",
    ),  # fmt: skip
    description=(
        "UCI Census-Income (KDD) (1994-95 Current Population Surveys, U.S. Census Bureau; UCI, CC BY 4.0). "
        "Predict income over 50K USD (6.2% of rows). Official split kept. The bundled copy is a seeded "
        "uniform sample of 40,000 train and 20,000 test rows (of 199,523 and 99,762); "
        "`source=\"download\"` gives all rows. `instance_weight` (a survey weight) is in the frame but is "
        "not a feature; `?` (not asked) is a level of its own."
    ),
    raw_files={
        "census-income.data.gz": f"{_UCI}/census-income-mld/census-income.data.gz",
        "census-income.test.gz": f"{_UCI}/census-income-mld/census-income.test.gz",
    },
    sha256={
        "census-income.data.gz": "d8fb4a6fe0add3e49462c17d2ed260a487b28ec720752024aeb8b54eada29a68",
        "census-income.test.gz": "c222e1046bb9e50208cf2876cef84e056fdc43c473dbca9d54b12185c3c8a8f6",
    },
    prepare=prepare_census_kdd,
    proxies={},
    has_split=True,
    raw_folder="census-kdd",
    bundle=sample_census_kdd,
)

BUNDLED: dict[str, DatasetInfo] = {info.name: info for info in (ADULT, COMPAS, GERMAN, CENSUS_KDD)}


# --- building the container -------------------------------------------------------------------
def to_tabular(info: DatasetInfo, frame: pd.DataFrame) -> TabularData:
    """Wrap a prepared frame (as ``prepare_*`` returns it) in a :class:`TabularData`."""
    frame = frame.copy()
    split = frame.pop("split") if "split" in frame.columns else None
    categorical = list(dict.fromkeys([*info.categorical, *info.sensitive]))
    frame = categorize(frame, categorical)
    return TabularData(
        frame=frame,
        target=info.target,
        sensitive=info.sensitive,
        numeric=info.numeric,
        categorical=info.categorical,
        name=info.name,
        description=info.description,
        split=split,
        proxies=dict(info.proxies),
    )


@functools.lru_cache(maxsize=None)
def _read_bundled(name: str) -> pd.DataFrame:
    info = BUNDLED[name]
    with resources.files("fair_lightning.data").joinpath("_bundled", info.bundled_file).open("rb") as fh:
        return pd.read_csv(fh, compression="gzip", keep_default_na=False, na_values=[""])


def read_bundled(name: str) -> pd.DataFrame:
    """The bundled prepared frame of data set ``name`` (a fresh copy)."""
    if name not in BUNDLED:
        raise ValueError(f"`name` must be one of {sorted(BUNDLED)}, got {name!r}")
    return _read_bundled(name).copy()


def write_bundled(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a prepared frame the way the bundled files are stored (reproducible bytes)."""
    frame.to_csv(path, index=False, compression=BUNDLED_CSV_COMPRESSION, lineterminator="\n")


# --- downloads --------------------------------------------------------------------------------
def get_data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Cache directory for downloads: ``data_home``, else ``$FAIR_LIGHTNING_DATA``, else ``~/.cache/fair_lightning``."""
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV) or Path.home() / ".cache" / "fair_lightning"
    return Path(data_home).expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        shutil.copyfileobj(response, out)
    if sha256 is not None and _sha256(tmp) != sha256:
        warnings.warn(
            f"{url} does not match the checksum of the file fair-lightning was built with; the publisher may "
            "have changed it. Check the loaded data before relying on it.",
            stacklevel=3,
        )
    os.replace(tmp, dest)


def fetch(name: str, data_home: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download the publisher's raw files of a bundled data set into the cache; return their directory.

    Files already in the cache are not downloaded again unless ``force`` is true.

    Args:
        name: ``"adult"``, ``"compas"`` or ``"german"``.
        data_home: cache directory (see :func:`get_data_home`).
        force: download even if the files are cached.

    Returns:
        ``data_home / name``, holding the raw files.
    """
    if name not in BUNDLED:
        raise ValueError(f"`name` must be one of {sorted(BUNDLED)}, got {name!r}")
    info = BUNDLED[name]
    folder = get_data_home(data_home) / (info.raw_folder or name)
    for filename, url in info.raw_files.items():
        dest = folder / filename
        if force or not dest.exists():
            _download(url, dest, info.sha256.get(filename))
    return folder


def fetch_adult(data_home: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download UCI Adult's ``adult.data`` and ``adult.test`` (see :func:`fetch`)."""
    return fetch("adult", data_home, force=force)


def fetch_compas(data_home: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download ProPublica's ``compas-scores-two-years.csv`` (see :func:`fetch`)."""
    return fetch("compas", data_home, force=force)


def fetch_census_kdd(data_home: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download UCI's ``census-income.data.gz`` and ``census-income.test.gz`` (see :func:`fetch`)."""
    return fetch("census_kdd", data_home, force=force)


def fetch_german(data_home: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Download UCI Statlog's ``german.data`` (see :func:`fetch`)."""
    return fetch("german", data_home, force=force)


# --- loaders ----------------------------------------------------------------------------------
def load(name: str, source: str | os.PathLike = "bundled", *, data_home: str | os.PathLike | None = None) -> TabularData:
    """Load a bundled data set by name.

    Args:
        name: ``"adult"``, ``"compas"`` or ``"german"``.
        source: ``"bundled"`` (default; the copy shipped with the package, no network),
            ``"download"`` (fetch the publisher's files into ``data_home`` once, then preprocess
            them exactly as the bundled copy was), or a directory holding the raw files.
        data_home: download cache, for ``source="download"``.

    Returns:
        The :class:`TabularData`.
    """
    if name not in BUNDLED:
        raise ValueError(f"`name` must be one of {sorted(BUNDLED)}, got {name!r}")
    info = BUNDLED[name]
    if isinstance(source, str) and source == "bundled":
        frame = read_bundled(name)
    elif isinstance(source, str) and source == "download":
        frame = info.prepare(fetch(name, data_home))
    else:
        raw_dir = Path(source)
        if not raw_dir.is_dir():
            raise ValueError(f'`source` must be "bundled", "download" or a directory of raw files, got {source!r}')
        frame = info.prepare(raw_dir)
    return to_tabular(info, frame)


def load_adult(source: str | os.PathLike = "bundled", *, data_home: str | os.PathLike | None = None) -> TabularData:
    """UCI Adult (Census Income): predict income > 50K USD.

    45,222 rows without missing values, the official split kept in ``split`` (30,162 train,
    15,060 test). Label ``income_over_50k`` (1 = more than 50K, 24.8% of rows). Sensitive:
    ``sex`` (Female, Male), ``race`` (5 levels). Features: 5 numeric (``age``,
    ``education_num``, ``capital_gain``, ``capital_loss``, ``hours_per_week``) and 7
    categorical; ``fnlwgt`` and ``education`` are in the frame but not features.

    Args:
        source: ``"bundled"``, ``"download"`` or a directory of raw files (see :func:`load`).
        data_home: download cache, for ``source="download"``.

    Example:
        >>> data = load_adult()
        >>> len(data), data.split.value_counts().to_dict()
        (45222, {'train': 30162, 'test': 15060})
    """
    return load("adult", source, data_home=data_home)


def load_compas(source: str | os.PathLike = "bundled", *, data_home: str | os.PathLike | None = None) -> TabularData:
    """ProPublica COMPAS: predict re-offending within two years.

    6,172 rows after ProPublica's filter, no official split. Label ``two_year_recid``
    (1 = re-offended, 45.5% of rows). Sensitive: ``race`` (6 levels as published:
    African-American 3,175, Caucasian 2,103, Hispanic 509, Other 343, Asian 31, Native American
    11), ``sex``. Features: ``age``, ``priors_count``, the three ``juv_*`` counts,
    ``length_of_stay`` (days) and the categorical ``c_charge_degree``, ``age_cat``, ``sex``,
    ``race``. ``decile_score`` and ``score_text`` (COMPAS's own output) are in the frame for
    audits but are not features: see the data set's ``description``.

    Args:
        source: ``"bundled"``, ``"download"`` or a directory of raw files (see :func:`load`).
        data_home: download cache, for ``source="download"``.
    """
    return load("compas", source, data_home=data_home)


def load_german(source: str | os.PathLike = "bundled", *, data_home: str | os.PathLike | None = None) -> TabularData:
    """Statlog German credit: predict good credit risk.

    1,000 rows, no official split. Label ``good_credit`` (1 = good, 70% of rows). Sensitive:
    ``age_group`` (``"age<=25"`` 190 rows, ``"age>25"`` 810) and ``sex`` (from personal status:
    Female 310, Male 690). Features: 7 numeric and 15 categorical, decoded from the UCI codes.
    ``age`` and ``personal_status`` are ``proxies`` of the sensitive columns.

    Args:
        source: ``"bundled"``, ``"download"`` or a directory of raw files (see :func:`load`).
        data_home: download cache, for ``source="download"``.
    """
    return load("german", source, data_home=data_home)


def load_census_kdd(source: str | os.PathLike = "bundled", *, data_home: str | os.PathLike | None = None) -> TabularData:
    """UCI Census-Income (KDD): predict income over 50K USD, at survey scale.

    Bundled (default): a seeded uniform sample of 60,000 rows, split kept (40,000 train, 20,000
    test; see ``sample_census_kdd``). ``source="download"`` (or a directory holding
    ``census-income.data.gz`` and ``census-income.test.gz``): all 299,285 rows. Label
    ``income_over_50k`` (1 = more than 50K, 6.2% of rows). Sensitive: ``sex`` (Female, Male),
    ``race`` (5 levels). Features: 7 numeric and 33 categorical (coded columns included);
    ``instance_weight`` is in the frame but is not a feature.

    Args:
        source: ``"bundled"``, ``"download"`` or a directory of raw files (see :func:`load`).
        data_home: download cache, for ``source="download"``.

    Example:
        >>> data = load_census_kdd()
        >>> len(data), data.split.value_counts().to_dict()
        (60000, {'train': 40000, 'test': 20000})
    """
    return load("census_kdd", source, data_home=data_home)


__all__ = [
    "ADULT",
    "BUNDLED",
    "CENSUS_KDD",
    "COMPAS",
    "DATA_HOME_ENV",
    "DatasetInfo",
    "GERMAN",
    "fetch",
    "fetch_adult",
    "fetch_census_kdd",
    "fetch_compas",
    "fetch_german",
    "get_data_home",
    "load",
    "load_adult",
    "load_census_kdd",
    "load_compas",
    "load_german",
    "prepare_adult",
    "prepare_census_kdd",
    "prepare_compas",
    "prepare_german",
    "read_bundled",
    "sample_census_kdd",
    "to_tabular",
    "write_bundled",
]
