"""Checkpoint conversion: readers without torch, the CLI, adapting sizes, and clear failures that write nothing."""

import json
import pathlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from vidjax import pretrained
from vidjax.commands.convert import convert, main
from vidjax.convert.common import ConversionError, TensorSource, read_safetensors

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
CLASSIFIER = FIXTURES / "videomae_classification_bin" / "source"  # pytorch_model.bin (torch zip format)
ENCODER = FIXTURES / "videomae_model" / "source"  # model.safetensors


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, value in tensors.items():
        data = np.ascontiguousarray(value, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def edited_copy(tmp_path, edit_tensors=None, edit_config=None, source=ENCODER):
    dst = tmp_path / "src"
    shutil.copytree(source, dst)
    if edit_config:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    if edit_tensors:
        tensors = dict(read_safetensors(dst / "model.safetensors"))
        edit_tensors(tensors)
        write_safetensors(dst / "model.safetensors", tensors)
    return dst


def test_torch_zip_reader_needs_no_torch():
    src = TensorSource.from_hf_dir(CLASSIFIER)
    assert src.origin.endswith("pytorch_model.bin")
    weight = src.take("videomae.encoder.layer.0.attention.attention.query.weight", (32, 32))
    assert weight.dtype == np.float32 and np.isfinite(weight).all() and weight.std() > 0.05
    # In a process where importing torch fails, the same file still reads.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from vidjax.convert.common import TensorSource\n"
            f"print(len(TensorSource.from_hf_dir({str(CLASSIFIER)!r}).names()))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(result.stdout) == len(src.names())


def test_convert_classification_checkpoint(tmp_path):
    converted = convert(from_hf=str(CLASSIFIER), out=str(tmp_path / "out"))
    assert converted.model_config.num_classes == 5
    model = pretrained.load(tmp_path / "out")
    assert model.class_names == [f"action_{i}" for i in range(5)]
    np.testing.assert_allclose(model.preprocessing["mean"], [0.485, 0.456, 0.406])
    assert (model.preprocessing["num_frames"], model.preprocessing["image_size"]) == (4, 32)
    frames = np.random.default_rng(0).integers(0, 255, (1, 4, 32, 32, 3), dtype=np.uint8)
    logits = model(model.preprocess(frames))
    assert logits.shape == (1, 5) and np.isfinite(np.asarray(logits)).all()
    with pytest.raises(ValueError, match=r"\(batch, 4, 32, 32, 3\) channels-last"):
        model(np.zeros((1, 3, 4, 32, 32), np.float32))


def test_pretraining_checkpoint_needs_a_mask(tmp_path):
    convert(from_hf=str(FIXTURES / "videomae_pretrain" / "source"), out=str(tmp_path / "out"))
    model = pretrained.load(tmp_path / "out")
    io = np.load(FIXTURES / "videomae_pretrain" / "io.npz")
    out = model(io["video"], io["mask"])
    assert out["reconstruction"].shape == (2, int(io["mask"][0].sum()), 2 * 8 * 8 * 3)
    with pytest.raises(ValueError, match="model\\(video, mask\\)"):
        model(io["video"])
    uneven = io["mask"].copy()
    uneven[0, np.flatnonzero(~uneven[0])[0]] = True
    with pytest.raises(ValueError, match="same number of masked"):
        model(io["video"], uneven)


def test_adapting_to_more_frames_and_pixels(tmp_path):
    convert(from_hf=str(ENCODER), out=str(tmp_path / "out"), num_frames=8, image_size=48)
    model = pretrained.load(tmp_path / "out")
    hidden = model(np.zeros((1, 8, 48, 48, 3), np.float32))
    assert hidden.shape == (1, 4 * 6 * 6, 32)
    again = pretrained.load(tmp_path / "out", num_frames=2, image_size=32)
    assert again(np.zeros((1, 2, 32, 32, 3), np.float32)).shape == (1, 16, 32)


def test_unsupported_architecture_writes_nothing(tmp_path):
    src = edited_copy(tmp_path, edit_config=lambda c: c.update(architectures=["BertModel"], model_type="bert"))
    with pytest.raises(ConversionError, match=r"BertModel.*VideoMAEForPreTraining"):
        convert(from_hf=str(src), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary directory left behind either


def test_missing_tensor_is_named(tmp_path):
    name = "encoder.layer.1.intermediate.dense.weight"
    src = edited_copy(tmp_path, edit_tensors=lambda t: t.pop(name))
    with pytest.raises(ConversionError, match=rf"missing tensor '{name}' \(expected shape \(64, 32\)\)"):
        convert(from_hf=str(src), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_tensor_and_expected_shape(tmp_path):
    name = "encoder.layer.0.attention.output.dense.weight"
    src = edited_copy(tmp_path, edit_tensors=lambda t: t.update({name: np.zeros((32, 16), np.float32)}))
    with pytest.raises(ConversionError, match=rf"'{name}'.*shape \(32, 16\).*expects \(32, 32\)"):
        convert(from_hf=str(src), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_truncated_weights_file(tmp_path):
    src = edited_copy(tmp_path)
    raw = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert(from_hf=str(src), out=str(tmp_path / "out"))


def test_existing_destination_is_kept_on_failure(tmp_path):
    out = tmp_path / "out"
    convert(from_hf=str(ENCODER), out=str(out))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ConversionError, match="already exists"):
        convert(from_hf=str(ENCODER), out=str(out))
    bad = edited_copy(tmp_path, edit_tensors=lambda t: t.pop("encoder.layer.0.layernorm_before.weight"))
    with pytest.raises(ConversionError, match="missing tensor"):
        convert(from_hf=str(bad), out=str(out), overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert pretrained.load(out)(np.zeros((1, 4, 32, 32, 3), np.float32)).shape == (1, 32, 32)


def test_cli(tmp_path, capsys):
    assert main(["--from-hf", str(ENCODER), "--out", str(tmp_path / "ok")]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert main(["--from-hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--from_videomamba" in capsys.readouterr().out


def test_load_rejects_other_directories(tmp_path):
    with pytest.raises(ConversionError, match="not a converted checkpoint"):
        pretrained.load(tmp_path)


@pytest.mark.slow
def test_fine_tuning_starts_from_a_converted_checkpoint(tmp_path):
    """config.init_from: encoder tensors copied, adapted to the config's clip; a head of another size starts fresh."""
    import jax

    from vidjax import config_lib, train
    from vidjax.models import videomae

    convert(from_hf=str(CLASSIFIER), out=str(tmp_path / "ckpt"))
    config = config_lib.trainer_config()
    config.model_name, config.task = "videomae", "classification"
    config.model = videomae.default_config()
    config.model.update(dict(variant="B/8", width=32, depth=2, num_heads=2, mlp_dim=64, num_frames=8, image_size=32,
                             head="classification", num_classes=8, ln_eps=1e-6, fc_norm_eps=1e-5))
    config.data = config_lib.synthetic_data(num_frames=8, image_size=32, num_train=32, num_eval=8)
    config.batch_size, config.total_steps, config.figure, config.eval_every = 8, 2, False, 0
    config.init_from = str(tmp_path / "ckpt")
    two_devices = train.sharding.create_mesh(config.mesh, jax.devices()[:2])
    result = train.train_and_evaluate(config, str(tmp_path / "work"), devices=jax.devices()[:2])
    assert result["step"] == 2
    source = pretrained.load(tmp_path / "ckpt")
    fresh = train.build(config, 32, two_devices).init_state()["params"]  # the trainer's init, compiled already
    started, report = pretrained.init_from(config.init_from, "videomae", config.model, fresh)
    assert sorted(report["fresh"]) == ["head/bias", "head/kernel"] and report["unused"] == []
    np.testing.assert_array_equal(np.asarray(started["encoder"]["transformer"]["blocks"][1]["attn"]["qkv"]),
                                  np.asarray(source.params["encoder"]["transformer"]["blocks"][1]["attn"]["qkv"]))
    config.model.width = 48
    with pytest.raises(config_lib.ConfigError, match=r"parameter encoder/patch_embed/\w+ has shape"):
        pretrained.init_from(config.init_from, "videomae", config.model,
                             train.build(config, 32, two_devices).init_state()["params"])


@pytest.mark.parametrize("method,up,down", [
    # torch.nn.functional.interpolate([0, 1, 4, 9], size=6 / size=3, align_corners=False), torch 2.13.
    ("nearest", [0.0, 0.0, 1.0, 4.0, 4.0, 9.0], [0.0, 1.0, 4.0]),
    ("linear", [0.0, 0.5, 1.5, 3.5, 6.5, 9.0], [0.166667, 2.5, 8.166668]),
    ("cubic", [-0.086806, 0.21875, 1.430555, 3.152778, 6.78125, 9.434029], [0.091435, 2.125, 8.334492]),
])
def test_resize_grid_matches_pytorch_interpolate(method, up, down):
    from vidjax.models.positions import resize_grid

    table = np.array([0.0, 1.0, 4.0, 9.0], np.float32)[:, None] * np.array([[1.0, -2.0]], np.float32)
    np.testing.assert_allclose(resize_grid(table, (4,), (6,), method), np.outer(up, [1, -2]), atol=1e-5)
    np.testing.assert_allclose(resize_grid(table, (4,), (3,), method), np.outer(down, [1, -2]), atol=1e-5)
    # Separable over a 2-D grid: resizing rows only leaves each column's 1-D result.
    grid = np.repeat(table[:, None, :1], 3, axis=1).reshape(12, 1)
    out = resize_grid(grid, (4, 3), (6, 3), method).reshape(6, 3)
    np.testing.assert_allclose(out, np.repeat(np.asarray(up)[:, None], 3, axis=1), atol=1e-5)
    assert resize_grid(table, (4,), (4,), method) is table


def test_overwrite_only_replaces_a_conversion(tmp_path):
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="not a converted checkpoint"):
        convert(from_hf=str(ENCODER), out=str(notes), overwrite=True)
    assert (notes / "notes.txt").read_text() == "keep me"
    # A conversion killed mid-write leaves a hidden temporary directory; the next one clears it.
    (tmp_path / ".out.tmp-deadbeef" / "params").mkdir(parents=True)
    convert(from_hf=str(ENCODER), out=str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]


def test_cli_reports_impossible_sizes(tmp_path, capsys):
    assert main(["--from-hf", str(ENCODER), "--out", str(tmp_path / "out"), "--image_size", "33"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "33" in err
    assert not (tmp_path / "out").exists()
