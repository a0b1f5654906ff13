"""Faults of `python -m vidjax.main` and `python -m vidjax.evaluate`: a stop by signal said once and resumed without
warnings, signals during the start-up and the checkpoint's wind-down, outputs of the wrong kind, batches too large for
the host, model sizes that cannot build, a config file whose get_config raises, and the progress lines' ETA."""

import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import types

import jax
import pytest
from helpers import COMMAND_XLA_FLAGS, popen_interruptible
from test_train import tiny_config

from vidjax import cli, sharding, train
from vidjax.commands import evaluate
from vidjax.config_lib import ConfigError
from vidjax.train import checkpoint

TESTS = pathlib.Path(__file__).parent
REPO = TESTS.parent


def _send(signum):
    os.kill(os.getpid(), signum)


@pytest.mark.slow
def test_stop_by_signal_then_resume_quietly(tmp_path, capsys, caplog, monkeypatch):
    """SIGTERM once the first step has run: that step's checkpoint, and no stop line from the trainer (the command
    prints the one line). A second signal while the checkpoint is written goes to the caller's callback, not into
    orbax's wait. The resumed run logs no warning (orbax's "Metadata file does not exist" was one) and finishes."""
    config = tiny_config(total_steps=4, checkpoint_every=1000, model=dict(depth=1))
    devices = jax.devices()[:1]
    first_step_done, close = train.Progress.first_step_done, checkpoint.Checkpointer.close
    monkeypatch.setattr(train.Progress, "first_step_done",
                        lambda self: (first_step_done(self), _send(signal.SIGTERM)))
    monkeypatch.setattr(checkpoint.Checkpointer, "close", lambda self: (_send(signal.SIGTERM), close(self)))
    second = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    result = train.train_and_evaluate(config, str(tmp_path), devices=devices,
                                      on_second_signal=lambda signum, kept: second.append((signum, kept)))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert result["preempted"] and result["step"] == 1 and result["signal"] == "SIGTERM"
    assert result["checkpoint"] == str(tmp_path / "checkpoints" / "1") and "interrupted" not in result
    assert second == [(signal.SIGTERM, {"step": 1, "total_steps": 4, "last_complete": None, "checkpoint": None})]
    assert "stopped by" not in capsys.readouterr().out.lower()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]

    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = train.train_and_evaluate(config, str(tmp_path), devices=devices)
    assert result["resumed"] and result["step"] == 4
    assert "Resuming from checkpoint at step 1" in capsys.readouterr().out
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_signal_during_start_up_stops_at_once(tmp_path, monkeypatch):
    """A signal while the step compiles (before the first step has run) is the command's `Interrupted` at once:
    nothing trained or checkpointed, the compilation waited for, the handlers as they were."""
    lowered = train.AheadOfTimeStep.wait_lowered
    monkeypatch.setattr(train.AheadOfTimeStep, "wait_lowered", lambda self: (lowered(self), _send(signal.SIGTERM)))
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(cli.Interrupted) as raised, cli.interruptible():
        train.train_and_evaluate(tiny_config(total_steps=4, model=dict(depth=1)), str(tmp_path),
                                 devices=jax.devices()[:1])
    assert raised.value.signum == signal.SIGTERM and raised.value.exit_code == 143
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert checkpoint.latest_step(str(tmp_path)) is None
    assert not [t for t in threading.enumerate() if t.name == "vidjax-compile-train-step"]


# `python -m vidjax.main` in a child, with signals sent by the process itself at chosen points: after the first step
# (FIRST), while the stop's checkpoint is being written (CLOSE), while the step compiles (COMPILE).
CHILD = """
import os, signal, sys
from vidjax import train
from vidjax.train import checkpoint
points = sys.argv.pop(1).split(",")
send = lambda name: os.kill(os.getpid(), getattr(signal, name))
if "FIRST" in points:
    done = train.Progress.first_step_done
    train.Progress.first_step_done = lambda self: (done(self), send("SIGTERM"))
if "CLOSE" in points:
    close = checkpoint.Checkpointer.close
    checkpoint.Checkpointer.close = lambda self: (send("SIGTERM"), close(self))
if "COMPILE" in points:
    lowered = train.AheadOfTimeStep.wait_lowered
    train.AheadOfTimeStep.wait_lowered = lambda self: (lowered(self), send("SIGINT"))
from vidjax.commands import main
sys.argv[0] = "main.py"
main.run_command()
"""


def _env():
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {COMMAND_XLA_FLAGS}",
                JAX_PLATFORMS="cpu")


def _run(args, **kwargs):
    """The child as from a terminal, with SIGINT's default action whatever the runner's (a background job's runner
    ignores SIGINT, its children inherit that, and a command leaves an ignored signal ignored: the COMPILE case's
    SIGINT was then lost and the run went on to its end)."""
    with popen_interruptible([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(), cwd=REPO, **kwargs) as proc:
        stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _tiny_config_file(tmp_path, **overrides):
    path = tmp_path / "tiny.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom test_train import tiny_config\n\n\n"
                    f"def get_config():\n    return tiny_config(**{overrides!r})\n")
    return path


@pytest.mark.parametrize(("points", "status", "line"), [
    ("FIRST", 4, "stopped by SIGTERM: checkpoint of step 1/4 written to {workdir}/checkpoints/1; run the same "
                 "command again to resume from it."),
    ("FIRST,CLOSE", 143, "stopped by SIGTERM: a second signal came while the checkpoint of step 1/4 was written, "
                         "which is left incomplete and unused; run the same command again to resume from the start "
                         "(no earlier checkpoint)."),
    ("COMPILE", 130, "stopped by SIGINT: during the start-up, before the first step: nothing trained, no checkpoint "
                     "written; run the same command again to start."),
])
def test_main_says_a_stop_in_one_line(tmp_path, points, status, line):
    """One line for each way a signal stops the trainer, the documented exit status, no traceback."""
    config = _tiny_config_file(tmp_path, total_steps=4, checkpoint_every=1000, model=dict(depth=1))
    workdir = tmp_path / "run"
    proc = _run(["-c", CHILD, points, f"--config={config}", f"--workdir={workdir}"])
    output = proc.stdout + proc.stderr
    assert proc.returncode == status, output
    assert [x for x in output.splitlines() if "stopped by" in x.lower()] == [line.format(workdir=workdir)], output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("case", ["workdir_is_a_file", "out_is_a_folder", "get_config_raises_key_error"])
def test_wrong_outputs_and_broken_config_files_are_one_line_before_any_work(tmp_path, case):
    """Exit 2 and one `error:` line naming the flag, before anything is read or compiled."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.py").write_text("def get_config():\n    return {}['model']\n")
    config = _tiny_config_file(tmp_path)
    args, expected = {
        "workdir_is_a_file": (["-m", "vidjax.main", f"--config={config}", f"--workdir={tmp_path / 'a_file'}"],
                              f"error: --workdir={tmp_path / 'a_file'} is a file"),
        "out_is_a_folder": (["-m", "vidjax.evaluate", "--checkpoint=/nonexistent", f"--out={tmp_path}"],
                            f"error: --out={tmp_path} is a folder"),
        "get_config_raises_key_error": (["-m", "vidjax.main", f"--config={tmp_path / 'bad.py'}",
                                         f"--workdir={tmp_path / 'run'}"],
                                        f"error: --config={tmp_path / 'bad.py'}: the config file's get_config "
                                        f"raised KeyError: 'model' at line 2 of {tmp_path / 'bad.py'}"),
    }[case]
    proc = _run(args)
    assert proc.returncode == 2, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_workdir_and_out_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad, message in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "no folder can be made")):
        with pytest.raises(ConfigError, match=message):
            train.check_workdir(str(bad))
    train.check_workdir(str(tmp_path / "new" / "run"))  # made by the run
    for bad, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "eval.json", "cannot be made")):
        with pytest.raises(ConfigError, match=message):
            evaluate.check_out(str(bad))
    evaluate.check_out(str(tmp_path / "new" / "eval.json"))


def test_a_batch_too_large_for_the_host_is_named_before_any_allocation():
    problems = train.batch_memory_problems(tiny_config(batch_size=10**9))
    assert len(problems) == 1 and problems[0].startswith(
        "config.batch_size=1000000000 is too large for this host: one batch is 11,444.1 GiB of 4 x 32 x 32 uint8 "
        "clips on each host, over half of its"), problems
    with pytest.raises(ConfigError, match="config.batch_size=1000000000 is too large for this host"):
        train.prepare(tiny_config(batch_size=10**9), devices=jax.devices()[:1])
    assert train.batch_memory_problems(tiny_config(batch_size=0)) == [
        "config.batch_size=0 must be 1 or above (clips per step, over all devices and processes)."]
    assert train.batch_memory_problems(tiny_config()) == []


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(decoder_heads=-1), "config.model.decoder_heads=-1 must be 0 (the variant's or the model's default) or "
                             "above."),
    (dict(width=-32), "config.model.width=-32 must be 0"),
    (dict(num_heads=3), "config.model.num_heads=3 does not divide config.model.width=32"),
    (dict(decoder_width=30, decoder_heads=4), "config.model.decoder_heads=4 does not divide "
                                              "config.model.decoder_width=30"),
    (dict(image_size=0), "config.model.image_size=0 must be above 0."),
])
def test_model_sizes_that_cannot_build_are_named(overrides, message):
    config = tiny_config()
    config.model.update(overrides)
    problems = train.config_problems(config)
    assert any(p.startswith(message) for p in problems), problems


def test_a_model_that_does_not_build_is_a_config_error():
    """What the size checks do not know (the decoder's heads against the variant's decoder width) still ends in one
    ConfigError, not the layer's traceback."""
    config = tiny_config()
    config.model.update(decoder_width=0, decoder_heads=5)
    with pytest.raises(ConfigError, match="config.model does not build a videomae model: ValueError: Attention "
                                          "width .* is not divisible by num_heads=5"):
        train.build(config, 64, sharding.create_mesh(config.mesh, jax.devices()[:1]))


def test_eta_comes_from_the_steady_step_time(capsys):
    """The first step compiles (30 s) and the second waits for the input pipeline to start (20 s); the steps after
    take 0.1 s: the ETA is that of 0.1 s steps (the first line has no rate yet)."""
    written = []
    run = types.SimpleNamespace(config=tiny_config(log_every=10), setup=types.SimpleNamespace(total_steps=1000),
                                ckpt=None)
    progress = train.Progress(run, types.SimpleNamespace(write=lambda step, values: written.append(step)), 0, None)
    metrics = dict(loss=1.0, lr=1e-3, grad_norm=1.0, decode_failures=0, finite=True, skipped=False)
    progress.start()
    progress.first_step_done()
    t = progress.step_end + 30.0
    progress.handle(1, metrics, until=t)  # the step compiled
    t += 20.0
    progress.handle(2, metrics, until=t)  # waited for the first prefetched batch
    for step in range(3, 21):
        t += 0.1
        progress.handle(step, metrics, until=t)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert lines[0].endswith("ETA --") and lines[0].startswith("step      1/1000")
    assert lines[1].startswith("step     10/1000") and lines[1].endswith("ETA 0:01:39"), lines  # 990 x 0.1 s
    assert lines[2].startswith("step     20/1000") and lines[2].endswith("ETA 0:01:38"), lines
    assert written == [1, 10, 20]
