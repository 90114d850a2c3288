"""NUTS benchmark: bkgjax ``run_nuts`` vs jaxspec 0.4.1 on one posterior.

Task: powerlaw, Poisson (C-stat) likelihood of the DG Tau source counts, 0.5-7 keV
(446 channels, no background), 500 warm-up + 1000 samples x 4 chains, float64.
Priors: bkgjax flat within the limits (PhoIndex in [-3, 10], norm in [0, 1e24]); jaxspec
alpha ~ Uniform(-3, 10), norm ~ Uniform(0, 1e-3) (flat too; the likelihood vanishes far
below 1e-3, so the posterior is the same).

Timings (each: one run to compile, then timed runs with other seeds; medians reported):

* ``api``: what a user calls.  bkgjax ``run_nuts(...)`` (an MLE fit to initialise the
  chains, vectorized chains, arviz InferenceData with posterior predictive);
  jaxspec ``MCMCFitter.fit(...)`` (numpyro default chain method = sequential for 4 chains on
  one CPU device, and ``chain_method="vectorized"``; builds prior/posterior predictive).
  Both tools build a new numpyro ``MCMC`` per call, so these timings include re-tracing.
* ``sampler``: a numpyro ``MCMC`` object built once per tool, vectorized chains, ``run``
  once untimed, then ``--repeat-sampler`` timed runs (sampling cost, warm-up + samples).
* ``potential gradient``: one jitted, 4-chain-vmapped gradient of each tool's NumPyro
  potential (the work of one leapfrog step).

Metric: min over parameters of arviz ``ess_bulk`` per second; ratio bkgjax / jaxspec.
The jaxspec part runs in ``/work/jaxspec_venv/bin/python`` (override with
``--jaxspec-python`` or env ``JAXSPEC_PYTHON``) because it pins another jax.

Writes ``benchmarks/results/nuts.json`` (``nuts_quick.json`` with ``--quick``).

Run:  python benchmarks/bench_nuts.py           (about 4-5 min on 2 CPU cores)
      python benchmarks/bench_nuts.py --quick   (200 warm-up / 400 samples, about 3 min)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
from common import (  # noqa: E402
    BENCH_DIR,
    ERANGE,
    START,
    code_version,
    demo_pha_path,
    machine_info,
    machine_line,
    posterior_summary,
    ratio,
    run_json_subprocess,
    write_json,
)

import bkgjax  # noqa: E402,F401
from bkgjax.fit import fit, load  # noqa: E402
from bkgjax.infer import run_nuts  # noqa: E402
from bkgjax.spectral import powerlaw  # noqa: E402

DEFAULT_JAXSPEC_PYTHON = "/work/jaxspec_venv/bin/python"
BK_NAMES = {"powerlaw.PhoIndex": "PhoIndex", "powerlaw.norm": "norm"}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summarise_runs(entry):
    """Per run: min ess_bulk over parameters / wall; entry-level medians over runs."""
    for run in entry["runs"]:
        run["min_ess_bulk"] = min(v["ess_bulk"] for v in run["posterior"].values())
        run["min_ess_per_s"] = run["min_ess_bulk"] / run["wall_s"]
    entry["wall_s_median"] = float(np.median([r["wall_s"] for r in entry["runs"]]))
    entry["min_ess_per_s_median"] = float(np.median([r["min_ess_per_s"] for r in entry["runs"]]))
    entry["min_ess_bulk_median"] = float(np.median([r["min_ess_bulk"] for r in entry["runs"]]))
    return entry


def bench_bkgjax(data, chain_kw, repeat_api, repeat_sampler):
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import initialize_model

    from bkgjax.infer.numpyro_model import _initial_chains, spectral_model

    model = powerlaw(**START)
    out = {}
    for label, ppc in (("api", True), ("api_no_ppc", False)):
        t0 = time.perf_counter()
        run_nuts(model, data, "cstat", seed=0, posterior_predictive=ppc, **chain_kw)
        t_first = time.perf_counter() - t0
        runs = []
        for seed in range(1, repeat_api + 1):
            t0 = time.perf_counter()
            idata = run_nuts(model, data, "cstat", seed=seed, posterior_predictive=ppc,
                             **chain_kw)
            t = time.perf_counter() - t0
            draws = {BK_NAMES[k]: np.asarray(idata.posterior[k]) for k in BK_NAMES}
            runs.append({"seed": seed, "wall_s": t, "posterior": posterior_summary(draws),
                         "divergences": int(np.asarray(idata.sample_stats["diverging"]).sum())})
        out[label] = summarise_runs({"first_call_s": t_first, "chain_method": "vectorized",
                                     "posterior_predictive": ppc, "runs": runs})
        log(f"  bkgjax run_nuts (posterior_predictive={ppc}): median "
            f"{out[label]['wall_s_median']:.2f} s (first call {t_first:.1f} s)")

    # sampler only: one MCMC object (bkgjax's model function and MLE-based chain starts)
    best = fit(model, data, "cstat", errors="covariance")
    init = _initial_chains(model, best, jax.random.PRNGKey(0), chain_kw["num_chains"])
    kernel = NUTS(spectral_model, target_accept_prob=0.8)
    mcmc = MCMC(kernel, chain_method="vectorized", progress_bar=False, **chain_kw)
    args = (model, data, "cstat")
    kwargs = {"counts": data.counts, "init_params": init,
              "extra_fields": ("num_steps", "diverging")}
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(0), *args, **kwargs)
    jax.block_until_ready(mcmc.get_samples())
    t_first = time.perf_counter() - t0
    runs = []
    for seed in range(1, repeat_sampler + 1):
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(seed), *args, **kwargs)
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples)
        t = time.perf_counter() - t0
        extra = mcmc.get_extra_fields(group_by_chain=True)
        draws = {BK_NAMES[k]: np.asarray(samples[k]) for k in BK_NAMES}
        runs.append({"seed": seed, "wall_s": t, "posterior": posterior_summary(draws),
                     "num_steps_mean": float(np.asarray(extra["num_steps"]).mean()),
                     "divergences": int(np.asarray(extra["diverging"]).sum())})
    out["sampler_vectorized"] = summarise_runs({
        "first_call_s": t_first, "chain_method": "vectorized", "runs": runs,
        "note": "chains start at MLE + 0.5 x covariance draws (as run_nuts does)"})
    log(f"  bkgjax sampler only: median {out['sampler_vectorized']['wall_s_median']:.2f} s "
        f"(first {t_first:.1f} s)")

    # one gradient of the potential for all chains at once (a vectorized leapfrog step)
    info = initialize_model(jax.random.PRNGKey(0), spectral_model, model_args=args,
                            model_kwargs={"counts": data.counts})
    z = jax.tree_util.tree_map(lambda v: jax.numpy.stack([v] * chain_kw["num_chains"]),
                               info.param_info.z)
    grad = jax.jit(jax.vmap(jax.grad(info.potential_fn)))
    jax.block_until_ready(grad(z))
    n_rep = 200
    t0 = time.perf_counter()
    for _ in range(n_rep):
        jax.block_until_ready(grad(z))
    out["potential_grad_s"] = (time.perf_counter() - t0) / n_rep
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="200 warm-up / 400 samples per chain (same variants)")
    p.add_argument("--num-warmup", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--jaxspec-python", default=os.environ.get("JAXSPEC_PYTHON",
                                                              DEFAULT_JAXSPEC_PYTHON))
    p.add_argument("--norm-prior", choices=("uniform", "loguniform"), default="uniform",
                   help="jaxspec prior on norm (default Uniform(0, 1e-3))")
    p.add_argument("--repeat-api", type=int, default=None,
                   help="timed run_nuts / jaxspec fit calls after the first (2; quick 1)")
    p.add_argument("--repeat-sampler", type=int, default=None,
                   help="timed sampler-only runs after the first (3; quick 2)")
    p.add_argument("--no-jaxspec", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    q = args.quick
    chain_kw = {"num_warmup": args.num_warmup or (200 if q else 500),
                "num_samples": args.num_samples or (400 if q else 1000),
                "num_chains": args.num_chains}
    repeat_api = args.repeat_api or (1 if q else 2)
    repeat_sampler = args.repeat_sampler or (2 if q else 3)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    info = machine_info()
    log(machine_line(info))
    data = load(demo_pha_path(), erange=ERANGE)
    payload = {
        "task": {"data": Path(demo_pha_path()).name, "erange_keV": ERANGE,
                 "n_bins": data.n_bins, "model": "powerlaw",
                 "likelihood": "Poisson on source counts (cstat), no background", **chain_kw,
                 "priors": {"bkgjax": {"PhoIndex": "flat on [-3, 10]",
                                       "norm": "flat on [0, 1e24]"}}},
        "settings": {"quick": q, "repeat_api": repeat_api, "repeat_sampler": repeat_sampler},
        "machine": info,
        "metric": "min over parameters of arviz ess_bulk / wall seconds of the timed run",
    }

    log("bkgjax")
    payload["bkgjax"] = bench_bkgjax(data, chain_kw, repeat_api, repeat_sampler)

    if not args.no_jaxspec:
        log(f"jaxspec (subprocess {args.jaxspec_python})")
        lo = float(np.asarray(data.bin_lo)[0]) - 1e-4
        hi = float(np.asarray(data.bin_hi)[-1]) + 1e-4
        js_args = ["--low", lo, "--high", hi, "--num-warmup", chain_kw["num_warmup"],
                   "--num-samples", chain_kw["num_samples"], "--num-chains",
                   chain_kw["num_chains"], "--norm-prior", args.norm_prior,
                   "--pha", demo_pha_path(), "--repeat-api", repeat_api,
                   "--repeat-sampler", repeat_sampler]
        try:
            js = run_json_subprocess(args.jaxspec_python, str(BENCH_DIR / "_jaxspec_nuts.py"),
                                     js_args, timeout=1200)
        except Exception as exc:  # noqa: BLE001
            js = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        payload["jaxspec"] = js
        if js.get("ok"):
            if js["n_bins"] != data.n_bins or js["total_counts"] != float(np.sum(data.counts)):
                js["warning"] = (f"jaxspec noticed {js['n_bins']} bins / {js['total_counts']} "
                                 f"counts, bkgjax {data.n_bins} / {float(np.sum(data.counts))}")
            for k in ("api_default_chains", "api_vectorized", "sampler_vectorized"):
                if k in js:
                    summarise_runs(js[k])
                    log(f"  jaxspec {k}: median {js[k]['wall_s_median']:.2f} s "
                        f"(first {js[k]['first_call_s']:.1f} s)")
        else:
            log(f"  jaxspec failed: {js.get('error')}")

    # comparisons (medians over the timed runs)
    comp = {}
    bk = payload["bkgjax"]
    js = payload.get("jaxspec", {})
    if js.get("ok"):
        pairs = {"api (bkgjax run_nuts vs jaxspec fit, default chains)":
                 ("api", "api_default_chains"),
                 "api (bkgjax run_nuts vs jaxspec fit, vectorized chains)":
                 ("api", "api_vectorized"),
                 "sampler only (vectorized, compiled MCMC reused)":
                 ("sampler_vectorized", "sampler_vectorized")}
        for label, (a, b) in pairs.items():
            if a in bk and b in js:
                comp[label] = {
                    "bkgjax_min_ess_per_s": bk[a]["min_ess_per_s_median"],
                    "jaxspec_min_ess_per_s": js[b]["min_ess_per_s_median"],
                    "ratio_bkgjax_over_jaxspec": ratio(bk[a]["min_ess_per_s_median"],
                                                      js[b]["min_ess_per_s_median"]),
                    "bkgjax_wall_s": bk[a]["wall_s_median"],
                    "jaxspec_wall_s": js[b]["wall_s_median"],
                    "bkgjax_min_ess_bulk": bk[a]["min_ess_bulk_median"],
                    "jaxspec_min_ess_bulk": js[b]["min_ess_bulk_median"],
                }
        if "potential_grad_s" in js:
            comp["potential gradient, 4 chains vmapped (s)"] = {
                "bkgjax": bk["potential_grad_s"], "jaxspec": js["potential_grad_s"],
                "ratio_bkgjax_over_jaxspec": ratio(bk["potential_grad_s"],
                                                  js["potential_grad_s"])}
        ref = bk["api"]["runs"][0]["posterior"]
        other = js.get("api_vectorized", js.get("sampler_vectorized"))["runs"][0]["posterior"]
        agree = {}
        for name in ref:
            d = abs(other[name]["mean"] - ref[name]["mean"]) / ref[name]["sd"]
            agree[name] = {"bkgjax_mean": ref[name]["mean"], "jaxspec_mean": other[name]["mean"],
                           "bkgjax_sd": ref[name]["sd"], "jaxspec_sd": other[name]["sd"],
                           "mean_diff_in_bkgjax_sd": d, "within_0.5_sd": bool(d < 0.5)}
        payload["posterior_agreement"] = {"all_within_0.5_sd": all(
            v["within_0.5_sd"] for v in agree.values()), **agree}
    payload["comparison"] = comp
    payload["total_wall_s"] = time.perf_counter() - t_start
    payload["bkgjax_code_at_end"] = code_version()
    payload["code_changed_during_run"] = (payload["bkgjax_code_at_end"]["bkgjax_sources_sha256"]
                                          != info["bkgjax_code"]["bkgjax_sources_sha256"])
    path = write_json(args.out or ("nuts_quick" if q else "nuts"), payload)
    for label, c in comp.items():
        if "bkgjax_min_ess_per_s" not in c:
            log(f"{label}: bkgjax {c['bkgjax'] * 1e3:.3f} ms, jaxspec {c['jaxspec'] * 1e3:.3f} ms")
            continue
        log(f"{label}: bkgjax {c['bkgjax_min_ess_per_s']:.0f} ESS/s, jaxspec "
            f"{c['jaxspec_min_ess_per_s']:.0f} ESS/s, ratio {c['ratio_bkgjax_over_jaxspec']:.2f}")
    if "posterior_agreement" in payload:
        log(f"posteriors agree (means within 0.5 sd): "
            f"{payload['posterior_agreement']['all_within_0.5_sd']}")
    log(f"wrote {path} ({payload['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
