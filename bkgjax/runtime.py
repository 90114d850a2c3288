"""How bkgjax sets up JAX when it is imported: float64 and the persistent compilation cache.

Both are set through JAX's own environment variables when JAX is not imported yet (so that
``import bkgjax`` and ``bkgjax --help`` do not pay for importing JAX), and through
``jax.config`` when it is.  A value the user already gave (environment variable) wins.

Compilation cache
    Compiled XLA executables are written to disk and reused by later processes with the same
    JAX version, backend and code, so that a new ``bkgjax`` process does not compile again
    what an earlier one compiled: the whole-process time of a first fit is what a user feels.
    The folder is ``$BKGJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/bkgjax``, else
    ``~/.cache/bkgjax``; inside it one sub-folder per JAX version, machine and CPU feature set
    (an executable compiled for one CPU must not be loaded on another that shares the home
    folder).  It is bounded (``MAX_CACHE_BYTES``, least recently used entries go first).
    Turn it off with ``BKGJAX_CACHE_DIR=off`` (or ``none``, ``0``, ``false``, or an empty
    value); a ``JAX_COMPILATION_CACHE_DIR`` set by the user is left alone.

One-shot compilation
    A command-line process fits once and exits, so the seconds XLA spends optimising a fit's
    machine code on its first compilation never pay back (the optimised fit runs ~2 ms
    faster).  Inside :func:`one_shot_compilation` (the ``bkgjax`` command enters it), the fits
    that go through :mod:`bkgjax.fit.export_cache` are compiled with
    :data:`ONE_SHOT_COMPILER_OPTIONS` on the CPU: 3x less compilation time, results equal to
    the default compilation's to ~1e-14 relative (no fused multiply-adds: other rounding; up
    to 1e-12 on a profile bound that ends at a parameter limit), and their compiled
    executables are kept on disk (:mod:`bkgjax.fit.export_cache`).  Library calls outside it
    keep the default compilation.  ``BKGJAX_ONE_SHOT=off`` turns it off (numbers then
    bit-identical to the library's).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import warnings
from collections.abc import Mapping, MutableMapping

__all__ = ["MAX_CACHE_BYTES", "ONE_SHOT_COMPILER_OPTIONS", "compilation_cache_dir",
           "configure_jax", "one_shot_compilation", "one_shot_compiler_options"]

#: Upper bound of the on-disk compilation cache (JAX evicts least recently used entries).
MAX_CACHE_BYTES = 2 * 1024**3
#: Compilations shorter than this are not written (reading a file costs about as much).
MIN_COMPILE_SECONDS = 0.05
_OFF = {"", "0", "off", "none", "false", "no"}


def _cpu_fingerprint() -> str:
    """Short hash of the CPU's instruction-set flags (Linux), else of the processor name."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = flags or platform.processor() or platform.machine()
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _jax_version() -> str:
    try:
        from importlib.metadata import version

        return version("jax")
    except Exception:  # noqa: BLE001 - metadata missing in odd installs: one shared folder
        return "unknown"


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
    """The folder of the persistent compilation cache, or None when it is turned off."""
    raw = environ.get("BKGJAX_CACHE_DIR")
    if raw is not None:
        if raw.strip().lower() in _OFF:
            return None
        base = os.path.expanduser(raw)
    else:
        xdg = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "bkgjax")
    sub = f"jax-{_jax_version()}-{platform.machine() or 'cpu'}-{_cpu_fingerprint()}"
    return os.path.join(base, sub)


def configure_jax(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Turn on float64 and the compilation cache (see the module docstring).

    Returns the cache folder in use (None when off or when the user set JAX's own variable)."""
    cache = None if "JAX_COMPILATION_CACHE_DIR" in environ else compilation_cache_dir(environ)
    if cache is not None:
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as err:  # read-only home, bad BKGJAX_CACHE_DIR: say it once, run uncached
            warnings.warn(f"bkgjax: cannot create the compilation cache folder {cache} ({err}); "
                          "compiled code is not cached (set BKGJAX_CACHE_DIR to a writable "
                          "folder, or to 'off')", RuntimeWarning, stacklevel=3)
            cache = None
    settings = {"JAX_ENABLE_X64": ("jax_enable_x64", True)}
    if cache is not None:
        settings.update({
            "JAX_COMPILATION_CACHE_DIR": ("jax_compilation_cache_dir", cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS":
                ("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS),
            "JAX_COMPILATION_CACHE_MAX_SIZE": ("jax_compilation_cache_max_size", MAX_CACHE_BYTES),
        })
    if "jax" in sys.modules:
        import jax

        for env, (option, value) in settings.items():
            if env not in environ or env == "JAX_ENABLE_X64":
                jax.config.update(option, value)
    else:
        for env, (_, value) in settings.items():
            if env == "JAX_ENABLE_X64":
                environ[env] = "1"  # the likelihoods need float64 (see bkgjax/__init__)
            else:
                environ.setdefault(env, str(value))
    return cache


#: XLA options of a one-shot (command-line) fit on the CPU: no LLVM optimisation of the
#: generated code and XLA's classic loop emitters instead of the (slower to compile) fusion
#: emitters.  For the DG Tau power law with profile bounds: 1.9 s instead of 5.5 s of
#: compilation, 7 ms instead of 3 ms per fit, the same numbers to 1.4e-14 (Vela X-1 FPMA+FPMB
#: joint fit: 2.6e-13).
ONE_SHOT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                             "xla_cpu_use_fusion_emitters": False}
_one_shot_depth = 0


@contextlib.contextmanager
def one_shot_compilation(environ: Mapping[str, str] = os.environ):
    """Within this block the exported fits are compiled for a process that runs them once
    (:data:`ONE_SHOT_COMPILER_OPTIONS`; module docstring); ``BKGJAX_ONE_SHOT=off`` makes it a
    no-op.  Nests; the previous mode is back on leaving."""
    global _one_shot_depth
    on = environ.get("BKGJAX_ONE_SHOT", "on").strip().lower() not in _OFF
    _one_shot_depth += on
    try:
        yield
    finally:
        _one_shot_depth -= on


def one_shot_compiler_options(backend: str) -> dict | None:
    """The XLA options for a fit compiled now on ``backend`` ('cpu', 'gpu', ...): the
    one-shot options inside :func:`one_shot_compilation` on the CPU, else None (default)."""
    if _one_shot_depth > 0 and backend == "cpu":
        return dict(ONE_SHOT_COMPILER_OPTIONS)
    return None
