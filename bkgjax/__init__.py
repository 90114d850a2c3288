"""bkgjax: probabilistic modelling of X-ray backgrounds on JAX.

A core by concept that knows no mission, and one package per mission that uses it
(tests/test_architecture.py checks the import layers)::

    io/          OGIP PHA/ARF/RMF files and FITS helpers -> NumPy arrays (reads, evaluates nothing)
    spectral/    binned spectral models (pure maths, XSPEC names), expressions, fluxes
    stats/       per-bin likelihoods (Poisson, cash, cstat, wstat), Poisson/Gehrels limits
    fit/         datasets, gradient MLE (Newton/LM, L-BFGS), covariance, profile intervals
    infer/       NumPyro models, NUTS, arviz InferenceData
    simulate/    Poisson realisations (fakeit) and the shared Poisson inverse-CDF walk
    missions/    nustar_cxb, nustar_survey, isgri, acis: readers, recipes, pipelines, CLI

Likelihood evaluations need float64 (C-stat differences of order 1e-3 on totals of 1e5),
so importing bkgjax switches JAX to 64-bit mode, as numpyro.enable_x64() would, and turns on
JAX's persistent compilation cache so that a new process reuses what earlier ones compiled
(:mod:`bkgjax.runtime`: the folder, and ``BKGJAX_CACHE_DIR=off`` to turn it off).  Importing
bkgjax does not import JAX (both are set through JAX's environment variables when JAX is not
imported yet).  Call ``jax.config.update("jax_enable_x64", False)`` yourself after import if
you really want 32-bit (not supported for fitting).
"""

from .runtime import configure_jax as _configure_jax

_configure_jax()

__version__ = "0.1.0"

__all__ = ["__version__"]
