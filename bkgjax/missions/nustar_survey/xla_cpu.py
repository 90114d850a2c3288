r"""XLA:CPU-specific forms of five array primitives of the survey simulation, each with its
plain reference form.

The mock skies (:mod:`~bkgjax.missions.nustar_survey.sky`) and the fixed-size detection
(:mod:`~bkgjax.missions.nustar_survey.fixed_detection`) of the calibration by simulations
(Zhao et al. 2021, sec. 3) run ~10^4 maps per survey; on a CPU host XLA compiles a few
obvious forms of these primitives into slow code.  Each function here gives exactly the
result of its reference form (tested in ``tests/test_survey_xla_cpu.py``); only the
compiled program differs:

* :func:`pack_mask` (reference :func:`pack_mask_reference`, NumPy): one reduction over
  the image, then n/32 entries;
* :func:`compact_indices` (reference :func:`compact_indices_reference`, ``jnp.nonzero``):
  no prefix sum or scatter over every pixel;
* :func:`count_true` (reference :func:`count_true_reference`, ``jnp.sum``): XLA:CPU reduces
  float32 faster than integers;
* :func:`materialised` (reference :func:`materialised_reference`, the identity): keeps XLA
  from fusing, and so recomputing, an image in each of its consumers;
* :func:`top_k_by_sort_key` (reference :func:`top_k_reference`, ``lax.top_k``): XLA:CPU
  sorts one integer array faster than (value, index) pairs.

The measured effect of each is in ``benchmarks/README.md`` (NuSTAR survey calibration); on
an accelerator the fast forms are correct but not needed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "PackedMask",
    "pack_mask",
    "pack_mask_reference",
    "compact_indices",
    "compact_indices_reference",
    "count_true",
    "count_true_reference",
    "materialised",
    "materialised_reference",
    "top_k_by_sort_key",
    "top_k_reference",
]


class PackedMask(NamedTuple):
    """A boolean image packed 32 pixels per word (:func:`pack_mask`): ``words`` (uint32, bit
    j of word i is pixel 32 i + j), their population counts ``pop`` and its inclusive prefix
    sum ``inclusive`` (int32), and the number of pixels ``n``."""

    words: jax.Array
    pop: jax.Array
    inclusive: jax.Array
    n: int


def pack_mask(mask) -> PackedMask:
    """Pack ``mask`` (any shape, raveled) into 32-bit words and prefix-sum their population
    counts: one reduction over the image, then n/32 entries."""
    flat = jnp.asarray(mask).ravel()
    n = flat.size
    n_words = -(-n // 32)
    bits = jnp.pad(flat, (0, n_words * 32 - n)).reshape(n_words, 32).astype(jnp.uint32)
    words = jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=1, dtype=jnp.uint32)
    pop = lax.population_count(words).astype(jnp.int32)
    return PackedMask(words, pop, jnp.cumsum(pop), int(n))


def pack_mask_reference(mask) -> PackedMask:
    """:func:`pack_mask` in NumPy (``np.packbits``, little-endian bit order)."""
    flat = np.asarray(mask, bool).ravel()
    n = flat.size
    n_words = -(-n // 32)
    padded = np.zeros(n_words * 32, bool)
    padded[:n] = flat
    words = np.packbits(padded, bitorder="little").view("<u4").astype(np.uint32)
    pop = padded.reshape(n_words, 32).sum(axis=1).astype(np.int32)
    return PackedMask(words, pop, np.cumsum(pop).astype(np.int32), int(n))


def compact_indices(mask, size: int, packed: PackedMask | None = None):
    """Flat indices of the True entries of ``mask`` in increasing order, padded with
    ``mask.size`` to ``size`` entries: :func:`compact_indices_reference`.

    Gather-based, with no pass of the image beyond packing it: the mask is packed into
    32-bit words (one reduction, :func:`pack_mask`; pass ``packed`` when it is already
    packed), each output slot s finds its word as the number of words whose inclusive
    population-count prefix sum is <= s (a histogram of the prefix sums, itself
    prefix-summed over the slots, instead of the loop of gathers of ``searchsorted``) and its
    bit as the (s - word start)-th set bit of the word (five popcount steps).  The cost
    scales with n/32 + ``size``, where ``jnp.nonzero`` (a prefix sum and a scatter over every
    pixel) scales with n."""
    packed = pack_mask(mask) if packed is None else packed
    n = packed.n
    words, pop, inclusive = packed.words, packed.pop, packed.inclusive
    n_words = words.size
    slot = jnp.arange(size, dtype=jnp.int32)
    hist = jnp.zeros(size + 1, jnp.int32).at[inclusive].add(1, mode="drop")
    word = jnp.minimum(jnp.cumsum(hist[:size]), n_words - 1)
    rank = slot - (inclusive[word] - pop[word])  # which set bit of the word (0-based)
    w = words[word]
    bit = jnp.zeros(size, jnp.uint32)
    for step in (16, 8, 4, 2, 1):  # largest bit position with at most `rank` set bits below
        below = lax.population_count(w & ((jnp.uint32(1) << (bit + step)) - jnp.uint32(1)))
        bit = jnp.where(below.astype(jnp.int32) <= rank, bit + step, bit)
    idx = word.astype(jnp.int32) * 32 + bit.astype(jnp.int32)
    return jnp.where(slot < inclusive[-1], idx, jnp.int32(n))


def compact_indices_reference(mask, size: int):
    """``jnp.nonzero(mask.ravel(), size=size, fill_value=mask.size)`` as int32."""
    flat = jnp.asarray(mask).ravel()
    return jnp.nonzero(flat, size=size, fill_value=flat.size)[0].astype(jnp.int32)


def count_true(mask):
    """Number of True entries of ``mask`` (int32), summed as float32: exact below 2^24
    entries (every partial sum is an integer below 2^24); XLA:CPU reduces float32 faster
    than integers."""
    if mask.size >= 2**24:
        return jnp.sum(mask, dtype=jnp.int32)
    return jnp.sum(mask.astype(jnp.float32)).astype(jnp.int32)


def count_true_reference(mask):
    """``jnp.sum(mask)`` as int32."""
    return jnp.sum(mask, dtype=jnp.int32)


def materialised(image):
    """``image`` (integer dtypes only), written to a buffer that XLA cannot fuse into its
    consumers.

    XLA:CPU removes ``jax.lax.optimization_barrier`` before fusion, and it duplicates a
    cheap-to-fuse producer (the Poisson walk of a background image, the 20" top-hat
    stencil, the photon positions) into each of its consumers, recomputing it there.  A
    dynamic-update-slice is a fusion root that consumers read from memory: here the image's
    first row (element) is rewritten in place, read at an offset that XLA cannot prove to be
    the same.  Both offsets are ``x == x + 1`` of an element, false (0) for every integer
    because integers wrap, so the result is always ``image``, with no extra buffer to
    fill."""
    if not jnp.issubdtype(image.dtype, jnp.integer):
        raise TypeError(f"materialised: integer images only, got {image.dtype}")
    flat = image.ravel()
    # two offsets that are 0 at run time but that XLA cannot prove equal (or 0)
    source = (flat[0] == flat[0] + 1).astype(jnp.int32)
    target = (flat[-1] == flat[-1] + 1).astype(jnp.int32)
    row = lax.dynamic_slice_in_dim(image, source, 1, axis=0)
    return lax.dynamic_update_slice_in_dim(image, row, target, axis=0)


def materialised_reference(image):
    """The identity (what :func:`materialised` computes)."""
    return image


def top_k_by_sort_key(score, k: int):
    """``lax.top_k(score, k)`` (1-D float64; largest first, the lower index first among
    equal values) by one sort of int64 keys: the float's bits made monotone, their lowest
    ceil(log2 n) bits replaced by the reversed index.  Values that agree to
    ~2^-(52 - log2 n) relative (9e-13 for a 4096-entry list, below the accuracy of the
    screened log P series) are ordered by index instead of by value; the returned values
    are the exact inputs."""
    n = score.shape[-1]
    index_bits = max(1, (n - 1).bit_length())
    low = (1 << index_bits) - 1
    bits = lax.bitcast_convert_type(jnp.asarray(score, jnp.float64), jnp.int64)
    # negative floats: flip the magnitude bits so that the int64 order is the float order
    monotone = jnp.where(bits >= 0, bits, bits ^ jnp.int64(0x7FFFFFFFFFFFFFFF))
    key = (monotone & jnp.int64(~low)) | (low - jnp.arange(n, dtype=jnp.int64))
    top = jnp.sort(key)[::-1][:k]
    pos = (low - (top & low)).astype(jnp.int32)
    return score[pos], pos


def top_k_reference(score, k: int):
    """``lax.top_k(score, k)``: (values, positions as int32)."""
    vals, pos = lax.top_k(jnp.asarray(score), k)
    return vals, pos.astype(jnp.int32)
