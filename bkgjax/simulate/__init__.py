"""Poisson realisations of models (XSPEC ``fakeit``), vmapped over PRNG keys."""

from .fakeit import fakeit, poisson_counts

__all__ = ["fakeit", "poisson_counts"]
