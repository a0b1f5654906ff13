r"""What a VideoMAE pre-training checkpoint reconstructs from a masked clip of your video: a PNG grid and a GIF.

  python -m vidjax.visualize --checkpoint=/work/videomae_pretrain clip.mp4 --out=/tmp/clip
  python -m vidjax.visualize --checkpoint=/ckpt/videomae_b_pretrain clip.mp4 --out=/tmp/clip --mask_ratio=0.75

--checkpoint is a VideoMAE pre-training checkpoint (a training workdir, one of its step folders, or a converted
`VideoMAEForPreTraining`). The middle clip of the video is decoded and centre-cropped as the checkpoint's
evaluation does, a tube mask of --mask_ratio is drawn with --seed (the same spatial patches hidden in every frame,
as in pre-training), and the model predicts the hidden patches. Writes PREFIX.png (rows original / masked input /
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

import numpy as np

from vidjax import cli, pretrained, visualize_lib
from vidjax.data import decode, pipeline


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.visualize", __doc__)
    parser.add_argument("video", metavar="VIDEO", help="the video file to reconstruct a clip of")
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a VideoMAE pre-training checkpoint")
    parser.add_argument("--out", default="", metavar="PREFIX", help="writes PREFIX.png and PREFIX.gif (default: the "
                        "video's name without its extension, in the current directory, + _reconstruction)")
    parser.add_argument("--mask_ratio", type=float, default=0.9,
                        help="fraction of each frame's patches hidden (default 0.9, as in pre-training)")
    parser.add_argument("--use_true_stats", action="store_true",
                        help="un-normalise with the hidden patches' true mean/std (peeks at them; the title says so)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask")
    parser.add_argument("--frames", type=int, default=8, help="frame columns in the PNG (default 8)")
    parser.add_argument("--fps", type=float, default=4.0, help="GIF frames per second (default 4)")
    parser.add_argument("--sampling_rate", type=int, default=0,
                        help="frame stride (default 0: the checkpoint's; converted checkpoints that record none use "
                             f"{pretrained.DEFAULT_SAMPLING_RATE})")
    return parser


def render(model: pretrained.Pretrained, video: str, prefix: str, *, mask_ratio: float = 0.9,
           use_true_stats: bool = False, seed: int = 0, frames: int = 8,
           fps: float = 4.0, sampling_rate: int | None = None) -> dict:
    """Writes PREFIX.png and PREFIX.gif; returns {"png", "gif", "title", "loss", "num_frames"}."""
    clip = model.read_views(video, sampling_rate=sampling_rate)[0]
    encoder = model.model.encoder
    mask = pipeline.tube_mask(np.random.default_rng(seed), encoder.grid, mask_ratio)
    out = model.forward(model.preprocess(clip[None]), mask[None])
    norm_pix = bool(model.config.norm_pix_loss)
    original = clip.astype(np.float32) / 255.0
    recon = visualize_lib.reconstruct(original, np.asarray(out["pred"][0]), np.asarray(out["masked_ids"][0]),
                                      encoder.tubelet, encoder.patch, norm_pix=norm_pix, true_stats=use_true_stats)
    masked = visualize_lib.mask_video(original, mask.reshape(encoder.grid), encoder.tubelet, encoder.patch)
    title = (f"{model.model_name} {model.config.variant}, {os.path.basename(video)}, {mask_ratio:.0%} of patches "
             f"masked; {visualize_lib.stats_note(norm_pix, use_true_stats)}")
    png, gif = f"{prefix}.png", f"{prefix}.gif"
    visualize_lib.reconstruction_figure(original, masked, recon, png, frames=frames, title=title)
    visualize_lib.reconstruction_gif(original, masked, recon, gif, fps=fps)
    return {"png": png, "gif": gif, "title": title, "loss": float(out["loss"]), "num_frames": len(clip)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.frames < 1 or args.fps <= 0 or args.sampling_rate < 0:
        print("error: --frames must be at least 1, --fps positive and --sampling_rate not negative.", file=sys.stderr)
        return 2
    model = pretrained.load_for_command(args.checkpoint)
    if model is None:
        return 2
    if model.config.get("head") != "pretrain":
        print(f"error: --checkpoint={args.checkpoint} is a {model.model_name} checkpoint with head "
              f"{model.config.get('head')!r}; reconstructions need a VideoMAE pre-training checkpoint (head "
              f"'pretrain'). For its predictions use `python -m vidjax.predict --checkpoint={args.checkpoint} VIDEO`.",
              file=sys.stderr)
        return 2
    t, h, w = model.model.encoder.grid
    hidden = int(args.mask_ratio * h * w)
    if not 0 < hidden < h * w:
        print(f"error: --mask_ratio={args.mask_ratio} hides {hidden} of the {h * w} patches of each frame; choose a "
              f"ratio that hides some and leaves some visible (e.g. 0.9).", file=sys.stderr)
        return 2
    out = args.out or os.path.splitext(os.path.basename(args.video))[0] + "_reconstruction"
    try:
        result = render(model, args.video, out, mask_ratio=args.mask_ratio, use_true_stats=args.use_true_stats,
                        seed=args.seed, frames=args.frames, fps=args.fps,
                        sampling_rate=args.sampling_rate or None)
    except decode.VideoDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {result['png']} and {result['gif']} ({result['num_frames']} frames); loss on the masked patches "
          f"{result['loss']:.4f}. {result['title']}")
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.visualize`: what its entry module calls."""
    cli.guard(main)
