"""End-to-end analysis recipes built on the core engine (read -> model -> fit -> results).

:mod:`bkgjax.pipelines.nustar_cxb`: the NuSTAR stray-light CXB measurement of Krivonos et al.
(2021, nustar_cxb_stray_light.txt).
:mod:`~bkgjax.pipelines.survey_detection`, :mod:`~bkgjax.pipelines.survey_vectorised`,
:mod:`~bkgjax.pipelines.survey_calibration`, :mod:`~bkgjax.pipelines.survey_simulation`,
:mod:`~bkgjax.pipelines.survey_catalogue`: NuSTAR deep-survey detection, its calibration by
simulations and the master catalogue (Zhao et al. 2021, nustar_nep_survey_detection.txt).
:mod:`~bkgjax.pipelines.isgri_ridge`, :mod:`~bkgjax.pipelines.isgri_spectra`: the
INTEGRAL/IBIS-ISGRI Galactic ridge (integral_ibis_galactic_background.txt).
:mod:`~bkgjax.pipelines.acis_pback`: the Chandra ACIS particle background from the mkacispback
templates (chandra_acis_particle_background.txt).
"""
