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

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import small_linalg

__all__ = [
    "hessian_derivatives",
    "to_bounded",
    "to_unbounded",
    "levenberg_marquardt",
    "lbfgs",
    "profile_bounds",
    "venzon_moolgavkar",
    "MinimizeResult",
    "FitStatus",
    "BoundFlag",
    "CONVERGED_STATUSES",
    "STATUS_MESSAGES",
]


class FitStatus(enum.IntEnum):
    """Status code of :func:`levenberg_marquardt` and :func:`lbfgs` (``MinimizeResult.status``,
    an integer array under jit/vmap; compare it with these members)."""

    RUNNING = 0
    CONVERGED = 1  # Newton decrement (L-BFGS: gradient) below tolerance
    MAX_ITER = 2
    NON_FINITE = 3
    STALLED = 4  # no step decreases the statistic: at a minimum to machine precision

    @property
    def message(self) -> str:
        return STATUS_MESSAGES[self]


#: statuses of a successful minimisation (a stall is at the minimum to machine precision)
CONVERGED_STATUSES = (FitStatus.CONVERGED, FitStatus.STALLED)

class BoundFlag(enum.IntEnum):
    """Outcome of one profile-likelihood bound of :func:`profile_bounds`."""

    RUNNING = 0
    FOUND = 1
    NOT_REACHED = 2  # the profile does not reach the level before a limit / max_excursion
    LOWER_MINIMUM = 3  # a lower minimum was met: the fit was not at the global minimum


STATUS_MESSAGES = {
    FitStatus.RUNNING: "running",
    FitStatus.CONVERGED: "Newton decrement below tolerance",
    FitStatus.MAX_ITER: "maximum number of iterations reached",
    FitStatus.NON_FINITE: "non-finite statistic or gradient at the starting point",
    FitStatus.STALLED: "no step decreases the statistic (damping exhausted); at a minimum to "
                       "machine precision",
}


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
    hess: jax.Array


def hessian_derivatives(fun):
    """``x -> (f, grad, hessian)`` by autodiff (generic; spectral fits use a cheaper one)."""
    value_and_grad = jax.value_and_grad(fun)
    hessian = jax.hessian(fun)

    def derivatives(x):
        f, g = value_and_grad(x)
        return f, g, hessian(x)

    return derivatives


def unbounded_derivatives(theta_derivatives, lower, upper):
    r"""``u -> (S, dS/du, d^2S/du^2)`` from ``theta -> (S, dS/d\theta, d^2S/d\theta^2)`` by the
    chain rule through :func:`to_bounded` (elementwise, so
    :math:`H_u = H_\theta\,t' t'^T + \mathrm{diag}(g_\theta t'')`), jitted; its attribute
    ``theta_derivatives`` is the jitted parameter-space form (for the covariance).

    Both are traced once however many times a fit calls them (optimiser, profile searches,
    covariance): re-tracing a fold's autodiff at every call site was most of a new process's
    tracing time (the compiled program is the same)."""
    theta_derivatives = jax.jit(theta_derivatives)
    d_bijection = jax.vmap(jax.grad(to_bounded))
    d2_bijection = jax.vmap(jax.grad(jax.grad(to_bounded)))

    @jax.jit
    def derivatives(u):
        value, grad_theta, hess_theta = theta_derivatives(to_bounded(u, lower, upper))
        dt = d_bijection(u, lower, upper)
        d2t = d2_bijection(u, lower, upper)
        return (value, grad_theta * dt,
                hess_theta * jnp.outer(dt, dt) + jnp.diag(grad_theta * d2t))

    derivatives.theta_derivatives = theta_derivatives
    return derivatives


def levenberg_marquardt(fun, x0, *, derivatives=None, mask=None, max_iter=200, dtol=1e-8,
                        lam0=1e-3):
    r"""Minimise ``fun(x)`` by Levenberg-Marquardt-damped Newton steps on the exact Hessian.

    Parameters
    ----------
    fun : callable
        Scalar objective of a 1-D array (traceable).
    x0 : array (n,)
        Start.
    derivatives : callable, optional
        ``x -> (f, grad, hessian)``; defaults to autodiff of ``fun``.  Spectral fits pass one
        that exploits the linear response fold (n + 2 matrix passes instead of ~4n + 2).
    mask : bool array (n,), optional
        Coordinates that may move (False: held fixed, used by profile likelihood).
    max_iter : int
        Maximum number of Newton iterations (accepted or rejected).
    dtol : float
        Converged when the (lightly damped) Newton decrement :math:`g^T\delta` is below
        ``dtol``; it estimates twice the distance to the minimum in statistic units, so the
        default 1e-8 puts parameters within ~1e-4 sigma of the optimum.  Checking the
        decrement *before* accepting a step stops cleanly at the round-off floor, where trial
        steps no longer decrease the statistic.

    Returns
    -------
    MinimizeResult
        ``grad`` is the full (unmasked) gradient at the solution.
    """
    x0 = jnp.asarray(x0, dtype=jnp.float64)
    n = x0.shape[0]
    free = jnp.ones(n, dtype=bool) if mask is None else jnp.asarray(mask)
    free_f = free.astype(x0.dtype)
    derivatives = derivatives or hessian_derivatives(fun)

    def masked(x):
        f, g, h = derivatives(x)
        h = h * jnp.outer(free_f, free_f) + jnp.diag(1.0 - free_f)
        return f, g, h

    def cond(state):
        return state[6] == FitStatus.RUNNING

    def body(state):
        # iteration -1 only evaluates the start (a zero step, always taken): the derivatives
        # then appear once in the compiled loop instead of twice (start + loop), a sixth of
        # a fit's compilation time
        x, f, g, h, lam, it, status = state
        first = it < 0
        g_free = g * free_f
        scale = jnp.maximum(jnp.abs(jnp.diag(h)), 1e-12)
        # the step uses |h_ii| on the diagonal: in the tail of a bijection (nH ~ 0.01 of a
        # [0, 1e6] range is the log of nH) the chain-rule term g t'' makes h_ii negative,
        # which the damping lam |h_ii| cannot fix, and the steps crawled (DG Tau tbabs with
        # PhoIndex frozen at 1.44: 200 iterations stuck at nH 0.007 instead of 11 to 0.067).
        # At a minimum the diagonal is positive and nothing changes.
        h_step = h + jnp.diag(jnp.abs(jnp.diag(h)) - jnp.diag(h))
        step = jnp.where(first, 0.0,
                         small_linalg.solve(h_step + lam * jnp.diag(scale), g_free) * free_f)
        decrement = jnp.dot(g_free, step)
        converged = (~first & jnp.isfinite(decrement) & (jnp.abs(decrement) < dtol)
                     & (lam <= 1.0))
        x_new = x - step
        f_new, g_new, h_new = masked(x_new)
        finite = (jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new * free_f))
                  & jnp.all(jnp.isfinite(h_new)) & jnp.all(jnp.isfinite(step)))
        # accept equal values within round-off: at the floor a step may not decrease f
        accept = first | (finite & (f_new <= f + 1e-12 * (1.0 + jnp.abs(f))))
        x = jnp.where(accept, x_new, x)
        f = jnp.where(accept, f_new, f)
        g = jnp.where(accept, g_new, g)
        h = jnp.where(accept, h_new, h)
        lam = jnp.where(first, lam, jnp.where(accept, jnp.maximum(lam * 0.1, 1e-12), lam * 10.0))
        it = it + 1
        status = jnp.where(converged, FitStatus.CONVERGED, FitStatus.RUNNING)
        running = status == FitStatus.RUNNING
        status = jnp.where(running & (lam > 1e16), FitStatus.STALLED, status)
        running = status == FitStatus.RUNNING
        status = jnp.where(running & (it >= max_iter), FitStatus.MAX_ITER, status)
        return x, f, g, h, lam, it, jnp.where(first & ~finite, FitStatus.NON_FINITE, status)

    init = (x0, jnp.zeros((), x0.dtype), jnp.zeros_like(x0), jnp.eye(n, dtype=x0.dtype),
            jnp.asarray(lam0, x0.dtype), jnp.asarray(-1), jnp.asarray(FitStatus.RUNNING))
    x, f, g, h, _, it, status = jax.lax.while_loop(cond, body, init)
    return MinimizeResult(x, f, g, it, status, h)


def lbfgs(fun, x0, *, derivatives=None, max_iter=1000, gtol=1e-8, memory_size=10):
    """Minimise ``fun`` with optax L-BFGS (zoom line search); for many parameters.

    Converged when the gradient infinity-norm is below ``gtol``.  The value, gradient and
    Hessian at the solution come from ``derivatives`` (``x -> (f, grad, hessian)``; defaults to
    autodiff of ``fun``), as in :func:`levenberg_marquardt`.
    """
    x0 = jnp.asarray(x0, dtype=jnp.float64)
    import optax  # here, not at import: optax costs ~0.4 s that Newton/LM fits never need

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
    f, g, h = (derivatives or hessian_derivatives(fun))(x)
    status = jnp.where(
        ~jnp.isfinite(f), FitStatus.NON_FINITE,
        jnp.where(jnp.max(jnp.abs(g)) < gtol * 10, FitStatus.CONVERGED, FitStatus.MAX_ITER),
    )
    return MinimizeResult(x, f, g, it, status, h)


# ----------------------------------------------------------------------------------------------
# Profile likelihood


def venzon_moolgavkar(derivatives, x_best, f_best, cov_x, delta, *, max_iter=30, tol=1e-4,
                      gtol=1e-6, max_excursion=40.0):
    r"""Profile-likelihood bounds by the Venzon & Moolgavkar (1988, Appl. Stat. 37, 87) method.

    For coordinate ``j`` and side ``s``, Newton's method on the n equations
    :math:`\partial f/\partial x_k = 0\ (k \ne j)`, :math:`f(x) = f_\mathrm{best} + \Delta`,
    whose Jacobian is the Hessian with row ``j`` replaced by the gradient.  It starts from the
    quadratic prediction :math:`x = \hat x + s\sqrt{\Delta}\,C_{:,j}/\sqrt{C_{jj}}` (the
    conditional minimum moves along the covariance column) and needs one derivative
    evaluation per iteration.  Steps that leave the chosen side or give non-finite values are
    halved.  Returns ``(bounds (n, 2), ok (n, 2))``; lanes with ``ok = False`` (parameter
    limits, strongly non-quadratic profiles) are left to :func:`profile_bounds`.
    """
    x_best = jnp.asarray(x_best)
    n = x_best.shape[0]
    target = f_best + delta
    index = jnp.repeat(jnp.arange(n), 2)
    sides = jnp.tile(jnp.array([-1.0, 1.0]), n)
    sigma = jnp.sqrt(jnp.abs(jnp.diag(cov_x)))

    def solve(j, side):
        onehot = jnp.arange(n) == j
        column = cov_x[:, j] / jnp.where(sigma[j] > 0, sigma[j], 1.0)
        x0 = x_best + side * jnp.sqrt(delta) * column

        def residual(x):
            f, g, h = derivatives(x)
            res = jnp.where(onehot, f - target, g)
            jac = jnp.where(onehot[:, None], g[None, :], h)
            return f, g, h, res, jac

        def converged(f, g, h):
            others = ~onehot
            g_o = jnp.where(others, g, 0.0)
            h_o = h * jnp.outer(others, others) + jnp.diag(onehot.astype(h.dtype))
            decrement = jnp.dot(g_o, small_linalg.solve(h_o, g_o))
            return (jnp.abs(f - target) < tol) & (jnp.abs(decrement) < gtol)

        def cond(state):
            return state[-1] == BoundFlag.RUNNING

        def body(state):
            # iteration -1 only evaluates the start (as in levenberg_marquardt: one copy of
            # the derivatives in the compiled loop)
            x, res, jac, alpha, it, flag = state
            first = it < 0
            step = jnp.where(first, 0.0, small_linalg.solve(jac, res))
            x_new = x - alpha * step
            f_n, g_n, h_n, res_n, jac_n = residual(x_new)
            finite = (jnp.all(jnp.isfinite(x_new)) & jnp.isfinite(f_n)
                      & jnp.all(jnp.isfinite(g_n)) & jnp.all(jnp.isfinite(h_n)))
            valid = first | (finite & (side * (x_new[j] - x_best[j]) > 0)
                             & (jnp.sum(res_n**2) < 4.0 * jnp.sum(res**2) + 1e-12))
            x = jnp.where(valid, x_new, x)
            res = jnp.where(valid, res_n, res)
            jac = jnp.where(valid, jac_n, jac)
            alpha = jnp.where(first, alpha,
                              jnp.where(valid, jnp.minimum(1.0, 2.0 * alpha), 0.5 * alpha))
            it = it + 1
            done = valid & finite & converged(f_n, g_n, h_n)
            failed = ((alpha < 1e-3) | (it >= max_iter) | (jnp.abs(x[j] - x_best[j]) > max_excursion)
                      | (first & ~finite))
            flag = jnp.where(done, BoundFlag.FOUND,
                             jnp.where(failed, BoundFlag.NOT_REACHED, BoundFlag.RUNNING))
            return x, res, jac, alpha, it, flag

        state = (x0, jnp.zeros_like(x0), jnp.eye(n, dtype=x0.dtype), jnp.asarray(1.0),
                 jnp.asarray(-1), jnp.asarray(BoundFlag.RUNNING))
        x, _, _, _, _, flag = jax.lax.while_loop(cond, body, state)
        return x[j], flag == BoundFlag.FOUND

    # lanes one after another (lax.map): no batching of the derivatives to trace and compile,
    # and a lane stops when it converges instead of running until the slowest one does
    values, ok = jax.lax.map(lambda lane: solve(*lane), (index, sides))
    return values.reshape(n, 2), ok.reshape(n, 2)


def profile_bounds(fun, x_best, f_best, sigma_x, delta, *, derivatives=None, max_outer=60,
                   inner_iter=50, tol=1e-4, max_excursion=100.0, cov_x=None, known=None,
                   search=True):
    """Profile-likelihood bounds of every coordinate of ``x`` (unconstrained space).

    For each coordinate ``j`` and side ``s = -1, +1`` solve
    :math:`\\min_{x_{-j}} f(x)|_{x_j=v} = f_\\mathrm{best} + \\Delta` for ``v`` on that side,
    all ``2 n`` problems in one ``vmap``.

    Returns ``(bounds, status)``: ``bounds`` (n, 2) in unconstrained space (``-inf``/``inf``
    where the profile never reaches the level, e.g. at a parameter limit), and ``status``
    (n, 2), a :class:`BoundFlag`: FOUND (1), NOT_REACHED (2: not bracketed within
    ``max_outer`` steps, limit reached), LOWER_MINIMUM (3: a lower minimum was found on the
    way, the fit was not at the global minimum).

    With ``cov_x`` and ``derivatives`` the bounds are first solved by
    :func:`venzon_moolgavkar` and the safeguarded search runs only for the lanes it leaves.
    ``search=False`` stops there: unsolved lanes are NaN with flag RUNNING, to be finished by
    a later call with ``known`` (the bounds found so far, NaN where unsolved), which skips
    the Venzon-Moolgavkar stage.  The two calls give what one call gives; a fit compiles the
    (large) search program only when it is needed (:func:`bkgjax.fit.fit`).
    """
    x_best = jnp.asarray(x_best)
    n = x_best.shape[0]
    target = f_best + delta
    index = jnp.repeat(jnp.arange(n), 2)
    sides = jnp.tile(jnp.array([-1.0, 1.0]), n)

    def solve(j, side, known=jnp.nan):
        """Safeguarded search; a finite ``known`` bound (already solved) skips the loop."""
        onehot = jnp.arange(n) == j
        others = ~onehot
        v_best = x_best[j]
        # first step from the curvature, but at most one unit: near a limit the unconstrained
        # coordinate is logarithmic and the curvature vanishes (sigma_x -> inf)
        step0 = jnp.sqrt(delta) * jnp.where(jnp.isfinite(sigma_x[j]) & (sigma_x[j] > 0),
                                            jnp.minimum(sigma_x[j], 1.0), 1.0)

        def inner(v, x_start):
            x0 = jnp.where(onehot, v, x_start)
            res = levenberg_marquardt(fun, x0, derivatives=derivatives, mask=others,
                                      max_iter=inner_iter)
            # envelope theorem: d(profile)/dv is the partial derivative at the inner optimum
            grad_j = jnp.sum(jnp.where(onehot, res.grad, 0.0))
            return res.x, res.fun, grad_j

        def cond(state):
            return state[-1] == BoundFlag.RUNNING

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
            # outward step: Newton's when it points out, bounded below by half the excursion
            # plus a tenth of the first step (in sigma units, not absolute: the coordinates
            # of a well-measured parameter move by ~sigma), above by tripling the excursion
            grow = jnp.clip(jnp.where(jnp.isfinite(outward) & (outward > 0), outward,
                                      excursion + step0),
                            excursion * 0.5 + 0.1 * step0, 3.0 * excursion + step0)
            v_explore = v + side * grow
            v_next = jnp.where(bracketed, v_bracketed, v_explore)
            it = it + 1
            done = jnp.abs(h) < tol
            too_far = (~bracketed) & (jnp.abs(v_next - v_best) > max_excursion)
            flag = jnp.where(done, BoundFlag.FOUND,
                             jnp.where(too_far | (it >= max_outer), BoundFlag.NOT_REACHED,
                                       BoundFlag.RUNNING))
            v_final = jnp.where(done, v, v_next)
            return v_final, v_in, v_out, x_cur, it, found_lower, flag

        skip = jnp.isfinite(known)
        v0 = jnp.where(skip, known, v_best + side * step0)
        # under vmap a while_loop runs while *any* lane runs: solved lanes start as done
        state = (v0, v_best, jnp.where(skip, v0, jnp.inf), x_best, jnp.asarray(0),
                 jnp.asarray(False), jnp.where(skip, BoundFlag.FOUND, BoundFlag.RUNNING))
        v, _, v_out, _, _, found_lower, flag = jax.lax.while_loop(cond, body, state)
        bracketed = jnp.isfinite(v_out)
        v = jnp.where(flag == BoundFlag.FOUND, v, jnp.where(bracketed, v, side * jnp.inf))
        flag = jnp.where(found_lower, BoundFlag.LOWER_MINIMUM, flag)
        return v, flag

    if known is None:
        if cov_x is None or derivatives is None:
            values, flags = jax.vmap(solve)(index, sides)
            return values.reshape(n, 2), flags.reshape(n, 2)
        vm_values, vm_ok = venzon_moolgavkar(derivatives, x_best, f_best, cov_x, delta, tol=tol,
                                             max_excursion=max_excursion)
        known = jnp.where(vm_ok, vm_values, jnp.nan)
    known = jnp.asarray(known).reshape(n, 2)
    if not search:
        return known, jnp.where(jnp.isfinite(known), BoundFlag.FOUND, BoundFlag.RUNNING)
    values, flags = jax.vmap(solve)(index, sides, known.reshape(-1))
    return values.reshape(n, 2), flags.reshape(n, 2)
