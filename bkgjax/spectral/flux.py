r"""Band photon and energy fluxes of additive models (XSPEC ``flux``/``cflux``, Sherpa
``calc_photon_flux``/``calc_energy_flux``), with uncertainties.

The band is split into ``n_bins`` logarithmic bins (default 4096); the energy flux uses the
exact integral of :math:`E\,N(E)` per bin approximated by the bin's photon flux times its
mean photon energy evaluated at the arithmetic bin centre, accurate to ~1e-7 relative at the
default resolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["KEV_TO_ERG", "photon_flux", "energy_flux", "flux_samples", "flux_from_covariance"]

KEV_TO_ERG = 1.602176634e-9


def _band_grid(e_min, e_max, n_bins):
    if not (0 < e_min < e_max):
        raise ValueError(f"flux band must satisfy 0 < e_min < e_max keV, got {e_min}, {e_max}")
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    n_bins = int(n_bins)
    edges = np.geomspace(e_min, e_max, n_bins + 1)
    return jnp.asarray(edges[:-1]), jnp.asarray(edges[1:])


def _check_additive(model):
    if model.kind != "add":
        raise ValueError(f"fluxes need an additive model; {model} is multiplicative")


def photon_flux(model, values=None, e_min=2.0, e_max=10.0, n_bins=4096):
    """Photon flux in [e_min, e_max] keV, photons/cm^2/s (per deg^2 for per-deg^2 models)."""
    _check_additive(model)
    e_lo, e_hi = _band_grid(e_min, e_max, n_bins)
    return jnp.sum(model.evaluate({} if values is None else values, e_lo, e_hi))


def energy_flux(model, values=None, e_min=2.0, e_max=10.0, n_bins=4096):
    """Energy flux in [e_min, e_max] keV, erg/cm^2/s (per deg^2 for per-deg^2 models)."""
    _check_additive(model)
    e_lo, e_hi = _band_grid(e_min, e_max, n_bins)
    per_bin = model.evaluate({} if values is None else values, e_lo, e_hi)
    return jnp.sum(per_bin * 0.5 * (e_lo + e_hi)) * KEV_TO_ERG


def flux_samples(model, samples, e_min=2.0, e_max=10.0, kind="energy", n_bins=1024):
    """Flux for each draw of a parameter sample mapping ``{name: array (n_draws,)}``.

    Use with posterior samples (``bkgjax.infer``) or covariance draws; returns (n_draws,).
    """
    fn = energy_flux if kind == "energy" else photon_flux
    names = list(samples)
    stacked = jnp.stack([jnp.asarray(samples[n]) for n in names], axis=-1)

    def one(row):
        return fn(model, dict(zip(names, row)), e_min, e_max, n_bins)

    return jax.jit(jax.vmap(one))(stacked)


def flux_from_covariance(model, values, covariance, free_names, e_min=2.0, e_max=10.0,
                         kind="energy", n_bins=4096):
    r"""Flux and its 1-sigma error by linear propagation, :math:`\sigma_F^2 = \nabla F^T C
    \nabla F`, with the gradient taken by autodiff over the free parameters.

    Returns ``(flux, sigma)``.
    """
    fn = energy_flux if kind == "energy" else photon_flux
    free_names = list(free_names)
    theta = jnp.asarray([values[n] for n in free_names])

    def of_theta(t):
        return fn(model, {**values, **dict(zip(free_names, t))}, e_min, e_max, n_bins)

    value, grad = jax.value_and_grad(of_theta)(theta)
    cov = jnp.asarray(covariance)
    return value, jnp.sqrt(grad @ cov @ grad)
