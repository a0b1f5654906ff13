"""Contrastive video-text training: a video-text model (VideoPrism's `head="clip"`, `vidjax.models.videoprism`) learns
to place each video next to its caption, as VideoPrism's first stage does (Zhao et al., 2024, after CLIP and CoCa).

One step: every video of the global batch and one of its captions (a random reference at every visit, the first for
evaluation) go through the two towers; the similarities of every video with every caption of the batch, times the
learned 1 / temperature (`Model.contrastive_scale`: exp of the parameter `logit_scale`, capped at 100, started at
config.model.temperature_init), are the logits of a symmetric InfoNCE: the mean of the cross-entropy of each video
over the captions and of each caption over the videos, the matching pair being the target. The batch is the global
one, sharded like every recipe's: the similarities are computed over all of it, so 8 devices give 1's loss (and
config.grad_accum_steps, which would contrast micro-batches alone, is refused: `batch_coupled`).

Captions are tokenised in the input workers (`captioning.CaptionFields`, cut to config.caption.max_length and
padded) by the text tower's tokenizer (`captioning.tokenizer_for(text_tower=True)`, a
`vidjax.tokenizer.TextTowerTokenizer`: config.data.tokenizer's directory, e.g. a converted checkpoint's
DST/tokenizer, or a word-level one built from the training captions), saved into WORKDIR/tokenizer: the ids a
trained model's zero-shot use (`python -m vidjax.zeroshot`, `predict --labels`, `Pretrained.tokenize`) reads the
same tokenizer into. A unigram vocabulary (a published tower) frames each caption as VideoPrism's processor does,
any other as [start] + tokens + [end]. The text tower's vocabulary (config.model.vocab_size, 0: the
tokenizer's) follows it. Captions come from any source that carries them (`captioning.CAPTION_SOURCES`: the
embedded dataset's "captions" variant, csv and Charades lists with config.data.caption_column).

Evaluation (`vidjax.evaluators.retrieval`): every eval video and its first caption are embedded; each caption
queries the whole split's videos (text-to-video recall@1/5/10, median rank) and each video the captions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidjax.config_lib import ConfigError, chosen
from vidjax.tasks import base, captioning, presentation, readout


def info_nce(similarity: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(symmetric InfoNCE, video-to-text loss, text-to-video loss) of a (B, B) float32 similarity matrix, row i the
    i-th video against every caption, caption i its match; `scale` multiplies the similarities (1 / temperature)."""
    logits = similarity * scale
    labels = jnp.arange(logits.shape[0])
    video_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    text_to_video = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return (video_to_text + text_to_video) / 2, video_to_text, text_to_video


def embed(model, batch: dict, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """The video-text model's outputs for a batch's videos and tokenised captions ("video_embeds", "text_embeds",
    "similarity" (B, B), ...)."""
    return model(batch["video"], batch["caption_ids"], batch["caption_mask"], rng=rng)


class Training(base.TrainingSpec):
    name = "contrastive"
    head = "clip"  # the video-text model: vision encoder, auxiliary blocks, pooler and the text tower
    model_name, recipe = "videoprism", "configs/videoprism.py"
    target_key = "captions"
    synthetic_task = "captions"
    pads_eval = True  # retrieval ranks every eval video against every caption
    evaluator = "retrieval"
    batch_coupled = ("it contrasts each video with every caption of its batch, and micro-batches would contrast "
                     "fewer")

    # ---- what it needs ----
    def config_problems(self, config: ml_collections.ConfigDict) -> list[str]:
        problems = captioning.caption_data_problems(config)
        max_length, limit = int(config.caption.max_length), int(config.model.get("max_text_length", 0))
        if max_length < 2:
            problems.append(f"config.caption.max_length={max_length} must be >= 2 (start and end tokens).")
        elif limit and max_length > limit:
            problems.append(f"config.caption.max_length={max_length} exceeds the text tower's "
                            f"config.model.max_text_length={limit} tokens; lower it.")
        if config.data.num_samples != 1:
            problems.append(f"config.data.num_samples={config.data.num_samples}: repeated clips of one video would be "
                            f"each other's negatives in the contrastive loss; set it to 1.")
        if config.model_name == self.model_name and not config.model.temperature_init > 0:
            problems.append(f"config.model.temperature_init={config.model.temperature_init} must be > 0 (the "
                            f"learned temperature's start; CLIP's 0.07).")
        return problems

    def resolve(self, config: ml_collections.ConfigDict, train_source, explicit_keys) -> list[str]:
        """The text tower's vocabulary follows the tokenizer: config.model.vocab_size 0 becomes its size, and a
        smaller one is refused."""
        if config.model_name != self.model_name:
            return []  # config_problems says so
        try:
            tok = captioning.tokenizer_for(config, train_source, text_tower=True)
        except ConfigError as err:
            return [str(err)]
        model = config.model
        if not model.vocab_size:
            model.vocab_size = tok.vocab_size
        if model.vocab_size < tok.vocab_size:
            how = "drop --config.model.vocab_size" if chosen(explicit_keys, "model.vocab_size") else "set it to 0"
            return [f"config.model.vocab_size={model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} "
                    f"tokens (config.data.tokenizer={config.data.tokenizer!r}): {how} to take the tokenizer's size, "
                    f"or use the tokenizer the text tower was trained with."]
        return []

    def write_assets(self, config: ml_collections.ConfigDict, train_source, workdir: str) -> None:
        captioning.save_tokenizer(config, train_source, workdir, text_tower=True)

    # ---- what the input path gives it ----
    def element_fields(self, config: ml_collections.ConfigDict, train: bool) -> captioning.CaptionFields:
        return captioning.CaptionFields(captioning.tokenizer_for(config, text_tower=True),
                                        int(config.caption.max_length))

    # ---- training ----
    def loss_fn(self, config: ml_collections.ConfigDict, class_weights: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> base.LossFn:
        def symmetric_info_nce(model, batch: dict, rng: jax.Array | None) -> tuple[jax.Array, dict]:
            out = embed(model, batch, rng)
            similarity = out["similarity"]
            scale = model.contrastive_scale()
            loss, video_to_text, text_to_video = info_nce(similarity, scale)
            matches = jnp.arange(similarity.shape[0])
            return loss, {
                "loss_video_to_text": video_to_text, "loss_text_to_video": text_to_video,
                "temperature": 1.0 / scale,
                # In-batch retrieval: each caption's best video, and each video's best caption, is its match.
                "batch_text_to_video_top1": jnp.mean(jnp.argmax(similarity, axis=0) == matches),
                "batch_video_to_text_top1": jnp.mean(jnp.argmax(similarity, axis=1) == matches),
                "truncated": jnp.mean(batch["caption_truncated"].astype(jnp.float32))}

        return symmetric_info_nce


class Readout(readout.Readout):
    """Its checkpoints are read as video-text models (`vidjax.pretrained.load(...)`: `forward(video, input_ids,
    attention_mask)` with the video and text embeddings and their similarities), or through their features
    (`python -m vidjax.extract`)."""

    name = Training.name
    target_key = Training.target_key


TRAINING = Training()
READOUT = Readout()
PRESENTATION = presentation.Presentation(name=Training.name, checkpoint_kind="a video-text (contrastive)",
                                         purpose="video-text retrieval")
