"""Figures of ``bkgjax simulate-survey``, laid out like Zhao et al. (2021) Figs. 4, 5, 7, 8
and 10 (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["write_figures", "write_hardness_figure"]

_STYLE = {"3-24": ("k", "-"), "3-8": ("k", "--"), "8-24": ("k", "-."), "8-16": ("g", "-"),
          "16-24": ("b", "-")}


def _interval_label(lo, hi):
    return f"> {lo:g} ks" if not np.isfinite(hi) or hi > 1e29 else f"{lo:g}-{hi:g} ks"


def _save(fig, out_dir, name):
    """Lay out, write as PNG (110 dpi) and close one figure; returns its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(per_band: dict, cfg, out_dir: str) -> list:
    """Write fig4_reliability_completeness.png, fig5_sky_coverage.png,
    fig7_separations.png, fig8_flux_comparison.png, fig10_lognlogs.png and
    spurious_check.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkgjax.missions.nustar_survey import calibration as sc

    paths = []
    intervals = list(cfg.exposure_intervals_ks)[::-1]  # deepest on top, as Fig. 4
    # Fig. 4: reliability vs DET_ML (left), completeness vs flux (right) per interval
    fig, axes = plt.subplots(len(intervals), 2, figsize=(10, 3.2 * len(intervals)),
                             squeeze=False)
    grid = np.arange(0.0, 30.0001, 0.25)
    for row, (lo, hi) in enumerate(intervals):
        ax_r, ax_c = axes[row]
        for band, d in per_band.items():
            res = d["results"]
            col, ls = _STYLE.get(band, ("m", ":"))
            curve = sc.reliability_curve(res.det_ml, res.matched, res.det_exposure / 1e3, grid,
                                         (lo, hi), valid=res.det_valid)
            ax_r.plot(grid, curve.reliability, color=col, ls=ls, label=f"{band} keV")
            for lo_i, hi_i, _, comp in d["per"]:
                if lo_i == lo and hi_i == hi:
                    ax_c.plot(comp.flux, comp.completeness, color=col, ls=ls,
                              label=f"{band} keV")
        for level in cfg.reliability_levels:
            ax_r.axhline(level, color="k", ls=":", lw=0.8)
        ax_r.set_xlabel("DET_ML")
        ax_r.set_ylabel("cumulative reliability")
        ax_r.set_ylim(0.5, 1.01)
        ax_r.set_title(_interval_label(lo, hi))
        ax_c.set_xscale("log")
        ax_c.set_xlabel("input band flux [erg cm$^{-2}$ s$^{-1}$]")
        ax_c.set_ylabel("completeness (95 % rel.)")
        ax_c.set_ylim(0, 1.05)
        ax_c.set_title(_interval_label(lo, hi))
    axes[0, 0].legend(fontsize=8)
    paths.append(_save(fig, out_dir, "fig4_reliability_completeness.png"))

    # Fig. 5: sky coverage
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for band, d in per_band.items():
        col, ls = _STYLE.get(band, ("m", ":"))
        cov = d["sim_cov"]
        f50 = sc.flux_limit_at_coverage(cov, 0.5)
        ax.plot(cov.flux, cov.area_deg2, color=col, ls=ls,
                label=f"{band} keV (half area {f50:.3g})")
        ax.plot(d["ana_cov"].flux, d["ana_cov"].area_deg2, color=col, ls=ls, lw=0.6,
                alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("band flux [erg cm$^{-2}$ s$^{-1}$]")
    ax.set_ylabel("sky coverage [deg$^2$]")
    ax.set_title("sky coverage at 95 % reliability (thin: analytic)")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, "fig5_sky_coverage.png"))

    # Fig. 7: input-output separations, first band (3-24 keV if simulated)
    band = "3-24" if "3-24" in per_band else next(iter(per_band))
    d = per_band[band]
    res, sep, rel = d["results"], d["sep"], d["reliable"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(0, 30, 31)
    bright = res.matched_flux > 1e-13
    for mask, col, lab in ((res.matched, "k", "all matched"),
                           (rel, "k", "above 95 % threshold"),
                           (rel & bright, "r", "bright (> 1e-13)"),
                           (rel & ~bright, "g", "faint")):
        s = sep[mask]
        if s.size == 0:
            continue
        ls = "-" if lab == "all matched" else "--"
        ax.hist(s, bins, histtype="step", color=col, ls=ls, label=lab, density=True)
    s = sep[rel & bright]
    if s.size:
        sigma = np.sqrt(np.sum(s**2) / (2 * s.size))
        r = np.linspace(0, 30, 200)
        ax.plot(r, r / sigma**2 * np.exp(-r**2 / (2 * sigma**2)), "r:",
                label=f"Rayleigh sigma = {sigma:.1f}\"")
    ax.set_xlabel("input-output separation [arcsec]")
    ax.set_ylabel("normalised number")
    ax.set_title(f"{band} keV")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, "fig7_separations.png"))

    # Fig. 8: measured vs input flux
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 7), sharex=True)
    expo_ks = res.det_exposure / 1e3
    colours = ("yellow", "orange", "red")
    for (lo, hi), col in zip(cfg.exposure_intervals_ks, colours):
        m = rel & sc.in_interval(expo_ks, (lo, hi))
        ax1.scatter(d["f_in"][m], d["f_meas"][m], s=3, color=col,
                    label=_interval_label(lo, hi))
        ax2.scatter(d["f_in"][m], d["f_meas"][m] / d["f_in"][m], s=3, color=col)
    lim = np.array([1e-15, 1e-12])
    ax1.plot(lim, lim, "k-", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_ylabel(f"measured {band} keV flux")
    ax1.legend(fontsize=8)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel(f"input {band} keV flux [erg cm$^{{-2}}$ s$^{{-1}}$]")
    ax2.set_ylabel("measured / input")
    paths.append(_save(fig, out_dir, "fig8_flux_comparison.png"))

    # Fig. 10: recovered vs input logN-logS
    fig, axes = plt.subplots(len(per_band), 1, figsize=(6, 3.2 * len(per_band)),
                             squeeze=False)
    for ax, (band, d) in zip(axes[:, 0], per_band.items()):
        grid, n_rec, sig, truth = d["lf"]
        ax.fill_between(grid, n_rec - sig, n_rec + sig, color="orange", alpha=0.4,
                        label="recovered (mean), 1 sigma of one catalogue")
        ax.plot(grid, n_rec, color="orange")
        if "lf_measured" in d:
            g2, n2, s2, _ = d["lf_measured"]
            ax.errorbar(g2, n2, yerr=s2, fmt="s", ms=3, color="purple", lw=0.8,
                        label="recovered, coverage vs measured flux (2nd half)")
        ax.plot(grid, truth, "b-.", label="input logN-logS")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("N(>S) [deg$^{-2}$]")
        ax.set_title(f"{band} keV")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("S [erg cm$^{-2}$ s$^{-1}$]")
    paths.append(_save(fig, out_dir, "fig10_lognlogs.png"))

    # spurious counts: measured vs predicted by the reliability curve
    fig, ax = plt.subplots(figsize=(5, 5))
    allv = []
    for band, d in per_band.items():
        rows = d["spur"]
        if not rows:
            continue
        p = np.array([r[3] for r in rows])
        m = np.array([r[4] for r in rows], float)
        col, _ = _STYLE.get(band, ("m", ":"))
        ax.errorbar(p, m, yerr=np.sqrt(np.maximum(m, 1)), fmt="o", ms=3, color=col,
                    label=f"{band} keV")
        allv.extend(p.tolist() + m.tolist())
    if allv:
        lim = [max(0.5, min(allv) / 2), max(allv) * 2]
        ax.plot(lim, lim, "k-", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("spurious predicted (reliability, first half)")
    ax.set_ylabel("spurious measured (second half)")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, "spurious_check.png"))
    return paths


def _column(sources, name):
    if sources is None:
        return None
    names = getattr(sources, "colnames", None) or list(sources)
    return np.asarray(sources[name], dtype=float) if name in names else None


def _power_label(value):
    """1e+24 -> '10$^{24}$ cm$^{-2}$', 3e+24 -> '3 x 10$^{24}$ cm$^{-2}$' (matplotlib)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    prefix = "" if mantissa == "1" else mantissa + r" $\times$ "
    return f"{prefix}10$^{{{int(exponent)}}}$ cm$^{{-2}}$"


def write_hardness_figure(path, tracks, sources=None, compton_tracks=None):
    """Fig. 14 of Zhao et al. (2021) as a PNG at ``path``; returns the path.

    Upper panel: HR (1-sigma interval) of each source against its ID, with the model HR for
    N_H = 1e24 (red) and 1e20 cm^-2 (black) at z = 0 (dashed) and z = 0.734 (dash-dot).
    Lower panel: HR against redshift for the sources with a known redshift (``REDSHIFT``,
    or ``NH_REDSHIFT`` where ``NH_Z_ASSUMED`` is False), and the tracks HR(z) for N_H = 3e24,
    1e24, 5e23, 1e23 and 1e20 cm^-2 (dashed; dotted: ``compton_tracks``, the same with
    Compton scattering).  ``tracks``: :class:`bkgjax.missions.nustar_survey.tracks.HardnessTracks`
    holding those columns and z = 0 and 0.734; ``sources``: a table (or dict) with ``HR``,
    ``HR_LOWER``, ``HR_UPPER`` and optionally ``ID`` and ``CT_CANDIDATE`` (drawn red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkgjax.missions.nustar_survey import tracks as tk

    fig, (ax_id, ax_z) = plt.subplots(2, 1, figsize=(7.5, 10.5))
    hr = _column(sources, "HR")
    if hr is not None and hr.size:
        lower, upper = _column(sources, "HR_LOWER"), _column(sources, "HR_UPPER")
        ids = _column(sources, "ID")
        ids = np.arange(1, hr.size + 1) if ids is None else ids
        ct = _column(sources, "CT_CANDIDATE")
        ct = np.zeros(hr.size, bool) if ct is None else ct.astype(bool)
        err = np.array([hr - lower, upper - hr])
        z = _column(sources, "REDSHIFT")
        if z is None and _column(sources, "NH_Z_ASSUMED") is not None:
            z = np.where(_column(sources, "NH_Z_ASSUMED").astype(bool), np.nan,
                         _column(sources, "NH_REDSHIFT"))
        for mask, colour, label in ((~ct, "tab:blue", "sources"),
                                    (ct, "tab:red", "CT candidates")):
            if mask.any():
                ax_id.errorbar(ids[mask], hr[mask], yerr=err[:, mask], fmt="o", ms=4,
                               color=colour, lw=0.8, capsize=2, label=label)
            known = mask & np.isfinite(z) if z is not None else np.zeros(hr.size, bool)
            if known.any():
                ax_z.errorbar(z[known], hr[known], yerr=err[:, known], fmt="o", ms=4,
                              color=colour, lw=0.8, capsize=2, label=f"{label} with z")
    span = (0.0, 1.0) if hr is None or not hr.size else \
        (float(np.nanmin(ids)) - 1.0, float(np.nanmax(ids)) + 1.0)
    z_median = tk.MEDIAN_REDSHIFT
    for nh, colour in ((1e24, "red"), (1e20, "black")):
        along_z = tracks.track(nh)
        for z_at, ls in ((0.0, "--"), (z_median, "-.")):
            k = int(np.argmin(np.abs(tracks.redshift - z_at)))
            ax_id.hlines(along_z[k], *span, colors=colour, linestyles=ls, lw=1.2,
                         label=f"N$_H$ = {_power_label(nh)}, z = {tracks.redshift[k]:g}")
    ax_id.set_xlim(*span)
    ax_id.set_xlabel("source ID")
    ax_id.set_ylabel("HR = (H - S)/(H + S)")
    ax_id.set_ylim(-1.05, 1.05)
    ax_id.set_title("S = 3-8 keV, H = 8-24 keV count rates")
    ax_id.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)

    colours = ("tab:purple", "tab:red", "tab:orange", "tab:green", "black", "tab:brown")
    for nh, colour in zip(tk.PAPER_TRACK_NH_CM2, colours):
        ax_z.plot(tracks.redshift, tracks.track(nh), ls="--", color=colour,
                  label=f"N$_H$ = {_power_label(nh)}")
        if compton_tracks is not None:
            ax_z.plot(compton_tracks.redshift, compton_tracks.track(nh), ls=":", color=colour,
                      lw=1.0)
    if compton_tracks is not None:
        ax_z.plot([], [], ls=":", color="grey", label="with Compton scattering (cabs)")
    ax_z.set_xlabel("redshift z")
    ax_z.set_ylabel("HR = (H - S)/(H + S)")
    ax_z.set_xlim(float(tracks.redshift.min()), float(tracks.redshift.max()))
    ax_z.set_ylim(-1.05, 1.05)
    ax_z.set_title(f"absorbed power law, $\\Gamma$ = {tracks.gamma:g}, "
                   f"Galactic N$_H$ = {_power_label(tracks.galactic_nh)}")
    ax_z.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    return _save(fig, out_dir, os.path.basename(path))
