"""OGIP spectra: the PHA reader (type I and II), source + background + response loading
(:func:`load_spectrum`, following BACKFILE/RESPFILE/ANCRFILE, and the background's own
RESPFILE/ANCRFILE), grouping and channel filters.

Responses are read by :mod:`bkgjax.io.response`, files written by :mod:`bkgjax.io.writers`.
Everything here is plain NumPy (files read by :mod:`bkgjax.io.fastfits`, or by
:mod:`astropy.io.fits` when that reader leaves a file to it), and everything returned is an
immutable dataclass holding read-only NumPy arrays.

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
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .errors import BkgjaxIOError, MissingFileError
from .fits import (
    column_names,
    hdu_label,
    is_bintable,
    open_table_file,
    path_candidates,
    readonly,
    resolve_input_path,
)
from .keywords import (
    as_bool,
    as_exposure,
    as_int_array,
    as_name,
    as_positive_scale,
    as_str,
    check_grouping,
    is_none_value,
    label,
)
from .response import ARF, RMF, read_arf, read_rmf

if TYPE_CHECKING:
    from astropy.io import fits

__all__ = ["PHA", "SpectrumFiles", "channel_overlap_mask", "check_compatible", "group_index", "load_spectrum", "read_pha"]


_MISSING = object()


_FILE_KEYWORDS = ("BACKFILE", "RESPFILE", "ANCRFILE")


def _strip_extension_spec(value: str) -> str:
    """'file.pha[2]' / 'file.pha{3}' / 'file.pha[SPECTRUM]' -> 'file.pha'."""
    return re.sub(r"(\[[^\[\]]*\]|\{[^{}]*\})+\s*$", "", value).strip()


def _resolve_aux_file(pha_path: str, value: Any) -> tuple[str | None, list[str]]:
    """Resolve a BACKFILE/RESPFILE/ANCRFILE value relative to the PHA directory.

    Returns ``(path, tried)``: ``path`` is the existing file when found, otherwise the
    unresolved absolute path (``None`` for 'none'/empty values).
    """
    if is_none_value(value):
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
    stat_err: np.ndarray | None = None
    file_keywords: Mapping[str, str | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        where = label(self.path)
        set_ = object.__setattr__
        chan = np.asarray(self.channel)
        counts = np.array(self.counts, dtype=np.float64)
        if chan.ndim != 1 or counts.ndim != 1 or chan.shape != counts.shape:
            raise BkgjaxIOError(f"{where}: CHANNEL and COUNTS must be 1-D arrays of equal length "
                                f"(got {chan.shape} and {counts.shape})")
        chan = as_int_array(chan, chan.shape[0], where, "CHANNEL")
        if chan.size > 1 and np.any(np.diff(chan) <= 0):
            raise BkgjaxIOError(f"{where}: CHANNEL must be strictly increasing")
        if not np.all(np.isfinite(counts)):
            raise BkgjaxIOError(f"{where}: COUNTS holds NaN/inf values")
        if np.any(counts < 0):
            raise BkgjaxIOError(f"{where}: COUNTS holds negative values")
        n = chan.shape[0]
        set_(self, "channel", chan)
        set_(self, "counts", readonly(counts))
        set_(self, "exposure", as_exposure(self.exposure, where))
        set_(self, "backscal", as_positive_scale(self.backscal, n, where, "BACKSCAL"))
        set_(self, "areascal", as_positive_scale(self.areascal, n, where, "AREASCAL"))
        if self.grouping is not None:
            g = as_int_array(self.grouping, n, where, "GROUPING")
            check_grouping(g, where)
            set_(self, "grouping", g)
        if self.quality is not None:
            set_(self, "quality", as_int_array(self.quality, n, where, "QUALITY"))
        set_(self, "file_keywords", MappingProxyType(dict(self.file_keywords)))

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return int(self.channel.shape[0])


@dataclass(frozen=True, eq=False)
class SpectrumFiles:
    """A source spectrum with its background, response and effective area.

    Attributes
    ----------
    source : PHA
    background : PHA or None
    rmf : RMF
    arf : ARF or None
    background_rmf, background_arf : RMF, ARF or None
        The background spectrum's own response, from the background file's RESPFILE /
        ANCRFILE (Sherpa's ``get_bkg_rmf`` / ``get_bkg_arf``): ``background_rmf`` is None when
        the background uses the source's response (it names none, names the same files, or
        its files are missing); otherwise it is set, and ``background_arf`` is the ARF to go
        with it (None: no ARF).  See :func:`load_spectrum`.
    """

    source: PHA
    background: PHA | None
    rmf: RMF
    arf: ARF | None
    background_rmf: RMF | None = None
    background_arf: ARF | None = None


def _select_spectrum_hdu(hdul: fits.HDUList, hdu: Any, fname: str) -> int:
    if hdu is not None:
        try:
            idx = hdul.index_of(hdu)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise BkgjaxIOError(f"{fname}: no HDU {hdu!r} (file has {len(hdul)} HDUs)") from exc
        if not is_bintable(hdul[idx]):
            raise BkgjaxIOError(f"{hdu_label(fname, hdul, idx)}: not a binary table, cannot hold a spectrum")
        return idx
    for i, h in enumerate(hdul):
        if not is_bintable(h):
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
        if i == exclude or not is_bintable(h):
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
    with open_table_file(fname) as hdul:
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
        chan = as_int_array(chan, chan.shape[0], where + " column", "CHANNEL")
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
        exposure = as_exposure(exp_v, f"{where}: {exp_src}")

        # ---- POISSERR --------------------------------------------------------
        pe_v, pe_src = kw("POISSERR")
        poisserr = ("STAT_ERR" not in cols) if pe_v is _MISSING else as_bool(pe_v, f"{where}: {pe_src}")

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

        # ---- STAT_ERR (Gaussian errors, in counts; pgstat's background) ------
        stat_err = None
        se = chan_col("STAT_ERR")
        if se is not _MISSING:
            se = np.broadcast_to(np.asarray(se, dtype=np.float64), (n,)).copy()
            if not np.all(np.isfinite(se)) or np.any(se < 0):
                raise BkgjaxIOError(f"{where}: column STAT_ERR holds NaN/inf or negative values")
            stat_err = se * exposure if is_rate else se

        # ---- BACKSCAL / AREASCAL ---------------------------------------------
        scales = {}
        for name in ("BACKSCAL", "AREASCAL"):
            v = chan_col(name)
            src = f"column {name}"
            if v is _MISSING:
                v, src = kw(name, 1.0)
            elif v.ndim == 0:
                v = float(v)
            scales[name] = as_positive_scale(v, n, f"{where}: {src}", name)

        # ---- GROUPING / QUALITY ----------------------------------------------
        grouping = None
        g = chan_col("GROUPING")
        if g is not _MISSING and g.ndim == 1:
            grouping = as_int_array(g, n, f"{where}: column", "GROUPING")
            check_grouping(grouping, f"{where}: column GROUPING")
        quality = None
        q = chan_col("QUALITY")
        if q is not _MISSING and q.ndim == 1:
            quality = as_int_array(q, n, f"{where}: column", "QUALITY")
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
            raw_files[name] = None if v is None else as_str(v)
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
            telescope=as_name(kw("TELESCOP", None)[0]),
            instrument=as_name(kw("INSTRUME", None)[0]),
            hduclas2=as_str(hdr.get("HDUCLAS2")),
            is_rate=is_rate,
            hdu_index=idx,
            row=r,
            poisserr=poisserr,
            stat_err=stat_err,
            file_keywords=raw_files,
        )


def check_compatible(source: PHA, rmf: RMF, arf: ARF | None = None, background: PHA | None = None) -> None:
    """Check that a spectrum, its response, ARF and background fit together.

    Raises
    ------
    BkgjaxIOError
        ARF energy grid differs from the RMF's (length, or ``np.allclose(rtol=1e-6)``
        on ENERG_LO and ENERG_HI); the PHA channel count differs from the RMF EBOUNDS
        channel count; the background channel count differs from the source's.
    """
    src = label(source.path)
    if source.n_channels != rmf.n_channels:
        raise BkgjaxIOError(
            f"PHA {src} has {source.n_channels} channels but RMF {label(rmf.path)} has "
            f"{rmf.n_channels} EBOUNDS channels"
        )
    if not np.array_equal(source.channel, rmf.channel):
        warnings.warn(
            f"PHA {src} channels {source.channel[0]}..{source.channel[-1]} differ from RMF "
            f"{label(rmf.path)} EBOUNDS channels {rmf.channel[0]}..{rmf.channel[-1]}; matching them by position",
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
                f"ARF {label(arf.path)} energy grid does not match RMF {label(rmf.path)}: {detail}"
            )
    if background is not None and background.n_channels != source.n_channels:
        raise BkgjaxIOError(
            f"background {label(background.path)} has {background.n_channels} channels but source "
            f"{src} has {source.n_channels}"
        )


def _missing_aux(source: PHA, keyword: str, path: str, hint: str) -> MissingFileError:
    value = source.file_keywords.get(keyword) or os.path.basename(path)
    tried = path_candidates(path)
    return MissingFileError(
        f"{source.path}: header keyword {keyword} names '{value}', which was not found at "
        f"{tried}; {hint}"
    )


def _background_response(background: PHA, rmf: RMF, arf: ARF | None
                         ) -> tuple[RMF | None, ARF | None]:
    """The background's own (RMF, ARF) from its RESPFILE / ANCRFILE, or (None, None) when
    it uses the source's ``rmf`` / ``arf`` (see :func:`load_spectrum`)."""
    own: dict[str, Any] = {}
    for keyword, path, reader, source_file, what in (
            ("RESPFILE", background.respfile, read_rmf, rmf, "RMF"),
            ("ANCRFILE", background.ancrfile, read_arf, arf, "ARF")):
        own[keyword] = None
        if path is None:  # 'none', empty or absent
            continue
        if source_file is not None and source_file.path is not None \
                and os.path.isfile(path) and _same_file(path, source_file.path):
            own[keyword] = source_file  # the same file as the source's: not read twice
            continue
        if not os.path.isfile(path):
            # Sherpa's load_pha: "unable to read RMF (background): file ... not found", and the
            # background keeps the source's response
            value = background.file_keywords.get(keyword) or os.path.basename(path)
            full = own.get("RESPFILE") is not None and own["RESPFILE"].is_full
            instead = "no ARF (its RMF is a full response)" if full else f"the source's {what}"
            warnings.warn(
                f"{background.path}: background header keyword {keyword} names '{value}', "
                f"which was not found at {path_candidates(path)}; the background spectrum uses "
                f"{instead} instead",
                stacklevel=3,
            )
            continue
        own[keyword] = reader(path)
    bkg_rmf, bkg_arf = own["RESPFILE"], own["ANCRFILE"]
    if bkg_rmf is None and bkg_arf is None:
        return None, None
    if bkg_rmf is None:
        bkg_rmf = rmf
    if bkg_arf is None and own["RESPFILE"] is not None and not bkg_rmf.is_full:
        bkg_arf = arf  # a redistribution matrix without an effective area would give cm^-2
    if bkg_rmf is rmf and bkg_arf is arf:
        return None, None
    return bkg_rmf, bkg_arf


def load_spectrum(pha_path, *, rmf=None, arf=None, background="auto", row=None,
                  spec_num=None, hdu=None, background_response=True) -> SpectrumFiles:
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
    background_response : bool
        True (default): read the background file's own RESPFILE / ANCRFILE (resolved
        relative to the background file) into ``background_rmf`` / ``background_arf``, as
        Sherpa's ``load_pha`` does; False: the background uses the source's response.

    Returns
    -------
    SpectrumFiles

    Notes
    -----
    The background's response follows Sherpa 4.19 (``sherpa.astro.io.read_pha``): a keyword
    that is absent, empty or 'none' names no file; a named file that does not exist gives a
    warning naming the keyword and the file and is treated as not named; when the
    background names neither, or the same files as the source uses, it uses the source's
    response (``background_rmf`` None).  When it names only one of them, Sherpa folds the
    background model through that one alone (an ARF alone treats energy bins as channels,
    an RMF alone drops the effective area); here the missing piece is the source's instead:
    its RMF, or its ARF unless the background's own matrix is a full response
    (HDUCLAS3='FULL').

    Raises
    ------
    MissingFileError
        A file named in the source's RESPFILE / ANCRFILE / BACKFILE does not exist.
    BkgjaxIOError
        No response available, or the pieces do not fit (see :func:`check_compatible`).
    """
    if isinstance(pha_path, PHA):
        source = pha_path
    else:
        source = read_pha(pha_path, hdu=hdu, row=row, spec_num=spec_num)
    src = label(source.path)

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
    bkg_rmf = bkg_arf = None
    if bkg is not None and background_response:
        bkg_rmf, bkg_arf = _background_response(bkg, the_rmf, the_arf)
        if bkg_rmf is not None:
            check_compatible(bkg, bkg_rmf, bkg_arf)
    return SpectrumFiles(source=source, background=bkg, rmf=the_rmf, arf=the_arf,
                         background_rmf=bkg_rmf, background_arf=bkg_arf)


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
    g = as_int_array(np.asarray(grouping), n, "group_index", "GROUPING")
    check_grouping(g, "group_index")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = g != -1
    starts[0] = True
    return np.cumsum(starts).astype(np.int64) - 1
