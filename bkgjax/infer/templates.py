r"""NUTS posteriors for Poisson pixel models around a maximum-likelihood solution.

For models whose expected counts are a smooth function :math:`\mu(\theta)` of a few coefficients
per problem (the template models of :mod:`bkgjax.fit.templates`, the NuSTAR pixel model of
eq. 2 of Krivonos et al. 2021), the sampler works in whitened coordinates

.. math:: \theta = \hat\theta + L z, \qquad L L^T = \hat\Sigma ,

with :math:`\hat\theta, \hat\Sigma` the MLE and its Hessian covariance, so the posterior is close
to a standard normal in :math:`z` and NUTS needs no long adaptation.  The prior is flat in
:math:`\theta` (a wide normal, sd 30 in :math:`z`, i.e. 30 Hessian errors, to keep it proper),
so the posterior mode is the MLE; points with any :math:`\mu \le 0` on unmasked pixels have zero
likelihood.  Any number of independent problems share one NUTS run (leading batch axis).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from ..stats.likelihoods import poisson_loglike

__all__ = ["whitened_poisson_model", "run_whitened_nuts"]

_PRIOR_SD = 30.0


def whitened_poisson_model(counts, mask, theta_hat, chol, mean_fn):
    """NumPyro model: ``z ~ N(0, 30^2)``, ``theta = theta_hat + chol @ z`` (site ``theta``),
    Poisson log-likelihood of ``counts`` under ``mean_fn(theta)`` on unmasked pixels.

    Shapes: theta_hat [m, K], chol [m, K, K], counts/mask [m, ...]; ``mean_fn`` maps
    [m, K] -> [m, ...] expected counts.
    """
    m, k = theta_hat.shape
    z = numpyro.sample("z", dist.Normal(0.0, _PRIOR_SD).expand([m, k]).to_event(2))
    theta = theta_hat + jnp.einsum("mij,mj->mi", chol, z)
    numpyro.deterministic("theta", theta)
    mu = mean_fn(theta)
    used = mask
    feasible = jnp.all(jnp.where(used, mu > 0, True))
    safe = jnp.where(used & (mu > 0), mu, 1.0)
    loglike = jnp.sum(jnp.where(used, poisson_loglike(safe, counts), 0.0))
    numpyro.factor("loglike", jnp.where(feasible, loglike, -jnp.inf))


def run_whitened_nuts(counts, mask, theta_hat, covariance, mean_fn, *, num_warmup=500,
                      num_samples=1000, num_chains=2, seed=0, progress_bar=False):
    """Sample :func:`whitened_poisson_model`; returns theta draws [chain, draw, m, K] and the
    MCMC object (for arviz: ``arviz.from_numpyro(mcmc)``).

    Chains start at z = small random offsets (0.1) around the MLE and run vectorised.
    """
    theta_hat = jnp.asarray(theta_hat, jnp.float64)
    covariance = jnp.asarray(covariance, jnp.float64)
    # symmetrise and add a relative jitter so the Cholesky factor exists
    covariance = 0.5 * (covariance + jnp.swapaxes(covariance, -1, -2))
    scale = jnp.sqrt(jnp.clip(jnp.diagonal(covariance, axis1=-2, axis2=-1), 1e-300))
    corr = covariance / (scale[..., :, None] * scale[..., None, :])
    corr = corr + 1e-9 * jnp.eye(corr.shape[-1])
    chol = scale[..., :, None] * jnp.linalg.cholesky(corr)
    if not bool(jnp.all(jnp.isfinite(chol))):
        raise ValueError("the MLE covariance is not positive definite; cannot whiten the "
                         "posterior (check that every coefficient is constrained by the data)")
    counts = jnp.asarray(counts, jnp.float64)
    mask = jnp.asarray(mask, bool)
    kernel = NUTS(whitened_poisson_model, target_accept_prob=0.85)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress_bar)
    key_init, key_run = jax.random.split(jax.random.PRNGKey(seed))
    z0 = 0.1 * jax.random.normal(key_init, (num_chains,) + theta_hat.shape)
    mcmc.run(key_run, counts, mask, theta_hat, chol, mean_fn, init_params={"z": z0})
    theta = np.asarray(mcmc.get_samples(group_by_chain=True)["theta"])
    return theta, mcmc
