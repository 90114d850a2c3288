"""Command-line interface: builds the ``bkgjax`` parser from the subcommands that the core and
each mission package register (``register(subparsers)``, each subcommand setting
``func=handler``); ``main`` dispatches to ``args.func``.

* ``bkgjax demo`` (the main job) and ``bkgjax nustar-cxb``: :mod:`bkgjax.missions.nustar_cxb.cli`.
* ``bkgjax detect``, ``simulate-survey``, ``catalogue``: :mod:`bkgjax.missions.nustar_survey.cli`.
* ``bkgjax acis-pback``: :mod:`bkgjax.missions.acis.cli`.
* ``bkgjax isgri-ridge``: :mod:`bkgjax.missions.isgri.cli`.
* ``bkgjax fit-spectrum``, ``demo-spectrum``: :mod:`bkgjax.spectrum_cli` (the core).

Registration imports no JAX: handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import sys

from bkgjax.spectrum_cli import demo_spectrum_path

__all__ = ["build_parser", "demo_spectrum_path", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``bkgjax`` parser with every registered subcommand."""
    from bkgjax import spectrum_cli
    from bkgjax.missions.acis import cli as acis_cli
    from bkgjax.missions.isgri import cli as isgri_cli
    from bkgjax.missions.nustar_cxb import cli as nustar_cxb_cli
    from bkgjax.missions.nustar_survey import cli as nustar_survey_cli

    parser = argparse.ArgumentParser(
        prog="bkgjax",
        description="Probabilistic X-ray background and spectral analysis on JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    nustar_cxb_cli.register(sub)
    spectrum_cli.register(sub)
    nustar_survey_cli.register(sub)
    acis_cli.register(sub)
    isgri_cli.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
