"""Mamba's selective scan (S6) in JAX: a chunked associative scan with recomputation (accelerators), a recurrent
scan with a hand-written backward pass (CPUs), plus the plain sequential reference.

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

`selective_scan_recurrent` runs the recurrence one step at a time and writes its backward pass by hand (the adjoint
recurrence, run backwards block by block from kept states), never forming an (L, batch, d_inner, N) tensor: on a
CPU that is what costs, not the number of steps. `selective_scan_sequential` is the autodiff reference for tests.
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


# Steps between the states that `selective_scan_recurrent` keeps for its backward pass (which recomputes the states
# in between, one block at a time).
DEFAULT_RECURRENT_BLOCK = 8


def _sum_states(x_BND: jax.Array) -> jax.Array:
    """Sum over the state axis N of (batch, N, d_inner), written as N - 1 adds: XLA:CPU then fuses it with the
    products that feed it, where a `reduce` over the few states becomes a separate, much slower, library call."""
    total = x_BND[:, 0]
    for n in range(1, x_BND.shape[1]):
        total = total + x_BND[:, n]
    return total


def _recurrence_step(A_ND: jax.Array, h_BND: jax.Array, dt_BD: jax.Array, x_BD: jax.Array,
                     B_BN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step h <- exp(dt * A) * h + dt * x * B of the (batch, N, d_inner) state: (new state, exp(dt * A))."""
    a_BND = jnp.exp(dt_BD[:, None, :] * A_ND[None])
    return a_BND * h_BND + (dt_BD * x_BD)[:, None, :] * B_BN[:, :, None], a_BND


def _recurrence_forward(dt, x, A_ND, B, C):
    """y (blocks, K, batch, d_inner) and the state entering every block (blocks, batch, N, d_inner).

    Inputs are time-major in blocks of K steps: dt, x (blocks, K, batch, d_inner), B, C (blocks, K, batch, N).
    """
    def block(h_BND, xs):
        def step(h_BND, xs_t):
            dt_BD, x_BD, B_BN, C_BN = xs_t
            h_BND, _ = _recurrence_step(A_ND, h_BND, dt_BD, x_BD, B_BN)
            return h_BND, _sum_states(h_BND * C_BN[:, :, None])

        h_out, y_KBD = jax.lax.scan(step, h_BND, xs)
        return h_out, (y_KBD, h_BND)

    batch, d_inner = dt.shape[2], dt.shape[3]
    h0_BND = jnp.zeros((batch, A_ND.shape[0], d_inner), jnp.float32)
    _, (y, h_in) = jax.lax.scan(block, h0_BND, (dt, x, B, C))
    return y, h_in


@jax.custom_vjp
def _recurrence(dt, x, A_ND, B, C):
    return _recurrence_forward(dt, x, A_ND, B, C)[0]


def _recurrence_fwd(dt, x, A_ND, B, C):
    y, h_in = _recurrence_forward(dt, x, A_ND, B, C)
    return y, (dt, x, A_ND, B, C, h_in)


def _recurrence_bwd(residuals, dy):
    """The adjoint recurrence g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} (g = dLoss/dh_t), run backwards block by block;
    each block first recomputes its K states from the state kept at its start, so no (L, batch, N, d_inner) tensor
    is ever formed."""
    dt, x, A_ND, B, C, h_in = residuals

    def block(carry, xs):
        h0_BND, dt_K, x_K, B_K, C_K, dy_K = xs

        def recompute(h_BND, xs_t):
            h_BND, a_BND = _recurrence_step(A_ND, h_BND, *xs_t)
            return h_BND, (h_BND, a_BND)

        _, (h_K, a_K) = jax.lax.scan(recompute, h0_BND, (dt_K, x_K, B_K))
        h_prev_K = jnp.concatenate([h0_BND[None], h_K[:-1]], axis=0)

        def step(carry, xs_t):
            g_next_BND, dA_BND = carry  # g_next: exp(dt_{t+1} A) * g_{t+1}, the later steps' share of dLoss/dh_t
            dt_BD, x_BD, B_BN, C_BN, dy_BD, h_BND, h_prev_BND, a_BND = xs_t
            g_BND = dy_BD[:, None, :] * C_BN[:, :, None] + g_next_BND
            q_BND = g_BND * h_prev_BND * a_BND  # dLoss/d(dt * A)
            gB_BD = _sum_states(g_BND * B_BN[:, :, None])
            d_dt = _sum_states(q_BND * A_ND[None]) + gB_BD * x_BD
            d_x = gB_BD * dt_BD
            d_B = jnp.sum(g_BND * (dt_BD * x_BD)[:, None, :], axis=2)
            d_C = jnp.sum(h_BND * dy_BD[:, None, :], axis=2)
            # dLoss/dA summed over the batch only at the end: a per-step reduction would be a separate loop.
            dA_BND = dA_BND + q_BND * dt_BD[:, None, :]
            return (a_BND * g_BND, dA_BND), (d_dt, d_x, d_B, d_C)

        return jax.lax.scan(step, carry, (dt_K, x_K, B_K, C_K, dy_K, h_K, h_prev_K, a_K), reverse=True)

    carry = (jnp.zeros_like(h_in[0]), jnp.zeros_like(h_in[0]))
    (_, dA_BND), (d_dt, d_x, d_B, d_C) = jax.lax.scan(block, carry, (h_in, dt, x, B, C, dy), reverse=True)
    return d_dt, d_x, jnp.sum(dA_BND, axis=0), d_B, d_C


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def selective_scan_recurrent(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                             D: jax.Array | None = None, z: jax.Array | None = None,
                             delta_bias: jax.Array | None = None, *, delta_softplus: bool = False,
                             reverse: bool = False, block_size: int = DEFAULT_RECURRENT_BLOCK) -> jax.Array:
    """The same selective scan as `selective_scan`, one step at a time with a hand-written backward pass: for CPUs.

    The forward pass is a `lax.scan` whose step updates the (batch, N, d_inner) state in place and contracts it
    with C at once, keeping only the state entering every block of `block_size` steps; the backward pass (a
    `custom_vjp`) runs the adjoint recurrence from the last step to the first, recomputing each block's states
    from the kept one. Nothing of size (L, batch, N, d_inner) is materialised, in either pass: on a CPU, writing
    such tensors (first-touch page faults and memory traffic) costs more than the arithmetic, which is why
    autodiff through the plain sequential scan (which saves every step's state) and the associative scans are
    slower there. Each step is a few fused loops over the state; on accelerators those would be separate kernel
    launches per step, so they take the chunked associative scan.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"selective_scan_recurrent: block_size must be a positive int; got {block_size!r}.")
    batch, length, d_inner = u.shape
    dt = _discretized_delta(delta, delta_bias, delta_softplus)
    block_size = min(block_size, length)
    num_blocks = -(-length // block_size)
    pad = num_blocks * block_size - length

    def to_blocks(x: jax.Array) -> jax.Array:
        # (batch, L, F) -> (blocks, K, batch, F), time-major, the steps in scan order. Padded steps come last in
        # scan order with dt = 0 (decay 1, input 0), so they leave the state as it is; their outputs are dropped.
        x = x.astype(jnp.float32).swapaxes(0, 1)
        if reverse:
            x = jnp.flip(x, axis=0)
        x = jnp.pad(x, ((0, pad), (0, 0), (0, 0)))
        return x.reshape(num_blocks, block_size, batch, x.shape[-1])

    y = _recurrence(to_blocks(dt), to_blocks(u), A.astype(jnp.float32).T, to_blocks(B), to_blocks(C))
    y_LBD = y.reshape(num_blocks * block_size, batch, d_inner)[:length]
    if reverse:
        y_LBD = jnp.flip(y_LBD, axis=0)
    return _gate(y_LBD.swapaxes(0, 1), u, D, z).astype(u.dtype)
