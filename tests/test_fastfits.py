"""bkgjax.io.fastfits: the astropy-free FITS reader of the OGIP readers gives astropy's values
(headers, names, column arrays of the same shapes and kinds) on every file it accepts, leaves
everything else to astropy, and reading a spectrum imports no astropy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bkgjax.cli import demo_spectrum_path
from bkgjax.io import fastfits, load_spectrum
from bkgjax.io.fits import is_bintable, open_table_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    return a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b))


def assert_reads_like_astropy(path):
    light = fastfits.open_tables(path)
    with fits.open(path, memmap=False) as ref:
        assert len(light) == len(ref)
        for r, l in zip(ref, light):
            assert (r.name, r.ver) == (l.name, l.ver)
            assert isinstance(r, fits.BinTableHDU) == l.is_bintable == is_bintable(l) \
                == is_bintable(r)
            keys = []
            for card in r.header.cards:
                if card.keyword not in ("", "COMMENT", "HISTORY", "CONTINUE") and \
                        card.keyword not in keys:
                    keys.append(card.keyword)
            assert list(l.header.keys()) == keys
            for k in keys:
                assert _same(r.header[k], l.header[k]), (k, r.header[k], l.header[k])
                assert k.lower() in l.header and l.header.get(k.lower()) == l.header[k]
            if not l.is_bintable:
                continue
            assert l.columns.names == list(r.columns.names)
            assert len(l.data) == len(r.data)
            for name in r.columns.names:
                a, b = r.data[name], l.data[name]
                if a.dtype == object:
                    assert b.dtype == object and len(a) == len(b)
                    for x, y in zip(a, b):
                        x, y = np.asarray(x), np.asarray(y)
                        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
                        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
                elif a.dtype.kind in "SU":
                    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
                    assert all(type(a[i]) is type(b[i]) for i in range(len(a)))
                else:
                    a, b = np.asarray(a), np.asarray(b)
                    assert (a.shape, a.dtype.kind, a.dtype.itemsize) == \
                        (b.shape, b.dtype.kind, b.dtype.itemsize), name
                    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name


def _shipped_files():
    files = sorted((ROOT / "bkgjax" / "data" / "dgtau").glob("*.fits*"))
    for sub in ("spectra/nustar_velax1", "nustar/aperture"):
        folder = SHARED / sub
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir()
                            if p.suffix in (".pha", ".arf", ".rmf", ".fits"))
    return files


@pytest.mark.parametrize("path", _shipped_files(), ids=lambda p: p.name)
def test_shipped_and_shared_files_read_like_astropy(path):
    assert_reads_like_astropy(path)


def _table_with_every_column_type(tmp_path, gz=False):
    n = 5
    rng = np.random.default_rng(1)
    vla = np.empty(n, dtype=object)
    vla_i = np.empty(n, dtype=object)
    vla_l = np.empty(n, dtype=object)
    for i in range(n):
        vla[i] = rng.normal(size=i).astype(np.float32)
        vla_i[i] = np.arange(i + 1, dtype=np.int32)
        vla_l[i] = np.arange(i) % 2 == 0
    cols = [
        fits.Column(name="L", format="L", array=np.array([True, False, True, False, True])),
        fits.Column(name="B", format="B", array=np.arange(n, dtype=np.uint8)),
        fits.Column(name="I", format="I", array=np.arange(n, dtype=np.int16) - 2),
        fits.Column(name="J", format="J", array=np.arange(n, dtype=np.int32) * 1000),
        fits.Column(name="K", format="K", array=np.arange(n, dtype=np.int64) * 2**40),
        fits.Column(name="E", format="E", array=np.array([1.5, np.nan, -3, 0, 1e30])),
        fits.Column(name="D", format="D", array=np.linspace(0, 1, n)),
        fits.Column(name="S", format="8A", array=np.array(["a", "bb  ", "", "dddddddd", "e f"])),
        fits.Column(name="V3", format="3E", array=rng.normal(size=(n, 3))),
        fits.Column(name="VJ", format="2J", array=np.arange(2 * n).reshape(n, 2)),
        fits.Column(name="PE", format="PE()", array=vla),
        fits.Column(name="PJ", format="PJ()", array=vla_i),
        fits.Column(name="QJ", format="QJ()", array=vla_i),
        fits.Column(name="PL", format="PL()", array=vla_l),
    ]
    ext = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    h = ext.header
    h["EXPOSURE"] = (1234.5, "s")
    h["POISSERR"] = True
    h["OTHER"] = False
    h["QUOTED"] = "it's 'quoted'"
    h["EMPTY"] = ""
    h["BLANKS"] = "  lead and trail   "
    h["BIG"] = 12345678901234
    h["NEG"] = -7
    h["EXPO"] = 1.5e-300
    h["LONGSTR"] = "a long value " * 12 + "& with an ampersand"
    h["DUP"] = 1
    h.append(("DUP", 2), end=True)  # astropy reads the first
    h.add_history("a history card")
    h.add_comment("a comment card")
    img = fits.ImageHDU(np.arange(12, dtype=np.float32).reshape(3, 4), name="IMG")
    path = tmp_path / ("every.fits.gz" if gz else "every.fits")
    fits.HDUList([fits.PrimaryHDU(), ext, img,
                  fits.BinTableHDU.from_columns(cols[:3], name="SPECTRUM")]).writeto(
        path, checksum=True)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_every_supported_column_and_keyword_type(tmp_path, gz):
    path = _table_with_every_column_type(tmp_path, gz)
    assert_reads_like_astropy(path)
    hdul = fastfits.open_tables(path)
    assert hdul.index_of("spectrum") == 1 and hdul.index_of(("SPECTRUM", 1)) == 1
    assert hdul.index_of("PRIMARY") == 0 and hdul.index_of(2) == 2
    with pytest.raises(KeyError):
        hdul.index_of("NOPE")
    assert hdul[1].header["LONGSTR"].endswith("& with an ampersand")


@pytest.mark.parametrize("change", ["tscal", "hierarch", "compressed", "bits", "tdim", "zero_rows"])
def test_features_it_leaves_to_astropy(tmp_path, change):
    n = 0 if change == "zero_rows" else 4
    cols = [fits.Column(name="CHANNEL", format="J", array=np.arange(n)),
            fits.Column(name="COUNTS", format="J", array=np.ones(n, dtype=np.int32))]
    hdus = [fits.PrimaryHDU()]
    if change == "tscal":
        cols[1] = fits.Column(name="COUNTS", format="I", bzero=32768, array=np.ones(4, np.uint16))
    if change == "bits":
        cols.append(fits.Column(name="FLAGS", format="8X", array=np.zeros((4, 8), dtype=bool)))
    if change == "tdim":
        cols.append(fits.Column(name="M", format="4E", dim="(2,2)", array=np.zeros((4, 2, 2))))
    ext = fits.BinTableHDU.from_columns(cols, name="SPECTRUM")
    if change == "hierarch":
        ext.header["HIERARCH LONG KEYWORD NAME"] = 1
    hdus.append(ext)
    if change == "compressed":
        hdus.append(fits.CompImageHDU(np.zeros((8, 8), dtype=np.float32)))
    path = tmp_path / "odd.fits"
    fits.HDUList(hdus).writeto(path)
    with pytest.raises(fastfits.Unsupported):
        fastfits.open_tables(path)
    with open_table_file(str(path)) as hdul:  # read by astropy instead
        assert isinstance(hdul, fits.HDUList)


def test_damaged_or_foreign_files_are_left_to_astropy(tmp_path):
    path = tmp_path / "x.fits"
    path.write_bytes(b"not a FITS file at all" * 200)
    with pytest.raises(fastfits.Unsupported):
        fastfits.open_tables(path)
    good = _table_with_every_column_type(tmp_path)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(fastfits.Unsupported):
        fastfits.open_tables(cut)


def test_loading_a_spectrum_imports_no_astropy():
    code = ("import json, sys; from bkgjax.io import load_spectrum; "
            f"f = load_spectrum({demo_spectrum_path()!r}); "
            "print(json.dumps({'astropy': any(m.split('.')[0] == 'astropy' for m in sys.modules),"
            " 'n': int(f.source.counts.size)}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"astropy": False, "n": 1024}


def test_spectrum_files_equal_those_read_by_astropy(monkeypatch):
    fast = load_spectrum(demo_spectrum_path())

    def refuse(path):
        raise fastfits.Unsupported("test")

    monkeypatch.setattr(fastfits, "open_tables", refuse)
    ref = load_spectrum(demo_spectrum_path())
    for part in ("source", "background", "rmf", "arf"):
        a, b = getattr(fast, part), getattr(ref, part)
        for field in a.__dataclass_fields__:
            x, y = getattr(a, field), getattr(b, field)
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and np.array_equal(x, y), (part, field)
            else:
                assert x == y, (part, field)
