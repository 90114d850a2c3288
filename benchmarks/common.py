"""Shared helpers of the bkgjax benchmarks: machine description, timing, JSON output.

Nothing here imports bkgjax, so the helpers also serve peer tools run in other
interpreters (``python benchmarks/common.py`` prints the machine description as JSON).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent

#: The shared benchmark problem: DG Tau (Chandra ACIS), powerlaw, C-stat, 0.5-7 keV.
ERANGE = (0.5, 7.0)
START = {"PhoIndex": 1.5, "norm": 1e-4}
SIM_TRUTH = {"PhoIndex": 1.19, "norm": 1.31e-5}


def demo_pha_path() -> str:
    """The DG Tau PHA: the copy shipped in bkgjax, else the shared data directory."""
    shipped = REPO_ROOT / "bkgjax" / "data" / "dgtau" / "acisf04487_001N023_r0009_pha3.fits.gz"
    if shipped.exists():
        return str(shipped)
    return "/work/shared/data/spectra/chandra_acis_dgtau/acisf04487_001N023_r0009_pha3.fits.gz"


# ----------------------------------------------------------------------------------------------
# Machine description


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str):
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - report any import failure as "absent"
        return None
    return getattr(mod, "__version__", "unknown")


def machine_info(extra_modules=()) -> dict:
    """Platform, CPU, cores, Python and library versions, JAX devices, load average."""
    info = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_ENABLE_X64",
                                               "JAX_PLATFORMS") if os.environ.get(k)},
    }
    versions = {}
    for name in ("numpy", "scipy", "jax", "jaxlib", "numpyro", "arviz", "iminuit", "sherpa",
                 "bkgjax", *extra_modules):
        versions[name] = _version(name)
    info["versions"] = versions
    if (REPO_ROOT / "bkgjax").is_dir():
        info["bkgjax_code"] = code_version()
    if versions.get("jax"):
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
        info["jax_x64"] = bool(jax.config.read("jax_enable_x64"))
    return info


def code_version(root=None) -> dict:
    """Which bkgjax was measured: git HEAD, files modified vs HEAD under bkgjax/, and a
    sha256 over the bkgjax/*.py sources (the tree is edited concurrently; compare this
    hash between result files before comparing numbers)."""
    root = Path(root) if root else REPO_ROOT
    out = {}
    try:
        out["git_head"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root,
                                         capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "bkgjax"], cwd=root,
                                capture_output=True, text=True).stdout
        out["bkgjax_modified_vs_head"] = sorted(line[3:] for line in status.splitlines())
    except OSError:
        pass
    digest = hashlib.sha256()
    files = sorted((root / "bkgjax").rglob("*.py"))
    for f in files:
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    out["bkgjax_sources_sha256"] = digest.hexdigest()[:16]
    if files:
        newest = max(files, key=lambda f: f.stat().st_mtime)
        out["newest_source"] = {
            "file": str(newest.relative_to(root)),
            "mtime_utc": _dt.datetime.fromtimestamp(newest.stat().st_mtime, _dt.timezone.utc)
            .isoformat(timespec="seconds")}
    return out


def machine_line(info: dict) -> str:
    v = info.get("versions", {})
    return (f"{info['cpu_model']}, {info['cpu_affinity'] or info['cpu_count']} cores, "
            f"{info['platform']}, Python {info['python']}, jax {v.get('jax')}, "
            f"devices {info.get('jax_devices')}")


# ----------------------------------------------------------------------------------------------
# Timing


def timeit(fn, repeat: int = 5, warmup: int = 1, number: int = 1) -> dict:
    """Wall time of ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed ones.

    Each timed sample runs ``fn`` ``number`` times and is divided by ``number``.  Returns
    median, inter-quartile range (q75 - q25), min, mean and all samples, in seconds, plus
    the last return value under ``"result"`` (not JSON; pop it before writing).
    ``fn`` must synchronise itself (bkgjax returns NumPy arrays; raw JAX results need
    ``.block_until_ready()``).
    """
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            result = fn()
        samples.append((time.perf_counter() - t0) / number)
    arr = np.asarray(samples)
    q25, q50, q75 = np.percentile(arr, [25, 50, 75])
    return {
        "median_s": float(q50),
        "iqr_s": float(q75 - q25),
        "q25_s": float(q25),
        "q75_s": float(q75),
        "min_s": float(arr.min()),
        "mean_s": float(arr.mean()),
        "repeat": int(repeat),
        "number": int(number),
        "warmup": int(warmup),
        "samples_s": [float(s) for s in samples],
        "result": result,
    }


def strip_result(timing: dict) -> dict:
    """Copy of a :func:`timeit` dict without the non-JSON ``result``."""
    return {k: v for k, v in timing.items() if k != "result"}


def stopwatch(fn):
    """One timed call: (seconds, return value)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def ratio(a, b):
    """``a / b`` or None when undefined."""
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def max_rel_diff(a: dict, b: dict, keys=None) -> float:
    """max_k |a_k - b_k| / |b_k| over shared (or given) keys."""
    keys = keys or [k for k in a if k in b]
    return float(max(abs(float(a[k]) - float(b[k])) / abs(float(b[k])) for k in keys))


# ----------------------------------------------------------------------------------------------
# Output


def _to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    return obj


def write_json(name: str, payload: dict, directory=None) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>.json`` (NaN/inf as strings)."""
    directory = Path(directory) if directory else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    with open(path, "w") as fh:
        json.dump(_to_jsonable(payload), fh, indent=2)
        fh.write("\n")
    return path


def run_json_subprocess(python: str, script: str, args=(), timeout=None, env=None) -> dict:
    """Run ``python script args...`` and parse the JSON object on its last stdout line."""
    proc = subprocess.run([python, script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{python} {script} failed (rc={proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(machine_info(), indent=2))


def posterior_summary(draws: dict) -> dict:
    """Mean, sd, bulk/tail ESS and R-hat per parameter; ``draws``: name -> (chain, draw).

    Imports only numpy and arviz, so the jaxspec subprocess (another venv) can use it too.
    """
    import arviz as az

    out = {}
    for name, arr in draws.items():
        arr = np.asarray(arr, dtype=np.float64)
        ds = az.convert_to_dataset({"x": arr})
        out[name] = {
            "mean": float(arr.mean()),
            "sd": float(arr.std(ddof=1)),
            "ess_bulk": float(az.ess(ds, method="bulk")["x"]),
            "ess_tail": float(az.ess(ds, method="tail")["x"]),
            "r_hat": float(az.rhat(ds)["x"]),
        }
    return out
