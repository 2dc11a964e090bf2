"""The model notebook runs top to bottom on the sample captures (small settings)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "model.ipynb"


def test_model_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install -e '.[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install -e '.[dev]')")
    if not (REPO / "pcaps" / "MANIFEST.csv").is_file():
        pytest.skip("sample captures pcaps/ with MANIFEST.csv are not present")
    env = {"VPNID_REPO": str(REPO), "VPNID_NB_AUGMENT": "0", "VPNID_NB_FOLDS": "3",
           "VPNID_NB_CANDIDATES": "logreg", "VPNID_NB_LOPO": "0", "VPNID_NB_PUBLIC": "0",
           "VPNID_NB_OUT": str(tmp_path)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "notebook-model.skops").is_file()
    assert (tmp_path / "notebook-model.card.json").is_file()
    for png in ("roc.png", "confusion.png", "protocol_recall.png"):
        assert (tmp_path / "evaluate" / png).stat().st_size > 1000
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # importance bar chart plus the three evaluation plots
    assert os.environ["VPNID_NB_OUT"] == str(tmp_path)
