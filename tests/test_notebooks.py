"""Runs every notebook in notebooks/ top to bottom (quick settings); checks they are stored clean.

Each notebook runs in its own ipykernel ("python3", this interpreter), with
AECORE_NOTEBOOK_QUICK=1 so that its parameter cell shrinks steps and sizes.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # one cell; a quick notebook takes seconds, this only stops a hang


def _ids(paths):
    return [p.name for p in paths]


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4, f"expected the four tutorial notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.get("execution_count") is None, f"{path.name} cell {i}: execution_count set"
        assert cell.get("outputs") == [], f"{path.name} cell {i}: outputs stored"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, monkeypatch):
    # The kernel inherits this environment: quick settings, no display, and not conftest's 8
    # virtual CPU devices (they would only slow the kernel down).
    monkeypatch.setenv("AECORE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    xla_flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    if xla_flags.strip():
        monkeypatch.setenv("XLA_FLAGS", xla_flags.strip())
    else:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    repo = str(NOTEBOOK_DIR.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) on any error
    executable = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert executable == sys.executable, (
        f"kernel ran {executable!r}, expected this interpreter {sys.executable!r}"
    )
