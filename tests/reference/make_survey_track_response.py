"""Write bkgjax/missions/nustar_survey/data/nustar_point_source_arf.json: the 3-24 keV part of
the NuSTAR FPMA point-source ARF of Vela X-1 (observation 90402339002, HEACIT curated test
data, CC0; ../shared/data/spectra/nustar_velax1) with its extraction radius and position,
used by bkgjax.missions.nustar_survey.tracks.default_response.

Run from the repository root: /work/venv/bin/python tests/reference/make_survey_track_response.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "spectra" / "nustar_velax1"
OUT = ROOT / "bkgjax" / "missions" / "nustar_survey" / "data" / "nustar_point_source_arf.json"


def main() -> int:
    arf_path = DATA / "nu90402339002A01_sr.arf"
    pha_path = DATA / "nu90402339002A01_sr.pha"
    with fits.open(arf_path) as hdul:
        d = hdul["SPECRESP"].data
        lo = np.asarray(d["ENERG_LO"], dtype=np.float64)
        hi = np.asarray(d["ENERG_HI"], dtype=np.float64)
        area = np.asarray(d["SPECRESP"], dtype=np.float64)
    with fits.open(pha_path) as hdul:
        head = hdul["SPECTRUM"].header
        reg = hdul["REG00101"]
        scale = abs(reg.columns["X"].coord_inc) * 3600.0  # arcsec per sky pixel
        radius = float(reg.data["R"][0][0]) * scale
        ra0, dec0 = math.radians(head["RA_PNT"]), math.radians(head["DEC_PNT"])
        ra1, dec1 = math.radians(head["RA_OBJ"]), math.radians(head["DEC_OBJ"])
    cos_sep = (math.sin(dec0) * math.sin(dec1)
               + math.cos(dec0) * math.cos(dec1) * math.cos(ra1 - ra0))
    offset = math.degrees(math.acos(min(1.0, cos_sep))) * 60.0
    # the five survey bands span 3-24 keV; the float32 edges are 8.0 -> 7.99999...
    keep = (lo >= 3.0 - 1e-4) & (hi <= 24.0 + 1e-4)
    out = {
        "source": "NuSTAR FPMA ARF nu90402339002A01_sr.arf (Vela X-1, numkarf 0.3.7, "
                  "CALDB nuA20100101v006 with PSF, vignetting, aperture stop, ghost rays, "
                  "detector absorption)",
        "licence": "CC0 (HEACIT curated-test-data)",
        "region_radius_arcsec": round(radius, 3),
        "offset_from_pointing_arcmin": round(offset, 3),
        "energy_unit": "keV",
        "area_unit": "cm^2",
        "energ_lo": [float(np.float32(v)) for v in lo[keep]],
        "energ_hi": [float(np.float32(v)) for v in hi[keep]],
        "specresp": [float(np.float32(v)) for v in area[keep]],
    }
    OUT.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {OUT}: {keep.sum()} bins {lo[keep][0]:.2f}-{hi[keep][-1]:.2f} keV, "
          f"region {radius:.2f}\", {offset:.2f}' from the pointing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
