"""NuSTAR stray-light CXB measurement (Krivonos et al. 2021, MNRAS 502, 3966).

Inputs and geometry: events (cleaned event files), caldb (aperture images, pixmap/detnum,
DETABS, ARFs), occulted_images (the real occulted-image archive), geometry (Omega per RAW
pixel, transmission, bands), campaign (simulated campaigns: truth, expected rates, binned
cubes), campaign_files (simulated campaigns as event files), config (TOML campaigns -> binned
:class:`~.records.Campaign`).

The method: records (input containers and the immutable stage records), responses (band
efficiencies and aperture responses), pixel_model (eq. 2-3 per band, chip factors, profile
bounds, bootstrap), spectral_stage (OCC soft shape, SCI CXB + soft fits, cross-normalisation,
stacked-spectrum fits), one_step (CXB norm straight from the cube, NUTS), results (weighted
mean, scatter, cosmic variance, JSON payload), analysis (``run_analysis``: the stages in order).

Also: occulted (pixel model on real occulted epochs), plots (the paper's figures), cli
(``bkgjax demo``, ``bkgjax nustar-cxb``).
"""
