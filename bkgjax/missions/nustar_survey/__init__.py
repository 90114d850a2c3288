"""NuSTAR deep-survey source detection and its calibration by simulations (Zhao et al. 2021).

instrument (bands, conversion factors, PSF, pointings, exposure mosaics), images (survey
image and threshold files), detection (the per-map detection), sky (mock skies),
fixed_detection (the fixed-size, vectorisable detection of one simulated map), driver
(``simulate_and_detect``: batching, chunks, worker processes, device sharding, reruns),
xla_cpu (XLA:CPU-specific forms of a few primitives, with their reference forms),
calibration, simulation, catalogue, tracks (hardness-ratio tracks, implied N_H,
Compton-thick candidates, count-rate-to-flux factors), plots, cli (``bkgjax detect``,
``simulate-survey``, ``catalogue``, ``survey-tracks``).
"""
