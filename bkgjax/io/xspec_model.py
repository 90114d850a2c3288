r"""Reader for XSPEC ``save model`` files (.mo / .xcm): parsing only.

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

:func:`read_xspec_model` returns a plain :class:`XspecModel`: the expression and its component
list, the parameter lines as written and the links parsed into expression trees.  It
evaluates nothing: :class:`bkgjax.spectral.xspec_terms.XspecTermModel` resolves the links and
evaluates the model on bin edges.  The expression is checked with the model-expression parser
of :mod:`bkgjax.spectral.model` and the parameter counts come from the component registry
(:data:`bkgjax.spectral.components.COMPONENTS`), so a file that reads is one that evaluates.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
from dataclasses import dataclass

import numpy as np

from ..spectral.components import COMPONENTS
from ..spectral.model import expression_kind, parse_expression
from .errors import BkgjaxIOError, MissingFileError

__all__ = [
    "XspecParameter",
    "XspecModel",
    "read_xspec_model",
    "parse_xspec_model",
]


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
    value : float or None
        Value written in the file; ``None`` for a linked parameter (the file holds its link,
        not a value: :class:`bkgjax.spectral.xspec_terms.XspecTermModel` resolves it).
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
    value: float | None
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


@dataclass(frozen=True)
class XspecModel:
    """An XSPEC model file as read (immutable, hashable; evaluates nothing).

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
    links : tuple
        ``((0-based parameter index, expression tree), ...)`` of the linked parameters, in
        dependency order (a link's targets come before it).  Trees: ``("num", x)``,
        ``("p", 0-based index)``, ``("neg", t)``, ``(op, t1, t2)`` with op in + - * / **.
    header : tuple of str
        Command lines before ``model`` (``method``, ``abund``, ``xsect``, ``cosmo``, ...).
    trailer : tuple of str
        Command lines after the parameter lines (in .xcm files), kept verbatim.

    Evaluate it with :class:`bkgjax.spectral.xspec_terms.XspecTermModel` (``from_parsed``).
    """

    path: str
    expression: str
    components: tuple
    n_parameters: int
    n_groups: int
    parameters: tuple
    links: tuple = ()
    header: tuple = ()
    trailer: tuple = ()

    @property
    def free_indices(self) -> tuple:
        """0-based indices (into :attr:`parameters`) of the free parameters."""
        return tuple(i for i, p in enumerate(self.parameters) if p.is_free)

    @property
    def linked_indices(self) -> tuple:
        """0-based indices of the linked parameters."""
        return tuple(i for i, p in enumerate(self.parameters) if p.link is not None)

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
                components = _parse_expression(expression, source, model_lineno)
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
    parameters = []
    for i, (lineno, nums, link, _) in enumerate(raw):
        group = i // n_par + 1
        name = names[i % n_par]
        if nums is None:
            parameters.append(XspecParameter(i + 1, group, name, None, 0.0, -math.inf,
                                             -math.inf, math.inf, math.inf, False, link, lineno))
        else:
            value, delta, pmin, bot, top, pmax = nums
            parameters.append(XspecParameter(i + 1, group, name, value, delta, pmin, bot, top,
                                             pmax, delta < 0, None, lineno))

    return XspecModel(source, expression, tuple(components), n_par, n_groups, tuple(parameters),
                      links, tuple(header), tuple(trailer))


# -- model expression ----------------------------------------------------------------------


def _parse_expression(expression, source, lineno):
    """Component names of ``expression`` (the parser of :mod:`bkgjax.spectral.model`); an
    invalid or purely multiplicative expression is an error naming the file and line."""
    try:
        tree, components = parse_expression(expression)
    except ValueError as exc:
        _fail(source, lineno, str(exc))
    if expression_kind(tree) != "add":
        _fail(source, lineno, f"model expression {expression!r} has no additive component")
    return components


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

