r"""Model library: convolution components (XSPEC names, parameters and units).

A convolution component acts on the per-bin values of the expression it is applied to,
``cflux(phabs*powerlaw)`` (XSPEC also writes ``cflux*phabs*powerlaw``: a convolution followed
by ``*`` acts on the rest of its product term, see :func:`bkgjax.spectral.parse_expression`).
All of them work on the model's own energy grid, like XSPEC's (HEASoft ``XSFunctions``
``cflux.cxx``, ``cpflux.cxx``, ``zashift.cxx``, ``zmshift.cxx``):

``cflux`` (Emin keV, Emax keV, lg10Flux log10 erg/cm^2/s)
    Rescales an additive expression so that its energy flux in [Emin, Emax] is
    :math:`10^{\mathrm{lg10Flux}}` erg/cm^2/s.
``cpflux`` (Emin keV, Emax keV, Flux photons/cm^2/s)
    The same for the photon flux.

    The band flux is XSPEC's ``integrationKernel``: each bin's photon flux is spread evenly
    over the bin, so a bin inside the band counts fully, a bin cut by Emin or Emax counts for
    the fraction of its width inside the band, and its energy flux is the photon flux of that
    part times the mean energy of the part, :math:`(l + u)/2` (the arithmetic centre of a
    whole bin).  keV -> erg uses :data:`bkgjax.spectral.KEV_TO_ERG` (1.602176634e-9, the exact
    SI value), as bkgjax's flux functions do; XSPEC 12.9 used 1.602192e-9, 1e-5 larger
    (lg10Flux differs by 4e-6).  The flux is that of the grid: the grid must cover the band
    (XSPEC: "It is important to ensure that the energy range over which the model is
    calculated ... covers the energy range for which the flux is calculated").

    No band flux (a band outside the grid, Emin >= Emax, or an expression whose flux in the
    band is zero or negative) gives 0 in every bin, where XSPEC divides by zero: a finite model
    that predicts no counts, which a fit then reports through its statistic.

    The expression's overall normalisation is degenerate with lg10Flux (Flux): freeze it (one
    ``norm`` of the expression, as XSPEC's manual says).  :func:`free_flux_normalisations` finds
    the cases where nothing is frozen; :func:`bkgjax.fit.fit` refuses them with a message that
    names the parameter to freeze.
``zashift`` (Redshift)
    Redshifts an additive expression: the expression's values are taken as rest-frame bins,
    moved to observed energies :math:`E/(1+z)`, rebinned onto the grid with a flat density
    within each rest-frame bin, and divided by :math:`1+z` (time dilation).  Observed bin
    :math:`[a, b]` gets the flux of the rest-frame interval :math:`[(1+z)a, (1+z)b]`.
``zmshift`` (Redshift)
    Redshifts a multiplicative expression: the factor of observed bin :math:`[a, b]` is the
    average of the expression's factors over :math:`[(1+z)a, (1+z)b]`, each rest-frame bin
    weighted by the fraction of it inside (XSPEC's ``Rebin::interpolate``).

Edge effects of the shifts (as in XSPEC): the expression is known only on the grid, so an
observed bin whose rest-frame interval leaves the grid gets only the part inside: for
:math:`z > 0` the bins above :math:`E_{max}/(1+z)` get no flux from ``zashift`` (and a partial
one at the boundary), and ``zmshift`` gives them a factor 0 where nothing of the interval
is on the grid (the average of the part inside where some is); for :math:`z < 0` the same
happens below :math:`E_{min}/(1+z)`.  XSPEC's manual asks to extend the grid to
:math:`(1+z)E_{max}` (``energies extend``); in bkgjax evaluate the model on a grid that covers
the shifted range and fold only its response part.  (XSPEC's ``findFirstBins`` also drops an
observed bin only partly above the grid's low end; here it gets its partial share.)
"""

from __future__ import annotations

import jax.numpy as jnp

from .components import COMPONENTS, ComponentSpec, ParameterSpec
from .flux import KEV_TO_ERG

__all__ = ["SPECS", "FLUX_NORMALISING", "free_flux_normalisations"]


def _band_part(e_lo, e_hi, Emin, Emax):
    """Edges ``(lower, upper)`` of the part of each bin inside [Emin, Emax]
    (``lower == upper`` for a bin outside the band, and everywhere when Emin >= Emax)."""
    lower = jnp.clip(Emin, e_lo, e_hi)
    upper = jnp.clip(Emax, e_lo, e_hi)
    return lower, jnp.maximum(upper, lower)


def _rescaled(flux, band_flux, target):
    """``flux * target / band_flux``; 0 where the band flux is not positive (double where: the
    gradient is finite there too)."""
    positive = band_flux > 0
    return flux * jnp.where(positive, target / jnp.where(positive, band_flux, 1.0), 0.0)


def _cflux(e_lo, e_hi, flux, Emin, Emax, lg10Flux):
    r"""XSPEC ``cflux``: the expression scaled to an energy flux of :math:`10^{lg10Flux}`
    erg/cm^2/s in [Emin, Emax] keV; the band flux of bin :math:`i` (part :math:`[l, u]` in the
    band) is :math:`F_i\,(u^2 - l^2)/(2(e_{hi}-e_{lo}))` keV/cm^2/s (flat photon density in a
    bin, XSPEC's ``integrationKernel``); 0 everywhere when the band flux is not positive."""
    lower, upper = _band_part(e_lo, e_hi, Emin, Emax)
    energy = flux * (upper - lower) * (0.5 * (upper + lower)) / (e_hi - e_lo)
    band = jnp.sum(energy, axis=-1, keepdims=True) * KEV_TO_ERG
    return _rescaled(flux, band, 10.0 ** lg10Flux)


def _cpflux(e_lo, e_hi, flux, Emin, Emax, Flux):
    r"""XSPEC ``cpflux``: the expression scaled to a photon flux of Flux photons/cm^2/s in
    [Emin, Emax] keV; bin :math:`i` counts for :math:`F_i\,(u - l)/(e_{hi}-e_{lo})`
    (:func:`_cflux`); 0 everywhere when the band flux is not positive."""
    lower, upper = _band_part(e_lo, e_hi, Emin, Emax)
    band = jnp.sum(flux * (upper - lower) / (e_hi - e_lo), axis=-1, keepdims=True)
    return _rescaled(flux, band, Flux)


def _rest_frame_rebin(e_lo, e_hi, values, stretch):
    r""":math:`\sum_i v_i\,|[e_{lo,i}, e_{hi,i}] \cap [s\,a_j, s\,b_j]| / (e_{hi,i}-e_{lo,i})`
    for each bin :math:`[a_j, b_j]` of the (increasing, possibly gapped) grid: the values of
    the bins spread evenly over them, collected over the interval stretched by
    :math:`s = 1+z`.

    Each output is the partial first bin, the whole bins in between and the partial last bin,
    each term >= 0 for values >= 0.  The whole bins are a difference of prefix sums or of
    suffix sums, whichever is smaller (its rounding is relative to that sum), so a bin far down
    a steep spectrum keeps its relative precision."""
    n = values.shape[-1]
    width = e_hi - e_lo

    def locate(q):
        """Bin holding each energy q (clipped to the grid) and the fraction of it below q."""
        i = jnp.clip(jnp.searchsorted(e_lo, q, side="right") - 1, 0, n - 1)
        return i, jnp.clip((q - e_lo[i]) / width[i], 0.0, 1.0)

    i_lo, f_lo = locate(e_lo * stretch)
    i_hi, f_hi = locate(e_hi * stretch)
    zero = jnp.zeros(values.shape[:-1] + (1,), values.dtype)
    prefix = jnp.concatenate([zero, jnp.cumsum(values, axis=-1)], axis=-1)  # sum of v[:k]
    suffix = jnp.concatenate([jnp.cumsum(values[..., ::-1], axis=-1)[..., ::-1], zero],
                             axis=-1)  # sum of v[k:]
    first, last = i_lo + 1, jnp.maximum(i_hi, i_lo + 1)  # whole bins first .. last - 1
    middle = jnp.where(prefix[..., last] <= suffix[..., first],
                       prefix[..., last] - prefix[..., first],
                       suffix[..., first] - suffix[..., last])
    within_one = (f_hi - f_lo) * values[..., i_lo]
    across = (1.0 - f_lo) * values[..., i_lo] + middle + f_hi * values[..., i_hi]
    return jnp.where(i_lo == i_hi, within_one, across)


def _zashift(e_lo, e_hi, flux, Redshift):
    r"""XSPEC ``zashift``: observed bin :math:`[a, b]` gets the expression's flux in the
    rest-frame interval :math:`[(1+z)a, (1+z)b]` (flat density within each bin) divided by
    :math:`1+z`; bins whose interval leaves the grid get only the part on it (module
    docstring)."""
    stretch = 1.0 + Redshift
    return _rest_frame_rebin(e_lo, e_hi, flux, stretch) / stretch


def _zmshift(e_lo, e_hi, flux, Redshift):
    r"""XSPEC ``zmshift``: the factor of observed bin :math:`[a, b]` is the average of the
    expression's factors over :math:`[(1+z)a, (1+z)b]`, each bin weighted by the fraction of it
    inside; 0 for a bin whose interval is entirely off the grid (module docstring)."""
    stretch = 1.0 + Redshift
    covered = _rest_frame_rebin(e_lo, e_hi, jnp.ones_like(flux), stretch)
    total = _rest_frame_rebin(e_lo, e_hi, flux, stretch)
    on_grid = covered > 0
    return jnp.where(on_grid, total / jnp.where(on_grid, covered, 1.0), 0.0)


def _band_limits():
    # XSPEC model.dat: Emin 0.5, Emax 10 keV, hard limits 0 .. 1e6, frozen (delta -0.1)
    return (ParameterSpec("Emin", 0.5, "keV", 0.0, 1e6, frozen=True),
            ParameterSpec("Emax", 10.0, "keV", 0.0, 1e6, frozen=True))


def _redshift():
    # XSPEC model.dat: Redshift 0, hard limits -0.999 .. 10, frozen
    return (ParameterSpec("Redshift", 0.0, "", -0.999, 10.0, frozen=True),)


SPECS: tuple = (
    ComponentSpec("cflux", "con",
                  _band_limits() + (ParameterSpec("lg10Flux", -12.0, "dex(erg/cm^2/s)",
                                                  -100.0, 100.0),),
                  _cflux, "energy flux in Emin..Emax as a parameter (freeze the norm inside)"),
    ComponentSpec("cpflux", "con",
                  _band_limits() + (ParameterSpec("Flux", 1.0, "photons/cm^2/s", 0.0, 1e10),),
                  _cpflux, "photon flux in Emin..Emax as a parameter (freeze the norm inside)"),
    ComponentSpec("zashift", "con", _redshift(), _zashift,
                  "redshift an additive expression (E/(1+z), flux/(1+z))"),
    ComponentSpec("zmshift", "con", _redshift(), _zmshift,
                  "redshift a multiplicative expression (E/(1+z))"),
)

#: Convolution components that set the flux of the expression they act on: its overall
#: normalisation must not be free as well (:func:`free_flux_normalisations`).
FLUX_NORMALISING = frozenset({"cflux", "cpflux"})


def free_flux_normalisations(expr, parameters, prefix: str = "") -> list:
    """Flux-setting convolutions (:data:`FLUX_NORMALISING`) in ``expr`` whose expression's
    normalisation is free as well, so that the flux parameter and the normalisation are
    degenerate (the fit has no unique minimum).

    ``expr`` is a model expression tree (:attr:`bkgjax.spectral.Model.expr`), ``parameters``
    maps qualified names (``prefix`` + ``"powerlaw.norm"``) to objects with ``frozen`` and
    ``link`` (:class:`~bkgjax.spectral.Parameter`; a name missing from it counts as free when
    a copy ``name@k`` is free, as in joint fits).  The normalisation is free when the
    expression has a free ``constant`` factor on its whole, or when every additive component
    in it has a ``norm`` and each is free (or linked to a free ``norm`` inside it): one common
    scale then changes nothing.  Returns ``[(component name, its label, [free parameter
    names]), ...]``.
    """
    found = []

    def state(name):
        """"free", "frozen" or ("link", target) of a qualified name."""
        p = parameters.get(name)
        if p is None:
            copies = [q for key, q in parameters.items() if key.startswith(name + "@")]
            return "free" if any(not q.frozen and q.link is None for q in copies) else "frozen"
        if p.link is not None:
            return ("link", p.link)
        return "frozen" if p.frozen else "free"

    def exists(name):
        return name in parameters or any(key.startswith(name + "@") for key in parameters)

    def additive_labels(node):
        if node[0] == "comp":
            spec = COMPONENTS.get(node[1])
            return [node[2]] if spec is not None and spec.kind == "add" else []
        if node[0] == "conv":
            return additive_labels(node[2])
        return additive_labels(node[1]) + additive_labels(node[2])

    def top_factors(node):
        return top_factors(node[1]) + top_factors(node[2]) if node[0] == "*" else [node]

    def walk(node):
        if node[0] == "comp":
            return
        if node[0] == "conv":
            comp, argument = node[1], node[2]
            if comp[1] in FLUX_NORMALISING:
                check(comp[1], comp[2], argument)
            walk(argument)
            return
        walk(node[1])
        walk(node[2])

    def check(name, label, argument):
        constants = [f"{prefix}{f[2]}.factor" for f in top_factors(argument)
                     if f[0] == "comp" and f[1] == "constant"
                     and state(f"{prefix}{f[2]}.factor") == "free"]
        if constants:
            found.append((name, label, constants))
            return
        norms = [f"{prefix}{lab}.norm" for lab in additive_labels(argument)]
        inside = set(norms)
        if not norms or not all(exists(name) for name in norms):
            return  # an additive component without a norm: no common scale to detect

        def free_inside(name, seen=()):
            s = state(name)
            if s == "free":
                return True
            if s == "frozen" or name in seen:
                return False
            return s[1] in inside and free_inside(s[1], seen + (name,))

        if all(free_inside(name) for name in norms):
            found.append((name, label, norms))

    walk(expr)
    return found

