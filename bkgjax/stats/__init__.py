"""Pure per-bin statistics: likelihoods, Poisson limits, detection probabilities."""

from .intervals import (
    det_ml,
    false_probability,
    gehrels_lower,
    gehrels_upper,
    log_false_probability,
    poisson_interval,
    poisson_lower_limit,
    poisson_upper_limit,
)
from .likelihoods import (
    cash,
    chi2_datavar,
    chi2_gehrels,
    chi2_modvar,
    chi2_subtracted,
    cstat,
    pgstat,
    pgstat_background,
    poisson_loglike,
    wstat,
    wstat_background,
    xlogy_safe,
)

__all__ = [
    "cash",
    "chi2_datavar",
    "chi2_gehrels",
    "chi2_modvar",
    "chi2_subtracted",
    "cstat",
    "det_ml",
    "false_probability",
    "gehrels_lower",
    "gehrels_upper",
    "log_false_probability",
    "pgstat",
    "pgstat_background",
    "poisson_interval",
    "poisson_loglike",
    "poisson_lower_limit",
    "poisson_upper_limit",
    "wstat",
    "wstat_background",
    "xlogy_safe",
]
