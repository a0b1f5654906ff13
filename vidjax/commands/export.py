r"""A checkpoint for serving: its inference function as one StableHLO file (`jax.export`) or one ONNX model, or back
to transformers.

  python -m vidjax.export --checkpoint=/work/finetune --out=model.vjx.npz
  python -m vidjax.export --checkpoint=/ckpt/videomae_b_k400 --out=k400.vjx.npz --platforms=cpu,cuda
  python -m vidjax.export --checkpoint=/work/finetune --out=model.onnx         # ONNX (pip install 'vidjax[onnx]')
  python -m vidjax.export --checkpoint=/work/pretrain --out=enc.onnx --output=embeddings --float_input
  python -m vidjax.export --to_hf /work/finetune --out /work/finetune_hf     # a transformers save_pretrained folder

ONNX (--out ending in .onnx, or --format=onnx): every video family, with a head (logits), a pre-training checkpoint
(reconstruction of the masked tubelets, given a mask) or any encoder (embeddings, pooled as `python -m vidjax.extract`
pools, --pool); uint8 video in with the normalisation inside, or --float_input; batch dynamic; metadata (clip spec,
class names, what the function is) in the file's metadata_props; weights over --external_data_mb in FILE.data beside
it. An existing FILE is refused (exit 2), as is a captioner's decoder (its video encoder is exported with
--output=embeddings). Loading needs onnxruntime alone: `scripts/onnx_predict.py` reads a video with PyAV and prints
top-5. The whole contract: `vidjax.pretrained.onnx_export`.

The rest of this text is the StableHLO file (the default format).

--checkpoint is a training workdir (its latest checkpoint), one of its step folders or a `python -m vidjax.convert`
output, of a model with a head (classification, multi-label or regression). The exported function takes uint8
video (b, T, S, S, 3), RGB channels-last, at the checkpoint's clip size (T = num_frames, S = image_size), b any
batch size (a symbolic dimension), and returns float32 logits (b, num_outputs): exactly what
`vidjax.pretrained.load(DIR)(model.preprocess(video))` returns. The normalisation ((x/255 - mean)/std) is inside
the function; decoding, sampling frames and cropping are not (do them as the metadata's clip spec says). Logits
are raw: a server applies softmax (classification), sigmoid (multilabel) or nothing (regression), as the metadata's
"scores" names. A checkpoint without a head (VideoMAE pre-training, SVT, a backbone, a text model) is refused with
exit status 2: it maps a clip to no outputs; use `python -m vidjax.extract` for its embeddings. A captioner is
refused too: `--to_hf` exports it to transformers' VisionEncoderDecoderModel.
--platforms lists the backends the function is lowered for (default: this machine's); a function lowered for
cpu,cuda runs on either and on nothing else. The command prints them (they are the metadata's "platforms") and
warns when this machine's backend is not among them, as a file for --platforms=tpu written on a CPU machine.

Writes FILE (atomically: nothing is left at FILE when anything fails; missing parent folders are created, as by
every command's --out) as one uncompressed .npz, readable with numpy alone (no pickle):
  function      uint8 (n,): `jax.export.Exported.serialize()` of f(params, video) -> logits
  metadata      a 0-d string: JSON with format, vidjax_version, model_name, task, scores, num_outputs,
                class_names, target_names, clip (num_frames, image_size, short_side, sampling_rate,
                sampling_rate_recorded, mean, std), input {"shape": ["b", T, S, S, 3], "dtype": "uint8"}, output
                {"shape": ["b", K], "dtype": "float32"}, platforms, num_params, checkpoint
  param_00000 ... the weights, in the order the function takes them (a flat list; kept out of the StableHLO, so a
                large model serialises as small a function as a tiny one)
  loader.py     a 0-d string: the source of `load_exported` below, to copy into a server

Loading needs jax and numpy, not vidjax: `load_exported` (this module) imports nothing else, and every exported
file carries its source (`print(np.load(FILE)["loader.py"])`). jax's (de)serialization also needs the flatbuffers
package, which vidjax installs but jax alone does not: `pip install flatbuffers` where you serve.

    fn, meta = load_exported("model.vjx.npz")
    logits = fn(uint8_video)            # (b, T, S, S, 3) -> (b, K); names in meta["class_names"]

Back to transformers: --to_hf SRC (anything `vidjax.pretrained.load` takes: a converted checkpoint, a training
workdir or one of its step folders) writes --out DST, a new folder, as transformers' `save_pretrained` would:
config.json (`architectures`, `model_type`, id2label / label2id from the checkpoint's class names or regression
targets, problem_type for multi-label and regression heads), model.safetensors, preprocessor_config.json (the
checkpoint's resize, crop and mean/std in transformers' keys, and its clip spec in `vidjax_clip`: frames, frame stride,
short side, crop size, when the checkpoint records its stride, as a training run does; without one, a note says
vidjax will assume 4), generation_config.json and the tokenizer for a captioner or GPT-2 that has one. `python -m
vidjax.convert --from_hf` and loading by Hub name read `vidjax_clip` back, so the model reads its clips as it was
trained to. transformers' own loader reads it, with no vidjax installed:

    model = transformers.AutoModelForVideoClassification.from_pretrained(DST)   # the command names the class

  VideoMAE                   pre-training -> VideoMAEForPreTraining, a head -> VideoMAEForVideoClassification,
                             no head -> VideoMAEModel
  TimeSformer                TimesformerForVideoClassification, TimesformerModel
  ViViT model 1 (joint, CLS) VivitForVideoClassification, VivitModel
  captioner                  VisionEncoderDecoderModel (a VideoMAE or TimeSformer encoder, GPT-2 decoder, every
                             encoder token, one chunk)
  GPT-2                      GPT2LMHeadModel
The tensors are written through the same tables `python -m vidjax.convert --from_hf` reads, so a converted checkpoint
gives its original tensors back. What transformers computes slightly differently (a LayerNorm epsilon it fixes,
TimeSformer space_only's per-frame outputs, ViViT's untrained pooler) is printed as a note. A model no transformers
class computes (VideoMamba, SVT, ViViT models 2-4 or without a CLS token, VideoMAE V2's dual-masking pre-training,
a captioner that pools or chunks its visual tokens) is refused with one line and exit status 2.

Exit status 0 written, 2 bad arguments (a missing checkpoint, a checkpoint without a head, a
function that does not lower for a requested platform, a model with no transformers class, an existing --out for
--to_hf and ONNX, an ONNX --output the checkpoint does not have, ONNX flags with the StableHLO format).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from typing import NoReturn

import jax
import jax.numpy as jnp
import numpy as np

import vidjax
from vidjax import cli, fileio, losses, pretrained, tasks
from vidjax.convert import common, hf
from vidjax.convert.common import ConversionError, HfCheckpoint
from vidjax.models import layers
from vidjax.pretrained import onnx_export, pooling
from vidjax.tasks import predictions

FORMAT = "vidjax.export/1"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def load_exported(path):
    """(fn, metadata) of a `python -m vidjax.export` file: fn(uint8 video (b, T, S, S, 3)) -> float32 logits (b, K).

    Needs only jax, numpy and the standard library (copy it into a server that does not install vidjax)."""
    import json

    import jax
    import jax.numpy as jnp
    import numpy as np

    with np.load(path) as f:
        metadata = json.loads(str(f["metadata"]))
        exported = jax.export.deserialize(bytearray(f["function"].tobytes()))
        params = jax.device_put([f[f"param_{i:05d}"] for i in range(metadata["num_params"])])
    call = jax.jit(exported.call)
    return (lambda video: call(params, jnp.asarray(video, jnp.uint8))), metadata


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or a platform it does not lower for; the message says what to do."""


def _headless_message(model, checkpoint: str | None) -> str:
    if isinstance(model, pretrained.PretrainedCaptioner):
        encoder = model.config.get("encoder_name", "video")
        return (f"--checkpoint={checkpoint} is a video captioner (a {encoder} encoder and a GPT-2 decoder): it writes "
                f"captions, not the scores of a head, so it has no function this export writes. Export it to "
                f"transformers' VisionEncoderDecoderModel with `python -m vidjax.export --to_hf={checkpoint} "
                f"--out=DST`, or caption videos with `python -m vidjax.predict --checkpoint={checkpoint} VIDEO`.")
    return (f"--checkpoint={checkpoint} is {tasks.checkpoint_kind(model.task)} checkpoint of {model.model_name} with "
            f"no classification or regression head, so it has no scores to export. Fine-tune a head on it first "
            f"(--config.init_from={checkpoint}) and export that run, or take its embeddings with `python -m "
            f"vidjax.extract --checkpoint={checkpoint} --csv=LIST --out=FEATURES.npz`.")


def export(model: pretrained.Pretrained, *, platforms: tuple[str, ...] | None = None,
           checkpoint: str | None = None) -> tuple[bytes, list[np.ndarray], dict]:
    """(serialized function, its flat weights, metadata) of a checkpoint with a head; see the module docstring."""
    where = f"--checkpoint={checkpoint}"
    if isinstance(model, pretrained.PretrainedCaptioner) or not model.has_head:
        raise ExportError(_headless_message(model, checkpoint))
    spec = model.preprocessing
    t, s = int(model.config.num_frames), int(model.config.image_size)
    mean, std = tuple(map(float, spec["mean"])), tuple(map(float, spec["std"]))
    leaves, treedef = jax.tree.flatten(model.params)
    graphdef = model.graphdef

    def infer(params, video_u8):
        from flax import nnx

        module = nnx.merge(graphdef, jax.tree.unflatten(treedef, params))
        return module(losses.normalize_video(video_u8, mean, std))["logits"].astype(jnp.float32)

    b, = jax.export.symbolic_shape("b")
    args = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
            jax.ShapeDtypeStruct((b, t, s, s, 3), jnp.uint8))
    try:
        exported = jax.export.export(jax.jit(infer), platforms=platforms)(*args)
    except Exception as e:  # noqa: BLE001  (lowering errors come as many types; all mean the same to the user)
        raise ExportError(f"{where}: the {model.model_name} inference function does not export"
                          f"{' for ' + ','.join(platforms) if platforms else ''}: {type(e).__name__}: {e}") from e
    num_outputs = int(model.config.num_classes)
    metadata = {
        "format": FORMAT, "vidjax_version": vidjax.__version__, "model_name": model.model_name, "task": model.task,
        "scores": predictions.score_function(model.task), "num_outputs": num_outputs,
        "class_names": model.class_names, "target_names": model.target_names,
        # sampling_rate: the checkpoint's frame stride, else the one vidjax.predict decodes with (recorded: false).
        "clip": {"num_frames": t, "image_size": s, "short_side": int(spec.get("short_side", s)),
                 "sampling_rate": int(model.sampling_rate or pretrained.DEFAULT_SAMPLING_RATE),
                 "sampling_rate_recorded": model.sampling_rate is not None, "mean": list(mean), "std": list(std)},
        "input": {"shape": ["b", t, s, s, 3], "dtype": "uint8", "layout": "RGB channels-last"},
        "output": {"shape": ["b", num_outputs], "dtype": "float32", "name": "logits"},
        "platforms": list(exported.platforms), "num_params": len(leaves), "checkpoint": checkpoint,
    }
    return bytes(exported.serialize()), [np.asarray(x) for x in leaves], metadata


def loader_source() -> str:
    """`load_exported` as a standalone Python file (it is stored in every exported file as "loader.py")."""
    return inspect.getsource(load_exported)


def write(path: str, function: bytes, params: list[np.ndarray], metadata: dict) -> None:
    """The .npz of the module docstring, written atomically."""
    arrays = {"function": np.frombuffer(function, np.uint8), "metadata": np.array(json.dumps(metadata, indent=1)),
              "loader.py": np.array(loader_source())}
    arrays.update({f"param_{i:05d}": p for i, p in enumerate(params)})
    with fileio.atomic_output(path, "wb") as f:
        np.savez(f, **arrays)


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.export", __doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR",
                     help="training workdir, WORKDIR/checkpoints/<step>, or a converted checkpoint (with a head)")
    src.add_argument("--to_hf", metavar="SRC",
                     help="write SRC (any checkpoint vidjax.pretrained.load takes) as a transformers save_pretrained "
                          "folder at --out")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the file to write (one .npz); with --to_hf, the new folder to write")
    parser.add_argument("--platforms", default="",
                        help="comma-separated backends to lower for, e.g. cpu,cuda (default: this machine's)")
    parser.add_argument("--format", default="", choices=("", "vjx", "onnx"),
                        help="vjx (StableHLO .npz) or onnx (default: onnx for an --out ending in .onnx, else vjx)")
    parser.add_argument("--output", default="auto", choices=onnx_export.OUTPUTS,
                        help="ONNX only: what the model computes: logits, reconstruction (pre-training) or "
                             "embeddings (default auto: the first of these the checkpoint has)")
    parser.add_argument("--pool", default="", choices=("", *pooling.POOLS),
                        help="ONNX --output=embeddings: pooling as python -m vidjax.extract --pool (default: the "
                             "model's own video embedding where it has one, else mean)")
    parser.add_argument("--float_input", action="store_true",
                        help="ONNX only: take float32 video already normalised, not uint8 (normalisation left out)")
    parser.add_argument("--external_data_mb", type=float, default=onnx_export.DEFAULT_EXTERNAL_DATA_MB,
                        help="ONNX only: weights over this many MiB in all go to FILE.data beside FILE (default "
                             f"{onnx_export.DEFAULT_EXTERNAL_DATA_MB}; one protobuf file holds at most 2 GiB)")
    return parser


def to_hf(model: pretrained.Pretrained | pretrained.PretrainedCaptioner | pretrained.PretrainedText,
          out: str) -> tuple[HfCheckpoint, list[str]]:
    """Writes a loaded checkpoint to the new folder `out` as its transformers class's `save_pretrained` would; returns
    what was written and the file names. A ConversionError says why a model has no transformers form."""
    flat = layers.flat_to_layout({k: np.asarray(v) for k, v in common.flatten_params(model.params).items()})
    preprocessing = dict(getattr(model, "preprocessing", None) or {})
    if preprocessing and getattr(model, "sampling_rate", None):  # the clip's frame stride, when the checkpoint has one
        preprocessing["sampling_rate"] = int(model.sampling_rate)
    task = getattr(model, "task", None)
    known = task in tasks.available()
    # What one output is called (`Readout.output_kind`): a class or a target, whose names label the head.
    kind = tasks.readout_of(task).output_kind if known else "class"
    labels = getattr(model, "target_names", None) if kind == "target" else getattr(model, "class_names", None)
    converted = common.Converted(model.model_name, model.config, flat, preprocessing)
    problem_type = tasks.presentation_of(task).hf_problem_type if known else None
    checkpoint = hf.to_hf(converted, problem_type=problem_type, labels=labels)
    return checkpoint, hf.write_hf_dir(checkpoint, preprocessing, fileio.user_path(out),
                                       tokenizer_dir=getattr(model, "tokenizer_dir", None))


def _main_to_hf(args: argparse.Namespace) -> int:
    where = f"--to_hf={args.to_hf}"
    if args.platforms:
        print(f"error: --platforms applies to --checkpoint (a StableHLO file); {where} writes weights, which run "
              f"anywhere transformers does. Drop --platforms.", file=sys.stderr)
        return 2
    try:
        model = pretrained.load(args.to_hf)
    except (ValueError, OSError) as e:  # ConversionError and ConfigError are ValueErrors
        print(f"error: {where}: {e}", file=sys.stderr)
        return 2
    try:
        checkpoint, files = to_hf(model, args.out)
    except ConversionError as e:
        print(f"error: {where}: {e}", file=sys.stderr)
        return 2
    for note in checkpoint.notes:
        print(f"note: {note}", file=sys.stderr)
    if "num_frames" in (getattr(model, "preprocessing", None) or {}) and not getattr(model, "sampling_rate", None):
        print(f"note: {args.to_hf} records no frame stride, so {args.out} records none either: vidjax reads its clips "
              f"{pretrained.DEFAULT_SAMPLING_RATE} frames apart; if it was trained at another, pass --sampling_rate "
              f"to predict and extract.", file=sys.stderr)
    labels = checkpoint.config.get("id2label")
    auto = hf.auto_class(checkpoint.architecture)
    print(f"Wrote {args.out}: {checkpoint.architecture} ({model.model_name}"
          f"{f', {len(labels)} labels' if labels else ''}): {', '.join(files)}. Load it with "
          f"transformers.{auto}.from_pretrained({str(args.out)!r}).")
    return 0


def _onnx_only_flags(args: argparse.Namespace) -> list[str]:
    """The ONNX flags given with another format."""
    defaults = _parser().parse_args(["--checkpoint=x", "--out=x"])
    return [f"--{name}" for name in ("output", "pool", "float_input", "external_data_mb")
            if getattr(args, name) != getattr(defaults, name)]


def _main_onnx(args: argparse.Namespace) -> int:
    if args.platforms:
        print("error: --platforms applies to the StableHLO export; an ONNX file runs wherever ONNX Runtime does. "
              "Drop --platforms.", file=sys.stderr)
        return 2
    existing = [p for p in (args.out, f"{args.out}.data") if os.path.exists(fileio.user_path(p))]
    if existing:
        print(f"error: --out={args.out}: {existing[0]} exists; remove it or give another file name (an export never "
              f"overwrites a model a server may be reading).", file=sys.stderr)
        return 2
    model = pretrained.load_for_command(args.checkpoint)
    if model is None:
        return 2
    try:
        ir_model, metadata = onnx_export.export_onnx(model, output=args.output, pool=args.pool or None,
                                                     float_input=args.float_input, checkpoint=args.checkpoint,
                                                     scores=predictions.score_function(model.task))
        written = onnx_export.write(args.out, ir_model, external_data_mb=args.external_data_mb)
    except onnx_export.OnnxExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(onnx_export.describe(written, metadata))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.to_hf:
        return _main_to_hf(args)
    if args.format == "onnx" or (not args.format and str(args.out).lower().endswith(".onnx")):
        return _main_onnx(args)
    wrong = _onnx_only_flags(args)
    if wrong:
        print(f"error: {', '.join(wrong)} apply to ONNX files only; give --out=FILE.onnx or --format=onnx, or drop "
              f"{'them' if len(wrong) > 1 else 'it'}.", file=sys.stderr)
        return 2
    if os.path.isdir(fileio.user_path(args.out)):
        example = os.path.join(args.out, "model.vjx.npz")
        print(f"error: --out={args.out} is a folder; give a file name, e.g. --out={example}.", file=sys.stderr)
        return 2
    if not os.path.exists(fileio.user_path(args.checkpoint)):
        print(f"error: --checkpoint={args.checkpoint}: no such directory. Give a training workdir, one of its "
              f"step folders (WORKDIR/checkpoints/<step>) or a `python -m vidjax.convert` output.", file=sys.stderr)
        return 2
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip()) or None
    unknown = sorted(set(platforms or ()) - set(PLATFORMS))
    if unknown:
        print(f"error: --platforms={args.platforms}: unknown {', '.join(unknown)}; choose from {', '.join(PLATFORMS)} "
              f"(e.g. --platforms=cpu,cuda).", file=sys.stderr)
        return 2
    try:
        import flatbuffers  # noqa: F401  (jax.export's serialization needs it; jax does not install it)
    except ImportError:
        print("error: writing an exported function needs the flatbuffers package, which jax does not install: "
              "`pip install flatbuffers` (loading the file needs it too).", file=sys.stderr)
        return 2
    model = pretrained.load_for_command(args.checkpoint)
    if model is None:
        return 2
    try:
        function, params, metadata = export(model, platforms=platforms, checkpoint=args.checkpoint)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(args.out, function, params, metadata)
    size = os.path.getsize(fileio.user_path(args.out))
    print(f"Wrote {args.out}: {metadata['model_name']} {metadata['task']}, uint8 video (b, "
          f"{', '.join(map(str, metadata['input']['shape'][1:]))}) -> float32 logits (b, {metadata['num_outputs']}) "
          f"for {','.join(metadata['platforms'])}; {len(params)} weight arrays, {size / 2**20:.1f} MiB")
    here = jax.export.default_export_platform()
    print(f"It runs on {' or '.join(metadata['platforms'])} only (metadata \"platforms\").")
    if here not in metadata["platforms"]:
        print(f"warning: this machine runs {here}, which is not among them: loading {args.out} here fails. Add "
              f"{here} to --platforms (--platforms={','.join([*metadata['platforms'], here])}) to run it here too.",
              file=sys.stderr)
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.export`: what its entry module calls."""
    cli.guard(main)
