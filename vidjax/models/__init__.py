"""Video models, looked up by name: `get_model("videomae")` imports `vidjax.models.videomae`.

Every model module exposes the same contract: a `Model(cfg, rngs=...)` NNX module built from `config.model`,
and `default_config()` giving that model's config block. `clip_spec` says what clips a model takes, and
`size_problems` what sizes in a block cannot build a model.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any

from vidjax.config_lib import ConfigError

_NOT_MODELS = {"layers", "decoding", "positions"}


class ParamKeys:
    """The keys `nnx.Rngs(seed).params()` draws, counted in Python: what every model is built with in vidjax's own
    commands (`Model(cfg, rngs=ParamKeys(seed))`; `nnx.Rngs` works the same, more slowly under tracing).

    A model draws only `rngs.params()` while it is built (dropout and drop path take an `rng` per call). `nnx.Rngs`
    keeps its count in a flax Variable, and under tracing (jit, eval_shape) every draw then writes a traced count
    through `Variable.__setitem__`, whose sharding comparison makes JAX format a ConcretizationError's message:
    most of the time of building a model under tracing, which every run pays at start-up (0.5 of 0.77 s for the
    micro runlocal ViT). Here the count is a Python int, so the keys and the parameters are the same and nothing
    is traced but the draws themselves.
    """

    def __init__(self, seed: int):
        import jax  # here: looking a model up by name loads no jax

        self._random = jax.random
        self._key = jax.random.key(seed)
        self._count = 0

    def params(self) -> Any:
        """The next key, a `jax.Array` of the default PRNG implementation."""
        key = self._random.fold_in(self._key, self._count)
        self._count += 1
        return key


def available() -> list[str]:
    """Names of the model modules shipped with vidjax."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_MODELS)


def get_model(name: str) -> ModuleType:
    """The model module called `name`, with an error listing the known ones for a typo."""
    if name not in available():
        raise ValueError(f"Unknown model_name {name!r}; available models: {', '.join(available())}.")
    return importlib.import_module(f"vidjax.models.{name}")


def clip_spec(name: str, cfg: Any) -> dict[str, Any] | None:
    """num_frames, image_size, mean, std of the clips model `name` with config block `cfg` takes; None for a model
    that takes no video (GPT-2). The trainer, the input pipeline and the loaders read clips from here: a video
    model's block holds them at its top level, a model around a video encoder (the captioner) says them itself."""
    module = get_model(name)
    if hasattr(module, "clip_spec"):
        return module.clip_spec(cfg)
    if "num_frames" not in cfg or "image_size" not in cfg:
        return None
    return dict(num_frames=int(cfg.num_frames), image_size=int(cfg.image_size),
                mean=tuple(float(v) for v in cfg.pixel_mean), std=tuple(float(v) for v in cfg.pixel_std))


def tokens_part(model_name: str, cfg: Any) -> str:
    """Which part of a model `model_name` built from config block `cfg` gives a clip's tokens (B, tokens, D) after its
    final norm: "" the model itself (its output's "last_hidden_state"), "encoder" (a VideoMAE pre-training's, run on
    every token with no mask, or a captioner's video encoder) or "backbone" (SVT's TimeSformer under its DINO head).
    What `python -m vidjax.extract` pools and the `attentive` evaluator probes; a ValueError for a model whose clip is
    not one token sequence (a captioner encoding several chunks)."""
    if model_name == "svt":
        return "backbone"
    if model_name == "captioner":
        if int(cfg.num_chunks) != 1:
            raise ValueError(f"this captioner encodes {cfg.num_chunks} chunks per clip (config.model.num_chunks); "
                             f"the tokens of a clip are read from single-chunk captioners' encoders.")
        return "encoder"
    return "encoder" if cfg.get("head") == "pretrain" else ""


def tokens_module(model: Any, part: str) -> Any:
    """The module of `model` that gives its tokens: `part` of it (`tokens_part`), or the model itself for ""."""
    return getattr(model, part) if part else model


def video_tokens(model: Any, part: str, video: Any) -> Any:
    """The tokens (B, tokens, D), in the model's dtype, that `part` (`tokens_part`) of `model` gives for `video`."""
    out = tokens_module(model, part)(video)
    return out["last_hidden_state"] if isinstance(out, dict) else out


# Sizes that must be above 0; the other integer keys of a model block may be 0 (the variant's or the model's default).
_POSITIVE_SIZES = {"image_size", "num_frames", "tubelet_size", "d_conv", "d_state", "expand", "scan_chunk",
                   "num_chunks"}
# (width, heads) pairs of a block: the heads must divide the width (0: the variant's).
_HEADS = (("width", "num_heads"), ("decoder_width", "decoder_heads"), ("predictor_width", "predictor_heads"))


def size_problems(cfg: Any, where: str = "config.model") -> list[str]:
    """The sizes of model block `cfg` (and the blocks in it) that cannot build a model, each named by its key: a
    negative size (0 where 0 has no default), attention heads that do not divide the width (with a ViT variant, the
    variant's width or heads where the other is set)."""
    from vidjax.models import layers  # here: looking a model up by name loads no jax

    problems = []
    for key, value in cfg.items():
        if hasattr(value, "items"):
            problems += size_problems(value, f"{where}.{key}")
        elif isinstance(value, int) and not isinstance(value, bool) and (
                value < 0 or (value == 0 and key in _POSITIVE_SIZES)):
            problems.append(f"{where}.{key}={value} must be " + (
                "above 0." if key in _POSITIVE_SIZES else "0 (the variant's or the model's default) or above."))
    for width_key, heads_key in _HEADS:
        width, heads = cfg.get(width_key), cfg.get(heads_key)
        if not isinstance(width, int) or not isinstance(heads, int) or width < 0 or heads < 0:
            continue
        if width_key == "width" and "variant" in cfg and (width == 0) != (heads == 0):
            try:  # one given: the other is the variant's
                dims = layers.vit_dims(cfg.variant, width, None, heads)
                width, heads = dims["width"], dims["num_heads"]
            except (ConfigError, KeyError, ValueError):
                pass  # not a ViT variant (or a bad one: reported where the model reads it)
        if width and heads and width % heads:
            problems.append(f"{where}.{heads_key}={heads} does not divide {where}.{width_key}={width} (every "
                            f"attention head takes an equal share of the width): choose heads that divide it.")
    return problems
