"""Joint fits (bkgjax.fit.joint): several data sets, per-data-set parameters, background
models; against Sherpa 4.19 (tests/reference/make_sherpa_joint_reference.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from bkgjax.fit import JointModel, SpectralData, fit, guess_norms, joint_predicted, joint_statistic, load
from bkgjax.fit import core as fit_core
from bkgjax.spectral import parse_model, powerlaw

REFERENCE = Path(__file__).parent / "reference" / "sherpa_joint_reference.json"
# Sherpa parameter -> bkgjax display name, per case
NAMES = {
    "velax1_joint": {"pl1.gamma": "PhoIndex", "pl1.ampl": "norm@1", "pl2.ampl": "norm@2"},
    "dgtau_bkgmodel": {"pl1.gamma": "PhoIndex", "pl1.ampl": "norm", "bpl1.gamma": "bkg.PhoIndex",
                       "bpl1.ampl": "bkg.norm"},
    "velax1_bkgmodel": {"pl1.gamma": "PhoIndex", "pl1.ampl": "norm", "bpl1.gamma": "bkg.PhoIndex",
                        "bpl1.ampl": "bkg.norm"},
}


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


def _datasets(ref, case):
    settings = ref[case]["settings"]
    out = []
    for entry in settings["files"].values():
        if not Path(entry["pha"]).exists() or not Path(entry["rmf"]).exists():
            pytest.skip(f"real spectra not found ({entry['pha']}): ../shared/data is absent")
        out.append(load(entry["pha"], erange=settings["erange"], rmf=entry["rmf"], arf=entry["arf"],
                        use_background=case.endswith("bkgmodel")))
    return out


def _model(case, n):
    if case == "velax1_joint":
        return JointModel.create(powerlaw(), n, per_dataset=["norm"])
    return JointModel.create(powerlaw(), n, background=powerlaw())


def _dgtau(folder, **kwargs):
    return load(str(folder / "acisf04487_001N023_r0009_pha3.fits.gz"), **kwargs)


def _with(model, case, values):
    for sherpa_name, value in values.items():
        model = model.set(NAMES[case][sherpa_name], value)
    return model


@pytest.mark.parametrize("case", list(NAMES))
def test_bins_and_statistic_equal_sherpa(reference, case):
    ref = reference[case]
    datasets = _datasets(reference, case)
    for data, spectra in zip(datasets, ref["spectra"].values()):
        assert data.n_bins == spectra["source"]["n_bins"]
        np.testing.assert_array_equal(np.asarray(data.counts), spectra["source"]["bin_counts"])
        if "background" in spectra:
            np.testing.assert_array_equal(np.asarray(data.background_counts),
                                          spectra["background"]["bin_counts"])
    model = _with(_model(case, len(datasets)), case, ref["settings"]["fixed"])
    theta = jnp.asarray(list(model.resolve({}).values()))
    stat = float(joint_statistic(model.structure, "cstat", theta, tuple(datasets)))
    assert stat == pytest.approx(ref["stat_fixed"], rel=1e-6)


@pytest.mark.parametrize("case", ["dgtau_bkgmodel", "velax1_bkgmodel"])
def test_background_model_counts_equal_sherpa_bin_by_bin(reference, case):
    """The background model's scaling into the source region (BACKSCAL ratio, source exposure
    and response) and its counts in the background spectrum, bin by bin; also with another
    background exposure and AREASCAL (Sherpa's scaling_variant)."""
    ref = reference[case]
    (data,) = _datasets(reference, case)
    model = _with(_model(case, 1), case, ref["settings"]["fixed"])
    theta = jnp.asarray(list(model.resolve({}).values()))
    variant = ref["scaling_variant"]
    ratio = np.asarray(data.background_ratio) * variant["background_exposure"] * \
        variant["background_areascal"] / (float(data.background_exposure) *
                                          np.asarray(data.background_areascal))
    changed = SpectralData.from_arrays(
        data.counts, data.exposure, data.matrix, data.e_lo, data.e_hi, areascal=data.areascal,
        background_counts=data.background_counts, background_ratio=ratio,
        background_exposure=variant["background_exposure"],
        background_areascal=variant["background_areascal"])
    for d, expected in ((data, ref["model_counts_fixed"]), (changed, variant["model_counts_fixed"])):
        (entry,) = joint_predicted(model.structure, theta, (d,))
        np.testing.assert_allclose(entry["source"], expected["source_total"], rtol=1e-6)
        np.testing.assert_allclose(entry["source_model"], expected["source_part"], rtol=1e-6)
        np.testing.assert_allclose(entry["source_background"],
                                   expected["background_part_in_source"], rtol=1e-6)
        np.testing.assert_allclose(entry["background"], expected["background_spectrum"], rtol=1e-6)
    theta_stat = float(joint_statistic(model.structure, "cstat", theta, (changed,)))
    assert theta_stat == pytest.approx(variant["stat_fixed"], rel=1e-6)


@pytest.mark.parametrize("case", list(NAMES))
def test_fit_and_bounds_equal_sherpa(reference, case):
    ref = reference[case]
    datasets = _datasets(reference, case)
    model = _with(_model(case, len(datasets)), case, ref["settings"]["start"])
    result = fit(model, datasets, "cstat")
    expected = ref["fit"]
    assert result.converged
    assert result.stat_value == pytest.approx(expected["stat"], rel=1e-6)
    assert result.dof == expected["dof"] and result.n_bins == expected["numpoints"]
    params = result.to_dict()["params"]
    for sherpa_name, ours in NAMES[case].items():
        exp = expected["params"][sherpa_name]
        got = params[ours]
        width = exp["upper90"] - exp["lower90"]
        assert got["value"] == pytest.approx(exp["value"], rel=1e-3)
        assert abs(got["lower90"] - exp["lower90"]) < 0.05 * width
        assert abs(got["upper90"] - exp["upper90"]) < 0.05 * width
        assert got["at_limit"] is exp["at_limit"] is False


def test_one_data_set_joint_equals_plain_fit(dgtau_dir):
    """The joint path with one data set and no background model is the plain fit."""
    data = _dgtau(dgtau_dir, erange=(0.5, 7.0), use_background=False)
    start = powerlaw(PhoIndex=1.5, norm=1e-5)
    plain = fit(start, data, "cstat")
    joint = fit(JointModel.create(start, 1), [data], "cstat")
    for name in plain.free_names:
        assert joint.values[name] == pytest.approx(plain.values[name], rel=1e-7)
        np.testing.assert_allclose(joint.intervals[name], plain.intervals[name], rtol=1e-5)
    assert joint.stat_value == pytest.approx(plain.stat_value, rel=1e-10)


def test_shared_model_over_two_data_sets_and_no_recompilation(dgtau_dir):
    """A plain Model over two data sets shares every parameter; a second pair of files of the
    same shapes (other names, other counts) reuses the compiled joint fit."""
    data = _dgtau(dgtau_dir, erange=(0.5, 7.0), use_background=False)
    other = data.with_counts(jnp.asarray(np.roll(np.asarray(data.counts), 1)))
    model = guess_norms(powerlaw(), [data, data])
    first = fit(model, [data, data], "cstat")
    single = fit(model, data, "cstat")
    # two identical spectra: same best fit, statistic doubled, errors / sqrt(2)
    assert first.stat_value == pytest.approx(2 * single.stat_value, rel=1e-8)
    assert first.values["powerlaw.PhoIndex"] == pytest.approx(single.values["powerlaw.PhoIndex"],
                                                              rel=1e-6)
    assert first.errors["powerlaw.PhoIndex"] == pytest.approx(
        single.errors["powerlaw.PhoIndex"] / np.sqrt(2), rel=1e-4)
    n_compiled = fit_core._fit_joint_one._cache_size()
    renamed = SpectralData.from_arrays(other.counts, other.exposure, other.matrix, other.e_lo,
                                       other.e_hi, areascal=other.areascal, bin_lo=other.bin_lo,
                                       bin_hi=other.bin_hi, name="another_file.pha")
    fit(model, [renamed, data], "cstat")
    assert fit_core._fit_joint_one._cache_size() == n_compiled


def test_cross_normalisation_recovers_the_simulated_ratio(dgtau_dir):
    """FPMA/FPMB-like: a frozen constant@1 = 1 and a free constant@2 recover the simulated
    cross-normalisation; the profile interval covers it."""
    data = _dgtau(dgtau_dir, erange=(0.5, 7.0), use_background=False)
    truth = powerlaw(PhoIndex=1.8, norm=3e-4)
    theta = jnp.asarray(list(truth.resolve({}).values()))
    mu = np.asarray(fit_core.predicted_counts(truth.structure, theta, data))
    rng = np.random.default_rng(4)
    a = data.with_counts(jnp.asarray(rng.poisson(mu), dtype=float))
    b = data.with_counts(jnp.asarray(rng.poisson(1.1 * mu), dtype=float))
    model = JointModel.create(parse_model("constant*powerlaw"), 2, per_dataset=["constant"])
    model = model.set("factor@1", 1.0, frozen=True).set("norm", 1e-4)
    result = fit(model, [a, b], "cstat")
    assert result.converged
    lo, hi = result.intervals["constant.factor@2"]
    assert lo < 1.1 < hi
    assert "factor@1" in result.to_dict()["frozen"]


def test_joint_model_names_and_errors():
    model = JointModel.create(parse_model("constant*powerlaw"), 2, per_dataset=["factor"],
                              background=powerlaw())
    shown = model.display_names()
    assert set(shown.values()) == {"factor@1", "factor@2", "PhoIndex", "norm", "bkg.PhoIndex",
                                   "bkg.norm"}
    assert model["bkg.norm"].name == "bkg.powerlaw.norm"
    assert model["factor@2"].name == "constant.factor@2"
    with pytest.raises(KeyError, match="one copy per data set"):
        model["factor"]
    with pytest.raises(ValueError, match="one data set only"):
        JointModel.create(powerlaw(), 1, per_dataset=["norm"])
    with pytest.raises(ValueError, match="no background model"):
        JointModel.create(powerlaw(), 2, per_dataset=["bkg.norm"])
    with pytest.raises(ValueError, match="no parameter"):
        JointModel.create(powerlaw(), 2, per_dataset=["Gamma"])
    with pytest.raises(ValueError, match="multiplicative"):
        JointModel.create(parse_model("constant"), 2)
    linked = model.set("factor@2", link="factor@1")
    assert linked["factor@2"].link == "constant.factor@1"
    assert "constant.factor@2" not in linked.free_names


def test_background_model_errors(dgtau_dir):
    no_bkg = _dgtau(dgtau_dir, erange=(0.5, 7.0), use_background=False)
    with_bkg = _dgtau(dgtau_dir, erange=(0.5, 7.0))
    model = JointModel.create(powerlaw(), 1, background=powerlaw())
    with pytest.raises(ValueError, match="needs a background spectrum"):
        fit(model, no_bkg, "cstat")
    with pytest.raises(ValueError, match="wstat profiles the background"):
        fit(model, with_bkg, "wstat")
    with pytest.raises(ValueError, match="built for 1 data set"):
        fit(model, [with_bkg, with_bkg], "cstat")
    with pytest.raises(ValueError, match="method must be"):
        fit(powerlaw(), with_bkg, "wstat", method="bogus")
    with pytest.raises(ValueError, match="n_starts must be"):
        fit(powerlaw(), with_bkg, "wstat", n_starts=0)


def test_background_model_with_chi2_and_pgstat(dgtau_dir):
    """chi2 with a background model fits both spectra; pgstat profiles a Gaussian background
    (no background model) and lands near wstat on this Poisson background."""
    data = _dgtau(dgtau_dir, erange=(0.5, 7.0), grouping="min-counts:15")
    model = guess_norms(JointModel.create(powerlaw(), 1, background=powerlaw()), data)
    result = fit(model, data, "chi2")
    assert result.converged and result.n_bins == 2 * data.n_bins
    start = guess_norms(powerlaw(PhoIndex=1.5), data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pg = fit(start, data, "pgstat")
        w = fit(start, data, "wstat")
    assert pg.converged
    assert pg.values["powerlaw.PhoIndex"] == pytest.approx(w.values["powerlaw.PhoIndex"], abs=0.1)


def test_tie_to_an_expression(dgtau_dir):
    """norm@2 = 2 * norm@1 (XSPEC newpar with an expression): the tie holds at the best fit,
    the fit has one norm fewer, fluxes follow it; unknown names and cycles are clear errors."""
    data = _dgtau(dgtau_dir, erange=(0.5, 7.0), use_background=False)
    doubled = data.with_counts(2 * data.counts)
    model = JointModel.create(powerlaw(), 2, per_dataset=["norm"])
    tied = guess_norms(model, [data, doubled]).set("norm@2", link="2 * norm@1")
    assert tied["norm@2"].link == "2 * powerlaw.norm@1"
    result = fit(tied, [data, doubled], "cstat")
    assert "powerlaw.norm@2" not in result.free_names
    assert result.values["powerlaw.norm@2"] == pytest.approx(2 * result.values["powerlaw.norm@1"],
                                                             rel=1e-12)
    free = fit(guess_norms(model, [data, doubled]), [data, doubled], "cstat")
    assert free.values["powerlaw.norm@2"] / free.values["powerlaw.norm@1"] == pytest.approx(2, rel=1e-6)
    assert result.stat_value == pytest.approx(free.stat_value, abs=1e-6)
    from bkgjax.fit import sample_flux

    f1 = sample_flux(result, 0.5, 7.0, dataset=1, kind="photon")
    f2 = sample_flux(result, 0.5, 7.0, dataset=2, kind="photon")
    assert f2["value"] == pytest.approx(2 * f1["value"], rel=1e-9)
    assert f2["upper90"] == pytest.approx(2 * f1["upper90"], rel=1e-9)
    with pytest.raises(KeyError, match="no parameter 'nrm@1'"):
        model.set("norm@2", link="2 * nrm@1")
    with pytest.raises(ValueError, match="cycle"):
        model.set("norm@2", link="norm@1").set("norm@1", link="norm@2 / 2")
    with pytest.raises(ValueError, match="unexpected"):
        model.set("norm@2", link="2 $ norm@1")


@pytest.mark.parametrize("view, residuals", [("counts", "delchi"), ("unfolded", "ratio"),
                                             ("nufnu", "delchi")])
def test_joint_plot_views(dgtau_dir, view, residuals):
    """Every view draws both data sets, labels both axes with units, lists the frozen
    parameters; the model line covers the data's full energy range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bkgjax.plotting import plot_joint_fit

    data = _dgtau(dgtau_dir, erange=(0.5, 7.0))
    model = JointModel.create(parse_model("constant*powerlaw"), 2, per_dataset=["constant"],
                              background=powerlaw())
    model = guess_norms(model.set("factor@1", 1.0, frozen=True), [data, data])
    result = fit(model, [data, data], "cstat", errors="covariance")
    fig = plot_joint_fit(result, [data, data], view=view, residuals=residuals)
    top, bottom = fig.axes
    assert "keV" in bottom.get_xlabel() and top.get_ylabel() and bottom.get_ylabel()
    assert "s$^{-1}$" in top.get_ylabel()
    assert "factor@1=1" in top.get_title()
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert sum("1:" in t for t in labels) and sum("2:" in t for t in labels)
    edges = [patch.get_path().vertices[:, 0] for patch in top.patches]
    assert min(e.min() for e in edges) <= 0.5 + 0.02 and max(e.max() for e in edges) >= 7.0 - 0.02
    plt.close(fig)
    with pytest.raises(ValueError, match="view must be"):
        plot_joint_fit(result, [data, data], view="folded")
