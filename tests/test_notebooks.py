"""Every notebook runs headless, top to bottom, with small settings (GPT_JAX_SMALL=1)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_three_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart_tpu.ipynb", "train_your_own.ipynb", "load_hugging_face.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_JAX_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", str(path.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_says_what_to_set_when_gpt_jax_is_missing(path, monkeypatch):
    import importlib.util

    cell = "".join(nbformat.read(path, as_version=4).cells[1].source)
    assert "GPT_JAX_SOURCE" in cell
    monkeypatch.delenv("GPT_JAX_SOURCE", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as on a fresh Colab runtime
    with pytest.raises(RuntimeError, match="not published on PyPI. Set GPT_JAX_SOURCE to a git URL"):
        exec(compile(cell, str(path), "exec"), {})
    monkeypatch.setenv("GPT_JAX_SOURCE", "/nonexistent/gpt_jax.whl")
    with pytest.raises(RuntimeError, match="pip could not install gpt_jax from GPT_JAX_SOURCE='/nonexistent"):
        exec(compile(cell, str(path), "exec"), {})
