"""Round-trip fixtures for `python -m vidjax.export --to_hf`: tiny seeded vidjax models, exported, run by transformers.

One case per vidjax model with a transformers class (VideoMAE pre-training / classification / bare encoder,
TimeSformer, ViViT and V-JEPA 2 with and without a head, the VideoMAE + GPT-2 and TimeSformer + GPT-2 captioners,
GPT-2, VideoPrism's vision model, video model, classifier and video-text model, the CLIP and SigLIP vision towers).
For each, `seeded_checkpoint` (tests/helpers.py) builds the vidjax checkpoint case.json describes, `python -m
vidjax.export --to_hf` writes it as a save_pretrained folder, and a child process that cannot import vidjax loads
that folder with transformers' Auto class (`vidjax.convert.hf.AUTO_CLASSES`), normalises a uint8 clip as the
exported preprocessor_config.json says (and checks that `AutoImageProcessor` does the same where the clip needs no
resize; a VideoPrism export's video processor rescales to [0, 1] and normalises with the checkpoint's statistics,
(0, 1) for these) and records its outputs. transformers' VideoPrism keeps the pooler's query axis in its pooled outputs
((B, 1, D) video embeddings, (B, 1, classes) logits); they are recorded without it, as vidjax gives them. Written
to out_dir/to_hf_<case>/:
  case.json  "kind": "to_hf", the model, seed, class names (and captions for a tokenizer), the transformers class,
             its load report and the image processor's difference from that normalisation, and "exported": the
             config files as written and every tensor's shape and sha256
  io.npz     the inputs (clip uint8 channels-last, masks, token ids, V-JEPA 2's context and target token indices) and
             transformers' outputs under vidjax's names (V-JEPA 2's predictor_output for those indices; VideoPrism's
             video_embeds, text_embeds and both logits)
tests/test_to_hf.py re-exports the same seeded model, checks that the export is exactly what was loaded here, and that
vidjax's outputs equal the recorded ones to 1e-4. Run through scripts/make_parity_fixtures.py (needs torch and
transformers); `run_transformers` is also what the live test runs where they are installed.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]

VIDEO = dict(num_frames=4, image_size=16)  # tubelet 2 x patch 8: 2 x 2 x 2 tokens
VIT = dict(variant="Mu/8", width=16, depth=1, num_heads=2, mlp_dim=32, **VIDEO)
GPT2 = dict(vocab_size=32, n_positions=16, width=16, depth=1, num_heads=2, add_cross_attention=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
# V-JEPA 2's predictor: heads of 6, every feature rotating (the encoder's heads of 8 leave 2 of them unturned).
VJEPA2_PREDICTOR = dict(predictor_width=12, predictor_depth=1, predictor_heads=2, predictor_mlp_dim=24,
                        num_mask_tokens=2)
# VideoPrism: patches of 8 (2 x 2 per frame) over the 4 frames, one spatial, temporal and auxiliary block each.
VIDEOPRISM = dict(variant="Mu/8", width=16, spatial_depth=1, temporal_depth=1, num_heads=2, mlp_dim=32,
                  num_auxiliary_layers=1, **VIDEO)
# The image encoders: patches of 8 (2 x 2 a frame), each of the 4 frames encoded alone.
IMAGE = dict(variant="Mu/8", width=16, depth=1, num_heads=2, mlp_dim=32, **VIDEO)
CAPTIONS = ["a person opens a door", "someone closes the door and sits down", "a dog runs in the park"]
CASES = {
    "videomae_pretrain": dict(model_name="videomae", seed=1, model=dict(
        VIT, head="pretrain", decoder_width=8, decoder_heads=2, decoder_depth=1, decoder_mlp_dim=16, mask_ratio=0.5)),
    "videomae_classification": dict(model_name="videomae", seed=2, class_names=["open", "close", "sit"],
                                    model=dict(VIT, head="classification", num_classes=3)),
    "videomae_model": dict(model_name="videomae", seed=3, model=dict(VIT, head="none", qkv_bias="none")),
    "timesformer_classification": dict(model_name="timesformer", seed=4, class_names=["walk", "run"],
                                       model=dict(VIT, head="classification", num_classes=2, scan_layers=True),
                                       preprocessing=dict(short_side=20)),
    "timesformer_model": dict(model_name="timesformer", seed=5, model=dict(
        VIT, head="none", attention_type="joint_space_time", approximate_gelu=True)),
    "vivit_classification": dict(model_name="vivit", seed=6, class_names=["a", "b", "c", "d"], model=dict(
        VIT, variant="Mu/8x2", head="classification", num_classes=4, classifier="token")),
    "vivit_model": dict(model_name="vivit", seed=7, model=dict(VIT, variant="Mu/8x2", head="none", qkv_bias="none",
                                                              approximate_gelu=False)),
    "captioner_videomae": dict(model_name="captioner", seed=8, captions=CAPTIONS, model=dict(
        encoder_name="videomae", encoder=dict(VIT, head="none", use_mean_pooling=False), decoder=GPT2)),
    "captioner_timesformer": dict(model_name="captioner", seed=9, model=dict(
        encoder_name="timesformer", encoder=dict(VIT, width=24, head="none"),
        decoder=dict(GPT2, pad_token_id=2))),
    "gpt2": dict(model_name="gpt2", seed=10, model=dict(GPT2, add_cross_attention=False)),
    "vjepa2_model": dict(model_name="vjepa2", seed=11, model=dict(VIT, head="none", **VJEPA2_PREDICTOR)),
    "vjepa2_classification": dict(model_name="vjepa2", seed=12, class_names=["pour", "stir", "cut"], model=dict(
        VIT, head="classification", num_classes=3, num_pooler_layers=1, qkv_bias="none", ln_eps=1e-5,
        **VJEPA2_PREDICTOR)),
    "videoprism_model": dict(model_name="videoprism", seed=13, model=dict(VIDEOPRISM, head="none",
                                                                          attn_logit_cap=2.0)),
    "videoprism_video": dict(model_name="videoprism", seed=14, model=dict(VIDEOPRISM, head="video",
                                                                          l2_normalize=False)),
    "videoprism_classification": dict(model_name="videoprism", seed=15, class_names=["jump", "swim", "climb"],
                                      model=dict(VIDEOPRISM, head="classification", num_classes=3, qkv_bias="none",
                                                 ln_eps=1e-5)),
    "videoprism_clip": dict(model_name="videoprism", seed=16, model=dict(
        VIDEOPRISM, head="clip", text_depth=1, vocab_size=32, max_text_length=8)),
    # The image teachers, frame by frame: CLIP's vision tower with and without its projection, and SigLIP's.
    "image_encoder_clip": dict(model_name="image_encoder", seed=17, model=dict(IMAGE, kind="clip")),
    "image_encoder_clip_projection": dict(model_name="image_encoder", seed=18, model=dict(
        IMAGE, kind="clip", projection_dim=12, ln_eps=1e-6)),
    "image_encoder_siglip": dict(model_name="image_encoder", seed=19, model=dict(
        IMAGE, kind="siglip", ln_eps=1e-6, pixel_mean=[0.5, 0.5, 0.5], pixel_std=[0.5, 0.5, 0.5])),
}
TEXTS = 3  # the video-text model's texts, scored against the BATCH clips
BATCH, LENGTH = 2, 6
# The child process: vidjax made unimportable, transformers loads each exported folder and runs it.
CHILD = """
import json, sys
sys.modules["vidjax"] = None
sys.path.insert(0, sys.argv[1])
import to_hf
print(json.dumps(to_hf.transformers_outputs(sys.argv[2:])))
"""


def inputs(case: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The inputs of a case: a uint8 clip for a video model, a mask for pre-training, token ids for a decoder or a
    text tower (right-padded rows among them), the predictor's context and target token indices for V-JEPA 2
    (disjoint, in random order)."""
    out = {}
    if case["model_name"] != "gpt2":
        out["clip"] = rng.integers(0, 256, (BATCH, VIDEO["num_frames"], VIDEO["image_size"], VIDEO["image_size"], 3),
                                   dtype=np.uint8)
    if case["model"].get("head") == "pretrain":
        out["mask"] = np.zeros((BATCH, 8), bool)
        for row in out["mask"]:
            row[rng.choice(8, 4, replace=False)] = True
    if case["model_name"] == "vjepa2":
        order = np.stack([rng.permutation(8) for _ in range(BATCH)])
        out.update(context_ids=order[:, :5], target_ids=order[:, 5:])
    if case["model_name"] in ("captioner", "gpt2"):
        ids = rng.integers(3, GPT2["vocab_size"], (BATCH, LENGTH))
        ids[:, 0] = GPT2["bos_token_id"]
        mask = np.ones((BATCH, LENGTH), np.int64)
        mask[1, -2:] = 0  # a right-padded row
        key = "decoder_" if case["model_name"] == "captioner" else ""
        out.update({f"{key}input_ids": ids, f"{key}attention_mask": mask})
    if case["model"].get("head") == "clip":
        mask = np.ones((TEXTS, LENGTH), np.int64)
        mask[1, -2:] = 0
        mask[2, 2:] = 0
        ids = rng.integers(1, case["model"]["vocab_size"], (TEXTS, LENGTH)) * mask  # padded with 0, VideoPrism's pad
        out.update(input_ids=ids, attention_mask=mask)
    return out


def exported_record(folder: pathlib.Path) -> dict:
    """What an export holds: its config files as written, and every tensor's shape and the sha256 of its bytes."""
    from vidjax.convert.common import read_safetensors

    record = {name: json.loads((folder / name).read_text()) for name in
              ("config.json", "preprocessor_config.json", "generation_config.json") if (folder / name).is_file()}
    record["tensors"] = {name: [list(v.shape), hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()]
                         for name, v in sorted(read_safetensors(folder / "model.safetensors").items())}
    return record


def transformers_outputs(jobs: list[str]) -> dict:
    """In a process without vidjax: for each (folder, inputs .npz, outputs .npz) triple, load the folder with its
    Auto class, run it and save its outputs under vidjax's names; returns each folder's class and load report."""
    import torch
    import transformers

    report = {}
    auto_classes = json.loads(jobs[0])
    for folder, inputs_path, outputs_path in zip(jobs[1::3], jobs[2::3], jobs[3::3], strict=True):
        config = json.loads((pathlib.Path(folder) / "config.json").read_text())
        architecture = config["architectures"][0]
        auto = auto_classes[architecture]
        model, info = getattr(transformers, auto).from_pretrained(folder, output_loading_info=True)
        model.eval()
        io = dict(np.load(inputs_path))
        outs, processor_diff = {}, None
        with torch.no_grad():
            if "clip" in io:
                # No preprocessor config (an export before VideoPrism wrote one): rescale to [0, 1], no normalisation.
                proc_path = pathlib.Path(folder) / "preprocessor_config.json"
                proc = json.loads(proc_path.read_text()) if proc_path.is_file() else dict(
                    rescale_factor=1 / 255, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
                video = (torch.from_numpy(io["clip"]).float() * proc["rescale_factor"]
                         - torch.tensor(proc["image_mean"])) / torch.tensor(proc["image_std"])
                pixel_values = video.permute(0, 1, 4, 2, 3)  # transformers takes (B, T, C, H, W)
                # No resize: the same input (V-JEPA 2's video processor always resizes, to crop_size x 256 / 224).
                if "image_processor_type" in proc and proc["size"]["shortest_edge"] == proc["crop_size"]["height"]:
                    processor = transformers.AutoImageProcessor.from_pretrained(folder)
                    processed = processor(list(io["clip"][0]), return_tensors="pt")["pixel_values"]
                    processed = processed[0] if processed.ndim == 5 else processed  # a video's, or its frames
                    processor_diff = float((processed - pixel_values[0]).abs().max())
            if architecture.startswith("VideoPrism"):
                outs.update(videoprism_outputs(model, architecture, pixel_values, io))
            elif architecture.startswith(("CLIP", "Siglip")):
                outs.update(image_tower_outputs(model, architecture, pixel_values))
            elif "mask" in io:
                result = model(pixel_values, bool_masked_pos=torch.from_numpy(io["mask"]))
                outs.update(pred=result.logits, loss=result.loss)
            elif "decoder_input_ids" in io:
                outs["logits"] = model(pixel_values=pixel_values,
                                       decoder_input_ids=torch.from_numpy(io["decoder_input_ids"]),
                                       decoder_attention_mask=torch.from_numpy(io["decoder_attention_mask"])).logits
            elif "input_ids" in io:
                outs["logits"] = model(input_ids=torch.from_numpy(io["input_ids"]),
                                       attention_mask=torch.from_numpy(io["attention_mask"])).logits
            else:
                result = model(pixel_values)
                if "logits" in result:
                    outs["logits"] = result.logits
                if "context_ids" in io:  # V-JEPA 2's predictor, at the given token indices
                    outs["predictor_output"] = model.base_model(
                        pixel_values, context_mask=[torch.from_numpy(io["context_ids"])],
                        target_mask=[torch.from_numpy(io["target_ids"])]).predictor_output.last_hidden_state
                outs["last_hidden_state"] = model.base_model(pixel_values).last_hidden_state
        if (pathlib.Path(folder) / "tokenizer_config.json").is_file():
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            outs["tokenizer_ids"] = torch.tensor(tokenizer(CAPTIONS[1])["input_ids"])
        np.savez(outputs_path, **{k: v.numpy() for k, v in outs.items()})
        report[folder] = dict(auto_class=auto, model_class=type(model).__name__,
                              load_report={k: sorted(v) for k, v in info.items() if v},
                              image_processor_max_diff=processor_diff)
    return report


def videoprism_outputs(model, architecture: str, pixel_values, io: dict) -> dict:
    """A transformers VideoPrism class's outputs under vidjax's names, the pooler's query axis dropped."""
    import torch

    if architecture == "VideoPrismClipModel":
        result = model(pixel_values_videos=pixel_values, input_ids=torch.from_numpy(io["input_ids"]),
                       attention_mask=torch.from_numpy(io["attention_mask"]))
        return {name: getattr(result, name) for name in ("video_embeds", "text_embeds", "logits_per_video",
                                                         "logits_per_text")}
    result = model(pixel_values)
    if architecture == "VideoPrismVideoModel":  # last_hidden_state: the auxiliary blocks' output, as vidjax's
        return dict(video_embeds=result.pooler_output[:, 0], last_hidden_state=result.last_hidden_state)
    if architecture == "VideoPrismForVideoClassification":  # last_hidden_state: the encoder's, as vidjax's
        return dict(logits=result.logits[:, 0], last_hidden_state=model.vision_model(pixel_values).last_hidden_state)
    return dict(last_hidden_state=result.last_hidden_state)


def image_tower_outputs(model, architecture: str, pixel_values) -> dict:
    """A CLIP or SigLIP vision tower run on every frame, under vidjax's names: "last_hidden_state" (B, frames x
    patches, width), the frames' patch tokens after the final LayerNorm (CLIP's applied here: transformers' last hidden
    state is before it), and per frame (B x frames, ...) the pooled output or CLIP's projected image embeddings."""
    b, t = pixel_values.shape[:2]
    result = model(pixel_values=pixel_values.flatten(0, 1))
    tokens = result.last_hidden_state
    if architecture.startswith("CLIP"):
        tower = getattr(model, "vision_model", model)
        tokens = tower.post_layernorm(tokens[:, 1:])
    out = dict(last_hidden_state=tokens.reshape(b, -1, tokens.shape[-1]))
    if getattr(result, "image_embeds", None) is not None:
        out["image_embeds"] = result.image_embeds
    else:
        out["pooler_output"] = result.pooler_output
    return out


def run_transformers(jobs: list[tuple[pathlib.Path, pathlib.Path, pathlib.Path]]) -> dict:
    """`transformers_outputs` in a child process that cannot import vidjax (what loading needs is only transformers)."""
    from vidjax.convert.hf import AUTO_CLASSES

    args = [json.dumps(AUTO_CLASSES)] + [str(p) for job in jobs for p in job]
    result = subprocess.run([sys.executable, "-c", CHILD, str(pathlib.Path(__file__).parent), *args],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"transformers failed on the exported folders:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def export_case(case: dict, workdir: pathlib.Path) -> pathlib.Path:
    """The seeded checkpoint of `case`, exported with `python -m vidjax.export --to_hf`; returns the folder."""
    sys.path.insert(0, str(ROOT / "tests"))
    import helpers

    from vidjax.commands import export

    checkpoint = helpers.seeded_checkpoint(case, workdir / "vidjax")
    if export.main(["--to_hf", str(checkpoint), "--out", str(workdir / "hf")]):
        raise RuntimeError(f"--to_hf refused {case}")
    return workdir / "hf"


def make(out: pathlib.Path) -> None:
    import torch
    import transformers

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        jobs, cases = [], {}
        for name, case in CASES.items():
            folder = export_case(case, tmp / name)
            np.savez(tmp / name / "inputs.npz", **inputs(case, rng))
            jobs.append((folder, tmp / name / "inputs.npz", tmp / name / "outputs.npz"))
            cases[name] = dict(case, kind="to_hf", exported=exported_record(folder))
        report = run_transformers(jobs)
        for (folder, inputs_path, outputs_path), (name, case) in zip(jobs, cases.items(), strict=True):
            case_dir = out / f"to_hf_{name}"
            case_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(case_dir / "io.npz", **dict(np.load(inputs_path)), **dict(np.load(outputs_path)))
            case["transformers"] = dict(report[str(folder)], reference=f"transformers {transformers.__version__}, "
                                                                        f"torch {torch.__version__}")
            (case_dir / "case.json").write_text(json.dumps(case, indent=1) + "\n")
