r"""Simulated NuSTAR stray-light CXB campaigns: truth, expected pixel rates, binned cubes.

Reference: Krivonos et al. 2021, MNRAS 502, 3966 (``nustar_cxb_stray_light``), sections 2, 4
and 5, Tables 2-4.  The simulator produces, from the same :class:`~bkgjax.missions.nustar_cxb.geometry.
NustarGeometry` that the analysis uses, data with the structure of the paper's data sets:

* the six data sets of Table 2 (:data:`PAPER_DATASETS`), each observed by FPMA and FPMB in
  science (SCI, sky visible) and Earth-occulted (OCC) mode;
* a spatially flat instrumental background (continuum + lines) per chip, multiplied by a chip
  factor (section 2: chip-to-chip differences of 5-10 per cent, FPMA DET3 ~20 per cent);
* the aperture (stray-light) components, proportional to the open solid angle Omega of each
  pixel (section 4, eq. 2): the CXB (Gruber et al. 1999 shape, eq. 1, scaled to an injected
  3-20 keV energy flux; default the paper's result 2.81e-11 erg/s/cm^2/deg^2, section 5.1) in SCI
  data only, and the soft solar / backscatter component (a broken power law, Table 3) in OCC
  data and, at a configurable fraction, in SCI data.

Expected count rate (paper eq. 2 without the exposure T)
--------------------------------------------------------
For RAW pixel p = (DET_ID c, RAWY, RAWX) and PI channel k, i.e. the energy bin
[E_k, E_k + 0.04) keV with E_k = 1.6 + 0.04 k::

    rate[k, p] = live[p] * ( M_c * s_inst[k]
                             + F_ap[k] * T_c(E_k + 0.02) * 0.0036 cm^2 * Omega[p] )   counts/s

* ``s_inst[k]`` (counts/s/pixel in channel k) = flat continuum ``inst_continuum``
  (counts/s/keV/pixel) * 0.04 keV + Gaussian lines (:data:`NUSKYBGD_LINES`);
* ``M_c`` = ``chip_factors[fpm][c]`` (the paper's M_bkg), the same at all energies;
* ``F_ap[k]`` (photons/s/cm^2/deg^2 in channel k) = CXB (SCI only) + soft component
  (OCC: ``soft_flux_3_5_occ``; SCI: ``soft_sci_fraction`` times that; FPMB times the cross
  normalisation), both integrated exactly over the channel;
* ``T_c(E)`` = :meth:`NustarGeometry.transmission` (A_det * A_Be of eq. 2) at the channel
  centre, 0.0036 cm^2 = :data:`~bkgjax.missions.nustar_cxb.geometry.PIXEL_AREA_CM2`, Omega in deg^2;
* ``live[p]`` = ``geometry.pixel_mask`` minus the dead pixels of the truth (no counts at all).

The response is diagonal (no energy redistribution, no pixel-to-pixel response R_pix, no
focused CXB or point sources): an aperture photon of energy E is recorded in the PI channel
holding E.  Event PI channels run over :data:`PI_CHANNELS` = 0..609, i.e. 1.6-26.0 keV.

Chosen levels (defaults; :func:`level_summary` recomputes them)
----------------------------------------------------------------
The instrumental continuum (``inst_continuum`` = 9.0e-7 counts/s/keV/pixel) and the line scale
(lines = 20 per cent of the instrumental 3-20 keV counts) were chosen so that the stacked COSMOS
SCI data (2.4 Ms, the paper's Fig. 1: ~50-250 counts per pixel in 3-20 keV) come out as

=====  =====================================  ==========  =====  ====
FPM    3-20 keV counts/pixel min/median/max   instrument  CXB    soft
=====  =====================================  ==========  =====  ====
FPMA   47 / 128 / 214                         37 %        57 %   5 %
FPMB   50 / 127 / 193                         37 %        60 %   3 %
=====  =====================================  ==========  =====  ====

i.e. the aperture CXB dominates the 3-20 keV background (section 4; Wik et al. 2014) with an
internal background of comparable size.  OCC data: the soft component is 27 % (FPMA) / 17 %
(FPMB) of the 3-5 keV counts and, through its hard Gamma2 = 0.9 branch (backscattered CXB,
section 5.2.3), 17 % / 11 % of the 10-20 keV counts, so chip factors taken from OCC 10-20 keV
images must allow for an Omega-shaped term.  In SCI data the same branch of the soft component
(``sci_soft_backscatter=True``) is 10 % (FPMA) / 6 % (FPMB) of the aperture CXB in 10-20 keV.

Speed
-----
:func:`simulate_cubes` draws the binned cubes directly (one Poisson draw per data set with the
summed exposure: a sum of Poisson observations is Poisson), with an exact inverse-CDF Poisson
sampler in JAX that is far faster on CPU than ``jax.random.poisson`` for the small means
(< 100 counts per pixel and band) of these data.
:func:`bkgjax.missions.nustar_cxb.campaign_files.write_campaign` writes real-format event files
(:func:`bkgjax.missions.nustar_cxb.events.write_nustar_events`) whose binned counts have the same
distribution.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.missions.nustar_cxb import geometry as _nu
from bkgjax.simulate.poisson import as_key, poisson_inverse_cdf
from bkgjax.spectral.flux import KEV_TO_ERG
from bkgjax.spectral.model import bknpower, cxb_gruber, gaussian, powerlaw

__all__ = [
    "PI_CHANNELS",
    "PAPER_CXB_FLUX_3_20",
    "NUSKYBGD_LINES",
    "DEFAULT_INST_LINES",
    "DEFAULT_CHIP_FACTORS",
    "DEFAULT_DEAD_PIXELS",
    "PAPER_TABLE3",
    "DatasetSpec",
    "PAPER_DATASETS",
    "CampaignTruth",
    "paper_truths",
    "channel_spectra",
    "live_mask",
    "expected_rate_components",
    "expected_rates",
    "expected_band_rates",
    "expected_cubes",
    "simulate_cubes",
    "level_summary",
    "resolve_geometries",
    "resolve_truths",
    "resolve_datasets",
    "NASA_MET_EPOCH",
]

#: PI channels carried by the simulation (0..609 -> 1.6-26.0 keV); events outside are not made.
PI_CHANNELS = np.arange(0, 610, dtype=np.int64)
#: The paper's combined FPMA+FPMB CXB flux, 3-20 keV, erg/s/cm^2/deg^2 (section 5.1, Fig. 9).
PAPER_CXB_FLUX_3_20 = 2.81e-11

#: Internal-background lines of nuskybgd below 25 keV (``auxil/ratios.json``, model ``intbgd``;
#: Wik et al. 2014): (line energy keV, Lorentzian FWHM keV, FPMA mean of the four chip
#: ``ifactors``).  Only the *relative* strengths are used here.  Note: the 3.5 and 4.5 keV
#: features are broad low-energy components of nuskybgd's internal model.
NUSKYBGD_LINES = (
    (3.53895, 0.425422, 1.649680e-3),
    (4.51407, 0.544324, 1.106870e-3),
    (10.2026, 0.641196, 2.340300e-4),
    (19.6464, 0.229493, 1.146230e-4),
    (21.8941, 0.572821, 4.665930e-4),
    (22.9715, 0.145796, 4.234780e-4),
    (24.747601, 1.959200, 3.861510e-3),
)
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Line photons per pixel per second for one unit of nuskybgd ``ifactor`` (our choice: with it
#: the lines carry ~20 per cent of the instrumental 3-20 keV counts at the default continuum;
#: nuskybgd's own line/continuum normalisations use different responses and are not copied).
_LINE_SCALE = 1.24e-3
#: Default instrumental lines: (LineE keV, Sigma keV, counts/s/pixel).  The Lorentzian profiles
#: of nuskybgd are replaced by Gaussians with the same FWHM.
DEFAULT_INST_LINES = tuple(
    (float(e), round(float(fwhm) * _FWHM_TO_SIGMA, 6), float(f"{r * _LINE_SCALE:.4g}"))
    for e, fwhm, r in NUSKYBGD_LINES
)

#: Default per-chip instrumental factors M_c (section 2: 5-10 per cent, FPMA DET3 ~20 per cent).
DEFAULT_CHIP_FACTORS = {"FPMA": (1.05, 0.93, 0.97, 1.20), "FPMB": (0.95, 1.07, 1.04, 0.94)}
#: Default dead pixels (fpm, DET_ID, RAWX, RAWY): three per chip at fixed positions.
DEFAULT_DEAD_PIXELS = (
    ("FPMA", 0, 5, 17), ("FPMA", 0, 22, 3), ("FPMA", 0, 29, 26),
    ("FPMA", 1, 8, 8), ("FPMA", 1, 19, 25), ("FPMA", 1, 2, 14),
    ("FPMA", 2, 13, 30), ("FPMA", 2, 27, 11), ("FPMA", 2, 4, 2),
    ("FPMA", 3, 16, 16), ("FPMA", 3, 30, 7), ("FPMA", 3, 9, 21),
    ("FPMB", 0, 11, 9), ("FPMB", 0, 24, 28), ("FPMB", 0, 3, 5),
    ("FPMB", 1, 17, 13), ("FPMB", 1, 6, 27), ("FPMB", 1, 28, 2),
    ("FPMB", 2, 20, 20), ("FPMB", 2, 1, 10), ("FPMB", 2, 14, 31),
    ("FPMB", 3, 7, 12), ("FPMB", 3, 25, 18), ("FPMB", 3, 12, 1),
)

#: Paper Table 3 (OCC aperture component per data set): (Gamma1, E_break keV, Gamma2,
#: F_3-5keV erg/s/cm^2/deg^2, FPMB/FPMA cross-normalisation).
PAPER_TABLE3 = (
    (5.0, 4.8, 0.9, 1.3e-12, 0.54),
    (6.0, 4.6, 0.9, 1.4e-12, 0.55),
    (7.0, 4.4, 1.3, 1.8e-12, 0.63),
    (4.0, 5.3, 0.9, 0.8e-12, 0.66),
    (4.0, 5.3, 0.8, 0.8e-12, 0.64),
    (3.0, 5.1, 0.6, 0.7e-12, 0.62),
)

_FPM_INDEX = {"FPMA": 0, "FPMB": 1}
#: NuSTAR mission elapsed time (MET) zero point.
NASA_MET_EPOCH = _dt.datetime(2010, 1, 1, tzinfo=_dt.timezone.utc)


# ---------------------------------------------------------------------------
# data sets and truth
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """One data set of the campaign (paper Table 2).

    Attributes
    ----------
    name : str
        Data set name (e.g. ``"COSMOS EP1"``).
    exposure_s : float
        Summed SCI (science mode, sky visible) exposure in s, per FPM.
    occ_exposure_s : float
        Summed OCC (Earth-occulted) exposure in s, per FPM.
    n_obs : int
        Number of observations the exposure is split into when writing event files.
    begin, end : str
        Observation dates (ISO, Table 2); set the event times (NuSTAR MET) of written files.
    obs_prefix : str
        First five digits of the written OBS_IDs (NuSTAR programme, e.g. ``"60021"``).
    """

    name: str
    exposure_s: float
    occ_exposure_s: float
    n_obs: int = 3
    begin: str = "2013-01-01"
    end: str = "2013-12-31"
    obs_prefix: str = "90000"

    def __post_init__(self):
        if not str(self.name).strip():
            raise ValueError("DatasetSpec.name must be a non-empty string")
        for attr in ("exposure_s", "occ_exposure_s"):
            v = getattr(self, attr)
            if not (isinstance(v, (int, float, np.number)) and math.isfinite(v) and v > 0):
                raise ValueError(f"DatasetSpec {self.name!r}: {attr} must be a finite number > 0 s (got {v!r})")
        if not (isinstance(self.n_obs, (int, np.integer)) and self.n_obs >= 1):
            raise ValueError(f"DatasetSpec {self.name!r}: n_obs must be an integer >= 1 (got {self.n_obs!r})")
        try:
            b, e = _dt.date.fromisoformat(self.begin), _dt.date.fromisoformat(self.end)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"DatasetSpec {self.name!r}: begin/end must be ISO dates YYYY-MM-DD") from exc
        if e < b:
            raise ValueError(f"DatasetSpec {self.name!r}: end {self.end} before begin {self.begin}")
        if not re.fullmatch(r"\d{5}", str(self.obs_prefix)):
            raise ValueError(f"DatasetSpec {self.name!r}: obs_prefix must be 5 digits (got {self.obs_prefix!r})")

    @property
    def slug(self) -> str:
        """File-name stem: lower case, runs of non-alphanumerics replaced by ``_``."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


#: The six data sets of the paper's Table 2.  OCC exposure = SCI exposure by default (the paper
#: quotes 1.6 Ms of OCC data for COSMOS EP1 against 750 ks of SCI, section 4 / Fig. 5; the OCC
#: totals of the other data sets are not given).  OBS_ID programmes: COSMOS 60021, ECDFS 60022,
#: EGS 60023, UDS 60024 (illustrative).
PAPER_DATASETS = (
    DatasetSpec("COSMOS EP1", 750e3, 750e3, 3, "2012-12-26", "2013-01-20", "60021"),
    DatasetSpec("COSMOS EP2", 630e3, 630e3, 3, "2013-04-03", "2013-05-21", "60021"),
    DatasetSpec("COSMOS EP3", 1020e3, 1020e3, 3, "2013-12-03", "2014-02-25", "60021"),
    DatasetSpec("EGS", 1.5e6, 1.5e6, 3, "2013-11-15", "2014-11-27", "60023"),
    DatasetSpec("ECDFS", 1.4e6, 1.4e6, 3, "2012-09-28", "2013-04-01", "60022"),
    DatasetSpec("UDS", 1.7e6, 1.7e6, 3, "2016-01-24", "2016-11-18", "60024"),
)


def _finite(name, v, *, positive=False, nonneg=False):
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"CampaignTruth.{name} must be a number (got {v!r})") from exc
    if not math.isfinite(x) or (positive and x <= 0) or (nonneg and x < 0):
        cond = "> 0" if positive else (">= 0" if nonneg else "finite")
        raise ValueError(f"CampaignTruth.{name} must be finite and {cond} (got {v!r})")
    return x


@dataclass(frozen=True)
class CampaignTruth:
    """Parameters of the simulated sky and instrument (all defaults from the paper).

    Attributes
    ----------
    cxb_flux_3_20 : float
        Injected CXB energy flux in 3-20 keV, erg/s/cm^2/deg^2 (default 2.81e-11, section 5.1).
    cxb_photon_index, cxb_efold : float
        Gruber et al. (1999) shape, eq. 1: photon index 1.29, e-folding 41.13 keV.
    soft_gamma1, soft_ebreak, soft_gamma2 : float
        Broken power law of the OCC aperture component (Table 3 row 1: 5, 4.8 keV, 0.9).
    soft_flux_3_5_occ : float
        FPMA 3-5 keV energy flux of the soft component in OCC data, erg/s/cm^2/deg^2 (1.3e-12,
        Table 3 row 1).
    soft_sci_fraction : float
        SCI soft flux / OCC soft flux (default 0.5: a modest soft excess in SCI data, which the
        paper sees in Fig. 3 and removes by fitting the OCC shape with free normalisation).
    fpmb_occ_crossnorm : float
        FPMB / FPMA normalisation of the soft component in OCC data (0.54, Table 3 row 1).
    fpmb_sci_crossnorm : float
        Same for SCI data (default 0.54, i.e. the same solar illumination as in OCC).
    sci_soft_backscatter : bool
        False (default): the SCI soft component is only the solar branch, a power law
        E^-Gamma1 at all energies (the paper's assumption that backscatter is suppressed
        on-sky, section 5.2.3), with the same 3-5 keV flux.  True: the full OCC broken-power-law
        shape, including the hard Gamma2 branch (backscattered CXB; with the defaults it is ~10
        per cent of the FPMA aperture CXB in 10-20 keV), to test that systematic.
    chip_factors : dict
        ``{"FPMA": (M_0, M_1, M_2, M_3), "FPMB": (...)}``: per-chip instrumental factors M_bkg
        (eq. 2), energy independent.
    inst_continuum : float
        Flat instrumental continuum, counts/s/keV per pixel (before the chip factor).
    inst_lines : tuple of (LineE keV, Sigma keV, counts/s per pixel)
        Instrumental Gaussian lines (before the chip factor); default :data:`DEFAULT_INST_LINES`.
    dead_pixels : tuple of (fpm, DET_ID, RAWX, RAWY)
        Pixels that record no events at all (besides those outside ``geometry.pixel_mask``).
    """

    cxb_flux_3_20: float = PAPER_CXB_FLUX_3_20
    cxb_photon_index: float = _nu.CXB_PHOTON_INDEX
    cxb_efold: float = _nu.CXB_EFOLD_KEV
    soft_gamma1: float = 5.0
    soft_ebreak: float = 4.8
    soft_gamma2: float = 0.9
    soft_flux_3_5_occ: float = 1.3e-12
    soft_sci_fraction: float = 0.5
    fpmb_occ_crossnorm: float = 0.54
    fpmb_sci_crossnorm: float = 0.54
    sci_soft_backscatter: bool = False
    chip_factors: Mapping[str, tuple] = field(default_factory=lambda: dict(DEFAULT_CHIP_FACTORS))
    inst_continuum: float = 9.0e-7
    inst_lines: tuple = DEFAULT_INST_LINES
    dead_pixels: tuple = DEFAULT_DEAD_PIXELS

    def __post_init__(self):
        for name in ("cxb_flux_3_20", "soft_flux_3_5_occ", "soft_sci_fraction", "fpmb_occ_crossnorm",
                     "fpmb_sci_crossnorm", "inst_continuum"):
            object.__setattr__(self, name, _finite(name, getattr(self, name), nonneg=True))
        for name in ("cxb_photon_index", "soft_gamma1", "soft_gamma2"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        for name in ("cxb_efold", "soft_ebreak"):
            object.__setattr__(self, name, _finite(name, getattr(self, name), positive=True))
        if not isinstance(self.sci_soft_backscatter, (bool, np.bool_)):
            raise ValueError("CampaignTruth.sci_soft_backscatter must be True or False")
        object.__setattr__(self, "sci_soft_backscatter", bool(self.sci_soft_backscatter))
        if not isinstance(self.chip_factors, Mapping):
            raise ValueError("CampaignTruth.chip_factors must be a mapping fpm -> 4 factors")
        chips = {}
        for k, v in self.chip_factors.items():
            fpm = _nu.check_fpm(k)
            vals = tuple(_finite(f"chip_factors[{fpm}]", x, nonneg=True) for x in np.ravel(v))
            if len(vals) != _nu.N_CHIPS:
                raise ValueError(f"CampaignTruth.chip_factors[{fpm}] needs 4 values (got {len(vals)})")
            chips[fpm] = vals
        missing = set(_FPM_INDEX) - set(chips)
        if missing:
            raise ValueError(f"CampaignTruth.chip_factors lacks {sorted(missing)}")
        object.__setattr__(self, "chip_factors", chips)
        lines = []
        for line in self.inst_lines:
            if len(line) != 3:
                raise ValueError(f"CampaignTruth.inst_lines entries are (LineE, Sigma, norm); got {line!r}")
            e = _finite("inst_lines LineE", line[0], positive=True)
            s = _finite("inst_lines Sigma", line[1], nonneg=True)
            n = _finite("inst_lines norm", line[2], nonneg=True)
            lines.append((e, s, n))
        object.__setattr__(self, "inst_lines", tuple(lines))
        dead = []
        for d in self.dead_pixels:
            if len(d) != 4:
                raise ValueError(f"CampaignTruth.dead_pixels entries are (fpm, DET_ID, RAWX, RAWY); got {d!r}")
            fpm, det, x, y = _nu.check_fpm(d[0]), int(d[1]), int(d[2]), int(d[3])
            if not (0 <= det < _nu.N_CHIPS and 0 <= x < _nu.CHIP_PIXELS and 0 <= y < _nu.CHIP_PIXELS):
                raise ValueError(f"CampaignTruth.dead_pixels entry {d!r} outside DET_ID 0..3, RAWX/RAWY 0..31")
            dead.append((fpm, det, x, y))
        object.__setattr__(self, "dead_pixels", tuple(dead))

    def to_dict(self) -> dict:
        """JSON-able dictionary of every field (units in the key names' docstrings)."""
        d = asdict(self)
        d["chip_factors"] = {k: list(v) for k, v in self.chip_factors.items()}
        d["inst_lines"] = [list(x) for x in self.inst_lines]
        d["dead_pixels"] = [list(x) for x in self.dead_pixels]
        d["units"] = {
            "cxb_flux_3_20": "erg/s/cm^2/deg^2 (3-20 keV)",
            "soft_flux_3_5_occ": "erg/s/cm^2/deg^2 (3-5 keV, FPMA, OCC)",
            "inst_continuum": "counts/s/keV/pixel",
            "inst_lines": "[LineE keV, Sigma keV, counts/s/pixel]",
            "dead_pixels": "[fpm, DET_ID, RAWX, RAWY]",
        }
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "CampaignTruth":
        """Inverse of :meth:`to_dict` (the ``units`` entry is ignored)."""
        kw = {k: v for k, v in d.items() if k != "units"}
        for k in ("inst_lines", "dead_pixels"):
            if k in kw:
                kw[k] = tuple(tuple(x) for x in kw[k])
        return cls(**kw)

    def soft_flux_3_5(self, fpm: str, *, occulted: bool) -> float:
        """3-5 keV energy flux (erg/s/cm^2/deg^2) of the soft aperture component for ``fpm``."""
        fpm = _nu.check_fpm(fpm)
        flux = self.soft_flux_3_5_occ * (1.0 if occulted else self.soft_sci_fraction)
        if fpm == "FPMB":
            flux *= self.fpmb_occ_crossnorm if occulted else self.fpmb_sci_crossnorm
        return flux


def paper_truths(cxb_flux_3_20: float = PAPER_CXB_FLUX_3_20, base: CampaignTruth | None = None,
                 ) -> tuple[CampaignTruth, ...]:
    """One truth per data set of :data:`PAPER_DATASETS` with the soft component of Table 3.

    (Gamma1, E_break, Gamma2, F_3-5keV, FPMB cross-normalisation) of each row go into the OCC
    soft component (SCI cross-normalisation = OCC one); everything else from ``base``.
    """
    base = CampaignTruth() if base is None else base
    out = []
    for g1, eb, g2, f35, c in PAPER_TABLE3:
        d = base.to_dict()
        d.update(cxb_flux_3_20=cxb_flux_3_20, soft_gamma1=g1, soft_ebreak=eb, soft_gamma2=g2,
                 soft_flux_3_5_occ=f35, fpmb_occ_crossnorm=c, fpmb_sci_crossnorm=c)
        out.append(CampaignTruth.from_dict(d))
    return tuple(out)


# ---------------------------------------------------------------------------
# spectra per PI channel
# ---------------------------------------------------------------------------


_FLUX_GRID_BINS = 4096


def _energy_flux_unit(model, values, e_min, e_max, n=_FLUX_GRID_BINS):
    """Energy flux (erg/s/cm^2[/deg^2]) of ``model`` in [e_min, e_max] keV (traceable).

    ``n`` logarithmic bins; photons per bin times the arithmetic bin centre (relative error
    ~1e-7 at n = 4096), as :func:`bkgjax.spectral.flux.energy_flux`.
    """
    edges = jnp.asarray(np.geomspace(e_min, e_max, n + 1))
    ph = model.evaluate(values, edges[:-1], edges[1:])
    return jnp.sum(ph * 0.5 * (edges[:-1] + edges[1:])) * KEV_TO_ERG


@partial(jax.jit, static_argnames=("with_cxb", "soft_broken"))
def _spectra_kernel(lo, hi, cxb_p, soft_p, lines, continuum, *, with_cxb, soft_broken):
    """Per-channel spectra for :func:`channel_spectra` in one compiled call.

    cxb_p = (flux_3_20, PhoIndex, EFold); soft_p = (flux_3_5, Gamma1, E_break, Gamma2);
    lines (n, 3) = (LineE, Sigma, norm).  Returns (cxb, soft, instrument, cxb_norm, soft_norm).
    """
    cxb = cxb_gruber()
    cv = {"cxb_gruber.norm": 1.0, "cxb_gruber.PhoIndex": cxb_p[1], "cxb_gruber.EFold": cxb_p[2]}
    cxb_norm = cxb_p[0] / _energy_flux_unit(cxb, cv, 3.0, 20.0)
    cv["cxb_gruber.norm"] = cxb_norm
    cxb_ch = cxb.evaluate(cv, lo, hi) if with_cxb else jnp.zeros_like(lo)

    if soft_broken:
        soft = bknpower()
        sv = {"bknpower.PhoIndx1": soft_p[1], "bknpower.BreakE": soft_p[2], "bknpower.PhoIndx2": soft_p[3],
              "bknpower.norm": 1.0}
    else:  # solar branch only
        soft = powerlaw(label="bknpower")
        sv = {"bknpower.PhoIndex": soft_p[1], "bknpower.norm": 1.0}
    soft_norm = soft_p[0] / _energy_flux_unit(soft, sv, 3.0, 5.0)
    sv["bknpower.norm"] = soft_norm
    soft_ch = soft.evaluate(sv, lo, hi)

    inst = jnp.full(lo.shape, continuum * _nu.PI_STEP_KEV)
    if lines.shape[0]:
        g = gaussian().evaluate({"gaussian.LineE": lines[:, 0:1], "gaussian.Sigma": lines[:, 1:2],
                                 "gaussian.norm": lines[:, 2:3]}, lo[None, :], hi[None, :])
        inst = inst + jnp.sum(g, axis=0)
    return cxb_ch, soft_ch, inst, cxb_norm, soft_norm


def _channel_edges(pi):
    e_lo = np.asarray(_nu.pi_to_energy(pi), dtype=np.float64)
    return e_lo, e_lo + _nu.PI_STEP_KEV


def channel_spectra(truth: CampaignTruth, fpm: str, *, occulted: bool, pi=PI_CHANNELS) -> dict:
    """Spectral ingredients per PI channel (no geometry), all float64 arrays of shape (n_pi,).

    Returns a dict with ``pi``, ``e_lo``, ``e_hi`` (keV) and

    * ``instrument``: counts/s per pixel in the channel, before the chip factor
      (continuum * 0.04 keV + lines);
    * ``cxb``: CXB photons/s/cm^2/deg^2 in the channel (0 for OCC data);
    * ``soft``: soft aperture component, photons/s/cm^2/deg^2 in the channel;
    * ``cxb_norm``: the ``cxb_gruber`` norm (relative to HEAO-1) giving ``truth.cxb_flux_3_20``;
    * ``soft_norm``: the ``bknpower`` (or, for SCI without backscatter, ``powerlaw``) norm,
      photons/keV/cm^2/s/deg^2 at 1 keV.
    """
    fpm = _nu.check_fpm(fpm)
    pi = np.asarray(pi, dtype=np.int64)
    if pi.ndim != 1 or pi.size == 0 or np.any(pi < 0):
        raise ValueError("pi must be a non-empty 1-D array of channels >= 0")
    e_lo, e_hi = _channel_edges(pi)
    lines = np.asarray(truth.inst_lines, dtype=np.float64).reshape(-1, 3)
    cxb_ch, soft_ch, inst, cxb_norm, soft_norm = _spectra_kernel(
        jnp.asarray(e_lo), jnp.asarray(e_hi),
        jnp.asarray([truth.cxb_flux_3_20, truth.cxb_photon_index, truth.cxb_efold]),
        jnp.asarray([truth.soft_flux_3_5(fpm, occulted=occulted), truth.soft_gamma1, truth.soft_ebreak,
                     truth.soft_gamma2]),
        jnp.asarray(lines), jnp.asarray(truth.inst_continuum),
        with_cxb=not occulted, soft_broken=bool(occulted or truth.sci_soft_backscatter))
    return {"pi": pi, "e_lo": e_lo, "e_hi": e_hi, "instrument": np.asarray(inst), "cxb": np.asarray(cxb_ch),
            "soft": np.asarray(soft_ch), "cxb_norm": float(cxb_norm), "soft_norm": float(soft_norm)}


def live_mask(geometry, truth: CampaignTruth) -> np.ndarray:
    """Pixels that record events: ``geometry.pixel_mask`` without the truth's dead pixels, (4, 32, 32)."""
    fpm = _nu.check_fpm(geometry.fpm)
    live = np.array(geometry.pixel_mask, dtype=bool, copy=True)
    for f, det, x, y in truth.dead_pixels:
        if f == fpm:
            live[det, y, x] = False
    return live


def _check_geometry(geometry):
    for attr in ("fpm", "omega", "pixel_mask", "transmission"):
        if not hasattr(geometry, attr):
            raise ValueError(f"geometry must be a NustarGeometry (missing {attr!r})")
    shape = (_nu.N_CHIPS, _nu.CHIP_PIXELS, _nu.CHIP_PIXELS)
    if np.shape(geometry.omega) != shape or np.shape(geometry.pixel_mask) != shape:
        raise ValueError(f"geometry.omega and pixel_mask must have shape {shape}")
    return _nu.check_fpm(geometry.fpm)


def _check_pi(pi):
    pi = np.asarray(pi, dtype=np.int64)
    if pi.ndim != 1 or pi.size == 0 or np.any(np.diff(pi) != 1) or pi[0] < 0:
        raise ValueError("pi must be a contiguous increasing range of channels >= 0")
    return pi


def expected_rate_components(geometry, truth: CampaignTruth, *, occulted: bool, pi=PI_CHANNELS) -> dict:
    """Expected rates (counts/s per channel and pixel) of each component, paper eq. 2.

    Returns a dict with ``pi`` (n_pi,) and three float64 arrays of shape (n_pi, 4, 32, 32)
    indexed [channel, DET_ID, RAWY, RAWX]: ``instrument`` (M_c * s_inst), ``cxb`` and ``soft``
    (F * T_c * 0.0036 cm^2 * Omega).  Dead and masked pixels are 0.
    """
    pi = _check_pi(pi)
    spec, chips, geo = _separable(geometry, truth, occulted, pi)
    out = {"pi": pi, "instrument": spec["instrument"][:, None, None, None] * chips[None]}
    for comp in ("cxb", "soft"):
        out[comp] = spec[comp].T[:, :, None, None] * geo[None]
    return out


def _separable(geometry, truth, occulted, pi):
    """Spectral and spatial factors of eq. 2: rate = inst[k] chips[p] + ap[c, k] geo[p].

    Returns (spec, chips, geo): spec["instrument"] (n_pi,), spec["cxb"], spec["soft"] (4, n_pi)
    already multiplied by the chip transmission T_c(E); chips = M_c * live (4, 32, 32);
    geo = 0.0036 cm^2 * Omega * live (4, 32, 32).
    """
    fpm = _check_geometry(geometry)
    spec = channel_spectra(truth, fpm, occulted=bool(occulted), pi=pi)
    live = live_mask(geometry, truth).astype(np.float64)
    trans = np.asarray(geometry.transmission(0.5 * (spec["e_lo"] + spec["e_hi"])))  # [4, n_pi]
    geo = _nu.PIXEL_AREA_CM2 * np.asarray(geometry.omega, dtype=np.float64) * live   # cm^2 deg^2
    chips = np.asarray(truth.chip_factors[fpm])[:, None, None] * live
    out = {"instrument": spec["instrument"], "cxb": spec["cxb"][None, :] * trans,
           "soft": spec["soft"][None, :] * trans}
    return out, chips, geo


def expected_rates(geometry, truth: CampaignTruth, *, occulted: bool, pi=PI_CHANNELS):
    """Expected count rate per PI channel and RAW pixel (paper eq. 2 divided by T).

    Parameters
    ----------
    geometry : NustarGeometry
    truth : CampaignTruth
    occulted : bool
        True for OCC data (no CXB, soft component at ``soft_flux_3_5_occ``), False for SCI.
    pi : array of int
        Contiguous PI channels (default :data:`PI_CHANNELS`: 0..609, 1.6-26.0 keV).

    Returns
    -------
    pi : (n_pi,) int64
    rates : (n_pi, 4, 32, 32) float64, counts/s, indexed [channel, DET_ID, RAWY, RAWX].
    """
    c = expected_rate_components(geometry, truth, occulted=occulted, pi=pi)
    return c["pi"], c["instrument"] + c["cxb"] + c["soft"]


def _band_channel_matrix(e_lo, e_hi, pi=PI_CHANNELS) -> np.ndarray:
    """(n_bands, n_pi) 0/1 matrix selecting the channels of each band (band_pi_edges)."""
    pi = _check_pi(pi)
    pi_lo, pi_hi = _nu.band_pi_edges(e_lo, e_hi)
    if pi_lo.min() < pi[0] or pi_hi.max() > pi[-1] + 1:
        raise ValueError(f"bands must lie within the simulated PI range {int(pi[0])}..{int(pi[-1])} "
                         f"({float(_nu.pi_to_energy(pi[0])):.2f}-{float(_nu.pi_to_energy(pi[-1] + 1)):.2f} keV)")
    return ((pi[None, :] >= pi_lo[:, None]) & (pi[None, :] < pi_hi[:, None])).astype(np.float64)


def expected_band_rates(geometry, truth: CampaignTruth, e_lo, e_hi, *, occulted: bool,
                        components: bool = False):
    """Expected count rates per energy band and RAW pixel, counts/s, (n_bands, 4, 32, 32).

    The sum of :func:`expected_rates` over the PI channels of each band
    (:func:`bkgjax.missions.nustar_cxb.geometry.band_pi_edges`: band b holds pi_lo[b] <= PI < pi_hi[b]).
    With ``components=True`` returns a dict ``{"instrument", "cxb", "soft", "total"}`` instead.
    """
    sel = _band_channel_matrix(e_lo, e_hi)
    spec, chips, geo = _separable(geometry, truth, occulted, PI_CHANNELS)
    out = {"instrument": (sel @ spec["instrument"])[:, None, None, None] * chips[None]}
    for comp in ("cxb", "soft"):
        out[comp] = (spec[comp] @ sel.T).T[:, :, None, None] * geo[None]
    out["total"] = out["instrument"] + out["cxb"] + out["soft"]
    return out if components else out["total"]


# ---------------------------------------------------------------------------
# binned cubes
# ---------------------------------------------------------------------------


def resolve_geometries(geometries):
    """``{"FPMA": NustarGeometry, "FPMB": ...}`` from None (the shipped maps), a mapping or a
    sequence of geometries; ValueError unless both modules are given."""
    if geometries is None:
        return {f: _nu.load_geometry(f) for f in _nu.FPMS}
    if isinstance(geometries, Mapping):
        geos = {_nu.check_fpm(k): v for k, v in geometries.items()}
    else:
        geos = {_check_geometry(g): g for g in geometries}
    if set(geos) != set(_FPM_INDEX):
        raise ValueError(f"geometries must give both FPMA and FPMB (got {sorted(geos)})")
    for f, g in geos.items():
        if _check_geometry(g) != f:
            raise ValueError(f"geometries[{f!r}] is the geometry of {g.fpm}")
    return geos


def resolve_truths(truth, n):
    """One :class:`CampaignTruth` per data set from one truth or a sequence of ``n``."""
    if isinstance(truth, CampaignTruth):
        return (truth,) * n
    truths = tuple(truth)
    if len(truths) != n or not all(isinstance(t, CampaignTruth) for t in truths):
        raise ValueError(f"truth must be a CampaignTruth or a sequence of {n} of them (one per data set)")
    return truths


def resolve_datasets(datasets, scale_exposure):
    """Checked (tuple of :class:`DatasetSpec`, exposure scale): distinct names, scale > 0."""
    ds = tuple(datasets)
    if not ds or not all(isinstance(d, DatasetSpec) for d in ds):
        raise ValueError("datasets must be a non-empty sequence of DatasetSpec")
    slugs = [d.slug for d in ds]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"data set names must be distinct (file stems {slugs})")
    s = float(scale_exposure)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale_exposure must be finite and > 0 (got {scale_exposure!r})")
    return ds, s


#: The OCC band used for the chip factors (paper section 4: M_bkg from OCC 10-20 keV data).
OCC_CHIP_BAND = (10.0, 20.0)


def expected_cubes(truth=None, datasets=PAPER_DATASETS, e_lo=None, e_hi=None, *, geometries=None,
                   scale_exposure: float = 1.0) -> dict:
    """Expected counts of the cubes that :func:`simulate_cubes` draws (float64 NumPy arrays).

    Returns ``{"sci": (n_ds, 2, n_bands, 4, 32, 32), "occ": same, "occ_10_20": (n_ds, 2, 4, 32,
    32), "exposure_sci": (n_ds,), "exposure_occ": (n_ds,), "e_lo", "e_hi"}``; FPM axis order
    FPMA, FPMB.
    """
    ds, scale = resolve_datasets(datasets, scale_exposure)
    truths = resolve_truths(CampaignTruth() if truth is None else truth, len(ds))
    geos = resolve_geometries(geometries)
    if (e_lo is None) != (e_hi is None):
        raise ValueError("give both e_lo and e_hi, or neither (paper bands: energy_bands())")
    if e_lo is None:
        e_lo, e_hi = _nu.energy_bands()
    e_lo = np.atleast_1d(np.asarray(e_lo, dtype=np.float64))
    e_hi = np.atleast_1d(np.asarray(e_hi, dtype=np.float64))
    band = np.asarray([OCC_CHIP_BAND[0]]), np.asarray([OCC_CHIP_BAND[1]])
    t_sci = np.array([d.exposure_s * scale for d in ds])
    t_occ = np.array([d.occ_exposure_s * scale for d in ds])
    cache = {}
    sci, occ, occ_hi = [], [], []
    for i, t in enumerate(truths):
        key = id(t)
        if key not in cache:
            per_fpm = []
            for f in _nu.FPMS:
                s = expected_band_rates(geos[f], t, e_lo, e_hi, occulted=False)
                o = expected_band_rates(geos[f], t, e_lo, e_hi, occulted=True)
                oh = expected_band_rates(geos[f], t, *band, occulted=True)[0]
                per_fpm.append((s, o, oh))
            cache[key] = per_fpm
        per_fpm = cache[key]
        sci.append(np.stack([p[0] for p in per_fpm]) * t_sci[i])
        occ.append(np.stack([p[1] for p in per_fpm]) * t_occ[i])
        occ_hi.append(np.stack([p[2] for p in per_fpm]) * t_occ[i])
    return {"sci": np.stack(sci), "occ": np.stack(occ), "occ_10_20": np.stack(occ_hi),
            "exposure_sci": t_sci, "exposure_occ": t_occ, "e_lo": e_lo, "e_hi": e_hi}


def simulate_cubes(key, truth=None, datasets=PAPER_DATASETS, e_lo=None, e_hi=None, *,
                   n_campaigns: int | None = None, geometries=None, scale_exposure: float = 1.0) -> dict:
    """Poisson realisations of the binned count cubes of a whole campaign (JAX).

    Each data set and FPM is drawn once with its summed exposure (the sum of independent
    Poisson observations is Poisson with the summed mean), so the cubes have the distribution
    of binning (:func:`bkgjax.missions.nustar_cxb.geometry.bin_events`) the event files that
    :func:`~bkgjax.missions.nustar_cxb.campaign_files.write_campaign` writes.

    Parameters
    ----------
    key : jax PRNG key or int seed
    truth : CampaignTruth or sequence of them (one per data set); default ``CampaignTruth()``
    datasets : sequence of DatasetSpec (default :data:`PAPER_DATASETS`)
    e_lo, e_hi : band edges in keV (default ``energy_bands()``: the paper's 20 bands, 3-20 keV)
    n_campaigns : int, optional
        Number of independent campaigns (leading axis, keys ``jax.random.split(key, n)``);
        None gives one campaign without that axis.
    geometries : {"FPMA": NustarGeometry, "FPMB": ...}, optional (default: shipped maps)
    scale_exposure : float
        Multiplies every exposure.

    Returns
    -------
    dict of arrays (a pytree):
        ``sci``, ``occ``: int32 (n_campaigns?, n_ds, 2, n_bands, 4, 32, 32) counts (FPM axis:
        FPMA, FPMB); ``occ_10_20``: int32 (n_campaigns?, n_ds, 2, 4, 32, 32) OCC counts in
        10-20 keV (for the chip factors, section 4); ``exposure_sci``, ``exposure_occ``
        (n_ds,) s; ``e_lo``, ``e_hi`` (n_bands,) keV.
    """
    exp = expected_cubes(truth, datasets, e_lo, e_hi, geometries=geometries, scale_exposure=scale_exposure)
    k_sci, k_occ, k_hi = jax.random.split(as_key(key), 3)
    out = {name: poisson_inverse_cdf(k, exp[name], n_campaigns)
           for name, k in (("sci", k_sci), ("occ", k_occ), ("occ_10_20", k_hi))}
    out.update({k: jnp.asarray(exp[k]) for k in ("exposure_sci", "exposure_occ", "e_lo", "e_hi")})
    return out


# ---------------------------------------------------------------------------
# level summary
# ---------------------------------------------------------------------------


def level_summary(truth: CampaignTruth | None = None, exposure_s: float = 2.4e6, *, geometries=None) -> dict:
    """Expected 3-20 keV SCI counts per live pixel for ``exposure_s`` (default: COSMOS 2.4 Ms,
    the paper's Fig. 1) and the fractions of counts from the instrument, the CXB and the soft
    component, per FPM; also the OCC 3-5 and 10-20 keV counts per pixel."""
    truth = CampaignTruth() if truth is None else truth
    geos = resolve_geometries(geometries)
    out = {}
    for f in _nu.FPMS:
        g = geos[f]
        live = live_mask(g, truth)
        c = expected_band_rates(g, truth, [3.0], [20.0], occulted=False, components=True)
        tot = c["total"][0][live] * exposure_s
        o35 = expected_band_rates(g, truth, [3.0], [5.0], occulted=True, components=True)
        o1020 = expected_band_rates(g, truth, [10.0], [20.0], occulted=True, components=True)
        out[f] = {
            "sci_3_20_counts_min": float(tot.min()), "sci_3_20_counts_median": float(np.median(tot)),
            "sci_3_20_counts_max": float(tot.max()),
            "frac_instrument": float(c["instrument"].sum() / c["total"].sum()),
            "frac_cxb": float(c["cxb"].sum() / c["total"].sum()),
            "frac_soft": float(c["soft"].sum() / c["total"].sum()),
            "occ_3_5_counts_median": float(np.median(o35["total"][0][live]) * exposure_s),
            "occ_3_5_frac_aperture": float(o35["soft"].sum() / o35["total"].sum()),
            "occ_10_20_counts_median": float(np.median(o1020["total"][0][live]) * exposure_s),
            "occ_10_20_frac_aperture": float(o1020["soft"].sum() / o1020["total"].sum()),
        }
    return out
