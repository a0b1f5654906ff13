"""Mamba's selective scan as one fused Pallas kernel for TPU (Mosaic): `selective_scan_pallas`.

The same recurrence and arguments as `vidjax.ops.selective_scan.selective_scan` (that module's docstring), computed
so that the (d_state, channels) state never leaves the chip's on-chip memory:

- **Grid** (batch, channel tiles, time tiles). The first two are independent ("parallel": a v4/v5p chip's two
  TensorCores split them); the time tiles run in order ("arbitrary"), the state carried between them in a VMEM
  scratch. A reversed scan walks the time tiles from the last and each tile's steps from its last: nothing is
  flipped in memory. The last tile may run past the sequence; its steps there are masked to dt = u = 0 (the state
  passes through unchanged), so nothing is padded in memory either (but under `whole_tiles`, libtpu's static
  profile's twin of the kernel).
- **Inside a tile** a `fori_loop` over groups of GROUP steps, each group read as whole (GROUP, F) blocks and its
  steps unrolled: dt = softplus(delta + bias), h = exp(dt A) h + (dt u) B, y = sum_n h C, on a (N, channels) state
  with the channels on the lanes. Each input is read from HBM once and y written once.
- **Backward** (`jax.custom_vjp`): the forward kernel also writes the state entering every time tile (a
  (batch, tiles, N, channels) array, 1/`time_block` of the states). The backward kernel walks the tiles in the
  opposite order; each tile first recomputes its states from the kept one into VMEM, then runs the adjoint
  recurrence g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} through them, writing d(delta), d(u), d(B), d(C) per step and
  accumulating d(A) in its output block. What it keeps between the passes is its inputs (delta, u, B and C in
  their own dtype) and the tile boundary states.

The output gate (D u, silu(z)) stays in XLA around the kernel, which fuses it with the projection that consumes it:
the kernel returns the scan's y in float32. Its arithmetic is float32 whatever the inputs' dtype (bfloat16 inputs
are read as such and converted in VMEM).

On a mesh the kernel runs per shard in a `shard_map` (XLA cannot partition a Mosaic kernel): the batch over the
mesh's batch axes, the channels over "tensor" where that divides them, every step of a sequence on one device.
Elsewhere than on TPU it runs only under Pallas's TPU interpreter (`jax.experimental.pallas.tpu
.force_tpu_interpret_mode()`), which is how the tests hold it to `selective_scan_sequential` on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vidjax import sharding
from vidjax.ops import selective_scan as reference

# Steps a time tile holds. 128 keeps the padding of a 3,137-token VideoMamba sequence at 2% (3,200) and a tile's
# recomputed states (time_block x N x channel_block float32) at 3 MiB of VMEM in the backward kernel.
TIME_BLOCK = 128
# The widest channel tile: the largest multiple of 128 lanes up to this that divides d_inner (VideoMamba's Ti, S and
# M: d_inner 384, 768, 1152 -> 384, 768, 384). A d_inner that no multiple of 128 divides is one tile. libtpu's static
# estimate of the S-sized forward kernel: 14.5 us with 768-channel tiles, 18.1 with 384, 20.7 with 256 (2 clips of
# 512 steps, bf16); the backward kernel about the same at 384 and 768.
MAX_CHANNEL_BLOCK = 768
# Steps of the in-tile loop read, unrolled and written together: one aligned (GROUP, F) block of each input and
# output (a bfloat16 block's rows are addressable 16 at a time), and one step's exp overlapping the previous step's
# dependent multiply-add.
GROUP = 16
# The backward kernel's d(B) and d(C), sum_d state[n, d] row[d] for each step, are matrix products laid out either as
# rows, (1, Dc) x (N, Dc)^T, or as columns, (N, Dc) x (1, Dc)^T, then relaid out as rows (a sublane gather). Which is
# faster depends on the channel tile: libtpu's static estimates of the backward kernel on v5p (2 clips, bf16, S's
# d_inner of 768 at 512 steps): 768-channel tiles, columns 56 us against rows 72; 384-channel tiles, rows 76 against
# columns 91 (VideoMamba-M's 384-channel tiles at 1,569 steps: rows 16% lower). Columns from this tile width, on chips
# that have the sublane gather (v5e and later; v4's Mosaic refuses it, `_products_as_rows`).
COLUMN_PRODUCTS_FROM = 768


_WHOLE_TILES = [False]


@contextlib.contextmanager
def whole_tiles():
    """Within it, the kernels are traced on their sequences padded to whole time tiles, for libtpu's static profile
    only (`vidjax.aot`): its profiler stops on a kernel whose last time tile is partial ("Unsupported llo
    instruction: kScalarMultiplyHighU32", v5e at 384- and 768-channel tiles, v6e at 768). The twin computes the
    same steps (a tile's rows past the sequence are computed and masked either way; `spec.length` stays the
    sequence's) and moves only the overhang's rows more: libtpu's estimates of the two on v5p, whose profiler takes
    both, agree within 1% (S's forward and backward kernels, 768 channels, and Ti's reversed ones at 1,569 steps:
    the twin 0.1-0.8% lower). Training never pads: the padding would cost a copy of each input."""
    before, _WHOLE_TILES[0] = _WHOLE_TILES[0], True
    try:
        yield
    finally:
        _WHOLE_TILES[0] = before


def channel_block(d_inner: int, widest: int = MAX_CHANNEL_BLOCK) -> int:
    """Channels per tile: the largest multiple of 128 up to `widest` that divides `d_inner`, else all of them."""
    for block in range(min(widest, d_inner) // 128 * 128, 0, -128):
        if d_inner % block == 0:
            return block
    return d_inner


def _tiles(length: int, time_block: int) -> tuple[int, int]:
    """(steps per time tile, number of tiles): a sequence shorter than a tile is one tile of its length rounded up
    to whole groups of steps (GROUP). The last tile may run past the sequence: its steps there are masked."""
    block = min(time_block, -(-length // GROUP) * GROUP)
    return block, -(-length // block)


def _products_as_rows(channel_tile: int) -> bool:
    """Whether the backward kernel lays d(B) and d(C) out as rows (`COLUMN_PRODUCTS_FROM`): below that tile width,
    and on chips whose Mosaic has no sublane gather (v4 and older: "Sublane gather not supported by this TPU
    generation"), which the chip the program is traced for says (`pltpu.get_tpu_info`, from the mesh's devices)."""
    if channel_tile < COLUMN_PRODUCTS_FROM:
        return True
    from jax.experimental.pallas import tpu as pltpu  # TPU only; imports Mosaic

    try:
        generation = pltpu.get_tpu_info().generation
    except Exception:  # noqa: BLE001 -- traced for a CPU (interpret mode) or a device Pallas does not know
        return False
    return generation < 5


def _compiler_params():
    from jax.experimental.pallas import tpu as pltpu  # TPU only; imports Mosaic

    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _order(count: int, reverse: bool) -> list[int]:
    return list(range(count - 1, -1, -1)) if reverse else list(range(count))


@dataclasses.dataclass(frozen=True)
class _Scan:
    """What both kernels are specialised on: the scan's direction, length, tiles and discretisation."""

    reverse: bool
    length: int
    time_block: int
    channel_tile: int
    softplus: bool
    rows: bool = True  # d(B) and d(C) as row products (`_products_as_rows`)

    @property
    def tiles(self) -> int:
        return -(-self.length // self.time_block)

    def time(self, k):
        """The time tile the forward kernel's k-th step of its sequential grid axis reads."""
        return self.tiles - 1 - k if self.reverse else k


def _group(spec: _Scan, tile, g, delta_ref, bias_ref, u_ref, B_ref, C_ref=None, dy_ref=None):
    """Rows [g * GROUP, (g + 1) * GROUP) of time tile `tile`, in float32, each read as one aligned block (a single
    dynamic row of a bfloat16 block is not addressable): dt = softplus(delta + bias), u, B, C, dy, and the
    derivative of dt in delta. A row past the sequence (the last tile's overhang, whose reads are undefined) has
    dt = u = B = C = dy = 0: such a step leaves the state as it is in either direction and adds nothing."""
    from jax.experimental import pallas as pl

    rows = pl.ds(pl.multiple_of(g * GROUP, GROUP), GROUP)
    index = tile * spec.time_block + g * GROUP + jax.lax.broadcasted_iota(jnp.int32, (GROUP, 1), 0)
    valid = index < spec.length

    def read(ref):
        return None if ref is None else jnp.where(valid, ref[rows, :].astype(jnp.float32), 0.0)

    raw = read(delta_ref) + bias_ref[...].astype(jnp.float32)
    dt = jnp.where(valid, jnp.logaddexp(raw, 0.0) if spec.softplus else raw, 0.0)
    slope = jax.nn.sigmoid(raw) if spec.softplus else None
    return rows, dt, slope, read(u_ref), read(B_ref), read(C_ref), read(dy_ref)


# ---------------------------------------------------------------------------------------------------------- forward
def _forward_kernel(delta_ref, bias_ref, u_ref, A_ref, B_ref, C_ref, y_ref, h_in_ref, h_scratch, *, spec: _Scan):
    """One (batch element, channel tile, time tile): delta, u, y (T, Dc); bias (1, Dc); A (N, Dc); B, C (T, N);
    h_in (N, Dc) the state entering the tile (kept for the backward pass). The steps go in groups of GROUP rows:
    each group's inputs are read and its outputs written as whole (GROUP, F) blocks, its steps unrolled."""
    from jax.experimental import pallas as pl

    @pl.when(pl.program_id(2) == 0)
    def _():
        h_scratch[...] = jnp.zeros_like(h_scratch)

    h_in_ref[...] = h_scratch[...]
    A = A_ref[...].astype(jnp.float32)
    groups = spec.time_block // GROUP
    tile = spec.time(pl.program_id(2))

    def group(i, h):
        g = groups - 1 - i if spec.reverse else i
        rows, dt, _, u, B, C, _ = _group(spec, tile, g, delta_ref, bias_ref, u_ref, B_ref, C_ref)
        x = dt * u
        ys = [None] * GROUP
        for j in _order(GROUP, spec.reverse):
            h = jnp.exp(dt[j:j + 1] * A) * h + x[j:j + 1] * B[j][:, None]
            ys[j] = jnp.sum(h * C[j][:, None], axis=0, keepdims=True)
        y_ref[rows, :] = jnp.concatenate(ys, axis=0)
        return h

    h_scratch[...] = jax.lax.fori_loop(0, groups, group, h_scratch[...])


def _specs(spec: _Scan, d_state: int, backward: bool):
    """The BlockSpecs: a (T, Dc) block of a (batch, L, D) array, (T, N) of a (batch, L, N) one, (N, Dc) of A, (1, Dc)
    of the bias, and (N, Dc) of the (batch, tiles, N, D) states; the backward kernel walks the tiles in the
    opposite order."""
    from jax.experimental import pallas as pl

    def time(k):
        return spec.time(spec.tiles - 1 - k) if backward else spec.time(k)

    return dict(
        seq=pl.BlockSpec((None, spec.time_block, spec.channel_tile), lambda b, d, k: (b, time(k), d)),
        states=pl.BlockSpec((None, spec.time_block, d_state), lambda b, d, k: (b, time(k), 0)),
        per_channel=pl.BlockSpec((d_state, spec.channel_tile), lambda b, d, k: (0, d)),
        bias=pl.BlockSpec((1, spec.channel_tile), lambda b, d, k: (0, d)),
        boundary=pl.BlockSpec((None, None, d_state, spec.channel_tile), lambda b, d, k: (b, time(k), 0, d)),
        d_A=pl.BlockSpec((None, d_state, spec.channel_tile), lambda b, d, k: (b, 0, d)),
        d_states=pl.BlockSpec((None, None, spec.time_block, d_state), lambda b, d, k: (b, d, time(k), 0)))


def _forward_call(delta, bias, u, A_ND, B, C, spec: _Scan):
    """y (batch, L, D) float32 and the states entering each time tile (batch, tiles, N, D)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    batch, length, d_inner = u.shape
    d_state = A_ND.shape[0]
    specs = _specs(spec, d_state, backward=False)
    elements = batch * length * d_inner * d_state
    cost = pl.CostEstimate(flops=7 * elements, transcendentals=elements + 2 * u.size, bytes_accessed=int(
        delta.size * delta.dtype.itemsize + u.size * u.dtype.itemsize + 2 * B.size * B.dtype.itemsize
        + 4 * u.size + 4 * batch * spec.tiles * d_state * d_inner + 4 * A_ND.size))
    return pl.pallas_call(
        functools.partial(_forward_kernel, spec=spec),
        grid=(batch, d_inner // spec.channel_tile, spec.tiles),
        in_specs=[specs["seq"], specs["bias"], specs["seq"], specs["per_channel"], specs["states"], specs["states"]],
        out_specs=[specs["seq"], specs["boundary"]],
        out_shape=[jax.ShapeDtypeStruct((batch, length, d_inner), jnp.float32),
                   jax.ShapeDtypeStruct((batch, spec.tiles, d_state, d_inner), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((d_state, spec.channel_tile), jnp.float32)],
        compiler_params=_compiler_params(),
        cost_estimate=cost,
        name="selective_scan_reverse" if spec.reverse else "selective_scan",
    )(delta, bias, u, A_ND, B, C)


# --------------------------------------------------------------------------------------------------------- backward
def _backward_kernel(delta_ref, bias_ref, u_ref, A_ref, B_ref, C_ref, h_in_ref, dy_ref,
                     d_delta_ref, d_u_ref, d_A_ref, d_B_ref, d_C_ref, states, g_scratch, *, spec: _Scan):
    """One (batch element, channel tile, time tile), the tiles in the opposite order to the forward pass.

    `states[s + 1]` is the state after the tile's s-th step in scan order and `states[0]` the state entering it;
    `g_scratch` carries exp(dt_{t+1} A) g_{t+1} (the later steps' share of dLoss/dh_t) between tiles. d(B) and d(C)
    are this channel tile's share (summed over tiles outside); d(A) sums over the time tiles in its output block.
    """
    from jax.experimental import pallas as pl

    @pl.when(pl.program_id(2) == 0)
    def _():
        g_scratch[...] = jnp.zeros_like(g_scratch)
        d_A_ref[...] = jnp.zeros_like(d_A_ref)

    A = A_ref[...].astype(jnp.float32)
    groups = spec.time_block // GROUP
    tile = spec.time(spec.tiles - 1 - pl.program_id(2))
    states[0] = h_in_ref[...]

    def scan_position(g, j):
        """The place in scan order of row j of group g (0 the tile's first step in scan order)."""
        row = g * GROUP + j
        return groups * GROUP - 1 - row if spec.reverse else row

    def recompute(i, h):
        g = groups - 1 - i if spec.reverse else i
        _, dt, _, u, B, _, _ = _group(spec, tile, g, delta_ref, bias_ref, u_ref, B_ref)
        x = dt * u
        for j in _order(GROUP, spec.reverse):
            h = jnp.exp(dt[j:j + 1] * A) * h + x[j:j + 1] * B[j][:, None]
            states[scan_position(g, j) + 1] = h
        return h

    jax.lax.fori_loop(0, groups, recompute, h_in_ref[...])

    def over_lanes(state, row):
        """sum_d state[n, d] row[d] as a (1, N) row (exact in float32): the (1, Dc) x (N, Dc)^T product, or the
        (N, Dc) x (1, Dc)^T one relaid out (`COLUMN_PRODUCTS_FROM`)."""
        if spec.rows:
            return jax.lax.dot_general(row, state, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                                       preferred_element_type=jnp.float32)
        column = jax.lax.dot_general(state, row, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST,
                                     preferred_element_type=jnp.float32)
        return column.reshape(1, -1)

    def adjoint(i, carry):
        g_next, d_A = carry
        g = i if spec.reverse else groups - 1 - i  # the groups in reverse scan order
        rows, dt, slope, u, B, C, dy = _group(spec, tile, g, delta_ref, bias_ref, u_ref, B_ref, C_ref, dy_ref)
        x = dt * u
        out = {name: [None] * GROUP for name in ("d_dt", "d_u", "d_B", "d_C")}
        for j in _order(GROUP, not spec.reverse):
            s = scan_position(g, j)
            h_prev, h = states[s], states[s + 1]
            a = jnp.exp(dt[j:j + 1] * A)
            grad = dy[j:j + 1] * C[j][:, None] + g_next
            q = grad * h_prev * a  # dLoss/d(dt * A)
            g_b = jnp.sum(grad * B[j][:, None], axis=0, keepdims=True)  # (1, Dc)
            out["d_dt"][j] = jnp.sum(q * A, axis=0, keepdims=True) + g_b * u[j:j + 1]
            out["d_u"][j] = g_b * dt[j:j + 1]
            out["d_B"][j] = over_lanes(grad, x[j:j + 1])  # (1, N)
            out["d_C"][j] = over_lanes(h, dy[j:j + 1])
            d_A = d_A + q * dt[j:j + 1]
            g_next = a * grad
        d_dt = jnp.concatenate(out["d_dt"], axis=0)
        d_delta_ref[rows, :] = d_dt * slope if spec.softplus else d_dt
        d_u_ref[rows, :] = jnp.concatenate(out["d_u"], axis=0)
        d_B_ref[rows, :] = jnp.concatenate(out["d_B"], axis=0)
        d_C_ref[rows, :] = jnp.concatenate(out["d_C"], axis=0)
        return g_next, d_A

    g_next, d_A = jax.lax.fori_loop(0, groups, adjoint, (g_scratch[...], jnp.zeros_like(A)))
    g_scratch[...] = g_next
    d_A_ref[...] += d_A


def _backward_call(delta, bias, u, A_ND, B, C, h_in, dy, spec: _Scan):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    batch, length, d_inner = u.shape
    d_state = A_ND.shape[0]
    channel_tiles = d_inner // spec.channel_tile
    specs = _specs(spec, d_state, backward=True)
    elements = batch * length * d_inner * d_state
    cost = pl.CostEstimate(flops=22 * elements, transcendentals=2 * elements + 4 * u.size, bytes_accessed=int(
        sum(x.size * x.dtype.itemsize for x in (delta, u, B, C, h_in, dy)) + 8 * u.size
        + 8 * batch * channel_tiles * length * d_state + 4 * batch * A_ND.size))
    seq, states = specs["seq"], specs["states"]
    return pl.pallas_call(
        functools.partial(_backward_kernel, spec=spec),
        grid=(batch, channel_tiles, spec.tiles),
        in_specs=[seq, specs["bias"], seq, specs["per_channel"], states, states, specs["boundary"], seq],
        out_specs=[seq, seq, specs["d_A"], specs["d_states"], specs["d_states"]],
        out_shape=[jax.ShapeDtypeStruct((batch, length, d_inner), jnp.float32),
                   jax.ShapeDtypeStruct((batch, length, d_inner), jnp.float32),
                   jax.ShapeDtypeStruct((batch, d_state, d_inner), jnp.float32),
                   jax.ShapeDtypeStruct((batch, channel_tiles, length, d_state), jnp.float32),
                   jax.ShapeDtypeStruct((batch, channel_tiles, length, d_state), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((spec.time_block + 1, d_state, spec.channel_tile), jnp.float32),
                        pltpu.VMEM((d_state, spec.channel_tile), jnp.float32)],
        compiler_params=_compiler_params(),
        cost_estimate=cost,
        name="selective_scan_reverse_backward" if spec.reverse else "selective_scan_backward",
    )(delta, bias, u, A_ND, B, C, h_in, dy)


# ---------------------------------------------------------------------------------------------------- the core op
@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _scan(delta, bias, u, A_ND, B, C, spec):
    return _forward_call(delta, bias, u, A_ND, B, C, spec)[0]


def _scan_fwd(delta, bias, u, A_ND, B, C, spec):
    y, h_in = _forward_call(delta, bias, u, A_ND, B, C, spec)
    return y, (delta, bias, u, A_ND, B, C, h_in)


def _scan_bwd(spec, residuals, dy):
    delta, bias, u, A_ND, B, C, h_in = residuals
    d_delta, d_u, d_A, d_B, d_C = _backward_call(delta, bias, u, A_ND, B, C, h_in, dy.astype(jnp.float32), spec)
    return (d_delta.astype(delta.dtype), jnp.sum(d_delta, axis=(0, 1)).reshape(bias.shape).astype(bias.dtype),
            d_u.astype(u.dtype), jnp.sum(d_A, axis=0).astype(A_ND.dtype), jnp.sum(d_B, axis=1).astype(B.dtype),
            jnp.sum(d_C, axis=1).astype(C.dtype))


_scan.defvjp(_scan_fwd, _scan_bwd)


def _local_scan(delta, bias, u, A_ND, B, C, *, reverse: bool, softplus: bool, time_block: int,
                widest_channels: int):
    """The kernel on one device's operands: y (batch, L, D) float32. bias (1, D) float32."""
    length, d_inner = u.shape[1], u.shape[2]
    block, tiles = _tiles(length, time_block)
    tile = channel_block(d_inner, widest_channels)
    spec = _Scan(reverse=reverse, length=length, time_block=block, channel_tile=tile, softplus=softplus,
                 rows=_products_as_rows(tile))
    overhang = tiles * block - length
    if not (_WHOLE_TILES[0] and overhang):
        return _scan(delta, bias, u, A_ND, B, C, spec)
    delta, u, B, C = (jnp.pad(x, ((0, 0), (0, overhang), (0, 0))) for x in (delta, u, B, C))
    return _scan(delta, bias, u, A_ND, B, C, spec)[:, :length]


def selective_scan_pallas(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                          D: jax.Array | None = None, z: jax.Array | None = None,
                          delta_bias: jax.Array | None = None, *, delta_softplus: bool = False,
                          reverse: bool = False, time_block: int = TIME_BLOCK,
                          widest_channels: int = MAX_CHANNEL_BLOCK) -> jax.Array:
    """The selective scan of `vidjax.ops.selective_scan.selective_scan` (same arguments and result) through the
    fused TPU kernel; `time_block` steps and up to `widest_channels` channels a tile. Differentiable (its own
    backward kernel). On a CPU it needs Pallas's TPU interpreter (`force_tpu_interpret_mode`)."""
    reference._check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if not isinstance(time_block, int) or time_block < GROUP or time_block % GROUP:
        raise ValueError(f"selective_scan_pallas: time_block must be a positive multiple of {GROUP}; got "
                         f"{time_block!r}.")
    d_inner = u.shape[2]
    # delta, u, B and C enter the kernel in their own dtype (bfloat16 halves their reads and is what the backward
    # pass keeps); the bias and the softplus are applied in the kernel, in float32.
    bias = (jnp.zeros((d_inner,), jnp.float32) if delta_bias is None else delta_bias.astype(jnp.float32))
    bias = bias.reshape(1, d_inner)
    A_ND = A.astype(jnp.float32).T
    run = functools.partial(_local_scan, reverse=reverse, softplus=delta_softplus, time_block=time_block,
                            widest_channels=widest_channels)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        y = run(delta, bias, u, A_ND, B, C)
    else:
        seq = _spec(sharding.activation_spec(u.shape, ("act_batch", None, "act_mlp")))
        per_channel, states = P(None, seq[2]), P(seq[0], None, None)
        y = jax.shard_map(run, mesh=mesh, in_specs=(seq, per_channel, seq, per_channel, states, states),
                          out_specs=seq, check_vma=False)(delta, bias, u, A_ND, B, C)
    return reference._gate(y, u, D, z).astype(u.dtype)


def _spec(spec: P) -> P:
    """A `shard_map` spec from an activation spec: an axis left unconstrained (its mesh axes do not divide it) is
    whole on every shard."""
    return P(*(None if axis is P.UNCONSTRAINED else axis for axis in spec))
