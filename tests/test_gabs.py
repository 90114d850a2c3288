"""gabs to the XSPEC 12 definition (issue 20 item 0): the bin average of exp(-tau(E)),
exact for any ratio of bin width to Sigma.

References are independent of bkgjax: a brute-force midpoint average of exp(-tau) on a grid
of Sigma/40 (spectrally accurate for this smooth, decaying integrand) and scipy.integrate.quad
with the line's centre and +-k Sigma as break points.  The real mkacispback VFAINT ccd7
templates hold a gabs at 0.315 keV with Sigma 5e-8 .. 5e-4 keV and central depths up to 8e5:
their transmission in 5 eV bins is ~0.99, where the former exp(-<tau>_bin) gave 0.04 or 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

import bkgjax  # noqa: F401  (float64)
from bkgjax.spectral import COMPONENTS, parse_model

GABS = COMPONENTS["gabs"].function
GABS_JIT = jax.jit(GABS)
# eager (op-by-op) calls compile every operation once per shape: they share this grid
EAGER_LO = np.geomspace(0.2, 10.0, 60)[:-1]
EAGER_HI = np.geomspace(0.2, 10.0, 60)[1:]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEMPLATES = SHARED / "chandra" / "mkacispback"


def depth_of(sigma, strength):
    return strength / (math.sqrt(2.0 * math.pi) * sigma)


def brute_transmission(lo, hi, line_e, sigma, strength, per_sigma=40, cap=4_000_000):
    """Midpoint average of exp(-tau) on a uniform grid across the bin, Sigma/per_sigma or
    finer (at least 2e5 points: O(h^2) error ~1e-13 where the bin cuts the line)."""
    n = int(min(cap, max(200_000, per_sigma * (hi - lo) / sigma)))
    energy = lo + (np.arange(n) + 0.5) * ((hi - lo) / n)
    tau = depth_of(sigma, strength) * np.exp(-0.5 * ((energy - line_e) / sigma) ** 2)
    return float(np.mean(np.exp(-tau)))


def quad_transmission(lo, hi, line_e, sigma, strength):
    depth = depth_of(sigma, strength)
    points = [p for p in (line_e + k * sigma for k in range(-12, 13)) if lo < p < hi]
    value = quad(lambda e: math.exp(-depth * math.exp(-0.5 * ((e - line_e) / sigma) ** 2)),
                 lo, hi, points=points or None, limit=500, epsabs=1e-15, epsrel=1e-13)[0]
    return value / (hi - lo)


def gabs(lo, hi, line_e, sigma, strength, jit=True):
    fn = GABS_JIT if jit else GABS
    return np.asarray(fn(jnp.asarray(lo, dtype=float), jnp.asarray(hi, dtype=float),
                         jnp.asarray(float(line_e)), jnp.asarray(float(sigma)),
                         jnp.asarray(float(strength))))


# (LineE, Sigma, Strength): ordinary lines, lines far narrower than a bin, saturated lines
CASES = [
    (6.7, 0.1, 0.05),                 # weak, broad compared with the bins
    (0.354515, 0.311545, 1.37536),    # VFAINT ccd1 y01: broad and deep (depth 1.8)
    (1.0, 0.01, 1.0),                 # depth 40
    (0.315085, 4.8925e-06, 0.0165275),  # VFAINT ccd7 y01: 2000x narrower than a 10 eV bin
    (0.315085, 5.74851e-06, 11.3046),   # VFAINT ccd7 y08: depth 8e5
    (0.25, 0.0170047, 1.0e6),         # VFAINT ccd2 y31: depth 2.3e7, a saturated trough
    (3.0, 1e-4, 1e6),                 # depth 4e9
]
BINS = [(0.2, 0.3), (0.24, 0.26), (0.31, 0.32), (0.315, 0.316), (0.31508, 0.31509),
        (0.3, 0.4), (0.9, 1.1), (0.995, 1.0), (2.9995, 3.0004), (6.65, 6.75), (6.695, 6.705),
        (0.35, 0.36), (0.5, 5.0)]


@pytest.mark.parametrize("line_e, sigma, strength", CASES)
def test_bin_average_against_independent_references(line_e, sigma, strength):
    lo, hi = np.array(BINS).T
    values = gabs(lo, hi, line_e, sigma, strength)
    brute = np.array([brute_transmission(a, b, line_e, sigma, strength) for a, b in BINS])
    np.testing.assert_allclose(values, brute, rtol=0, atol=1e-9)
    for a, b, v in zip(lo, hi, values):
        if (b - a) / sigma < 1e5:  # quad's own resolution limit
            assert v == pytest.approx(quad_transmission(a, b, line_e, sigma, strength),
                                      abs=1e-10)
    assert np.all((values >= 0) & (values <= 1))


def test_transmission_is_additive_over_sub_bins():
    """Bin widths times transmissions add up when a bin is split (the integral is exact)."""
    line_e, sigma, strength = 0.315085, 5.74851e-06, 11.3046
    edges = np.linspace(0.31, 0.32, 11)
    edges = np.sort(np.r_[edges, line_e, line_e + 3e-6])
    fine = gabs(edges[:-1], edges[1:], line_e, sigma, strength) * np.diff(edges)
    whole = gabs([0.31], [0.32], line_e, sigma, strength)[0] * 0.01
    assert fine.sum() == pytest.approx(whole, rel=1e-13)


def _vfaint_ccd7_gabs():
    """(slice number, LineE, Sigma, Strength) of the 0.315 keV gabs of every VFAINT ccd7
    template file, read with bkgjax's file reader (values checked against the raw text in
    test_xspec_model)."""
    if not TEMPLATES.is_dir():
        pytest.skip(f"mkacispback templates not available: {TEMPLATES} does not exist")
    from bkgjax.missions.acis.template_files import read_slice_models
    from bkgjax.spectral.xspec_terms import XspecTermModel

    rows = []
    for k, parsed in enumerate(read_slice_models(TEMPLATES, 7, "vfaint"), start=1):
        m = XspecTermModel.from_parsed(parsed)
        label = f"gabs_{m.components.index('gabs') + 1}"
        rows.append((k, *(m.parameter(f"{label}.{p}").value
                          for p in ("LineE", "Sigma", "Strength"))))
    return rows


def test_vfaint_ccd7_templates_narrow_gabs_against_brute_force():
    rows = _vfaint_ccd7_gabs()
    assert len(rows) == 32
    lines = [r for r in rows if abs(r[1] - 0.315085) < 1e-6]
    assert len(lines) >= 20 and min(r[2] for r in lines) < 1e-7  # Sigma down to 5e-8 keV
    # the ACIS-like grid of test_acis_templates (5 eV bins) and a 10 eV grid
    for width in (0.005, 0.01):
        lo = np.round(np.arange(0.295, 0.335, width), 6)
        hi = lo + width
        for k, line_e, sigma, strength in lines:
            values = gabs(lo, hi, line_e, sigma, strength)
            brute = np.array([brute_transmission(a, b, line_e, sigma, strength)
                              for a, b in zip(lo, hi)])
            np.testing.assert_allclose(values, brute, rtol=0, atol=1e-6,
                                       err_msg=f"y{k:02d} width {width}")
    # y01 (Strength 0.0165, Sigma 4.9e-6): in a 10 eV bin the line removes ~0.4 %; the old
    # exp(-Strength * fraction / width) removed 81 % (0.19), y08 (Strength 11.3) everything
    y01 = next(r for r in lines if r[0] == 1)
    y08 = next(r for r in lines if r[0] == 8)
    for (_, line_e, sigma, strength), old_expected in ((y01, 0.19), (y08, 0.0)):
        value = gabs([0.31], [0.32], line_e, sigma, strength)[0]
        old = math.exp(-strength / 0.01)  # the whole line inside the bin
        assert old == pytest.approx(old_expected, abs=0.01)
        assert 0.99 < value < 0.9999
        assert value == pytest.approx(brute_transmission(0.31, 0.32, line_e, sigma, strength),
                                      abs=1e-9)


def test_vfaint_ccd7_template_terms_use_the_exact_transmission():
    """The template evaluation (xspec_terms, used by the ACIS library) applies the same
    transmission: the gabs*bknpower term over constant * bknpower is the brute-force
    average in the bins around 0.315 keV."""
    if not TEMPLATES.is_dir():
        pytest.skip(f"mkacispback templates not available: {TEMPLATES} does not exist")
    from bkgjax.missions.acis.template_files import read_slice_models
    from bkgjax.spectral.xspec_terms import XspecTermModel

    lo = np.round(np.arange(0.3, 0.33, 0.005), 6)
    hi = lo + 0.005
    parsed = read_slice_models(TEMPLATES, 7, "vfaint")
    for k in (1, 8):
        m = XspecTermModel.from_parsed(parsed[k - 1])
        g = m.components.index("gabs") + 1
        b = m.components.index("bknpower", g) + 1
        term = dict((label, s) for label, _, s in m.additive_terms(lo, hi))[
            f"constant_1*gabs_{g}*bknpower_{b}"]
        c = m.parameter("constant_1.factor").value
        g1, eb, g2, norm = (m.parameter(f"bknpower_{b}.{p}").value
                            for p in ("PhoIndx1", "BreakE", "PhoIndx2", "norm"))
        assert np.all(hi <= eb)  # below the break: K E^-g1, integrated in closed form
        bkn = norm * (hi ** (1 - g1) - lo ** (1 - g1)) / (1 - g1)
        line = [m.parameter(f"gabs_{g}.{p}").value for p in ("LineE", "Sigma", "Strength")]
        expected = np.array([brute_transmission(a, e, *line) for a, e in zip(lo, hi)])
        np.testing.assert_allclose(np.asarray(term) / (c * bkn), expected, rtol=1e-6)
        assert np.min(expected) > 0.98


def test_sigma_zero_and_no_strength_mean_no_absorption():
    lo, hi = np.array([0.9, 0.99, 1.0, 2.0]), np.array([0.99, 1.0, 1.01, 3.0])
    # XSPEC 12: Sigma = 0 leaves every bin at 1 (the limit of the formula as Sigma -> 0)
    np.testing.assert_array_equal(gabs(lo, hi, 1.0, 0.0, 5.0), 1.0)
    np.testing.assert_array_equal(gabs(EAGER_LO, EAGER_HI, 1.0, 0.0, 5.0, jit=False), 1.0)
    np.testing.assert_array_equal(gabs(lo, hi, 1.0, 0.05, 0.0), 1.0)
    np.testing.assert_array_equal(gabs(lo, hi, 1.0, 1e-300, 1e6), 1.0)
    tiny = gabs(lo, hi, 1.0, 1e-12, 1e6)  # depth 4e17, equivalent width ~2e-11 keV
    assert np.all(tiny > 1 - 1e-8) and np.all(tiny <= 1)
    # Python floats as parameters (eager, not traced) behave like arrays
    eager = np.asarray(GABS(jnp.asarray(EAGER_LO), jnp.asarray(EAGER_HI), 1.0, 0.1, 0.05))
    np.testing.assert_allclose(eager, gabs(EAGER_LO, EAGER_HI, 1.0, 0.1, 0.05), rtol=1e-13)
    i = int(np.argmin(eager))
    assert eager[i] == pytest.approx(quad_transmission(EAGER_LO[i], EAGER_HI[i], 1.0, 0.1, 0.05),
                                     rel=1e-12)


SPECIAL = [  # (LineE, Sigma, Strength): points where a naive form divides by zero or overflows
    (1.0, 0.0, 1.0), (1.0, 0.05, 0.0), (1.0, 0.0, 0.0), (0.99, 0.01, 1.0), (1.0, 1e-7, 1e6),
    (0.315085, 4.8925e-06, 0.0165275), (0.0, 0.01, 1.0), (50.0, 0.5, 1e6),
]


@jax.jit
@jax.value_and_grad
def _total_transmission(params):
    lo, hi = jnp.asarray([0.5, 0.98, 0.99, 1.0, 1.5]), jnp.asarray([0.98, 0.99, 1.0, 1.5, 80.0])
    return jnp.sum(GABS(lo, hi, *params))


@pytest.mark.parametrize("params", SPECIAL)
def test_value_and_gradient_finite_at_special_points(params):
    value, grad = _total_transmission(jnp.asarray(params))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), (params, grad)


@jax.jit
def _one_bin(params, edges):
    return GABS(edges[:1], edges[1:], *params)[0]


_one_bin_gradient = jax.jit(jax.grad(_one_bin))


@pytest.mark.parametrize("params, lo, hi", [
    ((1.0, 0.05, 0.02), 0.95, 1.02),
    ((0.315085, 4.8925e-06, 0.0165275), 0.31, 0.32),
    ((0.25, 0.0170047, 1.0e6), 0.36, 0.37),  # the wing of a saturated trough
])
def test_gradient_matches_finite_differences(params, lo, hi):
    edges = jnp.asarray([lo, hi])
    grad = np.asarray(_one_bin_gradient(jnp.asarray(params), edges))
    for i, p in enumerate(params):
        step = 1e-5 * abs(p)
        up, down = np.array(params), np.array(params)
        up[i] += step
        down[i] -= step
        fd = (float(_one_bin(jnp.asarray(up), edges))
              - float(_one_bin(jnp.asarray(down), edges))) / (2 * step)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-9 / step), (i, grad, fd)


def test_jit_equals_eager_and_vmap_equals_loop():
    lo, hi = jnp.asarray(EAGER_LO), jnp.asarray(EAGER_HI)
    for params in CASES:
        np.testing.assert_allclose(gabs(lo, hi, *params), gabs(lo, hi, *params, jit=False),
                                   rtol=1e-13, atol=1e-15)
    table = jnp.asarray(CASES)
    batched = jax.jit(jax.vmap(lambda p: GABS(lo, hi, *p)))(table)
    for row, params in zip(np.asarray(batched), CASES):
        np.testing.assert_allclose(row, gabs(lo, hi, *params), rtol=1e-13, atol=1e-15)


@pytest.mark.slow
def test_gabs_in_a_model_and_a_fit():
    """gabs*powerlaw from an expression, and a fit of its Strength on simulated counts
    (slow: ~10 s of CPU to compile the fit of a gabs model)."""
    from bkgjax.fit import fit, load, predicted_counts
    from bkgjax.spectrum_cli import demo_spectrum_path

    model = parse_model("gabs*powerlaw").set("LineE", 1.5, frozen=True) \
        .set("Sigma", 0.1, frozen=True).set("Strength", 0.3).set("PhoIndex", 1.7) \
        .set("norm", 1e-2)
    data = load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)
    lo, hi = np.asarray(data.e_lo), np.asarray(data.e_hi)
    pl = parse_model("powerlaw").set("PhoIndex", 1.7).set("norm", 1e-2)
    expected = np.asarray(pl(lo, hi)) * gabs(lo, hi, 1.5, 0.1, 0.3)
    np.testing.assert_allclose(model(lo, hi), expected, rtol=1e-13)
    theta = jnp.asarray(list(model.resolve({}).values()))
    mu = np.asarray(predicted_counts(model.structure, theta, data))
    counts = np.random.default_rng(3).poisson(mu).astype(float)
    result = fit(model.set("Strength", 0.1), data.with_counts(jnp.asarray(counts)), "cstat",
                 errors="covariance")
    assert result.converged
    strength, error = result.values["gabs.Strength"], result.errors["gabs.Strength"]
    assert 0 < error < 0.05 and abs(strength - 0.3) < 4 * error
