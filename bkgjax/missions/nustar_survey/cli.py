"""``bkgjax detect`` (source detection on survey mosaics), ``bkgjax simulate-survey`` (the
calibration by simulations), ``bkgjax catalogue`` (the master catalogue across bands) and
``bkgjax survey-tracks`` (hardness-ratio tracks, conversion factors, Fig. 14)."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["register"]


def _detect(args) -> int:
    from bkgjax.io import BkgjaxIOError
    from bkgjax.missions.nustar_survey.detection import detect
    from bkgjax.missions.nustar_survey.images import read_survey_images, read_thresholds
    from bkgjax.missions.nustar_survey.instrument import band_info, paper_thresholds

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
    from bkgjax.missions.nustar_survey import simulation as ssim

    t0 = time.perf_counter()
    try:
        if args.processes is not None and args.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {args.processes}")
        cfg = ssim.read_survey_config(args.config or ssim.default_config_path())
        if args.bands:
            from bkgjax.missions.nustar_survey.instrument import band_info

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

            def fmt(key, row=row):
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
    from bkgjax.io import BkgjaxIOError
    from bkgjax.missions.nustar_survey.catalogue import (
        master_catalogue_from_images,
        write_master_catalogue,
    )
    from bkgjax.missions.nustar_survey.images import read_survey_images, read_thresholds
    from bkgjax.missions.nustar_survey.instrument import band_info, paper_thresholds

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
    _print_ct_fraction(master.meta)
    return 0


def _print_ct_fraction(meta) -> None:
    """One line on the Compton-thick fraction from a master catalogue's ``meta``."""
    n = int(meta.get("CTNSRC", 0))
    if not n:
        return
    print(f"Compton-thick fraction {100 * meta['CTFRAC']:.0f} % "
          f"[{100 * meta['CTFRACLO']:.0f}-{100 * meta['CTFRACHI']:.0f} %] of {n} source(s) "
          f"with an HR: {meta['CTNGOOD']} good, {meta['CTNCAND']} candidate(s), "
          f"{meta['CTNPOSS']} possible ({meta['NHMODEL']})")


def _survey_tracks(args) -> int:
    import json

    from bkgjax.io import BkgjaxIOError
    from bkgjax.missions.nustar_survey import tracks as tk
    from bkgjax.missions.nustar_survey.catalogue import add_obscuration_columns
    from bkgjax.missions.nustar_survey.instrument import BANDS
    from bkgjax.missions.nustar_survey.plots import write_hardness_figure

    t0 = time.perf_counter()
    try:
        if args.rmf and not args.arf:
            raise ValueError("--rmf needs --arf")
        if not 0 < args.psf_fraction <= 1:
            raise ValueError(f"--psf-fraction must be in (0, 1], got {args.psf_fraction}")
        response = tk.band_response(args.arf, args.rmf, area_scale=1.0 / args.psf_fraction) \
            if args.arf else None
        model = {"gamma": args.gamma}
        grid = tk.track_grid(step_log_nh=args.step_log_nh, step_z=args.step_z)
        plain = tk.hardness_tracks(*grid, response, **model)
        compton = tk.hardness_tracks(*grid, response, compton="rest", **model)
        cf = tk.conversion_factors(response, **model)
        sources = None
        if args.catalogue:
            from astropy.table import Table

            sources = Table.read(args.catalogue)
            add_obscuration_columns(sources, response=response, **model)
        os.makedirs(args.out, exist_ok=True)
        tracks_path = tk.write_tracks(os.path.join(args.out, "hardness_tracks.ecsv"),
                                      [plain, compton])
        cf_path = os.path.join(args.out, "conversion_factors.json")
        with open(cf_path, "w") as fh:
            json.dump({"unit": "erg cm^-2 count^-1 (one module)", "response": plain.response,
                       "model": plain.model_string(), "gamma": args.gamma,
                       "bands": {b: {"cf": v, "paper": BANDS[b].cf, "ratio": v / BANDS[b].cf}
                                 for b, v in cf.items()}}, fh, indent=1)
        figure = write_hardness_figure(os.path.join(args.out, "fig14_hardness_ratio.png"),
                                       plain, sources, compton)
    except (BkgjaxIOError, ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'band':>6s} {'CF model':>10s} {'paper':>10s}  (erg cm^-2 count^-1)")
    for band, value in cf.items():
        print(f"{band:>6s} {value:10.3e} {BANDS[band].cf:10.3e}")
    if sources is not None:
        _print_ct_fraction(sources.meta)
    print(f"wrote {tracks_path}, {cf_path}, {figure} ({time.perf_counter() - t0:.1f} s)")
    return 0


def register(sub) -> None:
    """Add ``detect``, ``simulate-survey``, ``catalogue`` and ``survey-tracks`` to the
    ``bkgjax`` subparsers."""
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

    det.set_defaults(func=_detect)

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
                          "[simulation] processes, 1); same results for any number; each "
                          "worker starts Python and compiles, which pays off only from a "
                          "few thousand simulations per band")
    sim.add_argument("--no-progress", action="store_true")

    sim.set_defaults(func=_simulate_survey)

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

    cat.set_defaults(func=_catalogue)

    trk = sub.add_parser("survey-tracks",
                         help="NuSTAR survey hardness-ratio tracks, count-rate-to-flux factors "
                              "and the HR figure (Zhao et al. 2021 Fig. 14)")
    trk.add_argument("--out", required=True, help="output folder (ECSV, JSON, PNG)")
    trk.add_argument("--arf", default=None,
                     help="point-source ARF (default: the shipped NuSTAR FPMA point-source ARF)")
    trk.add_argument("--rmf", default=None, help="RMF for --arf (default: diagonal)")
    trk.add_argument("--psf-fraction", type=float, default=1.0,
                     help="PSF fraction of the --arf extraction region, divided out to give "
                          "full-PSF count rates (default 1)")
    trk.add_argument("--gamma", type=float, default=1.8, help="photon index (default 1.8)")
    trk.add_argument("--step-log-nh", type=float, default=0.1,
                     help="track grid step in log10 N_H (default 0.1; the Fig. 14 columns are "
                          "always included)")
    trk.add_argument("--step-z", type=float, default=0.1,
                     help="track grid step in redshift, 0 to 3 (default 0.1; 0.734 included)")
    trk.add_argument("--catalogue", default=None,
                     help="master catalogue with HR, HR_LOWER, HR_UPPER (and REDSHIFT, NaN "
                          "where unknown) to plot and classify")

    trk.set_defaults(func=_survey_tracks)
