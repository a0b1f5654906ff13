"""vidjax.predict on a captioner checkpoint: one caption per video or per window, as `PretrainedCaptioner.caption`
writes it, in text and JSON, and the captioner's refusals (several views, a checkpoint without its tokenizer).

The checkpoint is built here: a tiny VideoMAE + GPT-2 captioner with random weights (drawn wider than the training
init, so that different clips get different captions) and a word-level tokenizer, written as `python -m
vidjax.convert` writes a conversion (vidjax.json, params/, tokenizer/).
"""

import json

import numpy as np
import pytest
from flax import nnx
from test_decode import make_video

from vidjax import pretrained
from vidjax.commands import predict
from vidjax.convert import common
from vidjax.convert.hf import TOKENIZER_DIR
from vidjax.models import captioner

tokenizer_lib = pytest.importorskip("vidjax.tokenizer")  # needs the optional `tokenizers` library

CAPTIONS = ["a person waves a hand", "a dog runs across the grass", "someone is cooking food in a kitchen",
            "two people play tennis", "a car drives down the street at night"]
WINDOWS = [(0.0, 0.8), (0.5, 1.3), (1.0, 1.8)]  # --window=0.8 --stride=0.5 over a 2 s video
DEFAULTS = dict(max_new_tokens=30, num_beams=3, length_penalty=1.0)  # predict's documented decoding


def write_captioner(dst, tokenizer_dir=None):
    """A converted captioner checkpoint at `dst`: 4 frames of 32 px, 24-wide encoder, 16-wide decoder, one block
    each; with `tokenizer_dir`'s files as DST/tokenizer/ when given."""
    tokenizer = tokenizer_lib.CaptionTokenizer.build_word_level(CAPTIONS)
    cfg = captioner.default_config("videomae")
    cfg.encoder.update(dict(variant="Ti/16", width=24, depth=1, num_heads=2, mlp_dim=32, num_frames=4,
                            image_size=32, pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3))
    cfg.decoder.update(dict(vocab_size=tokenizer.vocab_size, n_positions=32, width=16, depth=1, num_heads=2,
                            bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                            pad_token_id=tokenizer.pad_id))
    with nnx.use_eager_sharding(False):
        model = captioner.Model(cfg, rngs=nnx.Rngs(0))
    # GPT-2's 0.02 init makes the decoder all but ignore the video: every clip would get the same caption.
    rng = np.random.default_rng(0)
    params = {key: rng.normal(0.0, 0.3, value.shape).astype(value.dtype) if value.ndim >= 2 else np.asarray(value)
              for key, value in common.flatten_params(nnx.to_pure_dict(nnx.state(model))).items()}
    files = {}
    if tokenizer_dir is not None:
        tokenizer.save(tokenizer_dir)
        files = {f"{TOKENIZER_DIR}/{p.name}": str(p) for p in tokenizer_dir.iterdir()}
    preprocessing = dict(mean=[0.5] * 3, std=[0.25] * 3, num_frames=4, image_size=32, sampling_rate=2)
    common.write_converted(common.Converted("captioner", cfg, params, preprocessing, files=files), dst)
    return str(dst)


def make_scenes(path, seed):
    """A 2 s (25 fps) video of five 0.4 s scenes, each a noisy plain colour: windows see different things."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 256, (5, 3)), 10, axis=0)[:, None, None, :]
    frames = np.broadcast_to(frames, (50, 40, 56, 3)) + rng.integers(-20, 20, (50, 40, 56, 3))
    make_video(path, frames=np.clip(frames, 0, 255).astype(np.uint8))
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captioner")
    return write_captioner(folder / "ckpt", folder / "tokenizer")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("caption_videos")
    bad = folder / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return {"a": make_scenes(folder / "a.mp4", 0), "b": make_scenes(folder / "b.mp4", 1), "bad": str(bad)}


def expected_caption(model, path, start_s=None, end_s=None, **decoding):
    """`PretrainedCaptioner.caption` of the centre clip of [start_s, end_s) of a video on its own, decoded as
    `decoding` says (predict's defaults unless given)."""
    views = model.read_views(path, start_s=start_s, end_s=end_s)
    assert views.shape == (1, 4, 32, 32, 3)
    return model.caption(model.preprocess(views), **{**DEFAULTS, **decoding})[0]


def blocks(text):
    """predict's text output -> {video path: [its indented lines, unindented]}."""
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("  "):
            current.append(line[2:])
        else:
            current = out.setdefault(line, [])
    return out


def test_prints_the_caption_of_each_video(checkpoint, videos, capsys):
    assert predict.main([f"--checkpoint={checkpoint}", videos["a"], videos["b"]]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    printed = blocks(captured.out)
    assert list(printed) == [videos["a"], videos["b"]]
    model = pretrained.load(checkpoint)
    expected = {path: expected_caption(model, path) for path in (videos["a"], videos["b"])}
    assert all(expected.values()) and expected[videos["a"]] != expected[videos["b"]]
    for path, lines in printed.items():
        assert lines == [f"caption: {expected[path]}"]


def test_windows_one_caption_line_each_whatever_the_batch(checkpoint, videos, tmp_path, capsys):
    outputs, reports = [], []
    for batch_size in (8, 2):  # three windows in one padded batch of 4, or in batches of 2 and 1
        out = tmp_path / f"windows_{batch_size}.json"
        assert predict.main([f"--checkpoint={checkpoint}", videos["a"], "--window=0.8", "--stride=0.5",
                             f"--batch_size={batch_size}", f"--json={out}"]) == 0
        outputs.append(blocks(capsys.readouterr().out))
        reports.append(json.loads(out.read_text()))
    model = pretrained.load(checkpoint)
    expected = [expected_caption(model, videos["a"], start, end) for start, end in WINDOWS]
    assert len(set(expected)) > 1  # the windows do differ, so a caption in the wrong place would show
    lines = [f"window {start:.2f}-{end:.2f} s: {text}" for (start, end), text in zip(WINDOWS, expected, strict=True)]
    assert outputs == [{videos["a"]: lines}] * 2  # one line per window and no video-level caption
    for report in reports:
        assert (report["task"], report["window_s"], report["stride_s"]) == ("captioning", 0.8, 0.5)
        (entry,) = report["videos"]
        assert "caption" not in entry and entry["error"] is None
        assert entry["windows"] == [{"start_s": start, "end_s": end, "caption": text}
                                    for (start, end), text in zip(WINDOWS, expected, strict=True)]


def test_json_on_stdout_with_decoding_flags(checkpoint, videos, capsys):
    assert predict.main([f"--checkpoint={checkpoint}", videos["b"], "--json=-", "--num_beams=2",
                         "--max_new_tokens=8", "--length_penalty=0.5"]) == 0
    report = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    model = pretrained.load(checkpoint)
    expected = expected_caption(model, videos["b"], max_new_tokens=8, num_beams=2, length_penalty=0.5)
    assert report["task"] == "captioning" and report["model_name"] == "captioner"
    assert (report["num_beams"], report["max_new_tokens"], report["length_penalty"]) == (2, 8, 0.5)
    assert report["videos"] == [{"path": videos["b"], "error": None, "caption": expected}]
    assert len(expected.split()) <= 8


def test_a_corrupt_video_among_good_ones(checkpoint, videos, capsys):
    code = predict.main([f"--checkpoint={checkpoint}", videos["bad"], videos["a"]])
    captured = capsys.readouterr()
    assert code == 1
    model = pretrained.load(checkpoint)
    assert blocks(captured.out) == {videos["a"]: [f"caption: {expected_caption(model, videos['a'])}"]}
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and videos["bad"] in errors[0] and "cannot" in errors[0]
    assert "1 of 2 videos failed to decode" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("flag", ["--num_clips=2", "--num_crops=3"])
def test_several_views_are_refused(checkpoint, videos, flag, capsys):
    assert predict.main([f"--checkpoint={checkpoint}", videos["a"], flag]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: {flag}: --checkpoint={checkpoint} is a captioner") and "--window" in line


def test_more_tokens_than_the_decoder_has_positions(checkpoint, videos, capsys):
    assert predict.main([f"--checkpoint={checkpoint}", videos["a"], "--max_new_tokens=40"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--max_new_tokens=40" in line and "32 positions" in line and "--max_new_tokens=31 or less" in line


def test_a_captioner_without_its_tokenizer_is_refused(tmp_path, videos, capsys):
    bare = write_captioner(tmp_path / "bare")
    # The corrupt video would add its own error line had any video been decoded.
    assert predict.main([f"--checkpoint={bare}", videos["bad"], videos["a"]]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: --checkpoint={bare}: ") and "has no tokenizer" in line
    assert "tokenizer.save_pretrained" in line
