"""Kinetics label spaces: class names of Kinetics-400 / 600 / 700 and of K710, and the maps from K710 to the others.

K710 is VideoMAE V2's union of Kinetics-400, -600 and -700 (OpenGVLab/VideoMAEv2, `misc/label_map_k710.txt`): 710
classes once the duplicates across the three releases are merged. Its fine-tuned models and distilled students have
710 outputs; they are evaluated on K400 / K600 / K700 by selecting, for each class of the target, its K710 output
(`misc/label_710to400.json` etc.: entry i is the K710 index of the target's class i). That is what
`run_class_finetuning.py` does to the head's rows when it fine-tunes from K710 on one of the three, and what
`logits_in` does to logits here. The files under kinetics/ are the official repository's (MIT licence), one class
name per line in the order of the model outputs.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

SPACES = ("k400", "k600", "k700", "k710")
_SIZES = {400: "k400", 600: "k600", 700: "k700", 710: "k710"}


def _check(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"Unknown Kinetics label space {space!r}; choose one of {', '.join(SPACES)}.")
    return space


@functools.cache
def class_names(space: str) -> tuple[str, ...]:
    """The class names of `space` ("k400", "k600", "k700" or "k710"), in the order of a model's outputs."""
    text = resources.files("vidjax.data").joinpath(f"kinetics/{_check(space)}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


@functools.cache
def _map(dst: str) -> tuple[int, ...]:
    path = resources.files("vidjax.data").joinpath(f"kinetics/k710_to_{dst}.json")
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def label_map(src: str, dst: str) -> np.ndarray:
    """Indices into `src`'s outputs, one per class of `dst`: `logits[..., label_map(src, dst)]` scores `dst`'s classes.

    Defined from K710 to K400 / K600 / K700 (the official maps), and as the identity from a space to itself.
    """
    _check(src), _check(dst)
    if src == dst:
        return np.arange(len(class_names(src)))
    if src != "k710" or dst == "k710":
        raise ValueError(f"No map from {src} to {dst}: only K710 maps to K400, K600 and K700 (a model trained on "
                         f"one of those has no outputs for the other releases' classes).")
    return np.asarray(_map(dst), np.int64)


def logits_in(logits: np.ndarray, src: str, dst: str) -> np.ndarray:
    """`logits` (..., classes of `src`) -> (..., classes of `dst`), through `label_map`."""
    index = label_map(src, dst)
    if logits.shape[-1] != len(class_names(src)):
        raise ValueError(f"Logits have {logits.shape[-1]} classes; the {src} label space has "
                         f"{len(class_names(src))}.")
    return np.take(logits, index, axis=-1)


def space_for(num_classes: int) -> str | None:
    """The Kinetics label space with `num_classes` classes (400 / 600 / 700 / 710), or None."""
    return _SIZES.get(int(num_classes))


def space_of(names) -> str | None:
    """The Kinetics label space whose class names are exactly `names` (in order), or None."""
    names = tuple(names)
    space = space_for(len(names))
    return space if space is not None and class_names(space) == names else None
