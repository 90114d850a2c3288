"""The core's subcommands: ``bkgjax fit-spectrum`` (one OGIP spectrum) and ``bkgjax
demo-spectrum`` (the core engine on the shipped Chandra ACIS spectrum of DG Tau: C-stat/W-stat
fits, profile errors, NUTS posterior).  Heavy imports happen inside the handlers so that
``bkgjax --help`` stays fast."""

from __future__ import annotations

import os
import sys
import time
import warnings
from importlib import resources

__all__ = ["demo_spectrum_path", "register", "write_json"]


def demo_spectrum_path() -> str:
    """Path of the shipped DG Tau PHA file (its header names the ARF, RMF and background)."""
    return str(resources.files("bkgjax") / "data" / "dgtau" / "acisf04487_001N023_r0009_pha3.fits.gz")


def write_json(path, payload):
    """Write ``payload`` as indented, strict JSON (non-finite numbers as null; one trailing
    newline)."""
    from bkgjax.io.jsonio import write_json as write

    write(path, payload)


def _posterior_summary(idata, model, level=0.9):
    import arviz as az

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


def _apply_parameter_flags(model, freezes, sets):
    """Apply ``--freeze NAME[=VALUE]`` and ``--set NAME=VALUE``; returns (model, the qualified
    names whose value the user gave).  ValueError names the flag and the value."""
    import math

    given = set()

    def value_of(flag, text, raw, name):
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: {raw!r} is not a number") from None
        p = model[name]
        if not math.isfinite(value) or not p.min <= value <= p.max:
            raise ValueError(f"{flag} {text!r}: {name} must be a finite value in "
                             f"[{p.min:g}, {p.max:g}]")
        return value

    for flag, items in (("--set", sets), ("--freeze", freezes)):
        for text in items:
            name, sep, raw = text.partition("=")
            name = name.strip()
            if flag == "--set" and not sep:
                raise ValueError(f"--set {text!r}: expected NAME=VALUE")
            try:
                qualified = model[name].name  # short (display) or qualified name
            except KeyError as err:
                raise ValueError(f"{flag} {text!r}: {err.args[0]}") from None
            value = value_of(flag, text, raw, qualified) if sep else None
            if value is not None:
                given.add(qualified)
            model = model.set(qualified, value, frozen=True if flag == "--freeze" else None)
    if not model.free_names:
        raise ValueError("--freeze: every parameter is frozen; nothing is left to fit")
    return model, given


def _apply_model_options(args, source, background_model):
    """``--xsect``/``--abund`` as model options (:meth:`bkgjax.spectral.Model.with_options`)
    of the source and background models; ValueError naming the flag and its value."""
    from bkgjax.spectral.absorption import ABUNDANCES, CROSS_SECTIONS

    for flag, key, value, offered in (("--xsect", "xsect", args.xsect, CROSS_SECTIONS),
                                      ("--abund", "abund", args.abund, ABUNDANCES)):
        if value is None:
            continue
        if value not in offered:
            raise ValueError(f"{flag} {value!r}: not available; available: "
                             f"{', '.join(offered)}")
        try:
            source = source.with_options(**{key: value})
            if background_model is not None:
                background_model = background_model.with_options(**{key: value})
        except ValueError as err:
            raise ValueError(f"{flag} {value!r}: {err}") from None
    return source, background_model


def _model_options_used(args) -> dict:
    """The abundance table and cross-sections of the fit (XSPEC defaults when not given)."""
    return {"abund": args.abund or "angr", "xsect": args.xsect or "vern"}


def _error(message) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _check_fit_flags(args):
    """Eager validation of the flags; returns an error message naming the flag, or None."""
    if args.stat in ("wstat", "pgstat") and args.no_background:
        return f"--stat {args.stat} needs the background spectrum; drop --no-background"
    for flag, value, low in (("--warmup", args.warmup, 0), ("--samples", args.samples, 1),
                             ("--chains", args.chains, 1), ("--starts", args.starts, 1)):
        if value < low:
            return f"{flag} must be >= {low}, got {value}"
    if args.gof and args.gof < 10:
        return f"--gof must be >= 10 simulations (or 0 for none), got {args.gof}"
    if args.sample and (args.stat.startswith("chi2") or args.stat == "pgstat"):
        return (f"--sample samples a Poisson likelihood; --stat {args.stat} has none (use "
                "cstat, cash or wstat)")
    lo, hi = args.erange
    if not (0 < lo < hi):
        return f"--erange needs 0 < LO < HI keV, got {lo:g} {hi:g}"
    for a, b in args.ignore:
        if not (0 <= a < b):
            return f"--ignore needs 0 <= LO < HI keV, got {a:g} {b:g}"
    if args.flux is not None and not (0 < args.flux[0] < args.flux[1]):
        return f"--flux needs 0 < LO < HI keV, got {args.flux[0]:g} {args.flux[1]:g}"
    if args.bkg_model is not None:
        if args.no_background:
            return "--bkg-model needs the background spectrum; drop --no-background"
        if args.stat in ("wstat", "pgstat"):
            return (f"--bkg-model with --stat {args.stat}: {args.stat} profiles the background "
                    "instead of modelling it; use --stat cstat (or cash, chi2) with --bkg-model")
    if args.per_dataset and len(args.pha) == 1:
        return (f"--per-dataset {args.per_dataset[0]!r}: there is one data set only; a "
                "per-data-set parameter needs two or more PHA files")
    if args.plot is not None and not args.plot.lower().endswith((".png", ".pdf", ".svg")):
        return f"--plot {args.plot!r}: give a .png, .pdf or .svg file name"
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            folder = os.path.dirname(os.path.abspath(path))
            if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                return f"{flag} {path!r}: cannot write there (a folder, or a missing/read-only parent)"
    return None


def _fit_spectrum(args) -> int:
    import numpy as np

    from bkgjax.fit import BackgroundIgnoredWarning, JointModel, fit, guess_norms, load
    from bkgjax.fit.grouping import parse_grouping
    from bkgjax.io import BkgjaxIOError
    from bkgjax.spectral import load_component, parse_model

    problem = _check_fit_flags(args)
    if problem:
        return _error(problem)
    lo, hi = args.erange
    try:
        grouping = parse_grouping(args.group)
    except ValueError as err:
        return _error(f"--group: {err}")
    for spec in args.component:
        try:
            load_component(spec)
        except (ValueError, ImportError, AttributeError, TypeError) as err:
            return _error(f"--component {spec!r}: {err}")
    try:
        source = parse_model(args.model)
    except ValueError as err:
        return _error(f"--model: {err}")
    background_model = None
    if args.bkg_model is not None:
        try:
            background_model = parse_model(args.bkg_model)
        except ValueError as err:
            return _error(f"--bkg-model: {err}")
    try:  # XSPEC's global abund/xsect: the same options for the source and background models
        source, background_model = _apply_model_options(args, source, background_model)
    except ValueError as err:
        return _error(str(err))
    datasets = []
    for pha in args.pha:
        try:
            datasets.append(load(pha, erange=(lo, hi), ignore=[tuple(r) for r in args.ignore],
                                 grouping=grouping, rmf=args.rmf, arf=args.arf,
                                 use_background=not args.no_background))
        except (BkgjaxIOError, ValueError, FileNotFoundError) as err:
            return _error(str(err))
    for pha, data in zip(args.pha, datasets):
        if args.stat in ("wstat", "pgstat") and not data.has_background:
            return _error(f"{pha} has no background (BACKFILE); --stat {args.stat} needs one")
        if background_model is not None and not data.has_background:
            return _error(f"--bkg-model: {pha} has no background spectrum (BACKFILE)")
    joint = len(datasets) > 1 or background_model is not None or bool(args.link)
    try:
        model = (JointModel.create(source, len(datasets), per_dataset=args.per_dataset,
                                   background=background_model) if joint else source)
        model, given = _apply_parameter_flags(model, args.freeze, args.set)
        for text in args.link:
            name, sep, expression = text.partition("=")
            if not sep or not expression.strip():
                raise ValueError(f"--link {text!r}: expected NAME=EXPRESSION, e.g. "
                                 "norm@2=1.1*norm@1")
            try:
                model = model.set(name.strip(), link=expression)
            except (KeyError, ValueError) as err:
                raise ValueError(f"--link {text!r}: {err.args[0]}") from None
    except (ValueError, KeyError) as err:
        text = str(err.args[0] if err.args else err)
        return _error(text.replace("per_dataset", "--per-dataset"))
    fit_data = datasets if joint else datasets[0]
    model = guess_norms(model, fit_data, keep=given)
    for pha, data in zip(args.pha, datasets):
        # np.asarray first: np.sum of a JAX array runs (and compiles) jnp.sum
        print(f"{pha}: {data.n_bins} bins in {lo}-{hi} keV, {int(np.asarray(data.counts).sum())} counts"
              + (f", background {int(np.asarray(data.background_counts).sum())} counts"
                 if data.has_background else ""))
        if data.has_background and args.stat.startswith("chi2") and background_model is None:
            print(f"{pha}: --stat {args.stat} fits the background-subtracted counts (as XSPEC; "
                  "--no-background to fit the source counts alone)")
        if data.has_background and args.stat in ("cash", "cstat") and background_model is None:
            print(f"warning: {pha}: {args.stat} fits the source counts alone: the loaded "
                  f"background spectrum is ignored; use --stat wstat to profile it, "
                  f"--bkg-model EXPR to model it, or --no-background", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BackgroundIgnoredWarning)  # said once, above
            result = fit(model, fit_data, args.stat, errors="profile", level=0.9,
                         n_starts=args.starts)
    except ValueError as err:  # data the statistic cannot use (e.g. chi2datavar, empty bins)
        return _error(f"--stat {args.stat}: {err}")
    print(result)
    payload = result.to_dict()
    payload["model_options"] = _model_options_used(args)
    payload["data"] = {"files": list(args.pha), "erange_keV": [lo, hi],
                       "ignore_keV": [list(r) for r in args.ignore], "grouping": str(grouping),
                       "n_bins": [d.n_bins for d in datasets],
                       "background_model": args.bkg_model}
    if args.flux is not None:
        from bkgjax.fit import sample_flux

        payload["flux"] = {}
        for k in range(1, len(datasets) + 1):
            entry = {}
            for kind in ("energy", "photon"):
                entry[kind] = sample_flux(result, args.flux[0], args.flux[1], kind=kind,
                                          dataset=k, seed=args.seed)
            payload["flux"][f"dataset{k}" if joint else "model"] = entry
            band = f"{args.flux[0]:g}-{args.flux[1]:g} keV"
            e = entry["energy"]
            print(f"{band} energy flux{f' (data set {k})' if joint else ''}: {e['value']:.4e} "
                  f"erg/cm^2/s, 90% [{e['lower90']:.4e}, {e['upper90']:.4e}]")
    if args.gof:
        from bkgjax.fit import goodness_of_fit

        gof = goodness_of_fit(result, fit_data, n_sims=args.gof, seed=args.seed)
        payload["goodness_of_fit"] = gof
        print(f"goodness of fit ({args.gof} simulations of the best fit, refitted): p-value "
              f"{gof['p_value']:.3g}; simulated {args.stat} median {gof['stat_sims_median']:.1f}"
              + (f"; {gof['n_failed']} replica fits did not converge" if gof["n_failed"] else ""))
    idata = None
    if args.sample:
        from bkgjax.infer import NutsDiagnosticsWarning, nuts_diagnostics, posterior_flux, run_nuts

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BackgroundIgnoredWarning)
            warnings.simplefilter("ignore", NutsDiagnosticsWarning)  # reported below
            idata = run_nuts(result.model, fit_data, args.stat, num_warmup=args.warmup,
                             num_samples=args.samples, num_chains=args.chains, seed=args.seed,
                             posterior_predictive=False)
        diagnostics = nuts_diagnostics(idata, result.model.free_names)
        payload["diagnostics"] = diagnostics
        payload["posterior"] = _posterior_summary(idata, result.model)
        if not joint:
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
        print(f"  diagnostics: max R-hat {diagnostics['r_hat_max']:.3f}, min bulk ESS "
              f"{diagnostics['ess_bulk_min']:.0f}, min tail ESS {diagnostics['ess_tail_min']:.0f}, "
              f"{diagnostics['divergences']} divergences")
        if diagnostics["problems"]:
            print(f"warning: the NUTS chains did not converge well ({'; '.join(diagnostics['problems'])})"
                  "; run longer (--warmup, --samples), more --chains, or --freeze degenerate "
                  "parameters; exit status 1", file=sys.stderr)
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        from bkgjax.plotting import plot_joint_fit

        fig = plot_joint_fit(result, fit_data if joint else [fit_data])
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    poor_sampling = bool(args.sample and payload["diagnostics"]["problems"])
    return 0 if result.converged and not poor_sampling else 1


def _demo_spectrum(args) -> int:
    import numpy as np

    from bkgjax.fit import fit, guess_norms, load
    from bkgjax.infer import posterior_flux, run_nuts
    from bkgjax.spectral import flux_from_covariance, powerlaw

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
    write_json(json_path, payload)
    fig_path = os.path.join(out, "demo_spectrum.png")
    import matplotlib

    matplotlib.use("Agg")  # the CLI writes files; never open windows (library code leaves
    # the backend alone so that notebooks keep inline figures)
    from bkgjax.plotting import plot_fit

    fig = plot_fit(best, data, idata=idata)
    fig.savefig(fig_path, dpi=120)
    print(f"\nwrote {json_path} and {fig_path} in {time.perf_counter() - t0:.1f} s")
    return 0


def register(sub) -> None:
    """Add ``demo-spectrum`` and ``fit-spectrum`` to the ``bkgjax`` subparsers."""
    ds = sub.add_parser("demo-spectrum", help="core engine on the shipped real DG Tau spectrum")
    ds.add_argument("--out", default="bkgjax-output", help="output folder (JSON, PNG)")
    ds.add_argument("--warmup", type=int, default=500)
    ds.add_argument("--samples", type=int, default=1000)
    ds.add_argument("--seed", type=int, default=0)

    ds.set_defaults(func=_demo_spectrum)

    fs = sub.add_parser("fit-spectrum", help="fit an OGIP PHA spectrum")
    fs.add_argument("pha", nargs="+",
                    help="PHA file(s) (type I); BACKFILE/RESPFILE/ANCRFILE are followed; "
                         "several files are fitted jointly with every parameter shared unless "
                         "named by --per-dataset")
    fs.add_argument("--model", default="powerlaw",
                    help="model expression, e.g. 'powerlaw' or 'constant*(powerlaw+gaussian)'")
    fs.add_argument("--bkg-model", default=None, metavar="EXPR",
                    help="model of the background spectrum (e.g. 'powerlaw'), fitted jointly "
                         "and scaled into the source region by the BACKSCAL ratio; its "
                         "parameters are bkg.NAME")
    fs.add_argument("--link", action="append", default=[], metavar="NAME=EXPR",
                    help="tie a parameter to an expression of others, e.g. "
                         "--link 'norm@2=1.1*norm@1' (repeatable; XSPEC newpar)")
    fs.add_argument("--per-dataset", action="append", default=[], metavar="NAME",
                    help="give each data set its own copy NAME@K of this parameter "
                         "(repeatable; e.g. --per-dataset norm)")
    fs.add_argument("--abund", default=None, type=str.lower, metavar="TABLE",
                    help="abundance table of the absorption components (XSPEC abund): angr "
                         "(default), aspl or wilm (tbabs only); recorded in the JSON")
    fs.add_argument("--xsect", default=None, type=str.lower, metavar="SET",
                    help="photoelectric cross-sections (XSPEC xsect): vern (default; the only "
                         "set available)")
    fs.add_argument("--component", action="append", default=[], metavar="MODULE:NAME",
                    help="import a user model component, e.g. mypkg.models:myline (repeatable)")
    fs.add_argument("--flux", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                    help="energy and photon flux of the source model in LO-HI keV with 90%% "
                         "intervals (parameter draws from the covariance, as Sherpa's sample_flux)")
    fs.add_argument("--gof", type=int, default=0, metavar="N",
                    help="goodness of fit: p-value of the statistic from N simulations of the "
                         "best fit, each refitted (parametric bootstrap)")
    fs.add_argument("--plot", default=None, metavar="OUT.png",
                    help="figure of data, model and residuals of every data set")
    fs.add_argument("--stat", choices=("cash", "cstat", "wstat", "pgstat", "chi2", "chi2gehrels",
                                       "chi2datavar", "chi2modvar"), default="cstat",
                    help="fit statistic (chi2 = chi2gehrels, Sherpa's names)")
    fs.add_argument("--erange", nargs=2, type=float, metavar=("LO", "HI"), default=(0.5, 7.0),
                    help="energy range in keV (channels overlapping it are used)")
    fs.add_argument("--ignore", nargs=2, type=float, metavar=("LO", "HI"), action="append",
                    default=[], help="ignore the bins overlapping LO-HI keV (repeatable)")
    fs.add_argument("--group", default="file", metavar="SPEC",
                    help="grouping: file (the PHA's GROUPING/QUALITY, default), none, "
                         "min-counts:N or min-snr:S (over all channels, then the energy filter)")
    fs.add_argument("--freeze", action="append", default=[], metavar="NAME[=VALUE]",
                    help="freeze a parameter (at VALUE), e.g. --freeze PhoIndex=2 or "
                         "--freeze constant@1=1 (repeatable)")
    fs.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="start value of a parameter, e.g. --set LineE=6.4 (repeatable)")
    fs.add_argument("--no-background", action="store_true",
                    help="ignore BACKFILE (cash/cstat on the source spectrum alone)")
    fs.add_argument("--rmf", default=None, help="RMF overriding RESPFILE")
    fs.add_argument("--arf", default=None, help="ARF overriding ANCRFILE")
    fs.add_argument("--sample", action="store_true",
                    help="also run NUTS (posterior); exit status 1 when R-hat > 1.01, bulk or "
                         "tail ESS < 400 or divergences")
    fs.add_argument("--warmup", type=int, default=500)
    fs.add_argument("--samples", type=int, default=1000)
    fs.add_argument("--chains", type=int, default=4)
    fs.add_argument("--seed", type=int, default=0)
    fs.add_argument("--starts", type=int, default=1, help="multistart: number of starts")
    fs.add_argument("--json", default=None, help="write the result as JSON here")

    fs.set_defaults(func=_fit_spectrum, one_shot=True)
