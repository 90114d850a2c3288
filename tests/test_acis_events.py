"""ACIS level-2 event files and ds9 regions (bkgjax.missions.acis.events)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from bkgjax.io import BkgjaxIOError
from bkgjax.missions.acis.events import (
    chip_box_region,
    read_chandra_events,
    read_region,
    region_slice_fractions,
    write_chandra_events,
)

WCS = {"TCTYP_x": "RA---TAN", "TCRVL_x": 53.1, "TCRPX_x": 4096.5, "TCDLT_x": -0.492 / 3600,
       "TCTYP_y": "DEC--TAN", "TCRVL_y": -27.8, "TCRPX_y": 4096.5, "TCDLT_y": 0.492 / 3600}


def _uniform_events(rng, n=40000, ccds=(7,), centres=None):
    """Events uniform over whole chips; chip (cx, cy) centred at sky centres[ccd], no roll."""
    centres = centres or {7: (4096.5, 4096.5), 6: (3056.5, 4096.5)}
    ccd = rng.choice(np.array(ccds), n)
    chipx = rng.integers(1, 1025, n)
    chipy = rng.integers(1, 1025, n)
    cx = np.array([centres[c][0] for c in ccd])
    cy = np.array([centres[c][1] for c in ccd])
    return dict(ccd_id=ccd, chipx=chipx, chipy=chipy, energy=rng.uniform(200, 12000, n),
                x=cx + chipx - 512.5, y=cy + chipy - 512.5)


@pytest.fixture(scope="module")
def evt(tmp_path_factory):
    rng = np.random.default_rng(3)
    ev = _uniform_events(rng, ccds=(6, 7))
    path = tmp_path_factory.mktemp("evt") / "evt2.fits"
    write_chandra_events(path, **ev, exposure=2.0e4, datamode="VFAINT", sky_wcs=WCS)
    return path, ev


def test_round_trip(evt):
    path, ev = evt
    e = read_chandra_events(path)
    assert e.n_events == ev["energy"].size
    np.testing.assert_array_equal(e.ccd_id, ev["ccd_id"])
    np.testing.assert_array_equal(e.chipy, ev["chipy"])
    np.testing.assert_allclose(e.energy, ev["energy"], rtol=1e-6)  # stored as float32
    np.testing.assert_allclose(e.x, ev["x"], atol=1e-3)
    assert e.exposure == 2.0e4 and e.datamode == "VFAINT" and e.mode == "vfaint"
    assert e.sky_wcs["TCRVL_x"] == pytest.approx(53.1)


def _table(path, columns, **keys):
    hdu = fits.BinTableHDU.from_columns([fits.Column(name=n, format="E", array=np.asarray(a, float))
                                         for n, a in columns.items()], name="EVENTS")
    for k, v in keys.items():
        hdu.header[k] = v
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def test_missing_column_names_file_and_column(tmp_path):
    cols = dict(ccd_id=[7], chipx=[1], chipy=[1], x=[1.0], y=[1.0])  # no energy
    path = _table(tmp_path / "noenergy.fits", cols, EXPOSURE=10.0)
    with pytest.raises(BkgjaxIOError, match=r"noenergy\.fits.*energy missing"):
        read_chandra_events(path)


def test_livetime_fallback_and_missing_exposure(tmp_path):
    cols = dict(ccd_id=[7], chipx=[1], chipy=[1], energy=[9500.0], x=[1.0], y=[1.0])
    e = read_chandra_events(_table(tmp_path / "lt.fits", cols, LIVETIME=5.0))
    assert e.exposure == 5.0 and e.mode is None
    with pytest.raises(BkgjaxIOError, match="EXPOSURE and LIVETIME"):
        read_chandra_events(_table(tmp_path / "none.fits", cols))


def test_bad_chip_coordinates(tmp_path):
    cols = dict(ccd_id=[7], chipx=[1], chipy=[1025], energy=[9500.0], x=[1.0], y=[1.0])
    with pytest.raises(BkgjaxIOError, match="chipy must be in 1..1024"):
        read_chandra_events(_table(tmp_path / "bad.fits", cols, EXPOSURE=1.0))


def test_physical_region_with_exclude(evt, tmp_path):
    path, ev = evt
    reg = tmp_path / "sky.reg"
    reg.write_text("# Region file format: DS9 version 4.1\nglobal color=green\nphysical\n"
                   "circle(4096.5,4096.5,200)\n-box(4150,4100,40,60,0)\n")
    e = read_chandra_events(path)
    mask = read_region(reg).mask(e)
    x, y = e.x, e.y
    expected = ((x - 4096.5) ** 2 + (y - 4096.5) ** 2 < 200 ** 2) & ~(
        (np.abs(x - 4150) < 20) & (np.abs(y - 4100) < 30))
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() > 100


def test_chip_region_tag(evt, tmp_path):
    path, _ = evt
    reg = tmp_path / "chip.reg"
    reg.write_text("image\nbox(512.5,256.5,1024,512,0) # tag={ccd_id=7}\n")
    e = read_chandra_events(path)
    mask = read_region(reg).mask(e)
    np.testing.assert_array_equal(mask, (e.ccd_id == 7) & (e.chipy <= 512))
    np.testing.assert_array_equal(chip_box_region(7, chipy=(1, 512)).mask(e), mask)
    fr = region_slice_fractions(read_region(reg), e, ccds=[7], step=1)[7]
    np.testing.assert_allclose(fr, [1.0] * 16 + [0.0] * 16)


def test_fk5_region_uses_event_wcs(evt, tmp_path):
    path, _ = evt
    reg = tmp_path / "fk5.reg"
    reg.write_text('fk5\ncircle(53.1,-27.8,60")\n')  # 60 arcsec = 121.95 sky pixels at the tangent point
    e = read_chandra_events(path)
    mask = read_region(reg).mask(e)
    r = np.hypot(e.x - 4096.5, e.y - 4096.5)
    assert np.all(mask[r < 121.0]) and not np.any(mask[r > 123.0])


def test_sky_region_slice_fractions_match_circle_area(evt, tmp_path):
    path, _ = evt
    reg = tmp_path / "c.reg"
    reg.write_text("physical;circle(4096.5,4096.5,300)\n")
    e = read_chandra_events(path)
    fr = region_slice_fractions(read_region(reg), e, ccds=[7], step=2)[7]
    area = fr.sum() * 32 * 1024
    assert area == pytest.approx(np.pi * 300 ** 2, rel=0.01)
    # slice fraction of slice 15/16 (chip centre rows): chord 2*300 over 1024 columns
    assert fr[15] == pytest.approx(2 * 300 / 1024, rel=0.02)


def test_region_outside_chips(evt, tmp_path):
    path, _ = evt
    reg = tmp_path / "far.reg"
    reg.write_text("physical\ncircle(100,100,20)\n")
    e = read_chandra_events(path)
    region = read_region(reg)
    assert not region.mask(e).any()
    with pytest.raises(ValueError, match=r"far\.reg covers no chip area"):
        region_slice_fractions(region, e)


def test_bad_region_files(tmp_path):
    bad_tag = tmp_path / "tag.reg"
    bad_tag.write_text("image\nbox(1,1,2,2,0) # tag={ccd_id=12}\n")
    with pytest.raises(BkgjaxIOError, match="0..9"):
        read_region(bad_tag)
    empty = tmp_path / "empty.reg"
    empty.write_text("# nothing here\n")
    with pytest.raises(BkgjaxIOError, match="no region shape"):
        read_region(empty)
    with pytest.raises(ValueError, match="within 1..1024"):
        chip_box_region(7, chipy=(0, 10))


def test_fk5_region_without_event_wcs(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "nowcs.fits"
    write_chandra_events(path, **_uniform_events(rng, n=100), exposure=10.0)
    reg = tmp_path / "fk5.reg"
    reg.write_text('fk5\ncircle(53.1,-27.8,60")\n')
    with pytest.raises(BkgjaxIOError, match=r"fk5\.reg: fk5/icrs shapes need the sky WCS.*lacks TCTYP\(column x\)"):
        read_region(reg).mask(read_chandra_events(path))
