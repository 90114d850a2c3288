r"""Fits kept traced and lowered on disk (``jax.export``), so that a new process skips tracing.

JAX's persistent compilation cache (:mod:`bkgjax.runtime`) saves the XLA compilation of a
function, but every new process still traces the Python code into a jaxpr and lowers it,
which for a fit with profile bounds takes ~2 s on a laptop CPU: most of a warm
``bkgjax fit-spectrum``.  This module serialises the traced and lowered function
(:func:`jax.export.export`) into ``<compilation cache folder>/exported`` the first time a
(function, static arguments, argument shapes) combination is met, and later processes
deserialise it and call it directly (its compilation then comes from the persistent cache).

It is a speed trick only: :func:`exported_call` returns exactly what the plain jitted
function returns (the reference form, which it is given and falls back to; tests/
test_export_cache.py checks that both agree).
The cache key holds the function's name, the static arguments, the shapes and dtypes of the
arrays, the pytree structure, the JAX version, the backend, a fingerprint of bkgjax's core
sources and of the bytecode of every model component used, so that changed code or a new JAX
never reuses a stale export.  Static
arguments whose ``repr`` is not reproducible across processes (user functions, whose repr
holds a memory address) are not cached.  The folder keeps at most :data:`MAX_FILES` exports
(least recently used go first).  It is on and off with the compilation cache
(``BKGJAX_CACHE_DIR=off`` turns both off).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import jax

from ..runtime import compilation_cache_dir

__all__ = ["MAX_FILES", "exported_call", "export_folder"]

#: At most this many exported functions are kept (a few hundred kB each).
MAX_FILES = 256
_CORE_PACKAGES = ("fit", "spectral", "stats")


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Hash of the core sources a fit traces through (fit/, spectral/, stats/, runtime)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in _CORE_PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def export_folder() -> Path | None:
    """Where exports are kept, or None when caching is off (``BKGJAX_CACHE_DIR=off``) or the
    user points JAX's own ``JAX_COMPILATION_CACHE_DIR`` elsewhere."""
    configured = jax.config.jax_compilation_cache_dir
    if not configured:
        return None
    ours = compilation_cache_dir()
    if ours is None or os.path.normpath(configured) != os.path.normpath(ours):
        return None
    return Path(configured) / "exported"


def _component_code(static: dict) -> str | None:
    """Fingerprint of the component functions a model structure names (a user's component
    registered under a name may change between processes); None if one is not found."""
    from ..spectral.components import COMPONENTS

    names = set()

    def walk(node):
        if isinstance(node, tuple) and node:
            if node[0] == "comp" and len(node) == 3 and isinstance(node[1], str):
                names.add(node[1])
            else:
                for child in node[1:]:
                    walk(child)

    for value in static.values():
        walk(getattr(value, "expr", None))
    digest = hashlib.sha256()
    for comp in sorted(names):
        spec = COMPONENTS.get(comp)
        code = getattr(getattr(spec, "function", None), "__code__", None)
        if code is None:
            return None
        digest.update(f"{comp}:{code.co_filename}:{getattr(code, 'co_qualname', code.co_name)}".encode())
        digest.update(code.co_code)
        digest.update(repr(code.co_consts).encode())
    return digest.hexdigest()[:16]


def _key(name: str, static: dict, leaves, treedef) -> str | None:
    static_text = repr(sorted(static.items()))
    components = _component_code(static)
    if " at 0x" in static_text or components is None:  # no reproducible description
        return None
    shapes = ";".join(f"{getattr(x, 'dtype', type(x).__name__)}{tuple(getattr(x, 'shape', ()))}"
                      for x in leaves)
    text = "|".join((name, static_text, shapes, str(treedef), jax.__version__,
                     jax.default_backend(), _code_fingerprint(), components))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _prune(folder: Path) -> None:
    files = sorted(folder.glob("*.jaxexport"), key=lambda p: p.stat().st_atime)
    for path in files[:max(0, len(files) - MAX_FILES)]:
        try:
            path.unlink()
        except OSError:
            pass


@functools.lru_cache(maxsize=64)
def _exported_callable(path: str):
    """The deserialised export at ``path`` as a jitted callable (kept for this process)."""
    from jax import export

    with open(path, "rb") as fh:
        exported = export.deserialize(bytearray(fh.read()))
    return jax.jit(exported.call)


def exported_call(reference, name: str, static: dict, *args):
    """``reference(*args, **static)`` through the on-disk export cache (module docstring).

    ``reference`` is the plain jitted function (static keyword arguments ``static``, baked
    into the export), used as it is when caching is off or impossible; ``args`` are pytrees
    of arrays; ``name`` names the function in the key."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    folder = export_folder()
    key = None if folder is None else _key(name, static, leaves, treedef)
    if key is None:
        return reference(*args, **static)
    path = folder / f"{key}.jaxexport"
    if path.exists():
        try:
            call = _exported_callable(str(path))
            os.utime(path)  # least-recently-used pruning
            return call(*leaves)
        except Exception as err:  # noqa: BLE001 - a damaged file: export again below
            _exported_callable.cache_clear()
            warnings.warn(f"{path}: unusable export ({err}); tracing again", RuntimeWarning,
                          stacklevel=2)

    def flat(*flat_leaves):
        return reference(*jax.tree_util.tree_unflatten(treedef, flat_leaves), **static)

    try:
        from jax import export

        exported = export.export(jax.jit(flat))(*leaves)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as fh:
            fh.write(exported.serialize())
        os.replace(fh.name, path)  # atomic: concurrent processes never read half a file
        _prune(folder)
    except Exception as err:  # noqa: BLE001 - no export (e.g. an op JAX cannot serialise)
        warnings.warn(f"cannot keep {name} exported ({type(err).__name__}: {err}); using "
                      "jax.jit", RuntimeWarning, stacklevel=2)
        return reference(*args, **static)
    return _exported_callable(str(path))(*leaves)
