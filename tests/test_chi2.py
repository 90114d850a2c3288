"""Chi-square statistics (chi2 = chi2gehrels, chi2datavar, chi2modvar) against Sherpa 4.19 on the
real DG Tau and Vela X-1 spectra (tests/reference/make_sherpa_grouping_reference.py): value at
fixed parameters, best fit and 90 % bounds; value and gradient finite where they must be."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bkgjax.cli import demo_spectrum_path, main
from bkgjax.fit import fit, load, total_statistic
from bkgjax.spectral import powerlaw
from bkgjax.stats import chi2_datavar, chi2_gehrels, chi2_modvar

REFERENCE = Path(__file__).parent / "reference" / "sherpa_grouping_reference.json"
GROUPING = {"ungrouped": "file", "min_counts_15": "min-counts:15"}


def _cases():
    ref = json.loads(REFERENCE.read_text())
    for spectrum in ("dgtau", "velax1"):
        for key in ref[spectrum]["chi2"]:
            yield spectrum, key


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("spectrum, key", list(_cases()))
def test_chi2_equals_sherpa(reference, spectrum, key):
    ref = reference[spectrum]
    expected = ref["chi2"][key]
    case, stat = key.split("/")
    files = ref["files"]
    if not Path(files["pha"]).exists() or not Path(files["rmf"]).exists():
        pytest.skip("real spectra not found: ../shared/data is absent")
    data = load(files["pha"], erange=ref["erange"], grouping=GROUPING[case], rmf=files["rmf"],
                arf=files["arf"], use_background=False)
    assert data.n_bins == expected["n_bins"]
    fixed = powerlaw(PhoIndex=ref["fixed"]["gamma"], norm=ref["fixed"]["ampl"])
    assert float(total_statistic(fixed, data, stat)) == pytest.approx(expected["stat_fixed"],
                                                                       rel=1e-6)
    result = fit(fixed, data, stat, errors="profile", level=0.9)
    assert result.converged
    assert result.stat_value == pytest.approx(expected["fit"]["stat"], rel=1e-4, abs=1e-4)
    for ours, theirs in (("powerlaw.PhoIndex", "gamma"), ("powerlaw.norm", "ampl")):
        assert result.values[ours] == pytest.approx(expected["fit"][theirs], rel=1e-3)
        lo, hi = result.intervals[ours]
        width = expected["fit"][f"{theirs}_upper90"] - expected["fit"][f"{theirs}_lower90"]
        assert abs(lo - expected["fit"][f"{theirs}_lower90"]) < 0.05 * width
        assert abs(hi - expected["fit"][f"{theirs}_upper90"]) < 0.05 * width


def test_chi2_per_bin_edges_and_gradients():
    d = jnp.array([0.0, 0.0, 4.0, 9.0])
    m = jnp.array([0.0, 2.0, 4.0, 4.0])
    # Sherpa's model variance is max(M, 1)
    np.testing.assert_allclose(chi2_modvar(m, d), [0.0, 2.0, 0.0, 25.0 / 4.0])
    np.testing.assert_allclose(chi2_modvar(jnp.array([0.5, 0.0]), jnp.array([2.0, 3.0])),
                               [2.25, 9.0])
    np.testing.assert_allclose(chi2_datavar(m[2:], d[2:]), [0.0, 25.0 / 9.0])
    assert np.isinf(chi2_datavar(jnp.array([1.0]), jnp.array([0.0])))[0]
    np.testing.assert_allclose(chi2_gehrels(m, d), (d - m) ** 2 / (1 + np.sqrt(d + 0.75)) ** 2)
    for f in (chi2_modvar, chi2_gehrels):
        g = jax.grad(lambda mu, f=f: jnp.sum(f(mu, d)))(m + 1.0)
        assert np.all(np.isfinite(g))
    g = jax.grad(lambda mu: jnp.sum(chi2_modvar(mu, d)))(jnp.array([0.0, 1.0, 1.0, 1.0]))
    assert np.all(np.isfinite(g))  # M = 0 bins: finite value and gradient


def test_chi2_bad_uses_are_clear_errors(capsys):
    data = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    with pytest.raises(ValueError, match="chi2datavar needs counts > 0 in every bin"):
        fit(powerlaw(), data, "chi2datavar")
    with_bkg = load(demo_spectrum_path(), erange=(0.5, 7.0))
    with pytest.raises(ValueError, match="chi2datavar needs counts > 0 in every bin"):
        fit(powerlaw(), with_bkg, "chi2datavar")  # S + B/r^2 = 0 in empty bins
    assert main(["fit-spectrum", demo_spectrum_path(), "--stat", "chi2datavar",
                 "--no-background"]) == 2
    assert "--stat chi2datavar: " in capsys.readouterr().err
    assert main(["fit-spectrum", demo_spectrum_path(), "--stat", "chi2", "--no-background",
                 "--sample"]) == 2
    assert "--sample samples a Poisson likelihood" in capsys.readouterr().err


SUBTRACTED = Path(__file__).parent / "reference" / "sherpa_chi2_subtracted_reference.json"


@pytest.mark.parametrize("stat", ["chi2gehrels", "chi2datavar", "chi2modvar"])
def test_chi2_of_background_subtracted_counts_equals_sherpa(stat):
    """DG Tau grouped to 15 counts with its background subtracted (Sherpa subtract(),
    tests/reference/make_sherpa_chi2_subtracted_reference.py): per-bin errors, statistic at
    fixed values, best fit and 90 % bounds."""
    ref = json.loads(SUBTRACTED.read_text())
    files = ref["files"]
    if not Path(files["pha"]).exists():
        pytest.skip(f"real spectra not found ({files['pha']}): ../shared/data is absent")
    data = load(files["pha"], erange=ref["erange"], grouping="min-counts:15", rmf=files["rmf"],
                arf=files["arf"])
    expected = ref[stat]
    assert data.n_bins == len(expected["staterror"])
    if stat != "chi2modvar":  # Sherpa's modvar error is the model's (0 before a fit)
        s, b, r = (np.asarray(x) for x in (data.counts, data.background_counts,
                                          data.background_ratio))
        g = lambda n: 1 + np.sqrt(n + 0.75)  # noqa: E731
        sigma = np.sqrt(g(s) ** 2 + g(b) ** 2 / r**2) if stat == "chi2gehrels" else \
            np.sqrt(s + b / r**2)
        np.testing.assert_allclose(sigma, expected["staterror"], rtol=1e-10)
    fixed = powerlaw(PhoIndex=ref["fixed"]["gamma"], norm=ref["fixed"]["ampl"])
    assert float(total_statistic(fixed, data, stat)) == pytest.approx(expected["stat_fixed"],
                                                                      rel=1e-8)
    start = powerlaw(PhoIndex=ref["start"]["gamma"], norm=ref["start"]["ampl"])
    result = fit(start, data, stat)
    best = expected["fit"]
    assert result.converged and result.dof == best["dof"]
    assert result.stat_value == pytest.approx(best["stat"], rel=1e-6)
    for ours, theirs in (("powerlaw.PhoIndex", "gamma"), ("powerlaw.norm", "ampl")):
        width = best[f"{theirs}_upper90"] - best[f"{theirs}_lower90"]
        assert result.values[ours] == pytest.approx(best[theirs], rel=1e-3)
        lo, hi = result.intervals[ours]
        assert abs(lo - best[f"{theirs}_lower90"]) < 0.05 * width
        assert abs(hi - best[f"{theirs}_upper90"]) < 0.05 * width
