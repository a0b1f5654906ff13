"""The one trainer: pre-training and fine-tuning differ only in the model, loss, data and evals the config picks.

Flow: input (fails fast on missing data) -> mesh -> model (abstract, then a jitted init straight into its
shardings) -> checkpoint restore or init -> jitted, donated update step -> loop (its batches put on the devices
ahead by a prefetch thread) with one-step-late metrics, checkpoints and the evaluators of config.evals
(`vidjax.evaluators`, each at its own cadence) -> their figures at the end (a confusion matrix, a reconstruction).

`train_and_evaluate` runs these as named phases: `_set_up` (input, model, shardings, checkpointer, evaluators),
`_restore` (the latest checkpoint that restores), `_start` (the step compiles on a thread while the state is
initialised and the initial weights evaluated), `_loop` (steps, `Progress` handling their metrics, checkpoints,
preemption, `_evaluate`) and `_finish` (figures, summary).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import datetime
import functools
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidjax import (
    compile_cache,
    config_lib,
    evaluators,
    fileio,
    losses,
    metric_writer,
    mixup,
    platform,
    preemption,
    pretrained,
    sharding,
    tasks,
)
from vidjax.config_lib import ConfigError, chosen, raise_problems
from vidjax.convert.common import ConversionError
from vidjax.data import pipeline
from vidjax.metric_writer import MetricWriter, read_metrics
from vidjax.models import ParamKeys, clip_spec, get_model, part_of, size_problems
from vidjax.ops import pixels
from vidjax.tasks import base
from vidjax.train import checkpoint, optim


class NonFiniteLossError(RuntimeError):
    """Raised when the loss, gradients or updated parameters stop being finite; the last good checkpoint stays."""


@dataclasses.dataclass
class Setup:
    """Everything built from a config before the loop: shared by training, evaluation and benchmarks."""

    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    abstract_model: nnx.Module
    tx: object
    schedule: object
    state_shardings: dict
    abstract_state: dict
    init_state: object  # () -> state, jitted with out_shardings
    init_params: object  # () -> fresh params alone (no optimizer state), jitted with out_shardings
    total_steps: int
    steps_per_epoch: int


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Config mistakes that would otherwise surface late, each named with the flag that fixes it: all of them, so
    that one run reports everything there is to fix."""
    problems = []
    try:
        task = tasks.training_of(config.task)
    except ConfigError as err:
        problems.append(str(err))
        task = None
    head = config.model.get("head", "pretrain")
    if task is not None and task.head is not None and task.head != head:
        problems.append(f"config.task={config.task!r} does not match config.model.head={head!r}: that task trains "
                        f"head={task.head!r}" + (" (a linear head with one output per class or target)"
                                                  if task.head == "classification" else "")
                        + f"; set --config.model.head={task.head}, or choose the task the head is for.")
    if task is not None and task.model_name and config.model_name != task.model_name:
        problems.append(f"config.task={config.task!r} trains the {task.model_name} model, but config.model_name="
                        f"{config.model_name!r}: set --config.model_name={task.model_name} with its model block "
                        f"({task.recipe} is the recipe).")
    if task is not None:
        problems += [problem for problem in [task.accumulation_problem(config)] if problem]
        problems += task.config_problems(config)
        problems += evaluators.config_problems(config, task)
    problems += metric_writer.wandb_problems(config)
    loss = config.loss
    if min(loss.mixup_alpha, loss.cutmix_alpha) < 0 or not (0 <= loss.mixup_prob <= 1 and
                                                           0 <= loss.mixup_switch_prob <= 1):
        problems.append(f"config.loss: mixup_alpha={loss.mixup_alpha} and cutmix_alpha={loss.cutmix_alpha} must be "
                        f">= 0, mixup_prob={loss.mixup_prob} and mixup_switch_prob={loss.mixup_switch_prob} in "
                        f"[0, 1].")
    synthetic_task = config.data.synthetic_task
    if task is not None and config.data.source == "synthetic" and task.synthetic_task and \
            synthetic_task != task.synthetic_task:
        problems.append(f"config.task={config.task!r} trains on {task.target_key!r} targets, but "
                        f"the embedded dataset gives {synthetic_task!r} ones: set "
                        f"--config.data.synthetic_task={task.synthetic_task}.")
    mixing = config.loss.mixup_alpha > 0 or config.loss.cutmix_alpha > 0
    if mixing and task is not None and not task.mixes:
        mixed = " and ".join(name for name in tasks.available() if tasks.training_of(name).mixes)
        problems.append(f"mixup / cutmix (config.loss.mixup_alpha, cutmix_alpha) apply to {mixed} fine-tuning, not "
                        f"to task={config.task!r}; set them to 0.")
    for key, least, meaning in (("log_every", 1, ""), ("checkpoint_every", 0, " (0: only at the end)"),
                                ("keep_checkpoints", 1, ""), ("total_steps", 0, " (0: config.num_epochs decides)"),
                                ("seed", 0, "")):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            problems.append(f"config.{key}={value!r} must be a whole number >= {least}{meaning}.")
    if not config.total_steps and not config.num_epochs > 0:
        problems.append(f"config.num_epochs={config.num_epochs!r} gives the run no steps: set it above 0, or "
                        f"config.total_steps.")
    if config.memory_limit_gb < 0:
        problems.append(f"config.memory_limit_gb={config.memory_limit_gb} must be >= 0 (0: the limit the device "
                        f"reports).")
    problems += optim.optimizer_problems(config)
    spike = config.loss_spike
    if config.max_skipped_steps < 0 or not (spike.factor == 0 or spike.factor > 1) or not 0 < spike.decay < 1 \
            or spike.min_steps < 1:
        problems.append(f"config.max_skipped_steps={config.max_skipped_steps} must be >= 0, config.loss_spike."
                        f"factor={spike.factor} 0 (off) or > 1, loss_spike.decay={spike.decay} in (0, 1) and "
                        f"loss_spike.min_steps={spike.min_steps} >= 1.")
    problems += pipeline.data_config_problems(config)
    if config.data.prefetch < 0:
        problems.append(f"config.data.prefetch={config.data.prefetch} must be >= 0 (global batches read ahead of "
                        f"the step; 0 = none).")
    problems += size_problems(config.model)
    clips = _clips(config)
    if clips is None:
        problems.append(f"config.model_name={config.model_name!r} takes no video; the trainer trains video models.")
    elif config.data.num_frames != clips["num_frames"] or config.data.image_size != clips["image_size"]:
        problems.append(
            f"config.data gives {config.data.num_frames} frames of {config.data.image_size}px but config.model "
            f"expects {clips['num_frames']} of {clips['image_size']}px; set both to the same values.")
    return problems


def batch_memory_problems(config: ml_collections.ConfigDict) -> list[str]:
    """config.batch_size against what one host can hold (the trainer's and `vidjax.evaluate`'s start-up): below 1,
    or one batch of this host's share of it over half of the host's memory (the input pipeline holds a few batches
    at once, besides everything else), which would fail only when the first batch is allocated. A batch is
    batch_size uint8 clips in training, batch_size videos of every view in evaluation."""
    batch = config.batch_size
    if batch < 1:
        return [f"config.batch_size={batch} must be 1 or above (clips per step, over all devices and processes)."]
    memory = config_lib.host_memory_bytes()
    data = config.data
    if not memory or min(data.num_frames, data.image_size) < 1:
        return []
    views = max(data.get("test_num_clips", 1), 1) * max(data.get("test_num_crops", 1), 1)
    clip = data.num_frames * data.image_size ** 2 * 3
    per_host = -(-batch // jax.process_count()) * clip * views
    if per_host <= memory // 2:
        return []
    fits = max(memory // 2 // (clip * views) * jax.process_count(), 1)
    return [f"config.batch_size={batch} is too large for this host: one batch is {per_host / 2**30:,.1f} GiB of "
            f"{data.num_frames} x {data.image_size} x {data.image_size} uint8 clips"
            + (f" ({views} views each in evaluation)" if views > 1 else "")
            + f" on each host, over half of its {memory / 2**30:,.1f} GiB of memory: lower it to at most {fits:,}."]


def _clips(config: ml_collections.ConfigDict) -> dict | None:
    """The clips config.model takes (`vidjax.models.clip_spec`); None for an unknown or non-video model."""
    try:
        return clip_spec(config.model_name, config.model)
    except (ValueError, KeyError, AttributeError):
        return None


def _block(model: ml_collections.ConfigDict, path: tuple[str, ...]) -> ml_collections.ConfigDict:
    for key in path:
        model = model[key]
    return model


def _subtree(params: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        params = params[key]
    return params


def _with_subtree(params: dict, path: tuple[str, ...], value) -> dict:
    if not path:
        return value
    return {**params, path[0]: _with_subtree(params[path[0]], path[1:], value)}


def check_config(config: ml_collections.ConfigDict) -> None:
    """`config_problems` as one ConfigError listing them all."""
    raise_problems(config_problems(config))


def prepare(config: ml_collections.ConfigDict, explicit_keys: Collection[str] | None = None,
            devices: list | None = None) -> tuple[ml_collections.ConfigDict, object, object, jax.sharding.Mesh]:
    """Start-up: (config resolved against its init_from checkpoint and its data, train source, eval source, mesh).

    Every problem found on the way (config values, missing data, class counts, batch size against the devices and
    the data, an init_from checkpoint that conflicts) comes out together in one ConfigError, before anything is
    compiled. `explicit_keys` are the config keys the user chose (`config_lib.command_line_keys`; None: a config
    built in Python, all of whose values count as chosen). What was not chosen gives way:
      - the model's architecture keys, to those of the checkpoints the task starts from (`TrainingSpec.init_targets`:
        config.init_from, and a captioner's config.decoder_init for its decoder block; `pretrained.take_model`); a
        chosen key that differs from the checkpoint's is a conflict;
      - what the task settles from its training data (`TrainingSpec.resolve`: a captioner's vocabulary and special ids
        follow its tokenizer);
      - for data read from files, config.data.num_classes to the count the data shows;
      - model.num_classes (the head), to the data's class count when that was taken from the data.
    The caller's config is left unchanged.
    """
    config = config.copy_and_resolve_references()
    problems = []
    task = tasks.training_of(config.task) if config.task in tasks.available() else None
    for target in task.init_targets(config) if task is not None else []:
        where = f"{target.flag}={target.path!r}"
        try:
            stored = pretrained.read_config(target.path)
            part = part_of(stored.model_name, stored.model, target.model_name)
            if stored.model_name != target.model_name and part is not None:  # e.g. a distillation's student
                stored = dataclasses.replace(stored, model_name=target.model_name, model=part[1])
            if stored.model_name != target.model_name:
                raise ConfigError(
                    f"{where} holds a {stored.model_name} checkpoint, but " + (
                        f"config.model_name is {config.model_name!r}: use the {stored.model_name} recipe, or a "
                        f"{config.model_name} checkpoint." if not target.block else
                        f"config.{target.config_key} is a {target.model_name} block: give a {target.model_name} "
                        f"checkpoint."))
            block, taken = pretrained.take_model(stored.model, _block(config.model, target.block), explicit_keys,
                                                 where, keep=target.keep or pretrained.ARCHITECTURE_EXCLUDES,
                                                 prefix=target.config_key)
            if target.block:
                _block(config.model, target.block[:-1])[target.block[-1]] = block
            else:
                config.model = block
            if taken:
                _log(f"The model takes the architecture of {where}: " + ", ".join(
                    f"{key} {ours!r} -> {theirs!r}" for key, (theirs, ours) in taken.items()))
        except ConfigError as err:
            problems.append(str(err))
        except (ConversionError, FileNotFoundError) as err:
            problems.append(f"{where}: {err}")
    if config.data.source != "synthetic" and not chosen(explicit_keys, "data.num_classes"):
        config.data.num_classes = 0  # a recipe's class count describes its own data, not the files given instead
    # The head follows the data's class count, unless the user chose the head's (a Python config: unless the data's
    # count is to be taken from the data, which its author could not know).
    head_follows = explicit_keys is not None and not chosen(explicit_keys, "model.num_classes")
    classifies = task is not None and task.counts_classes
    if classifies and head_follows and config.data.num_classes:
        config.model.num_classes = config.data.num_classes
    problems += config_problems(config)
    problems += batch_memory_problems(config)

    split_sources = {}
    for split in pipeline.SPLITS:
        train_names = getattr(split_sources.get("train"), "class_names", None)
        try:
            split_sources[split] = pipeline.make_source(config.data, split, class_names=train_names)
        except (ConfigError, FileNotFoundError) as err:
            problems.append(str(err))
    if task is not None and "train" in split_sources:
        problems += task.resolve(config, split_sources["train"], explicit_keys)
    if len(split_sources) == len(pipeline.SPLITS) and classifies:
        try:
            inferred = not config.data.num_classes
            config.data.num_classes = pipeline.resolve_num_classes(config.data, split_sources)
            if inferred and config.model.num_classes != config.data.num_classes:
                if explicit_keys is not None and not head_follows:
                    problems.append(f"The data has {config.data.num_classes} classes but --config.model.num_classes="
                                    f"{config.model.num_classes}: drop that flag (the head follows the data), or "
                                    f"set --config.data.num_classes to say the data has more classes than it shows.")
                else:
                    _log(f"{config.data.num_classes} classes in the data: the head has one output each.")
                    config.model.num_classes = config.data.num_classes
        except ConfigError as err:
            problems.append(str(err))

    mesh = None
    try:
        mesh = sharding.create_mesh(config.mesh, devices)
    except ConfigError as err:
        problems.append(str(err))
    if mesh is not None:
        problems += pipeline.batch_size_problems(config, jax.process_count(), mesh.size,
                                                 {split: len(source) for split, source in split_sources.items()},
                                                 pads_eval=task is None or task.pads_eval)
    raise_problems(problems)
    return config, split_sources["train"], split_sources["eval"], mesh


def build(config: ml_collections.ConfigDict, train_source_len: int, mesh: jax.sharding.Mesh | None = None,
          backend: str | None = None) -> Setup:
    """Mesh, abstract model, optimizer, shardings and a jitted sharded init, without touching any device memory.
    `backend` is the platform the model is built for (None: this process's; "tpu" for a TPU slice's devices compiled
    ahead of time, `vidjax.train.aot`)."""
    mesh = mesh or sharding.create_mesh(config.mesh)
    rules = sharding.rules_from_config(config)
    model_module = get_model(config.model_name)
    # The platform choices (config.model.attention_impl, backward, ...) resolved once, for this backend: the model is
    # built from this copy, and `config` keeps "auto", as the checkpoint records it (vidjax/platform.py).
    model_config = platform.resolve(config.model, backend)
    for note in platform.notes(config.model, backend):
        print(f"note: {note}", file=sys.stderr, flush=True)

    def make_model():
        with nnx.use_eager_sharding(False):
            return model_module.Model(model_config, rngs=ParamKeys(config.seed))

    try:
        abstract_model = nnx.eval_shape(make_model)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        # A size `config_problems` does not know (size_problems checks the common ones): one line, not a traceback.
        raise ConfigError(f"config.model does not build a {config.model_name} model: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''} Check the config.model sizes set on the "
                          f"command line (--config.model.*) against the variant's.") from err
    graphdef, abstract_params_state = nnx.split(abstract_model)

    # An epoch shows every training video once; with repeated augmentation a step holds batch_size / num_samples
    # videos (batch_size counts clips).
    steps_per_epoch = train_source_len // (config.batch_size // config.data.num_samples)
    if steps_per_epoch == 0:
        fits = pipeline.largest_batch_size(config, train_source_len, jax.process_count(), mesh.size)
        raise ConfigError(f"The training set has {train_source_len} examples, fewer than one batch of "
                          f"config.batch_size={config.batch_size}; " + (
                              f"the largest batch size that fits and splits over the {mesh.size} device(s) is "
                              f"{fits}: --config.batch_size={fits}." if fits else "add data."))
    total_steps = config.total_steps or math.ceil(config.num_epochs * steps_per_epoch)
    warmup_steps = int(config.optimizer.warmup_epochs * steps_per_epoch)
    schedule = optim.make_schedule(config, total_steps, warmup_steps, steps_per_epoch)
    tx = optim.make_optimizer(config, schedule, total_steps)

    teacher = tasks.training_of(config.task).teacher
    ema = config.optimizer.ema_decay > 0 or teacher is not None  # a teacher is the EMA of the weights

    def state_from_params(params):
        state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
        if ema:
            state["ema_params"] = jax.tree.map(jnp.copy, params)
        if config.loss_spike.factor:  # the loss-spike guard's running mean of accepted losses
            state["loss_stats"] = {"ema": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.int32)}
        if teacher is not None:
            state.update(teacher.extra_state(config))
        return state

    def init_state():
        return state_from_params(nnx.to_pure_dict(nnx.state(make_model())))

    # From the abstract model's parameters: building the model again under eval_shape costs a second of start-up
    # for a ViT-S (every step of a cached run's start counts).
    abstract_state = jax.eval_shape(state_from_params, nnx.to_pure_dict(abstract_params_state))
    params_sh = sharding.param_shardings(abstract_params_state, mesh, rules)
    state_shardings = {
        "params": params_sh,
        "opt_state": sharding.opt_state_shardings(tx, abstract_state["opt_state"], params_sh, mesh),
        "step": sharding.replicated(mesh),
    }
    if ema:
        state_shardings["ema_params"] = params_sh
    if config.loss_spike.factor:
        state_shardings["loss_stats"] = {"ema": sharding.replicated(mesh), "count": sharding.replicated(mesh)}
    for key in abstract_state.keys() - state_shardings.keys():  # the teacher's extra state
        state_shardings[key] = jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state[key])
    return Setup(mesh=mesh, graphdef=graphdef, abstract_model=abstract_model, tx=tx,
                 schedule=schedule, state_shardings=state_shardings, abstract_state=abstract_state,
                 init_state=jax.jit(init_state, out_shardings=state_shardings),
                 init_params=jax.jit(lambda: nnx.to_pure_dict(nnx.state(make_model())), out_shardings=params_sh),
                 total_steps=total_steps,
                 steps_per_epoch=steps_per_epoch)


# ---- memory: micro-batches, the mesh context of activation constraints, the compiled step's footprint ----

def check_grad_accum(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
    """config.grad_accum_steps, once it is known to split the global batch into equal, evenly sharded micro-batches."""
    k = config.grad_accum_steps
    ways = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
    if k < 1 or config.batch_size % (k * ways):
        raise ConfigError(f"config.grad_accum_steps={k} must be >= 1 and split config.batch_size={config.batch_size} "
                          f"into micro-batches that divide over the {ways} batch shards of the mesh (data x fsdp): "
                          f"choose k with batch_size % (k * {ways}) == 0.")
    return k


def host_batch(config: ml_collections.ConfigDict) -> bool:
    """Whether the train step's batch stays in host memory (config.batch_memory), once the setting is known."""
    where = config.get("batch_memory", "device")
    if where not in ("device", "host"):
        raise ConfigError(f"config.batch_memory={where!r}: 'device' (the step's global batch on the chips) or 'host' "
                          f"(pinned host memory, each micro-batch copied to the chips as the step reaches it, so a "
                          f"chip holds one micro-batch's input with config.grad_accum_steps > 1).")
    return where == "host"


def _videos(batch: Mapping) -> tuple[int, int]:
    """(clips a video, videos) of a batch with device pixels' repeated sampling, which has one row a video for its
    planes and num_samples rows for each of its clips' fields (masks, labels; video-major); (1, 0) otherwise."""
    samples = batch["crop_box"].shape[1] if pixels.PLANE_KEYS[0] in batch else 1
    return samples, (batch["crop_box"].shape[0] if samples > 1 else 0)


def _check_whole_videos(k: int, samples: int, videos: int) -> None:
    if samples > 1 and videos % k:
        raise ConfigError(f"config.grad_accum_steps={k} must divide the batch's {videos} videos (batch_size / "
                          f"data.num_samples, with device pixels each micro-batch takes whole videos): choose k "
                          f"with {videos} % k == 0, or --config.data.pixels=host.")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["rows"], meta_fields=["row_shape", "dtype"])
@dataclasses.dataclass(frozen=True)
class Folded:
    """One array of a batch kept in host memory (config.batch_memory="host"): `rows` (k, rows / k, lanes, 128) of
    32-bit words, whose [i] is micro-batch i's rows; `row_shape` and `dtype` are a row's own. A row's elements are
    flattened, zero-padded and cut into `pieces` (4 of a byte type, 2 of a 16-bit one) of lanes x 128, and word
    (l, c) holds element (l, c) of each piece. libtpu then copies a micro-batch out of host memory in place and
    unpacks it with shifts in its own tiles. Kept as (k, rows, 16, 224, 224, 3) uint8, or flattened, the batch's
    byte tiles were not the ones the slice's reader takes, and the whole batch was relaid out through the chips'
    memory first (V2-B's 4,096 clips on one v5e chip: 20 GiB at one clip a micro-batch)."""
    rows: object
    row_shape: tuple[int, ...]
    dtype: str

    @staticmethod
    def tiles(row_shape: tuple[int, ...], dtype) -> tuple[int, int]:
        """(the pieces of a row a word holds, a row's lanes of 128 words: a multiple of 8, a TPU tile's)."""
        pieces = 4 // np.dtype(dtype).itemsize
        return pieces, -(-math.prod(row_shape) // (pieces * 128 * 8)) * 8

    @staticmethod
    def word_dtype(dtype) -> np.dtype:
        return np.dtype(dtype) if np.dtype(dtype).itemsize == 4 else np.dtype(np.uint32)

    @classmethod
    def of(cls, x: np.ndarray, k: int, group: int = 1) -> Folded:
        """`x` (rows, *row_shape) folded into k micro-batches, micro-batch i taking runs i, i + k, ... of `group`
        rows, as words: one copy of `x` (two where a row is not whole tiles: the padding first)."""
        x = np.asarray(x, jax.dtypes.canonicalize_dtype(x.dtype))  # as jax holds it: 64-bit to 32
        row_shape = tuple(x.shape[1:])
        pieces, lanes = cls.tiles(row_shape, x.dtype)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != pieces * lanes * 128:
            flat = np.pad(flat, ((0, 0), (0, pieces * lanes * 128 - flat.shape[1])))
        runs = flat.reshape(x.shape[0] // (k * group), k, group, pieces, lanes, 128)
        # (k, runs, group, lanes, 128, pieces), little-endian: piece j from bit 32j / pieces of a word.
        words = np.ascontiguousarray(runs.transpose(1, 0, 2, 4, 5, 3)).view(cls.word_dtype(x.dtype))
        return cls(words.reshape(k, x.shape[0] // k, lanes, 128), row_shape, x.dtype.name)

    def micro_batch(self, i, on_chips: jax.sharding.NamedSharding) -> jax.Array:
        """Micro-batch i on the chips, its rows in their own shape and dtype."""
        words = jax.device_put(jax.lax.dynamic_index_in_dim(self.rows, i, keepdims=False), on_chips)
        dtype = np.dtype(self.dtype)
        pieces, _ = self.tiles(self.row_shape, dtype)
        rows = words
        if pieces > 1:
            bits = 32 // pieces
            unsigned = jnp.uint8 if bits == 8 else jnp.uint16
            rows = jnp.concatenate([((words >> (bits * j)) & ((1 << bits) - 1)).astype(unsigned)
                                    for j in range(pieces)], axis=1)
            if dtype != np.bool_ and dtype != unsigned:
                rows = jax.lax.bitcast_convert_type(rows, dtype)
        m = words.shape[0]
        rows = rows.reshape(m, -1)[:, :math.prod(self.row_shape)].reshape(m, *self.row_shape)
        return rows != 0 if dtype == np.bool_ else rows


def fold_micro_batches(batch: Mapping[str, np.ndarray], k: int) -> dict[str, Folded]:
    """This process's batch folded into k micro-batches (`Folded`), micro-batch i taking the rows `loss_and_grads`
    picks for it from a batch on the chips (rows i, i + k, ...; with device pixels' repeated sampling, whole videos
    with their clips' rows): the layout of config.batch_memory="host", made in one copy on the host."""
    samples, videos = _videos(batch)
    _check_whole_videos(k, samples, videos)
    return {key: Folded.of(value, k, samples if samples > 1 and len(value) == videos * samples else 1)
            for key, value in batch.items()}


def batch_putter(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                 ) -> Callable[[Mapping[str, np.ndarray]], dict]:
    """This process's batch -> the train step's global batch: on the chips split over the batch shards, or with
    config.batch_memory="host" folded into its micro-batches (`fold_micro_batches`) in pinned host memory."""
    if host_batch(config):
        k, folded = check_grad_accum(config, mesh), sharding.host_batch_sharding(mesh)
        return lambda local: sharding.global_batch(fold_micro_batches(local, k), folded)
    on_chips = sharding.batch_sharding(mesh)
    return lambda local: sharding.global_batch(local, on_chips)


def loss_and_grads(loss_fn, graphdef: nnx.GraphDef, params, batch: dict, rng: jax.Array, accum_steps: int,
                   mesh: jax.sharding.Mesh, in_host_memory: bool = False):
    """((loss, aux), grads) of the whole batch, computed over `accum_steps` micro-batches in a `lax.scan`.

    Loss, metrics and gradients are the means over micro-batches: for losses that are means over equal-sized
    examples (pre-training, classification without class weights, multilabel, MSE) that is one big batch's value;
    class-weighted cross-entropy and the CCC loss are normalised per micro-batch instead. Micro-batch i gets the
    random key fold_in(rng, i) (drop path and mixing differ from one big batch). `loss_fn(model, micro, key)` takes
    the micro-batch as the batch holds it: the train step's loss makes the micro-batch's clips, its teacher's targets
    and its mixing from it (`make_train_step`), so that accumulation bounds their memory too.

    `in_host_memory`: the batch is in pinned host memory, folded into its micro-batches (`fold_micro_batches`, the
    same rows for each); micro-batch i is copied to the chips when the loop reaches it.
    """
    def loss_of(p, micro, key):
        return loss_fn(nnx.merge(graphdef, p), micro, key)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    k = accum_steps
    if in_host_memory:
        on_chips = sharding.batch_sharding(mesh)

        def micro(i):
            return {key: folded.micro_batch(i, on_chips) for key, folded in batch.items()}
    elif k == 1:
        return grad_fn(params, batch, rng)
    else:
        micro = _micro_batches_on_chips(batch, k, mesh)
    if k == 1:
        return grad_fn(params, micro(0), rng)

    def body(total, i):
        out = grad_fn(params, micro(i), jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, total, out), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, micro(0), rng))
    total, _ = jax.lax.scan(body, zeros, jnp.arange(k))
    return jax.tree.map(lambda x: x / k, total)


def _micro_batches_on_chips(batch: dict, k: int, mesh: jax.sharding.Mesh) -> Callable[[jax.Array], dict]:
    """i -> micro-batch i of a batch on the chips (`loss_and_grads`), picked from it inside the loop."""
    # Micro-batch i takes rows i, i + k, i + 2k, ...: every device's block of the batch holds an equal part of each
    # micro-batch, so splitting moves no rows between devices. Each is picked inside the loop from the batch folded
    # to (rows / k, k, ...), which is the batch itself: no second copy of the whole batch (11 GiB of device-pixel
    # planes for VideoMAE's published 2,048 clips).
    # A device-pixel batch has one row a video for its planes and num_samples rows for each of its clips' fields
    # (masks, labels; video-major): a micro-batch takes whole videos, each with its own clips' rows.
    samples, videos = _videos(batch)
    _check_whole_videos(k, samples, videos)
    folded_spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES))

    def fold(x):
        if samples > 1 and x.shape[0] == videos * samples:  # (videos / k, k, samples, ...): whole videos' clips
            return jax.lax.with_sharding_constraint(x.reshape(videos // k, k, samples, *x.shape[1:]), folded_spec)
        return jax.lax.with_sharding_constraint(x.reshape(x.shape[0] // k, k, *x.shape[1:]), folded_spec)

    folded = jax.tree.map(fold, batch)
    grouped = jax.tree.map(lambda x: samples > 1 and x.shape[0] == videos * samples, batch)

    def micro(i):
        def pick(x, group):
            x = jax.lax.with_sharding_constraint(jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False),
                                                 folded_spec)
            return x.reshape(-1, *x.shape[2:]) if group else x

        return jax.tree.map(pick, folded, grouped)

    return micro


def in_mesh_context(fn, mesh: jax.sharding.Mesh, rules: Mapping[str, sharding.Rule] | None = None):
    """`fn` traced with `mesh` as the abstract mesh in context and `rules` (config.sharding_rules; None: the defaults)
    as the activation rules, so the models' `layers.shard_batch` and `sharding.constrain` constraints apply."""
    def wrapped(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.activation_rules(rules):
            return fn(*args)

    return wrapped


def memory_figures(compiled) -> dict[str, int]:
    """XLA's per-device bytes of a compiled program: argument, output, alias (outputs that reuse donated arguments),
    temp, code, and total_bytes (what it holds at its peak: arguments, outputs not aliased, temporaries and code);
    {} where the backend has no memory analysis."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    report = {f"{name}_bytes": int(getattr(analysis, f"{field}_size_in_bytes")) for name, field in
              (("argument", "argument"), ("output", "output"), ("alias", "alias"), ("temp", "temp"),
               ("code", "generated_code"))}
    report["total_bytes"] = (report["argument_bytes"] + report["output_bytes"] - report["alias_bytes"]
                             + report["temp_bytes"] + report["code_bytes"])
    return report


def memory_report(config: ml_collections.ConfigDict, compiled, device: jax.Device) -> dict[str, int]:
    """Per-device bytes of a compiled step (XLA's memory analysis), logged; a ConfigError when they exceed the limit.

    The limit is config.memory_limit_gb when above 0, else what the device reports (GPU / TPU `bytes_limit`; the
    CPU backend reports none, and nothing is checked there).
    """
    report = memory_figures(compiled)
    if not report:
        _log("Memory analysis: not available on this backend.")
        return {}
    limit = int(config.memory_limit_gb * 2**30) if config.memory_limit_gb > 0 else (
        (device.memory_stats() or {}).get("bytes_limit", 0))
    gib = 2**30
    unaliased = report["output_bytes"] - report["alias_bytes"]
    _log(f"Memory per device (train step): state and batch {report['argument_bytes'] / gib:.3f} GiB, temporaries "
         f"{report['temp_bytes'] / gib:.3f} GiB, outputs not aliased {unaliased / gib:.3f} GiB; "
         f"total {report['total_bytes'] / gib:.3f} GiB"
         + (f" of {limit / gib:.2f} GiB" if limit else " (no device limit reported)"))
    if limit and report["total_bytes"] > limit:
        raise ConfigError(
            f"The train step needs {report['total_bytes'] / gib:.2f} GiB per device ({report['temp_bytes'] / gib:.2f} "
            f"GiB of temporaries) but {device.device_kind} has {limit / gib:.2f} GiB"
            f"{' (config.memory_limit_gb)' if config.memory_limit_gb > 0 else ''}. To fit: raise "
            f"config.grad_accum_steps (micro-batches; with config.batch_memory='host' the batch waits in host memory, "
            f"one micro-batch at a time on the device), set config.model.remat='full' or 'dots_saveable', shard "
            f"parameters with config.mesh.fsdp, use config.model.dtype='bfloat16', or lower config.batch_size.")
    return report


class AheadOfTimeStep:
    """`train_step` compiled for `state` (arrays or ShapeDtypeStructs with their shardings) and `batch` on a
    background thread that starts at once, so that the caller initialises or restores the state, loads init_from
    checkpoints and evaluates the initial weights while XLA compiles (or loads the step from the persistent cache).
    Calling it waits for the compilation and runs the compiled step; the memory report (and check) comes before the
    first step runs, and the step is compiled once. Whatever the compilation raised is raised by the first call.
    A caller leaving by an error first calls `abandon()`: the interpreter must not shut down under a compiling
    thread."""

    def __init__(self, config: ml_collections.ConfigDict, train_step, state, batch, key_parts=()):
        self._result: dict = {}
        self._lowered = threading.Event()
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._compile, args=(config, train_step, state, batch, key_parts),
                                        name="vidjax-compile-train-step", daemon=True)
        self._thread.start()

    def _compile(self, config, train_step, state, batch, key_parts) -> None:
        try:
            try:
                if config.get("aot_step"):  # compiled ahead of time for this slice (`python -m vidjax.aot --save`)
                    mesh = next(iter(jax.tree.leaves(batch))).sharding.mesh
                    compiled = compile_cache.load_step(config.aot_step, train_step, (state, batch), mesh,
                                                       config.to_json_best_effort(sort_keys=True),
                                                       on_lowered=self._lowered.set)
                    self._result["cache"] = f"compiled ahead of time, {config.aot_step}"
                else:  # loaded without tracing when an earlier run compiled the same step (compile_or_load)
                    compiled, self._result["cache"] = compile_cache.compile_or_load(
                        "train_step", train_step, (state, batch),
                        (config.to_json_best_effort(sort_keys=True), *key_parts), on_lowered=self._lowered.set)
            finally:
                self._lowered.set()
            memory_report(config, compiled, jax.local_devices()[0])
            self._result["compiled"] = compiled
        except BaseException as err:  # noqa: BLE001 -- handed to the caller's thread by `wait`
            self._result["error"] = err

    def wait_lowered(self) -> None:
        """Waits until the step is traced and lowered (Python work, which holds the GIL: starting other Python work
        before then slows both), after which XLA compiles or loads it without holding the GIL."""
        self._lowered.wait()

    def abandon(self) -> None:
        """Waits for the compilation and drops its result (the run is leaving by an error)."""
        self._thread.join()

    def wait(self):
        """The compiled step, once it is there; raises what its compilation raised."""
        self._thread.join()
        if "error" in self._result:
            raise self._result["error"]
        return self._result["compiled"]

    @property
    def cache(self) -> str:
        """What the persistent compilation cache found for the step (`compile_cache.describe`)."""
        self.wait()
        return self._result["cache"]

    def __call__(self, state, batch):
        return (self._result.get("compiled") or self.wait())(state, batch)


def _device_batch(config: ml_collections.ConfigDict, batch: dict, mean, std, video_keys: tuple[str, ...]) -> dict:
    """The batch a train step computes on: with device pixels, the clips cut from the planes the input path sent
    (the planes dropped); then the videos under `video_keys` normalised with `mean` and `std`."""
    if pixels.PLANE_KEYS[0] in batch:
        video = pixels.batch_crops(batch, config.data.image_size, config.data.image_size,
                                   jnp.dtype(config.model.get("dtype", "float32")))
        batch = dict({key: value for key, value in batch.items() if key not in pixels.PLANE_KEYS}, video=video)
    return dict(batch, **{key: losses.normalize_video(batch[key], mean, std) for key in video_keys})


def _mixed(config: ml_collections.ConfigDict, spec: base.TrainingSpec, batch: dict, rng: jax.Array
           ) -> tuple[dict, jax.Array]:
    """(the batch with its videos mixed by mixup / cutmix (config.loss) and their targets as `soft_targets`, the key
    left for the loss)."""
    mix_rng, rng = jax.random.split(rng)
    video, soft = mixup.mix(
        mix_rng, batch["video"], batch[spec.target_key], mixup_alpha=config.loss.mixup_alpha,
        cutmix_alpha=config.loss.cutmix_alpha, prob=config.loss.mixup_prob,
        switch_prob=config.loss.mixup_switch_prob, label_smoothing=spec.mix_label_smoothing(config),
        num_classes=config.model.num_classes)
    return dict(batch, video=video, soft_targets=soft), rng


def _ema(ema_params, params, decay: jax.Array | float):
    """The exponential moving average `ema_params` moved towards `params` by 1 - `decay`, in its own dtypes."""
    return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params)


def _all_finite(tree) -> jax.Array:
    """Whether every leaf of `tree` is finite. One reduction over a stacked vector: a chain of per-leaf `&`s would be
    copied by XLA into the fusion of every state leaf (leaves x leaves operations; minutes of compile time for a
    ViT-L)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(tree)]))


def _unless_spike(accept: jax.Array, spike: ml_collections.ConfigDict, stats: dict, loss: jax.Array
                  ) -> tuple[jax.Array, dict]:
    """(`accept`, and `loss` within config.loss_spike's `factor` of the bias-corrected running mean of the losses
    before it, which the first `min_steps` always are; the running statistics with `loss` taken in)."""
    running = stats["ema"] / jnp.maximum(1.0 - spike.decay ** stats["count"].astype(jnp.float32), 1e-12)
    accept &= (stats["count"] < spike.min_steps) | (loss <= spike.factor * running)
    return accept, {"ema": spike.decay * stats["ema"] + (1.0 - spike.decay) * loss, "count": stats["count"] + 1}


# The metrics key under which the train step's micro-batches hand their teacher's carry (`Teacher.before_update`)
# out of the accumulation loop to `Teacher.after_update`; it is never logged.
TEACHER_CARRY = "__teacher_carry__"


def make_train_step(config: ml_collections.ConfigDict, setup: Setup, class_weights=None, pos_weight=None):
    """The jitted update: normalise on device, mixup / cutmix, loss and grads, optimizer and EMA update; the old
    state is donated.

    Videos enter the model in float32 (its layers cast to the compute dtype), so the reconstruction target is
    never built from bf16-rounded pixels. `finite` covers the loss, the gradients and the updated parameters:
    a loss is computed before its update, so a finite loss alone could hide a diverged state. A step that is not
    finite, or whose loss spikes (config.loss_spike), is skipped on device (`skipped` = 1 in its metrics); the
    loop counts them and stops after config.max_skipped_steps in a row.
    """
    spec = tasks.training_of(config.task)
    teacher = spec.teacher
    loss_fn = spec.loss_fn(config, class_weights, pos_weight)
    graphdef, tx, schedule = setup.graphdef, setup.tx, setup.schedule
    clips = clip_spec(config.model_name, config.model)
    mean, std = clips["mean"], clips["std"]
    base_key = jax.random.key(config.seed)
    mix = config.loss.mixup_alpha > 0 or config.loss.cutmix_alpha > 0
    # A teacher's momentum; None: the constant config.optimizer.ema_decay.
    ema_schedule = teacher.ema_schedule(config, setup.total_steps) if teacher is not None else None
    ema_decay = config.optimizer.ema_decay
    keeps_ema = ema_schedule is not None or bool(ema_decay)
    video_keys = spec.video_keys(config, train=True)
    accum_steps = check_grad_accum(config, setup.mesh)
    in_host_memory = host_batch(config)
    batch_sh = sharding.host_batch_sharding(setup.mesh) if in_host_memory else sharding.batch_sharding(setup.mesh)

    def train_step(state, batch):
        rng = jax.random.fold_in(base_key, state["step"])
        failures = batch["decode_failures"]
        if in_host_memory:  # counted on the chips
            failures = jax.device_put(failures.rows, batch_sh.with_memory_kind("device"))

        def micro_loss(model, micro, key):
            """The loss of one micro-batch (`loss_and_grads`), everything it reads made from it alone: its clips
            (cut from the planes with device pixels; normalised), its teacher's targets and its mixing with its own
            key (as the published recipes mix each GPU's batch). Made from the whole batch first, they sat beside the
            step in float32: a VideoMAE-S/16 fine-tune on one v6e chip needed 21 GiB at 2 clips a micro-batch and at
            8 alike. The teacher's carry leaves as metrics under TEACHER_CARRY (their mean over micro-batches)."""
            micro, carry = _device_batch(config, micro, mean, std, video_keys), {}
            if teacher is not None:
                fields, carry = teacher.before_update(config, setup, state, micro)
                micro = dict(micro, **fields)
            if mix:
                micro, key = _mixed(config, spec, micro, key)
            loss, aux = loss_fn(model, micro, key)
            return loss, {**aux, TEACHER_CARRY: carry}

        (loss, aux), grads = loss_and_grads(micro_loss, graphdef, state["params"], batch, rng, accum_steps,
                                            setup.mesh, in_host_memory)
        carry = aux.pop(TEACHER_CARRY)
        if teacher is not None:
            grads = teacher.hold(config, setup, grads, state["step"])

        def updated_params():
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            if teacher is not None:
                updates = teacher.hold(config, setup, updates, state["step"])  # no weight decay either
            return jax.tree.map(jnp.add, state["params"], updates), opt_state

        def update():
            params, opt_state = updated_params()
            new = {"params": params, "opt_state": opt_state}
            if keeps_ema:
                decay = ema_schedule(state["step"]) if ema_schedule is not None else ema_decay
                new["ema_params"] = _ema(state["ema_params"], params, decay)
            return new

        extra = {}
        if teacher is not None:
            extra, extra_metrics = teacher.after_update(config, setup, state, carry)
            aux = {**aux, **extra_metrics}
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        # The updated parameters are checked before the update is made, by a pass that computes them and keeps only
        # their finiteness; the update itself is made inside the conditional below. Made outside and selected by
        # it, every parameter and moment was copied into the conditional's result (a VideoMAE-S/16 pre-training
        # step here: 0.314 -> 0.268 s, docs/performance.md).
        params_finite = _all_finite(updated_params()[0])
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite
        accept = finite
        if config.loss_spike.factor:
            accept, extra["loss_stats"] = _unless_spike(accept, config.loss_spike, state["loss_stats"], loss)
        # A rejected step is skipped: everything but the step counter keeps its old value, so the data order and
        # the random keys of later steps are those of a run without the bad step (and resume stays exact).
        # One conditional, not a select per leaf: XLA would copy the scalar test into every leaf's select fusion.
        kept_keys = ["params", "opt_state", *(["ema_params"] if keeps_ema else []), *extra]
        kept = jax.lax.cond(accept, lambda: {**update(), **extra}, lambda: {k: state[k] for k in kept_keys})
        new_state = dict(kept, step=state["step"] + 1)
        step_metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
                        "finite": finite.astype(jnp.float32), "skipped": 1.0 - accept.astype(jnp.float32),
                        "decode_failures": jnp.sum(failures), **aux}
        return new_state, step_metrics

    return jax.jit(in_mesh_context(train_step, setup.mesh, sharding.rules_from_config(config)),
                   in_shardings=(setup.state_shardings, batch_sh),
                   out_shardings=(setup.state_shardings, sharding.replicated(setup.mesh)), donate_argnums=0)


def make_eval_step(config: ml_collections.ConfigDict, setup: Setup, outputs_fn):
    """Jitted eval of one batch: `outputs_fn(model, batch)`, an evaluator's per-example outputs (scores, losses,
    targets: `vidjax.evaluators.base.Evaluator.batch_outputs`) of the batch with its videos normalised, gathered
    (replicated) so that every process can compute whole-split metrics."""
    clips = clip_spec(config.model_name, config.model)
    mean, std = clips["mean"], clips["std"]

    def eval_step(params, batch):
        batch = dict(batch, video=losses.normalize_video(batch["video"], mean, std))
        return outputs_fn(nnx.merge(setup.graphdef, params), batch)

    return jax.jit(in_mesh_context(eval_step, setup.mesh, sharding.rules_from_config(config)),
                   in_shardings=(setup.state_shardings["params"], sharding.batch_sharding(setup.mesh)),
                   out_shardings=sharding.replicated(setup.mesh))


def eval_params(state: dict) -> dict:
    """The weights evaluations use: the EMA when the run keeps one (config.optimizer.ema_decay > 0)."""
    return state.get("ema_params", state["params"])


def eval_context(config: ml_collections.ConfigDict, setup: Setup, *, metadata: dict, sources: dict,
                 class_names=None, workdir: str | None = None) -> evaluators.EvalContext:
    """What the evaluators of a run (or of `python -m vidjax.evaluate`) read: the config, the task's training spec
    and readout (all they know of the task: they import no task module), the mesh and shardings their steps compile
    for (`make_eval_step`), the checkpoint metadata and the splits' sources."""
    return evaluators.EvalContext(config=config, spec=tasks.training_of(config.task),
                                  readout=tasks.readout_of(config.task), setup=setup, make_step=make_eval_step,
                                  metadata=metadata, sources=dict(sources), class_names=class_names, workdir=workdir)


def check_targets(config: ml_collections.ConfigDict, source) -> None:
    """The training data carries what the task trains on (a list without a `labels` column cannot train multilabel)."""
    key = tasks.training_of(config.task).target_key
    if key is None or not len(source):
        return
    element = source[0]
    if key not in element:
        known = dict.fromkeys(tasks.target_keys().values())
        have = [k for k in known if k in element or (k == "labels" and "spans" in element)]
        raise ConfigError(f"config.task={config.task!r} trains on {key!r} targets, but config.data "
                          f"(source={config.data.source!r}) gives {have or 'none'}: choose the task that matches the "
                          f"data, or a list with that column (docs/datasets.md).")


def checkpoint_metadata(config: ml_collections.ConfigDict, train_source) -> dict:
    """What inference needs besides the weights, saved with every checkpoint (the "metadata" item)."""
    clips = clip_spec(config.model_name, config.model)
    return {
        "model_name": config.model_name,
        "task": config.task,
        **tasks.training_of(config.task).metadata(config, train_source),
        "preprocessing": {"mean": list(clips["mean"]), "std": list(clips["std"]),
                          "num_frames": clips["num_frames"], "image_size": clips["image_size"],
                          "sampling_rate": config.data.sampling_rate,
                          "short_side": config.data.short_side or clips["image_size"]},
    }


class GlobalBatches:
    """The training batches as global jax.Arrays, read up to `depth` batches ahead of the step (config.data.prefetch).

    A daemon thread pulls this process's batches from the grain iterator, assembles each into global arrays (`put`,
    `batch_putter`: the host-to-device copy, or into pinned host memory) and queues up to `depth` of them, so that
    waiting for the decoders and the transfer overlap the step instead of following it (big_vision's `start_global`
    pattern).
    depth 0: no thread; each `next()` reads and transfers its batch.

    The iterator is handed over restored (a checkpoint restore happens before) and from then on only the thread
    touches it (grain iterators are not thread-safe). It runs ahead of the batches `next()` has returned, so it is
    not what a checkpoint saves: `position()` is its state just after the last returned batch (the thread records
    the state after each batch it draws), and a run resumed from it reads exactly the batches this one had not
    used. The thread stops after `count` batches, what the run needs, so no decode is wasted at the end.

    Whatever the thread raises (a source's ConfigError, StopIteration) is raised by the `next()` that would have
    returned the batch, as the same exception. `close()` stops the thread (end of training, preemption, an error);
    a thread still inside a slow read is a daemon and cannot hold up the interpreter's exit.
    """

    def __init__(self, iterator, put: Callable[[Mapping[str, np.ndarray]], dict[str, jax.Array]], depth: int,
                 count: int):
        self._iterator, self._put_batch = iterator, put
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = None
        if depth > 0 and count > 0:
            self._position = copy.deepcopy(iterator.get_state())
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._fill, args=(count,), name="vidjax-input-prefetch",
                                            daemon=True)
            self._thread.start()

    def _fill(self, count: int) -> None:
        try:
            for _ in range(count):
                if self._stop.is_set():
                    return
                batch = self._put_batch(next(self._iterator))
                if not self._put((batch, copy.deepcopy(self._iterator.get_state()))):
                    return
        except BaseException as err:  # noqa: BLE001 -- raised in the caller's thread by __next__
            self._put(_Raised(err))

    def _put(self, item) -> bool:
        """Queues `item`, waiting for room; False when `close()` came first."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            return self._put_batch(next(self._iterator))
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("The input prefetch thread has stopped: more training batches were asked "
                                       "for than the run needs, or after close(). This is a bug in the trainer's "
                                       "loop; please report it.") from None
        if isinstance(item, _Raised):
            self._error = item.error
            raise item.error
        batch, self._position = item
        return batch

    def position(self):
        """The data position a checkpoint saves (`Checkpointer.save`'s data_iterator): just after the last batch
        `next()` returned."""
        if self._thread is None:
            return self._iterator
        return _DataPosition(self._position)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the thread and drops the batches it queued (their device memory)."""
        self._stop.set()
        if self._thread is None:
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout_s)


@dataclasses.dataclass
class _Raised:
    """An exception of the prefetch thread, on its way to the caller."""

    error: BaseException


class _DataPosition(grain.DatasetIterator):
    """A recorded grain iterator state, saved by grain's checkpoint handler as the iterator's own would be."""

    def __init__(self, state: dict):
        super().__init__()
        self._state = state

    def __next__(self):
        raise TypeError("a recorded data position is saved, not iterated")

    def get_state(self) -> dict:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict) -> None:
        self._state = copy.deepcopy(state)


# The trainer names the settings that feed it faster once the loop waited on input for more than this share of its
# time at this many logged steps in a row.
INPUT_BOUND_SHARE, INPUT_BOUND_LOGS = 0.5, 2
# The progress lines' ETA: the remaining steps at the median time of this many latest steps (the first one excluded).
ETA_STEPS = 100


def input_bound_hint(config: ml_collections.ConfigDict, share: float, step: int) -> str:
    """The one-time hint of a run whose steps wait on their input: which settings make more batches a second."""
    cores = config_lib.host_cpus()
    return (f"Input is the bottleneck: up to step {step} the step waited on input for {share:.0%} of its time "
            f"(over {INPUT_BOUND_SHARE:.0%} at {INPUT_BOUND_LOGS} log lines in a row; input_wait_share in "
            f"metrics.jsonl), and the devices idle meanwhile. Decode in more processes with "
            f"--config.data.num_workers (now {config.data.num_workers}; this host has {cores} cores), or take "
            f"several augmented clips from each decoded video with --config.data.num_samples (now "
            f"{config.data.num_samples}; repeated sampling, batch_size still counts clips).")


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices: list | None = None,
                       explicit_keys: Collection[str] | None = None,
                       on_second_signal: Callable[[int, dict], None] | None = None) -> dict:
    """Runs (or resumes) the job described by `config` in `workdir`.

    Returns the final metrics, with the final train state under "state" (params, opt_state, step). The config the
    run used (resolved at start-up: `prepare`) is the one its checkpoints store.

    `devices` restricts the mesh to a subset of `jax.devices()` (all of them by default). `explicit_keys`: the config
    keys the user chose (`vidjax.main` passes its --config.KEY flags); the others give way to the init_from
    checkpoint's architecture and the data's class count (`prepare`). None: every value counts as chosen.

    SIGTERM or SIGINT (vidjax.preemption) once the first step has run stops it at the next step boundary with a
    checkpoint of that step written and waited for; it then returns {"preempted": True, "step": ..., "signal": ...,
    "checkpoint": its folder} early, without evals. A second signal while it waits calls
    `on_second_signal(signum, {"step", "total_steps", "last_complete", "checkpoint"})` (the last complete checkpoint
    and its folder: `python -m vidjax.main` says so in one line and ends the process); without one the result holds
    "interrupted" (its KeyboardInterrupt) and those keys too (`_wind_down`). Before the first step has run
    (start-up, compilation), one process handles a signal as it would without the trainer (a vidjax command's
    `Interrupted`, Python's KeyboardInterrupt for Ctrl-C): nothing has been trained, nothing is checkpointed.
    Several processes always stop at a step boundary.
    """
    with preemption.StopOnSignal(armed=False) as stop, contextlib.ExitStack() as cleanup:
        return _train_and_evaluate(config, fileio.user_path(workdir), devices, stop, explicit_keys, cleanup,
                                   on_second_signal)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices: list | None,
                        stop: preemption.StopOnSignal, explicit_keys: Collection[str] | None,
                        cleanup: contextlib.ExitStack, on_second_signal: Callable[[int, dict], None] | None) -> dict:
    """The phases of a run: set-up, restore, start (the step compiles while the state is made and the initial
    weights evaluated), the loop (with its evaluations), the end. `cleanup` stops what the run starts beside it (the
    input prefetch thread), however the run ends."""
    run = _set_up(config, workdir, devices, explicit_keys)
    run.on_second_signal = on_second_signal
    latest, state = _restore(run)
    start_step = int(jax.device_get(state["step"])) if state is not None else 0
    if start_step >= run.setup.total_steps:
        _log(f"Training already finished: checkpoint step {start_step} >= total_steps {run.setup.total_steps}. "
             f"Nothing to do (use a new --workdir, or raise --config.total_steps / num_epochs to train on).")
        run.ckpt.close()
        return {"step": start_step, "resumed": True, "trained": False, "state": state}
    train_step, first_batch, state, writer = _start(run, latest, state, start_step)
    progress = Progress(run, writer, start_step, latest)
    state, preempted = _loop(run, train_step, first_batch, state, progress, stop, cleanup)
    if preempted is not None:
        return preempted
    return _finish(run, state, progress, writer)


def check_workdir(workdir: str) -> None:
    """A ConfigError unless `workdir` is a folder the run can write into, or can be made as one: checked before the
    set-up, which would otherwise fail (a file of that name, a read-only place) only once the model is built."""
    path = fileio.user_path(workdir)
    where = f"--workdir={workdir}"
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{where} is a file ({path}); the workdir is a folder for the run's checkpoints and "
                          f"metrics: give a folder's path (a new one starts a run, the same one resumes it).")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{where}: {existing} is a file, so no folder can be made under it; give a folder's path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {existing} is not writable by this user; give a folder the run can write to.")


@dataclasses.dataclass
class Run:
    """What the set-up of a run builds, and the later phases read."""

    config: ml_collections.ConfigDict  # resolved at start-up (`prepare`): what the checkpoints store
    workdir: str
    setup: Setup
    spec: base.TrainingSpec  # the task's
    metadata: dict  # `checkpoint_metadata`
    class_weights: np.ndarray | None
    pos_weight: np.ndarray | None
    ckpt: checkpoint.Checkpointer
    train_iter: object  # the grain iterator of the training batches (a restore sets its position)
    abstract_state: dict  # the train state's shapes with their shardings (what a restore fills)
    evals: list[evaluators.Scheduled]
    on_second_signal: Callable[[int, dict], None] | None = None  # `train_and_evaluate`'s


def _set_up(config: ml_collections.ConfigDict, workdir: str, devices: list | None,
            explicit_keys: Collection[str] | None) -> Run:
    """Input first, so a missing dataset fails in seconds, before anything is compiled; then the model, optimizer and
    shardings (abstract), the workdir's assets and checkpointer, the training batches and the evaluators."""
    check_workdir(workdir)
    if config.get("needs_init_from") and not config.init_from:  # a recipe that cannot start from random weights
        raise ConfigError(config.needs_init_from)
    config, train_source, eval_source, mesh = prepare(config, explicit_keys, devices)
    compile_cache.watch()  # counts the train step's cache lookup for the first step's log line

    setup = build(config, len(train_source), mesh)
    spec = tasks.training_of(config.task)
    num_params = sum(x.size for x in jax.tree.leaves(setup.abstract_state["params"]))
    variant = config.model.get("variant") or (f"on {config.model.encoder_name} {config.model.encoder.variant}"
                                               if "encoder_name" in config.model else "")
    _log(f"{config.model_name} {variant} ({num_params / 1e6:.2f}M params) task={config.task}, "
         f"mesh {dict(mesh.shape)} over {mesh.size} {mesh.devices.flat[0].platform} device(s), "
         f"global batch {config.batch_size}, {setup.total_steps} steps ({setup.steps_per_epoch} per epoch), "
         f"data={config.data.source} ({len(train_source)} train / {len(eval_source)} eval clips)")
    check_targets(config, train_source)
    metadata = checkpoint_metadata(config, train_source)
    class_weights, pos_weight = spec.loss_weights(config, train_source)

    os.makedirs(workdir, exist_ok=True)
    spec.write_assets(config, train_source, workdir)
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    train_iter = iter(pipeline.make_dataset(config, "train", train_source,
                                            spec.input_spec(config, setup.abstract_model),
                                            process_index=jax.process_index(), process_count=jax.process_count()))
    abstract_state = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    context = eval_context(config, setup, metadata=metadata, sources={"train": train_source, "eval": eval_source},
                           class_names=getattr(train_source, "class_names", None), workdir=workdir)
    return Run(config=config, workdir=workdir, setup=setup, spec=spec, metadata=metadata,
               class_weights=class_weights, pos_weight=pos_weight, ckpt=ckpt, train_iter=train_iter,
               abstract_state=abstract_state, evals=evaluators.from_config(context))


def _restore(run: Run) -> tuple[int | None, dict | None]:
    """(step, state) of the workdir's latest checkpoint that restores (damaged steps are skipped, with a warning),
    the training batches' position set to it; (None, None) without one."""
    latest = run.ckpt.latest_step()
    if latest is None:
        return None, None
    try:
        latest, state = run.ckpt.restore_latest(run.abstract_state, run.train_iter)
    except (ValueError, KeyError) as err:
        raise ConfigError(
            f"The checkpoint at step {latest} in {run.ckpt.path(latest)} does not fit the train state this config "
            f"builds ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Resuming needs the settings the "
            f"run started with (model, config.optimizer.ema_decay on or off, layer_decay below 1 or not); to "
            f"start over with new ones use a new --workdir, or --config.init_from={run.workdir} to fine-tune "
            f"from it.") from err
    _log(f"Resuming from checkpoint at step {latest} in {run.ckpt.path(latest)}")
    return latest, state


def _start(run: Run, latest: int | None, state: dict | None, start_step: int):
    """(train step, first batch, state, metric writer). The update step compiles on a thread from here on, while a
    fresh state is initialised (and loaded from the task's init_from checkpoints) and the initial weights are
    evaluated."""
    config, setup, spec = run.config, run.setup, run.spec
    first_batch = batch_putter(config, setup.mesh)(next(run.train_iter))
    train_step = AheadOfTimeStep(config, make_train_step(config, setup, run.class_weights, run.pos_weight),
                                 run.abstract_state, first_batch,
                                 key_parts=(setup.total_steps, setup.steps_per_epoch, run.class_weights,
                                            run.pos_weight))
    try:
        if latest is None:
            train_step.wait_lowered()  # then the state's initialiser compiles (or loads) alongside the step
            state = setup.init_state()
            for target in spec.init_targets(config):
                part, report = pretrained.init_from(target.path, target.model_name,
                                                    _block(config.model, target.block),
                                                    _subtree(state["params"], target.params), flag=target.flag)
                state = dict(state, params=_with_subtree(state["params"], target.params, part))
                _log(f"Initialised {len(report['loaded'])} parameter tensors"
                     + (f" of {'/'.join(target.params)}/" if target.params else "") + f" from {target.path}; "
                     f"{len(report['fresh'])} keep their fresh init ({', '.join(report['fresh'][:6]) or 'none'}); "
                     f"{len(report['unused'])} checkpoint tensors unused "
                     f"({', '.join(report['unused'][:6]) or 'none'})")
            if "ema_params" in state and spec.init_targets(config):
                state["ema_params"] = jax.tree.map(jnp.copy, state["params"])
        writer = MetricWriter(run.workdir, resume_step=start_step, config=config)
        _evaluate_init(run, state, writer, fresh=latest is None)
    except BaseException:
        train_step.abandon()
        raise
    return train_step, first_batch, state, writer


def _evaluate_init(run: Run, state: dict, writer: MetricWriter, fresh: bool) -> None:
    """The initial weights' metrics of the evaluators that take them (`init`), "<prefix><metric>_init": computed
    and written at step 0 by a fresh run, read back from metrics.jsonl by a resumed one (as its start logged them)."""
    for scheduled in run.evals:
        if not scheduled.init:
            continue
        if fresh:
            writer.write(0, scheduled.run_init(eval_params(state)), split=scheduled.name)
            _log(f"{scheduled.name} of the initial weights: "
                 + ", ".join(f"{k} {v:.4f}" for k, v in scheduled.init_result.items()))
        elif os.path.exists(writer.path):
            scheduled.init_result = {key: value for row in read_metrics(run.workdir)
                                     if row["step"] == 0 and row["split"] == scheduled.name
                                     for key, value in row.items() if key.endswith("_init")}


class Progress:
    """The loop's record of its steps: `handle` logs, writes and checks the metrics of each (one step late, so the
    host never waits on the device), counting decode failures and skipped updates, timing steps and input waits."""

    def __init__(self, run: Run, writer: MetricWriter, start_step: int, latest: int | None):
        self.config, self.total_steps, self.ckpt, self.writer = run.config, run.setup.total_steps, run.ckpt, writer
        self.start_step, self.resumed = start_step, latest is not None
        self.first_loss = self.last_loss = None
        self.last_good_step = latest  # the last checkpoint written (or restored)
        self.decode_failures = self.skipped_steps = self.skipped_in_a_row = 0
        self.log_t, self.log_step = time.perf_counter(), start_step
        self.input_wait = 0.0  # seconds the loop waited for its batches since the last log line
        self.input_bound_logs = 0  # logged steps in a row (the first step's aside) that waited on input mostly
        self.hinted = False
        # The loop's time per step after the first (which compiles), for the ETA: the median of the latest ones, so
        # that neither the start-up nor an evaluation or a checkpoint in between sways it.
        self.step_times: collections.deque[float] = collections.deque(maxlen=ETA_STEPS)
        self.step_end: float | None = None  # when the last step handled ended its time in the loop

    def start(self) -> None:
        """The loop begins: log lines time their steps from now."""
        self.log_t, self.log_step = time.perf_counter(), self.start_step

    def first_step_done(self) -> None:
        """The first step (and its compilation) is done: the steps' times count from now."""
        self.log_t, self.input_wait = time.perf_counter(), 0.0
        self.step_end = self.log_t

    def handle(self, step: int, step_metrics, until: float | None = None) -> None:
        """Logs, writes and checks the metrics of `step`. `until`: when the step's time in the loop ended (for a
        step handled one late, when the next one's began); now by default."""
        config = self.config
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        until = time.perf_counter() if until is None else until
        if step > self.start_step + 1 and self.step_end is not None:
            self.step_times.append(until - self.step_end)
        self.step_end = until
        self.decode_failures += int(values.pop("decode_failures"))
        values["decode_failures"] = self.decode_failures  # videos replaced because they did not decode, this run
        finite, skipped = values.pop("finite"), values.pop("skipped")
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        self.skipped_steps += int(skipped)
        values["skipped_steps"] = self.skipped_steps  # updates skipped (not finite, or a loss spike), this run
        reason = ("the loss, gradient norm or updated parameters are not finite" if not finite else
                  f"the loss spiked above {config.loss_spike.factor} x its running mean (config.loss_spike)")
        if self.skipped_in_a_row > config.max_skipped_steps:
            self._diverged(step, values, reason)
        if skipped:
            _log(f"step {step}: update skipped, {reason} (loss {values['loss']}, gradient norm "
                 f"{values['grad_norm']}); {self.skipped_in_a_row} in a row, training stops after more than "
                 f"config.max_skipped_steps={config.max_skipped_steps}")
        else:
            self.first_loss = values["loss"] if self.first_loss is None else self.first_loss
            self.last_loss = values["loss"]
        if step % config.log_every == 0 or step == self.start_step + 1 or step == self.total_steps:
            self._log_line(step, values, until)

    def _diverged(self, step: int, values: dict, reason: str) -> None:
        self.ckpt.wait()
        where = (f"the last good checkpoint is step {self.last_good_step} in {self.ckpt.path(self.last_good_step)}"
                 if self.last_good_step is not None else "no checkpoint was written")
        in_a_row = (f" ({self.skipped_in_a_row} steps in a row skipped, more than config.max_skipped_steps="
                    f"{self.config.max_skipped_steps})" if self.config.max_skipped_steps else "")
        raise NonFiniteLossError(
            f"Training diverged at step {step}: loss {values['loss']}, gradient norm {values['grad_norm']}: "
            f"{reason}{in_a_row}. Stopping without saving ({where}, left intact). "
            f"Lower config.optimizer.base_lr, set config.optimizer.grad_clip, or check the input data.")

    def _log_line(self, step: int, values: dict, now: float) -> None:
        config, first = self.config, step == self.start_step + 1
        steps_per_s = (step - self.log_step) / max(now - self.log_t, 1e-9) if not first else 0.0
        # The share of the time since the last log line that the loop waited for its batches: near 1, the
        # accelerator idles for want of input. 0 on the first step's line (compilation), as steps_per_s.
        share = min(self.input_wait / max(now - self.log_t, 1e-9), 1.0) if not first else 0.0
        values.update(steps_per_s=steps_per_s, clips_per_s=steps_per_s * config.batch_size, input_wait_share=share)
        self.writer.write(step, values)
        eta = (self.total_steps - step) * float(np.median(self.step_times)) if self.step_times else float("nan")
        _log(f"step {step:>6}/{self.total_steps} | loss {values['loss']:.4f} | lr {values['lr']:.2e} | "
             f"{steps_per_s:6.2f} steps/s | {values['clips_per_s']:7.1f} clips/s | input {share:4.0%} | "
             f"ETA {_format_eta(eta) if math.isfinite(eta) else '--'}"
             + (f" | {self.decode_failures} videos failed to decode" if self.decode_failures else ""))
        if not first:
            self.input_bound_logs = self.input_bound_logs + 1 if share > INPUT_BOUND_SHARE else 0
        if self.input_bound_logs >= INPUT_BOUND_LOGS and not self.hinted:
            self.hinted = True
            _log(input_bound_hint(config, share, step))
        self.log_t, self.log_step, self.input_wait = now, step, 0.0


def _loop(run: Run, train_step, first_batch, state: dict, progress: Progress, stop: preemption.StopOnSignal,
          cleanup: contextlib.ExitStack) -> tuple[dict, dict | None]:
    """The steps after progress.start_step to the last: (state, None), or (state, a preemption's result) when
    SIGTERM / SIGINT stopped it (a checkpoint of that step written first). Each step's metrics are handled one step
    late (and before a checkpoint: one that is not finite is never saved); the evaluators run when due."""
    config, setup, ckpt, writer, start_step = run.config, run.setup, run.ckpt, progress.writer, progress.start_step
    batches = GlobalBatches(run.train_iter, batch_putter(config, setup.mesh), config.data.prefetch,
                            count=setup.total_steps - start_step - 1)
    cleanup.callback(batches.close)
    progress.start()
    pending = None  # (step, device metrics): fetched one step late so the host never waits on the device
    for step in range(start_step + 1, setup.total_steps + 1):
        began = time.perf_counter()  # this step's time in the loop begins, the previous one's ends
        if first_batch is not None:  # fetched before the state was initialised, for the step's compilation
            batch, first_batch = first_batch, None
        else:
            batch = next(batches)
        waited = time.perf_counter() - began  # for its batch: the input's share of this step's time
        if step == start_step + 1:
            try:  # the step's compilation may still run: a signal stops the start-up at once (`stop` not armed)
                state, step_metrics = train_step(state, batch)
                jax.block_until_ready(step_metrics)
            except BaseException:
                train_step.abandon()
                raise
            stop.arm()  # from here a signal stops the run at the next step boundary, with its checkpoint
            # From process start: what a persistent-cache hit saves shows here, with the start-up around it.
            _log(f"First step (compilation included) took {time.perf_counter() - train_step.started:.1f}s; reached "
                 f"{compile_cache.seconds_since_start():.1f}s after start ({train_step.cache})")
            progress.first_step_done()
        else:
            state, step_metrics = train_step(state, batch)
        if pending is not None:
            progress.handle(*pending, until=began)
        progress.input_wait += waited
        pending = (step, step_metrics)
        is_last = step == setup.total_steps
        stopping = stop.requested(step)  # SIGTERM / SIGINT: checkpoint this step and return
        if stopping:
            return state, _wind_down(run, state, step, pending, batches, progress, stop)
        if is_last or (config.checkpoint_every and step % config.checkpoint_every == 0):  # 0: at the end only
            progress.handle(*pending)  # never checkpoint a state that is not finite
            pending = None
            ckpt.save(step, state, batches.position(), config, run.metadata)
            progress.last_good_step = step
        _evaluate(run, state, step, writer)
    if pending is not None:
        progress.handle(*pending)
    return state, None


def _wind_down(run: Run, state: dict, step: int, pending: tuple, batches: GlobalBatches, progress: Progress,
               stop: preemption.StopOnSignal) -> dict:
    """SIGTERM / SIGINT asked for a stop after `step`: its metrics handled, its checkpoint written and waited for,
    the metrics closed. The result says what was kept ("checkpoint": the step folder written), and the caller says
    it (`python -m vidjax.main`: one line, exit 4). A second signal meanwhile calls `run.on_second_signal(signum,
    what was kept)` (a command ends the process there); without one it is handled as it would be without the
    trainer, and the KeyboardInterrupt it raises stops the waiting: "interrupted" then holds it, "last_complete" the
    checkpoint step complete before and "checkpoint" its folder (orbax renames a step folder into place only once
    it is whole, so a step cut short is never resumed from)."""
    result = {"step": step, "total_steps": run.setup.total_steps, "preempted": True, "signal": stop.name,
              "trained": True, "resumed": progress.resumed, "state": state, "checkpoint": run.ckpt.path(step)}
    last_complete = progress.last_good_step
    cut_short = {"step": step, "total_steps": run.setup.total_steps, "last_complete": last_complete,
                 "checkpoint": run.ckpt.path(last_complete) if last_complete is not None else None}
    callback = run.on_second_signal
    try:
        with stop.second_signal(None if callback is None else lambda signum: callback(signum, cut_short)):
            progress.handle(*pending)  # never checkpoint a state that is not finite
            run.ckpt.save(step, state, batches.position(), run.config, run.metadata)
            run.ckpt.close()  # waits until the checkpoint is complete
            progress.last_good_step = step
            progress.writer.close()
    except KeyboardInterrupt as err:
        result.update(interrupted=err, **cut_short)
    return dict(result, first_loss=progress.first_loss, last_loss=progress.last_loss)


def _evaluate(run: Run, state: dict, step: int, writer: MetricWriter) -> None:
    """Runs the evaluators due at `step` (each at its own cadence, all at the last step) on the weights evaluations
    use, each writing its row (split: its name) and a log line."""
    due = [scheduled for scheduled in run.evals if scheduled.due(step, run.setup.total_steps)]
    for scheduled in due:
        summary = scheduled.run(eval_params(state))
        writer.write(step, summary, split=scheduled.name)
        _log(f"{scheduled.name} at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))


def _finish(run: Run, state: dict, progress: Progress, writer: MetricWriter) -> dict:
    """The end of a run: the evaluators' figures of their last run, the files closed, the summary (the final
    metrics of every evaluator beside the train losses)."""
    params = eval_params(state)
    for scheduled in run.evals:
        for path in scheduled.evaluator.figures(params, run.setup.total_steps):
            _log(f"Wrote {path}")
    run.ckpt.close()
    writer.close()
    _log(f"Done: train loss {progress.first_loss:.4f} at step {progress.start_step + 1} -> {progress.last_loss:.4f} "
         f"at step {run.setup.total_steps}; metrics in {writer.path}, checkpoints in {run.ckpt.directory}")
    summary = {key: value for scheduled in run.evals for key, value in scheduled.last.items()}
    return {"step": run.setup.total_steps, "first_loss": progress.first_loss, "last_loss": progress.last_loss,
            "trained": True, "resumed": progress.resumed, "state": state, **summary}
