"""colabs/ run top to bottom in a fresh kernel under VIDJAX_QUICK=1: the quickstart and the own-videos fine-tune
here, the embeddings and TPU notebooks in test_colabs_embeddings_tpu.py (two files, so that `--dist loadfile` can
give each xdist worker two notebooks); and every stored notebook is clean and explains each step."""

import nbformat
import pytest
from helpers import COLABS, run_notebook

NOTEBOOKS = ("quickstart", "finetune_your_videos", "embeddings_and_probes", "colab_tpu")


def text_of(cell) -> str:
    """Everything a code cell printed, streams and results, as one string."""
    return "".join(out.get("text", "") or out.get("data", {}).get("text/plain", "") for out in cell.outputs)


def images_of(notebook) -> int:
    return sum("image/png" in out.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for out in cell.outputs)


def test_colabs_are_the_four_notebooks_stored_clean_with_a_text_cell_before_each_step():
    assert sorted(p.stem for p in COLABS.glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        notebook = nbformat.read(COLABS / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        assert notebook.nbformat == 4
        code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
        assert all(not notebook.cells[i].outputs and notebook.cells[i].execution_count is None for i in code), name
        assert all(notebook.cells[i - 1].cell_type == "markdown" for i in code), f"{name}: a step without its text"
        source = "\n".join(notebook.cells[i].source for i in code)
        assert 'find_spec("vidjax") is None' in notebook.cells[code[0]].source, f"{name}: unguarded install"
        assert 'os.environ.get("VIDJAX_QUICK") == "1"' in source, name
    # the README opens each in Colab with a badge
    readme = (COLABS.parent / "README.md").read_text()
    for name in NOTEBOOKS:
        link = f"https://colab.research.google.com/github/vidjax/vidjax/blob/main/colabs/{name}.ipynb"
        assert f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})" in readme, name


def test_quickstart(tmp_path):
    notebook = run_notebook("quickstart", tmp_path)
    printed = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "reconstruction loss" in printed and "top-1" in printed and "true class: move_" in printed
    top5 = printed.split("true class:")[1].splitlines()[1:6]
    assert len(top5) == 5 and all(line.startswith("  move_") for line in top5), top5
    assert images_of(notebook) >= 3  # the clips, the reconstruction, the confusion matrix


@pytest.mark.slow
def test_finetune_your_videos(tmp_path):
    notebook = run_notebook("finetune_your_videos", tmp_path)
    printed = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert printed.count("every video is usable") == 2
    assert "4 classes in the data" in printed  # the head followed the folder
    for name in ("move_down", "move_left", "move_right", "move_up"):
        assert any(line.startswith(name) for line in printed.splitlines()), name
    assert "mixup off: top-1" in printed and "mixup on: top-1" in printed
    assert images_of(notebook) == 1
