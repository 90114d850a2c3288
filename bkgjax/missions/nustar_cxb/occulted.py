r"""The NuSTAR pixel model on real Earth-occulted (OCC) detector images.

Krivonos et al. (2021, nustar_cxb_stray_light.txt, section 4) find that OCC images below
~5 keV carry a spatial gradient shaped like the aperture (stray-light) solid angle and fit them
with the same pixel model as the on-sky data, eq. (2)-(3):

.. math:: \mu_p = N_{\mathrm{bkg},c} + N_\mathrm{apt}\,\bar A_{c}\,a\,\Omega_p ,

one flat normalisation :math:`N_{\mathrm{bkg},c}` per chip :math:`c` plus the aperture
template (:func:`bkgjax.missions.nustar_cxb.pixel_model.pixel_templates` with ``flat=None``;
:math:`\bar A_c` the CXB-weighted detector x Be-window efficiency over the band, which only
sets the small chip-to-chip relative weights of the aperture template).

This module tests that component on a real OCC image: H0 = four per-chip flat normalisations
(K = 4), H1 = H0 + aperture template (K = 5).  It reports :math:`N_\mathrm{apt}` with its
Hessian error, the likelihood-ratio statistic :math:`TS = 2(\ln L_1 - \ln L_0)` and its
one-sided significance (:math:`N_\mathrm{apt} > 0`; by Wilks' theorem :math:`TS \sim \chi^2_1`
under H0 and :math:`Z = \mathrm{sign}(N_\mathrm{apt})\sqrt{TS}`), the fraction of counts the
aperture component carries, the Cash deviance per pixel and its parametric-bootstrap
goodness-of-fit p-value (:func:`bkgjax.fit.templates.deviance_pvalue`) for H1 and H0.

Two diagnostics guard against reading pixel-level systematics as an aperture signal:

* ``overdispersion`` :math:`\phi = C_1 / (n_\mathrm{pix} - 5)`; a Poisson model that fits has
  :math:`\phi \approx 1`.  ``sigma_scaled`` :math:`= \mathrm{sign}\sqrt{TS/\phi}` is the
  quasi-likelihood significance, which stays honest when the pixel scatter exceeds Poisson.
* ``ts_mirrored_max``: the largest TS obtained with the aperture map transposed, flipped in
  RAWX or flipped in RAWY on every chip (wrong geometries).  An aperture gradient that is really
  there gives a TS well above these controls.  (A 180-degree rotation is not a control: for a
  near-linear ramp it equals a constant minus the ramp, which the chip flats absorb.)

Exposure: the files' EXPOSURE sums over-count the occulted time, so the templates use
exposure = 1 and only relative normalisations (chip factors, aperture fraction, significance)
are meaningful; :math:`N_\mathrm{apt}` is in counts cm^-2 deg^-2 per image (arbitrary scale).

Masks: pixels in the CALDB pixel map, with non-zero counts (zeros are dead/bad pixels in these
images), and optionally without the outer row and column of each chip (``mask_chip_edges``;
same definition as :func:`bkgjax.missions.nustar_cxb.pixel_model.pixel_mask`), which are hotter in the
real data.
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats

from bkgjax.fit.templates import deviance_pvalue, fit_templates
from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.occulted_images import read_occulted_images
from bkgjax.missions.nustar_cxb.pixel_model import pixel_mask, pixel_templates
from bkgjax.missions.nustar_cxb.responses import chip_efficiency

__all__ = [
    "ENERGY_SELECTIONS",
    "occulted_mask",
    "occulted_templates",
    "aperture_likelihood_ratio",
    "analyse_occulted_image",
    "analyse_all",
    "format_table",
]

#: file-name tag -> band (keV) whose efficiency weights the aperture template.  "All energies"
#: uses 79 keV as upper edge (the end of the NuSTAR band; the transmission is ~flat there).
ENERGY_SELECTIONS = {"pi_below_10keV": (1.6, 10.0), "all_energies": (1.6, 79.0)}

_FPM_KEYS = {"FPMA": "A", "FPMB": "B"}


def occulted_mask(geometry, counts, mask_chip_edges=False):
    """Pixels used: in the pixel map, counts > 0 (zeros are dead/bad), optionally no chip edges."""
    counts = np.asarray(counts)
    return pixel_mask(geometry, [], mask_chip_edges) & (counts > 0)


def occulted_templates(geometry, band=(1.6, 10.0)):
    """[5, 4, 32, 32] templates at exposure 1: four per-chip flats, then the aperture map."""
    lo, hi = float(band[0]), float(band[1])
    eff = chip_efficiency(geometry, np.array([lo]), np.array([hi]))
    return np.asarray(pixel_templates(geometry, eff, 1.0)[0], dtype=np.float64)


def aperture_likelihood_ratio(counts, templates, mask):
    r"""H1 (all K templates) vs H0 (last template dropped) on one image; pure JAX, vmappable.

    Returns a dict of arrays: ``ts`` (:math:`2(\ln L_1-\ln L_0)`, clipped at 0), ``n_apt``,
    ``n_apt_err`` (Hessian), ``aperture_fraction`` (aperture counts / model counts on the mask),
    ``cstat1``, ``cstat0``, ``n_pixels``, ``theta1``, ``theta0``, ``converged``.
    """
    counts = jnp.asarray(counts, jnp.float64)
    templates = jnp.asarray(templates, jnp.float64)
    mask = jnp.asarray(mask, bool)
    fit1 = fit_templates(counts, templates, mask)
    fit0 = fit_templates(counts, templates[:-1], mask)
    w = mask.astype(jnp.float64)
    mu1 = jnp.tensordot(fit1.theta, templates, axes=1)
    apt = fit1.theta[-1] * jnp.sum(templates[-1] * w)
    return {
        "ts": jnp.maximum(2.0 * (fit1.loglike - fit0.loglike), 0.0),
        "n_apt": fit1.theta[-1],
        "n_apt_err": jnp.sqrt(jnp.maximum(fit1.covariance[-1, -1], 0.0)),
        "aperture_fraction": apt / jnp.sum(mu1 * w),
        "cstat1": fit1.cstat,
        "cstat0": fit0.cstat,
        "n_pixels": fit1.n_pixels,
        "theta1": fit1.theta,
        "theta0": fit0.theta,
        "converged": fit1.converged & fit0.converged,
        "_fit1": fit1,
        "_fit0": fit0,
    }


_lr_jit = jax.jit(aperture_likelihood_ratio)


@jax.jit
def _mirrored_ts(counts, templates, mask):
    aperture = templates[-1]
    variants = jnp.stack([jnp.swapaxes(aperture, -1, -2), aperture[:, :, ::-1],
                          aperture[:, ::-1, :]])

    def one(a):
        return aperture_likelihood_ratio(counts, templates.at[-1].set(a), mask)["ts"]

    return jax.vmap(one)(variants)


@partial(jax.jit, static_argnames=("n_sims",))
def _gof(key, fit, templates, mask, n_sims):
    return deviance_pvalue(key, fit, templates, mask, n_sims)


def _significance(ts, n_apt):
    """One-sided (N_apt > 0) p-value, its log10 and Z in sigma, via scipy chi2 / norm."""
    z = math.copysign(math.sqrt(max(ts, 0.0)), n_apt)
    half = 0.5 * float(stats.chi2.sf(ts, 1))          # P(chi2_1 >= TS) / 2
    p = half if z > 0 else 1.0 - half
    log10_p = float(special.log_ndtr(-z)) / math.log(10.0)  # exact also where p underflows
    sigma = float(stats.norm.isf(p)) if 0.0 < p < 1.0 else z
    return z, p, log10_p, sigma


def _relative(values):
    """``values / mean(values)`` as a list (NaN where the mean is 0 or undefined)."""
    values = np.asarray(values, float)
    mean = float(values.mean())
    if not (math.isfinite(mean) and mean != 0.0):
        return [float("nan")] * values.size
    return (values / mean).tolist()


def analyse_occulted_image(counts, fpm, *, band=(1.6, 10.0), mask_chip_edges=False, n_sims=200,
                           seed=0, key=None) -> dict:
    """Aperture component and goodness of fit of the pixel model on one OCC image.

    Parameters
    ----------
    counts : int array [4, 32, 32] (``[DET_ID, RAWY, RAWX]``; zeros = dead pixels).
    fpm : "FPMA" / "FPMB" (or "A" / "B").
    band : (lo, hi) keV over which the aperture template's chip efficiencies are averaged
        ((1.6, 10) for PI < 10 keV images, (1.6, 79) for all energies).
    mask_chip_edges : exclude the outer row and column of every chip.
    n_sims : parametric-bootstrap replicas for each goodness-of-fit p-value (0: skip).
    seed / key : random seed (or a JAX key, which takes precedence).

    Returns
    -------
    dict of plain floats / lists (JSON-ready); see the module docstring for the quantities.
    """
    geometry = nustar.load_geometry(fpm)
    counts = np.asarray(counts)
    if counts.shape != (4, 32, 32):
        raise ValueError(f"counts must have shape (4, 32, 32), got {counts.shape}")
    mask = occulted_mask(geometry, counts, mask_chip_edges)
    if not mask.any():
        raise ValueError(f"{geometry.fpm} OCC image: no pixel with counts (all dead or masked)")
    templates = occulted_templates(geometry, band)
    c, t, m = jnp.asarray(counts, jnp.float64), jnp.asarray(templates), jnp.asarray(mask)
    res = _lr_jit(c, t, m)
    ts = float(res["ts"])
    n_apt, n_apt_err = float(res["n_apt"]), float(res["n_apt_err"])
    n_pix = int(res["n_pixels"])
    z, p, log10_p, sigma = _significance(ts, n_apt)
    cstat1, cstat0 = float(res["cstat1"]), float(res["cstat0"])
    phi = cstat1 / max(n_pix - templates.shape[0], 1)
    theta1, theta0 = np.asarray(res["theta1"]), np.asarray(res["theta0"])
    out = {
        "fpm": geometry.fpm,
        "band_kev": [float(band[0]), float(band[1])],
        "mask_chip_edges": bool(mask_chip_edges),
        "n_pixels": n_pix,
        "n_dead": int(np.count_nonzero(geometry.pixel_mask & (counts == 0))),
        "counts_fitted": int(np.sum(counts[mask])),
        "n_apt": n_apt,
        "n_apt_err": n_apt_err,
        "n_apt_over_err": n_apt / n_apt_err if n_apt_err > 0 else float("nan"),
        "ts": ts,
        "sigma_sqrt_ts": z,
        "p_one_sided": p,
        "log10_p_one_sided": log10_p,
        "sigma": sigma,
        "overdispersion": phi,
        "sigma_scaled": math.copysign(math.sqrt(ts / phi), n_apt) if phi > 0 else float("nan"),
        "ts_mirrored_max": float(np.max(np.asarray(_mirrored_ts(c, t, m)))),
        "aperture_fraction": float(res["aperture_fraction"]),
        "cstat_h1": cstat1,
        "cstat_h0": cstat0,
        "cstat_per_pixel_h1": cstat1 / n_pix if n_pix > 0 else float("nan"),
        "cstat_per_pixel_h0": cstat0 / n_pix if n_pix > 0 else float("nan"),
        "chip_factors_h1": _relative(theta1[:4]),
        "chip_factors_h0": _relative(theta0),
        "converged": bool(res["converged"]),
        "n_sims": int(n_sims),
    }
    if n_sims > 0:
        key = jax.random.PRNGKey(seed) if key is None else key
        k1, k0 = jax.random.split(key)
        for label, k, fit, tt in (("h1", k1, res["_fit1"], t), ("h0", k0, res["_fit0"], t[:-1])):
            pval, sims = _gof(k, fit, tt, m, int(n_sims))
            sims = np.asarray(sims)
            out[f"gof_p_{label}"] = float(pval)
            out[f"cstat_sim_mean_{label}"] = float(sims.mean())
            out[f"cstat_sim_std_{label}"] = float(sims.std(ddof=1))
    return out


def _epoch_files(occulted_dir):
    pattern = re.compile(r"epoch(\d+)_(" + "|".join(ENERGY_SELECTIONS) + r")\.npz$")
    found = {}
    for path in Path(occulted_dir).iterdir():
        match = pattern.match(path.name)
        if match:
            found[(int(match.group(1)), match.group(2))] = path
    return found


def analyse_all(occulted_dir, *, n_sims=200, seed=0, epochs=None,
                selections=tuple(ENERGY_SELECTIONS), fpms=nustar.FPMS,
                edges=(False, True)) -> list:
    """Run :func:`analyse_occulted_image` on every ``epochN_<selection>.npz`` of a folder.

    One row per epoch x energy selection x FPM x chip-edge masking (row dicts carry ``epoch``,
    ``selection``, ``file`` and the exposure besides the analysis results).  Each row gets its
    own random stream (``fold_in(PRNGKey(seed), row index)``).
    """
    files = _epoch_files(occulted_dir)
    if not files:
        raise FileNotFoundError(f"no epochN_<selection>.npz files in {occulted_dir}")
    all_epochs = sorted({e for e, _ in files})
    epochs = all_epochs if epochs is None else list(epochs)
    base = jax.random.PRNGKey(seed)
    rows = []
    for epoch in epochs:
        for selection in selections:
            path = files.get((epoch, selection))
            if path is None:
                continue
            data = read_occulted_images(path)
            for fpm in fpms:
                letter = _FPM_KEYS[nustar.load_geometry(fpm).fpm]
                for edge in edges:
                    row = {"epoch": epoch, "selection": selection, "file": path.name,
                           "exposure_s": data[f"exposure_s_{letter}"]}
                    row.update(analyse_occulted_image(
                        data[f"counts_{letter}"], fpm, band=ENERGY_SELECTIONS[selection],
                        mask_chip_edges=edge, n_sims=n_sims,
                        key=jax.random.fold_in(base, len(rows))))
                    rows.append(row)
    return rows


def _fmt_p(p, n_sims):
    if p is None:
        return "-"
    if p == 0.0 and n_sims:
        return f"<{1.0 / n_sims:.3g}"
    return f"{p:.3g}"


def format_table(rows) -> str:
    """Markdown table of :func:`analyse_all` rows."""
    head = ("| epoch | E | FPM | edges | N_apt/err | TS | Z (sigma) | Z/sqrt(phi) | TS mirrored "
            "| apt. frac | C/npix H1 | C/npix H0 | GoF p H1 | GoF p H0 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sel = {"pi_below_10keV": "<10 keV", "all_energies": "all"}.get(r.get("selection"),
                                                                       r.get("selection", "-"))
        n = r.get("n_sims", 0)
        lines.append(
            f"| {r.get('epoch', '-')} | {sel} | {r['fpm']} "
            f"| {'masked' if r['mask_chip_edges'] else 'kept'} "
            f"| {r['n_apt_over_err']:.1f} | {r['ts']:.1f} | {r['sigma']:.1f} "
            f"| {r['sigma_scaled']:.1f} | {r['ts_mirrored_max']:.1f} "
            f"| {r['aperture_fraction']:.3f} | {r['cstat_per_pixel_h1']:.2f} "
            f"| {r['cstat_per_pixel_h0']:.2f} | {_fmt_p(r.get('gof_p_h1'), n)} "
            f"| {_fmt_p(r.get('gof_p_h0'), n)} |")
    return "\n".join(lines)
