"""Command-line entry point: `python -m vidjax.main --config=configs/videomae_k400.py[:args] --workdir=DIR`.

Runs (or resumes) the job the config describes: pre-training or fine-tuning through the one trainer.
Override any config value with `--config.KEY=VALUE`, e.g. `--config.batch_size=64`; an unknown key is an error.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vidjax.cli import parse_flags
from vidjax.config_lib import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with arguments: configs/videomae_k400.py:runlocal", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard and figures; "
                               "re-running in the same directory resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO; --verbosity=0 shows it
    from vidjax import train  # imported here so that --help answers without loading jax

    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except train.NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
