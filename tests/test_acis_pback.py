"""ACIS particle-background generator (mkacispback): maths, recipe, outputs, CLI, injection-recovery."""

from __future__ import annotations

import argparse
import os
import types
from pathlib import Path

import numpy as np
import pytest

from bkgjax.io import read_pha, read_rmf, write_rmf
from bkgjax.missions.acis import cli as acis_cli
from bkgjax.missions.acis import pback as A
from bkgjax.missions.acis import pipeline as P
from bkgjax.missions.acis.events import (
    chip_box_region,
    read_chandra_events,
    read_region,
    write_chandra_events,
)
from bkgjax.missions.acis.simulate import (
    acis_like_grids,
    expected_slice_counts,
    gaussian_rmf_matrix,
    simulate_acis_events,
)

TEMPLATES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chandra" / "mkacispback"
S3_VFAINT = (0.76, 0.57)  # Table 2 of Suzuki et al. 2021

GRIDS = acis_like_grids()
E_LO, E_HI, E_MIN, E_MAX = GRIDS
MATRIX = gaussian_rmf_matrix(*GRIDS)
BAND = A.band_channels(E_MIN, E_MAX, E_LO, E_HI)


def fake_components(ccd):
    """Smooth slice templates (photons/cm^2/s per bin): a powerlaw continuum and two lines,
    varying with the slice index k so that weighting matters."""
    e = 0.5 * (E_LO + E_HI)
    de = E_HI - E_LO
    k = np.arange(32)[:, None]

    def g(c, s):
        return np.exp(-0.5 * ((e - c) / s) ** 2) / (s * np.sqrt(2 * np.pi)) * de

    cont = 1e-3 * (1 + 0.01 * k + 0.001 * ccd) * e ** -0.5 * de
    lines = 2e-4 * (1 + 0.02 * k) * g(9.7, 0.05) + 1e-4 * (1 - 0.01 * k) * g(1.74, 0.03)
    return cont, lines


class FakeLibrary:
    def __init__(self, ccd, mode):
        self.ccd, self.mode = ccd, mode
        # like the real weight maps: the templates' own 9-11.5 keV counts per slice (100 ks)
        cont, lines = fake_components(ccd)
        self.template_weights = 1e5 * ((cont + lines) @ MATRIX)[:, BAND].sum(axis=1)
        self.scale = 1.0

    def slice_components(self, e_lo, e_hi, drop_fsline_norm_above=1.0):
        return fake_components(self.ccd)


FAKE_API = types.SimpleNamespace(
    MODES=("faint", "vfaint"), ACIS_CCDS=(0, 1, 2, 3, 5, 6, 7),
    HARDNESS={(5, "vfaint"): (1.25, 0.20), (7, "vfaint"): S3_VFAINT, (5, "faint"): (1.55, 0.35),
              (7, "faint"): (0.83, 0.25)},
    load_template_library=lambda ccd, mode, directory=None: FakeLibrary(ccd, mode))


@pytest.fixture
def fake_api(monkeypatch):
    monkeypatch.setattr(P, "_template_api", lambda: FAKE_API)
    return FAKE_API


@pytest.fixture(scope="module")
def rmf_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("rmf") / "acis.rmf"
    write_rmf(path, E_LO, E_HI, MATRIX, E_MIN, E_MAX, telescope="CHANDRA", instrument="ACIS")
    return path


def _simulate_file(path, ccds=(7,), rate=1.5, exposure=2.0e4, seed=1, datamode="VFAINT"):
    comps = {c: fake_components(c) for c in ccds}
    ev = simulate_acis_events(seed, components=comps, exposure=exposure, rate={c: rate for c in ccds},
                              matrix=MATRIX, energ_lo=E_LO, energ_hi=E_HI, e_min=E_MIN, e_max=E_MAX,
                              hardness={7: S3_VFAINT, 5: (1.25, 0.20)})
    write_chandra_events(path, **{k: v for k, v in ev.items() if k != "expected"}, exposure=exposure,
                         datamode=datamode)
    return ev


@pytest.fixture(scope="module")
def s3_events(tmp_path_factory):
    path = tmp_path_factory.mktemp("evt") / "s3_evt2.fits"
    ev = _simulate_file(path)
    return path, ev


# ---------------------------------------------------------------------------
# pure maths
# ---------------------------------------------------------------------------


def test_slice_counts_and_hardness():
    chipy = np.array([1, 32, 33, 1024, 1000, 500])
    energy = np.array([9000.0, 11500.0, 9500.0, 8999.0, 10000.0, 11500.1])
    expected = np.zeros(32, int)
    expected[0] = 2  # rows 1 and 32, both in band (inclusive edges)
    expected[1] = 1  # row 33
    expected[31] = 1  # row 1000 (row 1024 is out of band)
    np.testing.assert_array_equal(A.slice_counts(chipy, energy), expected)
    assert float(A.hardness_factor(1.52, 0.76, 0.57)) == pytest.approx(2.0 ** 0.57, rel=1e-14)


def test_weighted_sum_identity_fake():
    cont, lines = fake_components(7)
    w = 100.0 + np.arange(32.0)
    C, L = A.ccd_photon_model(cont, lines, w, w, 1.0)
    np.testing.assert_allclose(np.asarray(C) + np.asarray(L), (cont + lines).sum(axis=0), rtol=1e-13)
    # half the weights in the lower half only: sum of the lower 16 slices at half strength
    w_half = np.where(np.arange(32) < 16, w / 2, 0.0)
    C, L = A.ccd_photon_model(cont, lines, w_half, w, 2.0)
    np.testing.assert_allclose(np.asarray(C), cont[:16].sum(axis=0), rtol=1e-13)
    ref = 0.5 * lines[:16].sum(axis=0)
    np.testing.assert_allclose(np.asarray(L), ref, rtol=1e-13, atol=1e-15 * ref.max())


def test_band_channels_rmf_not_covering():
    lo, hi, emin, emax = acis_like_grids(ch_hi=10.0)
    with pytest.raises(ValueError, match=r"my\.rmf: channel grid .* does not cover the 9-11.5 keV"):
        A.band_channels(emin, emax, lo, hi, where="my.rmf")
    lo, hi, emin, emax = acis_like_grids(e_hi=11.0, ch_hi=10.0)
    with pytest.raises(ValueError, match="photon energy grid"):
        A.band_channels(emin, emax, lo, hi)


def test_scaling_and_pback_counts(fake_api, s3_events, rmf_path):
    path, _ = s3_events
    e = read_chandra_events(path)
    model = P.generate_pback(e, chip_box_region(7, chipy=(1, 512)), read_rmf(rmf_path))
    # step 5: predicted band counts equal the observed ones
    assert model.total[model.band].sum() == pytest.approx(model.observed_band_counts, rel=1e-12)
    # whole-CCD rate is independent of the region
    in_band = (e.energy >= 9000) & (e.energy <= 11500) & (e.ccd_id == 7)
    assert model.rate[0] == pytest.approx(in_band.sum() / e.exposure)
    arrays = model.arrays()
    np.testing.assert_allclose(A.pback_counts(1.0, 1.0, arrays["alpha0"], arrays), model.total, rtol=1e-12)
    # alpha enters only the continuum, as (R/R0)^(alpha - alpha0)
    b = np.asarray(A.pback_counts(1.0, 1.0, arrays["alpha0"] + 0.1, arrays))
    ratio = (model.rate[0] / 0.76) ** 0.1
    np.testing.assert_allclose(b, ratio * model.continuum[0] + model.lines[0], rtol=1e-12)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_inputs(fake_api, s3_events, rmf_path, tmp_path):
    path, _ = s3_events
    e = read_chandra_events(path)
    rmf = read_rmf(rmf_path)
    whole = chip_box_region(7)
    with pytest.raises(ValueError, match="unknown ACIS data mode 'te'"):
        P.generate_pback(e, whole, rmf, mode="te")
    far = tmp_path / "far.reg"
    far.write_text("physical\ncircle(100,100,20)\n")
    with pytest.raises(ValueError, match=r"far\.reg.*selects no events"):
        P.generate_pback(e, read_region(far), rmf)
    # a CCD without templates (S0 = ccd 4)
    s0 = tmp_path / "s0.fits"
    _simulate_file(s0, ccds=(4,), rate=0.3, exposure=2000.0)
    with pytest.raises(ValueError, match=r"CCD\(s\) \[4\] have no particle-background templates"):
        P.generate_pback(read_chandra_events(s0), chip_box_region(4), rmf)
    # RMF not covering 9-11.5 keV
    lo, hi, emin, emax = acis_like_grids(ch_hi=10.0)
    short = tmp_path / "short.rmf"
    write_rmf(short, lo, hi, gaussian_rmf_matrix(lo, hi, emin, emax), emin, emax)
    with pytest.raises(ValueError, match=r"short\.rmf.*does not cover the 9-11.5 keV"):
        P.generate_pback(e, whole, read_rmf(short))
    # an RSP (ARF folded in) instead of the RMF
    rsp = tmp_path / "full.rsp"
    write_rmf(rsp, E_LO, E_HI, 300.0 * MATRIX, E_MIN, E_MAX)
    with pytest.raises(ValueError, match=r"full\.rsp: HDUCLAS3 = 'FULL'"):
        P.generate_pback(e, whole, read_rmf(rsp))
    # mode missing from the file and not given
    nomode = tmp_path / "nomode.fits"
    _simulate_file(nomode, exposure=1000.0, datamode="CC33_FAINT")
    with pytest.raises(ValueError, match="give the mode explicitly"):
        P.generate_pback(read_chandra_events(nomode), whole, rmf)


# ---------------------------------------------------------------------------
# outputs: OGIP PHA, plot, CLI
# ---------------------------------------------------------------------------


def test_cli_writes_pha_and_plot(fake_api, s3_events, rmf_path, tmp_path, capsys):
    path, _ = s3_events
    reg = tmp_path / "half.reg"
    reg.write_text("image\nbox(512.5,256.5,1024,512,0) # tag={ccd_id=7}\n")
    parser = argparse.ArgumentParser(prog="bkgjax")
    sub = parser.add_subparsers(dest="command")
    acis_cli.register(sub)
    out = tmp_path / "bkg.pha"
    args = parser.parse_args(["acis-pback", str(path), "--region", str(reg), "--rmf", str(rmf_path),
                              "--out", str(out), "--backscal", "0.25"])
    assert args.func(args) == 0
    assert "scaled to" in capsys.readouterr().out
    pha = read_pha(out)
    model = P.generate_pback(read_chandra_events(path), read_region(reg), read_rmf(rmf_path))
    assert pha.exposure == pytest.approx(model.exposure * 1e4)
    assert pha.backscal == pytest.approx(0.25)
    assert os.path.samefile(pha.respfile, rmf_path)
    rate = pha.counts / pha.exposure
    # rounding error of the integer PHA: <= 0.5 / oversample counts per channel
    np.testing.assert_allclose(rate * model.exposure, model.total, atol=0.5e-4 + 1e-12)
    png = out.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_allclose(model.meta["slice_area_fractions"][7], [1.0] * 16 + [0.0] * 16)
    # bad input: clear message on stderr, exit status 2
    bad = parser.parse_args(["acis-pback", str(path), "--region", str(reg), "--rmf", str(tmp_path / "nope.rmf"),
                             "--out", str(tmp_path / "x.pha")])
    assert bad.func(bad) == 2
    assert "nope.rmf" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# injection-recovery: norm (9-11.5 keV counts) and alpha of S3
# ---------------------------------------------------------------------------


def _coverage(n_sims, seed, rate=1.5, exposure=2.0e4):
    """Simulate (slice x channel) Poisson counts of S3, generate the model per simulation from its
    own weights and whole-CCD rate, fit norm + alpha (C-stat), return z-scores of the band
    counts and of alpha against the truth.  Counts binned by slice and channel are exactly what
    binning a simulated event list gives (tested end to end in the next test)."""
    cont, lines = fake_components(7)
    mu = expected_slice_counts(cont, lines, MATRIX, BAND, exposure=exposure, rate=rate, r0=S3_VFAINT[0],
                               alpha=S3_VFAINT[1])
    region = np.arange(32) < 16
    truth_band = mu[region][:, BAND].sum()
    rng = np.random.default_rng(seed)
    lib = FakeLibrary(7, "vfaint")
    spectra, arrays, model = [], [], None
    for _ in range(n_sims):
        n = rng.poisson(mu)
        weights = np.where(region, n[:, BAND].sum(axis=1), 0)
        spectrum = n[region].sum(axis=0)
        model = A.build_pback_model(
            ccds=[7], mode="vfaint", continuum=[cont], lines=[lines], region_weights=[weights],
            template_weights=[lib.template_weights], rate=[n[:, BAND].sum() / exposure], r0=[S3_VFAINT[0]],
            alpha=[S3_VFAINT[1]], matrix=MATRIX, e_min=E_MIN, e_max=E_MAX, energ_lo=E_LO, energ_hi=E_HI,
            observed_band_counts=spectrum[BAND].sum(), exposure=exposure)
        spectra.append(spectrum)
        arrays.append(model.arrays())
    stacked = {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}
    fit = P.fit_with_pback(np.array(spectra), model, arrays=stacked)
    assert np.all(fit.converged)
    z_band = (fit.band_counts - truth_band) / fit.band_counts_error
    z_alpha = (fit.values[:, 1] - S3_VFAINT[1]) / fit.errors[:, 1]
    return z_band, z_alpha


def _check_coverage(z, n):
    # 1-sigma coverage 0.683 within 3 binomial sigmas; mean z within 3/sqrt(n)
    inside = np.mean(np.abs(z) < 1.0)
    tol = 3 * np.sqrt(0.683 * 0.317 / n)
    assert abs(inside - 0.683) < tol, (inside, tol)
    assert abs(np.mean(z)) < 3 / np.sqrt(n)


def test_injection_recovery_coverage_fast():
    n = 200
    z_band, z_alpha = _coverage(n, seed=11)
    _check_coverage(z_band, n)
    _check_coverage(z_alpha, n)


@pytest.mark.slow
def test_injection_recovery_coverage_slow():
    n = 1000
    z_band, z_alpha = _coverage(n, seed=12)
    _check_coverage(z_band, n)
    _check_coverage(z_alpha, n)
    # 90 % coverage as well (|z| < 1.645)
    for z in (z_band, z_alpha):
        assert abs(np.mean(np.abs(z) < 1.645) - 0.90) < 3 * np.sqrt(0.09 / n)


def test_injection_recovery_event_list(fake_api, s3_events, rmf_path):
    """End to end on the simulated event file: norm and alpha within 3 sigma of the truth."""
    path, ev = s3_events
    model = P.generate_pback(read_chandra_events(path), chip_box_region(7, chipy=(1, 512)), read_rmf(rmf_path))
    fit = P.fit_with_pback(model.meta["region_spectrum"], model)
    truth_band = ev["expected"][7][:16][:, model.band].sum()
    assert abs(fit.band_counts - truth_band) < 3 * fit.band_counts_error
    assert abs(fit.values[1] - S3_VFAINT[1]) < 3 * fit.errors[1]
    # two CCDs: the model is the sum of per-CCD models, each scaled by the common factor
    assert model.ccds == (7,)


def test_two_ccds_sum(fake_api, rmf_path, tmp_path):
    path = tmp_path / "two.fits"
    _simulate_file(path, ccds=(5, 7), rate=1.0, exposure=5000.0)
    e = read_chandra_events(path)
    reg = tmp_path / "two.reg"
    reg.write_text("image\nbox(512.5,512.5,1024,1024,0) # tag={ccd_id=5}\n"
                   "box(512.5,256.5,1024,512,0) # tag={ccd_id=7}\n")
    model = P.generate_pback(e, read_region(reg), read_rmf(rmf_path))
    assert model.ccds == (5, 7) and list(model.is_bi) == [True, True]
    np.testing.assert_allclose(model.alpha0, [0.20, 0.57])
    single = [P.generate_pback(e, chip_box_region(5), read_rmf(rmf_path)),
              P.generate_pback(e, chip_box_region(7, chipy=(1, 512)), read_rmf(rmf_path))]
    # unscaled per-CCD photon models do not depend on the other CCD
    np.testing.assert_allclose(model.photon_continuum[0], single[0].photon_continuum[0], rtol=1e-13)
    np.testing.assert_allclose(model.photon_lines[1], single[1].photon_lines[0], rtol=1e-13)
    assert model.total[model.band].sum() == pytest.approx(model.observed_band_counts, rel=1e-12)


# ---------------------------------------------------------------------------
# real templates (shared data, other engineer's template library)
# ---------------------------------------------------------------------------


def _real_api():
    if not TEMPLATES.is_dir():
        pytest.skip(f"mkacispback templates not found at {TEMPLATES}")
    try:
        from bkgjax.missions.acis import templates as acis_templates
    except ImportError as exc:
        pytest.skip(f"bkgjax.missions.acis.templates not available: {exc}")
    return acis_templates


def test_whole_chip_identity_real_templates_as_written():
    """Whole-chip region, weights = template weights: the weighted sum of the 32 real S3 VFAINT
    templates, split into continuum and lines, equals the sum of the 32 files evaluated as
    written (XspecTermModel.__call__, an independent evaluation path), to 1e-10."""
    api = _real_api()
    lib = api.load_template_library(7, "vfaint", TEMPLATES)
    lo, hi = E_LO[::5], E_HI[4::5]  # 50 eV photon bins, 0.2-12.5 keV
    cont, lines = [], []
    for m in lib.models:
        terms = m.additive_terms(lo, hi, drop_fsline_norm_above=None)
        cont.append(sum(np.asarray(s) for _, kind, s in terms if kind == "continuum"))
        lines.append(sum(np.asarray(s) for _, kind, s in terms if kind != "continuum"))
    w = np.asarray(lib.template_weights, float)
    C, L = A.ccd_photon_model(np.array(cont), np.array(lines), w, w, 1.0)
    reference = sum(np.asarray(m(lo, hi)) for m in lib.models)
    np.testing.assert_allclose(np.asarray(C) + np.asarray(L), reference, rtol=1e-10, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("ccd,mode", [(7, "vfaint"), (2, "faint"), (1, "vfaint")])  # ccd1: scale 0.90
def test_whole_chip_identity_real_templates(ccd, mode):
    """Whole-chip region with weights = template weights: the generated (unscaled) model is the sum
    of the 32 templates as the tool evaluates them (fslines with norm > 1 dropped), to 1e-10."""
    api = _real_api()
    lib = api.load_template_library(ccd, mode, TEMPLATES)
    lo, hi = E_LO[::5], E_HI[4::5]  # 50 eV photon bins, 0.2-12.5 keV
    cont, lines = lib.slice_components(lo, hi, drop_fsline_norm_above=1.0)
    w = np.asarray(lib.template_weights, float)
    C, L = A.ccd_photon_model(cont, lines, w, w, 1.0)
    reference = np.zeros(lo.size)
    for m in lib.models:
        for _label, _kind, spec in m.additive_terms(lo, hi, drop_fsline_norm_above=1.0):
            reference += lib.scale * np.asarray(spec)
    np.testing.assert_allclose(np.asarray(C) + np.asarray(L), reference, rtol=1e-10, atol=0)


@pytest.mark.slow
def test_real_templates_end_to_end(tmp_path, rmf_path):
    """S3 VFAINT from the real templates: simulate, generate, fit; norm and alpha within 3 sigma."""
    api = _real_api()
    lib = api.load_template_library(7, "vfaint", TEMPLATES)
    comps = {7: lib.slice_components(E_LO, E_HI, drop_fsline_norm_above=1.0)}
    r0, alpha = api.HARDNESS[(7, "vfaint")]
    ev = simulate_acis_events(5, components=comps, exposure=3.0e4, rate={7: 2 * r0}, matrix=MATRIX, energ_lo=E_LO,
                              energ_hi=E_HI, e_min=E_MIN, e_max=E_MAX, hardness={7: (r0, alpha)})
    path = tmp_path / "real.fits"
    write_chandra_events(path, **{k: v for k, v in ev.items() if k != "expected"}, exposure=3.0e4,
                         datamode="VFAINT")
    model = P.generate_pback(read_chandra_events(path), chip_box_region(7), read_rmf(rmf_path),
                             templates=TEMPLATES)
    fit = P.fit_with_pback(model.meta["region_spectrum"], model)
    truth_band = ev["expected"][7][:, model.band].sum()
    assert fit.converged
    assert abs(fit.band_counts - truth_band) < 3 * fit.band_counts_error
    assert abs(fit.values[1] - alpha) < 3 * fit.errors[1]


# ---------------------------------------------------------------------------
# NumPyro model (bkgjax.missions.acis.posterior)
# ---------------------------------------------------------------------------


def _source_setup(fake_api, s3_events, rmf_path, exposure=2.0e4):
    path, _ = s3_events
    model = P.generate_pback(read_chandra_events(path), chip_box_region(7, chipy=(1, 512)), read_rmf(rmf_path))
    centre = 0.5 * (E_LO + E_HI)
    arf = 300.0 * np.exp(-0.5 * ((np.log(centre) - np.log(1.5)) / 0.9) ** 2)
    response = exposure * arf[:, None] * MATRIX
    return model, response


def test_numpyro_log_density_matches_scipy(fake_api, s3_events, rmf_path):
    """The model's joint log density equals an independent scipy computation (Poisson likelihood,
    truncated-normal 5 %/8 % norm priors, normal alpha prior, uniform source priors)."""
    from numpyro.infer.util import log_density
    from scipy import stats

    from bkgjax.missions.acis.posterior import pback_source_model
    from bkgjax.spectral.components import powerlaw_integral

    model, response = _source_setup(fake_api, s3_events, rmf_path)
    arrays = model.arrays()
    counts = np.asarray(model.meta["region_spectrum"], float)
    params = {"log_norm": -9.0, "index": 1.7, "norm_continuum": 1.03, "norm_lines": 0.95,
              "alpha": np.array([0.4])}
    ld, _ = log_density(pback_source_model, (counts, arrays, response, E_LO, E_HI),
                        dict(bi_index=(0,), propagate=True, alpha_sigma=0.2), params)
    src = np.exp(-9.0) * np.asarray(powerlaw_integral(E_LO, E_HI, 1.7)) @ response
    factor = (model.rate[0] / S3_VFAINT[0]) ** (0.4 - S3_VFAINT[1])
    mu = src + 1.03 * factor * model.continuum[0] + 0.95 * model.lines[0]
    ref = (stats.poisson.logpmf(counts, mu).sum()
           + stats.truncnorm.logpdf(1.03, -1 / 0.05, np.inf, loc=1, scale=0.05)
           + stats.truncnorm.logpdf(0.95, -1 / 0.08, np.inf, loc=1, scale=0.08)
           + stats.norm.logpdf(0.4, S3_VFAINT[1], 0.2) + stats.uniform.logpdf(-9.0, -25, 25)
           + stats.uniform.logpdf(1.7, 0, 5))
    assert float(ld) == pytest.approx(ref, rel=1e-12)


@pytest.mark.slow
def test_numpyro_propagation_widens_flux_interval(fake_api, s3_events, rmf_path):
    """Short NUTS runs on a faint source over the simulated background: both converge, the
    propagated 90 % flux interval is wider than the fixed-background one, and its median lies
    within 3 posterior standard deviations of the injected flux (one fixed realisation)."""
    from bkgjax.missions.acis.posterior import run_pback_nuts
    from bkgjax.spectral.components import powerlaw_integral

    model, response = _source_setup(fake_api, s3_events, rmf_path)
    k_true, gamma = 3e-4, 2.0
    src = k_true * np.asarray(powerlaw_integral(E_LO, E_HI, gamma)) @ response
    counts = model.meta["region_spectrum"] + np.random.default_rng(4).poisson(src)
    flux_true = k_true * 1.602176634e-9 * float(powerlaw_integral(0.5, 7.0, gamma - 1.0))
    init = {"log_norm": float(np.log(k_true)), "index": gamma}
    kw = dict(init=init, num_warmup=150, num_samples=200, num_chains=2, seed=1)
    fixed = run_pback_nuts(counts, model, response, E_LO, E_HI, propagate=False, **kw)
    full = run_pback_nuts(counts, model, response, E_LO, E_HI, propagate=True, **kw)
    from numpyro.diagnostics import split_gelman_rubin

    widths = []
    for post in (fixed, full):
        assert float(split_gelman_rubin(post["flux"])) < 1.05
        q5, q95 = np.quantile(post["flux"], [0.05, 0.95])
        widths.append(q95 - q5)
    assert abs(np.median(full["flux"]) - flux_true) < 3 * np.std(full["flux"])
    assert widths[1] > widths[0]  # (1.05x here: 9e4 background counts constrain the norms better than the priors)
