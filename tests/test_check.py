"""The dataset doctor: every entry decoded through the pipeline, one line each, totals, and an exit status."""

import io
import subprocess
import sys

from test_decode import make_video

from vidjax import config_lib
from vidjax.commands import data_check


def write_list(tmp_path, good_frames=40):
    make_video(tmp_path / "good.mp4", num_frames=good_frames)
    make_video(tmp_path / "short.mp4", num_frames=3)
    make_video(tmp_path / "broken.mp4", num_frames=40)
    raw = (tmp_path / "broken.mp4").read_bytes()
    (tmp_path / "broken.mp4").write_bytes(raw[:200])
    (tmp_path / "notes.mp4").write_text("not a video")
    lines = ["good.mp4 0", "short.mp4 1", "broken.mp4 0", "notes.mp4 1", "gone.mp4 0"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.csv"


def test_report_categories_and_exit_status(tmp_path):
    path = write_list(tmp_path)
    data = config_lib.data_config(source="csv", train_csv=str(path), eval_csv=str(path), root=str(tmp_path),
                                  num_classes=2, num_frames=8, sampling_rate=2, image_size=32)
    out = io.StringIO()
    assert data_check.run(data, "train", out=out) == 1
    report = out.getvalue()
    status = report.splitlines()
    assert any(line.startswith("ok ") and "good.mp4" in line for line in status)
    assert any(line.startswith("too short") and "short.mp4" in line and "repeats for 6 of the 8" in line
               for line in status)
    assert any(line.startswith("unreadable") and "notes.mp4" in line for line in status)
    assert any(line.split()[0] in ("corrupt", "unreadable") and "broken.mp4" in line for line in status)
    assert any(line.startswith("missing") and "gone.mp4" in line for line in status)
    assert report.splitlines()[-1].startswith("5 entries: 1 ok, 1 too short") and "2 usable" in report


def test_command_line_exit_zero_when_all_usable(tmp_path):
    make_video(tmp_path / "a.mp4", num_frames=20)
    make_video(tmp_path / "b.mkv", num_frames=2)
    (tmp_path / "list.csv").write_text("a.mp4 0\nb.mkv 1\n")
    result = subprocess.run([sys.executable, "-m", "vidjax.data.check", f"--csv={tmp_path / 'list.csv'}",
                             f"--root={tmp_path}", "--num_frames=4", "--sampling_rate=2", "--size=32"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 entries: 1 ok, 1 too short" in result.stdout and "clips/s" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "vidjax.data.check"], capture_output=True, text=True)
    assert bad.returncode == 2 and "exactly one of --config" in bad.stderr


def test_command_line_checks_a_class_folder_tree(tmp_path):
    for name, frames in (("jump/a.mp4", 20), ("run/b.mp4", 20)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        make_video(tmp_path / name, num_frames=frames)
    (tmp_path / "run" / "c.mp4").write_text("not a video")
    result = subprocess.run([sys.executable, "-m", "vidjax.data.check", f"--folder={tmp_path}", "--num_frames=4",
                             "--sampling_rate=2", "--size=32"], capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 entries: 2 ok" in result.stdout and "c.mp4" in result.stdout
