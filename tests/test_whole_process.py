"""What makes a ``bkgjax`` command fast as a whole process (benchmarks/bench_whole_process.py):
one-shot compilation of the exported fits and their compiled executables kept on disk, the
host-made PRNG key, the fast process exit, and the fit-spectrum path importing neither astropy
nor the sampling stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from bkgjax import runtime
from bkgjax.cli import demo_spectrum_path, main
from bkgjax.fit import core, export_cache, fit, guess_norms, load
from bkgjax.spectral import powerlaw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return load(demo_spectrum_path(), erange=(0.5, 7.0), use_background=False)


def test_one_shot_options_only_inside_the_block_and_on_the_cpu():
    assert runtime.one_shot_compiler_options("cpu") is None
    with runtime.one_shot_compilation():
        assert runtime.one_shot_compiler_options("cpu") == runtime.ONE_SHOT_COMPILER_OPTIONS
        assert runtime.one_shot_compiler_options("gpu") is None
        with runtime.one_shot_compilation():
            pass
        assert runtime.one_shot_compiler_options("cpu") is not None
    assert runtime.one_shot_compiler_options("cpu") is None
    with runtime.one_shot_compilation({"BKGJAX_ONE_SHOT": "off"}):
        assert runtime.one_shot_compiler_options("cpu") is None


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1, 2**32 + 5, 2**63 - 1, np.int64(7)])
def test_host_prng_key_is_jax_key(seed):
    a, b = jax.random.PRNGKey(seed), export_cache.prng_key(seed)
    assert (a.dtype, a.shape, a.weak_type) == (b.dtype, b.shape, b.weak_type)
    assert np.array_equal(a, b)


def _numbers(result):
    return np.array([*result.values.values(), *(b for pair in result.intervals.values()
                                                 for b in pair), result.stat_value])


_ONE_SHOT_CHILD = r"""
import json, sys, warnings
from pathlib import Path
import numpy as np
from bkgjax import runtime
from bkgjax.fit import export_cache, fit, guess_norms, load
from bkgjax.spectral import powerlaw
data = load(sys.argv[1], erange=(0.5, 7.0), use_background=False)
model = guess_norms(powerlaw(PhoIndex=1.5), data)
folder = export_cache.export_folder()
def numbers(r):
    return [*r.values.values(), *(b for pair in r.intervals.values() for b in pair), r.stat_value]
out = {"default": numbers(fit(model, data, "cstat")),
       "exec_after_default": len(list(folder.glob("*.jaxexec")))}
with runtime.one_shot_compilation():
    out["first"] = numbers(fit(model, data, "cstat"))  # compiled with the one-shot options
    (exe,) = folder.glob("*.jaxexec")
    export_cache._EXECUTABLES.clear()
    out["again"] = numbers(fit(model, data, "cstat"))  # loaded from the file
    out["loaded"] = str(exe) in export_cache._EXECUTABLES
    exe.write_bytes(b"damaged")
    export_cache._EXECUTABLES.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["repaired"] = numbers(fit(model, data, "cstat"))
    out["warned"] = any("unusable compiled" in str(w.message) for w in caught)
print(json.dumps(out))
"""


def test_one_shot_fit_is_kept_compiled_and_equals_the_default(tmp_path):
    # a new process with a new cache: the one-shot compilation is fresh (an executable that
    # came from JAX's compilation cache is not kept, it does not serialise back whole)
    run = subprocess.run([sys.executable, "-c", _ONE_SHOT_CHILD, demo_spectrum_path()],
                         env=_env(tmp_path / "cache"), capture_output=True, text=True,
                         timeout=600, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["exec_after_default"] == 0  # library calls: the jitted export only
    np.testing.assert_allclose(out["first"], out["default"], rtol=1e-12, atol=0)
    assert out["again"] == out["first"] and out["loaded"]
    # a damaged executable is said, removed and compiled again
    assert out["warned"] and out["repaired"] == out["first"]


def test_one_shot_without_a_cache_folder(data, monkeypatch):
    model = guess_norms(powerlaw(PhoIndex=1.5), data)
    monkeypatch.setattr(export_cache, "export_folder", lambda: None)
    default = fit(model, data, "cstat", errors="covariance")
    with runtime.one_shot_compilation():
        one_shot = fit(model, data, "cstat", errors="covariance")
    np.testing.assert_allclose(_numbers(one_shot), _numbers(default), rtol=1e-12, atol=0)


def test_guess_norms_uses_host_sums(data):
    model = powerlaw(PhoIndex=1.5)
    guessed = guess_norms(model, data)
    predicted = float(core._total_predicted(np.asarray(list(model.resolve({}).values())), data,
                                            structure=model.structure))
    scale = float(np.sum(np.asarray(data.counts))) / predicted
    np.testing.assert_allclose(guessed["norm"].value, model["norm"].value * scale, rtol=1e-12)


def test_main_called_from_python_returns(tmp_path):
    out = tmp_path / "fit.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["fit-spectrum", demo_spectrum_path(), "--no-background", "--json", str(out)])
    assert code == 0 and json.loads(out.read_text())["converged"] is True


_CHILD = r"""
import json, sys
from bkgjax.cli import main
code = main(sys.argv[1:], fast_exit=False)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"astropy", "numpyro", "optax",
                "arviz", "matplotlib", "pandas", "xarray"})
print(json.dumps({"code": code, "heavy": heavy, "scipy_special": "scipy.special" in sys.modules}))
"""


def _env(cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "BKGJAX_"))}
    env["BKGJAX_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_fit_spectrum_process_is_light_and_exits_fast(tmp_path):
    args = ["fit-spectrum", demo_spectrum_path(), "--no-background", "--json"]
    first = subprocess.run([sys.executable, "-c", _CHILD, *args, str(tmp_path / "a.json")],
                           env=_env(tmp_path / "cache"), capture_output=True, text=True,
                           timeout=600, check=True)
    second = subprocess.run([sys.executable, "-c", _CHILD, *args, str(tmp_path / "b.json")],
                            env=_env(tmp_path / "cache"), capture_output=True, text=True,
                            timeout=600, check=True)
    for out in (first, second):
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["code"] == 0 and result["heavy"] == []
    # the warm process loads the compiled fit: chdtri (scipy.special) is never needed
    assert json.loads(second.stdout.strip().splitlines()[-1])["scipy_special"] is False
    assert json.loads((tmp_path / "a.json").read_text())["params"] == \
        json.loads((tmp_path / "b.json").read_text())["params"]
    # the program itself ends with os._exit after flushing: output and JSON complete
    prog = subprocess.run([sys.executable, "-m", "bkgjax.cli", *args, str(tmp_path / "c.json")],
                          env=_env(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=600)
    assert prog.returncode == 0 and "wrote" in prog.stdout.splitlines()[-1]
    assert json.loads((tmp_path / "c.json").read_text())["params"] == \
        json.loads((tmp_path / "b.json").read_text())["params"]


def test_export_key_fingerprints_the_components_of_joint_models(data, monkeypatch):
    from bkgjax.fit import JointModel
    from bkgjax.spectral import components, parse_model

    leaves, treedef = jax.tree_util.tree_flatten(((data, data),))
    joint = JointModel.create(parse_model("powerlaw"), 2, per_dataset=["norm"])
    key = export_cache._key("f", {"structure": joint.structure}, leaves, treedef)
    spec = components.COMPONENTS["powerlaw"]

    def edited(*args, **kwargs):  # the function behind the name changes between processes
        return spec.function(*args, **kwargs) * 1.0

    monkeypatch.setitem(components.COMPONENTS, "powerlaw",
                        type(spec)(**{**spec.__dict__, "function": edited}))
    assert export_cache._key("f", {"structure": joint.structure}, leaves, treedef) != key
