"""Simulated INTEGRAL/IBIS-ISGRI missions: the ScW table and the Crab table of the
``bkgjax isgri-ridge`` input contract (issue 5), with the truth needed to test the pipeline.

What is simulated (all numbers are per ISGRI pixel, cts/s/pix, like the paper's rates):

* Orbits (revolutions) 70-2740 (May 2003 - early 2024, Section 2); ``n_orbits`` of them drawn
  without replacement and sorted, so a small test mission still spans the whole 20 years.
  MJD = 52760 + 2.8 d (REV - 70) + 2.8 d PHASE.
* Pointing patterns (Appendix A: "typical INTEGRAL observational programs are mainly
  concentrated within the Galactic plane without high-latitude background measurements"):
  ``"highlat"`` orbits (only BKG ScWs: extragalactic fields, the 3C 273/Coma deep field),
  ``"mixed"`` orbits (a block of 4-16 consecutive BKG ScWs plus Galactic fields, so some have
  N_BKG >= 10 with a phase span below 0.4) and ``"galactic"`` orbits (Galactic fields only, or
  with 1-2 BKG ScWs).  Each field is a block of consecutive ScWs on the 5 x 5 dither pattern
  with 2 deg steps.  Galactic fields cluster on the Galactic centre and along the plane.
* Detector background per band: b(E) = 0.0228 / E cts/s/pix/keV integrated over the band
  (0.020 cts/s/pix in 25-60 keV), times the solar-cycle modulation
  1 + 0.12 cos(2 pi (MJD - 54800) / 11 yr) (two humps over 20 years, maxima at the solar minima
  2008.9 and 2019.9, Fig. A.5), times (1 + delta_orbit) with a small orbit jitter
  (3e-4 relative), times (1 + a_orbit (PHASE - 0.5)) with a relative phase slope that evolves
  slowly with the orbit geometry, a_orbit = -0.004 + 0.003 sin(2 pi REV / 350 + phi0) plus
  N(0, 0.001) per orbit.
* Outlier orbits (Appendix A "step-like behaviour"): a fraction of the Galactic-only orbits gets
  a background step of +-(1-3) % in every band.  Transient orbits (a bright source in outburst):
  a relative slope +0.15 (bands below 80 keV, 0.3x above), so that the slope filter rejects them.
  Single-ScW transients: 0.5 % of the ScWs get a +15-40 sigma spike in one band below 80 keV.
* Crab calibration: max(24, 5 % of the orbits) Crab orbits, one per equal stratum of
  revolutions, each with 8-40 Crab ScWs (80 % within 4.5 deg).  The Crab count rate is
  A_eff int eps(E) 10 E^-2.1 dE / 16384 with A_eff = 400 cm^2 and
  eps(E) = exp(-(E / 230 keV)^1.5), aged by the cubic
  g(x) = 1 - 0.05 x - d3 x^3, x = (REV - 70) / 2670, d3 = 0.25 (1 + lo / 200 keV); Crab ScWs have
  OFFSET 0-10 deg (rate times the collimator transmission T(OFFSET)), a 3 % per-orbit systematic
  jitter and Poisson noise.
* The sky (GXB): two smooth components, each a spatial template S_c(l, b) (per deg^2) times a
  photon spectrum N_c(E): GRXE = bulge (Gaussian, sigma_l = 5, sigma_b = 3 deg) + disk
  (exp(-|l|/30 - |b|/2)), spectrum cutoffpl (Gamma = 0, E_cut = 11.2 keV); gamma-ray background
  = disk exp(-|l|/45 - |b|/4), spectrum powerlaw (Gamma = 1.55).  The norms reproduce Table 2's
  30-80 keV fluxes in the GB (9.7e-10 and 4.9e-10 erg/s/cm^2 per FOV).
  The signal of a ScW pointed at (l0, b0) is the collimator-weighted integral
  F(l0, b0) = sum_c int S_c(l, b) R(l - l0, b - b0) dl db x N_c(E) (flat-sky approximation, the
  same square response R = T T with int R = 286 deg^2 as :mod:`bkgjax.missions.isgri.instrument`), and it
  adds A_eff int eps(E) F dE / 16384 cts/s/pix -- so its value in mCrab per FOV is
  1000 int eps F dE / int eps N_crab dE, the count-rate ratio the pipeline measures.

Truth (``truth`` dict): per-ScW GXB in mCrab per FOV, per region (Table 1) and per 15 deg
longitude bin (|b| < 10 deg) the mean of the per-ScW GXB over the ScWs that pass the phase and
exposure screening (the quantity the region centroid estimates), the orbit kinds, outlier and
transient orbits, the background and Crab-rate models and the spectral parameters.

Band naming: RATE_<lo>_<hi> with integer keV edges (:func:`bkgjax.missions.isgri.instrument.band_name`).
``spectral_bands=True`` adds the 21 log bands of
:data:`bkgjax.missions.isgri.instrument.SPECTRAL_BANDS`; ``clip_band=True`` adds the 168-185 keV band
(:data:`~bkgjax.missions.isgri.instrument.CLIP_BAND`, the band of the paper's orbit clipping) when it is
not already there.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from bkgjax.missions.isgri import instrument as isgri

__all__ = [
    "simulate_mission",
    "write_tables",
    "fov_sky_maps",
    "gxb_mcrab",
    "band_crab_rate",
    "band_background_rate",
    "crab_ageing",
    "ridge_spectrum_norms",
    "EFFECTIVE_AREA_CM2",
    "ECUT_KEV",
    "GAMMA_POW",
]

#: Effective area of the simulated diagonal response, cm^2 (eps(E) applied on top).
EFFECTIVE_AREA_CM2 = 400.0
ECUT_KEV = 11.2
GAMMA_POW = 1.55
#: Table 2, GB: 30-80 keV energy flux per FOV of the two components, erg/s/cm^2.
_F30_80_CUT = 9.7e-10
_F30_80_POW = 4.9e-10
_REV_FIRST, _REV_LAST = 70, 2740
_DAYS_PER_REV = 2.8
_MJD_REV0 = 52760.0
_SOLAR_MIN_MJD = 54800.0
_SOLAR_PERIOD_D = 11.0 * 365.25
_BKG_PER_KEV = 0.0228  # cts/s/pix/keV times E (b(E) = 0.0228 / E)
_MAP_STEP = 0.25  # deg, sky-map grid


def _efficiency(e):
    return np.exp(-(np.asarray(e) / 230.0) ** 1.5)


def _band_quadrature(lo, hi, n=48):
    """Gauss-Legendre nodes and weights on [lo, hi] keV (integrands are smooth)."""
    x, w = np.polynomial.legendre.leggauss(n)
    e = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
    return e, 0.5 * (hi - lo) * w


def _count_rate(lo, hi, photon_spectrum):
    """A_eff int eps(E) N(E) dE / 16384 cts/s/pix for a photon spectrum N (ph/cm^2/s/keV)."""
    e, w = _band_quadrature(lo, hi)
    return EFFECTIVE_AREA_CM2 * np.sum(w * _efficiency(e) * photon_spectrum(e)) / isgri.PIXELS


def _crab_spectrum(e):
    return isgri.CRAB_NORM * e ** (-isgri.CRAB_INDEX)


def band_crab_rate(lo, hi):
    """Unaged on-axis Crab count rate in [lo, hi] keV, cts/s/pix."""
    return _count_rate(lo, hi, _crab_spectrum)


def band_background_rate(lo, hi):
    """Mean detector background in [lo, hi] keV, cts/s/pix: int 0.0228 / E dE."""
    return _BKG_PER_KEV * math.log(hi / lo)


def crab_ageing(rev, lo):
    """Cubic ageing of the Crab rate (detector degradation, Appendix B, Fig. B.8):
    g = 1 - 0.05 x - 0.25 (1 + lo/200) x^3, x = (REV - 70) / 2670."""
    x = (np.asarray(rev, dtype=float) - _REV_FIRST) / (_REV_LAST - _REV_FIRST)
    return 1.0 - 0.05 * x - 0.25 * (1.0 + lo / 200.0) * x ** 3


def ridge_spectrum_norms():
    """Norms (ph/cm^2/s/keV at 1 keV, per FOV at the Galactic centre) of the cutoffpl (Gamma = 0,
    E_cut = 11.2 keV) and powerlaw (Gamma = 1.55) components giving Table 2's GB 30-80 keV fluxes:
    F = K int_30^80 E N(E) dE x keV->erg."""
    e, w = _band_quadrature(30.0, 80.0)
    k_cut = _F30_80_CUT / (np.sum(w * e * np.exp(-e / ECUT_KEV)) * isgri.KEV_TO_ERG)
    k_pow = _F30_80_POW / (np.sum(w * e ** (1 - GAMMA_POW)) * isgri.KEV_TO_ERG)
    return float(k_cut), float(k_pow)


def _component_spectra():
    k_cut, k_pow = ridge_spectrum_norms()
    return (lambda e: k_cut * np.exp(-e / ECUT_KEV),
            lambda e: k_pow * e ** (-GAMMA_POW))


def _templates(l, b):
    """Unnormalised spatial templates (GRXE, gamma-ray background) on a (b, l) grid."""
    grxe = (np.exp(-0.5 * (l / 5.0) ** 2 - 0.5 * (b / 3.0) ** 2)
            + 0.35 * np.exp(-np.abs(l) / 30.0 - np.abs(b) / 2.0))
    gamma = np.exp(-np.abs(l) / 45.0 - np.abs(b) / 4.0)
    return grxe, gamma


@functools.lru_cache(maxsize=1)
def fov_sky_maps():
    """Collimator-convolved templates F_c(l0, b0) = int S_c R dOmega on a 0.25 deg grid.

    Returns ``(l_grid, b_grid, maps)``, maps of shape (2, n_b, n_l), each normalised to 1 at the
    Galactic centre (the spectral norms of :func:`ridge_spectrum_norms` then give the GB FOV
    spectrum).  Separable convolution with T(x) sampled on the grid (flat sky), wrapping in l.
    """
    from scipy.ndimage import convolve1d

    step = _MAP_STEP
    l_grid = np.arange(-180.0, 180.0 + step / 2, step)
    b_grid = np.arange(-90.0, 90.0 + step / 2, step)
    ll, bb = np.meshgrid(l_grid[:-1], b_grid)
    half = int(math.ceil(isgri.COLLIMATOR_EDGE_DEG / step))
    kernel = isgri.collimator_transmission(np.arange(-half, half + 1) * step) * step
    maps = []
    for tmpl in _templates(ll, bb):
        conv = convolve1d(tmpl, kernel, axis=1, mode="wrap")
        conv = convolve1d(conv, kernel, axis=0, mode="constant")
        conv = np.concatenate([conv, conv[:, :1]], axis=1)  # l = +180 equals l = -180
        maps.append(conv)
    maps = np.stack(maps)
    i0, j0 = np.argmin(np.abs(b_grid)), np.argmin(np.abs(l_grid))
    maps /= maps[:, i0, j0][:, None, None]
    return l_grid, b_grid, maps


def _interp_maps(l_grid, b_grid, maps, l, b):
    from scipy.ndimage import map_coordinates

    step = _MAP_STEP
    coords = np.stack([(np.asarray(b) - b_grid[0]) / step,
                       (isgri.wrap_longitude(l) - l_grid[0]) / step])
    return np.stack([map_coordinates(m, coords, order=1, mode="nearest") for m in maps])


def gxb_mcrab(l, b, bands, sky=None):
    """True GXB of pointings (l, b) in mCrab per FOV, shape (n, n_bands): the count-rate ratio
    1000 int eps (F_grxe N_cut + F_gamma N_pow) dE / int eps N_crab dE per band."""
    sky = fov_sky_maps() if sky is None else sky
    fov = _interp_maps(*sky, l, b)  # (2, n)
    spectra = _component_spectra()
    per_band = np.array([[_count_rate(lo, hi, s) / band_crab_rate(lo, hi) for (lo, hi) in bands]
                         for s in spectra])  # (2, n_bands), Crab units at F = 1
    return 1000.0 * fov.T @ per_band


def _resolve_bands(bands, spectral_bands, clip_band):
    out = [isgri.band_edges(b) if isinstance(b, str) else tuple(map(float, b)) for b in bands]
    if spectral_bands:
        out += [tuple(map(float, b)) for b in isgri.SPECTRAL_BANDS]
    if clip_band:
        out.append(tuple(map(float, isgri.CLIP_BAND)))
    seen, unique = set(), []
    for lo, hi in out:
        if (lo, hi) not in seen:
            seen.add((lo, hi))
            unique.append((lo, hi))
    return unique


def _galactic_field(rng):
    u = rng.random()
    if u < 0.35:  # Galactic-centre programmes
        return rng.normal(0.0, 1.5), rng.normal(0.0, 1.5)
    if u < 0.75:  # plane scans, weighted to the inner Galaxy
        return rng.triangular(-85.0, 0.0, 85.0), float(np.clip(rng.normal(0.0, 4.0), -25, 25))
    return rng.uniform(-85.0, 85.0), rng.uniform(-25.0, 25.0)


def _bkg_field(rng):
    if rng.random() < 0.25:  # the 3C 273/Coma deep field
        return rng.normal(-70.0, 8.0), float(np.clip(rng.normal(70.0, 6.0), 52.0, 88.0))
    l = rng.uniform(-180.0, 180.0)
    b = rng.uniform(32.0, 85.0) * rng.choice([-1.0, 1.0])
    return l, b


_DITHER = np.array([(dx, dy) for dx in (-4, -2, 0, 2, 4) for dy in (-4, -2, 0, 2, 4)], float)


def _fill_fields(rng, n, field_fn, n_fields):
    """Pointings of ``n`` consecutive ScWs split into ``n_fields`` blocks, each on the dither
    pattern around a field centre from ``field_fn``."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n_fields, n) - 1, replace=False)) \
        if n_fields > 1 and n > 1 else np.array([], int)
    l = np.empty(n)
    b = np.empty(n)
    for block in np.split(np.arange(n), cuts):
        l0, b0 = field_fn(rng)
        d = _DITHER[rng.permutation(len(_DITHER))[np.arange(len(block)) % len(_DITHER)]]
        l[block] = l0 + d[:, 0]
        b[block] = np.clip(b0 + d[:, 1], -89.9, 89.9)
    return isgri.wrap_longitude(l), b


def simulate_mission(seed=0, n_orbits=2700, *, scw_per_orbit=64,
                     bands=("25_60", "60_80", "80_200"), spectral_bands=False, clip_band=True,
                     frac_highlat=0.30, frac_mixed=0.20, outlier_fraction=0.03,
                     transient_orbit_fraction=0.02, spike_fraction=0.005, n_crab_orbits=None,
                     sys_noise=0.0045, short_exposure_fraction=0.03, progress=None):
    """Simulate a mission; returns ``(scw_table, crab_table, truth)``.

    Parameters
    ----------
    seed : int
        NumPy ``default_rng`` seed (the whole mission is reproducible from it).
    n_orbits : int
        Revolutions drawn from 70-2740 (all 2671 if ``n_orbits >= 2671``).
    scw_per_orbit : float
        Mean number of ScWs per orbit before screening (Poisson); phases cover 0.1-0.9, so about
        75 % pass the 0.2-0.8 phase cut (2700 x 64 -> ~130,000 screened ScWs, the paper's size).
    bands : sequence of ``"lo_hi"`` names or (lo, hi) keV pairs.
    spectral_bands : bool
        Add the 21 log bands 25-185 keV.
    clip_band : bool
        Add the 168-185 keV band used by the orbit clipping (Appendix A).
    sys_noise : float
        Per-ScW systematic noise (imperfect point-source removal) as a fraction of the
        background rate, on top of the Poisson noise (which alone is what RATE_ERR reports).

    Returns
    -------
    scw_table, crab_table : astropy.table.Table
        Columns of the issue-5 contract (see :mod:`bkgjax.missions.isgri.tables`).
    truth : dict
        ``bands`` (names), ``scw_gxb_mcrab`` (n_scw, n_bands), ``regions``
        {name: {band: mCrab}}, ``region_n_scw``, ``profile`` (list of bins), ``orbit_kind``
        {rev: kind}, ``outlier_revs``, ``transient_revs``, ``spectrum`` (component norms),
        ``region_spectra`` {name: {"cutoffpl_norm", "powerlaw_norm", "Ecut", "gamma_pow"}},
        ``crab_rate0`` and ``background_rate0`` per band.
    """
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    band_list = _resolve_bands(bands, spectral_bands, clip_band)
    names = [isgri.band_name(lo, hi) for lo, hi in band_list]
    lo_arr = np.array([lo for lo, _ in band_list])
    n_band = len(band_list)
    all_revs = np.arange(_REV_FIRST, _REV_LAST + 1)
    if n_orbits >= len(all_revs):
        revs = all_revs
    else:
        revs = np.sort(rng.choice(all_revs, size=int(n_orbits), replace=False))
    n_orb = len(revs)

    kinds = rng.choice(np.array(["highlat", "mixed", "galactic"]), size=n_orb,
                       p=[frac_highlat, frac_mixed, 1.0 - frac_highlat - frac_mixed])
    n_per = np.maximum(rng.poisson(scw_per_orbit, size=n_orb), 6)
    transient = rng.random(n_orb) < transient_orbit_fraction
    outlier = (kinds == "galactic") & (rng.random(n_orb) < outlier_fraction) & ~transient
    step = np.where(outlier, rng.uniform(0.01, 0.03, n_orb) * rng.choice([-1, 1], n_orb), 0.0)
    jitter = rng.normal(0.0, 3e-4, n_orb)
    # In-orbit relative slope: evolves slowly with the orbit geometry (period ~350 revolutions)
    # plus a small orbit-to-orbit scatter.
    slope_rel = (-0.004 + 0.003 * np.sin(2 * np.pi * revs / 350.0 + rng.uniform(0, 2 * np.pi))
                 + rng.normal(0.0, 0.001, n_orb))

    rev_col, phase_col, l_col, b_col = [], [], [], []
    iterator = range(n_orb) if progress is None else progress(range(n_orb))
    for k in iterator:
        n = int(n_per[k])
        phase = 0.1 + 0.8 * (np.arange(n) + rng.uniform(0.1, 0.9, n)) / n
        if kinds[k] == "highlat":
            l, b = _fill_fields(rng, n, _bkg_field, int(rng.integers(1, 4)))
        elif kinds[k] == "mixed":
            nb = int(min(rng.integers(4, 17), n - 1))
            start = int(rng.integers(0, n - nb + 1))
            l, b = _fill_fields(rng, n, _galactic_field, int(rng.integers(1, 4)))
            lb, bb = _fill_fields(rng, nb, _bkg_field, 1)
            l[start:start + nb], b[start:start + nb] = lb, bb
        else:
            l, b = _fill_fields(rng, n, _galactic_field, int(rng.integers(2, 6)))
            if rng.random() < 0.3:
                nb = int(rng.integers(1, 3))
                idx = rng.choice(n, size=nb, replace=False)
                lb, bb = _fill_fields(rng, nb, _bkg_field, 1)
                l[idx], b[idx] = lb, bb
        rev_col.append(np.full(n, revs[k]))
        phase_col.append(phase)
        l_col.append(l)
        b_col.append(b)
    rev = np.concatenate(rev_col)
    phase = np.concatenate(phase_col)
    l = np.concatenate(l_col)
    b = np.concatenate(b_col)
    n_scw = len(rev)
    orbit_index = np.searchsorted(revs, rev)
    mjd = _MJD_REV0 + _DAYS_PER_REV * (rev - _REV_FIRST + phase)
    exposure = rng.uniform(1800.0, 3600.0, n_scw)
    short = rng.random(n_scw) < short_exposure_fraction
    exposure[short] = rng.uniform(200.0, 690.0, short.sum())

    # Detector background (cts/s/pix) per ScW and band.
    mjd_orbit = _MJD_REV0 + _DAYS_PER_REV * (revs - _REV_FIRST + 0.5)
    solar = 1.0 + 0.12 * np.cos(2 * np.pi * (mjd_orbit - _SOLAR_MIN_MJD) / _SOLAR_PERIOD_D)
    bkg0 = np.array([band_background_rate(lo, hi) for lo, hi in band_list])
    slope = slope_rel[:, None] + np.where(transient[:, None],
                                          np.where(lo_arr[None, :] < 80.0, 0.15, 0.045), 0.0)
    level = solar[:, None] * (1.0 + jitter + step)[:, None] * bkg0[None, :]  # (n_orb, n_band)
    background = level[orbit_index] * (1.0 + slope[orbit_index] * (phase - 0.5)[:, None])

    # Sky signal through the aged Crab-calibrated response.
    sky = fov_sky_maps()
    truth_mcrab = gxb_mcrab(l, b, band_list, sky)  # (n_scw, n_band)
    crab0 = np.array([band_crab_rate(lo, hi) for lo, hi in band_list])
    crab_now = crab0[None, :] * crab_ageing(rev[:, None], lo_arr[None, :])
    signal = 1e-3 * truth_mcrab * crab_now

    expected = background + signal
    counts_scale = exposure[:, None] * isgri.PIXELS
    poisson_sd = np.sqrt(expected / counts_scale)
    rate = (expected + rng.normal(size=expected.shape) * poisson_sd
            + rng.normal(size=expected.shape) * sys_noise * bkg0[None, :]
            * solar[orbit_index, None])
    spikes = rng.random(n_scw) < spike_fraction
    low_bands = np.flatnonzero(lo_arr < 80.0)
    if spikes.any() and len(low_bands):
        which = rng.choice(low_bands, size=spikes.sum())
        total_sd = np.sqrt(poisson_sd ** 2 + (sys_noise * bkg0[None, :]) ** 2)
        rate[np.flatnonzero(spikes), which] += (rng.uniform(15, 40, spikes.sum())
                                               * total_sd[np.flatnonzero(spikes), which])
    rate_err = np.sqrt(np.maximum(rate, 1e-12) / counts_scale)

    scw_id = np.array([f"{r:04d}{i:04d}0010" for r, i in
                       zip(rev, np.arange(n_scw) - np.searchsorted(rev, rev))])
    scw = Table()
    scw["SCW_ID"] = scw_id
    scw["REV"] = rev.astype(np.int64)
    scw["PHASE"] = phase
    scw["MJD"] = mjd
    scw["L"] = l
    scw["B"] = b
    scw["EXPOSURE"] = exposure
    for j, name in enumerate(names):
        scw[f"RATE_{name}"] = rate[:, j]
        scw[f"RATE_ERR_{name}"] = rate_err[:, j]
    scw.meta["ORIGIN"] = "bkgjax.missions.isgri.mission"
    scw.meta["SEED"] = int(seed)

    # Crab table.
    n_crab = int(n_crab_orbits) if n_crab_orbits is not None else max(24, int(round(0.05 * n_orb)))
    # Crab campaigns spread over the mission: one orbit per equal stratum of revolutions.
    strata = np.linspace(_REV_FIRST, _REV_LAST + 1, min(n_crab, len(all_revs)) + 1)
    crab_revs = np.unique(np.floor(rng.uniform(strata[:-1], strata[1:])).astype(np.int64))
    c_rev, c_phase, c_off = [], [], []
    for r in crab_revs:
        n = int(rng.integers(8, 41))
        off = np.where(rng.random(n) < 0.8, rng.uniform(0.0, 4.4, n), rng.uniform(4.6, 10.0, n))
        c_rev.append(np.full(n, r))
        c_phase.append(np.sort(rng.uniform(0.2, 0.8, n)))
        c_off.append(off)
    c_rev = np.concatenate(c_rev)
    c_phase = np.concatenate(c_phase)
    c_off = np.concatenate(c_off)
    c_orbit_jitter = 1.0 + rng.normal(0.0, 0.03, (len(crab_revs), n_band))
    c_idx = np.searchsorted(crab_revs, c_rev)
    c_expected = (crab0[None, :] * crab_ageing(c_rev[:, None], lo_arr[None, :])
                  * c_orbit_jitter[c_idx] * isgri.collimator_transmission(c_off)[:, None])
    c_exposure = 2000.0 * isgri.PIXELS
    c_sd = np.sqrt((c_expected + bkg0[None, :]) / c_exposure)
    c_rate = c_expected + rng.normal(size=c_expected.shape) * c_sd
    crab = Table()
    crab["REV"] = c_rev.astype(np.int64)
    crab["MJD"] = _MJD_REV0 + _DAYS_PER_REV * (c_rev - _REV_FIRST + c_phase)
    crab["OFFSET"] = c_off
    for j, name in enumerate(names):
        crab[f"RATE_{name}"] = c_rate[:, j]
        crab[f"RATE_ERR_{name}"] = c_sd[:, j]
    crab.meta["ORIGIN"] = "bkgjax.missions.isgri.mission"

    # Truth: means of the per-ScW GXB over the ScWs passing phase/exposure screening.
    passes = (phase >= 0.2) & (phase <= 0.8) & (exposure >= 700.0)
    regions, region_n, region_spectra = {}, {}, {}
    k_cut, k_pow = ridge_spectrum_norms()
    fov = _interp_maps(*sky, l, b)
    for reg in isgri.PAPER_REGIONS:
        sel = passes & isgri.in_region(l, b, reg)
        region_n[reg.name] = int(sel.sum())
        if sel.any():
            regions[reg.name] = {nm: float(truth_mcrab[sel, j].mean())
                                 for j, nm in enumerate(names)}
            region_spectra[reg.name] = {"cutoffpl_norm": k_cut * float(fov[0, sel].mean()),
                                        "powerlaw_norm": k_pow * float(fov[1, sel].mean()),
                                        "Ecut": ECUT_KEV, "gamma_pow": GAMMA_POW}
        else:
            regions[reg.name] = {nm: None for nm in names}
    profile = []
    edges = isgri.PROFILE_EDGES_DEG
    for lo_l, hi_l in zip(edges[:-1], edges[1:]):
        sel = passes & isgri.in_profile_bin(l, b, lo_l, hi_l)
        profile.append({"l_lo": float(lo_l), "l_hi": float(hi_l), "n_scw": int(sel.sum()),
                        "mcrab": {nm: (float(truth_mcrab[sel, j].mean()) if sel.any() else None)
                                  for j, nm in enumerate(names)}})
    truth = {
        "seed": int(seed),
        "bands": names,
        "scw_gxb_mcrab": truth_mcrab,
        "regions": regions,
        "region_n_scw": region_n,
        "region_spectra": region_spectra,
        "profile": profile,
        "orbit_kind": {int(r): str(k) for r, k in zip(revs, kinds)},
        "outlier_revs": [int(r) for r in revs[outlier]],
        "transient_revs": [int(r) for r in revs[transient]],
        "spike_rows": np.flatnonzero(spikes),
        "crab_rate0": dict(zip(names, crab0.tolist())),
        "background_rate0": dict(zip(names, bkg0.tolist())),
        "spectrum": {"cutoffpl_norm": k_cut, "Ecut": ECUT_KEV, "powerlaw_norm": k_pow,
                     "gamma_pow": GAMMA_POW, "F30_80_cut": _F30_80_CUT, "F30_80_pow": _F30_80_POW,
                     "note": "norms per FOV at the Galactic centre (l = b = 0)"},
    }
    return scw, crab, truth


def write_tables(scw, crab, directory, *, fmt="fits", overwrite=True):
    """Write the two tables as ``scw.fits`` / ``crab.fits`` (FITS binary tables, ``fmt="fits"``)
    or ``scw.ecsv`` / ``crab.ecsv`` (``fmt="ecsv"``) in ``directory``; returns the two paths."""
    if fmt not in ("fits", "ecsv"):
        raise ValueError(f"write_tables: fmt must be 'fits' or 'ecsv', got {fmt!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in (("scw", scw), ("crab", crab)):
        path = directory / f"{name}.{fmt}"
        out = table.copy(copy_data=False)
        if fmt == "fits":
            out.meta = {k: v for k, v in out.meta.items() if len(str(k)) <= 8}
            out.write(path, format="fits", overwrite=overwrite)
        else:
            out.write(path, format="ascii.ecsv", overwrite=overwrite)
        paths.append(path)
    return tuple(paths)
