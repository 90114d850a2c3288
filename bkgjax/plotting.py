"""Matplotlib figures of fits: counts spectrum with model (and posterior band) and residuals."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_fit", "display_groups"]


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
