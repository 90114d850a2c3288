"""NuSTAR cleaned event files: bkgjax.missions.nustar_cxb.events.read_nustar_events / write_nustar_events."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits

from bkgjax.io import BkgjaxIOError, MissingFileError
from bkgjax.missions.nustar_cxb.events import (
    EventList,
    read_nustar_events,
    write_nustar_events,
)

REAL_EVT = "nustar/events/nu90410111001A06_cl_sunpos.evt"


def _events(n=50, seed=1):
    rng = np.random.default_rng(seed)
    return dict(det_id=rng.integers(0, 4, n), rawx=rng.integers(0, 32, n), rawy=rng.integers(0, 32, n),
                pi=rng.integers(0, 4096, n))


def _write_raw(path, columns, *, events_header=None, primary_header=None, extname="EVENTS"):
    """A minimal event file written with astropy directly (bypassing the writer's checks)."""
    fmt = {"TIME": "D", "DET_ID": "B", "RAWX": "B", "RAWY": "B", "PI": "J", "GRADE": "I"}
    cols = [fits.Column(name=k, format=fmt[k], array=np.asarray(v)) for k, v in columns.items()]
    ext = fits.BinTableHDU.from_columns(cols, name=extname)
    hdr = {"INSTRUME": "FPMA", "EXPOSURE": 1000.0}
    hdr.update(events_header or {})
    for k, v in hdr.items():
        if v is not None:
            ext.header[k] = v
    prim = fits.PrimaryHDU()
    for k, v in (primary_header or {}).items():
        prim.header[k] = v
    fits.HDUList([prim, ext]).writeto(path, overwrite=True)
    return str(path)


# ---------------------------------------------------------------------------
# real file
# ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # the check below opens the file
def test_read_real_event_file(shared_data):
    path = shared_data / REAL_EVT
    ev = read_nustar_events(path)
    assert isinstance(ev, EventList)
    assert ev.instrument == "FPMA"
    assert ev.n_events == 9442  # all grades <= 26 in this file
    assert ev.exposure == pytest.approx(70.0321908915824)
    assert ev.obs_id == "90410111001"
    assert ev.header["TELESCOP"] == "NuSTAR" and ev.header["OBSMODE"] == "SCIENCE_SC"
    assert "DATE-OBS" in ev.header
    assert ev.gti.shape == (1, 2) and ev.gti[0, 1] > ev.gti[0, 0]
    assert np.all((ev.time >= ev.gti[0, 0] - 1e-6) & (ev.time <= ev.gti[0, 1] + 1e-6))
    for a in (ev.det_id, ev.rawx, ev.rawy, ev.pi, ev.grade):
        assert a.dtype == np.int64 and a.shape == (9442,)
        assert not a.flags.writeable
    assert set(np.unique(ev.det_id)) == {0, 1, 2, 3}
    assert ev.rawx.max() <= 31 and ev.pi.min() >= 0
    # grade cut: 9304 events have GRADE 0
    assert read_nustar_events(path, max_grade=0).n_events == 9304
    assert read_nustar_events(path, max_grade=None).n_events == 9442
    with fits.open(path) as h:
        np.testing.assert_array_equal(ev.pi, h["EVENTS"].data["PI"])


def test_read_gzipped_copy(shared_data, tmp_path):
    gz = tmp_path / "evt.evt.gz"
    with open(shared_data / REAL_EVT, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    ev = read_nustar_events(gz)
    assert ev.n_events == 9442 and ev.instrument == "FPMA"


# ---------------------------------------------------------------------------
# writer / round trip
# ---------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path):
    d = _events(200)
    grade = np.random.default_rng(2).integers(0, 32, 200)
    time = np.sort(np.random.default_rng(3).uniform(10.0, 60.0, 200))
    gti = np.array([[10.0, 30.0], [40.0, 60.0]])
    path = write_nustar_events(tmp_path / "a.evt", instrument="FPMB", exposure=37.5, grade=grade, time=time,
                               gti=gti, obs_id="60001001002", extra_header={"OBJECT": ("COSMOS", "target")}, **d)
    ev = read_nustar_events(path, max_grade=None)
    assert ev.instrument == "FPMB" and ev.exposure == 37.5 and ev.obs_id == "60001001002"
    for k in ("det_id", "rawx", "rawy", "pi"):
        np.testing.assert_array_equal(getattr(ev, k), d[k])
    np.testing.assert_array_equal(ev.grade, grade)
    np.testing.assert_array_equal(ev.time, time)
    np.testing.assert_array_equal(ev.gti, gti)
    assert ev.header == {"TELESCOP": "NuSTAR", "OBS_ID": "60001001002", "OBSMODE": "SCIENCE"}
    keep = grade <= 26
    ev26 = read_nustar_events(path)
    assert ev26.n_events == keep.sum()
    np.testing.assert_array_equal(ev26.pi, d["pi"][keep])
    np.testing.assert_array_equal(ev26.time, time[keep])

    with fits.open(path) as h:
        assert [x.name for x in h] == ["PRIMARY", "EVENTS", "GTI"]
        evh = h["EVENTS"].header
        formats = {c.name: c.format for c in h["EVENTS"].columns}
        assert formats == {"TIME": "D", "DET_ID": "B", "RAWX": "B", "RAWY": "B", "PI": "J", "GRADE": "I"}
        assert {c.name: c.format for c in h["GTI"].columns} == {"START": "D", "STOP": "D"}
        for hdr in (h[0].header, evh):
            assert hdr["TELESCOP"] == "NuSTAR" and hdr["INSTRUME"] == "FPMB" and hdr["CREATOR"] == "bkgjax"
            assert hdr["EXPOSURE"] == 37.5 and hdr["LIVETIME"] == 37.5 and hdr["ONTIME"] == 40.0
            assert hdr["TSTART"] == 10.0 and hdr["TSTOP"] == 60.0
            assert hdr["OBS_ID"] == "60001001002" and hdr["OBSMODE"] == "SCIENCE" and "DATE" in hdr
        assert evh["HDUCLAS1"] == "EVENTS" and evh["OBJECT"] == "COSMOS"


def test_writer_defaults(tmp_path):
    d = _events(300)
    path = write_nustar_events(tmp_path / "b.evt", instrument="FPMA", exposure=500.0, **d)
    ev = read_nustar_events(path)
    assert ev.n_events == 300
    np.testing.assert_array_equal(ev.grade, 0)
    np.testing.assert_array_equal(ev.gti, [[0.0, 500.0]])
    assert np.all(np.diff(ev.time) >= 0) and ev.time.min() >= 0 and ev.time.max() <= 500.0
    assert ev.time.max() - ev.time.min() > 400  # spread over the GTI, not bunched
    # times fall inside multiple GTIs, never in the gap
    path = write_nustar_events(tmp_path / "c.evt", instrument="FPMA", exposure=20.0,
                               gti=[[0.0, 10.0], [100.0, 110.0]], **d)
    t = read_nustar_events(path).time
    assert np.all(((t >= 0) & (t <= 10)) | ((t >= 100) & (t <= 110)))
    assert 0 < np.count_nonzero(t < 50) < 300


@pytest.mark.parametrize("bad", [dict(instrument="FPMC"), dict(exposure=0.0), dict(exposure=np.nan),
                                 dict(det_id=[4, 0]), dict(rawx=[32, 0]), dict(pi=[-1, 0]), dict(pi=[0])])
def test_writer_rejects_bad_input(tmp_path, bad):
    kw = dict(instrument="FPMA", exposure=10.0, det_id=[0, 1], rawx=[0, 1], rawy=[0, 1], pi=[0, 1])
    kw.update(bad)
    with pytest.raises(BkgjaxIOError):
        write_nustar_events(tmp_path / "x.evt", **kw)


# ---------------------------------------------------------------------------
# reader errors
# ---------------------------------------------------------------------------


def _good_columns(n=5):
    return {"DET_ID": np.zeros(n, np.uint8), "RAWX": np.arange(n, dtype=np.uint8),
            "RAWY": np.arange(n, dtype=np.uint8), "PI": np.arange(n) * 10}


def test_raw_helper_file_is_valid(tmp_path):
    ev = read_nustar_events(_write_raw(tmp_path / "ok.evt", _good_columns()))
    assert ev.n_events == 5 and ev.grade is None and ev.time is None and ev.gti is None and ev.obs_id == ""


def test_error_missing_column(tmp_path):
    cols = _good_columns()
    del cols["PI"]
    path = _write_raw(tmp_path / "nopi.evt", cols)
    with pytest.raises(BkgjaxIOError, match=r"nopi\.evt.*EVENTS.*column\(s\) PI missing"):
        read_nustar_events(path)


def test_error_unknown_instrument(tmp_path):
    path = _write_raw(tmp_path / "inst.evt", _good_columns(), events_header={"INSTRUME": "XRT"})
    with pytest.raises(BkgjaxIOError, match=r"inst\.evt.*INSTRUME = 'XRT'"):
        read_nustar_events(path)


def test_instrument_and_exposure_from_primary(tmp_path):
    path = _write_raw(tmp_path / "prim.evt", _good_columns(), events_header={"INSTRUME": None, "EXPOSURE": None},
                      primary_header={"INSTRUME": "FPMB", "EXPOSURE": 12.5})
    ev = read_nustar_events(path)
    assert ev.instrument == "FPMB" and ev.exposure == 12.5


@pytest.mark.parametrize("value", [0.0, -5.0])
def test_error_bad_exposure(tmp_path, value):
    path = _write_raw(tmp_path / "exp.evt", _good_columns(), events_header={"EXPOSURE": value})
    with pytest.raises(BkgjaxIOError, match=r"exp\.evt.*EXPOSURE.*finite and > 0"):
        read_nustar_events(path)


def test_error_missing_exposure(tmp_path):
    path = _write_raw(tmp_path / "noexp.evt", _good_columns(), events_header={"EXPOSURE": None})
    with pytest.raises(BkgjaxIOError, match=r"noexp\.evt.*EXPOSURE is missing"):
        read_nustar_events(path)


@pytest.mark.parametrize("col,values,pattern", [
    ("DET_ID", [0, 4, 7, 1, 2], r"DET_ID must be in 0\.\.3; 2 of 5 row"),
    ("RAWX", [0, 1, 2, 32, 3], r"RAWX must be in 0\.\.31; 1 of 5 row"),
    ("RAWY", [40, 1, 2, 3, 3], r"RAWY must be in 0\.\.31; 1 of 5 row"),
    ("PI", [0, -4095, 5, -1, 1], r"PI must be >= 0; 2 of 5 row"),
])
def test_error_out_of_range(tmp_path, col, values, pattern):
    cols = _good_columns()
    cols[col] = np.array(values)
    path = _write_raw(tmp_path / "range.evt", cols)
    with pytest.raises(BkgjaxIOError, match=r"range\.evt.*" + pattern):
        read_nustar_events(path)


def test_error_missing_events_hdu(tmp_path):
    path = _write_raw(tmp_path / "noev.evt", _good_columns(), extname="STDGTI")
    with pytest.raises(BkgjaxIOError, match=r"noev\.evt: no EVENTS extension"):
        read_nustar_events(path)


def test_error_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="nothere.evt"):
        read_nustar_events(tmp_path / "nothere.evt")


def test_error_bad_gti(tmp_path):
    path = write_nustar_events(tmp_path / "g.evt", instrument="FPMA", exposure=5.0, **_events(5))
    with fits.open(path, mode="update") as h:
        h["GTI"].data["STOP"][0] = -1.0
    with pytest.raises(BkgjaxIOError, match=r"g\.evt.*GTI.*STOP < START"):
        read_nustar_events(path)
