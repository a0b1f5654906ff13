r"""docs/tpu.md's matrix: every recipe compiled ahead of time (`python -m vidjax.aot`'s figures) for the TPU slices
people train on, at the recipe's published global batch.

  python scripts/tpu_matrix.py                       # every cell not yet in docs/tpu_matrix.json, then the table
  python scripts/tpu_matrix.py --rows=videomae_b_pt --columns=v5p-128   # some cells (again, with --redo)
  python scripts/tpu_matrix.py --table_only          # rewrite the table from the JSON
  python scripts/tpu_matrix.py --rows=videomamba_s --columns=v6e-1 --refigure   # a filled cell's figures again

Each cell tries the row's TPU settings, then falls back one step at a time until the step fits the chips' HBM:
whole-block rematerialisation, then parameters sharded (FSDP over the slice), then micro-batches (gradient
accumulation) small enough for a chip. The first setting that fits is the cell's, with its figures; a cell where
none fits says so with what its first micro-batch needed (`smallest_need`). Results are kept in
docs/tpu_matrix.json (one entry a cell, written as each finishes), so an interrupted run goes on where it stopped.
The table goes between the markers in docs/tpu.md. A compile of a ViT-B step takes about two minutes on a 2-core
machine, ViT-g's longer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vidjax import config_lib, tpu  # noqa: E402

tpu.quiet_libtpu()

JSON = os.path.join(ROOT, "docs", "tpu_matrix.json")
DOC = os.path.join(ROOT, "docs", "tpu.md")
BEGIN, END = "<!-- tpu-matrix -->", "<!-- /tpu-matrix -->"

# The TPU settings every row starts from (docs/tpu.md says why): bf16 compute, the platform's attention (its rule for
# TPU: the resident-keys kernel where it takes the shapes; the cells made before issue 70 record "xla"); the blocks as
# the recipe has them (unrolled, except ViT-g's layer scan: an unrolled ViT-B step is both faster and smaller on TPU).
TPU = {"dtype": "bfloat16"}
# (row id, what it is, config file, config argument, overrides beyond TPU)
ROWS = [
    ("videomae_s_pt", "VideoMAE-S/16 pre-training", "videomae_k400.py", "variant=S/16", {}),
    ("videomae_b_pt", "VideoMAE-B/16 pre-training", "videomae_k400.py", None, {}),
    ("videomae_l_pt", "VideoMAE-L/16 pre-training", "videomae_k400.py", "variant=L/16", {}),
    ("videomae_h_pt", "VideoMAE-H/16 pre-training", "videomae_k400.py", "variant=H/16", {}),
    ("videomae_s_ft", "VideoMAE-S/16 fine-tune", "videomae_finetune_k400.py", "variant=S/16", {}),
    ("videomae_b_ft", "VideoMAE-B/16 fine-tune", "videomae_finetune_k400.py", None, {}),
    ("videomae_l_ft", "VideoMAE-L/16 fine-tune", "videomae_finetune_k400.py", "variant=L/16", {}),
    ("videomae_h_ft", "VideoMAE-H/16 fine-tune", "videomae_finetune_k400.py", "variant=H/16", {}),
    ("v2_b_pt", "VideoMAE V2-B/16 pre-training, dual masking", "videomae_v2.py", "variant=B/16", {}),
    ("v2_l_pt", "VideoMAE V2-L/16 pre-training, dual masking", "videomae_v2.py", "variant=L/16", {}),
    ("v2_g_pt", "VideoMAE V2-g/14 pre-training, dual masking", "videomae_v2.py", "variant=g/14", {}),
    ("v2_g_ft", "VideoMAE V2-g/14 fine-tune", "videomae_v2_finetune.py", "variant=g/14", {}),
    ("timesformer_b", "TimeSformer-B/16 (8 x 224)", "timesformer_k400.py", None, {}),
    ("vivit_b", "ViViT-B/16x2 factorised encoder", "vivit_k400.py", None, {}),
    ("videomamba_ti", "VideoMamba-Ti/16", "videomamba_k400.py", "variant=Ti/16", {}),
    ("videomamba_s", "VideoMamba-S/16", "videomamba_k400.py", None, {}),
    ("videomamba_m", "VideoMamba-M/16", "videomamba_k400.py", "variant=M/16", {}),
    # Long clips, what VideoMamba is for: 64 frames (12,545 tokens) at the recipe's batch.
    ("videomamba_s_64", "VideoMamba-S/16 at 64 frames", "videomamba_k400.py", None,
     {"model.num_frames": 64, "data.num_frames": 64}),
    ("svt_b", "SVT ViT-B/16 (TimeSformer)", "svt_k400.py", None, {}),
    # GPT-2 small's vocabulary, which the recipe's tokenizer (config.data.tokenizer, not on this machine) settles.
    ("captioner_b", "Captioner: VideoMAE-B/16 + GPT-2", "captioning_charades.py", None,
     {"model.decoder.vocab_size": 50257}),
    ("vjepa2_l_pt", "V-JEPA 2 ViT-L/16 pre-training (16 x 256)", "vjepa2.py", None, {}),
    # VideoPrism's video-text model trained contrastively (its first stage), with the published T5 vocabulary of its
    # text tower (the recipe's tokenizer settles it; not on this machine), and its fine-tune as a classifier.
    ("videoprism_b_clip", "VideoPrism-B/18 video-text contrastive (16 x 288)", "videoprism.py", "recipe=contrastive",
     {"model.vocab_size": 32000}),
    ("videoprism_b_ft", "VideoPrism-B/18 fine-tune (16 x 288)", "videoprism.py", "recipe=finetune", {}),
    # The eval step of the recipe's evaluator (`vidjax.evaluators.attentive`): the target encoder's tokens, which the
    # attentive probe is then trained on, on the host's share of them.
    ("vjepa2_l_probe", "V-JEPA 2 ViT-L/16 attentive-probe evaluation", "vjepa2.py", None, {"step": "eval"}),
    # Unmasked-teacher distillation (configs/umt.py): the frozen CLIP ViT-B/16 teacher runs inside the step.
    ("umt_b", "UMT-B/16 distillation from CLIP ViT-B/16", "umt.py", None, {}),
    ("umt_videomamba_m", "VideoMamba-M/16 distillation from CLIP ViT-B/16", "umt.py", "student=videomamba", {}),
]
# The overrides' "step" key: which of `vidjax.train.aot.STEPS` a row compiles ("train" when absent).
# (column id, slice name, slices over DCN)
COLUMNS = [
    ("v5litepod-1", "v5litepod-1", 1), ("v6e-1", "v6e-1", 1), ("v5litepod-8", "v5litepod-8", 1),
    ("v4-32", "v4-32", 1), ("v5p-128", "v5p-128", 1), ("v5litepod-256", "v5litepod-256", 1),
    ("2x v5p-128", "v5p-128", 2),
]


def ladder(config, slice_, accumulate: bool = True) -> list[dict]:
    """The settings a cell tries, in order: the row's, + remat, + FSDP, + micro-batches of at most 8 clips a chip
    (`accumulate`)."""
    blocks = [(f"model.{key}".rstrip("."), block) for key, block in config_lib.video_blocks(config.model)]
    remat = next(({f"{where}.remat": "full"} for where, block in blocks if "remat" in block), {})
    steps = [{}] + ([remat] if remat else [])
    if slice_.chips > 1:
        steps.append({**remat, "mesh.data": slice_.num_slices, "mesh.fsdp": -1})
    per_chip = config.batch_size // slice_.chips
    accum = 1
    while per_chip // accum > 8 and per_chip % (accum * 2) == 0:
        accum *= 2
    if accum > 1 and accumulate:
        steps.append({**steps[-1], "grad_accum_steps": accum})
    return steps


def _apply(config, overrides: dict):
    """A copy of `config` with dotted keys ("model.remat") set."""
    config = config.copy_and_resolve_references()
    config.update_from_flattened_dict(overrides)
    return config


# The columns a user starts on (a Colab TPU, a small slice): each cell keeps the recipe's global batch, with the
# largest micro-batch that fits and gradient accumulation for the rest (`vidjax.aot --find_batch --accumulate`).
ACCUMULATED = ("v5litepod-1", "v6e-1", "v5litepod-8", "v4-32")


def _frugal_ladder(base, slice_) -> list[dict]:
    """The ladder without accumulation, each setting also with the host's pixels where the recipe cuts its clips on
    the device: the last is the most frugal."""
    steps = ladder(base, slice_, accumulate=False)
    if base.data.get("pixels", "host") != "host":  # "device", or "auto" (the device's on an accelerator)
        # Each setting also with the host's pixels: the whole global batch's input is on the chips for the step, and
        # a device-pixel batch is the crop regions' planes (VideoMAE's 2,048 clips: 11.3 GiB, more than a v5e chip
        # has once copied), where RGB clips are 4.7 GiB.
        steps = [step for settings in steps for step in (settings, {**settings, "data.pixels": "host"})]
    return steps


def accumulated_cell(base, slice_, step: str, extra: dict) -> dict:
    """A cell of an `ACCUMULATED` column: for each setting of the ladder (as the row's, + remat, + FSDP; each also with
    the host's pixels where the recipe cuts its clips on the device; last, the most frugal of them with the global
    batch in host memory), the largest micro-batch that fits with the global batch reached by accumulation; the first
    setting where one fits is the cell's. Where none fits, the cell says what the smallest micro-batch needed."""
    from vidjax.commands import aot as aot_command
    from vidjax.config_lib import ConfigError

    tried = []
    steps = _frugal_ladder(base, slice_)
    # Last, the most frugal of them with the global batch in host memory, a micro-batch at a time on the chips: the
    # step's input then takes no HBM (V2-B's 4,096 clips are 9.2 GiB a v5e chip would hold beside its step).
    steps.append({**steps[-1], "batch_memory": "host"})
    for settings in steps:
        config = _apply(base, settings)
        started = time.perf_counter()
        measured: dict = {}
        inputs: dict = {}
        try:
            micro, found = aot_command.find_batch(config, slice_, step, 0, log=lambda line: print(line, flush=True),
                                                  accumulate=True, measured=measured, inputs=inputs)
        except ConfigError as err:
            tried.append({"settings": settings, "error": str(err)[:300]})
            continue
        except Exception as err:  # noqa: BLE001 - a program that does not compile is that cell's result
            tried.append({"settings": settings, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        tried.append({"settings": settings, "measured": measured, "inputs": inputs})
        if micro:
            return {**_micro_batch_figures(config, slice_, step, found, micro, {**extra, **settings}, started),
                    "tried": tried}
    return {"fits": False, "tried": tried, "global_batch": base.batch_size, "slice": slice_.describe(),
            "chips": slice_.chips, "attention": "platform default", "smallest": smallest_need(tried),
            "hbm_bytes": slice_.chip.hbm_bytes}


def whole_batch_cell(base, slice_, step: str, extra: dict, coupled: str) -> dict:
    """A cell of an `ACCUMULATED` column for a recipe whose loss couples a batch's examples (`TrainingSpec.
    batch_coupled`: a contrastive loss contrasts each with the others), which micro-batches would change, so that the
    trainer refuses gradient accumulation for it: the recipe's global batch at once, with the first setting of the
    ladder where it fits. The most frugal setting is searched first (`vidjax.aot --find_batch`, up to the recipe's
    batch): where the recipe's batch fits with it, the settings before it are compiled at that batch in the ladder's
    order and the first that fits is the cell's; where it does not, it fits with none, and the cell gives the largest
    batch that fits at once (a smaller contrastive batch, another recipe, which the cell says) and what the batch
    after it needed."""
    from vidjax.commands import aot as aot_command
    from vidjax.config_lib import ConfigError

    steps = _frugal_ladder(base, slice_)
    started = time.perf_counter()
    measured: dict = {}
    tried: list[dict] = [{"settings": steps[-1], "measured": measured}]
    try:
        batch, found = aot_command.find_batch(_apply(base, steps[-1]), slice_, step, 0, measured=measured,
                                              log=lambda line: print(line, flush=True), up_to=base.batch_size)
    except ConfigError as err:  # the batch does not split over the slice's batch shards
        return {"fits": False, "tried": [{"settings": steps[-1], "error": str(err)[:300]}],
                "global_batch": base.batch_size, "slice": slice_.describe()}
    frugal = aot_command.figures(None, slice_, step, compiled=found) if batch else None
    if batch == base.batch_size:  # the recipe's batch fits: the ladder's first setting where it does
        chosen = {**frugal, "settings": {**extra, **steps[-1]}}
        for settings in steps[:-1]:
            out = aot_command.figures(_apply(base, settings), slice_, step)
            needs = out["memory"].get("total_bytes") or out["memory"].get("temp_bytes")  # a refusal: temporaries
            tried.append({"settings": settings, "total_bytes": needs, "fits": out["fits"]})
            if out["fits"]:
                chosen = {**out, "settings": {**extra, **settings}}
                break
        return {**chosen, "attention": "platform default", "tried": tried,
                "wall_s": round(time.perf_counter() - started, 1)}
    above = min((b for b in measured if b > batch), default=None)  # the batch after the largest that fits
    cell = {"fits": False, "tried": tried, "global_batch": base.batch_size, "slice": slice_.describe(),
            "chips": slice_.chips, "hbm_bytes": slice_.chip.hbm_bytes, "attention": "platform default",
            "batch_coupled": coupled, "refused": {"batch": above, "total_bytes": measured[above]} if above else None,
            "largest": None}
    if frugal is not None:
        frugal.pop("train_hours", None)  # the recipe's steps at another batch: not the recipe's hours
        cell["largest"] = {**frugal, "settings": {**extra, **steps[-1]}}
    cell["wall_s"] = round(time.perf_counter() - started, 1)
    return cell


def smallest_need(tried: list[dict]) -> dict | None:
    """What the first micro-batch of a cell where none fits needed, with what of it is the step's input, and in which
    setting: the most frugal (the ladder's last, the global batch in host memory) where it was measured, else the one
    that needed least. Near the limit a refusal's figure is where libtpu gave up, not what the step needs, so the
    least figure can be a setting that still holds the batch on the chips (VideoMAE-H/16 fine-tune on v5litepod-1:
    15.99 GiB with it, 16.00 without), and the cell would advise what was tried."""
    measured = [t for t in tried if t.get("measured")]
    if not measured:
        return None
    frugal = measured[-1] if measured[-1]["settings"].get("batch_memory") == "host" else None
    def first(t: dict) -> tuple[str | int, int]:  # (the smallest micro-batch measured, its bytes); JSON keys are text
        return min(t["measured"].items(), key=lambda item: int(item[0]))

    best = frugal or min(measured, key=lambda t: first(t)[1])
    micro, total = first(best)
    return {"micro_batch": int(micro), "total_bytes": total, "input_bytes": (best.get("inputs") or {}).get(micro),
            "settings": best["settings"]}


def _micro_batch_figures(config, slice_, step: str, found, micro: int, settings: dict, started: float) -> dict:
    """A filled `accumulated_cell`: the figures of the step `find_batch` compiled at the micro-batch `micro`."""
    from vidjax.commands import aot as aot_command

    out = aot_command.figures(None, slice_, step, compiled=found)
    out["settings"] = {**settings, "grad_accum_steps": config.batch_size // micro}
    out["micro_batch"] = micro
    out["attention"] = "platform default"
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def confirmed_cell(old: dict, base, slice_, step: str, extra: dict) -> dict:
    """`old`, a filled cell of an `ACCUMULATED` column, with its setting's search taken up where it stopped
    (`--confirm`): its measures are points of the line (those above its micro-batch did not fit), and the search goes
    on until the micro-batch after the largest that fits is shown not to (`largest_fitting`; before, a search of four
    compiles could stop short of it). The settings before its own are not tried again: not even their first
    micro-batch fit, which the longer search does not change. Where its micro-batch is still the largest, the cell
    keeps its figures."""
    from vidjax.commands import aot as aot_command

    last = old["tried"][-1]
    measured = {int(key): needs for key, needs in last["measured"].items()}
    inputs = {int(key): needs for key, needs in (last.get("inputs") or {}).items()}
    known = {key: (needs, key <= old["micro_batch"]) for key, needs in measured.items()}
    config = _apply(base, last["settings"])
    started = time.perf_counter()
    micro, found = aot_command.find_batch(config, slice_, step, 0, log=lambda line: print(line, flush=True),
                                          accumulate=True, measured=measured, inputs=inputs, known=known)
    tried = [*old["tried"][:-1], {"settings": last["settings"], "measured": measured, "inputs": inputs}]
    if found is None:  # the earlier micro-batch is the largest, now shown by the next
        return {**old, "tried": tried}
    return {**_micro_batch_figures(config, slice_, step, found, micro, {**extra, **last["settings"]}, started),
            "tried": tried}


def refigured_cell(old: dict, base, slice_, step: str, extra: dict) -> dict:
    """`old`, a filled cell of an `ACCUMULATED` column, compiled again at its own setting and micro-batch for its
    figures, with no search (`--refigure`): where what `vidjax.aot` estimates has changed since it was taken (its
    kernels counted at their floors then: a profile libtpu stopped on, which their whole-tile twins now take)."""
    from vidjax.train import aot

    last = old["tried"][-1]
    config = _apply(base, last["settings"])
    config.grad_accum_steps = config.batch_size // old["micro_batch"]
    started = time.perf_counter()
    lowered = aot.lower(config, slice_, step)
    compiled, refused = aot.compile_or_refuse(lowered)
    if refused is not None:
        print(f"  its micro-batch of {old['micro_batch']} is refused now ({refused['message'][:200]}); the cell is "
              "kept", flush=True)
        return old
    return {**_micro_batch_figures(config, slice_, step, (lowered, compiled), old["micro_batch"],
                                   {**extra, **last["settings"]}, started), "tried": old["tried"]}


def eval_cell(base, slice_, step: str, extra: dict) -> dict:
    """A cell of an `ACCUMULATED` column for a step that is no training step (an evaluation's): it runs the recipe's
    batch where that fits, else the largest batch that does (`vidjax.aot --find_batch`), the evaluation going through
    its clips in more steps of it."""
    from vidjax.commands import aot as aot_command
    from vidjax.config_lib import ConfigError

    started = time.perf_counter()
    batch = base.batch_size
    try:
        out = aot_command.figures(base, slice_, step)  # the recipe's own batch, where it fits
    except ConfigError:  # it does not split over the slice's batch shards: find_batch takes multiples of them
        out = {"fits": False}
    if not out["fits"]:
        measured: dict = {}
        try:
            batch, found = aot_command.find_batch(base, slice_, step, 0, log=lambda line: print(line, flush=True),
                                                  measured=measured)
        except ConfigError as err:
            return {"fits": False, "tried": [{"settings": {}, "error": str(err)[:300]}],
                    "global_batch": base.batch_size, "slice": slice_.describe()}
        if not batch:
            first = min(measured)
            return {"fits": False, "tried": [{"settings": {}, "measured": measured}], "global_batch": base.batch_size,
                    "slice": slice_.describe(), "chips": slice_.chips, "hbm_bytes": slice_.chip.hbm_bytes,
                    "smallest": {"micro_batch": first, "total_bytes": measured[first]}}
        out = aot_command.figures(None, slice_, step, compiled=found)
    out.update(settings=dict(extra), attention="platform default", eval_batch=batch, recipe_batch=base.batch_size,
               wall_s=round(time.perf_counter() - started, 1))
    return out


def cell(row, column, old: dict | None = None, refigure: bool = False) -> dict:
    from vidjax.commands import aot as aot_command
    from vidjax.config_lib import ConfigError

    _, _, file, arg, extra = row
    extra = dict(extra)
    step = extra.pop("step", "train")
    _, name, slices = column
    slice_ = tpu.slice_of(name, slices)
    base = config_lib.load_config_file(os.path.join(ROOT, "configs", file), arg)
    # The settings go to the block that has them: the model, a captioner's encoder and decoder, SVT's backbone.
    blocks = [("model", base.model)] + [(f"model.{key}", value) for key, value in base.model.items()
                                        if hasattr(value, "keys")]
    base = _apply(base, {**{f"{where}.{key}": value for where, block in blocks for key, value in TPU.items()
                            if key in block}, **extra})
    from vidjax.train import aot

    coupled = aot.batch_coupled(base) if step == "train" else ""
    if coupled and column[0] in ACCUMULATED:
        return whole_batch_cell(base, slice_, step, extra, coupled)
    if step == "train" and column[0] in ACCUMULATED:
        if old is not None:
            return (refigured_cell if refigure else confirmed_cell)(old, base, slice_, step, extra)
        return accumulated_cell(base, slice_, step, extra)
    if column[0] in ACCUMULATED:
        return eval_cell(base, slice_, step, extra)
    tried = []
    for settings in ladder(base, slice_, accumulate=not coupled) if step == "train" else [{}]:
        config = _apply(base, settings)
        started = time.perf_counter()
        try:
            out = aot_command.figures(config, slice_, step)
        except ConfigError as err:
            tried.append({"settings": settings, "error": str(err)[:300]})
            continue
        except Exception as err:  # noqa: BLE001 - a program that does not compile is that cell's result, not the run's
            tried.append({"settings": settings, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        out["settings"] = {**extra, **settings}
        out["attention"] = "platform default"
        out["wall_s"] = round(time.perf_counter() - started, 1)
        needs = out["memory"].get("total_bytes") or out["memory"].get("temp_bytes")  # libtpu's refusal: temporaries
        tried.append({"settings": settings, "total_bytes": needs, "fits": out["fits"]})
        if out["fits"]:
            return {**out, "tried": tried}
    best = min((t for t in tried if "total_bytes" in t), key=lambda t: t["total_bytes"], default=None)
    return {"fits": False, "tried": tried, "smallest": best, "global_batch": base.batch_size,
            "slice": slice_.describe()}


def _gib(value) -> str:
    return f"{value / 2**30:.1f}"


def _settings(settings: dict, cell: dict) -> str:
    """The settings a cell chose, and XLA's attention for the cells compiled before the platform's default was the
    resident-keys kernel (issue 70)."""
    shown = dict.fromkeys(f"{k.split('.')[-1]}={v}" for k, v in settings.items())  # data. and model.num_frames: one
    return ", ".join(["bf16", *shown, *([] if cell.get("attention") else ["XLA attention"])])


def table(results: dict) -> str:
    """The matrix as markdown: one row a recipe, one column a slice."""
    head = "| recipe (global batch) | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    from vidjax import config_lib

    for row in ROWS:
        cells = []
        batch = config_lib.load_config_file(os.path.join(ROOT, "configs", row[2]), row[3]).batch_size
        for column in COLUMNS:
            r = results.get(f"{row[0]}@{column[0]}")
            if r is None:
                cells.append("not compiled yet")
                continue
            if not r["fits"] and r.get("batch_coupled") and "largest" in r:  # no accumulation: what fits at once
                from vidjax.commands import aot as aot_command

                cells.append(aot_command.brief(r) + (f"; {_settings(r['largest']['settings'], r)}"
                                                     if r["largest"] else ""))
                continue
            if not r["fits"] and not r.get("smallest") and any("does not split" in t.get("error", "")
                                                                for t in r.get("tried", [])):
                cells.append(f"n/a: the batch does not split over {tpu.slice_of(column[1], column[2]).chips} chips")
                continue
            if not r["fits"] and not r.get("smallest") and r.get("tried"):
                # The error's first line names the constraint (a kernel the chip's compiler refuses, say).
                cells.append("n/a: " + r["tried"][0].get("error", "").splitlines()[0][:160])
                continue
            if not r["fits"] and (r.get("smallest") or {}).get("micro_batch"):
                from vidjax.commands import aot as aot_command

                cells.append(aot_command.brief(r))
                continue
            if not r["fits"]:
                smallest = r.get("smallest") or {}
                cells.append("does not fit" + (f" ({_gib(smallest['total_bytes'])} GiB at best)"
                                               if smallest.get("total_bytes") else ""))
                continue
            collective = sum(c["bytes"] for c in r["collectives"].values())
            seconds = r.get("step_s") or 0
            if seconds > 0:
                floor, most = ("at least ", "at most ") if r.get("step_s_is_floor") else ("", "")
                timing = (f"{floor}{seconds * 1e3:.0f} ms, MFU {most}{r['mfu']:.0%}, "
                          f"{most}{r['clips_per_s']:,.0f} clips/s")
                kernels = r.get("kernels")
                if kernels and kernels["unknown"]:  # no usable static estimate: counted at their floors
                    timing += (f" ({kernels['unknown']} of {len(kernels['kernels'])} kernels unknown, counted at "
                               f"their floor {kernels['unknown_floor_s'] * 1e3:.0f} ms)")
                elif kernels:  # the Mosaic kernels' static estimates, which the cost model leaves out
                    timing += f" (kernels {kernels['seconds'] * 1e3:.0f} ms)"
            else:  # libtpu's cost model gave no usable step time (a negative one, for some programs)
                timing = "step time not estimated"
            if r.get("micro_batch"):  # an accumulated column: the micro-batch, the hours for the recipe
                from vidjax.commands import aot as aot_command

                kept = {k: v for k, v in r["settings"].items() if k != "grad_accum_steps"}
                cells.append(f"{aot_command.brief(r)}; {_settings(kept, r)}")
                continue
            smaller = (f" at {r['eval_batch']:,} clips a step ({r['eval_batch'] // r['chips']} a chip), the recipe's "
                     f"{r['recipe_batch']:,} in {-(-r['recipe_batch'] // r['eval_batch'])} steps"
                     if r.get("eval_batch", 0) < r.get("recipe_batch", 0) else "")
            cells.append(f"fits{smaller}: {_gib(r['memory']['total_bytes'])} GiB, {timing}, {_gib(collective)} GiB "
                         f"coll.; {_settings(r['settings'], r)}")
        lines.append(f"| {row[1]} ({batch}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(results: dict) -> None:
    with open(DOC) as f:
        text = f.read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    with open(DOC, "w") as f:
        f.write(text[:start] + "\n" + table(results) + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="", help="Comma-separated row ids (default: all).")
    parser.add_argument("--columns", default="", help="Comma-separated column ids (default: all).")
    parser.add_argument("--redo", action="store_true", help="Compile cells already in the JSON again.")
    parser.add_argument("--confirm", action="store_true",
                        help="Take up the micro-batch search of the small columns' filled training cells where it "
                             "stopped, until the next micro-batch is shown not to fit.")
    parser.add_argument("--refigure", action="store_true",
                        help="Compile the small columns' filled training cells again at their own micro-batch, "
                             "without a search, for their figures (what vidjax.aot estimates changed since).")
    parser.add_argument("--table_only", action="store_true", help="Only rewrite docs/tpu.md's table.")
    args = parser.parse_args()
    results = json.load(open(JSON)) if os.path.exists(JSON) else {}
    rows = [r for r in ROWS if not args.rows or r[0] in args.rows.split(",")]
    columns = [c for c in COLUMNS if not args.columns or c[0] in args.columns.split(",")]
    if args.confirm or args.refigure:
        todo = [(row, column) for row in rows for column in columns
                if results.get(f"{row[0]}@{column[0]}", {}).get("micro_batch")]
    else:
        todo = [(row, column) for row in rows for column in columns
                if args.redo or f"{row[0]}@{column[0]}" not in results] if not args.table_only else []
    if len(todo) > 1:
        # One process a cell: what a compile freed stays partly resident (6.5 GB after SVT's v4-32 step, 21 GB at its
        # peak), so cells run in one process ran a 24 GB machine out of memory. A cell that fails is reported, and
        # the others run.
        for row, column in todo:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--rows={row[0]}",
                                   f"--columns={column[0]}", *(["--redo"] if args.redo else []),
                                   *(["--confirm"] if args.confirm else []),
                                   *(["--refigure"] if args.refigure else [])])
            if done.returncode:
                print(f"{row[0]}@{column[0]}: its process ended with code {done.returncode}", flush=True)
        results = json.load(open(JSON)) if os.path.exists(JSON) else {}
    elif todo:
        (row, column), = todo
        key = f"{row[0]}@{column[0]}"
        started = time.perf_counter()
        done = cell(row, column, results[key] if args.confirm or args.refigure else None, args.refigure)
        print(f"{key}: {'fits' if done['fits'] else 'does not fit'} ({time.perf_counter() - started:.0f} s)",
              flush=True)
        # Read again before writing: runs over other columns may share the file.
        results = {**(json.load(open(JSON)) if os.path.exists(JSON) else {}), key: done}
        tmp = f"{JSON}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        os.replace(tmp, JSON)
    write_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
