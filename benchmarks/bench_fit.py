"""Fit benchmark: bkgjax vs iminuit vs Sherpa on one task.

Task (identical for every tool): absorbed-free ``powerlaw`` (PhoIndex, norm at 1 keV),
C-statistic, Chandra ACIS spectrum of DG Tau noticed on 0.5-7 keV (446 channels,
no background), start PhoIndex = 1.5, norm = 1e-4, limits PhoIndex in [-3, 10], norm >= 0.

Sections

1. ``single``: one fit + 1-sigma errors, median latency after warm-up.
   bkgjax ``fit(errors="covariance")``; iminuit MIGRAD+HESSE on a NumPy C-stat (numerical
   derivatives); iminuit with a jax-jitted C-stat and jitted gradient (``grad=``), and with
   the jitted Hessian too (``hessian=``); Sherpa LevMar + covariance (``powlaw1d``, ``cstat``).
2. ``profile``: fit + 90 % profile bounds: bkgjax ``errors="profile"``, iminuit
   MIGRAD+MINOS(cl=0.9), Sherpa LevMar + ``conf`` (sigma = 1.645).
3. ``batch``: fits of N simulated spectra (``fakeit``, default N = 10^4): bkgjax
   ``fit_batch`` (one compiled vmapped call, timed after a warm-up call on another batch of
   the same shape) vs per-spectrum loops of iminuit MIGRAD+HESSE and Sherpa LevMar+covar
   timed on the first ``--n-iminuit`` / ``--n-sherpa`` spectra and *extrapolated* to a
   per-fit rate.

Writes ``benchmarks/results/fit.json`` (or ``fit_quick.json`` with ``--quick``).

Run:  python benchmarks/bench_fit.py            (about 1.7 min on 2 CPU cores with the
                                                 current bkgjax; ~6 min with the first one)
      python benchmarks/bench_fit.py --quick    (N = 2000, fewer repeats, about 40 s)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
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
    ratio,
    stopwatch,
    strip_result,
    timeit,
    write_json,
)

import bkgjax  # noqa: E402,F401  (switches JAX to float64)
from bkgjax.fit import fit, fit_batch, load  # noqa: E402
from bkgjax.simulate import fakeit  # noqa: E402
from bkgjax.spectral import powerlaw  # noqa: E402

NAMES = ("PhoIndex", "norm")
LIMITS = {"PhoIndex": (-3.0, 10.0), "norm": (0.0, None)}
CL90 = 0.9
SIGMA90 = 1.6448536269514722  # Sherpa conf "sigma" for a 90 % two-sided interval


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# Peer 1: iminuit on a NumPy C-stat (Minuit computes derivatives numerically)


class NumpyCStat:
    """C-stat of a powerlaw folded through the dense response, in NumPy.

    ``mu = T * AREASCAL * (norm * (e_hi^(1-g) - e_lo^(1-g)) / (1-g)) @ M``;
    ``C = 2 sum(mu - D + D ln(D / mu))``.  Call as ``cost(PhoIndex, norm)``.
    """

    # C = -2 ln L + const  ->  Delta C = 1 for 1 sigma: errordef = Minuit.LEAST_SQUARES (1.0),
    # set on the Minuit object below.

    def __init__(self, data, counts=None):
        self.matrix = np.ascontiguousarray(np.asarray(data.matrix, dtype=np.float64))
        self.log_lo = np.log(np.asarray(data.e_lo, dtype=np.float64))
        self.log_hi = np.log(np.asarray(data.e_hi, dtype=np.float64))
        self.scale = float(data.exposure) * np.asarray(data.areascal, dtype=np.float64)
        self.set_counts(np.asarray(data.counts) if counts is None else counts)

    def set_counts(self, counts):
        d = np.asarray(counts, dtype=np.float64)
        self.pos = np.nonzero(d > 0)[0]
        self.d_pos = d[self.pos]
        self.const = float(np.sum(self.d_pos * np.log(self.d_pos)) - d.sum())
        return self

    def flux(self, g, n):
        a = 1.0 - g
        if abs(a) < 1e-8:
            return n * (self.log_hi - self.log_lo)
        return n * (np.exp(a * self.log_hi) - np.exp(a * self.log_lo)) / a

    def __call__(self, g, n):
        mu = self.scale * (self.flux(g, n) @ self.matrix)
        with np.errstate(divide="ignore", invalid="ignore"):
            val = 2.0 * (mu.sum() + self.const - np.dot(self.d_pos, np.log(mu[self.pos])))
        return val if np.isfinite(val) else 1e300


# ----------------------------------------------------------------------------------------------
# Peer 2: iminuit on a jax-jitted C-stat with jitted gradient (and Hessian)


def make_jax_cost(data):
    """Jitted ``cost(p, counts)``, ``grad(p, counts)``, ``hess(p, counts)`` (p = [g, n]);
    written independently of bkgjax, same formula as :class:`NumpyCStat`."""
    matrix = jnp.asarray(np.asarray(data.matrix))
    log_lo = jnp.log(jnp.asarray(np.asarray(data.e_lo)))
    log_hi = jnp.log(jnp.asarray(np.asarray(data.e_hi)))
    scale = jnp.asarray(float(data.exposure) * np.asarray(data.areascal))

    def cost(p, counts):
        g, n = p[0], p[1]
        a = 1.0 - g
        pole = jnp.abs(a) < 1e-8
        safe_a = jnp.where(pole, 1.0, a)
        flux = n * jnp.where(pole, log_hi - log_lo,
                             (jnp.exp(safe_a * log_hi) - jnp.exp(safe_a * log_lo)) / safe_a)
        mu = scale * (flux @ matrix)
        pos = counts > 0
        dlogd = jnp.where(pos, counts * jnp.log(jnp.where(pos, counts, 1.0)), 0.0)
        dlogmu = jnp.where(pos, counts * jnp.log(jnp.where(pos, mu, 1.0)), 0.0)
        return 2.0 * jnp.sum(mu - counts + dlogd - dlogmu)

    return jax.jit(cost), jax.jit(jax.grad(cost)), jax.jit(jax.hessian(cost))


# ----------------------------------------------------------------------------------------------
# Runners: each returns a dict with values, errors (1 sigma) and diagnostics


def _run_minuit(m, minos):
    """Same settings for every iminuit variant: C-stat errordef 1, limits, MIGRAD, then
    MINOS (90 %) or HESSE."""
    from iminuit import Minuit

    m.errordef = Minuit.LEAST_SQUARES
    for k in NAMES:
        m.limits[k] = LIMITS[k]
    m.migrad()
    if minos:
        m.minos(cl=CL90)
    else:
        m.hesse()
    return m


def _minuit_numpy(cost, *, minos=False):
    from iminuit import Minuit

    m = Minuit(cost, START["PhoIndex"], START["norm"], name=NAMES)
    return _run_minuit(m, minos)


def _minuit_jax(jcost, jgrad, jhess, counts, *, use_hessian=False, minos=False):
    from iminuit import Minuit

    counts = jnp.asarray(counts)

    def fcn(p):
        return float(jcost(jnp.asarray(p), counts))

    def grad(p):
        return np.asarray(jgrad(jnp.asarray(p), counts))

    def hess(p):
        return np.asarray(jhess(jnp.asarray(p), counts))

    m = Minuit(fcn, np.array([START["PhoIndex"], START["norm"]]), grad=grad,
               hessian=hess if use_hessian else None, name=NAMES)
    return _run_minuit(m, minos)


def _minuit_summary(m, minos=False):
    out = {
        "values": {k: float(m.values[k]) for k in NAMES},
        "errors": {k: float(m.errors[k]) for k in NAMES},
        "stat_value": float(m.fval),
        "valid": bool(m.valid),
        "nfcn": int(m.nfcn),
        "ngrad": int(m.ngrad),
    }
    if minos:
        out["intervals90"] = {k: [float(m.values[k] + m.merrors[k].lower),
                                  float(m.values[k] + m.merrors[k].upper)] for k in NAMES}
    return out


class SherpaFitter:
    """Sherpa object API: PHA + ARF + RMF, ``powlaw1d`` through ``Response1D``, cstat, levmar."""

    def __init__(self, path):
        from sherpa.astro.instrument import Response1D
        from sherpa.astro.io import read_pha
        from sherpa.models.basic import PowLaw1D

        logging.getLogger("sherpa").setLevel(logging.ERROR)
        self.pha = read_pha(path)
        for bid in list(self.pha.background_ids):  # source-only C-stat, like the others
            self.pha.delete_background(bid)
        self.pha.notice(*ERANGE)
        self.channels = np.nonzero(self.pha.mask)[0]
        self.full_counts = np.asarray(self.pha.counts, dtype=np.float64).copy()
        self.pl = PowLaw1D("pl")
        self.pl.gamma.min, self.pl.gamma.max = LIMITS["PhoIndex"]
        self.model = Response1D(self.pha)(self.pl)

    def set_counts(self, counts):
        full = self.full_counts.copy()
        full[self.channels] = counts
        self.pha.counts = full

    def run(self, errors="covar", parallel=True):
        from sherpa.estmethods import Confidence, Covariance
        from sherpa.fit import Fit
        from sherpa.optmethods import LevMar
        from sherpa.stats import CStat

        self.pl.gamma.val = START["PhoIndex"]
        self.pl.ampl.val = START["norm"]
        if errors == "covar":
            est = Covariance()
        else:
            est = Confidence()
            est.sigma = SIGMA90
            est.parallel = parallel
        f = Fit(self.pha, self.model, CStat(), LevMar(), est)
        res = f.fit()
        err = f.est_errors()
        return res, err

    @staticmethod
    def summary(res, err, errors="covar"):
        vals = dict(zip(NAMES, (float(v) for v in res.parvals)))
        out = {"values": vals, "stat_value": float(res.statval), "succeeded": bool(res.succeeded),
               "nfev": int(res.nfev)}
        if errors == "covar":
            out["errors"] = {k: float(e) for k, e in zip(NAMES, err.parmaxes)}
        else:
            out["intervals90"] = {
                k: [vals[k] + float(lo) if lo is not None else None,
                    vals[k] + float(hi) if hi is not None else None]
                for k, lo, hi in zip(NAMES, err.parmins, err.parmaxes)}
        return out


def _bkgjax_summary(res):
    names = dict(zip(res.free_names, NAMES))
    out = {
        "values": {names[n]: res.values[n] for n in res.free_names},
        "errors": {names[n]: res.errors[n] for n in res.free_names},
        "stat_value": res.stat_value,
        "converged": res.converged,
        "n_iter": res.n_iter,
    }
    if res.intervals:
        out["intervals90"] = {names[n]: list(res.intervals[n]) for n in res.free_names}
    return out


def _agreement(ref, other, key="values"):
    """max relative difference and max difference in units of the reference 1-sigma."""
    rel = max(abs(other[key][k] - ref[key][k]) / abs(ref[key][k]) for k in NAMES)
    out = {"max_rel_diff": rel,
           "stat_minus_bkgjax": other["stat_value"] - ref["stat_value"]}
    if key == "values" and "errors" in ref:
        out["max_diff_in_sigma"] = max(abs(other["values"][k] - ref["values"][k])
                                       / ref["errors"][k] for k in NAMES)
        if "errors" in other:
            out["errors_max_rel_diff"] = max(abs(other["errors"][k] - ref["errors"][k])
                                             / ref["errors"][k] for k in NAMES)
    return out


def _interval_agreement(ref, other):
    diffs = []
    for k in NAMES:
        for i in range(2):
            a, b = ref["intervals90"][k][i], other["intervals90"][k][i]
            if a is None or b is None:
                return {"max_rel_diff": None}
            diffs.append(abs(b - a) / abs(a))
    return {"max_rel_diff": max(diffs)}


# ----------------------------------------------------------------------------------------------


def bench_single(data, repeat, sherpa):
    log("single fit + 1-sigma errors")
    model = powerlaw(**START)
    out = {}

    t_first, _ = stopwatch(lambda: fit(model, data, "cstat", errors="covariance"))
    tb = timeit(lambda: fit(model, data, "cstat", errors="covariance"), repeat=repeat, warmup=2)
    out["bkgjax"] = {"first_call_s": t_first, "timing": strip_result(tb),
                     **_bkgjax_summary(tb["result"])}
    log(f"  bkgjax  {tb['median_s'] * 1e3:.2f} ms (first call {t_first:.1f} s)")

    cost = NumpyCStat(data)

    ti = timeit(lambda: _minuit_numpy(cost), repeat=repeat, warmup=2)
    out["iminuit_numpy"] = {"timing": strip_result(ti), **_minuit_summary(ti["result"])}
    log(f"  iminuit (NumPy, numerical derivatives)  {ti['median_s'] * 1e3:.2f} ms")

    jcost, jgrad, jhess = make_jax_cost(data)
    counts = np.asarray(data.counts)
    t_first_j, _ = stopwatch(lambda: _minuit_jax(jcost, jgrad, jhess, counts, use_hessian=True))
    tj = timeit(lambda: _minuit_jax(jcost, jgrad, jhess, counts), repeat=repeat, warmup=2)
    out["iminuit_jax_grad"] = {"first_call_s": t_first_j, "timing": strip_result(tj),
                               **_minuit_summary(tj["result"])}
    log(f"  iminuit (jax jit cost + grad)  {tj['median_s'] * 1e3:.2f} ms")
    th = timeit(lambda: _minuit_jax(jcost, jgrad, jhess, counts, use_hessian=True),
                repeat=repeat, warmup=2)
    out["iminuit_jax_grad_hessian"] = {"timing": strip_result(th), **_minuit_summary(th["result"])}
    log(f"  iminuit (jax jit cost + grad + hessian)  {th['median_s'] * 1e3:.2f} ms")

    if sherpa is not None:
        sherpa.set_counts(counts)
        ts = timeit(lambda: sherpa.run("covar"), repeat=repeat, warmup=2)
        out["sherpa"] = {"timing": strip_result(ts), **sherpa.summary(*ts["result"])}
        log(f"  sherpa (levmar + covar)  {ts['median_s'] * 1e3:.2f} ms")

    ref = out["bkgjax"]
    out["agreement_vs_bkgjax"] = {k: _agreement(ref, v) for k, v in out.items()
                                  if k not in ("bkgjax", "agreement_vs_bkgjax")}
    out["ratio_bkgjax_over_peer"] = {k: ratio(ref["timing"]["median_s"],
                                              v["timing"]["median_s"])
                                     for k, v in out.items() if "timing" in v and k != "bkgjax"}
    return out


def bench_profile(data, repeat, sherpa):
    log("fit + 90% profile bounds")
    model = powerlaw(**START)
    out = {}
    t_first, _ = stopwatch(lambda: fit(model, data, "cstat", errors="profile", level=CL90))
    tb = timeit(lambda: fit(model, data, "cstat", errors="profile", level=CL90),
                repeat=repeat, warmup=2)
    out["bkgjax"] = {"first_call_s": t_first, "timing": strip_result(tb),
                     **_bkgjax_summary(tb["result"])}
    log(f"  bkgjax profile  {tb['median_s'] * 1e3:.2f} ms (first call {t_first:.1f} s)")

    cost = NumpyCStat(data)

    ti = timeit(lambda: _minuit_numpy(cost, minos=True), repeat=repeat, warmup=2)
    out["iminuit_numpy_minos"] = {"timing": strip_result(ti),
                                  **_minuit_summary(ti["result"], minos=True)}
    log(f"  iminuit MIGRAD+MINOS (NumPy)  {ti['median_s'] * 1e3:.2f} ms")

    jcost, jgrad, jhess = make_jax_cost(data)
    counts = np.asarray(data.counts)
    tj = timeit(lambda: _minuit_jax(jcost, jgrad, jhess, counts, minos=True),
                repeat=repeat, warmup=2)
    out["iminuit_jax_grad_minos"] = {"timing": strip_result(tj),
                                     **_minuit_summary(tj["result"], minos=True)}
    log(f"  iminuit MIGRAD+MINOS (jax grad)  {tj['median_s'] * 1e3:.2f} ms")

    if sherpa is not None:
        sherpa.set_counts(counts)
        # conf runs serially: its default parallel mode forks worker processes, which is
        # slower on 2 cores (measured ~2x) and unsafe in a process where JAX threads run.
        ts = timeit(lambda: sherpa.run("conf", parallel=False), repeat=repeat, warmup=1)
        out["sherpa_conf"] = {"timing": strip_result(ts), "parallel": False,
                              **sherpa.summary(*ts["result"], "conf")}
        log(f"  sherpa levmar + conf (serial)  {ts['median_s'] * 1e3:.2f} ms")

    ref = out["bkgjax"]
    out["interval_agreement_vs_bkgjax"] = {k: _interval_agreement(ref, v)
                                           for k, v in out.items()
                                           if k != "bkgjax" and "intervals90" in v}
    out["ratio_bkgjax_over_peer"] = {k: ratio(ref["timing"]["median_s"],
                                              v["timing"]["median_s"])
                                     for k, v in out.items() if "timing" in v and k != "bkgjax"}
    return out


def bench_batch(data, n_batch, n_iminuit, n_sherpa, sherpa, batch_repeat):
    log(f"batch: {n_batch} simulated spectra")
    truth = powerlaw(**SIM_TRUTH)
    model = powerlaw(**START)
    sims = np.asarray(fakeit(jax.random.PRNGKey(0), truth, data, n=n_batch)[0])
    warm = np.asarray(fakeit(jax.random.PRNGKey(1), truth, data, n=n_batch)[0])
    out = {"n_spectra": n_batch, "truth": SIM_TRUTH,
           "mean_counts_per_spectrum": float(sims.sum(axis=1).mean())}

    t_first, _ = stopwatch(lambda: fit_batch(model, data, warm, stat="cstat",
                                             errors="covariance"))
    log(f"  bkgjax fit_batch warm-up call (compile + run) {t_first:.1f} s")
    tb = timeit(lambda: fit_batch(model, data, sims, stat="cstat", errors="covariance"),
                repeat=batch_repeat, warmup=0)
    res = tb["result"]
    t = tb["median_s"]
    free = res.free_values()
    out["bkgjax"] = {
        "first_call_s": t_first,
        "timing": strip_result(tb),
        "per_fit_s": t / n_batch,
        "fits_per_s": n_batch / t,
        "converged_fraction": float(res.converged.mean()),
        "n_iter_median": float(np.median(res.n_iter)),
        "n_iter_p90": float(np.percentile(res.n_iter, 90)),
        "n_iter_max": int(res.n_iter.max()),
        "median_values": dict(zip(NAMES, np.median(free, axis=0).tolist())),
    }
    log(f"  bkgjax fit_batch {t:.2f} s -> {n_batch / t:.1f} fits/s "
        f"(n_iter median {np.median(res.n_iter):.0f}, max {res.n_iter.max()})")

    # iminuit loops: first n_iminuit spectra, one fresh Minuit (MIGRAD+HESSE) per spectrum
    cost = NumpyCStat(data)

    def time_peer_loop(label, fit_one, n_timed):
        """Time ``fit_one(i) -> ((PhoIndex, norm), ok)`` over the first ``n_timed`` spectra,
        extrapolate to the batch, and compare the fits with bkgjax's."""
        vals = np.full((n_timed, 2), np.nan)
        ok = np.zeros(n_timed, dtype=bool)
        t0 = time.perf_counter()
        for i in range(n_timed):
            vals[i], ok[i] = fit_one(i)
        elapsed = time.perf_counter() - t0
        log(f"  {label}: {n_timed} fits in {elapsed:.2f} s -> {n_timed / elapsed:.1f} fits/s")
        return {
            "n_timed": n_timed, "elapsed_s": elapsed, "per_fit_s": elapsed / n_timed,
            "fits_per_s": n_timed / elapsed, "extrapolated": True,
            "extrapolated_time_for_all_s": elapsed / n_timed * n_batch,
            "valid_fraction": float(ok.mean()),
            "agreement_vs_bkgjax": _batch_agreement(free[:n_timed], vals,
                                                    ok & res.converged[:n_timed],
                                                    res.errors[:n_timed]),
        }

    def iminuit_numpy_one(i):
        cost.set_counts(sims[i])
        m = _minuit_numpy(cost)
        return (m.values["PhoIndex"], m.values["norm"]), m.valid

    out["iminuit_numpy_loop"] = time_peer_loop("iminuit NumPy loop", iminuit_numpy_one, n_iminuit)

    jcost, jgrad, jhess = make_jax_cost(data)
    _minuit_jax(jcost, jgrad, jhess, sims[0])  # compile

    def iminuit_jax_one(i):
        m = _minuit_jax(jcost, jgrad, jhess, sims[i])
        return (m.values["PhoIndex"], m.values["norm"]), m.valid

    out["iminuit_jax_grad_loop"] = time_peer_loop("iminuit jax-grad loop", iminuit_jax_one,
                                                  n_iminuit)

    if sherpa is not None:
        def sherpa_one(i):
            sherpa.set_counts(sims[i])
            r, _ = sherpa.run("covar")
            return r.parvals, r.succeeded

        out["sherpa_loop"] = time_peer_loop("sherpa loop", sherpa_one, n_sherpa)
        sherpa.set_counts(np.asarray(data.counts))

    rate = out["bkgjax"]["fits_per_s"]
    out["throughput_ratio_bkgjax_over_peer"] = {
        k: ratio(rate, v["fits_per_s"]) for k, v in out.items()
        if isinstance(v, dict) and "fits_per_s" in v and k != "bkgjax"}
    return out


def _batch_agreement(ref, other, mask, sigma=None):
    if not np.any(mask):
        return {"n_compared": 0}
    rel = np.abs(other[mask] - ref[mask]) / np.abs(ref[mask])
    out = {"n_compared": int(mask.sum()), "max_rel_diff": float(rel.max()),
           "median_rel_diff": float(np.median(rel))}
    if sigma is not None:
        out["max_diff_in_sigma"] = float(np.max(np.abs(other[mask] - ref[mask]) / sigma[mask]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="N=2000 spectra, 100 iminuit / 50 Sherpa loop fits, fewer repeats")
    p.add_argument("--n-batch", type=int, default=None, help="simulated spectra (10000)")
    p.add_argument("--n-iminuit", type=int, default=None, help="iminuit loop fits timed (400)")
    p.add_argument("--n-sherpa", type=int, default=None, help="Sherpa loop fits timed (200)")
    p.add_argument("--repeat", type=int, default=None, help="timed repeats of single fits (30)")
    p.add_argument("--batch-repeat", type=int, default=None,
                   help="timed repeats of the fit_batch call (3; quick 2)")
    p.add_argument("--no-sherpa", action="store_true")
    p.add_argument("--only", choices=("single", "profile", "batch"), action="append",
                   help="run only these sections (repeatable)")
    p.add_argument("--out", default=None, help="result name (default fit / fit_quick)")
    args = p.parse_args(argv)
    q = args.quick
    n_batch = args.n_batch or (2000 if q else 10000)
    n_iminuit = args.n_iminuit or (100 if q else 400)
    n_sherpa = args.n_sherpa or (50 if q else 200)
    repeat = args.repeat or (10 if q else 30)
    batch_repeat = args.batch_repeat or (2 if q else 3)
    sections = args.only or ["single", "profile", "batch"]
    warnings.filterwarnings("ignore", category=UserWarning)

    t_start = time.perf_counter()
    info = machine_info()
    log(machine_line(info))
    data = load(demo_pha_path(), erange=ERANGE)
    sherpa = None
    if not args.no_sherpa:
        try:
            sherpa = SherpaFitter(demo_pha_path())
            assert sherpa.channels.size == data.n_bins, (sherpa.channels.size, data.n_bins)
            assert np.array_equal(sherpa.pha.counts[sherpa.channels], np.asarray(data.counts))
        except ImportError as exc:
            log(f"Sherpa not importable ({exc}); skipping Sherpa")
            sherpa = None

    payload = {
        "task": {"data": Path(demo_pha_path()).name, "erange_keV": ERANGE, "n_bins": data.n_bins,
                 "response_shape": list(np.shape(data.matrix)), "model": "powerlaw",
                 "stat": "cstat (no background)", "start": START, "limits": LIMITS},
        "settings": {"quick": q, "n_batch": n_batch, "n_iminuit": n_iminuit,
                     "n_sherpa": n_sherpa, "repeat": repeat, "batch_repeat": batch_repeat},
        "machine": info,
        "targets": {"batch_throughput_vs_iminuit_loop": ">= 10x",
                    "single_fit_latency_vs_iminuit": "<= 2x"},
    }
    if "single" in sections:
        payload["single"] = bench_single(data, repeat, sherpa)
    if "profile" in sections:
        payload["profile"] = bench_profile(data, max(repeat // 3, 5), sherpa)
    if "batch" in sections:
        payload["batch"] = bench_batch(data, n_batch, n_iminuit, n_sherpa, sherpa,
                                       batch_repeat)

    summary = {}
    if "single" in payload:
        r = payload["single"]["ratio_bkgjax_over_peer"]
        summary["single_fit_latency_ratio_bkgjax_over_iminuit_numpy"] = r.get("iminuit_numpy")
        summary["single_fit_target_met (<=2x)"] = (r.get("iminuit_numpy") or 1e9) <= 2.0
    if "batch" in payload:
        r = payload["batch"]["throughput_ratio_bkgjax_over_peer"]
        summary["batch_throughput_ratio_bkgjax_over_iminuit_numpy_loop"] = r.get(
            "iminuit_numpy_loop")
        summary["batch_target_met (>=10x)"] = (r.get("iminuit_numpy_loop") or 0) >= 10.0
    payload["summary"] = summary
    payload["total_wall_s"] = time.perf_counter() - t_start
    payload["bkgjax_code_at_end"] = code_version()
    payload["code_changed_during_run"] = (payload["bkgjax_code_at_end"]["bkgjax_sources_sha256"]
                                          != info["bkgjax_code"]["bkgjax_sources_sha256"])
    path = write_json(args.out or ("fit_quick" if q else "fit"), payload)
    log(f"summary: {summary}")
    log(f"wrote {path} ({payload['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
