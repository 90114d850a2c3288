r"""NuSTAR deep-survey source detection (Zhao et al. 2021, nustar_nep_survey_detection.txt,
section 3.2 and 3.3, after Mullaney et al. 2015).

Steps (each a function of arrays; only :func:`detect` touches an astropy WCS / Table):

1. **Top-hat smoothing** (:func:`tophat_sum`): the counts and background images are
   convolved with a circular top-hat of radius 20" (all pixels whose centre lies within the
   radius, weight 1), so that each pixel holds the counts *summed* in a 20" aperture around it.
   Pixels with zero exposure contribute 0.  Direct (not FFT) convolution, so that integer
   counts give exact integer sums.
2. **False-probability map** (:func:`false_probability_map`), eq. (1):
   :math:`P_\mathrm{false} = P(C_\mathrm{data}, C_\mathrm{bgd}) = \gamma(C_\mathrm{data},
   C_\mathrm{bgd})/\Gamma(C_\mathrm{data})` (IDL ``igamma``) of the smoothed counts and
   background, returned as :math:`\log_{10} P` (finite also below float64 underflow via
   :func:`bkgjax.stats.intervals.log_false_probability`).  Zero-exposure pixels get
   :math:`\log_{10}P = 0`; the aperture background is floored at 1e-12 counts so that the map
   is never NaN / -inf.
3. **Candidates** (:func:`find_candidates`): local minima of :math:`\log_{10}P` in the 3x3
   neighbourhood with :math:`P \le 10^{-2.5}` (the paper ran SExtractor on
   :math:`-\log P`; a local-minimum search is the simplification used here).  Plateaus of equal
   values are merged (their centroid is the position) and, of two minima closer than
   ``min_separation`` (default 20", the aperture radius), only the deeper one is kept.
   Additions to the paper (both in :func:`detect`): positions are refined to the
   maximum-likelihood position of the PSF on the background (:func:`refine_positions`;
   ``refine=False`` keeps the map minimum as in the paper) and a weaker candidate is kept only
   if it is still significant (P <= 10^-2.5) over the background plus the PSF wings of the
   stronger candidates (:func:`prune_candidates`), the role played by SExtractor's
   deblending in the paper, so that Poisson ripples on a bright source's wings are not
   reported as sources.
4. **Aperture photometry** (:func:`aperture_sums`): total counts and background counts in a
   20" radius aperture (pixel centres within 20" of the position) and
   DET_ML :math:`= -\ln P_\mathrm{random}` (:func:`det_ml`).
5. **Deblending** (:func:`psf_overlap_matrix`, :func:`deblend`).  Our reading of Mullaney et
   al. (2015) as used in the paper: the net counts in aperture *i* are modelled as
   :math:`N_i = \sum_j M_{ij} S_j`, where :math:`S_j` is the total (PSF-integrated) counts of
   source *j* and :math:`M_{ij}` the fraction of source *j*'s PSF falling in aperture *i*
   (sampled at pixel centres, zero-exposure pixels excluded; pairs farther apart than 90" have
   :math:`M_{ij} = 0`).  The :math:`S_j \ge 0` are solved for jointly (non-negative least
   squares, exact when the system is square and the solution positive), the contamination
   :math:`\sum_{j\ne i} M_{ij} S_j` from the neighbours is added to the background
   ("deblended background counts", the paper's Table A1 column 8) and DET_ML is recomputed
   with the original total counts and the deblended background.  Simplifications: a single
   analytic/radial PSF for the whole field (no off-axis or energy dependence), and one joint
   linear solve instead of an iterative redistribution.
6. **Fluxes**: net counts = total - deblended background, 1-sigma errors from Gehrels (1986)
   eqs. (9)/(12) applied to the total counts (the background map is a model with negligible
   error); the 90 % upper limit is the exact Poisson upper limit of the total counts minus
   the background, used where the net counts are <= 0 (or the source fails the reliability
   threshold, when a threshold table is given).  Rate = counts / exposure at the source
   position (s); flux = rate x CF / (F20"/Ftot = 0.32) in erg cm^-2 s^-1 (section 3.3).

Threshold table (``detect(thresholds=...)``): an astropy Table / ECSV file with one row per
band and exposure interval, columns ``band`` (str, e.g. "3-24"), ``exp_min_ks``,
``exp_max_ks`` (exposure at the source position in ks, interval [min, max); use ``inf`` for
no upper bound), ``det_ml_95`` and ``det_ml_99`` (DET_ML thresholds at 95 and 99 %
reliability).  :func:`bkgjax.missions.nustar_survey.instrument.paper_thresholds` gives the paper's
Table 2 in this format.  The catalogue then gets DET_ML_THRESHOLD and RELIABLE
(DET_ML >= threshold at the chosen ``reliability``; False outside every interval).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax.scipy.signal import convolve2d

from bkgjax.missions.nustar_survey import instrument as ns
from bkgjax.stats import intervals

__all__ = [
    "log_false_probability_scipy",
    "false_probability_count_limit",
    "tophat_kernel",
    "tophat_sum",
    "false_probability_map",
    "find_candidates",
    "aperture_sums",
    "det_ml",
    "psf_overlap_matrix",
    "deblend",
    "refine_positions",
    "prune_candidates",
    "photometry",
    "detect",
]

_LN10 = math.log(10.0)
_BKG_FLOOR = 1e-12


def tophat_kernel(radius_pix: float) -> np.ndarray:
    """Circular top-hat: ones on the pixels whose centre lies within ``radius_pix`` of the
    central pixel, shape (2k+1, 2k+1) with k = floor(radius_pix)."""
    if not radius_pix > 0:
        raise ValueError(f"radius_pix must be > 0, got {radius_pix}")
    k = int(math.floor(radius_pix))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    return (xx**2 + yy**2 <= radius_pix**2).astype(np.float64)


def tophat_sum(image, radius_pix: float, exposure=None):
    """Sum of ``image`` within ``radius_pix`` of every pixel (zero padding outside the image);
    pixels with ``exposure <= 0`` contribute 0 when ``exposure`` is given."""
    image = jnp.asarray(image, dtype=jnp.float64)
    if exposure is not None:
        image = jnp.where(jnp.asarray(exposure) > 0, image, 0.0)
    return convolve2d(image, jnp.asarray(tophat_kernel(radius_pix)), mode="same")


def false_probability_map(counts, background, exposure, radius_pix: float):
    r""":math:`\log_{10} P_\mathrm{false}` map, eq. (1), of the 20"-top-hat-summed counts and
    background (see the module docstring); 0 on zero-exposure pixels, never NaN."""
    c = tophat_sum(counts, radius_pix, exposure)
    b = jnp.maximum(tophat_sum(background, radius_pix, exposure), _BKG_FLOOR)
    logp = intervals.log_false_probability(jnp.round(c, 9), b) / _LN10
    return jnp.where(jnp.asarray(exposure) > 0, logp, 0.0)


def log_false_probability_scipy(counts, background) -> np.ndarray:
    r"""NumPy/SciPy twin of :func:`bkgjax.stats.intervals.log_false_probability`:
    :math:`\ln P(C, B)` with :func:`scipy.special.gammainc` and the same leading series terms
    where :math:`P < 10^{-280}`; :math:`C \le 0` gives 0."""
    from scipy import special

    c, b = np.broadcast_arrays(np.atleast_1d(np.asarray(counts, np.float64)),
                               np.atleast_1d(np.asarray(background, np.float64)))
    pos = c > 0
    p = np.where(pos, special.gammainc(np.where(pos, c, 1.0), b), 1.0)
    tiny = p < 1e-280
    with np.errstate(divide="ignore"):
        out = np.log(np.where(tiny, 1.0, p))
    if np.any(tiny):
        n, bb = c[tiny], b[tiny]
        ratio = np.minimum(bb / (n + 1.0), 0.5)
        out[tiny] = n * np.log(bb) - bb - special.gammaln(n + 1.0) - np.log1p(-ratio)
    return out


def false_probability_count_limit(background_sum, threshold_log10p: float = ns.DETECTION_LOG10P,
                                  margin: float = 1e-6) -> np.ndarray:
    r"""Per pixel, the largest integer :math:`k` with :math:`\ln P(k, B) > \ln\alpha + m`,
    where :math:`\alpha = 10^{\rm threshold}` and :math:`m` = ``margin``.

    :math:`P(C, B)` (eq. 1, the regularised lower incomplete gamma function) decreases with
    :math:`C`, so every pixel whose 20" counts sum is :math:`C \le k` (integer or not) has
    :math:`P \ge P(k, B) > \alpha`: it can be neither a candidate nor the deeper neighbour of
    one, and the exact :math:`P` is needed only where :math:`C > k`.  The background map is
    the same for every simulation, so this is computed once per band
    (:func:`bkgjax.missions.nustar_survey.driver.simulate_and_detect`).  ``margin`` makes the
    screen conservative against the last-digit differences between SciPy's and JAX's
    incomplete gamma functions.  Integer bisection with :func:`scipy.special.gammainc` (and
    the leading series terms where it underflows, as
    :func:`bkgjax.stats.intervals.log_false_probability`)."""
    from scipy import special

    b = np.maximum(np.asarray(background_sum, dtype=np.float64), _BKG_FLOOR)
    if not np.all(np.isfinite(b)):
        raise ValueError("false_probability_count_limit: background sums must be finite")
    log_alpha = float(threshold_log10p) * math.log(10.0) + float(margin)
    # bracket around the Cornish-Fisher approximation of the Poisson quantile (a few
    # evaluations instead of a bisection from 0), widened until it is a bracket
    z = special.ndtri(min(math.exp(log_alpha), 0.5)) * -1.0 if log_alpha > -700 else 37.5
    guess = np.floor(b + z * np.sqrt(b) + (z * z - 1.0) / 6.0)
    lo = np.maximum(guess - 2.0, 0.0)
    hi = guess + 3.0
    while True:  # ln P(lo) > ln alpha (P(0, B) = 1), ln P(hi) <= ln alpha
        bad_lo = (lo > 0) & (log_false_probability_scipy(lo, b) <= log_alpha)
        bad_hi = log_false_probability_scipy(hi, b) > log_alpha
        if not (np.any(bad_lo) or np.any(bad_hi)):
            break
        width = hi - lo + 1.0
        lo = np.where(bad_lo, np.maximum(lo - 2.0 * width, 0.0), lo)
        hi = np.where(bad_hi, hi + 2.0 * width, hi)
    while np.any(hi - lo > 1):
        mid = np.floor(0.5 * (lo + hi))
        above = log_false_probability_scipy(mid, b) > log_alpha
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return lo


def find_candidates(logp_map, threshold: float = ns.DETECTION_LOG10P, *,
                    min_separation_pix: float = 0.0):
    """Local minima of ``logp_map`` (3x3 neighbourhood) with value <= ``threshold``.

    Returns ``(y, x, log10p)`` NumPy arrays (0-based pixel coordinates, plateau centroids),
    sorted by increasing log10 P; of minima closer than ``min_separation_pix`` only the
    deepest is kept.
    """
    from scipy import ndimage

    logp = np.asarray(logp_map, dtype=float)
    is_min = (logp == ndimage.minimum_filter(logp, size=3, mode="nearest")) & (logp <= threshold)
    labels, n = ndimage.label(is_min, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    index = np.arange(1, n + 1)
    centres = np.array(ndimage.center_of_mass(is_min, labels, index), dtype=float).reshape(-1, 2)
    values = np.asarray(ndimage.minimum(logp, labels, index), dtype=float)
    order = np.argsort(values, kind="stable")
    keep = []
    for i in order:
        if all((centres[i, 0] - centres[j, 0]) ** 2 + (centres[i, 1] - centres[j, 1]) ** 2
               >= min_separation_pix**2 for j in keep):
            keep.append(i)
    keep = np.asarray(keep, dtype=int)
    return centres[keep, 0], centres[keep, 1], values[keep]


def _aperture_pixels(shape, x, y, radius_pix):
    """(iy, ix) of the pixels whose centre is within radius_pix of (x, y) (0-based)."""
    k = int(math.ceil(radius_pix)) + 1
    x0, y0 = int(round(x)), int(round(y))
    ys = np.arange(max(y0 - k, 0), min(y0 + k + 1, shape[0]))
    xs = np.arange(max(x0 - k, 0), min(x0 + k + 1, shape[1]))
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius_pix**2
    return yy[inside], xx[inside]


def aperture_sums(image, x, y, radius_pix: float, exposure=None) -> np.ndarray:
    """Sum of ``image`` over the pixels whose centre lies within ``radius_pix`` of each
    (x, y) (0-based pixel coordinates); pixels with ``exposure <= 0`` are skipped."""
    image = np.asarray(image, dtype=float)
    if exposure is not None:
        image = np.where(np.asarray(exposure) > 0, image, 0.0)
    out = np.empty(len(np.atleast_1d(x)))
    for k, (xi, yi) in enumerate(zip(np.atleast_1d(x), np.atleast_1d(y))):
        iy, ix = _aperture_pixels(image.shape, xi, yi, radius_pix)
        out[k] = image[iy, ix].sum()
    return out


def refine_positions(counts, background, exposure, x, y, radius_pix: float, *,
                     pixel_scale_arcsec: float, psf=None, search_pix: float = 4.0,
                     step_pix: float = 0.25, source_counts=None):
    r"""Maximum-likelihood position of a PSF on the background, near each candidate.

    An addition to the paper (which keeps the local minimum of the false-probability map:
    the 20" top-hat map is flat-topped, so its minimum scatters by a few pixels).  For every
    trial position on a grid of ``step_pix`` within ``search_pix`` of the candidate, the
    Poisson log-likelihood :math:`\sum_p n_p \ln(B_p + S\,\mathrm{PSF}_p\Delta^2)
    - (B_p + S\,\mathrm{PSF}_p\Delta^2)` over the pixels within 1.5 ``radius_pix`` (with
    exposure, a fixed set around the candidate) is maximised over the source counts S >= 0
    (Newton steps); a 0.5-pixel grid is followed by a ``step_pix / 2`` grid around its best
    point, which is returned (0-based pixels).  Neighbouring sources are not modelled.
    """
    psf = psf or ns.DEFAULT_PSF
    counts = np.asarray(counts, float)
    background = np.asarray(background, float)
    good = np.asarray(exposure) > 0
    x = np.array(x, dtype=float)
    y = np.array(y, dtype=float)
    x0_all, y0_all = x.copy(), y.copy()
    for k in range(len(x)):
        iy, ix = _aperture_pixels(counts.shape, x[k], y[k], 1.5 * radius_pix)
        sel = good[iy, ix]
        iy, ix = iy[sel], ix[sel]
        if iy.size == 0:
            continue
        n = counts[iy, ix]
        b = np.maximum(background[iy, ix], 1e-9)
        if source_counts is not None:
            for j in range(len(x0_all)):
                if j != k and source_counts[j] > 0:
                    r_j = np.hypot(ix - x0_all[j], iy - y0_all[j]) * pixel_scale_arcsec
                    b = b + source_counts[j] * psf.psf_profile(r_j) * pixel_scale_arcsec**2
        cx, cy = x[k], y[k]
        # coarse grid, then a fine one around the coarse optimum (same pixel set throughout)
        for half, step in ((search_pix, 0.5), (0.5, step_pix / 2.0)):
            offsets = np.arange(-half, half + 0.5 * step, step)
            gx, gy = (g.ravel() for g in np.meshgrid(offsets, offsets))
            tx, ty = cx + gx[:, None], cy + gy[:, None]
            r = np.hypot(ix[None, :] - tx, iy[None, :] - ty)
            f = psf.psf_profile(r * pixel_scale_arcsec) * pixel_scale_arcsec**2
            s_counts = np.maximum(n.sum() - b.sum(), 1.0) / np.maximum(f.sum(1), 1e-12)
            for _ in range(8):
                model = b + s_counts[:, None] * f
                grad = ((n / model - 1.0) * f).sum(1)
                hess = -((n / model**2) * f**2).sum(1)
                s_counts = np.maximum(s_counts - grad / np.minimum(hess, -1e-12), 0.0)
            model = b + s_counts[:, None] * f
            best = int(np.argmax((n * np.log(model) - model).sum(1)))
            cx, cy = cx + gx[best], cy + gy[best]
        x[k], y[k] = cx, cy
    return x, y


def prune_candidates(total_counts, background_counts, overlap,
                     threshold: float = ns.DETECTION_LOG10P):
    r"""Keep a candidate only if it is significant over the background *plus* the PSF wings of
    the (more significant) candidates already kept.

    Candidates are taken in the given order (deepest :math:`\log_{10}P` first); candidate *i*
    is kept if :math:`\log_{10} P(C_i, B_i + \sum_{j\,\mathrm{kept}} M_{ij} S_j) \le`
    ``threshold``, with :math:`S_j = \max(C_j - B_j - \mathrm{contamination}_j, 0)/M_{jj}`.
    This plays the role of SExtractor's deblending contrast in the paper: Poisson ripples on
    the wings of a bright source are not reported as separate detections.  Returns a boolean
    mask and the estimated total source counts S (0 where not kept).
    """
    total = np.asarray(total_counts, dtype=float)
    bkg = np.asarray(background_counts, dtype=float)
    m = np.asarray(overlap, dtype=float)
    keep = np.zeros(total.size, dtype=bool)
    s = np.zeros(total.size)
    for i in range(total.size):
        contamination = float(m[i, keep] @ s[keep])
        b = max(bkg[i] + contamination, _BKG_FLOOR)
        logp = float(intervals.log_false_probability(total[i], b)) / _LN10
        if logp <= threshold:
            keep[i] = True
            s[i] = max(total[i] - b, 0.0) / max(m[i, i], 1e-12)
    return keep, s


def det_ml(total_counts, background_counts):
    r"""DET_ML :math:`= -\ln P_\mathrm{random} = -\ln P(C_\mathrm{tot}, C_\mathrm{bkg})` from
    the 20"-aperture total and (deblended) background counts (section 3.2)."""
    b = jnp.maximum(jnp.asarray(background_counts, dtype=jnp.float64), _BKG_FLOOR)
    return intervals.det_ml(jnp.asarray(total_counts, dtype=jnp.float64), b)


def psf_overlap_matrix(x, y, radius_pix: float, pixel_scale_arcsec: float, *, psf=None,
                       exposure=None, shape=None, max_separation_arcsec=ns.DEBLEND_RADIUS_ARCSEC):
    r""":math:`M_{ij}`: fraction of source *j*'s PSF falling in the aperture of source *i*.

    :math:`M_{ij} = \sum_{p\in A_i} \mathrm{PSF}(|p - s_j|)\,\Delta^2`, with the PSF (arcsec^-2)
    sampled at the pixel centres of aperture :math:`A_i` (zero-exposure pixels excluded when
    ``exposure`` is given) and :math:`\Delta` the pixel side (arcsec); 0 for
    :math:`i \ne j` farther apart than ``max_separation_arcsec``.
    """
    psf = psf or ns.DEFAULT_PSF
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    if shape is None:
        shape = np.asarray(exposure).shape
    good = None if exposure is None else np.asarray(exposure) > 0
    n = len(x)
    m = np.zeros((n, n))
    max_sep_pix = max_separation_arcsec / pixel_scale_arcsec
    for i in range(n):
        iy, ix = _aperture_pixels(shape, x[i], y[i], radius_pix)
        if good is not None:
            sel = good[iy, ix]
            iy, ix = iy[sel], ix[sel]
        for j in range(n):
            sep = math.hypot(x[i] - x[j], y[i] - y[j])
            if i != j and sep > max_sep_pix:
                continue
            r = np.hypot(ix - x[j], iy - y[j]) * pixel_scale_arcsec
            m[i, j] = psf.psf_profile(r).sum() * pixel_scale_arcsec**2
    return m


def deblend(total_counts, background_counts, overlap):
    """Deblended background counts: background + the neighbours' PSF contamination.

    Solves ``overlap @ S = total - background`` for the intrinsic source counts S >= 0
    (non-negative least squares) and returns ``(background + contamination, S)`` with
    ``contamination_i = sum_{j != i} overlap_ij S_j`` (module docstring, step 5).
    """
    from scipy.optimize import nnls

    total = np.asarray(total_counts, dtype=float)
    bkg = np.asarray(background_counts, dtype=float)
    m = np.asarray(overlap, dtype=float)
    if total.size == 0:
        return bkg.copy(), np.zeros(0)
    s, _ = nnls(m, total - bkg)
    contamination = m @ s - np.diag(m) * s
    return bkg + contamination, s


def photometry(total_counts, background_counts, exposure_s, band="3-24", *,
               aperture_correction=ns.APERTURE_CORRECTION, upper_limit=None):
    """Net counts, Gehrels 1-sigma errors, 90 % upper limits, rates and fluxes (step 6).

    ``upper_limit`` (bool array) forces the 90 % upper limit; it is always used where the net
    counts are <= 0.  Returns a dict of NumPy arrays: NET_COUNTS, NET_COUNTS_ERR_LO,
    NET_COUNTS_ERR_HI, NET_COUNTS_UL90, UPPER_LIMIT, RATE, RATE_ERR_LO, RATE_ERR_HI (counts/s;
    RATE is the 90 % upper limit rate where UPPER_LIMIT), FLUX, FLUX_ERR_LO, FLUX_ERR_HI
    (erg cm^-2 s^-1, total flux = aperture flux / ``aperture_correction``).
    """
    info = ns.band_info(band)
    total = np.asarray(total_counts, dtype=float)
    bkg = np.asarray(background_counts, dtype=float)
    expo = np.asarray(exposure_s, dtype=float)
    net = total - bkg
    err_hi = np.asarray(intervals.gehrels_upper(total, 1.0)) - total
    err_lo = total - np.asarray(intervals.gehrels_lower(total, 1.0))
    if total.size:
        ul = np.asarray(intervals.poisson_upper_limit(total, confidence_level=0.9)) - bkg
    else:
        ul = np.zeros(0)
    ul = np.maximum(ul, 0.0)
    is_ul = net <= 0
    if upper_limit is not None:
        is_ul = is_ul | np.asarray(upper_limit, dtype=bool)
    safe_expo = np.where(expo > 0, expo, np.inf)
    rate = np.where(is_ul, ul, net) / safe_expo
    factor = info.cf / aperture_correction
    return {
        "NET_COUNTS": net, "NET_COUNTS_ERR_LO": err_lo, "NET_COUNTS_ERR_HI": err_hi,
        "NET_COUNTS_UL90": ul, "UPPER_LIMIT": is_ul,
        "RATE": rate, "RATE_ERR_LO": err_lo / safe_expo, "RATE_ERR_HI": err_hi / safe_expo,
        "FLUX": rate * factor, "FLUX_ERR_LO": err_lo / safe_expo * factor,
        "FLUX_ERR_HI": err_hi / safe_expo * factor,
    }


def threshold_lookup(table, band, exposure_ks, reliability):
    col = {95: "det_ml_95", 99: "det_ml_99"}.get(int(reliability))
    if col is None:
        raise ValueError(f"reliability must be 95 or 99, got {reliability}")
    out = np.full(len(exposure_ks), np.nan)
    names = np.array([str(b).strip() for b in table["band"]])
    rows = table[names == band]
    for row in rows:
        hi = float(row["exp_max_ks"])
        hi = math.inf if not np.isfinite(hi) else hi
        sel = (exposure_ks >= float(row["exp_min_ks"])) & (exposure_ks < hi)
        out[sel & np.isnan(out)] = float(row[col])
    return out


def detect(images, band: str = "3-24", *, threshold_log10p: float = ns.DETECTION_LOG10P,
           aperture_arcsec: float = ns.APERTURE_RADIUS_ARCSEC,
           deblend_arcsec: float = ns.DEBLEND_RADIUS_ARCSEC,
           min_separation_arcsec: float | None = None, psf=None, thresholds=None,
           reliability: int = 95, refine: bool = True):
    """Source catalogue of a :class:`bkgjax.missions.nustar_survey.images.SurveyImages` (module docstring).

    Columns: ID, RA, DEC (deg), X, Y (FITS 1-based pixels), LOG10_PFALSE (map minimum),
    EXPOSURE (s), DET_ML (deblended), DET_ML_RAW, TOTAL_COUNTS, BKG_COUNTS (deblended),
    BKG_COUNTS_RAW, NET_COUNTS, NET_COUNTS_ERR_LO/HI (Gehrels 1 sigma), NET_COUNTS_UL90,
    UPPER_LIMIT, RATE (+ERR_LO/HI, counts/s), FLUX (+ERR_LO/HI, erg cm^-2 s^-1, aperture
    corrected) and, with ``thresholds`` (Table or path), DET_ML_THRESHOLD and RELIABLE.
    """
    from astropy import units as u
    from astropy.table import Table

    info = ns.band_info(band)
    if thresholds is not None and not hasattr(thresholds, "colnames"):
        from bkgjax.missions.nustar_survey.images import read_thresholds

        thresholds = read_thresholds(thresholds)
    if thresholds is not None:
        threshold_lookup(thresholds[:0], info.name, np.zeros(0), reliability)  # checks
    scale = float(images.pixel_scale_arcsec)
    radius_pix = aperture_arcsec / scale
    min_sep = aperture_arcsec if min_separation_arcsec is None else min_separation_arcsec
    counts, bkg, expo = images.counts, images.background, images.exposure
    logp = np.asarray(false_probability_map(counts, bkg, expo, radius_pix))
    y, x, minp = find_candidates(logp, threshold_log10p, min_separation_pix=min_sep / scale)
    if refine and len(x):
        x, y = refine_positions(counts, bkg, expo, x, y, radius_pix,
                                pixel_scale_arcsec=scale, psf=psf)
    if len(x):
        total = aperture_sums(counts, x, y, radius_pix, expo)
        bkg_raw = aperture_sums(bkg, x, y, radius_pix, expo)
        # the whole PSF (no 90" cut) when judging whether a candidate is a wing ripple
        overlap = psf_overlap_matrix(x, y, radius_pix, scale, psf=psf, exposure=expo,
                                     max_separation_arcsec=math.inf)
        keep, s_est = prune_candidates(total, bkg_raw, overlap, threshold_log10p)
        x, y, minp, s_est = x[keep], y[keep], minp[keep], s_est[keep]
        if refine and len(x) > 1:
            x, y = refine_positions(counts, bkg, expo, x, y, radius_pix, search_pix=2.0,
                                    pixel_scale_arcsec=scale, psf=psf, source_counts=s_est)
    iy = np.clip(np.round(y).astype(int), 0, counts.shape[0] - 1)
    ix = np.clip(np.round(x).astype(int), 0, counts.shape[1] - 1)
    exposure_src = np.asarray(expo)[iy, ix] if len(x) else np.zeros(0)
    total = aperture_sums(counts, x, y, radius_pix, expo)
    bkg_raw = aperture_sums(bkg, x, y, radius_pix, expo)
    overlap = psf_overlap_matrix(x, y, radius_pix, scale, psf=psf, exposure=expo,
                                 max_separation_arcsec=deblend_arcsec)
    bkg_deb, _ = deblend(total, bkg_raw, overlap)
    dml_raw = np.asarray(det_ml(total, bkg_raw)) if len(x) else np.zeros(0)
    dml = np.asarray(det_ml(total, bkg_deb)) if len(x) else np.zeros(0)
    reliable = thr = None
    if thresholds is not None:
        thr = threshold_lookup(thresholds, info.name, exposure_src / 1e3, reliability)
        reliable = np.where(np.isfinite(thr), dml >= np.nan_to_num(thr, nan=np.inf), False)
    phot = photometry(total, bkg_deb, exposure_src, info.name,
                      upper_limit=None if reliable is None else ~reliable)
    if len(x):
        ra, dec = images.wcs.pixel_to_world_values(x, y)
    else:
        ra = dec = np.zeros(0)
    cts, cps, flu = u.ct, u.ct / u.s, u.erg / u.cm**2 / u.s
    table = Table()
    table["ID"] = np.arange(1, len(x) + 1)
    table["RA"] = np.asarray(ra, dtype=float) % 360.0 * u.deg
    table["DEC"] = np.asarray(dec, dtype=float) * u.deg
    table["X"] = (x + 1.0) * u.pix
    table["Y"] = (y + 1.0) * u.pix
    table["LOG10_PFALSE"] = minp
    table["EXPOSURE"] = exposure_src * u.s
    table["DET_ML"] = dml
    table["DET_ML_RAW"] = dml_raw
    table["TOTAL_COUNTS"] = total * cts
    table["BKG_COUNTS"] = bkg_deb * cts
    table["BKG_COUNTS_RAW"] = bkg_raw * cts
    for name in ("NET_COUNTS", "NET_COUNTS_ERR_LO", "NET_COUNTS_ERR_HI", "NET_COUNTS_UL90"):
        table[name] = phot[name] * cts
    table["UPPER_LIMIT"] = phot["UPPER_LIMIT"]
    for name in ("RATE", "RATE_ERR_LO", "RATE_ERR_HI"):
        table[name] = phot[name] * cps
    for name in ("FLUX", "FLUX_ERR_LO", "FLUX_ERR_HI"):
        table[name] = phot[name] * flu
    if thresholds is not None:
        table["DET_ML_THRESHOLD"] = thr
        table["RELIABLE"] = reliable
    table.meta.update({"BAND": info.name, "CF": info.cf, "APCORR": ns.APERTURE_CORRECTION,
                       "APRAD": aperture_arcsec, "LOGPTHR": threshold_log10p,
                       "DEBLRAD": deblend_arcsec})
    return table
