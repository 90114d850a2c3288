"""``bkgjax isgri-ridge``: INTEGRAL/IBIS-ISGRI Galactic ridge fluxes, profiles and spectra."""

from __future__ import annotations

__all__ = ["register"]


def _run(args) -> int:
    from bkgjax.missions.isgri.ridge import run_isgri_ridge

    return run_isgri_ridge(args)


def register(subparsers):
    """Add the ``isgri-ridge`` subcommand to the ``bkgjax`` subparsers."""
    p = subparsers.add_parser(
        "isgri-ridge", help="INTEGRAL/IBIS-ISGRI Galactic ridge fluxes (Krivonos et al.)")
    p.add_argument("--scw", help="ScW table (FITS binary table or ECSV)")
    p.add_argument("--crab", help="Crab table (FITS binary table or ECSV)")
    p.add_argument("--out", required=True, help="output folder (results.json, PNG figures)")
    p.add_argument("--demo", action="store_true",
                   help="simulate a mission first (tables written to OUT/), then analyse it")
    p.add_argument("--demo-orbits", type=int, default=2700, help="orbits of the --demo mission")
    p.add_argument("--demo-spectral", action="store_true",
                   help="--demo with the 21 log bands 25-185 keV (for spectra)")
    p.add_argument("--seed", type=int, default=0, help="--demo seed")
    p.add_argument("--region", action="append", default=[], metavar="NAME:L:B:WIDTH:HEIGHT",
                   help="extra rectangular region (deg), repeatable")
    p.add_argument("--compare-profile", default=None,
                   help="comparison longitude profile (columns L, VALUE; ECSV/FITS/text)")
    p.add_argument("--weighted", action="store_true",
                   help="weighted (1/RATE_ERR^2) orbit regressions instead of ordinary LSQ")
    p.add_argument("--clip-band", default=None,
                   help="band of the orbit residual clipping (default 168_185, else highest)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--hierarchical", action="store_true",
                   help="also run the hierarchical NumPyro background model (NUTS) per band")
    p.add_argument("--hier-max-orbits", type=int, default=None,
                   help="hierarchical model on the first N revolutions only")
    p.add_argument("--hier-warmup", type=int, default=300)
    p.add_argument("--hier-samples", type=int, default=300)
    p.set_defaults(func=_run)
    return p
