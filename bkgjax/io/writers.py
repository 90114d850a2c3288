"""Writers of OGIP spectra and responses (PHA type I, ARF, RMF), readable by XSPEC and Sherpa."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from astropy.io import fits

from .errors import BkgjaxIOError
from .keywords import (
    common_keys,
    is_none_value,
    primary_hdu,
    write_hdulist,
)
from .ogip import PHA
from .response import ARF, check_energy_bounds

__all__ = ["write_arf", "write_pha", "write_rmf"]


def _aux_value(v: Any, out_dir: str) -> str:
    """Header value for BACKFILE/RESPFILE/ANCRFILE written next to a PHA in ``out_dir``."""
    if is_none_value(v):
        return "none"
    s = os.fspath(v)
    if os.path.exists(s):
        a = os.path.abspath(s)
        rel = os.path.relpath(a, out_dir)
        return rel if not rel.startswith("..") else a
    return s


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
    common_keys(h, telescope, instrument)
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
    return write_hdulist(fits.HDUList([primary_hdu(), ext]), out, overwrite)


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
    common_keys(h, telescope, instrument)
    return write_hdulist(fits.HDUList([primary_hdu(), ext]), out, overwrite)


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
    common_keys(h, telescope, instrument)
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
    common_keys(h, telescope, instrument)
    h["CHANTYPE"] = ("PI", "channel type")
    h["DETCHANS"] = (n_c, "total number of detector channels")
    h["TLMIN1"] = (first_channel, "first channel number")
    h["TLMAX1"] = (first_channel + n_c - 1, "last channel number")
    return write_hdulist(fits.HDUList([primary_hdu(), mext, eext]), out, overwrite)
