"""Tests for `python -m vidjax.data.pack` and ArrayRecordVideoSource: round trip, bad files, resume."""

import os
import pickle
import subprocess
import sys

import av
import numpy as np
import pytest

from vidjax.data import pack
from vidjax.data.sources import (
    ArrayRecordVideoSource,
    CharadesSource,
    CsvVideoSource,
    decode_record,
    encode_record,
)

GOOD = ["a.mp4", "b.mp4", "sub/c.mkv", "d.mp4", "e.mp4"]


def make_video(path, num_frames=8, size=32, shade=0, codec="mpeg4"):
    """A tiny video whose frames have grey level shade + 10 * frame index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(num_frames):
            image = np.full((size, size, 3), shade + 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Five good videos, a corrupt one, an audio-only one and a missing one, in a header list with targets."""
    root = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(GOOD):
        make_video(root / name, shade=20 * i)
    (root / "corrupt.mp4").write_bytes(make_video(root / "tmp.mp4").read_bytes()[:200])
    os.remove(root / "tmp.mp4")
    make_audio_only(root / "voice.m4a")
    rows = ["a.mp4,0,0.5,,", "b.mp4,1,-1.5,0.5,1.0", "corrupt.mp4,2,0,,", "sub/c.mkv,2,2.25,,", "gone.mp4,1,0,,",
            "d.mp4,0,0.125,,", "voice.m4a,1,1,,", "e.mp4,1,-3,0.1,0.2"]
    listing = root.parent / "list.csv"
    listing.write_text("path,label,valence,start,end\n" + "\n".join(rows) + "\n")
    return root, listing


def pack_args(listing, root, out, *extra):
    return ["--csv", str(listing), "--root", str(root), "--out", str(out), "--num-classes", "3",
            "--targets", "valence", *extra]


def assert_round_trip(out, root, listing):
    packed = ArrayRecordVideoSource(out)
    expected = CsvVideoSource(listing, root=root, num_classes=3, targets=["valence"], skip_missing=True)
    good = {expected[i]["path"]: expected[i] for i in range(len(expected))}
    assert len(packed) == len(GOOD)
    seen = []
    for i in range(len(packed)):
        element = packed[i]
        assert element["index"] == i and element["index"].dtype == np.int64
        original = good[element["source_path"]]
        with open(original["path"], "rb") as f:
            assert element["data"] == f.read()
        assert element["label"] == original["label"] and element["label"].dtype == np.int32
        assert element["targets"].dtype == np.float32
        np.testing.assert_array_equal(element["targets"], original["targets"])
        for key in ("start", "end"):
            np.testing.assert_array_equal(element[key], original[key])
            assert element[key].dtype == np.float64
        seen.append(os.path.relpath(element["source_path"], root))
    # Shards keep the list order.
    assert seen == GOOD[:2] + ["sub/c.mkv"] + GOOD[3:]
    return packed


def test_pack_round_trip_bad_files_and_resume(dataset, tmp_path, capsys):
    root, listing = dataset
    out = tmp_path / "packed"
    status = pack.main(pack_args(listing, root, out, "--shards", "3", "--workers", "2"))
    printed = capsys.readouterr().out
    assert status == 1
    assert "packing 7 videos (1 listed files are missing)" in printed and "3 to write with 2 processes" in printed
    assert "packed 5 of 8 videos into 3 shards" in printed and "SKIPPED 3 bad files" in printed
    bad = dict(line.split("\t") for line in (out / "bad_files.tsv").read_text().splitlines())
    assert sorted(os.path.basename(p) for p in bad) == ["corrupt.mp4", "gone.mp4", "voice.m4a"]
    assert bad[str(root / "gone.mp4")] == "file does not exist"
    assert bad[str(root / "voice.m4a")] == "no video stream"
    assert bad[str(root / "corrupt.mp4")].startswith("PyAV cannot read it (Invalid data found")
    shards = sorted(p.name for p in out.glob("*.array_record"))
    assert shards == [f"data-0000{s}-of-00003.array_record" for s in range(3)]
    assert not list(out.glob("*.partial"))

    packed = assert_round_trip(out, root, listing)
    assert packed.class_names is None and "shards=3" in repr(packed)
    copy = pickle.loads(pickle.dumps(packed))
    assert copy[4]["data"] == packed[4]["data"]
    # A glob pattern reads the same shards.
    assert len(ArrayRecordVideoSource(str(out / "data-*.array_record"))) == len(GOOD)

    # Interrupt: shard 1 lost with its journal line, a half-written file left behind.
    before = {name: os.stat(out / name) for name in shards}
    os.remove(out / shards[1])
    journal = out / "pack_journal.jsonl"
    lines = [line for line in journal.read_text().splitlines() if shards[1] not in line]
    journal.write_text("\n".join(lines) + "\n" + '{"shard": "data-0000')  # cut short by the interruption
    (out / (shards[1] + ".partial")).write_bytes(b"half")
    with pytest.raises(ValueError, match=r"unfinished pack: 1 of 3 shards are missing.*re-run"):
        ArrayRecordVideoSource(out)

    result = subprocess.run([sys.executable, "-m", "vidjax.data.pack", *pack_args(listing, root, out, "--shards",
                             "3", "--workers", "1")], capture_output=True, text=True, cwd=os.getcwd())
    assert result.returncode == 1, result.stderr
    assert "2 already finished, 1 to write" in result.stdout
    assert "packed 5 of 8 videos" in result.stdout and "SKIPPED 3 bad files" in result.stdout
    for name in (shards[0], shards[2]):
        after = os.stat(out / name)
        assert (after.st_ino, after.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)
    assert not list(out.glob("*.partial"))
    assert len((out / "bad_files.tsv").read_text().splitlines()) == 3
    assert_round_trip(out, root, listing)

    # Different input in the same folder is refused rather than mixed in.
    status = pack.main(pack_args(listing, root, out, "--shards", "2", "--workers", "1"))
    assert status == 2
    assert "holds a pack of different input" in capsys.readouterr().err


def test_pack_folder_and_charades_all_good(tmp_path, capsys):
    tree = tmp_path / "tree"
    make_video(tree / "run" / "r1.mp4", shade=5)
    make_video(tree / "jump" / "j1.mp4", shade=50)
    out = tmp_path / "folder_pack"
    assert pack.main(["--folder", str(tree), "--out", str(out), "--shards", "2", "--workers", "1"]) == 0
    assert "packed 2 of 2 videos into 2 shards" in capsys.readouterr().out
    assert not (out / "bad_files.tsv").exists()
    packed = ArrayRecordVideoSource(out)
    assert packed.class_names == ["jump", "run"]
    assert [(os.path.basename(packed[i]["source_path"]), int(packed[i]["label"])) for i in range(2)] == [
        ("j1.mp4", 0), ("r1.mp4", 1)]

    root = tmp_path / "charades"
    make_video(root / "AB12C.mp4")
    make_video(root / "ZZ9YX.mp4")
    annotations = tmp_path / "Charades_v1_test.csv"
    annotations.write_text("id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
                           'AB12C,S1,Bedroom,6,6,Yes,"sits, reads",book,desc,c002 0.00 1.50;c156 0.2 0.3,2.0\n'
                           "ZZ9YX,S2,Hall,5,5,Yes,walks,,desc,,2.0\n")
    out = tmp_path / "charades_pack"
    assert pack.main(["--charades", str(annotations), "--root", str(root), "--out", str(out), "--shards", "1"]) == 0
    packed = ArrayRecordVideoSource(out)
    reference = CharadesSource(annotations, root)
    for i in range(2):
        np.testing.assert_array_equal(packed[i]["labels"], reference[i]["labels"])
        np.testing.assert_array_equal(packed[i]["spans"], reference[i]["spans"])
        assert packed[i]["spans"].dtype == np.float32
    assert packed[1]["spans"].shape == (0, 3)


def test_pack_errors(tmp_path, capsys):
    assert pack.main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.csv' does not exist" in capsys.readouterr().err
    listing = tmp_path / "l.csv"
    listing.write_text("a.mp4 1\n")
    make_video(tmp_path / "a.mp4")
    assert pack.main(["--csv", str(listing), "--root", str(tmp_path), "--num-classes", "1", "--out",
                      str(tmp_path / "o")]) == 2
    assert "l.csv:1: label 1 is outside [0, 1)" in capsys.readouterr().err
    assert pack.main(["--folder", str(tmp_path), "--targets", "x", "--out", str(tmp_path / "o")]) == 2
    assert "--targets applies to --csv lists only" in capsys.readouterr().err


def test_help_explains_usage():
    result = subprocess.run([sys.executable, "-m", "vidjax.data.pack", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for text in ("--csv LIST", "--out DIR", "--workers W", "bad_files.tsv", "exit status", "Run the same command"):
        assert text in result.stdout


def test_check_video(tmp_path):
    assert pack.check_video(make_video(tmp_path / "v.mp4").read_bytes()) is None
    assert pack.check_video(make_audio_only(tmp_path / "a.m4a").read_bytes()) == "no video stream"
    assert pack.check_video(b"").startswith("PyAV cannot read it")
    assert pack.check_video(b"not a video at all" * 10).startswith("PyAV cannot read it")


def test_record_round_trip():
    fields = {"label": np.int32(3), "labels": np.float32([0, 1, 1]), "start": np.float64(np.nan),
              "spans": np.zeros((0, 3), np.float32), "targets": np.float32([0.1, -2.7])}
    data, path, got = decode_record(encode_record(b"\x00video\xff", "/v/a.mp4", fields))
    assert (data, path) == (b"\x00video\xff", "/v/a.mp4")
    for key, value in fields.items():
        assert got[key].dtype == value.dtype and got[key].shape == np.shape(value)
        np.testing.assert_array_equal(got[key], value)
    with pytest.raises(ValueError, match="not a vidjax video record"):
        decode_record(b"PK\x03\x04rest")
