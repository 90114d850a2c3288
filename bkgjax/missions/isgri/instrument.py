"""INTEGRAL/IBIS-ISGRI used as a collimator: screening, the orbit background model of Appendix A,
the Crab calibration of Appendix B and the region fluxes of Section 4 of Krivonos, Shtykovskaya &
Sazonov (integral_ibis_galactic_background.txt, "the paper").

Everything here is pure maths on NumPy/JAX arrays (no file access), vectorised over science
windows (ScWs) and orbits with segment sums (``np.bincount``) rather than Python loops over the
~2700 orbits.  Rates are the source-free ISGRI detector count rates of the ScW table (the paper's
unit is cts/s/pix; the slope thresholds below are in the same unit).

Pipeline of the paper, in the order implemented here:

1. :func:`screen` -- Section 2: orbital phase 0.2-0.8, EXPOSURE >= 700 s; Appendix A: the sky split
   GAL (|l| < 90 deg and |b| < 30 deg) / BKG (everything else).
2. :func:`orbit_background` -- Appendix A: the three per-orbit rules (linear regression in the
   orbital phase, constant mean, interpolation between calibrated orbits), the slope filter and
   the model uncertainty at every ScW.
3. :func:`sigma_clip_groups` -- the iterative 4-sigma transient clipping (Section 3) and the
   iterative 3-sigma clipping of the per-orbit residual light curve (Appendix A).
4. :func:`crab_calibration` -- Appendix B: cubic polynomial of the Crab rate versus revolution.
5. :func:`bkgjax.missions.isgri.gauss_wings.fit_gauss_wings` -- Appendix A (last paragraph): flux = centroid of a Gaussian plus two
   constant wings fitted to the ScW residuals of a region, error = sigma / sqrt(N_ScW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FOV_SOLID_ANGLE_DEG2",
    "FULLY_CODED_HALF_WIDTH_DEG",
    "COLLIMATOR_EDGE_DEG",
    "CRAB_NORM",
    "CRAB_INDEX",
    "KEV_TO_ERG",
    "PIXELS",
    "WIDE_BANDS",
    "SPECTRAL_EDGES_KEV",
    "SPECTRAL_BANDS",
    "CLIP_BAND",
    "Region",
    "PAPER_REGIONS",
    "band_name",
    "band_edges",
    "collimator_transmission",
    "collimator_response",
    "crab_photon_flux",
    "crab_energy_flux",
    "wrap_longitude",
    "in_region",
    "PROFILE_EDGES_DEG",
    "PROFILE_B_MAX_DEG",
    "in_profile_bin",
    "is_galactic",
    "screen",
    "OrbitModel",
    "orbit_background",
    "RULE_REGRESSION",
    "RULE_MEAN",
    "RULE_INTERPOLATED",
    "RULE_NONE",
    "RULE_NAMES",
    "sigma_clip_groups",
    "sky_cells",
    "orbit_residual_clip",
    "CrabCalibration",
    "crab_calibration",
    "to_mcrab",
    "mcrab_to_energy_flux",
]

# ----------------------------------------------------------------------------------------------
# Constants of the paper

#: Effective solid angle of the IBIS field of view (Appendix B, after Krivonos et al. 2012b).
FOV_SOLID_ANGLE_DEG2 = 286.0
#: Half width of the 9 x 9 deg fully coded field of view (Appendix B: break at ~4.5 deg).
FULLY_CODED_HALF_WIDTH_DEG = 4.5
#: Where the piecewise-linear collimator transmission reaches zero, chosen so that the square
#: response R(x, y) = T(x) T(y) integrates to Omega = 286 deg^2:
#: (int T dx)^2 = (2 a + (c - a))^2 = (a + c)^2 = 286  ->  c = sqrt(286) - a = 12.41 deg.
COLLIMATOR_EDGE_DEG = math.sqrt(FOV_SOLID_ANGLE_DEG2) - FULLY_CODED_HALF_WIDTH_DEG
#: Crab spectrum dN/dE = N E^-Gamma photons/cm^2/s/keV (Section 2.2, Appendix B).
CRAB_NORM = 10.0
CRAB_INDEX = 2.1
KEV_TO_ERG = 1.602176634e-9
#: ISGRI has 128 x 128 CdTe pixels (the paper's rates are per pixel).
PIXELS = 128 * 128

#: The three wide bands of Section 2.2 (keV).
WIDE_BANDS = ((25, 60), (60, 80), (80, 200))
#: The 21 logarithmic bands between 25 and 185 keV of Section 2.2.  Edges are
#: floor(25 (185/25)^(k/21)) keV, k = 0..21 (the last one is 185), so that band names are
#: integers and the last band is the paper's 168-185 keV.
SPECTRAL_EDGES_KEV = tuple(
    [int(math.floor(25.0 * (185.0 / 25.0) ** (k / 21.0) + 1e-9)) for k in range(21)] + [185])
SPECTRAL_BANDS = tuple(zip(SPECTRAL_EDGES_KEV[:-1], SPECTRAL_EDGES_KEV[1:]))
#: The band of the orbit residual clipping (Appendix A: "the last energy interval of spectral
#: binning (168-185 keV)", where the detector background dominates).
CLIP_BAND = (168, 185)


def band_name(lo, hi) -> str:
    """Column suffix of a band: ``band_name(25, 60) == "25_60"`` (RATE_25_60)."""
    return f"{_fmt_edge(lo)}_{_fmt_edge(hi)}"


def _fmt_edge(x) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x).replace(".", "p")


def band_edges(name: str) -> tuple[float, float]:
    """Inverse of :func:`band_name`: ``"25_60" -> (25.0, 60.0)`` keV (``p`` as decimal point)."""
    try:
        lo, hi = name.split("_")
        lo, hi = float(lo.replace("p", ".")), float(hi.replace("p", "."))
    except ValueError:
        raise ValueError(f"band name {name!r} is not <lo>_<hi> in keV (e.g. 25_60)") from None
    if not (0 < lo < hi):
        raise ValueError(f"band {name!r}: needs 0 < lo < hi keV")
    return lo, hi


# ----------------------------------------------------------------------------------------------
# Collimator response and the Crab spectrum


def collimator_transmission(x):
    """One-axis IBIS collimator transmission T(x), x in deg from the pointing axis.

    Piecewise linear (Appendix B): T = 1 for |x| <= a = 4.5 deg (fully coded field), falling
    linearly to 0 at |x| = c = sqrt(286) - a = 12.41 deg, so that the square response
    R(x, y) = T(x) T(y) has int R dOmega = (a + c)^2 = 286 deg^2 (flat-sky approximation).
    """
    x = np.abs(np.asarray(x, dtype=float))
    a, c = FULLY_CODED_HALF_WIDTH_DEG, COLLIMATOR_EDGE_DEG
    return np.clip((c - x) / (c - a), 0.0, 1.0)


def collimator_response(dx, dy):
    """Collimator response R(dx, dy) = T(dx) T(dy) (dimensionless, 1 on axis), offsets in deg."""
    return collimator_transmission(dx) * collimator_transmission(dy)


def crab_photon_flux(lo, hi):
    """Crab photon flux in [lo, hi] keV, photons/cm^2/s: int N E^-Gamma dE with N = 10, Gamma = 2.1
    = N (lo^(1-Gamma) - hi^(1-Gamma)) / (Gamma - 1)."""
    g = CRAB_INDEX
    return CRAB_NORM * (np.power(lo, 1 - g) - np.power(hi, 1 - g)) / (g - 1)


def crab_energy_flux(lo, hi):
    """Crab energy flux in [lo, hi] keV, erg/cm^2/s: int E N E^-Gamma dE x keV->erg
    = N (lo^(2-Gamma) - hi^(2-Gamma)) / (Gamma - 2) x 1.602e-9 (Gamma = 2.1 != 2)."""
    g = CRAB_INDEX
    return CRAB_NORM * (np.power(lo, 2 - g) - np.power(hi, 2 - g)) / (g - 2) * KEV_TO_ERG


# ----------------------------------------------------------------------------------------------
# Sky geometry


def wrap_longitude(l):
    """Galactic longitude in (-180, 180] deg."""
    l = np.mod(np.asarray(l, dtype=float) + 180.0, 360.0) - 180.0
    return np.where(l == -180.0, 180.0, l)


@dataclass(frozen=True)
class Region:
    """A rectangular sky region in Galactic coordinates: ScWs whose pointing (l, b) lies within
    |l - lon| <= width/2 (longitude difference wrapped to +-180) and |b - lat| <= height/2
    (Table 1 footnote a: "the centers of INTEGRAL ScWs are selected within the rectangular
    regions")."""

    name: str
    lon: float
    lat: float
    width: float
    height: float

    def __post_init__(self):
        if not self.name.strip():
            raise ValueError("region name must be non-empty")
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"region {self.name}: width and height must be > 0 deg")
        if abs(self.lat) > 90:
            raise ValueError(f"region {self.name}: latitude {self.lat} outside -90..90 deg")


#: Table 1 of the paper (centre lon/lat and size in deg).
PAPER_REGIONS = (
    Region("GB", 0.0, 0.0, 6.0, 6.0),
    Region("L+20", 20.0, 0.0, 20.0, 10.0),
    Region("L-20", -20.0, 0.0, 20.0, 10.0),
    Region("3C 273/Coma", -70.0, 70.0, 40.0, 40.0),
)


def in_region(l, b, region: Region):
    """Boolean mask of pointings inside ``region`` (see :class:`Region`)."""
    dl = wrap_longitude(np.asarray(l, dtype=float) - region.lon)
    return (np.abs(dl) <= region.width / 2) & (np.abs(np.asarray(b, dtype=float) - region.lat)
                                               <= region.height / 2)


#: Longitude bins of the profiles (Section 2.1, Fig. 1): 15 deg wide, centred on l = 0, -75..75.
PROFILE_EDGES_DEG = tuple(float(x) for x in np.arange(-82.5, 82.5 + 1e-9, 15.0))
#: Latitude half height of the profile bins (|b| < 10 deg).
PROFILE_B_MAX_DEG = 10.0


def in_profile_bin(l, b, l_lo, l_hi, b_max=PROFILE_B_MAX_DEG):
    """Pointings with l_lo <= l < l_hi (l wrapped to (-180, 180]) and |b| < b_max."""
    l = wrap_longitude(l)
    return (l >= l_lo) & (l < l_hi) & (np.abs(np.asarray(b, dtype=float)) < b_max)


def is_galactic(l, b):
    """Appendix A sky split: GAL = |l| < 90 deg and |b| < 30 deg; BKG = the rest."""
    return (np.abs(wrap_longitude(l)) < 90.0) & (np.abs(np.asarray(b, dtype=float)) < 30.0)


# ----------------------------------------------------------------------------------------------
# Screening (Section 2, Appendix A)


def screen(phase, exposure, l, b, *, phase_range=(0.2, 0.8), min_exposure=700.0):
    """Section 2 screening and the Appendix A sky split.

    Returns ``(keep, gal)``: ``keep`` = phase_range[0] <= PHASE <= phase_range[1] and
    EXPOSURE >= min_exposure (s); ``gal`` = |l| < 90 and |b| < 30 deg (GAL), else BKG.
    """
    phase = np.asarray(phase, dtype=float)
    exposure = np.asarray(exposure, dtype=float)
    keep = (phase >= phase_range[0]) & (phase <= phase_range[1]) & (exposure >= min_exposure)
    return keep, is_galactic(l, b)


# ----------------------------------------------------------------------------------------------
# Appendix A: the orbit background model

RULE_NONE = 0  # orbit rejected (slope filter) or no model
RULE_REGRESSION = 1  # N_BKG >= 10 and BKG phase span > 0.4: rate = alpha * phase + beta
RULE_MEAN = 2  # 3 < N_BKG (and not the regression case): constant mean
RULE_INTERPOLATED = 3  # N_BKG <= 3: interpolation between the nearest calibrated orbits
RULE_NAMES = {RULE_NONE: "none", RULE_REGRESSION: "regression", RULE_MEAN: "mean",
              RULE_INTERPOLATED: "interpolated"}


@dataclass(frozen=True, eq=False)
class OrbitModel:
    """Per-orbit background model of Appendix A for every band.

    Orbit arrays have shape (n_orbits, n_bands) (``revs`` and ``rejected``: (n_orbits,)); ScW
    arrays (``model``, ``model_err``) have shape (n_scw, n_bands) and follow the input rows.
    For a calibrated orbit the model at phase p is ``alpha p + beta`` with variance
    ``c0 + c1 (p - phase_mean)^2`` (regression: c0 = s^2 / W, c1 = s^2 / S_pp; mean: alpha = 0,
    c1 = 0, c0 = error^2).  Interpolated orbits hold the revolutions of the calibrated orbits
    they were interpolated from (``prev_rev``, ``next_rev``; -1 when absent) and ``weight_prev``.
    Rows of rejected orbits have model 0 and ``usable`` False (never NaN).
    """

    bands: tuple
    revs: np.ndarray
    orbit_index: np.ndarray
    rule: np.ndarray
    n_bkg: np.ndarray
    span: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    phase_mean: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    rejected: np.ndarray
    prev_rev: np.ndarray
    next_rev: np.ndarray
    weight_prev: np.ndarray
    model: np.ndarray
    model_err: np.ndarray
    usable: np.ndarray

    def rule_counts(self, band: int = 0) -> dict:
        """Number of orbits per rule in one band (rejected orbits counted as ``"rejected"``)."""
        out = {RULE_NAMES[k]: int(np.sum((self.rule[:, band] == k) & ~self.rejected))
               for k in (RULE_REGRESSION, RULE_MEAN, RULE_INTERPOLATED)}
        out["rejected"] = int(self.rejected.sum())
        return out


def _segment_sum(index, values, n):
    return np.bincount(index, weights=values, minlength=n)


def orbit_background(rev, phase, rate, is_bkg, *, valid=None, rate_err=None, bands=None,
                     weighted=False, min_regression=10, min_span=0.4, min_mean=4,
                     slope_bounds=(-2e-3, 1e-3), mean_error="sem", slope_filter=True,
                     reject_revs=()):
    """Appendix A background model for all bands at once.

    Parameters
    ----------
    rev, phase : (n,) arrays of the screened ScWs.
    rate : (n, n_bands) detector count rates (cts/s/pix).
    is_bkg : (n,) bool, BKG sky region (:func:`is_galactic` False).
    valid : (n, n_bands) bool, ScWs usable in a band (e.g. after transient clipping).
    weighted : bool
        False (default): ordinary least squares, as the paper gives no weights (the ScW scatter
        is dominated by systematics, not by the statistical RATE_ERR).  True: weights
        1 / RATE_ERR^2 with the covariance scaled by chi^2 / (N - 2).
    min_regression, min_span : the regression rule needs N_BKG >= 10 and a BKG phase span
        (last minus first) > 0.4.
    min_mean : the constant rule needs N_BKG >= 4 ("3 < N_BKG").
    slope_bounds : the slope filter -2e-3 < alpha < 1e-3 cts/s/pix.  A regression orbit whose
        slope is outside in *any* band is rejected in all bands (the paper quotes one number
        of filtered orbits) and is no calibrator for interpolation.
    reject_revs : revolutions rejected beforehand (e.g. by the slope filter of a first pass
        before transient clipping, which would hide the drift), treated like slope-rejected.
    mean_error : ``"sem"`` (default): error of the constant model = standard deviation / sqrt(N)
        (the uncertainty of the model, like the regression's); ``"std"``: the standard
        deviation itself.

    Rules per orbit and band (Appendix A; the two gaps of the paper's wording are closed as
    documented here):

    * N_BKG >= 10 and span > 0.4: regression rate = alpha phase + beta, model variance
      s^2 (1/W + (p - p_mean)^2 / S_pp) with s^2 = sum w r^2 / (N - 2), W = sum w,
      S_pp = sum w (p - p_mean)^2 (w = 1 unweighted).
    * 3 < N_BKG, including N_BKG >= 10 with span <= 0.4 (a slope is then not constrained;
      the paper's constant model is the calibrated alternative): mean of the BKG rates, error
      sd / sqrt(N) (sd with ddof = 1).
    * N_BKG <= 3 (the paper: N_BKG < 3; with exactly 3 neither of the first two rules
      applies, so it is interpolated): m(p) = w m_prev(p) + (1 - w) m_next(p) and
      sigma(p) = w sigma_prev(p) + (1 - w) sigma_next(p), w = (REV_next - REV) /
      (REV_next - REV_prev), between the nearest calibrated orbits before and after; the
      nearest one alone at the ends of the mission.

    Raises ValueError when a band has no calibrated orbit at all.
    """
    rev = np.asarray(rev)
    phase = np.asarray(phase, dtype=float)
    rate = np.asarray(rate, dtype=float)
    if rate.ndim == 1:
        rate = rate[:, None]
    n, n_band = rate.shape
    bands = tuple(bands) if bands is not None else tuple(str(j) for j in range(n_band))
    valid = (np.ones((n, n_band), bool) if valid is None
             else np.asarray(valid, bool).reshape(n, n_band))
    is_bkg = np.asarray(is_bkg, bool)
    if weighted:
        if rate_err is None:
            raise ValueError("orbit_background: weighted=True needs rate_err")
        err = np.asarray(rate_err, dtype=float).reshape(n, n_band)
        weights = np.where(err > 0, 1.0 / np.where(err > 0, err, 1.0) ** 2, 0.0)
    else:
        weights = np.ones((n, n_band))
    if mean_error not in ("sem", "std"):
        raise ValueError(f"mean_error must be 'sem' or 'std', got {mean_error!r}")

    revs, oidx = np.unique(rev, return_inverse=True)
    n_orb = len(revs)
    shape = (n_orb, n_band)
    rule = np.zeros(shape, np.int8)
    n_bkg = np.zeros(shape, np.int64)
    span = np.zeros(shape)
    alpha = np.zeros(shape)
    beta = np.zeros(shape)
    pmean = np.zeros(shape)
    c0 = np.zeros(shape)
    c1 = np.zeros(shape)
    for j in range(n_band):
        use = is_bkg & valid[:, j] & (weights[:, j] > 0)
        w = np.where(use, weights[:, j], 0.0)
        cnt = np.bincount(oidx[use], minlength=n_orb)
        pmax = np.full(n_orb, -np.inf)
        pmin = np.full(n_orb, np.inf)
        np.maximum.at(pmax, oidx[use], phase[use])
        np.minimum.at(pmin, oidx[use], phase[use])
        sp = np.where(cnt > 0, pmax - pmin, 0.0)
        wsum = _segment_sum(oidx, w, n_orb)
        wsafe = np.where(wsum > 0, wsum, 1.0)
        pm = _segment_sum(oidx, w * phase, n_orb) / wsafe
        ym = _segment_sum(oidx, w * rate[:, j], n_orb) / wsafe
        dp = np.where(use, phase - pm[oidx], 0.0)
        dy = np.where(use, rate[:, j] - ym[oidx], 0.0)
        spp = _segment_sum(oidx, w * dp * dp, n_orb)
        spy = _segment_sum(oidx, w * dp * dy, n_orb)
        is_reg = (cnt >= min_regression) & (sp > min_span) & (spp > 0)
        is_mean = ~is_reg & (cnt >= min_mean)
        a = np.where(is_reg, spy / np.where(spp > 0, spp, 1.0), 0.0)
        res = np.where(use, dy - a[oidx] * dp, 0.0)  # residual about the fitted line / mean
        rss = _segment_sum(oidx, w * res * res, n_orb)
        s2_reg = rss / np.maximum(cnt - 2, 1)
        s2_mean = rss / np.maximum(cnt - 1, 1)
        c0_mean = s2_mean / wsafe if mean_error == "sem" else s2_mean
        rule[:, j] = np.where(is_reg, RULE_REGRESSION, np.where(is_mean, RULE_MEAN,
                                                                 RULE_INTERPOLATED))
        n_bkg[:, j] = cnt
        span[:, j] = sp
        alpha[:, j] = a
        beta[:, j] = np.where(is_reg | is_mean, ym - a * pm, 0.0)
        pmean[:, j] = pm
        c0[:, j] = np.where(is_reg, s2_reg / wsafe, np.where(is_mean, c0_mean, 0.0))
        c1[:, j] = np.where(is_reg, s2_reg / np.where(spp > 0, spp, 1.0), 0.0)

    lo_a, hi_a = slope_bounds
    bad_slope = (rule == RULE_REGRESSION) & ~((alpha > lo_a) & (alpha < hi_a))
    rejected = bad_slope.any(axis=1) if slope_filter else np.zeros(n_orb, bool)
    rejected |= np.isin(revs, np.asarray(reject_revs, dtype=revs.dtype))
    calibrated = ((rule == RULE_REGRESSION) | (rule == RULE_MEAN)) & ~rejected[:, None]
    if not calibrated.any(axis=0).all():
        missing = [bands[j] for j in range(n_band) if not calibrated[:, j].any()]
        raise ValueError(f"no calibrated orbit (>= {min_mean} BKG ScWs) in band(s) "
                         f"{', '.join(missing)}: the background cannot be modelled")

    # Nearest calibrated orbit before / after every orbit (index into the sorted orbits).
    idx = np.arange(n_orb)[:, None]
    prev_i = np.maximum.accumulate(np.where(calibrated, idx, -1), axis=0)
    next_i = np.minimum.accumulate(np.where(calibrated, idx, n_orb)[::-1], axis=0)[::-1]
    has_prev, has_next = prev_i >= 0, next_i < n_orb
    pi, ni = np.clip(prev_i, 0, n_orb - 1), np.clip(next_i, 0, n_orb - 1)
    rprev, rnext = revs[pi].astype(float), revs[ni].astype(float)
    both = has_prev & has_next & (ni != pi)
    wprev = np.where(both, (rnext - revs[:, None]) / np.where(both, rnext - rprev, 1.0),
                     np.where(has_prev, 1.0, 0.0))
    own = calibrated
    wprev = np.where(own, 1.0, wprev)
    pi = np.where(own, idx, pi)
    prev_rev = np.where(own | has_prev, revs[pi], -1)
    next_rev = np.where(own, revs[:, None], np.where(has_next, revs[ni], -1))

    # Model and its uncertainty at every ScW.
    cols = np.arange(n_band)[None, :]
    o = oidx[:, None]
    p = phase[:, None]

    def evaluate(k):
        m = alpha[k, cols] * p + beta[k, cols]
        s = np.sqrt(c0[k, cols] + c1[k, cols] * (p - pmean[k, cols]) ** 2)
        return m, s

    m_prev, s_prev = evaluate(pi[o[:, 0]])
    m_next, s_next = evaluate(ni[o[:, 0]])
    wrow = wprev[o[:, 0]]
    model = wrow * m_prev + (1.0 - wrow) * m_next
    model_err = wrow * s_prev + (1.0 - wrow) * s_next
    usable = ~rejected[oidx]
    model = np.where(usable[:, None], model, 0.0)
    model_err = np.where(usable[:, None], model_err, 0.0)
    final_rule = np.where(rejected[:, None], RULE_NONE, rule).astype(np.int8)
    return OrbitModel(bands=bands, revs=revs, orbit_index=oidx, rule=final_rule, n_bkg=n_bkg,
                      span=span, alpha=alpha, beta=beta, phase_mean=pmean, c0=c0, c1=c1,
                      rejected=rejected, prev_rev=prev_rev, next_rev=next_rev,
                      weight_prev=np.where(own, 1.0, wprev), model=model, model_err=model_err,
                      usable=usable)


# ----------------------------------------------------------------------------------------------
# Iterative sigma clipping (transients: 4 sigma; orbit residual light curve: 3 sigma)


def sigma_clip_groups(values, groups=None, mask=None, *, nsigma=4.0, max_iter=50, min_count=3):
    """Iterative sigma clipping within groups, vectorised over groups.

    In every iteration, per group: centre = mean and sd = standard deviation (ddof = 0) of the
    values still kept; a value is kept when |x - centre| <= nsigma sd.  Clipped values never come
    back; iterations stop when nothing changes.  Groups with fewer than ``min_count`` kept values
    are not clipped further.  Returns the boolean keep mask (False where ``mask`` is False).
    """
    values = np.asarray(values, dtype=float)
    groups = np.zeros(len(values), np.int64) if groups is None else np.asarray(groups)
    _, g = np.unique(groups, return_inverse=True)
    n_g = g.max() + 1 if len(g) else 0
    keep = np.ones(len(values), bool) if mask is None else np.asarray(mask, bool).copy()
    for _ in range(max_iter):
        kw = keep.astype(float)
        cnt = np.bincount(g, weights=kw, minlength=n_g)
        safe = np.where(cnt > 0, cnt, 1.0)
        centre = np.bincount(g, weights=kw * values, minlength=n_g) / safe
        dev = np.where(keep, values - centre[g], 0.0)
        sd = np.sqrt(np.bincount(g, weights=dev * dev, minlength=n_g) / safe)
        inside = np.abs(values - centre[g]) <= nsigma * sd[g]
        new_keep = keep & (inside | (cnt[g] < min_count))
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def sky_cells(l, b, *, dl=15.0, db=10.0):
    """Integer sky-cell index of pointings on a dl x db deg grid in (l, b) -- the groups of the
    transient clipping: a transient is an outlier among the ScWs pointed at the same place."""
    il = np.floor((wrap_longitude(l) + 180.0) / dl).astype(np.int64)
    ib = np.floor((np.asarray(b, dtype=float) + 90.0) / db).astype(np.int64)
    return il * 1000 + ib


def orbit_residual_clip(orbit_index, residual, mask, n_orbits, *, nsigma=3.0, max_iter=50):
    """Appendix A: light curve of the residuals (observed - model) with one bin per orbit
    (mean over the orbit's kept ScWs), then iterative ``nsigma`` clipping of the orbits.

    Returns ``(orbit_keep, light_curve, has_data)``: orbits without ScWs are kept (nothing to
    judge) and have light curve 0 with ``has_data`` False."""
    orbit_index = np.asarray(orbit_index)
    mask = np.asarray(mask, bool)
    cnt = np.bincount(orbit_index[mask], minlength=n_orbits)
    tot = np.bincount(orbit_index[mask], weights=np.asarray(residual)[mask], minlength=n_orbits)
    has = cnt > 0
    lc = np.where(has, tot / np.where(has, cnt, 1), 0.0)
    keep = sigma_clip_groups(lc, mask=has, nsigma=nsigma, max_iter=max_iter)
    return keep | ~has, lc, has


# ----------------------------------------------------------------------------------------------
# Appendix B: Crab calibration


@dataclass(frozen=True, eq=False)
class CrabCalibration:
    """Cubic polynomial of the per-orbit Crab count rate versus revolution, per band.

    The polynomial is stored in the scaled variable x = (REV - rev_center) / rev_scale
    (``coeffs[j]`` lowest order first) for conditioning; it is the same least-squares curve as
    ``numpy.polyfit(REV, rate, 3)``.  ``residual_mcrab`` = 1000 (rate / P(REV) - 1) per
    calibration orbit, ``systematic_mcrab`` their standard deviation (ddof = 1), the paper's
    systematic uncertainty (37, 47, 44 mCrab in its three bands)."""

    bands: tuple
    coeffs: np.ndarray
    rev_center: float
    rev_scale: float
    orbit_revs: np.ndarray
    orbit_rate: np.ndarray
    orbit_n_scw: np.ndarray
    residual_mcrab: np.ndarray
    systematic_mcrab: np.ndarray
    coeff_cov: np.ndarray | None = None

    def rate(self, rev):
        """P(REV), shape (n, n_bands): the smooth Crab count rate (cts/s/pix)."""
        x = (np.asarray(rev, dtype=float) - self.rev_center) / self.rev_scale
        return np.stack([np.polynomial.polynomial.polyval(x, c) for c in self.coeffs], axis=-1)

    def relative_error_of_mean(self, rev, band: int) -> float:
        """Relative 1-sigma error that the polynomial's uncertainty puts on a mean of Crab-unit
        values over ScWs at revolutions ``rev`` (fully correlated between them): with the
        least-squares covariance C of the coefficients (s^2 (X^T X)^-1, s^2 = residual variance
        of the orbit rates, N - degree - 1 dof) and g = mean_i x_i^k / P(REV_i),
        sigma_rel = sqrt(g^T C g) (first order in dP / P)."""
        if self.coeff_cov is None or len(rev) == 0:
            return 0.0
        x = (np.asarray(rev, dtype=float) - self.rev_center) / self.rev_scale
        basis = np.vander(x, self.coeffs.shape[1], increasing=True)
        p = basis @ self.coeffs[band]
        g = (basis / p[:, None]).mean(axis=0)
        return float(np.sqrt(max(g @ self.coeff_cov[band] @ g, 0.0)))


def crab_calibration(rev, offset, rate, bands, *, max_offset=4.5, min_scw=10, degree=3):
    """Appendix B: orbits with >= ``min_scw`` Crab ScWs at OFFSET < ``max_offset`` deg (fully
    coded field), their mean Crab rate per band, and an unweighted least-squares polynomial of
    degree 3 in REV per band.  Raises ValueError when fewer than degree + 2 orbits qualify
    (a cubic with no residual degree of freedom gives no systematic)."""
    rev = np.asarray(rev)
    rate = np.asarray(rate, dtype=float)
    if rate.ndim == 1:
        rate = rate[:, None]
    sel = np.asarray(offset, dtype=float) < max_offset
    revs, idx, cnt = np.unique(rev[sel], return_inverse=True, return_counts=True)
    good = cnt >= min_scw
    if good.sum() < degree + 2:
        raise ValueError(f"Crab calibration: {int(good.sum())} orbit(s) with >= {min_scw} Crab "
                         f"ScWs within {max_offset} deg; at least {degree + 2} are needed for a "
                         f"degree-{degree} polynomial with a residual scatter")
    sums = np.stack([np.bincount(idx, weights=rate[sel, j], minlength=len(revs))
                     for j in range(rate.shape[1])], axis=1)
    orbit_rate = (sums / cnt[:, None])[good]
    orbit_revs = revs[good]
    center = 0.5 * (orbit_revs.max() + orbit_revs.min())
    scale = max(0.5 * (orbit_revs.max() - orbit_revs.min()), 1.0)
    x = (orbit_revs - center) / scale
    coeffs = np.stack([np.polynomial.polynomial.polyfit(x, orbit_rate[:, j], degree)
                       for j in range(rate.shape[1])])
    cal = CrabCalibration(tuple(bands), coeffs, float(center), float(scale), orbit_revs,
                          orbit_rate, cnt[good], np.zeros_like(orbit_rate),
                          np.zeros(rate.shape[1]))
    model = cal.rate(orbit_revs)
    resid = 1000.0 * (orbit_rate / model - 1.0)
    basis = np.vander(x, degree + 1, increasing=True)
    xtx_inv = np.linalg.inv(basis.T @ basis)
    s2 = ((orbit_rate - model) ** 2).sum(axis=0) / (len(x) - degree - 1)
    cov = s2[:, None, None] * xtx_inv[None]
    return CrabCalibration(tuple(bands), coeffs, float(center), float(scale), orbit_revs,
                           orbit_rate, cnt[good], resid, resid.std(axis=0, ddof=1), cov)


def to_mcrab(residual_rate, crab_rate):
    """Residual count rate in mCrab per FOV: 1000 (rate - model) / P_Crab(REV) (Section 3)."""
    return 1000.0 * np.asarray(residual_rate) / np.asarray(crab_rate)


def mcrab_to_energy_flux(mcrab, lo, hi):
    """mCrab per FOV -> erg/s/cm^2 per FOV in [lo, hi] keV with the Crab spectrum 10 E^-2.1
    (Appendix B): F = mCrab / 1000 x int E 10 E^-2.1 dE."""
    return np.asarray(mcrab) / 1000.0 * crab_energy_flux(lo, hi)
