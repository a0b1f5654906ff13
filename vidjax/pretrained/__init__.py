"""Ready-to-call models from converted checkpoints, training runs and Hub names: `vidjax.pretrained.load(PATH)`.

    model = vidjax.pretrained.load("/ckpt/videomae-base-finetuned-kinetics")   # a `python -m vidjax.convert` output
    model = vidjax.pretrained.load("/work/my_finetune")      # a training workdir: its latest checkpoint
    model = vidjax.pretrained.load("/work/my_finetune/checkpoints/2000")       # or one step of it
    model = vidjax.pretrained.load("MCG-NJU/videomae-base-finetuned-kinetics")  # a Hub name (pretrained.hub)
    views = model.read_views("clip.mp4")            # uint8 (views, T, H, W, 3), decoded as the checkpoint expects
    video = model.preprocess(views)                 # -> normalised float32
    logits = model(video)                           # checkpoints with a head: (B, num_outputs)
    out = model(video, mask)                        # VideoMAE pre-training: {"reconstruction", "loss"}
    baseline = vidjax.pretrained.init("videomae", config.model)   # a config's model, random weights: a probe baseline

A captioner (`vidjax.models.captioner`, e.g. a converted VisionEncoderDecoderModel) loads as a
`PretrainedCaptioner`: `model(video, input_ids)` gives the decoder's logits, `model.generate(video,
max_new_tokens=N)` caption token ids, `model.caption(video)` text when the checkpoint holds a tokenizer. A
video-text model (VideoPrism's "clip" head) loads as a `PretrainedVideoText`: `model.forward(video, input_ids,
attention_mask)` gives "video_embeds", "text_embeds" and the similarity logits. A GPT-2 loads as a
`PretrainedText`, whose `.model` is the NNX GPT-2 (to start a captioner's decoder from).

`model.preprocessing` says what the checkpoint expects (mean/std, frames, image size, short side, sampling rate) so
callers need not guess; `model.task` is "pretrain", "classification", "multilabel", "regression" (None for a
converted backbone), and `model.class_names` / `model.target_names` name the outputs when the checkpoint has them.
`model.forward(video, mask)` returns every output of the vidjax model (including "last_hidden_state"); a V-JEPA 2
checkpoint's `model.forward(video, context_ids=C, target_ids=T)` adds its predictor's "predictor_output". The forward
pass is jitted once per architecture and input shape. `BatchRunner` runs a function of the model over many clips in
fixed-size batches split over this host's devices (used by `vidjax.predict` and `vidjax.extract`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import pathlib
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import config_lib, fileio, losses, platform, sharding
from vidjax.config_lib import ConfigError
from vidjax.convert import common, file_kind
from vidjax.convert.common import ConversionError
from vidjax.convert.hf import TOKENIZER_DIR
from vidjax.data import pipeline, sources
from vidjax.fileio import atomic_output  # noqa: F401  (re-exported for the commands)
from vidjax.models import ParamKeys, clip_spec, decoding, get_model, layers, part_of, tokens_part, traits
from vidjax.pretrained import hub
from vidjax.tokenizer import CaptionTokenizer, TextTowerTokenizer

# A converted checkpoint records no frame stride; the published Kinetics recipes (VideoMAE 16x4) use this one.
DEFAULT_SAMPLING_RATE = 4


@functools.partial(jax.jit, static_argnames=("graphdef", "num_masked", "num_decoded"))
def _forward(params, video, mask, decoder_mask=None, *, graphdef, num_masked, num_decoded=None):
    # Module-level, with the graph static: every checkpoint of one architecture shares the compiled function.
    model = nnx.merge(graphdef, params)
    if mask is None:
        return model(video)
    return model(video, mask, decoder_mask=decoder_mask, num_masked=num_masked, num_decoded=num_decoded)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predict_forward(params, video, context_ids, target_ids, *, graphdef):
    return nnx.merge(graphdef, params)(video, context_ids, target_ids)


@functools.partial(jax.jit, static_argnames=("graphdef", "fn", "mean", "std"))
def _apply_batch(params, video_u8, *, graphdef, fn, mean, std):
    return fn(nnx.merge(graphdef, params), losses.normalize_video(video_u8, mean, std))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _caption_forward(params, video, input_ids, attention_mask, *, graphdef):
    return nnx.merge(graphdef, params)(video, input_ids, attention_mask)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _text_embeddings(params, input_ids, attention_mask, *, graphdef):
    return nnx.merge(graphdef, params).text_embeddings(input_ids, attention_mask)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "num_beams", "length_penalty"))
def _caption_generate(params, video, *, graphdef, max_new_tokens, num_beams, length_penalty):
    return nnx.merge(graphdef, params).generate(video, max_new_tokens, num_beams, length_penalty)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _text_forward(params, input_ids, attention_mask, encoder_hidden_states, *, graphdef):
    return nnx.merge(graphdef, params)(input_ids, attention_mask=attention_mask,
                                        encoder_hidden_states=encoder_hidden_states)["logits"]


def load_tokenizer(directory: pathlib.Path | None, where: str):
    """The `vidjax.tokenizer.CaptionTokenizer` of a checkpoint's tokenizer/ folder; `where` names the checkpoint."""
    if directory is None:
        raise ValueError(f"{where} has no tokenizer: convert a directory holding one (`tokenizer.save_pretrained(SRC)` "
                         f"beside the weights), or turn token ids into text yourself.")
    return CaptionTokenizer.from_directory(directory)


@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: call it on normalised float32 video (B, T, H, W, 3)."""

    model_name: str
    config: ml_collections.ConfigDict
    preprocessing: dict[str, Any]
    class_names: list[str] | None
    graphdef: Any
    params: Any
    num_tokens: int | None = None  # tokens per clip of a masked model (the mask's second dimension)
    task: str | None = None  # pretrain | classification | multilabel | regression | captioning; None: a backbone
    target_names: list[str] | None = None  # regression outputs
    sampling_rate: int | None = None  # frame stride of the clips it was trained on; None when not recorded

    @property
    def model(self) -> nnx.Module:
        """The vidjax NNX module holding these weights (for fine-tuning or inspection)."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def has_head(self) -> bool:
        """Whether the model maps a clip to outputs ("logits"): classification, multilabel or regression."""
        return self.config.get("head") == "classification"

    def preprocess(self, frames: np.ndarray) -> jax.Array:
        """uint8 RGB frames (..., H, W, 3) -> float32 normalised as this checkpoint expects."""
        return losses.normalize_video(jnp.asarray(frames), self.preprocessing["mean"], self.preprocessing["std"])

    def read_views(self, src: str | bytes, *, num_clips: int = 1, num_crops: int = 1, start_s: float | None = None,
                   end_s: float | None = None, sampling_rate: int | None = None, name: str | None = None
                   ) -> np.ndarray:
        """uint8 views (num_clips * num_crops, T, S, S, 3) of a video file (or its bytes), clip-major.

        Exactly the training pipeline's evaluation views (`pipeline.Preprocess`): `num_clips` evenly spaced windows
        of T frames `sampling_rate` apart within [start_s, end_s) seconds (the whole video by default), each frame
        resized to the checkpoint's short side, then the centre crop (`num_crops` 1) or `num_crops` crops spread
        along the long side. Raises `vidjax.data.decode.VideoDecodeError` for a video that does not decode.
        """
        p = self.preprocessing
        data = config_lib.data_config(
            num_frames=int(p["num_frames"]), image_size=int(p["image_size"]), short_side=int(p["short_side"]),
            sampling_rate=int(next(r for r in (sampling_rate, self.sampling_rate, DEFAULT_SAMPLING_RATE)
                                   if r is not None)),
            test_num_clips=num_clips, test_num_crops=num_crops)
        preprocess = pipeline.Preprocess(data=data, source=None, train=False, pixel_mean=tuple(p["mean"]),
                                         pixel_std=tuple(p["std"]))
        element = {"index": np.int64(0), "start": np.nan if start_s is None else float(start_s),
                   "end": np.nan if end_s is None else float(end_s)}
        if isinstance(src, bytes | bytearray | memoryview):
            element.update(data=bytes(src), source_path=name or f"<{len(src)} bytes>")
        else:
            element["path"] = str(src)
        video = preprocess.load(element, np.random.default_rng(0))["video"]
        return video if video.ndim == 5 else video[None]

    def _check(self, video) -> None:
        t, s = self.config.num_frames, self.config.image_size
        if tuple(np.shape(video)[1:]) != (t, s, s, 3):
            raise ValueError(f"This {self.model_name} checkpoint takes video shaped (batch, {t}, {s}, {s}, 3) "
                             f"channels-last, normalised with mean {self.preprocessing['mean']} and std "
                             f"{self.preprocessing['std']}; got {tuple(np.shape(video))}. Use "
                             f"pretrained.load(..., num_frames=, image_size=) to adapt it to other sizes.")

    def forward(self, video, mask=None, decoder_mask=None, *, context_ids=None, target_ids=None
                ) -> dict[str, jax.Array]:
        """Every output of the model: logits / loss / pred / last_hidden_state, as the head provides.

        A pre-training checkpoint also takes VideoMAE V2's `decoder_mask` (bool (batch, tokens), True = not decoded,
        the same count in every row; `pipeline.running_cell_mask`): the outputs then cover the decoded positions.
        A V-JEPA 2 checkpoint with its predictor takes `context_ids` and `target_ids` (int (batch, n) token indices,
        as transformers' `context_mask=[C]`, `target_mask=[T]`) and adds "predictor_output" (the predictor's features
        at the targets) and "target_hidden_state"."""
        self._check(video)
        if context_ids is not None or target_ids is not None:
            if not self.config.get("predictor"):
                raise ValueError(f"This {self.model_name} checkpoint has no predictor to take context_ids and "
                                 f"target_ids (a V-JEPA 2 checkpoint converted with its predictor has one).")
            if context_ids is None or target_ids is None:
                raise ValueError("The predictor needs both context_ids and target_ids.")
            ids = [np.asarray(i) for i in (context_ids, target_ids)]
            if any(i.ndim != 2 or i.shape[0] != np.shape(video)[0] or not np.issubdtype(i.dtype, np.integer)
                   for i in ids):
                raise ValueError(f"context_ids and target_ids must be int token indices (batch, n), one row per "
                                 f"video; got {ids[0].dtype} {ids[0].shape} and {ids[1].dtype} {ids[1].shape} for "
                                 f"{np.shape(video)[0]} videos.")
            return _predict_forward(self.params, jnp.asarray(video, jnp.float32), *(jnp.asarray(i, jnp.int32)
                                                                                     for i in ids),
                                    graphdef=self.graphdef)
        if self.config.head == "pretrain" and mask is None:
            raise ValueError("This is a VideoMAE pre-training checkpoint: call it as model(video, mask) with a bool "
                             "mask (batch, tokens), True = masked, the same count in every row.")
        video = jnp.asarray(video, jnp.float32)
        if mask is None:
            return _forward(self.params, video, None, graphdef=self.graphdef, num_masked=None)
        mask = np.asarray(mask, bool)
        tokens = self.num_tokens
        counts = mask.sum(axis=1) if mask.ndim == 2 else np.array([-1])
        if mask.shape != (video.shape[0], tokens) or counts.min() != counts.max() or not 0 < counts[0] < tokens:
            raise ValueError(f"The mask must be bool (batch, {tokens}) with the same number of masked (True) "
                             f"tokens in every row, some masked and some visible; got shape {mask.shape} with "
                             f"{sorted(set(counts.tolist()))} masked per row.")
        if decoder_mask is None:
            return _forward(self.params, video, jnp.asarray(mask), graphdef=self.graphdef, num_masked=int(counts[0]))
        decoder_mask = np.asarray(decoder_mask, bool)
        kept = (~decoder_mask).sum(axis=1) if decoder_mask.ndim == 2 else np.array([-1])
        if decoder_mask.shape != mask.shape or kept.min() != kept.max() or not 0 < kept[0] <= tokens:
            raise ValueError(f"The decoder mask must be bool (batch, {tokens}) like the mask, with the same number of "
                             f"decoded (False) tokens in every row, some decoded; got shape {decoder_mask.shape} "
                             f"with {sorted(set(kept.tolist()))} decoded per row.")
        return _forward(self.params, video, jnp.asarray(mask), jnp.asarray(decoder_mask), graphdef=self.graphdef,
                        num_masked=int(counts[0]), num_decoded=int(kept[0]))

    def __call__(self, video, mask=None):
        out = self.forward(video, mask)
        if self.config.head == "pretrain":
            return {"reconstruction": out["pred"], "loss": out["loss"]}
        if self.config.head == "classification":
            return out["logits"]
        return out["last_hidden_state"]


@dataclasses.dataclass
class PretrainedCaptioner(Pretrained):
    """A loaded video captioner (`vidjax.models.captioner`): video in, caption tokens or text out.

        logits = model(video, input_ids)                  # (B, L, vocab), as VisionEncoderDecoderModel's forward
        tokens = model.generate(video, max_new_tokens=20)   # (B, 1 + 20), the start token first, pad after EOS
        texts = model.caption(video)                      # needs a tokenizer in the checkpoint (DST/tokenizer/)

    `video` is normalised float32 (B, num_frames, S, S, 3) (`preprocess` makes it from uint8 frames), num_frames
    covering every chunk. Each function is jitted once per architecture, shapes and decoding settings.
    """

    tokenizer_dir: pathlib.Path | None = None

    def _check(self, video) -> None:
        t, s = self.preprocessing["num_frames"], self.preprocessing["image_size"]
        if tuple(np.shape(video)[1:]) != (t, s, s, 3):
            raise ValueError(f"This captioner takes video shaped (batch, {t}, {s}, {s}, 3) channels-last, "
                             f"normalised with mean {self.preprocessing['mean']} and std "
                             f"{self.preprocessing['std']}; got {tuple(np.shape(video))}.")

    def forward(self, video, input_ids, attention_mask=None) -> dict[str, jax.Array]:
        """Every output of the model: logits, the decoder's last_hidden_state and the visual tokens."""
        self._check(video)
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[0] != np.shape(video)[0]:
            raise ValueError(f"input_ids must be token ids (batch, length), one row per video; got shape "
                             f"{ids.shape} for {np.shape(video)[0]} videos.")
        mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        return _caption_forward(self.params, jnp.asarray(video, jnp.float32), jnp.asarray(ids, jnp.int32), mask,
                                graphdef=self.graphdef)

    def __call__(self, video, input_ids, attention_mask=None):
        return self.forward(video, input_ids, attention_mask)["logits"]

    def generate(self, video, *, max_new_tokens: int = 20, num_beams: int = 1, length_penalty: float = 1.0
                 ) -> np.ndarray:
        """Caption token ids (B, 1 + max_new_tokens): the start token, greedy (num_beams 1) or beam-search tokens,
        pad after EOS (where Hugging Face's `generate` returns fewer columns once every row has ended)."""
        self._check(video)
        return np.asarray(_caption_generate(self.params, jnp.asarray(video, jnp.float32), graphdef=self.graphdef,
                                            max_new_tokens=int(max_new_tokens), num_beams=int(num_beams),
                                            length_penalty=float(length_penalty)))

    @functools.cached_property
    def tokenizer(self):
        """The checkpoint's `vidjax.tokenizer.CaptionTokenizer` (an error when it was saved without one)."""
        return load_tokenizer(self.tokenizer_dir, f"This {self.model_name} checkpoint")

    def caption(self, video, *, max_new_tokens: int = 20, num_beams: int = 1, length_penalty: float = 1.0
                ) -> list[str]:
        """One caption per video: the generated tokens after the start token, up to EOS, as text."""
        tokenizer = self.tokenizer  # no tokenizer: fail before decoding
        ids = self.generate(video, max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty)
        return tokenizer.decode_generated(ids, self.config.decoder.eos_token_id)


def _token_ids(input_ids, attention_mask, limit: int, rows: int | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Token ids (B, L) and their mask as int32 device arrays, checked: 2-D, at most `limit` long, `rows` of them."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or (rows is not None and ids.shape[0] != rows):
        raise ValueError(f"input_ids must be int token ids (batch, length){f', {rows} rows' if rows else ''}; got "
                         f"{ids.dtype} {ids.shape}.")
    if ids.shape[1] > limit:
        raise ValueError(f"This text tower takes at most {limit} tokens; got {ids.shape[1]}.")
    if attention_mask is not None and np.shape(attention_mask) != ids.shape:
        raise ValueError(f"attention_mask must be shaped like input_ids {ids.shape}; got {np.shape(attention_mask)}.")
    mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    return jnp.asarray(ids, jnp.int32), mask


@dataclasses.dataclass
class PretrainedVideoText(Pretrained):
    """A loaded video-text model (VideoPrism's `head="clip"`, e.g. a converted VideoPrismClipModel).

        out = model.forward(video, input_ids, attention_mask)  # video_embeds, text_embeds, similarity, logits_per_*
        logits = model(video, input_ids, attention_mask)       # logits_per_video (Bv, Bt), as transformers'
        texts = model.text_embeddings(input_ids, attention_mask)  # (Bt, D), L2-normalised

    Texts and videos are batched apart: every video is scored against every text. `tokenizer_dir` is DST/tokenizer/
    when the conversion found the checkpoint's tokenizer files; with it, texts go in as text:

        ids, mask = model.tokenize(["a dog", "a cat"])      # as VideoPrismProcessor gives them, padded to the tower
        probs = model.zero_shot(video, ["a dog", "a cat"])  # (Bv, labels): softmax over the labels of similarity
    """

    tokenizer_dir: pathlib.Path | None = None

    @functools.cached_property
    def tokenizer(self) -> TextTowerTokenizer:
        """The checkpoint's `vidjax.tokenizer.TextTowerTokenizer` (a ValueError when it was converted without one)."""
        if self.tokenizer_dir is None:
            raise ValueError(f"This {self.model_name} video-text checkpoint has no tokenizer: convert a folder holding "
                             f"one (tokenizer.json beside the weights, as `tokenizer.save_pretrained(SRC)` writes it), "
                             f"or pass token ids to forward() yourself.")
        return TextTowerTokenizer.from_directory(self.tokenizer_dir)

    @property
    def max_text_length(self) -> int:
        """The text tower's positions: the most tokens a text may have (64 for the published towers)."""
        return int(self.config.max_text_length)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, attention mask) int32 (len(texts), max_text_length) of `texts`, as transformers' VideoPrism
        processor tokenises and pads them; a text longer than the tower raises `vidjax.tokenizer.TextTooLongError`."""
        return self.tokenizer.encode_padded(list(texts), self.max_text_length)

    def text_features(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), D): the text tower's (L2-normalised) embeddings of `texts`."""
        return np.asarray(self.text_embeddings(*self.tokenize(texts)))

    def zero_shot(self, video, texts: list[str], temperature: float = 1.0) -> np.ndarray:
        """float32 (Bv, len(texts)): each video's probabilities over `texts`, the softmax over the texts of
        similarity / `temperature` (transformers' logits_per_text, transposed, at its default of no temperature)."""
        videos = np.asarray(self.forward(video)["video_embeds"])
        return text_probabilities(videos, self.text_features(texts), temperature)

    def forward(self, video, input_ids=None, attention_mask=None) -> dict[str, jax.Array]:
        self._check(video)
        video = jnp.asarray(video, jnp.float32)
        if input_ids is None:
            return _forward(self.params, video, None, graphdef=self.graphdef, num_masked=None)
        ids, mask = _token_ids(input_ids, attention_mask, int(self.config.max_text_length))
        return _caption_forward(self.params, video, ids, mask, graphdef=self.graphdef)

    def __call__(self, video, input_ids, attention_mask=None):
        return self.forward(video, input_ids, attention_mask)["logits_per_video"]

    def text_embeddings(self, input_ids, attention_mask=None) -> jax.Array:
        """float32 (B, D): the text tower's embeddings of token ids (B, L), `attention_mask` 1 = token."""
        ids, mask = _token_ids(input_ids, attention_mask, int(self.config.max_text_length))
        return _text_embeddings(self.params, ids, mask, graphdef=self.graphdef)["text_embeds"]


def text_probabilities(video_embeds: np.ndarray, text_embeds: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 (Bv, Bt): softmax over the texts of video_embeds . text_embeds / temperature, per video."""
    logits = np.asarray(video_embeds, np.float64) @ np.asarray(text_embeds, np.float64).T / float(temperature)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def video_embeds(module: nnx.Module, video: jax.Array) -> jax.Array:
    """`fn(model, video)` for `BatchRunner`: a video model's own embedding of each clip, "video_embeds" (VideoPrism's
    attention-pooled, L2-normalised vector, which its text tower is trained against)."""
    return module(video)["video_embeds"].astype(jnp.float32)


def gives_video_embeds(model: Pretrained) -> bool:
    """Whether the model's forward pass gives "video_embeds" (worked out from shapes alone, nothing computed). A model
    whose clip tokens come from a part of it (SVT's backbone, a captioner's encoder: `models.tokens_part`) has none."""
    try:
        if tokens_part(model.model_name, model.config):
            return False
    except ValueError:  # a captioner encoding several chunks: no one clip's tokens either
        return False
    t, s = int(model.config.num_frames), int(model.config.image_size)
    shapes = jax.eval_shape(lambda params, video: nnx.merge(model.graphdef, params)(video), model.params,
                            jax.ShapeDtypeStruct((1, t, s, s, 3), jnp.float32))
    return "video_embeds" in shapes


class LabelScores:
    """Zero-shot scores of clips against texts: `run(clips)` has `BatchRunner.run`'s signature (one row per uint8
    clip), each row the clip's `text_probabilities` over the texts whose embeddings are `text_embeds` (N, D).
    `runner` is a `BatchRunner` (or one with its `run`) of `video_embeds`."""

    def __init__(self, runner, text_embeds: np.ndarray, temperature: float = 1.0):
        self.runner, self.text_embeds, self.temperature = runner, np.asarray(text_embeds), float(temperature)

    def run(self, clips: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for row in self.runner.run(clips):
            yield text_probabilities(row[None], self.text_embeds, self.temperature)[0]


@dataclasses.dataclass
class PretrainedText:
    """A loaded text model (GPT-2): `.model` is the NNX module; call it on token ids (B, L) for logits."""

    model_name: str
    config: ml_collections.ConfigDict
    graphdef: Any
    params: Any
    tokenizer_dir: pathlib.Path | None = None  # DST/tokenizer/ when the conversion found one

    @property
    def model(self) -> nnx.Module:
        """The vidjax NNX module holding these weights (e.g. to start a captioner's decoder)."""
        return nnx.merge(self.graphdef, self.params)

    def __call__(self, input_ids, attention_mask=None, encoder_hidden_states=None) -> jax.Array:
        """float32 logits (B, L, vocab); `attention_mask` (B, L), 1 = token; encoder states for cross-attention."""
        mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        enc = None if encoder_hidden_states is None else jnp.asarray(encoder_hidden_states, jnp.float32)
        return _text_forward(self.params, jnp.asarray(input_ids, jnp.int32), mask, enc, graphdef=self.graphdef)

    def generate(self, prompt_ids=None, *, max_new_tokens: int = 20, num_beams: int = 1,
                 length_penalty: float = 1.0, encoder_hidden_states=None) -> np.ndarray:
        """`vidjax.models.decoding`'s greedy (num_beams 1) or beam search: token ids (B, P + max_new_tokens)."""
        search = dict(max_new_tokens=max_new_tokens, prompt_ids=prompt_ids, encoder_hidden_states=encoder_hidden_states)
        if num_beams == 1:
            return np.asarray(decoding.greedy(self.model, **search))
        return np.asarray(decoding.beam_search(self.model, num_beams=num_beams, length_penalty=length_penalty,
                                               **search)[0])


def batched(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter), each taken from the iterable only as it is needed
    (`itertools.batched` of Python 3.12, which vidjax's 3.11 lacks)."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class BatchRunner:
    """`fn(model, video)` over many uint8 clips, in batches of a fixed size split over this host's devices.

    Each batch is normalised on the device, sharded over a data mesh of `jax.local_devices()` (parameters
    replicated) and run through one jitted function, so every batch reuses one compilation: the last batch is padded
    with black clips, whose outputs are dropped. `batch_size` is rounded up to a multiple of the device count.
    `fn` gets the NNX model and the normalised float32 video (B, T, H, W, 3) and returns one array with a leading
    batch axis; the outputs come back as numpy rows, in order, whatever the batch size. The compiled function is
    shared by runners of equal (architecture, `fn`, normalisation): give `fn` value equality (a module-level function
    or a frozen dataclass) to reuse it.
    """

    def __init__(self, model: Pretrained, fn: Callable[[nnx.Module, jax.Array], jax.Array], batch_size: int,
                 devices: list | None = None):
        self.mesh = sharding.create_mesh({"data": -1}, devices or jax.local_devices())
        self.batch_size = math.ceil(batch_size / self.mesh.size) * self.mesh.size
        self._batch_sharding = sharding.batch_sharding(self.mesh)
        self._params = jax.device_put(model.params, sharding.replicated(self.mesh))
        self._static = dict(graphdef=model.graphdef, fn=fn, mean=tuple(map(float, model.preprocessing["mean"])),
                            std=tuple(map(float, model.preprocessing["std"])))

    def run(self, clips: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """One output row per uint8 clip (T, H, W, 3) of `clips` (any iterable, consumed batch by batch)."""
        for chunk in batched(clips, self.batch_size):
            yield from self._run(chunk)

    def _run(self, clips: list[np.ndarray]) -> np.ndarray:
        batch = np.zeros((self.batch_size, *clips[0].shape), np.uint8)
        batch[: len(clips)] = np.stack(clips)
        out = _apply_batch(self._params, jax.device_put(batch, self._batch_sharding), **self._static)
        return np.asarray(jax.device_get(out))[: len(clips)]


# ------------------------------------------------------------------------------------------------ reading


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """What a checkpoint of either kind gives: the converted form plus the outputs' meaning."""

    converted: common.Converted
    task: str | None
    target_names: list[str] | None
    sampling_rate: int | None


@contextlib.contextmanager
def _quiet_orbax():
    # Orbax warns through absl that a bare item directory has no step metadata; restoring one item is intended.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _restore_params(directory: pathlib.Path, abstract: Any) -> Any:
    """Host numpy arrays: every process can read them, and no device holds a second copy of the model."""
    import orbax.checkpoint as ocp

    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, target)


def _task_of(model_name: str, config: ml_collections.ConfigDict) -> str | None:
    """The task a checkpoint that records none does with its model by itself, from the model alone (the tasks, a
    layer above, are not asked): a pre-training or classification head is named for its task, a captioner (its
    family's ready model) captions; None for a backbone (or a text model)."""
    if traits(model_name).ready_model == "captioner":
        return "captioning"
    head = config.get("head")
    return head if head in ("pretrain", "classification") else None


def _model_config(model_name: str, model: dict, where: str) -> ml_collections.ConfigDict:
    module = get_model(model_name)
    # A captioner's encoder block is the config of the video model it names.
    config = module.default_config(model["encoder_name"]) if "encoder_name" in model else module.default_config()
    unknown = set(model) - set(config)
    if unknown:
        raise ConversionError(f"{where} has model keys {sorted(unknown)} that this vidjax version does not "
                              f"know; it was written by a newer vidjax.")
    config.update(model)
    return config


def _read_converted(path: pathlib.Path) -> _Loaded:
    """vidjax.json and the flat numpy parameters of a converted checkpoint."""
    meta_path = path / common.META_FILE
    meta = json.loads(meta_path.read_text())
    config = _model_config(meta["model_name"], meta["model"], str(meta_path))
    # On disk per block (blocks/0/...), whatever config.model.scan_layers says: common.write_converted.
    params = _restore_params(path / common.PARAMS_DIR,
                             common.abstract_params(meta["model_name"], common.per_block_config(config)))
    flat = {k: np.asarray(v) for k, v in common.flatten_params(params).items()}
    preprocessing = dict(meta["preprocessing"])
    if "image_size" in preprocessing:
        preprocessing.setdefault("short_side", preprocessing["image_size"])
    converted = common.Converted(meta["model_name"], config, flat, preprocessing, meta.get("class_names"),
                                 meta.get("source", {}), task=meta.get("task"),
                                 target_names=meta.get("target_names"))
    rate = preprocessing.get("sampling_rate")
    return _Loaded(converted, converted.task or _task_of(meta["model_name"], config), converted.target_names,
                   int(rate) if rate else None)


def latest_step_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    """WORKDIR/checkpoints/<latest step>; orbax names finished steps by their number, in-progress ones otherwise."""
    directory = pathlib.Path(fileio.user_path(workdir)) / "checkpoints"
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()] if directory.is_dir() else []
    if not steps:
        raise ConversionError(f"{workdir} is a training workdir without a finished checkpoint in {directory}; "
                              f"train longer (config.checkpoint_every) or point at another run.")
    return directory / str(max(steps))


def _is_step_dir(path: pathlib.Path) -> bool:
    return (path / "state").is_dir() and (path / "config").is_dir()


def _read_json_item(step_dir: pathlib.Path, name: str) -> dict | None:
    import orbax.checkpoint as ocp

    if not (step_dir / name).is_dir():
        return None
    with _quiet_orbax(), ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        return checkpointer.restore(step_dir / name)


def _read_step_config(step_dir: pathlib.Path) -> tuple[dict, dict, str, ml_collections.ConfigDict, str | None]:
    """(saved config, metadata, model name, model block, task) of a trainer step folder: its "config" and "metadata"
    items (the metadata wins where both say)."""
    saved = _read_json_item(step_dir, "config")
    meta = _read_json_item(step_dir, "metadata") or {}
    model_name = meta.get("model_name") or saved["model_name"]
    model = _model_config(model_name, saved["model"], str(step_dir / "config"))
    return saved, meta, model_name, model, meta.get("task") or saved.get("task") or _task_of(model_name, model)


def _read_training(step_dir: pathlib.Path) -> _Loaded:
    """Params (EMA when saved) of one trainer checkpoint, with what its "metadata" item (or its config) says."""
    import orbax.checkpoint as ocp

    config, meta, model_name, model_config, task = _read_step_config(step_dir)
    with _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.metadata(step_dir / "state").item_metadata.tree
    key = "ema_params" if "ema_params" in saved else "params"
    abstract = common.abstract_params(model_name, model_config)
    target = {key: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    try:
        with _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
            params = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True))[key]
    except (ValueError, KeyError) as e:
        raise ConversionError(f"The parameters in {step_dir / 'state'} do not match the model its config "
                              f"describes ({model_name}): {e}") from e
    # Saved in the layout of the run's config.model.scan_layers; read per block, as converted weights are.
    flat = layers.flat_to_layout({k: np.asarray(v) for k, v in common.flatten_params(params).items()})

    data = config.get("data", {})
    preprocessing = dict(meta.get("preprocessing") or {})
    clips = clip_spec(model_name, model_config)
    if clips is not None:
        for key, value in clips.items():
            preprocessing.setdefault(key, list(value) if isinstance(value, tuple) else value)
        preprocessing.setdefault("sampling_rate", int(data.get("sampling_rate", 1)))
        # The eval pipeline's resize: config.data.short_side, 0 meaning the crop size.
        preprocessing.setdefault("short_side", int(data.get("short_side") or preprocessing["image_size"]))
    class_names = meta.get("class_names")
    if class_names is None and not meta:  # written before checkpoints had metadata: the config may name a file
        names_file = data.get("class_names_file")
        if names_file and pathlib.Path(names_file).is_file():
            class_names = sources.read_class_names(names_file)
    target_names = meta.get("target_names")
    if target_names is None and data.get("targets"):  # the run read regression targets: they name its outputs
        target_names = [t.strip() for t in data["targets"].split(",") if t.strip()]
    converted = common.Converted(model_name, model_config, flat, preprocessing, class_names,
                                 {"path": str(step_dir), "params": key})
    rate = preprocessing.get("sampling_rate")
    return _Loaded(converted, task, target_names, None if rate is None else int(rate))


_WHAT_LOADS = ("A checkpoint is a folder: one `python -m vidjax.convert` wrote (vidjax.json + params/), a training "
               "workdir or one of its step folders (WORKDIR/checkpoints/<step>), or a Hugging Face Hub name "
               "(owner/name).")


def _not_a_folder(path: pathlib.Path) -> str:
    """Why the file `path` is no checkpoint to load, and, for a checkpoint file of a family vidjax converts, the
    command that converts it."""
    try:
        kind = file_kind(path)
    except ConversionError:
        kind = None
    source = path
    if kind is None and (path.parent / "config.json").is_file():
        kind, source = "hf", path.parent  # a weights file of a save_pretrained folder: the folder converts
    convert = (f"; convert it once with `python -m vidjax.convert {common.FAMILIES[kind][1]} {source} --out "
               f"NEW_DIR` and load NEW_DIR" if kind else "")
    return f"{path} is a file, not a checkpoint folder{convert}. {_WHAT_LOADS}"


def _finite(loaded: _Loaded, where: pathlib.Path) -> _Loaded:
    """`loaded`, checked to hold no NaN or infinity (one np.isfinite pass over the parameters, once per load): such
    weights would make every prediction NaN."""
    common.check_finite(loaded.converted.params, str(where), "parameters")
    return loaded


def _read(path: str | pathlib.Path) -> _Loaded:
    """A converted checkpoint (DIR/vidjax.json), a training workdir (its latest step) or one step folder; a Hugging
    Face Hub name that is no local path is converted into vidjax's cache first (`vidjax.pretrained.hub`)."""
    path = hub.resolve(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist. {_WHAT_LOADS}")
    if not path.is_dir():
        raise ConversionError(_not_a_folder(path))
    if (path / common.META_FILE).is_file():
        return _finite(_read_converted(path), path)
    if (path / "checkpoints").is_dir():
        step_dir = latest_step_dir(path)
        return _finite(_read_training(step_dir), step_dir)
    if _is_step_dir(path):
        return _finite(_read_training(path), path)
    if (path / "config.json").is_file():
        # Conversion writes a new folder (it refuses a non-empty --out): suggest one beside the download.
        raise ConversionError(f"{path} is a Hugging Face checkpoint (config.json), not yet converted for vidjax. "
                              f"Convert it once into a new folder with `python -m vidjax.convert --from_hf {path} "
                              f"--out {path}_vidjax` and use that folder.")
    raise ConversionError(f"{path} is not a converted checkpoint (no {common.META_FILE}), a training workdir (no "
                          f"checkpoints/) nor a training step folder (WORKDIR/checkpoints/<step> with state/ and "
                          f"config/). Convert a published checkpoint into a new folder with `python -m "
                          f"vidjax.convert --from_hf SRC --out NEW_DIR`, or pass the --workdir of a training run.")


def _set_dtype(config: ml_collections.ConfigDict, dtype: str) -> None:
    """The compute dtype of a model block and of the model blocks nested in it (a captioner's encoder, decoder)."""
    if "dtype" in config:
        config.dtype = dtype
    for value in config.values():
        if isinstance(value, ml_collections.ConfigDict):
            _set_dtype(value, dtype)


# The ready model of a video model's checkpoint, by the kind its family declares (`vidjax.models.Traits.ready_model`).
READY_MODELS: dict[str, type[Pretrained]] = {"video": Pretrained, "captioner": PretrainedCaptioner}


def _ready_model(model_name: str) -> type[Pretrained]:
    """The class `load` and `init` build for a checkpoint of video model `model_name`: its family's kind of ready
    model (a video-text model's config then makes a "video" one a `PretrainedVideoText`)."""
    kind = traits(model_name).ready_model
    if kind not in READY_MODELS:
        raise ValueError(f"vidjax.models.{model_name}.TRAITS.ready_model={kind!r}; vidjax.pretrained builds "
                         f"{', '.join(map(repr, READY_MODELS))}.")
    return READY_MODELS[kind]


def load(path: str | pathlib.Path, *, num_frames: int | None = None, image_size: int | None = None,
         dtype: str | None = None) -> Pretrained | PretrainedCaptioner | PretrainedText:
    """Loads a `python -m vidjax.convert` output, a training workdir or a step folder of one, or a Hugging Face Hub
    name (`owner/name[@REV]`, `owner/name/file.pth[@REV]`: converted once into vidjax's cache: `pretrained.hub`).

    A training checkpoint gives its EMA parameters when it saved them, else its parameters; the optimizer state is
    never read. A video model's checkpoint can be adapted to another clip length or resolution; `dtype="bfloat16"`
    computes in bf16 (parameters stay float32). A captioner (a family whose traits' ready model is one) gives a
    `PretrainedCaptioner`, a model that takes no video (GPT-2) a `PretrainedText`; every other model a `Pretrained`
    (a `PretrainedVideoText` with a video-text head).
    """
    directory = hub.resolve(path)
    loaded = _read(directory)
    converted = loaded.converted
    if num_frames or image_size:
        converted = common.resize(converted, num_frames, image_size)
    config = converted.model_config
    if dtype:
        _set_dtype(config, dtype)
    # Built with the platform choices resolved for this backend; `config` keeps "auto" (vidjax/platform.py).
    model = common.abstract_model(converted.model_name, platform.resolve(config))
    num_tokens = getattr(getattr(model, "encoder", None), "num_tokens", None)
    graphdef, abstract = nnx.split(model)
    abstract = nnx.to_pure_dict(abstract)
    # Per block as read; stacked where config.model.scan_layers builds the blocks stacked.
    params = common.unflatten_params(abstract, layers.flat_to_layout(converted.params,
                                                                      common.flatten_params(abstract)))
    params = jax.device_put(params, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    tokenizer_dir = directory / TOKENIZER_DIR if (directory / TOKENIZER_DIR).is_dir() else None
    if clip_spec(converted.model_name, config) is None:
        return PretrainedText(converted.model_name, config, graphdef, params, tokenizer_dir)
    kind = _ready_model(converted.model_name)
    kind = PretrainedVideoText if kind is Pretrained and config.get("head") == "clip" else kind
    extra = {"tokenizer_dir": tokenizer_dir} if kind is not Pretrained else {}
    return kind(converted.model_name, config, dict(converted.preprocessing), converted.class_names, graphdef,
                params, num_tokens, task=loaded.task, target_names=loaded.target_names,
                sampling_rate=loaded.sampling_rate, **extra)


def as_converted(path: str | pathlib.Path) -> common.Converted:
    """Any checkpoint `load` takes, as the self-describing form `common.write_converted` writes (vidjax.json +
    params/ + tokenizer/) and `load` reads back alike, with no training run needed: a run's (EMA) weights, model,
    task, class and target names, clip settings and tokenizer."""
    directory = hub.resolve(path)
    loaded = _read(directory)
    converted = dataclasses.replace(loaded.converted, task=loaded.task, target_names=loaded.target_names,
                                    files=dict(loaded.converted.files))
    tokenizer = directory / TOKENIZER_DIR
    if tokenizer.is_dir():
        converted.files.update({f"{TOKENIZER_DIR}/{f.name}": str(f) for f in sorted(tokenizer.iterdir())
                                if f.is_file()})
    return converted


def init(model_name: str, model_config: ml_collections.ConfigDict, *, seed: int = 0,
         sampling_rate: int | None = None) -> Pretrained | PretrainedCaptioner:
    """A randomly initialised video model (`model_name` built from `model_config` with `seed`), as `load` gives a
    checkpoint's: the random-init baseline of probes (what the architecture and the pooling alone carry), and a
    stand-in where no checkpoint can be made. It reads clips at the model's frames and size with no extra resize
    (short side = image size), at `sampling_rate` (None: `DEFAULT_SAMPLING_RATE`)."""
    config = model_config.copy_and_resolve_references()
    spec = clip_spec(model_name, config)
    if spec is None:
        raise ValueError(f"pretrained.init builds video models; {model_name!r} takes no video.")
    with nnx.use_eager_sharding(False):
        model = get_model(model_name).Model(platform.resolve(config), rngs=ParamKeys(seed))
    graphdef, state = nnx.split(model)
    params = jax.device_put(nnx.to_pure_dict(state), jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    preprocessing = {"mean": list(spec["mean"]), "std": list(spec["std"]), "num_frames": spec["num_frames"],
                     "image_size": spec["image_size"], "short_side": spec["image_size"]}
    num_tokens = getattr(getattr(model, "encoder", None), "num_tokens", None)
    kind = _ready_model(model_name)
    return kind(model_name, config, preprocessing, None, graphdef, params, num_tokens,
                task=_task_of(model_name, config), sampling_rate=sampling_rate)


def load_for_command(path: str) -> Pretrained | None:
    """`load(path)` of a model that takes video, for the command lines: None, after an `error: --checkpoint=PATH:
    why` line on stderr."""
    try:
        model = load(path)
    except (ConversionError, ConfigError, FileNotFoundError) as e:
        print(f"error: --checkpoint={path}: {e}", file=sys.stderr)
        return None
    if isinstance(model, PretrainedText):
        print(f"error: --checkpoint={path} holds a {model.model_name} text model, which takes no video; give a "
              f"video model's checkpoint.", file=sys.stderr)
        return None
    return model


def part_converted(converted: common.Converted, model_name: str) -> common.Converted:
    """`converted` itself, or, where it is another family's model holding one `model_name` model (`models.part_of`:
    a distillation's student), that model: its block, its parameters (the subtree's, named without it) and the
    checkpoint's clip."""
    part = part_of(converted.model_name, converted.model_config, model_name)
    if converted.model_name == model_name or part is None:
        return converted
    subtree, block = part
    prefix = f"{subtree}/"
    params = {key[len(prefix):]: value for key, value in converted.params.items() if key.startswith(prefix)}
    return dataclasses.replace(converted, model_name=model_name, model_config=block, params=params)


def init_from(path: str | pathlib.Path, model_name: str, model_config: ml_collections.ConfigDict, params: Any, *,
              flag: str = "config.init_from") -> tuple[Any, dict[str, list[str]]]:
    """Fine-tuning start: `params` (a fresh, sharded model state) with every tensor the checkpoint has copied in.

    `path` is anything `load` takes (a converted checkpoint, or a training workdir such as a pre-training run).
    The checkpoint is first adapted to a video model's frames and resolution (position tables interpolated).
    `params` may be one part of a larger model, with that part's name and config: a captioner's decoder
    (`params["decoder"]`, "gpt2", `config.model.decoder`) started from a converted GPT-2, or its encoder.
    Tensors the checkpoint lacks (e.g. fc_norm after pre-training) and a head whose class count differs keep
    their fresh initialisation; any other shape mismatch is an error listing every such tensor and every model
    setting that differs from the checkpoint's. Returns the new params and a report {"loaded": [...], "fresh":
    [...], "unused": [...]} (unused: checkpoint tensors the configured model has no place for, e.g. a pre-training
    decoder). `flag` is how errors name `path` (evaluate's `--checkpoint`).
    """
    where = f"{flag}={str(path)!r}"
    converted = part_converted(_read(path).converted, model_name)
    if converted.model_name != model_name:
        raise ConfigError(f"{where} holds a {converted.model_name} checkpoint, but config.model_name is "
                          f"{model_name!r}.")
    if common.is_video_config(model_config):
        try:
            converted = common.resize(converted, model_config.num_frames, model_config.image_size)
        except ValueError as e:
            raise ConfigError(f"{where} cannot be adapted to {model_config.num_frames} frames x "
                              f"{model_config.image_size} px: {e}") from e
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    # The checkpoint's blocks (per block as read) in the layout of `params` (stacked with config.model.scan_layers).
    checkpoint_params = layers.flat_to_layout(converted.params, common.flatten_params(params))
    out, report = [], {"loaded": [], "fresh": [], "unused": []}
    mismatched = []
    for key_path, fresh in leaves:
        key = common.path_key(key_path)
        value = checkpoint_params.get(key)
        is_head = key.split("/")[0] == "head"
        if value is None or (is_head and value.shape != fresh.shape):
            report["fresh"].append(key)
            out.append(fresh)
            continue
        if value.shape != fresh.shape:
            mismatched.append(f"{key} has shape {value.shape} in the checkpoint but {fresh.shape} in the model")
            continue
        value = value.astype(fresh.dtype)
        out.append(jax.make_array_from_callback(fresh.shape, fresh.sharding, lambda index, v=value: v[index]))
        report["loaded"].append(key)
    if mismatched:
        differing = model_differences(converted.model_config, model_config, ARCHITECTURE_EXCLUDES)
        raise ConfigError(
            f"{where} does not fit the model config.model describes: parameter {'; '.join(mismatched[:4])}"
            f"{f' (and {len(mismatched) - 4} more)' if len(mismatched) > 4 else ''}. "
            + (f"The model settings that differ: {format_differences(differing, 'config.model')}. Use the "
               f"checkpoint's values (leave them unset on the command line and the fine-tune takes them), or a "
               f"checkpoint of this architecture." if differing else
               "Use the variant, width and depth of the checkpoint."))
    report["unused"] = sorted(set(checkpoint_params) - set(report["loaded"]) - set(report["fresh"]))
    if not report["loaded"]:
        raise ConfigError(f"{where} shares no parameter with the configured model.")
    return jax.tree_util.tree_unflatten(treedef, out), report


# ------------------------------------------------------------------------------- the config a checkpoint records

# Model keys a fine-tune decides for itself; every other key of a model block is architecture (variant, widths,
# depth, heads, MLP, patch and tubelet, norms, biases, input normalisation), which a fine-tune takes from its
# init_from checkpoint. Frames and resolution are adapted to (position tables interpolated), not taken.
ARCHITECTURE_EXCLUDES = frozenset({
    "num_frames", "image_size", "head", "num_classes", "head_init_scale", "head_dropout", "use_mean_pooling",
    "drop_path", "mask_ratio", "decoder_mask_type", "decoder_mask_ratio", "norm_pix_loss", "position_init",
    "dtype", "remat", "scan_layers", "scan_chunk", "resize_at_runtime",
    "freeze_encoder", "temperature_init",  # what a run trains (VideoPrism's frozen encoder; its clip temperature)
    *platform.FIELDS})  # the platform choices: attention_impl, backward, projection_form, block_gradients, scan
# Model keys an evaluation may set for a trained checkpoint: the clip it sees (position tables interpolated) and how
# the computation runs; every other key is the checkpoint's.
EVALUATION_KEYS = frozenset({"num_frames", "image_size", "drop_path", "head_dropout", "dtype", "remat",
                             "scan_layers", "scan_chunk", "resize_at_runtime", *platform.FIELDS})


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """What a checkpoint records about the model (and the run) that made it, read without its weights."""

    model_name: str
    model: ml_collections.ConfigDict  # the model block, every key filled in
    task: str | None  # pretrain | classification | multilabel | regression | captioning; None: a converted backbone
    class_names: list[str] | None
    training: ml_collections.ConfigDict | None  # the whole config of the run; None for a converted checkpoint
    metadata: dict | None = None  # a training checkpoint's "metadata" item (`train.checkpoint_metadata`)


def _as_config_value(value: Any) -> Any:
    # JSON gives lists where the config had tuples; configs hold no lists.
    if isinstance(value, list):
        return tuple(_as_config_value(v) for v in value)
    return value


def _merge_saved(base: ml_collections.ConfigDict, saved: dict) -> None:
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(base.get(key), ml_collections.ConfigDict):
            _merge_saved(base[key], value)
        elif key in base:
            base[key] = _as_config_value(value)
        else:  # a key this vidjax version does not define: kept, so the config reads back as it was saved
            with base.unlocked():
                base[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else _as_config_value(value)


def _training_config(saved: dict, model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config a run saved, on today's defaults: keys added to vidjax since keep their default values."""
    config = config_lib.trainer_config()
    with config.unlocked():
        config.model_name = saved["model_name"]
        config.model = model_config
        config.data = config_lib.data_config()
    _merge_saved(config, {k: v for k, v in saved.items() if k != "model"})
    config.lock()
    return config


def read_config(path: str | pathlib.Path) -> CheckpointConfig:
    """The model, task and class names a checkpoint records and, for a training checkpoint, its whole config."""
    path = hub.resolve(path)
    if (path / common.META_FILE).is_file():
        meta = json.loads((path / common.META_FILE).read_text())
        model = _model_config(meta["model_name"], meta["model"], str(path / common.META_FILE))
        return CheckpointConfig(meta["model_name"], model, meta.get("task") or _task_of(meta["model_name"], model),
                                meta.get("class_names"), None)
    if (path / "checkpoints").is_dir() or _is_step_dir(path):
        step_dir = latest_step_dir(path) if (path / "checkpoints").is_dir() else path
        saved, meta, model_name, model, task = _read_step_config(step_dir)
        training = _training_config({**saved, "model_name": model_name}, model.copy_and_resolve_references())
        return CheckpointConfig(model_name, model, task, meta.get("class_names"), training, meta)
    # Anything else goes through the loaders' one reading of a path, which explains what a checkpoint may be.
    loaded = _read(path)
    converted = loaded.converted
    return CheckpointConfig(converted.model_name, converted.model_config, loaded.task, converted.class_names, None)


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value))


def model_differences(checkpoint_model: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                      excluded: Collection[str] = ()) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, model's value)} of the model keys (outside `excluded`) whose values differ."""
    return {key: (checkpoint_model[key], model.get(key)) for key in checkpoint_model
            if key not in excluded and _comparable(checkpoint_model[key]) != _comparable(model.get(key))}


def format_differences(differences: dict[str, tuple[Any, Any]], prefix: str) -> str:
    """'width: checkpoint 32, config.model.width 48; ...' for `model_differences`' answer."""
    return "; ".join(f"{key}: checkpoint {theirs!r}, {prefix}.{key} {ours!r}" for key, (theirs, ours)
                     in differences.items())


def take_model(checkpoint_model: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
               explicit_keys: Collection[str] | None, where: str, *, keep: Collection[str] = (),
               free: Collection[str] = (), prefix: str = "model"
               ) -> tuple[ml_collections.ConfigDict, dict[str, tuple[Any, Any]]]:
    """The model block to build for a checkpoint: the checkpoint's, with the caller's values where they count.

    The caller's value of a key counts where the key is in `keep` (the caller decides it: a fine-tune's head, clip
    and regularisation) or the user chose it (`config_lib.chosen(explicit_keys, f"{prefix}.KEY")`). A chosen value
    outside `free` that differs from the checkpoint's is a conflict; all conflicts come out together in one
    ConfigError naming both values of each. `explicit_keys` None (a config built in Python) returns `model` as
    given: a mismatch in shapes is then `init_from`'s error. Returns (the model, {key: (checkpoint's value, the
    value replaced)} of what was taken from the checkpoint).
    """
    if explicit_keys is None:
        return model.copy_and_resolve_references(), {}

    def mine(key: str) -> bool:
        return key in keep or config_lib.chosen(explicit_keys, f"{prefix}.{key}")

    differing = model_differences(checkpoint_model, model)
    conflicts = {k: v for k, v in differing.items() if config_lib.chosen(explicit_keys, f"{prefix}.{k}")
                 and k not in free and k not in keep}
    if conflicts:
        raise ConfigError(f"{where} holds a model that differs from what the command line sets: "
                          f"{format_differences(conflicts, '--config.' + prefix)}. Drop those flags to take the "
                          f"checkpoint's values, or use a checkpoint with these.")
    result = checkpoint_model.copy_and_resolve_references()
    for key in result:
        if mine(key) and key in model:
            result[key] = model[key]
    return result, {k: v for k, v in differing.items() if not mine(k)}
