"""colabs/embeddings_and_probes.ipynb and colabs/colab_tpu.ipynb run top to bottom in a fresh kernel under
VIDJAX_QUICK=1 (the other two notebooks: test_colabs_training.py)."""

import pytest
from helpers import run_notebook
from test_colabs_training import images_of, text_of

ENCODERS = ("VideoMAE", "TimeSformer", "ViViT", "VideoMamba", "SVT", "Captioner encoder")


@pytest.mark.slow
def test_embeddings_and_probes(tmp_path):
    notebook = run_notebook("embeddings_and_probes", tmp_path)
    printed = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "grid search, VideoMAE: chose" in printed
    for task in ("classification (top1)", "regression (ccc_mean)"):
        table = printed.split(task)[1].strip().splitlines()
        assert [line.split("  ")[0] for line in table[1:7]] == list(ENCODERS), table
        assert all(len(line.split()) >= 4 for line in table[1:7])
    assert images_of(notebook) == 1


@pytest.mark.slow
def test_colab_tpu_on_eight_simulated_devices(tmp_path):
    notebook = run_notebook("colab_tpu", tmp_path)
    printed = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "8 x cpu (cpu)" in printed
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} over 8 devices" in printed
    assert "clips/s (" in printed and "MFU n/a: no peak figure for 'cpu'" in printed
    # The step compiled ahead of time for the runtime's devices before training (vidjax.aot's check).
    assert "train step, bfloat16, on cpu:8 (8 CPU devices): mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in printed
    assert "HBM per chip      state and batch" in printed
