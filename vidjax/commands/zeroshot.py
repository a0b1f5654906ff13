r"""Zero-shot use of a video-text checkpoint: videos scored against free-text labels, and embeddings searched by text.

  python -m vidjax.zeroshot --checkpoint=/ckpt/videoprism_lvt clip.mp4 --labels="a dog running;a cat;cooking"
  python -m vidjax.zeroshot --checkpoint=/ckpt/videoprism_lvt clip.mp4 other.mp4 --labels_file=labels.txt --top_k=5
  python -m vidjax.extract --checkpoint=/ckpt/videoprism_lvt --csv=captions.csv --caption_column=caption \
      --root=/data/videos --pool=video --out=videos.npz
  python -m vidjax.zeroshot --checkpoint=/ckpt/videoprism_lvt --features=videos.npz --labels="a dog on a beach"
  python -m vidjax.zeroshot --checkpoint=/ckpt/videoprism_lvt --features=videos.npz --captions=captions.csv \
      --root=/data/videos

--checkpoint is a video-text checkpoint (VideoPrism's video-text model: `python -m vidjax.convert --from_hf
google/videoprism-lvt-base-f16r288 --out DST`, or the Hub name itself; or the workdir of a contrastive run,
`python -m vidjax.main --config=configs/videoprism.py:recipe=contrastive`) holding its tokenizer (DST/tokenizer/,
WORKDIR/tokenizer/). Labels and queries are free text: --labels="a;b;c" (separated by ';') or --labels_file=FILE
(one per line); blank ones are dropped. Each is tokenised as the text tower was trained to read it
(`vidjax.tokenizer.TextTowerTokenizer`: a published tower's unigram vocabulary as transformers' VideoPrismProcessor
does, with the same ids, padding and attention mask; a tower vidjax trained as its trainer did) and embedded by the
text tower. A text longer than the tower's positions
(64 tokens for the published towers) is refused, never cut short.

Videos (VIDEO arguments): each is decoded as the checkpoint expects (as `python -m vidjax.predict` does: its frames,
size and frame stride, --num_clips evenly spaced clips x --num_crops crops), embedded by the video model, and scored
against every label: the softmax over the labels of the cosine similarity / --temperature (default 1, transformers'
VideoPrismClipModel's default, whose logits_per_text these are; the official colab's 0.01 sharpens them without
changing the ranking), averaged over the views. Output: the video's path, then one `label  probability` line per
label, best first (the --top_k best; default all). `python -m vidjax.predict --labels` and `python -m vidjax.demo
--labels` score the same way, with predict's windows and JSON lines.

Retrieval (--features=FILE.npz, written by `python -m vidjax.extract --pool=video` with this checkpoint): the videos
in it ranked for each label as a query, by the cosine of their embeddings with the query's: one `query` line, then
its --top_k best videos (default 5) as `  path  similarity`. With --captions=LIST (a header CSV naming `path` and
`caption` columns, several captions of a video ';'-separated: the captioning lists; relative paths joined to
--root, as extract joined them) every caption is a query whose answer is its video, and the command reports
text-to-video recall@1, @5 and @10 and the median rank over them (`vidjax.metrics.retrieval_metrics`), the videos
of FILE.npz being the gallery; captions of videos that are not in FILE.npz (failed or not extracted) are counted and
left out. --json=OUT.json writes everything shown (- prints it on stdout instead of the text).

Exit status: 0 done; 1 some videos failed to decode (each named on stderr, the others scored); 2 a bad command line
or input, as one `error:` line naming it: an empty label list, a label given twice, a label or query longer than the
text tower, a checkpoint without a text tower (a vision-only or classifier checkpoint), a video-text checkpoint
without its tokenizer, a --features file that is not extract's --pool=video embeddings of this checkpoint's size,
captions none of whose videos are in it; 130 or 143 stopped by SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from typing import NoReturn

import numpy as np

from vidjax import cli, fileio, metrics, pretrained
from vidjax.data import decode, sources
from vidjax.pretrained import windows, zero_shot
from vidjax.tasks import predictions

CAPTION_COLUMN = "caption"
RECALL_AT = (1, 5, 10)


def rank_labels(model: pretrained.Pretrained, runner, path: str, labels: list[str], *, top_k: int = 0,
                num_clips: int = 1, num_crops: int = 1, sampling_rate: int | None = None) -> dict:
    """One video scored against `labels` (`runner` from `zero_shot.label_scores`): {"path", "error": None,
    "aggregate": {"probabilities": one per label, in their order, "top_k": [{"label", "probability"}, ...] best
    first}}, as predict reports a classifier's. Raises `decode.VideoDecodeError` for a video that does not decode."""
    return predictions.prediction_entry(model, runner, path, names=labels, top_k=top_k or len(labels),
                                        num_clips=num_clips, num_crops=num_crops, sampling_rate=sampling_rate,
                                        task=predictions.ZERO_SHOT_READOUT)


def read_features(path: str) -> tuple[np.ndarray, list[str]]:
    """(features float32 (N, D), paths) of an extract .npz of one `--pool=video` embedding per video, checked
    against its index (FILE.index.json, when present); a ValueError saying what differs."""
    flag = f"--features={path}"
    try:
        with np.load(fileio.user_path(path)) as data:
            arrays = {k: data[k] for k in data.files}
    except zipfile.BadZipFile as e:  # cut short by a copy: the zip's directory, at its end, is gone
        raise ValueError(f"{flag} is a damaged .npz (not a whole zip file); copy it again, or extract again.") from e
    except (OSError, ValueError, EOFError, TypeError) as e:  # TypeError: a bare .npy array, not an archive
        reason = "one .npy array, not an .npz archive" if isinstance(e, TypeError) else str(e)
        raise ValueError(f"{flag} cannot be read as an .npz ({reason}); give the FILE.npz `python -m vidjax.extract "
                         f"--pool=video` wrote.") from e
    if "features" not in arrays or "paths" not in arrays:
        raise ValueError(f"{flag} holds {sorted(arrays)}, not extract's `features` and `paths`.")
    if "window" in arrays:
        raise ValueError(f"{flag} holds one embedding per window (extract --window); retrieval ranks videos: "
                         f"extract them without --window.")
    index_path = path[: -len(".npz")] + ".index.json" if path.endswith(".npz") else ""
    if index_path and os.path.isfile(fileio.user_path(index_path)):
        with open(fileio.user_path(index_path), encoding="utf-8") as f:
            pool = json.load(f).get("pool")
        if pool != "video":
            raise ValueError(f"{flag} was extracted with --pool={pool}; text searches the video embedding: extract "
                             f"again with --pool=video.")
    features = np.asarray(arrays["features"], np.float32)
    if features.ndim != 2 or not len(features):
        raise ValueError(f"{flag} holds features {features.shape}; retrieval needs one embedding per video (N, D): "
                         f"extract with --pool=video.")
    return features, [str(p) for p in arrays["paths"]]


def _similarity(texts: np.ndarray, features: np.ndarray, flag: str) -> np.ndarray:
    """texts (Q, D) . features (N, D) -> (Q, N); a ValueError when the widths differ (another checkpoint's)."""
    if texts.shape[-1] != features.shape[-1]:
        raise ValueError(f"{flag} holds {features.shape[-1]}-dimensional embeddings, but --checkpoint's text tower "
                         f"embeds in {texts.shape[-1]}; extract them with this checkpoint and --pool=video.")
    return texts @ features.T


def read_captions(captions: str, root: str, paths: list[str]) -> tuple[list[str], np.ndarray, int]:
    """(captions, the row in `paths` of each one's video, captions left out: their video is not in `paths`) of a
    captions list (`sources.CsvVideoSource` with its `caption` column); a ValueError when it cannot be read or no
    caption's video is in `paths`."""
    try:
        source = sources.CsvVideoSource(captions, root=root, caption_column=CAPTION_COLUMN, skip_missing=True)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise ValueError(f"--captions={captions}: {e}") from e
    rows = {os.path.normpath(p): i for i, p in enumerate(paths)}
    texts, targets, left_out = [], [], len(getattr(source, "missing_paths", []))
    for i in range(len(source)):
        element = source[i]
        row = rows.get(os.path.normpath(str(element["path"])))
        if row is None:
            left_out += len(element["captions"])
            continue
        texts.extend(element["captions"])
        targets.extend([row] * len(element["captions"]))
    if not texts:
        raise ValueError(f"--captions={captions}: none of its videos is in the features (their paths, joined to "
                         f"--root={root!r}, must be the ones extract read); extract them from this list.")
    return texts, np.asarray(targets, np.int64), left_out


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.zeroshot", __doc__)
    parser.add_argument("videos", nargs="*", metavar="VIDEO", help="video files to score against the labels")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a video-text checkpoint with its tokenizer (a converted VideoPrismClipModel, or its "
                             "Hub name)")
    zero_shot.add_label_flags(parser, "free-text labels (with videos) or queries (with --features)")
    parser.add_argument("--features", default="", metavar="FILE.npz",
                        help="search these embeddings (`python -m vidjax.extract --pool=video`) instead of scoring "
                             "videos")
    parser.add_argument("--captions", default="", metavar="LIST",
                        help="with --features: a header CSV (path, caption) whose captions are queries of their "
                             "videos; reports text-to-video recall@1/5/10")
    parser.add_argument("--root", default="", help="folder that relative paths in --captions are joined to")
    parser.add_argument("--top_k", type=int, default=0,
                        help="labels shown per video (default 0: all), or videos per query (default 0: 5)")
    parser.add_argument("--num_clips", type=int, default=1, help="evenly spaced clips per video (default 1)")
    parser.add_argument("--num_crops", type=int, default=1, help="crops per clip along the long side (default 1)")
    parser.add_argument("--sampling_rate", type=int, default=0,
                        help="frame stride of a clip (default 0: the checkpoint's)")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="clips per forward pass (rounded up to a multiple of the device count)")
    parser.add_argument("--json", default="", metavar="OUT.json",
                        help="also write the results here as JSON; - prints the JSON on stdout instead of text")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    for flag in ("num_clips", "num_crops", "batch_size"):
        if getattr(args, flag) < 1:
            return f"--{flag}={getattr(args, flag)} must be at least 1."
    if args.top_k < 0 or args.sampling_rate < 0:
        return "--top_k and --sampling_rate cannot be negative (0: the default)."
    if not args.temperature > 0:
        return f"--temperature={args.temperature} must be positive."
    if bool(args.videos) == bool(args.features):
        return ("give videos to score against --labels, or --features=FILE.npz (extract's --pool=video embeddings) "
                "to search" + (", not both." if args.videos else "."))
    if args.captions and not args.features:
        return "--captions scores retrieval over --features=FILE.npz; give it too."
    if args.root and not args.captions:
        return "--root joins the paths of --captions; it needs --captions."
    if args.videos or not args.captions or args.labels or args.labels_file:
        try:
            zero_shot.read_labels(args.labels, args.labels_file)
        except ValueError as e:
            return str(e)
    if args.json and args.json != "-":
        return windows.output_problem("--json", args.json, "zeroshot.json")
    return None


def _score_videos(model: pretrained.Pretrained, args: argparse.Namespace, labels: list[str]) -> tuple[dict, int]:
    """Each video's labels ranked and shown; (the report, videos that failed)."""
    runner = zero_shot.label_scores(model, labels, args.checkpoint, args.batch_size, temperature=args.temperature)
    report = {"checkpoint": args.checkpoint, "labels": labels, "temperature": args.temperature, "videos": []}
    failed = 0
    for path in args.videos:
        try:
            entry = rank_labels(model, runner, path, labels, top_k=args.top_k, num_clips=args.num_clips,
                                num_crops=args.num_crops, sampling_rate=args.sampling_rate or None)
        except decode.VideoDecodeError as e:
            print(f"error: {e}; skipped", file=sys.stderr, flush=True)
            report["videos"].append({"path": path, "error": str(e)})
            failed += 1
            continue
        report["videos"].append(entry)
        if args.json != "-":
            lines = predictions.format_prediction(predictions.ZERO_SHOT_READOUT, entry["aggregate"])
            print("\n".join([path, *lines]), flush=True)
    return report, failed


def main(argv: list[str] | None = None) -> int:
    started = cli.start(_parser(), argv, _check_args, load=lambda args: pretrained.load_for_command(args.checkpoint))
    if started is None:
        return 2
    args, model = started
    try:
        if args.videos:
            report, failed = _score_videos(model, args, zero_shot.read_labels(args.labels, args.labels_file))
        else:
            report, failed = _retrieve(model, args), 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(report, indent=1))
    elif args.json:
        with fileio.atomic_output(args.json) as f:
            json.dump(report, f, indent=1)
    if failed:
        print(f"{failed} of {len(args.videos)} videos failed to decode.", file=sys.stderr)
    return 1 if failed else 0


def _retrieve(model: pretrained.Pretrained, args: argparse.Namespace) -> dict:
    """The --features videos ranked for each query (--labels), and with --captions text-to-video recall; shown."""
    queries = zero_shot.read_labels(args.labels, args.labels_file) if (args.labels or args.labels_file) else []
    features, paths = read_features(args.features)
    flag = f"--features={args.features}"
    show = args.json != "-"
    top_k = min(args.top_k or 5, len(paths))
    report: dict = {"checkpoint": args.checkpoint, "features": args.features, "videos": len(paths), "queries": []}
    if queries:
        similarity = _similarity(zero_shot.label_features(model, queries, args.checkpoint), features, flag)
        for query, row in zip(queries, similarity, strict=True):
            best = np.argsort(-row, kind="stable")[:top_k]
            ranked = [[paths[i], float(row[i])] for i in best]
            report["queries"].append({"query": query, "top_k": ranked})
            if show:
                width = max(len(p) for p, _ in ranked)
                print("\n".join([query, *(f"  {p:<{width}}  {s:.4f}" for p, s in ranked)]), flush=True)
    if args.captions:
        texts, targets, left_out = read_captions(args.captions, args.root, paths)
        captions = zero_shot.label_features(model, texts, args.checkpoint, f"--captions={args.captions}")
        similarity = _similarity(captions, features, flag)
        scores = metrics.retrieval_metrics(similarity, targets, RECALL_AT)
        report["retrieval"] = {"captions": len(texts), "left_out": left_out, **scores}
        if show:
            recalls = ", ".join(f"recall@{k} {scores[f'recall_at_{k}']:.3f}" for k in RECALL_AT)
            print(f"text-to-video retrieval, {len(texts)} captions against {len(paths)} videos: {recalls}, median "
                  f"rank {scores['median_rank']:g}", flush=True)
        if left_out:
            print(f"{left_out} captions of videos not in --features={args.features} were left out.", file=sys.stderr)
    return report


def run_command() -> NoReturn:
    """`python -m vidjax.zeroshot`: what its entry module calls."""
    cli.guard(main)
