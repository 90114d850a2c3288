r"""The Poisson inverse-CDF walk shared by every simulator.

A Poisson draw with one uniform :math:`u` is the smallest :math:`k` with
:math:`u \le F(k; \lambda)`.  The walk tests :math:`v = u\,e^{\lambda} \le S_k =
\sum_{i \le k} \lambda^i/i!`, so that it uses the exponential once and multiplies by the
constant :math:`1/j` per step instead of dividing (the CDF terms :math:`p_j = p_{j-1}
\lambda/j` scaled by :math:`e^{\lambda}`).  The bulk of the distribution is unrolled into one
fused elementwise kernel; the rare longer draws finish in a while loop.  On a CPU this is
much faster than ``jax.random.poisson`` for the small means (< ~50) of binned pixel data
(benchmarks/README.md).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["INVERSE_CDF_MAX_MEAN", "poisson_inverse_cdf", "scaled_walk", "scaled_walk_unrolled",
           "walk_lengths"]

#: Above this mean :func:`poisson_inverse_cdf` hands over to ``jax.random.poisson``
#: (:math:`e^{\lambda}` must stay finite and the walk short).
INVERSE_CDF_MAX_MEAN = 500.0
#: Longest unrolled part of the walk in :func:`poisson_inverse_cdf` (compile-time size).
MAX_UNROLL = 96


def walk_lengths(lam_max: float) -> tuple[int, int]:
    """(n_unroll, j_max) of the walk for means up to ``lam_max``: the unrolled bulk,
    ``lam_max + 4 sqrt(lam_max) + 6`` terms rounded up to a multiple of 16 (16 for
    lam_max = 2: P(draw >= 16) = 5e-10), and the loop's bound, ``lam_max + 15 sqrt(lam_max)
    + 40`` rounded up to a multiple of 64 (so that similar inputs share one compiled
    kernel)."""
    sd = math.sqrt(lam_max)
    return (int(16 * math.ceil((lam_max + 4.0 * sd + 6.0) / 16)),
            int(64 * math.ceil((lam_max + 15.0 * sd + 40.0) / 64)))


def scaled_walk_unrolled(u, lam, n_unroll: int):
    r"""The first ``n_unroll`` steps of the walk, one fused elementwise kernel.

    Returns (k, last term, S, v) after ``n_unroll`` terms: k = #{j < n_unroll : v > S_j} is
    the exact draw wherever :math:`v \le S_{n\_unroll - 1}`."""
    v = u * jnp.exp(lam)
    term = jnp.ones_like(lam)
    partial_sum = term
    k = (v > partial_sum).astype(jnp.int32)
    for j in range(1, n_unroll):
        term = term * (lam * (1.0 / j))
        partial_sum = partial_sum + term
        k = k + (v > partial_sum).astype(jnp.int32)
    return k, term, partial_sum, v


def scaled_walk(u, lam, n_unroll: int, j_max: int):
    """:func:`scaled_walk_unrolled`, continued in a while loop until every draw is found (or
    ``j_max`` terms): the exact Poisson quantile of ``u``."""
    k, term, partial_sum, v = scaled_walk_unrolled(u, lam, n_unroll)

    def cond(state):
        j, _, partial_sum, _ = state
        return (j < j_max) & jnp.any(v > partial_sum)

    def body(state):
        j, term, partial_sum, k = state
        term = term * (lam * (1.0 / j.astype(lam.dtype)))
        partial_sum = partial_sum + term
        return j + 1, term, partial_sum, k + (v > partial_sum).astype(jnp.int32)

    return jax.lax.while_loop(cond, body, (jnp.int32(n_unroll), term, partial_sum, k))[3]


@partial(jax.jit, static_argnames=("n_unroll", "j_max"))
def _poisson_inverse_one(key, lam, n_unroll, j_max):
    return scaled_walk(jax.random.uniform(key, lam.shape, dtype=jnp.float64), lam, n_unroll, j_max)


@jax.jit
def _poisson_large(key, lam):
    return jax.random.poisson(key, lam, dtype=jnp.int32)


def as_key(key):
    """A PRNG key from an int seed (keys pass through)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    return key


def poisson_inverse_cdf(key, lam, n: int | None = None):
    """Poisson draws (int32) by inversion of the CDF with one uniform per draw (JAX).

    The draw is the smallest k with u <= CDF(k; lam) (exact up to double-precision rounding
    of the CDF).  The walk is unrolled over the bulk of the distribution (~lam_max +
    4 sqrt(lam_max) + 6 terms, at most :data:`MAX_UNROLL`) and finished in a while loop for the
    rare larger draws; for means above :data:`INVERSE_CDF_MAX_MEAN` ``jax.random.poisson`` is
    used instead.

    Parameters
    ----------
    key : jax PRNG key (or int seed)
    lam : array_like of float >= 0
    n : int or None
        None: one draw of shape ``lam.shape`` with ``key``; otherwise ``n`` independent draws
        stacked on a new leading axis, draw i with key ``jax.random.split(key, n)[i]``.  The
        kernel is compiled once per shape of ``lam`` (not per ``n``); the draws are dispatched
        one after the other, so memory is the output plus one draw.
    """
    key = as_key(key)
    lam = jnp.asarray(lam, dtype=jnp.float64)
    lam_max = float(jnp.max(lam)) if lam.size else 0.0
    if not math.isfinite(lam_max) or (lam.size and float(jnp.min(lam)) < 0):
        raise ValueError("Poisson means must be finite and >= 0")
    if n is not None:
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1 (got {n})")
    if lam_max > INVERSE_CDF_MAX_MEAN:
        draw = _poisson_large
    else:
        n_unroll, j_max = walk_lengths(lam_max)
        draw = partial(_poisson_inverse_one, n_unroll=min(MAX_UNROLL, n_unroll), j_max=j_max)
    if n is None:
        return draw(key, lam)
    return jnp.stack([draw(k, lam) for k in jax.random.split(key, n)])
