"""`python -m vidjax.bench --sweep=...`: scaling curves over frames, size or batch, with fitted log-log exponents,
a JSON table and a PNG (vidjax.bench.sweep). Timings are not asserted: this machine is noisy."""

import json

import pytest
from absl import app, flags
from absl.testing import flagsaver

from vidjax.bench import step, sweep


def run_main(*args):
    with flagsaver.flagsaver():
        flags.FLAGS(["bench", *args])
        step.main(["bench"])


def test_exponent_is_the_log_log_slope():
    assert sweep.exponent([8, 16, 32], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert sweep.exponent([8, 16, 32], [3.0, 12.0, 48.0]) == pytest.approx(2.0)
    assert sweep.exponent([8, 16, 32, 64], [5.0, 5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert sweep.exponent([8, 16], [1.0, None]) is None  # one point: no line
    assert sweep.exponent([8, 16, 32], [1.0, None, 4.0]) == pytest.approx(1.0)  # the failed point left out


@pytest.mark.slow
def test_sweep_times_each_family_and_mode_and_writes_json_and_png(tmp_path, capsys):
    """Two families, two points: a row per point with time and the compiled step's memory, an exponent per
    family and mode, a markdown table, PREFIX.json and a PNG. (A point a model refuses stops the sweep before anything
    runs, and one that fails when run ends its curve: tests/test_faults_bench.py.) TimeSformer and VideoMAE:
    VideoMamba's two points took 16 CPU s (tracing and compiling its scans), TimeSformer's 10."""
    run_main("--sweep=frames", "--sweep_values=2,4", "--models=timesformer,videomae", "--modes=infer",
             "--variant=Mu/8", "--size=32", "--batch=8", "--steps=1", "--warmup=0", "--num_classes=4",
             f"--out={tmp_path}/curve")
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["axis"] == "frames" and result["values"] == [2, 4] and result["complete"]
    assert result["held"] == {"size": 32, "batch": 8}
    for family in ("timesformer", "videomae"):
        rows = [r for r in result["rows"] if r["model"] == family]
        assert [r["frames"] for r in rows] == [2, 4]
        assert all(r["seconds_per_step"] > 0 and r["temp_bytes"] > 0 and r["mode"] == "infer" for r in rows)
    timesformer = [r for r in result["rows"] if r["model"] == "timesformer"]
    fits = {f["model"]: f for f in result["fits"]}
    assert fits["timesformer"]["points"] == 2 and fits["timesformer"]["time_exponent"] is not None
    assert fits["timesformer"]["memory_exponent"] == pytest.approx(sweep.exponent(
        [2, 4], [r["temp_bytes"] for r in timesformer]))
    assert fits["videomae"]["points"] == 2
    assert any(line.startswith("| timesformer Mu/8 | infer | 2 |") for line in out)
    assert json.loads((tmp_path / "curve.json").read_text()) == result
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--sweep_values=8,0"], "--sweep_values=8,0: give distinct positive integers"),
    (["--models=videomae,nosuch"], "nosuch is no video model"),
    (["--modes=infer,pretrain", "--models=vivit"], "give infer, finetune"),
    (["--remat=none,full"], "one --remat"),
    (["--scan_layers=false,true"], "one --scan_layers"),
])
def test_bad_sweep_flags_are_usage_errors(args, message):
    with pytest.raises(app.UsageError, match=message):
        run_main("--sweep=frames", *args)


@pytest.mark.slow
def test_sweep_fine_tunes_with_remat_over_scanned_layers_in_less_memory(capsys):
    """--remat=full --scan_layers=true (how long clips fine-tune in bounded memory) reach every point's config: the
    rows say so, and the compiled step keeps less than the unrolled step without remat (on XLA:CPU remat only holds
    across a scan over the layers; unrolled, the compiler merges the recomputation back into the forward pass)."""
    common = ("--sweep=frames", "--sweep_values=4", "--models=videomamba", "--modes=finetune", "--variant=Mu/8",
              "--size=32", "--batch=8", "--steps=1", "--warmup=0", "--num_classes=4")
    temps = {}
    for setting in (("--remat=none", "--scan_layers=false"), ("--remat=full", "--scan_layers=true")):
        run_main(*common, *setting)
        (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
        assert "error" not in row, row
        assert (row["remat"], row["scan_layers"]) == (setting[0].split("=")[1], setting[1] == "--scan_layers=true")
        temps[setting[0]] = row["temp_bytes"]
    assert temps["--remat=full"] < temps["--remat=none"], temps
