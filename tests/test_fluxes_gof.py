"""Fluxes with intervals (bkgjax.fit.sample_flux) and the bootstrap goodness of fit."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bkgjax.fit import fit, goodness_of_fit, guess_norms, load, predicted_counts, sample_flux
from bkgjax.spectral import energy_flux, flux_from_covariance, parse_model, powerlaw
from bkgjax.spectrum_cli import demo_spectrum_path


@pytest.fixture(scope="module")
def data():
    return load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)


def _simulate(model, data, seed):
    theta = jnp.asarray(list(model.resolve({}).values()))
    mu = np.asarray(predicted_counts(model.structure, theta, data))
    return data.with_counts(jnp.asarray(np.random.default_rng(seed).poisson(mu), dtype=float))


def test_flux_value_and_interval_against_the_delta_method(data):
    result = fit(guess_norms(powerlaw(), data), data, "cstat")
    flux = sample_flux(result, 0.5, 7.0, n_draws=4000)
    exact = float(energy_flux(result.model, None, 0.5, 7.0, n_bins=8192))
    assert flux["value"] == pytest.approx(exact, rel=1e-5)
    value, sigma = flux_from_covariance(result.model, result.values, result.covariance,
                                        result.free_names, 0.5, 7.0)
    half_width = 0.5 * (flux["upper90"] - flux["lower90"])
    assert half_width == pytest.approx(1.6449 * float(sigma), rel=0.1)
    photons = sample_flux(result, 0.5, 7.0, kind="photon")
    assert photons["unit"] == "photons/cm^2/s" and photons["lower90"] < photons["value"]


def test_flux_of_a_sub_expression(data):
    """The flux of one component of a sum is that component's own flux."""
    model = parse_model("powerlaw + gaussian").set("LineE", 6.4).set("Sigma", 0.05) \
        .set("gaussian.norm", 2e-6)
    model = guess_norms(model, data, keep={"gaussian.norm"})
    result = fit(model.set("LineE", 6.4, frozen=True).set("Sigma", 0.05, frozen=True), data,
                 "cstat", errors="covariance")
    line = sample_flux(result, 0.5, 7.0, component="gaussian", kind="photon")
    norm = result.values["gaussian.norm"]
    assert line["value"] == pytest.approx(norm, rel=1e-6)  # a line well inside the band
    total = sample_flux(result, 0.5, 7.0, kind="photon")
    cont = sample_flux(result, 0.5, 7.0, kind="photon", component="powerlaw")
    assert total["value"] == pytest.approx(line["value"] + cont["value"], rel=1e-9)
    with pytest.raises(ValueError, match="no component labelled 'phabs'"):
        sample_flux(result, 0.5, 7.0, component="phabs*powerlaw")


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "counts"}, "kind must be"), ({"e_min": 7.0, "e_max": 1.0}, "0 < e_min < e_max"),
    ({"dataset": 2}, "dataset must be in 1..1"), ({"n_draws": 0}, "n_draws must be"),
    ({"level": 1.5}, "level must be"),
])
def test_flux_bad_arguments(data, kwargs, message):
    result = fit(guess_norms(powerlaw(), data), data, "cstat", errors="covariance")
    args = {"e_min": 0.5, "e_max": 7.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample_flux(result, args.pop("e_min"), args.pop("e_max"), **args)


def test_flux_interval_coverage(data):
    """Calibration: over 200 simulated spectra the 90 % flux interval covers the true flux
    within 3.5 binomial sigma (sigma = 2.1 %)."""
    truth = powerlaw(PhoIndex=1.7, norm=2e-4)
    true_flux = float(energy_flux(truth, None, 2.0, 7.0, n_bins=1024))
    covered = []
    for seed in range(200):
        sim = _simulate(truth, data, seed)
        result = fit(truth, sim, "cstat", errors="covariance")
        f = sample_flux(result, 2.0, 7.0, n_draws=500, seed=seed)
        covered.append(f["lower90"] <= true_flux <= f["upper90"])
    assert abs(np.mean(covered) - 0.9) < 3.5 * np.sqrt(0.09 / 200)


def test_goodness_of_fit_p_values_uniform_under_the_model(data):
    """Calibration: data drawn from the fitted model family give p-values consistent with
    uniform (Kolmogorov-Smirnov, 25 data sets x 60 replicas); a wrong model gets the
    smallest possible p-value."""
    truth = powerlaw(PhoIndex=1.7, norm=2e-4)
    p_values = []
    for seed in range(25):
        sim = _simulate(truth, data, 100 + seed)
        result = fit(truth, sim, "cstat", errors="covariance")
        p_values.append(goodness_of_fit(result, sim, n_sims=60, seed=seed)["p_value"])
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    line = parse_model("powerlaw + gaussian").set("LineE", 1.5).set("Sigma", 0.02) \
        .set("powerlaw.norm", 2e-4).set("gaussian.norm", 2e-4)
    sim = _simulate(line, data, 7)
    wrong = fit(truth, sim, "cstat", errors="covariance")
    gof = goodness_of_fit(wrong, sim, n_sims=60)
    assert gof["p_value"] == pytest.approx(1 / 61) and gof["n_failed"] == 0


def test_goodness_of_fit_validates(data):
    result = fit(guess_norms(powerlaw(), data), data, "cstat", errors="covariance")
    with pytest.raises(ValueError, match="n_sims must be"):
        goodness_of_fit(result, data, n_sims=5)


def test_posterior_flux_of_a_joint_model_per_data_set(data):
    """posterior_flux takes a JointModel: the flux of each data set's source model (here
    factor@2 = 2 doubles data set 2's), from the same draws."""
    from bkgjax.fit import JointModel
    from bkgjax.infer import posterior_flux, run_nuts

    model = JointModel.create(parse_model("constant*powerlaw"), 2, per_dataset=["constant"])
    model = guess_norms(model.set("factor@1", 1.0, frozen=True), [data, data])
    result = fit(model, [data, data], "cstat", errors="covariance")
    idata = run_nuts(result.model, [data, data], "cstat", num_warmup=100, num_samples=100,
                     num_chains=2, posterior_predictive=False)
    f1 = posterior_flux(idata, result.model, 0.5, 7.0, dataset=1)
    f2 = posterior_flux(idata, result.model, 0.5, 7.0, dataset=2)
    factor = np.asarray(idata.posterior["constant.factor@2"])
    np.testing.assert_allclose(f2, f1 * factor, rtol=1e-10)
    cont = posterior_flux(idata, result.model, 0.5, 7.0, dataset=1, component="powerlaw")
    np.testing.assert_allclose(cont, f1, rtol=1e-12)  # factor@1 = 1: the continuum is all
