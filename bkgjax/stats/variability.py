r"""Epoch-to-epoch variability of aperture count rates (nustar_nep_survey_detection.txt, 6.2).

The paper's test (section 6.2, Zhao et al. 2021)
------------------------------------------------
In each epoch *i* the total counts :math:`N_i` and background counts :math:`B_i` in the 20"
aperture and the vignetting-corrected exposure :math:`t_i` give the rate
:math:`r_i = (N_i - B_i)/t_i`; its errors are Gehrels (1986) eqs. (9) and (12) "at 90 per cent
confidence level" applied to :math:`N_i` (the background is a model):
:math:`\sigma^+_i = (\lambda_u(N_i) - N_i)/t_i`, :math:`\sigma^-_i = (N_i - \lambda_l(N_i))/t_i`
with :math:`S = \Phi^{-1}(0.95) = 1.645` (each side 5 %, a two-sided 90 % interval).  Two
epochs *i*, *j* differ ("variable at 90 % confidence") when

.. math:: |r_i - r_j| > \mathrm{Err_{cob}} = \sqrt{\mathrm{Err}_i^2 + \mathrm{Err}_j^2},

where we take, as the paper's "combined errors" leave open, the errors that face each other:
the lower error of the higher rate and the upper error of the lower rate.
:func:`pairwise_rate_test` returns :math:`z = |r_i - r_j|/\mathrm{Err_{cob}}` (variable iff
z > 1) and the Gaussian two-sided false probability of constancy
:math:`p = 2[1 - \Phi(S z)]` (p < 0.10 iff z > 1), for every pair of epochs; the paper
calls epoch pairs (1, 2) and (2, 3) "short term" and (1, 3) "long term".  With several pairs
per source, the chance that *some* pair of a constant source is flagged exceeds 10 %.

Poisson-exact version
---------------------
The paper's test is Gaussian; at a few counts per epoch the Gehrels errors are asymmetric and
the criterion is not calibrated.  :func:`poisson_pairwise_test` tests the same hypothesis
exactly for Poisson counts: under :math:`H_0` both epochs have one source rate *r* and
:math:`N_i \sim \mathrm{Pois}(B_i + r t_i)`.  *r* is replaced by its constrained maximum
likelihood estimate :math:`\hat r \ge 0` (the positive root of
:math:`\sum_i N_i/(a_i + r) = \sum_i t_i`, :math:`a_i = B_i/t_i`; 0 when that root is
negative), and the p-value of the observed rate difference is the exact probability

.. math:: p = \sum_{n_1, n_2} \mathrm{Pois}(n_1; \hat\mu_1)\,\mathrm{Pois}(n_2; \hat\mu_2)\,
          \mathbf 1\left[|d(n_1, n_2)| \ge |d_\mathrm{obs}|\right],\qquad
          d = \frac{n_1 - B_1}{t_1} - \frac{n_2 - B_2}{t_2},

summed over all count pairs up to :math:`\hat\mu + 12\sqrt{\hat\mu} + 30` (the omitted tail
is < 1e-20).  (A parametric "plug-in" exact test: the nuisance rate is fixed at its estimate;
discreteness makes it slightly conservative at very low counts.)  VARIABLE = p < 1 -
``confidence``.

Epochs with zero exposure (source outside the field in that epoch) are not tested: their
pairs get p = NaN, z = NaN and VARIABLE = False, and ``tested`` is False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from scipy.stats import norm

from . import intervals

__all__ = ["PairwiseVariability", "pairwise_rate_test", "poisson_pairwise_test", "epoch_pairs"]


@dataclass(frozen=True)
class PairwiseVariability:
    """Per source (rows) and epoch pair (columns, in the order of ``pairs``): rate difference
    ``delta_rate`` (r_i - r_j, counts/s), ``error`` (combined 90 % error, counts/s; NaN for the
    exact test), ``statistic`` (z for the paper's test, |d_obs| for the exact one), ``p_value``
    (false probability of a constant rate), ``variable_pair`` (p < 1 - confidence) and
    ``tested``; per source ``variable`` (any pair variable) and ``min_p``."""

    pairs: tuple
    delta_rate: np.ndarray
    error: np.ndarray
    statistic: np.ndarray
    p_value: np.ndarray
    variable_pair: np.ndarray
    tested: np.ndarray
    variable: np.ndarray
    min_p: np.ndarray
    confidence: float


def epoch_pairs(n_epochs: int):
    """All pairs (i, j), i < j, of ``n_epochs`` epochs, in lexicographic order."""
    return tuple(combinations(range(int(n_epochs)), 2))


def _validate(counts, background, exposure):
    counts = np.atleast_2d(np.asarray(counts, dtype=float))
    background = np.broadcast_to(np.asarray(background, dtype=float), counts.shape).copy()
    exposure = np.broadcast_to(np.asarray(exposure, dtype=float), counts.shape).copy()
    if counts.shape[1] < 2:
        raise ValueError(f"variability needs >= 2 epochs (columns), got shape {counts.shape}")
    for name, arr in (("counts", counts), ("background", background), ("exposure", exposure)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} has {int(np.sum(~np.isfinite(arr)))} non-finite values")
        if np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0 (min {arr.min():g})")
    if np.any(counts != np.round(counts)):
        raise ValueError("counts must be integers (total counts in the aperture)")
    return counts, background, exposure


def _result(pairs, delta, err, stat, p, tested, confidence):
    alpha = 1.0 - confidence
    variable_pair = tested & (p < alpha)
    with np.errstate(invalid="ignore"):
        min_p = np.where(tested.any(axis=1), np.nanmin(np.where(tested, p, np.inf), axis=1),
                         np.nan)
    return PairwiseVariability(pairs=pairs, delta_rate=delta, error=err, statistic=stat,
                               p_value=p, variable_pair=variable_pair, tested=tested,
                               variable=variable_pair.any(axis=1), min_p=min_p,
                               confidence=float(confidence))


def pairwise_rate_test(counts, background, exposure, *, confidence=0.9) -> PairwiseVariability:
    """The paper's test (module docstring): rate differences against the combined Gehrels
    errors at ``confidence`` (two-sided; 0.9 in the paper) for every pair of epochs.

    ``counts``, ``background`` (expected background counts in the aperture) and ``exposure``
    (s) have shape (n_sources, n_epochs); background and exposure broadcast.
    """
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    counts, background, exposure = _validate(counts, background, exposure)
    s = float(norm.ppf(0.5 + 0.5 * float(confidence)))
    up = np.asarray(intervals.gehrels_upper(counts, s)) - counts
    lo = counts - np.asarray(intervals.gehrels_lower(counts, s))
    observed = exposure > 0
    t = np.where(observed, exposure, 1.0)
    rate = (counts - background) / t
    pairs = epoch_pairs(counts.shape[1])
    i, j = (np.array(x, dtype=int) for x in zip(*pairs))
    delta = rate[:, i] - rate[:, j]
    # errors facing each other: lower error of the higher rate, upper error of the lower one
    err_i = np.where(delta >= 0, lo[:, i], up[:, i]) / t[:, i]
    err_j = np.where(delta >= 0, up[:, j], lo[:, j]) / t[:, j]
    err = np.hypot(err_i, err_j)
    tested = observed[:, i] & observed[:, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(tested, np.abs(delta) / err, np.nan)
    p = np.where(tested, 2.0 * norm.sf(s * z), np.nan)
    delta = np.where(tested, delta, np.nan)
    err = np.where(tested, err, np.nan)
    return _result(pairs, delta, err, z, p, tested, confidence)


def _common_rate(n1, n2, a1, a2, t1, t2):
    r"""Constrained MLE of the common rate: positive root of
    T r^2 + (T(a1 + a2) - n1 - n2) r + T a1 a2 - n1 a2 - n2 a1 = 0 (T = t1 + t2), else 0."""
    tt = t1 + t2
    b = tt * (a1 + a2) - n1 - n2
    c = tt * a1 * a2 - n1 * a2 - n2 * a1
    disc = jnp.sqrt(jnp.maximum(b * b - 4.0 * tt * c, 0.0))
    # numerically stable larger root
    root = jnp.where(b < 0, (-b + disc) / (2.0 * tt), -2.0 * c / jnp.where(b + disc > 0,
                                                                            b + disc, 1.0))
    root = jnp.where((b >= 0) & (c >= 0), 0.0, root)
    return jnp.maximum(root, 0.0)


@partial(jax.jit, static_argnames=("grid",))
def _exact_pair_p(n1, n2, b1, b2, t1, t2, *, grid):
    r = _common_rate(n1, n2, b1 / t1, b2 / t2, t1, t2)
    mu1, mu2 = b1 + r * t1, b2 + r * t2
    k = jnp.arange(grid, dtype=jnp.float64)

    def logpmf(mu):
        # Pois(k; mu) with mu = 0 -> point mass at 0 (double where)
        safe = jnp.where(mu > 0, mu, 1.0)
        lp = k[None, :] * jnp.log(safe)[:, None] - safe[:, None] - gammaln(k + 1.0)[None, :]
        return jnp.where((mu > 0)[:, None], lp, jnp.where(k[None, :] == 0, 0.0, -jnp.inf))

    p1 = jnp.exp(logpmf(mu1))  # [S, G]
    p2 = jnp.exp(logpmf(mu2))
    d_obs = jnp.abs((n1 - b1) / t1 - (n2 - b2) / t2)
    d = ((k[None, :, None] - b1[:, None, None]) / t1[:, None, None]
         - (k[None, None, :] - b2[:, None, None]) / t2[:, None, None])
    # a relative slack of 1e-12 so that the observed pair itself always counts
    extreme = jnp.abs(d) >= d_obs[:, None, None] * (1.0 - 1e-12)
    p = jnp.einsum("si,sj,sij->s", p1, p2, extreme.astype(jnp.float64))
    return jnp.clip(p, 0.0, 1.0), r


def poisson_pairwise_test(counts, background, exposure, *, confidence=0.9
                          ) -> PairwiseVariability:
    """Poisson-exact version of the pairwise test (module docstring): for every pair of epochs
    the exact probability, under a common rate fixed at its constrained MLE, of a rate
    difference at least as large as observed.  Same inputs and output as
    :func:`pairwise_rate_test` (``error`` is NaN; ``statistic`` = |r_i - r_j|)."""
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    counts, background, exposure = _validate(counts, background, exposure)
    observed = exposure > 0
    t = np.where(observed, exposure, 1.0)
    pairs = epoch_pairs(counts.shape[1])
    n_src = counts.shape[0]
    shape = (n_src, len(pairs))
    delta = np.full(shape, np.nan)
    p = np.full(shape, np.nan)
    tested = np.zeros(shape, dtype=bool)
    for col, (i, j) in enumerate(pairs):
        ok = observed[:, i] & observed[:, j]
        tested[:, col] = ok
        if not ok.any():
            continue
        args = [counts[ok, i], counts[ok, j], background[ok, i], background[ok, j],
                t[ok, i], t[ok, j]]
        # grid: the largest mean under H0 is below max(n1 + n2 + B1 + B2) (the fitted source
        # counts never exceed the total), plus 12 sigma and 30
        mu_max = float(np.max(args[0] + args[1] + args[2] + args[3]))
        need = mu_max + 12.0 * math.sqrt(mu_max) + 30.0
        grid = max(64, 1 << int(math.ceil(need) - 1).bit_length())
        m = int(ok.sum())
        pad = max(1, 1 << (m - 1).bit_length())
        padded = [np.concatenate([a, np.repeat(a[:1], pad - m)]) for a in args]
        p_ok, _ = _exact_pair_p(*[jnp.asarray(a) for a in padded], grid=grid)
        p[ok, col] = np.asarray(p_ok)[:m]
        delta[ok, col] = (args[0] - args[2]) / args[4] - (args[1] - args[3]) / args[5]
    return _result(pairs, delta, np.full(shape, np.nan), np.abs(delta), p, tested, confidence)
