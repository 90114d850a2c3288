r"""Calibration products of the NuSTAR survey simulations (Zhao et al. 2021,
``nustar_nep_survey_detection.txt``, sections 3.3 and 4.1): reliability versus DET_ML,
DET_ML thresholds with uncertainties (a Table-2-like table), completeness versus flux, sky
coverage, flux limits and the logN-logS with its variance (eqs. 2-3).

Pure NumPy/SciPy post-processing of the :class:`~bkgjax.missions.nustar_survey.driver.SimResults`
arrays (or of any detection list).

Definitions (paper section refs):

* **Reliability** (sec. 3.3): "the ratio of the number of the detected sources matched to input
  sources to the total number of detected sources at or above a particular DET_ML", i.e. the
  *cumulative* :math:`R(t) = N_\mathrm{matched}(\ge t)/N(\ge t) = 1 -` spurious fraction,
  per exposure interval (20-200, 200-500, > 500 ks; exposure at the detection position,
  interval ``lo <= E < hi``).  68 % interval: equal-tailed Beta posterior with the Jeffreys
  prior, :math:`\mathrm{Beta}(k + 1/2, n - k + 1/2)` (0.16 and 0.84 quantiles; bound set to
  0 at k = 0 and to 1 at k = n, :func:`beta_interval`).
* **Threshold** at a reliability level (sec. 3.3, Table 2): the smallest DET_ML above which the
  point estimate of :math:`R` stays :math:`\ge` level at every higher grid threshold; linear
  interpolation between the last grid point below the level and the next one.  Cumulative
  bins with fewer than :math:`1/(1-\mathrm{level})` detections (the sparse bright tail) are
  not tested.  Uncertainty: by default the same rule applied to the upper and lower 68 %
  Jeffreys bound curves; optionally percentiles over posterior draws of the curve
  (:func:`reliability_threshold`).
* **Completeness** (sec. 3.3): fraction of the input sources in a flux bin that are matched by
  a detection with DET_ML above the chosen reliability threshold; Jeffreys 68 % intervals.
  SimResults records, per detection, the matched input *flux* but not the input index, so
  :func:`detected_inputs` identifies the matched input source by its flux (fluxes are drawn
  from a continuous distribution: equal values within one simulation are the same source).
  :func:`detected_inputs_from_positions` does the same from positions with the 30" nearest-
  source rule of :func:`~bkgjax.missions.nustar_survey.fixed_detection.match_catalogue`.
* **Sky coverage** (sec. 3.3, Fig. 5): the paper defines it as completeness times the covered
  area (summed over the exposure intervals), i.e. the detection-probability weighted area
  :math:`\Omega(S) = \sum_\mathrm{pix} A_\mathrm{pix}\,P_\mathrm{det}(S, \mathrm{pix})`
  (``method="probability"``, the default).  Here :math:`P_\mathrm{det}` is analytic: a
  source of (band, total) flux :math:`S` centred on the pixel gives
  :math:`s = S/CF \times E \times \mathrm{EEF}(20'')` expected counts in the 20" aperture, the
  background in the aperture is the 20" top-hat sum :math:`b` of the background map, and
  DET_ML :math:`= -\ln P(N \ge n | b) \ge t` holds for :math:`n \ge n_\mathrm{min}(b, t)`, so
  :math:`P_\mathrm{det} = P(\mathrm{Poisson}(s + b) \ge n_\mathrm{min})`.  (For
  :math:`t \ge 2.5\ln 10 = 5.76` this implies the candidate limit
  :math:`P_\mathrm{false} \le 10^{-2.5}`; source confusion, deblending and positional
  offsets are ignored.)  ``method="half"``: area where :math:`P_\mathrm{det} \ge 0.5`.
  The threshold is a number or a threshold table (per-pixel by exposure interval; pixels
  outside every interval do not count, like the paper's 20 ks cut).
* **Flux limits** (sec. 3.3): fluxes where the coverage reaches 20 % and 50 % of the maximum
  (total) area, log-log interpolation.
* **logN-logS** (sec. 4.1, eqs. 2-3): :math:`N(>S) = \sum_{S_i \ge S} 1/\Omega_i` deg^-2 and
  :math:`\sigma^2 = \sum_{S_i \ge S} 1/\Omega_i^2`, :math:`\Omega_i = \Omega(S_i)`; sources with
  :math:`\Omega_i = 0` are dropped.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special, stats

from bkgjax.missions.nustar_survey import instrument as ns

__all__ = [
    "beta_interval",
    "ReliabilityCurve",
    "reliability_curve",
    "reliability_threshold",
    "threshold_table",
    "compare_to_paper",
    "detected_inputs",
    "detected_inputs_from_positions",
    "CompletenessCurve",
    "completeness_curve",
    "min_detect_counts",
    "SkyCoverage",
    "sky_coverage",
    "flux_limit_at_coverage",
    "lognlogs_from_catalogue",
]

DEFAULT_INTERVALS_KS = ((20.0, 200.0), (200.0, 500.0), (500.0, math.inf))
_Q_LO, _Q_HI = 0.15865525393145707, 0.8413447460685429  # 68.27 % equal-tailed


def beta_interval(k, n, cl: float = 0.6826894921370859):
    """Equal-tailed ``cl`` interval of the Jeffreys posterior Beta(k + 1/2, n - k + 1/2);
    NaN where n == 0.  As usual for the Jeffreys interval (Brown, Cai & DasGupta 2001) the
    lower bound is set to 0 when k = 0 and the upper bound to 1 when k = n, so that the
    interval always contains k/n."""
    k = np.asarray(k, float)
    n = np.asarray(n, float)
    a, b = k + 0.5, np.maximum(n - k, 0.0) + 0.5
    q = 0.5 * (1.0 - cl)
    lo = np.where(n > 0, np.where(k <= 0, 0.0, stats.beta.ppf(q, a, b)), np.nan)
    hi = np.where(n > 0, np.where(k >= n, 1.0, stats.beta.ppf(1.0 - q, a, b)), np.nan)
    return lo, hi


# ----------------------------------------------------------------------------- reliability
class ReliabilityCurve(NamedTuple):
    """Cumulative reliability at each ``det_ml`` grid threshold: counts of detections (and of
    matched ones) with DET_ML >= threshold, ``reliability`` = n_matched / n_total (NaN where
    n_total = 0), Jeffreys 68 % ``lo``, ``hi``."""

    det_ml: np.ndarray
    n_total: np.ndarray
    n_matched: np.ndarray
    reliability: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def in_interval(x, interval):
    lo, hi = interval
    hi = math.inf if hi is None or not np.isfinite(hi) else float(hi)
    return (x >= float(lo)) & (x < hi)


def reliability_curve(det_ml, matched, exposure_ks, det_ml_grid, exposure_interval=(0.0,
                      math.inf), valid=None) -> ReliabilityCurve:
    """Reliability versus DET_ML threshold (module docstring) among the ``valid`` detections
    (all if None) with exposure (ks) in ``exposure_interval`` (``lo <= E < hi``).  Arrays of
    any shape (e.g. SimResults' (n_sims, max_candidates)); ``det_ml_grid`` increasing."""
    det_ml = np.ravel(np.asarray(det_ml, float))
    matched = np.ravel(np.asarray(matched, bool))
    expo = np.ravel(np.asarray(exposure_ks, float))
    sel = in_interval(expo, exposure_interval)
    if valid is not None:
        sel &= np.ravel(np.asarray(valid, bool))
    grid = np.asarray(det_ml_grid, float)
    if grid.ndim != 1 or np.any(np.diff(grid) <= 0):
        raise ValueError("det_ml_grid must be 1-D and strictly increasing")
    d = np.sort(det_ml[sel])
    dm = np.sort(det_ml[sel & matched])
    n_tot = d.size - np.searchsorted(d, grid, side="left")
    n_m = dm.size - np.searchsorted(dm, grid, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(n_tot > 0, n_m / np.maximum(n_tot, 1), np.nan)
    lo, hi = beta_interval(n_m, n_tot)
    return ReliabilityCurve(grid, n_tot, n_m, r, lo, hi)


def _threshold_from_curves(grid, r, level, ignore=None):
    """Threshold rule on curves r (..., n_grid); NaN reliabilities (empty) and ``ignore``d
    grid points (too few detections) count as passing.  Returns (..., ) thresholds, +inf
    where the level is not reached at the top."""
    ok = np.isnan(r) | (r >= level)
    if ignore is not None:
        ok = ok | ignore
    suffix = np.flip(np.logical_and.accumulate(np.flip(ok, -1), axis=-1), -1)
    has = suffix.any(-1)
    i = np.argmax(suffix, axis=-1)
    im1 = np.maximum(i - 1, 0)
    r_i = np.take_along_axis(r, i[..., None], -1)[..., 0]
    r_m = np.take_along_axis(r, im1[..., None], -1)[..., 0]
    g_i, g_m = grid[i], grid[im1]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.clip((level - r_m) / (r_i - r_m), 0.0, 1.0)
    usable = np.isfinite(r_i) & (r_i >= level)
    interp = np.where(usable, g_m + frac * (g_i - g_m), g_i)
    out = np.where(i == 0, grid[0], interp)
    return np.where(has, out, np.inf)


def reliability_threshold(curve: ReliabilityCurve, level: float = 0.95, *,
                          method: str = "bounds", min_count=None, n_draws: int = 2000,
                          seed: int = 0):
    """DET_ML threshold at reliability ``level`` and its 68 % interval (module docstring).

    Rule: the smallest DET_ML above which the point-estimate reliability stays >= ``level``
    at all higher grid points, linear interpolation at the crossing.  Grid points whose
    cumulative bin holds fewer than ``min_count`` detections are not tested (default
    ``ceil(1/(1 - level))``: such a sparse tail - expected spurious count < 1 - cannot resolve
    a spurious fraction of 1 - level, and a single spurious detection among the few brightest
    would otherwise move the threshold to the top of the grid); ``min_count=0``: strict rule.

    Uncertainty (``method``):

    * ``"bounds"`` (default): the same rule applied to the upper and the lower 68 % Jeffreys
      bound curves (``curve.hi`` gives the low end, ``curve.lo`` the high end).  Always
      brackets the value; pointwise, not a simultaneous band.
    * ``"draws"``: 16th/84th percentiles over ``n_draws`` posterior curves (independent
      Jeffreys Beta draws of the matched fraction in the differential bins, recombined into
      cumulative curves; seeded by ``seed``).  The Jeffreys posterior of all-matched bins lies
      below 1, so this interval can sit above the point value in sparse simulations.

    Returns ``(value, lo, hi)``; all NaN when there are fewer than ``min_count`` detections
    at all; +inf (lo/hi) or NaN (value) when the level is not reached at the top of the grid
    (extend the grid); when the curve passes already at the first grid
    point, that grid point is returned (extend the grid downwards).
    """
    grid = np.asarray(curve.det_ml, float)
    n_tot = np.asarray(curve.n_total, float)
    if n_tot.size == 0 or n_tot[0] == 0:
        return math.nan, math.nan, math.nan
    if min_count is None:
        min_count = math.ceil(1.0 / (1.0 - level) - 1e-9)
    ignore = n_tot < float(min_count)
    if ignore[0]:  # too few detections to test any grid point
        return math.nan, math.nan, math.nan
    value = float(_threshold_from_curves(grid, np.asarray(curve.reliability, float), level,
                                         ignore))
    if not np.isfinite(value):
        value = math.nan
    if method == "bounds":
        lo = float(_threshold_from_curves(grid, np.asarray(curve.hi, float), level, ignore))
        hi = float(_threshold_from_curves(grid, np.asarray(curve.lo, float), level, ignore))
        return value, lo, hi
    if method != "draws":
        raise ValueError("method must be 'bounds' or 'draws'")
    n_m = np.asarray(curve.n_matched, float)
    dn = n_tot - np.append(n_tot[1:], 0.0)      # differential bins [t_j, t_{j+1})
    dk = n_m - np.append(n_m[1:], 0.0)
    rng = np.random.default_rng(seed)
    p = rng.beta(dk + 0.5, np.maximum(dn - dk, 0.0) + 0.5, size=(int(n_draws), grid.size))
    cum_m = np.flip(np.cumsum(np.flip(dn * p, -1), -1), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(n_tot > 0, cum_m / np.maximum(n_tot, 1.0), np.nan)
    draws = _threshold_from_curves(grid, r, level, ignore)
    with np.errstate(invalid="ignore"):
        lo, hi = np.percentile(draws, [100 * _Q_LO, 100 * _Q_HI])  # inf sorts last
    return value, float(lo), float(hi)


def threshold_table(results, intervals=DEFAULT_INTERVALS_KS, levels=(0.95, 0.99),
                    band: str = "3-24", *, det_ml_grid=None, method: str = "bounds",
                    min_count=None, n_draws: int = 2000, seed: int = 0,
                    compare: bool = True):
    """Table-2-like DET_ML thresholds from SimResults (``det_ml``, ``det_valid``, ``matched``,
    ``det_exposure`` in s).

    Columns ``band, exp_min_ks, exp_max_ks``, then per level L (in per cent)
    ``det_ml_L, det_ml_L_lo, det_ml_L_hi`` (readable by
    :func:`~bkgjax.missions.nustar_survey.detection.detect`), ``n_det`` and ``n_matched`` (valid
    detections in the interval) and, with ``compare``, the paper's values and ratios
    (:func:`compare_to_paper`).  Default grid: 0 to 40 in steps of 0.05.
    """
    from astropy.table import Table

    grid = np.arange(0.0, 40.0001, 0.05) if det_ml_grid is None else np.asarray(det_ml_grid)
    band = ns.band_info(band).name
    expo_ks = np.asarray(results.det_exposure, float) / 1e3
    cols = {"band": [], "exp_min_ks": [], "exp_max_ks": []}
    for lev in levels:
        tag = f"det_ml_{int(round(100 * lev))}"
        for suf in ("", "_lo", "_hi"):
            cols[tag + suf] = []
    cols["n_det"], cols["n_matched"] = [], []
    for lo_ks, hi_ks in intervals:
        curve = reliability_curve(results.det_ml, results.matched, expo_ks, grid,
                                  (lo_ks, hi_ks), valid=results.det_valid)
        cols["band"].append(band)
        cols["exp_min_ks"].append(float(lo_ks))
        cols["exp_max_ks"].append(math.inf if hi_ks is None else float(hi_ks))
        for lev in levels:
            tag = f"det_ml_{int(round(100 * lev))}"
            v, a, b = reliability_threshold(curve, lev, method=method, min_count=min_count,
                                            n_draws=n_draws, seed=seed)
            cols[tag].append(v)
            cols[tag + "_lo"].append(a)
            cols[tag + "_hi"].append(b)
        in_int = in_interval(expo_ks, (lo_ks, hi_ks)) & np.asarray(results.det_valid, bool)
        cols["n_det"].append(int(np.sum(in_int)))
        cols["n_matched"].append(int(np.sum(in_int & np.asarray(results.matched, bool))))
    table = Table(cols)
    table.meta["threshold_interval"] = f"68% ({method}, Jeffreys posterior)"
    return compare_to_paper(table) if compare else table


def compare_to_paper(table, reference=None):
    """Add ``paper_det_ml_L`` and ``ratio_L`` (= ours / paper) columns for every
    ``det_ml_L`` (L = 95, 99) column, matching rows by band and exposure interval
    (reference: :func:`~bkgjax.missions.nustar_survey.instrument.paper_thresholds`; NaN if absent)."""
    ref = ns.paper_thresholds() if reference is None else reference
    out = table.copy()
    for L in (95, 99):
        col = f"det_ml_{L}"
        if col not in out.colnames or col not in ref.colnames:
            continue
        vals = []
        for row in out:
            hit = [r[col] for r in ref
                   if str(r["band"]).strip() == str(row["band"]).strip()
                   and np.isclose(r["exp_min_ks"], row["exp_min_ks"])
                   and (np.isclose(r["exp_max_ks"], row["exp_max_ks"])
                        or (np.isinf(r["exp_max_ks"]) and np.isinf(row["exp_max_ks"])))]
            vals.append(float(hit[0]) if hit else math.nan)
        out[f"paper_{col}"] = vals
        out[f"ratio_{L}"] = np.asarray(out[col], float) / np.asarray(vals)
    return out


# ---------------------------------------------------------------------------- completeness
def threshold_per_detection(det_ml_threshold, det_exposure_s, band, level):
    if np.isscalar(det_ml_threshold):
        return np.full(np.shape(det_exposure_s), float(det_ml_threshold))
    from bkgjax.missions.nustar_survey.detection import (
        threshold_lookup as threshold_lookup,
    )

    e = np.asarray(det_exposure_s, float)
    out = threshold_lookup(det_ml_threshold, ns.band_info(band).name, e.ravel() / 1e3,
                            int(round(100 * level)))
    return out.reshape(e.shape)  # NaN outside every interval: never passes


def detected_inputs(results, det_ml_threshold, *, band: str = "3-24", level: float = 0.95):
    """Per-input-source detected flags (n_sims, max_sources) from SimResults: a valid input
    source is detected if a valid, matched detection with DET_ML >= threshold carries its
    flux (``matched_flux == src_flux`` in the same simulation; see module docstring).
    ``det_ml_threshold``: a number or a threshold table (looked up per detection by its
    exposure, column ``det_ml_<level>``)."""
    thr = threshold_per_detection(det_ml_threshold, results.det_exposure, band, level)
    ok = (np.asarray(results.det_valid, bool) & np.asarray(results.matched, bool)
          & (np.asarray(results.det_ml, float) >= thr))
    mf = np.where(ok, np.asarray(results.matched_flux, float), np.nan)
    sf = np.asarray(results.src_flux, float)
    hit = np.any(sf[:, :, None] == mf[:, None, :], axis=-1)
    return hit & np.asarray(results.src_valid, bool)


def detected_inputs_from_positions(det_xy, det_ok, src_xy, src_valid, radius_pix: float):
    """Same from positions for one simulation: each ``det_ok`` detection is matched to the
    nearest valid input source within ``radius_pix`` (as ``match_catalogue``); returns the
    (n_src,) flags of matched input sources."""
    det_xy = np.asarray(det_xy, float).reshape(-1, 2)
    src_xy = np.asarray(src_xy, float).reshape(-1, 2)
    src_valid = np.asarray(src_valid, bool)
    out = np.zeros(src_xy.shape[0], bool)
    if det_xy.shape[0] == 0 or src_xy.shape[0] == 0:
        return out
    d2 = np.sum((det_xy[:, None, :] - src_xy[None, :, :]) ** 2, axis=-1)
    d2 = np.where(src_valid[None, :], d2, np.inf)
    j = np.argmin(d2, axis=1)
    best = d2[np.arange(d2.shape[0]), j]
    good = np.asarray(det_ok, bool) & (best <= radius_pix**2)
    out[j[good]] = True
    return out


class CompletenessCurve(NamedTuple):
    """Completeness in flux bins [flux_lo, flux_hi) (``flux`` = geometric centre)."""

    flux_lo: np.ndarray
    flux_hi: np.ndarray
    flux: np.ndarray
    n_input: np.ndarray
    n_detected: np.ndarray
    completeness: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def completeness_curve(input_flux, input_valid, detected_flags, flux_grid) -> CompletenessCurve:
    """Fraction of valid input sources detected per flux bin (``flux_grid`` = bin edges),
    Jeffreys 68 % intervals; NaN in empty bins.  Restrict to an exposure interval by passing
    ``input_valid & (src_exposure in interval)``."""
    f = np.ravel(np.asarray(input_flux, float))
    v = np.ravel(np.asarray(input_valid, bool))
    d = np.ravel(np.asarray(detected_flags, bool)) & v
    edges = np.asarray(flux_grid, float)
    n_in = np.histogram(f[v], edges)[0]
    n_det = np.histogram(f[d], edges)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(n_in > 0, n_det / np.maximum(n_in, 1), np.nan)
    lo, hi = beta_interval(n_det, n_in)
    return CompletenessCurve(edges[:-1], edges[1:], np.sqrt(edges[:-1] * edges[1:]), n_in,
                             n_det, c, lo, hi)


# ---------------------------------------------------------------------------- sky coverage
def min_detect_counts(background, det_ml_threshold):
    """Smallest integer aperture count n with DET_ML = -ln P(N >= n | b) >= threshold
    (vectorised over ``background`` and ``det_ml_threshold``; P(n, b) = gammainc(n, b))."""
    b = np.asarray(background, float)
    t = np.broadcast_to(np.asarray(det_ml_threshold, float), b.shape)

    def passes(n):
        with np.errstate(divide="ignore"):
            return -np.log(special.gammainc(np.maximum(n, 1e-300), b)) >= t

    hi = np.ceil(b + t + 10.0 * np.sqrt(b + t) + 10.0)
    while not np.all(passes(hi) | ~np.isfinite(t)):
        hi = np.where(passes(hi), hi, 2.0 * hi)
    lo = np.zeros_like(hi)  # passes(0) is False (P = 1, DET_ML = 0 < t for t > 0)
    while np.any(hi - lo > 1):
        mid = np.floor(0.5 * (lo + hi))
        p = passes(mid)
        hi = np.where(p, mid, hi)
        lo = np.where(p, lo, mid)
    return np.where(np.isfinite(t), hi, np.inf)


class SkyCoverage(NamedTuple):
    """Coverage ``area_deg2`` at each ``flux`` and the maximum ``total_area_deg2``."""

    flux: np.ndarray
    area_deg2: np.ndarray
    total_area_deg2: float


def sky_coverage(exposure_map, background_map, pixel_area_deg2: float, flux_grid,
                 det_ml_threshold, band: str = "3-24", *, level: float = 0.95, psf=None,
                 aperture_arcsec: float = ns.APERTURE_RADIUS_ARCSEC,
                 method: str = "probability") -> SkyCoverage:
    """Analytic sky coverage (module docstring) for band (total) fluxes ``flux_grid``.

    ``exposure_map`` in s, ``background_map`` in counts per pixel (the detection background),
    ``det_ml_threshold`` a number or a threshold table (``det_ml_<level>`` per pixel exposure
    interval).  ``method``: "probability" (paper: completeness x area) or "half"
    (P_det >= 0.5)."""
    from bkgjax.missions.nustar_survey.detection import tophat_sum

    if method not in ("probability", "half"):
        raise ValueError("method must be 'probability' or 'half'")
    expo = np.asarray(exposure_map, float)
    scale = math.sqrt(pixel_area_deg2) * 3600.0
    b_ap = np.asarray(tophat_sum(np.where(expo > 0, background_map, 0.0),
                                 aperture_arcsec / scale, expo), float)
    thr = threshold_per_detection(det_ml_threshold, expo, band, level)
    use = (expo > 0) & np.isfinite(thr)
    e, b, t = expo[use], np.maximum(b_ap[use], 1e-12), thr[use]
    n_min = min_detect_counts(b, t)
    eef = float(ns.encircled_fraction(aperture_arcsec, psf))
    cf = ns.band_info(band).cf
    flux = np.asarray(flux_grid, float)
    area = np.empty(flux.shape)
    for i, s in enumerate(flux.ravel()):
        mu = s / cf * e * eef + b
        pdet = stats.poisson.sf(n_min - 1, mu)
        area.flat[i] = (np.count_nonzero(pdet >= 0.5) if method == "half"
                        else np.sum(pdet)) * pixel_area_deg2
    return SkyCoverage(flux, area, float(np.count_nonzero(use) * pixel_area_deg2))


def flux_limit_at_coverage(coverage: SkyCoverage, fraction: float = 0.5) -> float:
    """Smallest flux where the coverage reaches ``fraction`` of the total area (log-log
    interpolation on the grid; NaN if never reached, the first grid flux if reached there)."""
    f = np.asarray(coverage.flux, float)
    a = np.asarray(coverage.area_deg2, float) / coverage.total_area_deg2
    idx = np.nonzero(a >= fraction)[0]
    if idx.size == 0:
        return math.nan
    i = int(idx[0])
    if i == 0:
        return float(f[0])
    a0, a1 = a[i - 1], a[i]
    if a0 <= 0:
        return float(f[i - 1] + (fraction - a0) / (a1 - a0) * (f[i] - f[i - 1]))
    x = (math.log(fraction) - math.log(a0)) / (math.log(a1) - math.log(a0))
    return float(math.exp(math.log(f[i - 1]) + x * (math.log(f[i]) - math.log(f[i - 1]))))


# ------------------------------------------------------------------------------- logN-logS
def lognlogs_from_catalogue(fluxes, coverage_fn, flux_grid=None):
    """Eqs. (2)-(3): ``N(>S) = sum_{S_i >= S} 1/Omega_i`` (deg^-2) and ``sigma(S)`` with
    ``sigma^2 = sum 1/Omega_i^2``.  ``coverage_fn``: callable flux -> area (deg^2) or a
    :class:`SkyCoverage` (log-flux interpolation).  ``flux_grid`` defaults to the sorted
    source fluxes.  Returns ``(S, N, sigma)``."""
    s = np.asarray(fluxes, float).ravel()
    if isinstance(coverage_fn, SkyCoverage):
        cov = coverage_fn

        def coverage_fn(x):  # noqa: F811
            return np.interp(np.log(x), np.log(cov.flux), cov.area_deg2, left=0.0,
                             right=cov.area_deg2[-1])
    omega = np.asarray(coverage_fn(s), float) * np.ones_like(s)
    keep = omega > 0
    s, omega = s[keep], omega[keep]
    order = np.argsort(s)
    s, omega = s[order], omega[order]
    grid = s if flux_grid is None else np.asarray(flux_grid, float)
    w = np.concatenate([np.cumsum((1.0 / omega)[::-1])[::-1], [0.0]])
    w2 = np.concatenate([np.cumsum((1.0 / omega**2)[::-1])[::-1], [0.0]])
    i = np.searchsorted(s, grid, side="left")
    return grid, w[i], np.sqrt(w2[i])
