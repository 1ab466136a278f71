"""Every notebook in tutorials/ runs top to bottom in a real Jupyter kernel, offline, on the bundled data."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPOSITORY = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPOSITORY / "tutorials").glob("*.ipynb"))


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[path.stem for path in TUTORIALS])
def test_tutorial_runs_without_errors(path, tmp_path, monkeypatch):
    """Executed in a scratch directory, so its history and store never land in the repository."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert errors == []
    assert list(tmp_path.glob("*.db")), "a tutorial keeps its runs in a history file in its working directory"
    assert not list((REPOSITORY / "tutorials").glob("*.db"))
