"""Execute notebooks/joint_fit.ipynb reduced (``BKGJAX_NOTEBOOK_REDUCED=1``: short NUTS chains,
the same simulated FPMA + FPMB data and fits) with nbclient, and check its printed result.

The notebook uses the real NuSTAR Vela X-1 responses and backgrounds of ``../shared/data``
(or ``$BKGJAX_SHARED_DATA``): skipped with a reason when they are absent, or when
nbformat/nbclient/ipykernel or a ``python3`` kernel are missing.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from notebook_support import ROOT, assert_committed_clean, execute, output_text, outputs

NOTEBOOK = ROOT / "notebooks" / "joint_fit.ipynb"
SHARED_DATA = Path(os.environ.get("BKGJAX_SHARED_DATA", ROOT.parent / "shared" / "data"))
NEEDED = [SHARED_DATA / "spectra" / "nustar_velax1" / f"nu90402339002{m}01_{kind}"
          for m in "AB" for kind in ("sr.pha", "sr.arf", "bk.pha")]
NEEDED.append(SHARED_DATA / "nustar" / "aperture" / "diag.rmf")
CROSS_NORM = 1.05  # factor@2 of the simulation


def test_committed_clean():
    assert_committed_clean(NOTEBOOK)


def _result(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith("NOTEBOOK_RESULT "):
            return json.loads(line[len("NOTEBOOK_RESULT "):])
    raise AssertionError("the notebook printed no NOTEBOOK_RESULT line")


def test_joint_fit_notebook_reduced(monkeypatch):
    missing = [str(p) for p in NEEDED if not p.is_file()]
    if missing:
        pytest.skip(f"NuSTAR Vela X-1 files not found (../shared/data absent?): {missing[0]}")
    start = time.perf_counter()
    nb = execute(NOTEBOOK, monkeypatch, {"BKGJAX_NOTEBOOK_REDUCED": "1",
                                         "BKGJAX_SHARED_DATA": str(SHARED_DATA),
                                         "MPLBACKEND": "Agg"})
    elapsed = time.perf_counter() - start
    outs = list(outputs(nb))
    text = "\n".join(output_text(o) for o in outs)
    images = [o for o in outs if "image/png" in o.get("data", {})]
    # counts view, nufnu view, trace, pair, flux posteriors, plot_compare, cumulative elpd
    assert len(images) >= 7, f"expected >= 7 figures, got {len(images)}"
    assert "r_hat" in text and "ess_bulk" in text      # az.summary printed
    assert "lower90" in text and "upper90" in text     # fit table with profile bounds
    assert "elpd_loo" in text and "dse" in text        # LOO table and az.compare

    res = _result(text)
    assert res["reduced"] is True
    assert res["truth"]["factor@2"] == CROSS_NORM

    # joint fit: converged, the profile interval of the cross-normalisation covers 1.05
    fit = res["fit"]
    assert fit["converged"] and fit["dof"] == 4 * 675 - 7
    f2 = fit["params"]["factor@2"]
    assert f2["lower90"] < f2["value"] < f2["upper90"]
    assert f2["lower90"] <= CROSS_NORM <= f2["upper90"]
    for name, p in fit["params"].items():  # every parameter near the simulation (fixed seed)
        assert abs(p["value"] - res["truth"][name]) < 3.5 * p["error"], name

    # fluxes of each module: intervals around the best fit, FPMB/FPMA = factor@2
    fluxes = res["fluxes"]
    for module in ("FPMA", "FPMB"):
        f = fluxes[module]
        assert 0 < f["lower90"] < f["value"] < f["upper90"]
        assert f["nuts_q5"] < f["value"] < f["nuts_q95"]
        assert f["delta_lower90"] < f["value"] < f["delta_upper90"]
    assert fluxes["FPMB"]["value"] / fluxes["FPMA"]["value"] == pytest.approx(f2["value"], rel=1e-6)

    # NUTS ran: all draws, finite and sensible diagnostics, posterior near the MLE
    nuts = res["nuts"]
    assert nuts["draws"] == res["num_chains"] * res["num_samples"]
    assert math.isfinite(nuts["r_hat_max"]) and nuts["r_hat_max"] < 1.2
    assert nuts["ess_bulk_min"] > 10
    assert nuts["divergences"] <= 0.05 * nuts["draws"]
    assert nuts["attrs"]["r_hat_max"] == pytest.approx(nuts["r_hat_max"], rel=0.05)
    assert abs(nuts["factor2"]["median"] - f2["value"]) < f2["error"]
    assert nuts["factor2"]["q5"] < f2["value"] < nuts["factor2"]["q95"]

    # LOO: finite, per-spectrum values add up, the cut-off power law (the truth) is preferred
    loo = res["loo"]
    assert len(loo["per_spectrum"]) == 8
    assert all(math.isfinite(v) for v in loo["per_spectrum"].values())
    for model, entry in loo["all_spectra"].items():
        assert math.isfinite(entry["elpd_loo"]) and math.isfinite(entry["se"])
        total = sum(v for k, v in loo["per_spectrum"].items() if k.startswith(model + " |"))
        assert total == pytest.approx(entry["elpd_loo"], rel=1e-9)
    assert loo["best"] == "constant*cutoffpl"
    assert loo["elpd_diff"] > 2 * loo["dse"] > 0
    assert res["delta_cstat"] > 10
    print(f"notebook executed in {elapsed:.0f} s")
