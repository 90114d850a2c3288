"""The LAPACK-free small solves (bkgjax.fit.small_linalg) against their reference form,
jnp.linalg: values, gradients, vmap, singular systems, and that a compiled fit holds no LAPACK
call (the reason the module exists)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401  (64-bit JAX)
from bkgjax.fit import small_linalg


def _system(n, seed, spd=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    if spd:
        a = a @ a.T + n * np.eye(n)
    return a, rng.normal(size=n)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, small_linalg.MAX_UNROLLED])
def test_solve_and_inverse_agree_with_lapack(n):
    for seed in range(5):
        a, b = _system(n, seed)
        x = small_linalg.solve(a, b)
        np.testing.assert_allclose(x, jnp.linalg.solve(a, b), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(small_linalg.inv(a), jnp.linalg.inv(a), rtol=1e-9, atol=1e-12)
        bk = np.stack([b, 2 * b + 1], axis=1)
        np.testing.assert_allclose(small_linalg.solve(a, bk), jnp.linalg.solve(a, bk),
                                   rtol=1e-9, atol=1e-12)


def test_pivoting_handles_zero_leading_entry():
    a = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    b = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(small_linalg.solve(a, b), np.linalg.solve(a, b), rtol=1e-12)


def test_ill_conditioned_hessian_like_system():
    # a fit's Hessian: scales differing by 1e12 (a norm of 1e-5 next to an index)
    a = np.array([[4.0e12, 3.0e6], [3.0e6, 9.0]])
    b = np.array([1.0, 2.0])
    np.testing.assert_allclose(small_linalg.solve(a, b), np.linalg.solve(a, b), rtol=1e-8)


def test_larger_systems_use_the_reference():
    a, b = _system(small_linalg.MAX_UNROLLED + 1, 0)
    np.testing.assert_array_equal(small_linalg.solve(a, b), jnp.linalg.solve(a, b))


def test_singular_system_gives_non_finite_like_lapack():
    a = np.array([[1.0, 2.0], [2.0, 4.0]])
    x = small_linalg.solve(a, np.array([1.0, 1.0]))
    assert not np.all(np.isfinite(x))


def test_jit_vmap_and_gradient():
    a, b = _system(4, 3, spd=True)
    batch = np.stack([a, a + np.eye(4), 2 * a])
    jitted = jax.jit(jax.vmap(small_linalg.solve, in_axes=(0, None)))(batch, b)
    for k in range(3):
        np.testing.assert_allclose(jitted[k], np.linalg.solve(batch[k], b), rtol=1e-10)

    def loss(m, fn):
        return jnp.sum(fn(m, jnp.asarray(b)) ** 2)

    g_small = jax.grad(loss)(jnp.asarray(a), small_linalg.solve)
    g_ref = jax.grad(loss)(jnp.asarray(a), jnp.linalg.solve)
    np.testing.assert_allclose(g_small, g_ref, rtol=1e-8, atol=1e-12)


def test_compiled_fit_holds_no_lapack_call():
    """A fit with profile bounds lowers to a program without LAPACK custom calls, so loading
    its compiled form needs no scipy.linalg (bkgjax.fit.export_cache)."""
    from bkgjax.fit.core import FitOptions, _fit_one
    from bkgjax.fit.dataset import SpectralData
    from bkgjax.spectral import powerlaw

    edges = np.linspace(1.0, 10.0, 21)
    data = SpectralData.from_arrays(np.full(20, 10.0), 1e4, np.eye(20), edges[:-1], edges[1:])
    model = powerlaw()
    theta = np.asarray(list(model.resolve({}).values()))
    lowered = _fit_one.lower(theta, np.array([-3.0, 0.0]), np.array([10.0, 1e24]),
                             np.zeros(2, np.uint32), data, structure=model.structure,
                             free_idx=(0, 1), stat="cstat", options=FitOptions())
    text = lowered.as_text().lower()
    assert "lapack" not in text
