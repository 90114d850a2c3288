"""NuSTAR cleaned event files (``*_cl.evt``): reader and writer.

A NuSTAR level-2 cleaned event file (NuSTARDAS ``nupipeline`` output) has an empty primary
HDU, an ``EVENTS`` binary table with one row per photon and a ``GTI`` table of good time
intervals.  The columns used by bkgjax are

========  ====  ============================================================
TIME      D     spacecraft clock time (s)
DET_ID    B     detector chip 0..3 of the focal plane module
RAWX      B     pixel column on the chip, 0..31
RAWY      B     pixel row on the chip, 0..31
PI        J     pulse-invariant channel, E = 1.6 keV + 0.04 keV * PI
GRADE     I     event grade (0..26 are the good single/multi-pixel grades)
========  ====  ============================================================

and the keywords ``INSTRUME`` (``FPMA``/``FPMB``) and ``EXPOSURE`` (live-time corrected
exposure, s).  See the NuSTAR Data Analysis Software Guide (HEASARC) for the format.

Only :mod:`bkgjax.io` reads FITS; everything returned here is plain NumPy (read-only arrays).
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from bkgjax.io.errors import BkgjaxIOError
from bkgjax.io.fits import (
    column_names,
    find_extension,
    hdu_label,
    header_keyword,
    open_fits,
    positive_seconds,
    readonly,
    resolve_input_path,
)

__all__ = ["EventList", "read_nustar_events", "write_nustar_events"]

_INSTRUMENTS = ("FPMA", "FPMB")
_HEADER_KEYS = ("TELESCOP", "OBS_ID", "DATE-OBS", "OBSMODE")
_REQUIRED = ("RAWX", "RAWY", "DET_ID", "PI")
# (column, lowest allowed, highest allowed or None)
_RANGES = (("DET_ID", 0, 3), ("RAWX", 0, 31), ("RAWY", 0, 31), ("PI", 0, None))


@dataclass(frozen=True, eq=False)
class EventList:
    """Photon events of one NuSTAR focal plane module.

    Attributes
    ----------
    path : str
        Absolute path of the file read.
    instrument : str
        ``"FPMA"`` or ``"FPMB"`` (keyword ``INSTRUME``).
    exposure : float
        Live exposure in s (keyword ``EXPOSURE``).
    det_id, rawx, rawy, pi : ndarray of int64
        Chip (0..3), RAW pixel column/row (0..31) and PI channel (>= 0) of every event.
    grade : ndarray of int64 or None
        Event grade (None when the file has no ``GRADE`` column).
    time : ndarray of float64 or None
        Event time in s (None when the file has no ``TIME`` column).
    gti : ndarray of float64, shape (n, 2), or None
        Good time intervals ``[START, STOP]`` in s (None when there is no ``GTI`` extension).
    obs_id : str
        Keyword ``OBS_ID`` ("" when absent).
    header : dict
        The keywords TELESCOP, OBS_ID, DATE-OBS, OBSMODE that are present (EVENTS header
        first, then the primary header).
    """

    path: str
    instrument: str
    exposure: float
    det_id: np.ndarray
    rawx: np.ndarray
    rawy: np.ndarray
    pi: np.ndarray
    grade: np.ndarray | None
    time: np.ndarray | None
    gti: np.ndarray | None
    obs_id: str
    header: dict

    @property
    def n_events(self) -> int:
        """Number of events."""
        return int(self.pi.shape[0])


# ---------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------



def _int_column(ext: fits.BinTableHDU, col: str, where: str) -> np.ndarray:
    a = np.asarray(ext.data[col])
    if a.ndim != 1:
        raise BkgjaxIOError(f"{where}: column {col} must hold one value per row (shape {a.shape})")
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if np.any(bad):
            raise BkgjaxIOError(f"{where}: column {col} holds {int(np.count_nonzero(bad))} non-integer or "
                                "NaN/inf value(s)")
        return a.astype(np.int64)
    if a.dtype.kind == "b":
        return a.astype(np.int64)
    raise BkgjaxIOError(f"{where}: column {col} has non-numeric type {a.dtype}")



def read_nustar_events(path, *, max_grade: int | None = 26) -> EventList:
    """Read a NuSTAR cleaned event file (``EVENTS`` + optional ``GTI`` extension).

    Parameters
    ----------
    path : str or os.PathLike
        Event file (``.evt``, ``.fits``; gzip-compressed files are read transparently).
    max_grade : int or None
        Keep events with ``GRADE <= max_grade`` (default 26, the NuSTAR good grades);
        ignored when the file has no GRADE column; None keeps every grade.

    Returns
    -------
    EventList

    Raises
    ------
    MissingFileError
        ``path`` does not exist.
    BkgjaxIOError
        No EVENTS extension; a required column (RAWX, RAWY, DET_ID, PI) missing; INSTRUME not
        FPMA/FPMB; EXPOSURE missing, non-finite or <= 0; DET_ID outside 0..3, RAWX/RAWY outside
        0..31 or PI < 0 in any row (the message gives the number of bad rows); malformed GTI.
    """
    fname = resolve_input_path(path)
    with warnings.catch_warnings():
        # real NuSTARDAS files carry TCRVLn strings on the sky X/Y columns, which astropy
        # reports as VerifyWarning; they concern columns bkgjax does not use.
        warnings.simplefilter("ignore", VerifyWarning)
        return _read_nustar_events(fname, max_grade)


def _read_nustar_events(fname: str, max_grade: int | None) -> EventList:
    with open_fits(fname) as hdul:
        idx = find_extension(hdul, "EVENTS")
        if idx is None:
            names = [str(h.header.get("EXTNAME", "")).strip() or f"HDU {i}" for i, h in enumerate(hdul)]
            raise BkgjaxIOError(f"{fname}: no EVENTS extension (EXTNAME or HDUCLAS1 'EVENTS'); HDUs: {names}")
        ext = hdul[idx]
        where = hdu_label(fname, hdul, idx)
        cols = column_names(ext)
        missing = [c for c in _REQUIRED if c not in cols]
        if missing:
            raise BkgjaxIOError(f"{where}: required column(s) {', '.join(missing)} missing "
                                f"(columns present: {', '.join(ext.columns.names)})")

        instrument = header_keyword(hdul, idx, "INSTRUME")
        inst = str(instrument).strip().upper() if instrument is not None else None
        if inst not in _INSTRUMENTS:
            raise BkgjaxIOError(f"{where}: keyword INSTRUME = {instrument!r} is not a NuSTAR focal plane "
                                f"module (expected one of {_INSTRUMENTS})")

        exp_raw = header_keyword(hdul, idx, "EXPOSURE")
        if exp_raw is None:
            raise BkgjaxIOError(f"{where}: keyword EXPOSURE is missing (neither in the EVENTS nor in the "
                                "primary header)")
        exposure = positive_seconds(exp_raw, f"{where}: keyword EXPOSURE")

        data = {c: _int_column(ext, cols[c], where) for c in _REQUIRED}
        for c, lo, hi in _RANGES:
            a = data[c]
            bad = a < lo if hi is None else (a < lo) | (a > hi)
            nbad = int(np.count_nonzero(bad))
            if nbad:
                rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                raise BkgjaxIOError(f"{where}: column {c} must be {rng}; {nbad} of {a.size} row(s) are not "
                                    f"(e.g. {int(a[bad][0])})")

        grade = _int_column(ext, cols["GRADE"], where) if "GRADE" in cols else None
        time = None
        if "TIME" in cols:
            time = np.asarray(ext.data[cols["TIME"]], dtype=np.float64)
            if time.ndim != 1:
                raise BkgjaxIOError(f"{where}: column TIME must hold one value per row (shape {time.shape})")

        gti = None
        gidx = find_extension(hdul, "GTI")
        if gidx is not None:
            gext = hdul[gidx]
            gwhere = hdu_label(fname, hdul, gidx)
            gcols = column_names(gext)
            gmiss = [c for c in ("START", "STOP") if c not in gcols]
            if gmiss:
                raise BkgjaxIOError(f"{gwhere}: required column(s) {', '.join(gmiss)} missing")
            start = np.asarray(gext.data[gcols["START"]], dtype=np.float64).reshape(-1)
            stop = np.asarray(gext.data[gcols["STOP"]], dtype=np.float64).reshape(-1)
            if not (np.all(np.isfinite(start)) and np.all(np.isfinite(stop))):
                raise BkgjaxIOError(f"{gwhere}: columns START/STOP hold NaN/inf values")
            if np.any(stop < start):
                raise BkgjaxIOError(f"{gwhere}: {int(np.count_nonzero(stop < start))} GTI(s) have STOP < START")
            gti = np.stack([start, stop], axis=1)

        header = {}
        for k in _HEADER_KEYS:
            v = header_keyword(hdul, idx, k)
            if v is not None:
                header[k] = v.strip() if isinstance(v, str) else v
        obs_id = str(header.get("OBS_ID", "")).strip()

    if grade is not None and max_grade is not None:
        keep = grade <= int(max_grade)
        data = {c: a[keep] for c, a in data.items()}
        grade = grade[keep]
        if time is not None:
            time = time[keep]

    ro = lambda a: None if a is None else readonly(np.ascontiguousarray(a))  # noqa: E731
    return EventList(path=fname, instrument=inst, exposure=exposure,
                     det_id=ro(data["DET_ID"]), rawx=ro(data["RAWX"]), rawy=ro(data["RAWY"]), pi=ro(data["PI"]),
                     grade=ro(grade), time=ro(time), gti=ro(gti), obs_id=obs_id, header=header)


# ---------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------


def _as_int_input(v: Any, name: str, n: int | None) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 1:
        raise BkgjaxIOError(f"<in-memory data>: {name} must be 1-D (got shape {a.shape})")
    if n is not None and a.shape[0] != n:
        raise BkgjaxIOError(f"<in-memory data>: {name} has {a.shape[0]} entries, expected {n}")
    if a.size and a.dtype.kind not in "iub":
        if a.dtype.kind != "f" or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise BkgjaxIOError(f"<in-memory data>: {name} must hold integers")
    return a.astype(np.int64)


def write_nustar_events(path, *, instrument, exposure, det_id, rawx, rawy, pi, grade=None, time=None,
                        gti=None, obs_id="", obsmode="SCIENCE", extra_header: Mapping[str, Any] | None = None,
                        overwrite=True) -> str:
    """Write a NuSTAR cleaned event file in the real (NuSTARDAS) format.

    Layout: empty primary HDU, ``EVENTS`` binary table (TIME 'D', DET_ID 'B', RAWX 'B',
    RAWY 'B', PI 'J', GRADE 'I') and ``GTI`` table (START, STOP 'D').  The keywords TELESCOP,
    INSTRUME, EXPOSURE, LIVETIME (= EXPOSURE), ONTIME (= summed GTI length), TSTART, TSTOP,
    OBS_ID, OBSMODE, DATE and CREATOR='bkgjax' go on both the primary and the EVENTS header;
    HDUCLAS1='EVENTS' on EVENTS and the ``extra_header`` items (value or (value, comment)) on
    EVENTS.

    Parameters
    ----------
    path : str or os.PathLike
    instrument : {"FPMA", "FPMB"}
    exposure : float
        Live exposure in s (> 0).
    det_id, rawx, rawy, pi : array_like of int
        One entry per event (DET_ID 0..3, RAWX/RAWY 0..31, PI 0..4095).
    grade : array_like of int, optional
        Defaults to 0 for every event.
    time : array_like of float, optional
        Event times in s.  Default: times drawn uniformly inside the GTIs (proportionally to
        their lengths, fixed seed 0 so files are reproducible), sorted.
    gti : array_like, shape (n, 2), optional
        Good time intervals [START, STOP] in s.  Default: one GTI ``[0, exposure]``.
    obs_id, obsmode : str
    extra_header : mapping, optional
    overwrite : bool

    Returns
    -------
    str
        Absolute path written.
    """
    inst = str(instrument).strip().upper()
    if inst not in _INSTRUMENTS:
        raise BkgjaxIOError(f"<in-memory data>: instrument {instrument!r} is not one of {_INSTRUMENTS}")
    exposure = positive_seconds(exposure, "<in-memory data>: exposure")

    det = _as_int_input(det_id, "det_id", None)
    n = det.shape[0]
    cols = {"DET_ID": det, "RAWX": _as_int_input(rawx, "rawx", n), "RAWY": _as_int_input(rawy, "rawy", n),
            "PI": _as_int_input(pi, "pi", n)}
    for c, lo, hi in (("DET_ID", 0, 3), ("RAWX", 0, 31), ("RAWY", 0, 31), ("PI", 0, 4095)):
        a = cols[c]
        bad = (a < lo) | (a > hi)
        if np.any(bad):
            raise BkgjaxIOError(f"<in-memory data>: {c.lower()} has {int(np.count_nonzero(bad))} value(s) "
                                f"outside {lo}..{hi}")
    grade_a = np.zeros(n, np.int64) if grade is None else _as_int_input(grade, "grade", n)

    if gti is None:
        gti_a = np.array([[0.0, exposure]])
    else:
        gti_a = np.asarray(gti, dtype=np.float64).reshape(-1, 2)
        if gti_a.shape[0] == 0 or not np.all(np.isfinite(gti_a)) or np.any(gti_a[:, 1] < gti_a[:, 0]):
            raise BkgjaxIOError("<in-memory data>: gti must be a non-empty finite [n, 2] array with STOP >= START")
    lengths = gti_a[:, 1] - gti_a[:, 0]
    ontime = float(lengths.sum())

    if time is None:
        rng = np.random.default_rng(0)
        if ontime > 0:
            which = rng.choice(len(gti_a), size=n, p=lengths / ontime)
        else:
            which = np.zeros(n, dtype=np.int64)
        time_a = np.sort(gti_a[which, 0] + rng.uniform(0.0, 1.0, n) * lengths[which])
    else:
        time_a = np.asarray(time, dtype=np.float64)
        if time_a.shape != (n,):
            raise BkgjaxIOError(f"<in-memory data>: time has shape {time_a.shape}, expected ({n},)")

    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    common = [
        ("TELESCOP", "NuSTAR", "mission name"),
        ("INSTRUME", inst, "focal plane module"),
        ("OBS_ID", str(obs_id), "observation ID"),
        ("OBSMODE", str(obsmode), "observation mode"),
        ("EXPOSURE", exposure, "[s] live exposure"),
        ("LIVETIME", exposure, "[s] live time"),
        ("ONTIME", ontime, "[s] sum of good time intervals"),
        ("TSTART", float(gti_a[:, 0].min()), "[s] start time"),
        ("TSTOP", float(gti_a[:, 1].max()), "[s] stop time"),
        ("TIMEUNIT", "s", "unit of time keywords"),
        ("DATE", date, "file creation date (UTC)"),
        ("CREATOR", "bkgjax", "software that wrote this file"),
    ]
    primary = fits.PrimaryHDU()
    for k, v, c in common:
        primary.header[k] = (v, c)

    columns = [
        fits.Column(name="TIME", format="D", unit="s", array=time_a),
        fits.Column(name="DET_ID", format="B", array=cols["DET_ID"].astype(np.uint8)),
        fits.Column(name="RAWX", format="B", unit="pixel", array=cols["RAWX"].astype(np.uint8)),
        fits.Column(name="RAWY", format="B", unit="pixel", array=cols["RAWY"].astype(np.uint8)),
        fits.Column(name="PI", format="J", unit="chan", array=cols["PI"].astype(np.int32)),
        fits.Column(name="GRADE", format="I", array=grade_a.astype(np.int16)),
    ]
    events = fits.BinTableHDU.from_columns(columns, name="EVENTS")
    h = events.header
    for i, (lo, hi) in enumerate([(None, None), (0, 3), (0, 31), (0, 31), (0, 4095), (None, None)], start=1):
        if lo is not None:
            h[f"TLMIN{i}"] = lo
            h[f"TLMAX{i}"] = hi
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("EVENTS", "extension contains events")
    for k, v, c in common:
        h[k] = (v, c)
    for k, v in (extra_header or {}).items():
        h[str(k)] = v

    gti_hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name="START", format="D", unit="s", array=gti_a[:, 0]),
         fits.Column(name="STOP", format="D", unit="s", array=gti_a[:, 1])], name="GTI")
    gti_hdu.header["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    gti_hdu.header["HDUCLAS1"] = ("GTI", "extension contains good time intervals")
    for k in ("TELESCOP", "INSTRUME", "TSTART", "TSTOP"):
        gti_hdu.header[k] = h[k]

    out = os.path.abspath(os.fspath(path))
    fits.HDUList([primary, events, gti_hdu]).writeto(out, overwrite=overwrite, checksum=True)
    return out
