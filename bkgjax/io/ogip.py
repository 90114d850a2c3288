"""Readers and writers for OGIP spectral files (PHA, ARF, RMF).

This is the only layer of bkgjax that touches FITS; everything here is plain
NumPy + :mod:`astropy.io.fits`, and everything returned is an immutable
dataclass holding read-only NumPy arrays.

Formats follow the OGIP memos:

* PHA spectra (type I and type II): OGIP/92-007 (Arnaud, George & Tennant),
  with the type II extension of OGIP/92-007a.
* Responses (RMF ``MATRIX`` + ``EBOUNDS``, ARF ``SPECRESP``): CAL/GEN/92-002
  (George et al.) and its addendum CAL/GEN/92-002a.

Units: energies are keV, effective areas cm^2, exposures seconds.
gzip-compressed files (``*.fits.gz``) are read transparently.
"""

from __future__ import annotations

import operator
import os
import re
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
from astropy.io import fits

from .errors import BkgjaxIOError, MissingFileError
from .fits import (
    column_names,
    hdu_label,
    open_fits,
    path_candidates,
    readonly,
    resolve_input_path,
)

__all__ = [
    "PHA",
    "ARF",
    "RMF",
    "SpectrumFiles",
    "read_pha",
    "read_arf",
    "read_rmf",
    "load_spectrum",
    "check_compatible",
    "channel_overlap_mask",
    "group_index",
    "write_pha",
    "write_arf",
    "write_rmf",
]

_MISSING = object()
_FILE_KEYWORDS = ("BACKFILE", "RESPFILE", "ANCRFILE")
_ENERGY_UNITS = {"kev": 1.0, "ev": 1e-3, "mev": 1e3}


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------



def _label(path: str | None, what: str = "") -> str:
    base = path if path is not None else "<in-memory data>"
    return f"{base} ({what})" if what else base



def _strip_extension_spec(value: str) -> str:
    """'file.pha[2]' / 'file.pha{3}' / 'file.pha[SPECTRUM]' -> 'file.pha'."""
    return re.sub(r"(\[[^\[\]]*\]|\{[^{}]*\})+\s*$", "", value).strip()


def _is_none_value(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("", "none"))


def _resolve_aux_file(pha_path: str, value: Any) -> tuple[str | None, list[str]]:
    """Resolve a BACKFILE/RESPFILE/ANCRFILE value relative to the PHA directory.

    Returns ``(path, tried)``: ``path`` is the existing file when found, otherwise the
    unresolved absolute path (``None`` for 'none'/empty values).
    """
    if _is_none_value(value):
        return None, []
    name = _strip_extension_spec(str(value).strip())
    if not name:
        return None, []
    name = os.path.expandvars(os.path.expanduser(name))
    if not os.path.isabs(name):
        name = os.path.join(os.path.dirname(pha_path), name)
    name = os.path.normpath(name)
    cands = path_candidates(name)
    for c in cands:
        if os.path.isfile(c):
            return c, cands
    return name, cands


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _as_bool(v: Any, where: str) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().upper()
        if s in ("T", "TRUE", "Y", "YES", "1"):
            return True
        if s in ("F", "FALSE", "N", "NO", "0"):
            return False
    if isinstance(v, (int, np.integer)):
        return bool(v)
    raise BkgjaxIOError(f"{where}: expected a logical value, got {v!r}")


def _as_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    s = str(v).strip()
    return s or None


def _as_name(v: Any) -> str | None:
    """TELESCOP/INSTRUME value: '', 'NONE', 'UNKNOWN' -> None."""
    s = _as_str(v)
    if s is None or s.upper() in ("NONE", "UNKNOWN"):
        return None
    return s


def _as_positive_scale(v: Any, n: int, where: str, name: str) -> float | np.ndarray:
    """BACKSCAL / AREASCAL: scalar or per-channel array, finite and > 0."""
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BkgjaxIOError(f"{where}: {name} is not numeric ({v!r})") from exc
    if a.ndim == 0:
        x = float(a)
        if not np.isfinite(x) or x <= 0:
            raise BkgjaxIOError(f"{where}: {name} = {x!r} must be finite and > 0")
        return x
    a = np.array(a.ravel(), dtype=np.float64)
    if a.shape[0] != n:
        raise BkgjaxIOError(f"{where}: {name} has {a.shape[0]} values but the spectrum has {n} channels")
    bad = ~np.isfinite(a) | (a <= 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise BkgjaxIOError(
            f"{where}: {name} must be finite and > 0 in every channel; "
            f"{int(bad.sum())} bad value(s), first at index {i} ({float(a[i])!r})"
        )
    return readonly(a)


def _as_exposure(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise BkgjaxIOError(f"{where}: EXPOSURE is not numeric ({v!r})") from exc
    if not np.isfinite(x) or x <= 0:
        raise BkgjaxIOError(f"{where}: EXPOSURE = {x!r} s must be finite and > 0")
    return x


def _as_int_array(v: Any, n: int, where: str, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 1 or a.shape[0] != n:
        raise BkgjaxIOError(f"{where}: {name} has shape {a.shape}, expected ({n},)")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise BkgjaxIOError(f"{where}: {name} holds non-integer values")
    elif a.dtype.kind not in "iub":
        raise BkgjaxIOError(f"{where}: {name} is not an integer array (dtype {a.dtype})")
    return readonly(np.array(a, dtype=np.int64))


def _check_grouping(g: np.ndarray, where: str) -> None:
    bad = ~np.isin(g, (-1, 0, 1))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise BkgjaxIOError(
            f"{where}: GROUPING values must be +1 (start group), -1 (continue) or 0; "
            f"found {int(g[i])} at index {i}"
        )


def _energy_factor(hdu: fits.BinTableHDU, colname: str) -> float:
    idx = [n.upper() for n in hdu.columns.names].index(colname.upper())
    unit = str(hdu.header.get(f"TUNIT{idx + 1}", "") or "").strip().lower()
    return _ENERGY_UNITS.get(unit, 1.0)



def check_energy_bounds(lo: np.ndarray, hi: np.ndarray, where: str) -> None:
    if lo.ndim != 1 or lo.shape != hi.shape or lo.size == 0:
        raise BkgjaxIOError(f"{where}: ENERG_LO/ENERG_HI must be non-empty 1-D arrays of equal length "
                            f"(got {lo.shape} and {hi.shape})")
    for name, a in (("ENERG_LO", lo), ("ENERG_HI", hi)):
        if not np.all(np.isfinite(a)):
            raise BkgjaxIOError(f"{where}: column {name} holds NaN/inf values")
    if np.any(lo < 0):
        raise BkgjaxIOError(f"{where}: column ENERG_LO holds negative energies (min {float(lo.min())!r} keV)")
    bad = ~(hi > lo)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise BkgjaxIOError(
            f"{where}: ENERG_HI must be > ENERG_LO in every bin; bin {i} has "
            f"ENERG_LO={float(lo[i])!r}, ENERG_HI={float(hi[i])!r} keV"
        )
    d = np.diff(lo)
    if np.any(d <= 0):
        i = int(np.flatnonzero(d <= 0)[0])
        raise BkgjaxIOError(
            f"{where}: column ENERG_LO is not strictly increasing "
            f"(ENERG_LO[{i}]={float(lo[i])!r}, ENERG_LO[{i + 1}]={float(lo[i + 1])!r} keV)"
        )


# ---------------------------------------------------------------------------
# data classes
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PHA:
    """One OGIP PHA spectrum (OGIP/92-007).

    Attributes
    ----------
    path : str or None
        Absolute path of the file it was read from (None if built in memory).
    channel : ndarray of int64
        Channel numbers as stored in the CHANNEL column.
    counts : ndarray of float64
        Counts per channel (COUNTS, or RATE * EXPOSURE when only RATE is stored).
    exposure : float
        EXPOSURE in seconds (finite, > 0).
    backscal, areascal : float or ndarray
        BACKSCAL / AREASCAL keyword or per-channel column (default 1.0, > 0).
    grouping : ndarray of int64 or None
        GROUPING column (+1 starts a group, -1 continues it, 0 acts like +1).
    quality : ndarray of int64 or None
        QUALITY column, or the QUALITY keyword broadcast when non-zero (0 = good).
    backfile, respfile, ancrfile : str or None
        Header file names resolved to absolute paths (see :func:`read_pha`); a name that
        could not be found is kept as the unresolved absolute path.
    background_hdu : int or None
        When BACKFILE names this same file: index of its HDUCLAS2='BKG' HDU.
    telescope, instrument : str or None
        TELESCOP / INSTRUME ('NONE' / 'UNKNOWN' read as None).
    hduclas2 : str or None
        'TOTAL', 'NET', 'BKG', ...
    is_rate : bool
        True if the file stored RATE rather than COUNTS.
    hdu_index, row : int or None
        HDU index and (type II) 0-based row the spectrum was read from.
    poisserr : bool
        POISSERR (True when absent and no STAT_ERR column is present).
    file_keywords : mapping
        Raw header values of BACKFILE / RESPFILE / ANCRFILE, as written in the file.
    """

    path: str | None
    channel: np.ndarray
    counts: np.ndarray
    exposure: float
    backscal: float | np.ndarray = 1.0
    areascal: float | np.ndarray = 1.0
    grouping: np.ndarray | None = None
    quality: np.ndarray | None = None
    backfile: str | None = None
    respfile: str | None = None
    ancrfile: str | None = None
    background_hdu: int | None = None
    telescope: str | None = None
    instrument: str | None = None
    hduclas2: str | None = None
    is_rate: bool = False
    hdu_index: int | None = None
    row: int | None = None
    poisserr: bool = True
    file_keywords: Mapping[str, str | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        where = _label(self.path)
        set_ = object.__setattr__
        chan = np.asarray(self.channel)
        counts = np.array(self.counts, dtype=np.float64)
        if chan.ndim != 1 or counts.ndim != 1 or chan.shape != counts.shape:
            raise BkgjaxIOError(f"{where}: CHANNEL and COUNTS must be 1-D arrays of equal length "
                                f"(got {chan.shape} and {counts.shape})")
        chan = _as_int_array(chan, chan.shape[0], where, "CHANNEL")
        if chan.size > 1 and np.any(np.diff(chan) <= 0):
            raise BkgjaxIOError(f"{where}: CHANNEL must be strictly increasing")
        if not np.all(np.isfinite(counts)):
            raise BkgjaxIOError(f"{where}: COUNTS holds NaN/inf values")
        if np.any(counts < 0):
            raise BkgjaxIOError(f"{where}: COUNTS holds negative values")
        n = chan.shape[0]
        set_(self, "channel", chan)
        set_(self, "counts", readonly(counts))
        set_(self, "exposure", _as_exposure(self.exposure, where))
        set_(self, "backscal", _as_positive_scale(self.backscal, n, where, "BACKSCAL"))
        set_(self, "areascal", _as_positive_scale(self.areascal, n, where, "AREASCAL"))
        if self.grouping is not None:
            g = _as_int_array(self.grouping, n, where, "GROUPING")
            _check_grouping(g, where)
            set_(self, "grouping", g)
        if self.quality is not None:
            set_(self, "quality", _as_int_array(self.quality, n, where, "QUALITY"))
        set_(self, "file_keywords", MappingProxyType(dict(self.file_keywords)))

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return int(self.channel.shape[0])


@dataclass(frozen=True, eq=False)
class ARF:
    """Ancillary response (effective area), OGIP CAL/GEN/92-002 ``SPECRESP`` extension.

    Attributes
    ----------
    path : str or None
    energ_lo, energ_hi : ndarray of float64
        Energy bin edges in keV.
    specresp : ndarray of float64
        Effective area in cm^2 (>= 0).
    """

    path: str | None
    energ_lo: np.ndarray
    energ_hi: np.ndarray
    specresp: np.ndarray

    def __post_init__(self) -> None:
        where = _label(self.path, "SPECRESP")
        lo = np.array(self.energ_lo, dtype=np.float64)
        hi = np.array(self.energ_hi, dtype=np.float64)
        sr = np.array(self.specresp, dtype=np.float64)
        check_energy_bounds(lo, hi, where)
        if sr.shape != lo.shape:
            raise BkgjaxIOError(f"{where}: SPECRESP has shape {sr.shape}, energy grid {lo.shape}")
        if not np.all(np.isfinite(sr)):
            raise BkgjaxIOError(f"{where}: column SPECRESP holds NaN/inf values")
        if np.any(sr < 0):
            raise BkgjaxIOError(f"{where}: column SPECRESP holds negative effective areas")
        object.__setattr__(self, "energ_lo", readonly(lo))
        object.__setattr__(self, "energ_hi", readonly(hi))
        object.__setattr__(self, "specresp", readonly(sr))

    @property
    def n_energy(self) -> int:
        """Number of energy bins."""
        return int(self.energ_lo.shape[0])


@dataclass(frozen=True, eq=False)
class RMF:
    """Redistribution matrix (OGIP CAL/GEN/92-002) stored as COO triplets.

    Element ``values[k]`` is the probability (or, for HDUCLAS3='FULL' RSP files,
    probability x area in cm^2) that a photon in energy bin ``rows[k]`` is detected in
    channel index ``cols[k]`` (channel number ``cols[k] + first_channel``).

    Attributes
    ----------
    path : str or None
    energ_lo, energ_hi : ndarray (n_energy,)
        Photon energy bins, keV.
    channel : ndarray of int64 (n_chan,)
        EBOUNDS CHANNEL.
    e_min, e_max : ndarray (n_chan,)
        EBOUNDS nominal channel energy bounds, keV.
    first_channel : int
        Channel number of index 0 (TLMIN of F_CHAN).
    rows, cols : ndarray of int64
        Energy-bin index and 0-based channel index of every stored element.
    values : ndarray of float64
    hduclas3 : str or None
        'REDIST', 'FULL', 'DETECTOR', ... from the MATRIX extension.
    """

    path: str | None
    energ_lo: np.ndarray
    energ_hi: np.ndarray
    channel: np.ndarray
    e_min: np.ndarray
    e_max: np.ndarray
    first_channel: int
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    hduclas3: str | None = None

    def __post_init__(self) -> None:
        where = _label(self.path)
        set_ = object.__setattr__
        lo = np.array(self.energ_lo, dtype=np.float64)
        hi = np.array(self.energ_hi, dtype=np.float64)
        check_energy_bounds(lo, hi, _label(self.path, "MATRIX"))
        ch = np.asarray(self.channel)
        ch = _as_int_array(ch, ch.shape[0] if ch.ndim == 1 else -1, _label(self.path, "EBOUNDS"), "CHANNEL")
        emin = np.array(self.e_min, dtype=np.float64)
        emax = np.array(self.e_max, dtype=np.float64)
        if emin.shape != ch.shape or emax.shape != ch.shape:
            raise BkgjaxIOError(f"{_label(self.path, 'EBOUNDS')}: CHANNEL, E_MIN, E_MAX lengths differ "
                                f"({ch.shape}, {emin.shape}, {emax.shape})")
        rows = np.array(self.rows, dtype=np.int64)
        cols = np.array(self.cols, dtype=np.int64)
        vals = np.array(self.values, dtype=np.float64)
        if not (rows.shape == cols.shape == vals.shape) or rows.ndim != 1:
            raise BkgjaxIOError(f"{where}: rows/cols/values must be 1-D arrays of equal length")
        if rows.size:
            if rows.min() < 0 or rows.max() >= lo.size:
                raise BkgjaxIOError(f"{where}: energy-row index outside [0, {lo.size})")
            if cols.min() < 0 or cols.max() >= ch.size:
                raise BkgjaxIOError(f"{where}: channel index outside [0, {ch.size})")
        if not np.all(np.isfinite(vals)):
            raise BkgjaxIOError(f"{_label(self.path, 'MATRIX')}: column MATRIX holds NaN/inf values")
        set_(self, "energ_lo", readonly(lo))
        set_(self, "energ_hi", readonly(hi))
        set_(self, "channel", ch)
        set_(self, "e_min", readonly(emin))
        set_(self, "e_max", readonly(emax))
        set_(self, "first_channel", int(self.first_channel))
        set_(self, "rows", readonly(rows))
        set_(self, "cols", readonly(cols))
        set_(self, "values", readonly(vals))
        set_(self, "hduclas3", _as_str(self.hduclas3))

    @property
    def n_energy(self) -> int:
        """Number of photon energy bins (rows of the matrix)."""
        return int(self.energ_lo.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of detector channels (EBOUNDS rows, columns of the matrix)."""
        return int(self.channel.shape[0])

    @property
    def is_full(self) -> bool:
        """True for an RSP file (HDUCLAS3='FULL': ARF already folded in)."""
        return (self.hduclas3 or "").upper() == "FULL"

    def dense(self) -> np.ndarray:
        """Dense ``(n_energy, n_channels)`` float64 matrix (a new array on every call)."""
        n_e, n_c = self.n_energy, self.n_channels
        flat = np.bincount(self.rows * n_c + self.cols, weights=self.values, minlength=n_e * n_c)
        return flat.reshape(n_e, n_c)


@dataclass(frozen=True, eq=False)
class SpectrumFiles:
    """A source spectrum with its background, response and effective area.

    Attributes
    ----------
    source : PHA
    background : PHA or None
    rmf : RMF
    arf : ARF or None
    """

    source: PHA
    background: PHA | None
    rmf: RMF
    arf: ARF | None


# ---------------------------------------------------------------------------
# PHA
# ---------------------------------------------------------------------------


def _select_spectrum_hdu(hdul: fits.HDUList, hdu: Any, fname: str) -> int:
    if hdu is not None:
        try:
            idx = hdul.index_of(hdu)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise BkgjaxIOError(f"{fname}: no HDU {hdu!r} (file has {len(hdul)} HDUs)") from exc
        if not isinstance(hdul[idx], fits.BinTableHDU):
            raise BkgjaxIOError(f"{hdu_label(fname, hdul, idx)}: not a binary table, cannot hold a spectrum")
        return idx
    for i, h in enumerate(hdul):
        if not isinstance(h, fits.BinTableHDU):
            continue
        c1 = str(h.header.get("HDUCLAS1", "")).strip().upper()
        ext = str(h.header.get("EXTNAME", "")).strip().upper()
        if c1 == "SPECTRUM" or ext == "SPECTRUM":
            return i
    raise BkgjaxIOError(
        f"{fname}: no binary-table HDU with HDUCLAS1='SPECTRUM' or EXTNAME='SPECTRUM' "
        f"(HDUs: {[h.name for h in hdul]}); pass hdu=..."
    )


def _find_bkg_hdu(hdul: fits.HDUList, exclude: int) -> int | None:
    found = None
    for i, h in enumerate(hdul):
        if i == exclude or not isinstance(h, fits.BinTableHDU):
            continue
        if str(h.header.get("HDUCLAS2", "")).strip().upper() == "BKG":
            c1 = str(h.header.get("HDUCLAS1", "")).strip().upper()
            if c1 == "SPECTRUM":
                return i
            if found is None:
                found = i
    return found


def read_pha(path, *, hdu=None, row=None, spec_num=None) -> PHA:
    """Read one spectrum from an OGIP PHA file (OGIP/92-007, type I or type II).

    Parameters
    ----------
    path : str or os.PathLike
        PHA file (``.gz`` accepted; if ``path`` does not exist, ``path + '.gz'`` is tried).
    hdu : int or str, optional
        HDU index or EXTNAME; default: first binary table with HDUCLAS1='SPECTRUM'
        (or EXTNAME 'SPECTRUM').
    row : int, optional
        0-based row of a type II file (required there, rejected for type I).
    spec_num : int, optional
        Alternative to ``row`` for type II files with a SPEC_NUM column.

    Returns
    -------
    PHA
        Counts in counts per channel, EXPOSURE in s. For type II files, columns such
        as EXPOSURE, BACKSCAL, BACKFILE override the header keywords.

    Notes
    -----
    BACKFILE / RESPFILE / ANCRFILE are resolved relative to the PHA's directory,
    trying the name as written, with '.gz' added or stripped, after dropping an
    extension spec such as ``[2]`` or ``{3}``. Names not found are kept as the
    unresolved absolute path (no error here; :func:`load_spectrum` raises
    :class:`MissingFileError` when it needs the file).

    Raises
    ------
    BkgjaxIOError
        Missing CHANNEL / COUNTS-or-RATE columns, NaN/inf/negative counts,
        non-integer counts with POISSERR=T, missing or non-positive EXPOSURE,
        non-positive BACKSCAL/AREASCAL, CHANNEL not strictly increasing, ...
    MissingFileError
        ``path`` does not exist.
    """
    return _read_pha(path, hdu=hdu, row=row, spec_num=spec_num, strict_row=True)


def _read_pha(path, *, hdu, row, spec_num, strict_row: bool) -> PHA:
    fname = resolve_input_path(path)
    with open_fits(fname) as hdul:
        idx = _select_spectrum_hdu(hdul, hdu, fname)
        ext = hdul[idx]
        where = hdu_label(fname, hdul, idx)
        hdr, prim = ext.header, hdul[0].header
        cols = column_names(ext)
        data = ext.data
        nrows = 0 if data is None else len(data)

        if "CHANNEL" not in cols:
            raise BkgjaxIOError(f"{where}: required column CHANNEL is missing (columns: {list(cols.values())})")
        if "COUNTS" in cols:
            dcol, is_rate = "COUNTS", False
        elif "RATE" in cols:
            dcol, is_rate = "RATE", True
        else:
            raise BkgjaxIOError(
                f"{where}: neither a COUNTS nor a RATE column is present (columns: {list(cols.values())})"
            )
        raw = data[cols[dcol]] if data is not None else np.zeros(0)
        is_vla = getattr(raw, "dtype", None) == object
        hduclas4 = str(hdr.get("HDUCLAS4", "")).strip().upper()
        type2 = bool(is_vla or np.ndim(raw) >= 2 or hduclas4 == "TYPE:II")

        # ---- row selection -------------------------------------------------
        r: int | None = None
        if type2:
            if np.ndim(raw) < 2 and not is_vla:
                raise BkgjaxIOError(
                    f"{where}: HDUCLAS4='TYPE:II' but column {dcol} holds one value per row; "
                    "cannot interpret it as a type II spectrum file"
                )
            hint = " or spec_num=... (SPEC_NUM column)" if "SPEC_NUM" in cols else ""
            if row is None and spec_num is None:
                raise BkgjaxIOError(
                    f"{where}: type II PHA file holding {nrows} spectra (rows); "
                    f"select one with row=0..{nrows - 1}{hint}"
                )
            if row is not None and spec_num is not None:
                raise BkgjaxIOError(f"{where}: pass either row= or spec_num=, not both")
            if spec_num is not None:
                if "SPEC_NUM" not in cols:
                    raise BkgjaxIOError(f"{where}: spec_num={spec_num!r} given but there is no SPEC_NUM column")
                hits = np.flatnonzero(np.asarray(data[cols["SPEC_NUM"]]) == spec_num)
                if hits.size == 0:
                    raise BkgjaxIOError(f"{where}: no row with SPEC_NUM == {spec_num!r}")
                r = int(hits[0])
            else:
                try:
                    r = operator.index(row)
                except TypeError as exc:
                    raise BkgjaxIOError(f"{where}: row must be an integer, got {row!r}") from exc
                if not 0 <= r < nrows:
                    raise BkgjaxIOError(f"{where}: row={r} out of range; the type II file has {nrows} rows")
        elif strict_row and (row is not None or spec_num is not None):
            raise BkgjaxIOError(
                f"{where}: type I PHA file (a single spectrum); row=/spec_num= only apply to type II files"
            )

        def kw(name: str, default: Any = _MISSING) -> tuple[Any, str]:
            """Value from a per-row column (type II), else extension, else primary header."""
            if type2 and name in cols:
                return data[cols[name]][r], f"column {name} (row {r})"
            if name in hdr:
                return hdr[name], f"keyword {name}"
            if name in prim:
                return prim[name], f"keyword {name} (primary header)"
            return default, f"keyword {name}"

        def chan_col(name: str) -> Any:
            if name not in cols:
                return _MISSING
            v = data[cols[name]]
            return np.asarray(v[r]) if type2 else np.asarray(v)

        # ---- channels --------------------------------------------------------
        chan = chan_col("CHANNEL")
        if chan.ndim != 1:
            raise BkgjaxIOError(f"{where}: column CHANNEL must give one channel per element (shape {chan.shape})")
        chan = _as_int_array(chan, chan.shape[0], where + " column", "CHANNEL")
        n = chan.shape[0]
        if n > 1 and np.any(np.diff(chan) <= 0):
            i = int(np.flatnonzero(np.diff(chan) <= 0)[0])
            raise BkgjaxIOError(
                f"{where}: column CHANNEL is not strictly increasing "
                f"(CHANNEL[{i}]={chan[i]}, CHANNEL[{i + 1}]={chan[i + 1]})"
            )

        # ---- exposure --------------------------------------------------------
        exp_v, exp_src = kw("EXPOSURE")
        if exp_v is _MISSING or exp_v is None:
            raise BkgjaxIOError(f"{where}: EXPOSURE keyword is missing (needed to turn counts into rates)")
        exposure = _as_exposure(exp_v, f"{where}: {exp_src}")

        # ---- POISSERR --------------------------------------------------------
        pe_v, pe_src = kw("POISSERR")
        poisserr = ("STAT_ERR" not in cols) if pe_v is _MISSING else _as_bool(pe_v, f"{where}: {pe_src}")

        # ---- counts ----------------------------------------------------------
        dat = np.asarray(chan_col(dcol), dtype=np.float64)
        if dat.shape != (n,):
            raise BkgjaxIOError(f"{where}: column {dcol} has shape {dat.shape}, CHANNEL has ({n},)")
        if not np.all(np.isfinite(dat)):
            k = int(np.count_nonzero(~np.isfinite(dat)))
            raise BkgjaxIOError(f"{where}: column {dcol} holds {k} NaN/inf value(s)")
        if np.any(dat < 0):
            i = int(np.flatnonzero(dat < 0)[0])
            raise BkgjaxIOError(
                f"{where}: column {dcol} holds negative values (first at CHANNEL {chan[i]}: {float(dat[i])!r})"
            )
        if is_rate:
            counts = dat * exposure
            if poisserr:
                # RATE * EXPOSURE of a Poisson spectrum should be integral: remove rounding noise.
                rc = np.round(counts)
                if np.allclose(counts, rc, rtol=1e-6, atol=1e-6):
                    counts = rc
        else:
            counts = dat
            if poisserr and not np.all(counts == np.round(counts)):
                i = int(np.flatnonzero(counts != np.round(counts))[0])
                raise BkgjaxIOError(
                    f"{where}: column COUNTS holds non-integer values (first at CHANNEL {chan[i]}: "
                    f"{float(counts[i])!r}) while POISSERR is true"
                )

        # ---- BACKSCAL / AREASCAL ---------------------------------------------
        scales = {}
        for name in ("BACKSCAL", "AREASCAL"):
            v = chan_col(name)
            src = f"column {name}"
            if v is _MISSING:
                v, src = kw(name, 1.0)
            elif v.ndim == 0:
                v = float(v)
            scales[name] = _as_positive_scale(v, n, f"{where}: {src}", name)

        # ---- GROUPING / QUALITY ----------------------------------------------
        grouping = None
        g = chan_col("GROUPING")
        if g is not _MISSING and g.ndim == 1:
            grouping = _as_int_array(g, n, f"{where}: column", "GROUPING")
            _check_grouping(grouping, f"{where}: column GROUPING")
        quality = None
        q = chan_col("QUALITY")
        if q is not _MISSING and q.ndim == 1:
            quality = _as_int_array(q, n, f"{where}: column", "QUALITY")
        else:
            qv, qsrc = kw("QUALITY", 0) if q is _MISSING else (q, "column QUALITY")
            try:
                qi = int(qv)
            except (TypeError, ValueError) as exc:
                raise BkgjaxIOError(f"{where}: {qsrc} is not an integer ({qv!r})") from exc
            if qi != 0:
                quality = readonly(np.full(n, qi, dtype=np.int64))

        # ---- file references ---------------------------------------------------
        raw_files: dict[str, str | None] = {}
        resolved: dict[str, str | None] = {}
        for name in _FILE_KEYWORDS:
            v, _ = kw(name, None)
            raw_files[name] = None if v is None else _as_str(v)
            resolved[name], _ = _resolve_aux_file(fname, v)

        background_hdu = None
        bf = resolved["BACKFILE"]
        if bf is not None and os.path.isfile(bf) and _same_file(bf, fname):
            background_hdu = _find_bkg_hdu(hdul, exclude=idx)
            if background_hdu is None:
                raise BkgjaxIOError(
                    f"{where}: keyword BACKFILE names this same file ({raw_files['BACKFILE']!r}) "
                    "but it has no other HDU with HDUCLAS2='BKG'"
                )

        return PHA(
            path=fname,
            channel=chan,
            counts=counts,
            exposure=exposure,
            backscal=scales["BACKSCAL"],
            areascal=scales["AREASCAL"],
            grouping=grouping,
            quality=quality,
            backfile=resolved["BACKFILE"],
            respfile=resolved["RESPFILE"],
            ancrfile=resolved["ANCRFILE"],
            background_hdu=background_hdu,
            telescope=_as_name(kw("TELESCOP", None)[0]),
            instrument=_as_name(kw("INSTRUME", None)[0]),
            hduclas2=_as_str(hdr.get("HDUCLAS2")),
            is_rate=is_rate,
            hdu_index=idx,
            row=r,
            poisserr=poisserr,
            file_keywords=raw_files,
        )


# ---------------------------------------------------------------------------
# ARF / RMF
# ---------------------------------------------------------------------------


def find_table(hdul: fits.HDUList, names: tuple[str, ...], hduclas2: tuple[str, ...]) -> int | None:
    for i, h in enumerate(hdul):
        if not isinstance(h, fits.BinTableHDU):
            continue
        ext = str(h.header.get("EXTNAME", "")).strip().upper()
        c2 = str(h.header.get("HDUCLAS2", "")).strip().upper()
        if ext in names or c2 in hduclas2:
            return i
    return None


def energy_columns(ext: fits.BinTableHDU, where: str) -> tuple[np.ndarray, np.ndarray]:
    cols = column_names(ext)
    out = []
    for name in ("ENERG_LO", "ENERG_HI"):
        if name not in cols:
            raise BkgjaxIOError(f"{where}: required column {name} is missing")
        a = np.asarray(ext.data[cols[name]], dtype=np.float64)
        if a.ndim != 1:
            raise BkgjaxIOError(f"{where}: column {name} must be scalar per row (shape {a.shape})")
        out.append(a * _energy_factor(ext, name))
    return out[0], out[1]


def read_arf(path) -> ARF:
    """Read an ancillary response file (OGIP CAL/GEN/92-002, extension SPECRESP).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ARF
        ENERG_LO/ENERG_HI in keV (eV/MeV columns converted from TUNIT), SPECRESP in cm^2.

    Raises
    ------
    BkgjaxIOError
        No SPECRESP extension, missing columns, ENERG_LO not strictly increasing,
        ENERG_HI <= ENERG_LO, NaN or negative SPECRESP.
    MissingFileError
        ``path`` does not exist.
    """
    fname, where, lo, hi, sr = read_specresp_table(path)
    check_energy_bounds(lo, hi, where)
    return ARF(path=fname, energ_lo=lo, energ_hi=hi, specresp=_check_finite(sr, where, "SPECRESP"))


def read_specresp_table(path):
    """(file name, HDU label, ENERG_LO, ENERG_HI keV, SPECRESP) of an ARF-like file, unchecked
    grid (shared by :func:`read_arf` and the transmission-curve reader)."""
    fname = resolve_input_path(path)
    with open_fits(fname) as hdul:
        idx = find_table(hdul, ("SPECRESP",), ("SPECRESP",))
        if idx is None:
            raise BkgjaxIOError(f"{fname}: no SPECRESP extension (EXTNAME or HDUCLAS2 'SPECRESP')")
        ext = hdul[idx]
        where = hdu_label(fname, hdul, idx)
        lo, hi = energy_columns(ext, where)
        cols = column_names(ext)
        if "SPECRESP" not in cols:
            raise BkgjaxIOError(f"{where}: required column SPECRESP is missing")
        values = np.asarray(ext.data[cols["SPECRESP"]], dtype=np.float64)
    return fname, where, lo, hi, values


def _check_finite(a: np.ndarray, where: str, name: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise BkgjaxIOError(f"{where}: column {name} holds {int(np.count_nonzero(~np.isfinite(a)))} NaN/inf value(s)")
    return a


def _flatten_per_row(col: Any, nrows: int, dtype, where: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a scalar / fixed-array / variable-length column: (flat values, length per row)."""
    arr = col
    if getattr(arr, "dtype", None) == object:
        pieces = [np.asarray(x, dtype=dtype).ravel() for x in arr]
        lens = np.fromiter((p.size for p in pieces), dtype=np.int64, count=nrows)
        flat = np.concatenate(pieces) if lens.sum() else np.zeros(0, dtype=dtype)
        return flat, lens
    a = np.asarray(arr, dtype=dtype)
    if a.ndim == 1:
        return a, np.ones(nrows, dtype=np.int64)
    if a.ndim >= 2 and a.shape[0] == nrows:
        a = a.reshape(nrows, -1)
        return a.ravel(), np.full(nrows, a.shape[1], dtype=np.int64)
    raise BkgjaxIOError(f"{where}: column {name} has unexpected shape {a.shape}")


def read_rmf(path) -> RMF:
    """Read a redistribution matrix (or full RSP) file, OGIP CAL/GEN/92-002.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    RMF
        COO representation of the MATRIX extension plus EBOUNDS (energies in keV).
        ``first_channel`` is TLMIN of the F_CHAN column; when that keyword is absent,
        the first EBOUNDS CHANNEL (or 1 without a CHANNEL column).

    Notes
    -----
    The matrix extension is the first binary table with EXTNAME 'MATRIX' or
    'SPECRESP MATRIX' or HDUCLAS2 'RSP_MATRIX'. N_GRP/F_CHAN/N_CHAN/MATRIX may be
    scalar, fixed-length or variable-length columns. For row ``i`` and group ``g``
    the channels ``F_CHAN[g] .. F_CHAN[g] + N_CHAN[g] - 1`` take consecutive values
    of the row's MATRIX. Zero elements are kept.

    Raises
    ------
    BkgjaxIOError
        Missing MATRIX/EBOUNDS extensions or columns, invalid energy grid, NaN in
        MATRIX, groups addressing channels outside EBOUNDS, too few MATRIX values.
    MissingFileError
        ``path`` does not exist.
    """
    fname = resolve_input_path(path)
    with open_fits(fname) as hdul:
        mi = find_table(hdul, ("MATRIX", "SPECRESP MATRIX"), ("RSP_MATRIX",))
        if mi is None:
            raise BkgjaxIOError(
                f"{fname}: no response matrix extension (EXTNAME 'MATRIX'/'SPECRESP MATRIX' "
                "or HDUCLAS2 'RSP_MATRIX')"
            )
        ei = find_table(hdul, ("EBOUNDS",), ("EBOUNDS",))
        if ei is None:
            raise BkgjaxIOError(f"{fname}: no EBOUNDS extension (EXTNAME or HDUCLAS2 'EBOUNDS')")
        mext, eext = hdul[mi], hdul[ei]
        mwhere, ewhere = hdu_label(fname, hdul, mi), hdu_label(fname, hdul, ei)

        # ---- EBOUNDS ---------------------------------------------------------
        ecols = column_names(eext)
        for name in ("E_MIN", "E_MAX"):
            if name not in ecols:
                raise BkgjaxIOError(f"{ewhere}: required column {name} is missing")
        e_min = _check_finite(np.asarray(eext.data[ecols["E_MIN"]], dtype=np.float64), ewhere, "E_MIN")
        e_max = _check_finite(np.asarray(eext.data[ecols["E_MAX"]], dtype=np.float64), ewhere, "E_MAX")
        e_min = e_min * _energy_factor(eext, "E_MIN")
        e_max = e_max * _energy_factor(eext, "E_MAX")
        n_chan = e_min.shape[0]
        if n_chan == 0:
            raise BkgjaxIOError(f"{ewhere}: EBOUNDS has no rows")
        if np.any(e_max < e_min):
            i = int(np.flatnonzero(e_max < e_min)[0])
            raise BkgjaxIOError(f"{ewhere}: E_MAX < E_MIN in row {i} ({float(e_max[i])!r} < {float(e_min[i])!r} keV)")
        if np.any(np.diff(e_min) < 0):
            i = int(np.flatnonzero(np.diff(e_min) < 0)[0])
            raise BkgjaxIOError(f"{ewhere}: column E_MIN is not monotonically increasing (row {i} -> {i + 1})")

        # ---- MATRIX ------------------------------------------------------------
        mcols = column_names(mext)
        names = [n.upper() for n in mext.columns.names]
        for name in ("F_CHAN", "N_CHAN", "MATRIX"):
            if name not in mcols:
                raise BkgjaxIOError(f"{mwhere}: required column {name} is missing")
        tl_key = f"TLMIN{names.index('F_CHAN') + 1}"
        if tl_key in mext.header:
            first_channel = int(mext.header[tl_key])
        elif "CHANNEL" in ecols and n_chan:
            first_channel = int(np.asarray(eext.data[ecols["CHANNEL"]])[0])
        else:
            first_channel = 1
        if "CHANNEL" in ecols:
            channel = np.asarray(eext.data[ecols["CHANNEL"]])
            if channel.ndim != 1 or channel.shape[0] != n_chan:
                raise BkgjaxIOError(f"{ewhere}: column CHANNEL has shape {channel.shape}")
            channel = _as_int_array(channel, n_chan, ewhere + " column", "CHANNEL")
            if n_chan > 1 and np.any(np.diff(channel) <= 0):
                raise BkgjaxIOError(f"{ewhere}: column CHANNEL is not strictly increasing")
            if channel[0] != first_channel:
                warnings.warn(
                    f"{fname}: {tl_key} of F_CHAN says the first channel is {first_channel} but EBOUNDS "
                    f"starts at CHANNEL {channel[0]}; using {first_channel} for the matrix",
                    stacklevel=2,
                )
        else:
            channel = np.arange(first_channel, first_channel + n_chan, dtype=np.int64)

        energ_lo, energ_hi = energy_columns(mext, mwhere)
        check_energy_bounds(energ_lo, energ_hi, mwhere)
        n_e = energ_lo.shape[0]
        data = mext.data

        fch, fch_len = _flatten_per_row(data[mcols["F_CHAN"]], n_e, np.int64, mwhere, "F_CHAN")
        nch, nch_len = _flatten_per_row(data[mcols["N_CHAN"]], n_e, np.int64, mwhere, "N_CHAN")
        mat, mat_len = _flatten_per_row(data[mcols["MATRIX"]], n_e, np.float64, mwhere, "MATRIX")
        if "N_GRP" in mcols:
            n_grp = np.asarray(data[mcols["N_GRP"]], dtype=np.int64)
            if n_grp.ndim != 1:
                raise BkgjaxIOError(f"{mwhere}: column N_GRP must be scalar per row")
        else:
            n_grp = np.minimum(fch_len, nch_len)
        if np.any(n_grp < 0):
            raise BkgjaxIOError(f"{mwhere}: column N_GRP holds negative values")
        for name, lens in (("F_CHAN", fch_len), ("N_CHAN", nch_len)):
            bad = n_grp > lens
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise BkgjaxIOError(f"{mwhere}: row {i} has N_GRP={n_grp[i]} but only {lens[i]} {name} entries")

        # groups: (row, first channel, number of channels)
        n_groups = int(n_grp.sum())
        g_row = np.repeat(np.arange(n_e, dtype=np.int64), n_grp)
        g_k = np.arange(n_groups, dtype=np.int64) - np.repeat(np.cumsum(n_grp) - n_grp, n_grp)
        fch_off = np.cumsum(fch_len) - fch_len
        nch_off = np.cumsum(nch_len) - nch_len
        g_f = fch[fch_off[g_row] + g_k]
        g_n = nch[nch_off[g_row] + g_k]
        if np.any(g_n < 0):
            raise BkgjaxIOError(f"{mwhere}: column N_CHAN holds negative values")

        # elements
        row_tot = np.bincount(g_row, weights=g_n, minlength=n_e).astype(np.int64)
        bad = row_tot > mat_len
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise BkgjaxIOError(
                f"{mwhere}: row {i} needs {row_tot[i]} MATRIX values (sum of N_CHAN) but stores {mat_len[i]}"
            )
        n_el = int(g_n.sum())
        g_start = np.cumsum(g_n) - g_n  # global element offset of each group
        row_start = np.cumsum(row_tot) - row_tot
        g_in_row = g_start - row_start[g_row]  # offset of the group within its row
        e_grp = np.repeat(np.arange(n_groups, dtype=np.int64), g_n)
        e_k = np.arange(n_el, dtype=np.int64) - g_start[e_grp]
        mat_off = np.cumsum(mat_len) - mat_len
        rows = g_row[e_grp]
        values = mat[mat_off[rows] + g_in_row[e_grp] + e_k]
        cols = g_f[e_grp] + e_k - first_channel

        if not np.all(np.isfinite(values)):
            i = int(rows[np.flatnonzero(~np.isfinite(values))[0]])
            raise BkgjaxIOError(f"{mwhere}: column MATRIX holds NaN/inf values (first in row {i})")
        if n_el and (cols.min() < 0 or cols.max() >= n_chan):
            j = int(np.flatnonzero((cols < 0) | (cols >= n_chan))[0])
            raise BkgjaxIOError(
                f"{mwhere}: F_CHAN/N_CHAN of row {int(rows[j])} address channel {int(cols[j] + first_channel)}, "
                f"outside the {n_chan} EBOUNDS channels {first_channel}..{first_channel + n_chan - 1} "
                f"(first channel from {tl_key if tl_key in mext.header else 'EBOUNDS/default'})"
            )

        return RMF(
            path=fname,
            energ_lo=energ_lo,
            energ_hi=energ_hi,
            channel=channel,
            e_min=e_min,
            e_max=e_max,
            first_channel=first_channel,
            rows=rows,
            cols=cols,
            values=values,
            hduclas3=_as_str(mext.header.get("HDUCLAS3")),
        )


# ---------------------------------------------------------------------------
# load_spectrum
# ---------------------------------------------------------------------------


def check_compatible(source: PHA, rmf: RMF, arf: ARF | None = None, background: PHA | None = None) -> None:
    """Check that a spectrum, its response, ARF and background fit together.

    Raises
    ------
    BkgjaxIOError
        ARF energy grid differs from the RMF's (length, or ``np.allclose(rtol=1e-6)``
        on ENERG_LO and ENERG_HI); the PHA channel count differs from the RMF EBOUNDS
        channel count; the background channel count differs from the source's.
    """
    src = _label(source.path)
    if source.n_channels != rmf.n_channels:
        raise BkgjaxIOError(
            f"PHA {src} has {source.n_channels} channels but RMF {_label(rmf.path)} has "
            f"{rmf.n_channels} EBOUNDS channels"
        )
    if not np.array_equal(source.channel, rmf.channel):
        warnings.warn(
            f"PHA {src} channels {source.channel[0]}..{source.channel[-1]} differ from RMF "
            f"{_label(rmf.path)} EBOUNDS channels {rmf.channel[0]}..{rmf.channel[-1]}; matching them by position",
            stacklevel=2,
        )
    if arf is not None:
        detail = None
        if arf.n_energy != rmf.n_energy:
            detail = f"{arf.n_energy} ARF bins vs {rmf.n_energy} RMF bins"
        elif not (np.allclose(arf.energ_lo, rmf.energ_lo, rtol=1e-6)
                  and np.allclose(arf.energ_hi, rmf.energ_hi, rtol=1e-6)):
            d = np.max(np.abs(np.concatenate([arf.energ_lo - rmf.energ_lo, arf.energ_hi - rmf.energ_hi])))
            detail = f"ENERG_LO/ENERG_HI differ by up to {d:.6g} keV"
        if detail:
            raise BkgjaxIOError(
                f"ARF {_label(arf.path)} energy grid does not match RMF {_label(rmf.path)}: {detail}"
            )
    if background is not None and background.n_channels != source.n_channels:
        raise BkgjaxIOError(
            f"background {_label(background.path)} has {background.n_channels} channels but source "
            f"{src} has {source.n_channels}"
        )


def _missing_aux(source: PHA, keyword: str, path: str, hint: str) -> MissingFileError:
    value = source.file_keywords.get(keyword) or os.path.basename(path)
    tried = path_candidates(path)
    return MissingFileError(
        f"{source.path}: header keyword {keyword} names '{value}', which was not found at "
        f"{tried}; {hint}"
    )


def load_spectrum(pha_path, *, rmf=None, arf=None, background="auto", row=None,
                  spec_num=None, hdu=None) -> SpectrumFiles:
    """Load a PHA spectrum with its background, RMF and ARF (OGIP/92-007, CAL/GEN/92-002).

    Parameters
    ----------
    pha_path : str, os.PathLike or PHA
        Source spectrum file (or an already loaded :class:`PHA`).
    rmf : None, path or RMF
        None: the PHA's RESPFILE. A path is read with :func:`read_rmf`.
    arf : None, False, path or ARF
        None: the PHA's ANCRFILE (no ARF if it is 'none'); False: explicitly no ARF.
    background : 'auto', None, False, path or PHA
        'auto' (or True): the PHA's BACKFILE (the HDUCLAS2='BKG' HDU when it names the
        same file); None/False: no background.
    row, spec_num : int, optional
        Type II row selection (also applied to a type II background file).
    hdu : int or str, optional
        Spectrum HDU in the source file.

    Returns
    -------
    SpectrumFiles

    Raises
    ------
    MissingFileError
        A file named in RESPFILE / ANCRFILE / BACKFILE does not exist.
    BkgjaxIOError
        No response available, or the pieces do not fit (see :func:`check_compatible`).
    """
    if isinstance(pha_path, PHA):
        source = pha_path
    else:
        source = read_pha(pha_path, hdu=hdu, row=row, spec_num=spec_num)
    src = _label(source.path)

    # ---- response ------------------------------------------------------------
    if isinstance(rmf, RMF):
        the_rmf = rmf
    elif rmf is None:
        if source.respfile is None:
            raise BkgjaxIOError(
                f"{src}: header keyword RESPFILE is {source.file_keywords.get('RESPFILE')!r}: "
                "no response; pass rmf=... to load_spectrum"
            )
        if not os.path.isfile(source.respfile):
            raise _missing_aux(source, "RESPFILE", source.respfile, "pass rmf=... to load_spectrum")
        the_rmf = read_rmf(source.respfile)
    else:
        the_rmf = read_rmf(rmf)

    # ---- ARF -----------------------------------------------------------------
    if arf is False:
        the_arf = None
    elif isinstance(arf, ARF):
        the_arf = arf
    elif arf is None:
        if source.ancrfile is None:
            the_arf = None
        elif not os.path.isfile(source.ancrfile):
            raise _missing_aux(source, "ANCRFILE", source.ancrfile,
                               "pass arf=... (or arf=False for none) to load_spectrum")
        else:
            the_arf = read_arf(source.ancrfile)
    else:
        the_arf = read_arf(arf)

    # ---- background ----------------------------------------------------------
    if background is None or background is False:
        bkg = None
    elif isinstance(background, PHA):
        bkg = background
    elif background is True or (isinstance(background, str) and background == "auto"):
        if source.backfile is None:
            bkg = None
        elif source.background_hdu is not None:
            bkg = _read_pha(source.backfile, hdu=source.background_hdu, row=source.row,
                            spec_num=None, strict_row=False)
        elif not os.path.isfile(source.backfile):
            raise _missing_aux(source, "BACKFILE", source.backfile,
                               "pass background=... (or background=None) to load_spectrum")
        else:
            bkg = _read_pha(source.backfile, hdu=None, row=source.row, spec_num=None, strict_row=False)
    else:
        bkg = read_pha(background)

    check_compatible(source, the_rmf, the_arf, bkg)
    return SpectrumFiles(source=source, background=bkg, rmf=the_rmf, arf=the_arf)


# ---------------------------------------------------------------------------
# helpers for channel selection and grouping
# ---------------------------------------------------------------------------


def channel_overlap_mask(e_min, e_max, lo: float, hi: float) -> np.ndarray:
    """Channels whose nominal energy range overlaps ``[lo, hi]`` (keV).

    Follows the Sherpa/XSPEC ``notice`` convention: a channel is used when
    ``e_max > lo`` and ``e_min < hi``; a channel that only touches the interval
    at a boundary point is excluded.

    Parameters
    ----------
    e_min, e_max : array_like
        EBOUNDS E_MIN / E_MAX per channel, keV.
    lo, hi : float
        Energy interval in keV, ``lo < hi``.

    Returns
    -------
    ndarray of bool
    """
    lo_f, hi_f = float(lo), float(hi)
    if not (np.isfinite(lo_f) and np.isfinite(hi_f)) or not lo_f < hi_f:
        raise BkgjaxIOError(f"channel_overlap_mask: need finite lo < hi, got lo={lo!r}, hi={hi!r} keV")
    e_min = np.asarray(e_min, dtype=np.float64)
    e_max = np.asarray(e_max, dtype=np.float64)
    if e_min.shape != e_max.shape:
        raise BkgjaxIOError(f"channel_overlap_mask: e_min {e_min.shape} and e_max {e_max.shape} differ in shape")
    return (e_max > lo_f) & (e_min < hi_f)


def group_index(grouping, n_channels: int) -> np.ndarray:
    """Map each channel to its group index ``0 .. n_groups - 1`` (OGIP/92-007 GROUPING).

    Parameters
    ----------
    grouping : array_like of int or None
        +1 starts a group, -1 continues the current one, 0 is treated like +1.
        None means no grouping (every channel its own group).
    n_channels : int

    Returns
    -------
    ndarray of int64, shape (n_channels,)
    """
    n = operator.index(n_channels)
    if grouping is None:
        return np.arange(n, dtype=np.int64)
    g = _as_int_array(np.asarray(grouping), n, "group_index", "GROUPING")
    _check_grouping(g, "group_index")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = g != -1
    starts[0] = True
    return np.cumsum(starts).astype(np.int64) - 1


# ---------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------


def _aux_value(v: Any, out_dir: str) -> str:
    """Header value for BACKFILE/RESPFILE/ANCRFILE written next to a PHA in ``out_dir``."""
    if _is_none_value(v):
        return "none"
    s = os.fspath(v)
    if os.path.exists(s):
        a = os.path.abspath(s)
        rel = os.path.relpath(a, out_dir)
        return rel if not rel.startswith("..") else a
    return s


def _primary(creator: str = "bkgjax") -> fits.PrimaryHDU:
    p = fits.PrimaryHDU()
    p.header["CREATOR"] = (creator, "software that wrote this file")
    return p


def _common_keys(h: fits.Header, telescope, instrument) -> None:
    h["TELESCOP"] = (telescope or "UNKNOWN", "mission/satellite name")
    h["INSTRUME"] = (instrument or "UNKNOWN", "instrument/detector name")
    h["FILTER"] = ("none", "filter in use")


def _write(hdul: fits.HDUList, path, overwrite: bool) -> str:
    out = os.path.abspath(os.fspath(path))
    hdul.writeto(out, overwrite=overwrite, checksum=True)  # OSError (e.g. file exists) propagates
    return out


def write_pha(path, counts, exposure, *, channel=None, backscal=1.0, areascal=1.0, backfile=None,
              respfile=None, ancrfile=None, telescope=None, instrument=None, first_channel=1,
              overwrite=False) -> str:
    """Write an OGIP type I PHA count spectrum (OGIP/92-007), readable by XSPEC and Sherpa.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (a ``.gz`` name writes a gzip-compressed file).
    counts : array_like
        Non-negative integer counts per channel.
    exposure : float
        Exposure time in seconds (> 0).
    channel : array_like of int, optional
        Channel numbers; default ``first_channel + arange(n)``.
    backscal, areascal : float or array_like
        Keyword (scalar) or per-channel column (array).
    backfile, respfile, ancrfile : str, optional
        Written as given, except that existing files are written relative to the PHA
        directory (absolute if outside it); None -> 'none'.
    telescope, instrument : str, optional
        TELESCOP / INSTRUME (default 'UNKNOWN').
    first_channel : int
        First channel number when ``channel`` is not given (1 for most missions, 0 for NuSTAR).
    overwrite : bool

    Returns
    -------
    str
        Absolute path of the written file.
    """
    out = os.path.abspath(os.fspath(path))
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise BkgjaxIOError(f"{out}: counts must be a non-empty 1-D array (shape {c.shape})")
    cf = np.asarray(c, dtype=np.float64)
    if not np.all(np.isfinite(cf)) or np.any(cf < 0) or not np.all(cf == np.round(cf)):
        raise BkgjaxIOError(f"{out}: COUNTS must be finite non-negative integers for a Poisson (POISSERR=T) spectrum")
    n = c.shape[0]
    if channel is None:
        chan = np.arange(first_channel, first_channel + n, dtype=np.int64)
    else:
        chan = np.asarray(channel)
    # validates everything (channel monotonic, exposure, scales)
    pha = PHA(path=out, channel=chan, counts=cf, exposure=exposure, backscal=backscal, areascal=areascal)
    ci = np.asarray(np.round(cf), dtype=np.int64)
    cfmt = "J" if ci.max(initial=0) < 2**31 else "K"
    columns = [
        fits.Column(name="CHANNEL", format="J", array=pha.channel.astype(np.int32)),
        fits.Column(name="COUNTS", format=cfmt, unit="count", array=ci.astype(np.int32 if cfmt == "J" else np.int64)),
    ]
    for name, v in (("BACKSCAL", pha.backscal), ("AREASCAL", pha.areascal)):
        if isinstance(v, np.ndarray):
            columns.append(fits.Column(name=name, format="D", array=np.asarray(v)))
    ext = fits.BinTableHDU.from_columns(columns)
    h = ext.header
    h["EXTNAME"] = ("SPECTRUM", "name of this binary table extension")
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("SPECTRUM", "PHA dataset (OGIP memo OGIP-92-007)")
    h["HDUCLAS2"] = ("TOTAL", "gross PHA spectrum (source + background)")
    h["HDUCLAS3"] = ("COUNT", "PHA data stored as counts (not count/s)")
    h["HDUCLAS4"] = ("TYPE:I", "single PHA dataset")
    h["HDUVERS"] = ("1.2.1", "version of format")
    _common_keys(h, telescope, instrument)
    h["EXPOSURE"] = (pha.exposure, "exposure time (s)")
    for name in ("AREASCAL", "BACKSCAL"):
        v = getattr(pha, name.lower())
        if not isinstance(v, np.ndarray):
            h[name] = (v, f"{name.lower()} scaling factor")
    h["CORRSCAL"] = (1.0, "correction scaling factor")
    h["BACKFILE"] = (_aux_value(backfile, os.path.dirname(out)), "associated background filename")
    h["CORRFILE"] = ("none", "associated correction filename")
    h["RESPFILE"] = (_aux_value(respfile, os.path.dirname(out)), "associated redistribution matrix filename")
    h["ANCRFILE"] = (_aux_value(ancrfile, os.path.dirname(out)), "associated ancillary response filename")
    h["CHANTYPE"] = ("PI", "channel type (PHA or PI)")
    h["DETCHANS"] = (n, "total number of detector channels")
    h["POISSERR"] = (True, "Poissonian errors to be assumed")
    h["STAT_ERR"] = (0, "no statistical error specified")
    h["SYS_ERR"] = (0, "no systematic error specified")
    h["GROUPING"] = (0, "no grouping of the data has been defined")
    h["QUALITY"] = (0, "no data quality information specified")
    h["TLMIN1"] = (int(pha.channel[0]) if channel is not None else int(first_channel), "lowest legal channel number")
    h["TLMAX1"] = (int(pha.channel[-1]), "highest legal channel number")
    return _write(fits.HDUList([_primary(), ext]), out, overwrite)


def write_arf(path, energ_lo, energ_hi, specresp, *, telescope=None, instrument=None, overwrite=False) -> str:
    """Write an OGIP ARF (CAL/GEN/92-002 SPECRESP extension).

    Parameters
    ----------
    path : str or os.PathLike
    energ_lo, energ_hi : array_like
        Energy bin edges in keV (strictly increasing, positive widths).
    specresp : array_like
        Effective area in cm^2 (>= 0).
    telescope, instrument : str, optional
    overwrite : bool

    Returns
    -------
    str
        Absolute path of the written file. Values are stored as 32-bit floats.
    """
    out = os.path.abspath(os.fspath(path))
    arf = ARF(path=out, energ_lo=energ_lo, energ_hi=energ_hi, specresp=specresp)
    ext = fits.BinTableHDU.from_columns([
        fits.Column(name="ENERG_LO", format="E", unit="keV", array=arf.energ_lo),
        fits.Column(name="ENERG_HI", format="E", unit="keV", array=arf.energ_hi),
        fits.Column(name="SPECRESP", format="E", unit="cm**2", array=arf.specresp),
    ])
    h = ext.header
    h["EXTNAME"] = ("SPECRESP", "name of this binary table extension")
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("SPECRESP", "effective area (CAL/GEN/92-002)")
    h["HDUVERS"] = ("1.1.0", "version of format")
    _common_keys(h, telescope, instrument)
    return _write(fits.HDUList([_primary(), ext]), out, overwrite)


def _vla(pieces: list[np.ndarray], dtype) -> np.ndarray:
    arr = np.empty(len(pieces), dtype=object)
    for i, p in enumerate(pieces):
        arr[i] = np.asarray(p, dtype=dtype)
    return arr


def write_rmf(path, energ_lo, energ_hi, matrix_dense, e_min, e_max, first_channel=1, *,
              telescope=None, instrument=None, overwrite=False) -> str:
    """Write an OGIP RMF (CAL/GEN/92-002): compressed MATRIX plus EBOUNDS.

    Each matrix row is stored as groups of consecutive non-zero channels
    (N_GRP, variable-length F_CHAN / N_CHAN / MATRIX columns).

    Parameters
    ----------
    path : str or os.PathLike
    energ_lo, energ_hi : array_like (n_energy,)
        Photon energy bins in keV.
    matrix_dense : array_like (n_energy, n_chan)
        Redistribution probabilities (or probability x cm^2 for an RSP; HDUCLAS3 is
        'FULL' when a row sums to more than 1, 'REDIST' otherwise).
    e_min, e_max : array_like (n_chan,)
        Nominal channel energy bounds in keV (EBOUNDS).
    first_channel : int
        Channel number of the first column (TLMIN of F_CHAN and of EBOUNDS CHANNEL).
    telescope, instrument : str, optional
    overwrite : bool

    Returns
    -------
    str
        Absolute path of the written file. Values are stored as 32-bit floats.
    """
    out = os.path.abspath(os.fspath(path))
    m = np.asarray(matrix_dense, dtype=np.float64)
    lo = np.asarray(energ_lo, dtype=np.float64)
    hi = np.asarray(energ_hi, dtype=np.float64)
    emin = np.asarray(e_min, dtype=np.float64)
    emax = np.asarray(e_max, dtype=np.float64)
    check_energy_bounds(lo, hi, f"{out} (MATRIX)")
    if m.ndim != 2 or m.shape[0] != lo.size:
        raise BkgjaxIOError(f"{out}: matrix shape {m.shape} does not match {lo.size} energy bins")
    n_e, n_c = m.shape
    if emin.shape != (n_c,) or emax.shape != (n_c,):
        raise BkgjaxIOError(f"{out} (EBOUNDS): E_MIN/E_MAX must have {n_c} values")
    if not (np.all(np.isfinite(emin)) and np.all(np.isfinite(emax))) or np.any(emax < emin):
        raise BkgjaxIOError(f"{out} (EBOUNDS): E_MIN/E_MAX must be finite with E_MAX >= E_MIN")
    if not np.all(np.isfinite(m)):
        raise BkgjaxIOError(f"{out} (MATRIX): matrix holds NaN/inf values")
    m32 = m.astype(np.float32)
    first_channel = int(first_channel)
    n_grp = np.zeros(n_e, dtype=np.int32)
    f_chan, n_chan, mat = [], [], []
    for i in range(n_e):
        nz = np.flatnonzero(m32[i])
        if nz.size == 0:
            f_chan.append(np.zeros(0))
            n_chan.append(np.zeros(0))
            mat.append(np.zeros(0))
            continue
        br = np.flatnonzero(np.diff(nz) > 1)
        starts = np.r_[nz[0], nz[br + 1]]
        ends = np.r_[nz[br], nz[-1]]
        n_grp[i] = starts.size
        f_chan.append(starts + first_channel)
        n_chan.append(ends - starts + 1)
        mat.append(np.concatenate([m32[i, s:e + 1] for s, e in zip(starts, ends)]))
    mext = fits.BinTableHDU.from_columns([
        fits.Column(name="ENERG_LO", format="E", unit="keV", array=lo),
        fits.Column(name="ENERG_HI", format="E", unit="keV", array=hi),
        fits.Column(name="N_GRP", format="J", array=n_grp),
        fits.Column(name="F_CHAN", format="PJ()", array=_vla(f_chan, np.int32)),
        fits.Column(name="N_CHAN", format="PJ()", array=_vla(n_chan, np.int32)),
        fits.Column(name="MATRIX", format="PE()", array=_vla(mat, np.float32)),
    ])
    h = mext.header
    h["EXTNAME"] = ("MATRIX", "name of this binary table extension")
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("RSP_MATRIX", "dataset is a spectral response matrix")
    full = bool(np.any(m.sum(axis=1) > 1.0 + 1e-6))
    h["HDUCLAS3"] = ("FULL" if full else "REDIST", "ARF included" if full else "photon redistribution only")
    h["HDUVERS"] = ("1.3.0", "version of format (CAL/GEN/92-002a)")
    _common_keys(h, telescope, instrument)
    h["CHANTYPE"] = ("PI", "channel type")
    h["DETCHANS"] = (n_c, "total number of detector channels")
    h["LO_THRES"] = (0.0, "lower threshold of stored matrix values")
    h["NUMGRP"] = (int(n_grp.sum()), "total number of channel groups")
    h["NUMELT"] = (int(sum(x.size for x in mat)), "total number of response elements")
    h["TLMIN4"] = (first_channel, "first channel number (F_CHAN)")
    h["TLMAX4"] = (first_channel + n_c - 1, "last channel number (F_CHAN)")

    eext = fits.BinTableHDU.from_columns([
        fits.Column(name="CHANNEL", format="J", array=np.arange(first_channel, first_channel + n_c, dtype=np.int32)),
        fits.Column(name="E_MIN", format="E", unit="keV", array=emin),
        fits.Column(name="E_MAX", format="E", unit="keV", array=emax),
    ])
    h = eext.header
    h["EXTNAME"] = ("EBOUNDS", "name of this binary table extension")
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("RESPONSE", "dataset relates to spectral response")
    h["HDUCLAS2"] = ("EBOUNDS", "nominal energies of PHA channels")
    h["HDUVERS"] = ("1.2.0", "version of format")
    _common_keys(h, telescope, instrument)
    h["CHANTYPE"] = ("PI", "channel type")
    h["DETCHANS"] = (n_c, "total number of detector channels")
    h["TLMIN1"] = (first_channel, "first channel number")
    h["TLMAX1"] = (first_channel + n_c - 1, "last channel number")
    return _write(fits.HDUList([_primary(), mext, eext]), out, overwrite)
