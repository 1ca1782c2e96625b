"""The post-hoc clustering notebook runs end to end on a tiny run and writes the cluster run."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from conftest import planted_curves, write_tensorboard_run
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "post_hoc_clustering.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(
        not cell.get("outputs") and not cell.get("execution_count") for cell in nb.cells if cell.cell_type == "code"
    )


@pytest.mark.slow
def test_notebook_executes_on_a_tiny_run(tmp_path, monkeypatch):
    names, _, values = planted_curves(per_family=6, measurements=8, outliers=0)
    run = tmp_path / "run"
    write_tensorboard_run(run, names, values)
    monkeypatch.setenv("RWC_RUN_DIR", str(run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "24 layers x 8 measurements" in text
    assert "default vs k-means" in text and "HDBSCAN found" in text  # the default says which method answered
    assert (run / "rwc_clusters").is_dir()
    assert json.loads((run / "rwc_clusters.json").read_text())["format_version"] == 1


STUDY_NOTEBOOK = NOTEBOOK.with_name("depth_study.ipynb")


def test_the_depth_study_notebook_is_committed_with_its_figures():
    nb = nbformat.read(STUDY_NOTEBOOK, as_version=4)
    figures = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(figures) >= 3
    assert any("Reading RWC across depth" in c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.slow
def test_the_depth_study_notebook_executes_on_the_committed_results(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(STUDY_NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "settings from depth-study: resnet, vgg" in text
    assert "measured / predicted at step 1" in text
