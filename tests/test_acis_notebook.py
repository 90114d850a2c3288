"""Execute notebooks/acis_pback_fit.ipynb reduced (``BKGJAX_NOTEBOOK_REDUCED=1``) with nbclient.

The execution is marked slow: the first evaluation of the 32 real S3 templates compiles for
minutes on a loaded machine (``jit__slices_shared`` of bkgjax.missions.acis.templates), and
the two NUTS runs add about a minute.  The committed-notebook checks run by default.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "acis_pback_fit.ipynb"
TEMPLATES = ROOT.parent / "shared" / "data" / "chandra" / "mkacispback"


def test_committed_notebook_is_clean():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None


def _result(nb) -> dict:
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "stream":
                for line in out.get("text", "").splitlines():
                    if line.startswith("NOTEBOOK_RESULT "):
                        return json.loads(line[len("NOTEBOOK_RESULT "):])
    raise AssertionError("the notebook printed no NOTEBOOK_RESULT line")


@pytest.mark.slow
def test_acis_pback_notebook_reduced(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    if not TEMPLATES.is_dir():
        pytest.skip(f"mkacispback templates not found at {TEMPLATES}")
    monkeypatch.setenv("BKGJAX_NOTEBOOK_REDUCED", "1")
    monkeypatch.setenv("BKGJAX_ACIS_TEMPLATES", str(TEMPLATES))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + ([old] if old else [])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"cell raised {errors[0].get('ename')}: {errors[0].get('evalue')}"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # background model, spectrum, posteriors
    res = _result(nb)
    assert res["reduced"] is True
    for key in ("fixed", "propagated"):
        assert res[key]["r_hat"] < 1.05
        assert res[key]["divergences"] <= 0.01 * res["num_samples"] * res["num_chains"]
    # propagating the 5 % / 8 % background uncertainties and alpha widens the flux interval ...
    assert res["width_ratio"] > 1.1
    # ... and the propagated 90 % interval covers the injected flux (fixed seed)
    assert res["propagated"]["q5"] <= res["flux_true"] <= res["propagated"]["q95"]
    print(f"notebook executed in {elapsed:.0f} s")
