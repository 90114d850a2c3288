"""Which of the survey engine's speed changes matter (issue 4): the jitted chunk runner
:data:`bkgjax.missions.nustar_survey.driver.run_chunk` on the NEP-like 3-24 keV field with
each change undone in turn, timed in one process (same keys, after a compiling warm-up
call).

Variants:

* ``current``: the engine as it is;
* ``no_materialise``: ``xla_cpu.materialised`` replaced by its reference form, the identity
  (XLA then fuses the Poisson walk, the photon positions and the 20" stencil into their
  consumers and recomputes them);
* ``fft_tophat``: the counts' 20" sums by the float64 FFT (rounded to integers, as the
  detection takes int32 sums) instead of the int32 column-prefix sums;
* ``walk_loop``: the background Poisson walk with its while loop in every simulation
  (``SimExecution.finish_poisson_tail=True``) instead of the loop-free walk;
* ``old_compaction``: the prefix-sum + scatter compaction instead of the bit-packed
  ``xla_cpu.compact_indices``;
* ``all_old``: all four undone.

All variants must give the same detections (checked: same pixels, DET_ML within 1e-10
relative).  Writes ``results/survey_ablation.json``
(``--results-dir`` elsewhere).

    python benchmarks/ablate_survey_engine.py            # 32 sims x 2 rounds per variant
    python benchmarks/ablate_survey_engine.py --n-sims 4 --rounds 1 --variants current
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import machine_info, write_json  # noqa: E402

VARIANTS = ("current", "no_materialise", "fft_tophat", "walk_loop", "old_compaction",
            "all_old")


def _scan_scatter_compaction(mask, size, packed=None):
    """The earlier ``compact_indices``: prefix sum + scatter over every pixel (``packed``, the
    bit-packed mask of the current form, is ignored)."""
    import jax.numpy as jnp
    from jax import lax

    flat = jnp.asarray(mask).ravel()
    n = flat.size
    rank = lax.associative_scan(jnp.add, flat.astype(jnp.int32)) - 1
    target = jnp.where(flat, rank, size)
    return jnp.full(size, n, jnp.int32).at[target].set(jnp.arange(n, dtype=jnp.int32),
                                                       mode="drop", unique_indices=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-sims", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--results-dir", default=None,
                    help="where survey_ablation.json goes (default: benchmarks/results)")
    args = ap.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    if not variants or set(variants) - set(VARIANTS):
        ap.error(f"--variants must name some of {VARIANTS}")
    if "current" not in variants:
        variants = ("current",) + variants  # the reference of the agreement check

    import jax
    import jax.numpy as jnp
    from bench_survey import load_field

    import bkgjax  # noqa: F401  (float64)
    from bkgjax.missions.nustar_survey import driver as sv
    from bkgjax.missions.nustar_survey import fixed_detection as fd
    from bkgjax.missions.nustar_survey import xla_cpu

    expo, bkg, fcxb, scale = load_field("3-24")
    e, b, f = (jnp.asarray(a) for a in (expo, bkg, fcxb))
    b_sum, limit = fd.detection_background(e, b, 20.0 / scale)
    terms = fd.series_terms_for(b_sum, limit)
    split = sv.poisson_split_for(b, float(bkg.sum()))
    mt = jnp.asarray(float(bkg.sum()))
    chunk = 2 * args.batch_size
    keys = sv.simulation_keys(jax.random.PRNGKey(0), args.n_sims)
    physics = sv.SurveyPhysics(pixel_scale_arcsec=scale, max_sources=512, max_candidates=128,
                               series_terms=terms, poisson_split_mean=split,
                               max_bright_pixels=0)
    # the callers look these up as module attributes at trace time, so replacing them there
    # changes what the next compilation uses
    original = (xla_cpu.materialised, fd.tophat_sum_runs, xla_cpu.compact_indices)

    def fft_sums(image, radius_pix, exposure=None, integer=False, dtype=jnp.float64):
        sums = jnp.round(fd.tophat_sum_fft(image, radius_pix, exposure), 9)
        return jnp.rint(sums).astype(dtype) if jnp.issubdtype(dtype, jnp.integer) else sums

    times = {v: [] for v in variants}
    results = {}
    for _ in range(args.rounds):
        for i, name in enumerate(variants):
            old = name == "all_old"
            xla_cpu.materialised = (xla_cpu.materialised_reference
                                    if old or name == "no_materialise" else original[0])
            fd.tophat_sum_runs = fft_sums if old or name == "fft_tophat" else original[1]
            xla_cpu.compact_indices = (_scan_scatter_compaction
                                       if old or name == "old_compaction" else original[2])
            # a distinct (negligibly different) eval_fraction per variant: a new static
            # setting, so run_chunk compiles each variant instead of reusing the cache
            execution = sv.SimExecution(batch_size=args.batch_size,
                                        eval_fraction=0.08 + 1e-6 * i,
                                        finish_poisson_tail=old or name == "walk_loop")

            def run(k, execution=execution):
                return sv.run_chunk(k, e, b, mt, f, b_sum, limit, physics=physics,
                                    execution=execution, use_match=True, use_filler=True)

            jax.block_until_ready(run(keys[:chunk]))
            t0 = time.perf_counter()
            out = [jax.tree_util.tree_map(np.asarray, run(keys[j:j + chunk]))
                   for j in range(0, args.n_sims, chunk)]
            times[name].append((time.perf_counter() - t0) / args.n_sims)
            results[name] = out
            print(f"{name:16s} {times[name][-1] * 1e3:7.1f} ms per simulation", flush=True)
    xla_cpu.materialised, fd.tophat_sum_runs, xla_cpu.compact_indices = original
    agree = {}
    for name in variants:
        same = all(np.array_equal(a.det_valid, c.det_valid) and np.array_equal(a.det_x, c.det_x)
                   and np.array_equal(a.det_y, c.det_y)
                   for a, c in zip(results["current"], results[name]))
        dml = max(float(np.max(np.abs(a.det_ml - c.det_ml) / np.maximum(np.abs(a.det_ml), 1)))
                  for a, c in zip(results["current"], results[name]))
        agree[name] = {"same_detections": bool(same), "det_ml_rel_diff_max": dml}
        if not same or dml > 1e-10:
            raise SystemExit(f"variant {name} changed the detections ({agree[name]})")
    median = {k: float(np.median(v)) for k, v in times.items()}
    payload = {"benchmark": "survey engine ablation (issue 4)",
               "command": "python benchmarks/ablate_survey_engine.py " + " ".join(argv or
                                                                                  sys.argv[1:]),
               "machine": machine_info(), "n_sims": args.n_sims, "rounds": args.rounds,
               "batch_size": args.batch_size, "per_sim_s": times, "per_sim_median_s": median,
               "slowdown_vs_current": {k: v / median["current"] for k, v in median.items()},
               "agreement": agree}
    print({k: round(v, 2) for k, v in payload["slowdown_vs_current"].items()})
    print("wrote", write_json("survey_ablation", payload, args.results_dir))


if __name__ == "__main__":
    main()
