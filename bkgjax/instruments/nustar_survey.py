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
    :func:`bkgjax.pipelines.survey_detection.detect` (columns ``band``, ``exp_min_ks``,
    ``exp_max_ks``, ``det_ml_95``, ``det_ml_99``).  They were calibrated on the NEP-TDF
    simulations; for another survey, compute your own."""
    from astropy.table import Table

    rows = []
    for band in BANDS:
        for k, (lo, hi) in enumerate(_TABLE2_EXPOSURE_KS):
            rows.append((band, lo, hi, _TABLE2_95[band][k], _TABLE2_99[band][k]))
    return Table(rows=rows, names=("band", "exp_min_ks", "exp_max_ks", "det_ml_95",
                                   "det_ml_99"))
