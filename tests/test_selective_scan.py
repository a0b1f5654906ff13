"""Tests for vidjax.ops.selective_scan: the chunked, unchunked and recurrent scans against the sequential reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiered

from vidjax.ops.selective_scan import selective_scan, selective_scan_recurrent, selective_scan_sequential

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    # Every broadcast in the scans is written out; an implicit one would be a shape bug.
    with jax.numpy_rank_promotion("raise"):
        yield


def make_inputs(seed: int, batch: int, length: int, d_inner: int, d_state: int, *, full: bool) -> dict:
    """Inputs in Mamba's value ranges: dt bias = inverse softplus of [0.001, 0.1], A = -(1..N), B, C, u ~ N(0, 1).

    With `full` every optional input is given and delta is the raw projection that the scan softplus-es; without,
    the optional inputs are None and delta is passed already positive.
    """
    k = jax.random.split(jax.random.key(seed), 7)
    dt = jnp.exp(jax.random.uniform(k[0], (d_inner,), minval=np.log(1e-3), maxval=np.log(1e-1)))
    dt_bias = dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus
    delta_raw = 0.5 * jax.random.normal(k[1], (batch, length, d_inner))
    inputs = {
        "u": jax.random.normal(k[2], (batch, length, d_inner)),
        "delta": delta_raw if full else jax.nn.softplus(delta_raw + dt_bias[None, None]),
        "A": -jnp.tile(jnp.arange(1.0, d_state + 1.0), (d_inner, 1)),
        "B": jax.random.normal(k[3], (batch, length, d_state)),
        "C": jax.random.normal(k[4], (batch, length, d_state)),
        "D": 1.0 + 0.5 * jax.random.normal(k[5], (d_inner,)) if full else None,
        "z": jax.random.normal(k[6], (batch, length, d_inner)) if full else None,
        "delta_bias": dt_bias if full else None,
    }
    return inputs


def value_and_grads(fn, inputs: dict, **kwargs) -> tuple[np.ndarray, dict]:
    """fn's output and the gradients of <output, w> w.r.t. every given input, for a fixed random cotangent w."""
    given = {n: x for n, x in inputs.items() if x is not None}

    @jax.jit
    def run(given):
        y, vjp = jax.vjp(lambda given: fn(**{**inputs, **given}, **kwargs), given)
        return y, vjp(jax.random.normal(jax.random.key(99), y.shape, y.dtype))[0]

    y, grads = run(given)
    return np.asarray(y), {n: np.asarray(g) for n, g in grads.items()}


def assert_close(actual, expected, what: str, rtol: float = 1e-5, atol: float = 1e-5):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


# Lengths that are (64) and are not (50, 7) multiples of the chunk, each in both directions, with every option
# (D, z, delta_bias, softplus) and with none: six cases cover each length/direction/options pair at least once.
@pytest.mark.parametrize("length,chunk_size,full,reverse", [
    pytest.param(64, 16, True, False, marks=pytest.mark.slow), (64, 16, False, True),
    pytest.param(50, 16, True, True, marks=pytest.mark.slow), (50, 16, False, False),
    (7, 16, True, False), (7, 16, False, True),
])
def test_chunked_matches_sequential(length, chunk_size, full, reverse):
    inputs = make_inputs(length + 10 * full + reverse, 2, length, 8, 4, full=full)
    y_ref, g_ref = value_and_grads(selective_scan_sequential, inputs, delta_softplus=full, reverse=reverse)
    y, g = value_and_grads(selective_scan, inputs, delta_softplus=full, reverse=reverse, chunk_size=chunk_size)
    assert_close(y, y_ref, "y")
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert_close(g[name], g_ref[name], f"d/d{name}")


# The recurrent scan (hand-written backward pass) at every length the tests here use (7, 10, 12, 20, 50, 64, 256),
# with blocks that do and do not divide the length, a block longer than the sequence, and one step per block.
@pytest.mark.parametrize("length,block_size,full,reverse", tiered([  # the default tier: the first four
    (64, 8, True, False), (64, 16, False, True), (50, 8, True, True), (50, 16, False, False), (50, 1, True, False),
    (7, 8, True, False), (7, 3, False, True), (10, 4, True, True), (12, 5, True, False), (20, 64, True, True),
    (256, 8, True, False), (256, 24, True, True),
], default=4, unpack=True))
def test_recurrent_matches_sequential(length, block_size, full, reverse):
    inputs = make_inputs(length + 10 * full + reverse, 2, length, 8, 4, full=full)
    y_ref, g_ref = value_and_grads(selective_scan_sequential, inputs, delta_softplus=full, reverse=reverse)
    y, g = value_and_grads(selective_scan_recurrent, inputs, delta_softplus=full, reverse=reverse,
                           block_size=block_size)
    assert_close(y, y_ref, "y")
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        assert_close(g[name], g_ref[name], f"d/d{name}")


def test_recurrent_matches_sequential_at_the_runlocal_shape():
    """The micro runlocal model's scan: 129 tokens (a partial last block), d_inner 192, N 16, with larger steps
    (dt up to ~1) so that the decays span many orders of magnitude, both directions, forward and gradients."""
    inputs = make_inputs(11, 2, 129, 192, 16, full=True)
    inputs["delta"] = inputs["delta"] + 3.0
    for reverse in (False, True):
        y_ref, g_ref = value_and_grads(selective_scan_sequential, inputs, delta_softplus=True, reverse=reverse)
        y, g = value_and_grads(selective_scan_recurrent, inputs, delta_softplus=True, reverse=reverse)
        assert_close(y, y_ref, f"y reverse={reverse}")
        for name in g_ref:
            assert_close(g[name], g_ref[name], f"d/d{name} reverse={reverse}")


@pytest.mark.parametrize("reverse", [False, True])
def test_unchunked_matches_sequential(reverse):
    inputs = make_inputs(3, 2, 50, 8, 4, full=True)
    y_ref, g_ref = value_and_grads(selective_scan_sequential, inputs, delta_softplus=True, reverse=reverse)
    y, g = value_and_grads(selective_scan, inputs, delta_softplus=True, reverse=reverse, chunk_size=None)
    assert_close(y, y_ref, "y")
    for name in g_ref:
        assert_close(g[name], g_ref[name], f"d/d{name}")


def test_reverse_is_flipped_forward():
    inputs = make_inputs(4, 2, 20, 8, 4, full=True)
    flipped = {n: jnp.flip(x, axis=1) if x is not None and x.ndim == 3 else x for n, x in inputs.items()}
    y_rev = selective_scan_sequential(**inputs, delta_softplus=True, reverse=True)
    y_fwd = selective_scan_sequential(**flipped, delta_softplus=True)
    assert_close(np.asarray(y_rev), np.asarray(jnp.flip(y_fwd, axis=1)), "reverse vs flipped")


def test_matches_explicit_recurrence():
    """The sequential reference against a NumPy transcription of mamba_ssm's selective_scan_ref."""
    inputs = make_inputs(5, 2, 12, 6, 3, full=True)
    x = {n: np.asarray(v, np.float64) for n, v in inputs.items()}
    delta = np.logaddexp(0.0, x["delta"] + x["delta_bias"][None, None])
    h = np.zeros((2, 6, 3))
    ys = []
    for t in range(12):
        h = np.exp(delta[:, t, :, None] * x["A"]) * h + (delta[:, t] * x["u"][:, t])[:, :, None] * x["B"][:, t, None]
        ys.append(np.einsum("bdn,bn->bd", h, x["C"][:, t]))
    out = (np.stack(ys, axis=1) + x["u"] * x["D"]) * (x["z"] / (1.0 + np.exp(-x["z"])))
    assert_close(np.asarray(selective_scan_sequential(**inputs, delta_softplus=True)), out, "sequential")
    assert_close(np.asarray(selective_scan(**inputs, delta_softplus=True, chunk_size=5)), out, "chunked")
    assert_close(np.asarray(selective_scan_recurrent(**inputs, delta_softplus=True, block_size=5)), out, "recurrent")


@pytest.mark.parametrize("chunk_size", tiered([16, None, "recurrent"]))
def test_bfloat16_inputs_keep_a_float32_state(chunk_size):
    # Small steps (dt ~ 0.001..0.1) make the state integrate over many steps, where a bf16 state would drift.
    inputs = make_inputs(6, 1, 256, 16, 8, full=True)
    low = {n: (x.astype(jnp.bfloat16) if n in ("u", "delta", "B", "C", "z") else x) for n, x in inputs.items()}
    if chunk_size == "recurrent":
        y = selective_scan_recurrent(**low, delta_softplus=True)
    else:
        y = selective_scan(**low, delta_softplus=True, chunk_size=chunk_size)
    assert y.dtype == jnp.bfloat16
    as_f32 = {n: (x.astype(jnp.float32) if x is not None else None) for n, x in low.items()}
    y_ref = np.asarray(selective_scan_sequential(**as_f32, delta_softplus=True))
    # Only the final rounding to bf16 (relative 2**-8) separates the two.
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("name,shape,message", [
    ("delta", (2, 10, 7), r"delta has shape \(2, 10, 7\).*must be \(2, 10, 8\)"),
    ("A", (4, 8), r"A must be \(d_inner, d_state\) = \(8, N\).*got shape \(4, 8\)"),
    ("B", (2, 10, 5), r"B has shape \(2, 10, 5\).*must be \(2, 10, 4\)"),
    ("C", (2, 9, 4), r"C has shape \(2, 9, 4\).*must be \(2, 10, 4\)"),
    ("D", (4,), r"D has shape \(4,\).*must be \(8,\)"),
    ("z", (1, 10, 8), r"z has shape \(1, 10, 8\).*must be \(2, 10, 8\)"),
    ("delta_bias", (8, 1), r"delta_bias has shape \(8, 1\).*must be \(8,\)"),
    ("u", (10, 8), r"u must be \(batch, length, d_inner\)"),
    ("A", (8,), r"A must be \(d_inner, d_state\).*got shape \(8,\)"),
])
@pytest.mark.parametrize("fn", [selective_scan, selective_scan_sequential, selective_scan_recurrent])
def test_bad_shapes_raise(fn, name, shape, message):
    inputs = make_inputs(7, 2, 10, 8, 4, full=True)
    inputs[name] = jnp.zeros(shape)
    with pytest.raises(ValueError, match=message):
        fn(**inputs, delta_softplus=True)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5])
def test_bad_chunk_size_raises(chunk_size):
    inputs = make_inputs(8, 1, 10, 8, 4, full=True)
    with pytest.raises(ValueError, match="chunk_size must be a positive int or None"):
        selective_scan(**inputs, chunk_size=chunk_size)


@pytest.mark.parametrize("block_size", [0, -4, 2.5])
def test_bad_block_size_raises(block_size):
    inputs = make_inputs(8, 1, 10, 8, 4, full=True)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        selective_scan_recurrent(**inputs, block_size=block_size)
