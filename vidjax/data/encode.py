"""Writing uint8 RGB frames as an H.264 mp4 with PyAV: the embedded dataset's clips as files, for demos and benches,
and the videos `python -m vidjax.data.pack --reencode_short_side` re-encodes.

    encode.write_mp4("clip.mp4", frames_THWC, fps=25)

The file is written under a temporary name beside `path` and renamed when complete, so an interrupted write never
leaves a half file that a later run would take for a video.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np


def write_mp4(path: str | os.PathLike | BinaryIO, frames: Iterable[np.ndarray], fps: int | Fraction = 25, *,
              gop: int | None = None, crf: int = 23, preset: str = "medium", scenecut: bool = True,
              threads: int = 0, on_decoded: Callable[[np.ndarray], None] | None = None) -> str | BinaryIO:
    """Encodes `frames` (uint8 (H, W, 3) RGB each, any iterable: an array (T, H, W, 3) or a generator) as H.264,
    yuv420p, at `fps`, with a keyframe every `gop` frames (the encoder's default when None); returns `path`.

    yuv420p halves the chroma resolution, so odd heights and widths are refused rather than silently cropped.
    Frame k is shown at k / fps (`fps` may be a Fraction, e.g. 30000/1001).
    `path` may also be a seekable binary file object (io.BytesIO), written in place.
    `scenecut` False: no extra keyframes at scene changes, so keyframes fall exactly every `gop` frames (a
    predictable seek cost) instead of at most `gop` apart.
    `threads`: the encoder's threads (0: its default, about 1.5 per core).
    `on_decoded(rgb)` is called with each encoded frame as a decoder shows it (uint8 RGB, in display order, one
    per frame written), from the very packets written, to measure what the encoding lost without reading the
    file back; a few dozen frames behind the input (the encoder's lookahead).
    """
    label = repr(os.fspath(path)) if isinstance(path, str | os.PathLike) else "<file object>"
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"write_mp4({label}): no frames to write.")
    height, width = np.shape(first)[:2]
    if np.ndim(first) != 3 or np.shape(first)[2] != 3 or height % 2 or width % 2:
        raise ValueError(f"write_mp4({label}): frames must be uint8 RGB (H, W, 3) with even H and W (H.264 in "
                         f"yuv420p); got shape {np.shape(first)}.")
    options = {"crf": str(crf), "preset": preset}
    if not scenecut:
        options["x264-params"] = "scenecut=0"
    if threads:
        options["threads"] = str(threads)
    if isinstance(path, str | os.PathLike):
        partial = f"{os.fspath(path)}.partial.mp4"
        target = av.open(partial, "w")
    else:
        partial, target = None, av.open(path, "w", format="mp4")
    decoder = None

    def mux(packets) -> None:
        nonlocal decoder
        for packet in packets:
            if on_decoded is not None:
                if decoder is None:  # the encoder is open now: its extradata holds the stream's SPS and PPS
                    decoder = av.CodecContext.create("h264", "r")
                    decoder.extradata = stream.codec_context.extradata
                for frame in decoder.decode(packet):
                    on_decoded(frame.to_ndarray(format="rgb24"))
            container.mux(packet)

    with target as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        for frame in itertools.chain([first], frames):
            mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame, np.uint8), format="rgb24")))
        mux(stream.encode())
        if decoder is not None:
            for frame in decoder.decode(None):  # the frames the decoder held back for reordering
                on_decoded(frame.to_ndarray(format="rgb24"))
    if partial is None:
        return path
    os.replace(partial, path)
    return os.fspath(path)
