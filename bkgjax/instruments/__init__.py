"""Mission geometry and recipes (pure NumPy; may read files only through :mod:`bkgjax.io`).

Submodules
----------
nustar
    NuSTAR focal plane geometry for the aperture (stray-light) CXB: PI <-> energy, energy
    bands, per-RAW-pixel open solid angle Omega, detector / Be-window transmission, RAW <->
    64 x 64 mosaic layout and event binning (Krivonos et al. 2021, MNRAS 502, 3966, eq. 2).

nustar_survey
    NuSTAR deep-survey bands, conversion factors, PSF, pointings and exposure mosaics
    (Zhao et al. 2021).
acis_templates, acis_pback
    Chandra ACIS particle-background template library and model generation (Suzuki et al.
    2021, mkacispback).
isgri
    INTEGRAL/IBIS-ISGRI screening, orbit background model and Crab calibration.

Submodules are imported on first attribute access (``bkgjax.instruments.nustar``), so that
``python -m bkgjax.instruments.nustar`` runs without a double import.
"""

from __future__ import annotations

import importlib

__all__ = ["nustar", "nustar_survey", "acis_templates", "acis_pback", "isgri"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
