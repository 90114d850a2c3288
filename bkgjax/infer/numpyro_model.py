r"""NumPyro posteriors of spectral models, from the same likelihood as the fits.

The observed site ``counts`` uses :class:`PoissonStatistic`, whose ``log_prob`` is built from
:mod:`bkgjax.stats` (one source of truth):

* ``cash``/``cstat``: :math:`\ln P(D|M)` = :func:`bkgjax.stats.poisson_loglike` (these two
  statistics are :math:`-2\ln P` up to data-only constants, so the posterior is identical);
* ``wstat``: :math:`-W_i/2` per bin (:func:`bkgjax.stats.wstat`), the background rate profiled
  out (a profile likelihood, as XSPEC/Sherpa use; pointwise log-likelihoods are then
  profile values).

Priors come from :attr:`Parameter.prior`; parameters without one get a flat prior within their
limits (``ImproperUniform`` on the interval), so the posterior mode is the MLE.  Chains start
near the MLE (a short fit first), dispersed by the covariance, which keeps warm-up short and
R-hat meaningful.

:func:`run_nuts` samples the same posterior in whitened coordinates (:class:`WhitenedPrior`):
every free parameter is mapped to the unconstrained space of its support (log / logit of its
limits), then centred on the MLE and scaled by the Cholesky factor of the MLE covariance
carried there, ``u = u_MLE + L z``.  An affine change of variables leaves the target
unchanged (its Jacobian is constant); it hands NUTS a posterior of unit scale, so the initial
step-size search (from 1), the identity start of the mass matrix and warm-up's regularisation
of the adapted mass matrix (shrinkage towards ``1e-3 I``, Stan's) all fit, however narrow
the posterior is: a bright spectrum's unconstrained posterior has widths ~1e-3 and would be
dominated by that shrinkage.  ``u_MLE`` and ``L`` are arguments of the NumPyro model, so new
values do not recompile the cached sampler.  The parameters are deterministic sites under
their own names; the whitened site is dropped from the returned posterior.
"""

from __future__ import annotations

import warnings
from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

from ..fit.core import fit as _fit
from ..fit.dataset import SpectralData, predicted_counts
from ..fit.fluxes import draw_fluxes
from ..fit.joint import JointModel, as_joint, joint_predicted
from ..stats import poisson_loglike, wstat

__all__ = ["PoissonStatistic", "WhitenedPrior", "spectral_model", "joint_spectral_model",
           "run_nuts", "posterior_flux", "batched_spectral_model"]


class PoissonStatistic(dist.Distribution):
    """Counts likelihood defined by a bkgjax statistic (``log_prob`` per bin).

    ``sample`` draws Poisson counts of the model (plus, for wstat, the profiled background in
    the source region), for posterior predictive checks.
    """

    arg_constraints = {"model_counts": constraints.nonnegative}
    support = constraints.nonnegative_integer
    pytree_data_fields = ("model_counts", "background_counts", "background_ratio")
    pytree_aux_fields = ("stat",)

    def __init__(self, model_counts, stat="cstat", background_counts=None,
                 background_ratio=None, validate_args=None):
        self.model_counts = model_counts
        self.stat = stat
        self.background_counts = background_counts
        self.background_ratio = background_ratio
        super().__init__(batch_shape=jnp.shape(model_counts), validate_args=validate_args)

    def log_prob(self, value):
        if self.stat == "wstat":
            return -0.5 * wstat(self.model_counts, value, self.background_counts,
                                self.background_ratio)
        return poisson_loglike(self.model_counts, value)

    def sample(self, key, sample_shape=()):
        rate = self.model_counts
        if self.stat == "wstat":
            # replicated source-region counts: model + the background spectrum's estimate of the
            # background in the source region, B / r (the profiled value needs the observed
            # counts, which a replicate does not have)
            rate = rate + self.background_counts / self.background_ratio
        shape = sample_shape + self.batch_shape
        return jax.random.poisson(key, rate, shape=shape).astype(jnp.float64)


def _site_prior(param):
    if param.prior is not None:
        return param.prior
    if np.isfinite(param.min) and np.isfinite(param.max):
        support = constraints.interval(param.min, param.max)
    elif np.isfinite(param.min):
        support = constraints.greater_than(param.min)
    elif np.isfinite(param.max):
        support = constraints.less_than(param.max)
    else:
        support = constraints.real
    return dist.ImproperUniform(support, (), ())


#: Name of the whitened sample site of :func:`run_nuts` (not a parameter name: those are
#: qualified, ``component.parameter``).
WHITENED_SITE = "_whitened"


class WhitenedPrior(dist.Distribution):
    r"""The free parameters' priors as a density of whitened coordinates ``z`` (a vector).

    ``u = centre + scale @ z`` are unconstrained coordinates (``centre``: the MLE mapped there,
    ``scale``: lower Cholesky factor of the covariance mapped there) and the parameter values
    are :math:`\theta_i = T_i(u_i)`, :math:`T_i` = ``biject_to`` of prior i's support (what
    NumPyro itself uses for a site with that prior).  ``log_prob(z)`` =
    :math:`\sum_i \ln p_i(\theta_i) + \ln|T_i'(u_i)|` (the constant
    :math:`\ln|\det L|` left out), so sampling ``z`` targets exactly the posterior that
    per-parameter sites with these priors give.  Improper (flat priors): ``sample`` raises.
    """

    arg_constraints = {}
    support = constraints.real_vector
    pytree_data_fields = ("centre", "scale")
    pytree_aux_fields = ("priors",)

    def __init__(self, priors, centre, scale, validate_args=None):
        self.priors = tuple(priors)
        self.centre = centre
        self.scale = scale
        super().__init__(batch_shape=(), event_shape=(len(self.priors),),
                         validate_args=validate_args)

    def unconstrained(self, z):
        """``u = centre + scale @ z`` (``z``: (..., n))."""
        return self.centre + jnp.einsum("...j,ij->...i", z, self.scale)

    def values(self, z):
        r"""Parameter values :math:`\theta(z)`, shape (..., n)."""
        u = self.unconstrained(z)
        return jnp.stack([dist.biject_to(p.support)(u[..., i])
                          for i, p in enumerate(self.priors)], axis=-1)

    def log_prob(self, value):
        u = self.unconstrained(value)
        total = jnp.zeros(jnp.shape(u)[:-1])
        for i, prior in enumerate(self.priors):
            transform = dist.biject_to(prior.support)
            theta = transform(u[..., i])
            total = total + prior.log_prob(theta) + transform.log_abs_det_jacobian(
                u[..., i], theta)
        return total

    def sample(self, key, sample_shape=()):
        raise NotImplementedError("WhitenedPrior is improper (flat priors): no draws")


def _whitened_values(params, centre, scale):
    """Sample the whitened site; the free parameters' values as deterministic sites (named
    after the parameters), returned in the order of ``params``."""
    prior = WhitenedPrior([_site_prior(p) for p in params], centre, scale)
    values = prior.values(numpyro.sample(WHITENED_SITE, prior))
    for k, param in enumerate(params):
        numpyro.deterministic(param.name, values[..., k])
    return values


def spectral_model(model, data: SpectralData, stat="cstat", counts=None):
    """NumPyro model function: free parameters -> folded counts -> ``counts`` site.

    ``counts=None`` leaves the observed site unobserved (prior/posterior predictive).
    """
    theta = jnp.asarray(list(model.resolve({}).values()), dtype=jnp.float64)
    for i, param in enumerate(model.parameters):
        if param.is_free:
            theta = theta.at[i].set(numpyro.sample(param.name, _site_prior(param)))
    _spectrum_sites(model, theta, data, stat, counts)


def whitened_spectral_model(model, data: SpectralData, counts, centre, scale, stat="cstat"):
    """:func:`spectral_model` sampled in whitened coordinates (:class:`WhitenedPrior`; the
    same posterior): ``centre``/``scale`` in the order of ``model``'s free parameters."""
    free = [i for i, p in enumerate(model.parameters) if p.is_free]
    theta = jnp.asarray(list(model.resolve({}).values()), dtype=jnp.float64)
    values = _whitened_values([model.parameters[i] for i in free], centre, scale)
    theta = theta.at[np.asarray(free)].set(values)
    _spectrum_sites(model, theta, data, stat, counts)


def _spectrum_sites(model, theta, data, stat, counts):
    mu = predicted_counts(model.structure, theta, data)
    numpyro.deterministic("model_counts", mu)
    numpyro.sample(
        "counts",
        PoissonStatistic(mu, stat, data.background_counts, data.background_ratio),
        obs=counts,
    )


class SiteSpec(NamedTuple):
    """What a parameter's sample site needs (hashable; no value): see :func:`_site_prior`."""

    name: str
    is_free: bool
    min: float
    max: float
    prior: object


def joint_spectral_model(theta_start, datasets, observed=None, *, structure, parameters, stat):
    """NumPyro model of a joint fit (:mod:`bkgjax.fit.joint`): the free global parameters
    (``parameters``: a :class:`SiteSpec` per global parameter, in order) -> every data set's
    folded counts.  Observed sites, one per spectrum so that arviz keeps a pointwise
    log-likelihood per data set (``az.loo(idata, var_name="counts_2")``): ``counts_k`` (source
    spectrum of data set k, 1-based) and, with a background model, ``background_k``;
    deterministic ``model_counts_k`` (and ``background_model_k``).  ``observed`` is a tuple
    (one entry per data set) of ``(counts, background counts or None)``; ``None`` samples."""
    theta = theta_start
    for i, param in enumerate(parameters):
        if param.is_free:
            theta = theta.at[i].set(numpyro.sample(param.name, _site_prior(param)))
    _joint_sites(theta, datasets, observed, structure, stat)


def whitened_joint_spectral_model(theta_start, centre, scale, datasets, observed=None, *,
                                  structure, parameters, stat):
    """:func:`joint_spectral_model` sampled in whitened coordinates (:class:`WhitenedPrior`;
    the same posterior): ``centre``/``scale`` in the order of the free ``parameters``."""
    free = [i for i, p in enumerate(parameters) if p.is_free]
    values = _whitened_values([parameters[i] for i in free], centre, scale)
    _joint_sites(theta_start.at[np.asarray(free)].set(values), datasets, observed, structure,
                 stat)


def _joint_sites(theta, datasets, observed, structure, stat):
    for k, (data, entry) in enumerate(zip(datasets, joint_predicted(structure, theta, datasets)),
                                      start=1):
        obs = (None, None) if observed is None else observed[k - 1]
        numpyro.deterministic(f"model_counts_{k}", entry["source"])
        if structure.background is None:
            numpyro.sample(f"counts_{k}", PoissonStatistic(entry["source"], stat,
                                                           data.background_counts,
                                                           data.background_ratio), obs=obs[0])
        else:
            numpyro.sample(f"counts_{k}", PoissonStatistic(entry["source"], stat), obs=obs[0])
            numpyro.deterministic(f"background_model_{k}", entry["background"])
            numpyro.sample(f"background_{k}", PoissonStatistic(entry["background"], stat),
                           obs=obs[1])


def batched_spectral_model(model, data: SpectralData, counts, background_counts=None,
                           stat="cstat"):
    """Independent posteriors of many spectra (same response) in one NumPyro model.

    Every free parameter gets one value per spectrum inside ``plate("spectrum")``; the joint
    posterior factorises, so one NUTS run samples all of them (used for coverage studies).
    """
    n = counts.shape[0]
    theta0 = jnp.asarray(list(model.resolve({}).values()), dtype=jnp.float64)
    with numpyro.plate("spectrum", n):
        columns = [
            numpyro.sample(p.name, _site_prior(p)) if p.is_free else jnp.full(n, theta0[i])
            for i, p in enumerate(model.parameters)
        ]
    theta = jnp.stack(columns, axis=-1)

    bkg = data.background_counts if background_counts is None else background_counts
    if bkg is not None and bkg.ndim == 1:
        bkg = jnp.broadcast_to(bkg, counts.shape)
    mu = jax.vmap(lambda t: predicted_counts(model.structure, t, data))(theta)
    ratio = data.background_ratio
    numpyro.sample("counts", PoissonStatistic(mu, stat, bkg, ratio).to_event(1), obs=counts)


def _interior(value, support, sd):
    """``value`` moved strictly inside ``support`` (an MLE at a limit has no finite
    unconstrained image) by a margin on the scale of the parameter, not of the interval
    (limits such as ``norm`` in [0, 1e24])."""
    low = float(np.asarray(getattr(support, "lower_bound", -np.inf)))
    high = float(np.asarray(getattr(support, "upper_bound", np.inf)))
    scale = sd if np.isfinite(sd) and sd > 0 else (abs(value) if value != 0 else 1.0)
    if np.isfinite(high - low):
        scale = min(scale, high - low)
    margin = 1e-6 * scale
    for _ in range(30):
        inside = min(max(value, low + margin), high - margin)
        if low < inside < high:
            return inside
        margin *= 10.0  # the margin is below the spacing of floats at the limit
    return 0.5 * (low + high) if np.isfinite(high - low) else value


def _whitening(params, best):
    r"""``(centre, scale)`` of :class:`WhitenedPrior` for the free ``params``: the MLE mapped to
    the unconstrained space of each site's support, and the lower Cholesky factor of the MLE
    covariance carried there to first order (:math:`du = d\theta / T'(u)`).  Where the
    covariance is unusable (not finite or not positive definite): a diagonal of the
    finite covariance errors, else 1e-3 relative widths."""
    free = [p for p in params if p.is_free]
    order = [list(best.free_names).index(p.name) for p in free]
    n = len(free)
    mean = np.array([best.values[p.name] for p in free], dtype=float)
    cov = np.asarray(best.covariance, dtype=float).reshape(len(best.free_names), -1)
    cov = cov[np.ix_(order, order)]
    var = np.diag(cov)
    sd = np.sqrt(np.where(np.isfinite(var) & (var > 0), var, np.nan))
    centre, slope = np.empty(n), np.empty(n)  # u of the MLE, d theta / d u there
    for k, param in enumerate(free):
        support = _site_prior(param).support
        transform = dist.biject_to(support)
        x = _interior(mean[k], support, sd[k])
        mean[k] = x
        u = transform.inv(jnp.asarray(x, dtype=jnp.float64))
        centre[k] = float(u)
        slope[k] = float(jnp.exp(transform.log_abs_det_jacobian(u, transform(u))))
    scale = None
    if np.all(np.isfinite(cov)) and np.all(np.isfinite(slope)) and np.all(slope > 0):
        try:
            scale = np.linalg.cholesky(cov / np.outer(slope, slope))
        except np.linalg.LinAlgError:
            scale = None
        if scale is not None and not (np.all(np.isfinite(scale))
                                      and np.all(np.diag(scale) > 0)):
            scale = None
    if scale is None:
        width = np.where(np.isfinite(sd), sd, 1e-3 * np.where(mean != 0, np.abs(mean), 1.0))
        width = width / np.where(np.isfinite(slope) & (slope > 0), slope, 1.0)
        scale = np.diag(np.where(np.isfinite(width) & (width > 0), width, 1e-3))
    return jnp.asarray(centre, dtype=jnp.float64), jnp.asarray(scale, dtype=jnp.float64)


def _initial_whitened(key, num_chains, n, spread=0.5):
    """Whitened start per chain: ``spread`` x standard normal draws (the MLE + ``spread`` x
    covariance draws in unconstrained space), as :func:`run_nuts`'s ``init_params`` (no
    chain axis for one chain, as NumPyro expects)."""
    z = spread * jax.random.normal(key, (num_chains, n), dtype=jnp.float64)
    return {WHITENED_SITE: z[0] if num_chains == 1 else z}


def _initial_chains(model, best, key, num_chains, spread=0.5):
    """Unconstrained start per chain of the per-parameter sites of :func:`spectral_model`:
    MLE + ``spread`` x covariance draws, taken in the unconstrained space (always inside the
    limits; the same starts as :func:`run_nuts`'s whitened ones)."""
    params = [p for p in model.parameters if p.is_free]
    centre, scale = _whitening(params, best)
    z = spread * jax.random.normal(key, (num_chains, len(params)), dtype=jnp.float64)
    u = centre + z @ scale.T
    return {p.name: u[:, k] for k, p in enumerate(params)}


# Compiled samplers, reused across calls with the same model structure, statistic and
# settings (a cache like jit's own, not configuration): with ``jit_model_args`` new data or
# start values of the same shapes do not recompile.  Bounded: the least recently used of
# more than SAMPLER_CACHE_SIZE samplers is dropped.
SAMPLER_CACHE_SIZE = 8


def _sampler(model, stat, num_warmup, num_samples, num_chains, target_accept, progress_bar):
    # the parameters' names, free flags, limits and prior objects select the compiled sampler
    # (the sampler traces them); the values come with each run
    parameters = tuple((p.name, p.is_free, p.min, p.max, id(p.prior)) for p in model.parameters)
    return _cached_sampler(model.structure, parameters, stat, num_warmup, num_samples,
                           num_chains, target_accept, progress_bar)


@lru_cache(maxsize=SAMPLER_CACHE_SIZE)
def _cached_sampler(structure, parameters, stat, num_warmup, num_samples, num_chains,
                    target_accept, progress_bar):
    """One MCMC object per key (``structure`` and ``parameters`` are part of the key only)."""
    kernel = NUTS(partial(whitened_spectral_model, stat=stat),
                  target_accept_prob=target_accept, dense_mass=True)
    return MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress_bar, jit_model_args=True)


@lru_cache(maxsize=SAMPLER_CACHE_SIZE)
def _cached_joint_sampler(structure, parameters, stat, num_warmup, num_samples, num_chains,
                          target_accept, progress_bar):
    """As :func:`_cached_sampler` for :func:`joint_spectral_model` (``parameters``: the
    :class:`SiteSpec` tuple: limits, free flags and priors select the compiled sampler)."""
    kernel = NUTS(partial(whitened_joint_spectral_model, structure=structure,
                          parameters=parameters, stat=stat),
                  target_accept_prob=target_accept, dense_mass=True)
    return MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress_bar, jit_model_args=True)


class NutsDiagnosticsWarning(UserWarning):
    """The NUTS chains do not pass the convergence checks of :func:`nuts_diagnostics`."""


#: Convergence thresholds (Vehtari et al. 2021): rank-normalised split R-hat, bulk and tail
#: effective sample sizes of every free parameter, and no divergent transition.
R_HAT_MAX = 1.01
ESS_MIN = 400


def nuts_diagnostics(idata, var_names) -> dict:
    """Worst R-hat, smallest bulk/tail ESS over ``var_names``, number of divergences, and the
    list of ``problems`` (empty when the chains pass the thresholds above)."""
    import arviz as az

    names = list(var_names)
    r_hat = az.rhat(idata, var_names=names)
    ess_bulk = az.ess(idata, var_names=names, method="bulk")
    ess_tail = az.ess(idata, var_names=names, method="tail")
    worst_r = max(float(r_hat[n].max()) for n in names)
    min_bulk = min(float(ess_bulk[n].min()) for n in names)
    min_tail = min(float(ess_tail[n].min()) for n in names)
    diverging = idata.sample_stats.get("diverging")
    n_div = int(diverging.sum()) if diverging is not None else 0
    problems = []
    if not worst_r <= R_HAT_MAX:
        problems.append(f"R-hat {worst_r:.3f} > {R_HAT_MAX}")
    if not min_bulk >= ESS_MIN:
        problems.append(f"bulk ESS {min_bulk:.0f} < {ESS_MIN}")
    if not min_tail >= ESS_MIN:
        problems.append(f"tail ESS {min_tail:.0f} < {ESS_MIN}")
    if n_div:
        problems.append(f"{n_div} divergent transition(s)")
    return {"r_hat_max": worst_r, "ess_bulk_min": min_bulk, "ess_tail_min": min_tail,
            "divergences": n_div, "problems": problems}


def run_nuts(model, data: SpectralData, stat="cstat", *, num_warmup=500, num_samples=1000,
             num_chains=4, seed=0, posterior_predictive=True, progress_bar=False,
             target_accept=0.8):
    """Sample the posterior with NUTS; return an :class:`arviz.InferenceData`.

    ``model`` a Model and ``data`` one SpectralData, or a JointModel (or a Model shared by
    all) over a sequence of data sets: then the sites are per data set
    (:func:`joint_spectral_model`: ``counts_k``, ``background_k``, ``model_counts_k``), so
    the log-likelihood group holds one pointwise array per spectrum (LOO per data set).

    Groups: ``posterior`` (free parameters and ``model_counts``), ``sample_stats``,
    ``log_likelihood`` (pointwise ``counts``), ``observed_data`` and, if requested,
    ``posterior_predictive`` (Poisson replicas of each draw's model counts, plus for wstat
    the background spectrum's estimate of the background in the source region).
    Check ``arviz.summary(idata)`` for R-hat and ESS.  Chains run vectorised; the compiled
    sampler is reused by later calls with the same model structure and settings.
    """
    import arviz as az  # noqa: F401  (needed for the result: fail before sampling)

    if stat not in ("cash", "cstat", "wstat"):
        raise ValueError(f"run_nuts samples a Poisson likelihood; stat={stat!r} has none "
                         "(use cstat, cash or wstat)")
    for name, value, low in (("num_warmup", num_warmup, 0), ("num_samples", num_samples, 1),
                             ("num_chains", num_chains, 1)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"run_nuts: {name} must be an integer >= {low}, got {value!r}")
    if isinstance(model, JointModel) or not isinstance(data, SpectralData):
        return _run_joint_nuts(model, data, stat, num_warmup, num_samples, num_chains, seed,
                               posterior_predictive, progress_bar, target_accept)
    best = _fit(model, data, stat, errors="covariance")
    key = jax.random.PRNGKey(seed)
    key_init, key_run, key_ppc = jax.random.split(key, 3)
    # whitened coordinates around the MLE (module docstring): values, not part of the key
    centre, scale = _whitening(model.parameters, best)
    init = _initial_whitened(key_init, num_chains, len(centre))
    mcmc = _sampler(model, stat, num_warmup, num_samples, num_chains, target_accept,
                    progress_bar)
    mcmc.run(key_run, model, data, data.counts, centre, scale, init_params=init)
    ppc = None
    if posterior_predictive:
        rate = mcmc.get_samples(group_by_chain=True)["model_counts"]
        if stat == "wstat":
            rate = rate + data.background_counts / data.background_ratio
        replicas = jax.random.poisson(key_ppc, rate, shape=rate.shape).astype(jnp.float64)
        ppc = {"counts": np.asarray(replicas)}
    idata = _inference_data(mcmc, ppc)
    _check_diagnostics(idata, model.free_names)
    return idata


def _inference_data(mcmc, ppc):
    """arviz InferenceData of a whitened run, without the whitened site."""
    import arviz as az

    idata = az.from_numpyro(mcmc, posterior_predictive=ppc)
    posterior = idata.posterior
    dims = [d for d in posterior[WHITENED_SITE].dims if d not in ("chain", "draw")]
    attrs = dict(posterior.attrs)
    posterior = posterior.drop_vars([WHITENED_SITE, *dims])
    posterior.attrs = attrs
    idata.posterior = posterior
    return idata


def _run_joint_nuts(model, data, stat, num_warmup, num_samples, num_chains, seed,
                    posterior_predictive, progress_bar, target_accept):
    model, datasets = as_joint(model, data)
    best = _fit(model, datasets, stat, errors="covariance")
    key_init, key_run, key_ppc = jax.random.split(jax.random.PRNGKey(seed), 3)
    centre, scale = _whitening(best.model.parameters, best)
    init = _initial_whitened(key_init, num_chains, len(centre))
    structure = model.structure
    sites = tuple(SiteSpec(p.name, p.is_free, p.min, p.max, p.prior)
                  for p in best.model.parameters)  # values excluded: they do not recompile
    mcmc = _cached_joint_sampler(structure, sites, stat, num_warmup, num_samples,
                                 num_chains, target_accept, progress_bar)
    theta_start = jnp.asarray(list(best.model.resolve({}).values()), dtype=jnp.float64)
    observed = tuple((d.counts, d.background_counts if model.background is not None else None)
                     for d in datasets)
    mcmc.run(key_run, theta_start, centre, scale, datasets, observed, init_params=init)
    ppc = None
    if posterior_predictive:
        samples = mcmc.get_samples(group_by_chain=True)
        ppc = {}
        keys = jax.random.split(key_ppc, 2 * len(datasets))
        for k, d in enumerate(datasets, start=1):
            rate = samples[f"model_counts_{k}"]
            if stat == "wstat":
                rate = rate + d.background_counts / d.background_ratio
            ppc[f"counts_{k}"] = np.asarray(jax.random.poisson(keys[2 * k - 2], rate,
                                                               shape=rate.shape), dtype=float)
            if model.background is not None:
                rate = samples[f"background_model_{k}"]
                ppc[f"background_{k}"] = np.asarray(jax.random.poisson(
                    keys[2 * k - 1], rate, shape=rate.shape), dtype=float)
    idata = _inference_data(mcmc, ppc)
    _check_diagnostics(idata, model.free_names, stacklevel=4)  # user -> run_nuts -> here
    return idata


def _check_diagnostics(idata, free_names, stacklevel=3):
    diagnostics = nuts_diagnostics(idata, free_names)
    for key, value in diagnostics.items():
        if key != "problems":
            idata.posterior.attrs[f"bkgjax_{key}"] = value
    if diagnostics["problems"]:
        warnings.warn(f"NUTS did not converge well: {'; '.join(diagnostics['problems'])}; run "
                      "longer (num_warmup, num_samples), more chains, or reparametrise/freeze "
                      "degenerate parameters", NutsDiagnosticsWarning, stacklevel=stacklevel)


def posterior_flux(idata, model, e_min=2.0, e_max=10.0, kind="energy", n_bins=512, *,
                   dataset=1, component=None):
    """Band flux for every posterior draw: array (chain, draw) in erg/cm^2/s (or photons).

    ``model`` a Model or JointModel (then the flux of data set ``dataset``'s source model);
    ``component`` a sub-expression of component labels (e.g. the unabsorbed ``powerlaw``)."""
    posterior = idata.posterior
    free = [p.name for p in model.parameters if p.is_free]
    stacked = np.stack([np.asarray(posterior[n]) for n in free], axis=-1)
    shape = stacked.shape[:-1]
    flat = stacked.reshape(-1, len(free))
    values = draw_fluxes(model, {n: flat[:, i] for i, n in enumerate(free)}, e_min, e_max,
                         kind=kind, dataset=dataset, component=component, n_bins=n_bins)
    return values.reshape(shape)
