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
from vidjax.data import decode, transforms
from vidjax.data.sources import CsvVideoSource
from vidjax.data.synthetic import SyntheticVideoSource

SPLITS = ("train", "eval")

logger = logging.getLogger(__name__)


def tube_mask(rng: np.random.Generator, grid: tuple[int, int, int], mask_ratio: float) -> np.ndarray:
    """Bool (t*h*w,) mask, True = masked: int(mask_ratio*h*w) spatial positions masked, the same at every t."""
    t, h, w = grid
    spatial = np.zeros(h * w, dtype=bool)
    spatial[rng.permutation(h * w)[: int(mask_ratio * h * w)]] = True
    return np.tile(spatial, t)


def make_source(data: ml_collections.ConfigDict, split: str):
    """The random-access source of one split, with an error naming the setting to fix when data is missing."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if data.source == "synthetic":
        return SyntheticVideoSource(
            num_examples=data.num_train if split == "train" else data.num_eval, num_frames=data.num_frames,
            height=data.image_size, width=data.image_size, num_classes=data.num_classes, seed=data.seed,
            split="train" if split == "train" else "validation")
    if data.source == "csv":
        key = "train_csv" if split == "train" else "eval_csv"
        path = data[key]
        if not path or not os.path.exists(path):
            raise ConfigError(
                f"config.data.{key} = {path!r}: no such file. Point it at the {split} list "
                f"(`path label` per line) with --config.data.{key}=/path/to/{split}.csv and set "
                f"--config.data.root to the video folder; docs/datasets.md explains how to prepare Kinetics-400. "
                f"To try vidjax without data, add :runlocal to --config (embedded generated dataset).")
        try:
            return CsvVideoSource(path, root=data.root, num_classes=data.num_classes,
                                  skip_missing=data.skip_missing)
        except FileNotFoundError as err:
            raise ConfigError(f"{err} (config.data.{key}: with --config.data.skip_missing=True vidjax trains on "
                              f"the files that exist)") from err
        except ValueError as err:
            raise ConfigError(f"{err} (config.data.{key})") from err
    raise ConfigError(f"config.data.source must be 'synthetic' or 'csv', got {data.source!r}.")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Per-element work in the grain workers: decode (file sources), crop/flip, tube mask."""

    num_frames: int
    image_size: int
    sampling_rate: int
    short_side: int
    train: bool
    mask_grid: tuple[int, int, int] | None
    mask_ratio: float

    def __call__(self, element: dict, rng: np.random.Generator) -> dict | None:
        if "video" in element:
            video = element["video"]
        else:
            try:
                video = decode.decode_clip(element["path"], self.num_frames, self.sampling_rate,
                                           rng if self.train else None)
            except decode.VideoDecodeError as err:
                logger.warning("Skipping element %d: %s", int(element["index"]), err)
                return None
            video = transforms.resize_short_side(video, self.short_side or self.image_size)
            if self.train:
                video = transforms.random_flip(transforms.random_crop(video, self.image_size, rng), rng)
            else:
                video = transforms.center_crop(video, self.image_size)
        out = {"video": np.ascontiguousarray(video, dtype=np.uint8), "label": np.int32(element["label"]),
               "index": np.int32(element["index"])}
        if self.mask_grid is not None:
            out["mask"] = tube_mask(rng, self.mask_grid, self.mask_ratio)
        return out


def make_dataset(config: ml_collections.ConfigDict, split: str, source, *, process_index: int = 0,
                 process_count: int = 1, mask_grid: tuple[int, int, int] | None = None) -> grain.IterDataset:
    """Batched grain IterDataset of this process's share; infinite (reshuffled each epoch) for "train".

    Shuffling and every random draw are keyed by the *global* element index, and each process then takes every
    process_count-th element: the shares are disjoint, and no two processes draw the same crops or masks.
    Evaluation is unshuffled, with fixed seeds, and trimmed to whole global batches so that every process runs
    the same number of eval steps.
    """
    data = config.data
    local_batch = config.batch_size // process_count
    train = split == "train"
    ds = grain.MapDataset.source(source)
    if train:
        ds = ds.shuffle(seed=data.seed + config.seed).repeat()
    else:
        ds = ds[: len(ds) - len(ds) % config.batch_size]
    preprocess = Preprocess(
        num_frames=data.num_frames, image_size=data.image_size, sampling_rate=data.sampling_rate,
        short_side=data.short_side, train=train, mask_grid=mask_grid,
        mask_ratio=config.model.get("mask_ratio", 0.0))
    ds = ds.random_map(preprocess, seed=data.seed + config.seed + (0 if train else 1))
    it = ds[process_index::process_count].to_iter_dataset().batch(local_batch, drop_remainder=True)
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
