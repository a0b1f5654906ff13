"""Mamba's selective scan (S6) in JAX: a chunked associative scan with recomputation, plus plain references.

Semantics are those of mamba_ssm's `selective_scan_ref`, channels-last and with input-dependent B and C shared over
channels: for every batch element and channel d,

    delta = softplus(delta + delta_bias)        (the bias and softplus only when given / asked)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      h_0 = 0, state (d_inner, N)
    y_t   = sum_n h_t[n] * C_t[n] + D * u_t,    then y *= silu(z) when z is given.

All of that arithmetic runs in float32 whatever the input dtype; y is returned in `u.dtype`.

`selective_scan` splits the sequence into chunks of `chunk_size` steps: inside a chunk an associative scan over
(decay, input) pairs gives every state, which is contracted with C at once, so the (L, d_inner, N) state tensor is
never materialised; the (batch, N, d_inner) state crosses chunks in a `lax.scan` whose body is rematerialised in
the backward pass, so the only residuals kept per chunk are the incoming state. Temporary memory is then
O(L/chunk * d_inner * N + chunk * d_inner * N) instead of O(L * d_inner * N).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Measured on fwd+bwd of a bidirectional VideoMamba-S sized scan (d_inner 768, N 16, batch 1): at 12,545 tokens the
# compiled temporary memory is smallest for chunks of 32-64 (~450 MiB against ~12.5 GiB unchunked) and grows again
# beyond; at 1,569 tokens on CPU chunks of 32-128 ran fwd+bwd in ~0.6x the unchunked scan's time (64 best, 256 no
# faster than unchunked). Larger chunks mean fewer sequential steps, which matters where each step costs kernel
# launches (GPU).
DEFAULT_CHUNK_SIZE = 64


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raises ValueError naming the first argument whose shape does not fit `u` (batch, L, d_inner) and `A`."""
    if u.ndim != 3:
        raise ValueError(f"selective_scan: u must be (batch, length, d_inner); got shape {tuple(u.shape)}.")
    batch, length, d_inner = u.shape
    if A.ndim != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective_scan: A must be (d_inner, d_state) = ({d_inner}, N) to match u of shape "
                         f"{tuple(u.shape)}; got shape {tuple(A.shape)}.")
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, length, d_inner)),
        "B": (B, (batch, length, d_state)),
        "C": (C, (batch, length, d_state)),
        "D": (D, (d_inner,)),
        "z": (z, (batch, length, d_inner)),
        "delta_bias": (delta_bias, (d_inner,)),
    }
    for name, (value, shape) in expected.items():
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"selective_scan: {name} has shape {tuple(value.shape)} but must be {shape}, given u of shape "
                f"{tuple(u.shape)} (batch, length, d_inner) and A of shape {tuple(A.shape)} (d_inner, d_state).")


def _per_channel(x: jax.Array, ndim: int) -> jax.Array:
    """A (d_inner,) vector in float32, shaped to broadcast against (..., d_inner) arrays of rank `ndim`."""
    return x.astype(jnp.float32).reshape((1,) * (ndim - 1) + x.shape)


def _discretized_delta(delta: jax.Array, delta_bias: jax.Array | None, softplus: bool) -> jax.Array:
    """delta (..., d_inner) in float32 after the optional bias and softplus."""
    delta = delta.astype(jnp.float32)
    if delta_bias is not None:
        delta = delta + _per_channel(delta_bias, delta.ndim)
    return jax.nn.softplus(delta) if softplus else delta


def _gate(y: jax.Array, u: jax.Array, D: jax.Array | None, z: jax.Array | None) -> jax.Array:
    """The skip (D * u) and silu(z) gate on float32 y (..., d_inner), with the other arguments of any dtype."""
    if D is not None:
        y = y + u.astype(jnp.float32) * _per_channel(D, y.ndim)
    if z is not None:
        y = y * jax.nn.silu(z.astype(jnp.float32))
    return y


def _combine(earlier: tuple[jax.Array, jax.Array], later: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Composes two affine steps h -> a * h + b, `earlier` applied first (in scan order)."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _scan_block(h0_BND: jax.Array, u_BKD: jax.Array, delta_BKD: jax.Array, A_ND: jax.Array, B_BKN: jax.Array,
                C_BKN: jax.Array, D: jax.Array | None, z_BKD: jax.Array | None, delta_bias: jax.Array | None,
                softplus: bool, reverse: bool) -> tuple[jax.Array, jax.Array]:
    """Selective scan of one block of K steps from state h0: (state after the block, y_BKD in float32).

    The state is laid out (N, d_inner) so that the wide channel axis is the minor one (TPU lanes, GPU coalescing).
    The incoming state is folded into the first step's input, so one associative scan gives the states directly.
    """
    delta_BKD = _discretized_delta(delta_BKD, delta_bias, softplus)
    dA_BKND = jnp.exp(delta_BKD[:, :, None, :] * A_ND[None, None])
    dBu_BKND = (delta_BKD * u_BKD.astype(jnp.float32))[:, :, None, :] * B_BKN.astype(jnp.float32)[:, :, :, None]
    first = -1 if reverse else 0
    dBu_BKND = dBu_BKND.at[:, first].add(dA_BKND[:, first] * h0_BND)
    _, h_BKND = jax.lax.associative_scan(_combine, (dA_BKND, dBu_BKND), reverse=reverse, axis=1)
    # Multiply-and-sum rather than einsum: a dot would run at reduced precision on TPU and not fuse on GPU.
    y_BKD = jnp.sum(h_BKND * C_BKN.astype(jnp.float32)[:, :, :, None], axis=2)
    return h_BKND[:, 0 if reverse else -1], _gate(y_BKD, u_BKD, D, z_BKD)


def selective_scan(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                   D: jax.Array | None = None, z: jax.Array | None = None, delta_bias: jax.Array | None = None, *,
                   delta_softplus: bool = False, reverse: bool = False,
                   chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> jax.Array:
    """Selective scan y (batch, L, d_inner) in u.dtype; see the module docstring for the recurrence.

    Args:
      u, delta, z: (batch, L, d_inner). A: (d_inner, N), already negative (-exp(A_log)). B, C: (batch, L, N).
        D, delta_bias: (d_inner,). Optional arguments left as None are skipped, as in mamba_ssm.
      delta_softplus: apply softplus to delta + delta_bias.
      reverse: scan from the last step to the first (the same as flipping L on inputs and output).
      chunk_size: steps per chunk of the memory-saving chunked scan; None runs one associative scan over the
        whole length, which materialises several (batch, L, d_inner, N) float32 tensors (fast at short L only).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"selective_scan: chunk_size must be a positive int or None; got {chunk_size!r}.")
    batch, length, d_inner = u.shape
    A_ND = A.astype(jnp.float32).T
    h0_BND = jnp.zeros((batch, A.shape[1], d_inner), jnp.float32)
    if chunk_size is None or chunk_size >= length:
        _, y_BLD = _scan_block(h0_BND, u, delta, A_ND, B, C, D, z, delta_bias, delta_softplus, reverse)
        return y_BLD.astype(u.dtype)

    # Pad L to whole chunks with zeros: u = 0 makes the padded steps' input 0, so scanning forward they only follow
    # the real steps, and scanning in reverse they run first and leave the zero initial state untouched.
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length

    def to_chunks(x: jax.Array | None) -> jax.Array | None:
        # (batch, L, F) -> (num_chunks, batch, K, F): lax.scan slices its leading axis.
        if x is None:
            return None
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        return x.reshape(batch, num_chunks, chunk_size, x.shape[-1]).swapaxes(0, 1)

    # Recomputed in the backward pass, so a chunk's (K, N, d_inner) intermediates are never kept.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def chunk(h_BND, xs):
        u_BKD, delta_BKD, B_BKN, C_BKN, z_BKD = xs
        h_BND, y_BKD = _scan_block(h_BND, u_BKD, delta_BKD, A_ND, B_BKN, C_BKN, D, z_BKD, delta_bias,
                                   delta_softplus, reverse)
        return h_BND, y_BKD.astype(u.dtype)

    xs = tuple(to_chunks(x) for x in (u, delta, B, C, z))
    _, y_CBKD = jax.lax.scan(chunk, h0_BND, xs, reverse=reverse)
    return y_CBKD.swapaxes(0, 1).reshape(batch, num_chunks * chunk_size, d_inner)[:, :length]


def selective_scan_sequential(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                              D: jax.Array | None = None, z: jax.Array | None = None,
                              delta_bias: jax.Array | None = None, *, delta_softplus: bool = False,
                              reverse: bool = False) -> jax.Array:
    """The same selective scan as `selective_scan`, one `lax.scan` step per time step: the reference for tests.

    Written independently of the chunked path (state laid out (batch, d_inner, N) as in mamba_ssm, C contracted
    per step) so that the two check each other.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, _, d_inner = u.shape
    A_DN = A.astype(jnp.float32)

    def step(h_BDN, xs):
        u_BD, delta_BD, B_BN, C_BN = xs
        delta_BD = _discretized_delta(delta_BD, delta_bias, delta_softplus)
        u_BD = u_BD.astype(jnp.float32)
        h_BDN = (jnp.exp(delta_BD[:, :, None] * A_DN[None]) * h_BDN
                 + (delta_BD * u_BD)[:, :, None] * B_BN.astype(jnp.float32)[:, None, :])
        return h_BDN, jnp.sum(h_BDN * C_BN.astype(jnp.float32)[:, None, :], axis=-1)

    time_major = tuple(x.swapaxes(0, 1) for x in (u, delta, B, C))
    h0_BDN = jnp.zeros((batch, d_inner, A.shape[1]), jnp.float32)
    _, y_LBD = jax.lax.scan(step, h0_BDN, time_major, reverse=reverse)
    return _gate(y_LBD.swapaxes(0, 1), u, D, z).astype(u.dtype)
