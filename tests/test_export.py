"""vidjax.export: a checkpoint's inference function as one .npz (StableHLO + weights + metadata), loaded and run in a
process that never imports vidjax, matching `pretrained.load` at every batch size; clear failures that write
nothing."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from vidjax import pretrained
from vidjax.commands import export
from vidjax.commands.convert import convert

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
CLASSIFIER = FIXTURES / "videomae_classification_bin" / "source"  # VideoMAE, 4 frames x 32 px, 5 named classes
PRETRAIN = FIXTURES / "videomae_pretrain" / "source"  # VideoMAE pre-training: no head

# Run with `sys.executable`: vidjax is made unimportable first, so any import of it inside the loader fails.
SERVER = """
import json, sys
sys.modules["vidjax"] = None
import numpy as np
path, clips_path, out_path = sys.argv[1:]
namespace = {}
exec(str(np.load(path)["loader.py"]), namespace)
fn, meta = namespace["load_exported"](path)
clips = np.load(clips_path)
outs = {f"b{n}": np.asarray(fn(clips[:n])) for n in (1, 3)}
outs["b2"] = np.asarray(fn(clips[1:3]))
assert "vidjax" not in sys.modules or sys.modules["vidjax"] is None, "the loader imported vidjax"
assert not [m for m in sys.modules if m.startswith("vidjax.")], "the loader imported vidjax"
np.savez(out_path, **outs)
print(json.dumps(meta))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_checkpoints")
    convert(from_hf=str(CLASSIFIER), out=str(folder / "classifier"))
    convert(from_hf=str(PRETRAIN), out=str(folder / "pretrain"))
    return folder


def test_export_runs_without_vidjax_and_matches_pretrained(checkpoints, tmp_path, capsys):
    ckpt = checkpoints / "classifier"
    out = tmp_path / "model.vjx.npz"
    assert export.main([f"--checkpoint={ckpt}", f"--out={out}"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.vjx.npz"]  # no temporary file left

    clips = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "clips.npy", clips)
    result = subprocess.run([sys.executable, "-c", SERVER, str(out), str(tmp_path / "clips.npy"),
                             str(tmp_path / "outs.npz")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    meta = json.loads(result.stdout.strip().splitlines()[-1])
    served = dict(np.load(tmp_path / "outs.npz"))

    model = pretrained.load(ckpt)
    want = np.asarray(model(model.preprocess(clips)))
    assert want.shape == (3, 5)
    np.testing.assert_allclose(served["b3"], want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(served["b1"], want[:1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(served["b2"], want[1:3], rtol=0, atol=1e-5)
    assert served["b3"].dtype == np.float32

    assert meta["format"] == export.FORMAT and meta["model_name"] == "videomae"
    assert meta["task"] == "classification" and meta["scores"] == "softmax" and meta["num_outputs"] == 5
    assert meta["class_names"] == model.class_names == [f"action_{i}" for i in range(5)]
    clip = meta["clip"]
    assert (clip["num_frames"], clip["image_size"]) == (4, 32)
    np.testing.assert_allclose(clip["mean"], model.preprocessing["mean"])
    np.testing.assert_allclose(clip["std"], model.preprocessing["std"])
    # A converted checkpoint records no stride: the one vidjax decodes it with, marked as not recorded.
    assert clip["sampling_rate"] == pretrained.DEFAULT_SAMPLING_RATE and clip["sampling_rate_recorded"] is False
    assert meta["input"] == {"shape": ["b", 4, 32, 32, 3], "dtype": "uint8", "layout": "RGB channels-last"}
    assert meta["output"]["shape"] == ["b", 5] and meta["vidjax_version"]
    assert meta["platforms"] == ["cpu"]

    # The documented loader is this module's load_exported, also in-process.
    fn, same = export.load_exported(out)
    assert same == meta
    np.testing.assert_allclose(np.asarray(fn(clips)), want, rtol=0, atol=1e-5)


def test_export_for_several_platforms(checkpoints, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "multi.vjx.npz"  # missing parent folders are created, as by extract's --out
    assert export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={out}", "--platforms=cpu,cuda"]) == 0
    fn, meta = export.load_exported(out)
    assert meta["platforms"] == ["cpu", "cuda"]
    assert np.asarray(fn(np.zeros((2, 4, 32, 32, 3), np.uint8))).shape == (2, 5)

    assert "It runs on cpu or cuda only" in capsys.readouterr().out

    # A file for other machines only: written (it is what was asked), with what it runs on and a warning.
    other = "tpu" if jax.export.default_export_platform() != "tpu" else "cuda"
    assert export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={tmp_path / 'other.npz'}",
                        f"--platforms={other}"]) == 0
    captured = capsys.readouterr()
    assert f"It runs on {other} only" in captured.out
    here = jax.export.default_export_platform()
    assert captured.err == (f"warning: this machine runs {here}, which is not among them: loading "
                            f"{tmp_path / 'other.npz'} here fails. Add {here} to --platforms "
                            f"(--platforms={other},{here}) to run it here too.\n")
    with np.load(tmp_path / "other.npz") as f:
        assert json.loads(str(f["metadata"]))["platforms"] == [other]

    assert export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={tmp_path / 'x.npz'}",
                        "--platforms=cpu,gpux"]) == 2
    err = capsys.readouterr().err
    assert "--platforms=cpu,gpux" in err and "gpux" in err and "cuda" in err
    assert not (tmp_path / "x.npz").exists()


def test_bad_arguments_exit_2_and_write_nothing(checkpoints, tmp_path, capsys):
    out = tmp_path / "model.vjx.npz"
    assert export.main([f"--checkpoint={tmp_path / 'missing'}", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --checkpoint=") and "no such directory" in err and "vidjax.convert" in err

    assert export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={tmp_path}"]) == 2
    assert "is a folder" in capsys.readouterr().err

    # A checkpoint without a head has no scores to export: refused, pointing at extract and at fine-tuning.
    assert export.main([f"--checkpoint={checkpoints / 'pretrain'}", f"--out={out}"]) == 2
    err = capsys.readouterr().err
    assert "pre-training checkpoint" in err and "no classification or regression head" in err
    assert "python -m vidjax.extract" in err and "init_from" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_captioner_is_refused_pointing_at_to_hf(tmp_path, capsys):
    from test_predict_caption import write_captioner

    captioner = write_captioner(tmp_path / "captioner")
    assert export.main([f"--checkpoint={captioner}", f"--out={tmp_path / 'c.vjx.npz'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --checkpoint={captioner} is a video captioner (a videomae encoder and a GPT-2 "
                          f"decoder)"), err
    assert f"VisionEncoderDecoderModel with `python -m vidjax.export --to_hf={captioner} --out=DST`" in err
    assert "head" not in err.replace("the scores of a head", "") and "init_from" not in err
    assert not (tmp_path / "c.vjx.npz").exists()


def test_a_failed_write_leaves_the_old_file(checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "model.vjx.npz"
    out.write_bytes(b"previous")

    def broken_savez(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(export.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={out}"])
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["model.vjx.npz"]


def test_export_of_a_training_run(tmp_path_factory, tmp_path):
    """A training workdir: its recorded frame stride and class names travel with the function."""
    from test_predict import trained_workdir

    workdir, _ = trained_workdir("classification", tmp_path_factory)
    out = tmp_path / "run.vjx.npz"
    assert export.main([f"--checkpoint={workdir}", f"--out={out}"]) == 0
    fn, meta = export.load_exported(out)
    model = pretrained.load(workdir)
    assert meta["clip"]["sampling_rate"] == model.sampling_rate and meta["clip"]["sampling_rate_recorded"] is True
    assert meta["class_names"] == model.class_names and meta["task"] == "classification"
    t, s = model.preprocessing["num_frames"], model.preprocessing["image_size"]
    clips = np.random.default_rng(1).integers(0, 256, (2, t, s, s, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(fn(clips)), np.asarray(model(model.preprocess(clips))), rtol=0, atol=1e-5)
