"""The one input pipeline: source -> shuffle/repeat -> decode + transforms + mask -> per-process slice -> batch.

Built on grain's Dataset API. Every random choice is seeded by (config seed, global element index), so the same config
gives the same batches, and the iterator state saved with a checkpoint resumes mid-epoch exactly. Batches hold
uint8 videos (normalised on the device, which moves a quarter of the bytes of float32), int32 labels, and for
pre-training the bool tube mask. Elements that fail to decode are dropped with a warning, never stopping a run.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import grain
import ml_collections
import numpy as np

from vidjax.config_lib import ConfigError
from vidjax.data import decode, sources, synthetic, transforms

SPLITS = ("train", "eval")
SOURCES = ("synthetic", "csv", "folder", "charades", "tfds", "array_record")
TRAIN_CROPS = ("random", "multi_scale", "random_resized")

logger = logging.getLogger(__name__)


def tube_mask(rng: np.random.Generator, grid: tuple[int, int, int], mask_ratio: float) -> np.ndarray:
    """Bool (t*h*w,) mask, True = masked: int(mask_ratio*h*w) spatial positions masked, the same at every t."""
    t, h, w = grid
    spatial = np.zeros(h * w, dtype=bool)
    spatial[rng.permutation(h * w)[: int(mask_ratio * h * w)]] = True
    return np.tile(spatial, t)


def _wrap(key: str, build):
    """Source errors (missing lists, bad lines, missing videos) as one ConfigError naming the setting."""
    try:
        return build()
    except FileNotFoundError as err:
        raise ConfigError(f"{err} (config.data.{key}; the flag to skip them is --config.data.skip_missing=True)"
                          ) from err
    except ValueError as err:
        raise ConfigError(f"{err} (config.data.{key})") from err


def make_source(data: ml_collections.ConfigDict, split: str):
    """The random-access source of one split, with an error naming the setting to fix when data is missing."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    train = split == "train"
    if data.source == "synthetic":
        return synthetic.SyntheticVideoSource(
            num_examples=data.num_train if train else data.num_eval, num_frames=data.num_frames,
            height=data.image_size, width=data.image_size, num_classes=data.num_classes, seed=data.seed,
            split="train" if train else "validation", task=data.synthetic_task)
    class_names = data.class_names_file or None
    if data.source in ("csv", "charades"):
        key = "train_csv" if train else "eval_csv"
        path = data[key]
        if not path or not os.path.exists(path):
            raise ConfigError(
                f"config.data.{key} = {path!r}: no such file. Point it at the {split} list with "
                f"--config.data.{key}=/path/to/{split}.csv and set --config.data.root to the video folder; "
                f"docs/datasets.md explains the formats and how to prepare Kinetics-400. To try vidjax without "
                f"data, add :runlocal to --config (embedded generated dataset).")
        if data.source == "charades":
            return _wrap(key, lambda: sources.CharadesSource(path, root=data.root, num_classes=data.num_classes,
                                                             classes_file=class_names,
                                                             skip_missing=data.skip_missing))
        targets = tuple(t.strip() for t in data.targets.split(",") if t.strip())
        return _wrap(key, lambda: sources.CsvVideoSource(path, root=data.root, num_classes=data.num_classes,
                                                         skip_missing=data.skip_missing, targets=targets,
                                                         class_names_file=class_names))
    if data.source == "folder":
        key = "train_folder" if train else "eval_folder"
        if not data[key] or not os.path.isdir(data[key]):
            raise ConfigError(f"config.data.{key} = {data[key]!r}: no such folder; set --config.data.{key} to a "
                              f"folder of class sub-folders (root/<class>/<video>), see docs/datasets.md.")
        names = sources.read_class_names(class_names) if class_names else None
        source = _wrap(key, lambda: sources.FolderVideoSource(data[key], class_names=names,
                                                              skip_missing=data.skip_missing))
        if len(source.class_names) != data.num_classes:
            raise ConfigError(f"config.data.{key} has {len(source.class_names)} class folders but "
                              f"config.data.num_classes={data.num_classes}; set them to agree.")
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
        if not data[key] or not os.path.exists(data[key]):
            raise ConfigError(f"config.data.{key} = {data[key]!r}: no such pack; write one with "
                              f"`python -m vidjax.data.pack --csv LIST --out DIR` and point --config.data.{key} "
                              f"at DIR.")
        return _wrap(key, lambda: sources.ArrayRecordVideoSource(data[key]))
    raise ConfigError(f"config.data.source must be one of {', '.join(SOURCES)}; got {data.source!r}.")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Per-element work in the grain workers: decode, augment (train) or cut views (eval), targets, tube mask.

    A video that fails to decode is replaced by another element of the source, drawn from this element's own
    random stream (so the batch stays deterministic), with a warning; `decode_failures` counts the replacements
    and the trainer sums them into its metrics. After `max_decode_attempts` failures in a row the element is
    dropped.
    """

    data: ml_collections.ConfigDict
    source: object
    train: bool
    mask_grid: tuple[int, int, int] | None
    mask_ratio: float
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    def __call__(self, element: dict, rng: np.random.Generator) -> dict | None:
        failures = 0
        valid = element.get("valid")
        while True:
            try:
                out = self.load(element, rng)
                break
            except decode.VideoDecodeError as err:
                failures += 1
                if failures >= self.data.max_decode_attempts or len(self.source) < 2:
                    logger.error("Dropping element %d: %d videos in a row failed to decode, the last: %s",
                                 int(element["index"]), failures, err)
                    return None
                substitute = int(rng.integers(len(self.source) - 1))
                substitute += substitute >= int(element["index"])  # never the video that just failed
                logger.warning("Skipping element %d: %s; using element %d in its place",
                               int(element["index"]), err, substitute)
                element = self.source[substitute]
        samples = out["video"].shape[0] if out["video"].ndim == 5 and self.train else 1
        count = np.zeros(samples, np.int32)
        count[0] = failures  # one count per decoded video, not per augmented sample
        out["decode_failures"] = count if samples > 1 else np.int32(failures)
        if valid is not None:
            out["valid"] = valid
        return out

    def load(self, element: dict, rng: np.random.Generator) -> dict:
        """One element decoded and transformed, without the decode-failure substitution (raises VideoDecodeError)."""
        d = self.data
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
            clips = []
            for window_index in range(1 if self.train else d.test_num_clips):
                clip = decode.read_clip(src, d.num_frames, d.sampling_rate, rng if self.train else None,
                                        start_s=None if np.isnan(start_s) else start_s,
                                        end_s=None if np.isnan(end_s) else end_s,
                                        num_windows=1 if self.train else d.test_num_clips,
                                        window_index=window_index, short_side=short, name=name)
                clips.append(clip.frames)
                window = (clip.start_s, clip.end_s) if window_index == 0 else (window[0], clip.end_s)
            views = np.stack(clips)
        if self.train:
            if stored_clip:
                video = views[0]  # the embedded dataset is not augmented
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
        out.update(self._targets(element, window))
        if self.mask_grid is not None:
            if video.ndim == 5 and self.train:
                out["mask"] = np.stack([tube_mask(rng, self.mask_grid, self.mask_ratio) for _ in video])
            else:
                out["mask"] = tube_mask(rng, self.mask_grid, self.mask_ratio)
        return out

    def _augment(self, video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d, size = self.data, self.data.image_size
        if d.rand_augment:
            video = transforms.rand_augment(video, d.rand_augment, rng)
        if d.train_crop == "multi_scale":
            video = transforms.multi_scale_crop(video, size, rng, scales=tuple(d.crop_scales))
        elif d.train_crop == "random_resized":
            video = transforms.random_resized_crop(video, size, rng)
        else:
            video = transforms.random_crop(video, size, rng)
        if d.flip:
            video = transforms.random_flip(video, rng)
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
    if not names and data.source == "synthetic" and data.synthetic_task == "regression":
        names = list(synthetic.REGRESSION_TARGETS)
    return names


def _weights(spec: str, key: str, size: int, balanced) -> np.ndarray | None:
    if not spec:
        return None
    if spec == "balanced":
        return balanced()
    try:
        values = np.array([float(v) for v in spec.split(",")], np.float32)
    except ValueError:
        raise ConfigError(f"config.loss.{key}={spec!r}: give 'balanced' or {size} comma-separated numbers.") from None
    if values.shape != (size,) or (values < 0).any():
        raise ConfigError(f"config.loss.{key} has {values.size} values; give {size} non-negative numbers, one a "
                          f"class, or 'balanced'.")
    return values


def loss_weights(config: ml_collections.ConfigDict, source) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(class_weights, pos_weight) from config.loss: explicit lists, or "balanced" from the training labels.

    Balanced class weights are N / (C * count_c) (scikit-learn's "balanced"; classes with no example get 0);
    balanced positive weights are negatives / positives per class (1 for a class with no positive). Both read
    every training element once (file lists and folders: no video is decoded; packs and the embedded dataset
    read or render every element, seconds for thousands).
    """
    c = config.data.num_classes
    task = config.task
    if config.loss.class_weights and task != "classification":
        raise ConfigError(f"config.loss.class_weights applies to task='classification', not {task!r}.")
    if config.loss.pos_weight and task != "multilabel":
        raise ConfigError(f"config.loss.pos_weight applies to task='multilabel', not {task!r}.")

    def label_matrix() -> np.ndarray:
        key = "label" if task == "classification" else "labels"
        rows = [source[i][key] for i in range(len(source))]
        return np.eye(c, dtype=np.float64)[np.asarray(rows)] if key == "label" else np.asarray(rows, np.float64)

    def balanced_classes() -> np.ndarray:
        counts = label_matrix().sum(0)
        return np.where(counts > 0, counts.sum() / (c * np.maximum(counts, 1)), 0.0).astype(np.float32)

    def balanced_positives() -> np.ndarray:
        labels = label_matrix()
        pos = labels.sum(0)
        return np.where(pos > 0, (len(labels) - pos) / np.maximum(pos, 1), 1.0).astype(np.float32)

    return (_weights(config.loss.class_weights, "class_weights", c, balanced_classes),
            _weights(config.loss.pos_weight, "pos_weight", c, balanced_positives))


def check_data_config(config: ml_collections.ConfigDict) -> None:
    """Data settings that would only fail inside a worker, checked before anything is built."""
    d = config.data
    if d.train_crop not in TRAIN_CROPS:
        raise ConfigError(f"config.data.train_crop={d.train_crop!r}; choose one of {', '.join(TRAIN_CROPS)}.")
    if d.rand_augment:
        try:
            transforms.parse_rand_augment(d.rand_augment)
        except ValueError as err:
            raise ConfigError(f"config.data.rand_augment: {err}") from err
    if d.num_samples < 1 or config.batch_size % d.num_samples:
        raise ConfigError(f"config.data.num_samples={d.num_samples} must be >= 1 and divide config.batch_size="
                          f"{config.batch_size} (the batch counts clips: batch_size / num_samples videos a step).")
    if d.test_num_clips < 1 or d.test_num_crops < 1:
        raise ConfigError("config.data.test_num_clips and test_num_crops must be >= 1.")
    if not 0.0 <= d.erase_prob <= 1.0:
        raise ConfigError(f"config.data.erase_prob={d.erase_prob} must be in [0, 1].")


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
    """(videos, samples, ...) -> (videos * samples, ...): repeated augmentation's clips become batch rows."""
    k = batch["video"].shape[1]
    out = {}
    for key, value in batch.items():
        if key in ("video", "mask", "decode_failures"):
            out[key] = value.reshape(-1, *value.shape[2:])
        else:
            out[key] = np.repeat(value, k, axis=0)
    return out


def make_dataset(config: ml_collections.ConfigDict, split: str, source, *, process_index: int = 0,
                 process_count: int = 1, mask_grid: tuple[int, int, int] | None = None) -> grain.IterDataset:
    """Batched grain IterDataset of this process's share; infinite (reshuffled each epoch) for "train".

    Shuffling and every random draw are keyed by the *global* element index, and each process then takes every
    process_count-th element: the shares are disjoint, and no two processes draw the same crops or masks.
    Evaluation is unshuffled, with fixed seeds, and padded to whole global batches (rows marked `valid` False;
    pre-training evals, a loss estimate, are trimmed instead) so that every process runs the same number of eval
    steps and every video is scored once. With repeated augmentation (`num_samples` k) a training batch holds
    batch_size / k videos, each as k clips; with several eval views, eval videos are (views, T, H, W, 3).
    """
    data = config.data
    train = split == "train"
    samples = data.num_samples if train else 1
    local_batch = config.batch_size // process_count // samples
    if train:
        ds = grain.MapDataset.source(source).shuffle(seed=data.seed + config.seed).repeat()
    elif config.task == "pretrain":
        ds = grain.MapDataset.source(source)
        ds = ds[: len(ds) - len(ds) % config.batch_size]
    else:
        ds = grain.MapDataset.source(PaddedSource(source, -(-len(source) // config.batch_size) * config.batch_size))
    preprocess = Preprocess(data=data, source=source, train=train, mask_grid=mask_grid,
                            mask_ratio=config.model.get("mask_ratio", 0.0),
                            pixel_mean=tuple(config.model.pixel_mean), pixel_std=tuple(config.model.pixel_std))
    ds = ds.random_map(preprocess, seed=data.seed + config.seed + (0 if train else 1))
    # grain's defaults (16 reader threads, 500 buffered elements) oversubscribe the cores when each element is a
    # PyAV decode, and buffer gigabytes of clips; a couple of threads and two batches ahead keep workers busy.
    read = grain.ReadOptions(num_threads=2 if data.num_workers else 4, prefetch_buffer_size=2 * local_batch)
    it = ds[process_index::process_count].to_iter_dataset(read).batch(local_batch, drop_remainder=True)
    if samples > 1:
        it = it.map(_flatten_samples)
    if data.num_workers > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
    return it


def _absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; when vidjax is driven from Python (a notebook, a test) rather
    # than `vidjax.main`, nothing has parsed them, and the workers would fail on start.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def check_batch_size(config: ml_collections.ConfigDict, process_count: int, num_devices: int) -> None:
    """Batch size errors before anything is compiled: it must split evenly over processes and devices."""
    if config.batch_size % process_count or config.batch_size % num_devices:
        raise ConfigError(f"config.batch_size={config.batch_size} must be divisible by the number of processes "
                          f"({process_count}) and of devices ({num_devices}).")
