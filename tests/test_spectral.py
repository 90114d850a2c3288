"""Spectral components against numerical quadrature (scipy.integrate.quad) and XSPEC formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import bkgjax  # noqa: F401
from bkgjax.spectral import (
    KEV_TO_ERG,
    SR_TO_DEG2,
    bknpower,
    component,
    constant,
    cutoffpl,
    cxb_gruber,
    energy_flux,
    expdec,
    expression_kind,
    flux_from_covariance,
    flux_samples,
    fsline,
    gabs,
    gaussian,
    parse_expression,
    parse_model,
    photon_flux,
    powerlaw,
)
from bkgjax.spectral.components import fsline_density

EDGES = np.geomspace(0.3, 80.0, 41)
E_LO, E_HI = EDGES[:-1], EDGES[1:]


def integrate(density, lo=E_LO, hi=E_HI, points=None):
    return np.array([quad(density, a, b, epsabs=0, epsrel=1e-12, limit=200,
                          points=points if points is not None and any(a < p < b for p in points)
                          else None)[0] for a, b in zip(lo, hi)])


@pytest.mark.parametrize("index", [-1.0, 0.0, 0.5, 1.0, 1.0 + 1e-10, 1.7, 3.0])
def test_powerlaw_is_exact_integral(index):
    model = powerlaw(PhoIndex=index, norm=2.5)
    np.testing.assert_allclose(model(E_LO, E_HI), integrate(lambda e: 2.5 * e ** -index),
                               rtol=1e-11)


def test_powerlaw_gradient_finite_at_index_one():
    f = lambda g: powerlaw().evaluate({"powerlaw.PhoIndex": g}, E_LO, E_HI).sum()  # noqa: E731
    grad = float(jax.grad(f)(1.0))
    fd = (float(f(1.0 + 1e-6)) - float(f(1.0 - 1e-6))) / 2e-6
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_bknpower_integral_and_continuity():
    m = bknpower(PhoIndx1=1.2, BreakE=7.3, PhoIndx2=2.4, norm=0.1)

    def dens(e):
        return 0.1 * (e ** -1.2 if e <= 7.3 else 7.3 ** (2.4 - 1.2) * e ** -2.4)

    np.testing.assert_allclose(m(E_LO, E_HI), integrate(dens, points=[7.3]), rtol=1e-10)
    assert math.isclose(dens(7.3 - 1e-12), dens(7.3 + 1e-12), rel_tol=1e-9)


def test_cutoffpl_matches_quadrature():
    m = cutoffpl(PhoIndex=1.4, HighECut=25.0, norm=0.3)
    np.testing.assert_allclose(m(E_LO, E_HI), integrate(lambda e: 0.3 * e ** -1.4 * np.exp(-e / 25)),
                               rtol=1e-10)


def test_gruber_cxb_reproduces_paper_flux():
    """nustar_cxb_stray_light.txt: Gruber CXB gives 1.23e-11 erg/s/cm^2/deg^2 in 10-20 keV."""
    m = cxb_gruber()
    f_10_20 = float(energy_flux(m, e_min=10, e_max=20))
    reference = quad(lambda e: 7.877 * e ** -0.29 * np.exp(-e / 41.13), 10, 20,
                     epsrel=1e-12)[0] * KEV_TO_ERG * SR_TO_DEG2
    np.testing.assert_allclose(f_10_20, reference, rtol=1e-6)
    assert abs(f_10_20 - 1.23e-11) / 1.23e-11 < 0.01
    np.testing.assert_allclose(SR_TO_DEG2, 1 / 3282.80635, rtol=1e-7)


def test_gaussian_integral_sigma_zero_and_gradient():
    m = gaussian(LineE=6.4, Sigma=0.3, norm=1e-3)
    dens = lambda e: 1e-3 * np.exp(-0.5 * ((e - 6.4) / 0.3) ** 2) / (0.3 * math.sqrt(2 * math.pi))  # noqa: E731
    np.testing.assert_allclose(m(E_LO, E_HI), integrate(dens, points=[6.4]), rtol=1e-9,
                               atol=1e-25)
    # far-tail bins keep relative precision (the erfc form)
    tail = np.asarray(m(np.array([12.0]), np.array([12.5])))[0]
    np.testing.assert_allclose(tail, quad(dens, 12.0, 12.5, epsrel=1e-13, epsabs=0)[0], rtol=1e-7)
    delta = np.asarray(gaussian(LineE=6.4, Sigma=0.0, norm=2.0)(E_LO, E_HI))
    assert delta.sum() == 2.0 and np.count_nonzero(delta) == 1
    assert E_LO[np.argmax(delta)] <= 6.4 < E_HI[np.argmax(delta)]
    g = jax.grad(lambda s: gaussian().evaluate({"gaussian.Sigma": s}, E_LO, E_HI).sum())(0.0)
    assert np.isfinite(float(g))


def test_fsline_box_and_smooth_forms():
    # sigma above a tenth of the bin width: the smooth profile of ../shared/data/README.md
    m = fsline(Sigma=0.05, E_low=1.6, E_high=1.9, norm=0.2)
    lo = np.linspace(1.2, 2.3, 56)[:-1]
    hi = lo + (lo[1] - lo[0])
    dens = lambda e: float(fsline_density(e, 0.05, 1.6, 1.9, 0.2))  # noqa: E731
    np.testing.assert_allclose(m(lo, hi), integrate(dens, lo, hi), rtol=2e-4, atol=1e-9)
    # flat top equals norm, Gaussian tails outside
    assert dens(1.75) == pytest.approx(0.2)
    assert dens(1.9 + 0.1) == pytest.approx(0.2 * math.exp(-0.5 * (0.1 / 0.05) ** 2), rel=1e-3)
    # sigma below a tenth of the bin width: plain box norm * overlap
    box = fsline(Sigma=0.001, E_low=1.62, E_high=1.87, norm=0.2)
    values = np.asarray(box(np.array([1.5, 1.6, 1.8]), np.array([1.6, 1.8, 2.0])))
    np.testing.assert_allclose(values, [0.0, 0.2 * 0.18, 0.2 * 0.07], rtol=1e-12)


def test_expdec_and_multiplicative_components():
    m = expdec(factor=0.3, norm=2.0)
    np.testing.assert_allclose(m(E_LO, E_HI), integrate(lambda e: 2.0 * np.exp(-0.3 * e)),
                               rtol=1e-11)
    flat = expdec(factor=0.0, norm=2.0)
    np.testing.assert_allclose(flat(E_LO, E_HI), 2.0 * (E_HI - E_LO), rtol=1e-14)
    # gabs: the bin average of exp(-tau) (XSPEC 12), depth Strength/(sqrt(2 pi) Sigma) at the
    # centre
    absorber = gabs(LineE=6.7, Sigma=0.1, Strength=0.05)
    lo = np.array([6.695, 9.0])
    hi = lo + 0.01
    tau0 = 0.05 / (math.sqrt(2 * math.pi) * 0.1)
    expected = [quad(lambda e: math.exp(-tau0 * math.exp(-0.5 * ((e - 6.7) / 0.1) ** 2)), a, b,
                     epsabs=0.0, epsrel=1e-13)[0] / (b - a) for a, b in zip(lo, hi)]
    np.testing.assert_allclose(absorber(lo, hi), expected, rtol=1e-8)
    product = constant(factor=0.5) * gabs(LineE=6.7, Sigma=0.1, Strength=0.05) * powerlaw()
    np.testing.assert_allclose(product(lo, hi), 0.5 * np.array(expected) * powerlaw()(lo, hi),
                               rtol=1e-12)


def test_model_expressions_names_and_errors():
    m = parse_model("constant*(powerlaw + gaussian + gaussian)")
    assert str(m) == "constant * (powerlaw + gaussian + gaussian_2)"
    assert m.kind == "add"
    assert "gaussian_2.LineE" in m.names
    assert m.display_names()["powerlaw.PhoIndex"] == "PhoIndex"
    assert m.display_names()["gaussian.norm"] == "gaussian.norm"
    with pytest.raises(ValueError, match="unknown model component 'powerlow'.*powerlaw"):
        parse_model("powerlow")
    with pytest.raises(ValueError, match="multiply two additive"):
        powerlaw() * gaussian()
    with pytest.raises(ValueError, match="outside its limits"):
        powerlaw().set("PhoIndex", 50.0)
    with pytest.raises(KeyError, match="ambiguous"):
        m["norm"]
    with pytest.raises(ValueError, match="has no parameter"):
        component("powerlaw", Gamma=2.0)
    frozen = powerlaw().set("PhoIndex", 2.0, frozen=True)
    assert frozen.free_names == ("powerlaw.norm",)


def test_one_expression_parser_for_models_and_xspec_files():
    tree, names = parse_expression("Constant(powerlaw + gaussian)*gabs + expdec")
    assert names == ("constant", "powerlaw", "gaussian", "gabs", "expdec")
    assert tree == ("+", ("*", ("*", ("comp", "constant", 0),
                                     ("+", ("comp", "powerlaw", 1), ("comp", "gaussian", 2))),
                               ("comp", "gabs", 3)),
                    ("comp", "expdec", 4))
    assert expression_kind(tree) == "add" and expression_kind(parse_expression("gabs")[0]) == "mul"
    # parse_model reads XSPEC's implicit product and names the components as Model does
    m = parse_model("constant(powerlaw + gaussian + gaussian)")
    assert str(m) == "constant * (powerlaw + gaussian + gaussian_2)"
    for text, message in [("powerlaw + gabs", "cannot add additive and multiplicative"),
                          ("powerlaw*gaussian", "cannot multiply two additive"),
                          ("(powerlaw", "missing '\\)'"), ("2*powerlaw", "unexpected character"),
                          ("powerlaw +", "ends unexpectedly"), ("mekal", "unknown model component")]:
        with pytest.raises(ValueError, match=message):
            parse_expression(text)


def test_linked_parameters_follow_their_target():
    m = gaussian(LineE=1.0, Sigma=0.1, norm=1.0) + gaussian(LineE=2.0, Sigma=0.3, norm=1.0)
    m = m.set("gaussian_2.Sigma", link="gaussian.Sigma")
    assert "gaussian_2.Sigma" not in m.free_names
    lo, hi = np.array([1.95]), np.array([2.05])
    expected = gaussian(LineE=2.0, Sigma=0.1)(lo, hi)
    got = m.evaluate({"gaussian.LineE": 10.0}, lo, hi)  # first line moved away
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_band_fluxes_and_uncertainty_propagation():
    m = powerlaw(PhoIndex=2.0, norm=1e-2)
    # photon flux: 1e-2 * (1/2 - 1/10); energy flux: 1e-2 * ln(5) keV -> erg
    np.testing.assert_allclose(photon_flux(m, e_min=2, e_max=10), 1e-2 * 0.4, rtol=1e-10)
    np.testing.assert_allclose(energy_flux(m, e_min=2, e_max=10),
                               1e-2 * math.log(5) * KEV_TO_ERG, rtol=1e-6)
    cov = np.array([[0.01, 1e-5], [1e-5, 1e-6]])
    values = m.values()
    names = ("powerlaw.PhoIndex", "powerlaw.norm")
    f0, sigma = flux_from_covariance(m, values, cov, names, 2, 10)
    draws = np.random.default_rng(0).multivariate_normal([2.0, 1e-2], cov, 20000)
    mc = np.asarray(flux_samples(m, {names[0]: draws[:, 0], names[1]: draws[:, 1]}, 2, 10))
    np.testing.assert_allclose(float(sigma), mc.std(), rtol=0.03)
    np.testing.assert_allclose(float(f0), np.median(mc), rtol=0.01)


def test_component_evaluation_jit_equals_eager():
    m = constant() * (powerlaw(PhoIndex=1.3) + cutoffpl() + gaussian(Sigma=0.0)
                      + fsline(Sigma=0.2, E_low=2.0, E_high=3.0) + expdec() + bknpower())
    values = m.values()
    eager = np.asarray(m.evaluate(values, E_LO, E_HI))
    jitted = np.asarray(jax.jit(lambda v: m.evaluate(v, E_LO, E_HI))(values))
    np.testing.assert_allclose(jitted, eager, rtol=1e-13)
    grads = jax.grad(lambda v: m.evaluate(v, jnp.asarray(E_LO), jnp.asarray(E_HI)).sum())(values)
    assert all(np.isfinite(float(g)) for g in grads.values())


def test_parameters_and_models_are_pytrees():
    m = powerlaw(PhoIndex=1.7, norm=2e-3) + gaussian(LineE=6.4)
    leaves, treedef = jax.tree_util.tree_flatten(m)
    assert leaves == [1.7, 2e-3, 6.4, 0.1, 1.0]
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, m)
    assert doubled["PhoIndex"].value == 3.4 and doubled["PhoIndex"].unit == ""
    assert doubled["gaussian.LineE"].max == m["gaussian.LineE"].max
    # a model passes through jit as a pytree; values are traced, structure is static
    total = jax.jit(lambda mod: mod.evaluate({p.name: p.value for p in mod.parameters},
                                             E_LO, E_HI).sum())
    np.testing.assert_allclose(total(m), m(E_LO, E_HI).sum(), rtol=1e-13)
