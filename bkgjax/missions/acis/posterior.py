r"""NumPyro model: faint diffuse source + ACIS particle background with uncertain normalisation and hardness.

Counts in channel :math:`i` (Poisson):

.. math::
    \mu_i = \sum_E K\!\int_E E'^{-\Gamma}\,dE'\;T A_E R_{E i}
            + \sum_c [\,n_C\,C_{c,i}\,(R_c/R_0)^{\alpha_c-\alpha_{c,0}} + n_L\,L_{c,i}\,],

with the generated particle-background continuum :math:`C` and lines :math:`L`
(:mod:`bkgjax.missions.acis.pback`, Suzuki et al. 2021).  Priors:

* :math:`n_C \sim \mathcal N(1, 0.05)`, :math:`n_L \sim \mathcal N(1, 0.08)` truncated at 0 --
  the paper's modelling accuracy of 5 % in the continuum and 8 % around the lines (Sect. 4);
* :math:`\alpha_c \sim \mathcal N(\alpha_{c,0}, \sigma_\alpha)` for every BI CCD (Table 2 gives
  no errors; ``alpha_sigma`` is the user's statement of how well it is known, default 0.2);
* source: :math:`\ln K \sim U(-25, 0)` (K photons/keV/cm^2/s at 1 keV), :math:`\Gamma \sim U(0, 5)`.

With ``propagate=False`` the background is held at the generated model (:math:`n_C = n_L = 1`,
:math:`\alpha = \alpha_0`), the usual practice of subtracting a fixed background model; the
comparison of the two source-flux posteriors shows what the background uncertainty costs.
The deterministic site ``flux`` is the source energy flux in ``flux_band`` (erg/cm^2/s):
:math:`K\,\mathrm{keV}\!\int E^{1-\Gamma}dE`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, init_to_value

from bkgjax.missions.acis.pback import CONTINUUM_ACCURACY, LINE_ACCURACY, pback_counts
from bkgjax.spectral.components import powerlaw_integral
from bkgjax.spectral.flux import KEV_TO_ERG

__all__ = ["pback_source_model", "run_pback_nuts"]


def pback_source_model(counts, arrays, source_response, energ_lo, energ_hi, *, bi_index=(), propagate=True,
                       alpha_sigma=0.2, flux_band=(0.5, 7.0)):
    """NumPyro model (see module docstring).  ``bi_index``: static tuple of the BI CCD rows of ``arrays``."""
    log_norm = numpyro.sample("log_norm", dist.Uniform(-25.0, 0.0))
    index = numpyro.sample("index", dist.Uniform(0.0, 5.0))
    alpha = arrays["alpha0"]
    if propagate:
        n_c = numpyro.sample("norm_continuum", dist.TruncatedNormal(1.0, CONTINUUM_ACCURACY, low=0.0))
        n_l = numpyro.sample("norm_lines", dist.TruncatedNormal(1.0, LINE_ACCURACY, low=0.0))
        if bi_index:
            idx = jnp.asarray(bi_index)
            a = numpyro.sample("alpha", dist.Normal(arrays["alpha0"][idx], alpha_sigma).to_event(1))
            alpha = alpha.at[idx].set(a)
    else:
        n_c = n_l = 1.0
    source = (jnp.exp(log_norm) * powerlaw_integral(energ_lo, energ_hi, index)) @ source_response
    mu = source + pback_counts(n_c, n_l, alpha, arrays)
    lo, hi = flux_band
    numpyro.deterministic("flux", jnp.exp(log_norm) * KEV_TO_ERG * powerlaw_integral(lo, hi, index - 1.0))
    numpyro.sample("counts", dist.Poisson(mu), obs=counts)


def run_pback_nuts(counts, model, source_response, energ_lo, energ_hi, *, propagate=True, alpha_sigma=0.2,
                   flux_band=(0.5, 7.0), init=None, num_warmup=300, num_samples=500, num_chains=2, seed=0,
                   progress_bar=False) -> dict:
    """Run NUTS on :func:`pback_source_model`; return ``{site: ndarray (chain, draw, ...)}`` plus ``"diverging"``.

    Parameters
    ----------
    counts : array (n_chan,)
        Observed counts (source + particle background).
    model : PbackModel
        Generated background (:func:`bkgjax.missions.acis.pipeline.generate_pback`).
    source_response : array (n_energy, n_chan)
        :math:`T A_E R_{Ei}` (cm^2 s).
    init : dict, optional
        Starting values (e.g. ``{"log_norm": ..., "index": ...}`` from a C-stat fit);
        chains start there (NumPyro ``init_to_value``).
    """
    counts = jnp.asarray(counts, jnp.float64)
    bi_index = tuple(int(i) for i in np.flatnonzero(model.is_bi))
    values = {"log_norm": -8.0, "index": 2.0}
    if propagate:
        values.update(norm_continuum=1.0, norm_lines=1.0)
        if bi_index:
            values["alpha"] = jnp.asarray(model.alpha0[list(bi_index)])
    values.update(init or {})
    values = {k: v for k, v in values.items() if propagate or k in ("log_norm", "index")}

    def fn(counts, arrays, resp, e_lo, e_hi):
        pback_source_model(counts, arrays, resp, e_lo, e_hi, bi_index=bi_index, propagate=propagate,
                           alpha_sigma=alpha_sigma, flux_band=flux_band)

    kernel = NUTS(fn, init_strategy=init_to_value(values=values), target_accept_prob=0.85)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=progress_bar)
    mcmc.run(jax.random.PRNGKey(seed), counts, model.arrays(), jnp.asarray(source_response),
             jnp.asarray(energ_lo), jnp.asarray(energ_hi))
    out = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    out["diverging"] = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    return out
