"""How a clip's tokens become one embedding: the `--pool` of `python -m vidjax.extract` and of the ONNX export's
embeddings (`vidjax.pretrained.onnx_export`), as a function of the model and a normalised clip that
`pretrained.BatchRunner` runs (`pool_fn`).

  mean    the mean over the patch tokens (a CLS token, when the model has one, is left out), then the model's
          fc_norm when it has one (VideoMAE classifiers with mean pooling): exactly the vector its head reads.
  cls     the CLS token (TimeSformer, ViViT with a token classifier, VideoMamba); VideoMAE has none.
  tokens  every token: (B, tokens, D).
  video   the model's own video embedding, for models that have one (`pretrained.video_embeds`: VideoPrism's).
The tokens are those of the part of the model that sees the clip (`models.tokens_part`: SVT's backbone, a
captioner's video encoder).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vidjax import models, pretrained

POOLS = ("mean", "cls", "tokens", "video")


def has_cls_token(model: pretrained.Pretrained) -> bool:
    """Whether the model's last hidden state starts with a CLS token."""
    part = models.tokens_part(model.model_name, model.config)
    return getattr(models.tokens_module(model.model, part), "cls_token", None) is not None


@dataclasses.dataclass(frozen=True)
class _Pool:
    """`fn(model, video)` for `BatchRunner`, comparable by value so that equal poolings share one compilation."""

    pool: str
    cls: bool
    part: str  # `models.tokens_part`

    def __call__(self, module, video):
        hidden = models.video_tokens(module, self.part, video)
        if self.pool == "tokens":
            return hidden.astype(jnp.float32)
        if self.pool == "cls":
            return hidden[:, 0].astype(jnp.float32)
        pooled = jnp.mean((hidden[:, 1:] if self.cls else hidden).astype(jnp.float32), axis=1)
        fc_norm = getattr(models.tokens_module(module, self.part), "fc_norm", None)
        return fc_norm(pooled) if fc_norm is not None else pooled


def pool_fn(model: pretrained.Pretrained, pool: str):
    """`fn(model, video)` for `BatchRunner`: the pooled embedding of each clip (see the module docstring); a
    ValueError naming --pool when the model has no such pooling."""
    if pool not in POOLS:
        raise ValueError(f"--pool={pool!r}; choose one of {', '.join(POOLS)}.")
    if pool == "video":
        if not pretrained.gives_video_embeds(model):
            raise ValueError(f"--pool=video: this {model.model_name} checkpoint (head {model.config.get('head')!r}) "
                             f"gives no video embedding (VideoPrism's video and video-text models do); use "
                             f"--pool=mean.")
        return pretrained.video_embeds
    part = models.tokens_part(model.model_name, model.config)
    cls = has_cls_token(model)
    if pool == "cls" and not cls:
        raise ValueError(f"--pool=cls: this {model.model_name} model has no CLS token (its tokens are all patches); "
                         f"use --pool=mean.")
    return _Pool(pool, cls, part)
