r"""Channel grouping and the noticed-bin selection of a spectrum (XSPEC/Sherpa conventions).

Grouping (OGIP/92-007 GROUPING and QUALITY columns: +1 starts a group, -1 continues it;
QUALITY 0 good, 2 set bad by a grouping tool, 5 bad from the pipeline):

``file``
    the PHA file's own GROUPING and QUALITY (the default, as in XSPEC and Sherpa);
``none``
    every channel its own bin (the file's QUALITY still applies);
``min-counts:N``
    consecutive channels joined until a group holds at least N source counts, over the whole
    channel range before any energy filter (grppha ``group min N``, Sherpa ``group_counts``
    on an unfiltered spectrum); the trailing channels that never reach N get QUALITY 2 and
    are not used, as XSPEC and Sherpa's ``ignore_bad`` do;
``min-snr:S``
    the same until the source signal-to-noise exceeds S, :math:`\sqrt{C} > S` (strictly, as
    Sherpa's ``group_snr`` without background: at S = 3 a group closes at 10 counts).

Selection (:func:`noticed_groups`): a group is used when its energy range (from its first to
its last good channel) overlaps the noticed range and none of the ignored ranges, with
Sherpa's overlap rule (``e_min < hi`` and ``e_max > lo``, so a group that only touches a
boundary is not selected); a selected group is kept whole, as Sherpa does for grouped data.
Channels with QUALITY != 0 never enter a group's counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["GroupingSpec", "group_edges", "group_min_counts", "group_min_snr", "noticed_groups",
           "parse_grouping"]


@dataclass(frozen=True)
class GroupingSpec:
    """A grouping choice: ``kind`` in {"file", "none", "min-counts", "min-snr"} and its
    ``value`` (N or S; None for file/none)."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_grouping(spec) -> GroupingSpec:
    """``"file"``, ``"none"``, ``"min-counts:N"`` (N >= 1 integer) or ``"min-snr:S"`` (S > 0)
    -> :class:`GroupingSpec`; a clear ValueError naming the value otherwise."""
    if isinstance(spec, GroupingSpec):
        return spec
    text = str(spec).strip().lower()
    if text in ("file", "none"):
        return GroupingSpec(text)
    kind, sep, value = text.partition(":")
    if kind in ("min-counts", "min-snr") and sep:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if kind == "min-counts" and math.isfinite(number) and number >= 1 and number == int(number):
            return GroupingSpec(kind, float(int(number)))
        if kind == "min-snr" and math.isfinite(number) and number > 0:
            return GroupingSpec(kind, number)
        need = "an integer N >= 1" if kind == "min-counts" else "a number S > 0"
        raise ValueError(f"grouping {spec!r}: {kind} needs {need} (e.g. {kind}:"
                         f"{'15' if kind == 'min-counts' else '3'})")
    raise ValueError(f"grouping {spec!r}: expected file, none, min-counts:N or min-snr:S")


def _group_min_total(counts, good, minimum: float, strict: bool = False):
    """Greedy grouping: channels (good ones only counted) joined until the running sum of
    ``counts`` reaches ``minimum`` (exceeds it when ``strict``); the trailing incomplete group
    gets QUALITY 2."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.size
    grouping = np.ones(n, dtype=np.int16)
    quality = np.where(good, 0, 5).astype(np.int16)
    start, total = None, 0.0
    for c in range(n):
        if not good[c]:  # not counted; inside an open group it stays inside (and unused)
            if start is not None:
                grouping[c] = -1
            continue
        if start is None:
            start, total = c, 0.0
        else:
            grouping[c] = -1
        total += counts[c]
        if total > minimum or (total == minimum and not strict):
            start = None
    if start is not None:  # trailing channels below the minimum: flagged bad
        tail = np.arange(start, n)
        quality[tail[good[tail]]] = 2
    return grouping, quality


def group_min_counts(counts, minimum: int, good=None):
    """(GROUPING, QUALITY) of groups of at least ``minimum`` counts (see the module docstring);
    ``good`` marks the channels that may be grouped (default all)."""
    good = np.ones(np.size(counts), bool) if good is None else np.asarray(good, bool)
    return _group_min_total(counts, good, float(minimum))


def group_min_snr(counts, snr: float, good=None):
    """(GROUPING, QUALITY) of groups with :math:`\\sqrt{C} >` ``snr``."""
    good = np.ones(np.size(counts), bool) if good is None else np.asarray(good, bool)
    return _group_min_total(counts, good, float(snr) ** 2, strict=True)


def group_edges(group_of_channel, good, e_min, e_max):
    """Energy range of each group (``group_of_channel`` maps channels to 0 .. n_groups-1):
    the lowest E_MIN and highest E_MAX of its good channels; (inf, -inf) for a group without
    a good channel."""
    group_of_channel = np.asarray(group_of_channel)
    good = np.asarray(good, bool)
    n_groups = int(group_of_channel.max()) + 1 if group_of_channel.size else 0
    lo = np.full(n_groups, np.inf)
    hi = np.full(n_groups, -np.inf)
    np.minimum.at(lo, group_of_channel[good], np.asarray(e_min, float)[good])
    np.maximum.at(hi, group_of_channel[good], np.asarray(e_max, float)[good])
    return lo, hi


def noticed_groups(group_of_channel, good, e_min, e_max, erange=None, ignore=()):
    """Which groups are used: a boolean per group index (groups without a good channel are
    never used).  See the module docstring for the rule."""
    lo, hi = group_edges(group_of_channel, good, e_min, e_max)
    used = np.isfinite(lo)
    if erange is not None:
        used &= (hi > float(erange[0])) & (lo < float(erange[1]))
    for a, b in ignore:
        used &= ~((hi > float(a)) & (lo < float(b)))
    return used
