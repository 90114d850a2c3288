"""Appendix A/B maths of bkgjax.missions.isgri.instrument against hand-computed values and independent
references (numpy.polyfit, scipy.optimize): the three orbit rules, the slope filter, sigma
clipping, the Crab cubic, and the Gaussian-plus-wings region fit with a coverage check."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bkgjax  # noqa: F401  (float64)
from bkgjax.missions.isgri import gauss_wings
from bkgjax.missions.isgri import instrument as isgri


def _orbit(rev, phases, rates, bkg):
    n = len(phases)
    return (np.full(n, rev), np.asarray(phases, float), np.asarray(rates, float),
            np.full(n, bkg, bool))


def _stack(*orbits):
    return tuple(np.concatenate(parts) for parts in zip(*orbits))


def _const_orbit(rev, level, sem, n=4, gal_phases=(0.5,)):
    """4 BKG ScWs at level -+ d (two each): mean = level, sd (ddof 1) = d sqrt(4/3),
    sem = d / sqrt(3) by hand -> d = sqrt(3) sem.  Plus GAL ScWs at ``gal_phases``."""
    d = math.sqrt(3.0) * sem
    bkg = _orbit(rev, [0.3, 0.4, 0.5, 0.6], [level - d, level - d, level + d, level + d], True)
    gal = _orbit(rev, list(gal_phases), [0.0] * len(gal_phases), False)
    return _stack(bkg, gal)


def test_rule_regression_hand_computed():
    # 10 BKG ScWs, phase span 0.45 > 0.4: y = 0.01 + 0.001 p + d, d = +-1e-5 alternating.
    p = 0.2 + 0.05 * np.arange(10)
    d = 1e-5 * np.array([1, -1] * 5)
    y = 0.01 + 0.001 * p + d
    rev, ph, rate, bkg = _stack(_orbit(7, p, y, True), _orbit(7, [0.5, 0.7], [0, 0], False))
    m = isgri.orbit_background(rev, ph, rate, bkg)
    pm = p.mean()
    sxx = np.sum((p - pm) ** 2)
    alpha = np.sum((p - pm) * (y - y.mean())) / sxx
    beta = y.mean() - alpha * pm
    s2 = np.sum((y - alpha * p - beta) ** 2) / 8
    assert m.rule[0, 0] == isgri.RULE_REGRESSION
    assert m.alpha[0, 0] == pytest.approx(alpha, rel=1e-10)
    assert m.beta[0, 0] == pytest.approx(beta, rel=1e-10)
    # independent reference: numpy.polyfit (cov scaled by chi2 / (N - 2))
    coef, cov = np.polyfit(p, y, 1, cov=True)
    np.testing.assert_allclose([m.alpha[0, 0], m.beta[0, 0]], coef, rtol=1e-9)
    for phase, row in ((0.5, 10), (0.7, 11)):
        x = np.array([phase, 1.0])
        assert m.model[row, 0] == pytest.approx(alpha * phase + beta, rel=1e-12)
        assert m.model_err[row, 0] == pytest.approx(math.sqrt(x @ cov @ x), rel=1e-8)
        assert m.model_err[row, 0] == pytest.approx(
            math.sqrt(s2 * (1 / 10 + (phase - pm) ** 2 / sxx)), rel=1e-10)
    # Weighted regression equals numpy.polyfit with w = 1/err.
    err = np.full(12, 2e-5)
    err[:10] *= 1 + np.arange(10) / 10
    mw = isgri.orbit_background(rev, ph, rate, bkg, weighted=True, rate_err=err)
    coef_w = np.polyfit(p, y, 1, w=1 / err[:10])
    np.testing.assert_allclose([mw.alpha[0, 0], mw.beta[0, 0]], coef_w, rtol=1e-9)


def test_rule_mean_hand_computed():
    # 5 BKG ScWs with rates 1..5 (x 1e-3): mean 3e-3, sd 1.5811e-3, sem = sd / sqrt(5).
    rates = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]
    rev, ph, rate, bkg = _stack(_orbit(3, [0.3, 0.35, 0.4, 0.45, 0.5], rates, True),
                                _orbit(3, [0.7], [0.0], False))
    m = isgri.orbit_background(rev, ph, rate, bkg)
    assert m.rule[0, 0] == isgri.RULE_MEAN
    assert m.model[5, 0] == pytest.approx(3e-3)
    assert m.model_err[5, 0] == pytest.approx(math.sqrt(2.5e-6) / math.sqrt(5))
    m_std = isgri.orbit_background(rev, ph, rate, bkg, mean_error="std")
    assert m_std.model_err[5, 0] == pytest.approx(math.sqrt(2.5e-6))
    # N_BKG >= 10 with a phase span <= 0.4 falls back to the constant model.
    p = 0.3 + 0.04 * np.arange(10)  # span 0.36
    rev, ph, rate, bkg = _orbit(4, p, 0.01 + 0.001 * p, True)
    m = isgri.orbit_background(rev, ph, rate, bkg)
    assert m.rule[0, 0] == isgri.RULE_MEAN
    assert m.model[0, 0] == pytest.approx(np.mean(0.01 + 0.001 * p))


def test_rule_interpolation_hand_computed():
    # Orbit 100: constant 0.010 +- 1e-4; orbit 110: 0.020 +- 2e-4; orbit 104: GAL only;
    # orbit 105: exactly 3 BKG ScWs (interpolated too); orbit 112: after the last calibrated one.
    a = _const_orbit(100, 0.010, 1e-4)
    b = _const_orbit(110, 0.020, 2e-4)
    c = _orbit(104, [0.5, 0.6], [0.0, 0.0], False)
    d = _orbit(105, [0.3, 0.4, 0.5], [0.5, 0.5, 0.5], True)
    e = _orbit(112, [0.5], [0.0], False)
    rev, ph, rate, bkg = _stack(a, b, c, d, e)
    m = isgri.orbit_background(rev, ph, rate, bkg)
    rules = dict(zip(m.revs.tolist(), m.rule[:, 0].tolist()))
    assert rules == {100: isgri.RULE_MEAN, 104: isgri.RULE_INTERPOLATED,
                     105: isgri.RULE_INTERPOLATED, 110: isgri.RULE_MEAN,
                     112: isgri.RULE_INTERPOLATED}
    at = lambda r: np.flatnonzero(rev == r)  # noqa: E731
    # w_prev = (110 - 104) / (110 - 100) = 0.6: 0.6 * 0.010 + 0.4 * 0.020 = 0.014,
    # error 0.6 * 1e-4 + 0.4 * 2e-4 = 1.4e-4 (linear interpolation of the uncertainty).
    np.testing.assert_allclose(m.model[at(104), 0], 0.014, rtol=1e-12)
    np.testing.assert_allclose(m.model_err[at(104), 0], 1.4e-4, rtol=1e-10)
    np.testing.assert_allclose(m.model[at(105), 0], 0.5 * 0.010 + 0.5 * 0.020, rtol=1e-12)
    np.testing.assert_allclose(m.model[at(112), 0], 0.020, rtol=1e-12)  # nearest at the end
    np.testing.assert_allclose(m.model_err[at(112), 0], 2e-4, rtol=1e-10)
    i104 = list(m.revs).index(104)
    assert (m.prev_rev[i104, 0], m.next_rev[i104, 0]) == (100, 110)


def test_slope_filter_and_no_calibration():
    p = 0.2 + 0.05 * np.arange(10)
    steep = _orbit(50, p, 0.01 + 3e-3 * p, True)  # alpha = 3e-3 > 1e-3: rejected
    ok = _orbit(60, p, 0.02 - 5e-4 * p, True)  # inside (-2e-3, 1e-3)
    gal = _orbit(55, [0.5], [0.0], False)
    rev, ph, rate, bkg = _stack(steep, ok, gal)
    m = isgri.orbit_background(rev, ph, rate, bkg)
    assert m.rejected.tolist() == [True, False, False]
    assert not m.usable[rev == 50].any() and np.all(m.model[rev == 50] == 0)
    # orbit 55 is interpolated from 60 only (50 is no calibrator)
    np.testing.assert_allclose(m.model[rev == 55, 0], 0.02 - 5e-4 * 0.5, rtol=1e-12)
    # slope filter applies in any band -> rejected in all
    two = np.stack([rate, np.where(rev == 50, 0.01, rate)], axis=1)
    m2 = isgri.orbit_background(rev, ph, two, bkg)
    assert m2.rejected[0] and (m2.rule[0] == isgri.RULE_NONE).all()
    with pytest.raises(ValueError, match="no calibrated orbit"):
        isgri.orbit_background(*_stack(steep, gal))


def test_sigma_clipping_hand_computed():
    x = np.r_[np.zeros(20), 10.0]
    # mean 0.476, sd 2.13: |10 - 0.476| = 9.52 > 4 x 2.13 -> clipped; then sd = 0, zeros kept.
    keep = isgri.sigma_clip_groups(x, nsigma=4.0)
    assert keep.tolist() == [True] * 20 + [False]
    assert isgri.sigma_clip_groups(x, nsigma=5.0).all()  # 9.52 < 5 x 2.13 = 10.65
    # groups are independent: the same value in a wide group survives
    y = np.r_[x, np.linspace(-20, 20, 21)]
    g = np.r_[np.zeros(21), np.ones(21)]
    keep = isgri.sigma_clip_groups(y, g, nsigma=4.0)
    assert keep[:20].all() and not keep[20] and keep[21:].all()
    # iterative: a second outlier hidden by the first is removed in the next pass
    z = np.r_[np.tile([-1.0, 1.0], 50), 8.0, 60.0]
    keep = isgri.sigma_clip_groups(z, nsigma=3.0)
    assert keep[:100].all() and not keep[100] and not keep[101]
    # orbit light curve: orbit 2 has a step, orbit 5 has no ScWs (kept, no data)
    oi = np.repeat(np.arange(20), 3)
    resid = np.tile([0.1, -0.1, 0.0], 20) + 0.01 * (oi % 3)
    resid[oi == 2] += 5.0
    mask = oi != 5
    keep_o, lc, has = isgri.orbit_residual_clip(oi, resid, mask, 20, nsigma=3.0)
    assert not keep_o[2] and keep_o[5] and not has[5] and keep_o.sum() == 19
    assert lc[2] == pytest.approx(5.0 + 0.02)


def test_crab_cubic_against_polyfit():
    rng = np.random.default_rng(1)
    revs = np.sort(rng.choice(np.arange(70, 2740), 30, replace=False))
    rows_rev, rows_off, rows_rate = [], [], []
    truth = lambda r: 4e-3 * (1 - 0.05 * (r - 70) / 2670 - 0.3 * ((r - 70) / 2670) ** 3)  # noqa
    for k, r in enumerate(revs):
        n = 9 if k == 0 else 14  # the first orbit has too few Crab ScWs
        off = np.r_[rng.uniform(0, 4.4, n), [6.0, 7.0]]  # two off-axis ScWs are excluded
        rate = truth(r) * (1 + rng.normal(0, 0.02)) * np.r_[np.ones(n), [0.5, 0.3]]
        rows_rev.append(np.full(n + 2, r))
        rows_off.append(off)
        rows_rate.append(rate)
    rev, off, rate = map(np.concatenate, (rows_rev, rows_off, rows_rate))
    cal = isgri.crab_calibration(rev, off, rate[:, None], ("25_60",))
    assert cal.orbit_revs.tolist() == revs[1:].tolist()
    orbit_rate = np.array([rate[(rev == r) & (off < 4.5)].mean() for r in revs[1:]])
    np.testing.assert_allclose(cal.orbit_rate[:, 0], orbit_rate, rtol=1e-12)
    coef = np.polyfit(revs[1:].astype(float), orbit_rate, 3)
    grid = np.linspace(70, 2740, 50)
    np.testing.assert_allclose(cal.rate(grid)[:, 0], np.polyval(coef, grid), rtol=1e-9)
    resid = 1000 * (orbit_rate / np.polyval(coef, revs[1:]) - 1)
    assert cal.systematic_mcrab[0] == pytest.approx(resid.std(ddof=1), rel=1e-8)
    # conversion to mCrab: a residual of one Crab rate is 1000 mCrab
    assert isgri.to_mcrab(cal.rate([500])[0, 0], cal.rate([500])[0, 0]) == pytest.approx(1000)
    with pytest.raises(ValueError, match="at least 5"):
        isgri.crab_calibration(rev[rev <= revs[3]], off[rev <= revs[3]],
                               rate[rev <= revs[3], None], ("25_60",))


def _scipy_gw_fit(x, start):
    """Independent reference: the same density with scipy.stats.norm, Nelder-Mead."""
    from scipy.optimize import minimize
    from scipy.stats import norm

    pad = 0.1 * (x.max() - x.min())
    a, b = x.min() - pad, x.max() + pad

    def nll(t):
        mu, sig, flo, fhi = t
        if not (a < mu < b and sig > 0 and flo > 0 and fhi > 0 and flo + fhi < 1):
            return np.inf
        z = norm.cdf((b - mu) / sig) - norm.cdf((a - mu) / sig)
        dens = ((1 - flo - fhi) * norm.pdf(x, mu, sig) / z
                + np.where(x < mu, flo / (mu - a), fhi / (b - mu)))
        return -np.sum(np.log(dens))

    res = minimize(nll, start, method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 20000, "maxfev": 40000})
    return res.x, res.fun, nll


def test_gauss_wings_fit_against_scipy():
    rng = np.random.default_rng(7)
    samples = []
    for n, mu, sig in ((400, 12.0, 3.0), (1500, -4.0, 30.0), (60, 150.0, 25.0)):
        x = rng.normal(mu, sig, n)
        wing = rng.random(n) < 0.08
        x[wing] = rng.uniform(mu - 12 * sig, mu + 20 * sig, wing.sum())
        samples.append(x)
    fits = gauss_wings.fit_gauss_wings(samples + [np.arange(5.0)], min_n=10)
    assert fits[-1].value is None and fits[-1].n == 5 and "5 ScW" in fits[-1].reason
    for x, fit in zip(samples, fits):
        ref, f_ref, nll = _scipy_gw_fit(x, [np.mean(x), np.std(x), 0.1, 0.1])
        ours = nll([fit.value, fit.sigma, fit.f_lo, fit.f_hi])
        # The NLL jumps where mu crosses a data point (a point changes wing), so the optima
        # agree to the size of such a jump (~1e-2 for N = 60), far below the statistical error.
        assert ours <= f_ref + 0.02
        assert fit.value == pytest.approx(ref[0], abs=0.01 * fit.error)
        assert fit.sigma == pytest.approx(ref[1], rel=2e-3)
        assert fit.error == pytest.approx(fit.sigma / math.sqrt(len(x)))
        assert fit.converged


def test_gauss_wings_coverage():
    """Calibration of flux +- 2 sigma/sqrt(N): 64 samples (N = 500) from a Gaussian (mu = 5,
    sigma = 2) with 10 % uniform wings on [-20, 30].  Nominal coverage of a 2-sigma interval is
    95.4 %; the wings cost ~10 % of the information, so ~94.5 % is expected; with 64 draws the
    binomial sd is 2.8 %, tolerance [0.86, 1.0] (the slow injection-recovery test checks the
    whole pipeline over 400 regions per band)."""
    rng = np.random.default_rng(2024)
    samples = []
    for _ in range(64):
        x = rng.normal(5.0, 2.0, 500)
        wing = rng.random(500) < 0.10
        x[wing] = rng.uniform(-20, 30, wing.sum())
        samples.append(x)
    fits = gauss_wings.fit_gauss_wings(samples)
    pulls = np.array([(f.value - 5.0) / f.error for f in fits])
    inside = np.mean(np.abs(pulls) < 2)
    assert 0.86 <= inside <= 1.0, inside
    assert abs(np.mean(pulls)) < 0.3
    sig = np.array([f.sigma for f in fits])
    assert abs(np.median(sig) - 2.0) < 0.1


def test_reject_revs_carried_over():
    p = 0.2 + 0.05 * np.arange(10)
    rev, ph, rate, bkg = _stack(_orbit(60, p, 0.02 - 5e-4 * p, True),
                                _orbit(61, p, 0.02 - 5e-4 * p, True))
    m = isgri.orbit_background(rev, ph, rate, bkg, reject_revs=[61])
    assert m.rejected.tolist() == [False, True] and not m.usable[rev == 61].any()
