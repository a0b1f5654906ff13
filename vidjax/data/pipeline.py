"""The one input pipeline: source -> shuffle/repeat -> decode + transforms + mask -> per-process slice -> batch.

Built on grain's Dataset API. Every random choice is seeded by (config seed, global element index), so the same config
gives the same batches, and the iterator state saved with a checkpoint resumes mid-epoch exactly. Batches hold
uint8 videos (normalised on the device, which moves a quarter of the bytes of float32), int32 labels, and for
pre-training the bool tube mask (and VideoMAE V2's running-cell decoder mask). Elements that fail to decode are
dropped with a warning, never stopping a run.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import gc
import logging
import math
import mmap
import multiprocessing.util  # noqa: F401  (its exit clean-up registered before `_release_at_exit`'s)
import os
import signal
import threading
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence

import grain
import ml_collections
import numpy as np

from vidjax import cli, platform
from vidjax.config_lib import ConfigError, host_cpus, raise_problems
from vidjax.data import decode, nvdec, sources, synthetic, transforms
from vidjax.data import views as views_lib
from vidjax.models import clip_spec
from vidjax.ops.pixels import PLANE_KEYS
from vidjax.patches import MaskSpec, running_cell_hidden

SPLITS = ("train", "eval")
SOURCES = ("synthetic", "csv", "folder", "charades", "tfds", "array_record")
TRAIN_CROPS = transforms.TRAIN_CROPS

logger = logging.getLogger(__name__)

# Videos this process has warned about: a broken file is named once, not again every epoch (or every eval) it comes
# round; the decode_failures metric still counts each replacement.
_warned_videos: set[str] = set()
_warned_lock = threading.Lock()


def _first_failure(path: str) -> bool:
    """True the first time this process sees `path` fail to decode."""
    with _warned_lock:
        if path in _warned_videos:
            return False
        _warned_videos.add(path)
        return True


def crop_settings(data) -> dict:
    """`transforms.train_crop`'s settings from config.data: the multi-scale crop's scales, the resized crop's area
    and aspect-ratio ranges, the flip."""
    return dict(scales=tuple(data.crop_scales), area=tuple(data.get("resized_crop_area", (0.08, 1.0))),
                ratio=tuple(data.get("resized_crop_ratio", (3 / 4, 4 / 3))), flip=data.flip)


def tube_mask(rng: np.random.Generator, grid: tuple[int, int, int], mask_ratio: float) -> np.ndarray:
    """Bool (t*h*w,) mask, True = masked: int(mask_ratio*h*w) spatial positions masked, the same at every t."""
    t, h, w = grid
    spatial = np.zeros(h * w, dtype=bool)
    spatial[rng.permutation(h * w)[: int(mask_ratio * h * w)]] = True
    return np.tile(spatial, t)




def running_cell_masks(grid: tuple[int, int, int], mask_ratio: float = 0.5) -> np.ndarray:
    """Every phase of VideoMAE V2's running-cell decoder mask: bool (4, t*h*w), True = not decoded.

    Each 2x2 cell of a frame hides its first int(4*mask_ratio) positions in the cell's (row-major) order, rotated
    by one place per time index, so every frame hides the same count and each position is hidden in turn; a mask is
    one of the 4 starting phases (the official `RunningCellMaskingGenerator`'s precomputed masks).
    """
    return _running_cell_phases(tuple(int(v) for v in grid), float(mask_ratio)).copy()


def running_cell_mask(rng: np.random.Generator, grid: tuple[int, int, int], mask_ratio: float = 0.5) -> np.ndarray:
    """Bool (t*h*w,) running-cell decoder mask, True = not decoded: one of `running_cell_masks`, drawn with `rng`."""
    phases = _running_cell_phases(tuple(int(v) for v in grid), float(mask_ratio))
    return phases[rng.integers(len(phases))].copy()


@functools.lru_cache(maxsize=16)
def _running_cell_phases(grid: tuple[int, int, int], mask_ratio: float) -> np.ndarray:
    t, h, w = grid
    hidden = running_cell_hidden(grid, mask_ratio)
    cell = np.arange(4) < hidden  # the cell's queue: `hidden` Trues, then Falses
    phases = np.stack([np.stack([np.tile(np.roll(cell, -(start + i + 1)).reshape(2, 2), (h // 2, w // 2)).reshape(-1)
                                 for i in range(t)]).reshape(-1) for start in range(4)])
    phases.setflags(write=False)
    return phases


def _wrap(key: str, build):
    """Source errors (missing lists, bad lines, missing videos) as one ConfigError naming the setting."""
    try:
        return build()
    except FileNotFoundError as err:
        raise ConfigError(f"{err} (config.data.{key}; the flag to skip them is --config.data.skip_missing=True)"
                          ) from err
    except ValueError as err:
        raise ConfigError(f"{err} (config.data.{key})") from err


def make_source(data: ml_collections.ConfigDict, split: str, class_names: Sequence[str] | None = None):
    """The random-access source of one split, with an error naming the setting to fix when data is missing.

    config.data.num_classes 0 means "the data's own count" (`resolve_num_classes`): the embedded dataset's 8
    classes, Charades' 157, or what class folders, a names file or a list's labels show. `class_names` orders the
    class folders of a folder source (no class names file): give the training split's names to the eval split, or
    a checkpoint's, so that a folder missing from one split cannot shift the labels of the others.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    train = split == "train"
    if data.source == "synthetic":
        raise_problems([problem for problem in [_synthetic_variant_problem(data)] if problem])
        return synthetic.SyntheticVideoSource(
            # A clip window: num_frames at sampling_rate (1 in the runlocal recipes: the clip itself).
            num_examples=data.num_train if train else data.num_eval, num_frames=data.num_frames * data.sampling_rate,
            height=data.image_size, width=data.image_size, num_classes=data.num_classes or synthetic.NUM_CLASSES,
            seed=data.seed, split="train" if train else "validation", variant=data.synthetic_task,
            looks=data.synthetic_looks, scene_cue=data.synthetic_scene_cue)
    names_file = data.class_names_file or None
    if data.source in ("csv", "charades"):
        key = "train_csv" if train else "eval_csv"
        path = data[key]
        if not path or not os.path.exists(os.path.expanduser(path)):  # the sources expand `~` too
            raise ConfigError(
                f"config.data.{key} = {path!r}: no such file. Point it at the {split} list with "
                f"--config.data.{key}=/path/to/{split}.csv and set --config.data.root to the video folder; "
                f"docs/datasets.md explains the formats and how to prepare Kinetics-400. To try vidjax without "
                f"data, add :runlocal to --config (embedded generated dataset).")
        if data.source == "charades":
            return _wrap(key, lambda: sources.CharadesSource(path, root=data.root,
                                                             num_classes=data.num_classes or sources.CHARADES_CLASSES,
                                                             classes_file=names_file,
                                                             skip_missing=data.skip_missing,
                                                             caption_column=data.caption_column or None))
        targets = tuple(t.strip() for t in data.targets.split(",") if t.strip())
        return _wrap(key, lambda: sources.CsvVideoSource(path, root=data.root, num_classes=data.num_classes or None,
                                                         skip_missing=data.skip_missing, targets=targets,
                                                         class_names_file=names_file,
                                                         caption_column=data.caption_column or None))
    if data.source == "folder":
        key = "train_folder" if train else "eval_folder"
        if not data[key] or not os.path.isdir(os.path.expanduser(data[key])):
            raise ConfigError(f"config.data.{key} = {data[key]!r}: no such folder; set --config.data.{key} to a "
                              f"folder of class sub-folders (root/<class>/<video>), see docs/datasets.md.")
        names = sources.read_class_names(data.class_names_file) if data.class_names_file else class_names
        source = _wrap(key, lambda: sources.FolderVideoSource(data[key], class_names=names,
                                                              skip_missing=data.skip_missing))
        if data.num_classes and len(source.class_names) != data.num_classes:
            raise ConfigError(f"config.data.{key}={data[key]!r} has {len(source.class_names)} class folders "
                              f"({_names(source.class_names)}) but config.data.num_classes={data.num_classes}; set "
                              f"--config.data.num_classes={len(source.class_names)}, or 0 to take the count from "
                              f"the data.")
        return source
    if data.source == "tfds":
        if not data.tfds_name:
            raise ConfigError("config.data.source='tfds' needs --config.data.tfds_name (and tfds_data_dir).")
        split_name = data.train_split if train else data.eval_split
        return _wrap("tfds_name", lambda: sources.TfdsVideoSource(
            data.tfds_name, split_name, data_dir=data.tfds_data_dir or None, video_key=data.video_key,
            label_key=data.label_key))
    if data.source == "array_record":
        key = "train_pack" if train else "eval_pack"
        if not data[key] or not os.path.exists(os.path.expanduser(data[key])):
            raise ConfigError(f"config.data.{key} = {data[key]!r}: no such pack; write one with "
                              f"`python -m vidjax.data.pack --csv LIST --out DIR` and point --config.data.{key} "
                              f"at DIR.")
        return _wrap(key, lambda: sources.ArrayRecordVideoSource(data[key]))
    raise ConfigError(f"config.data.source must be one of {', '.join(SOURCES)}; got {data.source!r}.")


def _names(names: Sequence[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


# The setting that names each split's data, for messages.
_SPLIT_KEYS = {"synthetic": ("num_train", "num_eval"), "csv": ("train_csv", "eval_csv"),
               "charades": ("train_csv", "eval_csv"), "folder": ("train_folder", "eval_folder"),
               "tfds": ("train_split", "eval_split"), "array_record": ("train_pack", "eval_pack")}


def describe_split(data: ml_collections.ConfigDict, split: str) -> str:
    """The setting that names a split's data, with its value, e.g. "config.data.train_folder='/data/train'"."""
    key = _SPLIT_KEYS.get(data.source, ("source", "source"))[split == "eval"]
    return f"config.data.{key}={data[key]!r}"


def source_classes(source) -> tuple[int | None, bool]:
    """(classes, exact) that `source`'s data shows: class names (class folders, a names file, a TFDS ClassLabel, a
    pack's manifest, the embedded dataset's) give the exact count; a list's largest label + 1 is a lower bound, as a
    split need not hold every class. (None, False) when the data does not tell (a pack without class names)."""
    names = getattr(source, "class_names", None)
    if names:
        return len(names), True
    count = getattr(source, "num_classes", None)
    if count is None:
        count = getattr(source, "_num_classes", None)  # Charades: the count it was built with
        return count, count is not None
    return int(count), False


def resolve_num_classes(data: ml_collections.ConfigDict, split_sources: Mapping[str, object]) -> int:
    """config.data.num_classes made concrete from the sources of the splits ({"train": ..., "eval": ...}, either).

    A positive config.data.num_classes is kept, once every split's exact count agrees with it (a list's labels
    were checked against it when it was read). 0 ("infer") takes the count the data shows: the splits' exact
    counts, which must agree, or else the largest label + 1 over the lists. Raises ConfigError naming both values
    of any disagreement.
    """
    shown = {split: source_classes(source) for split, source in split_sources.items()}
    exact = {split: n for split, (n, is_exact) in shown.items() if n is not None and is_exact}
    bounds = {split: n for split, (n, is_exact) in shown.items() if n is not None and not is_exact}

    def described(split: str) -> str:
        names = getattr(split_sources[split], "class_names", None)
        listed = f" ({_names(names)})" if names else ""
        return f"{describe_split(data, split)} shows {shown[split][0]} classes{listed}"

    if data.num_classes:
        wrong = [split for split, n in exact.items() if n != data.num_classes]
        if wrong:
            raise ConfigError(f"{'; '.join(described(split) for split in wrong)}, but config.data.num_classes="
                              f"{data.num_classes}: set --config.data.num_classes={exact[wrong[0]]}, or 0 to take "
                              f"the count from the data.")
        return int(data.num_classes)
    if len(set(exact.values())) > 1:
        raise ConfigError(f"The splits disagree on the number of classes: {'; '.join(map(described, exact))}. "
                          f"Give both splits the same classes (a class names file, config.data.class_names_file, "
                          f"fixes their order), or set --config.data.num_classes.")
    if exact:
        count = next(iter(exact.values()))
        above = [split for split, n in bounds.items() if n > count]
        if above:
            raise ConfigError(f"{described(next(iter(exact)))} but {describe_split(data, above[0])} has labels up "
                              f"to {bounds[above[0]] - 1}; fix the list or the class names.")
        return count
    if bounds:
        return max(bounds.values())
    raise ConfigError(f"config.data.source={data.source!r} does not say how many classes it has ("
                      f"{', '.join(describe_split(data, split) for split in split_sources)}); set "
                      f"--config.data.num_classes, or config.data.class_names_file to a file naming them.")


ElementFields = Callable[[dict, np.random.Generator | None], dict]  # a task's fields of one element


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a task asks of the input path, built by the task's training spec (`vidjax.tasks.base.TrainingSpec
    .input_spec`) and passed in by whoever makes the datasets (the trainer, the evaluators, the benchmarks): the data
    layer never looks a task up.

    The default is one clip an element under "video", with the element's own targets, no masks, and an eval split
    padded to whole batches with every video scored once.
    """

    # Picklable `(element, rng) -> dict` run in the input workers on every training / eval element (rng None for
    # evaluation), whose fields join the batch; None: nothing to add.
    train_fields: ElementFields | None = None
    eval_fields: ElementFields | None = None
    views: views_lib.ViewSpec | None = None  # training elements cut into several views; None: one clip
    pads_eval: bool = True  # eval padded to whole global batches (rows marked `valid`); False: trimmed to them
    # The masks drawn for every clip (batch["mask"], and batch["decoder_mask"] with a decoder mask); None: none.
    masks: MaskSpec | None = None

    def fields(self, train: bool) -> ElementFields | None:
        """The per-element fields of the training (`train`) or the eval split."""
        return self.train_fields if train else self.eval_fields


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Per-element work in the grain workers: decode, augment (train) or cut views (eval), targets, masks.

    A video that fails to decode is replaced by another element of the source, drawn from this element's own
    random stream (so the batch stays deterministic), with a warning; `decode_failures` is 1 for an element whose
    own video failed (0 for the others, a failed substitute included) and the trainer sums them into its metrics.
    After `max_decode_attempts` failures in a row a training element is dropped; an evaluation element is dropped
    only when no video of the split decodes (`_substitute`).
    """

    data: ml_collections.ConfigDict
    source: object
    train: bool
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    fields: ElementFields | None = None  # the task's per-element fields (`InputSpec.fields`)
    views: views_lib.ViewSpec | None = None  # training elements as multiple views (`InputSpec.views`)
    masks: MaskSpec | None = None  # the masks drawn per clip (`InputSpec.masks`)
    # "device": training clips sent as their decoded planes (`decode.read_planes`, `PLANE_KEYS`) into a canvas of
    # `canvas` (rows, columns), converted and cropped in the step; "host": RGB crops (`resolve_pixels`)
    pixels: str = "host"
    canvas: tuple[int, int] = (0, 0)
    decoder: str = "pyav"  # what decodes the device-pixel clips: "pyav" or "nvdec" (`resolve_decoder`)

    def __call__(self, element: dict, rng: np.random.Generator) -> dict | None:
        failures = 0
        valid = element.get("valid")
        own = int(element["index"])
        while True:
            try:
                out = self.load(element, rng)
                break
            except decode.VideoDecodeError as err:
                failures += 1
                first = _first_failure(err.path)
                substitute = self._substitute(own, int(element["index"]), failures, rng)
                if substitute is None:
                    (logger.error if first else logger.debug)(
                        "Dropping element %d: %d videos in a row failed to decode, the last: %s",
                        int(element["index"]), failures, err)
                    return None
                (logger.warning if first else logger.debug)(
                    "Skipping element %d: %s; using element %d in its place (each broken video is named once)",
                    int(element["index"]), err, substitute)
                element = self.source[substitute]
        video = out.get("video")
        if "crop_box" in out:  # device pixels: one decode, its k crops
            samples = len(out["crop_box"]) if self.data.num_samples > 1 else 1
        else:
            samples = video.shape[0] if video is not None and video.ndim == 5 and self.train else 1
        # This element's own video, once, however many substitutes it took: a broken substitute is counted where
        # it is an element itself, so a split's sum is the number of its videos that did not decode.
        failed = np.int32(failures > 0)
        count = np.zeros(samples, np.int32)
        count[0] = failed  # one count per decoded video, not per augmented sample
        out["decode_failures"] = count if samples > 1 else failed
        if valid is not None:
            out["valid"] = valid
        return out

    def _substitute(self, own: int, failed: int, failures: int, rng: np.random.Generator) -> int | None:
        """The element to decode next in place of element `own`, after `failures` failures, the last of element
        `failed`; None: drop it. The first `max_decode_attempts` - 1 are drawn from the element's random stream.
        Past them a training element is dropped (the stream goes on), but an evaluation element goes on through the
        rest of the split in order: an eval split keeps every element while one of its videos decodes, since a
        dropped element would shift every later batch, leave the last one unscored, and on several hosts leave one
        host a batch short of the others."""
        count = len(self.source)
        if count < 2:
            return None
        if failures < self.data.max_decode_attempts:
            drawn = int(rng.integers(count - 1))
            return drawn + (drawn >= failed)  # never the video that just failed
        step = failures - self.data.max_decode_attempts + 1
        return None if self.train or step >= count else (own + step) % count

    def load(self, element: dict, rng: np.random.Generator) -> dict:
        """One element decoded and transformed, without the decode-failure substitution (raises VideoDecodeError)."""
        d = self.data
        if self.train and self.views is not None:
            return self.load_views(element, rng)
        size, short = d.image_size, d.short_side or d.image_size
        window = (np.nan, np.nan)
        stored_clip = "video" in element and element["video"].shape[1:3] == (size, size)
        if stored_clip:
            frames = element["video"]  # the embedded dataset: already the clip, at the model's size
            if frames.shape[0] != d.num_frames:
                frames = frames[decode.sample_indices(len(frames), d.num_frames, d.sampling_rate,
                                                      rng if self.train else None)]
            views = frames[None]
        elif "video" in element:
            frames = element["video"][decode.sample_indices(len(element["video"]), d.num_frames, d.sampling_rate,
                                                            rng if self.train else None)]
            views = transforms.resize_short_side(frames, short)[None]
        else:
            src = element["path"] if "path" in element else element["data"]
            name = element.get("source_path") if "data" in element else None
            start_s, end_s = float(element.get("start", np.nan)), float(element.get("end", np.nan))
            if self.train and self.pixels == "device":
                out, window = self._decode_planes(src, name, start_s, end_s, rng)
                out["index"] = np.int32(element["index"])
                return self._finish(out, element, window, rng, clips=d.num_samples if d.num_samples > 1 else 0)
            if self.train and not d.rand_augment:  # RandAugment works on whole frames, before the crop
                video, window = self._decode_cropped(src, name, start_s, end_s, rng)
                out = {"video": video, "index": np.int32(element["index"])}
                return self._finish(out, element, window, rng, clips=len(video) if video.ndim == 5 else 0)
            span = {"start_s": None if np.isnan(start_s) else start_s, "end_s": None if np.isnan(end_s) else end_s}
            if self.train:
                clip = decode.read_clip(src, d.num_frames, d.sampling_rate, rng, short_side=short, name=name, **span)
                views = clip.frames[None]
            else:  # the test clips, decoded together where their windows are close
                clip = decode.read_clips(src, d.num_frames, d.sampling_rate, d.test_num_clips, short_side=short,
                                         name=name, **span)
                views = clip.frames
            window = (clip.start_s, clip.end_s)
        if self.train:
            if stored_clip:  # the embedded dataset is not augmented: its k samples are the clip k times (own masks)
                video = views[0] if d.num_samples == 1 else np.repeat(views[0][None], d.num_samples, axis=0)
            elif d.num_samples > 1:
                video = transforms.repeated_augment(views[0], self._augment, rng, num_samples=d.num_samples)
            else:
                video = self._augment(views[0], rng)
        else:
            crops = [transforms.multi_view(v, d.test_num_crops, size) if d.test_num_crops > 1
                     else transforms.center_crop(v, size)[None] for v in views]
            video = np.concatenate(crops)  # (clips * crops, T, H, W, 3)
            if len(video) == 1:
                video = video[0]
        out = {"video": np.ascontiguousarray(video, dtype=np.uint8), "index": np.int32(element["index"])}
        return self._finish(out, element, window, rng, clips=len(video) if video.ndim == 5 and self.train else 0)

    def _finish(self, out: dict, element: dict, window: tuple[float, float], rng: np.random.Generator, *,
                clips: int) -> dict:
        """`out` ({"video", "index"}, or the planes) with the element's targets, the task's fields and the masks of
        `masks`: a tube mask per clip, stacked for `clips` > 0 (repeated sampling's clips), else one (and with a
        "run_cell" decoder mask the decoder masks, drawn after them: the tube masks are those of V1)."""
        out.update(self._targets(element, window))
        if self.fields is not None:
            out.update(self.fields(element, rng if self.train else None))
        masks = self.masks
        if masks is not None:
            if clips:
                out["mask"] = np.stack([tube_mask(rng, masks.grid, masks.ratio) for _ in range(clips)])
            else:
                out["mask"] = tube_mask(rng, masks.grid, masks.ratio)
            if masks.decoder_kind == "run_cell":
                draw = [running_cell_mask(rng, masks.grid, masks.decoder_ratio)
                        for _ in range(len(out["mask"]) if out["mask"].ndim == 2 else 1)]
                out["decoder_mask"] = np.stack(draw) if out["mask"].ndim == 2 else draw[0]
        return out

    def _decode_cropped(self, src, name: str | None, start_s: float, end_s: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
        """A training clip, or `num_samples` of them (k, T, size, size, 3), decoded once and cut crop first, and the
        time span [start, end) in seconds its frames cover (for labels from annotated spans).

        The crops are drawn as `_augment` draws them (with `num_samples` > 1 from per-sample generators seeded as
        `transforms.repeated_augment` seeds them), so each clip has the box and flip the decode-then-crop path gives
        it; the decoder resamples each box once from the decoded picture (`decode.read_clip(crops=...)`)."""
        d = self.data
        generators: list[np.random.Generator] = []

        def crops(height: int, width: int) -> list[transforms.Crop]:
            drawn, chosen = self.train_crops(rng, height, width)
            generators.extend(chosen)
            return drawn

        clip = decode.read_clip(src, d.num_frames, d.sampling_rate, rng,
                                start_s=None if np.isnan(start_s) else start_s,
                                end_s=None if np.isnan(end_s) else end_s, short_side=d.short_side or d.image_size,
                                name=name, crops=crops)
        return self.erased(clip.frames, generators), (clip.start_s, clip.end_s)

    def _decode_planes(self, src, name: str | None, start_s: float, end_s: float,
                       rng: np.random.Generator) -> tuple[dict, tuple[float, float]]:
        """A training element for the device-pixel path: the planes of the region its `num_samples` crops cover
        (`decode.read_planes`), the crops drawn as `_decode_cropped` draws them, as the batch's `PLANE_KEYS`, and the
        time span its frames cover."""
        d = self.data
        read = nvdec.read_planes if self.decoder == "nvdec" else decode.read_planes
        clip = read(
            src, d.num_frames, d.sampling_rate, rng, canvas=self.canvas,
            crops=lambda height, width: self.train_crops(rng, height, width)[0],
            start_s=None if np.isnan(start_s) else start_s, end_s=None if np.isnan(end_s) else end_s,
            short_side=d.short_side or d.image_size, name=name)
        out = dict(zip(PLANE_KEYS, (clip.y, clip.u, clip.v, clip.box, clip.flip, clip.valid, clip.colour),
                       strict=True))
        return out, (clip.start_s, clip.end_s)

    def train_crops(self, rng: np.random.Generator, height: int,
                    width: int) -> tuple[list[transforms.Crop], list[np.random.Generator]]:
        """The crops of a training element's `num_samples` clips on `height` x `width` frames, and the generator
        each clip's later draws (erasing) come from: `rng` itself for one clip, else `transforms.sample_generators`
        (as `transforms.repeated_augment` seeds them)."""
        d = self.data
        generators = [rng] if d.num_samples == 1 else transforms.sample_generators(rng, d.num_samples)
        return [transforms.train_crop(d.train_crop, height, width, d.image_size, g, **crop_settings(d))
                for g in generators], generators

    def erased(self, clips: np.ndarray, generators: Sequence[np.random.Generator]) -> np.ndarray:
        """(k, T, H, W, 3) cropped clips with random erasing (config.data.erase_prob) drawn from their generators:
        the element's video, (k, ...) with repeated sampling, else the one clip."""
        d = self.data
        if d.erase_prob:
            clips = np.stack([transforms.random_erasing(v, g, mean=self.pixel_mean, std=self.pixel_std,
                                                        prob=d.erase_prob) for v, g in zip(clips, generators,
                                                                                           strict=True)])
        return np.ascontiguousarray(clips if d.num_samples > 1 else clips[0], dtype=np.uint8)

    def load_views(self, element: dict, rng: np.random.Generator) -> dict:
        """A training element as the views of `self.views` ({group key: (views, T, size, size, 3)} uint8; see
        `vidjax.data.views`): only the frames the views use are decoded (an in-memory video is used as it is)."""
        spec = self.views
        if "video" in element:
            frames, frame_ids = element["video"], None
            indices = views_lib.view_frame_indices(len(frames), spec, rng)
        else:
            src = element["path"] if "path" in element else element["data"]
            start_s, end_s = float(element.get("start", np.nan)), float(element.get("end", np.nan))
            chosen = {}

            def select(num_video_frames: int) -> np.ndarray:
                chosen["views"] = views_lib.view_frame_indices(num_video_frames, spec, rng)
                return views_lib.frames_to_decode(chosen["views"])

            clip = decode.read_clip(src, spec.num_frames, spec.sampling_rate,
                                    start_s=None if np.isnan(start_s) else start_s,
                                    end_s=None if np.isnan(end_s) else end_s,
                                    short_side=self.data.short_side or self.data.image_size,
                                    name=element.get("source_path") if "data" in element else None, select=select)
            frames, indices = clip.frames, chosen["views"]
            frame_ids = views_lib.frames_to_decode(indices)
        out = views_lib.make_views(frames, indices, spec, rng, frame_ids=frame_ids)
        out["index"] = np.int32(element["index"])
        out.update(self._targets(element, (np.nan, np.nan)))
        if self.fields is not None:
            out.update(self.fields(element, rng))
        return out

    def _augment(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d, size = self.data, self.data.image_size
        if d.rand_augment:
            video = transforms.rand_augment(video, d.rand_augment, rng)
        video = transforms.apply_crop(video, transforms.train_crop(
            d.train_crop, video.shape[1], video.shape[2], size, rng, **crop_settings(d)))
        if d.erase_prob:
            video = transforms.random_erasing(video, rng, mean=self.pixel_mean, std=self.pixel_std,
                                              prob=d.erase_prob)
        return video

    def _targets(self, element: dict, window: tuple[float, float]) -> dict:
        if "spans" in element:
            return {"labels": sources.labels_from_spans(element["spans"], *window, self.data.num_classes)}
        out = {}
        for key in ("label", "labels", "targets"):
            if key in element:
                out[key] = np.asarray(element[key], np.int32 if key == "label" else np.float32)
        return out


def target_names(data: ml_collections.ConfigDict) -> list[str]:
    """Names of the regression targets: config.data.targets (csv lists), or the embedded dataset's velocities."""
    names = [t.strip() for t in data.targets.split(",") if t.strip()]
    if not names and data.source == "synthetic":
        names = synthetic_target_names(data.synthetic_task)
    return names


def synthetic_target_names(variant: str) -> list[str]:
    """The targets the embedded dataset's `variant` (config.data.synthetic_task) carries, as its source names them;
    none for a variant without targets or one it does not have (`make_source` reports that)."""
    try:
        return list(synthetic.SyntheticVideoSource(1, variant=variant).target_names or ())
    except ValueError:
        return []


def data_config_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Data settings that would only fail inside a worker, found before anything is built: every one of them."""
    d = config.data
    problems = []
    if d.train_crop not in TRAIN_CROPS:
        problems.append(f"config.data.train_crop={d.train_crop!r}; choose one of {', '.join(TRAIN_CROPS)}.")
    if d.rand_augment:
        try:
            transforms.parse_rand_augment(d.rand_augment)
        except ValueError as err:
            problems.append(f"config.data.rand_augment: {err}")
    if d.num_samples < 1 or config.batch_size % d.num_samples:
        problems.append(f"config.data.num_samples={d.num_samples} must be >= 1 and divide config.batch_size="
                        f"{config.batch_size} (the batch counts clips: batch_size / num_samples videos a step).")
    problems += _crop_problems(d)
    if d.num_frames < 1 or d.sampling_rate < 0:
        problems.append(f"config.data.num_frames={d.num_frames} must be >= 1 and sampling_rate={d.sampling_rate} "
                        f">= 0 (the stride between a clip's frames in the video's frames; 0: spread over the video).")
    elif d.source == "synthetic" and d.sampling_rate < 1:
        problems.append("config.data.sampling_rate=0 spreads a clip over a whole video, and the embedded dataset's "
                        "clips are generated at their length: set it to 1 or more for source='synthetic'.")
    if d.test_num_clips < 1 or d.test_num_crops < 1:
        problems.append("config.data.test_num_clips and test_num_crops must be >= 1.")
    if not 0.0 <= d.erase_prob <= 1.0:
        problems.append(f"config.data.erase_prob={d.erase_prob} must be in [0, 1].")
    if d.num_workers < -1:
        problems.append(f"config.data.num_workers={d.num_workers} must be >= 0, or -1 for one per host core less "
                        f"one.")
    if d.num_classes < 0:
        problems.append(f"config.data.num_classes={d.num_classes} must be >= 0 (0 = the data's own count).")
    if d.source == "synthetic" and (problem := _synthetic_variant_problem(d)):
        problems.append(problem)
    try:
        if d.get("pixels", "host") != "auto":  # "auto" asks the backend, which is not started yet here
            resolve_pixels(d, "train")
    except ConfigError as err:
        problems.append(str(err))
    try:  # "auto" pixels go the device way on a GPU, which is not asked yet here: checked as "device" meanwhile
        resolve_decoder(d, "host" if d.get("pixels", "host") == "host" else "device")
    except ConfigError as err:
        problems.append(str(err))
    rows, cols = (int(v) for v in d.get("pixel_canvas", (0, 0)))
    if rows < 0 or cols < 0 or bool(rows) != bool(cols):
        problems.append(f"config.data.pixel_canvas={tuple(d.pixel_canvas)} must be two positive sizes (rows, "
                        f"columns), or (0, 0) for the size `pipeline.pixel_canvas` chooses.")
    return problems


def _crop_problems(d: ml_collections.ConfigDict) -> list[str]:
    """The training crop's ranges, which would otherwise fail in every worker's every clip (`crop_settings`)."""
    problems = []
    settings = crop_settings(d)
    area, ratio, scales = settings["area"], settings["ratio"], settings["scales"]
    if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
        problems.append(f"config.data.resized_crop_area={area} must be (low, high) with 0 < low <= high <= 1: the "
                        f"share of the frame's area a random resized crop takes (VideoMAE: (0.08, 1.0)).")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        problems.append(f"config.data.resized_crop_ratio={ratio} must be (low, high) with 0 < low <= high: the crop's "
                        f"width / height (VideoMAE: (0.75, 1.3333)).")
    if not scales or not all(0 < scale <= 1 for scale in scales):
        problems.append(f"config.data.crop_scales={scales} must be one or more shares of the short side in (0, 1] "
                        f"(the multi-scale crop's, VideoMAE: {transforms.MULTI_SCALE_CROP_SCALES}).")
    if d.short_side < 0:
        problems.append(f"config.data.short_side={d.short_side} must be >= 0 (the short side frames are resized "
                        f"to before the crop; 0: config.data.image_size).")
    return problems


def _synthetic_variant_problem(data: ml_collections.ConfigDict) -> str | None:
    if data.synthetic_task in synthetic.VARIANTS:
        return None
    return (f"config.data.synthetic_task={data.synthetic_task!r}; choose one of {', '.join(synthetic.VARIANTS)} (the "
            f"target the embedded clips carry, by its batch key: label for classification, labels for multi-label, "
            f"targets for regression, captions for captioning).")


def check_data_config(config: ml_collections.ConfigDict) -> None:
    """`data_config_problems` as one ConfigError listing them all."""
    raise_problems(data_config_problems(config))


class PaddedSource:
    """An eval source padded to whole global batches: elements past its end repeat its first ones, marked
    `valid` False, so every video is scored once and every process runs the same number of steps."""

    def __init__(self, source, total: int):
        self.source, self.total = source, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> dict:
        element = dict(self.source[int(index) % len(self.source)])
        element["valid"] = np.bool_(index < len(self.source))
        return element

    def __repr__(self) -> str:
        return f"PaddedSource({self.source!r}, total={self.total})"


def _flatten_samples(batch: dict) -> dict:
    """(videos, samples, ...) -> (videos * samples, ...): repeated augmentation's clips become batch rows. A
    device-pixel batch keeps one row a video for its planes and crops (the step cuts the k clips of each video,
    `vidjax.ops.pixels.batch_crops`, in the same order)."""
    k = batch["video"].shape[1] if "video" in batch else batch["crop_box"].shape[1]
    out = {}
    for key, value in batch.items():
        if key in PLANE_KEYS:
            out[key] = value
        elif key in ("video", "mask", "decoder_mask", "decode_failures"):
            out[key] = value.reshape(-1, *value.shape[2:])
        else:
            out[key] = np.repeat(value, k, axis=0)
    return out


# Sources whose elements are already pixels (the embedded dataset's clips, TFDS's decoded videos): nothing to send as
# planes.
_PIXEL_SOURCES = ("synthetic", "tfds")


def device_pixel_problem(data: ml_collections.ConfigDict, split: str, spec: InputSpec | None = None) -> str | None:
    """Why `split`'s clips cannot take the device-pixel path, or None: the path cuts crops of decoded files, and
    does nothing else a training clip may need on the host."""
    if split != "train":
        return "evaluation clips are cut on the host (their views and centre crops)"
    if data.source in _PIXEL_SOURCES:
        return f"config.data.source={data.source!r} holds decoded pixels, not video files"
    if data.rand_augment:
        return "RandAugment (config.data.rand_augment) works on whole RGB frames on the host"
    if data.erase_prob:
        return "random erasing (config.data.erase_prob) works on the RGB crops on the host"
    if spec is not None and spec.views is not None:
        return "the task's training views (SVT's global and local views) are cut on the host"
    return None


def resolve_pixels(data: ml_collections.ConfigDict, split: str, spec: InputSpec | None = None,
                   backend: str | None = None) -> str:
    """"host" or "device": where `split`'s clips are converted and cropped. config.data.pixels "auto" is the
    backend's choice (`platform.pixels_rule`) where the clips can take the device path (`device_pixel_problem`),
    else "host"; "device" where they cannot is a ConfigError saying why (training only: evaluation is on the host)."""
    choice = data.get("pixels", "host")
    if choice not in platform.PIXELS:
        raise ConfigError(f"config.data.pixels={choice!r}: one of {', '.join(platform.PIXELS)}.")
    if choice == "host":
        return "host"
    problem = device_pixel_problem(data, split, spec)
    if choice == "auto":
        return "host" if problem else platform.pixels_rule(backend or platform.backend())
    if problem and split == "train":
        raise ConfigError(f"config.data.pixels='device' cannot cut these training clips: {problem}. Use "
                          f"--config.data.pixels=host (or auto).")
    return "host" if problem else "device"


DECODERS = ("pyav", "nvdec")


def resolve_decoder(data: ml_collections.ConfigDict, pixels: str) -> str:
    """config.data.decoder, checked for training clips going the `pixels` way: "nvdec" decodes into the planes the
    device-pixel path sends, so it needs that path, the wheel and an NVIDIA GPU's video engine; each lack is a
    ConfigError that says what to do. Evaluation clips are PyAV's either way."""
    choice = data.get("decoder", "pyav")
    if choice not in DECODERS:
        raise ConfigError(f"config.data.decoder={choice!r}: one of {', '.join(DECODERS)}.")
    if choice == "nvdec":
        if pixels != "device":
            raise ConfigError("config.data.decoder='nvdec' decodes into the planes the device-pixel path sends, but "
                              f"these training clips go the host way (config.data.pixels={data.get('pixels')!r}); "
                              "set --config.data.pixels=device.")
        if why := nvdec.problem():
            raise ConfigError(f"config.data.decoder='nvdec': {why}. Use --config.data.decoder=pyav here.")
    return choice


def pixel_canvas(data: ml_collections.ConfigDict) -> tuple[int, int]:
    """The (rows, columns) of the planes a device-pixel clip is sent in: config.data.pixel_canvas, or where it is
    (0, 0) room for the region of the largest crop at 1.5x the short side (a 360p video at short side 256, the data
    benchmark's files), each crop's filter reach beside it, in even numbers of pixels; with repeated sampling
    (num_samples > 1) 16:9 wide, for the k crops' common region. A larger region is downscaled on the host to fit
    (`decode.read_planes`)."""
    rows, cols = (int(v) for v in data.get("pixel_canvas", (0, 0)))
    if rows and cols:
        return rows + rows % 2, cols + cols % 2
    short = data.short_side or data.image_size
    widest = 1.0 if data.train_crop != "random_resized" else max(data.resized_crop_ratio)
    side = math.ceil(1.5 * short * widest) + 16
    side += side % 2
    if data.num_samples == 1:
        return side, side
    wide = math.ceil(side * 16 / 9)
    return side, wide + wide % 2


def device_pixel_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each `PLANE_KEYS` entry of a global device-pixel training batch of `config`: one row a
    video (batch_size / num_samples of them), its planes in `pixel_canvas`, its num_samples crops."""
    d = config.data
    videos, k, t = config.batch_size // d.num_samples, d.num_samples, d.num_frames
    rows, cols = pixel_canvas(d)
    shapes = ((videos, t, rows, cols), (videos, t, rows // 2, cols // 2), (videos, t, rows // 2, cols // 2),
              (videos, k, 4), (videos, k), (videos, 2), (videos, 2))
    dtypes = (np.uint8, np.uint8, np.uint8, np.float32, np.bool_, np.int32, np.int32)
    return {key: (shape, np.dtype(dtype)) for key, shape, dtype in zip(PLANE_KEYS, shapes, dtypes, strict=True)}


def make_dataset(config: ml_collections.ConfigDict, split: str, source, spec: InputSpec, *, process_index: int = 0,
                 process_count: int = 1,
                 preprocess_type: Callable[..., Preprocess] = Preprocess) -> grain.IterDataset:
    """Batched grain IterDataset of this process's share; infinite (reshuffled each epoch) for "train".

    Shuffling and every random draw are keyed by the *global* element index, and each process then takes every
    process_count-th element: the shares are disjoint, and no two processes draw the same crops or masks.
    Evaluation is unshuffled, with fixed seeds, and padded to whole global batches (rows marked `valid` False;
    `spec.pads_eval` False, e.g. pre-training's loss estimate: trimmed instead) so that every process runs the same
    number of eval steps and every video is scored once. `spec` is what the task asks of the input path
    (`TrainingSpec.input_spec`): its per-element fields, training views and masks. With repeated augmentation
    (`num_samples` k) a training batch holds batch_size / k videos, each as k clips; with several eval views, eval
    videos are (views, T, H, W, 3).
    `preprocess_type` builds the per-element work (a `Preprocess` subclass): the data benchmark runs other decoders
    through this same path with it.
    """
    data = config.data
    train = split == "train"
    samples = data.num_samples if train else 1
    local_batch = config.batch_size // process_count // samples
    if train:
        ds = grain.MapDataset.source(source).shuffle(seed=data.seed + config.seed).repeat()
    elif not spec.pads_eval:
        ds = grain.MapDataset.source(source)
        ds = ds[: len(ds) - len(ds) % config.batch_size]
    else:
        ds = grain.MapDataset.source(PaddedSource(source, -(-len(source) // config.batch_size) * config.batch_size))
    clips = clip_spec(config.model_name, config.model)
    pixels = resolve_pixels(data, split, spec)
    decoder = resolve_decoder(data, pixels) if train else "pyav"
    preprocess = preprocess_type(data=data, source=source, train=train, pixel_mean=clips["mean"],
                                 pixel_std=clips["std"], fields=spec.fields(train),
                                 views=spec.views if train else None, masks=spec.masks, pixels=pixels,
                                 canvas=pixel_canvas(data) if pixels == "device" else (0, 0), decoder=decoder)
    ds = ds.random_map(preprocess, seed=data.seed + config.seed + (0 if train else 1))
    # grain's defaults (16 reader threads, 500 buffered elements) oversubscribe the cores when each element is a
    # PyAV decode, and buffer gigabytes of clips; a couple of threads and two batches ahead keep workers busy.
    workers = resolve_num_workers(data.num_workers)
    threads = 2 if workers else 4
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * local_batch, threads))
    it = ds[process_index::process_count].to_iter_dataset(read).batch(local_batch, drop_remainder=True)
    if samples > 1:
        it = it.map(_flatten_samples)
    return in_workers(it, workers)


def in_workers(ds: grain.IterDataset, workers: int) -> grain.IterDataset:
    """`ds` run in `workers` grain worker processes (`mp_prefetch`; 0: in this process, `ds` itself), which hand each
    element over in shared memory; every block of it is unlinked by the process's exit (`release_shared_memory`).

    The input path of the trainer, the evaluators and the data benchmark: any other `mp_prefetch` would leave its
    last blocks to the resource tracker (`There appear to be N leaked shared_memory objects`)."""
    if workers <= 0:
        return ds
    _absl_flags_parsed()
    _release_at_exit()
    return _Released(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers), worker_init_fn=_ignore_ctrl_c))


# Every element a grain worker hands over is a block of shared memory that this process unlinks when the element's
# arrays go (`SharedMemoryArray.__del__`, `unlink_on_del`), on grain's own thread pool (`_del_thread_pool`, one
# thread, FIFO). At exit multiprocessing's clean-up (`multiprocessing.util._exit_function`) terminates that pool (its
# finalizer, exitpriority 15) before it closes grain's iterators (theirs, 1): the unlinks still queued are dropped
# (the last element a run consumed, freed just before the end), and the elements read ahead into an iterator's
# per-worker buffers, or still held, are freed after it (or never), their unlinks refused. All of them are left to
# the resource tracker. `release_shared_memory` runs at exit before that clean-up.
_open_iterators: weakref.WeakSet = weakref.WeakSet()  # iterators of `in_workers` datasets, until they are freed


class _Released(grain.IterDataset):
    """`parent` unchanged (its own iterator, so its state and checkpoints are as they were, and no step is added per
    element), with each iterator noted for `release_shared_memory`."""

    def __init__(self, parent: grain.IterDataset):
        super().__init__(parent)

    def __iter__(self):
        iterator = self._parent.__iter__()
        _open_iterators.add(iterator)
        return iterator

    def __str__(self) -> str:
        return "ReleasedAtExit"

    @property
    def _element_spec(self):
        return self._parent._element_spec


def release_shared_memory(interrupted: BaseException | None = None) -> None:
    """Unlinks now every block of shared memory grain's worker processes handed this process: the iterators of
    `in_workers` datasets still open are closed (their workers stopped, the elements read ahead dropped), the
    consumed elements no longer referenced are freed, grain's unlinking thread is waited for, and the names of
    those still referenced are unlinked (their memory stays until they go). An interruption (`interrupted`) holds
    the element the interrupted frames were handling: its traceback is cleared first.

    Runs by itself at the interpreter's exit; a command that ends without it (`cli.leave`, after a signal) calls it
    first, as the data benchmark does."""
    if interrupted is not None:
        traceback.clear_frames(interrupted.__traceback__)
        interrupted.__traceback__ = None
        interrupted.__context__ = interrupted.__cause__ = None
    for iterator in list(_open_iterators):
        iterator.close()
    gc.collect()
    try:  # grain's private parts: another version keeps its own clean-up
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    except ImportError:
        return
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        with contextlib.suppress(ValueError):  # a pool already terminated
            pool.apply(int)  # one thread, FIFO: returns once the unlinks queued before it ran
    # Elements still referenced (a batch a caller keeps): their names unlinked now, the memory staying mapped until
    # they go; the interpreter's teardown, which may free them last, no longer can.
    for obj in gc.get_objects():
        if (isinstance(obj, SharedMemoryArray) and isinstance(obj.base, mmap.mmap)  # the block's owner, not a view
                and getattr(obj, "_unlink_on_del", False)):
            obj._unlink_on_del = False
            with contextlib.suppress(FileNotFoundError):
                obj.shm.unlink()


@functools.cache
def _release_at_exit() -> None:
    """Registers `release_shared_memory` for the interpreter's exit (and `cli.leave`'s), once. `atexit` runs the
    last registered first, and multiprocessing's clean-up registered when this module imported
    `multiprocessing.util`: this runs before."""
    atexit.register(release_shared_memory)
    cli.at_leave(release_shared_memory)  # a command a signal stopped ends with `cli.leave`, which skips atexit


def _ignore_ctrl_c(worker_index: int, worker_count: int) -> None:
    """In each grain worker process: Ctrl-C reaches the terminal's whole process group, and the command that owns the
    workers answers it (one line) and stops them; a worker that took it too would print its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resolve_num_workers(num_workers: int) -> int:
    """config.data.num_workers made concrete: -1 is one grain worker process per core this process may run on,
    less one for the trainer's own process (which batches, transfers and drives the accelerator), at least one."""
    if num_workers >= 0:
        return num_workers
    return max(1, host_cpus() - 1)


def _absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; when vidjax is driven from Python (a notebook, a test) rather
    # than `vidjax.main`, nothing has parsed them, and the workers would fail on start.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def largest_batch_size(config: ml_collections.ConfigDict, num_videos: int, process_count: int,
                       num_devices: int) -> int:
    """The largest config.batch_size that `num_videos` videos fill at least once and that splits evenly over the
    processes, the devices and the clips of a video (config.data.num_samples); 0 when none does."""
    multiple = math.lcm(max(config.data.num_samples, 1), process_count, num_devices)
    return num_videos * max(config.data.num_samples, 1) // multiple * multiple


def batch_size_problems(config: ml_collections.ConfigDict, process_count: int, num_devices: int,
                        split_sizes: Mapping[str, int] | None = None, *, pads_eval: bool) -> list[str]:
    """Batch size problems found before anything is compiled: the batch must split evenly over processes and
    devices, and (given `split_sizes`, {"train": videos, ...}) the training split must fill one batch, as must a
    trimmed eval split (`pads_eval` False: `InputSpec.pads_eval`, pre-training's; padded evals take any size). Each
    says the largest size that fits."""
    problems = []
    if config.batch_size % process_count or config.batch_size % num_devices:
        multiple = math.lcm(process_count, num_devices)
        problems.append(f"config.batch_size={config.batch_size} must be divisible by the number of processes "
                        f"({process_count}) and of devices ({num_devices}): use a multiple of {multiple}, e.g. "
                        f"--config.batch_size={max(multiple, config.batch_size // multiple * multiple)}.")
    samples = max(config.data.num_samples, 1)
    videos = config.batch_size // samples
    with contextlib.suppress(ConfigError):  # a bad config.data.pixels is `data_config_problems`'s to report
        if samples > 1 and videos % num_devices and resolve_pixels(config.data, "train") == "device":
            multiple = math.lcm(num_devices, samples * process_count)
            problems.append(f"With device pixels each video's planes are one batch row: config.batch_size="
                            f"{config.batch_size} / num_samples={samples} = {videos} videos must divide over the "
                            f"{num_devices} devices: use a multiple of {multiple}, e.g. --config.batch_size="
                            f"{max(multiple, config.batch_size // multiple * multiple)}, or "
                            f"--config.data.pixels=host.")
    for split, size in (split_sizes or {}).items():
        if split == "eval" and pads_eval:
            continue
        videos_a_step = config.batch_size // samples if split == "train" else config.batch_size
        if size >= videos_a_step:
            continue
        fits = largest_batch_size(config, size, process_count, num_devices) if split == "train" else \
            size // math.lcm(process_count, num_devices) * math.lcm(process_count, num_devices)
        advice = (f"the largest batch size that fits and splits over {num_devices} device(s) and {process_count} "
                  f"process(es) is {fits}: --config.batch_size={fits}" if fits else
                  f"no batch size that splits over {num_devices} device(s) fits: add videos, or run on fewer "
                  f"devices")
        clips = f" clips ({videos_a_step} videos x {samples} clips each)" if samples > 1 and split == "train" else ""
        problems.append(f"The {split} split ({describe_split(config.data, split)}) has {size} videos, fewer than one "
                        f"batch of config.batch_size={config.batch_size}{clips}; {advice}.")
    return problems


def check_batch_size(config: ml_collections.ConfigDict, process_count: int, num_devices: int,
                     split_sizes: Mapping[str, int] | None = None, *, pads_eval: bool) -> None:
    """`batch_size_problems` as one ConfigError listing them all."""
    raise_problems(batch_size_problems(config, process_count, num_devices, split_sizes, pads_eval=pads_eval))
