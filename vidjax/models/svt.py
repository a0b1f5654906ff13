"""SVT: a TimeSformer backbone with a DINO projection head, the network of self-supervised video transformers.

Ranasinghe et al., "Self-supervised Video Transformer" (CVPR 2022; kahnchana/svt). A student and an EMA teacher of
this network are trained DINO-style (the loss and the updates are in `vidjax.losses`). Both see views of a clip at
several frame counts and resolutions: the backbone is built with `resize_at_runtime` so that its position tables
are resized to each view by nearest, as SVT's TimeSformer does (its models/timesformer.py `forward_features`).

`model(video)` -> {"cls" (B, D): the backbone's CLS token after its final norm (the feature k-NN and linear
evaluation read), "logits" (B, out_dim) float32: the DINO head's output}. `model.views(videos)` runs every view of
a multi-crop batch with one backbone call per view shape, as SVT's `MultiCropWrapper` does.

Parameters: `backbone/...` are exactly a head-less TimeSformer's (so a converted SVT or TimeSformer backbone loads
into it), `head/mlp/i/{kernel,bias}` and `head/last_layer/kernel` the DINO head's.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidjax import platform
from vidjax.models import Traits, layers, timesformer

# F.normalize's default eps: the norm is clamped to at least this before dividing.
_NORMALIZE_EPS = 1e-12

# A clip's tokens are the TimeSformer backbone's, under the DINO head.
TRAITS = Traits(tokens_part=lambda cfg: "backbone")


class WeightNormDense(nnx.Module):
    """A bias-free linear layer whose kernel columns are used at unit L2 norm: y = x @ (v / ||v||_column).

    This is PyTorch's `weight_norm(nn.Linear(in, out, bias=False))` with its gain weight_g fixed to 1, DINO's
    `norm_last_layer=True` (SVT's and DINO's default for both student and teacher): each output unit's weight vector
    is a direction, so scaling the stored `kernel` changes nothing. As in `torch._weight_norm`, there is no epsilon.
    """

    def __init__(self, in_dim: int, out_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        # The reference's last layer is created after its trunc_normal_ init pass, so v keeps PyTorch's default
        # nn.Linear init: uniform(+-1/sqrt(in)), variance 1/(3 * fan_in). Its scale matters even though the output
        # does not see it: the gradient reaching v shrinks as |v| grows.
        init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.kernel = nnx.Param(init(rngs.params(), (in_dim, out_dim), jnp.float32), out_sharding=(None, "classes"))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        v = self.kernel[...]
        w = v * jax.lax.rsqrt(jnp.sum(jnp.square(v), axis=0, keepdims=True))
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype))


class BatchNorm(nnx.Module):
    """Batch normalisation over the rows of a (B, D) batch with the batch's own statistics (PyTorch BatchNorm1d in
    training mode, eps 1e-5), computed in float32: DINO's `use_bn_in_head`, whose student and teacher both run in
    training mode. With a global (sharded) batch the statistics are the global batch's, as SyncBatchNorm's."""

    def __init__(self, dim: int, eps: float = 1e-5, *, rngs: nnx.Rngs):
        self.scale = layers._param(rngs, nnx.initializers.ones, (dim,), ("mlp",))
        self.bias = layers._param(rngs, nnx.initializers.zeros, (dim,), ("mlp",))
        self.eps = eps

    def __call__(self, x_BD: jax.Array) -> jax.Array:
        x32 = x_BD.astype(jnp.float32)
        mean = jnp.mean(x32, axis=0, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=0, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x_BD.dtype)


class DINOHead(nnx.Module):
    """DINO's projection head: an MLP in_dim -> hidden_dim (x nlayers - 1) -> bottleneck_dim with exact GELU
    between layers, L2 normalisation, then a `WeightNormDense` to out_dim. `head(x_BD)` -> logits (B, out_dim)
    float32.

    As the reference's `DINOHead` (SVT vision_transformer.py, DINO vision_transformer.py) without batch norm
    (`use_bn=False`, the default): nlayers=1 is one Linear in_dim -> bottleneck_dim. MLP weights start N(0, 0.02)
    and biases at zero; the reference's `trunc_normal_(std=.02)` truncates at +-2 in absolute value, i.e. 100
    standard deviations, so it is a plain normal.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, use_bn: bool = False, dtype=jnp.float32, choices: platform.Choices | None = None,
                 rngs: nnx.Rngs):
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1 (the MLP's Linear layers), got {nlayers}.")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        names = [("embed", "mlp")] + [("mlp", None)] * (nlayers - 1)
        init = nnx.initializers.normal(0.02)
        self.mlp = nnx.List([
            layers.Dense(d_in, d_out, axes, dtype=dtype, kernel_init=init, choices=choices, rngs=rngs)
            for d_in, d_out, axes in zip(dims[:-1], dims[1:], names, strict=True)
        ])
        self.norms = nnx.List([BatchNorm(hidden_dim, rngs=rngs) for _ in range(nlayers - 1)]) if use_bn else None
        self.last_layer = WeightNormDense(bottleneck_dim, out_dim, dtype=dtype, rngs=rngs)

    def bottleneck(self, x_BD: jax.Array) -> jax.Array:
        """The MLP's output, L2-normalised per row as `F.normalize(x, dim=-1, p=2)`: (B, bottleneck_dim) float32."""
        for i, dense in enumerate(self.mlp):
            if i:
                if self.norms is not None:
                    x_BD = self.norms[i - 1](x_BD)
                x_BD = jax.nn.gelu(x_BD, approximate=False)  # torch nn.GELU is the erf form
            x_BD = dense(x_BD)
        x_BD = x_BD.astype(jnp.float32)
        norm_B1 = jnp.linalg.norm(x_BD, axis=-1, keepdims=True)
        return x_BD / jnp.maximum(norm_B1, _NORMALIZE_EPS)

    def __call__(self, x_BD: jax.Array) -> jax.Array:
        return self.last_layer(self.bottleneck(x_BD)).astype(jnp.float32)


def _check_config(cfg: ml_collections.ConfigDict) -> None:
    if cfg.backbone.head != "none":
        raise ValueError(f"config.model.backbone.head={cfg.backbone.head!r}: SVT's backbone feeds the DINO head, so "
                         f"it has no classification head of its own; set it to 'none'.")
    for key in ("head_hidden_dim", "head_bottleneck_dim", "out_dim", "head_layers"):
        if int(cfg[key]) < 1:
            raise ValueError(f"config.model.{key}={cfg[key]} must be a positive integer.")


class Model(nnx.Module):
    """TimeSformer backbone + DINO head (see the module docstring); `rng` turns on the backbone's drop path."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        _check_config(cfg)
        self.backbone = timesformer.Model(cfg.backbone, rngs=rngs)
        self.head = DINOHead(self.backbone.width, int(cfg.out_dim), hidden_dim=int(cfg.head_hidden_dim),
                             bottleneck_dim=int(cfg.head_bottleneck_dim), nlayers=int(cfg.head_layers),
                             use_bn=bool(cfg.get("head_use_bn", False)),
                             dtype=jnp.dtype(cfg.backbone.dtype),
                             choices=platform.choices(cfg.backbone, platform.TRANSFORMER_FIELDS,
                                                      where="config.model.backbone"), rngs=rngs)

    def __call__(self, video_BTHWC: jax.Array, *, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        cls_BD = self.backbone(video_BTHWC, rng=rng)["last_hidden_state"][:, 0]
        return {"cls": cls_BD, "logits": self.head(cls_BD)}

    def views(self, videos: Sequence[jax.Array], *, rng: jax.Array | None = None) -> list[jax.Array]:
        """Head logits (B_i, out_dim) of every view in `videos` (each (B_i, T_i, H_i, W_i, 3)), in their order.

        Views of one shape are concatenated along the batch and run in one call, as SVT's `MultiCropWrapper` runs
        each resolution's crops together (it groups consecutive crops of one width; here every view of one shape
        goes in one group, wherever it stands). Each sample's output depends on that sample alone, so grouping
        changes no value. Each group draws its own drop-path keys from `rng`.
        """
        if not videos:
            raise ValueError("Model.views needs at least one view.")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, video in enumerate(videos):
            groups.setdefault(tuple(video.shape[1:]), []).append(i)
        cls: list[jax.Array | None] = [None] * len(videos)
        for g, members in enumerate(groups.values()):
            key = jax.random.fold_in(rng, g) if rng is not None else None
            out = self.backbone(jnp.concatenate([videos[i] for i in members], axis=0), rng=key)
            for i, rows in zip(members, _split_rows(out["last_hidden_state"][:, 0], members, videos), strict=True):
                cls[i] = rows
        # One head call over every view's CLS, as the reference's wrapper concatenates the backbone outputs before
        # its head: the same values row by row, and batch-norm statistics (head_use_bn) over all the views.
        return _split_rows(self.head(jnp.concatenate(cls, axis=0)), range(len(videos)), videos)


def _split_rows(x: jax.Array, members, videos: Sequence[jax.Array]) -> list[jax.Array]:
    """`x`'s rows cut into consecutive blocks of the batch sizes of `videos[i]` for i in `members`, in order."""
    out, start = [], 0
    for i in members:
        out.append(x[start:start + videos[i].shape[0]])
        start += videos[i].shape[0]
    return out


def clip_spec(cfg: ml_collections.ConfigDict) -> dict:
    """The clips of SVT's global views: the backbone's num_frames, image_size and normalisation."""
    bb = cfg.backbone
    return dict(num_frames=int(bb.num_frames), image_size=int(bb.image_size),
                mean=tuple(float(v) for v in bb.pixel_mean), std=tuple(float(v) for v in bb.pixel_std))


def default_config() -> ml_collections.ConfigDict:
    """The model block of an SVT config: the published sizes (kahnchana/svt `get_vit_base_patch16_224` and
    train_ssl.py's defaults). The backbone is TimeSformer ViT-B/16, divided space-time, 8 frames at 224 px, qkv
    bias, LayerNorm eps 1e-6, drop path 0.1, without a head and resizing its position tables per view; the DINO head
    is 768 -> 2048 -> 2048 -> 256 -> 65536."""
    backbone = timesformer.default_config()
    backbone.update(dict(variant="B/16", num_frames=8, image_size=224, attention_type="divided_space_time",
                         head="none", qkv_bias=True, ln_eps=1e-6, drop_path=0.1, resize_at_runtime=True))
    return ml_collections.ConfigDict(dict(
        backbone=backbone,
        head_hidden_dim=2048,
        head_bottleneck_dim=256,
        out_dim=65536,
        head_layers=3,  # the head MLP's Linear layers (DINO's nlayers)
        head_use_bn=False,  # DINO's use_bn_in_head: batch norm after each hidden Linear of the head
    ))
