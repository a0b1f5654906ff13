"""predict over a whole long video: sliding windows read in one streaming pass, in bounded memory, written as JSON
Lines that a killed run resumes without repeating or losing a window."""

import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
from helpers import COMMAND_XLA_FLAGS, seeded_checkpoint

FPS, SIZE = 2, 32
WINDOW = ["--window=2", "--stride=2", "--sampling_rate=1", "--batch_size=4"]  # 4 frames a window: 600 in 20 min
TINY_VIVIT = dict(model_name="vivit", seed=6, class_names=["a", "b", "c", "d"], model=dict(
    variant="Mu/8x2", width=16, depth=1, num_heads=2, mlp_dim=32, num_frames=4, image_size=16,
    head="classification", num_classes=4, classifier="token"))


def write_video(path, minutes):
    """`minutes` of 32x32 noise-on-gradient at 2 fps (H.264, every frame different), written fast."""
    rng = np.random.default_rng(minutes)
    base = np.linspace(0, 200, SIZE, dtype=np.uint8)[None, :, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": "20"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for _ in range(minutes * 60 * FPS):
            frame = np.clip(base + rng.integers(0, 56, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="session")
def long_files(tmp_path_factory):
    """A 20-minute and a 1-minute video and a tiny random classifier, made once per test session."""
    folder = tmp_path_factory.mktemp("long_video")
    return {"long": write_video(folder / "long.mp4", 20), "short": write_video(folder / "short.mp4", 1),
            "checkpoint": str(seeded_checkpoint(TINY_VIVIT, folder / "ckpt"))}


def command(files, video, jsonl):
    return [sys.executable, "-m", "vidjax.predict", f"--checkpoint={files['checkpoint']}", video, *WINDOW,
            f"--jsonl={jsonl}"]


def env():
    return {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_CURRENT_TEST")},
            "XLA_FLAGS": COMMAND_XLA_FLAGS, "JAX_PLATFORMS": "cpu"}


def peak_rss_mb(argv):
    """Runs `argv` in a child of a fresh Python and returns the child's peak RSS (ru_maxrss), in MB."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr[-2000:]); assert p.returncode == 0, p.returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) / 1024


def rows(path):
    return [json.loads(line) for line in open(path)]


def test_long_video_memory_resume_and_output(long_files, tmp_path):
    # (1) the 20-minute file in the memory of the 1-minute one.
    short_mb = peak_rss_mb(command(long_files, long_files["short"], tmp_path / "short.jsonl"))
    reference = tmp_path / "whole.jsonl"
    long_mb = peak_rss_mb(command(long_files, long_files["long"], reference))
    print(f"peak RSS: 1-minute video {short_mb:.0f} MB, 20-minute video {long_mb:.0f} MB")
    assert long_mb <= 1.5 * short_mb, (short_mb, long_mb)
    assert len(rows(tmp_path / "short.jsonl")) == 1 + 30
    whole = rows(reference)
    assert [r["window"] for r in whole[1:]] == list(range(600))
    assert [(r["start_s"], r["end_s"]) for r in whole[1:3]] == [(0.0, 2.0), (2.0, 4.0)]

    # (2) killed part way, then run again: it resumes from the rows written.
    out = tmp_path / "resumed.jsonl"
    partial = tmp_path / "resumed.jsonl.partial"
    child = subprocess.Popen(command(long_files, long_files["long"], out), env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") > 100:
            break
        time.sleep(0.005)
    assert child.poll() is None, "predict finished before it could be killed part way"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists(), "a killed run must leave only the .partial file"
    killed = partial.read_bytes()
    before = killed.count(b"\n") - 1
    assert 100 <= before < 600
    # A kill between a row's bytes leaves half a line: the resume drops it (simulated here, as SIGKILL may not).
    partial.write_bytes(killed + b'{"path": "' + long_files["long"].encode() + b'", "wind')
    again = subprocess.run(command(long_files, long_files["long"], out), env=env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "600/600 windows" in again.stderr
    resumed = rows(out)
    assert [r["window"] for r in resumed[1:]] == list(range(600))  # none repeated, none lost
    assert not partial.exists()

    # (3) the resumed file is the uninterrupted run's, byte for byte.
    assert out.read_bytes() == reference.read_bytes()


def test_jsonl_needs_window_and_other_settings_refuse_to_resume(long_files, tmp_path, capsys):
    from vidjax import predict

    assert predict.main([f"--checkpoint={long_files['checkpoint']}", long_files["short"],
                         f"--jsonl={tmp_path / 'x.jsonl'}"]) == 2
    assert "--jsonl writes one row per window: it needs --window" in capsys.readouterr().err
    out = tmp_path / "other.jsonl"
    (tmp_path / "other.jsonl.partial").write_text('{"header": {"window_s": 9.0}}\n')
    assert predict.main([f"--checkpoint={long_files['checkpoint']}", long_files["short"], *WINDOW,
                         f"--jsonl={out}"]) == 2
    err = capsys.readouterr().err
    assert "was started with other settings" in err and "delete it to start again" in err and not out.exists()
