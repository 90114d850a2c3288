"""Tests for bkgjax.io: OGIP PHA / ARF / RMF reading, writing and validation."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bkgjax.io import (
    ARF,
    PHA,
    RMF,
    BkgjaxIOError,
    MissingFileError,
    channel_overlap_mask,
    group_index,
    load_spectrum,
    read_arf,
    read_pha,
    read_rmf,
    write_arf,
    write_pha,
    write_rmf,
)

DGTAU_PHA = "acisf04487_001N023_r0009_pha3.fits.gz"
VELA_A = "nu90402339002A01_sr.pha"


# ---------------------------------------------------------------------------
# helpers building synthetic files
# ---------------------------------------------------------------------------


def _raw_pha(path: Path, columns: dict, header: dict | None = None) -> Path:
    """Write a PHA with astropy directly (so that invalid files can be made).

    ``columns`` maps name -> (TFORM, array); header values of None delete the key.
    """
    ext = fits.BinTableHDU.from_columns(
        [fits.Column(name=n, format=f, array=np.asarray(a)) for n, (f, a) in columns.items()]
    )
    hdr = {
        "EXTNAME": "SPECTRUM", "HDUCLASS": "OGIP", "HDUCLAS1": "SPECTRUM", "HDUCLAS2": "TOTAL",
        "HDUCLAS3": "COUNT", "EXPOSURE": 1000.0, "BACKSCAL": 1.0, "AREASCAL": 1.0, "POISSERR": True,
        "BACKFILE": "none", "RESPFILE": "none", "ANCRFILE": "none", "TELESCOP": "TEST", "INSTRUME": "DET",
    }
    hdr.update(header or {})
    for k, v in hdr.items():
        if v is not None:
            ext.header[k] = v
    fits.HDUList([fits.PrimaryHDU(), ext]).writeto(path)
    return path


def _simple_columns(n=8, counts=None, fmt="J"):
    counts = np.arange(n) % 5 if counts is None else counts
    return {"CHANNEL": ("J", np.arange(1, n + 1)), "COUNTS": (fmt, counts)}


def _grid(n, lo=0.5, width=0.1):
    e = lo + width * np.arange(n + 1)
    return e[:-1], e[1:]


def _band_matrix(n_e, n_c, seed=0):
    """A redistribution matrix with several groups per row and some empty rows."""
    rng = np.random.default_rng(seed)
    m = np.zeros((n_e, n_c))
    for i in range(n_e):
        if i % 5 == 4:
            continue  # empty row (N_GRP = 0)
        c = int(i * n_c / n_e)
        lo, hi = max(0, c - 1), min(n_c, c + 2)
        m[i, lo:hi] = rng.uniform(0.1, 1.0, hi - lo)
        if i % 3 == 0:  # second, disjoint group
            m[i, (c + 5) % n_c] = 0.05
        m[i] /= m[i].sum() * 1.01
    return m


def _response(tmp_path: Path, n_e=12, n_c=8, first_channel=1, name="resp.rmf", shift=0.0):
    lo, hi = _grid(n_e)
    emin, emax = _grid(n_c, lo=0.5, width=0.15)
    rmf = write_rmf(tmp_path / name, lo, hi, _band_matrix(n_e, n_c), emin, emax, first_channel=first_channel)
    arf = write_arf(tmp_path / name.replace(".rmf", ".arf"), lo + shift, hi + shift, np.linspace(10, 100, n_e))
    return rmf, arf


# ---------------------------------------------------------------------------
# real data: Chandra ACIS DG Tau
# ---------------------------------------------------------------------------


def h_clas2(h):
    return str(h.header.get("HDUCLAS2", "")).strip()



def test_dgtau_load_spectrum_same_file_background_and_gz_responses(dgtau_dir):
    pha_path = dgtau_dir / DGTAU_PHA
    spec = load_spectrum(pha_path)
    src, bkg, rmf, arf = spec.source, spec.background, spec.rmf, spec.arf

    with fits.open(pha_path) as hdul:
        spectra = [i for i, h in enumerate(hdul) if h.header.get("HDUCLAS1") == "SPECTRUM"]
        bkg_idx = [i for i in spectra if h_clas2(hdul[i]) == "BKG"]
        src_idx = [i for i in spectra if h_clas2(hdul[i]) == "TOTAL"]
        src_counts = np.asarray(hdul[src_idx[0]].data["COUNTS"])
        bkg_counts = np.asarray(hdul[bkg_idx[0]].data["COUNTS"])
        src_hdr, bkg_hdr = hdul[src_idx[0]].header, hdul[bkg_idx[0]].header

    # source spectrum: the TOTAL HDU, counts identical to astropy's column
    assert src.path == str(pha_path)
    assert src.hduclas2 == "TOTAL" and not src.is_rate
    np.testing.assert_array_equal(src.counts, src_counts)
    assert src.counts.sum() == src_counts.sum() == 389
    assert src.exposure == src_hdr["EXPOSURE"]
    assert src.backscal == src_hdr["BACKSCAL"]
    assert src.telescope == "CHANDRA" and src.instrument == "ACIS"
    assert src.grouping is None and src.quality is None
    np.testing.assert_array_equal(src.channel, np.arange(1, 1025))

    # background: BACKFILE names the file without .gz -> same file, HDUCLAS2='BKG' HDU
    assert src.file_keywords["BACKFILE"] == "acisf04487_001N023_r0009_pha3.fits"
    assert src.backfile == str(pha_path)
    assert src.background_hdu == bkg_idx[0] == 8
    assert bkg.hduclas2 == "BKG"
    np.testing.assert_array_equal(bkg.counts, bkg_counts)
    assert bkg.backscal == bkg_hdr["BACKSCAL"] != src.backscal

    # RESPFILE / ANCRFILE name .fits files that exist only as .fits.gz
    assert src.respfile == str(dgtau_dir / "acisf04487_001N022_r0009_rmf3.fits.gz")
    assert src.ancrfile == str(dgtau_dir / "acisf04487_001N022_r0009_arf3.fits.gz")
    assert rmf.path == src.respfile and arf.path == src.ancrfile

    dense = rmf.dense()
    assert dense.shape == (900, 1024) == (rmf.n_energy, rmf.n_channels)
    assert rmf.first_channel == 1 and rmf.hduclas3 == "REDIST" and not rmf.is_full
    assert np.all(np.diff(rmf.e_min) > 0) and np.all(np.diff(rmf.e_max) > 0)
    assert np.all(rmf.e_max > rmf.e_min)
    np.testing.assert_allclose(arf.energ_lo, rmf.energ_lo, rtol=1e-6)
    np.testing.assert_allclose(arf.energ_hi, rmf.energ_hi, rtol=1e-6)
    # Redistribution rows sum to ~1; this CIAO RMF overshoots by up to 2.9e-4 (float32 storage
    # of ~500 elements per row), so the bound is 1e-3 rather than 1e-6.
    row_sums = dense.sum(axis=1)
    assert np.all(row_sums <= 1 + 1e-3) and np.all(dense >= 0)
    assert np.median(row_sums) == pytest.approx(1.0, abs=1e-3)


def test_dgtau_rmf_matches_naive_decoding_and_is_fast(dgtau_dir):
    path = dgtau_dir / "acisf04487_001N022_r0009_rmf3.fits.gz"
    t0 = time.perf_counter()
    rmf = read_rmf(path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0  # specification: < 1 s; margin for loaded CI machines

    with fits.open(path) as hdul:
        tab = hdul["MATRIX"].data
        first = hdul["MATRIX"].header["TLMIN4"]
        expected = np.zeros((len(tab), hdul["EBOUNDS"].header["NAXIS2"]))
        for i in range(0, len(tab), 7):  # every 7th row, decoded by hand
            k = 0
            for g in range(tab["N_GRP"][i]):
                f, n = int(tab["F_CHAN"][i][g]), int(tab["N_CHAN"][i][g])
                expected[i, f - first:f - first + n] = tab["MATRIX"][i][k:k + n]
                k += n
    np.testing.assert_array_equal(rmf.dense()[::7], expected[::7])


# ---------------------------------------------------------------------------
# real data: NuSTAR Vela X-1
# ---------------------------------------------------------------------------


def test_velax1_missing_respfile_is_reported(velax1_dir):
    with pytest.raises(MissingFileError) as exc:
        load_spectrum(velax1_dir / VELA_A)
    msg = str(exc.value)
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, BkgjaxIOError)
    assert "RESPFILE" in msg and "nu90402339002A01_sr.rmf" in msg
    assert str(velax1_dir / VELA_A) in msg and "rmf=" in msg


def test_velax1_with_diagonal_rmf(velax1_dir, shared_data):
    diag = shared_data / "nustar" / "aperture" / "diag.rmf"
    if not diag.is_file():
        pytest.skip(f"{diag} not available")
    spec = load_spectrum(velax1_dir / VELA_A, rmf=diag)
    src, bkg, rmf, arf = spec.source, spec.background, spec.rmf, spec.arf

    assert rmf.first_channel == 0 and src.channel[0] == 0 and src.n_channels == 4096
    np.testing.assert_array_equal(rmf.channel, src.channel)
    assert rmf.hduclas3 == "FULL"
    np.testing.assert_array_equal(rmf.rows, rmf.cols)  # diagonal
    np.testing.assert_array_equal(rmf.values, 1.0)

    bk_path = velax1_dir / "nu90402339002A01_bk.pha"
    assert bkg.path == str(bk_path)
    with fits.open(bk_path) as h:
        assert bkg.backscal == h["SPECTRUM"].header["BACKSCAL"]
        assert bkg.counts.sum() == h["SPECTRUM"].data["COUNTS"].sum()
    with fits.open(velax1_dir / VELA_A) as h:
        assert src.backscal == h["SPECTRUM"].header["BACKSCAL"]
        assert src.counts.sum() == h["SPECTRUM"].data["COUNTS"].sum()
    assert bkg.backscal != src.backscal
    assert arf.path == str(velax1_dir / "nu90402339002A01_sr.arf")
    np.testing.assert_allclose(arf.energ_lo, rmf.energ_lo, rtol=1e-6)


# ---------------------------------------------------------------------------
# type II, grouping, quality, rates
# ---------------------------------------------------------------------------


def _type2(path: Path, counts: np.ndarray, header=None, backfile=True) -> Path:
    nrow, n = counts.shape
    cols = {
        "SPEC_NUM": ("J", np.arange(1, nrow + 1)),
        "CHANNEL": (f"{n}J", np.tile(np.arange(1, n + 1), (nrow, 1))),
        "COUNTS": (f"{n}J", counts),
        "EXPOSURE": ("D", 100.0 * (1 + np.arange(nrow))),
        "BACKSCAL": ("D", 0.5 * (1 + np.arange(nrow))),
    }
    if backfile:
        cols["BACKFILE"] = ("20A", np.array([f"bkg{i}.pha" for i in range(nrow)]))
    return _raw_pha(path, cols, {"HDUCLAS4": "TYPE:II", "EXPOSURE": 999.0, "BACKSCAL": 9.0, **(header or {})})


def test_type2_row_selection(tmp_path):
    counts = np.array([[1, 2, 3, 4, 5, 6], [0, 0, 7, 8, 0, 1]])
    path = _type2(tmp_path / "spec2.pha", counts)

    with pytest.raises(BkgjaxIOError) as exc:
        read_pha(path)
    msg = str(exc.value)
    assert "spec2.pha" in msg and "type II" in msg and "2 spectra" in msg and "row=" in msg

    p1 = read_pha(path, row=1)
    np.testing.assert_array_equal(p1.counts, counts[1])
    assert p1.exposure == 200.0 and p1.backscal == 1.0  # per-row columns override keywords
    assert p1.backfile == str(tmp_path / "bkg1.pha") and p1.row == 1

    p0 = read_pha(path, spec_num=1)
    np.testing.assert_array_equal(p0.counts, counts[0])
    assert p0.exposure == 100.0 and p0.row == 0

    with pytest.raises(BkgjaxIOError, match="out of range"):
        read_pha(path, row=2)
    with pytest.raises(BkgjaxIOError, match="SPEC_NUM == 7"):
        read_pha(path, spec_num=7)


def test_type1_rejects_row(tmp_path):
    path = _raw_pha(tmp_path / "one.pha", _simple_columns())
    with pytest.raises(BkgjaxIOError, match="type I"):
        read_pha(path, row=0)


def test_type2_load_spectrum_uses_same_row_of_type2_background(tmp_path):
    rmf, arf = _response(tmp_path, n_c=6)
    counts = np.array([[1, 2, 3, 4, 5, 6], [0, 0, 7, 8, 0, 1]])
    _type2(tmp_path / "bkg1.pha", 10 * counts, backfile=False)
    _type2(tmp_path / "bkg0.pha", 10 * counts, backfile=False)
    src = _type2(tmp_path / "src2.pha", counts, {"RESPFILE": "resp.rmf", "ANCRFILE": "resp.arf"})
    spec = load_spectrum(src, row=1)
    np.testing.assert_array_equal(spec.source.counts, counts[1])
    assert spec.background.path == str(tmp_path / "bkg1.pha")
    np.testing.assert_array_equal(spec.background.counts, 10 * counts[1])


def test_grouping_and_quality_columns(tmp_path):
    grouping = np.array([1, -1, -1, 1, -1, 0, 1, -1], dtype=np.int16)
    quality = np.array([0, 0, 5, 0, 0, 2, 0, 1], dtype=np.int16)
    cols = {**_simple_columns(), "GROUPING": ("I", grouping), "QUALITY": ("I", quality)}
    pha = read_pha(_raw_pha(tmp_path / "grp.pha", cols))
    np.testing.assert_array_equal(pha.grouping, grouping)
    np.testing.assert_array_equal(pha.quality, quality)
    assert pha.grouping.dtype == np.int64
    np.testing.assert_array_equal(group_index(pha.grouping, pha.n_channels), [0, 0, 0, 1, 1, 2, 3, 3])

    # keywords only: GROUPING=0 -> None, QUALITY=0 -> None, QUALITY=2 -> broadcast
    p0 = read_pha(_raw_pha(tmp_path / "kw0.pha", _simple_columns(), {"GROUPING": 0, "QUALITY": 0}))
    assert p0.grouping is None and p0.quality is None
    p2 = read_pha(_raw_pha(tmp_path / "kw2.pha", _simple_columns(), {"QUALITY": 2}))
    np.testing.assert_array_equal(p2.quality, np.full(8, 2))

    bad = {**_simple_columns(), "GROUPING": ("I", np.array([1, 2, -1, 1, 1, 1, 1, 1]))}
    with pytest.raises(BkgjaxIOError, match="GROUPING"):
        read_pha(_raw_pha(tmp_path / "badgrp.pha", bad))


def test_rate_spectrum_is_converted_to_counts(tmp_path):
    counts = np.array([0, 3, 7, 1, 0, 12, 5, 2])
    cols = {"CHANNEL": ("J", np.arange(1, 9)), "RATE": ("E", counts / 250.0)}
    pha = read_pha(_raw_pha(tmp_path / "rate.pha", cols, {"EXPOSURE": 250.0, "HDUCLAS3": "RATE"}))
    assert pha.is_rate
    np.testing.assert_array_equal(pha.counts, counts)  # float32 rounding removed under POISSERR


# ---------------------------------------------------------------------------
# invalid PHA files
# ---------------------------------------------------------------------------

BAD_PHA_CASES = {
    "negative_counts": (dict(counts=np.array([1, 2, -1, 0, 0, 0, 0, 0])), {}, "COUNTS"),
    "nan_counts": (dict(counts=np.array([1, 2, np.nan, 0, 0, 0, 0, 0]), fmt="D"), {}, "COUNTS"),
    "noninteger_counts": (dict(counts=np.array([1, 2.5, 1, 0, 0, 0, 0, 0]), fmt="D"), {}, "POISSERR"),
    "exposure_zero": ({}, {"EXPOSURE": 0.0}, "EXPOSURE"),
    "exposure_negative": ({}, {"EXPOSURE": -10.0}, "EXPOSURE"),
    "exposure_missing": ({}, {"EXPOSURE": None}, "EXPOSURE"),
    "backscal_zero": ({}, {"BACKSCAL": 0.0}, "BACKSCAL"),
    "backscal_negative": ({}, {"BACKSCAL": -1.0}, "BACKSCAL"),
    "areascal_zero": ({}, {"AREASCAL": 0.0}, "AREASCAL"),
}


@pytest.mark.parametrize("case", sorted(BAD_PHA_CASES))
def test_bad_pha_raises_naming_file_and_keyword(tmp_path, case):
    col_kw, header, keyword = BAD_PHA_CASES[case]
    path = _raw_pha(tmp_path / f"{case}.pha", _simple_columns(**col_kw), header)
    with pytest.raises(BkgjaxIOError) as exc:
        read_pha(path)
    msg = str(exc.value)
    assert f"{case}.pha" in msg and keyword in msg
    if case == "noninteger_counts":
        assert "COUNTS" in msg and "non-integer" in msg


def test_bad_pha_columns(tmp_path):
    with pytest.raises(BkgjaxIOError, match="CHANNEL") as exc:
        read_pha(_raw_pha(tmp_path / "nochan.pha", {"COUNTS": ("J", np.arange(4))}))
    assert "nochan.pha" in str(exc.value)
    with pytest.raises(BkgjaxIOError, match="COUNTS nor a RATE") as exc:
        read_pha(_raw_pha(tmp_path / "nocounts.pha", {"CHANNEL": ("J", np.arange(4))}))
    assert "nocounts.pha" in str(exc.value)
    cols = {"CHANNEL": ("J", np.array([1, 2, 2, 3])), "COUNTS": ("J", np.arange(4))}
    with pytest.raises(BkgjaxIOError, match="CHANNEL is not strictly increasing"):
        read_pha(_raw_pha(tmp_path / "dupchan.pha", cols))
    cols = {**_simple_columns(), "BACKSCAL": ("D", np.r_[np.ones(7), 0.0])}
    with pytest.raises(BkgjaxIOError, match="column BACKSCAL") as exc:
        read_pha(_raw_pha(tmp_path / "bscol.pha", cols, {"BACKSCAL": None}))
    assert "bscol.pha" in str(exc.value)
    # non-integer counts are accepted when the file says the errors are not Poisson
    p = read_pha(_raw_pha(tmp_path / "gauss.pha", _simple_columns(counts=np.full(8, 0.5), fmt="D"),
                          {"POISSERR": False}))
    assert not p.poisserr and p.counts.sum() == 4.0


def test_missing_file():
    with pytest.raises(MissingFileError, match="no_such.pha"):
        read_pha("/nonexistent/dir/no_such.pha")


# ---------------------------------------------------------------------------
# load_spectrum: file resolution and compatibility checks
# ---------------------------------------------------------------------------


def test_aux_file_resolution_gz_and_extension_spec(tmp_path):
    lo, hi = _grid(12)
    emin, emax = _grid(8, width=0.15)
    write_rmf(tmp_path / "resp.rmf.gz", lo, hi, _band_matrix(12, 8), emin, emax)
    write_arf(tmp_path / "area.arf", lo, hi, np.ones(12))
    other = tmp_path / "elsewhere"
    other.mkdir()
    bkg = write_pha(other / "bkg.pha", np.ones(8), 500.0, backscal=4.0)
    src = _raw_pha(tmp_path / "src.pha", _simple_columns(),
                   {"RESPFILE": "resp.rmf", "ANCRFILE": "area.arf[1]", "BACKFILE": bkg})
    pha = read_pha(src)
    assert pha.respfile == str(tmp_path / "resp.rmf.gz")
    assert pha.ancrfile == str(tmp_path / "area.arf")
    assert pha.backfile == bkg and pha.background_hdu is None
    spec = load_spectrum(src)
    assert spec.rmf.path == pha.respfile and spec.arf.path == pha.ancrfile
    assert spec.background.backscal == 4.0 and spec.background.exposure == 500.0

    # explicit overrides
    spec2 = load_spectrum(src, arf=False, background=None, rmf=spec.rmf)
    assert spec2.arf is None and spec2.background is None and spec2.rmf is spec.rmf


def test_missing_backfile_and_ancrfile(tmp_path):
    rmf, _ = _response(tmp_path)
    src = _raw_pha(tmp_path / "src.pha", _simple_columns(),
                   {"RESPFILE": "resp.rmf", "BACKFILE": "gone_bkg.pha", "ANCRFILE": "gone.arf"})
    pha = read_pha(src)  # no error at read time
    assert pha.backfile == str(tmp_path / "gone_bkg.pha")

    with pytest.raises(MissingFileError) as exc:
        load_spectrum(src, arf=False)
    msg = str(exc.value)
    assert "BACKFILE" in msg and "gone_bkg.pha" in msg and "src.pha" in msg

    with pytest.raises(MissingFileError) as exc:
        load_spectrum(src, background=None)
    assert "ANCRFILE" in str(exc.value) and "gone.arf" in str(exc.value)

    spec = load_spectrum(src, background=None, arf=False)
    assert spec.background is None and spec.arf is None and spec.rmf.path == rmf


def test_respfile_none_requires_rmf(tmp_path):
    rmf, _ = _response(tmp_path)
    src = _raw_pha(tmp_path / "src.pha", _simple_columns())
    with pytest.raises(BkgjaxIOError, match="no response") as exc:
        load_spectrum(src)
    assert not isinstance(exc.value, MissingFileError) and "RESPFILE" in str(exc.value)
    assert load_spectrum(src, rmf=rmf).rmf.n_channels == 8


def test_backfile_same_file_without_bkg_hdu(tmp_path):
    src = _raw_pha(tmp_path / "self.pha", _simple_columns(), {"BACKFILE": "self.pha"})
    with pytest.raises(BkgjaxIOError, match="HDUCLAS2='BKG'") as exc:
        read_pha(src)
    assert "BACKFILE" in str(exc.value) and "self.pha" in str(exc.value)


def test_arf_rmf_grid_mismatch(tmp_path):
    rmf, arf = _response(tmp_path, shift=0.01)
    src = _raw_pha(tmp_path / "src.pha", _simple_columns(), {"RESPFILE": "resp.rmf", "ANCRFILE": "resp.arf"})
    with pytest.raises(BkgjaxIOError, match="energy grid does not match") as exc:
        load_spectrum(src)
    assert rmf in str(exc.value) and arf in str(exc.value)

    lo, hi = _grid(11)
    short = write_arf(tmp_path / "short.arf", lo, hi, np.ones(11))
    with pytest.raises(BkgjaxIOError, match="11 ARF bins vs 12 RMF bins") as exc:
        load_spectrum(src, arf=short)
    assert "short.arf" in str(exc.value) and "resp.rmf" in str(exc.value)


def test_channel_count_mismatch(tmp_path):
    rmf, arf = _response(tmp_path, n_c=8)
    src = _raw_pha(tmp_path / "src10.pha", _simple_columns(n=10), {"RESPFILE": "resp.rmf"})
    with pytest.raises(BkgjaxIOError) as exc:
        load_spectrum(src)
    msg = str(exc.value)
    assert "src10.pha" in msg and "resp.rmf" in msg and "10 channels" in msg and "8 EBOUNDS" in msg

    src8 = _raw_pha(tmp_path / "src8.pha", _simple_columns(n=8), {"RESPFILE": "resp.rmf"})
    bkg6 = _raw_pha(tmp_path / "bkg6.pha", _simple_columns(n=6))
    with pytest.raises(BkgjaxIOError, match="background .*bkg6.pha has 6 channels"):
        load_spectrum(src8, background=bkg6)


# ---------------------------------------------------------------------------
# ARF / RMF reading and validation
# ---------------------------------------------------------------------------


def _raw_arf(path, lo, hi, sr):
    ext = fits.BinTableHDU.from_columns([
        fits.Column(name="ENERG_LO", format="E", array=lo),
        fits.Column(name="ENERG_HI", format="E", array=hi),
        fits.Column(name="SPECRESP", format="E", array=sr),
    ], name="SPECRESP")
    fits.HDUList([fits.PrimaryHDU(), ext]).writeto(path)
    return path


def test_arf_validation(tmp_path):
    lo = np.array([0.1, 0.3, 0.2, 0.4])
    path = _raw_arf(tmp_path / "nonmono.arf", lo, lo + 0.05, np.ones(4))
    with pytest.raises(BkgjaxIOError, match="ENERG_LO is not strictly increasing") as exc:
        read_arf(path)
    assert "nonmono.arf" in str(exc.value)

    lo = np.array([0.1, 0.2, 0.3])
    path = _raw_arf(tmp_path / "width.arf", lo, np.array([0.2, 0.2, 0.4]), np.ones(3))
    with pytest.raises(BkgjaxIOError, match="ENERG_HI must be > ENERG_LO"):
        read_arf(path)
    path = _raw_arf(tmp_path / "nan.arf", lo, lo + 0.1, np.array([1.0, np.nan, 1.0]))
    with pytest.raises(BkgjaxIOError, match="nan.arf.*SPECRESP"):
        read_arf(path)


def test_arf_round_trip(tmp_path):
    lo, hi = _grid(20, lo=0.3, width=0.05)
    sr = np.linspace(5.0, 400.0, 20)
    arf = read_arf(write_arf(tmp_path / "a.arf", lo, hi, sr, telescope="T"))
    np.testing.assert_array_equal(arf.energ_lo, lo.astype(np.float32))
    np.testing.assert_array_equal(arf.specresp, sr.astype(np.float32))
    assert arf.n_energy == 20


@pytest.mark.parametrize("first_channel", [0, 1])
def test_rmf_round_trip(tmp_path, first_channel):
    lo, hi = _grid(15)
    emin, emax = _grid(9, width=0.2)
    m = _band_matrix(15, 9, seed=first_channel)
    path = write_rmf(tmp_path / "rt.rmf", lo, hi, m, emin, emax, first_channel=first_channel)
    rmf = read_rmf(path)
    assert rmf.first_channel == first_channel and rmf.hduclas3 == "REDIST"
    np.testing.assert_array_equal(rmf.channel, np.arange(9) + first_channel)
    np.testing.assert_array_equal(rmf.dense(), m.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(rmf.energ_lo, lo.astype(np.float32))
    np.testing.assert_array_equal(rmf.e_max, emax.astype(np.float32))
    with fits.open(path) as h:
        assert h["MATRIX"].header[f"TLMIN{h['MATRIX'].columns.names.index('F_CHAN') + 1}"] == first_channel
        n_grp = h["MATRIX"].data["N_GRP"]
    assert n_grp.max() == 2 and n_grp.min() == 0  # multi-group and empty rows exercised

    full = read_rmf(write_rmf(tmp_path / "full.rsp", lo, hi, 50 * m, emin, emax))
    assert full.is_full


def _raw_rmf(path, n_grp, f_chan, n_chan, matrix, mformat, tlmin=None, ebounds=True, n_c=6):
    n_e = len(n_grp)
    lo, hi = _grid(n_e)
    w = max(1, np.shape(f_chan)[1] if np.ndim(f_chan) == 2 else 1)
    mext = fits.BinTableHDU.from_columns([
        fits.Column(name="ENERG_LO", format="E", array=lo),
        fits.Column(name="ENERG_HI", format="E", array=hi),
        fits.Column(name="N_GRP", format="I", array=np.asarray(n_grp)),
        fits.Column(name="F_CHAN", format=f"{w}J", array=np.asarray(f_chan)),
        fits.Column(name="N_CHAN", format=f"{w}J", array=np.asarray(n_chan)),
        fits.Column(name="MATRIX", format=mformat, array=np.asarray(matrix)),
    ], name="MATRIX")
    if tlmin is not None:
        mext.header["TLMIN4"] = tlmin
    hdus = [fits.PrimaryHDU(), mext]
    if ebounds:
        emin, emax = _grid(n_c)
        hdus.append(fits.BinTableHDU.from_columns([
            fits.Column(name="CHANNEL", format="J", array=np.arange(n_c)),
            fits.Column(name="E_MIN", format="E", array=emin),
            fits.Column(name="E_MAX", format="E", array=emax),
        ], name="EBOUNDS"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_rmf_fixed_length_columns(tmp_path):
    # 3 energies, 6 channels numbered from 0 (no TLMIN4: taken from EBOUNDS), up to 2 groups/row
    n_grp = [2, 0, 1]
    f_chan = [[0, 4], [0, 0], [2, 0]]
    n_chan = [[2, 1], [0, 0], [3, 0]]
    matrix = [[0.5, 0.3, 0.2, 0, 0], [0, 0, 0, 0, 0], [0.1, 0.8, 0.1, 0, 0]]
    rmf = read_rmf(_raw_rmf(tmp_path / "fixed.rmf", n_grp, f_chan, n_chan, matrix, "5E"))
    expected = np.zeros((3, 6))
    expected[0, [0, 1, 4]] = [0.5, 0.3, 0.2]
    expected[2, 2:5] = [0.1, 0.8, 0.1]
    assert rmf.first_channel == 0
    np.testing.assert_allclose(rmf.dense(), expected, rtol=1e-7)


def test_rmf_validation(tmp_path):
    args = ([1, 1], [[0], [2]], [[2], [2]])
    with pytest.raises(BkgjaxIOError, match="nanm.rmf.*MATRIX.*NaN"):
        read_rmf(_raw_rmf(tmp_path / "nanm.rmf", *args, [[0.5, np.nan], [1.0, 0.0]], "2E", tlmin=0))
    with pytest.raises(BkgjaxIOError, match="range.rmf.*F_CHAN/N_CHAN.*channel 6"):
        read_rmf(_raw_rmf(tmp_path / "range.rmf", [1, 1], [[0], [5]], [[2], [2]], [[0.5, 0.5]] * 2,
                          "2E", tlmin=0))
    with pytest.raises(BkgjaxIOError, match="noeb.rmf.*EBOUNDS"):
        read_rmf(_raw_rmf(tmp_path / "noeb.rmf", *args, [[0.5, 0.5]] * 2, "2E", ebounds=False))
    with pytest.raises(BkgjaxIOError, match="short.rmf.*needs 2 MATRIX values"):
        read_rmf(_raw_rmf(tmp_path / "short.rmf", *args, [[0.5], [1.0]], "1E", tlmin=0))


# ---------------------------------------------------------------------------
# writers, helpers, dataclass behaviour
# ---------------------------------------------------------------------------


def test_write_pha_round_trip(tmp_path):
    rmf, arf = _response(tmp_path, n_c=8, first_channel=0)
    counts = np.array([0, 4, 9, 2, 0, 1, 30, 7])
    bscal = np.linspace(0.5, 1.5, 8)
    path = write_pha(tmp_path / "fake.pha", counts, 1234.5, backscal=bscal, areascal=0.9,
                     respfile=rmf, ancrfile=arf, backfile=None, telescope="NuSTAR",
                     instrument="FPMA", first_channel=0)
    pha = read_pha(path)
    np.testing.assert_array_equal(pha.counts, counts)
    np.testing.assert_array_equal(pha.channel, np.arange(8))
    np.testing.assert_array_equal(pha.backscal, bscal)
    assert pha.exposure == 1234.5 and pha.areascal == 0.9 and pha.poisserr
    assert pha.respfile == rmf and pha.ancrfile == arf and pha.backfile is None
    assert pha.file_keywords["RESPFILE"] == "resp.rmf"  # written relative to the PHA
    assert (pha.telescope, pha.instrument, pha.hduclas2) == ("NuSTAR", "FPMA", "TOTAL")
    with fits.open(path) as h:
        hdr = h["SPECTRUM"].header
        assert (hdr["HDUCLAS1"], hdr["HDUCLAS3"], hdr["HDUVERS"], hdr["CHANTYPE"]) == (
            "SPECTRUM", "COUNT", "1.2.1", "PI")
        assert hdr["POISSERR"] is True and hdr["DETCHANS"] == 8
        assert (hdr["TLMIN1"], hdr["TLMAX1"]) == (0, 7)
    spec = load_spectrum(path)
    assert spec.rmf.first_channel == 0 and spec.arf is not None

    with pytest.raises(OSError):
        write_pha(path, counts, 10.0)  # overwrite=False
    with pytest.raises(BkgjaxIOError, match="integers"):
        write_pha(tmp_path / "frac.pha", counts + 0.5, 10.0)
    with pytest.raises(BkgjaxIOError, match="EXPOSURE"):
        write_pha(tmp_path / "noexp.pha", counts, 0.0)


def test_channel_overlap_mask_edges():
    e_min = np.array([0.0, 1.0, 2.0, 3.0])
    e_max = np.array([1.0, 2.0, 3.0, 4.0])
    # channels touching [1, 3] only at a point (0 and 3) are excluded
    np.testing.assert_array_equal(channel_overlap_mask(e_min, e_max, 1.0, 3.0), [False, True, True, False])
    # partial overlaps are included
    np.testing.assert_array_equal(channel_overlap_mask(e_min, e_max, 1.5, 2.5), [False, True, True, False])
    np.testing.assert_array_equal(channel_overlap_mask(e_min, e_max, 0.2, 0.3), [True, False, False, False])
    np.testing.assert_array_equal(channel_overlap_mask(e_min, e_max, 3.999, 10.0), [False, False, False, True])
    np.testing.assert_array_equal(channel_overlap_mask(e_min, e_max, 4.0, 10.0), [False] * 4)
    for lo, hi in [(2.0, 2.0), (3.0, 1.0), (np.nan, 1.0)]:
        with pytest.raises(BkgjaxIOError, match="lo < hi"):
            channel_overlap_mask(e_min, e_max, lo, hi)


def test_channel_overlap_mask_matches_sherpa_notice_on_dgtau(dgtau_dir):
    """Sherpa 4.19 notice(0.5, 7.0) on DG Tau (tests/reference/sherpa_reference.json)."""
    import json

    ref_path = Path(__file__).parent / "reference" / "sherpa_reference.json"
    if not ref_path.is_file():
        pytest.skip(f"{ref_path} not available")
    ref = json.loads(ref_path.read_text())["dgtau"]["filter"]
    spec = load_spectrum(dgtau_dir / DGTAU_PHA)
    mask = channel_overlap_mask(spec.rmf.e_min, spec.rmf.e_max, 0.5, 7.0)
    np.testing.assert_array_equal(spec.source.channel[mask], ref["noticed_channels"])
    assert spec.source.counts[mask].sum() == ref["noticed_counts_sum"]


def test_group_index():
    np.testing.assert_array_equal(group_index(None, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(group_index([-1, -1, 1, 0, -1], 5), [0, 0, 1, 2, 2])
    with pytest.raises(BkgjaxIOError, match="GROUPING"):
        group_index([1, -1], 3)
    with pytest.raises(BkgjaxIOError, match="GROUPING"):
        group_index([1, 3, -1], 3)


def test_dataclasses_are_frozen_and_validate(tmp_path):
    pha = PHA(path=None, channel=[1, 2, 3], counts=[1, 0, 2], exposure=10.0)
    assert pha.counts.dtype == np.float64 and pha.channel.dtype == np.int64
    assert pha.backscal == 1.0 and pha.grouping is None and pha.background_hdu is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        pha.exposure = 5.0
    with pytest.raises(ValueError):
        pha.counts[0] = 3.0  # read-only array
    with pytest.raises(BkgjaxIOError, match="COUNTS"):
        PHA(path=None, channel=[1, 2], counts=[1, -1], exposure=1.0)
    with pytest.raises(BkgjaxIOError, match="EXPOSURE"):
        PHA(path=None, channel=[1, 2], counts=[1, 1], exposure=np.inf)
    with pytest.raises(BkgjaxIOError, match=r"ENERG_LO\[0\]=1.0, ENERG_LO\[1\]=0.5"):
        ARF(path=None, energ_lo=[1.0, 0.5], energ_hi=[1.5, 1.0], specresp=[1.0, 1.0])
    rmf = RMF(path=None, energ_lo=[1.0, 2.0], energ_hi=[2.0, 3.0], channel=[1, 2], e_min=[1.0, 2.0],
              e_max=[2.0, 3.0], first_channel=1, rows=[0, 1, 1], cols=[0, 0, 1], values=[1.0, 0.25, 0.75])
    np.testing.assert_array_equal(rmf.dense(), [[1.0, 0.0], [0.25, 0.75]])
    assert rmf.n_energy == 2 and rmf.n_channels == 2


@pytest.mark.parametrize("garbage, tlmin, first", [
    (np.zeros(6, int), 0, 0),                      # all zeros, TLMIN4 of F_CHAN says 0
    (np.zeros(6, int), None, 1),                   # all zeros, no TLMIN: OGIP default 1
    (np.array([7, 3, 9, 9, 1, 2]), 1, 1),          # not increasing
    (np.array([0.0, 1.5, np.nan, 3, 4, 5]), 0, 0),  # not integers
])
def test_rmf_unusable_ebounds_channel_read_by_row_order(tmp_path, garbage, tlmin, first):
    """A real Chandra RMF whose EBOUNDS CHANNEL column holds no channel numbers: read by row
    order (as XSPEC and Sherpa do) with a warning naming the file; the matrix is unchanged."""
    args = ([1, 1, 1], [[first], [first + 2], [first + 3]], [[2], [2], [3]],
            [[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4]], "3E")

    def with_channel(name, channel):
        path = _raw_rmf(tmp_path / name, *args, tlmin=tlmin)
        with fits.open(path, mode="update") as h:
            cols = [c for c in h["EBOUNDS"].columns if c.name != "CHANNEL"]
            fmt = "E" if np.asarray(channel).dtype.kind == "f" else "J"
            h[2] = fits.BinTableHDU.from_columns(
                [fits.Column(name="CHANNEL", format=fmt, array=channel)] + cols, name="EBOUNDS")
        return path

    good = read_rmf(with_channel("good.rmf", np.arange(first, first + 6)))
    path = with_channel("garbage.rmf", garbage)
    with pytest.warns(UserWarning, match=r"garbage\.rmf: EBOUNDS column CHANNEL holds no usable"):
        rmf = read_rmf(path)
    assert rmf.first_channel == first
    np.testing.assert_array_equal(rmf.channel, np.arange(first, first + 6))
    np.testing.assert_array_equal(rmf.dense(), good.dense())
    np.testing.assert_array_equal(rmf.e_min, good.e_min)
