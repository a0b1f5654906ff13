"""SVT checkpoints (`python -m vidjax.convert --from_svt`): both file layouts, parity of the backbone's features at
the checkpoint's clip and at resized ones, the DINO head reported as left out, and failures that write nothing.

The fixture (scripts/parity/svt.py) is a random-weight TimeSformer under SVT's tensor names, saved by torch as the
released state dict and as a training checkpoint, with Hugging Face TimesformerModel's outputs as the reference.
Broken checkpoints are written here, in torch's zip format, without torch.
"""

import collections
import io
import json
import pathlib
import pickle
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from vidjax import pretrained, train
from vidjax.commands import extract
from vidjax.commands.convert import convert, main
from vidjax.config_lib import ConfigError
from vidjax.convert.common import ConversionError, read_torch_zip

CASE = pathlib.Path(__file__).parent / "fixtures" / "parity" / "svt_backbone"
META = json.loads((CASE / "case.json").read_text())
RELEASE, TRAINING = CASE / "source" / "release.pth", CASE / "source" / "training.pth"
HEADS = META["num_heads"]
IO = dict(np.load(CASE / "io.npz"))


# ------------------------------------------------------------------------------- torch zip files without torch

class _TorchName:
    """A name torch.load imports while unpickling (a storage class, the tensor rebuild function)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's REDUCE wants a callable; torch.load calls the real one
        raise TypeError(f"{self.module}.{self.name} only names torch's object in the pickle; it is never called here")


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


class _TorchPickler(pickle._Pickler):
    """Pickles numpy arrays as torch.save does float32 tensors: `_rebuild_tensor_v2` of a persistent storage.

    The pure-Python pickler, because its dispatch table can write a global that torch.load imports and this process
    cannot (torch is not installed here)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2)
        self.storages: list[_Storage] = []

    def _save_torch_name(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_TorchName] = _save_torch_name

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return "storage", _TorchName("torch", "FloatStorage"), obj.key, "cpu", obj.data.size
        return None

    def reducer_override(self, obj):
        if not isinstance(obj, np.ndarray):
            return NotImplemented
        assert obj.dtype == np.float32, obj.dtype
        storage = _Storage(str(len(self.storages)), np.ascontiguousarray(obj))
        self.storages.append(storage)
        stride = tuple(s // obj.itemsize for s in storage.data.strides)
        return (_TorchName("torch._utils", "_rebuild_tensor_v2"),
                (storage, 0, obj.shape, stride, False, collections.OrderedDict()))


def write_torch_zip(path: pathlib.Path, obj) -> pathlib.Path:
    """`torch.save(obj, path)` for dicts of float32 arrays (and plain values), in torch's zip layout; torch 2.13's
    `torch.load(path, weights_only=True)` reads back what it writes."""
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer)
    pickler.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for storage in pickler.storages:
            archive.writestr(f"archive/data/{storage.key}", storage.data.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def test_the_writer_round_trips(tmp_path):
    tensors = read_torch_zip(RELEASE)
    again = read_torch_zip(write_torch_zip(tmp_path / "copy.pth", {"teacher": tensors, "epoch": 3}))
    assert again["epoch"] == 3 and sorted(again["teacher"]) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(again["teacher"][name], value)


# ---------------------------------------------------------------------------------------------------- parity

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("svt") / "release"
    convert(from_svt=str(RELEASE), out=str(out), num_heads=HEADS)
    return out


def reference(frames, size):
    return IO[f"video_{frames}x{size}"], IO[f"last_hidden_state_{frames}x{size}"]


@pytest.mark.parametrize("frames,size", [tuple(view) for view in META["views"]])
def test_release_features_match_svt_at_every_clip_size(converted, frames, size):
    """The checkpoint's clip, and clips with fewer and more frames and patches: SVT resizes its tables at run time
    (nearest), `load(num_frames=, image_size=)` once, with the same rule."""
    native = [frames, size] == META["views"][0]
    model = pretrained.load(converted) if native else pretrained.load(converted, num_frames=frames, image_size=size)
    video, want = reference(frames, size)
    got = np.asarray(model(video))  # a backbone: the last hidden state
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=0, atol=1e-4)  # the CLS feature SVT's evaluations read
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)  # every token, in the reference's order


def test_training_checkpoint_converts_its_teacher(tmp_path):
    result = convert(from_svt=str(TRAINING), out=str(tmp_path / "out"), num_heads=HEADS)
    assert result.source["layout"] == "training checkpoint (teacher)"
    assert result.source["path"] == f"{TRAINING} (teacher)"
    video, want = reference(*META["views"][0])
    # The student (perturbed in the fixture) would not match: the teacher is what SVT evaluates.
    np.testing.assert_allclose(np.asarray(pretrained.load(tmp_path / "out")(video)), want, rtol=0, atol=1e-4)


def test_the_backbone_records_svts_model_and_inputs(converted):
    model = pretrained.load(converted)
    cfg = model.config
    assert (model.model_name, cfg.head, model.task, model.class_names) == ("timesformer", "none", None, None)
    assert (cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.variant) == (32, 2, HEADS, 128, "B/8")
    assert (cfg.attention_type, cfg.qkv_bias, cfg.ln_eps, cfg.approximate_gelu) == ("divided_space_time", True,
                                                                                    1e-6, False)
    assert (model.preprocessing["num_frames"], model.preprocessing["image_size"], model.sampling_rate) == (4, 32, 32)
    np.testing.assert_allclose(model.preprocessing["mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(model.preprocessing["std"], [0.229, 0.224, 0.225])
    np.testing.assert_allclose(cfg.pixel_mean, [0.485, 0.456, 0.406])


def test_summary_names_the_dino_head_as_not_converted(tmp_path, capsys, caplog):
    assert main(["--from-svt", str(RELEASE), "--out", str(tmp_path / "out"), "--num-heads", str(HEADS)]) == 0
    out = capsys.readouterr().out
    assert ("not converted: SVT's DINO projection head, used by its self-supervised loss only (8 tensors: "
            "head.last_layer.weight_g, head.last_layer.weight_v, head.mlp.0.bias, head.mlp.0.weight, ...)") in out
    source = json.loads((tmp_path / "out" / "vidjax.json").read_text())["source"]
    assert source["not_converted"]["tensors"] == META["dino_head"] and source["format"] == "svt"
    assert "were not used" not in caplog.text  # left out on purpose: no warning about unexpected tensors
    # A tensor SVT's backbone does not have is still a warning.
    extra = write_torch_zip(tmp_path / "extra.pth", {**read_torch_zip(RELEASE),
                                                     "backbone.aux_cls_token": np.zeros((1, 1, 32), np.float32)})
    convert(from_svt=str(extra), out=str(tmp_path / "extra_out"), num_heads=HEADS)
    assert "1 tensor(s)" in caplog.text and "backbone.aux_cls_token" in caplog.text


# ------------------------------------------------------------------------------------------ the other paths

def test_extract_gives_the_cls_feature_at_svts_frame_stride(converted, tmp_path):
    from test_predict import make_clip

    clip = make_clip(tmp_path / "clip.mp4", seed=3, num_frames=40, h=36, w=48)
    (tmp_path / "list.txt").write_text(f"{clip} 0\n")
    assert extract.main([f"--checkpoint={converted}", f"--csv={tmp_path / 'list.txt'}",
                         f"--out={tmp_path / 'feats.npz'}", "--pool=cls"]) == 0
    features = np.load(tmp_path / "feats.npz")["features"]
    model = pretrained.load(converted)
    views = model.read_views(clip)  # frames 32 apart: the rate the checkpoint records
    want = np.asarray(model(model.preprocess(views)))[:, 0]
    assert features.shape == (1, 32)
    np.testing.assert_allclose(features, want, rtol=0, atol=1e-5)


def test_timesformer_recipe_starts_from_the_converted_backbone(converted):
    """--config.init_from of configs/timesformer_k400.py: the fine-tune takes the backbone's architecture and
    inputs, its tables are stretched to the recipe's 8 frames, and only the classifier starts fresh."""
    from helpers import load_config

    config = load_config("timesformer_k400", "runlocal")
    config.init_from, config.batch_size = str(converted), 8
    resolved, train_source, _, mesh = train.prepare(config, explicit_keys=set())
    model = resolved.model
    assert (model.width, model.depth, model.num_heads, model.mlp_dim, model.num_frames) == (32, 2, HEADS, 128, 8)
    np.testing.assert_allclose(model.pixel_mean, [0.485, 0.456, 0.406])
    fresh = train.build(resolved, len(train_source), mesh).init_params()
    params, report = pretrained.init_from(config.init_from, "timesformer", model, fresh)
    assert sorted(report["fresh"]) == ["head/bias", "head/kernel"] and report["unused"] == []
    source = pretrained.load(converted).params
    # 4 -> 8 frames, nearest: each of the checkpoint's time rows twice.
    np.testing.assert_array_equal(np.asarray(params["time_embed"]), np.repeat(source["time_embed"], 2, axis=0))
    np.testing.assert_array_equal(np.asarray(params["blocks"][1]["temporal_attn"]["qkv"]),
                                  np.asarray(source["blocks"][1]["temporal_attn"]["qkv"]))
    config.model.num_heads = 4  # a head count the checkpoint contradicts, typed on the command line
    with pytest.raises(ConfigError, match=r"num_heads: checkpoint 2, --config.model.num_heads 4"):
        train.prepare(config, explicit_keys={"model.num_heads"})


# ----------------------------------------------------------------------------------------------- bad inputs

def _release_without(name):
    tensors = read_torch_zip(RELEASE)
    del tensors[name]
    return tensors


def _teacher_without(name):
    return {"student": read_torch_zip(RELEASE), "teacher": _release_without(name), "epoch": 20}


def _release_with(name, shape):
    return {**read_torch_zip(RELEASE), name: np.zeros(shape, np.float32)}


BROKEN = {
    "neither layout": (lambda: {"model": read_torch_zip(RELEASE), "epoch": 3}, HEADS,
                       r"bad.pth is not an SVT checkpoint: it has no backbone.\* tensors .* top-level keys are "
                       r"\['epoch', 'model'\]"),
    "teacher without backbone": (lambda: {"teacher": {"encoder.weight": np.zeros(3, np.float32)}, "epoch": 1}, HEADS,
                                 r"not an SVT checkpoint: its teacher has no backbone.\* tensors .* top-level keys "
                                 r"are \['epoch', 'teacher'\]"),
    "missing tensor": (lambda: _release_without("backbone.blocks.1.mlp.fc2.weight"), HEADS,
                       r"bad.pth is missing tensor 'backbone.blocks.1.mlp.fc2.weight' \(expected shape \(32, 128\)\)"),
    "missing table in the teacher": (lambda: _teacher_without("backbone.time_embed"), HEADS,
                                     r"bad.pth \(teacher\) is missing tensor 'backbone.time_embed' \(expected shape "
                                     r"\(1, frames, 32\)\)"),
    "shape mismatch": (lambda: _release_with("backbone.blocks.0.temporal_attn.proj.weight", (32, 16)), HEADS,
                       r"'backbone.blocks.0.temporal_attn.proj.weight' in .*bad.pth has shape \(32, 16\), but .*"
                       r"expects \(32, 32\)"),
    "position grid not square": (lambda: _release_with("backbone.pos_embed", (1, 20, 32)), HEADS,
                                 r"'backbone.pos_embed' in .*bad.pth has shape \(1, 20, 32\); expected "
                                 r"\(1, 1 \+ n \* n, 32\)"),
    "no head count": (lambda: read_torch_zip(RELEASE), 0,
                      r"bad.pth has width 32, which is no ViT size .* pass --num_heads"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_checkpoints_are_named_errors_that_write_nothing(case, tmp_path, capsys):
    make, heads, message = BROKEN[case]
    bad = write_torch_zip(tmp_path / "bad.pth", make())
    with pytest.raises(ConversionError, match=message):
        convert(from_svt=str(bad), out=str(tmp_path / "out"), num_heads=heads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]  # no output, no temporary directory
    argv = ["--from_svt", str(bad), "--out", str(tmp_path / "out")] + (["--num_heads", str(heads)] if heads else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_command_fails_in_one_line(tmp_path):
    bad = write_torch_zip(tmp_path / "bad.pth", {"epoch": 1})
    proc = subprocess.run([sys.executable, "-m", "vidjax.convert", "--from-svt", str(bad), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {bad} is not an SVT checkpoint") and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_num_heads_belongs_to_svt():
    with pytest.raises(ConversionError, match="--num_heads applies to --from_svt, --from_videomae and --from_vjepa2"):
        convert(from_hf=str(CASE), out="unused", num_heads=2)
