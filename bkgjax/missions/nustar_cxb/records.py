"""Data containers of the NuSTAR stray-light CXB analysis (Krivonos et al. 2021).

Inputs: :class:`AnalysisOptions`, :class:`ModuleData` (one data set x focal-plane module) and
:class:`Campaign`.  Stage records, all immutable and with named fields, passed between the
stages of :func:`bkgjax.missions.nustar_cxb.analysis.run_analysis`:

* :class:`ModuleBackground`: pixel mask and chip non-uniformity :math:`M_\\mathrm{bkg}` from the
  OCC 10-20 keV image (section 4);
* :class:`PixelStage` (a stack of modules) and :class:`ModuleBands` (one module's row): the
  per-band pixel fits of eq. (2)-(3);
* :class:`SoftShapeFit` / :class:`SoftComponent`: the OCC broken power law (Table 3);
* :class:`SciFit`, :class:`ModuleSpectrum`: the SCI spectral fit of one module (Table 4);
* :class:`CrossNormFit`: joint FPMA + FPMB fit of a data set (Fig. 3);
* :class:`OneStepParts`, :class:`OneStepGroup`, :class:`OneStepFlux`: the one-step model;
* :class:`CombinedFlux`, :class:`AverageSpectrum`, :class:`Combination`: section 5.2-5.3;
* :class:`AnalysisResult`: everything, with the JSON payload.

Every per-module sequence in these records is aligned with ``Campaign.modules``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from bkgjax.missions.nustar_cxb import geometry as nustar

__all__ = [
    "AnalysisOptions",
    "ModuleData",
    "Campaign",
    "campaign_from_cubes",
    "BandGrid",
    "ChipFlat",
    "ModuleBackground",
    "PixelStage",
    "ModuleBands",
    "SoftShapeFit",
    "SoftComponent",
    "SciFit",
    "ModuleSpectrum",
    "CrossNormFit",
    "OneStepParts",
    "OneStepGroup",
    "OneStepFlux",
    "CombinedFlux",
    "AverageSpectrum",
    "Combination",
    "AnalysisResult",
]


# ----------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of :func:`~bkgjax.missions.nustar_cxb.analysis.run_analysis` (also read from the
    ``[analysis]`` table of a config).

    e_min, e_max, n_bands : energy bands (keV), logarithmic, snapped to the PI grid (section 2).
    mask_chip_edges : exclude the outer row/column of every chip (hot edges in real data).
    profile : also compute profile-likelihood intervals of N_apt (90 %).
    posterior : run NUTS on the one-step model and on the per-band pixel model (slower).
    bootstrap : number of Poisson bootstrap refits per band (the paper used 10^4; 0 = off).
    rpix : pixel response R_pix (1: the CALDB pixel response is not available here).
    soft_shape_default : soft-component shape when a data set has no OCC data (Table 3, ID 1).
    sci_soft_model : "powerlaw" (default; the OCC shape's E < E_break branch, section 5.1) or
        "bknpower" (the full OCC shape, i.e. assuming backscattered CXB also on-sky).
    one_step : also fit the one-step model (CXB norm straight from the cube).
    seed : random seed for bootstrap / NUTS / goodness-of-fit simulations.
    soft_detection_sigma : significance (sigma, one-sided) above which the soft component counts
        as detected, in the OCC spectra (below it the shape is not fitted: the default shape is
        used and the norm reported as a 90 % upper limit) and in every SCI spectrum.
    """

    e_min: float = 3.0
    e_max: float = 20.0
    n_bands: int = 20
    mask_chip_edges: bool = False
    profile: bool = True
    posterior: bool = False
    bootstrap: int = 0
    rpix: float = 1.0
    seed: int = 0
    num_samples: int = 1000
    num_warmup: int = 500
    soft_shape_default: tuple = (5.0, 4.8, 0.9)
    sci_soft_model: str = "powerlaw"
    one_step: bool = True
    soft_detection_sigma: float = 3.0

    def __post_init__(self):
        if not (0 < self.e_min < self.e_max):
            raise ValueError(f"need 0 < e_min < e_max keV, got {self.e_min}, {self.e_max}")
        if isinstance(self.n_bands, bool) or not isinstance(self.n_bands, (int, np.integer)):
            raise ValueError(f"n_bands must be an integer, got {self.n_bands!r}")
        if self.n_bands < 3:
            raise ValueError(f"n_bands = {self.n_bands}: the spectral stage needs >= 3 bands (the "
                             "stacked-spectrum models have up to 3 free parameters and the SCI "
                             "fit 2); use n_bands >= 3")
        if not (np.isfinite(self.soft_detection_sigma) and self.soft_detection_sigma > 0):
            raise ValueError(f"soft_detection_sigma must be > 0, got {self.soft_detection_sigma}")
        if self.sci_soft_model not in ("powerlaw", "bknpower"):
            raise ValueError(f"sci_soft_model must be 'powerlaw' or 'bknpower', got "
                             f"{self.sci_soft_model!r}")
        if self.bootstrap < 0 or self.rpix <= 0:
            raise ValueError("bootstrap must be >= 0 and rpix > 0")


@dataclass(frozen=True)
class ModuleData:
    """Binned data of one data set and one focal-plane module.

    sci_counts : int [n_bands, 4, 32, 32] SCI counts per band and RAW pixel (summed over
        the data set's observations).
    sci_exposure : summed live exposure (s).
    occ_counts : same for Earth-occulted data, or None.
    occ_counts_10_20 : int [4, 32, 32] OCC counts in 10-20 keV (for M_bkg), or None.
    """

    dataset: str
    fpm: str
    sci_counts: np.ndarray
    sci_exposure: float
    occ_counts: np.ndarray | None = None
    occ_exposure: float | None = None
    occ_counts_10_20: np.ndarray | None = None
    sci_files: tuple = ()
    occ_files: tuple = ()

    @property
    def label(self) -> str:
        """``"<data set> <FPM>"``."""
        return f"{self.dataset} {self.fpm}"

    @property
    def has_occ(self) -> bool:
        """Whether the module has Earth-occulted band counts with an exposure."""
        return self.occ_counts is not None and bool(self.occ_exposure)


@dataclass(frozen=True)
class Campaign:
    """All modules of a campaign on common energy bands (keV)."""

    e_lo: np.ndarray
    e_hi: np.ndarray
    modules: tuple
    geometries: dict = field(default_factory=dict)

    def geometry(self, fpm):
        if fpm not in self.geometries:
            return nustar.load_geometry(fpm)
        return self.geometries[fpm]

    @property
    def datasets(self) -> list:
        """Data-set names in order of first appearance."""
        return list(dict.fromkeys(m.dataset for m in self.modules))


def campaign_from_cubes(cubes, names, fpms=nustar.FPMS):
    """Campaign from binned cubes (e.g. :func:`bkgjax.missions.nustar_cxb.campaign.simulate_cubes`
    for one campaign): ``sci``/``occ`` [n_ds, n_fpm, n_bands, 4, 32, 32], ``occ_10_20``
    [n_ds, n_fpm, 4, 32, 32], ``exposure_sci``/``exposure_occ`` [n_ds], ``e_lo``/``e_hi``."""
    sci = np.asarray(cubes["sci"])
    occ = None if cubes.get("occ") is None else np.asarray(cubes["occ"])
    hard = None if cubes.get("occ_10_20") is None else np.asarray(cubes["occ_10_20"])
    modules = []
    for d, name in enumerate(names):
        for f, fpm in enumerate(fpms):
            modules.append(ModuleData(
                dataset=name, fpm=fpm, sci_counts=sci[d, f],
                sci_exposure=float(np.asarray(cubes["exposure_sci"])[d]),
                occ_counts=None if occ is None else occ[d, f],
                occ_exposure=None if occ is None else float(np.asarray(cubes["exposure_occ"])[d]),
                occ_counts_10_20=None if hard is None else hard[d, f]))
    return Campaign(np.asarray(cubes["e_lo"]), np.asarray(cubes["e_hi"]), tuple(modules))


class BandGrid(NamedTuple):
    """Analysis bands (keV) and the PI channels covering them (keV edges)."""

    e_lo: np.ndarray
    e_hi: np.ndarray
    ch_lo: np.ndarray
    ch_hi: np.ndarray


# ----------------------------------------------------------------------------------------------
# Pixel stage


class ChipFlat(NamedTuple):
    """Chip non-uniformity from the OCC 10-20 keV image: the [4, 32, 32] map :math:`M`, the four
    relative chip normalisations behind it (mean 1) and their 4 x 4 covariance."""

    flat: np.ndarray
    factors: np.ndarray
    covariance: np.ndarray


@dataclass(frozen=True)
class ModuleBackground:
    """Pixels fitted and the flat-background map of one module (section 4).

    mask : bool [4, 32, 32] pixels used in every fit of the module.
    flat : [4, 32, 32] chip non-uniformity :math:`M` from the OCC 10-20 keV image, or None
        (then every chip gets a free flat normalisation).
    chip_factors, chip_factors_cov : the four relative chip normalisations behind ``flat`` and
        their covariance, or None (a chip without usable pixels gets the placeholder factor 1
        with zero variance).
    live_chips : chips with at least one pixel in ``mask`` (a chip without counts in any SCI
        band is dead and masked whole).
    note : why ``flat`` is None although OCC data exist, or which chips were masked; None when
        nothing special happened.
    """

    mask: np.ndarray
    flat: np.ndarray | None = None
    chip_factors: np.ndarray | None = None
    chip_factors_cov: np.ndarray | None = None
    live_chips: tuple = (0, 1, 2, 3)
    note: str | None = None


@dataclass(frozen=True)
class PixelStage:
    """Per-band pixel-model results for a stack of modules (arrays [m, n_bands])."""

    n_apt: np.ndarray
    n_apt_err: np.ndarray
    n_bkg: np.ndarray
    n_bkg_err: np.ndarray
    n_apt_lower90: np.ndarray | None
    n_apt_upper90: np.ndarray | None
    cstat: np.ndarray
    n_pixels: np.ndarray
    converged: np.ndarray
    fits: object  # TemplateFit with [m, nb] leaves
    templates: np.ndarray
    counts: np.ndarray
    masks: np.ndarray
    bootstrap_err: np.ndarray | None = None

    def module(self, index: int) -> ModuleBands:
        """The per-band results of the ``index``-th module of the stack."""
        return ModuleBands(self, index)


@dataclass(frozen=True)
class ModuleBands:
    """One module's row of a :class:`PixelStage` (arrays [n_bands])."""

    stage: PixelStage
    index: int

    def _row(self, array):
        return None if array is None else array[self.index]

    @property
    def n_apt(self):
        return self.stage.n_apt[self.index]

    @property
    def n_apt_err(self):
        return self.stage.n_apt_err[self.index]

    @property
    def n_bkg(self):
        return self.stage.n_bkg[self.index]

    @property
    def n_bkg_err(self):
        return self.stage.n_bkg_err[self.index]

    @property
    def n_apt_lower90(self):
        return self._row(self.stage.n_apt_lower90)

    @property
    def n_apt_upper90(self):
        return self._row(self.stage.n_apt_upper90)

    @property
    def cstat(self):
        return self.stage.cstat[self.index]

    @property
    def n_pixels(self):
        return self.stage.n_pixels[self.index]

    @property
    def bootstrap_err(self):
        return self._row(self.stage.bootstrap_err)


# ----------------------------------------------------------------------------------------------
# Spectral stage


@dataclass(frozen=True)
class SoftShapeFit:
    """Joint broken-power-law fit of a data set's OCC aperture spectra (Table 3).

    Shape :math:`(\\Gamma_1, E_\\mathrm{br}, \\Gamma_2)`, the first module's normalisation,
    cross-normalisation constants of the other modules, their 1-sigma errors (``errors``, keyed
    like the XSPEC parameters), the shape's 3 x 3 covariance, chi-square and degrees of freedom.
    ``at_bound``: names of shape parameters that ended on a limit of their allowed range; they
    are held there (error 0, no covariance) and flagged in results.json.
    """

    pho_index1: float
    break_e: float
    pho_index2: float
    norm: float
    crossnorm: list
    errors: dict
    shape_covariance: np.ndarray
    chi2: float
    dof: int
    at_bound: tuple = ()

    @property
    def shape(self) -> tuple:
        return (self.pho_index1, self.break_e, self.pho_index2)


@dataclass(frozen=True)
class SoftComponent:
    """Soft-component shape used for one data set: fitted to its OCC spectra (``fit``, from
    the modules ``fpms``) or the default shape (``fit`` None): without OCC data, when the OCC
    spectra show no significant soft component, or when they cannot constrain its shape.

    ``detected``: whether the OCC spectra show the component (None without OCC data);
    ``detection``: the fixed-shape test behind it (significance, per-module norms and 90 %
    upper limits, see :func:`~bkgjax.missions.nustar_cxb.spectral_stage.detect_soft_component`);
    ``note``: why the default shape is used, or which shape parameters sit on a bound."""

    shape: tuple
    fpms: tuple = ()
    fit: SoftShapeFit | None = None
    detected: bool | None = None
    detection: dict | None = None
    note: str | None = None

    @property
    def fixed(self) -> bool:
        return self.fit is None

    @property
    def shape_covariance(self):
        return None if self.fit is None else self.fit.shape_covariance


@dataclass(frozen=True)
class SciFit:
    """CXB (Gruber eq. 1) + soft component fitted to one SCI aperture spectrum.

    ``cxb_norm`` relative to HEAO-1, ``covariance`` of (CXB norm, soft norm[, E_fold]),
    ``flux_3_20`` the 3-20 keV CXB energy flux (erg/s/cm^2/deg^2) with its 1-sigma error;
    ``efold``/``efold_err`` only with a free folding energy (section 5.3).  The soft norm is
    ``soft_detected`` when ``soft_norm / soft_norm_err`` reaches the detection threshold,
    otherwise ``soft_upper90`` (max(norm, 0) + 1.645 sigma) is its 90 % upper limit.  ``note``
    says why a number is undefined (NaN, written as null).
    """

    cxb_norm: float
    cxb_norm_err: float
    soft_norm: float
    soft_norm_err: float
    covariance: list
    flux_3_20: float
    flux_3_20_err: float
    chi2: float
    dof: int
    efold: float | None = None
    efold_err: float | None = None
    soft_detected: bool | None = None
    soft_significance: float | None = None
    soft_upper90: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class ModuleSpectrum:
    """Spectral-stage record of one module: its SCI pixel fits, the band covariance of
    :math:`N_\\mathrm{apt}` (statistical + chip-factor uncertainty), the aperture response
    ([n_bands, n_channels]) and the SCI spectral fit."""

    module: ModuleData
    bands: ModuleBands
    band_covariance: np.ndarray
    response: np.ndarray
    fit: SciFit


@dataclass(frozen=True)
class CrossNormFit:
    """Joint FPMA + FPMB fit of one data set (section 4, Fig. 3): FPMB/FPMA constant C and the
    common CXB norm with 1-sigma errors, chi-square and degrees of freedom."""

    crossnorm: float
    crossnorm_err: float
    cxb_norm: float
    cxb_norm_err: float
    chi2: float
    dof: int


# ----------------------------------------------------------------------------------------------
# One-step model


class OneStepParts(NamedTuple):
    r"""Structured pieces of the one-step model (one module, or stacked [m, ...]).

    ``flat`` [4, 32, 32]: :math:`M T`; ``geometry`` [4, 32, 32]: :math:`a R_\mathrm{pix}\Omega T`
    (cm^2 deg^2 s); ``cxb_band``, ``soft_band`` [n_bands, 4]: per-chip band responses to the CXB
    and soft spectra of norm 1 (see :func:`~bkgjax.missions.nustar_cxb.one_step.one_step_parts`).
    """

    flat: np.ndarray
    geometry: np.ndarray
    cxb_band: np.ndarray
    soft_band: np.ndarray


@dataclass(frozen=True)
class OneStepGroup:
    """One-step fit of a stack of modules with the same template layout: module labels, counts
    [m, nb, 4, 32, 32], masks [m, 4, 32, 32], MLE coefficients [m, nb + 2] with covariance, and
    the stacked :class:`OneStepParts` (used by ``one_step_mean`` and NUTS)."""

    modules: tuple
    counts: np.ndarray
    masks: np.ndarray
    theta: np.ndarray
    covariance: np.ndarray
    parts: OneStepParts

    @property
    def n_bands(self) -> int:
        return self.parts.cxb_band.shape[1]


class OneStepFlux(NamedTuple):
    """One-step 3-20 keV CXB flux of one module and its 1-sigma error (chip factors included)."""

    value: float
    err1sigma: float


# ----------------------------------------------------------------------------------------------
# Combination


@dataclass(frozen=True)
class CombinedFlux:
    """Inverse-variance weighted mean of fluxes (section 5.2): value, 1-sigma error, 90 %
    bounds, fractional rms scatter and statistical error, chi-square about the mean; ``n_used``
    values entered (those with a finite, positive error), ``note`` says what was left out or
    why a number is undefined (NaN)."""

    value: float
    err: float
    lower90: float
    upper90: float
    rms_scatter_frac: float
    stat_err_frac: float
    chi2: float
    dof: int
    n_used: int = 0
    note: str | None = None


@dataclass(frozen=True)
class AverageSpectrum:
    """Stacked CXB spectrum (soft component subtracted, section 5.3) and its model fits
    (``fits``: model name -> chi2, dof, parameters with errors)."""

    spectrum: np.ndarray
    spectrum_err: np.ndarray
    fits: dict


@dataclass(frozen=True)
class Combination:
    """Campaign-level numbers: weighted mean flux over all modules and per FPM, the mean pixel
    solid angle (deg^2) entering the cosmic variance of eq. (4), and the stacked spectrum."""

    combined: CombinedFlux
    per_fpm: dict
    mean_omega: float
    cosmic_variance_frac: float
    average: AverageSpectrum


# ----------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class AnalysisResult:
    """Everything :func:`~bkgjax.missions.nustar_cxb.analysis.run_analysis` computes.

    ``payload`` is the JSON-able summary written to results.json; the other fields hold the
    arrays behind it (per-module sequences aligned with ``modules``).
    """

    modules: tuple
    bands: BandGrid
    backgrounds: tuple
    spectra: tuple
    soft: dict
    crossnorm: dict
    one_step: tuple
    one_step_flux: tuple
    combination: Combination
    sci_soft_model: str
    payload: dict

    @property
    def e_lo(self):
        return self.bands.e_lo

    @property
    def e_hi(self):
        return self.bands.e_hi
