r"""NuSTAR deep-survey constants: energy bands, count-rate-to-flux factors and the PSF.

Reference: Zhao et al. 2021, MNRAS 508, 5176 (the NuSTAR NEP-TDF survey,
``nustar_nep_survey_detection.txt``), sections 3 and 3.3.

* Bands 3-24, 3-8, 8-24, 8-16 and 16-24 keV with count-rate-to-flux conversion factors
  CF = 4.86, 3.39, 7.08, 5.17 and 16.2 x 1e-11 erg cm^-2 count^-1 (section 3; WebPIMMS,
  absorbed power law with Gamma = 1.8 as assumed in the paper), i.e.
  :math:`F_{20''} = \mathrm{rate} \times CF`.
* Aperture correction :math:`F_{20''}/F_\mathrm{tot} = 0.32` for the 20" radius photometry
  aperture (section 3.3, "calculated from the NuSTAR PSF"), the same for all bands.
* An analytic PSF approximation (:class:`KingPSF`): a King (Moffat) profile

  .. math:: \mathrm{PSF}(r) \propto \left[1 + (r/r_c)^2\right]^{-\beta},\qquad
            \mathrm{EEF}(r) = 1 - \left[1 + (r/r_c)^2\right]^{1-\beta}

  with :math:`r_c = 30.24''`, :math:`\beta = 2.063`, solved so that the half-power diameter
  is 58" (EEF(29") = 0.500) and EEF(20") = 0.320 (the paper's aperture correction).  Other
  numbers of this profile: FWHM 38" (the true NuSTAR core is sharper, FWHM ~18"; a
  two-parameter profile cannot match core and wings at once; the enclosed-energy curve, which
  is what photometry and deblending use, is the part that is matched), EEF(60") = 0.82,
  EEF(90") = 0.91, EEF(150") = 0.97.
* :class:`RadialPSF`: a user-supplied radial profile table (r, value), e.g. from the CALDB
  PSF, with the same ``psf_profile`` / ``encircled_fraction`` interface.

Units: radii in arcsec, ``psf_profile`` in arcsec^-2 (normalised so that its integral over the
plane is 1), ``encircled_fraction`` dimensionless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Band",
    "BANDS",
    "APERTURE_RADIUS_ARCSEC",
    "APERTURE_CORRECTION",
    "DEBLEND_RADIUS_ARCSEC",
    "DETECTION_LOG10P",
    "KingPSF",
    "RadialPSF",
    "DEFAULT_PSF",
    "band_info",
    "psf_profile",
    "encircled_fraction",
    "paper_thresholds",
    "Pointing",
    "NEP_POINTINGS",
    "DETECTOR_SIDE_ARCSEC",
    "BAND_MEAN_ENERGY_KEV",
    "vignetting",
    "survey_wcs",
    "exposure_maps",
    "PAPER_SIMULATION_COUNTS",
]

APERTURE_RADIUS_ARCSEC = 20.0
"""Top-hat smoothing and photometry aperture radius (section 3.2)."""
APERTURE_CORRECTION = 0.32
"""F(20")/F(total) (section 3.3)."""
DEBLEND_RADIUS_ARCSEC = 90.0
"""Neighbours closer than this contaminate each other's aperture (section 3.2)."""
DETECTION_LOG10P = -2.5
"""Detection limit P_false <= 10^-2.5 (~3 sigma, section 3.2)."""


@dataclass(frozen=True)
class Band:
    """One survey energy band: ``name`` ("3-24"), ``emin_kev``, ``emax_kev`` and the
    count-rate-to-flux factor ``cf`` in erg cm^-2 count^-1 (section 3)."""

    name: str
    emin_kev: float
    emax_kev: float
    cf: float


BANDS = {
    "3-24": Band("3-24", 3.0, 24.0, 4.86e-11),
    "3-8": Band("3-8", 3.0, 8.0, 3.39e-11),
    "8-24": Band("8-24", 8.0, 24.0, 7.08e-11),
    "8-16": Band("8-16", 8.0, 16.0, 5.17e-11),
    "16-24": Band("16-24", 16.0, 24.0, 16.2e-11),
}


def band_info(name: str) -> Band:
    """The :class:`Band` called ``name``; ``ValueError`` listing the known bands otherwise."""
    key = str(name).strip().lower().replace("kev", "").strip()
    if key not in BANDS:
        raise ValueError(f"unknown NuSTAR survey band {name!r}; known bands: "
                         f"{', '.join(BANDS)} (keV)")
    return BANDS[key]


@dataclass(frozen=True)
class KingPSF:
    r"""King profile :math:`\propto [1 + (r/r_c)^2]^{-\beta}` (``r_core`` in arcsec, beta > 1).

    Normalisation: :math:`\int 2\pi r\,\mathrm{PSF}\,dr = 1` gives the amplitude
    :math:`(\beta - 1)/(\pi r_c^2)` arcsec^-2.
    """

    r_core: float = 30.2377
    beta: float = 2.06274

    def __post_init__(self):
        if not (self.r_core > 0 and self.beta > 1):
            raise ValueError(f"KingPSF needs r_core > 0 and beta > 1, got {self}")

    def psf_profile(self, r_arcsec):
        r = np.asarray(r_arcsec, dtype=float)
        amp = (self.beta - 1.0) / (math.pi * self.r_core**2)
        return amp * (1.0 + (r / self.r_core) ** 2) ** (-self.beta)

    def encircled_fraction(self, r_arcsec):
        r = np.asarray(r_arcsec, dtype=float)
        return 1.0 - (1.0 + (r / self.r_core) ** 2) ** (1.0 - self.beta)

    def half_power_diameter(self) -> float:
        """Diameter (arcsec) enclosing half of the flux: 2 r_c sqrt(2^(1/(beta-1)) - 1)."""
        return 2.0 * self.r_core * math.sqrt(2.0 ** (1.0 / (self.beta - 1.0)) - 1.0)


@dataclass(frozen=True)
class RadialPSF:
    """User radial PSF table: ``r_arcsec`` (increasing, >= 0) and ``value`` (surface
    brightness, any normalisation).  Linear interpolation between the tabulated points, 0
    beyond the last one; normalised so that the integral out to ``r_arcsec[-1]`` is 1 (the
    trapezoid rule on 2 pi r value)."""

    r_arcsec: tuple
    value: tuple

    def __post_init__(self):
        r = np.asarray(self.r_arcsec, dtype=float)
        v = np.asarray(self.value, dtype=float)
        if r.ndim != 1 or r.shape != v.shape or r.size < 2:
            raise ValueError("RadialPSF needs 1-D r_arcsec and value of the same length >= 2")
        if np.any(np.diff(r) <= 0) or r[0] < 0 or np.any(v < 0) or not np.all(np.isfinite(v)):
            raise ValueError("RadialPSF: r_arcsec must increase from >= 0 and value be finite "
                             ">= 0")
        object.__setattr__(self, "r_arcsec", tuple(r.tolist()))
        object.__setattr__(self, "value", tuple(v.tolist()))

    def _cumulative(self):
        r = np.asarray(self.r_arcsec)
        v = np.asarray(self.value)
        integrand = 2.0 * math.pi * r * v
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1])
                                               * np.diff(r))])
        return r, v, cum

    def psf_profile(self, r_arcsec):
        r, v, cum = self._cumulative()
        return np.interp(np.asarray(r_arcsec, dtype=float), r, v, right=0.0) / cum[-1]

    def encircled_fraction(self, r_arcsec):
        r, _, cum = self._cumulative()
        return np.interp(np.asarray(r_arcsec, dtype=float), r, cum / cum[-1], right=1.0)


DEFAULT_PSF = KingPSF()
"""The King approximation tuned to HPD = 58" and EEF(20") = 0.32 (module docstring)."""


def psf_profile(r_arcsec, psf=None):
    """PSF surface brightness (arcsec^-2, unit integral) at radius ``r_arcsec``."""
    return (psf or DEFAULT_PSF).psf_profile(r_arcsec)


def encircled_fraction(r_arcsec, psf=None):
    """Fraction of the PSF flux within radius ``r_arcsec``."""
    return (psf or DEFAULT_PSF).encircled_fraction(r_arcsec)


# Zhao et al. (2021) Table 2: DET_ML thresholds at 99 and 95 per cent reliability for the
# exposure intervals 20-200, 200-500 and > 500 ks.
_TABLE2_99 = {"3-24": (13.53, 12.00, 10.99), "3-8": (13.95, 12.18, 11.02),
              "8-24": (15.48, 13.75, 13.13), "8-16": (14.43, 13.10, 12.30),
              "16-24": (16.35, 15.94, 15.72)}
_TABLE2_95 = {"3-24": (11.47, 9.89, 8.89), "3-8": (11.65, 10.10, 8.89),
              "8-24": (12.99, 11.54, 10.67), "8-16": (12.35, 10.88, 10.22),
              "16-24": (15.35, 14.42, 14.05)}
_TABLE2_EXPOSURE_KS = ((20.0, 200.0), (200.0, 500.0), (500.0, math.inf))


def paper_thresholds():
    """The paper's Table 2 thresholds in the threshold-table format of
    :func:`bkgjax.missions.nustar_survey.detection.detect` (columns ``band``, ``exp_min_ks``,
    ``exp_max_ks``, ``det_ml_95``, ``det_ml_99``).  They were calibrated on the NEP-TDF
    simulations; for another survey, compute your own."""
    from astropy.table import Table

    rows = []
    for band in BANDS:
        for k, (lo, hi) in enumerate(_TABLE2_EXPOSURE_KS):
            rows.append((band, lo, hi, _TABLE2_95[band][k], _TABLE2_99[band][k]))
    return Table(rows=rows, names=("band", "exp_min_ks", "exp_max_ks", "det_ml_95",
                                   "det_ml_99"))


# ---------------------------------------------------------------------------------------------
# Survey field geometry: pointings, vignetting, exposure and background mosaics
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pointing:
    """One NuSTAR observation of a survey: ``obsid``, aim point ``ra_deg``/``dec_deg``
    (ICRS, deg), on-time ``exposure_ks`` per module (after screening), ``epoch`` (1-based
    index used by the variability test) and ``roll_deg`` (position angle of the detector
    axes, deg east of north; the paper does not list it, 0 by default)."""

    obsid: str
    ra_deg: float
    dec_deg: float
    exposure_ks: float
    epoch: int = 1
    roll_deg: float = 0.0

    def __post_init__(self):
        if not (self.exposure_ks > 0 and -90 <= self.dec_deg <= 90):
            raise ValueError(f"Pointing {self.obsid}: needs exposure_ks > 0 and |dec| <= 90, "
                             f"got {self.exposure_ks} ks, dec {self.dec_deg}")


NEP_POINTINGS = (
    Pointing("60511001002", 260.8728, 65.8221, 73.5, 1),
    Pointing("60511002002", 260.7727, 65.8220, 77.6, 1),
    Pointing("60511003002", 260.6360, 65.8246, 68.7, 1),
    Pointing("60511004002", 260.5416, 65.9071, 89.8, 2),
    Pointing("60511005002", 260.7314, 65.8736, 84.7, 2),
    Pointing("60511006002", 260.9080, 65.9067, 83.0, 2),
    Pointing("60511007002", 260.5283, 65.7657, 65.2, 3),
    Pointing("60511008001", 260.7546, 65.7483, 70.2, 3),
    Pointing("60511009001", 260.9508, 65.7456, 68.3, 3),
)
"""The nine NEP-TDF observations of Zhao et al. (2021) Table 1 (681 ks in three epochs:
2019 Sep/Oct, 2020 Jan, 2020 Mar)."""

DETECTOR_SIDE_ARCSEC = 64 * 12.3
"""Side of the focal-plane field of view: 2 x 32 RAW pixels of 12.3" per axis (the shipped
detector geometry, :mod:`bkgjax.missions.nustar_cxb.geometry`), 13.1'.  Chip gaps are neglected."""

BAND_MEAN_ENERGY_KEV = {"3-24": 9.88, "3-8": 5.42, "8-24": 13.02, "8-16": 13.02,
                        "16-24": 13.02}
"""Spectrally weighted mean energies used for the vignetting (section 2.2; as the paper, the
8-24 keV exposure map serves the 8-16 and 16-24 keV bands)."""


def vignetting(offaxis_arcmin, energy_kev, half_angle_10kev_arcmin: float = 4.5,
               energy_slope: float = 0.3):
    r"""Approximate NuSTAR optics vignetting (effective-area fraction relative to on-axis).

    .. math:: V(\theta, E) = \left[1 + (\theta/\theta_{1/2}(E))^2\right]^{-1},\qquad
              \theta_{1/2}(E) = 4.5'\,(E / 10\,\mathrm{keV})^{-0.3}

    A smooth stand-in for the CALDB vignetting used by ``nuexpomap`` (half response 4.5' off
    axis at 10 keV, narrower at higher energy); not a calibration product.  With the Table-1
    pointings it gives a maximum FPMA+B exposure of 736 ks (3-24 keV) over 0.143 deg^2
    above 20 ks, of which 0.088 / 0.042 / 0.014 deg^2 in 20-200 / 200-500 / > 500 ks.
    """
    theta_half = half_angle_10kev_arcmin * (np.asarray(energy_kev, float) / 10.0) \
        ** (-energy_slope)
    return 1.0 / (1.0 + (np.asarray(offaxis_arcmin, float) / theta_half) ** 2)


def survey_wcs(center_ra_deg: float, center_dec_deg: float, size_arcmin: float,
               pixel_scale_arcsec: float = 2.46):
    """A TAN WCS (north up, east left) and the image shape for a square mosaic."""
    from astropy.wcs import WCS

    n = int(math.ceil(size_arcmin * 60.0 / pixel_scale_arcsec))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [center_ra_deg, center_dec_deg]
    wcs.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]
    wcs.wcs.cdelt = [-pixel_scale_arcsec / 3600.0, pixel_scale_arcsec / 3600.0]
    wcs.wcs.radesys = "ICRS"
    return wcs, (n, n)


def exposure_maps(pointings, wcs, shape, band: str = "3-24", modules: int = 2,
                  side_arcsec: float = DETECTOR_SIDE_ARCSEC):
    """(vignetted, unvignetted) exposure mosaics in s, summed over ``pointings`` and
    ``modules`` (FPMA + FPMB, taken equal): each pointing covers a square of side
    ``side_arcsec`` rotated by its roll, weighted by :func:`vignetting` at the band's mean
    energy (:data:`BAND_MEAN_ENERGY_KEV`) for the vignetted map."""
    band = band_info(band).name
    energy = BAND_MEAN_ENERGY_KEV[band]
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    ra, dec = wcs.pixel_to_world_values(xx.ravel(), yy.ravel())
    ra = np.radians(ra).reshape(shape)
    dec = np.radians(dec).reshape(shape)
    vig = np.zeros(shape)
    flat = np.zeros(shape)
    half = side_arcsec / 2.0
    for p in pointings:
        ra0, dec0 = math.radians(p.ra_deg), math.radians(p.dec_deg)
        # gnomonic offsets (arcsec) of every pixel from the aim point
        cosc = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
        xi = np.cos(dec) * np.sin(ra - ra0) / cosc
        eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec)
               * np.cos(ra - ra0)) / cosc
        xi, eta = np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0
        c, s = math.cos(math.radians(p.roll_deg)), math.sin(math.radians(p.roll_deg))
        u, v = c * xi - s * eta, s * xi + c * eta
        inside = (np.abs(u) <= half) & (np.abs(v) <= half) & (cosc > 0)
        t = p.exposure_ks * 1e3 * modules
        off = np.hypot(xi, eta) / 60.0
        vig += np.where(inside, t * vignetting(off, energy), 0.0)
        flat += np.where(inside, t, 0.0)
    return vig, flat


PAPER_SIMULATION_COUNTS = {
    "3-24": {"detections": 393, "matched": 50, "above_99": 14.4, "above_95": 21.1},
    "3-8": {"detections": 186, "matched": 46, "above_99": 11.4, "above_95": 17.0},
    "8-24": {"detections": 191, "matched": 37, "above_99": 4.8, "above_95": 7.4},
    "8-16": {"detections": 184, "matched": 37, "above_99": 5.6, "above_95": 8.5},
    "16-24": {"detections": 180, "matched": 21, "above_99": 0.5, "above_95": 0.6},
}
"""Zhao et al. (2021) Table 2, mean numbers per simulated map: SExtractor detections, those
matched to an input source within 30", and detections above the 99 and 95 % reliability
thresholds.  A check of the logN-logS and of the sensitivity together."""
