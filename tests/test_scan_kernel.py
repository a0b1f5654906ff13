"""The fused selective-scan kernel (`vidjax.ops.scan_kernel`): in Pallas's TPU interpreter on this CPU it computes
what the plain sequential scan computes, values and gradients at 1e-5 in float32, in both directions, at lengths that
are not whole tiles (and padded to whole tiles, vidjax.aot's profiling twin, the same), at batch 1 and 3, from
bfloat16 inputs with a float32 state, and sharded over 8 devices as on one; compiled for TPU for real (Mosaic, on
this CPU: nothing runs) at VideoMamba-S's and -M's shapes, forward and backward. The model's `scan="pallas"` (and
"auto" on TPU) runs it: tests/test_videomamba.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiered
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidjax import platform
from vidjax.ops import scan_kernel
from vidjax.ops.selective_scan import selective_scan_sequential

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(batch: int, length: int, d_inner: int, d_state: int, dtype=jnp.float32, seed: int = 0):
    k = jax.random.split(jax.random.PRNGKey(seed), 8)
    return (jax.random.normal(k[0], (batch, length, d_inner)).astype(dtype),
            (0.5 * jax.random.normal(k[1], (batch, length, d_inner))).astype(dtype),
            -jnp.exp(0.5 * jax.random.normal(k[2], (d_inner, d_state))),
            jax.random.normal(k[3], (batch, length, d_state)).astype(dtype),
            jax.random.normal(k[4], (batch, length, d_state)).astype(dtype),
            jax.random.normal(k[5], (d_inner,)),
            jax.random.normal(k[6], (batch, length, d_inner)).astype(dtype),
            0.1 * jax.random.normal(k[7], (d_inner,)))


def _loss(scan, *args):
    y = scan(*args).astype(jnp.float32)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))


def _value_and_grads(scan, args):
    return jax.value_and_grad(functools.partial(_loss, scan), argnums=tuple(range(len(args))))(*args)


def _assert_close(got, want, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=rtol)


# (batch, length, reverse, time_block): 37 steps are two whole tiles of 16 and 5 more; 3 clips, 1 clip.
CASES = [(3, 37, True, 16), (1, 37, False, 16), (1, 16, True, 16), (3, 50, False, 32)]


@pytest.mark.parametrize("products", ["rows", "columns"])
@pytest.mark.parametrize("batch,length,reverse,time_block", tiered(CASES, unpack=True))
def test_the_kernel_equals_the_sequential_scan_values_and_gradients(batch, length, reverse, time_block, products,
                                                                    monkeypatch):
    """Both layouts of the backward kernel's d(B) and d(C) products (`scan_kernel.COLUMN_PRODUCTS_FROM`)."""
    monkeypatch.setattr(scan_kernel, "COLUMN_PRODUCTS_FROM", 10**6 if products == "rows" else 0)
    args = _inputs(batch, length, 16, 4)
    options = dict(delta_softplus=True, reverse=reverse)
    with pltpu.force_tpu_interpret_mode():
        y, grads = jax.jit(lambda *a: _value_and_grads(functools.partial(
            scan_kernel.selective_scan_pallas, time_block=time_block, **options), a))(*args)
    want_y, want_grads = _value_and_grads(functools.partial(selective_scan_sequential, **options), args)
    _assert_close(y, want_y, atol=1e-4)  # a sum over every output
    for name, got, want in zip(ARGS, grads, want_grads, strict=True):
        _assert_close(got, want), name


@pytest.mark.slow
def test_bfloat16_inputs_keep_a_float32_state():
    """The kernel reads bfloat16 u, delta, B and C and runs its softplus, state and arithmetic in float32: its
    float32 output and gradients equal the sequential scan's on the same values in float32 at 1e-5."""
    u, delta, A, B, C, _, _, bias = _inputs(2, 40, 128, 16, jnp.bfloat16)
    A_ND, bias = A.T, bias.reshape(1, -1)

    def kernel(A_ND, bias):
        return scan_kernel._local_scan(delta, bias, u, A_ND, B, C, reverse=True, softplus=True, time_block=32,
                                       widest_channels=128)

    def sequential(A_ND, bias):
        up = lambda x: x.astype(jnp.float32)  # noqa: E731
        return selective_scan_sequential(up(u), up(delta), A_ND.T, up(B), up(C), delta_bias=bias[0],
                                         delta_softplus=True, reverse=True)

    with pltpu.force_tpu_interpret_mode():
        assert kernel(A_ND, bias).dtype == jnp.float32
        got = jax.jit(lambda *a: jax.value_and_grad(functools.partial(_loss, kernel), argnums=(0, 1))(*a))(A_ND,
                                                                                                         bias)
    want = jax.value_and_grad(functools.partial(_loss, sequential), argnums=(0, 1))(A_ND, bias)
    _assert_close(got[0], want[0], atol=1e-3)  # a sum over every output
    _assert_close(got[1][0], want[1][0])
    _assert_close(got[1][1], want[1][1])


@pytest.mark.slow
def test_sharded_over_eight_devices_it_equals_one_device():
    """Under the trainer's mesh (8 CPU devices, batch over data) the kernel runs per shard in a shard_map."""
    args = _inputs(8, 24, 16, 4)
    mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"))
    scan = functools.partial(scan_kernel.selective_scan_pallas, delta_softplus=True, time_block=16)
    with pltpu.force_tpu_interpret_mode():
        alone = jax.jit(lambda *a: _value_and_grads(scan, a))(*args)
        batch = NamedSharding(mesh, P("data"))
        placed = [jax.device_put(x, batch if x.ndim == 3 else NamedSharding(mesh, P())) for x in args]

        def sharded(*a):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return _value_and_grads(scan, a)

        together = jax.jit(sharded)(*placed)
    for got, want in zip(jax.tree.leaves(together), jax.tree.leaves(alone), strict=True):
        _assert_close(got, want, atol=1e-4)


def test_whole_tiles_pads_the_sequence_to_whole_tiles_and_computes_the_same_values_and_gradients():
    """`scan_kernel.whole_tiles`, the twin vidjax.aot profiles where libtpu's profiler stops on a partial last tile:
    37 steps enter the kernels as 48 (three tiles of 16), the result and gradients those of the 37 steps."""
    from vidjax.train import aot

    args = _inputs(1, 37, 16, 4)
    scan = functools.partial(scan_kernel.selective_scan_pallas, time_block=16, delta_softplus=True, reverse=True)
    with pltpu.force_tpu_interpret_mode():
        y, grads = jax.jit(lambda *a: _value_and_grads(scan, a))(*args)
        with scan_kernel.whole_tiles():
            calls = aot._kernel_calls(jax.make_jaxpr(lambda *a: _value_and_grads(scan, a))(*args).jaxpr)
            twin_y, twin_grads = jax.jit(lambda *a: _value_and_grads(scan, a))(*args)
    assert sorted(name for name, _ in calls) == ["selective_scan_reverse", "selective_scan_reverse_backward"]
    for (_, avals), (eqn, _) in calls.items():
        assert "bf16" not in avals[0] and avals[0].endswith("[1,48,16]") and not aot._partial_blocks(eqn)
        assert aot._aval_signature(eqn).split(";")[0] == "f32[48,16]"
    _assert_close(twin_y, y, atol=1e-6)
    for name, got, want in zip(ARGS, twin_grads, grads, strict=True):
        _assert_close(got, want, atol=1e-6), name
    plain = aot._kernel_calls(jax.make_jaxpr(lambda *a: _value_and_grads(scan, a))(*args).jaxpr)
    assert all(aot._partial_blocks(eqn) for eqn, _ in plain.values())


def test_channel_tiles_are_the_widest_multiple_of_128_lanes_that_divides():
    assert [scan_kernel.channel_block(d) for d in (384, 768, 1152, 192, 1536, 128)] == [384, 768, 384, 192, 768, 128]
    assert scan_kernel._tiles(3137, 128) == (128, 25) and scan_kernel._tiles(37, 128) == (48, 1)


def test_a_time_block_that_is_not_whole_groups_is_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        scan_kernel.selective_scan_pallas(*_inputs(1, 8, 16, 4), time_block=24)


def test_auto_is_the_kernel_on_tpu_only():
    field = platform.FIELDS["scan"]
    assert [field.for_backend(b) for b in ("tpu", "cpu", "gpu")] == ["pallas", "recurrent", "chunked"]


# ---- compiled for TPU (Mosaic), nothing run ----
# VideoMamba at 224 px: 196 patches a frame and a CLS token; S: d_inner 768, M: 1152; N 16.
# v4 in the default tier too: its Mosaic has no sublane gather, which an (N, 1) -> (1, N) relayout in the backward
# kernel once needed (the VideoMamba recipes did not compile for v4 slices).
SHAPES = [(gen, frames, d_inner) for gen in ("v5e", "v5p", "v6e", "v4") for frames in (8, 16, 32, 64)
          for d_inner in (768, 1152)]


@pytest.mark.parametrize("generation,frames,d_inner", tiered(SHAPES, keep={SHAPES[0], ("v4", 8, 768)}, unpack=True))
def test_the_kernel_compiles_for_tpu_forward_and_backward(generation, frames, d_inner):
    pytest.importorskip("libtpu")
    from vidjax import tpu

    name = f"{generation}:1x1x1" if tpu.CHIPS[generation].dims == 3 else f"{generation}:1x1"
    device = tpu.topology_devices(tpu.slice_of(name))[0]
    one = jax.sharding.SingleDeviceSharding(device)
    # Traced in a one-chip mesh's context, as the trainer traces: the kernel asks the chip (`_products_as_rows`).
    mesh = jax.make_mesh((1,), ("data",), devices=[device], axis_types=(jax.sharding.AxisType.Auto,))
    length = 1 + 196 * frames
    shapes = [(1, length, d_inner), (1, length, d_inner), (d_inner, 16), (1, length, 16), (1, length, 16),
              (d_inner,), (1, length, d_inner), (d_inner,)]
    dtypes = [jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.bfloat16,
              jnp.float32]
    args = [jax.ShapeDtypeStruct(s, d, sharding=one) for s, d in zip(shapes, dtypes, strict=True)]

    def step(*a):
        scan = functools.partial(scan_kernel.selective_scan_pallas, delta_softplus=True, reverse=True)
        return jax.grad(functools.partial(_loss, scan), argnums=(0, 1, 2, 3, 4))(*a)

    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        rows = scan_kernel._products_as_rows(scan_kernel.channel_block(d_inner))
        compiled = jax.jit(step).lower(*args).compile()
    # Column products at 768-channel tiles where the chip has the sublane gather (not v4).
    assert rows == (d_inner != 768 or generation == "v4")
    kernels = [line for line in compiled.as_text().splitlines() if 'custom_call_target="tpu_custom_call"' in line]
    assert len(kernels) == 2  # the forward kernel (its states kept) and the backward one
