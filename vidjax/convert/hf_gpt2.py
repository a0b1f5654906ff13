"""Hugging Face GPT-2 checkpoints (`GPT2LMHeadModel`, `GPT2Model`, with or without cross-attention) -> vidjax's gpt2.

Layout facts this mapping relies on: GPT-2's projections are `Conv1D`s whose weights are stored (in, out), the
layout of a vidjax kernel, so nothing is transposed: the fused `attn.c_attn` (width, 3*width) splits its columns
into q, k, v, then heads, and becomes (width, 3, heads, head_dim); the cross-attention's `q_attn` (width, width)
reads the text and its `c_attn` (width, 2*width) the encoder states (k, v). The LM head is tied to `wte`: a
`lm_head.weight` in the file (older transformers write it) is only checked to equal `wte`. The causal-mask buffers
older versions saved (`attn.bias`, `attn.masked_bias`) carry no weights and are skipped.

`python -m vidjax.convert --from_hf SRC --out DST` converts a GPT-2 directory; `vidjax.pretrained.load(DST).model`
is the vidjax GPT-2. `hf_captioner` reuses `from_hf` for the decoder of a VisionEncoderDecoder checkpoint.
"""

from __future__ import annotations

import logging

import numpy as np

from vidjax.convert.common import ConversionError, Converted, TensorSource
from vidjax.models import gpt2

logger = logging.getLogger(__name__)

ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
_BUFFERS = ("attn.bias", "attn.masked_bias", "crossattention.bias", "crossattention.masked_bias")


def token_id(hf: dict, name: str, default: int) -> int:
    """Token id `name` of a config dict: `default` when unset, the first of a list (with a warning)."""
    value = hf.get(name)
    if isinstance(value, list):
        if len(value) > 1:
            logger.warning("config.json lists %d %ss %s; vidjax's decoding stops at one, the first (%d).",
                           len(value), name, value, value[0])
        value = value[0] if value else None
    return default if value is None else int(value)


def model_config(hf: dict):
    """config.json of a GPT-2 -> the `config.model` block of vidjax's gpt2, refusing what vidjax does not compute."""
    activation = hf.get("activation_function", "gelu_new")
    if activation not in (*_TANH_GELU, "gelu"):
        raise ConversionError(f"GPT-2 checkpoint uses activation_function={activation!r}; vidjax's GPT-2 implements "
                              f"{', '.join(_TANH_GELU)} (the tanh GELU) and 'gelu'.")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ConversionError("GPT-2 checkpoint scales attention scores other than by 1/sqrt(head_dim) "
                              "(scale_attn_weights=false or scale_attn_by_inverse_layer_idx=true); vidjax does not "
                              "implement that.")
    if not hf.get("tie_word_embeddings", True):
        raise ConversionError("GPT-2 checkpoint has an LM head untied from its token embeddings "
                              "(tie_word_embeddings=false); vidjax's GPT-2 ties them, as every published GPT-2 does.")
    width = hf.get("n_embd", hf.get("hidden_size", 768))
    eos = token_id(hf, "eos_token_id", -1)
    cfg = gpt2.default_config()
    cfg.update(dict(
        vocab_size=hf.get("vocab_size", 50257), n_positions=hf.get("n_positions", 1024), width=width,
        depth=hf.get("n_layer", 12), num_heads=hf.get("n_head", 12), mlp_dim=hf.get("n_inner") or 4 * width,
        activation="gelu" if activation == "gelu" else "gelu_new", layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        embd_dropout=float(hf.get("embd_pdrop", 0.1)), attn_dropout=float(hf.get("attn_pdrop", 0.1)),
        resid_dropout=float(hf.get("resid_pdrop", 0.1)),
        add_cross_attention=bool(hf.get("add_cross_attention", False)),
        cross_attention_width=width if hf.get("add_cross_attention", False) else 0,
        bos_token_id=token_id(hf, "bos_token_id", -1), eos_token_id=eos,
        pad_token_id=token_id(hf, "pad_token_id", eos),  # GPT-2 has no pad token: generate pads with EOS
    ))
    return cfg


def _norm(src: TensorSource, name: str, dim: int, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}/scale": src.take(f"{name}.weight", (dim,)), f"{dst}/bias": src.take(f"{name}.bias", (dim,))}


def _block(src: TensorSource, prefix: str, dim: int, heads: int, mlp: int, cross: bool) -> dict[str, np.ndarray]:
    """One GPT2Block -> vidjax gpt2.Block params (keys relative to the block)."""
    hd = dim // heads
    out = {}
    out.update(_norm(src, f"{prefix}ln_1", dim, "ln_1"))
    out["attn/qkv"] = src.take(f"{prefix}attn.c_attn.weight", (dim, 3 * dim)).reshape(dim, 3, heads, hd)
    out["attn/qkv_bias"] = src.take(f"{prefix}attn.c_attn.bias", (3 * dim,)).reshape(3, heads, hd)
    out["attn/proj"] = src.take(f"{prefix}attn.c_proj.weight", (dim, dim)).reshape(heads, hd, dim)
    out["attn/proj_bias"] = src.take(f"{prefix}attn.c_proj.bias", (dim,))
    if cross:
        c = f"{prefix}crossattention."
        out.update(_norm(src, f"{prefix}ln_cross_attn", dim, "ln_cross_attn"))
        out["crossattention/q"] = src.take(f"{c}q_attn.weight", (dim, dim)).reshape(dim, heads, hd)
        out["crossattention/q_bias"] = src.take(f"{c}q_attn.bias", (dim,)).reshape(heads, hd)
        out["crossattention/kv"] = src.take(f"{c}c_attn.weight", (dim, 2 * dim)).reshape(dim, 2, heads, hd)
        out["crossattention/kv_bias"] = src.take(f"{c}c_attn.bias", (2 * dim,)).reshape(2, heads, hd)
        out["crossattention/proj"] = src.take(f"{c}c_proj.weight", (dim, dim)).reshape(heads, hd, dim)
        out["crossattention/proj_bias"] = src.take(f"{c}c_proj.bias", (dim,))
    out.update(_norm(src, f"{prefix}ln_2", dim, "ln_2"))
    out["mlp/fc1/kernel"] = src.take(f"{prefix}mlp.c_fc.weight", (dim, mlp))
    out["mlp/fc1/bias"] = src.take(f"{prefix}mlp.c_fc.bias", (mlp,))
    out["mlp/fc2/kernel"] = src.take(f"{prefix}mlp.c_proj.weight", (mlp, dim))
    out["mlp/fc2/bias"] = src.take(f"{prefix}mlp.c_proj.bias", (dim,))
    return out


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a GPT-2 checkpoint onto `vidjax.models.gpt2`."""
    del architecture  # both take the same weights; the LM head is the token embedding
    cfg = model_config(hf)
    dim, depth, heads, mlp = cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim
    if dim % heads:
        raise ConversionError(f"GPT-2 checkpoint has n_embd={dim}, not divisible by n_head={heads}.")
    base = src.prefix_of("wte.weight")
    params = {"wte": src.take(f"{base}wte.weight", (cfg.vocab_size, dim)),
              "wpe": src.take(f"{base}wpe.weight", (cfg.n_positions, dim))}
    for i in range(depth):
        for k, v in _block(src, f"{base}h.{i}.", dim, heads, mlp, cfg.add_cross_attention).items():
            params[f"blocks/{i}/{k}"] = v
    params.update(_norm(src, f"{base}ln_f", dim, "ln_f"))
    if src.has("lm_head.weight"):
        head = src.take("lm_head.weight", (cfg.vocab_size, dim))
        if not np.array_equal(head, params["wte"]):
            raise ConversionError(f"{src.origin}: lm_head.weight differs from transformer.wte.weight although the "
                                  f"config ties them; vidjax's GPT-2 has one tied matrix.")
    for name in src.names():
        if name.endswith(_BUFFERS):
            src.mark_used(name)
    return Converted("gpt2", cfg, params, preprocessing={})

