"""Fits against Sherpa 4.19 on real spectra, JAX hygiene, and bad-input errors."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401
from bkgjax.cli import demo_spectrum_path
from bkgjax.fit import (
    SpectralData,
    fit,
    fit_batch,
    fit_nelder_mead,
    guess_norms,
    load,
    predicted_counts,
    statistic_per_bin,
    total_statistic,
)
from bkgjax.fit import core as fit_core
from bkgjax.simulate import fakeit
from bkgjax.spectral import powerlaw

REF = json.loads((Path(__file__).parent / "reference" / "sherpa_reference.json").read_text())
DG = REF["dgtau"]


@pytest.fixture(scope="module")
def dgtau():
    # the shipped copy of ../shared/data/spectra/chandra_acis_dgtau (identical files)
    return load(demo_spectrum_path(), erange=(0.5, 7.0))


def pl(gamma, ampl):
    return powerlaw(PhoIndex=gamma, norm=ampl)


def test_channel_filter_and_folded_counts_match_sherpa(dgtau):
    assert dgtau.n_bins == DG["filter"]["n_noticed"]
    assert float(dgtau.counts.sum()) == DG["filter"]["noticed_counts_sum"]
    np.testing.assert_allclose(dgtau.bin_lo[0], DG["filter"]["ebounds_first_noticed"][0], rtol=1e-7)
    np.testing.assert_allclose(dgtau.bin_hi[-1], DG["filter"]["ebounds_last_noticed"][1], rtol=1e-7)
    model = pl(1.7, 1e-4)
    theta = jnp.asarray(list(model.values().values()))
    mu = np.asarray(predicted_counts(model.structure, theta, dgtau))
    np.testing.assert_allclose(mu, DG["model_counts_gamma1.7_ampl1e-4"]["counts"], rtol=1e-9)


@pytest.mark.parametrize("key", ["gamma=1.7,ampl=0.0001", "gamma=2.5,ampl=3e-05"])
@pytest.mark.parametrize("stat", ["cash", "cstat", "wstat"])
def test_statistic_values_match_sherpa_dgtau(dgtau, key, stat):
    gamma, ampl = (float(x.split("=")[1]) for x in key.split(","))
    ours = float(total_statistic(pl(gamma, ampl), dgtau, stat))
    np.testing.assert_allclose(ours, DG["stat_at_fixed_params"]["values"][key][stat], rtol=1e-8)


@pytest.mark.parametrize("key", ["gamma=1.0,ampl=0.5", "gamma=1.2,ampl=1.0"])
def test_statistic_values_match_sherpa_nustar(velax1_dir, shared_data, key):
    data = load(velax1_dir / "nu90402339002A01_sr.pha", erange=(3.0, 79.0),
                rmf=shared_data / "nustar" / "aperture" / "diag.rmf")
    vela = REF["vela_fpma"]
    assert data.n_bins == vela["filter"]["n_noticed"]
    gamma, ampl = (float(x.split("=")[1]) for x in key.split(","))
    for stat in ("cash", "cstat", "wstat"):
        ours = float(total_statistic(pl(gamma, ampl), data, stat))
        np.testing.assert_allclose(ours, vela["stat_at_fixed_params"]["values"][key][stat],
                                   rtol=1e-8, err_msg=stat)


@pytest.mark.parametrize("stat", ["cstat", "wstat"])
def test_powerlaw_fit_matches_sherpa_levmar_and_conf(dgtau, stat):
    ref = DG["fits"][stat]
    result = fit(pl(1.5, 1e-4), dgtau, stat, errors="profile", level=0.9)
    assert result.converged, result.reason
    # Sherpa levmar stops at ftol 1.2e-7; our minimum is at least as low
    assert result.stat_value <= ref["fit"]["statval"] + 1e-6
    np.testing.assert_allclose(result.stat_value, ref["fit"]["statval"], rtol=1e-8)
    best = [result.values["powerlaw.PhoIndex"], result.values["powerlaw.norm"]]
    np.testing.assert_allclose(best, ref["fit"]["parvals"], rtol=1e-4)
    np.testing.assert_allclose([result.errors["powerlaw.PhoIndex"], result.errors["powerlaw.norm"]],
                               ref["covar"]["errors_1sigma"], rtol=0.01)
    for k, name in enumerate(("powerlaw.PhoIndex", "powerlaw.norm")):
        lo, hi = result.intervals[name]
        np.testing.assert_allclose(lo, ref["conf_90"]["lower_abs"][k], rtol=0.02)
        np.testing.assert_allclose(hi, ref["conf_90"]["upper_abs"][k], rtol=0.02)
        # tighter: the 90% offsets themselves agree to 2%
        best_k = ref["fit"]["parvals"][k]
        np.testing.assert_allclose(hi - best[k], ref["conf_90"]["upper_abs"][k] - best_k, rtol=0.02)
        np.testing.assert_allclose(best[k] - lo, best_k - ref["conf_90"]["lower_abs"][k], rtol=0.02)
    assert result.dof == ref["fit"]["dof"]


def test_profile_bounds_at_68_percent_match_sherpa(dgtau):
    ref = DG["fits"]["cstat"]["conf_68"]
    result = fit(pl(1.5, 1e-4), dgtau, "cstat", level=0.6826894921370859)
    for k, name in enumerate(("powerlaw.PhoIndex", "powerlaw.norm")):
        np.testing.assert_allclose(result.intervals[name], [ref["lower_abs"][k], ref["upper_abs"][k]],
                                   rtol=0.01)


def test_result_json_has_documented_keys(dgtau, tmp_path):
    result = fit(pl(1.5, 1e-4), dgtau, "cstat")
    payload = json.loads(result.to_json(tmp_path / "fit.json"))
    assert {"stat", "stat_value", "dof", "n_bins", "converged"} <= set(payload)
    assert set(payload["params"]) == {"PhoIndex", "norm"}
    assert {"value", "error", "lower90", "upper90"} <= set(payload["params"]["PhoIndex"])
    assert payload["params"]["PhoIndex"]["lower90"] < payload["params"]["PhoIndex"]["value"]
    assert "PhoIndex" in str(result) and "upper90" in str(result)


def test_nelder_mead_reference_and_lbfgs_agree_with_newton(dgtau):
    newton = fit(pl(1.5, 1e-4), dgtau, "cstat", errors="covariance")
    simplex = fit_nelder_mead(pl(1.5, 1e-4), dgtau, "cstat")
    lbfgs = fit(pl(1.5, 1e-4), dgtau, "cstat", errors="covariance", method="lbfgs")
    for other in (simplex.values, lbfgs.values):
        np.testing.assert_allclose(other["powerlaw.PhoIndex"], newton.values["powerlaw.PhoIndex"],
                                   rtol=2e-4)
        np.testing.assert_allclose(other["powerlaw.norm"], newton.values["powerlaw.norm"], rtol=2e-4)
    assert simplex.stat_value >= newton.stat_value - 1e-9
    assert lbfgs.converged


def test_bootstrap_errors_are_close_to_covariance(dgtau):
    newton = fit(pl(1.19, 1.31e-5), dgtau, "cstat", errors="covariance")
    simplex = fit_nelder_mead(pl(1.19, 1.31e-5), dgtau, "cstat", n_bootstrap=60, seed=3)
    assert simplex.bootstrap.shape == (60, 2)
    # 60 bootstrap draws estimate a standard deviation to ~10 %; allow 30 %
    np.testing.assert_allclose(simplex.errors["powerlaw.PhoIndex"],
                               newton.errors["powerlaw.PhoIndex"], rtol=0.3)


def test_multistart_recovers_from_a_bad_start(dgtau):
    bad = pl(6.0, 1e-9)
    result = fit(bad, dgtau, "cstat", errors="covariance", n_starts=8, seed=1)
    np.testing.assert_allclose(result.values["powerlaw.PhoIndex"], 1.18772, rtol=1e-3)


# ------------------------------------------------------------------------------ JAX hygiene
def test_statistic_jit_equals_eager_and_gradients_match_finite_differences(dgtau):
    model = pl(1.4, 2e-5)
    structure = model.structure

    def total(theta):
        return jnp.sum(statistic_per_bin("cstat", predicted_counts(structure, theta, dgtau), dgtau))

    theta = jnp.array([1.4, 2e-5])
    eager = float(total(theta))
    assert float(jax.jit(total)(theta)) == pytest.approx(eager, rel=1e-13)
    grad = np.asarray(jax.grad(total)(theta))
    steps = np.array([1e-6, 1e-11])
    fd = [(float(total(theta.at[i].add(steps[i]))) - float(total(theta.at[i].add(-steps[i]))))
          / (2 * steps[i]) for i in range(2)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6)
    hess = np.asarray(jax.hessian(total)(theta))
    assert np.all(np.isfinite(hess)) and np.allclose(hess, hess.T, rtol=1e-10)


def test_fit_batch_equals_loop_and_no_recompilation(dgtau):
    truth = pl(1.19, 1.31e-5)
    counts, _ = fakeit(jax.random.PRNGKey(7), truth, dgtau, n=6)
    start = pl(1.5, 1e-5)
    batch = fit_batch(start, dgtau, counts, errors="profile")
    for i in range(3):
        single = fit(start, dgtau.with_counts(counts[i]), "cstat", errors="profile")
        np.testing.assert_allclose(batch.values[i], list(single.values.values()), rtol=1e-7)
        np.testing.assert_allclose(batch.errors[i], list(single.errors.values()), rtol=1e-6)
        np.testing.assert_allclose(batch.lower[i], [v[0] for v in single.intervals.values()],
                                   rtol=1e-5)
    # repeated calls with new start values / new counts of the same shape do not recompile
    n_single = fit_core._fit_one._cache_size()
    n_batch = fit_core._fit_many._cache_size()
    fit(pl(1.3, 2e-5), dgtau.with_counts(counts[4]), "cstat", errors="profile")
    fit_batch(pl(1.7, 3e-5), dgtau, counts[::-1], errors="profile")
    assert fit_core._fit_one._cache_size() == n_single
    assert fit_core._fit_many._cache_size() == n_batch


def test_another_file_of_the_same_shapes_does_not_recompile(dgtau, tmp_path):
    """SpectralData.name (the file path) is not part of the compilation key: fitting a copy
    of the DG Tau spectrum under another name reuses the compiled fit."""
    from jax._src import monitoring

    source = Path(demo_spectrum_path())
    for f in source.parent.iterdir():  # the copy's header names the same ARF/RMF
        (tmp_path / f.name).symlink_to(f)
    copy = tmp_path / "copy_of_dgtau_pha3.fits.gz"
    copy.write_bytes(source.read_bytes())
    other = load(copy, erange=(0.5, 7.0))
    assert other.name == str(copy) and other.name != dgtau.name
    start = pl(1.5, 1e-5)
    first = fit(start, dgtau, "cstat", errors="profile")
    n_compiled = fit_core._fit_one._cache_size()
    compiles = []

    def listener(event, duration, **kwargs):
        if event.startswith("/jax/core/compile/"):
            compiles.append(event)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        second = fit(start, other, "cstat", errors="profile")
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert fit_core._fit_one._cache_size() == n_compiled
    assert compiles == []  # nothing traced or compiled for the second file
    assert second.values == first.values and second.stat_value == first.stat_value
    # the name is kept through pytree operations (it is metadata, only not a cache key)
    assert jax.tree_util.tree_map(lambda x: x, other).name == str(copy)
    assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(dgtau)


def test_fakeit_reproducible_and_poisson(dgtau):
    truth = pl(1.19, 1.31e-5)
    a, _ = fakeit(jax.random.PRNGKey(0), truth, dgtau, n=4000)
    b, _ = fakeit(jax.random.PRNGKey(0), truth, dgtau, n=4000)
    np.testing.assert_array_equal(a, b)
    theta = jnp.asarray(list(truth.values().values()))
    mu = np.asarray(predicted_counts(truth.structure, theta, dgtau))
    total = np.asarray(a).sum(axis=1)
    # total counts ~ Poisson(sum mu): mean and variance within 5 standard errors
    assert abs(total.mean() - mu.sum()) < 5 * np.sqrt(mu.sum() / 4000)
    assert abs(total.var() / mu.sum() - 1) < 5 * np.sqrt(2 / 4000)
    c, bkg = fakeit(jax.random.PRNGKey(1), truth, dgtau, n=2000, background=0.02)
    ratio = float(dgtau.background_ratio[0])
    assert abs(np.asarray(bkg).sum(1).mean() - 0.02 * ratio * dgtau.n_bins) < 5 * np.sqrt(
        0.02 * ratio * dgtau.n_bins / 2000)


# ------------------------------------------------------------------------------ bad input
def _arrays(n_bins=4, n_energy=5):
    e = np.linspace(1.0, 2.0, n_energy + 1)
    return dict(counts=np.ones(n_bins), exposure=100.0, matrix=np.ones((n_energy, n_bins)),
                e_lo=e[:-1], e_hi=e[1:])


@pytest.mark.parametrize("change, message", [
    ({"counts": np.array([1.0, -2.0, 0.0, 1.0])}, "negative"),
    ({"counts": np.array([1.0, 2.5, 0.0, 1.0])}, "not integers"),
    ({"counts": np.array([1.0, np.nan, 0.0, 1.0])}, "NaN"),
    ({"counts": np.ones(3)}, "shape"),
    ({"exposure": 0.0}, "exposure"),
    ({"exposure": -5.0}, "exposure"),
    ({"e_lo": np.array([1.0, 1.4, 1.2, 1.6, 1.8])}, "monoton|e_hi must exceed"),
    ({"e_lo": np.array([0.0, 1.2, 1.4, 1.6, 1.8])}, "> 0 keV"),
    ({"matrix": np.full((5, 4), np.nan)}, "NaN"),
])
def test_bad_arrays_raise_clear_errors(change, message):
    kwargs = {**_arrays(), **change}
    with pytest.raises(ValueError, match=message):
        SpectralData.from_arrays(**kwargs)


def test_bad_fit_requests_raise_clear_errors(dgtau):
    with pytest.raises(ValueError, match="unknown statistic 'chi'"):
        fit(pl(1.5, 1e-4), dgtau, "chi")
    no_bkg = SpectralData.from_arrays(**_arrays())
    with pytest.raises(ValueError, match="wstat.* needs a background"):
        fit(pl(1.5, 1e-4), no_bkg, "wstat")
    with pytest.raises(ValueError, match="no free parameter"):
        fit(pl(1.5, 1e-4).set("PhoIndex", frozen=True).set("norm", frozen=True), dgtau)
    with pytest.raises(ValueError, match="counts must have shape"):
        fit_batch(pl(1.5, 1e-4), dgtau, np.ones((3, 10)))
    with pytest.raises(ValueError, match="no channel left"):
        load(demo_spectrum_path(), erange=(20.0, 30.0))


def test_guess_norms_scales_to_observed_counts(dgtau):
    guessed = guess_norms(powerlaw(PhoIndex=1.2), dgtau)
    theta = jnp.asarray(list(guessed.values().values()))
    predicted = float(predicted_counts(guessed.structure, theta, dgtau).sum())
    expected = float(dgtau.counts.sum() - (dgtau.background_counts / dgtau.background_ratio).sum())
    np.testing.assert_allclose(predicted, expected, rtol=1e-10)


def test_profile_bound_at_parameter_limit_is_flagged(dgtau):
    """A line with no flux: the lower 90 % bound of its norm is the limit 0 (flag 2), the
    upper one is found; the Venzon-Moolgavkar lanes that fail fall back to the safeguarded
    search."""
    model = powerlaw(PhoIndex=1.2, norm=1.3e-5) + component_gaussian()
    result = fit(model, dgtau, "cstat", level=0.9)
    lo, hi = result.intervals["gaussian.norm"]
    flags = result.bound_flags["gaussian.norm"]
    assert lo == 0.0 and flags[0] == 2
    assert flags[1] == 1 and hi > result.values["gaussian.norm"]
    # the found upper bound is where the profile crosses the 90 % level
    bounded = model.set("gaussian.norm", hi, frozen=True)
    profiled = fit(bounded, dgtau, "cstat", errors="covariance")
    np.testing.assert_allclose(profiled.stat_value - result.stat_value, 2.7055, atol=2e-3)


def component_gaussian():
    from bkgjax.spectral import gaussian

    # line position and width frozen, as for an upper limit on a known line
    return (gaussian(LineE=6.4, Sigma=0.0, norm=1e-7).set("LineE", frozen=True)
            .set("Sigma", frozen=True))


SHARDED_SCRIPT = """
import os, sys, json
import jax, numpy as np
import bkgjax
from bkgjax.cli import demo_spectrum_path
from bkgjax.fit import fit_batch, load
from bkgjax.simulate import fakeit
from bkgjax.spectral import powerlaw
assert jax.device_count() == 4, jax.devices()
data = load(demo_spectrum_path(), erange=(0.5, 7.0))
truth = powerlaw(PhoIndex=1.19, norm=1.31e-5)
counts, _ = fakeit(jax.random.PRNGKey(3), truth, data, n=8)
sharded = fit_batch(truth, data, counts, errors="profile", shard=True)
single = fit_batch(truth, data, counts, errors="profile", shard=False)
print(json.dumps({"max_rel": float(np.max(np.abs(sharded.values / single.values - 1))),
                  "max_rel_upper": float(np.max(np.abs(sharded.upper / single.upper - 1)))}))
"""


def test_fit_batch_sharded_over_host_devices_matches_unsharded():
    """Scale-out: the spectrum axis sharded over 4 (forced host) devices gives the same fits."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["max_rel"] < 1e-10 and result["max_rel_upper"] < 1e-8, result


def test_grouping_and_quality_follow_the_pha_columns(tmp_path):
    """GROUPING (+1 starts a group) sums counts and model over each group; QUALITY != 0
    channels are dropped (XSPEC/Sherpa)."""
    from astropy.io import fits

    src = Path(demo_spectrum_path())
    with fits.open(src) as hdul:
        n = len(hdul[1].data)
        grouping = np.where(np.arange(n) % 2 == 0, 1, -1).astype(np.int16)
        quality = np.zeros(n, dtype=np.int16)
        quality[100:110] = 5  # bad channels 101-110
        table = hdul[1]
        cols = table.columns + fits.ColDefs([fits.Column("GROUPING", "I", array=grouping),
                                             fits.Column("QUALITY", "I", array=quality)])
        new = fits.BinTableHDU.from_columns(cols, header=table.header)
        for key in ("BACKFILE", "RESPFILE", "ANCRFILE"):
            value = new.header[key]
            new.header[key] = str(src.parent / value) + ("" if value.endswith(".gz") else ".gz")
        new.header["BACKFILE"] = "none"
        hdul_out = fits.HDUList([hdul[0].copy(), new])
        path = tmp_path / "grouped.pha"
        hdul_out.writeto(path)
    plain = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    grouped = load(path, erange=(0.5, 7.0))
    assert not grouped.has_background
    model = pl(1.7, 1e-4)
    theta = jnp.asarray(list(model.values().values()))
    mu_plain = np.asarray(predicted_counts(model.structure, theta, plain))
    mu_group = np.asarray(predicted_counts(model.structure, theta, grouped))
    # channels 35..480 noticed; pairs start at odd channels (index even) -> groups of 2,
    # minus the 10 bad channels (5 whole groups)
    first = 34  # index of channel 35
    keep = np.ones(plain.n_bins, dtype=bool)
    keep[100 - first:110 - first] = False
    idx = np.arange(first, first + plain.n_bins)
    group_of = idx // 2
    expected_mu = np.bincount(group_of[keep] - group_of[keep].min(), weights=mu_plain[keep])
    expected_mu = expected_mu[expected_mu > 0]
    np.testing.assert_allclose(mu_group, expected_mu, rtol=1e-10)
    assert grouped.n_bins == len(expected_mu)
    assert float(grouped.counts.sum()) == float(np.asarray(plain.counts)[keep].sum())


def test_wstat_covariance_coverage_with_simulated_background(dgtau):
    """W-stat with a Poisson background in both regions: 90 % covariance coverage over 1000
    simulations (binomial s.e. 0.0095; tolerance 0.03)."""
    truth = pl(1.19, 1.31e-5)
    background = 0.01  # expected counts per bin in the source region (~4.5 per spectrum)
    counts, bkg = fakeit(jax.random.PRNGKey(5), truth, dgtau, n=1000, background=background)
    result = fit_batch(truth, dgtau, counts, bkg, stat="wstat", errors="covariance")
    assert result.converged.mean() > 0.99
    z = np.abs(result.free_values() - np.array([1.19, 1.31e-5])) / result.errors
    coverage = (z <= 1.6448536269514722).mean(axis=0)
    print("wstat covariance 90% coverage", coverage)
    assert np.all(np.abs(coverage - 0.9) <= 0.03), coverage


@pytest.mark.parametrize("start", [10.0, -3.0, 9.9999])
def test_start_on_a_limit_is_moved_inside_and_reaches_the_minimum(start):
    """A start on (or next to) a parameter limit used to stay there with converged=True (the
    bounded map saturates); it is moved inside, as Sherpa does, and the fit finds the minimum."""
    data = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    model = guess_norms(powerlaw(), data)
    best = fit(model.set("powerlaw.PhoIndex", 1.5), data, "cstat", errors="covariance")
    moved = fit(model.set("powerlaw.PhoIndex", start), data, "cstat", errors="covariance")
    assert moved.converged and not any(moved.at_limit.values())
    assert moved.stat_value == pytest.approx(best.stat_value, abs=1e-6)
    assert moved.values["powerlaw.PhoIndex"] == pytest.approx(best.values["powerlaw.PhoIndex"],
                                                              abs=1e-5)


def test_best_value_at_a_limit_is_flagged():
    data = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    model = guess_norms(powerlaw(), data).set("powerlaw.PhoIndex", 0.5, max=1.0)
    result = fit(model, data, "cstat")  # the minimum (1.19) lies beyond the limit
    assert result.at_limit == {"powerlaw.PhoIndex": True, "powerlaw.norm": False}
    assert result.to_dict()["params"]["PhoIndex"]["at_limit"] is True
    assert "at its limit" in str(result)


def test_profile_search_runs_as_a_second_program_only_when_needed(dgtau, monkeypatch):
    """fit() stops its compiled program after the Venzon-Moolgavkar bounds and finishes the
    unsolved ones with _profile_search: the same bounds and flags as the single program of
    fit_batch's kernel (search included), and no search program when every bound is found."""
    calls = []
    real = fit_core.exported_call

    def recording(reference, name, static, *args):
        calls.append(name)
        return real(reference, name, static, *args)

    monkeypatch.setattr(fit_core, "exported_call", recording)
    fit(pl(1.2, 1.3e-5), dgtau, "cstat")
    assert "bkgjax.fit.core._profile_search" not in calls

    calls.clear()
    model = powerlaw(PhoIndex=1.2, norm=1.3e-5) + component_gaussian()
    result = fit(model, dgtau, "cstat")
    assert calls.count("bkgjax.fit.core._profile_search") == 1
    free_names, free_idx, theta_all, lower, upper = fit_core._prepare(model, dgtau, "cstat")
    single = fit_core._fit_one(theta_all, lower, upper, fit_core.prng_key(0), dgtau,
                               structure=model.structure, free_idx=free_idx, stat="cstat",
                               options=fit_core.FitOptions())
    for k, name in enumerate(free_names):
        np.testing.assert_allclose(result.intervals[name], np.asarray(single["profile_bounds"][k]),
                                   rtol=1e-9)
        assert result.bound_flags[name] == tuple(int(f) for f in single["profile_flags"][k])
