r"""Simulated Chandra ACIS level-2-like event lists of the particle-induced background.

For each CCD the 32 CHIPY-slice templates (Suzuki et al. 2021, Sect. 2.2) give photon spectra
:math:`C_k(E)` (continuum) and :math:`L_k(E)` (lines); the BI CCDs get the hardness
modification :math:`C_k \to C_k (R/R_0)^\alpha` (eq. 3).  Folded through the RMF (ARF = 1) they
give count rates per slice and channel, :math:`\nu_{k i} = \sum_E [C_k h + L_k](E) R_{E i}`,
which are scaled by one factor per CCD so that the whole-CCD rate in the 9.0-11.5 keV channels
equals the requested ``rate`` :math:`R` (counts/s).  Expected counts over the exposure ``T``
are :math:`\mu_{k i} = T R\,\nu_{k i}/\sum_{k, i \in band}\nu_{k i}`; each (slice, channel)
count is Poisson.  Every event gets chipy uniform in its slice's 32 rows, chipx uniform in
1..1024, an energy uniform inside its channel's EBOUNDS (eV), and sky x, y from a schematic
focal-plane layout (:data:`CHIP_CENTRES`, no roll, optional Gaussian dither); the layout is
illustrative, not the real ACIS geometry.

The statistical model of the generator is therefore exactly the simulated one when the
generator's R is the whole-CCD band rate and its alpha equals the simulated alpha.
"""

from __future__ import annotations

import numpy as np

from bkgjax.missions.acis.pback import (
    BAND_KEV,
    CHIPY_ROWS_PER_SLICE,
    band_channels,
    hardness_factor,
)

__all__ = [
    "CHIP_CENTRES",
    "acis_like_grids",
    "expected_slice_counts",
    "gaussian_rmf_matrix",
    "simulate_acis_events",
]

# schematic sky-pixel centres of the chips (ACIS-I 2 x 2 around the aimpoint, ACIS-S row below)
CHIP_CENTRES = {0: (3580.0, 4612.0), 1: (4612.0, 4612.0), 2: (3580.0, 3580.0), 3: (4612.0, 3580.0),
                **{4 + i: (4096.5 + (i - 2.5) * 1040.0, 2530.0) for i in range(6)}}


def acis_like_grids(e_lo=0.2, e_hi=12.5, de=0.01, ch_lo=0.25, ch_hi=12.0, dch=0.05):
    """Photon-energy and channel grids (keV): ``(energ_lo, energ_hi, e_min, e_max)``.

    Defaults: photon bins of 10 eV over 0.2-12.5 keV, channels of 50 eV over 0.25-12.0 keV
    (so that 9.0 and 11.5 keV are channel edges).
    """
    ee = np.round(np.arange(e_lo, e_hi + de / 2, de), 10)
    ce = np.round(np.arange(ch_lo, ch_hi + dch / 2, dch), 10)
    return ee[:-1], ee[1:], ce[:-1], ce[1:]


def gaussian_rmf_matrix(energ_lo, energ_hi, e_min, e_max, fwhm=lambda e: 0.06 + 0.012 * e):
    r"""Gaussian redistribution matrix (n_energy, n_chan): channel probability of a photon at the bin centre.

    ``fwhm(E)`` in keV (default roughly ACIS-FI-like, 0.13 keV at 6 keV).  Probability mass
    outside the channel grid is lost (rows sum to < 1 at the grid ends), as in a real RMF.
    """
    from scipy.special import ndtr

    e = 0.5 * (np.asarray(energ_lo) + np.asarray(energ_hi))
    sigma = np.asarray(fwhm(e)) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    z_hi = (np.asarray(e_max)[None, :] - e[:, None]) / sigma[:, None]
    z_lo = (np.asarray(e_min)[None, :] - e[:, None]) / sigma[:, None]
    m = ndtr(z_hi) - ndtr(z_lo)
    m[m < 1e-12] = 0.0
    return m


def expected_slice_counts(continuum, lines, matrix, band, *, exposure, rate, r0=1.0, alpha=0.0):
    r"""Expected counts per (slice, channel), shape (32, n_chan), whole-CCD band rate ``rate``.

    ``continuum``, ``lines``: (32, n_energy) photon templates; ``band``: bool (n_chan,)
    channels of 9.0-11.5 keV; ``r0``, ``alpha``: hardness modification (alpha = 0 for FI).
    """
    h = float(hardness_factor(rate, r0, alpha))
    nu = (h * np.asarray(continuum) + np.asarray(lines)) @ np.asarray(matrix)
    band_rate = nu[:, band].sum()
    if not band_rate > 0:
        raise ValueError("the templates predict no counts in the 9.0-11.5 keV channels")
    return exposure * rate * nu / band_rate


def simulate_acis_events(seed, *, components, exposure, rate, matrix, energ_lo, energ_hi, e_min, e_max,
                         hardness=None, dither_pixels=0.0):
    r"""Draw a particle-background event list.

    Parameters
    ----------
    seed : int or numpy.random.Generator
    components : mapping ccd -> (continuum, lines)
        Slice templates (32, n_energy) per CCD on the ``energ_lo/energ_hi`` grid, e.g. from
        ``load_template_library(ccd, mode).slice_components(energ_lo, energ_hi)``.
    exposure : float
        s.
    rate : mapping ccd -> float
        Whole-CCD 9.0-11.5 keV count rate (counts/s).
    matrix : array (n_energy, n_chan)
        RMF (ARF = 1).
    hardness : mapping ccd -> (R0, alpha), optional
        Hardness modification per CCD (Table 2 for BI CCDs); absent CCDs get alpha = 0.

    Returns
    -------
    dict
        ``ccd_id, chipx, chipy`` (int64), ``energy`` (eV), ``x, y`` (sky pixels), and
        ``expected`` {ccd: (32, n_chan) expected counts}.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    band = band_channels(e_min, e_max, energ_lo, energ_hi, BAND_KEV, where="simulation grid")
    e_min = np.asarray(e_min, np.float64)
    e_max = np.asarray(e_max, np.float64)
    out = {k: [] for k in ("ccd_id", "chipx", "chipy", "energy", "x", "y")}
    expected = {}
    for ccd in sorted(components):
        cont, lines = components[ccd]
        r0, alpha = (hardness or {}).get(ccd, (1.0, 0.0))
        mu = expected_slice_counts(cont, lines, matrix, band, exposure=exposure, rate=rate[ccd], r0=r0,
                                   alpha=alpha)
        expected[ccd] = mu
        n = rng.poisson(mu)  # (32, n_chan)
        slice_idx, chan_idx = np.nonzero(n)
        reps = n[slice_idx, chan_idx]
        s = np.repeat(slice_idx, reps)
        c = np.repeat(chan_idx, reps)
        total = s.size
        chipy = s * CHIPY_ROWS_PER_SLICE + rng.integers(1, CHIPY_ROWS_PER_SLICE + 1, total)
        chipx = rng.integers(1, 1025, total)
        energy = 1000.0 * (e_min[c] + rng.uniform(0.0, 1.0, total) * (e_max[c] - e_min[c]))
        cx, cy = CHIP_CENTRES[ccd]
        x = cx + (chipx - 512.5) + (rng.normal(0.0, dither_pixels, total) if dither_pixels else 0.0)
        y = cy + (chipy - 512.5) + (rng.normal(0.0, dither_pixels, total) if dither_pixels else 0.0)
        for k, v in (("ccd_id", np.full(total, ccd)), ("chipx", chipx), ("chipy", chipy), ("energy", energy),
                     ("x", x), ("y", y)):
            out[k].append(v)
    events = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
    for k in ("ccd_id", "chipx", "chipy"):
        events[k] = events[k].astype(np.int64)
    events["expected"] = expected
    return events
