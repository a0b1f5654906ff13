"""Attention as one Pallas kernel for TPU (Mosaic) with each head's keys and values whole in VMEM:
`resident_attention`, the "pallas_resident" implementation of `vidjax.ops.attention`.

Flash attention (jax's `flash_attention`, splash) walks key blocks with a running softmax, because in general a
head's keys do not fit on the chip. The video models' do: VideoMAE's decoder attends over 1,568 tokens (6,272 at 64
frames), and one head's keys and values are 1,568 x 64 bfloat16, 200 KiB each. So this kernel keeps them resident
and takes a whole row of scores at once:

- **Operands as the models hold them**, (batch, tokens, heads x head_dim), read in 128-lane blocks: two heads of 64
  (four of 32) side by side, no transpose to heads-first in HBM. A head's products run on the whole 128-lane block
  with the other heads' lanes zeroed: q_h k^T contracts 128 lanes where 64 are zero, which costs the matrix unit what
  a 64-deep contraction costs (its depth is 128 either way), and p_h v gives every lane, of which the head's are kept.
  (Reading q, k and v as thirds of the attention layer's fused projection instead, to spare the split and reshape
  copies, gained nothing: 58.2 ms against 58.3 for VideoMAE-B's pre-training step, docs/tpu.md.)
- **Grid** (batch, lane blocks, query blocks of `QUERY_BLOCK`, or 128 past `LONG_KEYS` keys). The keys' and values'
  block depends only on the first two, so it is read from HBM once per head group and stays in VMEM across the
  query blocks.
- **Forward**: s = (q_h scale) k^T in float32, a row's maximum and sum over every key in one pass (no online
  softmax, no rescaling), o = (p / l) v; it keeps each row's log-sum-exp (batch, lane blocks, tokens, heads a block).
- **Backward, one kernel**: the query blocks run in order ("arbitrary") and dK, dV accumulate in float32 VMEM
  scratch across them, written once at the last block; dQ is complete at each block (every key is there). Per head:
  p from the kept log-sum-exp, dV += p^T dO_h, dP = dO_h v^T, dS = p (dP - rowsum(dO_h o_h)), dQ_h = dS k scale,
  dK += dS^T (q_h scale). Products take the operands' dtype (bfloat16 in training) and accumulate in float32; the
  transposed operands are transposed in float32 and then cast.
- **Lengths**: nothing is padded in HBM. The last query block and the keys' block (rounded up to 128) run past the
  arrays; the rows read from there are zeroed in VMEM (the keys and values once per head group, into scratch), the
  padded keys are masked out of the softmax, and what is written past the arrays is dropped.

`supported` says which shapes it takes (`platform.resident_attention_takes`): heads whose size divides 128 (the last
128-lane block filled with zero heads where they do not fill it) or is a multiple of 128, at most `MAX_KEYS` keys;
`fits` whether their VMEM fits the chip traced for. On a mesh it runs per shard in a `shard_map`, like "pallas_tpu".
Elsewhere than on TPU it runs only under Pallas's TPU interpreter (`jax.experimental.pallas.tpu
.force_tpu_interpret_mode()`), which is how tests/test_attention_kernel.py holds it to XLA's attention on a CPU.
docs/tpu.md has libtpu's estimates of it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from vidjax import platform

LANES = 128
# Queries a grid step takes.
# Queries a grid step takes: 256 while the keys are at most LONG_KEYS, else 128 (the score rows of longer sequences
# fill VMEM at 256). libtpu's static estimates, VideoMAE-B's decoder (2 clips, 1,568 tokens, 6 heads of 64, bf16,
# forward + backward kernels): 128 rows 200.7 us, 256 183.2 us, 512 186.3 us (30% of its rows padding); 224, which
# divides 1,568, makes the backward's dK product a masked one, which libtpu's static profile cannot read.
QUERY_BLOCK = 256
LONG_KEYS = 2048
# The longest key sequence (padded to 128) whose score rows the kernel takes whole (`platform.RESIDENT_MAX_KEYS`): a
# (QUERY_BLOCK, keys) float32 score block and its few float32 companions, with the keys and values double-buffered,
# stay within VMEM_LIMIT.
MAX_KEYS = platform.RESIDENT_MAX_KEYS
# The VMEM the kernels may use (Mosaic's scoped default is lower than the score rows of long clips need), and what a
# chip is taken to have when the program's target cannot be asked (v4's, the smallest).
VMEM_LIMIT = 32 * 1024 * 1024
SMALLEST_VMEM = 16 * 1024 * 1024
_MASKED = -1e30


def supported(heads: int, head_dim: int, length_kv: int) -> bool:
    """Whether `resident_attention` takes (batch, length, heads, head_dim) operands with `length_kv` keys
    (`platform.resident_attention_takes`)."""
    return platform.resident_attention_takes(heads, head_dim, length_kv)


def vmem_bytes(heads: int, head_dim: int, length_kv: int, dtype) -> int:
    """The VMEM the backward kernel (the larger) needs: the keys and values and their gradients' output blocks
    (double-buffered), the float32 dK and dV accumulators, the keys and values with their padding zeroed, and two
    float32 score blocks (libtpu: 25.7 MiB for 6,272 keys in 128-lane blocks, bfloat16, 128-query blocks)."""
    shape = _Shape(head_dim=head_dim, lanes=platform.resident_attention_lanes(heads, head_dim) or LANES, length=0,
                   length_kv=length_kv, scale=1.0)
    size = jnp.dtype(dtype).itemsize
    per_key = shape.lanes * (8 * size + 8 + (2 * size if shape.keys != length_kv else 0)) + 8 * shape.query_block
    return shape.keys * per_key


def fits(heads: int, head_dim: int, length_kv: int, dtype) -> bool:
    """Whether the kernel's VMEM fits the chip the program is traced for (`pltpu.get_tpu_info`, from the mesh's
    devices or the default device; v4's 16 MiB where that is not a TPU), with a quarter to spare."""
    from jax.experimental.pallas import tpu as pltpu  # TPU only; imports Mosaic

    try:
        capacity = pltpu.get_tpu_info().vmem_capacity_bytes
    except Exception:  # noqa: BLE001 -- traced for a CPU (interpret mode) or a device Pallas does not know
        capacity = SMALLEST_VMEM
    return vmem_bytes(heads, head_dim, length_kv, dtype) * 5 // 4 <= min(capacity, VMEM_LIMIT)


def _padded(length: int, unit: int = LANES) -> int:
    return -(-length // unit) * unit


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What the kernels are specialised on."""

    head_dim: int
    lanes: int  # a grid step's lanes
    length: int  # queries
    length_kv: int  # keys
    scale: float
    groups: int = 1  # lane blocks of heads

    @property
    def heads(self) -> int:
        """Heads in a lane block."""
        return self.lanes // self.head_dim

    @property
    def query_block(self) -> int:
        return QUERY_BLOCK if self.keys <= LONG_KEYS else LANES

    @property
    def keys(self) -> int:
        """The keys' block: every key, rounded up to 128 (the rows past them are read from beyond the array)."""
        return _padded(self.length_kv)


def _compiler_params(semantics):
    from jax.experimental.pallas import tpu as pltpu  # TPU only; imports Mosaic

    return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=VMEM_LIMIT)


def _head_lanes(shape: _Shape, rows: int, h: int):
    """(rows, lanes) mask of head h's lanes in a block, or None when the block is one head."""
    if shape.heads == 1:
        return None
    lane = jax.lax.broadcasted_iota(jnp.int32, (rows, shape.lanes), 1)
    return (lane >= h * shape.head_dim) & (lane < (h + 1) * shape.head_dim)


def _scaled(shape: _Shape, x, keep=None):
    """x times the softmax scale, and zero outside `keep` (a head's lanes, the valid rows), in x's dtype. The
    arithmetic runs in float32: a bfloat16 select feeding a matrix product stops libtpu's static profile (an LLO
    type check on the packed operand)."""
    x32 = x.astype(jnp.float32)
    return ((x32 if keep is None else jnp.where(keep, x32, 0.0)) * shape.scale).astype(x.dtype)


def _dot_nt(a, b):
    """a b^T in float32, contracting both operands' lanes: (rows of a, rows of b)."""
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32,
                               precision=precision)


def _scores(q_h, k, length_kv: int | None = None):
    """q_h k^T in float32, (queries, keys); with `length_kv`, the keys from there on (padding) at -1e30."""
    s = _dot_nt(q_h, k)
    if length_kv is not None and length_kv < k.shape[0]:
        key = jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(key < length_kv, s, _MASKED)
    return s


def _dot(a, b):
    """a b in float32, a cast to b's dtype (a float32 (rows, keys) block or its transpose)."""
    precision = jax.lax.Precision.HIGHEST if b.dtype == jnp.float32 else None
    return jax.lax.dot_general(a.astype(b.dtype), b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32,
                               precision=precision)


def _resident_keys(shape: _Shape, k_ref, v_ref, k_zeroed, v_zeroed):
    """The keys and values of this (clip, lane block). Where the key count is not a multiple of 128 their block runs
    past the array, and those rows hold whatever was in VMEM: at the first query block they are copied with those
    rows zeroed into scratch, which the later query blocks of the same (clip, lane block) read (the query axis runs in
    order on one core). Zero keys and values give scores of 0, which the forward masks, and add nothing to dQ."""
    from jax.experimental import pallas as pl

    if k_zeroed is None:
        return k_ref[...], v_ref[...]

    @pl.when(pl.program_id(2) == 0)
    def _():
        key = jax.lax.broadcasted_iota(jnp.int32, (shape.keys, 1), 0)
        for ref, zeroed in ((k_ref, k_zeroed), (v_ref, v_zeroed)):
            zeroed[...] = jnp.where(key < shape.length_kv, ref[...].astype(jnp.float32), 0.0).astype(zeroed.dtype)

    return k_zeroed[...], v_zeroed[...]


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *zeroed, shape: _Shape):
    q = q_ref[...]
    k, v = _resident_keys(shape, k_ref, v_ref, *(zeroed or (None, None)))
    out = None
    for h in range(shape.heads):
        mine = _head_lanes(shape, q.shape[0], h)
        s = _scores(_scaled(shape, q, mine), k, shape.length_kv)
        m = jnp.max(s, axis=1, keepdims=True)
        p = jnp.exp(s - m)
        total = jnp.sum(p, axis=1, keepdims=True)
        o_h = _dot(p, v) * (1.0 / total)
        out = o_h if out is None else jnp.where(mine, o_h, out)
        lse_ref[:, h:h + 1] = m + jnp.log(total)
    o_ref[...] = out.astype(o_ref.dtype)


def _backward_kernel(q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, dq_ref, dk_ref, dv_ref, dk_acc, dv_acc, *zeroed,
                     shape: _Shape):
    from jax.experimental import pallas as pl

    step = pl.program_id(2)

    @pl.when(step == 0)
    def _():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    q, do = q_ref[...], do_ref[...]
    k, v = _resident_keys(shape, k_ref, v_ref, *(zeroed or (None, None)))
    o = o_ref[...].astype(jnp.float32)
    rows = None
    if shape.length % shape.query_block:
        # The last block's rows past the sequence hold whatever was in VMEM: zeroed (q, dO, o and the log-sum-exp),
        # they give p = 1 and dS = 0, and add nothing to dK or dV.
        row = step * shape.query_block + jax.lax.broadcasted_iota(jnp.int32, (shape.query_block, 1), 0)
        rows = row < shape.length
        o = jnp.where(rows, o, 0.0)
    dq = None
    for h in range(shape.heads):
        mine = _head_lanes(shape, q.shape[0], h)
        keep = mine if rows is None else (rows if mine is None else mine & rows)
        q_h = _scaled(shape, q, keep)
        do_h32 = do.astype(jnp.float32) if keep is None else jnp.where(keep, do.astype(jnp.float32), 0.0)
        do_h = do_h32.astype(do.dtype)
        lse = lse_ref[:, h:h + 1] if rows is None else jnp.where(rows, lse_ref[:, h:h + 1], 0.0)
        # No mask on the padded keys here: their rows of k and v are zero, so their scores are 0 and dP is 0, and
        # dS there (-p delta) meets only their zero rows of k in dQ; their dK and dV rows are not written.
        p = jnp.exp(_scores(q_h, k) - lse)
        # do_h and q_h are zero outside head h's lanes, so these two products touch only that head's dV and dK.
        # Transposed in float32, then cast: a bfloat16 transpose goes through a packed relayout that stops libtpu's
        # static profile (flash attention's backward does the same).
        dv_acc[...] += _dot(p.T, do_h)
        dp = _dot_nt(do_h, v)
        delta = jnp.sum(do_h32 * o, axis=1, keepdims=True)
        ds = p * (dp - delta)
        dq_h = _dot(ds, k)
        dq = dq_h if dq is None else jnp.where(mine, dq_h, dq)
        dk_acc[...] += _dot(ds.T, q_h)  # q_h carries the scale
    dq_ref[...] = (dq * shape.scale).astype(dq_ref.dtype)

    @pl.when(step == pl.num_programs(2) - 1)
    def _():
        dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _specs(shape: _Shape):
    """BlockSpecs on grid (b, g, i) of a query-shaped block, a key-shaped block and a log-sum-exp block."""
    from jax.experimental import pallas as pl

    queries = pl.BlockSpec((None, shape.query_block, shape.lanes), lambda b, g, i: (b, i, g))
    keys = pl.BlockSpec((None, shape.keys, shape.lanes), lambda b, g, i: (b, 0, g))
    lse = pl.BlockSpec((None, None, shape.query_block, shape.heads), lambda b, g, i: (b, g, i, 0))
    return queries, keys, lse


def _zeroed_scratch(shape: _Shape, dtype) -> list:
    """VMEM for the keys and values with the rows past the array zeroed (`_resident_keys`), where there are such."""
    from jax.experimental.pallas import tpu as pltpu

    return [] if shape.keys == shape.length_kv else [pltpu.VMEM((shape.keys, shape.lanes), dtype)] * 2


def _forward(q, k, v, shape: _Shape):
    from jax.experimental import pallas as pl

    batch, length, width = q.shape[0], q.shape[1], shape.groups * shape.lanes
    queries, keys, lse = _specs(shape)
    zeroed = _zeroed_scratch(shape, k.dtype)
    return pl.pallas_call(
        functools.partial(_forward_kernel, shape=shape),
        grid=(batch, shape.groups, -(-length // shape.query_block)),
        in_specs=[queries, keys, keys],
        out_specs=[queries, lse],
        out_shape=[jax.ShapeDtypeStruct((batch, length, width), q.dtype),
                   jax.ShapeDtypeStruct((batch, shape.groups, length, shape.heads), jnp.float32)],
        scratch_shapes=zeroed,
        compiler_params=_compiler_params(("parallel", "parallel", "arbitrary" if zeroed else "parallel")),
        name="resident_attention_forward",
    )(q, k, v)


def _backward(shape: _Shape, q, k, v, out, lse, dout):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    batch, length, width = q.shape[0], q.shape[1], shape.groups * shape.lanes
    queries, keys, lse_spec = _specs(shape)
    return pl.pallas_call(
        functools.partial(_backward_kernel, shape=shape),
        grid=(batch, shape.groups, -(-length // shape.query_block)),
        in_specs=[queries, keys, keys, queries, queries, lse_spec],
        out_specs=[queries, keys, keys],
        out_shape=[jax.ShapeDtypeStruct((batch, length, width), q.dtype),
                   jax.ShapeDtypeStruct((batch, shape.length_kv, width), k.dtype),
                   jax.ShapeDtypeStruct((batch, shape.length_kv, width), v.dtype)],
        scratch_shapes=[pltpu.VMEM((shape.keys, shape.lanes), jnp.float32)] * 2 + _zeroed_scratch(shape, k.dtype),
        compiler_params=_compiler_params(("parallel", "parallel", "arbitrary")),
        name="resident_attention_backward",
    )(q, k, v, out, dout.astype(q.dtype), lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, shape: _Shape):
    return _forward(q, k, v, shape)[0]


def _attention_fwd(q, k, v, shape: _Shape):
    out, lse = _forward(q, k, v, shape)
    return out, (q, k, v, out, lse)


def _attention_bwd(shape: _Shape, residuals, dout):
    return _backward(shape, *residuals, dout)


_attention.defvjp(_attention_fwd, _attention_bwd)


def resident_attention(q_BLHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v over (batch, length, heads, head_dim) operands on one device, as
    `jax.nn.dot_product_attention`; differentiable (its own backward kernel). Shapes must be `supported`."""
    b, length, heads, head_dim = q_BLHK.shape
    length_kv = k_BSHK.shape[1]
    lanes = platform.resident_attention_lanes(heads, head_dim)
    if not supported(heads, head_dim, length_kv):
        raise ValueError(f"resident_attention takes heads of a size that divides 128 or is a multiple of 128, and "
                         f"at most {MAX_KEYS} keys; got {heads} heads of "
                         f"{head_dim} and {length_kv} keys. Use attention_impl='pallas_tpu' or 'xla' for these.")
    width = heads * head_dim
    groups = -(-width // lanes)
    shape = _Shape(head_dim=head_dim, lanes=lanes, length=length, length_kv=length_kv, scale=head_dim ** -0.5,
                   groups=groups)

    def flat(x):
        # Heads that do not fill the last 128-lane block are joined by zero heads (their scores 0, their output 0),
        # which the result leaves out again: the padding is a few copies of q, k and v, the kernel a third more work
        # at 3 heads of 64, against jax's flash kernels for such heads.
        x = x.reshape(x.shape[0], x.shape[1], width)
        return jnp.pad(x, ((0, 0), (0, 0), (0, groups * lanes - width))) if groups * lanes != width else x

    out = _attention(flat(q_BLHK), flat(k_BSHK), flat(v_BSHK), shape)
    return out[..., :width].reshape(q_BLHK.shape)
