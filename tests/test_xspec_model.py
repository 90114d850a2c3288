"""XSPEC model files: the reader (bkgjax.io.xspec_model), their evaluation
(bkgjax.spectral.xspec_terms) and the component formulas it uses.

References are independent of the code under test: scipy.integrate.quad of the analytic
densities (XSPEC model definitions; fsline as in ../shared/data/README.md), closed forms with
scipy.stats.norm, and the raw text of the mkacispback template files.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.stats import norm as normal

import bkgjax  # noqa: F401  (float64)
from bkgjax.io.errors import BkgjaxIOError, MissingFileError
from bkgjax.io.xspec_model import XspecModel, parse_xspec_model, read_xspec_model
from bkgjax.spectral.components import COMPONENTS
from bkgjax.spectral.xspec_terms import XspecTermModel

RTOL = 1e-6  # acceptance tolerance against numerical integration

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEMPLATES = SHARED / "chandra" / "mkacispback"


def load(path) -> XspecTermModel:
    """Read a model file and make it evaluable."""
    return XspecTermModel.from_parsed(read_xspec_model(path))


def template_files():
    if not TEMPLATES.is_dir():
        pytest.skip(f"mkacispback templates not available: {TEMPLATES} does not exist")
    files = sorted(TEMPLATES.glob("template_models_*/template-ccd*/*.mo"))
    assert files, f"no .mo files under {TEMPLATES}"
    return files


def quad_bins(density, lo, hi, points=()):
    out = []
    for a, b in zip(lo, hi):
        inside = [p for p in points if a < p < b]
        out.append(quad(density, a, b, epsabs=0.0, epsrel=1e-12, limit=400,
                        points=inside or None)[0])
    return np.array(out)


def component(name, lo, hi, *params):
    return np.asarray(COMPONENTS[name].function(jnp.asarray(lo), jnp.asarray(hi),
                                                *[jnp.asarray(float(p)) for p in params]))


# ----------------------------------------------------------------------------------------------
# component formulas against numerical integration


def test_gaussian_normalised_to_total_photons_and_delta_line():
    line_e, sigma, k = 6.4, 0.05, 2e-3
    lo = np.linspace(6.0, 6.8, 81)[:-1]
    hi = lo + (lo[1] - lo[0])
    def dens(e):
        return k * math.exp(-0.5 * ((e - line_e) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))

    np.testing.assert_allclose(component("gaussian", lo, hi, line_e, sigma, k),
                               quad_bins(dens, lo, hi), rtol=RTOL)
    wide = np.linspace(0.1, 20.0, 2001)
    total = component("gaussian", wide[:-1], wide[1:], line_e, sigma, k).sum()
    assert total == pytest.approx(k, rel=1e-12)
    # Sigma = 0: all photons in the bin holding LineE
    delta = component("gaussian", lo, hi, line_e, 0.0, k)
    holder = np.flatnonzero((lo <= line_e) & (line_e < hi))
    assert holder.size == 1 and delta[holder[0]] == pytest.approx(k, rel=1e-15)
    assert np.count_nonzero(delta) == 1


def test_powerlaw_and_expdec_against_quad():
    lo = np.geomspace(0.3, 11.0, 61)[:-1]
    hi = np.geomspace(0.3, 11.0, 61)[1:]
    for index in (0.62, 1.0, 2.3):
        np.testing.assert_allclose(component("powerlaw", lo, hi, index, 0.015),
                                   quad_bins(lambda e, i=index: 0.015 * e ** -i, lo, hi),
                                   rtol=RTOL)
    for factor in (0.0, 1.63784, 5.0):
        np.testing.assert_allclose(component("expdec", lo, hi, factor, 0.0219),
                                   quad_bins(lambda e, f=factor: 0.0219 * math.exp(-f * e), lo, hi),
                                   rtol=RTOL)


def test_bknpower_against_quad_and_continuous_at_break():
    g1, eb, g2, k = 0.62758, 3.00015, -0.885571, 0.0150215  # ccd0 FAINT y01 values
    lo = np.linspace(0.5, 11.0, 43)[:-1]
    hi = lo + (lo[1] - lo[0])
    assert np.any((lo < eb) & (eb < hi)), "one bin must straddle the break"

    def dens(e):
        return k * e ** -g1 if e <= eb else k * eb ** (g2 - g1) * e ** -g2

    np.testing.assert_allclose(component("bknpower", lo, hi, g1, eb, g2, k),
                               quad_bins(dens, lo, hi, points=(eb,)), rtol=RTOL)
    # continuity: mean density in tiny bins just below and above the break
    d = 1e-7
    below = component("bknpower", np.array([eb - d]), np.array([eb]), g1, eb, g2, k)[0] / d
    above = component("bknpower", np.array([eb]), np.array([eb + d]), g1, eb, g2, k)[0] / d
    assert below == pytest.approx(k * eb ** -g1, rel=1e-6)
    assert above == pytest.approx(below, rel=1e-6)


def test_gabs_bin_averaged_transmission_convention():
    """gabs(E) = exp(-(S/(sqrt(2 pi) sigma)) exp(-(E-E_l)^2/(2 sigma^2))), averaged over each
    bin (XSPEC 12's gaussianAbsorptionLine: the bin average of exp(-tau), not exp of the
    bin-averaged tau, which was bkgjax's convention before issue 20)."""
    line_e, sigma, strength = 0.354515, 0.311545, 1.37536  # vfaint ccd1 y01
    depth = strength / (math.sqrt(2 * math.pi) * sigma)

    def tau(e):
        return depth * math.exp(-0.5 * ((e - line_e) / sigma) ** 2)

    lo = np.linspace(0.2, 2.0, 37)[:-1]
    hi = lo + (lo[1] - lo[0])
    expected = quad_bins(lambda e: math.exp(-tau(e)), lo, hi) / (hi - lo)
    values = component("gabs", lo, hi, line_e, sigma, strength)
    np.testing.assert_allclose(values, expected, rtol=RTOL)
    # the old exp(-<tau>) differs by up to ~1e-3 in these 0.05 keV bins: the convention matters
    old = np.exp(-quad_bins(tau, lo, hi) / (hi - lo))
    assert np.max(np.abs(values / old - 1)) > 1e-4
    # depth at the centre: a tiny bin at LineE
    tiny = component("gabs", np.array([line_e - 1e-7]), np.array([line_e + 1e-7]),
                     line_e, sigma, strength)[0]
    assert tiny == pytest.approx(math.exp(-tau(line_e)), rel=1e-9)


def fsline_reference_density(e, sigma, e_low, e_high, k):
    """../shared/data/README.md, written independently of bkgjax.spectral.components."""
    tails = (math.exp(-(e - e_low) ** 2 / (2 * sigma ** 2))
             + math.exp(-(e - e_high) ** 2 / (2 * sigma ** 2)))
    if e_high == e_low:
        core = 0.0  # zero-width flat top: 1000^(1-u^2) -> 0 for E != E_low
    else:
        u = (e - 0.5 * (e_low + e_high)) / (0.5 * (e_high - e_low))
        core = 1000.0 ** (1.0 - u * u) if u * u < 100 else 0.0
    return k * min(1.0, tails + core)


@pytest.mark.parametrize("sigma,e_low,e_high,k", [
    (0.05, 1.6, 1.9, 0.2),      # broad flat top
    (0.02, 2.50853, 2.80625, 0.0109215),  # paper Table 6 Au-M frame-store line
    (0.004, 9.0, 9.02, 0.5),    # top narrower than the tails
    (0.03, 2.8, 2.5, 0.1),      # E_low > E_high (fitted that way in many templates)
    (0.01, 1.5, 1.5, 0.3),      # degenerate zero-width top
])
def test_fsline_smooth_form_against_quad(sigma, e_low, e_high, k):
    lo = np.linspace(min(e_low, e_high) - 0.3, max(e_low, e_high) + 0.3, 121)[:-1]
    hi = lo + (lo[1] - lo[0])
    assert sigma >= 0.1 * (hi[0] - lo[0])  # smooth branch
    ref = quad_bins(lambda e: fsline_reference_density(e, sigma, e_low, e_high, k), lo, hi,
                    points=(e_low, e_high))
    got = component("fsline", lo, hi, sigma, e_low, e_high, k)
    significant = ref > 1e-12 * ref.max()  # far tails below 1e-12 of the peak: absolute check
    np.testing.assert_allclose(got[significant], ref[significant], rtol=RTOL)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * ref.max())


def test_fsline_plain_box_for_tiny_sigma_and_swapped_edges():
    lo = np.array([1.50, 1.52, 1.53, 1.54, 1.56])
    hi = lo + 0.01
    e_low, e_high, k = 1.52664, 1.53534, 0.180872  # paper Table 6, Si frame-store line
    overlap = np.clip(np.minimum(hi, e_high) - np.maximum(lo, e_low), 0, None)
    for a, b in ((e_low, e_high), (e_high, e_low)):
        np.testing.assert_allclose(component("fsline", lo, hi, 1e-4, a, b, k), k * overlap,
                                   rtol=1e-13, atol=0)


def test_fsline_gradient_matches_finite_differences():
    lo = np.linspace(1.3, 2.2, 121)[:-1]
    hi = lo + (lo[1] - lo[0])
    weights = jnp.linspace(1.0, 2.0, lo.size)

    @jax.jit
    def total(p):
        fsline = COMPONENTS["fsline"].function
        return jnp.sum(weights * fsline(jnp.asarray(lo), jnp.asarray(hi), *p))

    p0 = jnp.array([0.05, 1.6, 1.9, 0.2])
    grad = np.asarray(jax.grad(total)(p0))
    step = 1e-6
    numeric = [(total(p0.at[i].add(step)) - total(p0.at[i].add(-step))) / (2 * step)
               for i in range(4)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# a hand-written model file


HAND_WRITTEN = """\
method leven 10 0.01
abund angr
statistic cstat
model  constant(powerlaw + gaussian + fsline) + gabs*expdec
          0.03         -1          0          0      1e+10      1e+10
           1.7       0.01         -3         -2          9         10
         0.012       0.01          0          0      1e+20      1e+24
           6.4         -1          0          0      1e+06      1e+06
          0.05       0.05          0          0         10         20
         2e-04       0.01          0          0      1e+20      1e+24
          0.02       0.01          0          0         10         20
           2.5       0.01          0          0      1e+06      1e+06
           2.8       0.01          0          0      1e+06      1e+06
           3.5       0.01          0          0      1e+20      1e+24
           0.4       0.01          0          0      1e+06      1e+06
           0.1       0.01          0          0         10         20
           0.3       0.01          0          0      1e+06      1e+06
           1.1       0.01          0          0        100        100
         0.008       0.01          0          0      1e+20      1e+24
          0.05       0.01          0          0      1e+10      1e+10
= p2
= p3
= p4
= p5
= 2*p6
= p7
= p8
= p9 + 0.1
= p10
= p11
= p12
= p13
= p14
= (p3 + p15) / 2
"""


@pytest.fixture()
def hand_model(tmp_path) -> XspecTermModel:
    path = tmp_path / "hand.xcm"
    path.write_text(HAND_WRITTEN)
    return load(path)


def reference_hand_model(values, lo, hi):
    """constant(powerlaw + gaussian + fsline) + gabs*expdec with closed forms (no bkgjax)."""
    c, pl_i, pl_k, g_e, g_s, g_k, f_s, f_lo, f_hi, f_k, a_e, a_s, a_str, x_f, x_k = values
    w = hi - lo
    pl = pl_k * (hi ** (1 - pl_i) - lo ** (1 - pl_i)) / (1 - pl_i)
    gauss = g_k * (normal.cdf(hi, g_e, g_s) - normal.cdf(lo, g_e, g_s))
    fs = quad_bins(lambda e: fsline_reference_density(e, f_s, f_lo, f_hi, f_k), lo, hi,
                   points=(f_lo, f_hi))
    # gabs: the bin average of exp(-tau) (XSPEC 12)
    a_depth = a_str / (math.sqrt(2 * math.pi) * a_s)
    absorption = quad_bins(lambda e: math.exp(-a_depth * math.exp(-0.5 * ((e - a_e) / a_s) ** 2)),
                           lo, hi) / w
    exp_part = x_k * (np.exp(-x_f * lo) - np.exp(-x_f * hi)) / x_f
    terms = {"constant_1*powerlaw_2": c * pl, "constant_1*gaussian_3": c * gauss,
             "constant_1*fsline_4": c * fs, "gabs_5*expdec_6": absorption * exp_part}
    return sum(terms.values()), terms


def test_hand_written_file_structure(hand_model):
    m = hand_model
    parsed = m.parsed
    assert isinstance(parsed, XspecModel)
    # the reader keeps the file as written: linked parameters have a link and no value
    assert parsed.parameters[16].link == "p2" and parsed.parameters[16].value is None
    assert parsed.links[0] == (16, ("p", 1))
    assert parsed.components == m.components and parsed.parameters[:16] == m.parameters[:16]
    assert m.components == ("constant", "powerlaw", "gaussian", "fsline", "gabs", "expdec")
    assert m.n_parameters == 15 and m.n_groups == 2 and len(m.parameters) == 30
    assert m.header == ("method leven 10 0.01", "abund angr", "statistic cstat")
    assert m.expression == "constant(powerlaw + gaussian + fsline) + gabs*expdec"
    p = m.parameters
    assert [q.name for q in p[:3]] == ["constant_1.factor", "powerlaw_2.PhoIndex", "powerlaw_2.norm"]
    assert p[0].frozen and p[3].frozen and not p[1].frozen  # negative delta = frozen
    assert (p[1].delta, p[1].min, p[1].bot, p[1].top, p[1].max) == (0.01, -3.0, -2.0, 9.0, 10.0)
    assert p[16].link == "p2" and p[20].link == "2*p6" and p[29].link == "(p3 + p15) / 2"
    assert p[15].link is None and not p[15].frozen  # group-2 constant is free
    # links resolve to their targets (simple and arithmetic)
    v1, v2 = m.values(1), m.values(2)
    assert v2[0] == 0.05
    np.testing.assert_array_equal(v2[[1, 2, 3, 4, 6, 7, 9, 10, 11, 12, 13]],
                                  v1[[1, 2, 3, 4, 6, 7, 9, 10, 11, 12, 13]])
    assert v2[5] == 2 * v1[5] and v2[8] == pytest.approx(v1[8] + 0.1, abs=1e-15)
    assert v2[14] == pytest.approx((v1[2] + v1[14]) / 2, rel=1e-15)
    assert m.free_indices == tuple(i for i in range(15) if i not in (0, 3)) + (15,)
    assert m.term_labels == ("constant_1*powerlaw_2", "constant_1*gaussian_3",
                             "constant_1*fsline_4", "gabs_5*expdec_6")
    assert m.term_kinds == ("continuum", "line", "fsline", "continuum")


def test_hand_written_file_evaluation(hand_model):
    m = hand_model
    lo = np.linspace(0.3, 8.0, 155)[:-1]
    hi = lo + (lo[1] - lo[0])
    for group in (1, 2):
        expected, terms = reference_hand_model(m.values(group), lo, hi)
        np.testing.assert_allclose(m(lo, hi, group=group), expected, rtol=1e-9,
                                   atol=1e-12 * expected.max())
        got_terms = m.additive_terms(lo, hi, group=group)
        assert [(label, kind) for label, kind, _ in got_terms] == list(zip(m.term_labels,
                                                                            m.term_kinds))
        for label, _, spectrum in got_terms:
            # scipy's cdf differences lose relative precision far in the Gaussian tails
            np.testing.assert_allclose(spectrum, terms[label], rtol=1e-9,
                                       atol=1e-12 * terms[label].max())
        # the model is the sum of its expanded terms, in order (XLA may contract a multiply
        # and an add into one FMA: equal to an ulp)
        np.testing.assert_allclose(sum(s for _, _, s in got_terms), m(lo, hi, group=group),
                                   rtol=5e-16, atol=0)
    # fsline norm 3.5 > 1: dropped as mkacispback does
    kept = m.additive_terms(lo, hi, drop_fsline_norm_above=1.0)
    assert [label for label, _, _ in kept] == ["constant_1*powerlaw_2", "constant_1*gaussian_3",
                                               "gabs_5*expdec_6"]
    assert len(m.additive_terms(lo, hi, drop_fsline_norm_above=5.0)) == 4
    # with traced values the list keeps its length: the dropped term is zero
    traced = jax.jit(lambda v: [s for _, _, s in m.additive_terms(
        lo, hi, drop_fsline_norm_above=1.0, values=v)])(m.initial_values)
    assert len(traced) == 4 and not np.any(np.asarray(traced[2]))
    np.testing.assert_allclose(traced[3], kept[2][2], rtol=1e-14)


def test_values_argument_links_jit_and_grad(hand_model):
    m = hand_model
    lo = np.linspace(0.3, 8.0, 78)[:-1]
    hi = lo + (lo[1] - lo[0])
    values = m.initial_values.copy()
    values[5] *= 3.0  # gaussian norm of group 1; group 2's is '= 2*p6'
    values[20] = -1.0  # a linked entry is ignored
    expected_2, _ = reference_hand_model(np.r_[values[15], values[1:5], 2 * values[5],
                                               values[6:8], values[8] + 0.1, values[9:14],
                                               (values[2] + values[14]) / 2], lo, hi)
    np.testing.assert_allclose(m(lo, hi, group=2, values=values), expected_2, rtol=1e-9)
    jitted = jax.jit(lambda v: m(lo, hi, group=2, values=v))
    np.testing.assert_allclose(jitted(values), m(lo, hi, group=2, values=values), rtol=1e-15)
    # gradient through a link: d total / d p6 includes group 2's 2*p6
    grad = jax.grad(lambda v: m(lo, hi, group=2, values=v).sum())(jnp.asarray(values))
    # d total / d p6 = 2 * (group-2 constant) * (fraction of the line in the band, ~1)
    assert float(grad[5]) == pytest.approx(2 * values[15], rel=1e-3)
    assert float(grad[20]) == 0.0
    # free-parameter vector
    free = m.initial_values[list(m.free_indices)]
    np.testing.assert_array_equal(m.full_values(free), m.initial_values)
    with pytest.raises(ValueError, match="values must hold all 30 parameters"):
        m(lo, hi, values=values[:15])
    with pytest.raises(ValueError, match="data group 3 does not exist"):
        m(lo, hi, group=3)


# ----------------------------------------------------------------------------------------------
# errors


def write(tmp_path, text, name="bad.mo"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_component_names_file_and_component(tmp_path):
    path = write(tmp_path, "model  constant(gaussian + mekal)\n" + "1 -1 0 0 1 1\n" * 5)
    with pytest.raises(BkgjaxIOError, match=r"bad\.mo, line 1: unknown model component 'mekal'"):
        read_xspec_model(path)


def test_malformed_parameter_line_names_file_and_line(tmp_path):
    text = HAND_WRITTEN.replace("         2e-04       0.01          0          0      1e+20      1e+24",
                                "         2e-04       0.01          0          0      1e+20")
    with pytest.raises(BkgjaxIOError, match=r"bad\.mo, line 10: malformed parameter line"):
        read_xspec_model(write(tmp_path, text))
    text = HAND_WRITTEN.replace("           1.7       0.01", "           abc       0.01")
    with pytest.raises(BkgjaxIOError, match=r"bad\.mo, line 6: malformed parameter line"):
        read_xspec_model(write(tmp_path, text))


@pytest.mark.parametrize("changes,message", [
    ([("= p2\n", "")], r"29 parameter lines is not a multiple of the 15 parameters"),
    ([("= p14\n", "= p99\n")], r"line 33: link '= p99' refers to p99"),
    ([("= p14\n", "= q14\n")], r"line 33: link '= q14': unknown name 'q14'"),
    ([("= p14\n", "= p30\n"), ("= (p3 + p15) / 2", "= p29 + 1")], r"circular parameter links"),
    ([("model  constant(", "model  constant((")], r"line 4: model expression .*missing '\)'"),
    ([("gabs*expdec", "gabs*gabs")], r"line 4: .*cannot add additive and multiplicative"),
    ([("gabs*expdec", "gaussian*expdec")], r"line 4: .*cannot multiply two additive"),
    ([("           0.3       0.01          0          0      1e+06      1e+06",
       "           0.3       0.01          1          1      1e+06      1e+06")],
     r"line 17: parameter value 0.3 outside its hard limits"),
])
def test_inconsistent_files_are_clear_errors(tmp_path, changes, message):
    text = HAND_WRITTEN
    for old, new in changes:
        assert old in text
        text = text.replace(old, new, 1)
    with pytest.raises(BkgjaxIOError, match=message):
        read_xspec_model(write(tmp_path, text))


def test_purely_multiplicative_model_and_bad_link_values(tmp_path):
    with pytest.raises(BkgjaxIOError, match=r"line 1: model expression 'constant\*gabs' has no "
                                            "additive component"):
        parse_xspec_model("model constant*gabs\n" + "1 -1 0 0 10 10\n" * 4, "x.mo")
    # links parse in io; their values are resolved (and checked) by the evaluator
    text = HAND_WRITTEN.replace("= 2*p6\n", "= p6 / 0\n")
    parsed = read_xspec_model(write(tmp_path, text))
    assert parsed.parameters[20].link == "p6 / 0" and parsed.parameters[20].value is None
    with pytest.raises(ValueError, match=r"bad\.mo, line 25: link '= p6 / 0' evaluates to nan"):
        XspecTermModel.from_parsed(parsed)


def test_missing_file_and_missing_model_command(tmp_path):
    with pytest.raises(MissingFileError, match="nothere.mo: XSPEC model file not found"):
        read_xspec_model(tmp_path / "nothere.mo")
    with pytest.raises(BkgjaxIOError, match="no 'model' command"):
        parse_xspec_model("method leven 10 0.01\n", "x.mo")


# ----------------------------------------------------------------------------------------------
# the 416 mkacispback template files


def raw_parameter_lines(path):
    """Parameter lines of a template, read independently: everything after 'model'."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model"))
    return [line.strip() for line in lines[start + 1:] if line.strip()]


def test_all_templates_parse_with_matching_counts_and_links():
    files = template_files()
    assert len(files) == 416
    n_param_per_component = {name: len(spec.params) for name, spec in COMPONENTS.items()}
    for path in files:
        m = load(path)
        raw = raw_parameter_lines(path)
        words = re.findall(r"[a-z]+", m.expression)
        assert m.components == tuple(words), path
        assert m.n_parameters == sum(n_param_per_component[w] for w in words), path
        assert m.n_parameters * m.n_groups == len(raw) == len(m.parameters), path
        for p, text in zip(m.parameters, raw):
            if text.startswith("="):
                target = int(text.split("p")[1])
                assert p.link == f"p{target}", path
                assert p.value == m.parameters[target - 1].value, (path, p.index)
            else:
                value, delta = (float(x) for x in text.split()[:2])
                assert p.value == value and p.frozen == (delta < 0)
        if m.n_groups == 2:  # FI files: group 2 links back to group 1 except its constant
            assert m.parameters[m.n_parameters].link is None
            assert all(p.link == f"p{p.index - m.n_parameters}"
                       for p in m.parameters[m.n_parameters + 1:])


def _eager_vs_jit(path, nested=True, op_by_op=True):
    m = load(path)
    lo = np.arange(0.3, 11.5, 0.01)
    hi = lo + 0.01
    first = np.asarray(m(lo, hi))
    again = np.asarray(m(lo, hi))
    np.testing.assert_array_equal(first, again)  # repeated calls: bit-identical
    np.testing.assert_allclose(sum(s for _, _, s in m.additive_terms(lo, hi)), first,
                               rtol=5e-16, atol=0)
    if nested:  # inside a user's jit (XLA may fuse differently): equal to rounding
        inside = np.asarray(jax.jit(lambda v: m(lo, hi, values=v))(m.initial_values))
        np.testing.assert_allclose(inside, first, rtol=1e-14, atol=0)
    if op_by_op:  # eager, op-by-op evaluation: equal to rounding
        with jax.disable_jit():
            eager = np.asarray(m(lo, hi))
        np.testing.assert_allclose(eager, first, rtol=1e-13, atol=0)
    assert np.all(np.isfinite(first)) and np.all(first >= 0)


def test_templates_eager_and_jit_agree_one_per_expression():
    files = template_files()
    chosen = {}
    for path in files:
        expression = next(line for line in path.read_text().splitlines() if line.startswith("model"))
        chosen.setdefault(expression, path)
    assert len(chosen) == 7
    # three expression types by default (FI faint, BI S3 vfaint, vfaint I1); all in the slow test
    picks = [p for p in chosen.values() if any(s in str(p) for s in
             ("_faint/template-ccd0/", "_vfaint/template-ccd7/", "_vfaint/template-ccd1/"))]
    assert len(picks) == 3
    for path in picks:  # nested jit and op-by-op (slow to compile/run) for the smallest file
        smallest = "_vfaint/template-ccd1/" in str(path)
        _eager_vs_jit(path, nested=smallest, op_by_op=smallest)


@pytest.mark.slow
def test_all_templates_eager_and_jit_agree():
    seen = set()
    for path in template_files():  # op-by-op once per expression (it takes seconds per file)
        expression = next(line for line in path.read_text().splitlines()
                          if line.startswith("model"))
        _eager_vs_jit(path, nested=expression not in seen, op_by_op=expression not in seen)
        seen.add(expression)
