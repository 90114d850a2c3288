"""Where does bkgjax's fit time go?  (diagnostics behind the numbers of bench_fit.py)

Same task as bench_fit.py (powerlaw, C-stat, DG Tau 0.5-7 keV).  Measures

* single fit: ``fit()`` vs the bare compiled kernel (Python overhead), the cost of one
  objective / value_and_grad / Hessian evaluation, and the number of LM iterations;
* profile bounds: ``fit(errors="profile")`` vs covariance, i.e. the cost of
  ``profile_bounds`` (2 x n_free constrained searches, vmapped in lockstep);
* batch: wall time of ``fit_batch`` for several ``max_iter`` caps (slope = cost of one
  lockstep LM iteration over the batch), compared with one dense float64
  (N, n_energy) @ (n_energy, n_bins) product, the response fold that every objective,
  gradient and Hessian evaluation repeats; the n_iter distribution (a vmapped
  ``while_loop`` runs until the *slowest* spectrum converges); and the effect of a better
  start (norm from ``guess_norms``).

Uses bkgjax internals (``bkgjax.fit.core._prepare``, ``_fit_one``, ``_statistic_of_theta``);
they may change.  Writes ``benchmarks/results/profile.json``.

Run:  python benchmarks/profile_bkgjax.py           (about 1.5 min on 2 CPU cores)
      python benchmarks/profile_bkgjax.py --quick   (N = 500)
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
import jax.numpy as jnp  # noqa: E402
from common import (  # noqa: E402
    ERANGE,
    SIM_TRUTH,
    START,
    code_version,
    demo_pha_path,
    machine_info,
    machine_line,
    stopwatch,
    strip_result,
    timeit,
    write_json,
)

import bkgjax  # noqa: E402,F401
from bkgjax.fit import fit, fit_batch, guess_norms, load  # noqa: E402
from bkgjax.fit.core import FitOptions, _fit_one, _prepare, _statistic_of_theta  # noqa: E402
from bkgjax.fit.optimize import to_bounded, to_unbounded  # noqa: E402
from bkgjax.simulate import fakeit  # noqa: E402
from bkgjax.spectral import powerlaw  # noqa: E402


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def profile_single(data, repeat):
    model = powerlaw(**START)
    out = {}
    fit(model, data, "cstat", errors="covariance")
    t_fit = timeit(lambda: fit(model, data, "cstat", errors="covariance"), repeat, warmup=2)
    res = t_fit["result"]
    out["fit_covariance"] = strip_result(t_fit)
    out["n_iter"] = res.n_iter

    free_names, free_idx, theta_all, lower, upper = _prepare(model, data, "cstat")
    options = FitOptions(method="auto", max_iter=200, profile=False, level=0.9, n_starts=1)
    key = jax.random.PRNGKey(0)

    def kernel():
        out_ = _fit_one(theta_all, lower, upper, key, data, structure=model.structure,
                        free_idx=free_idx, stat="cstat", options=options)
        return jax.block_until_ready(out_)

    kernel()
    out["compiled_kernel_only"] = strip_result(timeit(kernel, repeat, warmup=2))
    out["python_overhead_s"] = (out["fit_covariance"]["median_s"]
                                - out["compiled_kernel_only"]["median_s"])

    idx = jnp.asarray(free_idx)
    stat_free = _statistic_of_theta(model.structure, "cstat", free_idx, theta_all, data)
    lo, hi = lower[idx], upper[idx]

    def objective(u):
        return stat_free(to_bounded(u, lo, hi))

    u = to_unbounded(theta_all[idx], lo, hi)
    funcs = {"objective": jax.jit(objective),
             "value_and_grad": jax.jit(jax.value_and_grad(objective)),
             "hessian_autodiff": jax.jit(jax.hessian(objective))}
    folded = None
    try:  # newer bkgjax: (S, grad, Hessian) in n + 2 passes over the response
        from bkgjax.fit.core import folded_derivatives

        folded = folded_derivatives(model.structure, "cstat", free_idx, theta_all, data, lo, hi)
        funcs["folded_derivatives"] = jax.jit(folded)
    except ImportError:
        pass
    evals = {}
    for name, f in funcs.items():
        jax.block_until_ready(f(u))
        evals[name] = strip_result(timeit(lambda f=f: jax.block_until_ready(f(u)), repeat * 5,
                                          warmup=3))["median_s"]
    out["eval_median_s"] = evals
    if folded is not None:
        per_iter = evals["folded_derivatives"]
        out["note"] = "one LM iteration = one folded_derivatives call (f, grad, Hessian)"
    else:
        per_iter = evals["objective"] + evals["value_and_grad"] + evals["hessian_autodiff"]
        out["note"] = ("one LM iteration = fun(x_new) + value_and_grad(x_new) + "
                       "hessian(x_new) (nested autodiff)")
    out["lm_iteration_floor_s"] = per_iter
    log(f"  single fit {out['fit_covariance']['median_s'] * 1e3:.2f} ms, kernel "
        f"{out['compiled_kernel_only']['median_s'] * 1e3:.2f} ms, n_iter {res.n_iter}, "
        f"evals {({k: round(v * 1e6, 1) for k, v in evals.items()})} us")

    fit(model, data, "cstat", errors="profile")
    t_prof = timeit(lambda: fit(model, data, "cstat", errors="profile"), max(repeat // 2, 5),
                    warmup=1)
    out["fit_profile"] = strip_result(t_prof)
    out["profile_bounds_cost_s"] = t_prof["median_s"] - t_fit["median_s"]
    out["profile_flags"] = {k: list(v) for k, v in t_prof["result"].bound_flags.items()}
    log(f"  fit+profile {t_prof['median_s'] * 1e3:.1f} ms -> profile bounds "
        f"{out['profile_bounds_cost_s'] * 1e3:.1f} ms = "
        f"{out['profile_bounds_cost_s'] / per_iter:.0f} x one LM iteration")

    # the safeguarded profile search (bkgjax's only method before Venzon-Moolgavkar, and its
    # fallback now): how many outer Newton iterations each side needs.  The 2 x n_free
    # searches run in one vmap, so every search pays for the slowest one.
    import inspect

    from bkgjax.fit.core import delta_stat
    from bkgjax.fit.optimize import profile_bounds

    x_best = to_unbounded(jnp.asarray([res.values[n] for n in free_names]), lo, hi)
    f_best = objective(x_best)
    cov_u = 2.0 * jnp.linalg.inv(jax.hessian(objective)(x_best))
    sigma_u = jnp.sqrt(jnp.diag(cov_u))
    delta = delta_stat(0.9)
    params = inspect.signature(profile_bounds).parameters
    variants = {"safeguarded_search_autodiff": {}}
    if folded is not None and "derivatives" in params:
        variants["safeguarded_search_folded"] = {"derivatives": folded}
        if "cov_x" in params:
            variants["venzon_moolgavkar_with_fallback"] = {"derivatives": folded, "cov_x": cov_u}
    timings = {}
    for name, kw in variants.items():
        f = jax.jit(lambda kw=kw: profile_bounds(objective, x_best, f_best, sigma_u, delta,
                                                 **kw))
        jax.block_until_ready(f())
        timings[name] = strip_result(timeit(lambda f=f: jax.block_until_ready(f()),
                                            max(repeat // 2, 5), warmup=1))["median_s"]
    out["profile_bounds_only_s"] = timings
    log(f"  profile_bounds alone: { {k: round(v * 1e3, 2) for k, v in timings.items()} } ms")
    needed = {}
    for max_outer in (2, 3, 4, 6, 8):
        _, flags = jax.jit(lambda mo=max_outer: profile_bounds(
            objective, x_best, f_best, sigma_u, delta, max_outer=mo))()
        flags = np.asarray(flags)
        for k, name in enumerate(free_names):
            for s, side in enumerate(("lower", "upper")):
                key = f"{name}:{side}"
                if flags[k, s] == 1 and key not in needed:
                    needed[key] = max_outer
    out["safeguarded_search_outer_iterations_needed (upper bound)"] = needed
    out["profile_sigma_u"] = dict(zip(free_names, np.asarray(sigma_u).tolist()))
    log(f"  safeguarded search: outer iterations needed per side (<=): {needed}")
    return out


def profile_batch(data, n, max_iters, repeat=3):
    truth = powerlaw(**SIM_TRUTH)
    sims = np.asarray(fakeit(jax.random.PRNGKey(0), truth, data, n=n)[0])
    out = {"n_spectra": n}

    # one response fold of the whole batch
    matrix = jnp.asarray(np.asarray(data.matrix))
    flux = jnp.asarray(np.random.default_rng(0).random((n, matrix.shape[0])))
    fold = jax.jit(lambda f: f @ matrix)  # noqa: E731
    fold(flux).block_until_ready()
    t_fold = timeit(lambda: fold(flux).block_until_ready(), 5, warmup=1)["median_s"]
    fold32 = jax.jit(lambda f: f @ matrix.astype(jnp.float32))
    flux32 = flux.astype(jnp.float32)
    fold32(flux32).block_until_ready()
    t_fold32 = timeit(lambda: fold32(flux32).block_until_ready(), 5, warmup=1)["median_s"]
    out["fold_matmul_f64_s"] = t_fold
    out["fold_matmul_f32_s"] = t_fold32
    out["fold_gflops_f64"] = 2 * n * matrix.shape[0] * matrix.shape[1] / t_fold / 1e9
    log(f"  batch fold (N={n}) {matrix.shape}: f64 {t_fold * 1e3:.1f} ms "
        f"({out['fold_gflops_f64']:.1f} GFLOP/s), f32 {t_fold32 * 1e3:.1f} ms")

    model = powerlaw(**START)
    rows = []
    for mi in max_iters:
        t_first, _ = stopwatch(lambda mi=mi: fit_batch(model, data, sims, max_iter=mi))
        tt = timeit(lambda mi=mi: fit_batch(model, data, sims, max_iter=mi), repeat, warmup=0)
        t, res = tt["median_s"], tt["result"]
        rows.append({"max_iter": mi, "wall_s": t, "iqr_s": tt["iqr_s"], "first_call_s": t_first,
                     "n_iter_max": int(res.n_iter.max()),
                     "converged_fraction": float(res.converged.mean())})
        log(f"  fit_batch max_iter={mi}: {t:.2f} s (loop ran {int(res.n_iter.max())} "
            f"iterations), converged {res.converged.mean():.3f}")
    out["by_max_iter"] = rows
    full = rows[-1]
    n_iter = res.n_iter
    out["n_iter_median"] = float(np.median(n_iter))
    out["n_iter_mean"] = float(np.mean(n_iter))
    out["n_iter_max"] = int(n_iter.max())
    out["lockstep_waste_factor"] = float(n_iter.max() / n_iter.mean())
    a, b = rows[0], rows[-1]
    slope = (b["wall_s"] - a["wall_s"]) / max(b["n_iter_max"] - a["n_iter_max"], 1)
    out["per_lockstep_iteration_s"] = slope
    out["per_iteration_in_fold_matmuls"] = slope / t_fold
    out["fixed_part_s"] = a["wall_s"] - slope * a["n_iter_max"]
    log(f"  per lockstep LM iteration {slope:.3f} s = {slope / t_fold:.1f} f64 folds; "
        f"n_iter mean {np.mean(n_iter):.1f}, max {n_iter.max()} -> lockstep waste "
        f"x{out['lockstep_waste_factor']:.2f}")

    # the compiled vmapped kernel alone vs the fit_batch wrapper (argument/result handling)
    from bkgjax.fit.core import _fit_many

    free_names, free_idx, theta_all, lower, upper = _prepare(model, data, "cstat")
    options = FitOptions(method="auto", max_iter=200, profile=False, level=0.9, n_starts=1)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    counts = jnp.asarray(sims)

    def kernel():
        return jax.block_until_ready(_fit_many(
            theta_all, lower, upper, keys, data, counts, None, structure=model.structure,
            free_idx=free_idx, stat="cstat", options=options))

    kernel()
    t_kernel = timeit(kernel, repeat, warmup=0)["median_s"]
    out["compiled_kernel_only_s"] = t_kernel
    out["fit_batch_wrapper_overhead_s"] = full["wall_s"] - t_kernel
    log(f"  compiled _fit_many alone {t_kernel:.2f} s vs fit_batch {full['wall_s']:.2f} s")

    # better start: norm from guess_norms on the observed spectrum
    better = guess_norms(model, data)
    fit_batch(better, data, sims)
    tt = timeit(lambda: fit_batch(better, data, sims), repeat, warmup=0)
    t, res2 = tt["median_s"], tt["result"]
    out["guess_norms_start"] = {"start": {"PhoIndex": better["powerlaw.PhoIndex"].value,
                                          "norm": better["powerlaw.norm"].value},
                                "wall_s": t, "n_iter_mean": float(res2.n_iter.mean()),
                                "n_iter_max": int(res2.n_iter.max()),
                                "speedup": full["wall_s"] / t}
    log(f"  guess_norms start: {t:.2f} s (n_iter mean {res2.n_iter.mean():.1f}, max "
        f"{res2.n_iter.max()}), x{full['wall_s'] / t:.2f}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 500 spectra, fewer repeats")
    p.add_argument("--n-batch", type=int, default=None, help="spectra in the batch part (2000)")
    args = p.parse_args(argv)
    n = args.n_batch or (500 if args.quick else 2000)
    repeat = 10 if args.quick else 30
    info = machine_info()
    log(machine_line(info))
    data = load(demo_pha_path(), erange=ERANGE)
    payload = {"machine": info, "settings": {"quick": args.quick, "n_batch": n}}
    log("single fit")
    payload["single"] = profile_single(data, repeat)
    log("batch")
    payload["batch"] = profile_batch(data, n, (1, 4, 200), repeat=2 if args.quick else 3)
    payload["bkgjax_code_at_end"] = code_version()
    payload["code_changed_during_run"] = (payload["bkgjax_code_at_end"]["bkgjax_sources_sha256"]
                                          != info["bkgjax_code"]["bkgjax_sources_sha256"])
    path = write_json("profile_quick" if args.quick else "profile", payload)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
