"""Maximum-likelihood fitting: datasets, Newton/LM and L-BFGS minimisers, errors."""

from .core import (
    BackgroundIgnoredWarning,
    BatchFitResult,
    FitOptions,
    FitResult,
    delta_stat,
    fit,
    fit_batch,
    guess_norms,
    shard_batch,
    total_statistic,
)
from .dataset import (
    STATISTICS,
    SpectralData,
    load,
    predicted_counts,
    statistic_per_bin,
    total_statistic_of_theta,
)
from .fluxes import sample_flux
from .gof import goodness_of_fit
from .joint import JointModel, JointStructure, joint_predicted, joint_statistic
from .optimize import (
    CONVERGED_STATUSES,
    BoundFlag,
    FitStatus,
    lbfgs,
    levenberg_marquardt,
    profile_bounds,
    to_bounded,
    to_unbounded,
)
from .reference import NelderMeadResult, fit_nelder_mead

__all__ = [
    "BackgroundIgnoredWarning",
    "BatchFitResult",
    "BoundFlag",
    "CONVERGED_STATUSES",
    "FitStatus",
    "FitOptions",
    "FitResult",
    "JointModel",
    "JointStructure",
    "joint_predicted",
    "joint_statistic",
    "NelderMeadResult",
    "STATISTICS",
    "SpectralData",
    "delta_stat",
    "fit",
    "fit_batch",
    "fit_nelder_mead",
    "goodness_of_fit",
    "guess_norms",
    "lbfgs",
    "levenberg_marquardt",
    "load",
    "predicted_counts",
    "profile_bounds",
    "sample_flux",
    "shard_batch",
    "statistic_per_bin",
    "to_bounded",
    "to_unbounded",
    "total_statistic",
    "total_statistic_of_theta",
]
