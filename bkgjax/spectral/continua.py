r"""Model library: continua and lines (XSPEC names, parameters, defaults, units and hard limits
from XSPEC 12's ``model.dat``; formulas and norm conventions from the XSPEC manual and the
XSPEC model sources named in each docstring).

Additive components return photons/cm^2/s per bin, the exact integral of the photon spectrum
:math:`A(E)` over the bin; multiplicative ones the exact bin average of the factor.  XSPEC
itself often uses a two-point (trapezoid) or Simpson estimate of the bin integral (bbody,
bremss, logpar, highecut); bkgjax integrates the same density exactly, so the two agree
wherever the density is nearly linear across a bin.

=========  ====================================================  ==============================
component  :math:`A(E)` (additive) or :math:`M(E)` (mul.)         bin integral
=========  ====================================================  ==============================
zpowerlw   :math:`K\,[(1+z)E]^{-\Gamma}`                           closed form
bbody      :math:`K\,8.0525\,E^2/(kT^4\,(e^{E/kT}-1))`             closed form (Bose series)
bbodyrad   :math:`K\,1.0344\times10^{-3}\,E^2/(e^{E/kT}-1)`        closed form (Bose series)
zbbody     bbody at :math:`E(1+z)`                                 closed form (Bose series)
diskbb     Mitsuda et al. (1984) multicolour disc                  closed form (Bose series)
bremss     KBK (1975) Gaunt factor, H + He (XSPEC ``xsbrms``)      16-pt GL per smooth piece
logpar     :math:`K(E/E_p)^{-\alpha-\beta\log_{10}(E/E_p)}`        16-pt GL in ln E
lorentz    Lorentzian of FWHM ``Width``, normalised over E > 0     closed form (arctan)
zgauss     gaussian at :math:`E(1+z)`, divided by (1+z)            closed form (erfc)
agauss     Gaussian in wavelength (Angstrom)                       closed form (erfc)
highecut   1 below cutoffE, :math:`e^{(E_c-E)/E_f}` above          closed form
zhighect   highecut at :math:`E(1+z)`                              closed form
=========  ====================================================  ==============================

"Closed form (Bose series)": the blackbody integrals reduce to
:math:`\int t^{s-1}/(e^t-1)\,dt`, evaluated from the Bernoulli series below t = 2 and by
32-point Gauss-Laguerre above (both to ~1e-14 relative), so a bin deep in the Wien tail has
full relative precision and an overflowing :math:`e^{E/kT}` gives 0, never NaN.
"16-pt GL": 16-point Gauss-Legendre in ln E, relative error < 1e-12 for smooth densities over
bins up to a factor 2 wide (tests/test_continua.py checks 1e-9 against scipy.integrate.quad).

Redshifted components follow XSPEC's C++/Fortran sources: the model is evaluated on the
source-frame energies :math:`E(1+z)` and additive ones are divided by (1+z) (time dilation),
so a zpowerlw norm is the source-frame flux density at 1 keV.

``nthcomp`` is not provided (it needs XSPEC's Kompaneets-equation solution, ``donthcomp``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from .components import (
    ComponentSpec,
    ParameterSpec,
    exprel,
    gaussian_fraction,
    integrate_log,
    powerlaw_integral,
)

__all__ = ["SPECS", "KEV_TO_ANGSTROM", "bremss_density", "bremss_gaunt"]

#: XSPEC's keV -> Angstrom conversion hc (``Numerics::KEVTOA``, CODATA 2014), used by agauss.
KEV_TO_ANGSTROM = 12.39841974

#: The coefficient of bbody's A(E) (XSPEC's xsblbd.f/xszbod.f): with K = 1 (L39/D10^2) the
#: whole spectrum carries 1.0024 x 1e39 erg/s / (4 pi (10 kpc)^2) of energy flux.
BBODY_CONSTANT = 8.0525
#: The coefficient of bbodyrad's A(E) (XSPEC's xsbbrd.f), K = R_km^2/D10^2; the exact
#: pi (1 km / 10 kpc)^2 2/(h^3 c^2) is 1.03801e-3 photons/cm^2/s/keV^3 (0.35 % more).
BBODYRAD_CONSTANT = 1.0344e-3
#: diskbb's ``normfact`` of XSPEC's xsdskb.f: A(E) = K/361 * integral (see :func:`_diskbb`).
#: (8/3) pi (1 km / 10 kpc)^2 2/(h^3 c^2) = 1/361.27: 0.075 % less.
DISKBB_NORMFACT = 361.0
#: n(He)/n(H) of XSPEC's bremss (xsbrms.f passes 0.085 to xsbrmv.f)
BREMSS_HELIUM_RATIO = 0.085

# ----------------------------------------------------------------------------------------------
# Bose integrals  B_s(a, b) = int_a^b t^(s-1)/(e^t - 1) dt  for s = 3 (blackbody photons) and
# s = 8/3 (the multicolour disc).
#
# Below t = _BOSE_SPLIT:  t/(e^t-1) = sum_n B_n t^n/n!  (radius 2 pi), so
#     int_0^x t^(s-1)/(e^t-1) dt = x^(s-1) [1/(s-1) - x/(2s) + sum_k B_2k/(2k)! x^2k/(2k+s-1)],
#   16 even terms: (2/2pi)^32 < 1e-15.
# Above it:  int_x^inf f(t)/(e^t-1) dt = e^-x int_0^inf e^-y f(x+y)/(1-e^-(x+y)) dy by
#   32-point Gauss-Laguerre (1e-14 relative for x >= 2, checked against quad); e^-x underflows
#   to 0 in the far Wien tail.
# A bin [a, b] takes the difference of the lower integrals when a < split (so that small-x
# bins keep their relative precision), else of the upper ones (so that Wien-tail bins do).

_BOSE_SPLIT = 2.0
_LAGUERRE_NODES, _LAGUERRE_WEIGHTS = np.polynomial.laguerre.laggauss(32)
_ZETA3 = 1.2020569031595942  # zeta(3)
_GAMMA_ZETA_8_3 = 1.932161609089239  # Gamma(8/3) zeta(8/3) = int_0^inf t^(5/3)/(e^t-1) dt


def _bernoulli_even(count):
    """B_2k/(2k)! for k = 1..count (exact rationals from the recurrence, then floats)."""
    b = [Fraction(1)]
    for m in range(1, 2 * count + 1):
        b.append(-sum(math.comb(m + 1, k) * b[k] for k in range(m)) / (m + 1))
    return tuple(float(b[2 * k] / math.factorial(2 * k)) for k in range(1, count + 1))


_BERNOULLI_EVEN = _bernoulli_even(16)


def _bose_lower(x, s):
    r""":math:`\int_0^x t^{s-1}/(e^t-1)\,dt` for :math:`0 < x \le 2` (Bernoulli series)."""
    x2 = x * x
    total = 1.0 / (s - 1.0) - x / (2.0 * s)
    power = jnp.ones_like(x)
    for k, coefficient in enumerate(_BERNOULLI_EVEN, start=1):
        power = power * x2
        total = total + coefficient * power / (2 * k + s - 1.0)
    return jnp.exp((s - 1.0) * jnp.log(x)) * total


def _bose_upper(x, weight):
    r""":math:`\int_x^\infty w(t, x)/(e^t-1)\,dt` for :math:`x \ge 2` (Gauss-Laguerre)."""
    t = x[..., None] + _LAGUERRE_NODES
    integrand = weight(t, x[..., None]) / (-jnp.expm1(-t))
    return jnp.exp(-x) * jnp.sum(_LAGUERRE_WEIGHTS * integrand, axis=-1)


def _split_difference(x_lo, x_hi, lower, upper, total):
    r""":math:`F(x_{hi}) - F(x_{lo})` of a cumulative :math:`F` with :math:`F(\infty) =`
    ``total``, from ``lower(x)`` (= F, used below the split) and ``upper(x)`` (= total - F,
    used above it); each is evaluated only on its side (double where)."""

    def both(x):
        small = x < _BOSE_SPLIT
        below = lower(jnp.minimum(x, _BOSE_SPLIT))
        above = upper(jnp.maximum(x, _BOSE_SPLIT))
        return jnp.where(small, below, total - above), jnp.where(small, total - below, above)

    lo_lower, lo_upper = both(x_lo)
    hi_lower, hi_upper = both(x_hi)
    return jnp.where(x_lo >= _BOSE_SPLIT, lo_upper - hi_upper, hi_lower - lo_lower)


def _planck_photons(x_lo, x_hi):
    r""":math:`\int_{x_{lo}}^{x_{hi}} x^2/(e^x-1)\,dx` (0 < x_lo <= x_hi)."""
    return _split_difference(x_lo, x_hi, lambda x: _bose_lower(x, 3.0),
                             lambda x: _bose_upper(x, lambda t, _: t * t), 2.0 * _ZETA3)


def _redshift_factor(redshift):
    """1 + z (model.dat's hard limit z >= -0.999 keeps it >= 1e-3; floored there anyway)."""
    return jnp.maximum(1.0 + redshift, 1e-3)


def _safe_positive(value):
    """(value > 0, value where > 0 else 1): the second is safe to divide by (double where)."""
    positive = value > 0
    return positive, jnp.where(positive, value, 1.0)


# ----------------------------------------------------------------------------------------------
# Additive continua


def _zpowerlw(e_lo, e_hi, PhoIndex, Redshift, norm):
    r"""XSPEC ``zpowerlw``: :math:`A(E) = K\,[(1+z)E]^{-\Gamma}` (XSPEC's ``zpowerLaw``
    integrates the power law over the source-frame bin :math:`[(1+z)e_{lo}, (1+z)e_{hi}]` and
    divides by 1+z); K is photons/keV/cm^2/s at 1 keV in the source frame.  Closed form."""
    zfac = _redshift_factor(Redshift)
    return norm * jnp.exp(-PhoIndex * jnp.log(zfac)) * powerlaw_integral(e_lo, e_hi, PhoIndex)


def _blackbody_bins(e_lo, e_hi, kT):
    r""":math:`\int_{e_{lo}}^{e_{hi}} E^2/(e^{E/kT}-1)\,dE / kT^3` (kT > 0), closed form."""
    return _planck_photons(e_lo / kT, e_hi / kT)


def _bbody(e_lo, e_hi, kT, norm):
    r"""XSPEC ``bbody``: :math:`A(E) = K\,\frac{8.0525\,E^2}{kT^4\,(e^{E/kT}-1)}`,
    K = :math:`L_{39}/D_{10}^2` (luminosity in 1e39 erg/s over the squared distance in units
    of 10 kpc; the constant gives 1.0024 times that energy flux, see
    :data:`BBODY_CONSTANT`).  Closed-form bin integral (module docstring); XSPEC's xsblbd.f
    uses the trapezoid rule and sets bins beyond E/kT = 60 to 0."""
    return norm * (BBODY_CONSTANT / kT) * _blackbody_bins(e_lo, e_hi, kT)


def _bbodyrad(e_lo, e_hi, kT, norm):
    r"""XSPEC ``bbodyrad``: :math:`A(E) = K\,\frac{1.0344\times10^{-3}\,E^2}{e^{E/kT}-1}`,
    K = :math:`R_{km}^2/D_{10}^2` (source radius in km over distance in 10 kpc, squared).
    Closed-form bin integral."""
    return norm * (BBODYRAD_CONSTANT * kT**3) * _blackbody_bins(e_lo, e_hi, kT)


def _zbbody(e_lo, e_hi, kT, Redshift, norm):
    r"""XSPEC ``zbbody``: bbody of source-frame temperature kT at redshift z,
    :math:`A(E) = K\,\frac{8.0525\,[E(1+z)]^2}{kT^4\,(e^{E(1+z)/kT}-1)}` (xszbod.f: bbody on
    :math:`E(1+z)`, divided by 1+z); K = :math:`L_{39}/D_{10}^2`.  Closed form."""
    zfac = _redshift_factor(Redshift)
    return _bbody(e_lo * zfac, e_hi * zfac, kT, norm) / zfac


def _diskbb_lower(eps):
    r""":math:`G(\epsilon) = \int_0^\epsilon u^{-2/3}J(u)\,du
    = 3\epsilon^{1/3}J(\epsilon) + 3\int_0^\epsilon t^2/(e^t-1)\,dt` for :math:`\epsilon\le2`
    (integration by parts, :math:`J' = -\epsilon^{5/3}/(e^\epsilon-1)`)."""
    tail = _GAMMA_ZETA_8_3 - _bose_lower(eps, 8.0 / 3.0)  # J(eps)
    return 3.0 * jnp.cbrt(eps) * tail + 3.0 * _bose_lower(eps, 3.0)


def _diskbb_upper_weight(t, eps):
    r""":math:`3t^{5/3}(t^{1/3}-\epsilon^{1/3})` without cancellation:
    :math:`t^{1/3}-\epsilon^{1/3} = (t-\epsilon)/(t^{2/3}+t^{1/3}\epsilon^{1/3}+\epsilon^{2/3})`."""
    ct, ce = jnp.cbrt(t), jnp.cbrt(eps)
    return 3.0 * t * ct * ct * (t - eps) / (ct * ct + ct * ce + ce * ce)


def _diskbb(e_lo, e_hi, Tin, norm):
    r"""XSPEC ``diskbb`` (Mitsuda et al. 1984, PASJ 36, 741; Makishima et al. 1986): the
    multicolour disc, :math:`T(r) = T_{in}(r/r_{in})^{-3/4}` out to infinity,

    .. math:: A(E) = \frac{K}{361}\int_0^1 t^{-11/3}\,\frac{E^2}{e^{E/(t\,T_{in})}-1}\,dt
              = \frac{K\,T_{in}^2}{361}\,\epsilon^{-2/3}J(\epsilon),\quad
              J(\epsilon) = \int_\epsilon^\infty \frac{u^{5/3}}{e^u-1}\,du,\;
              \epsilon = E/T_{in},

    K = :math:`(R_{in}/D_{10})^2\cos i` (:math:`R_{in}` in km).  XSPEC's xsdskb.f evaluates
    this with Mitsuda's interpolation formula (stated 1e-5 accurate) and 5-point
    Gauss-Legendre per bin; 361 is its ``normfact`` (:data:`DISKBB_NORMFACT`).  Here the bin
    integral is exact: :math:`\int\epsilon^{-2/3}J\,d\epsilon` has the closed form of
    :func:`_diskbb_lower` below :math:`\epsilon = 2` and, above,
    :math:`\int_\epsilon^\infty = 3\int_\epsilon^\infty t^{5/3}(t^{1/3}-\epsilon^{1/3})
    /(e^t-1)\,dt` by Gauss-Laguerre (module docstring).  Tin = 0 gives 0."""
    hot, tin = _safe_positive(Tin)
    integral = _split_difference(e_lo / tin, e_hi / tin, _diskbb_lower,
                                 lambda x: _bose_upper(x, _diskbb_upper_weight), 6.0 * _ZETA3)
    return jnp.where(hot, norm * tin**3 / DISKBB_NORMFACT * integral, 0.0)


def _logpar(e_lo, e_hi, alpha, beta, pivotE, norm):
    r"""XSPEC ``logpar``: :math:`A(E) = K\,(E/E_p)^{-\alpha-\beta\log_{10}(E/E_p)}`
    (logpar.f, Massaro et al. 2004); K is photons/keV/cm^2/s at the pivot energy
    :math:`E_p` (``pivotE``, frozen in XSPEC).  16-point Gauss-Legendre in ln E per bin
    (XSPEC: Simpson's rule)."""
    log_pivot = jnp.log(pivotE)

    def shape(energy):
        log_ratio = jnp.log(energy) - log_pivot
        return jnp.exp(-(alpha + beta * log_ratio / math.log(10.0)) * log_ratio)

    return norm * integrate_log(shape, e_lo, e_hi)


# Bremsstrahlung: XSPEC's bremss (xsbrms.f -> xsbrmv.f with n(He)/n(H) = 0.085) is
#   A(E) = K T^-1/2 [g(E,T,1) + 4 * 0.085 g(E,T,2)] exp(-E/T) / E   for E < 50 T, else 0,
# with the thermally averaged Gaunt factor g of XSPEC's gaunt.f: the Kellogg, Baldwin & Koch
# (1975, ApJ 199, 299) fit to Karzas & Latter (1961) with Molnar's and Hughes's corrections
# (four coefficients of the last gamma column differ from the paper: 1.020, 0.6017, -3.175
# and -0.2270), and Kurucz's table for low temperatures (gamma > 0.1).  Both
# tables are published data, arranged here [n][m] (n: range of u = E/T, m: range of
# gamma * 1000, gamma = Z^2 0.01358 / T).

#: KBK correction g = (a0 + a1 u + a2 u^2) * Born, coefficients [a_i][n - 1][m - 1]
_KBK = np.array([
    [[1.001, 1.001, .9991, .997, .9962, .9874, .9681],
     [1.004, 1.005, 1.005, 1.005, 1.004, .9962, .9755],
     [1.017, 1.017, 1.03, 1.035, 1.042, 1.047, 1.020],
     [1.036, 1.046, 1.055, 1.069, 1.1, 1.156, 1.208],
     [1.056, 1.073, 1.102, 1.134, 1.193, 1.327, 1.525],
     [1.121, 1.115, 1.176, 1.186, 1.306, 1.485, 1.965]],
    [[.3029, .4905, .654, 1.029, .9569, 1.236, 1.327],
     [.1616, .2155, .2833, .391, .4891, .7579, 1.017],
     [.04757, .08357, .08057, .1266, .1764, .326, .6017],
     [.013, .02041, .03257, .05149, .05914, .1077, .205],
     [.0049, .00739, .00759, .01274, .01407, .028, .0605],
     [-.0032, .00029, -.00151, .00324, -.00024, .00548, .00187]],
    [[-1.323, -4.762, -6.349, -13.231, -7.672, -7.143, -3.175],
     [-.254, -.3386, -.4206, -.59, -.6852, -.9947, -1.116],
     [-.01571, -.03571, -.02571, -.04571, -.0643, -.12, -.2270],
     [-.001, -.001786, -.003429, -.005714, -.005857, -.01007, -.01821],
     [-.000184, -.0003, -.000234, -.000445, -.00042, -.000851, -.001729],
     [.00008, .00001, .00005, -.00004, .00004, -.00004, .00023]],
])
#: upper ends of the u ranges of rows n = 1..5 (row 6 above); u < 0.003 is taken as 0.003
_KBK_U_EDGES = (0.03, 0.30, 1.0, 5.0, 15.0)
_KBK_U_FLOOR = 0.003
#: upper ends of the gamma*1000 ranges of columns m = 1..5 (m = 6 above, up to 100), and the
#: start and width of each range for the linear interpolation between columns m and m + 1
_KBK_GAMMA_EDGES = (1.773, 3.0, 5.6234, 10.0, 30.0)
_KBK_GAMMA_START = np.array([1.0, 1.7783, 3.0, 5.6234, 10.0, 30.0])
_KBK_GAMMA_WIDTH = np.array([.7783, 1.2217, 2.6234, 4.3766, 20.0, 70.0])

#: Kurucz's low-temperature Gaunt factors [k - 1][j - 1] on log10(gamma) = (j - 3)/2,
#: j = 1..7, and log10(u) = (k - 9)/2, k = 1..12 (bilinear in the logs; 0 beyond k = 12)
_KURUCZ = np.array([
    [5.40, 5.25, 5.00, 4.69, 4.48, 4.16, 3.85],
    [4.77, 4.63, 4.40, 4.13, 3.87, 3.52, 3.27],
    [4.15, 4.02, 3.80, 3.57, 3.27, 2.98, 2.70],
    [3.54, 3.41, 3.22, 2.97, 2.70, 2.45, 2.20],
    [2.94, 2.81, 2.65, 2.44, 2.21, 2.01, 1.81],
    [2.41, 2.32, 2.19, 2.02, 1.84, 1.67, 1.50],
    [1.95, 1.90, 1.80, 1.68, 1.52, 1.41, 1.30],
    [1.55, 1.56, 1.51, 1.42, 1.33, 1.25, 1.17],
    [1.17, 1.30, 1.32, 1.30, 1.20, 1.15, 1.11],
    [0.86, 1.00, 1.15, 1.18, 1.15, 1.11, 1.08],
    [0.59, 0.76, 0.97, 1.09, 1.13, 1.10, 1.08],
    [0.38, 0.53, 0.76, 0.96, 1.08, 1.09, 1.09],
])
_GAUNT_U_MAX = 50.0  # XSPEC: no emission at E >= 50 kT
#: every u = E/kT where the Gaunt factor jumps or kinks, for either charge at any T: the
#: KBK row edges and floor, the switch between the two Born approximations (u/4 = 1), the
#: Kurucz grid and the cut-off.  The bin integral is split there.
_BREMSS_BREAKS = tuple(sorted({*_KBK_U_EDGES, _KBK_U_FLOOR, 4.0, _GAUNT_U_MAX,
                               *(10.0 ** ((k - 9) / 2) for k in range(2, 13))}))


def _born_gaunt(u):
    r"""Born-approximation Gaunt factor :math:`(\sqrt3/\pi)\,e^{u/2}K_0(u/2)` with the
    Abramowitz & Stegun 9.8.1/9.8.5/9.8.6 polynomials for :math:`I_0` and :math:`K_0` used
    by gaunt.f (relative error ~1e-7)."""
    x = 0.5 * u
    small = x <= 2.0
    xs = jnp.minimum(x, 2.0)
    t2 = (xs / 3.75) ** 2
    i0 = 1.0 + t2 * (3.5156229 + t2 * (3.089942 + t2 * (1.2067492 + t2 * (
        .2659732 + t2 * (.0360768 + t2 * .0045813)))))
    h2 = (0.5 * xs) ** 2
    k0 = -jnp.log(0.5 * xs) * i0 - .57721566 + h2 * (.4227842 + h2 * (.23069756 + h2 * (
        .0348859 + h2 * (.00262698 + h2 * (.0001075 + h2 * .0000074)))))
    small_x = 0.5513 * jnp.exp(xs) * k0
    xl = jnp.maximum(x, 2.0)
    w = -2.0 / xl  # -(2/x), the A&S 9.8.6 variable with its alternating sign
    scaled = 1.25331414 + w * (.07832358 + w * (.02189568 + w * (.01062446 + w * (
        .00587872 + w * (.0025154 + w * .00053208)))))  # sqrt(x) e^x K0(x)
    large_x = 0.5513 * scaled / jnp.sqrt(xl)
    return jnp.where(small, small_x, large_x)


def _kbk_gaunt(u, gamma_k):
    """KBK polynomial correction of the Born value, interpolated linearly in gamma*1000."""
    u_poly = jnp.maximum(u, _KBK_U_FLOOR)
    row = sum((u_poly > edge).astype(jnp.int32) for edge in _KBK_U_EDGES)
    column = sum((gamma_k > edge).astype(jnp.int32) for edge in _KBK_GAMMA_EDGES)
    table = jnp.asarray(_KBK)
    poly = lambda m: (table[0, row, m] + table[1, row, m] * u_poly  # noqa: E731
                      + table[2, row, m] * u_poly * u_poly)
    weight = (gamma_k - jnp.asarray(_KBK_GAMMA_START)[column]) / jnp.asarray(
        _KBK_GAMMA_WIDTH)[column]
    return ((1.0 - weight) * poly(column) + weight * poly(column + 1)) * _born_gaunt(u)


def _kurucz_gaunt(u, gamma):
    """Kurucz's table, bilinear in (log10 gamma, log10 u); 0 outside it (gaunt.f KURUCZ)."""
    rj = 2.0 * jnp.log10(gamma) + 3.0
    j = jnp.floor(rj)
    rk = 2.0 * jnp.log10(u) + 9.0
    k = jnp.maximum(jnp.floor(rk), 1.0)  # below the grid: extrapolated from the first cell
    outside = (j < 1) | (j >= 7) | (k >= 12)
    jc = jnp.clip(j, 1, 6).astype(jnp.int32) - 1
    kc = jnp.clip(k, 1, 11).astype(jnp.int32) - 1
    ft, fu = rj - j, rk - k
    table = jnp.asarray(_KURUCZ)
    value = ((1 - ft) * (1 - fu) * table[kc, jc] + ft * (1 - fu) * table[kc, jc + 1]
             + ft * fu * table[kc + 1, jc + 1] + (1 - ft) * fu * table[kc + 1, jc])
    return jnp.where(outside, 0.0, value)


def bremss_gaunt(energy, kT, charge):
    r"""Thermally averaged free-free Gaunt factor of XSPEC's gaunt.f for ions of ``charge``
    (1 or 2) at ``energy`` keV in a plasma of ``kT`` keV: Kurucz's table when
    :math:`\gamma = Z^2\,0.01358/kT > 0.1`, else the Born value, corrected by the KBK
    polynomials when :math:`1000\gamma \ge 1`; 0 at and above :math:`E = 50\,kT`."""
    u = jnp.minimum(energy / kT, _GAUNT_U_MAX)
    gamma = charge * charge * 0.01358 / kT
    gamma_k = jnp.minimum(1000.0 * gamma, 100.0)
    value = jnp.where(gamma > 0.1, _kurucz_gaunt(u, jnp.maximum(gamma, 0.1)),
                      jnp.where(gamma_k < 1.0, _born_gaunt(u),
                                _kbk_gaunt(u, jnp.clip(gamma_k, 1.0, 100.0))))
    return jnp.where(energy < _GAUNT_U_MAX * kT, value, 0.0)


def bremss_density(energy, kT, norm=1.0):
    r"""XSPEC ``bremss`` photon spectrum (photons/cm^2/s/keV) at ``energy`` keV:
    :math:`K\,kT^{-1/2}\,[g(E,kT,1) + 4\cdot0.085\,g(E,kT,2)]\,e^{-E/kT}/E` (xsbrmv.f)."""
    gaunt = (bremss_gaunt(energy, kT, 1.0)
             + 4.0 * BREMSS_HELIUM_RATIO * bremss_gaunt(energy, kT, 2.0))
    u = jnp.minimum(energy / kT, _GAUNT_U_MAX)
    return norm * gaunt * jnp.exp(-u) / (jnp.sqrt(kT) * energy)


def _bremss(e_lo, e_hi, kT, norm):
    r"""XSPEC ``bremss``: thermal bremsstrahlung of hydrogen with n(He)/n(H) = 0.085
    (:func:`bremss_density`), K = :math:`3.02\times10^{-15}/(4\pi D^2)\int n_e n_H\,dV`
    (D in cm).  XSPEC's xsbrmv.f uses the trapezoid rule per bin.  Here the bin edges and
    every energy where the Gaunt factor jumps or kinks (:data:`_BREMSS_BREAKS` times kT) are
    merged into one sorted grid, each interval of it (smooth) is integrated by 16-point
    Gauss-Legendre in ln E (< 1e-12 relative), and each bin sums the intervals inside it:
    exact, at ~2 quadratures per bin whatever the bins.  Bins must not overlap (bkgjax's
    grids are increasing)."""
    shape = jnp.shape(e_lo)
    e_lo, e_hi = jnp.ravel(e_lo), jnp.ravel(e_hi)
    order = jnp.argsort(e_lo)  # a bin's intervals are found among the bins sorted by e_lo
    points = jnp.sort(jnp.concatenate([e_lo, e_hi, kT * jnp.asarray(_BREMSS_BREAKS)]))
    lower, upper = points[:-1], points[1:]
    pieces = integrate_log(lambda e: bremss_density(e, kT), lower, upper)
    middle = 0.5 * (lower + upper)
    rank = jnp.clip(jnp.searchsorted(e_lo[order], middle, side="right") - 1, 0, e_lo.size - 1)
    owner = order[rank]
    inside = (middle >= e_lo[owner]) & (middle < e_hi[owner])
    per_bin = jax.ops.segment_sum(jnp.where(inside, pieces, 0.0), owner,
                                  num_segments=e_lo.size)
    return norm * per_bin.reshape(shape)


# ----------------------------------------------------------------------------------------------
# Additive lines


def _arctan_difference(a, b, width):
    r""":math:`\arctan b - \arctan a` for a <= b, ``width`` = b - a computed directly: as
    :math:`\arctan((b-a)/(1+ab))` when a and b have the same sign, which keeps the relative
    precision of far-wing bins (no difference of nearly equal arctangents or abscissae)."""
    same_side = a * b > 0
    denominator = jnp.where(same_side, 1.0 + a * b, 1.0)
    return jnp.where(same_side, jnp.arctan(width / denominator), jnp.arctan(b) - jnp.arctan(a))


def _lorentz(e_lo, e_hi, LineE, Width, norm):
    r"""XSPEC ``lorentz``: :math:`A(E) = K\,\frac{c\,W/2}{(E-E_l)^2 + (W/2)^2}`, W = Width
    (FWHM), renormalised so that the line integrates to K over E > 0:
    :math:`c = 1/(\pi/2 + \arctan(2E_l/W))` (XSPEC's calcLines.cxx ``lnorm``), so a bin holds
    :math:`K c\,[\arctan(2(e_{hi}-E_l)/W) - \arctan(2(e_{lo}-E_l)/W)]`.  Width = 0 puts all
    of K in the bin holding LineE."""
    has_width, width = _safe_positive(Width)
    half = 0.5 * width
    spread = _arctan_difference((e_lo - LineE) / half, (e_hi - LineE) / half,
                                (e_hi - e_lo) / half)
    renorm = 0.5 * math.pi + jnp.arctan(LineE / half)
    delta = ((e_lo <= LineE) & (LineE < e_hi)).astype(e_lo.dtype)
    return norm * jnp.where(has_width, spread / renorm, delta)


def _zgauss(e_lo, e_hi, LineE, Sigma, Redshift, norm):
    r"""XSPEC ``zgauss``: the gaussian line (LineE, Sigma in the source frame) evaluated on
    :math:`E(1+z)` and divided by 1+z (xszgau.cxx): observed at LineE/(1+z) with width
    Sigma/(1+z) and K/(1+z) photons/cm^2/s in total.  Closed form."""
    zfac = _redshift_factor(Redshift)
    return norm * gaussian_fraction(e_lo * zfac, e_hi * zfac, LineE, Sigma) / zfac


def _agauss(e_lo, e_hi, LineE, Sigma, norm):
    r"""XSPEC ``agauss``: a Gaussian in wavelength, :math:`A(\lambda) =
    \frac{K}{\sqrt{2\pi}\sigma}e^{-(\lambda-\lambda_l)^2/2\sigma^2}` with LineE
    (:math:`\lambda_l`) and Sigma in Angstrom; the bin [e_lo, e_hi] keV is
    :math:`[hc/e_{hi}, hc/e_{lo}]`, hc = :data:`KEV_TO_ANGSTROM` (agauss.cxx).  K is the total
    photons/cm^2/s.  Closed form; Sigma = 0 puts K in the bin holding hc/LineE."""
    lam_lo = KEV_TO_ANGSTROM / e_hi
    lam_hi = KEV_TO_ANGSTROM / e_lo
    return norm * gaussian_fraction(lam_lo, lam_hi, LineE, Sigma)


# ----------------------------------------------------------------------------------------------
# Multiplicative


def _highecut(e_lo, e_hi, cutoffE, foldE):
    r"""XSPEC ``highecut``: :math:`M(E) = 1` for :math:`E \le E_c`,
    :math:`e^{(E_c-E)/E_f}` above (cutoffE :math:`E_c`, foldE :math:`E_f`), the exact bin
    average (closed form, also for a bin holding :math:`E_c`).  XSPEC's xshecu.f averages the
    two edge values and floors E - E_c at 0.001 keV, i.e. it gives
    :math:`e^{-0.001/E_f}` (not 1) below the cut-off."""
    width = e_hi - e_lo
    below = jnp.clip(jnp.minimum(e_hi, cutoffE) - e_lo, 0.0, None)
    start = jnp.maximum(e_lo, cutoffE)
    above = jnp.clip(e_hi - start, 0.0, None)
    # int_start^e_hi exp((E_c - E)/E_f) dE, stable for any E_f (expdec's form)
    folded = jnp.exp((cutoffE - start) / foldE) * above * exprel(-above / foldE)
    return (below + folded) / width


def _zhighect(e_lo, e_hi, cutoffE, foldE, Redshift):
    r"""XSPEC ``zhighect``: highecut at :math:`E(1+z)` (xszhcu.f; cutoffE and foldE in the
    source frame).  Exact bin average."""
    zfac = _redshift_factor(Redshift)
    return _highecut(e_lo * zfac, e_hi * zfac, cutoffE, foldE)


# ----------------------------------------------------------------------------------------------
# Registry entries (model.dat of XSPEC 12.15: name, default, unit, hard min, hard max; a
# negative fit delta there, e.g. every Redshift, means frozen by default)


def _redshift():
    return ParameterSpec("Redshift", 0.0, "", -0.999, 10.0, frozen=True)


def _norm(unit):
    return ParameterSpec("norm", 1.0, unit, 0.0, 1e24)


def _kev(name, default, low, high):
    return ParameterSpec(name, default, "keV", low, high)


_PHOTON_DENSITY = "photons/keV/cm^2/s"
_LINE_FLUX = "photons/cm^2/s"
_BLACKBODY_KT = _kev("kT", 3.0, 1e-4, 200.0)
_L39_D10 = "L39/D10^2"

#: The ComponentSpecs of this module, added to :data:`bkgjax.spectral.components.COMPONENTS`.
SPECS: tuple = (
    ComponentSpec("zpowerlw", "add", (
        ParameterSpec("PhoIndex", 1.0, "", -3.0, 10.0), _redshift(), _norm(_PHOTON_DENSITY)),
        _zpowerlw, "redshifted power law K ((1+z) E)^-PhoIndex"),
    ComponentSpec("bbody", "add", (_BLACKBODY_KT, _norm(_L39_D10)), _bbody,
                  "blackbody K 8.0525 E^2/(kT^4 (exp(E/kT)-1)), norm L39/D10^2"),
    ComponentSpec("bbodyrad", "add", (_BLACKBODY_KT, _norm("R_km^2/D10^2")), _bbodyrad,
                  "blackbody K 1.0344e-3 E^2/(exp(E/kT)-1), norm R_km^2/D10^2"),
    ComponentSpec("zbbody", "add", (_BLACKBODY_KT, _redshift(), _norm(_L39_D10)), _zbbody,
                  "redshifted blackbody (bbody at E(1+z), divided by 1+z)"),
    ComponentSpec("diskbb", "add", (
        _kev("Tin", 1.0, 0.0, 1000.0), _norm("(R_in/D10)^2 cos(i)")), _diskbb,
        "multicolour disc blackbody (Mitsuda et al. 1984), norm (R_in_km/D10)^2 cos(i)"),
    ComponentSpec("bremss", "add", (
        _kev("kT", 7.0, 1e-4, 200.0), _norm("3.02e-15/(4 pi D^2) int n_e n_H dV")), _bremss,
        "thermal bremsstrahlung, KBK (1975) Gaunt factor, n(He)/n(H) = 0.085"),
    ComponentSpec("logpar", "add", (
        ParameterSpec("alpha", 1.5, "", 0.0, 4.0), ParameterSpec("beta", 0.2, "", -4.0, 4.0),
        ParameterSpec("pivotE", 1.0, "keV", 1e-10, 1e10, frozen=True),
        _norm(_PHOTON_DENSITY)), _logpar,
        "log-parabola K (E/pivotE)^(-alpha - beta log10(E/pivotE))"),
    ComponentSpec("lorentz", "add", (
        _kev("LineE", 6.5, 0.0, 1e6), _kev("Width", 0.1, 0.0, 20.0), _norm(_LINE_FLUX)),
        _lorentz, "Lorentzian line of FWHM Width, norm = photons/cm^2/s over E > 0"),
    ComponentSpec("zgauss", "add", (
        _kev("LineE", 6.5, 0.0, 1e6), _kev("Sigma", 0.1, 0.0, 20.0), _redshift(),
        _norm(_LINE_FLUX)), _zgauss,
        "redshifted Gaussian line (source-frame LineE, Sigma; flux norm/(1+z))"),
    ComponentSpec("agauss", "add", (
        ParameterSpec("LineE", 10.0, "A", 0.0, 1e6), ParameterSpec("Sigma", 1.0, "A", 0.0, 1e6),
        _norm(_LINE_FLUX)), _agauss,
        "Gaussian line in wavelength: LineE and Sigma in Angstrom"),
    ComponentSpec("highecut", "mul", (
        _kev("cutoffE", 10.0, 1e-4, 1e6), _kev("foldE", 15.0, 1e-4, 1e6)),
        _highecut, "high-energy cut-off: 1 below cutoffE, exp((cutoffE-E)/foldE) above"),
    ComponentSpec("zhighect", "mul", (
        _kev("cutoffE", 10.0, 1e-4, 200.0), _kev("foldE", 15.0, 1e-4, 200.0), _redshift()),
        _zhighect, "redshifted high-energy cut-off (highecut at E(1+z))"),
)
