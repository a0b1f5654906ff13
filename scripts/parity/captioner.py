"""Parity fixtures for Hugging Face `VisionEncoderDecoderModel` video captioners (a video encoder + GPT-2).

Two cases, every weight random (LayerNorm scales around 1) so a mapping mistake cannot hide:
  captioner_videomae_gpt2  VideoMAEModel (final LayerNorm: use_mean_pooling=False) and a GPT-2 of the same width
                           (no enc_to_dec_proj); logits of decoder ids whose second row is right-padded
                           (decoder_attention_mask); no pad token, so `generate` pads finished rows with EOS. The
                           directory also holds a GPT-2 tokenizer over a 96-token vocabulary (vocab.json, merges.txt,
                           tokenizer.json) and a VideoMAE preprocessor config (mean/std 0.5); case.json stores the
                           captions Hugging Face's tokenizer decodes from the greedy tokens (cut at EOS).
  captioner_wide_encoder   TimesformerModel of width 40 and a GPT-2 of width 32: enc_to_dec_proj maps the encoder's
                           tokens to the decoder's width; pad token distinct from EOS.
Each stores the video (channels-last, already normalised), decoder_input_ids (decoder_start_token_id first), the
logits of `model(pixel_values=..., decoder_input_ids=...)`, and what `generate` returns greedily (checked against
a hand-written argmax loop) and with 3 beams. EOS is a token the model emits in the first row but not in the second,
so one row finishes early. case.json says "kind": "captioner" (tests/test_captioner.py runs these).
Run through scripts/make_parity_fixtures.py (needs torch and transformers).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import (
    GPT2Config,
    GPT2Tokenizer,
    TimesformerConfig,
    VideoMAEConfig,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)

VOCAB, START = 96, 95  # the start token is GPT-2's <|endoftext|>, the last id
GPT2 = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=START, eos_token_id=None,
            add_cross_attention=True, is_decoder=True)
VIDEO = dict(image_size=16, patch_size=4, num_channels=3, num_frames=4)
# What VideoMAEImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained writes (written by hand:
# the image processor needs PIL and torchvision).
PROCESSOR = dict(crop_size=dict(height=16, width=16), do_center_crop=True, do_normalize=True, do_rescale=True,
                 do_resize=True, image_mean=[0.5] * 3, image_processor_type="VideoMAEImageProcessor",
                 image_std=[0.5] * 3, resample=2, rescale_factor=1 / 255, size=dict(shortest_edge=16))
BATCH, LENGTH, MAX_NEW_TOKENS, NUM_BEAMS, LENGTH_PENALTY = 2, 8, 10, 3, 1.0


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            is_norm_scale = name.endswith("weight") and ("norm" in name or ".ln_" in name)
            param.copy_(1.0 + 0.2 * noise if is_norm_scale else 0.2 * noise)


def _generate(model, pixel_values, **kwargs):
    return model.generate(pixel_values=pixel_values, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kwargs)


def _greedy_by_hand(model, pixel_values, eos: int, pad: int) -> torch.Tensor:
    """Argmax, append, pad after EOS, stop when every row has ended: what greedy `generate` does."""
    ids = torch.full((pixel_values.shape[0], 1), START)
    done = torch.zeros(pixel_values.shape[0], dtype=torch.bool)
    for _ in range(MAX_NEW_TOKENS):
        logits = model(pixel_values=pixel_values, decoder_input_ids=ids).logits[:, -1]
        token = torch.where(done, torch.tensor(pad), logits.argmax(-1))
        ids = torch.cat([ids, token[:, None]], dim=1)
        done |= token == eos
        if done.all():
            break
    return ids


def _pick_eos(model, pixel_values) -> int:
    """A token the first row emits a few steps in, which the second row's greedy continuation never does."""
    model.generation_config.decoder_start_token_id, model.generation_config.eos_token_id = START, None
    free = _generate(model, pixel_values, num_beams=1, pad_token_id=0)[:, 1:]
    for token in free[0, 2:].tolist():
        if token not in free[1].tolist() and token != START:
            return int(token)
    raise RuntimeError(f"No token of row 0 {free[0].tolist()} is absent from row 1 {free[1].tolist()}; change seed.")


def _tokenizer(directory: pathlib.Path) -> GPT2Tokenizer:
    """A byte-level GPT-2 tokenizer over 96 tokens: the space, printable ASCII and <|endoftext|> (no merges)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(["\u0120"] + [chr(c) for c in range(33, 127)])}
    vocab["<|endoftext|>"] = START
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = GPT2Tokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tokenizer.save_pretrained(directory)  # tokenizer.json + tokenizer_config.json
    return tokenizer


def _captions(tokenizer: GPT2Tokenizer, tokens: np.ndarray, eos: int) -> list[str]:
    out = []
    for row in tokens[:, 1:].tolist():
        out.append(tokenizer.decode(row[: row.index(eos)] if eos in row else row))
    return out


def _case(out: pathlib.Path, name: str, encoder_config, *, seed: int, distinct_pad: bool, padded: bool,
          tokenizer: bool = False, processor: dict | None = None) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, GPT2Config(**GPT2))
    config.decoder_start_token_id = START
    model = VisionEncoderDecoderModel(config).eval()
    _randomise(model, seed)
    video = rng.standard_normal((BATCH, VIDEO["num_frames"], VIDEO["image_size"], VIDEO["image_size"], 3))
    video = video.astype(np.float32)
    pixel_values = torch.from_numpy(video).permute(0, 1, 4, 2, 3)  # HF takes (B, T, C, H, W)
    input_ids = rng.integers(0, VOCAB - 1, (BATCH, LENGTH))
    input_ids[:, 0] = START
    attention_mask = np.ones((BATCH, LENGTH), np.int64)
    if padded:
        attention_mask[1, -3:] = 0

    with torch.no_grad():
        logits = model(pixel_values=pixel_values, decoder_input_ids=torch.from_numpy(input_ids),
                       decoder_attention_mask=torch.from_numpy(attention_mask)).logits.numpy()
        eos = _pick_eos(model, pixel_values)
        pad = 1 if distinct_pad else eos
        for cfg in (model.config, model.generation_config):
            cfg.decoder_start_token_id, cfg.eos_token_id = START, eos
            cfg.pad_token_id = pad if distinct_pad else None  # None: generate pads with EOS
        greedy = _generate(model, pixel_values, num_beams=1)
        by_hand = _greedy_by_hand(model, pixel_values, eos, pad)
        assert torch.equal(greedy, by_hand), (greedy, by_hand)
        beam = _generate(model, pixel_values, num_beams=NUM_BEAMS, length_penalty=LENGTH_PENALTY)

    case = out / name
    model.save_pretrained(case / "source")
    meta = dict(convert="hf", kind="captioner", max_new_tokens=MAX_NEW_TOKENS, num_beams=NUM_BEAMS,
                length_penalty=LENGTH_PENALTY, decoder_start_token_id=START, eos_token_id=eos, pad_token_id=pad,
                encoder_width=encoder_config.hidden_size, decoder_width=GPT2["n_embd"])
    if tokenizer:
        meta["captions"] = _captions(_tokenizer(case / "source"), greedy.numpy(), eos)
    if processor is not None:
        (case / "source" / "preprocessor_config.json").write_text(json.dumps(processor, indent=1))
    np.savez(case / "io.npz", video=video, decoder_input_ids=input_ids, decoder_attention_mask=attention_mask,
             logits=logits, greedy_tokens=greedy.numpy(), beam_tokens=beam.numpy())
    meta["reference"] = (f"VisionEncoderDecoderModel ({type(model.encoder).__name__} + GPT2LMHeadModel), generate() "
                         f"greedy and beam search, transformers {transformers.__version__}, torch "
                         f"{torch.__version__}, random weights (seed {seed})")
    (case / "case.json").write_text(json.dumps(meta, indent=1))


def make(out: pathlib.Path) -> None:
    videomae = VideoMAEConfig(**VIDEO, tubelet_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, use_mean_pooling=False)
    _case(out, "captioner_videomae_gpt2", videomae, seed=3, distinct_pad=False, padded=True, tokenizer=True,
          processor=PROCESSOR)
    timesformer = TimesformerConfig(**VIDEO, hidden_size=40, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64)
    _case(out, "captioner_wide_encoder", timesformer, seed=4, distinct_pad=True, padded=False)
