"""Tests for vidjax.data.sources: list, class-folder, Charades and TFDS sources (parsing, validation, elements)."""

import logging
import os
import pickle

import grain
import numpy as np
import pytest

from vidjax.data.sources import CharadesSource, CsvVideoSource, FolderVideoSource, TfdsVideoSource, labels_from_spans


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


# Header lists: multi-label, regression targets, segments, class names.


def test_multi_label_list(tmp_path, videos, caplog):
    listing = write(tmp_path / "multi.csv", "path,labels\na.mp4,1;3\nb.mp4,0 2\n\"sub/c b.mp4\",\n")
    with caplog.at_level(logging.INFO):
        source = CsvVideoSource(listing, root=videos, num_classes=4)
    assert "1 of 3 videos have an empty 'labels' cell" in caplog.text
    labels = np.stack([source[i]["labels"] for i in range(3)])
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert "label" not in source[0] and "targets" not in source[0]


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        ("path,labels\na.mp4,1;4\n", dict(num_classes=4), r"multi.csv:2: label 4 is outside \[0, 4\)"),
        ("path,labels\na.mp4,1\nb.mp4,x;1\n", dict(num_classes=4), "multi.csv:3: label 'x' is not an integer"),
        ("path,labels\na.mp4,1\n", {}, "multi.csv:1: a multi-label list .* needs num_classes"),
        ("path,label,labels\na.mp4,1,1\n", dict(num_classes=4), "multi.csv:1: the header has both"),
        ("path,duration\na.mp4,1\n", {}, "multi.csv:1: the header .* has no 'label' or 'labels' column"),
    ],
)
def test_multi_label_errors(tmp_path, videos, text, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CsvVideoSource(write(tmp_path / "multi.csv", text), root=videos, **kwargs)


def test_regression_targets_and_segments(tmp_path, videos):
    listing = write(tmp_path / "affect.csv",
                    "Path,Valence,arousal,start,end,note\na.mp4,0.5,-1.25,1.0,3.5,x\nb.mp4,2,3e-1,,,y\n")
    source = CsvVideoSource(listing, root=videos, targets=("valence", "arousal"))
    first, second = source[0], source[1]
    assert first["targets"].dtype == np.float32 and first["targets"].shape == (2,)
    np.testing.assert_array_equal(first["targets"], np.float32([0.5, -1.25]))
    np.testing.assert_array_equal(second["targets"], np.float32([2, 0.3]))
    assert (first["start"], first["end"]) == (1.0, 3.5)
    assert np.isnan(second["start"]) and np.isnan(second["end"])
    assert "label" not in first and "labels" not in first
    assert "targets=('valence', 'arousal')" in repr(source)
    # A label column next to the targets is kept too.
    both = CsvVideoSource(write(tmp_path / "both.csv", "path,label,valence\na.mp4,2,0.25\n"), root=videos,
                          targets=["valence"])
    assert both[0]["label"] == 2 and both[0]["targets"].tolist() == [0.25]


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,valence,arousal\na.mp4,0.5,1\nb.mp4,0.5,\n", "affect.csv:3: target 'arousal' is missing"),
        ("path,valence,arousal\na.mp4,high,1\n", "affect.csv:2: target 'valence' = 'high' is not a number"),
        ("path,valence,arousal\na.mp4,nan,1\n", "affect.csv:2: target 'valence' = 'nan' is not a finite"),
        ("path,valence\na.mp4,0.5\n", r"affect.csv:1: target columns \['arousal'\] are not in the header"),
        ("a.mp4 1\n", "need a comma-separated list with a header"),
        ("path,valence,arousal,start,end\na.mp4,1,1,4,2\n", "affect.csv:2: end 2.0 s is not after start 4.0 s"),
        ("path,valence,arousal,start\na.mp4,1,1,-1\n", "affect.csv:2: start = -1 seconds is negative"),
        ("path,valence,arousal,end\na.mp4,1,1,soon\n", "affect.csv:2: end = 'soon' is not a number"),
    ],
)
def test_regression_errors_name_file_and_line(tmp_path, videos, text, message):
    with pytest.raises(ValueError, match=message):
        CsvVideoSource(write(tmp_path / "affect.csv", text), root=videos, targets=("valence", "arousal"))


def test_class_names_file(tmp_path, videos):
    names = write(tmp_path / "names.txt", "cooking\ndancing\n  juggling \n\n")
    listing = write(tmp_path / "l.csv", "a.mp4 2\n")
    source = CsvVideoSource(listing, root=videos, class_names_file=names)
    assert source.class_names == ["cooking", "dancing", "juggling"]
    # The class count comes from the file, so labels are range-checked against it.
    with pytest.raises(ValueError, match=r"l.csv:1: label 3 is outside \[0, 3\)"):
        CsvVideoSource(write(tmp_path / "l.csv", "a.mp4 3\n"), root=videos, class_names_file=names)
    with pytest.raises(ValueError, match="num_classes=5 but .*names.txt names 3 classes"):
        CsvVideoSource(listing, root=videos, num_classes=5, class_names_file=names)
    with pytest.raises(ValueError, match="dup.txt:3: class name 'a' repeats line 1"):
        CsvVideoSource(listing, root=videos, class_names_file=write(tmp_path / "dup.txt", "a\nb\na\n"))
    with pytest.raises(ValueError, match="gap.txt:2: empty class name"):
        CsvVideoSource(listing, root=videos, class_names_file=write(tmp_path / "gap.txt", "a\n\nb\n"))
    assert CsvVideoSource(listing, root=videos).class_names is None


def test_relative_root_gives_absolute_paths(tmp_path, videos, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = CsvVideoSource(write(tmp_path / "l.csv", "a.mp4 0\n"), root="videos")
    assert source[0]["path"] == os.path.join(videos, "a.mp4")


# Class folders.


def touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0")


def test_folder_classes_and_order(tmp_path, caplog):
    root = tmp_path / "train"
    touch(root, "Dish/z.mp4", "Dish/nested/deeper/a.webm", "Dish/notes.txt", "Dish/.hidden.mp4",
          "Apple/b.MKV", "Apple/a.avi", "Apple/.cache/x.mp4", "loose.mp4", ".git/obj.mp4")
    (root / "Empty").mkdir()
    with caplog.at_level(logging.WARNING):
        source = FolderVideoSource(root)
    assert source.class_names == ["Apple", "Dish", "Empty"]
    assert "ignoring 1 videos directly in" in caplog.text and "loose.mp4" in caplog.text
    assert "1 of 3 classes" in caplog.text and "['Empty']" in caplog.text
    got = [(os.path.relpath(source[i]["path"], root), int(source[i]["label"])) for i in range(len(source))]
    assert got == [("Apple/a.avi", 0), ("Apple/b.MKV", 0), ("Dish/nested/deeper/a.webm", 1), ("Dish/z.mp4", 1)]
    assert source[0]["label"].dtype == np.int32 and source[3]["index"] == 3
    assert os.path.isabs(source[0]["path"])
    assert "len=4" in repr(source) and str(root) in repr(source)
    assert pickle.loads(pickle.dumps(source))[2] == source[2]
    only_mp4 = FolderVideoSource(root, extensions=("mp4",))
    assert [os.path.basename(only_mp4[i]["path"]) for i in range(len(only_mp4))] == ["z.mp4"]


def test_folder_given_class_names(tmp_path):
    root = tmp_path / "val"
    touch(root, "b/1.mp4", "a/2.mp4")
    source = FolderVideoSource(root, class_names=["c", "b", "a"])
    assert source.class_names == ["c", "b", "a"]
    assert [int(source[i]["label"]) for i in range(2)] == [1, 2]
    with pytest.raises(ValueError, match=r"folders \['b'\] in .* are not among the 2 given class names"):
        FolderVideoSource(root, class_names=["a", "z"])


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a directory"):
        FolderVideoSource(tmp_path / "nope")
    touch(tmp_path / "flat", "x.mp4")
    with pytest.raises(ValueError, match="has no class sub-folders"):
        FolderVideoSource(tmp_path / "flat")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no usable entries"):
        FolderVideoSource(tmp_path / "hollow")


def test_folder_broken_link_is_a_missing_file(tmp_path, caplog):
    root = tmp_path / "links"
    touch(root, "a/ok.mp4")
    os.symlink(tmp_path / "gone.mp4", root / "a" / "dangling.mp4")
    with pytest.raises(FileNotFoundError, match=r"1 of 2 videos found under .* do not exist.*dangling.mp4"):
        FolderVideoSource(root)
    with caplog.at_level(logging.WARNING):
        source = FolderVideoSource(root, skip_missing=True)
    assert len(source) == 1 and "dropping 1 of 2" in caplog.text
    assert source.missing_paths == [str(root / "a" / "dangling.mp4")]


# Charades.

CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


def charades_csv(path, rows):
    path.write_text(CHARADES_HEADER + "".join(
        f'{vid},HR43,Kitchen,6,7,Yes,"A person cooks, then\nsits.",food;chair,"desc, two",{acts},{length}\n'
        for vid, acts, length in rows))
    return path


def test_charades_labels_and_spans(tmp_path, caplog):
    root = tmp_path / "Charades_v1_480"
    touch(root, "46GP8.mp4", "N11GT.mp4", "0IH69.mp4")
    listing = charades_csv(tmp_path / "Charades_v1_train.csv", [
        ("46GP8", "c092 11.90 21.20;c147 0.00 12.60", "24.83"),
        ("N11GT", "", "30.00"),
        ("0IH69", "c000 1 2;c156 3.5 3.5;c000 5 6", "8.00"),
    ])
    with caplog.at_level(logging.INFO):
        source = CharadesSource(listing, root)
    assert "1 of 3 videos have no actions" in caplog.text
    assert len(source) == 3 and source.class_names is None
    first = source[0]
    assert first["path"] == str(root / "46GP8.mp4")
    assert first["labels"].dtype == np.float32 and first["labels"].shape == (157,)
    assert np.flatnonzero(first["labels"]).tolist() == [92, 147]
    assert first["spans"].dtype == np.float32
    np.testing.assert_array_equal(first["spans"], np.float32([[92, 11.9, 21.2], [147, 0.0, 12.6]]))
    assert source[1]["spans"].shape == (0, 3) and not source[1]["labels"].any()
    assert np.flatnonzero(source[2]["labels"]).tolist() == [0, 156]
    assert pickle.loads(pickle.dumps(source))[0]["spans"].tolist() == first["spans"].tolist()
    assert "Charades_v1_train.csv" in repr(source) and "len=3" in repr(source)


def test_labels_from_spans():
    spans = np.float32([[92, 11.9, 21.2], [147, 0.0, 12.6], [3, 30, 31]])

    def active(start, end):
        return np.flatnonzero(labels_from_spans(spans, start, end, 157)).tolist()

    assert active(0, 5) == [147]
    assert active(12.0, 14.0) == [92, 147]
    assert active(13.0, 25.0) == [92]
    assert active(21.2, 29.0) == [92]  # closed intervals: the action's last instant is in the window
    assert active(22.0, 29.9) == []
    assert active(12.6, 12.6) == [92, 147]  # a single instant
    assert active(float("nan"), float("nan")) == [3, 92, 147]
    assert active(25.0, float("nan")) == [3]
    labels = labels_from_spans(np.zeros((0, 3), np.float32), 0, 10, 5)
    assert labels.dtype == np.float32 and labels.tolist() == [0] * 5
    with pytest.raises(ValueError, match="before its start"):
        labels_from_spans(spans, 5, 1, 157)


def test_charades_classes_file_and_missing_videos(tmp_path, caplog):
    root = tmp_path / "videos"
    touch(root, "AAAAA.mp4")
    listing = charades_csv(tmp_path / "test.csv", [("AAAAA", "c001 0 1", "5"), ("BBBBB", "c002 0 1", "5"),
                                                   ("CCCCC", "", "5")])
    classes = write(tmp_path / "classes.txt", "c000 Holding some clothes\nc001 Putting clothes somewhere\n"
                    "c002 Taking some clothes from somewhere\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 3 videos listed in .*test.csv do not exist.*BBBBB.mp4"):
        CharadesSource(listing, root, num_classes=3)
    with caplog.at_level(logging.WARNING):
        source = CharadesSource(listing, root, num_classes=3, classes_file=classes, skip_missing=True)
    assert len(source) == 1 and "dropping 2 of 3" in caplog.text
    assert source.class_names == ["Holding some clothes", "Putting clothes somewhere",
                                  "Taking some clothes from somewhere"]
    assert source[0]["labels"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="expected c000..c156 for num_classes=157"):
        CharadesSource(listing, root, classes_file=classes, skip_missing=True)


@pytest.mark.parametrize(
    "actions, message",
    [
        ("c092 11.90", "action 'c092 11.90' is not 'cNNN start end'"),
        ("x092 1 2", "action 'x092 1 2' is not 'cNNN start end'"),
        ("c157 1 2", r"action class c157 is outside \[0, 157\)"),
        ("c001 1 b", "time in action 'c001 1 b' = 'b' is not a number"),
        ("c001 5 2", "action 'c001 5 2' ends before it starts"),
    ],
)
def test_charades_errors_name_file_and_line(tmp_path, actions, message):
    touch(tmp_path, "A.mp4", "B.mp4")
    # The first row's quoted cells span two lines, so the bad row starts on line 4.
    listing = charades_csv(tmp_path / "ch.csv", [("A", "c000 0 1", "3"), ("B", actions, "3")])
    with pytest.raises(ValueError, match=f"ch.csv:4: {message}"):
        CharadesSource(listing, tmp_path)


def test_charades_wrong_header(tmp_path):
    listing = write(tmp_path / "ch.csv", "path,label\na.mp4,1\n")
    with pytest.raises(ValueError, match="ch.csv:1: expected the Charades header with 'id' and 'actions'"):
        CharadesSource(listing, tmp_path)


# TFDS (prepared array_record datasets, read without TensorFlow).


def test_tfds_frames(tfds_dir):
    source = TfdsVideoSource("tiny_clips", "train", data_dir=tfds_dir, video_key="frames")
    assert len(source) == 5 and source.class_names == ["jump", "run", "walk"]
    by_fill = {int(source[i]["video"][0, 0, 0, 0]): source[i] for i in range(5)}
    for i, element in by_fill.items():
        assert element["video"].dtype == np.uint8 and element["video"].shape == (2 + i, 6, 8, 3)
        assert element["label"] == i % 3 and element["label"].dtype == np.int32
    assert source[4]["index"] == 4 and source[4]["index"].dtype == np.int64
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[3]["video"], source[3]["video"])
    assert repr(copy) == repr(source) and "'tiny_clips'" in repr(source) and "len=5" in repr(source)


def test_tfds_encoded_bytes(tfds_dir):
    source = TfdsVideoSource("tiny_clips", "test", data_dir=tfds_dir, video_key="encoded")
    assert len(source) == 2
    assert sorted(source[i]["data"] for i in range(2)) == [b"video-0", b"video-1"]
    assert "video" not in source[0]


def test_tfds_wrong_keys(tfds_dir):
    with pytest.raises(ValueError, match=r"no feature 'video' \(video_key\); its features are"):
        TfdsVideoSource("tiny_clips", "train", data_dir=tfds_dir)
    with pytest.raises(ValueError, match="tiny_clips/score is float32 of shape"):
        TfdsVideoSource("tiny_clips", "train", data_dir=tfds_dir, video_key="score")


def test_header_after_byte_order_mark(tmp_path, videos):
    # Spreadsheet programs often save CSVs with a UTF-8 byte order mark before the header.
    listing = tmp_path / "bom.csv"
    listing.write_bytes("path,label\na.mp4,4\n".encode("utf-8-sig"))
    assert CsvVideoSource(listing, root=videos)[0]["label"] == 4
