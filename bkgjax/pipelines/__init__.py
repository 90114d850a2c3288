"""End-to-end analysis recipes built on the core engine (read -> model -> fit -> results).

:mod:`bkgjax.pipelines.nustar_cxb`: the NuSTAR stray-light CXB measurement of Krivonos et al.
(2021, nustar_cxb_stray_light.txt).
"""
