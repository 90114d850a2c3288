"""Calibration: interval coverage over many simulated spectra (fixed seeds, stated tolerances).

Truth: the DG Tau power-law best fit (PhoIndex 1.19, norm 1.31e-5) folded through the real
Chandra ACIS response in 0.5-7 keV, ~380 counts per spectrum (low-count regime, C-stat).
Measured coverages are printed (``pytest -s``) and quoted in the issue notes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC, NUTS, init_to_value

import bkgjax  # noqa: F401
from bkgjax.cli import demo_spectrum_path
from bkgjax.fit import fit_batch, load
from bkgjax.infer import batched_spectral_model
from bkgjax.simulate import fakeit
from bkgjax.spectral import powerlaw

TRUTH = np.array([1.19, 1.31e-5])
Z68, Z90 = 0.9944578832097535, 1.6448536269514722


@pytest.fixture(scope="module")
def setup():
    data = load(demo_spectrum_path(), erange=(0.5, 7.0))
    truth = powerlaw(PhoIndex=TRUTH[0], norm=TRUTH[1])
    return data, truth


def _check(label, coverage, nominal, tolerance):
    print(f"{label}: coverage {np.round(coverage, 4)} nominal {nominal} (+-{tolerance:.3f})")
    assert np.all(np.abs(coverage - nominal) <= tolerance), (label, coverage)


def test_covariance_interval_coverage(setup):
    data, truth = setup
    counts, _ = fakeit(jax.random.PRNGKey(2024), truth, data, n=2000)
    result = fit_batch(truth, data, counts, errors="covariance")
    assert result.converged.mean() == 1.0
    z = np.abs(result.free_values() - TRUTH) / result.errors
    _check("covariance 68%", (z <= Z68).mean(axis=0), 0.6827, 0.03)
    _check("covariance 90%", (z <= Z90).mean(axis=0), 0.90, 0.03)


@pytest.mark.parametrize("level", [0.6826894921370859, 0.9])
def test_profile_interval_coverage(setup, level):
    data, truth = setup
    counts, _ = fakeit(jax.random.PRNGKey(77), truth, data, n=1000)
    result = fit_batch(truth, data, counts, errors="profile", level=level)
    assert result.converged.mean() == 1.0
    assert np.all(result.bound_flags == 1)
    covered = (result.lower <= TRUTH) & (TRUTH <= result.upper)
    _check(f"profile {level:.3f}", covered.mean(axis=0), level, 0.03)


def _nuts_coverage(data, truth, n, seed, num_warmup=500, num_samples=1000):
    counts, _ = fakeit(jax.random.PRNGKey(seed), truth, data, n=n)
    mle = fit_batch(truth, data, counts, errors="covariance")
    init = {name: jnp.asarray(mle.values[:, k]) for k, name in enumerate(mle.names)}
    # one NUTS run samples the n independent posteriors (plate over spectra)
    mcmc = MCMC(NUTS(batched_spectral_model, init_strategy=init_to_value(values=init)),
                num_warmup=num_warmup, num_samples=num_samples, num_chains=1,
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed + 1), truth, data, counts)
    samples = mcmc.get_samples()
    draws = np.stack([np.asarray(samples[name]) for name in mle.names], axis=-1)  # (S, n, 2)
    out = {}
    for level in (0.6826894921370859, 0.9):
        lo, hi = np.percentile(draws, [50 - 50 * level, 50 + 50 * level], axis=0)
        out[level] = ((lo <= TRUTH) & (TRUTH <= hi)).mean(axis=0)
    return out


def test_nuts_credible_interval_coverage_200(setup):
    """200 simulated spectra (the issue's minimum).  With n = 200 the binomial standard error
    of a 68 % coverage is 0.033, so +-3 % is below one sigma: the tolerance here is three
    binomial standard errors; the ``slow`` test repeats it with 1000 spectra at +-3 %."""
    data, truth = setup
    n = 200
    # 300 warm-up / 600 draws: >= 500 effective draws per spectrum for a 2-parameter posterior
    coverage = _nuts_coverage(data, truth, n, seed=11, num_warmup=300, num_samples=600)
    for level, cov in coverage.items():
        _check(f"NUTS {level:.3f} (n={n})", cov, level,
               3 * np.sqrt(level * (1 - level) / n))


@pytest.mark.slow
def test_nuts_credible_interval_coverage_1000(setup):
    data, truth = setup
    coverage = _nuts_coverage(data, truth, 1000, seed=21)
    for level, cov in coverage.items():
        _check(f"NUTS {level:.3f} (n=1000)", cov, level, 0.03)
