"""Where a step's time goes, by op category, for vidjax (XLA's per-op trace) and PyTorch (torch.profiler).

`python -m vidjax.bench ... --profile` runs the timed step a few more times under each framework's profiler and
prints one table: the step's op time split into the same categories on both sides, so the rows can be compared.

  GEMM forward / GEMM dX / GEMM dW   the linear and patch-embedding products, by role: the forward product, the
                                     backward product giving the input's gradient, the one giving the weight's
  attention                          the batched products of attention (scores, weighted values), forward and back
  softmax                            attention's non-GEMM work (scale, mask, softmax and its backward)
  norms                              LayerNorm forward and backward
  elementwise                        everything else of the model: GELU, residual adds, biases, reshapes fused
                                     into them
  loss                               the loss and its gradient
  optimizer update                   AdamW, gradient clipping, the finiteness check and the skip
  copies / transposes                ops that only move data (copy, transpose, layout changes)
  other                              what none of the above claims

vidjax: the compiled HLO module's instructions (a fusion is classified by what it fuses) are matched to the trace
events XLA's CPU runtime records per executed instruction; an op's role comes from its metadata (JAX's name stack:
`jvp(...)` is the forward pass, `transpose(jvp(...))` the backward) and its source frames (the model function
that emitted it: LayerNorm, Attention, the optimizer's files). A backward product is dW when its output holds as
many elements as one of the parameters, dX otherwise. torch: each profiled op's self time goes to the category of
the op or its nearest classified caller; ops under autograd's `evaluate_function` are backward, under
`Optimizer.step` the update; a backward `mm` is dW by the same element-count rule.

The sums are of op time (on CPU both run one op at a time on the calling thread, each op using the intra-op
threads), so they come close to the step time; the table shows the step time beside them.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import re
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

CATEGORIES: tuple[str, ...] = ("GEMM forward", "GEMM dX", "GEMM dW", "attention", "softmax", "norms",
                               "elementwise", "loss", "optimizer update", "copies / transposes", "other")

# Opcodes that only move data; a fusion of nothing else is a copy.
_DATA_MOVEMENT = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate", "pad",
                  "dynamic-slice", "dynamic-update-slice", "parameter", "constant", "tuple", "get-tuple-element",
                  "bitcast-convert", "iota", "reverse", "gather", "scatter"}
# Instructions that run others (their trace event spans their children's): not counted themselves.
_CONTAINERS = {"conditional", "while", "call", "async-start", "async-done"}
_OPTIMIZER_FILES = ("/optax/", "/vidjax/train/optim.py")
_OPTIMIZER_FUNCTIONS = ("train_step", "apply_updates", "clip", "update")


@dataclasses.dataclass
class _Instr:
    name: str
    opcode: str
    shape: str
    op_name: str
    frames: tuple[tuple[str, str], ...]  # (file, function), innermost first
    calls: str | None
    batched_dot: bool  # a dot with batch dimensions (attention's products), not a plain GEMM


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")


def _table(text: str, title: str) -> dict[int, str]:
    """One of the HLO text's id tables (FileNames, FunctionNames, FileLocations, StackFrames): id -> line."""
    rows, inside = {}, False
    for line in text.splitlines():
        if line.strip() == title:
            inside = True
            continue
        if inside:
            match = re.match(r"^(\d+)\s+(.*)$", line)
            if not match:
                break
            rows[int(match.group(1))] = match.group(2)
    return rows


def _stack_frames(text: str) -> dict[int, tuple[tuple[str, str], ...]]:
    """stack_frame_id -> its (file, function) frames, innermost first, from the module's source tables."""
    files = {k: v.strip('"') for k, v in _table(text, "FileNames").items()}
    functions = {k: v.strip('"') for k, v in _table(text, "FunctionNames").items()}
    locations = {}
    for k, v in _table(text, "FileLocations").items():
        f, fn = re.search(r"file_name_id=(\d+)", v), re.search(r"function_name_id=(\d+)", v)
        locations[k] = (files.get(int(f.group(1)), "") if f else "", functions.get(int(fn.group(1)), "") if fn else "")
    parents, own = {}, {}
    for k, v in _table(text, "StackFrames").items():
        loc, parent = re.search(r"file_location_id=(\d+)", v), re.search(r"parent_frame_id=(\d+)", v)
        own[k] = locations.get(int(loc.group(1)), ("", "")) if loc else ("", "")
        parents[k] = int(parent.group(1)) - 1 if parent else 0  # printed one above the parent's id; 0: none
    chains = {}
    for k in own:
        chain, frame, seen = [], k, set()
        while frame > 0 and frame not in seen:
            seen.add(frame)
            chain.append(own[frame])
            frame = parents.get(frame, 0)
        chains[k] = tuple(chain)
    return chains


def parse_hlo(text: str) -> tuple[str, dict[str, _Instr], dict[str, list[_Instr]]]:
    """The module's name, its instructions by name, and each computation's instructions (fusions' bodies)."""
    frames = _stack_frames(text)
    module = re.match(r"HloModule\s+([\w.\-]+)", text)
    instrs: dict[str, _Instr] = {}
    computations: dict[str, list[_Instr]] = collections.defaultdict(list)
    current = None
    for line in text.splitlines():
        comp = _COMPUTATION.match(line)  # a computation's header: unindented, unlike its instructions
        if comp:
            current = comp.group(1)
            continue
        match = _INSTR.match(line)
        if not match or current is None:
            continue
        name, shape, opcode, rest = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        instr = _Instr(name, opcode, shape, op_name.group(1) if op_name else "",
                       frames.get(int(frame.group(1)), ()) if frame else (), calls.group(1) if calls else None,
                       opcode == "dot" and "lhs_batch_dims=" in rest)
        instrs[name] = instr
        computations[current].append(instr)
    return (module.group(1) if module else ""), instrs, computations


def _numel(shape: str) -> int:
    dims = re.match(r"^\(?[a-z]+\d*\[([\d,]*)\]", shape.strip())
    if not dims:
        return -1
    n = 1
    for d in filter(None, dims.group(1).split(",")):
        n *= int(d)
    return n


def _direction(op_name: str) -> str:
    if "transpose(jvp" in op_name:
        return "backward"
    return "forward" if "jvp(" in op_name else "update"


def _in(frames: Iterable[tuple[str, str]], *words: str) -> bool:
    return any(any(w in fn for w in words) for _, fn in frames)


def classify_hlo(instr: _Instr, computations: dict[str, list[_Instr]], param_numels: set[int]) -> str | None:
    """The category of one executed instruction (None for a container, whose children are counted instead)."""
    if instr.opcode in _CONTAINERS:
        return None
    body = [i for i in computations.get(instr.calls, []) if i.opcode != "parameter"] if instr.calls else [instr]
    body = body or [instr]
    dots = [i for i in body if i.opcode in ("dot", "convolution")]
    if dots:
        if any(d.batched_dot for d in dots):
            return "attention"
        role = _direction(dots[0].op_name)
        if role == "backward":
            return "GEMM dW" if _numel(instr.shape) in param_numels else "GEMM dX"
        return "GEMM forward" if role == "forward" else "optimizer update"
    frames = [f for i in body for f in i.frames]
    names = [i.op_name for i in body]
    if all(_direction(n) == "update" for n in names if n) and (
            not frames or any(any(p in file for p in _OPTIMIZER_FILES) for file, _ in frames)
            or _in(frames, *_OPTIMIZER_FUNCTIONS)):
        if all(i.opcode in _DATA_MOVEMENT for i in body):
            return "copies / transposes"
        return "optimizer update"
    if all(i.opcode in _DATA_MOVEMENT for i in body):
        return "copies / transposes"
    innermost = [i.frames[0] for i in body if i.frames]
    if any("Norm" in fn or "layer_norm" in fn for _, fn in innermost):  # flax's LayerNorm, vidjax's layer_norm
        return "norms"
    if any("ttention" in fn for _, fn in innermost):
        return "softmax"
    if any(("loss" in fn.lower() or "cross_entropy" in fn or "/losses" in file) and "Model" not in fn
           for file, fn in innermost) or any("log_softmax" in n for n in names):
        return "loss"
    return "elementwise" if frames else "other"


def profile_jax(step: Callable[[], Any], hlo_text: str, param_numels: set[int], steps: int = 3) -> dict[str, Any]:
    """Runs `step` (a compiled step whose HLO is `hlo_text`) `steps` times under jax.profiler and returns the
    per-step op time by category (seconds), the op count and the total."""
    import jax
    from jax.profiler import ProfileData

    module, instrs, computations = parse_hlo(hlo_text)
    jax.block_until_ready(step())  # nothing from compilation or the first run in the trace
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(steps):
                jax.block_until_ready(step())
        paths = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
        if not paths:
            raise RuntimeError(f"jax.profiler wrote no trace under {directory}.")
        data = ProfileData.from_file(paths[0])
    seconds: dict[str, float] = collections.defaultdict(float)
    unmatched = 0.0
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if stats.get("hlo_module") != module or "hlo_op" not in stats:
                    continue
                instr = instrs.get(stats["hlo_op"])
                if instr is None:
                    unmatched += event.duration_ns
                    continue
                category = classify_hlo(instr, computations, param_numels)
                if category is not None:
                    seconds[category] += event.duration_ns * 1e-9 / steps
    if unmatched:
        seconds["other"] += unmatched * 1e-9 / steps
    return _summary(seconds)


_TORCH_RULES: tuple[tuple[str, str], ...] = (  # first match wins: products before the elementwise words
    ("conv", "GEMM"), ("addmm", "GEMM"), ("aten::mm", "GEMM"), ("matmul", "GEMM"), ("linear", "GEMM"),
    ("scaled_dot_product", "attention"), ("attention", "attention"), ("bmm", "attention"), ("baddbmm", "attention"),
    ("softmax", "softmax"), ("layer_norm", "norms"), ("cross_entropy", "loss"), ("nll_loss", "loss"),
    ("copy_", "copies / transposes"), ("clone", "copies / transposes"), ("contiguous", "copies / transposes"),
    ("_to_copy", "copies / transposes"), ("gelu", "elementwise"), ("add", "elementwise"), ("mul", "elementwise"),
    ("div", "elementwise"), ("sub", "elementwise"), ("mean", "elementwise"), ("sum", "elementwise"),
)


def _torch_category(names: list[str], shapes: list[list[list[int]]], param_numels: set[int]) -> str:
    """The category of a torch op with this chain of names (own first, then its callers) and input shapes."""
    backward = any(n.startswith("autograd::engine::evaluate_function") for n in names)
    if any("Optimizer.step" in n or "Optimizer.zero_grad" in n for n in names):
        return "optimizer update"
    for name, own_shapes in zip(names, shapes, strict=True):
        for word, category in _TORCH_RULES:
            if word not in name:
                continue
            if category == "GEMM":
                if not backward:
                    return "GEMM forward"
                if "mm" in name and len(own_shapes) >= 2 and len(own_shapes[0]) == 2 and len(own_shapes[1]) == 2:
                    out = own_shapes[0][0] * own_shapes[1][1]
                    return "GEMM dW" if out in param_numels else "GEMM dX"
                return "GEMM dX"  # convolution_backward and the like: input gradient first
            if category == "softmax" and "log_softmax" in name:
                return "loss"
            return category
    return "elementwise" if any(n.startswith("aten::") for n in names) else "other"


def profile_torch(step: Callable[[], Any], param_numels: set[int], steps: int = 3) -> dict[str, Any]:
    """Runs `step` `steps` times under torch.profiler; per-step self time of every op by category (seconds)."""
    import torch

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    seconds: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        self_us = event.self_cpu_time_total
        if self_us <= 0:
            continue
        names, shapes, node = [], [], event
        while node is not None:
            names.append(node.name)
            shapes.append(list(node.input_shapes or []))
            node = node.cpu_parent
        seconds[_torch_category(names, shapes, param_numels)] += self_us * 1e-6 / steps
    return _summary(seconds)


def _summary(seconds: dict[str, float]) -> dict[str, Any]:
    return {"seconds": {c: seconds.get(c, 0.0) for c in CATEGORIES}, "total_s": sum(seconds.values())}


def markdown(vidjax: dict[str, Any], torch: dict[str, Any] | None, vidjax_step_s: float,
             torch_step_s: float | None) -> str:
    """The side-by-side table: per category, ms per step and share of the op time, and vidjax / torch."""
    head = "| category | vidjax ms | vidjax % |" + (" torch ms | torch % | vidjax / torch |" if torch else "")
    lines = [head, "|" + " --- |" * (6 if torch else 3)]
    rows = [*CATEGORIES, "total op time", "step time (timed)"]
    for row in rows:
        if row == "total op time":
            v, t = vidjax["total_s"], torch["total_s"] if torch else None
        elif row == "step time (timed)":
            v, t = vidjax_step_s, torch_step_s
        else:
            v, t = vidjax["seconds"][row], torch["seconds"][row] if torch else None
        cells = [row, f"{v * 1e3:.1f}", f"{100 * v / vidjax['total_s']:.1f}" if row in CATEGORIES else ""]
        if torch:
            cells += [f"{t * 1e3:.1f}", f"{100 * t / torch['total_s']:.1f}" if row in CATEGORIES else "",
                      f"{v / t:.2f}" if t else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
