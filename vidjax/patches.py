"""Video <-> token conversions shared by the models and the figures; works on numpy and jax arrays alike.

Tokens are ordered (t', h', w') over the tubelet grid and each token's pixels (t, h, w, c): the layout of
VideoMAE's tubelet embedding and of its reconstruction target.
"""

from __future__ import annotations

from vidjax.config_lib import ConfigError


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
