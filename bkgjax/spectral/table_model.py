r"""XSPEC table models (``atable``, ``mtable``, ``etable``; OGIP/92-009) as model components.

``parse_model("tbabs*atable{models/disk.fits}")`` (and the command line's ``--model``) reads
the file with :func:`bkgjax.io.read_table_model` and registers a component named after the
file (``disk``; :func:`table_component`), whose parameters come from the file, so that fits,
profile errors, fluxes and NUTS use it like any other component.

Evaluation (as XSPEC 12, heasp ``table::getValues`` and ``Numerics::Rebin``), pure JAX,
differentiable in every parameter:

1. **Interpolation on the grid.**  Each interpolated parameter :math:`p_j` (tabulated values
   :math:`g_{j,0} < \dots < g_{j,n_j-1}`) is clamped to :math:`[g_{j,0}, g_{j,n_j-1}]` and
   located in its grid, :math:`g_{j,i} \le p_j \le g_{j,i+1}`, with the fraction
   :math:`f_j = (p_j - g_{j,i})/(g_{j,i+1} - g_{j,i})` (METHOD 0) or
   :math:`\ln(p_j/g_{j,i})/\ln(g_{j,i+1}/g_{j,i})` (METHOD 1, logarithmic); the spectra are
   combined multilinearly, :math:`\sum_{corners} \prod_j (1-f_j \text{ or } f_j)\,S`: linear in
   the spectra, whatever METHOD (XSPEC interpolates the parameter, not the spectrum, in log).
   XSPEC refuses a value outside the grid; here the limits of the parameter are the hard limits
   MINIMUM/MAXIMUM intersected with the grid (so fits never leave it) and a value set outside
   is clamped (constant extrapolation, zero derivative).
2. **Additional parameters** :math:`a_k` add linearly (OGIP/92-009):
   :math:`S = S_\mathrm{INTPSPEC} + \sum_k a_k S_{\mathrm{ADDSP}k}`, every spectrum
   interpolated as in 1.
3. **Redshift** (REDSHIFT = T: a parameter ``z``, XSPEC's default 0 in [0, 5], frozen): the
   table's energies are observed at :math:`E/(1+z)`, and an additive table's photon flux is
   divided by :math:`1+z` (time dilation).  heasp divides every table type by :math:`1+z`;
   for ``mtable``/``etable`` that would scale a transmission (exp(-tau) / tau) by
   :math:`1/(1+z)`, which we take for a slip and do not copy: their factor is only shifted.
4. **Rebinning** onto the requested bins :math:`[e_{lo}, e_{hi}]`: table bin :math:`k`
   (:math:`[T_k, T_{k+1}]`) contributes with the fraction
   :math:`w_k = |[e_{lo}, e_{hi}] \cap [T_k, T_{k+1}]| / (T_{k+1} - T_k)` of it that the bin
   covers.

   * ``atable``: :math:`\sum_k w_k S_k` (photons/cm^2/s per table bin spread evenly over the
     bin), times ``norm``;
   * ``mtable``: the :math:`w`-weighted mean :math:`\sum_k w_k S_k / \sum_k w_k` of the
     per-bin factors (XSPEC's ``Rebin::interpolate``: weights are fractions of table bins,
     not keV, so a bin straddling table bins of unequal widths weighs them by fraction);
   * ``etable``: the table holds optical depths :math:`\tau`; the factor is
     :math:`\exp(-\bar\tau)` of the :math:`w`-weighted mean depth (XSPEC; it also sets
     factors with :math:`\bar\tau > 100` to 0, here :math:`e^{-100} \approx 4\times10^{-44}`).

   Outside the tabulated energies the model is 0 (atable) or 1 (mtable, etable), or LOELIMIT
   below and HIELIMIT above when the file gives them.  A bin partly outside is treated as if
   the table continued with bins as wide as its first (last) bin holding that value, which
   keeps the result continuous in :math:`z` and in the bin edges.  Differences from XSPEC,
   which only concern bins overlapping the table's ends: XSPEC gives a bin straddling the
   *lowest* table energy the outside value alone (its ``findFirstBins`` skips it) and weighs
   a bin straddling the highest energy by its inside part only; and with a non-zero
   LOELIMIT/HIELIMIT an ``atable`` gives every outside bin that value per bin whatever its
   width, here that value per table-edge-bin width (the same when the widths agree).

The bin sums add whole table bins with a segment sum, never as differences of a cumulative
sum, so a faint bin keeps full relative precision next to a bright part of the spectrum.
The requested bins must be increasing and must not overlap (as response grids are).

**Memory.**  The table's arrays (spectra of shape ``(n_1, ..., n_N, 1 + n_add, n_E)`` and its
energies) are closed over by the component's function and enter every traced computation as
constants: a fit holds them once per compiled function, and they are embedded in the
exported fits of the persistent cache (:mod:`bkgjax.fit.export_cache`).  A table of
hundreds of MB (large XSTAR grids) makes compilations slow and the cache large; cut such a
table to the parameter and energy ranges used first.  Spectra stored as float32 are kept in
float32 (the interpolation output is float64).

**Compiled fits and the file's content.**  A component registered from a file has the
version (:attr:`ComponentSpec.version <bkgjax.spectral.components.ComponentSpec>`) derived
from the SHA-256 of the file's bytes and the table type, not a per-process serial number: a
changed file gives a new version, so a compiled fit of the old content is never reused (in
this process or from the persistent export cache), while the same unchanged file in a new
process has the same version and reuses the export cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import keyword
import math
import os
import re
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .components import COMPONENTS, ComponentSpec, ParameterSpec, register_component

__all__ = ["TABLE_KINDS", "table_component", "table_function",
           "table_parameters"]

#: XSPEC's table model components and the kind of component each makes.
TABLE_KINDS = {"atable": "add", "mtable": "mul", "etable": "mul"}
#: Optical depth standing for a factor <= 0 (LOELIMIT/HIELIMIT of an etable): exp(-1000) = 0.
_TAU_OPAQUE = 1000.0
_INF = float("inf")
#: Searches in at most this many sorted values compare all pairs (_search).
_COMPARE_ALL = 64

#: (kind, path, sha256) -> the component function (table_function), the last few kept.
_FUNCTIONS: dict = {}
_FUNCTIONS_KEPT = 8


def _read(path):
    # the file is read by io (io reads, spectral evaluates): the one import of io by spectral,
    # made when an expression names a table (tests/test_architecture.py, CORE_ALLOWED)
    from ..io.table_model import read_table_model

    return read_table_model(path)


def _check_kind(table, kind):
    if kind not in TABLE_KINDS:
        raise ValueError(f"table model kind {kind!r} is not one of {sorted(TABLE_KINDS)}")
    additive = getattr(table, "additive", None)
    if additive is None:
        return
    where = f"{kind}{{{table.path}}}"
    if additive and kind != "atable":
        raise ValueError(f"{where}: the file is an additive table model (ADDMODEL = T): "
                         f"use atable{{...}}")
    if not additive and kind == "atable":
        raise ValueError(f"{where}: the file is a multiplicative table model (ADDMODEL = F): "
                         "use mtable{...} (a factor per bin) or etable{...} (exp(-value))")


def _identifier(text, number):
    """``text`` as a parameter/component name: letters, digits and '_', not starting with a
    digit, not a Python keyword."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text.strip()).strip("_") or f"par{number}"
    if name[0].isdigit():
        name = f"p{name}"
    return f"{name}_" if keyword.iskeyword(name) else name


def table_parameters(table, kind: str) -> tuple:
    """The :class:`~bkgjax.spectral.components.ParameterSpec` of a table's component: its
    interpolated and additional parameters in the file's order, then ``z`` (REDSHIFT = T)
    and ``norm`` (atable).

    Names are the file's NAME made valid identifiers (a :class:`UserWarning` names each one
    changed, and ``_2``, ``_3`` ... tell apart names that then clash).  Values start at
    INITIAL, DELTA < 0 freezes.  Limits: MINIMUM/MAXIMUM (XSPEC's hard limits), for an
    interpolated parameter intersected with its tabulated range (a parameter with a single
    tabulated value changes nothing and is frozen); INITIAL is clipped into the limits.
    BOTTOM/TOP, XSPEC's soft limits (where its fits stop), are not used: a bkgjax parameter has
    one pair of limits, and XSPEC's own hard limits are the closer match to what fits may
    reach (the table's :class:`~bkgjax.io.TableParameter` keeps them).
    """
    _check_kind(table, kind)
    reserved = {"z", "norm"} if kind == "atable" else ({"z"} if table.redshift else set())
    taken = set(reserved)
    specs = []
    for number, p in enumerate(table.parameters, start=1):
        name = _identifier(p.name, number)
        base, k = name, 2
        while name.lower() in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name.lower())
        if name != p.name:
            warnings.warn(f"{table.path}: table parameter {number} NAME {p.name!r} is used as "
                          f"{name!r} (parameter names are ASCII letters, digits and '_', "
                          "unique)", UserWarning, stacklevel=3)
        frozen = p.frozen
        if p.interpolated:
            first, last = float(p.values[0]), float(p.values[-1])
            lo, hi = max(p.minimum, first), min(p.maximum, last)
            if not lo < hi:
                lo, hi = first, last
            if not lo < hi:  # one tabulated value: nothing to interpolate
                half = max(1.0, abs(first))
                lo, hi, frozen = first - half, first + half, True
        else:
            lo, hi = p.minimum, p.maximum
            if not lo < hi:
                lo, hi = -_INF, _INF
        value = min(max(p.initial, lo), hi)
        specs.append(ParameterSpec(name, value, "", lo, hi, frozen=frozen))
    if table.redshift:
        specs.append(ParameterSpec("z", 0.0, "", 0.0, 5.0, frozen=True))
    if kind == "atable":
        specs.append(ParameterSpec("norm", 1.0, "", 0.0, 1e24))
    return tuple(specs)


def _outside_values(table, kind):
    """(below, above) the tabulated energies: LOELIMIT/HIELIMIT, else 0 (atable) or 1; for an
    etable as optical depths -ln(value)."""
    default = 0.0 if kind == "atable" else 1.0
    values = [default if v is None else float(v) for v in (table.low_limit, table.high_limit)]
    if kind == "etable":
        values = [-math.log(v) if v > 0 else _TAU_OPAQUE for v in values]
    return values


def _search(sorted_array, values, side):
    """``jnp.searchsorted``: comparing every pair for a parameter's grid (no loop, faster to
    compile), a binary search for energies (faster to run: 0.06 ms instead of 0.23 ms for
    893 bins and 161 table energies, measured)."""
    small = sorted_array.shape[0] <= _COMPARE_ALL
    return jnp.searchsorted(sorted_array, values, side=side,
                            method="compare_all" if small else "scan")


def _bin_sums(values, edges, lo, hi):
    r"""``(sum, weight)``: :math:`\sum_k w_{ik} v_k` and :math:`\sum_k w_{ik}` with
    :math:`w_{ik} = |[lo_i, hi_i] \cap [T_k, T_{k+1}]| / (T_{k+1} - T_k)`, for increasing,
    non-overlapping bins (``lo``, ``hi`` in the table's frame).  The partly covered first and
    last table bins of each output bin are weighted; the table bins wholly inside are added
    by a segment sum (no differences of a cumulative sum, which would lose the precision of
    faint bins next to bright ones) and counted (weight 1 each)."""
    n, m = lo.shape[0], values.shape[-1]
    width = edges[1:] - edges[:-1]
    c_lo = jnp.clip(lo, edges[0], edges[-1])
    c_hi = jnp.clip(hi, edges[0], edges[-1])
    # k_lo: table bin holding c_lo (T_k <= c_lo < T_k+1); k_hi: the one holding c_hi from the
    # left (T_k < c_hi <= T_k+1), so that a bin ending on a table edge ends in the bin below
    k_lo = jnp.clip(_search(edges, c_lo, "right") - 1, 0, m - 1)
    k_hi = jnp.clip(_search(edges, c_hi, "left") - 1, 0, m - 1)
    first = (jnp.minimum(c_hi, edges[k_lo + 1]) - c_lo) / width[k_lo]
    last = jnp.where(k_hi > k_lo, (c_hi - edges[k_hi]) / width[k_hi], 0.0)
    # table bin k lies wholly in output bin i when k_lo[i] < k < k_hi[i]; i is the last output
    # bin with k_lo < k (k_lo is non-decreasing): a running maximum of i placed at k_lo[i] + 1
    table_bin = jnp.arange(m)
    owner = jax.lax.cummax(jnp.full(m + 1, -1).at[k_lo + 1].max(jnp.arange(n)))[:m]
    owner_safe = jnp.clip(owner, 0, n - 1)
    whole = (owner >= 0) & (table_bin < k_hi[owner_safe])
    middle = jax.ops.segment_sum(jnp.where(whole, values, 0.0), jnp.where(whole, owner_safe, n),
                                 num_segments=n + 1)[:n]
    total = values[k_lo] * first + middle + values[k_hi] * last
    weight = first + last + jnp.maximum(k_hi - k_lo - 1, 0)
    return total, weight


def table_function(table, kind: str) -> Callable:
    """The pure JAX function ``f(e_lo, e_hi, *params)`` of a table model (module docstring),
    parameters in the order of :func:`table_parameters`.

    ``atable`` returns photons/cm^2/s per bin, ``mtable``/``etable`` the factor per bin.
    ``e_lo``, ``e_hi``: increasing, non-overlapping bins in keV.  The same file content, path
    and kind give the same function object (its eager compilations are kept; the last
    :data:`_FUNCTIONS_KEPT` are remembered).
    """
    _check_kind(table, kind)
    key = (kind, table.path, table.sha256)
    if key not in _FUNCTIONS:
        if len(_FUNCTIONS) >= _FUNCTIONS_KEPT:
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        _FUNCTIONS[key] = _make_function(table, kind)
    return _FUNCTIONS[key]


def _make_function(table, kind):
    n_int, n_add = table.n_interpolated, table.n_additional
    grids = []  # (grid in the interpolation coordinate, first value, last value, logarithmic)
    for p in table.interpolated:
        log = p.method == 1
        coordinate = np.log(p.values) if log else np.asarray(p.values, dtype=np.float64)
        grids.append((jnp.asarray(coordinate), float(p.values[0]), float(p.values[-1]), log))
    spectra = jnp.asarray(table.spectra)
    edges_np = np.asarray(table.energy_edges, dtype=np.float64)
    edges = jnp.asarray(edges_np)
    first_width, last_width = edges_np[1] - edges_np[0], edges_np[-1] - edges_np[-2]
    below_value, above_value = _outside_values(table, kind)
    redshift, additive, exponential = table.redshift, kind == "atable", kind == "etable"

    def evaluate(e_lo, e_hi, params):
        values = spectra
        for j, (grid, first, last, log) in enumerate(grids):
            if grid.shape[0] == 1:  # a single tabulated value
                values = values[0]
                continue
            p = jnp.clip(params[j], first, last)
            x = jnp.log(p) if log else p
            i = jnp.clip(_search(grid, x, "right") - 1, 0, grid.shape[0] - 2)
            frac = (x - grid[i]) / (grid[i + 1] - grid[i])
            values = (1.0 - frac) * jnp.take(values, i, axis=0) \
                + frac * jnp.take(values, i + 1, axis=0)
        values = jnp.asarray(values, dtype=jnp.result_type(float))
        spectrum = values[0]
        for k in range(n_add):
            spectrum = spectrum + params[n_int + k] * values[1 + k]
        e_lo = jnp.asarray(e_lo)
        e_hi = jnp.asarray(e_hi)
        if redshift:  # observed E is emitted at E (1 + z): work in the table's frame
            stretch = 1.0 + params[n_int + n_add]
            e_lo, e_hi = e_lo * stretch, e_hi * stretch
        inside, weight = _bin_sums(spectrum, edges, e_lo, e_hi)
        below = jnp.clip(jnp.minimum(e_hi, edges[0]) - e_lo, 0.0, None) / first_width
        above = jnp.clip(e_hi - jnp.maximum(e_lo, edges[-1]), 0.0, None) / last_width
        total = inside + below_value * below + above_value * above
        if additive:
            out = params[-1] * total
            return out / stretch if redshift else out
        weight = weight + below + above
        empty = weight <= 0  # only for a bin of zero width
        mean = jnp.where(empty, below_value, total / jnp.where(empty, 1.0, weight))
        return jnp.exp(-mean) if exponential else mean

    # one compilation per shape when called eagerly (trial evaluation, Model.evaluate) instead
    # of one per operation; inlined as a nested call when traced inside a fit
    evaluate_compiled = jax.jit(evaluate)

    def table_model(e_lo, e_hi, *params):
        """XSPEC table model (bkgjax.spectral.table_model): grid interpolation, additional
        parameters, redshift and rebinning onto [e_lo, e_hi] keV."""
        return evaluate_compiled(e_lo, e_hi, params)

    return table_model


def _content_version(table, kind) -> int:
    """Version of the component: from the file's SHA-256 and the table type (reproducible
    across processes), >= 2**56 so that it never equals a registration serial number."""
    digest = hashlib.sha256(f"{kind}:{table.sha256}".encode()).digest()
    return int.from_bytes(digest[:7], "big") | (1 << 56)


def _registered_table(kind, path):
    for name, spec in COMPONENTS.items():
        marker = getattr(spec.function, "__bkgjax_table__", None)
        if marker is not None and marker[:2] == (kind, path):
            return name
    return None


def _free_name(path):
    stem = os.path.basename(path)
    for suffix in (".gz", ".fits", ".fit", ".fts", ".mod", ".tmod"):
        if stem.lower().endswith(suffix):
            stem = stem[:-len(suffix)]
    base = _identifier(stem, 1)
    if base[0] == "_":
        base = f"table{base}"
    taken = {n.lower() for n in COMPONENTS}
    name, k = base, 2
    while name.lower() in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def table_component(kind: str, source, *, name: str | None = None) -> ComponentSpec:
    """Register (or reuse) the component of an XSPEC table model, as ``atable{file}``,
    ``mtable{file}``, ``etable{file}`` in a model expression do.

    Parameters
    ----------
    kind : {"atable", "mtable", "etable"}
        Additive table (photons/cm^2/s per bin, with a ``norm``), multiplicative table (a
        factor per bin) or exponential table (``exp(-value)``, absorption depths).
    source : str, os.PathLike or TableModel
        The file (``~`` expanded, relative to the working directory) or what
        :func:`bkgjax.io.read_table_model` read from it.
    name : str, optional
        Component name; default: the file's name without its extension, made a valid name,
        with ``_2``, ``_3`` ... when another component has it.

    Returns
    -------
    ComponentSpec
        The registered component.  The same file with the same content and kind gives the
        same component (not registered again); a file whose content changed replaces it under
        the same name with a new version (models built before then evaluate the new content).

    Raises
    ------
    ValueError
        An unknown kind, a kind not matching the file's ADDMODEL, or a registration error
        (:func:`~bkgjax.spectral.components.register_component`: e.g. ``name`` taken).
    bkgjax.io.BkgjaxIOError
        The file cannot be read (:func:`bkgjax.io.read_table_model`).
    """
    kind = kind.lower() if isinstance(kind, str) else kind
    if kind not in TABLE_KINDS:
        raise ValueError(f"table model kind {kind!r} is not one of {sorted(TABLE_KINDS)}")
    table = source if hasattr(source, "spectra") else _read(source)
    _check_kind(table, kind)
    version = _content_version(table, kind)
    existing = _registered_table(kind, table.path)
    if existing is not None and name is not None and existing != name:
        existing = None  # the same file under another, explicit name
    if existing is not None and COMPONENTS[existing].version == version:
        return COMPONENTS[existing]
    target = existing or name or _free_name(table.path)
    function = table_function(table, kind)
    function.__bkgjax_table__ = (kind, table.path, table.sha256)  # what _registered_table finds
    label = table.model_name or os.path.basename(table.path)
    description = (f"{kind}{{{os.path.basename(table.path)}}}: XSPEC table model {label!r} "
                   f"({table.n_interpolated} interpolated, {table.n_additional} additional "
                   "parameters)")
    spec = register_component(target, function, TABLE_KINDS[kind],
                              table_parameters(table, kind), description,
                              replace=existing is not None)
    # the content's version instead of the registration serial (module docstring)
    spec = dataclasses.replace(spec, version=version)
    COMPONENTS[target] = spec
    return spec
