"""ISGRI ScW/Crab tables (bkgjax.missions.isgri.tables) and the mission simulator
(bkgjax.missions.isgri.mission): the issue-5 input contract, bad input, simulator truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bkgjax  # noqa: F401  (float64)
from bkgjax.io.errors import BkgjaxIOError, MissingFileError
from bkgjax.missions.isgri import instrument as isgri
from bkgjax.missions.isgri.mission import (
    _templates,
    fov_sky_maps,
    gxb_mcrab,
    simulate_mission,
    write_tables,
)
from bkgjax.missions.isgri.tables import (
    band_names,
    check_same_bands,
    read_crab_table,
    read_profile,
    read_scw_table,
    scw_data_from_table,
)


@pytest.fixture(scope="module")
def mission():
    return simulate_mission(seed=3, n_orbits=40)


def test_simulator_contract_and_reproducible(mission):
    scw, crab, truth = mission
    for col in ("SCW_ID", "REV", "PHASE", "MJD", "L", "B", "EXPOSURE", "RATE_25_60",
                "RATE_ERR_25_60", "RATE_60_80", "RATE_80_200", "RATE_168_185"):
        assert col in scw.colnames
    for col in ("REV", "MJD", "OFFSET", "RATE_25_60", "RATE_80_200"):
        assert col in crab.colnames
    assert len(np.unique(scw["REV"])) == 40
    assert np.all((scw["PHASE"] >= 0) & (scw["PHASE"] <= 1))
    assert np.all(np.isfinite(scw["RATE_25_60"]))
    again, _, truth2 = simulate_mission(seed=3, n_orbits=40)
    np.testing.assert_array_equal(np.asarray(again["RATE_25_60"]), np.asarray(scw["RATE_25_60"]))
    assert truth2["regions"] == truth["regions"]
    # Pointing patterns: Galactic-only orbits and orbits with many BKG ScWs both occur.
    gal = isgri.is_galactic(np.asarray(scw["L"]), np.asarray(scw["B"]))
    revs, idx = np.unique(np.asarray(scw["REV"]), return_inverse=True)
    n_bkg = np.bincount(idx, weights=~gal)
    assert (n_bkg == 0).sum() >= 5 and (n_bkg >= 10).sum() >= 5


def test_simulator_truth_regions(mission):
    _, _, truth = mission
    gb, lp, lm, coma = (truth["regions"][n] for n in ("GB", "L+20", "L-20", "3C 273/Coma"))
    assert gb["25_60"] > lp["25_60"] > 0 and gb["25_60"] > lm["25_60"] > 0
    assert abs(coma["25_60"]) < 0.5
    # GB FOV truth is of the order of Table 1 (155, 97, 102 mCrab).
    assert 120 < gb["25_60"] < 220 and 50 < gb["60_80"] < 130 and 50 < gb["80_200"] < 130


def test_fov_convolution_against_direct_integral():
    """Map interpolation vs a direct 2-D integral of template x response (independent)."""
    l_grid, b_grid, maps = fov_sky_maps()
    for l0, b0 in ((20.0, 0.0), (-7.3, 2.1), (45.0, -5.0)):
        x = np.arange(-12.5, 12.5 + 1e-9, 0.05)
        xx, yy = np.meshgrid(x, x)
        resp = isgri.collimator_response(xx, yy)
        t_here = np.stack(_templates(l0 + xx, b0 + yy))
        t_gc = np.stack(_templates(xx, yy))
        direct = (t_here * resp).sum(axis=(1, 2)) / (t_gc * resp).sum(axis=(1, 2))
        from bkgjax.missions.isgri.mission import _interp_maps
        interp = _interp_maps(l_grid, b_grid, maps, np.array([l0]), np.array([b0]))[:, 0]
        np.testing.assert_allclose(interp, direct, rtol=0.01)


def test_collimator_solid_angle_and_crab_fluxes():
    from scipy.integrate import quad

    one_axis, _ = quad(isgri.collimator_transmission, -15, 15, points=[-12.41, -4.5, 4.5, 12.41])
    assert one_axis ** 2 == pytest.approx(286.0, rel=1e-6)
    ph, _ = quad(lambda e: 10 * e ** -2.1, 25, 60)
    en, _ = quad(lambda e: 10 * e ** -1.1, 25, 60)
    assert isgri.crab_photon_flux(25, 60) == pytest.approx(ph, rel=1e-10)
    assert isgri.crab_energy_flux(25, 60) == pytest.approx(en * 1.602176634e-9, rel=1e-10)
    assert isgri.mcrab_to_energy_flux(1000.0, 25, 60) == pytest.approx(en * 1.602176634e-9)


def test_spectral_band_names():
    assert len(isgri.SPECTRAL_BANDS) == 21
    assert isgri.SPECTRAL_BANDS[0][0] == 25 and isgri.SPECTRAL_BANDS[-1] == (168, 185)
    edges = np.array(isgri.SPECTRAL_EDGES_KEV, float)
    ideal = 25 * (185 / 25) ** (np.arange(22) / 21)
    assert np.all(np.abs(edges - ideal) < 1.0)
    scw, crab, truth = simulate_mission(seed=0, n_orbits=6, scw_per_orbit=12, spectral_bands=True)
    assert len(band_names(scw)) == 3 + 21
    assert "RATE_168_185" in scw.colnames and "RATE_25_27" in scw.colnames
    assert set(truth["region_spectra"]) >= {"GB"}


@pytest.mark.parametrize("fmt", ["fits", "ecsv"])
def test_roundtrip(tmp_path, mission, fmt):
    scw, crab, _ = mission
    p_scw, p_crab = write_tables(scw, crab, tmp_path, fmt=fmt)
    s = read_scw_table(p_scw)
    c = read_crab_table(p_crab)
    assert s.bands == ("25_60", "60_80", "80_200", "168_185")
    assert check_same_bands(s, c) == s.bands
    np.testing.assert_allclose(s.rate[:, 0], np.asarray(scw["RATE_25_60"]))
    np.testing.assert_array_equal(s.rev, np.asarray(scw["REV"]))
    assert s.scw_id[0] == scw["SCW_ID"][0]


def _bad(scw, **changes):
    t = scw.copy()
    for col, (row, value) in changes.items():
        t[col][row] = value
    return t


def test_bad_inputs(tmp_path, mission):
    scw, crab, _ = mission
    with pytest.raises(BkgjaxIOError, match="PHASE.*outside 0-1"):
        scw_data_from_table(_bad(scw, PHASE=(5, 1.3)))
    with pytest.raises(BkgjaxIOError, match="EXPOSURE.*not positive"):
        scw_data_from_table(_bad(scw, EXPOSURE=(2, 0.0)))
    with pytest.raises(BkgjaxIOError, match="RATE_60_80.*NaN"):
        scw_data_from_table(_bad(scw, RATE_60_80=(7, np.nan)))
    t = scw.copy()
    t.remove_column("MJD")
    path = tmp_path / "nomjd.fits"
    t.write(path)
    with pytest.raises(BkgjaxIOError, match=r"nomjd\.fits.*missing column\(s\) MJD"):
        read_scw_table(path)
    t = scw.copy()
    t.remove_column("RATE_ERR_60_80")
    with pytest.raises(BkgjaxIOError, match="RATE_ERR_60_80"):
        scw_data_from_table(t)
    with pytest.raises(MissingFileError):
        read_scw_table(tmp_path / "nothere.fits")
    # Bands present in one table and not the other are named.
    c = crab.copy()
    c.remove_column("RATE_60_80")
    c["RATE_200_300"] = c["RATE_25_60"]
    p_scw, _ = write_tables(scw, crab, tmp_path)
    c.write(tmp_path / "crab2.fits")
    with pytest.raises(BkgjaxIOError, match=r"RATE_60_80 only in the ScW.*RATE_200_300 only in "
                                            r"the Crab table .*crab2\.fits"):
        check_same_bands(read_scw_table(p_scw), read_crab_table(tmp_path / "crab2.fits"))
    c = crab.copy()
    c["OFFSET"][0] = -1.0
    c.write(tmp_path / "crab3.ecsv")
    with pytest.raises(BkgjaxIOError, match="OFFSET.*below 0"):
        read_crab_table(tmp_path / "crab3.ecsv")


def test_read_profile(tmp_path):
    p = tmp_path / "nir.txt"
    p.write_text("# l value\n10 2.0\n-10 1.0\n0 5.0\n")
    l, v = read_profile(p)
    np.testing.assert_array_equal(l, [-10, 0, 10])
    np.testing.assert_array_equal(v, [1.0, 5.0, 2.0])
    p.write_text("1 2 3\n")
    with pytest.raises(BkgjaxIOError, match="two columns"):
        read_profile(p)


def test_gxb_truth_is_count_rate_ratio():
    """At the Galactic centre the FOV templates are 1 by construction, so the mCrab of a band is
    the ratio of the ridge and Crab count rates of the simulated response (independent quad)."""
    from scipy.integrate import quad

    from bkgjax.missions.isgri import mission as sim

    k_cut, k_pow = sim.ridge_spectrum_norms()
    eff = lambda e: math.exp(-(e / 230.0) ** 1.5)  # noqa: E731
    num, _ = quad(lambda e: eff(e) * (k_cut * math.exp(-e / 11.2) + k_pow * e ** -1.55), 25, 60)
    den, _ = quad(lambda e: eff(e) * 10 * e ** -2.1, 25, 60)
    value = gxb_mcrab(np.array([0.0]), np.array([0.0]), [(25.0, 60.0)])[0, 0]
    assert value == pytest.approx(1000 * num / den, rel=2e-3)
