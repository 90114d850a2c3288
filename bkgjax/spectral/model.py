r"""Spectral model expressions: components, sums and products, with XSPEC parameter names.

A :class:`Model` holds

* ``expr``: a static, hashable expression tree (component names and labels, ``+``, ``*`` and
  convolutions), safe to use as a ``jax.jit`` static argument, so changing parameter values
  never recompiles;
* ``parameters``: a tuple of :class:`Parameter` (value, unit, bounds, frozen, prior, link), each
  named ``"<label>.<XSPEC name>"`` (e.g. ``"powerlaw.PhoIndex"``, ``"gaussian_2.LineE"``).

Evaluation is a pure function of a parameter mapping and bin edges::

    model = powerlaw() + gaussian(LineE=6.4, Sigma=0.0)
    flux = model.evaluate(model.values(), e_lo, e_hi)   # photons/cm^2/s per bin

Components are those of :data:`bkgjax.spectral.components.COMPONENTS`: the built-ins and the
user's (:func:`~bkgjax.spectral.components.register_component`).  A convolution component
(kind ``"con"``) is applied to an expression: ``component("myconv")(powerlaw())`` or
``parse_model("myconv(powerlaw)")``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .components import COMPONENTS, load_environment_components

__all__ = ["Parameter", "Model", "ModelStructure", "component", "list_components", "parse_model",
           "parse_expression", "expression_kind", "check_energy_grid"]

_INF = float("inf")


@dataclass(frozen=True)
class Parameter:
    """One model parameter.

    Attributes
    ----------
    name : str
        Qualified name ``"<component label>.<XSPEC name>"``.
    value : float
        Current (starting) value, in ``unit``.
    unit : str
        Astropy-parsable unit string ("keV", "photons/keV/cm^2/s", "" for dimensionless).
    min, max : float
        Hard limits; fits use a bijection onto ``(min, max)``.
    frozen : bool
        Frozen parameters are not fitted or sampled.
    prior : numpyro.distributions.Distribution or None
        Prior for :mod:`bkgjax.infer`; ``None`` means flat within ``(min, max)``.
    link : str or None
        Qualified name of another parameter whose value this one takes (XSPEC ``= pN``);
        linked parameters are never free.
    """

    name: str
    value: float
    unit: str = ""
    min: float = -_INF
    max: float = _INF
    frozen: bool = False
    prior: Any = field(default=None, compare=False, hash=False)
    link: str | None = None

    def __post_init__(self):
        for attr in ("value", "min", "max"):
            object.__setattr__(self, attr, float(getattr(self, attr)))
        if math.isnan(self.value):
            raise ValueError(f"parameter {self.name}: value is NaN")
        if not self.min < self.max:
            raise ValueError(f"parameter {self.name}: min={self.min} must be < max={self.max}")
        if self.link is None and not self.min <= self.value <= self.max:
            raise ValueError(
                f"parameter {self.name}: value {self.value} outside its limits "
                f"[{self.min}, {self.max}]"
            )

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[-1]

    @property
    def is_free(self) -> bool:
        return not self.frozen and self.link is None


def _parameter_flatten(p):
    return (p.value,), (p.name, p.unit, p.min, p.max, p.frozen, p.prior, p.link)


def _parameter_unflatten(aux, children):
    # bypass __init__: leaves may be tracers or arrays inside jit/vmap
    obj = object.__new__(Parameter)
    for key, val in zip(("name", "unit", "min", "max", "frozen", "prior", "link"), aux):
        object.__setattr__(obj, key, val)
    object.__setattr__(obj, "value", children[0])
    return obj


# Parameters are pytrees: the value is the leaf; name, unit, limits, frozen, prior, link are
# static metadata (so ``jax.tree_util.tree_map`` over a model's parameters maps the values).
jax.tree_util.register_pytree_node(Parameter, _parameter_flatten, _parameter_unflatten)


# Expression nodes (hashable tuples):
#   ("comp", spec_name, label) | ("+", a, b) | ("*", a, b) | ("conv", ("comp", spec_name, label), a)
# A convolution node holds its component as an ordinary "comp" node, so that code walking the
# tree for "comp" nodes finds the convolution component too (its labels, and the fingerprint of
# component code in bkgjax.fit.export_cache, which must see every function a fit traces).
# The node's children are (component, argument): labels and parameters in that order, which is
# XSPEC's left-to-right numbering (``myconv(powerlaw)``: myconv is component 1).


def _spec(name):
    try:
        return COMPONENTS[name]
    except KeyError:
        raise ValueError(f"model component {name!r} is not registered (unregistered after the "
                         "model was built?)") from None


def _labels(expr):
    if expr[0] == "comp":
        return [expr[2]]
    # "+", "*", and "conv" (component node, then its argument)
    return _labels(expr[1]) + _labels(expr[2])


def _relabel(expr, mapping):
    if expr[0] == "comp":
        return ("comp", expr[1], mapping.get(expr[2], expr[2]))
    # "+", "*", and "conv" (its component node is relabelled like any other)
    return (expr[0], _relabel(expr[1], mapping), _relabel(expr[2], mapping))


def _bare_convolution(name):
    return ValueError(f"convolution component {name!r} must be followed by a parenthesised "
                      f"expression to act on, e.g. {name}(powerlaw)")


def _kind(expr):
    """"add", "mul", or "con" (a bare convolution component, waiting for its argument);
    ValueError for an expression breaking XSPEC's rules."""
    if expr[0] == "comp":
        return _spec(expr[1]).kind
    if expr[0] == "conv":
        comp, argument = expr[1], expr[2]
        if comp[0] != "comp" or _spec(comp[1]).kind != "con":
            raise ValueError(f"{_to_string(comp)!r} is not a convolution component")
        kind = _kind(argument)
        if kind == "con":
            raise _bare_convolution(argument[1])
        return kind  # the convolution of an additive (multiplicative) expression is one too
    left, right = _kind(expr[1]), _kind(expr[2])
    for node, kind in ((expr[1], left), (expr[2], right)):
        if kind == "con":  # only a bare "comp" node has kind "con"
            raise _bare_convolution(node[1])
    if expr[0] == "+":
        if left != right:
            raise ValueError("cannot add an additive and a multiplicative component")
        return left
    if left == "add" and right == "add":
        raise ValueError("cannot multiply two additive components (XSPEC rule)")
    return "add" if "add" in (left, right) else "mul"


def _to_string(expr):
    if expr[0] == "comp":
        return expr[2]
    if expr[0] == "conv":
        return f"{_to_string(expr[1])}({_to_string(expr[2])})"
    left, right = _to_string(expr[1]), _to_string(expr[2])
    if expr[0] == "*" and expr[2][0] == "+":
        right = f"({right})"
    if expr[0] == "*" and expr[1][0] == "+":
        left = f"({left})"
    return f"{left} {expr[0]} {right}"


def _versions(expr) -> tuple:
    """``((name, registration serial), ...)`` of the user-registered components in ``expr``
    (sorted; built-ins, serial 0, are left out so that their structures are unchanged)."""
    found = set()

    def walk(node):
        if node[0] == "comp":
            version = _spec(node[1]).version
            if version:
                found.add((node[1], version))
        else:
            walk(node[1])
            walk(node[2])

    walk(expr)
    return tuple(sorted(found))


def _normalise_options(options) -> tuple:
    """Model options as a sorted tuple of ``(name, value)`` pairs (hashable, jit-static):
    from such pairs or a mapping; values are hashable scalars (str, int, float, bool)."""
    items = options.items() if isinstance(options, Mapping) else options
    try:
        pairs = [(key, value) for key, value in items]
    except (TypeError, ValueError):
        raise ValueError(f"model options must be (name, value) pairs or a mapping, got "
                         f"{options!r}") from None
    for key, value in pairs:
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"model option {key!r}={value!r}: the name must be a string and "
                             "the value a str, int, float or bool")
    names = [key for key, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"model options name {sorted(n for n in set(names) if names.count(n) > 1)} "
                         "more than once")
    return tuple(sorted(pairs))


def _merge_options(first: tuple, second: tuple) -> tuple:
    """The options of a combination of two models: every option either sets; the same
    option set to different values is an error (it would change the other model's
    components: options are model-wide settings, like XSPEC's ``abund``)."""
    merged = dict(first)
    for key, value in second:
        if key in merged and merged[key] != value:
            raise ValueError(f"cannot combine models with different options {key}="
                             f"{merged[key]!r} and {key}={value!r}; set one value on both "
                             "(Model.with_options)")
        merged[key] = value
    return tuple(sorted(merged.items()))


def _check_options(expr, options: tuple) -> None:
    """ValueError unless every option is taken by some registered component and the
    components of ``expr`` accept the values (each is traced abstractly once with them: a
    component rejects an unavailable value, e.g. an abundance table it has no data for)."""
    if not options:
        return
    known = {name for spec in COMPONENTS.values() for name in spec.options}
    for key, _ in options:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known))
            raise ValueError(f"unknown model option {key!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; the registered components take: {', '.join(sorted(known))}")
    values = dict(options)
    names = set()

    def walk(node):
        if node[0] == "comp":
            names.add(node[1])
        else:
            walk(node[1])
            walk(node[2])

    walk(expr)
    real = jax.ShapeDtypeStruct((2,), jnp.result_type(float))
    scalar = jax.ShapeDtypeStruct((), jnp.result_type(float))
    for name in sorted(names):
        spec = _spec(name)
        given = {key: values[key] for key in spec.options if key in values}
        if not given:
            continue
        leading = (real, real, real) if spec.kind == "con" else (real, real)
        call = functools.partial(spec.function, **given)
        try:
            jax.eval_shape(call, *leading, *(scalar for _ in spec.params))
        except ValueError as err:
            raise ValueError(f"component {name!r}: {err}") from None


@dataclass(frozen=True)
class Model:
    """An additive or multiplicative spectral model expression with its parameters (or a bare
    convolution component, kind ``"con"``, to be applied to one: :meth:`apply`).

    ``options`` are model-wide settings passed to the components that take them (XSPEC's
    ``abund``/``xsect`` for the absorption components, :mod:`bkgjax.spectral.absorption`):
    a sorted tuple of ``(name, value)`` pairs, ``()`` for the components' defaults (XSPEC's:
    angr, vern).  Set them with :meth:`with_options` or ``parse_model(expr, abund="wilm")``;
    they are part of :attr:`structure`, so models differing only in options never share a
    compiled fit."""

    expr: tuple
    parameters: tuple
    options: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "options", _normalise_options(self.options))
        kind = _kind(self.expr)  # validates the expression
        object.__setattr__(self, "_kind", kind)
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in model: {names}")
        for p in self.parameters:
            if p.link is not None and p.link not in names:
                raise ValueError(f"parameter {p.name} links to unknown parameter {p.link}")

    # -- composition -------------------------------------------------------------------------
    def _absorb(self, other):
        """``other``'s expression and parameters relabelled apart from this model's labels."""
        taken = set(_labels(self.expr))
        mapping = {}
        for label in _labels(other.expr):
            if label in taken:
                base = label.rsplit("_", 1)[0] if label.rsplit("_", 1)[-1].isdigit() else label
                k = 2
                while f"{base}_{k}" in taken:
                    k += 1
                mapping[label] = f"{base}_{k}"
            taken.add(mapping.get(label, label))

        def rename(name):
            label, pname = name.split(".", 1)
            return f"{mapping.get(label, label)}.{pname}"

        new_params = tuple(
            dataclasses.replace(
                p, name=rename(p.name), link=None if p.link is None else rename(p.link)
            )
            for p in other.parameters
        )
        return _relabel(other.expr, mapping), new_params

    def _combine(self, other, op):
        if not isinstance(other, Model):
            return NotImplemented
        expr, new_params = self._absorb(other)
        return self._joined((op, self.expr, expr), self.parameters + new_params, other)

    def _joined(self, expr, parameters, other) -> "Model":
        """The model of ``expr`` built from this model and ``other``, with both options."""
        options = _merge_options(self.options, other.options)
        if options and not options == self.options == other.options:
            _check_options(expr, options)  # they now reach one side's components too
        return Model(expr, parameters, options)

    def apply(self, argument: "Model") -> "Model":
        """This convolution component acting on ``argument`` (XSPEC's ``myconv(argument)``).

        ``self`` is a bare convolution component (``component("myconv")``, kind ``"con"``);
        the result has the kind of ``argument``, the component's parameters first, then the
        argument's (relabelled like :meth:`__add__` where labels clash).  ``model(argument)``
        is the same."""
        if not isinstance(argument, Model):
            raise TypeError(f"a convolution acts on a Model, got {type(argument).__name__}")
        if self.expr[0] != "comp" or self.kind != "con":
            raise ValueError(f"{self} is not a convolution component: only a bare component "
                             "of kind 'con' can be applied to an expression")
        expr, new_params = self._absorb(argument)
        return self._joined(("conv", self.expr, expr), self.parameters + new_params, argument)

    def __add__(self, other):
        return self._combine(other, "+")

    def __mul__(self, other):
        return self._combine(other, "*")

    # -- introspection -----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """"add" (photons/cm^2/s per bin), "mul" (dimensionless factor per bin), or "con"
        (a bare convolution component, to be applied to an expression)."""
        return self._kind

    @property
    def names(self) -> tuple:
        return tuple(p.name for p in self.parameters)

    @property
    def free_names(self) -> tuple:
        return tuple(p.name for p in self.parameters if p.is_free)

    def display_names(self) -> dict:
        """Map qualified names to the shortest unambiguous names (XSPEC name if unique)."""
        shorts = [p.short_name for p in self.parameters]
        return {
            p.name: (p.short_name if shorts.count(p.short_name) == 1 else p.name)
            for p in self.parameters
        }

    def __getitem__(self, name) -> Parameter:
        return self.parameters[self._index(name)]

    def _index(self, name) -> int:
        names = self.names
        if name in names:
            return names.index(name)
        matches = [i for i, p in enumerate(self.parameters) if p.short_name == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise KeyError(
                f"parameter name {name!r} is ambiguous in {self}; use one of "
                f"{[names[i] for i in matches]}"
            )
        close = difflib.get_close_matches(name, list(names) + [p.short_name for p in self.parameters])
        raise KeyError(f"no parameter {name!r} in model {self}; did you mean {close}?")

    def __str__(self) -> str:
        return _to_string(self.expr)

    def __repr__(self) -> str:
        rows = [f"Model({self})"]
        for p in self.parameters:
            state = "frozen" if p.frozen else ("= " + p.link if p.link else "free")
            rows.append(f"  {p.name:28s} {p.value:<14.6g} {p.unit:20s} [{p.min:g}, {p.max:g}] {state}")
        if self.options:
            rows.append("  options: " + ", ".join(f"{k}={v!r}" for k, v in self.options))
        return "\n".join(rows)

    # -- updating (returns new models; Model is immutable) -----------------------------------
    def set(self, name, value=None, *, frozen=None, min=None, max=None, prior=None, link=None):
        """Return a copy with parameter ``name`` changed (value, frozen, limits, prior, link)."""
        i = self._index(name)
        p = self.parameters[i]
        changes = {}
        for key, val in (("value", value), ("frozen", frozen), ("min", min), ("max", max),
                         ("prior", prior), ("link", link)):
            if val is not None:
                changes[key] = val
        new = list(self.parameters)
        new[i] = dataclasses.replace(p, **changes)
        return Model(self.expr, tuple(new), self.options)

    def with_options(self, **options) -> "Model":
        """Copy with model options set (``None`` removes one), e.g.
        ``model.with_options(abund="wilm")``: XSPEC's ``abund`` (``"angr"`` default,
        ``"aspl"``, ``"wilm"``) and ``xsect`` (``"vern"``) for the absorption components.

        Raises ValueError naming the option for an option no registered component takes, or a
        value a component of this model rejects (e.g. ``abund="wilm"`` with ``phabs``, whose
        ``wilm`` cross-sections bkgjax does not have)."""
        merged = dict(self.options)
        for key, value in options.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        normalised = _normalise_options(merged)
        _check_options(self.expr, normalised)
        return Model(self.expr, self.parameters, normalised)

    def with_values(self, values: Mapping[str, float]) -> "Model":
        """Return a copy with several parameter values replaced (names as in :meth:`set`)."""
        model = self
        for name, value in values.items():
            model = model.set(name, float(value))
        return model

    # -- evaluation --------------------------------------------------------------------------
    def values(self) -> dict:
        """Current parameter values as ``{qualified name: float}``."""
        return {p.name: p.value for p in self.parameters}

    def resolve(self, values: Mapping[str, Any]) -> dict:
        """Complete a (possibly partial) value mapping with current values, then apply links."""
        full = {}
        for p in self.parameters:
            full[p.name] = values[p.name] if p.name in values else p.value
        for p in self.parameters:
            if p.link is not None:
                full[p.name] = full[p.link]
        return full

    @property
    def structure(self) -> "ModelStructure":
        """The static part (expression, names, links, and the registrations of the user
        components it names): hashable, value-free, jit-static."""
        return ModelStructure(self.expr, self.names, tuple(p.link for p in self.parameters),
                              _versions(self.expr), self.options)

    def evaluate(self, values: Mapping[str, Any], e_lo, e_hi):
        """Evaluate per bin (pure; traceable by jit/vmap/grad).

        Parameters
        ----------
        values : mapping
            ``{qualified name: value}``; missing names take the current values.
        e_lo, e_hi : array_like
            Bin edges in keV, ``e_hi > e_lo > 0`` (validated by :func:`check_energy_grid`).

        Returns
        -------
        Array of shape ``e_lo.shape``: photons/cm^2/s per bin (additive models) or the
        multiplicative factor per bin.
        """
        full = self.resolve(values)
        return _evaluate_expr(self.expr, full, e_lo, e_hi, self.options)

    def subexpression(self, text: str) -> "Model":
        """The model made of some of this model's components, named by their labels and
        joined by ``+``, ``*`` and parentheses (``"powerlaw"``, ``"gaussian + gaussian_2"``),
        with their current parameters: e.g. the unabsorbed part of ``phabs*powerlaw``.
        Links to parameters left out are dropped (the caller supplies resolved values)."""
        nodes = {}

        def collect(node):
            if node[0] == "comp":
                nodes[node[2]] = node
            else:
                for child in node[1:]:
                    if isinstance(child, tuple):
                        collect(child)

        collect(self.expr)
        used = []

        def error(msg):
            raise ValueError(f"sub-expression {text!r} of {self}: {msg}; components: "
                             f"{sorted(nodes)}")

        def name_node(tok, peek, parenthesised):
            if tok not in nodes:
                error(f"no component labelled {tok!r}")
            used.append(tok)
            return nodes[tok]

        tree = _parse_tokens(_tokenize(str(text)), name_node, lambda op, a, b: (op, a, b), error)
        keep = [p for p in self.parameters if p.name.split(".", 1)[0] in used]
        names = {p.name for p in keep}
        keep = [p if p.link is None or p.link in names else dataclasses.replace(p, link=None)
                for p in keep]
        return Model(tree, tuple(keep), self.options)

    def __call__(self, e_lo, e_hi=None, values=None):
        """``model(e_lo, e_hi[, values])`` evaluates (:meth:`evaluate`); on a convolution
        component, ``model(argument_model)`` is :meth:`apply`."""
        if isinstance(e_lo, Model):
            if e_hi is not None or values is not None:
                raise TypeError("a convolution is applied to one Model: model(argument)")
            return self.apply(e_lo)
        if e_hi is None:
            raise TypeError("Model.__call__ needs the bin edges: model(e_lo, e_hi[, values])")
        return self.evaluate({} if values is None else values, e_lo, e_hi)


def _evaluate_expr(expr, full, e_lo, e_hi, options=()):
    e_lo = jnp.asarray(e_lo)
    e_hi = jnp.asarray(e_hi)
    settings = dict(options)

    def keywords(spec):  # the model options this component takes (ComponentSpec.options)
        return {key: settings[key] for key in spec.options if key in settings}

    def walk(node):
        if node[0] == "comp":
            spec = _spec(node[1])
            if spec.kind == "con":
                raise _bare_convolution(node[1])
            args = [full[f"{node[2]}.{n}"] for n in spec.param_names]
            return spec.function(e_lo, e_hi, *args, **keywords(spec))
        if node[0] == "conv":  # the component acts on the per-bin flux (or factor) of its argument
            comp = node[1]
            spec = _spec(comp[1])
            args = [full[f"{comp[2]}.{n}"] for n in spec.param_names]
            return spec.function(e_lo, e_hi, walk(node[2]), *args, **keywords(spec))
        left, right = walk(node[1]), walk(node[2])
        return left + right if node[0] == "+" else left * right

    return walk(expr)


@dataclass(frozen=True)
class ModelStructure:
    """Value-free, hashable view of a :class:`Model`, used as a ``jax.jit`` static argument.

    ``evaluate(theta, e_lo, e_hi)`` takes the vector of *all* parameter values in
    ``names`` order (linked entries are overwritten by their targets).

    ``versions`` holds ``(name, serial)`` of every user-registered component in ``expr``
    (:attr:`ComponentSpec.version <bkgjax.spectral.components.ComponentSpec>`).  Compiled fits
    are cached by this object (jit static argument, sampler and export caches), and the
    expression names components only by name: registering another function under the same
    name (``replace=True``) gives a new serial, hence a new key, so a stale compilation of the
    previous function is never reused.  The serial lives here rather than in the expression
    nodes so that expressions (and the node format of the built-ins) are unchanged.

    ``options`` are the model's options (:attr:`Model.options`, e.g. ``(("abund",
    "wilm"),)``): part of the key for the same reason, and passed to the components that
    take them.
    """

    expr: tuple
    names: tuple
    links: tuple
    versions: tuple = ()
    options: tuple = ()

    def values_from_vector(self, theta) -> dict:
        values = {name: theta[i] for i, name in enumerate(self.names)}
        for name, link in zip(self.names, self.links):
            if link is not None:
                values[name] = values[link]
        return values

    def evaluate(self, theta, e_lo, e_hi):
        return _evaluate_expr(self.expr, self.values_from_vector(theta), e_lo, e_hi,
                              self.options)


def _model_flatten(model):
    # the registrations go into the static part too (see ModelStructure): a function jitted
    # with a Model argument retraces when a component it names is registered again
    return (model.parameters,), (model.expr, _versions(model.expr), model.options)


def _model_unflatten(aux, children):
    expr = aux[0]
    obj = object.__new__(Model)
    object.__setattr__(obj, "expr", expr)
    object.__setattr__(obj, "parameters", tuple(children[0]))
    object.__setattr__(obj, "options", aux[2])
    object.__setattr__(obj, "_kind", _kind(expr))
    return obj


jax.tree_util.register_pytree_node(Model, _model_flatten, _model_unflatten)


def check_energy_grid(e_lo, e_hi, what="energy grid"):
    """Validate bin edges (keV): finite, positive, e_hi > e_lo, increasing.  Returns arrays."""
    e_lo = np.asarray(e_lo, dtype=np.float64)
    e_hi = np.asarray(e_hi, dtype=np.float64)
    if e_lo.shape != e_hi.shape or e_lo.ndim != 1:
        raise ValueError(f"{what}: e_lo and e_hi must be 1-D of equal length, got {e_lo.shape} "
                         f"and {e_hi.shape}")
    if not (np.all(np.isfinite(e_lo)) and np.all(np.isfinite(e_hi))):
        raise ValueError(f"{what}: bin edges contain NaN or inf")
    if np.any(e_lo <= 0):
        raise ValueError(f"{what}: bin edges must be > 0 keV (first bad bin "
                         f"{int(np.argmax(e_lo <= 0))})")
    if np.any(e_hi <= e_lo):
        raise ValueError(f"{what}: e_hi must exceed e_lo in every bin (first bad bin "
                         f"{int(np.argmax(e_hi <= e_lo))})")
    if np.any(np.diff(e_lo) <= 0):
        raise ValueError(f"{what}: energy grid is not monotonically increasing (at bin "
                         f"{int(np.argmax(np.diff(e_lo) <= 0)) + 1})")
    return e_lo, e_hi


def list_components() -> dict:
    """Names and descriptions of the available components (built-in and registered)."""
    load_environment_components()
    return {name: spec.description for name, spec in COMPONENTS.items()}


def component(name: str, label: str | None = None, *, options=None, **overrides) -> Model:
    """Make a one-component model, e.g. ``component("powerlaw", PhoIndex=1.8, norm=1e-3)``.

    ``overrides`` set starting values; pass ``Parameter`` fields through :meth:`Model.set`.
    ``options`` (a mapping) are model options (:meth:`Model.with_options`), e.g.
    ``component("tbabs", options={"abund": "wilm"})``.
    A convolution component gives a model of kind ``"con"``, to be applied to an expression:
    ``component("myconv")(powerlaw())``.
    """
    load_environment_components()
    if name not in COMPONENTS:
        close = difflib.get_close_matches(name, list(COMPONENTS))
        raise ValueError(
            f"unknown model component {name!r}; available: {sorted(COMPONENTS)}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
        )
    spec = COMPONENTS[name]
    label = label or name
    unknown = set(overrides) - set(spec.param_names)
    if unknown:
        raise ValueError(f"component {name!r} has no parameter(s) {sorted(unknown)}; "
                         f"its parameters are {list(spec.param_names)}")
    params = tuple(
        Parameter(
            name=f"{label}.{d.name}",
            value=float(overrides.get(d.name, d.value)),
            unit=d.unit,
            min=d.min,
            max=d.max,
            frozen=d.frozen,
        )
        for d in spec.params
    )
    model = Model(("comp", name, label), params)
    return model.with_options(**options) if options else model


def _factory(name):
    def make(label=None, **overrides):
        return component(name, label, **overrides)

    make.__name__ = name
    make.__doc__ = f"{COMPONENTS[name].description} (XSPEC-style component {name!r})."
    return make


powerlaw = _factory("powerlaw")
cutoffpl = _factory("cutoffpl")
bknpower = _factory("bknpower")
cxb_gruber = _factory("cxb_gruber")
gaussian = _factory("gaussian")
fsline = _factory("fsline")
expdec = _factory("expdec")
constant = _factory("constant")
gabs = _factory("gabs")
# continua and lines (bkgjax.spectral.continua)
zpowerlw = _factory("zpowerlw")
bbody = _factory("bbody")
bbodyrad = _factory("bbodyrad")
zbbody = _factory("zbbody")
diskbb = _factory("diskbb")
bremss = _factory("bremss")
logpar = _factory("logpar")
lorentz = _factory("lorentz")
zgauss = _factory("zgauss")
agauss = _factory("agauss")
highecut = _factory("highecut")
zhighect = _factory("zhighect")


def _component_name(token: str) -> str:
    """Registry name of a component token (case-insensitive, as in XSPEC); a table model
    token ``atable{file}``, ``mtable{file}`` or ``etable{file}`` reads the file and registers
    (or reuses) its component (:func:`bkgjax.spectral.table_model.table_component`)."""
    if token.endswith("}"):
        from .table_model import table_component

        kind, _, path = token[:-1].partition("{")
        return table_component(kind.lower(), path.strip()).name
    load_environment_components()
    lowered = {name.lower(): name for name in COMPONENTS}
    if token.lower() in lowered:
        return lowered[token.lower()]
    close = difflib.get_close_matches(token.lower(), list(lowered))
    raise ValueError(f"unknown model component {token!r}"
                     + (f" (did you mean {close[0]!r}?)" if close else "")
                     + f"; supported: {', '.join(sorted(COMPONENTS))}")


def _tokenize(expression: str) -> list:
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
            if expression[j:j + 1] == "{":  # XSPEC's table models: atable{path/to/file.fits}
                close = expression.find("}", j)
                if expression[i:j].lower() not in ("atable", "mtable", "etable"):
                    raise ValueError(f"model expression {expression!r}: '{{' after "
                                     f"{expression[i:j]!r}: only atable, mtable and etable take "
                                     "a file name in braces")
                if close < 0 or not expression[j + 1:close].strip():
                    raise ValueError(f"model expression {expression!r}: {expression[i:j]}{{ needs "
                                     f"a file name and a closing '}}', e.g. "
                                     f"{expression[i:j]}{{model.fits}}")
                j = close + 1
            tokens.append(expression[i:j])
            i = j
        else:
            raise ValueError(f"model expression {expression!r}: unexpected character {ch!r} "
                             "(only component names, atable/mtable/etable{file}, '+', '*' and "
                             "parentheses are supported)")
    return tokens


def _parse_tokens(tokens, name_node, combine, error):
    """Recursive descent of the expression grammar shared by :func:`parse_expression` and
    :meth:`Model.subexpression`: ``expr := term ('+' term)*``, ``term := factor ('*'?
    factor)*`` (``a(b)`` multiplies), ``factor := NAME | '(' expr ')'``.  ``name_node(tok,
    peek, parenthesised)`` builds a NAME's node (``parenthesised()`` parses a following
    ``( expr )``), ``combine(op, left, right)`` a binary node; ``error(msg)`` raises."""
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def parenthesised():
        nonlocal pos
        pos += 1  # the "("
        node = parse_expr()
        if peek() != ")":
            error("missing ')'")
        pos += 1
        return node

    def parse_expr():
        nonlocal pos
        node = parse_term()
        while peek() == "+":
            pos += 1
            node = combine("+", node, parse_term())
        return node

    def parse_term():
        nonlocal pos
        node = parse_factor()
        while peek() in ("*", "("):
            if peek() == "*":
                pos += 1
            node = combine("*", node, parse_factor())
        return node

    def parse_factor():
        nonlocal pos
        tok = peek()
        if tok is None:
            error("ends unexpectedly")
        if tok == "(":
            return parenthesised()
        if tok in ("+", "*", ")"):
            error(f"unexpected {tok!r}")
        pos += 1
        return name_node(tok, peek, parenthesised)

    tree = parse_expr()
    if pos != len(tokens):
        error(f"unexpected {tokens[pos]!r}")
    return tree


def _is_convolution(token: str) -> bool:
    if token in ("+", "*", "(", ")"):
        return False
    try:
        return COMPONENTS[_component_name(token)].kind == "con"
    except ValueError:  # an unknown name: reported where the parser meets it
        return False


def _convolution_products(tokens) -> list:
    """XSPEC's ``conv*a*b`` form: a convolution component followed by ``*`` acts on the rest
    of its product term, up to the next ``+`` or the closing parenthesis of its level; the
    tokens are rewritten as ``conv(a*b)`` (``cflux*phabs*(pow + gauss)`` ->
    ``cflux(phabs*(pow + gauss))``, ``phabs*(pow + cflux*gauss)`` ->
    ``phabs*(pow + cflux(gauss))``, ``cflux*zashift*pow`` -> ``cflux(zashift(pow))``)."""
    out = list(tokens)
    for i in range(len(out) - 1):  # out grows by one token per rewrite, ahead of i
        if out[i + 1] != "*" or not _is_convolution(out[i]):
            continue
        end, depth = i + 2, 0
        while end < len(out) and not (depth == 0 and out[end] in ("+", ")")):
            depth += {"(": 1, ")": -1}.get(out[end], 0)
            end += 1
        if end > i + 2:  # an empty rest ("conv*", "conv*+ ...") is left to the parser's error
            out[i + 1:end] = ["(", *out[i + 2:end], ")"]
    return out


def parse_expression(expression: str) -> tuple:
    """Parse an XSPEC model expression into ``(tree, components)``.

    Grammar (recursive descent): ``expr := term ('+' term)*``, ``term := factor ('*'?
    factor)*`` (a factor directly followed by ``(`` multiplies it: XSPEC's ``a(b) = a*b``),
    ``factor := NAME | CONV '(' expr ')' | '(' expr ')'``, where ``CONV`` is the name of a
    convolution component (kind ``"con"``): ``conv(b)`` is the convolution acting on ``b``,
    not a product.  XSPEC's ``conv*b*c`` is accepted too: a convolution followed by ``*`` acts
    on the rest of its product term (up to the next ``+`` or closing parenthesis of its
    level), ``conv(b*c)``.  Component names are matched case-insensitively to
    :data:`COMPONENTS`.

    Returns
    -------
    tree : tuple
        Hashable binary tree, left-associative: ``("comp", name, k)`` with ``k`` the 0-based
        position of the component from the left (XSPEC's numbering), ``("+", a, b)``,
        ``("*", a, b)``, ``("conv", ("comp", name, k), a)`` (the convolution component
        ``name`` acting on ``a``; it is numbered before the components of ``a``).
    components : tuple of str
        Registry names of the components, left to right.

    Raises
    ------
    ValueError
        Unknown component, malformed expression, an additive and a multiplicative component
        added, two additive components multiplied (XSPEC rules), or a convolution component
        not followed by a parenthesised expression.
    """
    tokens = _convolution_products(_tokenize(expression))
    components = []

    def error(msg):
        raise ValueError(f"model expression {expression!r}: {msg}")

    def combine(op, left, right):
        kinds = (_kind(left), _kind(right))
        if op == "+" and kinds[0] != kinds[1]:
            error("cannot add additive and multiplicative components")
        if op == "*" and kinds == ("add", "add"):
            error("cannot multiply two additive components")
        return (op, left, right)

    def name_node(tok, peek, parenthesised):
        components.append(_component_name(tok))
        node = ("comp", components[-1], len(components) - 1)
        if COMPONENTS[components[-1]].kind != "con":
            return node
        if peek() != "(":
            error(f"convolution component {tok!r} must be followed by a parenthesised "
                  f"expression to act on, e.g. {tok}(powerlaw) (or XSPEC's {tok}*powerlaw)")
        return ("conv", node, parenthesised())

    tree = _parse_tokens(tokens, name_node, combine, error)
    return tree, tuple(components)


def expression_kind(tree) -> str:
    """"add" (photons/cm^2/s per bin) or "mul" (a factor per bin) of an expression tree
    (:func:`parse_expression` or :attr:`Model.expr`); a convolution has the kind of the
    expression it acts on ("con" for a bare convolution component of :attr:`Model.expr`)."""
    return _kind(tree)


def parse_model(expression: str, **options) -> Model:
    """Build a model from an XSPEC-like expression: ``"constant*(powerlaw + gaussian)"``;
    keyword arguments are model options (:meth:`Model.with_options`), e.g.
    ``parse_model("tbabs*powerlaw", abund="wilm")`` (XSPEC's ``abund wilm``).

    The expression is parsed by :func:`parse_expression` (so ``constant(powerlaw)`` is a
    product, ``myconv(powerlaw)`` a convolution when ``myconv`` is a convolution component, and
    names are case-insensitive); components take their default values and the labels of
    :meth:`Model.__add__` (``gaussian``, ``gaussian_2``, ...).
    """
    tree, _ = parse_expression(expression.strip())

    def build(node):
        if node[0] == "comp":
            return component(node[1])
        if node[0] == "conv":
            return component(node[1][1]).apply(build(node[2]))
        left, right = build(node[1]), build(node[2])
        return left + right if node[0] == "+" else left * right

    model = build(tree)
    return model.with_options(**options) if options else model
