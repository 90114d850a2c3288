"""One package per mission, each built on the core (io, spectral, stats, fit, infer, simulate).

A mission package holds its own readers, instrument recipe, simulator, pipeline stages,
plots, configuration and CLI subcommand.  Missions import the core, never each other; the
core never imports a mission (checked by tests/test_architecture.py).

nustar_cxb
    NuSTAR stray-light measurement of the cosmic X-ray background (Krivonos et al. 2021).
nustar_survey
    NuSTAR deep-survey source detection and its calibration by simulations (Zhao et al. 2021).
isgri
    INTEGRAL/IBIS-ISGRI Galactic ridge emission (Krivonos et al.).
acis
    Chandra ACIS particle-induced background from the mkacispback templates (Suzuki et al. 2021).
"""
