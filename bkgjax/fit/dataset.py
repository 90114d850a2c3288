r"""Spectral datasets: the arrays a fit needs, built from OGIP files, as a JAX pytree.

A :class:`SpectralData` holds, for the noticed channel groups only,

* ``counts`` (source region) and optionally ``background_counts`` (background region),
* ``exposure`` :math:`T_s` (s) and ``areascal``,
* ``background_ratio`` :math:`r = t_b/t_s =
  (T_b\,\mathrm{BACKSCAL}_b\,\mathrm{AREASCAL}_b)/(T_s\,\mathrm{BACKSCAL}_s\,\mathrm{AREASCAL}_s)`
  (the W-statistic's exposure ratio),
* ``matrix`` = ARF x RMF restricted to the energy rows that reach a noticed channel and summed
  over channel groups, shape (n_energy, n_bins), and the matching energy grid
  ``e_lo``/``e_hi`` (keV; the ARF grid when there is an ARF, as in Sherpa, else the RMF's),
* ``bin_lo``/``bin_hi``: EBOUNDS energy range of each noticed group (plots, reports),
* ``background_matrix``: the background spectrum's own ARF x RMF on the same energy rows and
  groups, when the background file names its own response (RESPFILE/ANCRFILE; Sherpa's
  ``get_bkg_rmf``/``get_bkg_arf``), else None (the background uses ``matrix``).

Predicted source counts are :math:`\mu = T_s\,\mathrm{AREASCAL}\,(N @ \mathrm{matrix})`.
Channel selection follows Sherpa/XSPEC: a channel is used when its EBOUNDS interval overlaps
``[lo, hi]``; channels with QUALITY != 0 are dropped; a group is noticed when any of its good
channels is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..io import SpectrumFiles, group_index, load_spectrum
from ..spectral.model import check_energy_grid
from ..stats import (
    cash,
    chi2_datavar,
    chi2_gehrels,
    chi2_modvar,
    chi2_subtracted,
    cstat,
    pgstat,
    wstat,
)
from .grouping import (
    fwhm_in_channels,
    group_edges,
    group_min_counts,
    group_min_snr,
    group_optimal,
    noticed_groups,
    parse_grouping,
)

__all__ = ["CHI2_STATISTICS", "SpectralData", "STATISTICS", "statistic_per_bin", "predicted_counts",
           "total_statistic_of_theta"]

STATISTICS = ("cash", "cstat", "wstat", "pgstat", "chi2", "chi2gehrels", "chi2datavar",
              "chi2modvar")
#: The chi-square statistics (Sherpa names; "chi2" is "chi2gehrels", Sherpa's default).
CHI2_STATISTICS = ("chi2", "chi2gehrels", "chi2datavar", "chi2modvar")


@dataclass(frozen=True)
class SpectralData:
    """Arrays of one spectrum's noticed bins (see the module docstring); a JAX pytree.

    The arrays are the pytree's leaves.  ``name`` (the file path, for messages and plots) is
    metadata that is not part of the compilation key: spectra of the same shapes share the
    compiled fits whatever their names.  (A jitted function that *returns* a SpectralData
    returns it with the name of the one it was first traced with.)
    """

    counts: jax.Array
    exposure: jax.Array
    areascal: jax.Array
    matrix: jax.Array
    e_lo: jax.Array
    e_hi: jax.Array
    bin_lo: jax.Array
    bin_hi: jax.Array
    background_counts: jax.Array | None = None
    background_ratio: jax.Array | None = None
    background_exposure: jax.Array | None = None
    background_areascal: jax.Array | None = None
    background_error: jax.Array | None = None
    background_matrix: jax.Array | None = None
    name: str = "spectrum"

    @property
    def n_bins(self) -> int:
        return int(np.shape(self.counts)[-1])

    @property
    def has_background(self) -> bool:
        return self.background_counts is not None

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, counts, exposure, matrix, e_lo, e_hi, *, areascal=1.0,
                    background_counts=None, background_ratio=None, bin_lo=None, bin_hi=None,
                    background_exposure=None, background_areascal=1.0, background_error=None,
                    background_matrix=None, name="spectrum"):
        """Build from arrays, validating shapes and values eagerly (clear errors, no NaN later).

        ``matrix`` is (n_energy, n_bins) in cm^2 (ARF x RMF), ``e_lo``/``e_hi`` the
        n_energy bin edges in keV.  ``background_ratio`` is
        :math:`r = T_b\\,\\mathrm{BACKSCAL}_b A_b / (T_s\\,\\mathrm{BACKSCAL}_s A_s)` per bin;
        a background *model* (:mod:`bkgjax.fit.joint`) also needs the background's
        ``background_exposure`` (s) and ``background_areascal``; pgstat the background's
        Gaussian ``background_error`` (counts per bin, default :math:`\\sqrt{B}`).
        ``background_matrix`` (n_energy, n_bins) in cm^2, on the same energy grid: the
        background spectrum's own response (None: the background uses ``matrix``).
        """
        counts = np.asarray(counts, dtype=np.float64)
        _check_counts(counts, f"{name}: counts")
        matrix = np.asarray(matrix, dtype=np.float64)
        e_lo, e_hi = check_energy_grid(e_lo, e_hi, f"{name}: response energy grid")
        if matrix.ndim != 2 or matrix.shape != (e_lo.size, counts.shape[-1]):
            raise ValueError(
                f"{name}: response matrix has shape {matrix.shape}, expected "
                f"(n_energy={e_lo.size}, n_bins={counts.shape[-1]})"
            )
        if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
            raise ValueError(f"{name}: response matrix has NaN/inf or negative entries")
        exposure = float(exposure)
        if not np.isfinite(exposure) or exposure <= 0:
            raise ValueError(f"{name}: exposure must be finite and > 0 s, got {exposure}")
        areascal = np.asarray(areascal, dtype=np.float64)
        if not np.all(np.isfinite(areascal)) or np.any(areascal <= 0):
            raise ValueError(f"{name}: AREASCAL must be finite and > 0")
        if background_counts is not None:
            background_counts = np.asarray(background_counts, dtype=np.float64)
            _check_counts(background_counts, f"{name}: background counts")
            if background_counts.shape[-1] != counts.shape[-1]:
                raise ValueError(
                    f"{name}: background has {background_counts.shape[-1]} bins, source "
                    f"{counts.shape[-1]}"
                )
            if background_ratio is None:
                raise ValueError(f"{name}: background_counts given without background_ratio")
            background_ratio = np.broadcast_to(
                np.asarray(background_ratio, dtype=np.float64), counts.shape[-1:]
            ).copy()
            if not np.all(np.isfinite(background_ratio)) or np.any(background_ratio <= 0):
                raise ValueError(f"{name}: background exposure ratio must be finite and > 0")
            if background_exposure is not None:
                background_exposure = float(background_exposure)
                if not np.isfinite(background_exposure) or background_exposure <= 0:
                    raise ValueError(f"{name}: background exposure must be finite and > 0 s, "
                                     f"got {background_exposure}")
                background_areascal = np.broadcast_to(
                    np.asarray(background_areascal, dtype=np.float64), counts.shape[-1:]).copy()
                if not np.all(np.isfinite(background_areascal)) or np.any(background_areascal <= 0):
                    raise ValueError(f"{name}: background AREASCAL must be finite and > 0")
            background_error = np.sqrt(background_counts) if background_error is None else \
                np.broadcast_to(np.asarray(background_error, np.float64), counts.shape[-1:]).copy()
            if not np.all(np.isfinite(background_error)) or np.any(background_error < 0):
                raise ValueError(f"{name}: background errors must be finite and >= 0")
        else:
            background_exposure = background_error = None
        if background_matrix is not None:
            if background_counts is None:
                raise ValueError(f"{name}: background_matrix given without background_counts")
            background_matrix = np.asarray(background_matrix, dtype=np.float64)
            if background_matrix.shape != matrix.shape:
                raise ValueError(
                    f"{name}: background response matrix has shape {background_matrix.shape}, "
                    f"expected the source matrix's {matrix.shape} (n_energy, n_bins) on the "
                    "same energy grid"
                )
            if not np.all(np.isfinite(background_matrix)) or np.any(background_matrix < 0):
                raise ValueError(f"{name}: background response matrix has NaN/inf or negative "
                                 "entries")
        if bin_lo is None:
            bin_lo = np.arange(counts.shape[-1], dtype=np.float64)
            bin_hi = bin_lo + 1.0
        device = _to_device  # jnp.asarray's values without its small XLA compilation per shape
        return cls(
            counts=device(counts),
            exposure=device(exposure),
            areascal=device(areascal),
            matrix=device(matrix),
            e_lo=device(e_lo),
            e_hi=device(e_hi),
            bin_lo=device(bin_lo, np.float64),
            bin_hi=device(bin_hi, np.float64),
            background_counts=None if background_counts is None else device(background_counts),
            background_ratio=None if background_ratio is None else device(background_ratio),
            background_exposure=None if background_exposure is None
            else device(background_exposure),
            background_areascal=None if background_exposure is None
            else device(background_areascal),
            background_error=None if background_error is None else device(background_error),
            background_matrix=None if background_matrix is None else device(background_matrix),
            name=name,
        )

    @classmethod
    def from_files(cls, files: SpectrumFiles, erange=None, *, ignore=(), grouping="file",
                   use_background=True, name=None) -> "SpectralData":
        """Build from :class:`bkgjax.io.SpectrumFiles` (see :func:`load`): ``grouping`` and
        the noticed range ``erange`` minus the ``ignore`` ranges select whole groups
        (:mod:`bkgjax.fit.grouping`)."""
        src, rmf, arf = files.source, files.rmf, files.arf
        name = name or (src.path or "spectrum")
        n_chan = src.counts.size
        good = np.ones(n_chan, dtype=bool)
        if src.quality is not None:
            good &= np.asarray(src.quality) == 0
        spec = parse_grouping(grouping)
        ranges = _check_ranges(name, erange, ignore)
        if spec.kind == "file":
            groups = group_index(src.grouping, n_chan)
        elif spec.kind == "none":
            groups = np.arange(n_chan)
        elif spec.kind == "optimal":
            flags, quality = group_optimal(src.counts, fwhm_in_channels(rmf.dense()), good)
            good &= quality == 0
            groups = group_index(flags, n_chan)
        else:
            make = group_min_counts if spec.kind == "min-counts" else group_min_snr
            flags, quality = make(src.counts, spec.value, good)
            good &= quality == 0
            groups = group_index(flags, n_chan)
        used = noticed_groups(groups, good, rmf.e_min, rmf.e_max, erange, ranges)
        good &= used[groups]
        kept = np.unique(groups[good])
        if kept.size == 0:
            raise ValueError(f"{name}: no channel left after the energy filter {erange}, the "
                             f"ignored ranges {list(ranges)}, grouping {spec} and QUALITY screening")
        # channel -> kept group one-hot (bad-quality channels contribute nothing)
        channels = np.nonzero(good)[0]
        grouping_matrix = np.zeros((n_chan, kept.size))
        grouping_matrix[channels, np.searchsorted(kept, groups[channels])] = 1.0
        # the used channels only: the other rows of the grouping matrix are zero (a NuSTAR RMF
        # is 4096 x 4096; the full product took 0.35 s of a 3-20 keV fit's start)
        response = rmf.dense(columns=channels)
        if arf is not None:
            response = response * np.asarray(arf.specresp)[:, None]
        grouped = response @ grouping_matrix[channels]
        # Model evaluation grid: the ARF's when there is one (as Sherpa does).  ARF and RMF grids
        # agree only to float32 precision (1e-7); on narrow bins at high energy that shifts a
        # bin integral by up to 2e-4, so the choice matters at Sherpa's 1e-8 agreement level.
        grid = arf if arf is not None else rmf
        bkg_grouped = None
        if use_background and files.background is not None and files.background_rmf is not None:
            bkg_grouped = _background_response(files, grid, channels, grouping_matrix, name)
        reached = np.any(grouped > 0, axis=1)
        if bkg_grouped is not None:  # the energy rows either response needs
            reached |= np.any(bkg_grouped > 0, axis=1)
        rows = np.nonzero(reached)[0]
        if rows.size == 0:
            raise ValueError(f"{name}: the response has no non-zero entry in the noticed channels")
        rows = np.arange(rows.min(), rows.max() + 1)  # keep a contiguous energy grid
        counts = src.counts @ grouping_matrix
        areascal = _group_mean(src.areascal, grouping_matrix)
        bin_lo, bin_hi = (edge[kept] for edge in group_edges(groups, good, rmf.e_min, rmf.e_max))
        bkg_counts = ratio = bkg_exposure = bkg_error = None
        bkg_areascal = 1.0
        if use_background and files.background is not None:
            bkg = files.background
            bkg_counts = bkg.counts @ grouping_matrix
            bkg_exposure = bkg.exposure
            bkg_areascal = _group_mean(bkg.areascal, grouping_matrix)
            if bkg.stat_err is not None:  # Gaussian errors add in quadrature over a group
                bkg_error = np.sqrt(np.asarray(bkg.stat_err) ** 2 @ grouping_matrix)
            t_b = bkg.exposure * _group_mean(bkg.backscal, grouping_matrix) * bkg_areascal
            t_s = src.exposure * _group_mean(src.backscal, grouping_matrix) * areascal
            ratio = t_b / t_s
        return cls.from_arrays(
            counts, src.exposure, grouped[rows], grid.energ_lo[rows], grid.energ_hi[rows],
            areascal=areascal, background_counts=bkg_counts, background_ratio=ratio,
            background_exposure=bkg_exposure, background_areascal=bkg_areascal,
            background_error=bkg_error, bin_lo=bin_lo, bin_hi=bin_hi, name=name,
            background_matrix=None if bkg_grouped is None else bkg_grouped[rows],
        )

    def with_counts(self, counts, background_counts=None) -> "SpectralData":
        """Same response and exposure, new counts (simulations; no validation, jit-safe)."""
        return dataclasses.replace(
            self,
            counts=counts,
            background_counts=self.background_counts if background_counts is None
            else background_counts,
        )


class _Label:
    """Pytree metadata that travels with a tree but does not key compilation caches.

    All labels compare equal and hash alike, so two trees that differ only in their label
    have equal tree structures: ``jax.jit`` reuses its compiled function for them.  The
    label itself is kept (``tree_map``, ``jit`` arguments and outputs unflatten with the
    label of the tree that was flattened)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Label)

    def __hash__(self):
        return hash(_Label)

    def __repr__(self):  # the same for every name: tree structures print (and key) alike
        return "_Label"


_DATA_FIELDS = ("counts", "exposure", "areascal", "matrix", "e_lo", "e_hi", "bin_lo", "bin_hi",
                "background_counts", "background_ratio", "background_exposure",
                "background_areascal", "background_error", "background_matrix")


def _flatten_with_keys(data):
    children = tuple((jax.tree_util.GetAttrKey(f), getattr(data, f)) for f in _DATA_FIELDS)
    return children, _Label(data.name)


def _flatten(data):
    return tuple(getattr(data, f) for f in _DATA_FIELDS), _Label(data.name)


def _unflatten(label, children):
    obj = object.__new__(SpectralData)
    for f, value in zip(_DATA_FIELDS, children):
        object.__setattr__(obj, f, value)
    object.__setattr__(obj, "name", label.value)
    return obj


# The arrays are the leaves; ``name`` (the file path) is metadata held by a _Label, so fitting
# another file of the same shapes reuses the compiled fit instead of recompiling for the name.
jax.tree_util.register_pytree_with_keys(SpectralData, _flatten_with_keys, _unflatten, _flatten)


def _to_device(value, dtype=None):
    """``jnp.asarray(value, dtype)`` of a NumPy array or a Python float (the same dtype and weak
    type) placed with :func:`jax.device_put`: ``jnp.asarray`` compiles a small XLA kernel for
    every new shape, which a new process pays for each array of a data set."""
    if isinstance(value, (bool, int, float, complex)) and dtype is None:  # Python scalar: weak type
        return jax.device_put(value)
    return jax.device_put(np.asarray(value, dtype=dtype))


def _background_response(files: SpectrumFiles, grid, channels, grouping_matrix, name):
    """The background's own ARF x RMF summed over the channel groups, for the used channels
    only (like the source's).  One model evaluation grid serves both spectra, so the
    background response must share the source's energy grid (Sherpa evaluates the background
    model on the background ARF's grid: the same bins, to float32 precision, here)."""
    rmf, arf = files.background_rmf, files.background_arf
    own_grid = arf if arf is not None else rmf
    where = own_grid.path or "<in-memory response>"
    if own_grid.n_energy != grid.n_energy or not (
            np.allclose(own_grid.energ_lo, grid.energ_lo, rtol=1e-6)
            and np.allclose(own_grid.energ_hi, grid.energ_hi, rtol=1e-6)):
        raise ValueError(
            f"{name}: the background's response {where} has {own_grid.n_energy} energy bins "
            f"{float(own_grid.energ_lo[0]):g}-{float(own_grid.energ_hi[-1]):g} keV, the source's "
            f"{grid.n_energy} bins {float(grid.energ_lo[0]):g}-{float(grid.energ_hi[-1]):g} keV: "
            "both spectra are modelled on one energy grid; use a background response on the "
            "source's grid, or load(..., background_response=False) for the source's response"
        )
    response = rmf.dense(columns=channels)
    if arf is not None:
        response = response * np.asarray(arf.specresp)[:, None]
    return response @ grouping_matrix[channels]


def _group_mean(values, grouping_matrix):
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        return np.full(grouping_matrix.shape[1], float(values))
    return (values @ grouping_matrix) / grouping_matrix.sum(axis=0)


def _check_counts(counts, what):
    if not np.all(np.isfinite(counts)):
        raise ValueError(f"{what} contain NaN or inf")
    if np.any(counts < 0):
        raise ValueError(f"{what} are negative in {int(np.sum(counts < 0))} bin(s); Poisson "
                         "statistics need counts >= 0")
    if np.any(counts != np.round(counts)):
        raise ValueError(f"{what} are not integers in {int(np.sum(counts != np.round(counts)))} "
                         "bin(s); Poisson statistics need integer counts (was a rate or a "
                         "background-subtracted spectrum passed?)")


def _check_ranges(name, erange, ignore):
    """Validate the noticed range and the ignored ranges (keV): finite, 0 <= lo < hi."""
    ranges = []
    for what, pair in ([("erange", erange)] if erange is not None else []) + \
            [("ignore", r) for r in ignore]:
        try:
            lo, hi = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {what} must be a pair (LO, HI) of energies in keV, "
                             f"got {pair!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
            raise ValueError(f"{name}: {what} needs finite 0 <= LO < HI keV, got {lo:g} {hi:g}")
        if what == "ignore":
            ranges.append((lo, hi))
    return tuple(ranges)


def load(pha, erange=None, *, ignore=(), grouping="file", rmf=None, arf=None, background="auto",
         use_background=True, row=None, background_response=True) -> SpectralData:
    """Read a PHA (+ background, RMF, ARF from its header keywords or the arguments) and build
    a :class:`SpectralData` noticing ``erange = (lo, hi)`` keV minus the ``ignore`` ranges
    (a sequence of (lo, hi) pairs), with ``grouping`` ``"file"`` (default), ``"none"``,
    ``"min-counts:N"`` or ``"min-snr:S"`` (:mod:`bkgjax.fit.grouping`).  A background that
    names its own RESPFILE/ANCRFILE gets ``background_matrix`` from them
    (:func:`bkgjax.io.load_spectrum`; ``background_response=False``: the source's)."""
    files = load_spectrum(pha, rmf=rmf, arf=arf,
                          background=background if use_background else None, row=row,
                          background_response=background_response)
    return SpectralData.from_files(files, erange, ignore=ignore, grouping=grouping,
                                   use_background=use_background)


def predicted_counts(structure, theta, data: SpectralData):
    """Source-model counts per noticed bin, :math:`T_s\\,\\mathrm{AREASCAL}\\,(N @ M)`."""
    flux = structure.evaluate(theta, data.e_lo, data.e_hi)
    return data.exposure * data.areascal * (flux @ data.matrix)


def statistic_per_bin(stat: str, model_counts, data: SpectralData):
    """Per-bin fit statistic of ``model_counts`` given the data (``stat`` is static)."""
    if stat == "cash":
        return cash(model_counts, data.counts)
    if stat == "cstat":
        return cstat(model_counts, data.counts)
    if stat == "wstat":
        if data.background_counts is None:
            raise ValueError(f"{data.name}: wstat needs a background spectrum (BACKFILE)")
        return wstat(model_counts, data.counts, data.background_counts, data.background_ratio)
    if stat == "pgstat":
        if data.background_counts is None:
            raise ValueError(f"{data.name}: pgstat needs a background spectrum (BACKFILE)")
        return pgstat(model_counts, data.counts, data.background_counts, data.background_error,
                      data.background_ratio)
    if stat in CHI2_STATISTICS and data.background_counts is not None:
        # chi2 of background-subtracted counts (XSPEC always subtracts; Sherpa's subtract())
        variance = {"chi2": "gehrels", "chi2gehrels": "gehrels", "chi2datavar": "datavar",
                    "chi2modvar": "modvar"}[stat]
        return chi2_subtracted(model_counts, data.counts, data.background_counts,
                               data.background_ratio, variance)
    if stat in ("chi2", "chi2gehrels"):
        return chi2_gehrels(model_counts, data.counts)
    if stat == "chi2datavar":
        return chi2_datavar(model_counts, data.counts)
    if stat == "chi2modvar":
        return chi2_modvar(model_counts, data.counts)
    raise ValueError(f"unknown statistic {stat!r}; choose one of {STATISTICS}")


def total_statistic_of_theta(stat: str, structure, theta, data: SpectralData):
    """Total statistic of the model with all parameter values ``theta`` (``structure.names``
    order) folded through ``data``: the sum over bins of :func:`statistic_per_bin`."""
    return jnp.sum(statistic_per_bin(stat, predicted_counts(structure, theta, data), data))
