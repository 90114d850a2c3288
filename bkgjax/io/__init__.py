"""OGIP file input/output (PHA spectra, ARF, RMF); the only bkgjax layer that reads FITS.

See :mod:`bkgjax.io.ogip` for the formats (OGIP/92-007 for PHA, CAL/GEN/92-002 for
RMF/ARF), :mod:`bkgjax.io.events` for NuSTAR cleaned event files,
:mod:`bkgjax.io.nustar_caldb` for the NuSTAR aperture/CALDB files and
:mod:`bkgjax.io.errors` for the exceptions raised.
"""

from .errors import BkgjaxIOError, MissingFileError
from .occulted import OCCULTED_IMAGE_SHAPE, read_occulted_images
from .events import EventList, read_nustar_events, write_nustar_events
from .nustar_caldb import read_aperture_image, read_detabs, read_instrument_map, read_transmission_arf
from .xspec_model import XspecModel, XspecParameter, read_xspec_model
from .acis_templates import read_slice_models, read_template_weights, template_directory
from .chandra_events import (
    ChandraEvents,
    EventRegion,
    chip_box_region,
    read_chandra_events,
    read_region,
    region_slice_fractions,
    write_chandra_events,
)
from .isgri_tables import (
    CrabData,
    ScwData,
    band_names,
    check_same_bands,
    read_crab_table,
    read_profile,
    read_scw_table,
)
from .ogip import (
    ARF,
    PHA,
    RMF,
    SpectrumFiles,
    channel_overlap_mask,
    check_compatible,
    group_index,
    load_spectrum,
    read_arf,
    read_pha,
    read_rmf,
    write_arf,
    write_pha,
    write_rmf,
)

__all__ = [
    "OCCULTED_IMAGE_SHAPE",
    "read_occulted_images",
    "BkgjaxIOError",
    "MissingFileError",
    "PHA",
    "ARF",
    "RMF",
    "SpectrumFiles",
    "read_pha",
    "read_arf",
    "read_rmf",
    "load_spectrum",
    "check_compatible",
    "channel_overlap_mask",
    "group_index",
    "write_pha",
    "write_arf",
    "write_rmf",
    "EventList",
    "read_nustar_events",
    "write_nustar_events",
    "read_aperture_image",
    "read_instrument_map",
    "read_detabs",
    "read_transmission_arf",
    "XspecModel",
    "XspecParameter",
    "read_xspec_model",
    "read_slice_models",
    "read_template_weights",
    "template_directory",
    "ChandraEvents",
    "EventRegion",
    "chip_box_region",
    "read_chandra_events",
    "read_region",
    "region_slice_fractions",
    "write_chandra_events",
    "CrabData",
    "ScwData",
    "band_names",
    "check_same_bands",
    "read_crab_table",
    "read_profile",
    "read_scw_table",
]
