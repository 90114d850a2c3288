"""OGIP response files: ARF (``SPECRESP``) and RMF (``MATRIX`` + ``EBOUNDS``), CAL/GEN/92-002 and
its addendum CAL/GEN/92-002a (George et al.).  Energies in keV, areas in cm^2.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BkgjaxIOError
from .fits import column_names, hdu_label, is_bintable, open_table_file, readonly, resolve_input_path
from .keywords import (
    as_int_array,
    as_str,
    check_finite,
    energy_factor,
    label,
)

if TYPE_CHECKING:
    from astropy.io import fits

__all__ = ["ARF", "RMF", "check_energy_bounds", "energy_columns", "find_table", "read_arf", "read_rmf", "read_specresp_table"]


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
        where = label(self.path, "SPECRESP")
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
        where = label(self.path)
        set_ = object.__setattr__
        lo = np.array(self.energ_lo, dtype=np.float64)
        hi = np.array(self.energ_hi, dtype=np.float64)
        check_energy_bounds(lo, hi, label(self.path, "MATRIX"))
        ch = np.asarray(self.channel)
        ch = as_int_array(ch, ch.shape[0] if ch.ndim == 1 else -1, label(self.path, "EBOUNDS"), "CHANNEL")
        emin = np.array(self.e_min, dtype=np.float64)
        emax = np.array(self.e_max, dtype=np.float64)
        if emin.shape != ch.shape or emax.shape != ch.shape:
            raise BkgjaxIOError(f"{label(self.path, 'EBOUNDS')}: CHANNEL, E_MIN, E_MAX lengths differ "
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
            raise BkgjaxIOError(f"{label(self.path, 'MATRIX')}: column MATRIX holds NaN/inf values")
        set_(self, "energ_lo", readonly(lo))
        set_(self, "energ_hi", readonly(hi))
        set_(self, "channel", ch)
        set_(self, "e_min", readonly(emin))
        set_(self, "e_max", readonly(emax))
        set_(self, "first_channel", int(self.first_channel))
        set_(self, "rows", readonly(rows))
        set_(self, "cols", readonly(cols))
        set_(self, "values", readonly(vals))
        set_(self, "hduclas3", as_str(self.hduclas3))

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

    def dense(self, columns=None) -> np.ndarray:
        """Dense ``(n_energy, n_channels)`` float64 matrix (a new array on every call).

        ``columns`` (0-based channel indices): only those columns, the same values as
        ``dense()[:, columns]`` without building the full matrix (a NuSTAR RMF is 4096 x 4096
        = 134 MB, of which a 3-20 keV fit needs a tenth)."""
        n_e, n_c = self.n_energy, self.n_channels
        if columns is None:
            flat = np.bincount(self.rows * n_c + self.cols, weights=self.values,
                               minlength=n_e * n_c)
            return flat.reshape(n_e, n_c)
        columns = np.asarray(columns, dtype=np.int64)
        position = np.full(n_c, -1, dtype=np.int64)
        position[columns] = np.arange(columns.size)
        keep = position[self.cols] >= 0
        out = np.bincount(self.rows[keep] * columns.size + position[self.cols[keep]],
                          weights=self.values[keep], minlength=n_e * columns.size)
        out = out.reshape(n_e, columns.size)
        if np.unique(columns).size != columns.size:  # repeated columns: copies of the first
            out = out[:, position[columns]]
        return out


def find_table(hdul: fits.HDUList, names: tuple[str, ...], hduclas2: tuple[str, ...]) -> int | None:
    for i, h in enumerate(hdul):
        if not is_bintable(h):
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
        out.append(a * energy_factor(ext, name))
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
    return ARF(path=fname, energ_lo=lo, energ_hi=hi, specresp=check_finite(sr, where, "SPECRESP"))


def read_specresp_table(path):
    """(file name, HDU label, ENERG_LO, ENERG_HI keV, SPECRESP) of an ARF-like file, unchecked
    grid (shared by :func:`read_arf` and the transmission-curve reader)."""
    fname = resolve_input_path(path)
    with open_table_file(fname) as hdul:
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



def _channel_tlmin(eext, ecols) -> int:
    """TLMIN of the EBOUNDS CHANNEL column, else 1 (the OGIP default first channel)."""
    names = [n.upper() for n in eext.columns.names]
    if "CHANNEL" in ecols:
        key = f"TLMIN{names.index('CHANNEL') + 1}"
        if key in eext.header:
            try:
                return int(eext.header[key])
            except (TypeError, ValueError):
                pass
    return 1


def _usable_channels(eext, ecols, n_chan: int, ewhere: str):
    """The EBOUNDS CHANNEL column as int64 when it holds integers increasing by row, else None
    (the caller falls back to row order, as XSPEC and Sherpa do)."""
    channel = np.asarray(eext.data[ecols["CHANNEL"]])
    if channel.ndim != 1 or channel.shape[0] != n_chan:
        raise BkgjaxIOError(f"{ewhere}: column CHANNEL has shape {channel.shape}")
    try:
        channel = as_int_array(channel, n_chan, ewhere + " column", "CHANNEL")
    except BkgjaxIOError:
        return None
    if n_chan > 1 and np.any(np.diff(channel) <= 0):
        return None
    return channel


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
    with open_table_file(fname) as hdul:
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
        e_min = check_finite(np.asarray(eext.data[ecols["E_MIN"]], dtype=np.float64), ewhere, "E_MIN")
        e_max = check_finite(np.asarray(eext.data[ecols["E_MAX"]], dtype=np.float64), ewhere, "E_MAX")
        e_min = e_min * energy_factor(eext, "E_MIN")
        e_max = e_max * energy_factor(eext, "E_MAX")
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
        channel = _usable_channels(eext, ecols, n_chan, ewhere) if "CHANNEL" in ecols else None
        if tl_key in mext.header:
            first_channel = int(mext.header[tl_key])
        elif channel is not None:
            first_channel = int(channel[0])
        else:
            first_channel = _channel_tlmin(eext, ecols)
        if "CHANNEL" in ecols and channel is None:
            # XSPEC and Sherpa read EBOUNDS by row order; so does bkgjax, saying so
            warnings.warn(
                f"{fname}: EBOUNDS column CHANNEL holds no usable channel numbers (not integers "
                f"increasing by row); channels are taken by row order from {first_channel} "
                f"({tl_key if tl_key in mext.header else 'TLMIN of CHANNEL, else 1'})",
                stacklevel=2,
            )
            channel = np.arange(first_channel, first_channel + n_chan, dtype=np.int64)
        elif channel is not None:
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
            hduclas3=as_str(mext.header.get("HDUCLAS3")),
        )
