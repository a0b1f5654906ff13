"""Official V-JEPA 2 files (`python -m vidjax.convert --from_vjepa2`): parity with the official model code, the choice
of encoder, the file layouts, head counts and clip, and failures that write nothing.

The fixture (scripts/parity/vjepa2_official.py) is facebookresearch/vjepa2's own `VisionTransformer` and
`vit_predictor` with random weights, saved as its app/vjepa/train.py saves a pre-training checkpoint (target encoder,
online encoder, predictor, optimizer, under `module.backbone.`), with the official outputs. Other layouts and broken
files are written here without torch (tests/test_svt_convert.py's torch zip writer). The way back to transformers is
tests/test_to_hf.py's (the V-JEPA 2 rows of its tables); Hub names are tests/test_hub.py's.
"""

import json
import logging
import pathlib

import numpy as np
import pytest
from test_svt_convert import write_torch_zip

from vidjax import pretrained
from vidjax.commands import export
from vidjax.commands.convert import convert, main
from vidjax.convert import file_kind, hf, read
from vidjax.convert.common import ConversionError, head_count, read_torch_zip
from vidjax.convert.vjepa2 import ENCODER_HEADS, PREDICTOR_HEADS, convert_vjepa2_file

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
CASE = FIXTURES / "vjepa2_official_pretrain"
FILE = CASE / "source" / "checkpoint.pt"
META = json.loads((CASE / "case.json").read_text())
IO = dict(np.load(CASE / "io.npz"))
HEADS = dict(num_heads=META["num_heads"], predictor_num_heads=META["predictor_num_heads"])
CLIP = dict(num_frames=4, image_size=16)  # the fixture's clip (the files record none)
ATOL = 1e-4  # max abs difference to the official code, fp32
WRAP = "module.backbone."


def assert_close(got, want, name):
    got = np.asarray(got)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=name)


@pytest.fixture(scope="module")
def reference():
    """The fixture converted in memory: the target encoder and the predictor."""
    return convert_vjepa2_file(FILE, **HEADS, **CLIP)


def test_encoder_and_predictor_match_the_official_code(tmp_path):
    result = convert(from_vjepa2=str(FILE), out=str(tmp_path / "ckpt"), **HEADS, **CLIP)
    assert result.source["layout"] == "pre-training checkpoint (target_encoder)" and file_kind(FILE) == "vjepa2"
    model = pretrained.load(tmp_path / "ckpt")
    cfg = model.config
    assert (model.model_name, cfg.head, cfg.predictor, cfg.qkv_bias) == ("vjepa2", "none", True, "qkv")
    assert cfg.ln_eps == 1e-6
    assert (cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.tubelet_size) == (24, 1, 2, 48, 2)
    assert (cfg.predictor_width, cfg.predictor_depth, cfg.predictor_heads, cfg.predictor_mlp_dim,
            cfg.num_mask_tokens, cfg.mask_index) == (14, 2, 1, 56, 3, 1)
    out = model.forward(IO["video"], context_ids=IO["context_ids"], target_ids=IO["target_ids"])
    assert_close(out["last_hidden_state"], IO["last_hidden_state"], "last_hidden_state")
    assert_close(out["predictor_output"], IO["predictor_output"], "predictor_output")
    # The two clips one after the other, twice the clip converted for: the rotary positions extend.
    long = pretrained.load(tmp_path / "ckpt", num_frames=8).forward(np.concatenate(list(IO["video"]))[None])
    assert_close(long["last_hidden_state"], IO["last_hidden_state_long"], "last_hidden_state_long")
    # On to transformers: the export reads back as exactly these parameters.
    export.to_hf(model, str(tmp_path / "hf"))
    again = hf.convert_hf_dir(tmp_path / "hf")
    assert again.model_config.to_dict() == dict(result.model_config.to_dict(), variant="L/4")
    assert again.params.keys() == result.params.keys()
    for key, value in result.params.items():
        np.testing.assert_array_equal(again.params[key], value, err_msg=key)


def test_checkpoint_key_picks_the_online_encoder(tmp_path, reference, capsys):
    assert main(["--from_vjepa2", str(FILE), "--out", str(tmp_path / "online"), "--checkpoint_key=encoder",
                 "--num_heads=2", "--predictor_num_heads=1", "--num_frames=4", "--image_size=16"]) == 0
    assert "layout: pre-training checkpoint (encoder)" in capsys.readouterr().out
    assert_close(pretrained.load(tmp_path / "online")(IO["video"]), IO["last_hidden_state_encoder"],
                 "last_hidden_state_encoder")
    asked = convert_vjepa2_file(FILE, **HEADS, **CLIP, checkpoint_key="target_encoder")  # the default, by name
    assert asked.source["layout"] == reference.source["layout"]
    for key, value in reference.params.items():
        np.testing.assert_array_equal(asked.params[key], value, err_msg=key)


def test_the_clip_it_is_read_at():
    """No clip in the file: the official K400 evaluation's, 16 frames 4 apart at 256 px after a 292 px short side,
    or the sizes asked for, the short side following the crop."""
    default = read("vjepa2", FILE, **HEADS)
    assert default.preprocessing == dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], num_frames=16,
                                         image_size=256, short_side=292, sampling_rate=4)
    assert (default.model_config.num_frames, default.model_config.image_size) == (16, 256)
    big = read("vjepa2", FILE, **HEADS, num_frames=64, image_size=384)
    assert (big.preprocessing["num_frames"], big.preprocessing["image_size"], big.preprocessing["short_side"]) == (
        64, 384, 438)


def test_official_head_counts():
    assert [head_count(w, None, ENCODER_HEADS, "f") for w in (1024, 1280, 1408)] == [16, 16, 22]  # L, H, g
    assert head_count(384, None, PREDICTOR_HEADS, "f", flag="predictor_num_heads", part="predictor") == 12


# ----------------------------------------------------------------------------------------------------- layouts

def _state(entry: str = "target_encoder") -> dict:
    return read_torch_zip(FILE)[entry]


def _encoder_params(converted) -> dict:
    return {k: v for k, v in converted.params.items() if k.startswith("encoder/")}


def test_file_layouts(tmp_path, reference, caplog):
    checkpoint = read_torch_zip(FILE)
    bare = _state()
    unwrapped = {k.removeprefix(WRAP): v for k, v in bare.items()}
    tables = dict(unwrapped, pos_embed=np.zeros((1, 32, 24), np.float32))  # a sin-cos table the file may keep
    encoder_only = {"encoder": checkpoint["encoder"], "predictor": checkpoint["predictor"], "epoch": 3}
    action = {f"{WRAP}{n}": np.ones((4, 24), np.float32) for n in ("action_encoder.weight", "state_encoder.weight")}
    action_conditioned = dict(checkpoint, predictor=dict(action, **{f"{WRAP}predictor_embed.weight": np.ones(
        (14, 24), np.float32)}))
    expected_encoder = _encoder_params(reference)
    online = _encoder_params(convert_vjepa2_file(FILE, **HEADS, **CLIP, checkpoint_key="encoder"))
    pretraining = "pre-training checkpoint"
    cases = {"bare": (bare, expected_encoder, "state dict"), "unwrapped": (unwrapped, expected_encoder, "state dict"),
             "position table": (tables, expected_encoder, "state dict"),
             "encoder only": (encoder_only, online, f"{pretraining} (encoder: the file has no target_encoder)"),
             "action-conditioned": (action_conditioned, expected_encoder, f"{pretraining} (target_encoder)")}
    for name, (obj, want, layout) in cases.items():
        heads = HEADS if name == "encoder only" else dict(num_heads=HEADS["num_heads"])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = convert_vjepa2_file(write_torch_zip(tmp_path / f"{name}.pt", obj), **heads, **CLIP)
        assert not caplog.records, (name, caplog.text)  # every tensor read or deliberately left out
        assert got.source["layout"] == layout, name
        assert got.model_config.predictor is (name == "encoder only"), name
        for key, value in want.items():
            np.testing.assert_array_equal(got.params[key], value, err_msg=f"{name}: {key}")
    assert got.source["not_converted"] == {
        "what": "V-JEPA 2-AC's action-conditioned predictor, which vidjax does not implement",
        "tensors": [f"predictor.{n}" for n in ("action_encoder.weight", "predictor_embed.weight",
                                                "state_encoder.weight")]}


# ------------------------------------------------------------------------------------------------------ errors

def _without(name: str, entry: str = "target_encoder") -> dict:
    checkpoint = read_torch_zip(FILE)
    checkpoint[entry] = {k: v for k, v in checkpoint[entry].items() if k != WRAP + name}
    return checkpoint


def _with(name: str, value: np.ndarray, entry: str = "target_encoder") -> dict:
    checkpoint = read_torch_zip(FILE)
    checkpoint[entry][WRAP + name] = value
    return checkpoint


BROKEN = {
    "no head count": (lambda: read_torch_zip(FILE), {}, r"bad.pt has width 24, which is no ViT size .* pass "
                                                       r"--num_heads \(num_heads= in Python\)"),
    "no predictor head count": (lambda: read_torch_zip(FILE), dict(num_heads=2),
                                r"bad.pt has a predictor of width 14, which no official builder uses \(384 -> 12 "
                                r"heads\), and the number of predictor heads .* pass --predictor_num_heads"),
    "heads that do not divide": (lambda: read_torch_zip(FILE), dict(HEADS, num_heads=5),
                                 r"num_heads=5 does not divide the width 24 of .*bad.pt"),
    "missing tensor": (lambda: _without("blocks.0.mlp.fc2.weight"), HEADS,
                       r"bad.pt is missing tensor 'target_encoder.blocks.0.mlp.fc2.weight' \(expected shape "
                       r"\(24, 48\)\)"),
    "missing mask tokens": (lambda: _without("mask_tokens.1", "predictor"), HEADS,
                            r"expected the predictor's mask_tokens.0 .. mask_tokens.K-1; found mask_tokens \[0, 2\]"),
    "SwiGLU": (lambda: _with("blocks.0.mlp.fc3.weight", np.zeros((24, 32), np.float32)), HEADS,
               r"encoder has a SwiGLU MLP \(target_encoder.blocks.0.mlp.fc3: use_silu\)"),
    "no target encoder to pick": (lambda: {k: v for k, v in read_torch_zip(FILE).items() if k != "target_encoder"},
                                  dict(HEADS, checkpoint_key="target_encoder"),
                                  r"bad.pt has no 'target_encoder' state dict .*--checkpoint_key=encoder converts"),
    "nothing to pick from": (lambda: _state(), dict(num_heads=2, checkpoint_key="encoder"),
                             r"bad.pt is a bare state dict, with no target_encoder or encoder entries"),
    "predictor heads without a predictor": (lambda: _state(), HEADS,
                                            r"predictor_num_heads applies to a checkpoint with V-JEPA 2's predictor; "
                                            r".*bad.pt has none"),
    "no encoder in it": (lambda: {"encoder": {"head.weight": np.zeros((2, 2), np.float32)}}, HEADS,
                         r"bad.pt is not an official V-JEPA 2 checkpoint: it has no patch_embed.proj.weight; its "
                         r"'encoder' entry has \['head.weight'\]"),
    "another family's file": (lambda: read_torch_zip(FIXTURES / "videomae_v2_k710/source/checkpoint.pth"), HEADS,
                              r"bad.pt is a VideoMAE checkpoint, not a V-JEPA 2 one; convert it with --from_videomae"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_checkpoints_are_named_errors_that_write_nothing(case, tmp_path):
    make, options, message = BROKEN[case]
    bad = write_torch_zip(tmp_path / "bad.pt", make())
    with pytest.raises(ConversionError, match=message):
        convert(from_vjepa2=str(bad), out=str(tmp_path / "out"), **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]  # no output, no temporary directory


def test_the_command_names_the_flag_in_one_line(tmp_path, capsys):
    """A V-JEPA 2 file given to another converter, the flags of --from_vjepa2 given to another, and a V-JEPA 2 file
    where a checkpoint folder is expected: one line each, exit status 2, nothing written."""
    for argv, message in [
        (["--from_videomae", str(FILE)], f"{FILE} is a V-JEPA 2 checkpoint, not a VideoMAE one; convert it with "
                                         f"--from_vjepa2."),
        (["--from_hf", str(CASE / "source")], "--predictor_num_heads applies to --from_vjepa2 only."),
        (["--from_svt", str(FILE), "--checkpoint_key=encoder"], "--checkpoint_key applies to --from_vjepa2 only."),
    ]:
        extra = ["--predictor_num_heads=1"] if argv[0] == "--from_hf" else []
        assert main([*argv, *extra, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {message}\n", err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match=r"convert it once with `python -m vidjax.convert --from_vjepa2 "):
        pretrained.load(FILE)
