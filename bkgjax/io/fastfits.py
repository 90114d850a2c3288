"""A small FITS reader for the OGIP spectra and responses: headers and binary tables to NumPy,
without importing astropy.

``astropy.io.fits`` takes ~0.3 s of CPU to import (it pulls in ``astropy.units``) and reads a
spectrum with its response in ~0.1 s, a large share of a ``bkgjax fit-spectrum`` run that is
over in about a second.  :func:`open_tables` reads the common case itself: a plain or gzip
file of a primary HDU and IMAGE/TABLE/BINTABLE extensions, binary-table columns of the types
L, B, I, J, K, A, E, D (scalar or fixed repeat count) and variable-length arrays P/Q of L, B, I,
J, K, E, D.  It gives what the readers in :mod:`bkgjax.io.ogip` and :mod:`bkgjax.io.response`
use of astropy's objects, with astropy's values: header keywords (``get``, ``in``, ``[]``:
bool, int, float, str with trailing blanks removed, long strings on CONTINUE cards joined,
the first card of a repeated keyword),
``hdu.name``/``ver``, ``hdul.index_of``, and ``hdu.data[column]`` arrays of the same values,
shapes and dtypes (big-endian as stored; variable-length columns as object arrays of native
arrays; strings as a chararray).

Anything else (compressed images, scaled columns TSCAL/TZERO, TDIM, bit and complex columns,
HIERARCH cards, undefined or unusual keyword values, random groups, zero-row
tables, bzip2/zip files, a damaged file) raises :class:`Unsupported` and the caller opens the
file with astropy instead, so every file reads exactly as astropy reads it.
tests/test_fastfits.py compares the two on every file the test suite writes and ships.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any

import numpy as np

__all__ = ["Unsupported", "open_tables"]

_BLOCK = 2880
_CARD = 80


class Unsupported(Exception):
    """The file uses a FITS feature this reader leaves to astropy."""


_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?")
_RVKC_RE = re.compile(r"[a-zA-Z_]\w*(\.\w+)*: +[+-]?[.\d]")  # record-valued keyword card
_COMMENTARY = ("", "COMMENT", "HISTORY")


def _raw_string(text: str, keyword: str) -> str | None:
    """The characters between the quotes of a string value field ('' kept as two quotes), or
    None when the field holds no string."""
    s = text.lstrip(" ")
    if not s.startswith("'"):
        return None
    i = 1
    while True:
        j = s.find("'", i)
        if j < 0:
            raise Unsupported(f"{keyword}: unterminated string")
        if s[j + 1:j + 2] == "'":  # '' is a quote
            i = j + 2
            continue
        rest = s[j + 1:].lstrip(" ")
        if rest and not rest.startswith("/"):
            raise Unsupported(f"{keyword}: text after the string")
        return s[1:j]


def _string_value(raw: str, keyword: str) -> str:
    value = raw.replace("''", "'").rstrip()
    if not all(" " <= c <= "~" for c in value) or _RVKC_RE.match(value):
        raise Unsupported(f"{keyword}: unusual string")
    return value


def _parse_value(text: str, keyword: str):
    """The value of a card's value field (after '= '), as astropy gives it."""
    raw = _raw_string(text, keyword)
    if raw is not None:
        return _string_value(raw, keyword)
    field = text.split("/", 1)[0].strip()
    if field in ("T", "F"):
        return field == "T"
    if _INT_RE.fullmatch(field):
        return int(field)
    if _FLOAT_RE.fullmatch(field):
        return float(field.replace("D", "E").replace("d", "e"))
    raise Unsupported(f"{keyword}: value {field!r}")


class Header:
    """The keywords of one HDU (read-only; first card of a repeated keyword)."""

    def __init__(self, values: dict[str, Any]):
        self._values = values

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and key.strip().upper() in self._values

    def __getitem__(self, key):
        if not isinstance(key, str):
            raise KeyError(key)
        try:
            return self._values[key.strip().upper()]
        except KeyError:
            raise KeyError(f"Keyword {key!r} not found.") from None

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self):
        return self._values.keys()

    def __len__(self) -> int:
        return len(self._values)


def _read_header(buf: memoryview, pos: int) -> tuple[Header, int]:
    """(header, offset of the data) of the header that starts at ``pos``.

    A string value continued on CONTINUE cards (the OGIP long-string convention) is joined as
    astropy joins it: each piece without trailing blanks and its trailing '&'."""
    cards: list[list] = []  # [keyword, value text, raw string pieces or None]
    while True:
        if pos + _BLOCK > len(buf):
            raise Unsupported("truncated header")
        block = bytes(buf[pos:pos + _BLOCK])
        pos += _BLOCK
        try:
            text = block.decode("ascii")
        except UnicodeDecodeError:
            raise Unsupported("non-ASCII header") from None
        for k in range(0, _BLOCK, _CARD):
            card = text[k:k + _CARD]
            keyword = card[:8].rstrip(" ")
            if keyword == "END":
                if card[8:].strip():
                    raise Unsupported("END card with text")
                return _header(cards), pos
            if keyword == "CONTINUE":
                if not cards:
                    raise Unsupported("CONTINUE first")
                if cards[-1][0] in _COMMENTARY:
                    continue
                piece = _raw_string(card[8:], keyword)
                if cards[-1][2] is None or piece is None:
                    raise Unsupported("CONTINUE of a value that is not a string")
                cards[-1][2].append(piece)
                continue
            if keyword in _COMMENTARY:
                cards.append([keyword, None, None])
                continue
            if not re.fullmatch(r"[A-Z0-9_-]+", keyword) or keyword == "HIERARCH":
                raise Unsupported(f"card {keyword!r}")
            if card[8:10] != "= ":
                raise Unsupported(f"{keyword}: no value indicator")
            raw = _raw_string(card[10:], keyword)
            cards.append([keyword, card[10:], None if raw is None else [raw]])


def _header(cards) -> Header:
    values: dict[str, Any] = {}
    for keyword, text, pieces in cards:
        if keyword in _COMMENTARY or keyword in values:
            continue
        if pieces is not None and len(pieces) > 1:
            joined = "".join(p.rstrip()[:-1] if p.rstrip().endswith("&") else p.rstrip()
                             for p in pieces)
            if "'" in joined.replace("''", ""):
                raise Unsupported(f"{keyword}: quote in a long string")
            values[keyword] = _string_value(joined, keyword)
        else:
            values[keyword] = _parse_value(text, keyword)
    return Header(values)


def _data_size(h: Header, xtension: str | None) -> int:
    bitpix, naxis = h.get("BITPIX"), h.get("NAXIS")
    if not isinstance(bitpix, int) or isinstance(bitpix, bool) or bitpix not in (8, 16, 32, 64, -32, -64):
        raise Unsupported("BITPIX")
    if not isinstance(naxis, int) or isinstance(naxis, bool) or not 0 <= naxis <= 999:
        raise Unsupported("NAXIS")
    axes = [h.get(f"NAXIS{i}") for i in range(1, naxis + 1)]
    if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in axes):
        raise Unsupported("NAXISn")
    if xtension is None:
        if h.get("GROUPS", False) is True or h.get("SIMPLE") is not True:
            raise Unsupported("random groups or not SIMPLE")
        pcount, gcount = 0, 1
    else:
        pcount, gcount = h.get("PCOUNT", 0), h.get("GCOUNT", 1)
        if not (isinstance(pcount, int) and isinstance(gcount, int)) or pcount < 0 or gcount != 1:
            raise Unsupported("PCOUNT/GCOUNT")
    n = int(np.prod(axes, dtype=np.int64)) if naxis else 0
    return abs(bitpix) // 8 * gcount * (pcount + n)


_TFORM_RE = re.compile(r"\s*(\d*)([LXBIJKAEDCMPQ])(?:([LBIJKED])(?:\(\s*\d*\s*\))?)?\s*")
_NUMPY = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
_SIZE = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "E": 4, "D": 8}


class Columns:
    def __init__(self, names):
        self.names = list(names)


class Table:
    """Binary-table data: ``len()`` rows, ``table[name]`` the column (as astropy gives it)."""

    def __init__(self, rows: np.ndarray, heap: memoryview, columns: list[tuple[str, str, str, int]]):
        self._rows = rows
        self._heap = heap
        self._columns = {name: (field, code, repeat) for name, field, code, repeat in columns}
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._column(name)
        return self._cache[name]

    def _column(self, name: str) -> np.ndarray:
        field, code, repeat = self._columns[name]
        raw = self._rows[field]
        if code == "A":  # astropy: a chararray (items without trailing blanks) of str
            text = raw.astype("U")
            chararray = getattr(np.char, "chararray", None)
            return text.view(chararray) if chararray is not None else np.char.rstrip(text)
        if code in ("P", "Q"):
            etype = repeat  # element type letter
            out = np.empty(len(raw), dtype=object)
            size = _SIZE[etype]
            for i, (count, offset) in enumerate(raw.reshape(len(raw), 2).tolist()):
                if count < 0 or offset < 0 or offset + count * size > len(self._heap):
                    raise Unsupported(f"{name}: descriptor outside the heap")
                piece = np.frombuffer(self._heap, dtype=_NUMPY[etype], count=count, offset=offset)
                # astropy's variable-length elements are native-endian copies
                out[i] = _logical(piece) if etype == "L" else piece.astype(piece.dtype.newbyteorder("="))
            return out
        return _logical(raw) if code == "L" else raw


def _logical(raw: np.ndarray) -> np.ndarray:
    return raw.view("u1") == ord("T")


class HDU:
    """One HDU: ``header``, ``name``, ``ver``, and for binary tables ``columns`` and ``data``."""

    def __init__(self, header: Header, kind: str, data: Table | None = None, columns=None):
        self.header = header
        self.kind = kind  # "primary", "image", "table" (ASCII) or "bintable"
        self.is_bintable = kind == "bintable"
        self.data = data
        self.columns = columns

    @property
    def name(self) -> str:
        return str(self.header.get("EXTNAME", "PRIMARY" if self.kind == "primary" else ""))

    @property
    def ver(self):
        return self.header.get("EXTVER", 1)


class HDUList(list):
    """The HDUs of a file (a list; a context manager like astropy's)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self) -> None:
        pass

    def index_of(self, key) -> int:
        """astropy's ``HDUList.index_of``: an int as it is, an EXTNAME or (EXTNAME, EXTVER)."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return key
        if isinstance(key, tuple):
            key, ver = key
        else:
            ver = None
        if not isinstance(key, str):
            raise KeyError(f"HDUList indices must be integers, extension names as strings, or "
                           f"(extname, version) tuples; got {key}")
        wanted = key.strip().upper()
        for idx, hdu in enumerate(self):
            if (hdu.name.strip().upper() == wanted or (wanted == "PRIMARY" and idx == 0)) and \
                    (ver is None or ver == hdu.ver):
                return idx
        raise KeyError(f"Extension {key!r} not found.")


def _bintable(h: Header, buf: memoryview, start: int) -> tuple[Table, Columns]:
    nbytes, nrows, tfields = h.get("NAXIS1"), h.get("NAXIS2"), h.get("TFIELDS")
    if h.get("NAXIS") != 2 or h.get("BITPIX") != 8 or not isinstance(tfields, int) or \
            tfields < 1 or not isinstance(nrows, int) or nrows < 1:
        raise Unsupported("table layout")
    if "ZIMAGE" in h or "ZTABLE" in h:
        raise Unsupported("compressed HDU")
    names, fields, columns = [], [], []
    offset = 0
    for i in range(1, tfields + 1):
        if any(f"{key}{i}" in h for key in ("TSCAL", "TZERO", "TDIM")):
            raise Unsupported(f"column {i}: TSCAL/TZERO/TDIM")
        name, tform = h.get(f"TTYPE{i}"), h.get(f"TFORM{i}")
        if not isinstance(name, str) or not name.strip() or not isinstance(tform, str):
            raise Unsupported(f"column {i}: TTYPE/TFORM")
        m = _TFORM_RE.fullmatch(tform)
        if m is None:
            raise Unsupported(f"column {i}: TFORM {tform!r}")
        repeat = int(m.group(1)) if m.group(1) else 1
        code, element = m.group(2), m.group(3)
        if code in ("P", "Q"):
            if element is None or repeat != 1:
                raise Unsupported(f"column {i}: TFORM {tform!r}")
            fmt, width, detail = (">i4" if code == "P" else ">i8", (2,)), 8 if code == "P" else 16, element
        elif element is not None or code in ("X", "C", "M") or repeat < 1:
            raise Unsupported(f"column {i}: TFORM {tform!r}")
        elif code == "A":
            fmt, width, detail = f"S{repeat}", repeat, repeat
        else:
            fmt = _NUMPY[code] if repeat == 1 else (_NUMPY[code], (repeat,))
            width, detail = _SIZE[code] * repeat, repeat
        names.append(name)
        fields.append((f"f{i}", fmt, offset))
        columns.append((name, f"f{i}", code, detail))
        offset += width
    if offset != nbytes or len({n.strip().upper() for n in names}) != len(names):
        raise Unsupported("row width or repeated column names")
    dtype = np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                      "offsets": [f[2] for f in fields], "itemsize": nbytes})
    table_bytes = nbytes * nrows
    pcount = h.get("PCOUNT", 0)
    theap = h.get("THEAP", table_bytes)
    if not isinstance(theap, int) or not table_bytes <= theap <= table_bytes + pcount or \
            start + table_bytes + pcount > len(buf):
        raise Unsupported("THEAP/PCOUNT")
    rows = np.frombuffer(buf, dtype=dtype, count=nrows, offset=start)
    heap = buf[start + theap:start + table_bytes + pcount]
    return Table(rows, heap, columns), Columns(names)


def read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when it is gzip-compressed (by its magic number)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return zlib.decompress(raw, 47)  # gzip (and zlib) header
        except zlib.error as exc:
            raise Unsupported(f"gzip: {exc}") from None
    if raw[:3] == b"BZh" or raw[:4] == b"PK\x03\x04":
        raise Unsupported("bzip2/zip file")
    return raw


def open_tables(path: str | os.PathLike) -> HDUList:
    """Every HDU of the FITS file ``path`` (module docstring); :class:`Unsupported` when the
    file needs astropy."""
    data = read_bytes(os.fspath(path))
    if data[:30] != b"SIMPLE  =                    T":
        raise Unsupported("not a standard FITS file")
    buf = memoryview(data)
    hdus = HDUList()
    pos = 0
    while pos < len(buf):
        if not any(buf[pos:pos + _CARD]):  # zero padding after the last HDU
            break
        header, start = _read_header(buf, pos)
        xtension = header.get("XTENSION") if hdus else None
        if hdus and xtension not in ("BINTABLE", "IMAGE", "TABLE"):
            raise Unsupported(f"XTENSION {xtension!r}")
        size = _data_size(header, xtension)
        if start + size > len(buf):
            raise Unsupported("truncated data")
        if xtension == "BINTABLE":
            table, columns = _bintable(header, buf, start)
            hdus.append(HDU(header, "bintable", table, columns))
        else:
            hdus.append(HDU(header, {None: "primary", "IMAGE": "image", "TABLE": "table"}[xtension]))
        pos = start + -(-size // _BLOCK) * _BLOCK
    return hdus
