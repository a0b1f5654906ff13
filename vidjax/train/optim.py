"""Optimizer (AdamW or SGD with momentum) and learning-rate schedule from `config.optimizer`, as the reference recipes
use them; parameters the model keeps frozen get no update."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vidjax import losses, models
from vidjax.config_lib import ConfigError
from vidjax.models import layers


def peak_lr(config: ml_collections.ConfigDict) -> float:
    """The reference's linear scaling rule: base_lr * global batch / lr_batch_base."""
    opt = config.optimizer
    return opt.base_lr * config.batch_size / opt.lr_batch_base


SCHEDULES = ("cosine", "constant", "steps", "wsd")

# The optimizer's numbers and their ranges: (key, low, high, whether low itself is allowed, what it is); high (None:
# no bound) is never allowed.
_RANGES = (("base_lr", 0.0, None, True, "the peak learning rate at lr_batch_base clips; 0: the weights stay"),
           ("lr_batch_base", 0.0, None, False, "the batch base_lr is given for"),
           ("min_lr", 0.0, None, True, "the schedule's floor"),
           ("warmup_epochs", 0.0, None, True, "epochs of linear warm-up"),
           ("b1", 0.0, 1.0, True, "AdamW's first-moment decay"),
           ("b2", 0.0, 1.0, True, "AdamW's second-moment decay"),
           ("eps", 0.0, None, True, "AdamW's epsilon"),
           ("weight_decay", 0.0, None, True, "0: none"),
           ("momentum", 0.0, 1.0, True, "SGD's momentum"),
           ("grad_clip", 0.0, None, True, "0: no clipping"),
           ("label_smoothing", 0.0, 1.0, True, "0: none"),
           ("ema_decay", 0.0, 1.0, True, "0: off"))


def optimizer_problems(config: ml_collections.ConfigDict) -> list[str]:
    """config.optimizer's numbers outside their ranges, each named with its range (a negative learning rate or a
    b1 of 1.5 would train, wrongly, without a word)."""
    problems = []
    for key, low, high, low_allowed, meaning in _RANGES:
        value = config.optimizer.get(key)
        if value is None:
            continue
        if (value < low if low_allowed else value <= low) or (high is not None and value >= high):
            span = ("[" if low_allowed else "(") + f"{low:g}, {'inf' if high is None else f'{high:g}'})"
            problems.append(f"config.optimizer.{key}={value!r} must be in {span} ({meaning}).")
    return problems


def make_schedule(config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int,
                  steps_per_epoch: int = 1) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then one of `config.optimizer.schedule`:

      cosine    cosine decay to min_lr at total_steps (VideoMAE, ViViT, VideoMamba)
      constant  the peak until the end
      steps     the peak times lr_step_scales[i] from epoch lr_steps[i] on (SlowFast / TimeSformer's
                "steps_with_relative_lrs": steps (11, 14) with scales (0.1, 0.01) over 15 epochs)
      wsd       warm-up, stable, decay (V-JEPA 2's `WSDSchedule`): the warm-up from warmup_start x the peak, the
                peak, then a linear cool-down to min_lr over the last cooldown_epochs (0: none)
    """
    opt = config.optimizer
    lr = peak_lr(config)
    if opt.schedule == "wsd":
        start = float(opt.get("warmup_start", 0.0)) * lr
        cooldown = min(int(round(float(opt.get("cooldown_epochs", 0.0)) * steps_per_epoch)),
                       max(total_steps - warmup_steps, 0))
        if not 0 <= start <= lr or cooldown < 0:
            raise ConfigError(f"config.optimizer.schedule='wsd' needs warmup_start in [0, 1] (got "
                              f"{opt.get('warmup_start')}) and cooldown_epochs >= 0 (got "
                              f"{opt.get('cooldown_epochs')}).")
        stable_end = total_steps - cooldown
        return optax.join_schedules(
            [optax.linear_schedule(start, lr, max(warmup_steps, 1)), optax.constant_schedule(lr),
             optax.linear_schedule(lr, min(opt.min_lr, lr), max(cooldown, 1))],
            [warmup_steps, max(stable_end, warmup_steps)])
    if opt.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1), end_value=min(opt.min_lr, lr))
    if opt.schedule in ("constant", "steps"):
        after_warmup = optax.constant_schedule(lr)
        if opt.schedule == "steps":
            epochs, scales = tuple(opt.lr_steps), tuple(opt.lr_step_scales)
            if len(epochs) != len(scales) or list(epochs) != sorted(epochs) or any(e <= 0 for e in epochs) \
                    or any(v <= 0 for v in scales):
                raise ConfigError(f"config.optimizer.schedule='steps' needs lr_steps (epochs, increasing, > 0) and "
                                  f"lr_step_scales (> 0) of the same length; got lr_steps={epochs}, "
                                  f"lr_step_scales={scales}, e.g. lr_steps=(11, 14), lr_step_scales=(0.1, 0.01).")
            boundaries = [round(e * steps_per_epoch) - warmup_steps for e in epochs]
            after_warmup = optax.join_schedules(
                [optax.constant_schedule(lr)] + [optax.constant_schedule(lr * v) for v in scales],
                [max(b, 0) for b in boundaries])
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), after_warmup],
                                    [warmup_steps])
    raise ConfigError(f"config.optimizer.schedule must be one of {', '.join(SCHEDULES)}, got {opt.schedule!r}.")


# Weight matrices decay; biases, norm scales, mask tokens and position tables do not, as in the reference's
# parameter groups. Chosen by name, not rank: VideoMAE's q/v biases are stored (heads, head_dim).
DECAYED_NAMES = frozenset({"kernel", "qkv", "proj"})


def decay_mask(params):
    """True for parameters that get weight decay (the last key of their path is in DECAYED_NAMES)."""
    def decays(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) in DECAYED_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


# ---- layer-wise learning-rate decay (BEiT / VideoMAE fine-tuning) ----
# Where each model family keeps its parameters, as paths in the params tree (`nnx.to_pure_dict(nnx.state(model))`),
# is what the family declares (`vidjax.models.LayerLayout`, its traits' `layer_layout`). A parameter none of them
# places is an error: a new layout is declared by its family, not guessed.


def layer_decay_models() -> list[str]:
    """The model families that declare a layer layout: those layer-wise lr decay numbers the blocks of."""
    return [name for name in models.available() if models.traits(name).layer_layout is not None]


def _layouts() -> tuple[tuple[tuple[tuple[str, ...], ...], ...], tuple[tuple[str, ...], ...],
                        dict[tuple[str, ...], tuple[str, ...]], tuple[tuple[str, ...], ...]]:
    """(the block lists of every form of every family, the embedding paths, the paths between stacks, the head
    paths) over the families' declared layouts: the tree alone tells which form it is (by its block lists)."""
    declared = [models.traits(name).layer_layout for name in layer_decay_models()]
    blocks = tuple(dict.fromkeys(form for layout in declared for form in layout.blocks))
    embedding = tuple(dict.fromkeys(path for layout in declared for path in layout.embedding))
    between = {path: stack for layout in declared for path, stack in layout.between.items()}
    head = tuple(dict.fromkeys(path for layout in declared for path in layout.head))
    return blocks, embedding, between, head


def _key_name(entry: Any) -> str | int:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def _starts_with(path: Sequence[str | int], prefix: tuple[str, ...]) -> bool:
    return tuple(str(p) for p in path[:len(prefix)]) == prefix


def _path_str(path: Sequence[str | int]) -> str:
    return "/".join(map(str, path))


def _is_stacked(path: tuple[str | int, ...], stack: tuple[str, ...]) -> bool:
    return len(path) > len(stack) and path[len(stack)] == layers.STACKED


def _block_index(path: tuple[str | int, ...], stack: tuple[str, ...]) -> int:
    entry = path[len(stack)] if len(path) > len(stack) else None
    try:
        return int(entry)
    except (TypeError, ValueError):
        raise ValueError(f"Layer decay: parameter {_path_str(path)} is under the block list {_path_str(stack)} but "
                         f"{entry!r} is not a block index; the params tree does not have the layout vidjax.train.optim "
                         f"expects (its family's declared `models.LayerLayout`).") from None


def layer_ids(params) -> tuple[Any, int]:
    """(tree of int layer ids with the structure of `params`, L = number of blocks), as BEiT/VideoMAE number them.

    0 for the embedding (everything before the first block), i + 1 for the i-th block of the model's block
    sequence (stacks run one after the other count as one sequence), L + 1 for what follows the blocks (final
    norm, fc_norm, head, a pre-training decoder). A stacked block parameter (config.model.scan_layers: the blocks
    along its leading axis) gets an int array, the ids of its blocks in order. Only the tree's paths (and stacked
    leaves' leading sizes) are read, so `params` may be abstract.
    Raises ValueError for a parameter the families' declared layouts (`models.LayerLayout`) do not place, or for a
    tree without a known list of blocks.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [tuple(_key_name(k) for k in path) for path, _ in flat]
    forms, embedding, between, head = _layouts()
    known_stacks = dict.fromkeys(stack for form in forms for stack in form)
    found = tuple(stack for stack in known_stacks if any(_starts_with(p, stack) for p in paths))
    layout = next((form for form in forms if set(form) == set(found)), None)
    if layout is None:
        raise ValueError(
            f"Layer decay: the params tree has the block lists [{', '.join(map(_path_str, found))}], which is not "
            f"the layout of a vidjax model ({', '.join(layer_decay_models())}: "
            f"{'; '.join(', '.join(map(_path_str, form)) for form in forms)}). Set "
            f"config.optimizer.layer_decay=1.0, or declare the model's layout in its module's TRAITS "
            f"(vidjax.models.LayerLayout).")
    leaves = [leaf for _, leaf in flat]
    offsets, counts = {}, {}
    for stack in layout:
        stacked = {leaf.shape[0] for p, leaf in zip(paths, leaves, strict=True)
                   if _starts_with(p, stack) and _is_stacked(p, stack)}
        indices = {_block_index(p, stack) for p in paths if _starts_with(p, stack) and not _is_stacked(p, stack)}
        if len(stacked) > 1 or (stacked and indices):
            raise ValueError(f"Layer decay: the blocks under {_path_str(stack)} are stacked with leading sizes "
                             f"{sorted(stacked)} and listed as {sorted(indices)}; the params tree is inconsistent.")
        indices |= set(range(next(iter(stacked), 0)))
        if indices != set(range(len(indices))):
            raise ValueError(f"Layer decay: the blocks under {_path_str(stack)} are numbered {sorted(indices)}, "
                             f"not 0..{len(indices) - 1}; the params tree is incomplete.")
        offsets[stack], counts[stack] = sum(counts.values()), len(indices)
    num_blocks = sum(counts.values())

    def layer_id(path: tuple[str | int, ...]) -> int | np.ndarray:
        for stack in layout:
            if _starts_with(path, stack) and _is_stacked(path, stack):
                return offsets[stack] + np.arange(counts[stack]) + 1
            if _starts_with(path, stack):
                return offsets[stack] + _block_index(path, stack) + 1
        if any(_starts_with(path, prefix) for prefix in embedding):
            return 0
        for prefix, stack in between.items():
            if _starts_with(path, prefix) and stack in offsets:
                return offsets[stack]
        if any(_starts_with(path, prefix) for prefix in head):
            return num_blocks + 1
        raise ValueError(f"Layer decay: no layer id for parameter {_path_str(path)}: it is not an embedding, block "
                         f"or head parameter of a known layout. Place it in its family's layer layout (the "
                         f"`models.LayerLayout` of its module's TRAITS), or set config.optimizer.layer_decay=1.0.")

    return jax.tree_util.tree_unflatten(treedef, [layer_id(p) for p in paths]), num_blocks


def layer_decay_scales(params, decay: float):
    """Learning-rate scale per parameter (a tree of floats like `params`): decay ** (L + 1 - layer id).

    The head's scale is 1 and the patch embedding's decay ** (L + 1), as the VideoMAE/BEiT fine-tuning recipes
    (`optim_factory.get_num_layer_for_vit`); decay 1.0 gives 1.0 everywhere. A stacked block parameter's scale is a
    float32 array of its blocks' scales shaped (blocks, 1, ..., 1), to broadcast along its leading axis.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"Layer decay must be in (0, 1], got {decay}; 1.0 turns it off.")
    ids, num_blocks = layer_ids(params)

    def scale(i, leaf):
        if isinstance(i, np.ndarray):
            values = np.array([float(decay ** (num_blocks + 1 - j)) for j in i.tolist()], np.float32)
            return values.reshape((-1,) + (1,) * (len(leaf.shape) - 1))
        return float(decay ** (num_blocks + 1 - i))

    return jax.tree.map(scale, ids, params)


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its `layer_decay_scales`; stateless (scales come from the updates' paths).

    An unknown parameter layout raises when the update is traced (the train step's compilation). `init` does not
    look at the params: optax.tree_map_params calls it with a placeholder instead of a tree.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        scales = layer_decay_scales(updates, decay)
        return jax.tree.map(lambda u, s: u * (s.astype(u.dtype) if isinstance(s, np.ndarray) else s), updates,
                            scales), state

    return optax.GradientTransformation(init_fn, update_fn)


# ---- frozen parameters ----

FROZEN, TRAINED = "frozen", "train"  # the labels of optax.multi_transform's two branches


def frozen_prefixes(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], ...]:
    """Path prefixes (as key tuples) of the parameters the model `config` builds keeps fixed: what its module's
    `frozen_prefixes(config.model)` names ('/'-joined, e.g. a captioner's frozen "encoder"); none for a model
    module without that function."""
    module = models.get_model(config.model_name)
    names = module.frozen_prefixes(config.model) if hasattr(module, "frozen_prefixes") else ()
    return tuple(tuple(name.split("/")) for name in names)


def frozen_labels(prefixes: Sequence[tuple[str, ...]]) -> Callable[[Any], Any]:
    """params -> tree of FROZEN / TRAINED like it: FROZEN where a parameter's path starts with one of `prefixes`."""

    def labels(params):
        def label(path, _):
            keys = tuple(_key_name(k) for k in path)
            return FROZEN if any(_starts_with(keys, prefix) for prefix in prefixes) else TRAINED

        return jax.tree_util.tree_map_with_path(label, params)

    return labels


OPTIMIZERS = ("adamw", "sgd")


GRAD_CLIP_MODES = ("global", "per_tensor")


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
    """Clips each gradient tensor on its own to L2 norm `max_norm`: g * min(1, max_norm / (|g| + 1e-6)), DINO's and
    SVT's `clip_gradients` (utils.py), where optax's `clip_by_global_norm` scales all of them by one factor. A
    stacked block gradient (config.model.scan_layers) is clipped block by block, as the per-block tensors are."""
    def update_fn(updates, state, params=None):
        def clip(path, g):
            stacked = layers.STACKED in (_key_name(k) for k in path)
            axes = tuple(range(1, g.ndim)) if stacked else None
            norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)), axis=axes, keepdims=stacked))
            return (g * jnp.minimum(1.0, max_norm / (norm + 1e-6))).astype(g.dtype)

        return jax.tree_util.tree_map_with_path(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def add_scheduled_decayed_weights(schedule: optax.Schedule, mask) -> optax.GradientTransformation:
    """`optax.add_decayed_weights` with a weight decay that follows `schedule(step)` (DINO / SVT: cosine from 0.04
    to 0.4), on the parameters `mask` selects."""
    def init_fn(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_scheduled_decayed_weights needs the parameters (tx.update(grads, state, params)).")
        decay = schedule(state.count)
        updates = jax.tree.map(lambda u, p: u + (decay * p).astype(u.dtype), updates, params)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.masked(optax.GradientTransformation(init_fn, update_fn), mask)


def weight_decay_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule | None:
    """The per-step weight decay when config.optimizer.weight_decay_end >= 0: cosine from weight_decay to it over
    the run (DINO's `cosine_scheduler` without warm-up); None: the constant weight_decay."""
    opt = config.optimizer
    if opt.weight_decay_end < 0:
        return None
    return losses.cosine_schedule(opt.weight_decay, opt.weight_decay_end, max(total_steps, 1))


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                   total_steps: int = 1) -> optax.GradientTransformation:
    """Clipping (if grad_clip > 0), the optimizer, then the layer-decay scales (if layer_decay < 1).

    Clipping is of the gradients' global norm (grad_clip_mode "global") or of each tensor's own norm ("per_tensor",
    DINO / SVT).
    adamw: AdamW (b1, b2, eps, decoupled weight_decay on decay_mask), the VideoMAE / ViViT / VideoMamba recipes;
    with weight_decay_end >= 0 the decay follows a cosine from weight_decay to it over `total_steps` (SVT).
    sgd: SGD with `momentum` (nesterov when `nesterov`, no dampening) and L2 weight decay added to the gradient
    before the momentum (on decay_mask), as PyTorch's `torch.optim.SGD(..., weight_decay=, nesterov=)` that
    TimeSformer's recipe (SlowFast's solver) uses.

    The scales multiply the whole update, so a layer's learning rate and weight decay shrink together, as the
    reference's per-layer `lr_scale` parameter groups do.

    When the model keeps parameters frozen (`frozen_prefixes`), that chain is the TRAINED branch of an
    `optax.multi_transform` whose FROZEN branch sets their updates to zero: they get no weight decay, the optimizer
    keeps no moments for them (optax.MaskedNode placeholders in its state) and clipping measures the trained
    gradients alone. Without frozen parameters the chain is returned as it is, so its state is unchanged.
    """
    opt = config.optimizer
    if opt.name not in OPTIMIZERS:
        raise ConfigError(f"config.optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {opt.name!r}.")
    layer_decay = opt.layer_decay
    if not 0.0 < layer_decay <= 1.0:
        raise ConfigError(f"config.optimizer.layer_decay must be in (0, 1] (1.0 = off; fine-tuning recipes use "
                          f"values such as 0.75), got {layer_decay}.")
    # A family without a declared layer layout (GPT-2; the captioner, a video encoder's blocks under "encoder/" and a
    # GPT-2 decoder's under "decoder/", neither at the root) has no single block numbering for the BEiT recipe to
    # follow: refused here rather than at the first step's compilation.
    if layer_decay < 1.0 and models.traits(config.model_name).layer_layout is None:
        raise ConfigError(f"config.optimizer.layer_decay={layer_decay}: layer-wise lr decay numbers the blocks of "
                          f"one video model ({', '.join(layer_decay_models())}), and model_name="
                          f"{config.model_name!r} has no such layout. Set config.optimizer.layer_decay=1.0 (a "
                          f"captioner keeps its encoder fixed with config.model.freeze_encoder=True instead).")
    if opt.grad_clip_mode not in GRAD_CLIP_MODES:
        raise ConfigError(f"config.optimizer.grad_clip_mode must be one of {', '.join(GRAD_CLIP_MODES)}, got "
                          f"{opt.grad_clip_mode!r}.")
    parts = []
    if opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip) if opt.grad_clip_mode == "global"
                     else clip_by_tensor_norm(opt.grad_clip))
    decay_schedule = weight_decay_schedule(config, total_steps)
    if decay_schedule is not None and opt.name != "adamw":
        raise ConfigError(f"config.optimizer.weight_decay_end={opt.weight_decay_end}: a weight decay schedule is "
                          f"AdamW's (SVT's recipe); set it to -1 (constant) for name={opt.name!r}.")
    if opt.name == "adamw" and decay_schedule is not None:
        # optax.adamw's chain, with the decay scheduled.
        parts += [optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
                  add_scheduled_decayed_weights(decay_schedule, decay_mask), optax.scale_by_learning_rate(schedule)]
    elif opt.name == "adamw":
        parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                                 mask=decay_mask))
    else:
        if not 0.0 <= opt.momentum < 1.0:
            raise ConfigError(f"config.optimizer.momentum={opt.momentum} must be in [0, 1).")
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
        parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=bool(opt.nesterov)))
    if layer_decay < 1.0:
        parts.append(scale_by_layer_decay(layer_decay))
    tx = optax.chain(*parts)
    frozen = frozen_prefixes(config)
    if not frozen:
        return tx
    return optax.multi_transform({TRAINED: tx, FROZEN: optax.set_to_zero()}, frozen_labels(frozen))
