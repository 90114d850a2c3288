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

Absent or degenerate components: the soft component is first tested with its shape fixed
(:func:`detect_soft_component`, a linear fit, always defined); only when it is detected is its
shape fitted, and a shape the OCC spectra cannot determine (singular Hessian, errors wider than
the allowed range, fewer usable bands than parameters) falls back to the default shape with a
note.  Shape parameters that end on a limit are held there and flagged.  Fits with as many
parameters as bands report ``chi2_red`` None (dof = 0) and fits with more are not attempted.
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
from bkgjax.spectral.flux import KEV_TO_ERG
from bkgjax.stats.intervals import Z_90

__all__ = [
    "PAPER_SOFT_SHAPE",
    "DegenerateFitError",
    "detect_soft_component",
    "soft_flux_unit",
    "cxb_photons",
    "sci_soft_photons",
    "gruber_flux_3_20",
    "fit_soft_shape",
    "fit_sci_spectrum",
    "fit_crossnorm",
    "average_spectrum_fits",
    "module_responses",
    "module_band_covariance",
    "soft_component_stage",
    "sci_spectral_stage",
    "crossnorm_stage",
]

#: Table 3, data set 1 (COSMOS EP1): soft OCC component, broken power law.
PAPER_SOFT_SHAPE = {"PhoIndx1": 5.0, "BreakE": 4.8, "PhoIndx2": 0.9}


class DegenerateFitError(ValueError):
    """The data cannot determine the parameters of a fit (too few usable bands, a singular
    Hessian, or errors wider than the parameters' allowed range)."""


#: Variance given to a band without a usable error: it then carries no weight in a chi-square.
_NO_WEIGHT_VAR = 1e300


def _usable_cov(y, sigma):
    """(y, covariance, ok) for a spectrum with 1-sigma errors (vector) or a band covariance
    (matrix): bands without a finite value and a finite positive variance get y = 0, no
    covariance with the others and a variance so large that they carry no weight."""
    y = np.asarray(y, float)
    sigma = np.asarray(sigma, float)
    cov = np.diag(sigma**2) if sigma.ndim == 1 else sigma.copy()
    var = np.diag(cov)
    ok = np.isfinite(y) & np.isfinite(var) & (var > 0)
    cov = np.where(np.isfinite(cov), cov, 0.0)
    cov[~ok, :] = 0.0
    cov[:, ~ok] = 0.0
    cov[~ok, ~ok] = _NO_WEIGHT_VAR
    return np.where(ok, y, 0.0), cov, ok


def _gls_norm(y, cov, template):
    """Generalised-least-squares norm of ``template`` in ``y`` (covariance ``cov``): (score,
    information) with norm = score / information, error = information^-1/2; (nan, nan) when
    the covariance is not positive definite or the template carries no information."""
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return math.nan, math.nan
    wt = np.linalg.solve(chol, template)
    wy = np.linalg.solve(chol, y)
    info = float(wt @ wt)
    if not (math.isfinite(info) and info > 0):
        return math.nan, math.nan
    return float(wt @ wy), info


def _ratio(a, b):
    """a / b as a float, NaN when b is zero or either is not finite (never raises)."""
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0.0:
        return math.nan
    return a / b


def _chi2_fit(predict, y, sigma, u0, covariance=True):
    r"""Minimise the chi-square of ``y`` against ``predict(u)``; returns (u, chi2, cov_u)
    (``cov_u`` None with ``covariance=False``).

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
    if not covariance:
        return result.x, result.fun, None
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
_SOFT_NAMES = ("PhoIndx1", "BreakE", "PhoIndx2")
#: A shape parameter within this fraction of its allowed range from a limit is "at the bound".
_BOUND_TOL = 1e-3


def soft_flux_unit(shape, e_min=3.0, e_max=5.0, n=512):
    """Energy flux (erg/s/cm^2/deg^2) in e_min-e_max keV of the OCC broken power law with norm 1
    (Table 3 quotes the soft component as its 3-5 keV flux)."""
    edges = np.geomspace(e_min, e_max, n + 1)
    photons = np.asarray(_soft_photons(jnp.asarray(shape, jnp.float64), 1.0,
                                       jnp.asarray(edges[:-1]), jnp.asarray(edges[1:])))
    return float(np.sum(photons * 0.5 * (edges[:-1] + edges[1:])) * KEV_TO_ERG)


def detect_soft_component(spectra, responses, ch_lo, ch_hi, shape, fpms, threshold=3.0) -> dict:
    r"""Is there a soft component in the OCC aperture spectra?  A linear fit with the shape fixed
    (``shape``, normally the default of Table 3), so it is defined whatever the data.

    ``spectra``: (y, sigma) per module, sigma 1-sigma errors or the band covariance (which
    should hold the chip-factor uncertainty: it shifts all bands together).  For each module the
    generalised-least-squares norm :math:`\hat a_i \pm \sigma_i` of the broken power law; the
    detection statistic is the inverse-variance weighted norm over the modules divided by its
    error, :math:`Z` (one-sided, Gaussian under "no soft component"); detected when
    :math:`Z \ge` ``threshold``.  Bands without a finite positive error are left out.
    Returns a JSON-able dict: ``detected``, ``significance_sigma``, ``threshold_sigma``,
    ``shape`` and per module (``modules[fpm]``) the norm, its error and significance, the 90 %
    upper limit ``upper_limit_90`` = max(norm, 0) + 1.645 sigma (the upper end of the 90 %
    interval, clipped at the physical boundary) and the same as a 3-5 keV energy flux
    (``flux_3_5_upper_limit_90``, erg/s/cm^2/deg^2, the quantity of Table 3)."""
    ch_lo, ch_hi = jnp.asarray(ch_lo), jnp.asarray(ch_hi)
    unit = np.asarray(_soft_photons(jnp.asarray(shape, jnp.float64), 1.0, ch_lo, ch_hi))
    flux_unit = soft_flux_unit(shape)
    modules, num, den = {}, 0.0, 0.0
    for fpm, (y, sigma), response in zip(fpms, spectra, responses):
        y, cov, ok = _usable_cov(y, sigma)
        score, info = (_gls_norm(y, cov, np.asarray(response) @ unit) if ok.any()
                       else (math.nan, math.nan))
        if math.isfinite(info):
            norm, err = score / info, 1.0 / math.sqrt(info)
            num, den = num + score, den + info
        else:
            norm = err = math.nan
        upper = max(norm, 0.0) + Z_90 * err if math.isfinite(err) else math.nan
        modules[fpm] = {"norm": norm, "norm_err": err, "significance_sigma": _ratio(norm, err),
                        "upper_limit_90": upper, "flux_3_5_upper_limit_90": upper * flux_unit,
                        "n_bands": int(ok.sum())}
    z = num / math.sqrt(den) if den > 0 else math.nan
    out = {"detected": bool(math.isfinite(z) and z >= threshold), "significance_sigma": z,
           "threshold_sigma": float(threshold), "shape": [float(v) for v in shape],
           "modules": modules}
    if not math.isfinite(z):
        out["note"] = "no OCC band has a finite error: the soft component cannot be tested"
    return out


@jax.jit
def _soft_shape_core(ys, cov, resp, ch_lo, ch_hi, norm0):
    n_mod = resp.shape[0]
    chol = jnp.linalg.cholesky(cov)

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

    def chi2_physical(p):
        photons = _soft_photons(p[:3], p[3], ch_lo, ch_hi)
        cross = jnp.concatenate([jnp.ones(1), p[4:]])
        resid = ys - (cross[:, None] * (resp @ photons)).reshape(-1)
        return jnp.sum(jax.scipy.linalg.solve_triangular(chol, resid, lower=True) ** 2)

    u0 = jnp.concatenate([to_unbounded(jnp.array([5.0, 4.8, 0.9]), _SOFT_LOWER, _SOFT_UPPER),
                          jnp.zeros(n_mod)])
    u, chi2, _ = _chi2_fit(predict, ys, cov, u0, covariance=False)
    # Hessian in the physical parameters: at an interior optimum its inverse equals the
    # transformed one, and it stays defined when a shape parameter sits on its limit (where the
    # bounded transform's Jacobian vanishes).
    values = physical(u)
    return values, jax.hessian(chi2_physical)(values), chi2


def fit_soft_shape(spectra, responses, ch_lo, ch_hi, norm0=None) -> SoftShapeFit:
    r"""Broken power law fitted jointly to the OCC aperture spectra of FPMA and FPMB.

    ``spectra``: list of (y, sigma) per module (:math:`N_\mathrm{apt}` per band and its error,
    or its band covariance); ``responses``: matching [n_bands, n_channels] matrices.  Shape
    :math:`(\Gamma_1, E_\mathrm{br}, \Gamma_2)` shared, one normalisation for the first module
    and cross-normalisation constants for the others (Table 3, "Const.").  ``norm0``: starting
    norm (default: from the first band).

    Bands without a finite positive error are left out.  Shape parameters that end within
    0.1 % of the allowed range from a limit are held there (``at_bound``; error 0); the errors of
    the others come from the chi-square Hessian in the physical parameters.  Raises
    :class:`DegenerateFitError` when there are fewer usable bands than parameters, the Hessian
    is singular or not finite, or a shape error exceeds the parameter's whole allowed range
    (the OCC spectra then say nothing about the shape).
    """
    ch_lo, ch_hi = jnp.asarray(ch_lo), jnp.asarray(ch_hi)
    cleaned = [_usable_cov(y, s) for y, s in spectra]
    ys = jnp.asarray(np.concatenate([c[0] for c in cleaned]))
    band_cov = jnp.asarray(jax.scipy.linalg.block_diag(*[c[1] for c in cleaned]))
    n_data = int(sum(c[2].sum() for c in cleaned))
    n_par = 3 + len(spectra)
    if n_data < n_par:
        raise DegenerateFitError(f"{n_data} usable OCC bands for {n_par} free parameters")
    resp = jnp.stack([jnp.asarray(r) for r in responses])
    if norm0 is None or not (math.isfinite(norm0) and norm0 > 0):
        unit = resp[0] @ _soft_photons(jnp.array([5.0, 4.8, 0.9]), 1.0, ch_lo, ch_hi)
        norm0 = jnp.maximum(jnp.asarray(cleaned[0][0])[0] / unit[0], 1e-12)
    values, hess, chi2 = _soft_shape_core(ys, band_cov, resp, ch_lo, ch_hi,
                                          jnp.asarray(norm0, jnp.float64))
    values, hess = np.asarray(values), np.asarray(hess)
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(hess))):
        raise DegenerateFitError("the fit did not reach finite parameters")
    lower, upper = np.asarray(_SOFT_LOWER), np.asarray(_SOFT_UPPER)
    span = upper - lower
    frac = (values[:3] - lower) / span
    pegged = (frac < _BOUND_TOL) | (frac > 1.0 - _BOUND_TOL)
    free = np.concatenate([~pegged, np.ones(n_par - 3, bool)])
    block = hess[np.ix_(free, free)]
    diag = np.diag(block)
    if not np.all(diag > 0):
        raise DegenerateFitError("singular Hessian (a parameter has no effect on the fit)")
    scale = np.sqrt(diag)
    scaled = block / np.outer(scale, scale)
    eig = np.linalg.eigvalsh(scaled)
    if not eig[0] > 1e-10 * eig[-1]:
        raise DegenerateFitError("singular Hessian (parameters not separately determined)")
    cov = np.zeros((n_par, n_par))
    cov[np.ix_(free, free)] = 2.0 * np.linalg.inv(scaled) / np.outer(scale, scale)
    errors = np.sqrt(np.maximum(np.diag(cov), 0.0))
    wide = [f"sigma({n}) = {e:.3g} > allowed range {w:.3g}"
            for n, e, w in zip(_SOFT_NAMES, errors[:3], span) if e > w]
    if wide:
        raise DegenerateFitError("shape not constrained: " + ", ".join(wide))
    return SoftShapeFit(
        pho_index1=float(values[0]), break_e=float(values[1]), pho_index2=float(values[2]),
        norm=float(values[3]), crossnorm=values[4:].tolist(),
        errors={"PhoIndx1": errors[0], "BreakE": errors[1], "PhoIndx2": errors[2],
                "norm": errors[3], "crossnorm": errors[4:].tolist()},
        shape_covariance=cov[:3, :3], chi2=float(chi2), dof=n_data - n_par,
        at_bound=tuple(n for n, p in zip(_SOFT_NAMES, pegged) if p))


# ----------------------------------------------------------------------------------------------
# SCI: CXB + soft component


@partial(jax.jit, static_argnames=("free_efold", "soft_model"))
def _sci_core(y, sigma, response, ch_lo, ch_hi, shape, free_efold, soft_model):
    cxb_unit = response @ cxb_photons(1.0, 41.13, ch_lo, ch_hi)
    soft_unit = response @ sci_soft_photons(shape, 1.0, ch_lo, ch_hi, soft_model)
    var = jnp.diag(sigma) if sigma.ndim == 2 else sigma**2
    cxb0 = jnp.sum(y * cxb_unit / var) / jnp.sum(cxb_unit**2 / var)
    # scale the soft norm so both coefficients are O(1) for the minimiser (never 0: the first
    # band may hold no aperture flux at all)
    soft_scale = jnp.maximum(jnp.abs(y[0]), jnp.sqrt(var[0])) / soft_unit[0]
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
                     soft_model="powerlaw", shape_covariance=None,
                     detection_sigma=3.0) -> SciFit:
    r"""CXB (eq. 1, free norm) + soft component (fixed shape, free norm) on one SCI spectrum.

    The soft component is the OCC broken power law's low-energy branch :math:`E^{-\Gamma_1}`
    (``soft_model="powerlaw"``, the paper's choice: backscattered CXB is assumed suppressed
    on-sky, section 5.2.3) or the full broken power law (``"bknpower"``).

    Returns the CXB norm (relative to HEAO-1), the soft norm, their covariance, the 3-20 keV
    CXB energy flux (erg/s/cm^2/deg^2) with 1-sigma errors, chi2 and dof.  With
    ``free_efold`` the Gruber folding energy is also free (section 5.3).  The soft norm is
    detected when norm / error >= ``detection_sigma``; otherwise its 90 % upper limit
    max(norm, 0) + 1.645 sigma is given.  Undefined numbers are NaN with a ``note``.
    """
    u, cov, chi2 = _sci_core(jnp.asarray(y, jnp.float64), jnp.asarray(sigma, jnp.float64),
                             jnp.asarray(response), jnp.asarray(ch_lo), jnp.asarray(ch_hi),
                             jnp.asarray(soft_shape, jnp.float64), free_efold, soft_model)
    u, cov = np.asarray(u), np.asarray(cov)
    # CXB-soft correlation before the shape errors are added: near +-1 the two templates are
    # indistinguishable on these bands (e.g. a soft photon index close to the CXB's)
    product = float(cov[0, 0] * cov[1, 1])
    rho = float(cov[0, 1]) / math.sqrt(product) if product > 0 else math.nan
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
    notes = []
    if math.isfinite(rho) and abs(rho) > 0.99:
        notes.append(f"CXB and soft shapes nearly degenerate on these bands (correlation "
                     f"{rho:+.3f}): large CXB error")
    variances = np.diag(cov)
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(variances)) and np.all(variances > 0)):
        notes.append("the CXB + soft fit has no finite positive errors (singular or non-finite "
                     "band covariance, or CXB and soft shapes indistinguishable on these bands)")
        norm_err = math.sqrt(variances[0]) if variances[0] > 0 else math.nan
        flux_err = norm_err * flux_unit if not free_efold else math.nan
    soft_norm, soft_err = float(u[1]), (math.sqrt(variances[1]) if variances[1] > 0
                                        else math.nan)
    significance = _ratio(soft_norm, soft_err)
    detected = bool(math.isfinite(significance) and significance >= detection_sigma)
    upper = None
    if not detected:
        upper = max(soft_norm, 0.0) + Z_90 * soft_err if math.isfinite(soft_err) else math.nan
    dof = int(len(np.asarray(y)) - len(u))
    if dof == 0:
        notes.append("dof = 0: as many free parameters as bands")
    return SciFit(cxb_norm=float(u[0]), cxb_norm_err=norm_err, soft_norm=soft_norm,
                  soft_norm_err=soft_err, covariance=cov.tolist(),
                  flux_3_20=float(flux), flux_3_20_err=flux_err, chi2=float(chi2),
                  dof=dof, efold=efold, efold_err=efold_err, soft_detected=detected,
                  soft_significance=significance, soft_upper90=upper,
                  note="; ".join(notes) if notes else None)


@partial(jax.jit, static_argnames=("soft_model",))
def _crossnorm_core(y_a, cov_a, resp_a, y_b, cov_b, resp_b, ch_lo, ch_hi, shape, soft_model):
    cxb_a = resp_a @ cxb_photons(1.0, 41.13, ch_lo, ch_hi)
    cxb_b = resp_b @ cxb_photons(1.0, 41.13, ch_lo, ch_hi)
    soft_a = resp_a @ sci_soft_photons(shape, 1.0, ch_lo, ch_hi, soft_model)
    soft_b = resp_b @ sci_soft_photons(shape, 1.0, ch_lo, ch_hi, soft_model)
    scale_a = jnp.maximum(jnp.abs(y_a[0]), jnp.sqrt(cov_a[0, 0])) / soft_a[0]
    scale_b = jnp.maximum(jnp.abs(y_b[0]), jnp.sqrt(cov_b[0, 0])) / soft_b[0]
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

    scale = jnp.maximum(jnp.abs(mean[0]), jnp.sqrt(var[0])) / pl_unit(1.5)[0]
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
    correlations from the chip factors) is used in the chi-square.

    Values without a finite positive error get no weight; a band without any is left out of
    the fits.  A model with as many free parameters as bands has dof = 0 and ``chi2_red`` None
    (with a ``note``); one with more is not fitted (``fitted`` False, parameters None)."""
    y = np.asarray(cxb_spectra, float)
    s = np.asarray(sigmas, float)
    good = np.isfinite(y) & np.isfinite(s) & (s > 0)
    w = np.where(good, 1.0 / np.where(good, s, 1.0) ** 2, 0.0)
    wsum = np.sum(w, axis=0)
    band_ok = wsum > 0
    safe_wsum = np.where(band_ok, wsum, 1.0)
    mean = np.where(band_ok, np.sum(w * np.where(good, y, 0.0), axis=0) / safe_wsum, np.nan)
    err = np.where(band_ok, 1.0 / np.sqrt(safe_wsum), np.nan)
    spectrum_err = err
    errors = err
    if covariances is not None:
        frac = w / safe_wsum
        errors = sum(np.outer(f, f) * np.where(np.isfinite(c), c, 0.0)
                     for f, c in zip(frac, covariances))
        spectrum_err = np.where(band_ok, np.sqrt(np.maximum(np.diag(errors), 0.0)), np.nan)
    keep = np.flatnonzero(band_ok)
    n_used = keep.size
    fit_mean = jnp.asarray(mean[keep])
    fit_err = jnp.asarray(errors[np.ix_(keep, keep)] if np.ndim(errors) == 2 else errors[keep])
    fit_resp = jnp.asarray(np.asarray(response)[keep])
    fits = {}
    for kind, names in _AVERAGE_MODELS.items():
        dof = int(n_used - len(names))
        if dof < 0:
            fits[kind] = {"fitted": False, "chi2": None, "dof": dof, "chi2_red": None,
                          **{n: None for n in names}, **{n + "_err": None for n in names},
                          "note": f"not fitted: {len(names)} free parameters but {n_used} "
                                  "usable band(s)"}
            continue
        vals, cov, chi2 = _average_fit(kind, fit_mean, fit_err, fit_resp, jnp.asarray(ch_lo),
                                       jnp.asarray(ch_hi))
        vals, cov = np.asarray(vals), np.asarray(cov)
        variances = np.diag(cov)
        entry = {"fitted": True, "chi2": float(chi2), "dof": dof,
                 "chi2_red": float(chi2) / dof if dof > 0 else None,
                 **{n: float(v) for n, v in zip(names, vals)},
                 **{n + "_err": float(math.sqrt(variances[i])) if variances[i] > 0 else math.nan
                    for i, n in enumerate(names)}}
        notes = []
        if dof == 0:
            notes.append("dof = 0: as many free parameters as bands, so the model goes through "
                         "the data and chi2_red is undefined")
        if not (np.all(np.isfinite(vals)) and np.all(np.isfinite(variances))
                and np.all(variances > 0)):
            notes.append("degenerate fit: some parameters or errors are undefined (null)")
        if n_used < mean.size:
            notes.append(f"{mean.size - n_used} band(s) without a finite error left out")
        if notes:
            entry["note"] = "; ".join(notes)
        fits[kind] = entry
    gruber = fits["gruber"]
    if gruber["fitted"]:
        gruber["flux_3_20"] = gruber["norm"] * gruber_flux_3_20()
        gruber["flux_3_20_err"] = gruber["norm_err"] * gruber_flux_3_20()
    else:
        gruber["flux_3_20"] = gruber["flux_3_20_err"] = None
    return AverageSpectrum(spectrum=mean, spectrum_err=spectrum_err, fits=fits)


# ----------------------------------------------------------------------------------------------
# Stages


def module_responses(campaign: Campaign, backgrounds, bands: BandGrid) -> tuple:
    """Aperture response ([n_bands, n_channels]) of every module on its fitted pixels."""
    return tuple(aperture_response(campaign.geometry(m.fpm), bands.e_lo, bands.e_hi, bg.mask)
                 for m, bg in zip(campaign.modules, backgrounds))


def module_band_covariance(module_bands, background, exposure):
    r"""Band covariance of a module's :math:`N_\mathrm{apt}`: the Hessian variances plus the
    uncertainty of the chip factors :math:`M_\mathrm{bkg}` (common to all bands, so it shifts
    them together) when the module has them."""
    band_cov = np.diag(np.asarray(module_bands.n_apt_err, float) ** 2)
    if background.chip_factors_cov is not None:
        sens = band_flat_sensitivity(module_bands, background.chip_factors, exposure)
        band_cov = band_cov + sens @ background.chip_factors_cov @ sens.T
    return band_cov


def soft_component_stage(campaign: Campaign, occ_bands, responses, bands: BandGrid,
                         options: AnalysisOptions, backgrounds=None) -> dict:
    """Soft-component shape of every data set (data-set name ->
    :class:`~bkgjax.missions.nustar_cxb.records.SoftComponent`): a joint broken-power-law fit
    to the OCC aperture spectra of its modules (in FPM order), or the default shape of
    ``options``: without OCC data, when the OCC spectra show no soft component above
    ``options.soft_detection_sigma`` (:func:`detect_soft_component`; its norms are then 90 %
    upper limits), or when they cannot constrain its shape (:class:`DegenerateFitError`).
    With ``backgrounds`` the OCC band covariances include the chip-factor uncertainty."""
    default = tuple(float(v) for v in options.soft_shape_default)
    soft = {}
    for name in campaign.datasets:
        occ = sorted((i for i, m in enumerate(campaign.modules)
                      if m.dataset == name and occ_bands[i] is not None),
                     key=lambda i: campaign.modules[i].fpm)
        if not occ:
            soft[name] = SoftComponent(shape=default, note="no OCC data: default shape")
            continue
        fpms = tuple(campaign.modules[i].fpm for i in occ)
        spectra = [(occ_bands[i].n_apt,
                    occ_bands[i].n_apt_err if backgrounds is None else module_band_covariance(
                        occ_bands[i], backgrounds[i], campaign.modules[i].occ_exposure))
                   for i in occ]
        occ_responses = [responses[i] for i in occ]
        detection = detect_soft_component(spectra, occ_responses, bands.ch_lo, bands.ch_hi,
                                          default, fpms, options.soft_detection_sigma)
        z = detection["significance_sigma"]
        if not detection["detected"]:
            if math.isfinite(z):
                note = (f"soft component not detected in the OCC spectra ({z:.2f} sigma < "
                        f"{options.soft_detection_sigma:g} sigma with the default shape): shape "
                        "fixed to the default, norms are 90 % upper limits")
            else:
                note = ("soft component not detected: the OCC spectra cannot test it (no OCC "
                        "band has a finite error, too few counts); shape fixed to the default, "
                        "no upper limit")
            soft[name] = SoftComponent(shape=default, fpms=fpms, detected=False,
                                       detection=detection, note=note)
            continue
        first = detection["modules"][fpms[0]]["norm"]
        try:
            fit = fit_soft_shape(spectra, occ_responses, bands.ch_lo, bands.ch_hi,
                                 norm0=first if first > 0 else None)
        except DegenerateFitError as err:
            soft[name] = SoftComponent(
                shape=default, fpms=fpms, detected=True, detection=detection,
                note=(f"soft component detected ({z:.1f} sigma) but the OCC spectra do not "
                      f"constrain its shape ({err}): shape fixed to the default"))
            continue
        note = None
        if fit.at_bound:
            note = (f"shape parameter(s) {', '.join(fit.at_bound)} at a limit of the allowed "
                    "range: held there (error 0, not propagated)")
        soft[name] = SoftComponent(shape=fit.shape, fpms=fpms, fit=fit, detected=True,
                                   detection=detection, note=note)
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
        band_cov = module_band_covariance(fitted, bg, mod.sci_exposure)
        component = soft[mod.dataset]
        fit = fit_sci_spectrum(fitted.n_apt, band_cov, response, bands.ch_lo, bands.ch_hi,
                               component.shape, soft_model=options.sci_soft_model,
                               shape_covariance=component.shape_covariance,
                               detection_sigma=options.soft_detection_sigma)
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
