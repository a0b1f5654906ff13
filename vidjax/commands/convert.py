r"""Converts published video-model (and captioning) checkpoints into vidjax checkpoints.

  python -m vidjax.convert --from_hf SRC --out DST
      SRC: a Hugging Face `save_pretrained` directory (config.json + model.safetensors or pytorch_model.bin) of
      VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel, TimesformerForVideoClassification,
      TimesformerModel, VivitForVideoClassification, VivitModel, VJEPA2Model (encoder and predictor),
      VJEPA2ForVideoClassification, VideoPrismVisionModel, VideoPrismVideoModel,
      VideoPrismForVideoClassification or VideoPrismClipModel (video and text towers); GPT2LMHeadModel or
      GPT2Model (a captioner's decoder, with or without cross-attention); or a VisionEncoderDecoderModel captioner
      whose encoder is a VideoMAEModel or TimesformerModel and whose decoder a GPT2LMHeadModel. A tokenizer saved in
      SRC is copied to DST/tokenizer/.
  python -m vidjax.convert --from_videomamba FILE --out DST
      FILE: an official VideoMamba checkpoint (.pth); its sizes are read from the tensor shapes.
  python -m vidjax.convert --from_svt FILE --out DST
      FILE: an SVT checkpoint (kahnchana/svt, a self-supervised TimeSformer): the released state dict
      (kinetics400_vitb_ssl.pth: backbone.* and head.* tensors) or a train_ssl.py checkpoint (its teacher is
      converted). Gives the TimeSformer backbone (head none; its CLS token is SVT's feature); the DINO projection
      head serves SVT's training only and is left out. Sizes are read from the tensor shapes; a width that is no
      ViT size also needs --num_heads.
  python -m vidjax.convert --from_videomae FILE --out DST
      FILE: an official VideoMAE or VideoMAE V2 checkpoint (.pth, as MCG-NJU/VideoMAE and OpenGVLab/VideoMAEv2
      save them: {"model": ...}, {"module": ...} or a bare state dict): pre-training (encoder + decoder; head
      pretrain), fine-tuned (fc_norm / mean pooling or norm, head; e.g. the K710 models) or a distilled student.
      Sizes are read from the tensor shapes; the files record no frame count or resolution (16 x 224 unless
      --num_frames / --image_size say otherwise), and a width that is no ViT size also needs --num_heads (a decoder
      width that no official builder uses, --decoder_num_heads). A head of 400 / 600 / 700 / 710 outputs gets the
      Kinetics label space's class names.
  python -m vidjax.convert --from_vjepa2 FILE --out DST
      FILE: an official V-JEPA 2 checkpoint (facebookresearch/vjepa2: the released vitl.pt / vith.pt / vitg.pt /
      vitg-384.pt, an app/vjepa/train.py checkpoint, or an encoder's bare state dict). Gives the encoder and the
      predictor (head none): the target encoder, as the official evaluations read it, unless --checkpoint_key=encoder
      asks for the online one. Sizes are read from the tensor shapes; the files record no clip (read at 16 frames x
      256 px, 4 frames apart, unless --num_frames / --image_size say otherwise), and widths no official size uses also
      need --num_heads (--predictor_num_heads for the predictor).
  python -m vidjax.convert --from_videoprism FILE --out DST
      FILE: an official VideoPrism checkpoint (google-deepmind/videoprism: the .npz its load_pretrained_weights
      reads, e.g. flax_base_f16r288_repeated.npz or flax_lvt_base_f16r288_repeated.npz). The video encoder gives head
      none (forward()["last_hidden_state"]); an LvT file the video-text model, head clip (video and text embeddings;
      the files carry no tokenizer). Everything else is read from the arrays' shapes; every array must be read, or
      the error names it.

SRC and FILE may also be Hugging Face Hub names, downloaded through huggingface_hub's cache (its HF_TOKEN,
HF_ENDPOINT and HF_HUB_OFFLINE apply; pip install 'vidjax[hub]'): a repository for --from_hf
(`--from_hf MCG-NJU/videomae-base-finetuned-kinetics`), a file inside one for the others (`--from_videomae
OpenGVLab/VideoMAE2/distill/vit_b_k710_dl_from_giant.pth`, `--from_videoprism
google/videoprism-base-f16r288/flax_base_f16r288_repeated.npz`), with `@REV` for a branch, tag or commit. A local path
that exists always wins. (Every command also takes such a name directly as its checkpoint: vidjax/pretrained/hub.py.)

Add --num_frames / --image_size to adapt a video model's checkpoint to another clip length or resolution (learned
position embeddings are interpolated). DST gets an orbax checkpoint (params/) and vidjax.json (model config,
preprocessing, class names); load it with `vidjax.pretrained.load(DST)`. Nothing is written to DST unless the
conversion succeeds. No torch is needed, for safetensors or for torch zip files.

Every failure is one `error:` line on stderr and exit status 2, nothing written: it names the file and what is wrong
with it (damaged, cut short, empty, legacy torch format, weights that hold NaN or infinity, a tensor missing or of
the wrong shape), or, for a checkpoint of another family, the --from_* flag that converts it.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import NoReturn

from vidjax import cli, models
from vidjax.convert import KINDS, SOURCES, read
from vidjax.convert.common import (
    FAMILIES,
    ConversionError,
    Converted,
    TensorSource,
    family,
    is_video_config,
    resize,
    write_converted,
)
from vidjax.pretrained import hub


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.convert", __doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    for kind, source in SOURCES.items():  # a --from_KIND flag for each kind of checkpoint `vidjax.convert` reads
        src.add_argument(f"--from_{kind}", metavar=source.metavar, help=source.help)
    parser.add_argument("--out", required=True, metavar="DST", help="output directory (must not exist)")
    parser.add_argument("--num_frames", type=int, default=0, help="adapt to this many frames (0 = keep)")
    parser.add_argument("--image_size", type=int, default=0, help="adapt to this resolution (0 = keep)")
    parser.add_argument("--num_heads", type=int, default=0,
                        help="--from_svt / --from_videomae / --from_vjepa2: attention heads, for a width that is no "
                             "ViT size (0 = the size table's: 12 for ViT-B, 22 for V-JEPA 2's ViT-g)")
    parser.add_argument("--decoder_num_heads", type=int, default=0,
                        help="--from_videomae pre-training checkpoints: decoder heads, for a decoder width no "
                             "official builder uses (0 = the official table's: 192 -> 3, 384 -> 6, 512 -> 8)")
    parser.add_argument("--predictor_num_heads", type=int, default=0,
                        help="--from_vjepa2: predictor heads, for a predictor width no official builder uses (0 = "
                             "the official 384 -> 12)")
    parser.add_argument("--checkpoint_key", default="", choices=("", "target_encoder", "encoder"),
                        help="--from_vjepa2 pre-training checkpoints: the encoder to convert, target_encoder (the EMA "
                             "encoder the official evaluations read) or encoder (the online one); default: "
                             "target_encoder, or encoder in a file without one")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


# Why an option that only some kinds take (`vidjax.convert.Source.options`) is not needed by the others, where it
# helps to say.
_WHY_ONLY = {"num_heads": "the other sources record their head count"}


def _flags(kinds: list[str]) -> str:
    flags = [f"--from_{kind}" for kind in kinds]
    return flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"


def convert(out: str = "", num_frames: int = 0, image_size: int = 0, overwrite: bool = False, *, num_heads: int = 0,
            decoder_num_heads: int = 0, predictor_num_heads: int = 0, checkpoint_key: str = "",
            **sources: str | None) -> Converted:
    """Converts one checkpoint and writes it to `out`; returns the `Converted` that was written. The checkpoint is
    given as `from_KIND=PATH` (KIND one of `vidjax.convert.KINDS`: `from_hf=`, `from_videomae=`, ...), as the
    command's --from_KIND flags give it; the options apply to the kinds that take them (`vidjax.convert.SOURCES`)."""
    unknown = sorted(set(sources) - {f"from_{kind}" for kind in KINDS})
    if unknown:
        raise TypeError(f"convert() got unexpected keyword arguments {', '.join(unknown)}; a checkpoint is given as "
                        f"one of {', '.join(f'from_{kind}' for kind in KINDS)}.")
    given = [(kind, sources[f"from_{kind}"]) for kind in KINDS if sources.get(f"from_{kind}")]
    options = {"num_heads": num_heads, "decoder_num_heads": decoder_num_heads,
               "predictor_num_heads": predictor_num_heads, "checkpoint_key": checkpoint_key}
    for option, value in options.items():
        takers = [kind for kind in KINDS if option in SOURCES[kind].options]
        if value and not any(kind in takers for kind, _ in given):
            why = f": {_WHY_ONLY[option]}" if option in _WHY_ONLY else ""
            raise ConversionError(f"--{option} applies to {_flags(takers)} only{why}.")
    if len(given) != 1:
        raise ConversionError(f"Give exactly one of {', '.join(f'--from_{k}' for k in KINDS)}; got "
                              f"{len(given) or 'none'}.")
    kind, source = given[0]
    # A Hugging Face Hub name (a repository, or a file inside one) is downloaded through huggingface_hub's cache.
    path = hub.source(source, f"--from_{kind}", file=kind != "hf")
    if kind == "hf" and pathlib.Path(path).expanduser().is_file():
        raise ConversionError(_hf_file(pathlib.Path(path).expanduser()))
    converted = read(kind, path, num_heads=num_heads or None, decoder_num_heads=decoder_num_heads or None,
                     num_frames=num_frames or None, image_size=image_size or None,
                     predictor_num_heads=predictor_num_heads or None, checkpoint_key=checkpoint_key or None)
    try:
        converted = resize(converted, num_frames or None, image_size or None)
    except ValueError as e:
        raise ConversionError(f"Cannot adapt the checkpoint to {num_frames or 'its'} frames x "
                              f"{image_size or 'its'} px: {e}") from e
    write_converted(converted, out, overwrite=overwrite)
    return converted


def _hf_file(path: pathlib.Path) -> str:
    """Why --from_hf does not take the file `path`, and what to pass: its folder, or the flag of its family."""
    found = family(TensorSource.from_file(path).tensors)
    if found in FAMILIES and found != "hf":
        what, flag = FAMILIES[found]
        return f"{path} is {what} checkpoint file; convert it with {flag} {path}."
    if (path.parent / "config.json").is_file():
        return (f"{path} is a file; --from_hf takes the folder `save_pretrained` wrote: convert it with --from_hf "
                f"{path.parent}.")
    return (f"{path} is a file; --from_hf takes the folder `save_pretrained` wrote (config.json beside "
            f"model.safetensors or pytorch_model.bin).")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        converted = convert(args.out, args.num_frames, args.image_size, args.overwrite, num_heads=args.num_heads,
                            decoder_num_heads=args.decoder_num_heads, predictor_num_heads=args.predictor_num_heads,
                            checkpoint_key=args.checkpoint_key,
                            **{f"from_{kind}": getattr(args, f"from_{kind}") for kind in KINDS})
    except (ConversionError, FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out}: {summary(converted)}.")
    return 0


def summary(converted: Converted) -> str:
    """One line on what a conversion holds: the model as its family describes it (`models.Traits.describe`) with its
    size, what it takes, and for a video model what the conversion left out or filled in."""
    cfg, pre = converted.model_config, converted.preprocessing
    n = sum(v.size for v in converted.params.values())
    video = (f"{pre['num_frames']} frames x {pre['image_size']} px, input (pixels/255 - {pre['mean']}) / {pre['std']}"
             if "num_frames" in pre else "")
    line = f"{converted.model_name} ({models.traits(converted.model_name).describe(cfg, f'{n / 1e6:.2f}M params')})"
    if is_video_config(cfg):
        skipped = converted.source.get("not_converted") or {}
        left_out = (f"; not converted: {skipped['what']} ({len(skipped['tensors'])} tensors: "
                    f"{', '.join(skipped['tensors'][:4])}{', ...' if len(skipped['tensors']) > 4 else ''})"
                    if skipped else "")
        space = converted.source.get("label_space")
        labels = f"; label space {space} ({cfg.num_classes} classes, names filled)" if space else ""
        # An official file's layout: which of its networks was read (SVT's teacher, V-JEPA 2's target encoder, ...)
        layout = f"; layout: {converted.source['layout']}" if converted.source.get("layout") else ""
        return f"{line}, {video}{left_out}{labels}{layout}"
    return f"{line}, {video}" if video else line  # a model around a video encoder (a captioner), or a text model


def run_command() -> NoReturn:
    """`python -m vidjax.convert`: what its entry module calls."""
    cli.guard(main)
