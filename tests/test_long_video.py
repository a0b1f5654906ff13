"""predict and extract over a whole long video: sliding windows read in one streaming pass, in bounded memory,
written as JSON Lines that a killed run resumes without repeating or losing a window."""

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


def write_video(path, minutes, seed=None):
    """`minutes` of 32x32 noise-on-gradient at 2 fps (H.264, every frame different), written fast: one window of
    WINDOW every 2 s."""
    rng = np.random.default_rng(minutes if seed is None else seed)
    base = np.linspace(0, 200, SIZE, dtype=np.uint8)[None, :, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": "20"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for _ in range(round(minutes * 60 * FPS)):
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


@pytest.mark.slow
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
    killed = kill_part_way(command(long_files, long_files["long"], out), partial, 100)
    assert not out.exists(), "a killed run must leave only the .partial file"
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


def extract_command(files, folder, out):
    return [sys.executable, "-m", "vidjax.extract", f"--checkpoint={files['checkpoint']}", f"--folder={folder}",
            *WINDOW, f"--out={out}"]


def class_folder(root, video):
    """ROOT/clips/<video>: `video` as the one clip of a one-class folder tree."""
    (root / "clips").mkdir(parents=True)
    (root / "clips" / os.path.basename(video)).symlink_to(video)
    return root


def read_npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data}


def kill_part_way(argv, partial, lines):
    """Starts `argv`, SIGKILLs it once `partial` has more than `lines` lines, and returns its bytes then."""
    child = subprocess.Popen(argv, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") > lines:
            break
        time.sleep(0.005)
    assert child.poll() is None, f"{argv[2]} finished before it could be killed part way"
    child.send_signal(signal.SIGKILL)
    child.wait()
    return partial.read_bytes()


@pytest.mark.slow
def test_extract_windows_memory_resume_and_output(long_files, tmp_path):
    # (1) one embedding per window of the 20-minute file, in the memory of the 1-minute one.
    short = class_folder(tmp_path / "short", long_files["short"])
    long = class_folder(tmp_path / "long", long_files["long"])
    short_mb = peak_rss_mb(extract_command(long_files, short, tmp_path / "short.npz"))
    reference = tmp_path / "whole.npz"
    long_mb = peak_rss_mb(extract_command(long_files, long, reference))
    print(f"extract peak RSS: 1-minute video {short_mb:.0f} MB, 20-minute video {long_mb:.0f} MB")
    assert long_mb <= 1.5 * short_mb, (short_mb, long_mb)
    whole = read_npz(reference)
    assert whole["features"].shape == (600, 16) and whole["features"].dtype == np.float32
    assert whole["window"].tolist() == list(range(600)) and set(whole["label"].tolist()) == {0}
    assert whole["start_s"][:2].tolist() == [0.0, 2.0] and whole["end_s"][-1] == 1200.0
    assert whole["class_names"].tolist() == ["clips"]
    assert read_npz(tmp_path / "short.npz")["features"].shape == (30, 16)
    assert not (tmp_path / "whole.jsonl.partial").exists()  # the .npz holds the rows once written

    # (2) killed part way, with half a row at the end, then run again: it resumes from the rows written.
    out, partial = tmp_path / "resumed.npz", tmp_path / "resumed.jsonl.partial"
    killed = kill_part_way(extract_command(long_files, long, out), partial, 100)
    assert not out.exists(), "a killed run must leave only the .partial file"
    assert 100 <= killed.count(b"\n") - 1 < 600
    partial.write_bytes(killed + b'{"path": "' + long_files["long"].encode() + b'", "embedd')  # a cut row
    again = subprocess.run(extract_command(long_files, long, out), env=env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    before = killed.count(b"\n") - 1  # the complete rows: the run goes on from the next window
    assert f"{before + 1}/600 windows" in again.stderr and "600/600 windows" in again.stderr
    assert not partial.exists()

    # (3) the resumed output is the uninterrupted run's: every array, and the index.
    resumed = read_npz(out)
    assert resumed.keys() == whole.keys()
    for key, value in whole.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    assert json.loads((tmp_path / "resumed.index.json").read_text()) == json.loads(
        (tmp_path / "whole.index.json").read_text())


def test_jsonl_needs_window_and_other_settings_refuse_to_resume(long_files, tmp_path, capsys):
    from vidjax.commands import predict

    assert predict.main([f"--checkpoint={long_files['checkpoint']}", long_files["short"],
                         f"--jsonl={tmp_path / 'x.jsonl'}"]) == 2
    assert "--jsonl writes one row per window: it needs --window" in capsys.readouterr().err
    out = tmp_path / "other.jsonl"
    (tmp_path / "other.jsonl.partial").write_text('{"header": {"window_s": 9.0}}\n')
    assert predict.main([f"--checkpoint={long_files['checkpoint']}", long_files["short"], *WINDOW,
                         f"--jsonl={out}"]) == 2
    err = capsys.readouterr().err
    assert "was started with other settings" in err and "delete it to start again" in err and not out.exists()


def test_extract_windows_of_a_segment_flags_and_other_settings(long_files, tmp_path, capsys):
    from vidjax.commands import extract

    listed = tmp_path / "list.csv"
    listed.write_text(f"path,label,start,end\n{long_files['short']},1,10,20\n")
    common = [f"--checkpoint={long_files['checkpoint']}", f"--csv={listed}", *WINDOW]
    # A row's start/end segment is cut into windows from its start.
    assert extract.main([*common[:2], "--window=4", "--stride=3", *WINDOW[2:], f"--out={tmp_path / 's.npz'}"]) == 0
    with np.load(tmp_path / "s.npz") as segment:
        assert segment["start_s"].tolist() == [10.0, 13.0, 16.0] and segment["end_s"].tolist() == [14.0, 17.0, 20.0]
        assert segment["label"].tolist() == [1, 1, 1] and segment["features"].shape == (3, 16)
    assert extract.main([*common, "--pool=tokens", f"--out={tmp_path / 'x.npz'}"]) == 2
    assert "--window gives one vector per window" in capsys.readouterr().err
    assert extract.main([*common[:2], "--stride=2", f"--out={tmp_path / 'x.npz'}"]) == 2
    assert "--stride needs --window" in capsys.readouterr().err
    (tmp_path / "other.jsonl.partial").write_text('{"header": {"window_s": 9.0}}\n')
    assert extract.main([*common, f"--out={tmp_path / 'other.npz'}"]) == 2
    err = capsys.readouterr().err
    assert "was started with other settings" in err and "delete it to start again" in err
    assert not (tmp_path / "other.npz").exists()
