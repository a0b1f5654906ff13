"""Checkpoint conversion into vidjax: Hugging Face VideoMAE/TimeSformer/ViViT/GPT-2/V-JEPA 2 and official VideoMAE,
SVT and VideoMamba files. `read` converts one checkpoint in memory (`python -m vidjax.convert` writes it);
`file_kind` says which official layout a checkpoint file holds."""

from __future__ import annotations

import os

from vidjax.convert.common import ConversionError, Converted, TensorSource, checkpoint_file, family, finalize

KINDS = ("hf", "videomamba", "svt", "videomae")  # what `read` converts: a save_pretrained folder, then .pth files
FILE_KINDS = KINDS[1:]


def file_kind(path: str | os.PathLike) -> str | None:
    """"videomamba", "svt" or "videomae": the official layout a checkpoint file holds, told by its tensor names and
    shapes (`common.family`: a Mamba mixer's A_log; TimeSformer's temporal attention; a Conv3d tubelet embedding);
    None for none of these."""
    kind = family(TensorSource.from_file(path).tensors)
    return kind if kind in FILE_KINDS else None


def read(kind: str, path: str | os.PathLike, *, num_heads: int | None = None, decoder_num_heads: int | None = None,
         num_frames: int | None = None, image_size: int | None = None) -> Converted:
    """Converts the checkpoint at `path` of `kind` (one of KINDS). `num_heads` (svt, videomae) and
    `decoder_num_heads` (videomae) are for widths no official size uses; `num_frames` / `image_size` tell the official
    VideoMAE files the clip size they do not record (the caller adapts the other kinds with `common.resize`)."""
    # Each converter is imported when asked for (start-up: they load flax and their models); a command converts one
    # kind.
    if kind == "hf":
        from vidjax.convert.hf import convert_hf_dir  # start-up: as above

        return convert_hf_dir(path)
    if kind == "svt":
        from vidjax.convert.svt import convert_svt_file  # start-up: as above

        return convert_svt_file(path, num_heads)
    if kind == "videomae":
        from vidjax.convert.videomae import convert_videomae_file  # start-up: as above

        return convert_videomae_file(path, num_heads, decoder_num_heads, num_frames, image_size)
    if kind == "videomamba":
        from vidjax.convert.videomamba import from_videomamba  # start-up: as above

        src = TensorSource.from_file(checkpoint_file(path, "--from_videomamba"))
        return finalize(from_videomamba(src), src, format="videomamba")
    raise ConversionError(f"Unknown checkpoint kind {kind!r}; vidjax converts {', '.join(KINDS)}.")
