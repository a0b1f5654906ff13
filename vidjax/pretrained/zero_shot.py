"""Free-text labels scored by a video-text checkpoint (VideoPrism's video-text model), shared by `python -m
vidjax.predict --labels`, `vidjax.zeroshot` and `vidjax.demo --labels`: their flags (--labels, --labels_file,
--temperature: `add_label_flags`), the labels those give (`read_labels`), the text tower's embeddings of them
(`label_features`), and a runner of each clip's probabilities over them (`label_scores`). Each error is a ValueError
naming the flag or the checkpoint, the text of the command's `error:` line.
"""

from __future__ import annotations

import argparse

import numpy as np

from vidjax import fileio, pretrained
from vidjax.tokenizer import TextTooLongError, TokenizerError


def add_label_flags(parser: argparse.ArgumentParser, labels_help: str) -> None:
    """--labels, --labels_file and --temperature, the zero-shot flags of predict, zeroshot and the demo."""
    parser.add_argument("--labels", default="", metavar="'A;B;C'",
                        help=f"video-text checkpoint: {labels_help}, separated by ';'")
    parser.add_argument("--labels_file", default="", metavar="FILE",
                        help="video-text checkpoint: the labels, one per line (instead of --labels)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="video-text checkpoint: label probabilities are the softmax of cosine / this (default "
                             "1, transformers' default; the official colab uses 0.01)")


def read_labels(labels: str = "", labels_file: str = "") -> list[str]:
    """The labels of --labels ("a;b;c") or --labels_file (one per line), stripped, blank ones dropped. A ValueError
    naming the flag for both or neither given, an unreadable file, no label left, or a label given twice."""
    if labels and labels_file:
        raise ValueError(f"--labels and --labels_file={labels_file} both give labels; use one of them.")
    if labels_file:
        try:
            with open(fileio.user_path(labels_file), encoding="utf-8") as f:
                given, flag = f.read().splitlines(), f"--labels_file={labels_file}"
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--labels_file={labels_file} cannot be read ({e}); give a text file with one label per "
                             f"line.") from e
    else:
        given, flag = labels.split(";"), f"--labels={labels!r}"
    names = [name.strip() for name in given if name.strip()]
    if not names:
        raise ValueError(f"{flag} gives an empty label list; give at least one label, e.g. --labels=\"a dog "
                         f"running;a cat sleeping\" (';' between labels) or a --labels_file with one per line.")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{flag} gives {twice[0]!r} twice; give each label once.")
    return names


def label_features(model: pretrained.Pretrained, labels: list[str], checkpoint: str, flag: str = "--labels"
                   ) -> np.ndarray:
    """The text tower's embeddings (N, D) of `labels` for zero-shot scoring with `model`. A ValueError naming the
    checkpoint when it has no text tower (a vision-only or classifier checkpoint) or no tokenizer, and naming the
    label (and the tower's limit) for a label with more tokens than the tower has positions."""
    if not isinstance(model, pretrained.PretrainedVideoText):
        raise ValueError(f"{flag}: --checkpoint={checkpoint} is a {model.model_name} checkpoint with no text tower "
                         f"(head {model.config.get('head')!r}), so it cannot score text; give a video-text checkpoint "
                         f"(VideoPrism's video-text model, e.g. a converted google/videoprism-lvt-base-f16r288).")
    try:
        return model.text_features(labels)
    except TextTooLongError as e:
        raise ValueError(f"{flag}: the label {e.text!r} is {e.length} tokens, more than the {e.limit} the text tower "
                         f"of --checkpoint={checkpoint} takes; shorten it (labels are never cut short).") from e
    except (TokenizerError, ImportError, ValueError) as e:
        raise ValueError(f"--checkpoint={checkpoint}: {e}") from e


def label_scores(model: pretrained.Pretrained, labels: list[str], checkpoint: str, batch_size: int, *,
                 temperature: float = 1.0, runner=None) -> pretrained.LabelScores:
    """A runner of each clip's zero-shot probabilities over `labels` (`label_features`' errors): `runner` (a
    `BatchRunner` of `pretrained.video_embeds`, or one with its `run`) made with `batch_size` when not given."""
    text = label_features(model, labels, checkpoint)
    runner = runner or pretrained.BatchRunner(model, pretrained.video_embeds, batch_size)
    return pretrained.LabelScores(runner, text, temperature)
