"""Sherpa reference for chi-square fits of background-subtracted spectra (tests/test_chi2.py).

DG Tau (Chandra ACIS, ../shared/data): source and its BKG HDU, grouped with group_counts(15)
over the whole channel range, then notice(0.5, 7) and subtract().  For chi2gehrels,
chi2datavar, chi2modvar (chi2xspecvar as well): the subtracted counts and the statistical
errors per bin (get_dep, get_staterror), the statistic at fixed power-law values, a levmar
fit and conf() 90 % bounds.

Run from the repository root with a Python that has Sherpa (see README.md in this folder):

    /work/peers/bin/python tests/reference/make_sherpa_chi2_subtracted_reference.py
"""

import datetime
import json
import logging
import platform
import sys

import numpy as np
import sherpa
from sherpa.astro import ui

logging.getLogger("sherpa").setLevel(logging.ERROR)

SHARED = "/work/shared/data/spectra/chandra_acis_dgtau/"
FILES = {"pha": SHARED + "acisf04487_001N023_r0009_pha3.fits.gz",
         "arf": SHARED + "acisf04487_001N022_r0009_arf3.fits.gz",
         "rmf": SHARED + "acisf04487_001N022_r0009_rmf3.fits.gz"}
ERANGE = [0.5, 7.0]
FIXED = {"gamma": 1.7, "ampl": 1.5e-5}
START = {"gamma": 1.5, "ampl": 1e-5}
Z90 = 1.6448536269514722


def record(stat):
    ui.clean()
    ui.load_pha(FILES["pha"])
    ui.load_arf(FILES["arf"])
    ui.load_rmf(FILES["rmf"])
    ui.group_counts(15)
    ui.notice(*ERANGE)
    ui.subtract()
    ui.set_stat(stat)
    ui.set_method("levmar")
    ui.set_conf_opt("sigma", Z90)
    p1 = ui.powlaw1d.p1
    ui.set_source(p1)
    p1.gamma, p1.ampl = FIXED["gamma"], FIXED["ampl"]
    out = {"dep": [float(x) for x in ui.get_dep(filter=True)],
           "staterror": [float(x) for x in ui.get_staterror(filter=True)],
           "stat_fixed": float(ui.calc_stat())}
    p1.gamma, p1.ampl = START["gamma"], START["ampl"]
    ui.fit()
    ui.fit()
    fit = ui.get_fit_results()
    ui.conf()
    conf = ui.get_conf_results()
    out["fit"] = {"stat": float(fit.statval), "dof": int(fit.dof),
                  "gamma": float(conf.parvals[0]), "ampl": float(conf.parvals[1]),
                  "gamma_lower90": float(conf.parvals[0] + conf.parmins[0]),
                  "gamma_upper90": float(conf.parvals[0] + conf.parmaxes[0]),
                  "ampl_lower90": float(conf.parvals[1] + conf.parmins[1]),
                  "ampl_upper90": float(conf.parvals[1] + conf.parmaxes[1])}
    return out


def main():
    out = {"meta": {"sherpa": sherpa.__version__, "numpy": np.__version__,
                    "python": platform.python_version(),
                    "date": datetime.date.today().isoformat(),
                    "command": "python " + " ".join(sys.argv), "conf_sigma": Z90},
           "files": FILES, "erange": ERANGE, "grouping": "group_counts(15)", "fixed": FIXED,
           "start": START}
    for stat in ("chi2gehrels", "chi2datavar", "chi2modvar", "chi2xspecvar"):
        out[stat] = record(stat)
    path = "tests/reference/sherpa_chi2_subtracted_reference.json"
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
