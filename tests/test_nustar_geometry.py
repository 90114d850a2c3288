"""NuSTAR aperture geometry (bkgjax.missions.nustar_cxb.geometry) and the CALDB readers behind it."""

from __future__ import annotations

import importlib.resources
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from scipy import integrate

from bkgjax.io import BkgjaxIOError
from bkgjax.missions.nustar_cxb import geometry as nustar
from bkgjax.missions.nustar_cxb.caldb import (
    read_aperture_image,
    read_detabs,
    read_instrument_map,
    read_transmission_arf,
)
from bkgjax.missions.nustar_cxb.events import read_nustar_events

REAL_EVT = "nustar/events/nu90410111001A06_cl_sunpos.evt"

# shared-data README (nustar/aperture), FPMA with the bkgjax mast-shift convention:
# per-chip (min, max) of Omega per RAW pixel in deg^2, and the mean over all pixels
README_FPMA_RANGES = {0: (0.33, 6.4), 1: (0.26, 5.7), 2: (4.1, 9.1), 3: (4.2, 9.7)}
README_FPMA_MEAN = 4.9
# the README's second set of numbers ("roughly ... det0 0.14-5.4 ..."): reproduced without mast shift
README_FPMA_RANGES_UNSHIFTED = {0: (0.14, 5.4), 1: (0.31, 6.1), 2: (3.7, 9.2), 3: (3.7, 9.0)}


@pytest.fixture(scope="module")
def nustar_dir(shared_data):
    return shared_data / "nustar"


@pytest.fixture(scope="module")
def derived(nustar_dir):
    return {fpm: nustar.derive_geometry(fpm, nustar_dir) for fpm in nustar.FPMS}


def _chip_ranges(omega, mask):
    return {d: (omega[d][mask[d]].min(), omega[d][mask[d]].max()) for d in range(4)}


# ---------------------------------------------------------------------------
# PI grid and bands (no data needed)
# ---------------------------------------------------------------------------


def test_constants_and_pi_grid():
    assert nustar.PIXEL_AREA_CM2 == 0.0036 and nustar.FPMS == ("FPMA", "FPMB")
    assert nustar.APERTURE_CONSTANT == pytest.approx(0.003465)
    assert nustar.pi_to_energy(0) == 1.6 and nustar.pi_to_energy(35) == pytest.approx(3.0)
    pi = np.arange(4096)
    np.testing.assert_array_equal(nustar.energy_to_pi(nustar.pi_to_energy(pi)), pi)
    assert nustar.energy_to_pi(3.0) == 35 and nustar.energy_to_pi(20.0) == 460
    assert nustar.energy_to_pi(3.019) == 35 and nustar.energy_to_pi(3.021) == 36
    assert nustar.energy_to_pi(np.array([3.0, 10.0])).dtype == np.int64


def test_energy_bands_snapped_monotonic():
    e_lo, e_hi = nustar.energy_bands()
    assert e_lo.shape == e_hi.shape == (20,) and e_lo.dtype == np.float64
    assert e_lo[0] == pytest.approx(3.0) and e_hi[-1] == pytest.approx(20.0)
    np.testing.assert_array_equal(e_hi[:-1], e_lo[1:])
    edges = np.append(e_lo, e_hi[-1])
    k = (edges - 1.6) / 0.04
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)  # on the PI grid
    assert np.all(np.diff(edges) > 0)
    # within half a channel of the logarithmic grid
    assert np.max(np.abs(edges - np.geomspace(3.0, 20.0, 21))) <= 0.02 + 1e-12
    pi_lo, pi_hi = nustar.band_pi_edges(e_lo, e_hi)
    assert pi_lo.dtype == np.int64 and pi_lo[0] == 35 and pi_hi[-1] == 460
    np.testing.assert_array_equal(pi_hi[:-1], pi_lo[1:])
    with pytest.raises(ValueError, match="snap to the same PI channel"):
        nustar.energy_bands(3.0, 3.2, 10)
    with pytest.raises(ValueError):
        nustar.energy_bands(1.0, 20.0)
    with pytest.raises(ValueError, match="empty"):
        nustar.band_pi_edges([3.0], [3.01])


def test_bin_events_synthetic():
    ev = SimpleNamespace(det_id=np.array([0, 1, 1, 3, 2]), rawx=np.array([0, 5, 5, 31, 7]),
                         rawy=np.array([0, 6, 6, 31, 8]),
                         pi=np.array([35, 41, 42, 459, 460]))  # 3.0, 3.24, 3.28, 19.96, 20.0 keV
    e_lo, e_hi = np.array([3.0, 3.28]), np.array([3.28, 20.0])
    c = nustar.bin_events(ev, e_lo, e_hi)
    assert c.shape == (2, 4, 32, 32) and c.dtype == np.int64
    assert c[0, 0, 0, 0] == 1 and c[0, 1, 6, 5] == 1 and c[1, 1, 6, 5] == 1 and c[1, 3, 31, 31] == 1
    assert c.sum() == 4  # PI 460 (20.0 keV) is outside [3, 20)


# ---------------------------------------------------------------------------
# mosaic (no data needed)
# ---------------------------------------------------------------------------


def test_mosaic_inverse_and_layout():
    rng = np.random.default_rng(0)
    cube = rng.normal(size=(3, 2, 4, 32, 32))
    m = nustar.to_mosaic(cube)
    assert m.shape == (3, 2, 64, 64)
    np.testing.assert_array_equal(nustar.from_mosaic(m), cube)
    img = rng.integers(0, 100, size=(64, 64))
    np.testing.assert_array_equal(nustar.to_mosaic(nustar.from_mosaic(img)), img)
    # every RAW pixel appears exactly once
    ids = np.arange(4096).reshape(4, 32, 32)
    np.testing.assert_array_equal(np.sort(nustar.to_mosaic(ids).ravel()), np.arange(4096))
    # paper Fig. 2 with origin='lower': DET0 upper right, DET1 upper left, DET2 bottom left, DET3 bottom right
    chip = nustar.to_mosaic(np.broadcast_to(np.arange(4)[:, None, None], (4, 32, 32)))
    assert np.all(chip[32:, 32:] == 0) and np.all(chip[32:, :32] == 1)
    assert np.all(chip[:32, :32] == 2) and np.all(chip[:32, 32:] == 3)
    with pytest.raises(ValueError):
        nustar.to_mosaic(np.zeros((4, 32, 31)))


# ---------------------------------------------------------------------------
# shipped geometry (no data needed)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fpm", nustar.FPMS)
def test_shipped_geometry_structure(fpm):
    g = nustar.load_geometry(fpm)
    assert nustar.load_geometry(fpm) is g  # cached
    assert g.fpm == fpm
    assert g.omega.shape == (4, 32, 32) and g.omega.dtype == np.float64
    assert g.pixel_mask.dtype == bool and g.n_subpixels.shape == (4, 32, 32)
    assert not g.omega.flags.writeable
    assert np.all(g.omega[~g.pixel_mask] == 0) and np.all(g.omega[g.pixel_mask] > 0)
    np.testing.assert_array_equal(g.pixel_mask, g.n_subpixels > 0)
    # ~25 DET1 sub-pixels (5 x 5) per RAW pixel, 360 x 360 minus the gaps in all
    assert 24 <= np.median(g.n_subpixels[g.pixel_mask]) <= 26
    assert g.n_subpixels.sum() < 360 * 360
    assert g.energy_lo[0] == pytest.approx(1.6) and g.energy_hi[-1] == pytest.approx(80.0, abs=1e-3)
    assert g.detabs.shape == (4, g.energy_lo.size) and g.be_window.shape == g.energy_lo.shape
    res = importlib.resources.files("bkgjax.missions.nustar_cxb").joinpath("data", f"geometry_{fpm}.npz")
    assert len(res.read_bytes()) < 200_000


def test_shipped_omega_matches_readme():
    g = nustar.load_geometry("FPMA")
    got = _chip_ranges(g.omega, g.pixel_mask)
    for d, (lo, hi) in README_FPMA_RANGES.items():
        assert got[d][0] == pytest.approx(lo, abs=0.06), (d, got[d])
        assert got[d][1] == pytest.approx(hi, abs=0.06), (d, got[d])
    assert g.omega[g.pixel_mask].mean() == pytest.approx(README_FPMA_MEAN, abs=0.06)
    gb = nustar.load_geometry("FPMB")
    ob = gb.omega[gb.pixel_mask]
    # paper section 4: ~0.2 to ~9 deg^2 per pixel, average ~5 deg^2
    assert 0.05 < ob.min() < 0.3 and 8.5 < ob.max() < 10.0 and 4.5 < ob.mean() < 5.3
    # the aperture ramp: the two chips on the open side are brighter in both modules
    assert g.omega[2:].mean() > 1.5 * g.omega[:2].mean()
    assert gb.omega[[0, 3]].mean() > 1.5 * gb.omega[[1, 2]].mean()


def test_transmission_and_band_efficiency():
    g = nustar.load_geometry("FPMA")
    t = g.transmission([3.0, 10.0, 20.0])
    assert t.shape == (4, 3)
    be = np.interp([3.0, 10.0], 0.5 * (g.energy_lo + g.energy_hi), g.be_window)
    assert be[0] == pytest.approx(0.65, abs=0.01) and be[1] == pytest.approx(0.985, abs=0.005)  # README
    e_lo, e_hi = nustar.energy_bands()
    eff = g.band_efficiency(e_lo, e_hi)
    assert eff.shape == (20, 4)
    assert np.all((eff > 0) & (eff < 1))
    low = e_hi <= 10.0 + 1e-9  # 3-10 keV: the Be window (and dead layer) transmission rises
    assert low.sum() >= 10
    assert np.all(np.diff(eff[low], axis=0) > 0)
    # independent check of one band / chip with adaptive quadrature
    b, d = 3, 2
    n_e = lambda e: e ** -1.29 * np.exp(-e / 41.13)  # noqa: E731
    mids = 0.5 * (g.energy_lo + g.energy_hi)
    kinks = mids[(mids > e_lo[b]) & (mids < e_hi[b])]
    num = integrate.quad(lambda e: g.transmission([e])[d, 0] * n_e(e), e_lo[b], e_hi[b], points=kinks,
                         limit=200, epsabs=0, epsrel=1e-10)[0]
    den = integrate.quad(n_e, e_lo[b], e_hi[b], epsabs=0, epsrel=1e-12)[0]
    assert eff[b, d] == pytest.approx(num / den, rel=2e-5)
    # a flat spectrum in a narrow band reduces to the transmission at the band centre
    flat = g.band_efficiency([10.0], [10.04], photon_index=0.0, e_fold=1e30)
    np.testing.assert_allclose(flat[0], g.transmission([10.02])[:, 0], rtol=1e-4)
    with pytest.raises(ValueError):
        g.band_efficiency([1.0], [3.0])


# ---------------------------------------------------------------------------
# with the shared data: derivation, readers, real events
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fpm", nustar.FPMS)
def test_derived_equals_shipped(derived, fpm):
    g, s = derived[fpm], nustar.load_geometry(fpm)
    np.testing.assert_array_equal(g.pixel_mask, s.pixel_mask)
    np.testing.assert_array_equal(g.n_subpixels, s.n_subpixels)
    np.testing.assert_allclose(g.omega, s.omega, rtol=1e-12, atol=0)
    for k in ("energy_lo", "energy_hi", "detabs", "be_window"):
        np.testing.assert_allclose(getattr(g, k), getattr(s, k), rtol=1e-12, atol=0)


def test_save_read_round_trip(derived, tmp_path):
    g = derived["FPMB"]
    path = nustar.save_geometry(g, tmp_path / "g.npz")
    r = nustar.read_geometry(path)
    assert r.fpm == "FPMB"
    for k in ("omega", "pixel_mask", "n_subpixels", "energy_lo", "energy_hi", "detabs", "be_window"):
        np.testing.assert_array_equal(getattr(r, k), getattr(g, k))


def test_readme_unshifted_numbers(nustar_dir):
    """The README's second range set is what the unshifted image gives (documents the convention)."""
    img = read_aperture_image(nustar_dir / "aperture" / "detA_det1.img.gz")
    pm = read_instrument_map(nustar_dir / "aperture" / "pixmapA.fits")
    dn = read_instrument_map(nustar_dir / "aperture" / "detnumA.fits")
    det1 = (img[108:468, 108:468] + nustar.APERTURE_CONSTANT) * nustar.APERTURE_UNIT_DEG2
    omega, n = nustar.raw_pixel_mean(det1, pm, dn)
    got = _chip_ranges(omega, n > 0)
    for d, (lo, hi) in README_FPMA_RANGES_UNSHIFTED.items():
        assert got[d][0] == pytest.approx(lo, abs=0.06) and got[d][1] == pytest.approx(hi, abs=0.06)
    # and the shift changes the map: the shipped (shifted) Omega differs from it
    assert np.max(np.abs(omega - nustar.load_geometry("FPMA").omega)) > 0.5


@pytest.mark.parametrize("ab", ["A", "B"])
def test_mosaic_orientation_matches_det1(nustar_dir, ab):
    """Mean DET1X grows along mosaic columns and mean DET1Y along mosaic rows, across all chips."""
    pm = read_instrument_map(nustar_dir / "aperture" / f"pixmap{ab}.fits")
    dn = read_instrument_map(nustar_dir / "aperture" / f"detnum{ab}.fits")
    y, x = np.mgrid[1:361, 1:361].astype(float)
    mx, n = nustar.raw_pixel_mean(x, pm, dn)
    my, _ = nustar.raw_pixel_mean(y, pm, dn)
    assert np.all(n > 0)
    mosx, mosy = nustar.to_mosaic(mx), nustar.to_mosaic(my)
    dx, dy = np.diff(mosx, axis=1), np.diff(mosy, axis=0)
    # a handful of irregular RAW pixels in the CALDB map (1 to 79 sub-pixels) break strict
    # monotonicity locally; every chip block must still step by ~5 sub-pixels per RAW pixel
    assert np.mean(dx > 0) > 0.995 and np.mean(dy > 0) > 0.995
    for rows, cols in ((slice(0, 32), slice(0, 31)), (slice(32, 64), slice(0, 31)),
                       (slice(0, 32), slice(32, 63)), (slice(32, 64), slice(32, 63))):
        assert 4.5 < np.median(dx[rows, cols]) < 5.5
        assert 4.5 < np.median(dy[cols, rows]) < 5.5
    # across the chip boundaries DET1 keeps growing (by one pixel plus the gap)
    assert np.all(dx[:, 31] >= 4.5) and np.all(dy[31, :] >= 4.5)
    # chip centres: DET0 upper right, DET1 upper left, DET2 lower left, DET3 lower right
    cx, cy = mx.mean(axis=(1, 2)), my.mean(axis=(1, 2))
    assert cx[0] > 180 and cy[0] > 180 and cx[1] < 180 < cy[1]
    assert cx[2] < 180 and cy[2] < 180 and cy[3] < 180 < cx[3]


def test_caldb_readers(nustar_dir, tmp_path):
    lo, hi, t = read_detabs(nustar_dir / "caldb" / "nuAdetabs20100101v002.fits")
    assert t.shape == (4, 4096) and lo[0] == pytest.approx(1.6) and hi[-1] == pytest.approx(165.44, abs=1e-3)
    assert np.all((t[:, 0] > 0.4) & (t[:, 0] < 0.5)) and np.all(t[:, -1] > 0.98)  # README: ~0.46 at 1.6 keV
    blo, bhi, be = read_transmission_arf(nustar_dir / "aperture" / "be.arf")
    # be.arf stores 3-significant-figure energies; the reader returns the exact 1.6 + 0.04 k grid
    np.testing.assert_allclose(blo, 1.6 + 0.04 * np.arange(4096), rtol=0, atol=1e-9)
    np.testing.assert_allclose(bhi, blo + 0.04, rtol=0, atol=1e-9)
    assert be.shape == (4096,) and be[35] == pytest.approx(0.65, abs=0.01)
    pm = read_instrument_map(nustar_dir / "aperture" / "pixmapA.fits")
    assert pm.shape == (360, 360) and pm.dtype == np.int64 and pm.min() == -1 and pm.max() == 1023
    assert read_aperture_image(nustar_dir / "aperture" / "detB_det1.img.gz").shape == (576, 576)
    bad = tmp_path / "bad.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((10, 10), np.float32), name="INSTRMAP")]).writeto(bad)
    with pytest.raises(BkgjaxIOError, match=r"bad\.fits.*INSTRMAP.*shape \(10, 10\)"):
        read_instrument_map(bad)
    with pytest.raises(BkgjaxIOError, match=r"bad\.fits.*no image"):
        read_aperture_image(bad)
    with pytest.raises(BkgjaxIOError, match=r"bad\.fits: expected 4 DETABS"):
        read_detabs(bad)


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # DET1X/Y read directly below
def test_real_events_inside_geometry(shared_data, nustar_dir):
    ev = read_nustar_events(shared_data / REAL_EVT)
    g = nustar.load_geometry(ev.instrument)
    assert np.all(g.pixel_mask[ev.det_id, ev.rawy, ev.rawx])
    assert np.all(g.omega[ev.det_id, ev.rawy, ev.rawx] > 0)
    # the instrument map indexing map[DET1Y-1, DET1X-1] reproduces the events' own RAW pixel
    with fits.open(shared_data / REAL_EVT) as h:
        d = h["EVENTS"].data
        det1x, det1y = np.asarray(d["DET1X"], int), np.asarray(d["DET1Y"], int)
    pm = read_instrument_map(nustar_dir / "aperture" / "pixmapA.fits")
    dn = read_instrument_map(nustar_dir / "aperture" / "detnumA.fits")
    ok = (det1x >= 1) & (det1x <= 360) & (det1y >= 1) & (det1y <= 360)
    raw = pm[det1y[ok] - 1, det1x[ok] - 1]
    assert np.mean(dn[det1y[ok] - 1, det1x[ok] - 1] == ev.det_id[ok]) > 0.99
    assert np.mean(raw == ev.rawx[ok] + 32 * ev.rawy[ok]) > 0.9


def test_bin_events_real_totals(shared_data):
    ev = read_nustar_events(shared_data / REAL_EVT)
    e_lo, e_hi = nustar.energy_bands()
    counts = nustar.bin_events(ev, e_lo, e_hi)
    assert counts.shape == (20, 4, 32, 32) and counts.dtype == np.int64
    energy = 1.6 + 0.04 * ev.pi
    in_band = (energy > 3.0 - 1e-6) & (energy < 20.0 - 1e-6)
    assert 0 < in_band.sum() < ev.n_events
    assert counts.sum() == in_band.sum()
    # per band: events whose energy lies in [e_lo, e_hi)
    for b in (0, 7, 19):
        sel = (energy > e_lo[b] - 1e-6) & (energy < e_hi[b] - 1e-6)
        assert counts[b].sum() == sel.sum()
    # per pixel: all 3-20 keV events of one pixel
    d, y, x = ev.det_id[in_band][0], ev.rawy[in_band][0], ev.rawx[in_band][0]
    same = in_band & (ev.det_id == d) & (ev.rawy == y) & (ev.rawx == x)
    assert counts[:, d, y, x].sum() == same.sum()
