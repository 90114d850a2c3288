"""Whole-process speed as a user feels it: one command from a new process to the answer.

The same spectra and the same jobs for both tools:

* single spectrum: the DG Tau Chandra ACIS spectrum (shipped in bkgjax), a power law, C-stat,
  0.5-7 keV, best fit plus 90 % bounds: ``bkgjax fit-spectrum PHA --model powerlaw --stat cstat
  --erange 0.5 7`` (profile bounds at Delta C = 2.706) against a Sherpa script doing the same
  (``load_pha`` + the ARF and RMF, whose header names lack the ``.gz``, ``notice(0.5, 7)``,
  ``powlaw1d``, ``cstat``, ``levmar`` ``fit()``, ``conf()`` at 1.645 sigma);
* joint fit of two spectra: NuSTAR FPMA + FPMB of Vela X-1 (shared/data/spectra/nustar_velax1),
  ``bkgjax fit-spectrum A.pha B.pha --per-dataset norm --rmf diag.rmf --erange 3 20
  --no-background`` against Sherpa with two data sets (ARFs from the headers, the same RMF,
  backgrounds unloaded, ``powlaw1d`` per data set with the photon index linked, ``cstat``,
  ``fit()``, ``conf()``: 3 parameters, 6 bounds).

bkgjax runs with a *warm* persistent compilation cache (a folder that an earlier run filled:
every later run on a machine) and with a *cold* one (a new, empty folder: the first run).
Runs are interleaved (cold, warm, Sherpa, joint cold, joint warm, joint Sherpa, ``import
bkgjax``, ``bkgjax --help``, then again) so that a load change on a shared machine hits all
alike; medians, quartiles and extremes are recorded with the CPU time (user + system) of each
run, which a busy machine disturbs less than the wall time.

Byte code: this workplace sets PYTHONDONTWRITEBYTECODE, so a checkout of bkgjax is compiled
from source in every process, unlike an installed package or Sherpa's site-packages.  By
default (``--bytecode installed``) both tools run with their byte code kept
(PYTHONDONTWRITEBYTECODE unset, PYTHONPYCACHEPREFIX in the benchmark's folder, filled by a
first untimed run of each command); ``--bytecode as-is`` keeps the environment.
Code snapshot: other work may edit the checkout while this runs, and a changed source of the
fit changes the compilation-cache keys (a "warm" run would then trace and compile again), so
the bkgjax package is copied into the benchmark's folder first and every bkgjax run imports
that copy (PYTHONPATH); its source hash is recorded (``--no-snapshot`` runs the checkout).
``--bkgjax-env NAME=VALUE`` (repeatable) adds variables to the bkgjax runs (what-if runs, e.g.
a PYTHONPATH entry with another ml_dtypes, put after the snapshot).  Writes
results/<out>.json.

    python benchmarks/bench_whole_process.py --sherpa-python /work/peers/bin/python --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ERANGE, code_version, demo_pha_path, machine_info, machine_line, write_json  # noqa: E402

SHERPA_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import logging
from sherpa.astro import ui
logging.getLogger("sherpa").setLevel(logging.WARNING)
ui.load_pha(sys.argv[1])
ui.load_arf(sys.argv[4])
ui.load_rmf(sys.argv[5])
ui.notice(float(sys.argv[2]), float(sys.argv[3]))
p1 = ui.powlaw1d.p1
ui.set_source(p1)
p1.gamma = 1.5
p1.ampl = 1e-4
ui.set_stat("cstat")
ui.set_method("levmar")
ui.fit()
ui.set_conf_opt("sigma", 1.6448536269514722)  # 90 % two-sided (Delta C = 2.706)
ui.conf()
res = ui.get_conf_results()
fit = ui.get_fit_results()
print(json.dumps({"stat": fit.statval, "values": list(fit.parvals),
                  "lower90": [v + lo for v, lo in zip(res.parvals, res.parmins)],
                  "upper90": [v + hi for v, hi in zip(res.parvals, res.parmaxes)]}))
"""


SHERPA_JOINT_SCRIPT = r"""
import json, sys
import logging
from sherpa.astro import ui
logging.getLogger("sherpa").setLevel(logging.ERROR)  # RESPFILE of the PHA files is absent
rmf, lo, hi = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
for i, pha in enumerate(sys.argv[4:], start=1):
    ui.load_pha(i, pha)          # its ANCRFILE (ARF) comes along
    data = ui.get_data(i)        # --no-background: the source counts alone
    for bkg_id in list(data.background_ids):
        data.delete_background(bkg_id)
    ui.load_rmf(i, rmf)
    ui.notice_id(i, lo, hi)
p1 = ui.powlaw1d.p1
p2 = ui.powlaw1d.p2
ui.set_source(1, p1)
ui.set_source(2, p2)
p1.gamma = 1.5
p2.gamma = p1.gamma              # one photon index, an amplitude per data set
p1.ampl = p2.ampl = 1e-2
ui.set_stat("cstat")
ui.set_method("levmar")
ui.fit()
ui.set_conf_opt("sigma", 1.6448536269514722)  # 90 % two-sided (Delta C = 2.706)
ui.set_conf_opt("max_rstat", 1e9)  # a power law fits Vela X-1 badly (C/dof ~ 89); bounds anyway
ui.conf()
res = ui.get_conf_results()
fit = ui.get_fit_results()
print(json.dumps({"stat": fit.statval, "names": list(fit.parnames), "values": list(fit.parvals),
                  "lower90": [v + lo for v, lo in zip(res.parvals, res.parmins)],
                  "upper90": [v + hi for v, hi in zip(res.parvals, res.parmaxes)]}))
"""

def _run(cmd, env):
    """(wall s, stdout) of one command."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):  # 1: fit-spectrum's "not converged" status
        raise RuntimeError(f"{cmd[:3]} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return wall, out.stdout


class Timer:
    """Runs commands and records wall and CPU time per label (CPU from the children's rusage)."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def run(self, label, cmd, env):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, out = _run(cmd, env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if label is not None:
            self.wall.setdefault(label, []).append(wall)
            self.cpu.setdefault(label, []).append(cpu)
        return out


def _stats(values):
    if not values:
        return None
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "min": min(values),
            "max": max(values)}


def _env(cache_dir, bytecode_dir=None, extra=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "BKGJAX_"))}
    if cache_dir is not None:
        env["BKGJAX_CACHE_DIR"] = str(cache_dir)
    if bytecode_dir is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode_dir)
    env.update(extra)
    return env


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _bkgjax_params(payload):
    return {name: {k: row[k] for k in ("value", "lower90", "upper90") if k in row}
            for name, row in payload["params"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sherpa-python", default=None, help="interpreter with Sherpa (else skipped)")
    ap.add_argument("--bkgjax", default=str(Path(sys.executable).with_name("bkgjax")),
                    help="the bkgjax command (default: beside this interpreter)")
    ap.add_argument("--velax1", default=str(ROOT.parent / "shared" / "data" / "spectra" /
                                            "nustar_velax1"),
                    help="folder of the Vela X-1 FPMA/FPMB spectra (joint fit; skipped if absent)")
    ap.add_argument("--rmf", default=None, help="RMF of the joint fit (default: "
                    "<velax1>/../../nustar/aperture/diag.rmf)")
    ap.add_argument("--bytecode", choices=("installed", "as-is"), default="installed")
    ap.add_argument("--bkgjax-env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the checkout itself, not a copy taken at the start")
    ap.add_argument("--out", default="whole_process")
    args = ap.parse_args(argv)

    pha = demo_pha_path()
    lo, hi = ERANGE
    work = Path(tempfile.mkdtemp(prefix="bench_whole_"))
    bytecode = work / "pycache" if args.bytecode == "installed" else None
    extra = dict(item.split("=", 1) for item in args.bkgjax_env)
    snapshot = None
    if not args.no_snapshot:
        snapshot = work / "code"
        shutil.copytree(ROOT / "bkgjax", snapshot / "bkgjax",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        extra["PYTHONPATH"] = os.pathsep.join(
            [str(snapshot)] + ([extra["PYTHONPATH"]] if extra.get("PYTHONPATH") else []))
    warm_dir = work / "warm-cache"
    fit_cmd = [args.bkgjax, "fit-spectrum", pha, "--model", "powerlaw", "--stat", "cstat",
               "--erange", str(lo), str(hi), "--json", str(work / "fit.json")]
    sherpa_cmd = ([args.sherpa_python, "-c", SHERPA_SCRIPT, pha, str(lo), str(hi),
                   pha.replace("N023_r0009_pha3", "N022_r0009_arf3"),
                   pha.replace("N023_r0009_pha3", "N022_r0009_rmf3")]
                  if args.sherpa_python else None)
    vela = Path(args.velax1)
    rmf = Path(args.rmf) if args.rmf else vela.parents[1] / "nustar" / "aperture" / "diag.rmf"
    joint = [str(vela / f"nu90402339002{m}01_sr.pha") for m in "AB"]
    have_joint = all(Path(f).is_file() for f in joint) and rmf.is_file()
    joint_cmd = [args.bkgjax, "fit-spectrum", *joint, "--per-dataset", "norm", "--rmf", str(rmf),
                 "--erange", "3", "20", "--no-background", "--json", str(work / "joint.json")]
    sherpa_joint_cmd = ([args.sherpa_python, "-c", SHERPA_JOINT_SCRIPT, str(rmf), "3", "20",
                         *joint] if args.sherpa_python and have_joint else None)

    def bk_env(cache):
        return _env(cache, bytecode, extra)

    timer = Timer()
    # untimed: fill the warm cache (and the byte-code folder) once per command
    timer.run(None, fit_cmd, bk_env(warm_dir))
    if have_joint:
        timer.run(None, joint_cmd, bk_env(warm_dir))
    for cmd in (sherpa_cmd, sherpa_joint_cmd):
        if cmd:
            timer.run(None, cmd, _env(None, bytecode))
    results = {}
    for i in range(args.repeat):
        timer.run("bkgjax_cold", fit_cmd, bk_env(work / f"cold-{i}"))
        timer.run("bkgjax_warm", fit_cmd, bk_env(warm_dir))
        if sherpa_cmd:
            results["sherpa"] = json.loads(timer.run("sherpa", sherpa_cmd,
                                                     _env(None, bytecode)).strip().splitlines()[-1])
        if have_joint:
            timer.run("joint_bkgjax_cold", joint_cmd, bk_env(work / f"joint-cold-{i}"))
            timer.run("joint_bkgjax_warm", joint_cmd, bk_env(warm_dir))
            if sherpa_joint_cmd:
                out = timer.run("joint_sherpa", sherpa_joint_cmd, _env(None, bytecode))
                results["joint_sherpa"] = json.loads(out.strip().splitlines()[-1])
        timer.run("import_bkgjax", [sys.executable, "-c", "import bkgjax"], bk_env(warm_dir))
        timer.run("bkgjax_help", [args.bkgjax, "--help"], bk_env(warm_dir))
    fit_payload = json.loads((work / "fit.json").read_text())
    wall = {k: _stats(v) for k, v in timer.wall.items()}
    cpu = {k: _stats(v) for k, v in timer.cpu.items()}
    med = {k: v["median"] for k, v in wall.items()}
    ratios = {}
    for name, (ours, peer) in {"warm_over_sherpa": ("bkgjax_warm", "sherpa"),
                               "cold_over_sherpa": ("bkgjax_cold", "sherpa"),
                               "joint_warm_over_sherpa": ("joint_bkgjax_warm", "joint_sherpa"),
                               "joint_cold_over_sherpa": ("joint_bkgjax_cold", "joint_sherpa")
                               }.items():
        if ours in med and peer in med:
            ratios[name] = med[ours] / med[peer]
            ratios[name + "_cpu"] = cpu[ours]["median"] / cpu[peer]["median"]
            # spread of the ratio: the runs of one round were back to back
            pairs = [a / b for a, b in zip(timer.wall[ours], timer.wall[peer])]
            ratios[name + "_per_round"] = [round(r, 3) for r in pairs]
    info = machine_info()
    payload = {"machine": info, "code": code_version(), "spectrum": pha, "erange_keV": [lo, hi],
               "joint": {"spectra": joint, "rmf": str(rmf), "erange_keV": [3.0, 20.0]}
               if have_joint else None,
               "repeat": args.repeat, "bytecode": args.bytecode, "bkgjax_env": extra,
               "snapshot_sources_sha256": _tree_hash(snapshot / "bkgjax") if snapshot else None,
               "load_average_after": list(os.getloadavg()),
               "times_s": timer.wall, "cpu_s": timer.cpu, "wall_stats_s": wall,
               "cpu_stats_s": cpu, "median_s": med, "ratios": ratios,
               "bkgjax_result": {"stat_value": fit_payload["stat_value"],
                                 "params": fit_payload["params"]},
               "sherpa_result": results.get("sherpa")}
    if have_joint:
        joint_payload = json.loads((work / "joint.json").read_text())
        payload["joint_bkgjax_result"] = {"stat_value": joint_payload["stat_value"],
                                          "params": _bkgjax_params(joint_payload)}
        payload["joint_sherpa_result"] = results.get("joint_sherpa")
    path = write_json(args.out, payload)
    print(machine_line(info))
    for k in timer.wall:
        w, c = wall[k], cpu[k]
        print(f"  {k:18s} wall median {w['median']:6.2f} s [{w['min']:.2f}-{w['max']:.2f}]  "
              f"cpu median {c['median']:6.2f} s [{c['min']:.2f}-{c['max']:.2f}]")
    for k, v in ratios.items():
        if not k.endswith("_per_round"):
            print(f"  {k}: {v:.2f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
