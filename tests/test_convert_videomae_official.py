"""Official VideoMAE / VideoMAE V2 files (`python -m vidjax.convert --from_videomae`): file layouts and prefixes,
VideoMAE V2's dual masking through the converted model, Kinetics label spaces (K710 -> K400 in predict), sizes
from shapes and their errors, adaptation to other clip sizes.

The fixtures (scripts/parity/videomae_v2.py; tests/test_parity.py checks each case's outputs) are random-weight
models of `vidjax.bench.torch_ref.videomae_v2`, saved as the official scripts save them. Other layouts and broken files
are written here without torch (tests/test_svt_convert.py's torch zip writer); the one comparison that runs the
torch reference at another clip size is skipped without torch.
"""

import json
import pathlib

import numpy as np
import pytest
from test_decode import make_video
from test_svt_convert import write_torch_zip

from vidjax import pretrained
from vidjax.commands import predict
from vidjax.commands.convert import convert, main
from vidjax.convert.common import ConversionError, read_torch_zip
from vidjax.convert.videomae import _decoder_heads, _encoder_heads, convert_videomae_file
from vidjax.data import kinetics

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"


def case(name):
    folder = FIXTURES / f"videomae_v2_{name}"
    meta = json.loads((folder / "case.json").read_text())
    return folder / "source" / "checkpoint.pth", meta["convert_args"], dict(np.load(folder / "io.npz"))


def state_of(path):
    obj = read_torch_zip(path)
    return next((obj[k] for k in ("model", "module") if isinstance(obj, dict) and k in obj), obj)


def test_dual_masking_decodes_the_running_cell_positions(tmp_path):
    path, args, io = case("pretrain_dual")
    convert(from_videomae=str(path), out=str(tmp_path / "ckpt"), **args)
    model = pretrained.load(tmp_path / "ckpt")
    out = model.forward(io["video"], io["mask"], io["decoder_mask"])
    decoded = np.stack([np.flatnonzero(~row) for row in io["decoder_mask"]])
    np.testing.assert_array_equal(np.asarray(out["decoded_ids"]), decoded)
    # The loss covers the decoded tokens the encoder did not see (`bool_masked_pos[~decode_masked_pos]`).
    np.testing.assert_array_equal(np.asarray(out["loss_mask"]), np.take_along_axis(io["mask"], decoded, axis=1))
    np.testing.assert_allclose(np.asarray(out["pred"]), io["pred"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(float(out["loss"]), float(io["loss"]), rtol=0, atol=1e-4)
    assert model.config.head == "pretrain" and model.config.decoder_width == 16 and model.config.decoder_depth == 2
    assert model.config.ln_eps == model.config.decoder_norm_eps == 1e-6


def test_file_layouts_and_prefixes_convert_alike(tmp_path):
    path, args, _ = case("k710")
    state = state_of(path)
    reference = convert_videomae_file(path, args["num_heads"], None, 4, 32)
    layouts = {
        "bare": state,
        "module": {"module": {f"module.{k}": v for k, v in state.items()}},
        "orig_mod": {"model": {f"_orig_mod.{k}": v for k, v in state.items()}, "epoch": 3},
        "backbone": {f"backbone.{k}": v for k, v in state.items()},
        "encoder": {"model": {f"encoder.{k}": v for k, v in state.items()}},
    }
    for name, obj in layouts.items():
        got = convert_videomae_file(write_torch_zip(tmp_path / f"{name}.pth", obj), args["num_heads"], None, 4, 32)
        assert got.params.keys() == reference.params.keys(), name
        for key, value in reference.params.items():
            np.testing.assert_array_equal(got.params[key], value, err_msg=f"{name}: {key}")
    assert reference.source["layout"] == "'model' entry" and reference.source["kind"] == "fine-tuned"


@pytest.mark.parametrize("name,pooling", [("finetune_fc_norm", True), ("finetune_norm", False), ("distilled", True)])
def test_fine_tuned_layouts(name, pooling):
    path, args, _ = case(name)
    converted = convert_videomae_file(path, args["num_heads"], None, 4, 32)
    cfg = converted.model_config
    assert cfg.head == "classification" and cfg.use_mean_pooling is pooling
    assert ("fc_norm/scale" in converted.params) is pooling
    assert ("encoder/norm/scale" in converted.params) is not pooling
    assert cfg.ln_eps == cfg.fc_norm_eps == 1e-6 and cfg.qkv_bias == "qv"
    assert converted.preprocessing["mean"] == [0.485, 0.456, 0.406] and converted.preprocessing["sampling_rate"] == 4


def test_label_spaces_detected_named_and_mapped(tmp_path, capsys):
    path, args, io = case("k710")
    out = tmp_path / "k710"
    assert main(["--from_videomae", str(path), "--out", str(out), "--num_heads", "2", "--num_frames", "4",
                 "--image_size", "32"]) == 0
    assert "label space k710 (710 classes" in capsys.readouterr().out
    meta = json.loads((out / "vidjax.json").read_text())
    assert meta["source"]["label_space"] == "k710" and meta["class_names"] == list(kinetics.class_names("k710"))

    # A K400 head made as run_class_finetuning.py makes it from a K710 one (the head rows through the 710 -> 400
    # map): named K400, and its logits are the K710 model's columns through the same map.
    state = dict(state_of(path))
    index = kinetics.label_map("k710", "k400")
    state["head.weight"], state["head.bias"] = state["head.weight"][index], state["head.bias"][index]
    k400 = tmp_path / "k400"
    converted = convert(from_videomae=str(write_torch_zip(tmp_path / "k400.pth", {"model": state})), out=str(k400),
                        **args)
    assert converted.source["label_space"] == "k400" and converted.class_names == list(kinetics.class_names("k400"))
    logits = np.asarray(pretrained.load(k400).forward(io["video"])["logits"])
    np.testing.assert_allclose(logits, io["logits"][:, index], rtol=0, atol=1e-4)

    other = convert_videomae_file(FIXTURES / "videomae_v2_finetune_fc_norm" / "source" / "checkpoint.pth", 2,
                                  None, 4, 32)
    assert other.source["label_space"] is None and other.class_names is None


def test_sizes_default_and_come_from_a_sincos_pos_embed(tmp_path):
    path, args, _ = case("finetune_norm")
    default = convert_videomae_file(path, args["num_heads"])  # the files record no clip size: the official 16 x 224
    assert (default.model_config.num_frames, default.model_config.image_size) == (16, 224)
    from vidjax.models import layers

    state = dict(state_of(path))
    # The token count: frames at the official 224 px (28 x 28 patches of 8 px), else the resolution at 16 frames.
    for tokens, frames, size in ((2 * 28 * 28, 4, 224), (8 * 4 * 4, 16, 32)):
        state["pos_embed"] = layers.sincos_table(tokens, 32)[None].astype(np.float32)
        got = convert_videomae_file(write_torch_zip(tmp_path / "pos.pth", {"model": state}), args["num_heads"])
        assert (got.model_config.num_frames, got.model_config.image_size) == (frames, size)


def test_head_counts_from_the_official_tables():
    assert [_encoder_heads(w, None, "f") for w in (384, 768, 1024, 1280, 1408)] == [6, 12, 16, 16, 16]
    assert [_decoder_heads(w, None, "f") for w in (192, 384, 512, 640)] == [3, 6, 8, 8]
    assert _encoder_heads(32, 4, "f") == 4 and _decoder_heads(16, 2, "f") == 2


def _broken(tmp_path, path, change):
    state = dict(state_of(path))
    change(state)
    return str(write_torch_zip(tmp_path / "broken.pth", {"model": state}))


def test_errors_name_what_is_wrong_and_write_nothing(tmp_path, capsys):
    path, args, _ = case("finetune_fc_norm")
    pre_path, pre_args, _ = case("pretrain_v1")
    dst = tmp_path / "out"
    not_mae = write_torch_zip(tmp_path / "other.pth", {"state_dict": {"backbone.fc.weight": np.zeros((2, 2),
                                                                                                     np.float32)}})
    with pytest.raises(ConversionError, match=r"not an official VideoMAE checkpoint.*'state_dict'.*expected an "
                                              r"official VideoMAE"):
        convert(from_videomae=str(not_mae), out=str(dst))
    with pytest.raises(ConversionError, match=r"width 32, which is no ViT size.*--num_heads"):
        convert(from_videomae=str(path), out=str(dst))
    with pytest.raises(ConversionError, match=r"decoder of width 24.*--decoder_num_heads"):
        convert(from_videomae=str(pre_path), out=str(dst), num_heads=2)
    with pytest.raises(ConversionError, match=r"num_heads=3 does not divide the width 32"):
        convert(from_videomae=str(path), out=str(dst), num_heads=3)
    with pytest.raises(ConversionError, match=r"decoder_num_heads applies to pre-training"):
        convert(from_videomae=str(path), out=str(dst), num_heads=2, decoder_num_heads=2)
    with pytest.raises(ConversionError, match=r"cos_attn"):
        cos = _broken(tmp_path, path, lambda s: s.update({"blocks.0.attn.scale": np.zeros((2, 1, 1), np.float32)}))
        convert(from_videomae=cos, out=str(dst), **args)
    with pytest.raises(ConversionError, match=r"layer-scale"):
        gamma = _broken(tmp_path, path, lambda s: s.update({"blocks.1.gamma_1": np.ones(32, np.float32)}))
        convert(from_videomae=gamma, out=str(dst), **args)
    with pytest.raises(ConversionError, match=r"learned position table"):
        learned = _broken(tmp_path, path, lambda s: s.update({"pos_embed": np.ones((1, 32, 32), np.float32)}))
        convert(from_videomae=learned, out=str(dst), **args)
    with pytest.raises(ConversionError, match=r"blocks.1.mlp.fc2.weight"):
        convert(from_videomae=_broken(tmp_path, path, lambda s: s.pop("blocks.1.mlp.fc2.weight")), out=str(dst),
                **args)
    with pytest.raises(ConversionError, match="--num_heads applies to --from_svt, --from_videomae and --from_vjepa2"):
        convert(from_hf=str(tmp_path), out=str(dst), num_heads=2)
    assert main(["--from_videomae", str(not_mae), "--out", str(dst)]) == 2
    assert "backbone.fc.weight" in capsys.readouterr().err
    assert not dst.exists()


def test_adapts_to_other_clip_sizes(tmp_path):
    path, args, io = case("finetune_fc_norm")
    out = tmp_path / "ckpt"
    convert(from_videomae=str(path), out=str(out), num_heads=2, num_frames=8, image_size=48)
    model = pretrained.load(out)
    assert (model.config.num_frames, model.config.image_size) == (8, 48)
    video = np.random.default_rng(1).standard_normal((1, 8, 48, 48, 3)).astype(np.float32)
    logits = np.asarray(model.forward(video)["logits"])
    assert logits.shape == (1, 5) and np.isfinite(logits).all()
    torch = pytest.importorskip("torch")  # the official model at that size (it recomputes its sin-cos table)
    from vidjax.bench.torch_ref.videomae_v2 import VisionTransformer

    ref = VisionTransformer(img_size=48, patch_size=8, all_frames=8, tubelet_size=2, qkv_bias=True, num_classes=5,
                            embed_dim=32, depth=2, num_heads=2).eval()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in state_of(path).items()})
    with torch.no_grad():
        want = ref(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).numpy()
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_predict_names_k710_outputs_in_k400(tmp_path, capsys):
    path, args, _ = case("k710")
    ckpt = tmp_path / "k710"
    convert(from_videomae=str(path), out=str(ckpt), **args)
    frames = np.random.default_rng(0).integers(0, 256, (50, 40, 56, 3), dtype=np.uint8)
    make_video(tmp_path / "clip.mp4", frames=frames)
    clip = str(tmp_path / "clip.mp4")
    assert predict.main([f"--checkpoint={ckpt}", clip, "--label_space=k400", "--top_k=3", "--json=-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["label_space"] == "k400"
    got = report["videos"][0]["aggregate"]
    model = pretrained.load(ckpt)
    logits = np.asarray(model(model.preprocess(model.read_views(clip))))
    want = _softmax(logits[:, kinetics.label_map("k710", "k400")])[0]
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    names = kinetics.class_names("k400")
    assert [t["label"] for t in got["top_k"]] == [names[i] for i in np.argsort(-want, kind="stable")[:3]]

    assert predict.main([f"--checkpoint={ckpt}", clip, "--top_k=2"]) == 0  # without: K710's own 710 names
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip().rsplit(maxsplit=1)[0] in kinetics.class_names("k710")

    other = tmp_path / "five"
    convert(from_videomae=str(FIXTURES / "videomae_v2_finetune_fc_norm" / "source" / "checkpoint.pth"),
            out=str(other), **args)
    assert predict.main([f"--checkpoint={other}", clip, "--label_space=k400"]) == 2
    assert "no Kinetics label space" in capsys.readouterr().err
