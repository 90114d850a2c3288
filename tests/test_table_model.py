"""XSPEC table models (atable, mtable, etable; OGIP/92-009): the reader and its errors, the
JAX evaluation against closed-form models and against independent NumPy/SciPy
re-implementations of XSPEC's interpolation and rebinning, redshift and additional parameters,
a real published table, the ``xtable{file}`` expression syntax, component versions keyed by
the file's content, jit/vmap/grad, a fit and the command line.

The analytic tables are written by tests/reference/make_table_models.py into a temporary
folder; the real table is tests/data/test_xspec_table_model.fits (tests/data/README.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import warnings
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits
from scipy.interpolate import RegularGridInterpolator

import bkgjax  # noqa: F401  (64-bit JAX)
from bkgjax.io import BkgjaxIOError, MissingFileError, read_table_model
from bkgjax.spectral import (
    COMPONENTS,
    parse_expression,
    parse_model,
    table_component,
    unregister_component,
)
from bkgjax.spectral.model import _tokenize

HERE = Path(__file__).resolve().parent
REAL_TABLE = HERE / "data" / "test_xspec_table_model.fits"
_spec = importlib.util.spec_from_file_location("make_table_models",
                                               HERE / "reference" / "make_table_models.py")
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)


#: every test leaves the component registry as it found it (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("clean_component_registry")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    return {"bknpower": mk.bknpower_table(folder / "bknpower_table.fits"),
            "pcover": mk.pcover_mtable(folder / "pcover_mtable.fits"),
            "edge": mk.edge_etable(folder / "edge_etable.fits")}


# -- independent references ------------------------------------------------------------------


def astropy_grid(path):
    """(grids, spectra (n_1, ..., n_N, 1 + n_add, n_E), edges) read with astropy directly."""
    with fits.open(path) as hdul:
        par, ene, spe = hdul["PARAMETERS"].data, hdul["ENERGIES"].data, hdul["SPECTRA"].data
        n_int = hdul["PARAMETERS"].header["NINTPARM"]
        grids = [np.asarray(par["VALUE"][i][:par["NUMBVALS"][i]], float) for i in range(n_int)]
        names = ["INTPSPEC"] + [c for c in spe.columns.names if c.startswith("ADDSP")]
        spectra = np.stack([np.asarray(spe[c], float) for c in names], axis=1)
        edges = np.append(np.asarray(ene["ENERG_LO"], float), float(ene["ENERG_HI"][-1]))
    return grids, spectra.reshape(tuple(g.size for g in grids) + spectra.shape[1:]), edges


def interpolated_spectra(path, point, logarithmic):
    """XSPEC's multilinear interpolation (linear in p, or in ln p) with SciPy."""
    grids, spectra, _ = astropy_grid(path)
    axes = [np.log(g) if log else g for g, log in zip(grids, logarithmic)]
    x = [np.log(p) if log else p for p, log in zip(point, logarithmic)]
    return RegularGridInterpolator(axes, spectra, method="linear")(np.array([x]))[0]


def xspec_rebin(values, edges, lo, hi, kind, below=None, above=None):
    """Dense-matrix XSPEC rebinning: table bin k weighs |overlap|/width_k; outside the table,
    bins of the edge widths holding ``below``/``above`` (module docstring of
    bkgjax.spectral.table_model)."""
    default = 0.0 if kind == "add" else 1.0
    below = default if below is None else below
    above = default if above is None else above
    width = np.diff(edges)
    overlap = np.clip(np.minimum(hi[:, None], edges[None, 1:])
                      - np.maximum(lo[:, None], edges[None, :-1]), 0.0, None)
    w = overlap / width
    w_below = np.clip(np.minimum(hi, edges[0]) - lo, 0.0, None) / width[0]
    w_above = np.clip(hi - np.maximum(lo, edges[-1]), 0.0, None) / width[-1]
    total = w @ values + below * w_below + above * w_above
    return total if kind == "add" else total / (w.sum(axis=1) + w_below + w_above)


def evaluate(model, values, lo, hi):
    """The model at ``values`` (short or qualified names) on the bins [lo, hi]."""
    return np.asarray(model.with_values(values).evaluate({}, jnp.asarray(lo), jnp.asarray(hi)))


OUT_EDGES = np.geomspace(0.35, 70.0, 233)  # straddles every table's ends, not aligned
OUT_LO, OUT_HI = OUT_EDGES[:-1], OUT_EDGES[1:]


# -- the reader ------------------------------------------------------------------------------


def test_reader_contents(files):
    table = read_table_model(files["bknpower"])
    assert table.path == str(files["bknpower"]) and table.model_name == "bknpower"
    assert table.additive is True and table.redshift is True
    assert table.low_limit is None and table.high_limit is None
    assert [p.name for p in table.parameters] == ["PhoIndex", "BreakE", "LineFlux"]
    assert [p.method for p in table.parameters] == [0, 1, -1]
    assert table.n_interpolated == 2 and table.n_additional == 1
    assert [p.frozen for p in table.parameters] == [False, True, False]
    np.testing.assert_array_equal(table.parameters[1].values, mk.BKNPOWER_BREAK)
    assert table.grid_shape == (5, 5) and table.spectra.shape == (5, 5, 2, 160)
    assert table.spectra.dtype == np.float32  # E columns kept in their precision
    np.testing.assert_array_equal(table.energy_edges, mk.BKNPOWER_EDGES)
    grids, spectra, _ = astropy_grid(files["bknpower"])
    np.testing.assert_array_equal(table.spectra, spectra)
    assert table.sha256 == hashlib.sha256(files["bknpower"].read_bytes()).hexdigest()
    assert read_table_model(files["bknpower"]) is table  # same content: parsed once
    mtable = read_table_model(files["pcover"])
    assert mtable.additive is False and (mtable.low_limit, mtable.high_limit) == (0.0, 1.0)
    with pytest.raises(AttributeError):
        table.path = "x"


def test_real_published_table():
    """astromodels' copy of a Shimura & Takahara disc table (two logarithmic parameters):
    PARAMVAL rounded differently from VALUE is accepted; grid points give the stored spectra,
    other points XSPEC's log-log bilinear interpolation."""
    table = read_table_model(REAL_TABLE)
    assert table.model_name == "Shimura and Ta" and table.grid_shape == (7, 4)
    assert [p.name for p in table.parameters] == ["M", "Mdot"]
    grids, spectra, edges = astropy_grid(REAL_TABLE)
    model = parse_model(f"atable{{{REAL_TABLE}}}")
    assert str(model) == "test_xspec_table_model"
    m, mdot = model["M"], model["Mdot"]
    assert (m.value, m.min, m.max, m.frozen) == (5.0, 1.0, 1000.0, False)
    assert mdot.value == 10.0 and mdot.min == 1.0 and mdot.max == pytest.approx(31.623, 1e-6)
    lo, hi = edges[:-1], edges[1:]
    for i, j in [(0, 0), (3, 2), (6, 3)]:
        got = evaluate(model, {"M": grids[0][i], "Mdot": grids[1][j], "norm": 2.0}, lo, hi)
        np.testing.assert_allclose(got, 2.0 * spectra[i, j, 0], rtol=1e-12, atol=0)
    for point in [(5.0, 10.0), (2.0, 1.5), (700.0, 20.0)]:
        expected = interpolated_spectra(REAL_TABLE, point, (True, True))[0]
        got = evaluate(model, {"M": point[0], "Mdot": point[1]}, lo, hi)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-30)
        got = evaluate(model, {"M": point[0], "Mdot": point[1]}, OUT_LO, OUT_HI)
        np.testing.assert_allclose(got, xspec_rebin(expected, edges, OUT_LO, OUT_HI, "add"),
                                   rtol=1e-12, atol=1e-30)


# -- the analytic tables ---------------------------------------------------------------------


@pytest.mark.parametrize("index, break_e", [(1.0, 2.0), (2.0, 8.0), (2.5, 16.0), (3.0, 32.0)])
def test_atable_grid_points_reproduce_the_analytic_model(files, index, break_e):
    model = parse_model(f"atable{{{files['bknpower']}}}")
    edges = mk.BKNPOWER_EDGES
    lo, hi = edges[:-1], edges[1:]
    got = evaluate(model, {"PhoIndex": index, "BreakE": break_e, "LineFlux": 0.7,
                           "norm": 2.5}, lo, hi)
    expected = 2.5 * (mk.bknpower_bins(lo, hi, index, break_e) + 0.7 * mk.line_bins(lo, hi, index))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12 * expected.max())


@pytest.mark.parametrize("point", [(1.3, 2.7), (2.2, 8.0), (2.0, 11.3), (2.9, 30.0)])
def test_atable_interpolates_like_xspec(files, point):
    """Linear in PhoIndex (METHOD 0), in ln BreakE (METHOD 1), spectra combined linearly,
    the additional parameter's spectrum interpolated on the same grid and added linearly."""
    model = parse_model(f"atable{{{files['bknpower']}}}")
    edges = mk.BKNPOWER_EDGES
    values = {"PhoIndex": point[0], "BreakE": point[1], "LineFlux": 3.0, "norm": 0.5}
    both = interpolated_spectra(files["bknpower"], point, (False, True))
    expected = 0.5 * (both[0] + 3.0 * both[1])
    np.testing.assert_allclose(evaluate(model, values, edges[:-1], edges[1:]), expected,
                               rtol=1e-12, atol=1e-30)
    np.testing.assert_allclose(evaluate(model, values, OUT_LO, OUT_HI),
                               xspec_rebin(expected, edges, OUT_LO, OUT_HI, "add"),
                               rtol=1e-12, atol=1e-30)
    # zero outside the tabulated energies (0.5-50 keV)
    assert np.all(evaluate(model, values, OUT_LO, OUT_HI)[OUT_HI <= 0.5] == 0.0)
    # log interpolation differs from linear interpolation in BreakE between grid points
    linear = interpolated_spectra(files["bknpower"], point, (False, False))
    if point[1] not in mk.BKNPOWER_BREAK:
        assert not np.allclose(0.5 * (linear[0] + 3.0 * linear[1]), expected, rtol=1e-6)


def test_rebinning_onto_any_grid(files):
    """Output bins inside one table bin, spanning many, ending exactly on table edges, partly
    or wholly outside the table: additive sums and multiplicative means as XSPEC weighs them."""
    rng = np.random.default_rng(3)
    table_edges = mk.PCOVER_EDGES  # 0.3-30 keV
    picked = rng.choice(table_edges, 25, replace=False)
    edges = np.unique(np.concatenate([picked, rng.uniform(0.1, 40.0, 60), [0.29, 0.3, 30.0]]))
    lo, hi = edges[:-1], edges[1:]
    mtable = parse_model(f"mtable{{{files['pcover']}}}")
    factor = interpolated_spectra(files["pcover"], (2.0, 0.7), (True, False))[0]
    np.testing.assert_allclose(evaluate(mtable, {"nH": 2.0, "CvrFract": 0.7}, lo, hi),
                               xspec_rebin(factor, table_edges, lo, hi, "mul", 0.0, 1.0),
                               rtol=1e-12)
    atable = parse_model(f"atable{{{files['bknpower']}}}")
    flux = interpolated_spectra(files["bknpower"], (1.8, 4.0), (False, True))[0]
    got = evaluate(atable, {"PhoIndex": 1.8, "BreakE": 4.0}, lo, hi)
    np.testing.assert_allclose(got, xspec_rebin(flux, mk.BKNPOWER_EDGES, lo, hi, "add"),
                               rtol=1e-12, atol=1e-300)
    # a bin covering the whole table holds all of its flux, bins outside it none
    got = evaluate(atable, {"PhoIndex": 1.8, "BreakE": 4.0}, np.array([0.1, 0.4, 60.0]),
                   np.array([0.2, 55.0, 80.0]))
    assert got[0] == 0.0 and got[2] == 0.0
    np.testing.assert_allclose(got[1], flux.sum(), rtol=1e-13)


def test_values_outside_the_grid_are_clamped_and_limits_are_the_grid(files):
    model = parse_model(f"atable{{{files['bknpower']}}}")
    index = model["PhoIndex"]  # MINIMUM 0, MAXIMUM 4 in the file; the grid is 1..3
    assert (index.min, index.max, index.value) == (1.0, 3.0, 2.0)
    assert model["BreakE"].frozen and model["z"].frozen and not model["LineFlux"].frozen
    assert (model["z"].min, model["z"].max) == (0.0, 5.0)
    lo, hi = OUT_LO, OUT_HI
    inside = evaluate(model, {"PhoIndex": 3.0}, lo, hi)
    beyond = evaluate(model.set("PhoIndex", min=0.0, max=4.0), {"PhoIndex": 3.7}, lo, hi)
    np.testing.assert_array_equal(beyond, inside)


@pytest.mark.parametrize("z", [0.3, 1.7])
def test_atable_redshift(files, z):
    """Energies are the table's divided by 1 + z, the photon flux divided by 1 + z."""
    model = parse_model(f"atable{{{files['bknpower']}}}")
    edges = mk.BKNPOWER_EDGES
    values = {"PhoIndex": 2.0, "BreakE": 8.0, "LineFlux": 1.0, "z": z}
    lo, hi = edges[:-1], edges[1:]
    rest = mk.bknpower_bins(lo, hi, 2.0, 8.0) + mk.line_bins(lo, hi, 2.0)
    got = evaluate(model, values, lo / (1 + z), hi / (1 + z))
    np.testing.assert_allclose(got, rest / (1 + z), rtol=1e-6, atol=1e-12 * rest.max())
    got = evaluate(model, values, OUT_LO, OUT_HI)
    expected = xspec_rebin(rest, edges, OUT_LO * (1 + z), OUT_HI * (1 + z), "add") / (1 + z)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-12 * expected.max())


def test_mtable_grid_points_interpolation_and_energy_limits(files):
    model = parse_model(f"mtable{{{files['pcover']}}}")
    assert model.kind == "mul" and model.names == ("pcover_mtable.nH", "pcover_mtable.CvrFract")
    edges = mk.PCOVER_EDGES
    lo, hi = edges[:-1], edges[1:]
    for nh, fraction in [(0.01, 0.0), (1.0, 0.5), (10.0, 1.0)]:
        got = evaluate(model, {"nH": nh, "CvrFract": fraction}, lo, hi)
        np.testing.assert_allclose(got, mk.pcover_bins(lo, hi, nh, fraction), rtol=1e-6)
    point = (0.37, 0.8)  # nH logarithmic, CvrFract linear
    factor = interpolated_spectra(files["pcover"], point, (True, False))[0]
    values = dict(zip(("nH", "CvrFract"), point))
    np.testing.assert_allclose(evaluate(model, values, lo, hi), factor, rtol=1e-12)
    # another grid: the w-weighted mean, LOELIMIT = 0 below 0.3 keV, HIELIMIT = 1 above 30
    got = evaluate(model, values, OUT_LO, OUT_HI)
    np.testing.assert_allclose(got, xspec_rebin(factor, edges, OUT_LO, OUT_HI, "mul", 0.0, 1.0),
                               rtol=1e-12)
    assert np.all(got[OUT_HI <= 0.3] == 0.0) and np.all(got[OUT_LO >= 30.0] == 1.0)


@pytest.mark.parametrize("z", [0.0, 0.8])
def test_etable_is_exp_of_the_mean_depth_with_redshift(files, z):
    model = parse_model(f"etable{{{files['edge']}}}")
    assert model.kind == "mul" and model.names == ("edge_etable.nH", "edge_etable.z")
    edges = mk.EDGE_EDGES
    lo, hi = edges[:-1], edges[1:]
    tau = mk.edge_tau_bins(lo, hi, 2.0)
    got = evaluate(model, {"nH": 2.0, "z": z}, lo / (1 + z), hi / (1 + z))
    # not divided by 1 + z; float32 depths: exp(-tau) to 1e-6 where tau < 10
    thin = tau < 10.0
    np.testing.assert_allclose(got[thin], np.exp(-tau[thin]), rtol=1e-6)
    stored = astropy_grid(files["edge"])[1][2, 0]  # the grid point nH = 2 as stored
    np.testing.assert_allclose(got, np.exp(-stored), rtol=1e-12)
    tau = interpolated_spectra(files["edge"], (3.3,), (False,))[0]
    got = evaluate(model, {"nH": 3.3, "z": z}, OUT_LO, OUT_HI)
    expected = np.exp(-xspec_rebin(tau, edges, OUT_LO * (1 + z), OUT_HI * (1 + z), "mul", 0, 0))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.all(got[OUT_LO * (1 + z) >= 20.0] == 1.0)  # unity outside (no LOELIMIT/HIELIMIT)


def test_model_of_tables_jit_vmap_grad(files):
    model = parse_model(f"mtable{{{files['pcover']}}}*(powerlaw + atable{{{files['bknpower']}}})")
    model = model.set("bknpower_table.z", frozen=False)
    structure = model.structure
    lo, hi = jnp.asarray(OUT_LO), jnp.asarray(OUT_HI)
    names = model.names
    base = np.array([model[n].value for n in names])

    def at(**changes):  # theta with some values changed (built in NumPy: no compilations)
        theta = base.copy()
        for name, value in changes.items():
            theta[names.index(name.replace("__", "."))] = value
        return jnp.asarray(theta)

    evaluate_jit = jax.jit(structure.evaluate)
    np.testing.assert_allclose(evaluate_jit(at(), lo, hi), structure.evaluate(at(), lo, hi),
                               rtol=1e-13, atol=1e-300)
    batch = jnp.stack([at(bknpower_table__PhoIndex=1.7), at(bknpower_table__z=0.4),
                       at(pcover_mtable__nH=3.0), at(pcover_mtable__CvrFract=0.0)])
    mapped = jax.jit(jax.vmap(lambda t: structure.evaluate(t, lo, hi)))(batch)
    for row, theta in zip(mapped, batch):
        np.testing.assert_allclose(row, evaluate_jit(theta, lo, hi), rtol=1e-13, atol=1e-300)

    def total(theta):
        return jnp.sum(structure.evaluate(theta, lo, hi))

    value_and_grad = jax.jit(jax.value_and_grad(total))

    def grad(theta):
        return value_and_grad(theta)[1]

    def total_jit(theta):
        return value_and_grad(theta)[0]

    special = {"bknpower_table__PhoIndex": [1.0, 2.0, 3.0],  # grid ends and a knot
               "bknpower_table__BreakE": [2.0, 8.0, 32.0],
               "pcover_mtable__nH": [0.01, 1.0, 10.0], "pcover_mtable__CvrFract": [0.0, 1.0],
               "bknpower_table__z": [0.0, 5.0], "bknpower_table__LineFlux": [0.0]}
    for name, points in special.items():
        for value in points:
            g = grad(at(**{name: value}))
            assert np.all(np.isfinite(g)), (name, value, g)
    # interior derivatives agree with central differences (PhoIndex, ln-interpolated BreakE,
    # the additional parameter, z, an mtable parameter), all between grid values
    interior = {"bknpower_table__PhoIndex": 2.2, "bknpower_table__BreakE": 5.5,
                "bknpower_table__LineFlux": 0.4, "bknpower_table__z": 0.37,
                "pcover_mtable__nH": 0.5}
    g = grad(at(**interior))
    for name, value in interior.items():
        i = names.index(name.replace("__", "."))
        h = 1e-6 * max(1.0, value)
        numeric = (total_jit(at(**{**interior, name: value + h}))
                   - total_jit(at(**{**interior, name: value - h}))) / (2 * h)
        np.testing.assert_allclose(g[i], numeric, rtol=1e-5, err_msg=name)


# -- expressions and registration -------------------------------------------------------------


def test_expression_syntax(files, monkeypatch, tmp_path):
    path = files["bknpower"]
    assert _tokenize(f"tbabs*atable{{{path}}} + powerlaw") == [
        "tbabs", "*", f"atable{{{path}}}", "+", "powerlaw"]
    monkeypatch.chdir(path.parent)  # relative to the working directory, case-insensitive
    tree, components = parse_expression("ATable{bknpower_table.fits}*mtable{ pcover_mtable.fits }")
    assert components == ("bknpower_table", "pcover_mtable") and tree[0] == "*"
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copy(files["edge"], home / "models" / "edge-v1.2.fits")
    monkeypatch.setenv("HOME", str(home))
    model = parse_model("etable{~/models/edge-v1.2.fits}(powerlaw)")
    assert str(model) == "edge_v1_2 * powerlaw" and model.kind == "add"
    for expression, message in [("powerlaw{x.fits}", "only atable, mtable and etable"),
                                ("atable{x.fits", "closing '}'"), ("atable{ }", "a file name"),
                                ("atable{nope.fits}", "file not found")]:
        with pytest.raises(ValueError, match=message):
            parse_model(expression)
    with pytest.raises(MissingFileError):
        parse_model("atable{nope.fits}")
    with pytest.raises(ValueError, match="multiplicative table model.*use mtable"):
        parse_model(f"atable{{{files['pcover']}}}")
    with pytest.raises(ValueError, match="additive table model.*use atable"):
        parse_model(f"etable{{{files['bknpower']}}}")


def test_components_are_reused_and_keyed_by_the_content(files, tmp_path):
    path = tmp_path / "bknpower_table.fits"
    shutil.copy(files["bknpower"], path)
    first = table_component("atable", path)
    assert parse_model(f"atable{{{path}}}").expr == ("comp", first.name, first.name)
    assert COMPONENTS[first.name] is first  # the same file again: not registered again
    # the same content elsewhere: another name, the same version (the content's)
    other = table_component("atable", files["bknpower"])
    assert other.name == f"{first.name}_2" and other.version == first.version
    # the version is the content's hash, the same in any process
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = int.from_bytes(hashlib.sha256(f"atable:{digest}".encode()).digest()[:7], "big")
    assert first.version == expected | (1 << 56)
    unregister_component(first.name)
    assert table_component("atable", path).version == first.version

    model = parse_model(f"atable{{{path}}}")
    calls = []

    @partial(jax.jit, static_argnames=("structure",))
    def run(theta, structure):
        calls.append(structure)
        return structure.evaluate(theta, jnp.asarray(OUT_LO), jnp.asarray(OUT_HI))

    theta = jnp.asarray(list(model.values().values()))
    original = model.structure
    before = run(theta, structure=original)
    # change the file's content (a header keyword): same name, new version, new compilation
    mk.bknpower_table(path, keywords={"HIELIMIT": 0.0})
    changed = parse_model(f"atable{{{path}}}")
    assert str(changed) == str(model)
    assert changed.structure != original and changed.structure.expr == original.expr
    assert COMPONENTS[first.name].version != first.version
    after = run(theta, structure=changed.structure)
    assert len(calls) == 2
    np.testing.assert_allclose(after, before, rtol=1e-12)  # HIELIMIT 0 = the default
    # the same content again: the same version as before the change
    mk.bknpower_table(path)
    assert parse_model(f"atable{{{path}}}").structure == original


def test_parameter_names_are_made_identifiers(tmp_path):
    params = [mk.parameter("log xi", (0.0, 1.0), 0), mk.parameter("2nd", (1.0, 2.0), 0),
              mk.parameter("norm", (), -1)]
    intp = np.ones((4, 3))
    path = mk.write_table(tmp_path / "odd-names.fits", params, [1.0, 2.0, 3.0, 4.0], intp,
                          [np.zeros((4, 3))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = table_component("atable", path)
    messages = [str(w.message) for w in caught]
    for original, used in (("log xi", "log_xi"), ("2nd", "p2nd"), ("norm", "norm_2")):
        assert any(f"{original!r} is used as {used!r}" in m and str(path) in m
                   for m in messages), messages
    assert spec.name == "odd_names"
    assert spec.param_names == ("log_xi", "p2nd", "norm_2", "norm")


# -- bad files --------------------------------------------------------------------------------


def _good(path, **options):
    return mk.pcover_mtable(path, **options)


def _edit(path, extension, column, value):
    with fits.open(path, mode="update") as hdul:
        hdul[extension].data[column][...] = value
    return path


def _grid_params():
    return [mk.parameter("a", (1.0, 2.0), 0), mk.parameter("b", (1.0, 2.0, 3.0), 1)]


BAD_FILES = [
    ("missing_extension", lambda p: _good(p, drop=("SPECTRA",)),
     r"no SPECTRA extension"),
    ("missing_column", lambda p: _good(p, drop=("SPECTRA:INTPSPEC",)),
     r"'SPECTRA'\): missing column INTPSPEC"),
    ("missing_keyword", lambda p: _edit_header(_good(p), "PARAMETERS", "NINTPARM"),
     r"'PARAMETERS'\): missing keyword NINTPARM"),
    ("rows", lambda p: mk.write_table(p, _grid_params(), [1, 2, 3], np.ones((5, 2)),
                                      paramval=np.ones((5, 2))),
     r"'SPECTRA'\): 5 rows, but the grid of the 2 interpolated parameter\(s\) has 2 x 3 = 6"),
    ("spectrum_width", lambda p: mk.write_table(p, _grid_params(), [1, 2, 3, 4], np.ones((6, 2))),
     r"column INTPSPEC holds 2 value\(s\) per row; expected 3"),
    ("value_order", lambda p: mk.write_table(
        p, [mk.parameter("a", (1.0, 3.0, 2.0), 0)], [1, 2, 3], np.ones((3, 2))),
     r"parameter 1 'a': column VALUE is not strictly increasing \(VALUE\[1\] = 3.0"),
    ("log_grid", lambda p: mk.write_table(
        p, [mk.parameter("a", (0.0, 1.0), 1)], [1, 2, 3], np.ones((2, 2))),
     r"METHOD = 1 \(logarithmic interpolation\) needs positive tabulated values"),
    ("method", lambda p: mk.write_table(
        p, [mk.parameter("a", (0.0, 1.0), 2)], [1, 2, 3], np.ones((2, 2))),
     r"parameter 1 'a': column METHOD = 2"),
    ("numbvals", lambda p: _edit(_good(p), "PARAMETERS", "NUMBVALS", 9),
     r"column NUMBVALS = 9, but the VALUE column holds 4"),
    ("energy_order", lambda p: mk.write_table(
        p, [mk.parameter("a", (0.0, 1.0), 0)], [1, 3, 2, 4], np.ones((2, 3))),
     r"'ENERGIES'\).*(ENERG_HI must be > ENERG_LO|not strictly increasing)"),
    ("energy_gap", lambda p: _edit(mk.write_table(
        p, [mk.parameter("a", (0.0, 1.0), 0)], [1, 2, 3, 4], np.ones((2, 3))),
        "ENERGIES", "ENERG_HI", [1.5, 3.0, 4.0]),
     r"energy bins are not contiguous \(ENERG_HI\[0\] = 1.5"),
    ("energy_unit", lambda p: mk.write_table(
        p, [mk.parameter("a", (0.0, 1.0), 0)], [1, 2, 3], np.ones((2, 2)),
        energy_unit="angstrom"),
     r"column ENERG_LO in unit 'angstrom'"),
    ("paramval_order", lambda p: mk.write_table(
        p, _grid_params(), [1, 2, 3], np.ones((6, 2)),
        paramval=mk.grid_points(_grid_params()[::-1])[:, ::-1]),
     r"column PARAMVAL of row 2 is \[2.0, 1.0\], but that row is grid point \[1.0, 2.0\]"),
    ("nan", lambda p: mk.write_table(p, [mk.parameter("a", (0.0, 1.0), 0)], [1, 2, 3],
                                     np.array([[1.0, np.nan], [1.0, 1.0]])),
     r"column INTPSPEC holds NaN/inf \(first in row 1\)"),
    ("parameter_rows", lambda p: mk.write_table(
        p, _grid_params(), [1, 2, 3], np.ones((6, 2)), n_interpolated=3),
     r"2 parameter rows, but NINTPARM \+ NADDPARM = 3 \+ -1|NADDPARM = -1 is not an integer"),
    ("escale", lambda p: _good(p, keywords={"ESCALE": True}), r"ESCALE = T .* not supported"),
    ("nxfltexp", lambda p: _good(p, keywords={"NXFLTEXP": 2}), r"NXFLTEXP = 2 .* not supported"),
    ("not_fits", lambda p: (p.write_text("hello"), p)[1], r"cannot be read as a FITS file"),
]


def _edit_header(path, extension, keyword):
    with fits.open(path, mode="update") as hdul:
        del hdul[extension].header[keyword]
    return path


@pytest.mark.parametrize("case, make, message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_are_clear_errors(tmp_path, case, make, message):
    path = make(tmp_path / f"{case}.fits")
    with pytest.raises(BkgjaxIOError, match=message) as info:
        read_table_model(path)
    assert str(path) in str(info.value)


# -- a fit, the command line -------------------------------------------------------------------


def test_fit_recovers_a_table_parameter(files):
    from bkgjax.fit import SpectralData, fit

    model = parse_model(f"atable{{{files['bknpower']}}}")
    edges = np.geomspace(0.6, 40.0, 121)
    lo, hi = edges[:-1], edges[1:]
    truth = model.with_values({"PhoIndex": 2.23, "norm": 3.0, "LineFlux": 0.02})
    rate = np.asarray(truth(lo, hi))
    exposure, area = 1e3, 100.0
    counts = np.random.default_rng(4).poisson(rate * exposure * area)
    data = SpectralData.from_arrays(counts, exposure, np.eye(lo.size) * area, lo, hi)
    start = model.with_values({"PhoIndex": 1.6, "norm": 1.0, "LineFlux": 0.1})
    result = fit(start, data, "cstat", errors="covariance")
    assert result.converged
    for name, tolerance in (("PhoIndex", 0.03), ("norm", 0.1), ("LineFlux", 0.5)):
        value = result.values[f"bknpower_table.{name}"]
        truth_value = truth[name].value
        assert abs(value - truth_value) < tolerance * max(1.0, truth_value), (name, value)


def test_command_line_fit_spectrum(files, tmp_path, capsys):
    from bkgjax.cli import demo_spectrum_path, main

    out = tmp_path / "fit.json"
    code = main(["fit-spectrum", demo_spectrum_path(), "--model",
                 f"atable{{{files['bknpower']}}}", "--freeze", "LineFlux=0",
                 "--erange", "0.5", "7", "--no-background", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    payload = json.loads(out.read_text())
    assert set(payload["params"]) == {"PhoIndex", "norm"}  # BreakE frozen by the file
    assert payload["converged"] is True
    code = main(["fit-spectrum", demo_spectrum_path(), "--model",
                 f"atable{{{tmp_path / 'none.fits'}}}"])
    assert code == 2 and "file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_export_cache_key_is_the_same_in_a_new_process_until_the_file_changes(tmp_path):
    """The persistent export cache keys a fit by the model structure, whose version of a table
    component is the file content's: equal in two processes, different once the file
    changes."""
    import subprocess
    import sys

    path = mk.bknpower_table(tmp_path / "grid.fits")
    script = (
        "import bkgjax, sys\n"
        "from bkgjax.fit import export_cache\n"
        "from bkgjax.spectral import parse_model\n"
        "model = parse_model(sys.argv[1])\n"
        "print(export_cache._key('fit', {'structure': model.structure}, [], None))\n")

    def key():
        run = subprocess.run([sys.executable, "-c", script, f"powerlaw + atable{{{path}}}"],
                             capture_output=True, text=True, check=True)
        return run.stdout.strip().splitlines()[-1]

    first = key()
    assert first != "None" and key() == first
    mk.bknpower_table(path, keywords={"HIELIMIT": 0.0})
    assert key() != first


@pytest.mark.slow
def test_profile_errors_and_nuts_with_a_table(files):
    from bkgjax.fit import SpectralData, fit
    from bkgjax.infer import NutsDiagnosticsWarning, run_nuts

    model = parse_model(f"mtable{{{files['pcover']}}}*atable{{{files['bknpower']}}}")
    model = model.set("CvrFract", 1.0, frozen=True).set("LineFlux", 0.0, frozen=True)
    edges = np.geomspace(0.6, 20.0, 61)
    lo, hi = edges[:-1], edges[1:]
    truth = model.with_values({"nH": 0.5, "PhoIndex": 1.9, "norm": 2.0})
    counts = np.random.default_rng(7).poisson(np.asarray(truth(lo, hi)) * 1e4)
    data = SpectralData.from_arrays(counts, 100.0, np.eye(lo.size) * 100.0, lo, hi)
    result = fit(model, data, "cstat", errors="profile")
    assert result.converged
    for name in ("pcover_mtable.nH", "bknpower_table.PhoIndex"):
        low, high = result.intervals[name]
        assert low < truth[name].value < high, (name, low, high)
    with warnings.catch_warnings():  # one short chain: its diagnostics are not the point
        warnings.simplefilter("ignore", NutsDiagnosticsWarning)
        idata = run_nuts(result.model, data, "cstat", num_warmup=150, num_samples=150,
                         num_chains=1, posterior_predictive=False)
    draws = np.asarray(idata.posterior["bknpower_table.PhoIndex"]).ravel()
    assert abs(np.mean(draws) - 1.9) < 5 * np.std(draws) + 0.05
