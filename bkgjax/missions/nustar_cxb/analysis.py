r"""NuSTAR stray-light CXB measurement (Krivonos et al. 2021, MNRAS 502, 3966): the driver.

:func:`run_analysis` runs the method of nustar_cxb_stray_light.txt (sections 4-5) as a sequence
of named stages, each taking and returning immutable records
(:mod:`bkgjax.missions.nustar_cxb.records`):

1. :func:`~.pixel_model.background_stage`: pixel masks and the chip non-uniformity
   :math:`M_\mathrm{bkg}` from the Earth-occulted (OCC) 10-20 keV image (section 4);
2. :func:`~.pixel_model.sci_pixel_stage`, :func:`~.pixel_model.occ_pixel_stage`: the pixel model
   of eq. (2)-(3) in every band, module and data set, one compiled ``vmap``-ed Newton solve
   (Hessian errors, 90 % profile-likelihood bounds, optional bootstrap);
3. :func:`~.spectral_stage.soft_component_stage`: the soft component's broken power law from the
   OCC aperture spectra, joint over FPMA and FPMB (Table 3);
4. :func:`~.spectral_stage.sci_spectral_stage`: Gruber CXB (eq. 1) + soft component on every
   SCI aperture spectrum, the 3-20 keV flux of Table 4; :func:`~.spectral_stage.crossnorm_stage`:
   the FPMB/FPMA constant (Fig. 3);
5. :func:`~.one_step.one_step_stage` (beyond the paper): the CXB norm fitted straight to the
   band x pixel cube with the exact per-chip band responses;
6. :func:`~.results.combination_stage`: weighted mean, rms scatter versus statistical error
   (section 5.2), cosmic variance of eq. (4) and the stacked-spectrum fits (section 5.3);
7. :func:`~.results.results_payload`: the JSON summary (results.json).
"""

from __future__ import annotations

import math

import numpy as np

from bkgjax.missions.nustar_cxb.one_step import one_step_stage
from bkgjax.missions.nustar_cxb.pixel_model import background_stage, occ_pixel_stage, sci_pixel_stage
from bkgjax.missions.nustar_cxb.records import AnalysisOptions, AnalysisResult, Campaign
from bkgjax.missions.nustar_cxb.responses import band_grid
from bkgjax.missions.nustar_cxb.results import combination_stage, results_payload
from bkgjax.missions.nustar_cxb.spectral_stage import (
    crossnorm_stage,
    module_responses,
    sci_spectral_stage,
    soft_component_stage,
)

__all__ = ["STAGES", "check_campaign", "run_analysis"]

#: Progress labels, in the order :func:`run_analysis` reports them.
STAGES = ("flat background maps (OCC 10-20 keV)", "pixel model, SCI", "pixel model, OCC",
          "soft component (OCC spectra)", "spectral fits (Table 4)", "one-step model",
          "combined flux, average spectrum")


def check_campaign(campaign: Campaign) -> None:
    """ValueError, naming the module and the problem, for a campaign the method cannot fit:
    fewer than 3 bands, band counts that do not match the bands, a non-positive exposure, or an
    SCI band without a single count (its aperture flux would be undefined).  Everything else
    that is merely degenerate (no soft component, dead chips, shallow OCC data) is handled by
    the stages and reported in results.json."""
    n_bands = len(np.atleast_1d(campaign.e_lo))
    if n_bands < 3:
        raise ValueError(f"{n_bands} energy band(s): the spectral stage needs >= 3 (n_bands)")
    if not campaign.modules:
        raise ValueError("the campaign has no modules")
    for mod in campaign.modules:
        counts = np.asarray(mod.sci_counts)
        if counts.shape != (n_bands, 4, 32, 32):
            raise ValueError(f"{mod.label}: SCI counts have shape {counts.shape}, expected "
                             f"{(n_bands, 4, 32, 32)} for {n_bands} bands")
        if not (math.isfinite(mod.sci_exposure) and mod.sci_exposure > 0):
            raise ValueError(f"{mod.label}: SCI exposure must be > 0 s (got {mod.sci_exposure})")
        empty = np.flatnonzero(counts.reshape(n_bands, -1).sum(axis=1) == 0)
        if empty.size:
            names = ", ".join(f"{campaign.e_lo[b]:.2f}-{campaign.e_hi[b]:.2f} keV" for b in empty)
            raise ValueError(f"{mod.label} SCI: band(s) {names} have no counts; use fewer or "
                             "wider bands (n_bands, e_min, e_max) or a longer exposure")


def run_analysis(campaign: Campaign, options: AnalysisOptions | None = None, *,
                 progress=None) -> AnalysisResult:
    """Run the whole method on a campaign; returns an
    :class:`~bkgjax.missions.nustar_cxb.records.AnalysisResult` (JSON summary in ``payload``,
    the stage records behind it in the other fields); ``options`` default to
    :class:`~bkgjax.missions.nustar_cxb.records.AnalysisOptions` ``()``.  ``progress`` is an optional callable
    ``progress(stage_name)`` called with each of :data:`STAGES` as it completes (the CLI passes a
    tqdm updater).  A campaign the method cannot fit raises ValueError
    (:func:`check_campaign`)."""
    options = AnalysisOptions() if options is None else options
    check_campaign(campaign)
    tick = progress or (lambda name: None)
    bands = band_grid(campaign.e_lo, campaign.e_hi)

    backgrounds = background_stage(campaign, options)
    tick(STAGES[0])
    sci_bands = sci_pixel_stage(campaign, backgrounds, options)
    tick(STAGES[1])
    occ_bands = occ_pixel_stage(campaign, backgrounds, options)
    tick(STAGES[2])

    responses = module_responses(campaign, backgrounds, bands)
    soft = soft_component_stage(campaign, occ_bands, responses, bands, options, backgrounds)
    tick(STAGES[3])
    spectra = sci_spectral_stage(campaign, backgrounds, sci_bands, responses, soft, bands, options)
    crossnorm = crossnorm_stage(spectra, soft, bands, options)
    tick(STAGES[4])

    one_step, one_step_flux = one_step_stage(campaign, backgrounds, soft, bands, options)
    tick(STAGES[5])
    combination = combination_stage(campaign, backgrounds, spectra, soft, bands, options)
    tick(STAGES[6])

    payload = results_payload(bands=bands, backgrounds=backgrounds, spectra=spectra, soft=soft,
                              crossnorm=crossnorm, one_step_flux=one_step_flux,
                              combination=combination)
    return AnalysisResult(modules=tuple(campaign.modules), bands=bands, backgrounds=backgrounds,
                          spectra=spectra, soft=soft, crossnorm=crossnorm, one_step=one_step,
                          one_step_flux=one_step_flux, combination=combination,
                          sci_soft_model=options.sci_soft_model, payload=payload)
