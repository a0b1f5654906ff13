r"""A web page that shows what a checkpoint makes of a video: labels, a per-window timeline, captions, reconstructions.

  python -m vidjax.demo --checkpoint=/work/finetune
  python -m vidjax.demo --checkpoint=/ckpt/videomae_b_k400 --caption_checkpoint=/ckpt/captioner --port=8080
  python -m vidjax.demo --checkpoint=/work/videomae_pretrain --share
  python -m vidjax.demo --onnx=model.onnx        # a classifier exported to ONNX, run by ONNX Runtime

Serves a Gradio page (needs the demo extra: `pip install 'vidjax[demo]'`) at http://127.0.0.1:PORT (--port,
default 7860; --host=0.0.0.0 to be reachable from other machines, --share for a temporary public gradio.live link).
Upload a video, or click one of the bundled examples (clips of the embedded synthetic dataset, written as mp4 at
start-up into a temporary folder; their names say the true label), then press Predict. What the page shows depends
on --checkpoint (anything `python -m vidjax.predict` takes):

  classification   the top --top_k classes with their probabilities (default 5)
  multilabel       the --top_k highest per-class sigmoid scores (the timeline lists the classes over --threshold)
  regression       each target's value
  captioner        the caption of the middle window's clip (each window's own in the timeline)
  pre-training     (a VideoMAE pre-training checkpoint, no head) the masked reconstruction of the middle clip as an
                   animated GIF: original | masked input | reconstruction, as `python -m vidjax.visualize` draws it
  video-text       (VideoPrism's video-text model, with --labels="a;b;c" or --labels_file) the --top_k of those
                   free-text labels with their zero-shot probabilities, as `python -m vidjax.predict --labels` (and
                   `python -m vidjax.zeroshot`) scores them: the softmax over the labels of the cosine of the video's
                   embedding with each label's, divided by --temperature (default 1)

Every prediction is the one `python -m vidjax.predict --window=W --stride=S` makes, W and S being this command's
--window and --stride: the video is cut into windows of W seconds (default 4; a shorter video is one window), each
predicted from its centre clip, and the labels are the mean over windows; the timeline table lists each window's
own top label and score (multi-label: the classes scoring at least --threshold; regression: the values; with a
captioner: the caption).
--window=0 predicts the whole video at once and shows no timeline. --caption_checkpoint adds a captioner's caption
(and a caption per window) next to the labels of --checkpoint.

--onnx=FILE serves a classifier exported with `python -m vidjax.export --out=FILE.onnx` (its scores, every window as
above) with ONNX Runtime (`pip install 'vidjax[onnx]'`; onnxruntime-gpu's CUDA provider where installed): the model
runs in no jax program and compiles nothing; the clip spec, task and class names come from the file's metadata.
Nothing else is served from it (no --caption_checkpoint, no --labels).

Scripts can call the page's prediction as the endpoint /predict (video file in, {label: probability} out; values
for regression):

  from gradio_client import Client, handle_file
  Client("http://127.0.0.1:7860/").predict(handle_file("clip.mp4"), api_name="/predict")

/analyse returns everything the page shows. A file that is not a video, a corrupt one, one larger than --max_mb
megabytes (default 100) or longer than --max_seconds (default 600) gets a message saying what was wrong and what
to do, and the server keeps serving; the size and duration limits are checked before any frame is decoded (the
duration from the container's header).

Many users at once: Gradio's queue holds up to --queue_size requests (default 64; one more is told the queue is
full) and runs --concurrency of them at a time (default 4). Those decode their videos side by side, and the clips
they are ready to predict at the same moment go through the model together, up to --max_batch clips per call
(default 16), padded to one of a few fixed batch sizes (powers of 4 up to --max_batch, each compiled once at
start-up), so a busy server makes fewer, fuller model calls and never compiles while serving. `python
scripts/load_demo.py` measures it (latency, memory over a run).

Exit status: 130 or 143 when stopped by SIGINT (Ctrl-C) or SIGTERM, while starting or serving, with one `stopped by
...` line (the server closed, its temporary folder removed, nothing else written); 2 for bad arguments, a checkpoint
that cannot be loaded or shows nothing (a backbone without a head), the demo extra not installed, a --port that is
taken, or a server that does not answer Gradio's check that it serves (3 starts; an http_proxy in the environment is
never asked for the server's own address); with --labels also 2 for an empty label list, a label longer than the
text tower, a checkpoint without a text tower, a video-text checkpoint without its tokenizer (and a video-text
checkpoint given no --labels), each one `error:` line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import numpy as np

from vidjax import cli, pretrained, tasks
from vidjax.data import decode, encode, synthetic
from vidjax.pretrained import onnx_model, reconstruction, windows, zero_shot
from vidjax.tasks import predictions

DEFAULT_PORT = 7860
STOPPED = "the server is closed and its temporary files removed; run the same command again to serve the demo."
LAUNCH_ATTEMPTS = 3  # starts of the server before the demo gives up on it answering
UNREACHABLE = "localhost is not accessible"  # the words of Gradio's error when its new server did not answer it
DEFAULT_MAX_MB = 100.0
DEFAULT_MAX_SECONDS = 600.0
DEFAULT_CONCURRENCY = 4
DEFAULT_QUEUE_SIZE = 64
DEFAULT_MAX_BATCH = 16
EXAMPLE_FPS = 25
MAX_CAPTION_TOKENS = 30  # predict's default; fewer when the captioner's decoder has fewer positions
VIDEO_TYPES = "mp4, webm, mkv, mov or avi"


class DemoError(ValueError):
    """A checkpoint or flag the demo cannot serve; the message names the flag and the fix (exit status 2)."""


class InputError(ValueError):
    """An upload the demo cannot predict (none, too large, not a video, corrupt); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How predictions are made and what the page accepts (the command's flags)."""

    top_k: int = 5
    threshold: float = 0.5
    window_s: float = 4.0
    stride_s: float = 0.0  # 0: the window length
    num_beams: int = 3
    max_mb: float = DEFAULT_MAX_MB
    max_seconds: float = DEFAULT_MAX_SECONDS
    num_examples: int = 3
    concurrency: int = DEFAULT_CONCURRENCY  # requests served at once (Gradio's queue)
    queue_size: int = DEFAULT_QUEUE_SIZE  # requests waiting at most; one more is refused
    max_batch: int = DEFAULT_MAX_BATCH  # clips per model call, from all the requests ready at the time


@dataclasses.dataclass
class Analysis:
    """What the page shows for one video; None where the checkpoints give no such output."""

    labels: dict[str, float] | None  # label (or target) -> probability, score or value, best first
    timeline: list[list[Any]] | None  # one row per window: start_s, end_s, then `Demo.timeline_headers`' columns
    caption: str | None
    gif: str | None  # the reconstruction GIF's path
    note: str  # one line about the prediction: windows, the reconstruction's loss


def _gradio():
    """The gradio package, or a DemoError naming the extra that installs it."""
    try:
        import gradio
    except ImportError as e:
        raise DemoError(f"the web demo needs Gradio, which is not installed ({e}); install it with "
                        f"`pip install 'vidjax[demo]'`.") from e
    return gradio


def _example_source(model: pretrained.Pretrained, num_examples: int, num_frames: int, side: int
                    ) -> synthetic.SyntheticVideoSource:
    """Embedded-dataset clips carrying the targets of the checkpoint's task (`Presentation.examples`; the default
    class labels for a task without targets), of its class count where the generator takes that count."""
    examples = tasks.presentation_of(model.task).examples if model.task in tasks.available() else None
    variant = {"variant": examples} if examples else {}
    # Wider than tall, so the short-side resize and the centre crop do what they do to a real upload.
    width = side * 4 // 3 // 2 * 2  # even: H.264 in yuv420p
    clips = functools.partial(synthetic.SyntheticVideoSource, num_examples, num_frames=num_frames, height=side,
                              width=width, split="test", **variant)
    try:
        return clips(num_classes=int(model.config.get("num_classes", 0) or synthetic.NUM_CLASSES))
    except ValueError:  # more classes than the generator has, or a count its captions cannot say in words
        return clips(num_classes=synthetic.NUM_CLASSES)


def _example_label(source: synthetic.SyntheticVideoSource, element: dict) -> str:
    if "captions" in element:
        return element["captions"][0]
    if "labels" in element:
        return " + ".join(n for n, on in zip(source.class_names, element["labels"], strict=True) if on)
    if "targets" in element:
        return ", ".join(f"{n} {v:+.2f}" for n, v in zip(source.target_names, element["targets"], strict=True))
    return source.class_names[int(element["label"])]


def write_examples(model: pretrained.Pretrained, folder: str, settings: Settings) -> list[tuple[str, str]]:
    """[(mp4 path, true label)] of `settings.num_examples` embedded-dataset clips, long enough for two windows and
    for one clip of the checkpoint, at least 64 px on the short side (the checkpoint's short side if larger)."""
    p = model.preprocessing
    rate = model.sampling_rate or pretrained.DEFAULT_SAMPLING_RATE
    num_frames = max(int(p["num_frames"]) * rate, round(2 * (settings.window_s or 2.0) * EXAMPLE_FPS))
    side = max(64, int(p.get("short_side") or p["image_size"]) + 1) // 2 * 2
    source = _example_source(model, settings.num_examples, num_frames, side)
    examples = []
    for i in range(len(source)):
        element = source[i]
        label = _example_label(source, element)
        slug = "".join(c if c.isalnum() else "_" for c in label)[:40]
        path = encode.write_mp4(os.path.join(folder, f"example_{i}_{slug}.mp4"), element["video"], EXAMPLE_FPS)
        examples.append((path, f"{label} (true label)"))
    return examples


def _shown_above(value: float, limit: float) -> str:
    """`value` with the fewest decimals (at least one) that show it over `limit`: 50 KB against a 0.01 MB limit is
    "0.05", not "0.0"."""
    decimals = 1
    while round(value, decimals) <= limit and decimals < 9:
        decimals += 1
    return f"{value:.{decimals}f}"


@dataclasses.dataclass(eq=False)
class _Request:
    """One request's clips and the rows the model gives for them (None until computed)."""

    clips: list[np.ndarray]
    rows: list[np.ndarray | None]
    missing: int
    error: BaseException | None = None


class ClipBatcher:
    """The model calls of requests served at the same time, made together.

    `run(clips)` has `pretrained.BatchRunner.run`'s signature, so `windows.predict_video` takes it as its runner. A
    request's clips are read (decoded) in its own thread, up to `max_batch` at a time, then queued; whichever
    waiting thread finds the model free takes up to `max_batch` queued clips, first come first served across
    requests, runs them through the model padded to the smallest fixed batch size that holds them (powers of 4 up
    to `max_batch`, rounded up to a multiple of the device count: a few compilations, never one per request count),
    and hands each request its rows. It has no thread of its own, so there is nothing to stop. (Gradio's own
    batching, `batch=True`, does not fit: one corrupt upload fails every request of its batch, and a request here
    is any number of clips, one per window.)
    """

    def __init__(self, model: pretrained.Pretrained, fn: Callable | None, max_batch: int, *, runner=None):
        # `runner`: one with BatchRunner's run(clips) and batch_size made elsewhere (an ONNX file's, --onnx) and the
        # multiple its batch sizes must be (`step`), in place of a BatchRunner of `fn` over the model.
        base = runner if runner is not None else pretrained.BatchRunner(model, fn, max_batch)
        devices = runner.step if runner is not None else base.mesh.size
        sizes, size = {base.batch_size}, 1
        while size < max_batch:
            sizes.add(-(-size // devices) * devices)
            size *= 4
        self.runners = []
        for size in sorted(sizes):
            runner = copy.copy(base)  # one copy of the weights on the devices, shared by every batch size
            runner.batch_size = size
            self.runners.append(runner)
        self.max_batch = base.batch_size
        self.clip_shape = (int(model.config.num_frames), int(model.config.image_size), int(model.config.image_size), 3)
        self.calls = 0  # model calls made; with `clips_run`, how full they were
        self.clips_run = 0
        self._queue: list[tuple[_Request, int]] = []
        self._busy = False
        self._changed = threading.Condition()

    def warm_up(self) -> None:
        """Compiles every batch size now, so that no request waits for a compilation."""
        for runner in self.runners:
            list(runner.run([np.zeros(self.clip_shape, np.uint8)] * runner.batch_size))

    def run(self, clips: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """One output row per uint8 clip (T, H, W, 3) of `clips`, in order, read `max_batch` clips at a time (the
        caller's iterator decodes as it is consumed); raises what the model call raised."""
        for chunk in pretrained.batched(clips, self.max_batch):
            yield from self._rows(chunk)

    def _rows(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """The rows of one request's clips, computed in calls shared with the other requests waiting then."""
        request = _Request(clips, [None] * len(clips), len(clips))
        with self._changed:
            self._queue.extend((request, i) for i in range(len(request.clips)))
        while True:
            with self._changed:
                while self._busy and request.missing and request.error is None:
                    self._changed.wait()
                if not request.missing or request.error is not None:
                    break
                self._busy = True
                taken = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            rows, error = None, None
            try:
                runner = next(r for r in self.runners if r.batch_size >= len(taken))
                rows = list(runner.run([req.clips[i] for req, i in taken]))
            except BaseException as e:  # noqa: BLE001  (handed to every request of the call, raised in each)
                error = e
            with self._changed:
                self._busy = False
                self.calls, self.clips_run = self.calls + 1, self.clips_run + len(taken)
                for k, (req, i) in enumerate(taken):
                    if error is not None:
                        req.error = error
                    else:
                        req.rows[i], req.missing = rows[k], req.missing - 1
                self._queue = [(req, i) for req, i in self._queue if req.error is None]
                self._changed.notify_all()
        if request.error is not None:
            raise request.error
        return request.rows


class ModelRunner:
    """The demo's model calls: a head's scores (or zero-shot labels' probabilities, given `label_features`, the
    text tower's embeddings of `labels`) through the `ClipBatcher` that concurrent requests share, a captioner's
    captions, and a pre-training checkpoint's masked reconstruction."""

    def __init__(self, model: pretrained.Pretrained, captioner: pretrained.PretrainedCaptioner | None,
                 max_batch: int, *, labels: list[str] | None = None, label_features: np.ndarray | None = None,
                 temperature: float = 1.0, onnx_runner: onnx_model.Runner | None = None):
        self.model, self.captioner = model, captioner
        self.task = predictions.ZERO_SHOT_READOUT if labels else model.task  # how the scores are read
        self.clips = None
        if labels:
            self.clips = ClipBatcher(model, pretrained.video_embeds, max_batch)
        elif onnx_runner is not None:  # --onnx: the file's scores, from ONNX Runtime
            self.clips = ClipBatcher(model, None, max_batch, runner=onnx_runner)
        elif model.has_head:
            self.clips = ClipBatcher(model, predictions.scores_fn(model.task), max_batch)
        self.batcher = pretrained.LabelScores(self.clips, label_features, temperature) if labels else self.clips
        self.names = list(labels) if labels else predictions.output_names(model) if model.has_head else []

    def warm_up(self) -> None:
        """Compiles the head's batch sizes now, so that no request waits for a compilation."""
        if self.clips is not None:
            self.clips.warm_up()

    def scores(self, video: str, settings: Settings) -> dict:
        """The head's `predictions.prediction_entry` of the video: its aggregate and, with a window, each window's."""
        return predictions.prediction_entry(self.model, self.batcher, video, names=self.names, top_k=settings.top_k,
                                            threshold=settings.threshold, window_s=settings.window_s,
                                            stride_s=settings.stride_s, task=self.task)

    def captions(self, video: str, settings: Settings) -> list[tuple[float | None, float | None, str]]:
        """The captioner's (start_s, end_s, caption) of each window's centre clip, as `predict` writes them."""
        positions = int(self.captioner.config.decoder.n_positions)
        return windows.caption_video(self.captioner, video, num_beams=settings.num_beams,
                                     max_new_tokens=min(MAX_CAPTION_TOKENS, positions - 1),
                                     window_s=settings.window_s, stride_s=settings.stride_s)

    def reconstruction(self, video: str, folder: str) -> dict:
        """`pretrained.reconstruction.render` of the video's middle clip (as `python -m vidjax.visualize` draws it,
        the checkpoint's own masks), its GIF in a new folder under `folder`."""
        prefix = tempfile.mkdtemp(dir=folder)
        return reconstruction.render(self.model, video, os.path.join(prefix, "reconstruction"))


class Handlers:
    """What the page's endpoints do with one request: the upload checked against --max_mb and --max_seconds before
    any frame is decoded (each refusal an InputError saying what was wrong and what to do), then the runner's outputs
    read as the checkpoint's task shows them (its presentation: `shown_scores`, `timeline_columns`,
    `timeline_cells`)."""

    def __init__(self, runner: ModelRunner, presentation: tasks.Presentation, settings: Settings, *, folder: str,
                 checkpoint: str):
        self.runner, self.presentation, self.settings = runner, presentation, settings
        self.folder, self.checkpoint = folder, checkpoint
        self.has_head = runner.batcher is not None
        self.reconstructs = presentation.demo_output == "reconstruction"

    @property
    def timeline_headers(self) -> list[str]:
        headers = ["start (s)", "end (s)"]
        if self.has_head:
            headers += self.presentation.timeline_columns(self.runner.names, self.settings.threshold)
        if self.runner.captioner is not None:
            headers.append("caption")
        return headers

    def check_upload(self, video: str | None) -> str:
        """The upload's path; an InputError when there is none, it is over --max_mb or --max_seconds, or it is not
        a video. Only the container's header and first frame are read: nothing over the limits is decoded."""
        if not video:
            raise InputError(f"No video given: upload a video file ({VIDEO_TYPES}) or click one of the examples, "
                             f"then press Predict.")
        name, limit_mb = os.path.basename(video), self.settings.max_mb
        size_mb = os.path.getsize(video) / 2**20
        if size_mb > limit_mb:
            raise InputError(f"{name} is {_shown_above(size_mb, limit_mb)} MB, over this demo's limit of {limit_mb:g} "
                             f"MB (--max_mb). Upload a shorter or smaller video (e.g. `ffmpeg -i in.mp4 -t 30 -vf "
                             f"scale=-2:360 out.mp4`), or restart the demo with a larger --max_mb.")
        try:
            duration_s = decode.probe(video).duration_s
        except decode.VideoDecodeError as e:
            raise self._decode_error(video, e) from e
        limit_s = self.settings.max_seconds
        if duration_s > limit_s:
            raise InputError(f"{name} is {_shown_above(duration_s, limit_s)} s long, over this demo's limit of "
                             f"{limit_s:g} s (--max_seconds). Upload a shorter clip (e.g. `ffmpeg -i in.mp4 -t "
                             f"{limit_s:g} -c copy out.mp4`), or restart the demo with a larger --max_seconds.")
        return video

    def _decode_error(self, video: str, e: decode.VideoDecodeError) -> InputError:
        name = os.path.basename(video)  # the upload's own name, not the server's temporary path
        return InputError(f"{name} cannot be read as a video: {e.reason.replace(video, name)}. Upload a video file "
                          f"({VIDEO_TYPES}); if this one plays elsewhere, re-encode it (e.g. `ffmpeg -i in -c:v "
                          f"libx264 out.mp4`) and try again.")

    def predict(self, video: str | None) -> dict[str, float]:
        """The /predict endpoint: label -> probability (multi-label: score; regression: target -> value)."""
        video = self.check_upload(video)
        if not self.has_head:
            raise InputError(f"--checkpoint={self.checkpoint} has no classification or regression head, so /predict "
                             f"has no labels to give; call /analyse for its {self.presentation.demo_output}.")
        try:
            return self.presentation.shown_scores(self.runner.scores(video, self.settings)["aggregate"])
        except decode.VideoDecodeError as e:
            raise self._decode_error(video, e) from e

    def analyse(self, video: str | None) -> Analysis:
        """Everything the page shows for one video (the /analyse endpoint)."""
        video = self.check_upload(video)
        try:
            return self._analyse(video)
        except decode.VideoDecodeError as e:
            raise self._decode_error(video, e) from e

    def _analyse(self, video: str) -> Analysis:
        s = self.settings
        labels = caption = gif = None
        rows: list[list[Any]] = []
        notes = []
        if self.has_head:
            entry = self.runner.scores(video, s)
            labels = self.presentation.shown_scores(entry["aggregate"])
            for window in entry.get("windows", []):
                rows.append([round(window["start_s"], 2), round(window["end_s"], 2),
                             *self.presentation.timeline_cells(window["prediction"])])
        elif self.reconstructs:
            result = self.runner.reconstruction(video, self.folder)
            gif = result["gif"]
            notes.append(f"{result['title']}; loss on the masked patches {result['loss']:.4f}.")
        if self.runner.captioner is not None:
            captions = self.runner.captions(video, s)
            caption = captions[len(captions) // 2][2]  # the middle window's: one clip's caption, as predict writes it
            if s.window_s:
                if not rows:
                    rows = [[round(start, 2), round(end, 2)] for start, end, _ in captions]
                for row, (_, _, text) in zip(rows, captions, strict=True):
                    row.append(text)
        if s.window_s and (self.has_head or self.runner.captioner is not None):
            notes.insert(0, f"{len(rows)} window{'s' if len(rows) != 1 else ''} of {s.window_s:g} s, "
                            f"{s.stride_s or s.window_s:g} s apart"
                            + ("; labels are the mean over windows." if self.has_head else "."))
        return Analysis(labels, rows or None, caption, gif, " ".join(notes))


class Page:
    """The Gradio page: upload and examples, then what the checkpoints give (labels or values, a caption, a
    reconstruction), a note and the timeline; its buttons call the handlers as /analyse and /predict."""

    def __init__(self, handlers: Handlers, examples: list[tuple[str, str]], *, checkpoint: str,
                 caption_checkpoint: str):
        self.handlers, self.examples = handlers, examples
        self.checkpoint, self.caption_checkpoint = checkpoint, caption_checkpoint

    def description(self) -> str:
        h = self.handlers
        runner, settings = h.runner, h.settings
        caption = (f" Captions by `{self.caption_checkpoint}`." if runner.captioner is not None
                   and runner.captioner is not runner.model else "")
        kind = f"zero-shot over {len(runner.names)} labels" if runner.task != runner.model.task else runner.model.task
        return (f"# vidjax demo\n`{self.checkpoint}`: {runner.model.model_name} ({kind}). Upload a video "
                f"or pick an example, then press **Predict** to see {h.presentation.demo_description(settings.top_k)}."
                f"{caption} Uploads up to {settings.max_mb:g} MB.")

    def blocks(self):
        """The Gradio Blocks: upload + examples, then labels / timeline / caption / reconstruction as they apply."""
        gr = _gradio()
        h, settings = self.handlers, self.handlers.settings

        def on_page(fn):
            # gr.Error is what Gradio shows on the page (and raises in gradio_client) as the message itself.
            def wrapped(video):
                try:
                    return fn(video)
                except InputError as e:
                    raise gr.Error(str(e), title="Cannot predict this file", print_exception=False) from e
            return wrapped

        with gr.Blocks(title="vidjax demo", analytics_enabled=False) as page:
            gr.Markdown(self.description())
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label="video", sources=["upload"], elem_id="video")
                    button = gr.Button("Predict", variant="primary", elem_id="predict")
                    if self.examples:
                        gr.Examples([[path] for path, _ in self.examples], inputs=[video],
                                    example_labels=[label for _, label in self.examples], label="examples")
                with gr.Column():
                    outputs = []
                    if h.has_head and not h.presentation.ranks_labels:
                        outputs.append(gr.JSON(label="values", elem_id="labels"))
                    elif h.has_head:
                        outputs.append(gr.Label(num_top_classes=settings.top_k, label=f"top {settings.top_k}",
                                                elem_id="labels"))
                    if h.runner.captioner is not None:
                        outputs.append(gr.Textbox(label="caption", interactive=False))
                    if h.reconstructs:
                        outputs.append(gr.Image(label="original | masked input | reconstruction", type="filepath"))
                    note = gr.Markdown()
                    timeline = gr.Dataframe(headers=h.timeline_headers, label="timeline (one row per window)",
                                            interactive=False, visible=bool(settings.window_s))
            outputs += [note, timeline]

            def analyse(path):
                result = h.analyse(path)
                shown = [result.labels] if h.has_head else []
                shown += [result.caption] if h.runner.captioner is not None else []
                shown += [result.gif] if h.reconstructs else []
                return (*shown, result.note, result.timeline or [])

            button.click(on_page(analyse), inputs=[video], outputs=outputs, api_name="analyse",
                         concurrency_id="model", concurrency_limit=settings.concurrency)
            # /predict for scripts: the same prediction as plain {label: value} JSON, from components the page hides.
            hidden = gr.Button(visible=False)
            hidden.click(on_page(h.predict), inputs=[video], outputs=[gr.JSON(visible=False)],
                         api_name="predict", concurrency_id="model", concurrency_limit=settings.concurrency)
        return page


class Demo:
    """A checkpoint's demo (and a captioner's, with --caption_checkpoint): the checkpoints checked, the examples
    written, and its three parts: `runner` (the model calls), `handlers` (each request: limits, refusals, what the
    task shows) and `page` (the layout). `launch` serves it; `check_upload`, `predict`, `analyse` and
    `timeline_headers` are the handlers'."""

    def __init__(self, model: pretrained.Pretrained, captioner: pretrained.PretrainedCaptioner | None = None,
                 settings: Settings | None = None, *, checkpoint: str = "", caption_checkpoint: str = "",
                 labels: list[str] | None = None, temperature: float = 1.0,
                 onnx_runner: onnx_model.Runner | None = None):
        label_features = None
        if labels is not None:
            try:
                label_features = zero_shot.label_features(model, labels, checkpoint)
            except ValueError as e:
                raise DemoError(str(e)) from e
        elif isinstance(model, pretrained.PretrainedVideoText):
            raise DemoError(f"--checkpoint={checkpoint} is a video-text checkpoint of {model.model_name}: it scores "
                            f"videos against text, so give it labels, e.g. --labels=\"a dog running;a cat "
                            f"sleeping\" (or --labels_file=FILE, one per line).")
        task = predictions.ZERO_SHOT_READOUT if labels else model.task
        presentation = tasks.presentation_of(task) if task in tasks.available() else None
        # What the task shows (`Presentation.demo_output`) needs the head it names: a pre-training's decoder;
        # zero-shot labels need the text tower alone (`label_features` checked it).
        fits = presentation is not None and (bool(labels) or presentation.demo_head in (None, model.config.get("head")))
        if not fits or presentation.demo_output is None:
            raise DemoError(f"--checkpoint={checkpoint} is a backbone checkpoint of {model.model_name} (head "
                            f"{model.config.get('head')!r}): it has no head to predict with and no decoder to "
                            f"reconstruct with, so the demo has nothing to show. Fine-tune it first (a config with "
                            f"config.init_from={checkpoint}), or use `python -m vidjax.extract` for embeddings.")
        if captioner is None and isinstance(model, pretrained.PretrainedCaptioner):
            captioner, caption_checkpoint = model, checkpoint
        if captioner is not None:
            if not isinstance(captioner, pretrained.PretrainedCaptioner):
                raise DemoError(f"--caption_checkpoint={caption_checkpoint} is a {captioner.model_name} checkpoint, "
                                f"not a captioner (vidjax.models.captioner); pass a converted "
                                f"VisionEncoderDecoderModel or a captioning run, or leave the flag out.")
            try:
                _ = captioner.tokenizer  # read now: one without a tokenizer fails here, not at the first upload
            except (ValueError, ImportError) as e:
                raise DemoError(f"--caption_checkpoint={caption_checkpoint}: {e}") from e
        settings = settings or Settings()
        self.model, self.captioner = model, captioner
        self.folder = tempfile.mkdtemp(prefix="vidjax-demo-")
        self.runner = ModelRunner(model, captioner, settings.max_batch, labels=labels,
                                  label_features=label_features, temperature=temperature,
                                  onnx_runner=onnx_runner)
        self.handlers = Handlers(self.runner, presentation, settings, folder=self.folder, checkpoint=checkpoint)
        self.examples = write_examples(model, self.folder, settings) if settings.num_examples else []
        self.page = Page(self.handlers, self.examples, checkpoint=checkpoint, caption_checkpoint=caption_checkpoint)

    @property
    def settings(self) -> Settings:
        return self.handlers.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self.handlers.settings = settings

    @property
    def timeline_headers(self) -> list[str]:
        return self.handlers.timeline_headers

    def check_upload(self, video: str | None) -> str:
        return self.handlers.check_upload(video)

    def predict(self, video: str | None) -> dict[str, float]:
        return self.handlers.predict(video)

    def analyse(self, video: str | None) -> Analysis:
        return self.handlers.analyse(video)

    def blocks(self):
        return self.page.blocks()

    def launch(self, *, port: int | None = DEFAULT_PORT, host: str = "127.0.0.1", share: bool = False, **kwargs):
        """Builds the page and serves it; blocks until Ctrl-C unless `prevent_thread_lock=True` is passed. Returns
        the Gradio Blocks (`.close()` stops the server)."""
        page = self.page.blocks()
        self.runner.warm_up()
        page.queue(default_concurrency_limit=self.settings.concurrency, max_size=self.settings.queue_size)
        for _ in range(LAUNCH_ATTEMPTS):
            try:
                with _no_proxy_for(host):
                    page.launch(server_name=host, server_port=port, share=share, allowed_paths=[self.folder],
                                show_error=True, **kwargs)
                return page
            except ValueError as e:
                # Gradio asks its own new server for the page once (3 s) and gives up when the answer is late, as
                # it can be on a busy machine; the server it started is then stopped and started again.
                page.close(verbose=False)
                if UNREACHABLE not in str(e) or share:
                    raise
        raise DemoError(f"the server started at http://{host}:{port}/ did not answer Gradio's check that it serves "
                        f"({LAUNCH_ATTEMPTS} starts): the machine may be too busy, or a firewall blocks {host}; "
                        f"try again, or another --host")

    def cleanup(self) -> None:
        """Removes the examples and reconstructions written to the demo's temporary folder."""
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def _no_proxy_for(host: str) -> Iterator[None]:
    """Adds the server's own addresses to no_proxy while Gradio starts it: Gradio sends its new server two requests
    (its start-up events, then the check that the page answers), which an http_proxy in the environment would
    otherwise get (a proxy that cannot reach this machine's 127.0.0.1 makes the start fail)."""
    saved = {name: os.environ.get(name) for name in ("no_proxy", "NO_PROXY")}
    own = [h for h in (host, "127.0.0.1", "localhost", "::1") if h and h != "0.0.0.0"]
    listed = [h for value in saved.values() if value for h in value.split(",") if h.strip()]
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = ",".join(dict.fromkeys(listed + own))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ------------------------------------------------------------------------------------------------ the command


def _parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser("python -m vidjax.demo", __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR",
                        help="training workdir, WORKDIR/checkpoints/<step>, a converted checkpoint, or a Hugging "
                             "Face Hub name (owner/name[@REV], owner/name/FILE.pth)")
    source.add_argument("--onnx", metavar="FILE",
                        help="serve a classifier's ONNX file (python -m vidjax.export --out=FILE.onnx) with ONNX "
                             "Runtime instead of a checkpoint with jax")
    parser.add_argument("--caption_checkpoint", default="", metavar="DIR",
                        help="also caption each video with this captioner checkpoint (default: none)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to serve on (default {DEFAULT_PORT}; 0: the first free one from {DEFAULT_PORT} up)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--share", action="store_true",
                        help="also serve through a temporary public gradio.live link (anyone with it can upload)")
    parser.add_argument("--max_mb", type=float, default=DEFAULT_MAX_MB,
                        help=f"largest video accepted, in megabytes (default {DEFAULT_MAX_MB:g})")
    parser.add_argument("--max_seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"longest video accepted, in seconds (default {DEFAULT_MAX_SECONDS:g})")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"requests served at the same time; they decode side by side and share model calls "
                             f"(default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--queue_size", type=int, default=DEFAULT_QUEUE_SIZE,
                        help=f"requests that may wait in the queue; one more is told the queue is full "
                             f"(default {DEFAULT_QUEUE_SIZE})")
    parser.add_argument("--max_batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"most clips in one model call, from all the requests ready at once (default "
                             f"{DEFAULT_MAX_BATCH}; rounded up to a multiple of the device count)")
    parser.add_argument("--window", type=float, default=4.0, metavar="SECONDS",
                        help="predict windows of this many seconds, shown as a timeline (default 4; 0: one "
                             "prediction for the whole video, no timeline)")
    parser.add_argument("--stride", type=float, default=0.0, metavar="SECONDS",
                        help="seconds between window starts (default: the window length)")
    parser.add_argument("--top_k", type=int, default=5, help="classes shown (default 5)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="multi-label: the score at which a class counts as present (default 0.5)")
    parser.add_argument("--num_beams", type=int, default=3, help="captioner: beam search width (default 3)")
    zero_shot.add_label_flags(parser, "show the zero-shot scores of these free-text labels")
    parser.add_argument("--examples", type=int, default=3,
                        help="bundled example clips of the embedded dataset (default 3; 0 for none)")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    if not 0 <= args.port <= 65535:
        return f"--port={args.port} is not a port number (0 to 65535; 0 picks a free one)."
    if args.max_mb <= 0:
        return f"--max_mb={args.max_mb:g} must be positive (megabytes)."
    if args.max_seconds <= 0:
        return f"--max_seconds={args.max_seconds:g} must be positive (seconds)."
    if args.window < 0 or args.stride < 0:
        return "--window and --stride are seconds and cannot be negative."
    if args.stride and not args.window:
        return "--stride needs --window (the window length in seconds)."
    for flag in ("top_k", "num_beams", "concurrency", "queue_size", "max_batch"):
        if getattr(args, flag) < 1:
            return f"--{flag}={getattr(args, flag)} must be at least 1."
    if args.examples < 0:
        return f"--examples={args.examples} cannot be negative."
    if not 0.0 < args.threshold < 1.0:
        return f"--threshold={args.threshold} must be between 0 and 1 (a sigmoid score)."
    if not args.temperature > 0:
        return f"--temperature={args.temperature} must be positive."
    if args.labels or args.labels_file:
        try:
            zero_shot.read_labels(args.labels, args.labels_file)
        except ValueError as e:
            return str(e)
    if args.onnx and (args.caption_checkpoint or args.labels or args.labels_file):
        return ("--onnx serves a classifier's scores alone; --caption_checkpoint and --labels need checkpoints "
                "(--checkpoint) served with jax.")
    return None


def _gradio_problem(args: argparse.Namespace) -> str | None:
    """Why no page can be served (the demo extra not installed), checked before any checkpoint is loaded: a missing
    extra is the first thing to hear about."""
    try:
        _gradio()
    except DemoError as e:
        return str(e)
    return None


def _load(args: argparse.Namespace) -> tuple[pretrained.Pretrained, onnx_model.Runner | None,
                                              pretrained.PretrainedCaptioner | None] | None:
    """(the model served, the ONNX file's runner with --onnx, the --caption_checkpoint captioner), or None after an
    `error:` line naming the checkpoint or file that does not load."""
    runner = None
    if args.onnx:
        try:
            model, runner = onnx_model.load(args.onnx, args.max_batch)
        except ValueError as e:
            print(f"error: --onnx={args.onnx}: {e}", file=sys.stderr)
            return None
    else:
        model = pretrained.load_for_command(args.checkpoint)
        if model is None:
            return None
    captioner = None
    if args.caption_checkpoint:
        captioner = pretrained.load_for_command(args.caption_checkpoint)
        if captioner is None:
            return None
    return model, runner, captioner


def main(argv: list[str] | None = None) -> int:
    try:
        started = cli.start(_parser(), argv, _check_args, _gradio_problem, load=_load)
        if started is None:
            return 2
        args, (model, runner, captioner) = started
        return _serve(args, model, runner, captioner)
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM while loading, compiling or serving: the one line
        return cli.stopped(err, STOPPED)


def _serve(args: argparse.Namespace, model: pretrained.Pretrained, runner: onnx_model.Runner | None,
           captioner: pretrained.PretrainedCaptioner | None) -> int:
    """Starts the server of the loaded checkpoints and blocks until it is stopped; the exit status."""
    source = args.onnx or args.checkpoint
    settings = Settings(top_k=args.top_k, threshold=args.threshold, window_s=args.window, stride_s=args.stride,
                        num_beams=args.num_beams, max_mb=args.max_mb, max_seconds=args.max_seconds,
                        num_examples=args.examples, concurrency=args.concurrency, queue_size=args.queue_size,
                        max_batch=args.max_batch)
    try:
        labels = zero_shot.read_labels(args.labels, args.labels_file) if args.labels or args.labels_file else None
        demo = Demo(model, captioner, settings, checkpoint=source, caption_checkpoint=args.caption_checkpoint,
                    labels=labels, temperature=args.temperature, onnx_runner=runner)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        # Gradio's own start-up lines name its Python API (`share=True`); these name this command's flags.
        # Port 0 is Gradio's None, its search for a free port (given 0 itself, it checks its server at port 0).
        page = demo.launch(port=args.port or None, host=args.host, share=args.share, quiet=True,
                           prevent_thread_lock=True)
        public = f" and {page.share_url}" if page.share_url else " (--share for a temporary public link)"
        print(f"Serving the demo of {source} at {page.local_url}{public}; Ctrl-C stops it.", flush=True)
        try:
            # Not Gradio's `block_thread`, which takes Ctrl-C as a normal end (its own line, exit 0): the signal
            # reaches `main`, which says it stopped (130 for SIGINT, 143 for SIGTERM).
            while page.is_running:
                time.sleep(0.1)
        finally:
            page.close(verbose=False)
    except OSError as e:  # the port is taken, or the address is not this machine's
        print(f"error: cannot serve on {args.host}:{args.port} ({e}); pick another --port (or --host).",
              file=sys.stderr)
        return 2
    except DemoError as e:  # the server started but never answered
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        demo.cleanup()
    return 0


def run_command() -> NoReturn:
    """`python -m vidjax.demo`: what its entry module calls."""
    cli.guard(main)
