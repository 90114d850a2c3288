r"""NuSTAR stray-light CXB measurement (Krivonos et al. 2021, MNRAS 502, 3966).

The method (nustar_cxb_stray_light.txt, sections 4-5), as implemented here:

1. **Pixel stage** (eq. 2-3).  In each of ``n_bands`` energy bands the counts in RAW pixel
   :math:`p` (chip :math:`c`) of one data set and focal-plane module are Poisson with mean

   .. math:: \mu_p = \bigl(N_\mathrm{bkg} M_p + N_\mathrm{apt}\,R_\mathrm{pix}\,
             \bar A_{c,b}\,a\,\Omega_p\bigr)\,T ,

   where :math:`a = 0.0036\ \mathrm{cm^2}`, :math:`\Omega_p` the open-sky solid angle (deg^2),
   :math:`\bar A_{c,b}` the CXB-weighted band average of detector absorption x Be window, and
   :math:`M_p` the chip non-uniformity from the Earth-occulted (OCC) data in 10-20 keV (one
   relative normalisation per chip; without OCC data each chip gets a free flat normalisation).
   All observations of a data set share the model, so the summed counts with the summed
   exposure give the same likelihood as the joint fit over observations.  Every band x module x
   data set is fitted by one compiled, ``vmap``-ed Newton solve
   (:func:`bkgjax.fit.templates.fit_templates`); errors from the Hessian, the profile
   likelihood, optionally a NumPyro posterior and the paper's bootstrap.

2. **Spectral stage** (section 4-5.1).  :math:`N_\mathrm{apt}` per band is the aperture photon
   flux (photons/s/cm^2/deg^2); divided by the band width it is the aperture spectrum.  The OCC
   aperture spectrum fixes the shape of the soft component (broken power law, Table 3), fitted
   jointly to FPMA and FPMB with a cross-normalisation; the SCI spectrum is fitted with the
   Gruber et al. (1999) CXB (eq. 1, free norm) plus that soft shape with free norm
   (chi-square, as in XSPEC).  The 3-20 keV CXB energy flux with 90 % errors per data set and
   module (Table 4), the weighted mean, rms scatter versus statistical error (section 5.2) and
   the cosmic variance of eq. (4) follow.  The stacked spectrum is fitted with a power law, the
   Gruber shape and the Gruber shape with free E_fold (section 5.3).

3. **One-step model** (beyond the paper): the CXB normalisation is fitted directly to the full
   band x pixel cube, with the exact per-chip band responses and no intermediate per-band step.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.fit.optimize import levenberg_marquardt, to_bounded, to_unbounded
from bkgjax.fit.templates import (
    bootstrap_templates,
    fit_templates,
    template_profile_bounds,
)
from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.spectral import bknpower, cxb_gruber, energy_flux, powerlaw

__all__ = [
    "AnalysisOptions",
    "ModuleData",
    "Campaign",
    "PAPER_SOFT_SHAPE",
    "HEAO1_FLUX_3_20",
    "INTEGRAL_FLUX_3_20",
    "campaign_from_cubes",
    "channel_grid",
    "band_membership",
    "chip_efficiency",
    "aperture_response",
    "pixel_templates",
    "detect_dead_pixels",
    "flat_from_occultation",
    "fit_pixel_stage",
    "fit_soft_shape",
    "fit_sci_spectrum",
    "cosmic_variance",
    "fit_crossnorm",
    "combine_fluxes",
    "average_spectrum_fits",
    "one_step_parts",
    "one_step_templates",
    "fit_one_step",
    "run_analysis",
]

FWHM_90 = 1.6448536269514722  # 90 % two-sided Gaussian half-width in sigma
DELTA_90 = 2.705543454095404  # chi-square(1) 90 % quantile

#: Table 3, data set 1 (COSMOS EP1): soft OCC component, broken power law.
PAPER_SOFT_SHAPE = {"PhoIndx1": 5.0, "BreakE": 4.8, "PhoIndx2": 0.9}
#: Reference 3-20 keV CXB fluxes (erg/s/cm^2/deg^2), section 5.1 and Fig. 8.
HEAO1_FLUX_3_20 = 2.61e-11
INTEGRAL_FLUX_3_20 = 2.88e-11
#: 1 mCrab in 3-20 keV (footnote 3): the conservative S_max of eq. (4).
MCRAB_3_20 = 2.5e-11


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of :func:`run_analysis` (also read from the ``[analysis]`` table of a config).

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

    def __post_init__(self):
        if not (0 < self.e_min < self.e_max):
            raise ValueError(f"need 0 < e_min < e_max keV, got {self.e_min}, {self.e_max}")
        if self.n_bands < 3:
            raise ValueError(f"n_bands must be >= 3 for the spectral stage, got {self.n_bands}")
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


# ----------------------------------------------------------------------------------------------
# Band responses


def channel_grid(e_lo, e_hi):
    """PI channels covering the bands: (channel lower edges, upper edges) in keV."""
    pi_lo, pi_hi = nustar.band_pi_edges(e_lo, e_hi)
    pis = np.arange(int(pi_lo.min()), int(pi_hi.max()))
    lo = nustar.pi_to_energy(pis)
    return np.asarray(lo, float), np.asarray(lo, float) + nustar.PI_STEP_KEV


def band_membership(e_lo, e_hi):
    """[n_bands, n_channels] 0/1 matrix: channel j belongs to band b."""
    pi_lo, pi_hi = nustar.band_pi_edges(e_lo, e_hi)
    pis = np.arange(int(pi_lo.min()), int(pi_hi.max()))
    return ((pis[None, :] >= pi_lo[:, None]) & (pis[None, :] < pi_hi[:, None])).astype(float)


def _gruber_channels(ch_lo, ch_hi, e_fold=41.13):
    return np.asarray(cxb_gruber().structure.evaluate(jnp.array([1.0, 1.29, e_fold]),
                                                       jnp.asarray(ch_lo), jnp.asarray(ch_hi)))


def chip_efficiency(geometry, e_lo, e_hi):
    r"""[n_bands, 4] band-averaged :math:`A_\mathrm{det} A_\mathrm{Be}`, CXB-weighted.

    :math:`\bar A_{c,b} = \sum_{j\in b} S_j T_c(E_j) / \sum_{j\in b} S_j` on the PI channels
    of the band (:math:`S_j` the Gruber photon flux in channel j, :math:`T_c` evaluated at the
    channel centre), so a CXB-shaped spectrum is converted exactly (section 4, eq. 2).
    """
    ch_lo, ch_hi = channel_grid(e_lo, e_hi)
    member = band_membership(e_lo, e_hi)
    weight = _gruber_channels(ch_lo, ch_hi)
    trans = geometry.transmission(0.5 * (ch_lo + ch_hi))  # [4, n_ch]
    return (member * weight) @ trans.T / (member @ weight)[:, None]


def aperture_response(geometry, e_lo, e_hi, mask=None):
    r"""[n_bands, n_channels] map from a photon spectrum per deg^2 to :math:`N_\mathrm{apt}`.

    The pixel fit reports :math:`N_\mathrm{apt,b}` under the CXB-weighted efficiency, so a
    spectrum :math:`f_j` (photons/s/cm^2/deg^2 per PI channel) predicts
    :math:`N_b = \sum_{j\in b} f_j \bar T(E_j) / \bar A_b`, with chip averages weighted by each
    chip's summed solid angle (its lever on the fit).  Exact for a CXB-shaped band spectrum.
    """
    ch_lo, ch_hi = channel_grid(e_lo, e_hi)
    member = band_membership(e_lo, e_hi)
    omega = geometry.omega * (geometry.pixel_mask if mask is None else mask)
    chip_weight = omega.reshape(4, -1).sum(axis=1)
    chip_weight = chip_weight / chip_weight.sum()
    trans = chip_weight @ geometry.transmission(0.5 * (ch_lo + ch_hi))
    eff = chip_efficiency(geometry, e_lo, e_hi) @ chip_weight
    return member * trans[None, :] / eff[:, None]


# ----------------------------------------------------------------------------------------------
# Pixel stage


def detect_dead_pixels(counts, expected_floor=20.0):
    """Pixels with no counts in any band although the median pixel has >= expected_floor.

    Real images mark dead or bad pixels with zeros (../shared/data/README.md, occulted); with a
    median of 20 counts a live pixel has probability e^-20 of being empty.
    """
    total = np.asarray(counts).reshape(-1, 4, 32, 32).sum(axis=0)
    live = total > 0
    deep_enough = live.any() and np.median(total[live]) >= expected_floor
    return ~live if deep_enough else np.zeros_like(live)


def pixel_mask(geometry, counts_list, mask_chip_edges=False):
    """Pixels used in the fit: present in the pixmap, not dead, optionally not on chip edges."""
    mask = np.asarray(geometry.pixel_mask, bool).copy()
    for counts in counts_list:
        if counts is not None:
            mask &= ~detect_dead_pixels(counts)
    if mask_chip_edges:
        edge = np.zeros((32, 32), bool)
        edge[[0, -1], :] = True
        edge[:, [0, -1]] = True
        mask &= ~edge[None]
    return mask


def pixel_templates(geometry, efficiency, exposure, flat=None, rpix=1.0):
    r"""Templates of eq. (2) for every band: [n_bands, K, 4, 32, 32].

    With ``flat`` (the [4, 32, 32] map :math:`M`): K = 2, coefficients
    :math:`(N_\mathrm{bkg}, N_\mathrm{apt})`.  Without: K = 5, one flat normalisation per chip
    then :math:`N_\mathrm{apt}`.  Units: :math:`N_\mathrm{bkg}` counts/s/pixel,
    :math:`N_\mathrm{apt}` photons/s/cm^2/deg^2 (incident, per band).
    """
    omega = np.asarray(geometry.omega, float)
    aperture = (np.asarray(efficiency)[:, :, None, None] * nustar.PIXEL_AREA_CM2 * rpix
                * omega[None] * exposure)  # [nb, 4, 32, 32]
    n_bands = aperture.shape[0]
    if flat is not None:
        flat_t = np.broadcast_to(np.asarray(flat, float) * exposure, (n_bands, 4, 32, 32))
        return np.stack([flat_t, aperture], axis=1)
    chips = np.eye(4)[:, :, None, None] * np.ones((1, 1, 32, 32)) * exposure  # [4(chip),4,32,32]
    chips = np.broadcast_to(chips, (n_bands, 4, 4, 32, 32))
    return np.concatenate([chips, aperture[:, None]], axis=1)


_fit_single = jax.jit(fit_templates)


@jax.jit
def _fit_all(counts, templates, mask):
    # counts [m, nb, ...], templates [m, nb, K, ...], mask [m, ...] -> TemplateFit [m, nb]
    per_band = jax.vmap(fit_templates, in_axes=(0, 0, None))
    return jax.vmap(per_band, in_axes=(0, 0, 0))(counts, templates, mask)


@partial(jax.jit, static_argnames=("index",))
def _profile_all(counts, templates, mask, best, index):
    def one(c, t, m, b):
        return template_profile_bounds(c, t, m, b, index, DELTA_90)

    per_band = jax.vmap(one, in_axes=(0, 0, None, 0))
    return jax.vmap(per_band, in_axes=(0, 0, 0, 0))(counts, templates, mask, best)


def flat_from_occultation(geometry, occ_counts_10_20, occ_exposure, mask, rpix=1.0):
    r"""Chip relative normalisations :math:`M_\mathrm{bkg}` from OCC 10-20 keV (section 4).

    The OCC image is fitted with one flat normalisation per chip plus the aperture template
    (the occulted data still carry an aperture-shaped backscatter component); the flat
    normalisations divided by their mean are :math:`M`, returned as a [4, 32, 32] map.
    """
    e_lo, e_hi = nustar.energy_bands(10.0, 20.0, 1)
    eff = chip_efficiency(geometry, e_lo, e_hi)
    templates = pixel_templates(geometry, eff, occ_exposure, flat=None, rpix=rpix)[0]
    result = _fit_single(jnp.asarray(occ_counts_10_20, float), jnp.asarray(templates),
                         jnp.asarray(mask))
    chip_norm = np.asarray(result.theta[:4])
    if not np.all(chip_norm > 0):
        raise ValueError(f"OCC 10-20 keV chip normalisations not all positive ({chip_norm}); "
                         "the occulted data are too shallow to derive M_bkg")
    factors = chip_norm / chip_norm.mean()
    # covariance of the normalised factors f = c / mean(c) (delta method)
    jac = (np.eye(4) - np.outer(factors, np.full(4, 0.25))) / chip_norm.mean()
    cov_factors = jac @ np.asarray(result.covariance[:4, :4]) @ jac.T
    return factors[:, None, None] * np.ones((4, 32, 32)), factors, cov_factors


_CHIP_OF_PIXEL = np.repeat(np.arange(4), 32 * 32).reshape(4, 32, 32)


def _score_with_factors(theta, factors, counts, other_templates, flat_exposure, mask,
                        per_band):
    """Score (gradient of ln L in theta) when the flat templates are built from chip factors:
    ``factors[chip] * T`` first (one per band, each non-zero in its own band, when
    ``per_band``; counts then [nb, 4, 32, 32]), followed by ``other_templates``."""
    flat = factors[_CHIP_OF_PIXEL] * flat_exposure
    if per_band:
        n_bands = counts.shape[0]
        flats = jnp.eye(n_bands)[:, :, None, None, None] * flat[None, None]
    else:
        flats = flat[None]
    templates = jnp.concatenate([flats, other_templates], axis=0)
    mu = jnp.tensordot(theta, templates, axes=1)
    mask = jnp.broadcast_to(mask, mu.shape)
    safe = jnp.where(mask & (mu > 0), mu, 1.0)
    resid = jnp.where(mask, counts / safe - 1.0, 0.0)
    return jnp.tensordot(templates, resid, axes=resid.ndim)


@partial(jax.jit, static_argnames=("per_band",))
def _flat_sensitivity(theta, covariance, factors, counts, other_templates, flat_exposure, mask,
                      per_band=False):
    r""":math:`d\hat\theta/df` for chip factors f (implicit function theorem):
    :math:`\partial_f \hat\theta = (-H)^{-1} \partial_f g`, with g the score and
    :math:`(-H)^{-1}` the fit's covariance."""
    dg_df = jax.jacfwd(_score_with_factors, argnums=1)(
        theta, factors, counts, other_templates, flat_exposure, mask, per_band)
    return covariance @ dg_df


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
    band_covariance: dict = field(default_factory=dict)


def _band_flat_sensitivity(stage, i, factors, exposure):
    """[n_bands, 4]: derivative of N_apt in every band with respect to the chip factors."""
    fits = jax.tree_util.tree_map(lambda x: x[i], stage.fits)
    sens = jax.vmap(_flat_sensitivity, in_axes=(0, 0, None, 0, 0, None, None))(
        fits.theta, fits.covariance, jnp.asarray(factors), jnp.asarray(stage.counts[i]),
        jnp.asarray(stage.templates[i][:, 1:]), exposure, jnp.asarray(stage.masks[i]))
    return np.asarray(sens[:, -1, :])


@partial(jax.jit, static_argnames=("n_boot",))
def _bootstrap_bands(keys, best, templates, mask, n_boot):
    return jax.vmap(lambda k, b, t: bootstrap_templates(k, b, t, mask, n_boot))(
        keys, best, templates)


def fit_pixel_stage(counts, templates, masks, *, profile=True, bootstrap=0, seed=0):
    """Fit eq. (2)-(3) for a stack of modules in one compiled, vmapped call.

    counts [m, nb, 4, 32, 32], templates [m, nb, K, 4, 32, 32] (last template = aperture),
    masks [m, 4, 32, 32].  Returns :class:`PixelStage`.
    """
    counts = jnp.asarray(counts, jnp.float64)
    templates = jnp.asarray(templates, jnp.float64)
    masks = jnp.asarray(masks, bool)
    fits = _fit_all(counts, templates, masks)
    k = templates.shape[2]
    cov = np.asarray(fits.covariance)
    theta = np.asarray(fits.theta)
    n_apt = theta[..., -1]
    n_apt_err = np.sqrt(cov[..., -1, -1])
    if k == 2:
        n_bkg, n_bkg_err = theta[..., 0], np.sqrt(cov[..., 0, 0])
    else:
        # Mean of the per-chip flat normalisations and its error from the covariance.
        w = np.full(k - 1, 1.0 / (k - 1))
        n_bkg = theta[..., :-1] @ w
        n_bkg_err = np.sqrt(np.einsum("i,...ij,j->...", w, cov[..., :-1, :-1], w))
    lower = upper = None
    if profile:
        lo, hi, _ = _profile_all(counts, templates, masks, fits, k - 1)
        lower, upper = np.asarray(lo), np.asarray(hi)
    boot_err = None
    if bootstrap:
        # one compiled call per module, vmapped over its bands (the bootstrap itself processes
        # replicas in bounded batches)
        boot_err = np.zeros_like(n_apt)
        keys = jax.random.split(jax.random.key(seed), counts.shape[0] * counts.shape[1])
        keys = keys.reshape(counts.shape[:2])
        for i in range(counts.shape[0]):
            best = jax.tree_util.tree_map(lambda x: x[i], fits)
            samples = _bootstrap_bands(keys[i], best, templates[i], masks[i], n_boot=bootstrap)
            boot_err[i] = np.std(np.asarray(samples[:, :, -1]), axis=1, ddof=1)
    return PixelStage(n_apt, n_apt_err, n_bkg, n_bkg_err, lower, upper, np.asarray(fits.cstat),
                      np.asarray(fits.n_pixels), np.asarray(fits.converged), fits,
                      np.asarray(templates), np.asarray(counts), np.asarray(masks), boot_err)


# ----------------------------------------------------------------------------------------------
# Spectral stage (chi-square on the aperture spectrum, as in XSPEC)


def _chi2_fit(predict, y, sigma, u0):
    r"""Minimise the chi-square of ``y`` against ``predict(u)``; returns (u, chi2, cov_u).

    ``sigma``: 1-sigma errors (vector) or a full covariance matrix (2-D), in which case
    :math:`\chi^2 = r^T C^{-1} r` (band-to-band correlations from the chip factors)."""
    y = jnp.asarray(y)
    sigma = jnp.asarray(sigma)
    if sigma.ndim == 2:
        chol = jnp.linalg.cholesky(sigma)

        def whiten(r):
            return jax.scipy.linalg.solve_triangular(chol, r, lower=True)
    else:
        def whiten(r):
            return r / sigma

    def chi2(u):
        return jnp.sum(whiten(y - predict(u)) ** 2)

    result = levenberg_marquardt(chi2, jnp.asarray(u0, jnp.float64), dtol=1e-10)
    hess = jax.hessian(chi2)(result.x)
    cov = 2.0 * jnp.linalg.inv(hess)
    return result.x, result.fun, cov


def _soft_photons(shape, norm, ch_lo, ch_hi):
    g1, eb, g2 = shape
    return bknpower().structure.evaluate(jnp.stack([g1, eb, g2, norm]), ch_lo, ch_hi)


def sci_soft_photons(shape, norm, ch_lo, ch_hi, soft_model="powerlaw"):
    """Soft component of the SCI spectrum: the low-energy (E < E_break) branch of the OCC
    broken power law, E^-Gamma1 (section 5.1, "a soft low-energy power-law component"), or with
    ``soft_model="bknpower"`` the full OCC shape (backscattered-CXB branch included)."""
    if soft_model == "bknpower":
        return _soft_photons(shape, norm, ch_lo, ch_hi)
    return powerlaw().structure.evaluate(jnp.stack([shape[0], norm]), ch_lo, ch_hi)


def cxb_photons(norm, e_fold, ch_lo, ch_hi, index=1.29):
    return cxb_gruber().structure.evaluate(jnp.stack([norm, index, e_fold]), ch_lo, ch_hi)


_SOFT_LOWER = jnp.array([1.0, 3.2, -1.0])
_SOFT_UPPER = jnp.array([10.0, 12.0, 4.0])


@jax.jit
def _soft_shape_core(ys, sig, resp, ch_lo, ch_hi, norm0):
    n_mod = resp.shape[0]

    def unpack(u):
        shape = to_bounded(u[:3], _SOFT_LOWER, _SOFT_UPPER)
        norm = norm0 * jnp.exp(u[3])
        cross = jnp.concatenate([jnp.ones(1), jnp.exp(u[4:])])
        return shape, norm, cross

    def predict(u):
        shape, norm, cross = unpack(u)
        photons = _soft_photons(shape, norm, ch_lo, ch_hi)
        return (cross[:, None] * (resp @ photons)).reshape(-1)

    def physical(uu):
        shape, norm, cross = unpack(uu)
        return jnp.concatenate([shape, norm[None], cross[1:]])

    u0 = jnp.concatenate([to_unbounded(jnp.array([5.0, 4.8, 0.9]), _SOFT_LOWER, _SOFT_UPPER),
                          jnp.zeros(n_mod)])
    u, chi2, cov_u = _chi2_fit(predict, ys, sig, u0)
    jac = jax.jacobian(physical)(u)
    return physical(u), jac @ cov_u @ jac.T, chi2


def fit_soft_shape(spectra, responses, ch_lo, ch_hi):
    r"""Broken power law fitted jointly to the OCC aperture spectra of FPMA and FPMB.

    ``spectra``: list of (y, sigma) per module (:math:`N_\mathrm{apt}` per band and its error);
    ``responses``: matching [n_bands, n_channels] matrices.  Shape
    :math:`(\Gamma_1, E_\mathrm{br}, \Gamma_2)` shared, one normalisation for the first module
    and cross-normalisation constants for the others (Table 3, "Const.").  Returns a dict with
    values, 1-sigma errors, chi2 and dof.
    """
    ch_lo, ch_hi = jnp.asarray(ch_lo), jnp.asarray(ch_hi)
    ys = jnp.concatenate([jnp.asarray(y) for y, _ in spectra])
    sig = jnp.concatenate([jnp.asarray(s) for _, s in spectra])
    resp = jnp.stack([jnp.asarray(r) for r in responses])
    unit = resp[0] @ _soft_photons(jnp.array([5.0, 4.8, 0.9]), 1.0, ch_lo, ch_hi)
    norm0 = jnp.maximum(jnp.asarray(spectra[0][0])[0] / unit[0], 1e-12)
    values, cov, chi2 = _soft_shape_core(ys, sig, resp, ch_lo, ch_hi, norm0)
    values = np.asarray(values)
    errors = np.sqrt(np.maximum(np.diag(np.asarray(cov)), 0.0))
    dof = int(ys.shape[0] - values.shape[0])
    shape_cov = np.asarray(cov)[:3, :3]
    return {"PhoIndx1": values[0], "BreakE": values[1], "PhoIndx2": values[2],
            "norm": values[3], "crossnorm": values[4:].tolist(),
            "errors": {"PhoIndx1": errors[0], "BreakE": errors[1], "PhoIndx2": errors[2],
                       "norm": errors[3], "crossnorm": errors[4:].tolist()},
            "shape": (values[0], values[1], values[2]), "shape_covariance": shape_cov,
            "chi2": float(chi2), "dof": dof}


@partial(jax.jit, static_argnames=("free_efold", "soft_model"))
def _sci_core(y, sigma, response, ch_lo, ch_hi, shape, free_efold, soft_model):
    cxb_unit = response @ cxb_photons(1.0, 41.13, ch_lo, ch_hi)
    soft_unit = response @ sci_soft_photons(shape, 1.0, ch_lo, ch_hi, soft_model)
    var = jnp.diag(sigma) if sigma.ndim == 2 else sigma**2
    cxb0 = jnp.sum(y * cxb_unit / var) / jnp.sum(cxb_unit**2 / var)
    # scale the soft norm so both coefficients are O(1) for the minimiser
    soft_scale = jnp.abs(y[0]) / soft_unit[0]
    if free_efold:
        def predict(u):
            return (u[0] * (response @ cxb_photons(1.0, u[2], ch_lo, ch_hi))
                    + u[1] * soft_scale * soft_unit)
        u0 = jnp.stack([cxb0, 0.1, 41.13])
    else:
        def predict(u):
            return u[0] * cxb_unit + u[1] * soft_scale * soft_unit
        u0 = jnp.stack([cxb0, 0.1])
    u, chi2, cov = _chi2_fit(predict, y, sigma, u0)
    scale = jnp.ones_like(u).at[1].set(soft_scale)
    return u * scale, cov * jnp.outer(scale, scale), chi2


@partial(jax.jit, static_argnames=("soft_model",))
def _linear_norms(y, cov, response, ch_lo, ch_hi, shape, soft_model):
    """Generalised least squares (CXB norm, soft norm) for a fixed soft shape."""
    design = jnp.stack([response @ cxb_photons(1.0, 41.13, ch_lo, ch_hi),
                        response @ sci_soft_photons(shape, 1.0, ch_lo, ch_hi, soft_model)], axis=1)
    weight = jnp.linalg.inv(cov)
    return jnp.linalg.solve(design.T @ weight @ design, design.T @ weight @ y)


_shape_jacobian = jax.jit(jax.jacfwd(_linear_norms, argnums=5), static_argnames=("soft_model",))


def fit_sci_spectrum(y, sigma, response, ch_lo, ch_hi, soft_shape, *, free_efold=False,
                     soft_model="powerlaw", shape_covariance=None):
    r"""CXB (eq. 1, free norm) + soft component (fixed shape, free norm) on one SCI spectrum.

    The soft component is the OCC broken power law's low-energy branch :math:`E^{-\Gamma_1}`
    (``soft_model="powerlaw"``, the paper's choice: backscattered CXB is assumed suppressed
    on-sky, section 5.2.3) or the full broken power law (``"bknpower"``).

    Returns a dict with the CXB norm (relative to HEAO-1), the soft norm, their covariance, the
    3-20 keV CXB energy flux (erg/s/cm^2/deg^2) with 1-sigma errors, chi2 and dof.  With
    ``free_efold`` the Gruber folding energy is also free (section 5.3).
    """
    u, cov, chi2 = _sci_core(jnp.asarray(y, jnp.float64), jnp.asarray(sigma, jnp.float64),
                             jnp.asarray(response), jnp.asarray(ch_lo), jnp.asarray(ch_hi),
                             jnp.asarray(soft_shape, jnp.float64), free_efold, soft_model)
    u, cov = np.asarray(u), np.asarray(cov)
    if shape_covariance is not None and not free_efold:
        # The soft shape comes from the OCC fit with its own errors: propagate them to the
        # norms (delta method on the generalised-least-squares solution).
        sig = jnp.asarray(sigma, jnp.float64)
        full = sig if sig.ndim == 2 else jnp.diag(sig**2)
        jac = np.asarray(_shape_jacobian(jnp.asarray(y, jnp.float64), full, jnp.asarray(response),
                                         jnp.asarray(ch_lo), jnp.asarray(ch_hi),
                                         jnp.asarray(soft_shape, jnp.float64), soft_model))
        cov = cov + jac @ np.asarray(shape_covariance) @ jac.T
    flux_unit = _gruber_flux_3_20(41.13 if not free_efold else float(u[2]))
    norm_err = math.sqrt(max(cov[0, 0], 0.0))
    flux = u[0] * flux_unit
    result = {
        "cxb_norm": float(u[0]), "cxb_norm_err": norm_err,
        "soft_norm": float(u[1]), "soft_norm_err": math.sqrt(max(cov[1, 1], 0.0)),
        "covariance": cov.tolist(),
        "flux_3_20": float(flux), "flux_3_20_err": float(norm_err * flux_unit),
        "chi2": float(chi2), "dof": int(len(np.asarray(y)) - len(u)),
    }
    if free_efold:
        result["efold"] = float(u[2])
        result["efold_err"] = math.sqrt(max(cov[2, 2], 0.0))
        # flux error including the E_fold uncertainty (delta method)
        grad = np.array([flux_unit, 0.0,
                         u[0] * (_gruber_flux_3_20(u[2] + 0.01) - _gruber_flux_3_20(u[2] - 0.01))
                         / 0.02])
        result["flux_3_20_err"] = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    return result


@functools.lru_cache(maxsize=256)
def _gruber_flux_3_20(e_fold=41.13, e_min=3.0, e_max=20.0):
    model = cxb_gruber().set("EFold", float(e_fold))
    return float(energy_flux(model, None, e_min, e_max))


@partial(jax.jit, static_argnames=("soft_model",))
def _crossnorm_core(y_a, cov_a, resp_a, y_b, cov_b, resp_b, ch_lo, ch_hi, shape, soft_model):
    cxb_a = resp_a @ cxb_photons(1.0, 41.13, ch_lo, ch_hi)
    cxb_b = resp_b @ cxb_photons(1.0, 41.13, ch_lo, ch_hi)
    soft_a = resp_a @ sci_soft_photons(shape, 1.0, ch_lo, ch_hi, soft_model)
    soft_b = resp_b @ sci_soft_photons(shape, 1.0, ch_lo, ch_hi, soft_model)
    scale_a = jnp.abs(y_a[0]) / soft_a[0]
    scale_b = jnp.abs(y_b[0]) / soft_b[0]
    zeros = jnp.zeros_like(cov_a)
    cov = jnp.block([[cov_a, zeros], [zeros, cov_b]])
    y = jnp.concatenate([y_a, y_b])
    var_a = jnp.diag(cov_a)
    norm0 = jnp.sum(y_a * cxb_a / var_a) / jnp.sum(cxb_a**2 / var_a)

    def predict(u):
        return jnp.concatenate([u[0] * cxb_a + u[2] * scale_a * soft_a,
                                u[0] * u[1] * cxb_b + u[3] * scale_b * soft_b])

    u, chi2, cov_u = _chi2_fit(predict, y, cov, jnp.stack([norm0, 1.0, 0.1, 0.1]))
    return u, cov_u, chi2


def fit_crossnorm(spectrum_a, spectrum_b, ch_lo, ch_hi, soft_shape, soft_model="powerlaw"):
    """Joint FPMA + FPMB fit of one data set's SCI aperture spectra (section 4, Fig. 3): one
    CXB norm, FPMB cross-normalisation constant C, a soft norm per module.  Each spectrum is
    (y, band covariance, response).  Returns C, its 1-sigma error, the joint CXB norm, chi2/dof."""
    (y_a, cov_a, resp_a), (y_b, cov_b, resp_b) = spectrum_a, spectrum_b
    u, cov, chi2 = _crossnorm_core(*(jnp.asarray(a, jnp.float64) for a in (
        y_a, cov_a, resp_a, y_b, cov_b, resp_b, ch_lo, ch_hi, soft_shape)), soft_model)
    u, cov = np.asarray(u), np.asarray(cov)
    return {"crossnorm": float(u[1]), "crossnorm_err": math.sqrt(max(cov[1, 1], 0.0)),
            "cxb_norm": float(u[0]), "cxb_norm_err": math.sqrt(max(cov[0, 0], 0.0)),
            "chi2": float(chi2), "dof": int(2 * len(np.asarray(y_a)) - 4)}


def cosmic_variance(s_max=MCRAB_3_20, omega_deg2=5.0):
    r"""Eq. (4): :math:`\delta I/I \approx 5.45\times10^{-2} S_{\max,11}^{1/4}\Omega_{\deg}^{-1/2}`.

    ``s_max``: largest undetected source flux in 3-20 keV (erg/s/cm^2; default 1 mCrab, the
    paper's conservative value); ``omega_deg2``: mean solid angle of the pixels (~5 deg^2).
    """
    return 5.45e-2 * (s_max / 1e-11) ** 0.25 / math.sqrt(omega_deg2)


def combine_fluxes(values, errors_1sigma):
    """Inverse-variance weighted mean, its 1-sigma error and the fractional rms scatter
    (section 5.2: rms of the individual values about the mean, divided by the mean)."""
    values = np.asarray(values, float)
    w = 1.0 / np.asarray(errors_1sigma, float) ** 2
    mean = float(np.sum(w * values) / np.sum(w))
    err = float(1.0 / math.sqrt(np.sum(w)))
    rms = float(np.sqrt(np.mean((values - mean) ** 2)) / mean)
    chi2 = float(np.sum(w * (values - mean) ** 2))
    return {"value": mean, "err": err, "lower90": mean - FWHM_90 * err,
            "upper90": mean + FWHM_90 * err, "rms_scatter_frac": rms,
            "stat_err_frac": err / mean, "chi2": chi2, "dof": int(values.size - 1)}


_AVERAGE_MODELS = {
    "powerlaw": ("PhoIndex", "norm"),
    "gruber": ("norm",),
    "gruber_free_efold": ("norm", "EFold"),
    "gruber_free_efold_index": ("norm", "EFold", "PhoIndex"),
}


@partial(jax.jit, static_argnames=("kind",))
def _average_fit(kind, mean, err, resp, ch_lo, ch_hi):
    unit = resp @ cxb_photons(1.0, 41.13, ch_lo, ch_hi)
    var = jnp.diag(err) if err.ndim == 2 else err**2
    n0 = jnp.sum(mean * unit / var) / jnp.sum(unit**2 / var)

    def pl_unit(g):
        return resp @ powerlaw().structure.evaluate(jnp.stack([g, 1.0]), ch_lo, ch_hi)

    scale = mean[0] / pl_unit(1.5)[0]
    identity = lambda u: u  # noqa: E731
    if kind == "powerlaw":
        predict = lambda u: scale * u[1] * pl_unit(u[0])  # noqa: E731
        u0, transform = jnp.array([1.5, 1.0]), lambda u: jnp.stack([u[0], scale * u[1]])  # noqa: E731
    elif kind == "gruber":
        predict, u0, transform = (lambda u: u[0] * unit), n0[None], identity
    elif kind == "gruber_free_efold":
        predict = lambda u: u[0] * (resp @ cxb_photons(1.0, u[1], ch_lo, ch_hi))  # noqa: E731
        u0, transform = jnp.stack([n0, 41.13]), identity
    else:
        predict = lambda u: u[0] * (resp @ cxb_photons(1.0, u[1], ch_lo, ch_hi, u[2]))  # noqa: E731
        u0, transform = jnp.stack([n0, 41.13, 1.29]), identity
    u, chi2, cov = _chi2_fit(predict, mean, err, u0)
    jac = jax.jacobian(transform)(u)
    return transform(u), jac @ cov @ jac.T, chi2


def average_spectrum_fits(cxb_spectra, sigmas, response, ch_lo, ch_hi, covariances=None):
    r"""Section 5.3: the stacked CXB spectrum (soft component subtracted) fitted with a power
    law, the Gruber shape (free norm), the Gruber shape with free E_fold, and with free E_fold
    and photon index.  Returns the stacked spectrum and one dict per model (chi-square fits).

    The stack is the inverse-variance weighted mean per band; with ``covariances`` (one
    band x band matrix per spectrum) its covariance :math:`\sum_i W_i C_i W_i` (band-to-band
    correlations from the chip factors) is used in the chi-square."""
    y = np.asarray(cxb_spectra, float)
    s = np.asarray(sigmas, float)
    w = 1.0 / s**2
    mean = np.sum(w * y, axis=0) / np.sum(w, axis=0)
    err = 1.0 / np.sqrt(np.sum(w, axis=0))
    out = {"spectrum": mean, "spectrum_err": err}
    errors = err
    if covariances is not None:
        frac = w / np.sum(w, axis=0)
        errors = sum(np.outer(f, f) * c for f, c in zip(frac, covariances))
        out["spectrum_err"] = np.sqrt(np.diag(errors))
    for kind, names in _AVERAGE_MODELS.items():
        vals, cov, chi2 = _average_fit(kind, jnp.asarray(mean), jnp.asarray(errors),
                                       jnp.asarray(response), jnp.asarray(ch_lo),
                                       jnp.asarray(ch_hi))
        vals, cov = np.asarray(vals), np.asarray(cov)
        dof = int(mean.size - len(names))
        out[kind] = {"chi2": float(chi2), "dof": dof, "chi2_red": float(chi2) / dof,
                     **{n: float(v) for n, v in zip(names, vals)},
                     **{n + "_err": float(math.sqrt(max(cov[i, i], 0.0)))
                        for i, n in enumerate(names)}}
    out["gruber"]["flux_3_20"] = out["gruber"]["norm"] * _gruber_flux_3_20()
    out["gruber"]["flux_3_20_err"] = out["gruber"]["norm_err"] * _gruber_flux_3_20()
    return out


# ----------------------------------------------------------------------------------------------
# One-step model: CXB parameters straight from the band x pixel cube


def one_step_parts(geometry, e_lo, e_hi, exposure, flat, soft_shape, rpix=1.0,
                   soft_model="powerlaw"):
    r"""Structured pieces of the one-step model of one module.

    ``flat`` [4, 32, 32]: :math:`M T` (counts per unit :math:`N_\mathrm{bkg,b}`);
    ``geometry`` [4, 32, 32]: :math:`a R_\mathrm{pix} \Omega T` (cm^2 deg^2 s);
    ``cxb_band``, ``soft_band`` [n_bands, 4]: :math:`\sum_{j\in b} f_j T_c(E_j)` for the CXB
    (norm 1, Gruber eq. 1) and the soft component (norm 1, fixed shape), i.e. the exact
    per-chip band response instead of a band-averaged efficiency.  The expected counts are
    :math:`N_\mathrm{bkg,b}\,\mathrm{flat} + (C_\mathrm{CXB}\,\mathrm{cxb\_band}_{b,c} +
    C_\mathrm{soft}\,\mathrm{soft\_band}_{b,c})\,\mathrm{geometry}` (:func:`one_step_mean`).
    """
    ch_lo, ch_hi = channel_grid(e_lo, e_hi)
    member = band_membership(e_lo, e_hi)
    trans = geometry.transmission(0.5 * (ch_lo + ch_hi))  # [4, n_ch]
    cxb = np.asarray(cxb_photons(1.0, 41.13, jnp.asarray(ch_lo), jnp.asarray(ch_hi)))
    soft = np.asarray(sci_soft_photons(jnp.asarray(soft_shape, jnp.float64), 1.0,
                                        jnp.asarray(ch_lo), jnp.asarray(ch_hi), soft_model))
    flat = np.ones((4, 32, 32)) if flat is None else np.asarray(flat)
    return {"flat": flat * exposure,
            "geometry": nustar.PIXEL_AREA_CM2 * rpix * np.asarray(geometry.omega) * exposure,
            "cxb_band": (member * cxb) @ trans.T,
            "soft_band": (member * soft) @ trans.T}


def one_step_templates(parts):
    r"""Dense templates of :func:`one_step_parts` for one module: [n_bands + 2, n_bands, 4, 32,
    32].  Coefficients: :math:`N_\mathrm{bkg,b}` for every band (template :math:`M T` in band b
    only), then the CXB norm (relative to HEAO-1) and the soft-component norm."""
    n_bands = parts["cxb_band"].shape[0]
    flats = np.eye(n_bands)[:, :, None, None, None] * parts["flat"][None, None]
    cxb_t = parts["cxb_band"][:, :, None, None] * parts["geometry"][None]
    soft_t = parts["soft_band"][:, :, None, None] * parts["geometry"][None]
    return np.concatenate([flats, cxb_t[None], soft_t[None]], axis=0)


@jax.jit
def _fit_one_step_all(counts, templates, masks):
    return jax.vmap(fit_templates, in_axes=(0, 0, 0))(
        counts, templates, jnp.broadcast_to(masks[:, None], counts.shape))


def fit_one_step(counts, templates, masks):
    """One-step MLE for a stack of modules: counts [m, nb, 4,32,32], templates
    [m, nb+2, nb, 4,32,32], masks [m, 4,32,32].  Returns (TemplateFit, flux, flux_err) with
    the 3-20 keV CXB flux from the CXB norm (coefficient -2)."""
    fits = _fit_one_step_all(jnp.asarray(counts, jnp.float64), jnp.asarray(templates),
                             jnp.asarray(masks))
    unit = _gruber_flux_3_20()
    norm = np.asarray(fits.theta[:, -2])
    norm_err = np.sqrt(np.asarray(fits.covariance[:, -2, -2]))
    return fits, norm * unit, norm_err * unit


# ----------------------------------------------------------------------------------------------
# Driver


def _stack_module_inputs(campaign, modules, which, options, flats, masks):
    counts, templates = [], []
    for mod in modules:
        geometry = campaign.geometry(mod.fpm)
        eff = chip_efficiency(geometry, campaign.e_lo, campaign.e_hi)
        data = mod.sci_counts if which == "sci" else mod.occ_counts
        exposure = mod.sci_exposure if which == "sci" else mod.occ_exposure
        counts.append(np.asarray(data, float))
        templates.append(pixel_templates(geometry, eff, exposure, flats[id(mod)], options.rpix))
    return np.stack(counts), np.stack(templates), np.stack([masks[id(mod)] for mod in modules])


def _group_by_template_count(modules, flats):
    groups = {}
    for mod in modules:
        groups.setdefault(flats[id(mod)] is None, []).append(mod)
    return list(groups.values())


def run_analysis(campaign: Campaign, options: AnalysisOptions = AnalysisOptions(), *,
                 progress=None):
    """Run the whole method on a campaign; returns a dict of results (JSON-able parts under
    ``"json"``, arrays for figures under the other keys).  ``progress`` is an optional callable
    ``progress(stage_name)`` called as stages complete (the CLI passes a tqdm updater)."""
    tick = progress or (lambda name: None)
    modules = list(campaign.modules)
    e_lo, e_hi = np.asarray(campaign.e_lo), np.asarray(campaign.e_hi)
    ch_lo, ch_hi = channel_grid(e_lo, e_hi)

    # masks and M_bkg
    masks, flats, chip_factors, factor_cov = {}, {}, {}, {}
    for mod in modules:
        geometry = campaign.geometry(mod.fpm)
        masks[id(mod)] = pixel_mask(geometry, [mod.sci_counts, mod.occ_counts],
                                    options.mask_chip_edges)
        if mod.occ_counts_10_20 is not None and mod.occ_exposure:
            flats[id(mod)], chip_factors[id(mod)], factor_cov[id(mod)] = flat_from_occultation(
                geometry, mod.occ_counts_10_20, mod.occ_exposure, masks[id(mod)], options.rpix)
        else:
            flats[id(mod)], chip_factors[id(mod)], factor_cov[id(mod)] = None, None, None
    tick("flat background maps (OCC 10-20 keV)")

    # pixel stage, SCI and OCC
    sci_stage, occ_stage = {}, {}
    for group in _group_by_template_count(modules, flats):
        counts, templates, mask_arr = _stack_module_inputs(campaign, group, "sci", options,
                                                           flats, masks)
        stage = fit_pixel_stage(counts, templates, mask_arr, profile=options.profile,
                                bootstrap=options.bootstrap, seed=options.seed)
        for i, mod in enumerate(group):
            sci_stage[id(mod)] = (stage, i)
    tick("pixel model, SCI")
    with_occ = [m for m in modules if m.occ_counts is not None and m.occ_exposure]
    for group in _group_by_template_count(with_occ, flats):
        counts, templates, mask_arr = _stack_module_inputs(campaign, group, "occ", options,
                                                           flats, masks)
        stage = fit_pixel_stage(counts, templates, mask_arr, profile=False)
        for i, mod in enumerate(group):
            occ_stage[id(mod)] = (stage, i)
    tick("pixel model, OCC")

    # soft shape per data set from OCC (joint FPMA+FPMB)
    datasets = list(dict.fromkeys(m.dataset for m in modules))
    responses = {id(m): aperture_response(campaign.geometry(m.fpm), e_lo, e_hi, masks[id(m)])
                 for m in modules}
    soft = {}
    for name in datasets:
        occ_mods = [m for m in with_occ if m.dataset == name]
        occ_mods.sort(key=lambda m: m.fpm)
        if occ_mods:
            spectra = [(occ_stage[id(m)][0].n_apt[occ_stage[id(m)][1]],
                        occ_stage[id(m)][0].n_apt_err[occ_stage[id(m)][1]]) for m in occ_mods]
            fit = fit_soft_shape(spectra, [responses[id(m)] for m in occ_mods], ch_lo, ch_hi)
            fit["fpms"] = [m.fpm for m in occ_mods]
            soft[name] = fit
        else:
            soft[name] = {"shape": tuple(options.soft_shape_default), "fpms": [],
                          "fixed": True}
    tick("soft component (OCC spectra)")

    # SCI spectral fits per module; N_apt covariance across bands includes the uncertainty of
    # the chip factors M_bkg taken from the OCC data (they are common to all bands)
    records = []
    for mod in modules:
        stage, i = sci_stage[id(mod)]
        y, s = stage.n_apt[i], stage.n_apt_err[i]
        band_cov = np.diag(s**2)
        if factor_cov[id(mod)] is not None:
            sens = _band_flat_sensitivity(stage, i, chip_factors[id(mod)], mod.sci_exposure)
            band_cov = band_cov + sens @ factor_cov[id(mod)] @ sens.T
        stage.band_covariance[i] = band_cov
        fit = fit_sci_spectrum(y, band_cov, responses[id(mod)], ch_lo, ch_hi,
                               soft[mod.dataset]["shape"], soft_model=options.sci_soft_model,
                               shape_covariance=soft[mod.dataset].get("shape_covariance"))
        records.append((mod, stage, i, fit))
    crossnorm = {}
    for name in datasets:
        pair = {r[0].fpm: r for r in records if r[0].dataset == name}
        if set(pair) == {"FPMA", "FPMB"}:
            spectra = []
            for fpm in ("FPMA", "FPMB"):
                mod, stage, i, _ = pair[fpm]
                spectra.append((stage.n_apt[i], stage.band_covariance[i], responses[id(mod)]))
            crossnorm[name] = fit_crossnorm(spectra[0], spectra[1], ch_lo, ch_hi,
                                            soft[name]["shape"], options.sci_soft_model)
    tick("spectral fits (Table 4)")

    # one-step model
    one_step, one_step_store = {}, []
    for group in (_group_by_template_count(modules, flats) if options.one_step else []):
        counts = np.stack([np.asarray(m.sci_counts, float) for m in group])
        parts = [one_step_parts(campaign.geometry(m.fpm), e_lo, e_hi, m.sci_exposure,
                                flats[id(m)], soft[m.dataset]["shape"], options.rpix,
                                options.sci_soft_model) for m in group]
        templates = np.stack([one_step_templates(p) for p in parts])
        mask_arr = np.stack([masks[id(m)] for m in group])
        fits, flux, flux_err = fit_one_step(counts, templates, mask_arr)
        n_b = len(e_lo)
        one_step_store.append({
            "modules": [f"{m.dataset} {m.fpm}" for m in group], "counts": counts,
            "masks": mask_arr, "theta": np.asarray(fits.theta),
            "covariance": np.asarray(fits.covariance),
            # structured pieces [m, ...] (see one_step_parts), used by one_step_mean / NUTS
            **{key: np.stack([p[key] for p in parts]) for key in parts[0]},
        })
        for i, m in enumerate(group):
            err = float(flux_err[i])
            if factor_cov[id(m)] is not None:
                # chip-factor uncertainty: d(norm)/df by the implicit function theorem, with
                # the flat templates of all bands depending on f
                sens = _flat_sensitivity(
                    fits.theta[i], fits.covariance[i], jnp.asarray(chip_factors[id(m)]),
                    jnp.asarray(counts[i]), jnp.asarray(templates[i][n_b:]), m.sci_exposure,
                    jnp.asarray(mask_arr[i]), per_band=True)
                sens = np.asarray(sens[n_b])  # row of the CXB norm
                extra = sens @ factor_cov[id(m)] @ sens * _gruber_flux_3_20() ** 2
                err = math.sqrt(err**2 + float(extra))
            one_step[id(m)] = (float(flux[i]), err)
    tick("one-step model")

    # combined numbers
    values = np.array([r[3]["flux_3_20"] for r in records])
    sigmas = np.array([r[3]["flux_3_20_err"] for r in records])
    combined = combine_fluxes(values, sigmas)
    per_fpm = {}
    for fpm in sorted({m.fpm for m in modules}):
        sel = np.array([r[0].fpm == fpm for r in records])
        per_fpm[fpm] = combine_fluxes(values[sel], sigmas[sel])
    mean_omega = float(np.mean([np.mean(campaign.geometry(m.fpm).omega[masks[id(m)]])
                                for m in modules]))
    cxb_spectra = []
    for mod, stage, i, fit in records:
        soft_part = responses[id(mod)] @ np.asarray(sci_soft_photons(
            jnp.asarray(soft[mod.dataset]["shape"], jnp.float64), fit["soft_norm"],
            jnp.asarray(ch_lo), jnp.asarray(ch_hi), options.sci_soft_model))
        cxb_spectra.append(stage.n_apt[i] - soft_part)
    avg = average_spectrum_fits(cxb_spectra, [r[1].n_apt_err[r[2]] for r in records],
                                np.mean([responses[id(m)] for m in modules], axis=0), ch_lo, ch_hi,
                                covariances=[r[1].band_covariance[r[2]] for r in records])
    tick("combined flux, average spectrum")

    json_out = {"datasets": [], "combined": {}, "soft_component": {}, "average_spectrum": {},
                "bands": {"e_lo": e_lo.tolist(), "e_hi": e_hi.tolist()}}
    for mod, stage, i, fit in records:
        flux, err = fit["flux_3_20"], fit["flux_3_20_err"]
        entry = {
            "name": mod.dataset, "fpm": mod.fpm, "exposure_s": float(mod.sci_exposure),
            "occ_exposure_s": None if mod.occ_exposure is None else float(mod.occ_exposure),
            "flux_3_20": {"value": flux, "lower90": flux - FWHM_90 * err,
                          "upper90": flux + FWHM_90 * err, "err1sigma": err},
            # S/N two ways: flux / 1-sigma error, and flux / 90 % half-width, which is how the
            # paper's "S/N = 50-70 sigma" (section 5.1) follows from its Table 4.
            "snr": flux / err,
            "snr_90": flux / (FWHM_90 * err),
            "chi2": fit["chi2"], "dof": fit["dof"],
            "cxb_norm": fit["cxb_norm"], "cxb_norm_err": fit["cxb_norm_err"],
            "soft_norm": fit["soft_norm"], "soft_norm_err": fit["soft_norm_err"],
            "chip_factors": (None if chip_factors[id(mod)] is None
                             else np.asarray(chip_factors[id(mod)]).tolist()),
            "chip_factors_err": (None if factor_cov[id(mod)] is None
                                 else np.sqrt(np.diag(factor_cov[id(mod)])).tolist()),
            "n_pixels": int(masks[id(mod)].sum()),
            "one_step_flux_3_20": ({"value": one_step[id(mod)][0],
                                    "err1sigma": one_step[id(mod)][1]}
                                   if id(mod) in one_step else None),
            "bands": [],
        }
        for b in range(len(e_lo)):
            band = {"e_lo": float(e_lo[b]), "e_hi": float(e_hi[b]),
                    "n_apt": float(stage.n_apt[i, b]), "n_apt_err": float(stage.n_apt_err[i, b]),
                    "n_bkg": float(stage.n_bkg[i, b]), "n_bkg_err": float(stage.n_bkg_err[i, b]),
                    "cstat": float(stage.cstat[i, b]), "n_pixels": int(stage.n_pixels[i, b])}
            if stage.n_apt_lower90 is not None:
                band["n_apt_lower90"] = float(stage.n_apt_lower90[i, b])
                band["n_apt_upper90"] = float(stage.n_apt_upper90[i, b])
            if stage.bootstrap_err is not None:
                band["n_apt_bootstrap_err"] = float(stage.bootstrap_err[i, b])
            entry["bands"].append(band)
        json_out["datasets"].append(entry)
    json_out["combined"] = {
        "flux_3_20": {k: combined[k] for k in ("value", "lower90", "upper90")}
        | {"err1sigma": combined["err"]},
        "rms_scatter_frac": combined["rms_scatter_frac"],
        "stat_err_frac": combined["stat_err_frac"],
        "chi2": combined["chi2"], "dof": combined["dof"],
        "per_fpm": {fpm: {"value": c["value"], "err1sigma": c["err"],
                          "rms_scatter_frac": c["rms_scatter_frac"]}
                    for fpm, c in per_fpm.items()},
        "cosmic_variance_frac": cosmic_variance(MCRAB_3_20, mean_omega),
        "mean_pixel_solid_angle_deg2": mean_omega,
        "reference_flux_3_20": {"HEAO-1": HEAO1_FLUX_3_20, "INTEGRAL": INTEGRAL_FLUX_3_20},
    }
    for name, fit in soft.items():
        json_out["soft_component"][name] = {
            k: (float(v) if isinstance(v, (float, np.floating)) else v)
            for k, v in fit.items() if k not in ("shape", "shape_covariance")}
        json_out["soft_component"][name]["shape"] = [float(v) for v in fit["shape"]]
    json_out["fpm_crossnorm"] = crossnorm
    json_out["average_spectrum"] = {k: v for k, v in avg.items()
                                    if k not in ("spectrum", "spectrum_err")}
    return {"json": _jsonable(json_out), "records": records, "soft": soft, "masks": masks,
            "average": avg, "responses": responses, "channels": (ch_lo, ch_hi),
            "modules": modules, "e_lo": e_lo, "e_hi": e_hi,
            "sci_soft_model": options.sci_soft_model, "one_step": one_step_store}


def one_step_mean(theta, store):
    """Expected counts of the one-step model [m, nb, 4, 32, 32] for coefficients [m, nb + 2]
    (structured: no dense templates), from an entry of ``run_analysis(...)["one_step"]``."""
    n_b = store["cxb_band"].shape[1]
    flat = jnp.asarray(store["flat"])[:, None]
    geom = jnp.asarray(store["geometry"])[:, None]
    aperture = (theta[:, n_b, None, None] * jnp.asarray(store["cxb_band"])
                + theta[:, n_b + 1, None, None] * jnp.asarray(store["soft_band"]))
    return theta[:, :n_b, None, None, None] * flat + aperture[..., None, None] * geom


def campaign_posterior(results, options: AnalysisOptions):
    """NUTS posterior of the one-step model (CXB norm, soft norm, N_bkg per band) for every
    module, all modules in one vectorised run; returns a JSON-able summary with the 3-20 keV
    flux posterior (mean, sd, 90 % equal-tailed interval, R-hat, bulk ESS) per module.

    The chip factors M_bkg are held at their OCC values here (the posterior is conditional on
    them); the two-step intervals include their uncertainty.
    """
    import arviz as az

    from bkgjax.infer.templates import run_whitened_nuts

    summary = {}
    unit = _gruber_flux_3_20()
    for store in results["one_step"]:
        theta, _ = run_whitened_nuts(
            store["counts"], np.broadcast_to(store["masks"][:, None], store["counts"].shape),
            store["theta"], store["covariance"], lambda th: one_step_mean(th, store),
            num_warmup=options.num_warmup, num_samples=options.num_samples, seed=options.seed)
        n_b = store["cxb_band"].shape[1]
        flux = theta[..., n_b] * unit  # [chain, draw, m]
        for i, name in enumerate(store["modules"]):
            draws = flux[:, :, i]
            lo, hi = np.percentile(draws, [5, 95])
            summary[name] = {"mean": float(draws.mean()), "sd": float(draws.std(ddof=1)),
                             "lower90": float(lo), "upper90": float(hi),
                             "r_hat": float(az.rhat(draws)), "ess_bulk": float(az.ess(draws))}
    return {"flux_3_20": summary, "model": "one-step (CXB + soft + N_bkg per band)",
            "num_samples": options.num_samples}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, jax.Array):
        return np.asarray(obj).tolist()
    return obj
