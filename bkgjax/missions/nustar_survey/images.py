"""Survey mosaics for source detection: counts, background and exposure images.

:func:`read_survey_images` reads three 2-D FITS images on the same pixel grid (the
NuSTAR deep-survey products of nustar_nep_survey_detection.txt, section 2: the counts
mosaic, the background mosaic in counts per pixel and the vignetting-corrected exposure
mosaic in seconds) and checks them:

* each file exists (:class:`MissingFileError` otherwise) and has an image in its primary HDU
  or, if that is empty, in its first image extension;
* the three images have the same shape and the same WCS (CTYPE, CRVAL, CRPIX and the pixel
  scale matrix CD = PC x CDELT compared with a relative tolerance of 1e-6, absolute 1e-9 deg),
  and the WCS is celestial (two sky axes);
* counts and background contain no NaN/inf; the background is >= 0;
* NaN (or inf) exposure is treated as 0 s, i.e. as not observed; negative exposure is an
  error; an exposure map that is zero everywhere is an error.

Pixels with zero exposure stay in the arrays (never NaN); the detection code excludes them.
Every error is a :class:`BkgjaxIOError` naming the file, the HDU and the problem.

:func:`read_thresholds` reads a DET_ML threshold table (ECSV or FITS; format described in
:func:`bkgjax.missions.nustar_survey.detection.detect`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from bkgjax.io.errors import BkgjaxIOError, MissingFileError

__all__ = ["SurveyImages", "read_survey_images", "write_survey_image", "read_thresholds",
           "THRESHOLD_COLUMNS"]

THRESHOLD_COLUMNS = ("band", "exp_min_ks", "exp_max_ks", "det_ml_95", "det_ml_99")


@dataclass(frozen=True)
class SurveyImages:
    """Counts (counts/pixel), background (expected counts/pixel) and exposure (s) images.

    ``wcs`` is the celestial :class:`astropy.wcs.WCS` shared by the three images and
    ``pixel_scale_arcsec`` the (mean) pixel side in arcsec.  Arrays are float64, indexed
    ``[y, x]`` (row = FITS axis 2).
    """

    counts: np.ndarray
    background: np.ndarray
    exposure: np.ndarray
    wcs: object
    pixel_scale_arcsec: float
    counts_path: str | None = None
    background_path: str | None = None
    exposure_path: str | None = None

    @property
    def shape(self):
        return self.counts.shape


def _read_image(path, role):
    from astropy.io import fits
    from astropy.wcs import WCS

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: {role} image file not found")
    try:
        with fits.open(path) as hdul:
            for index, hdu in enumerate(hdul):
                if hdu.is_image and hdu.data is not None and hdu.data.ndim >= 2:
                    data = np.array(hdu.data, dtype=np.float64)
                    header = hdu.header.copy()
                    hdu_name = "primary HDU" if index == 0 else f"HDU {index}"
                    break
            else:
                raise BkgjaxIOError(f"{path}: no 2-D image in the primary HDU or any image "
                                    f"extension ({role} image)")
    except OSError as err:
        raise BkgjaxIOError(f"{path}: cannot read as FITS ({role} image): {err}") from err
    data = np.squeeze(data)
    if data.ndim != 2:
        raise BkgjaxIOError(f"{path} ({hdu_name}): {role} image must be 2-D, got shape "
                            f"{data.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(header)
        except Exception as err:  # astropy raises several types for broken headers
            raise BkgjaxIOError(f"{path} ({hdu_name}): invalid WCS keywords: {err}") from err
    if not wcs.has_celestial or wcs.celestial.naxis != 2:
        raise BkgjaxIOError(f"{path} ({hdu_name}): WCS is not celestial (CTYPE1/CTYPE2 = "
                            f"{header.get('CTYPE1')!r}/{header.get('CTYPE2')!r}); RA/DEC axes "
                            "are needed")
    return data, wcs.celestial, hdu_name


def _wcs_summary(wcs):
    w = wcs.wcs
    return {"CTYPE": tuple(w.ctype), "CRVAL": np.asarray(w.crval, float),
            "CRPIX": np.asarray(w.crpix, float), "CD": np.asarray(wcs.pixel_scale_matrix, float)}


def _compare_wcs(ref, other, path, hdu_name, ref_path):
    a, b = _wcs_summary(ref), _wcs_summary(other)
    if a["CTYPE"] != b["CTYPE"]:
        raise BkgjaxIOError(f"{path} ({hdu_name}): WCS keyword CTYPE {b['CTYPE']} differs from "
                            f"{a['CTYPE']} of {ref_path}")
    for key in ("CRVAL", "CRPIX", "CD"):
        if not np.allclose(a[key], b[key], rtol=1e-6, atol=1e-9):
            label = "CD/CDELT/PC" if key == "CD" else key
            raise BkgjaxIOError(f"{path} ({hdu_name}): WCS keyword {label} {b[key].tolist()} "
                                f"differs from {a[key].tolist()} of {ref_path}")


def read_survey_images(counts, background, exposure) -> SurveyImages:
    """Read and check the counts, background and exposure images (see module docstring)."""
    c, wcs, c_hdu = _read_image(counts, "counts")
    b, wcs_b, b_hdu = _read_image(background, "background")
    e, wcs_e, e_hdu = _read_image(exposure, "exposure")
    paths = (os.fspath(counts), os.fspath(background), os.fspath(exposure))
    for data, path, hdu in ((b, paths[1], b_hdu), (e, paths[2], e_hdu)):
        if data.shape != c.shape:
            raise BkgjaxIOError(f"{path} ({hdu}): image shape {data.shape} differs from the "
                                f"counts image {paths[0]} shape {c.shape}")
    _compare_wcs(wcs, wcs_b, paths[1], b_hdu, paths[0])
    _compare_wcs(wcs, wcs_e, paths[2], e_hdu, paths[0])
    if not np.all(np.isfinite(c)):
        raise BkgjaxIOError(f"{paths[0]} ({c_hdu}): counts image has "
                            f"{int(np.sum(~np.isfinite(c)))} NaN/inf pixels")
    if np.any(c < 0):
        raise BkgjaxIOError(f"{paths[0]} ({c_hdu}): counts image has negative pixels")
    if not np.all(np.isfinite(b)):
        raise BkgjaxIOError(f"{paths[1]} ({b_hdu}): background image has "
                            f"{int(np.sum(~np.isfinite(b)))} NaN/inf pixels")
    if np.any(b < 0):
        raise BkgjaxIOError(f"{paths[1]} ({b_hdu}): background image has "
                            f"{int(np.sum(b < 0))} negative pixels (min {b.min():g})")
    e = np.where(np.isfinite(e), e, 0.0)
    if np.any(e < 0):
        raise BkgjaxIOError(f"{paths[2]} ({e_hdu}): exposure image has negative pixels "
                            f"(min {e.min():g} s)")
    if not np.any(e > 0):
        raise BkgjaxIOError(f"{paths[2]} ({e_hdu}): exposure image is zero everywhere")
    from astropy.wcs.utils import proj_plane_pixel_scales

    scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0
    return SurveyImages(counts=c, background=b, exposure=e, wcs=wcs, pixel_scale_arcsec=scale,
                        counts_path=paths[0], background_path=paths[1], exposure_path=paths[2])


def write_survey_image(path, data, wcs, overwrite=True, bunit=None):
    """Write a 2-D image with the celestial ``wcs`` as a primary HDU (tests, simulations)."""
    from astropy.io import fits

    header = wcs.to_header()
    if bunit:
        header["BUNIT"] = bunit
    fits.PrimaryHDU(np.asarray(data, dtype=np.float64), header=header).writeto(
        os.fspath(path), overwrite=overwrite)
    return os.fspath(path)


def read_thresholds(path):
    """Read a DET_ML threshold table (ECSV, or anything :meth:`Table.read` understands) with
    the columns :data:`THRESHOLD_COLUMNS`; ``BkgjaxIOError`` naming the file otherwise."""
    from astropy.table import Table

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{path}: DET_ML threshold table not found")
    try:
        fmt = "ascii.ecsv" if path.lower().endswith(".ecsv") else None
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as err:
        raise BkgjaxIOError(f"{path}: cannot read the DET_ML threshold table: {err}") from err
    missing = [c for c in THRESHOLD_COLUMNS if c not in table.colnames]
    if missing:
        raise BkgjaxIOError(f"{path}: threshold table lacks column(s) {missing}; needs "
                            f"{list(THRESHOLD_COLUMNS)}")
    return table
