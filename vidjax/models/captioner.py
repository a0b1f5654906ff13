"""Video captioner: a vidjax video encoder's tokens, cross-attended by a GPT-2 decoder that writes the caption.

The layout of Hugging Face's `VisionEncoderDecoderModel` (which `vidjax.convert` converts into this model): the
encoder's `last_hidden_state`, projected by a linear `enc_to_dec_proj` when its width differs from the width the
decoder's cross-attention reads, conditions every decoder block's cross-attention. vidjax adds what captioning long
clips needs, set in `config.model`:

- `encoder_name`: any vidjax video model (`ENCODERS`); `encoder` is that model's config block, built without a
  head (`head="none"`), and `decoder` a `vidjax.models.gpt2` block with cross-attention.
- `visual_tokens`: "all" (every encoder token, as Hugging Face), "cls" (the CLS token; TimeSformer, VideoMamba, and
  ViViT with a token classifier have one, VideoMAE has none) or "pooled" (a learned weighted average over the
  tokens, the weights a softmax over tokens of `pool`: "weights", one learned weight per token position, or
  "scorer", a linear layer scoring each token).
- `num_chunks` K: a clip of K x encoder num_frames frames is cut into K consecutive chunks, each encoded (and
  reduced to one token when "cls" or "pooled") on its own; the chunks' tokens are concatenated in time order.
- `projection`: "auto" (a linear map when the encoder width differs from the decoder's cross-attention width),
  "linear" (always) or "none" (widths must agree: an error at construction otherwise).
- `freeze_encoder`: the encoder's output is cut from the gradient (`jax.lax.stop_gradient`) and the encoder runs
  without dropout; its parameters are the subtree `ENCODER` ("encoder/..."), which an optimizer must also leave
  alone (weight decay would still move them): `frozen_prefixes(cfg)` names them.

`model(video, input_ids)` gives the decoder's logits (B, L, vocab); `model.generate(video, max_new_tokens)` token ids
(B, 1 + max_new_tokens), the start token (`decoder.bos_token_id`, Hugging Face's decoder_start_token_id) first.
Inputs are channels-last float videos (B, K*T, H, W, 3), normalised with the encoder's `pixel_mean/pixel_std`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidjax import platform
from vidjax.models import Traits, decoding, get_model, gpt2, layers, vivit

ENCODERS = ("videomae", "timesformer", "vivit", "videomamba")  # video models whose tokens a captioner reads
ENCODER = "encoder"  # the parameter subtree of the encoder
VISUAL_TOKENS = ("cls", "all", "pooled")
POOLS = ("weights", "scorer")
PROJECTIONS = ("auto", "none", "linear")


def _has_cls_token(encoder_name: str, cfg: ml_collections.ConfigDict) -> bool:
    """Whether the encoder's `last_hidden_state` starts with a CLS token."""
    if encoder_name == "vivit":
        return vivit.classifier_of(cfg) == "token"
    return encoder_name in ("timesformer", "videomamba")


def _tokens_part(cfg: ml_collections.ConfigDict) -> str:
    """A clip's tokens are the video encoder's, read from a single-chunk captioner only: with several chunks a clip
    is no one token sequence."""
    if int(cfg.num_chunks) != 1:
        raise ValueError(f"this captioner encodes {cfg.num_chunks} chunks per clip (config.model.num_chunks); "
                         f"the tokens of a clip are read from single-chunk captioners' encoders.")
    return "encoder"


def _describe(cfg: ml_collections.ConfigDict, params: str) -> str:
    """What the convert command's summary says of a captioner: its encoder, its decoder's vocabulary, its size."""
    return f"{cfg.encoder_name} encoder, GPT-2 decoder of {cfg.decoder.vocab_size} tokens, {params}"


# Loaded as a `PretrainedCaptioner`, which captions.
TRAITS = Traits(tokens_part=_tokens_part, ready_model="captioner", describe=_describe)


def frozen_prefixes(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The parameter subtrees ('/'-joined path prefixes) training must not change: ("encoder",) when frozen."""
    return (ENCODER,) if cfg.freeze_encoder else ()


def clip_spec(cfg: ml_collections.ConfigDict) -> dict:
    """The clips this captioner takes: num_frames (all chunks), image_size and the encoder's normalisation."""
    enc = cfg.encoder
    return dict(num_frames=int(cfg.num_chunks) * int(enc.num_frames), image_size=int(enc.image_size),
                mean=tuple(float(v) for v in enc.pixel_mean), std=tuple(float(v) for v in enc.pixel_std))


def _check_config(cfg: ml_collections.ConfigDict) -> None:
    if cfg.encoder_name not in ENCODERS:
        raise ValueError(f"config.model.encoder_name={cfg.encoder_name!r}; a captioner's encoder is one of "
                         f"{', '.join(ENCODERS)}.")
    if cfg.encoder.get("head") != "none":
        raise ValueError(f"config.model.encoder.head={cfg.encoder.get('head')!r}: the captioner reads the encoder's "
                         f"tokens, so its encoder has no head; set it to 'none'.")
    for key, choices in (("visual_tokens", VISUAL_TOKENS), ("pool", POOLS), ("projection", PROJECTIONS)):
        if cfg[key] not in choices:
            raise ValueError(f"config.model.{key}={cfg[key]!r}; choose one of {', '.join(choices)}.")
    if int(cfg.num_chunks) < 1:
        raise ValueError(f"config.model.num_chunks={cfg.num_chunks}; it must be at least 1.")
    if cfg.visual_tokens == "cls" and not _has_cls_token(cfg.encoder_name, cfg.encoder):
        raise ValueError(f"config.model.visual_tokens='cls', but this {cfg.encoder_name} encoder has no CLS token; "
                         f"use 'pooled' (a learned weighted average of its tokens) or 'all'.")
    if not cfg.decoder.add_cross_attention:
        raise ValueError("config.model.decoder.add_cross_attention=False: the captioner's decoder reads the video "
                         "through cross-attention; set it to True.")


class Model(nnx.Module):
    """Video encoder + GPT-2 decoder (see the module docstring).

    `model(video, input_ids, attention_mask=None, rng=None)` -> {"logits" (B, L, vocab) float32,
    "last_hidden_state" (B, L, decoder width), "visual_tokens" (B, S, cross-attention width)}. `attention_mask`
    (B, L), 1 = token, 0 = padding. Dropout (and the encoder's drop path, unless frozen) runs when `rng` is given.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        _check_config(cfg)
        self.visual_tokens, self.num_chunks = cfg.visual_tokens, int(cfg.num_chunks)
        self.freeze_encoder = bool(cfg.freeze_encoder)
        self.frames, self.image_size = int(cfg.encoder.num_frames), int(cfg.encoder.image_size)
        self.encoder = get_model(cfg.encoder_name).Model(cfg.encoder, rngs=rngs)
        num_tokens, enc_width = self._encoder_output_shape()
        dec_width = cfg.decoder.cross_attention_width or cfg.decoder.width
        if cfg.projection == "none" and enc_width != dec_width:
            raise ValueError(f"config.model.projection='none', but the {cfg.encoder_name} encoder's tokens have width "
                             f"{enc_width} and the decoder's cross-attention reads width {dec_width} "
                             f"(config.model.decoder.cross_attention_width or width). Set config.model.projection to "
                             f"'auto' or 'linear' (a learned enc_to_dec_proj), or "
                             f"config.model.decoder.cross_attention_width={enc_width}.")
        self.num_tokens, self.encoder_width, self.token_width = num_tokens, enc_width, dec_width
        dtype = jnp.dtype(cfg.decoder.dtype)
        choices = platform.choices(cfg.decoder, platform.TEXT_FIELDS, where="config.model.decoder")  # its layers'
        pooled = cfg.visual_tokens == "pooled"
        # Zero weights: training starts from the plain mean over tokens.
        self.pool_weights = (nnx.Param(jnp.zeros((num_tokens,), jnp.float32), out_sharding=("positions",))
                             if pooled and cfg.pool == "weights" else None)
        self.pool_scorer = (layers.Dense(enc_width, 1, ("embed", None), kernel_init=nnx.initializers.normal(0.02),
                                         choices=choices, rngs=rngs) if pooled and cfg.pool == "scorer" else None)
        project = cfg.projection == "linear" or (cfg.projection == "auto" and enc_width != dec_width)
        self.enc_to_dec_proj = (layers.Dense(enc_width, dec_width, ("embed", "embed"), dtype=dtype, choices=choices,
                                             rngs=rngs) if project else None)
        decoder_cfg = ml_collections.ConfigDict(cfg.decoder.to_dict())
        decoder_cfg.cross_attention_width = dec_width
        self.decoder = gpt2.Model(decoder_cfg, rngs=rngs)

    def _encoder_output_shape(self) -> tuple[int, int]:
        """(tokens, width) of the encoder's last_hidden_state for one chunk, traced without computing anything."""
        video = jax.ShapeDtypeStruct((1, self.frames, self.image_size, self.image_size, 3), jnp.float32)
        graphdef, state = nnx.split(self.encoder)
        shape = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s)(v)["last_hidden_state"], state, video).shape
        return int(shape[1]), int(shape[2])

    @property
    def num_frames(self) -> int:
        """Frames per clip: num_chunks x the encoder's num_frames."""
        return self.num_chunks * self.frames

    @property
    def tokens_per_clip(self) -> int:
        """Visual tokens the decoder cross-attends to for one clip."""
        return self.num_chunks * (self.num_tokens if self.visual_tokens == "all" else 1)

    def _reduce(self, hidden_BND: jax.Array) -> jax.Array:
        """One chunk's encoder tokens -> its visual tokens: all of them, the CLS token, or their weighted average."""
        if self.visual_tokens == "all":
            return hidden_BND
        if self.visual_tokens == "cls":
            return hidden_BND[:, :1]
        if self.pool_weights is not None:
            scores_BN = jnp.broadcast_to(self.pool_weights[...], hidden_BND.shape[:2])
        else:
            scores_BN = self.pool_scorer(hidden_BND.astype(jnp.float32))[..., 0]
        return layers.softmax_pool(scores_BN, hidden_BND)[:, None].astype(hidden_BND.dtype)

    def encode(self, video: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Normalised video (B, K*T, H, W, 3) -> (visual tokens (B, S, cross-attention width), bool mask (B, S)).

        Every token is real (the mask is all True); it is what the decoder's `encoder_attention_mask` takes.
        """
        shape = tuple(video.shape)
        expected = (self.num_frames, self.image_size, self.image_size, 3)
        if len(shape) != 5 or shape[1:] != expected:
            raise ValueError(f"This captioner takes videos shaped (batch, {', '.join(map(str, expected))}) "
                             f"channels-last: {self.num_chunks} chunk(s) (config.model.num_chunks) of "
                             f"{self.frames} frames (config.model.encoder.num_frames); got {shape}.")
        b, k = shape[0], self.num_chunks
        chunks = video.reshape(b * k, self.frames, *expected[1:])  # consecutive frames: chunk i is row b*K + i
        hidden = self.encoder(chunks, rng=None if self.freeze_encoder else rng)["last_hidden_state"]
        if self.freeze_encoder:
            hidden = jax.lax.stop_gradient(hidden)
        tokens = self._reduce(hidden)
        tokens = tokens.reshape(b, k * tokens.shape[1], tokens.shape[2])
        if self.enc_to_dec_proj is not None:
            tokens = self.enc_to_dec_proj(tokens)
        return tokens, jnp.ones(tokens.shape[:2], bool)

    def __call__(self, video: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        rng_enc, rng_dec = jax.random.split(rng) if rng is not None else (None, None)
        tokens, token_mask = self.encode(video, rng_enc)
        out = self.decoder(input_ids, attention_mask=attention_mask, encoder_hidden_states=tokens,
                           encoder_attention_mask=token_mask, rng=rng_dec)
        return {**out, "visual_tokens": tokens}

    def generate(self, video: jax.Array, max_new_tokens: int, num_beams: int = 1, length_penalty: float = 1.0
                 ) -> jax.Array:
        """Caption token ids (B, 1 + max_new_tokens) int32: the start token, then greedy (num_beams 1) or beam
        search continuations, `decoder.pad_token_id` after EOS. Shapes are fixed: it runs inside `jax.jit`."""
        tokens, token_mask = self.encode(video)
        search = dict(max_new_tokens=max_new_tokens, encoder_hidden_states=tokens, encoder_attention_mask=token_mask)
        if num_beams == 1:
            return decoding.greedy(self.decoder, **search)
        return decoding.beam_search(self.decoder, num_beams=num_beams, length_penalty=length_penalty, **search)[0]


def default_config(encoder_name: str = "videomae") -> ml_collections.ConfigDict:
    """The model block of a captioner config around `encoder_name`'s default config (without a head) and GPT-2
    small with cross-attention. Configs set the encoder's size, frames and resolution in `encoder`."""
    if encoder_name not in ENCODERS:
        raise ValueError(f"config.model.encoder_name={encoder_name!r}; a captioner's encoder is one of "
                         f"{', '.join(ENCODERS)}.")
    encoder = get_model(encoder_name).default_config()
    encoder.head = "none"
    if encoder_name == "videomae":
        # End with the final LayerNorm, as pre-trained VideoMAE checkpoints do (use_mean_pooling only decides that
        # when there is no head).
        encoder.use_mean_pooling = False
    decoder = gpt2.default_config()
    decoder.add_cross_attention = True
    return ml_collections.ConfigDict(dict(
        encoder_name=encoder_name,
        encoder=encoder,
        decoder=decoder,
        visual_tokens="all",  # all | cls | pooled
        pool="weights",  # pooled: weights (one learned weight per token position) | scorer (a linear token score)
        num_chunks=1,  # clips of num_chunks x encoder.num_frames frames, each chunk encoded on its own
        projection="auto",  # auto (linear when widths differ) | linear | none
        freeze_encoder=False,
    ))
