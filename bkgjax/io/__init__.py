"""File input/output of the core: OGIP spectra and responses, generic FITS helpers.

:mod:`bkgjax.io.ogip` reads PHA spectra (OGIP/92-007, type I and II) and loads a spectrum
with its background and responses; :mod:`bkgjax.io.response` reads responses (CAL/GEN/92-002:
RMF ``MATRIX`` + ``EBOUNDS``, ARF ``SPECRESP``); :mod:`bkgjax.io.writers` writes all three;
:mod:`bkgjax.io.fits` and :mod:`bkgjax.io.keywords` hold the path/HDU/keyword helpers every
reader uses;
:mod:`bkgjax.io.xspec_model` reads XSPEC ``save model`` files into a parsed structure
(evaluated by :mod:`bkgjax.spectral.xspec_terms`); :mod:`bkgjax.io.table_model` reads XSPEC
table model files (OGIP/92-009, evaluated by :mod:`bkgjax.spectral.table_model`);
:mod:`bkgjax.io.errors` the exceptions.
Mission file formats (event lists, CALDB pieces, tables) are read by the mission packages
under :mod:`bkgjax.missions`.  Nothing in this package evaluates a model.

Reading a spectrum imports no astropy (:mod:`bkgjax.io.fastfits`, astropy being the fallback);
the writers, which need it, are imported when first used.
"""

from .errors import BkgjaxIOError, MissingFileError
from .ogip import (
    PHA,
    SpectrumFiles,
    channel_overlap_mask,
    check_compatible,
    group_index,
    load_spectrum,
    read_pha,
)
from .response import ARF, RMF, read_arf, read_rmf
from .table_model import TableModel, TableParameter, read_table_model
from .xspec_model import XspecModel, XspecParameter, read_xspec_model

_WRITERS = ("write_arf", "write_pha", "write_rmf")


def __getattr__(name):  # the writers (astropy) on first use
    if name in _WRITERS:
        from . import writers

        return getattr(writers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BkgjaxIOError",
    "MissingFileError",
    "PHA",
    "ARF",
    "RMF",
    "SpectrumFiles",
    "read_pha",
    "read_arf",
    "read_rmf",
    "load_spectrum",
    "check_compatible",
    "channel_overlap_mask",
    "group_index",
    "write_pha",
    "write_arf",
    "write_rmf",
    "XspecModel",
    "XspecParameter",
    "read_xspec_model",
    "TableModel",
    "TableParameter",
    "read_table_model",
]
