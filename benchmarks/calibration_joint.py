"""Coverage of 90 % profile-likelihood intervals of joint fits (bkgjax.fit.JointModel).

Acceptance criterion: over >= 1000 simulated joint data sets (FPMA+FPMB-like with a
cross-normalisation, and source + modelled background), 90 % profile intervals cover the
truth within +-3 % (the binomial standard error of a 90 % coverage over 1000 simulations is
0.95 %, so +-3 % is ~3.2 sigma).

Scenarios (real responses from ../shared/data; counts simulated, Poisson, fixed seed):

A. ``fpma_fpmb``: NuSTAR Vela X-1 FPMA and FPMB responses (diagonal RMF
   ``nustar/aperture/diag.rmf`` x each module's ARF, real exposures), 3-20 keV, no
   background.  ``constant*powerlaw`` with ``constant`` per data set: ``factor@1`` frozen
   at 1, truth ``factor@2`` = 1.05, PhoIndex = 1.8, norm = 1e-3 (~3000 counts per module:
   a faint source, not Vela X-1's 1.3 M).  Free: factor@2, PhoIndex, norm.
B. ``source_bkgmodel``: Chandra ACIS DG Tau response and background scaling (BACKSCAL ratio,
   exposures), 0.5-7 keV.  Source powerlaw PhoIndex 1.8, norm 4.3e-5 (~990 source counts);
   background model powerlaw PhoIndex 1.0, norm 9.3e-6 (~300 counts in the background
   spectrum, ~12 of them in the source spectrum).  Source and background spectra are both
   Poisson; joint cstat fit of source + background model.  Free: all four.

Every simulation is fitted by one ``fit_batch(..., errors="profile", stat="cstat")`` call per
scenario, from a fixed start displaced from the truth (the same for all simulations, as a
user's start would be).  Failures are counted, never dropped:

* ``non_converged``: fit status not in CONVERGED_STATUSES;
* ``bound_not_found``: per parameter, a lower or upper profile bound with bound_flags != 1
  (2: the profile did not reach the level before the parameter limit, the bound is the
  limit; 3: a lower minimum was met);
* ``coverage`` is over ALL simulations: a non-converged fit, a flag-3 bound or a non-finite
  bound counts as a miss (conservative); a flag-2 bound (the parameter limit) is used as
  the interval edge it is.  ``coverage_clean`` is over the simulations without any failure
  (n_clean given), for comparison.

Also reported per parameter: misses below / above the interval (each ~5 % for a central
90 % interval), bias = mean(best fit) - truth with its standard error, the scatter of the
best fits against the mean covariance (Hessian) error.

Run::

    python benchmarks/calibration_joint.py                # 1000 simulations per scenario
    python benchmarks/calibration_joint.py --other-seeds 8   # + 8 x 1000 more, pooled apart
    python benchmarks/calibration_joint.py --n-sims 300 --out joint_calibration_300

Writes ``benchmarks/results/joint_calibration.json`` (``--out NAME`` for another name).
``tests/test_joint_calibration.py`` imports this module (same scenarios, same code).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bkgjax  # noqa: E402,F401  (switches JAX to float64)
from bkgjax.fit import JointModel, fit_batch, joint_predicted, load  # noqa: E402
from bkgjax.fit.dataset import predicted_counts  # noqa: E402
from bkgjax.fit.optimize import CONVERGED_STATUSES, BoundFlag  # noqa: E402
from bkgjax.spectral import parse_model, powerlaw  # noqa: E402

SEED = 20250611
LEVEL = 0.9
TOLERANCE = 0.03
SHARED_DATA = Path(os.environ.get("BKGJAX_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
VELAX1 = "spectra/nustar_velax1/nu90402339002{module}01_sr"
NUSTAR_RMF = "nustar/aperture/diag.rmf"
DGTAU = "spectra/chandra_acis_dgtau/acisf04487_001N023_r0009_pha3.fits.gz"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    truth: JointModel            # values = the simulated truth, frozen parameters set
    start: JointModel            # the fits' start (same frozen parameters)
    datasets: tuple
    with_background: bool        # simulate and fit background spectra (background model)

    @property
    def free_names(self) -> tuple:
        return self.truth.free_names

    def truth_vector(self) -> np.ndarray:
        values = self.truth.resolve({})
        return np.asarray([values[n] for n in self.free_names])


def required_files(shared: Path = SHARED_DATA) -> list:
    files = [shared / DGTAU, shared / NUSTAR_RMF]
    for module in "AB":
        stem = shared / VELAX1.format(module=module)
        files += [Path(f"{stem}.pha"), Path(f"{stem}.arf")]
    return files


def missing_files(shared: Path = SHARED_DATA) -> list:
    return [str(f) for f in required_files(shared) if not f.exists()]


def scenario_fpma_fpmb(shared: Path = SHARED_DATA) -> Scenario:
    datasets = tuple(
        load(f"{shared / VELAX1.format(module=m)}.pha", erange=(3.0, 20.0),
             rmf=str(shared / NUSTAR_RMF), arf=f"{shared / VELAX1.format(module=m)}.arf",
             use_background=False)
        for m in "AB")
    model = JointModel.create(parse_model("constant*powerlaw"), 2, per_dataset=["constant"])
    model = model.set("factor@1", 1.0, frozen=True)
    truth = model.set("factor@2", 1.05).set("PhoIndex", 1.8).set("norm", 1.0e-3)
    start = model.set("factor@2", 1.0).set("PhoIndex", 2.0).set("norm", 8.0e-4)
    return Scenario("fpma_fpmb", "NuSTAR Vela X-1 FPMA+FPMB responses, 3-20 keV, "
                    "constant*powerlaw, factor@1 = 1 frozen, no background",
                    truth, start, datasets, with_background=False)


def scenario_source_bkgmodel(shared: Path = SHARED_DATA) -> Scenario:
    data = load(str(shared / DGTAU), erange=(0.5, 7.0))
    model = JointModel.create(powerlaw(), 1, background=powerlaw())
    truth = (model.set("PhoIndex", 1.8).set("norm", 4.3e-5)
             .set("bkg.PhoIndex", 1.0).set("bkg.norm", 9.3e-6))
    start = (model.set("PhoIndex", 1.5).set("norm", 3.0e-5)
             .set("bkg.PhoIndex", 1.5).set("bkg.norm", 7.0e-6))
    return Scenario("source_bkgmodel", "Chandra ACIS DG Tau response and background scaling, "
                    "0.5-7 keV, powerlaw source + powerlaw background model",
                    truth, start, (data,), with_background=True)


SCENARIOS = {"fpma_fpmb": scenario_fpma_fpmb, "source_bkgmodel": scenario_source_bkgmodel}


def expected_counts(scenario: Scenario) -> list:
    """Per data set: (expected source-spectrum counts, expected background-spectrum counts or
    None) at the truth."""
    theta = jnp.asarray(list(scenario.truth.resolve({}).values()))
    out = []
    for entry in joint_predicted(scenario.truth.structure, theta, scenario.datasets):
        out.append((np.asarray(entry["source"]),
                    np.asarray(entry["background"]) if scenario.with_background else None))
    return out


def independent_expected_counts(scenario: Scenario) -> list:
    """The same expectations built without the joint code: each data set's own source model
    (``JointModel.dataset_model``) through the one-spectrum ``predicted_counts`` (checked
    against Sherpa in tests/test_fit.py), plus the background model folded with the
    background exposure and AREASCAL and divided by the BACKSCAL ratio in the source
    spectrum (Sherpa's set_bkg_model scaling), so that the simulation does not merely echo
    the code under test."""
    out = []
    for k, data in enumerate(scenario.datasets, start=1):
        source_model = scenario.truth.dataset_model(k)
        theta = jnp.asarray(list(source_model.resolve({}).values()))
        mu = np.asarray(predicted_counts(source_model.structure, theta, data))
        mu_b = None
        if scenario.with_background:
            bkg_model = scenario.truth.background.with_values(
                {p.name: scenario.truth.values()["bkg." + p.name]
                 for p in scenario.truth.background.parameters})
            bkg_data = dataclasses.replace(data, exposure=data.background_exposure,
                                           areascal=data.background_areascal)
            theta_b = jnp.asarray(list(bkg_model.resolve({}).values()))
            mu_b = np.asarray(predicted_counts(bkg_model.structure, theta_b, bkg_data))
            mu = mu + mu_b / np.asarray(data.background_ratio)
        out.append((mu, mu_b))
    return out


def expected_counts_difference(scenario: Scenario) -> float:
    """Largest relative difference between :func:`expected_counts` and
    :func:`independent_expected_counts` over all bins and spectra."""
    worst = 0.0
    for (a, a_b), (b, b_b) in zip(expected_counts(scenario), independent_expected_counts(scenario)):
        for x, y in ((a, b), (a_b, b_b)):
            if x is not None:
                worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-300))))
    return worst


def simulate(scenario: Scenario, n_sims: int, seed: int):
    """Poisson source (and background) spectra: (counts per data set, background counts per
    data set or None)."""
    rng = np.random.default_rng([seed, list(SCENARIOS).index(scenario.name)])
    counts, background = [], []
    for mu_src, mu_bkg in expected_counts(scenario):
        counts.append(rng.poisson(mu_src, size=(n_sims, mu_src.size)).astype(np.float64))
        if mu_bkg is not None:
            background.append(rng.poisson(mu_bkg, size=(n_sims, mu_bkg.size))
                              .astype(np.float64))
    return counts, (background if scenario.with_background else None)


def fit_all(scenario: Scenario, counts, background):
    return fit_batch(scenario.start, scenario.datasets, counts, background, stat="cstat",
                     errors="profile", level=LEVEL)


def summarize(scenario: Scenario, result, n_sims: int) -> dict:
    """Coverage, failures and bias per free parameter (module docstring for the rules)."""
    names = result.free_names
    assert names == scenario.free_names, (names, scenario.free_names)
    display = scenario.truth.display_names()
    truth = scenario.truth_vector()
    best = result.free_values()
    lower, upper, flags = result.lower, result.upper, result.bound_flags  # (n,p), (n,p,2)
    converged = np.asarray(result.converged, dtype=bool)
    found = flags == BoundFlag.FOUND
    finite = np.isfinite(lower) & np.isfinite(upper)
    # a miss when the fit or the bound is not usable: not converged, lower minimum, non-finite
    usable = converged[:, None] & finite & ~np.any(flags == BoundFlag.LOWER_MINIMUM, axis=2)
    covered = usable & (lower <= truth) & (truth <= upper)
    clean = converged & np.all(found, axis=(1, 2)) & np.all(finite, axis=1)
    n_clean = int(clean.sum())
    params = {}
    for k, name in enumerate(names):
        values = best[:, k]
        sd = float(np.std(values, ddof=1))
        params[display[name]] = {
            "truth": float(truth[k]),
            "coverage": float(covered[:, k].mean()),
            "coverage_binomial_se": float(np.sqrt(LEVEL * (1 - LEVEL) / n_sims)),
            "coverage_clean": float(covered[clean, k].mean()) if n_clean else None,
            "miss_below": float(np.mean(usable[:, k] & (truth[k] < lower[:, k]))),
            "miss_above": float(np.mean(usable[:, k] & (truth[k] > upper[:, k]))),
            "bound_not_found": int(np.sum(~np.all(found[:, k], axis=1))),
            "bound_flags_lower": {int(f): int(c) for f, c in
                                  zip(*np.unique(flags[:, k, 0], return_counts=True))},
            "bound_flags_upper": {int(f): int(c) for f, c in
                                  zip(*np.unique(flags[:, k, 1], return_counts=True))},
            "mean_best": float(values.mean()),
            "bias": float(values.mean() - truth[k]),
            "bias_se": sd / np.sqrt(n_sims),
            "bias_over_se": float((values.mean() - truth[k]) / (sd / np.sqrt(n_sims))),
            "relative_bias": float((values.mean() - truth[k]) / truth[k]),
            "median_best": float(np.median(values)),
            "sd_best": sd,
            "mean_covariance_error": float(np.nanmean(result.errors[:, k])),
            "mean_interval_width": float(np.nanmean(upper[:, k] - lower[:, k])),
        }
    statuses = {int(s): int(c) for s, c in zip(*np.unique(result.status, return_counts=True))}
    return {
        "free_parameters": [display[n] for n in names],
        "n_sims": int(n_sims),
        "non_converged": int(np.sum(~converged)),
        "fit_status_counts": statuses,
        "converged_statuses": [int(s) for s in CONVERGED_STATUSES],
        "sims_with_any_bound_not_found": int(np.sum(~np.all(found, axis=(1, 2)))),
        "n_clean": n_clean,
        "params": params,
    }


def run_scenario(scenario: Scenario, n_sims: int, seed: int, repeat: bool = True) -> dict:
    """Simulate, fit (first call: compile + run; with ``repeat`` a second call with the same
    data times the run alone and must return the same numbers), summarise."""
    expected = expected_counts(scenario)
    t0 = time.perf_counter()
    counts, background = simulate(scenario, n_sims, seed)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # none expected; a background-ignored warning is not
        result = fit_all(scenario, counts, background)
    t_first = time.perf_counter() - t0
    times = {"simulate_s": t_sim, "first_fit_batch_s (compile + run)": t_first}
    if repeat:
        t0 = time.perf_counter()
        again = fit_all(scenario, counts, background)
        times["second_fit_batch_s (run)"] = time.perf_counter() - t0
        times["repeat_identical"] = bool(np.array_equal(again.lower, result.lower, equal_nan=True)
                                         and np.array_equal(again.upper, result.upper,
                                                            equal_nan=True))
    summary = summarize(scenario, result, n_sims)
    summary["scenario"] = scenario.description
    summary["truth"] = {k: float(v) for k, v in scenario.truth.values().items()}
    summary["start"] = {k: float(v) for k, v in scenario.start.values().items()}
    summary["frozen"] = [p.name for p in scenario.truth.parameters if p.frozen]
    summary["datasets"] = [{"file": d.name, "n_bins": int(d.n_bins),
                            "exposure_s": float(d.exposure),
                            "expected_source_counts": float(mu.sum()),
                            "expected_background_spectrum_counts":
                                None if mu_b is None else float(mu_b.sum()),
                            "mean_simulated_source_counts": float(c.sum(axis=1).mean())}
                           for d, (mu, mu_b), c in zip(scenario.datasets, expected, counts)]
    summary["expected_counts_max_rel_diff_joint_vs_independent"] = \
        expected_counts_difference(scenario)
    summary["times"] = times
    summary["within_tolerance"] = bool(all(abs(p["coverage"] - LEVEL) <= TOLERANCE
                                           for p in summary["params"].values()))
    return summary


def other_seeds(scenario: Scenario, n_sims: int, seeds) -> dict:
    """The same scenario with further independent seeds (same shapes: no recompilation), to
    tell a fluctuation of the main seed from a miscalibration: coverage per seed and pooled
    over all of them (the main seed excluded; same failure rule)."""
    per_seed, covered, failures = {}, [], 0
    t0 = time.perf_counter()
    for seed in seeds:
        counts, background = simulate(scenario, n_sims, seed)
        s = summarize(scenario, fit_all(scenario, counts, background), n_sims)
        per_seed[str(seed)] = {p: v["coverage"] for p, v in s["params"].items()}
        failures += s["non_converged"] + s["sims_with_any_bound_not_found"]
        covered.append([v["coverage"] for v in s["params"].values()])
    n_total = n_sims * len(per_seed)
    pooled = np.mean(covered, axis=0)
    names = list(next(iter(per_seed.values())))
    return {"seeds": [int(s) for s in seeds], "n_sims_total": n_total,
            "failures_total": failures, "per_seed": per_seed,
            "pooled_coverage": dict(zip(names, pooled.tolist())),
            "pooled_binomial_se": float(np.sqrt(LEVEL * (1 - LEVEL) / n_total)),
            "wall_s": time.perf_counter() - t0}


def table(results: dict) -> str:
    rows = [f"{'scenario':16s} {'parameter':13s} {'truth':>10s} {'coverage':>9s} "
            f"{'clean':>7s} {'below':>6s} {'above':>6s} {'no-bnd':>6s} {'mean best':>11s} "
            f"{'bias/truth':>10s} {'bias/se':>8s} {'sd':>10s} {'<err>':>10s}"]
    for name, s in results.items():
        for p, v in s["params"].items():
            clean = "-" if v["coverage_clean"] is None else f"{v['coverage_clean']:.3f}"
            rows.append(f"{name:16s} {p:13s} {v['truth']:10.4g} {v['coverage']:9.3f} "
                        f"{clean:>7s} {v['miss_below']:6.3f} {v['miss_above']:6.3f} "
                        f"{v['bound_not_found']:6d} {v['mean_best']:11.5g} "
                        f"{v['relative_bias']:10.2e} {v['bias_over_se']:8.2f} "
                        f"{v['sd_best']:10.3g} {v['mean_covariance_error']:10.3g}")
        rows.append(f"{'':16s} n_sims {s['n_sims']}, non-converged {s['non_converged']}, "
                    f"simulations with a bound not found {s['sims_with_any_bound_not_found']}, "
                    f"times {', '.join(f'{k} {v:.1f}' if isinstance(v, float) else f'{k} {v}' for k, v in s['times'].items())}")
        if "other_seeds" in s:
            o = s["other_seeds"]
            pooled = ", ".join(f"{p} {c:.4f}" for p, c in o["pooled_coverage"].items())
            rows.append(f"{'':16s} other seeds {o['seeds'][0]}..{o['seeds'][-1]} "
                        f"({o['n_sims_total']} sims, se {o['pooled_binomial_se']:.4f}, failures "
                        f"{o['failures_total']}): pooled coverage {pooled}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-sims", type=int, default=1000, help="simulations per scenario (1000)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--scenario", choices=list(SCENARIOS), action="append",
                   help="run only this scenario (repeatable; default both)")
    p.add_argument("--no-repeat", action="store_true",
                   help="skip the second (timing-only) fit_batch call")
    p.add_argument("--other-seeds", type=int, default=0, metavar="K",
                   help="also run K further seeds (seed+1..seed+K) and pool their coverage "
                        "(reported apart; the criterion uses the main seed)")
    p.add_argument("--out", default="joint_calibration", help="result name under results/")
    args = p.parse_args(argv)
    missing = missing_files()
    if missing:
        print(f"real data not found: {missing} (../shared/data beside the repository)")
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine_info, machine_line, write_json

    t_start = time.perf_counter()
    info = machine_info()
    print(machine_line(info))
    results = {}
    for name in args.scenario or list(SCENARIOS):
        t0 = time.perf_counter()
        scenario = SCENARIOS[name]()
        load_s = time.perf_counter() - t0
        results[name] = run_scenario(scenario, args.n_sims, args.seed, repeat=not args.no_repeat)
        results[name]["times"]["load_s"] = load_s
        results[name]["times"]["scenario_wall_s"] = time.perf_counter() - t0
        if args.other_seeds:
            results[name]["other_seeds"] = other_seeds(
                scenario, args.n_sims, range(args.seed + 1, args.seed + 1 + args.other_seeds))
    wall = time.perf_counter() - t_start
    print(table(results))
    ok = all(s["within_tolerance"] for s in results.values())
    print(f"90 % profile coverage within +-{TOLERANCE:.2f} for every parameter: {ok}  "
          f"(wall {wall:.1f} s)")
    payload = {
        "benchmark": "joint_calibration",
        "criterion": "90 % profile intervals cover within +-3 % over >= 1000 simulated joint "
                     "data sets",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "n_sims": args.n_sims,
        "seed": args.seed,
        "level": LEVEL,
        "tolerance": TOLERANCE,
        "failure_rule": "coverage over all simulations; a non-converged fit, a non-finite bound "
                        "or a bound flagged LOWER_MINIMUM (3) counts as a miss; a bound at the "
                        "parameter limit (flag 2) is used as the interval edge; coverage_clean "
                        "excludes simulations with any failure (n_clean)",
        "all_within_tolerance": ok,
        # first_fit_batch_s is compile + run only when this cache is off or cold
        "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
        "wall_s": wall,
        "machine": info,
        "scenarios": results,
    }
    path = write_json(args.out, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
