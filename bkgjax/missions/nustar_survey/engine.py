r"""Vectorised (pure JAX, fixed-size) NuSTAR survey detection and simulation engine.

The numpy path :func:`bkgjax.missions.nustar_survey.detection.detect` has Python loops and
variable-size outputs; this module re-implements its detection core with fixed-size arrays so
that *generate + detect + match* is one jitted computation, vmapped over the simulation axis
and chunked with :func:`jax.lax.map` (Zhao et al. 2021 section 3, 1200 simulations per band).

:func:`detect_fixed` (paper sec. 3.2):

1. 20" top-hat sums of counts and background by FFT convolution (equal to
   :func:`survey_detection.tophat_sum` up to round-off; the counts sums are rounded to 1e-9,
   as in :func:`survey_detection.false_probability_map`, which makes integer sums exact); in
   the simulations (``integer_counts=True``) the counts sums are taken directly in int32
   (:func:`tophat_sum_runs`, exact, ~2x faster than the FFT).
2. :math:`\log_{10}P` map with :func:`bkgjax.stats.intervals.log_false_probability`, 0 on
   zero-exposure pixels, background floored at 1e-12.  In the simulations only the pixels
   whose counts sum exceeds the per-pixel limit of
   :func:`survey_detection.false_probability_count_limit` (computed once per background map
   by :func:`detection_background`) can reach :math:`P \le 10^{-2.5}`; the exact value is
   computed on those (4 % of the NEP-like 3-24 keV map) and every other pixel gets 0, which
   changes neither the candidates nor their values (``eval_fraction``).
3. Local minima in 3x3 (:func:`_local_minima`) with :math:`\log_{10}P \le` threshold.  Unlike
   :func:`survey_detection.find_candidates` plateaus are not merged into their centroid: of a
   plateau of exactly equal values only pixels with no equal-valued neighbour earlier in
   raster order (above / to the left) are kept.  Optionally (``min_separation_pix`` > 0),
   greedy suppression of weaker minima closer than that to a kept deeper one (as
   ``find_candidates(min_separation_pix=...)``; :func:`simulate_and_detect` uses the
   aperture radius, like :func:`survey_detection.detect`).
4. The ``max_candidates`` deepest minima (:func:`top_k_by_sort_key`, ``lax.top_k`` by one
   integer sort: minima whose log P agree to ~1e-12 relative are ranked by pixel index),
   deepest first, with a valid mask.
5. DET_ML :math:`= -\ln P` of the 20"-aperture total and background counts at the candidate
   pixel centre (the aperture sums there equal the top-hat sums).

6. Pruning of wing ripples (as :func:`survey_detection.prune_candidates`, deepest first: a
   candidate is kept only if :math:`\log_{10}P(C_i, B_i + \sum_{j\,\mathrm{kept}} M_{ij}S_j)
   \le` threshold, with the whole PSF, no 90" cut) and **deblending** (as
   :func:`survey_detection.deblend`): :math:`M S = C - B`, :math:`S \ge 0` solved by a fixed
   number of active-set iterations on the normal equations (:func:`nnls_fixed`, equal to
   ``scipy.optimize.nnls`` on these diagonally dominant systems; tested), the neighbours'
   contamination :math:`\sum_{j\ne i} M_{ij} S_j` (pairs within 90") added to the background
   and DET_ML recomputed.  :math:`M_{ij}` (:func:`overlap_matrix_fixed`) is the PSF of
   candidate *j* summed over the exposed pixel centres of aperture *i*, exactly as
   :func:`survey_detection.psf_overlap_matrix`, with the PSF profile linearly interpolated on
   a 0.05" grid.

Differences from :func:`survey_detection.detect`: positions stay at the pixel of the map
minimum (no sub-pixel refinement), and plateaus are not merged into their centroid.

:func:`match_catalogue`: the paper matches detections with the input catalogue within 30"
and states no rule for several candidates; here each detection is matched to the *nearest*
valid input source within the radius (an input source may match several detections).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bkgjax.missions.nustar_survey import detection as sd
from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.missions.nustar_survey import sky as survey_sky
from bkgjax.stats import intervals

__all__ = [
    "tophat_sum_fft",
    "tophat_sum_runs",
    "Detections",
    "detect_fixed",
    "match_catalogue",
    "psf_table",
    "overlap_matrix_fixed",
    "prune_fixed",
    "nnls_fixed",
    "SimConfig",
    "SimResults",
    "simulate_and_detect",
    "detection_background",
    "poisson_split_for",
    "poisson_unroll_for",
    "background_mean_bound",
    "run_chunk",
    "sharded_chunk_runner",
]

_LN10 = math.log(10.0)
_LARGE_COUNTS = 1500.0  # aperture counts above which log P is evaluated in a separate list
_BKG_FLOOR = 1e-12


def tophat_sum_fft(image, radius_pix: float, exposure=None):
    """FFT version of :func:`survey_detection.tophat_sum` (same kernel, zero padding)."""
    image = jnp.asarray(image, dtype=jnp.float64)
    if exposure is not None:
        image = jnp.where(jnp.asarray(exposure) > 0, image, 0.0)
    return survey_sky.fft_convolve_same(image, sd.tophat_kernel(radius_pix))


def tophat_runs(radius_pix: float):
    """The rows of :func:`survey_detection.tophat_kernel` as (dy, half-width): the kernel is
    the pixels (dy, dx) with |dx| <= half-width(dy)."""
    kernel = sd.tophat_kernel(radius_pix)
    k = kernel.shape[0] // 2
    return tuple((dy - k, int(np.sum(kernel[dy]) // 2)) for dy in range(kernel.shape[0])
                 if kernel[dy].any())


def tophat_sum_runs(image, radius_pix: float, exposure=None, integer: bool = False,
                    dtype=jnp.float64):
    r""":func:`survey_detection.tophat_sum` (same kernel, zero padding) by direct summation:
    horizontal box sums of every half-width the kernel's rows need (each from the next
    narrower one plus two shifted columns), then the sum of the rows' boxes shifted by their
    dy; about 34 shifted additions per pixel for the 20"/2.46" aperture, fused by XLA into
    one pass.  Exact for integer images (no FFT round-off); ``integer=True`` sums in int32
    (the image must hold integers whose top-hat sums stay below 2^31, e.g. counts) from
    column prefix sums instead (:func:`_tophat_sum_column_prefix`, ~1.4x faster than the
    row form on XLA:CPU, ~3x faster than the float64 FFT for the NEP-like map).  Returns
    ``dtype`` (float64; the
    simulations keep ``jnp.int32`` sums, half the memory traffic of a float64 image)."""
    image = jnp.asarray(image)
    if exposure is not None:
        image = jnp.where(jnp.asarray(exposure) > 0, image, 0)
    image = image.astype(jnp.int32 if integer else jnp.float64)
    h, w = image.shape
    runs = tophat_runs(radius_pix)
    if integer:
        return _tophat_sum_column_prefix(image, runs).astype(dtype)
    k = max(max(abs(dy), half) for dy, half in runs)
    padded = jnp.pad(image, k)
    boxes = {}
    box = padded[:, k:k + w]
    for half in range(max(hw for _, hw in runs) + 1):
        if half:
            box = box + padded[:, k - half:k - half + w] + padded[:, k + half:k + half + w]
        boxes[half] = box
    total = sum(boxes[half][k + dy:k + dy + h] for dy, half in runs)
    return total.astype(dtype)


def _tophat_sum_column_prefix(image, runs):
    """Integer top-hat sums from column prefix sums: the kernel as vertical runs, one per
    column offset dx with half-length L(dx), each the difference of two entries of the
    column-wise cumulative sum V (an associative scan; XLA:CPU's cumsum was ~2x slower than
    the whole stencil), so 2 loads per kernel column instead of the ~1 per kernel pixel of
    the fused row-box form.  int32 wraps modulo 2^32, so the differences are exact whenever
    the sums themselves fit in int32, as in the row form."""
    h, w = image.shape
    half_length = {}
    for dy, half in runs:
        for dx in range(-half, half + 1):
            half_length[dx] = max(half_length.get(dx, 0), abs(dy))
    ky = max(half_length.values())
    kx = max(abs(dx) for dx in half_length)
    # one zero row above the image so that V[row - 1] exists for the first run
    padded = jnp.pad(image, ((ky + 1, ky), (kx, kx)))
    column_sums = survey_sky.materialised(lax.associative_scan(jnp.add, padded, axis=0))
    total = jnp.zeros((h, w), image.dtype)
    for dx, length in sorted(half_length.items()):
        columns = slice(kx + dx, kx + dx + w)
        total = total + (column_sums[ky + 1 + length:ky + 1 + length + h, columns]
                         - column_sums[ky - length:ky - length + h, columns])
    return total


class Detections(NamedTuple):
    """Fixed-size detection list (length ``max_candidates``, deepest first): x, y (0-based
    pixel), log10p (map minimum), det_ml (-ln P with the deblended background), det_ml_raw
    (-ln P with the map background), total_counts, bkg_counts (deblended), bkg_counts_raw
    (20" aperture), source_counts (deblended total PSF counts S), exposure (s at the pixel),
    valid (after pruning); n_logp_needed (pixels that needed the exact log P, see
    ``eval_fraction``); minima_overflow (0, or the number of local minima below the limit
    when it exceeded the gathered list of ``max(8 * pre_k, 1024)``: then candidates may be
    missing)."""

    x: jax.Array
    y: jax.Array
    log10p: jax.Array
    det_ml: jax.Array
    det_ml_raw: jax.Array
    total_counts: jax.Array
    bkg_counts: jax.Array
    bkg_counts_raw: jax.Array
    source_counts: jax.Array
    exposure: jax.Array
    valid: jax.Array
    n_logp_needed: jax.Array
    minima_overflow: jax.Array


def _eval_budget(eval_fraction: float, n_pix: int) -> int:
    """Length of the exact-log-P list: ``eval_fraction`` of the image but at least 16384
    pixels (small images are evaluated in full)."""
    return int(min(n_pix, max(math.ceil(eval_fraction * n_pix), 16384)))


def _sparse_log_false_probability(c, b, good, eval_fraction: float,
                                  threshold_log10p: float = ns.DETECTION_LOG10P,
                                  count_limit=None):
    r"""ln P on the pixels that may have :math:`P \le 10^{-2.5}` (``threshold_log10p``), 0
    elsewhere.

    Rigorous screen: the regularised lower incomplete gamma function obeys
    :math:`P(C, B) = B^C e^{-B}\sum_{k\ge0} B^k/\Gamma(C+k+1) \ge B^C e^{-B}/\Gamma(C+1)`
    (its first series term, the Poisson probability of exactly C counts for integer C), and
    :math:`P(C, B) > 1/2` for :math:`B \ge C` (the median of a Gamma(C) variate is below C).  So
    a pixel can have :math:`P \le 10^{-2.5}` only if :math:`0 < C`, :math:`B < C` and
    :math:`C\ln B - B - \ln\Gamma(C+1) \le -2.5\ln 10`; every other pixel has
    :math:`P > 10^{-2.5}`, above any candidate, so setting its ln P to 0 changes neither the
    candidates nor their values nor the local-minimum test.  The needed pixels are gathered
    into a fixed-size list of ``eval_fraction * n_pix`` entries; returns (ln P map, number
    needed) so that the caller can check that the list was long enough.

    With ``count_limit`` (:func:`survey_detection.false_probability_count_limit` of ``b``,
    computed once for a background map) the screen is exact instead: only pixels with
    :math:`C >` ``count_limit`` can have :math:`P \le 10^{-2.5}`; this is also cheaper (one
    comparison instead of a log-gamma per pixel) and leaves about half as many pixels."""
    n_pix = c.size
    max_eval = _eval_budget(eval_fraction, n_pix)
    if count_limit is not None:
        need = good & (c > count_limit)
    else:
        c_safe = jnp.maximum(c, 1e-300)
        log_first_term = c_safe * jnp.log(b) - b - jax.scipy.special.gammaln(c_safe + 1.0)
        need = good & (c > 0) & (b < c) & (log_first_term <= threshold_log10p * _LN10 + 1e-9)
    # two lists: the incomplete-gamma iteration runs until its slowest element converges, so
    # the few bright pixels (large counts, long iterations) are evaluated separately
    moderate = need & (c <= _LARGE_COUNTS)
    large = need & (c > _LARGE_COUNTS)
    n_moderate = jnp.sum(moderate).astype(jnp.int32)
    n_large = jnp.sum(large).astype(jnp.int32)
    large_eval = int(min(n_pix, max(1024, max_eval // 8)))
    flat = jnp.zeros(n_pix, jnp.float64)
    for mask, size in ((moderate, max_eval), (large, large_eval)):
        idx = jnp.nonzero(mask.ravel(), size=size, fill_value=n_pix)[0]
        used = idx < n_pix
        safe = jnp.minimum(idx, n_pix - 1)
        # unused slots get (1, 1): a cheap, converging evaluation that is dropped anyway
        sub = intervals.log_false_probability(jnp.where(used, c.ravel()[safe], 1.0),
                                              jnp.where(used, b.ravel()[safe], 1.0))
        flat = flat.at[idx].set(sub, mode="drop")
    # reported as "needed": the moderate count, or more than the image if the large list
    # overflowed (either way the caller's check fails when candidates may be missing)
    n_needed = jnp.where(n_large > large_eval, n_pix + 1, n_moderate)
    return flat.reshape(c.shape), n_needed


SERIES_BLOCK = 4096
"""Screened-list entries per step of the log P series loop (:func:`_screened_minima`)."""

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _screened_minima(c, b, good, count_limit, series_terms: int, size: int,
                     threshold_log10p: float):
    r""":math:`\log_{10}P` on the pixels whose counts sum exceeds ``count_limit`` (the only
    ones that can reach the threshold, :func:`survey_detection.false_probability_count_limit`)
    and the local minima among them; the log P series runs on the list only.

    The needed pixels are compacted into a list of ``size`` entries and evaluated with the
    fixed-length series :func:`bkgjax.stats.intervals.log_false_probability_series`
    (``series_terms`` from :func:`series_terms_for`), in blocks of :data:`SERIES_BLOCK`
    entries up to the last needed one; every other pixel has :math:`\log_{10}P = 0`,
    exactly as in the full-map path.  A listed pixel is a local minimum when it is <= its 8
    neighbours (those inside the image) and differs from the four earlier in raster order
    (the plateau rule of :func:`_local_minima`), tested in one pass of shifted slices over
    the map of the listed values.  Returns
    (flat pixel index, log10 P, local-minimum-below-threshold flag) per list entry and the
    number of needed pixels (the list is too short when it exceeds ``size``)."""
    h, w = c.shape
    n_pix = c.size
    need = (good & (c > count_limit)).ravel()
    packed = survey_sky.pack_mask(need)
    n_needed = packed.inclusive[-1]
    idx = survey_sky.compact_indices(need, size, packed)
    used = idx < n_pix
    safe = jnp.minimum(idx, n_pix - 1)
    # the series runs over the list in blocks of SERIES_BLOCK entries, up to the last used
    # one (the list is in pixel order, its used slots first): ~12k of the 32k entries on
    # the NEP-like 3-24 keV map.  Under vmap the loop runs to the batch's longest list.
    # Unused slots get (C, B) = (2, 1), which the series handles; they are masked anyway.
    c_flat, b_flat = c.ravel(), b.ravel()
    n_blocks = -(-size // SERIES_BLOCK)
    list_length = n_blocks * SERIES_BLOCK
    safe_pad = jnp.pad(safe, (0, list_length - size))
    used_pad = jnp.pad(used, (0, list_length - size))
    blocks_needed = (jnp.minimum(n_needed, size) + SERIES_BLOCK - 1) // SERIES_BLOCK

    def series_block(state):
        j, out = state
        start = j * SERIES_BLOCK
        at = lax.dynamic_slice(safe_pad, (start,), (SERIES_BLOCK,))
        ok = lax.dynamic_slice(used_pad, (start,), (SERIES_BLOCK,))
        value = intervals.log_false_probability_series(
            jnp.where(ok, c_flat[at], 2).astype(jnp.float64), jnp.where(ok, b_flat[at], 1.0),
            series_terms)
        return j + 1, lax.dynamic_update_slice(out, value, (start,))

    lnp = lax.while_loop(lambda st: st[0] < blocks_needed, series_block,
                         (jnp.int32(0), jnp.zeros(list_length, jnp.float64)))[1][:size]
    logp = jnp.where(used, lnp / _LN10, 0.0)
    # the local-minimum test on the dense map (log10 P of the listed pixels, 0 elsewhere, inf
    # on a one-pixel border), written as bytes and read at the listed pixels: 8 gathers of
    # neighbours per listed pixel were ~3x slower on XLA:CPU
    wp = w + 2
    iy, ix = safe // w, safe % w
    at = jnp.where(used, (iy + 1) * wp + ix + 1, (h + 2) * wp)
    padded = (jnp.pad(jnp.zeros((h, w)), 1, constant_values=jnp.inf).ravel()
              .at[at].set(logp, mode="drop", unique_indices=True).reshape(h + 2, wp))
    dense_min = _local_minima_padded(padded) & (padded[1:-1, 1:-1] <= threshold_log10p)
    dense_min = survey_sky.materialised(dense_min.astype(jnp.uint8))
    is_min = used & (dense_min.ravel()[safe] == 1)
    return safe, logp, is_min, n_needed


def series_terms_for(background_sum, count_limit, rtol: float = 1e-15) -> int:
    """Static number of series terms for :func:`_screened_minima` on this background map:
    :func:`bkgjax.stats.intervals.false_probability_series_terms` at the smallest counts sum
    that is evaluated (``count_limit + 1``) of every pixel; ~0.2 s for a NEP-size map."""
    b = np.asarray(background_sum, np.float64)
    c_min = np.asarray(count_limit, np.float64) + 1.0
    # a pixel with c_min <= b cannot occur (the limit is above the median); guard anyway
    return intervals.false_probability_series_terms(np.maximum(c_min, np.floor(b) + 1.0), b,
                                                    rtol)


def _local_minima(logp):
    """Pixels <= their 8 neighbours (off-image neighbours ignored) with no equal neighbour
    earlier in raster order (the plateau tie-break)."""
    return _local_minima_padded(jnp.pad(logp, 1, constant_values=jnp.inf))


def _local_minima_padded(padded):
    """:func:`_local_minima` of ``padded[1:-1, 1:-1]``, whose one-pixel border holds inf: one
    fused pass of shifted slices, shared by the full-map and the screened paths (in the
    latter it replaced per-pixel neighbour gathers, ~3x slower on XLA:CPU)."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    centre = padded[1:-1, 1:-1]
    is_min = jnp.ones((h, w), bool)
    for k, (dy, dx) in enumerate(_NEIGHBOURS):
        nb = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        is_min = is_min & (centre <= nb)
        if k < 4:  # plateau tie-break: no equal neighbour earlier in raster order
            is_min = is_min & (nb != centre)
    return is_min


def top_k_by_sort_key(score, k: int):
    """``lax.top_k(score, k)`` (1-D float64; largest first, the lower index first among
    equal values) by one sort of int64 keys: the float's bits made monotone, their lowest
    ceil(log2 n) bits replaced by the reversed index.  XLA:CPU sorts a single integer
    array ~7x faster than the (value, index) pairs of ``top_k``.  Values that agree to
    ~2^-(52 - log2 n) relative (9e-13 for the 4096-entry candidate list, well below the
    ~1e-13 x |log P| accuracy of the screened series) are ordered by index instead of by
    value; the returned values are the exact inputs."""
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


def _suppress(y, x, valid, min_sep_pix):
    """Greedy: drop a candidate closer than min_sep_pix to a kept deeper one."""
    n = x.shape[0]

    def body(i, keep):
        d2 = (x - x[i]) ** 2 + (y - y[i]) ** 2
        close = (d2 < min_sep_pix**2) & keep & (jnp.arange(n) < i)
        return keep.at[i].set(keep[i] & ~jnp.any(close))

    return lax.fori_loop(0, n, body, valid)


def psf_table(psf=None, r_max_arcsec: float = 400.0, step_arcsec: float = 0.05):
    """(r, value): the PSF profile (arcsec^-2) on a regular grid for ``jnp.interp`` (0 beyond
    ``r_max_arcsec``); a hashable tuple pair so that it can be a static jit argument."""
    psf = psf or ns.DEFAULT_PSF
    r = np.arange(0.0, r_max_arcsec + step_arcsec / 2, step_arcsec)
    return tuple(r.tolist()), tuple(np.asarray(psf.psf_profile(r), float).tolist())


def _aperture_offsets(radius_pix: float):
    k = int(math.ceil(radius_pix)) + 1
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    inside = xx**2 + yy**2 <= radius_pix**2
    return yy[inside].astype(np.int32), xx[inside].astype(np.int32)


def _interp_regular(r, grid, values):
    """Linear interpolation on the regular grid of :func:`psf_table` (0 beyond its end):
    an index computation instead of the binary search of ``jnp.interp``."""
    step = grid[1] - grid[0]
    table = jnp.concatenate([jnp.asarray(values, jnp.float64), jnp.zeros(2)])
    pos = r / step
    i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, len(values))
    frac = pos - i
    out = table[i] * (1.0 - frac) + table[i + 1] * frac
    return jnp.where(pos <= len(values) - 1, out, 0.0)


_OVERLAP_TABLES = {}


def _overlap_tables(radius_pix: float, pixel_scale_arcsec: float, psf_r, psf_v):
    """PSF per pixel at integer offsets, ``psf[dy + R, dx + R]`` (0 beyond the profile
    table; interpolated as :func:`_interp_regular`), and its sum over the aperture offsets,
    ``aperture[d] = sum_o psf[d + o]`` (the overlap of a fully exposed aperture); NumPy,
    built once per (radius, scale, profile) at trace time."""
    key = (float(radius_pix), float(pixel_scale_arcsec), hash(psf_r), hash(psf_v))
    if key not in _OVERLAP_TABLES:
        grid = np.asarray(psf_r, np.float64)
        values = np.asarray(psf_v, np.float64)
        oy, ox = _aperture_offsets(radius_pix)
        r_psf = int(math.ceil(grid[-1] / pixel_scale_arcsec)) + 1
        d = np.arange(-r_psf, r_psf + 1)
        dist = np.hypot(d[:, None], d[None, :]) * pixel_scale_arcsec
        psf = np.interp(dist, grid, values, right=0.0) * pixel_scale_arcsec**2
        k = int(max(np.max(np.abs(oy)), np.max(np.abs(ox))))
        r_ap = r_psf + k
        aperture = np.zeros((2 * r_ap + 1,) * 2)
        for dy, dx in zip(oy, ox):  # aperture[d] += psf[d + o]
            aperture[k - dy:k - dy + 2 * r_psf + 1, k - dx:k - dx + 2 * r_psf + 1] += psf
        _OVERLAP_TABLES[key] = (psf, r_psf, aperture, r_ap)
    return _OVERLAP_TABLES[key]


def _lookup(table, half: int, dy, dx):
    inside = (jnp.abs(dy) <= half) & (jnp.abs(dx) <= half)
    value = jnp.asarray(table)[jnp.clip(dy + half, 0, 2 * half), jnp.clip(dx + half, 0, 2 * half)]
    return jnp.where(inside, value, 0.0)


def overlap_matrix_fixed(x, y, valid, exposure, radius_pix: float, pixel_scale_arcsec: float,
                         psf_r, psf_v, max_separation_pix=math.inf, edge_block: int = 2048):
    r""":math:`M_{ij}` for candidates at integer pixel positions (x, y) (module docstring);
    rows/columns of invalid candidates are 0.  Same as
    :func:`survey_detection.psf_overlap_matrix` up to the PSF interpolation.

    Candidates sit on pixel centres, so :math:`M_{ij}` depends on the offset
    :math:`d_{ij}` and on which aperture pixels of *i* are exposed:
    :math:`M_{ij} = A(d_{ij}) - \sum_{o\,\in\,\mathrm{unexposed}_i}\mathrm{PSF}(d_{ij} + o)`
    with the fully-exposed aperture table :math:`A` (:func:`_overlap_tables`).  The
    correction runs over the (candidate, aperture pixel) pairs off the exposure (image edges,
    gaps), ``edge_block`` pairs per step of a while loop, usually one."""
    exposure = jnp.asarray(exposure)
    h, w = exposure.shape
    psf, r_psf, aperture, r_ap = _overlap_tables(radius_pix, pixel_scale_arcsec, psf_r, psf_v)
    oy, ox = _aperture_offsets(radius_pix)
    n, n_off = x.shape[0], oy.size
    xi = jnp.round(x).astype(jnp.int32)
    yi = jnp.round(y).astype(jnp.int32)
    dy = yi[:, None] - yi[None, :]
    dx = xi[:, None] - xi[None, :]
    m = _lookup(aperture, r_ap, dy, dx)
    iy = yi[:, None] + oy[None, :]
    ix = xi[:, None] + ox[None, :]
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    good = inside & (exposure[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)] > 0)
    off = (~good & valid[:, None]).ravel()
    rank = jnp.cumsum(off) - 1
    n_off_total = jnp.sum(off)
    oy_j, ox_j = jnp.asarray(oy), jnp.asarray(ox)

    def body(state):
        step, corr = state
        sel = off & (rank >= step * edge_block) & (rank < (step + 1) * edge_block)
        idx = jnp.nonzero(sel, size=edge_block, fill_value=off.size)[0]
        used = idx < off.size
        i = jnp.minimum(idx // n_off, n - 1)
        o = idx % n_off
        vals = _lookup(psf, r_psf, dy[i] + oy_j[o][:, None], dx[i] + ox_j[o][:, None])
        return step + 1, corr.at[i].add(jnp.where(used[:, None], vals, 0.0))

    _, corr = lax.while_loop(lambda st: st[0] * edge_block < n_off_total, body,
                             (jnp.int32(0), jnp.zeros((n, n), jnp.float64)))
    m = m - corr
    sep = jnp.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    near = (sep <= max_separation_pix) | jnp.eye(n, dtype=bool)
    return jnp.where(near & valid[:, None] & valid[None, :], m, 0.0)


def prune_fixed(total, background, overlap, valid, threshold_log10p: float):
    """:func:`survey_detection.prune_candidates` on fixed-size arrays (candidates deepest
    first; invalid ones are never kept).  Returns (keep, S)."""
    n = total.shape[0]

    def body(i, carry):
        keep, s = carry
        contamination = jnp.sum(jnp.where(keep, overlap[i] * s, 0.0))
        b = jnp.maximum(background[i] + contamination, _BKG_FLOOR)
        logp = intervals.log_false_probability(total[i], b) / _LN10
        k = valid[i] & (logp <= threshold_log10p)
        si = jnp.where(k, jnp.maximum(total[i] - b, 0.0) / jnp.maximum(overlap[i, i], 1e-12),
                       0.0)
        return keep.at[i].set(k), s.at[i].set(si)

    init = (jnp.zeros(n, bool), jnp.zeros(n, jnp.float64))
    return lax.fori_loop(0, n, body, init)


def nnls_fixed(matrix, target, valid, n_iter: int = 16, tol: float = 1e-10):
    r"""min :math:`\lVert M S - t \rVert^2` subject to :math:`S \ge 0` over the ``valid``
    entries (others 0), by at most ``n_iter`` active-set iterations on the normal equations
    (solve on the active set, drop variables that went negative, add back inactive ones
    whose gradient is negative, KKT), stopping early once the active set repeats (every
    further iteration would repeat it, so the result is that of all ``n_iter``).  Exact
    (Lawson-Hanson fixed point) for the diagonally dominant overlap matrices of the
    deblending; compared with ``scipy.optimize.nnls`` in the tests."""
    n = matrix.shape[0]
    m = jnp.where(valid[:, None] & valid[None, :], matrix, 0.0)
    t = jnp.where(valid, target, 0.0)
    g_mat = m.T @ m
    h = m.T @ t
    eye = jnp.eye(n)

    def solve(active):
        a2 = active[:, None] & active[None, :]
        mat = jnp.where(a2, g_mat, 0.0) + eye * jnp.where(active, 0.0, 1.0)[:, None]
        return jnp.where(active, jnp.linalg.solve(mat, jnp.where(active, h, 0.0)), 0.0)

    def body(_, active):
        s = solve(active)
        s_pos = jnp.where(active & (s > 0), s, 0.0)
        grad = g_mat @ s_pos - h
        scale = jnp.maximum(jnp.abs(h), 1.0)
        return valid & ((active & (s > 0)) | (~active & (grad < -tol * scale)))

    # the iteration is a deterministic map of the active set: once it repeats, every later
    # iteration would too, so stopping there equals running all n_iter
    def cond(state):
        i, active, previous = state
        return (i < n_iter) & jnp.any(active != previous)

    def step(state):
        i, active, _ = state
        return i + 1, body(i, active), active

    _, active, _ = lax.while_loop(cond, step, (jnp.int32(1), body(0, valid), valid))
    return jnp.maximum(solve(active), 0.0)


def detect_fixed(counts, background, exposure, radius_pix: float, max_candidates: int,
                 threshold_log10p: float = ns.DETECTION_LOG10P,
                 min_separation_pix: float = 0.0, *, deblend: bool = False,
                 pixel_scale_arcsec: float | None = None, psf=None, psf_profile=None,
                 deblend_arcsec: float = ns.DEBLEND_RADIUS_ARCSEC,
                 pre_select: int = 4, eval_fraction: float = 1.0,
                 count_limit=None, background_sum=None,
                 series_terms: int | None = None, integer_counts: bool = False) -> Detections:
    """Fixed-size detection (module docstring); jittable/vmappable; everything but the three
    images is static.  ``deblend=True`` (needs ``pixel_scale_arcsec``) adds the pruning and
    deblending of step 6 with ``psf`` (or a precomputed ``psf_profile`` = :func:`psf_table`);
    otherwise DET_ML equals DET_ML_RAW.  With ``min_separation_pix`` > 0 the suppression runs
    on the ``pre_select * max_candidates`` deepest minima.  ``eval_fraction`` < 1: the exact
    log P is computed only on the pixels that can reach the detection limit (at most that
    fraction of the image, at least 16384 pixels; :func:`_sparse_log_false_probability`), the
    others get log P = 0, which leaves the candidates unchanged;
    ``Detections.n_logp_needed`` must then stay <= ``eval_fraction * image size``
    (:func:`simulate_and_detect` reruns a chunk with a 4x longer list, then with every pixel,
    where it did not).  ``count_limit`` (used when ``eval_fraction`` < 1): the exact screen
    of :func:`survey_detection.false_probability_count_limit` for this background and
    threshold; ``background_sum``: the precomputed 20" background sums (floored at 1e-12),
    both computed once per background map instead of once per simulation.
    ``series_terms`` (static, with ``count_limit``; :func:`series_terms_for`): the screened
    pixels get the fixed-length series instead of XLA's incomplete gamma and the local
    minima are found on that list (:func:`_screened_minima`, the simulations' fast path;
    same candidates, log P equal to ~1e-13); the list has ``eval_fraction`` of the image
    (at least 16384 pixels, all of them when that is more).  ``integer_counts=True``
    (static; the simulations): ``counts`` holds integers and its 20" sums are taken exactly
    in int32 (:func:`tophat_sum_runs`) instead of the FFT rounded to 1e-9."""
    if deblend and pixel_scale_arcsec is None:
        raise ValueError("detect_fixed(deblend=True) needs pixel_scale_arcsec")
    background = jnp.asarray(background, dtype=jnp.float64)
    exposure = jnp.asarray(exposure, dtype=jnp.float64)
    good = exposure > 0
    if integer_counts:
        # int32 sums (exact); compared with the float64 count limit in the fused screen and
        # converted only where gathered
        c = survey_sky.materialised(tophat_sum_runs(counts, radius_pix, exposure, integer=True,
                                          dtype=jnp.int32))
    else:
        counts = jnp.asarray(counts, dtype=jnp.float64)
        c = jnp.round(tophat_sum_fft(counts, radius_pix, exposure), 9)
    if background_sum is None:
        b = jnp.maximum(tophat_sum_fft(background, radius_pix, exposure), _BKG_FLOOR)
    else:
        b = jnp.asarray(background_sum, jnp.float64)
    # the suppression of close minima runs on a longer list (pre_k) before keeping the
    # max_candidates deepest survivors, so that ripples next to bright sources do not crowd
    # real candidates out of the fixed-size list
    pre_k = int(max_candidates) * (pre_select if min_separation_pix > 0 else 1)
    n_pix = c.size
    if count_limit is not None and series_terms is not None:
        # simulations: log P and the minima on the screened list only
        size = _eval_budget(eval_fraction, n_pix)
        pix, logp_list, cand, n_logp_needed = _screened_minima(
            c, b, good, count_limit, int(series_terms), size, threshold_log10p)
        score_of = -logp_list
        pixel_of = pix
    else:
        c = c.astype(jnp.float64)
        if _eval_budget(eval_fraction, n_pix) >= n_pix:
            lnp = intervals.log_false_probability(c, b)
            n_logp_needed = jnp.asarray(0, jnp.int32)
        else:
            lnp, n_logp_needed = _sparse_log_false_probability(c, b, good, eval_fraction,
                                                               threshold_log10p, count_limit)
        logp = jnp.where(good, lnp / _LN10, 0.0)
        cand = (_local_minima(logp) & (logp <= threshold_log10p) & good).ravel()
        score_of = -logp.ravel()
        pixel_of = jnp.arange(n_pix, dtype=jnp.int32)
    # the minima are sparse: gather them and rank only those, instead of a top-k over the
    # whole list; n_minima > n_gather is reported (Detections.minima_overflow)
    n_cand = cand.size
    n_gather = min(n_cand, max(8 * pre_k, 1024))
    n_minima = survey_sky.count_true(cand)
    cidx = survey_sky.compact_indices(cand, n_gather)
    cscore = jnp.where(cidx < n_cand, score_of[jnp.minimum(cidx, n_cand - 1)], -jnp.inf)
    k = min(pre_k, n_gather)
    vals, pos = top_k_by_sort_key(cscore, k)
    idx = pixel_of[jnp.minimum(cidx[pos], n_cand - 1)]
    log10p_at = -vals
    if k < pre_k:  # pad (tiny images)
        vals = jnp.concatenate([vals, jnp.full(pre_k - k, -jnp.inf)])
        idx = jnp.concatenate([idx, jnp.zeros(pre_k - k, idx.dtype)])
        log10p_at = jnp.concatenate([log10p_at, jnp.zeros(pre_k - k)])
    valid = jnp.isfinite(vals)
    iy, ix = idx // c.shape[1], idx % c.shape[1]
    if min_separation_pix > 0:
        valid = _suppress(iy.astype(jnp.float64), ix.astype(jnp.float64), valid,
                          float(min_separation_pix))
        # the kept ones first, each group in list (deepest-first) order: the stable argsort
        # of ~valid, as one sort of integer keys (fast on XLA:CPU)
        n_list = valid.shape[0]
        order = jnp.sort(jnp.where(valid, 0, n_list) + jnp.arange(n_list))[:max_candidates]
        order = order % n_list
        valid, iy, ix, log10p_at = valid[order], iy[order], ix[order], log10p_at[order]
    y = iy.astype(jnp.float64)
    x = ix.astype(jnp.float64)
    tot = c[iy, ix].astype(jnp.float64)
    bkg = b[iy, ix]
    dml_raw = jnp.where(valid, -intervals.log_false_probability(tot, bkg), 0.0)
    bkg_deb = bkg
    s_counts = jnp.zeros_like(tot)
    if deblend:
        psf_r, psf_v = psf_table(psf) if psf_profile is None else psf_profile
        m_full = overlap_matrix_fixed(x, y, valid, exposure, radius_pix, pixel_scale_arcsec,
                                      psf_r, psf_v)
        valid, _ = prune_fixed(tot, bkg, m_full, valid, threshold_log10p)
        sep = jnp.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        near = (sep <= deblend_arcsec / pixel_scale_arcsec) | jnp.eye(x.shape[0], dtype=bool)
        m_deb = jnp.where(near & valid[:, None] & valid[None, :], m_full, 0.0)
        s_counts = nnls_fixed(m_deb, tot - bkg, valid)
        contamination = m_deb @ s_counts - jnp.diagonal(m_deb) * s_counts
        bkg_deb = jnp.where(valid, bkg + contamination, bkg)
    dml = jnp.where(valid, -intervals.log_false_probability(tot, jnp.maximum(bkg_deb,
                                                                             _BKG_FLOOR)), 0.0)
    zero = jnp.zeros_like(tot)
    return Detections(x, y, jnp.where(valid, log10p_at, 0.0), dml,
                      jnp.where(valid, dml_raw, 0.0), jnp.where(valid, tot, zero),
                      jnp.where(valid, bkg_deb, zero), jnp.where(valid, bkg, zero),
                      jnp.where(valid, s_counts, zero),
                      jnp.where(valid, exposure[iy, ix], zero), valid, n_logp_needed,
                      jnp.where(n_minima > n_gather, n_minima, 0))


def match_catalogue(det_xy, det_valid, src_xy, src_flux, src_valid, radius_pix: float):
    """Match each valid detection to the nearest valid input source within ``radius_pix``.

    ``det_xy`` (n_det, 2), ``src_xy`` (n_src, 2) in pixels.  Returns ``(matched, index,
    flux, separation)``: matched flags (n_det,), index of the matched source (-1 if none),
    its ``src_flux`` (0 if none) and the separation in pixels (inf if none).
    """
    det_xy = jnp.asarray(det_xy, jnp.float64)
    src_xy = jnp.asarray(src_xy, jnp.float64)
    # written per coordinate (not a sum over the last axis), so that XLA fuses the distances
    # into the argmin instead of writing the (n_det, n_src) matrix first
    d2 = ((det_xy[:, None, 0] - src_xy[None, :, 0]) ** 2
          + (det_xy[:, None, 1] - src_xy[None, :, 1]) ** 2)
    d2 = jnp.where(src_valid[None, :], d2, jnp.inf)
    # argmin as two plain reductions (the first index at the minimum, as argmin): XLA:CPU's
    # variadic (value, index) reduction was ~3x slower
    n_src = d2.shape[1]
    nearest = jnp.min(d2, axis=1)
    first = jnp.where(d2 == nearest[:, None], jnp.arange(n_src, dtype=jnp.int32), n_src - 1)
    j = jnp.min(first, axis=1)
    best = jnp.where(src_valid[j], jnp.sum((det_xy - src_xy[j]) ** 2, axis=-1), jnp.inf)
    matched = det_valid & (best <= radius_pix**2)
    flux = jnp.where(matched, jnp.asarray(src_flux)[j], 0.0)
    return matched, jnp.where(matched, j, -1), flux, jnp.where(matched, jnp.sqrt(best), jnp.inf)


@dataclass(frozen=True)
class SimConfig:
    """Static settings of :func:`simulate_and_detect` (hashable: a jit static argument)."""

    pixel_scale_arcsec: float
    band: str = "3-24"
    lognlogs: survey_sky.LogNLogS = survey_sky.TREISTER09_APPROX
    psf: object = ns.DEFAULT_PSF
    max_sources: int = 256
    max_candidates: int = 64
    threshold_log10p: float = ns.DETECTION_LOG10P
    aperture_arcsec: float = ns.APERTURE_RADIUS_ARCSEC
    min_separation_arcsec: float = ns.APERTURE_RADIUS_ARCSEC
    match_radius_arcsec: float = 30.0
    psf_radius_arcsec: float = 150.0
    deblend: bool = True
    deblend_arcsec: float = ns.DEBLEND_RADIUS_ARCSEC
    eval_fraction: float = 0.08
    series_terms: int | None = None
    source_event_block: int = survey_sky.SOURCE_EVENT_BLOCK
    max_bright_pixels: int = 4096
    batch_size: int = 8
    poisson_split_mean: float = survey_sky.POISSON_SPLIT_MEAN
    poisson_unroll: int | None = None
    background_uniform_bits: int = 32
    finish_poisson_tail: bool = False


class SimResults(NamedTuple):
    """Per-simulation fixed-size outputs (leading axis: simulation).

    Detections (n_sims, max_candidates): det_x, det_y, det_ml (deblended when
    ``SimConfig.deblend``), det_ml_raw, det_valid, det_exposure (s), det_total_counts,
    det_bkg_counts (deblended), det_source_counts (deblended total PSF counts),
    matched, matched_flux (input 3-24 keV / logN-logS-band flux), matched_band_flux,
    separation (pixels).  Inputs (n_sims, max_sources): src_flux, src_band_flux,
    src_exposure, src_counts, src_valid; n_drawn, n_logp_needed, minima_overflow,
    n_bright_pixels, n_source_events, n_unfinished_pixels (n_sims,)."""

    det_x: jax.Array
    det_y: jax.Array
    det_ml: jax.Array
    det_ml_raw: jax.Array
    det_valid: jax.Array
    det_exposure: jax.Array
    det_total_counts: jax.Array
    det_bkg_counts: jax.Array
    det_source_counts: jax.Array
    matched: jax.Array
    matched_flux: jax.Array
    matched_band_flux: jax.Array
    separation: jax.Array
    src_flux: jax.Array
    src_band_flux: jax.Array
    src_exposure: jax.Array
    src_counts: jax.Array
    src_valid: jax.Array
    n_drawn: jax.Array
    n_logp_needed: jax.Array
    minima_overflow: jax.Array
    n_bright_pixels: jax.Array
    n_source_events: jax.Array
    n_unfinished_pixels: jax.Array


def _one_sim(key, exposure, background, match_total, filler, background_sum, count_limit,
             cfg: SimConfig, use_match: bool, use_filler: bool):
    scale = cfg.pixel_scale_arcsec
    counts, cat = survey_sky.simulate_sky_events(
        key, exposure, background, scale, cfg.band, cfg.lognlogs, cfg.psf, cfg.max_sources,
        match_total if use_match else None, cfg.psf_radius_arcsec,
        filler if use_filler else None, poisson_split_mean=cfg.poisson_split_mean,
        event_block=cfg.source_event_block, max_bright=cfg.max_bright_pixels,
        finish_poisson_tail=cfg.finish_poisson_tail, poisson_unroll=cfg.poisson_unroll,
        dtype=jnp.int32, uniform_bits=cfg.background_uniform_bits)
    # the Poisson walk is written to memory inside poisson_image (materialised), so XLA
    # cannot fuse it into the detection's stencil; the sum with the source image is cheap
    # to recompute there, so the counts image is not written out again
    bkg = jnp.where(exposure > 0, background, 0.0)
    # detection uses the given background map (as the paper uses its background mosaics),
    # whose 20" sums and count screen are computed once per map (detection_background)
    det = detect_fixed(counts, bkg, exposure, cfg.aperture_arcsec / scale,
                       cfg.max_candidates, cfg.threshold_log10p,
                       cfg.min_separation_arcsec / scale, deblend=cfg.deblend,
                       pixel_scale_arcsec=scale, psf_profile=psf_table(cfg.psf),
                       deblend_arcsec=cfg.deblend_arcsec, eval_fraction=cfg.eval_fraction,
                       count_limit=count_limit, background_sum=background_sum,
                       series_terms=cfg.series_terms, integer_counts=True)
    det_xy = jnp.stack([det.x, det.y], axis=-1)
    src_xy = jnp.stack([cat.x, cat.y], axis=-1)
    matched, j, mflux, sep = match_catalogue(det_xy, det.valid, src_xy, cat.flux, cat.valid,
                                             cfg.match_radius_arcsec / scale)
    mband = jnp.where(matched, cat.band_flux[jnp.maximum(j, 0)], 0.0)
    return SimResults(det.x, det.y, det.det_ml, det.det_ml_raw, det.valid, det.exposure,
                      det.total_counts, det.bkg_counts, det.source_counts, matched, mflux, mband,
                      sep, cat.flux, cat.band_flux, cat.exposure, cat.counts, cat.valid,
                      cat.n_drawn, det.n_logp_needed, det.minima_overflow,
                      cat.n_bright_pixels, cat.n_source_events, cat.n_unfinished_pixels)


def _run_chunk(keys, exposure, background, match_total, filler, background_sum, count_limit,
               cfg: SimConfig, use_match: bool, use_filler: bool = False):
    f = jax.vmap(lambda k: _one_sim(k, exposure, background, match_total, filler,
                                    background_sum, count_limit, cfg, use_match, use_filler))
    nb = keys.shape[0] // cfg.batch_size
    kb = keys.reshape((nb, cfg.batch_size) + keys.shape[1:])
    out = lax.map(f, kb)
    return jax.tree_util.tree_map(lambda a: a.reshape((nb * cfg.batch_size,) + a.shape[2:]),
                                  out)


run_chunk = jax.jit(_run_chunk, static_argnames=("cfg", "use_match", "use_filler"))
"""Jitted chunk runner: ``run_chunk(keys, exposure, background, match_total, filler,
background_sum, count_limit, cfg=, use_match=, use_filler=)`` (keys: a multiple of
``cfg.batch_size``; the two detection arrays from :func:`detection_background`); check
``run_chunk._cache_size()``.  Direct callers must check what :func:`simulate_and_detect`
checks: ``n_logp_needed`` against the list length, ``n_unfinished_pixels == 0`` (else rerun
with ``finish_poisson_tail=True``), ``n_bright_pixels`` and ``minima_overflow``."""

_SHARDED_RUNNERS = {}


def sharded_chunk_runner(cfg: SimConfig, use_match: bool, use_filler: bool, devices=None,
                         axis_name: str = "sims"):
    """``run_chunk`` split over ``devices`` (default: all) with :func:`jax.shard_map` on a
    1-D mesh with the named axis ``axis_name``: each device runs its contiguous block of the
    keys (whose length must be a multiple of ``len(devices) * cfg.batch_size``); the images
    are replicated.  The same code runs on host CPU devices
    (``XLA_FLAGS=--xla_force_host_platform_device_count=N``), several GPUs, or several hosts
    after ``jax.distributed.initialize()``.  Compiled once per (cfg, flags, devices)."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    devices = tuple(jax.devices() if devices is None else devices)
    key = (cfg, use_match, use_filler, devices, axis_name)
    if key not in _SHARDED_RUNNERS:
        mesh = Mesh(np.asarray(devices), (axis_name,))

        def local(keys, exposure, background, match_total, filler, background_sum,
                  count_limit):
            return _run_chunk(keys, exposure, background, match_total, filler, background_sum,
                              count_limit, cfg, use_match, use_filler)

        fn = jax.shard_map(local, mesh=mesh,
                           in_specs=(P(axis_name), P(), P(), P(), P(), P(), P()),
                           out_specs=P(axis_name), check_vma=False)
        _SHARDED_RUNNERS[key] = jax.jit(fn)
    return _SHARDED_RUNNERS[key]


_tophat_sum_jit = jax.jit(tophat_sum_fft, static_argnums=1)


def detection_background(exposure, background, radius_pix: float,
                         threshold_log10p: float = ns.DETECTION_LOG10P):
    """The per-map detection inputs that do not change between simulations: the 20" top-hat
    background sums (zero-exposure pixels excluded, floored at 1e-12) and their exact
    false-probability screen :func:`survey_detection.false_probability_count_limit`.
    Returns ``(background_sum, count_limit)`` as float64 JAX arrays."""
    exposure = jnp.asarray(exposure, jnp.float64)
    bkg = jnp.where(exposure > 0, jnp.asarray(background, jnp.float64), 0.0)
    b_sum = jnp.maximum(_tophat_sum_jit(bkg, float(radius_pix), exposure), _BKG_FLOOR)
    limit = sd.false_probability_count_limit(np.asarray(b_sum), threshold_log10p)
    return b_sum, jnp.asarray(limit)


def poisson_split_for(background, match_total_counts=None,
                      max_background_pixels: int = 2048) -> float:
    """:func:`survey_sky.poisson_image` split mean for a background map (scaled up to
    ``match_total_counts`` if that is larger than its sum, as the filler may be): the smallest
    power of two >= 2 (and <= 256) above which at most ``max_background_pixels`` background
    pixels lie, so that the per-pixel CDF walk is short (16 steps at 2 counts; 1.25x faster
    than at 8 on the NEP-like field) and the separate list of 16384 bright pixels holds the
    source cores.
    :func:`simulate_and_detect` uses this value; pass it to :func:`survey_sky.simulate_sky`
    to regenerate one of its maps."""
    values = np.asarray(background, dtype=np.float64).ravel()
    if match_total_counts is not None:
        values = values * max(1.0, float(match_total_counts) / max(float(values.sum()), 1e-300))
    split = 2.0
    # at most 256 (poisson_image needs exp(split) finite; brighter pixels go to its list)
    while np.count_nonzero(values > split) > max_background_pixels and split < 256.0:
        split *= 2.0
    return split


def poisson_unroll_for(background, exposure, split_mean: float, match_total_counts=None,
                       filler=None, max_unfinished: float = 1e-5) -> int:
    r"""Unrolled steps of the background Poisson walk (:func:`survey_sky.poisson_image`'s
    ``n_unroll``) for a map: the fewest (at least 4, at most the walk's default bulk) for
    which the expected number of pixels per map drawn beyond them,
    :math:`\sum_p P(X \ge n \mid \min(\lambda_p, L))`, is at most ``max_unfinished``, with
    the largest means the rescaling can give (:func:`background_mean_bound`'s map).  A map
    with such a draw is redrawn with the walk's loop (same image, exact;
    :func:`simulate_and_detect` reruns its chunk), and the first such rerun of a call
    compiles that variant (~13-20 s, in each worker process), so the bound is per map and
    small: 1e-5 gives 15 steps instead of 16 on the NEP-like 3-24 keV field and 9-12 in the
    sub-bands (a 1e-3 bound, 13 steps, cost a 20 s compilation in a 2048-simulation run)."""
    from scipy.stats import poisson

    from bkgjax.simulate.poisson import walk_lengths

    if np.shape(background) != np.shape(exposure):
        raise ValueError(f"poisson_unroll_for: background {np.shape(background)} and exposure "
                         f"{np.shape(exposure)} must have the same shape")
    lam = np.asarray(_largest_background(background, exposure, match_total_counts, filler))
    if not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError("poisson_unroll_for: the (rescaled) background must be finite and "
                         ">= 0 on exposed pixels")
    lam = np.minimum(lam.ravel().astype(np.float64), float(split_mean))
    lam = lam[lam > 0]
    bulk = walk_lengths(float(split_mean))[0]
    # the expected number beyond n falls with n: bisect for the first n within the bound
    # (4 evaluations over the map instead of up to 12; ~0.2 s per call had been setup time)
    lo, hi = 4, bulk  # the answer lies in [lo, hi]; hi (the bulk) is the fallback
    while lo < hi:
        mid = (lo + hi) // 2
        if float(np.sum(poisson.sf(mid - 1, lam))) <= max_unfinished:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _largest_background(background, exposure, match_total_counts=None, filler=None):
    good = jnp.asarray(exposure) > 0
    bkg = jnp.where(good, jnp.asarray(background, jnp.float64), 0.0)
    if match_total_counts is not None:
        bkg = survey_sky.rescaled_background(
            bkg, good, jnp.asarray(match_total_counts, jnp.float64), filler)
    return bkg


def background_mean_bound(background, exposure, match_total_counts=None, filler=None) -> float:
    """Largest background mean per pixel that
    :func:`~bkgjax.missions.nustar_survey.sky.simulate_sky_events` can draw for this map: the
    rescaling factor is largest with no source photons, ``(target - sum(B - F)) / sum(F)``
    for the filler F (or ``target / sum(B)`` without one).  When it is below the Poisson
    split mean the bright-pixel list of :func:`survey_sky.poisson_image` is not needed."""
    return float(jnp.max(_largest_background(background, exposure, match_total_counts, filler)))


def simulation_keys(key, n_sims: int, first_simulation: int = 0):
    """Per-simulation keys ``fold_in(key, i)`` for ``i = first_simulation, ...,
    first_simulation + n_sims - 1``: simulation i depends only on (key, i)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(first_simulation, first_simulation + n_sims, dtype=jnp.uint32))


@dataclass(frozen=True)
class _ChunkPlan:
    """What a chunk of :func:`simulate_and_detect` needs besides its images (picklable: sent
    once to each worker process when ``processes > 1``)."""

    key: np.ndarray  # PRNG key data (uint32)
    key_impl: str | None  # None: a raw key; else the implementation of a typed key
    cfg: SimConfig
    ladder: tuple
    use_match: bool
    use_filler: bool


def _run_plan_chunk(plan: _ChunkPlan, arrays, first: int, size: int, devices=None):
    """Simulations ``first .. first + size - 1`` of ``plan`` (one jitted call, reruns
    included; ``arrays``: exposure, background, match_total, filler, background_sum,
    count_limit as JAX arrays): returns (SimResults as NumPy, number of reruns)."""
    key = jnp.asarray(plan.key)
    if plan.key_impl is not None:
        key = jax.random.wrap_key_data(key, impl=plan.key_impl)
    keys = simulation_keys(key, size, first)
    n_dev = 1 if devices is None else len(devices)
    c = plan.cfg
    n_rerun = 0
    while True:
        if n_dev > 1:
            out = sharded_chunk_runner(c, plan.use_match, plan.use_filler, devices)(
                keys, *arrays)
        else:
            out = run_chunk(keys, *arrays, cfg=c, use_match=plan.use_match,
                            use_filler=plan.use_filler)
        out = jax.tree_util.tree_map(np.asarray, out)
        n_pixels = arrays[0].size
        max_eval = _eval_budget(c.eval_fraction, n_pixels)
        short_list = max_eval < n_pixels and np.any(out.n_logp_needed > max_eval)
        # a background draw beyond the unrolled Poisson walk (~5e-10 per pixel): rerun
        # with the walk's while loop, which gives the same image elsewhere
        unfinished = np.any(out.n_unfinished_pixels > 0)
        if not (short_list or unfinished):
            return out, n_rerun
        if short_list:
            c = dataclasses.replace(c, eval_fraction=next(
                lv.eval_fraction for lv in plan.ladder if lv.eval_fraction > c.eval_fraction))
        if unfinished:
            c = dataclasses.replace(c, finish_poisson_tail=True)
        n_rerun += 1


_WORKER_PLAN = {}  # per worker process: the plan and images sent by _pool_init


def _pool_init(plan: _ChunkPlan, arrays, counter=None, cpus=None):
    # a worker process of simulate_and_detect(processes > 1): CPU only (each worker would
    # otherwise claim the whole accelerator), 64-bit as in the parent (bkgjax's import).
    # With a core per worker (``cpus``), worker i is pinned to cpus[i] before its XLA
    # backend starts (at the first array below): two pinned workers on the two cores of the
    # test machine ran ~21-24 ms per simulation each, i.e. ~11 ms per simulation together,
    # where unpinned workers, whose XLA thread pools (four threads on two cores) contended,
    # took 24 ms per simulation together.  (Turning XLA's Eigen threads off as well made
    # no difference to the speed but changed DET_ML in the last bit against processes=1.)
    import os

    if counter is not None and cpus:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", True)
    _WORKER_PLAN["plan"] = plan
    _WORKER_PLAN["arrays"] = tuple(jnp.asarray(a) for a in arrays)


def _pool_chunk(first: int, size: int):
    return _run_plan_chunk(_WORKER_PLAN["plan"], _WORKER_PLAN["arrays"], first, size)


#: Device memory per simulation and pixel of a chunk, with margin: measured 44.7 bytes on an
#: H200 (peak 17.2 GiB at 1024 and 68.8 GiB at 4096 simulations of the 635 x 635 NEP-like
#: field; benchmarks/results/survey_gpu*.json).
ACCELERATOR_BYTES_PER_SIM_PIXEL = 64
#: Largest accelerator batch: throughput on the H200 grew up to 2048 simulations per batch
#: (12.0, 3.4, 1.23, 0.76, 0.75 ms per simulation at 64, 256, 1024, 2048, 4096).
MAX_ACCELERATOR_BATCH = 4096


def default_batching(platform: str, n_sims: int, n_pixels: int, n_devices: int = 1,
                     device_memory_bytes: float | None = None,
                     memory_fraction: float = 0.4) -> tuple[int, int]:
    """``(batch_size, batches_per_chunk)`` for :func:`simulate_and_detect` when not given.

    CPU (``platform == "cpu"``): batches of 4 (XLA:CPU gains nothing from wider vmaps;
    memory stays ~1.2 GB), 16 per chunk from 512 simulations on and 2 below (a chunk is one
    call with a fixed cost, and the worker processes of ``processes > 1`` receive whole
    chunks: on the 2-core test machine two workers of the 20:05 UTC engine took 8.0-9.4 ms
    per simulation with chunks of 4 x 16 against 14.8 ms with 4 x 2; short runs keep small
    chunks, which pad
    less).  Accelerators are latency-bound at small batches (an H200
    takes 42 ms per simulation at batch 16 but 0.75 ms at 4096), so one batch per chunk, as
    wide as ``memory_fraction`` of the device memory allows
    (:data:`ACCELERATOR_BYTES_PER_SIM_PIXEL` per simulation and pixel; 16 GiB assumed when
    the device does not report its memory), at most :data:`MAX_ACCELERATOR_BATCH`, and split
    evenly over the chunks so that the last one is not mostly padding (1200 simulations: one
    chunk of 1200 rather than two of 1024).
    """
    if platform == "cpu":
        return 4, (16 if int(n_sims) >= 512 else 2)
    memory = float(device_memory_bytes) if device_memory_bytes else 16.0 * 2**30
    cap = int(memory_fraction * memory // (ACCELERATOR_BYTES_PER_SIM_PIXEL * max(n_pixels, 1)))
    cap = max(1, min(MAX_ACCELERATOR_BATCH, cap))
    per_device = -(-max(int(n_sims), 1) // max(int(n_devices), 1))
    n_chunks = -(-per_device // cap)
    return -(-per_device // n_chunks), 1


def simulate_and_detect(key, n_sims: int, exposure, background, pixel_scale_arcsec: float, *,
                        band: str = "3-24", lognlogs=survey_sky.TREISTER09_APPROX, psf=None,
                        max_sources: int | None = None, max_candidates: int = 64,
                        threshold_log10p: float = ns.DETECTION_LOG10P,
                        match_total_counts=None, filler=None, batch_size: int | None = None,
                        batches_per_chunk: int | None = None, progress: bool = True,
                        shard: bool = True,
                        devices=None, processes: int = 1, first_simulation: int = 0,
                        **config) -> SimResults:
    """``n_sims`` mock skies (:func:`survey_sky.simulate_sky_events`) + :func:`detect_fixed` +
    :func:`match_catalogue` (30"), from one seed ``key`` (int or PRNG key).

    Simulation i uses ``fold_in(key, first_simulation + i)``, so results do not depend on
    ``batch_size``, chunking, the number of devices or processes, and a long run can be
    split into jobs by ``first_simulation``.  Each chunk of ``n_devices * batch_size *
    batches_per_chunk`` simulations is one jitted call (``vmap`` over ``batch_size``,
    ``lax.map`` over batches, and with ``shard=True`` and several devices
    :func:`sharded_chunk_runner` over the devices); memory is bounded by the chunk; a tqdm bar
    runs over the chunks; the last chunk is padded (fixed shapes, no recompilation).
    ``batch_size`` and ``batches_per_chunk`` default to :func:`default_batching` for the
    devices' platform (CPU: 4 x 16, or 4 x 2 below 512 simulations; a GPU: one batch per
    chunk, as wide as its memory allows).

    ``processes > 1`` (CPU only): the chunks run in that many worker processes (``spawn``;
    each compiles the program once and holds its own ~1.2 GB; each pinned to its own core
    when the host has as many), which is how the cores of a CPU host are used: XLA:CPU runs
    this program on little more than one core, and two executions of it in one process (two
    host devices or two threads) hang XLA:CPU 0.10.  It pays off on long calls only: on the
    2-core test machine with the NEP-like field two workers took 5.7-6.6 ms per simulation
    against 10.5-10.6 ms in one process (chunks of 4 x 16), but started in ~25 s against an
    ~12 s compilation, so they gain from ~2500-3000 simulations per call on.  Scripts that use it
    need the usual ``if __name__ == "__main__":`` guard of :mod:`multiprocessing`.  Same
    results as ``processes=1``.

    ``filler``: the focused-CXB part of ``background`` rescaled to reach
    ``match_total_counts`` (paper sec. 3.1).  ``max_sources`` defaults to a value with
    P(truncation) < 1e-9 (:meth:`LogNLogS.check_max_sources` is always called).  Extra
    ``config`` keys go to :class:`SimConfig`.  Returns :class:`SimResults` (NumPy).
    """
    from tqdm.auto import tqdm

    if isinstance(key, int):
        key = jax.random.PRNGKey(key)
    key_impl = None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a typed jax.random.key
        key_impl = str(jax.random.key_impl(key))
        key = jax.random.key_data(key)
    processes = int(processes)
    first_simulation = int(first_simulation)
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if first_simulation < 0 or first_simulation + int(n_sims) > 2**32:
        raise ValueError(f"first_simulation={first_simulation} must be >= 0 with "
                         "first_simulation + n_sims <= 2**32 (uint32 simulation index)")
    if processes > 1 and jax.default_backend() != "cpu":
        raise ValueError(f"processes={processes} is for CPU hosts; on "
                         f"{jax.default_backend()} use devices= (jax.sharding) instead")
    exposure = jnp.asarray(exposure, jnp.float64)
    background = jnp.asarray(background, jnp.float64)
    if exposure.shape != background.shape or exposure.ndim != 2:
        raise ValueError(f"exposure {exposure.shape} and background {background.shape} must be "
                         "2-D images of the same shape")
    # the FITS reader (bkgjax.io.read_survey_images) checks the same on files
    for name, image in (("exposure", exposure), ("background", background)):
        n_bad = int(jnp.sum(~jnp.isfinite(image)))
        n_negative = int(jnp.sum(image < 0))
        if n_bad or n_negative:
            raise ValueError(f"{name} image has {n_bad} NaN/inf and {n_negative} negative pixels; "
                             "it must be finite and >= 0 (zero exposure marks unobserved pixels)")
    if not bool(jnp.any(exposure > 0)):
        raise ValueError("exposure image is zero everywhere")
    area = float(jnp.sum(exposure > 0)) * (pixel_scale_arcsec / 3600.0) ** 2
    if max_sources is None:
        mu = lognlogs.expected_number(area)
        max_sources = max(16, int(mu + 8.0 * math.sqrt(mu) + 16))
        max_sources = int(2 ** math.ceil(math.log2(max_sources)))
    lognlogs.check_max_sources(area, max_sources)
    if filler is not None and np.shape(filler) != background.shape:
        raise ValueError(f"filler {np.shape(filler)} must have the background's shape "
                         f"{background.shape}")
    config.setdefault("poisson_split_mean", poisson_split_for(background, match_total_counts))
    if "max_bright_pixels" not in config and background_mean_bound(
            background, exposure, match_total_counts, filler) <= config["poisson_split_mean"]:
        config["max_bright_pixels"] = 0  # no background mean can exceed the split
    if "poisson_unroll" not in config:
        config["poisson_unroll"] = poisson_unroll_for(background, exposure,
                                                      config["poisson_split_mean"],
                                                      match_total_counts, filler)
    devices = tuple(jax.devices() if devices is None else devices)
    n_dev = len(devices) if shard and processes == 1 else 1
    if batch_size is None or batches_per_chunk is None:
        stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
        auto_batch, auto_per_chunk = default_batching(
            devices[0].platform, n_sims, int(exposure.size), n_dev,
            (stats or {}).get("bytes_limit"))
        batch_size = auto_batch if batch_size is None else batch_size
        batches_per_chunk = auto_per_chunk if batches_per_chunk is None else batches_per_chunk
    if int(batch_size) < 1 or int(batches_per_chunk) < 1:
        raise ValueError(f"batch_size ({batch_size}) and batches_per_chunk "
                         f"({batches_per_chunk}) must be >= 1")
    cfg = SimConfig(pixel_scale_arcsec=float(pixel_scale_arcsec), band=band, lognlogs=lognlogs,
                    psf=psf or ns.DEFAULT_PSF, max_sources=int(max_sources),
                    max_candidates=int(max_candidates),
                    threshold_log10p=float(threshold_log10p), batch_size=int(batch_size),
                    **config)
    b_sum, count_limit = detection_background(exposure, background,
                                              cfg.aperture_arcsec / cfg.pixel_scale_arcsec,
                                              cfg.threshold_log10p)
    if cfg.series_terms is None:
        cfg = dataclasses.replace(cfg, series_terms=series_terms_for(b_sum, count_limit))
    # a chunk in which some map needed the exact log P on more pixels than the list holds is
    # rerun with a 4x longer list, then with every pixel evaluated (same keys, so the same
    # maps): exact, never an error; the longer lists compile only when first needed
    ladder = [cfg] + [dataclasses.replace(cfg, eval_fraction=f)
                      for f in (4.0 * cfg.eval_fraction, 1.0) if cfg.eval_fraction < f <= 1.0]
    use_match = match_total_counts is not None
    use_filler = use_match and filler is not None
    mt = jnp.asarray(0.0 if match_total_counts is None else match_total_counts, jnp.float64)
    fill = jnp.zeros_like(background) if filler is None else jnp.asarray(filler, jnp.float64)
    arrays = (exposure, background, mt, fill, b_sum, count_limit)
    plan = _ChunkPlan(np.asarray(key), key_impl, cfg, tuple(ladder), use_match, use_filler)
    chunk = n_dev * cfg.batch_size * int(batches_per_chunk)
    firsts = [first_simulation + start for start in range(0, n_sims, chunk)]

    parts = []
    n_rerun = 0
    bar = tqdm(total=len(firsts), disable=not progress, desc="simulations", unit="chunk")
    if processes == 1:
        for first in firsts:
            out, n = _run_plan_chunk(plan, arrays, first, chunk,
                                     devices if n_dev > 1 else None)
            parts.append(out)
            n_rerun += n
            bar.update()
    else:
        import concurrent.futures as cf
        import multiprocessing
        import os

        context = multiprocessing.get_context("spawn")
        n_workers = min(processes, len(firsts))
        # one core per worker when there are enough (see _pool_init); else the OS schedules
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        cpus = cpus if len(cpus) >= n_workers else None
        with cf.ProcessPoolExecutor(n_workers, mp_context=context, initializer=_pool_init,
                                    initargs=(plan, tuple(np.asarray(a) for a in arrays),
                                              context.Value("i", 0), cpus)) as pool:
            futures = [pool.submit(_pool_chunk, first, chunk) for first in firsts]
            for future in cf.as_completed(futures):
                future.result()  # a worker's error surfaces here, at once
                bar.update()
            for future in futures:
                out, n = future.result()
                parts.append(out)
                n_rerun += n
    bar.close()
    res = SimResults(*(np.concatenate(f)[:n_sims] for f in zip(*parts)))
    if n_rerun:
        warnings.warn(f"{n_rerun} chunk run(s) needed the exact false probability "
                      f"on more pixels than eval_fraction={cfg.eval_fraction} of the image, or "
                      "a background draw beyond the unrolled Poisson walk, and were rerun with "
                      "a longer list or the full walk (slower, same results); raise "
                      "eval_fraction if this is frequent", RuntimeWarning, stacklevel=2)
    if np.any(res.n_bright_pixels > cfg.max_bright_pixels):
        raise RuntimeError(
            f"a mock sky had {int(res.n_bright_pixels.max())} background pixels with a mean "
            f"above the split {cfg.poisson_split_mean} counts, more than the "
            f"{cfg.max_bright_pixels} drawn separately (survey_sky.poisson_image); pass a "
            "larger poisson_split_mean or max_bright_pixels to simulate_and_detect.")
    if np.any(res.minima_overflow > 0):
        raise RuntimeError(
            f"up to {int(res.minima_overflow.max())} local minima below the detection limit in "
            "one map, more than the gathered candidate list; candidates may be missing. "
            "Rerun with a larger max_candidates.")
    return res
