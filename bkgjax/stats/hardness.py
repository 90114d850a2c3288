r"""Bayesian hardness ratios with background and band-dependent exposures (BEHR).

Park, Kashyap, Connors et al. 2006, ApJ 652, 610 ("BEHR"), as used for the NuSTAR NEP
survey (Zhao et al. 2021, nustar_nep_survey_detection.txt, section 5.6):
:math:`HR = (H - S)/(H + S)` with S, H the *source intensities* in the soft (3-8 keV) and hard
(8-24 keV) bands, and the colour :math:`C = \log_{10}(S/H)`.

Model (per band, Park et al. section 2, eqs. 1-2)
-------------------------------------------------
* source aperture: :math:`N \sim \mathrm{Pois}(e\,(\lambda + \xi))` with :math:`\lambda` the
  source intensity, :math:`\xi` the background intensity in the source aperture and ``e`` the
  effective exposure of the band (s, or s x relative effective area: :math:`\lambda` is then
  a rate and the different exposures of the two bands are taken into account);
* background region ``area_ratio`` = r times larger than the aperture (BACKSCAL ratio):
  :math:`B \sim \mathrm{Pois}(r\,e\,\xi)`;
* or, with ``area_ratio=None``, a *known* background model: ``background`` is the expected
  number of background counts :math:`b` in the aperture, :math:`N \sim \mathrm{Pois}(e\lambda
  + b)` (the NuSTAR survey case: background mosaics with negligible statistical error);
* priors :math:`\lambda \sim \mathrm{Gamma}(\psi_1, \psi_2)` (density
  :math:`\propto \lambda^{\psi_1-1}e^{-\psi_2\lambda}`), :math:`\xi \sim
  \mathrm{Gamma}(\psi_3, \psi_4)`.  Defaults: :math:`\psi_1 = 1` (flat prior, BEHR's
  default ``softidx = hardidx = 1``; 0.5 gives Jeffreys' prior of a Poisson mean, whose
  density of :math:`\lambda` diverges at 0 and so puts an integrable spike at HR = -1/+1
  whenever the background alone can explain the counts), :math:`\psi_3 = 1` (flat background
  prior), :math:`\psi_2 = \psi_4 = 0` (improper, scale-free: the result does not depend on
  the units of ``e``).  A proper prior (:math:`\psi_2 > 0`) is what the coverage test uses.

Exact posterior (no MCMC)
-------------------------
Expanding :math:`(\lambda+\xi)^N` binomially and integrating :math:`\xi` analytically, the
posterior of :math:`\lambda` is a finite mixture of gamma distributions with a *common* rate
:math:`\beta = e + \psi_2` (the expansion behind BEHR's quadrature; written out here):

.. math:: p(\lambda\,|\,N, B) = \sum_{j=0}^{N} w_j\,\mathrm{Gamma}(\lambda;\,j+\psi_1,\,\beta),

.. math:: w_j \propto \binom{N}{j}\frac{\Gamma(N-j+B+\psi_3)\,\Gamma(j+\psi_1)}
          {(e(1+r)+\psi_4)^{N-j+B+\psi_3}\,\beta^{j+\psi_1}}
          \quad\text{(measured background)},\qquad
          w_j \propto \binom{N}{j}\frac{b^{N-j}e^{j}\,\Gamma(j+\psi_1)}{\beta^{j+\psi_1}}
          \quad\text{(known background)}.

With :math:`X = \beta_H\lambda_H`, :math:`Y = \beta_S\lambda_S` the component pair (j, k) gives
:math:`U = X/(X+Y) \sim \mathrm{Beta}(k+\psi_{1H}, j+\psi_{1S})`, and
:math:`\omega = \lambda_H/(\lambda_S+\lambda_H) = U\beta_S/(U\beta_S + (1-U)\beta_H)`,
:math:`HR = 2\omega - 1`, both monotone in U.  Hence the posterior CDF of HR is an exact double
mixture of regularised incomplete beta functions,

.. math:: P(HR \le h) = \sum_{j,k} w_j v_k\, I_{u(h)}(k+\psi_{1H},\, j+\psi_{1S}),\qquad
          u(h) = \frac{\omega\beta_H}{\omega\beta_H + (1-\omega)\beta_S},\ \omega = \frac{1+h}{2},

evaluated by one vectorised JAX expression; this replaces BEHR's Gaussian-quadrature mode
(which integrates the same posterior numerically) and is valid at any number of counts, so
the Gibbs-sampler mode BEHR uses above ~15 counts is not needed.  Mixture components whose
weight is below :math:`e^{-32}` of the largest are dropped (a window of consecutive j that
keeps all the others, chosen eagerly per call; the dropped mass is < K 1e-14).

Reported summaries
------------------
* ``mode``: maximum of the posterior density of HR on a grid of ``n_grid`` points spanning
  the posterior's 1e-9 .. 1 - 1e-9 quantiles (found by zooming three times from [-1, 1]),
  refined by a parabola, over the nodes between the 1e-6 and 1 - 1e-6 quantiles (a prior
  shape < 1 puts an integrable spike at -1/+1 that holds a negligible mass; it is not
  reported as the mode); -1 or +1 when the density increases towards that end (e.g. no hard
  counts).  Without counts in either band the posterior is the prior's (uniform in HR for
  flat priors and equal exposures) and the mode is not meaningful; use the intervals.
* ``lower``/``upper``: the shortest (highest posterior density, HPD) interval containing
  ``level`` (default 0.6827) of the posterior, searched over ``n_grid`` values of its lower
  tail probability: the interval BEHR quotes with the mode, and one that contains the mode
  also when it is at -1 or +1.

Cost: per source ~4 n_grid K^2 exponentials with K the mixture window (32 up to ~100
counts, 128 at ~1500 counts, growing ~ sqrt(counts)); sources are processed in chunks of 16
(one compiled shape per window length).
* ``et_lower``/``et_upper``, ``median``: equal-tail interval (each tail (1 - level)/2) and
  median: the exact CDF on the grid, inverted by cubic Hermite interpolation (error
  O(step^4), far below 1e-6).
* ``colour_median``, ``colour_lower``, ``colour_upper``: median and equal-tail interval of
  :math:`C = \log_{10}(\lambda_S/\lambda_H) = \log_{10}\frac{1-HR}{1+HR}` (monotone in HR, so its
  quantiles are those of HR); :math:`\pm\infty` where HR's quantile is at :math:`\mp 1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, gammaln
from scipy.special import gammaln as _np_gammaln

__all__ = ["HardnessRatio", "hardness_ratio", "hardness_ratio_cdf", "band_log_weights",
           "gaussian_hardness_error"]

ONE_SIGMA = 0.6826894921370859
_LOG_WEIGHT_CUT = 32.0  # drop mixture components below exp(-32) of the largest
_CHUNK = 16  # sources per compiled call
_TAIL = 1e-9  # the density grid spans the (1e-9, 1 - 1e-9) quantiles


@dataclass(frozen=True)
class HardnessRatio:
    """BEHR summaries of HR = (H - S)/(H + S) per source (NumPy arrays, module docstring)."""

    mode: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    median: np.ndarray
    et_lower: np.ndarray
    et_upper: np.ndarray
    colour_median: np.ndarray
    colour_lower: np.ndarray
    colour_upper: np.ndarray
    level: float


def _as_array(name, value, n, *, integer=False, positive=False, allow_none=False):
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required")
    arr = np.broadcast_to(np.asarray(value, dtype=float), (n,)).copy()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values: {arr[~np.isfinite(arr)][:5]}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got min {arr.min():g}")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got min {arr.min():g}")
    if integer and np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be integer counts, got {arr[arr != np.round(arr)][:5]}")
    return arr


def band_log_weights(counts, background, *, area_ratio=None, exposure=1.0, prior_shape=1.0,
                     prior_rate=0.0, bkg_prior_shape=1.0, bkg_prior_rate=0.0):
    r"""Normalised log mixture weights :math:`\ln w_j`, j = 0..N, of one band's posterior of
    :math:`\lambda` (module docstring), shape (n_sources, max N + 1), -inf beyond N.

    ``background``: background counts in a region ``area_ratio`` times the aperture area, or,
    with ``area_ratio=None``, the known expected background counts in the aperture (not
    necessarily integer).  Returns ``(log_w, rate)`` with the common gamma rate
    :math:`\beta = e + \psi_2` per source.
    """
    counts = np.atleast_1d(np.asarray(counts, dtype=float))
    n = counts.size
    counts = _as_array("counts", counts, n, integer=True)
    known = area_ratio is None
    background = _as_array("background", background, n, integer=not known)
    exposure = _as_array("exposure", exposure, n, positive=True)
    if not (prior_shape > 0 and prior_rate >= 0 and bkg_prior_shape > 0 and bkg_prior_rate >= 0):
        raise ValueError(f"prior shapes must be > 0 and rates >= 0, got prior_shape="
                         f"{prior_shape}, prior_rate={prior_rate}, bkg_prior_shape="
                         f"{bkg_prior_shape}, bkg_prior_rate={bkg_prior_rate}")
    nmax = int(counts.max()) if n else 0
    j = np.arange(nmax + 1, dtype=float)[None, :]
    nn = counts[:, None]
    rate = exposure + prior_rate
    valid = j <= nn
    jj = np.where(valid, j, 0.0)
    log_binom = _np_gammaln(nn + 1) - _np_gammaln(jj + 1) - _np_gammaln(np.maximum(nn - jj, 0) + 1)
    src = _np_gammaln(jj + prior_shape) - (jj + prior_shape) * np.log(rate)[:, None]
    if known:
        b = background[:, None]
        m = nn - jj
        # b^(N-j) with 0^0 = 1 (double where: no log(0) evaluated)
        log_bpow = np.where(m == 0, 0.0, m * np.log(np.where(b > 0, b, 1.0)))
        log_bpow = np.where((m > 0) & (b <= 0), -np.inf, log_bpow)
        log_w = log_binom + log_bpow + jj * np.log(exposure)[:, None] + src
    else:
        r = _as_array("area_ratio", area_ratio, n, positive=True)
        shape_b = nn - jj + background[:, None] + bkg_prior_shape
        log_w = (log_binom + _np_gammaln(shape_b)
                 - shape_b * np.log(exposure * (1.0 + r) + bkg_prior_rate)[:, None] + src)
    log_w = np.where(valid, log_w, -np.inf)
    top = log_w.max(axis=1, keepdims=True)
    log_w = log_w - (top + np.log(np.exp(log_w - top).sum(axis=1, keepdims=True)))
    return log_w, rate


def _window_bounds(log_w):
    """Per source, the first and last j whose weight is above exp(-cut) of the largest."""
    significant = log_w >= log_w.max(axis=1, keepdims=True) - _LOG_WEIGHT_CUT
    idx = np.arange(log_w.shape[1])
    lo = np.where(significant, idx, log_w.shape[1]).min(axis=1)
    hi = np.where(significant, idx, -1).max(axis=1)
    return lo, hi


def _bucket(width, k_min=8):
    """Power-of-two window length (>= k_min) for each window width."""
    return np.array([max(k_min, 1 << (int(w) - 1).bit_length()) for w in np.atleast_1d(width)],
                    dtype=int)


def _window(log_w, prior_shape, k):
    """Keep, per source, the consecutive j window holding all weights above exp(-cut) of the
    largest, padded to length ``k`` (>= the widest window).  Returns (log_w [S,k],
    shape [S,k]); padded components have weight 0 and continue the shapes with step 1."""
    lo, hi = _window_bounds(log_w)
    cols = lo[:, None] + np.arange(k)[None, :]
    inside = cols <= hi[:, None]
    cols_safe = np.minimum(cols, log_w.shape[1] - 1)
    lw = np.where(inside, np.take_along_axis(log_w, cols_safe, axis=1), -np.inf)
    # renormalise the kept mass (the dropped part is < K exp(-cut))
    top = lw.max(axis=1, keepdims=True)
    lw = lw - (top + np.log(np.exp(lw - top).sum(axis=1, keepdims=True)))
    return lw, cols.astype(float) + prior_shape


def betaln(a, b):
    """ln B(a, b) from three lnGamma (cheaper to compile than jax.scipy.special.betaln; the
    cancellation costs ~1e-16 |ln Gamma| ~ 1e-12 relative at shapes ~1e4, harmless here)."""
    return gammaln(a) + gammaln(b) - gammaln(a + b)


def _u_of_h(h, beta_s, beta_h):
    omega = 0.5 * (1.0 + h)
    return omega * beta_h / (omega * beta_h + (1.0 - omega) * beta_s)


def _cdf_one(h, lw_s, a_s, lw_h, a_h, beta_s, beta_h):
    r"""P(HR <= h) for one source; h any shape.

    One incomplete beta function per point: the window shapes are consecutive (step 1) in
    both bands, so all :math:`I_u(a_k, b_j)` follow from :math:`I_u(a_0, b_0)` by the
    recurrences :math:`I_u(a, b+1) = I_u(a, b) + u^a(1-u)^b/(b\,B(a, b))` (positive terms)
    and :math:`I_u(a+1, b) = I_u(a, b) - u^a(1-u)^b/(a\,B(a, b))`; the subtraction loses at
    most ~K 1e-16 in absolute terms, which is what the quantiles need.
    """
    u = jnp.clip(_u_of_h(h, beta_s, beta_h), 0.0, 1.0).reshape(-1)
    w = jnp.exp(lw_s[:, None] + lw_h[None, :])  # [Ks, Kh]; padded components weigh 0
    log_u = jnp.log(u)[:, None]
    log_1mu = jnp.log1p(-u)[:, None]
    # first hard component, all soft components: I_u(a_0, b_j), b-recurrence
    log_s = (a_h[0] * log_u + a_s[None, :] * log_1mu
             - jnp.log(a_s)[None, :] - betaln(a_h[0], a_s)[None, :])  # [n, Ks]
    t_s = jnp.exp(log_s)
    # exclusive cumulative sums as products with a strictly upper-triangular matrix
    # (compiles much faster than jnp.cumsum on CPU)
    strict_s = jnp.triu(jnp.ones((a_s.size, a_s.size)), 1)
    strict_h = jnp.triu(jnp.ones((a_h.size, a_h.size)), 1)
    base = betainc(a_h[0], a_s[0], u)[:, None] + t_s @ strict_s
    # then along the hard components: a-recurrence
    log_c = -jnp.log(a_h)[None, :] - betaln(a_h[None, :], a_s[:, None])  # [Ks, Kh]
    log_t = (a_h[None, None, :] * log_u[:, :, None] + a_s[None, :, None] * log_1mu[:, :, None]
             + log_c[None])
    t = jnp.exp(log_t)
    below = t @ strict_h  # sum over m < k
    inc = jnp.clip(base[:, :, None] - below, 0.0, 1.0)
    return jnp.sum(w[None] * inc, axis=(1, 2)).reshape(jnp.shape(h))


def _logpdf_one(h, lw_s, a_s, lw_h, a_h, beta_s, beta_h):
    """ln p(HR = h) for one source (h strictly inside (-1, 1))."""
    u = _u_of_h(h, beta_s, beta_h).reshape(-1)
    omega = 0.5 * (1.0 + h.reshape(-1))
    a = a_h[None, None, :]
    b = a_s[None, :, None]
    lw = (lw_s[:, None] + lw_h[None, :] - betaln(a_h[None, :], a_s[:, None]))[None]
    log_beta_pdf = (a - 1.0) * jnp.log(u)[:, None, None] + (b - 1.0) * jnp.log1p(-u)[:, None, None]
    log_pu = jax.scipy.special.logsumexp(lw + log_beta_pdf, axis=(1, 2))
    log_jac = (jnp.log(beta_s) + jnp.log(beta_h)
               - 2.0 * jnp.log(omega * beta_h + (1.0 - omega) * beta_s) - jnp.log(2.0))
    return (log_pu + log_jac).reshape(jnp.shape(h))


def _hermite_quantile(q, nodes, f, pdf):
    """Invert the CDF tabulated at ``nodes`` (values ``f``, derivative ``pdf``) at the
    probabilities ``q``: cubic Hermite interpolation in the bracketing cell (error O(step^4)),
    solved by Newton steps from the linear guess; the linear guess where the cubic misbehaves
    (e.g. an infinite density at a support end)."""
    i = jnp.clip(jnp.searchsorted(f, q, side="left") - 1, 0, nodes.size - 2)
    x0, x1 = nodes[i], nodes[i + 1]
    f0, f1 = f[i], f[i + 1]
    step = x1 - x0
    d0, d1 = pdf[i] * step, pdf[i + 1] * step
    lin = jnp.clip((q - f0) / jnp.where(f1 > f0, f1 - f0, 1.0), 0.0, 1.0)
    t = lin
    for _ in range(6):
        h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
        h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
        val = h00 * f0 + h10 * d0 + h01 * f1 + h11 * d1 - q
        der = ((6 * t**2 - 6 * t) * f0 + (3 * t**2 - 4 * t + 1) * d0
               + (-6 * t**2 + 6 * t) * f1 + (3 * t**2 - 2 * t) * d1)
        t = jnp.clip(t - val / jnp.where(der > 0, der, 1.0), 0.0, 1.0)
    good = jnp.isfinite(d0) & jnp.isfinite(d1) & jnp.isfinite(t)
    return x0 + jnp.where(good, t, lin) * step


def _summaries_one(args, level, n_grid):
    lw_s, a_s, lw_h, a_h, beta_s, beta_h = args
    edge = 1.0 - 1e-13

    # Zoom: a grid on [-1, 1], then on the cells bracketing the (1e-9, 1 - 1e-9) quantiles,
    # three times; one CDF evaluation site (faster compilation); the final grid step is
    # ~1e-2 of the posterior width for any number of counts.
    def zoom(_, carry):
        lo, hi, _, _ = carry
        grid = jnp.linspace(lo, hi, n_grid)
        f = jax.lax.cummax(jnp.clip(_cdf_one(grid, lw_s, a_s, lw_h, a_h, beta_s, beta_h),
                                    0.0, 1.0))
        i_lo = jnp.clip(jnp.searchsorted(f, _TAIL, side="left") - 1, 0, n_grid - 1)
        i_hi = jnp.clip(jnp.searchsorted(f, 1.0 - _TAIL, side="left"), 0, n_grid - 1)
        i_hi = jnp.maximum(i_hi, i_lo + 1)
        return grid[i_lo], grid[i_hi], grid, f

    init = (jnp.array(-edge), jnp.array(edge), jnp.zeros(n_grid), jnp.zeros(n_grid))
    _, _, grid, f_grid = jax.lax.fori_loop(0, 4, zoom, init)
    logp = _logpdf_one(grid, lw_s, a_s, lw_h, a_h, beta_s, beta_h)
    pdf = jnp.exp(logp)
    tail = (1.0 - level) / 2.0
    qs = _hermite_quantile(jnp.stack([tail, 0.5, 1.0 - tail]), grid, f_grid, pdf)
    # integrable spikes at -1 / +1 (prior shape < 1 with a background-only mixture component)
    # that hold less than 1e-6 of the posterior are not taken as the mode
    logp_mode = jnp.where((f_grid > 1e-6) & (f_grid < 1.0 - 1e-6), logp, -jnp.inf)
    i = jnp.argmax(logp_mode)
    i_first = jnp.argmax(f_grid > 1e-6)
    i_last = n_grid - 1 - jnp.argmax((f_grid < 1.0 - 1e-6)[::-1])
    # parabolic refinement of the mode on (i-1, i, i+1)
    im = jnp.clip(i, 1, n_grid - 2)
    y0, y1, y2 = logp[im - 1], logp[im], logp[im + 1]
    denom = y0 - 2.0 * y1 + y2
    shift = jnp.where(denom < 0, 0.5 * (y0 - y2) / jnp.where(denom < 0, denom, -1.0), 0.0)
    step = grid[1] - grid[0]
    mode = jnp.where((i == im), grid[im] + jnp.clip(shift, -1.0, 1.0) * step, grid[i])
    # density rising towards a support end that the grid reaches: the mode is that end
    mode = jnp.where((i == i_first) & (grid[i] < -1.0 + 1e-3), -1.0, mode)
    mode = jnp.where((i == i_last) & (grid[i] > 1.0 - 1e-3), 1.0, mode)
    # HPD: shortest [Q(alpha), Q(alpha + level)] over alpha in [0, 1 - level] (exact for a
    # unimodal density), quantiles from the tabulated CDF extended by the support ends
    nodes = jnp.concatenate([jnp.array([-1.0]), grid, jnp.array([1.0])])
    f = jax.lax.cummax(jnp.concatenate([jnp.array([0.0]), f_grid, jnp.array([1.0])]))
    pdf_ext = jnp.concatenate([jnp.array([jnp.nan]), pdf, jnp.array([jnp.nan])])
    alpha = jnp.linspace(0.0, 1.0 - level, n_grid)
    a = _hermite_quantile(alpha, nodes, f, pdf_ext)
    b = _hermite_quantile(alpha + level, nodes, f, pdf_ext)
    best = jnp.argmin(b - a)
    return jnp.stack([mode, a[best], b[best], qs[1], qs[0], qs[2]])


@partial(jax.jit, static_argnames=("n_grid",))
def _summaries(lw_s, a_s, lw_h, a_h, beta_s, beta_h, level, *, n_grid):
    return jax.vmap(lambda *args: _summaries_one(args, level, n_grid))(
        lw_s, a_s, lw_h, a_h, beta_s, beta_h)


@jax.jit
def _cdf_batch(h, lw_s, a_s, lw_h, a_h, beta_s, beta_h):
    return jax.vmap(_cdf_one)(h, lw_s, a_s, lw_h, a_h, beta_s, beta_h)


def _prepare(soft_counts, hard_counts, soft_background, hard_background, soft_area_ratio,
             hard_area_ratio, soft_exposure, hard_exposure, soft_prior, hard_prior,
             prior_rate, bkg_prior_shape, bkg_prior_rate):
    soft_counts = np.atleast_1d(np.asarray(soft_counts, dtype=float))
    hard_counts = np.atleast_1d(np.asarray(hard_counts, dtype=float))
    n = max(soft_counts.size, hard_counts.size)
    soft_counts = np.broadcast_to(soft_counts, (n,))
    hard_counts = np.broadcast_to(hard_counts, (n,))
    common = dict(prior_rate=prior_rate, bkg_prior_shape=bkg_prior_shape,
                  bkg_prior_rate=bkg_prior_rate)
    try:
        lw_s, beta_s = band_log_weights(soft_counts, np.broadcast_to(soft_background, (n,)),
                                        area_ratio=soft_area_ratio, exposure=soft_exposure,
                                        prior_shape=soft_prior, **common)
    except ValueError as err:
        raise ValueError(f"soft band: {err}") from None
    try:
        lw_h, beta_h = band_log_weights(hard_counts, np.broadcast_to(hard_background, (n,)),
                                        area_ratio=hard_area_ratio, exposure=hard_exposure,
                                        prior_shape=hard_prior, **common)
    except ValueError as err:
        raise ValueError(f"hard band: {err}") from None
    return n, (lw_s, soft_prior, beta_s), (lw_h, hard_prior, beta_h)


def _groups(soft, hard, min_window=8):
    """Split the sources by window length (power of two, common to both bands) so that a
    single bright source does not make every faint one pay for its long mixture; yields
    (indices, [lw_s, a_s, lw_h, a_h, beta_s, beta_h]) per group."""
    lo_s, hi_s = _window_bounds(soft[0])
    lo_h, hi_h = _window_bounds(hard[0])
    k = _bucket(np.maximum(hi_s - lo_s, hi_h - lo_h) + 1, k_min=min_window)
    for kk in np.unique(k):
        idx = np.flatnonzero(k == kk)
        lw_s, a_s = _window(soft[0][idx], soft[1], int(kk))
        lw_h, a_h = _window(hard[0][idx], hard[1], int(kk))
        yield idx, [lw_s, a_s, lw_h, a_h, soft[2][idx], hard[2][idx]]


def _pad(arrays, size):
    """Pad the source axis of every array to ``size`` rows (copies of the first source) so
    that repeated calls reuse the compiled function."""
    n = arrays[0].shape[0]
    return [np.concatenate([a, np.repeat(a[:1], size - n, axis=0)]) for a in arrays]


def hardness_ratio(soft_counts, hard_counts, *, soft_background=0.0, hard_background=0.0,
                   soft_area_ratio=None, hard_area_ratio=None, soft_exposure=1.0,
                   hard_exposure=1.0, soft_prior=1.0, hard_prior=1.0, prior_rate=0.0,
                   bkg_prior_shape=1.0, bkg_prior_rate=0.0, level=ONE_SIGMA,
                   n_grid=256, min_window=32) -> HardnessRatio:
    r"""BEHR hardness ratio :math:`HR = (H - S)/(H + S)` of every source (module docstring).

    Parameters
    ----------
    soft_counts, hard_counts : total counts in the source aperture (integers >= 0), per source.
    soft_background, hard_background : background counts; in a region ``*_area_ratio`` times the
        aperture area (integers), or, with ``*_area_ratio=None`` (default), the known expected
        background counts in the aperture.
    soft_exposure, hard_exposure : effective exposure per band (s, or s x relative effective
        area); HR is then a ratio of count *rates*.
    soft_prior, hard_prior : gamma prior shapes :math:`\psi_1` (1 = flat, default; 0.5 =
        Jeffreys);
        ``prior_rate`` :math:`\psi_2` (0 = improper); ``bkg_prior_shape``/``bkg_prior_rate``
        :math:`\psi_3, \psi_4` of the background intensity (measured-background case).
    level : probability content of the intervals (default 0.6827, "1 sigma").
    n_grid : points of the density / CDF grid (and of the HPD search).
    min_window : smallest mixture window (power of two); sources are processed in groups of
        equal window length, each group a compiled shape, so a larger value means fewer
        compilations (useful for many calls with different counts) at more work per source.

    Returns a :class:`HardnessRatio` of NumPy arrays.
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(n_grid) < 16:
        raise ValueError(f"n_grid must be >= 16, got {n_grid}")
    n, soft, hard = _prepare(
        soft_counts, hard_counts, soft_background, hard_background, soft_area_ratio,
        hard_area_ratio, soft_exposure, hard_exposure, soft_prior, hard_prior, prior_rate,
        bkg_prior_shape, bkg_prior_rate)
    out = np.empty((n, 6))
    if int(min_window) < 1:
        raise ValueError(f"min_window must be >= 1, got {min_window}")
    for idx, arrays in _groups(soft, hard, int(min_window)):
        # fixed chunks of _CHUNK sources (smaller groups: a power of two) so that catalogues of
        # any size reuse the same few compiled shapes
        for start in range(0, idx.size, _CHUNK):
            sub = slice(start, start + _CHUNK)
            m = idx[sub].size
            # short windows are cheap: always a full chunk (one compiled shape per window)
            size = _CHUNK if arrays[0].shape[1] <= 32 else 1 << (m - 1).bit_length()
            padded = _pad([a[sub] for a in arrays], size)
            res = _summaries(*[jnp.asarray(a) for a in padded], float(level),
                             n_grid=int(n_grid))
            out[idx[sub]] = np.asarray(res)[:m]
    mode, lower, upper, median, et_lo, et_hi = out.T

    def colour(h):
        with np.errstate(divide="ignore"):
            return np.log10((1.0 - h) / (1.0 + h))

    return HardnessRatio(mode=mode, lower=lower, upper=upper, median=median, et_lower=et_lo,
                         et_upper=et_hi, colour_median=colour(median),
                         colour_lower=colour(et_hi), colour_upper=colour(et_lo),
                         level=float(level))


def hardness_ratio_cdf(h, soft_counts, hard_counts, *, min_window=32, **kwargs):
    """Exact posterior CDF P(HR <= h) (module docstring); ``h`` has shape (n_sources, m) or
    (m,) for one source; keyword arguments as :func:`hardness_ratio` (no ``level``)."""
    h = np.asarray(h, dtype=float)
    if np.any(np.abs(h) > 1):
        raise ValueError("h must lie in [-1, 1]")
    names = ("soft_background", "hard_background", "soft_area_ratio", "hard_area_ratio",
             "soft_exposure", "hard_exposure", "soft_prior", "hard_prior", "prior_rate",
             "bkg_prior_shape", "bkg_prior_rate")
    defaults = dict(soft_background=0.0, hard_background=0.0, soft_area_ratio=None,
                    hard_area_ratio=None, soft_exposure=1.0, hard_exposure=1.0, soft_prior=1.0,
                    hard_prior=1.0, prior_rate=0.0, bkg_prior_shape=1.0, bkg_prior_rate=0.0)
    unknown = set(kwargs) - set(names)
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}")
    defaults.update(kwargs)
    n, soft, hard = _prepare(soft_counts, hard_counts, *[defaults[k] for k in names])
    hh = np.broadcast_to(np.atleast_2d(h), (n, np.atleast_2d(h).shape[-1]))
    out = np.empty(hh.shape)
    for idx, arrays in _groups(soft, hard, int(min_window)):
        out[idx] = np.asarray(_cdf_batch(jnp.asarray(hh[idx]), *[jnp.asarray(a) for a in arrays]))
    return out.reshape(h.shape) if h.ndim == 1 and n == 1 else out


def gaussian_hardness_error(soft_rate, hard_rate, soft_rate_err, hard_rate_err):
    r"""First-order error propagation of HR = (H - S)/(H + S):
    :math:`\sigma_{HR} = 2\sqrt{H^2\sigma_S^2 + S^2\sigma_H^2}/(H + S)^2` (the large-count
    limit the BEHR interval must approach)."""
    s, hh = np.asarray(soft_rate, float), np.asarray(hard_rate, float)
    return 2.0 * np.sqrt(hh**2 * np.asarray(soft_rate_err, float) ** 2
                         + s**2 * np.asarray(hard_rate_err, float) ** 2) / (hh + s) ** 2

