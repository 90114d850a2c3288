r"""Chandra ACIS particle-induced background model for a region (the mkacispback procedure).

Suzuki et al. (2021, A&A 665, A116; ``chandra_acis_particle_background.txt``), Sect. 3 and
Fig. 12.  For every CCD ``c`` touched by the region, with the 32 CHIPY-slice templates
(slice ``k`` = CHIPY rows ``32k+1 .. 32k+32``, all CHIPX) of that CCD and data mode:

1. region weights :math:`w_{c,k}` = observed 9.0-11.5 keV counts in the region in slice ``k``;
   template weights :math:`w^T_{c,k}` = the templates' own 9.0-11.5 keV counts (weight map);
2. weighted sum of the slice templates, split in continuum :math:`C` and lines :math:`L`
   (gaussians and frame-store lines):

   .. math:: C_c(E) = \sum_k C_{c,k}(E)\,\frac{w_{c,k}}{w^T_{c,k}},\qquad
             L_c(E) = \sum_k L_{c,k}(E)\,\frac{w_{c,k}}{w^T_{c,k}};

3. hardness modification (eq. 3, Table 2), BI CCDs only (S1 = ccd 5, S3 = ccd 7):
   :math:`C_c \to C_c\,(R_c/R_0)^{\alpha}` with :math:`R_c` the 9.0-11.5 keV count rate of
   the **whole CCD** in counts/s (all events of ``ccd_id = c`` in the band over EXPOSURE,
   independent of the region, as the tool computes it) and :math:`(R_0, \alpha)` from Table 2;
   FI CCDs have :math:`\alpha = 0`;
4. sum over CCDs, fold through the RMF with ARF = 1 (the particles do not pass the mirror):
   :math:`\mu^{(1)}_i = T\sum_c \sum_E [C_c(E) + L_c(E)]\,R_{E i}`;
5. scale :math:`s = N_{9-11.5}/\sum_{i \in \mathrm{band}} \mu^{(1)}_i` so that the predicted
   counts in the 9.0-11.5 keV channels equal the region's observed counts there.

The output :class:`PbackModel` holds per-CCD continuum and line count spectra (already times
``T s``), and :func:`pback_counts` re-evaluates them with free normalisations
:math:`(n_C, n_L)` and free :math:`\alpha` per BI CCD:

.. math:: B_i = T s \sum_c [\,n_C\,C_{c,i}\,(R_c/R_0)^{\alpha_c-\alpha_{c,0}} + n_L\,L_{c,i}\,],

which at :math:`(1, 1, \alpha_0)` is the generated model.  The paper quotes a modelling
accuracy of 5 % (continuum) and 8 % (lines), Sect. 4: prior widths for :math:`n_C, n_L`.
Note that :math:`\alpha` is identifiable from a spectrum only when :math:`R_c \neq R_0`.

Everything here is pure NumPy/JAX on arrays; reading files is :mod:`bkgjax.io`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BAND_EV",
    "BAND_KEV",
    "BI_CCDS",
    "CHIPY_ROWS_PER_SLICE",
    "CONTINUUM_ACCURACY",
    "LINE_ACCURACY",
    "N_SLICES",
    "PbackModel",
    "band_channels",
    "build_pback_model",
    "ccd_photon_model",
    "hardness_factor",
    "pback_counts",
    "slice_counts",
]

BAND_EV = (9000.0, 11500.0)  # weight-map band of the templates (mkacispback WEMIN/WEMAX)
BAND_KEV = (9.0, 11.5)
N_SLICES = 32
CHIPY_ROWS_PER_SLICE = 32
BI_CCDS = (5, 7)
CONTINUUM_ACCURACY = 0.05  # Suzuki et al. 2021, Sect. 4: data/model within 5 % in the continuum
LINE_ACCURACY = 0.08  # ... and 8 % around the lines


def slice_counts(chipy, energy_ev=None, band_ev=BAND_EV) -> np.ndarray:
    """Counts per CHIPY slice (32 slices of 32 rows), optionally only events in ``band_ev`` (eV, inclusive).

    ``chipy`` 1..1024.  Returns int64 array (32,).  This is the mkacispback weight vector
    (``dmcopy [energy=9000:11500]`` then a sum over CHIPX per 32-row slice).
    """
    chipy = np.asarray(chipy)
    keep = np.ones(chipy.shape, bool)
    if energy_ev is not None:
        e = np.asarray(energy_ev, dtype=np.float64)
        keep = (e >= band_ev[0]) & (e <= band_ev[1])
    idx = (chipy[keep].astype(np.int64) - 1) // CHIPY_ROWS_PER_SLICE
    return np.bincount(idx, minlength=N_SLICES).astype(np.int64)


def hardness_factor(rate, r0, alpha):
    r"""Continuum factor :math:`(R/R_0)^\alpha` of eq. (3) (rates in counts/s, whole CCD, 9-11.5 keV)."""
    return jnp.exp(alpha * (jnp.log(rate) - jnp.log(r0)))


def ccd_photon_model(continuum, lines, region_weights, template_weights, hardness=1.0):
    r"""Weighted template sum of one CCD (steps 2-3): returns ``(C, L)`` photon spectra.

    Parameters
    ----------
    continuum, lines : array (32, n_energy)
        Slice templates split into continuum and lines (photons/cm^2/s per bin).
    region_weights, template_weights : array (32,)
        9-11.5 keV counts per slice in the region and in the templates.
    hardness : float
        :math:`(R/R_0)^\alpha` applied to the continuum.

    Returns
    -------
    (C, L) : arrays (n_energy,)
        :math:`\sum_k C_k w_k/w^T_k \times` hardness and :math:`\sum_k L_k w_k/w^T_k`.
    """
    ratio = jnp.asarray(region_weights, jnp.float64) / jnp.asarray(template_weights, jnp.float64)
    return hardness * (ratio @ jnp.asarray(continuum)), ratio @ jnp.asarray(lines)


def band_channels(e_min, e_max, energ_lo, energ_hi, band=BAND_KEV, *, where="RMF") -> np.ndarray:
    """Channels whose EBOUNDS lie inside ``band`` (keV; 1e-6 keV tolerance), after checking coverage.

    Raises
    ------
    ValueError
        The RMF's photon-energy grid or its channel grid does not cover the band (message names
        ``where`` and the grids' ranges), or no channel lies inside it.
    """
    lo, hi = band
    e_min = np.asarray(e_min, np.float64)
    e_max = np.asarray(e_max, np.float64)
    tol = 1e-6
    if np.min(energ_lo) > lo + tol or np.max(energ_hi) < hi - tol:
        raise ValueError(f"{where}: photon energy grid {np.min(energ_lo):g}-{np.max(energ_hi):g} keV does not "
                         f"cover the {lo:g}-{hi:g} keV band that normalises the ACIS particle background")
    if np.min(e_min) > lo + tol or np.max(e_max) < hi - tol:
        raise ValueError(f"{where}: channel grid (EBOUNDS) {np.min(e_min):g}-{np.max(e_max):g} keV does not "
                         f"cover the {lo:g}-{hi:g} keV band that normalises the ACIS particle background")
    mask = (e_min >= lo - tol) & (e_max <= hi + tol)
    if not np.any(mask):
        raise ValueError(f"{where}: no channel lies inside {lo:g}-{hi:g} keV (channels too wide)")
    return mask


@dataclass(frozen=True, eq=False)
class PbackModel:
    r"""Generated particle-background model of one region (count spectra over the exposure).

    Attributes
    ----------
    ccds : tuple of int
        CCDs with region counts in 9-11.5 keV, in increasing order.
    mode : str
        ``"faint"`` or ``"vfaint"``.
    exposure : float
        s.
    continuum, lines : ndarray (n_ccd, n_chan)
        Per-CCD continuum and line counts over the exposure, scaled (step 5), i.e.
        :math:`T s\,C_c R` and :math:`T s\,L_c R`.
    photon_continuum, photon_lines : ndarray (n_ccd, n_energy)
        Unscaled per-CCD photon spectra :math:`C_c`, :math:`L_c` (steps 2-3), photons/cm^2/s.
    region_weights, template_weights : ndarray (n_ccd, 32)
    rate, r0, alpha0 : ndarray (n_ccd,)
        Whole-CCD 9-11.5 keV rate (counts/s), Table-2 :math:`R_0` (1 for FI) and :math:`\alpha`.
    is_bi : ndarray of bool (n_ccd,)
    scale : float
        Step-5 factor :math:`s`.
    band : ndarray of bool (n_chan,)
        Channels inside 9.0-11.5 keV.
    observed_band_counts : int
        Region counts in the band channels (what the model is scaled to).
    e_min, e_max : ndarray (n_chan,)
        Channel energy bounds, keV.
    """

    ccds: tuple
    mode: str
    exposure: float
    continuum: np.ndarray
    lines: np.ndarray
    photon_continuum: np.ndarray
    photon_lines: np.ndarray
    region_weights: np.ndarray
    template_weights: np.ndarray
    rate: np.ndarray
    r0: np.ndarray
    alpha0: np.ndarray
    is_bi: np.ndarray
    scale: float
    band: np.ndarray
    observed_band_counts: int
    e_min: np.ndarray
    e_max: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def total(self) -> np.ndarray:
        """Predicted background counts per channel (all CCDs, continuum + lines)."""
        return self.continuum.sum(axis=0) + self.lines.sum(axis=0)

    def arrays(self) -> dict:
        """The arrays :func:`pback_counts` needs (a pytree of jnp arrays)."""
        return {
            "continuum": jnp.asarray(self.continuum),
            "lines": jnp.asarray(self.lines),
            # FI CCDs have no hardness modification: alpha has no effect on them
            "log_rate_ratio": jnp.asarray(np.where(self.is_bi, np.log(self.rate) - np.log(self.r0), 0.0)),
            "alpha0": jnp.asarray(self.alpha0),
        }


def build_pback_model(*, ccds, mode, continuum, lines, region_weights, template_weights, rate, r0, alpha,
                      matrix, e_min, e_max, energ_lo, energ_hi, observed_band_counts, exposure,
                      where="region") -> PbackModel:
    r"""Steps 2-5 for the CCDs of a region (validated eagerly; see module docstring).

    Parameters
    ----------
    ccds : sequence of int
    mode : str
    continuum, lines : sequence of arrays (32, n_energy)
        Slice templates per CCD on the RMF photon-energy grid (photons/cm^2/s per bin).
    region_weights, template_weights : sequence of arrays (32,)
    rate, r0, alpha : sequence of float
        Whole-CCD 9-11.5 keV rate (counts/s), Table-2 :math:`R_0`, :math:`\alpha` per CCD.
    matrix : array (n_energy, n_chan)
        RMF redistribution matrix (ARF = 1).
    e_min, e_max, energ_lo, energ_hi : arrays
        Channel and photon-energy grids, keV.
    observed_band_counts : int
        Region counts in the band channels.
    exposure : float
        s.

    Raises
    ------
    ValueError
        Shapes inconsistent; a template weight <= 0 where the region has counts; the RMF does
        not cover 9-11.5 keV; the region has no 9-11.5 keV counts; the folded model predicts no
        counts in the band.
    """
    band = band_channels(e_min, e_max, energ_lo, energ_hi, where=where)
    matrix = np.asarray(matrix, np.float64)
    n_e = np.asarray(energ_lo).shape[0]
    if matrix.shape != (n_e, np.asarray(e_min).shape[0]):
        raise ValueError(f"{where}: response matrix shape {matrix.shape} does not match {n_e} energies x "
                         f"{np.asarray(e_min).shape[0]} channels")
    if int(observed_band_counts) <= 0:
        raise ValueError(f"{where}: the region has no counts in the 9.0-11.5 keV channels, so the particle "
                         "background cannot be normalised")
    pc, pl, rw, tw = [], [], [], []
    for c, cont, lin, w, wt, R, R0, a in zip(ccds, continuum, lines, region_weights, template_weights, rate, r0,
                                             alpha):
        cont = np.asarray(cont, np.float64)
        lin = np.asarray(lin, np.float64)
        w = np.asarray(w, np.float64)
        wt = np.asarray(wt, np.float64)
        if cont.shape != (N_SLICES, n_e) or lin.shape != (N_SLICES, n_e):
            raise ValueError(f"{where}: CCD {c} templates have shapes {cont.shape}, {lin.shape}; expected "
                             f"({N_SLICES}, {n_e})")
        if w.shape != (N_SLICES,) or wt.shape != (N_SLICES,) or np.any(w < 0):
            raise ValueError(f"{where}: CCD {c} weights must be ({N_SLICES},) non-negative arrays")
        bad = (w > 0) & ~(wt > 0)
        if np.any(bad):
            raise ValueError(f"{where}: CCD {c} template weight map is <= 0 in slice(s) "
                             f"{list(np.flatnonzero(bad) + 1)} where the region has counts")
        if not (np.isfinite(R) and R > 0 and np.isfinite(R0) and R0 > 0):
            raise ValueError(f"{where}: CCD {c} rate R = {R!r} counts/s and R0 = {R0!r} must be > 0")
        wt_safe = np.where(wt > 0, wt, 1.0)
        h = float(hardness_factor(R, R0, a))
        C, L = ccd_photon_model(cont, lin, w, wt_safe, h)
        pc.append(np.asarray(C))
        pl.append(np.asarray(L))
        rw.append(w)
        tw.append(wt)
    pc, pl = np.array(pc), np.array(pl)
    cont_counts = exposure * (pc @ matrix)
    line_counts = exposure * (pl @ matrix)
    predicted = float(np.sum((cont_counts + line_counts)[:, band]))
    if not predicted > 0:
        raise ValueError(f"{where}: the templates predict no counts in the 9.0-11.5 keV channels")
    scale = int(observed_band_counts) / predicted
    is_bi = np.array([c in BI_CCDS for c in ccds])
    return PbackModel(ccds=tuple(int(c) for c in ccds), mode=str(mode), exposure=float(exposure),
                      continuum=scale * cont_counts, lines=scale * line_counts, photon_continuum=pc,
                      photon_lines=pl, region_weights=np.array(rw), template_weights=np.array(tw),
                      rate=np.asarray(rate, np.float64), r0=np.asarray(r0, np.float64),
                      alpha0=np.asarray(alpha, np.float64), is_bi=is_bi, scale=scale, band=band,
                      observed_band_counts=int(observed_band_counts), e_min=np.asarray(e_min, np.float64),
                      e_max=np.asarray(e_max, np.float64))


@jax.jit
def pback_counts(norm_continuum, norm_lines, alpha, arrays):
    r"""Background counts per channel with free normalisations and hardness slopes (pure, jitted).

    :math:`B_i = \sum_c [\,n_C\,C_{c,i}\,\exp((\alpha_c-\alpha_{c,0})\ln(R_c/R_0)) + n_L\,L_{c,i}\,]`.

    Parameters
    ----------
    norm_continuum, norm_lines : scalar
        :math:`n_C`, :math:`n_L` (1 = generated model).
    alpha : array (n_ccd,)
        Hardness slopes (``arrays["alpha0"]`` are the Table-2 values); entries of FI CCDs have
        no effect (their log rate ratio is set to 0).
    arrays : dict
        :meth:`PbackModel.arrays`.
    """
    factor = jnp.exp((alpha - arrays["alpha0"]) * arrays["log_rate_ratio"])
    return (norm_continuum * (factor @ arrays["continuum"])
            + norm_lines * jnp.sum(arrays["lines"], axis=0))
