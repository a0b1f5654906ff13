"""Video models, looked up by name: `get_model("videomae")` imports `vidjax.models.videomae`.

Every model module exposes the same contract: a `Model(cfg, rngs=...)` NNX module built from `config.model`,
and `default_config()` giving that model's config block; a module whose family differs from the defaults of `Traits`
declares how in a module-level `TRAITS` (`traits(name)` reads it), so that the layers above ask the traits and never
compare family names. `clip_spec` says what clips a model takes, and `size_problems` what sizes in a block cannot
build a model.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from vidjax.config_lib import ConfigError

_NOT_MODELS = {"layers", "decoding", "positions"}


def _the_model_itself(cfg: Any) -> str:
    """`Traits.tokens_part`'s default: the model's own output gives the tokens."""
    del cfg
    return ""


def _no_parts(cfg: Any) -> dict:
    """`Traits.parts`' default: no model of another family inside."""
    del cfg
    return {}


def _head_and_params(cfg: Any, params: str) -> str:
    """`Traits.describe`'s default: the head a block builds (a video model's), then the parameter count."""
    return f"head {cfg.head}, {params}" if "head" in cfg else params


@dataclasses.dataclass(frozen=True)
class LayerLayout:
    """Where a family keeps its parameters, as paths in its params tree (`nnx.to_pure_dict(nnx.state(model))`), for
    layer-wise learning-rate decay (BEiT / VideoMAE fine-tuning), which numbers them (`vidjax.train.optim.layer_ids`):
    0 for the embedding, i + 1 for the i-th block, L + 1 for what follows the blocks. A parameter of the tree that
    none of the family's paths places is an error there, not a guess."""

    # The lists of blocks of each form the family's model takes (paths of the lists, whose entries are the block
    # indices, or with config.model.scan_layers one entry `layers.STACKED`), each form's lists in the order the model
    # runs them: stacks run one after the other count as one sequence of blocks.
    blocks: tuple[tuple[tuple[str, ...], ...], ...]
    # Before the first block: layer id 0.
    embedding: tuple[tuple[str, ...], ...] = ()
    # Between two stacks: the id of the last block before the stack named, the slot just below that stack's first
    # block (as the embedding takes the slot below the first block).
    between: Mapping[tuple[str, ...], tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # After the last block (final norm, head, a pre-training decoder): layer id L + 1.
    head: tuple[tuple[str, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A family's rows in the accelerator benchmark matrix (`vidjax.bench.matrix`)."""

    variant: str  # the full matrix's: the published size the rows time
    modes: tuple[str, ...]  # of the benchmark's: pretrain, pretrain_v2 (VideoMAE V2's dual masking), finetune, infer
    quick_variant: str  # --quick: the smallest the model takes, then cut to one block
    quick_model: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # --quick's other model settings
    # Why the PyTorch reference is not timed beside the rows on a GPU; "": it is.
    torch_gpu_note: str = ""
    # Where the family's rows stand in the matrix, lowest first (its table in docs/performance.md: the pre-training
    # family, then the others by when they came); families of the same place go in name order.
    place: int = 0


@dataclasses.dataclass(frozen=True)
class Traits:
    """What a model family declares about itself (a module-level `TRAITS = models.Traits(...)` in its module; one
    without takes these defaults), for the layers above it that would otherwise ask for its name. Each field has its
    readers; a new family sets only the fields where it differs."""

    # How the layers of its model are numbered for layer-wise lr decay (`vidjax.train.optim`); None: the family has
    # no single numbering of blocks, and layer decay is refused for it when the optimizer is made.
    layer_layout: LayerLayout | None = None
    # cfg -> the part of the model that gives a clip's tokens (`tokens_part`, read by `python -m vidjax.extract` and
    # the attentive probe): "" the model itself, else a submodule's name; a ValueError for a config without one.
    tokens_part: Callable[[Any], str] = _the_model_itself
    # The kind of ready model `vidjax.pretrained` builds for a checkpoint: "video" (a `Pretrained`; a video-text or
    # text model by its config) or "captioner" (a `PretrainedCaptioner`, which captions).
    ready_model: str = "video"
    # (cfg, "N.NNM params") -> what `python -m vidjax.convert`'s summary line says of a converted model, in brackets.
    describe: Callable[[Any, str], str] = _head_and_params
    # Its rows in the accelerator benchmark matrix; None: not in the matrix.
    benchmark: Benchmark | None = None
    # The roles its model takes in unmasked-teacher distillation (`vidjax.models.distill`): "teacher" (it has
    # `layer_targets`, `target_width` and `target_grid`), "student" (`layer_tokens`, `distill_width`, `distill_grid`).
    distill: tuple[str, ...] = ()
    # As a student, the masks it can run on (`vidjax.tasks.distill.MASK_TYPES`): a model that drops any tokens
    # takes them all; one whose attention needs the same positions in every frame (TimeSformer's divided
    # space-time attention) takes "tube" only.
    distill_masks: tuple[str, ...] = ()
    # cfg -> {parameter subtree: (model name, config block)}: the whole models of other families inside it, which
    # a checkpoint of it also is (a distillation's student: `init_from` and `load` read it as that model; `part_of`).
    parts: Callable[[Any], Mapping[str, tuple[str, Any]]] = _no_parts


def traits(name: str) -> Traits:
    """The traits model module `name` declares (its `TRAITS`), or the defaults for a module that declares none."""
    declared = getattr(get_model(name), "TRAITS", Traits())
    if not isinstance(declared, Traits):
        raise TypeError(f"vidjax.models.{name}.TRAITS is a {type(declared).__name__}; it must be a "
                        f"vidjax.models.Traits.")
    return declared


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


def part_of(model_name: str, cfg: Any, wanted: str) -> tuple[str, Any] | None:
    """(the parameter subtree, its config block) of the one `wanted` model inside a `model_name` model of block
    `cfg` (`Traits.parts`), or None when it holds none, or several."""
    found = [(subtree, block) for subtree, (name, block) in traits(model_name).parts(cfg).items() if name == wanted]
    return found[0] if len(found) == 1 else None


def tokens_part(model_name: str, cfg: Any) -> str:
    """Which part of a model `model_name` built from config block `cfg` gives a clip's tokens (B, tokens, D) after its
    final norm, as its family's traits say (`Traits.tokens_part`): "" the model itself (its output's
    "last_hidden_state"), or the name of a submodule ("encoder": a VideoMAE pre-training's, run on every token with no
    mask, or a captioner's video encoder; "backbone": SVT's TimeSformer under its DINO head). What `python -m
    vidjax.extract` pools and the `attentive` evaluator probes; a ValueError for a model whose clip is not one token
    sequence (a captioner encoding several chunks)."""
    return traits(model_name).tokens_part(cfg)


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
