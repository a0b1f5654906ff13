r"""What a VideoMAE pre-training checkpoint reconstructs from a masked clip of your video: a PNG grid and a GIF.

  python -m vidjax.visualize --checkpoint=/work/videomae_pretrain clip.mp4 --out=/tmp/clip
  python -m vidjax.visualize --checkpoint=/ckpt/videomae_b_pretrain clip.mp4 --out=/tmp/clip --mask_ratio=0.75

--checkpoint is a VideoMAE pre-training checkpoint (a training workdir, one of its step folders, or a converted
`VideoMAEForPreTraining`). The middle clip of the video is decoded and centre-cropped as the checkpoint's
evaluation does, a tube mask is drawn with --seed as the checkpoint's pre-training drew its masks (its
`patches.MaskSpec`: the same spatial patches hidden in every frame, config.model.mask_ratio of them, or --mask_ratio
when given), and the model predicts the hidden patches. Writes PREFIX.png (rows original / masked input /
reconstruction, --frames evenly spaced frames) and PREFIX.gif (the three side by side, every frame, --fps).

A model trained with the normalised-pixel loss predicts each hidden patch up to its own mean and std, which the
masked input does not show. By default they are estimated from the 4 nearest visible patches of the same frames
(`vidjax.visualize_lib.visible_patch_stats`), so the figure shows only what the model could know;
--use_true_stats uses the hidden patches' real mean and std instead, as the VideoMAE paper's figures do (sharper,
but it peeks at the answer). The figure's title says which. Exit status 0, 1 if the video does not decode, 2 for
bad arguments or a checkpoint that is not a VideoMAE pre-training one.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from vidjax import cli, pretrained
from vidjax.data import decode
from vidjax.pretrained import reconstruction


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.visualize", __doc__)
    parser.add_argument("video", metavar="VIDEO", help="the video file to reconstruct a clip of")
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a VideoMAE pre-training checkpoint")
    parser.add_argument("--out", default="", metavar="PREFIX", help="writes PREFIX.png and PREFIX.gif (default: the "
                        "video's name without its extension, in the current directory, + _reconstruction)")
    parser.add_argument("--mask_ratio", type=float, default=None,
                        help="fraction of each frame's patches hidden (default: the checkpoint's own, as in its "
                             "pre-training; 0.9 for VideoMAE)")
    parser.add_argument("--use_true_stats", action="store_true",
                        help="un-normalise with the hidden patches' true mean/std (peeks at them; the title says so)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
    parser.add_argument("--frames", type=int, default=8, help="frame columns in the PNG (default 8)")
    parser.add_argument("--fps", type=float, default=4.0, help="GIF frames per second (default 4)")
    parser.add_argument("--sampling_rate", type=int, default=0,
                        help="frame stride (default 0: the checkpoint's; converted checkpoints that record none use "
                             f"{pretrained.DEFAULT_SAMPLING_RATE})")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    if args.frames < 1 or args.fps <= 0 or args.sampling_rate < 0:
        return "--frames must be at least 1, --fps positive and --sampling_rate not negative."
    return None


def _load(args: argparse.Namespace) -> pretrained.Pretrained | None:
    """The --checkpoint, or None after an `error:` line: one that does not load, is not a pre-training checkpoint,
    or whose frames --mask_ratio would hide none or all of."""
    model = pretrained.load_for_command(args.checkpoint)
    if model is None:
        return None
    if model.config.get("head") != "pretrain":
        print(f"error: --checkpoint={args.checkpoint} is a {model.model_name} checkpoint with head "
              f"{model.config.get('head')!r}; reconstructions need a VideoMAE pre-training checkpoint (head "
              f"'pretrain'). For its predictions use `python -m vidjax.predict --checkpoint={args.checkpoint} VIDEO`.",
              file=sys.stderr)
        return None
    if args.mask_ratio is not None:  # the checkpoint's own ratio is one its pre-training drew masks with
        _, h, w = reconstruction.mask_spec(model).grid
        hidden = int(args.mask_ratio * h * w)
        if not 0 < hidden < h * w:
            print(f"error: --mask_ratio={args.mask_ratio} hides {hidden} of the {h * w} patches of each frame; choose "
                  f"a ratio that hides some and leaves some visible (e.g. 0.9).", file=sys.stderr)
            return None
    return model


def main(argv: list[str] | None = None) -> int:
    started = cli.start(_parser(), argv, _check_args, load=_load)
    if started is None:
        return 2
    args, model = started
    out = args.out or os.path.splitext(os.path.basename(args.video))[0] + "_reconstruction"
    try:
        result = reconstruction.render(model, args.video, out, mask_ratio=args.mask_ratio,
                                       use_true_stats=args.use_true_stats, seed=args.seed, frames=args.frames,
                                       fps=args.fps, sampling_rate=args.sampling_rate or None)
    except decode.VideoDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {result['png']} and {result['gif']} ({result['num_frames']} frames); loss on the masked patches "
          f"{result['loss']:.4f}. {result['title']}")
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.visualize`: what its entry module calls."""
    cli.guard(main)
