"""Shared helpers of the notebook tests: skip without Jupyter, check the committed notebook is
clean, execute it with nbclient in a kernel that sees this checkout, collect its outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def require_jupyter():
    """Skip (with the reason) unless nbformat, nbclient, ipykernel and a python3 kernel exist."""
    for module in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"executing notebooks needs {module}")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no 'python3' Jupyter kernel available (pip install ipykernel)")


def outputs(nb):
    """Every output of every code cell."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def output_text(output) -> str:
    """Stream text or the text/plain, text/markdown, text/html data of one output."""
    if output.get("output_type") == "stream":
        return output.get("text", "")
    data = output.get("data", {})
    return "".join(str(data.get(k, "")) for k in ("text/plain", "text/markdown", "text/html"))


def assert_committed_clean(path, *, parameters_cell=True):
    """The committed notebook uses the python3 kernel, carries no outputs and (optionally)
    has a cell tagged ``parameters``."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    if parameters_cell:
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None


def execute(path, monkeypatch, env=None, timeout=600):
    """Execute the notebook at ``path`` (working directory: its folder) with the environment
    variables ``env`` and this checkout on PYTHONPATH; fail on any cell error.  Returns the
    executed notebook."""
    require_jupyter()
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, str(value))  # inherited by the kernel process
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + ([old] if old else [])))
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    errors = [o for o in outputs(nb) if o.get("output_type") == "error"]
    assert not errors, f"cell raised: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    return nb
