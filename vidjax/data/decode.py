"""Video decoding with PyAV: frame-index sampling and clip decoding to uint8 RGB arrays."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import av
import numpy as np

logger = logging.getLogger(__name__)


class VideoDecodeError(ValueError):
    """A video file is missing, unreadable, corrupt or has no video stream."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")

    def __reduce__(self):
        # grain worker processes pickle exceptions back to the parent; the default
        # reduce would call cls(message) and fail on the missing `reason` argument.
        return type(self), (self.path, self.reason)


def sample_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Indices of `num_frames` frames spaced `sampling_rate` apart.

    The frames come from a window of `num_frames * sampling_rate` frames: at a random start
    when `rng` is given (training), centred otherwise (evaluation). A video shorter than the
    window starts at frame 0 and repeats its last frame for indices past its end, so short
    clips still yield `num_frames` frames.
    """
    if num_video_frames < 1:
        raise ValueError(f"cannot sample frames from a video with {num_video_frames} frames")
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(
            f"num_frames and sampling_rate must be >= 1, got {num_frames} and {sampling_rate}"
        )
    max_start = num_video_frames - num_frames * sampling_rate
    if max_start <= 0:
        start = 0
    elif rng is not None:
        start = int(rng.integers(0, max_start + 1))
    else:
        start = max_start // 2
    indices = start + np.arange(num_frames, dtype=np.int64) * sampling_rate
    return np.minimum(indices, num_video_frames - 1)


def decode_clip(
    path: str | os.PathLike,
    num_frames: int,
    sampling_rate: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Decodes `num_frames` RGB frames, sampled as in `sample_indices`, from a video file.

    Returns uint8 of shape (num_frames, H, W, 3). Decoding stops at the last sampled frame.
    Raises VideoDecodeError for missing, unreadable or corrupt files and files without video.
    """
    path = os.fspath(path)
    total = _count_frames(path)
    indices = sample_indices(total, num_frames, sampling_rate, rng)
    frames, num_decoded = _decode_at(path, indices)
    if frames is None:
        # Container headers can overstate the frame count (truncated downloads, bad muxers);
        # resample against the frames that really decode instead of failing the example.
        if num_decoded == 0:
            raise VideoDecodeError(path, f"header lists {total} frames but none decode")
        logger.warning(
            "video %s: header lists %d frames but only %d decode; sampling from those",
            path, total, num_decoded,
        )
        indices = sample_indices(num_decoded, num_frames, sampling_rate, rng)
        frames, _ = _decode_at(path, indices)
        if frames is None:
            raise VideoDecodeError(path, "decoded a different number of frames on a second pass")
    return frames


def _open(path: str) -> av.container.InputContainer:
    try:
        container = av.open(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "file does not exist") from None
    except (av.FFmpegError, OSError) as e:
        raise VideoDecodeError(path, f"cannot open ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "file has no video stream")
    return container


def _count_frames(path: str) -> int:
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return stream.frames
        # Matroska/WebM and some other containers do not store a frame count. Demuxing is
        # far cheaper than decoding, and with one frame per packet the packet count is the
        # frame count; `decode_clip` resamples if decoding later finds fewer frames.
        try:
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        except av.FFmpegError as e:
            raise VideoDecodeError(path, f"cannot read packets ({e})") from e
    if count == 0:
        raise VideoDecodeError(path, "video stream has no frames")
    return count


def _decode_at(path: str, indices: Sequence[int]) -> tuple[np.ndarray | None, int]:
    """Decodes the frames at `indices` (sorted, may repeat).

    Returns (frames, frames decoded); frames is None when the stream ended before the
    last index.
    """
    last = int(indices[-1])
    wanted = set(int(i) for i in indices)
    by_index: dict[int, np.ndarray] = {}
    num_decoded = 0
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if num_decoded in wanted:
                    by_index[num_decoded] = frame.to_ndarray(format="rgb24")
                num_decoded += 1
                if num_decoded > last:
                    break
        except av.FFmpegError as e:
            raise VideoDecodeError(path, f"corrupt data after frame {num_decoded} ({e})") from e
    if num_decoded <= last:
        return None, num_decoded
    return np.stack([by_index[int(i)] for i in indices]), num_decoded
