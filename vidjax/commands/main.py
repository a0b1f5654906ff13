"""Command-line entry point: `python -m vidjax.main --config=configs/videomae_k400.py[:args] --workdir=DIR`.

Runs (or resumes) the job the config describes: pre-training or fine-tuning through the one trainer.
Override any config value with `--config.KEY=VALUE`, e.g. `--config.batch_size=64`; an unknown key is an error.
`--print_config` prints the config as it resolves after the arguments and overrides, then exits without training
(no --workdir needed). What each key means: the docstring of each file in configs/ (the recipe and its exact
command), vidjax/config_lib.py (the trainer, optimizer and data keys), README.md and docs/datasets.md.

Exit codes: 0 done, 2 config or input error (a bad flag or config value, missing data, a --workdir that is a file:
one `error:` line, before anything is compiled), 3 training diverged, 4 stopped by SIGTERM / SIGINT (preemption)
after writing a checkpoint of the step it stopped at: re-run the same command to resume.

SIGTERM or SIGINT (Ctrl-C) once the first step has run: the run stops at the next step boundary, writes that step's
checkpoint, waits for it, prints one line, `stopped by SIGTERM: checkpoint of step N/TOTAL written to DIR; run the
same command again to resume from it.`, and exits 4. A second signal while that checkpoint is written ends the
process at once: one line (that checkpoint is left incomplete and unused; the one to resume from is named), exit 130
(SIGINT) or 143 (SIGTERM). A signal during the start-up (reading the config and data, compiling, the first step)
stops it at once, as every vidjax command stops: one line, nothing trained, exit 130 or 143 (with several processes
it waits for the first step, so that all of them stop after the same one).

The progress lines' ETA is the remaining steps at the median time of the latest steps, the first one (compilation)
left out.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

from absl import app, flags
from ml_collections import config_flags

from vidjax import cli, config_lib
from vidjax.config_lib import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with arguments: configs/videomae_k400.py:runlocal", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard and figures; "
                               "re-running in the same directory resumes.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the config after the arguments and --config.KEY "
                                  "overrides, and exit without training (the keys are documented in the configs/ "
                                  "files' docstrings and vidjax/config_lib.py).")
flags.mark_flags_as_required(["config"])
# Multi-host (vidjax/distributed.py): on a TPU pod slice, under SLURM or Open MPI these are detected; elsewhere give
# all three on every process. Left unset on one machine, nothing is started.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator, the same on "
                                   "every process (multi-process runs without a detected cluster).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes take part (1 = no distributed "
                                      "start-up, also on a detected cluster).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes); 0 hosts the "
                                   "coordinator.")
_LOCAL_DEVICE_IDS = flags.DEFINE_list("local_device_ids", None, "Local device ids this process drives, e.g. 0 for "
                                      "one process per GPU (default: all of the host's devices).")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _PRINT_CONFIG.value:
        print(_CONFIG.value, end="")
        return 0
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required: the folder for the run's checkpoints and metrics (re-using one "
                             "resumes its run).")
    from vidjax import distributed, train  # imported here so that --help answers without loading jax
    from vidjax.train import checkpoint

    workdir = _WORKDIR.value
    try:
        train.check_workdir(workdir)  # before anything starts: a file there would fail after the set-up
        # Before anything touches a device: the distributed runtime must be up when the backend starts.
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               [int(i) for i in _LOCAL_DEVICE_IDS.value] if _LOCAL_DEVICE_IDS.value else None)
        # The flags a person typed win over the init_from checkpoint's architecture and the data's class count.
        result = train.train_and_evaluate(_CONFIG.value, workdir,
                                          explicit_keys=config_lib.command_line_keys(flags.FLAGS["config"]),
                                          on_second_signal=_exit_at_once)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except train.NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as err:  # during the start-up, before the first step (see the module docstring)
        latest = checkpoint.latest_step(workdir)
        return cli.stopped(err, "during the start-up, before the first step: nothing trained, no checkpoint "
                                "written; run the same command again to " + (
                                    f"resume from the checkpoint of step {latest}." if latest is not None else
                                    "start."))
    if not result.get("preempted"):
        return 0
    step, total, kept = result["step"], result["total_steps"], result["checkpoint"]
    cli.stopped(cli.Interrupted(getattr(signal, result["signal"])),
                f"checkpoint of step {step}/{total} written to {kept}; run the same command again to resume "
                f"from it.")
    return 4


def _exit_at_once(signum: int, kept: dict) -> NoReturn:
    """A second signal while the stop's checkpoint is written: one line, and the process ends at once (the
    interpreter's exit would break the save under way with a traceback from each of orbax's threads). orbax writes
    a step under a temporary name and renames it only when whole, so the one cut short is never resumed from."""
    last = kept["last_complete"]
    sys.stdout.flush()
    status = cli.stopped(cli.Interrupted(signum), (
        f"a second signal came while the checkpoint of step {kept['step']}/{kept['total_steps']} was written, which "
        f"is left incomplete and unused; run the same command again to resume from " + (
            f"the last complete one, step {last} ({kept['checkpoint']})." if last is not None else
            "the start (no earlier checkpoint).")))
    os._exit(status)


def run_command() -> NoReturn:
    """`python -m vidjax.main`: what its entry module calls."""
    cli.run(main)
