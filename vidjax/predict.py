r"""Predictions for video files from a checkpoint with a head: top-k classes, multi-label scores or regression values.

  python -m vidjax.predict --checkpoint=/work/finetune clip.mp4 other.mp4 --top_k=5
  python -m vidjax.predict --checkpoint=/ckpt/videomae_b_k400 clip.mp4 --num_clips=5 --num_crops=3
  python -m vidjax.predict --checkpoint=/work/finetune long.mp4 --window=2 --stride=1 --json=long.json

--checkpoint is a training workdir (its latest checkpoint), one of its step folders (WORKDIR/checkpoints/<step>) or
a `python -m vidjax.convert` output. Each video is decoded and cropped exactly as the checkpoint's evaluation did
(frames, sampling rate, short-side resize, centre crop): --num_clips evenly spaced clips x --num_crops crops along
the long side, with the per-view probabilities (softmax; sigmoid for multi-label; raw values for regression)
averaged. With --window the video is cut into windows of that many seconds, --stride seconds apart (starting at 0,
as many as fit; a video shorter than one window is one window), each predicted the same way; the video-level lines
show the mean over windows. --json writes every prediction (full score vectors, top-k, per-window entries and the
aggregate) to a file, atomically; --json=- prints that JSON on stdout instead of the text, for scripts.

Output: each video's path, then one indented line per label, `label  probability` (names from the checkpoint,
else "class N"), best first: the --top_k classes; for multi-label the classes scoring at least --threshold (else a
note and the --top_k highest); for regression one line per target and its value. With --window each window follows
as `window START-END s` and its own indented lines. A video that cannot be decoded gets one `error:` line on
stderr and the others still run.
Exit status: 0 all videos predicted, 1 some failed, 2 bad arguments or a checkpoint without a head (a pre-training
or backbone checkpoint: use `python -m vidjax.extract` for embeddings or `python -m vidjax.visualize` for
reconstructions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator

import numpy as np

from vidjax import cli, fileio, pretrained, tasks
from vidjax.data import decode


def output_names(model: pretrained.Pretrained) -> list[str]:
    """Names of the model's outputs: the checkpoint's class or target names, else "class N" / "target N"."""
    n = int(model.config.num_classes)
    kind = tasks.get_task(model.task).output_kind
    names = model.target_names if kind == "target" else model.class_names
    if names and len(names) == n:
        return list(names)
    return [f"{kind} {i}" for i in range(n)]


@dataclasses.dataclass(frozen=True)
class _Scores:
    task: str

    def __call__(self, model, video):
        return tasks.get_task(self.task).scores(model(video)["logits"])


def scores_fn(task: str) -> _Scores:
    """Per-clip scores from the model (`Task.scores`): class probabilities, per-class sigmoid scores, or the
    regressed values. A frozen dataclass, so every runner of a task shares one compilation."""
    return _Scores(task)


def sliding_windows(duration_s: float, window_s: float, stride_s: float) -> list[tuple[float, float]]:
    """[start, end) windows of `window_s` seconds starting every `stride_s` from 0, as many as fit (at least one)."""
    if duration_s <= window_s:
        return [(0.0, duration_s)]
    count = int(np.floor((duration_s - window_s) / stride_s + 1e-9)) + 1
    return [(i * stride_s, i * stride_s + window_s) for i in range(count)]


def describe(task: str, scores: np.ndarray, names: list[str], top_k: int, threshold: float) -> dict:
    """A JSON-able prediction from averaged scores (C,): the full vector plus what the task reports
    (`Task.describe`)."""
    return tasks.get_task(task).describe(scores, names, top_k, threshold)


def format_prediction(task: str, prediction: dict, indent: str = "  ") -> list[str]:
    """The text form of `describe`'s output: one `label  value` line per label, names aligned, best first."""
    return tasks.get_task(task).format_prediction(prediction, indent)


def predict_video(model: pretrained.Pretrained, runner: pretrained.BatchRunner, path: str, *, num_clips: int = 1,
                  num_crops: int = 1, window_s: float = 0.0, stride_s: float = 0.0,
                  sampling_rate: int | None = None) -> tuple[np.ndarray, list[tuple]]:
    """(video-level scores, [(start_s, end_s, scores) per window]) of one video; views and windows are averaged.

    Without `window_s` the whole video is the one window, (None, None, scores). Raises `decode.VideoDecodeError`
    when the video (or any window of it) does not decode.
    """
    if window_s:
        spans = sliding_windows(decode.probe(path).duration_s, window_s, stride_s or window_s)
    else:
        spans = [(None, None)]
    views_per_window = num_clips * num_crops

    def clips() -> Iterator[np.ndarray]:
        for start, end in spans:
            yield from model.read_views(path, num_clips=num_clips, num_crops=num_crops, start_s=start, end_s=end,
                                        sampling_rate=sampling_rate)

    rows = np.stack(list(runner.run(clips())))
    per_window = rows.reshape(len(spans), views_per_window, -1).mean(axis=1)
    windows = [(start, end, scores) for (start, end), scores in zip(spans, per_window, strict=True)]
    return per_window.mean(axis=0), windows


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.predict", __doc__)
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files to predict")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="training workdir, WORKDIR/checkpoints/<step>, or a converted checkpoint")
    parser.add_argument("--top_k", type=int, default=5, help="classes shown per prediction (default 5)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="multi-label: report the classes whose sigmoid score is at least this (default 0.5)")
    parser.add_argument("--window", type=float, default=0.0, metavar="SECONDS",
                        help="predict windows of this many seconds (default 0: one prediction per video)")
    parser.add_argument("--stride", type=float, default=0.0, metavar="SECONDS",
                        help="with --window: seconds between window starts (default: the window length)")
    parser.add_argument("--json", default="", metavar="OUT.json",
                        help="also write every prediction here as JSON; - prints the JSON on stdout instead of text")
    parser.add_argument("--num_clips", type=int, default=1, help="evenly spaced clips per video/window (default 1)")
    parser.add_argument("--num_crops", type=int, default=1,
                        help="crops per clip along the long side (default 1: centre; the published tests use 3)")
    parser.add_argument("--sampling_rate", type=int, default=0,
                        help="frame stride of a clip (default 0: the checkpoint's; converted checkpoints that "
                             f"record none use {pretrained.DEFAULT_SAMPLING_RATE})")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="clips per forward pass (rounded up to a multiple of the device count)")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    for flag in ("top_k", "num_clips", "num_crops", "batch_size"):
        if getattr(args, flag) < 1:
            return f"--{flag}={getattr(args, flag)} must be at least 1."
    if args.sampling_rate < 0:
        return f"--sampling_rate={args.sampling_rate} must be positive (or 0 for the checkpoint's)."
    if args.window < 0 or args.stride < 0:
        return "--window and --stride are seconds and cannot be negative."
    if args.stride and not args.window:
        return "--stride needs --window (the window length in seconds)."
    if not 0.0 < args.threshold < 1.0:
        return f"--threshold={args.threshold} must be between 0 and 1 (a sigmoid score)."
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    model = pretrained.load_for_command(args.checkpoint)
    if model is None:
        return 2
    if not model.has_head:
        kind = "a pre-training" if model.config.get("head") == "pretrain" else "a backbone (head 'none')"
        print(f"error: --checkpoint={args.checkpoint} is {kind} checkpoint of {model.model_name} with no "
              f"classification or regression head, so it has nothing to predict. For embeddings use `python -m "
              f"vidjax.extract --checkpoint={args.checkpoint} --csv=LIST --out=FEATURES.npz` (then `python -m "
              f"vidjax.probe`); to see what a VideoMAE pre-training checkpoint reconstructs use `python -m "
              f"vidjax.visualize --checkpoint={args.checkpoint} VIDEO --out=PREFIX`.", file=sys.stderr)
        return 2
    task = model.task
    names = output_names(model)
    runner = pretrained.BatchRunner(model, scores_fn(task), args.batch_size)
    report = {"checkpoint": args.checkpoint, "task": task, "model_name": model.model_name,
              "num_clips": args.num_clips, "num_crops": args.num_crops, "window_s": args.window or None,
              "stride_s": (args.stride or args.window) or None, "videos": []}
    failed = 0
    for path in args.videos:
        try:
            scores, windows = predict_video(model, runner, path, num_clips=args.num_clips, num_crops=args.num_crops,
                                            window_s=args.window, stride_s=args.stride,
                                            sampling_rate=args.sampling_rate or None)
        except decode.VideoDecodeError as e:
            failed += 1
            print(f"error: {e}; skipped", file=sys.stderr, flush=True)
            report["videos"].append({"path": path, "error": str(e)})
            continue
        aggregate = describe(task, scores, names, args.top_k, args.threshold)
        entry = {"path": path, "error": None, "aggregate": aggregate}
        text = [path, *format_prediction(task, aggregate)]
        if args.window:
            entry["windows"] = []
            for start, end, window_scores in windows:
                prediction = describe(task, window_scores, names, args.top_k, args.threshold)
                entry["windows"].append({"start_s": start, "end_s": end, "prediction": prediction})
                text += [f"  window {start:.2f}-{end:.2f} s", *format_prediction(task, prediction, indent="    ")]
        if args.json != "-":
            print("\n".join(text), flush=True)
        report["videos"].append(entry)
    if args.json == "-":
        print(json.dumps(report, indent=1))
    elif args.json:
        with fileio.atomic_output(args.json) as f:
            json.dump(report, f, indent=1)
    if failed:
        print(f"{failed} of {len(args.videos)} videos failed to decode.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
