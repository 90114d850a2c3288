r"""Goodness of fit by parametric bootstrap of the fit statistic (XSPEC ``goodness``, Sherpa
``plot_cdf``/``sample_energy_flux`` style simulations; Kaastra 2017, A&A 605, A51 for why the
C-statistic needs it).

From the best fit, ``n_sims`` replicas of every spectrum are drawn: source spectra
:math:`S \sim \mathrm{Poisson}(\mu_s)`; background spectra from the background model
(:math:`\mathrm{Poisson}(\mu_b)`), or, for wstat, from the profiled background
(:math:`\mathrm{Poisson}(r\,\hat b)`, :func:`bkgjax.stats.wstat_background`), or, for pgstat,
:math:`N(\hat b r, \sigma_B)` (:func:`bkgjax.stats.pgstat_background`).  Each replica is
fitted again (one compiled, vmapped batch, :func:`bkgjax.fit.fit_batch`) and the p-value is
the fraction of replicas whose best-fit statistic is at least the observed one (with the
+1 correction of Davison & Hinkley 1997, eq. 4.11, so that it is never exactly 0).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..stats import pgstat_background, wstat_background
from .core import fit_batch
from .joint import as_joint, joint_predicted

__all__ = ["goodness_of_fit"]


def goodness_of_fit(result, data, *, n_sims: int = 1000, seed: int = 0) -> dict:
    """Parametric-bootstrap p-value of ``result`` (from :func:`bkgjax.fit.fit` on ``data``).

    Returns ``{"p_value", "stat", "n_sims", "n_failed", "stat_sims_median",
    "stat_sims_90"}``; replicas whose fit did not converge are counted in ``n_failed`` and
    left out of the p-value (reported, never silent).
    """
    if isinstance(n_sims, bool) or int(n_sims) != n_sims or n_sims < 10:
        raise ValueError(f"n_sims must be an integer >= 10, got {n_sims!r}")
    model, datasets = as_joint(result.model, data)
    theta = jnp.asarray([result.values[n] for n in model.names])
    predicted = joint_predicted(model.structure, theta, datasets)
    rng = np.random.default_rng(seed)
    counts, backgrounds = [], []
    for d, entry in zip(datasets, predicted):
        mu = np.asarray(entry["source"])
        background = None
        if model.background is not None:
            background = rng.poisson(np.asarray(entry["background"]), (n_sims, d.n_bins))
        elif result.stat == "wstat":
            b_hat = np.asarray(wstat_background(entry["source"], d.counts, d.background_counts,
                                                d.background_ratio))
            mu = mu + b_hat / np.asarray(d.background_ratio)
            background = rng.poisson(b_hat, (n_sims, d.n_bins))
        elif result.stat == "pgstat":
            g_hat = np.asarray(pgstat_background(entry["source"], d.counts, d.background_counts,
                                                 d.background_error, d.background_ratio))
            mu = mu + g_hat
            ratio = np.asarray(d.background_ratio)
            background = ratio * g_hat + np.asarray(d.background_error) * rng.standard_normal(
                (n_sims, d.n_bins))
        counts.append(rng.poisson(np.clip(mu, 0.0, None), (n_sims, d.n_bins)).astype(float))
        backgrounds.append(None if background is None else np.asarray(background, float))
    use_background = any(b is not None for b in backgrounds)
    batch = fit_batch(result.model, list(datasets), counts,
                      backgrounds if use_background else None, result.stat,
                      errors="covariance", seed=seed)
    ok = np.asarray(batch.converged)
    stats = np.asarray(batch.stat_value)[ok]
    n_ok = int(ok.sum())
    p_value = (1 + int(np.sum(stats >= result.stat_value))) / (n_ok + 1)
    return {"p_value": float(p_value), "stat": float(result.stat_value), "n_sims": int(n_sims),
            "n_failed": int(n_sims - n_ok),
            "stat_sims_median": float(np.median(stats)) if n_ok else float("nan"),
            "stat_sims_90": float(np.percentile(stats, 90)) if n_ok else float("nan"),
            "method": "parametric bootstrap: replicas of the best fit refitted"}
