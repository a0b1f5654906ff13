"""Scaled dot-product attention for the models, with the implementation chosen per platform.

Every attention of the models (layers.Attention, ViViT's factorised heads, TimeSformer's divided attention through
layers.Attention) calls `dot_product_attention` with (batch, length, heads, head_dim) operands, and
`config.model.attention_impl` picks how it runs:

- "" (the default): "heads_major" on the CPU backend; on GPU, cuDNN's fused kernel for 16-bit operands whose head
  size it takes (at most 128, a multiple of 8), else XLA's; on TPU, XLA's. (`jax.nn.dot_product_attention` left to
  itself runs XLA's everywhere, jax 0.10.)
- "xla" / "cudnn": `jax.nn.dot_product_attention` with that implementation.
- "heads_major": the two products written with heads before tokens, (b, h, l, k). On (b, l, h, k) operands
  XLA:CPU runs the batched score and value products, and their backward, with strided batch dimensions and
  transposes of the score-sized tensors; moving the heads first once, on the small q/k/v/output tensors, made one
  VideoMAE-S attention (2 x 392 tokens, 6 heads) forward + backward about 30% faster here (docs/performance.md).
  Same maths, same results to float rounding (tests/test_attention.py).

A query-blocked form with a custom VJP that recomputes the score blocks (flash style) was measured too and kept
out: at these lengths (a few hundred tokens) it was no faster on CPU than "heads_major", whose score matrix fits in
cache; on accelerators cuDNN's fused kernel already does it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vidjax.config_lib import ConfigError

IMPLEMENTATIONS = ("", "xla", "cudnn", "heads_major")


def check_implementation(implementation: str | None) -> str | None:
    """`implementation` ("" or None for the platform default) if it names one, else a ConfigError listing them."""
    if (implementation or "") not in IMPLEMENTATIONS:
        raise ConfigError(f"config.model.attention_impl={implementation!r}; choose one of "
                          f"{', '.join(repr(i) for i in IMPLEMENTATIONS)} ('' picks per platform: heads_major on "
                          f"CPU, JAX's choice of cuDNN or XLA on accelerators).")
    return implementation or None


def resolve(implementation: str | None, dtype=jnp.float32, head_dim: int = 64) -> str:
    """The implementation that runs for `implementation` on the current default backend, for operands of `dtype`
    with heads of `head_dim`."""
    implementation = check_implementation(implementation)
    if implementation is not None:
        return implementation
    backend = jax.default_backend()
    if backend == "cpu":
        return "heads_major"
    if backend in ("gpu", "cuda") and jnp.dtype(dtype).itemsize == 2 and head_dim <= 128 and head_dim % 8 == 0:
        return "cudnn"
    return "xla"


def _heads_major(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array) -> jax.Array:
    q_BHLK, k_BHSK, v_BHSK = (jnp.swapaxes(x, 1, 2) for x in (q_BLHK, k_BSHK, v_BSHK))
    scores_BHLS = jnp.einsum("bhlk,bhsk->bhls", q_BHLK, k_BHSK, preferred_element_type=jnp.float32)
    # Scaled and normalised in float32 as jax.nn.dot_product_attention does, whatever the compute dtype.
    scores_BHLS = scores_BHLS * jnp.float32(q_BLHK.shape[-1] ** -0.5)
    probs_BHLS = jax.nn.softmax(scores_BHLS, axis=-1).astype(v_BSHK.dtype)
    return jnp.swapaxes(jnp.einsum("bhls,bhsk->bhlk", probs_BHLS, v_BHSK), 1, 2)


def dot_product_attention(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array,
                          implementation: str | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v over (batch, length, heads, head_dim) operands, as
    `jax.nn.dot_product_attention`, run by `resolve(implementation)`."""
    implementation = resolve(implementation, q_BLHK.dtype, q_BLHK.shape[-1])
    if implementation == "heads_major":
        return _heads_major(q_BLHK, k_BSHK, v_BSHK)
    return jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHK, implementation=implementation)
