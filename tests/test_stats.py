"""Per-bin statistics against Sherpa 4.19 (tests/reference), SciPy and analytic values."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp
import scipy.stats as ss

import bkgjax  # noqa: F401  (enables float64)
from bkgjax.stats import (
    cash,
    cstat,
    det_ml,
    false_probability,
    gehrels_lower,
    gehrels_upper,
    log_false_probability,
    poisson_interval,
    poisson_loglike,
    poisson_lower_limit,
    poisson_upper_limit,
    wstat,
    xlogy_safe,
)

REFERENCE = json.loads((Path(__file__).parent / "reference" / "sherpa_reference.json").read_text())


# ------------------------------------------------------------------------------ W-stat branches
@pytest.mark.parametrize("case", ["base", "extra_branches", "areascal_variant"])
def test_per_bin_statistics_match_sherpa(case):
    ref = REFERENCE["wstat_synthetic"][case]
    inp = ref["inputs"]
    src = np.array(inp["src_counts"])
    bkg = np.array(inp["bkg_counts"])
    mu = np.array(inp["model_counts"])
    area_s = inp["src_areascal"] or 1.0
    area_b = inp["bkg_areascal"] or 1.0
    ratio = (inp["bkg_exposure"] * inp["bkg_backscal"] * area_b) / (
        inp["src_exposure"] * inp["src_backscal"] * area_s)
    ours_w = np.asarray(wstat(mu, src, bkg, ratio))
    np.testing.assert_allclose(ours_w, ref["results"]["wstat"]["per_bin_2x_contribution"],
                               rtol=1e-10, atol=1e-12)
    for name, fn in (("cash", cash), ("cstat", cstat)):
        sherpa = np.array(ref["results"][name]["per_bin_2x_contribution"])
        ours = np.asarray(fn(mu, src))
        # Sherpa replaces model values <= 0 by 1e-25; we do not truncate (documented).
        truncated = mu <= 0
        np.testing.assert_allclose(ours[~truncated], sherpa[~truncated], rtol=1e-10, atol=1e-12)
        assert np.all(ours[truncated & (src == 0)] == 0.0)
        assert np.all(np.isposinf(ours[truncated & (src > 0)]))


def test_wstat_special_cases_closed_forms():
    """XSPEC manual Appendix B: S=0 and B=0 branches in closed form."""
    t_s, t_b = 1000.0, 8000.0
    r = t_b / t_s
    m = np.array([0.2, 0.7, 3.0])  # source model counts t_s*m_i
    bkg = np.array([5.0, 0.0, 2.0])
    # S = 0: t_s m - B ln(t_b/(t_s+t_b))
    expected = 2 * (m - bkg * np.log(t_b / (t_s + t_b)))
    np.testing.assert_allclose(wstat(m, np.zeros(3), bkg, r), expected, rtol=1e-12)
    # B = 0, model below S/(1+r): -t_b m - S ln(t_s/(t_s+t_b)); above: t_s m + S(ln S - ln(t_s m) - 1)
    src = np.array([9.0, 9.0])
    mu = np.array([0.5, 3.0])  # switch at S/(1+r) = 1
    below = 2 * (-r * mu[0] - src[0] * np.log(t_s / (t_s + t_b)))
    above = 2 * (mu[1] + src[1] * (np.log(src[1]) - np.log(mu[1]) - 1))
    np.testing.assert_allclose(wstat(mu, src, np.zeros(2), r), [below, above], rtol=1e-12)


# ------------------------------------------------------------------------------ zero counts
def test_zero_counts_value_and_gradient_are_finite():
    # plain xlogy: value fine, gradient NaN at (0, 0) -- the failure mode we guard against
    naive = jax.grad(lambda m: jax.scipy.special.xlogy(0.0, m))(0.0)
    assert np.isnan(naive)
    assert float(jax.grad(lambda m: xlogy_safe(0.0, m))(0.0)) == 0.0
    for fn in (cash, cstat):
        assert float(fn(0.0, 0.0)) == 0.0
        assert float(jax.grad(lambda m, f=fn: f(m, 0.0))(0.0)) == 2.0  # d(2M)/dM
    assert float(poisson_loglike(0.0, 0.0)) == 0.0
    assert float(jax.grad(lambda m: poisson_loglike(m, 0.0))(0.0)) == -1.0
    # wstat: all zero, model zero, source zero, background zero
    for s, b, m in [(0.0, 0.0, 0.0), (0.0, 3.0, 0.0), (4.0, 0.0, 0.0), (0.0, 0.0, 1.0),
                    (4.0, 0.0, 0.4), (4.0, 0.0, 0.5)]:
        value, grad = jax.value_and_grad(lambda mm, s=s, b=b: wstat(mm, s, b, 4.0))(m)
        assert np.isfinite(value) and np.isfinite(grad), (s, b, m, value, grad)


def test_cstat_grad_matches_finite_difference():
    counts = jnp.array([0.0, 1.0, 3.0, 10.0])
    mu = jnp.array([0.3, 1.5, 2.0, 12.0])
    g = jax.grad(lambda x: cstat(x, counts).sum())(mu)
    eps = 1e-6
    fd = np.array([(float(cstat(mu.at[i].add(eps), counts).sum())
                    - float(cstat(mu.at[i].add(-eps), counts).sum())) / (2 * eps)
                   for i in range(4)])
    np.testing.assert_allclose(g, fd, rtol=1e-7)
    np.testing.assert_allclose(g, 2 * (1 - counts / mu), rtol=1e-12)


def test_poisson_loglike_matches_scipy():
    k = np.array([0, 1, 2, 7, 50, 1000])
    mu = np.array([0.1, 1.0, 3.3, 7.0, 42.0, 990.0])
    np.testing.assert_allclose(poisson_loglike(mu, k.astype(float)), ss.poisson.logpmf(k, mu),
                               rtol=1e-12)
    # cash and cstat differ from -2 lnP only by data terms
    np.testing.assert_allclose(cash(mu, k) + 2 * sp.gammaln(k + 1.0),
                               -2 * ss.poisson.logpmf(k, mu), rtol=1e-12)
    np.testing.assert_allclose(cstat(mu, k), -2 * (ss.poisson.logpmf(k, mu)
                                                   - ss.poisson.logpmf(k, np.maximum(k, 1e-300))),
                               rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------ intervals
N = np.array([0, 1, 2, 3, 5, 10, 20, 50, 100, 300, 1000])


@pytest.mark.parametrize("sigma", [1.0, 1.645])
def test_exact_limits_match_scipy(sigma):
    cl = ss.norm.cdf(sigma)
    up = sp.gammainccinv(N + 1, 1 - cl)
    low = np.where(N > 0, sp.gammaincinv(np.maximum(N, 1), 1 - cl), 0.0)
    np.testing.assert_allclose(poisson_upper_limit(N, sigma=sigma), up, rtol=1e-10)
    np.testing.assert_allclose(poisson_lower_limit(N, sigma=sigma), low, rtol=1e-10)


@pytest.mark.parametrize("sigma", [1.0, 1.645])
def test_gehrels_approximations_within_stated_accuracy(sigma):
    """Gehrels (1986): eq. (9) and eq. (12) reproduce his exact tables to ~1-2 %."""
    exact_up = np.asarray(poisson_upper_limit(N, sigma=sigma))
    exact_lo = np.asarray(poisson_lower_limit(N, sigma=sigma))
    np.testing.assert_allclose(gehrels_upper(N, sigma), exact_up, rtol=0.01)
    np.testing.assert_allclose(gehrels_lower(N[1:], sigma), exact_lo[1:], rtol=0.02)
    assert float(gehrels_lower(0, sigma)) == 0.0
    # Gehrels' Table 1 values (n = 0, 1, 10 at S = 1): upper 1.841, 3.300, 14.27
    if sigma == 1.0:
        np.testing.assert_allclose(exact_up[[0, 1, 5]], [1.841, 3.300, 14.27], atol=6e-3)
        np.testing.assert_allclose(exact_lo[[1, 5]], [0.173, 6.891], atol=6e-3)


def test_gehrels_lower_rejects_unknown_sigma():
    with pytest.raises(ValueError, match="Table 3"):
        gehrels_lower(5, sigma=1.5)


def test_poisson_interval_central():
    lo, hi = poisson_interval(np.array([10.0]), 0.9)
    np.testing.assert_allclose([lo[0], hi[0]], [ss.chi2.ppf(0.05, 20) / 2,
                                                 ss.chi2.ppf(0.95, 22) / 2], rtol=1e-9)


# ------------------------------------------------------------------------------ detection
def test_false_probability_is_poisson_tail():
    counts = np.array([0, 1, 3, 10, 25, 60])
    bkg = np.array([0.5, 0.5, 1.2, 2.0, 8.0, 20.0])
    ref = ss.poisson.sf(counts - 1, bkg)  # P(X >= N)
    np.testing.assert_allclose(false_probability(counts, bkg), ref, rtol=1e-10)
    np.testing.assert_allclose(false_probability(counts, bkg), np.where(
        counts > 0, sp.gammainc(np.maximum(counts, 1), bkg), 1.0), rtol=1e-12)
    np.testing.assert_allclose(det_ml(counts[1:], bkg[1:]), -np.log(ref[1:]), rtol=1e-10)
    # smoothed (non-integer) counts are allowed, as in the paper's IDL igamma
    np.testing.assert_allclose(false_probability(3.7, 1.1), sp.gammainc(3.7, 1.1), rtol=1e-12)


def test_det_ml_beyond_float64_underflow():
    """Where P < 1e-280 the log is still right: compare with a log-sum-exp of the pmf tail."""
    for n, b in [(170, 1.0), (400, 3.0), (2000, 10.0)]:
        k = np.arange(n, n + 400)
        ref = -sp.logsumexp(ss.poisson.logpmf(k, b))
        assert np.isfinite(float(det_ml(n, b)))
        np.testing.assert_allclose(float(det_ml(n, b)), ref, rtol=1e-6)
        assert float(log_false_probability(n, b)) < 0


def test_statistics_vmap_and_jit_agree_with_eager():
    rng = np.random.default_rng(1)
    mu = rng.uniform(0.1, 20, (5, 30))
    d = rng.poisson(mu).astype(float)
    b = rng.poisson(mu / 2).astype(float)
    for fn in (lambda m, c: cstat(m, c), lambda m, c: wstat(m, c, b[0], 2.0)):
        eager = np.stack([np.asarray(fn(mu[i], d[i])) for i in range(5)])
        # jit fuses operations: per-bin values that are differences of O(10) terms agree to
        # rounding (~1e-15 absolute), not bit-for-bit
        np.testing.assert_allclose(jax.jit(jax.vmap(fn))(mu, d), eager, rtol=1e-12, atol=1e-12)
