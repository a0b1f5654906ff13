"""ops.attention's attention that never stores the score matrix: "blockwise" (online softmax over key blocks, the
backward recomputing them) and "pallas_tpu" (jax's TPU flash attention kernel, run here in Pallas interpret mode)
compute what the plain path computes, alone (at each family's lengths), in every family with attention and on the
parity fixtures (values and gradients to 1e-5); the default picks them by length. The kernel compiled for TPU for
real: tests/test_attention_tpu.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiered
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_attention import FAMILY_CASES
from test_parity import FIXTURES, INPUTS, convert_case
from test_scan_and_precision import loss_fn, tiny_model

from vidjax import platform, pretrained, sharding
from vidjax.ops import attention

# Keys per block in these tests: small, so that the tiny models' lengths span several blocks and a padded last one.
SMALL_BLOCK = 8


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_KEYS", SMALL_BLOCK)


def _value_and_grads(fn, q, k, v, cotangent):
    """The output and the gradients of q, k and v for `cotangent` on it (elementwise: a sum of the output would
    hide differences or, where it cancels, magnify float rounding)."""
    def value_and_grads(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(cotangent.astype(out.dtype))

    return jax.jit(value_and_grads)(q, k, v)


def _assert_equal_to_plain(implementation, q, k, v, cotangent):
    value, grads = _value_and_grads(lambda *a: attention.dot_product_attention(*a, implementation), q, k, v, cotangent)
    ref_value, ref_grads = _value_and_grads(
        lambda *a: jax.nn.dot_product_attention(*a, implementation="xla"), q, k, v, cotangent)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


def _operands(shape, length_kv):
    rng = np.random.default_rng(sum(shape) + length_kv)
    q, cotangent = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(shape[0], length_kv, *shape[2:])), jnp.float32) for _ in range(2))
    return q, k, v, cotangent


# (batch, queries, heads, head_dim), keys: one block, whole blocks, a padded last block, fewer or more keys than
# queries, a single key.
SHAPES = [((2, 5, 2, 4), 5), ((1, 32, 3, 8), 32), ((2, 17, 3, 8), 17), ((2, 9, 2, 16), 30), ((1, 30, 2, 8), 7),
          ((1, 4, 1, 8), 1)]


@pytest.mark.parametrize(("shape", "length_kv"), SHAPES)
@pytest.mark.parametrize("block", [SMALL_BLOCK, attention.BLOCK_KEYS])
def test_blockwise_equals_the_plain_path(shape, length_kv, block, monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_KEYS", block)
    _assert_equal_to_plain("blockwise", *_operands(shape, length_kv))


def test_blockwise_at_a_real_length_equals_the_plain_path():
    """ViViT-S's 8-frame joint attention at 112 px (197 tokens, two blocks of the default size), 6 heads of 64."""
    _assert_equal_to_plain("blockwise", *_operands((1, 197, 6, 64), 197))


# (batch, queries, heads, head_dim), keys: under, at and over the kernel's 128-token least block, fewer keys than
# queries; then each family's lengths at 16 frames (tests/test_attention_tpu.py's `family_shapes`) with fewer clips
# and heads: ViViT's temporal attention over T/2 and CLS + T/2 tokens, TimeSformer's over T, VideoMAE's visible
# tokens in pre-training, the spatial attention over a frame's 196 patches with and without CLS, VideoMAE V2's
# decoder, VideoMAE's and ViViT's joint attention over 1568 tokens and CLS + 1568 (several blocks, the last padded).
PALLAS_SHAPES = [((2, 17, 3, 8), 17), ((1, 130, 2, 64), 130), ((2, 9, 2, 16), 30), ((2, 8, 2, 64), 8),
                 ((2, 9, 2, 64), 9), ((2, 16, 2, 64), 16), ((1, 160, 2, 64), 160), ((2, 196, 2, 64), 196),
                 ((2, 197, 2, 64), 197), ((1, 944, 1, 64), 944), ((1, 1568, 1, 64), 1568), ((1, 1569, 1, 64), 1569)]


@pytest.mark.parametrize(("shape", "length_kv"), [  # the default tier: a short, an unequal and a padded length
    case if index in (0, 2, 8) else pytest.param(*case, marks=pytest.mark.slow)
    for index, case in enumerate(PALLAS_SHAPES)])
def test_pallas_tpu_kernel_in_interpret_mode_equals_the_plain_path(shape, length_kv):
    """The TPU kernel run by Pallas's interpreter on this CPU, with the blocks it runs with on a TPU
    (`attention.pallas_blocks`: the lengths padded to them, the padding masked by segment ids), forward and its own
    backward kernels."""
    with pltpu.force_tpu_interpret_mode():
        _assert_equal_to_plain("pallas_tpu", *_operands(shape, length_kv))


@pytest.mark.parametrize(("shape", "length_kv"), [pytest.param((2, 197, 2, 64), 197, marks=pytest.mark.slow),
                                                  pytest.param((1, 640, 1, 64), 640, marks=pytest.mark.slow),
                                                  ((2, 9, 2, 64), 300)])
def test_pallas_tpu_kernel_with_small_blocks_equals_the_plain_path(shape, length_kv, monkeypatch):
    """Blocks of 128: several of them at these lengths, the last padded, queries and keys in different counts."""
    monkeypatch.setattr(attention, "PALLAS_BLOCK", 128)
    with pltpu.force_tpu_interpret_mode():
        _assert_equal_to_plain("pallas_tpu", *_operands(shape, length_kv))


def test_pallas_tpu_kernel_under_a_mesh_runs_per_shard_and_equals_the_plain_path():
    """In the trainer's mesh context (batch over "data", heads over "tensor") the kernel runs per shard in a
    shard_map, since XLA cannot partition a Mosaic kernel: the same values and gradients. Four of the simulated
    devices: over all eight, the interpreter's kernels wait on one another for good (jax 0.10.2, 2 cores)."""
    mesh = sharding.create_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    spec = NamedSharding(mesh, P(sharding.BATCH_AXES, None, "tensor"))
    q, k, v, cotangent = (jax.device_put(x, spec) for x in _operands((4, 197, 2, 64), 197))

    def in_mesh(fn):
        def traced(*args):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return fn(*args)
        return traced

    def pallas(*args):
        return attention.dot_product_attention(*args, "pallas_tpu")

    assert "shard_map" in str(jax.make_jaxpr(in_mesh(pallas))(q, k, v))
    with pltpu.force_tpu_interpret_mode():
        value, grads = _value_and_grads(in_mesh(pallas), q, k, v, cotangent)
    ref_value, ref_grads = _value_and_grads(
        lambda *a: jax.nn.dot_product_attention(*a, implementation="xla"), q, k, v, cotangent)
    for x, ref in zip((value, *grads), (ref_value, *ref_grads), strict=True):
        np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)


def test_blockwise_in_bfloat16_keeps_the_dtype_and_normalises_in_float32(small_blocks):
    q, k, v, cotangent = _operands((2, 33, 2, 8), 33)
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    value, grads = _value_and_grads(lambda *a: attention.dot_product_attention(*a, "blockwise"), *bf16, cotangent)
    ref_value, ref_grads = _value_and_grads(lambda *a: jax.nn.dot_product_attention(*a, implementation="xla"),
                                            q, k, v, cotangent)
    assert value.dtype == jnp.bfloat16
    np.testing.assert_allclose(value.astype(np.float32), ref_value, atol=2e-2)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(g.astype(np.float32), g_ref, atol=6e-2, rtol=6e-2)


def test_blockwise_temporaries_grow_linearly_in_length():
    """What the path is for: XLA's temporaries of forward + backward double with the length (the score-matrix
    path's quadruple). Compiled only, nothing runs."""
    def temp_bytes(implementation, length):
        x = jax.ShapeDtypeStruct((1, length, 2, 32), jnp.float32)
        grad = jax.grad(lambda q, k, v: jnp.sum(attention.dot_product_attention(q, k, v, implementation)),
                        argnums=(0, 1, 2))
        return jax.jit(grad).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    blockwise = temp_bytes("blockwise", 4096) / temp_bytes("blockwise", 2048)
    plain = temp_bytes("heads_major", 4096) / temp_bytes("heads_major", 2048)
    assert blockwise < 2.3 < 3.5 < plain, (blockwise, plain)


def test_the_default_picks_by_length():
    long, short = 1024, 256
    pick = platform.attention_implementation  # a backend's rule, given each call's dtype, head size and lengths
    assert pick("auto_cpu", jnp.float32, 64, short) == pick("auto_cpu", jnp.float32, 64) == "heads_major"
    assert pick("auto_cpu", jnp.float32, 64, long) == "blockwise"
    assert pick("auto_cpu", jnp.float32, 64, long, 8) == "heads_major"  # few keys: a small score matrix
    assert pick("heads_major", jnp.float32, 64, long) == "heads_major"  # an explicit choice stands
    assert attention.resolve("auto", jnp.float32, 64, long) == "blockwise"  # "auto" on this (CPU) backend
    assert pick("auto_gpu", jnp.bfloat16, 64, long) == pick("auto_gpu", jnp.bfloat16, 64, short) == "cudnn"
    assert pick("auto_gpu", jnp.float32, 64, long) == "blockwise"
    assert pick("auto_gpu", jnp.float32, 64, short) == "xla"
    assert pick("auto_tpu", jnp.bfloat16, 64, long) == "pallas_tpu"
    assert pick("auto_tpu", jnp.bfloat16, 64, short) == pick("auto_tpu", jnp.bfloat16, 192, long) == "xla"


def test_the_models_default_runs_blockwise_at_length(monkeypatch):
    """The length reaches the resolved rule at trace time: with the threshold at 0, a model's default attention
    is blockwise."""
    chosen, pick = [], platform.attention_implementation
    monkeypatch.setattr(platform, "attention_implementation",
                        lambda *a, **kw: chosen.append(pick(*a, **kw)) or chosen[-1])
    monkeypatch.setattr(platform, "BLOCKWISE_FROM_SCORES", 0)
    graphdef, state = nnx.split(tiny_model("vivit", depth=1))
    jax.eval_shape(loss_fn("vivit", graphdef), state)
    assert chosen and set(chosen) == {"blockwise"}


IMPLEMENTATIONS = ["blockwise", "pallas_tpu"]


# Every family and attention layout with "blockwise"; one model per family with the TPU kernel, whose interpreter
# is slow (the same layers.Attention call).
FAMILY_IMPLEMENTATIONS = [(m, o, "blockwise") for m, o in FAMILY_CASES] + [
    (m, o, "pallas_tpu") for m, o in FAMILY_CASES if o.get("model_type", "joint") == "joint"
    and o.get("attention_type", "divided_space_time") == "divided_space_time"]


@pytest.mark.parametrize(("model_name", "overrides", "implementation"), [
    pytest.param(*case, marks=pytest.mark.slow) if case[2] == "pallas_tpu" and case[0] != "vivit" else case
    for case in FAMILY_IMPLEMENTATIONS],  # the TPU kernel's interpreter: one family by default
                         ids=[f"{m}-{'-'.join(o.values()) or 'default'}-{i}" for m, o, i in FAMILY_IMPLEMENTATIONS])
def test_every_family_computes_the_same(model_name, overrides, implementation, small_blocks):
    """Same parameters: the loss and every gradient equal JAX's XLA path (VideoMamba has no attention; SVT and the
    captioner's encoder are these families' Attention layer)."""
    results = {}
    for impl in ("xla", implementation):
        # One block: its attention's input gradient still reaches the patch embedding's, and the test takes less
        # of compiling and the TPU kernel's interpreter (TimeSformer with it: 9 CPU s, 15 with two blocks).
        graphdef, state = nnx.split(tiny_model(model_name, depth=1, attention_impl=impl, **overrides))
        with pltpu.force_tpu_interpret_mode():
            results[impl] = jax.jit(jax.value_and_grad(loss_fn(model_name, graphdef)))(state)
    (loss, grads), (ref_loss, ref_grads) = results[implementation], results["xla"]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


PARITY_CASES = ["videomae_model", "timesformer_divided", "vivit_model"]


@pytest.mark.parametrize("implementation", tiered(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_fixtures_hold_with_each_implementation(case, implementation, tmp_path, small_blocks, monkeypatch):
    """tests/test_parity.py's check of one fixture per family with attention, the default resolved to
    `implementation` wherever a model calls attention."""
    jax.clear_caches()  # the loaded model's jitted forward is cached by its structure; the patched rule is not in it
    chosen = []
    monkeypatch.setattr(platform, "attention_implementation", lambda given, *_, **__: chosen.append(
        implementation if given in platform.ATTENTION_RULES else given) or chosen[-1])
    convert_case(FIXTURES / case, tmp_path / "converted")
    model = pretrained.load(tmp_path / "converted")
    io = dict(np.load(FIXTURES / case / "io.npz"))
    with pltpu.force_tpu_interpret_mode():
        outputs = model.forward(io["video"], io.get("mask"), io.get("decoder_mask"))
    for name, want in ((k, v) for k, v in io.items() if k not in INPUTS):
        np.testing.assert_allclose(np.asarray(outputs[name]), want, rtol=0, atol=1e-4, err_msg=f"{case}: {name}")
    assert implementation in chosen  # traced afresh, not a cached compilation of the default
