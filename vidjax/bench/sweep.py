"""Scaling curves: how step time and memory grow with the clip's frames, its image size or the batch.

  python -m vidjax.bench --sweep=frames --sweep_values=8,16,32,64 --models=videomae,timesformer,vivit,videomamba \
      --modes=infer,finetune --size=112 --batch=1 --steps=3 --warmup=1 --out=docs/figures/sweep_frames_cpu
  python -m vidjax.bench --sweep=size --sweep_values=112,160,224 --models=vivit --modes=finetune --frames=16
  python -m vidjax.bench --sweep=batch --sweep_values=1,2,4,8 --models=videomae --modes=finetune --compare=torch

Every point is what `python -m vidjax.bench` times at that point (`step.bench_config`, `step.time_vidjax`): the
trainer's jitted update step (finetune, pretrain) or the jitted forward (infer) on random inputs, the median of
`--steps` after `--warmup`, with the compiled program's memory report (`temp_bytes`: XLA's temporaries for the step,
activations and gradients in flight; `argument_bytes`: state and batch). With `--compare=torch` the PyTorch
reference (`reference.time_torch`) runs the same point right after, where it has the family and mode.

Every point's config is checked before the first compiles (`step.check_sweep_points`): a size a model refuses (its
patches or tubelets do not divide it) is a usage error naming the points, exit status 2, and nothing runs; so is
`--compare=torch` where torch and transformers do not import (`pip install 'vidjax[torch]'`). A curve stops at the
first point that fails when run (out of memory): its row keeps the error and the larger points are not tried. Per
family and mode the exponent of each curve is the slope of the least-squares line through log(value), log(figure):
1.0 is linear in the swept value, 2.0 quadratic. `--out=PREFIX` writes PREFIX.json (settings, points, exponents,
host, "complete") after every point, atomically, and at the end PREFIX.png: step time and temporaries against the
swept value on log-log axes, one line per family and mode (torch dashed), with the exponent in the legend (under the
axes, clear of the points). The picture needs matplotlib (`pip install matplotlib`); without it the JSON is still
written and the command says so.

Interrupted (Ctrl-C, SIGTERM), the sweep says how many points PREFIX.json keeps and exits 130 / 143; the same command
again keeps those points (it says so) and measures the rest. A PREFIX.json of other settings (or another backend or
device) is not overwritten: the command refuses it, exit 2, before anything runs.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
from collections.abc import Sequence

from vidjax import fileio
from vidjax.bench import reference

AXES = ("frames", "size", "batch")
# The smallest published size of each family that the curves use unless --variant names one.
DEFAULT_VARIANTS = {"videomae": "S/16", "timesformer": "S/16", "vivit": "S/16x2", "videomamba": "S/16"}
DEFAULT_VALUES = {"frames": (8, 16, 32, 64), "size": (112, 160, 224), "batch": (1, 2, 4, 8)}


def exponent(values: Sequence[float], figures: Sequence[float | None]) -> float | None:
    """The slope of the least-squares line through (log value, log figure) over the points that have a positive
    figure; None with fewer than two."""
    points = [(math.log(v), math.log(f)) for v, f in zip(values, figures, strict=True) if f and f > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def settings(axis: str, values: Sequence[int], models: Sequence[str], modes: Sequence[str], *, frames: int,
             size: int, batch: int, steps: int, warmup: int, dtype: str = "float32", num_classes: int = 400,
             variant: str | None = None, compare: str | None = None, remat: str = "none",
             scan_layers: bool = False) -> dict:
    """What a sweep measures, as its JSON records it ("settings"): a rerun with the same settings on the same kind of
    host resumes from the points already in the file (`previous`)."""
    return {"axis": axis, "values": [int(v) for v in values], "models": list(models), "modes": list(modes),
            "frames": frames, "size": size, "batch": batch, "steps": steps, "warmup": warmup, "dtype": dtype,
            "num_classes": num_classes, "variant": variant, "compare": compare, "remat": remat,
            "scan_layers": bool(scan_layers)}


def host() -> dict:
    """Where the sweep runs: its JSON's "host"; the backend, device kind and count must match for a resume."""
    import jax

    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "jax_version": jax.__version__}


_SAME_HOST = ("backend", "device", "devices")


def json_path(prefix: str | os.PathLike) -> pathlib.Path:
    """PREFIX.json, the sweep's points (written after each one) and the resume point of a rerun."""
    prefix = pathlib.Path(fileio.user_path(str(prefix)))
    return prefix.with_name(prefix.name + ".json")


def previous(prefix: str | os.PathLike, wanted: dict, here: dict) -> dict | None:
    """The sweep already in PREFIX.json when it was measured with the settings `wanted` on a host like `here` (its
    points are then kept, not measured again); None when there is no such file. A file that holds something else
    is a ValueError saying so: it is not overwritten (nothing measured before is lost)."""
    path = json_path(prefix)
    if not path.exists():
        return None
    where = f"--out={prefix}: {path}"
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where} is not a sweep's JSON ({_one_line(err)}); give another --out, or move the file "
                         f"away.") from None
    if not isinstance(old, dict) or not isinstance(old.get("rows"), list) or "settings" not in old:
        raise ValueError(f"{where} is not a resumable sweep's JSON (no settings or rows); give another --out, or "
                         f"move the file away.")
    differ = [f"{key} {old['settings'].get(key)!r} here {value!r}" for key, value in wanted.items()
              if old["settings"].get(key) != value]
    differ += [f"host {key} {old.get('host', {}).get(key)!r} here {here[key]!r}" for key in _SAME_HOST
               if old.get("host", {}).get(key) != here[key]]
    if differ:
        raise ValueError(f"{where} holds a sweep with other settings ({'; '.join(differ)}); give another --out to "
                         f"keep both, or delete {path.name} to measure this one there.")
    return old


def _key(row: dict, axis: str) -> tuple:
    return row["model"], row["variant"], row["mode"], row[axis]


def fits_of(rows: Sequence[dict], axis: str, models: Sequence[str], modes: Sequence[str], variants: dict,
            torch_here: dict) -> list[dict]:
    """Per family and mode, the log-log exponents of the points measured (an error ends a curve: not a point)."""
    fits = []
    for model in models:
        for mode in modes:
            curve = [r for r in rows if r["model"] == model and r["mode"] == mode and "error" not in r]
            if not any(r["model"] == model and r["mode"] == mode for r in rows):
                continue
            xs = [r[axis] for r in curve]
            fit = {"model": model, "variant": variants[model], "mode": mode, "points": len(curve),
                   "time_exponent": exponent(xs, [r["seconds_per_step"] for r in curve]),
                   "memory_exponent": exponent(xs, [r["temp_bytes"] for r in curve])}
            if torch_here[model, mode]:
                fit["torch_time_exponent"] = exponent(xs, [r.get("torch_seconds_per_step") for r in curve])
            fits.append(fit)
    return fits


def run(axis: str, values: Sequence[int], models: Sequence[str], modes: Sequence[str], *, frames: int, size: int,
        batch: int, steps: int, warmup: int, dtype: str = "float32", num_classes: int = 400,
        variant: str | None = None, compare: str | None = None, remat: str = "none", scan_layers: bool = False,
        log=print, bench, done: dict | None = None, save=None) -> dict:
    """Times every family in `models` in every mode of `modes` at each of `values` of `axis` (the other two held at
    `frames`, `size`, `batch`), every point with `remat` and `scan_layers` (config.model's: long clips fine-tune in
    bounded memory with remat="full", scan_layers=True); returns {"axis", "values", "held", "settings", "rows",
    "fits", "host", "complete"}. `bench` is the module whose `bench_config` and `time_vidjax` time a point:
    `vidjax.bench.step`, the command, which passes itself (it imports this module, so this one does not import it).

    `done`: an earlier result of the same settings (`previous`): its points are kept as they are, not measured
    again. `save(result)` is called after each point with the result so far ("complete": False until the last),
    which the command writes to PREFIX.json: an interruption loses at most the point being measured."""
    if axis not in AXES:
        raise ValueError(f"--sweep={axis}: sweep one of {', '.join(AXES)}.")
    here = host()
    wanted = settings(axis, values, models, modes, frames=frames, size=size, batch=batch, steps=steps, warmup=warmup,
                      dtype=dtype, num_classes=num_classes, variant=variant, compare=compare, remat=remat,
                      scan_layers=scan_layers)
    measured = {_key(row, axis): row for row in (done or {}).get("rows", [])}
    variants = {model: variant or DEFAULT_VARIANTS.get(model, "S/16") for model in models}
    torch_here = {(model, mode): compare == "torch" and reference.has_reference(model, mode)
                  for model in models for mode in modes}
    rows: list[dict] = []

    def result(complete: bool) -> dict:
        return {"axis": axis, "values": [int(v) for v in values],
                "held": {k: v for k, v in {"frames": frames, "size": size, "batch": batch}.items() if k != axis},
                "settings": wanted, "rows": rows, "fits": fits_of(rows, axis, models, modes, variants, torch_here),
                "host": here, "complete": complete}

    kept = 0
    for model in models:
        model_variant = variants[model]
        for mode in modes:
            for value in values:
                point = {"frames": frames, "size": size, "batch": batch, axis: int(value)}
                before = measured.get((model, model_variant, mode, int(value)))
                if before is not None:  # measured by an earlier run of these settings: kept
                    rows.append(before)
                    kept += 1
                    if "error" in before:
                        break
                    continue
                row = {"model": model, "variant": model_variant, "mode": mode, "dtype": dtype, "remat": remat,
                       "scan_layers": scan_layers, **point}
                try:
                    config = bench.bench_config(model, model_variant, point["frames"], point["size"], point["batch"],
                                                mode, dtype, num_classes, remat=remat, scan_layers=scan_layers,
                                                compare=compare if torch_here[model, mode] else None)
                    timed = bench.time_vidjax(config, mode, steps, warmup)
                except Exception as err:  # noqa: BLE001 (out of memory, a shape the model refuses): the curve ends
                    row["error"] = _one_line(err)
                    rows.append(row)
                    if save is not None:  # kept before it is printed: a point printed is a point kept
                        save(result(False))
                    log(f"{model} {mode} {axis}={value}: {row['error']}; larger points not tried")
                    break
                row.update({key: timed[key] for key in ("seconds_per_step", "clips_per_s", "compile_s", "temp_bytes",
                                                        "argument_bytes", "flops_per_step")})
                if torch_here[model, mode]:
                    try:
                        theirs = reference.time_torch(model, mode, config.model, point["batch"], steps, warmup,
                                                      **reference.placement(timed["backend"], dtype))
                        row["torch_seconds_per_step"] = theirs["seconds_per_step"]
                    except Exception as err:  # noqa: BLE001 (torch out of memory): vidjax's point stands
                        row["torch_error"] = _one_line(err)
                rows.append(row)
                if save is not None:  # kept before it is printed: a signal after the line finds it in the file
                    save(result(False))
                temp = f"{row['temp_bytes'] / 2**20:.0f} MiB" if row["temp_bytes"] is not None else "n/a"
                theirs = row.get("torch_seconds_per_step")
                log(f"{model} {mode} {axis}={value}: {row['seconds_per_step']:.4f} s/step, {temp} temporaries"
                    + (f", torch {theirs:.4f} s/step" if theirs is not None else ""))
    if kept:
        log(f"{kept} point{'s' * (kept != 1)} kept from the earlier run of these settings (not measured again)")
    return result(True)


def write_json(result: dict, prefix: str | os.PathLike) -> str:
    """PREFIX.json, replaced atomically (never a half-written file): what `run`'s `save` writes after each point."""
    path = json_path(prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_output(path) as f:
        f.write(json.dumps(result, indent=1) + "\n")
    return str(path)


def _label(fit: dict, key: str) -> str:
    value = fit.get(key)
    return f"{fit['model']} {fit['mode']} (k={value:.2f})" if value is not None else f"{fit['model']} {fit['mode']}"


def figure(result: dict):
    """The figure `plot` saves: step time and temporaries against the swept value, log-log, one line per family and
    mode (torch dashed); each legend under its axes, where it covers no point whatever the curves do."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    axis = result["axis"]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    for fit in result["fits"]:
        curve = [r for r in result["rows"] if r["model"] == fit["model"] and r["mode"] == fit["mode"]
                 and "error" not in r]
        if not curve:
            continue
        xs = [r[axis] for r in curve]
        line, = ax_time.plot(xs, [r["seconds_per_step"] for r in curve], marker="o",
                             label=_label(fit, "time_exponent"))
        torch_points = [(r[axis], r["torch_seconds_per_step"]) for r in curve if "torch_seconds_per_step" in r]
        if torch_points:
            ax_time.plot(*zip(*torch_points, strict=True), marker="x", linestyle="--", color=line.get_color(),
                         label=f"torch {_label(fit, 'torch_time_exponent')}")
        memory = [(r[axis], r["temp_bytes"] / 2**20) for r in curve if r["temp_bytes"]]
        if memory:
            ax_mem.plot(*zip(*memory, strict=True), marker="o", color=line.get_color(),
                        label=_label(fit, "memory_exponent"))
    held = ", ".join(f"{k} {v}" for k, v in result["held"].items())
    host = result["host"]
    where = host["backend"] if host["device"] == host["backend"] else f"{host['backend']} ({host['device']})"
    for ax, what in ((ax_time, "step time (s)"), (ax_mem, "step temporaries (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            # Under the axes (below the x label), in two columns: inside, a legend hid the points it names.
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle(f"vidjax scaling in {axis} ({held}; {where}); k = fitted log-log exponent")
    fig.tight_layout()
    return fig


def plot(result: dict, path) -> None:
    """`figure(result)` saved as a PNG to `path` (a file name or a binary file)."""
    from matplotlib import pyplot as plt

    fig = figure(result)
    fig.savefig(path, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)


def write(result: dict, prefix: str | os.PathLike, log=print) -> list[str]:
    """PREFIX.json and, with matplotlib installed, PREFIX.png; returns the paths written."""
    written = [write_json(result, prefix)]
    try:
        import matplotlib  # noqa: F401  (an optional extra: only the picture needs it)
    except ImportError:
        log(f"wrote {written[0]}; the plot needs matplotlib: pip install matplotlib")
        return written
    png_path = json_path(prefix).with_suffix(".png")
    with fileio.atomic_output(png_path, "wb") as f:
        plot(result, f)
    written.append(str(png_path))
    return written


def markdown(result: dict) -> str:
    """The exponents as a markdown table (one row per family and mode)."""
    torch = any("torch_time_exponent" in f for f in result["fits"])
    lines = [f"| family | mode | points | time exponent | temporaries exponent |{' torch time exponent |' * torch}",
             "|" + " --- |" * (5 + torch)]

    def fmt(value):
        return "-" if value is None else f"{value:.2f}"

    for f in result["fits"]:
        lines.append(f"| {f['model']} {f['variant']} | {f['mode']} | {f['points']} | {fmt(f['time_exponent'])} | "
                     f"{fmt(f['memory_exponent'])} |" + (f" {fmt(f.get('torch_time_exponent'))} |" if torch else ""))
    return "\n".join(lines)
