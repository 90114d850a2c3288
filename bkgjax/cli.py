"""Command-line interface.

* ``bkgjax demo``: the main job.  Simulates the six-data-set NuSTAR campaign of Krivonos et al.
  (2021, Table 2) as real-format event files from the shipped aperture geometry, runs the whole
  stray-light CXB pipeline on them and prints a Table-4-like summary.
* ``bkgjax nustar-cxb CONFIG.toml --out DIR``: the same pipeline on the user's event files.
* ``bkgjax fit-spectrum PHA``: one OGIP spectrum (core engine).
* ``bkgjax detect --counts C --background B --exposure E --out CAT``: NuSTAR deep-survey
  source detection (Zhao et al. 2021, nustar_nep_survey_detection.txt, section 3.2).
* ``bkgjax simulate-survey [CONFIG.toml] --n-sims N --out DIR``: the survey's detection
  thresholds, reliability, completeness, sky coverage and logN-logS from simulations.
* ``bkgjax catalogue --band BAND C B E ... --out CAT``: master catalogue across bands with
  hardness ratios and the epoch variability test.
* ``bkgjax acis-pback EVT --region REG --rmf RMF --out BKG.pha``: Chandra ACIS particle
  background of a region from the mkacispback templates (Suzuki et al. 2021).
* ``bkgjax isgri-ridge --scw SCW --crab CRAB --out DIR [--demo]``: INTEGRAL/IBIS-ISGRI
  Galactic ridge fluxes, profiles and spectra (Krivonos et al., integral_ibis_galactic_background.txt).
* ``bkgjax demo-spectrum``: the core engine on the shipped Chandra ACIS spectrum of DG Tau
  (C-stat/W-stat fits, profile errors, NUTS posterior).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import resources

__all__ = ["main", "demo_spectrum_path"]


def demo_spectrum_path() -> str:
    """Path of the shipped DG Tau PHA file (its header names the ARF, RMF and background)."""
    return str(resources.files("bkgjax") / "data" / "dgtau" / "acisf04487_001N023_r0009_pha3.fits.gz")


def _posterior_summary(idata, model, level=0.9):
    import arviz as az
    import numpy as np

    names = list(model.free_names)
    summary = az.summary(idata, var_names=names, hdi_prob=level, round_to="none")
    display = model.display_names()
    pct = int(round(100 * level))
    out = {}
    for name in names:
        row = summary.loc[name]
        out[display[name]] = {
            "mean": float(row["mean"]),
            "sd": float(row["sd"]),
            f"hdi{pct}_low": float(row[f"hdi_{int(round(50 - pct / 2))}%"]),
            f"hdi{pct}_high": float(row[f"hdi_{int(round(50 + pct / 2))}%"]),
            "r_hat": float(row["r_hat"]),
            "ess_bulk": float(row["ess_bulk"]),
        }
    return out


def _print_posterior(posterior):
    """One line per parameter: mean +- sd, 90 % HDI, R-hat, bulk ESS."""
    for name, row in posterior.items():
        print(f"  {name:20s} {row['mean']:12.6g} +- {row['sd']:10.4g}  90% HDI "
              f"[{row['hdi90_low']:.6g}, {row['hdi90_high']:.6g}]  R-hat {row['r_hat']:.3f}"
              f"  ESS {row['ess_bulk']:.0f}")


def _write_json(path, payload):
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")


def _fit_spectrum(args) -> int:
    import numpy as np

    from .fit import fit, guess_norms, load
    from .io import BkgjaxIOError
    from .spectral import parse_model

    if args.stat == "wstat" and args.no_background:
        print("error: --stat wstat needs the background spectrum; drop --no-background",
              file=sys.stderr)
        return 2
    lo, hi = args.erange
    if not (0 < lo < hi):
        print(f"error: --erange needs 0 < LO < HI keV, got {lo} {hi}", file=sys.stderr)
        return 2
    try:
        model = parse_model(args.model)
        data = load(args.pha, erange=(lo, hi), rmf=args.rmf, arf=args.arf,
                    use_background=not args.no_background)
    except (BkgjaxIOError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.stat == "wstat" and not data.has_background:
        print(f"error: {args.pha} has no background (BACKFILE); wstat needs one",
              file=sys.stderr)
        return 2
    model = guess_norms(model, data)
    result = fit(model, data, args.stat, errors="profile", level=0.9,
                 n_starts=args.starts)
    print(f"{args.pha}: {data.n_bins} bins in {lo}-{hi} keV, {int(np.sum(data.counts))} counts"
          + (", background loaded" if data.has_background else ""))
    print(result)
    payload = result.to_dict()
    if args.sample:
        from .infer import posterior_flux, run_nuts

        idata = run_nuts(result.model, data, args.stat, num_warmup=args.warmup,
                         num_samples=args.samples, num_chains=args.chains, seed=args.seed,
                         posterior_predictive=False)
        payload["posterior"] = _posterior_summary(idata, result.model)
        flux = posterior_flux(idata, result.model, lo, hi)
        payload["posterior_energy_flux"] = {
            "band_keV": [lo, hi],
            "median": float(np.median(flux)),
            "lower90": float(np.percentile(flux, 5)),
            "upper90": float(np.percentile(flux, 95)),
            "unit": "erg/cm^2/s",
        }
        print("\nNUTS posterior:")
        _print_posterior(payload["posterior"])
    if args.json:
        _write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0 if result.converged else 1


def _demo_spectrum(args) -> int:
    import numpy as np

    from .fit import fit, guess_norms, load
    from .infer import posterior_flux, run_nuts
    from .spectral import energy_flux, flux_from_covariance, powerlaw

    out = args.out
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    pha = demo_spectrum_path()
    print("bkgjax demo-spectrum: core engine on a real Chandra ACIS spectrum (DG Tau, ObsID 4487)")
    data = load(pha, erange=(0.5, 7.0))
    print(f"  {data.n_bins} channels in 0.5-7 keV, {int(np.sum(data.counts))} source counts, "
          f"{int(np.sum(data.background_counts))} background counts")
    model = guess_norms(powerlaw(PhoIndex=1.5), data)
    results = {}
    for stat in ("cstat", "wstat"):
        result = fit(model, data, stat, errors="profile", level=0.9)
        results[stat] = result
        print(f"\n[{stat}] maximum likelihood (Newton/LM on the exact Hessian)")
        print(result)
    best = results["cstat"]
    flux, flux_err = flux_from_covariance(best.model, best.values, best.covariance,
                                          best.free_names, 0.5, 7.0)
    print(f"\n0.5-7 keV energy flux (covariance): {float(flux):.4e} +- {float(flux_err):.2e} "
          "erg/cm^2/s")
    print("\nNUTS posterior (4 chains, vectorised) ...")
    idata = run_nuts(best.model, data, "cstat", num_warmup=args.warmup,
                     num_samples=args.samples, num_chains=4, seed=args.seed)
    posterior = _posterior_summary(idata, best.model)
    _print_posterior(posterior)
    flux_draws = posterior_flux(idata, best.model, 0.5, 7.0)
    lo90, med, hi90 = np.percentile(flux_draws, [5, 50, 95])
    print(f"  0.5-7 keV energy flux posterior: {med:.4e} [{lo90:.4e}, {hi90:.4e}] erg/cm^2/s")

    payload = {
        "spectrum": os.path.basename(pha),
        "fits": {stat: r.to_dict() for stat, r in results.items()},
        "energy_flux_0.5_7keV": {"value": float(flux), "error": float(flux_err),
                                 "posterior_median": float(med),
                                 "posterior_90": [float(lo90), float(hi90)],
                                 "unit": "erg/cm^2/s"},
        "posterior": posterior,
    }
    json_path = os.path.join(out, "demo_result.json")
    _write_json(json_path, payload)
    fig_path = os.path.join(out, "demo_spectrum.png")
    import matplotlib

    matplotlib.use("Agg")  # the CLI writes files; never open windows (library code leaves
    # the backend alone so that notebooks keep inline figures)
    from .plotting import plot_fit

    fig = plot_fit(best, data, idata=idata)
    fig.savefig(fig_path, dpi=120)
    print(f"\nwrote {json_path} and {fig_path} in {time.perf_counter() - t0:.1f} s")
    return 0


def _print_table4(payload):
    """Table-4-like summary: 3-20 keV CXB flux (1e-11 erg/s/cm^2/deg^2, 90 % errors)."""
    rows = {}
    for entry in payload["datasets"]:
        rows.setdefault(entry["name"], {})[entry["fpm"]] = entry
    fpms = sorted({e["fpm"] for e in payload["datasets"]})
    head = f"{'data set':16s} {'T (ks)':>7s}" + "".join(
        f" | {fpm + ' F(3-20)':>16s} {'S/N':>5s} {'chi2/dof':>9s}" for fpm in fpms)
    print(head)
    print("-" * len(head))
    for name, by_fpm in rows.items():
        first = next(iter(by_fpm.values()))
        line = f"{name:16s} {first['exposure_s'] / 1e3:7.0f}"
        for fpm in fpms:
            e = by_fpm.get(fpm)
            if e is None:
                line += " | " + " " * 33
                continue
            f = e["flux_3_20"]
            half = 0.5 * (f["upper90"] - f["lower90"])
            line += (f" | {f['value'] / 1e-11:7.3f} +- {half / 1e-11:5.3f} {e['snr_90']:5.0f}"
                     f" {e['chi2']:5.1f}/{e['dof']:<3d}")
        print(line)
    comb = payload["combined"]
    f = comb["flux_3_20"]
    print("-" * len(head))
    per = "  ".join(f"{fpm}: {row['value'] / 1e-11:.3f} +- {row['err1sigma'] / 1e-11:.3f}"
                    for fpm, row in comb["per_fpm"].items())
    print(f"weighted mean (1e-11, 1 sigma): {f['value'] / 1e-11:.3f} +- "
          f"{f['err1sigma'] / 1e-11:.3f}   [{per}]")
    print("S/N = flux / 90 % half-width (the paper's convention, section 5.1; results.json "
          "also has flux / 1 sigma)")
    print(f"rms scatter {100 * comb['rms_scatter_frac']:.1f} % vs statistical error "
          f"{100 * comb['stat_err_frac']:.1f} % (combined); cosmic variance eq. (4): "
          f"{100 * comb['cosmic_variance_frac']:.1f} %")


def _run_nustar_pipeline(config, out, overrides, *, quiet=False):
    """Shared by ``nustar-cxb`` and ``demo``: load, fit, write results.json and figures."""
    import matplotlib

    matplotlib.use("Agg")
    from tqdm.auto import tqdm

    from .instruments import nustar
    from .pipelines import nustar_config, nustar_cxb, nustar_plots

    datasets, analysis = nustar_config.read_config(config)
    options = nustar_config.options_from_config(analysis, config, **overrides)
    n_files = sum(len(d["sci"]) + len(d["occ"]) for d in datasets)
    with tqdm(total=n_files, desc="reading event files", unit="file", disable=quiet) as bar:
        campaign = nustar_config.bin_campaign(datasets, options, progress=bar)
    stages = ["flat background maps (OCC 10-20 keV)", "pixel model, SCI", "pixel model, OCC",
              "soft component (OCC spectra)", "spectral fits (Table 4)", "one-step model",
              "combined flux, average spectrum"]
    with tqdm(total=len(stages) + 1, desc="analysis", unit="stage", disable=quiet) as bar:
        def tick(name):
            bar.set_postfix_str(name)
            bar.update(1)

        results = nustar_cxb.run_analysis(campaign, options, progress=tick)
        payload = results["json"]
        if options.posterior:
            payload["posterior"] = nustar_cxb.campaign_posterior(results, options)
        bar.update(1)
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, "results.json")
    _write_json(json_path, payload)
    geometries = [nustar.load_geometry(f) for f in sorted({m.fpm for m in campaign.modules})]
    figures = nustar_plots.save_all(results, out, geometries)
    return payload, json_path, figures


def _nustar_cxb(args) -> int:
    from .io import BkgjaxIOError
    from .pipelines.nustar_config import ConfigError

    overrides = {"mask_chip_edges": args.mask_chip_edges or None,
                 "bootstrap": args.bootstrap, "posterior": args.posterior or None,
                 "profile": False if args.no_profile else None, "seed": args.seed,
                 "n_bands": args.n_bands}
    t0 = time.perf_counter()
    try:
        payload, json_path, figures = _run_nustar_pipeline(args.config, args.out, overrides)
    except (ConfigError, BkgjaxIOError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_table4(payload)
    print(f"\nwrote {json_path} and {len(figures)} figures in {args.out} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _demo(args) -> int:
    import numpy as np

    from .simulate.nustar_campaign import CampaignTruth, write_campaign

    t0 = time.perf_counter()
    out = args.out
    os.makedirs(out, exist_ok=True)
    truth = CampaignTruth()
    print("bkgjax demo: NuSTAR stray-light CXB measurement (Krivonos et al. 2021) on a simulated\n"
          "six-data-set campaign (Table 2 exposures, SCI + Earth-occulted event files, FPMA + FPMB)"
          f"\ninjected CXB: {truth.cxb_flux_3_20:.3e} erg/s/cm^2/deg^2 in 3-20 keV (Gruber shape)")
    config = write_campaign(os.path.join(out, "campaign"), seed=args.seed, truth=truth,
                            scale_exposure=args.scale_exposure)
    print(f"simulated event files and {config} in {time.perf_counter() - t0:.1f} s")
    overrides = {"seed": args.seed, "bootstrap": None, "posterior": None, "profile": None,
                 "mask_chip_edges": None, "n_bands": None}
    payload, json_path, figures = _run_nustar_pipeline(config, out, overrides)
    print()
    _print_table4(payload)
    values = np.array([d["flux_3_20"]["value"] for d in payload["datasets"]])
    covered = np.mean([(d["flux_3_20"]["lower90"] <= truth.cxb_flux_3_20 <= d["flux_3_20"]["upper90"])
                       for d in payload["datasets"]])
    print(f"\ninjected {truth.cxb_flux_3_20 / 1e-11:.3f}: mean recovered "
          f"{values.mean() / 1e-11:.3f}; {100 * covered:.0f} % of the 90 % intervals cover it")
    one = [d["one_step_flux_3_20"]["value"] / d["flux_3_20"]["value"] - 1
           for d in payload["datasets"]]
    print(f"one-step model vs two-step flux: mean difference {100 * np.mean(one):+.2f} % "
          f"(max |{100 * np.max(np.abs(one)):.2f}| %)")
    print(f"wrote {json_path} and {len(figures)} figures in {out} "
          f"({time.perf_counter() - t0:.1f} s in total)")
    return 0


def _detect(args) -> int:
    from .instruments.nustar_survey import band_info, paper_thresholds
    from .io import BkgjaxIOError
    from .io.images import read_survey_images, read_thresholds
    from .pipelines.survey_detection import detect

    t0 = time.perf_counter()
    try:
        band = band_info(args.band).name
        images = read_survey_images(args.counts, args.background, args.exposure)
        thresholds = None
        if args.thresholds == "paper":
            thresholds = paper_thresholds()
        elif args.thresholds:
            thresholds = read_thresholds(args.thresholds)
        table = detect(images, band, thresholds=thresholds, reliability=args.reliability)
    except (BkgjaxIOError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fmt = "ascii.ecsv" if args.out.lower().endswith(".ecsv") else "fits"
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    table.write(args.out, format=fmt, overwrite=True)
    n = len(table)
    line = (f"{args.counts}: {n} detection(s) in {band} keV with P_false <= "
            f"10^{table.meta['LOGPTHR']:g}")
    if n:
        line += f", DET_ML {min(table['DET_ML']):.1f}-{max(table['DET_ML']):.1f}"
    if "RELIABLE" in table.colnames:
        line += f"; {int(sum(table['RELIABLE']))} above the {args.reliability} % threshold"
    print(line)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _simulate_survey(args) -> int:
    from .pipelines import survey_simulation as ssim

    t0 = time.perf_counter()
    try:
        if args.processes is not None and args.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {args.processes}")
        cfg = ssim.read_survey_config(args.config or ssim.default_config_path())
        if args.bands:
            from .instruments.nustar_survey import band_info

            bands = tuple(band_info(b).name for b in args.bands)
        else:
            bands = None
        summary = ssim.run_survey_simulation(cfg, args.out, n_sims=args.n_sims, bands=bands,
                                             progress=not args.no_progress,
                                             processes=args.processes)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{summary['name']}: {summary['n_sims']} simulations per band (seed {summary['seed']})")
    print(f"{'band':>6s} {'interval ks':>12s} {'DET_ML 95%':>18s} {'paper':>6s} "
          f"{'DET_ML 99%':>18s} {'paper':>6s}")
    for band, info in summary["bands"].items():
        for row in info["thresholds"]:
            hi = row["exp_max_ks"]
            interval = f"{row['exp_min_ks']:g}-{hi:g}" if hi is not None else \
                f">{row['exp_min_ks']:g}"

            def fmt(key):
                v, lo, hi_ = row.get(key), row.get(key + "_lo"), row.get(key + "_hi")
                if v is None:
                    return "n/a".rjust(18)
                return f"{v:6.2f} [{lo if lo is not None else float('nan'):5.2f},"\
                       f"{hi_ if hi_ is not None else float('nan'):5.2f}]"

            p95 = row.get("paper_det_ml_95")
            p99 = row.get("paper_det_ml_99")
            print(f"{band:>6s} {interval:>12s} {fmt('det_ml_95'):>18s} "
                  f"{p95 if p95 is not None else float('nan'):6.2f} {fmt('det_ml_99'):>18s} "
                  f"{p99 if p99 is not None else float('nan'):6.2f}")
        lim = info["flux_limits"]
        print(f"{band:>6s} flux at 20/50 % coverage: {lim['sim_20']:.3g} / {lim['sim_50']:.3g}"
              f" (paper {info['paper_flux_limits']['f20']:.3g} / "
              f"{info['paper_flux_limits']['f50']:.3g}); spurious log-log slope "
              f"{info['spurious_loglog_slope']:.2f} +- {info['spurious_loglog_slope_error']:.2f}")
    print(f"wrote thresholds.ecsv, curves (ECSV), summary.json and figures in {args.out} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


def _catalogue(args) -> int:
    from .instruments.nustar_survey import band_info, paper_thresholds
    from .io import BkgjaxIOError
    from .io.images import read_survey_images, read_thresholds
    from .pipelines.survey_catalogue import master_catalogue_from_images, write_master_catalogue

    try:
        images = {band_info(b).name: read_survey_images(c, bg, e) for b, c, bg, e in args.band}
        epochs = {}
        for b, c, bg, e in args.epoch:
            epochs.setdefault(band_info(b).name, []).append(read_survey_images(c, bg, e))
        thresholds = None
        if args.thresholds == "paper":
            thresholds = paper_thresholds()
        elif args.thresholds:
            thresholds = read_thresholds(args.thresholds)
        master, _ = master_catalogue_from_images(
            images, thresholds=thresholds, reliability=args.reliability,
            epochs=epochs or None, require_reliable=args.reliable_only)
        write_master_catalogue(master, args.out)
    except (BkgjaxIOError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(master)} source(s) merged over {len(images)} band(s)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="bkgjax",
        description="Probabilistic X-ray background and spectral analysis on JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="main job: simulated NuSTAR CXB campaign, full pipeline")
    demo.add_argument("--out", default="bkgjax-demo", help="output folder (events, JSON, PNG)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scale-exposure", type=float, default=1.0,
                      help="multiply the Table 2 exposures (e.g. 0.1 for a quick look)")

    cxb = sub.add_parser("nustar-cxb", help="NuSTAR stray-light CXB measurement from event files")
    cxb.add_argument("config", help="TOML file with [[dataset]] tables (name, sci, occ)")
    cxb.add_argument("--out", required=True, help="output folder (results.json, PNG figures)")
    cxb.add_argument("--n-bands", type=int, default=None, help="override [analysis] n_bands")
    cxb.add_argument("--mask-chip-edges", action="store_true",
                     help="exclude the outer row/column of every chip")
    cxb.add_argument("--no-profile", action="store_true", help="skip profile-likelihood bounds")
    cxb.add_argument("--bootstrap", type=int, default=None,
                     help="Poisson bootstrap refits per band (the paper's method; e.g. 10000)")
    cxb.add_argument("--posterior", action="store_true", help="also run NUTS (one-step model)")
    cxb.add_argument("--seed", type=int, default=None)

    ds = sub.add_parser("demo-spectrum", help="core engine on the shipped real DG Tau spectrum")
    ds.add_argument("--out", default="bkgjax-output", help="output folder (JSON, PNG)")
    ds.add_argument("--warmup", type=int, default=500)
    ds.add_argument("--samples", type=int, default=1000)
    ds.add_argument("--seed", type=int, default=0)

    fs = sub.add_parser("fit-spectrum", help="fit an OGIP PHA spectrum")
    fs.add_argument("pha", help="PHA file (type I); BACKFILE/RESPFILE/ANCRFILE are followed")
    fs.add_argument("--model", default="powerlaw",
                    help="model expression, e.g. 'powerlaw' or 'constant*(powerlaw+gaussian)'")
    fs.add_argument("--stat", choices=("cash", "cstat", "wstat"), default="cstat")
    fs.add_argument("--erange", nargs=2, type=float, metavar=("LO", "HI"), default=(0.5, 7.0),
                    help="energy range in keV (channels overlapping it are used)")
    fs.add_argument("--no-background", action="store_true",
                    help="ignore BACKFILE (cash/cstat on the source spectrum alone)")
    fs.add_argument("--rmf", default=None, help="RMF overriding RESPFILE")
    fs.add_argument("--arf", default=None, help="ARF overriding ANCRFILE")
    fs.add_argument("--sample", action="store_true", help="also run NUTS (posterior)")
    fs.add_argument("--warmup", type=int, default=500)
    fs.add_argument("--samples", type=int, default=1000)
    fs.add_argument("--chains", type=int, default=4)
    fs.add_argument("--seed", type=int, default=0)
    fs.add_argument("--starts", type=int, default=1, help="multistart: number of starts")
    fs.add_argument("--json", default=None, help="write the result as JSON here")

    det = sub.add_parser("detect", help="NuSTAR deep-survey source detection (catalogue)")
    det.add_argument("--counts", required=True, help="counts image (FITS)")
    det.add_argument("--background", required=True, help="background image, counts/pixel")
    det.add_argument("--exposure", required=True, help="exposure image, s")
    det.add_argument("--band", default="3-24", help="3-24, 3-8, 8-24, 8-16 or 16-24 (keV)")
    det.add_argument("--thresholds", default=None,
                     help="DET_ML threshold table (ECSV: band, exp_min_ks, exp_max_ks, "
                          "det_ml_95, det_ml_99) or 'paper' for Zhao et al. 2021 Table 2")
    det.add_argument("--reliability", type=int, choices=(95, 99), default=95)
    det.add_argument("--out", required=True, help="catalogue (.fits, or .ecsv)")

    sim = sub.add_parser("simulate-survey",
                         help="survey calibration by simulations (thresholds, curves, figures)")
    sim.add_argument("config", nargs="?", default=None,
                     help="TOML configuration (default: the shipped NEP-like survey)")
    sim.add_argument("--n-sims", type=int, default=None,
                     help="simulations per band (default: [simulation] n_sims, 1200)")
    sim.add_argument("--bands", nargs="+", default=None, help="subset of the configured bands")
    sim.add_argument("--out", required=True, help="output folder (ECSV, JSON, PNG)")
    sim.add_argument("--processes", type=int, default=None,
                     help="worker processes on a CPU host, e.g. one per core (default: "
                          "[simulation] processes, 1); same results for any number; their "
                          "start-up (~30 s) pays off from ~2000-3000 simulations per band")
    sim.add_argument("--no-progress", action="store_true")

    cat = sub.add_parser("catalogue", help="NuSTAR survey master catalogue merged across bands")
    cat.add_argument("--band", nargs=4, action="append", required=True,
                     metavar=("BAND", "COUNTS", "BACKGROUND", "EXPOSURE"),
                     help="one band's mosaics (repeat per band)")
    cat.add_argument("--epoch", nargs=4, action="append", default=[],
                     metavar=("BAND", "COUNTS", "BACKGROUND", "EXPOSURE"),
                     help="one epoch's mosaics for the variability test (repeat)")
    cat.add_argument("--thresholds", default=None, help="threshold table (ECSV) or 'paper'")
    cat.add_argument("--reliability", type=int, choices=(95, 99), default=95)
    cat.add_argument("--reliable-only", action="store_true")
    cat.add_argument("--out", required=True, help="master catalogue (.fits or .ecsv)")

    from .pipelines.acis_pback import add_acis_pback_parser
    from .pipelines.isgri_ridge import add_isgri_ridge_parser

    add_acis_pback_parser(sub)
    add_isgri_ridge_parser(sub)

    args = parser.parse_args(argv)
    if args.command == "acis-pback":
        return args.func(args)
    if args.command == "isgri-ridge":
        from .pipelines.isgri_ridge import run_isgri_ridge

        return run_isgri_ridge(args)
    if args.command == "simulate-survey":
        return _simulate_survey(args)
    if args.command == "catalogue":
        return _catalogue(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "nustar-cxb":
        return _nustar_cxb(args)
    if args.command == "detect":
        return _detect(args)
    if args.command == "demo-spectrum":
        return _demo_spectrum(args)
    return _fit_spectrum(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
