r"""Spectral stage of the NuSTAR stray-light CXB method (Krivonos et al. 2021, sections 4-5).

:math:`N_\mathrm{apt}` per band from the pixel stage is the aperture photon flux
(photons/s/cm^2/deg^2); divided by the band width it is the aperture spectrum.  All fits here
minimise a chi-square on it, as XSPEC does in the paper:

* the OCC aperture spectrum fixes the shape of the soft component, a broken power law fitted
  jointly to FPMA and FPMB with a cross-normalisation (section 4, Table 3);
* the SCI spectrum is fitted with the Gruber et al. (1999) CXB (eq. 1, free norm) plus the soft
  component with that shape and a free norm, giving the 3-20 keV CXB energy flux of every data
  set and module (section 5.1, Table 4);
* the joint FPMA + FPMB fit gives the cross-normalisation constant (Fig. 3);
* the stacked CXB spectrum is fitted with a power law, the Gruber shape and the Gruber shape
  with free E_fold (and photon index) (section 5.3).

Stage functions used by :func:`~bkgjax.missions.nustar_cxb.analysis.run_analysis`:
:func:`soft_component_stage`, :func:`sci_spectral_stage`, :func:`crossnorm_stage`.
"""

from __future__ import annotations

import functools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.fit.optimize import levenberg_marquardt, to_bounded, to_unbounded
from bkgjax.missions.nustar_cxb.pixel_model import band_flat_sensitivity
from bkgjax.missions.nustar_cxb.records import (
    AnalysisOptions,
    AverageSpectrum,
    BandGrid,
    Campaign,
    CrossNormFit,
    ModuleSpectrum,
    SciFit,
    SoftComponent,
    SoftShapeFit,
)
from bkgjax.missions.nustar_cxb.responses import aperture_response
from bkgjax.spectral import bknpower, cxb_gruber, energy_flux, powerlaw

__all__ = [
    "PAPER_SOFT_SHAPE",
    "cxb_photons",
    "sci_soft_photons",
    "gruber_flux_3_20",
    "fit_soft_shape",
    "fit_sci_spectrum",
    "fit_crossnorm",
    "average_spectrum_fits",
    "module_responses",
    "soft_component_stage",
    "sci_spectral_stage",
    "crossnorm_stage",
]

#: Table 3, data set 1 (COSMOS EP1): soft OCC component, broken power law.
PAPER_SOFT_SHAPE = {"PhoIndx1": 5.0, "BreakE": 4.8, "PhoIndx2": 0.9}


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
    """Photon flux of the Gruber et al. (1999) CXB (eq. 1) in each channel."""
    return cxb_gruber().structure.evaluate(jnp.stack([norm, index, e_fold]), ch_lo, ch_hi)


@functools.lru_cache(maxsize=256)
def gruber_flux_3_20(e_fold=41.13, e_min=3.0, e_max=20.0):
    """Energy flux (erg/s/cm^2/deg^2) of the Gruber CXB with norm 1 in e_min-e_max keV: the
    factor from a CXB norm (relative to HEAO-1) to the 3-20 keV flux of Table 4."""
    model = cxb_gruber().set("EFold", float(e_fold))
    return float(energy_flux(model, None, e_min, e_max))


# ----------------------------------------------------------------------------------------------
# OCC: soft-component shape


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


def fit_soft_shape(spectra, responses, ch_lo, ch_hi) -> SoftShapeFit:
    r"""Broken power law fitted jointly to the OCC aperture spectra of FPMA and FPMB.

    ``spectra``: list of (y, sigma) per module (:math:`N_\mathrm{apt}` per band and its error);
    ``responses``: matching [n_bands, n_channels] matrices.  Shape
    :math:`(\Gamma_1, E_\mathrm{br}, \Gamma_2)` shared, one normalisation for the first module
    and cross-normalisation constants for the others (Table 3, "Const.").
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
    return SoftShapeFit(
        pho_index1=values[0], break_e=values[1], pho_index2=values[2], norm=values[3],
        crossnorm=values[4:].tolist(),
        errors={"PhoIndx1": errors[0], "BreakE": errors[1], "PhoIndx2": errors[2],
                "norm": errors[3], "crossnorm": errors[4:].tolist()},
        shape_covariance=np.asarray(cov)[:3, :3], chi2=float(chi2),
        dof=int(ys.shape[0] - values.shape[0]))


# ----------------------------------------------------------------------------------------------
# SCI: CXB + soft component


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
                     soft_model="powerlaw", shape_covariance=None) -> SciFit:
    r"""CXB (eq. 1, free norm) + soft component (fixed shape, free norm) on one SCI spectrum.

    The soft component is the OCC broken power law's low-energy branch :math:`E^{-\Gamma_1}`
    (``soft_model="powerlaw"``, the paper's choice: backscattered CXB is assumed suppressed
    on-sky, section 5.2.3) or the full broken power law (``"bknpower"``).

    Returns the CXB norm (relative to HEAO-1), the soft norm, their covariance, the 3-20 keV
    CXB energy flux (erg/s/cm^2/deg^2) with 1-sigma errors, chi2 and dof.  With
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
    flux_unit = gruber_flux_3_20(41.13 if not free_efold else float(u[2]))
    norm_err = math.sqrt(max(cov[0, 0], 0.0))
    flux = u[0] * flux_unit
    flux_err = float(norm_err * flux_unit)
    efold = efold_err = None
    if free_efold:
        efold = float(u[2])
        efold_err = math.sqrt(max(cov[2, 2], 0.0))
        # flux error including the E_fold uncertainty (delta method)
        grad = np.array([flux_unit, 0.0,
                         u[0] * (gruber_flux_3_20(u[2] + 0.01) - gruber_flux_3_20(u[2] - 0.01))
                         / 0.02])
        flux_err = float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    return SciFit(cxb_norm=float(u[0]), cxb_norm_err=norm_err, soft_norm=float(u[1]),
                  soft_norm_err=math.sqrt(max(cov[1, 1], 0.0)), covariance=cov.tolist(),
                  flux_3_20=float(flux), flux_3_20_err=flux_err, chi2=float(chi2),
                  dof=int(len(np.asarray(y)) - len(u)), efold=efold, efold_err=efold_err)


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


def fit_crossnorm(spectrum_a, spectrum_b, ch_lo, ch_hi, soft_shape,
                  soft_model="powerlaw") -> CrossNormFit:
    """Joint FPMA + FPMB fit of one data set's SCI aperture spectra (section 4, Fig. 3): one
    CXB norm, FPMB cross-normalisation constant C, a soft norm per module.  Each spectrum is
    (y, band covariance, response).  Returns C, its 1-sigma error, the joint CXB norm, chi2/dof."""
    (y_a, cov_a, resp_a), (y_b, cov_b, resp_b) = spectrum_a, spectrum_b
    u, cov, chi2 = _crossnorm_core(*(jnp.asarray(a, jnp.float64) for a in (
        y_a, cov_a, resp_a, y_b, cov_b, resp_b, ch_lo, ch_hi, soft_shape)), soft_model)
    u, cov = np.asarray(u), np.asarray(cov)
    return CrossNormFit(crossnorm=float(u[1]), crossnorm_err=math.sqrt(max(cov[1, 1], 0.0)),
                        cxb_norm=float(u[0]), cxb_norm_err=math.sqrt(max(cov[0, 0], 0.0)),
                        chi2=float(chi2), dof=int(2 * len(np.asarray(y_a)) - 4))


# ----------------------------------------------------------------------------------------------
# Stacked spectrum (section 5.3)


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


def average_spectrum_fits(cxb_spectra, sigmas, response, ch_lo, ch_hi,
                          covariances=None) -> AverageSpectrum:
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
    spectrum_err = err
    errors = err
    if covariances is not None:
        frac = w / np.sum(w, axis=0)
        errors = sum(np.outer(f, f) * c for f, c in zip(frac, covariances))
        spectrum_err = np.sqrt(np.diag(errors))
    fits = {}
    for kind, names in _AVERAGE_MODELS.items():
        vals, cov, chi2 = _average_fit(kind, jnp.asarray(mean), jnp.asarray(errors),
                                       jnp.asarray(response), jnp.asarray(ch_lo),
                                       jnp.asarray(ch_hi))
        vals, cov = np.asarray(vals), np.asarray(cov)
        dof = int(mean.size - len(names))
        fits[kind] = {"chi2": float(chi2), "dof": dof, "chi2_red": float(chi2) / dof,
                      **{n: float(v) for n, v in zip(names, vals)},
                      **{n + "_err": float(math.sqrt(max(cov[i, i], 0.0)))
                         for i, n in enumerate(names)}}
    fits["gruber"]["flux_3_20"] = fits["gruber"]["norm"] * gruber_flux_3_20()
    fits["gruber"]["flux_3_20_err"] = fits["gruber"]["norm_err"] * gruber_flux_3_20()
    return AverageSpectrum(spectrum=mean, spectrum_err=spectrum_err, fits=fits)


# ----------------------------------------------------------------------------------------------
# Stages


def module_responses(campaign: Campaign, backgrounds, bands: BandGrid) -> tuple:
    """Aperture response ([n_bands, n_channels]) of every module on its fitted pixels."""
    return tuple(aperture_response(campaign.geometry(m.fpm), bands.e_lo, bands.e_hi, bg.mask)
                 for m, bg in zip(campaign.modules, backgrounds))


def soft_component_stage(campaign: Campaign, occ_bands, responses, bands: BandGrid,
                         options: AnalysisOptions) -> dict:
    """Soft-component shape of every data set (data-set name ->
    :class:`~bkgjax.missions.nustar_cxb.records.SoftComponent`): a joint broken-power-law fit
    to the OCC aperture spectra of its modules (in FPM order), or the default shape of
    ``options`` without OCC data."""
    soft = {}
    for name in campaign.datasets:
        occ = sorted((i for i, m in enumerate(campaign.modules)
                      if m.dataset == name and occ_bands[i] is not None),
                     key=lambda i: campaign.modules[i].fpm)
        if occ:
            spectra = [(occ_bands[i].n_apt, occ_bands[i].n_apt_err) for i in occ]
            fit = fit_soft_shape(spectra, [responses[i] for i in occ], bands.ch_lo, bands.ch_hi)
            soft[name] = SoftComponent(shape=fit.shape,
                                       fpms=tuple(campaign.modules[i].fpm for i in occ), fit=fit)
        else:
            soft[name] = SoftComponent(shape=tuple(options.soft_shape_default))
    return soft


def sci_spectral_stage(campaign: Campaign, backgrounds, sci_bands, responses, soft,
                       bands: BandGrid, options: AnalysisOptions) -> tuple:
    """SCI spectral fit of every module (Table 4): one
    :class:`~bkgjax.missions.nustar_cxb.records.ModuleSpectrum` per module.

    The band covariance of :math:`N_\\mathrm{apt}` adds to the Hessian variances the
    uncertainty of the chip factors :math:`M_\\mathrm{bkg}` from the OCC data, which are common
    to all bands."""
    out = []
    for mod, bg, fitted, response in zip(campaign.modules, backgrounds, sci_bands, responses):
        band_cov = np.diag(fitted.n_apt_err**2)
        if bg.chip_factors_cov is not None:
            sens = band_flat_sensitivity(fitted, bg.chip_factors, mod.sci_exposure)
            band_cov = band_cov + sens @ bg.chip_factors_cov @ sens.T
        component = soft[mod.dataset]
        fit = fit_sci_spectrum(fitted.n_apt, band_cov, response, bands.ch_lo, bands.ch_hi,
                               component.shape, soft_model=options.sci_soft_model,
                               shape_covariance=component.shape_covariance)
        out.append(ModuleSpectrum(module=mod, bands=fitted, band_covariance=band_cov,
                                  response=response, fit=fit))
    return tuple(out)


def crossnorm_stage(spectra, soft, bands: BandGrid, options: AnalysisOptions) -> dict:
    """FPMB/FPMA cross-normalisation of every data set with both modules (data-set name ->
    :class:`~bkgjax.missions.nustar_cxb.records.CrossNormFit`)."""
    crossnorm = {}
    for name in dict.fromkeys(s.module.dataset for s in spectra):
        pair = {s.module.fpm: s for s in spectra if s.module.dataset == name}
        if set(pair) == {"FPMA", "FPMB"}:
            a, b = pair["FPMA"], pair["FPMB"]
            crossnorm[name] = fit_crossnorm(
                (a.bands.n_apt, a.band_covariance, a.response),
                (b.bands.n_apt, b.band_covariance, b.response),
                bands.ch_lo, bands.ch_hi, soft[name].shape, options.sci_soft_model)
    return crossnorm
