"""The analyst notebooks run top to bottom as shipped, and are stored without outputs.

Each notebook is executed in a fresh kernel from ``notebooks/`` (as Jupyter would), with its
results written under a temporary folder (``CHANGEDET_NOTEBOOK_OUT``). A cell that raises fails
the test with the cell's traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_four_numbered_notebooks_exist() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert names == [
        "01_single_pair",
        "02_facility_report",
        "03_batch_on_a_cluster",
        "04_bring_your_own_data",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook__is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: a cell was saved with outputs; clear them before committing"
            )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook__runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch) -> None:
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("CHANGEDET_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
    assert any(tmp_path.iterdir()), f"{path.name} wrote nothing under CHANGEDET_NOTEBOOK_OUT"
    assert os.environ["CHANGEDET_NOTEBOOK_OUT"] == str(tmp_path)
