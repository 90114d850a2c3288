"""``bkgjax isgri-ridge``: the INTEGRAL/IBIS-ISGRI Galactic ridge pipeline of Krivonos,
Shtykovskaya & Sazonov (integral_ibis_galactic_background.txt), issue 5.

Recipe (:func:`analyse`), all steps in :mod:`bkgjax.missions.isgri.instrument`:

1. Screening (Section 2): orbital phase 0.2-0.8, EXPOSURE >= 700 s; GAL/BKG split (Appendix A).
2. Orbit background model (Appendix A) from the BKG ScWs of every orbit, with the slope filter
   (its rejections are kept in the refit of step 3).
3. Transient clipping (Section 3): per band, iterative 4-sigma clipping of the residuals
   (rate - model) among the ScWs pointed at the same 15 x 10 deg sky cell; the orbit model is
   then refitted without the clipped ScWs.
4. Orbit clipping (Appendix A): light curve of the residuals with one bin per orbit in the
   168-185 keV band (else the highest-energy band), iterative 3-sigma clipping of orbits.
5. Crab calibration (Appendix B): cubic polynomial P(REV) of the per-orbit Crab rate.
6. Residuals in mCrab per FOV, 1000 (rate - model) / P(REV), and per region / longitude bin the
   Gaussian-plus-wings fit: flux = centroid, error = sigma / sqrt(N_ScW); also in erg/s/cm^2
   with the Crab spectrum 10 E^-2.1.

:func:`run_isgri_ridge` is the CLI entry point (:mod:`bkgjax.missions.isgri.cli` adds its options);
it writes ``results.json`` and PNG figures (Fig. A.5-like count rate and model per orbit,
Fig. A.6/A.7-like residual distributions, region residual distributions with the fits,
longitude profiles like Fig. 1, the Crab calibration like Fig. B.8).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bkgjax.missions.isgri import gauss_wings
from bkgjax.missions.isgri import instrument as isgri
from bkgjax.missions.isgri.tables import (
    CrabData,
    ScwData,
    check_same_bands,
    crab_data_from_table,
    read_crab_table,
    read_profile,
    read_scw_table,
    scw_data_from_table,
)

__all__ = [
    "RidgeOptions",
    "RidgeResult",
    "analyse",
    "results_payload",
    "save_figures",
    "run_isgri_ridge",
    "parse_region",
]


@dataclass(frozen=True)
class RidgeOptions:
    """Settings of the recipe; the defaults are the paper's."""

    phase_range: tuple = (0.2, 0.8)
    min_exposure: float = 700.0
    transient_nsigma: float = 4.0
    transient_cell_deg: tuple = (15.0, 10.0)
    orbit_nsigma: float = 3.0
    clip_band: str | None = None  # None: "168_185" if present, else the highest-energy band
    weighted: bool = False
    mean_error: str = "sem"
    slope_bounds: tuple = (-2e-3, 1e-3)
    min_regression: int = 10
    min_span: float = 0.4
    min_mean: int = 4
    crab_max_offset: float = 4.5
    crab_min_scw: int = 10
    crab_degree: int = 3
    regions: tuple = isgri.PAPER_REGIONS
    profile_edges: tuple = isgri.PROFILE_EDGES_DEG
    profile_b_max: float = isgri.PROFILE_B_MAX_DEG
    min_scw_region: int = 10


@dataclass(frozen=True, eq=False)
class RidgeResult:
    """Everything :func:`analyse` computed (arrays follow the screened ScWs ``data``)."""

    options: RidgeOptions
    data: ScwData
    n_input: int
    gal: np.ndarray
    model: isgri.OrbitModel
    transient_keep: np.ndarray
    orbit_keep: np.ndarray
    orbit_light_curve: np.ndarray
    clip_band: str
    final: np.ndarray
    crab: isgri.CrabCalibration
    crab_rate: np.ndarray
    residual_mcrab: np.ndarray
    regions: dict
    profile: list
    timings: dict = field(default_factory=dict)


def _clip_band(bands, requested):
    if requested is not None:
        if requested not in bands:
            raise ValueError(f"clip band {requested!r} is not among the table bands "
                             f"({', '.join(bands)})")
        return requested
    name = isgri.band_name(*isgri.CLIP_BAND)
    if name in bands:
        return name
    return max(bands, key=lambda b: isgri.band_edges(b)[::-1])


def _as_scw(scw):
    return scw if isinstance(scw, ScwData) else scw_data_from_table(scw)


def _as_crab(crab):
    return crab if isinstance(crab, CrabData) else crab_data_from_table(crab)


def analyse(scw, crab, options: RidgeOptions = RidgeOptions(), *, progress=None) -> RidgeResult:
    """Run the recipe on a ScW table and a Crab table (:class:`ScwData`/:class:`CrabData` or
    astropy Tables, validated here).  ``progress(name)`` is called after each step."""
    tick = progress or (lambda name: None)
    timings = {}
    t0 = time.perf_counter()
    scw, crab = _as_scw(scw), _as_crab(crab)
    bands = check_same_bands(scw, crab)
    crab_rate_cols = crab.rate[:, [crab.bands.index(b) for b in bands]]

    keep, gal_all = isgri.screen(scw.phase, scw.exposure, scw.l, scw.b,
                                 phase_range=options.phase_range,
                                 min_exposure=options.min_exposure)
    if not keep.any():
        raise ValueError(f"{scw.source}: no ScW passes the screening (phase "
                         f"{options.phase_range[0]}-{options.phase_range[1]}, exposure >= "
                         f"{options.min_exposure} s)")
    data = scw.subset(keep)
    gal = gal_all[keep]
    kw = dict(bands=bands, weighted=options.weighted, rate_err=data.rate_err,
              min_regression=options.min_regression, min_span=options.min_span,
              min_mean=options.min_mean, slope_bounds=options.slope_bounds,
              mean_error=options.mean_error)
    try:
        first = isgri.orbit_background(data.rev, data.phase, data.rate, ~gal, **kw)
    except ValueError as exc:
        raise ValueError(f"{scw.source}: {exc}") from None
    timings["orbit_model_s"] = time.perf_counter() - t0
    tick("orbit model")

    # Transient clipping on the residuals, per band, among ScWs of the same sky cell.
    cells = isgri.sky_cells(data.l, data.b, dl=options.transient_cell_deg[0],
                            db=options.transient_cell_deg[1])
    resid = data.rate - first.model
    transient_keep = np.stack([
        isgri.sigma_clip_groups(resid[:, j], cells, first.usable, nsigma=options.transient_nsigma)
        for j in range(len(bands))], axis=1)
    try:
        # The slope filter of the first pass is kept: transient clipping removes the drifting
        # ScWs of an orbit with a bright outburst, which would hide its slope.
        model = isgri.orbit_background(data.rev, data.phase, data.rate, ~gal,
                                       valid=transient_keep,
                                       reject_revs=first.revs[first.rejected], **kw)
    except ValueError as exc:
        raise ValueError(f"{scw.source}: after transient clipping: {exc}") from None
    timings["transient_clip_s"] = time.perf_counter() - t0 - timings["orbit_model_s"]
    tick("transient clipping")

    clip_band = _clip_band(bands, options.clip_band)
    jc = bands.index(clip_band)
    resid = data.rate - model.model
    orbit_keep, light_curve, _ = isgri.orbit_residual_clip(
        model.orbit_index, resid[:, jc], transient_keep[:, jc] & model.usable, len(model.revs),
        nsigma=options.orbit_nsigma)
    final = transient_keep & model.usable[:, None] & orbit_keep[model.orbit_index][:, None]
    tick("orbit clipping")

    try:
        cal = isgri.crab_calibration(crab.rev, crab.offset, crab_rate_cols, bands,
                                     max_offset=options.crab_max_offset,
                                     min_scw=options.crab_min_scw, degree=options.crab_degree)
    except ValueError as exc:
        raise ValueError(f"{crab.source}: {exc}") from None
    crab_rate = cal.rate(data.rev)
    bad = ~(crab_rate > 0)
    if bad.any():
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        raise ValueError(f"{crab.source}: the Crab polynomial of band {bands[j]} is not positive "
                         f"at REV {int(data.rev[bad[:, j]][0])} of the ScW table (extrapolation "
                         f"beyond the Crab orbits {int(cal.orbit_revs.min())}-"
                         f"{int(cal.orbit_revs.max())})")
    residual_mcrab = isgri.to_mcrab(resid, crab_rate)
    tick("Crab calibration")

    # Region and profile samples, fitted in one batched call.
    # Error clusters (beyond the paper): ScWs whose background comes from the same calibrated
    # orbit share its model error, so cluster every ScW by the calibrated orbit its model is
    # anchored on (its own orbit if calibrated, else the nearest calibrated orbit before it,
    # else after it) in the first band with a model.
    anchor = np.where(model.prev_rev >= 0, model.prev_rev, model.next_rev)[model.orbit_index]
    samples, keys, cal_rel, groups = [], [], [], []
    for reg in options.regions:
        inside = isgri.in_region(data.l, data.b, reg)
        for j, band in enumerate(bands):
            sel = inside & final[:, j]
            samples.append(residual_mcrab[sel, j])
            groups.append(anchor[sel, j])
            keys.append(("region", reg.name, band))
            cal_rel.append(cal.relative_error_of_mean(data.rev[sel], j))
    edges = options.profile_edges
    for k in range(len(edges) - 1):
        inside = isgri.in_profile_bin(data.l, data.b, edges[k], edges[k + 1],
                                      options.profile_b_max)
        for j, band in enumerate(bands):
            sel = inside & final[:, j]
            samples.append(residual_mcrab[sel, j])
            groups.append(anchor[sel, j])
            keys.append(("profile", k, band))
            cal_rel.append(cal.relative_error_of_mean(data.rev[sel], j))
    t1 = time.perf_counter()
    fits = gauss_wings.fit_gauss_wings(samples, groups=groups, min_n=options.min_scw_region)
    timings["region_fits_s"] = time.perf_counter() - t1
    tick("region fits")

    def entry(fit, band, rel_cal):
        lo, hi = isgri.band_edges(band)
        if fit.value is None:
            return {"value": None, "error": None, "n_scw": fit.n, "reason": fit.reason}
        jb = bands.index(band)
        rel_sys = float(cal.systematic_mcrab[jb]) / 1000.0
        cal_err = abs(fit.value) * rel_cal
        return {"value": fit.value, "error": fit.error, "n_scw": fit.n, "sigma": fit.sigma,
                "error_orbit_clustered": fit.error_cluster, "n_orbits": fit.n_groups,
                "calibration_error": cal_err,
                "total_error": math.sqrt(max(fit.error, fit.error_cluster) ** 2 + cal_err ** 2),
                "f_lo": fit.f_lo, "f_hi": fit.f_hi, "converged": fit.converged,
                "systematic": abs(fit.value) * rel_sys,
                "flux_erg": float(isgri.mcrab_to_energy_flux(fit.value, lo, hi)),
                "flux_erg_error": float(isgri.mcrab_to_energy_flux(fit.error, lo, hi))}

    regions = {reg.name: {} for reg in options.regions}
    profile = [{"l_lo": float(edges[k]), "l_hi": float(edges[k + 1]),
                "l_center": 0.5 * float(edges[k] + edges[k + 1]),
                "b_max": float(options.profile_b_max), "bands": {}}
               for k in range(len(edges) - 1)]
    for key, fit, rel in zip(keys, fits, cal_rel):
        if key[0] == "region":
            regions[key[1]][key[2]] = entry(fit, key[2], rel)
        else:
            profile[key[1]]["bands"][key[2]] = entry(fit, key[2], rel)
    timings["total_s"] = time.perf_counter() - t0
    return RidgeResult(options=options, data=data, n_input=len(scw), gal=gal, model=model,
                       transient_keep=transient_keep, orbit_keep=orbit_keep,
                       orbit_light_curve=light_curve, clip_band=clip_band, final=final, crab=cal,
                       crab_rate=crab_rate, residual_mcrab=residual_mcrab, regions=regions,
                       profile=profile, timings=timings)


def hierarchical_regions(result: RidgeResult, *, bands=None, max_orbits=None,
                         num_warmup=300, num_samples=300, num_chains=2, seed=0):
    """The hierarchical NumPyro background model (:mod:`bkgjax.missions.isgri.orbit_background`,
    beyond the paper) on the same screened and clipped ScWs as the Appendix-A rules, per band,
    beside the Appendix-A region fluxes: ``{band: {region: {"hierarchical": {mean, sd,
    hdi90_low, hdi90_high}, "appendix_a": {value, total_error}}}, "diagnostics": ...}``.

    BKG ScWs are the high-latitude ones outside every region; ScWs neither BKG nor in a region
    are left out (their GRXE is unknown).  ``max_orbits`` keeps the first revolutions only
    (NUTS on the full 2700-orbit mission takes minutes per band and mixes slowly)."""
    from bkgjax.missions.isgri.orbit_background import (
        fit_orbit_background,
        orbit_data_from_scws,
    )

    data = result.data
    names = [r.name for r in result.options.regions]
    masks = {r.name: isgri.in_region(data.l, data.b, r) for r in result.options.regions}
    in_any = np.any(np.stack(list(masks.values())), axis=0)
    out = {}
    for band in (bands or data.bands):
        j = data.bands.index(band)
        use = result.final[:, j]
        if max_orbits is not None:
            revs = np.unique(data.rev[use])[:int(max_orbits)]
            use = use & np.isin(data.rev, revs)
        is_bkg = ~result.gal & ~in_any
        region_masks = {k: m[use] for k, m in masks.items() if np.any(m[use])}
        od, _ = orbit_data_from_scws(data.rev[use], data.phase[use], data.rate[use, j],
                                     data.rate_err[use, j], is_bkg[use], region_masks,
                                     result.crab_rate[use, j])
        fit = fit_orbit_background(od, num_warmup=num_warmup, num_samples=num_samples,
                                   num_chains=num_chains, seed=seed)
        entry = {}
        for name in names:
            a = result.regions.get(name, {}).get(band, {})
            entry[name] = {"hierarchical": fit.summary.get(name),
                           "appendix_a": {"value": a.get("value"),
                                          "total_error": a.get("total_error")}}
        entry["diagnostics"] = _clean(fit.diagnostics)
        entry["seconds"] = float(fit.seconds)
        entry["n_orbits"] = int(od.n_orbits) if hasattr(od, "n_orbits") else None
        out[band] = entry
    return out


def _spectra(result: RidgeResult):
    """Raw region spectra (Fig. 2) in the 21 log bands when the tables hold them, and the
    cutoffpl + powerlaw fits of :mod:`bkgjax.missions.isgri.spectra` when that module exists
    (imported lazily; it must provide ``fit_region_spectra(spectra) -> dict``)."""
    names = [isgri.band_name(lo, hi) for lo, hi in isgri.SPECTRAL_BANDS]
    present = [b for b in names if b in result.data.bands]
    if len(present) < 2:
        return {"note": "no spectral bands (the 21 log bands 25-185 keV, RATE_25_27 ... "
                        "RATE_168_185) in the tables: no spectra"}
    spectra = {}
    for name, per_band in result.regions.items():
        rows = [(b, per_band[b]) for b in present]
        spectra[name] = {
            "e_lo": [isgri.band_edges(b)[0] for b, _ in rows],
            "e_hi": [isgri.band_edges(b)[1] for b, _ in rows],
            "mcrab": [r["value"] for _, r in rows],
            # the fits use total_error (orbit-clustered and Crab-calibration errors included):
            # the paper's sigma/sqrt(N) alone under-covers (see analyse) and inflates chi^2
            "error": [r.get("total_error", r["error"]) for _, r in rows],
            "error_paper": [r["error"] for _, r in rows],
        }
    out = {"regions": spectra}
    try:
        from bkgjax.missions.isgri import spectra as isgri_spectra  # noqa: PLC0415 - optional, built separately
    except ImportError:
        out["fit_note"] = ("bkgjax.missions.isgri.spectra is not available: spectral fits "
                           "skipped")
        return out
    fitter = getattr(isgri_spectra, "fit_region_spectra", None)
    if fitter is None:
        out["fit_note"] = "bkgjax.missions.isgri.spectra has no fit_region_spectra: skipped"
        return out
    out["fits"] = fitter({k: {q: v[q] for q in ("e_lo", "e_hi", "mcrab", "error")}
                          for k, v in spectra.items()})
    return out


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def results_payload(result: RidgeResult, *, scw_path=None, crab_path=None, spectra=True) -> dict:
    """The ``results.json`` content: ``regions`` {name: {band: {value, error, ...}}} in mCrab per
    FOV, ``profile`` (list of longitude bins), ``spectra``, plus the screening, background-model
    and Crab-calibration statistics."""
    data, model, bands = result.data, result.model, result.data.bands
    final_any = result.final.any(axis=1)
    rules = {b: model.rule_counts(j) for j, b in enumerate(bands)}
    bkg_stats = {}
    for j, b in enumerate(bands):
        sel = result.final[:, j] & ~result.gal
        r = result.residual_mcrab[sel, j]
        rel = (data.rate[sel, j] - model.model[sel, j]) / model.model[sel, j]
        bkg_stats[b] = {"n_scw": int(sel.sum()),
                        "residual_mean_mcrab": float(r.mean()) if sel.any() else None,
                        "residual_std_mcrab": float(r.std(ddof=1)) if sel.sum() > 1 else None,
                        "relative_residual_std": float(rel.std(ddof=1)) if sel.sum() > 1 else None,
                        "rules": rules[b]}
    cal = result.crab
    payload = {
        "input": {"scw": scw_path or data.source, "crab": crab_path, "bands": list(bands),
                  "n_scw_table": result.n_input},
        "screening": {
            "n_after_phase_exposure": len(data),
            "n_gal": int(result.gal.sum()), "n_bkg": int((~result.gal).sum()),
            "transient_clipped": {b: int((~result.transient_keep[:, j] & model.usable).sum())
                                  for j, b in enumerate(bands)},
            "orbits": int(len(model.revs)),
            "orbits_slope_rejected": int(model.rejected.sum()),
            "orbits_residual_clipped": int((~result.orbit_keep).sum()),
            "orbit_clip_band": result.clip_band,
            "final_n_gal": int((final_any & result.gal).sum()),
            "final_n_bkg": int((final_any & ~result.gal).sum()),
            "final_exposure_gal_ms": float(data.exposure[final_any & result.gal].sum() / 1e6),
            "final_exposure_bkg_ms": float(data.exposure[final_any & ~result.gal].sum() / 1e6),
        },
        "background_model": bkg_stats,
        "crab_calibration": {b: {"n_orbits": int(len(cal.orbit_revs)),
                                 "systematic_mcrab": float(cal.systematic_mcrab[j]),
                                 "coefficients_scaled": cal.coeffs[j].tolist(),
                                 "rev_center": cal.rev_center, "rev_scale": cal.rev_scale}
                             for j, b in enumerate(bands)},
        "region_definitions": {r.name: {"lon": r.lon, "lat": r.lat, "width": r.width,
                                        "height": r.height} for r in result.options.regions},
        "regions": result.regions,
        "profile": result.profile,
        "spectra": _spectra(result) if spectra else {"note": "not computed"},
        "units": {"value": "mCrab per IBIS FOV (Omega = 286 deg^2)",
                  "error": "mCrab, sigma / sqrt(N_ScW) of the Gaussian-plus-wings fit (paper)",
                  "calibration_error": "mCrab, |value| x relative error of the Crab polynomial "
                                       "averaged over the region's ScWs",
                  "error_orbit_clustered": "mCrab, cluster-robust (sandwich) error of the "
                                           "centroid with the ScWs of an orbit correlated "
                                           "(beyond the paper)",
                  "total_error": "mCrab, sqrt(max(error, error_orbit_clustered)^2 + "
                                 "calibration_error^2)",
                  "flux_erg": "erg/s/cm^2 per FOV (Crab 10 E^-2.1)",
                  "systematic": "mCrab, |value| x Crab-calibration scatter (Appendix B)"},
        "options": {k: (list(v) if isinstance(v, tuple) and k != "regions" else v)
                    for k, v in asdict(result.options).items() if k != "regions"},
        "timings": result.timings,
    }
    return _clean(payload)


# ----------------------------------------------------------------------------------------------
# Figures


def _safe(name):
    return "".join(c if c.isalnum() or c in "+-_" else "_" for c in name)


def save_figures(result: RidgeResult, out, *, comparison=None, truth=None):
    """Write PNG figures into ``out``; returns their paths.  ``comparison`` = (l, value) of a
    user profile (scaled by least squares to the first band's profile, as the paper scales
    the NIR profile); ``truth`` = the simulator's truth dict (drawn when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = []
    data, model, bands = result.data, result.model, result.data.bands
    wide = [b for b in bands if b in ("25_60", "60_80", "80_200")] or list(bands[:3])
    cols = [bands.index(b) for b in wide]
    oidx = model.orbit_index
    n_orb = len(model.revs)

    # Fig. A.5: BKG count rate and model per orbit.
    fig, axes = plt.subplots(len(cols), 1, figsize=(9, 2.6 * len(cols)), sharex=True, squeeze=False)
    for ax, j in zip(axes[:, 0], cols):
        sel = result.final[:, j] & ~result.gal
        cnt = np.bincount(oidx[sel], minlength=n_orb)
        has = cnt > 0
        obs = np.bincount(oidx[sel], weights=data.rate[sel, j], minlength=n_orb)[has] / cnt[has]
        mod = np.bincount(oidx[sel], weights=model.model[sel, j], minlength=n_orb)[has] / cnt[has]
        ax.plot(model.revs[has], obs, ".", color="tab:red", ms=3, label="BKG ScWs (orbit mean)")
        ax.plot(model.revs[has], mod, ".", color="tab:green", ms=2, label="background model")
        ax.set_ylabel(f"{bands[j]} keV\ncts/s/pix")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("INTEGRAL revolution")
    fig.tight_layout()
    paths.append(out / "orbit_rate_model.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Fig. A.6 / A.7: residual distributions of the BKG ScWs (relative and mCrab).
    fig, axes = plt.subplots(2, len(cols), figsize=(4 * len(cols), 6), squeeze=False)
    for k, j in enumerate(cols):
        sel = result.final[:, j] & ~result.gal
        rel = (data.rate[sel, j] - model.model[sel, j]) / model.model[sel, j]
        for row, (vals, label) in enumerate(((rel, "relative residual"),
                                             (result.residual_mcrab[sel, j], "mCrab"))):
            ax = axes[row, k]
            if len(vals) > 1:
                lo, hi = np.percentile(vals, [0.5, 99.5])
                ax.hist(vals, bins=80, range=(lo, hi), density=True, color="0.6")
                mu, sd = vals.mean(), vals.std(ddof=1)
                x = np.linspace(lo, hi, 300)
                ax.plot(x, np.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)),
                        "r--", lw=1)
                ax.axvline(mu, color="k")
                ax.set_title(f"{bands[j]} keV: sd {sd:.3g}", fontsize=9)
            ax.set_xlabel(label)
    fig.tight_layout()
    paths.append(out / "residual_distributions.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Region residual distributions with the Gaussian-plus-wings fits.
    regs = result.options.regions
    if not regs:
        return paths
    fig, axes = plt.subplots(len(regs), len(cols), figsize=(4 * len(cols), 2.6 * len(regs)),
                             squeeze=False)
    for r, reg in enumerate(regs):
        inside = isgri.in_region(data.l, data.b, reg)
        for k, j in enumerate(cols):
            ax = axes[r, k]
            vals = result.residual_mcrab[inside & result.final[:, j], j]
            fit = result.regions[reg.name][bands[j]]
            if len(vals) > 1:
                lo, hi = np.percentile(vals, [0.5, 99.5])
                ax.hist(vals, bins=60, range=(lo, hi), density=True, color="0.6")
                if fit["value"] is not None:
                    x = np.linspace(lo, hi, 400)
                    w = max(vals.max() - vals.min(), 1e-12)
                    a, b = vals.min() - 0.1 * w, vals.max() + 0.1 * w
                    pdf = np.exp(np.asarray(gauss_wings.gauss_wings_logpdf(
                        x, fit["value"], fit["sigma"], fit["f_lo"], fit["f_hi"], a, b)))
                    ax.plot(x, pdf, "r-", lw=1)
                    ax.axvline(fit["value"], color="k")
                    ax.set_title(f"{reg.name} {bands[j]}: {fit['value']:.1f} +- "
                                 f"{fit['error']:.1f} mCrab", fontsize=8)
            else:
                ax.set_title(f"{reg.name} {bands[j]}: no ScWs", fontsize=8)
            ax.set_xlabel("mCrab / FOV")
    fig.tight_layout()
    paths.append(out / "region_distributions.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Fig. 1: longitude profiles.
    fig, axes = plt.subplots(len(cols), 1, figsize=(8, 2.8 * len(cols)), sharex=True, squeeze=False)
    for k, (ax, j) in enumerate(zip(axes[:, 0], cols)):
        b = bands[j]
        rows = [(p["l_center"], p["bands"][b]) for p in result.profile
                if p["bands"][b]["value"] is not None]
        if rows:
            lc = np.array([r[0] for r in rows])
            v = np.array([r[1]["value"] for r in rows])
            e = np.array([r[1]["error"] for r in rows])
            ax.errorbar(lc, v, yerr=e, xerr=7.5, fmt="o", color="k", ms=3, label="ISGRI")
            if truth is not None:
                tv = [(0.5 * (p["l_lo"] + p["l_hi"]), p["mcrab"].get(b)) for p in truth["profile"]
                      if p["mcrab"].get(b) is not None]
                if tv:
                    ax.plot(*zip(*tv), "b--", lw=1, label="injected")
            if comparison is not None and k == 0:
                cl, cv = comparison
                ci = np.interp(lc, cl, cv)
                scale = float(np.sum(ci * v / e ** 2) / np.sum(ci * ci / e ** 2)) \
                    if np.sum(ci * ci) > 0 else 1.0
                ax.plot(cl, scale * cv, "r-", lw=1.2, label="comparison (scaled)")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_ylabel(f"{b} keV\nmCrab/FOV")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("Galactic longitude (deg)")
    axes[-1, 0].invert_xaxis()
    fig.tight_layout()
    paths.append(out / "longitude_profiles.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Fig. B.8: Crab calibration.
    cal = result.crab
    fig, axes = plt.subplots(len(cols), 1, figsize=(8, 2.4 * len(cols)), sharex=True, squeeze=False)
    rr = np.linspace(min(cal.orbit_revs.min(), model.revs.min()),
                     max(cal.orbit_revs.max(), model.revs.max()), 300)
    curve = cal.rate(rr)
    for ax, j in zip(axes[:, 0], cols):
        ax.plot(cal.orbit_revs, cal.orbit_rate[:, j], "k.", ms=4)
        ax.plot(rr, curve[:, j], "r-")
        ax.set_ylabel(f"Crab {bands[j]}\ncts/s/pix")
    axes[-1, 0].set_xlabel("INTEGRAL revolution")
    fig.tight_layout()
    paths.append(out / "crab_calibration.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    spectral = [isgri.band_name(lo, hi) for lo, hi in isgri.SPECTRAL_BANDS]
    if all(b in bands for b in spectral[:2]):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        present = [b for b in spectral if b in bands]
        for reg in regs:
            rows = [(isgri.band_edges(b), result.regions[reg.name][b]) for b in present]
            rows = [(e, r) for e, r in rows if r["value"] is not None]
            if not rows:
                continue
            e_mid = np.array([math.sqrt(e[0] * e[1]) for e, _ in rows])
            ax.errorbar(e_mid, [r["value"] for _, r in rows], yerr=[r["error"] for _, r in rows],
                        fmt="o", ms=3, label=reg.name)
        ax.set_xscale("log")
        ax.set_xlabel("Energy (keV)")
        ax.set_ylabel("mCrab / FOV")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "region_spectra.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------
# CLI


def _spectrum_figures(spectra: dict, out) -> list:
    """``spectrum_<region>.png`` (paper Figs. 3-4 layout, with the fits) for every fitted
    region spectrum of the results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkgjax.missions.isgri.spectra import plot_ridge_spectrum

    paths = []
    for name, fit in (spectra.get("fits") or {}).items():
        if not isinstance(fit, dict) or "skipped" in fit:
            continue
        fig = plot_ridge_spectrum(fit, title=f"{name}: ridge spectrum")
        paths.append(Path(out) / f"spectrum_{_safe(name)}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def parse_region(text: str) -> isgri.Region:
    """``NAME:L:B:WIDTH:HEIGHT`` (deg) -> :class:`~bkgjax.missions.isgri.instrument.Region`."""
    parts = text.split(":")
    if len(parts) != 5:
        raise ValueError(f"--region {text!r}: expected NAME:L:B:WIDTH:HEIGHT (deg)")
    try:
        lon, lat, width, height = (float(p) for p in parts[1:])
    except ValueError:
        raise ValueError(f"--region {text!r}: L, B, WIDTH, HEIGHT must be numbers (deg)") from None
    return isgri.Region(parts[0], lon, lat, width, height)


def run_isgri_ridge(args) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input)."""
    from bkgjax.io.errors import BkgjaxIOError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = None
    try:
        extra = tuple(parse_region(r) for r in args.region)
        if args.demo:
            from bkgjax.missions.isgri.mission import simulate_mission, write_tables

            print(f"simulating {args.demo_orbits} orbits (seed {args.seed}) ...")
            scw_t, crab_t, truth = simulate_mission(seed=args.seed, n_orbits=args.demo_orbits,
                                                    spectral_bands=args.demo_spectral)
            scw_path, crab_path = write_tables(scw_t, crab_t, out)
            print(f"wrote {scw_path} ({len(scw_t)} ScWs), {crab_path} ({len(crab_t)} Crab ScWs)")
        else:
            if not args.scw or not args.crab:
                print("error: --scw and --crab are required (or --demo)", file=sys.stderr)
                return 2
            scw_path, crab_path = args.scw, args.crab
        scw = read_scw_table(scw_path)
        crab = read_crab_table(crab_path)
        comparison = read_profile(args.compare_profile) if args.compare_profile else None
        options = RidgeOptions(regions=isgri.PAPER_REGIONS + extra, weighted=args.weighted,
                               clip_band=args.clip_band)
        try:
            from tqdm import tqdm

            bar = tqdm(total=6, desc="isgri-ridge", unit="step")
        except ImportError:  # pragma: no cover
            bar = None

        def tick(name):
            if bar is not None:
                bar.set_postfix_str(name)
                bar.update(1)

        result = analyse(scw, crab, options, progress=tick)
        if bar is not None:
            bar.close()
    except (BkgjaxIOError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    payload = results_payload(result, scw_path=str(scw_path), crab_path=str(crab_path))
    if getattr(args, "hierarchical", False):
        print("hierarchical background model (NUTS) ...")
        payload["hierarchical"] = _clean(hierarchical_regions(
            result, max_orbits=args.hier_max_orbits, num_warmup=args.hier_warmup,
            num_samples=args.hier_samples))
    if truth is not None:
        payload["truth"] = _clean({"regions": truth["regions"], "profile": truth["profile"],
                                   "region_spectra": truth["region_spectra"],
                                   "spectrum": truth["spectrum"]})
    with open(out / "results.json", "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    figures = [] if args.no_figures else save_figures(result, out, comparison=comparison,
                                                      truth=truth)
    if not args.no_figures:
        figures += _spectrum_figures(payload.get("spectra") or {}, out)
    bands = result.data.bands
    print(f"{'region':14s} " + " ".join(f"{b + ' keV':>22s}" for b in bands))
    for name, per_band in result.regions.items():
        cells = []
        for b in bands:
            r = per_band[b]
            cells.append(f"{r['value']:9.1f} +- {r['error']:6.1f}  " if r["value"] is not None
                         else f"{'n/a':>22s}")
        print(f"{name:14s} " + " ".join(f"{c:>22s}" for c in cells))
    print(f"wrote {out / 'results.json'} and {len(figures)} figures "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0
