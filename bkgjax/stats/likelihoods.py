r"""Per-bin Poisson fit statistics (pure, jit/vmap/grad safe, float64).

Every function returns one value per bin; the caller reduces (``.sum()``), so the same
functions serve spectra, images and batches.  Zero counts are handled mathematically with the
*double-where* trick: :math:`D \ln M` is exactly 0 when :math:`D = 0`, *and so is its gradient*
with respect to :math:`M`, even at :math:`M = 0` (plain ``xlogy`` returns 0 for the value but NaN
for the gradient there).

Model values are never clipped: a model of 0 counts in a bin with data gives ``+inf`` (cash,
cstat) exactly as the likelihood says.  Sherpa instead replaces model values below
``trunc_value = 1e-25`` by that value; XSPEC does something similar.  The difference only shows
for a model that predicts no counts where counts were observed, which is a bad model, and we
prefer to say so.

References
----------
Cash, W. 1979, ApJ 228, 939.
XSPEC manual, Appendix B "Statistics in XSPEC" (cstat, wstat, pgstat).
HEASoft 6.20, ``Xspec/src/XSFit/StatMethod/Cstat/CstatVariants.cxx`` (``PGstat``: the special
cases of pgstat).
Sherpa documentation, ``sherpa.stats`` (Cash, CStat, WStat).
Krivonos et al. 2021, MNRAS 502, 3966, eq. (3) (pixel likelihood, nustar_cxb_stray_light.txt).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import gammaln

__all__ = [
    "chi2_subtracted",
    "xlogy_safe",
    "poisson_loglike",
    "cash",
    "cstat",
    "wstat",
    "wstat_background",
    "pgstat",
    "pgstat_background",
    "chi2_gehrels",
    "chi2_datavar",
    "chi2_modvar",
]


def xlogy_safe(x, y):
    r"""Return :math:`x \ln y` with :math:`0 \ln y = 0` for every :math:`y \ge 0`.

    Value *and* gradient are finite where ``x == 0`` (including ``y == 0``): the logarithm is
    evaluated on a substituted ``y = 1`` in those bins, so no ``0 * inf`` appears in the backward
    pass.  Where ``x > 0`` and ``y == 0`` the value is ``-inf`` (the model is impossible).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    is_zero = x == 0
    safe_y = jnp.where(is_zero, jnp.ones_like(y), y)
    return jnp.where(is_zero, jnp.zeros_like(x * safe_y), x * jnp.log(safe_y))


def poisson_loglike(model_counts, counts):
    r"""Poisson log-likelihood per bin, :math:`\ln P(D|M) = D\ln M - M - \ln D!`.

    This is the pixel likelihood of Krivonos et al. (2021), eq. (3):
    :math:`L = -2\sum_i (N_i \ln P_i - P_i - \ln N_i!)`, i.e. ``-2 * poisson_loglike(P, N).sum()``.

    Parameters
    ----------
    model_counts : array_like
        Expected counts :math:`M \ge 0` (not a rate: multiply by exposure first).
    counts : array_like
        Observed counts :math:`D` (non-negative integers; validated at the file/constructor
        boundary, not here).
    """
    return xlogy_safe(counts, model_counts) - model_counts - gammaln(counts + 1.0)


def cash(model_counts, counts):
    r"""Cash (1979) statistic per bin in Sherpa's definition, :math:`2(M - D\ln M)`.

    Differs from ``-2 poisson_loglike`` by the data-only term :math:`2\ln D!`, so it has the same
    minimum but its value is not a goodness of fit.  Bins with :math:`D = 0` contribute
    :math:`2M`.
    """
    return 2.0 * (model_counts - xlogy_safe(counts, model_counts))


def cstat(model_counts, counts):
    r"""C-statistic per bin (XSPEC ``cstat`` / Sherpa ``CStat``).

    .. math:: C_i = 2\,[M_i - D_i + D_i(\ln D_i - \ln M_i)],

    with :math:`C_i = 2M_i` for :math:`D_i = 0`.  For large counts :math:`\sum_i C_i` is
    distributed approximately as :math:`\chi^2` with the number of degrees of freedom.
    """
    return 2.0 * (
        model_counts - counts + xlogy_safe(counts, counts) - xlogy_safe(counts, model_counts)
    )


def _safe_sqrt(x):
    """sqrt with a finite (zero) gradient at x = 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def wstat_background(model_counts, counts, background_counts, exposure_ratio):
    r"""Profiled background rate of the W-statistic, in counts in the *background* region.

    With the source-region model :math:`\mu_i = t_s m_i` counts, the W-statistic maximises the
    joint Poisson likelihood of :math:`S_i \sim P(t_s(m_i + f_i))` and
    :math:`B_i \sim P(t_b f_i)` over the background rate :math:`f_i \ge 0`:

    .. math::
        (t_s+t_b) f_i^2 + [(t_s+t_b) m_i - S_i - B_i] f_i - B_i m_i = 0.

    Returns :math:`t_b f_i`, computed with the root form that avoids cancellation, so that the
    special cases of the XSPEC manual (:math:`S_i = 0`; :math:`B_i = 0` with
    :math:`m_i \lessgtr S_i/(t_s+t_b)`) come out of the same expression.

    ``exposure_ratio`` is :math:`r = t_b/t_s` (background over source exposure, each multiplied
    by its BACKSCAL and AREASCAL).
    """
    # Work in units of source-region counts: mu = t_s m, and f is scaled by t_s.
    # (1 + r) g^2 + [(1 + r) mu - S - B] g - B mu = 0, where g = t_s f.
    one_plus_r = 1.0 + exposure_ratio
    c = one_plus_r * model_counts - counts - background_counts
    disc = c * c + 4.0 * one_plus_r * background_counts * model_counts
    root = _safe_sqrt(disc)
    # Two algebraically equal forms of the positive root; pick the one without cancellation.
    c_nonpos = c <= 0
    denom_pos = jnp.where(c_nonpos, 1.0, c + root)
    g_pos_c = 2.0 * background_counts * model_counts / denom_pos
    g_neg_c = (-c + root) / (2.0 * one_plus_r)
    g = jnp.where(c_nonpos, g_neg_c, g_pos_c)
    return exposure_ratio * g


def wstat(model_counts, counts, background_counts, exposure_ratio):
    r"""W-statistic per bin (XSPEC ``wstat`` / Sherpa ``WStat``), background profiled out.

    .. math::
        W_i = 2\,[\,t_s m_i + (t_s+t_b) f_i - S_i\ln(t_s m_i + t_s f_i) - B_i\ln(t_b f_i)
              - S_i(1-\ln S_i) - B_i(1-\ln B_i)\,]

    with :math:`f_i` from :func:`wstat_background`.  The special cases of the XSPEC manual
    (Appendix B) follow from the same expression with :math:`0\ln 0 = 0`:
    :math:`S_i = 0` gives :math:`t_s m_i - B_i\ln(t_b/(t_s+t_b))`; :math:`B_i = 0` gives
    :math:`-t_b m_i - S_i\ln(t_s/(t_s+t_b))` when :math:`m_i < S_i/(t_s+t_b)` and
    :math:`t_s m_i + S_i(\ln S_i - \ln(t_s m_i) - 1)` otherwise (tests check each branch against
    Sherpa).

    Parameters
    ----------
    model_counts : array_like
        Source model counts in the source region, :math:`\mu_i = t_s m_i` (exposure and
        AREASCAL already applied).
    counts, background_counts : array_like
        Observed counts :math:`S_i` (source region) and :math:`B_i` (background region).
    exposure_ratio : array_like
        :math:`t_b/t_s = (T_b\,\mathrm{BACKSCAL}_b\,\mathrm{AREASCAL}_b)
        / (T_s\,\mathrm{BACKSCAL}_s\,\mathrm{AREASCAL}_s)`, per bin or scalar.
    """
    r = exposure_ratio
    bkg_in_bkg_region = wstat_background(model_counts, counts, background_counts, r)  # t_b f
    bkg_in_src_region = bkg_in_bkg_region / r  # t_s f
    value = (
        model_counts
        + bkg_in_src_region
        + bkg_in_bkg_region
        - xlogy_safe(counts, model_counts + bkg_in_src_region)
        - xlogy_safe(background_counts, bkg_in_bkg_region)
        - counts
        + xlogy_safe(counts, counts)
        - background_counts
        + xlogy_safe(background_counts, background_counts)
    )
    return 2.0 * value


def pgstat_background(model_counts, counts, background_counts, background_error,
                      background_ratio):
    r"""Profiled background of the PG-statistic, in counts in the *source* region.

    XSPEC's ``pgstat`` (Appendix B, "Poisson data with Gaussian background") takes the source
    counts :math:`S \sim P(t_s(m + f))` and the background estimate
    :math:`B \sim N(t_b f, \sigma_B^2)` and minimises over the background rate :math:`f` per
    bin.  In source-region counts, :math:`\mu = t_s m`, :math:`g = t_s f`, :math:`r = t_b/t_s`,
    the stationarity condition of :math:`y - S\ln y + (B - r g)^2/(2\sigma_B^2)` with
    :math:`y = \mu + g` is the quadratic

    .. math:: r^2 y^2 + (\sigma_B^2 - rB - r^2\mu)\,y - S\sigma_B^2 = 0,

    whose roots have product :math:`-S\sigma_B^2/r^2 < 0`: exactly one is positive, and it is
    the minimum (XSPEC solves the same equation written for :math:`f`, the manual's
    :math:`f_i = [-(t_s\sigma_i^2 - t_b B_i + t_b^2 m_i) + d_i]/(2t_b^2)`, and keeps that
    root).  :math:`g` itself may be negative (the background estimate
    is Gaussian, so nothing keeps it positive; only :math:`y > 0` is needed), as in XSPEC.

    Special cases, as XSPEC's ``PGstat::specificPerformB`` (HEASoft 6.20):

    * :math:`S = 0`: the objective is linear plus quadratic in :math:`g` with no logarithm;
      XSPEC uses its unconstrained minimum :math:`g = B/r - \sigma_B^2/r^2` (manual:
      :math:`f_i = B_i/t_b - \sigma_i^2 t_s/t_b^2`), even where that makes :math:`y < 0`.
    * :math:`\sigma_B = 0`: the background is known exactly, :math:`g = B/r` (XSPEC's
      ``bierr == 0`` branch, i.e. cstat with the background fixed); the root below tends to
      this value as :math:`\sigma_B \to 0`, so no separate branch is needed.

    Returns :math:`y - \mu = g` (background counts expected in the source region).
    """
    mu = model_counts
    r = background_ratio
    var = background_error * background_error
    r2 = r * r
    beta = var - r * background_counts - r2 * mu
    root = _safe_sqrt(beta * beta + 4.0 * r2 * counts * var)
    # Positive root of r^2 y^2 + beta y - S var = 0 in the form without cancellation.
    beta_nonpos = beta <= 0
    denom = jnp.where(beta_nonpos, 1.0, beta + root)
    y_pos = jnp.where(beta_nonpos, (root - beta) / (2.0 * r2), 2.0 * counts * var / denom)
    # S = 0: XSPEC's unconstrained minimum (may be below zero; documented above).
    y_zero = mu + background_counts / r - var / r2
    return jnp.where(counts == 0, y_zero, y_pos) - mu


def pgstat(model_counts, counts, background_counts, background_error, background_ratio):
    r"""PG-statistic per bin (XSPEC ``pgstat``): Poisson source data, Gaussian background
    with known error, the background rate profiled out per bin.

    XSPEC manual, Appendix B ("Poisson data with Gaussian background"):

    .. math::
        PG_i = 2\,[\,t_s(m_i + f_i) - S_i\ln(t_s m_i + t_s f_i)
               + \frac{(B_i - t_b f_i)^2}{2\sigma_i^2} - S_i(1 - \ln S_i)\,]

    with :math:`f_i` the profiled background (:func:`pgstat_background`).  The
    :math:`S_i(1-\ln S_i)` offset is the one of cstat, so a perfect model gives about 0 and
    :math:`\sum_i PG_i` is approximately :math:`\chi^2`-distributed (one nuisance parameter
    per bin is fitted to two measurements, so one degree of freedom per bin remains).

    The Gaussian term is evaluated through the stationarity condition,
    :math:`r(B - rg)/\sigma_B^2 = 1 - S/y`, as :math:`\sigma_B^2(1 - S/y)^2/(2r^2)`: the
    direct form is a difference of nearly equal numbers divided by a small
    :math:`\sigma_B^2`, and this one is exact at :math:`\sigma_B = 0`, where it vanishes and
    the statistic is cstat with the background fixed at :math:`B/r` source-region counts
    (XSPEC's ``bierr == 0`` branch).  For :math:`S_i = 0`, XSPEC's closed form
    :math:`PG_i = 2[t_s m_i + B_i t_s/t_b - \sigma_i^2 t_s^2/(2 t_b^2)]` follows from the same
    expression; it can be negative when :math:`\sigma_B^2 > 2rB` (XSPEC does not clip it,
    nor do we).

    In its :math:`\sigma_B = 0` branch XSPEC floors the total model at ``1e-5/t_s``; like
    :func:`cstat` we do not (module docstring).
    Value and gradient are finite at :math:`S = 0` and :math:`B = 0` (tested).

    Parameters
    ----------
    model_counts : array_like
        Source model counts in the source region, :math:`\mu_i = t_s m_i`.
    counts : array_like
        Observed source-region counts :math:`S_i`.
    background_counts, background_error : array_like
        Background estimate :math:`B_i` and its Gaussian error :math:`\sigma_i`, both in counts
        in the background region (a background spectrum's counts and STAT_ERR).
    background_ratio : array_like
        :math:`r = t_b/t_s` (exposure times BACKSCAL times AREASCAL), per bin or scalar, as in
        :func:`wstat`.
    """
    r = background_ratio
    var = background_error * background_error
    g = pgstat_background(model_counts, counts, background_counts, background_error, r)
    y = model_counts + g
    # S/y with 0/y = 0 for every y (including y <= 0, possible only when S = 0).
    has_counts = counts != 0
    counts_over_y = jnp.where(has_counts, counts / jnp.where(has_counts, y, 1.0), 0.0)
    # var = 0 selected explicitly: y = 0 is then possible (B = model = 0), and 0 * inf is NaN
    # where the statistic is +inf (a model with no counts where counts were seen, as cstat).
    gaussian = jnp.where(var > 0, var * (1.0 - counts_over_y) ** 2 / (2.0 * r * r), 0.0)
    value = y - counts + xlogy_safe(counts, counts) - xlogy_safe(counts, y) + gaussian
    return 2.0 * value


def chi2_gehrels(model_counts, counts):
    r"""Chi-square with Gehrels (1986) variance, :math:`(D-M)^2/(1+\sqrt{D+0.75})^2` per bin.

    Provided for comparison with XSPEC's ``chi`` and Sherpa's ``chi2gehrels``; not recommended
    for low counts.
    """
    sigma = 1.0 + jnp.sqrt(counts + 0.75)
    return ((counts - model_counts) / sigma) ** 2


def chi2_datavar(model_counts, counts):
    r"""Chi-square with the data as variance, :math:`(D-M)^2/D` per bin (Sherpa
    ``chi2datavar``; XSPEC ``chi``).  A bin with no counts has zero variance: infinite unless
    the model is 0 there too (callers reject such spectra before fitting)."""
    positive = counts > 0
    variance = jnp.where(positive, counts, 1.0)
    residual = counts - model_counts
    return jnp.where(positive, residual**2 / variance,
                     jnp.where(residual == 0, 0.0, jnp.inf))


def chi2_modvar(model_counts, counts):
    r"""Chi-square with the model as variance, :math:`(D-M)^2/\max(M, 1)` per bin: Sherpa's
    ``chi2modvar``, whose variance is never below 1 (so a model far below one count per bin
    does not blow the statistic up; value and gradient finite for every M >= 0)."""
    return (counts - model_counts) ** 2 / jnp.maximum(model_counts, 1.0)


def chi2_subtracted(model_counts, counts, background_counts, background_ratio,
                    variance="gehrels"):
    r"""Chi-square of background-subtracted counts, :math:`(S - B/r - M)^2/\sigma^2` per bin
    (XSPEC's ``chi`` and Sherpa's chi2 statistics after ``subtract()``), with ``r`` the
    background-to-source exposure x BACKSCAL x AREASCAL ratio and the variance

    * ``"gehrels"``: :math:`\sigma_G(S)^2 + \sigma_G(B)^2/r^2`,
      :math:`\sigma_G(N) = 1 + \sqrt{N + 0.75}`;
    * ``"datavar"``: :math:`S + B/r^2` (a bin where both are 0 has zero variance: infinite
      unless the residual is 0, as :func:`chi2_datavar`);
    * ``"modvar"``: :math:`\max(M, 1)`, the source model alone: Sherpa's ``chi2modvar`` adds
      no background variance (checked against Sherpa 4.19,
      tests/reference/make_sherpa_chi2_subtracted_reference.py).
    """
    net = counts - background_counts / background_ratio
    residual = net - model_counts
    if variance == "gehrels":
        sigma_s = 1.0 + jnp.sqrt(counts + 0.75)
        sigma_b = (1.0 + jnp.sqrt(background_counts + 0.75)) / background_ratio
        return residual**2 / (sigma_s**2 + sigma_b**2)
    if variance == "datavar":
        var = counts + background_counts / background_ratio**2
        positive = var > 0
        return jnp.where(positive, residual**2 / jnp.where(positive, var, 1.0),
                         jnp.where(residual == 0, 0.0, jnp.inf))
    if variance == "modvar":
        return residual**2 / jnp.maximum(model_counts, 1.0)
    raise ValueError(f"variance must be 'gehrels', 'datavar' or 'modvar', got {variance!r}")
