r"""Readers for the mkacispback template directory (Suzuki et al. 2021, A&A 665, A116).

The package does not ship the templates (no licence); the user points bkgjax at a copy of the
tool's folder holding::

    template_models_faint/template-ccdN/ccdN-merged-gaincor-32reg-gain-each-yKK.mo
    template_models_faint/weightmap/temp_weightmap_ccdN_energy9000to11500.dat
    template_models_vfaint/...   (same layout)

either as an argument or through the environment variable ``BKGJAX_ACIS_TEMPLATES``.
``yKK`` (KK = 01..32) is the CHIPY slice ``32 (KK-1) + 1 .. 32 KK``; the weight map holds the
templates' own 9-11.5 keV counts per slice (32 integers, one per line).

These functions read files as they are; the mission rules (FAINT ccd1 uses the ccd0 files,
scale factors, hardness) live in :mod:`bkgjax.missions.acis.templates`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bkgjax.io.errors import BkgjaxIOError, MissingFileError
from bkgjax.io.xspec_model import XspecModel, read_xspec_model

__all__ = [
    "TEMPLATE_ENV_VAR",
    "N_SLICES",
    "template_directory",
    "slice_model_path",
    "weightmap_path",
    "read_slice_models",
    "read_template_weights",
]

#: environment variable naming the template directory
TEMPLATE_ENV_VAR = "BKGJAX_ACIS_TEMPLATES"
#: CHIPY slices per CCD (32 rows of 32 pixels each)
N_SLICES = 32
_MODES = ("faint", "vfaint")


def template_directory(directory=None) -> Path:
    """The template folder: ``directory`` if given, else ``$BKGJAX_ACIS_TEMPLATES``.

    It must exist and hold ``template_models_faint/`` or ``template_models_vfaint/``.

    Raises
    ------
    MissingFileError
        Neither an argument nor the environment variable, or the folder or its
        ``template_models_*`` subfolders do not exist.
    """
    if directory is None:
        directory = os.environ.get(TEMPLATE_ENV_VAR)
        if not directory:
            raise MissingFileError(
                "no mkacispback template directory: pass it (e.g. --templates DIR) or set the "
                f"environment variable {TEMPLATE_ENV_VAR} to the folder holding "
                "template_models_faint/ and template_models_vfaint/ (bkgjax does not ship them)"
            )
        origin = f" (from ${TEMPLATE_ENV_VAR})"
    else:
        origin = ""
    path = Path(os.path.expanduser(os.fspath(directory))).resolve()
    if not path.is_dir():
        raise MissingFileError(f"{path}{origin}: mkacispback template directory not found")
    if not any((path / f"template_models_{mode}").is_dir() for mode in _MODES):
        raise MissingFileError(
            f"{path}{origin}: not an mkacispback template directory (it holds neither "
            "template_models_faint/ nor template_models_vfaint/)"
        )
    return path


def _check_mode(mode):
    if mode not in _MODES:
        raise ValueError(f"unknown ACIS data mode {mode!r}; expected one of {_MODES}")


def slice_model_path(directory, ccd: int, mode: str, slice_number: int) -> Path:
    """Path of the template of CHIPY slice ``slice_number`` (1..32) of ``ccd`` in ``mode``."""
    _check_mode(mode)
    return (Path(directory) / f"template_models_{mode}" / f"template-ccd{int(ccd)}"
            / f"ccd{int(ccd)}-merged-gaincor-32reg-gain-each-y{int(slice_number):02d}.mo")


def weightmap_path(directory, ccd: int, mode: str) -> Path:
    """Path of the 9-11.5 keV template weight map of ``ccd`` in ``mode``."""
    _check_mode(mode)
    return (Path(directory) / f"template_models_{mode}" / "weightmap"
            / f"temp_weightmap_ccd{int(ccd)}_energy9000to11500.dat")


def read_slice_models(directory, ccd: int, mode: str) -> tuple[XspecModel, ...]:
    """The 32 slice templates (y01..y32) of one CCD and mode, as read (:class:`XspecModel`;
    :class:`bkgjax.spectral.xspec_terms.XspecTermModel` evaluates them).

    ``directory=None`` uses :func:`template_directory`.  A missing folder or file raises
    :class:`MissingFileError` naming it (e.g. FAINT ccd1, for which the tool has no files).
    """
    _check_mode(mode)
    root = template_directory(directory)
    folder = root / f"template_models_{mode}" / f"template-ccd{int(ccd)}"
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no {mode.upper()} templates for ccd{int(ccd)} in "
                               f"{root}")
    return tuple(read_xspec_model(slice_model_path(root, ccd, mode, k))
                 for k in range(1, N_SLICES + 1))


def read_template_weights(directory, ccd: int, mode: str) -> np.ndarray:
    """Template weights: the templates' own 9-11.5 keV counts per CHIPY slice.

    Returns a float64 array of shape (32,) (integer counts, all > 0 since they divide the
    region weights).

    Raises
    ------
    MissingFileError
        The weight map does not exist.
    BkgjaxIOError
        Not 32 values, a value that is not a non-negative integer, or a zero weight (named
        with its line number).
    """
    root = template_directory(directory)
    path = weightmap_path(root, ccd, mode)
    if not path.is_file():
        raise MissingFileError(f"{path}: template weight map not found")
    values = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                value = float(text)
            except ValueError:
                raise BkgjaxIOError(f"{path}, line {lineno}: {text!r} is not a number") from None
            if not np.isfinite(value) or value < 0 or value != int(value):
                raise BkgjaxIOError(f"{path}, line {lineno}: {text!r} is not a non-negative "
                                    "integer count")
            if value == 0:
                raise BkgjaxIOError(f"{path}, line {lineno}: template weight is 0 (slice "
                                    f"{len(values) + 1} cannot be rescaled)")
            values.append(value)
    if len(values) != N_SLICES:
        raise BkgjaxIOError(f"{path}: expected {N_SLICES} slice weights, found {len(values)}")
    return np.asarray(values, dtype=np.float64)
