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


def _memory_map_count() -> int:
    """Memory mappings of this process (Linux ``/proc/self/maps``; 0 elsewhere)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return 0


def _memory_map_limit() -> int:
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return 65530


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
    """Drop JAX's compiled executables after a test module when the process holds more than
    half of the kernel's memory-mapping limit.

    Every XLA:CPU executable keeps ~18 memory mappings alive for as long as a jit cache
    holds it (measured: 300 small compilations took a process from 424 to 5956 mappings,
    ``jax.clear_caches()`` brought it back to 523).  The whole suite compiles a few
    thousand, which reached ``vm.max_map_count`` (65530) and made a later compilation abort
    or segfault inside LLVM (CI exit 139).  Clearing only past half the limit keeps the
    caches, and the suite's speed, for most modules; tests that check for recompilation do
    so within one module."""
    yield
    if _memory_map_count() > _memory_map_limit() // 2:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


@pytest.fixture
def clean_component_registry():
    """The test leaves the component registry as it found it: components it registered
    (directly, or by parsing ``atable{...}`` expressions) removed, replaced ones restored."""
    from bkgjax.spectral import COMPONENTS, unregister_component

    before = dict(COMPONENTS)
    yield
    for name in list(COMPONENTS):
        if name not in before:
            unregister_component(name)
        elif COMPONENTS[name] is not before[name]:
            COMPONENTS[name] = before[name]
    assert COMPONENTS == before
