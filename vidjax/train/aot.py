"""The trainer's steps compiled ahead of time for a slice this machine does not have (`python -m vidjax.aot`).

`lower(config, slice_)` builds what the trainer builds (`train.build`: mesh, abstract model and state, shardings;
`train.make_train_step`, `make_eval_step`) over the slice's devices (`vidjax.tpu`: abstract TPU devices that libtpu
compiles for, or this process's CPUs) with the model's platform choices resolved for the slice's platform, and
lowers it on abstract state and an abstract batch: nothing is allocated. The batch's keys, shapes and dtypes are
those the input path gives the trainer (`example_batch`: one element of the embedded dataset at the config's clip,
through `pipeline.make_dataset` with the task's input spec); only the leading axis becomes the global batch. The
schedule's constants are part of the program: they come from the training set's length (`train_examples`).

`analyse` reads the compiled program: XLA's per-chip memory, the compiler's cost model (FLOPs, bytes,
`optimal_seconds`: on TPU, libtpu's estimate of the step time, a roofline sum over its instructions), the
collectives with the bytes each moves per chip and step (loops counted by their trip counts), and the model's own
FLOPs (`model_flops`: the matrix products of the step in its plainest form, as `vidjax.bench` counts them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import threading
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from vidjax import config_lib, flops, host_malloc, losses, sharding, tasks, tpu
from vidjax.config_lib import ConfigError
from vidjax.data import pipeline, synthetic
from vidjax.models import clip_spec
from vidjax.ops import scan_kernel
from vidjax.train import (
    Folded,
    Setup,
    build,
    check_grad_accum,
    checkpoint,
    eval_context,
    host_batch,
    in_mesh_context,
    make_eval_step,
    make_train_step,
    memory_figures,
)

STEPS = ("train", "eval", "infer")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# The training set's length where the config's own data cannot be read here (a recipe's /data/... lists): about
# Kinetics-400's 240k training videos. Only the schedule's constants depend on it.
DEFAULT_TRAIN_EXAMPLES = 240_000
# The most sequential grid steps (a scan's time tiles) of one kernel call libtpu's static profile is given
# (`profile_kernels`): the profile walks every step and its memory grows with them. VideoMamba-S's backward scan at
# 64 frames, 99 time tiles of one clip, was killed at 21.6 GB on a 24 GB machine; at 8 frames, 13 tiles, it takes a
# few. A longer kernel is profiled on two twins at fewer frames, its cycles counted for its own grid by the line
# through theirs: its steps do the same work whatever the sequence (the v5e estimates of S's scan kernels at 8 frames
# over those at 64, a byte each, forward, reversed and reversed backward: 1.077, 1.077 and 1.054, the overhang of a
# partial last tile, 6% of 13 tiles and 1% of 99; by the grid's steps instead, 1.025, 1.026 and 1.004), and the line
# takes in what a kernel spends once (VideoMamba-Ti's four at 80 frames, 11 tiles, from twins at 40 and 20 frames:
# within 1.0% of their own profiles; in proportion to one twin at 10 frames, up to 17% over; S's three that v5e
# profiled whole at 64 frames, from twins at 16 and 8: the same cycles a byte to the last digit, docs/tpu.md).
MOST_PROFILED_STEPS = 32


@dataclasses.dataclass
class Lowered:
    """A step lowered for a slice: what was built, and the abstract arguments it takes."""

    config: ml_collections.ConfigDict
    slice: tpu.Slice
    step: str
    setup: Setup
    jitted: object  # the jitted function the trainer (or evaluator) calls
    args: tuple  # its abstract arguments, with shardings
    lowered: object  # jitted.trace(*args).lower()
    train_examples: int


def train_examples(config: ml_collections.ConfigDict, given: int = 0) -> int:
    """The training set's length the schedule is built from: `given` when positive, else the config's training
    split when it can be read here, else `DEFAULT_TRAIN_EXAMPLES`."""
    if given > 0:
        return given
    try:
        return len(pipeline.make_source(config.data, "train"))
    except (ConfigError, FileNotFoundError, OSError, ValueError):
        return DEFAULT_TRAIN_EXAMPLES


def _embedded(config: ml_collections.ConfigDict, split: str) -> tuple[ml_collections.ConfigDict, object]:
    """(config whose data is the embedded dataset at the config's clip and targets, one-batch source of `split`)."""
    small = config.copy_and_resolve_references()
    d = small.data
    with small.unlocked():
        d.source, d.num_train, d.num_eval, d.sampling_rate, d.num_workers = "synthetic", 2, 2, 1, 0
        d.pixels = "host"  # the embedded clips are pixels; `abstract_batch` gives a device-pixel run its planes
        # The targets the task trains on (a captioner's captions), whatever the recipe's own data names.
        d.synthetic_task = tasks.training_of(config.task).synthetic_task or d.synthetic_task
        # The embedded dataset draws up to synthetic.MAX_CLASSES classes; `example_batch` widens multi-hot targets.
        d.num_classes = min(d.num_classes or synthetic.NUM_CLASSES, synthetic.MAX_CLASSES)
        small.batch_size = d.num_samples if split == "train" else 1
    return small, pipeline.make_source(d, "train" if split == "train" else "eval")


def example_batch(config: ml_collections.ConfigDict, setup: Setup, split: str = "train"
                  ) -> tuple[dict[str, np.ndarray], pipeline.InputSpec]:
    """(one batch of the input path for `split` ("train": one video, as its `num_samples` clips; "eval": one), the
    task's input spec it went through), from the embedded dataset at the config's clip size and targets: a spec built
    on the config's own data would read it (a captioner's word-level tokenizer, from training captions not on this
    machine). Multi-hot targets ("labels") have the config's class count, as its data would give them."""
    small, source = _embedded(config, split)
    spec = tasks.training_of(config.task).input_spec(small, setup.abstract_model)
    batch = next(iter(pipeline.make_dataset(small, "train" if split == "train" else "eval", source, spec)))
    classes = config.data.num_classes or config.model.get("num_classes", 0)
    if "labels" in batch and classes and batch["labels"].shape[-1] != classes:
        labels = batch["labels"]
        batch["labels"] = np.zeros((*labels.shape[:-1], classes), labels.dtype)
    return batch, spec


def abstract_batch(config: ml_collections.ConfigDict, setup: Setup, split: str = "train") -> dict:
    """`example_batch`'s keys, dtypes and trailing shapes with the global batch leading, as ShapeDtypeStructs with
    the trainer's batch sharding. Where the config's own training data takes the device-pixel path on the mesh's
    platform (`pipeline.resolve_pixels`), the clips are the planes and crops that path sends (one row a video), as
    the trainer's batches would be."""
    example, spec = example_batch(config, setup, split)
    rows = next(iter(example.values())).shape[0]
    batch_sh = sharding.batch_sharding(setup.mesh)
    out = {key: jax.ShapeDtypeStruct((value.shape[0] // rows * config.batch_size, *value.shape[1:]), value.dtype,
                                     sharding=batch_sh) for key, value in example.items()}
    platform_ = setup.mesh.devices.flat[0].platform
    if split == "train" and pipeline.resolve_pixels(config.data, "train", spec, backend=platform_) == "device":
        del out["video"]
        out.update({key: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)
                    for key, (shape, dtype) in pipeline.device_pixel_shapes(config).items()})
    if split == "train" and host_batch(config):  # folded into micro-batches in host memory
        k, folded = check_grad_accum(config, setup.mesh), sharding.host_batch_sharding(setup.mesh)
        out = {key: Folded(jax.ShapeDtypeStruct((k, value.shape[0] // k, Folded.tiles(value.shape[1:], value.dtype)[1],
                                                 128), Folded.word_dtype(value.dtype), sharding=folded),
                           tuple(value.shape[1:]), np.dtype(value.dtype).name)
               for key, value in out.items()}
    return out


def _check_batch(config: ml_collections.ConfigDict, setup: Setup, where: str) -> None:
    ways = math.prod(setup.mesh.shape[axis] for axis in sharding.BATCH_AXES)
    if config.batch_size % ways:
        fits = config.batch_size // ways * ways or ways
        raise ConfigError(f"config.batch_size={config.batch_size} does not split over the {ways} batch shards "
                          f"(data x fsdp) of {where}: use a multiple of {ways}, e.g. --config.batch_size={fits}.")


def _infer_step(config: ml_collections.ConfigDict, setup: Setup):
    """The jitted forward `python -m vidjax.predict` and the readouts run: normalised clips in, the model's outputs
    out, over the mesh."""
    clips = clip_spec(config.model_name, config.model)
    mean, std = clips["mean"], clips["std"]

    def infer(params, video):
        return nnx.merge(setup.graphdef, params)(losses.normalize_video(video, mean, std))

    return jax.jit(in_mesh_context(infer, setup.mesh, sharding.rules_from_config(config)),
                   in_shardings=(setup.state_shardings["params"], sharding.batch_sharding(setup.mesh)))


def jitted_step(config: ml_collections.ConfigDict, setup: Setup, step: str = "train"):
    """(jitted, abstract args) of `step` as the trainer builds it for `setup`'s mesh."""
    if step not in STEPS:
        raise ConfigError(f"--step={step!r}: one of {', '.join(STEPS)}.")
    spec = tasks.training_of(config.task)
    state = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    if step == "train":
        small, source = _embedded(config, "train")
        class_weights, pos_weight = spec.loss_weights(small, source)
        return (make_train_step(config, setup, class_weights, pos_weight),
                (state, abstract_batch(config, setup, "train")))
    params = state["params"]
    if step == "infer":
        video = abstract_batch(config, setup, "eval")["video"]
        return _infer_step(config, setup), (params, video)
    from vidjax import evaluators  # the tasks layer's evaluations, as the trainer schedules them

    small, source = _embedded(config, "eval")
    context = eval_context(config, setup, metadata={}, sources={"train": source, "eval": source})
    evaluator = evaluators.from_config(context)[0].evaluator
    return make_eval_step(evaluator.config, setup, evaluator.batch_outputs), (params,
                                                                             abstract_batch(config, setup, "eval"))


def batch_coupled(config: ml_collections.ConfigDict) -> str:
    """Why config.task's loss does not accumulate (`TrainingSpec.batch_coupled`: a contrastive loss contrasts each
    example with the rest of its batch), "" where it does: a micro-batch search (`vidjax.aot --find_batch
    --accumulate`, docs/tpu.md's matrix) asks first."""
    return tasks.training_of(config.task).batch_coupled


def settled(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with what the task settles from its training data at start-up (`TrainingSpec.resolve`, as
    `train.prepare` calls it: a captioner's vocabulary and special ids follow its tokenizer), settled against the
    config's training split when it can be read here, else the embedded dataset's (`_embedded`): a captioner whose
    config.data.tokenizer is '' then gets the word-level vocabulary of the embedded captions, so a recipe that takes
    a published decoder's vocabulary sets config.model.decoder.vocab_size (GPT-2 small: 50257) to be compiled at its
    size. Raises ConfigError with what the task refused (a tokenizer directory that cannot be read, gradient
    accumulation for a loss that couples a batch's examples: `TrainingSpec.accumulation_problem`)."""
    refused = tasks.training_of(config.task).accumulation_problem(config)
    if refused:
        raise ConfigError(refused)
    config = config.copy_and_resolve_references()
    try:
        source, where = pipeline.make_source(config.data, "train"), "its training split"
    except (ConfigError, FileNotFoundError, OSError, ValueError):
        source, where = _embedded(config, "train")[1], "the embedded dataset (its own data is not here)"
    before = config.copy_and_resolve_references()
    problems = tasks.training_of(config.task).resolve(config, source, None)
    if problems:
        raise ConfigError("\n".join(problems))
    changed = config_lib.differences(before, config, limit=20)
    if changed:  # on stderr: stdout may be --json
        print(f"The task settled from {where}: " + ", ".join(changed), file=sys.stderr, flush=True)
    return config


def lower(config: ml_collections.ConfigDict, slice_: tpu.Slice, step: str = "train", examples: int = 0) -> Lowered:
    """`step` of `config` (`settled`) built for `slice_` and lowered on abstract arguments (see the module
    docstring)."""
    config = settled(config)
    devices = tpu.topology_devices(slice_)
    mesh = sharding.create_mesh(config.mesh, devices)
    examples = train_examples(config, examples)
    setup = build(config, examples, mesh, backend=slice_.platform)
    _check_batch(config, setup, slice_.describe())
    jitted, args = jitted_step(config, setup, step)
    return Lowered(config=config, slice=slice_, step=step, setup=setup, jitted=jitted, args=args,
                   lowered=jitted.trace(*args).lower(), train_examples=examples)


# libtpu's two ways of refusing a program too large for the chip: its temporaries alone beyond the HBM left beside
# the arguments, or (CompileTimeHbmOom) all that the program uses, "Used 15.91G of 15.75G hbm".
_OUT_OF_HBM = (re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) "
                          r"exceeds available HBM \(([\d.]+)([KMGT])\)"),
               re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"))


def compile_or_refuse(lowered: Lowered) -> tuple[object | None, dict | None]:
    """(compiled, None), or (None, what libtpu said) when it refused the program for not fitting the chip's HBM: it
    stops a compilation whose temporaries exceed the memory it has (RESOURCE_EXHAUSTED), and says how much they
    need ("temp_bytes"; where it gives all the program uses instead, that) and how much there is ("hbm_bytes").
    Any other error is raised. The compiler's working set goes back to the system when it returns
    (`host_malloc.release`): the next compile's does not come on top of it."""
    try:
        return _compiled_in_thread(lowered.lowered), None
    except jax.errors.JaxRuntimeError as err:
        message = str(err).strip().splitlines()[0]
        found = next((m for m in (pattern.search(message) for pattern in _OUT_OF_HBM) if m), None)
        if "RESOURCE_EXHAUSTED" not in message or not found:
            raise
        unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        return None, {"message": message.removeprefix("RESOURCE_EXHAUSTED: "),
                      "temp_bytes": int(float(found[1]) * unit[found[2]]),
                      "hbm_bytes": int(float(found[3]) * unit[found[4]])}


def _compiled_in_thread(lowered):
    """`lowered.compile()` on a daemon thread that this one waits for: a SIGINT or SIGTERM is then handled at once
    (a compile takes minutes, and a signal waits for the call it arrives in), and the command that it stops leaves
    without waiting for the compile (`cli.leave`)."""
    result: dict = {}

    def run():
        try:
            result["compiled"] = lowered.compile()
        except BaseException as err:  # noqa: BLE001 -- raised in the caller's thread below
            result["error"] = err

    thread = threading.Thread(target=run, name="vidjax-aot-compile", daemon=True)
    thread.start()
    thread.join()
    host_malloc.release()
    if "error" in result:
        raise result["error"]
    return result["compiled"]


# ---- what the compiled program says ----

_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}
_OPS = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_CALLS = re.compile(r"\b(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_CONSTANT = re.compile(r"= s32\[\][^ ]* constant\((\d+)\)")


def _array_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        width = _BYTES.get(dtype) or max(int(re.sub(r"\D", "", dtype)[:2] or 8) // 8, 1)
        total += width * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _operands(line: str, start: int, brackets: str = "()") -> str:
    """The text inside the brackets (by default the parenthesised operand list) opening at `start`."""
    depth = 0
    for i in range(start, len(line)):
        depth += {brackets[0]: 1, brackets[1]: -1}.get(line[i], 0)
        if depth == 0:
            return line[start + 1:i]
    return line[start + 1:]


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], dict[str, float]]:
    """({computation: its instruction lines}, {computation: times it runs a step}) of a compiled module's HLO text
    (`compiled.as_text()`): a loop body runs its trip count times (`trip_count`), anything else called (conditional
    branches, fusions, reductions' bodies) as often as its caller."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            current = computations.setdefault(name, [])
            entry = name if line.startswith("ENTRY") else entry
        elif current is not None and line.startswith("  "):
            current.append(line)
    runs: dict[str, float] = {}

    def trip_count(line: str) -> int:
        """A while loop's trip count: the compiler's known_trip_count, else the bound its condition compares the
        counter with (`i < N`, the form lax.scan and fori_loop take); 1 when neither says."""
        known = _TRIP.search(line)
        if known:
            return int(known[1])
        condition = _CONDITION.search(line)
        lines = computations.get(condition[1], []) if condition else []
        bounds = [int(c) for text in lines for c in _CONSTANT.findall(text)]
        compares = [text for text in lines if " compare(" in text]
        return bounds[0] if len(bounds) == 1 and len(compares) == 1 and "direction=LT" in compares[0] else 1

    def visit(name: str, times: float) -> None:
        runs[name] = runs.get(name, 0.0) + times
        for line in computations.get(name, []):
            trip = trip_count(line) if " while(" in line else 1
            for called in _CALLS.findall(line):
                loop_body = f"body={called}" in line or f"body=%{called}" in line
                visit(called, times * (trip if loop_body else 1))
            for group in _BRANCHES.findall(line):
                for called in group.split(","):
                    visit(called.strip().lstrip("%"), times)

    if entry is not None:
        visit(entry, 1.0)
    return computations, runs


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
    """{kind: {"count": instructions, "executions": per step, "bytes": per device per step}} of the collectives in a
    compiled module's HLO text: an instruction in a loop body counts its trip count times, an async pair once (its
    start). Bytes are the larger of what an instruction takes and what it gives (an all-gather's output, a
    reduce-scatter's input, an all-reduce's either). libtpu's reduce-scatter is an all-reduce fused with a slice, in
    a computation named "all-reduce-scatter": counted as a reduce-scatter."""
    computations, runs = _computations(hlo_text)
    found: dict[str, dict[str, float]] = {}
    for name, times in runs.items():
        for line in computations.get(name, []):
            match = _OPS.search(line)
            if not match or "=" not in line[:match.start()]:
                continue
            result = _array_bytes(line[line.index("=") + 1:match.start()])
            operands = _array_bytes(_operands(line, match.end() - 1))
            moved = max(operands, result - operands) if match[2] else max(operands, result)
            kind = "reduce-scatter" if match[1] == "all-reduce" and name.startswith("all-reduce-scatter") else match[1]
            row = found.setdefault(kind, {"count": 0, "executions": 0.0, "bytes": 0.0})
            row["count"] += 1
            row["executions"] += times
            row["bytes"] += moved * times
    return found


_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_STATIC_CYCLES = re.compile(r'"bundle_analysis_data":\{"estimated_cycles":"(\d+)"')
_KERNEL = 'custom_call_target="tpu_custom_call"'
_DECLARED = re.compile(r'"cost_estimate":\{"flops":"(\d+)"')
_OPERAND_SHAPES = "operand_layout_constraints={"
_SUFFIX = re.compile(r"\.\d+$")
_OPCODE = re.compile(r" ([a-z][a-z0-9\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_KIND = re.compile(r"kind=(k\w+)")


def _category(opcode: str, line: str, computations: dict[str, list[str]]) -> str:
    if opcode.removesuffix("-start") in COLLECTIVES or "all-reduce-scatter" in line:
        return "collectives"
    if opcode == "custom-call":
        return "custom calls (Pallas kernels)"
    if opcode in ("copy", "copy-start", "transpose", "bitcast", "dynamic-update-slice", "dynamic-slice"):
        return "copies and slices"
    if opcode == "convolution" or opcode == "fusion" and any(
            "convolution(" in inner for called in _CALLS.findall(line) for inner in computations.get(called, [])):
        return "matrix products (convolution fusions)"
    kind = _KIND.search(line)
    return {"kLoop": "elementwise (loop fusions)", "kInput": "reductions (input fusions)",
            "kOutput": "other output fusions"}.get(kind[1] if kind else "", f"other ({opcode})")


def _kernel_name(line: str) -> str:
    """A Mosaic kernel's name as its instruction carries it (the pallas_call's name, with the jvp/transpose prefixes
    of a backward pass), without the instruction's number."""
    name = line.split("=", 1)[0].replace("ROOT", "").strip().lstrip("%")
    return _SUFFIX.sub("", name).strip("_").replace("__", "_")


def _kernel_signature(line: str) -> str:
    """A kernel call's shapes with each array's leading (batch) dimension left out: the same kernel traced at another
    batch has the same signature, whatever its instruction is named after (a jit around it, a jvp)."""
    at = line.find(_OPERAND_SHAPES)
    operands = _operands(line, at + len(_OPERAND_SHAPES) - 1, "{}") if at >= 0 else ""
    result = line[line.index("=") + 1:line.index("custom-call(")]
    return ";".join(f"{dtype}[{','.join(dims.split(',')[1:])}]" for text in (result, operands)
                    for dtype, dims in _SHAPE.findall(text))


def kernel_estimates(hlo_text: str, chip, profiled: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """The Mosaic (Pallas) kernels of a compiled TPU program, which libtpu's cost model leaves out of its step time:
    for each kernel (by name, its calls a step counted with the loops' trip counts) libtpu's static estimate of its
    cycles (`bundle_analysis_data`, present when `vidjax.tpu.static_estimates` set its flag before libtpu loaded),
    the HBM bytes it must at least move (its operands and results, once) and the FLOPs it declares.

    An estimate is kept only if it is physically possible: at least the bytes over the chip's HBM bandwidth and at
    least the declared arithmetic over the chip's peak (a faster figure would mean more bandwidth or FLOP/s than the
    chip has: libtpu's static profile has been seen to skip some kernels' loops, docs/tpu.md). A kernel without an
    estimate, or whose estimate is below either floor, is "unknown" with the reason; its floor is what the step
    time can be said to include for it. `profiled` (`profile_kernels`) gives the per-call estimates of a kernel the
    program itself carries none for, each scaled by this program's bytes a call over the profiled one's.
    {} when the program has no kernels."""
    computations, runs = _computations(hlo_text)
    rows: dict[str, dict] = {}
    for name, times in runs.items():
        for line in computations.get(name, []):
            if _KERNEL not in line or "=" not in line:
                continue
            kernel = _kernel_name(line)
            row = rows.setdefault(kernel, {"name": kernel, "calls": 0.0, "cycles": 0.0, "bytes": 0.0, "flops": 0.0,
                                           "without_estimate": 0, "signatures": []})
            if _kernel_signature(line) not in row["signatures"]:
                row["signatures"].append(_kernel_signature(line))
            cycles, declared = _STATIC_CYCLES.search(line), _DECLARED.search(line)
            at = line.find(_OPERAND_SHAPES)
            operands = _operands(line, at + len(_OPERAND_SHAPES) - 1, "{}") if at >= 0 else ""
            result = line[line.index("=") + 1:line.index("custom-call(")]
            row["calls"] += times
            row["bytes"] += times * (_array_bytes(result) + _array_bytes(operands))
            row["flops"] += times * (int(declared[1]) if declared else 0)
            if cycles:
                row["cycles"] += times * int(cycles[1])
            else:
                row["without_estimate"] += 1
    if not rows:
        return {}
    clock, bandwidth, peak = chip.clock_hz, chip.hbm_bytes_per_s, chip.peak_bf16_flops
    for row in rows.values():
        row["hbm_floor_s"] = row["bytes"] / bandwidth
        row["arithmetic_floor_s"] = row["flops"] / peak
        floor = max(row["hbm_floor_s"], row["arithmetic_floor_s"])
        if row.pop("without_estimate"):
            known, why = _profiled(profiled or {}, row)
            if not known or not known["bytes"]:
                row["seconds"], row["reason"] = None, (
                    "libtpu gave no static estimate" if profiled is None else profiled.get("error") or why)
                continue
            # Its cycles a byte at a clip or two a batch shard, times the bytes it moves in this step.
            row["cycles"] = known["cycles"] / known["bytes"] * row["bytes"]
            row["profiled_bytes"] = known["bytes"]
            on = [known["shorter"]] if known.get("shorter") else []
            if known.get("whole_tiles"):
                on.append("its whole-tile twin (`scan_kernel.whole_tiles`: libtpu's profiler stops on a partial last "
                          "tile)")
            if on:
                row["profiled_on"] = "; ".join(on)
        seconds = row["cycles"] / clock
        if seconds < floor:
            which = ("its HBM bytes over the chip's bandwidth" if row["hbm_floor_s"] >= row["arithmetic_floor_s"]
                     else "its declared FLOPs over the chip's peak")
            row["seconds"], row["reason"] = None, (
                f"the static estimate, {seconds * 1e3:.3g} ms, is below {which}, {floor * 1e3:.3g} ms: it cannot "
                f"be right")
        else:
            row["seconds"] = seconds
    known = [row for row in rows.values() if row["seconds"] is not None]
    unknown = [row for row in rows.values() if row["seconds"] is None]
    return {"kernels": sorted(rows.values(), key=lambda row: -(row["seconds"] or 0.0)),
            "seconds": sum(row["seconds"] for row in known),
            "unknown": len(unknown),
            "unknown_floor_s": sum(max(row["hbm_floor_s"], row["arithmetic_floor_s"]) for row in unknown),
            "calls": sum(row["calls"] for row in rows.values()),
            "bytes": sum(row["bytes"] for row in rows.values())}


def _profiled(profiled: Mapping, row: dict) -> tuple[dict | None, str]:
    """The profile of the kernel `row` describes (by its name, else by the signatures of its calls, summed), or None
    and why not. A kernel of the same name whose operands the profile never saw (none of the row's signatures among
    the profiled ones) is another kernel: the child process traced other code (the tree edited while it ran)."""
    signatures = profiled.get("signatures", {})
    by_signature = profiled.get("errors_by_signature", {})  # (a kernel's jaxpr name need not be its instruction's)
    failed = profiled.get("errors", {}).get(_plain_name(row["name"])) or next(
        (by_signature[signature] for signature in row["signatures"] if signature in by_signature), None)
    if failed:  # (a kernel with calls of several shapes, one of them unprofiled: its sum would read low)
        return None, failed
    known = profiled.get("names", {}).get(_plain_name(row["name"]))
    if known:
        if signatures and not any(signature in signatures for signature in row["signatures"]):
            return None, ("the profiled kernel of this name has other operands than this step's (its profile traced "
                          "other code: was the tree edited while vidjax.aot ran?)")
        return known, ""
    found = [signatures.get(signature) for signature in row["signatures"]]
    if not found or not all(found):
        return None, "libtpu gave no static estimate of it (the profiled step had no kernel of this name)"
    return {"cycles": sum(f["cycles"] for f in found), "bytes": sum(f["bytes"] for f in found),
            "whole_tiles": any(f.get("whole_tiles") for f in found),
            "shorter": next((f["shorter"] for f in found if f.get("shorter")), None)}, ""


def _few_clips_a_shard(config: ml_collections.ConfigDict, mesh, chip) -> ml_collections.ConfigDict:
    """The same step at a clip per batch shard for each TensorCore a jax device has (two on a v4 or v5p megacore
    chip, whose cores split a kernel's parallel grid: at one clip a kernel whose only parallel axis is the batch would
    run on one core, twice the time a clip it has at the recipe's batch), at most the step's own, no micro-batches and
    the batch on the chips: the same kernels on smaller grids. Without repeated sampling (config.data.num_samples 1):
    the kernels are the same at a clip of each video, and with several clips a video a shard would need a whole
    video's (the batch's per-video arrays split over the shards), which doubles the profile's time and memory at
    VideoMamba's 2 and quadruples it at VideoMAE V2's 4."""
    shards = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
    per_shard = config.batch_size // shards // config.grad_accum_steps
    clips = max(1, chip.cores_per_chip // chip.devices_per_chip)
    small = ml_collections.ConfigDict(config.to_dict())
    small.batch_size = shards * max(1, min(per_shard, clips))
    small.grad_accum_steps, small.batch_memory = 1, "device"
    if small.data.get("num_samples", 1) > 1:
        small.data.num_samples = 1
    return small


def profile_kernels(lowered: Lowered, timeout_s: float = 1800, most_steps: int = 0) -> dict:
    """libtpu's static estimate of the cycles a byte of each Mosaic kernel of `lowered`'s step, each distinct kernel
    call compiled in a child process of its own with the static profile on (`vidjax.tpu.static_estimates`, which
    must be set before libtpu loads).

    The profile walks through every loop iteration of what it profiles, so its time and memory grow with the work:
    at a recipe's batch it would take far longer than the compile, and whole steps have also been seen to stop
    libtpu's profiler (an LLO type check on a matrix product of VideoMamba's step, with or without kernels). So each
    child traces the step at a clip or two per batch shard (`_few_clips_a_shard`) and compiles one distinct kernel
    call of it alone, on one chip: nothing but that kernel is profiled. A kernel whose last block is partial is
    profiled on its whole-tile twin where it has one (`_whole_tile_twin`: v5e's and v6e's profilers lack an
    instruction of the selective scan's partial last time tile), its cycles counted for its own bytes; one whose
    grid has more than `most_steps` (`MOST_PROFILED_STEPS`) sequential steps, a long clip's scan, on two twins at
    fewer frames (`_shorter_twins`), its cycles counted for its own grid's steps by the line through theirs. One child a
    kernel, because one kernel's profile can stop its process (libtpu's profiler aborts on what it does not
    support) or take most of a machine's memory (VideoMamba-Ti's backward scan at 2 clips: 13 GB, which a process
    does not give back for the next kernel): the others keep their estimates. {"names": {kernel name: {"cycles",
    "bytes", and "whole_tiles" or "shorter" where a twin's}}, "signatures": {the calls' shapes but their batch: the
    same}, "errors": {kernel name: why its profile failed}, "errors_by_signature": {its calls' shapes: the same}},
    summed over the calls (a layer scan's by its length), or {"error": why} where the step could not be traced; a
    kernel is matched by its name, else by its shapes (its instruction may be named after a jit around it, or after
    its block sizes: jax's flash attention's "flash_attention_dkv_kernel" is "flash_mha_bwd_dkv_block_..." compiled).
    `kernel_estimates(..., profiled=)` scales them to the full step by the bytes each kernel moves there. A kernel's
    grid, and with it its cycles, grows with the clips it is given (libtpu's estimates of the selective-scan kernels
    at 2, 8 and 16 clips: 57.4, 228.7, 453.3 us, in proportion)."""
    import pickle
    import subprocess
    import tempfile

    small = _few_clips_a_shard(lowered.config, lowered.setup.mesh, lowered.slice.chip)
    totals: dict[str, dict] = {"names": {}, "signatures": {}, "errors": {}, "errors_by_signature": {}}
    with tempfile.TemporaryDirectory(prefix="vidjax-kernels-") as where:
        request, listing = os.path.join(where, "request.pkl"), os.path.join(where, "kernels.pkl")
        with open(request, "wb") as f:
            pickle.dump((small, lowered.slice, lowered.step, lowered.train_examples), f)
        code = "import sys; from vidjax.train import aot; aot._profile_child(*sys.argv[1:])"
        which, names = 0, None
        while names is None or which < len(names):
            answer = os.path.join(where, f"answer{which}.pkl")
            why = None
            try:
                done = subprocess.run([sys.executable, "-c", code, request, listing, str(which), answer,
                                       str(most_steps or MOST_PROFILED_STEPS)],
                                      capture_output=True, text=True, timeout=timeout_s, check=False)
                if done.returncode or not os.path.exists(answer):
                    why = _child_failure(done)
            except subprocess.TimeoutExpired:
                why = f"profiling the kernel took over {timeout_s:.0f} s"
            if names is None:  # the first child lists the step's kernels before it compiles its own
                if not os.path.exists(listing):
                    why = (why or "it listed no kernels").replace("profiling the kernel", "tracing the step", 1)
                    return {"error": why}
                with open(listing, "rb") as f:
                    names = pickle.load(f)
                if not names:
                    break
            if why:
                name, signature = names[which]
                totals["errors"][name] = totals["errors_by_signature"][signature] = why
            else:
                with open(answer, "rb") as f:
                    for kind, rows in pickle.load(f).items():
                        for key, row in rows.items():
                            total = totals[kind].setdefault(key, {"cycles": 0.0, "bytes": 0.0})
                            total["cycles"] += row["cycles"]
                            total["bytes"] += row["bytes"]
                            if row.get("whole_tiles"):
                                total["whole_tiles"] = True
                            if row.get("shorter"):
                                total["shorter"] = row["shorter"]
            which += 1
    return totals


def _child_failure(done) -> str:
    """Why a profiling child failed: libtpu's own fatal line ("F1129 ... ] what failed") where there is one, not the
    abort that follows it; a kill without a word is most likely the machine's memory running out."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if not lines and done.returncode == -9:
        return ("profiling the kernel failed (exit -9, killed: most likely this machine's memory ran out; libtpu's "
                "profile grows with the kernel's work)")
    lines = lines or ["no output"]
    failed = next((line.split("] ", 1)[-1] for line in lines if re.match(r"F\d{4} ", line)), None) or next(
        (line for line in lines if "Check failed" in line or "Error" in line), lines[-1])
    return f"profiling the kernel failed (exit {done.returncode}): {failed.strip()[:300]}"


def _kernel_calls(jaxpr, times: float = 1.0, found: dict | None = None) -> dict:
    """{(name, operand avals): [the pallas_call equation, calls]} of a jaxpr and the jaxprs inside it, a scan's
    body counted by its length."""
    found = {} if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            key = (_pallas_name(eqn), tuple(str(v.aval) for v in eqn.invars))
            found.setdefault(key, [eqn, 0.0])[1] += times
            continue
        inner = times * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    _kernel_calls(sub, inner, found)
    return found


def _profile_child(request: str, listing: str, which: str, answer: str, most_steps: str = "") -> None:
    """`profile_kernels`'s child: the requested step traced, its distinct kernel calls' names and shapes
    (`_aval_signature`) written to `listing` (where it is not there yet), and the `which`-th of them compiled alone
    on one chip with libtpu's static profile on (on its shorter twins where its grid has more than `most_steps`
    sequential steps, `_shorter_twins`); its estimates to `answer`."""
    import pickle

    tpu.static_estimates()  # before libtpu loads
    with open(request, "rb") as f:
        config, slice_, step, examples = pickle.load(f)
    config = settled(config)
    devices = tpu.topology_devices(slice_)
    setup = build(config, examples, sharding.create_mesh(config.mesh, devices), backend=slice_.platform)
    fn, args = jitted_step(config, setup, step)
    calls = list(_kernel_calls(jax.make_jaxpr(fn)(*args).jaxpr).items())
    if not os.path.exists(listing):
        with open(listing + ".part", "wb") as f:
            pickle.dump([(name, _aval_signature(eqn)) for (name, _), (eqn, _) in calls], f)
        os.replace(listing + ".part", listing)
    if int(which) >= len(calls):  # (a step without kernels: nothing to profile)
        return
    (name, _), (eqn, times) = calls[int(which)]
    most = int(most_steps or MOST_PROFILED_STEPS)
    shorter = _shorter_twins(config, examples, setup.mesh, slice_, step, int(which), name, eqn, most) if (
        _sequential_steps(eqn) > most) else []
    traces = shorter or [(eqn, config, setup)]
    one_chip = jax.sharding.SingleDeviceSharding(devices[0])
    profiles = []  # (the call's grid steps, cycles, bytes, whether on its whole-tile twin, signatures), a trace each
    for call, traced, traced_setup in traces:
        twin = _whole_tile_twin(traced, traced_setup, step, int(which), name) if _partial_blocks(call) else None
        profiled = twin or call
        operands = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, sharding=one_chip) for v in profiled.invars]
        kernel = jax.jit(functools.partial(_bind, profiled)).lower(*operands).compile()
        rows = kernel_estimates(kernel.as_text(), slice_.chip).get("kernels", [])
        if rows:  # (one kernel, the call's: its bytes for the call's own operands where a twin's)
            moved = rows[0]["bytes"] * _aval_bytes(call) / _aval_bytes(profiled)
            profiles.append((_grid_steps(call), rows[0]["cycles"], moved, twin is not None, rows[0]["signatures"]))
    if not profiles:
        return _write(answer, {"names": {}, "signatures": {}})
    steps, cycles, moved, whole, signatures = profiles[0]
    if shorter:  # the kernel's own grid: the line through the twins' (steps, cycles), or in proportion to one's
        fit = (profiles[0][1] - profiles[1][1]) / (profiles[0][0] - profiles[1][0]) if len(profiles) > 1 else 0.0
        per_step = fit if fit > 0 else cycles / steps
        cycles, moved = cycles + per_step * (_grid_steps(eqn) - steps), _aval_bytes(eqn) / _aval_bytes(
            shorter[0][0]) * moved
    totals: dict[str, dict[str, dict[str, float]]] = {"names": {}, "signatures": {}}
    signature = [_aval_signature(eqn)] if (shorter or whole) else signatures[:1]
    for kind, key in [("names", name)] + [("signatures", sig) for sig in signature]:
        total = totals[kind].setdefault(key, {"cycles": 0.0, "bytes": 0.0})
        total["cycles"] += times * cycles
        total["bytes"] += times * moved
        if whole:
            total["whole_tiles"] = True
        if shorter:
            total["shorter"] = _shorter_words(eqn, config, shorter[:len(profiles)])
    _write(answer, totals)


def _write(path: str, value) -> None:
    import pickle

    with open(path, "wb") as f:
        pickle.dump(value, f)


def _grid_steps(eqn) -> int:
    """The steps of a pallas_call's grid."""
    return math.prod(eqn.params["grid_mapping"].grid)


def _sequential_steps(eqn) -> int:
    """The steps of a pallas_call's grid that run in order (its "arbitrary" dimensions: a scan's time tiles), which
    libtpu's static profile walks one after another; every step where the kernel does not say."""
    params = eqn.params.get("compiler_params")
    params = params.get("mosaic", params) if isinstance(params, Mapping) else params
    semantics = getattr(params, "dimension_semantics", None) or ()
    grid = eqn.params["grid_mapping"].grid
    if len(semantics) != len(grid):
        return math.prod(grid)
    return math.prod(size for size, kind in zip(grid, semantics, strict=True) if "arbitrary" in str(kind).lower())


def _shorter_twins(config, examples: int, mesh, slice_, step: str, which: int, name: str, eqn, most: int) -> list:
    """[(the `which`-th kernel call of the step traced again at fewer frames, its config, its setup)]: two twins of
    a kernel whose grid has more than `most` (`MOST_PROFILED_STEPS`) sequential steps, the clip's frames
    (config.model.num_frames, and the data's) divided by the least power of two that brings them to at most `most`,
    and by twice that, the line through their cycles giving the kernel's at its own grid's steps (a grid step's
    cycles and the kernel's fixed ones); one where the frames do not divide twice; none where the model has no
    frames to divide so, or those traces have no such kernel there."""
    frames = config.model.get("num_frames")
    tubelet = config.model.get("tubelet_size", 1) or 1
    if not isinstance(frames, int):
        return []
    factor = 2 ** max(0, math.ceil(math.log2(_sequential_steps(eqn) / most)))
    twins = []
    for divide in (factor, 2 * factor):
        if divide == 1 or frames % divide or (frames // divide) % tubelet:
            break
        short = ml_collections.ConfigDict(config.to_dict())
        short.model.num_frames = frames // divide
        if short.data.get("num_frames") == frames:
            short.data.num_frames = frames // divide
        jax.clear_caches()
        setup = build(short, examples, mesh, backend=slice_.platform)
        fn, args = jitted_step(short, setup, step)
        calls = list(_kernel_calls(jax.make_jaxpr(fn)(*args).jaxpr).items())
        # (at least two sequential steps: a sequence within one tile has a tile of its own length, other work a step)
        if which >= len(calls) or calls[which][0][0] != name or not 2 <= _sequential_steps(calls[which][1][0]) <= most:
            break
        twins.append((calls[which][1][0], short, setup))
    return twins


def _shorter_words(eqn, config, twins: list) -> str:
    """What a kernel profiled on its shorter twins (`_shorter_twins`) was profiled on, for its row."""
    frames = " and ".join(str(short.model.num_frames) for _, short, _ in twins)
    steps = " and ".join(str(_sequential_steps(call)) for call, _, _ in twins)
    how = "the line through their cycles" if len(twins) > 1 else "its cycles in proportion"
    return (f"its twin{'s' if len(twins) > 1 else ''} at {frames} frames of the clip's {config.model.num_frames} "
            f"({steps} of its {_sequential_steps(eqn)} sequential grid steps: libtpu's profile walks them all, and "
            f"its memory grows with them), counted for its {_grid_steps(eqn)} grid steps by {how}")


def _partial_blocks(eqn) -> bool:
    """Whether a pallas_call's grid runs its last block of some operand or result past the array's end."""
    for mapping in eqn.params["grid_mapping"].block_mappings:
        for block, size in zip(mapping.block_shape, mapping.array_aval.shape, strict=True):
            block = getattr(block, "block_size", block)
            if isinstance(block, int) and size % block:
                return True
    return False


def _whole_tile_twin(config, setup, step: str, which: int, name: str):
    """The `which`-th kernel call of the step traced again under `scan_kernel.whole_tiles` (its sequence padded
    to whole tiles: libtpu's static profiler stops on a partial last tile on v5e and v6e), or None where that trace
    has no such kernel there or its blocks are still partial (a kernel that does not pad)."""
    jax.clear_caches()  # (the step's jits would give back the unpadded trace)
    with scan_kernel.whole_tiles():
        fn, args = jitted_step(config, setup, step)
        calls = list(_kernel_calls(jax.make_jaxpr(fn)(*args).jaxpr).items())
    if which >= len(calls) or calls[which][0][0] != name or _partial_blocks(calls[which][1][0]):
        return None
    return calls[which][1][0]


def _aval_bytes(eqn) -> int:
    return sum(math.prod(v.aval.shape) * v.aval.dtype.itemsize for v in (*eqn.outvars, *eqn.invars))


def _hlo_type(dtype) -> str:
    """An array dtype as HLO spells it (f32, bf16, s32, pred, ...)."""
    name = np.dtype(dtype).name
    if name == "bool":
        return "pred"
    if name == "bfloat16" or name.startswith("float8_"):
        return name.replace("bfloat", "bf").replace("float8_", "f8")
    return re.sub(r"^(u?)(int|float|complex)(\d+)$",
                  lambda m: ("u" if m[1] else {"int": "s", "float": "f", "complex": "c"}[m[2]]) + m[3], name)


def _aval_signature(eqn) -> str:
    """`_kernel_signature` of a pallas_call equation from its avals: its results' and operands' shapes, each
    without its leading (batch) dimension."""
    return ";".join(f"{_hlo_type(v.aval.dtype)}[{','.join(map(str, v.aval.shape[1:]))}]"
                    for v in (*eqn.outvars, *eqn.invars))


def _pallas_name(eqn) -> str:
    """The name a pallas_call equation gives its kernel (its instruction's name in the compiled program when the
    kernel is named; else its kernel function's, which tells a flash-attention forward from its two backward
    kernels though their operands are the same)."""
    named = getattr(eqn.params.get("name_and_src_info"), "name", None) or eqn.params.get("name")
    kernel = getattr(getattr(eqn.params.get("jaxpr"), "debug_info", None), "func_name", None)
    return _plain_name(str(named if named and named != "pallas_call" else kernel or "pallas_call"))


def _bind(eqn, *operands):
    return eqn.primitive.bind(*operands, **eqn.params)


def _plain_name(name: str) -> str:
    """A kernel's name without the jvp/transpose prefixes a backward pass gives its instruction."""
    while True:
        for prefix in ("transpose_", "jvp_", "checkpoint_", "remat_"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        else:
            return name.strip("_")


def estimated_profile(hlo_text: str, top: int = 12) -> dict:
    """libtpu's own estimate of each instruction's cycles (the `estimated_cycles` its compiler writes into every
    scheduled instruction's backend_config; for a Mosaic kernel, which the cost model skips, its static estimate,
    `kernel_estimates`), summed per step with loop bodies times their trip counts: the total ("cycles"), the
    instructions but the kernels with every computation counted once ("cycles_once", how the cost model's aggregate
    `optimal_seconds` counts a loop), the kernels' part of the total ("kernel_cycles"), the shares by category, and
    the `top` instructions with their jax op names. {} where the program carries no estimates (a CPU)."""
    computations, runs = _computations(hlo_text)
    by_category: dict[str, float] = {}
    rows, total, once, kernels = [], 0.0, 0.0, 0.0
    for name, times in runs.items():
        for line in computations.get(name, []):
            kernel = _KERNEL in line
            cycles = (_STATIC_CYCLES if kernel else _CYCLES).search(line)
            opcode = _OPCODE.search(line[line.find("=") + 1:]) if "=" in line else None
            if not cycles or not opcode:
                continue
            value = float(cycles[1])
            category = _category(opcode[1], line, computations)
            by_category[category] = by_category.get(category, 0.0) + value * times
            total += value * times
            if kernel:
                kernels += value * times
            else:
                once += value
            op_name = _OP_NAME.search(line)
            rows.append((value * times, category, op_name[1].removeprefix("jit(wrapped)/") if op_name else opcode[1]))
    if not total:
        return {}
    by_op: dict[tuple[str, str], float] = {}
    for value, category, op in rows:
        by_op[category, op] = by_op.get((category, op), 0.0) + value
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return {"cycles": total, "cycles_once": once, "kernel_cycles": kernels,
            "by_category": {k: v / total for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
            "top": [{"share": value / total, "category": category, "op": op} for (category, op), value in ranked]}


def cost_figures(compiled) -> dict[str, float]:
    """The compiler's cost model of a compiled program: flops, bytes accessed and, on TPU, optimal_seconds (the step
    time it expects); {} where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 -- a backend without a cost model
        return {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return {key.replace(" ", "_"): float(value) for key, value in (cost or {}).items()
            if key in ("flops", "bytes accessed", "optimal_seconds", "transcendentals")}


def model_flops(config: ml_collections.ConfigDict, lowered: Lowered) -> float:
    """The model's FLOPs of one step, all devices together: the matrix products (`vidjax.flops.matmul_flops`) of the
    same step with its blocks unrolled, no rematerialisation, one micro-batch and attention as plain products."""
    plain = flops.plain_config(config)
    setup = build(plain, lowered.train_examples, lowered.setup.mesh, backend=lowered.slice.platform)
    fn, args = jitted_step(plain, setup, lowered.step)
    return flops.matmul_flops(jax.make_jaxpr(fn)(*args))


def input_bytes(lowered: Lowered) -> int:
    """Bytes a chip holds of the step's input (the batch: its whole global batch, with accumulation's micro-batches
    cut inside the step), by each array's shard on one device; none of a batch in host memory
    (config.batch_memory="host")."""
    batch = lowered.args[-1]
    total = 0
    for leaf in jax.tree.leaves(batch):
        if getattr(getattr(leaf, "sharding", None), "memory_kind", None) in ("pinned_host", "unpinned_host"):
            continue
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return int(total)


def parameter_bytes(setup: Setup) -> int:
    """Bytes of the model's parameters, whole (not per device)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state["params"]))


def analyse(lowered: Lowered, compiled) -> dict:
    """What the compiled step says, per chip: memory (`train.memory_figures`), the cost model, collectives, and
    the parameters' whole size."""
    text = compiled.as_text()
    chip = lowered.slice.chip
    kernels = kernel_estimates(text, chip) if chip else {}
    if kernels and any(row["seconds"] is None for row in kernels["kernels"]):
        profiled = profile_kernels(lowered) if chip.static_profile else {
            "error": f"libtpu's static profile does not cover {chip.generation} (its DMA latency model is for v5e, "
                     f"v5p, v6e and later)"}
        kernels = kernel_estimates(text, chip, profiled)
    return {"memory": memory_figures(compiled), "cost": cost_figures(compiled), "collectives": collectives(text),
            "profile": estimated_profile(text), "kernels": kernels, "parameter_bytes": parameter_bytes(lowered.setup)}


def fits_in(figures: Mapping[str, int], hbm_bytes: int) -> bool:
    return bool(figures) and figures["total_bytes"] <= hbm_bytes
