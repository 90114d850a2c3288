"""``bkgjax acis-pback``: the ACIS particle-induced background spectrum of a region."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _run(args) -> int:
    from bkgjax.missions.acis.pipeline import run_acis_pback

    return run_acis_pback(args)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``acis-pback`` subcommand to the ``bkgjax`` subparsers."""
    p = subparsers.add_parser(
        "acis-pback",
        help="Chandra ACIS particle-induced background spectrum for a region (mkacispback)",
        description="Generate the ACIS particle-induced background model of a region from the "
                    "mkacispback templates (Suzuki et al. 2021) and write it as an OGIP background "
                    "PHA plus a PNG plot.")
    p.add_argument("events", metavar="EVT", help="Chandra level-2 event file")
    p.add_argument("--region", required=True, metavar="REG",
                   help="ds9 region file (physical/image/fk5 shapes on sky x,y; image shapes with "
                        "tag={ccd_id=N} on chipx,chipy)")
    p.add_argument("--rmf", required=True, metavar="RMF", help="response matrix of the source spectrum")
    p.add_argument("--mode", choices=("faint", "vfaint"), default=None,
                   help="data mode of the templates (default: from DATAMODE)")
    p.add_argument("--templates", default=None, metavar="DIR",
                   help="mkacispback template directory (default: $BKGJAX_ACIS_TEMPLATES)")
    p.add_argument("--out", required=True, metavar="BKG.pha", help="output background PHA")
    p.add_argument("--plot", default=None, metavar="PNG", help="plot file (default: OUT with .png)")
    p.add_argument("--backscal", type=float, default=1.0, help="BACKSCAL keyword (that of the source spectrum)")
    p.add_argument("--oversample", type=float, default=10000.0,
                   help="EXPOSURE multiplier of the integer-count PHA (default 10000)")
    p.set_defaults(func=_run)
    return p
