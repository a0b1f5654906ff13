"""Evaluate a checkpoint on an eval split: `python -m vidjax.evaluate --checkpoint=DIR [--config=CONFIG]`.

DIR is a training workdir (its latest checkpoint; the EMA weights when the run kept them), one of its step
folders, a `python -m vidjax.convert` output, or a Hugging Face Hub name (owner/name[@REV], owner/name/FILE.pth;
converted once into vidjax's cache, pretrained/hub.py). A training checkpoint stores the config of its run, so alone it
is scored on the eval split it was trained with, exactly as the trainer scored it; `--config.KEY=VALUE` changes any
value of that config, as for `vidjax.main`, e.g. the multi-view test:

  python -m vidjax.evaluate --checkpoint=/ckpt/videomae_b16_k400_ft \\
    --config.data.test_num_clips=5 --config.data.test_num_crops=3 --out=/ckpt/videomae_b16_k400_ft/test.json

`--config=FILE` gives other data (and settings) to evaluate on; a converted checkpoint, which records no data,
needs one. The model is always the checkpoint's: of the model keys only those set with --config.model.KEY count
(the clip size, num_frames and image_size, with position tables interpolated; dtype; remat), and one that would
change the trained model is an error naming both values. The data's class count (0, or not set on the command
line) must match the checkpoint's head.

Runs the evaluators the config names (config.evals, `vidjax.evaluators`; without any, the task's one: "eval"), the
trainer's own, and prints their metrics (classification: top1, top5, macro_f1; multilabel: mAP; regression: ccc
per target, ccc_mean, mse; captioning: BLEU, ROUGE-L, CIDEr; SVT: the k-NN's top1 and top5; pre-training: the
reconstruction loss), each under its prefix (eval_top1); with --out writes them as JSON (and, for classification,
the confusion matrix as OUT's name with .png). Exit status: 0 done, 2 bad config, checkpoint or --out (a folder,
an unwritable place: checked before the evaluation starts), 130 / 143 stopped by SIGINT / SIGTERM (one line; --out
is written whole at the end, so an interrupted evaluation leaves none).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection
from typing import NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from vidjax import cli, fileio
from vidjax.config_lib import ConfigError, chosen, command_line_keys, raise_problems


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file giving the eval data (and settings), e.g. "
                                    "configs/videomae_finetune_k400.py[:runlocal]; default: the config stored with "
                                    "a training checkpoint", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "Training workdir, step folder, converted checkpoint or Hugging Face Hub "
                        "name (owner/name[@REV]) to evaluate.")
    flags.DEFINE_string("out", None, "Write the metrics here as JSON (and the confusion matrix next to it).")
    flags.mark_flags_as_required(["checkpoint"])


def get_config(checkpoint: str):
    """The config stored with training checkpoint `checkpoint`, as a config file's `get_config` gives one: what
    `--config.KEY=VALUE` flags change when no --config is given (`stored_config_argv`)."""
    return _training_config(_read_stored(checkpoint), checkpoint)


def _read_stored(checkpoint: str):
    """What `checkpoint` records (`pretrained.read_config`); a file it cannot read is a ConfigError naming the flag."""
    # here, not at the top: --help answers without loading jax
    from vidjax import pretrained
    from vidjax.convert.common import ConversionError

    try:
        return pretrained.read_config(checkpoint)
    except (ConversionError, FileNotFoundError) as err:
        raise ConfigError(f"--checkpoint={checkpoint}: {err}") from err  # flag parsing reports a ConfigError alone


def _training_config(stored, checkpoint: str) -> ml_collections.ConfigDict:
    """The config of the run that wrote `checkpoint` (`stored`: what it records); a converted one records none."""
    from vidjax import tasks  # here, not at the top: --help answers without loading jax

    if stored.training is None:
        raise ConfigError(_NO_DATA.format(checkpoint=checkpoint))
    return tasks.upgrade_stored_config(stored.training)


_NO_DATA = ("--checkpoint={checkpoint} is a converted checkpoint: its vidjax.json records the model but no data to "
            "evaluate on. Give the data with --config=FILE and its --config.data.* flags, e.g. "
            "--config=configs/videomae_finetune_k400.py --config.data.eval_csv=/data/val.csv "
            "--config.data.root=/data/videos (the model stays the checkpoint's).")


def stored_config_argv(argv: list[str]) -> list[str]:
    """`argv` with `--config=<this file>:CHECKPOINT` added when it has --config.KEY overrides but no --config, so
    that the overrides apply to the config stored with the checkpoint."""
    args = argv[1:]
    has_config = any(a == "--config" or a.startswith("--config=") for a in args)
    if has_config or not any(a.startswith("--config.") for a in args):
        return argv
    checkpoint = next((a.split("=", 1)[1] for a in args if a.startswith("--checkpoint=")), None)
    if checkpoint is None and "--checkpoint" in args[:-1]:
        checkpoint = args[args.index("--checkpoint") + 1]
    if checkpoint is None:
        return argv  # absl reports the missing --checkpoint
    return [argv[0], f"--config={os.path.abspath(__file__)}:{checkpoint}", *args]


def evaluate_checkpoint(config, checkpoint: str, out: str | None = None,
                        explicit_keys: Collection[str] | None = None, outputs: dict | None = None) -> dict[str, float]:
    """The eval metrics of `checkpoint` on an eval split, over all devices (every process calls this).

    `config` gives the data and settings; None: the config stored with a training checkpoint (`checkpoint` alone
    then reproduces the run's final evaluation). `explicit_keys`: the config keys the user chose (the command line's
    --config.KEY flags); the model, task and the data's clip size and class count follow the checkpoint where these
    do not say otherwise (`resolve_config`). None: `config` is used as given.

    The evaluations are those the config names (config.evals, `vidjax.evaluators`; a run's config without any: the
    task's one evaluator, "eval"), each over its split, and the summary holds all of their metrics, each under its
    prefix ("eval_top1"). With `outputs` (a dict), the first evaluator's per-example outputs are left in it (e.g.
    "scores" and "label", for per-class figures).
    """
    # here, not at the top: --help answers without loading jax
    import jax

    from vidjax import evaluators, train
    from vidjax.data import pipeline

    where = f"--checkpoint={checkpoint}"
    stored = _read_stored(checkpoint)
    if config is None:
        config = _training_config(stored, checkpoint)
    config = resolve_config(config, stored, explicit_keys, where)
    names, eval_source, mesh = _checked_inputs(config, stored, where)
    setup = train.build(config, max(len(eval_source), config.batch_size), mesh)
    params = _trained_params(checkpoint, config, stored, setup.init_params(), where)
    context = train.eval_context(config, setup, sources={"eval": eval_source}, class_names=names,
                                 metadata={**(stored.metadata or {}),
                                           "target_names": pipeline.target_names(config.data) or None})
    scheduled = evaluators.from_config(context)  # the splits any of them reads besides "eval" made and checked
    summary: dict[str, float] = {}
    for evaluation in scheduled:
        summary.update(evaluation.run(params))
    first = scheduled[0].evaluator.outputs  # per-example outputs of padded evals ({}: a trimmed loss estimate)
    if outputs is not None:
        outputs.update(first)
    if out and jax.process_index() == 0:
        _write_results(out, checkpoint, scheduled, summary)
    return summary


def _checked_inputs(config: ml_collections.ConfigDict, stored, where: str) -> tuple:
    """(the class names the eval data takes from the checkpoint, the eval source, the mesh) of `config`; every
    problem of the config, the data and the mesh raised together, as one ConfigError."""
    # here, not at the top: --help answers without loading jax
    import jax

    from vidjax import sharding, tasks, train
    from vidjax.data import pipeline

    problems = train.config_problems(config) + train.batch_memory_problems(config)
    if config.task not in tasks.available():
        raise_problems(problems)
    task = tasks.training_of(config.task)
    eval_source = None
    names = stored.class_names if task.names_classes else None
    try:
        eval_source = pipeline.make_source(config.data, "eval", class_names=names)
    except (ConfigError, FileNotFoundError) as err:
        problems.append(str(err))
    if eval_source is not None and task.counts_classes:
        problems += _class_count_problems(config, eval_source, where)
    mesh = None
    try:
        mesh = sharding.create_mesh(config.mesh)
    except ConfigError as err:
        problems.append(str(err))
    if mesh is not None:
        problems += pipeline.batch_size_problems(config, jax.process_count(), mesh.size,
                                                 {"eval": len(eval_source)} if eval_source is not None else None,
                                                 pads_eval=task.pads_eval)
    raise_problems(problems)
    return names, eval_source, mesh


def _trained_params(checkpoint: str, config: ml_collections.ConfigDict, stored, init_params, where: str):
    """`checkpoint`'s parameters in the model `config` builds (`init_params`: its fresh ones); a ConfigError saying
    why when the checkpoint has no values for some of them."""
    from vidjax import pretrained  # here, not at the top: --help answers without loading jax

    params, report = pretrained.init_from(checkpoint, config.model_name, config.model, init_params,
                                          flag="--checkpoint")
    if report["fresh"]:
        differing = pretrained.model_differences(stored.model, config.model, pretrained.EVALUATION_KEYS)
        raise ConfigError(
            f"{where} has no trained values for {', '.join(report['fresh'][:6])}: "
            + (f"the model config.model describes differs from the checkpoint's ("
               f"{pretrained.format_differences(differing, 'config.model')}). " if differing else "")
            + ("A pre-training checkpoint has no classification head: fine-tune it first (--config.init_from), "
               "then evaluate that run." if stored.model.get("head") == "pretrain" else
               "Evaluate with the checkpoint's own model (leave config.model unset)."))
    return params


def _write_results(out: str, checkpoint: str, scheduled: list, summary: dict[str, float]) -> None:
    """--out: the metrics as JSON, and each evaluation's figure beside it."""
    first = scheduled[0].evaluator.outputs
    with fileio.atomic_output(out) as f:
        json.dump({"checkpoint": str(checkpoint),
                   "num_examples": len(next(iter(first.values()))) if first else None, **summary}, f, indent=1)
    stem = os.path.splitext(out)[0]
    for evaluation in scheduled:  # OUT.png, and OUT_<name>.png for the evaluations after the first
        evaluation.evaluator.figure(stem + ("" if evaluation is scheduled[0] else f"_{evaluation.name}") + ".png",
                                    title=str(checkpoint))


def resolve_config(config: ml_collections.ConfigDict, stored, explicit_keys: Collection[str] | None,
                   where: str) -> ml_collections.ConfigDict:
    """`config` for evaluating the checkpoint `stored` (`pretrained.read_config`) describes.

    With `explicit_keys` (the command line's choices): the model is the checkpoint's (`pretrained.take_model`; of
    its keys, chosen ones among `pretrained.EVALUATION_KEYS` count, and other chosen ones that differ are errors),
    and so are the task and model name; the data's clip follows the model unless chosen; for data read from files
    a class count not chosen is taken from the data and checked against the head (`_class_count_problems`); a batch
    size not chosen is rounded up to split over the devices. Each of these is the trained run's, or what the
    evaluation cannot change without changing the model. None: `config` as given.
    """
    import math

    # here, not at the top: --help answers without loading jax
    import jax

    from vidjax import pretrained
    from vidjax.models import clip_spec

    config = config.copy_and_resolve_references()
    if explicit_keys is None:
        return config
    problems = []
    if config.model_name != stored.model_name and chosen(explicit_keys, "model_name"):
        problems.append(f"{where} holds a {stored.model_name} checkpoint, but --config.model_name="
                        f"{config.model_name}: drop that flag.")
    try:
        model, _ = pretrained.take_model(stored.model, config.model if config.model_name == stored.model_name else
                                         ml_collections.ConfigDict(), explicit_keys, where,
                                         free=pretrained.EVALUATION_KEYS)
    except ConfigError as err:
        problems.append(str(err))
        model = stored.model
    with config.unlocked():
        config.model_name, config.model = stored.model_name, model
    if stored.task and not chosen(explicit_keys, "task"):
        config.task = stored.task
    clips = clip_spec(config.model_name, config.model)
    for key in ("num_frames", "image_size"):
        if not chosen(explicit_keys, f"data.{key}"):
            config.data[key] = clips[key]
    if config.data.source != "synthetic" and not chosen(explicit_keys, "data.num_classes"):
        config.data.num_classes = 0  # taken from the data, then checked against the head
    multiple = math.lcm(jax.device_count(), jax.process_count())
    if config.batch_size % multiple and not chosen(explicit_keys, "batch_size"):
        # The evaluation is the same whatever the batch (the last one is padded, the padding not scored).
        config.batch_size = -(-config.batch_size // multiple) * multiple
    raise_problems(problems)
    return config


def _class_count_problems(config: ml_collections.ConfigDict, eval_source, where: str) -> list[str]:
    """The eval data's classes against the checkpoint's head; config.data.num_classes 0 becomes the head's count."""
    from vidjax.data import pipeline  # here, not at the top: --help answers without loading jax

    head = config.model.num_classes
    count, exact = pipeline.source_classes(eval_source)
    if config.data.num_classes:
        return []  # train.config_problems compares it with the head
    config.data.num_classes = head
    if count is not None and (count > head or (exact and count != head)):
        names = getattr(eval_source, "class_names", None)
        return [f"The eval data ({pipeline.describe_split(config.data, 'eval')}) has {count} classes"
                + (f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})" if names else "")
                + f" but {where} has a head of {head}: evaluate it on data with the classes it was trained on."]
    return []


def check_out(out: str) -> None:
    """A ConfigError unless --out names a file that can be written (checked before the evaluation, which would
    otherwise fail only at its end): not a folder, under a folder (or where one can be made) this user may write."""
    path = fileio.user_path(out)
    if os.path.isdir(path) or out.endswith(os.sep):
        raise ConfigError(f"--out={out} is a folder; --out names the JSON file to write the metrics to, e.g. "
                          f"--out={os.path.join(out, 'eval.json')}.")
    existing = os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--out={out}: {existing} is a file, so the folder for --out cannot be made; give a path "
                          f"in a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out={out}: {existing} is not writable by this user; give a path the command can write.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from vidjax.convert.common import ConversionError  # here, not at the top: --help answers without loading jax

    out = flags.FLAGS.out
    try:
        if out:
            check_out(out)
        # The flags a person typed (none without --config) are what may differ from the checkpoint's own config.
        explicit = command_line_keys(flags.FLAGS["config"]) if flags.FLAGS.config is not None else set()
        summary = evaluate_checkpoint(flags.FLAGS.config, flags.FLAGS.checkpoint, out, explicit)
    except (ConfigError, ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        return cli.stopped(err, "the evaluation was not finished and nothing was written" + (
            f" (--out={out} is written whole, once every metric is in)" if out else "")
            + "; run the same command again to evaluate.")
    print(" ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.evaluate`: what its entry module calls (`cli.run`: one-line errors, SIGINT and SIGTERM
    answered with one line and exit 130 or 143)."""
    define_flags()
    sys.argv = stored_config_argv(sys.argv)  # --config.KEY overrides without --config: of the checkpoint's config
    cli.run(main)
