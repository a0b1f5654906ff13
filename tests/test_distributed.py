"""Multi-host training for real: 2 processes on this machine joined by jax.distributed (gloo collectives on CPU)."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest
from helpers import train_losses
from test_train import tiny_config

from vidjax import checkpoint, distributed, train
from vidjax.config_lib import ConfigError

REPO = pathlib.Path(__file__).parent.parent
CHILD_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(config_path, workdir, num_processes: int, devices_per_process: int) -> list[str]:
    """Runs `python -m vidjax.main` as `num_processes` processes of one job; returns each one's stdout.

    Each child sees `devices_per_process` CPU devices (its own XLA_FLAGS: this test process has 8). On a failure
    or a timeout every child is stopped and the assertion shows each one's exit code and the end of its stderr.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "vidjax.main", f"--config={config_path}", f"--workdir={workdir}",
         f"--coordinator_address={address}", f"--num_processes={num_processes}", f"--process_id={i}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(num_processes)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=CHILD_TIMEOUT_S))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        while len(outputs) < len(procs):
            outputs.append(procs[len(outputs)].communicate())
    report = "\n".join(f"--- process {i}: exit code {proc.returncode} (timeout {CHILD_TIMEOUT_S}s)\n{err[-3000:]}"
                       for i, (proc, (_, err)) in enumerate(zip(procs, outputs, strict=True)))
    assert all(proc.returncode == 0 for proc in procs), report
    return [out for out, _ in outputs]


def _write_config(path, **overrides) -> str:
    """A config file for the children: tiny_config of tests/test_train.py with `overrides`."""
    path.write_text(f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nfrom test_train import tiny_config\n\n\n"
                    f"def get_config():\n    return tiny_config(**{overrides!r})\n")
    return str(path)


def test_two_processes_match_one_process_and_resume_on_one(tmp_path):
    """2 processes x 2 CPU devices (mesh data=2, fsdp=2 spanning both) train the losses of 1 process on 1 device
    over the same global batch; their checkpoint then resumes in 1 process and continues the same losses."""
    overrides = dict(total_steps=4, checkpoint_every=2, keep_checkpoints=5)
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "one"), devices=jax.devices()[:1])
    one = train_losses(tmp_path / "one")

    config_path = _write_config(tmp_path / "tiny.py", **overrides, mesh=dict(data=2, fsdp=2, tensor=1))
    two_dir = tmp_path / "two"
    stdout = _run_processes(config_path, two_dir, num_processes=2, devices_per_process=2)
    assert "Distributed: 2 processes (explicit flags), 4 devices, 2 on this process" in stdout[0], stdout[0]
    # Process 0 alone logs and writes metrics: one row per step, no process-1 console lines (gloo's own aside).
    assert "step      4/4" in stdout[0], stdout[0]
    assert not [line for line in stdout[1].splitlines() if line.strip() and not line.startswith("[Gloo]")], stdout[1]
    rows = [json.loads(line) for line in (two_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    two = train_losses(two_dir)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    for step in one:
        np.testing.assert_allclose(two[step], one[step], rtol=1e-5, err_msg=f"step {step}: 2 processes vs 1")
    # Every process wrote its shards and its data position.
    saved = two_dir / "checkpoints" / "2"
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(saved / "state")), os.listdir(saved / "state")
    assert sorted(p for p in os.listdir(saved / "data") if p.endswith(".json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

    # Stopped after step 2, resumed by 1 process on 1 device: the data stream and the losses carry on.
    cut = tmp_path / "cut"
    shutil.copytree(two_dir, cut)
    shutil.rmtree(cut / "checkpoints" / "4")
    result = train.train_and_evaluate(tiny_config(**overrides), str(cut), devices=jax.devices()[:1])
    assert result["resumed"] and result["trained"]
    resumed = train_losses(cut)
    for step in (3, 4):
        np.testing.assert_allclose(resumed[step], one[step], rtol=1e-5, err_msg=f"step {step}: resumed on 1 process")


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
