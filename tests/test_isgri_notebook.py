"""Execute notebooks/isgri_ridge_posterior.ipynb reduced (``BKGJAX_NOTEBOOK_REDUCED=1``:
12 orbits of a simulated mission, short chains) with nbclient, and check its printed result.

Skipped with a reason when nbformat/nbclient/ipykernel or a ``python3`` kernel are missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "isgri_ridge_posterior.ipynb"


def _require_jupyter():
    for module in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"executing notebooks needs {module}")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no 'python3' Jupyter kernel available (pip install ipykernel)")


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return "".join(str(data.get(k, "")) for k in ("text/plain", "text/html"))


def test_committed_clean():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None


def test_isgri_ridge_notebook_reduced(monkeypatch):
    _require_jupyter()
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("BKGJAX_NOTEBOOK_REDUCED", "1")  # inherited by the kernel
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + ([old] if old else [])))
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    elapsed = time.perf_counter() - start
    outputs = list(_outputs(nb))
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"cell raised: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    text = "\n".join(_text(o) for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
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
    print(f"notebook executed in {elapsed:.1f} s")
    assert elapsed < 400  # ~60 s on an idle 2-core machine; generous for a shared one
