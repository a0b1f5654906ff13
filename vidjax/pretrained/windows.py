"""Sliding windows over whole videos, shared by `vidjax.predict`, `vidjax.extract`, `vidjax.zeroshot` and the demo:
the spans, their clips read in one streaming pass, a loaded model run over them (`window_scores` and
`predict_video`: a runner's scores averaged over each window's views; `caption_windows` and `caption_video`: a
captioner's caption of each window's centre clip), a JSON Lines file of one row per window that a killed or
interrupted run resumes (`Rows`, `Rows.kept` for the line of an interrupted run), a progress line, and the check of
the output paths made before any work (`output_problem`)."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator

import numpy as np

from vidjax import fileio, pretrained
from vidjax.data import decode, transforms

PROGRESS_EVERY_S = 2.0  # without a terminal, a progress line this often
Span = tuple[float | None, float | None]  # [start, end) seconds; None: the start or end of the video


def sliding_windows(duration_s: float, window_s: float, stride_s: float) -> list[tuple[float, float]]:
    """[start, end) windows of `window_s` seconds starting every `stride_s` from 0, as many as fit (at least one)."""
    if duration_s <= window_s:
        return [(0.0, duration_s)]
    count = int(np.floor((duration_s - window_s) / stride_s + 1e-9)) + 1
    return [(i * stride_s, i * stride_s + window_s) for i in range(count)]


def flag_problem(window_s: float, stride_s: float) -> str | None:
    """What is wrong with the --window / --stride flags of a command, or None."""
    if window_s < 0 or stride_s < 0:
        return "--window and --stride are seconds and cannot be negative."
    if stride_s and not window_s:
        return "--stride needs --window (the window length in seconds)."
    return None


def output_problem(flag: str, typed: str, example: str, files: tuple[str, ...] = ()) -> str | None:
    """Why the file(s) that `--flag=typed` names cannot be written, or None: checked before any work, so that a run
    never ends, hours in, by failing to write its result. `files` are the paths the command writes (default `typed`
    itself): none may be a folder, and each one's folder must exist or be one `os.makedirs` can make (its nearest
    existing ancestor a folder this process may write in). `example` is a file name for the fix, e.g.
    "predictions.jsonl"."""
    if typed.endswith(("/", os.sep)):
        return f"{flag}={typed} names a folder; give a file in it, e.g. {flag}={typed}{example}."
    path = fileio.user_path(typed)
    for file in [fileio.user_path(f) for f in files] or [path]:
        if os.path.isdir(file):
            if file == path:
                return (f"{flag}={typed} is a folder; give a file in it, e.g. "
                        f"{flag}={os.path.join(typed, example)}.")
            return (f"{flag}={typed}: {file}, which it writes too, is a folder; move it away or choose another "
                    f"{flag}.")
        folder = os.path.dirname(file)
        while not os.path.lexists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder):
            return f"{flag}={typed}: {folder} is a file, not a folder; choose another {flag}."
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{flag}={typed}: cannot write in {folder} (permission denied); choose another {flag}."
    return None


def spans(path: str, window_s: float, stride_s: float, start_s: float | None = None,
          end_s: float | None = None) -> list[Span]:
    """The [start, end) seconds of each window of a video (`sliding_windows`, stride defaulting to the window),
    or of its [start_s, end_s) segment; [(None, None)], the whole video, without `window_s`. Raises
    `decode.VideoDecodeError` when the file cannot be probed."""
    if not window_s:
        return [(None, None)]
    duration = decode.probe(path).duration_s
    start = start_s or 0.0
    end = duration if end_s is None else min(end_s, duration)
    return [(start + a, start + b) for a, b in sliding_windows(end - start, window_s, stride_s or window_s)]


def window_views(model: pretrained.Pretrained, path: str, spans: list[Span], *,
                 num_clips: int = 1, num_crops: int = 1, sampling_rate: int | None = None) -> Iterator[np.ndarray]:
    """uint8 views (num_clips * num_crops, T, S, S, 3) of each span in turn, the same as `model.read_views` of each,
    read from one forward pass over the file (`decode.read_windows`): memory stays one window's whatever the
    video's length. The whole video, [(None, None)], is `read_views` itself."""
    if spans == [(None, None)]:
        yield model.read_views(path, num_clips=num_clips, num_crops=num_crops, sampling_rate=sampling_rate)
        return
    p = model.preprocessing
    size = int(p["image_size"])
    rate = next(r for r in (sampling_rate, model.sampling_rate, pretrained.DEFAULT_SAMPLING_RATE) if r is not None)
    for clip in decode.read_windows(path, spans, int(p["num_frames"]), int(rate), num_clips=num_clips,
                                    short_side=int(p["short_side"])):
        # The crops of `pipeline.Preprocess`'s evaluation views.
        crops = [transforms.multi_view(v, num_crops, size) if num_crops > 1 else transforms.center_crop(v, size)[None]
                 for v in clip.frames]
        yield np.ascontiguousarray(np.concatenate(crops), dtype=np.uint8)


def window_scores(model: pretrained.Pretrained, runner, path: str,
                  spans: list[Span], *, num_clips: int = 1, num_crops: int = 1,
                  sampling_rate: int | None = None) -> Iterator[tuple[float | None, float | None, np.ndarray]]:
    """(start_s, end_s, scores averaged over the window's views) of each span in turn, as they are computed.
    `runner` is a `pretrained.BatchRunner` (or one with its `run(clips)`) of the scores of a clip."""
    views = window_views(model, path, spans, num_clips=num_clips, num_crops=num_crops, sampling_rate=sampling_rate)
    rows = runner.run(view for window in views for view in window)
    for start, end in spans:
        yield start, end, np.mean([next(rows) for _ in range(num_clips * num_crops)], axis=0)


def predict_video(model: pretrained.Pretrained, runner, path: str, *, num_clips: int = 1,
                  num_crops: int = 1, window_s: float = 0.0, stride_s: float = 0.0,
                  sampling_rate: int | None = None) -> tuple[np.ndarray, list[tuple]]:
    """(video-level scores, [(start_s, end_s, scores) per window]) of one video; views and windows are averaged.

    Without `window_s` the whole video is the one window, (None, None, scores). Raises `decode.VideoDecodeError`
    when the video (or any window of it) does not decode.
    """
    rows = list(window_scores(model, runner, path, spans(path, window_s, stride_s), num_clips=num_clips,
                              num_crops=num_crops, sampling_rate=sampling_rate))
    return np.mean([scores for _, _, scores in rows], axis=0), rows


def caption_windows(model: pretrained.PretrainedCaptioner, path: str, spans: list[Span], *,
                    sampling_rate: int | None = None, batch_size: int = 8, max_new_tokens: int = 30,
                    num_beams: int = 3, length_penalty: float = 1.0
                    ) -> Iterator[tuple[float | None, float | None, str]]:
    """(start_s, end_s, caption) of each span in turn: `model.caption` of its centre clip, `batch_size` spans per
    call, yielded as each call finishes."""
    clips = (views[0] for views in window_views(model, path, spans, sampling_rate=sampling_rate))
    spans_left = iter(spans)
    while batch := list(itertools.islice(clips, batch_size)):
        # Generation compiles once per batch shape: padding with black clips to a power of two (at most batch_size)
        # bounds the compilations to a few shapes, without decoding a single clip batch_size times over.
        padded = np.zeros((min(batch_size, 1 << (len(batch) - 1).bit_length()), *batch[0].shape), np.uint8)
        padded[: len(batch)] = batch
        captions = model.caption(model.preprocess(padded), max_new_tokens=max_new_tokens, num_beams=num_beams,
                                 length_penalty=length_penalty)[: len(batch)]
        for (start, end), text in zip(itertools.islice(spans_left, len(batch)), captions, strict=True):
            yield start, end, text


def caption_video(model: pretrained.PretrainedCaptioner, path: str, *, window_s: float = 0.0, stride_s: float = 0.0,
                  sampling_rate: int | None = None, batch_size: int = 8, max_new_tokens: int = 30,
                  num_beams: int = 3, length_penalty: float = 1.0) -> list[tuple[float | None, float | None, str]]:
    """[(start_s, end_s, caption) per window] of one video: `model.caption` of each window's centre clip.

    Without `window_s` the whole video is the one window, (None, None, caption). Up to `batch_size` windows are
    captioned per call. Raises `decode.VideoDecodeError` when the video (or any window of it) does not decode.
    """
    return list(caption_windows(model, path, spans(path, window_s, stride_s), sampling_rate=sampling_rate,
                                batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                length_penalty=length_penalty))


class Progress:
    """A progress line on stderr: windows done / total, rate and time left; redrawn in place on a terminal, else
    a line every `PROGRESS_EVERY_S` seconds and at the end, or where it stops part way (`close`). The rate and time
    left come from the windows after the first, whose time holds the compile (a run's first window is not its pace).
    `clock` gives seconds (time.perf_counter; a test's own)."""

    def __init__(self, label: str, total: int, done: int = 0, out=None, clock=time.perf_counter):
        self.label, self.total, self.done, self.out = label, total, done, out or sys.stderr
        self.clock = clock
        self.resumed, self.start = done, clock()
        self.first_s: float | None = None  # when the first window of this run was done
        self.last = -PROGRESS_EVERY_S
        self.drawn = done  # the count the last line showed
        self.tty = self.out.isatty()
        self.open_line = False  # a terminal's line drawn without its newline yet

    def close(self) -> None:
        """Ends the progress of a run stopped part way: a terminal's open line is ended, and a line that shows fewer
        windows than were done is drawn again, so the last line says how far the run got."""
        if self.drawn != self.done:
            self._draw(self.clock() - self.start, end="\n")
        if self.open_line:
            print(file=self.out, flush=True)
            self.open_line = False

    def step(self) -> None:
        self.done += 1
        now = self.clock() - self.start
        if self.first_s is None:
            self.first_s = now
        if self.done < self.total and not self.tty and now - self.last < PROGRESS_EVERY_S:
            return
        self._draw(now, end="\n" if not self.tty or self.done == self.total else "")

    def _draw(self, now: float, end: str) -> None:
        self.last, self.drawn = now, self.done
        paced = self.done - self.resumed - 1  # the windows after the first
        rate = paced / (now - self.first_s) if paced > 0 and now > self.first_s else None
        left = (self.total - self.done) / rate if rate else None
        width = 24
        bar = "#" * (width * self.done // max(self.total, 1))
        eta = "?" if left is None else f"{int(left) // 60}:{int(left) % 60:02d}"
        pace = "?" if rate is None else f"{rate:.1f}"
        line = f"{self.label}: [{bar:<{width}}] {self.done}/{self.total} windows, {pace} windows/s, ETA {eta}"
        if self.open_line and end:  # a terminal's line redrawn and ended
            print("\r" + line, file=self.out, flush=True)
        else:
            print(("\r" if self.tty else "") + line, end=end, file=self.out, flush=True)
        self.open_line = not end


class Rows:
    """One JSON line per window, written to OUT.partial and flushed as each comes (`finish` renames it to OUT when
    every video is done). The first line is {"header": settings}. Each row names its video by `key` (a field of
    every row: "path", or a list's "index") and, but for a failed video's {key, "error"} row, its "window".

    A run that finds OUT.partial written with the same settings resumes it: its complete lines are kept (a line cut
    short by a kill is dropped) and `done` says from which window each video goes on, so the finished file is the
    one an uninterrupted run writes. The file is read line by line, never whole: its rows stay on disk."""

    def __init__(self, path: str, header: dict, key: str = "path"):
        self.path = fileio.user_path(path)
        self.partial = self.path + ".partial"
        self.header, self.key = {"header": header}, key
        self.done: dict = {}  # windows written, by video
        self.errors: dict = {}  # videos that failed, with the reason
        self.resumed = os.path.exists(self.partial)  # going on from the rows of a run stopped part way
        if self.resumed:
            self._resume()
        else:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.partial, "w") as f:
                f.write(json.dumps(self.header) + "\n")
        self.file = open(self.partial, "a")  # noqa: SIM115  (closed by `close` or `finish`)

    def _resume(self) -> None:
        complete, header = 0, None
        with open(self.partial, "rb+") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # the row a kill cut short: written again
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.partial} has a line that is not JSON ({e}); delete it to start "
                                     f"again.") from None
                complete += len(line)
                if header is None:
                    header = row
                    if header != self.header:
                        break
                else:
                    self._note(row)
            if header != self.header:
                raise ValueError(f"{self.partial} was started with other settings ({header or 'empty'}); pass the "
                                 f"same checkpoint and flags to resume it, or delete it to start again.")
            f.truncate(complete)

    def _note(self, row: dict) -> None:
        if row.get("error"):
            self.errors[row[self.key]] = row["error"]
        else:
            self.done[row[self.key]] = row["window"] + 1

    def rows(self) -> Iterator[dict]:
        """Every row in the file but the header, read again from disk (nothing is held for the whole run)."""
        with open(self.partial) as f:
            next(f)
            for line in f:
                yield json.loads(line)

    def written(self, video) -> Iterator[dict]:
        """The window rows of `video` (its `key`) already in the file."""
        if self.done.get(video):
            yield from (row for row in self.rows() if row.get(self.key) == video and "window" in row)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self._note(row)

    def close(self) -> None:
        self.file.close()

    def summary(self, unit: str = "video") -> str:
        """What the file holds: "N windows of M videos (and K that failed)", counting `unit`s."""
        failed = f" (and {len(self.errors)} that failed)" if self.errors else ""
        return f"{_count(sum(self.done.values()), 'window')} of {_count(len(self.done), unit)}{failed}"

    def kept(self, unit: str = "video") -> str | None:
        """What the file holds, for the line of a run stopped part way (`cli.stopped`): "`summary` in OUT.partial";
        None once `finish` has renamed it. Closes it."""
        self.close()
        return f"{self.summary(unit)} in {self.partial}" if os.path.exists(self.partial) else None

    def finish(self) -> None:
        self.close()
        os.replace(self.partial, self.path)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
