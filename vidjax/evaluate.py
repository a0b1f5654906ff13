"""Evaluate a checkpoint on a config's eval split: `python -m vidjax.evaluate --config=CONFIG --checkpoint=DIR`.

DIR is a training workdir (its latest checkpoint; the EMA weights when the run kept them), one of its step
folders, or a `python -m vidjax.convert` output. The config gives the model and the data, and any value can be
overridden as for `vidjax.main`, e.g. the multi-view test:

  python -m vidjax.evaluate --config=configs/videomae_finetune_k400.py --checkpoint=/ckpt/videomae_b16_k400_ft \\
    --config.data.test_num_clips=5 --config.data.test_num_crops=3 --out=/ckpt/videomae_b16_k400_ft/test.json

Prints the task's metrics (classification: top1, top5, macro_f1; multilabel: mAP; regression: ccc per target,
ccc_mean, mse; pre-training: the reconstruction loss) and with --out writes them as JSON (and, for
classification, the confusion matrix as OUT's name with .png). Exit status: 0 done, 2 bad config or checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vidjax.cli import parse_flags
from vidjax.config_lib import ConfigError


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file (model and eval data), e.g. "
                                    "configs/videomae_finetune_k400.py[:runlocal]", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "Training workdir, step folder, or converted checkpoint to evaluate.")
    flags.DEFINE_string("out", None, "Write the metrics here as JSON (and the confusion matrix next to it).")
    flags.mark_flags_as_required(["config", "checkpoint"])


def evaluate_checkpoint(config, checkpoint: str, out: str | None = None) -> dict[str, float]:
    """The eval metrics of `checkpoint` on `config`'s eval split, over all devices (every process calls this)."""
    import jax

    from vidjax import fileio, metrics, pretrained, sharding, train
    from vidjax.data import pipeline

    train.check_config(config)
    eval_source = pipeline.make_source(config.data, "eval")
    mesh = sharding.create_mesh(config.mesh)
    pipeline.check_batch_size(config, jax.process_count(), mesh.size)
    setup = train.build(config, max(len(eval_source), config.batch_size), mesh)
    params, report = pretrained.init_from(checkpoint, config.model_name, config.model, setup.init_params())
    if report["fresh"]:
        raise ConfigError(f"{checkpoint} has no trained values for {', '.join(report['fresh'][:6])}: the model "
                          f"config.model describes differs from the checkpoint's (e.g. a pre-training checkpoint "
                          f"has no classification head). Evaluate the checkpoint the run wrote, with its config.")
    mask_grid = setup.abstract_model.encoder.grid if config.task == "pretrain" else None
    outputs: dict = {}
    summary = train.evaluate(config, setup, train.make_eval_step(config, setup), params, eval_source, mask_grid,
                             target_names=pipeline.target_names(config.data) or None, outputs=outputs)
    if out and jax.process_index() == 0:
        with fileio.atomic_output(out) as f:
            json.dump({"checkpoint": str(checkpoint), "num_examples": len(outputs["loss"]) if outputs else None,
                       **summary}, f, indent=1)
        if config.task == "classification":
            names = getattr(eval_source, "class_names", None)
            metrics.confusion_matrix_figure(metrics.confusion_matrix(outputs["scores"], outputs["label"]), names,
                                            os.path.splitext(out)[0] + ".png",
                                            title=f"{checkpoint}: top-1 {summary['eval_top1']:.3f}")
    return summary


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from vidjax.convert.common import ConversionError

    try:
        summary = evaluate_checkpoint(flags.FLAGS.config, flags.FLAGS.checkpoint, flags.FLAGS.out)
    except (ConfigError, ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
