"""User model components (additive, multiplicative, convolution): registration and its eager
checks, use in expressions from Python and the command line, jit/grad/vmap, decorator and
``module:attribute`` loading, and no stale compilation after a component is replaced."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bkgjax  # noqa: F401  (64-bit JAX)
from bkgjax.spectral import (
    COMPONENTS,
    ParameterSpec,
    component,
    constant,
    expression_kind,
    gabs,
    list_components,
    load_component,
    parse_expression,
    parse_model,
    powerlaw,
    register_component,
    unregister_component,
    user_component,
)

LO = np.array([1.0, 1.5, 2.5, 3.0, 4.0])
HI = np.array([1.5, 2.5, 3.0, 4.0, 6.0])


#: every test leaves the component registry as it found it (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("clean_component_registry")


# -- the test's components -------------------------------------------------------------------


def box(e_lo, e_hi, E_low, E_high, norm):
    """Box line: norm photons/keV/cm^2/s between E_low and E_high."""
    return norm * jnp.clip(jnp.minimum(e_hi, E_high) - jnp.maximum(e_lo, E_low), 0.0, None)


BOX_PARAMS = [ParameterSpec("E_low", 2.0, "keV", 0.0, 100.0),
              ParameterSpec("E_high", 2.8, "keV", 0.0, 100.0),
              ParameterSpec("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e24)]


def edge(e_lo, e_hi, Edge, Depth):
    """Sharp edge: exp(-Depth) in bins whose centre is above Edge, 1 below."""
    centre = 0.5 * (e_lo + e_hi)
    return jnp.where(centre < Edge, 1.0, jnp.exp(-Depth))


EDGE_PARAMS = [("Edge", 2.6, "keV", 0.1, 100.0), ("Depth", 0.5, "", 0.0, 10.0)]


def spill(e_lo, e_hi, flux, frac):
    """Moves a fraction ``frac`` of each bin's flux into the next bin up (lost off the top)."""
    moved = frac * flux
    return flux - moved + jnp.concatenate([jnp.zeros(1, dtype=flux.dtype), moved[:-1]])


def cscale(e_lo, e_hi, flux, factor):
    """Constant-factor convolution."""
    return factor * flux


def register_all():
    register_component("myline", box, "add", BOX_PARAMS)
    register_component("myedge", edge, "mul", EDGE_PARAMS, "a sharp edge")
    register_component("myconv", spill, "con", [{"name": "frac", "value": 0.25, "min": 0.0,
                                                  "max": 1.0}])
    register_component("cscale", cscale, "con", [("factor", 2.0, "", 0.0, 10.0)])


def pl_integral(index, lo=LO, hi=HI):
    """The built-in powerlaw with norm 1, by hand."""
    if index == 1.0:
        return np.log(hi / lo)
    return (hi ** (1 - index) - lo ** (1 - index)) / (1 - index)


# -- expressions, values, derivatives ---------------------------------------------------------


def test_additive_user_component_with_a_builtin():
    register_all()
    m = parse_model("myline + powerlaw").set("PhoIndex", 2.0).set("myline.norm", 3.0)
    assert m.kind == "add" and str(m) == "myline + powerlaw"
    assert m.names == ("myline.E_low", "myline.E_high", "myline.norm", "powerlaw.PhoIndex",
                       "powerlaw.norm")
    line = 3.0 * np.array([0.0, 0.5, 0.3, 0.0, 0.0])  # overlaps of [2.0, 2.8] with the bins
    expected = line + pl_integral(2.0)
    np.testing.assert_allclose(m(LO, HI), expected, rtol=1e-12)
    # the Python API builds the same model
    same = component("myline", norm=3.0) + powerlaw(PhoIndex=2.0)
    assert same.expr == m.expr and same.values() == m.values()
    assert list_components()["myline"].startswith("Box line")


def test_multiplicative_user_component():
    register_all()
    m = parse_model("myedge*powerlaw").set("PhoIndex", 2.0)
    assert m.kind == "add" and m.names[:2] == ("myedge.Edge", "myedge.Depth")
    factor = np.where(0.5 * (LO + HI) < 2.6, 1.0, np.exp(-0.5))
    np.testing.assert_allclose(m(LO, HI), factor * pl_integral(2.0), rtol=1e-12)
    assert parse_model("myedge*gabs").kind == "mul"
    assert list_components()["myedge"] == "a sharp edge"


def test_convolution_user_component():
    register_all()
    m = parse_model("myconv(powerlaw)").set("PhoIndex", 2.0)
    assert m.kind == "add" and str(m) == "myconv(powerlaw)"
    assert m.names == ("myconv.frac", "powerlaw.PhoIndex", "powerlaw.norm")
    flux = pl_integral(2.0)
    expected = 0.75 * flux + 0.25 * np.concatenate([[0.0], flux[:-1]])
    np.testing.assert_allclose(m(LO, HI), expected, rtol=1e-12)
    # the Python API: a bare convolution component applied to a model
    assert component("myconv")(powerlaw(PhoIndex=2.0)).expr == m.expr
    assert component("myconv").apply(powerlaw()).expr == m.expr
    assert component("myconv").kind == "con"

    # inside products and sums, acting on a product, nested, with clashing labels
    big = parse_model("constant*myconv(myedge*powerlaw) + cscale(powerlaw)")
    assert str(big) == "constant * myconv(myedge * powerlaw) + cscale(powerlaw_2)"
    assert big.kind == "add"
    values = {"constant.factor": 2.0, "powerlaw.PhoIndex": 2.0, "powerlaw_2.PhoIndex": 2.0,
              "cscale.factor": 3.0}
    edged = np.where(0.5 * (LO + HI) < 2.6, 1.0, np.exp(-0.5)) * flux
    spilled = 0.75 * edged + 0.25 * np.concatenate([[0.0], edged[:-1]])
    np.testing.assert_allclose(big.evaluate(values, LO, HI), 2.0 * spilled + 3.0 * flux,
                               rtol=1e-12)
    nested = parse_model("myconv(myconv(powerlaw))")
    assert str(nested) == "myconv(myconv_2(powerlaw))"
    assert nested.names[:2] == ("myconv.frac", "myconv_2.frac")
    once = component("myconv")(powerlaw())
    np.testing.assert_allclose(nested(LO, HI), np.asarray(
        spill(LO, HI, jnp.asarray(once(LO, HI)), 0.25)), rtol=1e-12)

    # the convolution of a multiplicative expression is multiplicative
    assert parse_model("cscale(gabs)").kind == "mul"
    assert component("cscale")(gabs()).kind == "mul"
    tree, names = parse_expression("cscale(myline)*gabs + powerlaw")
    assert names == ("cscale", "myline", "gabs", "powerlaw")
    assert tree == ("+", ("*", ("conv", ("comp", "cscale", 0), ("comp", "myline", 1)),
                          ("comp", "gabs", 2)),
                    ("comp", "powerlaw", 3))
    assert expression_kind(tree) == "add"
    # a linked convolution parameter follows its target
    linked = parse_model("cscale(powerlaw) + cscale(powerlaw)").set(
        "cscale_2.factor", link="cscale.factor")
    np.testing.assert_allclose(linked.evaluate({"cscale.factor": 5.0}, LO, HI),
                               10.0 * pl_integral(1.0), rtol=1e-12)


def test_user_components_under_jit_grad_and_vmap():
    register_all()
    m = parse_model("myedge*myconv(myline + powerlaw) + cscale(powerlaw)")
    e_lo, e_hi = jnp.asarray(LO), jnp.asarray(HI)
    values = m.values()
    eager = np.asarray(m.evaluate(values, e_lo, e_hi))
    jitted = jax.jit(lambda v: m.evaluate(v, e_lo, e_hi))(values)
    np.testing.assert_allclose(jitted, eager, rtol=1e-13)
    grads = jax.grad(lambda v: m.evaluate(v, e_lo, e_hi).sum())(values)
    assert set(grads) == set(m.names)
    assert all(np.isfinite(float(g)) for g in grads.values())
    # d/d(cscale.factor) of sum(factor * powerlaw) = sum(powerlaw)
    np.testing.assert_allclose(float(grads["cscale.factor"]), pl_integral(1.0).sum(), rtol=1e-12)
    # d/d(myline.norm): the box overlaps, spilled, then edged (bin centres above 2.6 keV)
    overlap = np.array([0.0, 0.5, 0.3, 0.0, 0.0])
    spilled = 0.75 * overlap + 0.25 * np.concatenate([[0.0], overlap[:-1]])
    edged = np.where(0.5 * (LO + HI) < 2.6, 1.0, np.exp(-0.5)) * spilled
    np.testing.assert_allclose(float(grads["myline.norm"]), edged.sum(), rtol=1e-12)
    # vmap over parameter values (through the jit-static structure, as the fits do)
    structure = m.structure
    theta = jnp.asarray(list(values.values()))
    batch = jnp.stack([theta, theta.at[m.names.index("cscale.factor")].set(4.0)])
    out = jax.vmap(lambda t: structure.evaluate(t, e_lo, e_hi))(batch)
    np.testing.assert_allclose(out[0], eager, rtol=1e-13)
    np.testing.assert_allclose(out[1] - out[0], 2.0 * pl_integral(1.0), rtol=1e-10)
    hash(structure)


def test_fit_with_user_components():
    from bkgjax.fit import SpectralData, fit

    register_all()
    e_edges = np.geomspace(0.5, 10.0, 41)
    lo, hi = e_edges[:-1], e_edges[1:]
    truth = parse_model("myconv(myline + powerlaw)").with_values(
        {"myline.norm": 40.0, "PhoIndex": 1.7, "powerlaw.norm": 30.0, "frac": 0.3})
    matrix = np.eye(lo.size) * 100.0  # cm^2
    counts = np.round(np.asarray(truth(lo, hi)) * 100.0 * 10.0)  # no noise: 10 s exposure
    data = SpectralData.from_arrays(counts, 10.0, matrix, lo, hi)
    start = truth.set("myline.E_low", frozen=True).set("myline.E_high", frozen=True).with_values(
        {"myline.norm": 10.0, "PhoIndex": 2.0, "powerlaw.norm": 10.0, "frac": 0.5})
    result = fit(start, data, "cstat", errors="covariance")
    assert result.converged
    np.testing.assert_allclose(result.values["powerlaw.PhoIndex"], 1.7, atol=0.02)
    np.testing.assert_allclose(result.values["myconv.frac"], 0.3, atol=0.03)
    np.testing.assert_allclose(result.values["myline.norm"], 40.0, rtol=0.1)


# -- no stale compilation after replace=True ----------------------------------------------------


def test_replacing_a_component_recompiles():
    def flat(e_lo, e_hi, norm):
        return norm * (e_hi - e_lo)

    def double(e_lo, e_hi, norm):
        return 2.0 * norm * (e_hi - e_lo)

    first = register_component("flat", flat, "add", [("norm", 1.0)])
    m = parse_model("flat")
    calls = []

    @partial(jax.jit, static_argnames=("structure",))
    def evaluate(theta, structure):
        calls.append(structure)
        return structure.evaluate(theta, jnp.asarray(LO), jnp.asarray(HI))

    by_model = jax.jit(lambda model: model(LO, HI))  # a Model as a pytree argument
    s1 = m.structure
    np.testing.assert_allclose(evaluate(jnp.ones(1), structure=s1), HI - LO)
    np.testing.assert_allclose(by_model(m), HI - LO)
    second = register_component("flat", double, "add", [("norm", 1.0)], replace=True)
    assert second.version != first.version
    s2 = m.structure
    assert s2 != s1 and s2.expr == s1.expr and hash(s2) != hash(s1)
    np.testing.assert_allclose(evaluate(jnp.ones(1), structure=s2), 2 * (HI - LO))
    np.testing.assert_allclose(by_model(m), 2 * (HI - LO))
    assert len(calls) == 2
    # built-in-only structures carry no registrations (unchanged keys)
    assert powerlaw().structure.versions == ()


def test_replacing_and_restoring_a_builtin():
    original = COMPONENTS["powerlaw"]

    def flat_pl(e_lo, e_hi, PhoIndex, norm):
        return norm * (e_hi - e_lo)

    with pytest.raises(ValueError, match="clashes with the built-in component 'powerlaw'"):
        register_component("powerlaw", flat_pl, "add", [("PhoIndex", 1.0), ("norm", 1.0)])
    with pytest.raises(ValueError, match="clashes with the built-in component 'powerlaw'"):
        register_component("PowerLaw", flat_pl, "add", [("PhoIndex", 1.0), ("norm", 1.0)])
    register_component("powerlaw", flat_pl, "add", [("PhoIndex", 1.0), ("norm", 1.0)],
                       replace=True)
    np.testing.assert_allclose(powerlaw()(LO, HI), HI - LO)
    unregister_component("powerlaw")
    assert COMPONENTS["powerlaw"] is original
    with pytest.raises(ValueError, match="built-in component and cannot be unregistered"):
        unregister_component("powerlaw")
    with pytest.raises(ValueError, match="no component 'nothing' is registered"):
        unregister_component("nothing")


# -- decorator, module:attribute, environment variable, command line --------------------------

HELPER = '''
import jax.numpy as jnp
from bkgjax.spectral import ComponentSpec, ParameterSpec, user_component


@user_component(kind="add", parameters=[ParameterSpec("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e10)])
def {name}(e_lo, e_hi, norm):
    """Flat photon spectrum (helper module)."""
    return norm * (e_hi - e_lo)


def _halve(e_lo, e_hi, flux, factor):
    return factor * flux


HALF = ComponentSpec("{name}_half", "con", (ParameterSpec("factor", 0.5, "", 0.0, 1.0),),
                     _halve, "halves the flux")
NOT_A_COMPONENT = 3
'''


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """A module on sys.path (tmp_path) defining a decorated component and a ComponentSpec."""
    module = f"bkgjax_test_helper_{uuid.uuid4().hex[:8]}"
    name = f"flat_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(HELPER.format(name=name)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module, name
    sys.modules.pop(module, None)


def test_load_decorated_component_and_spec(helper):
    module, name = helper
    assert name not in COMPONENTS
    assert load_component(f"{module}:{name}") == name  # registered on import
    assert load_component(f"{module}:{name}") == name  # again: a no-op
    fn = getattr(sys.modules[module], name)
    assert COMPONENTS[name].function is fn and fn.__bkgjax_component__.kind == "add"
    m = parse_model(f"{name} + powerlaw").set(f"{name}.norm", 2.0)
    np.testing.assert_allclose(m(LO, HI), 2.0 * (HI - LO) + pl_integral(1.0), rtol=1e-12)
    # unregistered since: load_component registers the decorated function again
    unregister_component(name)
    assert load_component(f"{module}:{name}") == name and COMPONENTS[name].function is fn
    # a ComponentSpec attribute
    assert load_component(f"{module}:HALF") == f"{name}_half"
    assert load_component(f"{module}:HALF") == f"{name}_half"
    half = parse_model(f"{name}_half({name})")
    np.testing.assert_allclose(half(LO, HI), 0.5 * (HI - LO), rtol=1e-12)
    # a file path works too (imported once per path)
    path = sys.modules[module].__file__
    unregister_component(f"{name}_half")
    assert load_component(f"{path}:HALF") == f"{name}_half"


def test_decorator_in_a_script_and_its_errors():
    @user_component(kind="mul", parameters=[("Depth", 0.5, "", 0.0, 10.0)])
    def drop(e_lo, e_hi, Depth):
        return jnp.exp(-Depth * jnp.ones_like(e_lo))

    assert "drop" in COMPONENTS and drop.__bkgjax_component__.name == "drop"
    np.testing.assert_allclose(parse_model("drop*powerlaw")(LO, HI),
                               np.exp(-0.5) * pl_integral(1.0), rtol=1e-12)
    with pytest.raises(ValueError, match="component 'drop2'.*takes 3 positional"):
        @user_component(kind="mul", parameters=[("Depth", 0.5)], name="drop2")
        def too_many(e_lo, e_hi, Depth, other):
            return e_lo

    with pytest.raises(ValueError, match="clashes with the registered component 'drop'"):
        user_component(lambda e_lo, e_hi: jnp.ones_like(e_lo), kind="mul", parameters=[],
                       name="drop")


def test_environment_variable_and_command_line(helper, monkeypatch, tmp_path, capsys):
    from bkgjax.cli import demo_spectrum_path, main

    module, name = helper
    monkeypatch.setenv("BKGJAX_COMPONENTS", f"{module}:{name}, {module}:HALF")
    assert parse_model(f"{name}_half(powerlaw)").kind == "add"  # loaded on first look-up
    out = tmp_path / "fit.json"
    # the user's convolution and additive components in --model
    code = main(["fit-spectrum", demo_spectrum_path(), "--model", f"{name}_half(powerlaw)",
                 "--freeze", f"{name}_half.factor=0.5", "--erange", "0.5", "7",
                 "--no-background", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "PhoIndex" in json.loads(out.read_text())["params"]
    # XSPEC's conv*expr form is conv(expr) (issue 20); a bare convolution is an error
    assert main(["fit-spectrum", demo_spectrum_path(), "--model", f"{name}_half + powerlaw"]) == 2
    assert f"convolution component '{name}_half' must be followed" in capsys.readouterr().err
    monkeypatch.setenv("BKGJAX_COMPONENTS", f"{module}:NOPE")
    with pytest.raises(ValueError, match=rf"BKGJAX_COMPONENTS.*{module}:NOPE.*no attribute"):
        parse_model("powerlaw")


# -- validation errors ------------------------------------------------------------------------


def flat2(e_lo, e_hi, a, b):
    return a * b * (e_hi - e_lo)


def raises(e_lo, e_hi, a, b):
    raise RuntimeError("boom")


def not_traceable(e_lo, e_hi, a, b):
    if a > 0.5:  # Python branch on a parameter
        return a * (e_hi - e_lo)
    return b * (e_hi - e_lo)


TWO = [("a", 1.0), ("b", 1.0)]


@pytest.mark.parametrize("args, kwargs, message", [
    (("bad", flat2, "sum", TWO), {}, r"component 'bad': kind 'sum' is not one of 'add'"),
    (("my-line", flat2, "add", TWO), {}, r"component name 'my-line' is not a valid name"),
    (("2line", flat2, "add", TWO), {}, r"component name '2line' is not a valid name"),
    (("lambda", flat2, "add", TWO), {}, r"component name 'lambda' is not a valid name"),
    (("bad", 3.0, "add", TWO), {}, r"component 'bad': function 3.0 is not callable"),
    (("bad", flat2, "add", [("a", 1.0), ("a", 2.0)]), {},
     r"component 'bad': duplicate parameter name\(s\) \['a'\]"),
    (("bad", flat2, "add", [("a", 1.0), ("b-c", 2.0)]), {},
     r"component 'bad', parameter 2: parameter name 'b-c' is not a valid name"),
    (("bad", flat2, "add", [("a", 20.0, "", 0.0, 10.0), ("b", 1.0)]), {},
     r"component 'bad', parameter 1: parameter a: default value 20 outside its limits"),
    (("bad", flat2, "add", [("a", 1.0, "", 5.0, 0.0), ("b", 1.0)]), {},
     r"component 'bad', parameter 1: parameter a: min=5 must be < max=0"),
    (("bad", flat2, "add", [("a", 1.0), 7]), {},
     r"component 'bad', parameter 2: expected a ParameterSpec"),
    (("bad", flat2, "add", "ab"), {}, r"component 'bad': parameters must be a sequence"),
    (("bad", flat2, "add", [("a", 1.0)]), {},
     r"component 'bad': its function\(e_lo, e_hi, a, b\) cannot be called as f\(e_lo, e_hi, a\)"),
    (("bad", flat2, "add", TWO + [("c", 1.0)]), {}, r"component 'bad': .*cannot be called"),
    (("bad", flat2, "con", TWO), {},
     r"component 'bad': .*cannot be called as f\(e_lo, e_hi, flux, a, b\): a convolution"),
    (("bad", lambda e_lo, e_hi, a, b: a * jnp.log(e_lo - 1.0), "add", TWO), {},
     r"component 'bad': trial evaluation .* non-finite values \(NaN or inf\)"),
    (("bad", lambda e_lo, e_hi, a, b: jnp.zeros(3), "mul", TWO), {},
     r"component 'bad': trial evaluation .* shape \(3,\); expected \(8,\)"),
    (("bad", lambda e_lo, e_hi, a, b: a, "mul", TWO), {},
     r"component 'bad': trial evaluation .* shape \(\); expected \(8,\)"),
    (("bad", raises, "add", TWO), {}, r"component 'bad': trial evaluation .* raised RuntimeError: boom"),
    (("bad", lambda e_lo, e_hi, flux, a, b: flux[:-1], "con", TWO), {},
     r"component 'bad': trial evaluation .* shape \(7,\)"),
    (("bad", not_traceable, "add", TWO), {}, r"component 'bad': its function cannot be traced by JAX"),
])
def test_registration_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        register_component(*args, **kwargs)
    assert "bad" not in COMPONENTS


def test_duplicate_names_are_refused():
    register_component("flatty", flat2, "add", TWO)
    with pytest.raises(ValueError, match="component 'flatty' clashes with the registered "
                                         "component 'flatty'.*replace=True"):
        register_component("flatty", flat2, "add", TWO)
    with pytest.raises(ValueError, match="component 'FLATTY' clashes"):
        register_component("FLATTY", flat2, "add", TWO)
    with pytest.raises(ValueError, match="differs only in case"):
        register_component("FLATTY", flat2, "add", TWO, replace=True)
    with pytest.raises(ValueError, match="clashes with the built-in component 'gaussian'"):
        register_component("Gaussian", flat2, "add", TWO)
    # parse names case-insensitively, like the built-ins
    assert parse_model("FlAtTy").names == ("flatty.a", "flatty.b")


@pytest.mark.parametrize("target, message", [
    ("nosuchmodule_bkgjax_xyz:thing",
     r"load_component\('nosuchmodule_bkgjax_xyz:thing'\): importing 'nosuchmodule_bkgjax_xyz' "
     r"failed: ModuleNotFoundError"),
    ("json:no_such_attribute",
     r"load_component\('json:no_such_attribute'\): module 'json' has no attribute"),
    ("json:dumps", r"load_component\('json:dumps'\): 'dumps' is a function, neither a "
                   r"ComponentSpec nor a function decorated"),
    ("json", r"load_component\('json'\): expected 'module:attribute'"),
    ("json:", r"load_component\('json:'\): expected 'module:attribute'"),
    ("/no/such/file.py:thing", r"load_component\('/no/such/file.py:thing'\): importing .* "
                               r"FileNotFoundError"),
])
def test_load_component_errors(target, message):
    with pytest.raises(ValueError, match=message):
        load_component(target)


def test_load_component_registration_error_names_the_target(helper):
    module, name = helper
    # a different function already holds the name: the decorator's registration fails on import
    register_component(name, flat2, "add", TWO)
    with pytest.raises(ValueError, match=rf"load_component\('{module}:{name}'\): importing "
                                         rf"'{module}' failed: ValueError: component '{name}' "
                                         "clashes"):
        load_component(f"{module}:{name}")
    unregister_component(name)
    load_component(f"{module}:HALF")
    spec = COMPONENTS[f"{name}_half"]
    unregister_component(f"{name}_half")
    register_component(f"{name}_half", cscale, "con", [("factor", 2.0, "", 0.0, 10.0)])
    with pytest.raises(ValueError, match=rf"load_component\('{module}:HALF'\): component "
                                         rf"'{name}_half' clashes"):
        load_component(f"{module}:HALF")
    assert load_component(f"{module}:HALF", replace=True) == spec.name


def test_convolution_without_parentheses_and_misuse():
    register_all()
    # XSPEC's form, a convolution followed by "*", acts on the rest of its term (issue 20)
    assert parse_expression("cscale*powerlaw") == parse_expression("cscale(powerlaw)")
    for text in ("cscale*", "cscale", "cscale + powerlaw", "powerlaw*cscale",
                 "constant*cscale"):
        with pytest.raises(ValueError, match="convolution component 'cscale' must be followed "
                                             r"by a parenthesised expression.*cscale\(powerlaw\)"):
            parse_model(text)
        with pytest.raises(ValueError, match="convolution component 'cscale' must be followed"):
            parse_expression(text)
    with pytest.raises(ValueError, match="convolution component 'cscale' must be followed"):
        component("cscale") + powerlaw()
    with pytest.raises(ValueError, match="convolution component 'cscale' must be followed"):
        constant() * component("cscale")
    with pytest.raises(ValueError, match="convolution component 'cscale' must be followed"):
        component("cscale")(LO, HI)
    with pytest.raises(ValueError, match="convolution component 'cscale' must be followed"):
        component("cscale")(component("cscale"))
    with pytest.raises(ValueError, match="not a convolution component"):
        powerlaw()(gabs())
    with pytest.raises(ValueError, match="missing '\\)'"):
        parse_model("cscale(powerlaw")
    with pytest.raises(ValueError, match="cannot add additive and multiplicative"):
        parse_model("cscale(gabs) + powerlaw")
    with pytest.raises(ValueError, match="cannot multiply two additive"):
        parse_model("cscale(powerlaw)*powerlaw")


def test_unregistered_component_in_a_built_model():
    register_all()
    m = parse_model("myline + powerlaw")
    unregister_component("myline")
    with pytest.raises(ValueError, match="'myline' is not registered"):
        _ = m.structure
    with pytest.raises(ValueError, match="unknown model component 'myline'"):
        parse_model("myline")


def test_parameter_spec_public_defaults():
    p = ParameterSpec("x", 1)
    assert (p.unit, p.min, p.max, p.frozen) == ("", -np.inf, np.inf, False)
    assert isinstance(p.value, float)
    with pytest.raises(ValueError, match="value is NaN"):
        ParameterSpec("x", float("nan"))
