"""Every long-running command, interrupted: SIGINT and SIGTERM alike give one line saying what was kept and how to go
on, the documented exit status (130 for SIGINT, 143 for SIGTERM; the trainer 4, with a checkpoint), no traceback, and
a rerun of the same command that resumes (or restarts) cleanly and finishes.

One table, one row per command. Each row runs its command three times in a child process, as a person would:
1. started, then SIGINT once it is part way (the row's `ready`: its partial output has grown, or a progress line);
2. started again: it resumes what run 1 kept (the row's `resumed` text in its output), then gets SIGTERM part way;
3. started again and left to finish: exit 0, and the row's `check` of the finished output (none lost, none repeated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import test_hub
from helpers import COMMAND_XLA_FLAGS, popen_interruptible, seeded_checkpoint
from hub_server import TOKEN, HubServer
from test_long_video import TINY_VIVIT, class_folder, write_video

ROOT = pathlib.Path(__file__).parent.parent
TESTS = pathlib.Path(__file__).parent
WINDOW = ["--window=2", "--stride=2", "--sampling_rate=1", "--batch_size=2"]  # 4 frames a window at 2 fps
STOPPED = re.compile(r"^stopped by (SIGINT|SIGTERM): ")


@dataclasses.dataclass
class Row:
    argv: Callable[[dict], list[str]]  # the command line, given the session's files
    ready: Callable[[dict], Callable[[str], bool]]  # files -> (output so far -> whether the command is part way)
    kept: str  # a regular expression the stop line must match (what was kept, how to go on)
    resumed: str | None = None  # text run 2 prints when it resumes what run 1 kept (None: it restarts)
    check: Callable[[dict, str], None] | None = None  # (files, run 3's output): the finished output is whole
    codes: tuple[int, int] = (130, 143)  # the exit status for SIGINT and for SIGTERM
    stop_line: re.Pattern = STOPPED
    hub: bool = False  # pushes to the test Hub, which holds the commit until the signal has been sent
    finishes: bool = True  # run 3 (left to finish); a server has no end of its own, only the two stops


def lines(path) -> list[str]:
    return pathlib.Path(path).read_text().splitlines() if os.path.exists(path) else []


def grown(path: Callable[[dict], str], by: int, marker: str) -> Callable[[dict], Callable[[str], bool]]:
    """Ready once the command printed `marker` and `path` has `by` more lines than when the run started (a resumed
    run starts with the lines an earlier one kept)."""
    def for_run(files):
        start = []

        def ready(output):
            count = pathlib.Path(path(files)).read_bytes().count(b"\n") if os.path.exists(path(files)) else 0
            start.append(count) if not start else None
            return marker in output and count > start[0] + by
        return ready
    return for_run


def check_windows(key: str, count: int) -> Callable[[dict, str], None]:
    def check(files, output):
        rows = [json.loads(line) for line in lines(files[key])]
        assert [r["window"] for r in rows[1:]] == list(range(count)), output[-2000:]
        assert not os.path.exists(files[key] + ".partial")
    return check


def check_main(files, output):
    metrics = [json.loads(line) for line in lines(files["workdir"] + "/metrics.jsonl")]
    steps = [m["step"] for m in metrics if m.get("split", "train") == "train"]
    assert steps and steps[-1] == MAIN_STEPS, steps
    assert "Metadata file does not exist" not in output, output[-3000:]


def check_embeddings(files, output):
    import numpy as np

    with np.load(files["extract_out"]) as data:
        assert len(data["features"]) == 150, {k: data[k].shape for k in data}
    assert not os.path.exists(files["extract_out"].removesuffix(".npz") + ".jsonl.partial")


def check_pushed(server):
    assert "vidjax.json" in server.files(PUSHED)  # the dropped commits changed nothing; the finished one is whole


def seen(marker: str, then: float = 0.0) -> Callable[[dict], Callable[[str], bool]]:
    """Ready `then` seconds after the command printed `marker` ("" : after it started)."""
    def for_run(files):
        since = []

        def ready(output):
            if marker in output and not since:
                since.append(time.monotonic())
            return bool(since) and time.monotonic() - since[0] >= then
        return ready
    return for_run


def check_evaluated(files, output):
    assert "eval_loss" in json.loads(pathlib.Path(files["eval_out"]).read_text()), output[-2000:]


def check_timed(files, output):
    assert json.loads(output.strip().splitlines()[-1])["clips"] == 200, output[-2000:]


def check_swept(files, output):
    swept = json.loads(pathlib.Path(files["sweep_out"] + ".json").read_text())
    assert swept["complete"] and [row["frames"] for row in swept["rows"]] == SWEPT, swept
    assert os.path.exists(files["sweep_out"] + ".png")


SWEPT = [2, 4, 6, 8]  # one point kept by each interrupted run, the other two by the finishing one
MAIN_STEPS = 40
KEPT_WINDOWS = r"kept \d+ windows? of \d+ videos? in .+\.partial; run the same command again to resume\.$"
ROWS = {
    "main": Row(
        argv=lambda f: ["-m", "vidjax.main", f"--config={f['config']}", f"--workdir={f['workdir']}"],
        ready=lambda f: lambda out: re.search(r"^step +\d+", out, re.M) is not None,
        kept=r"checkpoint of step \d+/\d+ written to .+; run the same command again to resume from it\.$",
        resumed="Resuming from checkpoint at step", check=check_main, codes=(4, 4)),
    "predict_window": Row(
        argv=lambda f: ["-m", "vidjax.predict", f"--checkpoint={f['checkpoint']}", f["video"], *WINDOW,
                        f"--jsonl={f['predict_out']}"],
        ready=grown(lambda f: f["predict_out"] + ".partial", 5, " windows, "), kept=KEPT_WINDOWS,
        resumed="already done", check=check_windows("predict_out", 150)),
    "extract_window": Row(
        argv=lambda f: ["-m", "vidjax.extract", f"--checkpoint={f['checkpoint']}", f"--folder={f['folder']}",
                        *WINDOW, f"--out={f['extract_out']}"],
        ready=grown(lambda f: f["extract_out"].removesuffix(".npz") + ".jsonl.partial", 5, " windows, "),
        kept=KEPT_WINDOWS, resumed="already done", check=check_embeddings),
    "evaluate": Row(  # prints nothing until it is done: signalled 2.5 s in, before 4,096 clips are scored
        argv=lambda f: ["-m", "vidjax.evaluate", f"--checkpoint={f['trained']}", "--config.data.num_eval=4096",
                        f"--out={f['eval_out']}"],
        ready=seen("", 2.5), kept=r"nothing was written.*run the same command again", check=check_evaluated),
    "data_bench": Row(
        argv=lambda f: ["-m", "vidjax.data.bench", f"--dir={f['root']}/bench_videos", "--videos=2", "--seconds=1",
                        "--width=64", "--height=48", "--short_side=48", "--crop=32", "--methods=seek", "--workers=1",
                        "--clips=200"],
        ready=seen("videos in", 1.0), kept=r"the 2 videos in .* are kept \(a rerun reuses them",
        check=check_timed),
    "bench_sweep": Row(
        argv=lambda f: ["-m", "vidjax.bench", "--sweep=frames", f"--sweep_values={','.join(map(str, SWEPT))}",
                        "--models=timesformer", "--modes=infer", "--variant=Mu/8", "--size=32", "--batch=8",
                        "--steps=1", "--warmup=0", "--num_classes=4", f"--out={f['sweep_out']}"],
        ready=seen(" s/step"), kept=r"\d+ points? kept in .*curve\.json; rerun the same command to measure the rest",
        resumed="resuming: ", check=check_swept),
    "push": Row(
        argv=lambda f: ["-m", "vidjax.push", f["checkpoint"], PUSHED],
        ready=lambda f: lambda out: f["server"].commit_started.is_set(),
        kept=r"the upload to me/interrupted@main was under way.*a Hub commit is all or nothing.*run the same command "
             r"again", check=lambda f, out: check_pushed(f["server"]), hub=True),
    # Serving (issue 72 fault 5: Gradio took Ctrl-C as a normal end, its own line and exit 0; SIGTERM, no line).
    "demo": Row(
        argv=lambda f: ["-m", "vidjax.demo", f"--checkpoint={f['checkpoint']}", "--port=0", "--examples=0",
                        "--max_batch=1"],
        ready=seen("Serving the demo of", 1.0),
        kept=r"the server is closed and its temporary files removed; run the same command again to serve the demo\.$",
        finishes=False),
}
PUSHED = "me/interrupted"
env = test_hub.env  # the Hub client pointed at this module's `server`, with caches of the test's own


@pytest.fixture(scope="module")
def server():
    with HubServer() as hub_server:
        yield hub_server


def child_env(extra: dict | None = None) -> dict:
    return {**{k: v for k, v in (extra or os.environ).items() if k not in ("XLA_FLAGS", "PYTEST_CURRENT_TEST")},
            "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {COMMAND_XLA_FLAGS}", "JAX_PLATFORMS": "cpu",
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupts")
    video = write_video(folder / "five_minutes.mp4", 5)  # 150 windows of 2 s
    config = folder / "tiny.py"
    config.write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom test_train import tiny_config\n\n\n"
                      f"def get_config():\n    return tiny_config(total_steps={MAIN_STEPS}, checkpoint_every=1000, "
                      f"log_every=1, model=dict(depth=1))\n")
    return {"video": video, "checkpoint": str(seeded_checkpoint(TINY_VIVIT, folder / "ckpt")),
            "folder": str(class_folder(folder / "tree", video)), "config": str(config), "root": str(folder)}


def trained(files) -> str:
    """A tiny pre-training run of 2 steps with its checkpoint: what `evaluate` scores."""
    workdir = pathlib.Path(files["root"]) / "trained"
    if not workdir.exists():
        status, output = run(["-m", "vidjax.main", f"--config={files['config']}", f"--workdir={workdir}",
                              "--config.total_steps=2"], pathlib.Path(files["root"]) / "trained.log", child_env())
        assert status == 0, output[-3000:]
    return str(workdir)


def run(argv: list[str], log: pathlib.Path, environ: dict, ready=None, signum=None, timeout=240) -> tuple[int, str]:
    """Runs `python ARGV` with its output in `log`; once `ready(output)` holds, sends `signum`. (status, output)."""
    with open(log, "w") as out:
        child = popen_interruptible([sys.executable, *argv], cwd=ROOT, env=environ, stdout=out,
                                    stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    sent = signum is None
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if not sent and ready(log.read_text(errors="replace")):
                child.send_signal(signum)
                sent = True
            time.sleep(0.02)
        status = child.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if child.poll() is None:
            child.kill()
    output = log.read_text(errors="replace")
    assert sent, f"{argv[1]} finished before it was part way; output:\n{output[-3000:]}"
    return status, output


@pytest.mark.slow  # the trainer's stops in the default tier: tests/test_faults_trainer.py
@pytest.mark.parametrize("name", ROWS)
def test_interrupted_twice_then_finished(files, name, tmp_path, request):
    row = ROWS[name]
    files = {**files, "workdir": str(tmp_path / "workdir"), "predict_out": str(tmp_path / "windows.jsonl"),
             "extract_out": str(tmp_path / "embeddings.npz"), "eval_out": str(tmp_path / "metrics.json"),
             "sweep_out": str(tmp_path / "curve")}
    if name == "evaluate":
        files["trained"] = trained(files)
    environ = child_env()
    if row.hub:
        files["server"] = server = request.getfixturevalue("server")
        environ = child_env({**request.getfixturevalue("env"), "HF_TOKEN": TOKEN})
    argv = row.argv(files)
    for attempt, (signum, code) in enumerate(zip((signal.SIGINT, signal.SIGTERM), row.codes, strict=True)):
        if row.hub:
            server.hold_commits()
        try:
            status, output = run(argv, tmp_path / f"run{attempt}.log", environ, row.ready(files), signum)
        finally:
            if row.hub:
                server.release_commits(commit=False)  # dropped: a commit the Hub never finished changes nothing
        said = f"{name}, {signal.Signals(signum).name}, exit {status}:\n{output[-3000:]}"
        assert status == code, said
        for fault in ("Traceback", "Segmentation", "leaked shared_memory", "Exception ignored", "Keyboard interrupt"):
            assert fault not in output, said
        stops = [line for line in output.splitlines() if row.stop_line.match(line)]
        assert len(stops) == 1, said
        assert signal.Signals(signum).name in stops[0] and re.search(row.kept, stops[0]), said
        if attempt == 1 and row.resumed:
            assert row.resumed in output, said
        if row.hub:  # the commit the signal cut short was dropped: a Hub commit is all or nothing
            assert "vidjax.json" not in server.files(PUSHED), said
    if not row.finishes:
        return
    status, output = run(argv, tmp_path / "finish.log", environ)
    assert status == 0, output[-3000:]
    assert "Traceback" not in output and "leaked shared_memory" not in output, output[-3000:]
    if row.check:
        row.check(files, output)


SWALLOWED = """
import gc, os, signal, sys, time, weakref
from vidjax import cli


class Kept:
    pass


def main():
    kept = Kept()

    def collected(ref):  # the signal's handler runs in here, where Python drops exceptions
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))

    ref = weakref.ref(kept, collected)
    del kept
    gc.collect()
    for _ in range(300):
        time.sleep(0.01)
    print("ran to the end, the signal lost")
    return 0


cli.guard(main)
"""


def test_a_signal_in_a_garbage_collection_callback_is_not_lost(tmp_path):
    """jax's gc callback runs often; a signal's Interrupted raised in it is dropped by Python ("Exception ignored in
    ..."): it is delivered again, and the command stops with its line."""
    script = tmp_path / "swallowed.py"
    script.write_text(SWALLOWED)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stdout + done.stderr
    assert done.stdout == "" and done.stderr.splitlines() == [
        "stopped by SIGTERM: nothing was written; run the same command again to start over."], done.stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_flags_are_parsed_is_the_one_line(tmp_path, signum, code):
    """A config flag's file runs while absl parses the flags (and imports jax and flax there, as `evaluate`'s stored
    config does): a signal then is the one line and 130 / 143, not a traceback."""
    slow = tmp_path / "slow_config.py"
    slow.write_text("import time\n\n\ndef get_config(arg=None):\n    print('reading the config', flush=True)\n"
                    "    time.sleep(120)\n")
    status, output = run(["-m", "vidjax.main", f"--config={slow}", f"--workdir={tmp_path / 'run'}"],
                         tmp_path / "run.log", child_env(), lambda out: "reading the config" in out, signum)
    assert status == code, output
    assert "Traceback" not in output and output.strip().splitlines()[-1] == (
        f"stopped by {signal.Signals(signum).name}: nothing was written; run the same command again to start over.")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # compiles for a TPU, a minute each
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_find_batch_stops_in_the_compile_under_way(tmp_path, signum):
    """`vidjax.aot --find_batch` compiles for minutes (issue 72 fault 4: SIGINT took about 70 s, until the compile
    under way ended): the compile runs on a thread the command leaves, so a signal during the second compile is the
    one stop line and 130 / 143 in far less than the first compile took (measured in the same run)."""
    log = tmp_path / "aot.log"
    argv = [sys.executable, "-m", "vidjax.aot", "--config=configs/videomae_k400.py:runlocal", "--topology=v5litepod-1",
            "--find_batch"]
    with open(log, "w") as out:
        child = popen_interruptible(argv, cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
    started = time.monotonic()
    first = signalled = None
    try:
        while child.poll() is None and time.monotonic() - started < 420:
            if first is None and re.search(r"^  batch \d+: ", log.read_text(errors="replace"), re.M):
                first = time.monotonic() - started  # the first compile (and the start-up before it) took this long
            if first is not None and signalled is None and time.monotonic() - started > 1.5 * first:
                child.send_signal(signum)  # half way through the second batch's lowering and compile
                signalled = time.monotonic()
            time.sleep(0.05)
        status = child.wait(timeout=30)
        stopped_in = time.monotonic() - signalled if signalled else None
    finally:
        if child.poll() is None:
            child.kill()
    output = log.read_text(errors="replace")
    assert signalled is not None, output[-3000:]
    assert status == 128 + signum, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len([line for line in output.splitlines() if STOPPED.match(line)]) == 1, output[-3000:]
    assert len(re.findall(r"^  batch \d+: ", output, re.M)) == 1, output  # the compile under way never reported
    print(f"the first batch after {first:.1f} s, stopped {stopped_in:.1f} s after the signal")
    assert stopped_in < first / 6, (stopped_in, first, output[-3000:])
