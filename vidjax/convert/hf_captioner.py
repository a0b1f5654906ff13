"""Hugging Face `VisionEncoderDecoderModel` video captioners (VideoMAE or TimeSformer + GPT-2) -> vidjax `captioner`.

Layout facts this mapping relies on: config.json nests the encoder's and the decoder's configs (`encoder`,
`decoder`) and the weights are stored under `encoder.` (a `VideoMAEModel` or `TimesformerModel`), `decoder.` (a
`GPT2LMHeadModel` with cross-attention) and, when the encoder's hidden_size differs from the decoder's,
`enc_to_dec_proj` (an `nn.Linear`, (out, in)). The forward pass feeds the decoder the encoder's
`last_hidden_state` (VideoMAEModel's ends with the final LayerNorm unless use_mean_pooling), through
enc_to_dec_proj when present, with no encoder attention mask. Each part is mapped by its own model's converter
(`hf_videomae`, `hf_timesformer`, `hf_gpt2`) on its subset of the tensors.

Decoding takes its token ids as `generate` does: `decoder_start_token_id` (the first token of every caption), EOS
and pad from generation_config.json when the directory has one, else from config.json, else the decoder's config;
pad defaults to EOS. The result is a captioner with visual_tokens "all" and num_chunks 1. `to_hf` writes such a
captioner back, each part through its own family's table.
"""

from __future__ import annotations

import importlib

from vidjax.convert import hf_gpt2
from vidjax.convert.common import (
    ConversionError,
    Converted,
    HfCheckpoint,
    Tensor,
    TensorSource,
    linear,
    read_tensors,
    video_preprocessing,
    write_tensors,
)
from vidjax.models import captioner

ARCHITECTURES = ("VisionEncoderDecoderModel",)
# Encoder model_type -> (converter module, the architecture it converts the encoder as).
_ENCODERS = {"videomae": ("hf_videomae", "VideoMAEModel"), "timesformer": ("hf_timesformer", "TimesformerModel")}
_PARTS = (f"{captioner.ENCODER}/", "decoder/", "enc_to_dec_proj/")  # a captioner's parameters, by part


def _projection(enc_width: int, dec_width: int) -> list[Tensor]:
    """The table of `enc_to_dec_proj`, the Linear from the encoder's width to the decoder's, both directions."""
    return linear("enc_to_dec_proj", "enc_to_dec_proj", enc_width, dec_width)


def _generation_token(hf: dict, name: str) -> int | None:
    """Token id `name` as generate() reads it: generation_config.json, then config.json, then the decoder's config."""
    for where in (hf.get("_generation_config") or {}, hf, hf["decoder"]):
        value = hf_gpt2.token_id(where, name, -1)
        if value >= 0:
            return value
    return None


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a VisionEncoderDecoder checkpoint (video encoder + GPT-2) onto `vidjax.models.captioner`."""
    del architecture
    enc_hf, dec_hf = hf.get("encoder") or {}, hf.get("decoder") or {}
    enc_type, dec_type = enc_hf.get("model_type"), dec_hf.get("model_type")
    if enc_type not in _ENCODERS or dec_type != "gpt2":
        raise ConversionError(f"VisionEncoderDecoderModel with a {enc_type!r} encoder and a {dec_type!r} decoder; "
                              f"vidjax converts {' or '.join(_ENCODERS)} encoders with a 'gpt2' decoder.")
    if not dec_hf.get("add_cross_attention", False):
        raise ConversionError("The GPT-2 decoder of this VisionEncoderDecoderModel has add_cross_attention=false, "
                              "so it cannot read the video; is config.json the one of these weights?")
    enc_width, dec_width = int(enc_hf.get("hidden_size", 768)), int(dec_hf.get("n_embd", 768))
    cross_width = dec_hf.get("cross_attention_hidden_size")
    if cross_width is not None and int(cross_width) != dec_width:
        raise ConversionError(f"The decoder's cross_attention_hidden_size={cross_width} differs from its n_embd="
                              f"{dec_width}; GPT-2's cross-attention reads states of its own width, and vidjax "
                              f"converts only that layout.")

    module_name, enc_architecture = _ENCODERS[enc_type]
    enc_hf = dict(enc_hf, _preprocessor_config=hf.get("_preprocessor_config"))
    encoder = importlib.import_module(f"vidjax.convert.{module_name}").from_hf(
        enc_hf, src.subset("encoder."), enc_architecture)
    encoder = video_preprocessing(encoder)
    decoder = hf_gpt2.from_hf(dec_hf, src.subset("decoder."), "GPT2LMHeadModel")

    dec_cfg = decoder.model_config
    # generate() starts from bos_token_id when there is no decoder_start_token_id; -1: no start token, no EOS.
    start = _generation_token(hf, "decoder_start_token_id")
    start = start if start is not None else _generation_token(hf, "bos_token_id")
    eos, pad = _generation_token(hf, "eos_token_id"), _generation_token(hf, "pad_token_id")
    dec_cfg.bos_token_id = -1 if start is None else start
    dec_cfg.eos_token_id = -1 if eos is None else eos
    dec_cfg.pad_token_id = pad if pad is not None else (eos if eos is not None else 0)

    cfg = captioner.default_config(enc_type)
    cfg.encoder = encoder.model_config
    cfg.decoder = dec_cfg
    cfg.update(dict(visual_tokens="all", num_chunks=1, projection="auto", freeze_encoder=False))
    params = {f"{captioner.ENCODER}/{k}": v for k, v in encoder.params.items()}
    params.update({f"decoder/{k}": v for k, v in decoder.params.items()})
    if enc_width != dec_width:
        params.update(read_tensors(src, _projection(enc_width, dec_width)))
    elif src.has("enc_to_dec_proj.weight"):
        raise ConversionError(f"{src.origin} has enc_to_dec_proj although the encoder and decoder are both "
                              f"{enc_width} wide; Hugging Face would not use it. Is config.json the one of these "
                              f"weights?")
    pre = encoder.preprocessing
    preprocessing = dict(mean=[float(v) for v in pre["mean"]], std=[float(v) for v in pre["std"]],
                         num_frames=int(pre["num_frames"]), image_size=int(pre["image_size"]))
    return Converted("captioner", cfg, params, preprocessing=preprocessing)


def _part(params: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax captioner -> VisionEncoderDecoderModel (a VideoMAEModel or TimesformerModel and a GPT2LMHeadModel),
    each part written by its own family's `to_hf`; refused (a ConversionError naming why) where Hugging Face's class
    cannot compute what the captioner does."""
    cfg = converted.model_config
    what = f"this is a captioner with a {cfg.encoder_name} encoder"
    if cfg.encoder_name not in _ENCODERS:
        raise ConversionError(f"{what}; transformers has no class for it (vidjax writes VisionEncoderDecoderModel "
                              f"with a {' or '.join(_ENCODERS)} encoder).")
    differs = {"visual_tokens": (cfg.visual_tokens, "all"), "num_chunks": (int(cfg.num_chunks), 1)}
    for key, (value, hf_value) in differs.items():
        if value != hf_value:
            raise ConversionError(f"{what} and {key}={value!r}; transformers has no class for it "
                                  f"(VisionEncoderDecoderModel feeds the decoder every encoder token of one clip: "
                                  f"{key}={hf_value!r}).")
    stray = [k for k in converted.params if not k.startswith(_PARTS)]
    if stray:
        raise ConversionError(f"{what} with parameters VisionEncoderDecoderModel has no place for: {stray[:4]}.")
    module_name, _ = _ENCODERS[cfg.encoder_name]
    encoder = importlib.import_module(f"vidjax.convert.{module_name}").to_hf(
        Converted(cfg.encoder_name, cfg.encoder, _part(converted.params, f"{captioner.ENCODER}/"), {}))
    decoder = hf_gpt2.to_hf(Converted("gpt2", cfg.decoder, _part(converted.params, "decoder/"), {}))
    enc_width, dec_width = encoder.config["hidden_size"], decoder.config["n_embd"]
    projected = cfg.projection == "linear" or (cfg.projection == "auto" and enc_width != dec_width)
    if projected != (enc_width != dec_width):
        raise ConversionError(f"{what} and a projection between encoder and decoder of equal widths ({enc_width}; "
                              f"projection='linear'); transformers has no class for it (VisionEncoderDecoderModel "
                              f"projects only when the widths differ).")
    tensors = {f"encoder.{k}": v for k, v in encoder.tensors.items()}
    tensors.update({f"decoder.{k}": v for k, v in decoder.tensors.items()})
    if projected:
        tensors.update(write_tensors({k: v for k, v in converted.params.items() if k.startswith(_PARTS[2])},
                                     _projection(enc_width, dec_width), "captioner projection"))
    tokens = hf_gpt2.special_tokens(cfg.decoder)
    start = tokens.pop("bos_token_id")
    config = dict(model_type="vision-encoder-decoder", is_encoder_decoder=True, tie_word_embeddings=False,
                  encoder=encoder.config, decoder=dict(decoder.config, is_decoder=True, add_cross_attention=True),
                  decoder_start_token_id=start, **tokens)
    generation = {k: v for k, v in dict(decoder_start_token_id=start, bos_token_id=start, **tokens).items()
                  if v is not None}
    return HfCheckpoint("VisionEncoderDecoderModel", config, tensors, generation=generation,
                        notes=encoder.notes + decoder.notes)
