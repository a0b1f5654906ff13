"""SVT's multi-view sampling: which frames each view of a clip takes, and the augmented views grouped by shape.

SVT (Self-supervised Video Transformer, Ranasinghe et al., CVPR 2022; kahnchana/svt) trains DINO-style on 2 global
and 8 local views of one clip window, which differ in where and how many frames they take as well as in their
crops. The recipe, from the reference's datasets/decoder.py `decode(temporal_aug=True)`, datasets/transform.py
`VideoDataAugmentationDINO` and utils/utils.py `MultiCropWrapper`:

  window   `num_frames * sampling_rate` frames (8 x 32) at a random start; a shorter video is the window itself.
  globals  with the window's frames numbered 0..L-1: global 1 spreads its frames evenly from 0 to L - 5, global 2
           from 5 to L (clamped to L - 1), so they lie at the window's two ends, `global_shift` (5) frames apart.
  locals   each spreads its frames over a random sub-window of 1/8 of the window, anywhere inside it.
  frames   every view has `num_frames` frames, or with the reference's DATA.RAND_FR (`ViewSpec.rand_fr`) the
           globals 4 and 8 and the locals 2, 2, 4, 4, 8, 8, 16, 16.
  spatial  per view: random resized crop (globals 224 px, area 0.4-1.0; locals 96 px, 0.05-0.4; bicubic), flip
           p 0.5, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, no hue) p 0.8, grayscale p 0.2;
           ImageNet mean/std normalisation on the device.
  model    views of one shape go through the backbone as one batch, in view order.

Everything is numpy and runs in the data workers; every random choice comes from the `np.random.Generator` passed
in, so the views are a function of (seed, element). A data source calls `view_frame_indices`, decodes
`frames_to_decode` of them, and `make_views`; the model step is built from `view_groups(spec)` alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vidjax.data import transforms

RAND_FR_GLOBAL_FRAMES = (4, 8)
RAND_FR_LOCAL_FRAMES = (2, 2, 4, 4, 8, 8, 16, 16)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """SVT's multi-view recipe; the defaults are the reference's 8x32, 224 px setting (module docstring).

    `global_frames` and `local_frames` give each view's frame count, None for `num_frames`; the number of local
    views is `len(local_frames)`. The window and the local sub-windows are in the video's frames at its own rate
    (the reference rescales the window by fps / 30 first, a no-op for 30 fps videos).
    """

    num_frames: int = 8
    sampling_rate: int = 32
    global_frames: tuple[int | None, int | None] = (None, None)
    local_frames: tuple[int | None, ...] = (None,) * 8
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    global_shift: int = 5
    local_fraction: int = 8
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.0
    grayscale_p: float = 0.2
    interpolation: str = "bicubic"
    normalization: str = "imagenet"  # a transforms.PRESETS name, applied on the device

    def __post_init__(self):
        if len(self.global_frames) != 2:
            raise ValueError(f"SVT's temporal scheme has exactly 2 global views (one ending at each end of the "
                             f"window), got global_frames={self.global_frames}")
        if self.num_frames < 1 or self.sampling_rate < 1:
            raise ValueError(f"num_frames and sampling_rate must be >= 1, got {self.num_frames} and "
                             f"{self.sampling_rate}")
        if any(n is not None and n < 1 for n in self.global_frames + self.local_frames):
            raise ValueError(f"view frame counts must be >= 1 (or None for num_frames), got global_frames="
                             f"{self.global_frames}, local_frames={self.local_frames}")
        if self.global_size < 1 or self.local_size < 1:
            raise ValueError(f"view sizes must be >= 1, got {self.global_size} and {self.local_size}")
        for name, (lo, hi) in (("global_scale", self.global_scale), ("local_scale", self.local_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be an area fraction range 0 < lo <= hi <= 1, got {(lo, hi)}")
        if self.global_shift < 0 or self.local_fraction < 1:
            raise ValueError(f"global_shift must be >= 0 and local_fraction >= 1, got {self.global_shift} and "
                             f"{self.local_fraction}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        transforms.color_jitter_ranges(self.brightness, self.contrast, self.saturation, self.hue)
        if self.normalization not in transforms.PRESETS:
            raise ValueError(f"normalization must be one of {sorted(transforms.PRESETS)}, got "
                             f"{self.normalization!r}")
        if self.interpolation not in transforms.INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {transforms.INTERPOLATIONS}, got {self.interpolation!r}")

    @classmethod
    def rand_fr(cls, **kwargs) -> ViewSpec:
        """The reference's DATA.RAND_FR frame counts: globals 4 and 8 frames, locals 2, 2, 4, 4, 8, 8, 16, 16."""
        return cls(global_frames=RAND_FR_GLOBAL_FRAMES, local_frames=RAND_FR_LOCAL_FRAMES, **kwargs)

    @property
    def num_global(self) -> int:
        return len(self.global_frames)

    @property
    def num_views(self) -> int:
        return len(self.global_frames) + len(self.local_frames)

    @property
    def window(self) -> int:
        """The clip window in frames, `num_frames * sampling_rate`."""
        return self.num_frames * self.sampling_rate

    @property
    def view_frames(self) -> tuple[int, ...]:
        """Each view's frame count, globals first."""
        return tuple(self.num_frames if n is None else n for n in self.global_frames + self.local_frames)

    def is_global(self, view: int) -> bool:
        return view < self.num_global

    def view_size(self, view: int) -> int:
        return self.global_size if self.is_global(view) else self.local_size


@dataclasses.dataclass(frozen=True)
class ViewGroup:
    """Views of one shape, batched together: `views` are their indices in the spec's view order (globals 0, 1)."""

    key: str
    num_frames: int
    size: int
    views: tuple[int, ...]
    is_global: tuple[bool, ...]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """The group's array shape (views, T, H, W, 3)."""
        return (len(self.views), self.num_frames, self.size, self.size, 3)


def view_groups(spec: ViewSpec) -> tuple[ViewGroup, ...]:
    """The groups of views of one shape, ordered by their first view; keys "views_{T}x{size}", e.g. "views_8x224".

    With the default spec: 2 views 8x224 (the globals), then 8 views 8x96; with `ViewSpec.rand_fr`: 4x224, 8x224,
    then 2x96, 4x96, 8x96, 16x96 of two views each, as the reference's `MultiCropWrapper(vary_fr=True)` batches
    them. Concatenating the groups' outputs in this order gives the views in spec order when each group's views are
    consecutive (true for both); otherwise `views` says where each output belongs.
    """
    members: dict[tuple[int, int], list[int]] = {}
    for view, frames in enumerate(spec.view_frames):
        members.setdefault((frames, spec.view_size(view)), []).append(view)
    return tuple(ViewGroup(key=f"views_{frames}x{size}", num_frames=frames, size=size, views=tuple(views),
                           is_global=tuple(spec.is_global(v) for v in views))
                 for (frames, size), views in members.items())


def _spread(first: float, last: float, count: int, limit: int) -> np.ndarray:
    """`count` indices spread evenly from `first` to `last`, clamped to [0, limit) and truncated (the reference's
    `temporal_sampling`: torch.linspace, clamp, .long()); the epsilon keeps exact integers from rounding down."""
    points = np.clip(np.linspace(first, last, count), 0, limit - 1)
    return np.floor(points + 1e-6).astype(np.int64)


def view_frame_indices(num_video_frames: int, spec: ViewSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """Each view's frame indices into the video (globals first), by SVT's temporal scheme (module docstring).

    The window of `spec.window` frames starts at a uniformly random frame, as `decode.sample_indices` places a
    training clip. A video shorter than the window is the window (as in the reference, which then decodes the whole
    video), so the globals still span it and the locals are 1/8 of it; `sample_indices` instead repeats the last
    frame to fill a short window, which here would leave most local views on that one frame. With the window's
    frames numbered 0..L-1, global 1 spreads its frames from 0 to L - `global_shift`, global 2 from `global_shift`
    to L; points outside the window (L, and those below 0 when L < 5) are clamped into it. Each local view spreads
    its frames over `L // local_fraction + 1` frames starting at a uniformly random frame, all inside the window.
    Indices are sorted within each view and may repeat (more frames than the span holds).
    """
    if num_video_frames < 1:
        raise ValueError(f"cannot sample views from a video with {num_video_frames} frames")
    length = min(spec.window, num_video_frames)
    start = int(rng.integers(0, num_video_frames - length + 1))
    frames = spec.view_frames
    shift = spec.global_shift
    relative = [_spread(0, length - shift, frames[0], length), _spread(shift, length, frames[1], length)]
    width = length // spec.local_fraction
    for count in frames[spec.num_global:]:
        first = int(rng.integers(0, length - width))  # the reference's randint(0, length - width - 1), inclusive
        relative.append(_spread(first, first + width, count, length))
    return [start + r for r in relative]


def frames_to_decode(indices: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted distinct frame indices that the views need: what to decode for `make_views(..., frame_ids=)`."""
    return np.unique(np.concatenate([np.asarray(i, np.int64) for i in indices]))


def augment_view(clip: np.ndarray, spec: ViewSpec, is_global: bool, rng: np.random.Generator) -> np.ndarray:
    """One view's spatial augmentation: crop and resize, flip, colour jitter (with `jitter_p`), grayscale."""
    size, scale = (spec.global_size, spec.global_scale) if is_global else (spec.local_size, spec.local_scale)
    clip = transforms.random_resized_crop(clip, size, rng, scale=scale, interpolation=spec.interpolation)
    clip = transforms.random_flip(clip, rng, spec.flip_p)
    if rng.random() < spec.jitter_p:
        clip = transforms.color_jitter(clip, rng, brightness=spec.brightness, contrast=spec.contrast,
                                       saturation=spec.saturation, hue=spec.hue)
    return transforms.random_grayscale(clip, rng, spec.grayscale_p)


def make_views(frames: np.ndarray, indices: Sequence[np.ndarray], spec: ViewSpec, rng: np.random.Generator, *,
               frame_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The augmented uint8 views, {group key: (n_views, T, size, size, 3)} in `view_groups(spec)` order.

    `frames` (K, H, W, 3) uint8 are the video's frames, all of them (frame i at row i), or those at `frame_ids`
    (sorted, distinct; e.g. `frames_to_decode(indices)`, to decode only what the views use). `indices` are the
    views' frame indices from `view_frame_indices`. Each view gets its own generator seeded from `rng`, so a view's
    augmentation does not depend on the draws of the views before it.
    """
    transforms._check_uint8_video(frames)
    if len(indices) != spec.num_views:
        raise ValueError(f"got frame indices for {len(indices)} views but the spec has {spec.num_views}")
    if frame_ids is None:
        frame_ids = np.arange(len(frames))
    frame_ids = np.asarray(frame_ids, np.int64)
    if len(frame_ids) != len(frames):
        raise ValueError(f"frame_ids names {len(frame_ids)} frames but {len(frames)} frames were given")
    seeds = rng.integers(0, 2**63 - 1, size=spec.num_views)
    views = []
    for view, (view_indices, seed) in enumerate(zip(indices, seeds, strict=True)):
        view_indices = np.asarray(view_indices, np.int64)
        if len(view_indices) != spec.view_frames[view]:
            raise ValueError(f"view {view} has {len(view_indices)} frame indices but the spec gives it "
                             f"{spec.view_frames[view]} frames")
        rows = np.minimum(np.searchsorted(frame_ids, view_indices), len(frame_ids) - 1)
        missing = view_indices[frame_ids[rows] != view_indices]
        if missing.size:
            raise ValueError(f"view {view} needs frames {missing.tolist()}, which are not among the given frames; "
                             f"decode frames_to_decode(indices) and pass them with frame_ids")
        views.append(augment_view(frames[rows], spec, spec.is_global(view), np.random.default_rng(int(seed))))
    return {group.key: np.stack([views[v] for v in group.views]) for group in view_groups(spec)}
