"""Captioning: a captioner (`vidjax.models.captioner`) learns to write each video's caption.

Training is teacher-forced: each video's caption (a random one of its references at every visit, the first for
evaluation) is tokenised in the input workers as [start] + tokens + [end], cut to config.caption.max_length and
padded; the loss is the cross-entropy of every real next token (the end token included, padding excluded).
Evaluation (`vidjax.evaluators.captioning`) decodes on the device inside the jitted eval step (beam search with
config.caption.num_beams, greedy at 1) and scores the captions on the host against every reference with the COCO
caption evaluation (`vidjax.metrics.caption_scores`: BLEU-1..4, ROUGE-L, CIDEr-D), beside `bleu4_constant`, the
BLEU-4 of always answering the most frequent training caption: what a captioner that ignores the video scores.

The tokenizer is config.data.tokenizer (a Hugging Face tokenizer directory such as GPT-2's), or a word-level one
built from the training captions; either way it is saved into WORKDIR/tokenizer, which the run's checkpoints then
name, so `evaluate`, `predict` and `pretrained.load(WORKDIR).caption(...)` need nothing else. The decoder's
vocabulary size (0 in a config: the tokenizer's) and its start, end and padding ids follow the tokenizer unless
the command line sets them.

A run starts its encoder from config.init_from (a video model's checkpoint: a pre-training or fine-tuning run, or
a converted one) and its decoder from config.decoder_init (a converted GPT-2), or the whole captioner from a
captioner checkpoint in config.init_from.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vidjax import fileio, metrics, pretrained
from vidjax.config_lib import ConfigError, chosen
from vidjax.convert.common import ConversionError
from vidjax.data import pipeline, synthetic
from vidjax.models import ParamKeys, captioner
from vidjax.tasks import base, presentation, readout
from vidjax.tokenizer import CaptionTokenizer, TextTowerTokenizer, TokenizerError

TOKENIZER_DIR = "tokenizer"  # in the workdir, as in a converted checkpoint (pretrained.load reads it)
CAPTION_SOURCES = ("synthetic", "csv", "charades")  # the sources that carry captions
# Decoder keys a run decides rather than taking a GPT-2 checkpoint's: the captioner reads the video through
# cross-attention, its dropout is the recipe's, and its special ids are the tokenizer's.
_DECODER_KEEPS = frozenset({"add_cross_attention", "cross_attention_width", "embd_dropout", "attn_dropout",
                            "resid_dropout", "bos_token_id", "eos_token_id", "pad_token_id"})
_SPECIAL_IDS = (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id"), ("pad_token_id", "pad_id"))

_tokenizers: dict = {}  # (kind, key...) -> a tokenizer: one reading or building per process


def training_captions(config: ml_collections.ConfigDict, train_source) -> list[str]:
    """Every reference caption of the training split (the embedded dataset: every caption it can produce)."""
    if config.data.source == "synthetic":
        return synthetic.caption_corpus(config.data.num_classes or synthetic.NUM_CLASSES)
    return [caption for i in range(len(train_source)) for caption in train_source[i]["captions"]]


def tokenizer_for(config: ml_collections.ConfigDict, train_source=None, text_tower: bool = False):
    """The run's `vidjax.tokenizer.CaptionTokenizer`: config.data.tokenizer's directory, else a word-level tokenizer
    built from the training captions (of `train_source`, or the source config.data makes). `text_tower`: the
    `vidjax.tokenizer.TextTowerTokenizer` of the same (a video-text model's texts, framed as its zero-shot use reads
    them: a unigram vocabulary as VideoPrism's processor does, any other as a caption). Read or built once per
    process. Raises ConfigError naming config.data.tokenizer for a directory that cannot be read."""
    if config.data.tokenizer:
        directory = fileio.user_path(config.data.tokenizer)
        key = ("directory", directory, text_tower)
        if key not in _tokenizers:
            try:
                _tokenizers[key] = (TextTowerTokenizer if text_tower else CaptionTokenizer).from_directory(directory)
            except (TokenizerError, ImportError, OSError) as err:
                unigram = "a video-text checkpoint's DST/tokenizer (a unigram tokenizer.json), " if text_tower else ""
                raise ConfigError(f"config.data.tokenizer={config.data.tokenizer!r}: {str(err).rstrip('.')}. Point "
                                  f"it at {unigram}a Hugging Face tokenizer directory (tokenizer.json, or GPT-2's "
                                  f"vocab.json + merges.txt), or set it to '' for a word-level tokenizer built from "
                                  f"the training captions.") from err
        return _tokenizers[key]
    if train_source is None:
        train_source = pipeline.make_source(config.data, "train")
    key = ("built", repr(train_source), config.data.num_classes)
    if key not in _tokenizers:
        try:
            _tokenizers[key] = CaptionTokenizer.build_word_level(training_captions(config, train_source))
        except ImportError as err:
            raise ConfigError(str(err)) from err
    return TextTowerTokenizer.from_caption_tokenizer(_tokenizers[key]) if text_tower else _tokenizers[key]


def caption_data_problems(config: ml_collections.ConfigDict) -> list[str]:
    """A data config without captions (a source that has none, a list without its caption column), for the tasks
    that read them (config.task names which)."""
    source = config.data.source
    if source not in CAPTION_SOURCES:
        return [f"config.data.source={source!r} has no captions; config.task={config.task!r} reads them from "
                f"{', '.join(CAPTION_SOURCES)} (docs/datasets.md)."]
    if source != "synthetic" and not config.data.caption_column:
        column = "'script' or 'descriptions'" if source == "charades" else "e.g. 'caption'"
        return [f"config.task={config.task!r} reads each video's captions from a column of the {source} list, but "
                f"config.data.caption_column is empty: set --config.data.caption_column ({column})."]
    return []


def save_tokenizer(config: ml_collections.ConfigDict, train_source, workdir: str, text_tower: bool = False) -> None:
    """The run's tokenizer (`tokenizer_for`) into WORKDIR/tokenizer (process 0), and config.data.tokenizer pointing
    there (`TrainingSpec.write_assets` of the tasks that tokenise captions)."""
    tok = tokenizer_for(config, train_source, text_tower)
    directory = os.path.join(workdir, TOKENIZER_DIR)
    if jax.process_index() == 0:
        tok.save(directory)
    config.data.tokenizer = directory
    _tokenizers[("directory", fileio.user_path(directory), text_tower)] = tok


@dataclasses.dataclass(frozen=True)
class CaptionFields:
    """The caption fields of one element, made in the input workers: one reference tokenised
    (`TrainingSpec.element_fields`).

    caption_ids int32 (L,): [start] + tokens + [end], padded; caption_mask bool (L,): True at real tokens;
    caption_truncated bool: the caption lost its end to max_length."""

    tokenizer: object
    max_length: int

    def __call__(self, element: dict, rng: np.random.Generator | None) -> dict:
        references = element["captions"]
        text = references[int(rng.integers(len(references)))] if rng is not None else references[0]
        ids, mask, truncated = self.tokenizer.encode_batch_padded([text], self.max_length)
        return {"caption_ids": ids[0], "caption_mask": mask[0], "caption_truncated": truncated[0]}


def token_nll(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(per-token negative log-likelihood (B, L-1), real-token weights (B, L-1), logits) of the teacher-forced
    captions: the model reads tokens 0..L-2 and predicts 1..L-1."""
    ids, mask = batch["caption_ids"], batch["caption_mask"]
    logits = model(batch["video"], ids[:, :-1], attention_mask=mask[:, :-1], rng=rng)["logits"].astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    return nll, mask[:, 1:].astype(jnp.float32), logits


def _model_problems(model: ml_collections.ConfigDict) -> list[str]:
    """What the captioner's construction refuses (an encoder without a CLS token for "cls", a width mismatch without
    a projection, ...), found by building its shapes alone, before anything is compiled."""
    model = model.copy_and_resolve_references()
    model.decoder.vocab_size = model.decoder.vocab_size or 1  # 0 = the tokenizer's, settled later (`resolve`)
    try:
        with nnx.use_eager_sharding(False):
            nnx.eval_shape(lambda: captioner.Model(model, rngs=ParamKeys(0)))
    except ValueError as err:
        return [str(err)]
    return []


class Training(base.TrainingSpec):
    name = "captioning"
    head = None  # a captioner has no classification head
    target_key = "captions"
    synthetic_task = "captions"
    model_name, recipe = "captioner", "configs/captioning_charades.py"
    evaluator = "captioning"

    # ---- what it needs ----
    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        problems = caption_data_problems(config)
        cap = config.caption
        if cap.max_length < 2 or cap.num_beams < 1 or cap.samples < 0:
            problems.append(f"config.caption: max_length={cap.max_length} must be >= 2 (start and end tokens), "
                            f"num_beams={cap.num_beams} >= 1 and samples={cap.samples} >= 0.")
        if config.model_name == "captioner":
            problems += _model_problems(config.model)
        decoder = config.model.get("decoder")
        if decoder is not None and cap.max_length > decoder.n_positions:
            problems.append(f"config.caption.max_length={cap.max_length} exceeds the decoder's "
                            f"config.model.decoder.n_positions={decoder.n_positions} positions; lower it.")
        return problems

    def init_targets(self, config: ml_collections.ConfigDict) -> list[base.InitTarget]:
        targets = []
        if config.init_from:
            try:
                whole = pretrained.read_config(config.init_from).model_name == "captioner"
            except (ConversionError, ConfigError, OSError, ValueError):
                whole = False  # `train.prepare` reads it again and reports what is wrong
            if whole:
                targets.append(base.InitTarget("config.init_from", config.init_from, "captioner", (), ()))
            else:
                targets.append(base.InitTarget("config.init_from", config.init_from, config.model.encoder_name,
                                               ("encoder",), (captioner.ENCODER,)))
        if config.decoder_init:
            targets.append(base.InitTarget("config.decoder_init", config.decoder_init, "gpt2", ("decoder",),
                                           ("decoder",), keep=pretrained.ARCHITECTURE_EXCLUDES | _DECODER_KEEPS))
        return targets

    def resolve(self, config: ml_collections.ConfigDict, train_source, explicit_keys) -> list[str]:
        """The decoder's vocabulary and special ids follow the tokenizer: vocab_size 0 becomes its size, and the
        start, end and padding ids are its own unless the command line sets them."""
        if config.model_name != "captioner":
            return []  # config_problems says so
        try:
            tok = tokenizer_for(config, train_source)
        except ConfigError as err:
            return [str(err)]
        decoder = config.model.decoder
        if not decoder.vocab_size:
            decoder.vocab_size = tok.vocab_size
        for key, attribute in _SPECIAL_IDS:
            if explicit_keys is None or not chosen(explicit_keys, f"model.decoder.{key}"):
                decoder[key] = getattr(tok, attribute)
        if decoder.vocab_size < tok.vocab_size:
            return [f"config.model.decoder.vocab_size={decoder.vocab_size} is smaller than the tokenizer's "
                    f"{tok.vocab_size} tokens (config.data.tokenizer={config.data.tokenizer!r}): set it to 0 to take "
                    f"the tokenizer's size, or use the tokenizer the decoder was trained with."]
        return []

    def element_fields(self, config: ml_collections.ConfigDict, train: bool) -> CaptionFields:
        return CaptionFields(tokenizer_for(config), int(config.caption.max_length))

    def write_assets(self, config: ml_collections.ConfigDict, train_source, workdir: str) -> None:
        save_tokenizer(config, train_source, workdir)

    # ---- training ----
    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        def loss_fn(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            nll, weights, logits = token_nll(model, batch, rng)
            count = jnp.maximum(weights.sum(), 1.0)
            correct = (jnp.argmax(logits, -1) == batch["caption_ids"][:, 1:]) * weights
            return (nll * weights).sum() / count, {
                "token_accuracy": correct.sum() / count,
                "truncated": jnp.mean(batch["caption_truncated"].astype(jnp.float32))}

        return loss_fn

    # ---- what its evaluator computes with it ----
    def caption_losses(self, model, batch: dict) -> jax.Array:
        nll, weights, _ = token_nll(model, batch, None)
        return (nll * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

    # ---- what a checkpoint records ----
    def metadata(self, config: ml_collections.ConfigDict, train_source) -> dict:
        """The most frequent training caption (`metrics.constant_caption`), for `bleu4_constant`."""
        if config.data.source == "synthetic":  # the captions of the clips trained on, not every possible one
            captions = [c for i in range(len(train_source)) for c in train_source[i]["captions"]]
        else:
            captions = training_captions(config, train_source)
        return {"class_names": None, "target_names": None, "constant_caption": metrics.constant_caption(captions)}


class Readout(readout.Readout):
    """A caption a video: `predict` and `pretrained.load(...).caption` decode it (`vidjax.models.captioner`)."""

    name = Training.name
    target_key = Training.target_key
    output_kind = "caption"
    predicts = True

    def decode_captions(self, config: ml_collections.ConfigDict, tokens: np.ndarray) -> list[str]:
        """Read with the run's tokenizer (`tokenizer_for`), each up to the decoder's end token."""
        return tokenizer_for(config).decode_generated(tokens, config.model.decoder.eos_token_id)


TRAINING = Training()
READOUT = Readout()
PRESENTATION = presentation.Presentation(
    name=Training.name, demo_output="caption", demo_head=Training.head,
    description="the caption of the middle window's clip", examples=Training.synthetic_task, purpose="video captioning",
    hub_pipeline_tag="video-text-to-text")
