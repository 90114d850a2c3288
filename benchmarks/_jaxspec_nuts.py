"""jaxspec side of bench_nuts.py; run with jaxspec's own interpreter (it pins another jax):

    /work/jaxspec_venv/bin/python benchmarks/_jaxspec_nuts.py --low 0.4963 --high 7.0081

Prints one JSON object on the last stdout line.  Task: the DG Tau PHA (ARF/RMF from its
header), channels wholly inside [low, high] keV (pass the bkgjax noticed range, padded by
1e-4 keV, to get the same 446 channels), ``Powerlaw`` (alpha, norm at 1 keV), Poisson
likelihood on the source counts with *no* background model, float64, priors
alpha ~ Uniform(-3, 10) and norm ~ Uniform(0, 1e-3) (``--norm-prior uniform``, flat like
bkgjax's) or LogUniform(1e-8, 1e-2) (``--norm-prior loguniform``).

Two timings, each after a first (compiling) run, repeated with different seeds:

* ``api``: ``MCMCFitter.fit(...)`` as a user calls it (builds a new numpyro MCMC each call,
  so it re-traces/compiles every call; also builds prior/posterior predictive and
  log-likelihood groups), with numpyro's default chain method (4 chains on 1 CPU device ->
  sequential) and with ``chain_method="vectorized"``;
* ``sampler``: one numpyro ``MCMC(NUTS(fitter.transformed_numpyro_model))``,
  vectorized chains, ``run`` twice on the same object (second run reuses the compiled
  sampler): the sampling cost alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--pha", default=None)
    p.add_argument("--low", type=float, required=True)
    p.add_argument("--high", type=float, required=True)
    p.add_argument("--num-warmup", type=int, default=500)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--norm-prior", choices=("uniform", "loguniform"), default="uniform")
    p.add_argument("--skip-api", action="store_true")
    p.add_argument("--repeat-api", type=int, default=2, help="timed API runs (seeds 1..)")
    p.add_argument("--repeat-sampler", type=int, default=3, help="timed sampler runs")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    from common import demo_pha_path, machine_info, posterior_summary

    result = {"tool": "jaxspec", "settings": vars(args).copy()}
    try:
        import jax
        import numpyro
        import numpyro.distributions as dist

        numpyro.enable_x64()
        import jaxspec
        from jaxspec.data import ObsConfiguration
        from jaxspec.fit import MCMCFitter
        from jaxspec.model.additive import Powerlaw
        from numpyro.infer import MCMC, NUTS

        result["machine"] = machine_info(extra_modules=("jaxspec",))
        result["versions"] = {"jaxspec": jaxspec.__version__ if hasattr(jaxspec, "__version__")
                              else None, "jax": jax.__version__, "numpyro": numpyro.__version__}
        pha = args.pha or demo_pha_path()
        t0 = time.perf_counter()
        obs = ObsConfiguration.from_pha_file(pha, low_energy=args.low, high_energy=args.high)
        result["load_s"] = time.perf_counter() - t0
        result["n_bins"] = int(obs.sizes["folded_channel"])
        result["n_energy"] = int(obs.sizes["unfolded_channel"])
        result["total_counts"] = float(np.asarray(obs.folded_counts).sum())
        norm_prior = (dist.Uniform(0.0, 1e-3) if args.norm_prior == "uniform"
                      else dist.LogUniform(1e-8, 1e-2))
        result["priors"] = {"alpha": "Uniform(-3, 10)",
                            "norm": "Uniform(0, 1e-3)" if args.norm_prior == "uniform"
                            else "LogUniform(1e-8, 1e-2)"}
        prior = {"spectrum.powerlaw_1.alpha": dist.Uniform(-3.0, 10.0),
                 "spectrum.powerlaw_1.norm": norm_prior}
        fitter = MCMCFitter(Powerlaw(), prior, obs)
        names = {"spectrum.powerlaw_1.alpha": "PhoIndex", "spectrum.powerlaw_1.norm": "norm"}
        chain_kw = dict(num_warmup=args.num_warmup, num_samples=args.num_samples,
                        num_chains=args.num_chains)

        if not args.skip_api:
            for label, mkw in (("api_default_chains", {}),
                               ("api_vectorized", {"chain_method": "vectorized"})):
                mkw = {"progress_bar": False, **mkw}
                t0 = time.perf_counter()
                fitter.fit(rng_key=0, mcmc_kwargs=mkw, **chain_kw)
                t_first = time.perf_counter() - t0
                runs = []
                for seed in range(1, args.repeat_api + 1):
                    t0 = time.perf_counter()
                    res = fitter.fit(rng_key=seed, mcmc_kwargs=mkw, **chain_kw)
                    t = time.perf_counter() - t0
                    post = res.inference_data.posterior
                    draws = {names[k]: np.asarray(post[k]) for k in names}
                    runs.append({"seed": seed, "wall_s": t, "posterior": posterior_summary(draws)})
                result[label] = {"first_call_s": t_first,
                                 "chain_method": mkw.get("chain_method", "numpyro default"),
                                 "runs": runs}

        kernel = NUTS(fitter.transformed_numpyro_model)
        mcmc = MCMC(kernel, chain_method="vectorized", progress_bar=False, **chain_kw)
        t0 = time.perf_counter()
        mcmc.run(jax.random.PRNGKey(0), extra_fields=("num_steps", "diverging"))
        jax.block_until_ready(mcmc.get_samples())
        t_first = time.perf_counter() - t0
        runs = []
        for seed in range(1, args.repeat_sampler + 1):
            t0 = time.perf_counter()
            mcmc.run(jax.random.PRNGKey(seed), extra_fields=("num_steps", "diverging"))
            samples = mcmc.get_samples(group_by_chain=True)
            jax.block_until_ready(samples)
            t = time.perf_counter() - t0
            extra = mcmc.get_extra_fields(group_by_chain=True)
            draws = {names[k]: np.asarray(samples[k]) for k in names}
            runs.append({"seed": seed, "wall_s": t, "posterior": posterior_summary(draws),
                         "num_steps_mean": float(np.asarray(extra["num_steps"]).mean()),
                         "divergences": int(np.asarray(extra["diverging"]).sum())})
        result["sampler_vectorized"] = {"first_call_s": t_first, "chain_method": "vectorized",
                                        "runs": runs}

        # cost of one gradient of the potential for all chains at once (vectorized leapfrog)
        from numpyro.infer.util import initialize_model

        info = initialize_model(jax.random.PRNGKey(0), fitter.transformed_numpyro_model)
        z = jax.tree_util.tree_map(lambda v: jax.numpy.stack([v] * args.num_chains),
                                   info.param_info.z)
        grad = jax.jit(jax.vmap(jax.grad(info.potential_fn)))
        jax.block_until_ready(grad(z))
        n_rep = 200
        t0 = time.perf_counter()
        for _ in range(n_rep):
            jax.block_until_ready(grad(z))
        result["potential_grad_s"] = (time.perf_counter() - t0) / n_rep
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - report the failure in the JSON
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
