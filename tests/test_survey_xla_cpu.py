"""The XLA:CPU-specific primitives of the survey simulation equal their plain reference forms
(:mod:`bkgjax.missions.nustar_survey.xla_cpu`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401  (float64)
from bkgjax.missions.nustar_survey import xla_cpu


def _masks():
    """Sparse and dense masks, lengths that are not multiples of 32, a set last bit of a
    partial word, an empty and a full one, and a 2-D one."""
    rng = np.random.default_rng(2)
    out = []
    for n, fraction in ((5000, 0.03), (1, 1.0), (33, 0.5), (64, 1.0), (100, 0.0),
                        (4097, 0.9), (96, 0.2)):
        mask = rng.random(n) < fraction
        mask[-1] = fraction > 0
        out.append(mask)
    out.append(rng.random((37, 41)) < 0.1)
    return out


def test_pack_mask_equals_reference():
    for mask in _masks():
        fast = jax.jit(xla_cpu.pack_mask)(jnp.asarray(mask))
        ref = xla_cpu.pack_mask_reference(mask)
        assert fast.n == ref.n == mask.size
        for name in ("words", "pop", "inclusive"):
            np.testing.assert_array_equal(np.asarray(getattr(fast, name)), getattr(ref, name),
                                          err_msg=name)
        assert int(ref.inclusive[-1]) == int(mask.sum())


def test_compact_indices_equals_reference():
    """The bit-packed compaction equals jnp.nonzero: lists shorter (overflow: the first
    entries) and longer (padding) than the number of True entries, with and without a
    packed mask passed in, 1-D and 2-D (flat indices)."""
    compact = jax.jit(xla_cpu.compact_indices, static_argnums=1)  # one compilation per shape
    reference = jax.jit(xla_cpu.compact_indices_reference, static_argnums=1)
    for mask in _masks():
        n = mask.size
        for size in sorted({1, 5, max(1, n // 3), n, n + 7}):
            got = np.asarray(compact(jnp.asarray(mask), size))
            np.testing.assert_array_equal(got, np.asarray(reference(jnp.asarray(mask), size)))
            # the reference as written out in NumPy
            expected = np.full(size, n)
            found = np.flatnonzero(mask)[:size]
            expected[:found.size] = found
            np.testing.assert_array_equal(got, expected)
        packed = xla_cpu.pack_mask(jnp.asarray(mask))
        np.testing.assert_array_equal(np.asarray(xla_cpu.compact_indices(mask, 10, packed)),
                                      np.asarray(reference(jnp.asarray(mask), 10)))


def test_count_true_equals_reference():
    """float32 counting of a mask equals the integer count (below 2^24 entries)."""
    rng = np.random.default_rng(6)
    for n, fraction in ((403225, 0.999), (403225, 1e-4), (17, 0.5), (2**20 + 3, 1.0)):
        mask = jnp.asarray(rng.random(n) < fraction)
        fast = jax.jit(xla_cpu.count_true)(mask)
        assert fast.dtype == jnp.int32
        assert int(fast) == int(xla_cpu.count_true_reference(mask)) == int(np.sum(mask))


def test_materialised_equals_reference():
    """The fusion barrier returns its input unchanged: integer images with negative and
    extreme first and last entries (the offsets it reads), 1-D and 2-D, uint8, under jit
    and vmap; other dtypes are refused."""
    rng = np.random.default_rng(7)
    image = rng.integers(-5, 50, (7, 9)).astype(np.int32)
    image[0, 0], image[-1, -1] = -3, np.iinfo(np.int32).max
    extreme = (np.arange(12, dtype=np.uint8) * 23).reshape(3, 4)
    extreme[0, 0], extreme[-1, -1] = 255, 0
    for x in (image, image.ravel(), (image > 10).astype(np.uint8), np.abs(image), extreme):
        np.testing.assert_array_equal(
            np.asarray(jax.jit(xla_cpu.materialised)(jnp.asarray(x))),
            np.asarray(xla_cpu.materialised_reference(jnp.asarray(x))))
    batch = jnp.asarray(np.stack([image, -image, image[::-1]]))
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(xla_cpu.materialised))(batch)),
                                  np.asarray(batch))
    with pytest.raises(TypeError, match="integer"):
        xla_cpu.materialised(jnp.ones(3))


def test_top_k_by_sort_key_equals_reference():
    """The int64-key sort gives lax.top_k's values and positions: random scores with exact
    ties, -inf padding, negative and positive values, k up to the length."""
    rng = np.random.default_rng(5)
    fast = jax.jit(xla_cpu.top_k_by_sort_key, static_argnums=1)
    reference = jax.jit(xla_cpu.top_k_reference, static_argnums=1)
    for n, k in ((4096, 512), (1000, 1000), (37, 5), (2, 1)):
        score = rng.uniform(-50.0, 50.0, n)
        score[rng.random(n) < 0.3] = -np.inf
        score[rng.integers(0, n, n // 10 + 1)] = 7.25  # exact ties: lower index first
        score[rng.integers(0, n, n // 20 + 1)] = -3.0
        vals, pos = fast(jnp.asarray(score), k)
        ref_vals, ref_pos = reference(jnp.asarray(score), k)
        np.testing.assert_array_equal(np.asarray(vals), np.asarray(ref_vals))
        np.testing.assert_array_equal(np.asarray(pos), np.asarray(ref_pos))
    # values closer than the key's resolution are ordered by index (documented): here the
    # later one is larger by one ulp, where the reference puts it first
    close = jnp.asarray([1.0, np.nextafter(1.0, 2.0)])
    assert list(np.asarray(xla_cpu.top_k_by_sort_key(close, 2)[1])) == [0, 1]
    assert list(np.asarray(xla_cpu.top_k_reference(close, 2)[1])) == [1, 0]
