r"""Top-5 of a video file from an ONNX model written by `python -m vidjax.export --out=model.onnx`, with PyAV, numpy
and onnxruntime alone (no jax, no vidjax): what a server outside vidjax does, in one short file to copy.

  pip install av numpy onnxruntime
  python scripts/onnx_predict.py model.onnx clip.mp4 [other.mp4 ...] [--top_k=5] [--json]

The clip is read as `python -m vidjax.predict` reads it by default (one clip, one centre crop), from the file's
metadata (metadata_props "vidjax": the clip spec): `num_frames` frames `sampling_rate` apart from the window in the
middle of the video (a shorter video repeats its last frame), each frame turned upright and resized so its short
side is `short_side` (libswscale's bilinear, in the colour conversion), then the centre `image_size` square. The
model normalises uint8 video itself; a model exported with --float_input gets (x/255 - mean)/std here. Scores: softmax
(classification), sigmoid (multi-label) or the raw values (regression), as the metadata's "scores" says.

Prints, per video, its path, then one "  label  score" line per class, best first (the same classes and order as
`python -m vidjax.predict` prints); --json prints one JSON object per video instead ({"path", "top_k": [{"label",
"score"}]}). Exit status 0, 1 when a video failed to decode (the others are still printed), 2 for a model file that
is not a vidjax classifier export.
"""

from __future__ import annotations

import argparse
import json
import sys

import av
import numpy as np
import onnxruntime as ort


def load(path: str) -> tuple[ort.InferenceSession, dict]:
    """The ONNX Runtime session of `path` (on CPU, or the GPU where onnxruntime-gpu is installed) and its vidjax
    metadata."""
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not its notes on the graph's unused constants
    session = ort.InferenceSession(path, options, providers=providers)
    props = session.get_modelmeta().custom_metadata_map
    if "vidjax" not in props:
        raise ValueError(f"{path} has no vidjax metadata: it was not written by `python -m vidjax.export`.")
    return session, json.loads(props["vidjax"])


def frame_count(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Frames in the stream: the header's count, else its packets counted."""
    if stream.frames > 0:
        return int(stream.frames)
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def read_clip(path: str, clip: dict) -> np.ndarray:
    """uint8 (T, S, S, 3): the centre window's frames, upright, short side resized, centre-cropped."""
    t, rate, short, size = clip["num_frames"], clip["sampling_rate"], clip["short_side"], clip["image_size"]
    with av.open(path) as container:
        stream = container.streams.video[0]
        n = frame_count(container, stream)
        start = max(0, n - t * rate) // 2
        indices = np.minimum(start + np.arange(t) * rate, n - 1)
        wanted, frames = set(indices.tolist()), {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames[i] = upright_resized(frame, short)
            if i >= indices[-1]:
                break
    if not frames:
        raise ValueError("no frame decoded")
    last = max(frames)
    video = np.stack([frames[min(i, last)] for i in indices.tolist()])
    h, w = video.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return video[:, top:top + size, left:left + size]


def upright_resized(frame: av.VideoFrame, short: int) -> np.ndarray:
    """RGB of `frame` turned upright (its display rotation) with its short side `short` (bilinear)."""
    turns = round((frame.rotation or 0) / 90) % 4
    shown_h, shown_w = (frame.width, frame.height) if turns % 2 else (frame.height, frame.width)
    if shown_h <= shown_w:
        height, width = short, max(1, round(shown_w * short / shown_h))
    else:
        height, width = max(1, round(shown_h * short / shown_w)), short
    coded_w, coded_h = (height, width) if turns % 2 else (width, height)
    resize = {} if (coded_w, coded_h) == (frame.width, frame.height) else {
        "width": coded_w, "height": coded_h, "interpolation": "BILINEAR"}
    rgb = frame.to_ndarray(format="rgb24", **resize)
    return np.rot90(rgb, turns) if turns else rgb


def scores_of(logits: np.ndarray, kind: str) -> np.ndarray:
    if kind == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def predict(session: ort.InferenceSession, meta: dict, video: np.ndarray, top_k: int) -> list[dict]:
    """The top_k (label, score) of one uint8 clip (T, S, S, 3), best first."""
    x = video[None]
    if meta["input"]["normalised"]:
        c = meta["clip"]
        x = ((x.astype(np.float32) / 255.0 - np.float32(c["mean"])) / np.float32(c["std"])).astype(np.float32)
    logits = session.run(None, {meta["input"]["name"]: x})[0][0].astype(np.float64)
    scores = scores_of(logits, meta["scores"])
    names = meta.get("class_names") or meta.get("target_names") or [f"class {i}" for i in range(len(scores))]
    best = np.argsort(-scores, kind="stable")[:top_k]
    return [{"label": names[i], "score": float(scores[i])} for i in best]


def reconstruct(session: ort.InferenceSession, meta: dict, video: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A reconstruction file's (`--output=reconstruction`) prediction of the masked tubelets, float32 (b, masked,
    tubelet pixels), of uint8 clips (b, T, S, S, 3) and their mask bool (b, tokens), True = masked. The model
    reconstructs exactly the metadata's num_masked tokens a clip: a mask of another shape or count is refused with
    one line (the file alone would answer it with NaN)."""
    tokens, masked = meta["mask"]["shape"][-1], meta["num_masked"]
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (len(video), tokens):
        raise ValueError(f"mask must be bool (b, {tokens}), a row of {tokens} tokens for each of the {len(video)} "
                         f"clips; got {mask.dtype} {mask.shape}")
    counts = mask.sum(axis=1)
    wrong = np.flatnonzero(counts != masked)
    if len(wrong):
        raise ValueError(f"mask row {wrong[0]} has {counts[wrong[0]]} masked tokens; this model reconstructs exactly "
                         f"{masked} a clip (its metadata's num_masked)")
    x = np.asarray(video)
    if meta["input"]["normalised"]:
        c = meta["clip"]
        x = ((x.astype(np.float32) / 255.0 - np.float32(c["mean"])) / np.float32(c["std"])).astype(np.float32)
    return session.run(None, {meta["input"]["name"]: x, "mask": mask})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an ONNX file from python -m vidjax.export --out=FILE.onnx (a classifier)")
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per video")
    args = parser.parse_args(argv)
    try:
        session, meta = load(args.model)
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own types for a file it cannot read)
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 2
    if meta.get("function") != "logits":
        run = " (run it with this file's `reconstruct`)" if meta.get("function") == "reconstruction" else ""
        print(f"error: {args.model} computes {meta.get('function')}, not a head's logits{run}: export a checkpoint "
              f"with a head (--output=logits) for top-k.", file=sys.stderr)
        return 2
    failed = 0
    for path in args.videos:
        try:
            top = predict(session, meta, read_clip(path, meta["clip"]), args.top_k)
        except (av.FFmpegError, OSError, ValueError) as e:
            print(f"error: {path}: {e}; skipped", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"path": path, "top_k": top}))
        else:
            width = max(len(r["label"]) for r in top)
            print("\n".join([path, *(f"  {r['label']:<{width}}  {r['score']:.3f}" for r in top)]), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
