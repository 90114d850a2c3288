"""NumPyro posteriors (NUTS) built from the fit likelihood; arviz InferenceData out."""

from .numpyro_model import (
    PoissonStatistic,
    batched_spectral_model,
    posterior_flux,
    run_nuts,
    spectral_model,
)

__all__ = ["PoissonStatistic", "batched_spectral_model", "posterior_flux", "run_nuts",
           "spectral_model"]
