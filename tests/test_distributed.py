"""Multi-host training for real: 2 processes on this machine joined by jax.distributed (gloo collectives on CPU)."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest
from helpers import COMMAND_XLA_FLAGS, popen_interruptible, train_losses
from test_train import tiny_config

from vidjax import distributed, train
from vidjax.config_lib import ConfigError
from vidjax.train import checkpoint

REPO = pathlib.Path(__file__).parent.parent
CHILD_TIMEOUT_S = 240
# The children compile with most optimisations off, as this process does (conftest.py's variable, inherited): they
# start in about half the time. Their losses are compared with each other's bit for bit, and with this process's to
# rtol 1e-5.
CHILD_XLA_FLAGS = COMMAND_XLA_FLAGS
# 2 processes x 2 CPU devices, mesh data=2 x fsdp=2 spanning both: parameters and optimizer state are sharded across
# the processes, so every checkpoint needs both of them. One encoder block: the runs start up and compile more than
# they train (the two tests of this run took 45 CPU s, 60 with the tiny model's two blocks).
TWO_PROCESS_RUN = dict(total_steps=12, checkpoint_every=6, keep_checkpoints=5, mesh=dict(data=2, fsdp=2, tensor=1),
                       model=dict(depth=1))
DEVICES_PER_PROCESS = 2
# `python -m vidjax.main`'s main() with each step's input slowed by 0.2 s, so that a signal sent once a few steps are
# logged lands mid-run (the numbers are those of `python -m vidjax.main`: only the host waits longer).
SLOW_INPUT_MAIN = ("import sys, time; from vidjax import sharding; real = sharding.global_batch; "
                   "sharding.global_batch = lambda *a: (time.sleep(0.2), real(*a))[1]; "
                   "from absl import app; from vidjax import cli; from vidjax.commands import main; "
                   "app.run(lambda argv: sys.exit(main.main(argv)), flags_parser=cli.parse_flags)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(config_path, workdir, num_processes: int, devices_per_process: int,
                     slow_input: bool = False) -> list[tuple[subprocess.Popen, pathlib.Path]]:
    """Starts `python -m vidjax.main` as `num_processes` processes of one job; returns (process, log file) pairs.

    Each child sees `devices_per_process` CPU devices (its own XLA_FLAGS: this test process has 8) and writes
    stdout and stderr to files beside `workdir` (a pipe nobody reads while the test waits could fill and stall it).
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{CHILD_XLA_FLAGS} "
               f"--xla_force_host_platform_device_count={devices_per_process}")
    address = f"127.0.0.1:{_free_port()}"
    entry = ["-c", SLOW_INPUT_MAIN] if slow_input else ["-m", "vidjax.main"]
    started = []
    for i in range(num_processes):
        out, err = (pathlib.Path(f"{workdir}.process{i}.{name}") for name in ("out", "err"))
        with open(out, "w") as stdout, open(err, "w") as stderr:
            started.append((subprocess.Popen(
                [sys.executable, *entry, f"--config={config_path}", f"--workdir={workdir}",
                 f"--coordinator_address={address}", f"--num_processes={num_processes}", f"--process_id={i}"],
                cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True), out))
    return started


def _finish(started, exit_code: int = 0) -> list[tuple[str, str]]:
    """Waits for the processes; asserts each exits with `exit_code`; returns each one's (stdout, stderr).

    On a failure or a timeout every child is stopped and the assertion shows each one's exit code and the end of
    its stderr.
    """
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        for proc, _ in started:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = [(out.read_text(), out.with_suffix(".err").read_text()) for _, out in started]
    report = "\n".join(f"--- process {i}: exit code {proc.returncode} (expected {exit_code}, timeout "
                       f"{CHILD_TIMEOUT_S}s)\n{err[-3000:]}" for i, ((proc, _), (_, err)) in enumerate(zip(
                           started, outputs, strict=True)))
    assert all(proc.returncode == exit_code for proc, _ in started), report
    return outputs


def _run_processes(config_path, workdir, num_processes: int, devices_per_process: int) -> list[str]:
    """Runs a job of `num_processes` processes to its end (exit code 0); returns each one's stdout."""
    started = _start_processes(config_path, workdir, num_processes, devices_per_process)
    return [out for out, _ in _finish(started)]


def _write_config(path, **overrides) -> str:
    """A config file for the children: tiny_config of tests/test_train.py with `overrides`."""
    path.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nfrom test_train import tiny_config\n\n\n"
                    f"def get_config():\n    return tiny_config(**{overrides!r})\n")
    return str(path)


def _assert_complete(saved: pathlib.Path, num_processes: int = 2) -> None:
    """A finished step folder that every process wrote into: its state shards and its data position."""
    assert not [p for p in os.listdir(saved.parent) if "tmp" in p], os.listdir(saved.parent)
    assert {f"ocdbt.process_{i}" for i in range(num_processes)} <= set(os.listdir(saved / "state")), \
        os.listdir(saved / "state")
    assert sorted(p for p in os.listdir(saved / "data") if p.endswith(".json")) == [
        f"process_{i}-of-{num_processes}.json" for i in range(num_processes)]
    assert {"checksum", "config", "metadata"} <= set(os.listdir(saved)), os.listdir(saved)


GLOO_WORDS = set("[Gloo] Rank is connected to peer ranks. Expected number of connected peer ranks is :".split())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """(config file, workdir) of TWO_PROCESS_RUN trained to its end, uninterrupted, by 2 processes."""
    tmp = tmp_path_factory.mktemp("two_process_run")
    config_path = _write_config(tmp / "tiny.py", **TWO_PROCESS_RUN)
    stdout = _run_processes(config_path, tmp / "two", num_processes=2, devices_per_process=DEVICES_PER_PROCESS)
    assert "Distributed: 2 processes (explicit flags), 4 devices, 2 on this process" in stdout[0], stdout[0]
    # Process 0 alone logs and writes metrics: one row per step, no process-1 console lines (gloo's own aside).
    assert "step     12/12" in stdout[0], stdout[0]
    # gloo's C++ threads print "[Gloo] Rank 3 is connected to 3 peer ranks. ..." lines, at times interleaved
    # mid-line with each other: every word process 1 printed must be one of theirs.
    assert set(re.sub(r"\d+", "", stdout[1]).split()) <= GLOO_WORDS, stdout[1]
    return config_path, tmp / "two"


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_on_one(tmp_path, two_process_run):
    """2 processes x 2 CPU devices (mesh data=2, fsdp=2 spanning both) train the losses of 1 process on 1 device
    over the same global batch; their checkpoint then resumes in 1 process and continues the same losses."""
    _, two_dir = two_process_run
    overrides = {k: v for k, v in TWO_PROCESS_RUN.items() if k != "mesh"}
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "one"), devices=jax.devices()[:1])
    one = train_losses(tmp_path / "one")

    rows = [json.loads(line) for line in (two_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 13))
    two = train_losses(two_dir)
    assert sorted(two) == sorted(one) == list(range(1, 13))
    for step in one:
        np.testing.assert_allclose(two[step], one[step], rtol=1e-5, err_msg=f"step {step}: 2 processes vs 1")
    _assert_complete(two_dir / "checkpoints" / "6")  # every process wrote its shards and its data position

    # Stopped after step 6, resumed by 1 process on 1 device: the data stream and the losses carry on.
    cut = tmp_path / "cut"
    shutil.copytree(two_dir, cut)
    shutil.rmtree(cut / "checkpoints" / "12")
    result = train.train_and_evaluate(tiny_config(**overrides), str(cut), devices=jax.devices()[:1])
    assert result["resumed"] and result["trained"]
    resumed = train_losses(cut)
    for step in range(7, 13):
        np.testing.assert_allclose(resumed[step], one[step], rtol=1e-5, err_msg=f"step {step}: resumed on 1 process")


@pytest.mark.slow
def test_two_processes_with_the_batch_in_host_memory_train_the_same_losses(tmp_path, two_process_run):
    """config.batch_memory="host" with 2 micro-batches: each process folds its part of the global batch into them, in
    pinned host memory, and the step copies one micro-batch at a time to the 4 devices; the losses are those of the
    batch on the devices in one piece (mean-over-examples losses: accumulation gives one batch's)."""
    _, two_dir = two_process_run
    config_path = _write_config(tmp_path / "host.py", **TWO_PROCESS_RUN, grad_accum_steps=2, batch_memory="host")
    _run_processes(config_path, tmp_path / "host", num_processes=2, devices_per_process=DEVICES_PER_PROCESS)
    host, one_piece = train_losses(tmp_path / "host"), train_losses(two_dir)
    assert sorted(host) == sorted(one_piece) == list(range(1, 13))
    for step in one_piece:
        np.testing.assert_allclose(host[step], one_piece[step], rtol=1e-5, err_msg=f"step {step}")


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step_and_resumes_exactly(tmp_path, two_process_run):
    """SIGTERM reaches process 1 only (process 0 hosts the coordinator and logs): both processes agree on a step,
    save it together, exit 4; the same 2-process command resumes, and every loss equals the uninterrupted run's
    bit for bit."""
    config_path, reference = two_process_run
    workdir = tmp_path / "cut"
    started = _start_processes(config_path, workdir, num_processes=2, devices_per_process=DEVICES_PER_PROCESS,
                               slow_input=True)
    metrics, deadline = workdir / "metrics.jsonl", time.monotonic() + CHILD_TIMEOUT_S
    while (all(proc.poll() is None for proc, _ in started) and time.monotonic() < deadline
           and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2)):
        time.sleep(0.1)  # mid-run: process 0 has logged 2 steps (it logs one step late, so 3 have run)
    started[1][0].send_signal(signal.SIGTERM)
    outputs = _finish(started, exit_code=4)

    stops = [re.findall(r"stopped by (\w+): checkpoint of step (\d+)/12 written", err) for _, err in outputs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops  # both stopped, at the same step, named the same
    name, step = stops[0][0][0], int(stops[0][0][1])
    assert name == "SIGTERM" and 2 < step < TWO_PROCESS_RUN["total_steps"], stops
    assert "stopped by" not in outputs[0][0].lower(), outputs[0][0]  # said once, on stderr
    saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
    assert saved == sorted({step} | ({6} if step > 6 else set())), saved
    _assert_complete(workdir / "checkpoints" / str(step))
    assert sorted(train_losses(workdir)) == list(range(1, step + 1))

    stdout = _run_processes(config_path, workdir, num_processes=2, devices_per_process=DEVICES_PER_PROCESS)
    assert f"Resuming from checkpoint at step {step} in {workdir / 'checkpoints' / str(step)}" in stdout[0], stdout[0]
    full, resumed = train_losses(reference), train_losses(workdir)
    assert sorted(resumed) == sorted(full) == list(range(1, 13))
    for s in full:
        assert resumed[s] == full[s], (s, full[s], resumed[s])  # bit for bit, before and after the stop


# Three runs in a row in each process, the loop of a resumed run without the training; process 1 is the slower one.
# 1: SIGTERM to process 1 before the first step (jax's own preemption service misses that one: its sync point
# starts at step 1). 2: SIGINT to process 0. 3: SIGTERM to process 0 at the final step, while process 1 already
# waits at that step's boundary: both stop there, none waits for ever.
AGREE_ON_A_STEP = """
import itertools, os, signal, sys, time
from vidjax import distributed, preemption
address, pid = sys.argv[1], int(sys.argv[2])
distributed.initialize(address, 2, pid)
for signum, receiver, start, final in ((signal.SIGTERM, 1, 100, None), (signal.SIGINT, 0, 500, None),
                                       (signal.SIGTERM, 0, 900, 905)):
    with preemption.StopOnSignal() as stop:
        if pid == receiver and final is None:
            os.kill(os.getpid(), signum)
        for step in itertools.count(start + 1):
            time.sleep(0.02 * (1 + pid))
            if pid == receiver and step == final:
                time.sleep(1)
                os.kill(os.getpid(), signum)
                time.sleep(0.1)
            if stop.requested(step):
                print("stopped after", step, "by", stop.name, "received", stop.received, flush=True)
                break
            if step == final:
                print("finished at", step, flush=True)
                break
"""


def test_processes_agree_on_a_step_for_a_notice_to_any_of_them():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    address = f"127.0.0.1:{_free_port()}"
    procs = [popen_interruptible([sys.executable, "-c", AGREE_ON_A_STEP, address, str(i)], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [proc.communicate(timeout=CHILD_TIMEOUT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], [err[-3000:] for _, err in outputs]
    lines = [[line.split() for line in out.splitlines() if line.startswith(("stopped", "finished"))]
             for out, _ in outputs]
    assert len(lines[0]) == len(lines[1]) == 3, outputs
    for run, (name, receiver, start) in enumerate((("SIGTERM", 1, 100), ("SIGINT", 0, 500))):
        (step0, name0, received0), (step1, name1, received1) = ((int(w[2]), w[4], w[6]) for w in (
            lines[0][run], lines[1][run]))
        assert step0 == step1 and name0 == name1 == name, lines  # the same step and signal everywhere
        assert start < step0 <= start + 3, lines  # at once: no process is more than a step or two ahead
        signum = str(int(getattr(signal, name)))
        assert [received0, received1] == [signum if i == receiver else "None" for i in range(2)], lines
    assert lines[0][2][:5] == lines[1][2][:5] == ["stopped", "after", "905", "by", "SIGTERM"], lines


def test_initialize_is_a_no_op_on_one_process(monkeypatch):
    for name in ("SLURM_STEP_NODELIST", "SLURM_NTASKS", "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    assert jax.process_count() == 1


def test_slurm_is_detected_only_with_several_tasks(monkeypatch):
    slurm = dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="node[01-02]", SLURM_PROCID="1", SLURM_LOCALID="0")
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.detected_cluster() == "SlurmCluster"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2), "missing --process_id"),
    (dict(num_processes=2, process_id=0), "missing --coordinator_address"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "must be HOST:PORT"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), "must be in [0, 2)"),
])
def test_incomplete_or_wrong_flags_are_clear_errors(monkeypatch, kwargs, message):
    monkeypatch.delenv("SLURM_STEP_NODELIST", raising=False)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        distributed.initialize(**kwargs)


def _write_positions(data_dir, states):
    data_dir.mkdir()
    for i, state in enumerate(states):
        (data_dir / f"process_{i}-of-{len(states)}.json").write_text(json.dumps(state))


def test_data_position_carries_to_another_process_count(tmp_path):
    """4 processes at next_index 6 have read elements 0..23 of the global order; 1 process continues at 24."""
    _write_positions(tmp_path / "data", [{"next_index": 6}] * 4)
    it = iter(grain.MapDataset.range(100).to_iter_dataset())
    checkpoint.carry_data_position(str(tmp_path / "data"), it)
    assert next(it) == 24

    # Grain worker processes keep per-worker positions, which do not carry: a clear error, not a silent restart.
    _write_positions(tmp_path / "workers", [{"next_index_in_cycle": 0, "iterators_in_use_states": []}] * 2)
    with pytest.raises(ConfigError, match="config.data.num_workers=0"):
        checkpoint.carry_data_position(str(tmp_path / "workers"), iter(grain.MapDataset.range(8).to_iter_dataset()))
