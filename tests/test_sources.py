"""Tests for vidjax.data.sources.CsvVideoSource list parsing and validation."""

import logging
import os
import pickle

import grain
import numpy as np
import pytest

from vidjax.data.sources import CsvVideoSource


@pytest.fixture
def videos(tmp_path):
    """A root with videos a.mp4, b.mp4, sub/c b.mp4 (content is irrelevant to the source)."""
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "sub/c b.mp4"):
        (root / name).write_bytes(b"\0")
    return root


def write(path, text):
    path.write_text(text)
    return path


def test_space_format(tmp_path, videos):
    listing = write(tmp_path / "train.csv", "a.mp4 3\n\nsub/c b.mp4 0\n" + f"{videos}/b.mp4 7\n")
    source = CsvVideoSource(listing, root=videos, num_classes=10)
    assert len(source) == 3
    assert isinstance(source, grain.sources.RandomAccessDataSource)
    item = source[1]
    assert item["path"] == os.path.join(videos, "sub/c b.mp4")
    assert item["label"] == 0 and item["label"].dtype == np.int32
    assert item["index"] == 1 and item["index"].dtype == np.int64
    # Absolute paths are kept as they are.
    assert source[np.int64(2)]["path"] == f"{videos}/b.mp4"
    assert [source[i]["label"] for i in range(3)] == [3, 0, 7]
    assert pickle.loads(pickle.dumps(source))[0] == source[0]
    assert "train.csv" in repr(source) and "len=3" in repr(source)


def test_header_csv_format(tmp_path, videos):
    listing = write(tmp_path / "val.csv", "\nlabel,path,duration\n2,a.mp4,10.0\n5,b.mp4,3.5\n")
    source = CsvVideoSource(listing, root=str(videos))
    assert len(source) == 2
    assert source[1]["path"] == os.path.join(videos, "b.mp4")
    assert [int(source[i]["label"]) for i in range(2)] == [2, 5]


@pytest.mark.parametrize(
    "text, line_no, message",
    [
        ("a.mp4 1\nb.mp4\n", 2, "expected 'path label'"),
        ("a.mp4 1\n\nb.mp4 cat\n", 3, "not an integer"),
        ("a.mp4,1\n", 1, "header row"),
        ("path,label\na.mp4,1\nb.mp4\n", 3, "expected 2 columns"),
        ("path,label\na.mp4,x\n", 2, "not an integer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, videos, text, line_no, message):
    listing = write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=f"bad.csv:{line_no}: .*{message}"):
        CsvVideoSource(listing, root=videos)


def test_label_out_of_range_names_line(tmp_path, videos):
    listing = write(tmp_path / "labels.csv", "a.mp4 1\nb.mp4 10\n")
    with pytest.raises(ValueError, match=r"labels.csv:2: label 10 is outside \[0, 10\)"):
        CsvVideoSource(listing, root=videos, num_classes=10)
    listing = write(tmp_path / "labels.csv", "a.mp4 -1\n")
    with pytest.raises(ValueError, match="labels.csv:1: label -1"):
        CsvVideoSource(listing, root=videos, num_classes=10)


def test_missing_list_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        CsvVideoSource(tmp_path / "nope.csv")


def test_missing_videos(tmp_path, videos, caplog):
    names = [f"gone{i}.mp4" for i in range(7)]
    listing = write(tmp_path / "list.csv", "a.mp4 0\n" + "".join(f"{n} 1\n" for n in names) + "b.mp4 2\n")
    with pytest.raises(FileNotFoundError) as info:
        CsvVideoSource(listing, root=videos)
    message = str(info.value)
    assert "7 of 9 videos" in message and "skip_missing=True" in message
    assert all(n in message for n in names[:5]) and names[5] not in message

    with caplog.at_level(logging.WARNING):
        source = CsvVideoSource(listing, root=videos, skip_missing=True)
    assert "dropping 7 of 9" in caplog.text
    assert len(source) == 2
    assert [int(source[i]["label"]) for i in range(2)] == [0, 2]
    assert source[1]["path"] == os.path.join(videos, "b.mp4")


def test_list_with_no_usable_entries(tmp_path, videos):
    with pytest.raises(ValueError, match="no usable entries"):
        CsvVideoSource(write(tmp_path / "empty.csv", "\n"), root=videos)
    with pytest.raises(ValueError, match="no usable entries"):
        CsvVideoSource(write(tmp_path / "gone.csv", "x.mp4 1\n"), root=videos, skip_missing=True)
