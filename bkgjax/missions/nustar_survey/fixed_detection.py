r"""Fixed-size (jittable, vmappable) detection of one NuSTAR survey map: the detection maths
of the calibration by simulations (Zhao et al. 2021, sec. 3.2).

The NumPy path :func:`bkgjax.missions.nustar_survey.detection.detect` has Python loops and
variable-size outputs; this module re-implements its detection core with fixed-size arrays so
that *generate + detect + match* of one simulation is one traced function, which
:mod:`~bkgjax.missions.nustar_survey.driver` vmaps over the simulation axis (paper sec. 3:
1200 simulations per band).  Everything here is a pure function of arrays and static
settings.

:func:`detect_fixed` (paper sec. 3.2):

1. 20" top-hat sums of counts and background by FFT convolution (equal to
   :func:`survey_detection.tophat_sum` up to round-off; the counts sums are rounded to 1e-9,
   as in :func:`survey_detection.false_probability_map`, which makes integer sums exact); in
   the simulations (``integer_counts=True``) the counts sums are taken directly in int32
   (:func:`tophat_sum_runs`, exact).
2. :math:`\log_{10}P` map with :func:`bkgjax.stats.intervals.log_false_probability`, 0 on
   zero-exposure pixels, background floored at 1e-12.  In the simulations only the pixels
   whose counts sum exceeds the per-pixel limit of
   :func:`survey_detection.false_probability_count_limit` (computed once per background map
   by :func:`detection_background`) can reach :math:`P \le 10^{-2.5}`; the exact value is
   computed on those (a few % of the NEP-like 3-24 keV map) and every other pixel gets 0,
   which changes neither the candidates nor their values (``eval_fraction``).
3. Local minima in 3x3 (:func:`local_minima`) with :math:`\log_{10}P \le` threshold.  Unlike
   :func:`survey_detection.find_candidates` plateaus are not merged into their centroid: of a
   plateau of exactly equal values only pixels with no equal-valued neighbour earlier in
   raster order (above / to the left) are kept.  Optionally (``min_separation_pix`` > 0),
   greedy suppression of weaker minima closer than that to a kept deeper one
   (:func:`suppress_close_minima`, as ``find_candidates(min_separation_pix=...)``; the
   simulations use the aperture radius, like :func:`survey_detection.detect`).
4. The ``max_candidates`` deepest minima (``lax.top_k`` as
   :func:`~bkgjax.missions.nustar_survey.xla_cpu.top_k_by_sort_key`: minima whose log P
   agree to ~1e-12 relative are ranked by pixel index), deepest first, with a valid mask.
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

(``survey_detection`` above is :mod:`bkgjax.missions.nustar_survey.detection`.)  The
XLA:CPU-specific primitives (compaction, counting, fusion barriers, the integer-key top-k)
are in :mod:`~bkgjax.missions.nustar_survey.xla_cpu`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bkgjax.missions.nustar_survey import detection as sd
from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.missions.nustar_survey import sky as survey_sky
from bkgjax.missions.nustar_survey import xla_cpu
from bkgjax.stats import intervals

__all__ = [
    "SERIES_BLOCK",
    "tophat_sum_fft",
    "tophat_runs",
    "tophat_sum_runs",
    "Detections",
    "eval_budget",
    "series_terms_for",
    "local_minima",
    "suppress_close_minima",
    "psf_table",
    "overlap_matrix_fixed",
    "prune_fixed",
    "nnls_fixed",
    "detect_fixed",
    "match_catalogue",
    "detection_background",
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
    column prefix sums instead (:func:`_tophat_sum_column_prefix`: 2 loads per kernel column
    instead of ~1 per kernel pixel).  Returns ``dtype`` (float64; the simulations keep
    ``jnp.int32`` sums, half the memory traffic of a float64 image)."""
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
    column-wise cumulative sum V (an associative scan, which XLA:CPU runs faster than its
    cumsum), so 2 loads per kernel column instead of the ~1 per kernel pixel of the fused
    row-box form.  int32 wraps modulo 2^32, so the differences are exact whenever
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
    column_sums = xla_cpu.materialised(lax.associative_scan(jnp.add, padded, axis=0))
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


def eval_budget(eval_fraction: float, n_pix: int) -> int:
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
    max_eval = eval_budget(eval_fraction, n_pix)
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
    (the plateau rule of :func:`local_minima`), tested in one pass of shifted slices over
    the map of the listed values.  Returns
    (flat pixel index, log10 P, local-minimum-below-threshold flag) per list entry and the
    number of needed pixels (the list is too short when it exceeds ``size``)."""
    h, w = c.shape
    n_pix = c.size
    need = (good & (c > count_limit)).ravel()
    packed = xla_cpu.pack_mask(need)
    n_needed = packed.inclusive[-1]
    idx = xla_cpu.compact_indices(need, size, packed)
    used = idx < n_pix
    safe = jnp.minimum(idx, n_pix - 1)
    # the series runs over the list in blocks of SERIES_BLOCK entries, up to the last used
    # one (the list is in pixel order, its used slots first; on the NEP-like 3-24 keV map
    # about a third of it).  Under vmap the loop runs to the batch's longest list.
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
    # neighbours per listed pixel are slower on XLA:CPU than one dense pass
    wp = w + 2
    iy, ix = safe // w, safe % w
    at = jnp.where(used, (iy + 1) * wp + ix + 1, (h + 2) * wp)
    padded = (jnp.pad(jnp.zeros((h, w)), 1, constant_values=jnp.inf).ravel()
              .at[at].set(logp, mode="drop", unique_indices=True).reshape(h + 2, wp))
    dense_min = _local_minima_padded(padded) & (padded[1:-1, 1:-1] <= threshold_log10p)
    dense_min = xla_cpu.materialised(dense_min.astype(jnp.uint8))
    is_min = used & (dense_min.ravel()[safe] == 1)
    return safe, logp, is_min, n_needed


def series_terms_for(background_sum, count_limit, rtol: float = 1e-15) -> int:
    """Static number of series terms for :func:`_screened_minima` on this background map:
    :func:`bkgjax.stats.intervals.false_probability_series_terms` at the smallest counts sum
    that is evaluated (``count_limit + 1``) of every pixel (NumPy, once per map)."""
    b = np.asarray(background_sum, np.float64)
    c_min = np.asarray(count_limit, np.float64) + 1.0
    # a pixel with c_min <= b cannot occur (the limit is above the median); guard anyway
    return intervals.false_probability_series_terms(np.maximum(c_min, np.floor(b) + 1.0), b,
                                                    rtol)


def local_minima(logp):
    """Pixels <= their 8 neighbours (off-image neighbours ignored) with no equal neighbour
    earlier in raster order (the plateau tie-break)."""
    return _local_minima_padded(jnp.pad(logp, 1, constant_values=jnp.inf))


def _local_minima_padded(padded):
    """:func:`local_minima` of ``padded[1:-1, 1:-1]``, whose one-pixel border holds inf: one
    fused pass of shifted slices, shared by the full-map and the screened paths."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    centre = padded[1:-1, 1:-1]
    is_min = jnp.ones((h, w), bool)
    for k, (dy, dx) in enumerate(_NEIGHBOURS):
        nb = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        is_min = is_min & (centre <= nb)
        if k < 4:  # plateau tie-break: no equal neighbour earlier in raster order
            is_min = is_min & (nb != centre)
    return is_min


def suppress_close_minima(y, x, valid, min_sep_pix):
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


@functools.lru_cache(maxsize=16)
def _overlap_tables(radius_pix: float, pixel_scale_arcsec: float, psf_r: tuple, psf_v: tuple):
    """PSF per pixel at integer offsets, ``psf[dy + R, dx + R]`` (0 beyond the profile
    table; linear interpolation of :func:`psf_table`'s ``(psf_r, psf_v)``), and its sum over
    the aperture offsets, ``aperture[d] = sum_o psf[d + o]`` (the overlap of a fully exposed
    aperture).  NumPy, built at trace time and kept for the 16 most recent (radius, scale,
    profile) keys (a calibration uses one per band); the arrays are read-only."""
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
    psf.setflags(write=False)
    aperture.setflags(write=False)
    return psf, r_psf, aperture, r_ap


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
    psf, r_psf, aperture, r_ap = _overlap_tables(float(radius_pix), float(pixel_scale_arcsec),
                                                 tuple(psf_r), tuple(psf_v))
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
    (:func:`~bkgjax.missions.nustar_survey.driver.simulate_and_detect` reruns a chunk with a
    4x longer list, then with every pixel, where it did not).  ``count_limit`` (used when
    ``eval_fraction`` < 1): the exact screen of
    :func:`survey_detection.false_probability_count_limit` for this background and
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
        c = xla_cpu.materialised(tophat_sum_runs(counts, radius_pix, exposure, integer=True,
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
        size = eval_budget(eval_fraction, n_pix)
        pix, logp_list, cand, n_logp_needed = _screened_minima(
            c, b, good, count_limit, int(series_terms), size, threshold_log10p)
        score_of = -logp_list
        pixel_of = pix
    else:
        c = c.astype(jnp.float64)
        if eval_budget(eval_fraction, n_pix) >= n_pix:
            lnp = intervals.log_false_probability(c, b)
            n_logp_needed = jnp.asarray(0, jnp.int32)
        else:
            lnp, n_logp_needed = _sparse_log_false_probability(c, b, good, eval_fraction,
                                                               threshold_log10p, count_limit)
        logp = jnp.where(good, lnp / _LN10, 0.0)
        cand = (local_minima(logp) & (logp <= threshold_log10p) & good).ravel()
        score_of = -logp.ravel()
        pixel_of = jnp.arange(n_pix, dtype=jnp.int32)
    # the minima are sparse: gather them and rank only those, instead of a top-k over the
    # whole list; n_minima > n_gather is reported (Detections.minima_overflow)
    n_cand = cand.size
    n_gather = min(n_cand, max(8 * pre_k, 1024))
    n_minima = xla_cpu.count_true(cand)
    cidx = xla_cpu.compact_indices(cand, n_gather)
    cscore = jnp.where(cidx < n_cand, score_of[jnp.minimum(cidx, n_cand - 1)], -jnp.inf)
    k = min(pre_k, n_gather)
    vals, pos = xla_cpu.top_k_by_sort_key(cscore, k)
    idx = pixel_of[jnp.minimum(cidx[pos], n_cand - 1)]
    log10p_at = -vals
    if k < pre_k:  # pad (tiny images)
        vals = jnp.concatenate([vals, jnp.full(pre_k - k, -jnp.inf)])
        idx = jnp.concatenate([idx, jnp.zeros(pre_k - k, idx.dtype)])
        log10p_at = jnp.concatenate([log10p_at, jnp.zeros(pre_k - k)])
    valid = jnp.isfinite(vals)
    iy, ix = idx // c.shape[1], idx % c.shape[1]
    if min_separation_pix > 0:
        valid = suppress_close_minima(iy.astype(jnp.float64), ix.astype(jnp.float64), valid,
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
    # variadic (value, index) reduction is slower
    n_src = d2.shape[1]
    nearest = jnp.min(d2, axis=1)
    first = jnp.where(d2 == nearest[:, None], jnp.arange(n_src, dtype=jnp.int32), n_src - 1)
    j = jnp.min(first, axis=1)
    best = jnp.where(src_valid[j], jnp.sum((det_xy - src_xy[j]) ** 2, axis=-1), jnp.inf)
    matched = det_valid & (best <= radius_pix**2)
    flux = jnp.where(matched, jnp.asarray(src_flux)[j], 0.0)
    return matched, jnp.where(matched, j, -1), flux, jnp.where(matched, jnp.sqrt(best), jnp.inf)


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
