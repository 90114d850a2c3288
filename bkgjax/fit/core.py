r"""Maximum-likelihood fits of spectral models: one spectrum or thousands in one compiled call.

>>> data = bkgjax.fit.load("src.pha", erange=(0.5, 7.0))
>>> result = bkgjax.fit.fit(powerlaw(), data, stat="cstat")
>>> print(result)                      # table with best fit, 1-sigma and 90 % profile bounds

Errors:

* ``covariance``: :math:`C = 2 H^{-1}` with :math:`H` the exact Hessian of the statistic
  (:math:`-2\ln L` up to a constant) in the parameters, at the best fit.
* profile-likelihood bounds at confidence ``level`` (default 0.90, :math:`\Delta S = 2.706`
  for one parameter of interest, as XSPEC ``error`` / Sherpa ``conf``).

The compiled kernels take the model *structure* (hashable, value-free) and the set of free
parameters as static arguments, so refitting with new starting values or new data of the same
shape does not recompile.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..io.jsonio import json_safe
from ..spectral.components import COMPONENTS
from ..spectral.convolutions import free_flux_normalisations
from ..spectral.model import Model
from . import small_linalg
from .dataset import (
    CHI2_STATISTICS,
    STATISTICS,
    SpectralData,
    predicted_counts,
    statistic_per_bin,
    total_statistic_of_theta,
)
from .export_cache import exported_call, prng_key
from .joint import (
    BKG_PREFIX,
    JointStructure,
    as_joint,
    check_joint,
    joint_derivatives,
    joint_predicted,
    joint_statistic,
    n_bins_of,
)
from .optimize import (
    CONVERGED_STATUSES,
    STATUS_MESSAGES,
    BoundFlag,
    FitStatus,
    lbfgs,
    levenberg_marquardt,
    profile_bounds,
    to_bounded,
    to_unbounded,
    unbounded_derivatives,
)

__all__ = ["FitOptions", "FitResult", "BatchFitResult", "fit", "fit_batch", "delta_stat",

           "total_statistic", "guess_norms", "folded_derivatives", "shard_batch"]


def delta_stat(level: float, n_interest: int = 1) -> float:
    """Statistic increase for a confidence ``level`` (0.9 -> 2.7055 for one parameter)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    from scipy.special import chdtri  # here: a fit loaded from the export cache never needs it

    return float(chdtri(n_interest, 1.0 - level))  # the chi2 quantile (scipy.stats is slow to import)


class FitOptions(NamedTuple):
    """Static fit settings (hashable)."""

    method: str = "auto"  # "lm" | "lbfgs" | "auto" (lm for <= 30 free parameters)
    max_iter: int = 200
    profile: bool = True
    level: float = 0.9
    n_starts: int = 1
    start_spread: float = 1.0
    # False: the profile bounds stop after the Venzon-Moolgavkar stage (unsolved lanes NaN,
    # flag RUNNING) and the fit finishes them with _profile_search, compiled only if needed
    search: bool = True


def _statistic_of_theta(structure, stat, free_idx, theta_fixed, data):
    idx = jnp.asarray(free_idx, dtype=jnp.int32)

    def of_free(theta_free):
        return total_statistic_of_theta(stat, structure, theta_fixed.at[idx].set(theta_free),
                                        data)

    return of_free


def folded_derivatives(structure, stat, free_idx, theta_fixed, data, lower, upper):
    r"""``u -> (S, dS/du, d2S/du2)`` for the statistic S of a folded model, in the unconstrained
    coordinates :math:`u` (:math:`\theta = t(u)`, elementwise bijections).

    The fold :math:`\mu = T\,A\,(F(\theta) @ M)` is linear in the model flux F, so with
    :math:`J = \partial\mu/\partial\theta` (one GEMM of :math:`[F; \partial F]` with M) and the
    per-bin derivatives :math:`s', s''` of the statistic with respect to :math:`\mu`,

    .. math::
        \nabla_\theta S = J s',\qquad
        \nabla^2_\theta S = J\,\mathrm{diag}(s'')\,J^T
            + \nabla^2_\theta\,[F(\theta)\cdot w],\quad w = T A\, M s',

    which is the exact Hessian for n + 2 passes over the response matrix instead of the ~4n + 2
    of nested autodiff; the second term needs only the (cheap) model, not the matrix.
    """
    idx = jnp.asarray(free_idx, dtype=jnp.int32)
    n = len(free_idx)
    basis = jnp.eye(n, dtype=jnp.float64)

    def flux_of_theta(theta_free):
        return structure.evaluate(theta_fixed.at[idx].set(theta_free), data.e_lo, data.e_hi)

    def per_bin(mu):
        return statistic_per_bin(stat, mu, data)

    def bin_first(mu):  # elementwise derivative (the Jacobian of per_bin is diagonal)
        return jax.jvp(per_bin, (mu,), (jnp.ones_like(mu),))

    def theta_derivatives(theta):
        """(S, dS/dtheta, d2S/dtheta2) at the free parameters ``theta``."""
        flux, flux_jvp = jax.linearize(flux_of_theta, theta)
        flux_jac = jax.vmap(flux_jvp)(basis)                        # (n, E)
        scale = data.exposure * data.areascal
        folded = jnp.concatenate([flux[None], flux_jac], axis=0) @ data.matrix
        mu, jac = scale * folded[0], scale * folded[1:]             # (C,), (n, C)
        (values, s1), (_, s2) = jax.jvp(bin_first, (mu,), (jnp.ones_like(mu),))
        grad_theta = jac @ s1
        weights = data.matrix @ (scale * s1)                        # (E,)
        # forward-over-forward: the model is cheap and has few inputs, where this is cheaper
        # than jax.hessian's reverse-over-forward
        curvature = jax.jacfwd(jax.jacfwd(lambda t: flux_of_theta(t) @ weights))(theta)
        return jnp.sum(values), grad_theta, (jac * s2) @ jac.T + curvature

    return unbounded_derivatives(theta_derivatives, lower, upper)


def total_statistic(model: Model, data: SpectralData, stat="cstat", values=None):
    """Total statistic of ``model`` (current or given ``values``) on ``data`` (eager)."""
    theta = jnp.asarray([v for v in model.resolve(values or {}).values()])
    return total_statistic_of_theta(stat, model.structure, theta, data)


@partial(jax.jit, static_argnames=("structure",))
def _total_predicted(theta, data, *, structure):
    """Total predicted source counts: one compiled function (op by op, the eager sum compiled
    dozens of small kernels in every new process)."""
    return jnp.sum(predicted_counts(structure, theta, data))


def guess_norms(model, data, *, keep=()):
    """Rescale every free ``norm`` so that the model predicts the observed total counts
    (background-subtracted when a background is loaded).  A cheap start for fits of real
    data whose default norms are off by orders of magnitude.  Parameters named in ``keep``
    (qualified names, e.g. values the user set) are left as they are.

    For a :class:`~bkgjax.fit.JointModel` over several data sets a shared norm is scaled by
    the ratio of the totals over all data sets, a data set's own copy (``norm@k``) by that
    data set's ratio, and background-model norms to the background spectra's counts."""
    if not (isinstance(model, Model) and isinstance(data, SpectralData)):
        return _guess_joint_norms(model, data, keep)
    norms = [p.name for p in model.parameters
             if p.is_free and p.short_name == "norm" and p.name not in keep]
    if not norms:
        return model
    # host (NumPy) arithmetic: each eager jnp op costs a new process an XLA compilation
    theta = np.asarray(list(model.resolve({}).values()), dtype=np.float64)
    predicted = float(exported_call(_total_predicted, "bkgjax.fit.core._total_predicted",
                                    {"structure": model.structure}, theta, data))
    observed = float(np.sum(np.asarray(data.counts)))
    if data.has_background:
        observed -= float(np.sum(np.asarray(data.background_counts)
                                 / np.asarray(data.background_ratio)))
    if not (predicted > 0 and observed > 0):
        return model
    scale = observed / predicted
    updated = model
    for name in norms:
        p = model[name]
        updated = updated.set(name, float(np.clip(p.value * scale, p.min, p.max)))
    return updated


@partial(jax.jit, static_argnames=("structure",))
def _joint_totals(theta, datasets, *, structure):
    """Per data set: total counts of the source model and of the background model in the
    background spectrum (0 without one)."""
    out = []
    for entry in joint_predicted(structure, theta, datasets):
        source = entry.get("source_model", entry["source"])
        out.append((jnp.sum(source), jnp.sum(entry.get("background", jnp.zeros(1)))))
    return out


def _guess_joint_norms(original, data, keep):
    model, datasets = as_joint(original, data)
    theta = np.asarray(list(model.resolve({}).values()), dtype=np.float64)
    totals = [(float(a), float(b)) for a, b in exported_call(
        _joint_totals, "bkgjax.fit.core._joint_totals", {"structure": model.structure},
        theta, datasets)]
    net, bkg = [], []
    for d in datasets:
        counts = float(np.sum(np.asarray(d.counts)))  # host sums: no eager XLA kernels
        background = (float(np.sum(np.asarray(d.background_counts)
                                   / np.asarray(d.background_ratio)))
                      if d.has_background else 0.0)
        net.append(counts - background)
        bkg.append(float(np.sum(np.asarray(d.background_counts))) if d.has_background else 0.0)
    updated = model
    for p in model.parameters:
        base, _, k = p.name.partition("@")
        if not p.is_free or p.name in keep or base.rsplit(".", 1)[-1] != "norm":
            continue
        role = 1 if base.startswith(BKG_PREFIX) else 0
        if role and model.background is None:
            continue
        chosen = range(len(datasets)) if not k else [int(k) - 1]
        observed = sum((bkg if role else net)[i] for i in chosen)
        predicted = sum(totals[i][role] for i in chosen)
        if predicted > 0 and observed > 0:
            updated = updated.set(p.name, float(np.clip(p.value * observed / predicted, p.min,
                                                        p.max)))
    if isinstance(original, Model):  # a Model shared by all data sets stays a Model
        return original.with_values({p.name: updated[p.name].value
                                     for p in original.parameters if p.is_free})
    return updated


def _problem(theta_all, lower, upper, data, structure, free_idx, stat):
    """``(statistic of the free parameters, its fold derivatives in unconstrained coordinates,
    free indices, their lower and upper limits)`` for one data set or a joint model."""
    idx = jnp.asarray(free_idx, dtype=jnp.int32)
    lo, hi = lower[idx], upper[idx]
    if isinstance(structure, JointStructure):
        def stat_free(theta_free):
            return joint_statistic(structure, stat, theta_all.at[idx].set(theta_free), data)

        derivatives = joint_derivatives(structure, stat, free_idx, theta_all, data, lo, hi)
    else:
        stat_free = _statistic_of_theta(structure, stat, free_idx, theta_all, data)
        derivatives = folded_derivatives(structure, stat, free_idx, theta_all, data, lo, hi)
    return stat_free, derivatives, idx, lo, hi


def _fit_kernel(theta_all, lower, upper, start_key, data, *, structure, free_idx, stat,
                options):
    """Pure fit of one dataset; returns a dict of arrays (vmappable)."""
    stat_free, derivatives, idx, lo, hi = _problem(theta_all, lower, upper, data, structure,
                                                   free_idx, stat)
    return _solve(stat_free, derivatives, theta_all, idx, lo, hi, start_key, options)


def _joint_kernel(theta_all, lower, upper, start_key, datasets, *, structure, free_idx, stat,
                  options):
    """Pure fit of a joint model (:mod:`bkgjax.fit.joint`) over a tuple of data sets."""
    stat_free, derivatives, idx, lo, hi = _problem(theta_all, lower, upper, datasets,
                                                   structure, free_idx, stat)
    out = _solve(stat_free, derivatives, theta_all, idx, lo, hi, start_key, options)
    out["theta"] = structure.apply_links(out["theta"])
    return out


def _solve(stat_free, derivatives, theta_all, idx, lo, hi, start_key, options):
    """Minimise ``stat_free`` over the free parameters (multistart, LM or L-BFGS), then the
    covariance and, if asked, the profile bounds.  Returns a dict of arrays."""

    def objective(u):
        return stat_free(to_bounded(u, lo, hi))

    u0 = to_unbounded(theta_all[idx], lo, hi)
    n_free = idx.shape[0]
    use_lm = options.method == "lm" or (options.method == "auto" and n_free <= 30)
    minimize = (partial(levenberg_marquardt, derivatives=derivatives, max_iter=options.max_iter)
                if use_lm else partial(lbfgs, derivatives=derivatives,
                                       max_iter=options.max_iter * 10))
    if options.n_starts > 1:
        noise = jax.random.normal(start_key, (options.n_starts - 1, n_free))
        starts = jnp.concatenate([u0[None], u0[None] + options.start_spread * noise])
        runs = jax.vmap(lambda s: minimize(objective, s))(starts)
        fun = jnp.where(jnp.isfinite(runs.fun), runs.fun, jnp.inf)
        best = jnp.argmin(fun)
        res = jax.tree_util.tree_map(lambda a: a[best], runs)
    else:
        res = minimize(objective, u0)
    theta_best = to_bounded(res.x, lo, hi)
    # covariance in parameter space: C = 2 H^-1 (statistic = -2 ln L + const)
    hess_theta = derivatives.theta_derivatives(theta_best)[2]
    cov = 2.0 * small_linalg.inv(hess_theta)
    out = {
        "theta": theta_all.at[idx].set(theta_best),
        "stat_value": res.fun,
        "status": res.status,
        "n_iter": res.n_iter,
        "covariance": cov,
        "grad_norm": jnp.max(jnp.abs(res.grad)),
    }
    if options.profile:
        hess_u = res.hess
        cov_u = 2.0 * small_linalg.inv(hess_u)
        sigma_u = jnp.sqrt(jnp.abs(jnp.diag(cov_u)))
        bounds_u, flags = profile_bounds(objective, res.x, res.fun, sigma_u,
                                         delta_stat(options.level), derivatives=derivatives,
                                         cov_x=cov_u, search=options.search)
        bounds = to_bounded(bounds_u, lo[:, None], hi[:, None])
        out["profile_bounds"] = bounds
        out["profile_flags"] = flags
        if not options.search:  # what _profile_search needs to finish the unsolved bounds
            out.update(u_best=res.x, sigma_u=sigma_u, bounds_u=bounds_u)
    return out


@partial(jax.jit, static_argnames=("structure", "free_idx", "stat", "options"))
def _profile_search(theta_all, lower, upper, data, u_best, f_best, sigma_u, known_u, *,
                    structure, free_idx, stat, options):
    """The profile bounds that a fit with ``options.search = False`` left unsolved (NaN in
    ``known_u``), by the safeguarded search of :func:`profile_bounds`; returns (bounds,
    flags) in parameter space."""
    stat_free, derivatives, idx, lo, hi = _problem(theta_all, lower, upper, data, structure,
                                                   free_idx, stat)
    bounds_u, flags = profile_bounds(lambda u: stat_free(to_bounded(u, lo, hi)), u_best, f_best,
                                     sigma_u, delta_stat(options.level), derivatives=derivatives,
                                     known=known_u)
    return to_bounded(bounds_u, lo[:, None], hi[:, None]), flags


def _fit_in_two_programs(kernel, name, static, theta_all, lower, upper, seed, data):
    """One fit through the export cache, its profile bounds' safeguarded search compiled and
    run only when the Venzon-Moolgavkar stage leaves a bound unsolved (a parameter limit, a
    non-quadratic profile): most fits never compile that half of the program."""
    options = static["options"]
    first = dict(static, options=options._replace(search=False))
    out = exported_call(kernel, name, first, theta_all, lower, upper, prng_key(seed), data)
    out = jax.tree_util.tree_map(np.asarray, out)
    if options.profile and np.any(out["profile_flags"] == BoundFlag.RUNNING):
        bounds, flags = exported_call(
            _profile_search, "bkgjax.fit.core._profile_search", static, theta_all, lower,
            upper, data, out["u_best"], out["stat_value"], out["sigma_u"], out["bounds_u"])
        out["profile_bounds"], out["profile_flags"] = np.asarray(bounds), np.asarray(flags)
    return out


_STATIC = ("structure", "free_idx", "stat", "options")


@partial(jax.jit, static_argnames=_STATIC)
def _fit_one(theta_all, lower, upper, start_key, data, *, structure, free_idx, stat, options):
    return _fit_kernel(theta_all, lower, upper, start_key, data, structure=structure,
                       free_idx=free_idx, stat=stat, options=options)


@partial(jax.jit, static_argnames=_STATIC)
def _fit_many(theta_all, lower, upper, start_keys, data, counts, background_counts, *,
              structure, free_idx, stat, options):
    def one(key, c, b):
        d = data.with_counts(c, b)
        return _fit_kernel(theta_all, lower, upper, key, d, structure=structure,
                           free_idx=free_idx, stat=stat, options=options)

    if background_counts is None:
        return jax.vmap(lambda k, c: one(k, c, None))(start_keys, counts)
    return jax.vmap(one)(start_keys, counts, background_counts)


@partial(jax.jit, static_argnames=_STATIC)
def _fit_joint_one(theta_all, lower, upper, start_key, datasets, *, structure, free_idx, stat,
                   options):
    return _joint_kernel(theta_all, lower, upper, start_key, datasets, structure=structure,
                         free_idx=free_idx, stat=stat, options=options)


@partial(jax.jit, static_argnames=_STATIC)
def _fit_joint_many(theta_all, lower, upper, start_keys, datasets, counts, background_counts, *,
                    structure, free_idx, stat, options):
    """Batched joint fits: ``counts`` and ``background_counts`` are tuples (one per data set)
    of arrays with a leading simulation axis (``None`` entries keep the data's own)."""
    def one(key, c, b):
        ds = tuple(d.with_counts(ci, bi) for d, ci, bi in zip(datasets, c, b))
        return _joint_kernel(theta_all, lower, upper, key, ds, structure=structure,
                             free_idx=free_idx, stat=stat, options=options)

    return jax.vmap(one)(start_keys, counts, background_counts)


def _start(model, n_bins, where):
    """(free names, their indices, start values inside the limits, lower, upper limits)."""
    free_names = model.free_names
    if not free_names:
        raise ValueError(f"model {model} has no free parameter")
    _check_dof(len(free_names), n_bins, where)
    _check_flux_normalisations(model)
    names = model.names
    free_idx = tuple(names.index(n) for n in free_names)
    theta_all = np.asarray(list(model.resolve({}).values()), dtype=np.float64)
    lower = np.asarray([p.min for p in model.parameters], dtype=np.float64)
    upper = np.asarray([p.max for p in model.parameters], dtype=np.float64)
    theta_all = start_inside_limits(theta_all, lower, upper, free_idx)
    # device_put, not jnp.asarray: the same arrays without a small XLA compilation
    return (free_names, free_idx, jax.device_put(theta_all), jax.device_put(lower),
            jax.device_put(upper))


def _check_flux_normalisations(model):
    """cflux/cpflux set the flux of their expression: its normalisation free as well is
    degenerate with it (no unique minimum), so the fit is refused (XSPEC's manual: freeze it)."""
    parameters = {p.name: p for p in model.parameters}
    parts = [("", model)] if isinstance(model, Model) else [("", model.source),
                                                             (BKG_PREFIX, model.background)]
    for prefix, part in parts:
        if part is None:
            continue
        for name, label, free in free_flux_normalisations(part.expr, parameters, prefix):
            flux = f"{prefix}{label}.{COMPONENTS[name].param_names[-1]}"
            raise ValueError(
                f"{flux} sets the flux of the expression {name} acts on, and the "
                f"normalisation of that expression is free too ({', '.join(free)}): the two "
                f"are degenerate; freeze one of them, e.g. model.set({free[0]!r}, "
                f"frozen=True) (--freeze {free[0]}=VALUE), as XSPEC's manual asks for {name}")


def _check_dof(n_free, n_bins, where):
    """More free parameters than bins cannot be fitted (the minimum is not unique)."""
    if n_free > n_bins:
        raise ValueError(f"{where}: {n_free} free parameters but only {n_bins} bin(s) enter the "
                         "statistic; notice more channels, group less or freeze parameters")


def _datavar_variance(data):
    """chi2datavar's variance per bin (with a background: S + B/r^2, as Sherpa subtracts)."""
    variance = np.asarray(data.counts)
    if data.has_background:
        variance = variance + np.asarray(data.background_counts) / np.asarray(
            data.background_ratio) ** 2
    return variance


def _prepare(model: Model, data: SpectralData, stat: str):
    if stat not in STATISTICS:
        raise ValueError(f"unknown statistic {stat!r}; choose one of {STATISTICS}")
    if model.kind != "add":
        raise ValueError(f"model {model} is multiplicative only; add an additive component")
    if stat in ("wstat", "pgstat") and not data.has_background:
        raise ValueError(f"{data.name}: stat={stat!r} needs a background spectrum; load one or "
                         "use cstat/cash")
    if stat == "chi2datavar" and bool(np.any(_datavar_variance(data) == 0)):
        raise ValueError(f"{data.name}: chi2datavar needs counts > 0 in every bin "
                         f"({int(np.sum(np.asarray(data.counts) == 0))} empty); group the "
                         "spectrum (grouping='min-counts:N'), or use chi2 (Gehrels) or cstat")
    return _start(model, data.n_bins, data.name)


#: A start closer to a limit than this fraction of the limit's scale (the range, or the
#: limit's magnitude if smaller, at least 1), or outside it, is moved that far inside: on the
#: limit the bounded-to-unbounded map saturates, the gradient vanishes and a Newton fit would
#: stop there and report convergence.
START_MARGIN = 1e-3
#: Ranges wider than this (norms: 0 to 1e24) map like a logarithm near the lower limit and
#: need no margin.
_MODERATE_RANGE = 1e6


def start_inside_limits(theta, lower, upper, free_idx):
    """Free starts on or beyond a limit moved :data:`START_MARGIN` of the range inside (as
    Sherpa moves a start into its limits); other values are returned unchanged."""
    theta = np.array(theta, dtype=np.float64)
    for i in free_idx:
        lo, hi = float(lower[i]), float(upper[i])
        if np.isfinite(lo) and np.isfinite(hi) and hi - lo <= _MODERATE_RANGE:
            span = hi - lo
            theta[i] = max(theta[i], lo + START_MARGIN * min(span, max(1.0, abs(lo))))
            theta[i] = min(theta[i], hi - START_MARGIN * min(span, max(1.0, abs(hi))))
        elif np.isfinite(lo) and theta[i] < lo:
            theta[i] = lo
        elif np.isfinite(hi) and theta[i] > hi:
            theta[i] = hi
    return theta


def at_limits(values, model: Model, free_names, rtol: float = 1e-6) -> dict:
    """Per free parameter: True when the best value lies within ``rtol`` of its range (or of
    the limit's magnitude for one-sided or very wide ranges) from a limit."""
    flags = {}
    for name in free_names:
        p, v = model[name], values[name]
        flags[name] = False
        for limit in (p.min, p.max):
            if not np.isfinite(limit):
                continue
            scale = (p.max - p.min) if np.isfinite(p.max - p.min) and p.max - p.min <= \
                _MODERATE_RANGE else max(abs(limit), 1.0)
            if abs(v - limit) <= rtol * scale:
                flags[name] = True
    return flags


@dataclass(frozen=True)
class FitResult:
    """Result of :func:`fit`.

    ``values`` holds every parameter; ``errors`` (1 sigma, covariance) and ``intervals``
    (profile bounds at ``level``, absolute values) hold the free ones.  ``bound_flags`` per
    free parameter: (lower, upper) :class:`~bkgjax.fit.optimize.BoundFlag` values, 1 = found,
    2 = the profile did not reach the level before the parameter limit (the bound is the
    limit), 3 = a lower minimum was met.
    """

    model: Model
    stat: str
    stat_value: float
    dof: int
    n_bins: int
    converged: bool
    reason: str
    n_iter: int
    free_names: tuple
    values: dict
    errors: dict
    covariance: np.ndarray
    level: float | None = None
    intervals: dict = field(default_factory=dict)
    bound_flags: dict = field(default_factory=dict)
    at_limit: dict = field(default_factory=dict)

    @property
    def reduced_stat(self) -> float:
        return self.stat_value / self.dof if self.dof > 0 else math.nan

    def to_dict(self) -> dict:
        """JSON-ready summary (parameter keys as the shortest unambiguous names)."""
        display = self.model.display_names()
        params = {}
        for name in self.free_names:
            entry = {"value": self.values[name], "error": self.errors[name],
                     "unit": self.model[name].unit}
            if name in self.intervals:
                lo, hi = self.intervals[name]
                entry[f"lower{int(round(100 * self.level))}"] = lo
                entry[f"upper{int(round(100 * self.level))}"] = hi
            entry["at_limit"] = bool(self.at_limit.get(name, False))
            params[display[name]] = entry
        frozen = {display[p.name]: self.values[p.name] for p in self.model.parameters
                  if p.frozen}
        linked = {display[p.name]: {"value": self.values[p.name], "link": p.link}
                  for p in self.model.parameters if p.link is not None and not p.frozen}
        return {
            "model": str(self.model),
            "stat": self.stat,
            "stat_value": self.stat_value,
            "dof": self.dof,
            "n_bins": self.n_bins,
            "converged": self.converged,
            "reason": self.reason,
            "n_iter": self.n_iter,
            "params": params,
            "frozen": frozen,
            "linked": linked,
        }

    def to_json(self, path=None, **kwargs) -> str:
        """JSON text (strict: NaN and infinities, e.g. an undefined error, become null)."""
        text = json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False, **kwargs)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text

    def __str__(self) -> str:
        display = self.model.display_names()
        pct = int(round(100 * self.level)) if self.level else None
        head = (f"Model {self.model}: {self.stat} = {self.stat_value:.4f} for {self.dof} dof "
                f"({self.n_bins} bins), reduced {self.reduced_stat:.4f}\n"
                f"{'converged' if self.converged else 'NOT CONVERGED'}: {self.reason} "
                f"({self.n_iter} iterations)\n")
        cols = f"{'parameter':22s} {'value':>14s} {'1-sigma':>12s}"
        if pct:
            cols += f" {'lower' + str(pct):>14s} {'upper' + str(pct):>14s}"
        rows = [cols + "  unit"]
        for name in self.free_names:
            row = f"{display[name]:22s} {self.values[name]:14.6g} {self.errors[name]:12.4g}"
            if name in self.intervals:
                lo, hi = self.intervals[name]
                flags = self.bound_flags.get(name, (BoundFlag.FOUND, BoundFlag.FOUND))
                mark = lambda v, f: f"{v:14.6g}" + ("*" if f != BoundFlag.FOUND else " ")  # noqa: E731
                row += f" {mark(lo, flags[0])}{mark(hi, flags[1])}"
            rows.append(row + f" {self.model[name].unit}"
                        + ("  (at its limit)" if self.at_limit.get(name) else ""))
        for p in self.model.parameters:  # frozen and linked parameters are listed too
            if not p.is_free:
                state = "frozen" if p.frozen else f"= {p.link}"
                rows.append(f"{display[p.name]:22s} {self.values[p.name]:14.6g} {state:>12s}"
                            f" {p.unit}")
        tail = ""
        if any(f != BoundFlag.FOUND for fl in self.bound_flags.values() for f in fl):
            tail = "\n* bound at a parameter limit or not found (see bound_flags)"
        if any(self.at_limit.values()):
            tail += ("\nbest value at a parameter limit: the minimum may lie beyond it (widen "
                     "the limit) or the data do not constrain it (an upper limit)")
        return head + "\n".join(rows) + tail


class BackgroundIgnoredWarning(UserWarning):
    """A background spectrum is loaded but the statistic (cash, cstat) fits the source counts
    alone, so the background is not used (XSPEC and Sherpa say the same)."""


def warn_if_background_ignored(data: SpectralData, stat: str, *, stacklevel: int = 3) -> None:
    """Warn (:class:`BackgroundIgnoredWarning`) when ``stat`` ignores the loaded background."""
    if stat in ("cash", "cstat") and data.has_background:
        warnings.warn(
            f"{data.name or 'spectrum'}: a background spectrum is loaded but {stat} fits the "
            f"source counts alone, so the background is ignored; use stat='wstat' (background "
            f"profiled), or load without it (use_background=False; CLI --no-background)",
            BackgroundIgnoredWarning, stacklevel=stacklevel)


def _fit_options(errors, level, method, n_starts, max_iter) -> FitOptions:
    """Validated static settings (a clear error for each bad value, never a silent default)."""
    if errors not in ("profile", "covariance"):
        raise ValueError(f"errors must be 'profile' or 'covariance', got {errors!r}")
    if method not in ("auto", "lm", "lbfgs"):
        raise ValueError(f"method must be 'auto', 'lm' or 'lbfgs', got {method!r}")
    for name, value in (("n_starts", n_starts), ("max_iter", max_iter)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return FitOptions(method=method, max_iter=int(max_iter), profile=errors == "profile",
                      level=float(level), n_starts=int(n_starts))


def fit(model, data, stat: str = "cstat", *, errors: str = "profile", level: float = 0.9,
        method: str = "auto", n_starts: int = 1, seed: int = 0,
        max_iter: int = 200) -> FitResult:
    """Maximum-likelihood fit of ``model`` to one spectrum or jointly to several.

    Parameters
    ----------
    model : Model or JointModel
        Additive model; its current values are the start.  A :class:`~bkgjax.fit.JointModel`
        adds per-data-set parameters and a background model; a plain Model over several
        data sets shares every parameter.
    data : SpectralData or sequence of SpectralData
        From :func:`bkgjax.fit.load` or :meth:`SpectralData.from_arrays`.
    stat : {"cstat", "cash", "wstat", "pgstat", "chi2", "chi2gehrels", "chi2datavar", "chi2modvar"}
        Fit statistic (:mod:`bkgjax.stats`), summed over all spectra; wstat (Poisson) and
        pgstat (Gaussian, the background's STAT_ERR) profile the background spectrum.
    errors : {"profile", "covariance"}
        ``"profile"`` adds profile-likelihood bounds at ``level`` to the covariance errors.
    level : float
        Confidence level of the profile bounds (0.9: :math:`\\Delta S = 2.706`).
    method : {"auto", "lm", "lbfgs"}
        Levenberg-Marquardt Newton (exact Hessian) or optax L-BFGS.
    n_starts : int
        Multistart: extra starts drawn around the given one in unconstrained space
        (``seed``); the best minimum is kept.
    """
    options = _fit_options(errors, level, method, n_starts, max_iter)
    if not (isinstance(model, Model) and isinstance(data, SpectralData)):
        return _fit_joint(model, data, stat, options, seed)
    free_names, free_idx, theta_all, lower, upper = _prepare(model, data, stat)
    warn_if_background_ignored(data, stat)
    # through the on-disk export cache: a new process skips tracing (export_cache docstring)
    out = _fit_in_two_programs(_fit_one, "bkgjax.fit.core._fit_one",
                               {"structure": model.structure, "free_idx": free_idx,
                                "stat": stat, "options": options},
                               theta_all, lower, upper, seed, data)
    return _make_result(model, data.n_bins, stat, free_names, out, options)


def _prepare_joint(model, data, stat):
    model, datasets = as_joint(model, data)
    check_joint(model, datasets, stat)
    return (model, datasets) + _start(model, n_bins_of(model, datasets), "the data sets")


def _fit_joint(model, data, stat, options, seed) -> FitResult:
    model, datasets, free_names, free_idx, theta_all, lower, upper = _prepare_joint(
        model, data, stat)
    if model.background is None:
        for d in datasets:
            warn_if_background_ignored(d, stat, stacklevel=4)
    out = _fit_in_two_programs(_fit_joint_one, "bkgjax.fit.core._fit_joint_one",
                               {"structure": model.structure, "free_idx": free_idx,
                                "stat": stat, "options": options},
                               theta_all, lower, upper, seed, datasets)
    return _make_result(model, n_bins_of(model, datasets), stat, free_names, out, options)


def _make_result(model, n_bins, stat, free_names, out, options) -> FitResult:
    theta = out["theta"]
    values = dict(zip(model.names, (float(v) for v in theta)))
    cov = np.asarray(out["covariance"])
    sig = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
    errors = dict(zip(free_names, (float(s) for s in sig)))
    status = FitStatus(int(out["status"]))
    intervals, flags = {}, {}
    if options.profile:
        for k, name in enumerate(free_names):
            intervals[name] = (float(out["profile_bounds"][k, 0]),
                               float(out["profile_bounds"][k, 1]))
            flags[name] = (int(out["profile_flags"][k, 0]), int(out["profile_flags"][k, 1]))
    best_model = model.with_values({n: values[n] for n in free_names})
    return FitResult(
        model=best_model,
        stat=stat,
        stat_value=float(out["stat_value"]),
        dof=n_bins - len(free_names),
        n_bins=n_bins,
        converged=status in CONVERGED_STATUSES,
        reason=STATUS_MESSAGES[status],
        n_iter=int(out["n_iter"]),
        free_names=free_names,
        values=values,
        errors=errors,
        covariance=cov,
        level=options.level if options.profile else None,
        intervals=intervals,
        bound_flags=flags,
        at_limit=at_limits(values, model, free_names),
    )


@dataclass(frozen=True)
class BatchFitResult:
    """Arrays over a batch of fits (leading axis = spectra/simulations).

    ``values`` (n, n_params) in ``names`` order; ``errors`` and the profile bounds over the
    free parameters in ``free_names`` order.
    """

    names: tuple
    free_names: tuple
    stat: str
    values: np.ndarray
    stat_value: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    covariance: np.ndarray
    errors: np.ndarray
    level: float | None
    lower: np.ndarray | None
    upper: np.ndarray | None
    bound_flags: np.ndarray | None

    def free_values(self) -> np.ndarray:
        idx = [self.names.index(n) for n in self.free_names]
        return self.values[:, idx]


def shard_batch(*arrays, axis_name: str = "spectrum"):
    """Place arrays with a leading batch axis across all devices (``jax.sharding`` over the
    named mesh axis ``axis_name``); jit then partitions the vmapped fits over devices (CPU
    cores with ``--xla_force_host_platform_device_count``, GPUs, or hosts after
    ``jax.distributed.initialize``).  With one device, or a batch not divisible by the device
    count, arrays are returned unchanged."""
    devices = jax.devices()
    out = []
    for a in arrays:
        if a is None or len(devices) == 1 or a.shape[0] % len(devices):
            out.append(a)
            continue
        mesh = jax.sharding.Mesh(np.asarray(devices), (axis_name,))
        spec = jax.sharding.PartitionSpec(axis_name, *([None] * (a.ndim - 1)))
        out.append(jax.device_put(a, jax.sharding.NamedSharding(mesh, spec)))
    return tuple(out)


def _check_batch_counts(counts, what, stat):
    """Simulated or observed counts of a batch: finite, and for the Poisson statistics
    non-negative integers (a clear error instead of a 'converged' fit of impossible data)."""
    values = np.asarray(counts)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contain NaN or inf")
    if stat not in CHI2_STATISTICS and (np.any(values < 0) or np.any(values != np.round(values))):
        raise ValueError(f"{what} must be non-negative integers for stat={stat!r} "
                         f"({int(np.sum((values < 0) | (values != np.round(values))))} bad values)")


def fit_batch(model, data, counts, background_counts=None,
              stat: str = "cstat", *, errors: str = "covariance", level: float = 0.9,
              method: str = "auto", n_starts: int = 1, seed: int = 0,
              max_iter: int = 200, shard: bool = True) -> BatchFitResult:
    """Fit ``model`` to many spectra sharing ``data``'s response and exposure, in one
    compiled, vmapped call.

    ``counts`` has shape (n_spectra, n_bins) (and ``background_counts`` the same, for wstat).
    With ``shard=True`` (default) the spectrum axis is split over all available devices
    (:func:`shard_batch`).

    Joint fits (a :class:`~bkgjax.fit.JointModel`, or ``data`` a sequence of data sets):
    ``counts`` is a sequence with one (n_spectra, n_bins_k) array per data set, and
    ``background_counts`` ``None`` or such a sequence (the background spectra, fitted by a
    background model or profiled by wstat); the result's ``names`` are the global names.
    """
    if not (isinstance(model, Model) and isinstance(data, SpectralData)):
        return _fit_joint_batch(model, data, counts, background_counts, stat,
                                _fit_options(errors, level, method, n_starts, max_iter), seed,
                                shard)
    counts = jnp.asarray(counts, dtype=jnp.float64)
    _check_batch_counts(counts, "counts", stat)
    if background_counts is not None:
        _check_batch_counts(background_counts, "background_counts",
                            "chi2" if stat == "pgstat" else stat)
    if counts.ndim != 2 or counts.shape[1] != data.n_bins:
        raise ValueError(f"counts must have shape (n_spectra, {data.n_bins}), got "
                         f"{counts.shape}")
    if background_counts is not None:
        background_counts = jnp.asarray(background_counts, dtype=jnp.float64)
        if background_counts.shape != counts.shape:
            raise ValueError(f"background_counts shape {background_counts.shape} differs from "
                             f"counts {counts.shape}")
    options = _fit_options(errors, level, method, n_starts, max_iter)
    free_names, free_idx, theta_all, lower, upper = _prepare(model, data, stat)
    keys = jax.random.split(jax.random.PRNGKey(seed), counts.shape[0])
    if shard:
        keys, counts, background_counts = shard_batch(keys, counts, background_counts)
    out = _fit_many(theta_all, lower, upper, keys, data, counts, background_counts,
                    structure=model.structure, free_idx=free_idx, stat=stat, options=options)
    return _batch_result(model, free_names, stat, out, options, level)


def _fit_joint_batch(model, data, counts, background_counts, stat, options, seed, shard):
    model, datasets, free_names, free_idx, theta_all, lower, upper = _prepare_joint(
        model, data, stat)
    counts = tuple(counts)
    if len(counts) != len(datasets):
        raise ValueError(f"counts must hold one array per data set ({len(datasets)}), got "
                         f"{len(counts)}")
    bkg = (None,) * len(datasets) if background_counts is None else tuple(background_counts)
    if len(bkg) != len(datasets):
        raise ValueError(f"background_counts must hold one array per data set "
                         f"({len(datasets)}), got {len(bkg)}")
    n_spectra = None
    checked_c, checked_b = [], []
    for k, (d, c, b) in enumerate(zip(datasets, counts, bkg), start=1):
        c = jnp.asarray(c, dtype=jnp.float64)
        if c.ndim != 2 or c.shape[1] != d.n_bins or (n_spectra not in (None, c.shape[0])):
            raise ValueError(f"counts of data set {k} must have shape (n_spectra, {d.n_bins}) "
                             f"with the same n_spectra for all, got {c.shape}")
        n_spectra = c.shape[0]
        _check_batch_counts(c, f"counts of data set {k}", stat)
        if b is not None:
            b = jnp.asarray(b, dtype=jnp.float64)
            if b.shape != c.shape:
                raise ValueError(f"background_counts of data set {k}: shape {b.shape}, counts "
                                 f"{c.shape}")
            # pgstat's background is Gaussian (any real value); the others count photons
            _check_batch_counts(b, f"background_counts of data set {k}",
                                "chi2" if stat == "pgstat" else stat)
        checked_c.append(c)
        checked_b.append(b)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_spectra)
    if shard:
        keys, *arrays = shard_batch(keys, *checked_c, *checked_b)
        checked_c, checked_b = arrays[:len(datasets)], arrays[len(datasets):]
    out = _fit_joint_many(theta_all, lower, upper, keys, datasets, tuple(checked_c),
                          tuple(checked_b), structure=model.structure, free_idx=free_idx,
                          stat=stat, options=options)
    return _batch_result(model, free_names, stat, out, options, options.level)


def _batch_result(model, free_names, stat, out, options, level) -> BatchFitResult:
    out = jax.tree_util.tree_map(np.asarray, out)
    cov = out["covariance"]
    diag = np.diagonal(cov, axis1=1, axis2=2)
    status = out["status"]
    return BatchFitResult(
        names=model.names,
        free_names=free_names,
        stat=stat,
        values=out["theta"],
        stat_value=out["stat_value"],
        converged=np.isin(status, CONVERGED_STATUSES),
        status=status,
        n_iter=out["n_iter"],
        covariance=cov,
        errors=np.sqrt(np.where(diag > 0, diag, np.nan)),
        level=level if options.profile else None,
        lower=out["profile_bounds"][..., 0] if options.profile else None,
        upper=out["profile_bounds"][..., 1] if options.profile else None,
        bound_flags=out["profile_flags"] if options.profile else None,
    )
