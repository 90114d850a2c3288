"""Matplotlib figures of fits: counts spectrum with model (and posterior band) and residuals."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_fit", "plot_joint_fit", "display_groups"]


def display_groups(counts, min_counts=15):
    """Group index per bin so that each group holds >= ``min_counts`` (display only, like
    XSPEC ``setplot rebin``; the last group absorbs a short tail)."""
    groups = np.zeros(len(counts), dtype=int)
    current, total = 0, 0.0
    for i, c in enumerate(counts):
        groups[i] = current
        total += c
        if total >= min_counts:
            current, total = current + 1, 0.0
    if total < min_counts and current > 0:
        groups[groups == current] = current - 1
    return groups


def plot_fit(result, data, idata=None, min_counts=15):
    """Counts per keV per second with the best-fit model, the 90 % band of the posterior model
    counts (if ``idata`` is given) and residuals (data - model)/sqrt(model), with adjacent
    channels grouped to >= ``min_counts`` counts *for display only*.  Returns the figure."""
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from .fit.dataset import predicted_counts

    theta = jnp.asarray([result.values[n] for n in result.model.names])
    mu_bins = np.asarray(predicted_counts(result.model.structure, theta, data))
    counts_bins = np.asarray(data.counts)
    groups = display_groups(counts_bins, min_counts)
    n_groups = groups.max() + 1
    total = lambda x: np.bincount(groups, weights=x, minlength=n_groups)  # noqa: E731
    counts, mu = total(counts_bins), total(mu_bins)
    lo = np.array([np.asarray(data.bin_lo)[groups == g].min() for g in range(n_groups)])
    hi = np.array([np.asarray(data.bin_hi)[groups == g].max() for g in range(n_groups)])
    width = hi - lo
    centre = np.sqrt(lo * hi)
    norm = 1.0 / (width * float(data.exposure))
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5.5),
                                      gridspec_kw={"height_ratios": [3, 1]})
    err = np.sqrt(np.maximum(counts, 1.0))
    top.errorbar(centre, counts * norm, yerr=err * norm, xerr=[centre - lo, hi - centre],
                 fmt="o", ms=2.5, color="k", ecolor="0.3", lw=0.8,
                 label=f"data (>= {min_counts} counts per point)")
    edges = np.append(lo, hi[-1])
    top.stairs(mu * norm, edges, color="C3", lw=1.4, label=f"{result.model} ({result.stat})")
    if idata is not None and "model_counts" in idata.posterior:
        draws = np.asarray(idata.posterior["model_counts"]).reshape(-1, mu_bins.size)
        grouped = np.stack([np.bincount(groups, weights=d, minlength=n_groups)
                            for d in draws[:: max(1, len(draws) // 400)]])
        band = np.percentile(grouped, [5, 95], axis=0)
        top.stairs(band[1] * norm, edges, baseline=band[0] * norm, fill=True, color="C0",
                   alpha=0.35, label="NUTS 90 % model band")
    top.set_yscale("log")
    top.set_ylabel("counts s$^{-1}$ keV$^{-1}$")
    top.set_title(f"{data.name.split('/')[-1]}")
    top.legend(fontsize=8)
    residual = (counts - mu) / np.sqrt(np.maximum(mu, 1e-12))
    bottom.errorbar(centre, residual, yerr=err / np.sqrt(np.maximum(mu, 1e-12)),
                    xerr=[centre - lo, hi - centre], fmt="o", ms=2.5, color="k",
                    ecolor="0.3", lw=0.8)
    bottom.axhline(0, color="C3", lw=0.8)
    bottom.set_xscale("log")
    bottom.set_xlabel("energy (keV)")
    bottom.set_ylabel("(data - model) / $\\sqrt{\\rm model}$")
    fig.tight_layout()
    return fig


def _grouped_sum(groups, values):
    return np.bincount(groups, weights=values, minlength=groups.max() + 1)


def plot_joint_fit(result, datasets, *, view="counts", residuals="delchi", min_counts=15):
    """Data, model and residuals of every data set of a (joint) fit in one figure.

    ``view``: ``"counts"`` (counts/s/keV, folded), ``"unfolded"`` (photons/cm^2/s/keV: data
    times the model's flux-to-counts ratio per bin, XSPEC ``eufspec`` style) or ``"nufnu"``
    (keV^2 photons/cm^2/s/keV, i.e. :math:`E^2 N(E)`).  ``residuals``: ``"delchi"`` ((data -
    model)/error) or ``"ratio"`` (data/model).  With a background model the background
    spectrum and its model are drawn too (grey), and the background's part of the source
    model dashed.  Bins are grouped to >= ``min_counts`` counts for display only; frozen and
    linked parameters are listed under the title.  Returns the figure.
    """
    import jax.numpy as jnp
    import matplotlib.pyplot as plt

    from .fit.joint import as_joint, joint_predicted

    if view not in ("counts", "unfolded", "nufnu"):
        raise ValueError(f"view must be 'counts', 'unfolded' or 'nufnu', got {view!r}")
    if residuals not in ("delchi", "ratio"):
        raise ValueError(f"residuals must be 'delchi' or 'ratio', got {residuals!r}")
    model, datasets = as_joint(result.model, datasets)
    theta = jnp.asarray([result.values[n] for n in model.names])
    predicted = joint_predicted(model.structure, theta, datasets)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7.5, 6),
                                      gridspec_kw={"height_ratios": [3, 1.2]})
    for k, (data, entry) in enumerate(zip(datasets, predicted), start=1):
        colour = f"C{(k - 1) % 10}"
        counts_bins = np.asarray(data.counts)
        groups = display_groups(counts_bins, min_counts)
        n_groups = groups.max() + 1
        bin_lo, bin_hi = np.asarray(data.bin_lo), np.asarray(data.bin_hi)
        lo = np.array([bin_lo[groups == g].min() for g in range(n_groups)])
        hi = np.array([bin_hi[groups == g].max() for g in range(n_groups)])
        width, centre = hi - lo, np.sqrt(lo * hi)
        counts = _grouped_sum(groups, counts_bins)
        mu = _grouped_sum(groups, np.asarray(entry["source"]))
        err = np.sqrt(np.maximum(counts, 1.0))
        scale = 1.0 / (width * float(data.exposure))      # counts -> counts/s/keV
        ylabel = "counts s$^{-1}$ keV$^{-1}$"
        if view != "counts":
            # model flux in each display bin over the model's counts there (XSPEC unfolding)
            sub = model.dataset_model(k, result.values)
            flux = np.asarray(sub.evaluate({}, jnp.asarray(lo), jnp.asarray(hi)))
            source_mu = mu if model.background is None else \
                _grouped_sum(groups, np.asarray(entry["source_model"]))
            scale = np.where(source_mu > 0, flux / np.maximum(source_mu, 1e-300), 0.0) / width
            # unfolded views show the source alone: the background model's part is removed
            counts, mu = counts - (mu - source_mu), source_mu
            ylabel = "photons cm$^{-2}$ s$^{-1}$ keV$^{-1}$"
            if view == "nufnu":
                scale = scale * centre ** 2
                ylabel = "keV$^2$ photons cm$^{-2}$ s$^{-1}$ keV$^{-1}$"
        name = data.name.split("/")[-1]
        top.errorbar(centre, counts * scale, yerr=err * scale, xerr=[centre - lo, hi - centre],
                     fmt="o", ms=2.5, color=colour, lw=0.8, label=f"{k}: {name}")
        edges = np.append(lo, hi[-1])
        # stairs end at the last bin edge (no drop to zero at the ends)
        top.stairs(mu * scale, edges, color=colour, lw=1.3, baseline=None)
        if model.background is not None and view == "counts":
            part = _grouped_sum(groups, np.asarray(entry["source_background"]))
            top.stairs(part * scale, edges, color=colour, lw=1.0, ls="--", baseline=None,
                       label=f"{k}: background model in the source region")
            # the background spectrum has its own display groups (it has far fewer counts)
            bkg_bins = np.asarray(data.background_counts)
            g_b = display_groups(bkg_bins, min_counts)
            lo_b = np.array([bin_lo[g_b == g].min() for g in range(g_b.max() + 1)])
            hi_b = np.array([bin_hi[g_b == g].max() for g in range(g_b.max() + 1)])
            bkg = _grouped_sum(g_b, bkg_bins)
            mu_b = _grouped_sum(g_b, np.asarray(entry["background"]))
            scale_b = 1.0 / ((hi_b - lo_b) * float(data.background_exposure))
            centre_b = np.sqrt(lo_b * hi_b)
            top.errorbar(centre_b, bkg * scale_b, yerr=np.sqrt(np.maximum(bkg, 1.0)) * scale_b,
                         xerr=[centre_b - lo_b, hi_b - centre_b], fmt="s", ms=2,
                         color=colour, alpha=0.45, lw=0.6, label=f"{k}: background spectrum")
            top.stairs(mu_b * scale_b, np.append(lo_b, hi_b[-1]), color=colour, alpha=0.6,
                       lw=1.0, ls=":", baseline=None, label=f"{k}: background model")
        if residuals == "delchi":
            res, res_err = (counts - mu) / err, np.ones_like(err)
        else:
            res = counts / np.maximum(mu, 1e-300)
            res_err = err / np.maximum(mu, 1e-300)
        bottom.errorbar(centre, res, yerr=res_err, xerr=[centre - lo, hi - centre], fmt="o",
                        ms=2.5, color=colour, lw=0.8)
    bottom.axhline(0.0 if residuals == "delchi" else 1.0, color="k", lw=0.8)
    top.set_yscale("log")
    top.set_ylabel(ylabel)
    display = model.display_names()
    fixed = [f"{display[p.name]}={result.values[p.name]:.4g}" + ("" if p.frozen else
                                                                  f" (={display.get(p.link, p.link)})")
             for p in model.parameters if not p.is_free]
    title = f"{model} ({result.stat} {result.stat_value:.1f} / {result.dof} dof)"
    if fixed:
        title += "\nfixed: " + ", ".join(fixed[:6]) + (" ..." if len(fixed) > 6 else "")
    top.set_title(title, fontsize=9)
    top.legend(fontsize=7)
    bottom.set_xscale("log")
    from matplotlib.ticker import LogFormatter

    bottom.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1)))
    bottom.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 1)))
    bottom.set_xlabel("energy (keV)")
    bottom.set_ylabel("(data - model) / error" if residuals == "delchi" else "data / model")
    fig.tight_layout()
    return fig
