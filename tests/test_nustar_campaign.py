"""Tests for bkgjax.missions.nustar_cxb.campaign: expected rates, binned cubes, event files.

Reference: Krivonos et al. 2021 (nustar_cxb_stray_light.txt), eq. 1-2, Tables 2-4.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from scipy import integrate, stats

from bkgjax.missions.nustar_cxb.campaign import (
    PAPER_DATASETS,
    PI_CHANNELS,
    CampaignTruth,
    DatasetSpec,
    channel_spectra,
    expected_band_rates,
    expected_cubes,
    expected_rate_components,
    expected_rates,
    level_summary,
    live_mask,
    paper_truths,
    simulate_cubes,
)
from bkgjax.missions.nustar_cxb.campaign_files import simulate_events, write_campaign
from bkgjax.missions.nustar_cxb.events import read_nustar_events
from bkgjax.missions.nustar_cxb.geometry import (
    FPMS,
    PIXEL_AREA_CM2,
    band_pi_edges,
    bin_events,
    energy_bands,
    load_geometry,
    pi_to_energy,
)
from bkgjax.simulate.poisson import poisson_inverse_cdf
from bkgjax.spectral import KEV_TO_ERG

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

DEG2_PER_SR = (180.0 / math.pi) ** 2  # 3282.806


@pytest.fixture(scope="module")
def geos():
    return {f: load_geometry(f) for f in FPMS}


@pytest.fixture(scope="module")
def bands():
    return energy_bands()


# ---------------------------------------------------------------------------
# expected rates
# ---------------------------------------------------------------------------


def _gruber_sr(e):
    """Paper eq. 1: keV/keV/cm^2/s/sr."""
    return 7.877 * e ** -0.29 * math.exp(-e / 41.13)


def test_aperture_cxb_matches_independent_quadrature(geos, bands):
    """The CXB part of the band rates equals eq. 1 integrated with scipy quad, scaled to the
    injected 3-20 keV flux, times T_c * 0.0036 cm^2 * Omega (within 1e-3)."""
    truth = CampaignTruth(cxb_flux_3_20=2.9e-11)
    e_lo, e_hi = bands
    unit_erg = integrate.quad(_gruber_sr, 3.0, 20.0, epsabs=0, epsrel=1e-12)[0] / DEG2_PER_SR * KEV_TO_ERG
    scale = truth.cxb_flux_3_20 / unit_erg
    pi_lo, pi_hi = band_pi_edges(e_lo, e_hi)
    for g in geos.values():
        comp = expected_band_rates(g, truth, e_lo, e_hi, occulted=False, components=True)
        live = live_mask(g, truth)
        for b in (0, 7, 19):
            pis = np.arange(pi_lo[b], pi_hi[b])
            el = pi_to_energy(pis)
            photons = np.array([integrate.quad(lambda e: _gruber_sr(e) / e, a, a + 0.04, epsrel=1e-12)[0]
                                for a in el]) / DEG2_PER_SR * scale            # ph/s/cm^2/deg^2 per channel
            trans = g.transmission(el + 0.02)                                  # [4, n_ch]
            per_chip = trans @ photons                                         # [4]
            ref = per_chip[:, None, None] * PIXEL_AREA_CM2 * g.omega * live
            np.testing.assert_allclose(comp["cxb"][b].sum(axis=(1, 2)), ref.sum(axis=(1, 2)), rtol=1e-3)
            np.testing.assert_allclose(comp["cxb"][b], ref, rtol=1e-3, atol=1e-15)


def test_injected_fluxes_and_components(geos):
    truth = CampaignTruth()
    for fpm in FPMS:
        for occ in (False, True):
            s = channel_spectra(truth, fpm, occulted=occ)
            assert s["pi"][0] == 0 and pi_to_energy(s["pi"][-1] + 1) >= 25.0
            mid = 0.5 * (s["e_lo"] + s["e_hi"])
            in35 = (s["e_lo"] >= 3.0 - 1e-9) & (s["e_hi"] <= 5.0 + 1e-9)
            soft35 = np.sum(s["soft"][in35] * mid[in35]) * KEV_TO_ERG
            np.testing.assert_allclose(soft35, truth.soft_flux_3_5(fpm, occulted=occ), rtol=2e-3)
            if occ:
                assert np.all(s["cxb"] == 0)          # Earth blocks the sky: no CXB in OCC data
            else:
                in320 = (s["e_lo"] >= 3.0 - 1e-9) & (s["e_hi"] <= 20.0 + 1e-9)
                np.testing.assert_allclose(np.sum(s["cxb"][in320] * mid[in320]) * KEV_TO_ERG, 2.81e-11, rtol=1e-4)
    # OCC: no CXB anywhere; FPMB soft = 0.54 x FPMA in OCC (Table 3)
    ca = expected_rate_components(geos["FPMA"], truth, occulted=True)
    cb = expected_rate_components(geos["FPMB"], truth, occulted=True)
    assert np.all(ca["cxb"] == 0) and np.all(cb["cxb"] == 0)
    sa = channel_spectra(truth, "FPMA", occulted=True)["soft"]
    sb = channel_spectra(truth, "FPMB", occulted=True)["soft"]
    np.testing.assert_allclose(sb / sa, 0.54, rtol=1e-12)
    # SCI soft at the documented fraction (with the backscatter branch the SCI soft component
    # has the OCC shape)
    s_sci = channel_spectra(CampaignTruth(sci_soft_backscatter=True), "FPMA", occulted=False)["soft"]
    np.testing.assert_allclose(s_sci / sa, truth.soft_sci_fraction, rtol=1e-12)
    # default: no backscatter branch in SCI (section 5.2.3): much less soft flux above 10 keV
    nb = channel_spectra(CampaignTruth(), "FPMA", occulted=False)
    hi = nb["e_lo"] >= 10.0
    assert nb["soft"][hi].sum() < 0.05 * s_sci[hi].sum()


def test_expected_rates_structure(geos):
    truth = CampaignTruth()
    g = geos["FPMA"]
    pi, rates = expected_rates(g, truth, occulted=False)
    np.testing.assert_array_equal(pi, PI_CHANNELS)
    assert rates.shape == (PI_CHANNELS.size, 4, 32, 32) and rates.dtype == np.float64
    live = live_mask(g, truth)
    assert np.all(rates[:, ~live] == 0) and np.all(rates[:, live] > 0)
    dead = [d for d in truth.dead_pixels if d[0] == "FPMA"]
    assert len(dead) >= 4 and all(not live[d[1], d[3], d[2]] for d in dead)
    # instrumental part: flat inside a chip, chip ratios = chip factors at every energy
    inst = expected_rate_components(g, truth, occulted=False)["instrument"]
    chip = np.array([inst[:, c][:, live[c]].mean(axis=-1) for c in range(4)])  # [4, n_pi]
    np.testing.assert_allclose(chip / chip[0], (np.array(truth.chip_factors["FPMA"]) /
                                                truth.chip_factors["FPMA"][0])[:, None] * np.ones_like(chip), rtol=1e-12)
    # band rates are the channel sums
    e_lo, e_hi = np.array([3.0, 10.0]), np.array([10.0, 20.0])
    br = expected_band_rates(g, truth, e_lo, e_hi, occulted=False)
    pl, ph = band_pi_edges(e_lo, e_hi)
    for b in range(2):
        np.testing.assert_allclose(br[b], rates[pl[b]:ph[b]].sum(axis=0), rtol=1e-12)


def test_levels_match_paper_figure_1(geos):
    """Stacked COSMOS SCI, 2.4 Ms, 3-20 keV: ~50-250 counts per pixel (Fig. 1), aperture-dominated."""
    summ = level_summary(CampaignTruth(), 2.4e6, geometries=geos)
    for fpm in FPMS:
        s = summ[fpm]
        assert 35 < s["sci_3_20_counts_min"] < 70
        assert 180 < s["sci_3_20_counts_max"] < 260
        assert s["frac_cxb"] + s["frac_soft"] > 0.55
        assert 0.25 < s["frac_instrument"] < 0.5


# ---------------------------------------------------------------------------
# Poisson sampler and binned cubes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.4, 6.0, 150.0])
def test_poisson_inverse_cdf_distribution(lam):
    x = np.asarray(poisson_inverse_cdf(jax.random.PRNGKey(3), np.full(100_000, lam)))
    assert x.dtype == np.int32
    ks = np.arange(int(stats.poisson.ppf(1e-3, lam)), int(stats.poisson.isf(1e-3, lam)) + 1)
    obs = np.array([np.sum(x < ks[0])] + [np.sum(x == k) for k in ks] + [np.sum(x > ks[-1])])
    p = np.concatenate([[stats.poisson.cdf(ks[0] - 1, lam)], stats.poisson.pmf(ks, lam), [stats.poisson.sf(ks[-1], lam)]])
    e = p * x.size
    m = e > 5
    chi2 = np.sum((obs[m] - e[m]) ** 2 / e[m])
    assert stats.chi2.sf(chi2, m.sum() - 1) > 1e-3
    assert np.all(np.asarray(poisson_inverse_cdf(0, np.zeros(10))) == 0)
    with pytest.raises(ValueError):
        poisson_inverse_cdf(0, np.array([-1.0]))


@pytest.fixture(scope="module")
def cubes16(geos):
    return simulate_cubes(jax.random.PRNGKey(7), CampaignTruth(), n_campaigns=16, geometries=geos)


def test_simulate_cubes_shapes_and_reproducibility(geos, cubes16):
    n_b = energy_bands()[0].size
    assert cubes16["sci"].shape == (16, 6, 2, n_b, 4, 32, 32)
    assert cubes16["occ"].shape == (16, 6, 2, n_b, 4, 32, 32)
    assert cubes16["occ_10_20"].shape == (16, 6, 2, 4, 32, 32)
    assert cubes16["sci"].dtype == np.int32
    np.testing.assert_allclose(cubes16["exposure_sci"], [d.exposure_s for d in PAPER_DATASETS])
    np.testing.assert_allclose(cubes16["exposure_occ"], [d.occ_exposure_s for d in PAPER_DATASETS])
    a = simulate_cubes(11, n_campaigns=2, geometries=geos)
    b = simulate_cubes(jax.random.PRNGKey(11), n_campaigns=2, geometries=geos)
    c = simulate_cubes(12, n_campaigns=2, geometries=geos)
    for k in ("sci", "occ", "occ_10_20"):
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    one = simulate_cubes(11, geometries=geos)
    assert one["sci"].shape == (6, 2, n_b, 4, 32, 32)
    # dead pixels never get counts
    live = np.stack([live_mask(geos[f], CampaignTruth()) for f in FPMS])         # [2, 4, 32, 32]
    sci = np.asarray(cubes16["sci"])
    for fi in range(2):
        assert np.all(sci[:, :, fi][..., ~live[fi]] == 0)


def test_simulate_cubes_mean_matches_expected(geos, cubes16):
    exp = expected_cubes(CampaignTruth(), geometries=geos)
    n = cubes16["sci"].shape[0]
    for k in ("sci", "occ", "occ_10_20"):
        tot = np.asarray(cubes16[k], dtype=np.float64).sum(axis=0)
        mu = n * exp[k]
        m = mu > 0
        assert np.all(tot[~m] == 0)
        # Pearson chi-square over ~1e6 pixel-bins: Poisson mean *and* variance
        chi2 = np.sum((tot[m] - mu[m]) ** 2 / mu[m])
        dof = int(m.sum())
        assert abs(chi2 - dof) / math.sqrt(2 * dof) < 5, (k, chi2, dof)
        # aggregated per data set, FPM (and band): totals within 4 sigma
        ax = tuple(range(2, tot.ndim))
        z = (tot.sum(axis=ax) - mu.sum(axis=ax)) / np.sqrt(mu.sum(axis=ax))
        assert np.all(np.abs(z) < 4.5), (k, z)


def test_chip_factors_visible_in_occ_high_energy(geos, cubes16):
    """OCC 10-20 keV images: per-chip flat level (after a common aperture term in Omega)
    recovers the injected chip factors M_c (paper section 4: M_bkg from OCC 10-20 keV)."""
    truth = CampaignTruth()
    counts = np.asarray(cubes16["occ_10_20"][0], dtype=np.float64).sum(axis=0)  # sum of data sets
    for fi, fpm in enumerate(FPMS):
        g = geos[fpm]
        live = live_mask(g, truth)
        y = counts[fi][live]
        chips = np.broadcast_to(np.arange(4)[:, None, None], live.shape)[live]
        design = np.column_stack([(chips == c).astype(float) for c in range(4)] + [g.omega[live]])
        coef, *_ = np.linalg.lstsq(design / np.sqrt(y.clip(1))[:, None], y / np.sqrt(y.clip(1)), rcond=None)
        m = np.array(truth.chip_factors[fpm])
        np.testing.assert_allclose(coef[:4] / coef[:4].mean(), m / m.mean(), rtol=0.02)
    # the flat chip levels differ visibly: FPMA DET3 is ~20 per cent above the mean
    a = counts[0]
    live_a = live_mask(geos["FPMA"], truth)
    assert a[3][live_a[3]].mean() > 1.1 * a[1][live_a[1]].mean()


def test_per_dataset_truths(geos):
    truths = paper_truths()
    assert len(truths) == 6 and truths[2].soft_gamma1 == 7.0 and truths[3].soft_flux_3_5_occ == 0.8e-12
    exp = expected_cubes(truths, geometries=geos)
    exp1 = expected_cubes(truths[0], geometries=geos)
    np.testing.assert_allclose(exp["sci"][0], exp1["sci"][0])
    assert not np.allclose(exp["occ"][2] / PAPER_DATASETS[2].occ_exposure_s,
                           exp1["occ"][2] / PAPER_DATASETS[2].occ_exposure_s)
    with pytest.raises(ValueError, match="one per data set"):
        expected_cubes(truths[:3], geometries=geos)


# ---------------------------------------------------------------------------
# event files
# ---------------------------------------------------------------------------


def test_simulate_events(geos):
    truth = CampaignTruth()
    g = geos["FPMB"]
    ev = simulate_events(5, g, truth, 2e4, occulted=True)
    assert set(ev) == {"det_id", "rawx", "rawy", "pi"}
    pi, rates = expected_rates(g, truth, occulted=True)
    n_exp = rates.sum() * 2e4
    assert abs(ev["pi"].size - n_exp) < 5 * math.sqrt(n_exp)
    assert ev["pi"].min() >= pi[0] and ev["pi"].max() <= pi[-1]
    ev2 = simulate_events(5, g, truth, 2e4, occulted=True)
    np.testing.assert_array_equal(ev["pi"], ev2["pi"])
    with pytest.raises(ValueError, match="exposure_s"):
        simulate_events(0, g, truth, -1.0, occulted=False)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, geos):
    out = tmp_path_factory.mktemp("campaign")
    specs = (DatasetSpec("Test Field", 6e4, 4e4, n_obs=2, begin="2013-01-01", end="2013-01-10", obs_prefix="60021"),
             DatasetSpec("Other-Field", 2e4, 2e4, n_obs=1, begin="2014-02-01", end="2014-02-02", obs_prefix="60099"))
    path = write_campaign(out, seed=3, datasets=specs, scale_exposure=0.5, progress=False, geometries=geos)
    return path, specs


def test_campaign_toml_and_truth(campaign):
    path, specs = campaign
    cfg = tomllib.loads(path.read_text())
    assert [d["name"] for d in cfg["dataset"]] == [s.name for s in specs]
    for d, s in zip(cfg["dataset"], specs):
        assert len(d["sci"]) == len(d["occ"]) == 2 * s.n_obs
        for f in d["sci"] + d["occ"]:
            assert (path.parent / f).is_file()
    assert cfg["dataset"][0]["sci"][0] == "test_field_obs0_A_sci.evt"
    truth = json.loads((path.parent / "truth.json").read_text())
    assert CampaignTruth.from_dict(truth["truth"]) == CampaignTruth()
    assert truth["datasets"][0]["exposure_s"] == pytest.approx(3e4)
    assert len(set(truth["datasets"][0]["obs_ids"] + truth["datasets"][1]["obs_ids"])) == 3


def test_event_files_read_back(campaign, geos, bands):
    """Binned event files agree with the expected counts per band (Pearson chi-square)."""
    path, specs = campaign
    cfg = tomllib.loads(path.read_text())
    truth = CampaignTruth()
    e_lo, e_hi = bands
    chi2, dof = 0.0, 0
    for d, s in zip(cfg["dataset"], specs):
        for mode, occ, t in (("sci", False, s.exposure_s * 0.5), ("occ", True, s.occ_exposure_s * 0.5)):
            for fpm in FPMS:
                evs = [read_nustar_events(path.parent / f) for f in d[mode]]
                evs = [e for e in evs if e.instrument == fpm]
                assert len(evs) == s.n_obs
                assert sum(e.exposure for e in evs) == pytest.approx(t)
                want = "OCCULTED" if occ else "SCIENCE"
                assert all(e.header["OBSMODE"] == want and len(e.obs_id) == 11 for e in evs)
                assert all(np.all(np.diff(e.time) >= 0) and e.time[0] >= e.gti[0, 0] for e in evs)
                cube = sum(bin_events(e, e_lo, e_hi) for e in evs)
                live = live_mask(geos[fpm], truth)
                assert np.all(cube[:, ~live] == 0)
                mu = expected_band_rates(geos[fpm], truth, e_lo, e_hi, occulted=occ).sum(axis=(1, 2, 3)) * t
                obs = cube.sum(axis=(1, 2, 3))
                chi2 += np.sum((obs - mu) ** 2 / mu)
                dof += mu.size
    # 2 data sets x 2 modes x 2 FPMs x 20 bands; fixed seed, require p > 1e-3
    assert stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def test_input_validation(geos, tmp_path):
    with pytest.raises(ValueError, match="exposure_s"):
        DatasetSpec("X", -5.0, 1.0)
    with pytest.raises(ValueError, match="n_obs"):
        DatasetSpec("X", 5.0, 1.0, n_obs=0)
    with pytest.raises(ValueError, match="focal plane module"):
        CampaignTruth(chip_factors={"FPMC": (1, 1, 1, 1), "FPMA": (1, 1, 1, 1)})
    with pytest.raises(ValueError, match="4 values"):
        CampaignTruth(chip_factors={"FPMA": (1, 1, 1), "FPMB": (1, 1, 1, 1)})
    with pytest.raises(ValueError, match="cxb_flux_3_20"):
        CampaignTruth(cxb_flux_3_20=-1e-11)
    with pytest.raises(ValueError, match="dead_pixels"):
        CampaignTruth(dead_pixels=(("FPMA", 4, 0, 0),))
    with pytest.raises(ValueError, match="scale_exposure"):
        write_campaign(tmp_path, scale_exposure=0.0, progress=False, geometries=geos)
    with pytest.raises(ValueError, match="distinct"):
        expected_cubes(datasets=(DatasetSpec("A b", 1.0, 1.0), DatasetSpec("a-b", 1.0, 1.0)), geometries=geos)
    with pytest.raises(ValueError, match="PI range"):
        expected_band_rates(geos["FPMA"], CampaignTruth(), [20.0], [30.0], occulted=False)
    with pytest.raises(ValueError, match="FPMA and FPMB"):
        simulate_cubes(0, geometries={"FPMA": geos["FPMA"]})
