r"""Throughput of an exported model (`python -m vidjax.export`) serving batches of 1 to 32 clips.

  python scripts/bench_serving.py --exported=model.vjx.npz
  python scripts/bench_serving.py --model=videomae --variant=S/16 --frames=16 --size=224     # random weights
  python scripts/bench_serving.py --exported=model.vjx.npz --batch_sizes=1,8,32 --seconds=5 --json=serving.json

Loads the file with `vidjax.export.load_exported` (the loader a server copies: jax and numpy only), or, with
--model, exports a randomly initialised model of that family, variant, clip length and size with a
classification head (`pretrained.init` then `vidjax.export.export`) into a temporary file and loads that. For
each batch size it calls the function on random uint8 video (b, T, S, S, 3): once to compile (reported
apart), then again and again for at least --seconds and --min_calls calls, each waited for
(`block_until_ready`). It prints a Markdown table: batch, compile seconds, median milliseconds per call and per
clip, clips per second (batch / median call time), and the speed-up in clips/s over batch 1; --json writes the
rows too. Figures are wall-clock on whatever else the machine is doing: compare runs on one idle machine.

Exit status 0, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np


def exported_of_random_model(model_name: str, variant: str, frames: int, size: int, path: str) -> None:
    """Writes `path`: an exported model of `model_name` / `variant` with random weights and a classification head."""
    from vidjax import pretrained  # vidjax: only where a model is built here
    from vidjax.commands import export  # vidjax: only where a model is built here
    from vidjax.models import get_model

    config = get_model(model_name).default_config()
    config.update(dict(variant=variant, num_frames=frames, image_size=size, head="classification", num_classes=400))
    model = pretrained.init(model_name, config)
    function, params, metadata = export.export(model, checkpoint=f"random {model_name} {variant}")
    export.write(path, function, params, metadata)


def bench(fn, metadata: dict, batch_sizes: list[int], seconds: float, min_calls: int) -> list[dict]:
    """One row per batch size: compile_s, ms_per_call (median), ms_per_clip, clips_per_s, speedup over the first."""
    import jax

    _, t, s, _, c = metadata["input"]["shape"]
    rng = np.random.default_rng(0)
    rows = []
    for b in batch_sizes:
        video = rng.integers(0, 256, (b, t, s, s, c), dtype=np.uint8)
        start = time.perf_counter()
        jax.block_until_ready(fn(video))
        compile_s = time.perf_counter() - start
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < min_calls or time.perf_counter() < deadline:
            start = time.perf_counter()
            jax.block_until_ready(fn(video))
            times.append(time.perf_counter() - start)
        call = statistics.median(times)
        rows.append({"batch": b, "compile_s": round(compile_s, 3), "calls": len(times),
                     "ms_per_call": round(call * 1e3, 2), "ms_per_clip": round(call * 1e3 / b, 2),
                     "clips_per_s": round(b / call, 2)})
    for row in rows:
        row["speedup"] = round(row["clips_per_s"] / rows[0]["clips_per_s"], 2)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| batch | compile (s) | ms / call (median) | ms / clip | clips / s | vs batch " f"{rows[0]['batch']} |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['batch']} | {r['compile_s']:.2f} | {r['ms_per_call']:.1f} | {r['ms_per_clip']:.1f} | "
              f"{r['clips_per_s']:.1f} | {r['speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/bench_serving.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--exported", metavar="FILE", help="a `python -m vidjax.export` file")
    src.add_argument("--model", help="export a random model of this family first (videomae, timesformer, ...)")
    parser.add_argument("--variant", default="S/16", help="with --model: the variant (default S/16)")
    parser.add_argument("--frames", type=int, default=16, help="with --model: frames per clip (default 16)")
    parser.add_argument("--size", type=int, default=224, help="with --model: image size (default 224)")
    parser.add_argument("--batch_sizes", default="1,2,4,8,16,32", help="batch sizes (default 1,2,4,8,16,32)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="time each batch size at least this long (default 3)")
    parser.add_argument("--min_calls", type=int, default=3, help="and with at least this many calls (default 3)")
    parser.add_argument("--json", default="", metavar="FILE", help="also write the rows and metadata here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        batch_sizes = []
    if not batch_sizes or min(batch_sizes) < 1 or args.min_calls < 1 or args.seconds < 0:
        print(f"error: --batch_sizes={args.batch_sizes} must be positive integers separated by commas, "
              f"--min_calls at least 1 and --seconds not negative.", file=sys.stderr)
        return 2
    from vidjax.commands.export import load_exported

    with tempfile.TemporaryDirectory(prefix="vidjax-serving-") as folder:
        path = args.exported
        if args.model:
            path = os.path.join(folder, "model.vjx.npz")
            exported_of_random_model(args.model, args.variant, args.frames, args.size, path)
        elif not os.path.isfile(path):
            print(f"error: --exported={path}: no such file; write one with `python -m vidjax.export`.",
                  file=sys.stderr)
            return 2
        fn, metadata = load_exported(path)
        rows = bench(fn, metadata, batch_sizes, args.seconds, args.min_calls)
    import jax

    where = f"{metadata['model_name']} {metadata['input']['shape'][1:]} on {jax.devices()[0].device_kind}"
    print(f"{where}, {args.exported or 'random weights'}\n\n{table(rows)}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"model": where, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
