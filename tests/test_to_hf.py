"""Back to transformers (`python -m vidjax.export --to_hf`), tested without torch.

- A checkpoint converted from transformers (every Hugging Face parity fixture's source) and exported again gives the
  original's tensors back exactly (names, shapes, values, read with numpy) with an equivalent config.json, the same
  preprocessing and class names, and the tokenizer's files.
- Round trip: every vidjax model with a transformers class, as a tiny seeded checkpoint (tests/fixtures/parity/
  to_hf_*, made by scripts/parity/to_hf.py with torch and transformers), exports to exactly the folder transformers
  loaded when the fixture was made (config files and every tensor's sha256), and vidjax's outputs on the recorded
  inputs equal transformers' recorded outputs to 1e-4. Where torch and transformers are installed, the live test runs
  transformers itself on fresh exports.
- What transformers computes otherwise is exported with a note saying so (V-JEPA 2's predictor and video processor).
- A model no transformers class computes is refused with one line and exit status 2, as are bad arguments.
"""

import dataclasses
import importlib.util
import json
import pathlib

import numpy as np
import pytest
from flax import nnx
from helpers import seeded_checkpoint, tiered

from vidjax import pretrained
from vidjax.commands import export
from vidjax.commands.convert import convert
from vidjax.convert import hf
from vidjax.convert.common import TensorSource, read_safetensors

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
MAKER = pathlib.Path(__file__).parent.parent / "scripts" / "parity" / "to_hf.py"


def _cases(kind):
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "case.json").is_file()
                  and json.loads((p / "case.json").read_text()).get("kind", "video") in kind)


HF_SOURCES = [c for c in _cases(("video", "captioner", "text", "vjepa2", "videoprism"))
              if (FIXTURES / c / "source" / "config.json").is_file()]
ROUND_TRIP = _cases(("to_hf",))
INPUTS = ("clip", "mask", "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "context_ids",
          "target_ids")


def _maker():
    """scripts/parity/to_hf.py: its cases and `exported_record` (torch is imported only inside its makers)."""
    spec = importlib.util.spec_from_file_location("parity_to_hf", MAKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(src, out, capsys=None):
    rc = export.main(["--to_hf", str(src), "--out", str(out)])
    return rc if capsys is None else (rc, capsys.readouterr())


# ----------------------------------------------------------------------- a converted checkpoint, back exactly

# A vidjax ViViT built without VivitModel's pooler (config.model.pooler off, as the seeded round-trip case) exports
# a VivitModel whose pooler transformers initialises at random (a converted VivitModel keeps its own).
POOLER = ("pooler.dense.weight", "pooler.dense.bias")
# A VideoMAE module's state dict (the .bin source: torch.save(model.state_dict())) names its q/v biases as modules
# do; save_pretrained, and so --to_hf, as transformers keeps them on disk.
STATE_DICT_NAMES = {"attention.query.bias": "attention.q_bias", "attention.value.bias": "attention.v_bias"}
# config.json keys that do not change what an architecture computes: the pre-training decoder of a VideoMAE without
# one, labels of a model without a head, and a VisionEncoderDecoder decoder's own token ids (generate reads the
# top-level and generation_config.json ones).
DECODER_KEYS = {"decoder_hidden_size", "decoder_intermediate_size", "decoder_num_attention_heads",
                "decoder_num_hidden_layers", "norm_pix_loss"}
NOT_APPLICABLE = {
    "VideoMAEForVideoClassification": DECODER_KEYS, "VideoMAEModel": DECODER_KEYS | {"id2label", "label2id"},
    "TimesformerModel": {"id2label", "label2id"}, "VivitModel": {"id2label", "label2id"},
    "decoder": {"bos_token_id", "eos_token_id", "pad_token_id"},
}
TANH_GELU = {"gelu": False, "gelu_python": False, "gelu_new": True, "gelu_fast": True, "gelu_pytorch_tanh": True}
EXTRA_KEYS = {"qkv_bias"}  # VideoMAE's q/v-bias switch under transformers 4's name too


def assert_equivalent_config(original: dict, exported: dict, where: str, architecture: str = "") -> None:
    architecture = architecture or (original.get("architectures") or [""])[0]
    skip = NOT_APPLICABLE.get(architecture, set()) | {"transformers_version"}
    for key, value in original.items():
        if key in skip:
            continue
        assert key in exported, f"{where}: {key} missing"
        if key in ("encoder", "decoder"):
            nested = {"videomae": "VideoMAEModel", "timesformer": "TimesformerModel"}.get(value["model_type"], key)
            assert_equivalent_config(value, exported[key], f"{where}.{key}", nested)
        elif key in ("hidden_act", "activation_function"):
            assert TANH_GELU[exported[key]] == TANH_GELU[value], (where, key, value, exported[key])
        else:
            assert exported[key] == value, (where, key, value, exported[key])
    assert set(exported) - set(original) <= EXTRA_KEYS | skip, (where, set(exported) - set(original))


def test_a_converted_vivit_model_keeps_its_pooler(tmp_path):
    """VivitModel's pooler (dense + tanh on the CLS token) comes over as config.model.pooler: "pooler_output" is
    tanh(W cls + b) of transformers' own last hidden state and tensors (the parity fixture's)."""
    source = FIXTURES / "vivit_model" / "source"
    convert(from_hf=str(source), out=str(tmp_path / "vidjax"))
    model = pretrained.load(tmp_path / "vidjax")
    io = np.load(FIXTURES / "vivit_model" / "io.npz")
    out = model.forward(io["video"])  # the normalised input the reference ran
    hf_tensors = TensorSource.from_hf_dir(source).tensors
    cls = io["last_hidden_state"][:, 0].astype(np.float64)
    want = np.tanh(cls @ hf_tensors["pooler.dense.weight"].T.astype(np.float64) + hf_tensors["pooler.dense.bias"])
    np.testing.assert_allclose(np.asarray(out["last_hidden_state"]), io["last_hidden_state"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["pooler_output"]), want, atol=1e-4)


@pytest.mark.parametrize("case", tiered(HF_SOURCES, keep=(  # the default tier: one model of each family
    "captioner_videomae_gpt2", "gpt2_lm", "timesformer_divided", "videomae_pretrain", "videoprism_video",
    "vivit_model", "vjepa2_model")))
def test_a_converted_checkpoint_gives_its_original_tensors_back(case, tmp_path, capsys):
    source = FIXTURES / case / "source"
    convert(from_hf=str(source), out=str(tmp_path / "vidjax"))
    rc, out = _export(tmp_path / "vidjax", tmp_path / "hf", capsys)
    assert rc == 0, out.err
    original = {}
    state_dict = json.loads((source / "config.json").read_text())["model_type"] == "videomae" and (
        source / "pytorch_model.bin").is_file()
    for name, value in TensorSource.from_hf_dir(source).tensors.items():
        for module_name, saved in STATE_DICT_NAMES.items() if state_dict else ():
            name = name.replace(module_name, saved)
        original[name] = value
    exported = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        assert exported[name].dtype == value.dtype and exported[name].shape == value.shape, name
        assert np.array_equal(exported[name], value), name

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert_equivalent_config(json.loads((source / "config.json").read_text()), config, case)
    # The export reads back as the same vidjax model: config, preprocessing and class names.
    first, again = hf.convert_hf_dir(source), hf.convert_hf_dir(tmp_path / "hf")
    assert again.model_config.to_dict() == first.model_config.to_dict()
    assert again.class_names == first.class_names
    assert again.preprocessing.keys() == first.preprocessing.keys()
    for key, value in first.preprocessing.items():
        np.testing.assert_allclose(again.preprocessing[key], value, rtol=1e-12, err_msg=key)
    for name in hf.TOKENIZER_FILES:
        if (source / name).is_file():
            assert (tmp_path / "hf" / name).read_bytes() == (source / name).read_bytes(), name


# ------------------------------------------------------------------------------- round trip through transformers

def vidjax_outputs(model, io: dict) -> dict:
    """vidjax's outputs on a case's inputs, under the names the fixture records transformers' by."""
    if "input_ids" in io and "clip" not in io:
        return {"logits": model(io["input_ids"], io["attention_mask"])}
    video = model.preprocess(io["clip"])
    if model.model_name == "image_encoder":  # frame by frame: the clip's tokens, and each frame's pooled output
        images = nnx.merge(model.graphdef, model.params).images(video.reshape(-1, *video.shape[2:]))
        return dict(images, **model.forward(video))
    if "input_ids" in io:  # a video-text model (VideoPrism's): embeddings and both logits
        return model.forward(video, io["input_ids"], io["attention_mask"])
    if "decoder_input_ids" in io:
        return model.forward(video, io["decoder_input_ids"], io["decoder_attention_mask"])
    if "context_ids" in io:  # V-JEPA 2's predictor
        return model.forward(video, context_ids=io["context_ids"], target_ids=io["target_ids"])
    return model.forward(video, io.get("mask"))


def assert_outputs_match(model, io: dict, where: str) -> None:
    ours = vidjax_outputs(model, io)
    expected = {k: v for k, v in io.items() if k not in INPUTS and k != "tokenizer_ids"}
    assert expected, f"{where} records no outputs"
    for name, want in expected.items():
        got = np.asarray(ours[name])
        assert got.shape == want.shape, (where, name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"{where}: {name}")
    if "tokenizer_ids" in io:  # transformers' AutoTokenizer on the exported tokenizer encodes as vidjax's does
        assert model.tokenizer.encode(_maker().CAPTIONS[1]) == io["tokenizer_ids"].tolist()


def test_every_model_with_a_transformers_class_has_a_round_trip_case():
    models = {json.loads((FIXTURES / c / "case.json").read_text())["exported"]["config.json"]["architectures"][0]
              for c in ROUND_TRIP}
    assert models == set(hf.AUTO_CLASSES), set(hf.AUTO_CLASSES) ^ models
    assert set(ROUND_TRIP) == {f"to_hf_{name}" for name in _maker().CASES}


@pytest.mark.parametrize("case", tiered(ROUND_TRIP, keep=(  # the default tier: one model of each family
    "to_hf_captioner_videomae", "to_hf_gpt2", "to_hf_timesformer_classification", "to_hf_videomae_pretrain",
    "to_hf_videoprism_video", "to_hf_vivit_model", "to_hf_vjepa2_model")))
def test_round_trip_matches_transformers(case, tmp_path, capsys):
    meta = json.loads((FIXTURES / case / "case.json").read_text())
    checkpoint = seeded_checkpoint(meta, tmp_path / "vidjax")
    rc, out = _export(checkpoint, tmp_path / "hf", capsys)
    assert rc == 0, out.err
    # Exactly the folder the fixture's transformers outputs were recorded from: config files and every tensor.
    assert _maker().exported_record(tmp_path / "hf") == meta["exported"]
    assert_outputs_match(pretrained.load(checkpoint), dict(np.load(FIXTURES / case / "io.npz")), case)


def test_live_transformers_loads_the_exports_without_vidjax(tmp_path):
    """Where torch and transformers are installed: fresh exports of every round-trip case, loaded by transformers in a
    process that cannot import vidjax, give vidjax's outputs to 1e-4 (the fixture test covers CI, which has neither)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    maker = _maker()
    rng = np.random.default_rng(1)
    jobs, loaded = [], {}
    for name, case in maker.CASES.items():
        folder = maker.export_case(case, tmp_path / name)
        np.savez(tmp_path / name / "inputs.npz", **maker.inputs(case, rng))
        jobs.append((folder, tmp_path / name / "inputs.npz", tmp_path / name / "outputs.npz"))
        loaded[name] = pretrained.load(tmp_path / name / "vidjax")
    report = maker.run_transformers(jobs)
    for (folder, inputs_path, outputs_path), name in zip(jobs, maker.CASES, strict=True):
        expected_missing = {"missing_keys": list(POOLER[::-1])} if name == "vivit_model" else {}
        assert report[str(folder)]["load_report"] == expected_missing, (name, report[str(folder)])
        assert (report[str(folder)]["image_processor_max_diff"] or 0) < 1e-5, (name, report[str(folder)])
        assert_outputs_match(loaded[name], {**np.load(inputs_path), **np.load(outputs_path)}, name)


# ---------------------------------------------------------------------------------------- labels and problem type

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    meta = json.loads((FIXTURES / "to_hf_timesformer_classification" / "case.json").read_text())
    return pretrained.load(seeded_checkpoint(meta, tmp_path_factory.mktemp("classifier") / "vidjax"))


@pytest.mark.parametrize("task, names, problem", [
    ("multilabel", ("class_names", ["cut", "pour"]), "multi_label_classification"),
    ("regression", ("target_names", ["valence", "arousal"]), "regression"),
])
def test_multilabel_and_regression_heads_get_their_problem_type(classifier, tmp_path, task, names, problem):
    model = dataclasses.replace(classifier, task=task, **{names[0]: names[1]})
    checkpoint, _ = export.to_hf(model, str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config == checkpoint.config
    assert config["problem_type"] == problem
    assert config["id2label"] == {"0": names[1][0], "1": names[1][1]}
    assert config["label2id"] == {names[1][0]: 0, names[1][1]: 1}


def test_vjepa2_notes_say_what_transformers_computes_otherwise(tmp_path):
    """V-JEPA 2 exports whatever transformers computes differently, with one note each: a model built without its
    predictor (transformers builds one, at random), a predictor on another mask token than transformers' 1, and a
    short side other than the crop x 256 / 224 (18 px for 16) that VJEPA2VideoProcessor always resizes to."""
    base = json.loads((FIXTURES / "to_hf_vjepa2_classification" / "case.json").read_text())
    cases = {
        "no predictor": (dict(predictor=False), 18, "this checkpoint has no predictor (config.model.predictor off); "
                         "VJEPA2ForVideoClassification builds one, which transformers initialises at random"),
        "mask token": (dict(mask_index=0), 18, "transformers' predictor uses mask token 1; this checkpoint's uses 0"),
        "short side": ({}, 16, "resizes a clip's short side to crop_size x 256 / 224 = 18 px whatever "
                               "preprocessor_config.json says; this checkpoint's clips are resized to 16 px"),
        "as transformers computes it": ({}, 18, None),
    }
    for name, (model, short_side, note) in cases.items():
        case = dict(base, model=dict(base["model"], **model), preprocessing=dict(short_side=short_side))
        loaded = pretrained.load(seeded_checkpoint(case, tmp_path / name / "vidjax"))
        checkpoint, _ = export.to_hf(loaded, str(tmp_path / name / "hf"))
        assert len(checkpoint.notes) == (note is not None) and all(note in n for n in checkpoint.notes), (
            name, checkpoint.notes)
        assert any(k.startswith("vjepa2.predictor.") for k in checkpoint.tensors) is (name != "no predictor")


# -------------------------------------------------------------------------------------------------- refusals

TINY = dict(variant="Mu/8", width=16, depth=1, num_heads=2, mlp_dim=32, num_frames=4, image_size=16)
REFUSED = {
    "videomamba": (dict(model_name="videomamba", seed=0, model=dict(variant="Mu/8", width=16, depth=1, num_frames=4,
                                                                    image_size=16, head="none")),
                   "this is a VideoMamba checkpoint; transformers has no class for it"),
    "vivit_model_2": (dict(model_name="vivit", seed=0, model=dict(
        TINY, variant="Mu/8x2", model_type="factorised_encoder", temporal_depth=1, num_classes=2)),
        "ViViT with model_type='factorised_encoder'; transformers has no class for it"),
    "videomae_v2_dual_masking": (dict(model_name="videomae", seed=0, model=dict(
        TINY, head="pretrain", decoder_width=8, decoder_heads=2, decoder_depth=1, decoder_mask_type="run_cell")),
        "VideoMAE V2 pre-training checkpoint with dual masking"),
    "captioner_pooled": (dict(model_name="captioner", seed=0, model=dict(
        encoder_name="timesformer", encoder=dict(TINY, head="none"), visual_tokens="pooled", decoder=dict(
            vocab_size=8, n_positions=8, width=16, depth=1, num_heads=2, add_cross_attention=True))),
        "captioner with a timesformer encoder and visual_tokens='pooled'; transformers has no class for it"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_a_model_without_a_transformers_class_is_refused_in_one_line(name, tmp_path, capsys):
    case, message = REFUSED[name]
    checkpoint = seeded_checkpoint(case, tmp_path / "vidjax")
    rc, out = _export(checkpoint, tmp_path / "hf", capsys)
    assert rc == 2
    assert out.err.startswith(f"error: --to_hf={checkpoint}: ") and out.err.count("\n") == 1, out.err
    assert message in out.err, out.err
    assert not (tmp_path / "hf").exists() and list(tmp_path.iterdir()) == [tmp_path / "vidjax"]


def test_svt_is_refused():
    converted = dataclasses.replace(hf.convert_hf_dir(FIXTURES / "timesformer_model_divided" / "source"),
                                    model_name="svt")
    with pytest.raises(hf.ConversionError, match=r"^this is an SVT \(a TimeSformer with a DINO projection head\) "
                                                 r"checkpoint; transformers has no class for it"):
        hf.to_hf(converted)


def test_bad_arguments_exit_2(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    source = FIXTURES / "to_hf_gpt2"
    for argv, message in [
        (["--to_hf", str(tmp_path / "nothing"), "--out", str(tmp_path / "hf")], f"--to_hf={tmp_path / 'nothing'}: "),
        (["--to_hf", str(source), "--out", str(tmp_path / "hf"), "--platforms=cpu"], "--platforms applies to"),
    ]:
        assert export.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    meta = json.loads((source / "case.json").read_text())
    checkpoint = seeded_checkpoint(meta, tmp_path / "vidjax")
    rc, out = _export(checkpoint, tmp_path / "taken", capsys)
    assert rc == 2 and "already exists and is not empty; give a new folder" in out.err and out.err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["file"]
    with pytest.raises(SystemExit):
        export.main(["--to_hf", str(checkpoint), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x")])


# ------------------------------------------------------------- a checkpoint's whole clip spec, out and back in

# One model of each exporting family (issue 72 fault 2: a VideoPrism model lost its normalisation and frame stride).
SPEC_CASES = ("to_hf_captioner_videomae", "to_hf_image_encoder_clip", "to_hf_timesformer_classification",
              "to_hf_videomae_pretrain", "to_hf_videoprism_clip", "to_hf_videoprism_video", "to_hf_vivit_model",
              "to_hf_vjepa2_model")
CLIP_KEYS = ("num_frames", "image_size", "short_side", "sampling_rate")


@pytest.mark.parametrize("case", tiered(SPEC_CASES, keep=(  # default tier: the fault's family, a ViT, an image tower
    "to_hf_videoprism_clip", "to_hf_videomae_pretrain", "to_hf_image_encoder_clip")))
def test_export_then_conversion_keeps_the_whole_clip_spec_and_the_outputs(case, tmp_path, capsys, caplog):
    """A checkpoint with its own normalisation, short side and frame stride, exported with --to_hf and converted back
    with --from_hf: the same clip spec (frames, stride, size, short side, mean, std), no warning, and the same
    outputs on the same uint8 clips to 1e-5."""
    meta = json.loads((FIXTURES / case / "case.json").read_text())
    if case == "to_hf_videomae_pretrain":  # VideoMAEForPreTraining fixes its decoder norm's epsilon (the export notes)
        meta["model"]["decoder_norm_eps"] = 1e-5
    size = pretrained.load(seeded_checkpoint(meta, tmp_path / "probe")).preprocessing["image_size"]
    meta["preprocessing"] = dict(meta.get("preprocessing", {}), mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7],
                                 short_side=size + 8, sampling_rate=2)
    original = pretrained.load(seeded_checkpoint(meta, tmp_path / "vidjax"))
    assert _export(tmp_path / "vidjax", tmp_path / "hf") == 0
    capsys.readouterr()
    caplog.clear()
    convert(from_hf=str(tmp_path / "hf"), out=str(tmp_path / "back"))
    assert not [r for r in caplog.records if r.levelno >= 30], caplog.text  # no stride assumed
    back = pretrained.load(tmp_path / "back")
    assert {key: original.preprocessing[key] for key in ("short_side", "sampling_rate")} == {
        "short_side": size + 8, "sampling_rate": 2}
    for key in CLIP_KEYS:
        assert back.preprocessing[key] == original.preprocessing[key], key
    for key in ("mean", "std"):
        np.testing.assert_allclose(back.preprocessing[key], meta["preprocessing"][key], rtol=0, atol=1e-7)
    assert back.sampling_rate == original.sampling_rate == 2

    io = {k: v for k, v in np.load(FIXTURES / case / "io.npz").items() if k in INPUTS}
    io["clip"] = np.random.default_rng(0).integers(0, 256, io["clip"].shape, dtype=np.uint8)
    want, got = vidjax_outputs(original, io), vidjax_outputs(back, io)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=0, atol=1e-5, err_msg=name)
