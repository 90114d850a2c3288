"""Generic FITS helpers shared by every reader (OGIP spectra and the missions' files).

Paths are resolved with the ``.gz`` variant tried too, files are opened with a
:class:`~bkgjax.io.errors.BkgjaxIOError` naming the file on failure, and labels name the
file and HDU in every message.  Nothing here evaluates a model.

:func:`open_fits` opens a file with astropy; :func:`open_table_file` (the OGIP readers) reads
it with :mod:`bkgjax.io.fastfits` when it can and with astropy otherwise, so that reading a
spectrum does not import astropy (~0.3 s).  astropy is imported when it is needed.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from . import fastfits
from .errors import BkgjaxIOError, MissingFileError

if TYPE_CHECKING:
    from astropy.io import fits

__all__ = ["column_names", "find_extension", "hdu_label", "header_keyword", "is_bintable",
           "open_fits", "open_table_file", "path_candidates", "positive_seconds", "readonly",
           "resolve_input_path"]


def readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def hdu_label(fname: str, hdul: fits.HDUList, idx: int) -> str:
    name = str(hdul[idx].header.get("EXTNAME", "")).strip()
    return f"{fname} (HDU {idx}{' ' + repr(name) if name else ''})"


def path_candidates(p: str) -> list[str]:
    """The path itself, then the same with '.gz' added (or stripped)."""
    if p.lower().endswith(".gz"):
        return [p, p[:-3]]
    return [p, p + ".gz"]


def resolve_input_path(path: Any) -> str:
    """Absolute path of an existing file (trying the .gz / non-.gz variant)."""
    try:
        raw = os.fspath(path)
    except TypeError as exc:
        raise BkgjaxIOError(f"expected a file path, got {type(path).__name__}: {path!r}") from exc
    p = os.path.abspath(os.path.expanduser(raw))
    cands = path_candidates(p)
    for c in cands:
        if os.path.isfile(c):
            return c
    raise MissingFileError(f"{p}: file not found (tried {', '.join(cands)})")


def open_fits(fname: str) -> fits.HDUList:
    from astropy.io import fits

    try:
        return fits.open(fname, memmap=False)
    except Exception as exc:  # astropy raises OSError / ValueError / TypeError
        raise BkgjaxIOError(f"{fname}: cannot be read as a FITS file: {exc}") from exc


def open_table_file(fname: str):
    """The HDUs of ``fname`` read by :mod:`bkgjax.io.fastfits` (no astropy import), or by
    astropy (:func:`open_fits`) when the file uses a feature that reader leaves to astropy.
    Either is a context manager; tell binary tables with :func:`is_bintable`."""
    try:
        return fastfits.open_tables(fname)
    except (fastfits.Unsupported, OSError, ValueError, TypeError, IndexError, OverflowError):
        return open_fits(fname)  # astropy reads it, or says why not


def is_bintable(hdu) -> bool:
    """True for a binary-table HDU (astropy's ``BinTableHDU`` or a :mod:`fastfits` one)."""
    flag = getattr(hdu, "is_bintable", None)
    if flag is not None:
        return bool(flag)
    from astropy.io import fits

    return isinstance(hdu, fits.BinTableHDU)


def column_names(hdu: fits.BinTableHDU) -> dict[str, str]:
    return {n.upper(): n for n in hdu.columns.names}


def find_extension(hdul: fits.HDUList, name: str) -> int | None:
    for i, h in enumerate(hdul):
        if i == 0 or not is_bintable(h):
            continue
        ext = str(h.header.get("EXTNAME", "")).strip().upper()
        if ext == name:
            return i
    for i, h in enumerate(hdul):
        if i and is_bintable(h) and str(h.header.get("HDUCLAS1", "")).strip().upper() == name:
            return i
    return None


def header_keyword(hdul: fits.HDUList, idx: int, name: str) -> Any:
    """Keyword from extension ``idx``, falling back to the primary header (None if absent)."""
    for h in (hdul[idx].header, hdul[0].header):
        if name in h:
            return h[name]
    return None


def positive_seconds(value, what):
    """``float(value)`` if finite and > 0, else BkgjaxIOError naming ``what``."""
    try:
        seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise BkgjaxIOError(f"{what} = {value!r} is not a number") from exc
    if not (math.isfinite(seconds) and seconds > 0):
        raise BkgjaxIOError(f"{what} = {value!r} must be finite and > 0 s")
    return seconds
