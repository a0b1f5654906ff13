"""GPT-2: a causal transformer language model that can cross-attend to encoder tokens (a video captioner's decoder).

Layout and constants follow OpenAI's GPT-2 and its Hugging Face port (`GPT2LMHeadModel`): token (`wte`) plus learned
position (`wpe`) embeddings; pre-LN blocks x + Attn(ln_1(x)), [x + CrossAttn(ln_cross_attn(x), encoder)],
x + MLP(ln_2(x)); causal self-attention with scores scaled by 1/sqrt(head_dim); tanh-approximated GELU ("gelu_new");
a final LayerNorm `ln_f`; the LM head is `wte` itself (tied). With `add_cross_attention`, each block's cross-attention
projects its queries from the text and its keys/values from encoder states of width `cross_attention_width` (the
text width in Hugging Face's GPT-2, where a VisionEncoderDecoder adds `enc_to_dec_proj` when the widths differ).

Training and scoring call `model(input_ids, ...)` on whole sequences. Decoding (`vidjax.models.decoding`) uses a
fixed-shape KV cache (`Cache`): `init_cache` allocates (batch, max_length, heads, head_dim) keys and values per layer
and computes the encoder tokens' cross-attention keys/values once; `prefill` and `decode_step` write new positions
with `lax.dynamic_update_slice` at the cache's index, so a decoding loop jits with one set of shapes.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.models import Traits, layers

ACTIVATIONS = ("gelu_new", "gelu")  # tanh-approximated GELU (GPT-2), exact erf GELU
_INIT_STD = 0.02  # GPT-2's initializer_range
_MASKED = float(np.finfo(np.float32).min)


def _describe(cfg: ml_collections.ConfigDict, params: str) -> str:
    """What the convert command's summary says of a GPT-2: its size, vocabulary, width and cross-attention."""
    return (f"{params}, vocabulary {cfg.vocab_size}, width {cfg.width}, "
            f"{'with' if cfg.add_cross_attention else 'without'} cross-attention")


TRAITS = Traits(describe=_describe)


def _dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout with probability `rate`; the identity without a key (evaluation) or at rate 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _split(rng: jax.Array | None, n: int) -> tuple:
    return tuple(jax.random.split(rng, n)) if rng is not None else (None,) * n


def _param(rngs: nnx.Rngs, std: float, shape: tuple[int, ...], names: tuple[str | None, ...],
           view: tuple[int, ...] | None = None) -> nnx.Param:
    """A normal(0, std) parameter drawn over the 2-D `shape` (as GPT-2 draws its Conv1D weights), stored as `view`."""
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.reshape(view or shape), out_sharding=names)


def _zeros(shape: tuple[int, ...], names: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=names)


def attend(q_BTHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array, mask: jax.Array | None, *,
           dropout: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
    """Softmax attention of queries over keys, scores and softmax in float32.

    `mask` (bool, broadcastable to (batch, heads, T, S), True = attend) hides keys with the most negative float32,
    as Hugging Face does, so a row with nothing to attend stays finite. The query batch may be a multiple G of the
    key batch (beams sharing one encoder row's keys): query rows b*G .. b*G+G-1 attend to key row b.
    """
    b, t, h, d = q_BTHK.shape
    groups = b // k_BSHK.shape[0]
    q = q_BTHK.reshape(k_BSHK.shape[0], groups * t, h, d)
    scores = jnp.einsum("bthk,bshk->bhts", q, k_BSHK, preferred_element_type=jnp.float32) / math.sqrt(d)
    if mask is not None:
        scores = jnp.where(mask, scores, _MASKED)
    probs = _dropout(jax.nn.softmax(scores, axis=-1), dropout, rng)
    out = jnp.einsum("bhts,bshk->bthk", probs.astype(v_BSHK.dtype), v_BSHK)
    return out.reshape(b, t, h, d)


class SelfAttention(nnx.Module):
    """Causal multi-head self-attention: one fused qkv projection (GPT-2's `c_attn`) and an output projection."""

    def __init__(self, width: int, num_heads: int, *, proj_std: float, dropout: float, resid_dropout: float,
                 dtype, choices: platform.Choices | None = None, rngs: nnx.Rngs):
        head_dim = width // num_heads
        self.projection_form = platform.given(choices).need("projection_form")
        self.qkv = _param(rngs, _INIT_STD, (width, 3 * width), ("embed", None, "heads", "head_dim"),
                          (width, 3, num_heads, head_dim))
        self.qkv_bias = _zeros((3, num_heads, head_dim), (None, "heads", "head_dim"))
        self.proj = _param(rngs, proj_std, (width, width), ("heads", "head_dim", "embed"),
                           (num_heads, head_dim, width))
        self.proj_bias = _zeros((width,), ("embed",))
        self.dropout, self.resid_dropout, self.dtype = dropout, resid_dropout, dtype

    def qkv_heads(self, x_BTD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        dt = self.dtype
        qkv = layers.project(x_BTD.astype(dt), self.qkv[...], form=self.projection_form) + \
            self.qkv_bias[...].astype(dt)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def output(self, out_BTHK: jax.Array, rng: jax.Array | None) -> jax.Array:
        dt = self.dtype
        y = layers.project(out_BTHK.astype(dt), self.proj[...], 2, form=self.projection_form) + \
            self.proj_bias[...].astype(dt)
        return _dropout(y, self.resid_dropout, rng)

    def __call__(self, x_BTD: jax.Array, mask: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        rng_attn, rng_out = _split(rng, 2)
        q, k, v = self.qkv_heads(x_BTD)
        return self.output(attend(q, k, v, mask, dropout=self.dropout, rng=rng_attn), rng_out)


class CrossAttention(nnx.Module):
    """Multi-head attention from text queries (`q`, GPT-2's `q_attn`) to encoder keys/values (`kv`, its `c_attn`)."""

    def __init__(self, width: int, encoder_width: int, num_heads: int, *, proj_std: float, dropout: float,
                 resid_dropout: float, dtype, choices: platform.Choices | None = None, rngs: nnx.Rngs):
        head_dim = width // num_heads
        self.projection_form = platform.given(choices).need("projection_form")
        self.q = _param(rngs, _INIT_STD, (width, width), ("embed", "heads", "head_dim"), (width, num_heads, head_dim))
        self.q_bias = _zeros((num_heads, head_dim), ("heads", "head_dim"))
        self.kv = _param(rngs, _INIT_STD, (encoder_width, 2 * width), ("embed", None, "heads", "head_dim"),
                         (encoder_width, 2, num_heads, head_dim))
        self.kv_bias = _zeros((2, num_heads, head_dim), (None, "heads", "head_dim"))
        self.proj = _param(rngs, proj_std, (width, width), ("heads", "head_dim", "embed"),
                           (num_heads, head_dim, width))
        self.proj_bias = _zeros((width,), ("embed",))
        self.dropout, self.resid_dropout, self.dtype = dropout, resid_dropout, dtype

    def keys_values(self, enc_BSE: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The encoder tokens' keys and values, each (batch, tokens, heads, head_dim)."""
        dt = self.dtype
        kv = layers.project(enc_BSE.astype(dt), self.kv[...], form=self.projection_form) + \
            self.kv_bias[...].astype(dt)
        return kv[:, :, 0], kv[:, :, 1]

    def __call__(self, x_BTD: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array | None,
                 rng: jax.Array | None = None) -> jax.Array:
        dt = self.dtype
        rng_attn, rng_out = _split(rng, 2)
        form = self.projection_form
        q = layers.project(x_BTD.astype(dt), self.q[...], form=form) + self.q_bias[...].astype(dt)
        out = attend(q, keys, values, mask, dropout=self.dropout, rng=rng_attn)
        y = layers.project(out.astype(dt), self.proj[...], 2, form=form) + self.proj_bias[...].astype(dt)
        return _dropout(y, self.resid_dropout, rng_out)


class Mlp(nnx.Module):
    """GPT-2's MLP: width -> mlp_dim -> width with GELU between (tanh form for "gelu_new")."""

    def __init__(self, width: int, mlp_dim: int, *, approximate_gelu: bool, proj_std: float, dropout: float, dtype,
                 choices: platform.Choices | None = None, rngs: nnx.Rngs):
        choices = platform.given(choices)
        self.fc1 = layers.Dense(width, mlp_dim, ("embed", "mlp"), dtype=dtype,
                                kernel_init=nnx.initializers.normal(_INIT_STD), choices=choices, rngs=rngs)
        self.fc2 = layers.Dense(mlp_dim, width, ("mlp", "embed"), dtype=dtype,
                                kernel_init=nnx.initializers.normal(proj_std), choices=choices, rngs=rngs)
        self.approximate_gelu, self.dropout = approximate_gelu, dropout
        self.backward = choices.need("backward")

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        hidden = layers.gelu(self.fc1(x), approximate=self.approximate_gelu, backward=self.backward)
        return _dropout(self.fc2(hidden), self.dropout, rng)


def causal_mask(query_positions: jax.Array, num_keys: int) -> jax.Array:
    """(1, 1, T, S) bool: query at position p sees keys 0..p."""
    return (jnp.arange(num_keys)[None, :] <= query_positions[:, None])[None, None]


def _key_mask(mask_BS: jax.Array | None) -> jax.Array | None:
    """(B, S) padding mask (True / 1 = a real token) -> (B, 1, 1, S) bool."""
    return None if mask_BS is None else mask_BS.astype(bool)[:, None, None, :]


class Block(nnx.Module):
    """Pre-LN GPT-2 block: self-attention, optional cross-attention to encoder tokens, MLP; each a residual branch."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, encoder_width: int, choices: platform.Choices | None = None,
                 rngs: nnx.Rngs):
        width, heads, dtype = cfg.width, cfg.num_heads, jnp.dtype(cfg.dtype)
        if choices is None:
            choices = platform.choices(cfg, platform.TEXT_FIELDS)
        proj_std = _INIT_STD / math.sqrt(2 * cfg.depth)  # GPT-2's scaled init of the residual projections
        self.ln_1 = layers.LayerNorm(width, cfg.layer_norm_eps, choices=choices, rngs=rngs)
        self.attn = SelfAttention(width, heads, proj_std=proj_std, dropout=cfg.attn_dropout,
                                  resid_dropout=cfg.resid_dropout, dtype=dtype, choices=choices, rngs=rngs)
        if cfg.add_cross_attention:
            self.ln_cross_attn = layers.LayerNorm(width, cfg.layer_norm_eps, choices=choices, rngs=rngs)
            self.crossattention = CrossAttention(width, encoder_width, heads, proj_std=proj_std,
                                                 dropout=cfg.attn_dropout, resid_dropout=cfg.resid_dropout,
                                                 dtype=dtype, choices=choices, rngs=rngs)
        else:
            self.crossattention = None
        self.ln_2 = layers.LayerNorm(width, cfg.layer_norm_eps, choices=choices, rngs=rngs)
        self.mlp = Mlp(width, cfg.mlp_dim or 4 * width, approximate_gelu=cfg.activation == "gelu_new",
                       proj_std=proj_std, dropout=cfg.resid_dropout, dtype=dtype, choices=choices, rngs=rngs)

    def _cross_and_mlp(self, x, keys, values, encoder_mask, rng_cross, rng_mlp):
        if self.crossattention is not None:
            x = x + self.crossattention(self.ln_cross_attn(x), keys, values, encoder_mask, rng_cross)
        return x + self.mlp(self.ln_2(x), rng_mlp)

    def __call__(self, x_BTD: jax.Array, attention_mask: jax.Array | None, encoder_BSE: jax.Array | None,
                 encoder_mask: jax.Array | None, rng: jax.Array | None = None) -> tuple:
        """Whole sequences (training, scoring). Returns its inputs with x updated, as `layers.run_blocks` expects."""
        rng_attn, rng_cross, rng_mlp = _split(rng, 3)
        mask = causal_mask(jnp.arange(x_BTD.shape[1]), x_BTD.shape[1])
        if attention_mask is not None:
            mask = mask & _key_mask(attention_mask)
        x = x_BTD + self.attn(self.ln_1(x_BTD), mask, rng_attn)
        keys = values = None
        if self.crossattention is not None:
            keys, values = self.crossattention.keys_values(encoder_BSE)
        x = self._cross_and_mlp(x, keys, values, _key_mask(encoder_mask), rng_cross, rng_mlp)
        return x, attention_mask, encoder_BSE, encoder_mask

    def extend(self, x_BTD: jax.Array, cache_k: jax.Array, cache_v: jax.Array, index: jax.Array,
               cross_k: jax.Array | None, cross_v: jax.Array | None, encoder_mask: jax.Array | None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """T new positions starting at `index`: their keys/values written into this layer's cache, then attention
        over every cached position up to each query's own."""
        q, k, v = self.attn.qkv_heads(self.ln_1(x_BTD))
        cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, index, 0, 0))
        cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, index, 0, 0))
        mask = causal_mask(index + jnp.arange(x_BTD.shape[1]), cache_k.shape[1])
        x = x_BTD + self.attn.output(attend(q, cache_k, cache_v, mask), None)
        x = self._cross_and_mlp(x, cross_k, cross_v, _key_mask(encoder_mask), None, None)
        return x, cache_k, cache_v


@flax.struct.dataclass
class Cache:
    """Decoding state of a `Model`: fixed-shape self-attention keys/values and the encoder's cross-attention ones.

    keys, values: per layer (batch, max_length, heads, head_dim), positions [0, index) filled.
    cross_keys, cross_values: per layer (encoder batch, tokens, heads, head_dim), empty without cross-attention;
    the batch may be a multiple of the encoder batch (beams): rows b*G .. b*G+G-1 share encoder row b.
    encoder_mask: (encoder batch, tokens) bool or None (every token real).
    index: int32 scalar, the next position to write.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    cross_keys: tuple[jax.Array, ...]
    cross_values: tuple[jax.Array, ...]
    encoder_mask: jax.Array | None
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[1]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def reorder(self, rows: jax.Array) -> Cache:
        """The cache of sequences `rows` (batch,) of this one (beam search's survivors). Cross-attention entries are
        kept: `rows` must stay within each encoder row's group, as beams of one input do."""
        keys, values = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), (self.keys, self.values))
        return self.replace(keys=keys, values=values)


class Model(nnx.Module):
    """GPT-2 language model, optionally conditioned on encoder tokens through cross-attention.

    `model(input_ids, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None, rng=None)` ->
    {"logits" (B, T, vocab) float32, "last_hidden_state" (B, T, width)}. `attention_mask` (B, T), 1 = token, 0 =
    padding, hides padded keys; `encoder_attention_mask` (B, S) does the same for encoder tokens. Dropout runs when
    `rng` is given. Decoding: `init_cache`, `prefill`, `decode_step` (see `Cache`), or `vidjax.models.decoding`.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.width % cfg.num_heads:
            raise ValueError(f"config.model.width={cfg.width} is not divisible by num_heads={cfg.num_heads}.")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"config.model.activation={cfg.activation!r}; choose one of {', '.join(ACTIVATIONS)}.")
        self.vocab_size, self.n_positions, self.width = cfg.vocab_size, cfg.n_positions, cfg.width
        self.num_heads, self.head_dim = cfg.num_heads, cfg.width // cfg.num_heads
        self.add_cross_attention = bool(cfg.add_cross_attention)
        self.cross_attention_width = (cfg.cross_attention_width or cfg.width) if self.add_cross_attention else 0
        self.bos_token_id, self.eos_token_id, self.pad_token_id = cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id
        self.embd_dropout = cfg.embd_dropout
        self.dtype = jnp.dtype(cfg.dtype)
        self.remat, self.scan = layers.check_remat(cfg.remat), bool(cfg.scan_layers)
        # The platform values (backward, projection_form, block_gradients; "auto" resolved here unless the config
        # was resolved at set-up, vidjax/platform.py), handed to every layer.
        choices = platform.choices(cfg, platform.TEXT_FIELDS)
        self.block_gradients = choices.block_gradients
        self.wte = _param(rngs, _INIT_STD, (cfg.vocab_size, cfg.width), (None, "embed"))
        self.wpe = _param(rngs, _INIT_STD, (cfg.n_positions, cfg.width), ("positions", "embed"))
        encoder_width = self.cross_attention_width
        self.blocks = layers.make_blocks(
            lambda _, rngs: Block(cfg, encoder_width=encoder_width, choices=choices, rngs=rngs), [0.0] * cfg.depth,
            scan=self.scan, rngs=rngs)
        self.ln_f = layers.LayerNorm(cfg.width, cfg.layer_norm_eps, choices=choices, rngs=rngs)

    # ---------------------------------------------------------------------------------------------- checks

    def _check_encoder(self, encoder_hidden_states, batch: int) -> None:
        if not self.add_cross_attention:
            if encoder_hidden_states is not None:
                raise ValueError("This GPT-2 has no cross-attention (config.model.add_cross_attention=False), so it "
                                 "cannot take encoder_hidden_states; convert or build one with cross-attention.")
            return
        if encoder_hidden_states is None:
            raise ValueError(f"This GPT-2 cross-attends to encoder tokens: pass encoder_hidden_states (batch, tokens, "
                             f"{self.cross_attention_width}).")
        shape = tuple(encoder_hidden_states.shape)
        if len(shape) != 3 or shape[-1] != self.cross_attention_width:
            raise ValueError(f"GPT-2 cross-attention takes encoder states of width {self.cross_attention_width} "
                             f"(config.model.cross_attention_width), shaped (batch, tokens, "
                             f"{self.cross_attention_width}); got {shape}, width {shape[-1]}. Project the encoder's "
                             f"output to width {self.cross_attention_width} first (as VisionEncoderDecoder's "
                             f"enc_to_dec_proj does), or build the decoder with cross_attention_width={shape[-1]}.")
        if batch % shape[0]:
            raise ValueError(f"{batch} sequences cannot share {shape[0]} encoder rows: the text batch must be a "
                             f"multiple of the encoder batch (beams of one input next to each other).")

    def _check_ids(self, input_ids) -> None:
        if np.ndim(input_ids) != 2:
            raise ValueError(f"GPT-2 takes token ids shaped (batch, length); got shape {tuple(np.shape(input_ids))}.")

    # ---------------------------------------------------------------------------------------- whole sequences

    def embed(self, input_ids: jax.Array, positions: jax.Array) -> jax.Array:
        wte, wpe = self.wte[...].astype(self.dtype), self.wpe[...].astype(self.dtype)
        return jnp.take(wte, input_ids, axis=0) + jnp.take(wpe, positions, axis=0)

    def logits(self, hidden_BTD: jax.Array) -> jax.Array:
        """The tied LM head: final hidden states -> float32 logits over the vocabulary."""
        return jnp.einsum("btd,vd->btv", hidden_BTD, self.wte[...].astype(hidden_BTD.dtype),
                          preferred_element_type=jnp.float32)

    def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None, encoder_attention_mask: jax.Array | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        self._check_ids(input_ids)
        b, t = input_ids.shape
        if t > self.n_positions:
            raise ValueError(f"Sequences of {t} tokens exceed this GPT-2's {self.n_positions} positions.")
        self._check_encoder(encoder_hidden_states, b)
        rng_embed, rng_blocks = _split(rng, 2)
        x = _dropout(self.embed(input_ids, jnp.arange(t)), self.embd_dropout, rng_embed)
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.astype(self.dtype)
        mask = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        enc_mask = None if encoder_attention_mask is None else jnp.asarray(encoder_attention_mask).astype(bool)
        x, *_ = layers.run_blocks(self.blocks, (x, mask, encoder_hidden_states, enc_mask), rng_blocks,
                                  remat=self.remat, scan=self.scan, block_gradients=self.block_gradients)
        hidden = self.ln_f(x)
        return {"logits": self.logits(hidden), "last_hidden_state": hidden}

    # ------------------------------------------------------------------------------------------- decoding

    def init_cache(self, batch_size: int, max_length: int, encoder_hidden_states: jax.Array | None = None,
                   encoder_attention_mask: jax.Array | None = None) -> Cache:
        """An empty cache for `batch_size` sequences of up to `max_length` positions, with the encoder tokens'
        cross-attention keys/values computed once (`batch_size` a multiple of their batch: beams share them)."""
        if max_length > self.n_positions:
            raise ValueError(f"A cache of {max_length} positions exceeds this GPT-2's {self.n_positions} positions; "
                             f"ask for fewer new tokens or a shorter prompt.")
        self._check_encoder(encoder_hidden_states, batch_size)
        shape = (batch_size, max_length, self.num_heads, self.head_dim)
        empty = tuple(jnp.zeros(shape, self.dtype) for _ in self.blocks)
        cross_k, cross_v, enc_mask = (), (), None
        if encoder_hidden_states is not None:
            enc = encoder_hidden_states.astype(self.dtype)
            cross_k, cross_v = zip(*(block.crossattention.keys_values(enc) for block in self.blocks), strict=True)
            if encoder_attention_mask is not None:
                enc_mask = jnp.asarray(encoder_attention_mask).astype(bool)
        return Cache(keys=empty, values=empty, cross_keys=tuple(cross_k), cross_values=tuple(cross_v),
                     encoder_mask=enc_mask, index=jnp.zeros((), jnp.int32))

    def prefill(self, input_ids: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """Runs (batch, T) tokens at positions cache.index .. index+T-1 (every row the same length, no padding):
        float32 logits (batch, T, vocab) and the cache with those positions written."""
        self._check_ids(input_ids)
        b, t = input_ids.shape
        if b != cache.batch_size:
            raise ValueError(f"{b} sequences for a cache of {cache.batch_size}.")
        if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) + t > cache.max_length:
            raise ValueError(f"Writing {t} positions at {int(cache.index)} overflows a cache of {cache.max_length}.")
        x = self.embed(input_ids, cache.index + jnp.arange(t))
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            cross_k = cache.cross_keys[i] if cache.cross_keys else None
            cross_v = cache.cross_values[i] if cache.cross_values else None
            x, k, v = block.extend(x, cache.keys[i], cache.values[i], cache.index, cross_k, cross_v,
                                   cache.encoder_mask)
            keys.append(k)
            values.append(v)
        logits = self.logits(self.ln_f(x))
        return logits, cache.replace(keys=tuple(keys), values=tuple(values), index=cache.index + t)

    def decode_step(self, token_ids: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """One new token per sequence (batch,): float32 logits (batch, vocab) of the next one, and the cache."""
        logits, cache = self.prefill(token_ids[:, None], cache)
        return logits[:, 0], cache


def default_config() -> ml_collections.ConfigDict:
    """The model block of a GPT-2 config: GPT-2 small (124M), the size of Hugging Face's `gpt2` checkpoint."""
    return ml_collections.ConfigDict(dict(
        vocab_size=50257,
        n_positions=1024,
        width=768,  # n_embd
        depth=12,  # n_layer
        num_heads=12,  # n_head
        mlp_dim=0,  # n_inner; 0 = 4 x width
        activation="gelu_new",  # gelu_new: tanh-approximated GELU, as GPT-2; gelu: exact erf
        layer_norm_eps=1e-5,
        embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1,  # embd_pdrop, attn_pdrop, resid_pdrop
        add_cross_attention=False,
        cross_attention_width=0,  # width of the encoder states cross-attention reads; 0 = width (as Hugging Face)
        bos_token_id=50256, eos_token_id=50256,  # eos -1: decoding never stops early
        pad_token_id=50256,  # written after a finished sequence's EOS; GPT-2 has none, so EOS by convention
        dtype="float32",
        # remat, scan_layers (decoding unrolls stacked blocks, each block's parameters sliced out of the stack) and the
        # platform choices
        **layers.run_defaults(platform.TEXT_FIELDS),
    ))
