"""Sherpa reference for bkgjax's continua and lines (tests/test_continua.py).

Sherpa's own (non-XSPEC) models that equal an XSPEC component up to a parameter mapping,
evaluated integrated over bins (Sherpa integrates bbody and logparabola numerically with GSL
Gauss-Kronrod, lorentz1d and normgauss1d analytically):

* ``BBody`` (space 0): ``ampl E^2/(exp(E/kT) - 1)`` = XSPEC bbodyrad with
  ``norm = ampl / 1.0344e-3`` (Sherpa takes E/kT < 1e-4 as ampl E kT and E/kT > 60 as 0:
  the bins below are inside 0.03 < E/kT < 40);
* ``LogParabola``: ``ampl (E/ref)^(-c1 - c2 log10(E/ref))`` = logpar (alpha = c1,
  beta = c2, pivotE = ref, norm = ampl);
* ``Lorentz1D``: ``ampl fwhm / (2 pi ((E-pos)^2 + fwhm^2/4))``, normalised over all E:
  lorentz (LineE = pos, Width = fwhm) is this times pi / (pi/2 + arctan(2 LineE/Width))
  with norm = ampl (XSPEC renormalises over E > 0);
* ``NormGauss1D``: zgauss (LineE, Sigma, Redshift z, norm) is NormGauss1D with
  pos = LineE/(1+z), fwhm = 2 sqrt(2 ln 2) Sigma/(1+z), ampl = norm/(1+z);
* ``PowLaw1D``: zpowerlw (PhoIndex, z, norm) is PowLaw1D with gamma = PhoIndex, ref = 1,
  ampl = norm (1+z)^-PhoIndex.

Run from the repository root with a Python that has Sherpa (see README.md in this folder):

    /work/peers/bin/python tests/reference/make_sherpa_continua_reference.py
"""

import datetime
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import sherpa
from sherpa.astro.models import BBody, Lorentz1D
from sherpa.models.basic import LogParabola, NormGauss1D, PowLaw1D

EDGES = np.geomspace(0.1, 40.0, 41)  # 40 bins, a factor 1.16 each


def evaluate(model, **values):
    for name, value in values.items():
        getattr(model, name).val = value
    return model(EDGES[:-1], EDGES[1:]).tolist()


def main():
    cases = []
    for kT in (1.0, 3.0):
        cases.append({"component": "bbodyrad", "params": {"kT": kT, "norm": 2.0 / 1.0344e-3},
                      "sherpa": "BBody(space=0, kT, ampl=2)",
                      "values": evaluate(BBody(), space=0, kT=kT, ampl=2.0)})
    for alpha, beta, pivot in ((1.5, 0.2, 1.0), (2.3, -0.4, 5.0)):
        cases.append({"component": "logpar",
                      "params": {"alpha": alpha, "beta": beta, "pivotE": pivot, "norm": 3.0},
                      "sherpa": "LogParabola(ref, c1, c2, ampl=3)",
                      "values": evaluate(LogParabola(), ref=pivot, c1=alpha, c2=beta, ampl=3.0)})
    for line_e, width in ((6.4, 0.3), (0.5, 2.0)):
        scale = math.pi / (0.5 * math.pi + math.atan(2.0 * line_e / width))
        values = evaluate(Lorentz1D(), pos=line_e, fwhm=width, ampl=1.5)
        cases.append({"component": "lorentz",
                      "params": {"LineE": line_e, "Width": width, "norm": 1.5},
                      "sherpa": "Lorentz1D(pos, fwhm, ampl=1.5) * pi/(pi/2 + atan(2 LineE/Width))",
                      "values": [scale * v for v in values]})
    for line_e, sigma, z in ((6.7, 0.3, 0.0), (6.4, 0.2, 0.3)):
        fwhm = 2.0 * math.sqrt(2.0 * math.log(2.0)) * sigma / (1.0 + z)
        cases.append({"component": "zgauss",
                      "params": {"LineE": line_e, "Sigma": sigma, "Redshift": z, "norm": 2.0},
                      "sherpa": "NormGauss1D(pos=LineE/(1+z), fwhm=2.3548 Sigma/(1+z), "
                                "ampl=norm/(1+z))",
                      "values": evaluate(NormGauss1D(), pos=line_e / (1.0 + z), fwhm=fwhm,
                                         ampl=2.0 / (1.0 + z))})
    for index, z in ((1.7, 0.5), (1.0, 2.0)):
        cases.append({"component": "zpowerlw",
                      "params": {"PhoIndex": index, "Redshift": z, "norm": 1e-3},
                      "sherpa": "PowLaw1D(gamma=PhoIndex, ref=1, ampl=norm (1+z)^-PhoIndex)",
                      "values": evaluate(PowLaw1D(), gamma=index, ref=1.0,
                                         ampl=1e-3 * (1.0 + z) ** -index)})
    payload = {
        "meta": {"sherpa": sherpa.__version__, "numpy": np.__version__,
                 "python": sys.version.split()[0], "platform": platform.platform(),
                 "date": datetime.date.today().isoformat(),
                 "command": "/work/peers/bin/python "
                            "tests/reference/make_sherpa_continua_reference.py"},
        "edges": EDGES.tolist(),
        "cases": cases,
    }
    out = Path(__file__).with_name("sherpa_continua_reference.json")
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
