"""The benchmark harness reports what it promises (timings are not asserted: this machine is noisy)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
from absl import app, flags
from absl.testing import flagsaver
from helpers import COMMAND_XLA_FLAGS

from vidjax import bench


def test_time_vidjax_reports_step_time_and_flops():
    results = {}
    for mode in ("pretrain", "finetune", "infer"):
        config = bench.bench_config("videomae", "Mu/8", 4, 32, 8, mode, "float32", 10)
        results[mode] = result = bench.time_vidjax(config, mode, steps=2, warmup=1)
        assert result["seconds_per_step"] > 0 and len(result["step_times"]) == 2
        assert result["clips_per_s"] == 8 / result["seconds_per_step"]
        assert result["compile_s"] > 0 and math.isfinite(result["flops_per_step"]) and result["flops_per_step"] > 0
    # backward costs about twice the forward
    assert results["finetune"]["flops_per_step"] > 2 * results["infer"]["flops_per_step"]


def run_main(*args):
    """`python -m vidjax.bench ARGS` in this process (flag values restored afterwards)."""
    with flagsaver.flagsaver():
        flags.FLAGS(["bench", *args])
        bench.main(["bench"])


def test_option_lists_run_every_combination_and_print_a_table(capsys):
    """--dtype/--scan_layers (and --remat/--grad_accum) take comma lists: one row each, a table, {"rows": [...]}.
    Inference, the cheapest program to compile: the train steps' timing is test_time_vidjax's."""
    run_main("--variant=Mu/8", "--frames=4", "--size=32", "--batch=8", "--steps=1", "--warmup=0", "--mode=infer",
             "--dtype=float32,bfloat16", "--scan_layers=true", "--remat=full")
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])["rows"]
    assert [(r["dtype"], r["scan_layers"], r["remat"], r["grad_accum"]) for r in rows] == [
        ("float32", True, "full", 1), ("bfloat16", True, "full", 1)]
    assert all(r["seconds_per_step"] > 0 and r["temp_bytes"] > 0 and r["compile_s"] > 0 for r in rows)
    table = [line for line in out if line.startswith("| ")]
    assert table[0].startswith("| dtype | remat | grad_accum | scan_layers | s/step")
    assert table[2].startswith("| float32 | full | 1 | true |")
    assert table[3].startswith("| bfloat16 | full | 1 | true |")
    assert table[2].endswith("| 1.00 | 1.00 |")  # ratios against the first row


@pytest.mark.parametrize("flag, value, message", [
    ("dtype", "float16", "--dtype=float16: each value must be one of float32, bfloat16"),
    ("scan_layers", "yes", "--scan_layers=yes: each value must be one of false, true"),
    ("grad_accum", "1,0", "--grad_accum=1,0: give positive integers"),
])
def test_bad_option_lists_are_usage_errors(flag, value, message):
    with pytest.raises(app.UsageError, match=message):
        run_main(f"--{flag}={value}")


def test_command_prints_json_last_line():
    root = pathlib.Path(__file__).parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "vidjax.bench", "--variant=Mu/8", "--frames=4", "--size=32", "--batch=2",
         "--mode=pretrain", "--steps=2", "--warmup=1"],
        cwd=root, env=dict(os.environ, XLA_FLAGS=COMMAND_XLA_FLAGS), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"seconds_per_step", "clips_per_s", "compile_s", "flops_per_step"} <= set(result)
    assert result["mode"] == "pretrain" and result["devices"] == 1
