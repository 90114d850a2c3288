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

In a one-shot process (the ``bkgjax`` command, :func:`bkgjax.runtime.one_shot_compilation`)
the compiled executable is kept too (``<key>-<options>.jaxexec``) and a later command loads it
directly: no tracing of the export's call, no MLIR lowering, no compilation-cache lookup.
:func:`prng_key` makes ``jax.random.PRNGKey`` on the host (no small compilations).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import jax
import numpy as np

from ..runtime import compilation_cache_dir, one_shot_compiler_options

__all__ = ["MAX_FILES", "exported_call", "export_folder", "prng_key"]

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

    def structures(value):  # a model structure, or a joint one holding source/background
        if value is None:
            return
        yield value
        for part in ("source", "background"):
            yield from structures(getattr(value, part, None))

    for value in static.values():
        for structure in structures(value):
            walk(getattr(structure, "expr", None))
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


def _prune(folder: Path, pattern: str = "*.jaxexport") -> None:
    files = sorted(folder.glob(pattern), key=lambda p: p.stat().st_atime)
    for path in files[:max(0, len(files) - MAX_FILES)]:
        try:
            path.unlink()
        except OSError:
            pass


def prng_key(seed: int):
    """``jax.random.PRNGKey(seed)`` made on the host: the same uint32[2] key, without the two
    small XLA compilations (the seed's conversion and ``threefry_seed``) that the jitted
    construction costs a new process (~40 ms).  Other seeds (out of [0, 2**63), not an int)
    and other PRNG settings go to :func:`jax.random.PRNGKey`."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and \
            0 <= int(seed) < 2**63 and not jax.config.jax_enable_custom_prng and \
            jax.config.jax_default_prng_impl == "threefry2x32":
        seed = int(seed)
        return jax.device_put(np.array([seed >> 32 & 0xFFFFFFFF, seed & 0xFFFFFFFF],
                                       dtype=np.uint32))
    return jax.random.PRNGKey(seed)


@functools.lru_cache(maxsize=64)
def _exported_callable(path: str, compiler_options: tuple = ()):
    """The deserialised export at ``path`` as a jitted callable (kept for this process),
    compiled with the XLA ``compiler_options`` ((name, value) pairs; none: the default)."""
    from jax import export

    with open(path, "rb") as fh:
        exported = export.deserialize(bytearray(fh.read()))
    return jax.jit(exported.call, compiler_options=dict(compiler_options) or None)


#: One-shot executables of this process, by file (a fit called twice is loaded once).
_EXECUTABLES: dict = {}
_persistent_cache_hits = [0]
_listening = []


def _count_cache_hits(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _persistent_cache_hits[0] += 1


def _initialize_cpu_kernels() -> None:
    """What lowering a call does before a CPU executable may run: hand jaxlib the LAPACK
    routines (scipy's) that the fits' linear solves call."""
    from jax._src.lax import linalg as lax_linalg

    lax_linalg.initialize_lapack()


def _calls_lapack(compiled) -> bool:
    """Whether a compiled executable calls LAPACK (custom calls ``lapack_*``); True when its
    text is unavailable, the safe answer."""
    try:
        return "lapack" in compiled.as_text().lower()
    except Exception:  # noqa: BLE001
        return True


def _one_shot_executable(path: Path):
    """The compiled executable kept at ``path`` (or by this process), or None when there is
    none or it cannot be loaded (the file is then removed and the export path used)."""
    compiled = _EXECUTABLES.get(str(path))
    if compiled is not None or not path.exists():
        return compiled
    try:
        import pickle
        import zlib

        from jax.experimental import serialize_executable

        with open(path, "rb") as fh:
            needs_lapack, payload = pickle.loads(zlib.decompress(fh.read()))
        if needs_lapack:  # most fits do not (bkgjax.fit.small_linalg): no scipy.linalg import
            _initialize_cpu_kernels()
        compiled = serialize_executable.deserialize_and_load(*payload)
        os.utime(path)  # least-recently-used pruning
    except Exception as err:  # noqa: BLE001 - damaged, or another jaxlib: compile again
        warnings.warn(f"{path}: unusable compiled fit ({type(err).__name__}: {err}); "
                      "compiling again", RuntimeWarning, stacklevel=3)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    _EXECUTABLES[str(path)] = compiled
    return compiled


def _keep_executable(path: Path, compiled) -> None:
    """Write ``compiled`` to ``path`` (atomically; nothing when it cannot be serialised)."""
    try:
        import pickle
        import zlib

        from jax.experimental import serialize_executable

        needs_lapack = _calls_lapack(compiled)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = zlib.compress(pickle.dumps((needs_lapack, serialize_executable.serialize(compiled))), 1)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
            fh.write(data)
        os.replace(fh.name, path)
        _prune(path.parent, "*.jaxexec")
    except Exception:  # noqa: BLE001 - a speed-up only: the export path stays
        pass


def _export(reference, name, static, leaves, treedef, path: Path, options: tuple):
    """The jitted call of the export at ``path`` (written first when missing), or None when
    the function cannot be exported (then ``reference`` is called as it is)."""
    if path.exists():
        try:
            call = _exported_callable(str(path), options)
            os.utime(path)  # least-recently-used pruning
            return call
        except Exception as err:  # noqa: BLE001 - a damaged file: export again below
            _exported_callable.cache_clear()
            warnings.warn(f"{path}: unusable export ({err}); tracing again", RuntimeWarning,
                          stacklevel=3)

    def flat(*flat_leaves):
        return reference(*jax.tree_util.tree_unflatten(treedef, flat_leaves), **static)

    try:
        from jax import export

        exported = export.export(jax.jit(flat))(*leaves)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
            fh.write(exported.serialize())
        os.replace(fh.name, path)  # atomic: concurrent processes never read half a file
        _prune(path.parent)
    except Exception as err:  # noqa: BLE001 - no export (e.g. an op JAX cannot serialise)
        warnings.warn(f"cannot keep {name} exported ({type(err).__name__}: {err}); using "
                      "jax.jit", RuntimeWarning, stacklevel=3)
        return None
    return _exported_callable(str(path), options)


def exported_call(reference, name: str, static: dict, *args):
    """``reference(*args, **static)`` through the on-disk export cache (module docstring).

    ``reference`` is the plain jitted function (static keyword arguments ``static``, baked
    into the export), used as it is when caching is off or impossible; ``args`` are pytrees
    of arrays; ``name`` names the function in the key.

    Inside :func:`bkgjax.runtime.one_shot_compilation` (the ``bkgjax`` command) the function
    is compiled with the one-shot XLA options (faster to compile, the same numbers to
    ~1e-14), and the compiled executable itself is kept beside the export
    (``<key>-<options>.jaxexec``, :mod:`jax.experimental.serialize_executable`): a later
    command loads it directly, without tracing the export's call, lowering it to MLIR and
    hashing it for JAX's compilation cache (~0.1 s).  Outside, the export's call is jitted
    as before (jit dispatch is ~0.3 ms faster per call than an executable's, which matters
    to loops of fits)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    options = one_shot_compiler_options(jax.default_backend())
    folder = export_folder()
    key = None if folder is None else _key(name, static, leaves, treedef)
    if key is None:
        if options:
            return reference.lower(*args, **static).compile(compiler_options=options)(*args)
        return reference(*args, **static)
    exe = None
    if options:
        tag = hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()[:8]
        exe = folder / f"{key}-{tag}.jaxexec"
        compiled = _one_shot_executable(exe)
        if compiled is not None:
            return compiled(*leaves)
        if not (folder / f"{key}.jaxexport").exists():
            # a one-shot process keeps the executable, which is all later commands load:
            # compiling the function directly saves writing an export, reading it back and
            # lowering its call (a third of a first run's tracing and lowering)
            def flat(*flat_leaves):
                return reference(*jax.tree_util.tree_unflatten(treedef, flat_leaves), **static)

            return _compile_and_keep(jax.jit(flat).lower(*leaves), options, exe)(*leaves)
    options = tuple(sorted(options.items())) if options else ()
    call = _export(reference, name, static, leaves, treedef,
                   folder / f"{key}.jaxexport", options)
    if call is None:
        return reference(*args, **static)
    if exe is None:
        return call(*leaves)
    return _compile_and_keep(call.lower(*leaves), None, exe)(*leaves)


def _without_compilation_cache(skip: bool):
    """A context in which JAX's compilation cache is neither read nor written (when ``skip``):
    a one-shot compilation is kept as an executable, which later commands load, so writing it
    to JAX's cache as well only costs time (~0.1 s)."""
    import contextlib

    if not skip:
        return contextlib.nullcontext()
    try:
        from jax._src import config as jax_config

        return jax_config.enable_compilation_cache(False)
    except (ImportError, AttributeError, TypeError):  # another JAX: keep the cache
        return contextlib.nullcontext()


def _compile_and_keep(lowered, options, exe: Path):
    """Compile ``lowered`` (XLA ``options``), keep the executable at ``exe`` and for this
    process, and return it."""
    if not _listening:
        jax.monitoring.register_event_listener(_count_cache_hits)
        _listening.append(True)
    hits = _persistent_cache_hits[0]
    with _without_compilation_cache(bool(options)):
        compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
    # an executable loaded from JAX's compilation cache does not serialise back whole (jaxlib
    # 0.10: "Function ... not found" when loaded again): keep fresh compilations only
    if _persistent_cache_hits[0] == hits:
        _keep_executable(exe, compiled)
    _EXECUTABLES[str(exe)] = compiled
    return compiled
