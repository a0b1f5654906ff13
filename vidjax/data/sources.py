"""Grain random-access data sources over lists of labelled video files."""

from __future__ import annotations

import csv
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

_MAX_MISSING_SHOWN = 5


class CsvVideoSource:
    """Random-access source over a list of `(video path, integer label)` pairs.

    The list is either VideoMAE format (one `path label` per line, space-separated, no
    header) or comma-separated with a header row naming `path` and `label` columns (other
    columns are ignored). Relative paths are joined to `root`. Items are
    `{"path": str, "label": np.int32, "index": np.int64}`; decoding happens in a later
    transform so the source stays cheap to index and to pickle into grain workers.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike = "",
        num_classes: int | None = None,
        skip_missing: bool = False,
    ):
        self._csv_path = os.fspath(csv_path)
        self._root = os.fspath(root)
        if not os.path.isfile(self._csv_path):
            raise FileNotFoundError(f"video list {self._csv_path!r} does not exist")
        entries = _read_list(self._csv_path)
        if num_classes is not None:
            for line_no, _, label in entries:
                if not 0 <= label < num_classes:
                    raise ValueError(
                        f"{self._csv_path}:{line_no}: label {label} is outside [0, {num_classes}); "
                        "check the list or num_classes"
                    )
        paths = [os.path.join(self._root, path) for _, path, _ in entries]
        labels = [label for _, _, label in entries]
        missing = [i for i, path in enumerate(paths) if not os.path.isfile(path)]
        if missing:
            shown = [paths[i] for i in missing[:_MAX_MISSING_SHOWN]]
            if not skip_missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(paths)} videos listed in {self._csv_path} do not "
                    f"exist (root {self._root!r}), first ones: {shown}; fix the root or paths, "
                    "or pass skip_missing=True to drop them"
                )
            logger.warning(
                "dropping %d of %d videos listed in %s that do not exist (root %r), first ones: %s",
                len(missing), len(paths), self._csv_path, self._root, shown,
            )
            missing_set = set(missing)
            paths = [p for i, p in enumerate(paths) if i not in missing_set]
            labels = [lab for i, lab in enumerate(labels) if i not in missing_set]
        if not paths:
            raise ValueError(f"video list {self._csv_path} has no usable entries")
        self._paths = paths
        self._labels = np.asarray(labels, dtype=np.int32)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, object]:
        index = int(index)
        return {
            "path": self._paths[index],
            "label": self._labels[index],
            "index": np.int64(index),
        }

    def __repr__(self) -> str:
        # grain checkpoints compare this string to detect a changed source on restore.
        return f"CsvVideoSource(csv_path={self._csv_path!r}, root={self._root!r}, len={len(self)})"


def _is_header(first_line: str) -> bool:
    columns = {c.strip().lower() for c in first_line.split(",")}
    return "path" in columns and "label" in columns


def _parse_label(text: str, csv_path: str, line_no: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{csv_path}:{line_no}: label {text!r} is not an integer") from None


def _read_list(csv_path: str) -> list[tuple[int, str, int]]:
    """Returns (line number, path, label) for every entry in the list file."""
    with open(csv_path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if start < len(lines) and _is_header(lines[start]):
        return _read_header_csv(lines, start, csv_path)
    entries = []
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
        entries.append((line_no, fields[0], _parse_label(fields[1], csv_path, line_no)))
    return entries


def _read_header_csv(lines: list[str], start: int, csv_path: str) -> list[tuple[int, str, int]]:
    reader = csv.reader(lines[start:])
    header = [c.strip().lower() for c in next(reader)]
    path_col, label_col = header.index("path"), header.index("label")
    entries = []
    for row in reader:
        line_no = start + reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{csv_path}:{line_no}: expected {len(header)} columns like the header, "
                f"got {len(row)}: {row}"
            )
        path = row[path_col].strip()
        if not path:
            raise ValueError(f"{csv_path}:{line_no}: empty path")
        entries.append((line_no, path, _parse_label(row[label_col].strip(), csv_path, line_no)))
    return entries
