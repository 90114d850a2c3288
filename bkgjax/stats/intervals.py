r"""Poisson confidence limits and detection probabilities (pure JAX, vectorised).

* Gehrels (1986, ApJ 303, 336) approximations: eq. (9) for the upper limit and eq. (12) with
  the :math:`\beta, \gamma` of his Table 3 for the lower limit.  ``S`` is the equivalent
  Gaussian number of sigma of a *single-sided* limit (S = 1 -> CL 0.8413, S = 1.645 -> 0.95).
* Exact single-sided Poisson limits (Garwood 1936), the values Gehrels tabulates, from the
  regularised incomplete gamma function, solved by bisection in :math:`\ln\lambda` so that the
  whole computation is one vectorised JAX expression (no SciPy in the loop).
* The false probability of nustar_nep_survey_detection.txt eq. (1) and
  DET_ML = :math:`-\ln P(\ge N\,|\,B)` (section 3.2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammainc, gammaincc, gammaln
from jax.scipy.stats import norm as _norm

__all__ = [
    "gehrels_upper",
    "gehrels_lower",
    "poisson_upper_limit",
    "poisson_lower_limit",
    "poisson_interval",
    "false_probability",
    "log_false_probability",
    "log_false_probability_series",
    "false_probability_series_terms",
    "det_ml",
    "Z_90",
]

Z_90 = 1.6448536269514722  # Phi^-1(0.95): half-width of a two-sided 90 % Gaussian interval in sigma

# Gehrels (1986), Table 3: S -> (beta, gamma) of eq. (12).  S = 1 has beta = 0.
_GEHRELS_BETA_GAMMA = {
    1.0: (0.0, 0.0),
    1.282: (0.010, -4.0),
    1.645: (0.031, -2.50),
    1.960: (0.048, -2.28),
    2.0: (0.050, -2.22),
    2.326: (0.069, -2.07),
    2.576: (0.081, -2.00),
    3.0: (0.097, -1.88),
}


def gehrels_upper(n, sigma=1.0):
    r"""Gehrels (1986) eq. (9): single-sided upper limit of a Poisson mean.

    .. math:: \lambda_u \approx (n+1)\left[1 - \frac{1}{9(n+1)} + \frac{S}{3\sqrt{n+1}}\right]^3

    Accurate to about 1 % or better for all n at S <= 3 (Gehrels, section III).
    """
    n1 = jnp.asarray(n, dtype=jnp.float64) + 1.0
    return n1 * (1.0 - 1.0 / (9.0 * n1) + sigma / (3.0 * jnp.sqrt(n1))) ** 3


def gehrels_lower(n, sigma=1.0):
    r"""Gehrels (1986) eq. (12): single-sided lower limit of a Poisson mean.

    .. math:: \lambda_l \approx n\left[1 - \frac{1}{9n} - \frac{S}{3\sqrt{n}}
              + \beta n^{\gamma}\right]^3,\qquad \lambda_l(0) = 0,

    with :math:`(\beta, \gamma)` from Gehrels' Table 3; ``sigma`` must be one of its S values
    (1, 1.282, 1.645, 1.960, 2, 2.326, 2.576, 3).
    """
    key = min(_GEHRELS_BETA_GAMMA, key=lambda s: abs(s - float(sigma)))
    if abs(key - float(sigma)) > 1e-3:
        raise ValueError(
            f"gehrels_lower: sigma={sigma} is not in Gehrels (1986) Table 3; "
            f"use one of {sorted(_GEHRELS_BETA_GAMMA)} or poisson_lower_limit for exact limits"
        )
    beta, gamma = _GEHRELS_BETA_GAMMA[key]
    n = jnp.asarray(n, dtype=jnp.float64)
    positive = n > 0
    n_safe = jnp.where(positive, n, 1.0)
    value = n_safe * (
        1.0 - 1.0 / (9.0 * n_safe) - sigma / (3.0 * jnp.sqrt(n_safe)) + beta * n_safe**gamma
    ) ** 3
    return jnp.where(positive, value, 0.0)


def _bisect_log(fun, lo, hi, n_iter=200):
    """Bisection on ln(lambda) for an increasing ``fun`` with fun(lo) < 0 < fun(hi)."""
    log_lo, log_hi = jnp.log(lo), jnp.log(hi)

    def body(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        f_mid = fun(jnp.exp(mid))
        return jnp.where(f_mid > 0, a, mid), jnp.where(f_mid > 0, mid, b)

    a, b = jax.lax.fori_loop(0, n_iter, body, (log_lo, log_hi))
    return jnp.exp(0.5 * (a + b))


def _confidence(sigma, confidence_level):
    if (sigma is None) == (confidence_level is None):
        raise ValueError("give exactly one of sigma (Gaussian-equivalent) or confidence_level")
    if confidence_level is None:
        return float(_norm.cdf(float(sigma)))
    if not 0.0 < float(confidence_level) < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    return float(confidence_level)


def poisson_upper_limit(n, *, sigma=None, confidence_level=None):
    r"""Exact single-sided upper limit :math:`\lambda_u` of a Poisson mean given ``n`` counts.

    Solves :math:`P(X \le n\,|\,\lambda_u) = Q(n+1, \lambda_u) = 1 - CL`, where Q is the
    regularised upper incomplete gamma function (Gehrels 1986, eq. 1).
    """
    cl = _confidence(sigma, confidence_level)
    n = jnp.asarray(n, dtype=jnp.float64)
    target = 1.0 - cl
    # Q(n+1, lam) decreases with lam; fun increases.
    fun = lambda lam: target - gammaincc(n + 1.0, lam)  # noqa: E731
    hi = n + 20.0 * jnp.sqrt(n + 1.0) + 50.0
    return _bisect_log(fun, jnp.full_like(n, 1e-12), hi)


def poisson_lower_limit(n, *, sigma=None, confidence_level=None):
    r"""Exact single-sided lower limit :math:`\lambda_l` of a Poisson mean given ``n`` counts.

    Solves :math:`P(X \ge n\,|\,\lambda_l) = P(n, \lambda_l) = 1 - CL` (regularised lower
    incomplete gamma function; Gehrels 1986, eq. 2); :math:`\lambda_l = 0` for ``n = 0``.
    """
    cl = _confidence(sigma, confidence_level)
    n = jnp.asarray(n, dtype=jnp.float64)
    target = 1.0 - cl
    positive = n > 0
    n_safe = jnp.where(positive, n, 1.0)
    fun = lambda lam: gammainc(n_safe, lam) - target  # noqa: E731
    hi = n_safe + 20.0 * jnp.sqrt(n_safe) + 50.0
    value = _bisect_log(fun, jnp.full_like(n_safe, 1e-300), hi)
    return jnp.where(positive, value, 0.0)


def poisson_interval(n, confidence_level=0.6826894921370859):
    """Exact central (equal-tailed) confidence interval of a Poisson mean: (lower, upper).

    Each side excludes (1 - CL)/2; for CL = 0.6827 this is the usual "1 sigma" interval.
    """
    one_side = 1.0 - (1.0 - confidence_level) / 2.0
    return (
        poisson_lower_limit(n, confidence_level=one_side),
        poisson_upper_limit(n, confidence_level=one_side),
    )


def false_probability(counts, background):
    r"""Poisson false probability, nustar_nep_survey_detection.txt eq. (1).

    .. math:: P_\mathrm{false} = \frac{\int_0^{C_\mathrm{bgd}} e^{-x}x^{C_\mathrm{data}-1}dx}
                                     {\Gamma(C_\mathrm{data})} = P(C_\mathrm{data}, C_\mathrm{bgd})

    the regularised lower incomplete gamma function (IDL ``igamma``), which for integer counts is
    :math:`P(X \ge C_\mathrm{data}\,|\,C_\mathrm{bgd})`.  Non-integer (smoothed) counts are
    allowed, as in the paper.  ``counts <= 0`` gives 1.
    """
    counts = jnp.asarray(counts, dtype=jnp.float64)
    background = jnp.asarray(background, dtype=jnp.float64)
    positive = counts > 0
    return jnp.where(positive, gammainc(jnp.where(positive, counts, 1.0), background), 1.0)


def log_false_probability(counts, background):
    r""":math:`\ln P_\mathrm{false}`, accurate also where :math:`P` underflows float64.

    Where :math:`P < 10^{-280}` the leading terms of the series
    :math:`P(n, b) = \frac{b^n e^{-b}}{\Gamma(n+1)}\sum_k \frac{b^k}{(n+1)\cdots(n+k)}` are used,
    :math:`\ln P \approx n\ln b - b - \ln\Gamma(n+1) - \ln(1 - b/(n+1))` (valid there because such
    tiny probabilities need :math:`b \ll n`).
    """
    counts = jnp.asarray(counts, dtype=jnp.float64)
    background = jnp.asarray(background, dtype=jnp.float64)
    p = false_probability(counts, background)
    tiny = p < 1e-280
    n_safe = jnp.where(tiny, counts, 2.0)
    b_safe = jnp.where(tiny, background, 1.0)
    ratio = jnp.minimum(b_safe / (n_safe + 1.0), 0.5)
    asymptotic = (
        n_safe * jnp.log(b_safe) - b_safe - gammaln(n_safe + 1.0) - jnp.log1p(-ratio)
    )
    return jnp.where(tiny, asymptotic, jnp.log(jnp.where(tiny, 1.0, p)))


def log_false_probability_series(counts, background, n_terms: int, block: int = 8):
    r""":math:`\ln P(C, B)` (eq. 1) from the first ``n_terms`` + 1 terms of the series

    .. math:: P(C, B) = \frac{B^C e^{-B}}{\Gamma(C+1)}\,S,\qquad
              S = \sum_{j=0}^{N} t_j,\quad t_0 = 1,\quad t_j = t_{j-1}\frac{B}{C+j}

    (Abramowitz & Stegun 6.5.29; Numerical Recipes ``gser``), summed in log space, so it
    neither underflows nor needs the asymptotic branch of :func:`log_false_probability`.
    For :math:`B < C` the terms fall geometrically and the neglected tail is at most
    :math:`t_N / (1 - B/(C+N+1))` relative to S: choose ``n_terms`` (static) with
    :func:`false_probability_series_terms` for the smallest C and the largest B that will be
    evaluated.  Unlike XLA's incomplete gamma (series *and* continued fraction, each iterated
    until the slowest lane converges) this is a fixed computation, equal to SciPy to ~1e-13.
    Meant for :math:`B < C` (every pixel that can reach a small P); for :math:`B \ge C` it
    needs many more terms.

    S is evaluated by Horner's rule from the last term, :math:`s_N = 1`,
    :math:`s_{i-1} = 1 + B s_i / a_i` with :math:`a_i = C + i`, ``block`` (static) steps per
    division: :math:`s_{i-1} = (A_0 + B(A_1 + B(\dots + B(A_{k-1} + B s_{i+k-1}))))/A_0`
    with :math:`A_m = \prod_{l=m}^{k-1} a_{i+l}` (all terms positive: no cancellation).  It
    is one chain of elementwise operations, which XLA fuses into a single kernel, with a
    quarter of the divisions of the term-by-term sum (a loop's per-step kernels would
    re-read their arrays from memory; timings in benchmarks/README.md)."""
    c = jnp.asarray(counts, dtype=jnp.float64)
    b = jnp.asarray(background, dtype=jnp.float64)
    leading = c * jnp.log(b) - b - gammaln(c + 1.0)
    n_terms = int(n_terms)
    block = max(1, int(block))

    def steps(s, first, k):
        # s_{first-1} from s_{first+k-1} by k Horner steps: s -> R + G s with
        # G = B^k / A_0 and R = sum_m B^m A_m / A_0 (the block's steps with s = 0); R and G
        # do not depend on s, so the only serial dependence between blocks is one
        # multiply-add (the divisions overlap)
        prod = None
        products = []  # A_{k-1}, A_{k-2}, ..., A_0 with A_m = prod_{l >= m} a_{first + l}
        for step in range(k - 1, -1, -1):
            a = c + (first + step)
            prod = a if prod is None else prod * a
            products.append(prod)
        q = products[0]  # Horner in B: A_{k-1}, then A_m + B (...)
        for prod in products[1:]:
            q = prod + b * q
        a0 = products[-1]
        return q / a0 + (b_powers[k] / a0) * s

    b_powers = {1: b}
    for k in range(2, block + 1):
        b_powers[k] = b_powers[k - 1] * b

    s = jnp.ones(jnp.broadcast_shapes(c.shape, b.shape), jnp.float64)
    # long series (high backgrounds): a loop over bodies of `per_loop` steps, so that the
    # program stays small; the first steps (the remainder) are unrolled
    per_loop = 8 * block
    n_loop = n_terms // per_loop if n_terms > SERIES_UNROLL_MAX else 0
    i = n_terms  # s = s_i; the steps run i = n_terms, ..., 1
    while i > n_loop * per_loop:
        k = min(block, i - n_loop * per_loop)
        s = steps(s, float(i - k + 1), k)
        i -= k
    if n_loop:
        def body(j, s):
            top = (n_loop - j) * per_loop  # this body applies a_{top-per_loop+1} .. a_top
            for m in range(per_loop // block):
                s = steps(s, (top - (m + 1) * block + 1).astype(jnp.float64), block)
            return s

        s = jax.lax.fori_loop(0, n_loop, body, s)
    return leading + jnp.log(s)


SERIES_UNROLL_MAX = 256
"""Longest series that :func:`log_false_probability_series` unrolls completely."""


def false_probability_series_terms(counts_min, background, rtol: float = 1e-15,
                                   max_terms: int = 1_000_000) -> int:
    r"""Smallest N for which :func:`log_false_probability_series` with ``n_terms=N`` has a
    relative truncation error of S (and an absolute error of :math:`\ln P`) below ``rtol``
    for every pair (C >= ``counts_min``, ``background``), elementwise (NumPy, for a static
    argument).  The bound :math:`t_N / (1 - B/(C+N+1))` decreases with C, so the smallest
    C of each pixel is the worst case.  Needs ``counts_min > background`` everywhere."""
    import numpy as np

    c = np.asarray(counts_min, dtype=np.float64).ravel()
    b = np.broadcast_to(np.asarray(background, dtype=np.float64), np.shape(counts_min)).ravel()
    if c.size == 0:
        return 1
    if np.any(~(c > b)) or np.any(~np.isfinite(c)) or np.any(~(b > 0)):
        raise ValueError("false_probability_series_terms needs finite counts_min > background "
                         "> 0 everywhere")
    term = np.ones_like(c)
    n = 0
    while c.size:
        n += 1
        if n > max_terms:
            raise ValueError(f"the series needs more than {max_terms} terms")
        term = term * b / (c + n)
        done = term / (1.0 - b / (c + n + 1.0)) <= rtol
        term, c, b = term[~done], c[~done], b[~done]
    return n


def det_ml(counts, background):
    r"""DET_ML :math:`= -\ln P_\mathrm{random} = -\ln P(\ge N\,|\,B)`.

    nustar_nep_survey_detection.txt section 3.2: ``counts`` are the total counts in the source
    aperture (20" radius) and ``background`` the background counts expected in it.
    """
    return -log_false_probability(counts, background)


def sigma_to_confidence(sigma):
    """Single-sided confidence level of a Gaussian-equivalent ``sigma`` (1 -> 0.8413)."""
    return 0.5 * (1.0 + math.erf(float(sigma) / math.sqrt(2.0)))
