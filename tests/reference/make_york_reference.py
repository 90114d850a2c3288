#!/usr/bin/env python
"""Reference straight-line fit with errors on both axes, for ``survey_simulation.york_slope``.

Data: Pearson (1901) with York's (1966) weights, the standard test set of York et al. (2004,
Am. J. Phys. 72, 367), who give b = -0.4805334, sigma_b = 0.0579882.  The reference here is
computed independently with ``scipy.odr`` (ODRPACK orthogonal distance regression, the
maximum-likelihood line for known x and y errors); its unscaled parameter error is
``sqrt(cov_beta)`` (``sd_beta`` is rescaled by the residual variance).

    python tests/reference/make_york_reference.py     # writes york_reference.json here
"""

import datetime
import json
import platform
import warnings
from pathlib import Path

import numpy as np
import scipy

X = [0.0, 0.9, 1.8, 2.6, 3.3, 4.4, 5.2, 6.1, 6.5, 7.4]
Y = [5.9, 5.4, 4.4, 4.6, 3.5, 3.7, 2.8, 2.8, 2.4, 1.5]
WEIGHT_X = [1000.0, 1000.0, 500.0, 800.0, 200.0, 80.0, 60.0, 20.0, 1.8, 1.0]
WEIGHT_Y = [1.0, 1.8, 4.0, 8.0, 20.0, 20.0, 70.0, 70.0, 100.0, 500.0]


def main():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy.odr, deprecated in 1.17
        from scipy import odr
    model = odr.Model(lambda beta, x: beta[0] + beta[1] * x)
    data = odr.RealData(np.array(X), np.array(Y), sx=1.0 / np.sqrt(WEIGHT_X),
                        sy=1.0 / np.sqrt(WEIGHT_Y))
    out = odr.ODR(data, model, beta0=[5.0, -0.5]).run()
    ref = {
        "meta": {"script": "tests/reference/make_york_reference.py",
                 "scipy": scipy.__version__, "numpy": np.__version__,
                 "python": platform.python_version(),
                 "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                 "literature": "York et al. 2004: b = -0.4805334, sigma_b = 0.0579882"},
        "x": X, "y": Y, "weight_x": WEIGHT_X, "weight_y": WEIGHT_Y,
        "odr_intercept": float(out.beta[0]), "odr_slope": float(out.beta[1]),
        "odr_slope_error_unscaled": float(np.sqrt(out.cov_beta[1, 1])),
    }
    path = Path(__file__).with_name("york_reference.json")
    path.write_text(json.dumps(ref, indent=1) + "\n")
    print(path, ref["odr_slope"], ref["odr_slope_error_unscaled"])


if __name__ == "__main__":
    main()
