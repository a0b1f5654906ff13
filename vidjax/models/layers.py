"""Transformer building blocks shared by vidjax's video models.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `head_dim`, ...); `vidjax.sharding` maps them to
mesh axes with the rules in the config. Models are built with eager sharding off so that the same module code
serves one CPU and a pod slice: shardings are applied by the trainer's jitted init.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.config_lib import ConfigError
from vidjax.ops import attention
from vidjax.sharding import BATCH_AXES, constrain, token_names

# ViT sizes: name -> (width, depth, heads). Ti/S/B/L/H as in the ViT and VideoMAE papers; g (giant, used with
# patch 14) as in VideoMAE V2 and Zhai et al.'s scaling study; "Mu" (micro) is vidjax's own tiny size for laptop runs
# and tests.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "Mu": (96, 4, 3),
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
    "g": (1408, 40, 16),
}
# MLP widths that are not 4 x width: ViT-g's is 1408 x 48/11 = 6144 (VideoMAE V2's mlp_ratio=48/11).
VIT_MLP_DIMS: dict[str, int] = {"g": 6144}

# config.model.remat -> what a block keeps for the backward pass: "none" keeps every activation (fastest, most
# memory); "full" keeps only the block's input and recomputes the rest; "dots_saveable" keeps matmul outputs and
# recomputes the cheap elementwise ops (norms, GELU, softmax) between them.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}

_VARIANT_RE = re.compile(r"^([A-Za-z]+)/(\d+)$")


def parse_variant(variant: str, sizes: Mapping[str, object] = VIT_SIZES) -> tuple[str, int]:
    """Splits a variant string such as "B/16" into (size name, patch size), with a clear error if malformed.

    `sizes` is the table of valid size names: ViT sizes by default, another model family's table otherwise.
    """
    match = _VARIANT_RE.match(str(variant).strip())
    if not match or match.group(1) not in sizes:
        example = f"{list(sizes)[len(sizes) // 2]}/16"  # a mid-size name: B/16 for ViT, S/16 for VideoMamba
        raise ConfigError(
            f"Unknown model variant {variant!r}: expected SIZE/PATCH with SIZE one of "
            f"{', '.join(sizes)} and PATCH an integer, e.g. '{example}'."
        )
    return match.group(1), int(match.group(2))


@functools.lru_cache(maxsize=64)
def sincos_table(num_positions: int, dim: int) -> np.ndarray:
    """Fixed 1-D sin-cos position table (num_positions, dim), the layout of the VideoMAE reference.

    Column j uses frequency 10000^(-2*(j//2)/dim); even columns hold the sine, odd columns the cosine.
    Computed in float64 then cast, as the reference does, so converted checkpoints match bit for bit. Cached, and
    read-only, because every forward pass asks for it.
    """
    position = np.arange(num_positions, dtype=np.float64)[:, None]
    exponent = 2 * (np.arange(dim) // 2) / dim
    angles = position / np.power(10000.0, exponent)[None, :]
    table = np.empty_like(angles)
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    table = table.astype(np.float32)
    table.flags.writeable = False
    return table


# How a model's learned position tables start (config.model.position_init); both stay learned parameters.
POSITION_INITS = ("reference", "sincos")


def position_init(kind: str, reference, leading: int = 0):
    """The initializer of a learned position table (rows, dim): the published model's own (`reference`), or
    "sincos": `leading` zero rows (CLS tokens) then the fixed sin-cos table of `sincos_table` over the other rows.

    Why the choice: the references draw their tables N(0, 0.02) or start time tables at zero, which carries almost
    no position or frame-order signal next to patch embeddings of unit scale. That is harmless when the spatial
    table comes from an image checkpoint, but a video model trained from scratch then sees its frames as an
    unordered set until the tables have grown, and motion direction (which needs frame order) stays unreadable:
    the micro runlocal TimeSformer, ViViT and VideoMamba stayed at chance. A sin-cos start (VideoMAE's fixed
    table, here only the start) gives order from the first step.
    """
    if kind not in POSITION_INITS:
        raise ConfigError(f"config.model.position_init={kind!r}; choose one of {', '.join(POSITION_INITS)}.")
    if kind == "reference":
        return reference

    def init(key, shape, dtype=jnp.float32):
        del key  # deterministic
        rows, dim = shape
        table = np.concatenate([np.zeros((int(leading), dim), np.float32), sincos_table(rows - int(leading), dim)])
        return jnp.asarray(table, dtype)

    return init


_xavier = nnx.initializers.xavier_uniform()


def _param(rngs: nnx.Rngs, init, shape: Sequence[int], names: Sequence[str | None]) -> nnx.Param:
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=tuple(names))


class Dense(nnx.Module):
    """Linear layer over the last axis with logical axis names on its kernel and bias.

    `choices` (`platform.Choices`, the model's; None: this machine's defaults) gives its `projection_form`."""

    def __init__(self, in_dim: int, out_dim: int, names: tuple[str | None, str | None], *, use_bias: bool = True,
                 dtype=jnp.float32, kernel_init=_xavier, choices: platform.Choices | None = None, rngs: nnx.Rngs):
        self.kernel = _param(rngs, kernel_init, (in_dim, out_dim), names)
        self.bias = _param(rngs, nnx.initializers.zeros, (out_dim,), names[1:]) if use_bias else None
        self.dtype = dtype
        self.projection_form = platform.given(choices).need("projection_form")

    def __call__(self, x: jax.Array, outputs: Callable | None = None) -> jax.Array:
        """`outputs`: a reordering of the output axis (a function of arrays over it), made on the weights."""
        kernel = self.kernel[...] if outputs is None else outputs(self.kernel[...])
        y = project(x.astype(self.dtype), kernel, form=self.projection_form)
        if self.bias is not None:
            y = y + (self.bias[...] if outputs is None else outputs(self.bias[...])).astype(self.dtype)
        return y


def softmax_pool(scores_BN: jax.Array, x_BND: jax.Array) -> jax.Array:
    """(B, N, D) tokens -> (B, D) float32: their average weighted by a softmax of `scores_BN` over the tokens, the
    learned token pooling of the captioner's pooled visual token."""
    weights_BN = jax.nn.softmax(scores_BN.astype(jnp.float32), axis=-1)
    return jnp.einsum("bn,bnd->bd", weights_BN, x_BND.astype(jnp.float32))


def _contract(x: jax.Array, kernel: jax.Array, contract: int, form: str) -> jax.Array:
    """x (..., *kernel.shape[:contract]) times `kernel`: one 2-D product of the flattened operands for `form` "flat",
    the multi-axis contraction for "multi_axis" (`project`)."""
    if form != "flat":
        return jnp.tensordot(x, kernel, axes=contract)
    inner = math.prod(kernel.shape[:contract])
    out = kernel.shape[contract:]
    y = jnp.dot(x.reshape(*x.shape[:x.ndim - contract], inner), kernel.reshape(inner, math.prod(out)))
    return y.reshape(*x.shape[:x.ndim - contract], *out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _project_vjp(x, kernel, contract, form):
    return _contract(x, kernel.astype(x.dtype), contract, form)


def _project_forward(x, kernel, contract, form):
    return _contract(x, kernel.astype(x.dtype), contract, form), (x, kernel)


def _project_backward(contract, form, residuals, dy):
    """dx = dy . kernel over the output axes, dkernel = x . dy over the leading ones, both from the kernel as stored
    (cast and reshaped again here: cheap, and it is what keeps the forward from saving a copy)."""
    x, kernel = residuals
    k = kernel.astype(x.dtype)
    lead = x.ndim - contract
    if form == "flat":
        inner, out = math.prod(kernel.shape[:contract]), math.prod(kernel.shape[contract:])
        dy2, x2, k2 = dy.reshape(-1, out), x.reshape(-1, inner), k.reshape(inner, out)
        dx = jax.lax.dot_general(dy2, k2, (((1,), (1,)), ((), ()))).reshape(x.shape)
        dk = jax.lax.dot_general(x2, dy2, (((0,), (0,)), ((), ()))).reshape(kernel.shape)
    else:
        dx = jnp.tensordot(dy, k, axes=(tuple(range(lead, dy.ndim)), tuple(range(contract, k.ndim))))
        dk = jnp.tensordot(x, dy, axes=(tuple(range(lead)), tuple(range(lead))))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_project_vjp.defvjp(_project_forward, _project_backward)


def project(x: jax.Array, kernel: jax.Array, contract: int = 1, *, form: str = "multi_axis") -> jax.Array:
    """`x` (..., *kernel.shape[:contract]) times `kernel` cast to x's dtype, contracting x's last `contract` axes with
    the kernel's first: (..., *kernel.shape[contract:]). Every projection of the shared layers goes through it (Dense,
    attention's x @ qkv (d, 3, h, k) and out @ proj (h, k, d), VideoMamba's in_proj, GPT-2's); pass the parameter as
    stored, not cast.

    Its backward is written out (`_project_backward`) so that the forward keeps the kernel *as stored* for it, not
    the kernel in compute form (cast to bf16, or reshaped to 2-D): inside a scan over stacked blocks
    (config.model.scan_layers) the stored kernel is the scan's own input, which the backward reads in place, while a
    cast or reshaped kernel is a new value per block that the scan stacks into a (depth, ...) residual: a copy of
    the blocks' parameters (tests/test_scan_stacked.py).

    `form` (config.model.projection_form, resolved: "flat" on CPU by default, `vidjax.platform` says why) "flat"
    runs the products as 2-D products of the flattened operands, reshaped back; "multi_axis" as the multi-axis
    contraction, which keeps a kernel sharded over heads sharded through the product. Same values either way.
    """
    return _project_vjp(x, kernel, contract, platform.check("projection_form", form))


def _layer_norm_forward(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(var + eps)
    return ((x32 - mean) * rstd * scale + bias).astype(x.dtype), (x, mean, rstd, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_vjp(x, scale, bias, eps):
    return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_backward(eps, residuals, dy):
    """dx = rstd (g - mean(g) - x_hat mean(g x_hat)) with g = dy * scale; x_hat is recomputed from the input the
    residual stream keeps anyway, so the forward stores two numbers a row."""
    del eps
    x, mean, rstd, scale = residuals
    dy32 = dy.astype(jnp.float32)
    x_hat = (x.astype(jnp.float32) - mean) * rstd
    g = dy32 * scale
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True) - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
    rows = tuple(range(dy.ndim - 1))
    return dx.astype(x.dtype), jnp.sum(dy32 * x_hat, axis=rows), jnp.sum(dy32, axis=rows)


_layer_norm_vjp.defvjp(_layer_norm_forward, _layer_norm_backward)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, *,
               backward: str = "autodiff") -> jax.Array:
    """LayerNorm over the last axis, computed in float32 and returned in x's dtype; the backward written out for
    `backward` "hand_written" (config.model.backward, resolved: on CPU by default, `vidjax.platform` says why),
    autodiff's for "autodiff" (same values either way, tests/test_layers_backward.py)."""
    if platform.check("backward", backward) == "hand_written":
        return _layer_norm_vjp(x, scale, bias, float(eps))
    return _layer_norm_forward(x, scale, bias, eps)[0]


_SQRT_HALF = 0.5 ** 0.5
_INV_SQRT_2PI = (2 * math.pi) ** -0.5
_TANH_C = (2 / math.pi) ** 0.5


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gelu_vjp(x, approximate):
    return jax.nn.gelu(x, approximate=approximate)


def _gelu_backward(approximate, x, dy):
    x32 = x.astype(jnp.float32)
    if approximate:  # d/dx 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3)
        t = jnp.tanh(_TANH_C * (x32 + 0.044715 * x32 ** 3))
        slope = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * _TANH_C * (1 + 3 * 0.044715 * x32 * x32)
    else:  # d/dx x Phi(x) = Phi(x) + x phi(x)
        slope = 0.5 * (1 + jax.lax.erf(x32 * _SQRT_HALF)) + x32 * jnp.exp(-0.5 * x32 * x32) * _INV_SQRT_2PI
    return ((dy.astype(jnp.float32) * slope).astype(x.dtype),)


_gelu_vjp.defvjp(lambda x, approximate: (jax.nn.gelu(x, approximate=approximate), x), _gelu_backward)


def gelu(x: jax.Array, approximate: bool = False, *, backward: str = "autodiff") -> jax.Array:
    """`jax.nn.gelu`, with its backward written out (one fused pass over the saved input, in float32) for `backward`
    "hand_written", autodiff's for "autodiff" (config.model.backward, as `layer_norm`)."""
    if platform.check("backward", backward) == "hand_written":
        return _gelu_vjp(x, bool(approximate))
    return jax.nn.gelu(x, approximate=approximate)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 whatever the compute dtype, with a configurable epsilon (`layer_norm`); its
    backward as `choices` (the model's `platform.Choices`; None: this machine's defaults) says.

    `scale_offset` is added to the stored scale before use (initialised so the sum starts at 1): 1.0 for the
    Praxis-style norms of VideoPrism, which store gamma - 1 (transformers' `VideoPrismLayerNorm`: weight + 1)."""

    def __init__(self, dim: int, eps: float, *, choices: platform.Choices | None = None, scale_offset: float = 0.0,
                 rngs: nnx.Rngs):
        self.scale = _param(rngs, nnx.initializers.constant(1.0 - scale_offset), (dim,), ("norm",))
        self.bias = _param(rngs, nnx.initializers.zeros, (dim,), ("norm",))
        self.eps = eps
        self.scale_offset = float(scale_offset)
        self.backward = platform.given(choices).need("backward")

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.scale[...] + self.scale_offset if self.scale_offset else self.scale[...]
        return layer_norm(x, scale, self.bias[...], self.eps, backward=self.backward)


def rotate(x_BLHK: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary position embedding of queries or keys (b, l, heads, head_dim): `rope` (cos, sin), each (b or 1, l, r)
    with r even and at most head_dim, turns every head's first r features in pairs (2i, 2i+1) by the angles whose
    cosines and sines it holds, x * cos + (-x[2i+1], x[2i]) * sin, in x's dtype; the other features pass unchanged.
    The model builds the angles (V-JEPA 2's over (t, h, w): `vidjax.models.vjepa2.rope_tables`)."""
    cos, sin = rope
    r = cos.shape[-1]
    x_rot = x_BLHK[..., :r]
    pairs = x_rot.reshape(*x_rot.shape[:-1], r // 2, 2)
    swapped = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x_rot.shape)
    cos, sin = cos[:, :, None, :].astype(x_BLHK.dtype), sin[:, :, None, :].astype(x_BLHK.dtype)
    out = x_rot * cos + swapped * sin
    return out if r == x_BLHK.shape[-1] else jnp.concatenate([out, x_BLHK[..., r:]], axis=-1)


class Attention(nnx.Module):
    """Multi-head self-attention with one fused qkv projection, through `ops.attention.dot_product_attention`.

    `choices` (the model's `platform.Choices`; None: this machine's defaults) gives its `implementation`
    (config.model.attention_impl, resolved: an implementation or a backend's rule, which picks per call by length)
    and its projections' form.

    `qkv_bias` selects the bias layout: "qv" (VideoMAE: q and v biases, k has none), "qkv" or "none".
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: str = "qv", dtype=jnp.float32,
                 choices: platform.Choices | None = None, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"Attention width {dim} is not divisible by num_heads={num_heads}.")
        head_dim = dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        # xavier over the (dim, 3*dim) matrix, as the reference initialises its fused nn.Linear.
        qkv = _xavier(rngs.params(), (dim, 3 * dim), jnp.float32).reshape(dim, 3, num_heads, head_dim)
        self.qkv = nnx.Param(qkv, out_sharding=("embed", None, "heads", "head_dim"))
        zeros = nnx.initializers.zeros
        self.qkv_bias_kind = qkv_bias
        if qkv_bias == "qv":
            self.q_bias = _param(rngs, zeros, (num_heads, head_dim), ("heads", "head_dim"))
            self.v_bias = _param(rngs, zeros, (num_heads, head_dim), ("heads", "head_dim"))
        elif qkv_bias == "qkv":
            self.qkv_b = _param(rngs, zeros, (3, num_heads, head_dim), (None, "heads", "head_dim"))
        elif qkv_bias != "none":
            raise ValueError(f"qkv_bias must be 'qv', 'qkv' or 'none', got {qkv_bias!r}.")
        out = _xavier(rngs.params(), (dim, dim), jnp.float32).reshape(num_heads, head_dim, dim)
        self.proj = nnx.Param(out, out_sharding=("heads", "head_dim", "embed"))
        self.proj_bias = _param(rngs, zeros, (dim,), ("embed",))
        self.dtype = dtype
        choices = platform.given(choices)
        self.implementation = choices.need("attention_impl")
        self.projection_form = choices.need("projection_form")

    def qkv_biases(self) -> jax.Array | None:
        """The (3, heads, head_dim) biases of q, k and v (zeros where the layout has none), or None: no biases."""
        if self.qkv_bias_kind == "qv":
            return jnp.stack([self.q_bias[...], jnp.zeros_like(self.q_bias[...]), self.v_bias[...]])
        if self.qkv_bias_kind == "qkv":
            return self.qkv_b[...]
        return None

    def probabilities(self, x_BLD: jax.Array, query_ids: jax.Array | None = None) -> jax.Array:
        """The softmax weights (B, heads, queries, L), float32, with which the tokens at `query_ids` (None: every
        token) attend over all L tokens of `x_BLD` (this layer's input, normed): where the layer looks, which a
        distillation's teacher reads to pick tokens."""
        qkv = project(x_BLD.astype(self.dtype), self.qkv[...], form=self.projection_form)
        bias = self.qkv_biases()
        if bias is not None:
            qkv = qkv + bias.astype(qkv.dtype)
        q = qkv[:, :, 0] if query_ids is None else qkv[:, query_ids, 0]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), qkv[:, :, 1].astype(jnp.float32))
        return jax.nn.softmax(scores * self.head_dim ** -0.5, axis=-1)

    def __call__(self, x_BLD: jax.Array, attend=None, rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """`attend(q, k, v) -> out`, all (b, l, heads, head_dim), replaces plain attention over l when given.
        `rope` (cos, sin), each (b or 1, l, r): rotary position embeddings turn q and k before attention (`rotate`).

        Sharding (`vidjax.sharding.constrain`, config.sharding_rules): q, k, v and the attention output are split as
        (act_batch, act_length, act_heads, act_head_dim), the output as (act_batch, act_length, act_embed).
        """
        dt = self.dtype
        heads = ("act_batch", "act_length", "act_heads", "act_head_dim")
        # (b, l, 3, h, k) keeps the projection a plain row-major x @ W; a (3, b, l, h, k) output costs a transpose.
        qkv = project(x_BLD.astype(dt), self.qkv[...], form=self.projection_form)
        bias = self.qkv_biases()
        if bias is not None:
            qkv = qkv + bias.astype(dt)
        qkv = constrain(qkv, ("act_batch", "act_length", None, "act_heads", "act_head_dim"))
        q, k, v = (constrain(qkv[:, :, i], heads) for i in range(3))
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        if attend is None:
            out_BLHK = attention.dot_product_attention(q, k, v, self.implementation)
        else:
            out_BLHK = attend(q, k, v)
        out_BLHK = constrain(out_BLHK, heads)
        out_BLD = project(out_BLHK.astype(dt), self.proj[...], 2, form=self.projection_form) + \
            self.proj_bias[...].astype(dt)
        return constrain(out_BLD, ("act_batch", "act_length", "act_embed"))


class Mlp(nnx.Module):
    """Two-layer MLP with exact (erf) GELU, as in the PyTorch references (Flax's default is the tanh form).

    `approximate_gelu=True` selects the tanh form, for checkpoints whose config says "gelu_new"/"gelu_fast"/
    "gelu_pytorch_tanh"; `relu=True` a ReLU instead (VideoPrism's text tower), `quick_gelu=True` OpenAI CLIP's
    x * sigmoid(1.702 x) ("quick_gelu"). `choices` (the model's
    `platform.Choices`; None: this machine's defaults) gives the GELU's backward and the projections' form.
    """

    def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, approximate_gelu: bool = False,
                 relu: bool = False, quick_gelu: bool = False, choices: platform.Choices | None = None,
                 rngs: nnx.Rngs):
        choices = platform.given(choices)
        self.fc1 = Dense(dim, hidden, ("embed", "mlp"), dtype=dtype, choices=choices, rngs=rngs)
        self.fc2 = Dense(hidden, dim, ("mlp", "embed"), dtype=dtype, choices=choices, rngs=rngs)
        self.approximate_gelu = approximate_gelu
        self.relu = bool(relu)
        self.quick_gelu = bool(quick_gelu)
        self.backward = choices.need("backward")

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (batch, ..., dim) -> the same shape; the hidden activation split as (act_batch, act_length..., act_mlp),
        the output as (act_batch, act_length..., act_embed) (`vidjax.sharding.constrain`)."""
        hidden = constrain(self.fc1(x), token_names(x.ndim, "act_mlp"))
        if self.relu:
            out = self.fc2(jax.nn.relu(hidden))
        elif self.quick_gelu:
            out = self.fc2(hidden * jax.nn.sigmoid(1.702 * hidden))
        else:
            out = self.fc2(gelu(hidden, approximate=self.approximate_gelu, backward=self.backward))
        return constrain(out, token_names(x.ndim, "act_embed"))


def drop_path(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth: drops the whole residual branch per sample with probability `rate` (train only)."""
    if rng is None or (not isinstance(rate, jax.Array) and rate == 0.0):  # a traced rate comes from a layer scan
        return x
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
    if isinstance(keep_prob, jax.Array):
        keep_prob = keep_prob.astype(x.dtype)  # a float32 rate must not promote bf16 activations
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def check_remat(remat: str) -> str:
    """`remat` if it names a policy, else a ConfigError listing them."""
    if remat not in REMAT_POLICIES:
        raise ConfigError(f"config.model.remat={remat!r}; choose one of {', '.join(REMAT_POLICIES)} (rematerialise "
                          f"nothing, whole blocks, or everything but matrix multiplies).")
    return remat


def run_defaults(platform_fields: Sequence[str]) -> dict[str, Any]:
    """The keys of a model config block that say how its blocks run, at their defaults, which every family's
    `default_config()` spreads in (`**layers.run_defaults(platform.TRANSFORMER_FIELDS)`); none changes the maths.

    - `remat` "none": what each block keeps for the backward pass, none | full | dots_saveable (`REMAT_POLICIES`).
    - `scan_layers` False: True builds the blocks stacked (parameters .../blocks/stacked/..., leading axis the
      blocks) and runs them as one lax.scan, which compiles one block (`run_blocks`; `to_layout` converts
      checkpoints of either layout).
    - each of `platform_fields` (the model's kind's: `platform.TRANSFORMER_FIELDS`, `TEXT_FIELDS`, `MAMBA_FIELDS`)
      "auto", resolved per backend at set-up; another value picks one way everywhere. vidjax/platform.py says what
      each value does on which backend, and the A/B behind it (`platform.FIELDS`: attention_impl's backend rules
      auto_cpu | auto_gpu | auto_tpu and kernels xla | cudnn | heads_major | blockwise | pallas_tpu (ops/attention.py);
      backward hand_written | autodiff for LayerNorm and GELU; projection_form flat | multi_axis (`project`);
      block_gradients written_out | fused (`call_block`); VideoMamba's selective scan chunked | associative |
      sequential | recurrent).
    """
    return dict(remat="none", scan_layers=False, **{name: platform.AUTO for name in platform_fields})


def shard_batch(tree):
    """Activations (batch first) constrained to the batch sharding over ("data", "fsdp") of the mesh in context.

    Between blocks this keeps tokens split by batch where XLA could otherwise gather them after a tensor- or
    fsdp-sharded matmul. A no-op outside a mesh context (single-device use, tests) or when the batch does not divide.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return tree
    ways = int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))

    def constrain(x):
        if ways == 1 or x.ndim == 0 or x.shape[0] % ways:
            return x
        return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(BATCH_AXES))

    return jax.tree.map(constrain, tree)


@jax.custom_vjp
def _cotangent_boundary(x: jax.Array) -> jax.Array:
    """The identity, whose gradient XLA must write out whole: see `call_block`."""
    return x


def _boundary_fwd(x):
    return x, None


def _boundary_bwd(_, g):
    # A conditional's operands and results are materialised; a predicate XLA cannot fold (x == x is false for NaN)
    # keeps it a real one. A NaN there poisons the whole cotangent, which is then non-finite either way.
    first = g.reshape(-1)[0]
    return (jax.lax.cond(first == first, lambda t: t, lambda t: jnp.full_like(t, jnp.nan), g),)


_cotangent_boundary.defvjp(_boundary_fwd, _boundary_bwd)


def call_block(block: nnx.Module, remat: str, *args, block_gradients: str = "fused", **kwargs):
    """`block(*args, **kwargs)` under the rematerialisation policy `remat`, its output batch-sharded (`shard_batch`).

    `args` are the activations (arrays or None); `kwargs` are closed over: Python values such as frame counts, and
    random keys, which carry no gradient. With `block_gradients` "written_out" (config.model.block_gradients,
    resolved: on CPU by default, `vidjax.platform` says why) the gradient reaching each input passes an identity
    conditional XLA cannot fold (`_cotangent_boundary`), so it is written out whole instead of fused into its
    consumers; "fused" leaves the graph plain. The values are the same.
    """
    if platform.check("block_gradients", block_gradients) == "written_out":
        args = tuple(_cotangent_boundary(a) if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)
                     else a for a in args)
    if remat == "none":
        return shard_batch(block(*args, **kwargs))
    run = nnx.remat(lambda module, *a: module(*a, **kwargs), policy=REMAT_POLICIES[remat])
    return shard_batch(run(block, *args))


def _static_layout(block: nnx.Module) -> nnx.GraphDef:
    """The block's graph and static attributes (widths, epsilons, dtypes ...), drop-path rate aside: what a layer
    scan takes from the first block for all of them."""
    rate = getattr(block, "drop_path", None)
    if rate is None:
        return nnx.graphdef(block)
    block.drop_path = 0.0
    try:
        return nnx.graphdef(block)
    finally:
        block.drop_path = rate


# A `BlockStack` keeps its blocks under this attribute, so the key of stacked parameters in a params tree is
# ".../blocks/stacked/..." (each leaf shaped (depth, ...)) where loop mode has ".../blocks/0/...", ".../blocks/1/...".
STACKED = "stacked"
# The logical name of the stacked leading axis (config.sharding_rules maps it, to "": replicated).
STACK_AXIS = "layers"


class _LayerKeys:
    """`rngs.params()` of one block of a `BlockStack`: the keys drawn for it, in order (None: only counts draws)."""

    def __init__(self, keys: jax.Array | None):
        self._keys, self.count = keys, 0

    def params(self) -> jax.Array:
        key = jax.random.key(0) if self._keys is None else self._keys[self.count]
        self.count += 1
        return key


class BlockStack(nnx.Module):
    """`len(rates)` blocks of one kind built as one module whose parameters have a leading axis of that length
    (logical name STACK_AXIS), as config.model.scan_layers builds them: `run_blocks` scans over them in place.

    `make_block(rate, rngs)` builds one block with drop-path rate `rate`; it is called once under `nnx.vmap`, with
    rate 0.0: the per-block rates are kept here (`drop_path_rates`, static) and scanned along, so every block has
    one graph. Block i gets the keys `rngs.params()` would have given it had the blocks been built one after the
    other, so a seed gives the parameters of loop mode, stacked. `stack[i]` is block i as a module of its own (its
    parameters sliced out: a read-only view, e.g. for GPT-2's decoding, which unrolls the blocks).
    """

    def __init__(self, make_block, rates: Sequence[float], *, rngs):
        self.drop_path_rates = tuple(float(r) for r in rates)
        counter = _LayerKeys(None)
        nnx.eval_shape(lambda: make_block(0.0, counter))  # how many keys a block draws
        depth, draws = len(self.drop_path_rates), counter.count
        keys = jnp.stack([rngs.params() for _ in range(depth * draws)]).reshape(depth, draws) if draws else \
            jnp.zeros((depth, 0))
        create = nnx.vmap(lambda keys: make_block(0.0, _LayerKeys(keys)), in_axes=0, out_axes=0,
                          transform_metadata={nnx.PARTITION_NAME: STACK_AXIS})
        setattr(self, STACKED, create(keys))

    def __len__(self) -> int:
        return len(self.drop_path_rates)

    def __getitem__(self, i: int) -> nnx.Module:
        if not -len(self) <= i < len(self):
            raise IndexError(f"block {i} of a stack of {len(self)}")
        graphdef, state = nnx.split(getattr(self, STACKED))
        block = nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))
        if hasattr(block, "drop_path"):
            block.drop_path = self.drop_path_rates[i]
        return block

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def make_blocks(make_block, rates: Sequence[float], *, scan: bool, rngs) -> nnx.List | BlockStack:
    """A model's blocks, one per drop-path rate in `rates`: `make_block(rate, rngs)` each, in an `nnx.List` (loop
    mode: parameters blocks/0/..., blocks/1/...), or with `scan` (config.model.scan_layers) one `BlockStack`
    (parameters blocks/stacked/... with a leading depth axis; `to_layout` converts between the two)."""
    rates = [float(r) for r in rates]
    if scan and rates:
        return BlockStack(make_block, rates, rngs=rngs)
    return nnx.List([make_block(r, rngs) for r in rates])


def _scan_blocks(graphdef: nnx.GraphDef, stacked, rates: Sequence[float], carry: tuple, rng: jax.Array | None,
                 remat: str, first_index: int, kwargs: dict, start: int = 0) -> tuple:
    """One `lax.scan` of the block `graphdef` over the parameters `stacked` (leading axis: the blocks), from block
    `start` on (then each block's parameters are indexed in place: slicing the first off would copy the others)."""
    depth = jax.tree.leaves(stacked)[0].shape[0]
    # All-zero rates stay the block's static 0.0: no drop-path draws, as unrolled.
    rates = jnp.asarray(rates, jnp.float32)[start:] if any(rates[start:]) else None
    indices = jnp.arange(start, depth)

    def take(index):
        return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, 0, keepdims=False), stacked)

    def body(carry, xs):
        state, rate, index = xs
        block = nnx.merge(graphdef, take(index) if start else state)
        if rate is not None and hasattr(block, "drop_path"):
            block.drop_path = nnx.data(rate)
        key = jax.random.fold_in(rng, first_index + index) if rng is not None else None
        out = block(*carry, rng=key, **kwargs)
        return shard_batch(out if isinstance(out, tuple) else (out,)), None

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)  # CSE cannot cross a scan
    carry, _ = jax.lax.scan(body, carry, (None if start else stacked, rates, indices))
    return carry


def run_blocks(blocks: Sequence[nnx.Module] | BlockStack, carry, rng: jax.Array | None, *, remat: str = "none",
               scan: bool = False, first_index: int = 0, start: int = 0, block_gradients: str = "fused", **kwargs):
    """Applies `blocks` in order: `carry = block(*carry, rng=fold_in(rng, first_index + i), **kwargs)`.

    `carry` is one activation array or a tuple of them (a block then returns a tuple of the same structure).
    `remat` is the per-block policy (`REMAT_POLICIES`). `start` skips a `BlockStack`'s first blocks (VideoMamba
    runs its first layer apart); block i keeps key index first_index + i.

    A `BlockStack` (what `make_blocks` builds with config.model.scan_layers) runs as one `lax.scan` of a single copy
    of the block over its stacked parameters, read in place: XLA compiles one block whatever the depth, and the
    gradient comes out stacked like the parameters. Its parameters are laid out blocks/stacked/... (leading axis:
    the blocks), not blocks/0/...: `to_layout` converts checkpoints and converted weights between the two, and
    optim's layer decay indexes the stacked axis. A list of blocks is unrolled (XLA compiles each block), or with
    `scan=True` scanned after stacking its parameters at call time, which copies them every step (no model does
    this any more: `make_blocks` builds a `BlockStack` when scanning). Either way per-block drop-path rates and
    random keys are scanned along, so scanning and unrolling compute the same values from the same parameters.
    Scanning needs blocks of one kind and one set of parameter shapes. Unrolled, `block_gradients` (the model's
    config.model.block_gradients, resolved) "written_out" writes each block's input gradient out whole
    (`call_block`); a scan's carry is written out between iterations anyway.
    """
    single = not isinstance(carry, tuple)
    carry = (carry,) if single else carry
    if isinstance(blocks, BlockStack):
        graphdef, stacked = nnx.split(getattr(blocks, STACKED))
        carry = _scan_blocks(graphdef, stacked, blocks.drop_path_rates, carry, rng, remat, first_index, kwargs,
                             start)
        return carry[0] if single else carry
    blocks = list(blocks)
    if not scan or len(blocks) < 2:
        for i, block in enumerate(blocks):
            key = jax.random.fold_in(rng, first_index + i) if rng is not None else None
            out = call_block(block, remat, *carry, rng=key, block_gradients=block_gradients, **kwargs)
            carry = out if isinstance(out, tuple) else (out,)
        return carry[0] if single else carry
    graphdef, _ = nnx.split(blocks[0])
    states = [nnx.state(block) for block in blocks]
    layout = [(_static_layout(b), jax.tree.structure(s), [x.shape for x in jax.tree.leaves(s)])
              for b, s in zip(blocks, states, strict=True)]
    for i, block in enumerate(blocks):
        if type(block) is not type(blocks[0]) or layout[i] != layout[0]:
            raise ConfigError(f"config.model.scan_layers=True needs blocks of one kind, shape and setting, but block "
                              f"{first_index + i} ({type(block).__name__}) differs from block {first_index}; "
                              f"set config.model.scan_layers=False for this model.")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    rates = [float(getattr(block, "drop_path", 0.0)) for block in blocks]
    carry = _scan_blocks(graphdef, stacked, rates, carry, rng, remat, first_index, kwargs)
    return carry[0] if single else carry


def _key_str(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flat_params(tree) -> dict:
    """{"a/b/0/c": leaf} of a pytree (pure dicts, lists, optax states), as vidjax.convert names parameters."""
    return {"/".join(_key_str(k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flat_to_layout(flat, target=()) -> dict:
    """Flat parameters (`flat_params` names) with their blocks laid out as the names in `target` are.

    A stacked entry ".../blocks/stacked/x" (leading axis: the blocks) that `target` does not name is split into
    ".../blocks/0/x", ".../blocks/1/x", ...; a stacked name of `target` is made from those per-block entries when
    `flat` has all of them (the leading size: the target leaf's, else as many as there are). The empty target gives
    the per-block layout of checkpoints on disk and converted weights. Other entries pass unchanged.
    """
    target = dict.fromkeys(target) if not isinstance(target, dict) else target
    out = {}
    for key, value in flat.items():
        parts = key.split("/")
        if STACKED not in parts or key in target:
            out[key] = value
            continue
        j = parts.index(STACKED)
        for i in range(value.shape[0]):
            out["/".join(parts[:j] + [str(i)] + parts[j + 1:])] = value[i]
    for key, leaf in target.items():
        parts = key.split("/")
        if STACKED not in parts or key in out:
            continue
        j = parts.index(STACKED)
        def name(i, parts=parts, j=j):
            return "/".join(parts[:j] + [str(i)] + parts[j + 1:])

        depth = getattr(leaf, "shape", (0,))[0] if leaf is not None else 0
        if not depth:
            while name(depth) in out:
                depth += 1
        names = [name(i) for i in range(depth)]
        if depth and all(n in out for n in names):
            values = [out.pop(n) for n in names]
            stack = jnp.stack if any(isinstance(v, jax.Array) for v in values) else np.stack
            out[key] = stack(values)
    return out


def to_layout(tree, target):
    """`tree` (parameters, or any state holding them: optimizer moments, EMA) in the block layout of `target`, a
    tree of the same structure but for that layout (arrays or ShapeDtypeStructs): stacked where config.model.
    scan_layers built `target`'s model, per block where not (`flat_to_layout`). Values are the same."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
    names = ["/".join(_key_str(k) for k in path) for path, _ in leaves]
    flat = flat_to_layout(flat_params(tree), {n: leaf for n, (_, leaf) in zip(names, leaves, strict=True)})
    missing = [n for n in names if n not in flat]
    if missing:
        raise ValueError(f"{len(missing)} entries of the target layout are not in the tree to convert, e.g. "
                         f"{', '.join(missing[:4])}")
    return jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])


def _abstract_stack(x: jax.ShapeDtypeStruct, depth: int | None) -> jax.ShapeDtypeStruct:
    """x with a leading axis of `depth` added (None: its leading axis taken off); a NamedSharding follows."""
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (len(x.shape) - len(sharding.spec))
        spec = (None, *spec) if depth is not None else spec[1:]
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    shape = (depth, *x.shape) if depth is not None else x.shape[1:]
    return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)


def abstract_in_layout(tree, names: Collection[str], prefix: str = ""):
    """`tree` of ShapeDtypeStructs (a train state: dicts, tuples, named tuples) with its blocks laid out as the flat
    names `names` (`flat_params` of another tree: a checkpoint's) lay them out: per-block dicts {0: ..., 1: ...}
    stacked into {STACKED: ...} or the other way round; shardings follow (the stacked axis unsharded)."""
    def has(name: str) -> bool:
        return any(n == name or n.startswith(name + "/") for n in names)

    def sub(key) -> str:
        return f"{prefix}/{key}" if prefix else str(key)

    if isinstance(tree, dict):
        keys = list(tree)
        if keys and all(isinstance(k, int) for k in keys) and has(sub(STACKED)) and not has(sub(keys[0])):
            blocks = [tree[k] for k in sorted(keys)]
            return {STACKED: jax.tree.map(lambda *xs: _abstract_stack(xs[0], len(xs)), *blocks)}
        if keys == [STACKED] and has(sub(0)) and not has(sub(STACKED)):
            depth = jax.tree.leaves(tree[STACKED])[0].shape[0]
            return {i: jax.tree.map(lambda x: _abstract_stack(x, None), tree[STACKED]) for i in range(depth)}
        return {k: abstract_in_layout(v, names, sub(k)) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(abstract_in_layout(getattr(tree, f), names, sub(f)) for f in tree._fields))
    if isinstance(tree, (tuple, list)):
        return type(tree)(abstract_in_layout(v, names, sub(i)) for i, v in enumerate(tree))
    return tree


class Block(nnx.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))); `choices`: the model's
    `platform.Choices` (None: this machine's defaults)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float, drop_path: float = 0.0,
                 qkv_bias: str = "qv", dtype=jnp.float32, choices: platform.Choices | None = None,
                 approximate_gelu: bool = False, quick_gelu: bool = False, rngs: nnx.Rngs):
        choices = platform.given(choices)
        self.norm1 = LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, choices=choices, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps, choices=choices, rngs=rngs)
        self.mlp = Mlp(dim, mlp_dim, dtype=dtype, approximate_gelu=approximate_gelu, quick_gelu=quick_gelu,
                       choices=choices, rngs=rngs)
        self.drop_path = drop_path

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """`rope`: rotary position embeddings for the attention's q and k (`Attention`), or None."""
        rng_attn, rng_mlp = jax.random.split(rng) if rng is not None else (None, None)
        residual = ("act_batch", "act_length", "act_embed")  # the residual stream (`vidjax.sharding.constrain`)
        x = constrain(x, residual)
        x = constrain(x + drop_path(self.attn(self.norm1(x), rope=rope), self.drop_path, rng_attn), residual)
        return constrain(x + drop_path(self.mlp(self.norm2(x)), self.drop_path, rng_mlp), residual)


class Transformer(nnx.Module):
    """A stack of `Block`s with linearly increasing drop-path rates, as in the ViT/VideoMAE references.

    `scan=True` builds them stacked (`BlockStack`) and runs them as one `lax.scan` (see `run_blocks`). `choices`:
    the model's `platform.Choices` (None: this machine's defaults).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, *, eps: float, drop_path: float = 0.0,
                 qkv_bias: str = "qv", dtype=jnp.float32, choices: platform.Choices | None = None,
                 approximate_gelu: bool = False, quick_gelu: bool = False, remat: str = "none", scan: bool = False,
                 rngs: nnx.Rngs):
        rates = np.linspace(0.0, drop_path, depth) if depth > 1 else np.array([drop_path])
        choices = platform.given(choices)
        self.remat = check_remat(remat)
        self.scan = bool(scan)
        self.block_gradients = choices.need("block_gradients")
        self.blocks = make_blocks(
            lambda rate, rngs: Block(dim, num_heads, mlp_dim, eps=eps, drop_path=rate, qkv_bias=qkv_bias,
                                     dtype=dtype, choices=choices, approximate_gelu=approximate_gelu,
                                     quick_gelu=quick_gelu, rngs=rngs),
            rates, scan=scan, rngs=rngs)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """`rope`: rotary position embeddings every block's attention applies (`Attention`), or None."""
        kwargs = {} if rope is None else {"rope": rope}
        return run_blocks(self.blocks, x, rng, remat=self.remat, scan=self.scan,
                          block_gradients=self.block_gradients, **kwargs)

    def layer_outputs(self, x: jax.Array, rng: jax.Array | None = None, last: int = 1) -> list[jax.Array]:
        """The outputs of the last `last` blocks, first to last (`last_outputs`): what a distillation aligns."""
        if last == 1:
            return [self(x, rng)]
        return last_outputs(self.blocks, x, rng, last, remat=self.remat, block_gradients=self.block_gradients)


def last_outputs(blocks: Sequence[nnx.Module] | BlockStack, x, rng: jax.Array | None, last: int, *,
                 remat: str = "none", block_gradients: str = "fused", first_index: int = 0, start: int = 0,
                 **kwargs) -> list:
    """The outputs (carries) of the last `last` of `blocks` run in order on `x` (`run_blocks`, with `kwargs`;
    `first_index` and `start` as there), first to last, each block with the key and policy it has in one run of them
    all (the same values). Stacked blocks (config.model.scan_layers) run as one scan, so they give their last output
    only."""
    common = dict(remat=remat, block_gradients=block_gradients, **kwargs)
    if isinstance(blocks, BlockStack):
        if last != 1:
            raise ConfigError(f"the outputs of the last {last} blocks need them unrolled: set the encoder's "
                              f"scan_layers=False (or align one layer).")
        return [run_blocks(blocks, x, rng, first_index=first_index, start=start, **common)]
    blocks = list(blocks)
    if not 1 <= last <= len(blocks):
        raise ConfigError(f"the last {last} blocks of a {len(blocks) + first_index}-block encoder: choose 1 to "
                          f"{len(blocks)}.")
    x = run_blocks(blocks[:len(blocks) - last], x, rng, first_index=first_index, **common)
    outs = []
    for i in range(len(blocks) - last, len(blocks)):
        x = run_blocks([blocks[i]], x, rng, first_index=first_index + i, **common)
        outs.append(x)
    return outs


def vit_dims(variant: str, width: int | None = None, depth: int | None = None,
             num_heads: int | None = None, mlp_dim: int | None = None) -> dict[str, int]:
    """Resolves (width, depth, heads, mlp_dim, patch) from a variant string and optional explicit overrides."""
    size, patch = parse_variant(variant)
    w, d, h = VIT_SIZES[size]
    width, depth, num_heads = width or w, depth or d, num_heads or h
    default_mlp = VIT_MLP_DIMS.get(size, 4 * w) if width == w else 4 * width
    return dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim or default_mlp, patch=patch)

