"""layers.layer_norm and layers.gelu: the backward written out (config.model.backward="hand_written", the CPU's
default) gives autodiff's values, and layers.project's 2-D form (projection_form="flat") the multi-axis
contraction's, alone and inside every model family (forward and gradients to 1e-5). The values are set directly,
not the backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_attention import FAMILY_CASES
from test_scan_and_precision import loss_fn, tiny_model

from vidjax import platform
from vidjax.models import layers


def _grads(fn, *args):
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=args[0].shape), jnp.float32)
    loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * cotangent)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))(*args)


def test_written_out_only_on_cpu():
    assert platform.Choices.for_backend("cpu").backward == "hand_written"
    assert platform.Choices.for_backend("cpu").projection_form == "flat"
    for backend in ("gpu", "tpu"):
        assert platform.Choices.for_backend(backend).backward == "autodiff"
        assert platform.Choices.for_backend(backend).projection_form == "multi_axis"


@pytest.mark.parametrize("shape", [(2, 17, 24), (5, 8), (1, 3, 4, 64)])
def test_layer_norm_backward_equals_autodiff(shape):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=shape) * 3 + 1, jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, shape[-1]), jnp.float32)
    bias = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
    value, grads = _grads(lambda x, s, b: layers.layer_norm(x, s, b, 1e-6, backward="hand_written"), x, scale, bias)
    ref_value, ref_grads = _grads(lambda x, s, b: layers.layer_norm(x, s, b, 1e-6, backward="autodiff"), x, scale,
                                  bias)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_backward_equals_autodiff_in_both_forms(approximate):
    x = jnp.asarray(np.linspace(-6, 6, 603).reshape(3, 201), jnp.float32)
    value, (grad,) = _grads(lambda x: layers.gelu(x, approximate, backward="hand_written"), x)
    ref_value, (ref_grad,) = _grads(lambda x: layers.gelu(x, approximate, backward="autodiff"), x)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_bfloat16_activations_keep_their_dtype_and_float32_parameters_theirs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 9, 32)), jnp.bfloat16)
    scale, bias = jnp.ones(32, jnp.float32), jnp.zeros(32, jnp.float32)
    for backward in ("hand_written", "autodiff"):
        assert layers.layer_norm(x, scale, bias, 1e-6, backward=backward).dtype == jnp.bfloat16
        assert layers.gelu(x, backward=backward).dtype == jnp.bfloat16

    def fn(backward):
        return lambda x, s, b: layers.gelu(layers.layer_norm(x, s, b, 1e-6, backward=backward), backward=backward)

    (_, grads), (_, ref_grads) = _grads(fn("hand_written"), x, scale, bias), _grads(fn("autodiff"), x, scale, bias)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32, jnp.float32]
    for g, g_ref in zip(grads, ref_grads, strict=True):  # the written-out backward computes in float32
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(("x_shape", "kernel_shape", "contract"), [
    ((2, 7, 16), (16, 3, 2, 8), 1),  # attention's qkv (d, 3, heads, head_dim)
    ((2, 7, 2, 8), (2, 8, 16), 2),   # its output projection (heads, head_dim, d)
    ((3, 16), (16, 2, 5), 1),        # VideoMamba's in_proj (d, 2, inner), 2-D input
])
def test_project_as_a_matrix_product_equals_the_contraction(x_shape, kernel_shape, contract):
    rng = np.random.default_rng(len(x_shape) + contract)
    x, kernel = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in (x_shape, kernel_shape))
    expected_shape = x_shape[:len(x_shape) - contract] + kernel_shape[contract:]
    cotangent = jnp.asarray(rng.normal(size=expected_shape), jnp.float32)

    def value_and_grads(form):
        fn = lambda x, k: jnp.sum(layers.project(x, k, contract, form=form) * cotangent)  # noqa: E731
        return (jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(x, kernel),
                layers.project(x, kernel, contract, form=form))

    (value, grads), out = value_and_grads("flat")
    assert out.shape == expected_shape
    (ref_value, ref_grads), ref_out = value_and_grads("multi_axis")
    letters = "abcdefgh"
    lhs = letters[:len(x_shape)]
    rhs = lhs[len(x_shape) - contract:] + letters[len(x_shape):len(x_shape) + len(kernel_shape) - contract]
    out_spec = lhs[:len(x_shape) - contract] + rhs[contract:]
    np.testing.assert_allclose(out, jnp.einsum(f"{lhs},{rhs}->{out_spec}", x, kernel), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


CASES = FAMILY_CASES + [("videomamba", {})]


@pytest.mark.parametrize(("model_name", "overrides"), CASES,
                         ids=[f"{m}-{'-'.join(o.values()) or 'default'}" for m, o in CASES])
def test_every_family_computes_the_same_gradients(model_name, overrides):
    """The CPU's values (hand_written, flat) against GPU's and TPU's (autodiff, multi_axis), same parameters."""
    plain = dict(projection_form="multi_axis") if model_name == "videomamba" else dict(
        backward="autodiff", projection_form="multi_axis")
    written = {key: platform.Choices.for_backend("cpu").need(key) for key in plain}
    assert written != plain
    # One block: every layer kind still runs, and its input gradient still reaches the patch embedding's; compiling
    # the two programs is the test's time (VideoMamba: 5 CPU s, 9 with two blocks).
    graphdef, state = nnx.split(tiny_model(model_name, depth=1, **overrides, **written))
    loss, grads = jax.jit(jax.value_and_grad(loss_fn(model_name, graphdef)))(state)
    ref_graphdef, _ = nnx.split(tiny_model(model_name, depth=1, **overrides, **plain))
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss_fn(model_name, ref_graphdef)))(state)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
