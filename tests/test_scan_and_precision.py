"""config.model.scan_layers (one lax.scan over the blocks) and bf16 compute with float32 parameters and optimizer
state, for every model family."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import run_steps, tiered, tiny_family_config

from vidjax.config_lib import ConfigError
from vidjax.data.pipeline import tube_mask
from vidjax.models import get_model, layers

FAMILIES = ("videomae", "timesformer", "vivit", "videomamba")
VIDEO = np.random.default_rng(0).random((2, 4, 32, 32, 3), np.float32)


def tiny_model(model_name, **overrides):
    config = tiny_family_config(model_name, **overrides)
    with nnx.use_eager_sharding(False):
        return get_model(model_name).Model(config.model, rngs=nnx.Rngs(0))


def loss_fn(model_name, graphdef):
    """A scalar of the model's output on VIDEO (the pre-training loss, or the logits' squares), with drop path on."""
    mask = np.stack([tube_mask(np.random.default_rng(i), (2, 4, 4), 0.9) for i in range(2)])  # VideoMAE's grid

    def loss(state):
        model = nnx.merge(graphdef, state)
        out = model(jnp.asarray(VIDEO), jnp.asarray(mask) if model_name == "videomae" else None,
                    rng=jax.random.key(1))
        return out["loss"] if "loss" in out else jnp.mean(jnp.square(out["logits"]))

    return loss


def dot_dtypes(fn, *args):
    """Output dtypes of every matrix multiply in fn's jaxpr (nested scans and remat regions included)."""
    return re.findall(r"\b\w+:(\w+)\[[^\]]*\] = dot_general", str(jax.make_jaxpr(fn)(*args)))


@pytest.mark.parametrize("model_name", tiered(FAMILIES))
def test_scan_layers_computes_what_the_unrolled_blocks_compute(model_name):
    """Same parameters (stacked: blocks/stacked/... instead of blocks/0/..., layers.to_layout converts), same loss
    and gradients, with per-block drop-path rates and keys, under remat (which test_memory shows changes nothing
    unscanned)."""
    overrides = dict(depth=3, drop_path=0.3)
    if model_name == "vivit":
        overrides["model_type"] = "factorised_self_attention"  # its own block type, not layers.Transformer
    unrolled = tiny_model(model_name, **overrides)
    graphdef, state = nnx.split(unrolled)
    reference = jax.jit(jax.value_and_grad(loss_fn(model_name, graphdef)))(state)
    scan_graphdef, scan_state = nnx.split(tiny_model(model_name, scan_layers=True, remat="full", **overrides))
    pure, scan_pure = nnx.to_pure_dict(state), nnx.to_pure_dict(scan_state)
    assert jax.tree.structure(scan_pure) != jax.tree.structure(pure)
    # A seed gives the same parameters, stacked; layers.to_layout converts either way.
    converted = layers.to_layout(scan_pure, pure)
    assert jax.tree.structure(converted) == jax.tree.structure(pure)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(pure), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(layers.to_layout(pure, scan_pure)),
                                                    jax.tree.leaves(scan_pure), strict=True))
    loss, grads = jax.jit(jax.value_and_grad(loss_fn(model_name, scan_graphdef)))(scan_state)
    np.testing.assert_allclose(loss, reference[0], rtol=1e-6)
    grads = layers.to_layout(nnx.to_pure_dict(grads), pure)
    for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(reference[1]), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("model_name", tiered(FAMILIES, default=3))
def test_scanned_program_does_not_grow_with_depth(model_name):
    """Unrolled, each extra block adds its matmuls to the program XLA compiles; scanned, the program stays the same."""
    counts = {}
    for scan in (False, True):
        for depth in (3, 6):  # VideoMamba scans the layers after the first
            graphdef, state = nnx.split(tiny_model(model_name, depth=depth, scan_layers=scan))
            counts[scan, depth] = len(dot_dtypes(jax.grad(loss_fn(model_name, graphdef)), state))
    assert counts[True, 3] == counts[True, 6], counts
    assert counts[False, 6] > counts[False, 3] > counts[True, 3], counts


@pytest.mark.slow
def test_scan_layers_trains_sharded_like_unrolled_on_one_device():
    """FSDP + tensor parallel over 8 devices with the blocks scanned: the single-device unrolled losses to 1e-5."""
    reference, _ = run_steps(tiny_family_config("videomae"), jax.devices()[:1], steps=2)
    config = tiny_family_config("videomae", scan_layers=True, remat="full")
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    scanned, state = run_steps(config, jax.devices(), steps=2)
    np.testing.assert_allclose(scanned, reference, rtol=1e-5)
    qkv = state["params"]["encoder"]["transformer"]["blocks"]["stacked"]["attn"]["qkv"]
    assert qkv.shape == (2, 32, 3, 2, 16)  # the blocks stacked along a leading "layers" axis, replicated
    assert qkv.addressable_shards[0].data.shape == (2, 16, 3, 1, 16)  # embed over fsdp, heads over tensor


@pytest.mark.parametrize("widths, eps", [((32, 32, 16), (1e-6,) * 3), ((32,) * 3, (1e-6, 1e-6, 0.5))])
def test_scanning_blocks_of_different_shapes_or_settings_is_a_config_error(widths, eps):
    with nnx.use_eager_sharding(False):
        blocks = [layers.Block(w, 2, 64, eps=e, drop_path=0.1 * i, rngs=nnx.Rngs(0))
                  for i, (w, e) in enumerate(zip(widths, eps, strict=True))]
    x = jnp.zeros((1, 3, 32))
    with pytest.raises(ConfigError, match=r"scan_layers=True needs blocks of one kind, shape and setting, but block "
                                          r"2 \(Block\) differs from block 0; set config.model.scan_layers=False"):
        layers.run_blocks(blocks, x, None, scan=True)
    assert [b.drop_path for b in blocks] == [0.0, 0.1, 0.2]  # the check leaves the blocks as they were


@pytest.mark.parametrize("model_name", FAMILIES)
def test_bf16_computes_in_bf16_with_float32_parameters(model_name):
    """The blocks' matmuls run in bf16; parameters and the loss or logits stay float32, close to float32's."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        graphdef, state = nnx.split(tiny_model(model_name, dtype=dtype))
        assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype("float32")}
        loss = loss_fn(model_name, graphdef)
        results[dtype] = jax.jit(loss)(state)
        dots = dot_dtypes(loss, state)
        expected = "bf16" if dtype == "bfloat16" else "f32"
        # VideoMamba's selective scan and every classifier head stay float32 by design.
        assert dots.count(expected) >= 2 * 2 and dots.count(expected) > len(dots) // 2, dots
    assert results["bfloat16"].dtype == jnp.float32
    np.testing.assert_allclose(results["bfloat16"], results["float32"], rtol=3e-2)
    assert results["bfloat16"] != results["float32"]  # bf16 rounding really happened


@pytest.mark.slow
def test_bf16_trains_the_tiny_model_with_float32_state():
    """Eight bf16 updates through the trainer: the loss falls as in float32; parameters, gradients (the updates
    are finite and float32) and optimizer state stay float32."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        losses[dtype], state = run_steps(tiny_family_config("videomae", dtype=dtype), jax.devices()[:1], steps=8)
        assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype("float32")}
        assert {x.dtype for x in jax.tree.leaves(state["opt_state"])} <= {jnp.dtype("float32"), jnp.dtype("int32")}
    assert np.mean(losses["bfloat16"][-3:]) < losses["bfloat16"][0] - 0.02, losses
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=5e-3)


def test_cotangent_boundaries_change_no_gradient():
    """With block_gradients="written_out" (the CPU's default) each block input's gradient passes a conditional XLA
    must write out whole (layers.call_block); the gradients are those of the plain graph ("fused"), and a NaN
    reaching a boundary stays non-finite."""
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm, self.fc = nnx.LayerNorm(8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)

        def __call__(self, x, rng=None):
            return x + self.fc(jax.nn.gelu(self.norm(x)))

    graphdef, state = nnx.split([Block(nnx.Rngs(i)) for i in range(3)])
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))

    def gradient(block_gradients):
        def loss(state, x):
            blocks = nnx.merge(graphdef, state)
            return jnp.sum(jnp.sin(layers.run_blocks(blocks, x, None, block_gradients=block_gradients)) ** 2)

        return jax.grad(loss, argnums=(0, 1))

    assert "cond" in str(jax.make_jaxpr(gradient("written_out"))(state, x))
    with_boundaries = gradient("written_out")(state, x)
    assert "cond" not in str(jax.make_jaxpr(gradient("fused"))(state, x))
    plain = gradient("fused")(state, x)
    for a, b in zip(jax.tree.leaves(with_boundaries), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    poisoned = gradient("written_out")(state, x.at[0, 0, 0].set(jnp.nan))[1]
    assert not np.isfinite(np.asarray(poisoned)).all()
