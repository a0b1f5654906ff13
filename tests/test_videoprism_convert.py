"""Official VideoPrism files (`python -m vidjax.convert --from_videoprism`): parity with the official Flax code, every
array of the file read, and failures that name the array and write nothing.

The fixtures (scripts/parity/videoprism_official.py) are google-deepmind/videoprism's own `FactorizedEncoder` (the
released video encoder) and `FactorizedVideoCLIP` (the LvT video-text model) with random weights, saved in the
released .npz layout (names from the official `utils.tree_flatten_with_names`, stacks scanned), with the outputs the
official model gives on the variables the official `utils.load_checkpoint` reads back from the file. The way back to
transformers is tests/test_to_hf.py's (its VideoPrism round-trip cases); here a converted file's export reads back as
the same parameters.
"""

import dataclasses
import json
import logging
import pathlib

import numpy as np
import pytest
from test_vjepa2_convert import assert_close

from vidjax import pretrained
from vidjax.commands import export
from vidjax.commands.convert import convert, main
from vidjax.convert import file_kind, hf, read
from vidjax.convert.common import ConversionError, TensorSource, read_npz, write_converted
from vidjax.convert.videoprism import _file_names, from_videoprism, position_table, tensors
from vidjax.models import videoprism

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
ENCODER = FIXTURES / "videoprism_official_encoder"
LVT = FIXTURES / "videoprism_official_lvt"
ENCODER_FILE = ENCODER / "source" / "flax_mu_f3r8_repeated.npz"
LVT_FILE = LVT / "source" / "flax_lvt_mu_f3r8_repeated.npz"
ATOL = 1e-4  # max abs difference to the official code, fp32 (test_vjepa2_convert.assert_close's)
STACK = "params/spatial_encoder/transformers_stack/x_layers/"


def assert_same_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_the_video_encoder_matches_the_official_code(tmp_path, capsys, caplog):
    io = dict(np.load(ENCODER / "io.npz"))
    assert json.loads((ENCODER / "case.json").read_text())["kind"] == "videoprism_official"
    with caplog.at_level(logging.WARNING):
        assert main(["--from_videoprism", str(ENCODER_FILE), "--out", str(tmp_path / "encoder")]) == 0
    assert not caplog.records, caplog.text  # every array read
    assert "videoprism (head none" in capsys.readouterr().out
    model = pretrained.load(tmp_path / "encoder")
    cfg = model.config
    assert (model.model_name, cfg.head, cfg.width, cfg.spatial_depth, cfg.temporal_depth, cfg.num_heads,
            cfg.mlp_dim, cfg.num_frames, cfg.image_size, cfg.variant) == (
        "videoprism", "none", 16, 2, 1, 2, 64, 3, 8, "B/4")
    assert (cfg.attn_logit_cap, cfg.ln_eps, cfg.qkv_bias, tuple(cfg.pixel_mean), tuple(cfg.pixel_std)) == (
        50.0, 1e-6, "qkv", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert_close(model.forward(io["video"])["last_hidden_state"], io["last_hidden_state"], "last_hidden_state")
    # Twice the frames and 1.5x the side: the official model interpolates its tables on the fly, vidjax's
    # conversion once (both bilinear).
    convert(from_videoprism=str(ENCODER_FILE), out=str(tmp_path / "resized"), num_frames=6, image_size=12)
    resized = pretrained.load(tmp_path / "resized").forward(io["video_resized"])
    assert_close(resized["last_hidden_state"], io["last_hidden_state_resized"], "last_hidden_state_resized")
    # On to transformers (VideoPrismVisionModel): the export reads back as exactly these parameters.
    export.to_hf(model, str(tmp_path / "hf"))
    assert_same_params(hf.convert_hf_dir(tmp_path / "hf").params, read("videoprism", ENCODER_FILE).params)


def test_the_lvt_model_matches_the_official_code(tmp_path):
    io = dict(np.load(LVT / "io.npz"))
    result = convert(from_videoprism=str(LVT_FILE), out=str(tmp_path / "lvt"))
    assert result.source["layout"] == "video-text (LvT)" and result.source["format"] == "videoprism"
    model = pretrained.load(tmp_path / "lvt")
    cfg = model.config
    assert (cfg.head, cfg.num_auxiliary_layers, cfg.text_depth, cfg.vocab_size, cfg.max_text_length,
            cfg.l2_normalize) == ("clip", 1, 2, 40, 64, True)
    out = model.forward(io["video"], io["input_ids"], io["attention_mask"])
    for name in ("video_embeds", "text_embeds"):
        assert_close(out[name], io[name], name)
    assert_close(out["similarity"], io["video_embeds"] @ io["text_embeds"].T, "similarity")
    # The text tower's table is the official PositionalEmbedding's, not transformers': here that matters.
    table = np.asarray(model.params["text"]["position_table"])
    np.testing.assert_array_equal(table, position_table(64, 16))
    hf_table = videoprism.sinusoid_table(64, 16)
    assert np.abs(table - hf_table).max() > 0.1
    other = dataclasses.replace(result, params=dict(result.params, **{"text/position_table": hf_table}))
    write_converted(other, tmp_path / "hf_table")
    moved = pretrained.load(tmp_path / "hf_table").text_embeddings(io["input_ids"], io["attention_mask"])
    assert np.abs(np.asarray(moved) - io["text_embeds"]).max() > 10 * ATOL
    # The released files keep no temperature: the learned one starts where training starts it.
    np.testing.assert_allclose(result.params["logit_scale"], np.log(1 / cfg.temperature_init), rtol=1e-6)
    # On to transformers (VideoPrismClipModel) and back: the same parameters.
    export.to_hf(model, str(tmp_path / "hf"))
    assert_same_params(hf.convert_hf_dir(tmp_path / "hf").params, result.params)


@pytest.mark.parametrize("path", [ENCODER_FILE, LVT_FILE], ids=["encoder", "lvt"])
def test_every_array_of_the_file_is_read(path):
    """The names the converter's table expects are exactly the file's, shapes included, and reading marks every one
    of them used."""
    arrays = read_npz(path)
    converted = read("videoprism", path)
    expected, stacked = _file_names(tensors(converted.model_config))
    assert expected == {name: value.shape for name, value in arrays.items()}
    assert stacked and all(name.split("/")[-1] not in ("emb_var", "cls_emb") for name in stacked)
    src = TensorSource(arrays, str(path))
    from_videoprism(src)
    assert src.unused() == [] and src.used == set(arrays)
    assert file_kind(path) == "videoprism"


# ------------------------------------------------------------------------------------------------------ errors

def _edited(path: pathlib.Path, drop: str = "", **extra: np.ndarray) -> dict:
    arrays = read_npz(path)
    arrays.pop(drop, None)
    return dict(arrays, **extra)


BROKEN = {
    "an unexpected array": (lambda: _edited(ENCODER_FILE, **{"params/head/linear/kernel": np.zeros((16, 5))}),
                            r"bad.npz has 1 array\(s\) that the official VideoPrism of its shapes has no place for: "
                            r"'params/head/linear/kernel'"),
    "a missing array": (lambda: _edited(ENCODER_FILE, drop=f"{STACK}ff_layer/ffn_layer2/linear/bias"),
                        r"bad.npz is missing 1 array\(s\) that the model its other arrays describe has: "
                        r"'params/spatial_encoder/transformers_stack/x_layers/ff_layer/ffn_layer2/linear/bias' "
                        r"\(shape \(2, 16\)\)"),
    "a missing size array": (lambda: _edited(ENCODER_FILE, drop=f"{STACK}self_attention/query/w"),
                             r"bad.npz is missing array 'params/spatial_encoder/transformers_stack/x_layers/"
                             r"self_attention/query/w' \(expected shape \(layers, 16, heads, head_dim\)\)"),
    "a layer too few": (lambda: _edited(ENCODER_FILE, **{f"{STACK}layer_norm/bias": np.zeros((1, 16))}),
                        r"Array 'params/spatial_encoder/transformers_stack/x_layers/layer_norm/bias' in .*bad.npz "
                        r"has shape \(1, 16\), but the model its other arrays describe expects \(2, 16\)"),
    "an unrolled (scan=False) file": (
        lambda: {k.replace("x_layers/", "x_layers_0/"): v for k, v in read_npz(ENCODER_FILE).items()},
        r"bad.npz is missing array 'params/spatial_encoder/transformers_stack/x_layers/self_attention/query/w'"),
    "text MLP of another width": (
        lambda: _edited(LVT_FILE, **{"params/text_encoder/unimodal_transformer/x_layers/ff_layer/ffn_layer1/linear/"
                                     "kernel": np.zeros((2, 16, 32), np.float32)}),
        r"the text tower's MLP width is 32 and the video encoder's MLP width 64; vidjax's VideoPrism has one mlp_dim"),
    "no patch projection": (lambda: {"params/other/kernel": np.zeros((2, 2), np.float32)},
                            r"bad.npz is not an official VideoPrism checkpoint: it has no params/patch_projection/"
                            r"linear/kernel .*\['params/other/kernel'\]"),
    "a non-finite weight": (lambda: _edited(ENCODER_FILE, **{"params/spatial_ln/scale": np.full(16, np.nan)}),
                            r"bad.npz has non-finite weights \(NaN or infinity\) in 1 of .* params/spatial_ln/scale"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_files_are_named_errors_that_write_nothing(case, tmp_path):
    make, message = BROKEN[case]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **make())
    with pytest.raises(ConversionError, match=message):
        convert(from_videoprism=str(bad), out=str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]  # no output, no temporary directory


def test_damaged_files_and_other_families_are_one_line_each(tmp_path, capsys):
    """A cut-short .npz, a VideoPrism file given to another converter, another family's file given to this one: one
    line each, exit status 2, nothing written; `pretrained.load` of the file names the command that converts it."""
    raw = LVT_FILE.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:len(raw) // 2])
    vjepa2 = FIXTURES / "vjepa2_official_pretrain" / "source" / "checkpoint.pt"
    for argv, message in [
        (["--from_videoprism", str(tmp_path / "cut.npz")], f"{tmp_path / 'cut.npz'} is cut short or damaged: it is "
                                                           f"no readable .npz (zip) archive"),
        (["--from_videomae", str(ENCODER_FILE)], f"{ENCODER_FILE} is a VideoPrism checkpoint, not a VideoMAE one; "
                                                 f"convert it with --from_videoprism."),
        (["--from_videoprism", str(vjepa2)], f"{vjepa2} is a V-JEPA 2 checkpoint, not a VideoPrism one; convert it "
                                             f"with --from_vjepa2."),
        (["--from_hf", str(LVT_FILE)], f"{LVT_FILE} is a VideoPrism checkpoint file; convert it with "
                                       f"--from_videoprism {LVT_FILE}."),
    ]:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match=r"convert it once with `python -m vidjax.convert --from_videoprism "):
        pretrained.load(ENCODER_FILE)
