"""NumPyro posteriors: same likelihood as the fits, arviz groups, convergence, band fluxes."""

import arviz as az
import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401
from bkgjax.cli import demo_spectrum_path
from bkgjax.fit import fit, load, predicted_counts, statistic_per_bin
from bkgjax.infer import PoissonStatistic, posterior_flux, run_nuts
from bkgjax.spectral import flux_from_covariance, powerlaw
from bkgjax.stats import poisson_loglike


@pytest.fixture(scope="module")
def dgtau():
    return load(demo_spectrum_path(), erange=(0.5, 7.0))


def test_likelihood_is_the_fit_statistic(dgtau):
    """log_prob of the counts site = -C/2 + const (cstat) and -W/2 (wstat): one source."""
    model = powerlaw(PhoIndex=1.3, norm=1.5e-5)
    theta = jnp.asarray(list(model.values().values()))
    mu = predicted_counts(model.structure, theta, dgtau)
    lp_c = PoissonStatistic(mu, "cstat").log_prob(dgtau.counts)
    np.testing.assert_allclose(lp_c, poisson_loglike(mu, dgtau.counts), rtol=1e-14)
    saturated = poisson_loglike(jnp.maximum(dgtau.counts, 1e-300), dgtau.counts)
    np.testing.assert_allclose(-2 * (lp_c - saturated),
                               statistic_per_bin("cstat", mu, dgtau), rtol=1e-9, atol=1e-9)
    lp_w = PoissonStatistic(mu, "wstat", dgtau.background_counts,
                            dgtau.background_ratio).log_prob(dgtau.counts)
    np.testing.assert_allclose(-2 * lp_w, statistic_per_bin("wstat", mu, dgtau), rtol=1e-14)


def test_run_nuts_returns_converged_inference_data(dgtau):
    model = powerlaw(PhoIndex=1.5, norm=1e-5)
    idata = run_nuts(model, dgtau, "cstat", num_warmup=300, num_samples=500, num_chains=4,
                     seed=3)
    for group in ("posterior", "posterior_predictive", "log_likelihood", "sample_stats",
                  "observed_data"):
        assert group in idata.groups(), group
    names = ["powerlaw.PhoIndex", "powerlaw.norm"]
    summary = az.summary(idata, var_names=names, round_to="none")
    assert (summary["r_hat"] < 1.01).all(), summary
    assert (summary["ess_bulk"] > 400).all(), summary
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 500
    assert idata.log_likelihood["counts"].shape[-1] == dgtau.n_bins
    assert int(idata.sample_stats["diverging"].sum()) == 0
    # flat priors: posterior mean close to the MLE, sd close to the covariance error
    mle = fit(model, dgtau, "cstat", errors="covariance")
    for name in names:
        mean, sd = float(summary.loc[name, "mean"]), float(summary.loc[name, "sd"])
        assert abs(mean - mle.values[name]) < 0.25 * mle.errors[name]
        np.testing.assert_allclose(sd, mle.errors[name], rtol=0.15)
    # posterior band flux agrees with the delta-method flux error
    flux = posterior_flux(idata, mle.model, 0.5, 7.0)
    assert flux.shape == (4, 500)
    value, sigma = flux_from_covariance(mle.model, mle.values, mle.covariance, mle.free_names,
                                        0.5, 7.0)
    np.testing.assert_allclose(np.median(flux), float(value), rtol=0.03)
    np.testing.assert_allclose(np.std(flux), float(sigma), rtol=0.15)
    # posterior predictive: observed total counts is typical of the replicas
    replicas = np.asarray(idata.posterior_predictive["counts"]).reshape(-1, dgtau.n_bins).sum(1)
    p_value = (replicas >= float(dgtau.counts.sum())).mean()
    assert 0.05 < p_value < 0.95
