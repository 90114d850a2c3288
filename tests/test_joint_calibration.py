"""Calibration of joint fits: coverage of 90 % profile-likelihood intervals over simulated
joint data sets (acceptance criterion: >= 1000 simulations, within +-3 %).

Same scenarios and code as ``benchmarks/calibration_joint.py`` (imported from there; its
docstring has the truths, responses and the failure rule):

* ``fpma_fpmb``: the NuSTAR Vela X-1 FPMA and FPMB responses, ``constant*powerlaw`` with a
  per-data-set constant (factor@1 = 1 frozen, factor@2 = 1.05 free), ~3000 counts a module;
* ``source_bkgmodel``: Chandra DG Tau response and background scaling, ~990 source counts,
  a powerlaw background model fitted to a ~300-count background spectrum.

Default run: 300 simulations per scenario.  The binomial standard error of a 90 % coverage
is sqrt(0.9 * 0.1 / 300) = 1.73 %, so the tolerance is 3.5 sigma = +-6.1 % (with 7
parameters checked, a correct calibration fails one of them with probability ~0.3 %; the
seed is fixed, so the outcome is reproducible).  ``slow`` (``pytest -m slow``): 1000
simulations at the criterion's +-3 % (3.2 sigma).

Every simulation is fitted (nothing dropped): non-converged fits and profile bounds not found
count as misses and must be absent at these seeds; the mean best fit must lie within 4
standard errors of the truth (bias).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration_joint.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("calibration_joint", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cj = _load_benchmark()
SCENARIOS = list(cj.SCENARIOS)


@pytest.fixture(scope="module")
def scenarios(shared_data):
    missing = cj.missing_files(shared_data)
    if missing:
        pytest.skip(f"real spectra not found: {missing} (../shared/data is incomplete)")
    return {name: build(shared_data) for name, build in cj.SCENARIOS.items()}


def _check(summary, n_sims, tolerance):
    print(f"\n{summary['scenario']} (n={n_sims}, tolerance +-{tolerance:.4f})")
    for name, p in summary["params"].items():
        print(f"  {name:13s} coverage {p['coverage']:.3f} (below {p['miss_below']:.3f}, above "
              f"{p['miss_above']:.3f}), mean best {p['mean_best']:.6g} vs truth "
              f"{p['truth']:.6g} ({p['bias_over_se']:+.2f} se)")
    assert summary["n_sims"] == n_sims
    # the simulated expectations equal those of the one-spectrum code path (no echo)
    assert summary["expected_counts_max_rel_diff_joint_vs_independent"] < 1e-10
    assert summary["non_converged"] == 0, summary["fit_status_counts"]
    assert summary["sims_with_any_bound_not_found"] == 0, {
        n: (p["bound_flags_lower"], p["bound_flags_upper"]) for n, p in summary["params"].items()}
    for name, p in summary["params"].items():
        assert abs(p["coverage"] - cj.LEVEL) <= tolerance, (name, p["coverage"])
        assert abs(p["bias_over_se"]) < 4.0, (name, p["mean_best"], p["truth"], p["bias_se"])


@pytest.mark.parametrize("name", SCENARIOS)
def test_joint_profile_coverage_300(scenarios, name):
    n_sims = 300
    tolerance = 3.5 * math.sqrt(cj.LEVEL * (1 - cj.LEVEL) / n_sims)
    summary = cj.run_scenario(scenarios[name], n_sims, cj.SEED, repeat=False)
    _check(summary, n_sims, tolerance)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_joint_profile_coverage_1000(scenarios, name):
    n_sims = 1000
    summary = cj.run_scenario(scenarios[name], n_sims, cj.SEED, repeat=False)
    _check(summary, n_sims, cj.TOLERANCE)
