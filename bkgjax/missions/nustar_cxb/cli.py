"""``bkgjax demo`` (the main job: a simulated six-data-set campaign through the whole pipeline)
and ``bkgjax nustar-cxb CONFIG.toml --out DIR`` (the same pipeline on the user's event files)."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["print_table4", "register", "run_pipeline"]


def print_table4(payload):
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
            half = (None if f["upper90"] is None or f["lower90"] is None
                    else 0.5 * (f["upper90"] - f["lower90"]))
            line += (f" | {_num(f['value'], 1e-11, '7.3f')} +- {_num(half, 1e-11, '5.3f')}"
                     f" {_num(e['snr_90'], 1.0, '5.0f')}"
                     f" {_num(e['chi2'], 1.0, '5.1f')}/{e['dof']:<3d}")
        print(line)
    comb = payload["combined"]
    f = comb["flux_3_20"]
    print("-" * len(head))
    per = "  ".join(f"{fpm}: {_num(row['value'], 1e-11, '.3f')} +- "
                    f"{_num(row['err1sigma'], 1e-11, '.3f')}"
                    for fpm, row in comb["per_fpm"].items())
    print(f"weighted mean (1e-11, 1 sigma): {_num(f['value'], 1e-11, '.3f')} +- "
          f"{_num(f['err1sigma'], 1e-11, '.3f')}   [{per}]")
    print("S/N = flux / 90 % half-width (the paper's convention, section 5.1; results.json "
          "also has flux / 1 sigma)")
    print(f"rms scatter {_num(comb['rms_scatter_frac'], 0.01, '.1f')} % vs statistical error "
          f"{_num(comb['stat_err_frac'], 0.01, '.1f')} % (combined); cosmic variance eq. (4): "
          f"{100 * comb['cosmic_variance_frac']:.1f} %")
    undetected = [name for name, c in payload.get("soft_component", {}).items()
                  if c.get("detected") is False]
    if undetected:
        print("soft component not detected in the OCC data of: " + ", ".join(undetected)
              + " (default shape, 90 % upper limits in results.json)")


def _num(value, unit, fmt):
    """``value / unit`` formatted with ``fmt``, or "n/a" (right-aligned) for an undefined one."""
    if value is None:
        width = "".join(ch for ch in fmt.split(".")[0] if ch.isdigit())
        return f"{'n/a':>{width or 1}s}"
    return format(value / unit, fmt)


def _write_json(path, payload):
    """``payload`` as indented strict JSON (NaN / infinity written as null) with one trailing
    newline."""
    from bkgjax.io.jsonio import write_json

    write_json(path, payload)


def run_pipeline(config, out, overrides, *, quiet=False):
    """Shared by ``nustar-cxb`` and ``demo``: load, fit, write results.json and figures."""
    import matplotlib

    matplotlib.use("Agg")
    from tqdm.auto import tqdm

    from bkgjax.missions.nustar_cxb import config as nustar_config
    from bkgjax.missions.nustar_cxb import geometry as nustar
    from bkgjax.missions.nustar_cxb import plots as nustar_plots
    from bkgjax.missions.nustar_cxb.analysis import STAGES, run_analysis
    from bkgjax.missions.nustar_cxb.one_step import campaign_posterior

    datasets, analysis = nustar_config.read_config(config)
    options = nustar_config.options_from_config(analysis, config, **overrides)
    n_files = sum(len(d["sci"]) + len(d["occ"]) for d in datasets)
    with tqdm(total=n_files, desc="reading event files", unit="file", disable=quiet) as bar:
        campaign = nustar_config.bin_campaign(datasets, options, progress=bar)
    with tqdm(total=len(STAGES) + 1, desc="analysis", unit="stage", disable=quiet) as bar:
        def tick(name):
            bar.set_postfix_str(name)
            bar.update(1)

        results = run_analysis(campaign, options, progress=tick)
        payload = dict(results.payload)
        if options.posterior:
            payload["posterior"] = campaign_posterior(results, options)
        bar.update(1)
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, "results.json")
    _write_json(json_path, payload)
    geometries = [nustar.load_geometry(f) for f in sorted({m.fpm for m in campaign.modules})]
    figures = nustar_plots.save_all(results, out, geometries)
    return payload, json_path, figures


def _nustar_cxb(args) -> int:
    from bkgjax.io import BkgjaxIOError
    from bkgjax.missions.nustar_cxb.config import ConfigError

    overrides = {"mask_chip_edges": args.mask_chip_edges or None,
                 "bootstrap": args.bootstrap, "posterior": args.posterior or None,
                 "profile": False if args.no_profile else None, "seed": args.seed,
                 "n_bands": args.n_bands}
    t0 = time.perf_counter()
    try:
        payload, json_path, figures = run_pipeline(args.config, args.out, overrides)
    except (ConfigError, BkgjaxIOError, FileNotFoundError, ValueError) as err:
        # ValueError: a campaign the method cannot fit (run_analysis names the problem)
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table4(payload)
    print(f"\nwrote {json_path} and {len(figures)} figures in {args.out} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _demo(args) -> int:
    import numpy as np

    from bkgjax.missions.nustar_cxb.campaign import CampaignTruth
    from bkgjax.missions.nustar_cxb.campaign_files import write_campaign

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
    payload, json_path, figures = run_pipeline(config, out, overrides)
    print()
    print_table4(payload)
    defined = [d for d in payload["datasets"] if d["flux_3_20"]["lower90"] is not None]
    values = np.array([d["flux_3_20"]["value"] for d in defined])
    covered = np.mean([(d["flux_3_20"]["lower90"] <= truth.cxb_flux_3_20 <= d["flux_3_20"]["upper90"])
                       for d in defined])
    print(f"\ninjected {truth.cxb_flux_3_20 / 1e-11:.3f}: mean recovered "
          f"{values.mean() / 1e-11:.3f}; {100 * covered:.0f} % of the 90 % intervals cover it")
    one = [d["one_step_flux_3_20"]["value"] / d["flux_3_20"]["value"] - 1
           for d in defined if d["one_step_flux_3_20"] is not None]
    print(f"one-step model vs two-step flux: mean difference {100 * np.mean(one):+.2f} % "
          f"(max |{100 * np.max(np.abs(one)):.2f}| %)")
    print(f"wrote {json_path} and {len(figures)} figures in {out} "
          f"({time.perf_counter() - t0:.1f} s in total)")
    return 0


def register(sub) -> None:
    """Add ``demo`` and ``nustar-cxb`` to the ``bkgjax`` subparsers."""
    demo = sub.add_parser("demo", help="main job: simulated NuSTAR CXB campaign, full pipeline")
    demo.add_argument("--out", default="bkgjax-demo", help="output folder (events, JSON, PNG)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scale-exposure", type=float, default=1.0,
                      help="multiply the Table 2 exposures (e.g. 0.1 for a quick look)")

    demo.set_defaults(func=_demo)

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

    cxb.set_defaults(func=_nustar_cxb)
