"""Chandra ACIS particle-induced background from the mkacispback templates (Suzuki et al. 2021).

events (Chandra level-2 event files and regions), template_files (the template directory),
templates (template spectra of a region), pback (band model and its uncertainties),
simulate (simulated event lists), posterior (source + template background posterior),
pipeline and cli (``bkgjax acis-pback``).
"""
