"""Scaled dot-product attention for the models, run by the implementation their `attention_impl` picks.

Every attention of the models (layers.Attention, ViViT's factorised heads, TimeSformer's divided attention through
layers.Attention) calls `dot_product_attention` with (batch, length, heads, head_dim) operands and the model's
resolved `config.model.attention_impl`: an implementation below, or a backend's rule ("auto_cpu", "auto_gpu",
"auto_tpu"), which picks one per call from the operands' dtype, head size and lengths. Which rule "auto" is on which
backend, and the measurements behind each rule, are in `vidjax.platform` (`attention_implementation`); "auto" is
resolved once at set-up, never here.

- "xla" / "cudnn": `jax.nn.dot_product_attention` with that implementation; for cuDNN an odd length is padded to
  an even one and masked (`padded_to_even`), since its kernel has no backward for odd lengths.
- "heads_major": the two products written with heads before tokens, (b, h, l, k): the heads are moved first once,
  on the small q/k/v/output tensors, rather than the products running with strided batch dimensions and transposes
  of the score-sized tensors. Its backward is written out (a custom VJP) so that no product needs a score-sized
  operand transposed. Same maths, same results to float rounding (tests/test_attention.py).
- "blockwise": FlashAttention-2 written in jnp / lax, for lengths where the score matrix stops being cheap. A scan over
  key blocks keeps a running row maximum and sum (online softmax), all queries at once, so the forward holds one
  (b, h, l, block) score block at a time and keeps only the output and each row's log-sum-exp; its backward (a custom
  VJP) recomputes the score blocks from those. Memory linear in length instead of quadratic (docs/performance.md,
  "Attention at length"). Tested in tests/test_attention_blockwise.py.
- `capped_attention` (not an implementation to choose: what VideoPrism's attention computes): the scores capped as
  cap * tanh(scores / cap) before the softmax, and an optional key mask. No fused kernel (cuDNN, Pallas) caps logits,
  so it is written out in jnp on every platform, scores in float32; VideoPrism's lengths (256 tokens per frame, 16
  frames, 64 text tokens) keep its score matrix small.
- "pallas_tpu": the flash attention kernel jax ships for TPU (`jax.experimental.pallas.ops.tpu.flash_attention`),
  lengths padded to its blocks (`PALLAS_BLOCK`, `pallas_blocks`) and the padding masked through segment ids; in a
  `shard_map` under a multi-device mesh, since XLA cannot partition a Mosaic kernel.
- "pallas_resident": vidjax's TPU kernel (`vidjax.ops.attention_kernel`) for sequences whose keys fit VMEM: each
  head's keys and values stay on the chip while the query blocks pass, a whole score row at once (no online
  softmax), one backward kernel; the operands read as the models hold them, heads side by side in 128-lane blocks.
  Per shard in a `shard_map` like "pallas_tpu"; "pallas_tpu" for shapes it does not take and where the keys do not
  fit the chip's VMEM.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vidjax import platform, sharding
from vidjax.ops import attention_kernel

IMPLEMENTATIONS = platform.ATTENTION_IMPLEMENTATIONS

# Keys per block of "blockwise" (docs/performance.md, "Attention at length").
BLOCK_KEYS = 128


def resolve(implementation: str | None, dtype=jnp.float32, head_dim: int = 64, length: int = 0,
            length_kv: int | None = None, backend: str | None = None, heads: int = 0) -> str:
    """The implementation that runs for a config's `attention_impl` ("auto", "" or None: `backend`'s rule; None:
    this process's backend) on operands of `dtype` with `heads` heads (0: unknown) of `head_dim`, `length` queries
    and `length_kv` keys (default: as many as queries; 0: short). For set-up and reports (what a run will use); a
    model's attention calls `platform.attention_implementation` with its resolved value."""
    value = platform.FIELDS["attention_impl"].resolve(implementation or platform.AUTO, lambda: backend or
                                                      platform.backend())
    return platform.attention_implementation(value, dtype, head_dim, length, length_kv, heads)


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


def _blockwise(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array) -> jax.Array:
    q_BHLK, k_BHSK, v_BHSK = (jnp.swapaxes(x, 1, 2) for x in (q_BLHK, k_BSHK, v_BSHK))
    return jnp.swapaxes(_flash_BHLK(q_BHLK, k_BHSK, v_BHSK, BLOCK_KEYS), 1, 2)


def _key_blocks(k_BHSK: jax.Array, v_BHSK: jax.Array, block_keys: int):
    """Keys and values as (blocks, b, h, block, k), the last block zero-padded, and which keys are real, (blocks,
    block). The blocks are as even as the length allows, so at most blocks - 1 keys are padding."""
    length_kv = k_BHSK.shape[2]
    n = -(-length_kv // block_keys)
    block = -(-length_kv // n)
    pad = n * block - length_kv

    def split(x):
        x = jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else x
        return jnp.moveaxis(x.reshape(*x.shape[:2], n, block, x.shape[-1]), 2, 0)

    valid_NB = (jnp.arange(n * block) < length_kv).reshape(n, block)
    return split(k_BHSK), split(v_BHSK), valid_NB, pad


def _scores(q_BHLK, k_BHBK, valid_B, pad):
    scores_BHLB = jnp.einsum("bhlk,bhsk->bhls", q_BHLK, k_BHBK, preferred_element_type=jnp.float32)
    return jnp.where(valid_B, scores_BHLB, -jnp.inf) if pad else scores_BHLB


def _flash_forward(q_BHLK, k_BHSK, v_BHSK, block_keys):
    dtype = v_BHSK.dtype
    q_BHLK = q_BHLK * jnp.asarray(q_BHLK.shape[-1] ** -0.5, q_BHLK.dtype)  # on the queries, as in _attend_forward
    k_NBHBK, v_NBHBK, valid_NB, pad = _key_blocks(k_BHSK, v_BHSK, block_keys)

    def step(carry, block):
        max_BHL, sum_BHL, acc_BHLK = carry
        k_BHBK, v_BHBK, valid_B = block
        scores_BHLB = _scores(q_BHLK, k_BHBK, valid_B, pad)
        new_max_BHL = jnp.maximum(max_BHL, jnp.max(scores_BHLB, axis=-1))
        probs_BHLB = jnp.exp(scores_BHLB - new_max_BHL[..., None])
        correction_BHL = jnp.exp(max_BHL - new_max_BHL)
        sum_BHL = sum_BHL * correction_BHL + jnp.sum(probs_BHLB, axis=-1)
        acc_BHLK = acc_BHLK * correction_BHL[..., None] + jnp.einsum(
            "bhls,bhsk->bhlk", probs_BHLB.astype(dtype), v_BHBK, preferred_element_type=jnp.float32)
        return (new_max_BHL, sum_BHL, acc_BHLK), None

    rows = q_BHLK.shape[:3]
    init = (jnp.full(rows, -jnp.inf, jnp.float32), jnp.zeros(rows, jnp.float32),
            jnp.zeros((*rows, v_BHSK.shape[-1]), jnp.float32))
    (max_BHL, sum_BHL, acc_BHLK), _ = jax.lax.scan(step, init, (k_NBHBK, v_NBHBK, valid_NB))
    out_BHLK = (acc_BHLK / sum_BHL[..., None]).astype(dtype)
    logsumexp_BHL = max_BHL + jnp.log(sum_BHL)
    return out_BHLK, (q_BHLK, k_BHSK, v_BHSK, out_BHLK, logsumexp_BHL)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash_BHLK(q_BHLK: jax.Array, k_BHSK: jax.Array, v_BHSK: jax.Array, block_keys: int) -> jax.Array:
    """softmax(q k^T / sqrt(k)) v on heads-major operands, key block by key block (`_flash_forward`), the backward
    recomputing each score block from the row log-sum-exp (`_flash_backward`)."""
    return _flash_forward(q_BHLK, k_BHSK, v_BHSK, block_keys)[0]


def _flash_backward(block_keys, residuals, dout_BHLK):
    """FlashAttention-2's backward over key blocks: per block, P = exp(S - lse), dV = P^T dO, dP = dO V^T,
    dS = P (dP - rowsum(dO O)), dK = dS^T q, and dQ summed over blocks. As in `_attend_backward`, the products over
    tokens take the small (b, h, l, k) operand transposed, never a score block."""
    q_BHLK, k_BHSK, v_BHSK, out_BHLK, logsumexp_BHL = residuals
    dtype, length_kv = v_BHSK.dtype, k_BHSK.shape[2]
    k_NBHBK, v_NBHBK, valid_NB, pad = _key_blocks(k_BHSK, v_BHSK, block_keys)
    delta_BHL = jnp.sum(dout_BHLK.astype(jnp.float32) * out_BHLK.astype(jnp.float32), axis=-1)

    def step(dq_BHLK, block):
        k_BHBK, v_BHBK, valid_B = block
        probs_BHLB = jnp.exp(_scores(q_BHLK, k_BHBK, valid_B, pad) - logsumexp_BHL[..., None])
        dprobs_BHLB = jnp.einsum("bhlk,bhsk->bhls", dout_BHLK, v_BHBK, preferred_element_type=jnp.float32)
        dscores_BHLB = (probs_BHLB * (dprobs_BHLB - delta_BHL[..., None])).astype(dtype)
        dq_BHLK = dq_BHLK + jnp.einsum("bhls,bhsk->bhlk", dscores_BHLB, k_BHBK, preferred_element_type=jnp.float32)
        dk_BHKB = jnp.einsum("bhlk,bhls->bhks", q_BHLK, dscores_BHLB)  # q is scaled already
        dv_BHKB = jnp.einsum("bhlk,bhls->bhks", dout_BHLK, probs_BHLB.astype(dtype))
        return dq_BHLK, (dk_BHKB, dv_BHKB)

    dq_BHLK, (dk_NBHKB, dv_NBHKB) = jax.lax.scan(
        step, jnp.zeros(q_BHLK.shape, jnp.float32), (k_NBHBK, v_NBHBK, valid_NB))

    def keys_major(x_NBHKB):  # (blocks, b, h, k, block) -> (b, h, s, k)
        x_BHKS = jnp.moveaxis(x_NBHKB, 0, 3).reshape(*x_NBHKB.shape[1:4], -1)
        return jnp.swapaxes(x_BHKS[..., :length_kv], -1, -2)

    scale = jnp.asarray(q_BHLK.shape[-1] ** -0.5, jnp.float32)
    return (dq_BHLK * scale).astype(q_BHLK.dtype), keys_major(dk_NBHKB), keys_major(dv_NBHKB)


_flash_BHLK.defvjp(_flash_forward, _flash_backward)


# Tokens per block of "pallas_tpu" (`pallas_blocks`), queries and keys, forward and backward: a longer sequence is
# padded to a multiple of it, a shorter one is one block (its length rounded up to the kernel's 128). Picked, with no
# TPU lent, on libtpu's static estimate of each compiled Mosaic kernel (libtpu 0.0.42 for v5p,
# LIBTPU_INIT_ARGS=--xla_jf_dump_static_llo_profile_to=DIR: cycles, here microseconds at 1.75 GHz), bfloat16, heads
# of 64, forward + backward; "all" = the same block everywhere. VideoMAE-B/16 at 16 frames (1568 tokens, 12 heads,
# batch 1) and 4096 tokens (1 head, batch 1):
#   block   1568 padded to  forward  dK, dV  dQ   others  total  |  4096: total
#   128     1664            459      486     354  20      1319   |        631
#   256     1792            179      299     159  23       660   |        265
#   512     2048            106      232     176  36       550   |        135
#   1024    2048            (1 head: 41 against 512's 46)        |        124
# A kernel's grid step costs about 350 cycles besides its block's work, so fewer, larger blocks win despite the
# padding; 1024 gains little more, pads more (6272 tokens: 7168 against 6656) and needs 4 MiB score blocks in VMEM.
# Mixed sizes (256 for dQ, 128 keys inside 512) estimated within 5% of all-512 or slower. XLA's cost model cannot rank
# them: `cost_analysis()["optimal_seconds"]` does not look inside a Mosaic kernel (the forward's declared FLOPs,
# whatever the blocks, and the backward kernels as nothing), so it sees only the padding and the dQ kernel's copy of a
# row statistic as wide as its key block: at batch 8 on v5p, 814 us for 128, 1016 for 256, 952 for 512, and XLA's
# temporaries 429, 504 and 816 MiB (that copy and the padding; linear in tokens all the same).
PALLAS_BLOCK = 512


def pallas_blocks(length: int) -> tuple[int, int]:
    """(tokens per block, padded length) of "pallas_tpu" for a sequence of `length` (`PALLAS_BLOCK`)."""
    unit = 128  # the kernel's smallest block (its MIN_BLOCK_SIZE), and the lane width its key blocks must fill
    block = min(PALLAS_BLOCK, -(-length // unit) * unit)
    return block, -(-length // block) * block


def _per_shard(local, q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array) -> jax.Array:
    """A Pallas TPU kernel's attention, `local` on one device's operands. Under a mesh with more than one device (the
    trainer's mesh context) it runs per shard in a `shard_map`: XLA cannot partition a Mosaic kernel, and compiling
    one on sharded operands fails ("Mosaic kernels cannot be automatically partitioned"). The shards are those the
    models constrain q, k and v to (`sharding.activation_spec`: batch over ("data", "fsdp"), heads over "tensor"),
    the tokens and channels whole on every shard (attention needs every key), an axis its mesh axes do not divide
    whole too."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return local(q_BLHK, k_BSHK, v_BSHK)
    # Queries, keys and values alike: the same batch and heads, only their lengths (never split) may differ.
    spec = sharding.activation_spec(q_BLHK.shape, ("act_batch", None, "act_heads", None))
    spec = P(*(None if axis is P.UNCONSTRAINED else axis for axis in spec))
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)(q_BLHK, k_BSHK, v_BSHK)


def _pallas_tpu_local(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array) -> jax.Array:
    """The kernel on one device's operands. Its blocks must divide the lengths: queries and keys are padded to a
    multiple of their blocks (`pallas_blocks`), and the padding is kept apart by segment ids (a padded key is in
    segment 0, which no real query attends to); the padded query rows are cut off. Runs on CPU under
    `jax.experimental.pallas.tpu.force_tpu_interpret_mode()` (tests/test_attention_blockwise.py); compiled for TPU
    topologies by tests/test_attention_tpu.py."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash  # TPU only; imports Mosaic

    b, length, length_kv, head_dim = q_BLHK.shape[0], q_BLHK.shape[1], k_BSHK.shape[1], q_BLHK.shape[-1]
    (block, padded), (block_kv, padded_kv) = pallas_blocks(length), pallas_blocks(length_kv)
    blocks = pallas_flash.BlockSizes(
        block_q=block, block_k_major=block_kv, block_k=block_kv, block_b=1,
        block_q_major_dkv=block, block_k_major_dkv=block_kv, block_k_dkv=block_kv, block_q_dkv=block,
        block_k_major_dq=block_kv, block_k_dq=block_kv, block_q_dq=block)

    def heads_major(x, n, n_padded):
        return jnp.swapaxes(jnp.pad(x, ((0, 0), (0, n_padded - n), (0, 0), (0, 0))), 1, 2)

    segment_ids = None
    if padded != length or padded_kv != length_kv:
        segment_ids = pallas_flash.SegmentIds(
            q=jnp.broadcast_to(jnp.arange(padded) < length, (b, padded)).astype(jnp.int32),
            kv=jnp.broadcast_to(jnp.arange(padded_kv) < length_kv, (b, padded_kv)).astype(jnp.int32))
    out_BHLK = pallas_flash.flash_attention(
        heads_major(q_BLHK, length, padded), heads_major(k_BSHK, length_kv, padded_kv),
        heads_major(v_BSHK, length_kv, padded_kv), segment_ids=segment_ids, sm_scale=head_dim ** -0.5,
        block_sizes=blocks)
    return jnp.swapaxes(out_BHLK, 1, 2)[:, :length]


def _resident_local(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array) -> jax.Array:
    """"pallas_resident" on one device's operands, or jax's flash kernel ("pallas_tpu") for shapes it does not take
    (`attention_kernel.supported`) and where a head's keys and their gradients do not fit the chip's VMEM
    (`attention_kernel.fits`: v4's 16 MiB holds about 2,500 keys)."""
    heads, head_dim, length_kv = q_BLHK.shape[2], q_BLHK.shape[3], k_BSHK.shape[1]
    if not attention_kernel.supported(heads, head_dim, length_kv) or not attention_kernel.fits(
            heads, head_dim, length_kv, q_BLHK.dtype):
        return _pallas_tpu_local(q_BLHK, k_BSHK, v_BSHK)
    return attention_kernel.resident_attention(q_BLHK, k_BSHK, v_BSHK)


def dot_product_attention(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array,
                          implementation: str = "xla") -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v over (batch, length, heads, head_dim) operands, as
    `jax.nn.dot_product_attention`, run by `implementation`: one of `IMPLEMENTATIONS`, or a resolved rule
    ("auto_cpu", "auto_gpu", "auto_tpu") that picks one for these operands and lengths
    (`platform.attention_implementation`; "auto" is resolved at set-up, not here)."""
    implementation = platform.attention_implementation(implementation, q_BLHK.dtype, q_BLHK.shape[-1],
                                                       q_BLHK.shape[1], k_BSHK.shape[1], q_BLHK.shape[2])
    if implementation == "heads_major":
        return _heads_major(q_BLHK, k_BSHK, v_BSHK)
    if implementation == "blockwise":
        return _blockwise(q_BLHK, k_BSHK, v_BSHK)
    if implementation == "pallas_tpu":
        return _per_shard(_pallas_tpu_local, q_BLHK, k_BSHK, v_BSHK)
    if implementation == "pallas_resident":
        return _per_shard(_resident_local, q_BLHK, k_BSHK, v_BSHK)
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


def capped_attention(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array, cap: float | None = None,
                     mask: jax.Array | None = None) -> jax.Array:
    """softmax(cap * tanh(q k^T / (sqrt(head_dim) cap)) + mask) v over (batch, length, heads, head_dim) operands,
    scores and softmax in float32 (Gemma's and VideoPrism's attention logit soft-capping; no cap for `cap` None or
    0). `mask` (bool, broadcastable to (batch, heads, length, length_kv), True = attend) hides keys with the most
    negative float32, as transformers' eager attention adds its mask, so a row with nothing to attend stays finite."""
    scores_BHLS = jnp.einsum("blhk,bshk->bhls", q_BLHK, k_BSHK,
                             preferred_element_type=jnp.float32) * (q_BLHK.shape[-1] ** -0.5)
    if cap:
        scores_BHLS = cap * jnp.tanh(scores_BHLS / cap)
    if mask is not None:
        scores_BHLS = jnp.where(mask, scores_BHLS, jnp.finfo(jnp.float32).min)
    probs_BHLS = jax.nn.softmax(scores_BHLS, axis=-1)
    return jnp.einsum("bhls,bshk->blhk", probs_BHLS.astype(v_BSHK.dtype), v_BSHK)
