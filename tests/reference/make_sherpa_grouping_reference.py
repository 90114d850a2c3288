"""Sherpa reference for bkgjax's channel selection and grouping (tests/test_grouping.py).

For the DG Tau Chandra ACIS spectrum and the NuSTAR Vela X-1 FPMA spectrum (../shared/data),
Sherpa records: the noticed channels of notice(lo, hi); the same with an ignored gap; the
GROUPING/QUALITY of group_counts(15) and group_snr(3) over the whole channel range, then
notice(lo, hi) (the trailing QUALITY=2 group lies outside the range: checked); per noticed bin counts;
C-stat at fixed parameters and a C-stat fit (levmar) of a power law with 90 % conf bounds.

Run from the repository root with a Python that has Sherpa (see README.md in this folder):

    /work/peers/bin/python tests/reference/make_sherpa_grouping_reference.py
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

SHARED = "/work/shared/data/spectra/"
SPECTRA = {
    "dgtau": {
        "pha": SHARED + "chandra_acis_dgtau/acisf04487_001N023_r0009_pha3.fits.gz",
        "arf": SHARED + "chandra_acis_dgtau/acisf04487_001N022_r0009_arf3.fits.gz",
        "rmf": SHARED + "chandra_acis_dgtau/acisf04487_001N022_r0009_rmf3.fits.gz",
        "erange": [0.5, 7.0], "gap": [2.0, 3.0], "start": {"gamma": 1.5, "ampl": 1e-4},
        "fixed": {"gamma": 1.7, "ampl": 1.5e-5},
    },
    "velax1": {
        "pha": SHARED + "nustar_velax1/nu90402339002A01_sr.pha",
        "arf": SHARED + "nustar_velax1/nu90402339002A01_sr.arf",
        "rmf": "/work/shared/data/nustar/aperture/diag.rmf",
        "erange": [3.0, 20.0], "gap": [6.0, 7.5], "start": {"gamma": 1.0, "ampl": 1.0},
        "fixed": {"gamma": 1.2, "ampl": 2.0},
    },
}
Z90 = 1.6448536269514722  # two-sided 90 %: Delta C = 2.706


def load(spec):
    ui.clean()
    ui.load_pha(spec["pha"], use_errors=False)
    ui.load_arf(spec["arf"])
    ui.load_rmf(spec["rmf"])
    ui.set_stat("cstat")
    ui.set_method("levmar")
    ui.set_conf_opt("sigma", Z90)
    ui.set_conf_opt("max_rstat", 1e6)  # Vela X-1 is no power law: bounds compared all the same
    return ui.get_data()


def record(spec, data):
    """Noticed channels (1 per used channel), per-bin counts, stat at fixed values, fit."""
    mask = np.asarray(data.get_mask(), bool)  # per channel, grouped or not
    channels = np.asarray(data.channel)
    if mask.size != channels.size:  # after ignore_bad: the mask covers the good channels only
        channels = channels[np.asarray(data.quality) == 0]
    bin_counts = np.asarray(data.apply_filter(data.counts, groupfunc=np.sum))
    p1 = ui.powlaw1d.p1
    ui.set_source(p1)
    p1.gamma, p1.ampl = spec["fixed"]["gamma"], spec["fixed"]["ampl"]
    stat_fixed = float(ui.calc_stat())
    p1.gamma, p1.ampl = spec["start"]["gamma"], spec["start"]["ampl"]
    ui.fit()
    fit = ui.get_fit_results()
    ui.conf()
    conf = ui.get_conf_results()
    return {
        "noticed_channels": [int(c) for c in channels[mask]],
        "bin_counts": [float(c) for c in bin_counts],
        "n_bins": int(bin_counts.size),
        "stat_fixed": stat_fixed,
        "fit": {"stat": float(fit.statval), "gamma": float(fit.parvals[0]),
                "ampl": float(fit.parvals[1]),
                "gamma_lower90": float(conf.parvals[0] + conf.parmins[0]),
                "gamma_upper90": float(conf.parvals[0] + conf.parmaxes[0]),
                "ampl_lower90": float(conf.parvals[1] + conf.parmins[1]),
                "ampl_upper90": float(conf.parvals[1] + conf.parmaxes[1])},
    }


def main():
    out = {"meta": {"sherpa": sherpa.__version__, "numpy": np.__version__,
                    "python": platform.python_version(),
                    "date": datetime.date.today().isoformat(),
                    "command": "python " + " ".join(sys.argv),
                    "conf_sigma": Z90}}
    for name, spec in SPECTRA.items():
        lo, hi = spec["erange"]
        res = {"files": {k: spec[k] for k in ("pha", "arf", "rmf")}, "erange": spec["erange"],
               "gap": spec["gap"], "fixed": spec["fixed"]}
        d = load(spec)
        ui.notice(lo, hi)
        res["ungrouped"] = record(spec, d)
        d = load(spec)
        ui.notice(lo, hi)
        ui.ignore(*spec["gap"])
        res["ignored_gap"] = record(spec, d)
        for key, call in (("min_counts_15", lambda: ui.group_counts(15)),
                          ("min_snr_3", lambda: ui.group_snr(3))):
            d = load(spec)
            call()  # over the whole channel range (no filter yet)
            grouping = [int(g) for g in d.grouping]
            quality = [int(q) for q in d.quality]
            ui.notice(lo, hi)
            # the trailing QUALITY=2 group lies outside the noticed range here, so this equals
            # ignore_bad() (which resets the filter and then fails to re-apply it on DG Tau)
            bad = np.asarray(d.get_mask(), bool) & (np.asarray(d.quality) != 0)
            assert not bad.any(), f"{name} {key}: a noticed channel has bad quality"
            res[key] = {"grouping": grouping, "quality": quality, **record(spec, d)}
        # chi-square statistics (source counts only: no background loaded in Sherpa)
        res["chi2"] = {}
        for case, call in (("ungrouped", None), ("min_counts_15", lambda: ui.group_counts(15))):
            for stat in ("chi2gehrels", "chi2datavar", "chi2modvar"):
                d = load(spec)
                if call is not None:
                    call()
                ui.notice(lo, hi)
                if stat == "chi2datavar" and np.any(np.asarray(
                        d.apply_filter(d.counts, groupfunc=np.sum)) == 0):
                    continue  # Sherpa refuses zero variances; bkgjax raises (tested)
                ui.set_stat(stat)
                res["chi2"][f"{case}/{stat}"] = record(spec, d)
        out[name] = res
    path = "tests/reference/sherpa_grouping_reference.json"
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
