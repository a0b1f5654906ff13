r"""Embeddings of every video of a list or folder from any checkpoint, saved to one .npz (for probes, retrieval,
clustering), one per video or one per sliding window of long videos.

  python -m vidjax.extract --checkpoint=/work/pretrain --csv=/data/train.csv --root=/data/videos --out=train.npz
  python -m vidjax.extract --checkpoint=/ckpt/videomae_b_k400 --csv=val.csv --out=val.npz --pool=cls
  python -m vidjax.extract --checkpoint=/ckpt/videomae_b_k400 --folder=/data/ucf101/test --out=test.npz
  python -m vidjax.extract --checkpoint=/ckpt/videomae_b_k400 --csv=recordings.csv --window=4 --stride=2 --out=w.npz

--checkpoint is a training workdir (its latest checkpoint), one of its step folders, a `python -m vidjax.convert`
output or a Hugging Face Hub name (pretrained/hub.py), with or without a head. --csv is a VideoMAE list (`path label`
lines) or a header CSV (path, label or labels, start/end, regression columns named by --targets), read by
`vidjax.data.sources.CsvVideoSource`; --folder is a class-folder tree ROOT/<class>/.../<video> (labels: the
sorted class folders, or in the order of --class_names_file), read by `FolderVideoSource`, as `vidjax.data.check`
and `vidjax.data.pack` take it. Each video gives one clip decoded and centre-cropped as the checkpoint's evaluation
does (`Pretrained.read_views`), batched through the jitted model on a data mesh over this host's devices;
--num_workers threads decode ahead.

Pooling (--pool) of the encoder's last hidden state (B, tokens, D):
  mean    the mean over the patch tokens (a CLS token, when the model has one, is left out), then the model's
          fc_norm when it has one (VideoMAE classifiers with mean pooling): exactly the vector its head reads.
  cls     the CLS token (TimeSformer, ViViT with a token classifier, VideoMamba); VideoMAE has none.
  tokens  every token: features (N, tokens, D).
  video   the model's own video embedding, for models that have one: VideoPrism's video and video-text models'
          attention-pooled, L2-normalised "video_embeds", the vector its text tower is trained against (what
          `python -m vidjax.zeroshot --features` searches with text).
A VideoMAE pre-training checkpoint runs its encoder on all tokens (no mask), after its final norm; an SVT training
run its TimeSformer backbone; a captioner its video encoder.

Writes FILE.npz (atomically): `features` float32 (N, D) or (N, tokens, D), `paths` (N,), `index` (N,) (the
video's position in the list, counting only files that exist), and `label` / `labels` / `targets` / `captions` (with
--caption_column: each video's captions, ';'-separated) as the list has them, plus `class_names` (from
--class_names_file, else the checkpoint's) / `target_names` when known; and
FILE.index.json naming the checkpoint, pooling, rows and the videos that failed (missing or undecodable: reported,
left out; the progress lines and the summary count them alike, out of every video the list names). Exit status
0, 1 when some videos failed (the others are still written), 2 for bad arguments (an --out that cannot be written
among them: a folder, or a path under a file, checked before any video is read), 130 or 143 stopped by SIGINT or
SIGTERM.

Long videos: --window=SECONDS cuts each video (or the row's start/end segment) into windows of that many seconds,
--stride seconds apart (starting at 0, as many as fit; a video shorter than one window is one window), as `python
-m vidjax.predict --window` does, and gives one embedding per window (centre crop of the window's centre clip):
the .npz then has one row per window, in list then window order, with `window` (its number in the video),
`start_s` and `end_s` beside `paths` / `index` / the labels, which repeat the video's. The windows are read in one
forward pass over each file, keeping only the frames the next window needs, so a 2-hour file takes the memory of a
2-minute one (the .npz's rows, read back at the end, excepted). Each window's row is written as it comes to
FILE.jsonl.partial (a settings header line, then {"path", "index", "window", "start_s", "end_s", "embedding"};
{"path", "index", "error"} for a video that failed), flushed; the .npz and index are written from it at the end,
then it is removed. Run the same command again after an interruption and it resumes: the rows written are kept (a
line cut short is dropped) and each video goes on from its next window, so the .npz is the one an uninterrupted
run writes; other settings are refused. Ctrl-C (SIGINT) or SIGTERM stops a run with one line saying what the file
kept (`stopped by SIGTERM: kept 37 windows of 2 videos in FILE.jsonl.partial; run the same command again to
resume`) and exit status 130 (SIGINT) or 143 (SIGTERM); without --window nothing is kept. A progress line on
stderr shows each video's windows done / total and the time left. --pool=tokens does not apply with --window (one
vector per window).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import NoReturn

import grain
import numpy as np

from vidjax import cli, fileio, pretrained, tasks
from vidjax.data import decode, sources
from vidjax.pretrained import pooling, windows

_TARGET_KEYS = tuple(dict.fromkeys(tasks.target_keys().values()))


def _segment(element: dict) -> tuple[float | None, float | None]:
    """The [start, end) seconds of a list row (None: the video's start or end)."""
    start, end = (float(element.get(k, np.nan)) for k in ("start", "end"))
    return (None if np.isnan(start) else start), (None if np.isnan(end) else end)


class _Decode:
    """Grain map: one element of the list -> its uint8 clip, or the reason it did not decode."""

    def __init__(self, model: pretrained.Pretrained, sampling_rate: int | None):
        self.model, self.sampling_rate = model, sampling_rate

    def __call__(self, element: dict) -> dict:
        out = {"element": element, "clip": None, "error": ""}
        try:
            start, end = _segment(element)
            out["clip"] = self.model.read_views(element["path"], sampling_rate=self.sampling_rate, start_s=start,
                                                end_s=end)[0]
        except decode.VideoDecodeError as e:
            out["error"] = str(e)
        return out


def _missing(source, log) -> list[dict]:
    """The failures of the listed files that do not exist (`source.missing_paths` of a source built with
    skip_missing), each reported on `log`."""
    failed = [{"path": str(p), "index": None, "error": f"cannot decode video {str(p)!r}: file does not exist"}
              for p in getattr(source, "missing_paths", [])]
    for item in failed:
        print(f"error: {item['error']}; left out", file=log)
    return failed


def _arrays(rows: list[np.ndarray], kept: list[dict]) -> dict:
    """The .npz arrays of the feature `rows` of the list's elements `kept` (one per row)."""
    arrays = {"features": np.stack(rows) if rows else np.zeros((0,), np.float32),
              "paths": np.array([str(e["path"]) for e in kept]),
              "index": np.array([int(e["index"]) for e in kept], np.int64)}
    for key in _TARGET_KEYS:
        if kept and key in kept[0]:
            if isinstance(kept[0][key], tuple):  # captions: one string per video, ';'-separated as the list has them
                arrays[key] = np.array([";".join(e[key]) for e in kept])
            else:
                arrays[key] = np.stack([np.asarray(e[key]) for e in kept])
    return arrays


def extract(model: pretrained.Pretrained, source, *, pool: str = "mean", batch_size: int = 16,
            num_workers: int = 0, sampling_rate: int | None = None, log=None) -> tuple[dict, list[dict]]:
    """(arrays for the .npz, failures [{"path", "index", "error"}]) for every element of `source`, in order.

    The listed files that do not exist (`source.missing_paths` of a source built with skip_missing) are failures
    too (index None), so the counts cover every video the list names. Failures and a progress line (every few
    seconds, and at the end) go to `log` (default stderr).
    """
    log = log or sys.stderr
    runner = pretrained.BatchRunner(model, pooling.pool_fn(model, pool), batch_size)
    read = grain.ReadOptions(num_threads=max(1, num_workers), prefetch_buffer_size=2 * runner.batch_size)
    decoded = grain.MapDataset.source(source).map(_Decode(model, sampling_rate)).to_iter_dataset(read)
    kept: list[dict] = []
    failed = _missing(source, log)
    missing, total = len(failed), len(source) + len(failed)
    start = last_report = time.perf_counter()

    def good_clips():
        nonlocal last_report
        for done, item in enumerate(decoded, start=1):
            if item["clip"] is None:
                failed.append({"path": str(item["element"]["path"]), "index": int(item["element"]["index"]),
                               "error": item["error"]})
                print(f"error: {item['error']}; left out", file=log, flush=True)
            else:
                kept.append(item["element"])
                yield item["clip"]
            now = time.perf_counter()
            if now - last_report >= windows.PROGRESS_EVERY_S or done == len(source):
                last_report = now
                print(f"extract: {missing + done}/{total} videos, {len(failed)} failed, "
                      f"{done / max(now - start, 1e-9):.1f} videos/s", file=log, flush=True)

    return _arrays(list(runner.run(good_clips())), kept), failed


def _write_windows(model: pretrained.Pretrained, runner: pretrained.BatchRunner, out: windows.Rows, label: str,
                   element: dict, window_s: float, stride_s: float, sampling_rate: int | None) -> None:
    """One video's window rows written to `out` as they come, from the first window `out` lacks."""
    path, index = str(element["path"]), int(element["index"])
    spans = windows.spans(path, window_s, stride_s, *_segment(element))
    first = out.done.get(index, 0)
    progress = windows.Progress(label, len(spans), first)
    views = windows.window_views(model, path, spans[first:], sampling_rate=sampling_rate)
    embeddings = runner.run(view[0] for view in views)
    try:
        for n, (start, end) in enumerate(spans[first:], start=first):
            out.write({"path": path, "index": index, "window": n, "start_s": start, "end_s": end,
                       "embedding": next(embeddings).tolist()})
            progress.step()
    finally:
        progress.close()


def extract_windows(model: pretrained.Pretrained, source, out: windows.Rows, *, window_s: float,
                    stride_s: float = 0.0, pool: str = "mean", batch_size: int = 16, sampling_rate: int | None = None,
                    log=None) -> list[dict]:
    """Writes to `out` (keyed by "index") one row per window of every element of `source`, in order, going on
    from the rows it has; a video that fails gets one {"path", "index", "error"} row. Returns the failures
    [{"path", "index", "error"}] as `extract` does (missing files first, then in list order)."""
    log = log or sys.stderr
    runner = pretrained.BatchRunner(model, pooling.pool_fn(model, pool), batch_size)
    failed = _missing(source, log)
    for i in range(len(source)):
        element = source[i]
        path, index = str(element["path"]), int(element["index"])
        if index not in out.errors:
            try:
                _write_windows(model, runner, out, f"[{i + 1}/{len(source)}] {path}", element, window_s, stride_s,
                               sampling_rate)
            except decode.VideoDecodeError as e:
                out.write({"path": path, "index": index, "error": str(e)})
        if index in out.errors:
            failed.append({"path": path, "index": index, "error": out.errors[index]})
            print(f"error: {out.errors[index]}; left out", file=log, flush=True)
    return failed


def window_arrays(out: windows.Rows, source) -> dict:
    """The .npz arrays of `out`'s window rows, read back from its file (videos that failed left out): `extract`'s
    arrays with one row per window, plus its `window`, `start_s` and `end_s`."""
    rows, kept, spans = [], [], []
    for row in out.rows():
        if "window" in row and row["index"] not in out.errors:
            rows.append(np.asarray(row["embedding"], np.float32))
            kept.append(source[row["index"]])
            spans.append((row["window"], row["start_s"], row["end_s"]))
    arrays = _arrays(rows, kept)
    arrays["window"] = np.array([w for w, _, _ in spans], np.int64)
    arrays["start_s"] = np.array([s for _, s, _ in spans], np.float64)
    arrays["end_s"] = np.array([e for _, _, e in spans], np.float64)
    return arrays


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.extract", __doc__)
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="training workdir, WORKDIR/checkpoints/<step>, a converted checkpoint, or a Hugging "
                             "Face Hub name (owner/name[@REV], owner/name/FILE.pth)")
    videos = parser.add_mutually_exclusive_group(required=True)
    videos.add_argument("--csv", metavar="LIST", help="video list (VideoMAE `path label` or header CSV)")
    videos.add_argument("--folder", metavar="ROOT", help="class-folder tree ROOT/<class>/.../<video>")
    parser.add_argument("--root", default="", help="folder that relative paths in the list are joined to")
    parser.add_argument("--caption_column", default="", metavar="NAME",
                        help="header CSV: the column of each video's captions (';'-separated), e.g. caption; such a "
                             "list needs no label column (the captions file of `python -m vidjax.zeroshot`)")
    parser.add_argument("--out", required=True, metavar="FILE.npz",
                        help="output features file; FILE.index.json is written beside it")
    parser.add_argument("--pool", default="mean", choices=pooling.POOLS,
                        help="how tokens become one vector (default mean)")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="clips per forward pass (rounded up to a multiple of the device count)")
    parser.add_argument("--num_workers", type=int, default=2,
                        help="decoding threads (default 2; with --window each video is read in one pass instead)")
    parser.add_argument("--targets", default="", help="header CSV: comma-separated regression columns to store")
    parser.add_argument("--num_classes", type=int, default=0,
                        help="header CSV with a multi-label `labels` column: the number of classes")
    parser.add_argument("--class_names_file", default="",
                        help="class names, one per line (stored with the features; with --folder, the folders' order)")
    parser.add_argument("--window", type=float, default=0.0, metavar="SECONDS",
                        help="one embedding per window of this many seconds (default 0: one per video)")
    parser.add_argument("--stride", type=float, default=0.0, metavar="SECONDS",
                        help="with --window: seconds between window starts (default: the window length)")
    parser.add_argument("--sampling_rate", type=int, default=0,
                        help="frame stride (default 0: the checkpoint's; converted checkpoints that record none use "
                             f"{pretrained.DEFAULT_SAMPLING_RATE})")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    for flag in ("batch_size", "num_workers", "num_classes", "sampling_rate"):
        if getattr(args, flag) < (1 if flag == "batch_size" else 0):
            return f"--{flag}={getattr(args, flag)} is out of range."
    if not args.out.endswith(".npz"):
        return f"--out={args.out} must end with .npz (FILE.npz; FILE.index.json is written beside it)."
    problem = windows.flag_problem(args.window, args.stride)
    if problem:
        return problem
    if args.window and args.pool == "tokens":
        return "--window gives one vector per window: use --pool=mean or --pool=cls with it."
    if args.folder and (args.root or args.targets or args.num_classes or args.caption_column):
        return ("--root, --targets, --num_classes and --caption_column describe a --csv list; a --folder's classes "
                "are its folders.")
    stem = args.out[: -len(".npz")]
    files = (args.out, stem + ".index.json", *((stem + ".jsonl.partial",) if args.window else ()))
    return windows.output_problem("--out", args.out, "features.npz", files)


def _listed(args: argparse.Namespace) -> str:
    """The flag that names the videos, as messages quote it."""
    return f"--csv={args.csv}" if args.csv else f"--folder={args.folder}"


def _targets(args: argparse.Namespace) -> tuple[str, ...]:
    """The regression columns of --targets."""
    return tuple(t.strip() for t in args.targets.split(",") if t.strip())


def _source(args: argparse.Namespace, targets: tuple[str, ...]):
    # skip_missing: a missing file is one more failure to report, not a reason to extract nothing.
    if args.folder:
        names = sources.read_class_names(args.class_names_file) if args.class_names_file else None
        return sources.FolderVideoSource(args.folder, class_names=names, skip_missing=True)
    return sources.CsvVideoSource(args.csv, root=args.root, num_classes=args.num_classes or None, skip_missing=True,
                                  targets=targets, class_names_file=args.class_names_file or None,
                                  caption_column=args.caption_column or None)


def _index_row(arrays: dict, i: int) -> dict:
    """The index's entry for row `i` of the .npz: its video, and with --window the window."""
    row = {"row": i, "index": int(arrays["index"][i]), "path": str(arrays["paths"][i])}
    if "window" in arrays:
        row.update(window=int(arrays["window"][i]), start_s=float(arrays["start_s"][i]),
                   end_s=float(arrays["end_s"][i]))
    return row


def _load(args: argparse.Namespace
          ) -> tuple[sources.CsvVideoSource | sources.FolderVideoSource, pretrained.Pretrained] | None:
    """(the list's source, the checkpoint) the flags name, or None after an `error:` line: a list that cannot be
    read, a checkpoint that does not load or has no --pool of that name."""
    try:
        source = _source(args, _targets(args))
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {_listed(args)}: {e}", file=sys.stderr)
        return None
    model = pretrained.load_for_command(args.checkpoint)
    if model is None:
        return None
    try:
        pooling.pool_fn(model, args.pool)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    return source, model


def main(argv: list[str] | None = None) -> int:
    started = cli.start(_parser(), argv, _check_args, load=_load)
    if started is None:
        return 2
    args, (source, model) = started
    listed, targets = _listed(args), _targets(args)
    listing = {"csv": os.path.abspath(args.csv)} if args.csv else {"folder": os.path.abspath(args.folder)}
    settings = {"window_s": args.window or None, "stride_s": (args.stride or args.window) or None}
    out = None
    if args.window:
        header = {"checkpoint": args.checkpoint, "model_name": model.model_name, "pool": args.pool, **listing,
                  "root": args.root, "videos": len(source), **settings, "sampling_rate": args.sampling_rate or None,
                  "batch_size": args.batch_size}
        try:
            out = windows.Rows(args.out[: -len(".npz")] + ".jsonl", header, key="index")
        except (ValueError, OSError) as e:
            print(f"error: --out={args.out}: {e}", file=sys.stderr)
            return 2
        if out.resumed:
            print(f"Resuming {out.partial}: {out.summary()} already done.", file=sys.stderr)
    try:
        return _extract_and_write(args, model, source, out, listed, listing, settings, targets)
    except KeyboardInterrupt as err:
        if out is None:
            raise  # nothing kept: `cli.guard`'s line
        kept = out.kept()
        if kept is None:  # stopped after the .npz and index were written
            return cli.stopped(err, f"{args.out} and its index are complete.")
        return cli.stopped(err, f"kept {kept}; run the same command again to resume.")


def _extract_and_write(args: argparse.Namespace, model: pretrained.Pretrained, source, out: windows.Rows | None,
                       listed: str, listing: dict, settings: dict, targets: tuple[str, ...]) -> int:
    """The embeddings extracted (with --window into `out`, then read back) and written: the .npz and its index."""
    if out:
        failed = extract_windows(model, source, out, window_s=args.window, stride_s=args.stride, pool=args.pool,
                                 batch_size=args.batch_size, sampling_rate=args.sampling_rate or None)
        out.close()
        arrays = window_arrays(out, source)
    else:
        arrays, failed = extract(model, source, pool=args.pool, batch_size=args.batch_size,
                                 num_workers=args.num_workers, sampling_rate=args.sampling_rate or None)
    if not len(arrays["paths"]):
        print(f"error: none of the {len(source) + len(source.missing_paths)} videos of {listed} decoded; nothing "
              f"written.", file=sys.stderr)
        if out:
            os.remove(out.partial)
        return 1
    # The list's own names first; else the checkpoint's (its classes: the labels, when it was trained on such a
    # list), unless a label lies beyond them.
    class_names = source.class_names
    if not class_names and model.class_names and int(arrays.get("label", np.zeros(1)).max()) < len(
            model.class_names):
        class_names = model.class_names
    if class_names:
        arrays["class_names"] = np.array(class_names)
    if targets:
        arrays["target_names"] = np.array(targets)
    with fileio.atomic_output(args.out, "wb") as f:
        np.savez(f, **arrays)
    index = {"checkpoint": args.checkpoint, "model_name": model.model_name, "task": model.task, "pool": args.pool,
             **listing, "root": args.root, **settings, "features_shape": list(arrays["features"].shape),
             "preprocessing": model.preprocessing, "sampling_rate": args.sampling_rate or model.sampling_rate,
             "class_names": arrays["class_names"].tolist() if "class_names" in arrays else None,
             "target_names": list(targets) or None,
             "rows": [_index_row(arrays, i) for i in range(len(arrays["paths"]))],
             "failed": failed}
    index_path = args.out[: -len(".npz")] + ".index.json"
    with fileio.atomic_output(index_path) as f:
        json.dump(index, f, indent=1)
    if out:
        os.remove(out.partial)  # the .npz holds every row now
    rows = f"{len(arrays['paths'])} windows of {len(set(arrays['index'].tolist()))}" if out else len(arrays["paths"])
    print(f"Wrote {args.out}: features {tuple(arrays['features'].shape)} of {rows} videos "
          f"({args.pool} pooling){f', {len(failed)} failed (listed in the index)' if failed else ''}; "
          f"index in {index_path}")
    return 1 if failed else 0


def run_command() -> NoReturn:
    """`python -m vidjax.extract`: what its entry module calls."""
    cli.guard(main)
