r"""Evaluation of XSPEC ``save model`` files on bin edges (the models read by
:func:`bkgjax.io.read_xspec_model`).

:class:`XspecTermModel` wraps a parsed file (:class:`bkgjax.io.XspecModel`: expression,
parameter lines, links) and gives photons/cm^2/s per bin for keV bin edges.  The expression is
parsed by :func:`bkgjax.spectral.model.parse_expression` (the parser of
:func:`~bkgjax.spectral.model.parse_model`) and expanded into a sum of products with one
additive component each (``constant(a + b) = constant*a + constant*b``); the products are
summed in order, and each additive term is available separately
(:meth:`XspecTermModel.additive_terms`).  The component formulas are those of
:data:`bkgjax.spectral.components.COMPONENTS` (XSPEC definitions; ``fsline`` as in Suzuki et al.
2021 eq. 1 with the Gaussian-tail form of ../shared/data/README.md).

Parameters are numbered ``p1 .. pN`` over all data groups: data group ``g`` holds
``p[(g-1) n + 1] .. p[g n]`` with ``n`` the parameters of the expression.  Links (``= 2*p3``)
are applied at evaluation time, so a value vector may be traced (jit/vmap/grad).

Nothing here reads files; this module imports nothing from :mod:`bkgjax.io`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .components import COMPONENTS
from .model import check_energy_grid, parse_expression

__all__ = [
    "TERM_KINDS",
    "XspecStructure",
    "XspecTermModel",
    "expand_terms",
    "resolve_links",
    "check_bin_edges",
    "evaluate_structure",
    "evaluate_terms",
]

#: additive component -> kind of its additive terms (see XspecTermModel.additive_terms)
TERM_KINDS = {"gaussian": "line", "fsline": "fsline"}


def expand_terms(tree) -> tuple:
    """Expand a :func:`parse_expression` tree into a sum of products with one additive
    component each.

    Returns ``((multiplicative component indices, in expression order...), additive index)``
    per term, in XSPEC's order (left to right).  A purely multiplicative expression raises
    ``ValueError``.
    """

    def expand(node):
        # list of (factors tuple, additive index or None)
        if node[0] == "comp":
            k = node[2]
            return [((), k)] if COMPONENTS[node[1]].kind == "add" else [((k,), None)]
        left, right = expand(node[1]), expand(node[2])
        if node[0] == "+":
            return left + right
        return [(f1 + f2, a1 if a1 is not None else a2) for f1, a1 in left for f2, a2 in right]

    terms = expand(tree)
    if any(a is None for _, a in terms):
        raise ValueError("the model expression has no additive component")
    return tuple((tuple(f), a) for f, a in terms)


# ----------------------------------------------------------------------------------------------
# Static structure: everything evaluation needs except the parameter values (hashable, so it is
# a jax.jit static argument and all files with the same expression and links share one
# compilation).


@dataclass(frozen=True)
class XspecStructure:
    """Value-free, hashable description of an XSPEC model (a ``jax.jit`` static argument)."""

    components: tuple  # component names, in XSPEC order
    offsets: tuple  # offset of each component's first parameter within a group
    n_parameters: int  # per group
    n_groups: int
    terms: tuple  # ((mul component indices...), additive component index) in expansion order
    links: tuple  # ((0-based parameter index, expression tree), ...) in dependency order

    @classmethod
    def from_expression(cls, expression: str, n_groups: int = 1, links: tuple = ()):
        """Structure of ``expression`` with ``n_groups`` data groups and parsed ``links``."""
        tree, components = parse_expression(expression)
        offsets, acc = [], 0
        for c in components:
            offsets.append(acc)
            acc += len(COMPONENTS[c].params)
        return cls(components, tuple(offsets), acc, int(n_groups), expand_terms(tree),
                   tuple(links))


def _eval_link(tree, vals):
    op = tree[0]
    if op == "num":
        return tree[1]
    if op == "p":
        return vals[tree[1]]
    if op == "neg":
        return -_eval_link(tree[1], vals)
    a, b = _eval_link(tree[1], vals), _eval_link(tree[2], vals)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    return a**b  # "**"


def resolve_links(links, values) -> list:
    """All parameter values (list, file order) with ``links`` applied in their order.

    ``links`` is ``((0-based index, tree), ...)`` as parsed by :mod:`bkgjax.io.xspec_model`;
    ``values`` floats or traced scalars (the entries of linked parameters are ignored).
    """
    vals = list(values)
    for index, tree in links:
        vals[index] = _eval_link(tree, vals)
    return vals


def _group_values(structure: XspecStructure, values, group):
    """Resolved parameter values of data group ``group`` (traceable ``group``), shape (n,)."""
    n_total = structure.n_parameters * structure.n_groups
    resolved = resolve_links(structure.links, [values[i] for i in range(n_total)])
    resolved = jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in resolved])
    n = structure.n_parameters
    start = (jnp.asarray(group, dtype=jnp.int32) - 1) * n
    return jax.lax.dynamic_slice(resolved, (start,), (n,))


def _term_stack(structure: XspecStructure, values, group, e_lo, e_hi):
    """(n_terms, nbins) additive terms of the expanded expression, photons/cm^2/s per bin.

    Components of the same type are evaluated together, vmapped over their stacked parameters
    (one traced graph per type instead of one per component: the templates hold up to 31
    gaussians); the terms are then gathered from the additive rows and multiplied by the
    product of their multiplicative rows, all as whole-array operations (slicing every
    component out separately makes XLA's compilation much longer)."""
    gvals = _group_values(structure, values, group)
    by_type = {}
    for k, name in enumerate(structure.components):
        by_type.setdefault(name, []).append(k)
    add_blocks, mul_blocks, row_of = [], [], {}
    n_add = n_mul = 0
    for name, ks in by_type.items():
        spec = COMPONENTS[name]
        columns = [gvals[np.array([structure.offsets[k] + j for k in ks])]
                   for j in range(len(spec.params))]
        stacked = jax.vmap(lambda *args, f=spec.function: f(e_lo, e_hi, *args))(*columns)
        if spec.kind == "add":
            row_of.update({k: n_add + i for i, k in enumerate(ks)})
            add_blocks.append(stacked)
            n_add += len(ks)
        else:
            row_of.update({k: n_mul + i for i, k in enumerate(ks)})
            mul_blocks.append(stacked)
            n_mul += len(ks)
    additive = jnp.concatenate(add_blocks)[np.array([row_of[a] for _, a in structure.terms])]
    n_factors = max(len(f) for f, _ in structure.terms)
    if n_factors == 0:
        return additive
    ones = jnp.ones((1,) + additive.shape[1:], dtype=additive.dtype)
    factors = jnp.concatenate(mul_blocks + [ones])  # row n_mul is the neutral factor 1
    index = np.array([[row_of[k] for k in f] + [n_mul] * (n_factors - len(f))
                      for f, _ in structure.terms])
    return additive * jnp.prod(factors[index], axis=1)


def _fsline_norms(structure: XspecStructure, values, group):
    """Norm of the additive component of each term (fsline terms), NaN for other terms."""
    gvals = _group_values(structure, values, group)
    norm_pos = COMPONENTS["fsline"].param_names.index("norm")
    norms = [gvals[structure.offsets[a] + norm_pos] if structure.components[a] == "fsline"
             else jnp.asarray(jnp.nan, dtype=jnp.float64) for _, a in structure.terms]
    return jnp.stack(norms)


def _sum_in_order(stack):
    # term by term, in expansion order: the same additions as ``sum(additive_terms(...))``
    total = stack[0]
    for i in range(1, stack.shape[0]):
        total = total + stack[i]
    return total


def evaluate_structure(structure: XspecStructure, values, group, e_lo, e_hi):
    """Model spectrum: the sum of the expanded additive terms (pure, traceable)."""
    return _sum_in_order(_term_stack(structure, values, group, e_lo, e_hi))


def evaluate_terms(structure: XspecStructure, values, group, e_lo, e_hi):
    """(n_terms, nbins) stack of the additive terms and the fsline norm of each term."""
    return (_term_stack(structure, values, group, e_lo, e_hi),
            _fsline_norms(structure, values, group))


def _evaluate_all(structure: XspecStructure, values, group, e_lo, e_hi):
    # one compiled function serves __call__ and additive_terms (unused outputs are pruned
    # when the call is traced inside a user's jit)
    stack = _term_stack(structure, values, group, e_lo, e_hi)
    return _sum_in_order(stack), stack, _fsline_norms(structure, values, group)


_evaluate_all_jit = jax.jit(_evaluate_all, static_argnums=(0,))


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_bin_edges(e_lo, e_hi):
    """Validate concrete bin edges (keV) eagerly; traced edges are passed through."""
    if _is_traced(e_lo) or _is_traced(e_hi):
        return jnp.asarray(e_lo), jnp.asarray(e_hi)
    lo, hi = check_energy_grid(e_lo, e_hi, what="XSPEC model energy grid")
    return jnp.asarray(lo), jnp.asarray(hi)


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class XspecTermModel:
    """An XSPEC model file, evaluable on bin edges.

    Build it with :meth:`from_parsed` from :func:`bkgjax.io.read_xspec_model`'s result.

    Attributes
    ----------
    parsed : bkgjax.io.XspecModel
        The file as read (parameter lines as written; linked values not resolved).
    parameters : tuple of XspecParameter
        ``parsed.parameters`` with the value of every linked parameter set to what its link
        resolves to.
    structure : XspecStructure
        Static (value-free, hashable) part used as jit static argument.

    ``path``, ``expression``, ``components``, ``n_parameters``, ``n_groups``, ``header``,
    ``trailer``, ``free_indices``, ``linked_indices`` are those of ``parsed``.

    Evaluation
    ----------
    ``model(e_lo, e_hi, group=1, values=None)`` (also ``model.model(...)``) returns
    photons/cm^2/s per bin.  ``values`` is the vector of **all** parameters of all groups in
    file order (length ``n_groups * n_parameters``, e.g. :attr:`initial_values` modified);
    the entries of linked parameters are ignored and recomputed from their links.  It may be
    a traced array (jit/vmap/grad); :meth:`full_values` builds it from the free parameters.
    """

    parsed: Any
    parameters: tuple
    structure: XspecStructure

    @classmethod
    def from_parsed(cls, parsed) -> "XspecTermModel":
        """Evaluable model of a parsed file (resolves the linked parameters' values).

        Raises
        ------
        ValueError
            A link resolves to NaN or inf (names the file and line).
        """
        vals = [0.0 if p.link is not None else p.value for p in parsed.parameters]
        for index, tree in parsed.links:
            try:
                vals[index] = float(_eval_link(tree, vals))
            except (ZeroDivisionError, OverflowError):
                vals[index] = math.nan
            if not math.isfinite(vals[index]):
                p = parsed.parameters[index]
                raise ValueError(f"{parsed.path}, line {p.line}: link '= {p.link}' evaluates to "
                                 f"{vals[index]}")
        parameters = tuple(p if p.link is None else dataclasses.replace(p, value=vals[i])
                           for i, p in enumerate(parsed.parameters))
        structure = XspecStructure.from_expression(parsed.expression, parsed.n_groups,
                                                   parsed.links)
        if structure.components != tuple(parsed.components):  # pragma: no cover - same parser
            raise ValueError(f"{parsed.path}: components {parsed.components} do not match the "
                             f"expression {parsed.expression!r}")
        return cls(parsed, parameters, structure)

    # -- the file's description ------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.parsed.path

    @property
    def expression(self) -> str:
        return self.parsed.expression

    @property
    def components(self) -> tuple:
        return self.parsed.components

    @property
    def n_parameters(self) -> int:
        return self.parsed.n_parameters

    @property
    def n_groups(self) -> int:
        return self.parsed.n_groups

    @property
    def header(self) -> tuple:
        return self.parsed.header

    @property
    def trailer(self) -> tuple:
        return self.parsed.trailer

    @property
    def free_indices(self) -> tuple:
        """0-based indices (into :attr:`parameters`) of the free parameters."""
        return self.parsed.free_indices

    @property
    def linked_indices(self) -> tuple:
        """0-based indices of the linked parameters."""
        return self.parsed.linked_indices

    # -- parameters --------------------------------------------------------------------------
    @property
    def initial_values(self) -> np.ndarray:
        """All parameter values in file order (links resolved), float64."""
        return np.array([p.value for p in self.parameters], dtype=np.float64)

    def full_values(self, free=None):
        """Vector of all parameter values with the free ones replaced by ``free`` (traceable).

        ``free`` has one entry per :attr:`free_indices`, in that order; ``None`` gives
        :attr:`initial_values`.  Links are applied at evaluation time.
        """
        base = jnp.asarray(self.initial_values)
        if free is None:
            return base
        free = jnp.asarray(free, dtype=jnp.float64)
        if free.shape != (len(self.free_indices),):
            raise ValueError(f"{self.path}: expected {len(self.free_indices)} free parameter "
                             f"values, got shape {free.shape}")
        return base.at[jnp.asarray(self.free_indices, dtype=int)].set(free)

    def values(self, group: int = 1) -> np.ndarray:
        """Parameter values of data group ``group`` (length ``n_parameters``), links resolved."""
        self.parsed._check_group(group)
        start = (group - 1) * self.n_parameters
        return self.initial_values[start:start + self.n_parameters].copy()

    def parameter(self, name: str, group: int = 1):
        """The parameter called ``name`` (e.g. ``"gaussian_2.LineE"``) in data group ``group``,
        linked value resolved."""
        return self.parameters[self.parsed.parameter(name, group).index - 1]

    def _values_vector(self, values):
        if values is None:
            return jnp.asarray(self.initial_values)
        values = jnp.asarray(values, dtype=jnp.float64)
        expected = (self.n_groups * self.n_parameters,)
        if values.shape != expected:
            raise ValueError(f"{self.path}: values must hold all {expected[0]} parameters of "
                             f"all {self.n_groups} group(s) in file order, got shape "
                             f"{values.shape}")
        return values

    # -- evaluation --------------------------------------------------------------------------
    def __call__(self, e_lo, e_hi, group: int = 1, values=None):
        """Model spectrum of data group ``group``: photons/cm^2/s per bin (keV edges).

        One jit-compiled evaluator per expression/link structure and grid shape; repeated
        calls (and other files with the same structure) do not recompile.
        """
        self.parsed._check_group(group)
        e_lo, e_hi = check_bin_edges(e_lo, e_hi)
        return _evaluate_all_jit(self.structure, self._values_vector(values), int(group),
                                 e_lo, e_hi)[0]

    model = __call__  # ``xspec_model.model(e_lo, e_hi)``

    @property
    def term_labels(self) -> tuple:
        """Label of each additive term, e.g. ``"constant_1*gaussian_2"`` (expansion order)."""
        return tuple(
            "*".join(f"{self.components[k]}_{k + 1}" for k in (*factors, additive))
            for factors, additive in self.structure.terms
        )

    @property
    def term_kinds(self) -> tuple:
        """Kind of each additive term: "line" (gaussian), "fsline", or "continuum"."""
        return tuple(TERM_KINDS.get(self.components[additive], "continuum")
                     for _, additive in self.structure.terms)

    def additive_terms(self, e_lo, e_hi, group: int = 1, drop_fsline_norm_above=None,
                       values=None):
        """The additive terms of the expanded expression, multiplicative factors applied.

        ``constant(a + gabs*b)`` gives the terms ``constant*a`` and ``constant*gabs*b``.

        Parameters
        ----------
        e_lo, e_hi : array_like
            Bin edges in keV.
        group : int
            Data group.
        drop_fsline_norm_above : float or None
            Omit fsline terms whose own ``norm`` (photons/cm^2/s/keV at the flat top) exceeds
            this value -- mkacispback drops fslines with norm > 1 (degenerate fits with
            E_low ~ E_high) when it builds a background.  ``None`` keeps every term, and the
            terms then sum to ``model(e_lo, e_hi, group)``.  With traced ``values`` the list
            cannot shrink: dropped terms are returned as zeros.
        values : array_like, optional
            All parameter values as for ``__call__``.

        Returns
        -------
        list of (label, kind, spectrum)
            ``kind`` is "line" (gaussian), "fsline" or "continuum" (everything else);
            ``spectrum`` photons/cm^2/s per bin.
        """
        self.parsed._check_group(group)
        e_lo, e_hi = check_bin_edges(e_lo, e_hi)
        _, stack, norms = _evaluate_all_jit(self.structure, self._values_vector(values),
                                            int(group), e_lo, e_hi)
        out = []
        for i, (label, kind) in enumerate(zip(self.term_labels, self.term_kinds)):
            spectrum = stack[i]
            if drop_fsline_norm_above is not None and kind == "fsline":
                if _is_traced(norms):
                    spectrum = jnp.where(norms[i] > drop_fsline_norm_above, 0.0, spectrum)
                elif float(norms[i]) > drop_fsline_norm_above:
                    continue
            out.append((label, kind, spectrum))
        return out

    def __repr__(self) -> str:
        return (f"XspecTermModel({os.path.basename(self.path)!r}: {self.expression}; "
                f"{self.n_parameters} parameters x {self.n_groups} group(s), "
                f"{len(self.free_indices)} free)")
