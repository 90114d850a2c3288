"""Shared pytest fixtures: location of the real instrument data beside the repository.

The data live at ``../shared/data`` relative to the repository root (see its README.md);
tests that need them are skipped with a clear reason when the folder is absent.
Set ``BKGJAX_SHARED_DATA`` to point somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("BKGJAX_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real instrument data not available: {path} does not exist "
                    "(expected ../shared/data beside the repository root)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real-data folder (skip if absent)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def dgtau_dir(shared_data: Path) -> Path:
    """Chandra ACIS DG Tau spectrum folder (PHA with its own BKG HDU, ARF, RMF; gzip FITS)."""
    return _require(shared_data / "spectra" / "chandra_acis_dgtau")


@pytest.fixture(scope="session")
def velax1_dir(shared_data: Path) -> Path:
    """NuSTAR Vela X-1 FPMA/FPMB source/background spectra and ARFs (no RMF)."""
    return _require(shared_data / "spectra" / "nustar_velax1")
