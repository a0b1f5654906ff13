"""ops.attention: every implementation of config.model.attention_impl computes what jax.nn.dot_product_attention
computes, alone and inside every model family that uses it (forward and gradients to 1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiered, tiny_family_config
from test_scan_and_precision import loss_fn, tiny_model

from vidjax import platform
from vidjax.config_lib import ConfigError
from vidjax.ops import attention


def _reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


@pytest.mark.parametrize("implementation", ["auto_cpu", "xla", "heads_major"])
@pytest.mark.parametrize("shape", [(2, 17, 3, 8), (1, 5, 2, 4), (3, 64, 4, 16)])
def test_attention_equals_jax_forward_and_gradients(implementation, shape):
    rng = np.random.default_rng(sum(shape))
    q, k, v, cotangent = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(4))

    def loss(fn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent), argnums=(0, 1, 2)))

    value, grads = loss(lambda q, k, v: attention.dot_product_attention(q, k, v, implementation))(q, k, v)
    ref_value, ref_grads = loss(_reference)(q, k, v)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lengths", [(17, 17), (197, 197), (5, 8), (8, 5)])
def test_odd_lengths_padded_to_even_equal_the_unpadded_call(lengths):
    """The padding that lets cuDNN train on odd lengths (one masked zero token, padded query rows cut off),
    run through XLA's masked attention on this CPU: same values and gradients as the plain call."""
    rng = np.random.default_rng(lengths[0])
    (length, length_kv), b, h, k = lengths, 2, 3, 8
    q, cotangent = (jnp.asarray(rng.normal(size=(b, length, h, k)), jnp.float32) for _ in range(2))
    kk, v = (jnp.asarray(rng.normal(size=(b, length_kv, h, k)), jnp.float32) for _ in range(2))

    def loss(fn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent), argnums=(0, 1, 2)))

    value, grads = loss(lambda q, k, v: attention.padded_to_even(q, k, v, "xla"))(q, kk, v)
    ref_value, ref_grads = loss(_reference)(q, kk, v)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert g.shape == g_ref.shape
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


def test_cudnn_gets_even_lengths(monkeypatch):
    """The cuDNN path pads odd lengths before the kernel sees them (recorded here, then run by XLA on this CPU) and
    leaves even ones as they are."""
    calls, plain = [], jax.nn.dot_product_attention

    def recording(q, k, v, implementation=None, **kwargs):
        calls.append((q.shape[1], k.shape[1], implementation, sorted(kwargs)))
        return plain(q, k, v, implementation="xla", **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    rng = np.random.default_rng(0)
    for length in (197, 8):
        q, k, v = (jnp.asarray(rng.normal(size=(2, length, 2, 8)), jnp.float32) for _ in range(3))
        out = attention.dot_product_attention(q, k, v, "cudnn")
        np.testing.assert_allclose(out, plain(q, k, v, implementation="xla"), rtol=1e-5, atol=1e-6)
    assert calls == [(198, 198, "cudnn", ["key_value_seq_lengths", "query_seq_lengths"]), (8, 8, "cudnn", [])]


def test_heads_major_in_bfloat16_normalises_in_float32_like_jax():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 33, 2, 8)), jnp.bfloat16) for _ in range(3))
    out = attention.dot_product_attention(q, k, v, "heads_major")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), _reference(q, k, v).astype(np.float32), atol=2e-2)


def test_heads_major_gradients_in_bfloat16_keep_the_operand_dtype():
    """The written-out backward returns bf16 gradients for bf16 operands, close to those of the float32 maths."""
    rng = np.random.default_rng(1)
    q, k, v, cotangent = (rng.normal(size=(2, 33, 2, 8)).astype(np.float32) for _ in range(4))

    def grads(fn, dtype):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * cotangent)  # noqa: E731
        return jax.grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(x, dtype) for x in (q, k, v)))

    for g, g_ref in zip(grads(lambda *a: attention.dot_product_attention(*a, "heads_major"), jnp.bfloat16),
                        grads(_reference, jnp.float32), strict=True):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(g.astype(np.float32), g_ref, atol=6e-2, rtol=6e-2)


def test_the_default_is_heads_major_on_cpu_cudnn_for_16_bit_on_gpu():
    # "auto" (and "", what earlier configs say) is the backend's rule; the rule picks per call.
    assert attention.resolve("auto") == attention.resolve("") == attention.resolve(None) == "heads_major"  # CPU
    assert attention.resolve("xla") == "xla"
    assert platform.resolve(tiny_family_config("vivit").model, "gpu").attention_impl == "auto_gpu"
    pick = platform.attention_implementation
    assert pick("auto_cpu", jnp.float32, 64) == pick("auto_cpu", jnp.bfloat16, 64) == "heads_major"
    assert pick("auto_gpu", jnp.bfloat16, 64) == pick("auto_gpu", jnp.float16, 128) == "cudnn"
    # float32, or heads cuDNN's kernel does not take: XLA's.
    assert pick("auto_gpu", jnp.float32, 64) == pick("auto_gpu", jnp.bfloat16, 160) == "xla"
    assert pick("auto_gpu", jnp.bfloat16, 36) == "xla"
    assert pick("auto_tpu", jnp.bfloat16, 64) == "xla"
    assert attention.resolve("auto", jnp.bfloat16, 64, backend="gpu") == "cudnn"  # a named backend, at set-up
    for implementation in attention.IMPLEMENTATIONS:  # an implementation runs as itself everywhere
        assert pick(implementation, jnp.bfloat16, 64) == implementation


def test_an_unknown_implementation_names_the_choices():
    with pytest.raises(ConfigError, match=r"attention_impl='flash'.*'heads_major'"):
        platform.resolve(tiny_family_config("videomae", attention_impl="flash"), "cpu")
    with pytest.raises(ConfigError, match="attention_impl='flash'"):
        tiny_model("videomae", attention_impl="flash")
    with pytest.raises(ConfigError, match=r"'auto'.*unresolved"):  # "auto" is resolved at set-up, not per call
        attention.dot_product_attention(*[jnp.ones((1, 4, 2, 8))] * 3, "auto")


FAMILY_CASES = [("videomae", {}), ("timesformer", {"attention_type": "divided_space_time"}),
                ("timesformer", {"attention_type": "joint_space_time"})] + [
    ("vivit", {"model_type": t}) for t in ("joint", "factorised_encoder", "factorised_self_attention",
                                           "factorised_dot_product")]


@pytest.mark.parametrize(("model_name", "overrides"), tiered(FAMILY_CASES, default=2, unpack=True),
                         ids=[f"{m}-{'-'.join(o.values()) or 'default'}" for m, o in FAMILY_CASES])
def test_every_family_computes_the_same_with_each_implementation(model_name, overrides):
    """Same parameters: the loss and every gradient of the CPU default (heads_major) equal JAX's XLA path."""
    results = {}
    for implementation in ("xla", "heads_major"):
        graphdef, state = nnx.split(tiny_model(model_name, depth=2, attention_impl=implementation, **overrides))
        results[implementation] = jax.jit(jax.value_and_grad(loss_fn(model_name, graphdef)))(state)
    (loss, grads), (ref_loss, ref_grads) = results["heads_major"], results["xla"]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
