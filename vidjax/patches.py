"""Video <-> token conversions shared by the models and the figures (numpy and jax arrays alike), and the masks
drawn over a model's token grid (`MaskSpec`).

Tokens are ordered (t', h', w') over the tubelet grid and each token's pixels (t, h, w, c): the layout of
VideoMAE's tubelet embedding and of its reconstruction target.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from vidjax.config_lib import ConfigError

MASK_KINDS = ("tube",)  # what the encoder's mask hides: a tube, the same spatial positions at every time index
DECODER_MASK_KINDS = ("none", "run_cell")  # config.model.decoder_mask_type: VideoMAE V2's decoder masking


def grid_shape(shape: tuple[int, ...], tubelet: int, patch: int) -> tuple[int, int, int]:
    """Token grid (t', h', w') of a (frames, height, width) clip; an error names the size that does not divide."""
    t, h, w = shape
    if t % tubelet or h % patch or w % patch:
        raise ConfigError(
            f"a video of {t} frames at {h}x{w} does not divide into tubelets of {tubelet} frames and "
            f"{patch}x{patch} patches; choose frames as a multiple of {tubelet} and sizes as multiples of {patch}"
        )
    return t // tubelet, h // patch, w // patch


def patchify(video, tubelet: int, patch: int):
    """Flattens (..., T, H, W, C) into tokens (..., T'*H'*W', tubelet*patch*patch*C).

    Tokens are ordered (t', h', w') and each token's pixels (t, h, w, c), so
    token (i*H' + j)*W' + k is video[i*tubelet:(i+1)*tubelet, j*patch:(j+1)*patch,
    k*patch:(k+1)*patch].reshape(-1).
    """
    *lead, t, h, w, c = video.shape
    tp, hp, wp = grid_shape((t, h, w), tubelet, patch)
    n = len(lead)
    x = video.reshape(*lead, tp, tubelet, hp, patch, wp, patch, c)
    x = x.transpose(*range(n), n, n + 2, n + 4, n + 1, n + 3, n + 5, n + 6)
    return x.reshape(*lead, tp * hp * wp, tubelet * patch * patch * c)


def patch_planes(video, tubelet: int, patch: int) -> list:
    """`patchify`'s tokens channel by channel: for each channel of (B, T, H, W, C), (B, T'*H'*W', tubelet*patch*patch),
    each token's pixels (t, h, w) (`interleave` joins them into `patchify`'s (t, h, w, c)). For accelerators: no
    array with a trailing axis of C (on a TPU, padded to 128 lanes) is made, and the batch and tubelet axes travel
    as one."""
    b, t, h, w, c = video.shape
    tp, hp, wp = grid_shape((t, h, w), tubelet, patch)
    planes = []
    for channel in range(c):
        x = video[..., channel].reshape(b * tp, tubelet, hp, patch, wp, patch).transpose(0, 2, 4, 1, 3, 5)
        planes.append(x.reshape(b, tp * hp * wp, tubelet * patch * patch))
    return planes


def interleave(planes: list):
    """Per-channel token values [(..., P)] * C -> (..., P*C) in `patchify`'s order (pixel, c)."""
    import jax.numpy as jnp

    return jnp.stack(planes, axis=-1).reshape(*planes[0].shape[:-1], -1)


def unpatchify(patches, tubelet: int, patch: int, T: int, H: int, W: int):
    """Inverse of `patchify`: tokens (..., N, tubelet*patch*patch*C) back to (..., T, H, W, C)."""
    *lead, num_tokens, dim = patches.shape
    tp, hp, wp = grid_shape((T, H, W), tubelet, patch)
    if num_tokens != tp * hp * wp or dim % (tubelet * patch * patch):
        raise ValueError(
            f"patches of shape {patches.shape} do not fit a {T}x{H}x{W} video with tubelet "
            f"{tubelet} and patch {patch} ({tp * hp * wp} tokens of a multiple of "
            f"{tubelet * patch * patch} values expected)"
        )
    c = dim // (tubelet * patch * patch)
    n = len(lead)
    x = patches.reshape(*lead, tp, hp, wp, tubelet, patch, patch, c)
    x = x.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 2, n + 5, n + 6)
    return x.reshape(*lead, T, H, W, c)


def running_cell_hidden(grid: tuple[int, int, int], mask_ratio: float) -> int:
    """How many of each 2x2 cell's tokens VideoMAE V2's running-cell decoder mask hides: int(4 * mask_ratio), once it
    is known to be 1 to 3 and the grid's frames to tile into whole cells; a ConfigError otherwise."""
    _, h, w = grid
    hidden = int(4 * mask_ratio)
    if not 0 < hidden < 4:
        raise ConfigError(f"config.model.decoder_mask_ratio={mask_ratio} hides {hidden} of the 4 tokens of each 2x2 "
                          f"cell; the running-cell decoder mask needs 1 to 3 (a ratio in [0.25, 1)).")
    if h % 2 or w % 2:
        raise ConfigError(f"config.model.decoder_mask_type='run_cell' tiles 2x2 cells over the {h}x{w} patches of "
                          f"each frame, which needs an even number of patches each way; choose image_size as an even "
                          f"multiple of the patch size, or decoder_mask_type='none'.")
    return hidden


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """The masks a masked-prediction task has the input path draw for every clip over a model's token grid, and the
    counts the model reads of them: made once from the config (`of`), given to the pipeline (which draws them,
    `vidjax.data.pipeline.InputSpec.masks`) and to the model (`num_masked`, `num_decoded`), so both follow one
    description. Its defaults are the model block's (`vidjax.models.videomae.default_config` takes them)."""

    grid: tuple[int, int, int]  # the model's token grid (t', h', w')
    ratio: float = 0.9  # config.model.mask_ratio: the share of each frame's positions the encoder's mask hides
    kind: str = "tube"  # one of MASK_KINDS
    decoder_kind: str = "none"  # config.model.decoder_mask_type: one of DECODER_MASK_KINDS
    decoder_ratio: float = 0.5  # config.model.decoder_mask_ratio: the running cell's share of positions not decoded

    def __post_init__(self):
        if self.kind not in MASK_KINDS:
            raise ConfigError(f"MaskSpec.kind must be one of {', '.join(MASK_KINDS)}, got {self.kind!r}.")
        if self.decoder_kind not in DECODER_MASK_KINDS:
            raise ConfigError(f"config.model.decoder_mask_type must be one of {', '.join(DECODER_MASK_KINDS)}, got "
                              f"{self.decoder_kind!r}.")
        tokens = self.grid[0] * self.grid[1] * self.grid[2]
        if not 0 < self.num_masked < tokens:
            raise ConfigError(f"config.model.mask_ratio={self.ratio} masks {self.num_masked} of the {tokens} tokens; "
                              f"choose a ratio that leaves some of each.")
        _ = self.num_decoded  # a running-cell ratio or grid it cannot tile fails here, naming the setting

    @classmethod
    def of(cls, model: ml_collections.ConfigDict, grid: tuple[int, int, int]) -> MaskSpec:
        """The masks config.model (`model`) asks for over `grid`; a key the block lacks takes the default."""
        return cls(grid=tuple(int(v) for v in grid), ratio=float(model.get("mask_ratio", cls.ratio)),
                   decoder_kind=model.get("decoder_mask_type", cls.decoder_kind),
                   decoder_ratio=float(model.get("decoder_mask_ratio", cls.decoder_ratio)))

    @property
    def num_masked(self) -> int:
        """Tokens each clip's mask hides: int(ratio * h' * w') spatial positions at each of the t' time indices."""
        t, h, w = self.grid
        return int(self.ratio * h * w) * t

    @property
    def num_decoded(self) -> int | None:
        """Positions per clip the decoder reconstructs under the decoder mask; None: no decoder mask (it reconstructs
        the masked tokens)."""
        if self.decoder_kind == "none":
            return None
        t, h, w = self.grid
        return t * h * w * (4 - running_cell_hidden(self.grid, self.decoder_ratio)) // 4
