"""bkgjax.runtime: float64 and the persistent compilation cache set up on import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bkgjax.runtime import compilation_cache_dir

ROOT = Path(__file__).resolve().parents[1]


def test_cache_dir_precedence(tmp_path):
    own = compilation_cache_dir({"BKGJAX_CACHE_DIR": str(tmp_path / "c"), "XDG_CACHE_HOME": "/x"})
    assert Path(own).parent == tmp_path / "c"
    xdg = compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert Path(xdg).parent == tmp_path / "xdg" / "bkgjax"
    home = compilation_cache_dir({})
    assert Path(home).parent == Path("~/.cache/bkgjax").expanduser()
    # one sub-folder per JAX version, machine and CPU feature set
    assert Path(home).name.startswith("jax-") and Path(home).name == Path(own).name


@pytest.mark.parametrize("value", ["", "off", "OFF", "none", "0", "false", "no"])
def test_cache_can_be_turned_off(value):
    assert compilation_cache_dir({"BKGJAX_CACHE_DIR": value}) is None


_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import bkgjax
imported_jax = "jax" in sys.modules
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)

@jax.jit
def f(x):
    for i in range(40):
        x = jnp.sin(x) * 1.0001 + jnp.cos(x * i)
    return x.sum()

value = float(f(jnp.linspace(0.0, 1.0, 50)))
print(json.dumps({"imported_jax": imported_jax, "x64": bool(jax.config.jax_enable_x64),
                  "dir": jax.config.jax_compilation_cache_dir, "hits": len(hits), "value": value}))
"""


def _child(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "BKGJAX_"))}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_reads_the_cache(tmp_path):
    env = {"BKGJAX_CACHE_DIR": str(tmp_path / "cache"),
           # every compilation written, whatever the machine's speed
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    first = _child(env)
    assert not first["imported_jax"]  # import bkgjax alone stays light
    assert first["x64"] and first["dir"].startswith(str(tmp_path / "cache"))
    assert first["hits"] == 0
    assert any(Path(first["dir"]).glob("jit_f-*"))
    second = _child(env)
    assert second["hits"] >= 1 and second["value"] == first["value"]


def test_cache_off_writes_nothing(tmp_path):
    out = _child({"BKGJAX_CACHE_DIR": "off", "XDG_CACHE_HOME": str(tmp_path)})
    assert out["dir"] is None and out["x64"]
    assert not (tmp_path / "bkgjax").exists()


def test_unwritable_cache_folder_is_said_once_and_turned_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "BKGJAX_"))}
    env.update(BKGJAX_CACHE_DIR=str(blocker / "cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dir"] is None and result["x64"]
    assert out.stderr.count("cannot create the compilation cache folder") == 1
