r"""Fluxes of a fitted model with confidence intervals (Sherpa ``sample_flux``, XSPEC
``flux err``).

The interval comes from the parameter distribution: ``n_draws`` parameter vectors drawn from
the multivariate normal of the best fit and its covariance :math:`C = 2H^{-1}`, each clipped
to the parameter limits (Sherpa's ``clip="hard"``), give ``n_draws`` fluxes whose central
``level`` quantiles are the interval.  A flux of a *sub-expression* (e.g. the unabsorbed
``powerlaw`` of ``phabs*powerlaw``, or one line of a sum) uses the same draws.

Like Sherpa's ``sample_flux``, the draws assume a Gaussian parameter distribution: where
parameters lie on a curved ridge (a cut-off power law's index, cut-off and norm) the
interval is too wide and skewed; quote the posterior's flux interval there
(:func:`bkgjax.infer.posterior_flux`, which uses :func:`draw_fluxes` on the NUTS draws).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..spectral.flux import KEV_TO_ERG
from ..spectral.model import Model
from .joint import JointModel, evaluate_tie

__all__ = ["sample_flux", "draw_fluxes", "FLUX_UNITS"]

FLUX_UNITS = {"energy": "erg/cm^2/s", "photon": "photons/cm^2/s"}


@partial(jax.jit, static_argnames=("structure", "kind"))
def _fluxes(theta, e_lo, e_hi, *, structure, kind):
    """Band flux for each row of ``theta`` (all the sub-model's parameters, in order)."""
    def one(t):
        per_bin = structure.evaluate(t, e_lo, e_hi)
        if kind == "energy":
            return jnp.sum(per_bin * 0.5 * (e_lo + e_hi)) * KEV_TO_ERG
        return jnp.sum(per_bin)

    return jax.vmap(one)(theta)


def _dataset_columns(model, k):
    """Global parameter name feeding each source-model parameter of data set ``k``."""
    if isinstance(model, JointModel):
        per = set(model.per_dataset)
        return {p.name: (f"{p.name}@{k}" if p.name in per else p.name)
                for p in model.source.parameters}
    return {p.name: p.name for p in model.parameters}


def _sub_model(model, component):
    source = model.source if isinstance(model, JointModel) else model
    sub = source if component is None else source.subexpression(component)
    if not isinstance(sub, Model) or sub.kind != "add":
        raise ValueError(f"flux of {component!r}: the expression is not additive")
    return sub


def draw_fluxes(model, draws, e_min, e_max, *, kind="energy", dataset=1, component=None,
                n_bins=1024, fixed=None):
    """Band flux in ``[e_min, e_max]`` keV for each row of parameter draws.

    ``model`` a Model or JointModel; ``draws`` ``{name: array (n,)}`` of (global, qualified)
    parameter values, e.g. posterior draws or covariance draws; the other parameters take
    ``fixed[name]`` (default: their current values).  Ties are re-evaluated per draw; the
    flux is that of data set ``dataset``'s source model or of its sub-expression
    ``component``.  Returns an array (n,) in erg/cm^2/s (energy) or photons/cm^2/s.
    """
    if kind not in FLUX_UNITS:
        raise ValueError(f"kind must be 'energy' or 'photon', got {kind!r}")
    if not (0 < float(e_min) < float(e_max)):
        raise ValueError(f"flux band needs 0 < e_min < e_max keV, got {e_min}, {e_max}")
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    n_sets = model.n_datasets if isinstance(model, JointModel) else 1
    if not 1 <= int(dataset) <= n_sets:
        raise ValueError(f"dataset must be in 1..{n_sets}, got {dataset!r}")
    sub = _sub_model(model, component)
    columns = _dataset_columns(model, int(dataset))
    n = len(next(iter(draws.values()))) if draws else 1
    values = model.resolve({}) if fixed is None else dict(fixed)
    full = {name: np.full(n, v, dtype=float) for name, v in values.items()}
    full.update({name: np.asarray(v, dtype=float) for name, v in draws.items()})
    if isinstance(model, JointModel):  # ties (names or expressions) follow every draw
        names = model.names
        for i, tree in model.structure.links:
            full[names[i]] = evaluate_tie(tree, lambda j: full[names[j]])
    else:
        for p in model.parameters:
            if p.link is not None:
                full[p.name] = full[p.link]
    table = np.stack([full[columns[p.name]] for p in sub.parameters], axis=-1)
    edges = np.geomspace(float(e_min), float(e_max), int(n_bins) + 1)
    return np.asarray(_fluxes(jnp.asarray(table), jnp.asarray(edges[:-1]),
                              jnp.asarray(edges[1:]), structure=sub.structure, kind=kind))


def sample_flux(result, e_min, e_max, *, kind="energy", dataset=1, component=None,
                n_draws=1000, level=0.9, seed=0, n_bins=1024) -> dict:
    """Flux in ``[e_min, e_max]`` keV of the fitted source model (of data set ``dataset``,
    1-based, for joint fits) or of its sub-expression ``component`` (component labels joined
    by ``+`` and ``*``, e.g. ``"powerlaw"`` or ``"gaussian + gaussian_2"``), with the central
    ``level`` interval of ``n_draws`` covariance draws (module docstring).

    Returns ``{"value", "median", "lower90", "upper90", "unit", "n_draws", "band_keV",
    "component", "method"}`` (the key suffix follows ``level``); fluxes per deg^2 for models
    per deg^2.
    """
    if kind not in FLUX_UNITS:
        raise ValueError(f"kind must be 'energy' or 'photon', got {kind!r}")
    if not (0 < float(e_min) < float(e_max)):
        raise ValueError(f"flux band needs 0 < e_min < e_max keV, got {e_min}, {e_max}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    for name, value in (("n_draws", n_draws), ("n_bins", n_bins)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    model = result.model
    free = list(result.free_names)
    mean = np.array([result.values[n] for n in free])
    cov = np.asarray(result.covariance)
    if not (np.all(np.isfinite(cov)) and np.all(np.linalg.eigvalsh(0.5 * (cov + cov.T)) > 0)):
        raise ValueError("the fit's covariance is not positive definite: no flux interval "
                         "(check the fit: parameters at a limit, degenerate parameters)")
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal(mean, cov, size=int(n_draws))
    lower = np.array([model[n].min for n in free])
    upper = np.array([model[n].max for n in free])
    draws = np.clip(draws, lower, upper)
    common = dict(kind=kind, dataset=dataset, component=component, n_bins=n_bins,
                  fixed=result.values)
    best = draw_fluxes(model, {n: mean[i:i + 1] for i, n in enumerate(free)}, e_min, e_max,
                       **common)
    values = draw_fluxes(model, {n: draws[:, i] for i, n in enumerate(free)}, e_min, e_max,
                         **common)
    sub = _sub_model(model, component)
    pct = int(round(100 * level))
    lo_q, med, hi_q = np.percentile(values, [50 * (1 - level), 50, 50 * (1 + level)])
    return {"value": float(best[0]), "median": float(med), f"lower{pct}": float(lo_q),
            f"upper{pct}": float(hi_q), "unit": FLUX_UNITS[kind], "n_draws": int(n_draws),
            "band_keV": [float(e_min), float(e_max)],
            "component": str(sub), "method": "covariance draws clipped to the limits "
            "(Sherpa sample_flux)"}
