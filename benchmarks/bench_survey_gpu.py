"""Survey calibration engine on an accelerator (issue 4): throughput per batch size, the
paper-size calibration (1200 simulations x 5 bands) end to end, and the per-map NumPy/SciPy
loop of :mod:`bench_survey` on the same machine's CPU for the ratio.

Everything runs in one process under a time budget (``--deadline-s``), in this order, each
phase's numbers written to the JSON as soon as they exist (a run cut short keeps them):

1. machine description (``common.machine_info``, ``nvidia-smi``, JAX devices);
2. the NumPy/SciPy loop (``bench_survey.NumpyDetector``, the same steps per map) on
   ``--n-numpy`` maps of the 3-24 keV NEP-like field, on one CPU core of the same host;
3. :func:`~bkgjax.missions.nustar_survey.driver.simulate_and_detect` on that field for each
   ``--batch-sizes`` value (one chunk of ``batch_size`` simulations per jitted call): a first
   call of one chunk (compilation included), then ``--timed-chunks`` chunks timed (the
   engine returns NumPy arrays, so the time includes all device work and the transfers);
   device peak memory from ``jax.Device.memory_stats``;
4. :func:`~bkgjax.missions.nustar_survey.simulation.run_survey_simulation` on the shipped NEP-like
   configuration with ``batch_size = --calibration-batch`` (``batches_per_chunk = 1``),
   ``--n-sims`` simulations per band for the bands that fit in the time left (estimated from
   phase 3), each band's ``simulate_and_detect`` timed (its compilation included) and the
   whole run (calibration products and figures included); the thresholds table is compared
   with the CPU run in ``results/nep_like_1200`` (same seed: same keys);
5. further ``--late-batch-sizes`` throughput points if time is left.

Usage (GPU machine; ``--out-dir`` receives the calibration products)::

    python benchmarks/bench_survey_gpu.py --out-dir /tmp/cal --json results/survey_gpu.json

On a CPU host it runs too (slowly; ``--crop`` and small ``--n-sims`` for a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

T0 = time.perf_counter()


def _elapsed():
    return time.perf_counter() - T0


def _log(msg):
    print(f"[{_elapsed():7.1f} s] {msg}", flush=True)


def _nvidia_smi():
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"unavailable: {err}"


def _peak_device_mib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


class Report:
    def __init__(self, path):
        self.path = Path(path)
        self.data = {"benchmark": "survey_gpu", "phases": {}}

    def put(self, key, value):
        self.data["phases"][key] = value
        self.write()

    def write(self):
        self.data["elapsed_s"] = _elapsed()
        common.write_json(self.path.stem, self.data, self.path.parent)


def numpy_loop(field, n_maps, seed):
    import bench_survey as bs

    expo, bkg, fcxb, scale = field
    det = bs.NumpyDetector(expo, bkg, fcxb, scale, "3-24", 128, float(bkg.sum()))
    det.one_sim(np.random.default_rng(seed + 1))  # warm caches
    rng = np.random.default_rng(seed)
    samples, n_det = [], []
    for _ in range(n_maps):
        t = time.perf_counter()
        d = det.one_sim(rng)
        samples.append(time.perf_counter() - t)
        n_det.append(d["x"].size)
    return {"n_maps": n_maps, "samples_s": samples, "per_sim_s": float(np.median(samples)),
            "per_sim_min_s": float(np.min(samples)), "n_det_per_sim": float(np.mean(n_det))}


def throughput(field, batch_size, timed_chunks, seed):
    import jax

    from bkgjax.missions.nustar_survey import driver as sv

    expo, bkg, fcxb, scale = field
    kw = dict(band="3-24", max_candidates=128, match_total_counts=float(bkg.sum()),
              filler=fcxb, batch_size=batch_size, batches_per_chunk=1, progress=False)
    t = time.perf_counter()
    sv.simulate_and_detect(seed + 1, batch_size, expo, bkg, scale, **kw)
    first = time.perf_counter() - t
    n = batch_size * timed_chunks
    t = time.perf_counter()
    res = sv.simulate_and_detect(seed, n, expo, bkg, scale, **kw)
    jax.block_until_ready(res.det_ml)
    wall = time.perf_counter() - t
    return {"batch_size": batch_size, "first_call_s": first, "n_sims": n, "wall_s": wall,
            "per_sim_s": wall / n, "sims_per_s": n / wall,
            "n_det_per_sim": float(np.mean(np.sum(res.det_valid, axis=1))),
            "n_src_per_sim": float(np.mean(np.sum(res.src_valid, axis=1))),
            "device_peak_mib_so_far": _peak_device_mib()}


def compare_thresholds(table_path, reference_path):
    from astropy.table import Table

    new, ref = Table.read(table_path), Table.read(reference_path)
    rows = []
    for r in new:
        m = (ref["band"] == r["band"]) & (ref["exp_min_ks"] == r["exp_min_ks"])
        if not np.any(m):
            continue
        q = ref[m][0]
        rows.append({"band": str(r["band"]), "exp_min_ks": float(r["exp_min_ks"]),
                     "n_det": int(r["n_det"]), "n_det_cpu": int(q["n_det"]),
                     "n_matched": int(r["n_matched"]), "n_matched_cpu": int(q["n_matched"]),
                     "det_ml_95": float(r["det_ml_95"]), "det_ml_95_cpu": float(q["det_ml_95"]),
                     "det_ml_99": float(r["det_ml_99"]), "det_ml_99_cpu": float(q["det_ml_99"]),
                     "ratio_95_paper": float(r["ratio_95"]),
                     "ratio_99_paper": float(r["ratio_99"])})
    return rows


def calibration(args, per_sim_s, first_call_s, report):
    import jax

    from bkgjax.missions.nustar_survey import driver as sv
    from bkgjax.missions.nustar_survey import simulation as ssim

    cfg = ssim.read_survey_config(ssim.default_config_path())
    cfg = dataclasses.replace(cfg, batch_size=args.calibration_batch, batches_per_chunk=1)
    bands = list(cfg.bands if args.bands is None else args.bands.split(","))
    # per band: the simulations, a compilation, and ~15 s of calibration products (CPU)
    per_band = args.n_sims * per_sim_s + first_call_s + 15.0
    left = args.deadline_s - _elapsed() - 20.0
    fit = max(0, min(len(bands), int(left // per_band)))
    _log(f"calibration: {per_band:.0f} s per band estimated, {left:.0f} s left -> "
         f"{fit} of {len(bands)} bands")
    if fit == 0:
        return {"skipped": f"{per_band:.0f} s per band estimated, {left:.0f} s left"}
    bands = bands[:fit]
    calls = []
    original = sv.simulate_and_detect

    def timed(*a, **k):
        t = time.perf_counter()
        out = original(*a, **k)
        jax.block_until_ready(out.det_ml)
        calls.append({"band": k.get("band"), "n_sims": a[1], "wall_s": time.perf_counter() - t})
        _log(f"  band {k.get('band')}: {a[1]} simulations in {calls[-1]['wall_s']:.1f} s")
        report.put("calibration_partial", {"calls": calls})
        return out

    sv.simulate_and_detect = timed
    try:
        t = time.perf_counter()
        summary = ssim.run_survey_simulation(cfg, args.out_dir, n_sims=args.n_sims,
                                             bands=bands, progress=True, plots=True)
        wall = time.perf_counter() - t
    finally:
        sv.simulate_and_detect = original
    sim_s = sum(c["wall_s"] for c in calls)
    out = {"bands": bands, "n_sims_per_band": args.n_sims,
           "batch_size": args.calibration_batch, "wall_s_total": wall,
           "simulate_and_detect_s_total": sim_s, "calls": calls,
           "sims_per_s_including_compilation": args.n_sims * len(bands) / sim_s,
           "device_peak_mib_so_far": _peak_device_mib(),
           "summary_bands": {b: {k: v for k, v in summary["bands"][b].items()
                                 if not isinstance(v, (list, dict))} for b in bands}}
    ref = Path(__file__).resolve().parent / "results" / "nep_like_1200" / "thresholds.ecsv"
    if ref.exists() and args.n_sims == 1200:
        out["thresholds_vs_cpu_run"] = compare_thresholds(
            os.path.join(args.out_dir, "thresholds.ecsv"), ref)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="64", help="phase-3 batch sizes (comma-separated)")
    ap.add_argument("--late-batch-sizes", default="16,256",
                    help="phase-5 batch sizes, if time is left")
    ap.add_argument("--timed-chunks", type=int, default=4)
    ap.add_argument("--calibration-batch", type=int, default=64)
    ap.add_argument("--n-sims", type=int, default=1200, help="calibration simulations per band")
    ap.add_argument("--bands", default=None, help="calibration bands (default: all five)")
    ap.add_argument("--n-numpy", type=int, default=6)
    ap.add_argument("--crop", type=int, default=None, help="central NxN sub-field (smoke test)")
    ap.add_argument("--deadline-s", type=float, default=480.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="survey_gpu_calibration")
    ap.add_argument("--json", default=str(common.RESULTS_DIR / "survey_gpu.json"))
    args = ap.parse_args(argv)

    import bench_survey as bs
    import jax

    import bkgjax  # noqa: F401  (float64)

    report = Report(args.json)
    info = common.machine_info()
    info["nvidia_smi"] = _nvidia_smi()
    info["jax_backend"] = jax.default_backend()
    report.data["machine"] = info
    report.data["code"] = common.code_version()
    report.data["args"] = vars(args)
    report.write()
    _log(f"backend {jax.default_backend()}: {jax.devices()}; {info['nvidia_smi']}")

    field = bs.load_field("3-24", args.crop)
    _log(f"field {field[0].shape}, {args.n_numpy} NumPy maps ...")
    if args.n_numpy > 0:
        report.put("numpy_loop", numpy_loop(field, args.n_numpy, args.seed))
        _log(f"  NumPy loop {report.data['phases']['numpy_loop']['per_sim_s']:.3f} s per map")

    sweep = []
    for b in (int(x) for x in args.batch_sizes.split(",") if x.strip()):
        _log(f"throughput, batch {b} ...")
        sweep.append(throughput(field, b, args.timed_chunks, args.seed))
        _log(f"  {sweep[-1]['per_sim_s'] * 1e3:.2f} ms per simulation "
             f"(first call {sweep[-1]['first_call_s']:.1f} s)")
        report.put("throughput", sweep)
    best = min(sweep, key=lambda r: r["per_sim_s"])
    try:
        report.put("calibration", calibration(args, best["per_sim_s"],
                                              best["first_call_s"], report))
    except Exception as err:  # noqa: BLE001 - keep the throughput numbers
        import traceback

        traceback.print_exc()
        report.put("calibration", {"error": repr(err)})
    for b in (int(x) for x in args.late_batch_sizes.split(",") if x.strip()):
        need = best["first_call_s"] * 1.5 + args.timed_chunks * b * best["per_sim_s"] * 2
        if args.deadline_s - _elapsed() < need + 10:
            _log(f"no time left for batch {b}")
            continue
        _log(f"throughput, batch {b} ...")
        try:
            sweep.append(throughput(field, b, args.timed_chunks, args.seed))
            _log(f"  {sweep[-1]['per_sim_s'] * 1e3:.2f} ms per simulation")
        except Exception as err:  # noqa: BLE001 - e.g. out of device memory
            sweep.append({"batch_size": b, "error": repr(err)[:500]})
        report.put("throughput", sweep)
    np_t = report.data["phases"].get("numpy_loop", {}).get("per_sim_s")
    best = min((r for r in sweep if "per_sim_s" in r), key=lambda r: r["per_sim_s"])
    report.data["summary"] = {
        "backend": jax.default_backend(), "device": str(jax.devices()[0]),
        "best_batch_size": best["batch_size"], "per_sim_s": best["per_sim_s"],
        "sims_per_s": best["sims_per_s"], "numpy_loop_per_sim_s": np_t,
        "speedup_vs_numpy_loop": (np_t / best["per_sim_s"]) if np_t else None,
        "device_peak_mib": _peak_device_mib()}
    report.write()
    _log(f"done: {json.dumps(report.data['summary'], default=str)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
