"""Tests for `python -m vidjax.data.pack` and ArrayRecordVideoSource: round trip, bad files, resume, re-encoding."""

import io
import json
import math
import os
import pickle
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from test_decode import make_video as make_test_video

from vidjax.commands import data_pack
from vidjax.data.decode import probe, read_clip
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
    status = data_pack.main(pack_args(listing, root, out, "--shards", "3", "--workers", "2"))
    printed = capsys.readouterr().out
    assert status == 1
    assert "packing 7 videos (1 listed files are missing)" in printed and "3 to write with 2 processes" in printed
    assert "packed 5 of 8 videos into 3 shards" in printed and "SKIPPED 3 bad files" in printed
    bad = dict(line.split("\t") for line in (out / "bad_files.tsv").read_text().splitlines())
    assert sorted(os.path.basename(p) for p in bad) == ["corrupt.mp4", "gone.mp4", "voice.m4a"]
    assert bad[str(root / "gone.mp4")] == "file does not exist"
    assert bad[str(root / "voice.m4a")] == "no video stream"
    assert bad[str(root / "corrupt.mp4")] == "PyAV cannot read it (invalid data)"
    shards = sorted(p.name for p in out.glob("*.array_record"))
    assert shards == [f"data-0000{s}-of-00003.array_record" for s in range(3)]
    assert not list(out.glob("*.partial"))

    packed = assert_round_trip(out, root, listing)
    assert packed.class_names is None and "shards=3" in repr(packed)
    # A verbatim pack (the default) says nothing of re-encoding.
    assert "reencode" not in json.loads((out / "pack_manifest.json").read_text())
    assert "re-encoded" not in printed and not (out / "reencode.tsv").exists()
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
    status = data_pack.main(pack_args(listing, root, out, "--shards", "2", "--workers", "1"))
    assert status == 2
    assert "holds a pack of different input" in capsys.readouterr().err


def test_pack_folder_and_charades_all_good(tmp_path, capsys):
    tree = tmp_path / "tree"
    make_video(tree / "run" / "r1.mp4", shade=5)
    make_video(tree / "jump" / "j1.mp4", shade=50)
    out = tmp_path / "folder_pack"
    assert data_pack.main(["--folder", str(tree), "--out", str(out), "--shards", "2", "--workers", "1"]) == 0
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
    args = ["--charades", str(annotations), "--root", str(root), "--out", str(out), "--shards", "1"]
    assert data_pack.main(args) == 0
    packed = ArrayRecordVideoSource(out)
    reference = CharadesSource(annotations, root)
    for i in range(2):
        np.testing.assert_array_equal(packed[i]["labels"], reference[i]["labels"])
        np.testing.assert_array_equal(packed[i]["spans"], reference[i]["spans"])
        assert packed[i]["spans"].dtype == np.float32
    assert packed[1]["spans"].shape == (0, 3)


def test_pack_errors(tmp_path, capsys):
    assert data_pack.main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.csv' does not exist" in capsys.readouterr().err
    listing = tmp_path / "l.csv"
    listing.write_text("a.mp4 1\n")
    make_video(tmp_path / "a.mp4")
    assert data_pack.main(["--csv", str(listing), "--root", str(tmp_path), "--num-classes", "1", "--out",
                      str(tmp_path / "o")]) == 2
    assert "l.csv:1: label 1 is outside [0, 1)" in capsys.readouterr().err
    assert data_pack.main(["--folder", str(tmp_path), "--targets", "x", "--out", str(tmp_path / "o")]) == 2
    assert "--targets applies to --csv lists only" in capsys.readouterr().err


def test_help_explains_usage():
    result = subprocess.run([sys.executable, "-m", "vidjax.data.pack", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for text in ("--csv LIST", "--out DIR", "--workers W", "bad_files.tsv", "exit status", "Run the same command"):
        assert text in result.stdout


def test_check_video(tmp_path):
    assert data_pack.check_video(make_video(tmp_path / "v.mp4").read_bytes()) is None
    assert data_pack.check_video(make_audio_only(tmp_path / "a.m4a").read_bytes()) == "no video stream"
    assert data_pack.check_video(b"") == "the file is empty: 0 bytes"  # an interrupted copy
    assert data_pack.check_video(b"not a video at all" * 10).startswith("PyAV cannot read it")


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


def moving_pattern(num_frames, height, width):
    """Smooth, mildly coloured waves that move a lot from frame to frame (like camera footage, not noise), so a
    frame taken one index off differs far more from the right one than the re-encoding's loss does."""
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    frames = []
    for t in range(num_frames):
        wave = 70 * np.sin(2 * np.pi * (1.5 * xx + 0.7 * yy + 0.23 * t)) + 40 * np.cos(2 * np.pi * (yy - 0.11 * t))
        frames.append(np.stack([128 + wave, 118 + 0.8 * wave, 140 - 0.6 * wave], -1).clip(0, 255).astype(np.uint8))
    return np.stack(frames)


def make_source(path, width, height, num_frames=40, rate=25, rotation=None, pts_ms=None):
    """An H.264 video of `moving_pattern` (coded width x height), with a display rotation or millisecond
    timestamps (variable frame rate) when given."""
    return make_test_video(path, frames=moving_pattern(num_frames, height, width), num_frames=num_frames, rate=rate,
                      options={"crf": "18"}, rotation=rotation, pts_ms=pts_ms)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * math.log10(255**2 / mse)


def frame_times(data_or_path):
    """Each frame's time from the stream start (seconds, exact, display order), and the keyframe packets'
    positions among the frames in display order."""
    with av.open(data_or_path if isinstance(data_or_path, str) else io.BytesIO(data_or_path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        packets = [p for p in container.demux(stream) if p.size > 0]
    pts = sorted(p.pts for p in packets)
    return [(p - start) * Fraction(stream.time_base) for p in pts], [pts.index(p.pts) for p in packets if p.is_keyframe]


# Re-encoded frames must show the same moments as the source: at CRF 23 these smooth sources keep about 40 dB
# (real footage at short side 256 keeps 42-46 dB), while the neighbouring frame, one index off, is below 25 dB
# (checked below). 30 dB sits between the two.
MIN_PSNR_DB = 30.0


def test_reencoded_pack_same_frames_at_the_new_size(tmp_path, capsys):
    root = tmp_path / "videos"
    root.mkdir()
    make_source(root / "land.mp4", 96, 64)  # short side 32: 48 x 32
    make_source(root / "portrait.mp4", 96, 64, rotation=90)  # shown 64 x 96: re-encoded upright, 32 x 48
    vfr_ms = np.cumsum([0] + [40, 40, 80, 40, 120, 40, 40, 40] * 5)[:40].tolist()
    make_source(root / "vfr.mkv", 80, 64, pts_ms=vfr_ms)  # 40 x 32, timestamps 40-120 ms apart
    make_source(root / "odd.mp4", 88, 60)  # 88 * 32 / 60 = 46.9: 47 is odd in yuv420p, so 46 x 32
    listing = tmp_path / "list.csv"
    names = ["land.mp4", "portrait.mp4", "vfr.mkv", "odd.mp4"]
    listing.write_text("path,label\n" + "".join(f"{name},{i % 2}\n" for i, name in enumerate(names)))
    out = tmp_path / "pack"
    args = ["--csv", str(listing), "--root", str(root), "--out", str(out), "--reencode_short_side", "32",
            "--gop", "8", "--workers", "1"]
    assert data_pack.main(args) == 0
    printed = capsys.readouterr().out
    assert "re-encoding (short side 32, GOP 8, CRF 23, preset medium)" in printed
    assert "re-encoded 4 videos at short side 32, GOP 8, CRF 23: PSNR mean" in printed
    assert "MB -> " in printed and "one-time cost" in printed

    manifest = json.loads((out / "pack_manifest.json").read_text())
    assert {k: manifest["reencode"][k] for k in ("short_side", "gop", "crf", "preset")} == {
        "short_side": 32, "gop": 8, "crf": 23, "preset": "medium"}
    result = manifest["reencode_result"]
    rows = {line.split("\t")[0]: line.split("\t") for line in (out / "reencode.tsv").read_text().splitlines()[1:]}
    reported = {os.path.basename(path): float(row[1]) for path, row in rows.items()}
    assert result["videos"] == 4 and result["psnr_db_min"] == min(reported.values())
    assert result["psnr_db_mean"] == pytest.approx(np.mean(list(reported.values())), abs=1e-3)
    assert result["packed_bytes"] == sum(int(row[3]) for row in rows.values()) < result["source_bytes"]

    packed = ArrayRecordVideoSource(out)  # the records are still mp4 files: the reader needs nothing new
    assert len(packed) == 4
    sizes = {"land.mp4": (32, 48), "portrait.mp4": (48, 32), "vfr.mkv": (32, 40), "odd.mp4": (32, 46)}
    every_frame = {"select": lambda n: np.arange(n)}
    for i in range(4):
        element = packed[i]
        name = os.path.basename(element["source_path"])
        source, data = element["source_path"], element["data"]
        info, new_info = probe(source), probe(data)
        assert (new_info.fps, new_info.rotation) == (info.fps, 0), name
        assert (new_info.height, new_info.width) == sizes[name] == data_pack.reencoded_size(info.height, info.width, 32)
        # Frame k at k / fps: a constant rate, the source's, whatever the source's timestamps were.
        times, keyframes = frame_times(data)
        assert times == [Fraction(k, 25) for k in range(len(times))], name
        assert keyframes == list(range(0, len(times), 8)), name  # a keyframe every --gop frames exactly

        # Frame k is what read_clip shows for index k of the source (resized as a verbatim pack's
        # read_clip(short_side=32) resizes it; for the odd case, to the even size), and the PSNR the pack reports
        # is the test's own over every frame.
        new = read_clip(data, 0, 0, short_side=32, **every_frame).frames
        if name == "odd.mp4":
            assert read_clip(source, 0, 0, short_side=32, **every_frame).frames.shape[1:3] == (32, 47)
            with av.open(source) as container:
                reference = np.stack([f.to_ndarray(format="rgb24", width=46, height=32, interpolation="BILINEAR")
                                      for f in container.decode(video=0)])
        else:
            reference = read_clip(source, 0, 0, short_side=32, **every_frame).frames
        assert new.shape == reference.shape == (len(times), *sizes[name], 3), name
        if name == "vfr.mkv":  # 40 frames 40-120 ms apart shown at 25 fps: repeated where the source holds one
            assert new_info.num_frames == len(times) == round(float(vfr_ms[-1] + 40) * 25 / 1000) > 40
        else:
            assert new_info.num_frames == info.num_frames == 40, name
        assert abs(psnr(new, reference) - reported[name]) < 0.5, name
        assert reported[name] > MIN_PSNR_DB, name
        if name != "vfr.mkv":
            assert psnr(new[1:], reference[:-1]) < 25  # one frame off fails the threshold by far
        if name == "odd.mp4":
            continue
        # Clips sampled at the same indices show the same content as the source's at those indices.
        for window in range(3):
            clip = read_clip(data, 4, 3, num_windows=3, window_index=window, short_side=32)
            expected = read_clip(source, 4, 3, num_windows=3, window_index=window, short_side=32)
            np.testing.assert_array_equal(clip.indices, expected.indices)
            assert (clip.fps, clip.start_s, clip.end_s) == (expected.fps, expected.start_s, expected.end_s)
            assert clip.frames.shape == expected.frames.shape
            assert psnr(clip.frames, expected.frames) > MIN_PSNR_DB, (name, window)

    # Re-running finishes nothing new and reports the same; other settings in the same folder are refused.
    assert data_pack.main(args) == 0
    again = capsys.readouterr().out
    assert "1 already finished, 0 to write" in again
    assert printed.splitlines()[-1] == again.splitlines()[-1]
    assert data_pack.main([*args[:-4], "--gop", "16", "--workers", "1"]) == 2
    assert "other re-encoding settings (short side 32, GOP 8" in capsys.readouterr().err


def test_reencode_skips_a_video_that_breaks_part_way(tmp_path, capsys):
    """A file whose first frame decodes (it passes the verbatim check) but that is corrupt later is listed in
    bad_files.tsv with the frame where it broke, and the rest is packed."""
    root = tmp_path / "videos"
    make_video(root / "good.mp4", num_frames=16, size=32)
    broken = root / "broken.avi"
    with av.open(str(broken), "w") as container:  # Motion JPEG: every frame on its own, easy to break one
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuvj420p"
        for image in moving_pattern(20, 32, 48):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(broken.read_bytes())
    with av.open(str(broken)) as container:
        packets = [p for p in container.demux(video=0) if p.size > 0]
    for packet in packets[5:8]:
        data[packet.pos : packet.pos + packet.size] = b"\xff" * packet.size
    broken.write_bytes(bytes(data))
    assert data_pack.check_video(bytes(data)) is None
    listing = tmp_path / "list.csv"
    listing.write_text("good.mp4 0\nbroken.avi 1\n")
    out = tmp_path / "pack"
    assert data_pack.main(["--csv", str(listing), "--root", str(root), "--out", str(out), "--reencode_short_side", "16",
                      "--workers", "1"]) == 1
    assert "re-encoded 1 videos at short side 16, GOP 64, CRF 23" in capsys.readouterr().out
    (path, reason), = (line.split("\t") for line in (out / "bad_files.tsv").read_text().splitlines())
    assert path == str(broken) and reason.startswith("cannot re-encode: corrupt data after frame 4 (invalid data)")
    assert len(ArrayRecordVideoSource(out)) == 1 and not list(out.glob("*.partial"))


@pytest.mark.parametrize("flags, message", [
    (["--reencode_short_side", "-256"], "--reencode_short_side must be 0 (store the bytes verbatim) or an even"),
    (["--reencode_short_side", "255"], "--reencode_short_side must be 0 (store the bytes verbatim) or an even"),
    (["--reencode_short_side", "256", "--gop", "0"], "--gop must be >= 1 frame between keyframes"),
    (["--reencode_short_side", "256", "--crf", "52"], "--crf must be in [0, 51]"),
    (["--gop", "32"], "--gop applies to re-encoding only; add --reencode_short_side=N"),
])
def test_reencode_flag_errors(tmp_path, capsys, flags, message):
    make_video(tmp_path / "a.mp4")
    listing = tmp_path / "l.csv"
    listing.write_text("a.mp4 0\n")
    out = tmp_path / "o"
    assert data_pack.main(["--csv", str(listing), "--root", str(tmp_path), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not out.exists()  # nothing written


def test_write_mp4_fixed_gop_file_object_and_what_it_encoded():
    """write_mp4's pieces the re-encoding relies on: a fractional frame rate, a keyframe exactly every `gop`
    frames without scene-cut keyframes (a cut is forced into the middle of a GOP here), a file object target, and
    on_decoded seeing exactly what a reader of the file decodes."""
    from vidjax.data import encode

    frames = moving_pattern(20, 32, 48)
    frames[11:] = 255 - frames[11:]  # a scene cut at frame 11
    seen, target = [], io.BytesIO()
    assert encode.write_mp4(target, frames, Fraction(30000, 1001), gop=6, scenecut=False,
                            on_decoded=seen.append) is target
    data = target.getvalue()
    times, keyframes = frame_times(data)
    assert times == [Fraction(1001 * k, 30000) for k in range(20)] and keyframes == [0, 6, 12, 18]
    np.testing.assert_array_equal(np.stack(seen), read_clip(data, 0, 0, select=lambda n: np.arange(n)).frames)
