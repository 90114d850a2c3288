r"""Mock NuSTAR deep-survey skies (Zhao et al. 2021, nustar_nep_survey_detection.txt, sec. 3.1),
in JAX: jittable and vmappable over PRNG keys.

Recipe (paper section 3.1, after Civano et al. 2015):

1. Fluxes drawn from a logN-logS (:class:`LogNLogS`) down to 3e-15 erg cm^-2 s^-1 in 3-24 keV,
   positions uniform over the exposed pixels (exposure > 0).
2. Band fluxes from the 3-24 keV flux for an absorbed power law with Gamma = 1.8
   (:func:`band_flux_ratio`).  The paper includes Galactic N_H = 3.4e20 cm^-2; above 3 keV its
   photo-electric optical depth is < 1e-3, so it is neglected here (pure power law).
3. Source counts = band flux / CF x exposure at the source position, with CF from
   :func:`bkgjax.missions.nustar_survey.instrument.band_info`.  Consistency with
   :func:`bkgjax.missions.nustar_survey.detection.detect`: there FLUX = (aperture net counts /
   exposure) x CF / 0.32, i.e. the fluxes are *total* fluxes and CF converts a total count rate
   to a total flux; hence ``flux / CF * exposure`` are the *total* PSF counts of the source,
   of which EEF(20") = 0.32 fall in the 20" aperture.
4. The expected counts are splatted bilinearly onto the pixel grid (continuous positions;
   the bilinear weights broaden the PSF by < 1 pixel, negligible against its 58" HPD) and
   convolved (FFT, zero padding, no wrap-around) with a PSF kernel image: the PSF sampled at
   pixel centres within ``psf_radius_arcsec`` (default 150", EEF = 0.97 for the default King
   PSF) and scaled so that its sum equals EEF(psf_radius): the 3 % of the counts in the wings
   beyond the truncation radius are dropped, so that the 20" aperture still holds 32 % of the
   total counts as assumed by the aperture correction.  Source counts falling on pixels with
   zero exposure (or off the image) are lost.
5. Plus the background map (counts per pixel), optionally rescaled
   (``match_total_counts``): the paper adds fCXB counts so that the simulated maps have the
   observed total number of counts.  With ``filler`` (the focused-CXB part of the background
   map, counts per pixel) only that part is scaled, by
   :math:`\max(C_\mathrm{target} - \sum \mathrm{sources} - \sum(B - F), 0) / \sum F`, as in
   the paper; without it the whole background map is scaled by
   :math:`\max(C_\mathrm{target} - \sum \mathrm{sources}, 0) / \sum B` (sums over the
   exposed pixels).
6. Poisson realisation; zero-exposure pixels are 0.

The logN-logS (:class:`LogNLogS`): the paper draws fluxes from the Treister, Urry & Virani
(2009, ApJ 696, 110) population-synthesis counts but quotes no numbers, and that paper's
tables are not available here.  We adopt a broken power law in integral form,

.. math:: N(>S) = K\,(S/S_b)^{-\alpha_1}\ (S \ge S_b),\qquad
          N(>S) = K\,(S/S_b)^{-\alpha_2}\ (S < S_b)\quad [\mathrm{deg}^{-2}],

with (3-24 keV) :math:`S_b = 1.47\times10^{-14}` erg cm^-2 s^-1, :math:`K = 300` deg^-2,
:math:`\alpha_1 = 1.5` (Euclidean bright end) and :math:`\alpha_2 = 1.0`.  These are a
two-slope fit to the 2-10 keV AGN counts of Moretti et al. (2003, ApJ 588, 696; N(>2e-15) =
1500, N(>1e-14) = 300, N(>1e-13) = 11, N(>1e-12) = 0.3 deg^-2), which the Treister et al.
(2009) model reproduces to ~20 %, moved to 3-24 keV with the Gamma = 1.8 factor
F(3-24)/F(2-10) = 1.473 (break 1.0e-14 in 2-10 keV).  This gives N(>3e-15) = 1470 deg^-2 in
3-24 keV.  Replace by the Treister et al. tables when they are at hand.

.. warning:: The Moretti et al. numbers above were not checked against the paper in this
   repository (no copy is available here); treat this logN-logS as a provisional stand-in
   until it is validated (issue 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as _sstats
from scipy.fft import next_fast_len

from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.missions.nustar_survey import xla_cpu
from bkgjax.simulate.poisson import scaled_walk, scaled_walk_unrolled, walk_lengths

__all__ = [
    "LogNLogS",
    "TREISTER09_APPROX",
    "PHOTON_INDEX",
    "band_flux_ratio",
    "psf_kernel",
    "fft_convolve_same",
    "SkyCatalogue",
    "simulate_sky",
    "simulate_sky_events",
    "draw_catalogue",
    "rescaled_background",
    "source_events_image",
    "psf_radius_quantiles",
    "poisson_image",
]

PHOTON_INDEX = 1.8
"""Photon index of the spectral model used for band conversions and the CFs (paper sec. 3.1)."""


@dataclass(frozen=True)
class LogNLogS:
    """Broken power-law integral counts N(>S) in deg^-2 (module docstring for the values).

    ``s_break`` and ``s_min`` in erg cm^-2 s^-1 in the band ``band`` (default 3-24 keV);
    ``norm`` = N(>s_break); ``alpha_bright`` / ``alpha_faint`` the integral slopes above /
    below the break.
    """

    s_break: float = 1.47e-14
    norm: float = 300.0
    alpha_bright: float = 1.5
    alpha_faint: float = 1.0
    s_min: float = 3e-15
    band: str = "3-24"

    def __post_init__(self):
        if not (self.s_break > 0 and self.norm > 0 and self.s_min > 0
                and self.alpha_bright > 0 and self.alpha_faint > 0):
            raise ValueError(f"LogNLogS parameters must be positive, got {self}")

    def n_above(self, s):
        """N(>s) in deg^-2 (JAX; works on arrays)."""
        s = jnp.asarray(s, dtype=jnp.float64)
        alpha = jnp.where(s >= self.s_break, self.alpha_bright, self.alpha_faint)
        return self.norm * (s / self.s_break) ** (-alpha)

    def flux_for_n(self, n):
        """Inverse of :meth:`n_above`: the flux S with N(>S) = n (n > 0)."""
        n = jnp.asarray(n, dtype=jnp.float64)
        alpha = jnp.where(n <= self.norm, self.alpha_bright, self.alpha_faint)
        return self.s_break * (n / self.norm) ** (-1.0 / alpha)

    def cdf(self, s):
        """P(S' <= s) of the source fluxes above ``s_min`` (for tests / KS)."""
        s = jnp.maximum(jnp.asarray(s, dtype=jnp.float64), self.s_min)
        return 1.0 - self.n_above(s) / self.n_above(self.s_min)

    def expected_number(self, area_deg2):
        """Mean number of sources above ``s_min`` on ``area_deg2``."""
        return float(self.n_above(self.s_min)) * float(area_deg2)

    def check_max_sources(self, area_deg2, max_sources, tail_probability=1e-9):
        """Raise ``ValueError`` unless P(Poisson(N(>s_min) area) > max_sources) <
        ``tail_probability``: the documented check against the truncation in
        :meth:`sample_fluxes` (which cannot raise inside jit)."""
        mu = self.expected_number(area_deg2)
        tail = float(_sstats.poisson.sf(int(max_sources), mu))
        if tail >= tail_probability:
            need = int(_sstats.poisson.isf(tail_probability, mu)) + 1
            raise ValueError(f"max_sources={max_sources} too small: mean {mu:.1f} sources on "
                             f"{area_deg2:.4g} deg^2, P(N > max_sources) = {tail:.2g}; use "
                             f">= {need}")
        return tail

    def sample_fluxes(self, key, area_deg2, max_sources: int):
        """(fluxes, valid, n_drawn): ``max_sources`` fluxes by inverse-CDF sampling, of which
        the first ``min(N, max_sources)`` are valid, N ~ Poisson(N(>s_min) x area).  Beyond
        ``max_sources`` sources are silently dropped (check with :meth:`check_max_sources`;
        :func:`simulate_sky` also reports the drawn number).  Invalid entries hold fluxes too
        (never NaN) but must be ignored.  Returns (fluxes, valid, n_drawn)."""
        k_n, k_s = jax.random.split(key)
        mu = self.n_above(self.s_min) * jnp.asarray(area_deg2, dtype=jnp.float64)
        n = jax.random.poisson(k_n, mu, dtype=jnp.int32)
        u = 1.0 - jax.random.uniform(k_s, (max_sources,), dtype=jnp.float64)  # (0, 1]
        fluxes = self.flux_for_n(u * self.n_above(self.s_min))
        valid = jnp.arange(max_sources) < n
        return fluxes, valid, n


TREISTER09_APPROX = LogNLogS()
"""The default broken power-law approximation (module docstring)."""


def band_flux_ratio(band: str, reference: str = "3-24", photon_index: float = PHOTON_INDEX):
    r"""F(band)/F(reference) of a power law :math:`N(E)\propto E^{-\Gamma}` (energy flux
    :math:`\propto \int E^{1-\Gamma}dE`); Galactic absorption neglected above 3 keV."""
    b, r = ns.band_info(band), ns.band_info(reference)

    def f(lo, hi):
        if abs(photon_index - 2.0) < 1e-12:
            return math.log(hi / lo)
        p = 2.0 - photon_index
        return (hi**p - lo**p) / p

    return f(b.emin_kev, b.emax_kev) / f(r.emin_kev, r.emax_kev)


def psf_kernel(pixel_scale_arcsec: float, psf=None, radius_arcsec: float = 150.0) -> np.ndarray:
    """PSF image (2k+1)^2, k = ceil(radius/scale): the PSF at pixel centres within
    ``radius_arcsec``, scaled so that its sum is EEF(radius_arcsec)."""
    psf = psf or ns.DEFAULT_PSF
    k = int(math.ceil(radius_arcsec / pixel_scale_arcsec))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    r = np.hypot(xx, yy) * pixel_scale_arcsec
    img = np.where(r <= radius_arcsec, psf.psf_profile(r), 0.0)
    return img * (float(psf.encircled_fraction(radius_arcsec)) / img.sum())


def fft_convolve_same(image, kernel):
    """Linear (zero-padded, no wrap) 2-D convolution of ``image`` with an odd-sized
    ``kernel``, 'same' output as :func:`jax.scipy.signal.convolve2d` (float round-off).  The
    FFT lengths are :func:`scipy.fft.next_fast_len` (small prime factors: an FFT of a length
    with a large prime factor is several times slower, and the padded length of the PSF
    convolution of the 635-pixel NEP-like field would be the prime 757).  A NumPy
    ``kernel`` is transformed once, at trace time."""
    image = jnp.asarray(image, dtype=jnp.float64)
    h, w = image.shape
    kh, kw = np.shape(kernel)
    fh, fw = next_fast_len(h + kh - 1), next_fast_len(w + kw - 1)
    if isinstance(kernel, np.ndarray):
        kernel_spec = jnp.asarray(np.fft.rfft2(np.asarray(kernel, np.float64), (fh, fw)))
    else:
        kernel_spec = jnp.fft.rfft2(jnp.asarray(kernel, jnp.float64), (fh, fw))
    full = jnp.fft.irfft2(jnp.fft.rfft2(image, (fh, fw)) * kernel_spec, (fh, fw))
    return full[(kh - 1) // 2:(kh - 1) // 2 + h, (kw - 1) // 2:(kw - 1) // 2 + w]


class SkyCatalogue(NamedTuple):
    """Input catalogue of one mock sky (arrays of length ``max_sources``): x, y (0-based
    pixels), flux (3-24 keV or the logN-logS band, erg cm^-2 s^-1, total), band_flux (in the
    simulated band), exposure (s, at the source pixel), counts (expected total PSF counts),
    valid, n_drawn (Poisson number drawn, > max_sources means truncation),
    n_bright_pixels (pixels above the split mean, see :func:`poisson_image`),
    n_source_events (photons drawn by :func:`simulate_sky_events`) and n_unfinished_pixels
    (background draws left beyond the unrolled walk, :func:`poisson_image` with
    ``finish_tail=False``; the image is exact only when it is 0)."""

    x: jax.Array
    y: jax.Array
    flux: jax.Array
    band_flux: jax.Array
    exposure: jax.Array
    counts: jax.Array
    valid: jax.Array
    n_drawn: jax.Array
    n_bright_pixels: jax.Array = 0
    n_source_events: jax.Array = 0
    n_unfinished_pixels: jax.Array = 0


def _splat_bilinear(shape, x, y, w):
    """Bilinear scatter-add of weights ``w`` at continuous (x, y) onto an image."""
    h, wd = shape
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    fx, fy = x - x0, y - y0
    img = jnp.zeros(shape, dtype=jnp.float64)
    for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                       (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        ix = x0.astype(jnp.int32) + dx
        iy = y0.astype(jnp.int32) + dy
        inside = (ix >= 0) & (ix < wd) & (iy >= 0) & (iy < h)
        img = img.at[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, wd - 1)].add(
            jnp.where(inside, w * ww, 0.0))
    return img


def draw_catalogue(key, exposure, pixel_scale_arcsec: float, band: str = "3-24",
                   lognlogs: LogNLogS = TREISTER09_APPROX, max_sources: int = 256):
    """Input catalogue of one mock sky (steps 1-3 of the module docstring): fluxes from the
    logN-logS, positions uniform over the exposed pixels (continuous, pixel centres at
    integers), expected total PSF counts = band flux / CF x exposure at the position."""
    exposure = jnp.asarray(exposure, dtype=jnp.float64)
    good = exposure > 0
    shape = exposure.shape
    k_flux, k_pix, k_off = jax.random.split(key, 3)
    pix_area_deg2 = (pixel_scale_arcsec / 3600.0) ** 2
    area = jnp.sum(good) * pix_area_deg2
    flux, valid, n = lognlogs.sample_fluxes(k_flux, area, max_sources)
    band_flux = flux * band_flux_ratio(band, lognlogs.band)
    # uniform over the exposed pixels: inverse CDF of the pixel count (O(n_pix + n log n_pix);
    # jax.random.categorical would draw n_pix Gumbel numbers per source)
    cum = jnp.cumsum(good.ravel().astype(jnp.float64))
    u = jax.random.uniform(k_pix, (max_sources,), dtype=jnp.float64) * cum[-1]
    pix = jnp.clip(jnp.searchsorted(cum, u, side="right"), 0, cum.size - 1)
    iy, ix = pix // shape[1], pix % shape[1]
    off = jax.random.uniform(k_off, (2, max_sources), dtype=jnp.float64, minval=-0.5,
                             maxval=0.5)
    x = ix + off[0]
    y = iy + off[1]
    expo = exposure[iy, ix]
    cf = ns.band_info(band).cf
    counts = jnp.where(valid, band_flux / cf * expo, 0.0)
    return SkyCatalogue(x, y, flux, band_flux, expo, counts, valid, n)


def expected_sky(key, exposure, background, pixel_scale_arcsec: float, band: str = "3-24",
                 lognlogs: LogNLogS = TREISTER09_APPROX, psf=None, max_sources: int = 256,
                 match_total_counts=None, psf_radius_arcsec: float = 150.0, filler=None):
    """Expected counts image (sources + possibly rescaled background) and the input catalogue
    of one mock sky; :func:`simulate_sky` without the Poisson step."""
    exposure = jnp.asarray(exposure, dtype=jnp.float64)
    background = jnp.asarray(background, dtype=jnp.float64)
    good = exposure > 0
    shape = exposure.shape
    cat = draw_catalogue(key, exposure, pixel_scale_arcsec, band, lognlogs, max_sources)
    x, y, flux, band_flux, expo, counts, valid, n = cat[:8]
    point = _splat_bilinear(shape, x, y, counts)
    kernel = psf_kernel(pixel_scale_arcsec, psf, psf_radius_arcsec)
    src = jnp.where(good, jnp.maximum(fft_convolve_same(point, kernel), 0.0), 0.0)
    bkg = jnp.where(good, background, 0.0)
    if match_total_counts is not None:
        bkg = rescaled_background(bkg, good, jnp.asarray(match_total_counts, jnp.float64)
                                  - src.sum(), filler)
    return src + bkg, cat


def rescaled_background(background, good, target, filler=None):
    r"""Background means rescaled so that they sum to ``target`` (the observed total minus
    the source counts; paper sec. 3.1): with ``filler`` (the focused-CXB part F) only F is
    scaled, by :math:`\max(T - \sum(B - F), 0) / \sum F`; without it the whole map, by
    :math:`\max(T, 0) / \sum B`.  ``background`` must already be 0 off ``good``."""
    if filler is None:
        return background * jnp.maximum(target, 0.0) / jnp.maximum(background.sum(), 1e-300)
    fill = jnp.where(good, jnp.asarray(filler, jnp.float64), 0.0)
    fixed = background - fill
    scale = jnp.maximum(target - fixed.sum(), 0.0) / jnp.maximum(fill.sum(), 1e-300)
    return fixed + fill * scale


def simulate_sky(key, exposure, background, pixel_scale_arcsec: float, band: str = "3-24",
                 lognlogs: LogNLogS = TREISTER09_APPROX, psf=None, max_sources: int = 256,
                 match_total_counts=None, psf_radius_arcsec: float = 150.0, filler=None,
                 poisson_split_mean: float | None = None):
    """One mock sky (module docstring): ``(counts image, SkyCatalogue)``.

    ``pixel_scale_arcsec``, ``band``, ``lognlogs``, ``psf``, ``max_sources``,
    ``psf_radius_arcsec`` and ``poisson_split_mean`` (:func:`poisson_image`, default
    :data:`POISSON_SPLIT_MEAN`) are static (Python values) under jit; ``key``, ``exposure``,
    ``background`` and ``match_total_counts`` may be traced (vmap over ``key``).
    """
    k_sky, k_poisson = jax.random.split(key)
    lam, cat = expected_sky(k_sky, exposure, background, pixel_scale_arcsec, band, lognlogs,
                            psf, max_sources, match_total_counts, psf_radius_arcsec, filler)
    counts, n_bright, _ = poisson_image(
        k_poisson, lam, POISSON_SPLIT_MEAN if poisson_split_mean is None else poisson_split_mean)
    counts = jnp.where(jnp.asarray(exposure) > 0, counts, 0.0)
    return counts, cat._replace(n_bright_pixels=n_bright)


POISSON_SPLIT_MEAN = 8.0
"""Pixel means are split at this value for :func:`poisson_image`."""


def poisson_image(key, lam, split_mean: float = POISSON_SPLIT_MEAN, max_bright: int = 16384,
                  finish_tail: bool = True, n_unroll: int | None = None, dtype=jnp.float64,
                  uniform_bits: int = 64):
    r"""Exact Poisson realisation of an image of means, fast on CPU.

    :math:`\mathrm{Poisson}(\lambda) = \mathrm{Poisson}(\min(\lambda, L)) +
    \mathrm{Poisson}(\max(\lambda - L, 0))` (independent Poisson variables add): the first
    term for every pixel by inversion of the CDF with one uniform
    (:func:`bkgjax.simulate.poisson.scaled_walk_unrolled`), a fused elementwise kernel of
    ``n_unroll`` steps, default the walk's bulk for means up to L: 16 for L = 2, where
    P(draw >= 16) = 5e-10; L <= 500 so that :math:`e^{L}` stays finite), the second only for the
    few pixels brighter than :math:`L` (source cores), gathered into a list of ``max_bright``
    entries and drawn with ``jax.random.poisson``.

    ``finish_tail=True``: the rare draws beyond ``n_unroll`` continue in a while loop (exact).
    ``finish_tail=False``: no loop; those pixels keep the value ``n_unroll`` and are counted
    in ``n_unfinished``, so the caller can redraw with ``finish_tail=True`` (same key, same
    image elsewhere) when it is not 0.  The loop's carried full-size arrays break the
    kernel's fusion, so the draw without it is the faster one on XLA:CPU.

    ``uniform_bits``: 64, one ``jax.random.uniform`` float64 per pixel (two 32-bit random
    words); 32 (the simulation driver), one 32-bit word :math:`w` per pixel and
    :math:`u = (w + 1/2)\,2^{-32}` (the two halves of ``n/2`` 64-bit words): half the random
    numbers (threefry is most of the cost of the draw on a CPU), and every Poisson
    probability is still reproduced to
    :math:`2^{-32} = 2.3\times10^{-10}`.

    Returns (counts as ``dtype``: float64, or ``jnp.int32`` for the simulations, number of
    pixels above L, n_unfinished); more than
    ``max_bright`` pixels above L would leave the excess of the others undrawn
    (``max_bright=0``: no list, for callers that know that no mean exceeds L), so callers
    must check that number (:func:`~bkgjax.missions.nustar_survey.driver.simulate_and_detect`
    does)."""
    if not 0.0 < float(split_mean) <= 500.0:
        raise ValueError(f"poisson_image: split_mean must be in (0, 500] (the walk scales by "
                         f"exp(mean)), got {split_mean!r}")
    lam = jnp.asarray(lam, jnp.float64)
    k_u, k_b = jax.random.split(key)
    small = jnp.minimum(lam, split_mean)
    if uniform_bits == 32:
        # both halves of 64-bit words: JAX's (partitionable) threefry spends one block per
        # element whatever its width, so 32-bit draws would cost as much as 64-bit ones
        n = lam.size
        words = jax.random.bits(k_u, ((n + 1) // 2,), jnp.uint64)
        halves = jnp.concatenate([(words >> 32).astype(jnp.uint32), words.astype(jnp.uint32)])
        u = (halves[:n].reshape(lam.shape).astype(jnp.float64) + 0.5) * 2.0**-32
    elif uniform_bits == 64:
        u = jax.random.uniform(k_u, lam.shape, dtype=jnp.float64)
    else:
        raise ValueError(f"poisson_image: uniform_bits must be 32 or 64, got {uniform_bits!r}")
    bulk, j_max = walk_lengths(split_mean)
    n_unroll = bulk if n_unroll is None else int(n_unroll)
    if finish_tail:
        counts = scaled_walk(u, small, n_unroll, max(j_max, n_unroll)).astype(dtype)
        n_unfinished = jnp.asarray(0, jnp.int32)
    else:
        k = scaled_walk_unrolled(u, small, n_unroll)[0]
        # the walk is written once and read by both consumers (the counts and this count),
        # which XLA:CPU would otherwise each fuse it into, running it twice.  k counts the CDF
        # terms below u, so k == n_unroll exactly where u is above the last one (unfinished)
        k = xla_cpu.materialised(k)
        counts = k.astype(dtype)
        n_unfinished = xla_cpu.count_true(k == n_unroll)
    excess = (lam - small).ravel()
    bright = excess > 0
    # counted as float32 (count_true): an int64 sum makes XLA:CPU write the converted mask
    n_bright = xla_cpu.count_true(bright)
    if max_bright == 0:  # the caller guarantees lam <= split_mean (n_bright reports a breach)
        return counts, n_bright, n_unfinished
    n_pix = excess.size
    size = int(min(n_pix, max_bright))
    idx = xla_cpu.compact_indices(bright, size)
    mean = jnp.where(idx < n_pix, excess[jnp.minimum(idx, n_pix - 1)], 0.0)
    extra = jax.random.poisson(k_b, mean).astype(dtype)
    counts = counts.ravel().at[idx].add(extra, mode="drop").reshape(lam.shape)
    return counts, n_bright, n_unfinished


# ------------------------------------------------------------------ event-based mock skies
SOURCE_EVENT_BLOCK = 8192
"""Photons placed per iteration by :func:`source_events_image` (static; any number of
photons is drawn, in as many blocks as needed)."""


def psf_radius_quantiles(psf=None, radius_arcsec: float = 150.0, n_grid: int = 4096):
    r"""Radius (arcsec) at the quantiles :math:`u = 0, 1/n, \dots, 1` of the PSF truncated
    at ``radius_arcsec``, i.e. the inverse of :math:`\mathrm{EEF}(r)/\mathrm{EEF}(r_{max})`
    (a hashable tuple, static under jit; linear interpolation in u draws a radius from one
    uniform).  Built from the EEF on a 0.0075" grid, NumPy, once per PSF."""
    psf = psf or ns.DEFAULT_PSF
    r = np.linspace(0.0, radius_arcsec, 20001)
    eef = np.asarray(psf.encircled_fraction(r), np.float64)
    eef = np.maximum.accumulate(eef / eef[-1])
    u = np.linspace(0.0, 1.0, n_grid + 1)
    return tuple(np.interp(u, eef, r).tolist())


def source_events_image(key, cat: SkyCatalogue, good, pixel_scale_arcsec: float, psf=None,
                        psf_radius_arcsec: float = 150.0, block: int = SOURCE_EVENT_BLOCK,
                        dtype=jnp.float64):
    r"""Poisson counts image of the catalogue's sources, photon by photon.

    Source *i* emits :math:`n_i \sim \mathrm{Poisson}(\mu_i\,\mathrm{EEF}(r_{max}))` photons
    (``cat.counts`` = :math:`\mu_i`, total PSF counts; the 3 % beyond ``psf_radius_arcsec``
    are dropped as in :func:`expected_sky`), each at a radius drawn from the truncated PSF
    (:func:`psf_radius_quantiles`) and a uniform position angle around the continuous
    source position; a photon is counted in the pixel whose centre is nearest (pixel
    centres at integers) and lost off the image or on zero exposure.  This is the PSF
    integrated over each pixel, exactly; the binned model of :func:`expected_sky` samples it
    at pixel centres and adds the bilinear splat.

    The photons, in source order, are placed ``block`` (static) at a time in a
    ``lax.while_loop`` that runs until all are drawn, so the shapes are fixed, nothing is
    truncated and the number of photons never triggers a recompilation (under ``vmap`` the
    loop runs to the largest count of the batch; block *j* draws its uniforms from
    ``fold_in(key, j)``, so the image depends on ``block``).  Returns (image as ``dtype``,
    photons drawn, photons on exposed pixels)."""
    from jax import lax

    if not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"source_events_image: block must be a positive integer (photons "
                         f"placed per loop iteration), got {block!r}")
    good = jnp.asarray(good)
    h, w = good.shape
    n_pix = h * w
    good_flat = good.ravel()
    quantiles = psf_radius_quantiles(psf, psf_radius_arcsec)
    n_grid = len(quantiles) - 1
    table = jnp.asarray(quantiles, jnp.float64)
    k_n, k_r, k_a = jax.random.split(key, 3)
    eef_max = float((psf or ns.DEFAULT_PSF).encircled_fraction(psf_radius_arcsec))
    n_photons = jax.random.poisson(k_n, jnp.where(cat.valid, cat.counts * eef_max, 0.0),
                                   dtype=jnp.int32)
    cum = jnp.cumsum(n_photons)
    n_total = cum[-1]
    lane = jnp.arange(block, dtype=jnp.int32)

    def place(state):
        j, image, n_kept = state
        slot = j * block + lane
        # the source of photon `slot`: #{sources whose cumulative count <= slot}, as a
        # histogram of the cumulative counts over this block, prefix-summed (the sources
        # ending before the block count for every lane; searchsorted is a gather loop)
        ends = jnp.zeros(block + 1, jnp.int32).at[jnp.clip(cum - j * block, 0, block)].add(1)
        src = jnp.minimum(jnp.cumsum(ends[:block]), cum.size - 1)
        # radius by linear interpolation of the inverse truncated EEF on its regular u grid
        pos = jax.random.uniform(jax.random.fold_in(k_r, j), (block,), jnp.float64) * n_grid
        i = jnp.minimum(jnp.floor(pos).astype(jnp.int32), n_grid - 1)
        radius = (table[i] + (pos - i) * (table[i + 1] - table[i])) / pixel_scale_arcsec
        angle = jax.random.uniform(jax.random.fold_in(k_a, j), (block,), jnp.float64,
                                   maxval=2.0 * math.pi)
        px = jnp.floor(cat.x[src] + radius * jnp.cos(angle) + 0.5).astype(jnp.int32)
        py = jnp.floor(cat.y[src] + radius * jnp.sin(angle) + 0.5).astype(jnp.int32)
        inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        # the photon's pixel (n_pix: off the image or beyond the last photon) is written
        # once: XLA:CPU would otherwise fuse the positions (sin, cos, interpolation) into
        # each of the three consumers below
        flat = xla_cpu.materialised(jnp.where(inside & (slot < n_total),
                                              jnp.clip(py, 0, h - 1) * w + jnp.clip(px, 0, w - 1),
                                              n_pix))
        target = jnp.where(good_flat[jnp.minimum(flat, n_pix - 1)], flat, n_pix)
        image = image.at[target].add(jnp.ones((), dtype), mode="drop")
        return j + 1, image, n_kept + xla_cpu.count_true(target < n_pix)

    init = (jnp.asarray(0, jnp.int32), jnp.zeros(n_pix, dtype),
            jnp.asarray(0, jnp.int32))
    _, image, n_kept = lax.while_loop(lambda st: st[0] * block < n_total, place, init)
    return image.reshape(h, w), n_total, n_kept


def simulate_sky_events(key, exposure, background, pixel_scale_arcsec: float,
                        band: str = "3-24", lognlogs: LogNLogS = TREISTER09_APPROX, psf=None,
                        max_sources: int = 256, match_total_counts=None,
                        psf_radius_arcsec: float = 150.0, filler=None,
                        poisson_split_mean: float | None = None,
                        event_block: int = SOURCE_EVENT_BLOCK, max_bright: int = 4096,
                        finish_poisson_tail: bool = True, poisson_unroll: int | None = None,
                        dtype=jnp.float64, uniform_bits: int = 64):
    r"""One mock sky with the sources drawn photon by photon: ``(counts image,
    SkyCatalogue)``; the mock sky of
    :func:`~bkgjax.missions.nustar_survey.driver.simulate_and_detect`.

    Same recipe as :func:`simulate_sky` (module docstring) with two differences:

    * the source counts are Poisson photons placed with the PSF
      (:func:`source_events_image`) instead of a Poisson draw of the PSF-convolved image: the
      same distribution up to the PSF sampling (integrated over pixels here, sampled at
      pixel centres there), and no FFT;
    * ``match_total_counts`` uses the *drawn* source photons on exposed pixels (where
      :func:`simulate_sky` uses their expectation): the filler is rescaled by
      :math:`\max(C_\mathrm{target} - n_\mathrm{src} - \sum(B - F), 0) / \sum F`, so that the
      expected total is the target given the sources, as in the paper (sec. 3.1).

    The background part is drawn by :func:`poisson_image` (``finish_poisson_tail`` and
    ``poisson_unroll`` are its ``finish_tail`` and ``n_unroll``; ``uniform_bits`` is its own).
    ``SkyCatalogue.n_source_events`` holds the photons drawn (``event_block`` at a time),
    ``n_bright_pixels`` the background pixels above the split (must be <= ``max_bright``)
    and ``n_unfinished_pixels`` the draws left unfinished (must be 0).  The counts image is
    ``dtype`` (float64; ``jnp.int32`` in the simulation driver, half the memory traffic)."""
    exposure = jnp.asarray(exposure, dtype=jnp.float64)
    background = jnp.asarray(background, dtype=jnp.float64)
    good = exposure > 0
    k_cat, k_src, k_bkg = jax.random.split(key, 3)
    cat = draw_catalogue(k_cat, exposure, pixel_scale_arcsec, band, lognlogs, max_sources)
    src, n_events, n_src_good = source_events_image(k_src, cat, good, pixel_scale_arcsec, psf,
                                                    psf_radius_arcsec, event_block, dtype)
    bkg = jnp.where(good, background, 0.0)
    if match_total_counts is not None:
        bkg = rescaled_background(bkg, good, jnp.asarray(match_total_counts, jnp.float64)
                                  - n_src_good, filler)
    counts, n_bright, n_unfinished = poisson_image(
        k_bkg, bkg, POISSON_SPLIT_MEAN if poisson_split_mean is None else poisson_split_mean,
        max_bright, finish_poisson_tail, poisson_unroll, dtype, uniform_bits)
    counts = jnp.where(good, counts + src, jnp.zeros((), dtype))
    return counts, cat._replace(n_bright_pixels=n_bright, n_source_events=n_events,
                                n_unfinished_pixels=n_unfinished)
