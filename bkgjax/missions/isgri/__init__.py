"""INTEGRAL/IBIS-ISGRI Galactic ridge emission (Krivonos et al.).

tables (ScW and Crab tables), instrument (screening, orbit background, Crab calibration),
mission (simulated missions), orbit_background (the hierarchical orbit model), ridge (the
pipeline), spectra (ridge spectra), cli (``bkgjax isgri-ridge``).
"""
