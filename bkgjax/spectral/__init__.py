"""Binned spectral models (XSPEC names and units), model expressions, band fluxes, and the
evaluation of XSPEC ``save model`` files (:mod:`bkgjax.spectral.xspec_terms`).

Folding through a response is a matrix product done where the counts are predicted
(:func:`bkgjax.fit.predicted_counts`).

User components (additive, multiplicative, convolution) are added with
:func:`register_component`, the :func:`user_component` decorator or
:func:`load_component` (``"package.module:attribute"``; ``$BKGJAX_COMPONENTS`` for the
command line), and are then used by name in model expressions like the built-ins.  XSPEC
table models are written as XSPEC does, ``atable{file.fits}``, ``mtable{...}``,
``etable{...}`` (:mod:`bkgjax.spectral.table_model`)."""

from .components import (
    COMPONENTS,
    COMPONENTS_ENV,
    CXB_GRUBER_NORM_SR,
    SR_TO_DEG2,
    ComponentSpec,
    ParameterSpec,
    load_component,
    powerlaw_integral,
    register_component,
    unregister_component,
    user_component,
)
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
    agauss,
    bbody,
    bbodyrad,
    bknpower,
    bremss,
    check_energy_grid,
    component,
    constant,
    cutoffpl,
    cxb_gruber,
    diskbb,
    expdec,
    expression_kind,
    fsline,
    gabs,
    gaussian,
    highecut,
    list_components,
    logpar,
    lorentz,
    parse_expression,
    parse_model,
    powerlaw,
    zbbody,
    zgauss,
    zhighect,
    zpowerlw,
)
from .table_model import TABLE_KINDS, table_component
from .xspec_terms import XspecStructure, XspecTermModel

__all__ = [
    "COMPONENTS", "COMPONENTS_ENV", "CXB_GRUBER_NORM_SR", "ComponentSpec", "KEV_TO_ERG", "Model",
    "ModelStructure", "Parameter", "ParameterSpec", "SR_TO_DEG2", "TABLE_KINDS",
    "XspecStructure", "XspecTermModel",
    "agauss", "bbody", "bbodyrad", "bremss", "diskbb", "highecut", "logpar", "lorentz", "zbbody",
    "zgauss", "zhighect", "zpowerlw",
    "bknpower", "check_energy_grid", "component", "constant", "cutoffpl", "cxb_gruber",
    "energy_flux", "expdec", "expression_kind", "flux_from_covariance", "flux_samples",
    "fsline", "gabs", "gaussian", "list_components", "load_component", "parse_expression",
    "parse_model", "photon_flux", "powerlaw", "powerlaw_integral", "register_component",
    "table_component",
    "unregister_component", "user_component",
]
