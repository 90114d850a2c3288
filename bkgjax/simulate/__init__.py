"""Poisson realisations of models (XSPEC ``fakeit``), vmapped over PRNG keys, and the one
Poisson inverse-CDF walk used by every simulator (:mod:`bkgjax.simulate.poisson`)."""

from .fakeit import fakeit, poisson_counts

__all__ = ["fakeit", "poisson_counts"]
