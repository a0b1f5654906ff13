r"""Throughput of an exported model (`python -m vidjax.export`) serving batches of 1 to 32 clips, in jax
(`jax.export`'s StableHLO file) and ONNX Runtime (the ONNX file), side by side.

  python scripts/bench_serving.py --exported=model.vjx.npz
  python scripts/bench_serving.py --exported=model.onnx                                       # ONNX Runtime
  python scripts/bench_serving.py --model=videomae --variant=S/16 --frames=16 --size=224     # random weights
  python scripts/bench_serving.py --model=videomae --variant=S/16 --frames=8 --size=112 --runtimes=jax,onnx
  python scripts/bench_serving.py --exported=model.vjx.npz --batch_sizes=1,8,32 --seconds=5 --json=serving.json

Loads the file with `vidjax.export.load_exported` (the loader a server copies: jax and numpy only) or, for a .onnx
file, an `onnxruntime.InferenceSession` (CUDA's provider where onnxruntime-gpu has one, else the CPU's). With --model
it exports a randomly initialised model of that family, variant, clip length and size with a classification head
(`pretrained.init`) to each format --runtimes names (jax: the StableHLO file, onnx: the ONNX file) in a temporary
folder, and loads those: the same weights in both. For each batch size it calls each runtime on the same random
uint8 video (b, T, S, S, 3): once to compile or warm up (reported apart), then in alternating rounds (one call of
each runtime per round) for at least --seconds and --min_calls rounds, each call waited for. It prints a Markdown
table, a row per batch size and runtime: warm-up seconds, the call's latency p50 and p95 in milliseconds, ms per
clip, clips per second (batch / p50), the speed-up over the runtime's first batch size, and for the second runtime
its clips/s against the first's; then the largest difference between the runtimes' logits. --json writes the rows
too. Figures are wall-clock on whatever else the machine is doing: compare runtimes within one run.

Exit status 0, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

RUNTIMES = ("jax", "onnx")


def exported_of_random_model(model_name: str, variant: str, frames: int, size: int, folder: str,
                             runtimes: list[str]) -> dict[str, str]:
    """{runtime: path}: a random `model_name` / `variant` with a classification head, exported for each runtime."""
    from vidjax import pretrained  # vidjax: only where a model is built here
    from vidjax.commands import export  # vidjax: only where a model is built here
    from vidjax.models import get_model
    from vidjax.pretrained import onnx_export  # vidjax: only where a model is built here
    from vidjax.tasks import predictions

    config = get_model(model_name).default_config()
    config.update(dict(variant=variant, num_frames=frames, image_size=size, head="classification", num_classes=400))
    if "head_init_scale" in config:  # logits of order 1 (not VideoMAE's 0.001 start), so the runtimes' difference tells
        config.head_init_scale = 1.0
    model = pretrained.init(model_name, config)
    where = f"random {model_name} {variant}"
    paths = {}
    if "jax" in runtimes:
        paths["jax"] = os.path.join(folder, "model.vjx.npz")
        function, params, metadata = export.export(model, checkpoint=where)
        export.write(paths["jax"], function, params, metadata)
    if "onnx" in runtimes:
        paths["onnx"] = os.path.join(folder, "model.onnx")
        scores = predictions.score_function(model.task)
        onnx_export.write(paths["onnx"], onnx_export.export_onnx(model, checkpoint=where, scores=scores)[0])
    return paths


def load(runtime: str, path: str):
    """(fn(uint8 video) -> logits as numpy, metadata, where it runs) of an exported file."""
    if runtime == "jax":
        import jax

        from vidjax.commands.export import load_exported  # vidjax: the loader a server copies

        fn, metadata = load_exported(path)
        return (lambda video: np.asarray(jax.block_until_ready(fn(video)))), metadata, jax.devices()[0].device_kind
    from vidjax.pretrained import onnx_model  # vidjax: the session as the demo opens it

    session = onnx_model.open_session(path)
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["vidjax"])
    name = metadata["input"]["name"]
    return (lambda video: session.run(None, {name: video})[0]), metadata, session.get_providers()[0]


def bench(fns: dict, metadata: dict, batch_sizes: list[int], seconds: float, min_calls: int
          ) -> tuple[list[dict], float]:
    """Rows per batch size and runtime (see the module docstring), and the largest difference between the
    runtimes' outputs."""
    _, t, s, _, c = metadata["input"]["shape"]
    rng = np.random.default_rng(0)
    rows, difference = [], 0.0
    for b in batch_sizes:
        video = rng.integers(0, 256, (b, t, s, s, c), dtype=np.uint8)
        warm, outputs = {}, {}
        for runtime, fn in fns.items():
            start = time.perf_counter()
            outputs[runtime] = fn(video)
            warm[runtime] = time.perf_counter() - start
        if len(outputs) > 1:
            first, *others = outputs.values()
            difference = max([difference, *(float(np.abs(o - first).max()) for o in others)])
        times: dict[str, list[float]] = {runtime: [] for runtime in fns}
        deadline = time.perf_counter() + seconds
        rounds = 0
        while rounds < min_calls or time.perf_counter() < deadline:
            for runtime, fn in fns.items():  # alternating: whatever else the machine does falls on both
                start = time.perf_counter()
                fn(video)
                times[runtime].append(time.perf_counter() - start)
            rounds += 1
        for runtime in fns:
            p50, p95 = (float(np.percentile(times[runtime], q)) for q in (50, 95))
            rows.append({"runtime": runtime, "batch": b, "compile_s": round(warm[runtime], 3),
                         "calls": len(times[runtime]), "ms_p50": round(p50 * 1e3, 2), "ms_p95": round(p95 * 1e3, 2),
                         "ms_per_clip": round(p50 * 1e3 / b, 2), "clips_per_s": round(b / p50, 2)})
    for runtime in fns:
        mine = [r for r in rows if r["runtime"] == runtime]
        for row in mine:
            row["speedup"] = round(row["clips_per_s"] / mine[0]["clips_per_s"], 2)
    if len(fns) > 1:
        base = {r["batch"]: r["clips_per_s"] for r in rows if r["runtime"] == next(iter(fns))}
        for row in rows:
            row["vs_first_runtime"] = round(row["clips_per_s"] / base[row["batch"]], 2)
    return rows, difference


def table(rows: list[dict]) -> str:
    first = rows[0]["batch"]
    lines = [f"| runtime | batch | warm-up (s) | ms / call p50 | p95 | ms / clip | clips / s | vs batch {first} | "
             f"vs {rows[0]['runtime']} |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['runtime']} | {r['batch']} | {r['compile_s']:.2f} | {r['ms_p50']:.1f} | {r['ms_p95']:.1f} | "
              f"{r['ms_per_clip']:.1f} | {r['clips_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{str(r['vs_first_runtime']) + 'x' if 'vs_first_runtime' in r else ''} |" for r in rows]
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
    parser.add_argument("--runtimes", default="jax",
                        help="with --model: jax, onnx or both (jax,onnx; default jax); --exported: the file's own")
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
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not runtimes or set(runtimes) - set(RUNTIMES):
        print(f"error: --runtimes={args.runtimes}: choose from {', '.join(RUNTIMES)}, e.g. --runtimes=jax,onnx.",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vidjax-serving-") as folder:
        if args.model:
            paths = exported_of_random_model(args.model, args.variant, args.frames, args.size, folder, runtimes)
        elif not os.path.isfile(args.exported):
            print(f"error: --exported={args.exported}: no such file; write one with `python -m vidjax.export`.",
                  file=sys.stderr)
            return 2
        else:
            paths = {"onnx" if args.exported.lower().endswith(".onnx") else "jax": args.exported}
        sizes = {r: sum(os.path.getsize(p) for p in (path, path + ".data") if os.path.exists(p))
                 for r, path in paths.items()}
        loaded = {runtime: load(runtime, path) for runtime, path in paths.items()}
        metadata = next(iter(loaded.values()))[1]
        rows, difference = bench({r: fn for r, (fn, _, _) in loaded.items()}, metadata, batch_sizes, args.seconds,
                                 args.min_calls)
    devices = ", ".join(f"{r} on {device}" for r, (_, _, device) in loaded.items())
    where = f"{metadata['model_name']} {metadata['input']['shape'][1:]}: {devices}"
    files = ", ".join(f"{r} {size / 2**20:.1f} MiB" for r, size in sizes.items())
    print(f"{where}, {args.exported or 'random weights'} ({files})\n\n{table(rows)}")
    if len(loaded) > 1:
        print(f"\nlargest difference between the runtimes' logits: {difference:.2e}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"model": where, "file_bytes": sizes, "rows": rows,
                                                       "max_difference": difference}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
