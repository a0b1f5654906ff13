"""VideoMamba: bidirectional Mamba (selective state-space) blocks over frame-by-frame patch tokens and a CLS token.

Layout and constants follow the official model (OpenGVLab/VideoMamba, videomamba/video_sm/models/videomamba.py and
its fork of mamba_ssm's mamba_simple.py, "bimamba" path):

- Patch embedding: a Conv3d with kernel = stride = (tubelet, p, p), here a linear map of (t, h, w, c)-ordered patch
  pixels. Tokens are ordered frame by frame, (t, h, w), with one CLS token in front; config.model.token_order
  "temporal_first" (not the reference's) has the scans read each patch position's frames in turn instead, and
  puts the output tokens back frame by frame.
- Positions: a learned spatial table of 1 + H*W rows (the CLS row first) added to every frame, then a learned
  temporal table (one row per frame) added to the patch tokens only; the CLS token gets the spatial CLS row alone.
  Initialisation follows the reference's, with two deliberate differences: the CLS token is drawn N(0, 0.02)
  instead of zeros (`Model.__init__` says why), and dt_proj keeps Mamba's own init (weight uniform in
  +-dt_rank^-0.5, bias for dt log-uniform in [dt_min, dt_max]) where the reference's `segm_init_weights` re-draws
  it as every nn.Linear, N(0, 0.02) with a zero bias (dt about softplus(0) = 0.69 at the start).
- Blocks: "add -> norm -> mixer" (the residual is carried separately, in float32 with residual_in_fp32), RMSNorm
  (eps 1e-5), no MLP. The mixer projects to (x, z) of width d_inner = expand * d_model; a forward branch runs a
  causal depthwise conv (kernel 4, bias) + SiLU, projects to (dt, B, C), and runs the selective scan with A =
  -exp(A_log), skip D and gate silu(z); a backward branch does the same with its own conv, projections, A_b_log
  and D_b on the time-reversed sequence. The two outputs are summed (not halved), then out_proj.
- After the last block: final residual add, RMSNorm `norm_f`; the classification head reads the CLS token.

The backward branch is computed without flipping anything: a reversed scan with an anti-causal conv is exactly
"flip, run the branch, flip back" (tests/test_videomamba.py checks this against explicit flips).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import platform
from vidjax.config_lib import ConfigError
from vidjax.models import Benchmark, LayerLayout, Traits, layers
from vidjax.models.positions import resize_grid
from vidjax.ops.scan_kernel import selective_scan_pallas
from vidjax.ops.selective_scan import selective_scan, selective_scan_recurrent, selective_scan_sequential
from vidjax.patches import grid_shape, patchify

# VideoMamba sizes: name -> (d_model, depth), as registered by the official code (tiny/small/middle). "Mu" is
# vidjax's own micro size for laptop runs and tests.
VIDEOMAMBA_SIZES: dict[str, tuple[int, int]] = {
    "Mu": (96, 4),
    "Ti": (192, 24),
    "S": (384, 24),
    "M": (576, 32),
}

SCANS = ("auto", "chunked", "associative", "sequential", "recurrent", "pallas")
# The order the scans read the patch tokens in (after the CLS token): the reference's spatial-first (frame by frame,
# each frame's patches row by row) or temporal-first (patch position by position, each position's frames in turn);
# VideoMamba's paper compares both. The output tokens are frame by frame either way.
TOKEN_ORDERS = ("spatial_first", "temporal_first")

TRAITS = Traits(
    layer_layout=LayerLayout(blocks=((("layers",),),),
                             embedding=(("patch_embed",), ("cls_token",), ("pos_embed",), ("temporal_pos_embedding",)),
                             head=(("norm_f",), ("head",))),
    # At 16 x 224 the plain reference's scan is 3,137 Python steps per direction per block, about 150,000 kernel
    # launches a forward pass: minutes per row, timing the launches rather than the model.
    benchmark=Benchmark("S/16", ("infer", "finetune"), "Mu/8", place=3, torch_gpu_note=(
        "not on GPU: the plain reference scans one token per Python step (mamba_ssm's CUDA kernels are not a "
        "dependency); python -m vidjax.bench --model=videomamba --compare=torch still times it")),
    distill=("student",), distill_masks=("attention", "random", "tube"))


def resolve_scan(scan: str, backend: str | None = None) -> str:
    """The selective scan a config's `scan` runs on `backend` (None: this process's): "auto" is the recurrent scan on
    CPU and the chunked one elsewhere (`vidjax.platform` says why); any other value is itself. For set-up and
    reports: a model resolves its config once when it is built and its layers hold the concrete scan."""
    return platform.FIELDS["scan"].resolve(scan, lambda: backend or platform.backend(), "config.model.scan")


def dims(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """Resolves (width, depth, patch, d_inner, dt_rank) from the config's variant and explicit overrides."""
    size, patch = layers.parse_variant(cfg.variant, VIDEOMAMBA_SIZES)
    width, depth = VIDEOMAMBA_SIZES[size]
    width, depth = cfg.width or width, cfg.depth or depth
    return dict(width=width, depth=depth, patch=patch, d_inner=cfg.expand * width,
                dt_rank=cfg.dt_rank or math.ceil(width / 16))


def _torch_default_init(fan_in: int):
    """PyTorch's default Linear/Conv init (kaiming-uniform, a=sqrt(5)): uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=names)


class RMSNorm(nnx.Module):
    """RMSNorm with a scale and no bias, computed in float32: x * rsqrt(mean(x^2) + eps) * scale."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.scale = _param(rngs, nnx.initializers.ones, (dim,), ("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        return x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps) * self.scale[...]


class DepthwiseConv1d(nnx.Module):
    """Causal depthwise conv over L: y[t] = bias + sum_k kernel[k] * x[t - (K-1) + k], zeros before the start.

    This is PyTorch's Conv1d(groups=channels, padding=K-1) truncated to the first L outputs, as mamba_ssm uses it,
    with PyTorch's default init. `reverse=True` mirrors it in time (y[t] sees x[t .. t+K-1], kernel[K-1] on x[t]):
    the causal conv of the flipped sequence, flipped back.
    """

    def __init__(self, channels: int, kernel_size: int, *, rngs: nnx.Rngs):
        init = _torch_default_init(kernel_size)  # fan_in = in_channels / groups * kernel_size
        self.kernel = _param(rngs, init, (kernel_size, channels), (None, "inner"))
        self.bias = _param(rngs, init, (channels,), ("inner",))

    def __call__(self, x_BLD: jax.Array, *, reverse: bool = False) -> jax.Array:
        k, length = self.kernel.shape[0], x_BLD.shape[1]
        pad = ((0, 0), (0, k - 1), (0, 0)) if reverse else ((0, 0), (k - 1, 0), (0, 0))
        x_pad = jnp.pad(x_BLD, pad)
        kernel = self.kernel[...].astype(x_BLD.dtype)
        y = self.bias[...].astype(x_BLD.dtype)
        for i in range(k):
            # Causal: tap i reads x[t - (k-1) + i]. Reversed: tap i reads x[t + (k-1) - i].
            start = (k - 1 - i) if reverse else i
            y = y + kernel[i] * x_pad[:, start:start + length]
        return y


class XZProjection(nnx.Module):
    """in_proj: (B, L, dim) -> x, z each (B, L, d_inner), no bias.

    The kernel is (dim, 2, d_inner), x and z on their own axis, so that sharding d_inner never puts x and z of a
    channel on different devices.
    """

    def __init__(self, dim: int, d_inner: int, *, dtype, choices: platform.Choices | None = None, rngs: nnx.Rngs):
        self.kernel = _param(rngs, nnx.initializers.truncated_normal(0.02), (dim, 2, d_inner),
                             ("embed", None, "inner"))
        self.dtype = dtype
        self.projection_form = platform.given(choices).need("projection_form")

    def __call__(self, x_BLD: jax.Array) -> tuple[jax.Array, jax.Array]:
        xz = layers.project(x_BLD.astype(self.dtype), self.kernel[...], form=self.projection_form)
        return xz[:, :, 0], xz[:, :, 1]


class MambaBranch(nnx.Module):
    """One direction of the bidirectional mixer: conv1d + SiLU, x_proj -> (dt, B, C), dt_proj, selective scan.

    Parameter names follow the reference (conv1d, x_proj, dt_proj, A_log, D); the backward branch is a second
    instance (the reference's conv1d_b, x_proj_b, dt_proj_b, A_b_log, D_b).
    """

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, *, dt_min: float, dt_max: float,
                 dt_init_floor: float, x_proj_init_std: float = 0.02, dtype,
                 choices: platform.Choices | None = None, rngs: nnx.Rngs):
        choices = platform.given(choices)
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = DepthwiseConv1d(d_inner, d_conv, rngs=rngs)
        self.x_proj = layers.Dense(d_inner, dt_rank + 2 * d_state, ("inner", None), use_bias=False, dtype=dtype,
                                   kernel_init=nnx.initializers.truncated_normal(x_proj_init_std),
                                   choices=choices, rngs=rngs)
        # Mamba's dt init: weight uniform in +-dt_rank^-0.5; bias = softplus^-1 of dt log-uniform in [dt_min, dt_max].
        bound = dt_rank ** -0.5
        self.dt_proj = layers.Dense(dt_rank, d_inner, (None, "inner"), use_bias=False, dtype=dtype,
                                    kernel_init=lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -bound, bound),
                                    choices=choices, rngs=rngs)

        def dt_bias_init(key, shape, dtype=jnp.float32):
            log_dt = jax.random.uniform(key, shape, dtype, math.log(dt_min), math.log(dt_max))
            dt = jnp.maximum(jnp.exp(log_dt), dt_init_floor)
            return dt + jnp.log(-jnp.expm1(-dt))

        self.dt_bias = _param(rngs, dt_bias_init, (d_inner,), ("inner",))
        a_log = lambda key, shape, dtype=jnp.float32: jnp.log(  # noqa: E731  (S4D-real: A = -(1..N))
            jnp.broadcast_to(jnp.arange(1, shape[1] + 1, dtype=dtype), shape))
        self.A_log = _param(rngs, a_log, (d_inner, d_state), ("inner", "state"))
        self.D = _param(rngs, nnx.initializers.ones, (d_inner,), ("inner",))

    def __call__(self, x_BLD: jax.Array, z_BLD: jax.Array, *, reverse: bool, scan: str,
                 scan_chunk: int) -> jax.Array:
        """y (B, L, d_inner) = scan(conv(x)) * silu(z) + D-skip, run right-to-left when `reverse`; `scan` one of the
        concrete scans (SCANS but "auto", which the mixer resolved when it was built)."""
        if scan not in SCANS[1:]:
            raise ConfigError(f"MambaBranch runs one of {', '.join(SCANS[1:])}, got scan={scan!r}: \"auto\" is "
                              f"resolved when the model is built (vidjax.platform), not per call.")
        x = jax.nn.silu(self.conv1d(x_BLD, reverse=reverse))
        x_dbl = self.x_proj(x)
        dt, B, C = jnp.split(x_dbl, [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        delta = self.dt_proj(dt)  # the bias is added inside the scan, in float32, before the softplus
        A = -jnp.exp(self.A_log[...])
        args = (x, delta, A, B, C, self.D[...], z_BLD, self.dt_bias[...])
        if scan == "sequential":
            return selective_scan_sequential(*args, delta_softplus=True, reverse=reverse)
        if scan == "recurrent":
            return selective_scan_recurrent(*args, delta_softplus=True, reverse=reverse)
        chunk = scan_chunk if scan == "chunked" else None
        if scan == "pallas":
            # The fused kernel where the program is compiled for a TPU (or runs under Pallas's TPU interpreter);
            # compiled for a GPU, the chunked scan (vidjax.platform says why).
            kernel = lambda *a: selective_scan_pallas(*a, delta_softplus=True, reverse=reverse)  # noqa: E731
            chunked = lambda *a: selective_scan(*a, delta_softplus=True, reverse=reverse,  # noqa: E731
                                                chunk_size=scan_chunk)
            return jax.lax.platform_dependent(*args, cuda=chunked, rocm=chunked, default=kernel)
        return selective_scan(*args, delta_softplus=True, reverse=reverse, chunk_size=chunk)


class BiMamba(nnx.Module):
    """The bidirectional Mamba mixer: in_proj -> forward and backward branches -> sum -> out_proj."""

    def __init__(self, dim: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int = 0,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, x_proj_init_std: float = 0.02,
                 num_layers: int = 1, scan: str = "auto", scan_chunk: int = 64, dtype=jnp.float32,
                 choices: platform.Choices | None = None, rngs: nnx.Rngs):
        """`scan`: one of SCANS, "auto" standing for `choices.scan` (the model's resolved config.model.scan; with no
        `choices`, this machine's default, resolved here as the mixer is built)."""
        if scan not in SCANS:
            raise ConfigError(f"VideoMamba scan must be one of {', '.join(SCANS)}; got {scan!r}.")
        choices = platform.given(choices)
        d_inner = expand * dim
        dt_rank = dt_rank or math.ceil(dim / 16)
        self.d_inner, self.scan_chunk = d_inner, scan_chunk
        self.scan = choices.need("scan") if scan == "auto" else scan
        self.in_proj = XZProjection(dim, d_inner, dtype=dtype, choices=choices, rngs=rngs)
        branch = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, x_proj_init_std=x_proj_init_std,
                      dtype=dtype, choices=choices, rngs=rngs)
        self.forward_branch = MambaBranch(d_inner, d_state, d_conv, dt_rank, **branch)
        self.backward_branch = MambaBranch(d_inner, d_state, d_conv, dt_rank, **branch)
        # The reference re-initialises out_proj as PyTorch's default scaled by 1/sqrt(depth) (GPT-2 style).
        base = _torch_default_init(d_inner)
        out_init = lambda key, shape, dtype=jnp.float32: base(key, shape, dtype) / math.sqrt(num_layers)  # noqa: E731
        self.out_proj = layers.Dense(d_inner, dim, ("inner", "embed"), use_bias=False, dtype=dtype,
                                     kernel_init=out_init, choices=choices, rngs=rngs)

    def __call__(self, hidden_BLD: jax.Array) -> jax.Array:
        x, z = self.in_proj(hidden_BLD)
        scan = dict(scan=self.scan, scan_chunk=self.scan_chunk)
        y = self.forward_branch(x, z, reverse=False, **scan) + self.backward_branch(x, z, reverse=True, **scan)
        return self.out_proj(y)


class Block(nnx.Module):
    """One VideoMamba layer: residual += drop_path(hidden); hidden = mixer(RMSNorm(residual)).

    `Block(dim, rngs=...)` builds a VideoMamba block of width `dim` with the reference defaults (d_state 16,
    d_conv 4, expand 2, dt_rank ceil(dim/16), RMSNorm eps 1e-5, float32 residual). Called as
    `hidden, residual = block(hidden_BLD, residual_BLD=None, rng=None)`: the first block of a stack gets no
    residual (the embeddings are the residual), the next blocks get the previous block's pair. `drop_path` is
    the stochastic-depth rate on the incoming `hidden` (the previous block's mixer output), as in the reference.
    """

    def __init__(self, dim: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int = 0,
                 rms_eps: float = 1e-5, residual_in_fp32: bool = True, drop_path: float = 0.0,
                 scan: str = "auto", scan_chunk: int = 64, num_layers: int = 1, x_proj_init_std: float = 0.02,
                 dtype=jnp.float32, choices: platform.Choices | None = None, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim, rms_eps, rngs=rngs)
        self.mixer = BiMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                             x_proj_init_std=x_proj_init_std, num_layers=num_layers, scan=scan,
                             scan_chunk=scan_chunk, dtype=dtype, choices=choices, rngs=rngs)
        self.residual_in_fp32 = residual_in_fp32
        self.drop_path = drop_path
        self.dtype = dtype

    def __call__(self, hidden_BLD: jax.Array, residual_BLD: jax.Array | None = None,
                 rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        if residual_BLD is None:
            residual = hidden_BLD
        else:
            residual = residual_BLD + layers.drop_path(hidden_BLD, self.drop_path, rng)
        if self.residual_in_fp32:
            residual = residual.astype(jnp.float32)
        return self.mixer(self.norm(residual).astype(self.dtype)), residual


class Model(nnx.Module):
    """VideoMamba classifier (`cfg.head == "classification"`) or backbone (`"none"`).

    `model(video)` -> {"last_hidden_state" (B, 1 + T'*H'*W', D) after norm_f, CLS first, then frame by frame;
    "logits" (B, num_classes) from the CLS token when there is a head}.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.head not in ("classification", "none"):
            raise ConfigError(f"config.model.head must be 'classification' or 'none' for VideoMamba, got "
                              f"{cfg.head!r} (VideoMamba has no pre-training decoder in vidjax).")
        if cfg.token_order not in TOKEN_ORDERS:
            raise ConfigError(f"config.model.token_order must be one of {', '.join(TOKEN_ORDERS)}; got "
                              f"{cfg.token_order!r}.")
        d = dims(cfg)
        # The platform values (scan, projection_form, block_gradients; "auto" resolved here unless the config was
        # resolved at set-up, vidjax/platform.py), handed to every layer.
        choices = platform.choices(cfg, platform.MAMBA_FIELDS)
        self.block_gradients = choices.block_gradients
        self.width, self.patch, self.tubelet = d["width"], d["patch"], cfg.tubelet_size
        self.temporal_first = cfg.token_order == "temporal_first"
        self.grid = token_grid(cfg)
        t, h, w = self.grid
        dtype = jnp.dtype(cfg.dtype)
        patch_dim = self.tubelet * self.patch * self.patch * 3
        # Conv3d's PyTorch default init for the kernel (the reference leaves the patch embedding at it).
        conv_init = _torch_default_init(patch_dim)
        self.patch_embed = layers.Dense(patch_dim, self.width, (None, "embed"), dtype=dtype, kernel_init=conv_init,
                                        choices=choices, rngs=rngs)
        zeros = nnx.initializers.zeros
        # The CLS token starts at N(0, 0.02), not at the reference's zeros. A CLS input of exactly zero is dead in a
        # Mamba block: RMSNorm maps it to zero, so z = in_proj(0) = 0 and the gate silu(z) zeroes the CLS output of
        # every layer; the head then reads a constant, no gradient reaches the blocks, and the CLS only leaves zero
        # through RMSNorm's 1/sqrt(eps) gradient (about 150 at the micro size), which swamps Adam's second moment.
        # The reference escapes only through its spatial table's random CLS row, which a sin-cos start
        # (position_init) leaves at zero; with its own draw the CLS is live either way (a micro model with 16-px
        # patches, 2 blocks and sin-cos tables, 1000 steps from scratch: eval top-1 0.37 with a live CLS, 0.17 with
        # a zero one).
        self.cls_token = _param(rngs, nnx.initializers.truncated_normal(0.02), (self.width,), ("embed",))
        self.pos_embed = _param(rngs, layers.position_init(cfg.position_init, nnx.initializers.truncated_normal(0.02),
                                                           leading=1), (1 + h * w, self.width), ("positions", "embed"))
        self.temporal_pos_embedding = _param(rngs, layers.position_init(cfg.position_init, zeros), (t, self.width),
                                             ("positions", "embed"))
        # Reference drop-path schedule: layer i applies [0, linspace(0, rate, depth)...][i] to the incoming mixer
        # output, and the final add before norm_f applies the full rate to the last layer's output.
        depth = d["depth"]
        rates = [0.0] + [float(r) for r in np.linspace(0.0, cfg.drop_path, depth)]
        self.layers = layers.make_blocks(
            lambda rate, rngs: Block(self.width, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                                     dt_rank=d["dt_rank"], rms_eps=cfg.rms_eps, residual_in_fp32=cfg.residual_in_fp32,
                                     drop_path=rate, scan=choices.scan, scan_chunk=cfg.scan_chunk, num_layers=depth,
                                     x_proj_init_std=cfg.x_proj_init_std, dtype=dtype, choices=choices, rngs=rngs),
            rates[:depth], scan=cfg.scan_layers, rngs=rngs)
        self.remat = layers.check_remat(cfg.remat)
        self.scan_layers = bool(cfg.scan_layers)
        self.final_drop_path = float(cfg.drop_path)
        self.norm_f = RMSNorm(self.width, cfg.rms_eps, rngs=rngs)
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.head_kind = cfg.head
        self.head_dropout = float(cfg.head_dropout)
        if cfg.head == "classification":
            head_init = nnx.initializers.truncated_normal(0.02 * cfg.head_init_scale)
            self.head = layers.Dense(self.width, cfg.num_classes, ("embed", "classes"), kernel_init=head_init,
                                     choices=choices, rngs=rngs)

    def embed(self, video_BTHWC: jax.Array) -> jax.Array:
        """Tokens (B, 1 + T'*H'*W', D): CLS + spatial CLS row, then patches + spatial + temporal positions, in the
        scans' order (config.model.token_order)."""
        t, h, w = self.grid
        expected = (t * self.tubelet, h * self.patch, w * self.patch, 3)
        if tuple(video_BTHWC.shape[1:]) != expected:
            raise ValueError(f"VideoMamba expects videos shaped (batch, {', '.join(map(str, expected))}) "
                             f"channels-last; got {tuple(video_BTHWC.shape)}.")
        b = video_BTHWC.shape[0]
        x = self.patch_embed(patchify(video_BTHWC, self.tubelet, self.patch)).reshape(b, t, h * w, self.width)
        # In float32, as PyTorch promotes the autocast conv output when it adds the float32 tables; the reference's
        # order: spatial table first, then the temporal row of each frame (patch tokens only).
        pos = self.pos_embed[...]
        x = x.astype(jnp.float32) + pos[1:] + self.temporal_pos_embedding[...][:, None]
        cls = jnp.broadcast_to(self.cls_token[...] + pos[0], (b, 1, self.width))
        if self.temporal_first:  # the scans' order: each patch position's frames in turn
            x = jnp.swapaxes(x, 1, 2)
        return jnp.concatenate([cls, x.reshape(b, t * h * w, self.width)], axis=1)

    def __call__(self, video: jax.Array, mask: jax.Array | None = None, *, rng: jax.Array | None = None
                 ) -> dict[str, jax.Array]:
        if mask is not None:
            raise ValueError("VideoMamba in vidjax has no masked pre-training; call it without a mask.")
        # The first layer takes the embeddings as its residual (no pair yet), so only the others are scanned.
        run = dict(remat=self.remat, block_gradients=self.block_gradients)
        hidden, residual = layers.run_blocks([self.layers[0]], (self.embed(video), None), rng, **run)
        if isinstance(self.layers, layers.BlockStack):
            hidden, residual = layers.run_blocks(self.layers, (hidden, residual), rng, start=1, **run)
        else:
            hidden, residual = layers.run_blocks(self.layers[1:], (hidden, residual), rng, scan=self.scan_layers,
                                                 first_index=1, **run)
        final_rng = jax.random.fold_in(rng, len(self.layers)) if rng is not None else None
        residual = residual + layers.drop_path(hidden, self.final_drop_path, final_rng)
        if self.residual_in_fp32:
            residual = residual.astype(jnp.float32)
        tokens = self.norm_f(residual)
        if self.temporal_first:  # back to frame by frame, the order every consumer of the tokens reads
            t, h, w = self.grid
            b, _, width = tokens.shape
            patches = jnp.swapaxes(tokens[:, 1:].reshape(b, h * w, t, width), 1, 2).reshape(b, t * h * w, width)
            tokens = jnp.concatenate([tokens[:, :1], patches], axis=1)
        out = {"last_hidden_state": tokens}
        if self.head_kind == "classification":
            cls = out["last_hidden_state"][:, 0]
            if self.head_dropout and rng is not None:
                keep = jax.random.bernoulli(jax.random.fold_in(rng, len(self.layers) + 1), 1 - self.head_dropout,
                                            cls.shape)
                cls = jnp.where(keep, cls / (1 - self.head_dropout), 0.0)
            out["logits"] = self.head(cls).astype(jnp.float32)
        return out


    # ---- as a distillation's student (`vidjax.models.distill`): any mask ----
    @property
    def distill_width(self) -> int:
        return self.width

    @property
    def distill_grid(self) -> tuple[int, int, int]:
        return self.grid

    def layer_tokens(self, video: jax.Array, visible_ids: jax.Array, num_layers: int,
                     rng: jax.Array | None = None) -> list[jax.Array]:
        """The last `num_layers` blocks' tokens (B, K, width) at `visible_ids` (B, K; frame by frame, increasing),
        each the residual stream after its block through norm_f, frame by frame: the CLS token and the visible
        tokens are scanned, in the scans' order (config.model.token_order), the masked ones dropped, as VideoMamba's
        masked pre-training does (its videomamba_pretrain.py). With every token visible, the last is `__call__`'s
        tokens. (The reference aligns the last layer from the residual stream before the last block's output is
        added, unnormalised, and the class token too; here the stream after it, normalised, and the patches.)"""
        t, h, w = self.grid
        tokens = self.embed(video)
        order = visible_ids
        if self.temporal_first:  # each position's frames in turn: the visible tokens in that order
            scan_ids = (visible_ids % (h * w)) * t + visible_ids // (h * w)
            permutation = jnp.argsort(scan_ids, axis=1)
            order = jnp.take_along_axis(scan_ids, permutation, axis=1)
        else:
            permutation = None
        kept = jnp.take_along_axis(tokens[:, 1:], order[..., None], axis=1)
        x = jnp.concatenate([tokens[:, :1], kept], axis=1)
        run = dict(remat=self.remat, block_gradients=self.block_gradients)
        depth = len(self.layers)
        carries = [layers.run_blocks([self.layers[0]], (x, None), rng, **run)]
        if depth > 1:
            stacked = isinstance(self.layers, layers.BlockStack)  # keys and skips as `__call__` runs them
            rest = self.layers if stacked else list(self.layers)[1:]
            carries = (carries[-1:] if num_layers == depth else []) + layers.last_outputs(
                rest, carries[-1], rng, min(num_layers, depth - 1), first_index=0 if stacked else 1,
                start=1 if stacked else 0, **run)
        outs = []
        for i, (hidden, residual) in enumerate(carries[-num_layers:]):
            if i == num_layers - 1:  # the last block's output joins the stream as `__call__` adds it
                final_rng = jax.random.fold_in(rng, depth) if rng is not None else None
                hidden = layers.drop_path(hidden, self.final_drop_path, final_rng)
            stream = hidden if residual is None else residual + hidden
            if self.residual_in_fp32:
                stream = stream.astype(jnp.float32)
            y = self.norm_f(stream)[:, 1:]
            if permutation is not None:  # back to frame by frame: the visible ids' own order
                y = jnp.take_along_axis(y, jnp.argsort(permutation, axis=1)[..., None], axis=1)
            outs.append(y)
        return outs


def default_config() -> ml_collections.ConfigDict:
    """The model block of a VideoMamba config; configs/ files start from it and set what the recipe says."""
    return ml_collections.ConfigDict(dict(
        variant="S/16",
        width=0, depth=0,  # 0 = from the variant
        num_frames=8, image_size=224, tubelet_size=1,
        head="classification",  # classification | none (backbone: last_hidden_state only)
        num_classes=400, head_init_scale=1.0,  # head kernel ~ truncated normal(0.02 * scale), as the reference
        position_init="reference",  # reference | sincos (layers.position_init: for training from scratch)
        head_dropout=0.0,  # the reference's fc_drop_rate
        drop_path=0.0,
        d_state=16, d_conv=4, expand=2,
        # The scans' token order (TOKEN_ORDERS): the reference's "spatial_first", or "temporal_first", which puts a
        # patch position's frames next to each other (the runlocal recipe's, from scratch).
        token_order="spatial_first",
        x_proj_init_std=0.02,  # x_proj (dt, B, C) ~ truncated normal(std); the reference's 0.02
        dt_rank=0,  # 0 = ceil(width / 16)
        rms_eps=1e-5,
        residual_in_fp32=True,
        # The platform choices, the selective scan's among them: auto (recurrent on CPU, pallas on TPU, chunked
        # elsewhere) | pallas (the fused TPU kernel, vidjax/ops/scan_kernel.py) | chunked | associative (one scan
        # over all tokens) | recurrent (step by step, hand-written backward pass: CPUs) | sequential (step by step,
        # autodiff: the reference); remat, and scan_layers (layers 1.. run as one lax.scan, the first apart)
        **layers.run_defaults(platform.MAMBA_FIELDS),
        scan_chunk=64,  # tokens per chunk of the chunked scan
        dtype="float32",  # compute dtype; parameters, the scan state and the residual stream stay float32
        pixel_mean=(0.485, 0.456, 0.406),
        pixel_std=(0.229, 0.224, 0.225),
    ))


def token_grid(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(frames, rows, columns) of patch tokens of the model `cfg` builds."""
    return grid_shape((cfg.num_frames, cfg.image_size, cfg.image_size), cfg.tubelet_size, dims(cfg)["patch"])


def resize_positions(params: dict[str, np.ndarray], src: ml_collections.ConfigDict,
                     dst: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Params of a model built with `src` made valid for `dst`'s num_frames and/or image_size.

    As the reference's fine-tuning code (run_class_finetuning.py): the spatial table's patch rows are resized
    with PyTorch's bicubic interpolation (align_corners=False) over the H'xW' grid, the CLS row kept as is, and the
    temporal table linearly (align_corners=False) over frames. Tables of equal size are returned unchanged.
    """
    (t_src, h_src, w_src), (t_dst, h_dst, w_dst) = token_grid(src), token_grid(dst)
    out = dict(params)
    if (h_src, w_src) != (h_dst, w_dst):
        table = np.asarray(params["pos_embed"], np.float32)
        resized = resize_grid(table[1:], (h_src, w_src), (h_dst, w_dst), "cubic")
        out["pos_embed"] = np.concatenate([table[:1], resized])
    if t_src != t_dst:
        out["temporal_pos_embedding"] = resize_grid(params["temporal_pos_embedding"], (t_src,), (t_dst,), "linear")
    return out
