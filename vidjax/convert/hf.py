"""Hugging Face `save_pretrained` directories -> vidjax: dispatch on config.json's `architectures`."""

from __future__ import annotations

import importlib
import json
import pathlib

from vidjax.convert.common import ConversionError, Converted, TensorSource, finalize

_MODULES = ("hf_videomae", "hf_timesformer", "hf_vivit", "hf_gpt2", "hf_captioner")  # each lists its architectures
# A tokenizer saved beside the weights (`tokenizer.save_pretrained(SRC)`): copied to DST/tokenizer/ as it is, in
# transformers 5's format (tokenizer.json) and the classic GPT-2 one (vocab.json + merges.txt).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")
TOKENIZER_DIR = "tokenizer"


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
    return finalize(converted, src, format="huggingface", architecture=architecture)
