"""NumPyro posteriors: same likelihood as the fits, arviz groups, convergence, band fluxes."""

from functools import partial

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer.util import potential_energy

import bkgjax  # noqa: F401
from bkgjax.cli import demo_spectrum_path
from bkgjax.fit import JointModel, fit, load, predicted_counts, statistic_per_bin
from bkgjax.infer import PoissonStatistic, posterior_flux, run_nuts, spectral_model
from bkgjax.infer.numpyro_model import (
    WHITENED_SITE,
    SiteSpec,
    _initial_chains,
    _interior,
    _site_prior,
    _whitening,
    joint_spectral_model,
    whitened_joint_spectral_model,
    whitened_spectral_model,
)
from bkgjax.spectral import flux_from_covariance, parse_model, powerlaw
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


# -- whitened sampling (run_nuts): the same target, starts near the MLE, bright spectra -------

def test_whitened_models_have_the_posterior_of_the_per_parameter_sites(dgtau):
    """run_nuts samples z with u = centre + L z (u: the unconstrained coordinates NumPyro gives
    each parameter site): the potential energy at z equals the per-parameter model's at u,
    for flat priors on intervals, a user prior, frozen parameters, and the joint model."""
    model = (parse_model("powerlaw+gaussian").set("gaussian.LineE", 6.4, frozen=True)
             .set("gaussian.Sigma", 0.05, frozen=True).set("powerlaw.norm", 1.3e-5)
             .set("gaussian.norm", 1e-6).set("powerlaw.PhoIndex", 1.2, prior=dist.Normal(1.0, 0.5)))
    free = [p for p in model.parameters if p.is_free]
    centre = jnp.array([0.3, -55.0, -67.0])  # PhoIndex (real), norms (logit of [0, 1e24])
    scale = jnp.array([[0.1, 0.0, 0.0], [0.05, 0.02, 0.0], [0.0, 0.3, 0.5]])
    for z in np.random.default_rng(1).normal(size=(4, 3)):
        u = centre + scale @ z
        per_site = potential_energy(spectral_model, (model, dgtau, "cstat", dgtau.counts), {},
                                    {p.name: u[k] for k, p in enumerate(free)})
        whitened = potential_energy(whitened_spectral_model,
                                    (model, dgtau, dgtau.counts, centre, scale, "cstat"), {},
                                    {WHITENED_SITE: jnp.asarray(z)})
        np.testing.assert_allclose(whitened, per_site, rtol=1e-12)

    joint = JointModel.create(powerlaw(PhoIndex=1.2, norm=1.3e-5), 2, per_dataset=["norm"])
    sites = tuple(SiteSpec(p.name, p.is_free, p.min, p.max, p.prior) for p in joint.parameters)
    theta = jnp.asarray(list(joint.resolve({}).values()))
    observed = ((dgtau.counts, None), (dgtau.counts, None))
    kw = {"structure": joint.structure, "parameters": sites, "stat": "cstat"}
    centre, scale = jnp.array([0.2, -55.0, -55.1]), jnp.diag(jnp.array([0.05, 0.06, 0.07]))
    for z in np.random.default_rng(2).normal(size=(3, 3)):
        u = centre + scale @ z
        per_site = potential_energy(partial(joint_spectral_model, **kw),
                                    (theta, (dgtau, dgtau), observed), {},
                                    {name: u[k] for k, name in enumerate(joint.free_names)})
        whitened = potential_energy(partial(whitened_joint_spectral_model, **kw),
                                    (theta, centre, scale, (dgtau, dgtau), observed), {},
                                    {WHITENED_SITE: jnp.asarray(z)})
        np.testing.assert_allclose(whitened, per_site, rtol=1e-12)


def test_chains_start_near_the_mle_whatever_the_limits(dgtau):
    """Starts are MLE + covariance draws in unconstrained space: never pushed to a margin of
    the interval's width (norm in [0, 1e24] used to start at 1e15), and finite for an MLE at
    a limit."""
    model = powerlaw(PhoIndex=1.5, norm=1e-5)
    best = fit(model, dgtau, "cstat", errors="covariance")
    init = _initial_chains(model, best, jax.random.PRNGKey(0), 64)
    for name in model.free_names:
        support = dist.biject_to(_site_prior(model[name]).support)
        values = np.asarray(support(init[name]))
        pull = (values - best.values[name]) / best.errors[name]
        assert np.all(np.abs(pull) < 3), (name, values)
        assert 0.3 < np.std(pull) < 0.7  # spread 0.5
    centre, scale = _whitening(model.parameters, best)
    np.testing.assert_allclose(np.asarray(scale @ scale.T)[1, 1],
                               (best.errors["powerlaw.norm"] / best.values["powerlaw.norm"]) ** 2,
                               rtol=1e-6)  # log-like: relative error
    # an MLE on a limit has no finite unconstrained image: moved inside on its own scale
    assert _interior(0.0, constraints.interval(0.0, 1e24), 1e-6) == pytest.approx(1e-12)
    assert _interior(10.0, constraints.interval(-3.0, 10.0), np.nan) == pytest.approx(10 - 1e-5)
    assert -3.0 < _interior(-3.0, constraints.interval(-3.0, 10.0), 1e-30) < 10.0


@pytest.mark.parametrize("joint", [False, True], ids=["FPMA", "FPMA+FPMB"])
def test_run_nuts_converges_on_a_bright_spectrum(velax1_dir, shared_data, joint):
    """1.3 M counts (Vela X-1, NuSTAR): sigma(PhoIndex) ~ 0.002 and correlated with norm.
    Unwhitened, warm-up's mass-matrix regularisation (towards 1e-3 I) swamped posterior
    variances of ~1e-6 and the chains (started at norm = 1e15) did not converge."""
    rmf = shared_data / "nustar" / "aperture" / "diag.rmf"
    if not rmf.is_file():
        pytest.skip(f"NuSTAR diagonal RMF not available: {rmf}")
    data = [load(str(velax1_dir / f"nu90402339002{m}01_sr.pha"), erange=(3, 20), rmf=str(rmf),
                 use_background=False) for m in ("AB" if joint else "A")]
    if joint:
        model = JointModel.create(parse_model("powerlaw"), 2, per_dataset=["norm"])
    else:
        model, data = parse_model("powerlaw").set("norm", 0.05), data[0]
    idata = run_nuts(model, data, "cstat", num_warmup=300, num_samples=500, num_chains=2,
                     posterior_predictive=False)
    attrs = idata.posterior.attrs
    assert attrs["bkgjax_r_hat_max"] <= 1.01, attrs
    assert attrs["bkgjax_ess_bulk_min"] >= 400 and attrs["bkgjax_ess_tail_min"] >= 400, attrs
    assert attrs["bkgjax_divergences"] == 0
    assert WHITENED_SITE not in idata.posterior and f"{WHITENED_SITE}_dim_0" not in idata.posterior.dims
    counts = ["counts_1", "counts_2"] if joint else ["counts"]
    assert sorted(idata.log_likelihood.data_vars) == counts
    mle = fit(model, data, "cstat", errors="covariance")
    for name in model.free_names:
        draws = np.asarray(idata.posterior[name])
        assert abs(draws.mean() - mle.values[name]) < 0.25 * mle.errors[name], name
        np.testing.assert_allclose(draws.std(), mle.errors[name], rtol=0.1, err_msg=name)
