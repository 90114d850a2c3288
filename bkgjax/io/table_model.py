r"""Reader for XSPEC table model files (OGIP/92-009, Arnaud 1995; XSPEC's ``atable``,
``mtable`` and ``etable``): parsing and validation only.

File layout (HDUCLAS1 ``'XSPEC TABLE MODEL'``)::

    PRIMARY     MODLNAME, MODLUNIT, ADDMODEL (T: atable), REDSHIFT (T: a z parameter),
                LOELIMIT/HIELIMIT (model value below/above the tabulated energies; optional),
                ESCALE, NXFLTEXP (not supported: a clear error)
    PARAMETERS  NINTPARM interpolated then NADDPARM additional parameters, one row each:
                NAME, METHOD (0 linear, 1 logarithmic), INITIAL, DELTA (< 0: frozen),
                MINIMUM, BOTTOM, TOP, MAXIMUM, NUMBVALS, VALUE (the tabulated values, increasing)
    ENERGIES    ENERG_LO, ENERG_HI: the contiguous energy bins of the spectra (keV)
    SPECTRA     one row per grid point, last parameter changing fastest:
                PARAMVAL (the grid point), INTPSPEC (the spectrum), ADDSP001.. (one per
                additional parameter: the spectrum added per unit of that parameter)

:func:`read_table_model` returns a :class:`TableModel` of NumPy arrays with the spectra on the
parameter grid (``spectra[i1, ..., iN, a, k]``); it evaluates nothing
(:mod:`bkgjax.spectral.table_model` interpolates and rebins).  Every problem is a
:class:`~bkgjax.io.errors.BkgjaxIOError` naming the file, the extension, and the column or
keyword concerned.

Like XSPEC (heasp ``table::getValues``), the rows of SPECTRA are taken in the order of the
grid (the first parameter changing slowest); PARAMVAL is checked against that order (to a
relative 1e-4, float32 files round the values differently in VALUE and PARAMVAL) so that a
file written in another order is an error rather than a silently scrambled model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .errors import BkgjaxIOError
from .fits import column_names, hdu_label, is_bintable, open_table_file, readonly, resolve_input_path
from .keywords import as_bool, as_str
from .response import check_energy_bounds

__all__ = ["TableModel", "TableParameter", "read_table_model"]

#: Energy units of ENERG_LO/ENERG_HI (TUNITn) -> keV.
_ENERGY_UNITS = {"": 1.0, "kev": 1.0, "ev": 1e-3, "mev": 1e3}
#: PARAMVAL must equal the grid point of its row to this relative tolerance.
_PARAMVAL_RTOL = 1e-4
_PARAMETER_COLUMNS = ("NAME", "METHOD", "INITIAL", "DELTA", "MINIMUM", "BOTTOM", "TOP", "MAXIMUM",
                      "NUMBVALS", "VALUE")
_CACHE: dict = {}  # (path, sha256) -> TableModel: the same content is parsed once per process
_CACHE_SIZE = 8


@dataclass(frozen=True, eq=False)
class TableParameter:
    """One row of the PARAMETERS extension.

    Attributes
    ----------
    name : str
        NAME as written (trailing blanks removed).
    method : int
        0: linear interpolation, 1: logarithmic (in the log of the parameter), -1: an
        additional parameter (not interpolated).
    initial, delta, minimum, bottom, top, maximum : float
        XSPEC's start value, fit step (negative: frozen), hard and soft limits.
    values : numpy.ndarray
        The NUMBVALS tabulated values (strictly increasing; empty for an additional parameter).
    """

    name: str
    method: int
    initial: float
    delta: float
    minimum: float
    bottom: float
    top: float
    maximum: float
    values: np.ndarray

    @property
    def interpolated(self) -> bool:
        return self.method >= 0

    @property
    def frozen(self) -> bool:
        return self.delta < 0


@dataclass(frozen=True, eq=False)
class TableModel:
    """The content of an XSPEC table model file (:func:`read_table_model`).

    Attributes
    ----------
    path : str
        Absolute path of the file read.
    sha256 : str
        Hex SHA-256 of the file's bytes: the identity of its content (the compiled-fit keys of
        :mod:`bkgjax.spectral.table_model` derive from it).
    model_name, model_unit : str
        MODLNAME, MODLUNIT ('' when absent).
    additive : bool or None
        ADDMODEL (True: an ``atable``, False: an ``mtable``/``etable``), None when absent.
    redshift : bool
        REDSHIFT: the model takes a redshift parameter.
    low_limit, high_limit : float or None
        LOELIMIT, HIELIMIT: the model value below / above the tabulated energies (None when
        absent: XSPEC then uses 0 for atable, 1 for mtable and etable).
    parameters : tuple of TableParameter
        The ``n_interpolated`` interpolated parameters, then the ``n_additional`` additional
        ones, in the file's order.
    energ_lo, energ_hi : numpy.ndarray
        Energy bins of the spectra, keV (contiguous, increasing).
    spectra : numpy.ndarray
        Shape ``(n_1, ..., n_N, 1 + n_additional, n_energies)``: at grid point
        ``(i_1..i_N)`` (``n_j`` values of interpolated parameter j), ``spectra[..., 0, :]`` is
        INTPSPEC and ``spectra[..., a, :]`` is ADDSP00a.  Stored precision (float32 for the
        usual ``E`` columns, float64 for ``D``) to keep large tables small.
    """

    path: str
    sha256: str
    model_name: str
    model_unit: str
    additive: bool | None
    redshift: bool
    low_limit: float | None
    high_limit: float | None
    parameters: tuple
    n_interpolated: int
    n_additional: int
    energ_lo: np.ndarray
    energ_hi: np.ndarray
    spectra: np.ndarray

    @property
    def interpolated(self) -> tuple:
        return self.parameters[:self.n_interpolated]

    @property
    def additional(self) -> tuple:
        return self.parameters[self.n_interpolated:]

    @property
    def grid_shape(self) -> tuple:
        return tuple(p.values.size for p in self.interpolated)

    @property
    def energy_edges(self) -> np.ndarray:
        """The ``n_energies + 1`` bin edges, keV."""
        return np.append(self.energ_lo, self.energ_hi[-1])


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table_model(path) -> TableModel:
    """Read and validate an XSPEC table model file (OGIP/92-009; module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The FITS file (``~`` expanded, relative to the working directory; ``.gz`` tried too).

    Returns
    -------
    TableModel
        The same object for the same file content within a process (the content is hashed at
        every call, the FITS parsed once).

    Raises
    ------
    MissingFileError
        No such file.
    BkgjaxIOError
        Naming the file and extension: not FITS, a missing extension, column or keyword
        (NINTPARM, NADDPARM), a bad METHOD, NUMBVALS or tabulated values (not strictly
        increasing, not positive for logarithmic interpolation), energy bins not increasing
        or not contiguous, a SPECTRA row count other than the product of the NUMBVALS, columns
        of the wrong width, PARAMVAL out of the grid's order, NaN/inf anywhere, or a feature
        not supported (ESCALE = T, NXFLTEXP > 1, energies in units other than keV/eV/MeV).
    """
    fname = resolve_input_path(path)
    digest = _file_digest(fname)
    cached = _CACHE.get((fname, digest))
    if cached is not None:
        return cached
    with open_table_file(fname) as hdul:
        table = _parse(fname, digest, hdul)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[(fname, digest)] = table
    return table


def _find(hdul, fname, extname, hduclas2):
    for key, wanted in (("EXTNAME", extname), ("HDUCLAS2", hduclas2)):
        for i, hdu in enumerate(hdul):
            if i and is_bintable(hdu) and str(hdu.header.get(key, "")).strip().upper() == wanted:
                return i
    raise BkgjaxIOError(f"{fname}: no {extname} extension (binary table with EXTNAME = "
                        f"'{extname}'): an XSPEC table model file has PARAMETERS, ENERGIES and "
                        "SPECTRA extensions (OGIP/92-009)")


def _column(hdu, cols, name, where):
    if name not in cols:
        raise BkgjaxIOError(f"{where}: missing column {name} (columns: "
                            f"{', '.join(cols.values())})")
    return hdu.data[cols[name]]


def _int_keyword(header, key, where):
    if key not in header:
        raise BkgjaxIOError(f"{where}: missing keyword {key}")
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise BkgjaxIOError(f"{where}: keyword {key} = {value!r} is not an integer >= 0")
    return int(value)


def _float_keyword(header, key, where):
    if key not in header:
        return None
    try:
        value = float(header[key])
    except (TypeError, ValueError):
        raise BkgjaxIOError(f"{where}: keyword {key} = {header[key]!r} is not a number") from None
    if not math.isfinite(value):
        raise BkgjaxIOError(f"{where}: keyword {key} = {value!r} is not finite")
    return value


def _rows(raw, n_rows, width, where, column):
    """A column as a float64 ``(n_rows, width)`` array (a scalar column when width == 1)."""
    try:
        a = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise BkgjaxIOError(f"{where}: column {column} is not numeric") from None
    if a.size != n_rows * width:
        got = a.shape[1] if a.ndim == 2 else (1 if a.ndim == 1 else a.shape[1:])
        raise BkgjaxIOError(f"{where}: column {column} holds {got} value(s) per row; expected "
                            f"{width}")
    a = a.reshape(n_rows, width)
    if not np.all(np.isfinite(a)):
        row = int(np.flatnonzero(~np.all(np.isfinite(a), axis=1))[0])
        raise BkgjaxIOError(f"{where}: column {column} holds NaN/inf (first in row {row + 1})")
    return a


def _parse(fname, digest, hdul):
    primary = hdul[0].header
    pwhere = hdu_label(fname, hdul, 0)
    for key in ("ESCALE",):
        if key in primary and as_bool(primary[key], f"{pwhere}: keyword {key}"):
            raise BkgjaxIOError(f"{pwhere}: keyword ESCALE = T (an energy-scale parameter) is not "
                                "supported")
    nxflt = primary.get("NXFLTEXP", 1)
    if not isinstance(nxflt, (int, np.integer)) or isinstance(nxflt, bool) or nxflt < 1:
        raise BkgjaxIOError(f"{pwhere}: keyword NXFLTEXP = {nxflt!r} is not an integer >= 1")
    if nxflt > 1:
        raise BkgjaxIOError(f"{pwhere}: keyword NXFLTEXP = {nxflt} (several spectra per grid "
                            "point, chosen by XFLT keywords of the data) is not supported")
    additive = (as_bool(primary["ADDMODEL"], f"{pwhere}: keyword ADDMODEL")
                if "ADDMODEL" in primary else None)
    redshift = (as_bool(primary["REDSHIFT"], f"{pwhere}: keyword REDSHIFT")
                if "REDSHIFT" in primary else False)
    low_limit = _float_keyword(primary, "LOELIMIT", pwhere)
    high_limit = _float_keyword(primary, "HIELIMIT", pwhere)

    # -- PARAMETERS -----------------------------------------------------------------------
    ip = _find(hdul, fname, "PARAMETERS", "PARAMETERS")
    where = hdu_label(fname, hdul, ip)
    hdu = hdul[ip]
    n_int = _int_keyword(hdu.header, "NINTPARM", where)
    n_add = _int_keyword(hdu.header, "NADDPARM", where)
    n_rows = len(hdu.data) if hdu.data is not None else 0
    if n_rows != n_int + n_add:
        raise BkgjaxIOError(f"{where}: {n_rows} parameter rows, but NINTPARM + NADDPARM = "
                            f"{n_int} + {n_add}")
    cols = column_names(hdu)
    needed = _PARAMETER_COLUMNS if n_int else _PARAMETER_COLUMNS[:1] + _PARAMETER_COLUMNS[2:8]
    raw = {name: _column(hdu, cols, name, where) for name in needed}
    numbers = {name: _rows(raw[name], n_rows, 1, where, name)[:, 0]
               for name in ("INITIAL", "DELTA", "MINIMUM", "BOTTOM", "TOP", "MAXIMUM")}
    parameters = []
    for i in range(n_rows):
        name = as_str(raw["NAME"][i]) or ""
        what = f"{where}: parameter {i + 1} {name!r}"
        if i < n_int:
            method = int(np.asarray(raw["METHOD"][i]).reshape(-1)[0])
            if method not in (0, 1):
                raise BkgjaxIOError(f"{what}: column METHOD = {method} (0: linear, 1: "
                                    "logarithmic interpolation)")
            count = int(np.asarray(raw["NUMBVALS"][i]).reshape(-1)[0])
            values = np.atleast_1d(np.asarray(raw["VALUE"][i], dtype=np.float64)).reshape(-1)
            if not 1 <= count <= values.size:
                raise BkgjaxIOError(f"{what}: column NUMBVALS = {count}, but the VALUE column "
                                    f"holds {values.size} value(s) in this row")
            values = values[:count].copy()
            if not np.all(np.isfinite(values)):
                raise BkgjaxIOError(f"{what}: column VALUE holds NaN/inf")
            step = np.diff(values)
            if np.any(step <= 0):
                k = int(np.flatnonzero(step <= 0)[0])
                raise BkgjaxIOError(f"{what}: column VALUE is not strictly increasing "
                                    f"(VALUE[{k}] = {float(values[k])!r}, VALUE[{k + 1}] = "
                                    f"{float(values[k + 1])!r})")
            if method == 1 and values[0] <= 0:
                raise BkgjaxIOError(f"{what}: METHOD = 1 (logarithmic interpolation) needs "
                                    f"positive tabulated values; VALUE[0] = {float(values[0])!r}")
        else:
            method, values = -1, np.zeros(0)
        parameters.append(TableParameter(
            name, method, *(float(numbers[k][i]) for k in ("INITIAL", "DELTA", "MINIMUM",
                                                            "BOTTOM", "TOP", "MAXIMUM")),
            readonly(values)))
    grid_shape = tuple(p.values.size for p in parameters[:n_int])

    # -- ENERGIES -------------------------------------------------------------------------
    ie = _find(hdul, fname, "ENERGIES", "ENERGIES")
    where = hdu_label(fname, hdul, ie)
    hdu = hdul[ie]
    cols = column_names(hdu)
    n_bins = len(hdu.data) if hdu.data is not None else 0
    edges = []
    for name in ("ENERG_LO", "ENERG_HI"):
        values = _rows(_column(hdu, cols, name, where), n_bins, 1, where, name)[:, 0]
        index = [c.upper() for c in hdu.columns.names].index(name) + 1
        unit = str(hdu.header.get(f"TUNIT{index}", "") or "").strip()
        if unit.lower() not in _ENERGY_UNITS:
            raise BkgjaxIOError(f"{where}: column {name} in unit {unit!r} (TUNIT{index}); "
                                "expected keV, eV or MeV")
        edges.append(values * _ENERGY_UNITS[unit.lower()])
    energ_lo, energ_hi = edges
    check_energy_bounds(energ_lo, energ_hi, where)
    gap = np.abs(energ_lo[1:] - energ_hi[:-1]) > 1e-5 * energ_hi[:-1]
    if np.any(gap):
        k = int(np.flatnonzero(gap)[0])
        raise BkgjaxIOError(f"{where}: energy bins are not contiguous (ENERG_HI[{k}] = "
                            f"{float(energ_hi[k])!r}, ENERG_LO[{k + 1}] = {float(energ_lo[k + 1])!r} keV): "
                            "the spectra must cover one interval without gaps")

    # -- SPECTRA --------------------------------------------------------------------------
    isp = _find(hdul, fname, "SPECTRA", "MODEL SPECTRA")
    where = hdu_label(fname, hdul, isp)
    hdu = hdul[isp]
    cols = column_names(hdu)
    n_spectra = len(hdu.data) if hdu.data is not None else 0
    expected = math.prod(grid_shape)
    if n_spectra != expected:
        raise BkgjaxIOError(f"{where}: {n_spectra} rows, but the grid of the "
                            f"{n_int} interpolated parameter(s) has "
                            f"{' x '.join(map(str, grid_shape)) or '1'} = {expected} points")
    if n_int:
        paramval = _rows(_column(hdu, cols, "PARAMVAL", where), n_spectra, n_int, where,
                         "PARAMVAL")
        axes = np.meshgrid(*(p.values for p in parameters[:n_int]), indexing="ij")
        grid = np.stack([a.reshape(-1) for a in axes], axis=1)  # last parameter fastest
        scale = np.array([np.max(np.abs(p.values)) or 1.0 for p in parameters[:n_int]])
        off = ~np.isclose(paramval, grid, rtol=_PARAMVAL_RTOL, atol=1e-9 * scale)
        if np.any(off):
            row = int(np.flatnonzero(off.any(axis=1))[0])
            raise BkgjaxIOError(
                f"{where}: column PARAMVAL of row {row + 1} is {paramval[row].tolist()}, but "
                f"that row is grid point {grid[row].tolist()} in the order of OGIP/92-009 "
                "(the first parameter changing slowest, the last fastest, as XSPEC reads "
                "them): the rows are out of order or PARAMVAL does not match VALUE")
    blocks = []
    names = ["INTPSPEC"] + [f"ADDSP{a:03d}" for a in range(1, n_add + 1)]
    for name in names:
        column = _column(hdu, cols, name, where)
        values = _rows(column, n_spectra, n_bins, where, name)
        stored = np.asarray(column).dtype
        single = stored.kind == "f" and stored.itemsize == 4  # kept as float32 (exact)
        blocks.append(values.astype(np.float32) if single else values)
    spectra = np.stack(blocks, axis=1)  # float64 if any column is
    spectra = spectra.reshape(grid_shape + (1 + n_add, n_bins))

    return TableModel(
        path=fname, sha256=digest,
        model_name=as_str(primary.get("MODLNAME")) or "",
        model_unit=as_str(primary.get("MODLUNIT")) or "",
        additive=additive, redshift=redshift, low_limit=low_limit, high_limit=high_limit,
        parameters=tuple(parameters), n_interpolated=n_int, n_additional=n_add,
        energ_lo=readonly(np.ascontiguousarray(energ_lo)),
        energ_hi=readonly(np.ascontiguousarray(energ_hi)),
        spectra=readonly(np.ascontiguousarray(spectra)))
