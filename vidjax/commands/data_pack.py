"""`python -m vidjax.data.pack`: packs a labelled video list into ArrayRecord shards of encoded video bytes.

Reading many small files from network storage is slow; a few large shards read sequentially are not. Each record
holds a video file's bytes verbatim plus its labels (format: `vidjax.data.sources.encode_record`), and
`ArrayRecordVideoSource(DIR)` reads them back. Packing runs in parallel over shards, can be interrupted and
re-run (finished shards are kept), and skips files that are missing or that PyAV cannot read as video.

`--reencode_short_side N` stores each video re-encoded once at the training resolution instead (`reencode_video`):
H.264 with a keyframe every `--gop` frames, so every epoch decodes fewer pixels and seeks land near the clip. It
is lossy, so it measures its loss: each video's PSNR against the frames a verbatim pack gives at that short side.
"""

from __future__ import annotations

import argparse
import collections
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
from typing import NoReturn

import av
import numpy as np

from vidjax import cli, config_lib
from vidjax.data import decode, encode, sources

BAD_FILES_NAME = "bad_files.tsv"
REENCODE_NAME = "reencode.tsv"
# One clip of the K400 recipes (VideoMAE pre-training and fine-tuning): 16 frames at sampling rate 4.
DEFAULT_GOP = 16 * 4
DEFAULT_CRF = 23
DEFAULT_PRESET = "medium"
_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# Reported for a video whose re-encoded frames equal the reference exactly (MSE 0, an infinite PSNR).
PSNR_CAP_DB = 100.0
_DEFAULT_VIDEOS_PER_SHARD = 1024
# One record per group: random access reads one video, not a group of them; video bytes are already compressed.
_WRITER_OPTIONS = "group_size:1,uncompressed"

_DESCRIPTION = """\
Pack the videos of a list (or a class-folder tree, or Charades annotations) into ArrayRecord shards that
vidjax reads with ArrayRecordVideoSource, e.g. with `config.data.source = "array_record"`.

Every video is read, checked with PyAV (it must open, have a video stream and decode a frame) and stored
as-is: by default nothing is re-encoded, so training decodes exactly the same bytes. Files that are missing or
fail the check are skipped and listed in OUT/bad_files.tsv (path <tab> reason).

With --reencode_short_side=N each video is instead decoded once, every frame, shown upright, resized so its
shorter side is N (bilinear, transforms.resize_short_side's size with an odd long side moved to the nearest even
number, as H.264 in yuv420p needs) and re-encoded as H.264 in mp4 at the source's frame rate, frame k being the
frame read_clip shows for index k (variable-rate sources become constant-rate), a keyframe every --gop frames
and no audio. Each epoch then decodes frames of short side N instead of the source's, and a seek lands at most
one GOP before the clip (on 360p sources, a 16 x 4 clip at short side 256: 57 -> 33 CPU ms). The pack states
the loss: each
video's PSNR against the source frames resized the same way (what a verbatim pack gives with short_side=N),
printed with the mean, the minimum, the size change and the one-time cost, recorded in pack_manifest.json and
per video in OUT/reencode.tsv. Train with config.data.short_side=N: another short side resamples the
re-encoded frames again. A video that fails to decode part-way is skipped like any bad file.
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

  # re-encoded once at the K400 recipes' short side 256 (keyframe every 64 frames, CRF 23):
  python -m vidjax.data.pack --csv /data/k400/train.csv --root / --out /data/k400/train_256 \\
      --reencode_short_side 256 --workers 16

OUT gets the shards (data-00000-of-00008.array_record, ...), pack_manifest.json (what was packed, class
names, re-encoding settings and results), pack_journal.jsonl (one line per finished shard), if any file was
skipped bad_files.tsv, and if re-encoded reencode.tsv (path, PSNR dB, source bytes, packed bytes, seconds).
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
    reencode = parser.add_argument_group("re-encoding (lossy; off by default)")
    reencode.add_argument("--reencode_short_side", type=int, default=0, metavar="N", help="re-encode each video "
                          "with its shorter side resized to N (even; the training short side, e.g. 256); 0, the "
                          "default, stores the bytes verbatim")
    reencode.add_argument("--gop", type=int, default=None, metavar="FRAMES", help="keyframe interval in frames "
                          f"(default {DEFAULT_GOP}: one clip window of the K400 recipes, 16 frames x sampling rate "
                          "4). A clip's seek lands on the keyframe before it, so it decodes its window plus up to "
                          "GOP-1 frames (half a GOP on average): 64 keeps that lead-in no longer than the window, "
                          "while a smaller GOP stores more keyframes, the largest frames (on the data bench's files "
                          "GOP 32 decoded a clip 6%% faster for 17%% more bytes). Keyframes fall exactly every GOP "
                          "frames (no extra scene-cut keyframes)")
    reencode.add_argument("--crf", type=int, default=None, help=f"x264 constant rate factor, 0-51, lower is "
                          f"better quality and larger (default {DEFAULT_CRF}, x264's own: at short side 256 it kept "
                          "42-44 dB on real 270p-1080p H.264 clips at about a fifth of their size; on the "
                          "data bench's saturated random-colour texture 28.6 dB, mostly 4:2:0 chroma at the "
                          "smaller size, which CRF 18 only lifts to 29.6). Read the printed PSNR")
    reencode.add_argument("--preset", default=None, choices=_PRESETS, help=f"x264 preset (default "
                          f"{DEFAULT_PRESET}, x264's own): slower presets spend more one-time encoding for smaller "
                          "files at the same quality; decoding costs about the same")
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
    """Why `data` is not a readable video file (empty, no video stream, undecodable), or None if a frame decodes."""
    if not data:
        return decode.EMPTY_FILE  # an interrupted copy; FFmpeg would say only "invalid data"
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                return "no video stream"
            for _ in container.decode(container.streams.video[0]):
                return None
            return "the video stream has no decodable frame"
    except (av.FFmpegError, OSError, ValueError) as err:
        return f"PyAV cannot read it ({decode.ffmpeg_reason(err)})"  # "invalid data", not FFmpeg's error number


def reencoded_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) a video of that displayed size is re-encoded at: `transforms.resize_short_side`'s size
    (shorter side `short_side`, the other rounded), with an odd longer side moved to the nearest even number,
    since H.264 in yuv420p stores chroma at half resolution and cannot hold an odd size. `short_side` is even."""
    if height <= width:
        return short_side, max(2, 2 * round(width * short_side / height / 2))
    return max(2, 2 * round(height * short_side / width / 2)), short_side


def reencode_video(data: bytes, short_side: int, *, gop: int = DEFAULT_GOP, crf: int = DEFAULT_CRF,
                   preset: str = DEFAULT_PRESET, threads: int = 0, name: str | None = None) -> tuple[bytes, float]:
    """(mp4 bytes, PSNR dB): `data`'s video decoded once, every frame in order, upright and resized to
    `reencoded_size`, re-encoded by `encode.write_mp4` as H.264 yuv420p with a keyframe exactly every `gop`
    frames; no audio, no display rotation (the frames are upright).

    Frame k of the result is the frame `decode.read_clip` shows for index k of the source: the last one shown by
    the time of k (start + (k + 1/2) / fps at the source's frame rate), up to where the last frame's display
    ends, and the result plays at that rate. A constant-rate source keeps every frame at its time; a variable-rate
    one becomes constant-rate, its frames repeated or dropped exactly as read_clip picks them, so a clip sampled at
    given indices shows the same moments either way (mp4 would otherwise report a different average rate for it,
    and indices would mean other times).

    The PSNR is the re-encoding's loss over all frames' RGB values (one MSE for the whole video): the decoded
    re-encoded frames against the source frames converted exactly as `read_clip(short_side=...)` converts them
    (bilinear in the colour conversion, then rotated). `PSNR_CAP_DB` stands for identical frames. `threads`: the
    decoder's and the encoder's threads (0: FFmpeg's default). Raises `decode.VideoDecodeError` where the source
    does not decode to the end (corrupt data part-way, no frames, no frame rate)."""
    label = name or f"<{len(data)} bytes in memory>"
    info = decode.probe(data, name=label)  # upright size with read_clip's rounding; raises if bad
    height, width = reencoded_size(info.height, info.width, short_side)
    pending: collections.deque[np.ndarray] = collections.deque()
    error = {"sse": 0, "frames": 0}

    def compare(decoded: np.ndarray) -> None:
        reference = pending.popleft()
        diff = decoded.astype(np.int32) - reference
        error["sse"] += int(np.einsum("ijk,ijk->", diff, diff, dtype=np.int64))
        error["frames"] += 1

    try:
        with decode.frames_on_grid(data, name=label, threads=threads) as (fps, grid):

            def frames():
                shown = None
                for frame in grid:
                    if shown is None or shown[0] is not frame:  # converted once however often it repeats
                        shown = (frame, np.ascontiguousarray(decode.upright_rgb(frame, height, width)))
                    pending.append(shown[1])
                    yield shown[1]

            out = io.BytesIO()
            encode.write_mp4(out, frames(), fps, gop=gop, crf=crf, preset=preset, scenecut=False, threads=threads,
                             on_decoded=compare)
    except decode.VideoDecodeError:
        raise
    except (ValueError, av.FFmpegError) as err:  # write_mp4: no frame decoded, or the encoder failed
        raise decode.VideoDecodeError(label, f"cannot re-encode ({err})") from err
    if pending:
        raise decode.VideoDecodeError(label, f"the re-encoded stream gave back {error['frames']} of "
                                      f"{error['frames'] + len(pending)} frames")
    mse = error["sse"] / (error["frames"] * height * width * 3)
    psnr = PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255**2 / mse))
    return out.getvalue(), psnr


def _write_shard(task: tuple[str, str, list[tuple[str, dict]], dict | None]
                 ) -> tuple[str, int, list[list[str]], list[list]]:
    """Writes one shard under a temporary name, renamed when complete. Returns (name, records, bad files,
    re-encoding rows [path, PSNR dB, source bytes, packed bytes, seconds, CPU seconds] when `reencode` is given:
    `reencode_video`'s keyword arguments)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out_dir, name, entries, reencode = task
    final = os.path.join(out_dir, name)
    partial = final + ".partial"
    writer = ArrayRecordWriter(partial, _WRITER_OPTIONS)
    records, bad, rows = 0, [], []
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
            if reencode is not None:
                start, cpu_start = time.monotonic(), time.process_time()
                try:
                    packed, psnr = reencode_video(data, name=path, **reencode)
                except decode.VideoDecodeError as err:
                    bad.append([path, f"cannot re-encode: {err.reason}"])
                    continue
                rows.append([path, round(psnr, 3), len(data), len(packed), round(time.monotonic() - start, 3),
                             round(time.process_time() - cpu_start, 3)])
                data = packed
            writer.write(sources.encode_record(data, path, fields))
            records += 1
    finally:
        writer.close()
    os.replace(partial, final)
    return name, records, bad, rows


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
        reencode = _reencode_settings(args)
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
    if reencode is not None:
        manifest["reencode"] = {**reencode, "codec": "H.264 (libx264) yuv420p in mp4, upright, no audio",
                                "size": "shorter side short_side, longer side as transforms.resize_short_side "
                                        "rounds it, moved to the nearest even number when odd"}

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
        if previous.get("reencode") != manifest.get("reencode"):
            print(f"error: {args.out} holds a pack written with other re-encoding settings ({_describe(previous)}, "
                  f"this command: {_describe(manifest)}); to resume it give the same --reencode_short_side, --gop, "
                  "--crf and --preset, otherwise pick a new --out or delete that folder", file=sys.stderr)
            return 2
    else:
        with open(manifest_path + ".partial", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(manifest_path + ".partial", manifest_path)

    journal_path = os.path.join(args.out, sources.JOURNAL_NAME)
    done = {name: entry for name, entry in _read_journal(journal_path).items()
            if name in names and os.path.isfile(os.path.join(args.out, name))}
    processes = min(args.workers, max(len(names) - len(done), 1))
    worker_settings = None
    if reencode is not None:
        # Each process decodes and encodes one video at a time: share the cores among them (0: FFmpeg's default).
        worker_settings = {**reencode, "threads": max(1, config_lib.host_cpus() // processes) if processes > 1 else 0}
    tasks = [(args.out, name, entries[bounds[s]:bounds[s + 1]], worker_settings)
             for s, name in enumerate(names) if name not in done]
    missing = f" ({len(source.missing_paths)} listed files are missing)" if source.missing_paths else ""
    how = f", re-encoding ({_describe(manifest)})" if reencode is not None else ""
    print(f"packing {len(entries)} videos{missing} from {source!r} into {num_shards} shards in {args.out}{how}: "
          f"{len(done)} already finished, {len(tasks)} to write with {processes} processes", flush=True)
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
    if reencode is not None:
        _report_reencoding(args.out, manifest, [row for name in names for row in done[name].get("reencoded", [])])
    if bad:
        print(f"SKIPPED {len(bad)} bad files, listed with the reason in {bad_path}; first ones:")
        for path, reason in bad[:5]:
            print(f"  {path}: {reason}")
        return 1
    return 0


def _reencode_settings(args: argparse.Namespace) -> dict | None:
    """`reencode_video`'s settings from the flags, or None for a verbatim pack; ValueError names a bad flag."""
    if args.reencode_short_side < 0 or args.reencode_short_side % 2:
        raise ValueError(f"--reencode_short_side must be 0 (store the bytes verbatim) or an even number of pixels "
                         f"(H.264 in yuv420p), e.g. 256; got {args.reencode_short_side}")
    given = [flag for flag in ("gop", "crf", "preset") if getattr(args, flag) is not None]
    if not args.reencode_short_side:
        if given:
            raise ValueError(f"--{given[0]} applies to re-encoding only; add --reencode_short_side=N (e.g. 256)")
        return None
    gop = DEFAULT_GOP if args.gop is None else args.gop
    crf = DEFAULT_CRF if args.crf is None else args.crf
    if gop < 1:
        raise ValueError(f"--gop must be >= 1 frame between keyframes (default {DEFAULT_GOP}); got {gop}")
    if not 0 <= crf <= 51:
        raise ValueError(f"--crf must be in [0, 51] (x264; lower is better quality), e.g. {DEFAULT_CRF}; got {crf}")
    return {"short_side": args.reencode_short_side, "gop": gop, "crf": crf, "preset": args.preset or DEFAULT_PRESET}


def _describe(manifest: dict) -> str:
    settings = manifest.get("reencode")
    if not settings:
        return "bytes verbatim"
    return (f"short side {settings['short_side']}, GOP {settings['gop']}, CRF {settings['crf']}, preset "
            f"{settings['preset']}")


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"


def _report_reencoding(out_dir: str, manifest: dict, rows: list[list]) -> None:
    """Prints the re-encoding's loss, size change and cost; records them in the manifest (summary) and in
    reencode.tsv (per video), both written whole under a temporary name and renamed."""
    settings = manifest["reencode"]
    if not rows:
        print("re-encoded no videos")
        return
    psnr = np.array([row[1] for row in rows])
    bytes_in, bytes_out = sum(row[2] for row in rows), sum(row[3] for row in rows)
    seconds, cpu_seconds = sum(row[4] for row in rows), sum(row[5] for row in rows)
    worst = rows[int(np.argmin(psnr))][0]
    manifest["reencode_result"] = {
        "videos": len(rows), "psnr_db_mean": round(float(psnr.mean()), 3), "psnr_db_min": float(psnr.min()),
        "psnr_db_min_path": worst, "source_bytes": bytes_in, "packed_bytes": bytes_out,
        "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3), "per_video": REENCODE_NAME,
        "psnr": "dB over all frames' RGB values of a video, against the source frames resized to the same size "
                "(bilinear, as read_clip(short_side=...)); mean over videos"}
    table = os.path.join(out_dir, REENCODE_NAME)
    with open(table + ".partial", "w") as f:
        f.write("path\tpsnr_db\tsource_bytes\tpacked_bytes\tseconds\tcpu_seconds\n")
        f.writelines("\t".join(str(value) for value in row) + "\n" for row in rows)
    os.replace(table + ".partial", table)
    manifest_path = os.path.join(out_dir, sources.MANIFEST_NAME)
    with open(manifest_path + ".partial", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".partial", manifest_path)
    print(f"re-encoded {len(rows)} videos at short side {settings['short_side']}, GOP {settings['gop']}, CRF "
          f"{settings['crf']}: PSNR mean {psnr.mean():.1f} dB (min {psnr.min():.1f}, {worst}), "
          f"{_size(bytes_in)} -> {_size(bytes_out)} ({bytes_out / bytes_in:.2f}x), one-time cost {seconds:.1f} s "
          f"({seconds / len(rows):.2f} s a video, {cpu_seconds:.1f} CPU s); per video in {table}")


def _collect(results, journal, done: dict[str, dict], num_shards: int) -> None:
    for name, records, bad, reencoded in results:
        entry = {"shard": name, "records": records, "bad": bad}
        if reencoded:
            entry["reencoded"] = reencoded
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


def run_command() -> NoReturn:
    """`python -m vidjax.data.pack`: what its entry module calls."""
    cli.guard(main)
