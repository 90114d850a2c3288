r"""Campaign-level numbers and the results.json payload (Krivonos et al. 2021, section 5).

* :func:`combine_fluxes`: inverse-variance weighted mean of the per-module 3-20 keV fluxes, its
  error and the rms scatter about it, compared with the statistical error (section 5.2);
* :func:`cosmic_variance`: eq. (4), the field-to-field scatter expected from undetected sources;
* :func:`combination_stage`: both of the above plus the stacked CXB spectrum (section 5.3);
* :func:`results_payload`: the JSON-able summary (Table 4 per data set and module, per-band
  pixel fits, soft components, cross-normalisations, combination, average-spectrum fits).

Nothing here divides by a zero or undefined error: such ratios are None (null in JSON) with a
``note``, values without a finite positive error are left out of the weighted means, and the
payload holds no NaN or infinity (:func:`strict_payload` writes them as null and says where).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.missions.nustar_cxb.records import (
    AnalysisOptions,
    BandGrid,
    Campaign,
    Combination,
    CombinedFlux,
    SoftComponent,
)
from bkgjax.missions.nustar_cxb.spectral_stage import average_spectrum_fits, sci_soft_photons
from bkgjax.stats.intervals import Z_90

__all__ = [
    "HEAO1_FLUX_3_20",
    "INTEGRAL_FLUX_3_20",
    "MCRAB_3_20",
    "cosmic_variance",
    "combine_fluxes",
    "combination_stage",
    "results_payload",
    "jsonable",
    "strict_payload",
]

#: Reference 3-20 keV CXB fluxes (erg/s/cm^2/deg^2), section 5.1 and Fig. 8.
HEAO1_FLUX_3_20 = 2.61e-11
INTEGRAL_FLUX_3_20 = 2.88e-11
#: 1 mCrab in 3-20 keV (footnote 3): the conservative S_max of eq. (4).
MCRAB_3_20 = 2.5e-11


def cosmic_variance(s_max=MCRAB_3_20, omega_deg2=5.0):
    r"""Eq. (4): :math:`\delta I/I \approx 5.45\times10^{-2} S_{\max,11}^{1/4}\Omega_{\deg}^{-1/2}`.

    ``s_max``: largest undetected source flux in 3-20 keV (erg/s/cm^2; default 1 mCrab, the
    paper's conservative value); ``omega_deg2``: mean solid angle of the pixels (~5 deg^2).
    """
    return 5.45e-2 * (s_max / 1e-11) ** 0.25 / math.sqrt(omega_deg2)


def _ratio(a, b):
    """a / b, or None when b is zero or either is undefined (no division by a zero error)."""
    if a is None or b is None:
        return None
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0.0:
        return None
    return a / b


def combine_fluxes(values, errors_1sigma) -> CombinedFlux:
    """Inverse-variance weighted mean, its 1-sigma error and the fractional rms scatter
    (section 5.2: rms of the individual values about the mean, divided by the mean).

    Values without a finite, positive error are left out (``n_used``, ``note``); with none
    left, or a mean of zero, the undefined numbers are NaN."""
    values = np.asarray(values, float)
    errors = np.asarray(errors_1sigma, float)
    ok = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    notes = []
    if not ok.all():
        notes.append(f"{int((~ok).sum())} of {values.size} value(s) without a finite positive "
                     "error left out")
    values, errors = values[ok], errors[ok]
    if values.size == 0:
        notes.append("no value to combine")
        nan = math.nan
        return CombinedFlux(value=nan, err=nan, lower90=nan, upper90=nan, rms_scatter_frac=nan,
                            stat_err_frac=nan, chi2=nan, dof=0, n_used=0, note="; ".join(notes))
    w = 1.0 / errors**2
    mean = float(np.sum(w * values) / np.sum(w))
    err = float(1.0 / math.sqrt(np.sum(w)))
    rms_abs = float(np.sqrt(np.mean((values - mean) ** 2)))
    rms = rms_abs / mean if mean != 0.0 else math.nan
    stat = err / mean if mean != 0.0 else math.nan
    if mean == 0.0:
        notes.append("weighted mean is 0: fractional scatter and error undefined")
    chi2 = float(np.sum(w * (values - mean) ** 2))
    return CombinedFlux(value=mean, err=err, lower90=mean - Z_90 * err, upper90=mean + Z_90 * err,
                        rms_scatter_frac=rms, stat_err_frac=stat, chi2=chi2,
                        dof=int(values.size - 1), n_used=int(values.size),
                        note="; ".join(notes) if notes else None)


def combination_stage(campaign: Campaign, backgrounds, spectra, soft, bands: BandGrid,
                      options: AnalysisOptions) -> Combination:
    """Weighted-mean flux (all modules and per FPM), cosmic variance of eq. (4) for the mean
    pixel solid angle, and the stacked CXB spectrum: each module's aperture spectrum minus its
    fitted soft component, fitted with the section 5.3 models."""
    values = np.array([s.fit.flux_3_20 for s in spectra])
    sigmas = np.array([s.fit.flux_3_20_err for s in spectra])
    per_fpm = {}
    for fpm in sorted({m.fpm for m in campaign.modules}):
        sel = np.array([s.module.fpm == fpm for s in spectra])
        per_fpm[fpm] = combine_fluxes(values[sel], sigmas[sel])
    mean_omega = float(np.mean([np.mean(campaign.geometry(m.fpm).omega[bg.mask])
                                for m, bg in zip(campaign.modules, backgrounds)]))
    ch_lo, ch_hi = jnp.asarray(bands.ch_lo), jnp.asarray(bands.ch_hi)
    cxb_spectra = []
    for s in spectra:
        shape = jnp.asarray(soft[s.module.dataset].shape, jnp.float64)
        soft_part = s.response @ np.asarray(sci_soft_photons(shape, s.fit.soft_norm, ch_lo, ch_hi,
                                                             options.sci_soft_model))
        cxb_spectra.append(s.bands.n_apt - soft_part)
    average = average_spectrum_fits(cxb_spectra, [s.bands.n_apt_err for s in spectra],
                                    np.mean([s.response for s in spectra], axis=0),
                                    bands.ch_lo, bands.ch_hi,
                                    covariances=[s.band_covariance for s in spectra])
    return Combination(combined=combine_fluxes(values, sigmas), per_fpm=per_fpm,
                       mean_omega=mean_omega,
                       cosmic_variance_frac=cosmic_variance(MCRAB_3_20, mean_omega),
                       average=average)


# ----------------------------------------------------------------------------------------------
# JSON


def _band_entries(bands: BandGrid, fitted):
    out = []
    for b in range(len(bands.e_lo)):
        band = {"e_lo": float(bands.e_lo[b]), "e_hi": float(bands.e_hi[b]),
                "n_apt": float(fitted.n_apt[b]), "n_apt_err": float(fitted.n_apt_err[b]),
                "n_bkg": float(fitted.n_bkg[b]), "n_bkg_err": float(fitted.n_bkg_err[b]),
                "cstat": float(fitted.cstat[b]), "n_pixels": int(fitted.n_pixels[b])}
        if fitted.n_apt_lower90 is not None:
            band["n_apt_lower90"] = float(fitted.n_apt_lower90[b])
            band["n_apt_upper90"] = float(fitted.n_apt_upper90[b])
        if fitted.bootstrap_err is not None:
            band["n_apt_bootstrap_err"] = float(fitted.bootstrap_err[b])
        out.append(band)
    return out


def _chip_list(values, live):
    """Per-chip numbers with None for chips without fitted pixels."""
    return [float(v) if c in live else None for c, v in enumerate(np.asarray(values))]


def _sci_soft_entry(fit):
    """The soft component of one SCI spectrum: detected, or its 90 % upper limit."""
    entry = {"detected": fit.soft_detected, "significance_sigma": fit.soft_significance,
             "norm": fit.soft_norm, "norm_err": fit.soft_norm_err}
    if not fit.soft_detected:
        entry["upper_limit_90"] = fit.soft_upper90
        entry["note"] = ("not detected: upper_limit_90 = max(norm, 0) + 1.645 sigma (norm of "
                         "the soft power law at 1 keV, photons/keV/cm^2/s/deg^2)")
    return entry


def _module_entry(spectrum, background, one_step_flux, bands: BandGrid):
    mod, fit = spectrum.module, spectrum.fit
    flux, err = fit.flux_3_20, fit.flux_3_20_err
    err_ok = err is not None and math.isfinite(err) and err > 0
    notes = [n for n in (fit.note, background.note) if n]
    if mod.occ_exposure is None:
        notes.append("no OCC data (occ_exposure_s null)")
    if one_step_flux is None:
        notes.append("one-step model not run (one_step = false)")
    if not err_ok:
        notes.append("3-20 keV flux error undefined: bounds and S/N are null")
    live = tuple(background.live_chips)
    entry = {
        "name": mod.dataset, "fpm": mod.fpm, "exposure_s": float(mod.sci_exposure),
        "occ_exposure_s": None if mod.occ_exposure is None else float(mod.occ_exposure),
        "flux_3_20": {"value": flux, "lower90": flux - Z_90 * err if err_ok else None,
                      "upper90": flux + Z_90 * err if err_ok else None,
                      "err1sigma": err if err_ok else None},
        # S/N two ways: flux / 1-sigma error, and flux / 90 % half-width, which is how the
        # paper's "S/N = 50-70 sigma" (section 5.1) follows from its Table 4.
        "snr": _ratio(flux, err) if err_ok else None,
        "snr_90": _ratio(flux, Z_90 * err) if err_ok else None,
        "chi2": fit.chi2, "dof": fit.dof,
        "chi2_red": _ratio(fit.chi2, fit.dof) if fit.dof > 0 else None,
        "cxb_norm": fit.cxb_norm, "cxb_norm_err": fit.cxb_norm_err,
        "soft_norm": fit.soft_norm, "soft_norm_err": fit.soft_norm_err,
        "soft": _sci_soft_entry(fit),
        "chip_factors": (None if background.chip_factors is None
                         else _chip_list(background.chip_factors, live)),
        "chip_factors_err": (None if background.chip_factors_cov is None
                             else _chip_list(np.sqrt(np.maximum(
                                 np.diag(background.chip_factors_cov), 0.0)), live)),
        "masked_chips": [c for c in range(4) if c not in live],
        "n_pixels": int(background.mask.sum()),
        "one_step_flux_3_20": (None if one_step_flux is None
                               else {"value": one_step_flux.value,
                                     "err1sigma": one_step_flux.err1sigma}),
        "bands": _band_entries(bands, spectrum.bands),
    }
    if notes:
        entry["note"] = "; ".join(notes)
    return entry


def _soft_entry(component: SoftComponent):
    fit = component.fit
    if fit is None:
        entry = {"fpms": list(component.fpms), "fixed": True}
    else:
        entry = {"PhoIndx1": float(fit.pho_index1), "BreakE": float(fit.break_e),
                 "PhoIndx2": float(fit.pho_index2), "norm": float(fit.norm),
                 "crossnorm": fit.crossnorm, "errors": fit.errors, "chi2": fit.chi2,
                 "dof": fit.dof, "chi2_red": _ratio(fit.chi2, fit.dof) if fit.dof > 0 else None,
                 "at_bound": list(fit.at_bound), "fpms": list(component.fpms), "fixed": False}
    entry["shape"] = [float(v) for v in component.shape]
    entry["shape_source"] = "OCC fit" if fit is not None else "default"
    entry["detected"] = component.detected
    detection = component.detection
    if detection is not None:
        entry["significance_sigma"] = detection["significance_sigma"]
        entry["detection_threshold_sigma"] = detection["threshold_sigma"]
        entry["detection"] = detection
        if not component.detected:
            modules = detection["modules"]
            entry["upper_limit_90"] = {
                "norm": {fpm: m["upper_limit_90"] for fpm, m in modules.items()},
                "flux_3_5": {fpm: m["flux_3_5_upper_limit_90"] for fpm, m in modules.items()},
                "definition": ("max(norm, 0) + 1.645 sigma with the shape fixed to 'shape'; norm "
                               "at 1 keV in photons/keV/cm^2/s/deg^2, flux_3_5 in "
                               "erg/s/cm^2/deg^2")}
    if component.note:
        entry["note"] = component.note
    return entry


def _combined_entry(combination: Combination):
    combined = combination.combined
    notes = {fpm: c.note for fpm, c in combination.per_fpm.items() if c.note}
    extra = {}
    if combined.note or notes:
        extra["note"] = "; ".join(([combined.note] if combined.note else [])
                                  + [f"{fpm}: {n}" for fpm, n in notes.items()])
    return {**extra,
        "flux_3_20": {"value": combined.value, "lower90": combined.lower90,
                      "upper90": combined.upper90, "err1sigma": combined.err},
        "rms_scatter_frac": combined.rms_scatter_frac,
        "stat_err_frac": combined.stat_err_frac,
        "chi2": combined.chi2, "dof": combined.dof, "n_used": combined.n_used,
        "per_fpm": {fpm: {"value": c.value, "err1sigma": c.err,
                          "rms_scatter_frac": c.rms_scatter_frac, "n_used": c.n_used}
                    for fpm, c in combination.per_fpm.items()},
        "cosmic_variance_frac": combination.cosmic_variance_frac,
        "mean_pixel_solid_angle_deg2": combination.mean_omega,
        "reference_flux_3_20": {"HEAO-1": HEAO1_FLUX_3_20, "INTEGRAL": INTEGRAL_FLUX_3_20},
    }


def results_payload(*, bands: BandGrid, backgrounds, spectra, soft, crossnorm, one_step_flux,
                    combination: Combination) -> dict:
    """The JSON-able summary written to results.json: ``datasets`` (one entry per module:
    Table 4 flux with 90 % bounds, S/N, fit quality, chip factors, one-step flux, per-band pixel
    fits), ``combined``, ``soft_component``, ``average_spectrum``, ``bands``,
    ``fpm_crossnorm``."""
    payload = {
        "datasets": [_module_entry(s, bg, one, bands)
                     for s, bg, one in zip(spectra, backgrounds, one_step_flux)],
        "combined": _combined_entry(combination),
        "soft_component": {name: _soft_entry(c) for name, c in soft.items()},
        "average_spectrum": combination.average.fits,
        "bands": {"e_lo": bands.e_lo.tolist(), "e_hi": bands.e_hi.tolist()},
        "fpm_crossnorm": {name: dataclasses.asdict(fit) for name, fit in crossnorm.items()},
    }
    return strict_payload(jsonable(payload))


def strict_payload(obj):
    """``obj`` (already :func:`jsonable`) with every NaN or infinity replaced by None; a dict
    that held one gets (or extends) a ``note`` naming the keys, so no null goes unexplained."""
    if isinstance(obj, list):
        return [strict_payload(v) for v in obj]
    if not isinstance(obj, dict):
        return None if isinstance(obj, float) and not math.isfinite(obj) else obj
    out, undefined = {}, []
    for key, value in obj.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
            undefined.append(key)
        elif isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v)
                                             for v in value):
            out[key] = strict_payload(value)
            undefined.append(key)
        else:
            out[key] = strict_payload(value)
    if undefined:
        text = "undefined (non-finite) value(s) written as null: " + ", ".join(undefined)
        out["note"] = f"{out['note']}; {text}" if out.get("note") else text
    return out


def jsonable(obj):
    """``obj`` with NumPy / JAX scalars and arrays turned into Python numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, jax.Array):
        return np.asarray(obj).tolist()
    return obj
