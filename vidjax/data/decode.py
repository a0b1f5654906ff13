"""Video decoding with PyAV: sample a clip's frame indices, seek to it, decode only up to its last frame.

A clip is `num_frames` frames `sampling_rate` frames apart, in units of the stream's nominal frame rate: frame
index k means the frame on screen at time k / fps after the stream start. Decoded frames are placed on that grid
by their timestamps, so variable-frame-rate files and seeks that land on an earlier keyframe give the same frames
as decoding the whole file from the start would.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import io
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction

import av
import numpy as np
from av.stream import Discard, Disposition
from av.video.reformatter import VideoReformatter
from PIL import Image

from vidjax.data import transforms

logger = logging.getLogger(__name__)

VideoSource = str | os.PathLike | bytes


class VideoDecodeError(ValueError):
    """A video is missing, unreadable, corrupt or has no video stream (`path` names it, `reason` says what)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")

    def __reduce__(self):
        # grain worker processes pickle exceptions back to the parent; the default
        # reduce would call cls(message) and fail on the missing `reason` argument.
        return type(self), (self.path, self.reason)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe` reads from a video's headers and first frame.

    `num_frames` is the container's frame count, or duration * fps where the container stores none (WebM/MKV);
    width and height are the displayed size, after `rotation` (degrees counter-clockwise, as PyAV's
    `VideoFrame.rotation`) is applied.
    """

    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    rotation: int
    codec: str
    container: str


@dataclasses.dataclass(frozen=True)
class Clip:
    """A decoded clip: uint8 RGB `frames` (T, H, W, 3), their frame `indices` (T,) at `fps`, and the time span
    [`start_s`, `end_s`) in seconds from the stream start that the sampled frames cover (first frame's time to
    the last frame's time plus one frame period), e.g. for labels from annotated time spans. `num_decoded`
    counts the frames the decoder produced for it, the clip's cost (benchmarks and tests read it)."""

    frames: np.ndarray
    indices: np.ndarray
    fps: float
    start_s: float
    end_s: float
    num_decoded: int


def sample_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    rng: np.random.Generator | None,
    *,
    num_windows: int = 1,
    window_index: int = 0,
) -> np.ndarray:
    """Indices of `num_frames` frames spaced `sampling_rate` apart, in [0, num_video_frames).

    `sampling_rate` 0 spreads the frames over the whole range instead (TSN's segments, for clips that stand for a
    whole video or window, such as a caption's): the range is cut into `num_frames` equal segments and each frame
    is a random one of its segment with `rng`, else the segment's middle one (every window then is the same).

    The frames come from a window of `num_frames * sampling_rate` frames. With `rng` (training) the window
    starts at a uniformly random frame. Without it (testing) it is the `window_index`-th of `num_windows`
    evenly spaced windows: one window is centred; several span the video, the first starting at frame 0 and
    the last ending at the last frame (VideoMAE's and SlowFast's multi-view test sampling). A video shorter
    than the window starts at frame 0 and its indices are clamped to the last frame, so the last frame repeats
    to fill the clip.
    """
    if num_video_frames < 1:
        raise ValueError(f"cannot sample frames from a video with {num_video_frames} frames")
    if num_frames < 1 or sampling_rate < 0:
        raise ValueError(f"num_frames must be >= 1 and sampling_rate >= 0 (0: spread over the video), got "
                         f"{num_frames} and {sampling_rate}")
    if not 0 <= window_index < num_windows:
        raise ValueError(f"window_index must be in [0, num_windows={num_windows}), got {window_index}")
    if sampling_rate == 0:
        edges = np.arange(num_frames + 1) * (num_video_frames / num_frames)
        offsets = rng.random(num_frames) if rng is not None else np.full(num_frames, 0.5)
        indices = np.floor(edges[:-1] + offsets * (edges[1:] - edges[:-1])).astype(np.int64)
        return np.minimum(indices, num_video_frames - 1)
    max_start = num_video_frames - num_frames * sampling_rate
    if max_start <= 0:
        start = 0
    elif rng is not None:
        start = int(rng.integers(0, max_start + 1))
    elif num_windows == 1:
        start = max_start // 2
    else:
        start = round(window_index * max_start / (num_windows - 1))
    indices = start + np.arange(num_frames, dtype=np.int64) * sampling_rate
    return np.minimum(indices, num_video_frames - 1)


def decode_clip(src: VideoSource, num_frames: int, sampling_rate: int, rng: np.random.Generator | None = None,
                **options) -> np.ndarray:
    """The uint8 RGB frames (num_frames, H, W, 3) of `read_clip(...)`; see there for the keyword options."""
    return read_clip(src, num_frames, sampling_rate, rng, **options).frames


def read_clip(
    src: VideoSource,
    num_frames: int,
    sampling_rate: int,
    rng: np.random.Generator | None = None,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    num_windows: int = 1,
    window_index: int = 0,
    short_side: int | None = None,
    threads: int = 1,
    name: str | None = None,
    select: Callable[[int], np.ndarray] | None = None,
    skip_nonref: bool = True,
    crops: Callable[[int, int], Sequence[transforms.Crop]] | None = None,
) -> Clip:
    """Decodes a clip sampled as in `sample_indices` from a video file path or its encoded bytes.

    Frames are sampled from [start_s, end_s) seconds of the video when given (None or NaN: the start or end of
    the video); a range past the video's end is clamped to its last frame. The decoder seeks to the keyframe
    before the first sampled frame and stops after the last one, so the cost is the clip plus at most one
    keyframe interval, whatever the video's length. Frames are rotated upright when the stream carries display
    rotation (portrait phone videos), and resized in the colour conversion so the shorter side is `short_side`
    (bilinear, same output size as `transforms.resize_short_side`) when given. Videos shorter than the window
    repeat their last frame (see `sample_indices`). A header that promises more frames than decode
    (truncated files) is handled by resampling against the frames that do decode, with a warning.

    `threads` is FFmpeg's decoding threads for this call: keep 1 inside grain workers, where the workers
    already occupy the cores; raise it only when decoding in a single process with idle cores.
    `name` labels a bytes source in errors and warnings (e.g. its record key).
    `select(n)`, when given, replaces `sample_indices`: it gets the number of frames n in [start_s, end_s) and returns
    the sorted indices (0..n-1) to decode, e.g. the frames of SVT's views (`vidjax.data.views`); num_frames,
    sampling_rate, rng and the windows are then unused.
    `skip_nonref`: leave undecoded the non-reference frames (most B-frames) that no sampled frame is, for
    H.264, HEVC and MPEG-2/4 (same frames, fewer decoded); False decodes every frame from the keyframe on.
    `crops(height, width)`, when given, gets the size of the frames as resized to `short_side` (upright) and returns
    k `transforms.Crop`s: `frames` is then (k, T, out_height, out_width, 3), clip j cut by crop j. The box is cut
    from the decoded picture and resampled once, straight to the output size, in the colour conversion (crop first:
    only the box's pixels are converted, with no intermediate resized frame); the flip is folded into the cut.
    Upright 8-bit 4:2:0 frames take that path; others get `transforms.apply_crop` of the resized frames.
    Raises VideoDecodeError for missing, unreadable or corrupt videos and files without a video stream.
    """
    sample = (num_frames, sampling_rate, rng, num_windows, window_index, select)
    convert = (lambda chosen: _to_rgb(chosen, short_side)) if crops is None else (
        lambda chosen: _cropped_rgb(chosen, short_side, crops))
    frames, timing = _read_window(src, name, threads, skip_nonref, sample, start_s, end_s, convert)
    return Clip(frames, **timing)


def _read_window(src: VideoSource, name: str | None, threads: int, skip_nonref: bool, sample: tuple,
                 start_s: float | None, end_s: float | None, convert: Callable[[list[av.VideoFrame]], object]):
    """The decode `read_clip` and `read_planes` share: the frames `sample` (`_sample`'s arguments after the range)
    picks in [start_s, end_s), decoded with the skip plan and handed to `convert`; returns what `convert` gave and
    the `Clip` fields that time it (indices, fps, start_s, end_s, num_decoded)."""
    label = _label(src, name)
    with _video(src, label, threads) as (container, stream, meta):
        indices = _sample(meta.num_frames, meta.fps, start_s, end_s, *sample, label)
        reader = _FrameReader(container, stream, meta, label, skip_nonref)
        chosen, indices = _frames_of_window(
            reader, indices, lambda count: _sample(count, meta.fps, start_s, end_s, *sample, label))
        converted = convert(chosen)
    fps = float(meta.fps)
    return converted, dict(indices=indices, fps=fps, start_s=int(indices[0]) / fps,
                           end_s=(int(indices[-1]) + 1) / fps, num_decoded=reader.num_decoded)


@dataclasses.dataclass(frozen=True)
class PlaneClip:
    """A training clip for the device-pixel path (`read_planes`): the decoded YUV 4:2:0 planes of the region that
    holds every crop of the clip, cut from the upright picture and placed at the top-left of a fixed canvas, `y`
    (T, H, W) and `u`, `v` (T, H / 2, W / 2) uint8 (zeros beyond the region); each crop's `box` (k, 4) float32,
    (top, left, bottom, right) in the canvas's pixels, and `flip` (k,) bool; the region's `valid` (rows, columns)
    and its `colour` (index of `vidjax.ops.pixels.MATRIX_NAMES`, full range) (2,) int32. The device turns these
    into the crops `read_clip(crops=...)` gives (`vidjax.ops.pixels.crops_from_planes`). The rest as `Clip`."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    box: np.ndarray
    flip: np.ndarray
    valid: np.ndarray
    colour: np.ndarray
    indices: np.ndarray
    fps: float
    start_s: float
    end_s: float
    num_decoded: int
    scaled: bool = False  # the region did not fit the canvas and was downscaled on the host first


def read_planes(src: VideoSource, num_frames: int, sampling_rate: int, rng: np.random.Generator | None = None, *,
                canvas: tuple[int, int], crops: Callable[[int, int], Sequence[transforms.Crop]],
                start_s: float | None = None, end_s: float | None = None, short_side: int | None = None,
                threads: int = 1, name: str | None = None, skip_nonref: bool = True) -> PlaneClip:
    """`read_clip(..., crops=crops)` for the device-pixel path: the same frames, the same crops drawn, but the
    planes of the region they cover sent as decoded instead of converted and resampled here (`PlaneClip`).

    `canvas` (rows, columns), both even, is the planes' fixed size. A region larger than it (a video of higher
    resolution than the canvas was sized for, or k crops spread over a wide frame) is downscaled on the host to
    fit (PIL's antialiased bilinear resize of each plane), which adds one resample; `PlaneClip.scaled` says so.
    Frames not in 8-bit 4:2:0 are converted to it by libswscale, and a colour matrix the device does not convert
    (`colour_of`) is sent as BT.709.
    """
    sample = (num_frames, sampling_rate, rng, 1, 0, None)
    (*planes, scaled), timing = _read_window(src, name, threads, skip_nonref, sample, start_s, end_s,
                                             lambda chosen: _cropped_planes(chosen, short_side, crops, canvas))
    return PlaneClip(*planes, scaled=scaled, **timing)


def _device_colour(frame: av.VideoFrame) -> tuple[int, bool]:
    """(index in `vidjax.ops.pixels.MATRIX_NAMES`, full range) of `frame`; BT.709 for a matrix without a device
    conversion."""
    try:
        matrix, full = colour_of(frame)
    except ValueError:
        matrix, full = "bt709", int(frame.color_range) == 2
    return tuple(_DEVICE_MATRICES_ORDER).index(matrix), full


def _cropped_planes(frames: list[av.VideoFrame], short_side: int | None,
                    make_crops: Callable[[int, int], Sequence[transforms.Crop]], canvas: tuple[int, int]) -> tuple:
    """`PlaneClip`'s planes, boxes, flips, valid size, colour and `scaled` for `read_planes`."""
    frames = [f if f.format.name in _CROP_FIRST_FORMATS else f.reformat(format="yuv420p") for f in frames]
    first = frames[0]
    return cut_planes([id(f) for f in frames], lambda t: upright_planes(frames[t]), (first.height, first.width),
                      round(_rotation(first) / 90) % 4, _device_colour(first), short_side, make_crops, canvas)


def cut_planes(keys: Sequence[object], planes_of: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]],
               coded: tuple[int, int], quarter_turns: int, colour: tuple[int, bool], short_side: int | None,
               make_crops: Callable[[int, int], Sequence[transforms.Crop]], canvas: tuple[int, int]) -> tuple:
    """The device-pixel clip (`PlaneClip`'s planes, boxes, flips, valid size, colour and `scaled`) of a clip's
    decoded 8-bit 4:2:0 frames, whichever decoder gave them (PyAV here, NVDEC in `vidjax.data.nvdec`).

    Frame t is `planes_of(t)`, its upright (y, u, v) planes; frames with equal `keys[t]` are the same picture (a
    frame repeated to fill a short video), cut once. `coded` is the decoded (height, width) before the display
    rotation of `quarter_turns` counter-clockwise turns, `colour` the (index in `vidjax.ops.pixels.MATRIX_NAMES`,
    full range) the device converts with; `make_crops` and `canvas` as `read_planes` takes them."""
    rows, cols = canvas
    if rows % 2 or cols % 2 or rows <= 0 or cols <= 0:
        raise ValueError(f"canvas={canvas}: rows and columns must be positive and even")
    height, width = _shown_size(*coded, quarter_turns, short_side)
    crops = list(make_crops(height, width))
    if len({(crop.out_height, crop.out_width) for crop in crops}) != 1:
        raise ValueError(f"crops must all have one output size, got {crops}")
    picture_h, picture_w = coded[::-1] if quarter_turns % 2 else coded
    regions = [CropRegion.of(picture_h, picture_w, crop, height, width) for crop in crops]
    whole = CropRegion(min(r.y0 for r in regions), max(r.y1 for r in regions), min(r.x0 for r in regions),
                       max(r.x1 for r in regions), (0.0, 0.0, 0.0, 0.0))
    region_h, region_w = whole.y1 - whole.y0, whole.x1 - whole.x0
    scale = min(1.0, rows / region_h, cols / region_w)
    out_h, out_w = (region_h, region_w) if scale == 1 else (min(rows, round(region_h * scale)),
                                                            min(cols, round(region_w * scale)))
    sy, sx = out_h / region_h, out_w / region_w
    box = np.array([[(r.box[1] + r.y0 - whole.y0) * sy, (r.box[0] + r.x0 - whole.x0) * sx,
                     (r.box[3] + r.y0 - whole.y0) * sy, (r.box[2] + r.x0 - whole.x0) * sx] for r in regions],
                   np.float32)
    y = np.zeros((len(keys), rows, cols), np.uint8)
    u, v = np.zeros((2, len(keys), rows // 2, cols // 2), np.uint8)
    chroma_h, chroma_w = (out_h + 1) // 2, (out_w + 1) // 2
    done: dict[object, int] = {}
    for t, key in enumerate(keys):
        if key in done:  # a frame repeated to fill a short video: cut once
            y[t], u[t], v[t] = y[done[key]], u[done[key]], v[done[key]]
            continue
        done[key] = t
        planes = whole.planes(*planes_of(t))
        if scale < 1:
            planes = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize(size, Image.Resampling.BILINEAR))
                      for p, size in zip(planes, [(out_w, out_h), (chroma_w, chroma_h), (chroma_w, chroma_h)],
                                         strict=True)]
        y[t, :out_h, :out_w] = planes[0]
        u[t, :chroma_h, :chroma_w], v[t, :chroma_h, :chroma_w] = planes[1], planes[2]
    return (y, u, v, box, np.array([c.flip for c in crops], bool), np.array([out_h, out_w], np.int32),
            np.array(colour, np.int32), scale < 1)


def read_clips(src: VideoSource, num_frames: int, sampling_rate: int, num_clips: int, *,
               start_s: float | None = None, end_s: float | None = None, short_side: int | None = None,
               threads: int = 1, name: str | None = None, skip_nonref: bool = True) -> Clip:
    """The `num_clips` evenly spaced test clips of a video: `frames` (num_clips, T, H, W, 3) and `indices`
    (num_clips, T), clip i the one `read_clip(..., num_windows=num_clips, window_index=i)` gives, `start_s` that of
    the first and `end_s` that of the last. One open, and windows that overlap (5 test clips of 16 x 4 frames on a
    10 s video) are decoded in one pass over their union: the frames they share, and the reference frames back to a
    keyframe, are decoded and converted once instead of once per window (`_window_groups`: a group spans at most
    `_SEEK_GAP_S` seconds and holds at most `_GROUP_BYTES` of decoded frames); windows apart are reached by seeking.
    A cut or corrupt file reads each window of a group alone, exactly as `read_clip` would. Raises VideoDecodeError
    as `read_clip` does."""
    label = _label(src, name)
    with _video(src, label, threads) as (container, stream, meta):
        def window(i: int, count: int) -> np.ndarray:
            return _sample(count, meta.fps, start_s, end_s, num_frames, sampling_rate, None, num_clips, i, None, label)

        windows = [window(i, meta.num_frames) for i in range(num_clips)]
        reader = _FrameReader(container, stream, meta, label, skip_nonref)
        chosen: list[list[av.VideoFrame]] = [[] for _ in windows]
        rewind = False
        for group in _window_groups(windows, meta.fps, stream.width * stream.height * 3):
            union = sorted({int(i) for w in group for i in windows[w]})
            try:
                frames, _ = reader.frames_at(union, rewind=rewind)
            except VideoDecodeError:
                frames = None  # the error, if it is one, comes again below from the window that meets it
            rewind = True
            if frames is None:
                for w in group:
                    chosen[w], windows[w] = _frames_of_window(reader, windows[w],
                                                              lambda count, w=w: window(w, count), rewind=True)
                continue
            by_index = dict(zip(union, frames, strict=True))
            for w in group:
                chosen[w] = [by_index[int(i)] for i in windows[w]]
        rgb = _to_rgb([frame for clip in chosen for frame in clip], short_side)  # a shared frame converted once
    fps = float(meta.fps)
    indices = np.stack(windows)
    return Clip(frames=rgb.reshape(num_clips, num_frames, *rgb.shape[1:]), indices=indices, fps=fps,
                start_s=int(indices[0, 0]) / fps, end_s=(int(indices[-1, -1]) + 1) / fps,
                num_decoded=reader.num_decoded)


# `read_clips` decodes a group of windows in one pass while its decoded frames (at most 3 bytes a pixel) fit in this.
_GROUP_BYTES = 256 << 20


def _window_groups(windows: Sequence[np.ndarray], fps: Fraction, frame_bytes: int) -> list[list[int]]:
    """Consecutive windows (by position in `windows`, sorted by start) grouped while each overlaps or adjoins the
    group so far (the frames between two windows apart are not worth decoding: a seek to the later one's keyframe
    costs at most that), the group spans at most `_SEEK_GAP_S` seconds and its distinct frames take at most
    `_GROUP_BYTES`; a window alone always makes a group."""
    groups: list[list[int]] = []
    first = last = 0
    distinct: set[int] = set()
    for w, indices in enumerate(windows):
        grown = distinct | {int(i) for i in indices}
        if (groups and int(indices.min()) <= last + 1 and int(indices.max()) - first <= _SEEK_GAP_S * fps
                and len(grown) * frame_bytes <= _GROUP_BYTES):
            groups[-1].append(w)
            distinct, last = grown, max(last, int(indices.max()))
        else:
            groups.append([w])
            first, last, distinct = int(indices.min()), int(indices.max()), {int(i) for i in indices}
    return groups


def _frames_of_window(reader: _FrameReader, indices: np.ndarray, resample: Callable[[int], np.ndarray], *,
                      rewind: bool = False) -> tuple[list[av.VideoFrame], np.ndarray]:
    """(the decoded frames at `indices`, the indices), or, where the stream ends before the last index (a header
    that overstates the frame count), those of `resample(frames that do decode)` with a warning."""
    chosen, covered = reader.frames_at(indices, rewind=rewind)
    if chosen is not None:
        return chosen, indices
    meta, label = reader.meta, reader.label
    if covered == 0:
        raise VideoDecodeError(label, f"expected {meta.num_frames} frames but none decode")
    # Containers can overstate the frame count (truncated downloads, bad muxers, durations that include other
    # streams); resample against the frames that really decode instead of failing.
    log = logger.warning if meta.count_from_header else logger.debug
    log("video %s: %s %d frames but only %d decode; sampling from those", label,
        "header lists" if meta.count_from_header else "duration suggests", meta.num_frames, covered)
    indices = resample(covered)
    chosen, _ = reader.frames_at(indices, rewind=True)
    if chosen is None:
        raise VideoDecodeError(label, "decoded a different number of frames on a second pass")
    return chosen, indices


@contextlib.contextmanager
def frames_on_grid(src: VideoSource, *, name: str | None = None,
                   threads: int = 1) -> Iterator[tuple[Fraction, Iterator[av.VideoFrame]]]:
    """(the stream's frame rate, every frame index 0, 1, ... of the video as `read_clip` shows it): one decoded
    frame per index, in order, a frame repeated where it stays on screen for several periods and passed over where
    another replaces it within one (`_FrameReader.on_grid`), decoded once from the start. For writing a video anew
    on the grid its indices mean (`vidjax.data.pack --reencode_short_side`): a clip sampled at given indices then
    shows the same moments from either. Raises VideoDecodeError as `read_clip` does, also while iterating."""
    label = _label(src, name)
    with _video(src, label, threads) as (container, stream, meta):
        reader = _FrameReader(container, stream, meta, label)
        yield meta.fps, (frame for _, frame in reader.on_grid())


# `read_windows` seeks over a gap between windows longer than this, and decodes through a shorter one.
_SEEK_GAP_S = 10


def read_windows(src: VideoSource, spans: Sequence[tuple[float, float]], num_frames: int, sampling_rate: int, *,
                 num_clips: int = 1, short_side: int | None = None, name: str | None = None,
                 threads: int = 1, skip_nonref: bool = True) -> Iterator[Clip]:
    """A `Clip` of each [start_s, end_s) span of `spans` in turn: uint8 RGB `frames` (num_clips, T, H, W, 3) and
    `indices` (num_clips, T), as `read_clip` (test sampling, `num_windows=num_clips`) would give each, from one pass
    over the file: sliding windows over a long video. `num_decoded` counts the frames decoded so far in the pass.

    The decoder seeks to the keyframe before the first span's first frame (and over gaps of more than
    `_SEEK_GAP_S` seconds between spans), then decodes forward, with `skip_nonref` (and a codec in
    `_SKIP_NONREF_CODECS`) only the frames the spans sample and the reference frames they depend on
    (`_FrameReader.picked`: sparse windows, or sampling_rate > 1, decode a fraction of the frames), else every
    frame; where that plan does not hold (packets without timestamps, frames out of order, corrupt data) the rest
    of the run of spans decodes every frame, with the same frames. It keeps only the decoded frames that a span not
    yet given still needs, so memory stays that of one span's frames (plus the overlap with the next) whatever the
    video's length. Spans must start in non-decreasing order. Indices past the frames that really decode (a header
    that overstates the length) take the last frame that does. Raises VideoDecodeError as `read_clip` does, also
    while iterating."""
    label = _label(src, name)
    if not spans:
        return
    with _video(src, label, threads) as (container, stream, meta):
        plans = [np.stack([_sample(meta.num_frames, meta.fps, start, end, num_frames, sampling_rate, None, num_clips,
                                   i, None, label) for i in range(num_clips)]) for start, end in spans]
        reader = _FrameReader(container, stream, meta, label, skip_nonref)
        fps = float(meta.fps)
        for number, run in enumerate(_runs(plans, meta.fps)):
            for n, chosen in _windows_of_run(reader, plans, run, rewind=number > 0):
                indices = plans[n]
                rgb = _to_rgb(chosen, short_side)
                yield Clip(frames=rgb.reshape(num_clips, num_frames, *rgb.shape[1:]), indices=indices, fps=fps,
                           start_s=int(indices.min()) / fps, end_s=(int(indices.max()) + 1) / fps,
                           num_decoded=reader.num_decoded)


def _runs(plans: Sequence[np.ndarray], fps: Fraction) -> list[list[int]]:
    """The spans (by number) in runs that one forward pass decodes: a span starting more than `_SEEK_GAP_S` seconds
    after the last frame of the spans before it starts a run of its own, reached by a seek."""
    runs: list[list[int]] = []
    top = None
    for n, indices in enumerate(plans):
        if top is None or int(indices.min()) - top > _SEEK_GAP_S * fps:
            runs.append([])
        runs[-1].append(n)
        top = max(top if top is not None else 0, int(indices.max()))
    return runs


def _windows_of_run(reader: _FrameReader, plans: Sequence[np.ndarray], run: list[int],
                    rewind: bool) -> Iterator[tuple[int, list[av.VideoFrame]]]:
    """(n, the decoded frames of span n's indices, flattened) for each span n of `run` in turn, from one forward
    pass: `reader.picked` where it may skip frames, else (or from where its plan fails) every frame on the grid."""
    done = 0
    if reader.skip_nonref:
        wanted = sorted({int(i) for n in run for i in plans[n].ravel()})
        try:
            for item in _spans_of(reader.picked(wanted, rewind), plans, run, reader.label):
                yield item
                done += 1
            return
        except (_NoPlan, _SeekMissed, av.FFmpegError):
            pass  # decode the rest of the run frame by frame, which meets a real error again and names it
    if done < len(run):
        grid = _grid_from(reader, int(plans[run[done]].min()), rewind=rewind or reader.skip_nonref)
        yield from _spans_of(grid, plans, run[done:], reader.label)


def _spans_of(frames: Iterator[tuple[int, av.VideoFrame]], plans: Sequence[np.ndarray], run: list[int],
              label: str) -> Iterator[tuple[int, list[av.VideoFrame]]]:
    """`_windows_of_run` from (index, frame) pairs in increasing index order that cover the run's indices (an index
    missing between two given is not one of them): span n is given once the pairs reach its last index, and a frame
    is kept while a span not yet given needs it. Indices past the last pair take its frame."""
    tops = [int(plans[n].max()) for n in run]
    needed = {int(i) for n in run for i in plans[n].ravel()}
    kept: dict[int, av.VideoFrame] = {}
    last: tuple[int, av.VideoFrame] | None = None
    pos = 0

    def span(pos: int) -> tuple[int, list[av.VideoFrame]]:
        n = run[pos]
        return n, [kept[int(i)] if int(i) in kept else last[1] for i in plans[n].ravel()]

    for index, frame in frames:
        last = (index, frame)
        if index in needed:
            kept[index] = frame
        while pos < len(run) and index >= tops[pos]:
            yield span(pos)
            pos += 1
            if pos < len(run):
                first_needed = int(plans[run[pos]].min())
                kept = {k: f for k, f in kept.items() if k >= first_needed}
        if pos == len(run):
            return
    if last is None:
        raise VideoDecodeError(label, "video stream has no decodable frames")
    while pos < len(run):  # the stream ended before these spans' last indices: they take its last frame
        yield span(pos)
        pos += 1


def _grid_from(reader: _FrameReader, first: int, rewind: bool = False) -> Iterator[tuple[int, av.VideoFrame]]:
    """`reader.on_grid` from index `first`: after a seek to the keyframe before it where one lands in time, else
    decoding from the start (`rewind`: the stream was read before, so seek back to it even for index 0)."""
    if first == 0 and rewind:
        reader._rewind()
    if first > 0:
        try:
            reader._seek_before(first)
            grid = reader.on_grid(first, seeked=True)
            head = next(grid, None)
        except (_SeekMissed, av.FFmpegError):
            reader._rewind()
        else:
            if head is not None:
                yield head
            yield from grid
            return
    yield from reader.on_grid(0)


def upright_rgb(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """`frame` as uint8 RGB shown upright (its display rotation applied) at `height` x `width`: resized (bilinear)
    in the colour conversion at the coded orientation, then rotated."""
    quarter_turns = round(_rotation(frame) / 90) % 4
    coded_w, coded_h = (height, width) if quarter_turns % 2 else (width, height)
    kwargs = {}
    if (coded_w, coded_h) != (frame.width, frame.height):
        kwargs = {"width": coded_w, "height": coded_h, "interpolation": "BILINEAR"}
    rgb = frame.to_ndarray(format="rgb24", **kwargs)
    return np.rot90(rgb, quarter_turns) if quarter_turns else rgb


def probe(src: VideoSource, *, name: str | None = None) -> VideoInfo:
    """Reads a video's frame count, rate, duration, displayed size, rotation, codec and container.

    Decodes only the first frame (for the rotation, and to check that the stream decodes at all).
    Raises VideoDecodeError like `decode_clip`.
    """
    with _first_frame(src, _label(src, name)) as (container, stream, meta, first):
        rotation = _rotation(first)
        width, height = (first.height, first.width) if rotation % 180 else (first.width, first.height)
        return VideoInfo(
            num_frames=meta.num_frames, fps=float(meta.fps), duration_s=float(meta.duration_s), width=width,
            height=height, rotation=rotation, codec=stream.codec_context.name, container=container.format.name,
        )


@contextlib.contextmanager
def _first_frame(src: VideoSource, label: str) -> Iterator[tuple[av.container.InputContainer,
                                                                  av.video.stream.VideoStream, _StreamMeta,
                                                                  av.VideoFrame]]:
    """The open container, its video stream, the stream's metadata and its first decoded frame (`probe`,
    `first_picture`); VideoDecodeError where that frame does not decode."""
    with _open(src, label) as container:
        stream = _video_stream(container, label)
        meta = _stream_meta(container, stream, label)
        try:
            first = next(iter(container.decode(stream)), None)
        except av.FFmpegError as e:
            raise VideoDecodeError(label, f"corrupt data before the first frame ({ffmpeg_reason(e)})") from e
        if first is None:
            raise VideoDecodeError(label, "video stream has no decodable frames")
        yield container, stream, meta, first


@dataclasses.dataclass(frozen=True)
class FirstPicture:
    """What a decoder other than PyAV (`vidjax.data.nvdec`) needs of a stream, read with PyAV from its headers and
    first frame (`first_picture`): its frame count and rate (`_StreamMeta`'s), codec, the decoded picture's `coded`
    (height, width) before the display rotation of `quarter_turns` counter-clockwise turns, whether it is 8-bit
    4:2:0 (`planar_420`), and the (index in `vidjax.ops.pixels.MATRIX_NAMES`, full range) the device converts it
    with (`colour`)."""

    num_frames: int
    fps: Fraction
    codec: str
    container: str  # FFmpeg's demuxer names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    coded: tuple[int, int]
    quarter_turns: int
    planar_420: bool
    colour: tuple[int, bool]


def first_picture(src: VideoSource, *, name: str | None = None) -> FirstPicture:
    """`FirstPicture` of `src`: one open and the first frame decoded, as `probe`. Raises VideoDecodeError as it."""
    with _first_frame(src, _label(src, name)) as (container, stream, meta, first):
        return FirstPicture(num_frames=meta.num_frames, fps=meta.fps, codec=stream.codec_context.name,
                            container=container.format.name, coded=(first.height, first.width),
                            quarter_turns=round(_rotation(first) / 90) % 4,
                            planar_420=first.format.name in _CROP_FIRST_FORMATS, colour=_device_colour(first))


def sample_frames(num_video_frames: int, fps: Fraction, num_frames: int, sampling_rate: int,
                  rng: np.random.Generator | None, *, start_s: float | None = None, end_s: float | None = None,
                  name: str = "") -> np.ndarray:
    """The frame indices `read_clip` decodes for one clip of a stream of `num_video_frames` frames at `fps`: its
    `sample_indices` within [start_s, end_s), with the same draws from `rng` (a decoder other than PyAV samples
    the same frames with it)."""
    return _sample(num_video_frames, fps, start_s, end_s, num_frames, sampling_rate, rng, 1, 0, None, name)


@dataclasses.dataclass(frozen=True)
class _StreamMeta:
    fps: Fraction
    time_base: Fraction
    start: Fraction  # stream start time in seconds: frame index 0 is shown from here
    num_frames: int
    count_from_header: bool
    duration_s: Fraction


def _label(src: VideoSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, bytes | bytearray | memoryview):
        return f"<{len(src)} bytes in memory>"
    return os.fspath(src)


# Opening a video, FFmpeg's avformat_find_stream_info decodes its first frames (for H.264 up to 7, to guess the reorder
# delay), about 4 CPU ms of a 640x360 training clip's 50, and decodes them again in every clip that starts there.
# `_open` first reads only the headers (decoders told to skip every frame, no packets analysed) and keeps that
# container where the headers say all the decoder and `_stream_meta` need: the mp4/mov family (frame count, rate,
# durations and edit lists in the index; not fragmented files, whose index is empty), with codecs whose decoders take
# their reorder delay from the stream headers: HEVC, VP8/9, AV1, MPEG-1/2/4 and MJPEG always, H.264 when its SPS gives
# a delay (bitstream restrictions) or its profile has no B-frames. Any other file is opened again with the full probe:
# an H.264 stream without the delay in its SPS would otherwise drop its first reordered frames after each seek.
_HEADER_ONLY = {"options": {"skip_frame": "all"}, "container_options": {"analyzeduration": "1"}}
_HEADER_FORMATS = frozenset({"mov", "mp4"})
_HEADER_CODECS = frozenset({"hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg"})
_NO_B_FRAME_PROFILES = frozenset({"Baseline", "Constrained Baseline"})


def _open(src: VideoSource, label: str) -> av.container.InputContainer:
    """The open container, from its headers alone where they suffice (see `_HEADER_ONLY`), else fully probed."""
    container = _open_with(src, label, _HEADER_ONLY)
    try:
        suffice = _headers_suffice(container)
    except BaseException:
        container.close()
        raise
    if suffice:
        return container
    container.close()
    return _open_with(src, label, {})


def _headers_suffice(container: av.container.InputContainer) -> bool:
    """Whether `container`, opened with `_HEADER_ONLY`, holds all the decoder and `_stream_meta` need."""
    if not _HEADER_FORMATS & set(container.format.name.split(",")):
        return False
    videos = _video_streams(container)
    if not videos:
        return False  # let the full probe say what the file holds
    if not (videos[0].frames > 0 and videos[0].average_rate):
        return False  # fragmented mp4 (an empty index): the rate and count come from the packets
    context = videos[0].codec_context
    if context is None:
        return False  # a codec this FFmpeg lacks: the full probe, and its error
    if context.name == "h264":
        return bool(context.has_b_frames) or context.profile in _NO_B_FRAME_PROFILES
    return context.name in _HEADER_CODECS


def _open_with(src: VideoSource, label: str, options: dict) -> av.container.InputContainer:
    try:
        if isinstance(src, bytes | bytearray | memoryview):
            return av.open(io.BytesIO(src), **options)
        return av.open(os.path.expanduser(src), **options)  # `~/clip.mp4` as typed: no shell expands it after `=`
    except FileNotFoundError:
        raise VideoDecodeError(label, "file does not exist") from None
    except (av.FFmpegError, OSError) as e:
        if _empty(src):  # an interrupted copy or download: FFmpeg says only "invalid data"
            raise VideoDecodeError(label, f"cannot open ({EMPTY_FILE})") from e
        raise VideoDecodeError(label, f"cannot open ({ffmpeg_reason(e)})") from e


EMPTY_FILE = "the file is empty: 0 bytes"  # why an empty video file cannot be read, in every command's words


def _empty(src: VideoSource) -> bool:
    if isinstance(src, bytes | bytearray | memoryview):
        return len(src) == 0
    try:
        path = os.path.expanduser(src)
        return os.path.isfile(path) and os.path.getsize(path) == 0
    except (OSError, TypeError):
        return False


@contextlib.contextmanager
def _video(src: VideoSource, label: str, threads: int) -> Iterator[tuple[av.container.InputContainer,
                                                                         av.video.stream.VideoStream, _StreamMeta]]:
    """The open container, its video stream (decoding with `threads` FFmpeg threads) and the stream's metadata."""
    with _open(src, label) as container:
        stream = _video_stream(container, label)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        yield container, stream, _stream_meta(container, stream, label)


def _video_stream(container: av.container.InputContainer, label: str) -> av.video.stream.VideoStream:
    """The first real video stream (not cover art); every other stream is discarded at the demuxer."""
    videos = _video_streams(container)
    if not videos:
        raise VideoDecodeError(label, "file has no video stream")
    for stream in container.streams:
        if stream is not videos[0]:
            stream.discard = Discard.all
    return videos[0]


def _video_streams(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """The container's real video streams: not cover art (attached pictures)."""
    return [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]


def _stream_meta(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 label: str) -> _StreamMeta:
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not fps:
        raise VideoDecodeError(label, "video stream has no frame rate")
    fps = Fraction(fps)
    time_base = Fraction(stream.time_base)
    start = (stream.start_time or 0) * time_base
    if stream.duration:
        duration_s = stream.duration * time_base
    elif container.duration:
        duration_s = Fraction(container.duration, av.time_base)
    else:
        duration_s = None
    if stream.frames > 0:
        num_frames, from_header = stream.frames, True
    elif duration_s:
        # Matroska/WebM store no frame count; the duration and rate give it without reading the file. A count
        # that overshoots is corrected by `read_clip` against the frames that decode.
        num_frames, from_header = max(1, round(duration_s * fps)), False
    else:
        # No count and no duration (rare raw streams): demuxing, much cheaper than decoding, counts packets.
        try:
            num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            container.seek(0)
        except av.FFmpegError as e:
            raise VideoDecodeError(label, f"cannot read packets ({ffmpeg_reason(e)})") from e
        from_header = False
    if num_frames < 1:
        raise VideoDecodeError(label, "video stream has no frames")
    return _StreamMeta(fps=fps, time_base=time_base, start=start, num_frames=num_frames,
                       count_from_header=from_header, duration_s=duration_s or Fraction(num_frames) / fps)


def _sample(num_video_frames: int, fps: Fraction, start_s: float | None, end_s: float | None, num_frames: int,
            sampling_rate: int, rng: np.random.Generator | None, num_windows: int, window_index: int,
            select: Callable[[int], np.ndarray] | None, label: str) -> np.ndarray:
    """`sample_indices` (or `select`) within the frames shown in [start_s, end_s)."""
    # Frame k is shown from k / fps; the small slack keeps e.g. 0.1 s at 30 fps on frame 3.
    first, stop = 0, num_video_frames
    if start_s is not None and not math.isnan(start_s):
        first = math.ceil(start_s * float(fps) - 1e-6)
    if end_s is not None and not math.isnan(end_s):
        stop = min(stop, math.ceil(end_s * float(fps) - 1e-6))
    if first >= num_video_frames:
        logger.warning("video %s: start %.3f s is past its %d frames at %.3f fps; using its last frame",
                       label, start_s, num_video_frames, float(fps))
    first = min(max(first, 0), num_video_frames - 1)
    stop = max(stop, first + 1)
    if select is not None:
        return first + np.asarray(select(stop - first), np.int64)
    indices = sample_indices(stop - first, num_frames, sampling_rate, rng, num_windows=num_windows,
                             window_index=window_index)
    return first + indices


class _SeekMissed(Exception):
    """The decoder's first frame after a seek lies past the first wanted frame, or carries no timestamp."""


class _NoPlan(Exception):
    """The packets lack what `_FrameReader._skip_scan` needs (timestamps, ...), or the decoder did not give the
    frames it planned on."""


# Packets a frame can be decoded after frames it precedes on screen, plus one: H.264's and HEVC's reorder depth
# is at most 16 frames.
_REORDER_PACKETS = 17
# Codecs whose decoders drop only non-reference frames under skip_frame NONREF, leaving every other frame's
# pixels as they are (tests/test_decode_skip.py checks them); others decode every frame. VP8 and VP9 are not
# here: their non-reference frames can still update the entropy context later frames decode with.
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video"})
# Containers whose seeks leave the packets' timestamps off: the MPEG program stream (.mpg, .vob) seeks by bytes and,
# where a PES packet carries no timestamp, the demuxer's interpolation then starts from elsewhere than on a read
# from the start (an MPEG-2 .mpg seeked to frame 52 gave its frames 51, 52, ... the timestamps of 48.5, 49.5, ...).
# Their clips decode from the start (`_seek_before` raises _SeekMissed), as a seek that misses does.
_NO_SEEK_FORMATS = frozenset({"mpeg"})


class _FrameReader:
    """Decodes the frames at given indices from one open stream, counting the frames it decodes.

    With `skip_nonref` (and a codec in `_SKIP_NONREF_CODECS`) non-reference frames that no index chooses are
    not decoded (`_skip_scan`); the frames chosen are the same either way."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 meta: _StreamMeta, label: str, skip_nonref: bool = False):
        self.container, self.stream, self.meta, self.label = container, stream, meta, label
        self.skip_nonref = skip_nonref and stream.codec_context.name in _SKIP_NONREF_CODECS
        self.num_decoded = 0

    def frames_at(self, indices: Sequence[int], rewind: bool = False) -> tuple[list[av.VideoFrame] | None, int]:
        """The decoded frames at `indices` (sorted, may repeat), one per index.

        Returns (frames, frame slots covered); frames is None when the stream ended before the last index, and
        the count is then how many frame slots (from index 0) the decoded frames cover. `rewind`: the stream
        was read before (its decoder may have drained), so seek even when index 0 is wanted.
        """
        wanted = sorted(set(int(i) for i in indices))
        chosen = self._planned(wanted, rewind) if self.skip_nonref else None
        if chosen is not None:
            covered = len(wanted)
        else:
            # The packet plan could not be made (or did not hold): decode every frame, as it read packets first.
            chosen, covered = self._full(wanted, rewind or self.skip_nonref)
        if chosen is None:
            return None, covered
        by_index = dict(zip(wanted, chosen, strict=True))
        return [by_index[int(i)] for i in indices], covered

    def _full(self, wanted: list[int], rewind: bool) -> tuple[list[av.VideoFrame] | None, int]:
        """`frames_at` by decoding every frame from the keyframe before the first wanted one."""
        if wanted[0] > 0:
            try:
                self._seek_before(wanted[0])
                return self._scan(wanted, seeked=True)
            except (_SeekMissed, av.FFmpegError):
                # Some indexes land past the target (or the format cannot seek): decode from the start instead.
                self._rewind()
                return self._scan(wanted, seeked=False)
        if rewind:
            self._rewind()
        return self._scan(wanted, seeked=False)

    def _seek_before(self, index: int) -> None:
        if self.container.format.name in _NO_SEEK_FORMATS:
            raise _SeekMissed
        target = self.meta.start + Fraction(index) / self.meta.fps
        # backward=True: land on the last keyframe at or before the first wanted frame.
        self.container.seek(math.floor(target / self.meta.time_base), stream=self.stream, backward=True)

    def _planned(self, wanted: list[int], rewind: bool) -> list[av.VideoFrame] | None:
        """`frames_at` decoding only the frames the clip needs and the reference frames they depend on, or None
        where that plan cannot be made or did not hold (no timestamps, a seek past the clip, corrupt data, an
        end of stream before the last index): `_full` then decodes as if it had not been tried."""
        try:
            if wanted[0] > 0:
                self._seek_before(wanted[0])
            elif rewind:
                self.container.seek(0)
            return self._skip_scan(wanted, seeked=wanted[0] > 0)
        except (_NoPlan, _SeekMissed, av.FFmpegError):
            # A seek past the first wanted frame included: `_full` meets it too, and decodes from the start.
            return None

    def _skip_scan(self, wanted: list[int], seeked: bool) -> list[av.VideoFrame]:
        """`_scan`'s choice of frames, decoding only the packets whose frames it chooses and reference frames.

        Demuxes ahead from the current position until no later packet can show a frame by the last wanted
        time: packets come in decode order, and a frame is decoded at most `_REORDER_PACKETS` - 1 frames after
        frames it precedes on screen. Index k then picks, from all the packets' timestamps, the greatest at or
        before its time, exactly as `_scan` does over the decoded frames; those packets decode normally,
        the others before the last of them with skip_frame NONREF, so the decoder drops them unless they are
        reference frames (which the chosen ones may need), and no packet after the last chosen one is decoded.
        """
        meta = self.meta
        period = 1 / meta.fps
        times, limits = self._times_and_limits(wanted)
        packets: list[av.Packet] = []
        beyond, ended = 0, True
        for packet in self._plannable_packets(seeked):
            packets.append(packet)
            if packet.pts > limits[-1]:
                beyond += 1
                if beyond >= _REORDER_PACKETS:
                    ended = False
                    break
        pts = sorted(p.pts for p in packets)
        if not pts or len(set(pts)) < len(pts):
            raise _NoPlan
        if seeked and packets[0].pts > limits[0]:
            # The keyframe the seek landed on is shown after the first wanted frame: frames before it in
            # presentation order (open-GOP leading frames) reference the previous GOP and do not decode.
            raise _SeekMissed
        picks = [pts[max(bisect.bisect_right(pts, limit) - 1, 0)] for limit in limits]
        needed = set(picks)
        last = max(n for n, p in enumerate(packets) if p.pts in needed)
        context = self.stream.codec_context
        decoded: dict[int, av.VideoFrame] = {}
        previous: list[int] = []

        def keep(frames: list[av.VideoFrame]) -> None:
            for frame in frames:
                self.num_decoded += 1
                if frame.pts is None or (previous and frame.pts <= previous[-1]):
                    raise _NoPlan  # frames out of presentation order: leave the choice to `_scan`
                previous.append(frame.pts)
                if frame.pts in needed:
                    decoded[frame.pts] = frame

        try:
            for packet in packets[: last + 1]:
                context.skip_frame = "DEFAULT" if packet.pts in needed else "NONREF"
                keep(context.decode(packet))
            context.skip_frame = "DEFAULT"
            keep(context.decode(None))  # drain the frames the decoder holds back for reordering
        finally:
            context.skip_frame = "DEFAULT"
        if not needed <= decoded.keys():
            raise _NoPlan
        if ended and picks[-1] == pts[-1]:
            # The last index falls on the stream's last frame: it covers it only while still on screen.
            frame = decoded[pts[-1]]
            if pts[-1] * meta.time_base + max((frame.duration or 0) * meta.time_base, period) <= times[-1]:
                raise _NoPlan
        return [decoded[p] for p in picks]

    def _times_and_limits(self, wanted: Sequence[int]) -> tuple[list[Fraction], list[int]]:
        """(each index's time, the middle of its frame slot; the greatest timestamp a packet shown by that time can
        have): a packet's frame is shown by time t when pts * time_base <= t, i.e. pts <= floor(t / time_base)."""
        meta = self.meta
        period = 1 / meta.fps
        times = [meta.start + k * period + period / 2 for k in wanted]
        return times, [math.floor(t / meta.time_base) for t in times]

    def _plannable_packets(self, seeked: bool) -> Iterator[av.Packet]:
        """`_packets` a plan of which to decode is made from: the demuxer's end-of-stream packet left out, and
        _NoPlan at one without a timestamp, empty or corrupt."""
        for packet in self._packets(seeked):
            if packet.size == 0 and packet.pts is None:
                continue  # the demuxer's end-of-stream packet
            if packet.pts is None or packet.size == 0 or packet.is_corrupt:
                raise _NoPlan
            yield packet

    def _packets(self, seeked: bool) -> Iterator[av.Packet]:
        """The stream's packets from the current position; after a seek (`seeked`), from the first keyframe on. A
        seek can land a few packets before the keyframe (MPEG program streams seek by bytes): those packets belong
        to the group of pictures before, whose reference frames the decoder does not have; decoded, they are
        dropped and leave the decoder's timestamps a few frames off (frames three indices late were seen)."""
        packets = self.container.demux(self.stream)
        if seeked:
            for packet in packets:
                if packet.is_keyframe or (packet.size == 0 and packet.pts is None):
                    yield packet
                    break
        yield from packets

    def picked(self, wanted: Sequence[int], rewind: bool = False) -> Iterator[tuple[int, av.VideoFrame]]:
        """(k, the frame shown at index k) for each k of `wanted` (sorted, distinct) in turn, as `on_grid` gives
        them, from one forward pass that decodes only the packets whose frames some k picks and, under skip_frame
        NONREF, the reference frames among the others: `_skip_scan` streamed, so that a long run of windows holds
        only the packets and frames not yet given. After a seek to the keyframe before the first (or, at index 0
        with `rewind`, to the start), packets are demuxed ahead; index k picks the greatest timestamp at or before
        its time once `_REORDER_PACKETS` packets after that time have been seen (or the stream has ended), and a
        packet goes to the decoder once its fate is known: picked, or passed over (a later packet is shown by the
        time of the first index that could pick it, or that index picked another). Indices past the last frame
        take it, as `on_grid`'s do. Raises _NoPlan or _SeekMissed (and FFmpeg's errors) where the plan cannot be
        made or does not hold; the caller then decodes every frame."""
        if not wanted:
            return
        _, limits = self._times_and_limits(wanted)
        seeked = self._start_for(wanted[0], rewind)
        picks = _StreamedPicks(self, wanted, limits)
        for packet in self._plannable_packets(seeked):
            if seeked and not picks.seen and packet.pts > limits[0]:
                raise _SeekMissed  # open-GOP leading frames before the keyframe reference the GOP before
            picks.demuxed(packet)
            picks.decide(ended=False)
            yield from picks.send_known()
            if picks.all_decided:
                break  # every picked packet has been demuxed
        yield from picks.finish()

    def _start_for(self, first: int, rewind: bool) -> bool:
        """Places the demuxer for a pass from index `first`: at the keyframe before it (returns True: the packets
        are read from that keyframe on), else at the start where `rewind` asks or the container does not seek, else
        where it stands (False)."""
        seeked = first > 0
        if seeked:
            try:
                self._seek_before(first)
            except _SeekMissed:  # a container that does not seek: from the start, every frame before passed over
                seeked, rewind = False, True
        if rewind and not seeked:
            self.container.seek(0)
        return seeked

    def _rewind(self) -> None:
        try:
            self.container.seek(0)
        except av.FFmpegError as e:
            raise VideoDecodeError(self.label, f"cannot seek back to the start ({ffmpeg_reason(e)})") from e

    def _scan(self, wanted: list[int], seeked: bool) -> tuple[list[av.VideoFrame] | None, int]:
        """Decodes forward from the current position; index k gets the last frame shown by time k / fps."""
        chosen: list[av.VideoFrame] = []
        grid = self.on_grid(wanted[0], seeked)
        for index, frame in grid:
            if index == wanted[len(chosen)]:
                chosen.append(frame)
                if len(chosen) == len(wanted):
                    grid.close()
                    return chosen, len(wanted)
        return None, self.covered

    def on_grid(self, first: int = 0, seeked: bool = False) -> Iterator[tuple[int, av.VideoFrame]]:
        """(k, the frame shown at index k) for k = first, first + 1, ..., decoding forward from the current
        position: index k gets the last frame shown by start + (k + 1/2) / fps (half a frame of slack absorbs
        timestamp rounding, e.g. 1/30 s in a 1/12800 time base), so a frame repeats where it stays on screen for
        several periods and is passed over where another replaces it within one. After the last frame it goes on
        while that frame is still on screen (its duration, at least a period), then sets `covered`, the frame
        slots from index 0 the decoded frames cover (0: no frame decoded). `seeked`: the position came from a seek
        to index `first`; a first frame shown after `first`'s time, or without a timestamp, raises _SeekMissed.
        Corrupt data raises VideoDecodeError naming the last good frame."""
        meta = self.meta
        period = 1 / meta.fps

        def time_of(k: int) -> Fraction:
            return meta.start + k * period + period / 2

        slot, prev, prev_time, prev_end = first, None, None, None
        self.covered = 0
        try:
            frames = (frame for packet in self._packets(True) for frame in packet.decode()) if seeked \
                else self.container.decode(self.stream)
            for frame in frames:
                self.num_decoded += 1
                if frame.pts is not None:
                    time = frame.pts * meta.time_base
                elif prev_time is not None:
                    time = prev_time + period
                elif seeked:
                    raise _SeekMissed
                else:
                    time = meta.start
                if prev is None and seeked and time > time_of(first):
                    raise _SeekMissed
                while time > time_of(slot):
                    # The first frame of an unseeked stream may start a little after index 0's time.
                    yield slot, prev if prev is not None else frame
                    slot += 1
                prev, prev_time = frame, time
                prev_end = time + max((frame.duration or 0) * meta.time_base, period)
        except av.FFmpegError as e:
            where = "the first frame" if prev_time is None else f"frame {_index_at(prev_time, meta)}"
            raise VideoDecodeError(self.label, f"corrupt data after {where} ({ffmpeg_reason(e)})") from e
        if prev is None:
            return
        # End of stream: the last frame stays on screen until prev_end, which may cover more indices.
        while prev_end > time_of(slot):
            yield slot, prev
            slot += 1
        self.covered = max(1, round((prev_end - meta.start) * meta.fps))


class _StreamedPicks:
    """The state of one `_FrameReader.picked` pass: the packets demuxed so far and those not yet sent to the decoder,
    the timestamp each index picks once decided, and the picked frames decoded and not yet given.

    A packet goes to the decoder once its fate is known (`known`): picked, or passed over as a possible reference,
    under skip_frame NONREF. An index is decided once `_REORDER_PACKETS` packets after its time have been seen, or
    the stream ended; it is given once its frame and every frame before it came out of the decoder."""

    def __init__(self, reader: _FrameReader, wanted: Sequence[int], limits: list[int]):
        self.reader, self.wanted, self.limits = reader, wanted, limits
        self.context = reader.stream.codec_context
        self.seen: list[int] = []  # the timestamps of the packets demuxed so far, sorted
        self.queue: collections.deque[av.Packet] = collections.deque()  # demuxed, not yet sent to the decoder
        self.picks: list[int] = []  # the timestamp each index picks, for the indices decided so far
        self.needed: set[int] = set()
        self.decoded: dict[int, av.VideoFrame] = {}  # picked frames decoded that an index not yet given may take
        self.given = 0  # indices given so far
        self.last_out: int | None = None  # the timestamp of the decoder's last frame

    @property
    def all_decided(self) -> bool:
        return len(self.picks) == len(self.wanted)

    def demuxed(self, packet: av.Packet) -> None:
        """Takes in the next packet of the stream (a plannable one: `_FrameReader._plannable_packets`)."""
        at = bisect.bisect_left(self.seen, packet.pts)
        if at < len(self.seen) and self.seen[at] == packet.pts:
            raise _NoPlan  # two packets at one timestamp
        self.seen.insert(at, packet.pts)
        self.queue.append(packet)

    def decide(self, ended: bool) -> None:
        """Decides the next indices whose pick the packets seen settle (all of them once the stream `ended`)."""
        while len(self.picks) < len(self.wanted):
            at = bisect.bisect_right(self.seen, self.limits[len(self.picks)])
            if not ended and len(self.seen) - at < _REORDER_PACKETS:
                return
            if at == 0:
                raise _NoPlan  # no frame by the index's time yet: `on_grid` gives the first one shown
            self.picks.append(self.seen[at - 1])
            self.needed.add(self.seen[at - 1])

    def known(self, pts: int) -> bool:
        """Whether the packet at `pts` is known to be picked or passed over and needed as a reference (a packet
        shown after every index waits for the end, which sends it only where a picked packet follows it)."""
        if pts in self.needed:
            return True
        if not self.picks:
            return False
        first = bisect.bisect_left(self.limits, pts)  # the first index that could pick it
        return first < len(self.limits) and (
            first < len(self.picks)
            or bisect.bisect_right(self.seen, self.limits[first]) > bisect.bisect_right(self.seen, pts))

    def send(self, packet: av.Packet | None) -> None:
        """Decodes `packet` (None: drains the decoder), a picked one fully and any other under skip_frame NONREF,
        keeping the picked frames that come out."""
        context = self.context
        if packet is not None:
            context.skip_frame = "DEFAULT" if packet.pts in self.needed else "NONREF"
        try:
            frames = context.decode(packet)
        finally:
            context.skip_frame = "DEFAULT"
        for frame in frames:
            self.reader.num_decoded += 1
            if frame.pts is None or (self.last_out is not None and frame.pts <= self.last_out):
                raise _NoPlan  # frames out of presentation order: leave the choice to `on_grid`
            self.last_out = frame.pts
            if frame.pts in self.needed:
                self.decoded[frame.pts] = frame

    def ready(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """(k, its frame) for the next indices whose frames have been decoded, in turn."""
        while self.given < len(self.picks) and self.picks[self.given] in self.decoded:
            for pts in [p for p in self.decoded if p < self.picks[self.given]]:
                del self.decoded[pts]  # every index that picks it was given
            yield self.wanted[self.given], self.decoded[self.picks[self.given]]
            self.given += 1

    def send_known(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Sends the queued packets whose fate is known, in order, giving the indices whose frames that decodes."""
        while self.queue and self.known(self.queue[0].pts):
            self.send(self.queue.popleft())
            yield from self.ready()

    def finish(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Once demuxing stops: the indices left decided, the queued packets up to the last picked one sent (none
        after it), the decoder drained and every index left given; _NoPlan where one of them has no frame."""
        if not self.seen:
            raise _NoPlan
        self.decide(ended=True)
        last = max((n for n, packet in enumerate(self.queue) if packet.pts in self.needed), default=-1)
        for packet in list(self.queue)[: last + 1]:  # none after the last picked one
            self.send(packet)
        self.send(None)  # drain the frames the decoder holds back for reordering
        yield from self.ready()
        if self.given < len(self.wanted):
            raise _NoPlan  # a picked frame did not come out of the decoder


# PyAV's error classes in the plain words of an error line; FFmpeg's own (`[Errno 1094995529] Invalid data found
# when processing input: 'clip.mp4'`) carry an error number that means nothing to a person, and repeat the file name
# that `VideoDecodeError` already gives.
_PLAIN_REASONS = (
    (av.error.InvalidDataError, "invalid data"),
    (av.error.EOFError, "the file ends early"),
    (av.error.IsADirectoryError, "it is a folder, not a video file"),
    (av.error.PermissionError, "permission denied"),
    (av.error.DecoderNotFoundError, "no decoder for its codec in this FFmpeg build"),
    (av.error.DemuxerNotFoundError, "a container format this FFmpeg build does not read"),
    (av.error.PatchWelcomeError, "a feature FFmpeg does not implement"),
)


def ffmpeg_reason(err: BaseException) -> str:
    """A PyAV (FFmpeg) or OS error in plain words, for an error line that names the file itself: "invalid data"
    for FFmpeg's AVERROR_INVALIDDATA, else the system's words (`strerror`, first letter lower-case), without the
    error number, the call that failed or the file name."""
    for kind, words in _PLAIN_REASONS:
        if isinstance(err, kind):
            return words
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(text)).split(": '", 1)[0].strip()
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _index_at(time: Fraction, meta: _StreamMeta) -> int:
    return round((time - meta.start) * meta.fps)


def _rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation in degrees counter-clockwise, rounded to a multiple of 90, in (-180, 180]."""
    return (0, 90, 180, -90)[round((frame.rotation or 0) / 90) % 4]


def _resized_size(frame: av.VideoFrame, short_side: int | None) -> tuple[int, int, int]:
    """(quarter turns to upright, height, width) of `frame` shown upright and resized so its shorter side is
    `short_side` (when given), with `transforms.resize_short_side`'s rounding."""
    quarter_turns = round(_rotation(frame) / 90) % 4
    return (quarter_turns, *_shown_size(frame.height, frame.width, quarter_turns, short_side))


def _shown_size(coded_h: int, coded_w: int, quarter_turns: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) of a `coded_h` x `coded_w` picture turned `quarter_turns` times and resized so its shorter
    side is `short_side` (when given), with `transforms.resize_short_side`'s rounding."""
    shown_h, shown_w = (coded_w, coded_h) if quarter_turns % 2 else (coded_h, coded_w)
    if short_side is None:
        return shown_h, shown_w
    if shown_h <= shown_w:
        return short_side, max(1, round(shown_w * short_side / shown_h))
    return max(1, round(shown_h * short_side / shown_w)), short_side


def _to_rgb(frames: list[av.VideoFrame], short_side: int | None) -> np.ndarray:
    """Converts frames (the same one may repeat) to upright uint8 RGB, resized to `short_side` if given."""
    _, height, width = _resized_size(frames[0], short_side)
    converted: dict[int, np.ndarray] = {}
    for frame in frames:
        if id(frame) not in converted:
            converted[id(frame)] = upright_rgb(frame, height, width)
    return np.stack([converted[id(frame)] for frame in frames])


# Decoded formats `_cropped_rgb` cuts boxes from directly: 8-bit 4:2:0 (H.264/HEVC/VP9/AV1 8-bit, MPEG-4, JPEG range).
_CROP_FIRST_FORMATS = frozenset({"yuv420p", "yuvj420p"})


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    """A view (no copy) of one plane of `frame`, without its row padding."""
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def _cropped_rgb(frames: list[av.VideoFrame], short_side: int | None,
                 make_crops: Callable[[int, int], Sequence[transforms.Crop]]) -> np.ndarray:
    """(k, T, out_h, out_w, 3) uint8 RGB: each crop of `make_crops(height, width)` (boxes in the frames as resized to
    `short_side`) resampled once from the decoded picture, crop first.

    Only the box (plus the resampling filter's reach, rounded out to whole chroma samples) is converted to RGB, at
    the decoded size (libswscale's unscaled conversion: the same pixels as converting the whole frame), then PIL
    resamples the box's exact, fractional extent in the decoded picture to the output size (bilinear, antialiased,
    as `transforms.apply_crop`), and flips. So each frame is resampled once, from the decoded picture, where the
    crop of a resized frame resamples twice, and no pixel outside the box is converted. A picture rotated for
    display is cut from its planes turned upright. Frames that are not 8-bit 4:2:0, or rotated at an odd coded size,
    are converted whole first (`_to_rgb`) and cropped with `transforms.apply_crop`.
    """
    first = frames[0]
    quarter_turns, height, width = _resized_size(first, short_side)
    crops = list(make_crops(height, width))
    if len({(crop.out_height, crop.out_width) for crop in crops}) != 1:
        raise ValueError(f"crops must all have one output size, got {crops}")
    # A rotated picture is cut upright: its planes turned (`upright_planes`), which keeps each chroma sample on its
    # 2 x 2 pixels only where the coded size is even.
    odd = first.width % 2 or first.height % 2
    if (quarter_turns and odd) or first.format.name not in _CROP_FIRST_FORMATS or any(
            (f.width, f.height, f.format.name) != (first.width, first.height, first.format.name) for f in frames):
        video = _to_rgb(frames, short_side)
        return np.stack([transforms.apply_crop(video, crop) for crop in crops])
    reformatter = VideoReformatter()  # keeps its libswscale context across calls of the same shapes
    out = np.empty((len(crops), len(frames), crops[0].out_height, crops[0].out_width, 3), np.uint8)
    picture_h, picture_w = (first.width, first.height) if quarter_turns % 2 else (first.height, first.width)
    for c, crop in enumerate(crops):
        region = CropRegion.of(picture_h, picture_w, crop, height, width)
        done: dict[int, int] = {}
        for t, frame in enumerate(frames):
            if id(frame) in done:  # a frame repeated to fill a short video: converted once
                out[c, t] = out[c, done[id(frame)]]
                continue
            done[id(frame)] = t
            # An even-sized picture: libswscale converts odd ones (a region at an odd frame's edge) through its
            # general scaler, which filters the chroma, where even ones take each chroma sample for its 2 x 2 pixels
            # (as `vidjax.ops.pixels` does); the last row and column are repeated and then cut off again.
            region_h, region_w = region.y1 - region.y0, region.x1 - region.x0
            planes = av.VideoFrame(region_w + region_w % 2, region_h + region_h % 2, first.format.name)
            planes.colorspace, planes.color_range = frame.colorspace, frame.color_range
            y, u, v = region.planes(*upright_planes(frame))
            luma = _plane(planes, 0)
            luma[:region_h, :region_w] = y
            if region_h % 2:
                luma[region_h] = luma[region_h - 1]
            if region_w % 2:
                luma[:, region_w] = luma[:, region_w - 1]
            _plane(planes, 1)[...], _plane(planes, 2)[...] = u, v
            rgb = reformatter.reformat(planes, format="rgb24", threads=1)
            plane = rgb.planes[0]  # packed RGB: 3 bytes a pixel, rows padded to line_size
            pixels = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:region_h, : 3 * region_w]
            # PIL copies without resampling when the box is the whole region at the output size.
            image = Image.fromarray(pixels.reshape(region_h, region_w, 3)).resize(
                (crop.out_width, crop.out_height), Image.Resampling.BILINEAR, box=region.box)
            if crop.flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[c, t] = np.asarray(image)
    return out


# libswscale's colour matrix for each `VideoFrame.colorspace` (FFmpeg's AVColorSpace) that the device path converts
# with `vidjax.ops.pixels`: BT.709 (1); BT.601 as BT470BG (5), SMPTE 170M (6) and unspecified (2), which libswscale
# reads as BT.601.
_DEVICE_MATRICES = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601"}
_DEVICE_MATRICES_ORDER = ("bt601", "bt709")  # vidjax.ops.pixels.MATRIX_NAMES (the data layer does not import ops)


def colour_of(frame: av.VideoFrame) -> tuple[str, bool]:
    """(matrix, full_range) with which libswscale turns `frame`'s YUV into RGB, for `vidjax.ops.pixels.yuv420_to_rgb`:
    the stream's matrix (BT.601 where it states none), and full range where it says JPEG range or the format is a
    "yuvj" one. Raises ValueError for a matrix the device path does not convert (BT.2020, FCC, ...)."""
    space = int(frame.colorspace)
    if space not in _DEVICE_MATRICES:
        raise ValueError(f"colour matrix {space} (FFmpeg's AVColorSpace) has no device conversion; the host path "
                         f"converts it")
    return _DEVICE_MATRICES[space], int(frame.color_range) == 2 or frame.format.name.startswith("yuvj")


@dataclasses.dataclass(frozen=True)
class CropRegion:
    """Where a `transforms.Crop` lies in a decoded 8-bit 4:2:0 picture: the even-aligned region [y0, y1) x [x0, x1)
    of decoded pixels that holds the crop's box plus the resampling filter's reach, and the box's fractional edges
    (left, top, right, bottom) in that region's pixels (PIL's `box` order). The host path converts the region's
    planes and resamples the box (`_cropped_rgb`); the device path sends them (`planes`) and does both on the
    accelerator (`vidjax.ops.pixels`)."""

    y0: int
    y1: int
    x0: int
    x1: int
    box: tuple[float, float, float, float]

    @classmethod
    def of(cls, picture_h: int, picture_w: int, crop: transforms.Crop, height: int, width: int) -> CropRegion:
        """The region of `crop`, drawn in the frames as shown at `height` x `width` (resized to the short side),
        in the upright decoded picture of `picture_h` x `picture_w` pixels (`upright_planes`)."""
        if crop.top < 0 or crop.left < 0 or crop.top + crop.height > height or crop.left + crop.width > width:
            raise ValueError(f"{crop} does not fit in {height}x{width} frames")
        scale_y, scale_x = picture_h / height, picture_w / width
        fy0, fy1 = crop.top * scale_y, (crop.top + crop.height) * scale_y
        fx0, fx1 = crop.left * scale_x, (crop.left + crop.width) * scale_x
        reach = 2 + math.ceil(max(scale_y * crop.height / crop.out_height, scale_x * crop.width / crop.out_width))
        y0, x0 = max(0, math.floor(fy0) - reach) & ~1, max(0, math.floor(fx0) - reach) & ~1
        y1, x1 = min(picture_h, math.ceil(fy1) + reach), min(picture_w, math.ceil(fx1) + reach)
        y1, x1 = min(picture_h, y1 + y1 % 2), min(picture_w, x1 + x1 % 2)
        return cls(y0, y1, x0, x1, (fx0 - x0, fy0 - y0, fx1 - x0, fy1 - y0))

    def planes(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of the region in an upright picture's luma `y` and chroma `u`, `v` (one sample per 2 x 2 pixels):
        (y1 - y0, x1 - x0) and its chroma."""
        chroma = (slice(self.y0 // 2, (self.y1 + 1) // 2), slice(self.x0 // 2, (self.x1 + 1) // 2))
        return y[self.y0 : self.y1, self.x0 : self.x1], u[chroma], v[chroma]


def upright_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of an 8-bit 4:2:0 `frame`'s luma and chroma planes as shown: turned by its display rotation (a coded
    size that is even keeps each chroma sample on its 2 x 2 pixels)."""
    quarter_turns = round(_rotation(frame) / 90) % 4
    planes = tuple(_plane(frame, p) for p in range(3))
    return tuple(np.rot90(plane, quarter_turns) for plane in planes) if quarter_turns else planes
