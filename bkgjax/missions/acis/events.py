"""Chandra ACIS level-2 event files and ds9 region files (for the particle-background generator).

Event files
-----------
A CIAO level-2 event file (``acisf*_evt2.fits``) has an ``EVENTS`` binary table with one row
per event.  bkgjax uses the columns

========  =========================================================================
ccd_id    ACIS CCD 0..9 (I0-I3 = 0-3, S0-S5 = 4-9; S1 = 5 and S3 = 7 are back-illuminated)
chipx     chip column 1..1024 (pixel)
chipy     chip row 1..1024 (pixel; row 1 is next to the frame store)
energy    event energy in **eV** (CIAO ``acis_process_events``)
x, y      sky pixel coordinates (CIAO ``physical`` coordinates, 0.492 arcsec pixels)
========  =========================================================================

and the keywords ``EXPOSURE`` (or ``LIVETIME`` when EXPOSURE is absent, s), ``DATAMODE``
(``FAINT``, ``VFAINT``, ``FAINT_BIAS``, ...) and ``READMODE`` (``TIMED``/``CONTINUOUS``).  See the
CIAO "ACIS event file" dictionary (cxc.harvard.edu/ciao/dictionary/evtfile.html).

Region files
------------
:func:`read_region` reads a ds9 region file (``regions`` package) and supports

* shapes in ``physical`` or ``image`` coordinates: evaluated on the event columns ``x``, ``y``.
  ds9 writes event-file regions in ``physical`` coordinates, which for Chandra are the sky
  pixels; ``image`` is accepted as a synonym (correct for an unbinned, unshifted display);
* shapes in ``fk5``/``icrs``: converted to sky pixels with the tangent-plane WCS that the
  event file declares on its x, y columns (``TCTYPn``/``TCRVLn``/``TCRPXn``/``TCDLTn``);
* **chip-coordinate** shapes: an ``image`` shape carrying the ds9 property ``tag={ccd_id=N}``
  is evaluated on (chipx, chipy) of CCD ``N`` only, e.g.
  ``image; box(512.5,256.5,1024,512,0) # tag={ccd_id=7}`` selects rows 1-512 of S3;
* ``-shape`` (exclude) lines; the region is (union of includes) minus (union of excludes),
  with "everything" as the include when the file only has excludes.

:func:`region_slice_fractions` gives, per CCD, the fraction of each of the 32 CHIPY slices
(32 rows x 1024 columns) that lies inside the region.  Chip shapes are evaluated on the pixel
grid directly; sky shapes through an affine chip -> sky map fitted per CCD to the events
themselves (the aspect dither of ~16 arcsec blurs the true map; the fraction is an
approximation at that level and is used only for diagnostics and simulations -- the generator's
weights are the observed 9-11.5 keV counts, as in mkacispback, Suzuki et al. 2021, Sect. 3).

Only :mod:`bkgjax.io` reads files; everything returned is plain NumPy (read-only arrays).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from bkgjax.io.errors import BkgjaxIOError
from bkgjax.io.fits import (
    column_names,
    hdu_label,
    open_fits,
    positive_seconds,
    readonly,
    resolve_input_path,
)
from bkgjax.io.fits import find_extension as _find_ext
from bkgjax.io.fits import header_keyword as _keyword

__all__ = [
    "ACIS_CHIP_PIXELS",
    "ChandraEvents",
    "EventRegion",
    "chip_box_region",
    "read_chandra_events",
    "read_region",
    "region_slice_fractions",
    "write_chandra_events",
]

ACIS_CHIP_PIXELS = 1024
_N_SLICES = 32
_REQUIRED = ("ccd_id", "chipx", "chipy", "energy", "x", "y")


@dataclass(frozen=True, eq=False)
class ChandraEvents:
    """Events of a Chandra ACIS level-2 event file.

    Attributes
    ----------
    path : str or None
        Absolute path of the file read (None when built in memory).
    ccd_id, chipx, chipy : ndarray of int64
        CCD (0..9) and chip pixel (1..1024) of every event.
    energy : ndarray of float64
        Event energy, eV.
    x, y : ndarray of float64
        Sky pixel coordinates.
    exposure : float
        EXPOSURE (LIVETIME when EXPOSURE is absent), s.
    datamode, readmode : str or None
        DATAMODE / READMODE keywords (upper case), None when absent.
    obs_id : str
    sky_wcs : dict
        ``TCTYP``/``TCRVL``/``TCRPX``/``TCDLT`` of the x and y columns (keys like ``"TCRVL_x"``),
        only the ones present.
    """

    path: str | None
    ccd_id: np.ndarray
    chipx: np.ndarray
    chipy: np.ndarray
    energy: np.ndarray
    x: np.ndarray
    y: np.ndarray
    exposure: float
    datamode: str | None = None
    readmode: str | None = None
    obs_id: str = ""
    sky_wcs: Mapping[str, Any] | None = None

    @property
    def n_events(self) -> int:
        return int(self.energy.shape[0])

    @property
    def mode(self) -> str | None:
        """``"faint"`` / ``"vfaint"`` from DATAMODE (``FAINT``, ``FAINT_BIAS`` -> faint), else None."""
        if self.datamode is None:
            return None
        d = self.datamode.upper()
        if d.startswith("VFAINT"):
            return "vfaint"
        if d.startswith("FAINT"):
            return "faint"
        return None


def _numeric(ext, col, where, integer):
    a = np.asarray(ext.data[col])
    if a.ndim != 1:
        raise BkgjaxIOError(f"{where}: column {col} must hold one value per row (shape {a.shape})")
    if a.dtype.kind not in "iufb":
        raise BkgjaxIOError(f"{where}: column {col} has non-numeric type {a.dtype}")
    f = a.astype(np.float64)
    if not np.all(np.isfinite(f)):
        raise BkgjaxIOError(f"{where}: column {col} holds {int(np.count_nonzero(~np.isfinite(f)))} NaN/inf value(s)")
    if integer:
        if np.any(f != np.round(f)):
            raise BkgjaxIOError(f"{where}: column {col} holds non-integer values")
        return f.astype(np.int64)
    return f


def read_chandra_events(path) -> ChandraEvents:
    """Read a Chandra ACIS level-2 event file.

    Raises
    ------
    MissingFileError
        The file does not exist.
    BkgjaxIOError
        No EVENTS extension; a required column (ccd_id, chipx, chipy, energy, x, y) missing
        (the message names the file and the column(s)); EXPOSURE and LIVETIME both missing or
        <= 0; ccd_id outside 0..9, chipx/chipy outside 1..1024 or energy < 0 in any row.
    """
    fname = resolve_input_path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        with open_fits(fname) as hdul:
            idx = _find_ext(hdul, "EVENTS")
            if idx is None:
                raise BkgjaxIOError(f"{fname}: no EVENTS extension (EXTNAME or HDUCLAS1 'EVENTS')")
            ext = hdul[idx]
            where = hdu_label(fname, hdul, idx)
            cols = {k.lower(): v for k, v in column_names(ext).items()}
            missing = [c for c in _REQUIRED if c not in cols]
            if missing:
                raise BkgjaxIOError(f"{where}: required column(s) {', '.join(missing)} missing "
                                    f"(columns present: {', '.join(ext.columns.names)})")
            exp_raw = _keyword(hdul, idx, "EXPOSURE")
            key = "EXPOSURE"
            if exp_raw is None:
                exp_raw, key = _keyword(hdul, idx, "LIVETIME"), "LIVETIME"
            if exp_raw is None:
                raise BkgjaxIOError(f"{where}: keywords EXPOSURE and LIVETIME are both missing")
            exposure = positive_seconds(exp_raw, f"{where}: keyword {key}")
            data = {c: _numeric(ext, cols[c], where, c in ("ccd_id", "chipx", "chipy")) for c in _REQUIRED}
            for c, lo, hi in (("ccd_id", 0, 9), ("chipx", 1, ACIS_CHIP_PIXELS), ("chipy", 1, ACIS_CHIP_PIXELS),
                              ("energy", 0, None)):
                a = data[c]
                bad = (a < lo) if hi is None else (a < lo) | (a > hi)
                if np.any(bad):
                    rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                    raise BkgjaxIOError(f"{where}: column {c} must be {rng}; {int(np.count_nonzero(bad))} of "
                                        f"{a.size} row(s) are not")
            wcs = {}
            names = [n.lower() for n in ext.columns.names]
            for axis in ("x", "y"):
                n = names.index(axis) + 1
                for k in ("TCTYP", "TCRVL", "TCRPX", "TCDLT"):
                    if f"{k}{n}" in ext.header:
                        wcs[f"{k}_{axis}"] = ext.header[f"{k}{n}"]
            modes = {}
            for k in ("DATAMODE", "READMODE", "OBS_ID"):
                v = _keyword(hdul, idx, k)
                modes[k] = None if v is None else str(v).strip()
    ro = lambda a: readonly(np.ascontiguousarray(a))  # noqa: E731
    return ChandraEvents(path=fname, ccd_id=ro(data["ccd_id"]), chipx=ro(data["chipx"]), chipy=ro(data["chipy"]),
                         energy=ro(data["energy"]), x=ro(data["x"]), y=ro(data["y"]), exposure=exposure,
                         datamode=modes["DATAMODE"].upper() if modes["DATAMODE"] else None,
                         readmode=modes["READMODE"].upper() if modes["READMODE"] else None,
                         obs_id=modes["OBS_ID"] or "", sky_wcs=wcs)


def write_chandra_events(path, *, ccd_id, chipx, chipy, energy, x, y, exposure, datamode="VFAINT",
                         readmode="TIMED", obs_id="", sky_wcs: Mapping[str, Any] | None = None,
                         extra_header: Mapping[str, Any] | None = None, overwrite=True) -> str:
    """Write a level-2-like ACIS event file (empty primary HDU + ``EVENTS`` table).

    Columns: ccd_id 'I', chipx 'I', chipy 'I', energy 'E' (eV), x 'E', y 'E' (sky pixels).
    Keywords (primary and EVENTS): TELESCOP='CHANDRA', INSTRUME='ACIS', EXPOSURE, LIVETIME,
    DATAMODE, READMODE, OBS_ID, DATE, CREATOR='bkgjax'.  ``sky_wcs`` items such as
    ``{"TCTYP_x": "RA---TAN", "TCRVL_x": 53.1, "TCRPX_x": 4096.5, "TCDLT_x": -1.366e-4, ...}``
    are written as the TCTYPn/TCRVLn/TCRPXn/TCDLTn keywords of the x/y columns.
    """
    exposure = positive_seconds(exposure, "<in-memory data>: exposure")
    ccd = np.asarray(ccd_id)
    n = ccd.shape[0] if ccd.ndim == 1 else -1
    arrays = {}
    for name, v in (("ccd_id", ccd_id), ("chipx", chipx), ("chipy", chipy), ("energy", energy), ("x", x), ("y", y)):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1 or a.shape[0] != n:
            raise BkgjaxIOError(f"<in-memory data>: {name} must be 1-D with {n} entries (shape {a.shape})")
        if not np.all(np.isfinite(a)):
            raise BkgjaxIOError(f"<in-memory data>: {name} holds NaN/inf values")
        arrays[name] = a
    for c, lo, hi in (("ccd_id", 0, 9), ("chipx", 1, ACIS_CHIP_PIXELS), ("chipy", 1, ACIS_CHIP_PIXELS)):
        a = arrays[c]
        if np.any((a < lo) | (a > hi) | (a != np.round(a))):
            raise BkgjaxIOError(f"<in-memory data>: {c} must be integers in {lo}..{hi}")
    if np.any(arrays["energy"] < 0):
        raise BkgjaxIOError("<in-memory data>: energy must be >= 0 eV")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    common = [("TELESCOP", "CHANDRA", "mission"), ("INSTRUME", "ACIS", "instrument"),
              ("OBS_ID", str(obs_id), "observation ID"), ("DATAMODE", str(datamode).upper(), "ACIS data mode"),
              ("READMODE", str(readmode).upper(), "ACIS read mode"), ("EXPOSURE", exposure, "[s] exposure"),
              ("LIVETIME", exposure, "[s] live time"), ("DATE", date, "file creation date (UTC)"),
              ("CREATOR", "bkgjax", "software that wrote this file")]
    primary = fits.PrimaryHDU()
    for k, v, c in common:
        primary.header[k] = (v, c)
    columns = [
        fits.Column(name="ccd_id", format="I", array=arrays["ccd_id"].astype(np.int16)),
        fits.Column(name="chipx", format="I", unit="pixel", array=arrays["chipx"].astype(np.int16)),
        fits.Column(name="chipy", format="I", unit="pixel", array=arrays["chipy"].astype(np.int16)),
        fits.Column(name="energy", format="E", unit="eV", array=arrays["energy"].astype(np.float32)),
        fits.Column(name="x", format="E", unit="pixel", array=arrays["x"].astype(np.float32)),
        fits.Column(name="y", format="E", unit="pixel", array=arrays["y"].astype(np.float32)),
    ]
    events = fits.BinTableHDU.from_columns(columns, name="EVENTS")
    h = events.header
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("EVENTS", "extension contains events")
    for k, v, c in common:
        h[k] = (v, c)
    for key, value in (sky_wcs or {}).items():
        stem, axis = key.rsplit("_", 1)
        h[f"{stem}{5 if axis == 'x' else 6}"] = value
    for k, v in (extra_header or {}).items():
        h[str(k)] = v
    out = os.path.abspath(os.fspath(path))
    fits.HDUList([primary, events]).writeto(out, overwrite=overwrite, checksum=True)
    return out


# ---------------------------------------------------------------------------
# regions
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EventRegion:
    """A selection of ACIS events: sky shapes (on x, y) and chip shapes (on chipx, chipy of one CCD).

    Attributes
    ----------
    path : str or None
        Region file (None when built in memory).
    sky : tuple of (include: bool, PixelRegion)
        Shapes on sky pixels (physical/image, or fk5/icrs converted with the event WCS).
    chip : tuple of (include: bool, ccd_id: int, PixelRegion)
        Shapes on the chip pixels of one CCD.
    sky_world : tuple of (include: bool, SkyRegion)
        fk5/icrs shapes, converted to pixels once the event file (its WCS) is known.
    """

    path: str | None
    sky: tuple = ()
    chip: tuple = ()
    sky_world: tuple = ()

    def _where(self):
        return self.path or "<in-memory region>"

    def _pixel_sky_shapes(self, events: ChandraEvents):
        shapes = list(self.sky)
        if self.sky_world:
            wcs = _events_wcs(events, self._where())
            shapes += [(inc, reg.to_pixel(wcs)) for inc, reg in self.sky_world]
        return shapes

    def mask(self, events: ChandraEvents) -> np.ndarray:
        """Boolean mask of the events inside the region."""
        return self._contains(events, events.x, events.y, events.ccd_id, events.chipx, events.chipy)

    def _contains(self, events, x, y, ccd, chipx, chipy):
        from regions import PixCoord

        shapes = self._pixel_sky_shapes(events)
        n = np.shape(x)[0]
        includes = [s for s in shapes if s[0]] + [c for c in self.chip if c[0]]
        inside = np.zeros(n, bool) if includes else np.ones(n, bool)
        outside = np.zeros(n, bool)
        # the regions package stores ds9 image coordinates 0-based (ds9 and CIAO pixels are
        # 1-based), and astropy WCS.to_pixel is 0-based too
        sky_pts = PixCoord(np.asarray(x, float) - 1.0, np.asarray(y, float) - 1.0)
        chip_pts = PixCoord(np.asarray(chipx, float) - 1.0, np.asarray(chipy, float) - 1.0)
        for inc, reg in shapes:
            hit = np.asarray(reg.contains(sky_pts), bool)
            if inc:
                inside |= hit
            else:
                outside |= hit
        for inc, c, reg in self.chip:
            hit = (np.asarray(ccd) == c) & np.asarray(reg.contains(chip_pts), bool)
            if inc:
                inside |= hit
            else:
                outside |= hit
        return inside & ~outside


def chip_box_region(ccd_id: int, chipx=(1, 1024), chipy=(1, 1024), *, exclude=False) -> EventRegion:
    """Region of the chip pixels ``chipx[0]..chipx[1]`` x ``chipy[0]..chipy[1]`` (inclusive) of one CCD."""
    from regions import PixCoord, RectanglePixelRegion

    (x0, x1), (y0, y1) = chipx, chipy
    if not (1 <= x0 <= x1 <= ACIS_CHIP_PIXELS and 1 <= y0 <= y1 <= ACIS_CHIP_PIXELS):
        raise ValueError(f"chip box chipx={chipx}, chipy={chipy} must lie within 1..{ACIS_CHIP_PIXELS}")
    # 0-based centre (see EventRegion._contains); covers pixel centres x0..x1, y0..y1
    box = RectanglePixelRegion(PixCoord((x0 + x1) / 2.0 - 1.0, (y0 + y1) / 2.0 - 1.0), width=x1 - x0 + 1.0,
                               height=y1 - y0 + 1.0)
    return EventRegion(path=None, chip=((not exclude, int(ccd_id), box),))


_PHYSICAL = re.compile(r"(?i)(^|;)\s*physical\s*(?=;|$)")


def read_region(path) -> EventRegion:
    """Read a ds9 region file into an :class:`EventRegion` (see the module docstring for what is supported).

    Raises
    ------
    MissingFileError, BkgjaxIOError
        Missing file; no shape could be read; a shape in a coordinate system other than
        physical/image/fk5/icrs (named with its line); a ``tag={ccd_id=N}`` with N not 0..9.
    """
    from regions import PixelRegion, Regions, SkyRegion

    fname = resolve_input_path(path)
    with open(fname, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    # the regions package does not know ds9's 'physical' system; for Chandra event files the
    # physical coordinates are the sky pixels, which is what 'image' means below
    text = "\n".join(_PHYSICAL.sub(lambda m: f"{m.group(1)}image", ln) for ln in lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            regs = Regions.parse(text, format="ds9")
        except Exception as exc:  # the parser raises several error types
            raise BkgjaxIOError(f"{fname}: cannot be parsed as a ds9 region file: {exc}") from exc
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message)]
    if skipped:
        raise BkgjaxIOError(f"{fname}: unsupported region line(s) (bkgjax reads physical, image, fk5, icrs "
                            f"shapes): {'; '.join(skipped)}")
    if len(regs) == 0:
        raise BkgjaxIOError(f"{fname}: no region shape found")
    sky, chip, world = [], [], []
    for reg in regs:
        include = bool(reg.meta.get("include", 1))
        tags = reg.meta.get("tag", []) or []
        ccd = None
        for t in tags:
            m = re.fullmatch(r"\s*ccd_id\s*=\s*(\S+)\s*", str(t))
            if m:
                try:
                    ccd = int(m.group(1))
                except ValueError:
                    ccd = -1
                if not 0 <= ccd <= 9:
                    raise BkgjaxIOError(f"{fname}: tag {{{t}}} must name an ACIS CCD 0..9")
        if isinstance(reg, SkyRegion):
            if ccd is not None:
                raise BkgjaxIOError(f"{fname}: chip shapes (tag={{ccd_id=N}}) must be in image coordinates")
            world.append((include, reg))
        elif isinstance(reg, PixelRegion):
            (chip.append((include, ccd, reg)) if ccd is not None else sky.append((include, reg)))
        else:  # pragma: no cover - defensive
            raise BkgjaxIOError(f"{fname}: unsupported region {reg!r}")
    return EventRegion(path=fname, sky=tuple(sky), chip=tuple(chip), sky_world=tuple(world))


def _events_wcs(events: ChandraEvents, where: str):
    from astropy.wcs import WCS

    w = events.sky_wcs or {}
    need = [f"{k}_{a}" for a in ("x", "y") for k in ("TCTYP", "TCRVL", "TCRPX", "TCDLT")]
    missing = [k for k in need if k not in w]
    if missing:
        lacking = ", ".join(f"{k[:-2]}(column {k[-1]})" for k in missing)
        raise BkgjaxIOError(f"{where}: fk5/icrs shapes need the sky WCS of the event file "
                            f"{events.path}, which lacks {lacking}")
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = [str(w["TCTYP_x"]), str(w["TCTYP_y"])]
    wcs.wcs.crval = [float(w["TCRVL_x"]), float(w["TCRVL_y"])]
    wcs.wcs.crpix = [float(w["TCRPX_x"]), float(w["TCRPX_y"])]
    wcs.wcs.cdelt = [float(w["TCDLT_x"]), float(w["TCDLT_y"])]
    return wcs


def _chip_to_sky_affine(events: ChandraEvents, ccd: int, where: str):
    """Least-squares affine map (chipx, chipy, 1) -> (x, y) of one CCD from its events."""
    sel = events.ccd_id == ccd
    if np.count_nonzero(sel) < 10:
        raise ValueError(f"{where}: CCD {ccd} has {int(np.count_nonzero(sel))} events in {events.path}; "
                         "at least 10 are needed to map its chip pixels onto the sky")
    a = np.stack([events.chipx[sel], events.chipy[sel], np.ones(np.count_nonzero(sel))], axis=1).astype(float)
    coef, *_ = np.linalg.lstsq(a, np.stack([events.x[sel], events.y[sel]], axis=1), rcond=None)
    return coef  # (3, 2)


def region_slice_fractions(region: EventRegion, events: ChandraEvents, ccds=None, *, step: int = 4) -> dict:
    """Fraction of each CHIPY slice's area (32 rows x 1024 columns) inside the region, per CCD.

    Evaluated on a grid of chip pixel centres every ``step`` pixels (``step=1``: every pixel).
    Chip shapes use the grid directly; sky shapes map it with an affine chip -> sky fit to the
    CCD's events (see module docstring).  Returns ``{ccd_id: ndarray (32,)}`` for ``ccds``
    (default: the CCDs present in the event file).

    Raises
    ------
    ValueError
        The region covers no area of any of these CCDs (message names region and event file).
    """
    if ACIS_CHIP_PIXELS % step:
        raise ValueError(f"step={step} must divide {ACIS_CHIP_PIXELS}")
    where = region.path or "<in-memory region>"
    ccds = sorted(set(int(c) for c in np.unique(events.ccd_id))) if ccds is None else [int(c) for c in ccds]
    g = np.arange(1 + (step - 1) / 2.0, ACIS_CHIP_PIXELS + 1, step)
    gx, gy = np.meshgrid(g, g)  # gy varies along axis 0 (rows)
    gx, gy = gx.ravel(), gy.ravel()
    has_sky = bool(region.sky or region.sky_world)
    out = {}
    for c in ccds:
        if has_sky:
            coef = _chip_to_sky_affine(events, c, where)
            sx, sy = (np.stack([gx, gy, np.ones_like(gx)], axis=1) @ coef).T
        else:
            sx = sy = np.zeros_like(gx)
        inside = region._contains(events, sx, sy, np.full(gx.shape, c), gx, gy)
        per_row = inside.reshape(g.size, g.size).mean(axis=1)  # fraction per grid row
        out[c] = per_row.reshape(_N_SLICES, -1).mean(axis=1)
    if not any(np.any(v > 0) for v in out.values()):
        raise ValueError(f"region {where} covers no chip area of CCD(s) {ccds} of {events.path}")
    return out
