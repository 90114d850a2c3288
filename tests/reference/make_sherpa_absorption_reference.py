"""Sherpa reference for bkgjax's absorption components (bkgjax.spectral.absorption).

Sherpa 4.19 installed from pip has no XSPEC models, hence no phabs/tbabs/cutoffpl: they are
written here as Sherpa ``ArithmeticModel`` classes evaluated on Sherpa's integrated grid (the
ARF's ENERG_LO/HI), with numpy only, independently of bkgjax's JAX code:

* ``TableAbsorption`` (phabs, tbabs): the bin average of exp(-nH sigma(E)), with sigma(E)
  the cross-section table of bkgjax/data/xsect/xsect.npz (astromodels 2.6.0), linear in E
  between the tabulated energies (on the exact logarithmic grid whose float32 values the
  table holds) and continued outside 0.1-20 keV as the power law through the end value with
  the log-log slope over the last 200 tabulated points, sampled every 0.01 in ln E out to
  1e-3 and 1e3 keV (the definition in bkgjax/spectral/absorption.py's docstring,
  re-implemented here). The bin average is computed differently from bkgjax: the
  node grid is merged with the bin edges and the closed-form integral of exp(-tau) over every
  merged interval (tau linear there) is summed per bin (np.bincount), no cumulative sum.
* ``CutoffPowerLaw``: XSPEC cutoffpl, norm E^-PhoIndex exp(-E/HighECut) integrated over each
  bin with 32-point Gauss-Legendre in ln E (bkgjax: 16 points).

Cases (C-stat, levmar; fits repeated until the statistic changes by <= 1e-10; ``covar``
1-sigma errors):

* ``dgtau_phabs``: Chandra ACIS DG Tau, 0.5-7 keV, phabs(abund angr) * powlaw1d (Sherpa's own
  power law, analytic bin integrals), source counts only (the BKG HDU deleted); no grouping
  (the file has none). Statistic and model counts at fixed values only: a fit takes nH to
  ~0.003, too flat a minimum to compare parameters to 1e-3.
* ``velax1_tbabs``: NuSTAR Vela X-1 FPMA, diag.rmf and the source ARF, 3-79 keV,
  tbabs(abund wilm) * cutoffpl, source counts only; no grouping (the file has none); fitted.
* ``velax1B_phabs``: the same with FPMB and phabs(abund angr) * cutoffpl; fitted.

Each case records the statistic and the per-bin model counts at fixed parameter values.

Run from the repository root with a Python that has Sherpa (see README.md in this folder):

    /work/peers/bin/python tests/reference/make_sherpa_absorption_reference.py
"""

import datetime
import hashlib
import json
import logging
import math
import platform
import sys

import numpy as np
import sherpa
from sherpa.astro import ui
from sherpa.models.model import ArithmeticModel
from sherpa.models.parameter import Parameter

XSECT = "bkgjax/data/xsect/xsect.npz"
SHARED = "/work/shared/data/spectra/"
NUSTAR_RMF = "/work/shared/data/nustar/aperture/diag.rmf"
FILES = {
    "dgtau": {"pha": SHARED + "chandra_acis_dgtau/acisf04487_001N023_r0009_pha3.fits.gz",
              "arf": SHARED + "chandra_acis_dgtau/acisf04487_001N022_r0009_arf3.fits.gz",
              "rmf": SHARED + "chandra_acis_dgtau/acisf04487_001N022_r0009_rmf3.fits.gz"},
    "velax1_A": {"pha": SHARED + "nustar_velax1/nu90402339002A01_sr.pha",
                 "arf": SHARED + "nustar_velax1/nu90402339002A01_sr.arf", "rmf": NUSTAR_RMF},
    "velax1_B": {"pha": SHARED + "nustar_velax1/nu90402339002B01_sr.pha",
                 "arf": SHARED + "nustar_velax1/nu90402339002B01_sr.arf", "rmf": NUSTAR_RMF},
}
CASES = {
    # the soft band (O K edge at 0.54 keV): model counts and statistic at fixed values only (a
    # fit takes nH to ~0.003, too flat a minimum for a 1e-3 comparison of parameters)
    "dgtau_phabs": {"data": "dgtau", "erange": [0.5, 7.0], "table": "phabs_angr",
                    "abund": "angr", "model": "phabs*powerlaw", "fit": False,
                    "fixed": {"abs1.nH": 1.5, "pl1.gamma": 1.8, "pl1.ampl": 1e-4}},
    "velax1_tbabs": {"data": "velax1_A", "erange": [3.0, 79.0], "table": "tbabs_wilm",
                     "abund": "wilm", "model": "tbabs*cutoffpl", "fit": True,
                     "fixed": {"abs1.nH": 15.0, "cpl1.PhoIndex": 0.3, "cpl1.HighECut": 11.5,
                               "cpl1.norm": 0.05},
                     "start": {"abs1.nH": 10.0, "cpl1.PhoIndex": 1.0, "cpl1.HighECut": 30.0,
                               "cpl1.norm": 0.1}},
    "velax1B_phabs": {"data": "velax1_B", "erange": [3.0, 79.0], "table": "phabs_angr",
                      "abund": "angr", "model": "phabs*cutoffpl", "fit": True,
                      "fixed": {"abs1.nH": 15.0, "cpl1.PhoIndex": 0.3, "cpl1.HighECut": 11.5,
                                "cpl1.norm": 0.05},
                      "start": {"abs1.nH": 10.0, "cpl1.PhoIndex": 1.0, "cpl1.HighECut": 30.0,
                                "cpl1.norm": 0.1}},
}
EXTEND_LOW, EXTEND_HIGH, EXTEND_STEP, SLOPE_SPAN = 1e-3, 1e3, 0.01, 200


def cross_section_nodes(table):
    """Energy (keV) and sigma (1e-22 cm^2) nodes: the tabulated sigma on the exact grid of the
    table (geometric centres of 10000 equal steps in ln E from 0.1 to 20 keV; the tabulated
    float32 energies agree to 1e-7), plus power-law extensions every 0.01 in ln E."""
    with np.load(XSECT) as data:
        stored = data["energy"].astype(float)
        sigma = data[table].astype(float)
    energy = 0.1 * np.exp((np.arange(10000) + 0.5) * math.log(200.0) / 10000)
    assert np.max(np.abs(stored / energy - 1)) < 1e-6
    slope_lo = math.log(sigma[SLOPE_SPAN] / sigma[0]) / math.log(energy[SLOPE_SPAN] / energy[0])
    slope_hi = (math.log(sigma[-1] / sigma[-1 - SLOPE_SPAN])
                / math.log(energy[-1] / energy[-1 - SLOPE_SPAN]))
    n_lo = math.ceil(math.log(energy[0] / EXTEND_LOW) / EXTEND_STEP)
    n_hi = math.ceil(math.log(EXTEND_HIGH / energy[-1]) / EXTEND_STEP)
    down = -EXTEND_STEP * np.arange(n_lo, 0, -1)  # ln(E / energy[0]) of the low nodes
    up = EXTEND_STEP * np.arange(1, n_hi + 1)
    nodes = np.concatenate([energy[0] * np.exp(down), energy, energy[-1] * np.exp(up)])
    values = np.concatenate([sigma[0] * np.exp(slope_lo * down), sigma,
                             sigma[-1] * np.exp(slope_hi * up)])
    return nodes, values


def bin_average_transmission(lo, hi, nh, nodes, values):
    """Mean of exp(-nh sigma(E)) over each [lo, hi] (increasing bins). Neighbouring bins may
    overlap by rounding (NuSTAR's float32 ENERG_HI[k] > ENERG_LO[k+1] in 1016 of 4096 bins),
    so the even and the odd bins, each a set of disjoint bins, are done separately."""
    out = np.empty(lo.size)
    for first in (0, 1):
        out[first::2] = disjoint_bin_average(lo[first::2], hi[first::2], nh, nodes, values)
    return out


def disjoint_bin_average(lo, hi, nh, nodes, values):
    """bin_average_transmission for disjoint bins."""
    assert np.all(hi[:-1] <= lo[1:])
    inner = nodes[(nodes > lo[0]) & (nodes < hi[-1])]
    grid = np.unique(np.concatenate([lo, hi, inner]))
    sigma = np.interp(grid, nodes, values)  # constant outside the nodes, as bkgjax
    # the grid never goes outside [1e-3, 1e3] keV for these data sets
    assert grid[0] >= nodes[0] and grid[-1] <= nodes[-1]
    tau = nh * sigma
    ta, tb, width = tau[:-1], tau[1:], np.diff(grid)
    lowest, delta = np.minimum(ta, tb), np.abs(tb - ta)
    small = delta < 1e-9
    safe = np.where(small, 1.0, delta)
    mean = np.exp(-lowest) * np.where(small, 1.0 - 0.5 * delta, -np.expm1(-safe) / safe)
    middle = 0.5 * (grid[:-1] + grid[1:])
    which = np.searchsorted(lo, middle, side="right") - 1
    inside = (which >= 0) & (middle < hi[np.clip(which, 0, None)])
    sums = np.bincount(which[inside], weights=(width * mean)[inside], minlength=lo.size)
    return sums / (hi - lo)


class TableAbsorption(ArithmeticModel):
    """exp(-nH sigma(E)) averaged over each bin (bkgjax's phabs/tbabs definition)."""

    def __init__(self, name, table):
        self.nH = Parameter(name, "nH", 1.0, min=0.0, max=1e6, hard_min=0.0, hard_max=1e6)
        self._nodes = cross_section_nodes(table)
        ArithmeticModel.__init__(self, name, (self.nH,))

    def calc(self, p, lo, hi=None, *args, **kwargs):
        if hi is None:
            raise ValueError("TableAbsorption needs an integrated (lo, hi) grid")
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        return bin_average_transmission(lo, hi, p[0], *self._nodes)


GL_X, GL_W = np.polynomial.legendre.leggauss(32)


class CutoffPowerLaw(ArithmeticModel):
    """XSPEC cutoffpl: norm E^-PhoIndex exp(-E/HighECut), integrated over each bin."""

    def __init__(self, name):
        self.PhoIndex = Parameter(name, "PhoIndex", 1.0, min=-3.0, max=10.0, hard_min=-3.0,
                                  hard_max=10.0)
        self.HighECut = Parameter(name, "HighECut", 15.0, min=0.01, max=500.0, hard_min=0.01,
                                  hard_max=500.0)
        self.norm = Parameter(name, "norm", 1.0, min=0.0, max=1e24, hard_min=0.0, hard_max=1e24)
        ArithmeticModel.__init__(self, name, (self.PhoIndex, self.HighECut, self.norm))

    def calc(self, p, lo, hi=None, *args, **kwargs):
        gamma, cut, norm = p
        s_lo, s_hi = np.log(np.asarray(lo, float)), np.log(np.asarray(hi, float))
        half, mid = 0.5 * (s_hi - s_lo), 0.5 * (s_hi + s_lo)
        s = mid[:, None] + half[:, None] * GL_X
        energy = np.exp(s)
        integrand = np.exp(-gamma * s - energy / cut) * energy
        return norm * half * (integrand @ GL_W)


class Collect(logging.Handler):
    """Keep Sherpa's WARNING (and worse) messages of the current case."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def set_pars(components, values):
    for name, val in values.items():
        comp, par = name.split(".")
        setattr(components[comp], par, val)


def fit_and_covar():
    last = np.inf
    for calls in range(1, 11):  # noqa: B007 - the count is recorded after the loop
        ui.fit()
        fit = ui.get_fit_results()
        if abs(last - fit.statval) <= 1e-10:
            break
        last = fit.statval
    ui.covar()
    cov = ui.get_covar_results()
    errors = dict(zip(cov.parnames, cov.parmaxes))
    pars = {p.fullname: {"value": float(p.val),
                         "error_1sigma": None if errors.get(p.fullname) is None
                         else float(errors[p.fullname])}
            for p in ui.get_model().pars if not p.frozen}
    return {"stat": float(fit.statval), "dof": int(fit.dof), "numpoints": int(fit.numpoints),
            "fit_calls": calls, "succeeded": bool(fit.succeeded), "params": pars}


def run_case(case):
    spec = CASES[case]
    files = FILES[spec["data"]]
    ui.clean()
    ui.set_stat("cstat")
    ui.set_method("levmar")
    ui.load_pha(1, files["pha"], use_errors=False)
    ui.load_arf(1, files["arf"])
    ui.load_rmf(1, files["rmf"])
    data = ui.get_data(1)
    for bkg_id in list(data.background_ids):
        data.delete_background(bkg_id)
    ui.notice(*spec["erange"])
    absorber = TableAbsorption("abs1", spec["table"])
    if spec["model"].endswith("powerlaw"):
        label, continuum = "pl1", ui.powlaw1d("pl1")
    else:
        label, continuum = "cpl1", CutoffPowerLaw("cpl1")
    ui.set_source(1, absorber * continuum)
    components = {"abs1": absorber, label: continuum}
    set_pars(components, spec["fixed"])
    resp = ui.get_response(1)
    counts_fixed = data.eval_model_to_fit(resp(absorber * continuum))
    elo, ehi = (np.asarray(x, float) for x in (ui.get_arf(1).energ_lo, ui.get_arf(1).energ_hi))
    transmission = absorber.calc([spec["fixed"]["abs1.nH"]], elo, ehi)
    result = {
        "settings": {"stat": "cstat", "method": "levmar", "erange": spec["erange"],
                     "files": files, "model": spec["model"], "abund": spec["abund"],
                     "table": spec["table"], "fixed": spec["fixed"],
                     "start": spec.get("start"),
                     "grouping": "none (the file has no GROUPING column)",
                     "background": "deleted: source counts only"},
        "n_bins": int(np.asarray(data.get_mask(), bool).sum()),
        "bin_counts": [float(c) for c in data.apply_filter(data.counts, groupfunc=np.sum)],
        "stat_fixed": float(ui.calc_stat()),
        "model_counts_fixed": [float(x) for x in counts_fixed],
        # the transmission on a few ARF bins (every 97th), for a direct check
        "transmission_fixed": {"e_lo": [float(x) for x in elo[::97]],
                               "e_hi": [float(x) for x in ehi[::97]],
                               "value": [float(x) for x in transmission[::97]]},
    }
    if spec["fit"]:
        set_pars(components, spec["start"])
        result["fit"] = fit_and_covar()
    return result


def main():
    logging.getLogger("sherpa").setLevel(logging.WARNING)
    with open(XSECT, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    out = {"meta": {"sherpa": sherpa.__version__, "numpy": np.__version__,
                    "python": platform.python_version(),
                    "date": datetime.date.today().isoformat(),
                    "command": "python " + " ".join(sys.argv),
                    "xsect_npz_sha256": digest}}
    for case in CASES:
        handler = Collect()
        logging.getLogger("sherpa").addHandler(handler)
        out[case] = run_case(case)
        logging.getLogger("sherpa").removeHandler(handler)
        out[case]["sherpa_warnings"] = handler.messages
    path = "tests/reference/sherpa_absorption_reference.json"
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print("wrote", path)
    for case in CASES:
        r = out[case]
        print(f"\n{case}: {r['n_bins']} bins, stat_fixed {r['stat_fixed']:.6f}")
        if "fit" not in r:
            continue
        print(f"  fit stat {r['fit']['stat']:.6f} dof {r['fit']['dof']} "
              f"({r['fit']['fit_calls']} fits)")
        for name, p in r["fit"]["params"].items():
            print(f"  {name:16s} {p['value']:.8g} +- {p['error_1sigma']}")
        for msg in r["sherpa_warnings"]:
            print("  warning:", msg.replace("\n", " | ")[:200])


if __name__ == "__main__":
    main()
