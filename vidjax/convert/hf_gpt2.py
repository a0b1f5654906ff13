"""Hugging Face GPT-2 checkpoints (`GPT2LMHeadModel`, `GPT2Model`, with or without cross-attention) -> vidjax's gpt2.

Layout facts this mapping relies on: GPT-2's projections are `Conv1D`s whose weights are stored (in, out), the
layout of a vidjax kernel, so nothing is transposed: the fused `attn.c_attn` (width, 3*width) splits its columns
into q, k, v, then heads, and becomes (width, 3, heads, head_dim); the cross-attention's `q_attn` (width, width)
reads the text and its `c_attn` (width, 2*width) the encoder states (k, v). The LM head is tied to `wte`: a
`lm_head.weight` in the file (older transformers write it) is only checked to equal `wte`. The causal-mask buffers
older versions saved (`attn.bias`, `attn.masked_bias`) carry no weights and are skipped.

`python -m vidjax.convert --from_hf SRC --out DST` converts a GPT-2 directory; `vidjax.pretrained.load(DST).model`
is the vidjax GPT-2. `hf_captioner` reuses `from_hf` for the decoder of a VisionEncoderDecoder checkpoint. Both
directions use one table (`tensors`): `to_hf` writes a vidjax GPT-2 back as a GPT2LMHeadModel.
"""

from __future__ import annotations

import logging

import numpy as np

from vidjax.convert.common import (
    ConversionError,
    Converted,
    HfCheckpoint,
    Tensor,
    TensorSource,
    layer_norm,
    prefixed,
    read_tensors,
    write_tensors,
)
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


def _block(dim: int, heads: int, mlp: int, cross: bool) -> list[Tensor]:
    """One GPT2Block <-> a vidjax gpt2.Block (names relative to each). Conv1D weights are (in, out): no transposes."""
    hd = dim // heads
    rows = layer_norm("ln_1", "ln_1", dim) + [
        Tensor("attn/qkv", ("attn.c_attn.weight",), (dim, 3 * dim), part=(dim, 3, heads, hd)),
        Tensor("attn/qkv_bias", ("attn.c_attn.bias",), (3 * dim,), part=(3, heads, hd)),
        Tensor("attn/proj", ("attn.c_proj.weight",), (dim, dim), part=(heads, hd, dim)),
        Tensor("attn/proj_bias", ("attn.c_proj.bias",), (dim,))]
    if cross:
        c = "crossattention."
        rows += layer_norm("ln_cross_attn", "ln_cross_attn", dim) + [
            Tensor("crossattention/q", (f"{c}q_attn.weight",), (dim, dim), part=(dim, heads, hd)),
            Tensor("crossattention/q_bias", (f"{c}q_attn.bias",), (dim,), part=(heads, hd)),
            Tensor("crossattention/kv", (f"{c}c_attn.weight",), (dim, 2 * dim), part=(dim, 2, heads, hd)),
            Tensor("crossattention/kv_bias", (f"{c}c_attn.bias",), (2 * dim,), part=(2, heads, hd)),
            Tensor("crossattention/proj", (f"{c}c_proj.weight",), (dim, dim), part=(heads, hd, dim)),
            Tensor("crossattention/proj_bias", (f"{c}c_proj.bias",), (dim,))]
    return rows + layer_norm("ln_2", "ln_2", dim) + [
        Tensor("mlp/fc1/kernel", ("mlp.c_fc.weight",), (dim, mlp)), Tensor("mlp/fc1/bias", ("mlp.c_fc.bias",), (mlp,)),
        Tensor("mlp/fc2/kernel", ("mlp.c_proj.weight",), (mlp, dim)),
        Tensor("mlp/fc2/bias", ("mlp.c_proj.bias",), (dim,))]


def tensors(cfg, base: str) -> list[Tensor]:
    """The table of a GPT-2 with vidjax config `cfg`, both directions; `base` is the prefix of the transformer in the
    checkpoint ("transformer." in a GPT2LMHeadModel, "" in a GPT2Model). The tied LM head has no row."""
    dim, mlp = cfg.width, cfg.mlp_dim or 4 * cfg.width
    rows = [Tensor("wte", (f"{base}wte.weight",), (cfg.vocab_size, dim)),
            Tensor("wpe", (f"{base}wpe.weight",), (cfg.n_positions, dim))]
    block = _block(dim, cfg.num_heads, mlp, cfg.add_cross_attention)
    for i in range(cfg.depth):
        rows += prefixed(block, f"blocks/{i}/", f"{base}h.{i}.")
    return rows + layer_norm("ln_f", f"{base}ln_f", dim)


def from_hf(hf: dict, src: TensorSource, architecture: str) -> Converted:
    """Maps a GPT-2 checkpoint onto `vidjax.models.gpt2`."""
    del architecture  # both take the same weights; the LM head is the token embedding
    cfg = model_config(hf)
    if cfg.width % cfg.num_heads:
        raise ConversionError(f"GPT-2 checkpoint has n_embd={cfg.width}, not divisible by n_head={cfg.num_heads}.")
    params = read_tensors(src, tensors(cfg, src.prefix_of("wte.weight")))
    if src.has("lm_head.weight"):
        head = src.take("lm_head.weight", (cfg.vocab_size, cfg.width))
        if not np.array_equal(head, params["wte"]):
            raise ConversionError(f"{src.origin}: lm_head.weight differs from transformer.wte.weight although the "
                                  f"config ties them; vidjax's GPT-2 has one tied matrix.")
    for name in src.names():
        if name.endswith(_BUFFERS):
            src.mark_used(name)
    return Converted("gpt2", cfg, params, preprocessing={})


def _optional_id(value: int) -> int | None:
    return None if value < 0 else int(value)


def special_tokens(cfg) -> dict[str, int | None]:
    """bos / eos / pad token ids of a vidjax GPT-2 config as transformers names them (None: unset; pad None when it
    is EOS, GPT-2's convention, so `generate` pads with EOS as vidjax does)."""
    eos = _optional_id(cfg.eos_token_id)
    pad = _optional_id(cfg.pad_token_id)
    return dict(bos_token_id=_optional_id(cfg.bos_token_id), eos_token_id=eos, pad_token_id=None if pad == eos else pad)


def hf_config(cfg) -> dict:
    """config.json's model fields (GPT2Config) of a vidjax GPT-2 config; the inverse of `model_config`."""
    if cfg.add_cross_attention and cfg.cross_attention_width not in (0, cfg.width):
        raise ConversionError(f"this GPT-2's cross-attention reads states {cfg.cross_attention_width} wide, not its "
                              f"own width {cfg.width}; transformers' GPT-2 has no class for that (its cross-attention "
                              f"reads states of its own width).")
    mlp = cfg.mlp_dim or 4 * cfg.width
    return dict(model_type="gpt2", vocab_size=int(cfg.vocab_size), n_positions=int(cfg.n_positions),
                n_embd=int(cfg.width), n_layer=int(cfg.depth), n_head=int(cfg.num_heads),
                n_inner=None if mlp == 4 * cfg.width else int(mlp), activation_function=cfg.activation,
                resid_pdrop=float(cfg.resid_dropout), embd_pdrop=float(cfg.embd_dropout),
                attn_pdrop=float(cfg.attn_dropout), layer_norm_epsilon=float(cfg.layer_norm_eps),
                initializer_range=0.02, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                reorder_and_upcast_attn=False, use_cache=True, tie_word_embeddings=True,
                # GPT2Config's defaults for the heads vidjax does not have (GPT2DoubleHeadsModel's summary)
                summary_type="cls_index", summary_use_proj=True, summary_activation=None, summary_proj_to_labels=True,
                summary_first_dropout=0.1,
                add_cross_attention=bool(cfg.add_cross_attention), **special_tokens(cfg))


def to_hf(converted: Converted) -> HfCheckpoint:
    """A vidjax GPT-2 -> GPT2LMHeadModel (its LM head tied to the token embedding, so not stored)."""
    cfg = converted.model_config
    config = hf_config(cfg)
    generation = {k: v for k, v in special_tokens(cfg).items() if v is not None}
    return HfCheckpoint(ARCHITECTURES[0], config, write_tensors(converted.params, tensors(cfg, "transformer."),
                                                                "GPT-2"), processor="", generation=generation)
