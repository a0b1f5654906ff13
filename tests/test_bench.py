"""The benchmark harness reports what it promises (timings are not asserted: this machine is noisy)."""

import json
import math
import os
import pathlib
import subprocess
import sys

from vidjax import bench


def test_time_vidjax_reports_step_time_and_flops():
    for mode in ("pretrain", "finetune", "infer"):
        config = bench.bench_config("videomae", "Mu/8", 4, 32, 8, mode, "float32", 10)
        result = bench.time_vidjax(config, mode, steps=2, warmup=1)
        assert result["seconds_per_step"] > 0 and len(result["step_times"]) == 2
        assert result["clips_per_s"] == 8 / result["seconds_per_step"]
        assert result["compile_s"] > 0 and math.isfinite(result["flops_per_step"]) and result["flops_per_step"] > 0
    infer = bench.time_vidjax(bench.bench_config("videomae", "Mu/8", 4, 32, 8, "infer", "float32", 10), "infer", 1, 0)
    train = bench.time_vidjax(bench.bench_config("videomae", "Mu/8", 4, 32, 8, "finetune", "float32", 10),
                              "finetune", 1, 0)
    assert train["flops_per_step"] > 2 * infer["flops_per_step"]  # backward costs about twice the forward


def test_command_prints_json_last_line():
    root = pathlib.Path(__file__).parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "vidjax.bench", "--variant=Mu/8", "--frames=4", "--size=32", "--batch=2",
         "--mode=pretrain", "--steps=2", "--warmup=1"],
        cwd=root, env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"seconds_per_step", "clips_per_s", "compile_s", "flops_per_step"} <= set(result)
    assert result["mode"] == "pretrain" and result["devices"] == 1
