r"""Gradient-based minimisers, pure JAX, vmappable (one compiled call fits a whole batch).

* :func:`levenberg_marquardt`: damped Newton on the *exact* Hessian (autodiff), for the few
  parameters of spectral fits.  Accepts a step only if the objective decreases; the damping
  :math:`\lambda` follows Marquardt (1963): :math:`(H + \lambda\,\mathrm{diag}|H|)\,\delta = g`.
* :func:`lbfgs`: optax L-BFGS with zoom line search, for many parameters.
* :func:`profile_bounds`: profile-likelihood confidence bounds by safeguarded Newton on the
  profile :math:`p(v) = \min_{u_{-j}} f(u)\,|_{u_j = v}`, using
  :math:`dp/dv = \partial f/\partial u_j` at the conditional minimum (envelope theorem).

All work in the unconstrained space :math:`u`; :func:`to_bounded`/:func:`to_unbounded` are the
bijections to parameters :math:`\theta` with limits (sigmoid for two finite limits, exp for one,
identity for none).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "to_bounded",
    "to_unbounded",
    "levenberg_marquardt",
    "lbfgs",
    "profile_bounds",
    "MinimizeResult",
    "STATUS_MESSAGES",
]

STATUS_MESSAGES = {
    0: "running",
    1: "converged: statistic change and Newton decrement below tolerance",
    2: "maximum number of iterations reached",
    3: "non-finite statistic or gradient at the starting point",
    4: "no step decreases the statistic (damping exhausted); at a minimum to machine precision",
}
_RUNNING, _CONVERGED, _MAXITER, _NONFINITE, _STALLED = 0, 1, 2, 3, 4


# ----------------------------------------------------------------------------------------------
# Bijections


def _masks(lower, upper):
    has_lo, has_hi = jnp.isfinite(lower), jnp.isfinite(upper)
    lo = jnp.where(has_lo, lower, 0.0)
    hi = jnp.where(has_hi, upper, 1.0)
    return has_lo, has_hi, lo, hi


def to_bounded(u, lower, upper):
    """Map unconstrained ``u`` to ``theta`` in ``(lower, upper)`` (either may be inf)."""
    has_lo, has_hi, lo, hi = _masks(lower, upper)
    both = lo + (hi - lo) * jax.nn.sigmoid(u)
    only_lo = lo + jnp.exp(jnp.where(has_lo & ~has_hi, u, 0.0))
    only_hi = hi - jnp.exp(-jnp.where(has_hi & ~has_lo, u, 0.0))
    return jnp.where(has_lo & has_hi, both,
                     jnp.where(has_lo, only_lo, jnp.where(has_hi, only_hi, u)))


def to_unbounded(theta, lower, upper):
    """Inverse of :func:`to_bounded`; ``theta`` is first moved inside the limits by
    ``1e-12 * min(range, 1)`` (a start exactly on a limit has no finite pre-image)."""
    has_lo, has_hi, lo, hi = _masks(lower, upper)
    span = jnp.where(has_lo & has_hi, hi - lo, 1.0)
    eps = 1e-12 * jnp.minimum(span, 1.0)
    theta = jnp.where(has_lo, jnp.maximum(theta, lo + eps), theta)
    theta = jnp.where(has_hi, jnp.minimum(theta, hi - eps), theta)
    frac = jnp.where(has_lo & has_hi, (theta - lo) / span, 0.5)
    both = jnp.log(frac) - jnp.log1p(-frac)
    only_lo = jnp.log(jnp.where(has_lo & ~has_hi, theta - lo, 1.0))
    only_hi = -jnp.log(jnp.where(has_hi & ~has_lo, hi - theta, 1.0))
    return jnp.where(has_lo & has_hi, both,
                     jnp.where(has_lo, only_lo, jnp.where(has_hi, only_hi, theta)))


# ----------------------------------------------------------------------------------------------


class MinimizeResult(NamedTuple):
    x: jax.Array
    fun: jax.Array
    grad: jax.Array
    n_iter: jax.Array
    status: jax.Array


def levenberg_marquardt(fun, x0, *, mask=None, max_iter=200, ftol=1e-9, dtol=1e-10,
                        lam0=1e-3):
    """Minimise ``fun(x)`` by Levenberg-Marquardt-damped Newton steps on the exact Hessian.

    Parameters
    ----------
    fun : callable
        Scalar objective of a 1-D array (traceable).
    x0 : array (n,)
        Start.
    mask : bool array (n,), optional
        Coordinates that may move (False: held fixed, used by profile likelihood).
    max_iter : int
        Maximum number of Newton iterations (accepted or rejected).
    ftol, dtol : float
        Converged when an accepted step lowers ``fun`` by less than ``ftol`` and the Newton
        decrement :math:`g^T\\delta` is below ``dtol`` (both in statistic units).
    """
    x0 = jnp.asarray(x0, dtype=jnp.float64)
    n = x0.shape[0]
    free = jnp.ones(n, dtype=bool) if mask is None else jnp.asarray(mask)
    free_f = free.astype(x0.dtype)
    eye = jnp.eye(n, dtype=x0.dtype)
    value_and_grad = jax.value_and_grad(fun)
    hessian = jax.hessian(fun)

    def derivatives(x):
        f, g = value_and_grad(x)
        h = hessian(x)
        g = g * free_f
        h = h * jnp.outer(free_f, free_f) + jnp.diag(1.0 - free_f)
        return f, g, h

    f0, g0, h0 = derivatives(x0)
    finite0 = jnp.isfinite(f0) & jnp.all(jnp.isfinite(g0)) & jnp.all(jnp.isfinite(h0))
    status0 = jnp.where(finite0, _RUNNING, _NONFINITE)

    def cond(state):
        return state[6] == _RUNNING

    def body(state):
        x, f, g, h, lam, it, status = state
        scale = jnp.maximum(jnp.abs(jnp.diag(h)), 1e-12)
        step = jnp.linalg.solve(h + lam * jnp.diag(scale) + 1e-300 * eye, g) * free_f
        x_new = x - step
        f_new = fun(x_new)
        accept = jnp.isfinite(f_new) & (f_new <= f) & jnp.all(jnp.isfinite(step))
        decrement = jnp.abs(jnp.dot(g, step))
        converged = accept & (f - f_new < ftol) & (decrement < dtol)
        # derivatives at the new point only matter if accepted; computing them always keeps
        # the loop branch-free under vmap.
        _, g_new, h_new = derivatives(x_new)
        good_derivs = jnp.all(jnp.isfinite(g_new)) & jnp.all(jnp.isfinite(h_new))
        accept = accept & good_derivs
        x = jnp.where(accept, x_new, x)
        f = jnp.where(accept, f_new, f)
        g = jnp.where(accept, g_new, g)
        h = jnp.where(accept, h_new, h)
        lam = jnp.where(accept, jnp.maximum(lam * 0.2, 1e-12), lam * 10.0)
        it = it + 1
        status = jnp.where(converged & accept, _CONVERGED, _RUNNING)
        status = jnp.where((status == _RUNNING) & (lam > 1e16), _STALLED, status)
        status = jnp.where((status == _RUNNING) & (it >= max_iter), _MAXITER, status)
        return x, f, g, h, lam, it, status

    init = (x0, f0, g0, h0, jnp.asarray(lam0, x0.dtype), jnp.asarray(0), status0)
    x, f, g, _, _, it, status = jax.lax.while_loop(cond, body, init)
    return MinimizeResult(x, f, g, it, status)


def lbfgs(fun, x0, *, max_iter=1000, gtol=1e-8, memory_size=10):
    """Minimise ``fun`` with optax L-BFGS (zoom line search); for many parameters.

    Converged when the gradient infinity-norm is below ``gtol``.
    """
    x0 = jnp.asarray(x0, dtype=jnp.float64)
    solver = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(fun)

    def body(carry):
        x, state, _, _, it = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = solver.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        x = optax.apply_updates(x, updates)
        return x, state, value, grad, it + 1

    def cond(carry):
        _, _, value, grad, it = carry
        running = (it == 0) | (jnp.max(jnp.abs(grad)) >= gtol)
        return running & (it < max_iter) & jnp.isfinite(value)

    state0 = solver.init(x0)
    f0 = fun(x0)
    carry = (x0, state0, f0, jnp.full_like(x0, jnp.inf), jnp.asarray(0))
    x, _, _, _, it = jax.lax.while_loop(cond, body, carry)
    f, g = jax.value_and_grad(fun)(x)
    status = jnp.where(
        ~jnp.isfinite(f), _NONFINITE,
        jnp.where(jnp.max(jnp.abs(g)) < gtol * 10, _CONVERGED, _MAXITER),
    )
    return MinimizeResult(x, f, g, it, status)


# ----------------------------------------------------------------------------------------------
# Profile likelihood


def profile_bounds(fun, x_best, f_best, sigma_x, delta, *, max_outer=40, inner_iter=50,
                   tol=1e-4, max_excursion=40.0):
    """Profile-likelihood bounds of every coordinate of ``x`` (unconstrained space).

    For each coordinate ``j`` and side ``s = -1, +1`` solve
    :math:`\\min_{x_{-j}} f(x)|_{x_j=v} = f_\\mathrm{best} + \\Delta` for ``v`` on that side,
    all ``2 n`` problems in one ``vmap``.

    Returns ``(bounds, status)``: ``bounds`` (n, 2) in unconstrained space (``-inf``/``inf``
    where the profile never reaches the level, e.g. at a parameter limit), and ``status``
    (n, 2): 1 found, 2 not bracketed within ``max_outer`` steps (limit reached), 3 a lower
    minimum was found on the way (the fit was not at the global minimum).
    """
    x_best = jnp.asarray(x_best)
    n = x_best.shape[0]
    target = f_best + delta
    index = jnp.repeat(jnp.arange(n), 2)
    sides = jnp.tile(jnp.array([-1.0, 1.0]), n)

    def solve(j, side):
        onehot = jnp.arange(n) == j
        others = ~onehot
        v_best = x_best[j]
        step0 = jnp.sqrt(delta) * jnp.where(jnp.isfinite(sigma_x[j]) & (sigma_x[j] > 0),
                                            sigma_x[j], 1.0)

        def inner(v, x_start):
            x0 = jnp.where(onehot, v, x_start)
            res = levenberg_marquardt(fun, x0, mask=others, max_iter=inner_iter)
            grad_j = jax.grad(fun)(res.x)[j]
            return res.x, res.fun, grad_j

        def cond(state):
            return state[-1] == 0

        def body(state):
            v, v_in, v_out, x_cur, it, found_lower, flag = state
            x_opt, f_opt, grad_j = inner(v, x_cur)
            h = f_opt - target
            inside = h < 0
            found_lower = found_lower | (f_opt < f_best - 1e-6)
            v_in = jnp.where(inside, v, v_in)
            v_out = jnp.where(inside, v_out, v)
            x_cur = jnp.where(inside, x_opt, x_cur)
            bracketed = jnp.isfinite(v_out)
            newton = v - h / jnp.where(grad_j != 0, grad_j, jnp.inf)
            lo_b = jnp.minimum(v_in, v_out)
            hi_b = jnp.maximum(v_in, v_out)
            in_bracket = (newton > lo_b) & (newton < hi_b)
            v_bracketed = jnp.where(in_bracket, newton, 0.5 * (v_in + v_out))
            # not yet bracketed: go further out on this side, at least doubling the excursion
            excursion = jnp.abs(v - v_best)
            outward = side * (newton - v)
            grow = jnp.clip(jnp.where(jnp.isfinite(outward) & (outward > 0), outward,
                                      excursion + 1.0), excursion * 0.5 + 0.1, 3.0 * excursion + 1.0)
            v_explore = v + side * grow
            v_next = jnp.where(bracketed, v_bracketed, v_explore)
            it = it + 1
            done = jnp.abs(h) < tol
            too_far = (~bracketed) & (jnp.abs(v_next - v_best) > max_excursion)
            flag = jnp.where(done, 1, jnp.where(too_far | (it >= max_outer), 2, 0))
            v_final = jnp.where(done, v, v_next)
            return v_final, v_in, v_out, x_cur, it, found_lower, flag

        v0 = v_best + side * step0
        state = (v0, v_best, jnp.asarray(jnp.inf), x_best, jnp.asarray(0), jnp.asarray(False),
                 jnp.asarray(0))
        v, _, v_out, _, _, found_lower, flag = jax.lax.while_loop(cond, body, state)
        bracketed = jnp.isfinite(v_out)
        v = jnp.where(flag == 1, v, jnp.where(bracketed, v, side * jnp.inf))
        flag = jnp.where(found_lower, 3, flag)
        return v, flag

    values, flags = jax.vmap(solve)(index, sides)
    return values.reshape(n, 2), flags.reshape(n, 2)
