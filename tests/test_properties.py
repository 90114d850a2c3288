"""Property-based tests (hypothesis) of the fit statistics and the spectral components.

Statistics (bkgjax.stats.likelihoods): finite values and gradients at zero counts and at tiny
or huge model values; cstat >= 0 with equality at model == data; wstat equal to the joint
Poisson statistic at the closed-form profiled background, computed here in 50-digit decimal
arithmetic.  Components (every entry of bkgjax.spectral.components.COMPONENTS): finite,
non-negative bin values for random valid parameters, jit equal to eager evaluation, and
additivity over bin splitting for the additive ones.

Every jitted function is built once at import and called with fixed shapes, so each compiles
once for the whole module.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import bkgjax  # noqa: F401  (float64)
from bkgjax.spectral.components import COMPONENTS
from bkgjax.stats.likelihoods import cash, chi2_gehrels, cstat, poisson_loglike, wstat

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

# ----------------------------------------------------------------------------------------------
# statistics

STATISTICS = {"cash": cash, "cstat": cstat, "chi2_gehrels": chi2_gehrels,
              "poisson_loglike": poisson_loglike}
VALUE_AND_GRAD = {name: jax.jit(jax.value_and_grad(fn)) for name, fn in STATISTICS.items()}
WSTAT_VALUE_AND_GRAD = jax.jit(jax.value_and_grad(wstat))
CSTAT = jax.jit(cstat)

counts = st.integers(min_value=0, max_value=10**6).map(float)
log_uniform = st.floats(min_value=-300.0, max_value=300.0).map(lambda x: 10.0**x)


def _finite(value, grad):
    return math.isfinite(float(value)) and math.isfinite(float(grad))


@SETTINGS
@given(data=counts, model=log_uniform)
def test_statistics_finite_for_tiny_and_huge_models(data, model):
    for name, value_and_grad in VALUE_AND_GRAD.items():
        if name == "chi2_gehrels" and model > 1e150:  # (D - M)^2 itself overflows float64
            continue
        value, grad = value_and_grad(model, data)
        assert _finite(value, grad), (name, data, model, value, grad)


@SETTINGS
@given(model=st.one_of(st.just(0.0), log_uniform))
def test_statistics_finite_with_zero_counts(model):
    for name, value_and_grad in VALUE_AND_GRAD.items():
        if name == "chi2_gehrels" and model > 1e150:
            continue
        value, grad = value_and_grad(model, 0.0)
        assert _finite(value, grad), (name, model, value, grad)
    # D = 0: cash and cstat are 2M (gradient 2), including M = 0
    for fn in (cash, cstat):
        value, grad = VALUE_AND_GRAD[fn.__name__](model, 0.0)
        assert float(value) == pytest.approx(2.0 * model, rel=1e-15) and float(grad) == 2.0


@SETTINGS
@given(data=counts, model=log_uniform)
def test_cstat_non_negative_and_zero_at_the_data(data, model):
    value = float(CSTAT(model, data))
    # rounding of its terms (M, D, D ln D, D ln M) is the only way below zero
    scale = model + data + data * (abs(math.log(max(data, 1.0))) + abs(math.log(model)))
    assert value >= -1e-13 * scale, (data, model, value)
    assert float(CSTAT(data, data)) == 0.0


def _wstat_reference(mu, s, b, r):
    """W at the profiled background, from the quadratic's positive root (50 digits)."""
    with localcontext() as ctx:
        ctx.prec = 50
        mu, s, b, r = (Decimal(repr(float(x))) for x in (mu, s, b, r))
        c = (1 + r) * mu - s - b
        g = (-c + (c * c + 4 * (1 + r) * b * mu).sqrt()) / (2 * (1 + r))  # bkg in src region
        w = mu + g + r * g
        if s > 0:
            w += -s * (mu + g).ln() - s + s * s.ln()
        if b > 0:
            w += -b * (r * g).ln() - b + b * b.ln()
        return float(2 * w)


@SETTINGS
@given(mu=st.one_of(st.just(0.0), st.floats(min_value=-6.0, max_value=4.0).map(lambda x: 10.0**x)),
       s=st.integers(min_value=0, max_value=10**4).map(float),
       b=st.integers(min_value=0, max_value=10**4).map(float),
       r=st.floats(min_value=-3.0, max_value=3.0).map(lambda x: 10.0**x))
def test_wstat_equals_its_closed_form_profile(mu, s, b, r):
    assume(mu > 0 or s == 0)  # mu = 0 with source counts is fine only through the background
    value, grad = WSTAT_VALUE_AND_GRAD(mu, s, b, r)
    assert _finite(value, grad), (mu, s, b, r, value, grad)
    expected = _wstat_reference(mu, s, b, r)
    # float64 rounding of the terms S ln S, B ln B, ... that cancel in W
    scale = 1.0 + mu + (s + b) * (1.0 + math.log1p(s + b) + abs(math.log(r)))
    assert float(value) == pytest.approx(expected, rel=1e-9, abs=1e-12 * scale), (mu, s, b, r)


# ----------------------------------------------------------------------------------------------
# spectral components

N_BINS = 24
# convolutions act on another expression's values: tests/test_convolutions.py
COMPONENT_NAMES = sorted(name for name, spec in COMPONENTS.items() if spec.kind != "con")
JITTED = {name: jax.jit(spec.function) for name, spec in COMPONENTS.items()}


@st.composite
def grids(draw):
    """N_BINS contiguous bins from 0.1-20 keV on, each 0.1 % to 30 % wide (the quadrature
    components are accurate for bins narrower than a factor ~2 in energy)."""
    start = draw(st.floats(min_value=-1.0, max_value=math.log10(20.0)))
    ratios = draw(st.lists(st.floats(min_value=1e-3, max_value=0.3), min_size=N_BINS,
                           max_size=N_BINS))
    edges = 10.0**start * np.cumprod(np.r_[1.0, 1.0 + np.asarray(ratios)])
    fraction = draw(st.floats(min_value=0.05, max_value=0.95))
    return edges, fraction


def _parameter_strategy(default):
    """Values inside the component's limits, over the ranges spectral fits use."""
    if default.name == "norm":
        return st.one_of(st.just(0.0), st.floats(min_value=-12.0, max_value=12.0)
                         .map(lambda x: 10.0**x)).filter(lambda v: default.min <= v <= default.max)
    if default.unit == "keV" or default.name in ("factor", "Strength"):
        lo, hi = max(default.min, 0.0), min(default.max, 200.0)
        if default.name not in ("Sigma", "factor", "Strength"):
            lo = max(lo, 0.05)  # line and break energies, cut-off and folding energies
        return st.floats(min_value=lo, max_value=hi)
    return st.floats(min_value=max(default.min, -3.0), max_value=min(default.max, 10.0))


def parameters(name):
    return st.tuples(*[_parameter_strategy(d) for d in COMPONENTS[name].params])


def _evaluate(name, lo, hi, params, jit=True):
    fn = JITTED[name] if jit else COMPONENTS[name].function
    return np.asarray(fn(jnp.asarray(lo), jnp.asarray(hi), *[jnp.asarray(p) for p in params]))


def _check_component(name, grid, params):
    spec = COMPONENTS[name]
    edges, fraction = grid
    lo, hi = edges[:-1], edges[1:]
    values = _evaluate(name, lo, hi, params)
    assert values.shape == (N_BINS,)
    assert np.all(np.isfinite(values)) and np.all(values >= 0), (name, params, values)
    if spec.kind == "mul" and name == "gabs":
        assert np.all(values <= 1.0)
    # jit == eager (op by op): XLA may fuse and contract differently, so equal to rounding,
    # which far-tail bins of the Gaussian-based components (differences of erfc's) amplify
    eager = _evaluate(name, lo, hi, params, jit=False)
    np.testing.assert_allclose(values, eager, rtol=1e-9, atol=1e-300, err_msg=name)
    if spec.kind != "add":
        return
    # additivity: each bin split at ``fraction`` of its width sums back to the bin
    mid = lo + fraction * (hi - lo)
    fine_lo = np.stack([lo, mid], axis=1).ravel()
    fine_hi = np.stack([mid, hi], axis=1).ravel()
    if name == "fsline":
        # the bin integral is a plain box when Sigma < 0.1 bin width (a different, coarser
        # form): compare only grids on which both resolutions use the same form
        sigma = params[0]
        assume(sigma >= 0.1 * np.max(hi - lo) or sigma < 0.1 * np.min(fine_hi - fine_lo))
    fine = _evaluate(name, fine_lo, fine_hi, params).reshape(N_BINS, 2).sum(axis=1)
    np.testing.assert_allclose(fine, values, rtol=1e-9, atol=1e-12 * values.max(), err_msg=name)


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_component_properties(name):
    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(grid=grids(), params=parameters(name))
    def check(grid, params):
        _check_component(name, grid, params)

    check()
