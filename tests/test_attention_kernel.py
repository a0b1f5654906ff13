"""The resident-keys attention kernel (`vidjax.ops.attention_kernel`, attention_impl "pallas_resident"): in Pallas's
TPU interpreter on this CPU it computes what XLA's attention computes, values and gradients at 1e-5 in float32, with
several heads side by side in a 128-lane block (2 of 64, 4 of 32) and one head of 128 or 256 lanes, at query and key
lengths that are not whole blocks, batch 1 and 3, from bfloat16 operands, and per shard under a mesh as on one
device; shapes it does not take are refused with what to use instead. Compiled for TPU for real (Mosaic, on this CPU:
nothing runs) at VideoMAE's decoder and fine-tune shapes on v4, v5e, v5p and v6e, forward and backward; and in a
whole model. Default tier: one case of the kernel's values, the refusal and one compile; the rest are slow (the
interpreter runs a grid step at a time)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiered
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidjax import sharding
from vidjax.ops import attention, attention_kernel


def _operands(batch, length, length_kv, heads, head_dim, dtype=jnp.float32, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(k[0], (batch, length, heads, head_dim)).astype(dtype)
    keys = jax.random.normal(k[1], (batch, length_kv, heads, head_dim)).astype(dtype)
    values = jax.random.normal(k[2], (batch, length_kv, heads, head_dim)).astype(dtype)
    cotangent = jax.random.normal(k[3], (batch, length, heads, head_dim))
    return q, keys, values, cotangent


def _value_and_grads(fn, q, k, v, cotangent):
    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _assert_close(got, want, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=1e-5)


# (batch, queries, keys, heads, head_dim): two heads of 64 in one block, over a partial last query block and keys
# padded to 128; three heads of 64 (VideoMAE-S's decoder: the second block filled with a zero head); six heads (three
# blocks), self-attention; four heads of 32; one head of 128; one of 256 over keys longer than the queries; batch 1
# and 3.
CASES = [(1, 200, 150, 2, 64), (2, 130, 130, 3, 64), (3, 130, 130, 6, 64), (1, 128, 256, 4, 32),
         (1, 100, 100, 1, 128), (1, 100, 300, 2, 256)]


@pytest.mark.parametrize("batch,length,length_kv,heads,head_dim", tiered(CASES, default=2, unpack=True))
def test_the_kernel_equals_xla_attention_values_and_gradients(batch, length, length_kv, heads, head_dim):
    q, k, v, cotangent = _operands(batch, length, length_kv, heads, head_dim)
    with pltpu.force_tpu_interpret_mode():
        out, grads = jax.jit(functools.partial(_value_and_grads, attention_kernel.resident_attention))(
            q, k, v, cotangent)
    want, want_grads = _value_and_grads(_xla, q, k, v, cotangent)
    _assert_close(out, want)
    for name, got, expected in zip("qkv", grads, want_grads, strict=True):
        _assert_close(got, expected), name


@pytest.mark.slow
def test_bfloat16_operands_give_bfloat16_results_close_to_float32():
    """bfloat16 q, k and v: the products take them as they are and accumulate in float32, the softmax is float32;
    the output and gradients are bfloat16 and within bfloat16's rounding of the float32 result."""
    q, k, v, cotangent = _operands(2, 160, 160, 2, 64)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    with pltpu.force_tpu_interpret_mode():
        out, grads = jax.jit(functools.partial(_value_and_grads, attention_kernel.resident_attention))(
            *low, cotangent)
    want, want_grads = _value_and_grads(_xla, *[x.astype(jnp.float32) for x in low], cotangent)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    _assert_close(out, want, atol=2e-2)
    for got, expected in zip(grads, want_grads, strict=True):
        scale = float(jnp.max(jnp.abs(expected)))
        _assert_close(np.asarray(got, np.float32) / scale, np.asarray(expected) / scale, atol=2e-2)


@pytest.mark.slow
def test_under_a_mesh_the_kernel_runs_per_shard_and_equals_one_device():
    """In the trainer's mesh context (batch over the batch axes, heads over "tensor") the kernel runs per shard in a
    `shard_map`, each shard's heads whole lane blocks, and gives what one device gives. Four devices: over all eight
    the interpreter's kernels wait on one another for good (jax 0.10.2, 2 cores)."""
    mesh = sharding.create_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    q, k, v, cotangent = _operands(2, 130, 130, 4, 64)
    spec = NamedSharding(mesh, P(sharding.BATCH_AXES, None, "tensor"))
    sharded = [jax.device_put(x, spec) for x in (q, k, v)]

    def in_mesh(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return attention.dot_product_attention(*args, "pallas_resident")

    assert "shard_map" in str(jax.make_jaxpr(in_mesh)(*sharded))
    with pltpu.force_tpu_interpret_mode():
        out, grads = jax.jit(functools.partial(_value_and_grads, in_mesh))(*sharded, cotangent)
        one, one_grads = jax.jit(functools.partial(_value_and_grads, attention_kernel.resident_attention))(
            q, k, v, cotangent)
    _assert_close(out, one)
    for got, expected in zip(grads, one_grads, strict=True):
        _assert_close(got, expected)


def test_shapes_it_does_not_take_are_refused_with_what_to_use():
    assert attention_kernel.supported(6, 64, 1568) and attention_kernel.supported(1, 256, 4096)
    assert attention_kernel.supported(3, 64, 1568)  # 192 lanes: the second block filled with a zero head
    assert not attention_kernel.supported(16, 80, 1568)  # ViT-H's heads of 80
    assert not attention_kernel.supported(2, 64, attention_kernel.MAX_KEYS + 1)
    q = jnp.zeros((1, 16, 16, 80))
    with pytest.raises(ValueError, match="heads of 80.*attention_impl='pallas_tpu' or 'xla'"):
        attention_kernel.resident_attention(q, q, q)


# VideoMAE at 224 px, tubelets of 2 frames: the decoder (6 heads of 64) and the fine-tune (12) over every token at 16
# and 64 frames, on each TPU generation the matrix compiles for; the heads of 32 and 128 of other widths at 16.
COMPILE_CASES = [(gen, tokens, heads, head_dim) for gen in ("v5e", "v5p", "v6e", "v4") for tokens in (1568, 6272)
                 for heads, head_dim in ((6, 64), (12, 64))] + [("v5p", 1568, 8, 32), ("v5p", 1568, 2, 128),
                                                                ("v6e", 1568, 3, 64)]


@pytest.mark.parametrize("generation,tokens,heads,head_dim", tiered(COMPILE_CASES, unpack=True))
def test_the_kernel_compiles_for_tpu_forward_and_backward(generation, tokens, heads, head_dim):
    """Mosaic compiles the forward and the backward kernel (bfloat16, 2 clips) within the chip's VMEM, traced in a
    one-chip mesh's context as the trainer traces; where the keys do not fit (v4's 16 MiB at 6,272), jax's flash
    kernels run instead."""
    pytest.importorskip("libtpu")
    from vidjax import platform, tpu

    name = {"v5p": "v5p:1x1x1", "v4": "v4:1x1x1"}.get(generation, f"{generation}:1x1")
    mesh = jax.make_mesh((1,), ("data",), devices=tpu.topology_devices(tpu.slice_of(name))[:1],
                         axis_types=(jax.sharding.AxisType.Auto,))
    shape = jax.ShapeDtypeStruct((2, tokens, heads, head_dim), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    assert platform.attention_implementation("auto_tpu", jnp.bfloat16, head_dim, tokens, tokens, heads) == (
        "pallas_resident")

    def step(q, k, v):
        return jax.grad(lambda *a: jnp.sum(attention.dot_product_attention(*a, "pallas_resident").astype(
            jnp.float32)), argnums=(0, 1, 2))(q, k, v)

    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        fits = attention_kernel.fits(heads, head_dim, tokens, jnp.bfloat16)
        compiled = jax.jit(step).trace(shape, shape, shape).lower().compile()
    kernels = [line for line in compiled.as_text().splitlines() if 'custom_call_target="tpu_custom_call"' in line]
    assert fits == (generation != "v4" or tokens < 2500)
    # The forward kernel (its log-sum-exp kept) and the backward one; else flash's forward and two backward kernels.
    assert len(kernels) == (2 if fits else 3), kernels
    assert all("resident_attention" in line for line in kernels) == fits


@pytest.mark.slow
@pytest.mark.parametrize("decoder_heads", [2, 3])
def test_a_model_with_the_kernel_computes_what_xla_attention_computes(decoder_heads):
    """VideoMAE pre-training (encoder over the visible tokens, decoder over all) with heads of 64 that fill 128 lanes,
    or a decoder of 3 (VideoMAE-S's, a zero head added), and every attention "pallas_resident": the loss and every
    gradient equal XLA attention's at 1e-5."""
    from flax import nnx
    from test_scan_and_precision import loss_fn, tiny_model

    results = {}
    sizes = dict(depth=1, width=128, num_heads=2, decoder_width=64 * decoder_heads, decoder_heads=decoder_heads)
    for impl in ("xla", "pallas_resident"):
        graphdef, state = nnx.split(tiny_model("videomae", attention_impl=impl, **sizes))
        fn = jax.jit(jax.value_and_grad(loss_fn("videomae", graphdef)))
        if impl == "pallas_resident":
            assert "resident_attention_forward" in str(jax.make_jaxpr(fn)(state))
        with pltpu.force_tpu_interpret_mode():
            results[impl] = fn(state)
    (loss, grads), (ref_loss, ref_grads) = results["pallas_resident"], results["xla"]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_tpus_rule_picks_the_kernel_where_it_takes_the_heads_and_the_length_pays():
    """"auto_tpu" (platform.attention_implementation): the kernel from 512 x 512 scores where it takes the heads
    (sizes that divide 128, VideoMAE-S's decoder's 3 heads of 64 among them); jax's flash kernel for heads it does
    not take (ViT-H's 80) at length; XLA's for short sequences (the pre-training encoder's 160 visible tokens) and
    where the heads are unknown."""
    from vidjax import platform

    def pick(head_dim, length, heads):
        return platform.attention_implementation("auto_tpu", jnp.bfloat16, head_dim, length, length, heads)

    assert pick(64, 1568, 6) == pick(64, 512, 12) == pick(64, 6272, 16) == pick(64, 1568, 3) == "pallas_resident"
    assert pick(80, 1568, 16) == pick(64, 1568, 0) == "pallas_tpu"
    assert pick(64, 160, 12) == pick(64, 400, 12) == "xla"
    assert pick(64, 9000, 12) == "pallas_tpu"  # keys past RESIDENT_MAX_KEYS
