"""The web demo under load: scripts/load_demo.py's 200 requests from 16 clients against a demo on 127.0.0.1 are all
answered or refused correctly with steady memory; concurrent requests share model calls; the limits' messages
show sizes that read as over the limit; scripts/bench_serving.py prints its table for an exported model.

No timed assertion: latency and throughput are reported by the scripts, not checked here.
"""

import importlib.util
import pathlib
import threading
import time

import numpy as np
import pytest
from test_predict import make_clip

from vidjax import pretrained
from vidjax.commands import demo, export
from vidjax.commands.convert import convert
from vidjax.tasks import predictions

pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

# Gradio's queue calls pandas options that pandas 3 deprecates: its own business, not this test's.
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSIFIER = ROOT / "tests" / "fixtures" / "parity" / "videomae_classification_bin" / "source"


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("load_checkpoint") / "classifier"
    convert(from_hf=str(CLASSIFIER), out=str(out))  # a tiny random VideoMAE: 4 frames, 32 px, 5 classes
    return str(out)


@pytest.mark.slow
def test_200_requests_from_16_clients_all_answered_or_refused_with_steady_memory(classifier):
    report = script("load_demo").load_test(classifier, requests=200, clients=16)
    assert report["wrong"] == [], report["wrong"][:5]
    assert (report["good"], report["bad"]) == (120, 80)  # corrupt, not a video, over --max_mb, over --max_seconds
    assert report["answered_correctly"] == 120 and report["refused_as_expected"] == 80
    assert report["server_errors"] == 0
    assert report["rss_mb"]["growth"] < 0.10, report["rss_mb"]


def test_requests_waiting_together_share_one_model_call(classifier):
    model = pretrained.load(classifier)
    fn = predictions.scores_fn(model.task)
    batcher = demo.ClipBatcher(model, fn, 16)
    sizes = [r.batch_size for r in batcher.runners]  # 1, 4, 16 rounded up to a multiple of the device count
    assert sizes[-1] == 16 and len(sizes) <= 3 and all(size % batcher.runners[0].mesh.size == 0 for size in sizes)
    rng = np.random.default_rng(0)
    requests = [list(rng.integers(0, 256, (2, *batcher.clip_shape), dtype=np.uint8)) for _ in range(4)]
    results = [None] * len(requests)
    batcher._busy = True  # a call in flight: the four requests queue behind it

    def send(i):
        results[i] = list(batcher.run(iter(requests[i])))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    while len(batcher._queue) < 8:  # every request's clips queued
        time.sleep(0.01)
    with batcher._changed:
        batcher._busy = False
        batcher._changed.notify_all()
    for thread in threads:
        thread.join(timeout=60)
    assert batcher.calls == 1 and batcher.clips_run == 8  # one call for the four requests
    direct = pretrained.BatchRunner(model, fn, 8)
    for clips, rows in zip(requests, results, strict=True):
        np.testing.assert_allclose(rows, list(direct.run(clips)), rtol=1e-5, atol=1e-6)
    # A request of more clips than --max_batch: several calls, rows in order.
    many = [clip for clips in requests for clip in clips] * 3
    np.testing.assert_allclose(list(batcher.run(iter(many))), list(direct.run(many)), rtol=1e-5, atol=1e-6)
    assert batcher.calls == 3


def test_limits_are_checked_before_decoding_and_shown_readably(classifier, tmp_path):
    app = demo.Demo(pretrained.load(classifier), settings=demo.Settings(max_mb=0.01, max_seconds=1.5,
                                                                         num_examples=0), checkpoint="/ckpt/x")
    try:
        small = tmp_path / "small.mp4"
        small.write_bytes(bytes(50 * 1024))  # not a video at all: refused for its size, before any decoding
        with pytest.raises(demo.InputError, match=r"small.mp4 is 0\.05 MB, over this demo's limit of 0\.01 MB"):
            app.check_upload(str(small))
        app.settings = demo.Settings(max_mb=1, max_seconds=1.99, num_examples=0)
        clip = make_clip(tmp_path / "clip.mp4")  # 2 s
        with pytest.raises(demo.InputError, match=r"clip.mp4 is 2\.0 s long, over this demo's limit of 1\.99 s "
                                                  r"\(--max_seconds\)"):
            app.check_upload(clip)
    finally:
        app.cleanup()


def test_help_states_the_serving_flags_and_bad_values_exit_2(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--concurrency", "--queue_size", "--max_batch", "--max_seconds"):
        assert flag in text
    assert "(default 4)" in text and "(default 64)" in text and "(default 16;" in text and "(default 600)" in text
    for argv, message in ((["--concurrency=0"], "--concurrency=0 must be at least 1"),
                          (["--max_seconds=0"], "--max_seconds=0 must be positive")):
        assert demo.main(["--checkpoint=/nowhere", *argv]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_bench_serving_prints_a_row_per_batch_size_and_runtime(classifier, tmp_path, capsys):
    """The StableHLO file and the ONNX file of one checkpoint, each alone (--exported) and both from one random model
    (--model, alternating rounds, the logits compared)."""
    import json

    from vidjax.pretrained import onnx_export

    model = pretrained.load(classifier)
    paths = {"jax": str(tmp_path / "model.vjx.npz"), "onnx": str(tmp_path / "model.onnx")}
    export.write(paths["jax"], *export.export(model))
    onnx_export.write(paths["onnx"], onnx_export.export_onnx(model, scores=predictions.score_function(model.task))[0])
    for runtime, path in paths.items():
        out = tmp_path / f"{runtime}.json"
        assert script("bench_serving").main([f"--exported={path}", "--batch_sizes=1,3", "--seconds=0",
                                             f"--json={out}"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[2].startswith("| runtime | batch | warm-up (s) | ms / call p50 | p95 |")
        assert [(line.split("|")[1].strip(), line.split("|")[2].strip()) for line in lines[4:]] == [
            (runtime, "1"), (runtime, "3")]
        rows = json.loads(out.read_text())["rows"]
        assert [r["batch"] for r in rows] == [1, 3] and all(r["clips_per_s"] > 0 and r["calls"] >= 3 and
                                                             r["ms_p95"] >= r["ms_p50"] for r in rows)
    out = tmp_path / "both.json"
    assert script("bench_serving").main(["--model=videomae", "--variant=Mu/8", "--frames=2", "--size=16",
                                         "--runtimes=jax,onnx", "--batch_sizes=1,2", "--seconds=0",
                                         f"--json={out}"]) == 0
    report = json.loads(out.read_text())
    assert [(r["runtime"], r["batch"]) for r in report["rows"]] == [("jax", 1), ("onnx", 1), ("jax", 2), ("onnx", 2)]
    assert all(r["vs_first_runtime"] > 0 for r in report["rows"]) and report["max_difference"] < 1e-4
    assert "largest difference between the runtimes' logits" in capsys.readouterr().out
