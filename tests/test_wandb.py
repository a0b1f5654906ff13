"""Weights & Biases through the metric writer: config.wandb.project sends every train and eval row to one W&B run
per workdir (resumed runs log on into it), offline by default; a missing package or a bad mode is a config error."""

import json
import sys
import types

import pytest
from helpers import load_config

from vidjax import train
from vidjax.config_lib import trainer_config
from vidjax.metric_writer import WANDB_ID_FILE, MetricWriter, read_metrics


class FakeRun:
    def __init__(self, calls):
        self.calls = calls

    def log(self, data, step):
        self.calls.append(("log", dict(data), step))

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module that records what the writer asks of the package's API (init, log, finish)."""
    calls = []
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun(calls)

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def wandb_config(**wandb):
    config = trainer_config()
    config.wandb.update({"project": "vidjax-tests", **wandb})
    return config


def test_rows_go_to_one_wandb_run_that_a_resume_continues(tmp_path, fake_wandb):
    config = wandb_config(name="first", tags=("svt", "local"))
    writer = MetricWriter(str(tmp_path), config=config)
    writer.write(1, {"loss": 2.5, "lr": 1e-3})
    writer.write(2, {"top1": 0.5}, split="eval")
    writer.close()
    (_, init), *rest = fake_wandb
    assert init["project"] == "vidjax-tests" and init["mode"] == "offline" and init["dir"] == str(tmp_path)
    assert init["name"] == "first" and init["tags"] == ["svt", "local"] and init["entity"] is None
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert init["id"] == run_id and len(run_id) == 12 and init["resume"] == "allow"
    assert init["config"]["wandb"]["project"] == "vidjax-tests" and init["config"]["batch_size"] == config.batch_size
    assert rest == [("log", {"loss": 2.5, "lr": 1e-3}, 1), ("log", {"eval/top1": 0.5}, 2), ("finish",)]
    assert [row["step"] for row in read_metrics(str(tmp_path))] == [1, 2]  # the JSONL is written as always

    fake_wandb.clear()
    resumed = MetricWriter(str(tmp_path), resume_step=1, config=config)
    resumed.write(2, {"loss": 2.0})
    resumed.close()
    assert fake_wandb[0][1]["id"] == run_id  # the same W&B run, not a new one
    assert fake_wandb[1:] == [("log", {"loss": 2.0}, 2), ("finish",)]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_no_project_no_wandb(tmp_path, fake_wandb):
    writer = MetricWriter(str(tmp_path), config=trainer_config())
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert fake_wandb == [] and not (tmp_path / WANDB_ID_FILE).exists()


def test_missing_package_and_bad_mode_are_config_problems(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    config = load_config("videomae_k400", "runlocal")
    assert not any("wandb" in p for p in train.config_problems(config))
    config.wandb.update(project="vidjax-tests", mode="cloud")
    problems = "\n".join(train.config_problems(config))
    assert "config.wandb.mode='cloud'" in problems and "offline" in problems
    assert "pip install 'vidjax[wandb]'" in problems and "--config.wandb.project=''" in problems
