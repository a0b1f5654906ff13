r"""Dataset doctor: decodes every entry of a dataset through the real pipeline and reports what is wrong.

  python -m vidjax.data.check --config=configs/videomae_k400.py --split=train
  python -m vidjax.data.check --csv=/data/k400/val.csv --root=/data/k400/videos --num_frames=16 --size=224
  python -m vidjax.data.check --folder=/data/my_videos --num_frames=16 --size=224

Each entry gets one line: ok, too short (and what the padding does), corrupt, unreadable or missing, with the
reason. Then totals and clips/s. Exit status 0 when every entry is usable (ok or too short), 1 otherwise, 2 for a
bad command line. With --config the entries, frames, sampling rate and sizes are the config's; --csv takes
VideoMAE-format lists (or a header CSV) and --folder a class-folder tree (ROOT/<class>/<video>), with
--num_frames / --sampling_rate / --size as the configs default.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
import time
from typing import NoReturn

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from vidjax import cli, config_lib
from vidjax.data import decode, pipeline

USABLE = ("ok", "too short")


def classify(error: decode.VideoDecodeError) -> str:
    """The report category of a decode failure: missing, unreadable or corrupt."""
    if "does not exist" in error.reason:
        return "missing"
    if error.reason.startswith(("cannot open", "file has no video stream")):
        return "unreadable"
    return "corrupt"


def check_element(preprocess: pipeline.Preprocess, element: dict) -> tuple[str, str]:
    """(status, detail) of one source element, decoded with the pipeline's own eval-time preprocessing."""
    d = preprocess.data
    src = element.get("path", element.get("data"))
    if src is None:
        return "ok", "frames stored in the dataset"
    name = element.get("source_path") if "data" in element else None
    try:
        info = decode.probe(src, name=name)
        preprocess.load(element, np.random.default_rng(0))
    except decode.VideoDecodeError as err:
        return classify(err), err.reason
    window = (d.num_frames - 1) * d.sampling_rate + 1
    if info.num_frames < window:
        repeats = d.num_frames - (info.num_frames - 1) // d.sampling_rate - 1
        return "too short", (f"{info.num_frames} frames < the {window}-frame window; the last frame repeats for "
                             f"{repeats} of the {d.num_frames} sampled frames")
    return "ok", f"{info.num_frames} frames, {info.width}x{info.height}, {info.fps:.1f} fps, {info.codec}"


def _label(element: dict) -> str:
    return str(element.get("path") or element.get("source_path") or f"element {int(element['index'])}")


def run(data, split: str, workers: int = 1, quiet: bool = False, out=sys.stdout) -> int:
    """Checks every entry of `data` (a config.data block); prints the report; returns the exit status."""
    data = config_lib.data_config(**{**data.to_dict(), "skip_missing": True})
    source = pipeline.make_source(data, split)
    missing = list(getattr(source, "missing_paths", []))
    preprocess = pipeline.Preprocess(data=data, source=source, train=False, pixel_mean=(0.0, 0.0, 0.0),
                                     pixel_std=(1.0, 1.0, 1.0))
    counts: collections.Counter = collections.Counter()
    for path in missing:
        counts["missing"] += 1
        print(f"missing     {path}", file=out)
    start = time.perf_counter()
    elements = (source[i] for i in range(len(source)))
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:  # PyAV releases the GIL while decoding
        results = pool.map(lambda e: (_label(e), *check_element(preprocess, e)), elements)
        for label, status, detail in results:
            counts[status] += 1
            if not (quiet and status == "ok"):
                print(f"{status:<11} {label}: {detail}", file=out)
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    usable = sum(counts[s] for s in USABLE)
    summary = ", ".join(f"{counts[s]} {s}" for s in ("ok", "too short", "corrupt", "unreadable", "missing"))
    print(f"{total} entries: {summary}; {usable} usable. Decoded {len(source)} clips in {seconds:.1f}s "
          f"({len(source) / max(seconds, 1e-9):.1f} clips/s).", file=out)
    return 0 if usable == total else 1


def define_flags() -> None:
    """The command line, defined only when this module is the program (others define flags of the same names)."""
    config_flags.DEFINE_config_file("config", None, "A vidjax config file (its config.data is checked).")
    flags.DEFINE_enum("split", "train", ["train", "eval"], "Which split of --config to check.")
    flags.DEFINE_string("csv", None, "A video list to check instead of a config's data.")
    flags.DEFINE_string("folder", None, "A class-folder tree ROOT/<class>/.../<video> to check instead of a "
                        "config's data.")
    flags.DEFINE_string("root", "", "With --csv: folder that relative paths are joined to.")
    flags.DEFINE_integer("num_frames", 16, "With --csv / --folder: frames per clip.")
    flags.DEFINE_integer("sampling_rate", 4, "With --csv / --folder: frame stride.")
    flags.DEFINE_integer("size", 224, "With --csv / --folder: crop size in pixels.")
    flags.DEFINE_integer("workers", 1, "Videos decoded concurrently (threads: PyAV releases the GIL).")
    flags.DEFINE_bool("quiet", False, "Print only entries with a problem, and the totals.")


def _data_of_flags(opts: flags.FlagValues) -> object:
    """The config.data block that --csv or --folder with --num_frames / --sampling_rate / --size describe."""
    for flag, is_there, what in (("csv", os.path.isfile, "a video list file"),
                                 ("folder", os.path.isdir, "a folder of class sub-folders")):
        if opts[flag].value is not None and not is_there(os.path.expanduser(opts[flag].value)):
            raise app.UsageError(f"--{flag}={opts[flag].value}: no such {'file' if flag == 'csv' else 'folder'} "
                                 f"({os.path.abspath(os.path.expanduser(opts[flag].value))}); give {what}.")
    for flag in ("num_frames", "sampling_rate", "size"):
        if opts[flag].value < 1:
            raise app.UsageError(f"--{flag}={opts[flag].value} must be at least 1.")
    shape = dict(num_frames=opts.num_frames, sampling_rate=opts.sampling_rate, image_size=opts.size,
                 short_side=int(opts.size * 256 / 224))
    if opts.csv:  # the doctor checks videos, not label ranges
        return config_lib.data_config(source="csv", train_csv=opts.csv, eval_csv=opts.csv, root=opts.root,
                                      num_classes=2**31 - 1, **shape)
    return config_lib.data_config(source="folder", train_folder=opts.folder, eval_folder=opts.folder,
                                  num_classes=0, **shape)  # 0: as many classes as the tree has folders


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    opts = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # the report says what failed; per-file warnings would repeat it
    if sum(opts[flag].value is not None for flag in ("config", "csv", "folder")) != 1:
        raise app.UsageError("Give exactly one of --config (check a config's data), --csv (check a video list) or "
                             "--folder (check a class-folder tree).")
    data = _data_of_flags(opts) if opts.config is None else opts.config.data
    return run(data, opts.split, opts.workers, opts.quiet)  # a ConfigError is one line and exit 2 (cli.run)


def run_command() -> NoReturn:
    """`python -m vidjax.data.check`: what its entry module calls."""
    define_flags()
    cli.run(main)
