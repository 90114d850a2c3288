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
    Sherpa's ``group_snr`` without background: at S = 3 a group closes at 10 counts);
``optimal``
    Kaastra & Bleeker (2016) optimal binning (HEASoft ``ftgrouppha grouptype=optimal``, SPEX
    ``obin``): bins a fraction of the resolution FWHM that shrinks with the counts per
    resolution element (:func:`group_optimal`, FWHM from the response with
    :func:`fwhm_in_channels`); groups are runs of good channels and never cross a bad one.

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

__all__ = ["GroupingSpec", "fwhm_in_channels", "group_edges", "group_min_counts", "group_min_snr",
           "group_optimal", "noticed_groups", "optimal_bin_fraction", "parse_grouping"]


@dataclass(frozen=True)
class GroupingSpec:
    """A grouping choice: ``kind`` in {"file", "none", "optimal", "min-counts", "min-snr"}
    and its ``value`` (N or S; None for file/none/optimal)."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_grouping(spec) -> GroupingSpec:
    """``"file"``, ``"none"``, ``"optimal"``, ``"min-counts:N"`` (N >= 1 integer) or
    ``"min-snr:S"`` (S > 0) -> :class:`GroupingSpec`; a clear ValueError naming the value
    otherwise."""
    if isinstance(spec, GroupingSpec):
        return spec
    text = str(spec).strip().lower()
    if text in ("file", "none", "optimal"):
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
    raise ValueError(f"grouping {spec!r}: expected file, none, optimal, min-counts:N or "
                     "min-snr:S")


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


# Kaastra & Bleeker (2016), A&A 587, A151: below x = 2.119 the optimal bin is one FWHM
# (their eq. 36 is continuous there); 1.314 = 1/0.7610 turns the counts within the FWHM of a
# Gaussian line-spread function into the counts per resolution element (their App. B, h_r).
_KB_X_ONE_FWHM = 2.119
_KB_COUNTS_IN_FWHM_TO_ELEMENT = 1.314


def optimal_bin_fraction(counts_per_resolution, n_resolution):
    r"""Optimal bin width over the resolution FWHM, Kaastra & Bleeker (2016) eqs. (36)-(37):

    .. math::
        \frac{\Delta}{\mathrm{FWHM}} = \begin{cases} 1 & x \le 2.119 \\
            \dfrac{0.08 + 7.0/x + 1.8/x^2}{1 + 5.9/x} & x > 2.119 \end{cases},
        \qquad x = \ln[N_r(1 + 0.2\ln R)],

    with :math:`N_r` the counts per resolution element and :math:`R` the number of resolution
    elements in the spectrum (floored at 1).  Few counts: bins of one FWHM; many counts: the
    fraction falls towards 0.08 (0.58 at :math:`N_r = 1000`, :math:`R = 100`).
    """
    n_r = np.asarray(counts_per_resolution, dtype=np.float64)
    arg = n_r * (1.0 + 0.2 * math.log(max(float(n_resolution), 1.0)))
    narrower = arg > math.exp(_KB_X_ONE_FWHM)
    # log of a substituted value where the formula is not used (arg may be 0 or negative there)
    x = np.log(np.where(narrower, arg, math.e))
    return np.where(narrower, (0.08 + 7.0 / x + 1.8 / x**2) / (1.0 + 5.9 / x), 1.0)


def group_optimal(counts, fwhm_channels, good=None):
    r"""(GROUPING, QUALITY) of the Kaastra & Bleeker (2016) optimal binning, the prescription
    of HEASoft's ``ftgrouppha grouptype=optimal`` and SPEX ``obin``.

    Channel by channel as HEASoft's heasp library does it (read in its Python transcription,
    ELISA ``elisa/data/grouping.py``, ``_calc_optimal_binning``), per channel i: the counts
    per resolution element :math:`N_r` are 1.314 times the counts within :math:`\pm` FWHM/2
    of the channel (K&B App. B, eqs. B2-B4, for a Gaussian
    line-spread function; partial channels at the window edges counted pro rata), the number
    of resolution elements is :math:`R = \sum_{good} 1/\mathrm{FWHM}_i` (eq. B1 on the channel
    grid), and the optimal width is ``floor(FWHM_i * optimal_bin_fraction(N_r, R))`` channels,
    at least 1 (rounded down, as heasp does: a bin is never wider than optimal, so no
    resolution is lost).  Groups are then built left to right, each as long as possible while
    no wider than the optimal width of any channel in it.  Where we differ from that
    transcription, on purpose: the FWHM window counts partial channels pro rata (it rounds
    the window ends to channels, so a 1-channel FWHM can take 3 channels), :math:`\ln R`
    rather than :math:`\ln(1 + R)` (the paper's eq. 37; the difference is below
    :math:`0.2/R` in :math:`1 + 0.2\ln R`), and the fit-every-member rule (it checks each
    member's width from that member on, so a group may be wider than a later member's).

    ``counts`` are the source counts per channel (negative values, e.g. net counts, count as
    0), ``fwhm_channels`` the resolution FWHM in channels (:func:`fwhm_in_channels`; values
    below 1 are raised to 1), ``good`` the channels that may be grouped (default all).  Bad
    channels are not counted, stay in a group of their own with QUALITY 5, and end the group
    before them: groups are contiguous runs of good channels.  There is no minimum number of
    counts, so no channel is set bad (QUALITY 2).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.size
    good = np.ones(n, bool) if good is None else np.asarray(good, bool)
    fwhm = np.maximum(np.asarray(fwhm_channels, dtype=np.float64), 1.0)
    if fwhm.shape != counts.shape or good.shape != counts.shape:
        raise ValueError("group_optimal: counts, fwhm_channels and good need the same length, "
                         f"got {counts.shape}, {fwhm.shape}, {good.shape}")
    usable = np.where(good, np.maximum(counts, 0.0), 0.0)
    # counts within [i - FWHM/2, i + FWHM/2] on the channel axis (channel k spans k +- 1/2):
    # the cumulative counts, linear inside a channel, differenced at the window edges
    edges = np.arange(n + 1) - 0.5
    cumulative = np.concatenate([[0.0], np.cumsum(usable)])
    centre = np.arange(n, dtype=np.float64)
    in_fwhm = (np.interp(centre + fwhm / 2, edges, cumulative)
               - np.interp(centre - fwhm / 2, edges, cumulative))
    n_resolution = float(np.sum(1.0 / fwhm[good]))
    fraction = optimal_bin_fraction(_KB_COUNTS_IN_FWHM_TO_ELEMENT * in_fwhm, n_resolution)
    width = np.maximum(np.floor(fwhm * fraction), 1).astype(np.int64)

    grouping = np.ones(n, dtype=np.int16)
    quality = np.where(good, 0, 5).astype(np.int16)
    i = 0
    while i < n:
        limit, j = width[i], i + 1
        if good[i]:
            # extend while the group (i..j) fits every member's optimal width
            while j < n and good[j] and j - i + 1 <= min(limit, width[j]):
                limit = min(limit, width[j])
                grouping[j] = -1
                j += 1
        i = j
    return grouping, quality


def fwhm_in_channels(response):
    """FWHM of the line-spread function in channels, per channel, from a dense response
    ``(n_energy, n_channels)`` (RMF matrix, with or without the ARF).

    For each energy row with a non-zero maximum: the contiguous run of channels around the
    peak where the row is at least half its maximum, its two ends located to a fraction of a
    channel by linear interpolation between channel centres (a row that is one channel wide,
    a diagonal response, gives exactly 1; a run that reaches the end of the channel axis is
    cut at that edge).  The row's width is assigned to the channel nearest the run's
    midpoint, widths landing on the same channel are averaged, and channels without a row are
    interpolated linearly (constant beyond the outermost ones).  At least 1 channel.  For a
    Gaussian profile sampled at channel centres the interpolation overestimates the FWHM by
    about 0.1 channel at 3 channels (0.2 at worst, depending on where the line falls within a
    channel) and by under 1 % above 10 channels, well inside what the grouping needs.
    Secondary peaks (escape peaks, fluorescence) lie outside the run and do not count.
    """
    resp = np.asarray(response, dtype=np.float64)
    if resp.ndim != 2:
        raise ValueError(f"fwhm_in_channels: need a (n_energy, n_channels) matrix, got shape "
                         f"{resp.shape}")
    n_chan = resp.shape[1]
    centres, widths = [], []
    for row in resp:
        peak = int(np.argmax(row))
        half = row[peak] / 2.0
        if not half > 0:
            continue
        below = np.flatnonzero(row < half)
        left, right = below[below < peak], below[below > peak]
        if left.size:  # crossing between channel l (below) and l + 1 (at or above)
            lo_ch = left[-1]
            x_lo = lo_ch + (half - row[lo_ch]) / (row[lo_ch + 1] - row[lo_ch])
        else:
            x_lo = -0.5
        if right.size:  # crossing between channel u - 1 (at or above) and u (below)
            up_ch = right[0]
            x_hi = up_ch - 1 + (row[up_ch - 1] - half) / (row[up_ch - 1] - row[up_ch])
        else:
            x_hi = n_chan - 0.5
        centres.append(0.5 * (x_lo + x_hi))
        widths.append(x_hi - x_lo)
    if not widths:
        raise ValueError("fwhm_in_channels: the response has no non-zero row")
    channel = np.clip(np.rint(centres), 0, n_chan - 1).astype(np.int64)
    total = np.bincount(channel, weights=widths, minlength=n_chan)
    number = np.bincount(channel, minlength=n_chan)
    have = number > 0
    fwhm = np.interp(np.arange(n_chan), np.flatnonzero(have), total[have] / number[have])
    return np.maximum(fwhm, 1.0)


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
