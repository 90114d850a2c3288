"""pgstat (XSPEC's Poisson data with a Gaussian background, background profiled out per bin)
against an independent numerical profile (SciPy), XSPEC's own special cases, the sigma -> 0
limit, finite gradients at zero counts, and a simulation calibration."""

import jax
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import bkgjax  # noqa: F401  (enables float64)
from bkgjax.stats import cstat, pgstat, pgstat_background


def _numerical_pgstat(mu, s, b, sigma, r):
    """2 * min over g of [y - S ln y + (B - r g)^2 / (2 sigma^2)] - 2 S (1 - ln S), y = mu + g,
    found by a bounded scalar search (XSPEC manual, Appendix B, written in source-region
    counts).  For S > 0 the search runs over y > 0; for S = 0 over g unconstrained, as XSPEC's
    closed form for that case is the unconstrained minimum."""
    def objective_y(y):
        return y - s * np.log(y) + (b - r * (y - mu)) ** 2 / (2 * sigma**2)

    if s > 0:
        # the minimum lies below the value where the Gaussian term alone would put it plus
        # a few widths; scan a generous bracket in log space, then refine
        hi = 10 * (mu + abs(b) / r + s + sigma / r) + 10
        grid = np.geomspace(1e-9 * s, hi, 4001)
        k = int(np.argmin([objective_y(y) for y in grid]))
        lo_y, hi_y = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
        res = minimize_scalar(objective_y, bounds=(lo_y, hi_y), method="bounded",
                              options={"xatol": 1e-13 * hi_y})
        best = res.fun
        offset = s - s * np.log(s)
    else:
        res = minimize_scalar(lambda g: mu + g + (b - r * g) ** 2 / (2 * sigma**2),
                              bracket=(-1.0, 1.0), options={"xtol": 1e-12})
        best = res.fun
        offset = 0.0
    return 2 * (best - offset)


def _random_bins(seed=7, n=60):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.05, 40.0, n)
    r = rng.uniform(0.2, 8.0, n)
    s = rng.poisson(rng.uniform(0.5, 30.0, n)).astype(float)
    b = rng.uniform(0.0, 60.0, n)
    sigma = rng.uniform(0.2, 12.0, n)
    # the edge cases named in XSPEC's manual and code: S = 0, B = 0, tiny and huge sigma
    s[:8] = 0.0
    b[8:16] = 0.0
    sigma[16:24] = 10.0 ** rng.uniform(-6, -3, 8)
    sigma[24:32] = 10.0 ** rng.uniform(2, 4, 8)
    s[32:36], b[32:36] = 0.0, 0.0
    return mu, s, b, sigma, r


def test_equals_numerical_profile_on_random_bins():
    mu, s, b, sigma, r = _random_bins()
    ours = np.asarray(pgstat(mu, s, b, sigma, r))
    numerical = np.array([_numerical_pgstat(*args) for args in zip(mu, s, b, sigma, r)])
    # relative 1e-8 on the value, absolute 1e-7 on near-zero bins
    np.testing.assert_allclose(ours, numerical, rtol=1e-8, atol=1e-7)


def test_special_cases_as_xspec():
    """XSPEC (manual App. B; HEASoft CstatVariants.cxx PGstat::specificPerformB), written
    with t_s = 1, t_b = r: S = 0 -> 2[mu + B/r - sigma^2/(2 r^2)] (unconstrained background,
    negative here); sigma = 0 -> cstat with the background fixed at B/r."""
    mu, b, sigma, r = np.array([3.0, 0.4]), np.array([5.0, 1.0]), np.array([2.0, 3.0]), 2.0
    np.testing.assert_allclose(pgstat(mu, 0.0, b, sigma, r),
                               2 * (mu + b / r - sigma**2 / (2 * r**2)), rtol=1e-14)
    assert float(pgstat(0.4, 0.0, 1.0, 3.0, 2.0)) < 0  # sigma^2 > 2 r B: XSPEC does not clip
    np.testing.assert_allclose(pgstat_background(mu, 0.0, b, sigma, r), b / r - sigma**2 / r**2)
    s = np.array([7.0, 2.0])
    np.testing.assert_allclose(pgstat(mu, s, b, 0.0, r), cstat(mu + b / r, s), rtol=1e-14)


def test_xspec_quadratic_in_f():
    """The profiled background equals the root XSPEC takes of its quadratic in f
    (a f^2 + b f + c = 0, a = t_b^2, b = t_s s^2 - t_b B + t_b^2 m, c = t_s s^2 m - S s^2 - t_b B m,
    Numerical Recipes form, the positive root or else c/q), with t_s, t_b not 1."""
    t_s, t_b = 1500.0, 6000.0
    m = np.array([2e-3, 1e-2, 5e-5])  # rates
    s_cts, b_cts, var = np.array([4.0, 20.0, 9.0]), np.array([30.0, 5.0, 60.0]), 25.0
    qa = t_b**2
    qb = t_s * var - t_b * b_cts + t_b**2 * m
    qc = t_s * var * m - s_cts * var - t_b * b_cts * m
    q = -0.5 * (qb + np.sign(qb) * np.sqrt(qb**2 - 4 * qa * qc))
    f = np.where(q / qa < 0, qc / q, q / qa)
    ours = np.asarray(pgstat_background(t_s * m, s_cts, b_cts, np.sqrt(var), t_b / t_s)) / t_s
    np.testing.assert_allclose(ours, f, rtol=1e-10)
    xspec = 2 * (t_s * (m + f) - s_cts * np.log(t_s * (m + f))
                 + 0.5 * (b_cts - t_b * f) ** 2 / var - s_cts * (1 - np.log(s_cts)))
    np.testing.assert_allclose(pgstat(t_s * m, s_cts, b_cts, np.sqrt(var), t_b / t_s), xspec,
                               rtol=1e-10)


@pytest.mark.parametrize("sigma", [1e-2, 1e-5, 1e-8])
def test_small_sigma_tends_to_cstat_with_fixed_background(sigma):
    mu, s, b, r = np.array([0.3, 4.0, 12.0]), np.array([2.0, 0.0, 15.0]), np.array([6.0, 3.0, 0.0]), 3.0
    fixed = np.asarray(cstat(mu + b / r, s))
    # the difference is O(sigma^2): the Gaussian term and the shift of the background
    np.testing.assert_allclose(pgstat(mu, s, b, sigma, r), fixed, rtol=0, atol=20 * sigma**2)


# (mu, S, B, sigma); mu = B = sigma = 0 with S > 0 is +inf (next test), as cstat
ZERO_CASES = [(mu, s, b, sigma) for mu in (0.0, 0.7)
              for s, b, sigma in ((0.0, 0.0, 1.0), (0.0, 4.0, 2.0), (5.0, 0.0, 1.5),
                                  (0.0, 0.0, 0.0), (3.0, 0.0, 0.0), (0.0, 7.0, 0.0))
              if not (mu == 0 and s > 0 and b == 0 and sigma == 0)]


@pytest.mark.parametrize("mu, s, b, sigma", ZERO_CASES)
def test_zero_counts_value_and_gradient_finite(mu, s, b, sigma):
    value, grad = jax.value_and_grad(lambda m: pgstat(m, s, b, sigma, 2.0))(mu)
    assert np.isfinite(float(value)) and np.isfinite(float(grad))
    # envelope theorem: d PG / d mu = 2 (1 - S / y) at the profiled y, 2 for S = 0
    y = mu + float(pgstat_background(mu, s, b, sigma, 2.0))
    expected = 2.0 if s == 0 else 2.0 * (1 - s / y)
    assert float(grad) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_model_without_counts_where_counts_seen_is_infinite():
    assert np.isposinf(float(pgstat(0.0, 3.0, 0.0, 0.0, 2.0)))


def test_gradient_matches_finite_differences():
    mu, s, b, sigma, r = _random_bins(seed=3, n=40)
    grad = np.asarray(jax.vmap(jax.grad(pgstat))(mu, s, b, sigma, r))
    h = 1e-6 * np.maximum(mu, 1.0)
    fd = (np.asarray(pgstat(mu + h, s, b, sigma, r))
          - np.asarray(pgstat(mu - h, s, b, sigma, r))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def test_calibration_sum_has_mean_number_of_bins():
    """Data simulated from the model (Poisson source, Gaussian background with the stated
    error), statistic at the true source model: two measurements and one profiled nuisance
    per bin leave one degree of freedom, so the sum has mean ~ n_bins (chi2-like).  200 bins,
    200 spectra: the standard error of the mean is sqrt(2*200/200) = 1.4, the tolerance 3 %
    (6) also covers the small-count bias (~1 % at these 5-80 counts per bin)."""
    rng = np.random.default_rng(20240601)
    n_bins, n_sims, r = 200, 200, 3.0
    mu = rng.uniform(5.0, 50.0, n_bins)  # source counts
    g = rng.uniform(5.0, 30.0, n_bins)  # background counts in the source region
    sigma = np.sqrt(r * g)  # error of the background estimate r*g
    s = rng.poisson(mu + g, (n_sims, n_bins)).astype(float)
    b = rng.normal(r * g, sigma, (n_sims, n_bins))
    totals = np.asarray(pgstat(mu, s, b, sigma, r)).sum(axis=1)
    assert abs(totals.mean() - n_bins) < 0.03 * n_bins
    assert totals.std() == pytest.approx(np.sqrt(2 * n_bins), rel=0.2)
