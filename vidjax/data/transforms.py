"""Video transforms on uint8 (T, H, W, 3) clips: crops, flips, colour, RandAugment, erasing, test views, norms.

Everything here runs in the grain workers on numpy arrays (PIL for resampling), and every random choice comes from
the `np.random.Generator` passed in, so a clip's augmentation is a function of (seed, element index). Augmentations
are video-consistent: one set of random parameters (crop box, flip, RandAugment ops and magnitudes, erasing box) is
drawn per clip and applied to every frame, as in VideoMAE, so that motion is not corrupted by per-frame jitter.

Recipes (VideoMAE, MCG-NJU/VideoMAE):
  pre-training  `resize_short_side` (or none) -> `multi_scale_crop` (-> `random_flip`, not in VideoMAE itself).
  fine-tuning   `rand_augment` ("rand-m7-n4-mstd0.5-inc1") -> `random_resized_crop` -> `random_flip` (not for SSv2)
                -> `random_erasing` (prob 0.25, "pixel"), with `repeated_augment` for `num_sample` 2.
  testing       `resize_short_side(crop size)` -> `multi_view(video, num_crops)` (3 crops along the long side).
SVT's multi-view pre-training (`random_resized_crop` -> `random_flip` -> `color_jitter` -> `random_grayscale` per
view) is put together in `vidjax.data.views`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}
INTERPOLATIONS = tuple(_RESAMPLE)


def _check_video(video: np.ndarray) -> None:
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video of shape (T, H, W, 3), got shape {video.shape}")


def _check_uint8_video(video: np.ndarray) -> None:
    _check_video(video)
    if video.dtype != np.uint8:
        raise ValueError(f"expected a uint8 video (normalisation happens on the device), got dtype {video.dtype}")


def _crop_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize_frames(video: np.ndarray, height: int, width: int,
                   resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    out = np.empty((video.shape[0], height, width, 3), dtype=np.uint8)
    for i in range(video.shape[0]):
        out[i] = np.asarray(Image.fromarray(video[i]).resize((width, height), resample))
    return out


def resize_short_side(video: np.ndarray, size: int) -> np.ndarray:
    """Resizes each frame (bilinear) so its shorter side is `size`, keeping the aspect ratio."""
    _check_video(video)
    t, h, w, _ = video.shape
    if min(h, w) == size:
        return video
    if h <= w:
        new_h, new_w = size, max(1, round(w * size / h))
    else:
        new_h, new_w = max(1, round(h * size / w)), size
    return _resize_frames(video, new_h, new_w)


def _check_crop(video: np.ndarray, crop_h: int, crop_w: int) -> None:
    _check_video(video)
    h, w = video.shape[1:3]
    if crop_h > h or crop_w > w:
        raise ValueError(
            f"crop {crop_h}x{crop_w} is larger than the {h}x{w} frames; resize the short side "
            "to at least the crop size first"
        )


def random_crop(video: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Crops the same random `size` (int or (h, w)) window from every frame."""
    _check_video(video)
    top, left, crop_h, crop_w = random_crop_box(video.shape[1], video.shape[2], size, rng)
    return video[:, top : top + crop_h, left : left + crop_w]


def center_crop(video: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Crops the central `size` (int or (h, w)) window from every frame."""
    crop_h, crop_w = _crop_size(size)
    _check_crop(video, crop_h, crop_w)
    h, w = video.shape[1:3]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return video[:, top : top + crop_h, left : left + crop_w]


def random_flip(video: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Flips every frame left-right, together, with probability `p`."""
    _check_video(video)
    if rng.random() < p:
        return video[:, :, ::-1]
    return video


# ----------------------------------------------------------------------------------------------------------------
# Training crops.

MULTI_SCALE_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)


def multi_scale_crop_box(height: int, width: int, size: int | tuple[int, int], rng: np.random.Generator, *,
                         scales: Sequence[float] = MULTI_SCALE_CROP_SCALES, max_distort: int = 1,
                         fix_crop: bool = True, more_fix_crop: bool = True) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of VideoMAE's GroupMultiScaleCrop on a `height` x `width` frame.

    Crop sides are `int(scale * short side)` for each scale, snapped to the output side when within 3 pixels; the
    (width, height) pair is drawn uniformly from the pairs whose scale indices differ by at most `max_distort`. With
    `fix_crop` the corner is one of the 5 (or, with `more_fix_crop`, 13) fixed offsets on a quarter grid of the
    free space, drawn uniformly (duplicates, which arise when the free space is under 4 pixels, count each time, as
    in the reference); otherwise uniform. A snapped side larger than the frame is clamped to the frame (the
    reference would read outside the image).
    """
    out_h, out_w = _crop_size(size)
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    crop_hs = [min(out_h if abs(s - out_h) < 3 else s, height) for s in sides]
    crop_ws = [min(out_w if abs(s - out_w) < 3 else s, width) for s in sides]
    pairs = [(cw, ch) for i, ch in enumerate(crop_hs) for j, cw in enumerate(crop_ws) if abs(i - j) <= max_distort]
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    if not fix_crop:
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        return top, left, crop_h, crop_w
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]  # corners and centre, in (w, h) quarter steps
    if more_fix_crop:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]  # edge centres, inner quarters
    gw, gh = grid[int(rng.integers(len(grid)))]
    return gh * h_step, gw * w_step, crop_h, crop_w


def multi_scale_crop(video: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator, *,
                     scales: Sequence[float] = MULTI_SCALE_CROP_SCALES, max_distort: int = 1,
                     fix_crop: bool = True, more_fix_crop: bool = True) -> np.ndarray:
    """VideoMAE's pre-training crop: one `multi_scale_crop_box` for the clip, resized (bilinear) to `size`.

    The crop is relative to the frames' short side, so the frame size chosen before it sets the zoom: VideoMAE
    applies it to the stored videos (Kinetics re-encoded at short side 320: crops of 320..211 pixels; SSv2 at its
    original height 240), so set the short-side resize to 320 (or none) to match it.
    """
    _check_video(video)
    out_h, out_w = _crop_size(size)
    top, left, crop_h, crop_w = multi_scale_crop_box(
        video.shape[1], video.shape[2], (out_h, out_w), rng, scales=scales, max_distort=max_distort,
        fix_crop=fix_crop, more_fix_crop=more_fix_crop)
    crop = video[:, top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (out_h, out_w):
        return crop
    return _resize_frames(crop, out_h, out_w)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of an Inception-style crop, as VideoMAE's fine-tuning `random_resized_crop`.

    Up to 10 tries of an area fraction uniform in `scale` and a width/height ratio log-uniform in `ratio`; if none
    fits, the largest central crop whose ratio is within `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(video: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator, *,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        interpolation: str = "bilinear") -> np.ndarray:
    """One `random_resized_crop_box` for the clip, resized to `size` with PIL's antialiased `interpolation`
    ("bilinear" as VideoMAE; DINO and SVT use "bicubic")."""
    _check_video(video)
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {interpolation!r}")
    out_h, out_w = _crop_size(size)
    top, left, h, w = random_resized_crop_box(video.shape[1], video.shape[2], rng, scale=scale, ratio=ratio)
    return _resize_frames(video[:, top : top + h, left : left + w], out_h, out_w, _RESAMPLE[interpolation])


# ----------------------------------------------------------------------------------------------------------------
# A training crop as a box: drawn before decoding, applied by the decoder (crop first) or to decoded frames.

TRAIN_CROPS = ("random", "multi_scale", "random_resized")


@dataclasses.dataclass(frozen=True)
class Crop:
    """One clip's spatial augmentation: the box (top, left, height, width) in the frames as resized to the short
    side, resized to (out_height, out_width), then flipped left-right when `flip`.

    Drawing it needs only the frame size, so the decoder can cut the box from the decoded picture and resample it
    once, straight to the output size (`vidjax.data.decode.read_clip(crops=...)`); `apply_crop` applies it to
    frames already converted, which is what the decoder falls back to."""

    top: int
    left: int
    height: int
    width: int
    out_height: int
    out_width: int
    flip: bool = False


def random_crop_box(height: int, width: int, size: int | tuple[int, int],
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of `random_crop`."""
    crop_h, crop_w = _crop_size(size)
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the {height}x{width} frames; resize the short side "
                         "to at least the crop size first")
    return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1)), crop_h, crop_w


def train_crop(kind: str, height: int, width: int, size: int | tuple[int, int], rng: np.random.Generator, *,
               scales: Sequence[float] = MULTI_SCALE_CROP_SCALES, flip: bool = True,
               area: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Crop:
    """The `Crop` of a training clip of `height` x `width` frames: `kind` one of TRAIN_CROPS ("random": a `size`
    window, "multi_scale": `multi_scale_crop_box` of `scales`, "random_resized": `random_resized_crop_box` of
    `area` and `ratio`), then, with `flip`, a left-right flip with probability 0.5. It draws from `rng` exactly what
    the crop function of that kind followed by `random_flip` draws, so `apply_crop` of it gives their clip."""
    out_h, out_w = _crop_size(size)
    if kind == "multi_scale":
        box = multi_scale_crop_box(height, width, (out_h, out_w), rng, scales=scales)
    elif kind == "random_resized":
        box = random_resized_crop_box(height, width, rng, scale=tuple(area), ratio=tuple(ratio))
    elif kind == "random":
        box = random_crop_box(height, width, (out_h, out_w), rng)
    else:
        raise ValueError(f"unknown training crop {kind!r}; expected one of {TRAIN_CROPS}")
    return Crop(*box, out_h, out_w, flip=bool(flip and rng.random() < 0.5))


def apply_crop(video: np.ndarray, crop: Crop) -> np.ndarray:
    """`crop` applied to decoded (T, H, W, 3) frames: the box, resized (bilinear, PIL's antialiased) when its size
    differs from the output's, then the flip."""
    _check_video(video)
    if crop.top < 0 or crop.left < 0 or crop.top + crop.height > video.shape[1] or \
            crop.left + crop.width > video.shape[2]:
        raise ValueError(f"{crop} does not fit in {video.shape[1]}x{video.shape[2]} frames")
    out = video[:, crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    if (crop.height, crop.width) != (crop.out_height, crop.out_width):
        out = _resize_frames(out, crop.out_height, crop.out_width)
    return out[:, :, ::-1] if crop.flip else out


# ----------------------------------------------------------------------------------------------------------------
# Test-time views.

def multi_view(video: np.ndarray, num_crops: int, size: int | None = None) -> np.ndarray:
    """(num_crops, T, size, size, 3): square crops spread evenly along the frames' long side.

    `size` defaults to the short side, as VideoMAE's test (frames resized to short side = crop size, so the crops
    cover the whole short side). Crop i starts at `int(i * (long - size) / (num_crops - 1))` along the long side
    (VideoMAE's spacing: first at the start, last at the end) and is centred along the short side; one crop is the
    centre crop. Square frames are stepped along the width.
    """
    _check_video(video)
    if num_crops < 1:
        raise ValueError(f"num_crops must be at least 1, got {num_crops}")
    h, w = video.shape[1:3]
    size = min(h, w) if size is None else size
    _check_crop(video, size, size)
    along_h = h > w
    long_free = (h if along_h else w) - size
    short_start = ((w if along_h else h) - size) // 2
    starts = [long_free // 2] if num_crops == 1 else [int(i * long_free / (num_crops - 1)) for i in range(num_crops)]
    views = []
    for start in starts:
        top, left = (start, short_start) if along_h else (short_start, start)
        views.append(video[:, top : top + size, left : left + size])
    return np.stack(views)


def three_crop(video: np.ndarray, size: int | None = None) -> np.ndarray:
    """(3, T, size, size, 3): left/centre/right (or top/centre/bottom for portrait frames) crops, as SlowFast and
    VideoMAE test; `multi_view(video, 3, size)`."""
    return multi_view(video, 3, size)


# ----------------------------------------------------------------------------------------------------------------
# RandAugment (timm's rand_augment_transform as VideoMAE uses it, applied identically to every frame).

RAND_AUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# "inc1": the same ops, with the ones whose severity fell with magnitude replaced by increasing versions.
RAND_AUGMENT_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel")
_MAX_LEVEL = 10.0
_OP_PROB = 0.5  # timm's rand_augment_ops: every chosen op is applied with probability 0.5
_TRANSLATE_PCT = 0.45
RAND_AUGMENT_FILL = (128, 128, 128)  # timm's default fill for pixels moved in from outside the frame


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """A parsed RandAugment string: `num_ops` ops per clip at `magnitude` (0..10) with Gaussian noise."""

    magnitude: float = _MAX_LEVEL
    num_ops: int = 2
    magnitude_std: float = 0.0
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_AUGMENT_INCREASING_OPS if self.increasing else RAND_AUGMENT_OPS


def parse_rand_augment(spec: str) -> RandAugmentConfig:
    """Parses timm's RandAugment string, e.g. "rand-m7-n4-mstd0.5-inc1" (VideoMAE's fine-tuning recipe).

    Sections after "rand", in any order: `m` magnitude (0..10, default 10), `n` ops per clip (default 2), `mstd`
    std of the Gaussian noise on the magnitude (default 0), `inc` 0/1 ops of increasing severity (default 0).
    Unlike the reference, which reads any `inc` value (even "inc0") as on and silently ignores unknown sections,
    bad strings are errors. timm's `w` (op choice weights) is not supported.
    """
    usage = ('expected "rand" followed by -m<magnitude>, -n<num ops>, -mstd<std>, -inc<0|1>, '
             'e.g. "rand-m7-n4-mstd0.5-inc1"')
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment string {spec!r} does not start with 'rand'; {usage}")
    values: dict[str, str] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|inc|m|n)(\d+(?:\.\d*)?)", part)
        if match is None:
            raise ValueError(f"RandAugment string {spec!r}: cannot read section {part!r}; {usage}")
        if match[1] in values:
            raise ValueError(f"RandAugment string {spec!r}: {match[1]!r} is given twice")
        values[match[1]] = match[2]
    try:
        config = RandAugmentConfig(
            magnitude=float(values.get("m", _MAX_LEVEL)), num_ops=int(values.get("n", 2)),
            magnitude_std=float(values.get("mstd", 0.0)), increasing=bool(int(values.get("inc", 0))))
    except ValueError as err:
        raise ValueError(f"RandAugment string {spec!r}: n and inc must be integers ({err}); {usage}") from None
    if not 0 <= config.magnitude <= _MAX_LEVEL:
        raise ValueError(f"RandAugment string {spec!r}: magnitude m must be in [0, 10], got {config.magnitude}")
    if config.num_ops < 1:
        raise ValueError(f"RandAugment string {spec!r}: n must be at least 1, got {config.num_ops}")
    if values.get("inc", "0") not in ("0", "1"):
        raise ValueError(f"RandAugment string {spec!r}: inc must be 0 or 1, got {values['inc']}")
    return config


_LEVELS = np.arange(256)


def _lut(video: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Applies a (256,) or per-channel (3, 256) uint8 look-up table."""
    if lut.ndim == 1:
        return np.take(lut, video)
    out = np.empty_like(video)
    for c in range(3):
        out[..., c] = lut[c][video[..., c]]
    return out


def _blend(degenerate: np.ndarray | float, video: np.ndarray, factor: float) -> np.ndarray:
    # PIL's Image.blend, in float32 with truncation, so a one-frame clip matches ImageEnhance exactly.
    d = np.asarray(degenerate, np.float32)
    out = d + np.float32(factor) * (video.astype(np.float32) - d)
    return np.clip(out, 0, 255).astype(np.uint8)


def _grey(video: np.ndarray) -> np.ndarray:
    # PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point).
    v = video.astype(np.uint32)
    return ((v[..., 0] * 19595 + v[..., 1] * 38470 + v[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _auto_contrast(video: np.ndarray) -> np.ndarray:
    # Per channel, stretch [min, max] of the whole clip to [0, 255] (PIL's autocontrast, cutoff 0). Statistics are
    # taken over the clip rather than per frame (the reference) so that every frame gets the same mapping.
    luts = []
    for c in range(3):
        lo, hi = int(video[..., c].min()), int(video[..., c].max())
        if hi <= lo:
            luts.append(_LEVELS)
        else:
            scale = 255.0 / (hi - lo)
            luts.append(np.clip(np.trunc(_LEVELS * scale - lo * scale), 0, 255))
    return _lut(video, np.stack(luts).astype(np.uint8))


def _equalize(video: np.ndarray) -> np.ndarray:
    # PIL's equalize, per channel, with the histogram of the whole clip (same mapping for every frame).
    luts = []
    for c in range(3):
        hist = np.bincount(video[..., c].ravel(), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255 if len(nonzero) > 1 else 0
        if not step:
            luts.append(_LEVELS)
        else:
            before = np.concatenate([[0], np.cumsum(hist)[:-1]])
            luts.append(np.minimum((step // 2 + before) // step, 255))
    return _lut(video, np.stack(luts).astype(np.uint8))


def _posterize(video: np.ndarray, bits: int) -> np.ndarray:
    if bits >= 8:
        return video
    return video & np.uint8(~(2 ** (8 - bits) - 1) & 0xFF)  # 0 bits keeps nothing (black), as older PIL did


def _solarize(video: np.ndarray, threshold: int) -> np.ndarray:
    return _lut(video, np.where(_LEVELS < threshold, _LEVELS, 255 - _LEVELS).astype(np.uint8))


def _solarize_add(video: np.ndarray, add: int, threshold: int = 128) -> np.ndarray:
    return _lut(video, np.where(_LEVELS < threshold, np.minimum(_LEVELS + add, 255), _LEVELS).astype(np.uint8))


def _per_frame(video: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    out = np.empty_like(video)
    for i in range(video.shape[0]):
        out[i] = np.asarray(fn(Image.fromarray(video[i])))
    return out


def _affine(video: np.ndarray, matrix: tuple[float, ...], resample: Image.Resampling,
            fill: tuple[int, int, int]) -> np.ndarray:
    return _per_frame(video, lambda im: im.transform(im.size, Image.Transform.AFFINE, matrix, resample=resample,
                                                     fillcolor=fill))


def apply_augment_op(video: np.ndarray, name: str, magnitude: float, rng: np.random.Generator, *,
                     interpolation: str = "bicubic", fill: tuple[int, int, int] = RAND_AUGMENT_FILL) -> np.ndarray:
    """Applies RandAugment op `name` at `magnitude` (0..10) identically to every frame; `rng` draws the sign.

    Levels as in timm: Rotate +-30 deg, Shear +-0.3, TranslateRel +-45% of the side, enhancements (Color, Contrast,
    Brightness, Sharpness) factor 0.1..1.9 or, increasing, 1 +- 0.9 m/10; Posterize keeps int(4 m/10) bits (increasing:
    4 - that); Solarize threshold int(256 m/10) (increasing: 256 - that); SolarizeAdd adds int(110 m/10) below 128.
    Signed levels are negated with probability 0.5. Contrast's grey level, AutoContrast's range and Equalize's
    histogram are taken over the whole clip, so the mapping is the same in every frame (the reference computes them
    per frame, which makes the clip flicker); on a one-frame clip every op equals its PIL counterpart.
    """
    _check_uint8_video(video)
    if name not in RAND_AUGMENT_OPS and name not in RAND_AUGMENT_INCREASING_OPS:
        known = sorted(set(RAND_AUGMENT_OPS) | set(RAND_AUGMENT_INCREASING_OPS))
        raise ValueError(f"unknown RandAugment op {name!r}; known ops: {known}")
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {interpolation!r}")
    resample = _RESAMPLE[interpolation]
    level = min(_MAX_LEVEL, max(0.0, magnitude)) / _MAX_LEVEL

    def signed(value: float) -> float:
        return -value if rng.random() > 0.5 else value

    if name == "AutoContrast":
        return _auto_contrast(video)
    if name == "Equalize":
        return _equalize(video)
    if name == "Invert":
        return 255 - video
    if name == "Rotate":
        degrees = signed(level * 30.0)
        return _per_frame(video, lambda im: im.rotate(degrees, resample=resample, fillcolor=fill))
    if name == "Posterize":
        return _posterize(video, int(level * 4))
    if name == "PosterizeIncreasing":
        return _posterize(video, 4 - int(level * 4))
    if name == "Solarize":
        return _solarize(video, int(level * 256))
    if name == "SolarizeIncreasing":
        return _solarize(video, 256 - int(level * 256))
    if name == "SolarizeAdd":
        return _solarize_add(video, int(level * 110))
    if name.endswith("Increasing"):
        factor = 1.0 + signed(level * 0.9)
        name = name.removesuffix("Increasing")
    else:
        factor = level * 1.8 + 0.1
    if name == "Color":
        return _blend(_grey(video)[..., None], video, factor)
    # Contrast and Brightness blend with a constant, so a 256-entry table gives the same values, faster.
    if name == "Contrast":
        return _lut(video, _blend(int(_grey(video).mean() + 0.5), _LEVELS.astype(np.uint8), factor))
    if name == "Brightness":
        return _lut(video, _blend(0.0, _LEVELS.astype(np.uint8), factor))
    if name == "Sharpness":
        return _per_frame(video, lambda im: ImageEnhance.Sharpness(im).enhance(factor))
    if name in ("ShearX", "ShearY"):
        shear = signed(level * 0.3)
        matrix = (1, shear, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, shear, 1, 0)
        return _affine(video, matrix, resample, fill)
    # TranslateXRel / TranslateYRel
    pct = signed(level * _TRANSLATE_PCT)
    h, w = video.shape[1:3]
    matrix = (1, 0, pct * w, 0, 1, 0) if name == "TranslateXRel" else (1, 0, 0, 0, 1, pct * h)
    return _affine(video, matrix, resample, fill)


def rand_augment(video: np.ndarray, config: RandAugmentConfig | str, rng: np.random.Generator, *,
                 interpolation: str = "bicubic", fill: tuple[int, int, int] = RAND_AUGMENT_FILL) -> np.ndarray:
    """RandAugment with one draw per clip: `num_ops` ops chosen uniformly with replacement, each applied (to every
    frame alike) with probability 0.5 at a magnitude ~ N(m, mstd) clipped to [0, 10].

    VideoMAE runs it on the decoded frames before the crop, with bicubic resampling and grey fill (the defaults).
    """
    config = parse_rand_augment(config) if isinstance(config, str) else config
    ops = config.ops
    for op in rng.integers(len(ops), size=config.num_ops):
        if rng.random() > _OP_PROB:
            continue
        magnitude = config.magnitude
        if config.magnitude_std > 0:
            magnitude = rng.normal(magnitude, config.magnitude_std)
        video = apply_augment_op(video, ops[op], magnitude, rng, interpolation=interpolation, fill=fill)
    return video


# ----------------------------------------------------------------------------------------------------------------
# Colour jitter and grayscale (torchvision's ColorJitter and RandomGrayscale, as DINO and SVT use them).

COLOR_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def color_jitter_ranges(brightness: float, contrast: float, saturation: float,
                        hue: float = 0.0) -> dict[str, tuple[float, float]]:
    """The factor range of each active jitter op (strength 0 is off), checking the strengths as torchvision does.

    brightness, contrast, saturation: factors uniform in [max(0, 1 - x), 1 + x], x >= 0. hue: a shift of the hue
    angle, in turns, uniform in [-x, x], 0 <= x <= 0.5.
    """
    ranges = {}
    for name, strength in zip(COLOR_JITTER_OPS[:3], (brightness, contrast, saturation), strict=True):
        if not strength >= 0:
            raise ValueError(f"colour jitter {name} must be >= 0 (0: off), got {strength}")
        if strength:
            ranges[name] = (max(0.0, 1.0 - strength), 1.0 + strength)
    if not 0 <= hue <= 0.5:
        raise ValueError(f"colour jitter hue must be in [0, 0.5] (a fraction of the colour wheel; 0: off), got {hue}")
    if hue:
        ranges["hue"] = (-hue, hue)
    return ranges


def _shift_hue(video: np.ndarray, shift: float) -> np.ndarray:
    # torchvision's adjust_hue on uint8 tensors: to [0, 1] floats, RGB -> HSV, hue + shift mod 1, HSV -> RGB, back
    # to uint8 as convert_image_dtype does (x 255.999, truncated, so unshifted values come back exactly).
    rgb = video.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    chroma = v - rgb.min(axis=-1)
    s = np.divide(chroma, v, out=np.zeros_like(v), where=v > 0)
    safe = np.where(chroma > 0, chroma, 1.0)
    h = np.select([chroma == 0, v == r, v == g], [0.0, (g - b) / safe, 2.0 + (b - r) / safe], 4.0 + (r - g) / safe)
    h = np.mod(h / 6.0 + shift, 1.0) * 6.0
    sector = np.floor(h)
    f = h - sector
    sector = sector.astype(np.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Per sector, the (r, g, b) taken from (v, p, q, t).
    table = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])
    candidates = np.stack([v, p, q, t], axis=-1)
    out = np.take_along_axis(candidates, table[sector], axis=-1)
    return np.clip(out * 255.999, 0, 255).astype(np.uint8)


def color_jitter(video: np.ndarray, rng: np.random.Generator, *, brightness: float, contrast: float,
                 saturation: float, hue: float = 0.0) -> np.ndarray:
    """torchvision's ColorJitter with one draw per clip: the active ops in a random order, each at its own factor.

    brightness scales pixels by its factor; contrast blends with the clip's mean grey level; saturation blends with
    each pixel's grey (ITU-R 601-2 luma); hue rotates the hue (see `color_jitter_ranges` for the factor ranges).
    Every op saturates to [0, 255] and truncates to uint8, as torchvision does on uint8 tensors. The contrast grey
    level is the mean over the whole clip so every frame gets the same mapping; torchvision, applied to a (T, C, H,
    W) tensor, and SVT's SlowFast-style jitter take it per frame (they agree on a one-frame clip). SVT's own jitter
    has no hue, and its grey weights are applied to channels in BGR order to RGB frames, swapping red and blue.
    """
    _check_uint8_video(video)
    ranges = color_jitter_ranges(brightness, contrast, saturation, hue)
    for op in rng.permutation(len(COLOR_JITTER_OPS)):
        name = COLOR_JITTER_OPS[op]
        if name not in ranges:
            continue
        factor = float(rng.uniform(*ranges[name]))
        if name == "brightness":
            video = _lut(video, _blend(0.0, _LEVELS.astype(np.uint8), factor))
        elif name == "contrast":
            video = _lut(video, _blend(float(_grey(video).mean()), _LEVELS.astype(np.uint8), factor))
        elif name == "saturation":
            video = _blend(_grey(video)[..., None], video, factor)
        else:
            video = _shift_hue(video, factor)
    return video


def grayscale(video: np.ndarray) -> np.ndarray:
    """Each pixel's ITU-R 601-2 luma (PIL's "L" conversion), replicated to the 3 channels."""
    _check_uint8_video(video)
    return np.repeat(_grey(video)[..., None], 3, axis=-1)


def random_grayscale(video: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """`grayscale` of the whole clip with probability `p` (torchvision's RandomGrayscale, one draw per clip)."""
    _check_uint8_video(video)
    if rng.random() < p:
        return grayscale(video)
    return video


# ----------------------------------------------------------------------------------------------------------------
# Random erasing.

ERASING_MODES = ("pixel", "rand", "const")


def random_erasing(video: np.ndarray, rng: np.random.Generator, *, mean: Sequence[float], std: Sequence[float],
                   prob: float = 0.25, mode: str = "pixel", area: tuple[float, float] = (0.02, 1 / 3),
                   aspect: tuple[float, float] = (0.3, 1 / 0.3), max_count: int = 1) -> np.ndarray:
    """timm's RandomErasing as VideoMAE uses it (cube variant: the same boxes in every frame), on a uint8 clip.

    With probability `prob`, erases 1..`max_count` boxes (count uniform), each of area fraction uniform in `area`
    divided by the count and height/width ratio log-uniform in `aspect`, placed uniformly (up to 100 tries for a
    box strictly smaller than the frame). The reference erases the *normalised* float clip, filling with N(0, 1)
    values; vidjax keeps clips uint8 until the device normalises them with (`mean`, `std`) (values in [0, 1]
    units, those of the run's normalisation), so the fill here is that noise mapped back to pixels:
    `round(255 * (mean + std * z))`, z ~ N(0, 1), clipped to [0, 255]. After normalisation it is the reference's
    fill up to uint8 rounding and the clipping of the tails beyond the pixel range (e.g. ImageNet red: z outside
    [-2.1, 2.3]). Modes: "pixel" fresh noise for every pixel of every frame (as the reference, which draws per
    frame), "rand" one noise colour per box, "const" z = 0 (the mean colour).
    Must run last, after resampling (crops, RandAugment), so the noise is not smoothed.
    """
    _check_uint8_video(video)
    if mode not in ERASING_MODES:
        raise ValueError(f"random erasing mode must be one of {ERASING_MODES}, got {mode!r}")
    if max_count < 1:
        raise ValueError(f"random erasing max_count must be at least 1, got {max_count}")
    if rng.random() > prob:
        return video
    t, height, width, _ = video.shape
    mean_px = np.asarray(mean, np.float32) * 255.0
    std_px = np.asarray(std, np.float32) * 255.0
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 1 if max_count == 1 else int(rng.integers(1, max_count + 1))
    out = video.copy()
    for _ in range(count):
        for _ in range(100):
            target_area = rng.uniform(*area) * height * width / count
            ratio = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * ratio)))
            w = int(round(math.sqrt(target_area / ratio)))
            if w < width and h < height:
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                shape = {"pixel": (t, h, w, 3), "rand": (3,), "const": None}[mode]
                z = 0.0 if shape is None else rng.standard_normal(shape, dtype=np.float32)
                fill = np.clip(np.rint(mean_px + std_px * z), 0, 255).astype(np.uint8)
                out[:, top : top + h, left : left + w] = fill
                break
    return out


# ----------------------------------------------------------------------------------------------------------------
# Normalisation presets (applied on the device by vidjax.losses.normalize_video; here only the values).

PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # VideoMAE, VideoMamba (timm IMAGENET_DEFAULT_*)
    "rescale": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # x / 255 only
    "zero_centre": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]: ViViT (scenic zero_centering), HF VideoMAE processor
    "kinetics": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),  # SlowFast / TimeSformer DATA.MEAN / DATA.STD
}


def _three(name: str, value: float | Sequence[float]) -> tuple[float, float, float]:
    values = (float(value),) * 3 if np.isscalar(value) else tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"normalisation {name} must be one number or three (R, G, B), got {value!r}")
    return values


def resolve_normalization(preset: str | None = None, mean: float | Sequence[float] | None = None,
                          std: float | Sequence[float] | None = None
                          ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std), 3 values each in [0, 1] pixel units, from a `PRESETS` name or explicit `mean` and `std`."""
    if preset:
        if mean is not None or std is not None:
            raise ValueError(f"give a normalisation preset ({preset!r}) or explicit mean/std, not both")
        if preset not in PRESETS:
            raise ValueError(f"unknown normalisation preset {preset!r}; presets: {sorted(PRESETS)}, "
                             f"or give mean and std explicitly")
        return PRESETS[preset]
    if mean is None or std is None:
        raise ValueError(f"normalisation needs a preset (one of {sorted(PRESETS)}) or both mean and std")
    mean3, std3 = _three("mean", mean), _three("std", std)
    if min(std3) <= 0:
        raise ValueError(f"normalisation std must be positive, got {std3}")
    return mean3, std3


# ----------------------------------------------------------------------------------------------------------------
# Repeated augmentation.

def repeated_augment(video: np.ndarray, augment: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                     rng: np.random.Generator, num_samples: int | None = None) -> np.ndarray:
    """(k, T, h, w, 3): k independently augmented clips from one decode (VideoMAE's `num_sample`).

    `video` is either one clip (T, H, W, 3), augmented `num_samples` times (VideoMAE: the same frames, k different
    spatial augmentations), or k clips (k, T, H, W, 3) decoded from k temporal windows of one video, each augmented
    once. `augment(clip, rng)` must return clips of one fixed shape. Each sample gets its own generator, seeded from
    `rng`, so sample j does not depend on how many draws the others made, and the result is a function of `rng`'s
    state. The caller turns the k samples into k batch rows with the same label (VideoMAE's batch of B videos holds
    B * k clips), e.g. by flattening the leading axis after batching.
    """
    if video.ndim == 5:
        if num_samples is not None and num_samples != video.shape[0]:
            raise ValueError(f"num_samples={num_samples} but {video.shape[0]} clips were given")
        clips = list(video)
    else:
        _check_video(video)
        if num_samples is None or num_samples < 1:
            raise ValueError(f"repeating one clip needs num_samples >= 1, got {num_samples}")
        clips = [video] * num_samples
    generators = sample_generators(rng, len(clips))
    return np.stack([augment(clip, g) for clip, g in zip(clips, generators, strict=True)])


def sample_generators(rng: np.random.Generator, num_samples: int) -> list[np.random.Generator]:
    """One generator per repeated sample, each seeded from `rng` (one draw of `num_samples` seeds), so that sample
    j's augmentation does not depend on how many draws the others make."""
    return [np.random.default_rng(int(seed)) for seed in rng.integers(0, 2**63 - 1, size=num_samples)]
