"""NumPyro posteriors (NUTS) built from the fit likelihood; arviz InferenceData out."""

from .numpyro_model import (
    NutsDiagnosticsWarning,
    PoissonStatistic,
    batched_spectral_model,
    nuts_diagnostics,
    posterior_flux,
    run_nuts,
    spectral_model,
)

__all__ = ["NutsDiagnosticsWarning", "PoissonStatistic", "batched_spectral_model",
           "nuts_diagnostics", "posterior_flux", "run_nuts", "spectral_model"]
