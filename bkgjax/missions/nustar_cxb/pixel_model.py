r"""Pixel stage of the NuSTAR stray-light CXB method (Krivonos et al. 2021, section 4, eq. 2-3).

In each energy band the counts in RAW pixel :math:`p` (chip :math:`c`) of one data set and
focal-plane module are Poisson with mean

.. math:: \mu_p = \bigl(N_\mathrm{bkg} M_p + N_\mathrm{apt}\,R_\mathrm{pix}\,
          \bar A_{c,b}\,a\,\Omega_p\bigr)\,T ,

with :math:`a = 0.0036\ \mathrm{cm^2}`, :math:`\Omega_p` the open-sky solid angle (deg^2),
:math:`\bar A_{c,b}` the CXB-weighted band efficiency (:mod:`.responses`) and :math:`M_p` the
chip non-uniformity from the Earth-occulted (OCC) data in 10-20 keV (one relative normalisation
per chip; without OCC data each chip gets a free flat normalisation).  All observations of a
data set share the model, so the summed counts with the summed exposure give the same likelihood
as the joint fit over observations.

Every band x module is fitted by one compiled, ``vmap``-ed Newton solve
(:func:`bkgjax.fit.templates.fit_templates`); errors come from the Hessian, the profile
likelihood (90 %) and optionally the paper's Poisson bootstrap.  The uncertainty of the chip
factors :math:`M` is propagated to :math:`N_\mathrm{apt}` by the implicit function theorem
(:func:`flat_sensitivity`).

Stage functions used by :func:`~bkgjax.missions.nustar_cxb.analysis.run_analysis`:
:func:`background_stage`, :func:`sci_pixel_stage`, :func:`occ_pixel_stage`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.fit.templates import (
    bootstrap_templates,
    fit_templates,
    template_profile_bounds,
)
from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.records import (
    AnalysisOptions,
    Campaign,
    ChipFlat,
    ModuleBackground,
    ModuleBands,
    PixelStage,
)
from bkgjax.missions.nustar_cxb.responses import chip_efficiency

__all__ = [
    "DELTA_90",
    "detect_dead_pixels",
    "dead_chips",
    "pixel_mask",
    "pixel_templates",
    "fit_all_bands",
    "flat_from_occultation",
    "flat_sensitivity",
    "band_flat_sensitivity",
    "fit_pixel_stage",
    "template_groups",
    "stack_module_inputs",
    "background_stage",
    "sci_pixel_stage",
    "occ_pixel_stage",
]

DELTA_90 = 2.705543454095404  # chi-square(1) 90 % quantile: profile-likelihood drop of 90 % bounds


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


def pixel_templates(geometry, efficiency, exposure, flat=None, rpix=1.0, chips=None):
    r"""Templates of eq. (2) for every band: [n_bands, K, 4, 32, 32].

    With ``flat`` (the [4, 32, 32] map :math:`M`): K = 2, coefficients
    :math:`(N_\mathrm{bkg}, N_\mathrm{apt})`.  Without: K = 5, one flat normalisation per chip
    then :math:`N_\mathrm{apt}`; ``chips`` (default all four) limits the free flats to the chips
    that have fitted pixels (K = len(chips) + 1: a chip whose pixels are all masked would leave
    its coefficient undetermined and the Hessian singular).  Units: :math:`N_\mathrm{bkg}`
    counts/s/pixel, :math:`N_\mathrm{apt}` photons/s/cm^2/deg^2 (incident, per band).
    """
    omega = np.asarray(geometry.omega, float)
    aperture = (np.asarray(efficiency)[:, :, None, None] * nustar.PIXEL_AREA_CM2 * rpix
                * omega[None] * exposure)  # [nb, 4, 32, 32]
    n_bands = aperture.shape[0]
    if flat is not None:
        flat_t = np.broadcast_to(np.asarray(flat, float) * exposure, (n_bands, 4, 32, 32))
        return np.stack([flat_t, aperture], axis=1)
    chips = range(4) if chips is None else chips
    flats = np.eye(4)[list(chips), :, None, None] * np.ones((1, 1, 32, 32)) * exposure
    flats = np.broadcast_to(flats, (n_bands,) + flats.shape)  # [nb, n_chips, 4, 32, 32]
    return np.concatenate([flats, aperture[:, None]], axis=1)


_fit_single = jax.jit(fit_templates)


@jax.jit
def fit_all_bands(counts, templates, mask):
    """Eq. (3) MLE of every module and band in one compiled call: counts [m, nb, ...],
    templates [m, nb, K, ...], mask [m, ...] -> TemplateFit with [m, nb] leaves."""
    per_band = jax.vmap(fit_templates, in_axes=(0, 0, None))
    return jax.vmap(per_band, in_axes=(0, 0, 0))(counts, templates, mask)


@partial(jax.jit, static_argnames=("index",))
def _profile_all(counts, templates, mask, best, index):
    def one(c, t, m, b):
        return template_profile_bounds(c, t, m, b, index, DELTA_90)

    per_band = jax.vmap(one, in_axes=(0, 0, None, 0))
    return jax.vmap(per_band, in_axes=(0, 0, 0, 0))(counts, templates, mask, best)


def flat_from_occultation(geometry, occ_counts_10_20, occ_exposure, mask, rpix=1.0) -> ChipFlat:
    r"""Chip relative normalisations :math:`M_\mathrm{bkg}` from OCC 10-20 keV (section 4).

    The OCC image is fitted with one flat normalisation per chip plus the aperture template
    (the occulted data still carry an aperture-shaped backscatter component); the flat
    normalisations divided by their mean are :math:`M`, returned as a [4, 32, 32] map with the
    factors and their covariance (:class:`~bkgjax.missions.nustar_cxb.records.ChipFlat`).

    Only chips with unmasked pixels are fitted (a masked chip keeps the placeholder factor 1
    with zero variance, and the mean is over the fitted chips).  ValueError when the image is
    too shallow: a normalisation that is not positive or has no finite error.
    """
    mask = np.asarray(mask, bool)
    live = tuple(int(c) for c in range(4) if mask[c].any())
    if not live:
        raise ValueError("no unmasked pixels: cannot derive M_bkg")
    e_lo, e_hi = nustar.energy_bands(10.0, 20.0, 1)
    eff = chip_efficiency(geometry, e_lo, e_hi)
    templates = pixel_templates(geometry, eff, occ_exposure, flat=None, rpix=rpix, chips=live)[0]
    result = _fit_single(jnp.asarray(occ_counts_10_20, float), jnp.asarray(templates),
                         jnp.asarray(mask))
    n = len(live)
    chip_norm = np.asarray(result.theta[:n])
    cov_norm = np.asarray(result.covariance[:n, :n])
    if not (np.all(np.isfinite(chip_norm)) and np.all(chip_norm > 0)):
        raise ValueError("OCC 10-20 keV chip normalisations not all positive ("
                         + ", ".join(f"DET{c}: {v:.3g}" for c, v in zip(live, chip_norm))
                         + "); the occulted data are too shallow to derive M_bkg")
    if not (np.all(np.isfinite(cov_norm)) and np.all(np.diag(cov_norm) > 0)):
        raise ValueError("OCC 10-20 keV chip normalisations have no finite errors; the occulted "
                         "data are too shallow to derive M_bkg")
    live_factors = chip_norm / chip_norm.mean()
    # covariance of the normalised factors f = c / mean(c) (delta method)
    jac = (np.eye(n) - np.outer(live_factors, np.full(n, 1.0 / n))) / chip_norm.mean()
    factors = np.ones(4)  # a chip without fitted pixels keeps the placeholder 1 (never used)
    factors[list(live)] = live_factors
    cov_factors = np.zeros((4, 4))
    cov_factors[np.ix_(live, live)] = jac @ cov_norm @ jac.T
    return ChipFlat(factors[:, None, None] * np.ones((4, 32, 32)), factors, cov_factors)


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
def flat_sensitivity(theta, covariance, factors, counts, other_templates, flat_exposure, mask,
                     per_band=False):
    r""":math:`d\hat\theta/df` for chip factors f (implicit function theorem):
    :math:`\partial_f \hat\theta = (-H)^{-1} \partial_f g`, with g the score and
    :math:`(-H)^{-1}` the fit's covariance."""
    dg_df = jax.jacfwd(_score_with_factors, argnums=1)(
        theta, factors, counts, other_templates, flat_exposure, mask, per_band)
    return covariance @ dg_df


def band_flat_sensitivity(bands: ModuleBands, factors, exposure):
    """[n_bands, 4]: derivative of N_apt in every band of one module with respect to its chip
    factors."""
    stage, i = bands.stage, bands.index
    fits = jax.tree_util.tree_map(lambda x: x[i], stage.fits)
    sens = jax.vmap(flat_sensitivity, in_axes=(0, 0, None, 0, 0, None, None))(
        fits.theta, fits.covariance, jnp.asarray(factors), jnp.asarray(stage.counts[i]),
        jnp.asarray(stage.templates[i][:, 1:]), exposure, jnp.asarray(stage.masks[i]))
    return np.asarray(sens[:, -1, :])


@partial(jax.jit, static_argnames=("n_boot",))
def _bootstrap_bands(keys, best, templates, mask, n_boot):
    return jax.vmap(lambda k, b, t: bootstrap_templates(k, b, t, mask, n_boot))(
        keys, best, templates)


def _std(variance):
    """Square root of variances, NaN where a variance is not finite and positive."""
    variance = np.asarray(variance, float)
    ok = np.isfinite(variance) & (variance > 0)
    return np.where(ok, np.sqrt(np.where(ok, variance, 1.0)), np.nan)


def fit_pixel_stage(counts, templates, masks, *, profile=True, bootstrap=0, seed=0) -> PixelStage:
    """Fit eq. (2)-(3) for a stack of modules in one compiled, vmapped call.

    counts [m, nb, 4, 32, 32], templates [m, nb, K, 4, 32, 32] (last template = aperture),
    masks [m, 4, 32, 32].  Returns :class:`~bkgjax.missions.nustar_cxb.records.PixelStage`.
    """
    counts = jnp.asarray(counts, jnp.float64)
    templates = jnp.asarray(templates, jnp.float64)
    masks = jnp.asarray(masks, bool)
    fits = fit_all_bands(counts, templates, masks)
    k = templates.shape[2]
    cov = np.asarray(fits.covariance)
    theta = np.asarray(fits.theta)
    n_apt = theta[..., -1]
    # a band with (almost) no counts has no positive finite variance: its error is NaN (the
    # spectral stages leave such bands out), never the root of a negative number
    n_apt_err = _std(cov[..., -1, -1])
    if k == 2:
        n_bkg, n_bkg_err = theta[..., 0], _std(cov[..., 0, 0])
    else:
        # Mean of the per-chip flat normalisations and its error from the covariance.
        w = np.full(k - 1, 1.0 / (k - 1))
        n_bkg = theta[..., :-1] @ w
        n_bkg_err = _std(np.einsum("i,...ij,j->...", w, cov[..., :-1, :-1], w))
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
            best = jax.tree_util.tree_map(lambda x, i=i: x[i], fits)
            samples = _bootstrap_bands(keys[i], best, templates[i], masks[i], n_boot=bootstrap)
            boot_err[i] = np.std(np.asarray(samples[:, :, -1]), axis=1, ddof=1)
    return PixelStage(n_apt=n_apt, n_apt_err=n_apt_err, n_bkg=n_bkg, n_bkg_err=n_bkg_err,
                      n_apt_lower90=lower, n_apt_upper90=upper, cstat=np.asarray(fits.cstat),
                      n_pixels=np.asarray(fits.n_pixels), converged=np.asarray(fits.converged),
                      fits=fits, templates=np.asarray(templates), counts=np.asarray(counts),
                      masks=np.asarray(masks), bootstrap_err=boot_err)


# ----------------------------------------------------------------------------------------------
# Stages


def _layout(background):
    """Template layout of a module: an OCC flat map (K = 2) or free flats for its live chips."""
    return ("flat",) if background.flat is not None else ("chips",) + tuple(background.live_chips)


def template_groups(backgrounds, indices) -> list:
    """Module indices grouped by template layout (with an OCC flat map: K = 2, without: one free
    flat per live chip, K = 5 normally), groups in order of first appearance, so each group is
    fitted as one stack."""
    groups = {}
    for i in indices:
        groups.setdefault(_layout(backgrounds[i]), []).append(i)
    return list(groups.values())


def stack_module_inputs(campaign: Campaign, indices, which, options: AnalysisOptions,
                        backgrounds):
    """Counts [m, nb, 4, 32, 32], templates [m, nb, K, 4, 32, 32] and masks [m, 4, 32, 32] of
    the modules ``indices`` (``which``: "sci" or "occ" data)."""
    counts, templates = [], []
    for i in indices:
        mod = campaign.modules[i]
        geometry = campaign.geometry(mod.fpm)
        eff = chip_efficiency(geometry, campaign.e_lo, campaign.e_hi)
        data = mod.sci_counts if which == "sci" else mod.occ_counts
        exposure = mod.sci_exposure if which == "sci" else mod.occ_exposure
        counts.append(np.asarray(data, float))
        templates.append(pixel_templates(geometry, eff, exposure, backgrounds[i].flat,
                                         options.rpix, chips=backgrounds[i].live_chips))
    return (np.stack(counts), np.stack(templates),
            np.stack([backgrounds[i].mask for i in indices]))


def dead_chips(counts) -> tuple:
    """Chips without a single count in any band of a [n_bands, 4, 32, 32] cube (dead, or a
    chip whose events were all filtered out), when the other chips have counts."""
    per_chip = np.asarray(counts).reshape(-1, 4, 32 * 32).sum(axis=(0, 2))
    if not per_chip.any():
        return ()
    return tuple(int(c) for c in np.flatnonzero(per_chip == 0))


def background_stage(campaign: Campaign, options: AnalysisOptions) -> tuple:
    """Pixel masks and, where OCC 10-20 keV data exist, the chip flat map :math:`M` of every
    module (section 4).  Returns one
    :class:`~bkgjax.missions.nustar_cxb.records.ModuleBackground` per module.

    Degenerate inputs are handled, not fatal: a chip without any SCI counts is masked whole
    (its flat coefficient would be undetermined), and when the OCC 10-20 keV image is too
    shallow for positive chip normalisations every live chip gets a free flat normalisation
    instead, as without OCC data (``note`` says so).  A module without any usable pixel is a
    ValueError."""
    out = []
    for mod in campaign.modules:
        geometry = campaign.geometry(mod.fpm)
        mask = pixel_mask(geometry, [mod.sci_counts, mod.occ_counts], options.mask_chip_edges)
        notes = []
        dead = dead_chips(mod.sci_counts)
        if dead:
            mask[list(dead)] = False
            notes.append("no SCI counts on " + ", ".join(f"DET{c}" for c in dead)
                         + ": chip masked")
        live = tuple(int(c) for c in range(4) if mask[c].any())
        if not live:
            raise ValueError(f"{mod.label}: no usable pixels (every pixel masked, dead or "
                             "without counts)")
        if mod.occ_counts_10_20 is not None and mod.occ_exposure:
            try:
                chip = flat_from_occultation(geometry, mod.occ_counts_10_20, mod.occ_exposure,
                                             mask, options.rpix)
            except ValueError as err:
                notes.append(f"chip factors M_bkg not derived ({err}); free flat normalisation "
                             "per chip instead")
            else:
                out.append(ModuleBackground(mask, chip.flat, chip.factors, chip.covariance,
                                            live_chips=live,
                                            note="; ".join(notes) if notes else None))
                continue
        if mod.occ_counts_10_20 is None or not mod.occ_exposure:
            notes.append("no OCC 10-20 keV data: free flat normalisation per chip, no chip "
                         "factors")
        out.append(ModuleBackground(mask, live_chips=live, note="; ".join(notes)))
    return tuple(out)


def _pixel_stage(campaign, backgrounds, options, which, indices, **fit_options):
    out = [None] * len(campaign.modules)
    for group in template_groups(backgrounds, indices):
        counts, templates, masks = stack_module_inputs(campaign, group, which, options,
                                                       backgrounds)
        stage = fit_pixel_stage(counts, templates, masks, **fit_options)
        for j, i in enumerate(group):
            out[i] = stage.module(j)
    return tuple(out)


def sci_pixel_stage(campaign: Campaign, backgrounds, options: AnalysisOptions) -> tuple:
    """Per-band pixel fits of the SCI data of every module (with profile bounds and bootstrap
    errors as ``options`` ask): one :class:`~bkgjax.missions.nustar_cxb.records.ModuleBands`
    per module."""
    return _pixel_stage(campaign, backgrounds, options, "sci", range(len(campaign.modules)),
                        profile=options.profile, bootstrap=options.bootstrap, seed=options.seed)


def occ_pixel_stage(campaign: Campaign, backgrounds, options: AnalysisOptions) -> tuple:
    """Per-band pixel fits of the OCC data (Hessian errors only); None for modules without OCC
    band counts."""
    indices = [i for i, m in enumerate(campaign.modules) if m.has_occ]
    return _pixel_stage(campaign, backgrounds, options, "occ", indices, profile=False)
