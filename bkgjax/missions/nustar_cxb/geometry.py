"""NuSTAR focal plane geometry for the aperture (stray-light) cosmic X-ray background.

Reference: Krivonos et al. 2021, MNRAS 502, 3966 ("NuSTAR measurement of the CXB in the
3-20 keV band using stray light"), sections 2 and 4.  The expected counts in RAW pixel
(DET_ID, RAWY, RAWX) and energy band b are their eq. (2)::

    P = (N_bkg * M_bkg + N_apt * R_pix * A_det(E) * A_Be(E) * S * Omega) * T

with S = :data:`PIXEL_AREA_CM2` = 0.0036 cm^2 the geometric pixel area, Omega the open-sky
solid angle of the pixel through the aperture stop (deg^2), A_det the CdZnTe dead-layer
transmission of the chip (CALDB DETABS), A_Be the Be-window transmission and T the exposure
(s).  N_apt is then in counts s^-1 cm^-2 deg^-2.  This module provides the pure-NumPy
ingredients:

* PI <-> energy: E = 1.6 keV + 0.04 keV * PI (:func:`pi_to_energy`, :func:`energy_to_pi`);
* the paper's 20 logarithmic bands in 3-20 keV snapped to the PI grid (:func:`energy_bands`,
  :func:`band_pi_edges`) and per-band RAW-pixel count cubes (:func:`bin_events`);
* :class:`NustarGeometry`: Omega per RAW pixel, the pixel mask, and A_det * A_Be with its
  CXB-weighted band average (:meth:`NustarGeometry.band_efficiency`);
* the paper's 64 x 64 display mosaic (Fig. 2) (:func:`to_mosaic`, :func:`from_mosaic`).

Omega convention (shared-data README, ``nustar/aperture``; nuskybgd, Wik et al. 2014)
----------------------------------------------------------------------------------
The nuskybgd image ``det{A,B}_det1.img`` (576 x 576 DET1 sub-pixels of 0.12096 mm, padded by
108 on every side) is shifted, on the NumPy array [row = y, col = x], by +dx/0.12096
sub-pixels along x (columns) and +dy/0.12096 along y (rows) with linear interpolation and
edge values extended (``scipy.ndimage.shift(order=1, mode='nearest')``), where (dx, dy) is the
mast shift :data:`MAST_SHIFT_MM` (nuskybgd ``nomapbgdparams.dat``); then cropped to
``[108:468, 108:468]`` (so that ``omega_det1[DET1Y-1, DET1X-1]``), :data:`APERTURE_CONSTANT` is
added and the sum multiplied by :data:`APERTURE_UNIT_DEG2` (deg^2).  Omega of a RAW pixel is
the MEAN over the DET1 sub-pixels that the CALDB instrument map (pixmap: RAWX + 32*RAWY,
detnum: DET_ID, -1 in gaps) assigns to it.

Shipped maps
------------
``bkgjax/missions/nustar_cxb/data/geometry_FPMA.npz`` and ``geometry_FPMB.npz`` (read by
:func:`load_geometry`) are regenerated from the shared data folder with::

    python -m bkgjax.missions.nustar_cxb.geometry --data /path/to/shared/data/nustar --out bkgjax/missions/nustar_cxb/data

which reads ``aperture/det{A,B}_det1.img.gz``, ``aperture/pixmap{A,B}.fits``,
``aperture/detnum{A,B}.fits``, ``aperture/be.arf`` and ``caldb/nuAdetabs20100101v002.fits``
(see :func:`derive_geometry`).  The transmission curves are stored on the CALDB 0.04 keV grid
restricted to 1.6-80 keV (:data:`TRANSMISSION_EMAX_KEV`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import io as _io
import os
import sys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bkgjax.missions.nustar_cxb.caldb import (
    read_aperture_image,
    read_detabs,
    read_instrument_map,
    read_transmission_arf,
)

__all__ = [
    "PIXEL_AREA_CM2",
    "FPMS",
    "N_CHIPS",
    "CHIP_PIXELS",
    "PI_E0_KEV",
    "PI_STEP_KEV",
    "GRADE_MAX",
    "SUBPIXEL_MM",
    "APERTURE_UNIT_DEG2",
    "APERTURE_CONSTANT",
    "MAST_SHIFT_MM",
    "APERTURE_PAD",
    "TRANSMISSION_EMAX_KEV",
    "CXB_PHOTON_INDEX",
    "CXB_EFOLD_KEV",
    "pi_to_energy",
    "energy_to_pi",
    "energy_bands",
    "band_pi_edges",
    "NustarGeometry",
    "aperture_det1",
    "raw_pixel_mean",
    "derive_geometry",
    "save_geometry",
    "read_geometry",
    "load_geometry",
    "to_mosaic",
    "from_mosaic",
    "bin_events",
    "main",
]

#: Geometric area of one RAW pixel (0.6 mm x 0.6 mm) in cm^2 (paper eq. 2, "S").
PIXEL_AREA_CM2 = 0.0036
#: The two focal plane modules.
FPMS = ("FPMA", "FPMB")
#: Chips (DET_ID 0..3) per focal plane module.
N_CHIPS = 4
#: RAW pixels per chip side (RAWX, RAWY in 0..31).
CHIP_PIXELS = 32
#: Energy of PI channel 0 (keV): E = PI_E0_KEV + PI_STEP_KEV * PI.
PI_E0_KEV = 1.6
#: Width of one PI channel (keV).
PI_STEP_KEV = 0.04
#: Highest good event grade.
GRADE_MAX = 26
#: DET1 sub-pixel size (mm); 5 x 5 sub-pixels (0.6 mm) ~ one RAW pixel.
SUBPIXEL_MM = 0.12096
#: Conversion of the nuskybgd aperture image to deg^2 per sub-pixel-equivalent solid angle.
APERTURE_UNIT_DEG2 = 3.1865e-5
#: Constant added to the shifted aperture image (image units), as in nuskybgd.
APERTURE_CONSTANT = 0.00495 * 0.7
#: Mast shift (dx, dy) in mm applied to the aperture image (nuskybgd nomapbgdparams.dat).
MAST_SHIFT_MM = {"FPMA": (-3.4, 2.0), "FPMB": (-3.5, 1.6)}
#: Padding (sub-pixels) of the 576 x 576 aperture image around the 360 x 360 DET1 frame.
APERTURE_PAD = 108
#: Upper energy (keV) of the transmission curves kept in the geometry.
TRANSMISSION_EMAX_KEV = 80.0
#: Gruber et al. (1999) CXB photon index (paper eq. 1: E^-0.29 in energy flux -> E^-1.29 photons).
CXB_PHOTON_INDEX = 1.29
#: Gruber et al. (1999) CXB e-folding energy (keV).
CXB_EFOLD_KEV = 41.13

_NPZ_FORMAT = 1
_DET1_SIZE = 360
_MOSAIC = 2 * CHIP_PIXELS


# ---------------------------------------------------------------------------
# PI grid and energy bands
# ---------------------------------------------------------------------------


def pi_to_energy(pi):
    """Energy (keV, float64) of the lower edge of PI channel ``pi``: 1.6 + 0.04 * PI.

    PI channel k holds events with energy in [1.6 + 0.04 k, 1.6 + 0.04 (k + 1)) keV.
    """
    return (PI_E0_KEV + PI_STEP_KEV * np.asarray(pi, dtype=np.float64))[()]


def energy_to_pi(energy):
    """Nearest PI grid index (int64) of an energy in keV: round((E - 1.6) / 0.04)."""
    return np.rint((np.asarray(energy, dtype=np.float64) - PI_E0_KEV) / PI_STEP_KEV).astype(np.int64)[()]


def energy_bands(e_min: float = 3.0, e_max: float = 20.0, n_bands: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Logarithmically spaced energy bands with edges snapped to the PI grid (paper section 2).

    The ``n_bands + 1`` edges ``geomspace(e_min, e_max)`` are each moved to the nearest
    1.6 + 0.04 k keV.  An event belongs to band b when
    ``energy_to_pi(e_lo[b]) <= PI < energy_to_pi(e_hi[b])`` (see :func:`band_pi_edges`),
    i.e. e_lo[b] <= E < e_hi[b].

    Returns
    -------
    e_lo, e_hi : ndarray of float64, shape (n_bands,)
        Band edges in keV, strictly increasing, ``e_hi[b] == e_lo[b + 1]``.

    Raises
    ------
    ValueError
        Invalid range, e_min below 1.6 keV (PI 0), or two edges snapping to the same channel.
    """
    n_bands = int(n_bands)
    if n_bands < 1:
        raise ValueError(f"n_bands must be >= 1 (got {n_bands})")
    if not (np.isfinite(e_min) and np.isfinite(e_max) and PI_E0_KEV <= e_min < e_max):
        raise ValueError(f"need {PI_E0_KEV} keV <= e_min < e_max (got e_min={e_min!r}, e_max={e_max!r})")
    k = energy_to_pi(np.geomspace(float(e_min), float(e_max), n_bands + 1))
    if np.any(np.diff(k) <= 0):
        i = int(np.flatnonzero(np.diff(k) <= 0)[0])
        raise ValueError(f"band edges {i} and {i + 1} snap to the same PI channel {int(k[i])} "
                         f"({float(pi_to_energy(k[i])):.2f} keV): too many bands ({n_bands}) for "
                         f"{e_min}-{e_max} keV on the 0.04 keV PI grid")
    edges = pi_to_energy(k)
    return edges[:-1].copy(), edges[1:].copy()


def band_pi_edges(e_lo, e_hi) -> tuple[np.ndarray, np.ndarray]:
    """PI channel ranges of energy bands: band b holds ``pi_lo[b] <= PI < pi_hi[b]``.

    ``pi_lo = energy_to_pi(e_lo)``, ``pi_hi = energy_to_pi(e_hi)`` (int64); edges off the PI
    grid are rounded to the nearest channel boundary.  Raises ValueError if a band is empty
    or negative.
    """
    pi_lo = np.atleast_1d(energy_to_pi(e_lo))
    pi_hi = np.atleast_1d(energy_to_pi(e_hi))
    if pi_lo.shape != pi_hi.shape or pi_lo.ndim != 1:
        raise ValueError(f"e_lo and e_hi must be 1-D of equal length (got {pi_lo.shape}, {pi_hi.shape})")
    if np.any(pi_hi <= pi_lo):
        i = int(np.flatnonzero(pi_hi <= pi_lo)[0])
        raise ValueError(f"band {i} is empty on the PI grid: PI [{int(pi_lo[i])}, {int(pi_hi[i])})")
    if np.any(pi_lo < 0):
        raise ValueError("band edges below 1.6 keV (negative PI)")
    return pi_lo, pi_hi


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def check_fpm(fpm: str) -> str:
    """Normalise a module name ('A', 'fpmb', ...) to 'FPMA'/'FPMB'; ValueError otherwise."""
    f = str(fpm).strip().upper()
    if f in ("A", "B"):
        f = "FPM" + f
    if f not in FPMS:
        raise ValueError(f"unknown focal plane module {fpm!r} (expected one of {FPMS})")
    return f


@dataclass(frozen=True, eq=False)
class NustarGeometry:
    """Aperture geometry and transmission of one NuSTAR focal plane module.

    Attributes
    ----------
    fpm : str
        ``"FPMA"`` or ``"FPMB"``.
    omega : ndarray of float64, shape (4, 32, 32)
        Open-sky solid angle through the aperture stop per RAW pixel (deg^2), indexed
        ``[DET_ID, RAWY, RAWX]``; 0 where ``pixel_mask`` is False.  The Omega of paper eq. 2
        (section 4, Fig. 2).
    pixel_mask : ndarray of bool, shape (4, 32, 32)
        True where the RAW pixel appears in the CALDB instrument map.
    n_subpixels : ndarray of int64, shape (4, 32, 32)
        Number of DET1 sub-pixels averaged into each RAW pixel.
    energy_lo, energy_hi : ndarray of float64, shape (n,)
        Energy grid (keV) of the transmission curves.
    detabs : ndarray of float64, shape (4, n)
        CdZnTe dead-layer transmission per chip, A_det of eq. 2 (CALDB DETABS).
    be_window : ndarray of float64, shape (n,)
        Be-window / MLI transmission, A_Be of eq. 2.
    """

    fpm: str
    omega: np.ndarray
    pixel_mask: np.ndarray
    n_subpixels: np.ndarray
    energy_lo: np.ndarray
    energy_hi: np.ndarray
    detabs: np.ndarray
    be_window: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "fpm", check_fpm(self.fpm))
        cube = (N_CHIPS, CHIP_PIXELS, CHIP_PIXELS)
        omega = np.asarray(self.omega, dtype=np.float64)
        mask = np.asarray(self.pixel_mask, dtype=bool)
        nsub = np.asarray(self.n_subpixels, dtype=np.int64)
        for name, a in (("omega", omega), ("pixel_mask", mask), ("n_subpixels", nsub)):
            if a.shape != cube:
                raise ValueError(f"NustarGeometry.{name} must have shape {cube}, got {a.shape}")
        if not np.all(np.isfinite(omega)) or np.any(omega < 0):
            raise ValueError("NustarGeometry.omega must be finite and >= 0")
        if np.any(omega[~mask] != 0):
            raise ValueError("NustarGeometry.omega must be 0 where pixel_mask is False")
        lo = np.asarray(self.energy_lo, dtype=np.float64)
        hi = np.asarray(self.energy_hi, dtype=np.float64)
        det = np.asarray(self.detabs, dtype=np.float64)
        be = np.asarray(self.be_window, dtype=np.float64)
        if lo.ndim != 1 or lo.shape != hi.shape or lo.size < 2 or np.any(hi <= lo) or np.any(np.diff(lo) <= 0):
            raise ValueError("NustarGeometry.energy_lo/energy_hi must be a strictly increasing 1-D grid")
        if det.shape != (N_CHIPS, lo.size) or be.shape != lo.shape:
            raise ValueError(f"NustarGeometry.detabs must be (4, {lo.size}) and be_window ({lo.size},); "
                             f"got {det.shape} and {be.shape}")
        for name, a in (("detabs", det), ("be_window", be)):
            if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
                raise ValueError(f"NustarGeometry.{name} must be a transmission in [0, 1]")
        for name, a in (("omega", omega), ("pixel_mask", mask), ("n_subpixels", nsub), ("energy_lo", lo),
                        ("energy_hi", hi), ("detabs", det), ("be_window", be)):
            object.__setattr__(self, name, _ro(a))

    def transmission(self, energy) -> np.ndarray:
        """A_det,chip(E) * A_Be(E) (paper eq. 2), shape (4, len(energy)).

        Each curve is linearly interpolated in energy (keV) between the grid-bin midpoints
        (constant beyond the first/last midpoint).
        """
        e = np.atleast_1d(np.asarray(energy, dtype=np.float64))
        if e.ndim != 1:
            raise ValueError(f"energy must be a scalar or 1-D array (got shape {e.shape})")
        mid = 0.5 * (self.energy_lo + self.energy_hi)
        be = np.interp(e, mid, self.be_window)
        return np.stack([np.interp(e, mid, self.detabs[d]) for d in range(N_CHIPS)]) * be

    def band_efficiency(self, e_lo, e_hi, photon_index: float = CXB_PHOTON_INDEX, e_fold: float = CXB_EFOLD_KEV,
                        n_sub: int = 64) -> np.ndarray:
        """Band-averaged A_det * A_Be weighted by the CXB photon spectrum, shape (n_bands, 4).

        eff[b, d] = int_{e_lo[b]}^{e_hi[b]} T_d(E) N(E) dE / int_{e_lo[b]}^{e_hi[b]} N(E) dE

        with T_d = :meth:`transmission` and N(E) = E^-photon_index exp(-E/e_fold) the Gruber et
        al. (1999) CXB of paper eq. 1 in photons (E^-0.29 energy flux -> E^-1.29 photons).
        Both integrals use the trapezoidal rule on ``n_sub`` equal steps per band.
        """
        lo = np.atleast_1d(np.asarray(e_lo, dtype=np.float64))
        hi = np.atleast_1d(np.asarray(e_hi, dtype=np.float64))
        if lo.shape != hi.shape or lo.ndim != 1 or np.any(hi <= lo):
            raise ValueError("e_lo/e_hi must be 1-D arrays of equal length with e_hi > e_lo")
        if lo.min() < self.energy_lo[0] or hi.max() > self.energy_hi[-1]:
            raise ValueError(f"bands must lie within the transmission grid {self.energy_lo[0]:.3g}-"
                             f"{self.energy_hi[-1]:.3g} keV")
        n_sub = int(n_sub)
        if n_sub < 1:
            raise ValueError("n_sub must be >= 1")
        t = np.linspace(0.0, 1.0, n_sub + 1)
        e = lo[:, None] + (hi - lo)[:, None] * t                      # [n_bands, n_sub + 1]
        w = e ** (-float(photon_index)) * np.exp(-e / float(e_fold))  # photons / keV
        tr = self.transmission(e.ravel()).reshape(N_CHIPS, *e.shape)  # [4, n_bands, n_sub + 1]
        wt = np.full(n_sub + 1, 1.0)
        wt[[0, -1]] = 0.5                                             # trapezoid weights (equal steps)
        num = np.einsum("dbk,bk,k->bd", tr, w, wt)
        den = np.einsum("bk,k->b", w, wt)
        return num / den[:, None]


def aperture_det1(image, fpm: str) -> np.ndarray:
    """Open-sky solid angle (deg^2) on the 360 x 360 DET1 sub-pixel grid, ``[DET1Y-1, DET1X-1]``.

    ``image`` is the 576 x 576 nuskybgd aperture image.  Shift by (+dy, +dx)/0.12096 sub-pixels
    along (rows, columns) with (dx, dy) = MAST_SHIFT_MM[fpm], linear interpolation and edge
    values extended; crop [108:468, 108:468]; add APERTURE_CONSTANT; times APERTURE_UNIT_DEG2.
    """
    fpm = check_fpm(fpm)
    img = np.asarray(image, dtype=np.float64)
    if img.shape != (_DET1_SIZE + 2 * APERTURE_PAD,) * 2:
        raise ValueError(f"aperture image must be {(_DET1_SIZE + 2 * APERTURE_PAD,) * 2}, got {img.shape}")
    dx, dy = MAST_SHIFT_MM[fpm]
    shifted = ndimage.shift(img, (dy / SUBPIXEL_MM, dx / SUBPIXEL_MM), order=1, mode="nearest")
    crop = shifted[APERTURE_PAD:APERTURE_PAD + _DET1_SIZE, APERTURE_PAD:APERTURE_PAD + _DET1_SIZE]
    return (crop + APERTURE_CONSTANT) * APERTURE_UNIT_DEG2


def raw_pixel_mean(det1_map, pixmap, detnum) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a 360 x 360 DET1 map over the sub-pixels of each RAW pixel.

    ``pixmap`` (RAWX + 32*RAWY) and ``detnum`` (DET_ID) are CALDB instrument maps indexed
    ``[DET1Y-1, DET1X-1]``, -1 in gaps.  Returns ``(mean, n)``, both (4, 32, 32) indexed
    ``[DET_ID, RAWY, RAWX]``; mean is 0 where n == 0.
    """
    v = np.asarray(det1_map, dtype=np.float64)
    pm = np.asarray(pixmap, dtype=np.int64)
    dn = np.asarray(detnum, dtype=np.int64)
    if not (v.shape == pm.shape == dn.shape):
        raise ValueError(f"det1_map, pixmap and detnum must have the same shape ({v.shape}, {pm.shape}, {dn.shape})")
    ok = (pm >= 0) & (dn >= 0)
    if np.any((pm >= 0) != (dn >= 0)):
        raise ValueError("pixmap and detnum disagree on the gaps (-1)")
    if np.any(pm[ok] >= CHIP_PIXELS**2) or np.any(dn[ok] >= N_CHIPS):
        raise ValueError("pixmap values must be < 1024 and detnum values < 4")
    flat = dn[ok] * CHIP_PIXELS**2 + pm[ok]          # DET_ID*1024 + RAWY*32 + RAWX
    size = N_CHIPS * CHIP_PIXELS**2
    n = np.bincount(flat, minlength=size)
    s = np.bincount(flat, weights=v[ok], minlength=size)
    mean = np.where(n > 0, s / np.maximum(n, 1), 0.0)
    shape = (N_CHIPS, CHIP_PIXELS, CHIP_PIXELS)
    return mean.reshape(shape), n.reshape(shape)


def derive_geometry(fpm: str, nustar_dir) -> NustarGeometry:
    """Build the :class:`NustarGeometry` of ``fpm`` from the NuSTAR aperture/CALDB files.

    Reads, under ``nustar_dir``: ``aperture/det{A,B}_det1.img.gz`` (nuskybgd aperture image),
    ``aperture/pixmap{A,B}.fits`` and ``aperture/detnum{A,B}.fits`` (CALDB instrument map),
    ``caldb/nuAdetabs20100101v002.fits`` (CALDB DETABS) and ``aperture/be.arf`` (Be window).
    Omega follows the module-level convention (:func:`aperture_det1`, :func:`raw_pixel_mean`).

    FPMB uses FPMA's per-chip DETABS curves (``nuAdetabs``) as an approximation: no FPMB
    DETABS file is available in the shared data.

    The transmission curves are kept on the DETABS grid for bins with ENERG_HI <=
    TRANSMISSION_EMAX_KEV (80 keV); the Be window is linearly interpolated onto the DETABS
    grid midpoints.
    """
    fpm = check_fpm(fpm)
    root = os.fspath(nustar_dir)
    ab = fpm[-1]
    image = read_aperture_image(os.path.join(root, "aperture", f"det{ab}_det1.img.gz"))
    pixmap = read_instrument_map(os.path.join(root, "aperture", f"pixmap{ab}.fits"))
    detnum = read_instrument_map(os.path.join(root, "aperture", f"detnum{ab}.fits"))
    omega, n = raw_pixel_mean(aperture_det1(image, fpm), pixmap, detnum)
    mask = n > 0

    e_lo, e_hi, det = read_detabs(os.path.join(root, "caldb", "nuAdetabs20100101v002.fits"))
    b_lo, b_hi, be = read_transmission_arf(os.path.join(root, "aperture", "be.arf"))
    keep = e_hi <= TRANSMISSION_EMAX_KEV + 1e-6
    e_lo, e_hi, det = e_lo[keep], e_hi[keep], det[:, keep]
    be_on_grid = np.interp(0.5 * (e_lo + e_hi), 0.5 * (b_lo + b_hi), be)
    return NustarGeometry(fpm=fpm, omega=np.where(mask, omega, 0.0), pixel_mask=mask, n_subpixels=n,
                          energy_lo=e_lo, energy_hi=e_hi, detabs=det, be_window=be_on_grid)


def save_geometry(geometry: NustarGeometry, path) -> str:
    """Write ``geometry`` to a compressed ``.npz`` (float64 omega); returns the absolute path."""
    out = os.path.abspath(os.fspath(path))
    dx, dy = MAST_SHIFT_MM[geometry.fpm]
    with open(out, "wb") as fh:
        np.savez_compressed(
            fh, format_version=np.int64(_NPZ_FORMAT), fpm=np.str_(geometry.fpm),
            omega=geometry.omega, pixel_mask=geometry.pixel_mask,
            n_subpixels=geometry.n_subpixels.astype(np.int16),
            energy_lo=geometry.energy_lo, energy_hi=geometry.energy_hi,
            detabs=geometry.detabs, be_window=geometry.be_window,
            mast_shift_mm=np.array([dx, dy]),
            note=np.str_("Omega [DET_ID,RAWY,RAWX] deg^2 per RAW pixel (bkgjax.missions.nustar_cxb.geometry); "
                         "nuskybgd aperture image (MIT) + NuSTAR CALDB instrument map, DETABS (FPMA) "
                         "and nuskybgd be.arf"),
        )
    return out


def read_geometry(path) -> NustarGeometry:
    """Read a geometry ``.npz`` written by :func:`save_geometry` (path or binary file object)."""
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format_version"])
        if version != _NPZ_FORMAT:
            raise ValueError(f"{path}: unsupported geometry format_version {version}")
        return NustarGeometry(fpm=str(z["fpm"]), omega=z["omega"], pixel_mask=z["pixel_mask"],
                              n_subpixels=z["n_subpixels"].astype(np.int64), energy_lo=z["energy_lo"],
                              energy_hi=z["energy_hi"], detabs=z["detabs"], be_window=z["be_window"])


@functools.lru_cache(maxsize=len(FPMS))  # one entry per focal-plane module
def _load_shipped(fpm: str) -> NustarGeometry:
    res = importlib.resources.files("bkgjax.missions.nustar_cxb").joinpath("data", f"geometry_{fpm}.npz")
    with res.open("rb") as fh:
        return read_geometry(_io.BytesIO(fh.read()))


def load_geometry(fpm: str) -> NustarGeometry:
    """The shipped geometry of ``fpm`` (``bkgjax/missions/nustar_cxb/data/geometry_{fpm}.npz``), cached.

    The arrays are read-only, so the cached object can be shared.
    """
    return _load_shipped(check_fpm(fpm))


# ---------------------------------------------------------------------------
# 64 x 64 mosaic (paper Fig. 2) and event binning
# ---------------------------------------------------------------------------
#
# Orientation of each chip in DET1, from the CALDB pixmap/detnum (mean DET1X/DET1Y of the
# sub-pixels of every RAW pixel; identical for FPMA and FPMB, checked in the tests):
#
#   chip  position in DET1     DET1X grows with   DET1Y grows with   mosaic block[row, col]
#   DET0  upper right (x, y)   +RAWY              +RAWX              cube[0].T
#   DET1  upper left           -RAWX              +RAWY              cube[1][:, ::-1]
#   DET2  bottom left          -RAWY              -RAWX              cube[2].T[::-1, ::-1]
#   DET3  bottom right         +RAWX              -RAWY              cube[3][::-1, :]
#
# so the mosaic [row = DET1Y direction, col = DET1X direction] shown with origin='lower' looks
# like the DET1 image, with DET0 upper right, DET1 upper left, DET2 bottom left, DET3 bottom
# right (paper Fig. 2).  The mosaic leaves out the physical inter-chip gaps.


def _chip_blocks():
    c = CHIP_PIXELS
    return ((0, slice(c, 2 * c), slice(c, 2 * c)), (1, slice(c, 2 * c), slice(0, c)),
            (2, slice(0, c), slice(0, c)), (3, slice(0, c), slice(c, 2 * c)))


def _chip_to_block(chip: np.ndarray, det: int) -> np.ndarray:
    if det == 0:
        return np.swapaxes(chip, -1, -2)
    if det == 1:
        return chip[..., :, ::-1]
    if det == 2:
        return np.swapaxes(chip, -1, -2)[..., ::-1, ::-1]
    return chip[..., ::-1, :]


def _block_to_chip(block: np.ndarray, det: int) -> np.ndarray:
    if det == 0:
        return np.swapaxes(block, -1, -2)
    if det == 1:
        return block[..., :, ::-1]
    if det == 2:
        return np.swapaxes(block[..., ::-1, ::-1], -1, -2)
    return block[..., ::-1, :]


def to_mosaic(cube) -> np.ndarray:
    """RAW cube ``[..., 4, 32, 32]`` ([DET_ID, RAWY, RAWX]) -> display mosaic ``[..., 64, 64]``.

    Layout of paper Fig. 2 for ``imshow(origin='lower')``: DET0 upper right, DET1 upper left,
    DET2 bottom left, DET3 bottom right, every chip oriented as in DET1 coordinates (mosaic
    column ~ DET1X, row ~ DET1Y).  Every mosaic pixel is a real RAW pixel (no gaps are drawn),
    so values are copied unchanged; mask pixels yourself (e.g. with ``pixel_mask``) if needed.
    :func:`from_mosaic` is the exact inverse.
    """
    a = np.asarray(cube)
    if a.shape[-3:] != (N_CHIPS, CHIP_PIXELS, CHIP_PIXELS):
        raise ValueError(f"cube must end with shape (4, 32, 32), got {a.shape}")
    out = np.zeros(a.shape[:-3] + (_MOSAIC, _MOSAIC), dtype=a.dtype)
    for det, rows, cols in _chip_blocks():
        out[..., rows, cols] = _chip_to_block(a[..., det, :, :], det)
    return out


def from_mosaic(image) -> np.ndarray:
    """Display mosaic ``[..., 64, 64]`` -> RAW cube ``[..., 4, 32, 32]`` (inverse of :func:`to_mosaic`)."""
    m = np.asarray(image)
    if m.shape[-2:] != (_MOSAIC, _MOSAIC):
        raise ValueError(f"image must end with shape (64, 64), got {m.shape}")
    out = np.empty(m.shape[:-2] + (N_CHIPS, CHIP_PIXELS, CHIP_PIXELS), dtype=m.dtype)
    for det, rows, cols in _chip_blocks():
        out[..., det, :, :] = _block_to_chip(m[..., rows, cols], det)
    return out


def bin_events(events, e_lo, e_hi) -> np.ndarray:
    """Counts per energy band and RAW pixel, int64 ``[n_bands, 4, 32, 32]`` ([band, DET_ID, RAWY, RAWX]).

    ``events`` is an :class:`bkgjax.missions.nustar_cxb.events.EventList` (or anything with integer arrays ``det_id``,
    ``rawx``, ``rawy``, ``pi``); band b counts events with PI in
    ``[energy_to_pi(e_lo[b]), energy_to_pi(e_hi[b]))`` (:func:`band_pi_edges`).  Events outside
    every band are ignored; overlapping bands count an event in each.
    """
    pi_lo, pi_hi = band_pi_edges(e_lo, e_hi)
    det = np.asarray(events.det_id, dtype=np.int64)
    rawx = np.asarray(events.rawx, dtype=np.int64)
    rawy = np.asarray(events.rawy, dtype=np.int64)
    pi = np.asarray(events.pi, dtype=np.int64)
    if not (det.shape == rawx.shape == rawy.shape == pi.shape) or det.ndim != 1:
        raise ValueError("events.det_id, rawx, rawy and pi must be 1-D arrays of equal length")
    if np.any((det < 0) | (det >= N_CHIPS) | (rawx < 0) | (rawx >= CHIP_PIXELS)
              | (rawy < 0) | (rawy >= CHIP_PIXELS)):
        raise ValueError("events hold DET_ID outside 0..3 or RAWX/RAWY outside 0..31")
    pix = (det * CHIP_PIXELS + rawy) * CHIP_PIXELS + rawx
    size = N_CHIPS * CHIP_PIXELS**2
    out = np.zeros((pi_lo.size, size), dtype=np.int64)
    for b in range(pi_lo.size):
        sel = (pi >= pi_lo[b]) & (pi < pi_hi[b])
        out[b] = np.bincount(pix[sel], minlength=size)
    return out.reshape(pi_lo.size, N_CHIPS, CHIP_PIXELS, CHIP_PIXELS)


# ---------------------------------------------------------------------------
# command line: regenerate the shipped maps
# ---------------------------------------------------------------------------


def _summary(g: NustarGeometry) -> str:
    parts = []
    for d in range(N_CHIPS):
        o = g.omega[d][g.pixel_mask[d]]
        parts.append(f"det{d} {o.min():.2f}-{o.max():.2f}")
    return (f"{g.fpm}: Omega per RAW pixel (deg^2) {', '.join(parts)}; mean {g.omega[g.pixel_mask].mean():.3f}; "
            f"{int(g.pixel_mask.sum())} pixels")


def main(argv=None) -> int:
    """``python -m bkgjax.missions.nustar_cxb.geometry --data DIR --out DIR``: write geometry_FPM{A,B}.npz."""
    p = argparse.ArgumentParser(prog="python -m bkgjax.missions.nustar_cxb.geometry",
                                description="Regenerate the shipped NuSTAR geometry maps geometry_FPM{A,B}.npz")
    p.add_argument("--data", required=True, help="NuSTAR shared-data folder holding aperture/ and caldb/")
    p.add_argument("--out", required=True, help="output folder (e.g. bkgjax/missions/nustar_cxb/data)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for fpm in FPMS:
        g = derive_geometry(fpm, args.data)
        out = save_geometry(g, os.path.join(args.out, f"geometry_{fpm}.npz"))
        print(f"{out} ({os.path.getsize(out)} bytes)")
        print("  " + _summary(g))
    return 0


if __name__ == "__main__":
    sys.exit(main())
