r"""Simulated spectra: Poisson draws of folded model counts, one or many PRNG keys at once.

``fakeit(key, model, data, n=10000)`` returns counts of shape (n, n_bins) (and background
counts for W-stat work), reproducible from one key, computed in one vmapped call.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ..fit.dataset import SpectralData, predicted_counts

__all__ = ["poisson_counts", "fakeit"]


def poisson_counts(key, expected):
    """One Poisson realisation of ``expected`` counts (any shape), as float64."""
    expected = jnp.asarray(expected)
    return jax.random.poisson(key, expected, shape=expected.shape).astype(jnp.float64)


@partial(jax.jit, static_argnames=("structure", "n"))
def _fakeit(key, theta, data, background_rate, *, structure, n):
    source = predicted_counts(structure, theta, data)
    keys = jax.random.split(key, n)

    def one(k):
        k_src, k_bkg_src, k_bkg = jax.random.split(k, 3)
        counts = poisson_counts(k_src, source)
        if background_rate is None:
            return counts, None
        # background_rate: expected background counts in the *source* region per bin
        counts = counts + poisson_counts(k_bkg_src, background_rate)
        bkg = poisson_counts(k_bkg, background_rate * data.background_ratio)
        return counts, bkg

    return jax.vmap(one)(keys)


def fakeit(key, model, data: SpectralData, n: int = 1, *, values=None, background=None):
    """Simulate ``n`` spectra of ``model`` folded through ``data``'s response and exposure.

    Parameters
    ----------
    key : jax.random key
    model : Model
        Additive model; ``values`` (mapping) override its current parameter values.
    data : SpectralData
        Supplies response, exposure, AREASCAL (and ``background_ratio`` for backgrounds).
    n : int
        Number of realisations.
    background : array_like, optional
        Expected background counts *in the source region* per bin.  If given, the source
        spectra include a Poisson background and background-region spectra are drawn with
        mean ``background * background_ratio`` (requires ``data.background_ratio``).

    Returns
    -------
    counts : (n, n_bins) float64 array, and background counts (n, n_bins) or None.
    """
    theta = jnp.asarray(list(model.resolve(values or {}).values()), dtype=jnp.float64)
    if background is not None:
        if data.background_ratio is None:
            raise ValueError(f"{data.name}: simulating a background needs background_ratio")
        background = jnp.broadcast_to(jnp.asarray(background, dtype=jnp.float64),
                                      (data.n_bins,))
        if bool(jnp.any(background < 0)) or not bool(jnp.all(jnp.isfinite(background))):
            raise ValueError("background expectation must be finite and >= 0")
    return _fakeit(key, theta, data, background, structure=model.structure, n=int(n))
