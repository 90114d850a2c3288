"""Sherpa 4.19 reference for a background model folded through the background's OWN response
(tests/test_background_response.py).

Case ``velax1_own_bkg_response``: the NuSTAR Vela X-1 FPMA source and background spectra,
rewritten by ``bkg_response_files.write_case`` (beside this script) so that the background
file's header names its own RMF (``bkg_blur.rmf``, a 3-channel redistribution of the diagonal
NuSTAR RMF) and ARF (``fcxbA.arf``, the focused-CXB effective area, on the source ARF's energy
grid), while the source names ``diag.rmf`` and its ``sr.arf``.  ``load_pha('sr.pha')`` alone
reads everything (BACKFILE, and the background's RESPFILE/ANCRFILE:
``sherpa.astro.io._process_pha_block``); the script asserts that ``get_bkg_rmf`` /
``get_bkg_arf`` are the background's files.  ``notice(3, 20)``, cstat, levmar; source model
``powlaw1d.pl1``, background model ``set_bkg_model(powlaw1d.bpl1)``.

Sherpa 4.19 folding (``sherpa.astro.background.get_response_for_pha`` and
``Session.get_bkg_model``), checked here bin by bin:

    source spectrum     = R_src(M_src + (BACKSCAL_src / BACKSCAL_bkg) * M_bkg)
    background spectrum = R_bkg(M_bkg)
    R_x(M) = RMF_x @ (ARF_x * EXPOSURE_x * integral of M over ARF_x's bins) * AREASCAL_x

that is, the background model's part of the source spectrum goes through the SOURCE response
(ARF, RMF, EXPOSURE, AREASCAL of the source), and the background spectrum through the
background's own ARF, RMF, EXPOSURE and AREASCAL.  Recorded at fixed parameters
(``model_counts_fixed``: source part, background part in the source, background spectrum), for
a ``scaling_variant`` with the background EXPOSURE halved and its AREASCAL 0.8, and a levmar
fit (repeated until the statistic changes by <= 1e-10) with 90 % ``conf`` bounds.

Run from the repository root with a Python that has Sherpa (see README.md in this folder):

    /work/peers/bin/python tests/reference/make_sherpa_bkg_response_reference.py
"""

import datetime
import json
import logging
import os
import platform
import sys
import tempfile

import numpy as np
import sherpa
from sherpa.astro import ui

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bkg_response_files import BLUR, write_case  # noqa: E402

SHARED = os.environ.get("BKGJAX_SHARED_DATA", "/work/shared/data")
OUT = "tests/reference/sherpa_bkg_response_reference.json"
ERANGE = [3.0, 20.0]
FIXED = {"pl1.gamma": 1.2, "pl1.ampl": 0.13, "bpl1.gamma": 1.0, "bpl1.ampl": 2e-5}
START = {"pl1.gamma": 1.5, "pl1.ampl": 0.1, "bpl1.gamma": 1.5, "bpl1.ampl": 1e-5}
Z90 = 1.6448536269514722  # two-sided 90 %: Delta C = 2.706


class Collect(logging.Handler):
    """Keep Sherpa's INFO (and worse) messages: which files load_pha read."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def set_pars(values):
    for name, val in values.items():
        comp, par = name.split(".")
        setattr(ui.get_model_component(comp), par, val)


def counts_split():
    """Statistic and per-bin model counts at the current parameters, the source spectrum split
    into the source part R_src(M_src) and the background part R_src(scale * M_bkg)."""
    d, b = ui.get_data(1), ui.get_bkg(1)
    scale = float(ui.get_bkg_scale(1, units="rate"))
    assert np.isclose(scale, d.backscal / b.backscal, rtol=1e-14)
    resp = ui.get_response(1)
    total = d.eval_model_to_fit(ui.get_model(1))
    src_part = d.eval_model_to_fit(resp(ui.get_model_component("pl1")))
    bkg_part = d.eval_model_to_fit(resp(scale * ui.get_model_component("bpl1")))
    assert np.allclose(total, src_part + bkg_part, rtol=1e-12, atol=0)
    background = b.eval_model_to_fit(ui.get_bkg_model(1))
    # the same background counts through the SOURCE response differ: the own response is used
    through_source = b.eval_model_to_fit(ui.get_response(1)(ui.get_model_component("bpl1")))
    assert np.max(np.abs(background / through_source - 1)) > 0.05
    return {"bkg_scale_rate": scale, "stat_fixed": float(ui.calc_stat()),
            "stat_fixed_parts": {s.name: float(s.statval) for s in ui.get_stat_info()},
            "model_counts_fixed": {
                "source_total": [float(x) for x in total],
                "source_part": [float(x) for x in src_part],
                "background_part_in_source": [float(x) for x in bkg_part],
                "background_spectrum": [float(x) for x in background]}}


def fit_and_conf():
    last = np.inf
    for calls in range(1, 11):  # noqa: B007 - the count is recorded after the loop
        ui.fit()
        fit = ui.get_fit_results()
        if abs(last - fit.statval) <= 1e-10:
            break
        last = fit.statval
    ui.conf()
    conf = ui.get_conf_results()
    pars = {}
    for name, val, lo, hi in zip(conf.parnames, conf.parvals, conf.parmins, conf.parmaxes):
        pars[name] = {"value": float(val),
                      "lower90": None if lo is None else float(val + lo),
                      "upper90": None if hi is None else float(val + hi)}
    return {"stat": float(fit.statval), "dof": int(fit.dof), "numpoints": int(fit.numpoints),
            "fit_calls": calls, "succeeded": bool(fit.succeeded), "params": pars}


def run_case(folder):
    files = write_case(folder, SHARED)
    ui.clean()
    ui.set_stat("cstat")
    ui.set_method("levmar")
    ui.set_conf_opt("sigma", Z90)
    ui.set_conf_opt("max_rstat", 1e6)  # Vela X-1 is no power law: bounds recorded all the same
    ui.load_pha(1, files["source"], use_errors=False)
    d, b = ui.get_data(1), ui.get_bkg(1)
    names = {"rmf": ui.get_rmf(1).name, "arf": ui.get_arf(1).name,
             "background_rmf": ui.get_bkg_rmf(1).name, "background_arf": ui.get_bkg_arf(1).name}
    for role, name in names.items():
        assert os.path.samefile(name, files[role]), (role, name)
    ui.notice(*ERANGE)
    ui.set_source(1, ui.powlaw1d("pl1"))
    ui.set_bkg_model(1, ui.powlaw1d("bpl1"))
    res = {"settings": {"stat": "cstat", "method": "levmar", "conf_sigma": Z90,
                        "erange": ERANGE, "blur": list(BLUR), "fixed": FIXED, "start": START,
                        "files": {role: os.path.basename(path) for role, path in files.items()},
                        "sherpa_responses": {role: os.path.basename(n) for role, n in names.items()}},
           "spectra": {"source": {"n_bins": int(d.get_mask().sum()),
                                  "exposure": float(d.exposure), "backscal": float(d.backscal)},
                       "background": {"n_bins": int(b.get_mask().sum()),
                                      "exposure": float(b.exposure),
                                      "backscal": float(b.backscal)}},
           "source_model": ui.get_model(1).name, "background_model": ui.get_bkg_model(1).name}
    set_pars(FIXED)
    res.update(counts_split())
    exposure, areascal = b.exposure, b.areascal
    ui.set_exposure(1, 0.5 * exposure, bkg_id=1)
    ui.set_areascal(1, 0.8, bkg_id=1)
    res["scaling_variant"] = {"background_exposure": 0.5 * exposure,
                              "background_areascal": 0.8, **counts_split()}
    ui.set_exposure(1, exposure, bkg_id=1)
    ui.set_areascal(1, areascal, bkg_id=1)
    set_pars(START)
    res["fit"] = fit_and_conf()
    return res


def main():
    logging.getLogger("sherpa").setLevel(logging.INFO)
    handler = Collect()
    logging.getLogger("sherpa").addHandler(handler)
    out = {"meta": {"sherpa": sherpa.__version__, "numpy": np.__version__,
                    "python": platform.python_version(),
                    "date": datetime.date.today().isoformat(),
                    "command": "python " + " ".join(sys.argv)}}
    with tempfile.TemporaryDirectory() as folder:
        case = run_case(folder)
    logging.getLogger("sherpa").removeHandler(handler)
    case["sherpa_messages"] = [m.replace(folder, "<folder>") for m in handler.messages
                               if "read " in m or "unable" in m]
    out["velax1_own_bkg_response"] = case
    with open(OUT, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print("wrote", OUT)
    m = case["model_counts_fixed"]
    print(f"bins {case['spectra']}  stat_fixed {case['stat_fixed']:.6f}  "
          f"fit stat {case['fit']['stat']:.6f} dof {case['fit']['dof']}")
    print(f"  sums: bkg part in src {sum(m['background_part_in_source']):.6g}, "
          f"bkg spectrum {sum(m['background_spectrum']):.6g}")
    for name, p in case["fit"]["params"].items():
        print(f"  {name:12s} {p['value']:.6g}  [{p['lower90']}, {p['upper90']}]")
    for msg in case["sherpa_messages"]:
        print("  sherpa:", msg)


if __name__ == "__main__":
    main()
