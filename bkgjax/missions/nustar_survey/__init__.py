"""NuSTAR deep-survey source detection and its calibration by simulations (Zhao et al. 2021).

instrument (bands, conversion factors, PSF, pointings, exposure mosaics), images (survey
image and threshold files), detection (the per-map detection), sky (mock skies), engine
(the vectorised detection of many simulations), calibration, simulation, catalogue, plots,
cli (``bkgjax detect``, ``simulate-survey``, ``catalogue``).
"""
