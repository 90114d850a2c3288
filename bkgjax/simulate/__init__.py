"""Poisson realisations of models (XSPEC ``fakeit``), vmapped over PRNG keys, and simulated
NuSTAR stray-light CXB campaigns (:mod:`bkgjax.simulate.nustar_campaign`)."""

from .fakeit import fakeit, poisson_counts
from .nustar_campaign import (
    PAPER_DATASETS,
    CampaignTruth,
    DatasetSpec,
    expected_band_rates,
    expected_cubes,
    expected_rates,
    simulate_cubes,
    simulate_events,
    write_campaign,
)

__all__ = [
    "fakeit", "poisson_counts",
    "PAPER_DATASETS", "CampaignTruth", "DatasetSpec", "expected_band_rates", "expected_cubes",
    "expected_rates", "simulate_cubes", "simulate_events", "write_campaign",
]
