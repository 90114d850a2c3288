"""BEHR hardness ratios (bkgjax.stats.hardness) against independent references.

The reference posterior is tabulated by brute force from the raw Poisson likelihood (no
mixture expansion): each band's posterior of lambda on a fine grid (the background integrated
numerically on a second grid where it is measured), then
P(HR <= h) = P(lambda_H <= kappa lambda_S), kappa = (1 + h)/(1 - h), by trapezoid integration.
"""

import numpy as np
import pytest
from scipy.special import gammaln

import bkgjax  # noqa: F401  (float64)
from bkgjax.stats import hardness as hd

ONE_SIGMA = 0.6826894921370859


def _trapz_cum(y, x):
    return np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])


def _band_posterior(n, bkg, exposure, prior_shape, area_ratio=None, bkg_prior_shape=1.0,
                    n_grid=20001):
    """Normalised posterior of lambda on a grid, from the likelihood directly.

    Grid in t = sqrt(lambda) (finite integrand also for prior shape 0.5)."""
    scale = (n + 10.0 * np.sqrt(n + 1.0) + 20.0) / exposure
    t = np.linspace(0.0, np.sqrt(scale), n_grid)
    lam = t**2
    with np.errstate(divide="ignore"):
        log_prior = (prior_shape - 1.0) * np.log(np.where(lam > 0, lam, 1.0))
    if area_ratio is None:
        mu = exposure * lam + bkg
        with np.errstate(divide="ignore"):
            loglike = np.where(mu > 0, n * np.log(mu), 0.0 if n == 0 else -np.inf) - mu
        log_post = loglike + log_prior
        dens = np.exp(log_post - np.max(log_post[1:]))
        dens[0] = dens[0] if prior_shape >= 1 else 0.0
    else:
        # background intensity xi integrated on its own grid (s = sqrt(xi))
        xi_scale = (bkg + 10.0 * np.sqrt(bkg + 1.0) + 20.0) / (area_ratio * exposure)
        s = np.linspace(0.0, np.sqrt(xi_scale), 1001)
        xi = s**2
        mu_src = exposure * (lam[:, None] + xi[None, :])
        mu_bkg = area_ratio * exposure * xi[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_l = (np.where(mu_src > 0, n * np.log(mu_src), 0.0 if n == 0 else -np.inf) - mu_src
                     + np.where(mu_bkg > 0, bkg * np.log(mu_bkg), 0.0 if bkg == 0 else -np.inf)
                     - mu_bkg
                     + np.where(xi > 0, (bkg_prior_shape - 1.0) * np.log(xi), 0.0)[None, :])
        top = np.max(log_l[np.isfinite(log_l)])
        inner = np.trapezoid(np.exp(log_l - top) * 2.0 * s[None, :], s, axis=1)
        dens = inner * np.exp(log_prior)
        dens[0] = dens[0] if prior_shape >= 1 else 0.0
    dens_t = dens * 2.0 * t  # density in t
    norm = np.trapezoid(dens_t, t)
    cdf = _trapz_cum(dens_t / norm, t)
    return lam, dens / norm, cdf


def _reference_hr_cdf(h, soft, hard):
    lam_s, dens_s, _ = soft
    lam_h, _, cdf_h = hard
    t = np.sqrt(lam_s)
    out = []
    for hh in np.atleast_1d(h):
        kappa = (1.0 + hh) / (1.0 - hh)
        f_h = np.interp(kappa * lam_s, lam_h, cdf_h, right=1.0)
        out.append(np.trapezoid(dens_s * f_h * 2.0 * t, t))
    return np.array(out)


CASES = [
    # known background model (survey case), different exposures, flat prior
    dict(counts=(10, 3), bkg=(1.3, 2.1), exposure=(1e5, 8e4), prior=1.0, area=None),
    # no hard counts at all
    dict(counts=(7, 0), bkg=(0.8, 0.5), exposure=(1e5, 1e5), prior=1.0, area=None),
    # measured background, area ratio 10, Jeffreys prior
    dict(counts=(12, 5), bkg=(30, 8), exposure=(1.3, 1.0), prior=0.5, area=10.0),
]


def _kwargs(case):
    return dict(soft_background=case["bkg"][0], hard_background=case["bkg"][1],
                soft_exposure=case["exposure"][0], hard_exposure=case["exposure"][1],
                soft_prior=case["prior"], hard_prior=case["prior"],
                soft_area_ratio=case["area"], hard_area_ratio=case["area"])


def _reference(case):
    bands = [_band_posterior(case["counts"][i], case["bkg"][i], case["exposure"][i],
                             case["prior"], area_ratio=case["area"]) for i in (0, 1)]
    return bands


@pytest.mark.parametrize("case", CASES, ids=["known-bkg", "zero-hard", "measured-bkg"])
def test_cdf_and_summaries_match_brute_force(case):
    soft, hard = _reference(case)
    h = np.array([-0.95, -0.8, -0.5, -0.2, 0.0, 0.3, 0.6, 0.9])
    ref = _reference_hr_cdf(h, soft, hard)
    ours = hd.hardness_ratio_cdf(h, case["counts"][0], case["counts"][1], **_kwargs(case),
                                 min_window=128)
    np.testing.assert_allclose(ours, ref, atol=2e-4)

    res = hd.hardness_ratio(case["counts"][0], case["counts"][1], **_kwargs(case),
                            min_window=128)
    # equal-tail quantiles and median by inverting the reference CDF on a fine grid
    fine = np.linspace(-1 + 1e-9, 1 - 1e-9, 2001)
    ref_cdf = _reference_hr_cdf(fine, soft, hard)
    for value, prob in ((res.et_lower[0], (1 - ONE_SIGMA) / 2), (res.median[0], 0.5),
                        (res.et_upper[0], (1 + ONE_SIGMA) / 2)):
        assert np.interp(prob, ref_cdf, fine) == pytest.approx(value, abs=2e-3)
    # HPD: contains ONE_SIGMA of the reference posterior; the reference density is equal at
    # both ends (or one end is a support boundary)
    mass = np.interp([res.lower[0], res.upper[0]], fine, ref_cdf)
    assert mass[1] - mass[0] == pytest.approx(ONE_SIGMA, abs=2e-3)
    dens = np.gradient(ref_cdf, fine)
    # the mode: maximum of the reference density (or a boundary)
    i = np.argmax(dens[3:-3]) + 3
    if res.mode[0] in (-1.0, 1.0):
        assert dens[3 if res.mode[0] < 0 else -4] >= dens[3:-3].max() * 0.999
    else:
        assert res.mode[0] == pytest.approx(fine[i], abs=5e-3)
    assert res.lower[0] <= res.mode[0] <= res.upper[0]
    # colour C = log10(S/H) quantiles are HR's, mapped through a decreasing function
    assert res.colour_median[0] == pytest.approx(np.log10((1 - res.median[0])
                                                          / (1 + res.median[0])))
    assert res.colour_lower[0] < res.colour_median[0] < res.colour_upper[0]


def test_zero_hard_counts_is_soft():
    res = hd.hardness_ratio([7], [0], soft_background=0.8, hard_background=0.5,
                            min_window=128)
    assert res.median[0] < -0.5
    assert res.lower[0] == pytest.approx(-1.0, abs=1e-6)  # the HPD reaches the boundary


def test_high_count_limit_matches_gaussian_propagation():
    n_s, n_h, b_s, b_h = 1500, 1000, 15.0, 25.0
    e_s, e_h = 2.0e5, 1.6e5
    res = hd.hardness_ratio(n_s, n_h, soft_background=b_s, hard_background=b_h,
                            soft_exposure=e_s, hard_exposure=e_h, min_window=128)
    s, h = (n_s - b_s) / e_s, (n_h - b_h) / e_h
    sigma = hd.gaussian_hardness_error(s, h, np.sqrt(n_s) / e_s, np.sqrt(n_h) / e_h)
    hr = (h - s) / (h + s)
    assert res.mode[0] == pytest.approx(hr, abs=0.05 * sigma)
    assert res.median[0] == pytest.approx(hr, abs=0.05 * sigma)
    assert 0.5 * (res.et_upper[0] - res.et_lower[0]) == pytest.approx(sigma, rel=0.02)
    assert 0.5 * (res.upper[0] - res.lower[0]) == pytest.approx(sigma, rel=0.02)


def _coverage(n, prior_rate, seed, min_window):
    rng = np.random.default_rng(seed)
    lam_s = rng.gamma(1.0, 1.0 / prior_rate, n)
    lam_h = rng.gamma(1.0, 1.0 / prior_rate, n)
    n_s = rng.poisson(lam_s + 2.0)
    n_h = rng.poisson(lam_h + 3.0)
    res = hd.hardness_ratio(n_s, n_h, soft_background=2.0, hard_background=3.0,
                            prior_rate=prior_rate, min_window=min_window)
    truth = (lam_h - lam_s) / (lam_h + lam_s)
    et = np.mean((res.et_lower <= truth) & (truth <= res.et_upper))
    hpd = np.mean((res.lower <= truth) & (truth <= res.upper))
    # the HPD interval is never longer than the equal-tail one
    assert np.all(res.upper - res.lower <= res.et_upper - res.et_lower + 1e-3)
    return et, hpd


def test_coverage_under_prior_consistent_draws():
    """Bayesian credible intervals have exactly nominal frequentist coverage on average over
    truths drawn from the prior that the analysis uses.  Proper gamma priors (shape 1, mean
    5 counts), known backgrounds 2 and 3 counts; 250 draws, seed 20261121; tolerance 3
    binomial sigma = 3 sqrt(0.68 * 0.32 / 250) = 0.088."""
    n = 250
    et, hpd = _coverage(n, 0.2, 20261121, 32)
    tol = 3.0 * np.sqrt(ONE_SIGMA * (1 - ONE_SIGMA) / n)
    assert et == pytest.approx(ONE_SIGMA, abs=tol), et
    assert hpd == pytest.approx(ONE_SIGMA, abs=tol), hpd


@pytest.mark.slow
def test_coverage_under_prior_consistent_draws_large():
    """As above with 2000 draws (mean 10 counts), tolerance 3 sigma = 0.031."""
    n = 2000
    et, hpd = _coverage(n, 0.1, 7, 32)
    tol = 3.0 * np.sqrt(ONE_SIGMA * (1 - ONE_SIGMA) / n)
    assert et == pytest.approx(ONE_SIGMA, abs=tol), et
    assert hpd == pytest.approx(ONE_SIGMA, abs=tol), hpd


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="soft band: counts"):
        hd.hardness_ratio([-1], [2])
    with pytest.raises(ValueError, match="hard band: counts must be integer"):
        hd.hardness_ratio([1], [2.5])
    with pytest.raises(ValueError, match="hard band: exposure must be > 0"):
        hd.hardness_ratio([1], [2], hard_exposure=0.0)
    with pytest.raises(ValueError, match="background has non-finite"):
        hd.hardness_ratio([1], [2], soft_background=np.nan)
    with pytest.raises(ValueError, match="level"):
        hd.hardness_ratio([1], [2], level=1.0)


def test_mixture_weights_sum_to_one_and_match_direct_formula():
    """ln w_j for the known-background case, against the binomial expansion written out."""
    log_w, rate = hd.band_log_weights([5], [2.0], exposure=3.0, prior_shape=1.0)
    j = np.arange(6)
    direct = (gammaln(6) - gammaln(j + 1) - gammaln(6 - j) + (5 - j) * np.log(2.0)
              + j * np.log(3.0) + gammaln(j + 1.0) - (j + 1.0) * np.log(3.0))
    direct -= np.log(np.exp(direct).sum())
    np.testing.assert_allclose(log_w[0], direct, atol=1e-12)
    assert rate[0] == 3.0
