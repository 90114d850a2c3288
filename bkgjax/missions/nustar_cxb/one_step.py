r"""One-step model: the CXB normalisation fitted straight to the band x pixel cube.

Beyond the paper's two-step method (Krivonos et al. 2021, sections 4-5: per-band pixel fits,
then a chi-square fit of the aperture spectrum), the expected counts of eq. (2) are written with
the exact per-chip band responses to the CXB (Gruber et al. 1999, eq. 1) and to the soft
component, and all bands of a module are fitted at once (Poisson likelihood of eq. 3):

.. math:: \mu_{b,p} = N_{\mathrm{bkg},b}\,M_p T + \bigl(C_\mathrm{CXB}\,S^\mathrm{CXB}_{b,c}
          + C_\mathrm{soft}\,S^\mathrm{soft}_{b,c}\bigr)\,a R_\mathrm{pix}\,\Omega_p T .

Stage function: :func:`one_step_stage`; :func:`campaign_posterior` samples the same model with
NUTS.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.fit.templates import fit_templates
from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.pixel_model import flat_sensitivity, template_groups
from bkgjax.missions.nustar_cxb.records import (
    AnalysisOptions,
    BandGrid,
    Campaign,
    OneStepFlux,
    OneStepGroup,
    OneStepParts,
)
from bkgjax.missions.nustar_cxb.responses import band_membership, channel_grid
from bkgjax.missions.nustar_cxb.spectral_stage import cxb_photons, gruber_flux_3_20, sci_soft_photons

__all__ = [
    "one_step_parts",
    "one_step_templates",
    "fit_one_step",
    "one_step_mean",
    "one_step_stage",
    "campaign_posterior",
]


def one_step_parts(geometry, e_lo, e_hi, exposure, flat, soft_shape, rpix=1.0,
                   soft_model="powerlaw") -> OneStepParts:
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
    return OneStepParts(
        flat=flat * exposure,
        geometry=nustar.PIXEL_AREA_CM2 * rpix * np.asarray(geometry.omega) * exposure,
        cxb_band=(member * cxb) @ trans.T,
        soft_band=(member * soft) @ trans.T)


def one_step_templates(parts: OneStepParts):
    r"""Dense templates of :func:`one_step_parts` for one module: [n_bands + 2, n_bands, 4, 32,
    32].  Coefficients: :math:`N_\mathrm{bkg,b}` for every band (template :math:`M T` in band b
    only), then the CXB norm (relative to HEAO-1) and the soft-component norm."""
    n_bands = parts.cxb_band.shape[0]
    flats = np.eye(n_bands)[:, :, None, None, None] * parts.flat[None, None]
    cxb_t = parts.cxb_band[:, :, None, None] * parts.geometry[None]
    soft_t = parts.soft_band[:, :, None, None] * parts.geometry[None]
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
    unit = gruber_flux_3_20()
    norm = np.asarray(fits.theta[:, -2])
    norm_err = np.sqrt(np.asarray(fits.covariance[:, -2, -2]))
    return fits, norm * unit, norm_err * unit


def one_step_mean(theta, parts: OneStepParts):
    """Expected counts of the one-step model [m, nb, 4, 32, 32] for coefficients [m, nb + 2]
    (structured: no dense templates), from stacked parts (``OneStepGroup.parts``)."""
    n_b = parts.cxb_band.shape[1]
    flat = jnp.asarray(parts.flat)[:, None]
    geom = jnp.asarray(parts.geometry)[:, None]
    aperture = (theta[:, n_b, None, None] * jnp.asarray(parts.cxb_band)
                + theta[:, n_b + 1, None, None] * jnp.asarray(parts.soft_band))
    return theta[:, :n_b, None, None, None] * flat + aperture[..., None, None] * geom


def one_step_stage(campaign: Campaign, backgrounds, soft, bands: BandGrid,
                   options: AnalysisOptions):
    """One-step fit of every module, stacked by template layout.

    Returns (groups, fluxes): the fitted :class:`~bkgjax.missions.nustar_cxb.records.OneStepGroup`
    stacks and, per module, its :class:`~bkgjax.missions.nustar_cxb.records.OneStepFlux` (3-20
    keV flux with a 1-sigma error that includes the chip-factor uncertainty), or None when
    ``options.one_step`` is off."""
    n_b = len(bands.e_lo)
    groups, fluxes = [], [None] * len(campaign.modules)
    if not options.one_step:
        return tuple(groups), tuple(fluxes)
    for group in template_groups(backgrounds, range(len(campaign.modules))):
        mods = [campaign.modules[i] for i in group]
        counts = np.stack([np.asarray(m.sci_counts, float) for m in mods])
        parts = [one_step_parts(campaign.geometry(m.fpm), bands.e_lo, bands.e_hi,
                                m.sci_exposure, backgrounds[i].flat, soft[m.dataset].shape,
                                options.rpix, options.sci_soft_model)
                 for i, m in zip(group, mods)]
        templates = np.stack([one_step_templates(p) for p in parts])
        masks = np.stack([backgrounds[i].mask for i in group])
        fits, flux, flux_err = fit_one_step(counts, templates, masks)
        groups.append(OneStepGroup(
            modules=tuple(m.label for m in mods), counts=counts, masks=masks,
            theta=np.asarray(fits.theta), covariance=np.asarray(fits.covariance),
            parts=OneStepParts(*(np.stack(column) for column in zip(*parts)))))
        for j, (i, m) in enumerate(zip(group, mods)):
            err = float(flux_err[j])
            bg = backgrounds[i]
            if bg.chip_factors_cov is not None:
                # chip-factor uncertainty: d(norm)/df by the implicit function theorem, with
                # the flat templates of all bands depending on f
                sens = flat_sensitivity(
                    fits.theta[j], fits.covariance[j], jnp.asarray(bg.chip_factors),
                    jnp.asarray(counts[j]), jnp.asarray(templates[j][n_b:]), m.sci_exposure,
                    jnp.asarray(masks[j]), per_band=True)
                sens = np.asarray(sens[n_b])  # row of the CXB norm
                extra = sens @ bg.chip_factors_cov @ sens * gruber_flux_3_20() ** 2
                err = math.sqrt(err**2 + float(extra))
            fluxes[i] = OneStepFlux(float(flux[j]), err)
    return tuple(groups), tuple(fluxes)


def campaign_posterior(result, options: AnalysisOptions):
    """NUTS posterior of the one-step model (CXB norm, soft norm, N_bkg per band) for every
    module, all modules in one vectorised run; returns a JSON-able summary with the 3-20 keV
    flux posterior (mean, sd, 90 % equal-tailed interval, R-hat, bulk ESS) per module.

    ``result``: an :class:`~bkgjax.missions.nustar_cxb.records.AnalysisResult`.  The chip
    factors M_bkg are held at their OCC values here (the posterior is conditional on them); the
    two-step intervals include their uncertainty.
    """
    import arviz as az

    from bkgjax.infer.templates import run_whitened_nuts

    summary = {}
    unit = gruber_flux_3_20()
    for group in result.one_step:
        theta, _ = run_whitened_nuts(
            group.counts, np.broadcast_to(group.masks[:, None], group.counts.shape),
            group.theta, group.covariance,
            lambda th, parts=group.parts: one_step_mean(th, parts),
            num_warmup=options.num_warmup, num_samples=options.num_samples, seed=options.seed)
        flux = theta[..., group.n_bands] * unit  # [chain, draw, m]
        for i, name in enumerate(group.modules):
            draws = flux[:, :, i]
            lo, hi = np.percentile(draws, [5, 95])
            summary[name] = {"mean": float(draws.mean()), "sd": float(draws.std(ddof=1)),
                             "lower90": float(lo), "upper90": float(hi),
                             "r_hat": float(az.rhat(draws)), "ess_bulk": float(az.ess(draws))}
    return {"flux_3_20": summary, "model": "one-step (CXB + soft + N_bkg per band)",
            "num_samples": options.num_samples}
