r"""Maximum-likelihood fits of linear Poisson template models (pixel likelihoods).

A *template model* predicts the expected counts in pixel :math:`i` as a linear combination of
fixed non-negative templates,

.. math:: \mu_i(\theta) = \sum_k \theta_k X_{ki},

and is fitted by maximising the Poisson log-likelihood

.. math:: \ln L(\theta) = \sum_i w_i\,[\,n_i \ln\mu_i - \mu_i - \ln n_i!\,],

with :math:`w_i \in \{0, 1\}` masking dead or excluded pixels.  This is eq. (2)-(3) of
Krivonos et al. (2021, nustar_cxb_stray_light.txt, section 4): the NuSTAR pixel model is
:math:`\mu = (N_\mathrm{bkg} M_\mathrm{bkg} + N_\mathrm{apt} A_\mathrm{det} A_\mathrm{Be}
\Omega\,\mathrm{area})\,T`, linear in :math:`(N_\mathrm{bkg}, N_\mathrm{apt})`, and eq. (3)
is :math:`-2\ln L`.

Because :math:`\mu` is linear in :math:`\theta`, :math:`\ln L` is concave and its exact
gradient and Hessian are cheap,

.. math:: g_k = \sum_i w_i (n_i/\mu_i - 1) X_{ki}, \qquad
          H_{kl} = -\sum_i w_i\, n_i X_{ki} X_{li} / \mu_i^2 ,

so a Newton iteration with a backtracking line search (which also keeps every unmasked
:math:`\mu_i > 0`) converges to the global maximum from any feasible start.  Parameters are not
bounded: a negative :math:`N_\mathrm{apt}` is allowed as long as every predicted count stays
positive, so faint bands are not biased by a boundary.

Everything here is a pure function of arrays, traceable and ``vmap``-able: write for one problem,
batch over bands, modules and data sets with ``jax.vmap``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..stats.likelihoods import cstat, poisson_loglike

__all__ = [
    "TemplateFit",
    "template_loglike",
    "fit_templates",
    "template_profile_bounds",
    "bootstrap_templates",
    "deviance_pvalue",
]

# Largest number of step halvings in the line search (2^-30 of the Newton step).
_MAX_HALVINGS = 30


class TemplateFit(NamedTuple):
    r"""Result of :func:`fit_templates` (every field is an array; batched under ``vmap``).

    theta : (K,) best-fit template coefficients.
    covariance : (K, K) inverse of the observed information :math:`-H^{-1}` at the optimum.
    loglike : maximum of :math:`\ln L` (eq. 3 of the paper is :math:`-2\ln L`).
    cstat : Cash deviance against the saturated model, :math:`2\sum w(\mu - n + n\ln(n/\mu))`.
    n_pixels : number of unmasked pixels.
    gradient : gradient of :math:`\ln L` at the solution (free coordinates ~ 0).
    n_iter : Newton iterations used.
    converged : True when the Newton decrement fell below the tolerance.
    """

    theta: jax.Array
    covariance: jax.Array
    loglike: jax.Array
    cstat: jax.Array
    n_pixels: jax.Array
    gradient: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def _flatten(counts, templates, mask):
    counts = jnp.asarray(counts, dtype=jnp.float64)
    templates = jnp.asarray(templates, dtype=jnp.float64)
    if templates.shape[1:] != counts.shape:
        raise ValueError(f"templates have shape {templates.shape}; expected (K,) + counts.shape "
                         f"= (K,) + {counts.shape}")
    if mask is None:
        mask = jnp.ones(counts.shape, dtype=bool)
    mask = jnp.asarray(mask, dtype=bool)
    if mask.shape != counts.shape:
        raise ValueError(f"mask has shape {mask.shape}; expected {counts.shape}")
    k = templates.shape[0]
    return counts.reshape(-1), templates.reshape(k, -1), mask.reshape(-1).astype(jnp.float64)


def _loglike_flat(theta, counts, templates, weight):
    mu = theta @ templates
    used = weight > 0
    # Double-where: masked pixels get a harmless mu = 1 so neither value nor gradient sees them.
    safe_mu = jnp.where(used, mu, 1.0)
    per_pixel = jnp.where(used, poisson_loglike(safe_mu, counts), 0.0)
    # mu <= 0 where the model must be positive is outside the model's domain (log-likelihood
    # -inf); poisson_loglike already gives -inf (n > 0) or a positive value (n = 0, mu < 0),
    # so forbid mu < 0 explicitly instead of letting it look like an improvement.
    infeasible = jnp.any(used & (mu < 0.0))
    total = jnp.sum(per_pixel)
    return jnp.where(infeasible, -jnp.inf, total)


def _kernel_flat(theta, counts, templates, weight):
    """ln L without the constant -sum ln n! (cheap: used by the line search)."""
    mu = theta @ templates
    used = weight > 0
    safe_mu = jnp.where(used & (mu > 0), mu, 1.0)
    per_pixel = jnp.where(used, counts * jnp.log(safe_mu) - mu, 0.0)
    infeasible = jnp.any(used & ((mu < 0.0) | ((mu == 0.0) & (counts > 0))))
    return jnp.where(infeasible, -jnp.inf, jnp.sum(per_pixel))


def template_loglike(theta, counts, templates, mask=None):
    r""":math:`\ln L(\theta)` of the template model (Poisson, masked pixels excluded)."""
    counts, templates, weight = _flatten(counts, templates, mask)
    return _loglike_flat(jnp.asarray(theta, jnp.float64), counts, templates, weight)


def _derivatives(theta, counts, templates, weight):
    mu = theta @ templates
    used = weight > 0
    safe_mu = jnp.where(used & (mu > 0), mu, 1.0)
    ratio = jnp.where(used, counts / safe_mu, 0.0)
    grad = templates @ (ratio - weight)
    curvature = jnp.where(used, counts / safe_mu**2, 0.0)
    hess = -(templates * curvature) @ templates.T
    return grad, hess


def _newton(theta0, counts, templates, weight, free, max_iter, tol):
    """Maximise ln L over the coordinates with ``free`` = 1 (others held at theta0)."""
    def direction(theta):
        grad, hess = _derivatives(theta, counts, templates, weight)
        grad_free = grad * free
        # Fixed coordinates: identity rows/columns so the solve leaves them unchanged.
        hess_free = hess * jnp.outer(free, free) - jnp.diag(1.0 - free)
        # Tiny ridge relative to the diagonal guards templates that vanish on the mask.
        ridge = 1e-12 * jnp.abs(jnp.diag(hess_free)) + 1e-300
        step = -jnp.linalg.solve(hess_free - jnp.diag(ridge), grad_free)
        step = jnp.where(jnp.all(jnp.isfinite(step)), step, grad_free * 0.0)
        return grad, step, jnp.dot(grad_free, step)

    def cond(state):
        _, _, it, done = state
        return (~done) & (it < max_iter)

    def body(state):
        theta, value, it, _ = state
        _, step, decrement = direction(theta)
        # Largest step keeping every used mu positive: mu + a dmu > 0 (linear model).
        mu = theta @ templates
        dmu = step @ templates
        shrinking = (weight > 0) & (dmu < 0)
        limit = jnp.min(jnp.where(shrinking, -mu / jnp.where(shrinking, dmu, -1.0), jnp.inf))
        scale = jnp.minimum(1.0, 0.99 * limit)
        # Backtracking: try the (domain-limited) Newton step first and halve only while it
        # does not improve ln L; the full step is accepted almost always, so this costs one
        # likelihood evaluation per iteration.
        def not_improved(ls):
            alpha, val, k = ls
            return ~(jnp.isfinite(val) & (val >= value)) & (k < _MAX_HALVINGS)

        def halve(ls):
            alpha, _, k = ls
            alpha = 0.5 * alpha
            return alpha, _kernel_flat(theta + alpha * step, counts, templates, weight), k + 1

        first = _kernel_flat(theta + scale * step, counts, templates, weight)
        alpha, trial, _ = jax.lax.while_loop(not_improved, halve, (scale, first, 0))
        improved = jnp.isfinite(trial) & (trial >= value)
        theta_new = jnp.where(improved, theta + alpha * step, theta)
        value_new = jnp.where(improved, trial, value)
        done = (jnp.abs(decrement) < tol) | ~improved
        return theta_new, value_new, it + 1, done

    value0 = _kernel_flat(theta0, counts, templates, weight)
    theta, _, n_iter, done = jax.lax.while_loop(
        cond, body, (theta0, value0, jnp.asarray(0), jnp.asarray(False)))
    value = _loglike_flat(theta, counts, templates, weight)
    _, _, decrement = direction(theta)
    converged = jnp.isfinite(value) & (jnp.abs(decrement) < 1e3 * tol)
    return theta, value, n_iter, converged


def _start(counts, templates, weight):
    # Each template explains 1/K of the counts: feasible (mu > 0 wherever any template is
    # positive) and of the right scale for every coefficient.
    total = jnp.sum(counts * weight)
    per_template = jnp.sum(templates * weight, axis=1)
    k = templates.shape[0]
    return jnp.maximum(total, 1.0) / (k * jnp.where(per_template > 0, per_template, 1.0))


def fit_templates(counts, templates, mask=None, *, theta0=None, max_iter=100, tol=1e-10):
    r"""Maximum-likelihood coefficients of a linear Poisson template model.

    Parameters
    ----------
    counts : array (...)
        Observed counts per pixel (any shape; float or int).
    templates : array (K, ...)
        Non-negative templates; the model is ``tensordot(theta, templates, 1)``.
    mask : bool array (...), optional
        True for pixels that enter the likelihood.
    theta0 : array (K,), optional
        Feasible start; default: each template explains 1/K of the counts.
    max_iter, tol : Newton iteration limit and Newton-decrement tolerance (log-likelihood units).

    Returns
    -------
    TemplateFit
        ``covariance`` is :math:`(-H)^{-1}`: the Cramer-Rao / Hessian error matrix.
    """
    counts_f, templates_f, weight = _flatten(counts, templates, mask)
    if theta0 is None:
        theta0 = _start(counts_f, templates_f, weight)
    theta0 = jnp.asarray(theta0, jnp.float64)
    free = jnp.ones_like(theta0)
    theta, value, n_iter, converged = _newton(theta0, counts_f, templates_f, weight, free,
                                              max_iter, tol)
    grad, hess = _derivatives(theta, counts_f, templates_f, weight)
    covariance = jnp.linalg.inv(-hess)
    mu = theta @ templates_f
    used = weight > 0
    safe_mu = jnp.where(used & (mu > 0), mu, 1.0)
    deviance = jnp.sum(jnp.where(used, cstat(safe_mu, counts_f), 0.0))
    return TemplateFit(theta, covariance, value, deviance, jnp.sum(weight), grad, n_iter,
                       converged)


def template_profile_bounds(counts, templates, mask, best: TemplateFit, index, delta=2.705543,
                            *, n_outer=30, tol=1e-7):
    r"""Profile-likelihood interval of coefficient ``index``.

    Solves :math:`2[\ln L_\mathrm{max} - \ln L_p(\psi)] = \Delta` on each side, where
    :math:`\ln L_p(\psi)` maximises over the other coefficients with :math:`\theta_j = \psi`.
    By the envelope theorem :math:`d\ln L_p/d\psi = g_j(\hat\theta(\psi))`, so the outer solve is
    Newton's method on :math:`\psi`, started at :math:`\hat\theta_j \pm \sqrt{\Delta}\sigma_j`
    (exact for a quadratic profile) and halved back toward the optimum whenever the profile
    leaves the model's domain (some :math:`\mu_i \le 0`).  ``delta = 2.7055`` gives 90 %,
    1.0 gives 68.3 % (Wilks).

    Returns
    -------
    (lower, upper, converged) : arrays.
    """
    counts_f, templates_f, weight = _flatten(counts, templates, mask)
    k = templates_f.shape[0]
    free = jnp.ones(k).at[index].set(0.0)
    theta_hat = best.theta
    sigma = jnp.sqrt(jnp.maximum(best.covariance[index, index], 0.0))
    target = best.loglike - 0.5 * delta

    def profile(psi, theta_guess):
        theta_start = theta_guess.at[index].set(psi)
        theta, value, _, _ = _newton(theta_start, counts_f, templates_f, weight, free, 100,
                                     1e-12)
        grad, _ = _derivatives(theta, counts_f, templates_f, weight)
        return theta, value, grad[index]

    def solve(sign):
        psi0 = theta_hat[index] + sign * jnp.sqrt(delta) * sigma

        def body(_, state):
            psi, theta_guess, done = state
            theta, value, slope = profile(psi, theta_guess)
            ok = jnp.isfinite(value)
            residual = value - target
            step = residual / slope
            psi_newton = psi - step
            # Stay on the correct side of the optimum and inside the domain.
            wrong_side = sign * (psi_newton - theta_hat[index]) <= 0
            psi_next = jnp.where(ok & ~wrong_side & jnp.isfinite(psi_newton), psi_newton,
                                 0.5 * (psi + theta_hat[index]))
            converged = ok & (jnp.abs(residual) < tol)
            psi_next = jnp.where(done | converged, psi, psi_next)
            theta_next = jnp.where(ok, theta, theta_guess)
            return psi_next, theta_next, done | converged

        def outer_cond(state):
            return (~state[2]) & (state[3] < n_outer)

        def outer_body(state):
            psi, theta_guess, done, it = state
            psi, theta_guess, done = body(it, (psi, theta_guess, done))
            return psi, theta_guess, done, it + 1

        psi, _, done, _ = jax.lax.while_loop(
            outer_cond, outer_body, (psi0, theta_hat, jnp.asarray(False), jnp.asarray(0)))
        return psi, done

    lower, ok_low = solve(-1.0)
    upper, ok_high = solve(1.0)
    return lower, upper, ok_low & ok_high


def bootstrap_templates(key, best: TemplateFit, templates, mask=None, n_boot=1000, *,
                        batch_size=256):
    r"""Parametric (Poisson) bootstrap: refit ``n_boot`` simulated count sets.

    Each replica draws :math:`n_i \sim \mathrm{Poisson}(\hat\mu_i)` from the best-fit model and
    is refitted from the best-fit coefficients; this is the "10^4 simulations" error estimate of
    Krivonos et al. (2021, section 4), kept for comparison with the Hessian, profile and posterior
    errors.  Replicas are processed ``batch_size`` at a time (``lax.map`` over batches) so memory
    stays bounded.

    Returns
    -------
    array (n_boot, K) of refitted coefficients.
    """
    templates = jnp.asarray(templates, jnp.float64)
    shape = templates.shape[1:]
    mask_arr = jnp.ones(shape, bool) if mask is None else jnp.asarray(mask, bool)
    mu = jnp.tensordot(best.theta, templates, axes=1)
    mu = jnp.where(mask_arr, jnp.maximum(mu, 0.0), 0.0)
    n_batches = -(-n_boot // batch_size)
    keys = jax.random.split(key, n_batches * batch_size)
    keys = keys.reshape((n_batches, batch_size) + keys.shape[1:])

    def one(k):
        counts = jax.random.poisson(k, mu, dtype=jnp.int64).astype(jnp.float64)
        return fit_templates(counts, templates, mask_arr, theta0=best.theta).theta

    thetas = jax.lax.map(jax.vmap(one), keys)
    return thetas.reshape(n_batches * batch_size, -1)[:n_boot]


def deviance_pvalue(key, best: TemplateFit, templates, mask=None, n_sims=200):
    r"""Goodness of fit: probability of a Cash deviance at least as large as observed.

    With a few counts per pixel the deviance is not :math:`\chi^2_\mathrm{dof}` distributed,
    so its null distribution is simulated from the best-fit model (parametric bootstrap, each
    replica refitted).  Returns ``(p_value, simulated_deviances)``.
    """
    templates = jnp.asarray(templates, jnp.float64)
    shape = templates.shape[1:]
    mask_arr = jnp.ones(shape, bool) if mask is None else jnp.asarray(mask, bool)
    mu = jnp.where(mask_arr, jnp.maximum(jnp.tensordot(best.theta, templates, axes=1), 0.0), 0.0)

    def one(k):
        counts = jax.random.poisson(k, mu, dtype=jnp.int64).astype(jnp.float64)
        return fit_templates(counts, templates, mask_arr, theta0=best.theta).cstat

    sims = jax.lax.map(one, jax.random.split(key, n_sims))
    return jnp.mean(sims >= best.cstat), sims
