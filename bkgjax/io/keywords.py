"""Header keyword conversions and HDU writing shared by the OGIP readers and writers.

Each converter names the file, HDU and keyword in its error (``where``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BkgjaxIOError
from .fits import readonly

if TYPE_CHECKING:
    from astropy.io import fits

__all__ = ["ENERGY_UNITS", "as_bool", "as_exposure", "as_int_array", "as_name", "as_positive_scale", "as_str", "check_finite", "check_grouping", "common_keys", "energy_factor", "is_none_value", "label", "primary_hdu", "write_hdulist"]


def label(path: str | None, what: str = "") -> str:
    base = path if path is not None else "<in-memory data>"
    return f"{base} ({what})" if what else base


def is_none_value(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("", "none"))


def as_bool(v: Any, where: str) -> bool:
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


def as_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    s = str(v).strip()
    return s or None


def as_name(v: Any) -> str | None:
    """TELESCOP/INSTRUME value: '', 'NONE', 'UNKNOWN' -> None."""
    s = as_str(v)
    if s is None or s.upper() in ("NONE", "UNKNOWN"):
        return None
    return s


def as_positive_scale(v: Any, n: int, where: str, name: str) -> float | np.ndarray:
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


def as_exposure(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise BkgjaxIOError(f"{where}: EXPOSURE is not numeric ({v!r})") from exc
    if not np.isfinite(x) or x <= 0:
        raise BkgjaxIOError(f"{where}: EXPOSURE = {x!r} s must be finite and > 0")
    return x


def as_int_array(v: Any, n: int, where: str, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != 1 or a.shape[0] != n:
        raise BkgjaxIOError(f"{where}: {name} has shape {a.shape}, expected ({n},)")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise BkgjaxIOError(f"{where}: {name} holds non-integer values")
    elif a.dtype.kind not in "iub":
        raise BkgjaxIOError(f"{where}: {name} is not an integer array (dtype {a.dtype})")
    return readonly(np.array(a, dtype=np.int64))


def check_grouping(g: np.ndarray, where: str) -> None:
    bad = ~np.isin(g, (-1, 0, 1))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise BkgjaxIOError(
            f"{where}: GROUPING values must be +1 (start group), -1 (continue) or 0; "
            f"found {int(g[i])} at index {i}"
        )


ENERGY_UNITS = {"kev": 1.0, "ev": 1e-3, "mev": 1e3}


def energy_factor(hdu: fits.BinTableHDU, colname: str) -> float:
    idx = [n.upper() for n in hdu.columns.names].index(colname.upper())
    unit = str(hdu.header.get(f"TUNIT{idx + 1}", "") or "").strip().lower()
    return ENERGY_UNITS.get(unit, 1.0)


def check_finite(a: np.ndarray, where: str, name: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise BkgjaxIOError(f"{where}: column {name} holds {int(np.count_nonzero(~np.isfinite(a)))} NaN/inf value(s)")
    return a


def primary_hdu(creator: str = "bkgjax") -> fits.PrimaryHDU:
    from astropy.io import fits  # the writers only: reading needs no astropy

    p = fits.PrimaryHDU()
    p.header["CREATOR"] = (creator, "software that wrote this file")
    return p


def common_keys(h: fits.Header, telescope, instrument) -> None:
    h["TELESCOP"] = (telescope or "UNKNOWN", "mission/satellite name")
    h["INSTRUME"] = (instrument or "UNKNOWN", "instrument/detector name")
    h["FILTER"] = ("none", "filter in use")


def write_hdulist(hdul: fits.HDUList, path, overwrite: bool) -> str:
    out = os.path.abspath(os.fspath(path))
    hdul.writeto(out, overwrite=overwrite, checksum=True)  # OSError (e.g. file exists) propagates
    return out
