"""Command-line interface: builds the ``bkgjax`` parser from the subcommands that the core and
each mission package register (``register(subparsers)``, each subcommand setting
``func=handler``); ``main`` dispatches to ``args.func``.

* ``bkgjax demo`` (the main job) and ``bkgjax nustar-cxb``: :mod:`bkgjax.missions.nustar_cxb.cli`.
* ``bkgjax detect``, ``simulate-survey``, ``catalogue``, ``survey-tracks``:
  :mod:`bkgjax.missions.nustar_survey.cli`.
* ``bkgjax acis-pback``: :mod:`bkgjax.missions.acis.cli`.
* ``bkgjax isgri-ridge``: :mod:`bkgjax.missions.isgri.cli`.
* ``bkgjax fit-spectrum``, ``demo-spectrum``: :mod:`bkgjax.spectrum_cli` (the core).

Registration imports no JAX: handlers import what they need when they run.

``fit-spectrum`` runs in :func:`bkgjax.runtime.one_shot_compilation` (its fit is compiled for
one use: seconds less of XLA optimisation, the same numbers to ~1e-12; the long pipelines,
whose kernels run many times, keep full optimisation).  Run as the ``bkgjax``
program, the process ends with :func:`os._exit` as soon as the command is done (standard
streams flushed, ``atexit`` functions run): tearing down an interpreter that holds JAX, XLA
executables and astropy/NumPy modules otherwise takes ~0.6 s of every command.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys

from bkgjax.runtime import one_shot_compilation
from bkgjax.spectrum_cli import demo_spectrum_path

__all__ = ["build_parser", "demo_spectrum_path", "exit_now", "main"]


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


def main(argv=None, *, fast_exit: bool | None = None) -> int:
    """Run one ``bkgjax`` command; returns its exit status.

    ``fast_exit``: end the process right after the command (:func:`exit_now`); the default
    does so only for the program itself (``argv`` None and called from ``__main__``: the
    ``bkgjax`` console script or ``python -m bkgjax.cli``), never for a call from Python code
    that passes its arguments, nor under a profiler, coverage or a debugger, nor with
    ``BKGJAX_FAST_EXIT=off``."""
    if fast_exit is None:
        fast_exit = (argv is None and sys._getframe(1).f_globals.get("__name__") == "__main__"
                     and sys.gettrace() is None and sys.getprofile() is None  # no profiler,
                     # coverage or debugger waiting for the interpreter's normal exit
                     and os.environ.get("BKGJAX_FAST_EXIT", "on").strip().lower()
                     not in ("0", "off", "no", "false"))
    args = build_parser().parse_args(argv)
    if getattr(args, "one_shot", False):  # a command that compiles and runs its kernels once
        with one_shot_compilation():
            code = args.func(args)
    else:
        code = args.func(args)
    if fast_exit:
        exit_now(code)
    return code


def exit_now(code: int | None) -> None:
    """End the process with status ``code`` without the interpreter's teardown: flush the
    standard streams and logging, run the ``atexit`` functions (JAX's own clean-up, which only
    frees what the process is about to lose, left out), then :func:`os._exit`."""
    jax_api = sys.modules.get("jax._src.api")  # its atexit clean_up frees backends, caches
    if jax_api is not None and callable(getattr(jax_api, "clean_up", None)):
        atexit.unregister(jax_api.clean_up)
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(0 if code is None else code if isinstance(code, int) else 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
