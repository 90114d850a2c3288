"""Execute notebooks/isgri_ridge_posterior.ipynb reduced (``BKGJAX_NOTEBOOK_REDUCED=1``:
12 orbits of a simulated mission, short chains) with nbclient, and check its printed result.

Skipped with a reason when nbformat/nbclient/ipykernel or a ``python3`` kernel are missing.
"""

from __future__ import annotations

import json

from notebook_support import ROOT, assert_committed_clean, execute, output_text, outputs

NOTEBOOK = ROOT / "notebooks" / "isgri_ridge_posterior.ipynb"


def test_committed_clean():
    assert_committed_clean(NOTEBOOK)


def test_isgri_ridge_notebook_reduced(monkeypatch):
    nb = execute(NOTEBOOK, monkeypatch, {"BKGJAX_NOTEBOOK_REDUCED": "1"})
    outs = list(outputs(nb))
    text = "\n".join(output_text(o) for o in outs)
    images = [o for o in outs if "image/png" in o.get("data", {})]
    assert len(images) >= 5, f"trace, forest, comparison, background, spectrum: {len(images)}"
    assert "r_hat" in text and "ess_bulk" in text  # arviz summary printed

    line = next(ln for ln in text.splitlines() if ln.startswith("NOTEBOOK_RESULT "))
    res = json.loads(line[len("NOTEBOOK_RESULT "):])
    assert res["reduced"] is True and res["n_orbits"] >= 5
    assert res["diagnostics"]["r_hat_max"] < 1.1
    for name, reg in res["regions"].items():
        h = reg["hierarchical"]
        # the injected (mean per-ScW) GXB lies within a wide margin of the posterior
        assert h["hdi90_low"] - 3 * h["sd"] <= reg["truth"] <= h["hdi90_high"] + 3 * h["sd"], name
    post = res["spectrum"]["posterior"]
    assert abs(post["HighECut"]["mean"] - 11.2) < 4 * post["HighECut"]["sd"]  # simulator E_cut
    assert res["spectrum"]["r_hat_max"] < 1.1
