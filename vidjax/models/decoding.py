"""Autoregressive decoding for vidjax's text decoders: greedy and beam search, jitted over a fixed-shape KV cache.

A decoder model provides `init_cache(batch, max_length, encoder_hidden_states, encoder_attention_mask)`,
`prefill(ids, cache)`, `decode_step(ids, cache)`, a cache with `reorder(rows)`, and `bos/eos/pad_token_id`
(`vidjax.models.gpt2.Model` does). Each search is one `jax.jit` over the split model with a `lax.while_loop` inside:
shapes never change during a search, and one compilation serves every call with the same shapes and settings.

Both return token ids (batch, P + max_new_tokens) that start with the prompt (P tokens; by default the single start
token `bos_token_id`, as Hugging Face's `generate` returns `decoder_start_token_id` first for encoder-decoder
models). Rows are conditioned on their own encoder states; a finished row is `pad_token_id` after its EOS. Where
Hugging Face stops once every row has finished and returns fewer columns, vidjax's columns past that are padding.

Greedy (`greedy`) is Hugging Face's greedy `generate`: argmax of the logits, pad after EOS, stop when every row has
produced EOS or max_new_tokens tokens are generated.

Beam search (`beam_search`) is Hugging Face's `generate(num_beams=K)` with its defaults (`early_stopping=False`, one
returned sequence, no logits processors), step for step:
  * candidates: the top 2K of (beam score + log_softmax(logits)) over K beams x vocabulary; beams start with scores
    (0, -1e9, ..., -1e9) so that the first step expands one beam;
  * a candidate ending in EOS, or reaching the maximum length, is finished: it enters the K best finished hypotheses
    (score = sum of log-probabilities / generated_length ** length_penalty, generated_length counting the new tokens
    including the EOS, not the prompt) only if it ranks among the top K candidates of the step;
  * the K best unfinished candidates are the next beams (the cache's rows reordered to follow them);
  * a row is done when it holds K finished hypotheses and its best running beam score divided by the current
    generated length ** length_penalty is no better than its worst finished score (Hugging Face's
    `early_stopping=False` heuristic); a done row's hypotheses no longer change. The search stops when every row is
    done or at max_new_tokens;
  * the result is the best finished hypothesis of each row, with its score.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_NEG = -1.0e9  # the "impossible" score Hugging Face's beam search adds, kept so that scores round as they do there


def _inputs(model, prompt_ids, encoder_hidden_states, encoder_attention_mask, max_new_tokens: int):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if prompt_ids is None:
        if encoder_hidden_states is None:
            raise ValueError("Give prompt_ids (batch, length), or encoder_hidden_states to start every row from the "
                             "start token.")
        if model.bos_token_id < 0:
            raise ValueError("This model has no bos_token_id (config.model.bos_token_id=-1): pass prompt_ids.")
        prompt_ids = np.full((np.shape(encoder_hidden_states)[0], 1), model.bos_token_id, np.int32)
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must be (batch, length >= 1) token ids; got shape {tuple(prompt_ids.shape)}.")
    if encoder_hidden_states is not None:
        encoder_hidden_states = jnp.asarray(encoder_hidden_states)
        if encoder_hidden_states.shape[0] != prompt_ids.shape[0]:
            raise ValueError(f"{prompt_ids.shape[0]} prompts for {encoder_hidden_states.shape[0]} rows of encoder "
                             f"states; give one prompt per row.")
    if encoder_attention_mask is not None:
        encoder_attention_mask = jnp.asarray(encoder_attention_mask, bool)
    return prompt_ids, encoder_hidden_states, encoder_attention_mask


def _token(value: int | None, default: int) -> int:
    return int(default if value is None else value)


def greedy(model: nnx.Module, *, max_new_tokens: int, prompt_ids=None, encoder_hidden_states=None,
           encoder_attention_mask=None, eos_token_id: int | None = None, pad_token_id: int | None = None
           ) -> jax.Array:
    """Greedy decoding: int32 token ids (batch, P + max_new_tokens), the prompt first, `pad_token_id` after EOS.

    `prompt_ids` (batch, P) share one length; by default each row starts from the model's bos_token_id.
    `encoder_hidden_states` (batch, tokens, width) condition row by row (with `encoder_attention_mask`, 1 = real
    token). EOS and pad ids default to the model's; an EOS of -1 never stops a row.
    """
    prompt, enc, enc_mask = _inputs(model, prompt_ids, encoder_hidden_states, encoder_attention_mask, max_new_tokens)
    graphdef, state = nnx.split(model)
    return _greedy(state, prompt, enc, enc_mask, graphdef=graphdef, max_new_tokens=int(max_new_tokens),
                   eos=_token(eos_token_id, model.eos_token_id), pad=_token(pad_token_id, model.pad_token_id))


def beam_search(model: nnx.Module, *, max_new_tokens: int, num_beams: int, length_penalty: float = 1.0,
                prompt_ids=None, encoder_hidden_states=None, encoder_attention_mask=None,
                eos_token_id: int | None = None, pad_token_id: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Beam search as Hugging Face's default `generate(num_beams=...)` (see the module docstring).

    Returns (token ids (batch, P + max_new_tokens) int32, the prompt first and `pad_token_id` after the end; the
    best hypothesis's score (batch,) float32 = sum of log-probabilities / generated_length ** length_penalty).
    Arguments as `greedy`.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}.")
    prompt, enc, enc_mask = _inputs(model, prompt_ids, encoder_hidden_states, encoder_attention_mask, max_new_tokens)
    graphdef, state = nnx.split(model)
    return _beam_search(state, prompt, enc, enc_mask, graphdef=graphdef, max_new_tokens=int(max_new_tokens),
                        num_beams=int(num_beams), length_penalty=float(length_penalty),
                        eos=_token(eos_token_id, model.eos_token_id), pad=_token(pad_token_id, model.pad_token_id))


def _write(tokens_BL: jax.Array, column: jax.Array, values_B: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice(tokens_BL, values_B[:, None].astype(tokens_BL.dtype), (0, column))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos", "pad"))
def _greedy(state, prompt, enc, enc_mask, *, graphdef, max_new_tokens: int, eos: int, pad: int):
    model = nnx.merge(graphdef, state)
    batch, p = prompt.shape
    # The last token is chosen but never fed back: the cache needs one position fewer than the output.
    cache = model.init_cache(batch, p + max_new_tokens - 1, enc, enc_mask)
    logits, cache = model.prefill(prompt, cache)
    tokens = jnp.full((batch, p + max_new_tokens), pad, jnp.int32).at[:, :p].set(prompt)

    def choose(logits_BV, finished):
        token = jnp.where(finished, pad, jnp.argmax(logits_BV, axis=-1).astype(jnp.int32))
        return token, finished | (token == eos)

    def cond(carry):
        i, _, finished, _, _ = carry
        return (i < max_new_tokens - 1) & ~jnp.all(finished)

    def body(carry):
        i, tokens, finished, logits_BV, cache = carry
        token, finished = choose(logits_BV, finished)
        logits_BV, cache = model.decode_step(token, cache)
        return i + 1, _write(tokens, p + i, token), finished, logits_BV, cache

    carry = (jnp.zeros((), jnp.int32), tokens, jnp.zeros((batch,), bool), logits[:, -1], cache)
    i, tokens, finished, logits_BV, _ = jax.lax.while_loop(cond, body, carry)
    token, _ = choose(logits_BV, finished)  # all pad when every row had already finished
    return _write(tokens, p + i, token)


def _gather(x_BK, indices_BJ):
    """x (batch, K, ...) -> (batch, J, ...) along axis 1."""
    indices = indices_BJ.reshape(indices_BJ.shape + (1,) * (x_BK.ndim - 2))
    return jnp.take_along_axis(x_BK, indices, axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "num_beams", "length_penalty", "eos",
                                             "pad"))
def _beam_search(state, prompt, enc, enc_mask, *, graphdef, max_new_tokens: int, num_beams: int,
                 length_penalty: float, eos: int, pad: int):
    model = nnx.merge(graphdef, state)
    batch, p = prompt.shape
    k, total = num_beams, p + max_new_tokens
    # Rows b*K .. b*K+K-1 are the beams of input b: the cache keeps one copy of each input's encoder keys/values.
    cache = model.init_cache(batch * k, total - 1, enc, enc_mask)
    logits, cache = model.prefill(jnp.repeat(prompt, k, axis=0), cache)
    seqs = jnp.full((batch, k, total), pad, jnp.int32).at[:, :, :p].set(prompt[:, None, :])
    beams = dict(
        seqs=seqs,  # running beams
        scores=jnp.tile(jnp.asarray([0.0] + [_NEG] * (k - 1), jnp.float32), (batch, 1)),
        done_seqs=seqs,  # finished hypotheses, best first
        done_scores=jnp.full((batch, k), _NEG, jnp.float32),
        done_flags=jnp.zeros((batch, k), bool),  # which of done_seqs are real hypotheses
        open=jnp.ones((batch,), bool),  # whether a row's running beams may still beat its finished ones
    )
    # length ** length_penalty for every generated length, in float64 then float32 as Hugging Face divides by it.
    penalties = jnp.asarray(np.arange(max_new_tokens + 1, dtype=np.float64) ** length_penalty, jnp.float32)

    def step(beams, logits_RV, cur_len):
        """One search step at column `cur_len`: Hugging Face's top-k continuations, running beams, finished beams
        and early-stop heuristic, in its order and arithmetic."""
        vocab = logits_RV.shape[-1]
        log_probs = jax.nn.log_softmax(logits_RV.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
        log_probs = (log_probs + beams["scores"][:, :, None]).reshape(batch, k * vocab)
        top_scores, top_index = jax.lax.top_k(log_probs, 2 * k)
        top_beam, top_token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        column = jnp.arange(total) == cur_len
        top_seqs = jnp.where(column, top_token[:, :, None], _gather(beams["seqs"], top_beam))
        finishing = (top_token == eos) | (cur_len + 1 >= total)

        running_scores = top_scores + finishing.astype(jnp.float32) * _NEG
        keep = jax.lax.top_k(running_scores, k)[1]
        new = dict(seqs=_gather(top_seqs, keep), scores=_gather(running_scores, keep))

        just_done = finishing & (jnp.arange(2 * k) < k)[None, :]  # only the top K candidates may finish
        done_scores = top_scores / penalties[cur_len + 1 - p]
        done_scores = done_scores + (~beams["open"][:, None]).astype(jnp.float32) * _NEG
        done_scores = done_scores + (~just_done).astype(jnp.float32) * _NEG
        merged_scores = jnp.concatenate([beams["done_scores"], done_scores], axis=1)
        best = jax.lax.top_k(merged_scores, k)[1]
        new["done_seqs"] = _gather(jnp.concatenate([beams["done_seqs"], top_seqs], axis=1), best)
        new["done_scores"] = _gather(merged_scores, best)
        new["done_flags"] = _gather(jnp.concatenate([beams["done_flags"], just_done], axis=1), best)

        best_possible = new["scores"][:, :1] / penalties[cur_len + 1 - p]
        worst_done = jnp.where(new["done_flags"], jnp.min(new["done_scores"], axis=1, keepdims=True), _NEG)
        new["open"] = beams["open"] & jnp.any(best_possible > worst_done, axis=1)
        return new, _gather(top_beam, keep), _gather(top_token, keep)

    def cond(carry):
        i, beams, _, _ = carry
        return (i < max_new_tokens - 1) & jnp.any(beams["open"])

    def body(carry):
        i, beams, logits_RV, cache = carry
        beams, source, token = step(beams, logits_RV, p + i)
        rows = (jnp.arange(batch)[:, None] * k + source).reshape(-1)
        logits_RV, cache = model.decode_step(token.reshape(-1), cache.reorder(rows))
        return i + 1, beams, logits_RV, cache

    i, beams, logits_RV, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), beams, logits[:, -1], cache))
    # The last step (at max length every candidate finishes); after an early stop it changes nothing: no row is open.
    beams, _, _ = step(beams, logits_RV, p + i)
    return beams["done_seqs"][:, 0], beams["done_scores"][:, 0]
