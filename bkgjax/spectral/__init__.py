"""Binned spectral models (XSPEC names and units), model expressions, band fluxes, and the
evaluation of XSPEC ``save model`` files (:mod:`bkgjax.spectral.xspec_terms`).

Folding through a response is a matrix product done where the counts are predicted
(:func:`bkgjax.fit.predicted_counts`)."""

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
    expression_kind,
    fsline,
    gabs,
    gaussian,
    list_components,
    parse_expression,
    parse_model,
    powerlaw,
)
from .xspec_terms import XspecStructure, XspecTermModel

__all__ = [
    "COMPONENTS", "CXB_GRUBER_NORM_SR", "KEV_TO_ERG", "Model", "ModelStructure", "Parameter", "SR_TO_DEG2",
    "XspecStructure", "XspecTermModel",
    "bknpower", "check_energy_grid", "component", "constant", "cutoffpl", "cxb_gruber",
    "energy_flux", "expdec", "expression_kind", "flux_from_covariance", "flux_samples",
    "fsline", "gabs", "gaussian", "list_components", "parse_expression", "parse_model",
    "photon_flux", "powerlaw", "powerlaw_integral",
]
