"""Every loader takes a checkpoint path as a person types it: relative, `./x`, `~/x`, a trailing slash, a symlink.

For a training workdir and converted checkpoints (a TimeSformer, a V-JEPA 2 classifier): vidjax.pretrained.load,
config.init_from, and the predict, extract, evaluate and visualize commands, run from the directory the relative path
is relative to: in this process (every spelling) and as the commands a person runs from a shell (a few spellings
each: a process start costs seconds).
"""

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import COMMAND_XLA_FLAGS
from test_predict import make_clip, trained_workdir

from vidjax import pretrained
from vidjax.commands import evaluate, extract, predict, visualize
from vidjax.commands.convert import convert

PARITY = pathlib.Path(__file__).parent / "fixtures" / "parity"


def spellings(target: pathlib.Path, monkeypatch) -> list[str]:
    """Ways to type `target` from its parent directory (made the working directory, and $HOME)."""
    monkeypatch.chdir(target.parent)
    monkeypatch.setenv("HOME", str(target.parent))
    link = target.parent / f"{target.name}_link"
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return [target.name, f"./{target.name}", f"{target.name}/", f"~/{target.name}", link.name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    clip = make_clip(tmp_path_factory.mktemp("path_clips") / "clip.mp4", seed=4, num_frames=30)
    converted = tmp_path_factory.mktemp("converted")
    convert(from_hf=str(PARITY / "timesformer_divided" / "source"), out=str(converted / "tsf"))
    convert(from_hf=str(PARITY / "videomae_pretrain" / "source"), out=str(converted / "mae"))
    convert(from_hf=str(PARITY / "vjepa2_classification" / "source"), out=str(converted / "vjepa2"))
    return {"classification": trained_workdir("classification", tmp_path_factory)[0],
            "pretrain": trained_workdir("pretrain", tmp_path_factory)[0],
            "converted": converted / "tsf", "converted_pretrain": converted / "mae",
            "converted_vjepa2": converted / "vjepa2", "clip": clip}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classification", "converted", "converted_vjepa2"])
def test_load_init_from_predict_and_extract(runs, kind, monkeypatch, tmp_path, capsys):
    target = pathlib.Path(runs[kind])
    reference = pretrained.load(target)
    (tmp_path / "list.txt").write_text(f"{runs['clip']} 0\n")
    for typed in spellings(target, monkeypatch):
        model = pretrained.load(typed)
        jax.tree.map(np.testing.assert_array_equal, model.params, reference.params)
        params, report = pretrained.init_from(typed, reference.model_name, reference.config, reference.params)
        assert report["loaded"] and not report["fresh"], typed
        assert predict.main([f"--checkpoint={typed}", runs["clip"]]) == 0, typed
        out = tmp_path / f"feats_{len(typed)}_{typed[-1] == '/'}.npz"
        assert extract.main([f"--checkpoint={typed}", f"--csv={tmp_path / 'list.txt'}", f"--out={out}",
                             "--sampling_rate=1"]) == 0, typed
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error" not in captured.err, captured.err


@pytest.mark.parametrize("kind", ["pretrain", "converted_pretrain"])
@pytest.mark.slow
def test_visualize(runs, kind, monkeypatch, tmp_path, capsys):
    for i, typed in enumerate(spellings(pathlib.Path(runs[kind]), monkeypatch)):
        assert visualize.main([f"--checkpoint={typed}", runs["clip"], f"--out={tmp_path / str(i)}"]) == 0, typed
        assert (tmp_path / f"{i}.png").is_file()
    assert "error" not in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_and_outputs_under_home(runs, monkeypatch, tmp_path):
    from test_train import tiny_config

    config = tiny_config(task="classification", total_steps=2, checkpoint_every=2)
    config.model.depth, config.data.num_eval = 1, 8
    config.model.head, config.model.num_classes = "classification", config.data.num_classes
    scores = []
    for typed in spellings(pathlib.Path(runs["classification"]), monkeypatch):
        scores.append(evaluate.evaluate_checkpoint(config, typed, "~/eval/out.json")["eval_top1"])
    assert len(set(scores)) == 1 and (pathlib.Path(runs["classification"]).parent / "eval" / "out.json").is_file()


@pytest.mark.slow
def test_the_commands_from_a_shell(runs, tmp_path):
    """The real commands, run in a home folder with the checkpoints typed as relative, ./, ~/, trailing-slash and
    symlinked paths; outputs and inputs typed the same way."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(runs["classification"], home / "ft")
    shutil.copytree(runs["converted"], home / "tsf")
    (home / "mae_link").symlink_to(runs["converted_pretrain"], target_is_directory=True)
    shutil.copy(runs["clip"], home / "clip.mp4")
    (home / "list.txt").write_text("clip.mp4 0\n")
    # The config of the training run, for evaluate (tests/test_train.py builds it).
    (home / "tiny.py").write_text(
        f"import sys\nsys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})\n"
        "from test_train import tiny_config\n\n\n"
        "def get_config():\n"
        "    config = tiny_config(task='classification', total_steps=2, checkpoint_every=2)\n"
        "    config.model.depth, config.data.num_eval = 1, 8\n"
        "    config.model.head, config.model.num_classes = 'classification', config.data.num_classes\n"
        "    return config\n")
    env = dict(os.environ, HOME=str(home), XLA_FLAGS=COMMAND_XLA_FLAGS, JAX_PLATFORMS="cpu")
    commands = [
        ("vidjax.predict", "--checkpoint=~/ft/", "clip.mp4"),
        ("vidjax.predict", "--checkpoint=./tsf", "~/clip.mp4", "--sampling_rate=2"),
        ("vidjax.extract", "--checkpoint=ft", "--csv=~/list.txt", "--out=~/out/feats.npz"),
        ("vidjax.visualize", "--checkpoint=mae_link/", "clip.mp4", "--out=~/vis/clip", "--sampling_rate=2"),
        ("vidjax.evaluate", "--config=~/tiny.py", "--checkpoint=./ft/", "--out=~/eval/out.json"),
    ]
    for module, *args in commands:
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=home, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (module, args, proc.stdout + proc.stderr)
        assert "Traceback" not in proc.stderr and "error" not in proc.stderr, (module, args, proc.stderr)
    assert (home / "out" / "feats.npz").is_file() and (home / "vis" / "clip.png").is_file()
    assert (home / "eval" / "out.json").is_file()
