"""Checkpoint conversion into vidjax: Hugging Face VideoMAE/TimeSformer/ViViT/GPT-2/V-JEPA 2/VideoPrism and official
VideoMAE, SVT, VideoMamba, V-JEPA 2 and VideoPrism files. `read` converts one checkpoint in memory (`python -m
vidjax.convert` writes it); `file_kind` says which official layout a checkpoint file holds."""

from __future__ import annotations

import dataclasses
import os

from vidjax.convert.common import ConversionError, Converted, TensorSource, checkpoint_file, family, finalize


@dataclasses.dataclass(frozen=True)
class Source:
    """How `python -m vidjax.convert` offers one kind of checkpoint, as its --from_KIND flag: the flag's metavar and
    help, and which of `read`'s options (each a flag of the command) the kind takes."""

    metavar: str
    help: str
    options: tuple[str, ...] = ()


# What `read` converts, in the order the command offers it: a save_pretrained folder, then files.
SOURCES = {
    "hf": Source("SRC", "Hugging Face save_pretrained directory, or a Hub repository"),
    "videomamba": Source("FILE", "official VideoMamba checkpoint file"),
    "svt": Source("FILE", "SVT checkpoint file (released or a training checkpoint)", ("num_heads",)),
    "videomae": Source("FILE", "official VideoMAE / VideoMAE V2 checkpoint file (pre-training, fine-tuned or "
                               "distilled)", ("num_heads", "decoder_num_heads")),
    "vjepa2": Source("FILE", "official V-JEPA 2 checkpoint file (pre-training: encoder and predictor; or an "
                             "encoder's)", ("num_heads", "predictor_num_heads", "checkpoint_key")),
    "videoprism": Source("FILE", "official VideoPrism checkpoint file (.npz: the video encoder or the LvT video-text "
                                 "model)"),
}
KINDS = tuple(SOURCES)
FILE_KINDS = KINDS[1:]


def file_kind(path: str | os.PathLike) -> str | None:
    """"videomamba", "svt", "videomae", "vjepa2" or "videoprism": the official layout a checkpoint file holds, told by
    its tensor names and shapes (`common.family`: a Mamba mixer's A_log; TimeSformer's temporal attention; a Conv3d
    tubelet embedding, beside a V-JEPA predictor or a qkv bias for V-JEPA 2; VideoPrism's Flax patch_projection);
    None for none of these."""
    kind = family(TensorSource.from_file(path).tensors)
    return kind if kind in FILE_KINDS else None


def read(kind: str, path: str | os.PathLike, *, num_heads: int | None = None, decoder_num_heads: int | None = None,
         num_frames: int | None = None, image_size: int | None = None, predictor_num_heads: int | None = None,
         checkpoint_key: str | None = None) -> Converted:
    """Converts the checkpoint at `path` of `kind` (one of KINDS). `num_heads` (svt, videomae, vjepa2),
    `decoder_num_heads` (videomae) and `predictor_num_heads` (vjepa2) are for widths no official size uses;
    `num_frames` / `image_size` tell the official VideoMAE and V-JEPA 2 files the clip size they do not record (the
    caller adapts the other kinds with `common.resize`); `checkpoint_key` picks a V-JEPA 2 pre-training checkpoint's
    encoder ("target_encoder" or "encoder"; `vidjax.convert.vjepa2`)."""
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
    if kind == "vjepa2":
        from vidjax.convert.vjepa2 import convert_vjepa2_file  # start-up: as above

        return convert_vjepa2_file(path, num_heads, predictor_num_heads, num_frames, image_size, checkpoint_key)
    if kind == "videoprism":
        from vidjax.convert.videoprism import convert_videoprism_file  # start-up: as above

        return convert_videoprism_file(path)
    if kind == "videomamba":
        from vidjax.convert.videomamba import from_videomamba  # start-up: as above

        src = TensorSource.from_file(checkpoint_file(path, "--from_videomamba"))
        return finalize(from_videomamba(src), src, format="videomamba")
    raise ConversionError(f"Unknown checkpoint kind {kind!r}; vidjax converts {', '.join(KINDS)}.")
