"""Scaled dot-product attention for the models, with the implementation chosen per platform.

Every attention of the models (layers.Attention, ViViT's factorised heads, TimeSformer's divided attention through
layers.Attention) calls `dot_product_attention` with (batch, length, heads, head_dim) operands, and
`config.model.attention_impl` picks how it runs:

- "" (the default): "heads_major" on the CPU backend; on GPU, cuDNN's fused kernel for 16-bit operands whose head
  size it takes (at most 128, a multiple of 8), else XLA's; on TPU, XLA's. (`jax.nn.dot_product_attention` left to
  itself runs XLA's everywhere, jax 0.10.)
- "xla" / "cudnn": `jax.nn.dot_product_attention` with that implementation; for cuDNN an odd length is padded to
  an even one and masked (`padded_to_even`), since its kernel has no backward for odd lengths.
- "heads_major": the two products written with heads before tokens, (b, h, l, k). On (b, l, h, k) operands
  XLA:CPU runs the batched score and value products, and their backward, with strided batch dimensions and
  transposes of the score-sized tensors; moving the heads first once, on the small q/k/v/output tensors, made one
  VideoMAE-S attention (2 x 392 tokens, 6 heads) forward + backward about 30% faster here (docs/performance.md).
  Its backward is written out (a custom VJP) so that no product needs a score-sized operand transposed. Same maths,
  same results to float rounding (tests/test_attention.py).

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
    return jnp.swapaxes(_attend_BHLK(q_BHLK, k_BHSK, v_BHSK), 1, 2)


def _attend_forward(q_BHLK, k_BHSK, v_BHSK):
    # The scale goes on the queries, (b, h, l, k), not on the (b, h, l, s) scores: XLA:CPU writes a scalar broadcast
    # feeding a YNNPACK fusion out whole, once per layer, and reads it again in the backward.
    q_BHLK = q_BHLK * jnp.asarray(q_BHLK.shape[-1] ** -0.5, q_BHLK.dtype)
    scores_BHLS = jnp.einsum("bhlk,bhsk->bhls", q_BHLK, k_BHSK, preferred_element_type=jnp.float32)
    # Normalised in float32 as jax.nn.dot_product_attention does, whatever the compute dtype.
    probs_BHLS = jax.nn.softmax(scores_BHLS, axis=-1)
    out_BHLK = jnp.einsum("bhls,bhsk->bhlk", probs_BHLS.astype(v_BHSK.dtype), v_BHSK)
    return out_BHLK, (q_BHLK, k_BHSK, v_BHSK, probs_BHLS)


@jax.custom_vjp
def _attend_BHLK(q_BHLK: jax.Array, k_BHSK: jax.Array, v_BHSK: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(k)) v on heads-major operands, with the backward written out (`_attend_backward`)."""
    return _attend_forward(q_BHLK, k_BHSK, v_BHSK)[0]


def _attend_backward(residuals, dout_BHLK):
    """The attention's backward with every product contracting over tokens taking the small (b, h, l, k) operand
    transposed, never the (b, h, l, s) one: dK^T = (q/sqrt(k))^T dS and dV^T = dO^T P come out (b, h, k, s) and are
    transposed back at head size. Left to autodiff, XLA:CPU copies P and dS transposed, score-sized, every layer
    (about 7% of a VideoMAE-S/16 fine-tune step here, docs/performance.md). Same maths: dS = P (dP - rowsum(dP P))."""
    q_BHLK, k_BHSK, v_BHSK, probs_BHLS = residuals
    dtype = v_BHSK.dtype
    dprobs_BHLS = jnp.einsum("bhlk,bhsk->bhls", dout_BHLK, v_BHSK, preferred_element_type=jnp.float32)
    dscores_BHLS = probs_BHLS * (dprobs_BHLS - jnp.sum(dprobs_BHLS * probs_BHLS, axis=-1, keepdims=True))
    dscores_BHLS = dscores_BHLS.astype(dtype)
    scale = jnp.asarray(q_BHLK.shape[-1] ** -0.5, dtype)
    dq_BHLK = jnp.einsum("bhls,bhsk->bhlk", dscores_BHLS, k_BHSK) * scale
    dk_BHKS = jnp.einsum("bhlk,bhls->bhks", q_BHLK, dscores_BHLS)  # q is scaled already
    dv_BHKS = jnp.einsum("bhlk,bhls->bhks", dout_BHLK, probs_BHLS.astype(dtype))
    return dq_BHLK, jnp.swapaxes(dk_BHKS, -1, -2), jnp.swapaxes(dv_BHKS, -1, -2)


_attend_BHLK.defvjp(_attend_forward, _attend_backward)


def dot_product_attention(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array,
                          implementation: str | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v over (batch, length, heads, head_dim) operands, as
    `jax.nn.dot_product_attention`, run by `resolve(implementation)`."""
    implementation = resolve(implementation, q_BLHK.dtype, q_BLHK.shape[-1])
    if implementation == "heads_major":
        return _heads_major(q_BLHK, k_BSHK, v_BSHK)
    if implementation == "cudnn" and (q_BLHK.shape[1] % 2 or k_BSHK.shape[1] % 2):
        return padded_to_even(q_BLHK, k_BSHK, v_BSHK, implementation)
    return jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHK, implementation=implementation)


def padded_to_even(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array, implementation: str) -> jax.Array:
    """Attention over odd lengths run at even ones: cuDNN's fused kernel has no backward for an odd query or key
    length ("Unsupported sequence length Q 1569, KV 1569" for ViViT's 1568 tokens and CLS, 197 for TimeSformer's
    spatial attention; jax then had to fall back to XLA's unfused attention for training). One zero token is added
    where a length is odd and masked out through the sequence lengths (cuDNN's padding mask), and the padded query
    rows are cut off: the same result and gradients as the unpadded call."""
    b, length, length_kv = q_BLHK.shape[0], q_BLHK.shape[1], k_BSHK.shape[1]

    def even(x, n):
        return jnp.pad(x, ((0, 0), (0, n % 2), (0, 0), (0, 0))) if n % 2 else x

    out = jax.nn.dot_product_attention(
        even(q_BLHK, length), even(k_BSHK, length_kv), even(v_BSHK, length_kv), implementation=implementation,
        query_seq_lengths=jnp.full((b,), length, jnp.int32),
        key_value_seq_lengths=jnp.full((b,), length_kv, jnp.int32))
    return out[:, :length]
