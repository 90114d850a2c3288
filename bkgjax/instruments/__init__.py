"""Mission geometry and recipes (pure NumPy; may read files only through :mod:`bkgjax.io`).

Submodules
----------
nustar
    NuSTAR focal plane geometry for the aperture (stray-light) CXB: PI <-> energy, energy
    bands, per-RAW-pixel open solid angle Omega, detector / Be-window transmission, RAW <->
    64 x 64 mosaic layout and event binning (Krivonos et al. 2021, MNRAS 502, 3966, eq. 2).

Submodules are imported on first attribute access (``bkgjax.instruments.nustar``), so that
``python -m bkgjax.instruments.nustar`` runs without a double import.
"""

from __future__ import annotations

import importlib

__all__ = ["nustar"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
