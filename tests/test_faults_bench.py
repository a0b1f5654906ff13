"""The benchmarks' faults (issue 48): every bad input is one `error:` line naming the flag and the fix, exit status 2,
checked before anything is written or compiled; an interruption is one line saying what was kept, exit 130 / 143,
with nothing lost or leaked.

`python -m vidjax.data.bench`'s checks run in this process on a flag set of their own (`define_flags(FlagValues())`:
the command's flags share names with `vidjax.bench`'s); `python -m vidjax.bench --sweep`'s through `step.main` with a
stand-in for the timing (`step.time_vidjax`), so that nothing compiles. Three child processes check what only a real
process shows: the exit status and single line, the grain workers' shared memory at exit, an interrupted sweep's
file and its resumption.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from absl import app, flags
from absl.testing import flagsaver
from helpers import COMMAND_XLA_FLAGS, popen_interruptible

from vidjax import cli
from vidjax.bench import reference, step, sweep
from vidjax.commands import data_bench

ROOT = pathlib.Path(__file__).parent.parent
CONFIG = str(ROOT / "configs" / "videomae_k400.py")


def data_bench_flags(*args: str) -> flags.FlagValues:
    values = flags.FlagValues()
    data_bench.define_flags(values)
    values(["data.bench", *args])
    return values


@pytest.mark.parametrize("args, message", [
    # values the bench cannot run (tracebacks before)
    (["--config={config}", "--num_samples=abc"], r"--num_samples=abc: give integers of at least 1, e\.g\. "),
    (["--config={config}", "--compare=foo"],
     r"--compare=foo: foo is no loader .* give some of vidjax_device,vidjax_nvdec,decord,torchcodec"),
    (["--videos=0"], r"--videos=0: give at least 1"),
    (["--seconds=0"], r"--seconds=0: the videos need at least one frame"),
    (["--seconds=0.01"], r"--seconds=0.01: the videos need at least one frame at --fps=30"),
    (["--width=641"], r"--width=641: give an even size of at least 16 pixels"),
    (["--height=8"], r"--height=8: give an even size"),
    (["--dir={file}"], r"--dir=.*: this is a file, not a folder; give a folder"),
    (["--dir={file}/videos"], r"--dir=.*: cannot write there \(.* is not a folder\)"),
    (["--json_out={tmp}"], r"--json_out=.* is a folder; give a file"),
    (["--test_clips=-1"], r"--test_clips=-1: give the number of test clips a video"),
    (["--crop=300"], r"--crop=300 is larger than --short_side=256"),
    (["--methods=seek,fast"], r"--methods=seek,fast: give some of naive,seek,seek_sws,seek_skip"),
    # values silently accepted before
    (["--rounds=0", "--test_clips=2"], r"--rounds=0: give at least 1"),
    (["--config={config}", "--rounds=0"], r"--rounds=0: give at least 1"),
    (["--clips=0"], r"--clips=0: give at least 1"),
    (["--workers=-1"], r"--workers=-1: give integers of at least 0"),
    (["--config={config}", "--workers=1,x"], r"--workers=1,x: give integers of at least 0"),
    (["--config={config}", "--batch=0"], r"--batch=0: give at least 1"),
    # flags the chosen way would ignore (silently before)
    (["--compare=decord"], r"--compare applies only with --config; .* add --config=RECIPE"),
    (["--num_samples=1,4"], r"--num_samples applies only with --config"),
    (["--rounds=3"], r"--rounds applies only with --config or with --test_clips"),
    (["--test_clips=3", "--workers=2"], r"--workers applies only in the decoder comparison .* or with --config"),
    (["--config={config}", "--methods=seek"], r"--methods applies only in the decoder comparison"),
    (["--config={config}", "--test_clips=5"], r"--config and --test_clips=5 are two different benchmarks; give one"),
])
def test_data_bench_refuses_a_bad_command_line_before_anything(tmp_path, args, message):
    (tmp_path / "file").write_text("not a folder")
    values = data_bench_flags(*(a.format(config=CONFIG, file=tmp_path / "file", tmp=tmp_path) for a in args))
    with pytest.raises(app.UsageError, match=message):
        data_bench.check_flags(values)


def test_data_bench_takes_its_documented_command_lines(tmp_path):
    for args in ([f"--dir={tmp_path}/new/videos", "--workers=1,2"],
                 [f"--config={CONFIG}", "--num_samples=1,4", "--compare=decord,torchcodec", "--workers=2",
                  "--rounds=2"],
                 ["--test_clips=5", "--rounds=4"]):
        assert data_bench.check_flags(data_bench_flags(*args)) in ("decoders", "config", "test_clips")
    assert not (tmp_path / "new").exists()  # checking writes nothing


def run_command(args, *, cwd=ROOT, timeout=120, **kwargs):
    env = dict(os.environ, XLA_FLAGS=COMMAND_XLA_FLAGS)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def test_data_bench_bad_value_is_one_line_exit_2_and_no_folder(tmp_path):
    proc = run_command(["vidjax.data.bench", f"--dir={tmp_path}/videos", "--videos=0"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --videos=0: give at least 1") and "Traceback" not in proc.stderr
    assert not (tmp_path / "videos").exists()  # before: an empty folder, then a traceback


def interrupt(args, ready, sig, *, cwd=ROOT, timeout=150, wait=0.5):
    """Runs `python -m ARGS`, sends `sig` once `ready(output so far)` holds; returns (status, stdout, stderr)."""
    env = dict(os.environ, XLA_FLAGS=COMMAND_XLA_FLAGS, PYTHONUNBUFFERED="1")
    proc = popen_interruptible([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    out = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        out.append(line)
        if ready("".join(out)) or time.monotonic() > deadline:
            break
    time.sleep(wait)
    os.killpg(proc.pid, sig)  # the whole group, as Ctrl-C in a terminal: grain's workers get it too
    rest, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(out) + rest, err


def test_data_bench_interrupted_says_what_it_kept_and_leaks_no_shared_memory(tmp_path):
    """SIGINT to the process group (Ctrl-C in a terminal) while grain's worker hands clips over shared memory: one
    line, exit 130, no traceback (the worker's own included: vidjax/data/bench.py), and no shared memory left to the
    resource tracker (the interrupted frames held an element opened from it: `pipeline.release_shared_memory`)."""
    folder = tmp_path / "videos"
    status, out, err = interrupt(
        ["vidjax.data.bench", f"--dir={folder}", "--videos=2", "--seconds=1", "--width=64", "--height=48",
         "--short_side=48", "--crop=32", "--methods=seek", "--workers=1", "--clips=100000"],
        lambda out: "videos in" in out, signal.SIGINT, cwd=tmp_path, wait=4)  # the worker is handing clips over
    assert status == 130, (out, err)
    assert err.strip().splitlines() == [
        f"stopped by SIGINT: the 2 videos in {folder} are kept (a rerun reuses them, so only the timing runs "
        f"again); no result was written."], err
    assert len(list(folder.glob("*.mp4"))) == 2 and not list(folder.glob("*.partial.mp4"))


# ---------------------------------------------------------------------------------------------------------------
# python -m vidjax.bench --sweep

SWEEP = ("--sweep=frames", "--models=timesformer", "--modes=infer", "--variant=Mu/8", "--size=32", "--batch=8",
         "--steps=1", "--warmup=0", "--num_classes=4")


def run_main(*args):
    with flagsaver.flagsaver():
        flags.FLAGS(["bench", *args])
        return step.main(["bench"])


class FakeTiming:
    """`step.time_vidjax` without compiling: figures that grow with the frames; SIGINT (as `cli.interruptible`
    raises it) or an error at the points named."""

    def __init__(self, interrupt_at=(), fail_at=()):
        self.timed, self.interrupt_at, self.fail_at = [], set(interrupt_at), set(fail_at)

    def __call__(self, config, mode, steps, warmup, *args, **kwargs):
        frames = config.model.num_frames
        if frames in self.interrupt_at:
            raise cli.Interrupted(signal.SIGINT)
        if frames in self.fail_at:
            raise MemoryError(f"out of memory at {frames} frames")
        self.timed.append(frames)
        return {"seconds_per_step": 0.01 * frames, "clips_per_s": 800 / frames, "compile_s": 0.1,
                "temp_bytes": 2**20 * frames, "argument_bytes": 2**20, "flops_per_step": 1e9 * frames,
                "backend": "cpu"}


def test_sweep_refuses_points_no_model_takes_before_anything_runs(monkeypatch):
    """Before: a ConfigError line, an empty table and exit 0."""
    timing = FakeTiming()
    monkeypatch.setattr(step, "time_vidjax", timing)
    with pytest.raises(app.UsageError, match=r"--sweep=frames --sweep_values=3,5 \(--size=7 --batch=8\): nothing was "
                       r"run, 2 points cannot: videomae Mu/8 infer at frames=3: a video of 3 frames at 7x7 does not "
                       r"divide .*; and 1 more \(videomae Mu/8 infer at frames=5\)\. Choose values"):
        run_main(*SWEEP, "--models=videomae", "--size=7", "--sweep_values=3,5")
    assert timing.timed == []


def test_compare_torch_without_torch_is_one_line_before_any_work(monkeypatch):
    """Before: a 32-line ImportError from the benchmark, and in a sweep a `torch_error` in the JSON with exit 0."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, installed or not
    timing = FakeTiming()
    monkeypatch.setattr(step, "time_vidjax", timing)
    for args in (["--model=timesformer", "--mode=infer", "--variant=Mu/8"], [*SWEEP, "--sweep_values=2,4"]):
        with pytest.raises(app.UsageError, match=r"^--compare=torch needs torch and transformers, which do not "
                           r"import here \(\w*Error: .*\): pip install 'vidjax\[torch\]'"):
            run_main(*args, "--compare=torch")
    assert timing.timed == []
    assert "\ntorch = [" in (ROOT / "pyproject.toml").read_text()  # the extra it names


def test_interrupted_sweep_keeps_each_point_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """Each point is in PREFIX.json as soon as it is measured (a valid file after every point); SIGINT at the third
    point: one line, 130, two points kept; the same command again measures only the rest; other settings against
    the same file are refused (nothing measured is overwritten)."""
    out = str(tmp_path / "curve")
    monkeypatch.setattr(step, "time_vidjax", FakeTiming(interrupt_at={8}))
    assert run_main(*SWEEP, "--sweep_values=2,4,8,16", f"--out={out}") == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"stopped by SIGINT: 2 points kept in {out}.json; rerun the same command to measure the rest and draw the "
        f"picture (the kept points are not measured again)."]
    partial = json.loads(pathlib.Path(out + ".json").read_text())
    assert partial["complete"] is False and [r["frames"] for r in partial["rows"]] == [2, 4]
    assert partial["fits"][0]["points"] == 2 and not (tmp_path / "curve.png").exists()

    timing = FakeTiming()
    monkeypatch.setattr(step, "time_vidjax", timing)
    assert run_main(*SWEEP, "--sweep_values=2,4,8,16", f"--out={out}") == 0
    printed = capsys.readouterr().out
    assert f"resuming: 2 points of these settings already in {out}.json are kept" in printed
    assert timing.timed == [8, 16]
    result = json.loads(pathlib.Path(out + ".json").read_text())
    assert result == json.loads(printed.strip().splitlines()[-1])
    assert result["complete"] and [r["frames"] for r in result["rows"]] == [2, 4, 8, 16]
    assert result["rows"][:2] == partial["rows"] and result["fits"][0]["time_exponent"] == pytest.approx(1.0)
    assert (tmp_path / "curve.png").exists()

    with pytest.raises(app.UsageError, match=r"curve\.json holds a sweep with other settings \(steps 1 here 2\); "
                       r"give another --out to keep both, or delete curve\.json"):
        run_main(*SWEEP, "--sweep_values=2,4,8,16", f"--out={out}", "--steps=2")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(app.UsageError, match=r"bad\.json is not a sweep's JSON"):
        run_main(*SWEEP, "--sweep_values=2,4", f"--out={tmp_path / 'bad'}")


def test_a_point_that_fails_when_run_ends_its_curve(monkeypatch, capsys):
    """Out of memory at a point (what the up-front check cannot know): the row keeps the error, larger points are
    not tried, the curve's fit is of the points before."""
    timing = FakeTiming(fail_at={4})
    monkeypatch.setattr(step, "time_vidjax", timing)
    assert run_main(*SWEEP, "--sweep_values=2,4,8") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["frames"] for r in result["rows"]] == [2, 4] and timing.timed == [2]
    assert result["rows"][1]["error"] == "MemoryError: out of memory at 4 frames"
    assert result["fits"][0]["points"] == 1 and result["fits"][0]["time_exponent"] is None


def test_sweep_legends_cover_no_point():
    """Each legend sits under its axes: no data point of either plot falls inside a legend's box."""
    rows = [{"model": model, "variant": "S/16", "mode": "infer", "frames": f, "seconds_per_step": scale * f,
             "temp_bytes": int(scale * 2**20 * f * f), "torch_seconds_per_step": 2 * scale * f}
            for model, scale in (("videomae", 1.0), ("timesformer", 3.0), ("vivit", 0.5), ("videomamba", 2.0))
            for f in (8, 16, 32, 64)]
    fits = [{"model": m, "variant": "S/16", "mode": "infer", "points": 4, "time_exponent": 1.0,
             "memory_exponent": 2.0, "torch_time_exponent": 1.0}
            for m in ("videomae", "timesformer", "vivit", "videomamba")]
    fig = sweep.figure({"axis": "frames", "held": {"size": 112, "batch": 1}, "rows": rows, "fits": fits,
                        "host": {"backend": "cpu", "device": "cpu"}})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_legend().get_window_extent(renderer)
        assert box.y1 < ax.get_window_extent(renderer).y0  # under the axes
        for line in ax.get_lines():
            for x, y in ax.transData.transform(line.get_xydata()):
                assert not box.contains(x, y), (line.get_label(), x, y)
    from matplotlib import pyplot as plt

    plt.close(fig)


@pytest.mark.slow
def test_interrupted_sweep_process_exits_130_without_a_crash_and_resumes(tmp_path):
    """A real process: SIGINT once the first point is measured (the next one compiling on XLA's threads, whose
    teardown under the compile crashed the process, exit 139): one line, 130, the point kept; the rerun keeps it."""
    prefix = tmp_path / "curve"
    args = ["vidjax.bench", *SWEEP, "--sweep_values=2,4,8,16", f"--out={prefix}"]
    status, out, err = interrupt(args, lambda out: "s/step" in out, signal.SIGINT)
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert status == 130 and "Traceback" not in err and "Fatal Python error" not in err, (status, err[-3000:])
    points = len(json.loads((tmp_path / "curve.json").read_text())["rows"])
    assert points >= 1 and lines == [f"stopped by SIGINT: {points} point{'s' * (points != 1)} kept in {prefix}.json; "
                                     f"rerun the same command to measure the rest and draw the picture (the kept "
                                     f"points are not measured again)."], err
    proc = run_command(args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming: {points} point" in proc.stdout
    assert [r["frames"] for r in json.loads((tmp_path / "curve.json").read_text())["rows"]] == [2, 4, 8, 16]


def test_reference_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert "pip install 'vidjax[torch]'" in reference.missing(["videomamba"])
