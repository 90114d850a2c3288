"""Figures of the NuSTAR stray-light CXB analysis, after Krivonos et al. (2021).

Every function takes the :class:`~bkgjax.missions.nustar_cxb.records.AnalysisResult` returned by
:func:`bkgjax.missions.nustar_cxb.analysis.run_analysis` (or the geometry) and returns a
matplotlib Figure; nothing here switches backends or shows windows (the CLI saves PNG files
with the Agg backend).
"""

from __future__ import annotations

import numpy as np

from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.results import HEAO1_FLUX_3_20, INTEGRAL_FLUX_3_20
from bkgjax.missions.nustar_cxb.spectral_stage import cxb_photons, sci_soft_photons
from bkgjax.stats.intervals import Z_90

__all__ = ["plot_detector_images", "plot_solid_angle_maps", "plot_aperture_spectrum",
           "plot_flux_per_dataset", "save_all"]


def _sqrt_norm(vmin, vmax):
    from matplotlib.colors import PowerNorm

    return PowerNorm(0.5, vmin=vmin, vmax=vmax)


def plot_detector_images(results, *, which="sci"):
    """Fig. 1 (SCI) / Fig. 4 (OCC): stacked 3-20 keV counts per RAW pixel, FPMA and FPMB,
    chips laid out as in Fig. 2 (square-root colour scale, masked pixels blank)."""
    import matplotlib.pyplot as plt

    fpms = sorted({m.fpm for m in results.modules})
    fig, axes = plt.subplots(1, len(fpms), figsize=(5.2 * len(fpms), 4.6), squeeze=False)
    for ax, fpm in zip(axes[0], fpms):
        cubes = [(m.sci_counts if which == "sci" else m.occ_counts) for m in results.modules
                 if m.fpm == fpm]
        cubes = [c for c in cubes if c is not None]
        masks = [bg.mask for m, bg in zip(results.modules, results.backgrounds) if m.fpm == fpm]
        if not cubes:
            ax.set_axis_off()
            continue
        image = np.sum([np.asarray(c).sum(axis=0) for c in cubes], axis=0).astype(float)
        mask = np.all(masks, axis=0)
        image = np.where(mask, image, np.nan)
        mosaic = nustar.to_mosaic(image)
        finite = mosaic[np.isfinite(mosaic)]
        vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (0, 1)
        im = ax.imshow(mosaic, origin="lower", cmap="viridis", norm=_sqrt_norm(vmin, vmax))
        ax.set_title(f"{fpm} {which.upper()} {results.e_lo[0]:.0f}-{results.e_hi[-1]:.0f}"
                     " keV (stacked)")
        ax.set_xlabel("RAW pixel (mosaic x)")
        ax.set_ylabel("RAW pixel (mosaic y)")
        fig.colorbar(im, ax=ax, label="counts per pixel")
    fig.tight_layout()
    return fig


def plot_solid_angle_maps(geometries):
    """Fig. 2: open-sky solid angle per RAW pixel (deg^2) for each module."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(geometries), figsize=(5.2 * len(geometries), 4.6),
                             squeeze=False)
    for ax, geometry in zip(axes[0], geometries):
        omega = np.where(geometry.pixel_mask, geometry.omega, np.nan)
        im = ax.imshow(nustar.to_mosaic(omega), origin="lower", cmap="magma",
                       norm=_sqrt_norm(0.0, 9.0))
        ax.set_title(f"{geometry.fpm}: aperture solid angle")
        for x, y, label in ((48, 60, "DET0"), (16, 60, "DET1"), (16, 2, "DET2"), (48, 2, "DET3")):
            ax.text(x, y, label, color="w", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax, label=r"$\Omega$ (deg$^2$)")
    fig.tight_layout()
    return fig


def plot_aperture_spectrum(results, index=0):
    """Figs. 3/6: aperture spectrum of one data set and module (photons/s/cm^2/keV/deg^2) with
    the fitted CXB + soft model and residuals in sigma."""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    spectrum = results.spectra[index]
    mod, fit = spectrum.module, spectrum.fit
    e_lo, e_hi = results.e_lo, results.e_hi
    width = e_hi - e_lo
    centre = np.sqrt(e_lo * e_hi)
    ch_lo, ch_hi = jnp.asarray(results.bands.ch_lo), jnp.asarray(results.bands.ch_hi)
    response = spectrum.response
    shape = jnp.asarray(results.soft[mod.dataset].shape, jnp.float64)
    cxb = response @ np.asarray(cxb_photons(fit.cxb_norm, 41.13, ch_lo, ch_hi))
    soft = response @ np.asarray(sci_soft_photons(shape, fit.soft_norm, ch_lo, ch_hi,
                                                   results.sci_soft_model))
    y, s = spectrum.bands.n_apt, spectrum.bands.n_apt_err
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.errorbar(centre, y / width, yerr=s / width, xerr=[centre - e_lo, e_hi - centre],
                 fmt="o", ms=3, color="k", label=f"{mod.dataset} {mod.fpm} aperture")
    top.step(np.append(e_lo, e_hi[-1]), np.append((cxb + soft) / width, (cxb + soft)[-1] / width[-1]),
             where="post", color="C3", label="CXB + soft")
    top.step(np.append(e_lo, e_hi[-1]), np.append(cxb / width, cxb[-1] / width[-1]), where="post",
             color="C0", ls="--", label="CXB (Gruber 1999 shape)")
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_ylabel(r"photons s$^{-1}$ cm$^{-2}$ keV$^{-1}$ deg$^{-2}$")
    top.legend(fontsize=8)
    top.set_title(f"F(3-20 keV) = {fit.flux_3_20:.3e} erg/s/cm$^2$/deg$^2$, "
                  rf"$\chi^2$/dof = {fit.chi2:.1f}/{fit.dof}", fontsize=9)
    bottom.axhline(0, color="0.5", lw=0.8)
    safe = np.where(np.isfinite(s) & (s > 0), s, np.nan)  # a band without an error: no point
    bottom.errorbar(centre, (y - cxb - soft) / safe, yerr=1.0, fmt="o", ms=3, color="k")
    bottom.set_ylabel(r"$\Delta/\sigma$")
    bottom.set_xlabel("Energy (keV)")
    fig.tight_layout()
    return fig


def plot_flux_per_dataset(results):
    """Fig. 8: 3-20 keV CXB flux per data set for FPMA (red) and FPMB (blue) with 90 % errors,
    the weighted mean (last position) and the HEAO-1 and INTEGRAL reference levels."""
    import matplotlib.pyplot as plt

    data = results.payload
    names = list(dict.fromkeys(d["name"] for d in data["datasets"]))
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    colors = {"FPMA": "C3", "FPMB": "C0"}
    for entry in data["datasets"]:
        x = names.index(entry["name"]) + 1 + (-0.1 if entry["fpm"] == "FPMA" else 0.1)
        f = entry["flux_3_20"]
        if f["value"] is None:
            continue
        if f["lower90"] is None or f["upper90"] is None:  # undefined error: the value alone
            ax.plot(x, f["value"] / 1e-11, "x", color=colors.get(entry["fpm"], "k"))
            continue
        ax.errorbar(x, f["value"] / 1e-11, yerr=[[(f["value"] - f["lower90"]) / 1e-11],
                                                 [(f["upper90"] - f["value"]) / 1e-11]],
                    fmt="o", color=colors.get(entry["fpm"], "k"))
    for fpm, row in data["combined"]["per_fpm"].items():
        if row["value"] is None or row["err1sigma"] is None:
            continue
        x = len(names) + 1 + (-0.1 if fpm == "FPMA" else 0.1)
        ax.errorbar(x, row["value"] / 1e-11, yerr=Z_90 * row["err1sigma"] / 1e-11, fmt="s",
                    color=colors.get(fpm, "k"), label=f"{fpm}")
    ax.axhline(HEAO1_FLUX_3_20 / 1e-11, ls="--", color="0.4", label="HEAO-1 (Gruber+99)")
    ax.axhline(INTEGRAL_FLUX_3_20 / 1e-11, ls="--", color="C2", label="INTEGRAL (Churazov+07)")
    ax.set_xticks(range(1, len(names) + 2), names + ["mean"], rotation=30, ha="right")
    ax.set_ylabel(r"$F_{3-20\,\mathrm{keV}}$ ($10^{-11}$ erg s$^{-1}$ cm$^{-2}$ deg$^{-2}$)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_all(results, out_dir, geometries):
    """Write the four PNG figures into ``out_dir``; returns the list of paths."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    out = Path(out_dir)
    paths = []
    figures = {
        "detector_images_sci.png": plot_detector_images(results, which="sci"),
        "solid_angle_maps.png": plot_solid_angle_maps(geometries),
        "aperture_spectrum.png": plot_aperture_spectrum(results, 0),
        "flux_per_dataset.png": plot_flux_per_dataset(results),
    }
    if any(m.occ_counts is not None for m in results.modules):
        figures["detector_images_occ.png"] = plot_detector_images(results, which="occ")
    for name, fig in figures.items():
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    return paths
