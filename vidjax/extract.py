r"""Embeddings of every video of a list from any checkpoint, saved to one .npz (for probes, retrieval, clustering).

  python -m vidjax.extract --checkpoint=/work/pretrain --csv=/data/train.csv --root=/data/videos --out=train.npz
  python -m vidjax.extract --checkpoint=/ckpt/videomae_b_k400 --csv=val.csv --out=val.npz --pool=cls

--checkpoint is a training workdir (its latest checkpoint), one of its step folders, a `python -m vidjax.convert`
output or a Hugging Face Hub name (vidjax/hub.py), with or without a head. --csv is a VideoMAE list (`path label`
lines) or a header CSV (path, label or labels, start/end, regression columns named by --targets), read by
`vidjax.data.sources.CsvVideoSource`. Each video gives one clip decoded and centre-cropped as the checkpoint's
evaluation does (`Pretrained.read_views`), batched through the jitted model on a data mesh over this host's devices;
--num_workers threads decode ahead.

Pooling (--pool) of the encoder's last hidden state (B, tokens, D):
  mean    the mean over the patch tokens (a CLS token, when the model has one, is left out), then the model's
          fc_norm when it has one (VideoMAE classifiers with mean pooling): exactly the vector its head reads.
  cls     the CLS token (TimeSformer, ViViT with a token classifier, VideoMamba); VideoMAE has none.
  tokens  every token: features (N, tokens, D).
A VideoMAE pre-training checkpoint runs its encoder on all tokens (no mask), after its final norm; an SVT training
run its TimeSformer backbone; a captioner its video encoder.

Writes FILE.npz (atomically): `features` float32 (N, D) or (N, tokens, D), `paths` (N,), `index` (N,) (the
video's position in the list, counting only files that exist), and `label` / `labels` / `targets` as the list has
them, plus `class_names` (from --class_names_file, else the checkpoint's) / `target_names` when known; and
FILE.index.json naming the checkpoint, pooling, rows and the videos that failed (missing or undecodable: reported,
left out; the progress lines and the summary count them alike, out of every video the list names). Exit status
0, 1 when some videos failed (the others are still written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import grain
import jax.numpy as jnp
import numpy as np

from vidjax import cli, fileio, pretrained, tasks
from vidjax.data import decode, sources

POOLS = ("mean", "cls", "tokens")
_TARGET_KEYS = tuple(dict.fromkeys(tasks.target_keys().values()))
_PROGRESS_EVERY_S = 5.0


def _tokens_part(model: pretrained.Pretrained) -> str:
    """Which part of the model gives the tokens: "" the model itself, "encoder" (a VideoMAE pre-training's, or a
    captioner's video encoder) or "backbone" (SVT's TimeSformer under its DINO head)."""
    if model.model_name == "svt":
        return "backbone"
    return "encoder" if model.model_name == "captioner" or model.config.get("head") == "pretrain" else ""


def _video_module(module, part: str):
    return getattr(module, part) if part else module


def has_cls_token(model: pretrained.Pretrained) -> bool:
    """Whether the model's last hidden state starts with a CLS token."""
    return getattr(_video_module(model.model, _tokens_part(model)), "cls_token", None) is not None


@dataclasses.dataclass(frozen=True)
class _Pool:
    """`fn(model, video)` for `BatchRunner`, comparable by value so that equal poolings share one compilation."""

    pool: str
    cls: bool
    part: str  # `_tokens_part`

    def __call__(self, module, video):
        source = _video_module(module, self.part)
        hidden = source(video)  # a pre-training VideoMAE's encoder gives the tokens, a model {"last_hidden_state"}
        hidden = hidden["last_hidden_state"] if isinstance(hidden, dict) else hidden
        if self.pool == "tokens":
            return hidden.astype(jnp.float32)
        if self.pool == "cls":
            return hidden[:, 0].astype(jnp.float32)
        pooled = jnp.mean((hidden[:, 1:] if self.cls else hidden).astype(jnp.float32), axis=1)
        fc_norm = getattr(source, "fc_norm", None)
        return fc_norm(pooled) if fc_norm is not None else pooled


def pool_fn(model: pretrained.Pretrained, pool: str) -> _Pool:
    """`fn(model, video)` for `BatchRunner`: the pooled embedding of each clip (see the module docstring)."""
    if pool not in POOLS:
        raise ValueError(f"--pool={pool!r}; choose one of {', '.join(POOLS)}.")
    if model.model_name == "captioner" and int(model.config.num_chunks) != 1:
        raise ValueError(f"this captioner encodes {model.config.num_chunks} chunks per clip "
                         f"(config.model.num_chunks); extract reads single-chunk captioners' encoders.")
    cls = has_cls_token(model)
    if pool == "cls" and not cls:
        raise ValueError(f"--pool=cls: this {model.model_name} model has no CLS token (its tokens are all patches); "
                         f"use --pool=mean.")
    return _Pool(pool, cls, _tokens_part(model))


class _Decode:
    """Grain map: one element of the list -> its uint8 clip, or the reason it did not decode."""

    def __init__(self, model: pretrained.Pretrained, sampling_rate: int | None):
        self.model, self.sampling_rate = model, sampling_rate

    def __call__(self, element: dict) -> dict:
        out = {"element": element, "clip": None, "error": ""}
        try:
            start, end = (float(element.get(k, np.nan)) for k in ("start", "end"))
            out["clip"] = self.model.read_views(element["path"], sampling_rate=self.sampling_rate,
                                                start_s=None if np.isnan(start) else start,
                                                end_s=None if np.isnan(end) else end)[0]
        except decode.VideoDecodeError as e:
            out["error"] = str(e)
        return out


def extract(model: pretrained.Pretrained, source, *, pool: str = "mean", batch_size: int = 16,
            num_workers: int = 0, sampling_rate: int | None = None, log=None) -> tuple[dict, list[dict]]:
    """(arrays for the .npz, failures [{"path", "index", "error"}]) for every element of `source`, in order.

    The listed files that do not exist (`source.missing_paths` of a source built with skip_missing) are failures
    too (index None), so the counts cover every video the list names. Failures and a progress line (every few
    seconds, and at the end) go to `log` (default stderr).
    """
    log = log or sys.stderr
    runner = pretrained.BatchRunner(model, pool_fn(model, pool), batch_size)
    read = grain.ReadOptions(num_threads=max(1, num_workers), prefetch_buffer_size=2 * runner.batch_size)
    decoded = grain.MapDataset.source(source).map(_Decode(model, sampling_rate)).to_iter_dataset(read)
    kept: list[dict] = []
    failed = [{"path": str(p), "index": None, "error": f"cannot decode video {str(p)!r}: file does not exist"}
              for p in getattr(source, "missing_paths", [])]
    for item in failed:
        print(f"error: {item['error']}; left out", file=log)
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
            if now - last_report >= _PROGRESS_EVERY_S or done == len(source):
                last_report = now
                print(f"extract: {missing + done}/{total} videos, {len(failed)} failed, "
                      f"{done / max(now - start, 1e-9):.1f} videos/s", file=log, flush=True)

    rows = list(runner.run(good_clips()))
    arrays = {"features": np.stack(rows) if rows else np.zeros((0,), np.float32),
              "paths": np.array([str(e["path"]) for e in kept]),
              "index": np.array([int(e["index"]) for e in kept], np.int64)}
    for key in _TARGET_KEYS:
        if kept and key in kept[0]:
            arrays[key] = np.stack([np.asarray(e[key]) for e in kept])
    return arrays, failed


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.extract", __doc__)
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="training workdir, WORKDIR/checkpoints/<step>, a converted checkpoint, or a Hugging "
                             "Face Hub name (owner/name[@REV], owner/name/FILE.pth)")
    parser.add_argument("--csv", required=True, metavar="LIST", help="video list (VideoMAE `path label` or header CSV)")
    parser.add_argument("--root", default="", help="folder that relative paths in the list are joined to")
    parser.add_argument("--out", required=True, metavar="FILE.npz",
                        help="output features file; FILE.index.json is written beside it")
    parser.add_argument("--pool", default="mean", choices=POOLS, help="how tokens become one vector (default mean)")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="clips per forward pass (rounded up to a multiple of the device count)")
    parser.add_argument("--num_workers", type=int, default=2, help="decoding threads (default 2)")
    parser.add_argument("--targets", default="", help="header CSV: comma-separated regression columns to store")
    parser.add_argument("--num_classes", type=int, default=0,
                        help="header CSV with a multi-label `labels` column: the number of classes")
    parser.add_argument("--class_names_file", default="", help="class names, one per line (stored with the features)")
    parser.add_argument("--sampling_rate", type=int, default=0,
                        help="frame stride (default 0: the checkpoint's; converted checkpoints that record none use "
                             f"{pretrained.DEFAULT_SAMPLING_RATE})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for flag in ("batch_size", "num_workers", "num_classes", "sampling_rate"):
        if getattr(args, flag) < (1 if flag == "batch_size" else 0):
            print(f"error: --{flag}={getattr(args, flag)} is out of range.", file=sys.stderr)
            return 2
    if not args.out.endswith(".npz"):
        print(f"error: --out={args.out} must end with .npz (FILE.npz; FILE.index.json is written beside it).",
              file=sys.stderr)
        return 2
    try:
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        source = sources.CsvVideoSource(args.csv, root=args.root, num_classes=args.num_classes or None,
                                        skip_missing=True, targets=targets,
                                        class_names_file=args.class_names_file or None)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: --csv={args.csv}: {e}", file=sys.stderr)
        return 2
    model = pretrained.load_for_command(args.checkpoint)
    if model is None:
        return 2
    try:
        pool_fn(model, args.pool)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    arrays, failed = extract(model, source, pool=args.pool, batch_size=args.batch_size, num_workers=args.num_workers,
                             sampling_rate=args.sampling_rate or None)
    if not len(arrays["paths"]):
        print(f"error: none of the {len(source) + len(source.missing_paths)} videos of {args.csv} decoded; nothing "
              f"written.", file=sys.stderr)
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
             "csv": os.path.abspath(args.csv), "root": args.root, "features_shape": list(arrays["features"].shape),
             "preprocessing": model.preprocessing, "sampling_rate": args.sampling_rate or model.sampling_rate,
             "class_names": arrays["class_names"].tolist() if "class_names" in arrays else None,
             "target_names": list(targets) or None,
             "rows": [{"row": i, "index": int(j), "path": str(p)}
                      for i, (j, p) in enumerate(zip(arrays["index"], arrays["paths"], strict=True))],
             "failed": failed}
    index_path = args.out[: -len(".npz")] + ".index.json"
    with fileio.atomic_output(index_path) as f:
        json.dump(index, f, indent=1)
    print(f"Wrote {args.out}: features {tuple(arrays['features'].shape)} of {len(arrays['paths'])} videos "
          f"({args.pool} pooling){f', {len(failed)} failed (listed in the index)' if failed else ''}; "
          f"index in {index_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
