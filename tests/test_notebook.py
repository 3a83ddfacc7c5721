"""examples/quickstart.ipynb runs top to bottom (tiny model, a few steps) and is committed without outputs.

The notebook reads its settings from the environment: ``EMBEDFT_BASE_MODEL`` (the tiny BERT here),
``EMBEDFT_MAX_STEPS`` and ``EMBEDFT_OUTPUT_DIR``. It runs in a real Jupyter kernel (nbclient +
ipykernel, both in the ``dev`` extra), in a temporary working folder.
"""

from __future__ import annotations

import pytest

from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "no code cells"
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"cells {dirty} keep outputs: clear them before committing (Jupyter: Edit > Clear All Outputs)"


def test_quickstart_notebook_runs(tiny_model_path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    monkeypatch.setenv("EMBEDFT_BASE_MODEL", tiny_model_path)
    monkeypatch.setenv("EMBEDFT_MAX_STEPS", "4")
    monkeypatch.setenv("EMBEDFT_OUTPUT_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model: a second thread only adds contention
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    text = "\n".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")) for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert f"base model: {tiny_model_path}" in text
    assert "leakage check (texts shared between splits) OK" in text
    assert "cosine_ap" in text and "cosine similarity" in text
    assert (tmp_path / "run" / "model" / "modules.json").is_file()
