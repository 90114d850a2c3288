"""bkgjax.fit.export_cache: fits kept traced and lowered on disk (jax.export) give exactly the
results of the plain jitted fit, a second process does not trace the fit again, and the cache
key changes with everything that changes the function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from bkgjax.cli import demo_spectrum_path
from bkgjax.fit import core, export_cache, fit, guess_norms, load
from bkgjax.spectral import parse_model, powerlaw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)


def _result_arrays(result):
    return {"values": result.values, "intervals": result.intervals,
            "stat": result.stat_value, "cov": result.covariance.tolist()}


def test_exported_fit_equals_the_plain_jit(data, tmp_path, monkeypatch):
    model = guess_norms(powerlaw(PhoIndex=1.5), data)
    monkeypatch.setattr(export_cache, "export_folder", lambda: None)
    plain = fit(model, data, "cstat")
    monkeypatch.setattr(export_cache, "export_folder", lambda: tmp_path)
    exported = fit(model, data, "cstat")  # traced, exported, written, called
    assert len(list(tmp_path.glob("*.jaxexport"))) == 1
    export_cache._exported_callable.cache_clear()
    loaded = fit(model, data, "cstat")  # read back from the file
    assert _result_arrays(exported) == _result_arrays(plain) == _result_arrays(loaded)


def test_damaged_file_is_exported_again(data, tmp_path, monkeypatch):
    model = guess_norms(powerlaw(PhoIndex=1.5), data)
    monkeypatch.setattr(export_cache, "export_folder", lambda: tmp_path)
    first = fit(model, data, "cstat", errors="covariance")
    (path,) = tmp_path.glob("*.jaxexport")
    path.write_bytes(b"not an export")
    export_cache._exported_callable.cache_clear()
    with pytest.warns(RuntimeWarning, match="unusable export"):
        again = fit(model, data, "cstat", errors="covariance")
    assert _result_arrays(again) == _result_arrays(first)
    assert path.stat().st_size > 1000


def test_key_changes_with_what_changes_the_function(data):
    leaves, treedef = jax.tree_util.tree_flatten((np.zeros(2), data))
    structure = parse_model("powerlaw").structure
    base = {"structure": structure, "stat": "cstat", "options": core.FitOptions()}
    key = export_cache._key("f", base, leaves, treedef)
    assert key == export_cache._key("f", dict(base), leaves, treedef)  # reproducible
    assert key != export_cache._key("g", base, leaves, treedef)
    assert key != export_cache._key("f", {**base, "stat": "cash"}, leaves, treedef)
    assert key != export_cache._key("f", {**base, "options": core.FitOptions(level=0.68)},
                                    leaves, treedef)
    other = [np.zeros(3)] + leaves[1:]
    assert key != export_cache._key("f", base, other, treedef)  # another shape
    # another file of the same shapes has the same key (the name is not part of it)
    renamed = jax.tree_util.tree_flatten((np.zeros(2), data.with_counts(data.counts)))[1]
    assert key == export_cache._key("f", base, leaves, renamed)
    # a static argument without a reproducible repr is not cached
    assert export_cache._key("f", {**base, "fn": lambda x: x}, leaves, treedef) is None


def test_key_changes_when_a_component_function_changes(data, monkeypatch):
    from bkgjax.spectral import components

    leaves, treedef = jax.tree_util.tree_flatten((data,))
    static = {"structure": parse_model("powerlaw").structure}
    key = export_cache._key("f", static, leaves, treedef)
    spec = components.COMPONENTS["powerlaw"]

    def other(*args, **kwargs):  # a user's edit of the function behind the same name
        return spec.function(*args, **kwargs) * 1.0

    monkeypatch.setitem(components.COMPONENTS, "powerlaw",
                        type(spec)(**{**spec.__dict__, "function": other}))
    assert export_cache._key("f", static, leaves, treedef) != key


_CHILD = r"""
import json, sys
import bkgjax
from bkgjax.fit import core, fit, guess_norms, load
from bkgjax.spectral import powerlaw
traces = []
kernel = core._fit_kernel
def counting(*args, **kwargs):
    traces.append(1)
    return kernel(*args, **kwargs)
core._fit_kernel = counting
data = load(sys.argv[1], erange=(0.5, 7.0), use_background=False)
result = fit(guess_norms(powerlaw(PhoIndex=1.5), data), data, "cstat")
print(json.dumps({"traces": len(traces), "values": result.values,
                  "intervals": result.intervals, "stat": result.stat_value}))
"""


def _child(cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "BKGJAX_"))}
    env["BKGJAX_CACHE_DIR"] = cache
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _CHILD, demo_spectrum_path()], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_does_not_trace_the_fit(tmp_path):
    first = _child(str(tmp_path / "cache"))
    second = _child(str(tmp_path / "cache"))
    off = _child("off")
    assert first["traces"] >= 1 and off["traces"] >= 1
    assert second["traces"] == 0  # loaded from the export: no Python tracing
    assert second["values"] == first["values"] == off["values"]
    assert second["intervals"] == first["intervals"] == off["intervals"]
    assert any((tmp_path / "cache").glob("*/exported/*.jaxexport"))
