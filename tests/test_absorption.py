"""Absorption components (bkgjax.spectral.absorption): the shipped cross-section tables, exact
bin averages, wabs against the Morrison & McCammon (1983) polynomials, cabs against XSPEC's
xscabs.f, redshift and partial covering, gradients at nH = 0 and at edges, jit/vmap, the
``abund``/``xsect`` model options (through Model, JointModel, fits and the command line), and
fits against Sherpa 4.19 (tests/reference/make_sherpa_absorption_reference.py)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401  (64-bit JAX)
from bkgjax.cli import demo_spectrum_path, main
from bkgjax.fit import JointModel, SpectralData, export_cache, fit, load, predicted_counts
from bkgjax.spectral import COMPONENTS, absorption, component, parse_model

XSECT = Path(absorption.__file__).resolve().parents[1] / "data" / "xsect" / "xsect.npz"
REFERENCE = Path(__file__).parent / "reference" / "sherpa_absorption_reference.json"
TABLES = ("phabs_angr", "phabs_aspl", "tbabs_angr", "tbabs_aspl", "tbabs_wilm", "wabs_angr")
# (family, abund) of each table-based component; its extra parameters at test values
TABLE_COMPONENTS = {
    "wabs": ("wabs", {}), "phabs": ("phabs", {}), "tbabs": ("tbabs", {}),
    "zwabs": ("wabs", {"Redshift": 0.3}), "zphabs": ("phabs", {"Redshift": 0.3}),
    "ztbabs": ("tbabs", {"Redshift": 0.3}),
    "pcfabs": ("phabs", {"CvrFract": 0.7}), "tbpcf": ("tbabs", {"pcf": 0.7, "redshift": 0.3}),
}
ALL = (*TABLE_COMPONENTS, "cabs")
XSPEC_LIMITS = {  # model.dat (HEASoft 6.20, Xspec/src/manager/model.dat): default, hard min/max
    "nH": (1.0, 0.0, 1e6), "Redshift": (0.0, -0.999, 10.0), "redshift": (0.0, -1.0, 10.0),
    "CvrFract": (0.5, 0.0, 1.0), "pcf": (0.5, 0.0, 1.0),
}


def _table(name):
    with np.load(XSECT) as data:
        return data["energy"].astype(float), data[name].astype(float)


@partial(jax.jit, static_argnums=0)
def _structure_evaluate(structure, theta, lo, hi):
    return structure.evaluate(theta, lo, hi)


def _eval(model, values, lo, hi):
    """``model.evaluate(values, lo, hi)`` compiled once per structure and shape (eager
    evaluation compiles every operation separately: slow)."""
    full = model.resolve(values)
    theta = jnp.asarray([full[name] for name in model.names])
    return np.asarray(_structure_evaluate(model.structure, theta, jnp.asarray(lo, float),
                                          jnp.asarray(hi, float)))


def _evaluate(name, lo, hi, **values):
    return _eval(component(name, **values), {}, lo, hi)


def _grid():
    """The exact grid of the tabulated energies: geometric centres of 10000 equal steps in
    ln E from 0.1 to 20 keV (the table's float32 energies agree to 1e-7)."""
    return 0.1 * np.exp((np.arange(10000) + 0.5) * np.log(200.0) / 10000)


def _extended_nodes(name):
    """The documented sigma(E) (module docstring), re-derived here from the table: linear in
    E between the tabulated values on the exact grid, power-law extensions through the end
    values with the log-log slope over 200 points, nodes every 0.01 in ln E out to 1e-3 and
    1e3 keV."""
    _, sigma = _table(name)
    energy = _grid()
    slope_lo = np.log(sigma[200] / sigma[0]) / np.log(energy[200] / energy[0])
    slope_hi = np.log(sigma[-1] / sigma[-201]) / np.log(energy[-1] / energy[-201])
    down = -0.01 * np.arange(math.ceil(np.log(energy[0] / 1e-3) / 0.01), 0, -1)
    up = 0.01 * np.arange(1, math.ceil(np.log(1e3 / energy[-1]) / 0.01) + 1)
    nodes = np.concatenate([energy[0] * np.exp(down), energy, energy[-1] * np.exp(up)])
    values = np.concatenate([sigma[0] * np.exp(slope_lo * down), sigma,
                             sigma[-1] * np.exp(slope_hi * up)])
    return nodes, values


def _exact_average(lo, hi, nh, nodes, values):
    """Bin average of exp(-nh sigma) for the piecewise-linear sigma, summed over the node
    intervals inside the bin in closed form (numpy; no cumulative sums, unlike bkgjax)."""
    grid = np.unique(np.concatenate([[lo, hi], nodes[(nodes > lo) & (nodes < hi)]]))
    tau = nh * np.interp(grid, nodes, values)  # constant beyond the nodes, as documented
    lowest, spread = np.minimum(tau[:-1], tau[1:]), np.abs(np.diff(tau))
    safe = np.where(spread > 1e-12, spread, 1.0)
    mean = np.exp(-lowest) * np.where(spread > 1e-12, -np.expm1(-safe) / safe, 1 - spread / 2)
    return np.sum(np.diff(grid) * mean) / (hi - lo)


def _trapezoid_average(lo, hi, nh, nodes, values, n=200001):
    """Brute force: trapezoids on a fine grid holding every node (error ~ (width/n)^2)."""
    grid = np.unique(np.concatenate([np.linspace(lo, hi, n), nodes[(nodes > lo) & (nodes < hi)]]))
    return np.trapezoid(np.exp(-nh * np.interp(grid, nodes, values)), grid) / (hi - lo)


# -- the shipped tables --------------------------------------------------------------------------


def test_tables_are_the_astromodels_grid_and_small():
    assert XSECT.stat().st_size < 400_000
    energy, _ = _table("phabs_angr")
    np.testing.assert_allclose(energy, _grid(), rtol=1e-7)
    for name in TABLES:
        e, sigma = _table(name)
        assert np.array_equal(e, energy) and np.all(sigma > 0) and sigma.dtype == float
        # 1e-22 cm^2 per H atom: ~2.5 at 1 keV for solar abundances
        assert 1.5 < np.interp(1.0, e, sigma) < 3.0
    readme = (XSECT.parent / "README.md").read_text()
    assert "astromodels 2.6.0" in readme and "Redistribution and use in source" in readme


def test_tables_are_read_lazily_not_at_import():
    code = ("import bkgjax, bkgjax.spectral, bkgjax.spectral.absorption as a; "
            "assert a.cross_section_table.cache_info().currsize == 0; "
            "a.cross_section_nodes('tbabs_wilm'); "
            "assert a.cross_section_table.cache_info().currsize == 1; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize("name", TABLES)
def test_transmission_at_tabulated_energies(name):
    """Narrow bins around every 7th tabulated energy give exp(-nH sigma_k) of the table."""
    family, abund = name.split("_")
    _, sigma = _table(name)
    e = _grid()[::7]
    model = component(family).with_options(abund=abund)
    for nh in (0.01, 1.0, 30.0):
        got = _eval(model, {f"{family}.nH": nh}, e * (1 - 1e-12), e * (1 + 1e-12))
        expected = np.exp(-nh * sigma[::7])
        ok = expected > 1e-280  # XLA on CPU flushes subnormal products (bin width x T) to 0
        np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-6)


@pytest.mark.parametrize("name", ["tbabs_wilm", "phabs_angr", "wabs_angr"])
def test_bin_average_is_exact_for_the_interpolated_cross_section(name):
    """Wide and narrow bins holding edges (O K 0.54, Fe K 7.1 keV), the table's ends (0.1,
    20 keV) and the extrapolated ranges, against the documented sigma(E) integrated per node
    interval in numpy (itself checked against brute-force trapezoids)."""
    family, abund = name.split("_")
    nodes, values = _extended_nodes(name)
    np.testing.assert_allclose(absorption.cross_section_nodes(name)[1], values, rtol=1e-12)
    lo = np.array([0.002, 0.05, 0.09, 0.3, 0.52, 0.5378, 1.0, 6.9, 7.1, 19.0, 25.0, 900.0, 2e3])
    hi = np.array([0.004, 0.12, 0.2, 12.0, 0.56, 0.5382, 10.0, 7.3, 7.13, 30.0, 200.0, 1.5e3, 3e3])
    model = component(family).with_options(abund=abund)
    for nh in (0.0, 0.003, 0.3, 3.0, 100.0):
        got = _eval(model, {f"{family}.nH": nh}, lo, hi)
        expected = np.array([_exact_average(a, b, nh, nodes, values) for a, b in zip(lo, hi)])
        assert np.all(np.isfinite(got)) and np.all(got >= 0)
        ok = expected > 1e-250
        # 1e-9: the rounding of the cumulative sums, relative to a bin whose transmission is
        # 1e-6 of the transmission before an edge below it (module docstring)
        np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(got[~ok], 0.0, atol=1e-250)
    for a, b in ((0.52, 0.56), (6.9, 7.3), (0.09, 0.2)):
        assert _exact_average(a, b, 3.0, nodes, values) == pytest.approx(
            _trapezoid_average(a, b, 3.0, nodes, values), rel=1e-7)


# -- wabs against Morrison & McCammon (1983) ---------------------------------------------------
# MM83 Table 2: sigma(E) E^3 = c0 + c1 E + c2 E^2 (1e-24 cm^2, E in keV) for the ranges below
# (upper ends); below 0.03 keV and above 10 keV XSPEC continues as E^-3 (xszabs.f, HEASoft
# Xspec/src/XSFunctions; the same coefficients in 1e-22 cm^2 units).
MM83_UPPER = np.array([0.1, 0.284, 0.4, 0.532, 0.707, 0.867, 1.303, 1.840, 2.471, 3.210,
                       4.038, 7.111, 8.331, 10.0])
MM83_C0 = np.array([17.3, 34.6, 78.1, 71.4, 95.5, 308.9, 120.6, 141.3, 202.7, 342.7, 352.2,
                    433.9, 629.0, 701.2])
MM83_C1 = np.array([608.1, 267.9, 18.8, 66.8, 145.8, -380.6, 169.3, 146.8, 104.7, 18.7, 18.7,
                    -2.4, 30.9, 25.2])
MM83_C2 = np.array([-2150.0, -476.1, 4.3, -51.4, -61.1, 294.0, -47.7, -31.5, -17.0, 0.0, 0.0,
                    0.75, 0.0, 0.0])


def _mm83_sigma(energy):
    """MM83 cross-section per H atom in 1e-22 cm^2 (0.03-10 keV, E^-3 above 10 keV)."""
    energy = np.asarray(energy, float)
    i = np.minimum(np.searchsorted(MM83_UPPER, energy), MM83_UPPER.size - 1)
    e = np.minimum(energy, 10.0)
    poly = MM83_C0[i] + MM83_C1[i] * e + MM83_C2[i] * e * e
    return 1e-2 * poly / e**3 * np.where(energy > 10.0, (10.0 / energy) ** 3, 1.0)


def test_wabs_agrees_with_the_morrison_mccammon_polynomials():
    energy = _grid()
    near_edge = np.min(np.abs(np.log(energy[:, None] / MM83_UPPER[None, :-1])), axis=1) < 2e-3
    e = energy[~near_edge][::5]
    # the effective cross-section -ln(T)/nH of narrow bins at a small column
    nh = 1e-4
    transmission = _evaluate("wabs", e * (1 - 1e-11), e * (1 + 1e-11), nH=nh)
    effective = -np.log(transmission) / nh
    np.testing.assert_allclose(effective, _mm83_sigma(e), rtol=1e-3)
    # and a bin-averaged spectrum at nH = 1 on a 0.3-12 keV grid against the average of
    # exp(-nH sigma_MM83) by fine trapezoids: 1e-3 where the table agrees (bins without an
    # edge); in a bin holding an edge, where the table's edge lies within its 0.05 % step
    # matters (1e-2 at nH = 1)
    edges = np.geomspace(0.3, 12.0, 61)
    got = _evaluate("wabs", edges[:-1], edges[1:], nH=1.0)
    grid = [np.linspace(a, b, 20001) for a, b in zip(edges[:-1], edges[1:])]
    mm83 = np.array([np.trapezoid(np.exp(-_mm83_sigma(g)), g) / (g[-1] - g[0]) for g in grid])
    with_edge = np.array([np.any((MM83_UPPER > a) & (MM83_UPPER < b))
                          for a, b in zip(edges[:-1], edges[1:])])
    np.testing.assert_allclose(got[~with_edge], mm83[~with_edge], rtol=1e-3)
    np.testing.assert_allclose(got[with_edge], mm83[with_edge], rtol=1e-2)


# -- cabs against XSPEC's xscabs.f -----------------------------------------------------------


def _kn_ratio(energy):
    """Klein-Nishina / Thomson cross-section, the closed form (x not small here)."""
    x = np.asarray(energy, float) / 510.999
    l2 = np.log(1 + 2 * x)
    return 0.75 * ((1 + x) / x**3 * (2 * x * (1 + x) / (1 + 2 * x) - l2) + l2 / (2 * x)
                   - (1 + 3 * x) / (1 + 2 * x) ** 2)


def test_cabs_is_xspec_klein_nishina_scattering():
    e = np.geomspace(20.0, 5000.0, 40)  # x >= 0.04: the closed form is accurate to 1e-13
    for nh in (1.0, 100.0):
        got = _evaluate("cabs", e * (1 - 1e-9), e * (1 + 1e-9), nH=nh)
        np.testing.assert_allclose(got, np.exp(-nh * 1.21 * 0.665e-2 * _kn_ratio(e)), rtol=1e-9)
    # the small-x series against XSPEC's 5-term series (error < 5e-8 below x = 0.025)
    low = np.geomspace(0.01, 12.0, 30)
    w = low / 510.999
    xspec = 1.0 + w * (-140 + w * (364 + w * (-931 + w * (2288 + w * (-5440))))) / 70.0
    np.testing.assert_allclose(absorption.klein_nishina_ratio(jnp.asarray(low)), xspec, rtol=6e-8)
    # continuous where the series hands over to the closed form (x = 0.02)
    at = 0.02 * 510.999
    both = absorption.klein_nishina_ratio(jnp.asarray([at * (1 - 1e-12), at * (1 + 1e-12)]))
    assert abs(float(both[0] / both[1]) - 1) < 1e-11
    # a wide bin: the bin average of exp(-tau) (not exp of the average tau)
    lo, hi = np.array([10.0]), np.array([2000.0])
    grid = np.geomspace(10.0, 2000.0, 200001)
    expected = np.trapezoid(np.exp(-50 * 1.21 * 0.665e-2 * _kn_ratio(grid)), grid) / 1990.0
    np.testing.assert_allclose(_evaluate("cabs", lo, hi, nH=50.0), expected, rtol=1e-6)


# -- definitions: names, limits, redshift, partial covering --------------------------------------


def test_xspec_names_parameters_and_limits():
    for name in ALL:
        spec = COMPONENTS[name]
        assert spec.kind == "mul"
        for p in spec.params:
            default, low, high = XSPEC_LIMITS[p.name]
            assert (p.value, p.min, p.max) == (default, low, high), (name, p.name)
            assert p.frozen is (p.name.lower() == "redshift")
        assert spec.options == (() if name == "cabs" else ("abund", "xsect"))
    assert [p.name for p in COMPONENTS["tbpcf"].params] == ["nH", "pcf", "redshift"]
    assert [p.name for p in COMPONENTS["pcfabs"].params] == ["nH", "CvrFract"]


def test_redshift_and_partial_covering():
    lo = np.geomspace(0.2, 20.0, 41)[:-1]
    hi = np.geomspace(0.2, 20.0, 41)[1:]
    for zname, name in (("zwabs", "wabs"), ("zphabs", "phabs"), ("ztbabs", "tbabs")):
        np.testing.assert_allclose(_evaluate(zname, lo, hi, nH=2.0, Redshift=0.5),
                                   _evaluate(name, 1.5 * lo, 1.5 * hi, nH=2.0), rtol=1e-13)
    phabs = _evaluate("phabs", lo, hi, nH=2.0)
    np.testing.assert_allclose(_evaluate("pcfabs", lo, hi, nH=2.0, CvrFract=0.3),
                               0.3 * phabs + 0.7, rtol=1e-14)
    np.testing.assert_allclose(_evaluate("pcfabs", lo, hi, nH=2.0, CvrFract=1.0), phabs, rtol=1e-14)
    ztbabs = _evaluate("ztbabs", lo, hi, nH=2.0, Redshift=0.2)
    np.testing.assert_allclose(_evaluate("tbpcf", lo, hi, nH=2.0, pcf=0.4, redshift=0.2),
                               0.4 * ztbabs + 0.6, rtol=1e-14)
    # tbpcf's hard limit z = -1 is finite (1 + z floored at 1e-3)
    assert np.all(np.isfinite(_evaluate("tbpcf", lo, hi, nH=2.0, pcf=0.4, redshift=-1.0)))


# -- numerics: nH = 0, edges, gradients, jit, vmap -------------------------------------------------

EDGE_BINS = (np.array([0.3, 0.535, 0.5378, 7.0, 7.10, 7.11]),
             np.array([0.535, 0.545, 0.5382, 7.12, 7.13, 7.112]))


def _values(name, nh):
    params = {"nH": nh, **TABLE_COMPONENTS.get(name, (None, {}))[1]}
    return jnp.asarray([params[p.name] for p in COMPONENTS[name].params])


# one component per code path by default; phabs, zwabs, zphabs and pcfabs run the same
# functions as tbabs, ztbabs and tbpcf with another table (a compilation each, ~2 s of CPU)
SAME_PATH = ("phabs", "zwabs", "zphabs", "pcfabs")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SAME_PATH
                                  else n for n in ALL])
def test_values_and_gradients_finite_jit_equals_eager_vmap_equals_loop(name):
    """At nH = 0, tiny, moderate and huge columns, on bins at and around the O K and Fe K
    edges and on a 0.1-100 keV grid: values in [0, 1] (1 at nH = 0), finite reverse-mode
    gradients and forward-mode Jacobians, all computed jitted and vmapped over the parameter
    sets and equal to a loop of eager calls (eager operations are compiled once per shape, so
    only the first component pays for them)."""
    grid = np.geomspace(0.1, 100.0, 65)
    lo = jnp.asarray(np.concatenate([EDGE_BINS[0], grid[:-1]]))
    hi = jnp.asarray(np.concatenate([EDGE_BINS[1], grid[1:]]))
    fn = COMPONENTS[name].function
    weights = jnp.linspace(1.0, 2.0, lo.size)
    thetas = jnp.stack([_values(name, nh) for nh in (0.0, 1e-8, 0.05, 1.0, 300.0)])

    @jax.jit
    def batched(ts):
        def one(theta):
            def of(t):
                return fn(lo, hi, *t)

            grad = jax.grad(lambda t: jnp.sum(of(t) * weights))(theta)
            return of(theta), grad, jax.jacfwd(of)(theta)

        return jax.vmap(one)(ts)

    values, grads, jacobians = (np.asarray(x) for x in batched(thetas))
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    assert np.all(np.isfinite(jacobians))
    assert np.all(values <= 1.0 + 1e-12) and np.all(values >= 0.0)
    np.testing.assert_allclose(values[0], 1.0, rtol=1e-12)  # nH = 0
    eager = np.stack([np.asarray(fn(lo, hi, *t)) for t in thetas])
    # rounding differs with the operations' order (fused when jitted): ~1e-16 E/dE, 4e-13 for
    # the 2 eV bin at 9 keV (Fe K edge bin at z = 0.3)
    np.testing.assert_allclose(values, eager, rtol=1e-12, atol=1e-300)
    # the derivative in nH at nH = 0 is minus the bin average of the cross-section (exact
    # also across the edges), for the fully covering table components
    if name in ("wabs", "phabs", "tbabs"):
        nodes, sigma = _extended_nodes(f"{name}_angr")
        mean_sigma = []
        for a, b in zip(*EDGE_BINS):
            g = np.unique(np.concatenate([np.linspace(a, b, 4001), nodes[(nodes > a) & (nodes < b)]]))
            mean_sigma.append(np.trapezoid(np.interp(g, nodes, sigma), g) / (b - a))
        np.testing.assert_allclose(-jacobians[0, :len(mean_sigma), 0], mean_sigma, rtol=1e-6)


def test_second_derivative_at_zero_column_is_the_mean_square_cross_section():
    """d^2/dnH^2 at nH = 0 (through the custom_jvp's second level, forward over forward as
    the fits take it) against the exact bin average of sigma^2."""
    e = np.geomspace(0.3, 12.0, 25)
    lo, hi = jnp.asarray(e[:-1]), jnp.asarray(e[1:])
    nodes, sigma = _extended_nodes("tbabs_angr")
    mean_sigma2 = []
    for a, b in zip(e[:-1], e[1:]):
        g = np.unique(np.concatenate([[a, b], nodes[(nodes > a) & (nodes < b)]]))
        s = np.interp(g, nodes, sigma)
        mean_sigma2.append(np.sum(np.diff(g) * (s[:-1] ** 2 + s[:-1] * s[1:] + s[1:] ** 2) / 3)
                           / (b - a))
    second = jax.jit(jax.jacfwd(jax.jacfwd(lambda n: absorption._tbabs(lo, hi, n))))(0.0)
    # absolute rounding ~1e-16 of the table's running sum of sigma^2 (~1e4 from 0.1 keV)
    np.testing.assert_allclose(second, mean_sigma2, rtol=1e-10, atol=1e-11)


@pytest.mark.slow  # ~10 s of compilation
def test_custom_derivatives_equal_autodiff_of_the_plain_function():
    """The custom_jvp (derivatives in nH and 1 + z computed once per order) against plain
    autodiff of the same transmission, to second order in forward and reverse mode."""
    e = np.geomspace(0.3, 12.0, 25)
    lo, hi = jnp.asarray(e[:-1]), jnp.asarray(e[1:])
    weights = jnp.linspace(1.0, 2.0, 24)

    def custom(p):
        return jnp.sum(weights * absorption._ztbabs(lo, hi, p[0], p[1])) * p[2] ** 2

    def plain(p):
        zfac = 1.0 + p[1]
        return jnp.sum(weights * absorption._bin_transmission(lo * zfac, hi * zfac, p[0],
                                                               "tbabs_angr")) * p[2] ** 2

    @jax.jit
    def both(p):
        hessian = jax.hessian(plain)(p)
        return [(jax.grad(custom)(p), jax.grad(plain)(p)), (jax.hessian(custom)(p), hessian),
                (jax.jacfwd(jax.jacfwd(custom))(p), hessian)]

    for p in (jnp.array([0.7, 0.3, 1.5]), jnp.array([30.0, 1.2, 0.5])):
        for got, expected in both(p):
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


# -- expressions and options -----------------------------------------------------------------


def test_model_expressions():
    e = np.geomspace(0.3, 10.0, 33)
    for text, labels in (("tbabs*powerlaw", ["tbabs", "powerlaw"]),
                         ("wabs*powerlaw", ["wabs", "powerlaw"]),
                         ("TBabs*zTBabs*cutoffpl", ["tbabs", "ztbabs", "cutoffpl"]),
                         ("pcfabs*cabs*powerlaw", ["pcfabs", "cabs", "powerlaw"])):
        model = parse_model(text)
        assert model.kind == "add"
        assert list(dict.fromkeys(n.split(".")[0] for n in model.names)) == labels
        flux = _eval(model, {}, e[:-1], e[1:])
        assert np.all(np.isfinite(flux)) and np.all(flux > 0)
    model = parse_model("phabs*powerlaw")
    absorbed = _eval(model, {"phabs.nH": 1.0}, e[:-1], e[1:])
    plain = _eval(component("powerlaw"), {}, e[:-1], e[1:])
    assert np.all(np.asarray(absorbed) < np.asarray(plain))


def test_absorbed_blackbody_plus_power_law():
    if "bbodyrad" not in COMPONENTS:
        pytest.skip("bbodyrad (bkgjax.spectral.continua) is not registered in this tree")
    model = parse_model("phabs*(bbodyrad+powerlaw)")
    e = np.geomspace(0.3, 10.0, 33)
    flux = _eval(model, {"phabs.nH": 0.5}, e[:-1], e[1:])
    sub = _eval(model.subexpression("bbodyrad + powerlaw"), {}, e[:-1], e[1:])
    transmission = _eval(component("phabs"), {"phabs.nH": 0.5}, e[:-1], e[1:])
    np.testing.assert_allclose(flux, np.asarray(sub) * np.asarray(transmission), rtol=1e-13)


def test_options_select_the_table_and_are_part_of_the_structure():
    e = np.geomspace(0.3, 10.0, 33)
    angr = parse_model("tbabs*powerlaw")
    wilm = parse_model("tbabs*powerlaw", abund="wilm")
    assert angr.options == () and wilm.options == (("abund", "wilm"),)
    assert wilm.structure != angr.structure and hash(wilm.structure) != hash(angr.structure)
    assert wilm.structure.options == (("abund", "wilm"),)
    flux_a = _eval(angr, {}, e[:-1], e[1:])
    flux_w = _eval(wilm, {}, e[:-1], e[1:])
    assert np.all(flux_w > flux_a)  # wilm: lower metal abundances, less absorption
    np.testing.assert_allclose(
        flux_w, _eval(angr.with_options(abund="wilm"), {}, e[:-1], e[1:]), rtol=0)
    assert _eval(angr.with_options(abund="angr"), {}, e[:-1], e[1:]) == pytest.approx(flux_a)
    assert wilm.with_options(abund=None).options == ()
    # ModelStructure.evaluate (the fits' path) uses them too, also under jit with the
    # structure as a static argument: two compilations, not one shared
    evaluate = jax.jit(lambda theta, s: s.evaluate(theta, e[:-1], e[1:]), static_argnums=1)
    theta = jnp.asarray([1.0, 1.0, 1.0])
    np.testing.assert_allclose(evaluate(theta, wilm.structure), flux_w, rtol=1e-13)
    np.testing.assert_allclose(evaluate(theta, angr.structure), flux_a, rtol=1e-13)
    # the export cache keys differ
    keys = {export_cache._key("f", {"structure": m.structure}, [theta], "tree")
            for m in (angr, wilm)}
    assert len(keys) == 2 and None not in keys
    # options survive every way of deriving a model
    assert wilm.set("nH", 2.0).options == wilm.options
    assert wilm.with_values({"PhoIndex": 2.0}).options == wilm.options
    assert wilm.subexpression("tbabs").options == wilm.options
    assert (wilm + component("gaussian")).options == wilm.options
    assert (component("constant") * wilm).options == wilm.options
    leaves, tree = jax.tree_util.tree_flatten(wilm)
    assert jax.tree_util.tree_unflatten(tree, leaves).options == wilm.options
    assert component("tbabs", options={"abund": "aspl"}).options == (("abund", "aspl"),)
    assert "options: abund='wilm'" in repr(wilm)


def test_option_errors_name_what_is_available():
    with pytest.raises(ValueError, match=r"phabs.*'wilm' is not available.*'angr', 'aspl'"):
        parse_model("phabs*powerlaw", abund="wilm")
    with pytest.raises(ValueError, match=r"xsect 'bcmc' is not available.*'vern'"):
        parse_model("tbabs*powerlaw", xsect="bcmc")
    with pytest.raises(ValueError, match=r"abund 'feld' is not available.*'angr', 'aspl', 'wilm'"):
        parse_model("wabs*powerlaw", abund="feld")
    with pytest.raises(ValueError, match=r"unknown model option 'abnd'.*did you mean 'abund'"):
        parse_model("tbabs*powerlaw", abnd="wilm")
    with pytest.raises(ValueError, match="different options abund='wilm' and abund='aspl'"):
        parse_model("tbabs*powerlaw", abund="wilm") * parse_model("tbabs", abund="aspl")
    # a setting made on a model without absorption is checked when phabs joins it
    with pytest.raises(ValueError, match="not available for phabs"):
        component("phabs") * parse_model("powerlaw", abund="wilm")
    # wabs: MM83 fixed abundances, the setting is accepted and changes nothing
    e = np.geomspace(0.3, 10.0, 9)
    np.testing.assert_array_equal(_eval(parse_model("wabs", abund="wilm"), {}, e[:-1], e[1:]),
                                  _eval(parse_model("wabs"), {}, e[:-1], e[1:]))


def _simulated(model, values, seed=0):
    """Counts of ``model`` through a diagonal 0.3-10 keV response (100 cm^2, 50 ks)."""
    edges = np.geomspace(0.3, 10.0, 121)
    matrix = np.eye(120) * 100.0
    flux = _eval(model, values, edges[:-1], edges[1:])
    counts = np.random.default_rng(seed).poisson(flux @ matrix * 5e4)
    return SpectralData.from_arrays(counts, 5e4, matrix, edges[:-1], edges[1:])


@pytest.mark.slow  # two fit compilations, ~15 s of CPU
def test_fits_with_different_abundances_do_not_share_a_compilation():
    """The same data fitted with tbabs/angr and tbabs/wilm: the nH differ as the cross-sections
    do (a compiled fit reused across options would return the same nH), and each recovers the
    simulated column under its own table."""
    truth = {"tbabs.nH": 0.8, "powerlaw.PhoIndex": 1.7, "powerlaw.norm": 1e-3}
    wilm = parse_model("tbabs*powerlaw", abund="wilm")
    data = _simulated(wilm, truth)
    start = {"tbabs.nH": 0.3, "powerlaw.PhoIndex": 2.0, "powerlaw.norm": 5e-4}
    fit_w = fit(wilm.with_values(start), data, "cstat", errors="covariance")
    fit_a = fit(parse_model("tbabs*powerlaw").with_values(start), data, "cstat",
                errors="covariance")
    assert fit_w.converged and fit_a.converged
    assert abs(fit_w.values["tbabs.nH"] - 0.8) < 3 * fit_w.errors["tbabs.nH"]
    assert fit_a.values["tbabs.nH"] < 0.9 * fit_w.values["tbabs.nH"]  # angr absorbs more per H
    assert fit_w.model.options == (("abund", "wilm"),) and fit_a.model.options == ()


def test_joint_model_keeps_the_options():
    source = parse_model("tbabs*powerlaw", abund="wilm")
    joint = JointModel.create(source, 2, per_dataset=["norm"],
                              background=parse_model("powerlaw", abund="wilm"))
    assert joint.structure.source.options == (("abund", "wilm"),)
    assert joint.structure.background.options == (("abund", "wilm"),)
    assert joint.dataset_model(2).options == (("abund", "wilm"),)
    assert joint.structure != JointModel.create(parse_model("tbabs*powerlaw"), 2,
                                                per_dataset=["norm"],
                                                background=parse_model("powerlaw")).structure


# -- command line ---------------------------------------------------------------------------


@pytest.mark.slow  # a whole fit-spectrum with profile bounds, ~15 s of CPU
def test_fit_spectrum_with_abund_records_it(tmp_path):
    out = tmp_path / "fit.json"
    code = main(["fit-spectrum", demo_spectrum_path(), "--model", "tbabs*powerlaw",
                 "--abund", "WILM", "--json", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["model_options"] == {"abund": "wilm", "xsect": "vern"}
    assert set(payload["params"]) == {"nH", "PhoIndex", "norm"}
    data = load(demo_spectrum_path(), erange=(0.5, 7.0))
    model = parse_model("tbabs*powerlaw", abund="wilm")
    values = {name: payload["params"][name.split(".")[1]]["value"] for name in model.names}
    theta = jnp.asarray([values[n] for n in model.names])
    mu = predicted_counts(model.structure, theta, data)
    cstat = 2 * float(jnp.sum(mu - data.counts + data.counts * jnp.log(
        jnp.where(data.counts > 0, data.counts / mu, 1.0))))
    assert cstat == pytest.approx(payload["stat_value"], rel=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--abund", "feld"], "--abund 'feld': not available; available: angr, aspl, wilm"),
    (["--xsect", "bcmc"], "--xsect 'bcmc': not available; available: vern"),
    (["--model", "phabs*powerlaw", "--abund", "wilm"],
     "--abund 'wilm': component 'phabs': abund 'wilm' is not available for phabs"),
])
def test_fit_spectrum_option_errors(argv, message, capsys):
    assert main(["fit-spectrum", demo_spectrum_path(), "--model", "tbabs*powerlaw", *argv]) == 2
    assert message in capsys.readouterr().err


# -- against Sherpa 4.19 --------------------------------------------------------------------------

SHERPA_NAMES = {"pl1.gamma": "powerlaw.PhoIndex", "pl1.ampl": "powerlaw.norm",
                "cpl1.PhoIndex": "cutoffpl.PhoIndex", "cpl1.HighECut": "cutoffpl.HighECut",
                "cpl1.norm": "cutoffpl.norm"}


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


def _case(reference, case):
    ref = reference[case]
    settings = ref["settings"]
    files = settings["files"]
    if not Path(files["pha"]).exists() or not Path(files["rmf"]).exists():
        pytest.skip(f"real spectra not found ({files['pha']}): ../shared/data is absent")
    data = load(files["pha"], erange=settings["erange"], rmf=files["rmf"], arf=files["arf"],
                use_background=False)
    model = parse_model(settings["model"], abund=settings["abund"])
    absorber = settings["model"].split("*")[0]

    def ours(values):
        return {f"{absorber}.nH" if k == "abs1.nH" else SHERPA_NAMES[k]: v
                for k, v in values.items()}

    return ref, data, model, ours


def test_reference_was_made_from_the_shipped_tables(reference):
    assert reference["meta"]["xsect_npz_sha256"] == hashlib.sha256(XSECT.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", ["dgtau_phabs", "velax1_tbabs",
                                  pytest.param("velax1B_phabs", marks=pytest.mark.slow)])
def test_model_counts_and_statistic_equal_sherpa(reference, case):
    ref, data, model, ours = _case(reference, case)
    assert data.n_bins == ref["n_bins"]
    np.testing.assert_array_equal(np.asarray(data.counts), ref["bin_counts"])
    fixed = model.with_values(ours(ref["settings"]["fixed"]))
    theta = jnp.asarray([fixed.resolve({})[n] for n in fixed.names])
    mu = np.asarray(predicted_counts(fixed.structure, theta, data))
    np.testing.assert_allclose(mu, ref["model_counts_fixed"], rtol=1e-9)
    counts = np.asarray(data.counts)
    cstat = 2 * np.sum(mu - counts + counts * np.log(np.where(counts > 0, counts / mu, 1.0)))
    assert cstat == pytest.approx(ref["stat_fixed"], rel=1e-9)
    tf = ref["transmission_fixed"]
    family = ref["settings"]["table"].split("_")[0]
    got = _eval(component(family).with_options(abund=ref["settings"]["abund"]),
                {f"{family}.nH": ref["settings"]["fixed"]["abs1.nH"]}, tf["e_lo"], tf["e_hi"])
    np.testing.assert_allclose(got, tf["value"], rtol=1e-11)


@pytest.mark.parametrize("case", [
    "velax1_tbabs", pytest.param("velax1B_phabs", marks=pytest.mark.slow)])
def test_fit_equals_sherpa(reference, case):
    """NuSTAR Vela X-1, 3-79 keV, 1900 bins, C-stat: tbabs(wilm)*cutoffpl (FPMA) and
    phabs(angr)*cutoffpl (FPMB) fitted like Sherpa's levmar: statistic to 1e-4, parameters to
    1e-3, 1-sigma errors to 1e-2."""
    ref, data, model, ours = _case(reference, case)
    result = fit(model.with_values(ours(ref["settings"]["start"])), data, "cstat",
                 errors="covariance")
    expected = ref["fit"]
    assert result.converged and expected["succeeded"]
    assert result.stat_value == pytest.approx(expected["stat"], rel=1e-4)
    assert result.dof == expected["dof"] and result.n_bins == expected["numpoints"]
    for name, exp in expected["params"].items():
        ours_name = next(iter(ours({name: 0.0})))
        assert result.values[ours_name] == pytest.approx(exp["value"], rel=1e-3), name
        assert result.errors[ours_name] == pytest.approx(exp["error_1sigma"], rel=1e-2), name


def test_profile_point_with_nh_in_the_tail_of_its_range_converges():
    """A fit whose nH sits at ~0.01 of its [0, 1e6] range (the log of nH in the fitter's
    coordinates): with PhoIndex frozen away from the best fit, Levenberg-Marquardt reaches the
    conditional minimum (it used to crawl 200 iterations at the start value, and the PhoIndex
    profile bound came out NOT_REACHED and wrong)."""
    import warnings

    from bkgjax.cli import demo_spectrum_path
    from bkgjax.fit import fit, guess_norms, load

    data = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    model = guess_norms(parse_model("tbabs*powerlaw"), data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = fit(model, data, "cstat", errors="covariance")
        held = fit(best.model.set("powerlaw.PhoIndex", 1.44, frozen=True), data, "cstat",
                   errors="covariance")
    assert held.converged and held.n_iter < 50
    # the conditional minimum moves nH up along the valley, to ~0.067 (independent check:
    # the statistic there is below the one at the start value of nH)
    assert held.values["tbabs.nH"] > 0.05
    start = fit(best.model.set("powerlaw.PhoIndex", 1.44, frozen=True)
                .set("tbabs.nH", best.values["tbabs.nH"], frozen=True), data, "cstat",
                errors="covariance")
    assert held.stat_value < start.stat_value - 1.0
