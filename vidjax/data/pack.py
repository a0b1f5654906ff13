"""`python -m vidjax.data.pack`: packs a labelled video list into ArrayRecord shards of encoded video bytes.

Reading many small files from network storage is slow; a few large shards read sequentially are not. Each record
holds a video file's bytes verbatim plus its labels (format: `vidjax.data.sources.encode_record`), and
`ArrayRecordVideoSource(DIR)` reads them back. Packing runs in parallel over shards, can be interrupted and
re-run (finished shards are kept), and skips files that are missing or that PyAV cannot read as video.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence

import av
import numpy as np

from vidjax import cli
from vidjax.data import sources

BAD_FILES_NAME = "bad_files.tsv"
_DEFAULT_VIDEOS_PER_SHARD = 1024
# One record per group: random access reads one video, not a group of them; video bytes are already compressed.
_WRITER_OPTIONS = "group_size:1,uncompressed"

_DESCRIPTION = """\
Pack the videos of a list (or a class-folder tree, or Charades annotations) into ArrayRecord shards that
vidjax reads with ArrayRecordVideoSource, e.g. with `config.data.source = "array_record"`.

Every video is read, checked with PyAV (it must open, have a video stream and decode a frame) and stored
as-is: nothing is re-encoded, so training decodes exactly the same bytes. Files that are missing or fail the
check are skipped and listed in OUT/bad_files.tsv (path <tab> reason).
"""

_EPILOG = """\
examples:
  # VideoMAE list (`path label` per line), relative paths under /data/k400/videos, 8 processes:
  python -m vidjax.data.pack --csv /data/k400/train.csv --root /data/k400/videos --out /data/k400/train_ar \\
      --workers 8

  # comma-separated list with a header (path,valence,arousal) and regression targets:
  python -m vidjax.data.pack --csv affect.csv --targets valence arousal --out /data/affect_ar

  # class folders (root/<class>/<video>) and Charades:
  python -m vidjax.data.pack --folder /data/ucf101/train --out /data/ucf101_train_ar
  python -m vidjax.data.pack --charades Charades_v1_train.csv --root /data/Charades_v1_480 --out charades_ar

OUT gets the shards (data-00000-of-00008.array_record, ...), pack_manifest.json (what was packed, class
names), pack_journal.jsonl (one line per finished shard) and, if any file was skipped, bad_files.tsv.
Interrupted? Run the same command again: finished shards are kept, the others are written again. A shard is
written under a .partial name and renamed when complete, so readers never see half a shard.

exit status: 0 every video was packed; 1 some videos were skipped (see bad_files.tsv, the rest is usable);
2 nothing was packed because of an error (bad arguments or list, OUT holds a different pack).
"""


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.data.pack", _DESCRIPTION, epilog=_EPILOG)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--csv", metavar="LIST", help="video list: `path label` lines (VideoMAE) or comma-separated "
                      "with a header (path, label or labels, optional start/end and target columns)")
    what.add_argument("--folder", metavar="ROOT", help="class-folder tree ROOT/<class>/.../<video>")
    what.add_argument("--charades", metavar="CSV", help="official Charades_v1_{train,test}.csv; videos are "
                      "ROOT/<id>.mp4 (give --root)")
    parser.add_argument("--root", default="", help="folder that relative paths in the list (or Charades ids) are "
                        "relative to (default: the current directory)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--shards", type=int, default=0, metavar="N", help="number of shards (default: one per "
                        f"{_DEFAULT_VIDEOS_PER_SHARD} videos); keep it the same when re-running")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="W",
                        help="parallel processes, each writing one shard at a time, so at most --shards of them "
                        "run (default: %(default)s)")
    parser.add_argument("--targets", nargs="+", default=[], metavar="COLUMN", help="regression target columns of "
                        "a header list, e.g. --targets valence arousal")
    parser.add_argument("--num_classes", type=int, default=None, help="number of classes: checks label ranges; "
                        "needed for a multi-label `labels` column (Charades default: 157)")
    parser.add_argument("--class_names", default=None, metavar="FILE", help="class names, one per line (for "
                        "--charades: Charades_v1_classes.txt); stored in the manifest")
    return parser


def _make_source(args: argparse.Namespace):
    # skip_missing: a missing file is one more bad file to report, not a reason to pack nothing.
    if args.csv:
        targets = [t for arg in args.targets for t in arg.split(",") if t]
        return sources.CsvVideoSource(args.csv, root=args.root, num_classes=args.num_classes, skip_missing=True,
                                      targets=targets, class_names_file=args.class_names)
    if args.targets:
        raise ValueError("--targets applies to --csv lists only")
    if args.folder:
        class_names = sources.read_class_names(args.class_names) if args.class_names else None
        return sources.FolderVideoSource(args.folder, class_names=class_names, skip_missing=True)
    return sources.CharadesSource(args.charades, root=args.root, num_classes=args.num_classes or 157,
                                  classes_file=args.class_names, skip_missing=True)


def check_video(data: bytes) -> str | None:
    """Why `data` is not a readable video file (no video stream, undecodable), or None if a frame decodes."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                return "no video stream"
            for _ in container.decode(container.streams.video[0]):
                return None
            return "the video stream has no decodable frame"
    except (av.FFmpegError, OSError, ValueError) as err:
        # strerror drops FFmpeg's error number and the '<none>' file name of an in-memory input.
        return f"PyAV cannot read it ({getattr(err, 'strerror', None) or err})"


def _write_shard(task: tuple[str, str, list[tuple[str, dict]]]) -> tuple[str, int, list[list[str]]]:
    """Writes one shard under a temporary name, renamed when complete. Returns (name, records, bad files)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out_dir, name, entries = task
    final = os.path.join(out_dir, name)
    partial = final + ".partial"
    writer = ArrayRecordWriter(partial, _WRITER_OPTIONS)
    records, bad = 0, []
    try:
        for path, fields in entries:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as err:
                bad.append([path, f"cannot read the file ({err.strerror or err})"])
                continue
            reason = check_video(data)
            if reason is not None:
                bad.append([path, reason])
                continue
            writer.write(sources.encode_record(data, path, fields))
            records += 1
    finally:
        writer.close()
    os.replace(partial, final)
    return name, records, bad


def _fingerprint(entries: list[tuple[str, dict]], missing: list[str]) -> str:
    digest = hashlib.sha256()
    for path, fields in entries:
        digest.update(json.dumps([path, {k: np.asarray(v).tolist() for k, v in fields.items()}]).encode())
    digest.update(json.dumps(missing).encode())
    return digest.hexdigest()


def _read_journal(path: str) -> dict[str, dict]:
    done = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption: that shard is written again
                done[entry["shard"]] = entry
    return done


def pack(args: argparse.Namespace) -> int:
    """Packs as `args` say; returns the exit status (0 all packed, 1 some skipped, 2 error)."""
    try:
        source = _make_source(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    entries = []
    for i in range(len(source)):
        element = source[i]
        entries.append((element["path"], {k: v for k, v in element.items() if k not in ("path", "index")}))
    num_shards = min(args.shards or math.ceil(len(entries) / _DEFAULT_VIDEOS_PER_SHARD), len(entries))
    if num_shards < 1 or args.workers < 1:
        print("error: --shards and --workers must be >= 1", file=sys.stderr)
        return 2
    names = [f"data-{s:05d}-of-{num_shards:05d}{sources.SHARD_SUFFIX}" for s in range(num_shards)]
    bounds = [round(s * len(entries) / num_shards) for s in range(num_shards + 1)]
    manifest = {"format": "vidjax video records v1 (see vidjax.data.sources.encode_record)",
                "source": repr(source), "fingerprint": _fingerprint(entries, source.missing_paths),
                "num_videos": len(entries) + len(source.missing_paths), "shards": names,
                "class_names": source.class_names}

    args.out = os.path.expanduser(args.out)
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, sources.MANIFEST_NAME)
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            previous = json.load(f)
        if (previous.get("fingerprint"), previous.get("shards")) != (manifest["fingerprint"], names):
            print(f"error: {args.out} holds a pack of different input ({previous.get('source')}, "
                  f"{len(previous.get('shards', []))} shards); to resume it run the same command (same list, root, "
                  "files and --shards), otherwise pick a new --out or delete that folder", file=sys.stderr)
            return 2
    else:
        with open(manifest_path + ".partial", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(manifest_path + ".partial", manifest_path)

    journal_path = os.path.join(args.out, sources.JOURNAL_NAME)
    done = {name: entry for name, entry in _read_journal(journal_path).items()
            if name in names and os.path.isfile(os.path.join(args.out, name))}
    tasks = [(args.out, name, entries[bounds[s]:bounds[s + 1]]) for s, name in enumerate(names) if name not in done]
    missing = f" ({len(source.missing_paths)} listed files are missing)" if source.missing_paths else ""
    print(f"packing {len(entries)} videos{missing} from {source!r} into {num_shards} shards in {args.out}: "
          f"{len(done)} already finished, {len(tasks)} to write with {min(args.workers, max(len(tasks), 1))} "
          "processes", flush=True)
    start = time.monotonic()
    with open(journal_path, "a") as journal:
        if args.workers > 1 and len(tasks) > 1:
            # spawn, not fork: the caller may hold threads (grain, jax) that a forked child would inherit broken.
            with multiprocessing.get_context("spawn").Pool(min(args.workers, len(tasks))) as pool:
                _collect(pool.imap_unordered(_write_shard, tasks), journal, done, num_shards)
        else:
            _collect(map(_write_shard, tasks), journal, done, num_shards)

    bad = [[path, "file does not exist"] for path in source.missing_paths]
    bad += [item for name in names for item in done[name]["bad"]]
    packed = sum(done[name]["records"] for name in names)
    bad_path = os.path.join(args.out, BAD_FILES_NAME)
    if bad:
        with open(bad_path, "w") as f:
            f.writelines(f"{path}\t{reason}\n" for path, reason in bad)
    elif os.path.exists(bad_path):
        os.remove(bad_path)
    print(f"packed {packed} of {packed + len(bad)} videos into {num_shards} shards in {args.out} "
          f"({time.monotonic() - start:.1f} s)")
    if bad:
        print(f"SKIPPED {len(bad)} bad files, listed with the reason in {bad_path}; first ones:")
        for path, reason in bad[:5]:
            print(f"  {path}: {reason}")
        return 1
    return 0


def _collect(results, journal, done: dict[str, dict], num_shards: int) -> None:
    for name, records, bad in results:
        entry = {"shard": name, "records": records, "bad": bad}
        # The journal is written only here, in the parent, after the shard file was renamed into place.
        journal.write(json.dumps(entry) + "\n")
        journal.flush()
        os.fsync(journal.fileno())
        done[name] = entry
        print(f"[{len(done)}/{num_shards}] {name}: {records} videos" + (f", {len(bad)} skipped" if bad else ""),
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    return pack(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
