r"""A checkpoint's inference function as one ONNX model, for serving stacks outside Python and JAX (ONNX Runtime,
TensorRT, transformers.js): `python -m vidjax.export --checkpoint=DIR --out=model.onnx`.

The function is traced by jax2onnx (`pip install 'vidjax[onnx]'`) with the checkpoint's weights as initializers, and
the file is checked by `onnx.checker`. What it computes (--output; `auto` picks the first that applies):
  logits          a checkpoint with a head (classification, multi-label, regression): raw logits (b, K), as the
                  StableHLO export and `vidjax.pretrained.load(DIR)(model.preprocess(video))` give them
  reconstruction  a VideoMAE / VideoMAE V2 pre-training checkpoint: the decoder's normalised-pixel prediction of the
                  masked tubelets (b, masked, tubelet pixels), given the input "mask" bool (b, tokens), True =
                  masked, with exactly the metadata's "num_masked" True in every row (the count of the checkpoint's
                  own masks, its `patches.MaskSpec`: int(mask_ratio * h' * w') positions at each of the t' times;
                  the command's `Wrote` line states it). A row with another count comes out all NaN (ONNX cannot
                  raise); `scripts/onnx_predict.py`'s `reconstruct` (no jax) refuses it with one line first
  embeddings      any video model (a backbone, SVT, V-JEPA 2, VideoPrism, a pre-training checkpoint's encoder, a
                  captioner's video encoder): one vector per clip (b, D), pooled as `python -m vidjax.extract
                  --pool` pools (`pretrained.pooling`; --pool, default "video" where the model has its own video
                  embedding, VideoPrism's, else "mean"), or every token with --pool=tokens (b, tokens, D)
A captioner's GPT-2 decoder is not exported (its beam search over a tokenizer's vocabulary is a loop ONNX serves
badly): --output=embeddings exports its video encoder, `--to_hf` the whole captioner.

Input "video": uint8 (b, T, S, S, 3), RGB channels-last, at the checkpoint's clip size, the normalisation
((x/255 - mean)/std) inside; --float_input takes float32 video already normalised instead. The batch b is dynamic
(the dimension "b"). Decoding, frame sampling and the crop are the server's: the metadata's clip spec says how
(`scripts/onnx_predict.py` does it with PyAV and onnxruntime alone, as `python -m vidjax.predict` does).

The file's metadata (ONNX `metadata_props`, every value a string): "vidjax" (JSON: format, vidjax_version,
model_name, task, function (the --output), pool, scores, class_names, target_names, clip (num_frames, image_size,
short_side, sampling_rate, sampling_rate_recorded, mean, std), input (name, shape, dtype, normalised), output (name,
shape), num_masked, checkpoint, mask (a reconstruction's second input: name, shape, dtype; else null)), and the same
"class_names" (JSON list) and "scores" beside it for readers that want one key. "scores" says what a reader
applies to exported logits (softmax, sigmoid or identity; None for the other outputs): the task's
`Presentation.score_function`, which the caller passes (`export_onnx(scores=)`, from
`vidjax.predictions.score_function`), as `convert.hf.to_hf` is passed the task's problem type.

Weights over --external_data_mb (default 1024 MiB in all; 2 GiB is protobuf's limit for one file) go to FILE.data
beside FILE (ONNX external data, one file); ONNX Runtime loads it from there, so keep the two together. Both are
written atomically: the data file first, the model last, nothing left behind on failure.

Where the inference form differs from the training one (`PORTABLE`, whatever the checkpoint or this backend picks):
every attention is exported as the plain softmax(QK^T)V (the blockwise and Pallas kernels are training and accelerator
forms of it), and VideoMamba's selective scan as the recurrence (config.model.scan="recurrent": a `lax.scan` over
blocks of steps, ONNX Loop ops, one iteration a token and direction), the only form with an ONNX mapping; the same
values to float32 rounding. ONNX Runtime runs that loop at 0.2-0.4x jax's speed on CPU (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import vidjax
from vidjax import fileio, losses, platform, pretrained
from vidjax.convert import common
from vidjax.pretrained import onnx_model, pooling, reconstruction

FORMAT = "vidjax.onnx/1"
OUTPUTS = ("auto", "logits", "reconstruction", "embeddings")
OPSET = 21  # ONNX Runtime 1.19 and later run it; TensorRT 10 parses it
DEFAULT_EXTERNAL_DATA_MB = 1024


class OnnxExportError(ValueError):
    """A checkpoint or an --output that does not export to ONNX; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class Function:
    """What is exported: `fn(*inputs)` over `inputs` (name -> ShapeDtypeStruct, "b" the dynamic batch), giving
    `output` (its name) shaped `output_shape` (with "b")."""

    fn: Callable
    inputs: dict[str, jax.ShapeDtypeStruct]
    output: str
    output_shape: list
    pool: str | None = None
    num_masked: int | None = None


def _import_jax2onnx():
    """jax2onnx's `to_onnx`, quiet: it imports example plugins on first use, and some need packages vidjax does not
    install (their import errors are logged, not raised)."""
    try:
        import jax2onnx  # noqa: F401  (the optional extra)
    except ImportError as e:
        raise OnnxExportError("writing ONNX needs jax2onnx, onnx and onnxruntime: pip install 'vidjax[onnx]'.") from e
    from jax2onnx import to_onnx
    return to_onnx


@contextlib.contextmanager
def _quiet_plugins():
    """jax2onnx logs the example plugins it cannot import (they need dm-pix, equinox's newer releases...) at ERROR;
    none of vidjax's functions use them."""
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _is_captioner(model) -> bool:
    return isinstance(model, pretrained.PretrainedCaptioner)


def resolve_output(model, output: str, checkpoint: str | None = None) -> str:
    """`output` made concrete for `model` (auto -> the first of logits, reconstruction, embeddings that applies), or
    an OnnxExportError saying what the checkpoint exports instead."""
    where = f"--checkpoint={checkpoint}" if checkpoint else f"this {model.model_name} model"
    if output not in OUTPUTS:
        raise OnnxExportError(f"--output={output}: choose one of {', '.join(OUTPUTS)}.")
    head = model.config.get("head")
    if _is_captioner(model) and output in ("auto", "logits", "reconstruction"):
        raise OnnxExportError(
            f"{where} is a video captioner: its GPT-2 decoder (beam search over its tokenizer's vocabulary) is not "
            f"exported to ONNX. --output=embeddings exports its video encoder (the visual features the decoder "
            f"reads); `python -m vidjax.export --to_hf={checkpoint} --out=DST` exports the whole captioner to "
            f"transformers.")
    if isinstance(model, pretrained.PretrainedText):
        raise OnnxExportError(f"{where} is a text model; only video models export to ONNX.")
    if output == "auto":
        return "logits" if model.has_head else "reconstruction" if head == "pretrain" else "embeddings"
    if output == "logits" and not model.has_head:
        raise OnnxExportError(f"--output=logits: {where} ({model.model_name}, head {head!r}) has no classification "
                              f"or regression head; export --output=embeddings"
                              f"{' or --output=reconstruction' if head == 'pretrain' else ''}.")
    if output == "reconstruction" and head != "pretrain":
        raise OnnxExportError(f"--output=reconstruction: {where} is not a VideoMAE pre-training checkpoint (head "
                              f"{head!r}), so it reconstructs no pixels; export --output="
                              f"{'logits' if model.has_head else 'embeddings'}.")
    return output


# The platform choices (vidjax/platform.py) an export takes whatever the checkpoint or this backend would pick: every
# attention as XLA's softmax(QK^T)V (the blockwise and Pallas kernels are training and accelerator forms of it), and
# VideoMamba's scan as the recurrence, the one form jax2onnx converts (the chunked form's associative scan pads with
# interior padding, the sequential form scans in reverse; neither has an ONNX mapping).
PORTABLE = {"attention_impl": "xla", "scan": "recurrent"}


def portable_module(model):
    """`model`'s module built with `PORTABLE`'s choices; the other platform choices resolved for this backend, as
    `pretrained.load` builds them."""
    config = platform.resolve(model.config, fixed=PORTABLE)
    graphdef, _ = nnx.split(common.abstract_model(model.model_name, config))
    return nnx.merge(graphdef, model.params)


def function_of(model, output: str, *, pool: str | None, float_input: bool) -> Function:
    """The function exported for `output` (already resolved), taking uint8 video with the normalisation inside, or
    normalised float32 video with `float_input`."""
    mean, std = (tuple(map(float, model.preprocessing[k])) for k in ("mean", "std"))
    p = model.preprocessing
    t = int(p["num_frames"] if "num_frames" in p else model.config.num_frames)
    s = int(p["image_size"] if "image_size" in p else model.config.image_size)
    b = "b"
    video = jax.ShapeDtypeStruct((b, t, s, s, 3), jnp.float32 if float_input else jnp.uint8)
    module = portable_module(model)

    def prepare(v):
        return v.astype(jnp.float32) if float_input else losses.normalize_video(v, mean, std)

    if output == "logits":
        k = int(model.config.num_classes)
        return Function(lambda v: module(prepare(v))["logits"].astype(jnp.float32), {"video": video}, "logits",
                        [b, k])
    if output == "reconstruction":
        # Masked tokens per clip: the count of the checkpoint's own masks, by which its pre-training drew them.
        tokens, masked = int(model.num_tokens), reconstruction.mask_spec(model).num_masked

        def reconstruct(v, mask):
            pred = module(prepare(v), mask, num_masked=masked)["pred"].astype(jnp.float32)
            # A row whose mask has another count is all NaN, never a finite answer to another question (the decoder
            # gathers `masked` positions whatever the mask holds); ONNX has no assertion to raise with.
            whole = jnp.sum(mask.astype(jnp.int32), axis=-1) == masked
            return jnp.where(whole[:, None, None], pred, jnp.float32(jnp.nan))

        shape = jax.eval_shape(lambda: reconstruct(jnp.zeros((1, t, s, s, 3), video.dtype),
                                                   jnp.arange(tokens)[None] < masked)).shape
        return Function(reconstruct, {"video": video, "mask": jax.ShapeDtypeStruct((b, tokens), jnp.bool_)},
                        "reconstruction", [b, *shape[1:]], num_masked=masked)
    if pool is None:
        pool = "video" if pretrained.gives_video_embeds(model) else "mean"
    try:
        pooled = pooling.pool_fn(model, pool)
    except ValueError as e:
        raise OnnxExportError(str(e)) from e
    shape = jax.eval_shape(lambda: pooled(module, jnp.zeros((1, t, s, s, 3), jnp.float32))).shape
    return Function(lambda v: pooled(module, prepare(v)), {"video": video}, "embeddings", [b, *shape[1:]], pool=pool)


def metadata_of(model, output: str, function: Function, *, float_input: bool, checkpoint: str | None,
                scores: str | None = None) -> dict:
    """The "vidjax" metadata entry (see the module docstring); `scores` is recorded for a logits export only."""
    p = model.preprocessing
    t, s = (int(d) for d in function.inputs["video"].shape[1:3])
    scores = scores if output == "logits" else None
    return {
        "format": FORMAT, "vidjax_version": vidjax.__version__, "model_name": model.model_name,
        "task": getattr(model, "task", None), "function": output, "pool": function.pool, "scores": scores,
        "class_names": getattr(model, "class_names", None) if output == "logits" else None,
        "target_names": getattr(model, "target_names", None) if output == "logits" else None,
        "clip": {"num_frames": t, "image_size": s, "short_side": int(p.get("short_side", s)),
                 "sampling_rate": int(getattr(model, "sampling_rate", None) or pretrained.DEFAULT_SAMPLING_RATE),
                 "sampling_rate_recorded": getattr(model, "sampling_rate", None) is not None,
                 "mean": [float(x) for x in p["mean"]], "std": [float(x) for x in p["std"]]},
        "input": {"name": "video", "shape": ["b", t, s, s, 3], "dtype": "float32" if float_input else "uint8",
                  "layout": "RGB channels-last", "normalised": bool(float_input)},
        "output": {"name": function.output, "shape": function.output_shape, "dtype": "float32"},
        "num_masked": function.num_masked, "checkpoint": checkpoint,
        "mask": ({"name": "mask", "shape": ["b", int(function.inputs["mask"].shape[-1])], "dtype": "bool"}
                 if "mask" in function.inputs else None),
    }


def export_onnx(model, *, output: str = "auto", pool: str | None = None, float_input: bool = False,
                checkpoint: str | None = None, scores: str | None = None):
    """(onnx_ir.Model, metadata) of `model`'s function for `output`; see the module docstring. `scores` says what a
    reader applies to exported logits ("softmax", "sigmoid" or "identity": the task's `Presentation.score_function`,
    `vidjax.predictions.score_function(model.task)`), which a logits export needs."""
    where = f"--checkpoint={checkpoint}" if checkpoint else f"this {model.model_name} model"
    asked = output
    output = resolve_output(model, output, checkpoint)
    if output == "logits" and scores is None:
        raise ValueError(f"{where} exports logits: pass scores= (what a reader applies to them, the task's "
                         f"`Presentation.score_function`: vidjax.predictions.score_function(model.task)).")
    if pool and output != "embeddings":
        raise OnnxExportError(f"--pool={pool} pools embeddings; {where} exports {output} (--output={asked}). Add "
                              f"--output=embeddings, or drop --pool.")
    function = function_of(model, output, pool=pool, float_input=float_input)
    metadata = metadata_of(model, output, function, float_input=float_input, checkpoint=checkpoint, scores=scores)
    to_onnx = _import_jax2onnx()
    specs = [function.inputs[name] for name in function.inputs]
    try:
        with _quiet_plugins():
            ir_model = to_onnx(function.fn, specs, model_name=f"vidjax_{model.model_name}_{output}", opset=OPSET,
                               return_mode="ir", input_names=list(function.inputs), output_names=[function.output])
    except Exception as e:  # noqa: BLE001  (a missing op mapping comes as many types; all mean the same here)
        raise OnnxExportError(f"{where}: the {model.model_name} {output} function does not convert to ONNX: "
                              f"{type(e).__name__}: {e}") from e
    _drop_unread_initializers(ir_model)
    props = {"vidjax": json.dumps(metadata), "class_names": json.dumps(metadata["class_names"]),
             "scores": str(metadata["scores"])}
    ir_model.metadata_props.update(props)
    ir_model.producer_name, ir_model.producer_version = "vidjax", vidjax.__version__
    return ir_model, metadata


def _drop_unread_initializers(ir_model) -> None:
    """Removes the initializers no node of the model reads: ONNX Runtime warns of each as it loads the file
    ("Removing initializer ... It is not used by any node"). The trace leaves some read only by nodes it dropped from
    the graph (a float32 constant's cast to float32), which onnx_ir's RemoveUnusedNodesPass still counts as reads."""
    import onnx_ir.passes.common  # with jax2onnx (the extra)

    onnx_ir.passes.common.RemoveUnusedNodesPass()(ir_model)
    graphs = [ir_model.graph]
    for graph in graphs:  # the main graph, then the bodies of its loops (VideoMamba's scan), theirs, ...
        kept = frozenset(graph.inputs) | frozenset(graph.outputs)
        for name, value in list(graph.initializers.items()):
            if value not in kept and all(use.node.graph is None for use in value.uses()):
                del graph.initializers[name]
        for node in graph:
            for attribute in node.attributes.values():
                if attribute.type == onnx_ir.AttributeType.GRAPH:
                    graphs.append(attribute.value)
                elif attribute.type == onnx_ir.AttributeType.GRAPHS:
                    graphs.extend(attribute.value)


def weight_bytes(ir_model) -> int:
    """Bytes of the model's initializers (its weights)."""
    return sum(int(v.const_value.nbytes) for v in ir_model.graph.initializers.values() if v.const_value is not None)


def write(path: str, ir_model, *, external_data_mb: float = DEFAULT_EXTERNAL_DATA_MB) -> list[str]:
    """Writes `ir_model` to `path` (with its weights in `path`.data when they exceed `external_data_mb` MiB),
    checked by `onnx.checker`; atomic: both files appear together or not at all. Returns the paths written."""
    import onnx_ir as ir  # the optional extra, installed with jax2onnx

    path = fileio.user_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    external = weight_bytes(ir_model) > external_data_mb * 2**20
    data_name = f"{name}.data"
    written = [path, os.path.join(folder, data_name)] if external else [path]
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=folder)
    try:
        staged = os.path.join(staging, name)
        with _quiet_plugins():  # onnx_ir warns of every shape value it has no type for (they need none)
            ir.save(ir_model, staged, external_data=data_name if external else None)
        _check(staged)
        if external:  # the data first: a model file is never seen without the weights it names
            os.replace(os.path.join(staging, data_name), written[1])
        elif os.path.exists(os.path.join(folder, data_name)):
            os.remove(os.path.join(folder, data_name))  # a stale data file of an earlier export of this name
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _check(path: str) -> None:
    """`onnx.checker` on the written file (by path, so a model with external data over 2 GiB is checked too)."""
    import onnx  # the optional extra

    onnx.checker.check_model(path, full_check=False)


def describe(written: list[str], metadata: dict) -> str:
    """The command's success line."""
    size = sum(os.path.getsize(p) for p in written) / 2**20
    i, o = metadata["input"], metadata["output"]
    extra = (f' and "mask" bool (b, tokens) with exactly num_masked={metadata["num_masked"]} True a row (another '
             f'count gives NaN)' if metadata["function"] == "reconstruction" else "")
    return (f"Wrote {' and '.join(written)}: {metadata['model_name']} {metadata['function']}, {i['dtype']} video "
            f"(b, {', '.join(map(str, i['shape'][1:]))}){extra} -> float32 {o['name']} "
            f"({', '.join(map(str, o['shape']))}); {size:.1f} MiB; opset {OPSET}. Run it with "
            f"onnxruntime.InferenceSession({written[0]!r}).")


def run_session(path: str, inputs: dict[str, Any]) -> np.ndarray:
    """The model's one output for `inputs` in ONNX Runtime on CPU."""
    return onnx_model.open_session(path, cpu=True).run(None, inputs)[0]

