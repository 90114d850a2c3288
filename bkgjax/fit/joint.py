r"""Joint fits: one source model over several spectra, per-data-set parameters, background
models fitted with the source (XSPEC data groups; Sherpa ``fit(1, 2)`` and ``set_bkg_model``).

A :class:`JointModel` holds the *global* parameter table of a joint fit:

* every parameter of the source model, shared by all data sets, unless it is named in
  ``per_dataset``: then data set ``k`` (1-based) has its own copy ``NAME@k`` (XSPEC's
  untied parameters of a data group; e.g. ``constant@2`` a cross-normalisation, or ``norm@1``,
  ``norm@2`` for two observations of a variable source with a shared index);
* with a ``background`` model, its parameters prefixed ``bkg.`` (per data set too when
  named in ``per_dataset``).

The background model ``B(E)`` (photons/cm^2/s in the background region) predicts
:math:`\mu_b = T_b A_b\,(B @ M_b)` counts in the background spectrum, :math:`M_b` the
background's own response when its file names one (``SpectralData.background_matrix``; Sherpa's
``get_bkg_model``: ``Response1D(bkg)``), else the source's :math:`M`; and
:math:`T_b A_b\,(B @ M) / r` in the source spectrum, through the SOURCE response, with
:math:`r = T_b\,\mathrm{BACKSCAL}_b A_b / (T_s\,\mathrm{BACKSCAL}_s A_s)` the ratio the
W-statistic uses: the source spectrum's model is
:math:`\mu_s = T_s A_s\,(S + (\mathrm{BACKSCAL}_s/\mathrm{BACKSCAL}_b)\,B) @ M` (Sherpa's
``set_bkg_model``, ``sherpa.astro.background.get_response_for_pha``: the source response
applied to the source model plus the background model scaled by the BACKSCAL ratio).  The
statistic is summed over all source spectra and, with a background model, all background
spectra.

Everything that shapes the computation (expressions, which global parameter feeds which
position of which data set) is a hashable :class:`JointStructure`, the static argument of
one compiled fit; values are arrays, so new starts, new data of the same shapes or another
file never recompile.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from functools import partial
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..spectral.model import Model, ModelStructure
from .dataset import STATISTICS, SpectralData, statistic_per_bin

__all__ = ["JointModel", "JointStructure", "joint_predicted", "joint_statistic",
           "joint_derivatives", "as_joint", "parse_tie", "evaluate_tie"]

BKG_PREFIX = "bkg."


@dataclass(frozen=True)
class JointStructure:
    """Static (hashable, value-free) description of a joint fit.

    ``index[k]`` lists, for data set ``k`` (0-based), the global parameter feeding each
    source-model parameter (``source.names`` order) then each background-model parameter;
    ``links`` are global ties ``(i, tree)``: parameter ``i`` takes the value of the
    expression ``tree`` of other global parameters (:func:`parse_tie`), in dependency order.
    """

    source: ModelStructure
    background: ModelStructure | None
    index: tuple
    links: tuple
    n_global: int

    @property
    def n_datasets(self) -> int:
        return len(self.index)

    def dataset_theta(self, theta, k):
        """(source values, background values or None) of data set ``k`` from the global
        vector (global ties applied first)."""
        theta = self.apply_links(theta)
        local = theta[np.asarray(self.index[k], dtype=np.int32)]
        n_src = len(self.source.names)
        return local[:n_src], (local[n_src:] if self.background is not None else None)

    def apply_links(self, theta):
        for i, tree in self.links:
            theta = theta.at[i].set(evaluate_tie(tree, lambda j, t=theta: t[j]))
        return theta


def _fluxes(structure: JointStructure, theta, k, data: SpectralData):
    """Model fluxes per energy bin of data set ``k``: (1 or 2, n_energy) rows (source,
    background model)."""
    src, bkg = structure.dataset_theta(theta, k)
    rows = [structure.source.evaluate(src, data.e_lo, data.e_hi)]
    if bkg is not None:
        rows.append(structure.background.evaluate(bkg, data.e_lo, data.e_hi))
    return jnp.stack(rows)


def _folded(fluxes, data: SpectralData, with_background: bool):
    """Flux rows ``fluxes[..., row, energy]`` (source, background model) through the responses:
    ``[..., row, bin]`` rows source and background model through the source response, then,
    when the background has its own response, the background model through it."""
    folded = fluxes @ data.matrix
    if with_background and data.background_matrix is not None:
        folded = jnp.concatenate([folded, fluxes[..., 1:2, :] @ data.background_matrix], axis=-2)
    return folded


def _fold_parts(folded, data: SpectralData):
    """(source model in the source spectrum, background model in the source spectrum,
    background model in the background spectrum) from :func:`_folded` rows."""
    scale_s = data.exposure * data.areascal
    scale_b = data.background_exposure * data.background_areascal
    return (scale_s * folded[..., 0, :], scale_b * folded[..., 1, :] / data.background_ratio,
            scale_b * folded[..., -1, :])


def _fold(folded, data: SpectralData, with_background: bool):
    """Counts of the spectra of one data set from the folded rows ``folded[..., row, bin]``
    of :func:`_folded` (linear, so it maps derivative rows too): source spectrum, then
    background spectrum."""
    if not with_background:
        return (data.exposure * data.areascal * folded[..., 0, :],)
    source, background_in_source, background = _fold_parts(folded, data)
    return (source + background_in_source, background)


def _fold_adjoint(s1, data: SpectralData, with_background: bool):
    """Transpose of ``_fold(_folded(.))``: per-spectrum per-bin weights -> per-flux-row
    energy weights ``(rows, n_energy)``."""
    scale_s = data.exposure * data.areascal
    if not with_background:
        return (scale_s * s1[0])[None] @ data.matrix.T
    scale_b = data.background_exposure * data.background_areascal
    in_source = scale_b * s1[0] / data.background_ratio
    if data.background_matrix is None:
        return jnp.stack([scale_s * s1[0], in_source + scale_b * s1[1]]) @ data.matrix.T
    weights = jnp.stack([scale_s * s1[0], in_source]) @ data.matrix.T
    return weights.at[1].add((scale_b * s1[1]) @ data.background_matrix.T)


def _background_spectrum(data: SpectralData) -> SpectralData:
    """The background spectrum as a data set of its own (its counts are what is fitted)."""
    return dataclasses.replace(data, counts=data.background_counts, background_counts=None,
                               background_ratio=None)


def _source_spectrum(data: SpectralData) -> SpectralData:
    """The source spectrum alone: with a background model its background is modelled, not
    subtracted (chi2) or profiled (wstat)."""
    return dataclasses.replace(data, background_counts=None, background_ratio=None)


def _spectra(data: SpectralData, with_background: bool):
    """The spectra whose statistic is summed for one data set."""
    if not with_background:
        return (data,)
    return (_source_spectrum(data), _background_spectrum(data))


def _per_bin(stat, mus, data, with_background):
    """Per-bin statistic of each spectrum of one data set (same statistic for both)."""
    return [statistic_per_bin(stat, mu, spectrum)
            for mu, spectrum in zip(mus, _spectra(data, with_background))]


def joint_predicted(structure: JointStructure, theta, datasets):
    """Per data set: ``{"source": total source-spectrum counts, "source_model": the source
    model's part, "background": background-spectrum counts}`` (the last two only with a
    background model, where "source_background" is its part of the source spectrum)."""
    out = []
    with_bkg = structure.background is not None
    for k, data in enumerate(datasets):
        folded = _folded(_fluxes(structure, theta, k, data), data, with_bkg)
        if with_bkg:
            source, background_in_source, background = _fold_parts(folded, data)
            entry = {"source": source + background_in_source, "background": background,
                     "source_background": background_in_source, "source_model": source}
        else:
            entry = {"source": _fold(folded, data, False)[0]}
        out.append(entry)
    return tuple(out)


def joint_statistic(structure: JointStructure, stat: str, theta, datasets):
    """Total statistic of the joint model at the global values ``theta``."""
    with_bkg = structure.background is not None
    total = 0.0
    for k, data in enumerate(datasets):
        mus = _fold(_folded(_fluxes(structure, theta, k, data), data, with_bkg), data, with_bkg)
        total = total + sum(jnp.sum(v) for v in _per_bin(stat, mus, data, with_bkg))
    return total


def joint_derivatives(structure: JointStructure, stat, free_idx, theta_fixed, datasets, lower,
                      upper):
    r"""``u -> (S, dS/du, d2S/du2)`` of the joint statistic in unconstrained coordinates.

    Per data set the predicted counts are linear in the flux rows :math:`F` (source and
    background model), so with :math:`J = \partial\mu/\partial\theta` and the per-bin
    derivatives :math:`s', s''` of each spectrum's statistic,
    :math:`\nabla^2 S = \sum J\,\mathrm{diag}(s'')J^T + \nabla^2_\theta [F(\theta)\cdot W]`,
    :math:`W` the transposed fold of :math:`s'` (see :func:`bkgjax.fit.core.folded_derivatives`,
    the one-spectrum case): the exact Hessian for n + 2 passes over each response.
    """
    from .optimize import unbounded_derivatives

    idx = jnp.asarray(free_idx, dtype=jnp.int32)
    n = len(free_idx)
    basis = jnp.eye(n, dtype=jnp.float64)
    with_bkg = structure.background is not None

    def expand(theta_free):
        return theta_fixed.at[idx].set(theta_free)

    def bin_first(stat_fn):
        return lambda mu: jax.jvp(stat_fn, (mu,), (jnp.ones_like(mu),))

    def theta_derivatives(theta):
        value = 0.0
        grad = jnp.zeros(n)
        hess = jnp.zeros((n, n))
        for k, data in enumerate(datasets):
            flux_k = lambda t, k=k, data=data: _fluxes(structure, expand(t), k, data)  # noqa: E731
            flux, flux_jvp = jax.linearize(flux_k, theta)
            flux_jac = jax.vmap(flux_jvp)(basis)                             # (n, rows, E)
            folded = _folded(jnp.concatenate([flux[None], flux_jac], axis=0), data, with_bkg)
            mus = _fold(folded, data, with_bkg)                              # (n+1, C) each
            spectra = _spectra(data, with_bkg)
            s1_all = []
            for mu, spectrum in zip(mus, spectra):
                per_bin = partial(statistic_per_bin, stat, data=spectrum)
                (values, s1), (_, s2) = jax.jvp(bin_first(per_bin), (mu[0],),
                                                (jnp.ones_like(mu[0]),))
                jac = mu[1:]
                value = value + jnp.sum(values)
                grad = grad + jac @ s1
                hess = hess + (jac * s2) @ jac.T
                s1_all.append(s1)
            weights = _fold_adjoint(s1_all, data, with_bkg)                  # (rows, E)
            hess = hess + jax.jacfwd(jax.jacfwd(
                lambda t, f=flux_k, w=weights: jnp.sum(f(t) * w)))(theta)
        return value, grad, hess

    return unbounded_derivatives(theta_derivatives, lower, upper)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JointModel:
    """Global parameter table of a joint fit (module docstring).

    Build with :meth:`JointModel.create`; change parameters with :meth:`set` (names: the
    qualified ``powerlaw.norm@2``, ``bkg.powerlaw.PhoIndex``, or the display names
    ``norm@2``, ``bkg.PhoIndex``, ``PhoIndex``).  It offers the same views as
    :class:`~bkgjax.spectral.Model` that fits and results use (``names``, ``free_names``,
    ``parameters``, ``display_names``, ``__getitem__``, ``set``, ``with_values``).
    """

    source: Model
    background: Model | None
    n_datasets: int
    per_dataset: tuple
    parameters: tuple

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def create(cls, source: Model, n_datasets: int = 1, *, per_dataset: Sequence[str] = (),
               background: Model | None = None) -> "JointModel":
        """Joint model of ``source`` over ``n_datasets`` data sets; ``per_dataset`` names
        (short or qualified, ``bkg.``-prefixed for the background model) get one copy per
        data set, every other parameter is shared."""
        if isinstance(n_datasets, bool) or int(n_datasets) != n_datasets or n_datasets < 1:
            raise ValueError(f"n_datasets must be an integer >= 1, got {n_datasets!r}")
        n_datasets = int(n_datasets)
        if source.kind != "add":
            raise ValueError(f"source model {source} is multiplicative only; add an additive "
                             "component")
        if background is not None and background.kind != "add":
            raise ValueError(f"background model {background} is multiplicative only; add an "
                             "additive component")
        qualified = []
        for name in per_dataset:
            if n_datasets == 1:
                raise ValueError(f"per_dataset {name!r}: there is one data set only; a "
                                 "per-data-set parameter needs two or more")
            for q in _resolve_model_names(source, background, name, "per_dataset"):
                if q not in qualified:
                    qualified.append(q)
        params = []
        for prefix, model in (("", source), (BKG_PREFIX, background)):
            if model is None:
                continue
            for p in model.parameters:
                name = prefix + p.name
                link = None if p.link is None else prefix + p.link
                if name in qualified:
                    if p.link is not None:
                        raise ValueError(f"per_dataset {name!r}: the parameter is linked to "
                                         f"{p.link}; unlink it first")
                    params.extend(dataclasses.replace(p, name=f"{name}@{k}", link=None)
                                  for k in range(1, n_datasets + 1))
                else:
                    params.append(dataclasses.replace(p, name=name, link=link))
        return cls(source, background, n_datasets, tuple(qualified), tuple(params))

    def __post_init__(self):
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in joint model: {names}")
        _tie_order(self.parameters)  # unknown names, malformed expressions, cycles

    # -- views ---------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "add"

    @property
    def names(self) -> tuple:
        return tuple(p.name for p in self.parameters)

    @property
    def free_names(self) -> tuple:
        return tuple(p.name for p in self.parameters if p.is_free)

    def display_names(self) -> dict:
        """Qualified -> display names: the model's shortest unambiguous name, ``@k`` for a
        data set's copy, ``bkg.`` for the background model."""
        shown = {}
        for prefix, model in (("", self.source), (BKG_PREFIX, self.background)):
            if model is not None:
                shown.update({prefix + q: prefix + d for q, d in model.display_names().items()})
        out = {}
        for p in self.parameters:
            base, _, k = p.name.partition("@")
            out[p.name] = shown[base] + (f"@{k}" if k else "")
        return out

    def __getitem__(self, name):
        return self.parameters[self._index(name)]

    def _index(self, name) -> int:
        names = self.names
        if name in names:
            return names.index(name)
        display = self.display_names()
        matches = [i for i, p in enumerate(self.parameters) if display[p.name] == name]
        if not matches:  # short XSPEC name of a parameter whose display name is qualified
            base, _, k = name.partition("@")
            prefix = BKG_PREFIX if base.startswith(BKG_PREFIX) else ""
            short = base[len(prefix):]
            matches = [i for i, p in enumerate(self.parameters)
                       if p.name.startswith(prefix) and (prefix or not p.name.startswith(BKG_PREFIX))
                       and p.name.partition("@")[0].split(".")[-1] == short
                       and p.name.partition("@")[2] == k]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise KeyError(f"parameter name {name!r} is ambiguous; use one of "
                           f"{[display[names[i]] for i in matches]}")
        per = [display[p.name] for p in self.parameters
               if name in (p.name.partition("@")[0], display[p.name].partition("@")[0])]
        if per:
            raise KeyError(f"parameter {name!r} has one copy per data set: use one of {per}")
        close = difflib.get_close_matches(name, list(display.values()))
        raise KeyError(f"no parameter {name!r} in the joint model; did you mean {close}? "
                       f"(parameters: {list(display.values())})")

    def __str__(self) -> str:
        text = str(self.source)
        if self.background is not None:
            text += f" (background: {self.background})"
        return text

    # -- updating ------------------------------------------------------------------------------
    def set(self, name, value=None, *, frozen=None, min=None, max=None, prior=None, link=None):
        """Copy with parameter ``name`` changed; ``link`` names another global parameter
        (display or qualified name) whose value this one takes."""
        i = self._index(name)
        changes = {k: v for k, v in (("value", value), ("frozen", frozen), ("min", min),
                                      ("max", max), ("prior", prior)) if v is not None}
        if link is not None:  # a parameter name or an expression of them ("1.1 * norm@1")
            changes["link"] = " ".join(
                self.parameters[self._index(tok)].name if kind == "name" else tok
                for kind, tok in _tie_tokens(str(link)))
        new = list(self.parameters)
        new[i] = dataclasses.replace(self.parameters[i], **changes)
        return dataclasses.replace(self, parameters=tuple(new))

    def with_values(self, values: Mapping[str, float]) -> "JointModel":
        model = self
        for name, value in values.items():
            model = model.set(name, float(value))
        return model

    def values(self) -> dict:
        return {p.name: p.value for p in self.parameters}

    def resolve(self, values: Mapping[str, float]) -> dict:
        full = {p.name: values.get(p.name, p.value) for p in self.parameters}
        names = self.names
        for i, tree in _tie_order(self.parameters):
            full[names[i]] = float(evaluate_tie(tree, lambda j: full[names[j]]))
        return full

    @property
    def structure(self) -> JointStructure:
        names = self.names
        per = set(self.per_dataset)
        index = []
        for k in range(1, self.n_datasets + 1):
            row = []
            for prefix, model in (("", self.source), (BKG_PREFIX, self.background)):
                if model is None:
                    continue
                for p in model.parameters:
                    q = prefix + p.name
                    row.append(names.index(f"{q}@{k}" if q in per else q))
            index.append(tuple(row))
        links = _tie_order(self.parameters)
        return JointStructure(self.source.structure,
                              None if self.background is None else self.background.structure,
                              tuple(index), links, len(names))

    def dataset_model(self, k: int, values: Mapping[str, float] | None = None) -> Model:
        """The source model of data set ``k`` (1-based) with this table's values."""
        full = self.resolve(values or {})
        per = set(self.per_dataset)
        local = {p.name: full[f"{p.name}@{k}" if p.name in per else p.name]
                 for p in self.source.parameters}
        return self.source.with_values({n: v for n, v in local.items()
                                        if self.source[n].link is None})


_TIE_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                        r"|(?P<name>[A-Za-z_][\w.@]*)|(?P<op>\*\*|[-+*/()]))")


def _tie_tokens(text):
    """(kind, token) pairs of a tie expression: numbers, parameter names, operators."""
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        match = _TIE_TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"link {text!r}: unexpected {text[pos:]!r} (numbers, parameter "
                             "names, + - * / ** and parentheses)")
        out.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    if not out:
        raise ValueError("link: empty expression")
    return out


def parse_tie(text, index_of):
    """Hashable tree of a tie expression (XSPEC ``newpar 5 = 1.1*p2``; Sherpa links to
    expressions): ``("num", v)``, ``("par", j)`` with ``j = index_of(name)``, ``("neg", a)``,
    ``(op, a, b)`` for + - * / **."""
    tokens = _tie_tokens(text)
    pos = 0

    def peek():
        return tokens[pos][1] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr():
        node = term()
        while peek() in ("+", "-"):
            node = (take()[1], node, term())
        return node

    def term():
        node = unary()
        while peek() in ("*", "/"):
            node = (take()[1], node, unary())
        return node

    def unary():
        if peek() == "-":
            take()
            return ("neg", unary())
        if peek() == "+":
            take()
            return unary()
        node = atom()
        if peek() == "**":
            take()
            return ("**", node, unary())
        return node

    def atom():
        if pos >= len(tokens):
            raise ValueError(f"link {text!r}: ends unexpectedly")
        kind, tok = take()
        if kind == "num":
            return ("num", float(tok))
        if kind == "name":
            return ("par", index_of(tok))
        if tok == "(":
            node = expr()
            if peek() != ")":
                raise ValueError(f"link {text!r}: missing ')'")
            take()
            return node
        raise ValueError(f"link {text!r}: unexpected {tok!r}")

    tree = expr()
    if pos != len(tokens):
        raise ValueError(f"link {text!r}: unexpected {tokens[pos][1]!r}")
    return tree


def evaluate_tie(tree, value_of):
    """Value of a :func:`parse_tie` tree (``value_of(j)`` gives parameter ``j``; traceable)."""
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "par":
        return value_of(tree[1])
    if kind == "neg":
        return -evaluate_tie(tree[1], value_of)
    a, b = evaluate_tie(tree[1], value_of), evaluate_tie(tree[2], value_of)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b, "**": a ** b}[kind]


def _tie_order(parameters) -> tuple:
    """``((i, tree), ...)`` of the linked parameters, each after the linked parameters it
    uses; clear errors for unknown names and cycles."""
    names = [p.name for p in parameters]

    def index_of(name):
        if name not in names:
            raise ValueError(f"links to unknown parameter {name!r}")
        return names.index(name)

    trees = {}
    for i, p in enumerate(parameters):
        if p.link is not None:
            try:
                trees[i] = parse_tie(p.link, index_of)
            except ValueError as err:
                raise ValueError(f"parameter {p.name}: {err}") from None

    def uses(tree):
        if tree[0] == "par":
            return {tree[1]}
        if tree[0] == "num":
            return set()
        return set().union(*(uses(t) for t in tree[1:]))

    order, done = [], set()
    pending = dict(trees)
    while pending:
        ready = [i for i, t in pending.items() if not (uses(t) & set(pending))]
        if not ready:
            raise ValueError(f"links form a cycle: {[names[i] for i in pending]}")
        for i in ready:
            order.append((i, pending.pop(i)))
            done.add(i)
    return tuple(order)


def _resolve_model_names(source, background, name, what):
    """Qualified (``bkg.``-prefixed for the background) names of a model parameter, or of
    every parameter of a component when ``name`` is a component label (``constant``)."""
    text = str(name).strip()
    if text.startswith(BKG_PREFIX):
        if background is None:
            raise ValueError(f"{what} {name!r}: there is no background model")
        model, prefix, text = background, BKG_PREFIX, text[len(BKG_PREFIX):]
    else:
        model, prefix = source, ""
    of_label = [prefix + p.name for p in model.parameters if p.name.split(".")[0] == text]
    if of_label:
        return of_label
    try:
        return [prefix + model[text].name]
    except KeyError as err:
        raise ValueError(f"{what} {name!r}: {err.args[0]}") from None


def as_joint(model, datasets) -> tuple:
    """``(JointModel, tuple of SpectralData)`` from a Model or JointModel and one data set
    or a sequence of them (a Model over several data sets shares every parameter)."""
    if isinstance(datasets, SpectralData):
        datasets = (datasets,)
    datasets = tuple(datasets)
    if not datasets or not all(isinstance(d, SpectralData) for d in datasets):
        raise TypeError("data must be a SpectralData or a non-empty sequence of them")
    if isinstance(model, Model):
        model = JointModel.create(model, len(datasets))
    if not isinstance(model, JointModel):
        raise TypeError(f"model must be a Model or JointModel, got {type(model).__name__}")
    if model.n_datasets != len(datasets):
        raise ValueError(f"the joint model is built for {model.n_datasets} data set(s) but "
                         f"{len(datasets)} were given")
    return model, datasets


def check_joint(model: JointModel, datasets, stat: str) -> None:
    """Clear errors for data the statistic or the background model cannot use."""
    if stat not in STATISTICS:
        raise ValueError(f"unknown statistic {stat!r}; choose one of {STATISTICS}")
    for k, data in enumerate(datasets, start=1):
        where = f"data set {k} ({data.name})"
        if model.background is not None:
            if not data.has_background:
                raise ValueError(f"{where}: a background model needs a background spectrum "
                                 "(BACKFILE); load one or drop the background model")
            if data.background_exposure is None or data.background_areascal is None:
                raise ValueError(f"{where}: a background model needs the background exposure "
                                 "and AREASCAL (SpectralData.from_arrays(background_exposure=...))")
            if stat in ("wstat", "pgstat"):
                raise ValueError(f"{where}: {stat} profiles the background; with a background "
                                 "model use cstat, cash or chi2")
        elif stat in ("wstat", "pgstat") and not data.has_background:
            raise ValueError(f"{where}: stat={stat!r} needs a background spectrum; load one or "
                             "use cstat/cash")
        if stat == "chi2datavar":
            for spectrum in _spectra(data, model.background is not None):
                variance = np.asarray(spectrum.counts)
                if spectrum.background_counts is not None:  # subtracted: S + B/r^2
                    variance = variance + np.asarray(spectrum.background_counts) / np.asarray(
                        spectrum.background_ratio) ** 2
                if bool(np.any(variance == 0)):
                    raise ValueError(f"{where}: chi2datavar needs counts > 0 in every bin; group "
                                     "the spectrum (grouping='min-counts:N') or use chi2/cstat")


def n_bins_of(model: JointModel, datasets) -> int:
    """Bins entering the statistic: source spectra, plus background spectra when a background
    model is fitted."""
    per = 2 if model.background is not None else 1
    return sum(per * d.n_bins for d in datasets)
