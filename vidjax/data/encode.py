"""Writing uint8 RGB frames as an H.264 mp4 with PyAV: the embedded dataset's clips as files, for demos and benches.

    encode.write_mp4("clip.mp4", frames_THWC, fps=25)

The file is written under a temporary name beside `path` and renamed when complete, so an interrupted write never
leaves a half file that a later run would take for a video.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable

import av
import numpy as np


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int = 25, *, gop: int | None = None,
              crf: int = 23, preset: str = "medium") -> str:
    """Encodes `frames` (uint8 (H, W, 3) RGB each, any iterable: an array (T, H, W, 3) or a generator) as H.264,
    yuv420p, at `fps`, with a keyframe every `gop` frames (the encoder's default when None); returns the path.

    yuv420p halves the chroma resolution, so odd heights and widths are refused rather than silently cropped."""
    path = os.fspath(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"write_mp4({path!r}): no frames to write.")
    height, width = np.shape(first)[:2]
    if np.ndim(first) != 3 or np.shape(first)[2] != 3 or height % 2 or width % 2:
        raise ValueError(f"write_mp4({path!r}): frames must be uint8 RGB (H, W, 3) with even H and W (H.264 in "
                         f"yuv420p); got shape {np.shape(first)}.")
    partial = f"{path}.partial.mp4"
    with av.open(partial, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": preset})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for frame in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame, np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(partial, path)
    return path
