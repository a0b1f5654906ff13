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
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import av
import grain
import numpy as np
from absl import app, flags
from PIL import Image

from vidjax import cli
from vidjax.data import decode, encode, transforms

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
    for i in range(num_videos):
        path = os.path.join(folder, f"bench_{width}x{height}_{fps}fps_{seconds:g}s_gop{gop}_{i:03d}.mp4")
        if not os.path.exists(path):  # written under a temporary name: an interrupted run leaves no half file
            _encode(path, seed=i, num_frames=round(seconds * fps), fps=fps, width=width, height=height, gop=gop)
        paths.append(path)
    return paths


def _encode(path: str, seed: int, num_frames: int, fps: int, width: int, height: int, gop: int) -> None:
    rng = np.random.default_rng(seed)
    pad = max(width, height) // 4
    # A smooth random texture, larger than the frame, that the camera pans across, plus a block moving over it.
    coarse = rng.integers(0, 256, ((height + 2 * pad) // 8, (width + 2 * pad) // 8, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((width + 2 * pad, height + 2 * pad),
                                                        Image.Resampling.BICUBIC))
    block = height // 6

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
    if workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(ds)
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
           "cpus": len(os.sched_getaffinity(0))}
    if "naive" in clips_per_s:
        out["speedup_vs_naive"] = {
            method: {n: round(v / clips_per_s["naive"][n], 2) for n, v in per_worker.items()}
            for method, per_worker in clips_per_s.items() if method != "naive"}
    return out


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


def define_flags() -> None:
    """The command line, defined only when this module is the program: `vidjax.bench` (importable in the same
    process, e.g. by tests) defines flags of the same names."""
    flags.DEFINE_string("dir", os.path.join(os.environ.get("TMPDIR", "/tmp"), "vidjax_data_bench"),
                        "Folder for the generated videos (reused across runs).")
    flags.DEFINE_integer("videos", 8, "Number of videos.")
    flags.DEFINE_float("seconds", 10.0, "Length of each video.")
    flags.DEFINE_integer("fps", 30, "Frame rate of the videos.")
    flags.DEFINE_integer("width", 640, "Frame width.")
    flags.DEFINE_integer("height", 360, "Frame height.")
    flags.DEFINE_integer("gop", 60, "Frames between keyframes (x264 may add more at scene cuts).")
    flags.DEFINE_integer("frames", 16, "Frames per clip.")
    flags.DEFINE_integer("sampling_rate", 4, "Frames between sampled frames.")
    flags.DEFINE_integer("short_side", 256, "Short side after resizing.")
    flags.DEFINE_integer("crop", 224, "Random crop size.")
    flags.DEFINE_integer("clips", 64, "Timed clips per method and worker count (after warm-up).")
    flags.DEFINE_list("workers", ["1", "2"], "Grain worker counts to time (0 = in this process).")
    flags.DEFINE_integer("read_threads", 1, "grain.ReadOptions.num_threads: clips each process (worker, "
                         "or this one with 0 workers) decodes concurrently.")
    flags.DEFINE_list("methods", list(METHODS), "Methods to time.")
    flags.DEFINE_integer("seed", 0, "Seed of the clip sampling.")


def main(argv: list[str]) -> None:
    opts = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    start = time.perf_counter()
    paths = make_videos(opts.dir, opts.videos, opts.seconds, opts.fps, opts.width, opts.height, opts.gop)
    print(f"{len(paths)} videos in {opts.dir} ({time.perf_counter() - start:.1f} s to make or find)")
    recipe = Recipe(opts.frames, opts.sampling_rate, opts.short_side, opts.crop)
    result = run(paths, recipe, opts.methods, [int(n) for n in opts.workers], opts.clips, opts.read_threads,
                 opts.seed)
    print(format_table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
