"""Parity fixtures for Hugging Face GPT-2 (`GPT2LMHeadModel`): logits, greedy and beam-search tokens of tiny models.

Two cases, both with every weight random (LayerNorm scales around 1) so a mapping mistake cannot hide:
  gpt2_lm     a plain language model; logits of a batch whose second row is right-padded (attention_mask), greedy
              and beam-search (3 beams, length_penalty 1) continuations of a 3-token prompt; no pad token, so
              finished rows are padded with EOS, as `generate` does for GPT-2.
  gpt2_cross  add_cross_attention=True with random encoder_hidden_states; logits, greedy and beam-search
              (3 beams, length_penalty 0.6) captions from the start token alone, pad token distinct from EOS.
Each case's EOS is a token the model actually emits (picked from a first greedy run without one), so one row
finishes early and stopping, padding and finished beams are exercised. The greedy result is checked against a
hand-written argmax loop over the model's forward pass before it is stored.

case.json says "kind": "text" (tests/test_parity.py runs the video cases; tests/test_gpt2.py these) and holds the
decoding settings. Run through scripts/make_parity_fixtures.py (needs torch and transformers).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

TINY = dict(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=95)
BATCH, LENGTH, ENCODER_TOKENS, MAX_NEW_TOKENS, NUM_BEAMS = 2, 8, 6, 12, 3


def _randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            is_norm_scale = ".ln_" in name and name.endswith("weight") or "ln_f.weight" in name
            param.copy_(1.0 + 0.2 * noise if is_norm_scale else 0.2 * noise)


def _greedy_by_hand(model, prompt: torch.Tensor, encoder: torch.Tensor | None, eos: int, pad: int) -> torch.Tensor:
    """Argmax, append, pad after EOS, stop when every row has ended: what greedy `generate` does."""
    ids, done = prompt.clone(), torch.zeros(prompt.shape[0], dtype=torch.bool)
    for _ in range(MAX_NEW_TOKENS):
        logits = model(ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=encoder).logits[:, -1]
        token = torch.where(done, torch.tensor(pad), logits.argmax(-1))
        ids = torch.cat([ids, token[:, None]], dim=1)
        done |= token == eos
        if done.all():
            break
    return ids


def _generate(model, prompt, encoder, **kwargs):
    extra = {} if encoder is None else {"encoder_hidden_states": encoder}
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=MAX_NEW_TOKENS,
                          do_sample=False, **extra, **kwargs)


def _pick_eos(model, prompt, encoder) -> int:
    """A token the first row emits a few steps in, which the second row's greedy continuation never does."""
    free = _generate(model, prompt, encoder, num_beams=1, eos_token_id=None, pad_token_id=0)[:, prompt.shape[1]:]
    for token in free[0, 2:].tolist():
        if token not in free[1].tolist() and token not in prompt.flatten().tolist():
            return int(token)
    raise RuntimeError(f"No token of row 0 {free[0].tolist()} is absent from row 1 {free[1].tolist()}; change seed.")


def _case(out: pathlib.Path, name: str, *, cross: bool, seed: int, length_penalty: float) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GPT2LMHeadModel(GPT2Config(**TINY, add_cross_attention=cross, eos_token_id=None)).eval()
    _randomise(model, seed)
    input_ids = rng.integers(0, TINY["vocab_size"] - 1, (BATCH, LENGTH))
    input_ids[:, 0] = TINY["bos_token_id"]
    attention_mask = np.ones((BATCH, LENGTH), np.int64)
    if not cross:
        attention_mask[1, -2:] = 0  # right padding in the second row
    encoder = rng.standard_normal((BATCH, ENCODER_TOKENS, TINY["n_embd"])).astype(np.float32) if cross else None
    enc_t = None if encoder is None else torch.from_numpy(encoder)
    # Captions start from the start token alone; the plain LM continues a 3-token prompt.
    prompt = torch.from_numpy(input_ids[:, :1] if cross else input_ids[:, :3])

    with torch.no_grad():
        logits = model(torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask),
                       encoder_hidden_states=enc_t).logits.numpy()
        eos = _pick_eos(model, prompt, enc_t)
        pad = 1 if cross else eos  # GPT-2 has no pad token: generate pads with EOS unless told otherwise
        model.config.eos_token_id = model.generation_config.eos_token_id = eos
        model.config.pad_token_id = model.generation_config.pad_token_id = pad if cross else None
        greedy = _generate(model, prompt, enc_t, num_beams=1, pad_token_id=pad)
        by_hand = _greedy_by_hand(model, prompt, enc_t, eos, pad)
        assert torch.equal(greedy, by_hand), (greedy, by_hand)
        beam = _generate(model, prompt, enc_t, num_beams=NUM_BEAMS, length_penalty=length_penalty,
                         pad_token_id=pad, return_dict_in_generate=True, output_scores=True)

    case = out / name
    model.save_pretrained(case / "source")
    arrays = dict(input_ids=input_ids, attention_mask=attention_mask, logits=logits, prompt_ids=prompt.numpy(),
                  greedy_tokens=greedy.numpy(), beam_tokens=beam.sequences.numpy(),
                  beam_scores=beam.sequences_scores.numpy())
    if cross:
        arrays["encoder_hidden_states"] = encoder
    np.savez(case / "io.npz", **arrays)
    (case / "case.json").write_text(json.dumps(dict(
        convert="hf", kind="text", max_new_tokens=MAX_NEW_TOKENS, num_beams=NUM_BEAMS,
        length_penalty=length_penalty, eos_token_id=eos, pad_token_id=pad,
        reference=f"GPT2LMHeadModel (add_cross_attention {cross}), generate() greedy and beam search, transformers "
                  f"{transformers.__version__}, torch {torch.__version__}, random weights (seed {seed})"), indent=1))


def make(out: pathlib.Path) -> None:
    _case(out, "gpt2_lm", cross=False, seed=1, length_penalty=1.0)
    _case(out, "gpt2_cross", cross=True, seed=2, length_penalty=0.6)
