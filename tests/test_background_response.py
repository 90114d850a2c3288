"""A background model folded through the background spectrum's OWN response (the background
file's RESPFILE/ANCRFILE, Sherpa's get_bkg_rmf/get_bkg_arf), against Sherpa 4.19
(tests/reference/make_sherpa_bkg_response_reference.py, files from
tests/reference/bkg_response_files.py: NuSTAR Vela X-1 FPMA whose background names a blurred
RMF and the focused-CXB ARF)."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bkgjax.fit import JointModel, SpectralData, fit, joint_predicted, joint_statistic, load
from bkgjax.fit import core as fit_core
from bkgjax.fit.joint import joint_derivatives
from bkgjax.io import ARF, load_spectrum, read_arf
from bkgjax.spectral import powerlaw

REFERENCE_DIR = Path(__file__).parent / "reference"
CASE = "velax1_own_bkg_response"
# Sherpa parameter -> bkgjax display name
NAMES = {"pl1.gamma": "PhoIndex", "pl1.ampl": "norm", "bpl1.gamma": "bkg.PhoIndex",
         "bpl1.ampl": "bkg.norm"}


def _files_module():
    spec = importlib.util.spec_from_file_location(
        "bkg_response_files", REFERENCE_DIR / "bkg_response_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILES = _files_module()


@pytest.fixture(scope="module")
def reference():
    return json.loads((REFERENCE_DIR / "sherpa_bkg_response_reference.json").read_text())[CASE]


@pytest.fixture(scope="module")
def case_files(tmp_path_factory, shared_data, velax1_dir):
    return FILES.write_case(tmp_path_factory.mktemp("own_bkg_response"), shared_data)


@pytest.fixture(scope="module")
def data(case_files, reference):
    return load(case_files["source"], erange=reference["settings"]["erange"])


def _model(values):
    model = JointModel.create(powerlaw(), 1, background=powerlaw())
    for sherpa_name, value in values.items():
        model = model.set(NAMES[sherpa_name], value)
    return model


def _theta(model):
    return jnp.asarray(list(model.resolve({}).values()))


def _write_background(case_files, folder, **keywords):
    """A source + background pair in ``folder`` whose background header has ``keywords``."""
    folder = Path(folder)
    for role in ("rmf", "arf", "background_rmf", "background_arf"):
        name = folder / Path(case_files[role]).name
        if not name.exists():
            FILES.link(Path(case_files[role]).resolve(), name)
    FILES.copy_pha(case_files["background"], folder / "bk.pha", **keywords)
    return str(FILES.copy_pha(case_files["source"], folder / "sr.pha"))


def test_background_names_its_own_response(case_files, data, reference):
    files = load_spectrum(case_files["source"])
    assert Path(files.background_rmf.path).name == "bkg_blur.rmf"
    assert Path(files.background_arf.path).name == "fcxbA.arf"
    assert files.background_rmf.hduclas3 == "REDIST"
    assert reference["settings"]["sherpa_responses"] == {
        "rmf": "diag.rmf", "arf": "sr.arf", "background_rmf": "bkg_blur.rmf",
        "background_arf": "fcxbA.arf"}
    assert data.n_bins == reference["spectra"]["source"]["n_bins"] == \
        reference["spectra"]["background"]["n_bins"]
    assert data.background_matrix is not None
    assert data.background_matrix.shape == data.matrix.shape
    # the blur reaches one energy row beyond the noticed channels at either end: the energy rows
    # are those either response needs
    alone = load(case_files["source"], erange=reference["settings"]["erange"],
                 background_response=False)
    assert alone.background_matrix is None
    assert data.matrix.shape[0] == alone.matrix.shape[0] + 2


@pytest.mark.parametrize("variant", ["files", "scaling_variant"])
def test_counts_and_statistic_equal_sherpa_bin_by_bin(data, reference, variant):
    """Source part, background part in the source (source response), background spectrum (its
    own response) at fixed parameters; also with another background EXPOSURE and AREASCAL
    (built with SpectralData.from_arrays(background_matrix=...))."""
    model = _model(reference["settings"]["fixed"])
    expected = reference
    if variant == "scaling_variant":
        expected = reference["scaling_variant"]
        exposure, areascal = expected["background_exposure"], expected["background_areascal"]
        ratio = np.asarray(data.background_ratio) * exposure * areascal / (
            float(data.background_exposure) * np.asarray(data.background_areascal))
        data = SpectralData.from_arrays(
            data.counts, data.exposure, data.matrix, data.e_lo, data.e_hi,
            areascal=data.areascal, background_counts=data.background_counts,
            background_ratio=ratio, background_exposure=exposure, background_areascal=areascal,
            background_matrix=data.background_matrix)
    (entry,) = joint_predicted(model.structure, _theta(model), (data,))
    counts = expected["model_counts_fixed"]
    np.testing.assert_allclose(entry["source"], counts["source_total"], rtol=1e-6)
    np.testing.assert_allclose(entry["source_model"], counts["source_part"], rtol=1e-6)
    np.testing.assert_allclose(entry["source_background"], counts["background_part_in_source"],
                               rtol=1e-6)
    np.testing.assert_allclose(entry["background"], counts["background_spectrum"], rtol=1e-6)
    stat = float(joint_statistic(model.structure, "cstat", _theta(model), (data,)))
    assert stat == pytest.approx(expected["stat_fixed"], rel=1e-6)


def test_fold_derivatives_equal_autodiff(data, reference):
    """The fit's hand-written adjoint of the two responses gives the gradient and Hessian of
    the statistic that autodiff gives."""
    model = _model(reference["settings"]["fixed"])
    theta = _theta(model)
    free = tuple(range(theta.size))
    inf = jnp.full(theta.size, jnp.inf)
    derivatives = joint_derivatives(model.structure, "cstat", free, theta, (data,), -inf, inf)
    value, grad, hess = derivatives.theta_derivatives(theta)

    def stat(t):
        return joint_statistic(model.structure, "cstat", t, (data,))

    assert float(value) == pytest.approx(float(stat(theta)), rel=1e-12)
    np.testing.assert_allclose(grad, jax.jit(jax.grad(stat))(theta), rtol=1e-9)
    np.testing.assert_allclose(hess, jax.jit(jax.hessian(stat))(theta), rtol=1e-8)


@pytest.fixture(scope="module")
def fitted(data, reference):
    return fit(_model(reference["settings"]["start"]), data, "cstat")


def test_fit_equals_sherpa(fitted, reference):
    expected = reference["fit"]
    assert fitted.converged
    assert fitted.stat_value == pytest.approx(expected["stat"], rel=1e-4)
    assert fitted.dof == expected["dof"] and fitted.n_bins == expected["numpoints"]
    params = fitted.to_dict()["params"]
    for sherpa_name, ours in NAMES.items():
        exp, got = expected["params"][sherpa_name], params[ours]
        width = exp["upper90"] - exp["lower90"]
        assert got["value"] == pytest.approx(exp["value"], rel=1e-3)
        assert abs(got["lower90"] - exp["lower90"]) < 0.05 * width
        assert abs(got["upper90"] - exp["upper90"]) < 0.05 * width


def test_another_file_of_the_same_shapes_reuses_the_compiled_fit(fitted, data, reference):
    """Other counts, other name, another background response of the same shape: no new
    compilation of the joint fit."""
    n_compiled = fit_core._fit_joint_one._cache_size()
    other = SpectralData.from_arrays(
        jnp.roll(data.counts, 1), data.exposure, data.matrix, data.e_lo, data.e_hi,
        areascal=data.areascal, background_counts=data.background_counts,
        background_ratio=data.background_ratio, background_exposure=data.background_exposure,
        background_areascal=data.background_areascal,
        background_matrix=0.9 * np.asarray(data.background_matrix), name="another_file.pha")
    again = fit(_model(reference["settings"]["start"]), other, "cstat")
    assert again.converged
    assert fit_core._fit_joint_one._cache_size() == n_compiled


def test_no_own_response_leaves_the_data_unchanged(velax1_dir, case_files, tmp_path, reference):
    """The original files (background RESPFILE/ANCRFILE 'none') and a background naming the
    source's own files: no background matrix, the arrays of a load without background
    responses."""
    erange = reference["settings"]["erange"]
    original = load(str(velax1_dir / "nu90402339002A01_sr.pha"), erange=erange,
                    rmf=case_files["rmf"])
    assert original.background_matrix is None and original.matrix.shape == (425, 425)
    same = _write_background(case_files, tmp_path, RESPFILE="diag.rmf", ANCRFILE="sr.arf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_spectrum(same).background_rmf is None
        named_same = load(same, erange=erange)
    assert named_same.background_matrix is None
    for name in ("counts", "matrix", "background_counts", "background_ratio"):
        np.testing.assert_array_equal(getattr(named_same, name), getattr(original, name))
    assert jax.tree_util.tree_structure(named_same) == jax.tree_util.tree_structure(original)


def test_missing_background_response_warns_and_uses_the_source_response(case_files, tmp_path,
                                                                        reference):
    erange = reference["settings"]["erange"]
    both = _write_background(case_files, tmp_path, RESPFILE="nothere.rmf", ANCRFILE="gone.arf")
    with pytest.warns(UserWarning) as record:
        data = load(both, erange=erange)
    messages = [str(w.message) for w in record]
    assert any("RESPFILE" in m and "nothere.rmf" in m and "source's RMF" in m for m in messages)
    assert any("ANCRFILE" in m and "gone.arf" in m and "source's ARF" in m for m in messages)
    assert data.background_matrix is None
    alone = load(both, erange=erange, background_response=False)
    np.testing.assert_array_equal(data.matrix, alone.matrix)

    # RMF missing, own ARF: the source's RMF with the background's ARF
    only_arf = _write_background(case_files, tmp_path, RESPFILE="nothere.rmf",
                                 ANCRFILE="fcxbA.arf")
    with pytest.warns(UserWarning, match="RESPFILE names 'nothere.rmf'"):
        data = load(only_arf, erange=erange)
    source_area = read_arf(case_files["arf"]).specresp
    background_area = read_arf(case_files["background_arf"]).specresp
    rows = np.searchsorted(np.asarray(read_arf(case_files["arf"]).energ_lo),
                           np.asarray(data.e_lo))
    np.testing.assert_allclose(
        data.background_matrix,
        np.asarray(data.matrix) * (background_area[rows] / source_area[rows])[:, None],
        rtol=1e-12)


def test_background_response_checks():
    counts = np.array([3.0, 4.0])
    matrix = np.ones((3, 2))
    edges = dict(e_lo=[1.0, 2.0, 3.0], e_hi=[2.0, 3.0, 4.0])
    background = dict(background_counts=[1.0, 2.0], background_ratio=2.0,
                      background_exposure=100.0)
    with pytest.raises(ValueError, match="without background_counts"):
        SpectralData.from_arrays(counts, 10.0, matrix, background_matrix=matrix, **edges)
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected the source matrix's \(3, 2\)"):
        SpectralData.from_arrays(counts, 10.0, matrix, background_matrix=np.ones((2, 2)),
                                 **edges, **background)
    with pytest.raises(ValueError, match="NaN/inf or negative"):
        SpectralData.from_arrays(counts, 10.0, matrix, background_matrix=-matrix, **edges,
                                 **background)
    data = SpectralData.from_arrays(counts, 10.0, matrix, background_matrix=2 * matrix, **edges,
                                    **background)
    assert data.with_counts(counts + 1).background_matrix is data.background_matrix


def test_background_response_on_another_energy_grid_is_a_clear_error(case_files, reference):
    files = load_spectrum(case_files["source"])
    arf = files.background_arf
    shifted = ARF(path="shifted.arf", energ_lo=arf.energ_lo * 1.01, energ_hi=arf.energ_hi * 1.01,
                  specresp=arf.specresp)
    moved = type(files)(files.source, files.background, files.rmf, files.arf,
                        background_rmf=files.background_rmf, background_arf=shifted)
    with pytest.raises(ValueError, match="shifted.arf has 4096 energy bins.*one energy grid"):
        SpectralData.from_files(moved, reference["settings"]["erange"])
