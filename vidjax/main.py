"""Command-line entry point: `python -m vidjax.main --config=configs/videomae_k400.py[:args] --workdir=DIR`.

Runs (or resumes) the job the config describes: pre-training or fine-tuning through the one trainer.
Override any config value with `--config.KEY=VALUE`, e.g. `--config.batch_size=64`; an unknown key is an error.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vidjax.config_lib import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with arguments: configs/videomae_k400.py:runlocal", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard and figures; "
                               "re-running in the same directory resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def _describe(err: BaseException, argv: list[str]) -> str:
    """One clear line for a flag-parsing error: the ConfigError's own words, or the unknown key and its flag."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    config_errors = [e for e in chain if isinstance(e, ConfigError)]
    if config_errors:  # innermost: config_flags re-raises it with the whole traceback as its message
        return str(config_errors[-1])
    for e in chain:
        if isinstance(e, KeyError) and e.args:
            text = str(e.args[0]).replace("\n", " ")
            key = text.split("'")[1] if text.count("'") >= 2 else text
            flag = next((a for a in argv if a.startswith("--config.") and f".{key}" in a.split("=")[0]), "--config")
            return f"unknown config key {key!r} in {flag}. {text.split(' ', 1)[-1] if ' ' in text else ''}".strip()
    return str(chain[0])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config mistakes (unknown key, bad value, bad variant) as one-line errors."""
    try:
        return flags.FLAGS(argv)
    except SystemExit:
        # absl exits 1 after printing --help; asking for help is not a failure.
        if any(a.split("=")[0] in ("--help", "-h", "-?", "--helpshort", "--helpfull") for a in argv[1:]):
            sys.exit(0)
        raise
    except (flags.Error, KeyError, ValueError, AttributeError) as err:
        print(f"error: {_describe(err, argv)}\nRun `python -m vidjax.main --help` for the flags.", file=sys.stderr)
        sys.exit(2)


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
