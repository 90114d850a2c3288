"""Epoch-to-epoch variability tests (bkgjax.stats.variability) vs scipy references and
calibration on constant sources."""

import numpy as np
import pytest
from scipy import optimize, stats

import bkgjax  # noqa: F401  (float64)
from bkgjax.stats import variability as var

S90 = stats.norm.ppf(0.95)  # 1.645: Gehrels S of a two-sided 90 % interval


def _gehrels(n, s):
    """Gehrels (1986) eqs. (9) and (12) written out (Table 3: S = 1.645 -> beta 0.031,
    gamma -2.50)."""
    n = np.asarray(n, float)
    upper = (n + 1) * (1 - 1 / (9 * (n + 1)) + s / (3 * np.sqrt(n + 1))) ** 3
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(n > 0, n * (1 - 1 / (9 * n) - s / (3 * np.sqrt(n))
                                     + 0.031 * n ** -2.5) ** 3, 0.0)
    return lower, upper


def test_paper_test_matches_hand_computation():
    counts = np.array([[40, 15, 22]])
    bkg = np.array([[5.0, 4.0, 6.0]])
    expo = np.array([[1.0e5, 0.8e5, 1.2e5]])
    res = var.pairwise_rate_test(counts, bkg, expo)
    assert res.pairs == ((0, 1), (0, 2), (1, 2))
    lo, up = _gehrels(counts[0], S90)
    rate = (counts[0] - bkg[0]) / expo[0]
    for col, (i, j) in enumerate(res.pairs):
        d = rate[i] - rate[j]
        hi_idx, lo_idx = (i, j) if d >= 0 else (j, i)
        err = np.hypot((counts[0, hi_idx] - lo[hi_idx]) / expo[0, hi_idx],
                       (up[lo_idx] - counts[0, lo_idx]) / expo[0, lo_idx])
        assert res.delta_rate[0, col] == pytest.approx(d, rel=1e-12)
        assert res.error[0, col] == pytest.approx(err, rel=1e-6)
        z = abs(d) / err
        assert res.statistic[0, col] == pytest.approx(z, rel=1e-6)
        assert res.p_value[0, col] == pytest.approx(2 * stats.norm.sf(S90 * z), rel=1e-6)
        assert res.variable_pair[0, col] == (z > 1)
    assert res.variable[0] == res.variable_pair[0].any()


def _exact_reference(n1, n2, b1, b2, t1, t2):
    """Constrained MLE by brentq on the score, then brute-force enumeration with scipy."""
    def score(r):
        return n1 * t1 / (b1 + r * t1) + n2 * t2 / (b2 + r * t2) - (t1 + t2)
    tiny = 1e-12 * (n1 + n2 + 1) / max(t1, t2)
    hi = 10 * (n1 + n2 + 1) / min(t1, t2)
    r = 0.0 if score(tiny) <= 0 else optimize.brentq(score, tiny, hi, xtol=1e-300, rtol=1e-14)
    mu1, mu2 = b1 + r * t1, b2 + r * t2
    k = np.arange(0, 400)
    p1, p2 = stats.poisson.pmf(k, mu1), stats.poisson.pmf(k, mu2)
    d_obs = abs((n1 - b1) / t1 - (n2 - b2) / t2)
    d = (k[:, None] - b1) / t1 - (k[None, :] - b2) / t2
    return float(np.sum(np.outer(p1, p2) * (np.abs(d) >= d_obs * (1 - 1e-12)))), r


@pytest.mark.parametrize("n1,n2,b1,b2,t1,t2", [
    (12, 3, 2.0, 2.5, 1.0e5, 1.2e5),
    (0, 7, 1.0, 1.0, 5.0e4, 5.0e4),
    (5, 5, 0.0, 0.0, 1.0, 2.0),
    (1, 2, 3.0, 3.5, 1.0e4, 1.0e4),   # fewer counts than background: r_hat = 0
    (60, 90, 10.0, 12.0, 2.0e5, 2.1e5),
])
def test_poisson_exact_matches_scipy_enumeration(n1, n2, b1, b2, t1, t2):
    ref, r_ref = _exact_reference(n1, n2, b1, b2, t1, t2)
    res = var.poisson_pairwise_test([[n1, n2]], [[b1, b2]], [[t1, t2]])
    assert res.p_value[0, 0] == pytest.approx(ref, rel=1e-9, abs=1e-14)
    r = np.asarray(var._common_rate(*(np.float64(x) for x in (n1, n2, b1 / t1, b2 / t2,
                                                                t1, t2))))
    assert r == pytest.approx(r_ref, rel=1e-8, abs=1e-15)


def test_unobserved_epoch_is_not_tested():
    res = var.poisson_pairwise_test([[10, 3, 4]], [[1, 1, 1]], [[1e4, 0.0, 1e4]])
    assert res.tested[0].tolist() == [False, True, False]
    assert np.isnan(res.p_value[0, 0]) and not res.variable_pair[0, 0]
    res_g = var.pairwise_rate_test([[10, 3, 4]], [[1, 1, 1]], [[1e4, 0.0, 1e4]])
    assert res_g.tested[0].tolist() == [False, True, False]
    assert np.isfinite(res_g.min_p[0])


def test_calibration_on_constant_sources():
    """Constant sources, two epochs with different exposures and backgrounds.

    Paper's (Gaussian) test at ~500 counts per epoch: the flagged fraction is 0.10 within
    3 binomial sigma (3 sqrt(0.09/3000) = 0.016).  Exact test at ~15 counts: <= 0.10 + 0.016
    (a discrete test is conservative) and >= 0.06.  Seed 4."""
    rng = np.random.default_rng(4)
    n = 3000
    tol = 3 * np.sqrt(0.1 * 0.9 / n)
    expo = np.array([1.0e5, 1.5e5])
    bkg = np.array([50.0, 80.0])
    rate = 4.5e-3
    counts = rng.poisson(bkg + rate * expo, size=(n, 2))
    frac = var.pairwise_rate_test(counts, bkg, expo).variable.mean()
    assert frac == pytest.approx(0.10, abs=tol), frac

    bkg_low = np.array([3.0, 5.0])
    counts = rng.poisson(bkg_low + 1.0e-4 * expo, size=(n, 2))
    res = var.poisson_pairwise_test(counts, bkg_low, expo)
    frac = res.variable.mean()
    assert 0.06 <= frac <= 0.10 + tol, frac
    # p-values of a valid test: P(p <= alpha) <= alpha at other levels too
    for alpha in (0.05, 0.2, 0.5):
        assert np.mean(res.p_value[:, 0] <= alpha) <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / n)


def test_a_varying_source_is_flagged():
    res = var.poisson_pairwise_test([[80, 20]], [[5, 5]], [[1e5, 1e5]])
    assert res.variable[0] and res.p_value[0, 0] < 1e-6
    res = var.pairwise_rate_test([[80, 20]], [[5, 5]], [[1e5, 1e5]])
    assert res.variable[0]


def test_bad_input():
    with pytest.raises(ValueError, match=">= 2 epochs"):
        var.pairwise_rate_test([[3]], [[1]], [[1]])
    with pytest.raises(ValueError, match="counts must be integers"):
        var.poisson_pairwise_test([[3.5, 2]], [[1, 1]], [[1, 1]])
    with pytest.raises(ValueError, match="background must be >= 0"):
        var.poisson_pairwise_test([[3, 2]], [[-1, 1]], [[1, 1]])
    with pytest.raises(ValueError, match="exposure has 1 non-finite"):
        var.pairwise_rate_test([[3, 2]], [[1, 1]], [[np.nan, 1]])
