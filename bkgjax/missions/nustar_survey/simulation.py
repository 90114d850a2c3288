r"""``bkgjax simulate-survey``: the calibration of a NuSTAR deep survey by simulations
(Zhao et al. 2021, ``nustar_nep_survey_detection.txt``, sections 3.1-3.4 and 4.1).

A TOML configuration describes the field (pointings, or the user's exposure and background
mosaics), the background and the simulation settings; :func:`run_survey_simulation` runs, per
band, ``n_sims`` mock skies + detection + matching
(:func:`~bkgjax.missions.nustar_survey.driver.simulate_and_detect`) and derives:

* the Table-2-like DET_ML thresholds at 95 and 99 % reliability per exposure interval, with
  68 % intervals, compared with the paper (``thresholds.ecsv``, readable by ``bkgjax detect
  --thresholds``);
* reliability versus DET_ML (Fig. 4 left), completeness versus flux at the 95 % threshold
  (Fig. 4 right), sky coverage (Fig. 5) from the simulations (completeness x area summed over
  the exposure intervals, as in the paper) and analytically
  (:func:`~bkgjax.missions.nustar_survey.calibration.sky_coverage`), flux limits at 20 and 50 %
  coverage;
* Rayleigh fits of the input-output separations (Fig. 7; all matched, above the 95 %
  threshold, bright and faint), measured versus input flux (Eddington bias, Fig. 8);
* the logN-logS (eqs. 2-3) recovered from the simulated catalogues against the input one
  (Fig. 10), above the 50 %-coverage flux, with the paper's coverage (completeness versus
  input flux) and with a coverage versus measured flux calibrated on the first half of the
  simulations and applied to the second (:func:`measured_flux_coverage`), which also corrects
  the Eddington bias;
* a check that the reliability curve predicts the number of spurious detections: the
  differential matched fraction in DET_ML bins calibrated on the first half of the
  simulations, spurious counts measured on the second half, log-log slope of measured versus
  predicted (:func:`spurious_prediction`);
* the raw per-simulation arrays (``simulations_<band>.npz``, the fields of
  :class:`~bkgjax.missions.nustar_survey.driver.SimResults`) for further analysis.

Configuration (all keys optional except where noted; the shipped ``nep_like.toml`` is the
default, see :func:`default_config_path`)::

    [field]
    name = "NEP-like"
    pointings = "NEP"            # or [[field.pointing]] tables: obsid, ra, dec, exposure_ks,
                                 # epoch, roll_deg
    pixel_scale_arcsec = 2.46
    size_arcmin = 26.0           # square mosaic around center_ra/center_dec (default: mean)
    min_exposure_ks = 20.0       # the paper's 20 ks cut
    modules = 2                  # FPMA + FPMB summed
    # or user mosaics (FITS, the same grid): exposure = "E.fits", and per band
    # background = { "3-24" = "B.fits", ... }

    [background]                 # counts s^-1 arcmin^-2 per module, per band
    rate = { "3-24" = 5.0e-4, ... }
    fcxb_fraction = 0.08         # focused-CXB part (vignetted), rescaled to match the total

    [simulation]
    bands = ["3-24", "3-8", "8-24", "8-16", "16-24"]
    n_sims = 1200
    seed = 20211
    max_candidates = 128
    # batch_size = 4             # simulations per vmapped batch; batches_per_chunk = 2:
    #                            # default: 4 x 16 on a CPU (4 x 2 below 512), one memory-sized batch on a GPU
    processes = 1                # worker processes on a CPU host (one per core)

    [calibration]
    exposure_intervals_ks = [[20, 200], [200, 500], [500, inf]]
    reliability_levels = [0.95, 0.99]
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from bkgjax.missions.nustar_survey import calibration as sc
from bkgjax.missions.nustar_survey import instrument as ns

__all__ = [
    "SurveyConfigError",
    "SurveySimConfig",
    "default_config_path",
    "read_survey_config",
    "SurveyField",
    "build_field",
    "rayleigh_fit",
    "measured_fluxes",
    "spurious_prediction",
    "york_slope",
    "measured_flux_coverage",
    "recovered_lognlogs",
    "run_survey_simulation",
]


class SurveyConfigError(ValueError):
    """A problem in a simulate-survey configuration (the message names the key)."""


@dataclass(frozen=True)
class SurveySimConfig:
    """Parsed simulate-survey configuration (module docstring); ``source`` is the file.

    Of the ``[simulation]`` keys, ``batch_size``, ``batches_per_chunk`` and ``processes`` are
    execution settings (:class:`~bkgjax.missions.nustar_survey.driver.SimExecution`: speed
    only); ``bands``, ``n_sims``, ``seed`` and ``max_candidates`` choose the simulations
    (:class:`~bkgjax.missions.nustar_survey.driver.SurveyPhysics`)."""

    name: str = "NEP-like"
    pointings: tuple = ns.NEP_POINTINGS
    pixel_scale_arcsec: float = 2.46
    size_arcmin: float = 26.0
    center_ra: float | None = None
    center_dec: float | None = None
    min_exposure_ks: float = 20.0
    modules: int = 2
    exposure_file: str | None = None
    background_files: dict = field(default_factory=dict)
    background_rate: dict = field(default_factory=dict)
    fcxb_fraction: float = 0.08
    bands: tuple = ("3-24", "3-8", "8-24", "8-16", "16-24")
    n_sims: int = 1200
    seed: int = 20211
    batch_size: int | None = None  # None: driver.default_batching
    batches_per_chunk: int | None = None
    max_candidates: int = 128
    processes: int = 1
    exposure_intervals_ks: tuple = sc.DEFAULT_INTERVALS_KS
    reliability_levels: tuple = (0.95, 0.99)
    source: str = "<defaults>"


def default_config_path() -> str:
    """The shipped NEP-like configuration (nine Table-1 pointings, ~680 ks, 0.14 deg^2)."""
    return str(resources.files("bkgjax.missions.nustar_survey") / "data" / "nep_like.toml")


def _get(table, key, kind, default, where):
    if key not in table:
        return default
    value = table[key]
    ok = {"float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "str": isinstance(value, str), "list": isinstance(value, list),
          "dict": isinstance(value, dict)}[kind]
    if not ok:
        raise SurveyConfigError(f"{where}: key {key!r} must be a {kind}, got {value!r}")
    return value


def read_survey_config(path) -> SurveySimConfig:
    """Read and validate a simulate-survey TOML file (module docstring); relative file names
    are resolved against the file's folder.  Errors name the file and the key."""
    import tomllib

    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise SurveyConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SurveyConfigError(f"{path}: not valid TOML ({exc})") from None
    base = os.path.dirname(os.path.abspath(path))
    known = {"field", "background", "simulation", "calibration"}
    unknown = set(doc) - known
    if unknown:
        raise SurveyConfigError(f"{path}: unknown section(s) {sorted(unknown)}; expected "
                                f"{sorted(known)}")
    fld = doc.get("field", {})
    bkg = doc.get("background", {})
    sim = doc.get("simulation", {})
    cal = doc.get("calibration", {})
    w = f"{path} [field]"
    pts = fld.get("pointings", "NEP")
    if pts == "NEP":
        pointings = ns.NEP_POINTINGS
    elif isinstance(pts, list) and pts and all(isinstance(p, dict) for p in pts):
        pointings = []
        for i, p in enumerate(pts):
            try:
                pointings.append(ns.Pointing(str(p.get("obsid", f"P{i + 1}")), float(p["ra"]),
                                             float(p["dec"]), float(p["exposure_ks"]),
                                             int(p.get("epoch", 1)),
                                             float(p.get("roll_deg", 0.0))))
            except KeyError as exc:
                raise SurveyConfigError(f"{w}: pointing {i + 1} lacks key {exc}") from None
            except ValueError as exc:
                raise SurveyConfigError(f"{w}: pointing {i + 1}: {exc}") from None
        pointings = tuple(pointings)
    else:
        raise SurveyConfigError(f"{w}: 'pointings' must be \"NEP\" or a list of tables with "
                                "ra, dec, exposure_ks")
    exposure_file = _get(fld, "exposure", "str", None, w)
    if exposure_file is not None:
        exposure_file = os.path.join(base, exposure_file)
    bfiles = {ns.band_info(k).name: os.path.join(base, v)
              for k, v in _get(fld, "background", "dict", {}, w).items()}
    bands = tuple(ns.band_info(b).name for b in _get(sim, "bands", "list",
                                                    list(SurveySimConfig.bands),
                                                    f"{path} [simulation]"))
    rates = {ns.band_info(k).name: float(v)
             for k, v in _get(bkg, "rate", "dict", {}, f"{path} [background]").items()}
    if exposure_file is None:
        missing = [b for b in bands if b not in rates and b not in bfiles]
        if missing:
            raise SurveyConfigError(f"{path} [background]: no 'rate' (counts/s/arcmin^2 per "
                                    f"module) or background file for band(s) {missing}")
    if any(not (r > 0) for r in rates.values()):
        raise SurveyConfigError(f"{path} [background]: rates must be > 0, got {rates}")
    if exposure_file is not None:
        missing = [b for b in bands if b not in bfiles]
        if missing:
            raise SurveyConfigError(f"{w}: with an exposure mosaic every band needs a "
                                    f"background mosaic; missing {missing}")
    fcxb = float(_get(bkg, "fcxb_fraction", "float", 0.08, f"{path} [background]"))
    if not 0.0 <= fcxb < 1.0:
        raise SurveyConfigError(f"{path} [background]: fcxb_fraction must be in [0, 1)")
    intervals = tuple((float(a), float(b)) for a, b in _get(
        cal, "exposure_intervals_ks", "list", [list(x) for x in sc.DEFAULT_INTERVALS_KS],
        f"{path} [calibration]"))
    levels = tuple(float(x) for x in _get(cal, "reliability_levels", "list", [0.95, 0.99],
                                          f"{path} [calibration]"))
    if any(not (0.5 < lv < 1.0) for lv in levels):
        raise SurveyConfigError(f"{path} [calibration]: reliability_levels must be in (0.5, 1)")
    ws = f"{path} [simulation]"
    cfg = SurveySimConfig(
        name=str(_get(fld, "name", "str", "survey", w)), pointings=pointings,
        pixel_scale_arcsec=float(_get(fld, "pixel_scale_arcsec", "float", 2.46, w)),
        size_arcmin=float(_get(fld, "size_arcmin", "float", 26.0, w)),
        center_ra=_get(fld, "center_ra", "float", None, w),
        center_dec=_get(fld, "center_dec", "float", None, w),
        min_exposure_ks=float(_get(fld, "min_exposure_ks", "float", 20.0, w)),
        modules=int(_get(fld, "modules", "int", 2, w)), exposure_file=exposure_file,
        background_files=bfiles, background_rate=rates, fcxb_fraction=fcxb, bands=bands,
        n_sims=int(_get(sim, "n_sims", "int", 1200, ws)),
        seed=int(_get(sim, "seed", "int", 20211, ws)),
        batch_size=_get(sim, "batch_size", "int", None, ws),
        batches_per_chunk=_get(sim, "batches_per_chunk", "int", None, ws),
        max_candidates=int(_get(sim, "max_candidates", "int", 128, ws)),
        processes=int(_get(sim, "processes", "int", 1, ws)),
        exposure_intervals_ks=intervals, reliability_levels=levels, source=path)
    unset_or_positive = all(v is None or v >= 1 for v in (cfg.batch_size,
                                                           cfg.batches_per_chunk))
    if (cfg.n_sims < 2 or not unset_or_positive or cfg.max_candidates < 1
            or cfg.processes < 1):
        raise SurveyConfigError(f"{ws}: n_sims >= 2, and batch_size, batches_per_chunk, "
                                "max_candidates and processes >= 1 are required")
    if cfg.pixel_scale_arcsec <= 0 or cfg.size_arcmin <= 0 or cfg.modules < 1:
        raise SurveyConfigError(f"{w}: pixel_scale_arcsec, size_arcmin and modules must be > 0")
    return cfg


@dataclass(frozen=True)
class SurveyField:
    """One band's simulation inputs: ``exposure`` (s, vignetted, 0 below the minimum
    exposure), ``background`` (counts per pixel, the detection background), ``fcxb`` (its
    focused-CXB part, the filler of sec. 3.1), the ``wcs`` and ``pixel_scale_arcsec``."""

    band: str
    exposure: np.ndarray
    background: np.ndarray
    fcxb: np.ndarray
    wcs: object
    pixel_scale_arcsec: float

    @property
    def pixel_area_deg2(self) -> float:
        return (self.pixel_scale_arcsec / 3600.0) ** 2

    @property
    def area_deg2(self) -> float:
        return float(np.count_nonzero(self.exposure > 0)) * self.pixel_area_deg2


def build_field(cfg: SurveySimConfig, band: str) -> SurveyField:
    r"""Exposure, background and fCXB maps of ``band``.

    From pointings: exposure = :func:`~bkgjax.missions.nustar_survey.instrument.exposure_maps`
    (vignetted at the band's mean energy, FPMA + FPMB); background counts per pixel
    :math:`= r\,A_\mathrm{pix}\,[(1 - f)\,T_\mathrm{flat} + f\,T_\mathrm{vig}]` with the rate
    :math:`r` (counts s^-1 arcmin^-2 per module, ``[background] rate``), the unvignetted
    on-time :math:`T_\mathrm{flat}` (stray light and instrumental background are not focused)
    and the focused-CXB fraction :math:`f` following the vignetted exposure.  From user
    mosaics: exposure and background read with :func:`bkgjax.missions.nustar_survey.images.read_survey_images`;
    the fCXB part is ``f`` x background.  Pixels below ``min_exposure_ks`` get exposure 0.
    """
    band = ns.band_info(band).name
    scale = cfg.pixel_scale_arcsec
    if cfg.exposure_file is not None:
        from bkgjax.missions.nustar_survey.images import read_survey_images

        img = read_survey_images(counts=cfg.background_files[band],
                                 background=cfg.background_files[band],
                                 exposure=cfg.exposure_file)
        expo = np.asarray(img.exposure, float)
        bkg = np.asarray(img.background, float)
        fcxb = cfg.fcxb_fraction * bkg
        wcs = img.wcs
        scale = float(img.pixel_scale_arcsec)
    else:
        ra = cfg.center_ra if cfg.center_ra is not None else float(
            np.mean([p.ra_deg for p in cfg.pointings]))
        dec = cfg.center_dec if cfg.center_dec is not None else float(
            np.mean([p.dec_deg for p in cfg.pointings]))
        wcs, shape = ns.survey_wcs(ra, dec, cfg.size_arcmin, scale)
        expo, flat = ns.exposure_maps(cfg.pointings, wcs, shape, band, cfg.modules)
        rate = cfg.background_rate[band] / cfg.modules  # maps sum the modules
        pix_arcmin2 = (scale / 60.0) ** 2
        fcxb = rate * pix_arcmin2 * cfg.fcxb_fraction * expo
        bkg = rate * pix_arcmin2 * (1.0 - cfg.fcxb_fraction) * flat + fcxb
    keep = expo >= cfg.min_exposure_ks * 1e3
    expo = np.where(keep, expo, 0.0)
    return SurveyField(band, expo, np.where(keep, bkg, 0.0), np.where(keep, fcxb, 0.0), wcs,
                       float(scale))


# ------------------------------------------------------------------------------ products
def rayleigh_fit(separation_arcsec):
    r"""Maximum-likelihood Rayleigh scale :math:`\hat\sigma = \sqrt{\sum r_i^2/(2n)}` and its
    1-sigma error :math:`\hat\sigma/\sqrt{4n}` (Fig. 7); NaN for no separations."""
    r = np.asarray(separation_arcsec, float).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan, 0
    sigma = math.sqrt(float(np.sum(r**2)) / (2 * r.size))
    return sigma, sigma / math.sqrt(4 * r.size), int(r.size)


def measured_fluxes(results, band: str):
    """Aperture-corrected band flux of every detection (erg cm^-2 s^-1): deblended net
    counts / exposure x CF / 0.32 (sec. 3.4)."""
    info = ns.band_info(band)
    expo = np.where(results.det_exposure > 0, results.det_exposure, np.inf)
    net = np.asarray(results.det_total_counts) - np.asarray(results.det_bkg_counts)
    return net / expo * info.cf / ns.APERTURE_CORRECTION


def spurious_prediction(results, intervals, band: str, det_ml_edges=None):
    r"""Calibrate the reliability on the first half of the simulations and predict the
    spurious detections of the second half, in independent DET_ML bins ``[t_k, t_k+1)`` (the
    last bin open): predicted :math:`P_k = (1 - r_{\mathrm{cal},k})\,N_{\mathrm{test},k}` with
    the differential matched fraction :math:`r_{\mathrm{cal},k}` of the first half, measured
    :math:`M_k` = the unmatched test detections.  Returns rows (exp_min_ks, exp_max_ks, t_k,
    predicted, measured) with predicted >= 1 and the log-log slope of measured versus
    predicted with its 1-sigma error.

    Both axes are noisy: given :math:`N_{\mathrm{test},k}`, :math:`\ln M_k` has the binomial
    variance :math:`1/M_k - 1/N_{\mathrm{test},k}` and :math:`\ln P_k` the variance
    :math:`1/U_k - 1/N_{\mathrm{cal},k}` of the calibration half (:math:`U_k` its unmatched
    detections).  The slope is the maximum-likelihood line with errors on both axes
    (:func:`york_slope`); ignoring the prediction's noise, as a fit weighted by
    :math:`M_k` alone does, attenuates the slope below 1 (regression dilution) and
    understates its error (by ~25 % on synthetic calibrations, where its 1-sigma interval
    covered 51 % of them; tests/test_survey_simulation.py)."""
    edges = np.arange(5.0, 31.0, 1.0) if det_ml_edges is None else np.asarray(det_ml_edges)
    upper = np.append(edges[1:], np.inf)
    n = results.det_ml.shape[0]
    half = n // 2
    expo_ks = np.asarray(results.det_exposure, float) / 1e3
    rows, var_x, var_y = [], [], []
    for lo, hi in intervals:
        sel = sc.in_interval(expo_ks, (lo, hi)) & np.asarray(results.det_valid, bool)
        d = np.asarray(results.det_ml, float)
        m = np.asarray(results.matched, bool)
        cal = np.zeros_like(sel)
        cal[:half] = True
        for t0, t1 in zip(edges, upper):
            in_bin = sel & (d >= t0) & (d < t1)
            n_cal = np.count_nonzero(in_bin & cal)
            if n_cal == 0:
                continue
            u_cal = n_cal - np.count_nonzero(in_bin & cal & m)
            test = in_bin & ~cal
            n_test = np.count_nonzero(test)
            pred = u_cal / n_cal * n_test
            meas = np.count_nonzero(test & ~m)
            if pred >= 1.0:
                rows.append((lo, hi, float(t0), float(pred), int(meas)))
                var_x.append(1.0 / u_cal - 1.0 / n_cal)
                var_y.append(1.0 / meas - 1.0 / n_test if meas > 0 else math.inf)
    pred = np.array([r[3] for r in rows])
    meas = np.array([r[4] for r in rows], float)
    use = meas > 0
    if use.sum() < 2:
        return rows, math.nan, math.nan
    x, y = np.log(pred[use]), np.log(meas[use])
    # a bin whose fractions are 1 has zero binomial variance; floor at one count's worth
    vx = np.maximum(np.asarray(var_x)[use], 1e-3)
    vy = np.maximum(np.asarray(var_y)[use], 1e-3)
    slope, slope_err = york_slope(x, y, vx, vy)
    return rows, slope, slope_err


def york_slope(x, y, var_x, var_y, max_iter: int = 100):
    r"""Slope and its 1-sigma error of the straight line through points with independent
    Gaussian errors on both axes (York et al. 2004, Am. J. Phys. 72, 367, eqs. 13a-13b with
    no correlation): iterate :math:`W_i = 1/(\sigma_{y,i}^2 + b^2\sigma_{x,i}^2)`,
    :math:`\beta_i = W_i(U_i\sigma_{y,i}^2 + b V_i\sigma_{x,i}^2)`,
    :math:`b = \sum W_i\beta_i V_i / \sum W_i\beta_i U_i` (U, V: deviations from the
    W-weighted means); :math:`\sigma_b^2 = 1/\sum W_i u_i^2` with u the deviations of the
    adjusted abscissae :math:`\bar X + \beta_i`.  The maximum-likelihood line, free of the
    attenuation an ordinary fit suffers from noise in x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    vx, vy = np.asarray(var_x, float), np.asarray(var_y, float)

    def terms(b):
        w = 1.0 / (vy + b * b * vx)
        xbar, ybar = np.sum(w * x) / np.sum(w), np.sum(w * y) / np.sum(w)
        u, v = x - xbar, y - ybar
        return w, xbar, u, v, w * (u * vy + b * v * vx)

    b = 1.0
    for _ in range(max_iter):
        w, _, u, v, beta = terms(b)
        b_new = float(np.sum(w * beta * v) / np.sum(w * beta * u))
        converged = abs(b_new - b) < 1e-12 * max(1.0, abs(b))
        b = b_new
        if converged:
            break
    w, xbar, _, _, beta = terms(b)
    adj = xbar + beta
    adj_u = adj - np.sum(w * adj) / np.sum(w)
    return b, float(1.0 / math.sqrt(np.sum(w * adj_u**2)))


def measured_flux_coverage(results, band, thresholds, total_area_deg2, flux_edges, *,
                           level=0.95, sims=slice(None)):
    r"""Sky coverage against *measured* flux from the simulations ``sims``:
    :math:`\Omega(S) = A\,N_\mathrm{det}(S)/N_\mathrm{in}(S)`, the number of reliable
    detections whose measured flux falls in the bin over the number of input sources whose
    input flux falls in it, times the total area.  Used with measured fluxes in eq. (2) it
    corrects the Eddington bias and the incompleteness together (the ratio can exceed 1 near
    the limit).  Returns (flux centres, area)."""
    thr = sc.threshold_per_detection(thresholds, results.det_exposure, band, level)
    ok = (np.asarray(results.det_valid, bool)
          & (np.asarray(results.det_ml, float) >= np.nan_to_num(thr, nan=np.inf)))[sims]
    f_meas = measured_fluxes(results, band)[sims][ok]
    src = np.asarray(results.src_valid, bool)[sims] & (np.asarray(results.src_exposure)[sims]
                                                        > 0)
    f_in = np.asarray(results.src_band_flux, float)[sims][src]
    n_det = np.histogram(f_meas, flux_edges)[0].astype(float)
    n_in = np.histogram(f_in, flux_edges)[0].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(n_in > 0, n_det / np.maximum(n_in, 1.0), 0.0)
    centres = np.sqrt(np.asarray(flux_edges[:-1]) * np.asarray(flux_edges[1:]))
    return centres, ratio * total_area_deg2


def recovered_lognlogs(results, band, thresholds, coverage_flux, coverage_area, lognlogs,
                       flux_grid, level=0.95, first=0):
    r"""Eqs. (2)-(3) on each simulated catalogue (reliable detections from simulation
    ``first`` on, measured fluxes) with the simulation-based sky coverage; returns the mean
    recovered :math:`N(>S)`, the mean single-catalogue :math:`\sigma(S)`, the input
    :math:`N(>S)` in this band and the per-simulation recovered curves."""
    from bkgjax.missions.nustar_survey import sky as survey_sky

    thr = sc.threshold_per_detection(thresholds, results.det_exposure, band, level)
    ok = results.det_valid & (results.det_ml >= np.nan_to_num(thr, nan=np.inf))
    flux = measured_fluxes(results, band)
    cov = sc.SkyCoverage(np.asarray(coverage_flux), np.asarray(coverage_area),
                         float(np.max(coverage_area)))
    curves, sigmas = [], []
    for i in range(first, results.det_ml.shape[0]):
        f = flux[i][ok[i] & (flux[i] > 0)]
        _, n_rec, sig = sc.lognlogs_from_catalogue(f, cov, flux_grid)
        curves.append(n_rec)
        sigmas.append(sig)
    ratio = survey_sky.band_flux_ratio(band, lognlogs.band)
    truth = np.asarray(lognlogs.n_above(np.asarray(flux_grid) / ratio))
    return (np.mean(curves, axis=0), np.mean(sigmas, axis=0), truth, np.asarray(curves))


def _coverage_from_sims(results, src_ok, field_, intervals, flux_edges):
    """Paper's sky coverage: per exposure interval, completeness(S) x the area of the
    interval, summed (sec. 3.3); returns (flux centres, area deg^2, per-interval curves)."""
    expo_ks = field_.exposure / 1e3
    total = np.zeros(len(flux_edges) - 1)
    per = []
    src_expo_ks = np.asarray(results.src_exposure) / 1e3
    for lo, hi in intervals:
        area = float(np.count_nonzero(sc.in_interval(expo_ks, (lo, hi)) & (expo_ks > 0))
                     * field_.pixel_area_deg2)
        in_int = results.src_valid & sc.in_interval(src_expo_ks, (lo, hi))
        comp = sc.completeness_curve(results.src_band_flux, in_int, src_ok, flux_edges)
        c = np.nan_to_num(comp.completeness, nan=0.0)
        per.append((lo, hi, area, comp))
        total += c * area
    centres = np.sqrt(np.asarray(flux_edges[:-1]) * np.asarray(flux_edges[1:]))
    return centres, total, per


def run_survey_simulation(cfg: SurveySimConfig, out_dir: str, *, n_sims: int | None = None,
                          bands=None, progress: bool = True, plots: bool = True,
                          processes: int | None = None) -> dict:
    """Run the calibration (module docstring) and write the ECSV tables, ``summary.json`` and
    the PNG figures into ``out_dir``; returns the summary dict.  ``n_sims``, ``bands`` and
    ``processes`` (worker processes of
    :func:`~bkgjax.missions.nustar_survey.driver.simulate_and_detect`) override the
    configuration's values."""
    from astropy.table import Table, vstack

    from bkgjax.missions.nustar_survey import driver as sv
    from bkgjax.missions.nustar_survey import sky as survey_sky

    os.makedirs(out_dir, exist_ok=True)
    n_sims = int(cfg.n_sims if n_sims is None else n_sims)
    processes = int(cfg.processes if processes is None else processes)
    if n_sims < 2:
        raise ValueError("n_sims must be >= 2 (the spurious-count check splits them in two)")
    bands = cfg.bands if bands is None else tuple(ns.band_info(b).name for b in bands)
    lognlogs = survey_sky.TREISTER09_APPROX
    summary = {"config": cfg.source, "name": cfg.name, "n_sims": n_sims, "seed": cfg.seed,
               "bands": {}}
    thr_tables, rel_rows, comp_rows, cov_rows, lf_rows, edd_rows, spur_rows = ([] for _ in
                                                                                range(7))
    per_band = {}
    flux_edges_all = np.logspace(-15.5, -12, 36)
    for band in bands:
        fld = build_field(cfg, band)
        target = float(fld.background.sum())
        # the band's seed depends on the band, not on which bands are run together
        res = sv.simulate_and_detect(
            cfg.seed + 1000 * list(ns.BANDS).index(band), n_sims, fld.exposure, fld.background,
            fld.pixel_scale_arcsec, band=band, lognlogs=lognlogs,
            max_candidates=cfg.max_candidates, match_total_counts=target, filler=fld.fcxb,
            batch_size=cfg.batch_size, batches_per_chunk=cfg.batches_per_chunk,
            progress=progress, processes=processes)
        np.savez_compressed(os.path.join(out_dir, f"simulations_{band}.npz"),
                            **res._asdict())
        table = sc.threshold_table(res, cfg.exposure_intervals_ks, cfg.reliability_levels,
                                   band)
        thr_tables.append(table)
        grid = np.arange(0.0, 40.0001, 0.25)
        expo_ks = res.det_exposure / 1e3
        for lo, hi in cfg.exposure_intervals_ks:
            curve = sc.reliability_curve(res.det_ml, res.matched, expo_ks, grid, (lo, hi),
                                         valid=res.det_valid)
            for k in range(grid.size):
                rel_rows.append((band, lo, hi, grid[k], int(curve.n_total[k]),
                                 int(curve.n_matched[k]), curve.reliability[k], curve.lo[k],
                                 curve.hi[k]))
        level = 0.95 if 0.95 in cfg.reliability_levels else cfg.reliability_levels[0]
        src_ok = sc.detected_inputs(res, table, band=band, level=level)
        centres, area, per = _coverage_from_sims(res, src_ok, fld, cfg.exposure_intervals_ks,
                                                 flux_edges_all)
        for lo, hi, _area, comp in per:
            for k in range(comp.flux.size):
                comp_rows.append((band, lo, hi, comp.flux_lo[k], comp.flux_hi[k],
                                  int(comp.n_input[k]), int(comp.n_detected[k]),
                                  comp.completeness[k], comp.lo[k], comp.hi[k]))
        sim_cov = sc.SkyCoverage(centres, area, float(sum(p[2] for p in per)))
        ana_cov = sc.sky_coverage(fld.exposure, fld.background, fld.pixel_area_deg2, centres,
                                  table, band, level=level)
        for k in range(centres.size):
            cov_rows.append((band, centres[k], area[k], ana_cov.area_deg2[k]))
        lim = {f"sim_{int(100 * f)}": sc.flux_limit_at_coverage(sim_cov, f) for f in (0.2, 0.5)}
        lim.update({f"analytic_{int(100 * f)}": sc.flux_limit_at_coverage(ana_cov, f)
                    for f in (0.2, 0.5)})
        # separations (Fig. 7) and fluxes (Fig. 8)
        thr = sc.threshold_per_detection(table, res.det_exposure, band, level)
        reliable = res.det_valid & res.matched & (res.det_ml >= np.nan_to_num(thr, nan=np.inf))
        sep = res.separation * fld.pixel_scale_arcsec
        bright = res.matched_flux > 1e-13
        ray = {"all": rayleigh_fit(sep[res.matched]),
               "reliable": rayleigh_fit(sep[reliable]),
               "reliable_bright": rayleigh_fit(sep[reliable & bright]),
               "reliable_faint": rayleigh_fit(sep[reliable & ~bright])}
        f_meas = measured_fluxes(res, band)
        f_in = res.matched_band_flux
        for k in range(flux_edges_all.size - 1):
            m = reliable & (f_in >= flux_edges_all[k]) & (f_in < flux_edges_all[k + 1])
            if np.count_nonzero(m) >= 5:
                ratio = f_meas[m] / f_in[m]
                q16, q50, q84 = np.percentile(ratio, [15.87, 50, 84.13])
                edd_rows.append((band, flux_edges_all[k], flux_edges_all[k + 1],
                                 int(np.count_nonzero(m)), float(np.mean(ratio)), q50, q16, q84))
        # logN-logS (Fig. 10) above the 50 % coverage flux: (a) the paper's estimator
        # (coverage vs input flux) on every catalogue; (b) coverage vs measured flux
        # calibrated on the first half of the simulations, applied to the second half
        f50 = lim["sim_50"]
        lf_grid = np.logspace(math.log10(f50) if np.isfinite(f50) else -14, -12.5, 12)
        n_mean, sig_mean, truth, _ = recovered_lognlogs(res, band, table, centres, area,
                                                        lognlogs, lf_grid, level)
        z = (n_mean - truth) / np.where(sig_mean > 0, sig_mean, np.inf)
        half = n_sims // 2
        mc_flux, mc_area = measured_flux_coverage(res, band, table, sim_cov.total_area_deg2,
                                                  flux_edges_all, level=level,
                                                  sims=slice(0, half))
        n_mean_m, sig_mean_m, _, _ = recovered_lognlogs(res, band, table, mc_flux, mc_area,
                                                        lognlogs, lf_grid, level, first=half)
        z_m = (n_mean_m - truth) / np.where(sig_mean_m > 0, sig_mean_m, np.inf)
        for k in range(lf_grid.size):
            lf_rows.append((band, lf_grid[k], truth[k], n_mean[k], sig_mean[k], z[k],
                            n_mean_m[k], sig_mean_m[k], z_m[k]))
        rows, slope, slope_err = spurious_prediction(res, cfg.exposure_intervals_ks, band)
        for r in rows:
            spur_rows.append((band,) + tuple(r))
        bright_in = res.src_valid & (res.src_band_flux > 3e-13) & (res.src_exposure >=
                                                                   cfg.exposure_intervals_ks[0][0] * 1e3)
        bright_completeness = (float(np.count_nonzero(src_ok & bright_in))
                               / max(1, np.count_nonzero(bright_in)))
        summary["bands"][band] = {
            "area_deg2": fld.area_deg2,
            "max_exposure_ks": float(fld.exposure.max() / 1e3),
            "mean_inputs_per_sim": float(res.src_valid.sum(1).mean()),
            "mean_detections_per_sim": float(res.det_valid.sum(1).mean()),
            "mean_matched_per_sim": float((res.det_valid & res.matched).sum(1).mean()),
            "mean_reliable_per_sim": float(reliable.sum(1).mean()),
            "mean_above_thresholds_per_sim": {
                f"{int(round(100 * lv))}": float((res.det_valid & (res.det_ml >= np.nan_to_num(
                    sc.threshold_per_detection(table, res.det_exposure, band, lv), nan=np.inf))).sum(1).mean())
                for lv in cfg.reliability_levels},
            "paper_per_map": ns.PAPER_SIMULATION_COUNTS.get(band),
            "thresholds": [{k: (v if not isinstance(v, (float, np.floating)) or np.isfinite(v)
                                else None)
                            for k, v in zip(table.colnames, [x.item() if hasattr(x, "item")
                                                             else x for x in row])}
                           for row in table],
            "flux_limits": lim,
            "paper_flux_limits": PAPER_FLUX_LIMITS.get(band),
            "rayleigh_sigma_arcsec": {k: {"sigma": v[0], "error": v[1], "n": v[2]}
                                      for k, v in ray.items()},
            "completeness_bright_gt_3e-13": bright_completeness,
            "spurious_loglog_slope": slope, "spurious_loglog_slope_error": slope_err,
            "lognlogs_max_abs_z_above_f50": float(np.nanmax(np.abs(z))) if z.size else None,
            "lognlogs_measured_coverage_max_abs_z_above_f50":
                float(np.nanmax(np.abs(z_m))) if z_m.size else None,
        }
        per_band[band] = dict(results=res, field=fld, table=table, sim_cov=sim_cov,
                              ana_cov=ana_cov, per=per, lf=(lf_grid, n_mean, sig_mean, truth),
                              lf_measured=(lf_grid, n_mean_m, sig_mean_m, truth),
                              sep=sep, reliable=reliable, f_meas=f_meas, f_in=f_in,
                              spur=rows)
    thresholds = vstack(thr_tables)
    thresholds.meta["config"] = cfg.source
    thresholds.meta["n_sims"] = n_sims
    thresholds.write(os.path.join(out_dir, "thresholds.ecsv"), overwrite=True)
    Table(rows=rel_rows, names=("band", "exp_min_ks", "exp_max_ks", "det_ml", "n_total",
                                "n_matched", "reliability", "lo", "hi")
          ).write(os.path.join(out_dir, "reliability.ecsv"), overwrite=True)
    Table(rows=comp_rows, names=("band", "exp_min_ks", "exp_max_ks", "flux_lo", "flux_hi",
                                 "n_input", "n_detected", "completeness", "lo", "hi")
          ).write(os.path.join(out_dir, "completeness.ecsv"), overwrite=True)
    Table(rows=cov_rows, names=("band", "flux", "area_sim_deg2", "area_analytic_deg2")
          ).write(os.path.join(out_dir, "sky_coverage.ecsv"), overwrite=True)
    Table(rows=lf_rows or None, names=("band", "flux", "n_input", "n_recovered", "sigma",
                                       "z", "n_recovered_measured_cov", "sigma_measured_cov",
                                       "z_measured_cov")).write(os.path.join(out_dir, "lognlogs.ecsv"),
                                                   overwrite=True)
    Table(rows=edd_rows or None, names=("band", "flux_lo", "flux_hi", "n", "mean_ratio",
                                        "median_ratio", "q16", "q84")
          ).write(os.path.join(out_dir, "flux_ratio.ecsv"), overwrite=True)
    Table(rows=spur_rows or None, names=("band", "exp_min_ks", "exp_max_ks", "det_ml",
                                         "predicted", "measured")
          ).write(os.path.join(out_dir, "spurious_check.ecsv"), overwrite=True)
    with open(os.path.join(out_dir, "summary.json"), "w") as fh:
        json.dump(_jsonable(summary), fh, indent=2)
        fh.write("\n")
    if plots:
        from bkgjax.missions.nustar_survey import plots as survey_plots

        survey_plots.write_figures(per_band, cfg, out_dir)
    return summary


PAPER_FLUX_LIMITS = {
    "3-24": {"f20": 2.39e-14, "f50": 4.67e-14}, "3-8": {"f20": 1.14e-14, "f50": 2.24e-14},
    "8-24": {"f20": 2.76e-14, "f50": 5.19e-14}, "8-16": {"f20": 1.52e-14, "f50": 2.97e-14},
    "16-24": {"f20": 5.20e-14, "f50": 9.75e-14},
}
"""Fluxes (erg cm^-2 s^-1) at 20 and 50 % sky coverage, Zhao et al. (2021) sec. 3.3."""


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
