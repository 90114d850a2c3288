"""Whole-process speed as a user feels it: one command from a new process to the answer.

The same spectrum and the same job for both tools: the DG Tau Chandra ACIS spectrum (shipped
in bkgjax), a power law, C-stat, 0.5-7 keV, best fit plus 90 % bounds.

* ``bkgjax fit-spectrum PHA --model powerlaw --stat cstat --erange 0.5 7`` (profile bounds at
  Delta C = 2.706), with a *warm* persistent compilation cache (a cache folder that an earlier
  run filled) and with a *cold* one (a new, empty folder: the first run on a machine);
* a Sherpa script doing the same: ``load_pha`` (+ the ARF and RMF, whose header names lack the
  ``.gz``), ``notice(0.5, 7)``, ``powlaw1d``, ``cstat``,
  ``fit()``, ``conf()`` (Sherpa's 90 % bounds; run with ``--sherpa-python`` pointing at an
  interpreter with Sherpa installed, see benchmarks/README.md).

Runs are interleaved (cold, warm, Sherpa, cold, warm, Sherpa, ...) so that a load change on a
shared machine hits all of them alike; the medians are compared.  Also timed: ``python -c
"import bkgjax"`` and ``bkgjax --help``.  Writes results/whole_process.json.

    python benchmarks/bench_whole_process.py --sherpa-python /work/peers/bin/python --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def _run(cmd, env):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):  # 1: fit-spectrum's "not converged" status
        raise RuntimeError(f"{cmd[:3]} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return wall, out.stdout


def _env(cache_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "BKGJAX_"))}
    env["BKGJAX_CACHE_DIR"] = str(cache_dir)
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sherpa-python", default=None, help="interpreter with Sherpa (else skipped)")
    ap.add_argument("--bkgjax", default=str(Path(sys.executable).with_name("bkgjax")),
                    help="the bkgjax command (default: beside this interpreter)")
    ap.add_argument("--out", default="whole_process")
    args = ap.parse_args(argv)

    pha = demo_pha_path()
    lo, hi = ERANGE
    work = Path(tempfile.mkdtemp(prefix="bench_whole_"))
    warm_dir = work / "warm-cache"
    fit_cmd = [args.bkgjax, "fit-spectrum", pha, "--model", "powerlaw", "--stat", "cstat",
               "--erange", str(lo), str(hi), "--json", str(work / "fit.json")]
    _run(fit_cmd, _env(warm_dir))  # fills the warm cache once
    times = {"bkgjax_cold": [], "bkgjax_warm": [], "sherpa": [], "import_bkgjax": [],
             "bkgjax_help": []}
    for i in range(args.repeat):
        times["bkgjax_cold"].append(_run(fit_cmd, _env(work / f"cold-{i}"))[0])
        times["bkgjax_warm"].append(_run(fit_cmd, _env(warm_dir))[0])
        if args.sherpa_python:
            t, out = _run([args.sherpa_python, "-c", SHERPA_SCRIPT, pha, str(lo), str(hi),
                           pha.replace("N023_r0009_pha3", "N022_r0009_arf3"),
                           pha.replace("N023_r0009_pha3", "N022_r0009_rmf3")], _env(warm_dir))
            times["sherpa"].append(t)
            sherpa_result = json.loads(out.strip().splitlines()[-1])
        times["import_bkgjax"].append(_run([sys.executable, "-c", "import bkgjax"], _env(warm_dir))[0])
        times["bkgjax_help"].append(_run([args.bkgjax, "--help"], _env(warm_dir))[0])
    bkgjax_result = json.loads((work / "fit.json").read_text())
    med = {k: (statistics.median(v) if v else None) for k, v in times.items()}
    ratios = {}
    if med["sherpa"]:
        ratios = {"warm_over_sherpa": med["bkgjax_warm"] / med["sherpa"],
                  "cold_over_sherpa": med["bkgjax_cold"] / med["sherpa"]}
    info = machine_info()
    payload = {"machine": info, "code": code_version(), "spectrum": pha, "erange_keV": [lo, hi],
               "repeat": args.repeat, "times_s": times, "median_s": med, "ratios": ratios,
               "bkgjax_result": {k: bkgjax_result[k] for k in ("stat_value", "params")},
               "sherpa_result": sherpa_result if args.sherpa_python else None}
    path = write_json(args.out, payload)
    print(machine_line(info))
    for k, v in med.items():
        if v is not None:
            print(f"  {k:14s} median {v:6.2f} s  ({', '.join(f'{t:.2f}' for t in times[k])})")
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
