"""A classifier exported to ONNX (`python -m vidjax.export --out=FILE.onnx`) served by ONNX Runtime where vidjax
would serve its checkpoint: what `python -m vidjax.demo --onnx FILE` runs.

`load(path)` gives the `Pretrained` that describes the file (its clip spec, task, class or target names and the
frame stride, all from its metadata; no jax weights: `graphdef` and `params` are None, so `read_views` and the
readouts work and nothing that needs the weights does) and a `Runner`, whose `run(clips)` has
`pretrained.BatchRunner.run`'s signature and gives each clip's scores (softmax, sigmoid or the values, as the
metadata's "scores" says) from ONNX Runtime's CPU (or CUDA, with onnxruntime-gpu) provider. Needs onnxruntime:
`pip install 'vidjax[onnx]'`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

import ml_collections
import numpy as np

from vidjax import pretrained


class Runner:
    """Scores of uint8 clips (T, S, S, 3) from an ONNX Runtime session, `batch_size` clips a call (the last call
    holds the rest: the file's batch is dynamic, so nothing is padded)."""

    step = 1  # batch sizes need no rounding: no devices to split over

    def __init__(self, session, metadata: dict, batch_size: int):
        self.session, self.batch_size = session, int(batch_size)
        self.input, self.scores, self.normalised = (metadata["input"]["name"], metadata["scores"],
                                                    metadata["input"]["normalised"])
        clip = metadata["clip"]
        self.mean, self.std = np.float32(clip["mean"]), np.float32(clip["std"])

    def run(self, clips: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for chunk in pretrained.batched(clips, self.batch_size):
            video = np.stack(chunk)
            if self.normalised:  # a --float_input file: normalised here, as vidjax normalises
                video = ((video.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)
            logits = self.session.run(None, {self.input: video})[0].astype(np.float32)
            yield from _scores(logits, self.scores)


def _scores(logits: np.ndarray, kind: str) -> np.ndarray:
    if kind == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def open_session(path: str, *, cpu: bool = False):
    """An `onnxruntime.InferenceSession` of `path` on CUDA's provider where onnxruntime-gpu has one (unless `cpu`),
    else the CPU's, logging errors only (not its notes on constants the graph leaves unused)."""
    import onnxruntime as ort  # the optional extra

    wanted = ("CPUExecutionProvider",) if cpu else ("CUDAExecutionProvider", "CPUExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=[p for p in wanted if p in ort.get_available_providers()])


def load(path: str, batch_size: int = 16) -> tuple[pretrained.Pretrained, Runner]:
    """(the file's `Pretrained` description, its `Runner`); a ValueError saying what is wrong with the file."""
    try:
        import onnxruntime  # noqa: F401  (the optional extra)
    except ImportError as e:
        raise ValueError("serving an ONNX file needs onnxruntime: pip install 'vidjax[onnx]'.") from e
    if not os.path.isfile(path):
        raise ValueError("no such file; write one with `python -m vidjax.export --checkpoint=DIR --out=FILE.onnx`.")
    try:
        session = open_session(path)
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own types for a file it cannot read)
        raise ValueError(f"ONNX Runtime cannot load it ({type(e).__name__}: {e}).") from e
    props = session.get_modelmeta().custom_metadata_map
    if "vidjax" not in props:
        raise ValueError("it has no vidjax metadata: it was not written by `python -m vidjax.export`.")
    meta = json.loads(props["vidjax"])
    if meta.get("function") != "logits":
        raise ValueError(f"it computes {meta.get('function')}, not a head's scores; export a checkpoint with a head "
                         f"(--output=logits) to serve it.")
    clip = meta["clip"]
    num_outputs = int(meta["output"]["shape"][-1])
    config = ml_collections.ConfigDict(dict(num_frames=clip["num_frames"], image_size=clip["image_size"],
                                            head="classification", num_classes=num_outputs))
    preprocessing = {"mean": clip["mean"], "std": clip["std"], "num_frames": clip["num_frames"],
                     "image_size": clip["image_size"], "short_side": clip["short_side"]}
    model = pretrained.Pretrained(meta["model_name"], config, preprocessing, meta.get("class_names"), None, None,
                                  task=meta.get("task") or "classification", target_names=meta.get("target_names"),
                                  sampling_rate=clip["sampling_rate"] if clip["sampling_rate_recorded"] else None)
    return model, Runner(session, meta, batch_size)
