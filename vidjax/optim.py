"""Optimizer and learning-rate schedule from `config.optimizer`, as in the VideoMAE reference recipes."""

from __future__ import annotations

import jax
import ml_collections
import optax

from vidjax.config_lib import ConfigError


def peak_lr(config: ml_collections.ConfigDict) -> float:
    """The reference's linear scaling rule: base_lr * global batch / lr_batch_base."""
    opt = config.optimizer
    return opt.base_lr * config.batch_size / opt.lr_batch_base


def make_schedule(config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then cosine down to min_lr (or constant) until total_steps."""
    opt = config.optimizer
    lr = peak_lr(config)
    if opt.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1), end_value=min(opt.min_lr, lr))
    if opt.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
                                     optax.constant_schedule(lr)], [warmup_steps])
    raise ConfigError(f"config.optimizer.schedule must be 'cosine' or 'constant', got {opt.schedule!r}.")


# Weight matrices decay; biases, norm scales, mask tokens and position tables do not, as in the reference's
# parameter groups. Chosen by name, not rank: VideoMAE's q/v biases are stored (heads, head_dim).
DECAYED_NAMES = frozenset({"kernel", "qkv", "proj"})


def decay_mask(params):
    """True for parameters that get weight decay (the last key of their path is in DECAYED_NAMES)."""
    def decays(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) in DECAYED_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    opt = config.optimizer
    if opt.name != "adamw":
        raise ConfigError(f"config.optimizer.name must be 'adamw', got {opt.name!r}.")
    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
