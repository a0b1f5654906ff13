"""Data-loading benchmark: vidjax's seeking decoder against a naive decode-every-frame loop, in grain workers.

  python -m vidjax.data.bench --dir=/tmp/vidjax_bench --workers=1,2

Writes --videos H.264 mp4 files shaped like real uploads (default 10 s, 30 fps, 640x360, a keyframe every 2 s,
B-frames, CRF 23, a panning texture with a moving block so the encoder does real work) into --dir, once: later
runs reuse them. Then times clips/s of the VideoMAE Kinetics-400 training recipe (16 frames at sampling rate 4
from a random window, short side resized to 256, random 224 crop, random flip) through the input pipeline's
path, `grain.MapDataset.source(...).shuffle().repeat().random_map(...).to_iter_dataset().mp_prefetch(workers)`,
for each method and worker count, side by side in one run:

  naive      open the file, decode every frame to RGB, index the clip, resize, crop, flip (the simple loop).
  seek       `decode.read_clip(skip_nonref=False)` (seek to the keyframe before the clip, decode every frame up
             to its last one, convert only the sampled frames), then the same `transforms` resize, crop and flip.
  seek_sws   as seek, with the resize done in the colour conversion (`read_clip(short_side=...)`).
  seek_skip  as seek_sws, also leaving undecoded the non-reference frames (most B-frames) that are not sampled
             (`read_clip`'s default, `skip_nonref=True`): the same frames, fewer decoded.

Prints a table, then one JSON line: clips_per_s[method][workers], speedup_vs_naive[method][workers] (from
clips/s), cpu_ms_per_clip[method][workers] (CPU time of the per-clip work, which, unlike clips/s, does not depend
on what else the machine runs) and the mean frames decoded per clip by each method (the work seeking and
skipping save).

With --config, it times the trainer's whole input path instead, per core, against the loaders people use:

  python -m vidjax.data.bench --config=configs/videomae_k400.py --config.data.short_side=256 \
      --num_samples=1,4 --compare=decord,torchcodec --workers=2 --rounds=2

The recipe's data settings (frames, sampling rate, short side, crop, flip, masks) run on the bench's files through
`pipeline.make_dataset` exactly as training does: source, shuffle, decode, crops, repeated sampling
(`config.data.num_samples`), tube masks, batching of --batch clips, grain's worker processes, then
`sharding.global_batch` onto the mesh, waited on until the arrays are on the devices. Each loader named in
--compare runs the same recipe through the same path with only the decode replaced (`DecordPreprocess`:
VideoMAE's loader, `decord.VideoReader(num_threads=1)` + `get_batch` of the sampled indices, then the same resize,
crop, flip and masks; `TorchcodecPreprocess` likewise), the same worker count and files, in alternating rounds
(--rounds; the median is reported). Per (loader, num_samples, workers): clips/s delivered, the CPU seconds every
process of the tree spent meanwhile (this one, grain's workers; from /proc), and from them CPU ms per delivered
clip, clips/s per core used, cores used and the bytes sent per clip. vidjax's ratio to each loader is of clips/s.
`--compare=vidjax_device` adds vidjax's own path with the pixels made on the device (`config.data.pixels=device`:
the workers send the decoded planes of the crops' region, the step converts and crops them; every other loader runs
with `pixels=host`); its rows add the device's share, `batch_crops` timed on the delivered batch in the model's
compute dtype (device ms per clip), and the other loaders' rows its ratio to them (`vidjax_device_speedup`).
`--compare=vidjax_nvdec` adds the same device-pixel path with its planes decoded by the GPU's video engine
(`config.data.decoder=nvdec`, `vidjax.data.nvdec`; on a host with an NVIDIA GPU and `pip install 'vidjax[nvdec]'`).
With --test_clips=K it times the evaluation views' decode instead, in this process: each video's K test clips
(config.data.test_num_clips) read one window at a time against `decode.read_clips` (one open, one pass over the
windows), alternating --rounds; CPU ms and frames decoded per video:

  python -m vidjax.data.bench --test_clips=5 --rounds=4

Optional extras: `pip install decord` (or `eva-decord`), `pip install torchcodec` (with torch and FFmpeg's shared
libraries); a loader that does not import is reported as missing, with that command, and the rest run.

The command line is checked before anything is written (`check_flags`): a value the bench cannot run (no videos, an
odd frame size, a --dir that is a file, a negative worker count, --compare of a loader it does not know) and a flag
the chosen benchmark would ignore (--num_samples or --compare without --config, --workers with --test_clips) are one
`error:` line naming the flag and the fix, exit status 2. Interrupted (Ctrl-C, SIGTERM), it says which videos in
--dir it keeps (a rerun reuses them) and exits 130 / 143; grain's workers ignore the signal (vidjax/data/bench.py)
and are stopped by this process, their shared memory released.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import os
import statistics
import time
from typing import NoReturn

import av
import grain
import numpy as np
from absl import app, flags
from ml_collections.config_flags import config_flags
from PIL import Image

from vidjax import cli, config_lib, fileio
from vidjax.data import decode, encode, nvdec, pipeline, transforms

METHODS = ("naive", "seek", "seek_sws", "seek_skip")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What each clip is: `num_frames` frames `sampling_rate` apart, short side resized, random crop, flip."""

    num_frames: int = 16
    sampling_rate: int = 4
    short_side: int = 256
    crop: int = 224


def make_videos(folder: str, num_videos: int, seconds: float = 10.0, fps: int = 30, width: int = 640,
                height: int = 360, gop: int = 60) -> list[str]:
    """Paths of `num_videos` synthetic H.264 mp4 files in `folder`, encoding those not already there."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, path in enumerate(video_paths(folder, num_videos, seconds, fps, width, height, gop)):
        if not os.path.exists(path):  # written under a temporary name: an interrupted run leaves no half file
            try:
                _encode(path, seed=i, num_frames=round(seconds * fps), fps=fps, width=width, height=height, gop=gop)
            except BaseException:  # an interruption (or a failure) mid-file: the finished files are what is kept
                with contextlib.suppress(OSError):
                    os.remove(f"{path}.partial.mp4")  # encode.write_mp4's temporary name
                raise
        paths.append(path)
    return paths


def video_paths(folder: str, num_videos: int, seconds: float = 10.0, fps: int = 30, width: int = 640,
                height: int = 360, gop: int = 60) -> list[str]:
    """The names `make_videos` gives its files (their settings in the name: a file is reused only as it was made)."""
    return [os.path.join(folder, f"bench_{width}x{height}_{fps}fps_{seconds:g}s_gop{gop}_{i:03d}.mp4")
            for i in range(num_videos)]


def _encode(path: str, seed: int, num_frames: int, fps: int, width: int, height: int, gop: int) -> None:
    rng = np.random.default_rng(seed)
    pad = max(width, height) // 4
    # A smooth random texture, larger than the frame, that the camera pans across, plus a block moving over it.
    coarse = rng.integers(0, 256, ((height + 2 * pad) // 8, (width + 2 * pad) // 8, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width + 2 * pad, height + 2 * pad),
                                                        Image.Resampling.BICUBIC))
    block = min(width, height) // 6

    def frames():
        for t in range(num_frames):
            phase = 2 * np.pi * t / num_frames
            dy, dx = int(pad * (1 + np.sin(phase + seed))), int(pad * (1 + np.sin(2 * phase)))
            image = texture[dy : dy + height, dx : dx + width].copy()
            y, x = (3 * t) % (height - block), (7 * t) % (width - block)
            image[y : y + block, x : x + block] = (255, (5 * t) % 256, 40)
            yield image

    encode.write_mp4(path, frames(), fps, gop=gop, crf=23, preset="medium")


def naive_decode(path: str, num_frames: int, sampling_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The simple loop: every frame decoded and converted to RGB, then the clip indexed. Returns (clip, frames
    decoded)."""
    with av.open(path) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    indices = decode.sample_indices(len(frames), num_frames, sampling_rate, rng)
    return np.stack([frames[i] for i in indices]), len(frames)


class PathSource:
    """Grain random-access source over video paths."""

    def __init__(self, paths: list[str]):
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict:
        return {"path": self._paths[index], "index": np.int64(index)}

    def __repr__(self) -> str:
        return f"PathSource({self._paths!r})"


@dataclasses.dataclass(frozen=True)
class LoadClip:
    """The per-element work timed: decode a clip by `method`, then resize, random crop and flip."""

    method: str
    recipe: Recipe

    def __call__(self, element: dict, rng: np.random.Generator) -> dict:
        r = self.recipe
        # CPU time of this thread (decoding runs in it with threads=1): the clip's cost, unlike wall time
        # independent of what else runs on the machine.
        cpu_start = time.thread_time()
        if self.method == "naive":
            video, num_decoded = naive_decode(element["path"], r.num_frames, r.sampling_rate, rng)
            video = transforms.resize_short_side(video, r.short_side)
        elif self.method == "seek":
            clip = decode.read_clip(element["path"], r.num_frames, r.sampling_rate, rng, skip_nonref=False)
            video, num_decoded = transforms.resize_short_side(clip.frames, r.short_side), clip.num_decoded
        elif self.method in ("seek_sws", "seek_skip"):
            clip = decode.read_clip(element["path"], r.num_frames, r.sampling_rate, rng, short_side=r.short_side,
                                    skip_nonref=self.method == "seek_skip")
            video, num_decoded = clip.frames, clip.num_decoded
        else:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        video = transforms.random_flip(transforms.random_crop(video, r.crop, rng), rng)
        video = np.ascontiguousarray(video)
        return {"video": video, "index": element["index"], "num_decoded": np.int64(num_decoded),
                "cpu_s": np.float64(time.thread_time() - cpu_start)}


def time_method(paths: list[str], method: str, recipe: Recipe, workers: int, clips: int, read_threads: int = 1,
                seed: int = 0) -> dict:
    """Clips/s and mean frames decoded per clip of `method` through grain with `workers` worker processes, each
    running `read_threads` element threads."""
    ds = grain.MapDataset.source(PathSource(paths)).shuffle(seed=seed).repeat()
    # grain's default ReadOptions (16 threads, 500 elements ahead) would fill a buffer during the warm-up and
    # time that buffer instead of the decoding; a buffer of two elements per thread keeps the timing steady-state.
    read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)
    ds = ds.random_map(LoadClip(method, recipe), seed=seed).to_iter_dataset(read_options)
    iterator = iter(pipeline.in_workers(ds, workers))  # the input path's workers, their shared memory released
    try:
        # Warm-up: worker start-up and imports are not the steady state being measured.
        for _ in range(max(2, 2 * workers)):
            next(iterator)
        decoded, cpu_s = 0, 0.0
        start = time.perf_counter()
        for _ in range(clips):
            element = next(iterator)
            decoded += int(element["num_decoded"])
            cpu_s += float(element["cpu_s"])
            shape = element["video"].shape
        elapsed = time.perf_counter() - start
    finally:
        iterator.close()
    expected = (recipe.num_frames, recipe.crop, recipe.crop, 3)
    if shape != expected:
        raise AssertionError(f"{method} produced clips of shape {shape}, expected {expected}")
    return {"clips_per_s": clips / elapsed, "frames_decoded_per_clip": decoded / clips,
            "cpu_ms_per_clip": 1000 * cpu_s / clips}


def run(paths: list[str], recipe: Recipe, methods: list[str], workers: list[int], clips: int, read_threads: int = 1,
        seed: int = 0) -> dict:
    """Times every method at every worker count; the result is the JSON line's content."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected some of {METHODS}")
    clips_per_s: dict[str, dict[str, float]] = {}
    cpu_ms: dict[str, dict[str, float]] = {}
    decoded: dict[str, float] = {}
    for n in workers:
        for method in methods:
            result = time_method(paths, method, recipe, n, clips, read_threads, seed)
            clips_per_s.setdefault(method, {})[str(n)] = round(result["clips_per_s"], 3)
            cpu_ms.setdefault(method, {})[str(n)] = round(result["cpu_ms_per_clip"], 1)
            decoded[method] = round(result["frames_decoded_per_clip"], 1)
    out = {"clips_per_s": clips_per_s, "cpu_ms_per_clip": cpu_ms, "frames_decoded_per_clip": decoded,
           "recipe": dataclasses.asdict(recipe), "videos": len(paths), "clips": clips, "read_threads": read_threads,
           "cpus": config_lib.host_cpus()}
    if "naive" in clips_per_s:
        out["speedup_vs_naive"] = {
            method: {n: round(v / clips_per_s["naive"][n], 2) for n, v in per_worker.items()}
            for method, per_worker in clips_per_s.items() if method != "naive"}
    return out


def run_test_clips(paths: list[str], recipe: Recipe, num_clips: int, rounds: int = 2) -> dict:
    """The evaluation views' decode, in this process: each video's `num_clips` test clips (evenly spaced windows,
    resized to the short side) read one window at a time (`read_clip(num_windows=, window_index=)` per window, one
    open and seek each) against together (`decode.read_clips`: one open, one pass over windows close together), in
    `rounds` alternating rounds over every video. Per way: CPU ms per video (median over rounds) and frames decoded
    per video. The result is the JSON line's content."""
    def alone(path: str) -> int:
        return sum(decode.read_clip(path, recipe.num_frames, recipe.sampling_rate, num_windows=num_clips,
                                    window_index=i, short_side=recipe.short_side).num_decoded
                   for i in range(num_clips))

    def together(path: str) -> int:
        return decode.read_clips(path, recipe.num_frames, recipe.sampling_rate, num_clips,
                                 short_side=recipe.short_side).num_decoded

    ways = {"one_by_one": alone, "together": together}
    cpu_ms: dict[str, list[float]] = {way: [] for way in ways}
    decoded: dict[str, float] = {}
    for r in range(rounds):
        for way in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            start = time.process_time()
            frames = sum(ways[way](path) for path in paths)
            cpu_ms[way].append(1000 * (time.process_time() - start) / len(paths))
            decoded[way] = round(frames / len(paths), 1)
    medians = {way: round(statistics.median(v), 1) for way, v in cpu_ms.items()}
    return {"test_clips": num_clips, "cpu_ms_per_video": medians,
            "cpu_ms_per_video_each_round": {way: [round(x, 1) for x in v] for way, v in cpu_ms.items()},
            "frames_decoded_per_video": decoded, "speedup": round(medians["one_by_one"] / medians["together"], 2),
            "recipe": dataclasses.asdict(recipe), "videos": len(paths), "rounds": rounds}


def format_test_clips_table(result: dict) -> str:
    lines = [f"{result['test_clips']} test clips a video", f"{'way':<11} {'CPU ms/video':>12} {'frames decoded':>15}"]
    for way, ms in result["cpu_ms_per_video"].items():
        lines.append(f"{way:<11} {ms:>12.1f} {result['frames_decoded_per_video'][way]:>15.1f}")
    lines.append(f"together is {result['speedup']:.2f}x one by one")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The trainer's whole input path, per core, against other loaders.

# "vidjax_device": vidjax's path with config.data.pixels="device" (the planes of the crops' region sent, the pixels
# made in the step); the others convert and crop on the host (config.data.pixels="host").
# "vidjax_nvdec": the device-pixel path with its planes decoded by the GPU's video engine (config.data.decoder="nvdec").
LOADERS = ("vidjax", "vidjax_device", "vidjax_nvdec", "decord", "torchcodec")
_INSTALL = {"decord": "pip install decord (or eva-decord)",
            "torchcodec": "pip install torchcodec (it needs torch and FFmpeg's shared libraries)"}


def tree_cpu_seconds(pid: int | None = None) -> float | None:
    """CPU seconds (user + system) that process `pid` (this one) and every process below it have used, from /proc:
    the work of grain's worker processes included, which the process's own clock does not see. None off Linux."""
    if not os.path.isdir("/proc/self"):
        return None
    root = os.getpid() if pid is None else pid
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # ended while listed
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = int(fields[11]) + int(fields[12])
    below = {root}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in below and child not in below:
                below.add(child)
                grew = True
    return sum(cpu.get(p, 0) for p in below) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class _OtherDecoder(pipeline.Preprocess, abc.ABC):
    """`pipeline.Preprocess` with the training clip's decode done by another library: the frames at
    `decode.sample_indices` of the video's frame count (the same draw), resized to the short side, then the same
    crops, flips, erasing and masks (`Preprocess.train_crops`, `erased`), cut from the resized frames (decode, then
    crop). The bench's files carry no time spans, so the clip's window is not reported."""

    @abc.abstractmethod
    def _frames(self, path: str, indices_of) -> np.ndarray:
        """uint8 (T, H, W, 3) frames of `path` at `indices_of(number of frames)`."""

    def _decode_cropped(self, src, name, start_s, end_s, rng):
        d = self.data
        frames = self._frames(src, lambda count: decode.sample_indices(count, d.num_frames, d.sampling_rate, rng))
        frames = transforms.resize_short_side(frames, d.short_side or d.image_size)
        crops, generators = self.train_crops(rng, *frames.shape[1:3])
        clips = np.stack([transforms.apply_crop(frames, crop) for crop in crops])
        return self.erased(clips, generators), (np.nan, np.nan)


@dataclasses.dataclass(frozen=True)
class DecordPreprocess(_OtherDecoder):
    """VideoMAE's (and VideoMAE V2's) loader: `decord.VideoReader(path, num_threads=1)`, `get_batch` of the sampled
    indices. With `sizes` ((path, (height, width)) pairs: each video's size after the short-side resize) decord
    resizes in its decoder, as VideoMAE's fine-tuning loader asks it to (`VideoReader(width=, height=)`); without,
    it decodes at full size and PIL resizes, as its pre-training loader's frames would be."""

    sizes: tuple = ()

    def _frames(self, path, indices_of):
        import decord  # optional extra: the comparison only

        size = dict(self.sizes).get(path)
        reader = (decord.VideoReader(path, num_threads=1) if size is None else
                  decord.VideoReader(path, width=size[1], height=size[0], num_threads=1))
        return reader.get_batch(list(indices_of(len(reader)))).asnumpy()


@dataclasses.dataclass(frozen=True)
class TorchcodecPreprocess(_OtherDecoder):
    """PyTorch's decoder: `torchcodec.decoders.VideoDecoder(path, num_ffmpeg_threads=1, dimension_order="NHWC")`,
    `get_frames_at` the sampled indices."""

    def _frames(self, path, indices_of):
        from torchcodec.decoders import VideoDecoder  # optional extra: the comparison only

        decoder = VideoDecoder(path, num_ffmpeg_threads=1, dimension_order="NHWC")
        indices = [int(i) for i in indices_of(decoder.metadata.num_frames)]
        return decoder.get_frames_at(indices).data.numpy()


def missing_loader(loader: str) -> str | None:
    """Why `loader` cannot run here (with the command that installs it), or None."""
    if loader == "vidjax_nvdec":
        return nvdec.problem()
    try:
        if loader == "decord":
            import decord  # noqa: F401  optional extra
        elif loader == "torchcodec":
            import torchcodec.decoders  # noqa: F401  optional extra
    except Exception as err:  # ImportError, or torchcodec's OSError/RuntimeError when FFmpeg's libraries are missing
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120]} ({_INSTALL[loader]})"
    return None


def path_config(config, paths: list[str], folder: str, *, num_samples: int, workers: int, batch: int,
                pixels: str = "host", decoder: str = "pyav"):
    """`config` pointed at the bench's files (a `path label` list in `folder`) with the given repeated sampling,
    worker count, per-host batch of clips, pixel path and decoder; the recipe's frames, sampling rate, sizes, crop
    and flip are kept."""
    # Each video listed several times (each entry a clip from a random window): an epoch then holds whole batches
    # of videos, and a pre-training eval split (trimmed to whole batches) is not empty.
    repeats = -(-4 * batch // len(paths))
    listing = os.path.join(folder, f"bench_list_{len(paths)}x{repeats}.txt")
    if not os.path.exists(listing):
        text = "".join(f"{os.path.abspath(p)} {i % 2}\n" for _ in range(repeats) for i, p in enumerate(paths))
        with open(listing + ".tmp", "w") as f:
            f.write(text)
        os.replace(listing + ".tmp", listing)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.update(source="csv", train_csv=listing, eval_csv=listing, root="", num_classes=2,
                           num_samples=num_samples, num_workers=workers, skip_missing=False, pixels=pixels,
                           decoder=decoder)
        config.batch_size = batch
        config.init_from = ""
    return config


def time_path(config, source, spec, mesh, preprocess_type, clips: int) -> dict:
    """Clips/s and CPU of the whole input path: batches of `config.batch_size` clips from `pipeline.make_dataset`
    (given the task's `pipeline.InputSpec`, `spec`, masks included), made global arrays on `mesh` and waited on.
    The CPU is every process of the tree's, over the timed batches."""
    import jax  # the device side: not needed by the decoder comparison

    from vidjax import sharding  # loads jax: here for the same reason

    batch_sh = sharding.batch_sharding(mesh)
    dataset = pipeline.make_dataset(config, "train", source, spec, preprocess_type=preprocess_type)
    iterator = iter(dataset)
    batches = max(1, -(-clips // config.batch_size))
    try:
        # Warm-up: worker start-up, imports and the first buffers are not the steady state being measured.
        for _ in range(max(2, 2 * config.data.num_workers)):
            jax.block_until_ready(sharding.global_batch(next(iterator), batch_sh))
        cpu_start, start = tree_cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            batch = sharding.global_batch(next(iterator), batch_sh)
            jax.block_until_ready(batch)
        elapsed = time.perf_counter() - start
        cpu_end = tree_cpu_seconds()
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    delivered = batches * config.batch_size
    out = {"clips_per_s": delivered / elapsed, "clips": delivered,
           "bytes_per_clip": sum(value.nbytes for value in batch.values()) / config.batch_size}
    if "video" in batch:
        shape = tuple(batch["video"].shape[1:])
        expected = (config.data.num_frames, config.data.image_size, config.data.image_size, 3)
        if shape != expected or batch["video"].shape[0] != config.batch_size:
            raise AssertionError(f"the path delivered videos of shape {batch['video'].shape}, expected "
                                 f"({config.batch_size}, {', '.join(map(str, expected))})")
    else:  # device pixels: the step's share of the work, timed on this device's own batch
        out.update(device_pixel_time(batch, config.data.image_size, config.batch_size,
                                     config.model.get("dtype", "float32")))
    if cpu_start is not None:
        cpu = max(cpu_end - cpu_start, 1e-9)
        out.update(cpu_ms_per_clip=1000 * cpu / delivered, clips_per_s_per_core=delivered / cpu,
                   cores_used=cpu / elapsed)
    return out


def device_pixel_time(batch: dict, size: int, clips: int, dtype: str = "float32", repeats: int = 5) -> dict:
    """The device's pixel work for a device-pixel `batch` (global arrays): `vidjax.ops.pixels.batch_crops` jitted
    with `dtype` products (the model's compute dtype, as the train step does), the median of `repeats` calls after
    one warm-up, in ms per batch and per clip; and a check that it gives the batch's `clips` clips of `size`."""
    import jax  # the device side: not needed by the decoder comparison

    from vidjax.ops import pixels  # loads jax: here for the same reason

    crops = jax.jit(pixels.batch_crops, static_argnums=(1, 2, 3))
    planes = {key: batch[key] for key in pixels.PLANE_KEYS}
    out = jax.block_until_ready(crops(planes, size, size, dtype))
    if out.shape[0] != clips or out.shape[2:] != (size, size, 3):
        raise AssertionError(f"the device cut clips of shape {out.shape}, expected ({clips}, T, {size}, {size}, 3)")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(crops(planes, size, size, dtype))
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    return {"device_ms_per_batch": ms, "device_ms_per_clip": ms / clips}


def run_path(config, paths: list[str], folder: str, *, loaders: list[str], num_samples: list[int],
             workers: list[int], batch: int, clips: int, rounds: int, log=print) -> dict:
    """Every (loader, num_samples, workers) through the trainer's input path, in `rounds` alternating rounds;
    each figure is the median over rounds. The result is the JSON line's content."""
    # The trainer's start-up and the model's token grid: not needed by the decoder comparison.
    import jax
    from flax import nnx

    from vidjax import tasks, train  # the trainer's start-up (jax): not needed by the decoder comparison
    from vidjax.models import ParamKeys, get_model  # the model's token grid: likewise

    for loader in loaders:
        if loader not in LOADERS:
            raise ValueError(f"unknown loader {loader!r}; expected some of {LOADERS}")
    missing = {loader: why for loader in loaders if (why := missing_loader(loader))}
    for loader, why in missing.items():
        log(f"{loader}: not run, {why}")
    loaders = [loader for loader in loaders if loader not in missing]
    base = path_config(config, paths, folder, num_samples=num_samples[0], workers=workers[0], batch=batch)
    base, source, _, mesh = train.prepare(base, explicit_keys=None, devices=jax.local_devices())
    model = get_model(base.model_name)
    with nnx.use_eager_sharding(False):  # as train.build: shapes only, no mesh needed
        abstract = nnx.eval_shape(lambda: model.Model(base.model, rngs=ParamKeys(base.seed)))
    training = tasks.training_of(base.task)
    masks = training.masks(base, abstract)
    short = base.data.short_side or base.data.image_size
    sizes = []
    for path in paths:  # decord resizes in its decoder only when told the size: give it, outside the timing
        info = decode.probe(path)
        h, w = info.height, info.width
        sizes.append((os.path.abspath(path), (short, max(1, round(w * short / h))) if h <= w else
                      (max(1, round(h * short / w)), short)))
    types = {"vidjax": pipeline.Preprocess, "vidjax_device": pipeline.Preprocess, "vidjax_nvdec": pipeline.Preprocess,
             "torchcodec": TorchcodecPreprocess,
             "decord": lambda **kw: DecordPreprocess(sizes=tuple(sizes), **kw)}
    runs: dict[tuple[str, int, int], list[dict]] = {}
    for r in range(rounds):
        for k in num_samples:
            for n in workers:
                order = loaders if r % 2 == 0 else loaders[::-1]  # alternate who goes first
                for loader in order:
                    cfg = path_config(base, paths, folder, num_samples=k, workers=n, batch=batch,
                                      pixels="device" if loader in ("vidjax_device", "vidjax_nvdec") else "host",
                                      decoder="nvdec" if loader == "vidjax_nvdec" else "pyav")
                    result = time_path(cfg, source, training.input_spec(cfg, abstract), mesh, types[loader], clips)
                    runs.setdefault((loader, k, n), []).append(result)
                    log(f"round {r + 1}/{rounds} {loader:<10} num_samples={k} workers={n}: "
                        f"{result['clips_per_s']:.1f} clips/s"
                        + (f", {result['clips_per_s_per_core']:.1f} clips/s per core, "
                           f"{result['cpu_ms_per_clip']:.1f} CPU ms/clip, {result['cores_used']:.2f} cores"
                           if "cpu_ms_per_clip" in result else "")
                        + f", {result['bytes_per_clip'] / 1024:.0f} KiB/clip"
                        + (f", device pixels {result['device_ms_per_clip']:.2f} ms/clip"
                           if "device_ms_per_clip" in result else ""))
    rows = []
    for (loader, k, n), results in runs.items():
        row = {"loader": loader, "num_samples": k, "workers": n, "rounds": len(results)}
        for key in ("clips_per_s", "clips_per_s_per_core", "cpu_ms_per_clip", "cores_used", "bytes_per_clip",
                    "device_ms_per_batch", "device_ms_per_clip"):
            if key in results[0]:
                row[key] = round(statistics.median(res[key] for res in results), 2)
        row["clips_per_s_each_round"] = [round(res["clips_per_s"], 2) for res in results]
        rows.append(row)
    by = {(row["loader"], row["num_samples"], row["workers"]): row for row in rows}
    for row in rows:
        if row["loader"] != "vidjax" and ("vidjax", row["num_samples"], row["workers"]) in by:
            row["vidjax_speedup"] = round(by["vidjax", row["num_samples"], row["workers"]]["clips_per_s"]
                                          / row["clips_per_s"], 2)
        device = ("vidjax_device", row["num_samples"], row["workers"])
        if not row["loader"].startswith("vidjax") and device in by:  # the device-pixel path against this loader
            row["vidjax_device_speedup"] = round(by[device]["clips_per_s"] / row["clips_per_s"], 2)
    d = base.data
    with av.open(paths[0]) as container:  # the files' shape: what the figures are per clip of
        stream = container.streams.video[0]
        files = {"width": stream.width, "height": stream.height, "fps": float(stream.average_rate or 0),
                 "frames": stream.frames, "codec": stream.codec_context.name}
    return {"rows": rows, "missing": missing, "videos": len(paths), "files": files, "batch": batch, "clips": clips,
            "rounds": rounds, "cpus": config_lib.host_cpus(), "devices": mesh.size,
            "platform": mesh.devices.flat[0].platform,
            "recipe": {"config": base.model_name + "/" + base.task, "num_frames": d.num_frames,
                       "sampling_rate": d.sampling_rate, "short_side": short, "crop": d.image_size,
                       "train_crop": d.train_crop, "flip": bool(d.flip), "masks": masks is not None}}


def format_path_table(result: dict) -> str:
    lines = [f"{'loader':<14} {'samples':>7} {'workers':>7} {'clips/s':>9} {'per core':>9} {'CPU ms/clip':>12} "
             f"{'cores':>6} {'KiB/clip':>9} {'device ms/clip':>15} {'vidjax is':>10}"]
    for row in result["rows"]:
        lines.append(f"{row['loader']:<14} {row['num_samples']:>7} {row['workers']:>7} {row['clips_per_s']:>9.1f} "
                     f"{row.get('clips_per_s_per_core', float('nan')):>9.1f} "
                     f"{row.get('cpu_ms_per_clip', float('nan')):>12.1f} {row.get('cores_used', float('nan')):>6.2f} "
                     f"{row['bytes_per_clip'] / 1024:>9.0f} {row.get('device_ms_per_clip', float('nan')):>15.2f} "
                     + (f"{row['vidjax_speedup']:>9.2f}x" if "vidjax_speedup" in row else f"{'':>10}"))
    return "\n".join(lines)


def format_table(result: dict) -> str:
    lines = [f"{'method':<10} {'workers':>7} {'clips/s':>9} {'vs naive':>9} {'CPU ms/clip':>12} "
             f"{'frames decoded/clip':>20}"]
    for method, per_worker in result["clips_per_s"].items():
        for n, value in per_worker.items():
            speedup = result.get("speedup_vs_naive", {}).get(method, {}).get(n, 1.0 if method == "naive" else None)
            shown = "" if speedup is None else f"{speedup:.2f}x"
            lines.append(f"{method:<10} {n:>7} {value:>9.2f} {shown:>9} {result['cpu_ms_per_clip'][method][n]:>12.1f} "
                         f"{result['frames_decoded_per_clip'][method]:>20.1f}")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command line, defined only when this module is the program: `vidjax.bench.step` (importable in the same
    process, e.g. by tests) defines flags of the same names; a test gives its own `flags.FlagValues()`."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("dir", os.path.join(os.environ.get("TMPDIR", "/tmp"), "vidjax_data_bench"),
                        "Folder for the generated videos (reused across runs).", **fv)
    flags.DEFINE_integer("videos", 8, "Number of videos.", **fv)
    flags.DEFINE_float("seconds", 10.0, "Length of each video.", **fv)
    flags.DEFINE_integer("fps", 30, "Frame rate of the videos.", **fv)
    flags.DEFINE_integer("width", 640, "Frame width.", **fv)
    flags.DEFINE_integer("height", 360, "Frame height.", **fv)
    flags.DEFINE_integer("gop", 60, "Frames between keyframes (x264 may add more at scene cuts).", **fv)
    flags.DEFINE_integer("frames", 16, "Frames per clip.", **fv)
    flags.DEFINE_integer("sampling_rate", 4, "Frames between sampled frames.", **fv)
    flags.DEFINE_integer("short_side", 256, "Short side after resizing.", **fv)
    flags.DEFINE_integer("crop", 224, "Random crop size.", **fv)
    flags.DEFINE_integer("clips", 64, "Timed clips per method and worker count (after warm-up).", **fv)
    flags.DEFINE_list("workers", ["1", "2"], "Grain worker counts to time (0 = in this process).", **fv)
    flags.DEFINE_integer("read_threads", 1, "grain.ReadOptions.num_threads: clips each process (worker, "
                         "or this one with 0 workers) decodes concurrently.", **fv)
    flags.DEFINE_list("methods", list(METHODS), "Methods to time.", **fv)
    flags.DEFINE_integer("seed", 0, "Seed of the clip sampling.", **fv)
    config_flags.DEFINE_config_file(
        "config", None, "A recipe (e.g. configs/videomae_k400.py, with --config.KEY=VALUE overrides): time the "
        "trainer's whole input path for it, to device arrays, instead of the decoders alone.", lock_config=True, **fv)
    flags.DEFINE_list("num_samples", ["1"], "With --config: clips cut from each decoded video "
                      "(config.data.num_samples) to time, e.g. 1,4.", **fv)
    flags.DEFINE_list("compare", [], f"With --config: other loaders to run the same recipe through, some of "
                      f"{', '.join(LOADERS[1:])} (vidjax_device: vidjax's path with the pixels made on the device; "
                      f"vidjax_nvdec: the same with the GPU's video decoder; the others are optional extras).", **fv)
    flags.DEFINE_integer("batch", 16, "With --config: clips per batch (this host's share).", **fv)
    flags.DEFINE_integer("rounds", 2, "With --config or --test_clips: alternating rounds; figures are medians over "
                         "them.", **fv)
    flags.DEFINE_integer("test_clips", 0, "Time the evaluation views' decode instead: this many test clips a video "
                         "(config.data.test_num_clips), read one window at a time against `decode.read_clips`, "
                         "in this process, alternating --rounds.", **fv)
    flags.DEFINE_string("json_out", "", "Also write the result (the JSON line) to this file, e.g. for "
                        "`python -m vidjax.bench.matrix --input_bench=FILE` (cores per chip).", **fv)


# Which flags each way of running reads (the rest of the flags, the videos' and --json_out, every way reads): a flag
# given to a way that does not read it is a usage error rather than silently ignored.
_DECODERS_FLAGS = ("frames", "sampling_rate", "short_side", "crop", "clips", "workers", "read_threads", "methods",
                   "seed")
_WAY_FLAGS = {"decoders": _DECODERS_FLAGS,
              "config": ("clips", "workers", "num_samples", "compare", "batch", "rounds"),
              "test_clips": ("frames", "sampling_rate", "short_side", "crop", "rounds", "test_clips")}
_WAY_NAMES = {"decoders": "in the decoder comparison (no --config or --test_clips)", "config": "with --config",
              "test_clips": "with --test_clips"}


def _ints(name: str, values: list[str], minimum: int, example: str) -> list[int]:
    """A comma-list flag's integers, each at least `minimum`; anything else is a usage error naming the flag."""
    try:
        numbers = [int(v) for v in values]
        if numbers and min(numbers) >= minimum:
            return numbers
    except ValueError:
        pass
    raise app.UsageError(f"--{name}={','.join(values)}: give integers of at least {minimum}, e.g. --{name}={example}.")


def _check_folder(name: str, path: str) -> None:
    """--dir: a folder, or a path where one can be made (its nearest existing parent a writable folder)."""
    path = fileio.user_path(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise app.UsageError(f"--{name}={path}: this is a file, not a folder; give a folder for the videos "
                             f"(it is made if missing), e.g. --{name}=/tmp/vidjax_data_bench.")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise app.UsageError(f"--{name}={path}: cannot write there ({parent} is "
                             f"{'not a folder' if not os.path.isdir(parent) else 'not writable'}); give a folder "
                             f"you can write, e.g. --{name}=/tmp/vidjax_data_bench.")


def check_flags(opts=flags.FLAGS) -> str:
    """Checks the command line before anything is written; returns the way it runs ("decoders", "config" or
    "test_clips"). Raises app.UsageError, one line naming the flag and the fix, for a value the bench cannot run
    and for a flag the chosen way would ignore."""
    if opts.config is not None and opts.test_clips:
        raise app.UsageError(f"--config and --test_clips={opts.test_clips} are two different benchmarks; give one.")
    way = "config" if opts.config is not None else "test_clips" if opts.test_clips else "decoders"
    for name in sorted({name for names in _WAY_FLAGS.values() for name in names} - set(_WAY_FLAGS[way])):
        if opts[name].present:
            readers = " or ".join(_WAY_NAMES[w] for w, names in _WAY_FLAGS.items() if name in names)
            raise app.UsageError(f"--{name} applies only {readers}; it would be ignored here: drop it"
                                 + (" or add --config=RECIPE, e.g. --config=configs/videomae_k400.py."
                                    if readers == _WAY_NAMES["config"] else "."))
    if opts.test_clips < 0:
        raise app.UsageError(f"--test_clips={opts.test_clips}: give the number of test clips a video, e.g. "
                             f"--test_clips=5 (0, the default: not this benchmark).")
    _check_folder("dir", opts.dir)
    if opts.json_out and os.path.isdir(fileio.user_path(opts.json_out)):
        raise app.UsageError(f"--json_out={opts.json_out} is a folder; give a file, e.g. --json_out=bench.json.")
    at_least_one = ["videos", "fps", "gop"] + [name for name in ("frames", "sampling_rate", "short_side", "crop",
                                                                  "clips", "read_threads", "batch", "rounds")
                                                if name in _WAY_FLAGS[way]]
    for name in at_least_one:
        if opts[name].value < 1:
            raise app.UsageError(f"--{name}={opts[name].value}: give at least 1 (default {opts[name].default}).")
    if not opts.seconds > 0 or round(opts.seconds * opts.fps) < 1:
        raise app.UsageError(f"--seconds={opts.seconds:g}: the videos need at least one frame at --fps={opts.fps}; "
                             f"give a length in seconds, e.g. --seconds=10.")
    for name in ("width", "height"):
        value = opts[name].value
        if value < 16 or value % 2:
            raise app.UsageError(f"--{name}={value}: give an even size of at least 16 pixels (H.264 in yuv420p "
                                 f"halves the colour planes), e.g. --width=640 --height=360.")
    if way == "decoders":
        if opts.crop > opts.short_side:
            raise app.UsageError(f"--crop={opts.crop} is larger than --short_side={opts.short_side}: the crop is "
                                 f"cut from frames resized to that short side; give --crop at most {opts.short_side}.")
        _ints("workers", opts.workers, 0, "0,1,2")
        bad = [m for m in opts.methods if m not in METHODS]
        if bad or not opts.methods:
            raise app.UsageError(f"--methods={','.join(opts.methods)}: give some of {','.join(METHODS)}.")
    elif way == "config":
        _ints("workers", opts.workers, 0, "0,1,2")
        _ints("num_samples", opts.num_samples, 1, "1,4")
        bad = [loader for loader in opts.compare if loader not in LOADERS[1:]]
        if bad:
            raise app.UsageError(f"--compare={','.join(opts.compare)}: {', '.join(bad)} is no loader the bench "
                                 f"knows; give some of {','.join(LOADERS[1:])} (vidjax itself always runs).")
    return way


def main(argv: list[str]) -> int:
    opts = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    way = check_flags(opts)
    start = time.perf_counter()
    folder = fileio.user_path(opts.dir)
    shape = (opts.videos, opts.seconds, opts.fps, opts.width, opts.height, opts.gop)
    kept = None
    interrupted = None
    try:
        paths = make_videos(folder, *shape)
        print(f"{len(paths)} videos in {folder} ({time.perf_counter() - start:.1f} s to make or find)", flush=True)
        kept = (f"the {len(paths)} videos in {folder} are kept (a rerun reuses them, so only the timing runs "
                f"again); no result was written")
        if way == "config":
            result = run_path(opts.config, paths, folder, loaders=["vidjax", *opts.compare],
                              num_samples=[int(k) for k in opts.num_samples], workers=[int(n) for n in opts.workers],
                              batch=opts.batch, clips=opts.clips, rounds=opts.rounds,
                              log=lambda line: print(line, flush=True))
            table = format_path_table(result)
        elif way == "test_clips":
            result = run_test_clips(paths, Recipe(opts.frames, opts.sampling_rate, opts.short_side, opts.crop),
                                    opts.test_clips, opts.rounds)
            table = format_test_clips_table(result)
        else:
            recipe = Recipe(opts.frames, opts.sampling_rate, opts.short_side, opts.crop)
            result = run(paths, recipe, opts.methods, [int(n) for n in opts.workers], opts.clips, opts.read_threads,
                         opts.seed)
            table = format_table(result)
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM (cli.interruptible): grain's workers are closed by now
        interrupted = err
    if interrupted is not None:  # outside the `except`: its traceback (and what the frames hold) can go
        pipeline.release_shared_memory(interrupted)  # before `cli.leave`, which skips the exit's clean-up
        if kept is None:  # while making the videos: the finished ones are kept (a half-written one is removed)
            made = sum(os.path.exists(path) for path in video_paths(folder, *shape))
            kept = (f"{made} of the {opts.videos} videos are made in {folder} and kept; a rerun makes the rest and "
                    f"then runs the timing")
        return cli.stopped(interrupted, kept + ".")
    print(table)
    print(json.dumps(result))
    if opts.json_out:
        with fileio.atomic_output(opts.json_out) as f:
            f.write(json.dumps(result) + "\n")
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.data.bench`: what its entry module calls."""
    define_flags()
    cli.run(main)
