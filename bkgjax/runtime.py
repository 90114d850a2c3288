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
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from collections.abc import Mapping, MutableMapping

__all__ = ["MAX_CACHE_BYTES", "compilation_cache_dir", "configure_jax"]

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
