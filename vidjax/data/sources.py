"""Grain random-access data sources over labelled videos: lists, class folders, Charades, TFDS and ArrayRecord shards.

Every source follows one element contract: `__getitem__(i)` returns a dict with "index" (np.int64), the video as
"path" (absolute file path), "data" (bytes of an encoded video file) or "video" (uint8 (T, H, W, 3) frames), and
its targets: "label" (np.int32) for single-label data, "labels" (float32 multi-hot (num_classes,)) for multi-label
data, "targets" (float32 (k,)) for regression; optionally "start"/"end" (float seconds, NaN = whole video), for
Charades "spans" (float32 (n, 3): class, start s, end s; `labels_from_spans` turns them into window labels), and, when
a caption column is asked for, "captions" (a tuple of one or more non-empty reference captions, str).
Sources expose `class_names` (list of names or None) and a `__repr__` naming their inputs, which grain checkpoints
compare on restore. File-based sources check at start-up that every video exists: missing ones stop the run with
their count and first paths, or are dropped with a warning when `skip_missing=True` (listed in `missing_paths`).
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
import re
import struct
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

_MAX_MISSING_SHOWN = 5
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
CHARADES_CLASSES = 157
# Charades columns that hold captions: the script a video was acted from (one reference), and the descriptions
# annotators wrote after watching it (several, separated by ';').
CHARADES_CAPTION_COLUMNS = ("script", "descriptions")
# Fields that stay per-video Python objects rather than being stacked into one array: ragged or text.
_RAGGED_FIELDS = ("spans", "captions")


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a labels file, one per line, in class-index order (blank lines at the end are ignored)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class names file {path!r} does not exist")
    with open(path) as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for line_no, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"{path}:{line_no}: empty class name; the file needs one name per line")
    seen: dict[str, int] = {}
    for line_no, name in enumerate(names, start=1):
        if name in seen:
            raise ValueError(f"{path}:{line_no}: class name {name!r} repeats line {seen[name]}")
        seen[name] = line_no
    if not names:
        raise ValueError(f"class names file {path} is empty")
    return names


def labels_from_spans(spans: np.ndarray, start_s: float, end_s: float, num_classes: int) -> np.ndarray:
    """Float32 multi-hot (num_classes,) of the actions in `spans` overlapping the window [start_s, end_s].

    `spans` is (n, 3) float: class id, action start, action end (seconds). The interval test is closed, so an
    action covering any instant of the window (including a single sampled frame at its edge) counts, as when
    labels are gathered per sampled frame. NaN `start_s`/`end_s` mean an open end (NaN, NaN = whole video).
    """
    spans = np.asarray(spans, dtype=np.float32).reshape(-1, 3)
    start = -np.inf if math.isnan(start_s) else start_s
    end = np.inf if math.isnan(end_s) else end_s
    if end < start:
        raise ValueError(f"window end {end_s} is before its start {start_s}")
    hit = (spans[:, 1] <= end) & (spans[:, 2] >= start)
    labels = np.zeros(num_classes, dtype=np.float32)
    labels[spans[hit, 0].astype(np.int64)] = 1.0
    return labels


class _FileVideoSource:
    """Shared body of the file-based sources: absolute paths, per-video fields, missing-file policy."""

    def __init__(self, paths: list[str], fields: dict[str, list], where: str, root: str, skip_missing: bool,
                 class_names: list[str] | None):
        paths = [os.path.abspath(p) for p in paths]
        missing = [i for i, path in enumerate(paths) if not os.path.isfile(path)]
        self.missing_paths = [paths[i] for i in missing]
        if missing:
            shown = self.missing_paths[:_MAX_MISSING_SHOWN]
            if not skip_missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(paths)} videos {where} do not exist (root {root!r}), first ones: "
                    f"{shown}; fix the root or paths, or pass skip_missing=True to drop them")
            logger.warning("dropping %d of %d videos %s that do not exist (root %r), first ones: %s",
                           len(missing), len(paths), where, root, shown)
            missing_set = set(missing)
            keep = [i for i in range(len(paths)) if i not in missing_set]
            paths = [paths[i] for i in keep]
            fields = {key: [values[i] for i in keep] for key, values in fields.items()}
        if not paths:
            raise ValueError(f"videos {where} (root {root!r}): no usable entries")
        self._paths = paths
        # Stacked once here so that __getitem__ is a cheap slice; spans (a list of (n, 3) arrays) and captions (a list
        # of tuples of str) stay ragged.
        self._fields = {key: values if key in _RAGGED_FIELDS else np.asarray(values) for key, values in fields.items()}
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, object]:
        index = int(index)
        element: dict[str, object] = {"path": self._paths[index], "index": np.int64(index)}
        for key, values in self._fields.items():
            element[key] = values[index]
        return element


def _parse_captions(cell: str, where: str, column: str, several: bool = True) -> tuple[str, ...]:
    """The reference captions in a list cell: ';'-separated references (one reference when not `several`), each
    stripped and with runs of whitespace (line breaks in a quoted cell) made one space; empty ones are dropped.
    A cell without any caption is an error naming `where` (file:line) and the column."""
    parts = cell.split(";") if several else [cell]
    captions = tuple(" ".join(part.split()) for part in parts)
    captions = tuple(caption for caption in captions if caption)
    if not captions:
        raise ValueError(f"{where}: empty caption in column {column!r}; every video needs at least one caption "
                         f"({'references separated by ' + repr(';') if several else 'one text'}): fill the cell or "
                         "remove the row")
    return captions


def _resolve_class_names(class_names_file: str | os.PathLike | None, num_classes: int | None
                         ) -> tuple[list[str] | None, int | None]:
    if class_names_file is None or os.fspath(class_names_file) == "":
        return None, num_classes
    names = read_class_names(class_names_file)
    if num_classes is not None and num_classes != len(names):
        raise ValueError(f"num_classes={num_classes} but {os.fspath(class_names_file)} names {len(names)} "
                         "classes; make them agree")
    return names, len(names)


class CsvVideoSource(_FileVideoSource):
    """Random-access source over a list of videos with class labels, multi-label sets or regression targets.

    Two list formats:
      * VideoMAE: one `path label` per line, space-separated, no header (the path may contain spaces).
      * Comma-separated with a header row naming a `path` column and the targets: `label` (class id), or
        `labels` (multi-label: class ids separated by ';' or spaces, an empty cell means none), and/or the
        regression columns named in `targets`, e.g. `targets=("valence", "arousal")`. Optional `start`/`end`
        columns give a segment in seconds (empty = from the start / to the end). Other columns are ignored.
        With `caption_column` (e.g. "caption"), that column holds each video's reference captions separated by
        ';' (each stripped, empty ones dropped; a cell with none is an error), and label columns are optional.
    Relative paths are joined to `root`. Elements: "path", "index", and "label" (np.int32), "labels" (float32
    multi-hot, needs `num_classes` or `class_names_file`), "targets" (float32 (k,)), "start"/"end" (float64,
    NaN = open), "captions" (tuple of str, with `caption_column`) as the list provides. `class_names_file` holds
    one class name per line. Every malformed cell is reported as file:line.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike = "",
        num_classes: int | None = None,
        skip_missing: bool = False,
        targets: Sequence[str] = (),
        class_names_file: str | os.PathLike | None = None,
        caption_column: str | None = None,
    ):
        self._csv_path = os.path.expanduser(csv_path)  # `~/list.csv` as typed: no shell expands it after `=`
        self._root = os.path.expanduser(root)
        if isinstance(targets, str):
            raise TypeError(f"targets must be a sequence of column names, got the string {targets!r}")
        self._targets = tuple(targets)
        if caption_column is not None and not (isinstance(caption_column, str) and caption_column.strip()):
            raise ValueError(f"caption_column must name a column (e.g. 'caption') or be None, got {caption_column!r}")
        self._caption_column = caption_column.strip() if caption_column else None
        if not os.path.isfile(self._csv_path):
            raise FileNotFoundError(f"video list {self._csv_path!r} does not exist")
        class_names, num_classes = _resolve_class_names(class_names_file, num_classes)
        paths, fields = _read_list(self._csv_path, self._targets, num_classes, self._caption_column)
        super().__init__([os.path.join(self._root, p) for p in paths], fields, f"listed in {self._csv_path}",
                         self._root, skip_missing, class_names)
        # The classes this list shows when no count was given: a split need not hold every class, so its largest
        # label + 1 is a lower bound (`pipeline.resolve_num_classes` takes the largest over the splits).
        labels = self._fields.get("label")
        self.num_classes = num_classes or (int(labels.max()) + 1 if labels is not None and len(labels) else None)

    def __repr__(self) -> str:
        # grain checkpoints compare this string to detect a changed source on restore.
        targets = f", targets={self._targets!r}" if self._targets else ""
        if self._caption_column:
            targets += f", caption_column={self._caption_column!r}"
        return f"CsvVideoSource(csv_path={self._csv_path!r}, root={self._root!r}{targets}, len={len(self)})"


def _is_header(first_line: str) -> bool:
    return "path" in {c.strip().lower() for c in first_line.split(",")}


def _parse_label(text: str, csv_path: str, line_no: int, num_classes: int | None) -> int:
    try:
        label = int(text)
    except ValueError:
        raise ValueError(f"{csv_path}:{line_no}: label {text!r} is not an integer") from None
    if num_classes is not None and not 0 <= label < num_classes:
        raise ValueError(f"{csv_path}:{line_no}: label {label} is outside [0, {num_classes}); "
                         "check the list or num_classes")
    return label


def _parse_float(text: str, what: str, csv_path: str, line_no: int) -> float:
    text = text.strip()
    if not text:
        raise ValueError(f"{csv_path}:{line_no}: {what} is missing; every row needs a number there")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{csv_path}:{line_no}: {what} = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{csv_path}:{line_no}: {what} = {text!r} is not a finite number")
    return value


def _read_list(csv_path: str, targets: tuple[str, ...], num_classes: int | None, caption_column: str | None = None
               ) -> tuple[list[str], dict[str, list]]:
    """Paths and per-video fields ("label", "labels", "targets", "start", "end", "captions") of a list file."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if start < len(lines) and _is_header(lines[start]):
        return _read_header_csv(lines, start, csv_path, targets, num_classes, caption_column)
    if targets:
        raise ValueError(f"{csv_path}: regression targets {list(targets)} need a comma-separated list with a "
                         "header row naming 'path' and those columns")
    if caption_column:
        raise ValueError(f"{csv_path}: captions need a comma-separated list with a header row naming 'path' and "
                         f"the caption column {caption_column!r}; this list has no header")
    paths, labels = [], []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        # rsplit keeps paths that contain spaces intact.
        fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(
                f"{csv_path}:{line_no}: expected 'path label', got {line!r}; comma-separated "
                "lists need a header row with 'path' and 'label' columns"
            )
        paths.append(fields[0])
        labels.append(_parse_label(fields[1], csv_path, line_no, num_classes))
    return paths, {"label": np.asarray(labels, dtype=np.int32)}


def _read_header_csv(lines: list[str], start: int, csv_path: str, targets: tuple[str, ...],
                     num_classes: int | None, caption_column: str | None = None) -> tuple[list[str], dict[str, list]]:
    reader = csv.reader(lines[start:])
    header = [c.strip().lower() for c in next(reader)]
    where = f"{csv_path}:{start + 1}"
    if "label" in header and "labels" in header:
        raise ValueError(f"{where}: the header has both 'label' and 'labels' columns; keep 'label' for one class "
                         "per video or 'labels' for multi-label lists")
    unknown = [t for t in targets if t.lower() not in header]
    if unknown:
        raise ValueError(f"{where}: target columns {unknown} are not in the header {header}")
    caption_column = caption_column.lower() if caption_column else None
    if caption_column and caption_column not in header:
        raise ValueError(f"{where}: the caption column {caption_column!r} is not in the header; its columns are "
                         f"{header}. Add a {caption_column!r} column of ';'-separated captions, or name the column "
                         "that holds them")
    if "label" not in header and "labels" not in header and not targets and not caption_column:
        raise ValueError(f"{where}: the header {header} has no 'label' or 'labels' column and no regression "
                         "targets were given (targets=(...) names the target columns)")
    if "labels" in header and num_classes is None:
        raise ValueError(f"{where}: a multi-label list ('labels' column) needs num_classes or a class names file")
    col = {name: header.index(name) for name in ("path", "label", "labels", "start", "end") if name in header}
    target_cols = [header.index(t.lower()) for t in targets]
    paths: list[str] = []
    fields: dict[str, list] = {k: [] for k in ("label", "labels", "start", "end") if k in col}
    if targets:
        fields["targets"] = []
    caption_col = header.index(caption_column) if caption_column else None
    if caption_column:
        fields["captions"] = []
    no_labels = 0
    for row in reader:
        line_no = start + reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{csv_path}:{line_no}: expected {len(header)} columns like the header, got {len(row)}: {row}")
        path = row[col["path"]].strip()
        if not path:
            raise ValueError(f"{csv_path}:{line_no}: empty path")
        paths.append(path)
        if "label" in col:
            fields["label"].append(_parse_label(row[col["label"]].strip(), csv_path, line_no, num_classes))
        if "labels" in col:
            multi_hot = np.zeros(num_classes, dtype=np.float32)
            ids = [t for t in re.split(r"[;\s]+", row[col["labels"]].strip()) if t]
            for text in ids:
                multi_hot[_parse_label(text, csv_path, line_no, num_classes)] = 1.0
            no_labels += not ids
            fields["labels"].append(multi_hot)
        if targets:
            values = [_parse_float(row[c], f"target {t!r}", csv_path, line_no)
                      for t, c in zip(targets, target_cols, strict=True)]
            fields["targets"].append(np.asarray(values, dtype=np.float32))
        if caption_column:
            fields["captions"].append(_parse_captions(row[caption_col], f"{csv_path}:{line_no}", caption_column))
        segment = {}
        for key in ("start", "end"):
            if key in col:
                text = row[col[key]].strip()
                segment[key] = _parse_float(text, key, csv_path, line_no) if text else math.nan
                if segment[key] < 0:
                    raise ValueError(f"{csv_path}:{line_no}: {key} = {text} seconds is negative")
                fields[key].append(segment[key])
        if segment.get("end", math.inf) <= segment.get("start", -math.inf):
            raise ValueError(f"{csv_path}:{line_no}: end {segment['end']} s is not after start {segment['start']} s")
    if no_labels:
        logger.info("%s: %d of %d videos have an empty 'labels' cell (all-zero labels)", csv_path, no_labels,
                    len(paths))
    for key in ("label", "start", "end"):
        if key in fields:
            fields[key] = np.asarray(fields[key], dtype=np.int32 if key == "label" else np.float64)
    return paths, fields


class FolderVideoSource(_FileVideoSource):
    """Random-access source over a class-folder tree: `root/<class>/<any sub-folders>/<video>.<ext>`.

    Classes are the sorted names of root's sub-folders (hidden ones skipped), or `class_names` in the given
    order, in which case a folder not in the list is an error. Files are in sorted path order, so indices are
    stable across machines. Empty classes are logged as a warning (their indices still exist); video files
    lying directly in root are ignored with a warning. Elements: "path", "label" (np.int32), "index".
    """

    def __init__(
        self,
        root: str | os.PathLike,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        class_names: Sequence[str] | None = None,
        skip_missing: bool = False,
    ):
        self._root = os.path.expanduser(root)
        if not os.path.isdir(self._root):
            raise FileNotFoundError(f"video folder {self._root!r} does not exist or is not a directory")
        self._extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        entries = sorted(os.scandir(self._root), key=lambda e: e.name)
        folders = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
        loose = [e.name for e in entries if e.is_file() and e.name.lower().endswith(self._extensions)]
        if loose:
            logger.warning("ignoring %d videos directly in %s, outside any class folder, e.g. %s", len(loose),
                           self._root, loose[:_MAX_MISSING_SHOWN])
        if class_names is None:
            names = folders
        else:
            names = list(class_names)
            unknown = sorted(set(folders) - set(names))
            if unknown:
                raise ValueError(f"folders {unknown} in {self._root} are not among the {len(names)} given class "
                                 "names; add them to class_names or move them out of the root")
        if not names:
            raise ValueError(f"{self._root} has no class sub-folders; expected root/<class>/<video>.<ext>")
        paths, labels, empty = [], [], []
        for label, name in enumerate(names):
            files = self._videos_under(os.path.join(self._root, name))
            if not files:
                empty.append(name)
            paths.extend(files)
            labels.extend([label] * len(files))
        if empty:
            logger.warning("%d of %d classes in %s have no %s videos (missing or empty folders): %s", len(empty),
                           len(names), self._root, "/".join(self._extensions), empty)
        super().__init__(paths, {"label": np.asarray(labels, dtype=np.int32)}, f"found under {self._root}",
                         self._root, skip_missing, names)

    def _videos_under(self, folder: str) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found.extend(os.path.join(dirpath, f) for f in filenames
                         if f.lower().endswith(self._extensions) and not f.startswith("."))
        return sorted(found)

    def __repr__(self) -> str:
        return (f"FolderVideoSource(root={self._root!r}, extensions={self._extensions!r}, "
                f"classes={len(self.class_names)}, len={len(self)})")


_ACTION = re.compile(r"c(\d+)$")


class CharadesSource(_FileVideoSource):
    """Random-access source over the official Charades annotations (`Charades_v1_train.csv` / `_test.csv`).

    The CSV has a header with (among others) `id` and `actions` columns; `actions` is ';'-separated
    `cNNN start end` triplets in seconds, e.g. "c092 11.90 21.20;c147 0.00 12.60", empty for videos without
    actions. Videos are `root/<id><extension>`. Elements: "path", "index", "labels" (float32 multi-hot of every
    action in the video) and "spans" (float32 (n, 3): class, start s, end s) for window-level labels via
    `labels_from_spans`. `classes_file` is the official `Charades_v1_classes.txt` ("c000 Holding some clothes"
    per line) and gives `class_names`. `caption_column` ("script" or "descriptions", `CHARADES_CAPTION_COLUMNS`)
    adds "captions", a tuple of str: the script as one reference, or the descriptions, ';'-separated, as several;
    whitespace runs (line breaks) become one space, and a video without any is an error naming file and line.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike,
        num_classes: int = CHARADES_CLASSES,
        classes_file: str | os.PathLike | None = None,
        extension: str = ".mp4",
        skip_missing: bool = False,
        caption_column: str | None = None,
    ):
        self._csv_path = os.path.expanduser(csv_path)  # `~/list.csv` as typed: no shell expands it after `=`
        self._root = os.path.expanduser(root)
        self._num_classes = num_classes
        if caption_column is not None and caption_column not in CHARADES_CAPTION_COLUMNS:
            raise ValueError(f"caption_column must be one of {CHARADES_CAPTION_COLUMNS} (or None), got "
                             f"{caption_column!r}")
        self._caption_column = caption_column
        if not os.path.isfile(self._csv_path):
            raise FileNotFoundError(f"Charades annotation file {self._csv_path!r} does not exist")
        class_names = None
        if classes_file is not None and os.fspath(classes_file):
            class_names = _read_charades_classes(os.path.expanduser(classes_file), num_classes)
        ids, spans, captions = _read_charades(self._csv_path, num_classes, caption_column)
        labels = []
        for video_spans in spans:
            multi_hot = np.zeros(num_classes, dtype=np.float32)
            multi_hot[video_spans[:, 0].astype(np.int64)] = 1.0
            labels.append(multi_hot)
        no_actions = sum(len(s) == 0 for s in spans)
        if no_actions:
            logger.info("%s: %d of %d videos have no actions (all-zero labels)", self._csv_path, no_actions,
                        len(ids))
        paths = [os.path.join(self._root, video_id + extension) for video_id in ids]
        fields = {"labels": labels, "spans": spans}
        if caption_column:
            fields["captions"] = captions
        super().__init__(paths, fields, f"listed in {self._csv_path}", self._root, skip_missing, class_names)

    def __repr__(self) -> str:
        captions = f", caption_column={self._caption_column!r}" if self._caption_column else ""
        return (f"CharadesSource(csv_path={self._csv_path!r}, root={self._root!r}, "
                f"num_classes={self._num_classes}{captions}, len={len(self)})")


def _read_charades_classes(path: str, num_classes: int) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Charades classes file {path!r} does not exist")
    names: dict[int, str] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            code, _, name = line.strip().partition(" ")
            match = _ACTION.match(code)
            if not match or not name:
                raise ValueError(f"{path}:{line_no}: expected 'cNNN class name', got {line.strip()!r}")
            names[int(match.group(1))] = name.strip()
    if sorted(names) != list(range(num_classes)):
        raise ValueError(f"{path} names classes {sorted(names)[:3]}...{sorted(names)[-3:]} ({len(names)} in all); "
                         f"expected c000..c{num_classes - 1:03d} for num_classes={num_classes}")
    return [names[i] for i in range(num_classes)]


def _read_charades(csv_path: str, num_classes: int, caption_column: str | None = None
                   ) -> tuple[list[str], list[np.ndarray], list[tuple[str, ...]]]:
    """Video ids, action spans and (with `caption_column`, else an empty list) captions of a Charades CSV."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [c.strip().lower() for c in next(reader, [])]
        if "id" not in header or "actions" not in header:
            raise ValueError(f"{csv_path}:1: expected the Charades header with 'id' and 'actions' columns "
                             f"(Charades_v1_train.csv / Charades_v1_test.csv), got {header}")
        if caption_column and caption_column not in header:
            raise ValueError(f"{csv_path}:1: the caption column {caption_column!r} is not in the header; its columns "
                             f"are {header}. The official Charades_v1_train.csv / _test.csv have 'script' and "
                             "'descriptions'")
        id_col, actions_col = header.index("id"), header.index("actions")
        caption_col = header.index(caption_column) if caption_column else None
        ids, spans, captions = [], [], []
        line_end = reader.line_num
        for row in reader:
            # Quoted script/description cells may span several lines: report the row's first line.
            line_no, line_end = line_end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{csv_path}:{line_no}: expected {len(header)} columns like the header, "
                                 f"got {len(row)}")
            video_id = row[id_col].strip()
            if not video_id:
                raise ValueError(f"{csv_path}:{line_no}: empty id")
            ids.append(video_id)
            spans.append(_parse_actions(row[actions_col], csv_path, line_no, num_classes))
            if caption_column:
                captions.append(_parse_captions(row[caption_col], f"{csv_path}:{line_no}", caption_column,
                                               several=caption_column == "descriptions"))
    if not ids:
        raise ValueError(f"Charades annotation file {csv_path} lists no videos")
    return ids, spans, captions


def _parse_actions(cell: str, csv_path: str, line_no: int, num_classes: int) -> np.ndarray:
    spans = []
    for action in (a.strip() for a in cell.split(";")):
        if not action:
            continue
        parts = action.split()
        match = _ACTION.match(parts[0]) if len(parts) == 3 else None
        if match is None:
            raise ValueError(f"{csv_path}:{line_no}: action {action!r} is not 'cNNN start end'")
        class_id = int(match.group(1))
        if class_id >= num_classes:
            raise ValueError(f"{csv_path}:{line_no}: action class {parts[0]} is outside [0, {num_classes}); "
                             "check num_classes")
        start, end = (_parse_float(t, f"time in action {action!r}", csv_path, line_no) for t in parts[1:])
        if end < start:
            raise ValueError(f"{csv_path}:{line_no}: action {action!r} ends before it starts")
        spans.append((class_id, start, end))
    return np.asarray(spans, dtype=np.float32).reshape(-1, 3)


class TfdsVideoSource:
    """Random-access source over a prepared TFDS dataset in array_record format, via `tfds.data_source`.

    Reading needs no TensorFlow as long as the dataset's features can be built without it: videos stored as a
    uint8 `tfds.features.Tensor(shape=(None, H, W, 3))` (frames, element key "video") or as bytes
    (`Tensor(shape=(), dtype=np.object_)`, an encoded file, element key "data"). TFDS's own `Video` and
    `Image` features import TensorFlow when the dataset is opened, so those datasets need `tensorflow`
    installed. The label feature (`label_key`) is a class id (ClassLabel or integer Tensor) and becomes
    "label" (np.int32); a ClassLabel's names become `class_names`.
    """

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None, video_key: str = "video",
                 label_key: str = "label"):
        self._name, self._split = name, split
        self._data_dir = None if data_dir is None else os.fspath(data_dir)
        self._video_key, self._label_key = video_key, label_key
        source = self._open()
        features = source.dataset_info.features
        for key, what in ((video_key, "video_key"), (label_key, "label_key")):
            if key not in features:
                raise ValueError(f"TFDS dataset {name!r} has no feature {key!r} ({what}); its features are "
                                 f"{sorted(features.keys())}")
        video = features[video_key]
        dtype, shape = np.dtype(video.np_dtype), tuple(video.shape)
        if dtype == np.uint8 and len(shape) == 4 and shape[-1] == 3:
            self._video_out = "video"
        elif dtype.kind in "OSU" and shape == ():
            self._video_out = "data"
        else:
            raise ValueError(f"TFDS feature {name}/{video_key} is {dtype} of shape {shape}; expected uint8 frames "
                             "(T, H, W, 3) or the bytes of an encoded video file")
        label = features[label_key]
        self.class_names = list(label.names) if hasattr(label, "names") else None
        self._len = len(source)
        self._source = source

    def _open(self):
        import tensorflow_datasets as tfds

        return tfds.data_source(self._name, split=self._split, data_dir=self._data_dir)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, object]:
        index = int(index)
        record = self._source[index]
        video = record[self._video_key]
        if self._video_out == "video":
            video = np.asarray(video, dtype=np.uint8)
        elif isinstance(video, np.ndarray):
            video = video.item()
        return {self._video_out: video, "label": np.int32(record[self._label_key]), "index": np.int64(index)}

    def __getstate__(self) -> dict:
        # The open tfds source holds file readers; grain workers reopen it rather than unpickle them.
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._source = self._open()

    def __repr__(self) -> str:
        return (f"TfdsVideoSource(name={self._name!r}, split={self._split!r}, data_dir={self._data_dir!r}, "
                f"video_key={self._video_key!r}, label_key={self._label_key!r}, len={len(self)})")


# ArrayRecord video records, as written by `python -m vidjax.data.pack`: the 4-byte magic b"VJR1", the
# little-endian uint32 length of a UTF-8 JSON header, the header, then the encoded video file's bytes verbatim.
# The header is {"path": original file path, "fields": {key: {"dtype": str, "shape": [...], "value": nested
# list}}}, holding the source element's targets ("label", "labels", "targets", "start", "end", "spans") exactly
# (float32 and float64 values survive JSON's shortest round-trip repr; NaN is written as NaN).
RECORD_MAGIC = b"VJR1"
SHARD_SUFFIX = ".array_record"
MANIFEST_NAME = "pack_manifest.json"
JOURNAL_NAME = "pack_journal.jsonl"


def encode_record(data: bytes, path: str, fields: dict[str, np.ndarray]) -> bytes:
    """One ArrayRecord record: encoded video bytes plus the element's targets and original path."""
    header = {"path": path, "fields": {
        key: {"dtype": str(np.asarray(v).dtype), "shape": list(np.shape(v)), "value": np.asarray(v).tolist()}
        for key, v in fields.items()}}
    header_bytes = json.dumps(header).encode()
    return RECORD_MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + data


def decode_record(record: bytes) -> tuple[bytes, str, dict[str, np.ndarray]]:
    """(video bytes, original path, fields) of a record written by `encode_record`."""
    if record[:4] != RECORD_MAGIC:
        raise ValueError(f"not a vidjax video record (starts with {record[:4]!r}, expected {RECORD_MAGIC!r})")
    (size,) = struct.unpack("<I", record[4:8])
    header = json.loads(record[8:8 + size])
    fields = {key: np.asarray(f["value"], dtype=f["dtype"]).reshape(f["shape"])
              for key, f in header["fields"].items()}
    return record[8 + size:], header["path"], fields


class ArrayRecordVideoSource:
    """Random-access source over ArrayRecord shards written by `python -m vidjax.data.pack`.

    `pattern_or_dir` is the pack output folder (the shards its manifest lists, all of which must be finished,
    and the class names it records; without a manifest, every `*.array_record` file in it) or a glob pattern
    of shard files. Elements: "data" (the encoded video file's bytes, identical to the packed file), "index",
    "source_path" (the path the video was packed from, for messages) and the packed targets ("label",
    "labels", "targets", "start"/"end", "spans").
    """

    def __init__(self, pattern_or_dir: str | os.PathLike):
        import grain

        self._pattern = os.path.expanduser(pattern_or_dir)
        self.class_names = None
        if os.path.isdir(self._pattern):
            files = self._shards_in_folder()
        else:
            files = sorted(glob.glob(self._pattern))
        if not files:
            raise FileNotFoundError(f"no ArrayRecord shards match {self._pattern!r}; pass the folder written by "
                                    "`python -m vidjax.data.pack` or a glob of its *.array_record files")
        self._files = files
        self._source = grain.sources.ArrayRecordDataSource(files)

    def _shards_in_folder(self) -> list[str]:
        manifest_path = os.path.join(self._pattern, MANIFEST_NAME)
        if not os.path.isfile(manifest_path):
            return sorted(glob.glob(os.path.join(glob.escape(self._pattern), "*" + SHARD_SUFFIX)))
        with open(manifest_path) as f:
            manifest = json.load(f)
        self.class_names = manifest.get("class_names")
        files = [os.path.join(self._pattern, name) for name in manifest["shards"]]
        absent = [os.path.basename(p) for p in files if not os.path.isfile(p)]
        if absent:
            raise ValueError(f"{self._pattern} is an unfinished pack: {len(absent)} of {len(files)} shards are "
                             f"missing, e.g. {absent[:3]}; re-run the same `python -m vidjax.data.pack` command "
                             "to finish it")
        return files

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, object]:
        index = int(index)
        data, path, fields = decode_record(self._source[index])
        element: dict[str, object] = {"data": data, "source_path": path, "index": np.int64(index)}
        for key, value in fields.items():
            element[key] = value[()] if value.ndim == 0 else value
        return element

    def __repr__(self) -> str:
        return f"ArrayRecordVideoSource(pattern_or_dir={self._pattern!r}, shards={len(self._files)}, len={len(self)})"
