"""bkgjax: probabilistic modelling of X-ray backgrounds on JAX.

Layers follow the data flow (lower layers never import higher ones)::

    io/          OGIP PHA/ARF/RMF files -> NumPy arrays (the only place that reads FITS)
    instruments/ mission geometry and recipes
    spectral/    binned spectral models (pure maths), response folding, fluxes
    stats/       per-bin likelihoods (Poisson, cash, cstat, wstat), Gehrels/Poisson limits
    fit/         datasets, gradient MLE (Newton/LM, L-BFGS), covariance, profile intervals
    infer/       NumPyro models, NUTS, arviz InferenceData
    simulate/    Poisson realisations (fakeit), vmapped over PRNG keys

Likelihood evaluations need float64 (C-stat differences of order 1e-3 on totals of 1e5),
so importing bkgjax switches JAX to 64-bit mode, as numpyro.enable_x64() would.  Set the
environment variable ``JAX_ENABLE_X64=0`` *and* call ``jax.config.update`` yourself after
import if you really want 32-bit (not supported for fitting).
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

__all__ = ["__version__"]
