"""Convolution components of the model library (issue 20 item 3): cflux, cpflux, zashift,
zmshift, XSPEC's ``conv*expr`` syntax, and the fit-time check that the normalisation inside
cflux/cpflux is frozen.

References are written here independently of bkgjax.spectral.convolutions: XSPEC's
``integrationKernel`` (HEASoft XSUtil/Numerics/Integrate.cxx) transcribed as a plain loop for
the band fluxes, a dense overlap matrix for the redshift rebinning, and closed-form power-law
integrals.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401  (float64)
from bkgjax.spectral import (
    COMPONENTS,
    KEV_TO_ERG,
    energy_flux,
    parse_expression,
    parse_model,
    photon_flux,
    powerlaw_integral,
)
from bkgjax.spectral.convolutions import free_flux_normalisations

EDGES = np.geomspace(0.3, 12.0, 241)
LO, HI = EDGES[:-1], EDGES[1:]


def xspec_band_flux(energy, flux, e_min, e_max):
    """(photon flux, energy flux in erg/cm^2/s) of per-bin fluxes in [e_min, e_max], XSPEC's
    integrationKernel: whole bins inside, the fraction of the partial bins (flat density)."""
    if e_max <= energy[0] or e_min >= energy[-1]:
        return 0.0, 0.0
    k = max(int(np.searchsorted(energy, e_min, side="right")) - 1, 0)
    low = max(e_min, energy[0])
    photons = energy_keV = 0.0
    while k < len(flux) and energy[k] < e_max:
        a, b = max(low, energy[k]), min(e_max, energy[k + 1])
        share = flux[k] / (energy[k + 1] - energy[k])
        photons += share * (b - a)
        energy_keV += share * (b * b - a * a) / 2
        k += 1
    return photons, energy_keV * KEV_TO_ERG


def dense_rest_frame_rebin(lo, hi, values, stretch):
    """sum_i v_i |[lo_i, hi_i] & [s lo_j, s hi_j]| / (hi_i - lo_i) by a full overlap matrix."""
    a, b = lo[None, :], hi[None, :]
    qa, qb = stretch * lo[:, None], stretch * hi[:, None]
    overlap = np.clip(np.minimum(b, qb) - np.maximum(a, qa), 0.0, None) / (b - a)
    return overlap @ values


@partial(jax.jit, static_argnums=0)
def _evaluate(structure, theta, lo, hi):
    return structure.evaluate(theta, lo, hi)


def evaluate(model, lo=LO, hi=HI):
    """Per-bin values at the model's current values (compiled: eager JAX compiles every
    operation of a new shape, which costs more than one compilation of the model)."""
    theta = jnp.asarray(list(model.values().values()))
    return np.asarray(_evaluate(model.structure, theta, jnp.asarray(lo), jnp.asarray(hi)))


# ----------------------------------------------------------------------------------------------
# expressions


def test_registered_with_xspec_parameters():
    for name, params in (("cflux", ("Emin", "Emax", "lg10Flux")),
                         ("cpflux", ("Emin", "Emax", "Flux")),
                         ("zashift", ("Redshift",)), ("zmshift", ("Redshift",))):
        spec = COMPONENTS[name]
        assert spec.kind == "con" and spec.param_names == params
    cflux = {p.name: p for p in COMPONENTS["cflux"].params}
    assert (cflux["Emin"].value, cflux["Emax"].value, cflux["lg10Flux"].value) == (0.5, 10.0, -12)
    assert cflux["Emin"].frozen and cflux["Emax"].frozen and not cflux["lg10Flux"].frozen
    assert (cflux["lg10Flux"].min, cflux["lg10Flux"].max) == (-100.0, 100.0)
    z = COMPONENTS["zashift"].params[0]
    assert (z.value, z.min, z.max, z.frozen) == (0.0, -0.999, 10.0, True)


def test_xspec_star_syntax_applies_to_the_rest_of_the_term():
    same = [("cflux*powerlaw", "cflux(powerlaw)"),
            ("cflux*constant*powerlaw", "cflux(constant*powerlaw)"),
            ("cflux*constant*(powerlaw + gaussian)", "cflux(constant*(powerlaw + gaussian))"),
            ("constant*cflux*(powerlaw + gaussian)", "constant*cflux(powerlaw + gaussian)"),
            ("constant*(powerlaw + cpflux*gaussian)", "constant*(powerlaw + cpflux(gaussian))"),
            ("cflux*constant*powerlaw + gaussian", "cflux(constant*powerlaw) + gaussian"),
            ("cflux*zashift*powerlaw", "cflux(zashift(powerlaw))"),
            ("zmshift*gabs*zashift*powerlaw", "zmshift(gabs*zashift(powerlaw))")]
    for xspec, explicit in same:
        assert parse_expression(xspec) == parse_expression(explicit), xspec
    tree, names = parse_expression("cflux*constant*powerlaw + gaussian")
    assert names == ("cflux", "constant", "powerlaw", "gaussian")  # XSPEC's numbering
    assert tree == ("+", ("conv", ("comp", "cflux", 0),
                          ("*", ("comp", "constant", 1), ("comp", "powerlaw", 2))),
                    ("comp", "gaussian", 3))
    model = parse_model("cflux*powerlaw")
    assert str(model) == "cflux(powerlaw)" and model.kind == "add"
    assert model.names[:3] == ("cflux.Emin", "cflux.Emax", "cflux.lg10Flux")
    for bad in ("cflux", "cflux*", "powerlaw*cflux", "cflux + powerlaw"):
        with pytest.raises(ValueError, match="convolution component 'cflux' must be followed"):
            parse_model(bad)
    if "tbabs" in COMPONENTS:  # written by another part of the model library
        assert parse_expression("cflux*tbabs*powerlaw") == parse_expression(
            "cflux(tbabs*powerlaw)")


# ----------------------------------------------------------------------------------------------
# cflux, cpflux


@pytest.mark.parametrize("band", [(0.5, 10.0), (0.3, 12.0), (2.0, 2.0001), (1.05, 7.3)])
def test_cflux_and_cpflux_set_the_band_flux_on_the_grid(band):
    e_min, e_max = band
    inner = "powerlaw + gaussian"
    model = parse_model(f"cflux({inner})").set("Emin", e_min).set("Emax", e_max) \
        .set("lg10Flux", -11.3).set("PhoIndex", 1.7).set("LineE", 6.4).set("Sigma", 0.1) \
        .set("gaussian.norm", 3e-4)
    values = evaluate(model)
    photons, energy = xspec_band_flux(EDGES, values, e_min, e_max)
    assert energy == pytest.approx(10 ** -11.3, rel=1e-10)
    # the shape is the inner expression's
    plain = evaluate(parse_model(inner).set("PhoIndex", 1.7).set("LineE", 6.4)
                     .set("Sigma", 0.1).set("gaussian.norm", 3e-4))
    np.testing.assert_allclose(values / plain, values[0] / plain[0], rtol=1e-12)
    photon_model = parse_model(f"cpflux({inner})").set("Emin", e_min).set("Emax", e_max) \
        .set("Flux", 2.5e-3).set("PhoIndex", 1.7)
    assert xspec_band_flux(EDGES, evaluate(photon_model), e_min, e_max)[0] == pytest.approx(
        2.5e-3, rel=1e-10)


def test_flux_apis_agree_with_the_parameter():
    """bkgjax's band fluxes (their own grid over the band) give back lg10Flux and Flux."""
    model = parse_model("cflux*powerlaw").set("Emin", 2.0).set("Emax", 8.0) \
        .set("lg10Flux", -12.5).set("PhoIndex", 2.2).set("norm", 1e-3)
    # (a Model is a pytree: compiled, these take one compilation each)
    energy = jax.jit(lambda m: energy_flux(m, None, 2.0, 8.0, n_bins=1000))(model)
    assert float(energy) == pytest.approx(10 ** -12.5, rel=1e-10)
    photon_model = parse_model("cpflux*powerlaw").set("Emin", 2.0).set("Emax", 8.0) \
        .set("Flux", 1e-3).set("PhoIndex", 2.2)
    photons = jax.jit(lambda m: photon_flux(m, None, 2.0, 8.0, n_bins=1000))(photon_model)
    assert float(photons) == pytest.approx(1e-3, rel=1e-10)


@partial(jax.jit, static_argnums=0)
def _total_gradient(structure, theta, lo, hi):
    return jax.grad(lambda t: jnp.sum(structure.evaluate(t, lo, hi)))(theta)


def test_no_band_flux_gives_zeros():
    """A band off the grid, an empty band or an expression without flux: 0 in every bin
    (XSPEC divides by zero), finite with finite gradients."""
    cases = [dict(Emin=20.0, Emax=30.0), dict(Emin=0.01, Emax=0.2), dict(Emin=5.0, Emax=3.0),
             dict(Emin=4.0, Emax=4.0), dict(norm=0.0)]
    for case in cases:
        for conv in ("cflux", "cpflux"):
            model = parse_model(f"{conv}(powerlaw)")
            for name, value in case.items():
                model = model.set(name, value)
            np.testing.assert_array_equal(evaluate(model), 0.0, err_msg=f"{conv} {case}")
            theta = jnp.asarray(list(model.values().values()))
            grad = _total_gradient(model.structure, theta, jnp.asarray(LO), jnp.asarray(HI))
            assert np.all(np.isfinite(np.asarray(grad))), (conv, case, grad)
    # a band partly off the grid counts the part on it, as XSPEC's integrationKernel
    model = parse_model("cflux(powerlaw)").set("Emin", 0.1).set("Emax", 1.0).set("lg10Flux", -12)
    assert xspec_band_flux(EDGES, evaluate(model), 0.1, 1.0)[1] == pytest.approx(1e-12,
                                                                                 rel=1e-10)


# ----------------------------------------------------------------------------------------------
# zashift, zmshift


def test_zashift_of_a_power_law_on_an_aligned_log_grid():
    """1 + z = r^3 on a grid of ratio r: rest-frame intervals are whole bins, so the result is
    exact, K (1+z)^-Gamma int_a^b E^-Gamma dE, except the top 3 bins (off the grid: 0)."""
    ratio = EDGES[1] / EDGES[0]
    z = ratio ** 3 - 1.0
    gamma = 1.8
    values = evaluate(parse_model("zashift(powerlaw)").set("Redshift", z).set("PhoIndex", gamma))
    expected = (1 + z) ** -gamma * np.asarray(powerlaw_integral(LO, HI, gamma))
    np.testing.assert_allclose(values[:-3], expected[:-3], rtol=1e-10)
    assert np.all(values[-3:] <= 1e-12 * expected[-3:])  # 0 up to the rounding of (1+z) E


@pytest.mark.parametrize("z", [0.0, 0.037, 0.5, 3.2, -0.3, 10.0])
def test_zashift_and_zmshift_against_a_dense_rebinning(z):
    lo = np.r_[np.linspace(0.3, 2.0, 50, endpoint=False), np.geomspace(2.0, 12.0, 81)[:-1]]
    hi = np.r_[lo[1:], 12.0]
    inner = parse_model("powerlaw + gaussian").set("LineE", 3.0).set("Sigma", 0.05) \
        .set("gaussian.norm", 0.2)
    rest = evaluate(inner, lo, hi)
    shifted = evaluate(parse_model("zashift(powerlaw + gaussian)").set("Redshift", z)
                       .set("LineE", 3.0).set("Sigma", 0.05).set("gaussian.norm", 0.2), lo, hi)
    expected = dense_rest_frame_rebin(lo, hi, rest, 1 + z) / (1 + z)
    np.testing.assert_allclose(shifted, expected, rtol=1e-11, atol=1e-300)
    assert np.all(shifted >= 0)
    # zmshift: the average factor over the rest-frame interval, 0 off the grid
    factor_model = parse_model("gabs").set("LineE", 2.0).set("Sigma", 0.2).set("Strength", 0.4)
    factor = evaluate(factor_model, lo, hi)
    mshifted = evaluate(parse_model("zmshift(gabs)").set("Redshift", z).set("LineE", 2.0)
                        .set("Sigma", 0.2).set("Strength", 0.4), lo, hi)
    weight = dense_rest_frame_rebin(lo, hi, np.ones_like(factor), 1 + z)
    average = np.where(weight > 0, dense_rest_frame_rebin(lo, hi, factor, 1 + z)
                       / np.where(weight > 0, weight, 1), 0.0)
    np.testing.assert_allclose(mshifted, average, rtol=1e-12, atol=1e-300)
    if z == 0:
        np.testing.assert_allclose(shifted, rest, rtol=1e-13)
        np.testing.assert_allclose(mshifted, factor, rtol=1e-13)


def test_zashift_keeps_relative_precision_far_down_a_steep_spectrum():
    """A bin 1e-30 below the peak is not lost in the rounding of a cumulative sum."""
    model = parse_model("zashift(cutoffpl)").set("Redshift", 0.2).set("HighECut", 0.15) \
        .set("PhoIndex", 0.0)
    values = evaluate(model)
    rest = evaluate(parse_model("cutoffpl").set("HighECut", 0.15).set("PhoIndex", 0.0))
    expected = dense_rest_frame_rebin(LO, HI, rest, 1.2) / 1.2
    tail = expected > 0
    assert expected[tail].min() < 1e-30 * expected.max()
    np.testing.assert_allclose(values[tail], expected[tail], rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# numerics: gradients, jit, vmap

# (zmshift acts on a constant here: gabs's own gradients, jit and vmap are in test_gabs, and
# the rebinning zmshift shares with zashift gets its gradient through zashift's test)
CONVOLVED = ["cflux(powerlaw + gaussian)", "cpflux(powerlaw)", "zashift(powerlaw + gaussian)",
             "zmshift(constant)*powerlaw"]


@pytest.mark.parametrize("expression", CONVOLVED)
def test_values_gradients_jit_and_vmap(expression):
    model = parse_model(expression)
    if any(n.endswith(".Redshift") for n in model.names):
        model = model.set("Redshift", 0.3)
    structure = model.structure
    theta = jnp.asarray(list(model.values().values()))
    lo, hi = jnp.asarray(LO), jnp.asarray(HI)

    def total(t):
        return jnp.sum(jnp.log1p(structure.evaluate(t, lo, hi)))

    value, grad = jax.jit(jax.value_and_grad(total))(theta)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    jitted = np.asarray(_evaluate(structure, theta, lo, hi))
    eager = np.asarray(structure.evaluate(theta, lo, hi))
    np.testing.assert_allclose(jitted, eager, rtol=1e-12, atol=1e-300)
    batch = jnp.stack([theta, theta * 1.01, theta * 0.97])
    batched = np.asarray(jax.jit(jax.vmap(lambda t: structure.evaluate(t, lo, hi)))(batch))
    for row, t in zip(batched, batch):
        np.testing.assert_allclose(row, np.asarray(structure.evaluate(t, lo, hi)), rtol=1e-12,
                                   atol=1e-300)


def test_gradient_of_the_flux_parameter_and_the_inner_shape():
    """d/d lg10Flux of the band flux is ln(10) times it; the inner norm drops out."""
    model = parse_model("cflux(powerlaw)").set("lg10Flux", -11.0).set("PhoIndex", 1.5)
    names = model.names
    theta = jnp.asarray(list(model.values().values()))

    def band_energy(t):
        per_bin = model.structure.evaluate(t, jnp.asarray(LO), jnp.asarray(HI))
        lower, upper = jnp.clip(0.5, LO, HI), jnp.clip(10.0, LO, HI)
        return jnp.sum(per_bin * (upper ** 2 - lower ** 2) / (2 * (HI - LO))) * KEV_TO_ERG

    grad = np.asarray(jax.jit(jax.grad(band_energy))(theta))
    assert grad[names.index("cflux.lg10Flux")] == pytest.approx(math.log(10) * 1e-11, rel=1e-10)
    assert abs(grad[names.index("powerlaw.norm")]) < 1e-24
    assert abs(grad[names.index("powerlaw.PhoIndex")]) < 1e-22


# ----------------------------------------------------------------------------------------------
# the inner normalisation must be frozen


def test_free_normalisation_inside_cflux_is_found():
    def free(expression, **settings):
        model = parse_model(expression)
        for name, frozen in settings.items():
            model = model.set(name.replace("__", "."), frozen=frozen)
        params = {p.name: p for p in model.parameters}
        return [(n, label, names) for n, label, names in free_flux_normalisations(model.expr,
                                                                                   params)]

    assert free("cflux(powerlaw)") == [("cflux", "cflux", ["powerlaw.norm"])]
    assert free("cflux(powerlaw)", powerlaw__norm=True) == []
    assert free("cpflux(powerlaw + gaussian)") == [
        ("cpflux", "cpflux", ["powerlaw.norm", "gaussian.norm"])]
    assert free("cpflux(powerlaw + gaussian)", gaussian__norm=True) == []  # XSPEC's advice
    assert free("cflux(constant*powerlaw)", powerlaw__norm=True) == [
        ("cflux", "cflux", ["constant.factor"])]
    assert free("cflux(constant*powerlaw)", powerlaw__norm=True, constant__factor=True) == []
    assert free("zashift(powerlaw)") == [] and free("powerlaw + cflux(gaussian)") == [
        ("cflux", "cflux", ["gaussian.norm"])]
    # a norm linked to a frozen one, and per-data-set copies of a joint fit
    model = parse_model("cflux(powerlaw + powerlaw)").set("powerlaw.norm", frozen=True) \
        .set("powerlaw_2.norm", link="powerlaw.norm")
    assert free_flux_normalisations(model.expr, {p.name: p for p in model.parameters}) == []
    params = {p.name: p for p in parse_model("cflux(powerlaw)").parameters}
    copies = {**{k: v for k, v in params.items() if k != "powerlaw.norm"},
              "powerlaw.norm@1": params["powerlaw.norm"], "powerlaw.norm@2": params["powerlaw.norm"]}
    assert free_flux_normalisations(parse_model("cflux(powerlaw)").expr, copies) == [
        ("cflux", "cflux", ["powerlaw.norm"])]


@pytest.fixture(scope="module")
def demo():
    from bkgjax.fit import load
    from bkgjax.spectrum_cli import demo_spectrum_path

    return load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)


def test_fit_refuses_a_free_normalisation_inside_cflux(demo):
    from bkgjax.fit import fit

    with pytest.raises(ValueError, match=r"cflux.lg10Flux sets the flux .*powerlaw.norm.*"
                                         r"freeze one of them, e.g. model.set\('powerlaw.norm'"):
        fit(parse_model("cflux(powerlaw)"), demo, "cstat")


def _simulated(demo, model, seed):
    from bkgjax.fit import predicted_counts

    theta = jnp.asarray(list(model.resolve({}).values()))
    mu = np.asarray(predicted_counts(model.structure, theta, demo))
    return demo.with_counts(jnp.asarray(np.random.default_rng(seed).poisson(mu), dtype=float))


@pytest.mark.slow
def test_cflux_profile_bounds_match_the_delta_method_flux_interval(demo):
    """cflux(powerlaw) with the norm frozen is a reparametrisation of powerlaw: the fitted
    lg10Flux is log10 of the power law's band flux, and its 90 % profile bounds are the
    delta-method interval of that flux (well-determined, ~2e4 counts: nearly Gaussian)."""
    from bkgjax.fit import fit
    from bkgjax.spectral import flux_from_covariance

    truth = parse_model("powerlaw").set("PhoIndex", 1.7).set("norm", 2e-2)
    data = _simulated(demo, truth, seed=7)
    plain = fit(truth, data, "cstat", errors="covariance")
    flux, sigma = flux_from_covariance(plain.model, plain.values, plain.covariance,
                                       plain.free_names, 0.5, 7.0)
    flux, sigma = float(flux), float(sigma)
    model = parse_model("cflux*powerlaw").set("Emin", 0.5).set("Emax", 7.0) \
        .set("lg10Flux", -11.0).set("PhoIndex", 1.5).set("norm", 1.0, frozen=True)
    result = fit(model, data, "cstat", errors="profile", level=0.9)
    assert result.converged
    lg10 = result.values["cflux.lg10Flux"]
    assert lg10 == pytest.approx(math.log10(flux), abs=2e-5)  # flux on the response grid
    assert result.values["powerlaw.PhoIndex"] == pytest.approx(plain.values["powerlaw.PhoIndex"],
                                                               abs=1e-4)
    assert result.stat_value == pytest.approx(plain.stat_value, abs=1e-6)
    lower, upper = result.intervals["cflux.lg10Flux"]
    half = 1.6449 * sigma / (flux * math.log(10))
    assert 0.0005 < half < 0.05
    assert lower == pytest.approx(math.log10(flux) - half, abs=0.05 * half)
    assert upper == pytest.approx(math.log10(flux) + half, abs=0.05 * half)
