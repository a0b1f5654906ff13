"""Golden-output parity: every fixture written by scripts/make_parity_fixtures.py converts and matches its reference.

Each case holds a random-weight reference model (Hugging Face save_pretrained directory or an official VideoMamba
or VideoMAE / V2 file), an input video (and masks) and the reference's fp32 outputs. The conversion and the vidjax
forward pass must agree with them to 1e-4 (max abs difference) on every stored output: logits, last hidden state,
pre-training loss and pred.
"""

import json
import pathlib

import numpy as np
import pytest

from vidjax import pretrained
from vidjax.commands.convert import convert

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"


def _is_video_case(case: pathlib.Path) -> bool:
    """Video models' cases; text cases ("kind": "text", GPT-2) are checked by tests/test_gpt2.py, V-JEPA 2's ("kind":
    "vjepa2" and "vjepa2_official", whose inputs include token indices) by tests/test_vjepa2.py and
    tests/test_vjepa2_convert.py, VideoPrism's video-text model ("kind": "videoprism", token ids among its inputs) by
    tests/test_videoprism.py."""
    meta = case / "case.json"
    return meta.is_file() and json.loads(meta.read_text()).get("kind", "video") == "video"


CASES = sorted(p.name for p in FIXTURES.iterdir() if _is_video_case(p))
INPUTS = ("video", "mask", "decoder_mask")


def convert_case(case: pathlib.Path, out: pathlib.Path):
    meta = json.loads((case / "case.json").read_text())
    if meta["convert"] == "hf":
        return convert(from_hf=str(case / "source"), out=str(out))
    if meta["convert"] == "videomae":  # official VideoMAE / V2 files record no frames, resolution or head count
        return convert(from_videomae=str(case / "source" / "checkpoint.pth"), out=str(out),
                       **meta.get("convert_args", {}))
    return convert(from_videomamba=str(case / "source" / "checkpoint.pth"), out=str(out))


def test_every_model_has_fixtures():
    for model in ("videomae", "timesformer", "vivit", "videomamba", "videomae_v2", "videoprism"):
        assert any(c.startswith(f"{model}_") for c in CASES), f"no parity fixture for {model}"


@pytest.mark.parametrize("case", CASES)
def test_converted_outputs_match_reference(case, tmp_path):
    convert_case(FIXTURES / case, tmp_path / "converted")
    model = pretrained.load(tmp_path / "converted")
    io = dict(np.load(FIXTURES / case / "io.npz"))
    outputs = model.forward(io["video"], io.get("mask"), io.get("decoder_mask"))
    expected = {k: v for k, v in io.items() if k not in INPUTS}
    assert expected, f"{case} stores no reference outputs"
    for name, want in expected.items():
        got = np.asarray(outputs[name])
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"{case}: {name}")
