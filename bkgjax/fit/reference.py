r"""Reference path: Nelder-Mead simplex (AMOEBA) + bootstrap, as in the papers.

Krivonos et al. (2021, nustar_cxb_stray_light.txt section 4) maximise the likelihood with
AMOEBA and take errors from :math:`10^4` bootstrap runs.  This module keeps that procedure
(SciPy's Nelder-Mead on the same compiled statistic, and a Poisson bootstrap of the counts) for
benchmarks and cross-checks of :func:`bkgjax.fit.fit`; it is slow by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..spectral.model import Model
from .dataset import SpectralData, total_statistic_of_theta

__all__ = ["NelderMeadResult", "fit_nelder_mead"]


@dataclass(frozen=True)
class NelderMeadResult:
    """Best fit (free parameters), statistic, simplex diagnostics and bootstrap draws.

    ``bootstrap`` is (n_bootstrap, n_free) best fits of Poisson-resampled counts;
    ``intervals`` the central percentile intervals at ``level``.
    """

    free_names: tuple
    values: dict
    stat_value: float
    converged: bool
    n_evaluations: int
    bootstrap: np.ndarray | None
    level: float
    intervals: dict
    errors: dict


def fit_nelder_mead(model: Model, data: SpectralData, stat: str = "cstat", *,
                    n_bootstrap: int = 0, level: float = 0.9, seed: int = 0,
                    xatol: float = 1e-8, fatol: float = 1e-8, max_evaluations: int = 20000,
                    progress: bool = False) -> NelderMeadResult:
    """Nelder-Mead fit of the free parameters (within their limits) and optional bootstrap.

    The simplex works on parameters scaled by their starting values so that norms of 1e-5 and
    indices of 1 are comparable.  Bootstrap samples are :math:`D^* \\sim \\mathrm{Poisson}(D)`
    (and the same for the background), each refitted from the best fit.
    """
    names = model.names
    free = model.free_names
    free_idx = np.array([names.index(n) for n in free])
    theta_all = np.array(list(model.resolve({}).values()), dtype=float)
    scale = np.where(theta_all[free_idx] != 0, np.abs(theta_all[free_idx]), 1.0)
    bounds = [(model[n].min / s, model[n].max / s) for n, s in zip(free, scale)]
    structure = model.structure

    @jax.jit
    def objective(scaled, counts, background_counts):
        theta = jnp.asarray(theta_all).at[free_idx].set(scaled * scale)
        d = data.with_counts(counts, background_counts)
        return total_statistic_of_theta(stat, structure, theta, d)

    def run(start, counts, background_counts):
        fun = lambda x: float(objective(jnp.asarray(x), counts, background_counts))  # noqa: E731
        from scipy.optimize import minimize  # the reference path only

        out = minimize(fun, start, method="Nelder-Mead", bounds=bounds,
                       options={"xatol": xatol, "fatol": fatol, "maxfev": max_evaluations,
                                "adaptive": len(start) > 3})
        return out

    counts = data.counts
    bkg = data.background_counts
    best = run(theta_all[free_idx] / scale, counts, bkg)
    values = dict(zip(names, theta_all.tolist()))
    values.update({n: float(v * s) for n, v, s in zip(free, best.x, scale)})
    draws = None
    intervals, errors = {}, {}
    if n_bootstrap > 0:
        key = jax.random.PRNGKey(seed)
        draws = np.empty((n_bootstrap, len(free)))
        iterator = range(n_bootstrap)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="bootstrap")
        for i in iterator:
            key, k1, k2 = jax.random.split(key, 3)
            c = jax.random.poisson(k1, counts).astype(jnp.float64)
            b = None if bkg is None else jax.random.poisson(k2, bkg).astype(jnp.float64)
            out = run(best.x, c, b)
            draws[i] = out.x * scale
        tail = 100 * (1 - level) / 2
        for k, name in enumerate(free):
            intervals[name] = tuple(np.percentile(draws[:, k], [tail, 100 - tail]).tolist())
            errors[name] = float(np.std(draws[:, k], ddof=1))
    return NelderMeadResult(
        free_names=free,
        values=values,
        stat_value=float(best.fun),
        converged=bool(best.success),
        n_evaluations=int(best.nfev),
        bootstrap=draws,
        level=level,
        intervals=intervals,
        errors=errors,
    )
