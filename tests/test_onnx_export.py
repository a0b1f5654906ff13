"""ONNX export (`python -m vidjax.export --out=FILE.onnx`, `vidjax.pretrained.onnx_export`): every family's inference
function in ONNX Runtime equals vidjax's at batch 1 and 3 (one file, a dynamic batch), `onnx.checker` passes; the
metadata; weights in external data; the no-jax loader `scripts/onnx_predict.py` gives `python -m vidjax.predict`'s
top-5; bad input is one line and exit status 2, leaving nothing behind."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import tiered
from test_decode import make_video

from vidjax import pretrained
from vidjax.commands import export, predict
from vidjax.commands.convert import convert
from vidjax.models import captioner, get_model
from vidjax.pretrained import onnx_export, pooling, reconstruction
from vidjax.tasks import predictions

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
SCRIPT = pathlib.Path(__file__).parent.parent / "scripts" / "onnx_predict.py"
CLIP = dict(num_frames=4, image_size=32)
VIT = dict(width=32, depth=1, num_heads=2, mlp_dim=64, **CLIP)


def _cfg(name, **overrides):
    cfg = get_model(name).default_config()
    cfg.update(overrides)
    return cfg


def _svt():
    cfg = get_model("svt").default_config()
    cfg.backbone.update(variant="Mu/8", **VIT)
    cfg.update(head_hidden_dim=32, head_bottleneck_dim=16, out_dim=64)
    return cfg


def _captioner(encoder):
    cfg = captioner.default_config(encoder)
    cfg.encoder.update(variant="Mu/8", **VIT)
    cfg.decoder.update(vocab_size=40, n_positions=16, width=16, depth=1, num_heads=2)
    return cfg


_VJEPA2 = dict(variant="Mu/16", predictor_width=24, predictor_depth=1, predictor_heads=2, num_mask_tokens=2,
               num_classes=5, num_pooler_layers=1, **VIT)
_PRISM = dict(variant="Mu/8", width=32, num_heads=2, mlp_dim=64, spatial_depth=1, temporal_depth=1,
              num_auxiliary_layers=1, text_depth=1, num_classes=5, **CLIP)
_MAE = dict(variant="Mu/8", decoder_width=32, decoder_heads=2, decoder_depth=1, **VIT)

# case -> (model name, model config, --output): a tiny model of every family and head, and what it exports.
CASES = {
    "videomae-classification": ("videomae", lambda: _cfg("videomae", head="classification", num_classes=5, **_MAE),
                                "auto"),
    "videomae-pretrain": ("videomae", lambda: _cfg("videomae", head="pretrain", **_MAE), "auto"),
    "videomae-pretrain-encoder": ("videomae", lambda: _cfg("videomae", head="pretrain", **_MAE), "embeddings"),
    "videomae_v2-pretrain": ("videomae", lambda: _cfg("videomae", head="pretrain", decoder_mask_type="run_cell",
                                                      **_MAE), "auto"),
    "timesformer-divided": ("timesformer", lambda: _cfg("timesformer", variant="Mu/8", num_classes=5, **VIT),
                            "auto"),
    "timesformer-joint-cls": ("timesformer", lambda: _cfg("timesformer", variant="Mu/8", num_classes=5,
                                                          attention_type="joint_space_time", **VIT), "embeddings"),
    **{f"vivit-{kind}": ("vivit", lambda kind=kind: _cfg("vivit", variant="Mu/8x2", num_classes=5, model_type=kind,
                                                         temporal_depth=1, **VIT), "auto")
       for kind in ("joint", "factorised_encoder", "factorised_self_attention", "factorised_dot_product")},
    "videomamba": ("videomamba", lambda: _cfg("videomamba", variant="Mu/8", width=32, depth=2, scan_chunk=16,
                                              num_classes=5, **CLIP), "auto"),
    # A checkpoint whose platform choices have no ONNX form exports the portable ones (`onnx_export.PORTABLE`).
    "videomamba-chunked-scan": ("videomamba", lambda: _cfg("videomamba", variant="Mu/8", width=32, depth=1,
                                                           scan_chunk=8, scan="chunked", num_classes=5, **CLIP),
                                "auto"),
    "timesformer-blockwise": ("timesformer", lambda: _cfg("timesformer", variant="Mu/8", num_classes=5,
                                                          attention_impl="blockwise", **VIT), "auto"),
    "svt": ("svt", _svt, "auto"),
    "captioner-encoder": ("captioner", lambda: _captioner("videomae"), "embeddings"),
    "vjepa2-encoder": ("vjepa2", lambda: _cfg("vjepa2", **_VJEPA2), "auto"),
    "vjepa2-classification": ("vjepa2", lambda: _cfg("vjepa2", head="classification", **_VJEPA2), "auto"),
    "videoprism-video": ("videoprism", lambda: _cfg("videoprism", head="video", **_PRISM), "auto"),
    "videoprism-classification": ("videoprism", lambda: _cfg("videoprism", head="classification", **_PRISM),
                                  "auto"),
}


def _randomised(model, seed=0):
    """`model` with noise on every float weight, so that zero-initialised heads and tables give outputs far from 0."""
    leaves, treedef = jax.tree.flatten(model.params)
    rng = np.random.default_rng(seed)
    noisy = [x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else x
             for x in (np.asarray(leaf) for leaf in leaves)]
    return dataclasses.replace(model, params=jax.tree.unflatten(treedef, noisy))


def _reference(model, function, clips, mask):
    """What vidjax computes for the exported function."""
    video = model.preprocess(clips)
    if function == "logits":
        return np.asarray(model(video))
    if function == "reconstruction":
        return np.asarray(model.forward(video, mask)["pred"])
    meta_pool = "video" if pretrained.gives_video_embeds(model) else "mean"
    return np.asarray(pooling.pool_fn(model, meta_pool)(model.model, video))


@pytest.mark.parametrize("case", tiered(CASES, keep=(  # the default tier: one of each kind of output
    "videomae-classification", "videomae-pretrain", "videomae-pretrain-encoder", "videomamba", "captioner-encoder")))
def test_every_family_in_onnx_runtime_equals_vidjax_at_batch_1_and_3(case, tmp_path, capfd):
    name, make_config, output = CASES[case]
    model = _randomised(pretrained.init(name, make_config()))
    if model.has_head and output in ("auto", "logits"):  # logits need what a reader applies to them, from the task
        with pytest.raises(ValueError, match="exports logits: pass scores="):
            onnx_export.export_onnx(model, output=output)
    ir_model, meta = onnx_export.export_onnx(model, output=output, scores=predictions.score_function(model.task))
    path = tmp_path / "model.onnx"
    assert onnx_export.write(str(path), ir_model) == [str(path)]
    onnx.checker.check_model(str(path), full_check=True)

    capfd.readouterr()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "Removing initializer" not in capfd.readouterr().err  # none the graph leaves unread (issue 72 fault 8)
    assert [i.name for i in session.get_inputs()] == (["video", "mask"] if meta["function"] == "reconstruction"
                                                      else ["video"])
    assert session.get_inputs()[0].shape == ["b", 4, 32, 32, 3] and session.get_inputs()[0].type == "tensor(uint8)"
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["vidjax"]) == meta and meta["model_name"] == name

    clips = np.random.default_rng(1).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    feeds = {"video": clips}
    mask = None
    if meta["function"] == "reconstruction":
        masked = meta["num_masked"]
        assert masked == reconstruction.mask_spec(model).num_masked == 28  # the checkpoint's masks: 14 of 16, twice
        mask = np.stack([np.random.default_rng(i).permutation(model.num_tokens) < masked for i in range(3)])
        feeds["mask"] = mask
    want = _reference(model, meta["function"], clips, mask)
    assert np.std(want) > 1e-2, "a degenerate output proves nothing"
    assert list(want.shape[1:]) == meta["output"]["shape"][1:]
    got3 = session.run(None, feeds)[0]
    got1 = session.run(None, {k: v[:1] for k, v in feeds.items()})[0]
    np.testing.assert_allclose(got3, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(got1, want[:1], rtol=0, atol=1e-4)
    expected = {"auto": {"classification": "logits", "pretrain": "reconstruction"}.get(model.task, "embeddings")}
    assert meta["function"] == expected.get(output, output)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_checkpoints")
    for case, out in (("videomae_classification_bin", "classifier"), ("videomae_pretrain", "pretrain"),
                      ("captioner_videomae_gpt2", "captioner"), ("gpt2_lm", "gpt2")):
        convert(from_hf=str(FIXTURES / case / "source"), out=str(folder / out))
    return folder


def test_the_command_writes_a_classifier_with_its_metadata_and_float_input(checkpoints, tmp_path, capsys):
    ckpt = checkpoints / "classifier"
    out = tmp_path / "served" / "model.onnx"
    assert export.main([f"--checkpoint={ckpt}", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"Wrote {out}: videomae logits, uint8 video (b, 4, 32, 32, 3) -> float32 logits (b, 5)")
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no data file, no staging folder left
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    meta = json.loads(props["vidjax"])
    model = pretrained.load(ckpt)
    assert json.loads(props["class_names"]) == meta["class_names"] == model.class_names
    assert props["scores"] == meta["scores"] == "softmax" and meta["format"] == onnx_export.FORMAT
    assert meta["clip"]["num_frames"] == 4 and meta["clip"]["image_size"] == 32
    np.testing.assert_allclose(meta["clip"]["mean"], model.preprocessing["mean"])
    assert meta["input"] == {"name": "video", "shape": ["b", 4, 32, 32, 3], "dtype": "uint8",
                             "layout": "RGB channels-last", "normalised": False}
    clips = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    want = np.asarray(model(model.preprocess(clips)))
    np.testing.assert_allclose(session.run(None, {"video": clips})[0], want, rtol=0, atol=1e-4)

    # --float_input: the normalisation left out, the same logits from normalised float32 video.
    floats = tmp_path / "float.onnx"
    assert export.main([f"--checkpoint={ckpt}", f"--out={floats}", "--float_input"]) == 0
    session = ort.InferenceSession(str(floats), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert json.loads(session.get_modelmeta().custom_metadata_map["vidjax"])["input"]["normalised"] is True
    normalised = np.asarray(model.preprocess(clips), np.float32)
    np.testing.assert_allclose(session.run(None, {"video": normalised})[0], want, rtol=0, atol=1e-4)


def test_weights_in_external_data_load_and_equal(checkpoints, tmp_path, capsys):
    ckpt = checkpoints / "classifier"
    out = tmp_path / "model.onnx"
    assert export.main([f"--checkpoint={ckpt}", f"--out={out}", "--external_data_mb=0"]) == 0
    assert f"and {out}.data" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    proto = onnx.load(str(out), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(dict((e.key, e.value) for e in t.external_data)["location"] == "model.onnx.data"
                            for t in external)
    assert out.stat().st_size < 64 * 1024 < (tmp_path / "model.onnx.data").stat().st_size  # the weights moved out
    onnx.checker.check_model(str(out))
    model = pretrained.load(ckpt)
    clips = np.random.default_rng(2).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(onnx_export.run_session(str(out), {"video": clips}),
                               np.asarray(model(model.preprocess(clips))), rtol=0, atol=1e-4)


RECONSTRUCT = """
import json, runpy, sys
import numpy as np
sys.modules["jax"] = None
sys.modules["vidjax"] = None
script, model, feeds = sys.argv[1:]
loader = runpy.run_path(script)
session, meta = loader["load"](model)
with np.load(feeds) as data:
    try:
        out = loader["reconstruct"](session, meta, data["video"], data["mask"])
        np.save(feeds + ".out.npy", out)
    except ValueError as e:
        print(e)
assert not [m for m in sys.modules if m.startswith(("jax.", "vidjax.", "flax"))], "the loader imported jax"
"""


def test_a_pretraining_checkpoint_exports_its_reconstruction(checkpoints, tmp_path, capfd):
    """The file states the mask it needs (issue 72 fault 8: a mask of 50 where it needs 58 gave a finite output):
    in the Wrote line and its metadata; a row of another count comes out NaN from the file alone, and the loader
    without jax refuses it with one line; ONNX Runtime loads the file without warning of unused initializers."""
    out = tmp_path / "recon.onnx"
    assert export.main([f"--checkpoint={checkpoints / 'pretrain'}", f"--out={out}"]) == 0
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["vidjax"])
    masked = meta["num_masked"]
    assert meta["function"] == "reconstruction" and masked > 0 and meta["class_names"] is None
    model = pretrained.load(checkpoints / "pretrain")
    assert meta["mask"] == {"name": "mask", "shape": ["b", model.num_tokens], "dtype": "bool"}
    assert (f'and "mask" bool (b, tokens) with exactly num_masked={masked} True a row (another count gives NaN)'
            in capfd.readouterr().out)

    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # default logging
    assert "Removing initializer" not in capfd.readouterr().err
    t, s = meta["input"]["shape"][1:3]
    clips = np.random.default_rng(0).integers(0, 256, (2, t, s, s, 3), dtype=np.uint8)
    mask = np.stack([np.random.default_rng(i).permutation(model.num_tokens) < masked for i in range(2)])
    short = mask.copy()
    short[1, np.flatnonzero(short[1])[0]] = False  # one token fewer in the second row
    got = session.run(None, {"video": clips, "mask": short})[0]
    np.testing.assert_allclose(got[0], np.asarray(model.forward(model.preprocess(clips), mask)["pred"])[0],
                               rtol=0, atol=1e-4)
    assert np.isnan(got[1]).all()

    for rows, said in ((mask, None), (short, f"mask row 1 has {masked - 1} masked tokens; this model reconstructs "
                                             f"exactly {masked} a clip (its metadata's num_masked)")):
        feeds = tmp_path / "feeds.npz"
        np.savez(feeds, video=clips, mask=rows)
        result = subprocess.run([sys.executable, "-c", RECONSTRUCT, str(SCRIPT), str(out), str(feeds)],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        if said is None:
            np.testing.assert_allclose(np.load(str(feeds) + ".out.npy"), np.asarray(model.forward(
                model.preprocess(clips), mask)["pred"]), rtol=0, atol=1e-4)
        else:
            assert result.stdout.strip() == said


@pytest.mark.parametrize(("case", "flags", "message"), [
    ("pretrain", ["--output=logits"], "has no classification or regression head; export --output=embeddings or "
                                      "--output=reconstruction"),
    ("classifier", ["--output=reconstruction"], "is not a VideoMAE pre-training checkpoint"),
    ("classifier", ["--pool=cls"], "--pool=cls: this videomae model has no CLS token"),
    ("captioner", [], "its GPT-2 decoder (beam search over its tokenizer's vocabulary) is not exported to ONNX. "
                      "--output=embeddings exports its video encoder"),
    ("classifier", ["--platforms=cpu"], "--platforms applies to the StableHLO export"),
    ("pretrain", ["--pool=mean"], "--pool=mean pools embeddings; --checkpoint="),
    ("pretrain", ["--output=reconstruction", "--pool=tokens"], "exports reconstruction (--output=reconstruction)"),
    ("gpt2", [], "holds a gpt2 text model, which takes no video; give a video model's checkpoint"),
])
def test_what_does_not_export_is_one_line_and_exit_2(checkpoints, tmp_path, capsys, case, flags, message):
    out = tmp_path / "model.onnx"
    if case == "classifier" and flags == ["--pool=cls"]:
        flags = [*flags, "--output=embeddings"]
    assert export.main([f"--checkpoint={checkpoints / case}", f"--out={out}", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_refused_and_kept(checkpoints, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_text("serving")
    assert export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={out}"]) == 2
    assert f"error: --out={out}: {out} exists; remove it or give another file name" in capsys.readouterr().err
    assert out.read_text() == "serving"
    # ONNX flags with the StableHLO file are refused, not ignored.
    assert export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={tmp_path / 'm.vjx.npz'}",
                        "--output=embeddings"]) == 2
    assert "--output apply to ONNX files only" in capsys.readouterr().err


# Runs scripts/onnx_predict.py with jax and vidjax made unimportable: any import of either fails.
NO_JAX = """
import runpy, sys
sys.modules["jax"] = None
sys.modules["vidjax"] = None
script, *args = sys.argv[1:]
sys.argv = [script, *args]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    assert not [m for m in sys.modules if m.startswith(("jax.", "vidjax.", "flax"))], "the loader imported jax"
"""


def test_the_loader_without_jax_gives_predicts_top5(checkpoints, tmp_path, capsys):
    ckpt = checkpoints / "classifier"
    out = tmp_path / "model.onnx"
    assert export.main([f"--checkpoint={ckpt}", f"--out={out}"]) == 0
    videos = []
    for i, (h, w) in enumerate([(48, 64), (72, 40)]):  # landscape and portrait: both short sides resized, cropped
        frames = np.random.default_rng(i).integers(0, 256, (30, h, w, 3), dtype=np.uint8)
        videos.append(str(tmp_path / f"v{i}.mp4"))
        make_video(videos[-1], frames=frames)
    capsys.readouterr()
    result = subprocess.run([sys.executable, "-c", NO_JAX, str(SCRIPT), str(out), *videos, "--json"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    served = [json.loads(line) for line in result.stdout.strip().splitlines()]

    assert predict.main([f"--checkpoint={ckpt}", *videos, "--json=-"]) == 0
    report = json.loads(capsys.readouterr().out)
    for video, row, want in zip(videos, served, report["videos"], strict=True):
        assert row["path"] == video == want["path"]
        top = want["aggregate"]["top_k"]
        assert [r["label"] for r in row["top_k"]] == [t["label"] for t in top]
        np.testing.assert_allclose([r["score"] for r in row["top_k"]], [t["probability"] for t in top], atol=1e-4)


def test_without_the_extra_one_line_names_it(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` now raises ImportError
    assert export.main([f"--checkpoint={checkpoints / 'classifier'}", f"--out={tmp_path / 'm.onnx'}"]) == 2
    assert capsys.readouterr().err == ("error: writing ONNX needs jax2onnx, onnx and onnxruntime: pip install "
                                       "'vidjax[onnx]'.\n")
    assert list(tmp_path.iterdir()) == []
