"""NVIDIA's hardware video decoder (NVDEC) for training clips: `config.data.decoder="nvdec"`.

The device-pixel path (`config.data.pixels="device"`) sends a clip's decoded YUV 4:2:0 planes and the step makes the
pixels. With this decoder the planes come from the GPU's video engine through PyNvVideoCodec (`pip install
'vidjax[nvdec]'`) instead of libavcodec on the host's cores; the rest is the same function of the same draws:
- PyAV opens the file and decodes its first frame (`decode.first_picture`): the frame count and rate the clip's
  frames are sampled from (`decode.sample_frames`, the same draws from the element's generator as the PyAV path),
  the display rotation and the colour matrix and range;
- NVDEC decodes the sampled frames (`SimpleDecoder.get_batch_frames_by_index`: it seeks to the keyframe before them
  and decodes on the GPU) into NV12 in host memory;
- the region of the clip's crops is cut from those planes by `decode.cut_planes`, the function the PyAV path uses.

H.264 and HEVC decoding is exact by their standards, so the planes equal PyAV's bit for bit (tests/test_nvdec.py
checks it where a GPU is). Resume is exact as on the PyAV path: a clip is a function of its element and generator.

Why PyNvVideoCodec and not DALI's video reader: DALI's readers own the file list, the shuffling, the sampling and
the iteration (a DALI pipeline is its own loader, with its own checkpoint), so grain's element-keyed draws and
exact resume would be given up or rebuilt around it; PyNvVideoCodec's `SimpleDecoder` is a function from (file,
frame indices) to frames, which is what a grain worker's element needs. Its wheel is 27 MB, DALI's
(nvidia-dali-cuda120) 425 MB.

A file NVDEC does not decode here (a container other than MP4/MOV, a codec or size the GPU's engine lacks, a picture
not 8-bit 4:2:0, an odd coded size, a frame count that disagrees with the container's) is decoded by PyAV instead,
with one warning per process, so one odd file never stops a run. On an H200 (PyNvVideoCodec 2.2.4) NVDEC gave a
Matroska file's later frames one frame late ("Seek accuracy may be impacted", it warns) and failed on an AVI's MPEG-4
(`GetFramesByIdxList`), hence MP4/MOV only: their index names every frame. Frames are indexed in presentation
order, which is the PyAV path's time grid for constant-frame-rate files (every training set the recipes name); the
grid of a variable-frame-rate file can differ.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from vidjax.data import decode, transforms

logger = logging.getLogger(__name__)

INSTALL = "pip install 'vidjax[nvdec]'"
# The clips this process gave to PyAV instead (tests read it), and whether it has said so.
_STATE: dict = {"fallbacks": 0, "warned": False}
# Each thread's decoder, reused from clip to clip (`SimpleDecoder.reconfigure_decoder`, PyNvVideoCodec's way to
# keep its decode sessions across files instead of opening new ones), and the file it is on. One per thread: a grain
# worker reads its elements on two threads, and a decoder used from two at once fails its pictures and then crashes
# the process.
_LOCAL = threading.local()
# The largest picture a decoder is made for: a later file up to this size moves into it, a larger one gets a decoder
# of its own.
_MAX_SIZE = 2048


class _Quiet(logging.Filter):
    """PyNvVideoCodec's own log lines: its driver version at INFO in every process that imports it, and its
    diagnosis at ERROR where it cannot (`problem` says that in one line)."""

    def __init__(self):
        super().__init__()
        self.importing = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.importing and record.levelno >= logging.WARNING


_QUIET = _Quiet()
logging.getLogger("PyNvVideoCodec").addFilter(_QUIET)


def _import():
    """PyNvVideoCodec, imported without its log lines."""
    _QUIET.importing = True
    try:
        import PyNvVideoCodec  # optional extra: only a run with config.data.decoder="nvdec" needs it
    finally:
        _QUIET.importing = False
    return PyNvVideoCodec


@functools.cache
def problem() -> str | None:
    """Why NVDEC cannot decode here (the wheel missing, or no NVIDIA driver with its video libraries), or None."""
    try:
        _import()
    except ImportError as err:
        return f"PyNvVideoCodec is not installed ({INSTALL}): {str(err).splitlines()[0][:120]}"
    except Exception as err:  # RuntimeError: no NVIDIA driver, or one without libnvcuvid / libnvidia-encode
        return (f"PyNvVideoCodec finds no NVIDIA GPU driver with its video decoder here (an NVIDIA GPU and its "
                f"driver's libnvcuvid are needed): {str(err).splitlines()[0][:120]}")
    return _no_gpu()


def _no_gpu() -> str | None:
    """Why the driver shows this process no GPU (none in the machine, or CUDA_VISIBLE_DEVICES hides them), or None:
    asked of libcuda itself (cuInit, cuDeviceGetCount), which makes no context."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return f"the NVIDIA driver's libcuda.so.1 does not load: {err}"
    count = ctypes.c_int(0)
    status = cuda.cuInit(0)
    if status == 0:
        status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return (f"the NVIDIA driver shows this process no GPU (CUDA error {status}, {count.value} devices; "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
    return None


def fallbacks() -> int:
    """How many clips this process gave to PyAV because NVDEC could not decode their file."""
    return _STATE["fallbacks"]


def read_planes(src: decode.VideoSource, num_frames: int, sampling_rate: int,
                rng: np.random.Generator | None = None, *, canvas: tuple[int, int],
                crops: Callable[[int, int], Sequence[transforms.Crop]], start_s: float | None = None,
                end_s: float | None = None, short_side: int | None = None, name: str | None = None,
                **pyav_options) -> decode.PlaneClip:
    """`decode.read_planes` with the frames decoded by NVDEC: the same frames, crops and `PlaneClip`, from the same
    draws of `rng`. `num_decoded` counts the frames NVDEC handed back (the ones it decoded to reach them stay on the
    GPU). A file NVDEC cannot decode is read by `decode.read_planes` (with `pyav_options`), as the module says."""
    label = decode._label(src, name)  # the name PyAV's path gives it in warnings and errors
    picture = decode.first_picture(src, name=name)  # VideoDecodeError for a file PyAV cannot open either
    state = None if rng is None else rng.bit_generator.state
    try:
        return _read(src, picture, num_frames, sampling_rate, rng, canvas, crops, start_s, end_s, short_side, label)
    except _NotHere as err:
        reason = str(err)
    except decode.VideoDecodeError:
        raise
    except Exception as err:  # PyNvVideoCodec's RuntimeError / ValueError on a stream its engine does not take
        reason = f"NVDEC failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        _LOCAL.decoder = _LOCAL.source = None  # a decoder that failed mid-stream is not reused
    _STATE["fallbacks"] += 1
    (logger.debug if _STATE["warned"] else logger.warning)(
        "video %s: %s; decoding it with PyAV (config.data.decoder=pyav) instead (named once per process)",
        label, reason)
    _STATE["warned"] = True
    if state is not None:
        rng.bit_generator.state = state  # the draws the PyAV path makes, from the start
    return decode.read_planes(src, num_frames, sampling_rate, rng, canvas=canvas, crops=crops, start_s=start_s,
                              end_s=end_s, short_side=short_side, name=name, **pyav_options)


class _NotHere(Exception):
    """A stream NVDEC is not given (what it is, in the message)."""


# Codecs NVDEC decodes (as FFmpeg names them); an engine may still lack one, and then it raises and PyAV decodes.
_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "vc1"})


def _read(src, picture: decode.FirstPicture, num_frames: int, sampling_rate: int, rng, canvas, crops, start_s,
          end_s, short_side, label: str) -> decode.PlaneClip:
    height, width = picture.coded
    if not {"mov", "mp4"} & set(picture.container.split(",")):
        raise _NotHere(f"NVDEC finds frames by index exactly only in MP4/MOV files (in a Matroska file it gave the "
                       f"next frame's picture), and this one is {picture.container}")
    if picture.codec not in _CODECS:
        raise _NotHere(f"NVDEC has no {picture.codec} decoder")
    if not picture.planar_420:
        raise _NotHere("its pictures are not 8-bit 4:2:0")
    if height % 2 or width % 2:
        raise _NotHere(f"its coded size {width}x{height} is odd")
    decoder = _decoder(src)
    count = len(decoder)
    if count != picture.num_frames:
        raise _NotHere(f"NVDEC counts {count} frames where the container says {picture.num_frames}")
    indices = decode.sample_frames(picture.num_frames, picture.fps, num_frames, sampling_rate, rng,
                                   start_s=start_s, end_s=end_s, name=label)
    wanted = sorted({int(i) for i in indices})
    frames = decoder.get_batch_frames_by_index(wanted)
    if len(frames) != len(wanted):
        raise _NotHere(f"NVDEC gave {len(frames)} of the {len(wanted)} frames asked for")
    nv12 = {index: _host_nv12(frame, height, width) for index, frame in zip(wanted, frames, strict=True)}
    return clip_of(picture, indices, nv12, canvas, crops, short_side)


def clip_of(picture: decode.FirstPicture, indices: np.ndarray, nv12: dict[int, np.ndarray],
            canvas: tuple[int, int], crops: Callable[[int, int], Sequence[transforms.Crop]],
            short_side: int | None) -> decode.PlaneClip:
    """The `PlaneClip` of a clip's sampled frame `indices`, given each index's decoded NV12 picture (luma rows, then
    chroma rows of interleaved u, v; `picture.coded` in size, before its rotation), cut by `decode.cut_planes`."""
    pictures = {index: nv12_planes(array, picture.quarter_turns) for index, array in nv12.items()}
    keys = [int(i) for i in indices]
    *planes, scaled = decode.cut_planes(keys, lambda t: pictures[keys[t]], picture.coded, picture.quarter_turns,
                                        picture.colour, short_side, crops, canvas)
    fps = float(picture.fps)
    return decode.PlaneClip(*planes, scaled=scaled, indices=np.asarray(indices, np.int64), fps=fps,
                            start_s=int(indices[0]) / fps, end_s=(int(indices[-1]) + 1) / fps,
                            num_decoded=len(nv12))


def _decoder(src):
    """This thread's `SimpleDecoder` on `src` (NV12 frames in host memory, on the first GPU): its cached one moved to
    this file, or a new one (always for encoded bytes)."""
    nvc = _import()
    options = dict(gpu_id=0, use_device_memory=False, output_color_type=nvc.OutputColorType.NATIVE,
                   max_width=_MAX_SIZE, max_height=_MAX_SIZE)
    if isinstance(src, bytes | bytearray | memoryview):
        return nvc.SimpleDecoder(bytes(src), **options)
    path = os.path.expanduser(os.fspath(src))
    decoder = getattr(_LOCAL, "decoder", None)
    if decoder is None:
        decoder = nvc.SimpleDecoder(path, **options)
    elif _LOCAL.source != path:
        try:
            decoder.reconfigure_decoder(path)
        except Exception:  # a stream the cached sessions cannot be moved to: a decoder of its own
            decoder = nvc.SimpleDecoder(path, **options)
    _LOCAL.decoder, _LOCAL.source = decoder, path
    return decoder


def _host_nv12(frame, height: int, width: int) -> np.ndarray:
    """A copy of a decoded NV12 frame of `height` x `width` pixels in host memory, (height * 3 / 2, width) uint8."""
    size = height * width * 3 // 2
    got = int(frame.framesize())
    if got != size:
        raise _NotHere(f"NVDEC gave a {got}-byte frame where {width}x{height} NV12 is {size}")
    pointer = ctypes.cast(frame.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8))
    # A copy: the decoder reuses its buffers on the next call.
    return np.ctypeslib.as_array(pointer, shape=(size,)).copy().reshape(height * 3 // 2, width)


def nv12_planes(nv12: np.ndarray, quarter_turns: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upright (y, u, v) views of an NV12 picture (rows of luma, then half as many rows of interleaved u, v samples)
    turned `quarter_turns` times counter-clockwise, as `decode.upright_planes` gives a PyAV frame's."""
    height = nv12.shape[0] * 2 // 3
    chroma = nv12[height:].reshape(height // 2, nv12.shape[1] // 2, 2)
    planes = (nv12[:height], chroma[..., 0], chroma[..., 1])
    return tuple(np.rot90(plane, quarter_turns) for plane in planes) if quarter_turns else planes
