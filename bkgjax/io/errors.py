"""Exceptions raised by the OGIP readers and writers in :mod:`bkgjax.io`.

Every problem found while reading a spectral file (PHA, ARF, RMF) is reported as
:class:`BkgjaxIOError`, with a message naming the file path, the HDU / column /
keyword concerned and what is wrong with it.  A file that cannot be found is
reported as :class:`MissingFileError`, which is also a :class:`FileNotFoundError`
so that generic ``except OSError`` handlers keep working.
"""

from __future__ import annotations

__all__ = ["BkgjaxIOError", "MissingFileError"]


class BkgjaxIOError(ValueError):
    """Invalid or inconsistent content in an OGIP spectral file (or in-memory data)."""


class MissingFileError(BkgjaxIOError, FileNotFoundError):
    """A file that is needed (given directly or named in a header keyword) does not exist."""
