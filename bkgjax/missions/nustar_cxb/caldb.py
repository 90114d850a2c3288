"""Readers for the NuSTAR calibration files behind the aperture (stray-light) geometry.

* aperture image ``det{A,B}_det1.img.gz`` (nuskybgd ``auxil/``): open-sky solid angle per DET1
  sub-pixel, 576 x 576, padded by 108 sub-pixels around the 360 x 360 DET1 frame;
* instrument maps ``pixmap{A,B}.fits`` / ``detnum{A,B}.fits`` (CALDB ``INSTRMAP``): RAW pixel
  index RAWX + 32*RAWY, or DET_ID, for every DET1 sub-pixel (-1 in the gaps);
* CALDB ``DETABS`` (``nu{A,B}detabs*.fits``): detector dead-layer transmission per chip;
* ``be.arf``: Be-window / MLI transmission in the SPECRESP layout.

All readers return plain NumPy float64/int64 arrays (energies in keV) and raise
:class:`~bkgjax.io.errors.BkgjaxIOError` (or :class:`~bkgjax.io.errors.MissingFileError`)
with a message naming the file, HDU, column or keyword at fault.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from bkgjax.io.errors import BkgjaxIOError
from bkgjax.io.fits import column_names, hdu_label, open_fits, resolve_input_path
from bkgjax.io.response import check_energy_bounds, energy_columns, read_specresp_table

__all__ = ["read_aperture_image", "read_instrument_map", "read_detabs", "read_transmission_arf"]

APERTURE_IMAGE_SHAPE = (576, 576)
INSTRUMENT_MAP_SHAPE = (360, 360)


def read_aperture_image(path) -> np.ndarray:
    """Read the nuskybgd aperture image ``det{A,B}_det1.img[.gz]`` (primary HDU).

    Returns
    -------
    ndarray of float64, shape (576, 576)
        Image in the file's units (multiply by 3.1865e-5 for deg^2 per sub-pixel-equivalent);
        index ``[row = y, col = x]``.
    """
    fname = resolve_input_path(path)
    with open_fits(fname) as hdul:
        where = hdu_label(fname, hdul, 0)
        data = hdul[0].data
        if data is None:
            raise BkgjaxIOError(f"{where}: primary HDU holds no image")
        img = np.array(data, dtype=np.float64)
    if img.shape != APERTURE_IMAGE_SHAPE:
        raise BkgjaxIOError(f"{where}: image has shape {img.shape}, expected {APERTURE_IMAGE_SHAPE}")
    if not np.all(np.isfinite(img)):
        raise BkgjaxIOError(f"{where}: image holds {int(np.count_nonzero(~np.isfinite(img)))} NaN/inf value(s)")
    return img


def read_instrument_map(path) -> np.ndarray:
    """Read a CALDB NuSTAR instrument map (``pixmap*`` or ``detnum*``, extension ``INSTRMAP``).

    Returns
    -------
    ndarray of int64, shape (360, 360)
        ``map[DET1Y - 1, DET1X - 1]``: RAW pixel index RAWX + 32*RAWY (pixmap) or DET_ID
        (detnum); -1 in the gaps between chips.
    """
    fname = resolve_input_path(path)
    with open_fits(fname) as hdul:
        idx = next((i for i, h in enumerate(hdul)
                    if str(h.header.get("EXTNAME", "")).strip().upper() == "INSTRMAP"), None)
        if idx is None:
            raise BkgjaxIOError(f"{fname}: no INSTRMAP extension")
        where = hdu_label(fname, hdul, idx)
        data = hdul[idx].data
        if data is None:
            raise BkgjaxIOError(f"{where}: extension holds no image")
        a = np.array(data)
    if a.shape != INSTRUMENT_MAP_SHAPE:
        raise BkgjaxIOError(f"{where}: image has shape {a.shape}, expected {INSTRUMENT_MAP_SHAPE}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if np.any(bad):
            raise BkgjaxIOError(f"{where}: image holds {int(np.count_nonzero(bad))} non-integer value(s)")
    out = a.astype(np.int64)
    if np.any(out < -1):
        raise BkgjaxIOError(f"{where}: image holds values < -1 (min {int(out.min())})")
    return out


def read_detabs(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a CALDB NuSTAR detector absorption file (``nu{A,B}detabs*.fits``).

    The file has one ``DETABS`` extension per chip (keyword ``DETNAM = 'DETn'``; when absent
    the extension order gives DET_ID 0..3) with columns ENERG_LO, ENERG_HI (keV) and DETABS
    (unitless transmission of the CdZnTe dead layer / Pt contact).

    Returns
    -------
    energy_lo, energy_hi : ndarray of float64, shape (n,)
        Energy grid in keV (identical for all chips; checked).
    transmission : ndarray of float64, shape (4, n)
        ``transmission[DET_ID]``, values in [0, 1].
    """
    fname = resolve_input_path(path)
    with open_fits(fname) as hdul:
        exts = [i for i, h in enumerate(hdul)
                if isinstance(h, fits.BinTableHDU) and str(h.header.get("EXTNAME", "")).strip().upper() == "DETABS"]
        if len(exts) != 4:
            raise BkgjaxIOError(f"{fname}: expected 4 DETABS extensions (one per DET_ID), found {len(exts)}")
        curves: dict[int, np.ndarray] = {}
        grid = None
        for order, i in enumerate(exts):
            ext = hdul[i]
            where = hdu_label(fname, hdul, i)
            detnam = str(ext.header.get("DETNAM", "")).strip().upper()
            if detnam:
                if not (detnam.startswith("DET") and detnam[3:].isdigit() and int(detnam[3:]) in range(4)):
                    raise BkgjaxIOError(f"{where}: keyword DETNAM = {detnam!r} is not DET0..DET3")
                det = int(detnam[3:])
            else:
                det = order
            if det in curves:
                raise BkgjaxIOError(f"{where}: DET_ID {det} appears in more than one DETABS extension")
            lo, hi = energy_columns(ext, where)
            check_energy_bounds(lo, hi, where)
            cols = column_names(ext)
            if "DETABS" not in cols:
                raise BkgjaxIOError(f"{where}: required column DETABS is missing")
            t = np.asarray(ext.data[cols["DETABS"]], dtype=np.float64)
            if t.shape != lo.shape:
                raise BkgjaxIOError(f"{where}: column DETABS has shape {t.shape}, energy grid {lo.shape}")
            if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t > 1):
                raise BkgjaxIOError(f"{where}: column DETABS must be finite transmissions in [0, 1] "
                                    f"(min {float(np.nanmin(t))!r}, max {float(np.nanmax(t))!r})")
            if grid is None:
                grid = (lo, hi)
            elif lo.shape != grid[0].shape or not (np.allclose(lo, grid[0]) and np.allclose(hi, grid[1])):
                raise BkgjaxIOError(f"{where}: energy grid differs from that of the first DETABS extension")
            curves[det] = t
    return grid[0], grid[1], np.stack([curves[d] for d in range(4)])


def _rounded_to_sig(x: np.ndarray, ndigits: int) -> np.ndarray:
    """``x`` rounded to ``ndigits`` significant figures (like ``'%.{n}g' % x``)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        mag = np.floor(np.log10(np.abs(np.where(x == 0, 1.0, x))))
    scale = 10.0 ** (ndigits - 1 - mag)
    return np.round(x * scale) / scale


def _repair_regular_grid(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The regular grid whose 3-significant-figure rounding is (lo, hi), or None.

    Some NuSTAR auxiliary ARFs (nuskybgd's ``be.arf``) hold the SPECRESP values on the standard
    4096-bin grid 1.6 + 0.04 k keV but with ENERG_LO/ENERG_HI written to 3 significant figures,
    so that above 10 keV consecutive bins share the same edges.
    """
    n = lo.size
    if n < 2:
        return None
    # shortest decimal that reproduces the stored float32 edge: 1.60000002 -> 1.6, 1.64 -> 1.64
    lo0, hi0 = (float(str(np.float32(v))) for v in (lo[0], hi[0]))
    step = hi0 - lo0
    if not step > 0:
        return None
    k = np.arange(n, dtype=np.float64)
    glo = lo0 + step * k
    ghi = glo + step
    tol = 1e-5 * np.maximum(1.0, np.abs(glo))  # float32 storage
    if (np.all(np.abs(_rounded_to_sig(glo, 3) - lo) <= tol)
            and np.all(np.abs(_rounded_to_sig(ghi, 3) - hi) <= tol + 1e-5 * np.abs(ghi))):
        return glo, ghi
    return None


def read_transmission_arf(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a unitless transmission curve stored as an ARF (``SPECRESP``), e.g. nuskybgd ``be.arf``.

    A well-formed file is read like :func:`bkgjax.io.read_arf`.  The nuskybgd ``be.arf`` has
    its energy columns written to 3 significant figures (10.0, 10.0, 10.1, 10.1, ... keV above
    10 keV, so ENERG_LO is not increasing); when ENERG_LO/ENERG_HI are exactly the 3-figure
    rounding of a regular grid ``lo[0] + (hi[0]-lo[0]) * k`` (1.6 + 0.04 k keV for be.arf),
    that regular grid is returned instead.  Any other malformed grid raises.

    Returns
    -------
    energy_lo, energy_hi : ndarray of float64
        keV.
    values : ndarray of float64
        Transmission (the SPECRESP column, whatever its TUNIT), finite and >= 0.
    """
    fname, where, lo, hi, v = read_specresp_table(path)
    if v.shape != lo.shape:
        raise BkgjaxIOError(f"{where}: column SPECRESP has shape {v.shape}, energy grid {lo.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise BkgjaxIOError(f"{where}: column SPECRESP must be finite and >= 0")
    try:
        check_energy_bounds(lo, hi, where)
    except BkgjaxIOError as exc:
        repaired = _repair_regular_grid(lo, hi)
        if repaired is None:
            raise BkgjaxIOError(f"{exc} (and ENERG_LO/ENERG_HI are not a regular grid rounded to 3 "
                                "significant figures)") from exc
        lo, hi = repaired
    return lo, hi, v
