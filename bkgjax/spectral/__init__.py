"""Binned spectral models (XSPEC names and units), response folding and band fluxes."""

from .components import COMPONENTS, CXB_GRUBER_NORM_SR, SR_TO_DEG2, powerlaw_integral
from .flux import (
    KEV_TO_ERG,
    energy_flux,
    flux_from_covariance,
    flux_samples,
    photon_flux,
)
from .model import (
    Model,
    ModelStructure,
    Parameter,
    bknpower,
    check_energy_grid,
    component,
    constant,
    cutoffpl,
    cxb_gruber,
    expdec,
    fsline,
    gabs,
    gaussian,
    list_components,
    parse_model,
    powerlaw,
)
from .response import fold_dense, fold_sparse

__all__ = [
    "COMPONENTS", "CXB_GRUBER_NORM_SR", "KEV_TO_ERG", "Model", "ModelStructure", "Parameter", "SR_TO_DEG2",
    "bknpower", "check_energy_grid", "component", "constant", "cutoffpl", "cxb_gruber",
    "energy_flux", "expdec", "flux_from_covariance", "flux_samples", "fold_dense",
    "fold_sparse", "fsline", "gabs", "gaussian", "list_components", "parse_model",
    "photon_flux", "powerlaw", "powerlaw_integral",
]
