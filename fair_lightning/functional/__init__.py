"""The statistics core and functional metrics of fair-lightning.

Everything that measures or penalises unfairness (losses, constraints, metrics, calibration)
calls :func:`group_sums` or :func:`grouped_sum` (or, for thresholded predictions,
:func:`confusion_counts`, whose counts :meth:`GroupSums.from_confusion` turns into the same sums):
one vectorized implementation of per-group statistics.
"""

from fair_lightning.functional._calibration import (
    bin_index,
    calibration_error_from_sums,
    calibration_sums,
    group_calibration_error,
)
from fair_lightning.functional._checks import (
    check_binary_target,
    check_group_inputs,
    check_groups,
    check_num_groups,
    check_scores,
)
from fair_lightning.functional._core import (
    GroupSums,
    Rate,
    confusion_counts,
    ema_update,
    group_sums,
    grouped_sum,
    hard_predictions,
    label_cells,
    masked_divide,
    soft_predictions,
)
from fair_lightning.functional._fairness import (
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    format_predictions,
    group_rates,
    hard_group_sums,
    rate_difference,
    rate_ratio,
)

__all__ = [
    "GroupSums",
    "Rate",
    "bin_index",
    "calibration_error_from_sums",
    "calibration_sums",
    "check_binary_target",
    "check_group_inputs",
    "check_groups",
    "check_num_groups",
    "check_scores",
    "confusion_counts",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "ema_update",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "format_predictions",
    "group_calibration_error",
    "group_rates",
    "group_sums",
    "grouped_sum",
    "hard_group_sums",
    "hard_predictions",
    "label_cells",
    "masked_divide",
    "rate_difference",
    "rate_ratio",
    "soft_predictions",
]

# confidence intervals and verdicts (fair_lightning.functional._uncertainty)
from fair_lightning.functional._uncertainty import (  # noqa: E402
    Interval,
    Verdict,
    bootstrap_group_sums,
    bootstrap_interval,
    constraint_holds,
    group_rate_intervals,
    max_min_difference_interval,
    newcombe_interval,
    wilson_interval,
)

__all__ += [
    "Interval",
    "Verdict",
    "bootstrap_group_sums",
    "bootstrap_interval",
    "constraint_holds",
    "group_rate_intervals",
    "max_min_difference_interval",
    "newcombe_interval",
    "wilson_interval",
]

# K-class and regression group statistics (fair_lightning.functional._multiclass, ._regression)
from fair_lightning.functional._multiclass import (  # noqa: E402
    group_accuracy,
    multiclass_accuracy_difference,
    multiclass_calibration_error_from_sums,
    multiclass_calibration_sums,
    multiclass_confusion_counts,
    multiclass_definition_difference,
    multiclass_demographic_parity_difference,
    multiclass_demographic_parity_ratio,
    multiclass_equal_opportunity_difference,
    multiclass_equalized_odds_difference,
    multiclass_group_rates,
    multiclass_group_sums,
    multiclass_rate_table,
)
from fair_lightning.functional._regression import (  # noqa: E402
    RegressionSums,
    group_loss_difference,
    prediction_cdf_gap,
    regression_demographic_parity_difference,
    regression_group_statistics,
    regression_group_sums,
)

__all__ += [
    "RegressionSums",
    "group_accuracy",
    "group_loss_difference",
    "multiclass_accuracy_difference",
    "multiclass_calibration_error_from_sums",
    "multiclass_calibration_sums",
    "multiclass_confusion_counts",
    "multiclass_definition_difference",
    "multiclass_demographic_parity_difference",
    "multiclass_demographic_parity_ratio",
    "multiclass_equal_opportunity_difference",
    "multiclass_equalized_odds_difference",
    "multiclass_group_rates",
    "multiclass_group_sums",
    "multiclass_rate_table",
    "prediction_cdf_gap",
    "regression_demographic_parity_difference",
    "regression_group_statistics",
    "regression_group_sums",
]
