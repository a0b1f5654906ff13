"""Config helpers: the strict `get_config(arg)` argument parser and the config blocks shared by configs/."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

import ml_collections

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class ConfigError(ValueError):
    """A config, flag or data setting that cannot work; the message says which and what to do."""


def host_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it, else the machine's count): what the
    defaults sized by the host (`config.data.num_workers=-1`) and the benchmarks' per-core figures count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def host_memory_bytes() -> int | None:
    """This host's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def raise_problems(problems: list[str]) -> None:
    """One ConfigError for every problem found (none: nothing raised), so that one run shows all there is to fix;
    a problem found twice (a setting every split's source checks) is shown once."""
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems with the config, fix them all before the next run:\n"
                          + "\n".join(f"  {i}. {problem}" for i, problem in enumerate(problems, 1)))


def chosen(explicit_keys: Collection[str] | None, key: str) -> bool:
    """Whether config key `key` (e.g. "model.width") is the user's own choice rather than a recipe default.

    `explicit_keys` lists the keys set on the command line (`command_line_keys`); a key counts when it or a block
    holding it is listed. None stands for a config built in Python: every value in it counts as chosen.
    """
    if explicit_keys is None:
        return True
    parts = key.split(".")
    return any(".".join(parts[:i]) in explicit_keys for i in range(1, len(parts) + 1))


def command_line_keys(config_flag: Any) -> set[str]:
    """The config keys a person set on the command line: each `--config.KEY=VALUE`, and `model.variant` when the
    config argument names one (`--config=configs/x.py:variant=S/16`). `config_flag` is `flags.FLAGS["config"]`.

    The trainer and `vidjax.evaluate` let these win over what a checkpoint or the data say (and report where they
    disagree); the recipe's other values give way (`chosen`).
    """
    from ml_collections import config_flags

    keys = set(config_flags.get_override_values(config_flag))
    argument = (config_flag.config_filename or "").partition(":")[2]
    if any(item.partition("=")[0].strip() == "variant" for item in argument.split(",")):
        keys.add("model.variant")
    return keys


def _convert(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"Config argument {key}={text!r} must be a bool (True or False).")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ConfigError(f"Config argument {key}={text!r} must be {kind.__name__}.") from None
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses the `:...` part of `--config=configs/x.py:variant=B/16,runlocal` against `defaults`.

    Items are `key=value` or a bare `key` (meaning True, for bools only). Values take the type of their default;
    an unknown key, a bare non-bool or an unparsable value raises ConfigError naming it.
    """
    parsed = dict(defaults)
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"Unknown config argument {key!r}; valid arguments: {', '.join(sorted(defaults))}.")
        if not sep:
            if not isinstance(defaults[key], bool):
                raise ConfigError(f"Config argument {key!r} needs a value: write {key}=VALUE.")
            parsed[key] = True
        else:
            parsed[key] = _convert(key, value.strip(), defaults[key])
    return ml_collections.ConfigDict(parsed)


def trainer_config() -> ml_collections.ConfigDict:
    """Defaults for everything the trainer reads outside `model` and `data`; configs override what they need."""
    return ml_collections.ConfigDict(dict(
        seed=0,
        # pretrain | classification | multilabel | regression | captioning | svt | vjepa2 | contrastive
        task="pretrain",
        # Fine-tuning start: a vidjax training workdir (its latest checkpoint), one of its step folders, a
        # `python -m vidjax.convert` output or a Hugging Face Hub name (vidjax/pretrained/hub.py); "" = random init.
        init_from="",
        # Non-empty for recipes that cannot start from random weights: why, and how to get a checkpoint. The trainer
        # stops at start-up with this message when init_from is empty; set it to "" to train from scratch anyway.
        needs_init_from="",
        # Captioning: a converted GPT-2 (`python -m vidjax.convert --from_hf gpt2 --out DST`) the captioner's decoder
        # starts from; config.init_from then starts its encoder. "" = random init.
        decoder_init="",
        batch_size=16,  # global, across all devices and processes
        num_epochs=1.0,
        total_steps=0,  # > 0 overrides num_epochs
        optimizer=dict(
            name="adamw",  # adamw | sgd (momentum, nesterov; L2 weight decay as PyTorch's SGD)
            base_lr=1.5e-4,  # scaled by batch_size / lr_batch_base, as in the reference
            lr_batch_base=256,
            b1=0.9, b2=0.95, weight_decay=0.05,  # b1, b2: adamw
            eps=1e-8,  # adamw: added to the root of the second moment (optax's and PyTorch's default)
            momentum=0.9, nesterov=True,  # sgd
            warmup_epochs=40.0,
            min_lr=1e-5,
            schedule="cosine",  # cosine (to min_lr) | constant | steps (lr_steps / lr_step_scales) | wsd
            warmup_start=0.0,  # wsd: the warm-up starts at this share of the peak (V-JEPA 2: 1e-4 / 5.25e-4)
            cooldown_epochs=0.0,  # wsd: the last epochs, a linear decay from the peak to min_lr
            lr_steps=(), lr_step_scales=(),  # steps: from epoch lr_steps[i] on, peak x lr_step_scales[i]
            grad_clip=0.0,  # 0 = no clipping
            grad_clip_mode="global",  # global: one factor for all gradients | per_tensor: each on its own (SVT)
            weight_decay_end=-1.0,  # adamw: >= 0 moves weight_decay to this along a cosine (SVT); < 0 constant
            label_smoothing=0.0,
            layer_decay=1.0,  # layer-wise lr decay (VideoMAE fine-tuning: 0.75); 1 = off
            ema_decay=0.0,  # > 0 keeps an exponential moving average of the weights, used for evaluation
        ),
        # Fine-tuning losses. mixup / cutmix (timm semantics, batch mode) mix videos and their labels.
        loss=dict(
            mixup_alpha=0.0, cutmix_alpha=0.0,  # 0 = off (VideoMAE fine-tuning: 0.8 and 1.0)
            mixup_prob=1.0, mixup_switch_prob=0.5,
            # Imbalanced data: "" (off), "balanced" (inverse class frequency of the training set, or for
            # multilabel the negatives / positives ratio of each class), or comma-separated values, one a class.
            class_weights="",  # classification: weights of the cross-entropy per true class
            pos_weight="",  # multilabel: weight of each class's positive term in the sigmoid BCE
            regression="mse",  # regression loss: mse | ccc (1 - concordance correlation, averaged over targets)
        ),
        log_every=50,
        # Classification of Kinetics: "" = evaluate the head's classes as they are; "k400" / "k600" / "k700" = the
        # head has K710's 710 classes (VideoMAE V2) and the eval split is labelled in that release's classes: its
        # outputs are mapped there before scoring (vidjax.data.kinetics.label_map, the official 710 -> N maps).
        eval_label_space="",
        eval_every=0,  # 0 = only at the end
        eval_batches=0,  # 0 = the whole eval split
        # The run's evaluations, name -> dict(type, every, split, data, batches, prefix, init, the type's options):
        # vidjax/evaluators/__init__.py. Empty: one, "eval", the task's evaluator at eval_every over eval_batches.
        evals={},
        checkpoint_every=1000,  # 0 = only at the end (and when the run is stopped)
        keep_checkpoints=3,
        # Faults. A step whose loss, gradients or updated parameters are not finite is skipped (parameters,
        # optimizer and EMA state kept; counted as `skipped_steps` in the metrics); training stops with an error
        # after more than max_skipped_steps in a row (0 = stop at the first).
        max_skipped_steps=5,
        # Loss-spike guard, off by default (factor 0): with factor > 1, a step whose loss exceeds factor x the
        # running mean of accepted losses (an EMA with `decay`, bias-corrected, active once `min_steps` steps were
        # accepted) is skipped and counted like a non-finite one. Resuming needs it on or off as the run started.
        loss_spike=dict(factor=0.0, decay=0.99, min_steps=50),
        # Captioning (task="captioning"): captions are cut to max_length tokens (start and end tokens included);
        # evaluation writes max_length - 1 new tokens a video with num_beams beams (1 = greedy) and length_penalty,
        # and the end of a run prints `samples` captions beside their references.
        caption=dict(max_length=32, num_beams=1, length_penalty=1.0, samples=8),
        figure=True,  # at the end: reconstruction.png (pre-training), confusion_matrix.png (classification)
        # Weights & Biases (pip install 'vidjax[wandb]'): a project name sends the metrics there too; "" = off.
        # mode: offline (files under WORKDIR/wandb, no network; `wandb sync` uploads them) | online | disabled.
        wandb=dict(project="", entity="", name="", tags=(), mode="offline"),
        mesh=dict(data=-1, fsdp=1, tensor=1),
        # Memory. grad_accum_steps > 1 splits each global batch into that many micro-batches inside the jitted
        # step (gradients averaged: the same update as one big batch, with a micro-batch's activation memory).
        grad_accum_steps=1,
        # Where the step holds its global batch while it runs the micro-batches: "device" (on the chips, each
        # micro-batch cut from it) or "host" (pinned host memory, each micro-batch copied to the chips as the loop
        # reaches it: a chip holds one micro-batch's input, where VideoMAE V2's 4,096 clips are 9.2 GiB whole).
        batch_memory="device",
        # Per-device memory the compiled train step may use, in GiB, checked before the first step;
        # 0 = the limit the device reports (GPU / TPU; the CPU backend reports none and is not checked).
        memory_limit_gb=0.0,
        # A train step compiled ahead of time for this run's slice (`python -m vidjax.aot --save=FILE`): loaded
        # instead of compiled, once it is known to be this run's step on the same devices and versions; "" = compile.
        aot_step="",
        # Logical parameter axis -> mesh axis ("" = replicated; a tuple splits over several mesh axes).
        # `inner` is a Mamba block's expanded channel axis, `state` its SSM state axis, `positions` the token axis
        # of learned position tables.
        sharding_rules=dict(embed="fsdp", decoder_embed="fsdp", mlp="tensor", heads="tensor", head_dim="",
                            classes="", norm="", inner="tensor", state="", positions="",
                            layers="",  # the leading axis of stacked blocks (config.model.scan_layers)
                            # Activation axes inside the transformer blocks (vidjax/sharding.py: `constrain`):
                            # heads and the MLP hidden over "tensor" (Megatron-style), the residual stream whole.
                            act_batch=("data", "fsdp"), act_length="", act_embed="", act_heads="tensor",
                            act_head_dim="", act_mlp="tensor"),
    ))


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `data` block: every source's and transform's keys, so any of them can be set on a locked config.

    `source` picks the reader (docs/datasets.md has one section each):
      synthetic      the embedded generated dataset (num_train / num_eval clips)
      csv            train_csv / eval_csv lists (VideoMAE `path label`, or a header with path, label or labels,
                     start, end and the `targets` columns), paths relative to `root`
      folder         train_folder / eval_folder trees of class sub-folders
      charades       Charades-style train_csv / eval_csv (id, actions `cNNN start end;...`), videos root/<id>.mp4
      tfds           a prepared TFDS dataset tfds_name (splits train_split / eval_split) under tfds_data_dir
      array_record   train_pack / eval_pack folders written by `python -m vidjax.data.pack`
    """
    block = ml_collections.ConfigDict(dict(
        source="synthetic",
        num_train=1024, num_eval=256,  # synthetic only
        # synthetic only: the targets its clips carry, named by their batch key (a task's `synthetic_task`): label (a
        # motion class) | labels (multi-hot, several objects) | targets (a velocity) | captions
        synthetic_task="label",
        # synthetic only: 0 = every clip its own background and object look; N = each clip one of N fixed looks, drawn
        # independently of its label (1: only the motion and the start tell clips apart)
        synthetic_looks=0,
        # synthetic only (label): True = the background's stripes run along the class's motion axis, a scene
        # cue to the class as Kinetics' scenes are (SVT's runlocal; vidjax/data/synthetic.py)
        synthetic_scene_cue=False,
        # Classes: 0 = the data's own count (class folders, a names file, a list's labels; the embedded dataset's 8),
        # and the model's head follows it; a positive count must agree with the data.
        num_classes=0, num_frames=16, image_size=224, sampling_rate=1,
        train_csv="", eval_csv="", root="",
        train_folder="", eval_folder="",
        train_pack="", eval_pack="",
        tfds_name="", tfds_data_dir="", train_split="train", eval_split="test", video_key="video", label_key="label",
        targets="",  # comma-separated regression columns of a csv list, e.g. "valence,arousal"
        class_names_file="",  # one class name per line (Charades: its classes file)
        # Captioning: the list column of each video's captions (csv: ';'-separated references; charades: script or
        # descriptions), and the tokenizer: a Hugging Face tokenizer directory, or "" for a word-level one built from
        # the training captions (saved into the run's WORKDIR/tokenizer either way).
        caption_column="", tokenizer="",
        skip_missing=False,  # False: listed files that do not exist stop the run at start-up
        short_side=0,  # resize the short side to this before cropping (0 = image_size)
        # Training augmentation.
        train_crop="random",  # random | multi_scale (VideoMAE pre-training) | random_resized (fine-tuning)
        crop_scales=(1.0, 0.875, 0.75, 0.66),  # multi_scale
        # random_resized: the crop's share of the frame's area, and its width over height (log-uniform), each drawn
        # in this range (Inception's and VideoMAE fine-tuning's; V-JEPA 2: (0.3, 1.0) and (0.75, 1.35))
        resized_crop_area=(0.08, 1.0), resized_crop_ratio=(3 / 4, 4 / 3),
        flip=True,
        rand_augment="",  # e.g. "rand-m7-n4-mstd0.5-inc1" (VideoMAE fine-tuning); "" = off
        erase_prob=0.0,  # random erasing probability (VideoMAE fine-tuning: 0.25)
        # Where training clips are converted from YUV, cropped and resized: "host" (the input workers send RGB
        # crops), "device" (they send the decoded planes of the crops' region, the step does the pixels;
        # `vidjax.ops.pixels`) or "auto" (the backend's choice, `platform.pixels_rule`, where the clips allow it).
        pixels="auto",
        pixel_canvas=(0, 0),  # device pixels: the planes' (rows, columns); (0, 0) = `pipeline.pixel_canvas`'s size
        # What decodes the device-pixel path's training clips: "pyav" (libavcodec on the host's cores) or "nvdec"
        # (the GPU's video engine, `vidjax.data.nvdec`; `pip install 'vidjax[nvdec]'`, an NVIDIA GPU).
        decoder="pyav",
        num_samples=1,  # repeated augmentation: clips per decoded video (batch_size counts clips)
        # Evaluation views: clips (evenly spaced windows) x crops, predictions averaged over views.
        test_num_clips=1, test_num_crops=1,
        # a video that fails to decode is replaced by another, drawn by the seed; a training element whose videos
        # fail this many times in a row is dropped (an eval element goes on through the split: `pipeline.Preprocess`)
        max_decode_attempts=5,
        # grain worker processes decoding per host: 0 = in the trainer's process (the embedded dataset, tests);
        # -1 = one per host core less one for the trainer (`pipeline.resolve_num_workers`), files' default.
        num_workers=0, seed=0,
        prefetch=2,  # global batches a background thread puts on the devices ahead of the step (0 = no thread)
    ))
    unknown = set(overrides) - set(block)
    if unknown:
        raise ConfigError(f"Unknown data config keys {sorted(unknown)}.")
    block.update(overrides)
    return block


def synthetic_data(num_frames: int, image_size: int, num_classes: int = 8, num_train: int = 1024,
                   num_eval: int = 256) -> ml_collections.ConfigDict:
    """A `data` block on the embedded generated dataset (no files, no download)."""
    return data_config(source="synthetic", num_train=num_train, num_eval=num_eval, num_classes=num_classes,
                       num_frames=num_frames, image_size=image_size, sampling_rate=1)


def recipe_variant(arg: ml_collections.ConfigDict, full: str, local: str) -> str:
    """The model variant of a recipe: the `variant=` config argument when given (with `runlocal` too, so that
    `:runlocal,variant=S/16` trains that size on the embedded dataset), else the recipe's `full` size, or its `local`
    micro size under `runlocal`. Configs declare `variant=""` in `parse_arg` for this."""
    return arg.variant or (local if arg.runlocal else full)


def video_blocks(model: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(where under config.model, block) of a trainer's model block and of the video models' blocks nested in it:
    ("", the model block) first, then "encoder" (a captioner's video encoder) and "backbone" (SVT's TimeSformer under
    its DINO head) where present. The blocks that hold the step's dtype, remat and attention."""
    return [("", model)] + [(key, model[key]) for key in ("encoder", "backbone")
                            if key in model and hasattr(model[key], "keys")]


def runlocal(config: ml_collections.ConfigDict, variant: str, peak_lr: float, *, num_frames: int = 8,
             image_size: int = 32, batch_size: int = 32, num_epochs: float = 8,
             video_model: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """Shrinks a recipe to its `runlocal` form: a micro model on the embedded dataset, a few minutes on a CPU.

    The same for every model: 8 x 32 x 32 clips of the generated dataset's 8 classes (2048 train / 256 eval),
    batch 32, `num_epochs` epochs, one warm-up epoch, logs every 25 steps, eval and checkpoint every 256. Tiny models
    take larger steps, so the caller gives the peak learning rate; `variant` is `recipe_variant`'s choice.
    `video_model` is the block that holds the video model's size and clip (a captioner's encoder); None:
    config.model. The data keeps the recipe's embedded-dataset variant (config.data.synthetic_task, synthetic_looks
    and synthetic_scene_cue).
    """
    video = config.model if video_model is None else video_model
    video.variant = variant
    video.num_frames, video.image_size = num_frames, image_size
    if config.model.get("head") == "classification" and config.model.num_classes == config.data.num_classes:
        config.model.num_classes = 8  # a head of one output per class of the recipe's data: one per embedded class
    video.drop_path = 0.0
    keep = {key: config.data[key] for key in ("synthetic_task", "synthetic_looks", "synthetic_scene_cue")}
    config.data = synthetic_data(num_frames=num_frames, image_size=image_size, num_classes=8, num_train=2048,
                                 num_eval=256)
    config.data.update(keep)
    config.batch_size, config.num_epochs = batch_size, num_epochs
    config.optimizer.base_lr = peak_lr * config.optimizer.lr_batch_base / batch_size
    config.optimizer.warmup_epochs = 1
    config.optimizer.min_lr = 1e-5
    config.log_every, config.eval_every, config.eval_batches, config.checkpoint_every = 25, 256, 0, 256
    return config


def csv_data(train_csv: str, eval_csv: str, root: str, num_classes: int, num_frames: int, image_size: int,
             sampling_rate: int) -> ml_collections.ConfigDict:
    """A `data` block over VideoMAE-format CSV lists (`path label` per line) of video files."""
    return data_config(source="csv", num_train=0, num_eval=0, num_classes=num_classes, num_frames=num_frames,
                       image_size=image_size, sampling_rate=sampling_rate, train_csv=train_csv, eval_csv=eval_csv,
                       root=root, short_side=int(image_size * 256 / 224), num_workers=-1)


def differences(before: ml_collections.ConfigDict | str, after: ml_collections.ConfigDict | str,
                skip: Collection[str] = (), limit: int = 6) -> list[str]:
    """'key before -> after' for each dotted config key whose value differs between two configs (ConfigDicts or
    their JSON), sorted, at most `limit` named and then how many more; keys in `skip` are left out."""
    import json

    def flat(value, prefix=""):
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                out.update(flat(item, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: value}

    try:
        one, two = (flat(json.loads(c) if isinstance(c, str) else c.to_dict()) for c in (before, after))
    except ValueError:
        return []
    keys = sorted(key for key in one.keys() | two.keys() if one.get(key) != two.get(key) and key not in skip)
    return [f"{key} {one.get(key)!r} -> {two.get(key)!r}" for key in keys[:limit]] + (
        [f"and {len(keys) - limit} more"] if len(keys) > limit else [])


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, e.g. `load_config_file("configs/videomae_k400.py", "runlocal")`."""
    import importlib.util
    import pathlib

    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file {path!r} does not exist; configs live in configs/, "
                          f"e.g. configs/videomae_k400.py.")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
