"""Checks the notebooks in notebooks/ are stored clean.

They are executed, top to bottom in their quick settings (AECORE_NOTEBOOK_QUICK=1) in a
"python3" kernel of this interpreter, by the documentation build of the test command
(`mkdocs build --strict`, docs/hooks/site.py), which renders their outputs and figures; a failing
cell fails the build.
"""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


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
