r"""Converts published video-model checkpoints into vidjax checkpoints.

  python -m vidjax.convert --from_hf SRC --out DST
      SRC: a Hugging Face `save_pretrained` directory (config.json + model.safetensors or pytorch_model.bin) of
      VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel, TimesformerForVideoClassification,
      TimesformerModel, VivitForVideoClassification or VivitModel.
  python -m vidjax.convert --from_videomamba FILE --out DST
      FILE: an official VideoMamba checkpoint (.pth); its sizes are read from the tensor shapes.

Add --num_frames / --image_size to adapt the checkpoint to another clip length or resolution (learned position
embeddings are interpolated). DST gets an orbax checkpoint (params/) and vidjax.json (model config, preprocessing,
class names); load it with `vidjax.pretrained.load(DST)`. Nothing is written to DST unless the conversion succeeds.
No torch is needed, for safetensors or for torch zip files.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vidjax import cli
from vidjax.convert.common import ConversionError, resize, write_converted


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.convert", __doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--from_hf", metavar="SRC", help="Hugging Face save_pretrained directory")
    src.add_argument("--from_videomamba", metavar="FILE", help="official VideoMamba checkpoint file")
    parser.add_argument("--out", required=True, metavar="DST", help="output directory (must not exist)")
    parser.add_argument("--num_frames", type=int, default=0, help="adapt to this many frames (0 = keep)")
    parser.add_argument("--image_size", type=int, default=0, help="adapt to this resolution (0 = keep)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


def convert(from_hf: str | None = None, from_videomamba: str | None = None, out: str = "", num_frames: int = 0,
            image_size: int = 0, overwrite: bool = False):
    """Converts one checkpoint and writes it to `out`; returns the `Converted` that was written."""
    if from_hf:
        from vidjax.convert.hf import convert_hf_dir

        converted = convert_hf_dir(from_hf)
    else:
        from vidjax.convert.common import TensorSource, finalize
        from vidjax.convert.videomamba import from_videomamba as convert_videomamba

        src = TensorSource.from_file(from_videomamba)
        converted = finalize(convert_videomamba(src), src, format="videomamba")
    try:
        converted = resize(converted, num_frames or None, image_size or None)
    except ValueError as e:
        raise ConversionError(f"Cannot adapt the checkpoint to {num_frames or 'its'} frames x "
                              f"{image_size or 'its'} px: {e}") from e
    write_converted(converted, out, overwrite=overwrite)
    return converted


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        converted = convert(args.from_hf, args.from_videomamba, args.out, args.num_frames, args.image_size,
                            args.overwrite)
    except (ConversionError, FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = converted.model_config
    n = sum(v.size for v in converted.params.values())
    print(f"Wrote {args.out}: {converted.model_name} (head {cfg.head}, {n / 1e6:.2f}M params), "
          f"{cfg.num_frames} frames x {cfg.image_size} px, input (pixels/255 - {converted.preprocessing['mean']}) / "
          f"{converted.preprocessing['std']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
