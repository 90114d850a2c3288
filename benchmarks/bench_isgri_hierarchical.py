"""Benchmark of the hierarchical ISGRI orbit-background model (bkgjax.missions.isgri.orbit_background).

Data: ``bkgjax.missions.isgri.mission.simulate_mission`` (issue 5), screened (phase 0.2-0.8,
exposure >= 700 s), band 25-60 keV, Crab rate from the Appendix-B cubic; the model uses the BKG
ScWs and the ScWs of the Table-1 Galactic regions (GB, L+20, L-20) -- the other Galactic ScWs
carry an unknown GRXE and do not enter the likelihood.

Timings:

* ``gradient``: one jitted gradient of the NumPyro potential (the work of one leapfrog step) at
  the full size (``--n-orbits``, default 2700 orbits x 64 ScWs/orbit before screening, about
  130,000 screened ScWs as in the paper);
* ``nuts``: a NUTS run (``--warmup``/``--samples``/``--chains``, vectorised chains) on the first
  ``--nuts-orbits`` orbits in revolution order (a documented subsample: the full 2700-orbit
  sampling takes longer than this benchmark's budget on a shared 2-core CPU; the per-step cost
  scales linearly with the number of ScWs, see ``gradient``): wall time (compiled run; the
  first call also reports the compile time), leapfrog steps per draw, ESS/s of the region
  intensities, divergences, recovered vs injected intensities.

Writes ``benchmarks/results/isgri_hierarchical.json``.

Run:  python benchmarks/bench_isgri_hierarchical.py                 (about 10 min on 2 cores)
      python benchmarks/bench_isgri_hierarchical.py --nuts-orbits 2700   (full size)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
from common import code_version, machine_info, write_json  # noqa: E402

import bkgjax  # noqa: E402,F401
from bkgjax.missions.isgri import instrument as isgri  # noqa: E402
from bkgjax.missions.isgri.mission import simulate_mission  # noqa: E402
from bkgjax.missions.isgri.orbit_background import (
    _batch,
    _config,
    fit_orbit_background,
    orbit_background_model,
    orbit_data_from_scws,
)

BAND = "25_60"
REGIONS = ("GB", "L+20", "L-20")


def build(seed, n_orbits, scw_per_orbit, max_orbits=None):
    scw, crab, truth = simulate_mission(seed=seed, n_orbits=n_orbits,
                                        scw_per_orbit=scw_per_orbit, bands=(BAND,))
    keep, gal = isgri.screen(np.asarray(scw["PHASE"]), np.asarray(scw["EXPOSURE"]),
                             np.asarray(scw["L"]), np.asarray(scw["B"]))
    s, gal = scw[keep], gal[keep]
    if max_orbits is not None:
        revs = np.unique(np.asarray(s["REV"]))[:max_orbits]
        sub = np.isin(np.asarray(s["REV"]), revs)
        s, gal = s[sub], gal[sub]
    cal = isgri.crab_calibration(np.asarray(crab["REV"]), np.asarray(crab["OFFSET"]),
                                 np.asarray(crab[f"RATE_{BAND}"])[:, None], [BAND])
    masks = {r.name: isgri.in_region(np.asarray(s["L"]), np.asarray(s["B"]), r)
             for r in isgri.PAPER_REGIONS if r.name in REGIONS}
    data, used = orbit_data_from_scws(
        np.asarray(s["REV"]), np.asarray(s["PHASE"]), np.asarray(s[f"RATE_{BAND}"]),
        np.asarray(s[f"RATE_ERR_{BAND}"]), ~gal, masks, cal.rate(np.asarray(s["REV"]))[:, 0])
    return data, truth, int(len(s))


def gradient_timing(data, repeat=20):
    from numpyro.infer.util import initialize_model

    arrays, *_ = _batch([data])
    cfg = dict(_config(data.n_regions, False, "mixed", False, 1000.0))
    info = initialize_model(jax.random.PRNGKey(0),
                            lambda d: orbit_background_model(d, **cfg), model_args=(arrays,))
    grad = jax.jit(jax.grad(info.potential_fn))
    params = info.param_info.z
    start = time.perf_counter()
    jax.block_until_ready(grad(params))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(grad(params))
        times.append(time.perf_counter() - start)
    return {"compile_s": compile_s, "median_ms": 1e3 * float(np.median(times)),
            "n_latent": int(sum(np.size(v) for v in jax.tree_util.tree_leaves(params)))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-orbits", type=int, default=2700)
    p.add_argument("--scw-per-orbit", type=float, default=64)
    p.add_argument("--nuts-orbits", type=int, default=150)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--chains", type=int, default=2)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    full, truth, n_screened = build(args.seed, args.n_orbits, args.scw_per_orbit)
    build_s = time.perf_counter() - t0
    print(f"full mission: {n_screened} screened ScWs, model uses {full.n_scw} in "
          f"{full.n_orbits} orbits ({full.is_background.sum()} BKG) [{build_s:.1f} s]")
    grad_full = gradient_timing(full)
    print(f"gradient at full size: {grad_full}")

    sub, _, n_sub = build(args.seed, args.n_orbits, args.scw_per_orbit, args.nuts_orbits)
    print(f"NUTS subsample: first {args.nuts_orbits} revolutions, {sub.n_scw} ScWs in the "
          f"model, {sub.n_orbits} orbits")
    grad_sub = gradient_timing(sub)
    kw = dict(num_warmup=args.warmup, num_samples=args.samples, num_chains=args.chains)
    t0 = time.perf_counter()
    fit_orbit_background(sub, seed=0, **kw)  # compiles the sampler
    first_s = time.perf_counter() - t0
    res = fit_orbit_background(sub, seed=1, **kw)  # compiled sampler reused
    ess = res.diagnostics["ess_bulk_min"]
    regions = {name: {"truth": truth["regions"][name][BAND], **res.summary[name]}
               for name in sub.region_names}
    payload = {
        "benchmark": "isgri_hierarchical",
        "machine": machine_info(),
        "code": code_version(),
        "settings": vars(args),
        "full_size": {"screened_scw": n_screened, "model_scw": full.n_scw,
                      "orbits": full.n_orbits, "bkg_scw": int(full.is_background.sum()),
                      "simulate_and_prepare_s": build_s, "gradient": grad_full},
        "nuts_subsample": {
            "orbits": sub.n_orbits, "model_scw": sub.n_scw, "gradient": grad_sub,
            "first_call_s_including_compile": first_s, "sampling_s": res.seconds,
            "draws_total": args.chains * args.samples, "diagnostics": res.diagnostics,
            "ess_bulk_min_per_s": ess / res.seconds, "regions": regions,
            "per_draw_ms": 1e3 * res.seconds / (args.chains * (args.warmup + args.samples)),
        },
        "extrapolated_full_sampling_s": res.seconds * grad_full["median_ms"]
        / max(grad_sub["median_ms"], 1e-9),
        "note": "extrapolation assumes the same leapfrog steps per draw at full size "
                "(cost per step ~ gradient time)",
    }
    path = write_json("isgri_hierarchical", payload)
    print(f"NUTS {sub.n_scw} ScWs: {res.seconds:.1f} s sampling, {res.diagnostics}")
    for name, r in regions.items():
        print(f"  {name}: truth {r['truth']:.1f}  posterior {r['mean']:.1f} +- {r['sd']:.1f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
