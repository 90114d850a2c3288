#!/usr/bin/env python
"""Generate independent Sherpa reference numbers for the bkgjax tests.

Run from the repository root with the Sherpa virtualenv:

    /work/peers/bin/python tests/reference/make_sherpa_reference.py

It writes ``tests/reference/sherpa_reference.json`` next to this script.
All floats are stored with full precision (``json`` uses ``repr`` for
floats, which round-trips exactly).

Sherpa installed from pip has no XSPEC models, so the power law is
Sherpa's own ``powlaw1d``: ``ampl * (E / ref) ** -gamma`` with ``ref = 1``
keV, integrated analytically over each energy bin of the response grid.
``ampl`` is photons/cm^2/s/keV at 1 keV, i.e. the same as the XSPEC
``powerlaw`` norm.
"""

import datetime
import json
import os
import platform
import sys
import warnings

import numpy as np
import sherpa
import sherpa.stats
from astropy.io import fits
from sherpa.astro import ui
from sherpa.astro.data import DataPHA
from sherpa.models.basic import UserModel
from sherpa.stats import Cash, CStat, WStat, _statfcts

HERE = os.path.dirname(os.path.abspath(__file__))
OUTFILE = os.path.join(HERE, "sherpa_reference.json")

DGTAU_DIR = "/work/shared/data/spectra/chandra_acis_dgtau/"
DGTAU_PHA = DGTAU_DIR + "acisf04487_001N023_r0009_pha3.fits.gz"
DGTAU_ARF = DGTAU_DIR + "acisf04487_001N022_r0009_arf3.fits.gz"
DGTAU_RMF = DGTAU_DIR + "acisf04487_001N022_r0009_rmf3.fits.gz"

VELA_DIR = "/work/shared/data/spectra/nustar_velax1/"
VELA_PHA = VELA_DIR + "nu90402339002A01_sr.pha"
VELA_BKG = VELA_DIR + "nu90402339002A01_bk.pha"
VELA_ARF = VELA_DIR + "nu90402339002A01_sr.arf"
VELA_RMF = "/work/shared/data/nustar/aperture/diag.rmf"

SIGMA90 = 1.6448536269514722
TRUNC = float(sherpa.stats.truncation_value)


def flist(x):
    return [float(v) for v in np.asarray(x, dtype=float).ravel()]


def ilist(x):
    return [int(v) for v in np.asarray(x).ravel()]


# ---------------------------------------------------------------------------
# Independent numpy versions of the statistics (cross-checks only; they
# follow the formulas in sherpa/include/sherpa/stats.hh).
# ---------------------------------------------------------------------------

def np_cash_terms(S, M, trunc=TRUNC):
    M = np.where(M > 0, M, trunc)
    return np.where(S == 0, M, M - S * np.log(M))


def np_cstat_terms(S, M, trunc=TRUNC):
    M = np.where(M > 0, M, trunc)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = M - S + S * np.log(S / M)
    return np.where(S == 0, M, t)


def wstat_branch(S, B, M, ts, tb):
    """Sherpa's branch for one bin; tb already includes the BACKSCAL ratio."""
    T = ts + tb
    if S == 0:
        return "S==0"
    if B == 0:
        return "B==0,m<S/(ts+tb)" if (M / ts) < S / T else "B==0,m>=S/(ts+tb)"
    return "general"


def np_wstat_term(S, B, M, ts, tb, trunc=TRUNC):
    """W_i (without the factor 2), exactly as sherpa's my_calc_w_stat.

    M is the predicted source counts t_s m_i; tb = t_b * backscal_b/backscal_s.
    """
    T = ts + tb
    m = M / ts
    if S == 0:
        return ts * m - B * np.log(tb / T)
    if B == 0:
        if m < S / T:
            return -tb * m - S * np.log(ts / T)
        logm = trunc if M <= 0 else np.log(M)   # sic: trunc, not log(trunc)
        return M + S * (np.log(S) - logm - 1)
    d = np.sqrt((T * m - S - B) ** 2 + 4.0 * T * B * m)
    f = (S + B - T * m + d) / (2.0 * T)
    a = M + ts * f
    la = trunc if a <= 0 else np.log(a)
    b = tb * f
    lb = trunc if b <= 0 else np.log(b)
    return (M + T * f - S * la - B * lb
            - S * (1.0 - np.log(S)) - B * (1.0 - np.log(B)))


# ---------------------------------------------------------------------------
# helpers around the ui session
# ---------------------------------------------------------------------------

def set_pl(pl, gamma, ampl):
    pl.gamma = gamma
    pl.ampl = ampl
    pl.ref = 1.0


def stat_at(idval, name):
    ui.set_stat(name)
    return float(ui.calc_stat(idval))


def fit_to_convergence(idval, maxiter=10, tol=1e-10):
    ui.fit(idval)
    last = ui.get_fit_results().statval
    niter = 1
    for _ in range(maxiter):
        ui.fit(idval)
        niter += 1
        now = ui.get_fit_results().statval
        if abs(now - last) <= tol:
            break
        last = now
    fr = ui.get_fit_results()
    return {
        "n_fit_calls": niter,
        "parnames": list(fr.parnames),
        "parvals": flist(fr.parvals),
        "statval": float(fr.statval),
        "dof": int(fr.dof),
        "numpoints": int(fr.numpoints),
        "rstat": None if fr.rstat is None else float(fr.rstat),
        "qval": None if fr.qval is None else float(fr.qval),
        "nfev_last_call": int(fr.nfev),
        "succeeded": bool(fr.succeeded),
        "message": str(fr.message),
        "methodname": fr.methodname,
        "statname": fr.statname,
    }


def covar_result(idval):
    ui.covar(idval)
    cr = ui.get_covar_results()
    return {
        "parnames": list(cr.parnames),
        "parvals": flist(cr.parvals),
        "sigma": float(cr.sigma),
        "errors_1sigma": [None if v is None else float(v) for v in cr.parmaxes],
        "parmins": [None if v is None else float(v) for v in cr.parmins],
        "parmaxes": [None if v is None else float(v) for v in cr.parmaxes],
        "covariance_matrix": [flist(r) for r in np.asarray(cr.extra_output)],
    }


def conf_result(idval, pl, best, sigma):
    # restore the best fit before each conf run
    for name, val in zip(["gamma", "ampl"], best):
        getattr(pl, name).val = val
    ui.set_conf_opt("sigma", sigma)
    ui.conf(idval)
    cr = ui.get_conf_results()
    out = {"sigma": float(cr.sigma), "percent": float(cr.percent),
           "parnames": list(cr.parnames), "parvals": flist(cr.parvals)}
    lo_abs, hi_abs, lo_off, hi_off = [], [], [], []
    for pv, mn, mx in zip(cr.parvals, cr.parmins, cr.parmaxes):
        lo_off.append(None if mn is None else float(mn))
        hi_off.append(None if mx is None else float(mx))
        lo_abs.append(None if mn is None else float(pv + mn))
        hi_abs.append(None if mx is None else float(pv + mx))
    out.update({"lower_offset": lo_off, "upper_offset": hi_off,
                "lower_abs": lo_abs, "upper_abs": hi_abs})
    # parameter values after conf (should be unchanged unless a new
    # minimum was found)
    out["parvals_after_conf"] = [float(pl.gamma.val), float(pl.ampl.val)]
    for name, val in zip(["gamma", "ampl"], best):
        getattr(pl, name).val = val
    return out


def channel_info(idval):
    d = ui.get_data(idval)
    rmf = ui.get_rmf(idval)
    mask = np.asarray(d.mask, dtype=bool)
    chans = np.asarray(d.channel)[mask].astype(int)
    off = int(rmf.offset)

    def eb(c):
        i = c - off
        if 0 <= i < len(rmf.e_min):
            return [float(rmf.e_min[i]), float(rmf.e_max[i])]
        return None

    first, last = int(chans[0]), int(chans[-1])
    return {
        "noticed_channels": ilist(chans),
        "n_noticed": int(chans.size),
        "first_channel": first,
        "last_channel": last,
        "contiguous": bool(np.all(np.diff(chans) == 1)),
        "rmf_offset_first_channel": off,
        "ebounds_first_noticed": eb(first),
        "ebounds_channel_before_first": eb(first - 1),
        "ebounds_last_noticed": eb(last),
        "ebounds_channel_after_last": eb(last + 1),
        "sherpa_get_filter": ui.get_filter(idval),
        "noticed_counts_sum": float(np.asarray(d.counts)[mask].sum()),
    }


def dataset_info(idval):
    d = ui.get_data(idval)
    b = ui.get_bkg(idval)
    return {
        "src_name": d.name, "bkg_name": b.name,
        "src_exposure": float(d.exposure), "bkg_exposure": float(b.exposure),
        "src_backscal": float(np.asarray(d.backscal)),
        "bkg_backscal": float(np.asarray(b.backscal)),
        "src_areascal": None if d.areascal is None else float(np.asarray(d.areascal)),
        "bkg_areascal": None if b.areascal is None else float(np.asarray(b.areascal)),
        "src_counts_total": float(np.sum(d.counts)),
        "bkg_counts_total": float(np.sum(b.counts)),
        "n_channels": int(len(d.channel)),
        "first_channel_in_file": int(d.channel[0]),
        "subtracted": bool(d.subtracted),
        "background_ids": list(d.background_ids),
        "arf": ui.get_arf(idval).name, "rmf": ui.get_rmf(idval).name,
    }


def manual_checks(idval, pl):
    """Cross-check calc_stat against numpy formulas on the folded model."""
    d = ui.get_data(idval)
    b = ui.get_bkg(idval)
    mask = np.asarray(d.mask, dtype=bool)
    M = np.asarray(d.eval_model_to_fit(ui.get_model(idval)), dtype=float)
    S = np.asarray(d.counts, dtype=float)[mask]
    B = np.asarray(b.counts, dtype=float)[mask]
    ts = float(d.exposure)
    tb = float(b.exposure) * float(b.backscal) / float(d.backscal)
    cash = 2 * np.sum(np_cash_terms(S, M))
    cstat = 2 * np.sum(np_cstat_terms(S, M))
    wst = 2 * sum(np_wstat_term(s, bb, m, ts, tb) for s, bb, m in zip(S, B, M))
    return M, {"numpy_cash": float(cash), "numpy_cstat": float(cstat),
               "numpy_wstat": float(wst)}


# ---------------------------------------------------------------------------
# DG Tau (Chandra ACIS, Level 3 PHA with the background in a 2nd block)
# ---------------------------------------------------------------------------

def do_dgtau():
    ui.clean()
    out = {"files": {"pha": DGTAU_PHA, "arf": DGTAU_ARF, "rmf": DGTAU_RMF}}
    idval = "dgtau"
    ui.load_pha(idval, DGTAU_PHA)
    # explicit response, using the .gz paths
    ui.load_arf(idval, DGTAU_ARF)
    ui.load_rmf(idval, DGTAU_RMF)

    # background: load_pha follows BACKFILE (the file itself, without .gz;
    # Sherpa's astropy backend falls back to the .gz name) and, when reading
    # a background, picks the block with HDUCLAS2=BKG.
    if len(ui.list_bkg_ids(idval)) > 0:
        how = "auto-loaded by load_pha via BACKFILE (HDUCLAS2=BKG block)"
    else:
        ui.load_bkg(idval, DGTAU_PHA, use_background=True)
        how = "explicit load_bkg(id, path, use_background=True)"
    out["background_loading"] = how

    # verify against the raw FITS blocks
    with fits.open(DGTAU_PHA) as hdul:
        src_hdu = [h for h in hdul if h.header.get("HDUCLAS2") == "TOTAL"][0]
        bkg_hdu = [h for h in hdul if h.header.get("HDUCLAS2") == "BKG"][0]
        fits_src = src_hdu.data["COUNTS"].astype(float)
        fits_bkg = bkg_hdu.data["COUNTS"].astype(float)
        fits_src_bs = float(src_hdu.header["BACKSCAL"])
        fits_bkg_bs = float(bkg_hdu.header["BACKSCAL"])
    d, b = ui.get_data(idval), ui.get_bkg(idval)
    ver = {
        "fits_src_counts_sum": float(fits_src.sum()),
        "fits_bkg_counts_sum": float(fits_bkg.sum()),
        "fits_src_backscal": fits_src_bs, "fits_bkg_backscal": fits_bkg_bs,
        "src_counts_equal": bool(np.array_equal(np.asarray(d.counts), fits_src)),
        "bkg_counts_equal": bool(np.array_equal(np.asarray(b.counts), fits_bkg)),
        "src_backscal_ok": float(d.backscal) == 2.8405338525772e-07,
        "bkg_backscal_ok": float(b.backscal) == 6.8489462137222e-06,
    }
    assert all(v for k, v in ver.items() if k.endswith(("_equal", "_ok"))), ver
    out["verification"] = ver
    out["dataset"] = dataset_info(idval)

    ui.set_analysis(idval, "energy")
    if ui.get_data(idval).grouped:
        ui.ungroup(idval)
    ui.ignore_id(idval)
    ui.notice_id(idval, 0.5, 7.0)
    out["filter"] = {"call": "set_analysis('energy'); ignore_all; notice(0.5, 7.0)",
                     **channel_info(idval)}

    ui.set_source(idval, ui.powlaw1d.pl_dg)
    pl = ui.get_model_component("pl_dg")

    stats = {}
    for gamma, ampl in [(1.7, 1.0e-4), (2.5, 3e-5)]:
        set_pl(pl, gamma, ampl)
        key = f"gamma={gamma!r},ampl={ampl!r}"
        vals = {s: stat_at(idval, s) for s in ("cash", "cstat", "wstat")}
        M, chk = manual_checks(idval, pl)
        vals.update(chk)
        vals["model_counts_sum"] = float(M.sum())
        stats[key] = vals
        if (gamma, ampl) == (1.7, 1.0e-4):
            out["model_counts_gamma1.7_ampl1e-4"] = {
                "how": "ui.get_data(id).eval_model_to_fit(ui.get_model(id)) "
                       "(folded counts per noticed channel, exposure*ARF*RMF)",
                "channels": out["filter"]["noticed_channels"],
                "counts": flist(M),
            }
    out["stat_at_fixed_params"] = {
        "how": "set_stat(name); calc_stat(id); background loaded but not "
               "subtracted and no background model, so cash/cstat use the "
               "source counts only; wstat uses bkg counts, exposures, BACKSCAL",
        "values": stats,
    }

    # ---- cstat fit, levmar
    def start():
        pl.ref = 1.0
        pl.gamma.min, pl.gamma.max = -10, 10
        pl.ampl.min = 0
        set_pl(pl, 1.5, 1.0e-4)

    fits_out = {}
    for stat in ("cstat", "wstat"):
        ui.set_stat(stat)
        ui.set_method("levmar")
        start()
        res = {"start": {"gamma": 1.5, "ampl": 1.0e-4, "ampl_min": 0.0,
                         "gamma_range": [-10.0, 10.0]},
               "method": "levmar",
               "method_opts": {k: (v if not isinstance(v, float) else float(v))
                               for k, v in ui.get_method().config.items()}}
        res["fit"] = fit_to_convergence(idval)
        best = [float(pl.gamma.val), float(pl.ampl.val)]
        res["covar"] = covar_result(idval)
        res["conf_90"] = conf_result(idval, pl, best, SIGMA90)
        res["conf_68"] = conf_result(idval, pl, best, 1.0)
        ui.set_conf_opt("sigma", 1.0)
        if stat == "cstat":
            ui.set_method("neldermead")
            start()
            res["neldermead_fit"] = fit_to_convergence(idval)
            ui.set_method("levmar")
        fits_out[stat] = res
    out["fits"] = fits_out
    return out


# ---------------------------------------------------------------------------
# NuSTAR Vela X-1 FPMA
# ---------------------------------------------------------------------------

def do_vela():
    ui.clean()
    idval = "vela"
    out = {"files": {"pha": VELA_PHA, "bkg": VELA_BKG, "arf": VELA_ARF,
                     "rmf": VELA_RMF}}
    ui.load_pha(idval, VELA_PHA)   # RESPFILE in header is missing (warning)
    ui.load_rmf(idval, VELA_RMF)
    ui.load_arf(idval, VELA_ARF)
    if len(ui.list_bkg_ids(idval)) == 0:
        ui.load_bkg(idval, VELA_BKG)
        out["background_loading"] = "explicit load_bkg"
    else:
        out["background_loading"] = "auto-loaded by load_pha via BACKFILE"
    with fits.open(VELA_BKG) as hb, fits.open(VELA_PHA) as hs:
        bc = hb["SPECTRUM"].data["COUNTS"].astype(float)
        sc = hs["SPECTRUM"].data["COUNTS"].astype(float)
        ver = {"fits_src_counts_sum": float(sc.sum()),
               "fits_bkg_counts_sum": float(bc.sum()),
               "src_counts_equal": bool(np.array_equal(ui.get_data(idval).counts, sc)),
               "bkg_counts_equal": bool(np.array_equal(ui.get_bkg(idval).counts, bc)),
               "fits_src_backscal": float(hs["SPECTRUM"].header["BACKSCAL"]),
               "fits_bkg_backscal": float(hb["SPECTRUM"].header["BACKSCAL"])}
    assert ver["src_counts_equal"] and ver["bkg_counts_equal"], ver
    out["verification"] = ver
    out["dataset"] = dataset_info(idval)

    ui.set_analysis(idval, "energy")
    ui.ignore_id(idval)
    ui.notice_id(idval, 3.0, 79.0)
    out["filter"] = {"call": "set_analysis('energy'); ignore_all; notice(3.0, 79.0)",
                     **channel_info(idval)}

    ui.set_source(idval, ui.powlaw1d.pl_v)
    pl = ui.get_model_component("pl_v")
    stats = {}
    for gamma, ampl in [(1.0, 0.5), (1.2, 1.0)]:
        set_pl(pl, gamma, ampl)
        key = f"gamma={gamma!r},ampl={ampl!r}"
        vals = {s: stat_at(idval, s) for s in ("cash", "cstat", "wstat")}
        M, chk = manual_checks(idval, pl)
        vals.update(chk)
        vals["model_counts_sum"] = float(M.sum())
        stats[key] = vals
        if (gamma, ampl) == (1.0, 0.5):
            out["model_counts_gamma1.0_ampl0.5"] = {
                "channels": out["filter"]["noticed_channels"],
                "counts": flist(M)}
    out["stat_at_fixed_params"] = {"how": "set_stat(name); calc_stat(id)",
                                   "values": stats}

    ui.set_stat("cstat")
    ui.set_method("levmar")
    pl.gamma.min, pl.gamma.max = -10, 10
    pl.ampl.min = 0
    set_pl(pl, 1.0, 0.5)
    out["fit_cstat_levmar"] = {"start": {"gamma": 1.0, "ampl": 0.5},
                               "fit": fit_to_convergence(idval)}
    return out


# ---------------------------------------------------------------------------
# Synthetic per-bin W-stat / cstat / cash reference
# ---------------------------------------------------------------------------

def synthetic_case(S, B, M, ts, tb, bs_s, bs_b, as_s=None, as_b=None):
    S = np.asarray(S, float)
    B = np.asarray(B, float)
    M = np.asarray(M, float)
    n = S.size
    ch = np.arange(1, n + 1, dtype=float)
    src = DataPHA("src", ch, S, exposure=ts, backscal=bs_s, areascal=as_s)
    bkg = DataPHA("bkg", ch, B, exposure=tb, backscal=bs_b, areascal=as_b)
    src.set_background(bkg)   # object-level equivalent of ui.set_bkg

    def calc(pars, x, *args):
        idx = np.asarray(x).astype(int) - 1
        return pars[0] * M[idx]

    model = UserModel("predicted_counts")
    model.calc = calc

    ts_eff = ts * (1.0 if as_s is None else as_s)
    tb_eff = tb * (1.0 if as_b is None else as_b) * bs_b / bs_s
    out = {"inputs": {"channels": ilist(ch), "src_counts": flist(S),
                      "bkg_counts": flist(B), "model_counts": flist(M),
                      "src_exposure": ts, "bkg_exposure": tb,
                      "src_backscal": bs_s, "bkg_backscal": bs_b,
                      "src_areascal": as_s, "bkg_areascal": as_b},
           "derived": {"t_s = src_exposure*src_areascal": ts_eff,
                       "t_b = bkg_exposure*bkg_areascal*bkg_backscal/src_backscal": tb_eff,
                       "B==0 switch: model_counts < S * t_s/(t_s+t_b)":
                           flist(S * ts_eff / (ts_eff + tb_eff))}}

    stats = {"cash": Cash(), "cstat": CStat(), "wstat": WStat()}
    res = {}
    src.notice()
    assert np.allclose(src.eval_model_to_fit(model), M)
    for name, st in stats.items():
        total, fvec = st.calc_stat(src, model)
        per = []
        for c in ch:
            src.ignore()
            src.notice(c, c)
            per.append(float(st.calc_stat(src, model)[0]))
        src.notice()
        res[name] = {"total": float(total), "per_bin_2x_contribution": per,
                     "sum_per_bin": float(np.sum(per)),
                     "fvec_sqrt_2abs": flist(fvec)}

    # low-level call (one element at a time) and the numpy reimplementation
    ll = []
    npw = []
    branches = []
    for s, b, m in zip(S, B, M):
        v, _ = _statfcts.calc_wstat_stat(np.array([s]), np.array([m]),
                                         np.array([1]), np.array([ts_eff]),
                                         np.array([tb_eff]), np.array([b]),
                                         np.array([1.0]), TRUNC)
        ll.append(float(v))
        npw.append(float(2 * np_wstat_term(s, b, m, ts_eff, tb_eff)))
        branches.append(wstat_branch(s, b, m, ts_eff, tb_eff))
    res["wstat"]["per_bin_lowlevel_calc_wstat_stat"] = ll
    res["wstat"]["per_bin_numpy_reimplementation"] = npw
    res["wstat"]["branch"] = branches
    res["cash"]["per_bin_numpy"] = flist(2 * np_cash_terms(S, M))
    res["cstat"]["per_bin_numpy"] = flist(2 * np_cstat_terms(S, M))
    out["results"] = res
    return out


def do_synthetic():
    base = dict(S=[0, 0, 3, 5, 0, 7, 1, 12], B=[0, 4, 0, 2, 6, 3, 0, 9],
                M=[0.5, 1.0, 2.0, 4.0, 0.3, 6.0, 2.5, 10.0],
                ts=1000.0, tb=2000.0, bs_s=0.1, bs_b=0.4)
    # extra bins so that every branch is hit, including B==0 with the
    # model below the switch and zero model values (truncation)
    extra = dict(S=[0, 20, 4, 0, 6, 2, 3, 2],
                 B=[0, 0, 0, 5, 3, 0, 1, 0],
                 M=[0.0, 0.5, 0.0, 0.0, 0.0, 0.3, 1e-30, 2.0 / 9.0],
                 ts=1000.0, tb=2000.0, bs_s=0.1, bs_b=0.4)
    return {
        "description": "Object-level Sherpa: DataPHA(src) with DataPHA(bkg) "
                       "attached via set_background, a UserModel returning "
                       "the given predicted counts per channel (no response, "
                       "so model values are counts), Stat().calc_stat(data, "
                       "model). Per-bin values by ignore(); notice(c, c). "
                       "All per-bin values are the 2*W_i (resp. 2*C_i) "
                       "contributions, summing to the total.",
                       "truncation_value": TRUNC,
        "base": synthetic_case(**base),
        "extra_branches": synthetic_case(**extra),
        "areascal_variant": synthetic_case(**base, as_s=0.8, as_b=1.25),
    }


def main():
    warnings.simplefilter("ignore")
    ref = {
        "meta": {
            "sherpa_version": sherpa.__version__,
            "numpy_version": np.__version__,
            "python_version": sys.version,
            "platform": platform.platform(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": "/work/peers/bin/python tests/reference/make_sherpa_reference.py",
            "sherpa_truncation_value": TRUNC,
            "model": "sherpa powlaw1d: ampl*(E/ref)^-gamma, ref=1 keV, "
                     "integrated analytically over the ARF/RMF energy bins",
        },
        "dgtau": do_dgtau(),
        "vela_fpma": do_vela(),
        "wstat_synthetic": do_synthetic(),
    }
    with open(OUTFILE, "w") as fh:
        json.dump(ref, fh, indent=1)
    print("wrote", OUTFILE)


if __name__ == "__main__":
    main()
