r"""``bkgjax acis-pback``: ACIS particle-induced background spectrum for a region (mkacispback in JAX).

Recipe (Suzuki et al. 2021, Sect. 3, Fig. 12; maths in :mod:`bkgjax.missions.acis.pback`):

1. read the level-2 event file and the ds9 region; the region's events are the ones used;
2. per CCD with region events: the region's 9.0-11.5 keV counts per CHIPY slice (weights), the
   whole-CCD 9.0-11.5 keV rate :math:`R` (hardness, BI CCDs), the 32 slice templates of the
   CCD and data mode evaluated on the RMF photon grid (fslines with norm > 1 dropped, as the
   tool does);
3. weighted sum, hardness modification, sum over CCDs, fold through the RMF (ARF = 1), scale
   to the region's observed counts in the 9.0-11.5 keV channels;
4. outputs: an OGIP background PHA, a PNG plot of the model and its components, and the
   :class:`~bkgjax.missions.acis.pback.PbackModel` for joint fits
   (:func:`fit_with_pback`, :mod:`bkgjax.missions.acis.posterior`).

OGIP file.  A model spectrum is not integer, and :func:`bkgjax.io.write_pha` writes Poisson
(integer) spectra, so the file stores ``round(B_i * oversample)`` counts with
``EXPOSURE = T * oversample`` (default ``oversample = 10000``): its rate equals the model rate
to a relative rounding error below :math:`0.5/(B_i \cdot \mathrm{oversample})` per channel, and
a fit that treats it as a measured background sees it as ~noise-free.  BACKSCAL is that of
the source spectrum when given (the background is predicted for the same region), else 1.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bkgjax.missions.acis.events import (
    ChandraEvents,
    EventRegion,
    read_chandra_events,
    read_region,
    region_slice_fractions,
)
from bkgjax.missions.acis.pback import (
    BAND_EV,
    BI_CCDS,
    CONTINUUM_ACCURACY,
    LINE_ACCURACY,
    PbackModel,
    band_channels,
    build_pback_model,
    pback_counts,
    slice_counts,
)

__all__ = [
    "PbackFit",
    "bin_events",
    "fit_with_pback",
    "generate_pback",
    "plot_pback",
    "run_acis_pback",
    "write_pback_pha",
]


def bin_events(energy_ev, e_min, e_max) -> np.ndarray:
    """Counts per channel of events with energies ``energy_ev`` (eV) on the EBOUNDS grid (keV).

    An event belongs to channel ``i`` when ``1000 e_min[i] <= energy < 1000 e_max[i]``; events
    outside every channel are dropped (EBOUNDS are contiguous for ACIS RMFs).
    """
    e = np.asarray(energy_ev, np.float64) / 1000.0
    e_min = np.asarray(e_min, np.float64)
    e_max = np.asarray(e_max, np.float64)
    idx = np.searchsorted(e_min, e, side="right") - 1
    ok = (idx >= 0) & (idx < e_min.size)
    ok[ok] &= e[ok] < e_max[idx[ok]]
    return np.bincount(idx[ok], minlength=e_min.size).astype(np.int64)


def _template_api():
    from bkgjax.missions.acis import templates as acis_templates

    return acis_templates


def generate_pback(events: ChandraEvents, region: EventRegion, rmf, *, mode: str | None = None,
                   templates=None, library: Callable | None = None) -> PbackModel:
    """Generate the particle-background model of ``region`` (steps 1-3 of the module docstring).

    Parameters
    ----------
    events : ChandraEvents
    region : EventRegion
    rmf : bkgjax.io.RMF
        The user's response (its photon grid evaluates the templates, its EBOUNDS define the
        9.0-11.5 keV channels).
    mode : {"faint", "vfaint"}, optional
        Default: from the event file's DATAMODE.
    templates : path, optional
        Template directory (default: ``$BKGJAX_ACIS_TEMPLATES``).
    library : callable (ccd, mode) -> library, optional
        Replaces ``load_template_library(ccd, mode, templates)`` (tests).

    Raises
    ------
    ValueError
        Unknown mode / no mode; region selecting no events; a CCD of the region without
        templates; RMF not covering 9.0-11.5 keV; no 9.0-11.5 keV counts in the region.
    """
    where = f"region {region.path or '<in-memory>'} on {events.path or '<in-memory events>'}"
    api = _template_api()
    modes = tuple(api.MODES)
    mode = events.mode if mode is None else str(mode).lower()
    if mode is None:
        raise ValueError(f"{events.path}: DATAMODE {events.datamode!r} does not say FAINT or VFAINT; "
                         f"give the mode explicitly (one of {modes})")
    if mode not in modes:
        raise ValueError(f"unknown ACIS data mode {mode!r}; the particle-background templates exist for {modes}")
    rmf_where = f"RMF {rmf.path or '<in-memory>'}"
    if rmf.is_full:
        raise ValueError(f"{rmf_where}: HDUCLAS3 = 'FULL' (an RSP with the ARF folded in); the particle "
                         "background does not pass the mirror and needs the RMF alone (ARF = 1)")
    band = band_channels(rmf.e_min, rmf.e_max, rmf.energ_lo, rmf.energ_hi, where=rmf_where)
    mask = region.mask(events)
    if not np.any(mask):
        raise ValueError(f"{where}: the region selects no events (is it outside the ACIS chips?)")
    in_band = (events.energy >= BAND_EV[0]) & (events.energy <= BAND_EV[1])
    ccds = sorted(int(c) for c in np.unique(events.ccd_id[mask & in_band]))
    if not ccds:
        raise ValueError(f"{where}: the region has no 9.0-11.5 keV events, so the particle background "
                         "cannot be weighted")
    no_templates = [c for c in ccds if c not in api.ACIS_CCDS]
    if no_templates:
        raise ValueError(f"{where}: CCD(s) {no_templates} have no particle-background templates "
                         f"(templates exist for CCDs {tuple(api.ACIS_CCDS)})")
    load = library or (lambda ccd, m: api.load_template_library(ccd, m, templates))
    cont, lines, weights, t_weights, rates, r0s, alphas = [], [], [], [], [], [], []
    for c in ccds:
        lib = load(c, mode)
        C, L = lib.slice_components(rmf.energ_lo, rmf.energ_hi, drop_fsline_norm_above=1.0)
        cont.append(np.asarray(C))
        lines.append(np.asarray(L))
        on_chip = events.ccd_id == c
        weights.append(slice_counts(events.chipy[mask & on_chip], events.energy[mask & on_chip]))
        t_weights.append(np.asarray(lib.template_weights, np.float64))
        rates.append(np.count_nonzero(on_chip & in_band) / events.exposure)
        r0, alpha = api.HARDNESS.get((c, mode), (1.0, 0.0))
        if c not in BI_CCDS:
            alpha = 0.0
        r0s.append(float(r0))
        alphas.append(float(alpha))
    spectrum = bin_events(events.energy[mask], rmf.e_min, rmf.e_max)
    model = build_pback_model(ccds=ccds, mode=mode, continuum=cont, lines=lines, region_weights=weights,
                              template_weights=t_weights, rate=rates, r0=r0s, alpha=alphas, matrix=rmf.dense(),
                              e_min=rmf.e_min, e_max=rmf.e_max, energ_lo=rmf.energ_lo, energ_hi=rmf.energ_hi,
                              observed_band_counts=int(spectrum[band].sum()), exposure=events.exposure,
                              where=where)
    # diagnostic: fraction of each CHIPY slice's area inside the region (the weights above are
    # counts, as in mkacispback; the area fractions say how much of each slice they come from)
    fractions = region_slice_fractions(region, events, ccds)
    model.meta.update(region_spectrum=spectrum, events_path=events.path, region_path=region.path,
                      slice_area_fractions=fractions)
    return model


def write_pback_pha(model: PbackModel, path, *, rmf_path=None, backscal=1.0, oversample=10000.0,
                    overwrite=True) -> str:
    """Write the model as an OGIP background PHA (see module docstring for ``oversample``).

    Keywords: EXPOSURE = T * oversample, BACKSCAL, RESPFILE = ``rmf_path``, TELESCOP/INSTRUME
    CHANDRA/ACIS; readable by :func:`bkgjax.io.read_pha` (rate = model counts / T).
    """
    from bkgjax.io import write_pha

    if not (oversample >= 1):
        raise ValueError(f"oversample = {oversample!r} must be >= 1")
    counts = np.round(model.total * oversample)
    return write_pha(path, counts, model.exposure * oversample, backscal=backscal, respfile=rmf_path,
                     telescope="CHANDRA", instrument="ACIS", overwrite=overwrite)


def plot_pback(model: PbackModel, path, *, title=None) -> str:
    """PNG of the model (counts/s/keV per channel): total, data in the region, continuum and lines per CCD."""
    # a bare Figure (no pyplot): works under any backend and leaves the caller's backend alone
    from matplotlib.figure import Figure

    width = model.e_max - model.e_min
    centre = 0.5 * (model.e_max + model.e_min)
    norm = 1.0 / (model.exposure * np.where(width > 0, width, 1.0))
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    data = model.meta.get("region_spectrum")
    if data is not None:
        ax.step(centre, data * norm, where="mid", color="0.6", lw=0.7, label="region events")
    ax.plot(centre, model.total * norm, color="k", lw=1.5, label="particle background model")
    for i, c in enumerate(model.ccds):
        ax.plot(centre, model.continuum[i] * norm, ls="--", lw=1, label=f"ccd{c} continuum")
        ax.plot(centre, model.lines[i] * norm, ls=":", lw=1, label=f"ccd{c} lines")
    ax.axvspan(9.0, 11.5, color="C1", alpha=0.08, label="9.0-11.5 keV (normalisation)")
    ax.set_yscale("log")
    positive = model.total[model.total > 0] * norm[model.total > 0]
    if positive.size:
        ax.set_ylim(positive.min() * 0.3, positive.max() * 3)
    ax.set_xlabel("energy (keV)")
    ax.set_ylabel("counts / s / keV")
    ax.set_title(title or f"ACIS particle background ({model.mode}, CCDs {list(model.ccds)})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = os.path.abspath(os.fspath(path))
    fig.savefig(out, dpi=110)
    return out


# ---------------------------------------------------------------------------
# joint fit: source (powerlaw through ARF x RMF) + particle background (count space)
# ---------------------------------------------------------------------------


class PbackFit(NamedTuple):
    """Result of :func:`fit_with_pback`.

    ``names`` label ``values``/``errors`` (1-sigma from the inverse Hessian of C / 2);
    ``band_counts`` is the fitted background in the 9.0-11.5 keV channels with its error
    (delta method); ``stat`` the C-statistic (plus prior penalty when ``priors``).
    """

    names: tuple
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray
    stat: np.ndarray
    band_counts: np.ndarray
    band_counts_error: np.ndarray
    converged: np.ndarray


def _powerlaw_photons(e_lo, e_hi, log_norm, index):
    from bkgjax.spectral.components import powerlaw_integral

    return jnp.exp(log_norm) * powerlaw_integral(e_lo, e_hi, index)


def fit_with_pback(counts, model: PbackModel, *, source_response=None, energ_lo=None, energ_hi=None,
                   fit_alpha=True, separate_norms=False, priors=False, channel_mask=None,
                   start_source=(-8.0, 2.0), arrays=None) -> PbackFit:
    r"""C-stat fit of counts = [powerlaw source] + particle background with free norm(s) and alpha.

    Background :math:`B_i(n_C, n_L, \alpha)` from :func:`~bkgjax.missions.acis.pback.pback_counts`
    with one common norm :math:`n` (``separate_norms=False``) or :math:`(n_C, n_L)`; alpha free
    for every BI CCD when ``fit_alpha``.  ``source_response`` (n_energy, n_chan) =
    :math:`T\,A_E R_{Ei}` adds a powerlaw (ln K, Gamma; K photons/keV/cm^2/s at 1 keV).
    ``priors`` adds the Gaussian penalty :math:`((n_C-1)/0.05)^2 + ((n_L-1)/0.08)^2` (Suzuki
    et al. 2021, Sect. 4 accuracies) to C.  Minimised with Levenberg-Marquardt on the exact
    Hessian; errors from its inverse (C is -2 ln L, so cov = 2 H^{-1}).

    ``counts`` of shape (n_sims, n_chan) fits every row in one vmapped, jitted call; then
    ``arrays`` may be :meth:`PbackModel.arrays` stacked over the same leading axis (one generated
    model per simulation).  Fields of the result then carry the leading axis.
    """
    from bkgjax.fit import FitStatus, levenberg_marquardt
    from bkgjax.stats import cstat

    counts = jnp.asarray(counts, jnp.float64)
    batched = counts.ndim == 2
    if arrays is None:
        arrays = model.arrays()
    bi = np.flatnonzero(model.is_bi) if fit_alpha else np.zeros(0, int)
    names = (["log_norm_source", "index_source"] if source_response is not None else [])
    names += ["norm_continuum", "norm_lines"] if separate_norms else ["norm"]
    names += [f"alpha_ccd{model.ccds[i]}" for i in bi]
    use = jnp.ones(counts.shape[-1], bool) if channel_mask is None else jnp.asarray(channel_mask)
    band = jnp.asarray(model.band)
    has_src = source_response is not None
    if has_src:
        resp = jnp.asarray(source_response)
        e_lo, e_hi = jnp.asarray(energ_lo), jnp.asarray(energ_hi)

    def unpack(theta, arr):
        k = 2 if has_src else 0
        n_c = theta[k]
        n_l = theta[k + 1] if separate_norms else theta[k]
        k += 2 if separate_norms else 1
        alpha = arr["alpha0"].at[bi].set(theta[k:]) if bi.size else arr["alpha0"]
        return n_c, n_l, alpha

    def background(theta, arr):
        n_c, n_l, alpha = unpack(theta, arr)
        return pback_counts(n_c, n_l, alpha, arr)

    def objective(theta, data, arr):
        mu = background(theta, arr)
        if has_src:
            mu = mu + _powerlaw_photons(e_lo, e_hi, theta[0], theta[1]) @ resp
        c = jnp.sum(jnp.where(use, cstat(mu, data), 0.0))
        if priors:
            n_c, n_l, _ = unpack(theta, arr)
            c = c + ((n_c - 1.0) / CONTINUUM_ACCURACY) ** 2 + ((n_l - 1.0) / LINE_ACCURACY) ** 2
        return c

    def one(data, arr):
        x0 = jnp.concatenate([jnp.asarray(list(start_source) if has_src else [], jnp.float64),
                              jnp.ones(2 if separate_norms else 1), arr["alpha0"][bi]])
        fun = lambda t: objective(t, data, arr)  # noqa: E731
        res = levenberg_marquardt(fun, x0)
        cov = 2.0 * jnp.linalg.inv(jax.hessian(fun)(res.x))
        band_counts = lambda t: jnp.sum(jnp.where(band, background(t, arr), 0.0))  # noqa: E731
        g = jax.grad(band_counts)(res.x)
        return res.x, res.fun, res.status, cov, band_counts(res.x), g @ cov @ g

    if batched:
        batched_arrays = np.ndim(arrays["continuum"]) == 3
        run = jax.jit(jax.vmap(one, in_axes=(0, 0 if batched_arrays else None)))
    else:
        run = jax.jit(one)
    x, f, status, cov, bc, bvar = (np.asarray(v) for v in run(counts, arrays))
    errors = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    return PbackFit(names=tuple(names), values=x, errors=errors, covariance=cov, stat=f, band_counts=bc,
                    band_counts_error=np.sqrt(bvar), converged=status == FitStatus.CONVERGED)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def run_acis_pback(args) -> int:
    """CLI entry point: 0 on success, 2 (message on stderr) for bad input files or arguments."""
    import sys

    from bkgjax.io import BkgjaxIOError, read_rmf

    try:
        events = read_chandra_events(args.events)
        region = read_region(args.region)
        rmf = read_rmf(args.rmf)
        model = generate_pback(events, region, rmf, mode=args.mode, templates=args.templates)
    except (BkgjaxIOError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = write_pback_pha(model, args.out, rmf_path=os.path.abspath(args.rmf), backscal=args.backscal,
                          oversample=args.oversample)
    plot = args.plot or (os.path.splitext(args.out)[0] + ".png")
    plot_pback(model, plot)
    print(f"acis-pback: mode {model.mode}, CCDs {list(model.ccds)}, exposure {model.exposure:.1f} s")
    for i, c in enumerate(model.ccds):
        print(f"  ccd{c}: region 9-11.5 keV weights sum {int(model.region_weights[i].sum())}, whole-CCD rate "
              f"{model.rate[i]:.4g} cts/s, R0 {model.r0[i]:.3g}, alpha {model.alpha0[i]:.3g}")
    print(f"  scaled to {model.observed_band_counts} counts in 9.0-11.5 keV (scale {model.scale:.4g}); "
          f"total predicted {model.total.sum():.1f} counts")
    print(f"wrote {out}\nwrote {plot}")
    return 0
