"""INTEGRAL/IBIS-ISGRI ridge pipeline benchmark (issue 5): the whole ``isgri-ridge`` recipe on a
simulated table of the paper's size (~130,000 screened ScWs, 2700 orbits, the three wide bands
plus the 168-185 keV clipping band).

Sections

1. ``simulate``: :func:`bkgjax.missions.isgri.mission.simulate_mission` (seed 0, 2700 orbits,
   ``--scw-per-orbit`` 64 before screening).
2. ``io``: writing and reading the FITS tables (validation included).
3. ``analyse``: :func:`bkgjax.missions.isgri.ridge.analyse` -- screening, orbit background
   model (two passes), transient and orbit clipping, Crab cubic, the Gaussian-plus-wings fits of
   the 4 Table-1 regions and 11 longitude bins in every band.  First call (includes the jit
   compilation of the batched fit) and the median of ``--repeat`` warm calls, with the split
   per step.
4. ``results``: region fluxes vs the injected truth.

Writes ``benchmarks/results/isgri_ridge.json``.

Run:  python benchmarks/bench_isgri_ridge.py            (~1-2 min on 2 CPU cores)
      python benchmarks/bench_isgri_ridge.py --quick    (300 orbits)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import code_version, machine_info, machine_line, write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orbits", type=int, default=2700)
    parser.add_argument("--scw-per-orbit", type=float, default=64.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.orbits, args.repeat = 300, 2

    import bkgjax  # noqa: F401
    from bkgjax.missions.isgri.mission import simulate_mission, write_tables
    from bkgjax.missions.isgri.ridge import analyse, results_payload
    from bkgjax.missions.isgri.tables import read_crab_table, read_scw_table

    out = {"machine": machine_info(), "code": code_version(), "task": {
        "orbits": args.orbits, "scw_per_orbit_before_screening": args.scw_per_orbit,
        "bands": ["25_60", "60_80", "80_200", "168_185"], "seed": 0}}
    print(machine_line(out["machine"]))

    t0 = time.perf_counter()
    scw, crab, truth = simulate_mission(seed=0, n_orbits=args.orbits,
                                        scw_per_orbit=args.scw_per_orbit)
    out["simulate_s"] = time.perf_counter() - t0
    out["n_scw_table"] = len(scw)
    out["n_crab_scw"] = len(crab)
    print(f"simulated {len(scw)} ScWs, {len(crab)} Crab ScWs in {out['simulate_s']:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p_scw, p_crab = write_tables(scw, crab, tmp)
        out["write_fits_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scw_d, crab_d = read_scw_table(p_scw), read_crab_table(p_crab)
        out["read_validate_fits_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = analyse(scw_d, crab_d)
    out["analyse_first_s"] = time.perf_counter() - t0
    out["analyse_first_steps_s"] = result.timings
    warm, steps = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = analyse(scw_d, crab_d)
        warm.append(time.perf_counter() - t0)
        steps.append(result.timings)
    out["analyse_warm_s"] = {"median": float(np.median(warm)), "all": warm}
    out["analyse_warm_steps_s"] = steps[int(np.argsort(warm)[len(warm) // 2])]
    out["n_scw_screened"] = len(result.data)
    t0 = time.perf_counter()
    payload = results_payload(result, spectra=False)
    out["payload_s"] = time.perf_counter() - t0
    out["screening"] = payload["screening"]
    print(f"analyse: first {out['analyse_first_s']:.1f} s, warm median "
          f"{out['analyse_warm_s']['median']:.1f} s on {len(result.data)} screened ScWs")

    regions = {}
    for name, per_band in result.regions.items():
        regions[name] = {}
        for band in ("25_60", "60_80", "80_200"):
            r, t = per_band[band], truth["regions"][name][band]
            regions[name][band] = {"value": r["value"], "error": r["error"],
                                   "total_error": r["total_error"], "truth": t,
                                   "pull_total": (r["value"] - t) / r["total_error"],
                                   "n_scw": r["n_scw"]}
            print(f"  {name:12s} {band:7s} {r['value']:8.2f} +- {r['error']:5.2f} "
                  f"(total {r['total_error']:5.2f})  truth {t:8.2f}")
    out["regions"] = regions
    path = write_json("isgri_ridge_quick" if args.quick else "isgri_ridge", out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
