"""INTEGRAL/IBIS-ISGRI science-window (ScW) and Crab tables: the input contract of
``bkgjax isgri-ridge`` (issue 5).

Formats: a FITS binary table (first table HDU, or the HDU named ``SCW`` / ``CRAB``) or an ECSV
file (``.ecsv``).  Column names are case-insensitive.

ScW table (one row per science window, after point-source removal):

============  =======  ==============================================================
column        unit     meaning
============  =======  ==============================================================
SCW_ID        --       science-window identifier (string)
REV           --       INTEGRAL revolution (orbit) number, integer
PHASE         --       orbital phase, 0-1
MJD           d        time of the ScW
L, B          deg      Galactic longitude / latitude of the pointing
EXPOSURE      s        dead-time corrected exposure, > 0
RATE_lo_hi    cts/s    source-free detector count rate in lo-hi keV (the paper: per pixel)
RATE_ERR_lo_hi cts/s   its 1-sigma statistical error, >= 0
============  =======  ==============================================================

Crab table (one row per Crab ScW): REV, MJD, OFFSET (deg from the pointing axis, >= 0),
RATE_lo_hi (and optionally RATE_ERR_lo_hi).

Band names: ``lo_hi`` in keV, e.g. RATE_25_60, RATE_60_80, RATE_80_200; a decimal point is
written ``p`` (RATE_27p5_30).  Both tables must hold the same bands.

Every problem is raised as :class:`~bkgjax.io.errors.BkgjaxIOError` naming the file, the column
and what is wrong (missing columns, PHASE outside 0-1, non-positive EXPOSURE, NaN or infinite
values, bands present in one table and not the other).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bkgjax.io.errors import BkgjaxIOError, MissingFileError

__all__ = [
    "ScwData",
    "CrabData",
    "read_scw_table",
    "read_crab_table",
    "scw_data_from_table",
    "crab_data_from_table",
    "band_names",
    "check_same_bands",
    "read_profile",
]

_BAND_RE = re.compile(r"^RATE_(?!ERR_)([0-9p.]+_[0-9p.]+)$", re.IGNORECASE)
SCW_COLUMNS = ("SCW_ID", "REV", "PHASE", "MJD", "L", "B", "EXPOSURE")
CRAB_COLUMNS = ("REV", "MJD", "OFFSET")


@dataclass(frozen=True, eq=False)
class ScwData:
    """Validated ScW table as arrays (float64 except ``scw_id`` (str) and ``rev`` (int64)).

    ``rate`` and ``rate_err`` have shape (n_scw, n_bands), columns in the order of ``bands``
    (sorted by lower then upper edge)."""

    source: str
    scw_id: np.ndarray
    rev: np.ndarray
    phase: np.ndarray
    mjd: np.ndarray
    l: np.ndarray
    b: np.ndarray
    exposure: np.ndarray
    bands: tuple
    rate: np.ndarray
    rate_err: np.ndarray

    def __len__(self):
        return len(self.rev)

    def band_index(self, band: str) -> int:
        try:
            return self.bands.index(band)
        except ValueError:
            raise KeyError(f"{self.source}: no band {band!r} (bands: {', '.join(self.bands)})") \
                from None

    def subset(self, mask):
        """Rows where ``mask`` is true (a new ScwData)."""
        mask = np.asarray(mask)
        return ScwData(self.source, self.scw_id[mask], self.rev[mask], self.phase[mask],
                       self.mjd[mask], self.l[mask], self.b[mask], self.exposure[mask],
                       self.bands, self.rate[mask], self.rate_err[mask])


@dataclass(frozen=True, eq=False)
class CrabData:
    """Validated Crab table: ``rate`` (n, n_bands) in the order of ``bands``; ``rate_err`` is
    None when the table has no RATE_ERR columns."""

    source: str
    rev: np.ndarray
    mjd: np.ndarray
    offset: np.ndarray
    bands: tuple
    rate: np.ndarray
    rate_err: np.ndarray | None

    def __len__(self):
        return len(self.rev)


def _band_sort_key(name):
    lo, hi = name.split("_")
    return float(lo.replace("p", ".")), float(hi.replace("p", "."))


def band_names(table_or_columns) -> list[str]:
    """Band names ``lo_hi`` of the RATE_lo_hi columns (RATE_ERR_* excluded), sorted by energy.

    Accepts an astropy Table or a list of column names."""
    cols = getattr(table_or_columns, "colnames", table_or_columns)
    names = []
    for c in cols:
        m = _BAND_RE.match(str(c))
        if m:
            names.append(m.group(1).lower())
    return sorted(set(names), key=_band_sort_key)


def _read_table(path, kind):
    from astropy.table import Table

    path = Path(os.fspath(path))
    if not path.exists():
        raise MissingFileError(f"{path}: {kind} table not found")
    name = path.name.lower()
    try:
        if name.endswith(".ecsv"):
            return Table.read(path, format="ascii.ecsv")
        if name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")):
            from astropy.io import fits

            with fits.open(path) as hdul:
                wanted = [i for i, h in enumerate(hdul) if h.name.upper() == kind.upper()]
                tables = [i for i, h in enumerate(hdul) if isinstance(h, fits.BinTableHDU)]
                if not tables:
                    raise BkgjaxIOError(f"{path}: no binary-table HDU holding the {kind} table")
                hdu = wanted[0] if wanted else tables[0]
            return Table.read(path, hdu=hdu)
        return Table.read(path)
    except BkgjaxIOError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a clear file error
        raise BkgjaxIOError(f"{path}: cannot read the {kind} table as FITS or ECSV ({exc})") \
            from exc


def _column_lookup(table):
    return {c.upper(): c for c in table.colnames}


def _require(table, source, names, kind):
    lookup = _column_lookup(table)
    missing = [n for n in names if n not in lookup]
    if missing:
        raise BkgjaxIOError(f"{source}: {kind} table is missing column(s) {', '.join(missing)} "
                            f"(found: {', '.join(table.colnames) or 'none'})")
    return lookup


def _float_column(table, lookup, name, source):
    col = table[lookup[name]]
    try:
        values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    except (TypeError, ValueError):
        raise BkgjaxIOError(f"{source}: column {name} is not numeric (dtype {col.dtype})") from None
    values = np.asarray(values, dtype=np.float64).reshape(len(table))
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise BkgjaxIOError(f"{source}: column {name} has {int(bad.sum())} NaN/infinite or missing "
                            f"value(s) (first at row {first})")
    return values


def _check_range(values, name, source, ok, what):
    bad = ~ok
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise BkgjaxIOError(f"{source}: column {name} has {int(bad.sum())} value(s) {what} "
                            f"(first at row {first}: {values[first]!r})")


def _int_column(table, lookup, name, source):
    values = _float_column(table, lookup, name, source)
    _check_range(values, name, source, values == np.round(values), "that are not integers")
    return values.astype(np.int64)


def _bands(table, source, kind):
    bands = band_names(table)
    if not bands:
        raise BkgjaxIOError(f"{source}: {kind} table has no RATE_<lo>_<hi> column "
                            f"(e.g. RATE_25_60)")
    for name in bands:
        lo, hi = _band_sort_key(name)
        if not (0 < lo < hi):
            raise BkgjaxIOError(f"{source}: column RATE_{name}: band edges must satisfy "
                                f"0 < lo < hi keV")
    return tuple(bands)


def scw_data_from_table(table, source="<in-memory ScW table>") -> ScwData:
    """Validate an astropy ScW table (see the module docstring) and return :class:`ScwData`."""
    lookup = _require(table, source, SCW_COLUMNS, "ScW")
    if len(table) == 0:
        raise BkgjaxIOError(f"{source}: ScW table has no rows")
    bands = _bands(table, source, "ScW")
    missing_err = [f"RATE_ERR_{b}" for b in bands if f"RATE_ERR_{b}".upper() not in lookup]
    if missing_err:
        raise BkgjaxIOError(f"{source}: ScW table is missing column(s) {', '.join(missing_err)} "
                            f"(every RATE_<lo>_<hi> needs its RATE_ERR_<lo>_<hi>)")
    phase = _float_column(table, lookup, "PHASE", source)
    _check_range(phase, "PHASE", source, (phase >= 0) & (phase <= 1), "outside 0-1")
    exposure = _float_column(table, lookup, "EXPOSURE", source)
    _check_range(exposure, "EXPOSURE", source, exposure > 0, "that are not positive (s)")
    b = _float_column(table, lookup, "B", source)
    _check_range(b, "B", source, np.abs(b) <= 90, "outside -90..90 deg")
    l = _float_column(table, lookup, "L", source)
    l = np.mod(l + 180.0, 360.0) - 180.0
    l = np.where(l == -180.0, 180.0, l)
    rate = np.stack([_float_column(table, lookup, f"RATE_{n}".upper(), source) for n in bands], 1)
    rate_err = np.stack([_float_column(table, lookup, f"RATE_ERR_{n}".upper(), source)
                         for n in bands], 1)
    for j, n in enumerate(bands):
        _check_range(rate_err[:, j], f"RATE_ERR_{n}", source, rate_err[:, j] >= 0, "below 0")
    scw_id = np.asarray(table[lookup["SCW_ID"]]).astype(str)
    return ScwData(source=str(source), scw_id=scw_id,
                   rev=_int_column(table, lookup, "REV", source), phase=phase,
                   mjd=_float_column(table, lookup, "MJD", source), l=l, b=b, exposure=exposure,
                   bands=bands, rate=rate, rate_err=rate_err)


def crab_data_from_table(table, source="<in-memory Crab table>") -> CrabData:
    """Validate an astropy Crab table (see the module docstring) and return :class:`CrabData`."""
    lookup = _require(table, source, CRAB_COLUMNS, "Crab")
    if len(table) == 0:
        raise BkgjaxIOError(f"{source}: Crab table has no rows")
    bands = _bands(table, source, "Crab")
    offset = _float_column(table, lookup, "OFFSET", source)
    _check_range(offset, "OFFSET", source, offset >= 0, "below 0 deg")
    rate = np.stack([_float_column(table, lookup, f"RATE_{n}".upper(), source) for n in bands], 1)
    has_err = [f"RATE_ERR_{n}".upper() in lookup for n in bands]
    rate_err = None
    if all(has_err):
        rate_err = np.stack([_float_column(table, lookup, f"RATE_ERR_{n}".upper(), source)
                             for n in bands], 1)
    return CrabData(source=str(source), rev=_int_column(table, lookup, "REV", source),
                    mjd=_float_column(table, lookup, "MJD", source), offset=offset, bands=bands,
                    rate=rate, rate_err=rate_err)


def read_scw_table(path) -> ScwData:
    """Read and validate a ScW table (FITS binary table or ECSV); see the module docstring."""
    return scw_data_from_table(_read_table(path, "ScW"), source=os.fspath(path))


def read_crab_table(path) -> CrabData:
    """Read and validate a Crab table (FITS binary table or ECSV); see the module docstring."""
    return crab_data_from_table(_read_table(path, "Crab"), source=os.fspath(path))


def check_same_bands(scw: ScwData, crab: CrabData) -> tuple:
    """The common bands; raises :class:`BkgjaxIOError` naming the bands present in one table and
    not the other (each needs a Crab calibration, and every Crab band a ScW rate)."""
    only_scw = [b for b in scw.bands if b not in crab.bands]
    only_crab = [b for b in crab.bands if b not in scw.bands]
    if only_scw or only_crab:
        parts = []
        if only_scw:
            parts.append(f"RATE_{', RATE_'.join(only_scw)} only in the ScW table {scw.source}")
        if only_crab:
            parts.append(f"RATE_{', RATE_'.join(only_crab)} only in the Crab table {crab.source}")
        raise BkgjaxIOError("band mismatch between the ScW and Crab tables: " + "; ".join(parts))
    return scw.bands


def read_profile(path):
    """A user comparison profile (e.g. a NIR intensity, Fig. 1): a table with columns L (deg)
    and VALUE (arbitrary units), FITS/ECSV, or a plain two-column text file.  Returns
    ``(l, value)`` float64 arrays sorted by l."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise MissingFileError(f"{path}: comparison profile not found")
    name = path.name.lower()
    if name.endswith((".ecsv", ".fits", ".fit", ".fits.gz")):
        table = _read_table(path, "profile")
        lookup = _require(table, str(path), ("L", "VALUE"), "profile")
        l = _float_column(table, lookup, "L", str(path))
        v = _float_column(table, lookup, "VALUE", str(path))
    else:
        try:
            data = np.loadtxt(path, ndmin=2, dtype=float)
        except ValueError as exc:
            raise BkgjaxIOError(f"{path}: comparison profile is not two numeric columns "
                                f"(l, value): {exc}") from exc
        if data.shape[1] != 2 or len(data) == 0:
            raise BkgjaxIOError(f"{path}: comparison profile needs two columns (l, value), "
                                f"got shape {data.shape}")
        l, v = data[:, 0], data[:, 1]
        if not np.all(np.isfinite(data)):
            raise BkgjaxIOError(f"{path}: comparison profile has NaN/infinite values")
    order = np.argsort(l)
    return l[order], v[order]
