r"""Compile a recipe's step ahead of time for a TPU slice, on any machine: `python -m vidjax.aot --config=CONFIG
--topology=SLICE [--num_slices=N] [--config.KEY=VALUE ...]`.

The step is the one the trainer runs (`vidjax.train.aot`: the same `train.build` and `train.make_train_step`, the
config's mesh, sharding rules, remat, layer scan, micro-batches and dtype), compiled by libtpu for the slice's
abstract devices: nothing runs and no TPU is needed (`pip install 'vidjax[tpu]'` installs libtpu, the TPU compiler,
at your jax's version; Linux x86-64). SLICE is Cloud's accelerator type (v5p-128, v4-32, v5litepod-256, v6e-64,
v3-8), a topology (v5p:4x4x4, v5e:16x16) or cpu[:N] (this machine's CPU devices); `--num_slices=2` joins that many
slices over the data-centre network, the data axis across them.

  python -m vidjax.aot --config=configs/videomae_k400.py --topology=v5p-128 --config.model.dtype=bfloat16
  python -m vidjax.aot --config=configs/videomae_v2.py:variant=g/14 --topology=v5p-128 --config.mesh.fsdp=8 \
      --config.model.dtype=bfloat16 --find_batch
  python -m vidjax.aot --config=configs/videomae_k400.py:runlocal --topology=v5litepod-1 --json

It prints one table, per chip:
- HBM: state and batch (the arguments), outputs not aliased to them, temporaries and code, against the chip's HBM,
  the margin, and whether it fits;
- the step time libtpu's cost model expects (`optimal_seconds`: a roofline sum over the program's instructions, with
  no overlap between them; a loop's body, such as a layer scan's, counted by its trip count through libtpu's
  per-instruction cycle estimates; docs/tpu.md compares it with measured TPU step times), and where it goes (those
  estimates by kind of instruction, and the largest jax operations);
- the Mosaic (Pallas) kernels the cost model leaves out, each by libtpu's static estimate (taken in a child process
  at a clip or two a chip, scaled to the step by the kernel's bytes) against its floors, the HBM bytes it moves over
  the chip's bandwidth and its declared FLOPs over the peak; added to the step time, or shown as unknown with the
  reason and counted at its floor;
- the model's FLOPs per step (`vidjax.bench`'s count) and from them the estimated MFU and clips/s of the slice;
- the recipe's steps (its epochs over the training set) and the hours they take at that step time;
- the collectives the step runs, by kind, with the bytes each chip moves per step, and their time at the chip's
  inter-chip bandwidth if nothing overlaps them;
- the host CPU cores the input path needs to keep up, at the per-core rate of `python -m vidjax.data.bench` (its
  JSON with --data_bench=FILE, else the rate measured in docs/performance.md: 19.8 clips/s per core, 47.8 with
  repeated sampling of 4), beside the vCPUs the slice's hosts have.

`--step=eval|infer` compiles the evaluator's step or the forward instead; `--hlo=FILE` writes the compiled program;
`--find_batch` finds the largest global batch that fits (multiples of the batch shards; per-chip memory fitted as
affine in the batch from two compiles, then one or two to confirm), `--find_batch --accumulate` the largest
micro-batch that reaches the config's global batch by gradient accumulation;
`--json` prints the figures as one JSON object instead; `--save=FILE` writes the compiled train step, which the
trainer loads on a matching slice with `--config.aot_step=FILE` (refused, in one line, for another slice, config or
jax/libtpu version).

Exit codes: 0 the step fits, 3 it does not fit (the line says what to change), 2 a bad config or slice name.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

from vidjax import cli, config_lib, tpu
from vidjax.config_lib import ConfigError


def define_flags() -> None:
    """The command line, defined when the command runs (`run_command`): a test or a notebook that imports this module
    for `figures` and `table` leaves absl's flags alone."""
    config_flags.DEFINE_config_file("config", None, "Config file, optionally with arguments: "
                                    "configs/videomae_k400.py[:runlocal]", lock_config=True)
    flags.DEFINE_string("topology", None, "The slice: v5p-128, v4-32, v5litepod-256, v6e-64, v3-8 (Cloud's "
                        "accelerator types), v5p:4x4x4 (a topology) or cpu[:N].")
    flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-centre network (multi-slice).")
    flags.DEFINE_enum("step", "train", ["train", "eval", "infer"], "The program: the train step, the default "
                      "evaluator's step, or the model's forward.")
    flags.DEFINE_bool("find_batch", False, "Find the largest global batch that fits (per-chip memory fitted as "
                      "affine in the batch from two compiles, its prediction confirmed by one or two more), and "
                      "report it and the table at it.")
    flags.DEFINE_bool("accumulate", False, "With --find_batch: keep the config's global batch and find the largest "
                      "micro-batch that fits, the rest by gradient accumulation (config.grad_accum_steps).")
    flags.DEFINE_bool("json", False, "Print the figures as one JSON object instead of the table.")
    flags.DEFINE_string("save", None, "Write the compiled train step here, for `--config.aot_step` of the trainer "
                        "on a matching slice.")
    flags.DEFINE_string("data_bench", None, "JSON written by `python -m vidjax.data.bench --json_out` (or its last "
                        "line): the input path's clips/s per core on your hosts.")
    flags.DEFINE_string("hlo", None, "Write the compiled program's HLO text here (libtpu's per-instruction "
                        "estimates are in its backend_config).")
    flags.DEFINE_integer("train_examples", 0, "Videos in the training set, for the schedule's constants (default: "
                         "the config's training list if readable here, else 240,000, about Kinetics-400).")
    flags.mark_flags_as_required(["config", "topology"])


FITS, BAD_INPUT, DOES_NOT_FIT = 0, 2, 3
# clips/s per CPU core of vidjax's input path at repeated sampling k (docs/performance.md, "The whole input path, per
# core"): K400 pre-training clips, 2 grain workers, a 2-core machine.
PER_CORE_CLIPS = {1: 19.8, 4: 47.8}
GIB = 2**30


def per_core_rate(num_samples: int, data_bench: str | None = None) -> tuple[float, str]:
    """(clips/s per host core of the input path at `num_samples` clips a video, where the figure comes from)."""
    if data_bench:
        try:
            with open(data_bench) as f:
                lines = [line for line in f.read().splitlines() if line.strip().startswith("{")]
            rows = json.loads(lines[-1])["rows"]
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise ConfigError(f"--data_bench={data_bench}: not the JSON of `python -m vidjax.data.bench` "
                              f"({type(err).__name__}: {err}).") from err
        ours = [row for row in rows if row.get("loader") == "vidjax" and "clips_per_s_per_core" in row]
        best = min(ours, key=lambda row: abs(row["num_samples"] - num_samples), default=None)
        if best is None:
            raise ConfigError(f"--data_bench={data_bench} has no vidjax row with clips/s per core.")
        return best["clips_per_s_per_core"], f"{data_bench}, num_samples {best['num_samples']}"
    k = max(key for key in PER_CORE_CLIPS if key <= max(num_samples, 1))
    return PER_CORE_CLIPS[k], (f"K400 videos decoded to 16 x 224 clips, num_samples {k}: docs/performance.md's input "
                               f"path; --data_bench for your own")


def host_cores(config, clips_per_s: float, data_bench: str | None = None) -> dict:
    """{"host_cores_needed", "host_core_rate"}: the host cores that feed `clips_per_s` at the input path's rate per
    core (`per_core_rate`: a data benchmark's, else K400's decoded 16 x 224 clips); {} for generated clips
    (config.data.source "synthetic": nothing is decoded, so no decoding rate applies) unless `data_bench` gives one."""
    if config.data.source == "synthetic" and not data_bench:
        return {}
    rate, source = per_core_rate(config.data.num_samples, data_bench)
    return {"host_cores_needed": clips_per_s / rate, "host_core_rate": {"clips_per_s_per_core": rate, "from": source}}


def figures(config, slice_, step: str, examples: int = 0, save: str | None = None, data_bench: str | None = None,
            hlo: str | None = None, compiled: tuple | None = None) -> dict:
    """Everything the table shows, as one dict (the --json output). `compiled`: (lowered, compiled) of the step
    already (`find_batch`'s), instead of `config`'s."""
    from vidjax import compile_cache  # here, not at the top: --help answers without loading jax
    from vidjax.train import aot

    started = time.perf_counter()
    if compiled is None:
        lowered = aot.lower(config, slice_, step, examples)
        compiled, refused = aot.compile_or_refuse(lowered)
    else:
        (lowered, compiled), refused = compiled, None
    if refused is not None:  # libtpu itself stops at a program whose temporaries exceed the chip's HBM
        return {**_describe(lowered, time.perf_counter() - started), "fits": False, "refused": refused,
                "memory": {"temp_bytes": refused["temp_bytes"]}, "hbm_bytes": refused["hbm_bytes"]}
    out = report(lowered, compiled, time.perf_counter() - started, data_bench)
    if hlo:
        with open(hlo, "w") as f:
            f.write(compiled.as_text())
    if save:
        if step != "train":
            raise ConfigError("--save writes the train step (what --config.aot_step loads): drop --step.")
        out["saved"] = {"path": save, "bytes": compile_cache.save_step(
            save, lowered.lowered, compiled, lowered.setup.mesh, lowered.config.to_json_best_effort(sort_keys=True),
            slice_.describe())}
    return out


def _describe(lowered, compile_s: float) -> dict:
    """What was compiled, for what."""
    config, slice_ = lowered.config, lowered.slice
    # The model's, or where it has none, the video model's nested in it (SVT's backbone, a captioner's encoder).
    blocks = config_lib.video_blocks(config.model)
    dtype = next((block.dtype for _, block in blocks if "dtype" in block), "float32")
    variant = next((block.variant for _, block in blocks if block.get("variant")), "")
    return {"config": config.model_name + "/" + config.task, "variant": variant,
            "step": lowered.step, "slice": slice_.describe(), "topology": slice_.topology,
            "num_slices": slice_.num_slices, "chips": slice_.chips, "devices": slice_.num_devices,
            "mesh": dict(lowered.setup.mesh.shape), "global_batch": config.batch_size,
            "per_chip_batch": config.batch_size / slice_.chips, "dtype": dtype,
            "compile_s": round(compile_s, 1), "train_examples": lowered.train_examples}


def report(lowered, compiled, compile_s: float, data_bench: str | None = None) -> dict:
    """The figures of a step `lowered` for a slice (`vidjax.train.aot.lower`) and compiled."""
    from vidjax.train import aot  # here, not at the top: --help answers without loading jax

    config, slice_ = lowered.config, lowered.slice
    found = aot.analyse(lowered, compiled)
    chip = slice_.chip
    memory, cost = found["memory"], found["cost"]
    hbm = chip.hbm_bytes if chip else (int(config.memory_limit_gb * GIB) or None)
    out = {**_describe(lowered, compile_s), "memory": memory, "hbm_bytes": hbm, "cost": cost,
           "collectives": found["collectives"], "parameter_bytes": found["parameter_bytes"]}
    out["fits"] = aot.fits_in(memory, hbm) if hbm else None
    out["margin_bytes"] = hbm - memory["total_bytes"] if hbm and memory else None
    flops = aot.model_flops(config, lowered)
    out["model_flops"] = flops
    out["profile"] = profile = found["profile"]
    seconds = cost.get("optimal_seconds")
    if seconds is not None and seconds <= 0:  # seen for some whole-model programs (TimeSformer on v5e): unusable
        out["cost_problem"] = f"libtpu's cost model gave {seconds:.3g} s"
        seconds = None
    looped = profile["cycles"] - profile.get("kernel_cycles", 0.0) if profile else 0.0
    if seconds is None and looped and chip and chip.clock_hz:
        # The aggregate is unusable (negative for some programs: TimeSformer's steps, VideoMAE's accumulated over 64
        # micro-batches on v6e), the per-instruction estimates are not: their sum over the clock, which reads higher
        # than the aggregate (VideoMAE-B pre-training on v5p-128: 51.2 ms against 38.9 for XLA's part).
        seconds = looped / chip.clock_hz
        out["cost_problem"] += "; the step time is the sum of its per-instruction estimates instead"
        out["step_s_from"] = "per-instruction estimates"
    elif seconds and profile and looped > profile["cycles_once"]:
        # The cost model's aggregate counts a loop's body once (a layer scan, micro-batches); libtpu's per-instruction
        # cycle estimates, counted with the loops' trip counts, scale it to the whole step.
        seconds *= looped / profile["cycles_once"]
    kernels = out["kernels"] = found["kernels"]
    if seconds and kernels:
        # The cost model leaves Mosaic kernels out: their static estimates are added, and an unknown one's floor.
        out["xla_step_s"] = seconds
        seconds += kernels["seconds"] + kernels["unknown_floor_s"]
        if kernels["unknown"]:
            out["step_s_is_floor"] = True
    if chip and chip.ici_bytes_per_s and found["collectives"]:
        # What the chips' links carry, over their bandwidth: a ring all-reduce sends its bytes about twice.
        sent = sum(row["bytes"] * (2 if kind == "all-reduce" else 1) for kind, row in found["collectives"].items())
        out["collective_s"] = sent / chip.ici_bytes_per_s
    if seconds:
        out["step_s"] = seconds
        out["clips_per_s"] = config.batch_size / seconds
        if lowered.step == "train":  # the recipe's schedule at this step time
            out["total_steps"] = lowered.setup.total_steps
            out["train_hours"] = lowered.setup.total_steps * seconds / 3600
        if chip:
            out["mfu"] = flops / slice_.chips / seconds / chip.peak_bf16_flops
        out.update(host_cores(config, out["clips_per_s"], data_bench))
        if chip:
            out["host_vcpus"] = chip.host_vcpus * slice_.chips
    return out


def _gib(value) -> str:
    """Bytes in GiB, or MiB / KiB below a tenth of the next unit."""
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size / 10 or unit == "KiB":
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def _flop(value: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value / 1e6:.3g} MFLOP"


def table(out: dict) -> str:
    """The figures as the command prints them."""
    memory, hbm = out["memory"], out["hbm_bytes"]
    lines = [f"{out['config']} {out['variant']} {out['step']} step, {out['dtype']}, on {out['slice']}: mesh "
             f"{out['mesh']}, global batch {out['global_batch']} ({out['per_chip_batch']:g} per chip); compiled in "
             f"{out['compile_s']:.0f} s"]
    if "refused" in out:
        lines.append(f"  HBM per chip      temporaries {_gib(memory['temp_bytes'])} of {_gib(hbm)} available: DOES NOT "
                     f"FIT (libtpu stopped the compilation: {out['refused']['message']})")
        return "\n".join(lines)
    if memory:
        unaliased = memory["output_bytes"] - memory["alias_bytes"]
        verdict = ("" if hbm is None else f" of {_gib(hbm)}: " + (
            f"fits, margin {_gib(out['margin_bytes'])} ({out['margin_bytes'] / hbm:.0%})" if out["fits"] else
            f"DOES NOT FIT, {_gib(-out['margin_bytes'])} over"))
        lines.append(f"  HBM per chip      state and batch {_gib(memory['argument_bytes'])}, outputs not aliased "
                     f"{_gib(unaliased)}, temporaries {_gib(memory['temp_bytes'])}, code {_gib(memory['code_bytes'])};"
                     f" total {_gib(memory['total_bytes'])}{verdict}")
    if "step_s" in out:
        xla = out.get("xla_step_s", out["step_s"])
        loops = xla != out["cost"].get("optimal_seconds")
        floor = "at least " if out.get("step_s_is_floor") else ""
        kernels = " + Mosaic kernels' static estimates" if out.get("kernels") else ""
        source = ("the sum of libtpu's per-instruction estimates: its cost model's aggregate was unusable"
                  if out.get("step_s_from") else "libtpu's cost model"
                  + (", its loops counted by their trip counts" if loops else ""))
        lines.append(f"  step time         {floor}{out['step_s'] * 1e3:.2f} ms ({source}{kernels}), "
                     f"{'at most ' if floor else ''}{out['clips_per_s']:,.0f} clips/s for the slice")
        if out.get("total_steps"):
            lines.append(f"  the recipe        {out['total_steps']:,} steps ({out['train_examples']:,} training "
                         f"examples) in {floor}{out['train_hours']:,.1f} hours at this step time")
    elif "cost_problem" in out:
        lines.append(f"  step time         not estimated: {out['cost_problem']}")
    if out.get("kernels"):
        lines.append(kernel_line(out))
    if out.get("profile"):
        ranked = sorted(out["profile"]["by_category"].items(), key=lambda item: -item[1])[:5]
        shares = "; ".join(f"{name} {share:.0%}" for name, share in ranked)
        top = "; ".join(f"{row['op']} {row['share']:.0%}" for row in out["profile"]["top"][:3])
        lines.append(f"  where time goes   {shares} (libtpu's per-instruction estimates)")
        lines.append(f"  largest ops       {top}")
    per_chip = out["model_flops"] / out["chips"]
    mfu = (f" -> estimated MFU {'at most ' if out.get('step_s_is_floor') else ''}{out['mfu']:.1%}" if "mfu" in out
           else "")
    lines.append(f"  model FLOPs       {_flop(per_chip)} per chip a step ({_flop(out['model_flops'])} for the "
                 f"slice){mfu}")
    if out["collectives"]:
        parts = [f"{kind} {row['executions']:g}x {_gib(row['bytes'])}" for kind, row in out["collectives"].items()]
        ici = (f"; about {out['collective_s'] * 1e3:.1f} ms at the chip's ICI bandwidth if nothing overlaps them "
               f"(libtpu's per-instruction estimates give them none)" if "collective_s" in out else "")
        lines.append(f"  collectives       {'; '.join(parts)} per chip a step (parameters "
                     f"{_gib(out['parameter_bytes'])}){ici}")
    else:
        lines.append("  collectives       none")
    if "host_cores_needed" in out:
        rate = out["host_core_rate"]
        have = f"; the slice's hosts have {out['host_vcpus']:,.0f} vCPUs" if "host_vcpus" in out else ""
        lines.append(f"  host cores        {out['host_cores_needed']:,.0f} to feed it at "
                     f"{rate['clips_per_s_per_core']:g} clips/s per core ({rate['from']}){have}")
    return "\n".join(lines)


def _clips(n: int) -> str:
    """"1 clip", "2 clips", "1,024 clips"."""
    return f"{n:,} clip{'' if n == 1 else 's'}"


def _refused_within(needs: int, hbm: int) -> bool:
    """Whether a refused program's figure reads as within the chip's HBM as printed: libtpu gives a program less
    than the chip has (15.75 GiB of a v5e chip's 16)."""
    return round(needs / GIB, 2) <= round(hbm / GIB, 2)


def brief(out: dict) -> str:
    """One line of a step's figures (a matrix cell, the colab_tpu notebook's answer): whether it fits and in how
    much HBM a chip, the micro-batch and accumulation (`find_batch(accumulate=True)`), the step time with its MFU and
    clips/s, and the hours for the recipe's steps; or what it needs beyond the chip's HBM (for a recipe that does not
    accumulate, `TrainingSpec.batch_coupled`, with the largest batch that fits at once)."""
    smallest = out.get("smallest") or {}
    if not out.get("fits") and out.get("batch_coupled"):  # no accumulation (a contrastive loss): what fits at once
        refused = out.get("refused") or {}
        within = refused.get("batch") and _refused_within(refused["total_bytes"], out["hbm_bytes"])
        text = (f"does not fit: the recipe's {_clips(out['global_batch'])} at once do not"
                + (f" ({_clips(refused['batch'])} already need{'s' if refused['batch'] == 1 else ''} "
                   f"{_gib(refused['total_bytes'])} of {_gib(out['hbm_bytes'])} a chip"
                   f"{', which libtpu refuses: it keeps part of the HBM for itself' if within else ''})"
                   if refused.get("batch") else "")
                + f", and its loss does not accumulate ({out['batch_coupled']})")
        largest = out.get("largest")
        if not largest:
            return text + "; not even one batch shard's worth fits"
        at_once = brief({key: value for key, value in largest.items() if key != "train_hours"})
        return (text + f"; the largest batch that fits at once, {_clips(largest['global_batch'])} (another "
                f"recipe): {at_once.removeprefix('fits: ')}")
    if not out.get("fits") and smallest.get("micro_batch") and out.get("chips"):  # find_batch's first micro-batch
        held = smallest.get("input_bytes")
        held = (f", {_gib(held)} of it the step's input: the whole global batch of {out['global_batch']:,} clips, "
                f"which the step holds while it runs its micro-batches (--config.batch_memory=host keeps it in host "
                f"memory)" if held and out.get("global_batch") else "")
        clips = max(smallest['micro_batch'] // out['chips'], 1)
        settings = ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in
                             sorted((smallest.get("settings") or {}).items()))
        refused = (", which libtpu refuses: it keeps part of the chip's HBM for itself"
                   if _refused_within(smallest["total_bytes"], out["hbm_bytes"]) else "")
        return (f"does not fit: {_clips(clips)} a chip need{'s' if clips == 1 else ''} "
                f"{_gib(smallest['total_bytes'])} of {_gib(out['hbm_bytes'])}"
                f"{f' with {settings}' if settings else ''}{refused}{held}")
    if not out.get("fits"):
        needs = out.get("memory", {}).get("total_bytes") or out.get("memory", {}).get("temp_bytes")
        return "does not fit" + (f": {_gib(needs)} of {_gib(out['hbm_bytes'])} a chip" if needs and
                                 out.get("hbm_bytes") else "")
    parts = [f"fits: {_gib(out['memory']['total_bytes'])} a chip"]
    accum = out.get("settings", {}).get("grad_accum_steps", 1)
    if accum > 1:
        parts.append(f"{_clips(out['global_batch'] // accum // out['chips'])} a chip x {accum} accumulated")
    seconds = out.get("step_s")
    if seconds and seconds > 0:  # cells made before `report` dropped a negative cost-model time kept theirs
        floor, most = ("at least ", "at most ") if out.get("step_s_is_floor") else ("", "")
        summed = " (summed per instruction)" if out.get("step_s_from") else ""
        parts.append(f"{floor}{seconds * 1e3:,.0f} ms a step{summed}, MFU {most}{out['mfu']:.0%}, {most}"
                     f"{out['clips_per_s']:,.0f} clips/s")
        if out.get("train_hours"):
            parts.append(f"{floor}{out['train_hours']:,.0f} h for the recipe's {out['total_steps']:,} steps")
        kernels = out.get("kernels") or {}
        if floor and kernels.get("unknown"):  # why "at least": the kernels without an estimate, and the first reason
            why = next(row.get("reason", "") for row in kernels["kernels"] if row.get("seconds") is None)
            parts.append(f"{kernels['unknown']} kernel(s) counted at their floors: {why.split(' (')[0]}")
    else:
        parts.append("step time not estimated")
    return "; ".join(parts)


def kernel_line(out: dict) -> str:
    """The Mosaic kernels: how many the cost model could not see, each one's static estimate against its floors."""
    kernels = out["kernels"]
    rows = kernels["kernels"]
    share = (f", {kernels['seconds'] / out['step_s']:.0%} of the step by their static estimates"
             if out.get("step_s") else "")
    unseen = (f"all {len(rows)} unseen by the cost model" if not kernels["unknown"] else
              f"{kernels['unknown']} of {len(rows)} with no usable estimate")
    parts = []
    for row in rows:
        floor = (f"floor {max(row['hbm_floor_s'], row['arithmetic_floor_s']) * 1e3:.3g} ms: "
                 f"{_gib(row['bytes'])} of HBM, {_flop(row['flops'])}")
        if row["seconds"] is None:
            parts.append(f"{row['name']} x{row['calls']:g} unknown ({row['reason']}; counted at its {floor})")
        else:
            parts.append(f"{row['name']} x{row['calls']:g} {row['seconds'] * 1e3:.3g} ms ({floor})")
    return (f"  Mosaic kernels    {len(rows)} kernels, {kernels['calls']:g} calls a step, {unseen}{share}: "
            + "; ".join(parts))


def advice(out: dict) -> str:
    """The one line a step that does not fit prints: what to change."""
    needs = out["memory"].get("total_bytes") or out["memory"]["temp_bytes"]
    return (f"error: the {out['step']} step needs {_gib(needs)} per chip but "
            f"{out['slice']} has {_gib(out['hbm_bytes'])}: lower --config.batch_size (--find_batch finds the "
            f"largest that fits), or raise --config.grad_accum_steps with --config.batch_memory=host (the batch in "
            f"host memory, a micro-batch at a time on the chips), set --config.model.remat=full with "
            f"--config.model.scan_layers=true, shard parameters with --config.mesh.fsdp=-1 --config.mesh.data=1, "
            f"use --config.model.dtype=bfloat16, or a larger slice.")


def find_batch(config, slice_, step: str, examples: int, log=print, accumulate: bool = False,
               measured: dict | None = None, inputs: dict | None = None,
               known: dict | None = None, up_to: int = 0) -> tuple[int, object]:
    """(the largest global batch, a multiple of the mesh's batch shards, whose step fits the chips' HBM, with that
    batch's lowered and compiled step for its figures (`figures(compiled=)`)), or (0, None) when not even the first
    multiple fits; by `largest_fitting` over compiles. `accumulate`: the largest micro-batch instead, the global
    batch kept at config.batch_size by gradient accumulation (config.grad_accum_steps), among those that divide
    it. `measured`, where given, gets each batch tried (the micro-batch, with `accumulate`) -> its bytes a chip;
    `inputs` the same batch -> the bytes a chip of the step's input (`aot.input_bytes`: with `accumulate`, the whole
    global batch, which the step holds while it runs its micro-batches). `known`: batches an earlier search measured,
    keyed as `measured` is, -> (bytes a chip, fits): not compiled again; where the largest that fits is one of them,
    the step returned is None (its figures are the earlier search's). `up_to`: no global batch above it is tried
    (without `accumulate`): a search whose answer is the recipe's batch where that fits, and otherwise the largest
    that does, with the batch after it shown not to, never compiling a batch far beyond the chips (VideoPrism-B's
    contrastive step of 512 clips on one v5e chip had not been refused after 27 minutes of libtpu's compile)."""
    from vidjax import sharding  # here, not at the top: --help answers without loading jax
    from vidjax.train import aot  # (as above)

    coupled = aot.batch_coupled(config) if accumulate and step == "train" else ""
    if coupled:
        raise ConfigError(f"--accumulate: config.task={config.task!r} does not accumulate ({coupled}): its "
                          f"micro-batches would be another recipe. --find_batch alone gives the largest batch that "
                          f"fits at once.")
    mesh = sharding.create_mesh(config.mesh, tpu.topology_devices(slice_))
    shards = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
    ways = shards * (1 if accumulate else config.grad_accum_steps)
    hbm = slice_.chip.hbm_bytes if slice_.chip else int(config.memory_limit_gb * GIB)
    if not hbm:
        raise ConfigError("--find_batch on CPU devices needs a limit: --config.memory_limit_gb=GiB.")
    multiples = None
    if accumulate:
        if config.batch_size % shards:
            raise ConfigError(f"config.batch_size={config.batch_size} does not split over the {shards} batch shards "
                              f"of {slice_.describe()}.")
        whole = config.batch_size // shards
        # With repeated sampling on device pixels a micro-batch takes whole videos (`train.loss_and_grads`): each
        # shard's part of it, num_samples clips a video.
        samples = config.data.num_samples if config.data.get("pixels", "host") != "host" else 1
        multiples = [m for m in range(1, whole + 1) if whole % m == 0 and m % samples == 0]
    elif up_to:
        multiples = list(range(1, up_to // ways + 1))
    kept: dict = {}

    def measure(multiple: int) -> tuple[int, bool]:
        trial = config.copy_and_resolve_references()
        if accumulate:
            trial.grad_accum_steps = config.batch_size // (multiple * shards)
        else:
            trial.batch_size = multiple * ways
        lowered = aot.lower(trial, slice_, step, examples)
        compiled, refused = aot.compile_or_refuse(lowered)
        needs = refused["temp_bytes"] if refused else aot.memory_figures(compiled)["total_bytes"]
        ok = refused is None and needs <= hbm
        if measured is not None:
            measured[multiple * shards if accumulate else trial.batch_size] = needs
        if inputs is not None:
            inputs[multiple * shards if accumulate else trial.batch_size] = aot.input_bytes(lowered)
        split = f" as {trial.grad_accum_steps} x {multiple * shards}" if accumulate else ""
        log(f"  batch {trial.batch_size}{split}: {_gib(needs)} per chip, {'fits' if ok else 'does not fit'}")
        if ok and multiple > kept.get("multiple", 0):
            kept.update(multiple=multiple, step=(lowered, compiled))
        return needs, ok

    per = shards if accumulate else ways  # a `measured` key over the multiple it is of
    largest = largest_fitting(measure, hbm, multiples, known={key // per: fits for key, fits in (known or {}).items()})
    if not largest:
        return 0, None
    return largest * ways, kept["step"] if kept.get("multiple") == largest else None


def largest_fitting(measure, hbm: int, allowed=None, most: int = 8, known: dict | None = None) -> int:
    """The largest of the `allowed` multiples (sorted; None: every positive integer) whose `measure(multiple)` ->
    (bytes a chip, fits) fits, or 0 when the first does not. `known`: multiples measured before -> (bytes, fits),
    not measured again (a search taken up where an earlier one stopped).

    Per-chip memory is close to affine in the batch (the state, plus the activations of each clip): two measures fit
    the line, and the largest multiple it puts within `hbm` is measured. Near the limit it is not (libtpu
    rematerializes to fit, so the curve flattens; a refusal jumps), so the search goes on until the multiple after
    the largest that fits is shown not to fit. While none has failed, each measure is the line's largest fit through
    the two largest measures, or the next multiple where the line puts none further. Once one has failed, the
    boundary lies between, and the measures alternate the line's guess with the (geometric) middle of the multiples
    left, so every second measure at least halves them. A program libtpu refuses for its size still says what its
    temporaries need, so every measure is a point of a line. At most `most` measures; memory affine in the batch
    takes 4, where doubling took 12 (issue 72)."""
    allowed = sorted(set(allowed)) if allowed else None
    needs: dict[int, int] = {}
    fit: set[int] = set()
    measures = 0

    def take(multiple: int) -> None:
        nonlocal measures
        measures += 1
        needs[multiple], ok = measure(multiple)
        if ok:
            fit.add(multiple)

    def within(low: int, failed: list[int]) -> float:
        """The multiple the line through the two points nearest the boundary puts at `hbm`."""
        other = min(failed) if failed else max((m for m in needs if m != low), default=None)
        if other is None:
            return low
        slope = (needs[other] - needs[low]) / (other - low)
        if slope <= 0:
            return low if failed else 4.0 * max(needs)  # no growth seen: look further up
        return low + (hbm - needs[low]) / slope

    for multiple, (bytes_, ok) in (known or {}).items():  # each a point of the lines, as if measured here
        needs[multiple] = bytes_
        if ok:
            fit.add(multiple)
    first = allowed[0] if allowed else 1
    if first not in needs:
        take(first)
    if first not in fit:
        return 0
    second = next((m for m in allowed if m >= 4 * first), allowed[-1]) if allowed else 4 * first
    if second not in needs:
        take(second)
    halve = False  # the next measure takes the middle of the multiples left, not the line's guess
    while measures < most:
        low = max(fit)
        failed = [m for m in needs if m not in fit and m > low]
        high = min(failed, default=None)
        if allowed:
            left = [m for m in allowed if low < m and (high is None or m < high)]
        else:  # the integers in (low, high), as a range
            left = range(low + 1, high if high is not None else 2**62)
        if not left:
            break  # the multiple after `low` does not fit, or `low` is the last: confirmed
        if halve:
            middle = math.sqrt(low * high)
            guess = min(left, key=lambda m: abs(m - middle)) if allowed else min(max(round(middle), left[0]), left[-1])
        else:
            limit = within(low, failed)
            if allowed:
                guess = max((m for m in left if m <= limit), default=left[0])
            else:
                guess = min(max(int(limit), left[0]), left[-1])
        halve = high is not None and not halve
        take(guess)
    return max(fit)


def main(argv: list[str]) -> int:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    slice_ = tpu.slice_of(FLAGS.topology, FLAGS.num_slices)
    if slice_.chip is not None:
        # Not through the persistent cache: jax cannot load a TPU executable back without a TPU client, and writing
        # one only fills the folder (and warns on each read).
        from vidjax import compile_cache

        compile_cache.configure(False)
    config = FLAGS.config
    if FLAGS.find_batch:
        largest, found = find_batch(config, slice_, FLAGS.step, FLAGS.train_examples,
                                    log=lambda line: print(line, file=sys.stderr), accumulate=FLAGS.accumulate)
        if not largest:
            print(f"error: not even one batch shard's worth fits {slice_.describe()}; {advice_short()}",
                  file=sys.stderr)
            return DOES_NOT_FIT
        if FLAGS.accumulate:
            print(f"Largest micro-batch that fits {slice_.describe()}: {largest} "
                  f"(--config.grad_accum_steps={config.batch_size // largest} for the global batch "
                  f"{config.batch_size})", file=sys.stderr)
        else:
            print(f"Largest global batch that fits {slice_.describe()}: {largest}", file=sys.stderr)
        out = figures(None, slice_, FLAGS.step, FLAGS.train_examples, FLAGS.save, FLAGS.data_bench, FLAGS.hlo,
                      compiled=found)
        out["largest_batch"] = largest
    else:
        out = figures(config, slice_, FLAGS.step, FLAGS.train_examples, FLAGS.save, FLAGS.data_bench, FLAGS.hlo)
    print(json.dumps(out, sort_keys=True) if FLAGS.json else table(out))
    if out["fits"] is False:
        print(advice(out), file=sys.stderr)
        return DOES_NOT_FIT
    return FITS


def advice_short() -> str:
    return ("set --config.model.remat=full with --config.model.scan_layers=true, shard parameters with "
            "--config.mesh.fsdp=-1 --config.mesh.data=1, use --config.model.dtype=bfloat16, or a larger slice.")


def run_command() -> NoReturn:
    """`python -m vidjax.aot`: what its entry module calls. libtpu's start-up warnings about a TPU it cannot find are
    silenced first (`tpu.quiet_libtpu`)."""
    tpu.quiet_libtpu()
    define_flags()
    cli.run(main)
