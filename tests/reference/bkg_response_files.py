"""Files of a background that names its own response, shared by
``make_sherpa_bkg_response_reference.py`` (Sherpa) and ``tests/test_background_response.py``
(bkgjax), so that both read the same bytes.  NumPy and astropy only.

From the real NuSTAR Vela X-1 FPMA spectra (``../shared/data/spectra/nustar_velax1``) and the
NuSTAR aperture files (``../shared/data/nustar/aperture``), :func:`write_case` writes into a
folder:

* ``diag.rmf``, ``sr.arf``, ``fcxbA.arf``: symbolic links to the shared diagonal NuSTAR RMF, the
  FPMA source ARF and the focused-CXB ARF (same 4096-bin energy grid as the source ARF, another
  effective-area curve);
* ``bkg_blur.rmf``: a redistribution matrix (HDUCLAS3 'REDIST') on ``diag.rmf``'s energy grid
  and channels whose energy row ``i`` spreads over channels ``i-1, i, i+1`` with
  :data:`BLUR` (the row sums are 1; the first and last rows keep two channels);
* ``sr.pha``: the FPMA source spectrum with BACKFILE ``bk.pha``, RESPFILE ``diag.rmf``,
  ANCRFILE ``sr.arf``;
* ``bk.pha``: the FPMA background spectrum with RESPFILE ``bkg_blur.rmf`` and ANCRFILE
  ``fcxbA.arf``: its own response, different from the source's in both matrix and area.

All names in the headers are relative to the file's folder (the OGIP convention; Sherpa and
bkgjax resolve them the same way).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits

#: Redistribution of photon energy bin i over channels (i-1, i, i+1).
BLUR = (0.2, 0.55, 0.25)
VELAX1 = ("spectra", "nustar_velax1")
APERTURE = ("nustar", "aperture")


def link(target: Path, name: Path) -> Path:
    """A symbolic link ``name`` -> ``target`` (replaced if present)."""
    if name.is_symlink() or name.exists():
        name.unlink()
    os.symlink(target, name)
    return name


def copy_pha(source: Path, destination: Path, **keywords) -> Path:
    """Copy of a PHA file with header keywords of its SPECTRUM extension (HDU 1) changed."""
    with fits.open(source) as hdul:
        for key, value in keywords.items():
            hdul[1].header[key] = value
        hdul.writeto(destination, overwrite=True)
    return destination


def write_blurred_rmf(diagonal_rmf: Path, destination: Path, blur=BLUR) -> Path:
    """``diagonal_rmf``'s energy grid and EBOUNDS with row i spread over channels i-1..i+1."""
    with fits.open(diagonal_rmf) as hdul:
        matrix, ebounds = hdul["MATRIX"], hdul["EBOUNDS"]
        energ_lo = np.asarray(matrix.data["ENERG_LO"])
        energ_hi = np.asarray(matrix.data["ENERG_HI"])
        first = int(matrix.header.get("TLMIN4", 1))
        n_chan = len(ebounds.data)
        ebounds_hdu = fits.BinTableHDU(ebounds.data.copy(), ebounds.header.copy())
    n = energ_lo.size
    if n != n_chan:
        raise ValueError(f"{diagonal_rmf}: expected a square diagonal RMF, got {n} x {n_chan}")
    index = np.arange(n)
    f_chan = np.maximum(index - 1, 0) + first
    n_chan_row = np.full(n, 3, dtype=np.int32)
    values = np.tile(np.asarray(blur, dtype=np.float32), (n, 1))
    n_chan_row[[0, -1]] = 2
    values[0] = (blur[1] + blur[0], blur[2], 0.0)  # row 0: no channel below
    values[-1] = (blur[0], blur[1] + blur[2], 0.0)  # last row: no channel above
    hdu = fits.BinTableHDU.from_columns([
        fits.Column(name="ENERG_LO", format="E", unit="keV", array=energ_lo),
        fits.Column(name="ENERG_HI", format="E", unit="keV", array=energ_hi),
        fits.Column(name="N_GRP", format="I", array=np.ones(n, dtype=np.int16)),
        fits.Column(name="F_CHAN", format="J", array=f_chan.astype(np.int32)),
        fits.Column(name="N_CHAN", format="J", array=n_chan_row),
        fits.Column(name="MATRIX", format="3E", array=values),
    ])
    header = hdu.header
    for key, value in (("EXTNAME", "MATRIX"), ("HDUCLASS", "OGIP"), ("HDUCLAS1", "RESPONSE"),
                       ("HDUCLAS2", "RSP_MATRIX"), ("HDUCLAS3", "REDIST"), ("CHANTYPE", "PI"),
                       ("HDUVERS", "1.3.0"), ("TELESCOP", "NONE"), ("INSTRUME", "NONE"),
                       ("DETCHANS", n_chan), ("LO_THRES", 0.0), ("TLMIN4", first),
                       ("TLMAX4", first + n_chan - 1)):
        header[key] = value
    fits.HDUList([fits.PrimaryHDU(), ebounds_hdu, hdu]).writeto(destination, overwrite=True)
    return destination


def write_case(folder, shared_data) -> dict:
    """Write the files of the module docstring into ``folder``; returns their paths by role
    (``source``, ``background``, ``rmf``, ``arf``, ``background_rmf``, ``background_arf``)."""
    folder, shared = Path(folder), Path(shared_data)
    velax1, aperture = shared.joinpath(*VELAX1), shared.joinpath(*APERTURE)
    paths = {
        "rmf": link(aperture / "diag.rmf", folder / "diag.rmf"),
        "arf": link(velax1 / "nu90402339002A01_sr.arf", folder / "sr.arf"),
        "background_arf": link(aperture / "fcxbA.arf", folder / "fcxbA.arf"),
        "background_rmf": write_blurred_rmf(aperture / "diag.rmf", folder / "bkg_blur.rmf"),
    }
    paths["background"] = copy_pha(velax1 / "nu90402339002A01_bk.pha", folder / "bk.pha",
                                   RESPFILE="bkg_blur.rmf", ANCRFILE="fcxbA.arf")
    paths["source"] = copy_pha(velax1 / "nu90402339002A01_sr.pha", folder / "sr.pha",
                               BACKFILE="bk.pha", RESPFILE="diag.rmf", ANCRFILE="sr.arf")
    return {role: str(path) for role, path in paths.items()}
