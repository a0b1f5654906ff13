"""Hugging Face `save_pretrained` directories -> vidjax (dispatch on config.json's `architectures`), and back.

`convert_hf_dir` reads a directory; `to_hf` maps a vidjax model to its transformers class through the same family
module (`hf_videomae`, ...), whose one table of tensors serves both directions, and `write_hf_dir` writes what
`save_pretrained` would: config.json, model.safetensors, preprocessor_config.json, generation_config.json and the
tokenizer, for transformers' `from_pretrained` (`python -m vidjax.export --to_hf`).

The clip spec travels in preprocessor_config.json: the resize and crop in transformers' own keys (`size`
{"shortest_edge"}, `crop_size`), and what transformers has no key for, the frame stride, in vidjax's `vidjax_clip`
({"num_frames", "sampling_rate", "short_side", "image_size"}; transformers' image processors keep an unknown key as an
attribute and ignore it). It is written when the checkpoint records its stride (a training run does; a checkpoint
converted from transformers does not), and read back by `convert_hf_dir`, so a model trained at stride 1, exported
and converted again (or loaded by its Hub name) reads its clips at stride 1. A video checkpoint without it is read at
`ASSUMED_SAMPLING_RATE` frames apart, which a one-line warning names at conversion.
"""

from __future__ import annotations

import importlib
import json
import logging
import pathlib
import shutil
import uuid
from typing import Any

from vidjax.convert.common import (
    CLIP_KEY,
    ConversionError,
    Converted,
    HfCheckpoint,
    TensorSource,
    finalize,
    processor_clip,
    write_safetensors,
)
from vidjax.tokenizer import TOKENIZER_FILES

# Each lists its architectures.
_MODULES = ("hf_videomae", "hf_timesformer", "hf_vivit", "hf_gpt2", "hf_captioner", "hf_vjepa2",
            "hf_videoprism", "hf_clip")
# A tokenizer saved beside the weights (`tokenizer.save_pretrained(SRC)`, `vidjax.tokenizer.TOKENIZER_FILES`): copied
# to DST/tokenizer/ as it is.
TOKENIZER_DIR = "tokenizer"
# The stride a video checkpoint that records none is read at (= vidjax.pretrained.DEFAULT_SAMPLING_RATE, a layer
# above): the published Kinetics recipes' (VideoMAE 16x4).
ASSUMED_SAMPLING_RATE = 4

logger = logging.getLogger(__name__)


def _converters() -> dict[str, str]:
    """Architecture -> converter module, from each module's ARCHITECTURES."""
    return {arch: name for name in _MODULES
            for arch in importlib.import_module(f"vidjax.convert.{name}").ARCHITECTURES}


def supported() -> list[str]:
    """The Hugging Face architectures vidjax converts."""
    return sorted(_converters())


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path} is not valid JSON ({e}).") from e


def convert_hf_dir(directory: str | pathlib.Path) -> Converted:
    """Reads config.json (+ preprocessor_config.json and generation_config.json when present) and the weights, and
    maps them onto vidjax; tokenizer files in the directory are kept for DST/tokenizer/."""
    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        raise ConversionError(f"--from_hf expects a directory written by `save_pretrained`; {directory} is not a "
                              f"directory.")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{directory} has no config.json; --from_hf expects a `save_pretrained` directory.")
    hf = _read_json(config_path)
    architectures = hf.get("architectures") or []
    converters = _converters()
    known = sorted(converters)
    architecture = next((a for a in architectures if a in converters), None)
    if architecture is None:
        raise ConversionError(f"{config_path} declares architectures {architectures} (model_type "
                              f"{hf.get('model_type')!r}); vidjax converts {', '.join(known)}.")
    module_name = converters[architecture]
    # transformers 5 writes video processors to video_preprocessor_config.json, earlier versions to
    # preprocessor_config.json; either says how the checkpoint's inputs were normalised.
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (directory / name).is_file():
            hf["_preprocessor_config"] = _read_json(directory / name)
            break
    if (directory / "generation_config.json").is_file():  # the token ids `generate` uses
        hf["_generation_config"] = _read_json(directory / "generation_config.json")
    src = TensorSource.from_hf_dir(directory)
    converted = importlib.import_module(f"vidjax.convert.{module_name}").from_hf(hf, src, architecture)
    converted.files.update({f"{TOKENIZER_DIR}/{name}": str(directory / name) for name in TOKENIZER_FILES
                            if (directory / name).is_file()})
    converted = finalize(converted, src, format="huggingface", architecture=architecture)
    return read_clip_spec(converted, hf.get("_preprocessor_config"), directory)


def read_clip_spec(converted: Converted, processor: dict | None, directory: pathlib.Path | str) -> Converted:
    """A video checkpoint's short side and frame stride from its preprocessor config (`CLIP_KEY`, else transformers'
    `size`); without a stride, a one-line warning naming the one it will be read at. Text models are left as they
    are."""
    preprocessing = converted.preprocessing
    if "num_frames" not in preprocessing:
        return converted
    processor = processor or {}
    clip = processor_clip(processor)
    size = processor.get("size") if isinstance(processor.get("size"), dict) else {}
    short_side = int(clip.get("short_side") or size.get("shortest_edge") or preprocessing["image_size"])
    if short_side != int(preprocessing["image_size"]):  # the same: the loader's default (no resize before the crop)
        preprocessing["short_side"] = short_side
    if clip.get("sampling_rate"):
        preprocessing["sampling_rate"] = int(clip["sampling_rate"])  # its num_frames restates config.json's
    else:
        logger.warning("%s records no frame stride (no %s in preprocessor_config.json): its clips are read %d frames "
                       "apart, the published Kinetics recipes' stride; if it was trained at another, pass "
                       "--sampling_rate to predict and extract.", directory, CLIP_KEY, ASSUMED_SAMPLING_RATE)
    return converted


# ----------------------------------------------------------------------------------------- back to transformers

_EXPORTERS = {"videomae": "hf_videomae", "timesformer": "hf_timesformer", "vivit": "hf_vivit", "gpt2": "hf_gpt2",
              "captioner": "hf_captioner", "vjepa2": "hf_vjepa2",
              "videoprism": "hf_videoprism",
              "image_encoder": "hf_clip"}  # vidjax model -> the module whose `to_hf` writes it
# vidjax models that no transformers class computes, in words for the error.
NO_TRANSFORMERS_CLASS = {"videomamba": "a VideoMamba", "svt": "an SVT (a TimeSformer with a DINO projection head)"}
# The transformers class that loads each architecture vidjax writes (what the docs and the command's message say).
AUTO_CLASSES = {
    "VideoMAEForPreTraining": "AutoModelForPreTraining", "VideoMAEForVideoClassification":
    "AutoModelForVideoClassification", "VideoMAEModel": "AutoModel",
    "TimesformerForVideoClassification": "AutoModelForVideoClassification", "TimesformerModel": "AutoModel",
    "VivitForVideoClassification": "AutoModelForVideoClassification", "VivitModel": "AutoModel",
    "GPT2LMHeadModel": "AutoModelForCausalLM", "VisionEncoderDecoderModel": "VisionEncoderDecoderModel",
    "VJEPA2ForVideoClassification": "AutoModelForVideoClassification", "VJEPA2Model": "AutoModel",
    # AutoModel gives VideoPrismVisionModel for a video model's config (both are "videoprism_vision_model"s), so the
    # video model loads by its own class.
    "VideoPrismVisionModel": "AutoModel", "VideoPrismVideoModel": "VideoPrismVideoModel",
    "VideoPrismForVideoClassification": "AutoModelForVideoClassification", "VideoPrismClipModel": "AutoModel",
    "CLIPVisionModel": "CLIPVisionModel", "CLIPVisionModelWithProjection": "CLIPVisionModelWithProjection",
    "SiglipVisionModel": "SiglipVisionModel",
}


def auto_class(architecture: str) -> str:
    """The transformers class that loads a folder of `architecture`: its Auto class, else the class itself."""
    return AUTO_CLASSES.get(architecture, architecture)


_WORD_LEVEL_SPECIALS = "special_tokens.json"  # vidjax.tokenizer.CaptionTokenizer.save's special tokens


def to_hf(converted: Converted, *, problem_type: str | None = None, labels: list[str] | None = None
          ) -> HfCheckpoint:
    """A vidjax model (`converted`: name, config, per-block parameters) as the transformers class that computes it.

    `problem_type` is config.json's for a head (the loss transformers' `forward(labels=...)` computes; the logits are
    the same): the checkpoint's task's (`Presentation.hf_problem_type`, e.g. "multi_label_classification"), else
    "single_label_classification" for a head of one output. `labels` name the head's outputs (class names, or
    regression targets) for `id2label` (LABEL_i when None). A ConversionError says what the model is and why
    transformers has no class for it.
    """
    module = _EXPORTERS.get(converted.model_name)
    if module is None:
        what = NO_TRANSFORMERS_CLASS.get(converted.model_name, f"a {converted.model_name}")
        raise ConversionError(f"this is {what} checkpoint; transformers has no class for it, so it has no "
                              f"--to_hf form.")
    checkpoint = importlib.import_module(f"vidjax.convert.{module}").to_hf(converted)
    config: dict[str, Any] = {"architectures": [checkpoint.architecture], **checkpoint.config}
    cfg = converted.model_config
    if cfg.get("head") == "classification":
        n = int(cfg.num_classes)
        names = [str(v) for v in labels] if labels and len(labels) == n else [f"LABEL_{i}" for i in range(n)]
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
        problem = problem_type or ("single_label_classification" if n == 1 else None)
        if problem:
            config["problem_type"] = problem
    config["dtype"] = "float32"
    checkpoint.config = config
    return checkpoint


def preprocessor_config(processor: str, preprocessing: dict) -> dict[str, Any]:
    """preprocessor_config.json of `processor` (an image processor, or a video processor such as V-JEPA 2's, which
    transformers' AutoVideoProcessor reads from this file too) for a checkpoint's preprocessing: resize the short
    side, centre crop, then (pixels / 255 - mean) / std, which is how vidjax feeds the model, and the clip spec
    (`CLIP_KEY`) when the checkpoint records its frame stride (what `convert_hf_dir` reads back)."""
    size = int(preprocessing["image_size"])
    kind = "video" if processor.endswith("VideoProcessor") else "image"
    config = dict(**{f"{kind}_processor_type": processor}, do_resize=True,
                  size={"shortest_edge": int(preprocessing.get("short_side") or size)}, resample=2,
                  do_center_crop=True, crop_size={"height": size, "width": size}, do_rescale=True,
                  rescale_factor=1 / 255, do_normalize=True, image_mean=[float(v) for v in preprocessing["mean"]],
                  image_std=[float(v) for v in preprocessing["std"]])
    if processor == "VivitImageProcessor":
        config["offset"] = False  # its default (true) would also shift the rescaled pixels by -1
    if preprocessing.get("sampling_rate"):  # the clip spec, frame stride included (the module docstring)
        config[CLIP_KEY] = {"num_frames": int(preprocessing["num_frames"]),
                            "sampling_rate": int(preprocessing["sampling_rate"]),
                            "short_side": config["size"]["shortest_edge"], "image_size": size}
    return config


def _tokenizer_files(tokenizer_dir: pathlib.Path, dst: pathlib.Path) -> list[str]:
    """Copies a checkpoint's tokenizer into a save_pretrained folder; a vidjax word-level one (tokenizer.json +
    special_tokens.json) gets the tokenizer_config.json transformers' AutoTokenizer reads."""
    names = [name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    for name in names:
        shutil.copyfile(tokenizer_dir / name, dst / name)
    specials = tokenizer_dir / _WORD_LEVEL_SPECIALS
    if specials.is_file() and "tokenizer_config.json" not in names:
        tokens = {f"{role}_token": entry["token"] for role, entry in _read_json(specials).items()
                  if isinstance(entry, dict) and entry.get("token") is not None}
        (dst / "tokenizer_config.json").write_text(json.dumps(
            dict(tokenizer_class="PreTrainedTokenizerFast", **tokens), indent=2) + "\n")
        names.append("tokenizer_config.json")
    return names


def write_hf_dir(checkpoint: HfCheckpoint, preprocessing: dict, dst: str | pathlib.Path, *,
                 tokenizer_dir: pathlib.Path | None = None) -> list[str]:
    """Writes `checkpoint` to the new folder `dst` as `save_pretrained` would, atomically (nothing is left at `dst`
    when anything fails); returns the names of the files written."""
    dst = pathlib.Path(dst).expanduser().absolute()
    if dst.is_file() or (dst.is_dir() and any(dst.iterdir())):
        raise ConversionError(f"{dst} already exists and is not empty; give a new folder.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        files = {"config.json": checkpoint.config}
        if checkpoint.processor:
            files["preprocessor_config.json"] = preprocessor_config(checkpoint.processor, preprocessing)
        if checkpoint.generation:
            files["generation_config.json"] = checkpoint.generation
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        # "pt": the format transformers' loader requires in the header, as save_pretrained writes it.
        write_safetensors(tmp / "model.safetensors", checkpoint.tensors, {"format": "pt"})
        names = [*files, "model.safetensors"]
        if tokenizer_dir is not None:
            names += _tokenizer_files(pathlib.Path(tokenizer_dir), tmp)
        if dst.is_dir():
            dst.rmdir()  # empty (checked above)
        tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return names
