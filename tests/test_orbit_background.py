"""Hierarchical orbit-background model (bkgjax.missions.isgri.orbit_background), issue 5 item 6.

* input validation (clear errors, never NaN);
* the model's log joint density against an independent scipy.stats computation;
* posterior sanity and recovery of injected region intensities on one small mission;
* calibration: 90 % HDIs of the region intensities cover the injected values at the nominal
  rate (fast reduced version by default; the 200-mission version is ``slow``).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

import bkgjax  # noqa: F401  (float64)
from bkgjax.missions.isgri.orbit_background import (
    OrbitData,
    _batch,
    _config,
    fit_orbit_background,
    hdi_interval,
    orbit_background_model,
    orbit_data_from_scws,
    prepare_orbit_data,
    region_summary,
    sample_orbit_background_batch,
    synthetic_orbit_data,
)


def _arrays(n_orbits=3):
    orbit = np.repeat(np.arange(n_orbits), 4)
    n = orbit.size
    return dict(rate=np.full(n, 10.0), rate_err=np.full(n, 0.1), orbit_index=orbit,
                phase=np.tile([0.2, 0.4, 0.6, 0.8], n_orbits),
                is_background=np.tile([True, True, False, False], n_orbits),
                region_index=np.tile([-1, -1, 0, 1], n_orbits),
                crab_rate=np.full(n_orbits, 50.0))


def test_prepare_valid_and_used_mask():
    a = _arrays()
    a["region_index"][3] = -1  # a Galactic ScW outside every region: not in the likelihood
    d = prepare_orbit_data(**a, region_names=["GB", "L+20"])
    assert isinstance(d, OrbitData) and d.n_orbits == 3 and d.n_regions == 2
    assert d.used.sum() == d.n_scw - 1


@pytest.mark.parametrize("change, match", [
    (lambda a: a.__setitem__("phase", a["phase"] + 0.5), "phase must lie in"),
    (lambda a: a.__setitem__("rate_err", a["rate_err"] * 0), "rate_err must be > 0"),
    (lambda a: a.__setitem__("rate", np.r_[np.nan, a["rate"][1:]]), "rate contains non-finite"),
    (lambda a: a.__setitem__("orbit_index", np.where(a["orbit_index"] == 1, 2, a["orbit_index"])),
     "orbit 1 has no ScW"),
    (lambda a: a.__setitem__("orbit_index", a["orbit_index"] + 1), "orbit_index must lie"),
    (lambda a: a.__setitem__("region_index", np.where(a["region_index"] == 1, 0,
                                                      a["region_index"])), "has no ScWs"),
    (lambda a: a.__setitem__("is_background", np.zeros_like(a["is_background"])),
     "at least 2 BKG"),
    (lambda a: a.__setitem__("crab_rate", -a["crab_rate"]), "crab_rate must be > 0"),
    (lambda a: a.__setitem__("rate_err", a["rate_err"][:-1]), "rate_err has 11 entries"),
    (lambda a: a.__setitem__("orbit_index", a["orbit_index"].astype(float)), "integers"),
])
def test_prepare_rejects_bad_input(change, match):
    a = _arrays()
    change(a)
    with pytest.raises(ValueError, match=match):
        prepare_orbit_data(**a, region_names=["GB", "L+20"])


def test_bkg_and_region_exclusive():
    a = _arrays()
    a["is_background"][2] = True
    with pytest.raises(ValueError, match="both BKG"):
        prepare_orbit_data(**a)


def test_orbit_data_from_scws():
    rev = np.array([100, 100, 100, 250, 250, 400, 400, 400])
    is_bkg = np.array([1, 1, 0, 0, 0, 1, 0, 0], bool)
    gb = np.array([0, 0, 1, 1, 0, 0, 1, 0], bool)
    crab = np.array([50, 50, 50, 48, 48, 46, 46, 46], float)
    data, keep = orbit_data_from_scws(rev, np.full(8, 0.5), np.arange(8.0), np.ones(8), is_bkg,
                                      {"GB": gb}, crab)
    # the ScWs neither BKG nor in GB (indices 4, 7) are dropped; orbits renumbered by REV
    assert keep.tolist() == [1, 1, 1, 1, 0, 1, 1, 0]
    assert data.orbit_index.tolist() == [0, 0, 0, 1, 2, 2]
    assert data.orbit_time.tolist() == [100, 250, 400]
    assert data.crab_rate.tolist() == [50, 48, 46]
    assert data.region_index.tolist() == [-1, -1, 0, 0, -1, 0]
    with pytest.raises(ValueError, match="overlap"):
        orbit_data_from_scws(rev, np.full(8, 0.5), np.arange(8.0), np.ones(8), is_bkg,
                             {"GB": gb, "L+20": gb}, crab)


def test_log_density_matches_scipy():
    """The NumPyro log joint at a fixed point equals an independent scipy.stats sum."""
    from numpyro.infer.util import log_density

    d, _ = synthetic_orbit_data(3, n_orbits=5, scw_per_orbit=8, crab_rate_err=0.5)
    arrays, centres, scales, _ = _batch([d])
    rng = np.random.default_rng(0)
    n_o, n_r = d.n_orbits, d.n_regions
    p = {"tau_level": np.array([0.4]), "tau_slope": np.array([0.3]),
         "sigma_sys": np.array([0.2]), "nu": np.array([6.0]), "drift": np.array([0.05]),
         "z_intensity": rng.normal(size=(1, n_r)) * 0.1,
         "level": rng.normal(size=(1, n_o)), "slope0": np.array([0.3]),
         "z_slope": rng.normal(size=(1, n_o - 1)), "z_crab": rng.normal(size=(1, n_o))}
    cfg = dict(_config(n_r, True, "mixed", True, 1000.0))
    got, _ = log_density(orbit_background_model, (arrays,), cfg, p)

    y = (d.rate - centres[0]) / scales[0]
    e = d.rate_err / scales[0]
    dt = np.diff(d.orbit_time)
    span = d.orbit_time[-1] - d.orbit_time[0]
    ref = (st.halfnorm.logpdf(0.4) + st.halfnorm.logpdf(0.3) + st.halfnorm.logpdf(0.2)
           + st.gamma.logpdf(6.0, 2.0, scale=10.0) + st.norm.logpdf(0.05, 0, 1 / span)
           + st.norm.logpdf(p["z_intensity"]).sum() + st.norm.logpdf(p["z_crab"]).sum()
           + st.norm.logpdf(p["z_slope"]).sum() + st.norm.logpdf(0.3, 0, 10))
    level = p["level"][0]
    ref += st.norm.logpdf(level[0], 0, 10) + st.norm.logpdf(
        np.diff(level), 0.05 * dt, 0.4 * np.sqrt(dt)).sum()
    slope = np.r_[0.3, 0.3 + np.cumsum(0.3 * np.sqrt(dt) * p["z_slope"][0])]
    crab = (d.crab_rate + d.crab_rate_err * p["z_crab"][0]) / 1000.0 / scales[0]
    inten = 1000.0 * p["z_intensity"][0]
    o = d.orbit_index
    mu = level[o] + slope[o] * (d.phase - 0.5) + np.where(
        d.region_index >= 0, inten[np.maximum(d.region_index, 0)] * crab[o], 0.0)
    ll = st.t.logpdf(y, 6.0, mu, np.sqrt(e**2 + 0.2**2))
    ref += ll[d.used].sum()
    assert float(got) == pytest.approx(ref, rel=1e-10, abs=1e-8)


def test_hdi_matches_arviz():
    az = pytest.importorskip("arviz")
    x = np.random.default_rng(1).gamma(2.0, size=4001)
    low, high = hdi_interval(x, 0.9)
    ref = az.hdi(x, hdi_prob=0.9)
    assert (low, high) == pytest.approx(tuple(ref), rel=1e-12)
    # a normal sample: the HDI is the central interval +-1.645 sigma (to sampling noise)
    z = np.random.default_rng(2).standard_normal(200_000)
    assert hdi_interval(z, 0.9) == pytest.approx((-1.645, 1.645), abs=0.02)


@pytest.fixture(scope="module")
def small_fit():
    data, truth = synthetic_orbit_data(7, n_orbits=6, scw_per_orbit=16)
    return data, truth, fit_orbit_background(data, num_warmup=100, num_samples=100,
                                             num_chains=2, seed=3)


def test_posterior_recovers_injected_intensities(small_fit):
    data, truth, res = small_fit
    assert set(res.summary) == {"R0", "R1"}
    for k, name in enumerate(data.region_names):
        s = res.summary[name]
        assert np.isfinite([s["mean"], s["sd"], s["hdi90_low"], s["hdi90_high"]]).all()
        assert s["hdi90_low"] < s["mean"] < s["hdi90_high"]
        assert abs(s["mean"] - truth["intensity"][k]) < 4 * s["sd"], name
        # measurable: the 100-1000 mCrab prior is updated to a few mCrab
        assert 0.1 < s["sd"] < 20
    assert res.diagnostics["r_hat_max"] < 1.1
    assert res.diagnostics["divergences"] <= 5
    # the per-orbit background follows the injected intercepts (cts/s)
    err = res.background_rate - truth["background"]
    assert np.all(np.abs(err) < 4 * res.background_rate_sd + 0.05)
    post = res.idata.posterior
    assert post["intensity"].dims[-1] == "region" and "background" in post


def test_posterior_sanity_bkg_only_orbit(small_fit):
    """An orbit's background posterior agrees with the mean of its BKG ScW rates within the
    width expected from their scatter (an independent, model-free estimate)."""
    data, truth, res = small_fit
    o = np.bincount(data.orbit_index[data.is_background]).argmax()
    sel = data.is_background & (data.orbit_index == o)
    r = data.rate[sel] - res.background_slope[o] * (data.phase[sel] - 0.5)
    sem = r.std(ddof=1) / np.sqrt(sel.sum())
    assert abs(res.background_rate[o] - r.mean()) < 3 * sem + 2 * res.background_rate_sd[o]


def _coverage(n_missions, chunk, seed, num_warmup, num_samples, num_chains=1):
    hits = []
    for start in range(0, n_missions, chunk):
        sims = [synthetic_orbit_data(seed + i, n_orbits=6, scw_per_orbit=16)
                for i in range(start, start + chunk)]
        draws, info = sample_orbit_background_batch(
            [s[0] for s in sims], num_warmup=num_warmup, num_samples=num_samples,
            num_chains=num_chains, seed=seed + start)
        low, high = hdi_interval(np.moveaxis(draws, 1, 2), 0.9)  # (B, R)
        truth = np.stack([s[1]["intensity"] for s in sims])
        hits.append((low <= truth) & (truth <= high))
    return np.concatenate(hits)


def test_coverage_reduced():
    """16 missions x 2 regions: 90 % HDI coverage within a loose binomial band."""
    hits = _coverage(16, 16, 1000, 100, 100)
    cov = hits.mean()
    # 32 intervals: sd of the coverage 5.3 %; >= 0.7 is -3.8 sd (grossly narrow intervals
    # fail; all-covering ones are caught by the sd check of the recovery test)
    assert cov >= 0.7, cov


@pytest.mark.slow
def test_coverage_nominal():
    """200 missions x 2 regions: coverage of the 90 % HDI within +-5 % of nominal
    (issue 5 acceptance; binomial sd 1.5 % for 400 intervals)."""
    hits = _coverage(200, 50, 5000, 300, 300, num_chains=2)
    cov = hits.mean()
    print(f"coverage of 90% HDI over {hits.size} intervals: {cov:.3f}")
    assert 0.85 <= cov <= 0.95, cov


def test_region_summary_keys():
    draws = np.random.default_rng(0).normal([10.0, -5.0], [1.0, 2.0], size=(2, 5000, 2))
    s = region_summary(draws, ("A", "B"))
    assert s["A"]["mean"] == pytest.approx(10, abs=0.05)
    assert s["B"]["sd"] == pytest.approx(2, rel=0.03)
    assert s["A"]["hdi90_high"] - s["A"]["hdi90_low"] == pytest.approx(2 * 1.645, rel=0.05)
