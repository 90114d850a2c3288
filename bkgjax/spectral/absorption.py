r"""Model library: photoelectric absorption and Compton scattering (XSPEC names, parameters,
units and limits from XSPEC's ``model.dat``).

Multiplicative components returning, per bin, the *bin average* of the transmission (XSPEC 12
convention), :math:`\frac{1}{e_{hi}-e_{lo}}\int_{e_{lo}}^{e_{hi}} M(E)\,dE`:

=========  ==================================================================================
wabs       :math:`e^{-n_H\sigma(E)}`, Morrison & McCammon (1983, ApJ 270, 119) cross-sections
           and their fixed abundances (the ``abund``/``xsect`` options are accepted and ignored)
phabs      :math:`e^{-n_H\sigma(E)}`, photoelectric cross-sections for the ``abund`` table
tbabs      :math:`e^{-n_H\sigma(E)}`, Tuebingen-Boulder ISM absorption (Wilms, Allen & McCray
           2000, ApJ 542, 914: gas, molecules and grains) for the ``abund`` table
zwabs,     the same with :math:`\sigma(E(1+z))`: absorber at redshift ``Redshift``
zphabs,
ztbabs
pcfabs     :math:`f\,e^{-n_H\sigma(E)} + 1 - f`, phabs cross-sections, ``CvrFract`` f (XSPEC's
           ``xsabsp`` calls ``xsphab``)
tbpcf      :math:`f\,e^{-n_H\sigma(E(1+z))} + 1 - f`, tbabs cross-sections, ``pcf`` f
cabs       :math:`e^{-1.21\,n_H\,\sigma_T\,\mathrm{KN}(E)}`: Compton scattering off 1.21
           electrons per H atom, Thomson cross-section :math:`\sigma_T = 6.65\times10^{-25}`
           cm^2 times the Klein-Nishina ratio :math:`\mathrm{KN}(E) = \sigma_{KN}/\sigma_T`
           (no energy shift of the scattered photons), as XSPEC's ``xscabs.f``
=========  ==================================================================================

``nH`` is in units of :math:`10^{22}` atoms cm^-2 (hard limits 0 to 1e6), ``Redshift`` in
[-0.999, 10] (tbpcf's ``redshift``: [-1, 10]; 1+z is floored at 1e-3), both frozen by default
as in XSPEC.

Cross-sections (data, not code: ``bkgjax/data/xsect/xsect.npz``, README.md there): the
tables of astromodels 2.6.0 (BSD-3), :math:`\sigma` per H atom in 1e-22 cm^2 at 10000
energies from 0.1 to 20 keV (constant step in ln E of 5.3e-4), for phabs (abund ``angr``,
``aspl``), tbabs (``angr``, ``aspl``, ``wilm``) and wabs.  They are read at the first
evaluation (not at import) and kept in a small cache.

**Abundances and cross-section set.**  XSPEC's global ``abund`` and ``xsect`` settings are
model *options* here (:meth:`bkgjax.spectral.Model.with_options`,
``parse_model("tbabs*powerlaw", abund="wilm")``, ``bkgjax fit-spectrum --abund wilm``), never
a module global: ``abund`` is ``"angr"`` (default, Anders & Grevesse 1989), ``"aspl"``
(Asplund et al. 2009) or ``"wilm"`` (Wilms et al. 2000; tbabs only, astromodels ships no
phabs table for it); ``xsect`` is ``"vern"`` (default, Verner et al. 1996), the only set
available.  tbabs, like XSPEC's, does not depend on ``xsect``; wabs depends on neither; cabs
takes no options.  An unavailable value raises ValueError listing what is available.

**Interpolation and extrapolation.**  :math:`\sigma(E)` is linear in E between the tabulated
values, placed on the exact grid the table's float32 energies round (geometric centres of
10000 equal steps in ln E from 0.1 to 20 keV; they agree to 1e-7), so an absorption edge
rises within one table step, 0.05 % of its energy (4 eV at the Fe K edge).  Outside 0.1-20
keV it continues as a power law through the end value with the log-log slope over the last
200 tabulated points (:math:`\approx E^{-2.7}` below, :math:`E^{-2.9}` above, :math:`E^{-3.0}`
for wabs, like MM83's E^-3 continuation above 10 keV), sampled on extra nodes every 0.01 in
ln E (linear in E between them: within 1.5e-4 of the power law) out to 1e-3 and 1e3 keV, and
is constant beyond those (there :math:`n_H\sigma` is either so large that nothing is
transmitted or below 1e-7 per unit nH).  Never NaN or inf for any energy > 0 and nH >= 0.

**Bin integration (exact).**  With :math:`\tau = n_H\sigma` linear on each interval of the
node grid, the mean of :math:`e^{-\tau}` over an interval is
:math:`(e^{-\tau_a} - e^{-\tau_b})/(\tau_b - \tau_a)` in closed form (its series where
:math:`|\tau_b - \tau_a| < 10^{-4}`: no overflow, exact derivatives at nH = 0).  A bin
inside one node interval gets this closed form directly; a longer bin the closed form from
e_lo to the end of its interval, the whole intervals up to e_hi's interval (differences of
cumulative sums over the ~10850 intervals, kept separately for the three pieces of the grid:
low extension, table, high extension) and the closed form from there to e_hi.  So the bin
average of the interpolated transmission is exact to rounding whatever the bin width and
however many edges a bin holds: no quadrature nodes to miss an edge.  The rounding error is
~1e-16 E/dE relative for a bin within one or two node intervals (no cancellation), and
~1e-16 of :math:`\int_{0.1\,keV}^{e_{hi}} e^{-\tau}` otherwise: below 1e-12 of the bin's
value unless the transmission just above an edge is less than ~1e-4 of the transmission just
below it (e.g. nH = 100 at O K, nH >~ 1000 at Fe K), where the bin's value is tiny absolutely
(floored at 0).  The cost is one pass over the node grid per evaluation, independent of the
number of bins (~0.2 ms for 900 bins on a laptop CPU); an energy's interval is found by
arithmetic on ln E, and the cumulative sums are small matrix products (faster to compile
than a cumulative-sum operation).

**Derivatives.**  The transmission depends on one parameter (two with a redshift), while a
fit differentiates the model with respect to all of its parameters (forward mode, twice for
the Hessian: 1 + 2n + n^2 passes over the node grid per component).  Its ``jax.custom_jvp``
computes the derivatives in nH (and 1 + z) once per order instead (one pass each for the
first and 3 for the second order, independent of n), and multiplies them by the tangents;
higher orders and derivatives in the bin edges fall back to plain autodiff.  Derivatives are
exact (tested against autodiff of the plain function and against the analytic
:math:`-\langle\sigma\rangle`, :math:`\langle\sigma^2\rangle` at nH = 0).

cabs, smooth in E, uses 16-point Gauss-Legendre in ln E per bin (exact to ~1e-15 for any
bin narrower than a factor ~10 in energy).  XSPEC evaluates cabs at the bin centre and
phabs/tbabs from its own sampling; bkgjax's bin averages agree with those wherever the
transmission varies little across a bin.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from .components import ComponentSpec, ParameterSpec, integrate_log

__all__ = ["ABUNDANCES", "CROSS_SECTIONS", "SPECS", "cross_section_nodes", "cross_section_table",
           "klein_nishina_ratio", "table_name"]

#: XSPEC ``abund`` tables offered (the first is XSPEC's default).
ABUNDANCES = ("angr", "aspl", "wilm")
#: XSPEC ``xsect`` cross-section sets offered (the first is XSPEC's default).
CROSS_SECTIONS = ("vern",)
#: abundance tables shipped per cross-section family (bkgjax/data/xsect/xsect.npz)
_TABLES = {"phabs": ("angr", "aspl"), "tbabs": ("angr", "aspl", "wilm"), "wabs": ("angr",)}
#: the option names every photoelectric component takes (keyword arguments of its function)
_OPTIONS = ("abund", "xsect")

_EXTEND_LOW_KEV = 1e-3  # extrapolation nodes reach down to here ...
_EXTEND_HIGH_KEV = 1e3  # ... and up to here; sigma is constant beyond
_EXTEND_STEP = 0.01  # step in ln E of the extrapolation nodes
_SLOPE_SPAN = 200  # the end slopes are taken over this many tabulated points


def table_name(family: str, abund: str = "angr", xsect: str = "vern") -> str:
    """Key of the cross-section table of ``family`` ("phabs", "tbabs", "wabs") for the XSPEC
    settings ``abund`` and ``xsect`` (case-insensitive); ValueError naming what is available.
    wabs has fixed Morrison & McCammon abundances and cross-sections: both are only checked."""
    abund_key = str(abund).strip().lower()
    xsect_key = str(xsect).strip().lower()
    if xsect_key not in CROSS_SECTIONS:
        raise ValueError(f"xsect {xsect!r} is not available: bkgjax has the photoelectric "
                         f"cross-sections of xsect {', '.join(repr(x) for x in CROSS_SECTIONS)} "
                         "only (Verner et al. 1996, XSPEC's default)")
    if abund_key not in ABUNDANCES:
        raise ValueError(f"abund {abund!r} is not available; available abundance tables: "
                         f"{', '.join(repr(a) for a in ABUNDANCES)} (XSPEC names)")
    if family == "wabs":
        return "wabs_angr"
    if abund_key not in _TABLES[family]:
        with_it = [name for name, tables in _TABLES.items() if abund_key in tables]
        raise ValueError(f"abund {abund!r} is not available for {family} (cross-section tables "
                         f"shipped: {', '.join(repr(a) for a in _TABLES[family])}); "
                         f"{' and '.join(with_it)} offer{'s' if len(with_it) == 1 else ''} it")
    return f"{family}_{abund_key}"


#: the tabulated energies: geometric centres of 10000 equal steps in ln E from 0.1 to 20 keV
_TABLE_SIZE = 10000
_TABLE_STEP = math.log(200.0) / _TABLE_SIZE


@functools.lru_cache(maxsize=8)
def cross_section_table(name: str) -> tuple:
    """(energy keV, sigma 1e-22 cm^2 per H atom) as tabulated, float64 copies of the float32
    values of ``xsect.npz`` (read once per table and process)."""
    path = resources.files("bkgjax") / "data" / "xsect" / "xsect.npz"
    with resources.as_file(path) as file, np.load(file) as data:
        energy = data["energy"].astype(np.float64)
        sigma = data[name].astype(np.float64)
    for array in (energy, sigma):
        array.flags.writeable = False
    return energy, sigma


def _power_law_nodes(energy_end, sigma_end, slope, stop):
    """Nodes every _EXTEND_STEP in ln E from ``energy_end`` (excluded) until ``stop`` is
    passed, sigma continuing as sigma_end (E/energy_end)^slope."""
    n = math.ceil(abs(math.log(stop / energy_end)) / _EXTEND_STEP)
    log_ratio = math.copysign(_EXTEND_STEP, math.log(stop / energy_end)) * np.arange(1, n + 1)
    return energy_end * np.exp(log_ratio), sigma_end * np.exp(slope * log_ratio)


@functools.lru_cache(maxsize=8)
def _node_grid(name: str) -> tuple:
    """(nodes, sigma, intervals, locator) of table ``name``: the node energies (keV) and
    cross-sections; per node interval k the constant row (start energy, width, sigma at its
    start, sigma at its end); and, for the three pieces of the grid (low extension, table,
    high extension, each uniform in ln E), the ln E of their first nodes, their steps and
    their first intervals, which find an energy's interval arithmetically."""
    energy_tab, sigma = cross_section_table(name)
    # the tabulated energies are (to 1e-7) the geometric centres of 10000 equal ln E steps from
    # 0.1 to 20 keV; the exact grid puts every node at a known place (index = arithmetic)
    energy = 0.1 * np.exp((np.arange(_TABLE_SIZE) + 0.5) * _TABLE_STEP)
    if energy_tab.shape != energy.shape or np.max(np.abs(energy_tab / energy - 1)) > 1e-6:
        raise ValueError(f"cross-section table {name}: its energies are not the expected "
                         "logarithmic grid")
    span = _SLOPE_SPAN
    slope_low = math.log(sigma[span] / sigma[0]) / math.log(energy[span] / energy[0])
    slope_high = math.log(sigma[-1] / sigma[-1 - span]) / math.log(energy[-1] / energy[-1 - span])
    low_e, low_s = _power_law_nodes(energy[0], sigma[0], slope_low, _EXTEND_LOW_KEV)
    high_e, high_s = _power_law_nodes(energy[-1], sigma[-1], slope_high, _EXTEND_HIGH_KEV)
    nodes = np.concatenate([low_e[::-1], energy, high_e])
    values = np.concatenate([low_s[::-1], sigma, high_s])
    intervals = np.stack([nodes[:-1], np.diff(nodes), values[:-1], values[1:]], axis=1)
    for array in (nodes, values, intervals):
        array.flags.writeable = False
    locator = ((math.log(nodes[0]), math.log(energy[0]), math.log(energy[-1])),
               (_EXTEND_STEP, _TABLE_STEP, _EXTEND_STEP),
               (0, low_e.size, low_e.size + _TABLE_SIZE - 1))
    return nodes, values, intervals, locator


def cross_section_nodes(name: str) -> tuple:
    """The nodes the components interpolate linearly (module docstring) for table ``name``:
    (energy keV, sigma 1e-22 cm^2), float64 read-only arrays of ~10850 nodes from 1e-3 to
    1e3 keV: the tabulated values on the exact logarithmic grid of the table with the
    power-law continuation on both sides."""
    nodes, values, _, _ = _node_grid(name)
    return nodes, values


def _interval_index(energy, locator, n_intervals):
    """Index of the node interval holding ``energy`` (within the nodes), by arithmetic on
    ln E in the piece (low extension, table, high extension) it falls in.  Rounding can put
    an energy within ~1e-16 of a node into the neighbouring interval, where the linear
    sigma continues to it: harmless."""
    starts, steps, firsts = locator
    log_e = jnp.log(energy)
    pieces = [first + jnp.floor((log_e - start) / step)
              for start, step, first in zip(starts, steps, firsts)]
    index = jnp.where(log_e < starts[1], pieces[0], jnp.where(log_e < starts[2], pieces[1],
                                                              pieces[2]))
    return jnp.clip(index, 0, n_intervals - 1).astype(jnp.int32)


_SERIES_BELOW = 1e-4  # |change of optical depth| below which _mean_exp uses its series


def _mean_exp(exp_a, exp_b, change):
    r"""Mean of :math:`e^{-\tau}` over an interval on which :math:`\tau` goes linearly from
    tau_a to tau_b, from ``exp_a`` :math:`= e^{-\tau_a}`, ``exp_b`` and ``change``
    :math:`d = \tau_b - \tau_a`: :math:`(e^{-\tau_a} - e^{-\tau_b})/d`, or its series
    :math:`e^{-\tau_a}(1 - d/2 + d^2/6 - d^3/24)` for :math:`|d| < 10^{-4}` (both accurate
    to 2e-12 relative there; finite derivatives at d = 0, e.g. nH = 0: double where).  Takes
    the exponentials, so each node's is computed once."""
    small = jnp.abs(change) < _SERIES_BELOW
    safe = jnp.where(small, 1.0, change)
    series = exp_a * (1.0 - 0.5 * change * (1.0 - change / 3.0 * (1.0 - 0.25 * change)))
    return jnp.where(small, series, (exp_a - exp_b) / safe)


def _cumulative_sum(values):
    """``jnp.cumsum`` of a 1-D array by small matrix products: blocks of b ~ n^(1/3) values
    summed with a b x b upper-triangular matrix of ones, then the blocks' totals, then the
    groups' (three levels: ~3 b n additions).  The same sums to rounding; faster to run and
    several times faster to compile than XLA's cumulative sum, which the fits' nested
    derivatives replicate."""
    n = values.shape[0]
    block = 2
    while block**3 < n:
        block += 1
    upper = np.triu(np.ones((block, block)))
    rows = jnp.pad(values, (0, block**3 - n)).reshape(block * block, block) @ upper
    row_totals = rows[:, -1].reshape(block, block)
    groups = row_totals @ upper  # inclusive sums of the row totals within each group
    group_offsets = groups[:, -1] @ np.triu(np.ones((block, block)), 1)  # exclusive
    row_offsets = (groups - row_totals + group_offsets[:, None]).reshape(block * block)
    return (rows + row_offsets[:, None]).reshape(-1)[:n]


def _bin_transmission(e_lo, e_hi, column, table):
    r"""Bin average of :math:`e^{-n_H\sigma(E)}` over [e_lo, e_hi] keV, exact for the
    piecewise-linear :math:`\sigma` of ``cross_section_nodes(table)`` (module docstring)."""
    nodes, values, intervals, locator = _node_grid(table)
    n_intervals = intervals.shape[0]
    # exp(-tau) at every node, the integral over every node interval, their cumulative sums
    # within each of the three pieces of the grid (low extension, table, high extension):
    # never summed across pieces, so the huge sigma^n of the low extension (1e8 at 1e-3 keV)
    # never enter the sums, or their derivatives, of the bins above 0.1 keV
    at_nodes = jnp.exp(-column * values)
    segments = intervals[:, 1] * _mean_exp(at_nodes[:-1], at_nodes[1:],
                                           column * (intervals[:, 3] - intervals[:, 2]))
    bounds = (*locator[2], n_intervals)  # the first interval of each piece, then the end
    within_piece, piece_totals = [], []
    for first, end in zip(bounds[:-1], bounds[1:]):
        sums = _cumulative_sum(segments[first:end])
        within_piece.append(jnp.concatenate([jnp.zeros(1, sums.dtype), sums[:-1]]))
        piece_totals.append(sums[-1])
    # per node: the sum from its piece's first node (a boundary node starts the next piece)
    prefix = jnp.concatenate([*within_piece, piece_totals[-1][None]])
    node_rows = jnp.stack([prefix, at_nodes], axis=-1)  # one gather per bin edge

    def segments_between(a, b, prefix_a, prefix_b):
        """Sum of the segments from node a to node b >= a, from the nodes' within-piece sums
        and the totals of the pieces from a's up to b's (no difference of large sums)."""
        piece_a = sum((a >= first).astype(jnp.int32) for first in bounds[1:-1])
        piece_b = sum((b >= first).astype(jnp.int32) for first in bounds[1:-1])
        whole = sum(jnp.where((piece_a <= piece) & (piece < piece_b), total, 0.0)
                    for piece, total in enumerate(piece_totals[:-1]))
        return (prefix_b - prefix_a) + whole

    def locate(energy):
        """(energy clipped to the nodes, its interval k, the interval's width, the distance
        from its start, sigma there and at the interval's ends, the integral beyond the
        nodes: sigma is constant there; negative below)."""
        inside = jnp.clip(energy, nodes[0], nodes[-1])
        k = _interval_index(inside, locator, n_intervals)
        start, width, sigma_start, sigma_end = jnp.moveaxis(jnp.asarray(intervals)[k], -1, 0)
        step = inside - start
        sigma_at = sigma_start + (sigma_end - sigma_start) * (step / width)
        sigma_out = jnp.where(energy < nodes[0], values[0], values[-1])
        return (inside, k, width, step, sigma_start, sigma_at, sigma_end,
                (energy - inside) * jnp.exp(-column * sigma_out))

    e_lo = jnp.asarray(e_lo)
    e_hi = jnp.asarray(e_hi)
    inside_lo, k_lo, width_lo, step_lo, _, sigma_lo, end_lo, out_lo = locate(e_lo)
    inside_hi, k_hi, _, step_hi, start_hi, sigma_hi, _, out_hi = locate(e_hi)
    exp_lo, exp_hi = jnp.exp(-column * sigma_lo), jnp.exp(-column * sigma_hi)
    prefix_lo, exp_end_lo = jnp.moveaxis(node_rows[k_lo + 1], -1, 0)  # node after e_lo
    prefix_hi, exp_start_hi = jnp.moveaxis(node_rows[k_hi], -1, 0)  # node before e_hi
    # a bin within one node interval: the closed form directly; else e_lo to the end of its
    # interval (closed form), whole intervals up to k_hi (cumulative sums: exactly 0 for
    # adjacent intervals), the start of k_hi to e_hi.  No difference of nearly equal partial
    # integrals, so narrow bins keep full precision.
    within = (inside_hi - inside_lo) * _mean_exp(exp_lo, exp_hi, column * (sigma_hi - sigma_lo))
    rest_lo = (width_lo - step_lo) * _mean_exp(exp_lo, exp_end_lo, column * (end_lo - sigma_lo))
    part_hi = step_hi * _mean_exp(exp_start_hi, exp_hi, column * (sigma_hi - start_hi))
    across = rest_lo + segments_between(k_lo + 1, k_hi, prefix_lo, prefix_hi) + part_hi
    integral = jnp.where(k_hi == k_lo, within, across) + (out_hi - out_lo)
    return jnp.maximum(integral / (e_hi - e_lo), 0.0)  # rounding (module docstring)


def _scalar_derivatives(function, n_scalars, levels):
    """``function(*scalars, *arrays)`` (``n_scalars`` scalar parameters first) with a
    ``jax.custom_jvp`` whose tangent is the Jacobian in the scalars that have tangents (one
    forward pass each, computed once per evaluation) times those tangents.  Autodiff would
    instead push every tangent direction of the caller through the ~10850-node pass: a fit
    differentiates with respect to all its parameters (forward mode over n of them, twice for
    the Hessian: 1 + 2n + n^2 passes), while the transmission depends on one or two (a frozen
    redshift has no tangent: symbolic zero).  The Jacobian is itself such a function for
    ``levels - 1`` more orders (then plain autodiff).  Tangents of the arrays (bin edges:
    data, normally not differentiated, so symbolic zeros) go through plain autodiff."""
    if levels == 0:
        return function

    @functools.lru_cache(maxsize=None)
    def jacobian_in(active):
        """The Jacobian in the scalars ``active`` (a tuple of their positions), (len, ...)."""
        def jacobian(*args):
            scalars, arrays = args[:n_scalars], args[n_scalars:]

            def along(j):
                def of(x):
                    return function(*scalars[:j], x, *scalars[j + 1:], *arrays)

                return jax.jvp(of, (scalars[j],), (jnp.ones_like(scalars[j]),))[1]

            return jnp.stack([along(j) for j in active])

        return _scalar_derivatives(jacobian, n_scalars, levels - 1)

    wrapped = jax.custom_jvp(function)

    def rule(primals, tangents):
        primals = tuple(jnp.asarray(x, dtype=jnp.result_type(float)) for x in primals)
        value = wrapped(*primals)
        tangent = jnp.zeros_like(value)
        active = tuple(j for j, t in enumerate(tangents[:n_scalars])
                       if not isinstance(t, SymbolicZero))
        if active:
            jac = jacobian_in(active)(*primals)
            for row, j in enumerate(active):
                tangent = tangent + jac[row] * tangents[j]
        array_tangents = tangents[n_scalars:]
        if any(not isinstance(t, SymbolicZero) for t in array_tangents):
            arrays = primals[n_scalars:]
            dense = tuple(jnp.zeros_like(a) if isinstance(t, SymbolicZero) else t
                          for a, t in zip(arrays, array_tangents))
            tangent = tangent + jax.jvp(lambda *a: function(*primals[:n_scalars], *a),
                                        arrays, dense)[1]
        return value, tangent

    wrapped.defjvp(rule, symbolic_zeros=True)
    return wrapped


@functools.lru_cache(maxsize=32)
def _transmission_function(table: str, shifted: bool):
    """The bin-averaged transmission of ``table`` as ``f(column, e_lo, e_hi)`` or, for an
    absorber at redshift z, ``f(column, 1 + z, e_lo, e_hi)`` (sigma at E (1+z)), with
    derivatives in the scalars computed once per order (:func:`_scalar_derivatives`, up to
    the Hessian)."""
    if shifted:
        def raw(column, zfac, e_lo, e_hi):
            return _bin_transmission(e_lo * zfac, e_hi * zfac, column, table)
        return _scalar_derivatives(raw, 2, 2)

    def raw(column, e_lo, e_hi):
        return _bin_transmission(e_lo, e_hi, column, table)
    return _scalar_derivatives(raw, 1, 2)


def _transmission(e_lo, e_hi, column, table, redshift=None):
    """Bin-averaged transmission through ``column`` (1e22 cm^-2) of ``table``'s absorber, at
    ``redshift`` if given."""
    e_lo, e_hi = jnp.asarray(e_lo), jnp.asarray(e_hi)
    if redshift is None:
        return _transmission_function(table, False)(column, e_lo, e_hi)
    return _transmission_function(table, True)(column, _redshift_factor(redshift), e_lo, e_hi)


def _redshift_factor(redshift):
    """1 + z, floored at 1e-3 (tbpcf's hard limit z = -1 would put every energy at 0)."""
    zfac = 1.0 + redshift
    return jnp.where(zfac > 1e-3, zfac, 1e-3)


def _covered(fraction, transmission):
    """Partial covering: the fraction ``fraction`` of the source seen through the absorber."""
    return fraction * transmission + (1.0 - fraction)


def _wabs(e_lo, e_hi, nH, *, abund="angr", xsect="vern"):
    r"""XSPEC ``wabs``: :math:`e^{-n_H\sigma_{MM83}(E)}`, bin-averaged (module docstring).
    Morrison & McCammon (1983) fixed abundances and cross-sections: ``abund``/``xsect`` are
    checked but do not change it.  nH in 1e22 atoms/cm^2."""
    return _transmission(e_lo, e_hi, nH, table_name("wabs", abund, xsect))


def _phabs(e_lo, e_hi, nH, *, abund="angr", xsect="vern"):
    r"""XSPEC ``phabs``: :math:`e^{-n_H\sigma(E)}` with the photoelectric cross-sections for
    the ``abund`` table (angr, aspl), bin-averaged.  nH in 1e22 atoms/cm^2."""
    return _transmission(e_lo, e_hi, nH, table_name("phabs", abund, xsect))


def _tbabs(e_lo, e_hi, nH, *, abund="angr", xsect="vern"):
    r"""XSPEC ``tbabs`` (Wilms, Allen & McCray 2000): :math:`e^{-n_H\sigma(E)}` for the
    ``abund`` table (angr, aspl, wilm), bin-averaged.  nH in 1e22 atoms/cm^2."""
    return _transmission(e_lo, e_hi, nH, table_name("tbabs", abund, xsect))


def _zwabs(e_lo, e_hi, nH, Redshift, *, abund="angr", xsect="vern"):
    r"""XSPEC ``zwabs``: wabs of an absorber at redshift z, :math:`e^{-n_H\sigma(E(1+z))}`."""
    return _transmission(e_lo, e_hi, nH, table_name("wabs", abund, xsect), Redshift)


def _zphabs(e_lo, e_hi, nH, Redshift, *, abund="angr", xsect="vern"):
    r"""XSPEC ``zphabs``: phabs of an absorber at redshift z, :math:`e^{-n_H\sigma(E(1+z))}`."""
    return _transmission(e_lo, e_hi, nH, table_name("phabs", abund, xsect), Redshift)


def _ztbabs(e_lo, e_hi, nH, Redshift, *, abund="angr", xsect="vern"):
    r"""XSPEC ``ztbabs``: tbabs of an absorber at redshift z, :math:`e^{-n_H\sigma(E(1+z))}`."""
    return _transmission(e_lo, e_hi, nH, table_name("tbabs", abund, xsect), Redshift)


def _pcfabs(e_lo, e_hi, nH, CvrFract, *, abund="angr", xsect="vern"):
    r"""XSPEC ``pcfabs``: :math:`f e^{-n_H\sigma(E)} + 1 - f`, phabs cross-sections,
    f = CvrFract (the bin average is linear in the transmission)."""
    return _covered(CvrFract, _phabs(e_lo, e_hi, nH, abund=abund, xsect=xsect))


def _tbpcf(e_lo, e_hi, nH, pcf, redshift, *, abund="angr", xsect="vern"):
    r"""XSPEC ``tbpcf``: :math:`f e^{-n_H\sigma(E(1+z))} + 1 - f`, tbabs cross-sections,
    f = pcf."""
    return _covered(pcf, _ztbabs(e_lo, e_hi, nH, redshift, abund=abund, xsect=xsect))


# Klein-Nishina total cross-section in units of the Thomson one, x = E / m_e c^2:
#   (3/4) [ (1+x)/x^3 (2x(1+x)/(1+2x) - ln(1+2x)) + ln(1+2x)/(2x) - (1+3x)/(1+2x)^2 ]
# whose terms cancel to O(1) from O(1/x): below x = 0.02 the Taylor series (exact rational
# coefficients, computed by power-series arithmetic; XSPEC's xscabs.f keeps the first five
# below x = 0.025) is used instead, truncation error ~2000 x^9 < 1e-12 there.
_KN_SERIES = (1.0, -2.0, 26 / 5, -133 / 10, 1144 / 35, -544 / 7, 3784 / 21, -6148 / 15,
              151552 / 165)
_KN_SERIES_BELOW = 0.02
_ELECTRON_REST_KEV = 510.999  # XSPEC's xscabs.f value
_CABS_ELECTRONS_PER_H = 1.21  # XSPEC's xscabs.f: electrons per H atom of cosmic material
_THOMSON_1E22 = 0.665e-2  # sigma_T = 6.65e-25 cm^2 in units of 1e-22 cm^2 (xscabs.f)


def klein_nishina_ratio(energy):
    r""":math:`\sigma_{KN}(E)/\sigma_T` for photons of ``energy`` keV (> 0)."""
    x = energy / _ELECTRON_REST_KEV
    small = x < _KN_SERIES_BELOW
    series = jnp.polyval(jnp.asarray(_KN_SERIES[::-1]), x)
    xs = jnp.where(small, 1.0, x)  # the closed form only where it is accurate
    log_term = jnp.log1p(2.0 * xs)
    one_2x = 1.0 + 2.0 * xs
    closed = 0.75 * ((1.0 + xs) / xs**3 * (2.0 * xs * (1.0 + xs) / one_2x - log_term)
                     + log_term / (2.0 * xs) - (1.0 + 3.0 * xs) / one_2x**2)
    return jnp.where(small, series, closed)


def _cabs(e_lo, e_hi, nH):
    r"""XSPEC ``cabs``: :math:`e^{-1.21\,n_H\,\sigma_T\,\mathrm{KN}(E)}` (Compton
    scattering, no energy shift), averaged over the bin by 16-point Gauss-Legendre in ln E
    (XSPEC takes the value at the bin centre).  nH in 1e22 atoms/cm^2."""
    depth = nH * (_CABS_ELECTRONS_PER_H * _THOMSON_1E22)
    shape = lambda e: jnp.exp(-depth * klein_nishina_ratio(e))  # noqa: E731
    # divided by the same rule's bin width, not e_hi - e_lo: ln(e_hi) - ln(e_lo) of a narrow
    # bin carries a rounding error that then cancels (exactly 1 at nH = 0)
    return integrate_log(shape, e_lo, e_hi) / integrate_log(jnp.ones_like, e_lo, e_hi)


def _column():
    return ParameterSpec("nH", 1.0, "10^22 atoms/cm^2", 0.0, 1e6)


def _redshift(name="Redshift", low=-0.999):
    return ParameterSpec(name, 0.0, "", low, 10.0, frozen=True)


def _spec(name, params, function, description, options=_OPTIONS):
    return ComponentSpec(name, "mul", params, function, description, options=options)


#: The ComponentSpecs of this module, added to :data:`bkgjax.spectral.components.COMPONENTS`.
SPECS: tuple = (
    _spec("wabs", (_column(),), _wabs,
          "photoelectric absorption, Morrison & McCammon (1983) exp(-nH sigma(E))"),
    _spec("phabs", (_column(),), _phabs,
          "photoelectric absorption exp(-nH sigma(E)), abund table (angr, aspl)"),
    _spec("tbabs", (_column(),), _tbabs,
          "Tuebingen-Boulder ISM absorption (Wilms et al. 2000), abund table (angr, aspl, wilm)"),
    _spec("zwabs", (_column(), _redshift()), _zwabs,
          "redshifted wabs exp(-nH sigma(E(1+z)))"),
    _spec("zphabs", (_column(), _redshift()), _zphabs,
          "redshifted phabs exp(-nH sigma(E(1+z)))"),
    _spec("ztbabs", (_column(), _redshift()), _ztbabs,
          "redshifted tbabs exp(-nH sigma(E(1+z)))"),
    _spec("pcfabs", (_column(), ParameterSpec("CvrFract", 0.5, "", 0.0, 1.0)), _pcfabs,
          "partial covering phabs: CvrFract exp(-nH sigma(E)) + 1 - CvrFract"),
    _spec("tbpcf", (_column(), ParameterSpec("pcf", 0.5, "", 0.0, 1.0),
                    _redshift("redshift", -1.0)), _tbpcf,
          "partial covering tbabs: pcf exp(-nH sigma(E(1+z))) + 1 - pcf"),
    _spec("cabs", (_column(),), _cabs,
          "Compton scattering exp(-1.21 nH sigma_T KN(E)) (Klein-Nishina, no energy shift)",
          options=()),
)
