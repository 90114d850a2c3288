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

User components (Sherpa's ``load_user_model``/``add_model``, XSPEC's local models) join the
same registry, :data:`COMPONENTS`, and are then used by name in model expressions, from Python
and from the command line, like the built-ins:

* :func:`register_component` (name, function, kind ``"add"``/``"mul"``/``"con"``, parameters as
  :class:`ParameterSpec`) checks the definition eagerly, including a trial evaluation;
* :func:`user_component` is the same as a decorator, run when the module defining it is
  imported; :func:`load_component` imports ``"package.module:attribute"`` and registers what it
  finds; ``$BKGJAX_COMPONENTS`` (:data:`COMPONENTS_ENV`) lists such targets for the CLI;
* :func:`unregister_component` removes one (a replaced built-in comes back).

A convolution component (kind ``"con"``) acts on the per-bin flux of the parenthesised
expression after it, ``myconv(phabs*powerlaw)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import keyword
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc

__all__ = [
    "ComponentSpec",
    "COMPONENTS",
    "COMPONENTS_ENV",
    "ParameterSpec",
    "load_component",
    "load_environment_components",
    "register_component",
    "unregister_component",
    "user_component",
    "powerlaw_integral",
    "exprel",
    "integrate_log",
    "gaussian_fraction",
    "CXB_GRUBER_NORM_SR",
    "SR_TO_DEG2",
]

#: Component and parameter names: what the expression tokenizer reads as one name.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SR_TO_DEG2 = (math.pi / 180.0) ** 2  # 1 deg^2 in sr: multiply a per-sr intensity by this
#: Gruber et al. (1999) CXB normalisation, keV/keV/cm^2/s/sr at 1 keV (nustar_cxb_stray_light eq. 1)
CXB_GRUBER_NORM_SR = 7.877


def exprel(x):
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
    return jnp.exp(a * jnp.log(e_lo)) * log_ratio * exprel(a * log_ratio)


# ----------------------------------------------------------------------------------------------
# Gauss-Legendre quadrature per bin
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)


def integrate_log(fun, e_lo, e_hi):
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


def gaussian_fraction(e_lo, e_hi, line_e, sigma):
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
    return norm * integrate_log(shape, e_lo, e_hi)


def _cxb_gruber(e_lo, e_hi, norm, PhoIndex, EFold):
    r"""Gruber et al. (1999) CXB per deg^2 (nustar_cxb_stray_light.txt eq. 1).

    .. math:: N(E) = \mathrm{norm}\; 7.877\,(\pi/180)^2\,E^{-\Gamma}\,e^{-E/E_\mathrm{fold}}
              \quad \mathrm{photons\,cm^{-2}\,s^{-1}\,keV^{-1}\,deg^{-2}}

    (eq. 1 is the energy spectrum :math:`7.877E^{-0.29}e^{-E/41.13}` keV/keV/cm^2/s/sr, i.e. a
    photon index of 1.29; :math:`(\pi/180)^2` converts sr to deg^2).  ``norm = 1`` is the
    HEAO-1 level: 1.23e-11 erg/s/cm^2/deg^2 in 10-20 keV.
    """
    shape = lambda e: jnp.exp(-PhoIndex * jnp.log(e) - e / EFold)  # noqa: E731
    return norm * (CXB_GRUBER_NORM_SR * SR_TO_DEG2) * integrate_log(shape, e_lo, e_hi)


def _gaussian(e_lo, e_hi, LineE, Sigma, norm):
    r"""XSPEC ``gaussian``: :math:`K\,\frac{1}{\sigma\sqrt{2\pi}}e^{-(E-E_l)^2/2\sigma^2}`,
    norm K = total photons/cm^2/s in the line; Sigma = 0 puts all of it in the bin holding LineE."""
    return norm * gaussian_fraction(e_lo, e_hi, LineE, Sigma)


def _expdec(e_lo, e_hi, factor, norm):
    r"""XSPEC ``expdec``: :math:`K e^{-fE}`, integrated in closed form (stable at f = 0)."""
    width = e_hi - e_lo
    return norm * jnp.exp(-factor * e_lo) * width * exprel(-factor * width)


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
    r"""XSPEC ``gabs``: the bin average of the transmission :math:`e^{-\tau(E)}`,

    .. math:: \tau(E) = \frac{S}{\sqrt{2\pi}\,\sigma}\,e^{-(E-E_l)^2/2\sigma^2},\qquad
              M_i = \frac{1}{e_{hi}-e_{lo}}\int_{e_{lo}}^{e_{hi}} e^{-\tau(E)}\,dE

    (LineE :math:`E_l` and Sigma :math:`\sigma` in keV; Strength :math:`S` in keV, the central
    optical depth being :math:`S/(\sqrt{2\pi}\sigma)`).  This is XSPEC 12's definition
    (``gaussianAbsorptionLine.cxx``, "converted from Fortran in xsgabs.f and modified to average
    exp(-tau) over the energy bin, not tau"; manual page XSmodelGabs).  As there, Sigma = 0
    means no absorption at all (every bin 1), which is also the limit of the formula as
    Sigma -> 0; Sigma below 1e-250 keV is treated the same (the exact value differs from 1 by
    less than 1e-240).

    The integral is computed in the line's own coordinate :math:`x = (E-E_l)/\sigma`, so it is
    exact (to ~1e-13 of the bin) for any ratio of bin width to Sigma, including lines far
    narrower than a bin (mkacispback's VFAINT ccd7 templates: Sigma ~ 5e-6 keV at 0.315 keV)
    and saturated lines (central depth up to 1e40 checked):

    * where :math:`\tau < 10^{-8}` (:math:`|x| > k`) the transmission is :math:`1 - \tau` to
      5e-17 and is integrated in closed form (normal-CDF differences);
    * :math:`|x| < k` is cut where :math:`\tau = 40, 5, 1, 0.1` (the core, where nothing is
      transmitted, and the wings, where the transmission rises from 0 to 1 over a width
      ~1/x that shrinks as the depth grows) into 9 pieces, each clipped to the bin and
      integrated with 16-point Gauss-Legendre.  The cut points depend on the depth only
      through where the pieces start, not the value of the integral, so no gradient flows
      through them.

    Differences from XSPEC 12's own evaluation, which is not exact in two ways: it integrates
    with adaptive Gauss-Kronrod to a relative precision of 1e-6 only on the bins within
    +-6 Sigma of LineE and sets every other bin to 1 (tau there is below 1.5e-8 of the central
    depth, which matters only for extremely deep lines, e.g. the 0.25 keV gabs of the
    mkacispback VFAINT ccd0-3/6 templates with central depths ~1e7), and its adaptive rule
    can miss a line much narrower than a bin entirely (all nodes outside the line) and return
    1 there.  mkacispback evaluates exp(-tau) at 1001 points per response bin (trapezoid),
    which samples a 5e-6 keV line only a few times.
    """
    no_line = ~(jnp.asarray(Sigma) > 1e-250)  # Sigma = 0: no absorption (XSPEC 12)
    sigma = jnp.where(no_line, 1.0, Sigma)
    depth = Strength / (math.sqrt(2.0 * math.pi) * sigma)  # central optical depth
    x_lo = (e_lo - LineE) / sigma
    x_hi = (e_hi - LineE) / sigma

    # |x| where tau falls to each level (0 when the depth is below it), outermost last
    log_depth = jnp.log(jnp.maximum(jnp.abs(jax.lax.stop_gradient(depth)), 1e-300))
    radii = [jnp.sqrt(2.0 * jnp.maximum(log_depth - math.log(level), 0.0))
             for level in (40.0, 5.0, 1.0, 0.1, 1e-8)]
    edges = jnp.stack([-r for r in radii[::-1]] + radii, axis=-1)  # (..., 10), increasing
    k = radii[-1]

    # pieces of the bin inside |x| < k: 9 segments x 16 Gauss-Legendre nodes
    lo = jnp.clip(x_lo[..., None], edges[..., :-1], edges[..., 1:])
    hi = jnp.clip(x_hi[..., None], edges[..., :-1], edges[..., 1:])
    half = 0.5 * (hi - lo)
    nodes = (0.5 * (hi + lo))[..., None] + half[..., None] * _GL_NODES
    node_depth = jnp.expand_dims(depth, (-1, -2))  # broadcasts over (..., piece, node)
    transmitted = jnp.exp(-node_depth * jnp.exp(-0.5 * nodes * nodes))
    inside = jnp.sum(half * jnp.sum(_GL_WEIGHTS * transmitted, axis=-1), axis=-1)
    inside_length = jnp.sum(hi - lo, axis=-1)

    # the rest of the bin (|x| > k): exp(-tau) = 1 - tau to 5e-17, integrated in closed form
    left_lo, left_hi = jnp.minimum(x_lo, -k), jnp.minimum(x_hi, -k)
    right_lo, right_hi = jnp.maximum(x_lo, k), jnp.maximum(x_hi, k)
    outside_length = (left_hi - left_lo) + (right_hi - right_lo)
    outside_tau = (Strength / sigma) * (_normal_interval(left_lo, left_hi)
                                        + _normal_interval(right_lo, right_hi))
    length = inside_length + outside_length  # x_hi - x_lo, in pieces that sum exactly
    # a bin narrower than the rounding of x (E >> Sigma): the transmission at its centre
    point = jnp.exp(-depth * jnp.exp(-0.5 * x_lo * x_lo))
    wide = length > 0
    mean = (inside + outside_length - outside_tau) / jnp.where(wide, length, 1.0)
    transmission = jnp.clip(jnp.where(wide, mean, point), 0.0, 1.0)
    return jnp.where(no_line, jnp.ones_like(transmission), transmission)


_INF = float("inf")


@dataclass(frozen=True)
class ParameterSpec:
    """XSPEC-style definition of one parameter of a component: name, default value, unit, hard
    limits, frozen by default.

    ``ParameterSpec("LineE", 6.4, "keV", 0.0, 100.0)``; the value must lie within
    ``[min, max]`` and ``min < max``.  The name is what follows the component label in the
    qualified parameter name (``"myline.LineE"``)."""

    name: str
    value: float
    unit: str = ""
    min: float = -_INF
    max: float = _INF
    frozen: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"parameter name {self.name!r} is not a valid name (letters, "
                             "digits and '_', not starting with a digit)")
        for attr in ("value", "min", "max"):
            raw = getattr(self, attr)
            try:
                number = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"parameter {self.name}: {attr} {raw!r} is not a number") from None
            if math.isnan(number):
                raise ValueError(f"parameter {self.name}: {attr} is NaN")
            object.__setattr__(self, attr, number)
        if not isinstance(self.unit, str):
            raise ValueError(f"parameter {self.name}: unit {self.unit!r} is not a string")
        object.__setattr__(self, "frozen", bool(self.frozen))
        if not self.min < self.max:
            raise ValueError(f"parameter {self.name}: min={self.min:g} must be < "
                             f"max={self.max:g}")
        if not self.min <= self.value <= self.max:
            raise ValueError(f"parameter {self.name}: default value {self.value:g} outside "
                             f"its limits [{self.min:g}, {self.max:g}]")


#: The historical name of :class:`ParameterSpec` (the built-in definitions use it).
ParamDefault = ParameterSpec


@dataclass(frozen=True)
class ComponentSpec:
    """Definition of a model component (no state): name, kind, parameters, function.

    ``kind`` is ``"add"`` (``function(e_lo, e_hi, *params)`` -> photons/cm^2/s per bin),
    ``"mul"`` (same call -> dimensionless factor per bin) or ``"con"`` (convolution:
    ``function(e_lo, e_hi, flux, *params)`` -> new per-bin flux).  ``version`` is 0 for the
    built-ins and a process-wide serial number for each registration
    (:func:`register_component`); :attr:`bkgjax.spectral.Model.structure` carries it so that
    a re-registered name never reuses a compiled fit of the previous function.

    ``options`` names the model options (:meth:`bkgjax.spectral.Model.with_options`, e.g.
    XSPEC's ``abund``/``xsect`` settings) that ``function`` takes as keyword arguments; a
    model passes each component only the options it names (default: none)."""

    name: str
    kind: str  # "add", "mul" or "con"
    params: tuple
    function: Callable
    description: str
    version: int = 0
    options: tuple = ()

    @property
    def param_names(self):
        return tuple(p.name for p in self.params)

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


# The model library (issue 20), one module per family, each listing its ComponentSpecs in SPECS.
# They import ComponentSpec/ParameterSpec and the quadrature helpers defined above, so they are
# imported here, after those definitions (a partially initialised module is enough for them).
from . import absorption as _absorption  # noqa: E402
from . import continua as _continua  # noqa: E402
from . import convolutions as _convolutions  # noqa: E402

for _library_spec in (*_absorption.SPECS, *_continua.SPECS, *_convolutions.SPECS):
    if _library_spec.name in COMPONENTS:
        raise RuntimeError(f"component {_library_spec.name!r} is defined twice")
    COMPONENTS[_library_spec.name] = _library_spec


# ----------------------------------------------------------------------------------------------
# User components: Sherpa's load_user_model/add_model, XSPEC's local models.
#
# A registered component is a ComponentSpec in COMPONENTS like the built-ins, so that model
# expressions (bkgjax.spectral.parse_model, the CLI's --model), Model composition, fits,
# fluxes and samplers use it unchanged.  Its function is traced inside jax.jit/grad/vmap like
# the built-ins: write it with jax.numpy and no Python branching on parameter values.

#: The built-in definitions as shipped (unregister_component restores a replaced one).
_BUILTINS = dict(COMPONENTS)
_KINDS = {"add": "additive", "mul": "multiplicative", "con": "convolution"}
#: One serial number per registration in this process (ComponentSpec.version).
_SERIAL = itertools.count(1)
#: Components listed here (comma-separated ``module:attribute``) are loaded with
#: :func:`load_component` the first time a component is looked up by name (model expressions,
#: :func:`bkgjax.spectral.component`): the way to use them from the command line.
COMPONENTS_ENV = "BKGJAX_COMPONENTS"
_TRIAL_EDGES = np.geomspace(0.5, 10.0, 9)  # the trial grid of register_component: 8 bins


def _registered_name(name):
    """The registry key equal to ``name`` ignoring case (expressions are case-insensitive)."""
    if name in COMPONENTS:
        return name
    lowered = name.lower()
    return next((key for key in COMPONENTS if key.lower() == lowered), None)


def _parameter_specs(name, parameters) -> tuple:
    if isinstance(parameters, (str, bytes, dict)) or not hasattr(parameters, "__iter__"):
        raise ValueError(f"component {name!r}: parameters must be a sequence of ParameterSpec "
                         f"(or tuples), got {type(parameters).__name__}")
    specs = []
    for i, entry in enumerate(parameters, start=1):
        try:
            if isinstance(entry, ParameterSpec):
                spec = entry
            elif isinstance(entry, dict):
                spec = ParameterSpec(**entry)
            elif isinstance(entry, (tuple, list)):
                spec = ParameterSpec(*entry)
            else:
                raise ValueError(f"expected a ParameterSpec, a tuple (name, value[, unit, min, "
                                 f"max, frozen]) or a dict, got {type(entry).__name__}")
        except (TypeError, ValueError) as err:
            raise ValueError(f"component {name!r}, parameter {i}: {err}") from None
        specs.append(spec)
    names = [p.name for p in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"component {name!r}: duplicate parameter name(s) {duplicated}")
    return tuple(specs)


def _leading_arguments(kind) -> tuple:
    return ("e_lo", "e_hi", "flux") if kind == "con" else ("e_lo", "e_hi")


def _check_signature(name, function, kind, params):
    arguments = _leading_arguments(kind) + tuple(p.name for p in params)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to read (e.g. a C function): the trial
        return  # evaluation below checks the call
    try:
        signature.bind(*arguments)
    except TypeError as err:
        raise ValueError(
            f"component {name!r}: its function{signature} cannot be called as "
            f"f({', '.join(arguments)}): a {_KINDS[kind]} component takes "
            f"{len(arguments)} positional arguments ({err})") from None


def _trial_evaluation(name, function, kind, params):
    """Call ``function`` on 8 bins of 0.5-10 keV at the default values (eagerly, then traced
    as under jax.jit and jax.vmap); ValueError naming the component if anything is wrong."""
    e_lo, e_hi = jnp.asarray(_TRIAL_EDGES[:-1]), jnp.asarray(_TRIAL_EDGES[1:])
    shape = e_lo.shape
    leading = (e_lo, e_hi)
    if kind == "con":  # a positive per-bin flux to act on: powerlaw, PhoIndex 2, norm 1
        leading += (powerlaw_integral(e_lo, e_hi, 2.0),)
    args = [jnp.asarray(p.value, dtype=e_lo.dtype) for p in params]
    where = (f"component {name!r}: trial evaluation on {shape[0]} bins from 0.5 to 10 keV at "
             f"the default parameter values")
    try:
        out = function(*leading, *args)
    except Exception as err:  # noqa: BLE001 - whatever the user's function raises
        raise ValueError(f"{where} raised {type(err).__name__}: {err}") from err
    try:
        values = np.asarray(out)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{where} returned {type(out).__name__}, not an array ({err})") from err
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"{where} returned an array of {values.dtype}, not real numbers")
    if values.shape != shape:
        raise ValueError(f"{where} returned an array of shape {values.shape}; expected {shape}, "
                         "one value per bin")
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{where} returned non-finite values (NaN or inf) in {int(bad.sum())} "
                         f"of {shape[0]} bins: {values}")

    def call(*p):
        return function(*leading, *p)

    try:  # abstract traces only (nothing is compiled): the fits call it under jit/grad/vmap
        jax.eval_shape(call, *args)
        if args:
            jax.eval_shape(jax.vmap(call), *(jnp.stack([a, a]) for a in args))
    except Exception as err:  # noqa: BLE001
        raise ValueError(
            f"component {name!r}: its function cannot be traced by JAX with traced parameter "
            f"values (fits call it inside jax.jit, jax.grad and jax.vmap: use jax.numpy, and "
            f"jnp.where instead of Python branches on parameters): "
            f"{type(err).__name__}: {err}") from err


def register_component(name: str, function: Callable, kind: str, parameters,
                       description: str = "", *, replace: bool = False) -> ComponentSpec:
    r"""Add a model component usable in expressions like the built-ins (Sherpa's
    ``load_user_model``/``add_model``, XSPEC's local models).

    Parameters
    ----------
    name : str
        The name in model expressions (``"myline + powerlaw"``; matched case-insensitively)
        and the default label of its parameters (``"myline.LineE"``): ASCII letters, digits
        and ``_``, not starting with a digit.  It may not clash (ignoring case) with a
        registered component, built-in or not, unless ``replace=True``.
    function : callable
        A pure JAX function of the bin edges in keV (arrays of equal shape) and the parameter
        values (scalars, traced inside fits), in the order of ``parameters``:

        * ``kind="add"``: ``function(e_lo, e_hi, *params)`` -> photons/cm^2/s *per bin* (the
          integral of the photon spectrum over each bin), shape ``e_lo.shape``;
        * ``kind="mul"``: same call -> the dimensionless factor per bin;
        * ``kind="con"`` (convolution): ``function(e_lo, e_hi, flux, *params)`` -> the new
          per-bin flux, where ``flux`` is the per-bin value of the expression it acts on
          (``myconv(phabs*powerlaw)``).
    kind : {"add", "mul", "con"}
    parameters : sequence
        :class:`ParameterSpec` entries, or tuples ``(name, value[, unit, min, max, frozen])``
        or dicts of those fields, in XSPEC order (the order of ``function``'s arguments).
    description : str
        One line for :func:`bkgjax.spectral.list_components` (default: the first line of
        ``function``'s docstring).
    replace : bool
        Replace a component of the same name (a built-in too; :func:`unregister_component`
        restores it).

    Returns
    -------
    ComponentSpec
        The registered definition.

    Raises
    ------
    ValueError
        Naming the component: invalid or clashing name, unknown kind, invalid, duplicated or
        out-of-limits parameters, a function that cannot take ``2 (+1 for "con") + len(
        parameters)`` positional arguments, or whose trial evaluation on 8 bins of 0.5-10 keV
        at the default values raises, returns anything but a finite array of one value per
        bin, or cannot be traced by ``jax.jit``/``jax.vmap``.

    Examples
    --------
    ::

        def box(e_lo, e_hi, E_low, E_high, norm):
            '''Flat spectrum between E_low and E_high (photons/keV/cm^2/s).'''
            overlap = jnp.clip(jnp.minimum(e_hi, E_high) - jnp.maximum(e_lo, E_low), 0.0)
            return norm * overlap

        register_component("box", box, "add",
                           [ParameterSpec("E_low", 1.0, "keV", 0.0, 100.0),
                            ParameterSpec("E_high", 2.0, "keV", 0.0, 100.0),
                            ("norm", 1.0, "photons/keV/cm^2/s", 0.0, 1e24)])
        model = parse_model("constant*(box + powerlaw)")
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(f"component name {name!r} is not a valid name (ASCII letters, digits "
                         "and '_', not starting with a digit)")
    existing = _registered_name(name)
    if existing is not None:
        what = "built-in component" if existing in _BUILTINS else "registered component"
        if not replace:
            raise ValueError(f"component {name!r} clashes with the {what} {existing!r} (names "
                             "are case-insensitive); pass replace=True to replace it")
        if existing != name:
            raise ValueError(f"component {name!r} differs only in case from the {what} "
                             f"{existing!r}: spell it {existing!r} to replace it")
    if kind not in _KINDS:
        raise ValueError(f"component {name!r}: kind {kind!r} is not one of 'add' (additive), "
                         "'mul' (multiplicative) or 'con' (convolution)")
    if not callable(function):
        raise ValueError(f"component {name!r}: function {function!r} is not callable")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise ValueError(f"component {name!r}: description must be a string")
    params = _parameter_specs(name, parameters)
    _check_signature(name, function, kind, params)
    _trial_evaluation(name, function, kind, params)
    if not description:
        doc = inspect.getdoc(function) or ""
        description = doc.strip().splitlines()[0] if doc.strip() else f"user {_KINDS[kind]} component"
    # A new serial number for every registration: Model.structure (the jit-static key of the
    # fits) carries it, so a re-registered name is a new key and never a stale compiled fit.
    spec = ComponentSpec(name, kind, params, function, description, version=next(_SERIAL))
    COMPONENTS[name] = spec
    return spec


def unregister_component(name: str) -> None:
    """Remove a component added by :func:`register_component` (name matched ignoring case).

    A built-in that was replaced gets its original definition back; a built-in itself cannot
    be removed.  Models already built with the component can no longer be evaluated.
    """
    key = _registered_name(name) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"no component {name!r} is registered")
    if key in _BUILTINS:
        if COMPONENTS[key] is _BUILTINS[key]:
            raise ValueError(f"{key!r} is a built-in component and cannot be unregistered")
        COMPONENTS[key] = _BUILTINS[key]
        return
    del COMPONENTS[key]


def _origin(function):
    code = getattr(function, "__code__", None)
    where = getattr(code, "co_filename", None) or getattr(function, "__module__", None)
    return where, getattr(function, "__qualname__", None)


def _same_origin(a, b) -> bool:
    """Same source file (or module) and qualified name: the same definition, e.g. a module
    imported again, or by file path and by module name."""
    origin = _origin(a)
    return None not in origin and origin == _origin(b)


def user_component(function: Callable | None = None, *, kind: str, parameters,
                   name: str | None = None, description: str = "", replace: bool = False):
    """Decorator registering a function as a component when its module is imported.

    ::

        # mymodels.py
        import jax.numpy as jnp
        from bkgjax.spectral import ParameterSpec, user_component

        @user_component(kind="mul", parameters=[ParameterSpec("Edge", 7.1, "keV", 0.1, 100),
                                                ParameterSpec("Depth", 1.0, "", 0.0, 10)])
        def myedge(e_lo, e_hi, Edge, Depth):
            '''Sharp edge: exp(-Depth (E/Edge)^-3) above Edge.'''
            e = 0.5 * (e_lo + e_hi)
            return jnp.where(e < Edge, 1.0, jnp.exp(-Depth * (e / Edge) ** -3))

    then ``load_component("mymodels:myedge")`` (or ``import mymodels``) and
    ``parse_model("myedge*powerlaw")``.  Arguments are those of :func:`register_component`
    (``name`` defaults to the function's name); the function is returned unchanged, with its
    :class:`ComponentSpec` as ``__bkgjax_component__``.  Importing the same definition again
    (``importlib.reload``, or the file by path and by module name) replaces the component
    instead of failing on the name.
    """

    def decorate(fn):
        comp_name = getattr(fn, "__name__", None) if name is None else name
        existing = _registered_name(comp_name) if isinstance(comp_name, str) else None
        again = existing is not None and _same_origin(COMPONENTS[existing].function, fn)
        spec = register_component(comp_name, fn, kind, parameters, description,
                                  replace=replace or again)
        try:
            fn.__bkgjax_component__ = spec
        except (AttributeError, TypeError):  # an object that takes no attributes
            pass
        return fn

    return decorate if function is None else decorate(function)


def _import_file(path: str):
    """Import a Python file as a module (once per path and process)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path}")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_name = f"_bkgjax_user_{stem}_{abs(hash(path)):x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_component(target: str, *, replace: bool = False) -> str:
    """Import ``"package.module:attribute"`` (or ``"path/to/file.py:attribute"``) and register
    the component it defines; returns its registered name.

    The attribute is a :class:`ComponentSpec` (registered with :func:`register_component`) or
    a function decorated with :func:`user_component` (registered when its module was
    imported; registered again if it was unregistered since).  Loading the same definition
    twice is a no-op.  ``attribute`` may be dotted (``module:Class.method``).

    Raises
    ------
    ValueError
        Naming ``target``: malformed target, a module that cannot be imported, a missing
        attribute or one that is no component, or a registration error
        (:func:`register_component`).
    """
    prefix = f"load_component({target!r})"
    module_part, _, attribute = target.rpartition(":") if isinstance(target, str) else ("", "", "")
    if not module_part or not attribute:
        raise ValueError(f"{prefix}: expected 'module:attribute' (e.g. 'mypackage.models:myline') "
                         "or 'path/to/file.py:attribute'")
    try:
        if module_part.endswith(".py"):
            module = _import_file(module_part)
        else:
            module = importlib.import_module(module_part)
    except Exception as err:  # noqa: BLE001 - import errors, and registration errors at import
        raise ValueError(f"{prefix}: importing {module_part!r} failed: "
                         f"{type(err).__name__}: {err}") from err
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{prefix}: module {module_part!r} has no attribute "
                             f"{attribute!r}") from None
    try:
        if isinstance(obj, ComponentSpec):
            current = COMPONENTS.get(obj.name)
            if current is not None and current.function is obj.function \
                    and current.kind == obj.kind \
                    and current.params == _parameter_specs(obj.name, obj.params):
                return current.name
            return register_component(obj.name, obj.function, obj.kind, obj.params,
                                      obj.description, replace=replace).name
        spec = getattr(obj, "__bkgjax_component__", None)
        if isinstance(spec, ComponentSpec) and callable(obj):
            current = COMPONENTS.get(spec.name)
            if current is not None and current.function is obj:
                return current.name
            return register_component(spec.name, obj, spec.kind, spec.params, spec.description,
                                      replace=replace).name
    except ValueError as err:
        raise ValueError(f"{prefix}: {err}") from err
    raise ValueError(f"{prefix}: {attribute!r} is a {type(obj).__name__}, neither a "
                     "ComponentSpec nor a function decorated with "
                     "@bkgjax.spectral.user_component")


_ENVIRONMENT_LOADED = ""  # the value of $BKGJAX_COMPONENTS last loaded
_ENVIRONMENT_LOADING = False


def load_environment_components() -> tuple:
    """Load the components named in ``$BKGJAX_COMPONENTS`` (comma-separated
    ``module:attribute``, see :func:`load_component`), once per value of the variable;
    returns the names loaded now.  Called wherever a component is looked up by name, so that
    ``BKGJAX_COMPONENTS=mymodels:myline bkgjax fit-spectrum --model "myline + powerlaw"``
    works."""
    global _ENVIRONMENT_LOADED, _ENVIRONMENT_LOADING
    value = os.environ.get(COMPONENTS_ENV, "").strip()
    if value == _ENVIRONMENT_LOADED or _ENVIRONMENT_LOADING:
        return ()  # done, or a module being loaded builds models at import: no recursion
    names = []
    _ENVIRONMENT_LOADING = True
    try:
        for target in value.split(","):
            if target.strip():
                try:
                    names.append(load_component(target.strip()))
                except ValueError as err:
                    raise ValueError(f"${COMPONENTS_ENV}: {err}") from err
    finally:
        _ENVIRONMENT_LOADING = False
    _ENVIRONMENT_LOADED = value
    return tuple(names)
