"""Command-line plumbing shared by vidjax's absl programs (main, evaluate): one-line errors for bad flags."""

from __future__ import annotations

import os
import sys

from absl import flags

from vidjax.config_lib import ConfigError


def _program(argv: list[str]) -> str:
    name = os.path.basename(argv[0]) if argv else "main"
    return "vidjax." + (os.path.splitext(name)[0] if name.endswith(".py") and name != "__main__.py" else "main")


def describe_error(err: BaseException, argv: list[str]) -> str:
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
    """absl's flag parsing, with config mistakes (unknown key, bad value, bad variant) as one-line errors (exit 2).

    Use as `app.run(main, flags_parser=parse_flags)`."""
    try:
        return flags.FLAGS(argv)
    except SystemExit:
        # absl exits 1 after printing --help; asking for help is not a failure.
        if any(a.split("=")[0] in ("--help", "-h", "-?", "--helpshort", "--helpfull") for a in argv[1:]):
            sys.exit(0)
        raise
    except (flags.Error, KeyError, ValueError, AttributeError) as err:
        print(f"error: {describe_error(err, argv)}\nRun `python -m {_program(argv)} --help` for the flags.",
              file=sys.stderr)
        sys.exit(2)
