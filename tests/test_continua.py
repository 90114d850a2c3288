"""Continua and lines (bkgjax.spectral.continua) against independent references.

Each XSPEC density is written again here from the XSPEC manual/source formula and integrated
with scipy.integrate.quad (or in closed form); the norm conventions are checked against the
physical constants; Sherpa 4.19 values (tests/reference/make_sherpa_continua_reference.py)
cover the components Sherpa has without XSPEC.
"""

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import constants, special
from scipy.integrate import quad

import bkgjax.spectral
from bkgjax.fit import SpectralData, fit
from bkgjax.spectral import KEV_TO_ERG, component, continua, energy_flux, parse_model
from bkgjax.spectral.components import COMPONENTS
from bkgjax.spectral.continua import KEV_TO_ANGSTROM, bremss_density, bremss_gaunt

NAMES = ("zpowerlw", "bbody", "bbodyrad", "zbbody", "diskbb", "bremss", "logpar", "lorentz",
         "zgauss", "agauss", "highecut", "zhighect")
REFERENCE = json.loads((Path(__file__).parent / "reference"
                        / "sherpa_continua_reference.json").read_text())
KPC_CM = 3.0856775814913673e21
KEV_J = 1e3 * constants.e
H_KEV_S = constants.h / KEV_J
C_CM_S = 100.0 * constants.c
#: 2/(h^3 c^2): photons/cm^2/s/keV/sr per keV^2 of a blackbody's E^2/(e^(E/kT)-1)
PLANCK_PHOTONS = 2.0 / (H_KEV_S**3 * C_CM_S**2)
SOLID_ANGLE_1KM_10KPC = math.pi * (1e5 / (10.0 * KPC_CM)) ** 2

FINE = np.geomspace(0.01, 300.0, 61)  # bins a factor 1.18 wide
WIDE = np.geomspace(0.01, 300.0, 16)  # bins a factor 1.99 wide


@functools.cache
def compiled(name):
    """The component's function under jax.jit (compiled once per shape: fast tests)."""
    return jax.jit(COMPONENTS[name].function)


def evaluate(name, edges, **values):
    """Per-bin values of component ``name`` at its defaults overridden by ``values``."""
    params = [jnp.asarray(float(values.get(p.name, p.value))) for p in COMPONENTS[name].params]
    return np.asarray(compiled(name)(jnp.asarray(edges[:-1]), jnp.asarray(edges[1:]), *params))


def integrate(density, edges, points=()):
    """quad of ``density`` over each bin, split at the ``points`` inside it."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = [p for p in points if lo < p < hi]
        out.append(quad(density, lo, hi, epsabs=0.0, epsrel=1e-12, limit=400,
                        points=inside or None)[0])
    return np.array(out)


def test_parameters_follow_xspec_model_dat():
    """Names, defaults, units, hard limits and frozen flags of XSPEC 12.15's model.dat
    (Redshift's negative fit delta = frozen; logpar's pivotE is a fixed scale parameter)."""
    redshift = ("Redshift", 0.0, -0.999, 10.0, True)
    expected = {
        "zpowerlw": [("PhoIndex", 1.0, -3.0, 10.0, False), redshift],
        "bbody": [("kT", 3.0, 1e-4, 200.0, False)],
        "bbodyrad": [("kT", 3.0, 1e-4, 200.0, False)],
        "zbbody": [("kT", 3.0, 1e-4, 200.0, False), redshift],
        "diskbb": [("Tin", 1.0, 0.0, 1000.0, False)],
        "bremss": [("kT", 7.0, 1e-4, 200.0, False)],
        "logpar": [("alpha", 1.5, 0.0, 4.0, False), ("beta", 0.2, -4.0, 4.0, False),
                   ("pivotE", 1.0, 1e-10, 1e10, True)],
        "lorentz": [("LineE", 6.5, 0.0, 1e6, False), ("Width", 0.1, 0.0, 20.0, False)],
        "zgauss": [("LineE", 6.5, 0.0, 1e6, False), ("Sigma", 0.1, 0.0, 20.0, False), redshift],
        "agauss": [("LineE", 10.0, 0.0, 1e6, False), ("Sigma", 1.0, 0.0, 1e6, False)],
        "highecut": [("cutoffE", 10.0, 1e-4, 1e6, False), ("foldE", 15.0, 1e-4, 1e6, False)],
        "zhighect": [("cutoffE", 10.0, 1e-4, 200.0, False), ("foldE", 15.0, 1e-4, 200.0, False),
                     redshift],
    }
    for name, params in expected.items():
        spec = COMPONENTS[name]
        if spec.kind == "add":
            params = params + [("norm", 1.0, 0.0, 1e24, False)]
        got = [(p.name, p.value, p.min, p.max, p.frozen) for p in spec.params]
        assert got == params, name
    assert COMPONENTS["agauss"].params[0].unit == "A"
    assert [COMPONENTS[n].kind for n in NAMES].count("mul") == 2
    for name in NAMES:  # factories exported by bkgjax.spectral, like powerlaw()
        made = getattr(bkgjax.spectral, name)(label="x")
        assert made.kind == COMPONENTS[name].kind and made.names[0].startswith("x.")


@pytest.mark.parametrize("index", [1.7, 1.0, -0.5])
@pytest.mark.parametrize("z", [0.0, 0.8, -0.999])
def test_zpowerlw_is_the_source_frame_power_law(index, z):
    """XSPEC zpowerLaw: the power law integrated over the source-frame bin, / (1+z)."""
    lo, hi = (1 + z) * FINE[:-1], (1 + z) * FINE[1:]
    if index == 1.0:
        source = np.log(hi / lo)
    else:
        source = (hi ** (1 - index) - lo ** (1 - index)) / (1 - index)
    np.testing.assert_allclose(evaluate("zpowerlw", FINE, PhoIndex=index, Redshift=z, norm=2.5),
                               2.5 * source / (1 + z), rtol=1e-12)


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # quad's own rounding
@pytest.mark.parametrize("kT", [1e-3, 0.05, 1.0, 30.0, 200.0])
@pytest.mark.parametrize("edges", [FINE, WIDE], ids=["fine", "wide"])
def test_blackbodies_match_quadrature(kT, edges):
    """bbody, bbodyrad, zbbody against quad of the XSPEC densities (xsblbd.f, xsbbrd.f,
    xszbod.f), Wien-tail bins included (their relative precision too)."""

    def planck(e):
        x = e / kT
        return e * e * math.exp(-x) / -math.expm1(-x)  # 0 once exp(-x) underflows

    reference = integrate(planck, edges)
    np.testing.assert_allclose(evaluate("bbody", edges, kT=kT, norm=0.7),
                               0.7 * 8.0525 / kT**4 * reference, rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(evaluate("bbodyrad", edges, kT=kT, norm=0.7),
                               0.7 * 1.0344e-3 * reference, rtol=1e-11, atol=1e-300)
    z = 0.6
    shifted = integrate(lambda e: (1 + z) * planck((1 + z) * e), edges) / (1 + z)
    np.testing.assert_allclose(evaluate("zbbody", edges, kT=kT, Redshift=z, norm=0.7),
                               0.7 * 8.0525 / kT**4 * shifted, rtol=1e-11, atol=1e-300)


def test_blackbody_norms_are_luminosity_and_radius():
    """bbody's norm is L39/D10^2: its energy flux over all E is 1e39 erg/s / (4 pi (10 kpc)^2)
    per unit norm, to the 0.24 % of XSPEC's rounded constant 8.0525 (exactly 8.0525 pi^4/15
    keV/cm^2/s); bbodyrad's norm is (R_km/D10)^2: pi (R/D)^2 2/(h^3 c^2) E^2/(e^(E/kT)-1)."""
    kT = 1.3
    flux = float(energy_flux(component("bbody", kT=kT, norm=1.0), e_min=1e-4 * kT,
                             e_max=100 * kT, n_bins=20000))
    np.testing.assert_allclose(flux, 8.0525 * math.pi**4 / 15 * KEV_TO_ERG, rtol=1e-7)
    luminosity_flux = 1e39 / (4 * math.pi * (10 * KPC_CM) ** 2)
    np.testing.assert_allclose(flux, luminosity_flux, rtol=3e-3)
    edges = np.array([2.0, 2.0 + 1e-6])
    density = evaluate("bbodyrad", edges, kT=kT, norm=1.0)[0] / 1e-6
    physical = SOLID_ANGLE_1KM_10KPC * PLANCK_PHOTONS * 2.0**2 / math.expm1(2.0 / kT)
    np.testing.assert_allclose(density, physical, rtol=4e-3)  # 1.0344e-3 vs 1.03801e-3


def _disc_density(e, t_in):
    """Mitsuda et al. (1984) as XSPEC's diskbb defines it: (1/361) int_0^1 t^(-11/3)
    E^2/(exp(E/(t Tin)) - 1) dt (norm 1)."""

    def integrand(t):
        x = e / (t * t_in)
        return t ** (-11 / 3) * e * e * math.exp(-x) / -math.expm1(-x)

    scale = e / t_in  # the integrand peaks near t = E/(2.5 Tin)
    points = [min(0.5, scale / 10), min(0.9, scale / 2)] if scale < 2 else None
    return quad(integrand, 0.0, 1.0, epsabs=0.0, epsrel=1e-12, limit=400, points=points)[0] / 361


@pytest.mark.parametrize("t_in", [0.3, 2.0])
def test_diskbb_matches_the_disc_integral(t_in):
    """The exact bin integral (Bernoulli series, Gauss-Laguerre) against nested quad of the
    definition, on bins from 0.02 keV to 12 Tin (a factor up to 2 wide)."""
    assert continua._ZETA3 == pytest.approx(special.zeta(3), rel=1e-15)
    assert continua._GAMMA_ZETA_8_3 == pytest.approx(special.gamma(8 / 3) * special.zeta(8 / 3),
                                                     rel=1e-15)
    assert continua._BERNOULLI_EVEN[:3] == pytest.approx([1 / 12, -1 / 720, 1 / 30240],
                                                         rel=1e-15)
    edges = np.concatenate([np.geomspace(0.02, 1.0, 4), [1.5, 3.0, 6.0 * t_in, 12.0 * t_in]])
    np.testing.assert_allclose(evaluate("diskbb", edges, Tin=t_in, norm=4.0),
                               4.0 * integrate(lambda e: _disc_density(e, t_in), edges),
                               rtol=1e-10)


def test_diskbb_norm_is_inner_radius_over_distance():
    """norm = (R_in/D10)^2 cos i: the photon flux of a disc with T = Tin (r/R_in)^(-3/4),
    (cos i / D^2) int 2 pi r B(E, T(r)) dr, to XSPEC's normfact 361 (0.075 %); Tin = 0 is 0."""
    t_in, energy = 1.1, 2.5
    r_factor = 8.0 / 3.0 * SOLID_ANGLE_1KM_10KPC * PLANCK_PHOTONS  # (8 pi/3) (R/D)^2 2/(h^3c^2)
    photon = 361 * _disc_density(energy, t_in)  # the integral over the disc's temperatures
    edges = np.array([energy, energy * (1 + 1e-7)])
    model = evaluate("diskbb", edges, Tin=t_in, norm=1.0)[0] / (edges[1] - edges[0])
    np.testing.assert_allclose(model, r_factor * photon, rtol=1e-3)
    assert np.all(evaluate("diskbb", FINE, Tin=0.0) == 0.0)


def _born(u):
    """(sqrt(3)/pi) e^(u/2) K0(u/2) with scipy's K0 (independent of the A&S polynomials)."""
    return 0.5513 * special.k0e(0.5 * u)


def test_bremss_gaunt_factor_values():
    """XSPEC gaunt.f at hand-worked points: the Born regime (scipy K0), KBK polynomials
    interpolated between gamma columns (including Molnar/Hughes-corrected coefficients),
    Kurucz's table (bilinear in the logs), and the cut-offs."""
    gaunt = jax.jit(bremss_gaunt)
    g = lambda e, t, z: float(gaunt(e, t, z))  # noqa: E731
    for u in (1e-4, 0.02, 0.5, 3.9, 4.1, 20.0, 49.0):  # kT = 150: 1000 gamma < 1 for Z = 1, 2
        assert g(150.0 * u, 150.0, 1.0) == pytest.approx(_born(u), rel=2e-7)
    # kT = 5, Z = 1: 1000 gamma = 2.716 -> columns 2 and 3; u = 0.5 -> row 3
    p = (13.58 / 5 - 1.7783) / 1.2217
    u = 0.5
    expected = ((1 - p) * (1.017 + .08357 * u - .03571 * u * u)
                + p * (1.03 + .08057 * u - .02571 * u * u)) * _born(u)
    assert g(u * 5.0, 5.0, 1.0) == pytest.approx(expected, rel=1e-6)
    # kT = 0.2, Z = 1: 1000 gamma = 67.9 -> columns 6 and 7; u = 0.6 -> row 3 (0.6017, -0.227)
    p = (67.9 - 30.0) / 70.0
    u = 0.6
    expected = ((1 - p) * (1.047 + .326 * u - .12 * u * u)
                + p * (1.020 + .6017 * u - .2270 * u * u)) * _born(u)
    assert g(u * 0.2, 0.2, 1.0) == pytest.approx(expected, rel=1e-6)
    # u < 0.003: the polynomial is taken at u = 0.003, Born at u
    u = 1e-3
    expected = ((1 - p) * (.9874 + 1.236 * .003 - 7.143 * .003**2)
                + p * (.9681 + 1.327 * .003 - 3.175 * .003**2)) * _born(u)
    assert g(u * 0.2, 0.2, 1.0) == pytest.approx(expected, rel=1e-6)
    # kT = 0.05, Z = 1: gamma = 0.2716 > 0.1 -> Kurucz, j = 1 (t = 0.8678), u = 2 -> k = 9
    ft = 2 * math.log10(0.01358 / 0.05) + 3 - 1
    fu = 2 * math.log10(2.0) + 9 - 9
    expected = ((1 - ft) * (1 - fu) * 1.17 + ft * (1 - fu) * 1.30 + ft * fu * 1.00
                + (1 - ft) * fu * 0.86)
    assert g(2.0 * 0.05, 0.05, 1.0) == pytest.approx(expected, rel=1e-12)
    assert g(32.0 * 0.05, 0.05, 1.0) == 0.0  # beyond Kurucz's grid (u > 10^1.5)
    assert g(50.0 * 7.0, 7.0, 1.0) == 0.0  # E >= 50 kT
    assert g(1.0, 1e-4, 1.0) == 0.0  # gamma = 136: beyond Kurucz's grid


@pytest.mark.parametrize("kT", [0.05, 0.5, 5.0, 100.0])
def test_bremss_bins_match_quadrature(kT):
    """Bin integrals of bremss_density, split at the Gaunt factor's jumps, against quad; and
    the density against its XSPEC formula in the Born regime."""
    density = jax.jit(bremss_density)
    breaks = kT * np.array([0.003, 0.03, 0.3, 1.0, 4.0, 5.0, 15.0, 50.0,
                            *(10.0 ** ((k - 9) / 2) for k in range(2, 13))])
    edges = np.geomspace(0.01, 60 * kT, 13)
    reference = integrate(lambda e: float(density(e, kT)), edges, points=breaks)
    np.testing.assert_allclose(evaluate("bremss", edges, kT=kT, norm=3.0), 3.0 * reference,
                               rtol=1e-11)
    # bins in any order, with gaps between them: the same values (each bin sums its pieces)
    order = np.array([5, 0, 11, 3, 8])
    lo, hi = jnp.asarray(edges[:-1][order]), jnp.asarray(edges[1:][order])
    shuffled = np.asarray(compiled("bremss")(lo, hi, jnp.asarray(kT), jnp.asarray(3.0)))
    np.testing.assert_allclose(shuffled, 3.0 * reference[order], rtol=1e-11)
    if kT == 100.0:
        e = np.geomspace(0.01, 49 * kT, 7)
        u = e / kT
        born = (1 + 4 * 0.085) * _born(u) * np.exp(-u) / (np.sqrt(kT) * e)
        np.testing.assert_allclose(np.asarray(density(jnp.asarray(e), kT)), born,
                                   rtol=2e-7)


def test_bremss_norm_is_the_emission_measure():
    """K = 3.02e-15/(4 pi D^2) int n_e n_H dV: the constant is Rybicki & Lightman's (5.14b)
    6.8e-38 erg cm^3/s/Hz K^1/2 in photons/keV, T in keV (to 0.3 %)."""
    kelvin_per_kev = KEV_J / constants.k
    hz_per_kev = KEV_J / constants.h
    photons = 6.8e-38 * hz_per_kev / KEV_TO_ERG / math.sqrt(kelvin_per_kev)
    assert photons == pytest.approx(3.02e-15, rel=3e-3)
    assert 4 * 0.085 == pytest.approx(0.34)  # He: Z^2 n_He/n_H in the density


@pytest.mark.parametrize("alpha,beta,pivot", [(1.5, 0.2, 1.0), (2.5, -1.0, 3.0), (0.5, 4.0, 1.0)])
def test_logpar_matches_quadrature(alpha, beta, pivot):
    def density(e):
        return (e / pivot) ** (-alpha - beta * math.log10(e / pivot))

    edges = np.geomspace(0.05, 200.0, 13)  # a factor 2 per bin
    np.testing.assert_allclose(evaluate("logpar", edges, alpha=alpha, beta=beta, pivotE=pivot,
                                        norm=1.7), 1.7 * integrate(density, edges), rtol=1e-11)


@pytest.mark.parametrize("line_e,width", [(6.4, 0.3), (0.3, 1.0), (0.0, 0.5)])
def test_lorentz_is_normalised_over_positive_energies(line_e, width):
    """XSPEC calcLines.cxx: the Lorentzian times 1/(pi/2 + arctan(2 LineE/Width)), i.e. the
    line holds norm photons over E > 0 (here found by quad, independently)."""

    def shape(e):
        return 0.5 * width / ((e - line_e) ** 2 + 0.25 * width**2)

    over_positive = quad(shape, 0.0, np.inf, epsabs=0.0, epsrel=1e-13)[0]
    edges = np.concatenate([np.geomspace(1e-4, line_e or 1.0, 6)[:-1],
                            np.linspace(line_e or 1.0, 4 * (line_e or 1.0), 8),
                            np.geomspace(5 * (line_e or 1.0), 1e5, 5)])
    values = evaluate("lorentz", edges, LineE=line_e, Width=width, norm=2.0)
    np.testing.assert_allclose(values, 2.0 * integrate(shape, edges, (line_e,)) / over_positive,
                               rtol=1e-10)
    whole = evaluate("lorentz", np.array([1e-12, 1e12]), LineE=line_e, Width=width, norm=2.0)
    np.testing.assert_allclose(whole, 2.0, rtol=1e-9)  # all but the tail beyond 1e12 keV


@pytest.mark.parametrize("z", [0.0, 0.5, -0.5])
def test_zgauss_is_the_gaussian_at_source_energies(z):
    """xszgau.cxx: gaussian on E(1+z), divided by 1+z: density K N(E(1+z); LineE, Sigma)."""
    line_e, sigma = 6.4, 0.15

    def density(e):
        return (math.exp(-0.5 * ((e * (1 + z) - line_e) / sigma) ** 2)
                / (sigma * math.sqrt(2 * math.pi)))

    center = line_e / (1 + z)
    edges = center + np.linspace(-8, 8, 33) * sigma / (1 + z)
    np.testing.assert_allclose(evaluate("zgauss", edges, LineE=line_e, Sigma=sigma, Redshift=z,
                                        norm=3.0), 3.0 * integrate(density, edges), rtol=1e-9,
                               atol=1e-300)
    total = evaluate("zgauss", np.array([1e-3, 1e3]), LineE=line_e, Sigma=sigma, Redshift=z)
    np.testing.assert_allclose(total, 1.0 / (1 + z), rtol=1e-14)


def test_agauss_is_a_gaussian_in_wavelength():
    """agauss.cxx: N(hc/E; LineE, Sigma) in Angstrom, hc = 12.39841974 keV A: the density in
    energy is K N(hc/E) hc/E^2 and the whole line holds K."""
    line_lam, sigma = 21.6, 0.4
    hc = 12.39841974
    assert KEV_TO_ANGSTROM == hc
    assert hc == pytest.approx(constants.h * constants.c / KEV_J * 1e10, rel=1e-8)

    def density(e):
        lam = hc / e
        return (math.exp(-0.5 * ((lam - line_lam) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
                * hc / (e * e))

    center = hc / line_lam
    edges = center * np.linspace(0.9, 1.1, 41)
    np.testing.assert_allclose(evaluate("agauss", edges, LineE=line_lam, Sigma=sigma, norm=2.0),
                               2.0 * integrate(density, edges), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(evaluate("agauss", np.array([0.01, 100.0]), LineE=line_lam,
                                        Sigma=sigma), 1.0, rtol=1e-14)
    delta = evaluate("agauss", edges, LineE=line_lam, Sigma=0.0)  # all in the bin of hc/LineE
    assert delta.sum() == 1.0 and delta[np.searchsorted(edges, center) - 1] == 1.0


@pytest.mark.parametrize("cutoff,fold", [(10.0, 15.0), (0.7, 0.01), (3.0, 1e4), (1e-4, 2.0)])
def test_highecut_bin_average_is_exact(cutoff, fold):
    """The bin average of 1 (E <= cutoffE) / exp((cutoffE - E)/foldE) (E > cutoffE), also
    across the cut-off; zhighect is the same on E(1+z) (xszhcu.f)."""

    def factor(e, fold=fold):
        return 1.0 if e <= cutoff else math.exp((cutoff - e) / fold)

    edges = np.sort(np.concatenate([np.geomspace(1e-3, 300.0, 30),
                                    [cutoff * 0.999, cutoff * 1.001]]))
    widths = np.diff(edges)
    reference = integrate(factor, edges, (cutoff,)) / widths
    assert np.all(reference <= 1.0)
    np.testing.assert_allclose(evaluate("highecut", edges, cutoffE=cutoff, foldE=fold),
                               reference, rtol=1e-10, atol=1e-300)
    z, fold_z = 0.4, min(fold, 200.0)  # zhighect's foldE stops at 200 keV
    shifted = integrate(lambda e: factor(e * (1 + z), fold_z), edges, (cutoff / (1 + z),))
    np.testing.assert_allclose(evaluate("zhighect", edges, cutoffE=cutoff, foldE=fold_z,
                                        Redshift=z), shifted / widths, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("case", REFERENCE["cases"],
                         ids=lambda c: f"{c['component']}-{sorted(c['params'].items())}")
def test_against_sherpa(case):
    """Sherpa 4.19 models equal to these components up to a parameter mapping (the script's
    docstring); Sherpa's erf differences are precise to ~1e-16 of the norm in absolute terms,
    so the far wings (below 1e-10 of the norm) are skipped and 1e-15 of the norm allowed."""
    edges = np.asarray(REFERENCE["edges"])
    ours = evaluate(case["component"], edges, **case["params"])
    sherpa = np.asarray(case["values"])
    keep = sherpa > 1e-10 * case["params"]["norm"]
    assert keep.sum() >= 3
    np.testing.assert_allclose(ours[keep], sherpa[keep], rtol=1e-9,
                               atol=1e-15 * case["params"]["norm"])


# Parameter sets at the special points: limits, Redshift = 0 and its extremes, zero widths,
# bins deep in the Wien tail (E/kT up to 3e6, exp overflows), cut-offs inside and outside.
SPECIAL = {
    "zpowerlw": [dict(Redshift=0.0), dict(Redshift=-0.999, PhoIndex=10.0),
                 dict(Redshift=10.0, PhoIndex=-3.0), dict(PhoIndex=1.0)],
    "bbody": [dict(kT=1e-4), dict(kT=200.0), dict(kT=0.01)],
    "bbodyrad": [dict(kT=1e-4), dict(kT=200.0)],
    "zbbody": [dict(kT=1e-4, Redshift=10.0), dict(kT=200.0, Redshift=-0.999),
               dict(Redshift=0.0)],
    "diskbb": [dict(Tin=0.0), dict(Tin=1e-3), dict(Tin=1000.0)],
    "bremss": [dict(kT=1e-4), dict(kT=0.1358), dict(kT=0.5432), dict(kT=13.58), dict(kT=200.0)],
    "logpar": [dict(beta=0.0), dict(beta=-4.0, alpha=0.0), dict(beta=4.0, alpha=4.0),
               dict(pivotE=50.0)],
    "lorentz": [dict(Width=0.0), dict(Width=20.0, LineE=0.0), dict(LineE=1e6)],
    "zgauss": [dict(Sigma=0.0), dict(Redshift=-0.999), dict(Redshift=10.0, Sigma=20.0)],
    "agauss": [dict(Sigma=0.0), dict(LineE=0.0), dict(LineE=1e6, Sigma=1e6)],
    "highecut": [dict(cutoffE=1e-4, foldE=1e-4), dict(cutoffE=1e6, foldE=1e6),
                 dict(cutoffE=5.0, foldE=1e-4)],
    "zhighect": [dict(Redshift=0.0), dict(Redshift=-0.999, cutoffE=1e-4),
                 dict(Redshift=10.0, foldE=200.0)],
}
GRID = np.geomspace(0.005, 300.0, 48)


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_finite_at_special_points(name):
    """Finite values and gradients at SPECIAL; the gradient equals central differences at
    the defaults; blackbody bins far in the Wien tail are exactly 0."""
    spec = COMPONENTS[name]
    e_lo, e_hi = jnp.asarray(GRID[:-1]), jnp.asarray(GRID[1:])
    weights = np.linspace(0.5, 1.5, e_lo.size)

    @jax.jit
    def grads_and_values(params):
        weighted = lambda p: jnp.sum(spec.function(e_lo, e_hi, *p) * weights)  # noqa: E731
        return jax.grad(weighted)(params), spec.function(e_lo, e_hi, *params)

    for overrides in SPECIAL[name]:
        params = [jnp.asarray(float(overrides.get(p.name, p.value))) for p in spec.params]
        grads, values = grads_and_values(params)
        values = np.asarray(values)
        assert np.all(np.isfinite(values)) and np.all(values >= 0), (name, overrides)
        assert all(np.isfinite(float(g)) for g in grads), (name, overrides, grads)

    def total(values):
        return float(np.asarray(grads_and_values([jnp.asarray(x) for x in values])[1]) @ weights)

    start = [0.3 if p.name == "Redshift" else p.value for p in spec.params]
    grads = [float(g) for g in grads_and_values([jnp.asarray(x) for x in start])[0]]
    for i, value in enumerate(start):
        step = 1e-6 * max(abs(value), 1e-3)
        up, down = list(start), list(start)
        up[i] += step
        down[i] -= step
        difference = (total(up) - total(down)) / (2 * step)
        assert grads[i] == pytest.approx(difference, rel=1e-5, abs=1e-8 * abs(total(start))), (
            name, spec.params[i].name)
    if name in ("bbody", "bbodyrad", "zbbody"):  # Wien tail: exactly 0, gradient 0
        assert np.all(evaluate(name, GRID[30:], kT=1e-4) == 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager_and_vmap_equals_loop(name):
    spec = COMPONENTS[name]
    e_lo, e_hi = jnp.asarray(GRID[:-1]), jnp.asarray(GRID[1:])
    batch = np.array([[p.value * scale for p in spec.params] for scale in (1.0, 1.1, 0.8)])
    for i, p in enumerate(spec.params):
        if p.name == "Redshift":
            batch[:, i] = (0.0, 0.3, 1.5)
    one = lambda row: spec.function(e_lo, e_hi, *row)  # noqa: E731
    eager = np.asarray(one(jnp.asarray(batch[0])))
    jitted = jax.jit(one)
    loop = np.stack([np.asarray(jitted(jnp.asarray(row))) for row in batch])
    # XLA may fuse and reorder the arithmetic: equal to rounding
    np.testing.assert_allclose(loop[0], eager, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.asarray(jax.vmap(one)(jnp.asarray(batch))), loop, rtol=1e-12,
                               atol=0)


def test_model_expression_and_fit_recover_parameters():
    """highecut*zpowerlw + diskbb + zgauss through parse_model, folded through a diagonal
    response, Poisson counts (2.2e5), cstat fit from 10 % off (the line within a sigma of
    its energy): the truth lies within 3 sigma and the minimum is the one found from it."""
    model = parse_model("highecut*zpowerlw + diskbb + zgauss").set("highecut.cutoffE",
                                                                   frozen=True)
    truth = {"highecut.cutoffE": 8.0, "highecut.foldE": 12.0, "zpowerlw.PhoIndex": 1.8,
             "zpowerlw.Redshift": 0.0, "zpowerlw.norm": 0.05, "diskbb.Tin": 0.7,
             "diskbb.norm": 300.0, "zgauss.LineE": 6.4, "zgauss.Sigma": 0.1,
             "zgauss.Redshift": 0.05, "zgauss.norm": 5e-3}
    edges = np.geomspace(0.5, 30.0, 161)
    area, exposure = 100.0, 3e3
    expected = np.asarray(model.evaluate(truth, edges[:-1], edges[1:])) * area * exposure
    counts = np.random.default_rng(3).poisson(expected).astype(float)
    data = SpectralData.from_arrays(counts, exposure, area * np.eye(edges.size - 1),
                                    edges[:-1], edges[1:], name="continua")
    at_truth, start = model, model
    for name, value in truth.items():
        at_truth = at_truth.set(name, value)
        start = start.set(name, value if model[name].frozen else 1.1 * value)
    start = start.set("zgauss.LineE", 6.38)
    result = fit(start, data, "cstat", errors="covariance")
    assert result.converged and not any(result.at_limit.values())
    from_truth = fit(at_truth, data, "cstat", errors="covariance")
    assert result.stat_value == pytest.approx(from_truth.stat_value, abs=1e-6)
    for name in result.free_names:
        pull = (result.values[name] - truth[name]) / result.errors[name]
        assert abs(pull) < 3, (name, result.values[name], result.errors[name])
