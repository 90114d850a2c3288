"""Reader for NuSTAR Earth-occulted (OCC) detector images stored as ``.npz``.

Format (``shared/data/nustar/occulted``, converted from the bwgref/nustar_background pickles):
one file per epoch and energy selection holding

* ``counts_A``, ``counts_B``: non-negative integer counts, shape ``(4, 32, 32)`` indexed
  ``[DET_ID, RAWY, RAWX]`` (FPMA, FPMB); zeros mark dead or bad pixels;
* ``exposure_s_A``, ``exposure_s_B``: scalar summed EXPOSURE (s) of the contributing
  observations.  It over-counts the occulted time, so only relative normalisations between
  pixels and chips are meaningful.

Problems are reported as :class:`~bkgjax.io.errors.BkgjaxIOError` naming the file and the key;
a missing file raises :class:`~bkgjax.io.errors.MissingFileError`.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from bkgjax.io.errors import BkgjaxIOError, MissingFileError

__all__ = ["read_occulted_images", "OCCULTED_IMAGE_SHAPE"]

OCCULTED_IMAGE_SHAPE = (4, 32, 32)
_COUNT_KEYS = ("counts_A", "counts_B")
_EXPOSURE_KEYS = ("exposure_s_A", "exposure_s_B")


def _counts(fname, key, a):
    where = f"{fname}: key {key!r}"
    if a.shape != OCCULTED_IMAGE_SHAPE:
        raise BkgjaxIOError(f"{where} has shape {a.shape}; expected {OCCULTED_IMAGE_SHAPE} "
                            "[DET_ID, RAWY, RAWX]")
    if a.dtype.kind in "iu":
        out = a.astype(np.int64)
    elif a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise BkgjaxIOError(f"{where} holds non-integer or non-finite values (dtype {a.dtype})")
        out = a.astype(np.int64)
    else:
        raise BkgjaxIOError(f"{where} has non-numeric dtype {a.dtype}; expected integer counts")
    if np.any(out < 0):
        raise BkgjaxIOError(f"{where} holds {int(np.count_nonzero(out < 0))} negative count(s)")
    return out


def _exposure(fname, key, a):
    where = f"{fname}: key {key!r}"
    if a.size != 1 or a.dtype.kind not in "iuf":
        raise BkgjaxIOError(f"{where} must be one number (got dtype {a.dtype}, shape {a.shape})")
    value = float(a.reshape(()))
    if not (np.isfinite(value) and value > 0):
        raise BkgjaxIOError(f"{where} = {value!r} must be finite and > 0 s")
    return value


def read_occulted_images(path) -> dict:
    """Read one OCC image file: ``dict(counts_A, counts_B, exposure_s_A, exposure_s_B)``.

    Counts are int64 arrays ``[4, 32, 32]`` (``[DET_ID, RAWY, RAWX]``; zeros = dead/bad pixels),
    exposures floats in s (relative only: they over-count the occulted time).

    Raises
    ------
    MissingFileError
        ``path`` does not exist.
    BkgjaxIOError
        Not a readable ``.npz``, a key missing, wrong shape, non-integer or negative counts,
        or a non-positive exposure; the message names the file and the key.
    """
    fname = os.fspath(path)
    if not os.path.isfile(fname):
        raise MissingFileError(f"{fname}: OCC image file not found")
    try:
        archive = np.load(fname, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BkgjaxIOError(f"{fname}: not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BkgjaxIOError(f"{fname}: not an .npz archive (a single .npy array)")
    with archive:
        missing = [k for k in _COUNT_KEYS + _EXPOSURE_KEYS if k not in archive.files]
        if missing:
            raise BkgjaxIOError(f"{fname}: key(s) {', '.join(map(repr, missing))} missing "
                                f"(present: {sorted(archive.files)})")
        out = {}
        for key in _COUNT_KEYS + _EXPOSURE_KEYS:
            try:
                a = np.asarray(archive[key])
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise BkgjaxIOError(f"{fname}: key {key!r} cannot be read ({exc})") from exc
            out[key] = _counts(fname, key, a) if key in _COUNT_KEYS else _exposure(fname, key, a)
    return out
