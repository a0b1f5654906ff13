"""predict and extract under faults: stopped by SIGINT or SIGTERM part way (one line saying what the .partial file
kept, exit 130 or 143, and a rerun that resumes to the uninterrupted run's output), output paths that cannot be
written (refused before any work), and FFmpeg's errors in plain words."""

import io
import json
import os
import signal

import av
import numpy as np
import pytest
from helpers import seeded_checkpoint
from test_long_video import TINY_VIVIT, WINDOW, write_video

from vidjax import cli
from vidjax.commands import extract, predict
from vidjax.data import decode
from vidjax.pretrained import windows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two videos of 6 and 4 windows, the same two as a one-class folder tree, and a tiny random classifier."""
    folder = tmp_path_factory.mktemp("faults")
    videos = [write_video(folder / "a.mp4", 12 / 60, seed=0), write_video(folder / "b.mp4", 8 / 60, seed=1)]
    (folder / "tree" / "clips").mkdir(parents=True)
    for video in videos:
        (folder / "tree" / "clips" / os.path.basename(video)).symlink_to(video)
    return {"videos": videos, "tree": str(folder / "tree"),
            "checkpoint": str(seeded_checkpoint(TINY_VIVIT, folder / "ckpt"))}


def stop_after(monkeypatch, windows_done, signum):
    """SIGINT or SIGTERM, as `cli.interruptible` raises it, once `windows_done` more windows have been written."""
    real, count = windows.Progress.step, [0]

    def step(self):
        real(self)
        count[0] += 1
        if count[0] == windows_done:
            raise cli.Interrupted(signum)

    monkeypatch.setattr(windows.Progress, "step", step)


def last_line(capsys, resumed=None):
    """The last line on stderr; `resumed`: the line before the first window says the run resumes from that."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert resumed is None or f"\nResuming {resumed} already done.\n" in "\n" + err, err
    return err.rstrip("\n").splitlines()[-1]


def lines(path):
    return path.read_bytes().count(b"\n")


def test_predict_stopped_part_way_keeps_its_rows_and_resumes(files, tmp_path, monkeypatch, capsys):
    def argv(out):
        return [f"--checkpoint={files['checkpoint']}", *files["videos"], *WINDOW, f"--jsonl={out}"]

    reference = tmp_path / "new" / "whole.jsonl"  # a folder that does not exist yet is made
    assert predict.main(argv(reference)) == 0
    out, partial = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial"

    stop_after(monkeypatch, 3, signal.SIGINT)
    assert predict.main(argv(out)) == 130
    assert last_line(capsys) == (f"stopped by SIGINT: kept 3 windows of 1 video in {partial}; run the same command "
                                 f"again to resume.")
    assert lines(partial) == 1 + 3 and not out.exists()

    stop_after(monkeypatch, 4, signal.SIGTERM)  # resumed, then stopped again in the second video
    assert predict.main(argv(out)) == 143
    assert last_line(capsys, f"{partial}: 3 windows of 1 video") == (
        f"stopped by SIGTERM: kept 7 windows of 2 videos in {partial}; run the same command again to resume.")
    assert lines(partial) == 1 + 7 and not out.exists()

    monkeypatch.undo()
    assert predict.main(argv(out)) == 0
    assert out.read_bytes() == reference.read_bytes() and not partial.exists()

    # Without --jsonl nothing is kept, and the line says how to keep it.
    stop_after(monkeypatch, 2, signal.SIGINT)
    assert predict.main(argv(out)[:-1]) == 130
    assert last_line(capsys).startswith("stopped by SIGINT: predicted 0 of 2 videos; nothing was written (--jsonl=")


def test_extract_stopped_part_way_keeps_its_rows_and_resumes(files, tmp_path, monkeypatch, capsys):
    def argv(out):
        return [f"--checkpoint={files['checkpoint']}", f"--folder={files['tree']}", *WINDOW, f"--out={out}"]

    def read(path):
        with np.load(path) as data:
            return {k: data[k] for k in data}

    assert extract.main(argv(tmp_path / "whole.npz")) == 0
    out, partial = tmp_path / "out.npz", tmp_path / "out.jsonl.partial"

    stop_after(monkeypatch, 8, signal.SIGTERM)
    assert extract.main(argv(out)) == 143
    assert last_line(capsys) == (f"stopped by SIGTERM: kept 8 windows of 2 videos in {partial}; run the same "
                                 f"command again to resume.")
    assert lines(partial) == 1 + 8 and not out.exists()

    monkeypatch.undo()
    assert extract.main(argv(out)) == 0
    last_line(capsys, f"{partial}: 8 windows of 2 videos")
    assert not partial.exists()
    whole, resumed = read(tmp_path / "whole.npz"), read(out)
    assert resumed.keys() == whole.keys() and len(resumed["features"]) == 10
    for key, value in whole.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    assert json.loads((tmp_path / "out.index.json").read_text()) == json.loads(
        (tmp_path / "whole.index.json").read_text())


@pytest.mark.parametrize("command, flag, path, message", [
    (predict, "--jsonl", "folder", "--jsonl={typed} is a folder; give a file in it, e.g. "
                                   "--jsonl={typed}/predictions.jsonl."),
    (predict, "--jsonl", "new/", "--jsonl={typed} names a folder; give a file in it, e.g. "
                                 "--jsonl={typed}predictions.jsonl."),
    (predict, "--jsonl", "file/sub/x.jsonl", "--jsonl={typed}: {tmp}/file is a file, not a folder; choose another"),
    (predict, "--jsonl", "folder.jsonl", "--jsonl={typed}: {tmp}/folder.jsonl.partial, which it writes too, is a "
                                         "folder"),
    (predict, "--json", "folder", "--json={typed} is a folder; give a file in it, e.g. "
                                  "--json={typed}/predictions.json."),
    (extract, "--out", "folder.npz", "--out={typed} is a folder; give a file in it, e.g. --out={typed}/features.npz."),
    (extract, "--out", "file/x.npz", "--out={typed}: {tmp}/file is a file, not a folder; choose another --out."),
])
def test_outputs_that_cannot_be_written_are_refused_before_any_work(command, flag, path, message, tmp_path,
                                                                     capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "folder.jsonl.partial").mkdir()
    (tmp_path / "file").write_text("")
    before = sorted(os.listdir(tmp_path))
    typed = str(tmp_path / path) + ("/" if path.endswith("/") else "")
    videos = ["--folder=/nowhere"] if command is extract else ["/nowhere/a.mp4"]
    # The checkpoint does not exist either: the output is checked first, before anything is loaded or read.
    status = command.main(["--checkpoint=/nowhere/ckpt", *videos, "--window=2", f"{flag}={typed}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("error: " + message.format(typed=typed, tmp=tmp_path)), err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_a_progress_line_left_open_on_a_terminal_is_ended():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    progress = windows.Progress("a.mp4", 3, out=out)
    progress.step()
    progress.close()  # stopped part way: what follows starts a line of its own
    assert out.getvalue().startswith("\ra.mp4: [########") and out.getvalue().count("\n") == 1
    assert out.getvalue().endswith("\n")
    progress.step()
    progress.step()
    progress.close()  # the last step ended its line itself
    assert out.getvalue().count("\n") == 2 and out.getvalue().endswith("\n")


def test_ffmpeg_errors_in_plain_words(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(decode.VideoDecodeError) as caught:
        decode.probe(str(garbage))
    assert str(caught.value) == f"cannot decode video {str(garbage)!r}: cannot open (invalid data)"
    with pytest.raises(decode.VideoDecodeError, match=r"'.*': cannot open \(it is a folder, not a video file\)$"):
        decode.probe(str(tmp_path))
    (tmp_path / "empty.mp4").write_bytes(b"")  # an interrupted copy
    for source in (str(tmp_path / "empty.mp4"), b""):
        with pytest.raises(decode.VideoDecodeError, match=r": cannot open \(the file is empty: 0 bytes\)$"):
            decode.probe(source)
    # The mapping, by PyAV's error class; others keep the system's words, without the number and the file name.
    assert decode.ffmpeg_reason(av.error.InvalidDataError(-1094995529, "Invalid data found when processing input",
                                                          "x.mp4")) == "invalid data"
    assert decode.ffmpeg_reason(av.error.EOFError(-541478725, "End of file")) == "the file ends early"
    assert decode.ffmpeg_reason(av.error.ExternalError(-542398533, "Generic error in an external library",
                                                       "x.mp4")) == "generic error in an external library"
    assert decode.ffmpeg_reason(OSError(5, "Input/output error", "x.mp4")) == "input/output error"


def test_the_progress_line_is_redrawn_every_2_seconds_and_where_the_run_stopped():
    """Without a terminal (--jsonl's runs, logs): a line at the first window, then every 2 s of windows, and where
    the run stops; the pace and time left leave out the first window, which holds the compile (issue 72: one line,
    `1/598 windows ... ETA 3:32`, for a run stopped at 272 windows of a 9 s file)."""
    now = [0.0]
    out = io.StringIO()
    progress = windows.Progress("a.mp4", 20, out=out, clock=lambda: now[0])
    now[0] = 3.0  # the first window: the compile
    progress.step()
    for _ in range(10):  # then 0.5 s a window
        now[0] += 0.5
        progress.step()
    progress.close()  # stopped at 11 of 20
    lines = out.getvalue().splitlines()
    assert [line.split("] ")[1].split(" windows")[0] for line in lines] == ["1/20", "5/20", "9/20", "11/20"]
    assert lines[0].endswith("? windows/s, ETA ?")  # no pace from the compile's window
    assert lines[-1].endswith("2.0 windows/s, ETA 0:04")  # 9 windows left at 2 a second
    assert len(lines) == len(out.getvalue().split("\n")) - 1  # every line ended
