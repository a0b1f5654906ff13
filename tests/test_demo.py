"""vidjax.demo through its running server: /predict equals `python -m vidjax.predict`, the page's timeline and
caption equal predict's windows and captions, a pre-training checkpoint's GIF equals `vidjax.visualize`'s, and bad
uploads (not a video, corrupt, too large) get a message while the server goes on serving.

Two servers, each started once for the module: a classifier (the converted parity fixture: 5 named classes) with
the tiny captioner of tests/test_predict_caption.py as --caption_checkpoint, and a VideoMAE pre-training
checkpoint.
"""

import json
import os
import pathlib
import signal
import socket
import sys

import numpy as np
import pytest
from test_predict import make_clip
from test_predict_caption import write_captioner

from vidjax import cli, pretrained
from vidjax.commands import demo, predict
from vidjax.commands.convert import convert
from vidjax.pretrained import reconstruction, windows
from vidjax.tasks import predictions

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

# Gradio's queue calls pandas options that pandas 3 deprecates: its own business, not this test's.
pytestmark = [pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
WINDOW = 1.0  # seconds: two windows over the 2 s test clip
MAX_MB = 0.25


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model, captioner=None, *, checkpoint, caption_checkpoint="", num_examples=1):
    """(Demo, its Blocks, a gradio_client.Client) of a server on a free port, not blocking this thread."""
    settings = demo.Settings(window_s=WINDOW, max_mb=MAX_MB, num_examples=num_examples)
    app = demo.Demo(model, captioner, settings, checkpoint=checkpoint, caption_checkpoint=caption_checkpoint)
    port = free_port()
    page = app.launch(port=port, prevent_thread_lock=True, quiet=True)
    return app, page, Client(f"http://127.0.0.1:{port}/", verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_files")
    good = make_clip(folder / "clip.mp4", seed=5)
    data = pathlib.Path(good).read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("this is a text file, not a video\n")
    # A valid video followed by padding: over the limit, so refused before any decoding.
    (folder / "large.mp4").write_bytes(data + bytes(int(MAX_MB * 2**20)))
    return {"good": good, "truncated": str(folder / "truncated.mp4"), "text": str(folder / "notes.txt"),
            "large": str(folder / "large.mp4")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_checkpoints")
    convert(from_hf=str(FIXTURES / "videomae_classification_bin" / "source"), out=str(folder / "classifier"))
    convert(from_hf=str(FIXTURES / "videomae_pretrain" / "source"), out=str(folder / "pretrain"))
    return {"classifier": str(folder / "classifier"), "pretrain": str(folder / "pretrain"),
            "captioner": write_captioner(folder / "captioner", folder / "tokenizer")}  # tokenizers: a test dependency


@pytest.fixture(scope="module")
def classifier_server(checkpoints):
    model = pretrained.load(checkpoints["classifier"])
    captioner = pretrained.load(checkpoints["captioner"])
    app, page, client = serve(model, captioner, checkpoint=checkpoints["classifier"],
                              caption_checkpoint=checkpoints["captioner"])
    yield app, client
    page.close()
    app.cleanup()


@pytest.fixture(scope="module")
def pretrain_server(checkpoints):
    app, page, client = serve(pretrained.load(checkpoints["pretrain"]), checkpoint=checkpoints["pretrain"],
                              num_examples=0)
    yield app, client
    page.close()
    app.cleanup()


def predict_and_analyse(app, video):
    """(/predict, /analyse) of `video` from `app` served on a free port, then stopped and cleaned up."""
    port = free_port()
    page = app.launch(port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        return (client.predict(handle_file(video), api_name="/predict"),
                client.predict(handle_file(video), api_name="/analyse"))
    finally:
        page.close()
        app.cleanup()


def predict_json(checkpoint, video, tmp_path):
    """`python -m vidjax.predict --window=WINDOW --json` of one video: its JSON entry."""
    out = tmp_path / "predict.json"
    assert predict.main([f"--checkpoint={checkpoint}", video, f"--window={WINDOW}", f"--json={out}"]) == 0
    return json.loads(out.read_text())["videos"][0]


def test_predict_endpoint_equals_vidjax_predict(classifier_server, checkpoints, files, tmp_path):
    _, client = classifier_server
    got = client.predict(handle_file(files["good"]), api_name="/predict")
    expected = predict_json(checkpoints["classifier"], files["good"], tmp_path)
    top = expected["aggregate"]["top_k"]
    assert list(got) == [row["label"] for row in top] and len(got) == 5  # top 5, best first
    np.testing.assert_allclose(list(got.values()), [row["probability"] for row in top], rtol=1e-6)
    assert set(got) <= {f"action_{i}" for i in range(5)}


def test_page_shows_labels_timeline_and_caption(classifier_server, checkpoints, files, tmp_path):
    app, client = classifier_server
    labels, caption, note, timeline = client.predict(handle_file(files["good"]), api_name="/analyse")
    expected = predict_json(checkpoints["classifier"], files["good"], tmp_path)
    assert labels["label"] == expected["aggregate"]["top_k"][0]["label"]
    np.testing.assert_allclose([c["confidence"] for c in labels["confidences"]],
                               [row["probability"] for row in expected["aggregate"]["top_k"]], rtol=1e-6)
    assert note.startswith("2 windows of 1 s, 1 s apart; labels are the mean over windows")
    rows = timeline["data"]
    assert [row[:2] for row in rows] == [[w["start_s"], w["end_s"]] for w in expected["windows"]] == [
        [0.0, 1.0], [1.0, 2.0]]
    for row, window in zip(rows, expected["windows"], strict=True):
        best = window["prediction"]["top_k"][0]
        assert row[2] == best["label"] and row[3] == pytest.approx(best["probability"], abs=5e-5)
    assert timeline["headers"] == ["start (s)", "end (s)", "top label", "score", "caption"]
    captions = windows.caption_video(app.captioner, files["good"], window_s=WINDOW, num_beams=3, max_new_tokens=30)
    assert [row[4] for row in rows] == [text for _, _, text in captions]
    assert caption == captions[1][2] and caption  # the middle window's


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(classifier_server, files):
    _, client = classifier_server
    for name, message in (("text", "notes.txt cannot be read as a video"),
                          ("truncated", "truncated.mp4 cannot be read as a video"),
                          ("large", f"over this demo's limit of {MAX_MB:g} MB (--max_mb)")):
        with pytest.raises(AppError) as error:
            client.predict(handle_file(files[name]), api_name="/predict")
        text = str(error.value)
        assert message in text, text
        assert "/tmp/gradio" not in text  # the upload's name, not the server's temporary path
        assert "Upload" in text  # what to do
    assert len(client.predict(handle_file(files["good"]), api_name="/predict")) == 5


def test_examples_are_embedded_clips_that_decode(classifier_server):
    app, _ = classifier_server
    (path, label), = app.examples
    assert label == "move_right (true label)" and os.path.basename(path) == "example_0_move_right.mp4"
    views = app.model.read_views(path)
    assert views.shape == (1, 4, 32, 32, 3) and views.std() > 10  # a real clip, not a blank one


def test_pretraining_checkpoint_shows_the_reconstruction_gif(pretrain_server, files, tmp_path):
    from PIL import Image

    app, client = pretrain_server
    gif, note, timeline = client.predict(handle_file(files["good"]), api_name="/analyse")
    expected = reconstruction.render(app.model, files["good"], str(tmp_path / "expected"))
    assert pathlib.Path(gif).read_bytes() == pathlib.Path(expected["gif"]).read_bytes()
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == expected["num_frames"]
    assert f"loss on the masked patches {expected['loss']:.4f}" in note and not timeline["data"]
    with pytest.raises(AppError, match="has no classification or regression head.*call /analyse"):
        client.predict(handle_file(files["good"]), api_name="/predict")


def serves_its_page(port):
    """Whether http://127.0.0.1:PORT/ answers 200, asked directly (no proxy from the environment)."""
    import httpx  # Gradio's own HTTP client, installed with it

    return httpx.get(f"http://127.0.0.1:{port}/", trust_env=False, timeout=30).status_code == 200


def test_a_proxy_in_the_environment_does_not_stop_the_server(pretrain_server, monkeypatch):
    # Gradio checks that its new server answers; a proxy that cannot reach 127.0.0.1 (nothing listens at its port)
    # must not be asked, and the environment is as it was once the server runs.
    app, _ = pretrain_server
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("no_proxy", "example.org")
    monkeypatch.delenv("NO_PROXY", raising=False)
    port = free_port()
    page = app.launch(port=port, prevent_thread_lock=True, quiet=True)
    try:
        assert os.environ["no_proxy"] == "example.org" and "NO_PROXY" not in os.environ
        assert serves_its_page(port)
    finally:
        page.close(verbose=False)


def test_a_server_that_answers_late_is_started_again(pretrain_server, monkeypatch):
    from gradio import networking

    app, _ = pretrain_server
    checks, real = [], networking.url_ok

    def first_answer_late(url):  # Gradio's check of the first start fails, as when a busy machine answers late
        checks.append(url)
        return len(checks) > 1 and real(url)

    monkeypatch.setattr(networking, "url_ok", first_answer_late)
    port = free_port()
    page = app.launch(port=port, prevent_thread_lock=True, quiet=True)
    try:
        assert len(checks) == 2 and serves_its_page(port)
    finally:
        page.close(verbose=False)


def test_a_server_that_never_answers_is_one_error_and_leaves_the_port_free(pretrain_server, monkeypatch):
    from gradio import networking

    app, _ = pretrain_server
    monkeypatch.setattr(networking, "url_ok", lambda url: False)
    port = free_port()
    with pytest.raises(demo.DemoError, match=rf"127.0.0.1:{port}/ did not answer Gradio's check .*3 starts.*busy"):
        app.launch(port=port, prevent_thread_lock=True, quiet=True)
    with socket.socket() as s:  # no server left running there
        s.bind(("127.0.0.1", port))


def test_without_gradio_exit_2_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    assert demo.main(["--checkpoint=/nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the web demo needs Gradio") and "pip install 'vidjax[demo]'" in err


@pytest.mark.parametrize("argv,message", [
    (["--max_mb=0"], "--max_mb=0 must be positive"),
    (["--window=0", "--stride=1"], "--stride needs --window"),
    (["--port=70000"], "--port=70000 is not a port number"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    assert demo.main(["--checkpoint=/nowhere", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stage", ["load_for_command", "launch"])
def test_a_signal_while_starting_is_the_one_stop_line_and_130_or_143(stage, signum, monkeypatch, capsys):
    """The interrupt contract every command keeps (issue 72 fault 5: the demo exited 0, with Gradio's own line while
    serving); tests/test_interrupts.py's table stops a real server twice."""
    def interrupted(*args, **kwargs):
        raise cli.Interrupted(signum)

    class Starting:  # a Demo whose launch (warm-up compilation, then serving) is interrupted
        def __init__(self, *args, **kwargs):
            pass

        launch = interrupted

        def cleanup(self):
            pass

    loaded = interrupted if stage == "load_for_command" else (lambda path: object())
    monkeypatch.setattr(pretrained, "load_for_command", loaded)
    monkeypatch.setattr(demo, "Demo", Starting)
    assert demo.main(["--checkpoint=/ckpt"]) == 128 + signum
    assert capsys.readouterr() == ("", f"stopped by {signal.Signals(signum).name}: {demo.STOPPED}\n")


def test_a_backbone_checkpoint_is_refused(checkpoints, capsys):
    import dataclasses

    model = pretrained.load(checkpoints["pretrain"])
    backbone = dataclasses.replace(model, config=model.config.copy_and_resolve_references())
    with backbone.config.unlocked():
        backbone.config.head = "none"
    with pytest.raises(demo.DemoError, match="backbone checkpoint .* nothing to show"):
        demo.Demo(backbone, checkpoint="/ckpt/backbone")


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_multilabel_scores_and_regression_values_are_predicts(task, checkpoints, files, tmp_path):
    """The classifier's head read as multi-label (sigmoid scores) or regression (raw values), without a server:
    the page's labels and timeline are `predict.prediction_entry`'s, and the examples carry the task's targets."""
    import dataclasses

    model = dataclasses.replace(pretrained.load(checkpoints["classifier"]), task=task,
                                target_names=[f"value_{i}" for i in range(5)])
    app = demo.Demo(model, settings=demo.Settings(window_s=WINDOW, num_examples=1), checkpoint="/ckpt/x")
    try:
        result = app.analyse(files["good"])
        (_, example_label), = app.examples
    finally:
        app.cleanup()
    runner = pretrained.BatchRunner(model, predictions.scores_fn(task), 8)
    entry = predictions.prediction_entry(model, runner, files["good"], window_s=WINDOW, threshold=0.5)
    if task == "regression":
        assert result.labels == pytest.approx(entry["aggregate"]["values"], rel=1e-6)
        assert list(result.labels) == [f"value_{i}" for i in range(5)]
        assert [row[2:] for row in result.timeline] == [
            pytest.approx(list(w["prediction"]["values"].values()), abs=5e-5) for w in entry["windows"]]
        assert example_label.startswith("velocity_x ") and ", velocity_y " in example_label
    else:
        top = entry["aggregate"]["top_k"]
        assert list(result.labels.items()) == [(row["label"], pytest.approx(row["score"], rel=1e-6)) for row in top]
        for row, window in zip(result.timeline, entry["windows"], strict=True):
            over = [r["label"] for r in window["prediction"]["above_threshold"]]
            assert row[2] == (", ".join(over) or "(none)")
            assert row[3] == pytest.approx(window["prediction"]["top_k"][0]["score"], abs=5e-5)
        assert app.timeline_headers[2] == "classes scoring >= 0.5"
        assert example_label.endswith(" (true label)") and example_label.startswith("move_")


def test_a_captioner_checkpoint_alone_shows_its_caption(classifier_server, files):
    captioner = classifier_server[0].captioner  # the server's, already compiled for these shapes
    app = demo.Demo(captioner, settings=demo.Settings(window_s=WINDOW, num_examples=1), checkpoint="/ckpt/captioner")
    try:
        result = app.analyse(files["good"])
        (_, example_label), = app.examples
        with pytest.raises(demo.InputError, match="no classification or regression head.*its caption"):
            app.predict(files["good"])
    finally:
        app.cleanup()
    captions = windows.caption_video(captioner, files["good"], window_s=WINDOW, num_beams=3, max_new_tokens=30)
    assert result.labels is None and result.gif is None and result.caption == captions[1][2]
    assert [row[2] for row in result.timeline] == [text for _, _, text in captions]
    assert app.timeline_headers == ["start (s)", "end (s)", "caption"]
    assert " moves " in example_label  # one of the embedded dataset's caption sentences


def test_write_mp4_round_trip_and_odd_sizes_refused(tmp_path):
    from vidjax.data import decode, encode

    frames = np.zeros((12, 48, 64, 3), np.uint8)
    frames[:, :, :32] = 200  # a bright left half: the encoded picture keeps it
    path = encode.write_mp4(tmp_path / "clip.mp4", iter(frames), fps=12)
    info = decode.probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (12, 12.0, 64, 48)
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # no partial file left behind
    with pytest.raises(ValueError, match=r"even H and W .* got shape \(47, 64, 3\)"):
        encode.write_mp4(tmp_path / "odd.mp4", frames[:, :47])


ZERO_SHOT_LABELS = ["a video of a cat", "a dog running", "cats"]


@pytest.fixture(scope="module")
def zero_shot_checkpoints(tmp_path_factory):
    """The tiny VideoPrism video-text model (its tokenizer travels) and its vision-only sibling, converted."""
    folder = tmp_path_factory.mktemp("demo_zero_shot")
    convert(from_hf=str(FIXTURES / "videoprism_clip" / "source"), out=str(folder / "clip"))
    convert(from_hf=str(FIXTURES / "videoprism_video" / "source"), out=str(folder / "video"))
    return {"clip": str(folder / "clip"), "video": str(folder / "video")}


def test_labels_option_serves_predicts_zero_shot_scores(zero_shot_checkpoints, files, tmp_path):
    """--labels on a video-text checkpoint: the server's /predict and /analyse give the labels' zero-shot
    probabilities exactly as `python -m vidjax.predict --labels` computes them, windows included."""
    checkpoint = zero_shot_checkpoints["clip"]
    settings = demo.Settings(window_s=WINDOW, max_mb=MAX_MB, num_examples=0, top_k=2)
    app = demo.Demo(pretrained.load(checkpoint), settings=settings, checkpoint=checkpoint, labels=ZERO_SHOT_LABELS)
    got, (labels, note, timeline) = predict_and_analyse(app, files["good"])
    out = tmp_path / "predict.json"
    assert predict.main([f"--checkpoint={checkpoint}", files["good"], f"--window={WINDOW}", f"--json={out}",
                         f"--labels={';'.join(ZERO_SHOT_LABELS)}", "--top_k=2"]) == 0
    expected = json.loads(out.read_text())["videos"][0]
    top = expected["aggregate"]["top_k"]
    assert list(got) == [row["label"] for row in top] and len(got) == 2
    np.testing.assert_allclose(list(got.values()), [row["probability"] for row in top], rtol=1e-6)
    assert labels["label"] == top[0]["label"] and note.startswith("2 windows of 1 s")
    assert [row[2] for row in timeline["data"]] == [w["prediction"]["top_k"][0]["label"] for w in expected["windows"]]


@pytest.mark.parametrize("case", ["vision_only", "without_labels", "too_long"])
def test_labels_the_checkpoint_cannot_score_are_refused(case, zero_shot_checkpoints, capsys):
    """One `error:` line and exit 2 through the command (the checkpoint loaded, nothing served)."""
    checkpoint = zero_shot_checkpoints["video" if case == "vision_only" else "clip"]
    flags = {"vision_only": ["--labels=cats"], "without_labels": [],
             "too_long": ["--labels=cats;a video of a cat a video of a cat"]}[case]
    message = {"vision_only": "no text tower (head 'video'), so it cannot score text",
               "without_labels": "is a video-text checkpoint of videoprism: it scores videos against text, so give "
                                 "it labels",
               "too_long": "the label 'a video of a cat a video of a cat' is 10 tokens, more than the 8"}[case]
    assert demo.main([f"--checkpoint={checkpoint}", "--examples=0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_an_empty_label_list_is_refused_before_loading(capsys):
    assert demo.main(["--checkpoint=/nowhere", "--labels= ; "]) == 2
    assert capsys.readouterr().err.startswith("error: --labels=' ; ' gives an empty label list")


@pytest.fixture(scope="module")
def onnx_files(checkpoints, tmp_path_factory):
    """The classifier exported to ONNX: its logits, and its embeddings (which the demo cannot serve)."""
    from vidjax.commands import export

    folder = tmp_path_factory.mktemp("demo_onnx")
    files = {"logits": str(folder / "model.onnx"), "embeddings": str(folder / "enc.onnx")}
    for output, path in files.items():
        assert export.main([f"--checkpoint={checkpoints['classifier']}", f"--out={path}", f"--output={output}"]) == 0
    return files


@pytest.mark.slow
def test_an_onnx_file_is_served_as_its_checkpoint_is(checkpoints, onnx_files, files, tmp_path):
    """--onnx: the classifier's ONNX file served by ONNX Runtime gives /predict and /analyse what
    `python -m vidjax.predict` gives for its checkpoint (windows included)."""
    from vidjax.pretrained import onnx_model

    path = onnx_files["logits"]
    model, runner = onnx_model.load(path)
    assert model.params is None and model.class_names == [f"action_{i}" for i in range(5)]
    settings = demo.Settings(window_s=WINDOW, max_mb=MAX_MB, num_examples=1)
    app = demo.Demo(model, settings=settings, checkpoint=path, onnx_runner=runner)
    got, (labels, note, timeline) = predict_and_analyse(app, files["good"])
    expected = predict_json(checkpoints["classifier"], files["good"], tmp_path)
    top = expected["aggregate"]["top_k"]
    assert list(got) == [row["label"] for row in top] and len(got) == 5
    np.testing.assert_allclose(list(got.values()), [row["probability"] for row in top], atol=1e-5)
    assert labels["label"] == top[0]["label"] and note.startswith("2 windows of 1 s")
    assert [row[2] for row in timeline["data"]] == [w["prediction"]["top_k"][0]["label"] for w in expected["windows"]]


def test_what_an_onnx_file_cannot_serve_is_one_line(onnx_files, tmp_path, capsys):
    assert demo.main([f"--onnx={onnx_files['logits']}", "--labels=a;b"]) == 2
    assert "--onnx serves a classifier's scores alone" in capsys.readouterr().err
    embeddings = onnx_files["embeddings"]
    assert demo.main([f"--onnx={embeddings}", "--port=0"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --onnx={embeddings}: it computes embeddings, not a head's")
    assert demo.main([f"--onnx={tmp_path / 'none.onnx'}", "--port=0"]) == 2
    assert "no such file; write one with `python -m vidjax.export" in capsys.readouterr().err
