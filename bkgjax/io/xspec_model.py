r"""Reader for XSPEC ``save model`` files (.mo / .xcm) and their evaluation on bin edges.

File format (what XSPEC 12 writes with ``save model``)::

    method leven 10 0.01          <- header commands, kept verbatim in XspecModel.header
    abund angr
    ...
    model  constant(gaussian + fsline + gabs*bknpower)
           0.03   -1   0   0   1e+10   1e+10     <- one line per parameter:
    ...                                             value delta min bot top max
    = p39                                        <- a linked parameter (any expression of pN)

* Parameters are numbered ``p1 .. pN`` over all data groups: the parameters of data group
  ``g`` are ``p[(g-1) n + 1] .. p[g n]`` with ``n`` the number of parameters of the expression.
  The number of data groups is (number of parameter lines) / n.
* A negative ``delta`` marks a frozen parameter.  A line ``= <expr>`` links the parameter to
  an arithmetic expression of other parameters (``p3``, ``2*p3``, ``p3 + 0.1``, ``-p4/2``).
* Components are numbered left to right in the expression (XSPEC's order); their parameters
  follow in that order.  ``a(b + c)`` is ``a*(b + c)`` (XSPEC's implicit product).

Evaluation (:meth:`XspecModel.__call__`) gives photons/cm^2/s per bin for keV bin edges, by
expanding the expression into a sum of products with one additive component each
(``constant(a + b) = constant*a + constant*b``) and summing the products in order; each
additive term is available separately with :meth:`XspecModel.additive_terms`.  The component
formulas are those of :mod:`bkgjax.spectral.components` (XSPEC definitions; ``fsline`` as in
Suzuki et al. 2021 eq. 1 with the Gaussian-tail form of ../shared/data/README.md).

Layering note: this reader lives in :mod:`bkgjax.io` (it parses a text file) but its
evaluator uses the pure component functions of :mod:`bkgjax.spectral.components`, which import
nothing from :mod:`bkgjax.io`, so there is no cycle.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..spectral.components import COMPONENTS
from .errors import BkgjaxIOError, MissingFileError

__all__ = [
    "XspecParameter",
    "XspecModel",
    "read_xspec_model",
    "parse_xspec_model",
    "check_bin_edges",
    "evaluate_structure",
    "evaluate_terms",
]

#: additive component -> kind of its additive terms (see XspecModel.additive_terms)
TERM_KINDS = {"gaussian": "line", "fsline": "fsline"}


@dataclass(frozen=True)
class XspecParameter:
    """One parameter line of an XSPEC model file.

    Attributes
    ----------
    index : int
        XSPEC number N of ``pN`` (1-based, counted over all data groups).
    group : int
        Data group (1-based).
    name : str
        ``"<component>_<k>.<parameter>"`` with k the component number, e.g.
        ``"gaussian_2.LineE"``.
    value : float
        Value written in the file; for a linked parameter the value its link resolves to.
    delta, min, bot, top, max : float
        XSPEC fit step and hard/soft limits (linked parameters: 0, -inf, -inf, inf, inf).
    frozen : bool
        ``delta < 0``.
    link : str or None
        Link expression (``"p39"``, ``"2*p3"``) without the leading ``=``.
    line : int
        Line number in the file (1-based).
    """

    index: int
    group: int
    name: str
    value: float
    delta: float
    min: float
    bot: float
    top: float
    max: float
    frozen: bool
    link: str | None
    line: int

    @property
    def is_free(self) -> bool:
        """Neither frozen nor linked."""
        return not self.frozen and self.link is None


# ----------------------------------------------------------------------------------------------
# Static structure: everything evaluation needs except the parameter values (hashable, so it is
# a jax.jit static argument and all files with the same expression and links share one
# compilation).


@dataclass(frozen=True)
class _Structure:
    components: tuple  # component names, in XSPEC order
    offsets: tuple  # offset of each component's first parameter within a group
    n_parameters: int  # per group
    n_groups: int
    terms: tuple  # ((mul component indices...), additive component index) in expansion order
    links: tuple  # ((0-based parameter index, expression tree), ...) in dependency order


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


def _resolve(structure: _Structure, values):
    """All parameter values (list of scalars, file order) with links applied."""
    vals = [values[i] for i in range(structure.n_parameters * structure.n_groups)]
    for index, tree in structure.links:
        vals[index] = _eval_link(tree, vals)
    return vals


def _group_values(structure: _Structure, values, group):
    """Resolved parameter values of data group ``group`` (traceable ``group``), shape (n,)."""
    resolved = jnp.stack([jnp.asarray(v, dtype=jnp.float64) for v in _resolve(structure, values)])
    n = structure.n_parameters
    start = (jnp.asarray(group, dtype=jnp.int32) - 1) * n
    return jax.lax.dynamic_slice(resolved, (start,), (n,))


def _term_stack(structure: _Structure, values, group, e_lo, e_hi):
    """(n_terms, nbins) additive terms of the expanded expression, photons/cm^2/s per bin.

    Components of the same type are evaluated together, vmapped over their stacked parameters
    (one traced graph per type instead of one per component: the templates hold up to 31
    gaussians); the terms are then gathered from the additive rows and multiplied by the
    product of their multiplicative rows, all as whole-array operations (slicing every
    component out separately makes XLA compile several times longer)."""
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


def _fsline_norms(structure: _Structure, values, group):
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


def evaluate_structure(structure: _Structure, values, group, e_lo, e_hi):
    """Model spectrum: the sum of the expanded additive terms (pure, traceable)."""
    return _sum_in_order(_term_stack(structure, values, group, e_lo, e_hi))


def evaluate_terms(structure: _Structure, values, group, e_lo, e_hi):
    """(n_terms, nbins) stack of the additive terms and the fsline norm of each term."""
    return (_term_stack(structure, values, group, e_lo, e_hi),
            _fsline_norms(structure, values, group))


def _evaluate_all(structure: _Structure, values, group, e_lo, e_hi):
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
    from ..spectral.model import check_energy_grid

    lo, hi = check_energy_grid(e_lo, e_hi, what="XSPEC model energy grid")
    return jnp.asarray(lo), jnp.asarray(hi)


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class XspecModel:
    """An XSPEC model read from a ``save model`` file (immutable, hashable).

    Attributes
    ----------
    path : str
        The file read ("<string>" for :func:`parse_xspec_model` without a name).
    expression : str
        The model expression as written after ``model``.
    components : tuple of str
        Component names in XSPEC order (left to right in the expression).
    n_parameters : int
        Parameters per data group.
    n_groups : int
        Number of data groups.
    parameters : tuple of XspecParameter
        All ``n_groups * n_parameters`` parameters in file order (``p1 .. pN``).
    header : tuple of str
        Command lines before ``model`` (``method``, ``abund``, ``xsect``, ``cosmo``, ...).
    trailer : tuple of str
        Command lines after the parameter lines (in .xcm files), kept verbatim.

    Evaluation
    ----------
    ``model(e_lo, e_hi, group=1, values=None)`` (also ``model.model(...)``) returns
    photons/cm^2/s per bin.  ``values`` is the vector of **all** parameters of all groups in
    file order (length ``n_groups * n_parameters``, e.g. :attr:`initial_values` modified);
    the entries of linked parameters are ignored and recomputed from their links.  It may be
    a traced array (jit/vmap/grad); :meth:`full_values` builds it from the free parameters.
    """

    path: str
    expression: str
    components: tuple
    n_parameters: int
    n_groups: int
    parameters: tuple
    header: tuple = ()
    trailer: tuple = ()
    _structure: _Structure | None = None

    # -- parameters --------------------------------------------------------------------------
    @property
    def structure(self) -> _Structure:
        """Static (value-free, hashable) part used as jit static argument."""
        return self._structure

    @property
    def initial_values(self) -> np.ndarray:
        """All parameter values in file order (links resolved), float64."""
        return np.array([p.value for p in self.parameters], dtype=np.float64)

    @property
    def free_indices(self) -> tuple:
        """0-based indices (into :attr:`parameters`) of the free parameters."""
        return tuple(i for i, p in enumerate(self.parameters) if p.is_free)

    @property
    def linked_indices(self) -> tuple:
        """0-based indices of the linked parameters."""
        return tuple(i for i, p in enumerate(self.parameters) if p.link is not None)

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
        self._check_group(group)
        start = (group - 1) * self.n_parameters
        return self.initial_values[start:start + self.n_parameters].copy()

    def parameter(self, name: str, group: int = 1) -> XspecParameter:
        """The parameter called ``name`` (e.g. ``"gaussian_2.LineE"``) in data group ``group``."""
        self._check_group(group)
        start = (group - 1) * self.n_parameters
        for p in self.parameters[start:start + self.n_parameters]:
            if p.name == name:
                return p
        own = [p.name for p in self.parameters[:self.n_parameters]]
        close = difflib.get_close_matches(name, own)
        raise KeyError(f"{self.path}: no parameter {name!r}; did you mean {close}?")

    def _check_group(self, group):
        if not isinstance(group, (int, np.integer)) or not 1 <= group <= self.n_groups:
            raise ValueError(f"{self.path}: data group {group!r} does not exist "
                             f"(the file has {self.n_groups} group(s))")

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
        self._check_group(group)
        e_lo, e_hi = check_bin_edges(e_lo, e_hi)
        return _evaluate_all_jit(self._structure, self._values_vector(values), int(group),
                                 e_lo, e_hi)[0]

    model = __call__  # ``xspec_model.model(e_lo, e_hi)`` reads like the API

    @property
    def term_labels(self) -> tuple:
        """Label of each additive term, e.g. ``"constant_1*gaussian_2"`` (expansion order)."""
        return tuple(
            "*".join(f"{self.components[k]}_{k + 1}" for k in (*factors, additive))
            for factors, additive in self._structure.terms
        )

    @property
    def term_kinds(self) -> tuple:
        """Kind of each additive term: "line" (gaussian), "fsline", or "continuum"."""
        return tuple(TERM_KINDS.get(self.components[additive], "continuum")
                     for _, additive in self._structure.terms)

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
        self._check_group(group)
        e_lo, e_hi = check_bin_edges(e_lo, e_hi)
        _, stack, norms = _evaluate_all_jit(self._structure, self._values_vector(values),
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
        return (f"XspecModel({os.path.basename(self.path)!r}: {self.expression}; "
                f"{self.n_parameters} parameters x {self.n_groups} group(s), "
                f"{len(self.free_indices)} free)")


# ----------------------------------------------------------------------------------------------
# Parsing


def read_xspec_model(path) -> XspecModel:
    """Read an XSPEC ``save model`` file (.mo, .xcm).

    Raises
    ------
    MissingFileError
        The file does not exist.
    BkgjaxIOError
        Unknown component (message names the file and the component), malformed expression or
        parameter line (names the file and line number), inconsistent parameter count,
        link to a missing parameter, circular links.
    """
    try:
        raw = os.fspath(path)
    except TypeError as exc:
        raise BkgjaxIOError(f"expected a file path, got {type(path).__name__}: {path!r}") from exc
    full = os.path.abspath(os.path.expanduser(raw))
    if not os.path.isfile(full):
        raise MissingFileError(f"{full}: XSPEC model file not found")
    try:
        with open(full, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise BkgjaxIOError(f"{full}: cannot read XSPEC model file ({exc})") from exc
    return parse_xspec_model(text, full)


def _fail(source, lineno, message):
    where = f"{source}, line {lineno}" if lineno else source
    raise BkgjaxIOError(f"{where}: {message}")


def _is_parameter_line(stripped: str) -> bool:
    return stripped.startswith("=") or stripped[0] in "0123456789+-."


def parse_xspec_model(text: str, source: str = "<string>") -> XspecModel:
    """Parse the text of an XSPEC ``save model`` file (see :func:`read_xspec_model`)."""
    lines = text.splitlines()
    header, trailer, param_lines = [], [], []
    expression = None
    model_lineno = 0
    n_par = 0
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if expression is None:
            word = stripped.split()[0].lower()
            if word == "model":
                expression = stripped[len(stripped.split()[0]):].strip()
                model_lineno = lineno
                if not expression:
                    _fail(source, lineno, "'model' command without an expression")
                tree, components = _parse_expression(expression, source, model_lineno)
                terms = _expand_terms(tree, components, source, model_lineno, expression)
                n_par = sum(len(COMPONENTS[c].params) for c in components)
            else:
                header.append(stripped)
            continue
        if trailer:
            trailer.append(stripped)
        elif _is_parameter_line(stripped):
            param_lines.append((lineno, stripped))
        elif param_lines and len(param_lines) % n_par == 0 and stripped[0].isalpha():
            trailer.append(stripped)  # further commands of an .xcm file (e.g. 'bayes off')
        else:
            _fail(source, lineno, f"malformed parameter line {stripped!r}: expected 6 numbers "
                                  "(value delta min bot top max) or '= <link>'")
    if expression is None:
        _fail(source, 0, "no 'model' command found")

    offsets, acc = [], 0
    for c in components:
        offsets.append(acc)
        acc += len(COMPONENTS[c].params)
    if not param_lines:
        _fail(source, model_lineno, f"no parameter lines after the model (expected a multiple "
                                    f"of {n_par})")
    if len(param_lines) % n_par:
        _fail(source, param_lines[-1][0],
              f"{len(param_lines)} parameter lines is not a multiple of the {n_par} parameters "
              f"of {expression!r} (one line per parameter and data group)")
    n_groups = len(param_lines) // n_par
    n_total = n_par * n_groups

    names = []
    for c, comp in enumerate(components):
        names.extend(f"{comp}_{c + 1}.{p}" for p in COMPONENTS[comp].param_names)

    raw = []  # (lineno, numbers or None, link text or None, link tree or None)
    for lineno, stripped in param_lines:
        if stripped.startswith("="):
            link = stripped[1:].strip()
            link_tree = _parse_link(link, source, lineno, n_total)
            raw.append((lineno, None, link, link_tree))
            continue
        fields = stripped.replace(",", " ").split()
        if len(fields) != 6:
            _fail(source, lineno, f"malformed parameter line {stripped!r}: expected 6 numbers "
                                  "(value delta min bot top max) or '= <link>'")
        try:
            numbers = [float(f) for f in fields]
        except ValueError:
            _fail(source, lineno, f"malformed parameter line {stripped!r}: not a number")
        if not all(math.isfinite(x) for x in numbers):
            _fail(source, lineno, f"parameter line {stripped!r} holds NaN or inf")
        value, _, pmin, _, _, pmax = numbers
        if not pmin <= value <= pmax:
            _fail(source, lineno, f"parameter value {value} outside its hard limits "
                                  f"[{pmin}, {pmax}]")
        raw.append((lineno, numbers, None, None))

    links = _order_links(raw, source)
    # resolve link values once (numpy) for the records and initial values
    base_values = [nums[0] if nums is not None else 0.0 for _, nums, _, _ in raw]
    for index, link_tree in links:
        base_values[index] = float(_eval_link(link_tree, base_values))
        if not math.isfinite(base_values[index]):
            _fail(source, raw[index][0], f"link '= {raw[index][2]}' evaluates to "
                                         f"{base_values[index]}")

    parameters = []
    for i, (lineno, nums, link, _) in enumerate(raw):
        group = i // n_par + 1
        name = names[i % n_par]
        if nums is None:
            parameters.append(XspecParameter(i + 1, group, name, base_values[i], 0.0, -math.inf,
                                             -math.inf, math.inf, math.inf, False, link, lineno))
        else:
            value, delta, pmin, bot, top, pmax = nums
            parameters.append(XspecParameter(i + 1, group, name, value, delta, pmin, bot, top,
                                             pmax, delta < 0, None, lineno))

    structure = _Structure(tuple(components), tuple(offsets), n_par, n_groups,
                           terms, links)
    return XspecModel(source, expression, tuple(components), n_par, n_groups, tuple(parameters),
                      tuple(header), tuple(trailer), structure)


# -- model expression ----------------------------------------------------------------------


def _tokenize(expression, source, lineno):
    tokens, i = [], 0
    while i < len(expression):
        ch = expression[i]
        if ch.isspace():
            i += 1
        elif ch in "+*()":
            tokens.append(ch)
            i += 1
        elif ch.isalpha() or ch == "_":
            j = i
            while j < len(expression) and (expression[j].isalnum() or expression[j] == "_"):
                j += 1
            tokens.append(expression[i:j])
            i = j
        else:
            _fail(source, lineno, f"model expression {expression!r}: unexpected character "
                                  f"{ch!r} (only component names, '+', '*' and parentheses "
                                  "are supported)")
    return tokens


def _parse_expression(expression, source, lineno):
    """Recursive descent: expr := term ('+' term)*; term := factor ('*'? factor)*
    (a factor directly followed by '(' multiplies it, XSPEC's ``a(b)``);
    factor := NAME | '(' expr ')'."""
    tokens = _tokenize(expression, source, lineno)
    components = []
    pos = 0

    def error(msg):
        _fail(source, lineno, f"model expression {expression!r}: {msg}")

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def parse_expr():
        nonlocal pos
        nodes = [parse_term()]
        while peek() == "+":
            pos += 1
            nodes.append(parse_term())
        return nodes[0] if len(nodes) == 1 else ("+", tuple(nodes))

    def parse_term():
        nonlocal pos
        nodes = [parse_factor()]
        while peek() in ("*", "("):
            if peek() == "*":
                pos += 1
            nodes.append(parse_factor())
        return nodes[0] if len(nodes) == 1 else ("*", tuple(nodes))

    def parse_factor():
        nonlocal pos
        tok = peek()
        if tok is None:
            error("ends unexpectedly")
        if tok == "(":
            pos += 1
            node = parse_expr()
            if peek() != ")":
                error("missing ')'")
            pos += 1
            return node
        if tok in ("+", "*", ")"):
            error(f"unexpected {tok!r}")
        pos += 1
        name = _component_name(tok, source, lineno)
        components.append(name)
        return ("comp", len(components) - 1)

    tree = parse_expr()
    if pos != len(tokens):
        error(f"unexpected {tokens[pos]!r}")
    return tree, components


def _component_name(token, source, lineno):
    lowered = {name.lower(): name for name in COMPONENTS}
    if token.lower() in lowered:
        return lowered[token.lower()]
    close = difflib.get_close_matches(token.lower(), list(lowered))
    _fail(source, lineno, f"unknown model component {token!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; supported: {', '.join(sorted(COMPONENTS))}")


def _expand_terms(tree, components, source, lineno, expression):
    """Sum of products, each with exactly one additive component.

    Returns ((mul component indices in expression order...), additive index) per term."""

    def expand(node):
        # list of (factors tuple, additive index or None)
        if node[0] == "comp":
            k = node[1]
            if COMPONENTS[components[k]].kind == "add":
                return [((), k)]
            return [((k,), None)]
        if node[0] == "+":
            out = []
            kinds = set()
            for child in node[1]:
                sub = expand(child)
                kinds.update(a is None for _, a in sub)
                out.extend(sub)
            if len(kinds) > 1:
                _fail(source, lineno, f"model expression {expression!r}: cannot add additive "
                                      "and multiplicative components")
            return out
        out = [((), None)]
        for child in node[1]:
            new = []
            for f1, a1 in out:
                for f2, a2 in expand(child):
                    if a1 is not None and a2 is not None:
                        _fail(source, lineno, f"model expression {expression!r}: cannot "
                                              "multiply two additive components")
                    new.append((f1 + f2, a1 if a1 is not None else a2))
            out = new
        return out

    terms = expand(tree)
    if any(a is None for _, a in terms):
        _fail(source, lineno, f"model expression {expression!r} has no additive component")
    return tuple((tuple(f), a) for f, a in terms)


# -- links -----------------------------------------------------------------------------------

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


def _parse_link(text, source, lineno, n_total):
    """``p3``, ``2*p3``, ``p3 + 0.1``, ``-p4/2`` -> expression tree with 0-based indices."""
    if not text:
        _fail(source, lineno, "link '=' without an expression")
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        _fail(source, lineno, f"malformed link '= {text}'")

    def build(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) \
                and not isinstance(n.value, bool):
            return ("num", float(n.value))
        if isinstance(n, ast.Name):
            name = n.id.lower()
            if name.startswith("p") and name[1:].isdigit():
                index = int(name[1:])
                if not 1 <= index <= n_total:
                    _fail(source, lineno, f"link '= {text}' refers to p{index}, but the file "
                                          f"has parameters p1..p{n_total}")
                return ("p", index - 1)
            _fail(source, lineno, f"link '= {text}': unknown name {n.id!r} (use pN)")
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            inner = build(n.operand)
            return ("neg", inner) if isinstance(n.op, ast.USub) else inner
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return (_BINOPS[type(n.op)], build(n.left), build(n.right))
        _fail(source, lineno, f"link '= {text}': only numbers, pN, + - * / ** and parentheses "
                              "are supported")

    return build(node)


def _link_targets(tree):
    if tree[0] == "p":
        return {tree[1]}
    if tree[0] == "num":
        return set()
    return set().union(*(_link_targets(t) for t in tree[1:]))


def _order_links(raw, source):
    """Linked parameters in dependency order; circular links are an error."""
    pending = {i: tree for i, (_, _, _, tree) in enumerate(raw) if tree is not None}
    ordered, done = [], set()
    while pending:
        ready = [i for i, tree in pending.items()
                 if all(t not in pending or t == i for t in _link_targets(tree))]
        ready = [i for i in ready if i not in _link_targets(pending[i])]
        if not ready:
            i = min(pending)
            _fail(source, raw[i][0], f"circular parameter links involving p{i + 1} "
                                     f"('= {raw[i][2]}')")
        for i in sorted(ready):
            ordered.append((i, pending.pop(i)))
            done.add(i)
    return tuple(ordered)

