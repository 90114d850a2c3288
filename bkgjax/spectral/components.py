r"""Spectral model components integrated over energy bins (pure JAX functions).

Additive components return photons/cm^2/s *per bin* (the integral of the photon spectrum in
photons/cm^2/s/keV over ``[e_lo, e_hi]`` keV), like XSPEC.  Multiplicative components return a
dimensionless factor per bin.  Parameter names and units follow XSPEC's ``model.dat``.

Closed forms are used where they exist (powerlaw, bknpower, gaussian, expdec, fsline);
cutoffpl and the Gruber CXB use Gauss-Legendre quadrature per bin (in
:math:`\ln E` for the power-law-like ones), accurate to ~1e-12 relative for bins narrower than a
factor ~2 in energy.

Every function is safe under ``jax.grad`` at the special points (PhoIndex = 1, Sigma = 0,
factor = 0): the singular branch is selected with a *double where* so that neither branch
produces NaN in the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc

__all__ = [
    "ComponentSpec",
    "COMPONENTS",
    "powerlaw_integral",
    "CXB_GRUBER_NORM_SR",
    "SR_TO_DEG2",
]

SR_TO_DEG2 = (math.pi / 180.0) ** 2  # 1 deg^2 in sr: multiply a per-sr intensity by this
#: Gruber et al. (1999) CXB normalisation, keV/keV/cm^2/s/sr at 1 keV (nustar_cxb_stray_light eq. 1)
CXB_GRUBER_NORM_SR = 7.877


def _exprel(x):
    """(exp(x) - 1)/x with value 1 and finite gradient at x = 0."""
    small = jnp.abs(x) < 1e-8
    x_safe = jnp.where(small, 1.0, x)
    return jnp.where(small, 1.0 + 0.5 * x, jnp.expm1(x_safe) / x_safe)


def powerlaw_integral(e_lo, e_hi, index):
    r""":math:`\int_{e_{lo}}^{e_{hi}} E^{-\Gamma}\,dE`, stable through :math:`\Gamma = 1`.

    Written as :math:`e_{lo}^{1-\Gamma}\,L\,\mathrm{exprel}((1-\Gamma)L)` with
    :math:`L = \ln(e_{hi}/e_{lo})`, which is exactly :math:`\ln(e_{hi}/e_{lo})` at
    :math:`\Gamma = 1` and zero for an empty interval.
    """
    a = 1.0 - index
    log_ratio = jnp.log(e_hi) - jnp.log(e_lo)
    return jnp.exp(a * jnp.log(e_lo)) * log_ratio * _exprel(a * log_ratio)


# ----------------------------------------------------------------------------------------------
# Gauss-Legendre quadrature per bin
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


def _integrate_log(fun, e_lo, e_hi):
    r""":math:`\int f(E)\,dE = \int f(e^s)\,e^s\,ds` with 16-point Gauss-Legendre in :math:`s`."""
    s_lo, s_hi = jnp.log(e_lo), jnp.log(e_hi)
    half = 0.5 * (s_hi - s_lo)
    mid = 0.5 * (s_hi + s_lo)
    s = mid[..., None] + half[..., None] * _GL_NODES
    energy = jnp.exp(s)
    return half * jnp.sum(_GL_WEIGHTS * fun(energy) * energy, axis=-1)


def _normal_interval(a, b):
    r""":math:`\Phi(b) - \Phi(a)` for :math:`a \le b`, using the tail on the side of the interval
    so that far-tail bins keep full relative precision."""
    sqrt2 = math.sqrt(2.0)
    upper_tail = 0.5 * (erfc(a / sqrt2) - erfc(b / sqrt2))  # accurate for a > 0
    lower_tail = 0.5 * (erfc(-b / sqrt2) - erfc(-a / sqrt2))  # accurate for b < 0
    return jnp.where(a > 0, upper_tail, lower_tail)


def _gaussian_fraction(e_lo, e_hi, line_e, sigma):
    """Fraction of a normalised Gaussian line in each bin; sigma = 0 is a delta line."""
    is_delta = sigma <= 0
    sigma_safe = jnp.where(is_delta, 1.0, sigma)
    smooth = _normal_interval((e_lo - line_e) / sigma_safe, (e_hi - line_e) / sigma_safe)
    delta = ((e_lo <= line_e) & (line_e < e_hi)).astype(e_lo.dtype)
    return jnp.where(is_delta, delta, smooth)


# ----------------------------------------------------------------------------------------------
# Additive components: f(e_lo, e_hi, *params) -> photons/cm^2/s per bin


def _powerlaw(e_lo, e_hi, PhoIndex, norm):
    r"""XSPEC ``powerlaw``: :math:`A(E) = K E^{-\alpha}` (norm K: photons/keV/cm^2/s at 1 keV)."""
    return norm * powerlaw_integral(e_lo, e_hi, PhoIndex)


def _bknpower(e_lo, e_hi, PhoIndx1, BreakE, PhoIndx2, norm):
    r"""XSPEC ``bknpower``: :math:`K E^{-\Gamma_1}` below BreakE,
    :math:`K E_b^{\Gamma_2-\Gamma_1} E^{-\Gamma_2}` above (continuous at the break)."""
    below_hi = jnp.clip(jnp.minimum(e_hi, BreakE), e_lo, e_hi)
    above_lo = jnp.clip(jnp.maximum(e_lo, BreakE), e_lo, e_hi)
    below = powerlaw_integral(e_lo, below_hi, PhoIndx1)
    above = powerlaw_integral(above_lo, e_hi, PhoIndx2)
    scale = jnp.exp((PhoIndx2 - PhoIndx1) * jnp.log(BreakE))
    return norm * (below + scale * above)


def _cutoffpl(e_lo, e_hi, PhoIndex, HighECut, norm):
    r"""XSPEC ``cutoffpl``: :math:`K E^{-\alpha}\exp(-E/\beta)` (HighECut :math:`\beta`, keV)."""
    shape = lambda e: jnp.exp(-PhoIndex * jnp.log(e) - e / HighECut)  # noqa: E731
    return norm * _integrate_log(shape, e_lo, e_hi)


def _cxb_gruber(e_lo, e_hi, norm, PhoIndex, EFold):
    r"""Gruber et al. (1999) CXB per deg^2 (nustar_cxb_stray_light.txt eq. 1).

    .. math:: N(E) = \mathrm{norm}\; 7.877\,(\pi/180)^2\,E^{-\Gamma}\,e^{-E/E_\mathrm{fold}}
              \quad \mathrm{photons\,cm^{-2}\,s^{-1}\,keV^{-1}\,deg^{-2}}

    (eq. 1 is the energy spectrum :math:`7.877E^{-0.29}e^{-E/41.13}` keV/keV/cm^2/s/sr, i.e. a
    photon index of 1.29; :math:`(\pi/180)^2` converts sr to deg^2).  ``norm = 1`` is the
    HEAO-1 level: 1.23e-11 erg/s/cm^2/deg^2 in 10-20 keV.
    """
    shape = lambda e: jnp.exp(-PhoIndex * jnp.log(e) - e / EFold)  # noqa: E731
    return norm * (CXB_GRUBER_NORM_SR * SR_TO_DEG2) * _integrate_log(shape, e_lo, e_hi)


def _gaussian(e_lo, e_hi, LineE, Sigma, norm):
    r"""XSPEC ``gaussian``: :math:`K\,\frac{1}{\sigma\sqrt{2\pi}}e^{-(E-E_l)^2/2\sigma^2}`,
    norm K = total photons/cm^2/s in the line; Sigma = 0 puts all of it in the bin holding LineE."""
    return norm * _gaussian_fraction(e_lo, e_hi, LineE, Sigma)


def _expdec(e_lo, e_hi, factor, norm):
    r"""XSPEC ``expdec``: :math:`K e^{-fE}`, integrated in closed form (stable at f = 0)."""
    width = e_hi - e_lo
    return norm * jnp.exp(-factor * e_lo) * width * _exprel(-factor * width)


def fsline_density(energy, Sigma, E_low, E_high, norm):
    r"""Frame-store line of mkacispback (photons/cm^2/s/keV), ../shared/data/README.md:

    .. math:: f(E) = K\min\bigl(1,\; e^{-(E-E_l)^2/2\sigma^2} + e^{-(E-E_h)^2/2\sigma^2}
              + 1000^{\,1-u^2}\bigr),\quad u = \frac{E-(E_l+E_h)/2}{(E_h-E_l)/2}.
    """
    sigma_safe = jnp.where(Sigma > 0, Sigma, 1.0)
    half_width = 0.5 * (E_high - E_low)
    degenerate = half_width == 0
    half_safe = jnp.where(degenerate, 1.0, half_width)
    u = (energy - 0.5 * (E_low + E_high)) / half_safe
    tails = jnp.exp(-0.5 * ((energy - E_low) / sigma_safe) ** 2) + jnp.exp(
        -0.5 * ((energy - E_high) / sigma_safe) ** 2
    )
    # 1000^(1-u^2) overflows for |u| << 1 only to +inf, which min() maps to 1: clip the exponent.
    # E_low == E_high: the flat top has zero width and 1000^(1-u^2) -> 0 for every E != E_low.
    # The formula is symmetric in (E_low, E_high), so E_low > E_high is the same line.
    core = jnp.where(degenerate, 0.0,
                     jnp.exp(jnp.clip((1.0 - u * u) * math.log(1000.0), -700.0, 50.0)))
    return norm * jnp.minimum(1.0, tails + core)


_FSLINE_CORE_LOG = math.log(1000.0)
_FSLINE_BISECTIONS = 48  # bracket <= 0.1 keV -> knees to ~4e-16 keV


def _fsline_shape_integral(a, b, sigma, e1, e2, half):
    r""":math:`\int_a^b g(E)\,dE` for :math:`g` = the two Gaussian tails plus the core term
    :math:`1000^{1-u^2} = 1000\,e^{-(E-m)^2/2\sigma_c^2}`, :math:`\sigma_c = h/\sqrt{2\ln
    1000}` (all three are Gaussians in E, so the integral is a sum of normal-CDF differences);
    ``a <= b``."""
    root2pi = math.sqrt(2.0 * math.pi)
    mid = 0.5 * (e1 + e2)
    degenerate = half <= 0
    sigma_core = jnp.where(degenerate, 1.0, half) / math.sqrt(2.0 * _FSLINE_CORE_LOG)
    tails = sigma * root2pi * (_normal_interval((a - e1) / sigma, (b - e1) / sigma)
                               + _normal_interval((a - e2) / sigma, (b - e2) / sigma))
    core = 1000.0 * sigma_core * root2pi * _normal_interval((a - mid) / sigma_core,
                                                            (b - mid) / sigma_core)
    return tails + jnp.where(degenerate, 0.0, core)


def _fsline_knees(sigma, e1, e2, half):
    r"""Energies :math:`k_1 < e_1`, :math:`k_2 > e_2` where the smooth fsline leaves its flat
    top, i.e. where :math:`g(E) = 1` (g is monotone outside :math:`[e_1, e_2]` and
    :math:`g(e_{1,2}) \ge 2`), by bisection.  :math:`g(e_2 + d) < 1` for
    :math:`d \ge 1.7\sigma + 0.06 h` (each tail below 1/4, the core below 1/2), which brackets
    the root.  The bin integral does not depend on the knees to first order
    (:math:`\partial/\partial k = K(1 - g(k)) = 0`), so no gradient flows through them."""
    # no tangents enter the loop (the integral does not depend on the knees to first order)
    sigma, e1, e2, half = (jax.lax.stop_gradient(x) for x in (sigma, e1, e2, half))
    mid = 0.5 * (e1 + e2)
    half_safe = jnp.where(half > 0, half, 1.0)

    def g(energy):
        u = (energy - mid) / half_safe
        exponent = jnp.clip((1.0 - u * u) * _FSLINE_CORE_LOG, -700.0, 50.0)
        core = jnp.where(half > 0, jnp.exp(exponent), 0.0)
        return (jnp.exp(-0.5 * ((energy - e1) / sigma) ** 2)
                + jnp.exp(-0.5 * ((energy - e2) / sigma) ** 2) + core)

    reach = 1.7 * sigma + 0.06 * half

    def step(_, bracket):
        # (inside, outside) brackets of the right and left knees: g(inside) >= 1 > g(outside)
        r_in, r_out, l_in, l_out = bracket
        r_mid, l_mid = 0.5 * (r_in + r_out), 0.5 * (l_in + l_out)
        r_above, l_above = g(r_mid) >= 1.0, g(l_mid) >= 1.0
        return (jnp.where(r_above, r_mid, r_in), jnp.where(r_above, r_out, r_mid),
                jnp.where(l_above, l_mid, l_in), jnp.where(l_above, l_out, l_mid))

    # a rolled loop keeps the compiled graph small (the templates hold 4 fslines x 32 slices)
    start = tuple(jnp.broadcast_to(x, jnp.shape(reach)).astype(jnp.result_type(float, reach))
                  for x in (e2, e2 + reach, e1, e1 - reach))
    lo_in, lo_out, hi_in, hi_out = jax.lax.fori_loop(0, _FSLINE_BISECTIONS, step, start)
    return 0.5 * (hi_in + hi_out), 0.5 * (lo_in + lo_out)


def _fsline(e_lo, e_hi, Sigma, E_low, E_high, norm):
    r"""mkacispback ``fsline``: flat top of height norm between E_low and E_high with Gaussian
    tails (:func:`fsline_density`); when Sigma is below a tenth of a bin's width the bin gets
    the plain box integral :math:`K\,|[e_{lo}, e_{hi}] \cap [E_l, E_h]|`
    (../shared/data/README.md).

    The smooth form is integrated in closed form: the density is ``norm`` between the knees
    :math:`k_1 < E_l` and :math:`k_2 > E_h` where :math:`g = ` tails + core falls to 1
    (found by bisection), and ``norm * g`` outside, where ``g`` is a sum of three Gaussians in
    E; so the bin integral is exact to rounding (no quadrature across the kink of the min).

    E_low > E_high describes the same line as (E_high, E_low): the density is symmetric in
    the two edges, and mkacispback swaps them before building its box (575 of the template
    fsline parameter sets with 0 < norm <= 1, counting both data groups, have
    E_low > E_high)."""
    e1, e2 = jnp.minimum(E_low, E_high), jnp.maximum(E_low, E_high)
    overlap = jnp.clip(jnp.minimum(e_hi, e2) - jnp.maximum(e_lo, e1), 0.0, None)
    box = norm * overlap

    sigma_safe = jnp.where(Sigma > 0, Sigma, 1.0)
    half = 0.5 * (e2 - e1)
    k1, k2 = _fsline_knees(sigma_safe, e1, e2, half)
    flat = jnp.clip(jnp.minimum(e_hi, k2) - jnp.maximum(e_lo, k1), 0.0, None)
    left_hi = jnp.clip(k1, e_lo, e_hi)  # [e_lo, left_hi]: below the left knee
    right_lo = jnp.clip(k2, e_lo, e_hi)  # [right_lo, e_hi]: above the right knee
    outer = (_fsline_shape_integral(e_lo, left_hi, sigma_safe, e1, e2, half)
             + _fsline_shape_integral(right_lo, e_hi, sigma_safe, e1, e2, half))
    smooth = norm * (flat + outer)
    use_box = Sigma < 0.1 * (e_hi - e_lo)
    return jnp.where(use_box, box, smooth)


# ----------------------------------------------------------------------------------------------
# Multiplicative components: f(e_lo, e_hi, *params) -> factor per bin


def _constant(e_lo, e_hi, factor):
    """XSPEC ``constant``: an energy-independent factor."""
    return jnp.broadcast_to(factor, jnp.shape(e_lo)).astype(jnp.result_type(e_lo, factor))


def _gabs(e_lo, e_hi, LineE, Sigma, Strength):
    r"""XSPEC ``gabs``: :math:`\exp\bigl(-\frac{S}{\sqrt{2\pi}\sigma}
    e^{-(E-E_l)^2/2\sigma^2}\bigr)` with the optical depth averaged over each bin
    (the exact bin integral of the Gaussian divided by the bin width); Sigma = 0 puts the whole
    Strength into the bin holding LineE.

    Convention: this is the Fortran ``xsgabs.f`` form, exp(-<tau>_bin).  XSPEC 12's C++ gabs
    instead averages exp(-tau) over the bin (adaptive quadrature, only within +-6 Sigma of LineE,
    and no absorption at all for Sigma = 0).  The two agree when a bin is narrow compared with
    Sigma (tested to 1e-6 for bins of Sigma/300); they differ in bins where tau changes a lot,
    e.g. the deep (Strength ~ 1e6) low-energy gabs cut-offs of the mkacispback templates below
    ~0.3 keV."""
    tau = Strength * _gaussian_fraction(e_lo, e_hi, LineE, Sigma) / (e_hi - e_lo)
    return jnp.exp(-tau)


@dataclass(frozen=True)
class ParamDefault:
    """XSPEC-style default of one parameter: value, hard limits, unit, frozen."""

    name: str
    value: float
    unit: str
    min: float
    max: float
    frozen: bool = False


@dataclass(frozen=True)
class ComponentSpec:
    """Definition of a model component (no state): name, kind, parameters, function."""

    name: str
    kind: str  # "add" or "mul"
    params: tuple
    function: Callable
    description: str

    @property
    def param_names(self):
        return tuple(p.name for p in self.params)


_INF = float("inf")

COMPONENTS = {
    spec.name: spec
    for spec in [
        ComponentSpec(
            "powerlaw",
            "add",
            (
                ParamDefault("PhoIndex", 1.0, "", -3.0, 10.0),
                ParamDefault("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e24),
            ),
            _powerlaw,
            "power law K E^-PhoIndex",
        ),
        ComponentSpec(
            "cutoffpl",
            "add",
            (
                ParamDefault("PhoIndex", 1.0, "", -3.0, 10.0),
                ParamDefault("HighECut", 15.0, "keV", 0.01, 500.0),
                ParamDefault("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e24),
            ),
            _cutoffpl,
            "power law with exponential cut-off K E^-PhoIndex exp(-E/HighECut)",
        ),
        ComponentSpec(
            "bknpower",
            "add",
            (
                ParamDefault("PhoIndx1", 1.0, "", -3.0, 10.0),
                ParamDefault("BreakE", 5.0, "keV", 1e-2, 1e6),
                ParamDefault("PhoIndx2", 2.0, "", -3.0, 10.0),
                ParamDefault("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e24),
            ),
            _bknpower,
            "broken power law, continuous at BreakE",
        ),
        ComponentSpec(
            "cxb_gruber",
            "add",
            (
                ParamDefault("norm", 1.0, "", 0.0, 1e6),
                ParamDefault("PhoIndex", 1.29, "", -3.0, 10.0, frozen=True),
                ParamDefault("EFold", 41.13, "keV", 1.0, 1e4, frozen=True),
            ),
            _cxb_gruber,
            "Gruber et al. (1999) CXB, photons/cm^2/s/deg^2 (norm = 1: HEAO-1 level)",
        ),
        ComponentSpec(
            "gaussian",
            "add",
            (
                ParamDefault("LineE", 6.5, "keV", 0.0, 1e6),
                ParamDefault("Sigma", 0.1, "keV", 0.0, 20.0),
                ParamDefault("norm", 1.0, "photons/cm^2/s", 0.0, 1e24),
            ),
            _gaussian,
            "Gaussian line, norm = total photons/cm^2/s in the line",
        ),
        ComponentSpec(
            "fsline",
            "add",
            (
                ParamDefault("Sigma", 0.01, "keV", 0.0, 10.0),
                ParamDefault("E_low", 1.0, "keV", 0.0, 1e6),
                ParamDefault("E_high", 2.0, "keV", 0.0, 1e6),
                ParamDefault("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e24),
            ),
            _fsline,
            "mkacispback frame-store line: flat top E_low..E_high with Gaussian tails",
        ),
        ComponentSpec(
            "expdec",
            "add",
            (
                ParamDefault("factor", 1.0, "1/keV", 0.0, 100.0),
                ParamDefault("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e24),
            ),
            _expdec,
            "exponential decay K exp(-factor E)",
        ),
        ComponentSpec(
            "constant",
            "mul",
            (ParamDefault("factor", 1.0, "", 0.0, 1e10),),
            _constant,
            "energy-independent multiplicative constant",
        ),
        ComponentSpec(
            "gabs",
            "mul",
            (
                ParamDefault("LineE", 1.0, "keV", 0.0, 1e6),
                ParamDefault("Sigma", 0.01, "keV", 0.0, 20.0),
                ParamDefault("Strength", 1.0, "keV", 0.0, 1e6),
            ),
            _gabs,
            "Gaussian absorption line exp(-Strength/(sqrt(2 pi) Sigma) exp(-(E-LineE)^2/2Sigma^2))",
        ),
    ]
}
