"""Execute the example notebooks end to end (nbclient, fresh ``python3`` kernel).

The kernel must import ``bkgjax``: when the package is pip-installed it simply is; in a source
checkout the repository root is prepended to ``PYTHONPATH`` for the kernel process (restored
afterwards).  Skipped with a reason when nbformat/nbclient/ipykernel are not installed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _require_jupyter():
    missing = []
    for module in ("nbformat", "nbclient", "ipykernel"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        pytest.skip(f"executing notebooks needs {', '.join(missing)} "
                    "(pip install nbclient nbformat ipykernel)")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no 'python3' Jupyter kernel available (pip install ipykernel)")


def _execute(path: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([old] if old else []))
    try:
        client = NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - start
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    return nb, elapsed


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return "".join(str(data.get(k, "")) for k in ("text/plain", "text/markdown", "text/html"))


def _assert_committed_clean(nb):
    """The committed notebook uses the python3 kernel and carries no outputs."""
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), "commit the notebook with outputs cleared"
            assert cell.get("execution_count") is None


def test_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    path = NOTEBOOKS / "posterior_analysis.ipynb"
    _assert_committed_clean(nbformat.read(path, as_version=4))


def _execute_checked(path):
    """Execute a notebook; fail on any cell error; return (nb, seconds, outputs, text, images)."""
    nb, elapsed = _execute(path)
    outputs = list(_outputs(nb))
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"cell raised: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    text = "\n".join(_text(o) for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    return nb, elapsed, outputs, text, images


def test_posterior_analysis_notebook():
    _require_jupyter()
    path = NOTEBOOKS / "posterior_analysis.ipynb"
    nb, elapsed, outputs, text, images = _execute_checked(path)

    assert "Spectrum used:" in text
    assert "r_hat" in text and "ess_bulk" in text          # arviz summary printed
    assert "WARNING: chains not converged" not in text     # R-hat < 1.01 and ESS >= 400
    assert "profile lower90" in text and "NUTS q5" in text  # comparison table
    assert "posterior   : median" in text                   # flux posterior
    # trace, corner, fit, PPC and flux figures
    assert len(images) >= 5, f"expected >= 5 figures, got {len(images)}"
    assert elapsed < 600


NUSTAR_NOTEBOOK = NOTEBOOKS / "nustar_cxb_posterior.ipynb"
NUSTAR_INJECTED_FLUX = 2.81e-11  # erg/s/cm^2/deg^2, CampaignTruth default (paper section 5.1)


def _notebook_result(nb) -> dict:
    """The JSON dict printed by the notebook's last cell as ``NOTEBOOK_RESULT {...}``."""
    import json

    for output in _outputs(nb):
        for line in _text(output).splitlines():
            if line.startswith("NOTEBOOK_RESULT "):
                return json.loads(line[len("NOTEBOOK_RESULT "):])
    raise AssertionError("the notebook printed no NOTEBOOK_RESULT line")


def test_nustar_cxb_posterior_notebook(monkeypatch):
    """NuSTAR stray-light CXB posterior notebook on the demo campaign, reduced size
    (``BKGJAX_NOTEBOOK_REDUCED=1``: 2 data sets, 8 bands, short chains; about a minute)."""
    nbformat = pytest.importorskip("nbformat")
    committed = nbformat.read(NUSTAR_NOTEBOOK, as_version=4)
    _assert_committed_clean(committed)
    assert any("parameters" in c.metadata.get("tags", []) for c in committed.cells)

    _require_jupyter()
    monkeypatch.setenv("BKGJAX_NOTEBOOK_REDUCED", "1")  # inherited by the kernel process
    nb, elapsed, outputs, text, images = _execute_checked(NUSTAR_NOTEBOOK)
    # Omega maps, SCI/OCC images, aperture spectrum, Fig. 8, trace, posterior, pair, forest,
    # hierarchical scatter
    assert len(images) >= 10, f"expected >= 10 figures, got {len(images)}"
    assert "r_hat" in text and "ess_bulk" in text  # az.summary printed
    assert "weighted mean:" in text                 # Table-4-like summary

    res = _notebook_result(nb)
    assert res["reduced"] is True and res["n_datasets"] == 2
    assert res["injected_flux_3_20"] == pytest.approx(NUSTAR_INJECTED_FLUX)
    modules = res["modules"]
    assert len(modules) == 4  # 2 data sets x FPMA/FPMB

    # convergence of every coefficient of every module
    assert res["r_hat_max"] < 1.05
    assert res["ess_bulk_min"] > 100
    assert res["divergences"] <= 0.01 * res["num_chains"] * res["num_samples"]

    for name, m in modules.items():
        # the flux posterior covers the injected value within a wide margin
        assert m["q5"] - 4 * m["sd"] <= NUSTAR_INJECTED_FLUX <= m["q95"] + 4 * m["sd"], name
        assert 0.005 < m["sd"] / m["mean"] < 0.05, name
        # nearly Gaussian likelihood: posterior sd ~ Hessian error of the same (conditional) model
        assert 0.85 < m["sd"] / m["hessian_sd"] < 1.2, name
        # the two-step error also carries the chip-factor uncertainty
        assert m["two_step_sd"] > m["hessian_sd"], name
    comb = res["posterior_combined"]
    assert abs(comb["mean"] / NUSTAR_INJECTED_FLUX - 1) < 0.03
    two_step = res["two_step_combined"]
    assert abs(comb["mean"] - two_step["value"]) < 3 * two_step["err1sigma"]
    assert 0 < res["tau_upper90"] < 0.12
    assert elapsed < 600
