r"""Linear solves of the fits' small systems without LAPACK (a speed trick for the CPU).

The fits solve n x n systems with n the number of free parameters (a handful): Newton and
Levenberg-Marquardt steps, the Venzon-Moolgavkar profile steps and the covariance
:math:`C = 2H^{-1}`.  ``jnp.linalg.solve``/``inv`` lower to LAPACK ``getrf``/``getrs`` custom
calls on the CPU, and a process that loads a compiled fit holding them must first hand jaxlib
SciPy's LAPACK (``initialize_lapack``: importing ``scipy.linalg``), ~0.16 s of a 1 s warm
``bkgjax fit-spectrum``.  For small systems the same Gaussian elimination with partial
pivoting (what ``getrf`` does) written with jax.numpy, unrolled over the static size, is as
accurate, differentiable, ``vmap``-able and needs no LAPACK.

:func:`solve` and :func:`inv` take the plain reference form (``jnp.linalg``) above
:data:`MAX_UNROLLED` unknowns; tests/test_small_linalg.py checks that both forms agree.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["MAX_UNROLLED", "inv", "solve"]

#: Largest system solved by the unrolled elimination; larger ones use ``jnp.linalg``.
MAX_UNROLLED = 16


def _eliminate(a, b):
    """Gaussian elimination with partial pivoting of ``a x = b`` (``b`` of shape (n, k)),
    then back substitution; a singular ``a`` gives non-finite entries, as LAPACK's does."""
    n = a.shape[-1]
    rows = jnp.arange(n)
    for k in range(n):
        # partial pivoting: bring the largest |a[i, k]|, i >= k, to row k
        pivot_row = k + jnp.argmax(jnp.abs(a[k:, k]))
        order = jnp.where(rows == k, pivot_row, jnp.where(rows == pivot_row, k, rows))
        a, b = a[order], b[order]
        factors = jnp.where(rows > k, a[:, k] / a[k, k], 0.0)
        a = a - factors[:, None] * a[k][None, :]
        b = b - factors[:, None] * b[k][None, :]
    x = jnp.zeros_like(b)
    for k in range(n - 1, -1, -1):
        x = x.at[k].set((b[k] - a[k] @ x) / a[k, k])
    return x


def solve(a, b):
    """``x`` with ``a @ x = b``: ``a`` (n, n), ``b`` (n,) or (n, k); ``jnp.linalg.solve``
    above :data:`MAX_UNROLLED` unknowns."""
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] > MAX_UNROLLED:
        return jnp.linalg.solve(a, b)
    dtype = jnp.result_type(a, b)
    vector = b.ndim == 1
    x = _eliminate(a.astype(dtype), (b[:, None] if vector else b).astype(dtype))
    return x[:, 0] if vector else x


def inv(a):
    """Inverse of ``a`` (n, n); ``jnp.linalg.inv`` above :data:`MAX_UNROLLED`."""
    a = jnp.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] > MAX_UNROLLED:
        return jnp.linalg.inv(a)
    return solve(a, jnp.eye(a.shape[0], dtype=a.dtype))
