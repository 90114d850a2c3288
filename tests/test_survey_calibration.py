"""Tests of bkgjax.missions.nustar_survey.calibration (independent references: scipy, hand counts)."""

import math

import numpy as np
import pytest
from scipy import special, stats

import bkgjax  # noqa: F401  (float64)
from bkgjax.missions.nustar_survey import calibration as sc
from bkgjax.missions.nustar_survey import instrument as ns


def test_beta_interval_matches_scipy():
    k, n = np.array([1, 3, 50, 9]), np.array([10, 7, 60, 10])
    lo, hi = sc.beta_interval(k, n)
    q = stats.norm.cdf(-1.0)
    np.testing.assert_allclose(lo, stats.beta.ppf(q, k + 0.5, n - k + 0.5), rtol=1e-12)
    np.testing.assert_allclose(hi, stats.beta.ppf(1 - q, k + 0.5, n - k + 0.5), rtol=1e-12)
    lo, hi = sc.beta_interval([0, 10], [10, 10])  # edge convention: contains k/n
    np.testing.assert_allclose(lo, [0.0, stats.beta.ppf(q, 10.5, 0.5)], rtol=1e-12)
    np.testing.assert_allclose(hi, [stats.beta.ppf(1 - q, 0.5, 10.5), 1.0], rtol=1e-12)
    lo0, hi0 = sc.beta_interval(0, 0)
    assert np.isnan(lo0) and np.isnan(hi0)


def test_reliability_known_spurious_fraction():
    rng = np.random.default_rng(0)
    # 2000 real sources with DET_ML ~ U(5, 30), 400 spurious with DET_ML ~ U(5, 10)
    real = rng.uniform(5, 30, 2000)
    spur = rng.uniform(5, 10, 400)
    dml = np.concatenate([real, spur, [50.0]])
    matched = np.concatenate([np.ones(2000, bool), np.zeros(400, bool), [False]])
    expo = np.concatenate([np.full(2400, 100.0), [1000.0]])  # last one outside the interval
    valid = np.ones(dml.size, bool)
    grid = np.array([5.0, 7.5, 10.0, 20.0])
    c = sc.reliability_curve(dml, matched, expo, grid, (20, 200), valid=valid)
    # hand counts
    for j, t in enumerate(grid):
        n_r, n_s = np.sum(real >= t), np.sum(spur >= t)
        assert c.n_total[j] == n_r + n_s and c.n_matched[j] == n_r
        assert c.reliability[j] == pytest.approx(n_r / (n_r + n_s))
    assert c.reliability[0] == pytest.approx(2000 / 2400)  # spurious fraction 1/6
    assert c.reliability[2] == 1.0 and c.reliability[3] == 1.0
    lo, hi = sc.beta_interval(c.n_matched, c.n_total)
    np.testing.assert_allclose(c.lo, lo)
    assert np.all(c.lo <= c.reliability) and np.all(c.reliability <= c.hi)
    # invalid detections are ignored
    c2 = sc.reliability_curve(dml, matched, expo, grid, (20, 200), valid=matched)
    assert np.all(c2.reliability == 1.0)


def _curve(grid, n, r):
    """Curve with given cumulative totals and reliabilities (consistent differential bins)."""
    n = np.asarray(n)
    k = np.round(n * np.asarray(r)).astype(int)
    lo, hi = sc.beta_interval(k, n)
    return sc.ReliabilityCurve(np.asarray(grid, float), n, k, k / n, lo, hi)


def test_threshold_on_constructed_curve():
    grid = np.arange(5.0, 16.0)                       # 5 .. 15
    n = np.array([20000, 16000, 12000, 10000, 9000, 8000, 7000, 6000, 5000, 4000, 3000])
    r = np.array([0.60, 0.70, 0.80, 0.90, 0.94, 0.96, 0.97, 0.985, 0.992, 0.995, 1.0])
    c = _curve(grid, n, r)
    v, lo, hi = sc.reliability_threshold(c, 0.95)
    assert v == pytest.approx(9.0 + (0.95 - 0.94) / (0.96 - 0.94))  # 9.5
    # "bounds" interval: the crossing of the scipy Jeffreys upper / lower bound curves
    q = stats.norm.cdf(1.0)
    k9, k10 = 0.94 * 9000, 0.96 * 8000
    u9, u10 = (stats.beta.ppf(q, k + 0.5, nn - k + 0.5) for k, nn in ((k9, 9000), (k10, 8000)))
    l9, l10 = (stats.beta.ppf(1 - q, k + 0.5, nn - k + 0.5) for k, nn in ((k9, 9000),
                                                                          (k10, 8000)))
    assert lo == pytest.approx(9.0 + (0.95 - u9) / (u10 - u9), rel=1e-9)
    assert hi == pytest.approx(9.0 + (0.95 - l9) / (l10 - l9), rel=1e-9)
    assert lo < v < hi and hi - lo < 1.0
    vd, lod, hid = sc.reliability_threshold(c, 0.95, method="draws", n_draws=500)
    assert vd == v and lod < v < hid and hid - lod < 1.0
    v99, lo99, hi99 = sc.reliability_threshold(c, 0.99)
    assert v99 == pytest.approx(12.0 + (0.99 - 0.985) / (0.992 - 0.985))
    assert lo99 <= v99 <= hi99
    # non-monotonic dip above the first crossing: the threshold must lie above the dip
    r2 = r.copy()
    r2[7] = 0.949
    v2, _, _ = sc.reliability_threshold(_curve(grid, n, r2), 0.95)
    assert 12.0 < v2 < 13.0
    # level never reached at the top -> NaN; reached at the first point -> first grid value
    assert math.isnan(sc.reliability_threshold(_curve(grid, n, r * 0.5), 0.95)[0])
    assert sc.reliability_threshold(_curve(grid, n, np.ones(11)), 0.95)[0] == 5.0
    # more simulations -> narrower interval
    _, lo_b, hi_b = sc.reliability_threshold(_curve(grid, n * 10, r), 0.95)
    assert hi_b - lo_b < hi - lo
    # sparse tail: one spurious among the 5 brightest is ignored by default, not when strict
    n3 = n.copy()
    n3[-1] = 5
    r3 = r.copy()
    r3[-1] = 0.8
    assert sc.reliability_threshold(_curve(grid, n3, r3), 0.95)[0] == pytest.approx(9.5)
    assert math.isnan(sc.reliability_threshold(_curve(grid, n3, r3), 0.95, min_count=0)[0])
    # fewer detections than min_count at all: no threshold
    assert all(math.isnan(x) for x in sc.reliability_threshold(_curve(grid, n // 1000, r),
                                                                0.99))


def test_completeness_synthetic():
    rng = np.random.default_rng(1)
    flux = 10 ** rng.uniform(-15, -12, 20000)
    p_true = np.clip((np.log10(flux) + 15) / 3, 0, 1)  # rises linearly in log flux
    det = rng.random(flux.size) < p_true
    valid = np.ones(flux.size, bool)
    valid[:100] = False
    edges = 10 ** np.linspace(-15, -12, 7)
    c = sc.completeness_curve(flux, valid, det, edges)
    assert c.n_input.sum() == 19900
    centre_p = (np.log10(c.flux) + 15) / 3
    assert np.all(np.abs(c.completeness - centre_p) < 4 * (c.hi - c.lo))
    assert np.all(np.diff(c.completeness) > 0)
    v = valid & (flux >= edges[2]) & (flux < edges[3])
    assert c.n_detected[2] == np.sum(det & v)


def test_detected_inputs_flux_and_positions():
    class R:  # minimal SimResults-like object: 1 simulation, 3 sources, 3 detections
        src_flux = np.array([[1e-14, 2e-14, 3e-14]])
        src_valid = np.array([[True, True, False]])
        det_valid = np.array([[True, True, True]])
        matched = np.array([[True, True, False]])
        matched_flux = np.array([[2e-14, 1e-14, 0.0]])
        det_ml = np.array([[20.0, 5.0, 30.0]])
        det_exposure = np.array([[300e3, 300e3, 300e3]])

    np.testing.assert_array_equal(sc.detected_inputs(R, 10.0), [[False, True, False]])
    np.testing.assert_array_equal(sc.detected_inputs(R, 1.0), [[True, True, False]])
    # threshold table: 200-500 ks row of the paper, 3-24 keV, 95 %: 9.89
    np.testing.assert_array_equal(sc.detected_inputs(R, ns.paper_thresholds()),
                                  [[False, True, False]])
    flags = sc.detected_inputs_from_positions([[0, 0], [50, 50], [100, 0]], [True, True, False],
                                              [[5, 0], [0, 7], [50, 60], [100, 0]],
                                              [True, True, True, True], radius_pix=12.0)
    np.testing.assert_array_equal(flags, [True, False, True, False])


def test_min_detect_counts_direct():
    b = np.array([0.3, 2.0, 17.5])
    t = 10.0
    n = sc.min_detect_counts(b, t)
    for bi, ni in zip(b, n):
        # DET_ML(n) = -ln P(N >= n | b) = -ln sf(n - 1)
        assert -stats.poisson.logsf(ni - 1, bi) >= t
        assert -stats.poisson.logsf(ni - 2, bi) < t
        assert -np.log(special.gammainc(ni, bi)) >= t


def test_sky_coverage_uniform_exposure():
    h = w = 40
    scale = 2.46
    pix_area = (scale / 3600.0) ** 2
    expo = np.full((h, w), 3e5)
    bkg = np.full((h, w), 0.02)
    t = 12.0
    flux = np.geomspace(1e-15, 1e-12, 61)
    # interior pixels (aperture fully inside): the same background in the aperture
    from bkgjax.missions.nustar_survey.detection import tophat_sum
    b_ap = np.asarray(tophat_sum(bkg, ns.APERTURE_RADIUS_ARCSEC / scale, expo))
    b0 = b_ap[h // 2, w // 2]
    interior = np.isclose(b_ap, b0)
    n0 = sc.min_detect_counts(b0, t)
    eef = ns.encircled_fraction(ns.APERTURE_RADIUS_ARCSEC)
    cf = ns.band_info("8-24").cf
    # probability method at one flux against a direct scipy computation
    s1 = 2e-14
    cov = sc.sky_coverage(expo, bkg, pix_area, [s1], t, "8-24")
    direct = sum(stats.poisson.sf(sc.min_detect_counts(bb, t) - 1, s1 / cf * 3e5 * eef + bb)
                 for bb in b_ap.ravel()) * pix_area
    assert cov.area_deg2[0] == pytest.approx(direct, rel=1e-10)
    assert cov.total_area_deg2 == pytest.approx(h * w * pix_area)
    # 50 % method: interior pixels switch on at the analytic flux limit
    s_half = flux[np.argmax(stats.poisson.sf(n0 - 1, flux / cf * 3e5 * eef + b0) >= 0.5)]
    cov_h = sc.sky_coverage(expo, bkg, pix_area, flux, t, "8-24", method="half")
    i = np.searchsorted(flux, s_half)
    assert cov_h.area_deg2[i] >= interior.sum() * pix_area
    assert cov_h.area_deg2[i - 1] <= (~interior).sum() * pix_area
    assert cov_h.area_deg2[0] == 0.0 and cov_h.area_deg2[-1] == pytest.approx(h * w * pix_area)
    cov_p = sc.sky_coverage(expo, bkg, pix_area, flux, t, "8-24")
    assert np.all(np.diff(cov_p.area_deg2) >= -1e-15)
    f20, f50 = (sc.flux_limit_at_coverage(cov_p, q) for q in (0.2, 0.5))
    assert f20 < f50 and flux[0] < f20
    # a threshold table restricted to > 500 ks: nothing is covered at 300 ks
    tab = ns.paper_thresholds()
    tab = tab[(tab["band"] == "8-24") & (tab["exp_min_ks"] == 500.0)]
    assert sc.sky_coverage(expo, bkg, pix_area, flux, tab, "8-24").total_area_deg2 == 0.0


def test_lognlogs_constant_omega():
    s = np.array([5e-14, 1e-14, 2e-14, 3e-14])
    omega = 0.25
    grid, n, sig = sc.lognlogs_from_catalogue(s, lambda x: np.full(np.shape(x), omega))
    np.testing.assert_allclose(grid, np.sort(s))
    np.testing.assert_allclose(n, [4 / omega, 3 / omega, 2 / omega, 1 / omega])
    np.testing.assert_allclose(sig**2, [4 / omega**2, 3 / omega**2, 2 / omega**2, 1 / omega**2])
    _, n2, s2 = sc.lognlogs_from_catalogue(s, lambda x: omega + 0 * x, flux_grid=[1e-15, 1e-13])
    np.testing.assert_allclose(n2, [16.0, 0.0])
    np.testing.assert_allclose(s2, [math.sqrt(4) / omega, 0.0])
    cov = sc.SkyCoverage(np.array([1e-15, 1e-13]), np.array([omega, omega]), omega)
    _, n3, _ = sc.lognlogs_from_catalogue(s, cov)
    np.testing.assert_allclose(n3, n)


def test_end_to_end_threshold_table():
    from bkgjax.missions.nustar_survey import driver as sv

    h = w = 96
    scale = 2.46
    expo = np.full((h, w), 3e5)
    expo[:, : w // 2] = 1e5
    bkg = np.full((h, w), 0.04)
    res = sv.simulate_and_detect(3, 24, expo, bkg, scale, max_sources=64, max_candidates=32,
                                 batch_size=8, batches_per_chunk=3, progress=False)
    tab = sc.threshold_table(res, intervals=((20, 200), (200, 500)), band="3-24",
                             det_ml_grid=np.arange(0.0, 60.0, 0.25), min_count=10)
    assert len(tab) == 2 and "ratio_95" in tab.colnames and "det_ml_99_hi" in tab.colnames
    for col in ("det_ml_95", "det_ml_95_lo", "det_ml_99", "ratio_95"):
        assert np.all(np.isfinite(tab[col])), tab
    assert np.all(tab["det_ml_95_lo"] <= tab["det_ml_95"])
    assert np.all(tab["det_ml_95"] <= tab["det_ml_95_hi"])
    assert np.all(tab["det_ml_95"] <= tab["det_ml_99"])
    assert np.all(tab["n_det"] > 0)
    # reliability increases with DET_ML (cumulative: compare well-populated low vs high)
    c = sc.reliability_curve(res.det_ml, res.matched, res.det_exposure / 1e3,
                             [6.0, 30.0], (20, 500), valid=res.det_valid)
    assert c.n_total[-1] > 0 and c.reliability[0] < c.reliability[-1]
    # the table is readable by the numpy detect's lookup
    from bkgjax.missions.nustar_survey.detection import (
        threshold_lookup as threshold_lookup,
    )
    thr = threshold_lookup(tab, "3-24", np.array([100.0, 300.0]), 95)
    np.testing.assert_allclose(thr, tab["det_ml_95"])
    # completeness with the table: bright sources are detected
    flags = sc.detected_inputs(res, tab)
    comp = sc.completeness_curve(res.src_flux, res.src_valid, flags,
                                 np.geomspace(3e-15, 1e-11, 6))
    assert comp.n_detected.sum() > 0
    assert np.nanmax(comp.completeness) > np.nanmin(comp.completeness)
