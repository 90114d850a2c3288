"""NuSTAR stray-light CXB measurement (Krivonos et al. 2021, MNRAS 502, 3966).

events (cleaned event files), caldb (aperture images, pixmap/detnum, DETABS, ARFs),
occulted_images (the real occulted-image archive), geometry (Omega per RAW pixel,
transmission, bands), campaign (simulated campaigns as event files), analysis (pixel model,
spectral stage, results), occulted (pixel model on real occulted epochs), config (TOML
campaigns), plots (the paper's figures), cli (``bkgjax demo``, ``bkgjax nustar-cxb``).
"""
