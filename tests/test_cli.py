"""The command line as a user meets it: bad input fails fast with a message that says what to fix."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).parent.parent


def run_main(*args, timeout=120, module="vidjax.main"):
    env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def test_kinetics_config_without_data_fails_fast_naming_the_flag(tmp_path):
    proc, seconds = run_main("--config=configs/videomae_k400.py", f"--workdir={tmp_path}")
    assert proc.returncode == 2
    assert "config.data.train_csv = '/data/kinetics400/train.csv': no such file" in proc.stderr
    assert "--config.data.train_csv=" in proc.stderr and "docs/datasets.md" in proc.stderr
    assert seconds < 60  # start-up only: no model is built, nothing compiled
    assert not (tmp_path / "checkpoints").exists()
    assert (ROOT / "docs" / "datasets.md").exists()


@pytest.mark.parametrize("args, message", [
    (["--config=configs/videomae_k400.py:runlocal", "--config.modle.width=3"],
     "unknown config key 'modle' in --config.modle.width=3. Did you mean \"model\""),
    (["--config=configs/videomae_k400.py:variant=X/16"], "Unknown model variant 'X/16'"),
    (["--config=configs/videomae_k400.py:runlocal", "--config.model.variant=Q/8"], "Unknown model variant 'Q/8'"),
    (["--config=configs/videomae_k400.py:runlocal=maybe"], "runlocal='maybe' must be a bool"),
    (["--config=configs/videomae_k400.py:runlcoal"], "Unknown config argument 'runlcoal'"),
    (["--config=configs/videomae_k400.py:runlocal", "--config.batch_size=abc"], "--config.batch_size=abc"),
])
def test_bad_config_input_names_the_offender(tmp_path, args, message):
    proc, _ = run_main(*args, f"--workdir={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_describes_the_flags():
    proc, _ = run_main("--help")
    assert proc.returncode == 0
    assert "--config" in proc.stdout and "--workdir" in proc.stdout and "runlocal" in proc.stdout
    # It points to --print_config and to where the keys are documented.
    assert "--print_config" in proc.stdout and "configs/" in proc.stdout and "README.md" in proc.stdout


def test_print_config_shows_the_resolved_config_and_exits(tmp_path):
    proc, seconds = run_main("--config=configs/videomae_k400.py:runlocal", "--config.batch_size=4",
                             "--config.model.drop_path=0.05", "--print_config", f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "batch_size: 4" in lines and "  drop_path: 0.05" in lines  # the overrides, applied
    assert "  image_size: 32" in lines  # runlocal's size, not the full recipe's 224
    assert not (tmp_path / "run").exists() and seconds < 60  # nothing trained, no workdir made
    proc, _ = run_main("--config=configs/videomae_k400.py", "--print-config")  # no --workdir needed to look
    assert proc.returncode == 0 and "train_csv: /data/kinetics400/train.csv" in proc.stdout


def test_evaluate_command_flags():
    proc, _ = run_main("--help", module="vidjax.evaluate")
    assert proc.returncode == 0 and "--checkpoint" in proc.stdout and "--config" in proc.stdout
    proc, _ = run_main("--config=configs/videomae_finetune_k400.py:runlocal", "--config.modle=1",
                       "--checkpoint=/nonexistent", module="vidjax.evaluate")
    assert proc.returncode == 2 and "modle" in proc.stderr and "python -m vidjax.evaluate --help" in proc.stderr
    proc, _ = run_main("--config=configs/videomae_finetune_k400.py:runlocal", "--checkpoint=/nonexistent",
                       module="vidjax.evaluate")
    assert proc.returncode == 2 and "/nonexistent" in proc.stderr and "Traceback" not in proc.stderr
