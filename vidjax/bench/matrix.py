"""The accelerator benchmark matrix: every model family's training and inference steps in float32 and bfloat16, as
one table of step time, clips/s, achieved TFLOP/s and MFU, beside the PyTorch reference where one runs here.

  bash scripts/bench_accelerator.sh --out=bench.json        # the full matrix, 16 frames at 224 px
  bash scripts/bench_accelerator.sh --quick --out=q.json    # the same rows at toy sizes: a CPU check in a minute
  python -m vidjax.bench.matrix --families=videomae,vivit --dtypes=bfloat16 --batch_per_device=16

Rows (`families()`: every model family whose traits declare a `vidjax.models.Benchmark`, in name order):
TimeSformer-B/16 inference and fine-tune, VideoMAE-B/16 pre-train (VideoMAE's masking, and VideoMAE V2's dual
masking as `pretrain_v2`: the same encoder, the decoder on half of the tokens) and fine-tune, and VideoMamba-S/16 and
ViViT-B/16x2 (model 1, joint attention, as the PyTorch reference) inference and fine-tune.
Each row is what `python -m vidjax.bench` times, through its own functions (`step.bench_config`, `step.time_vidjax`,
`reference.time_torch`), in one process so that jax starts once: the trainer's jitted update step (pre-train,
fine-tune) or the jitted forward (infer) on random inputs, `--steps` timed after `--warmup`, median reported.

- Global batch: `--batch_per_device` x the devices (the trainer's data-parallel mesh spreads it).
- TFLOP/s: the model's FLOPs per step (`step.matmul_flops` of the plain step as `step.time_vidjax` traces it: no
  scan over layers, no remat, attention as products) per device over the median time; MFU: that over the device's
  peak dense bf16 FLOP/s (`step.PEAK_BF16_FLOPS`; float32 rows are measured against the same bf16 peak). Blank
  where the peak is unknown (a CPU, an accelerator missing from the table).
- Attention: the models' default (`config.model.attention_impl=""`, `vidjax.ops.attention.resolve`): on GPU
  cuDNN's fused attention for bfloat16 rows (16-bit inputs, head dims up to 128 in multiples of 8), XLA's for
  float32; heads-major on CPU; XLA's on TPU. A row whose cuDNN attention does not compile is timed again with XLA's
  and says so.
- PyTorch (`--torch=on`, the default): the reference (`vidjax.bench.reference`) on the same device (CUDA on a GPU
  host, the CPU on a CPU one), float32, or under `torch.autocast` in bfloat16 for bfloat16 rows; SDPA attention
  where transformers has it. The torch columns say why they are empty: torch not installed, no reference for the
  row, a TPU host, or a torch that sees no GPU.

- Host cores / chip (`--input_bench=FILE[,FILE]`, which scripts/bench_accelerator.sh runs on this host first):
  how many host CPU cores the input path needs to keep one device busy at the row's clips/s, i.e. the row's
  clips/s per device over the input path's clips/s per core, for each repeated-sampling count the input bench
  measured (`k`, its `--num_samples`: k=4 is VideoMAE V2's `--num_sample 4`, four augmented clips per decoded
  video). The per-core figure is the `vidjax` loader's from `python -m vidjax.data.bench --config=...
  --json_out=FILE` (the trainer's whole input path to device arrays, over the CPU time of every process it
  used), at the worker count with the best figure, which the line above the table names. It is one figure for
  every row: the data bench times a training recipe (VideoMAE's K400 pre-training: decode, short-side resize,
  multi-scale crop, flip, tube masks). Pre-train rows are that recipe. Fine-tune rows use the same decode + crop
  path (VideoMAE's fine-tuning recipe adds RandAugment and random erasing on the host, so for it the figure is a
  lower bound); inference rows are divided by it too (an inference path decodes and resizes the same clips and
  takes a fixed crop, without the masks). `-` where no input figure was given. A figure is only as good as the
  match of hosts: the JSON keeps the input bench's host (CPUs, platform) beside this one's.

The table is printed as markdown; `--out` writes it with every figure as JSON ({"rows": [...], "device": ...,
"input_bench": {...}}). Exit status 1 if a row failed (its error is in its row), 2 for a bad command line (an
--input_bench file that is not the data bench's JSON included).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from typing import TYPE_CHECKING

from vidjax import cli, config_lib

if TYPE_CHECKING:  # the model modules load jax, which --help does not
    from vidjax import models

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Family:
    """One family's rows: its model's name and what its traits say the matrix runs of it."""

    model: str
    bench: models.Benchmark  # the variants, the modes, --quick's settings, why no torch figures on a GPU
    frames: int = 16
    size: int = 224

    @property
    def modes(self) -> tuple[str, ...]:
        return self.bench.modes


def families() -> list[Family]:
    """The matrix's families: every model family whose traits declare its benchmark rows, in their places."""
    from vidjax import models  # imported here: reading the traits loads the model modules, so jax (--help does not)

    declared = [Family(name, models.traits(name).benchmark) for name in models.available()
                if models.traits(name).benchmark is not None]
    return sorted(declared, key=lambda family: family.bench.place)  # stable: a place's families by name


# --quick: 4 frames at 32 px, one block (and what the family's `Benchmark.quick_model` adds: one decoder block),
# batch 1 per device, 1 step, no warm-up.
QUICK = dict(frames=4, size=32, batch_per_device=1, steps=1, warmup=0, model=dict(depth=1))


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.bench.matrix", __doc__)
    parser.add_argument("--quick", action="store_true",
                        help="the same rows at toy sizes (4 frames at 32 px, one block, batch 1, 1 step): checks "
                             "the matrix end to end, on a CPU too; its times mean nothing")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    parser.add_argument("--families", help="comma list of the families to run (default: all)")
    parser.add_argument("--modes", default="pretrain,finetune,infer,pretrain_v2",
                        help="comma list of the modes to run, of those each family has (default: all; pretrain_v2 is "
                             "VideoMAE pre-training with VideoMAE V2's dual masking)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma list of compute dtypes (default: both)")
    parser.add_argument("--batch_per_device", type=int, default=8, help="clips per device per step (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling (default 3)")
    parser.add_argument("--torch", choices=("on", "off"), default="on",
                        help="time the PyTorch reference beside each row, on the same device (default on)")
    parser.add_argument("--input_bench", action="append", default=[], metavar="FILE[,FILE]",
                        help="JSON of `python -m vidjax.data.bench --config=... --json_out=FILE`, best run on this "
                             "host: adds each row's host cores per chip (repeatable, or a comma list; the files "
                             "must time one recipe)")
    return parser


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def has_reference(model: str, mode: str) -> bool:
    from vidjax.bench import reference  # imported here, as jax is: --help and a bad command line answer at once

    try:
        reference.check_supported(model, mode)
    except ValueError:
        return False
    return True


def head_dim(model_config) -> int | None:
    """The attention head size of a ViT-style `model_config`, or None for a model without attention."""
    from vidjax.models import layers  # imported here: it loads flax and jax (--help does not)

    if "attention_impl" not in model_config:
        return None
    width, _, heads = layers.VIT_SIZES[str(model_config.variant).split("/")[0]]  # "B/16", ViViT's "B/16x2"
    width, heads = model_config.get("width") or width, model_config.get("num_heads") or heads
    return width // heads


def torch_note(args, family: Family, mode: str, dtype: str, backend: str) -> str | None:
    """Why the torch columns of a row stay empty, or None when the reference is timed beside it."""
    if args.torch == "off":
        return "off (--torch=off)"
    if not torch_available():
        return "torch not installed (pip install 'vidjax[torch]')"
    if not has_reference(family.model, mode):
        return "no PyTorch reference for this mode"
    if backend not in ("cpu", "gpu"):
        return f"no PyTorch reference on {backend}"
    if backend == "gpu":
        import torch

        if not torch.cuda.is_available():
            return "torch sees no GPU (a CPU-only torch build?)"
        if family.bench.torch_gpu_note:
            return family.bench.torch_gpu_note
    return None


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [""]
    return f"{type(err).__name__}: {lines[0][:200]}"


def run_row(args, family: Family, mode: str, dtype: str, backend: str, devices: int, device_kind: str) -> dict:
    """One row of the matrix: the vidjax step timed as `python -m vidjax.bench` times it, with its achieved TFLOP/s
    and MFU, and the PyTorch reference beside it (or why not). A failure is the row's "error", not an exception."""
    # Imported here, as jax is: --help and a bad command line answer without loading them.
    from vidjax.bench import reference, step
    from vidjax.ops import attention

    steps, warmup = (QUICK["steps"], QUICK["warmup"]) if args.quick else (args.steps, args.warmup)
    frames, size = (QUICK["frames"], QUICK["size"]) if args.quick else (family.frames, family.size)
    per_device = QUICK["batch_per_device"] if args.quick else args.batch_per_device
    variant = family.bench.quick_variant if args.quick else family.bench.variant
    torch_sized = has_reference(family.model, mode)  # the vidjax model sized as the reference is
    # pretrain_v2: VideoMAE V2's dual masking (a running-cell decoder mask) on the same encoder as "pretrain".
    step_mode = "pretrain" if mode == "pretrain_v2" else mode
    config = step.bench_config(family.model, variant, frames, size, per_device * devices, step_mode, dtype,
                               num_classes=400, compare="torch" if torch_sized else None,
                               decoder_mask="run_cell" if mode == "pretrain_v2" else "none")
    if args.quick:
        config.model.update(QUICK["model"], **family.bench.quick_model)
    row = dict(model=family.model, variant=variant, mode=mode, dtype=dtype, frames=frames, size=size,
               batch=config.batch_size, devices=devices, device_kind=device_kind)
    heads = head_dim(config.model)
    impl = None
    if heads is not None:
        # What the model's default ("") runs here: heads-major on CPU, cuDNN's fused kernel for 16-bit GPU rows
        # whose heads it takes, XLA's otherwise.
        impl = attention.resolve(config.model.attention_impl, dtype, heads)
        row["attention"] = impl
    try:
        result = step.time_vidjax(config, step_mode, steps, warmup)
    except Exception as err:  # noqa: BLE001 - one row's failure (cuDNN refusing a shape, out of memory) is reported
        if impl != "cudnn":
            return dict(row, error=_one_line(err))
        config.model.attention_impl = "xla"
        row["attention"] = f"xla (cudnn failed: {_one_line(err)})"
        try:
            result = step.time_vidjax(config, step_mode, steps, warmup)
        except Exception as err2:  # noqa: BLE001
            return dict(row, error=_one_line(err2))
    seconds, flops = result["seconds_per_step"], result["flops_per_step"]
    row.update(seconds_per_step=seconds, clips_per_s=result["clips_per_s"], compile_s=result["compile_s"],
               flops_per_step=flops, tflops_per_s=flops / devices / seconds / 1e12,
               mfu=step.mfu(flops, seconds, device_kind, devices),
               temp_bytes=result["temp_bytes"], backend=result["backend"])
    # Printed before the reference runs, so that a slow or failing reference never hides the row's own figures.
    print(f"{family.model} {variant} {mode} {dtype}: {seconds:.4f} s/step, {row['clips_per_s']:.2f} clips/s",
          flush=True)
    note = torch_note(args, family, mode, dtype, backend)
    if note:
        row["torch_note"] = note
        return row
    try:
        placement = reference.placement(backend, dtype)
        torch_result = reference.time_torch(family.model, mode, config.model, config.batch_size, steps, warmup,
                                            **placement)
    except Exception as err:  # noqa: BLE001 - the vidjax figures stand without it
        row["torch_note"] = f"failed: {_one_line(err)}"
        return row
    row["torch"] = {"seconds_per_step": torch_result["seconds_per_step"], "clips_per_s": torch_result["clips_per_s"],
                    "device": placement["device"], "autocast": placement["autocast"],
                    "ran": reference.describe(torch_result)}
    row["speedup_vs_torch"] = torch_result["seconds_per_step"] / seconds
    return row


class InputBenchError(ValueError):
    """An --input_bench file that cannot give a clips/s-per-core figure; the message names the file and the fix."""


_INPUT_BENCH_COMMAND = ("python -m vidjax.data.bench --config=configs/videomae_k400.py --config.data.short_side=256 "
                        "--num_samples=1,4 --workers=2 --json_out=FILE")


def _read_input_bench(path: str) -> dict:
    """One data-bench JSON, checked for what the cores-per-chip figure needs: `vidjax` rows with clips/s per core,
    the recipe they ran and the host they ran on."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        what = "cannot be read" if isinstance(err, OSError) else "is not JSON"
        raise InputBenchError(f"--input_bench={path}: {what} ({_one_line(err)}); give the file that "
                              f"`{_INPUT_BENCH_COMMAND}` wrote") from None
    if isinstance(data, dict) and "rows" not in data and "clips_per_s" in data:
        raise InputBenchError(f"--input_bench={path}: this is the decoder comparison's JSON (the data bench without "
                              f"--config), which times decoding alone; cores per chip need the whole input path: "
                              f"`{_INPUT_BENCH_COMMAND}`")
    if not (isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("recipe"), dict)
            and "cpus" in data and "platform" in data
            and all(isinstance(r, dict) and {"loader", "num_samples", "workers"} <= r.keys() for r in data["rows"])):
        raise InputBenchError(f"--input_bench={path}: not the data bench's JSON (expected \"rows\" of loader, "
                              f"num_samples, workers, and \"recipe\", \"cpus\", \"platform\"); make one with "
                              f"`{_INPUT_BENCH_COMMAND}`")
    rows = [r for r in data["rows"] if r["loader"] == "vidjax"]
    if not rows:
        raise InputBenchError(f"--input_bench={path}: no rows of the vidjax loader (only "
                              f"{sorted({r['loader'] for r in data['rows']})}); make one with `{_INPUT_BENCH_COMMAND}`")
    if any(not isinstance(r.get("clips_per_s_per_core"), (int, float)) or r["clips_per_s_per_core"] <= 0
           for r in rows):
        raise InputBenchError(f"--input_bench={path}: vidjax rows without a positive clips/s per core (the data bench "
                              f"measures CPU time from /proc, on Linux only): run `{_INPUT_BENCH_COMMAND}` on this "
                              f"(Linux) host")
    return data


def load_input_bench(paths: list[str]) -> dict:
    """The input path's best clips/s per core for each repeated-sampling count `k` over the data-bench JSON files
    `paths`, with the worker count and file each comes from, the recipe and each file's host. The best worker count
    is taken because the question is how few cores can feed a chip, and the trainer's worker count is a setting."""
    files = [(path, _read_input_bench(path)) for path in paths]
    recipes = {json.dumps(data["recipe"], sort_keys=True) for _, data in files}
    if len(recipes) > 1:
        raise InputBenchError(f"--input_bench: the files time different recipes ({'; '.join(sorted(recipes))}); "
                              f"the column divides every row by one recipe's figure: give files of one recipe")
    best: dict[str, dict] = {}
    for path, data in files:
        for r in data["rows"]:
            if r["loader"] != "vidjax":
                continue
            k, per_core = str(r["num_samples"]), float(r["clips_per_s_per_core"])
            if k not in best or per_core > best[k]["clips_per_s_per_core"]:
                best[k] = {"clips_per_s_per_core": per_core, "workers": r["workers"], "file": path,
                           "cpus": data["cpus"], "clips_per_s": r.get("clips_per_s"),
                           "cpu_ms_per_clip": r.get("cpu_ms_per_clip")}
    return {"files": list(paths), "recipe": files[0][1]["recipe"],
            "hosts": [{"file": path, "cpus": data["cpus"], "platform": data["platform"],
                       "devices": data.get("devices")} for path, data in files],
            "this_host_cpus": config_lib.host_cpus(),
            "per_core": dict(sorted(best.items(), key=lambda item: int(item[0])))}


def input_cores_per_chip(row: dict, input_bench: dict | None) -> dict[str, float] | None:
    """{k: host cores per device} of a timed row: its clips/s per device over the input path's clips/s per core
    with k clips per decoded video. None without an input figure or a timing."""
    if not input_bench or "clips_per_s" not in row:
        return None
    per_device = row["clips_per_s"] / row["devices"]
    return {k: per_device / best["clips_per_s_per_core"] for k, best in input_bench["per_core"].items()}


def input_bench_note(input_bench: dict, rows: list[dict]) -> str:
    """The line above the table: where the column's divisor comes from, and what makes it a poor match."""
    recipe = input_bench["recipe"]
    figures = ", ".join(f"{b['clips_per_s_per_core']:g} with k={k} (workers={b['workers']})"
                        for k, b in input_bench["per_core"].items())
    hosts = "; ".join(f"{h['cpus']} CPUs, {h['platform']}" for h in input_bench["hosts"])
    note = (f"Host cores / chip: row clips/s per device / the input path's clips/s per core ({figures}; "
            f"{recipe.get('config')}, {recipe.get('num_frames')}x{recipe.get('crop')} clips, "
            f"{recipe.get('train_crop')} crop{', masks' if recipe.get('masks') else ''}; measured on {hosts}; "
            f"{', '.join(input_bench['files'])})")
    if any(h["cpus"] != input_bench["this_host_cpus"] for h in input_bench["hosts"]):
        note += f". Measured on another host? This one has {input_bench['this_host_cpus']} CPUs"
    clips = {f"{r['frames']}x{r['size']}" for r in rows} - {f"{recipe.get('num_frames')}x{recipe.get('crop')}"}
    if clips:
        note += (f". Rows at {', '.join(sorted(clips))} are divided by the input figure of "
                 f"{recipe.get('num_frames')}x{recipe.get('crop')} clips: a check of the arithmetic, not a sizing")
    return note


def _cores(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _cores_cell(row: dict) -> str:
    cores = row.get("input_cores_per_chip")
    return " / ".join(f"{_cores(v)} (k={k})" for k, v in cores.items()) if cores else "-"


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown_table(rows: list[dict]) -> str:
    """One line per row: the vidjax figures, then the PyTorch reference's or why there are none."""
    lines = ["| model | variant | mode | dtype | clip | batch | attention | s/step | clips/s | TFLOP/s | MFU | "
             "host cores / chip | torch s/step | torch clips/s | vidjax speed-up |", "|" + " --- |" * 15]
    for r in rows:
        clip = f"{r['frames']}x{r['size']}"
        head = f"| {r['model']} | {r['variant']} | {r['mode']} | {r['dtype']} | {clip} | {r['batch']} | "
        if "error" in r:
            lines.append(head + f"{r.get('attention', '')} | error: {r['error'].replace('|', '/')} |" + " |" * 7)
            continue
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        torch = r.get("torch")
        torch_cells = (f"{torch['seconds_per_step']:.4f} | {torch['clips_per_s']:.2f} | {r['speedup_vs_torch']:.2f}x"
                       if torch else f"{r.get('torch_note', '')} | | ")
        lines.append(head + f"{r.get('attention', '')} | {r['seconds_per_step']:.4f} | {r['clips_per_s']:.2f} | "
                     f"{_num(r['tflops_per_s'], '.3g')} | {mfu} | {_cores_cell(r)} | {torch_cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    known = {f.model: f for f in families()}
    names = [name for name in (",".join(known) if args.families is None else args.families).split(",") if name]
    if not names or any(name not in known for name in names):
        parser.error(f"--families={args.families}: choose from {', '.join(known)}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        parser.error(f"--dtypes={args.dtypes}: choose from {', '.join(DTYPES)}")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("pretrain", "finetune", "infer", "pretrain_v2") for m in modes):
        parser.error(f"--modes={args.modes}: choose from pretrain, finetune, infer, pretrain_v2")
    if min(args.batch_per_device, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch_per_device and --steps must be at least 1, --warmup at least 0")
    input_files = [path for value in args.input_bench for path in value.split(",") if path]
    try:  # before jax starts: a wrong file is a bad command line, not a failure after the matrix
        input_bench = load_input_bench(input_files) if input_files else None
    except InputBenchError as err:
        parser.error(str(err))

    # Imported once the command line is checked: they load jax.
    import jax

    from vidjax.bench import reference, step

    if args.torch == "on":
        reference.share_gpu_memory()

    device = jax.devices()[0]
    backend, devices, kind = jax.default_backend(), jax.device_count(), device.device_kind
    peak = step.peak_flops(kind)
    print(f"{devices} x {kind} ({backend}), peak dense bf16 {peak / 1e12:.0f} TFLOP/s per device" if peak else
          f"{devices} x {kind} ({backend}): no peak FLOP/s known, MFU left blank", flush=True)
    rows, start = [], time.perf_counter()
    try:
        for family in (known[name] for name in names):
            for mode in (m for m in family.modes if m in modes):
                for dtype in dtypes:
                    row = run_row(args, family, mode, dtype, backend, devices, kind)
                    cores = input_cores_per_chip(row, input_bench)
                    if cores:
                        row["input_cores_per_chip"] = cores
                    rows.append(row)
                    if "error" in row:
                        print(f"{family.model} {row['variant']} {mode} {dtype}: error: {row['error']}", flush=True)
                    elif "torch" in row:
                        print(f"  PyTorch: {row['torch']['seconds_per_step']:.4f} s/step "
                              f"(vidjax {row['speedup_vs_torch']:.2f}x)", flush=True)
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM (cli.guard): a step may be compiling on XLA's threads
        cli.leave(cli.stopped(err, f"{len(rows)} row{'s' * (len(rows) != 1)} timed, printed above; nothing "
                                        f"was written{f' (--out={args.out} is written at the end)' if args.out else ''}"
                                        f". Run the same command again to time the matrix."))
    table = markdown_table(rows)
    if input_bench:
        input_bench["note"] = input_bench_note(input_bench, rows)
        print(input_bench["note"], flush=True)
    print(table, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device_kind": kind, "backend": backend, "devices": devices, "peak_bf16_flops": peak,
                       "jax_version": jax.__version__, "quick": args.quick, "torch": args.torch,
                       "wall_s": time.perf_counter() - start, "input_bench": input_bench, "rows": rows,
                       "table": table}, f, indent=1)
        print(f"Wrote {args.out}", flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    cli.guard(main)
