"""Hugging Face Hub names wherever a checkpoint is taken (vidjax.pretrained.hub), and `python -m vidjax.push`.

The real huggingface_hub client talks to a small Hub this file starts on 127.0.0.1 (tests/hub_server.py, through
HF_ENDPOINT), serving repositories written here from the parity fixtures: Hugging Face `save_pretrained` folders (a
VideoMAE classifier with id2label, a V-JEPA 2 classifier) and official checkpoint files (VideoMamba, VideoMAE V2, SVT,
V-JEPA 2), written by the fixture makers. Each test has its own huggingface_hub and vidjax caches; nothing leaves
this machine.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from hub_server import TOKEN, HubServer
from test_predict import make_clip, trained_workdir

from vidjax import pretrained, train
from vidjax.commands import demo, extract, predict, push
from vidjax.commands.convert import main as convert_main
from vidjax.convert import read
from vidjax.convert.common import write_converted
from vidjax.pretrained import hub

ROOT = pathlib.Path(__file__).parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
CLS_SOURCE = FIXTURES / "videomae_classification_first_token" / "source"

CLS = "vidjax-test/videomae-kinetics"  # tag v1.0: the first labels; main: a later commit that renamed one
LABELS_V1, LABELS = ["abseiling", "archery", "bowling"], ["abseiling", "archery", "juggling balls"]
PRIVATE = "vidjax-test/private-videomae"
MAMBA, MAMBA_FILE = "vidjax-test/videomamba", "k400/videomamba_cls.pth"  # no config.json: .pth files only
V2, V2_FILE = "vidjax-test/videomae2", "distill/vit_tiny_k710_dl.pth"
SVT, SVT_FILE = "vidjax-test/svt", "kinetics400_vitb_ssl.pth"
VJEPA2, VJEPA2_SOURCE = "vidjax-test/vjepa2-classifier", FIXTURES / "vjepa2_classification" / "source"
VJEPA2_OFFICIAL, VJEPA2_FILE = "vidjax-test/vjepa2", "vitl.pt"  # as facebookresearch/vjepa2 names its files
BERT = "vidjax-test/bert-tiny"


def hf_folder(labels):
    """The VideoMAE classifier's save_pretrained files, with `labels` as its id2label."""
    files = {p.name: p.read_bytes() for p in CLS_SOURCE.iterdir()}
    config = json.loads(files["config.json"])
    config["id2label"] = {str(i): name for i, name in enumerate(labels)}
    config["label2id"] = {name: i for i, name in enumerate(labels)}
    files["config.json"] = json.dumps(config).encode()
    return files


@pytest.fixture(scope="module")
def server():
    with HubServer() as hub_server:
        hub_server.add(CLS, hf_folder(LABELS_V1), tags=("v1.0",))
        hub_server.add(CLS, hf_folder(LABELS))
        hub_server.add(PRIVATE, hf_folder(LABELS), private=True)
        hub_server.add(MAMBA, {"README.md": b"# VideoMamba\n",
                               MAMBA_FILE: (FIXTURES / "videomamba_cls/source/checkpoint.pth").read_bytes()})
        hub_server.add(V2, {V2_FILE: (FIXTURES / "videomae_v2_distilled/source/checkpoint.pth").read_bytes()})
        hub_server.add(SVT, {SVT_FILE: (FIXTURES / "svt_backbone/source/release.pth").read_bytes()})
        hub_server.add(VJEPA2, {p.name: p.read_bytes() for p in VJEPA2_SOURCE.iterdir()})
        hub_server.add(VJEPA2_OFFICIAL, {VJEPA2_FILE: (FIXTURES / "vjepa2_official_pretrain/source/checkpoint.pt"
                                                       ).read_bytes()})
        hub_server.add(BERT, {"config.json": json.dumps({"architectures": ["BertModel"],
                                                         "model_type": "bert"}).encode(),
                              "model.safetensors": b"\x08" + b"\x00" * 7 + b"{}"})
        yield hub_server


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """The client pointed at the test Hub with caches of this test's own and no token; returns the environment
    a child process needs for the same (huggingface_hub reads HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE at import).

    Nothing may reach huggingface.co: the client's import-time endpoint is the test Hub's too, telemetry is off, and
    the agent registry huggingface_hub fetches once a day for its user agent (utils/_detect_agent.py) is already in
    the test's HF_HOME, so the test Hub sees the requests of the loads alone."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    registry = home / ".agent_harnesses.json"
    registry.parent.mkdir()
    registry.write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv(hub.ENV, str(tmp_path / "vidjax-hub"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in dict(ENDPOINT=server.url, HUGGINGFACE_CO_URL_TEMPLATE=server.url + "/{repo_id}/resolve/"
                            "{revision}/{filename}", HF_HUB_CACHE=str(home / "hub"), HF_TOKEN_PATH=str(home / "token"),
                            AGENT_HARNESSES_PATH=str(registry), HF_HUB_OFFLINE=False, HF_HUB_DISABLE_TELEMETRY=True,
                            HF_HUB_DISABLE_PROGRESS_BARS=True).items():
        monkeypatch.setattr(constants, name, value, raising=False)  # older clients lack some
    return {**os.environ, "HF_HOME": str(home), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}


@pytest.fixture
def conversions(monkeypatch):
    """How many checkpoints vidjax.pretrained.hub converted."""
    count = []

    def counted(*args, **kwargs):
        count.append(args)
        return read(*args, **kwargs)

    monkeypatch.setattr(hub, "read", counted)
    return count


def assert_same_params(a, b):
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def local(kind, path, tmp_path, **options):
    """The checkpoint at `path` converted from the file system, as `python -m vidjax.convert` would."""
    dst = tmp_path / f"local_{kind}"
    if not dst.exists():
        write_converted(read(kind, path, **options), dst)
    return pretrained.load(dst)


def new_requests(server, since):
    return server.requests[since:]


# ------------------------------------------------------------------------------------------------- names


def test_what_is_a_hub_name_and_a_local_path_wins(env, server, tmp_path, monkeypatch):
    assert hub.parse("MCG-NJU/videomae-base").repo_id == "MCG-NJU/videomae-base"
    name = hub.parse("OpenGVLab/VideoMAE2/distill/vit_b_k710_dl_from_giant.pth@a1b2")
    assert (name.repo_id, name.filename, name.revision) == ("OpenGVLab/VideoMAE2",
                                                            "distill/vit_b_k710_dl_from_giant.pth", "a1b2")
    for path in ("/ckpt/videomae", "./runs/x", "~/ckpt/x", "gpt2", "a--b/c", "a/b/", "a/b/../c",
                 pathlib.Path("owner/name")):
        assert hub.parse(path) is None, path
    # A folder at the name's path is the checkpoint: the Hub is not asked.
    monkeypatch.chdir(tmp_path)
    write_converted(read("hf", CLS_SOURCE), tmp_path / CLS)
    before = len(server.requests)
    assert pretrained.load(CLS).class_names == ["LABEL_0", "LABEL_1", "LABEL_2"]  # the local folder's, not the Hub's
    assert new_requests(server, before) == []


# ------------------------------------------------------------------------------------------------- loading


def test_load_by_name_converts_once_then_offline_asks_nothing(env, server, tmp_path, monkeypatch, conversions):
    before = len(server.requests)
    model = pretrained.load(CLS)
    assert model.class_names == LABELS and model.task == "classification" and len(conversions) == 1
    assert_same_params(model, local("hf", CLS_SOURCE, tmp_path))
    asked = {path for _, path in new_requests(server, before)}
    assert asked == {f"/api/models/{CLS}", f"/{CLS}/resolve/main/config.json",  # only what a conversion reads
                     f"/{CLS}/resolve/main/model.safetensors"}
    commit = server.repos[CLS].refs["main"]
    converted = pathlib.Path(os.environ[hub.ENV]) / "vidjax-test--videomae-kinetics" / commit / "model"
    assert json.loads((converted / "vidjax.json").read_text())["source"]["hub"]["commit"] == commit

    # Online again: one question (which commit main is now), nothing converted.
    before = len(server.requests)
    assert_same_params(pretrained.load(CLS), model)
    assert new_requests(server, before) == [("GET", f"/api/models/{CLS}")] and len(conversions) == 1
    # A commit already converted needs no question; offline mode asks nothing at all.
    before = len(server.requests)
    assert pretrained.load(f"{CLS}@{commit}").class_names == LABELS
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same_params(pretrained.load(CLS), model)
    assert new_requests(server, before) == [] and len(conversions) == 1


def test_load_by_revision(env, server, conversions):
    assert pretrained.load(f"{CLS}@v1.0").class_names == LABELS_V1
    assert pretrained.load(f"{CLS}@main").class_names == LABELS
    assert pretrained.load(CLS).class_names == LABELS and len(conversions) == 2  # main's conversion, reused
    commits = sorted(p.name for p in (pathlib.Path(os.environ[hub.ENV]) / "vidjax-test--videomae-kinetics").iterdir()
                     if p.name != "refs")
    assert commits == sorted(set(server.repos[CLS].refs.values()))


def test_load_a_file_inside_a_repository(env, server, tmp_path, monkeypatch, conversions):
    model = pretrained.load(f"{MAMBA}/{MAMBA_FILE}")  # its kind told by its tensors: an official VideoMamba
    assert model.model_name == "videomamba" and model.config.head == "classification"
    assert_same_params(model, local("videomamba", FIXTURES / "videomamba_cls/source/checkpoint.pth", tmp_path))
    commit = server.repos[MAMBA].refs["main"]
    assert (pathlib.Path(os.environ[hub.ENV]) / "vidjax-test--videomamba" / commit / "files" / "k400" /
            "videomamba_cls.pth" / "vidjax.json").is_file()
    before = len(server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same_params(pretrained.load(f"{MAMBA}/{MAMBA_FILE}"), model)
    assert pretrained.load(f"{MAMBA}/{MAMBA_FILE}@{commit}").model_name == "videomamba"
    assert new_requests(server, before) == [] and len(conversions) == 1


def test_a_vjepa2_repository_by_name(env, server, tmp_path, conversions):
    """A VJEPA2ForVideoClassification save_pretrained folder: loaded by name, and converted by name."""
    model = pretrained.load(VJEPA2)
    assert (model.model_name, model.config.head, model.config.predictor) == ("vjepa2", "classification", True)
    assert model.class_names == [f"action_{i}" for i in range(5)] and len(conversions) == 1
    assert_same_params(model, local("hf", VJEPA2_SOURCE, tmp_path))
    assert convert_main(["--from_hf", VJEPA2, "--out", str(tmp_path / "out")]) == 0
    assert_same_params(pretrained.load(tmp_path / "out"), model)


def test_a_private_repository_needs_a_token(env, server, monkeypatch):
    before = len(server.requests)
    with pytest.raises(hub.HubError) as error:
        pretrained.load(PRIVATE)
    assert "HF_TOKEN" in str(error.value) and "\n" not in str(error.value)
    assert new_requests(server, before) == [("GET", f"/api/models/{PRIVATE}")]  # answered 401: no token was sent
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert pretrained.load(PRIVATE).class_names == LABELS


def test_the_huggingface_hub_cache_serves_a_new_conversion_offline(env, server, monkeypatch, conversions):
    """Offline with huggingface_hub's download cached but no vidjax conversion (a new vidjax cache): it converts
    from huggingface_hub's cache, and asks nobody."""
    pretrained.load(CLS)
    monkeypatch.setenv(hub.ENV, os.environ[hub.ENV] + "-new")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(server.requests)
    assert pretrained.load(CLS).class_names == LABELS
    assert new_requests(server, before) == [] and len(conversions) == 2


# ------------------------------------------------------------------------------------------------- errors


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed when the block ends: connections are refused


ERRORS = {
    "missing repository": ("vidjax-test/no-such-model", {}, ["neither a local path", "check the name", "HF_TOKEN"]),
    "missing file": (f"{MAMBA}/k400/no_such.pth", {}, ["has no file 'k400/no_such.pth'", MAMBA_FILE]),
    "missing revision": (f"{CLS}@v9", {}, ["no revision 'v9'", "branches, tags or commits"]),
    "unsupported architecture": (BERT, {}, ["BertModel", "does not convert", "VideoMAEForVideoClassification"]),
    "no save_pretrained model": (MAMBA, {}, ["no config.json", f"load one as {MAMBA}/{MAMBA_FILE}"]),
    "offline, nothing cached": (CLS, {"HF_HUB_OFFLINE": "1"}, ["cannot reach", "unset HF_HUB_OFFLINE"]),
    "no network, nothing cached": (CLS, {"HF_ENDPOINT": None}, ["cannot reach", "check the network and HF_ENDPOINT"]),
    "huggingface_hub not installed": (CLS, {"huggingface_hub": None}, ["pip install 'vidjax[hub]'"]),
    "cache not writable": (CLS, {hub.ENV: "a-file/hub"}, ["cannot write vidjax's Hub cache", f"set {hub.ENV}"]),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_one_line_naming_the_fix_with_exit_status_2(case, env, tmp_path, monkeypatch, capsys):
    name, settings, expected = ERRORS[case]
    (tmp_path / "a-file").write_text("a file where the cache would need a folder")
    for key, value in settings.items():
        if key == "huggingface_hub":
            monkeypatch.setitem(sys.modules, key, value)  # `import huggingface_hub` fails
        elif key == hub.ENV:
            monkeypatch.setenv(key, str(tmp_path / value))
        else:
            monkeypatch.setenv(key, value or closed_port_url())
    assert predict.main([f"--checkpoint={name}", "clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --checkpoint={name}: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, (text, err)


def test_every_command_takes_a_name(env, server, tmp_path, capsys):
    """predict prints the id2label names on a real mp4; extract, demo, the trainer's init_from and evaluate go
    through the same loader (a bad name: one error line, exit status 2, in a child process for the absl programs)."""
    clip = make_clip(tmp_path / "clip.mp4")
    assert predict.main([f"--checkpoint={CLS}", clip, "--top_k=3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == clip and sorted(line.rsplit(maxsplit=1)[0].strip() for line in out[1:]) == sorted(LABELS)

    (tmp_path / "list.csv").write_text(f"{clip} 0\n")
    assert extract.main([f"--checkpoint={CLS}", f"--csv={tmp_path / 'list.csv'}", f"--out={tmp_path / 'f.npz'}"]) == 0
    assert np.load(tmp_path / "f.npz")["features"].shape[0] == 1
    assert demo.main(["--checkpoint=vidjax-test/no-such-model"]) == 2
    assert "neither a local path" in capsys.readouterr().err

    from helpers import load_config

    config = load_config("videomae_finetune_k400", "runlocal")
    config.init_from = CLS
    resolved, *_ = train.prepare(config, explicit_keys=set())
    model = resolved.model  # the checkpoint's architecture, taken by the fine-tune
    assert (model.width, model.depth, model.num_heads, model.ln_eps) == (32, 2, 2, 1e-12)

    for module, flags in (("vidjax.main", ["--config=configs/videomae_finetune_k400.py:runlocal",
                                           f"--workdir={tmp_path / 'run'}", "--config.init_from=vidjax-test/nope"]),
                          ("vidjax.evaluate", ["--checkpoint=vidjax-test/nope"])):
        proc = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "vidjax-test/nope is neither a local path" in proc.stderr.splitlines()[0]


# ------------------------------------------------------------------------------------------------- convert


CONVERT = {
    "hf": (CLS, [], "hf", CLS_SOURCE, {}),
    "videomae": (f"{V2}/{V2_FILE}", ["--num_heads=4", "--num_frames=4", "--image_size=32"], "videomae",
                 FIXTURES / "videomae_v2_distilled/source/checkpoint.pth",
                 dict(num_heads=4, num_frames=4, image_size=32)),
    "svt": (f"{SVT}/{SVT_FILE}", ["--num_heads=2"], "svt", FIXTURES / "svt_backbone/source/release.pth",
            dict(num_heads=2)),
    "videomamba": (f"{MAMBA}/{MAMBA_FILE}", [], "videomamba", FIXTURES / "videomamba_cls/source/checkpoint.pth", {}),
    "vjepa2": (f"{VJEPA2_OFFICIAL}/{VJEPA2_FILE}", ["--num_heads=2", "--predictor_num_heads=1",
                                                    "--checkpoint_key=encoder"],
               "vjepa2", FIXTURES / "vjepa2_official_pretrain/source/checkpoint.pt",
               dict(num_heads=2, predictor_num_heads=1, checkpoint_key="encoder")),
}


@pytest.mark.parametrize("kind", CONVERT)
def test_convert_reads_a_hub_name(kind, env, tmp_path, capsys):
    name, flags, source_kind, path, options = CONVERT[kind]
    assert convert_main([f"--from_{kind}", name, "--out", str(tmp_path / "out"), *flags]) == 0
    assert_same_params(pretrained.load(tmp_path / "out"), local(source_kind, path, tmp_path, **options))
    wrong = f"{MAMBA}/{MAMBA_FILE}" if kind == "hf" else "/".join(name.split("/")[:2])  # a file / a repository
    assert convert_main([f"--from_{kind}", wrong, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("converts one checkpoint file" in err or "--from_videomae" in err), err
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------- push


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_workdir("classification", tmp_path_factory)[0]


def test_push_dry_run_writes_a_card_naming_the_metrics_and_weights_that_load(env, run, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # a dry run needs no Hub client
    out = tmp_path / "push"
    assert push.main([str(run), "me/videomae-tiny", "--dry_run", f"--out={out}", "--dataset=vidjax/synthetic"]) == 0
    assert str(out) in capsys.readouterr().out
    card = (out / "README.md").read_text()
    final = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"][-1]
    metrics = [k for k in final if k not in ("step", "split")]
    assert metrics and all(f"| {k} | " in card for k in metrics)
    assert f"step {final['step']}" in card and 'vidjax.pretrained.load("me/videomae-tiny")' in card
    assert "VideoMAEForVideoClassification" in card and "embedded synthetic dataset" in card
    assert "datasets:\n- vidjax/synthetic" in card
    loaded, original = pretrained.load(out), pretrained.load(run)
    assert_same_params(loaded, original)
    assert (loaded.task, loaded.class_names, loaded.sampling_rate, loaded.preprocessing) == (
        original.task, original.class_names, original.sampling_rate, original.preprocessing)


def test_push_uploads_through_the_hub_api_and_loads_back_by_name(env, server, run, tmp_path, monkeypatch, capsys):
    for argv, expected in (([str(run), "me/videomae-tiny-up"], "refused to create or write me/videomae-tiny-up (401)"
                            ": use a token with write access to me (set HF_TOKEN"),  # no token
                           ([str(run), "me/videomae@v1"], "is no Hub repository id: give owner/name"),
                           ([str(tmp_path / "nowhere"), "me/videomae"], "does not exist; give a training workdir")):
        assert push.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    before = len(server.requests)
    assert push.main([str(run), "me/videomae-tiny-up", "--private"]) == 0
    assert "Uploaded" in capsys.readouterr().out
    asked = [path for _, path in new_requests(server, before)]
    assert "/api/repos/create" in asked and "/api/models/me/videomae-tiny-up/preupload/main" in asked
    assert "/api/models/me/videomae-tiny-up/commit/main" in asked
    files = server.files("me/videomae-tiny-up")
    assert {"README.md", "vidjax.json"} <= set(files) and any(p.startswith("params/") for p in files)
    assert server.repos["me/videomae-tiny-up"].private
    assert_same_params(pretrained.load("me/videomae-tiny-up"), pretrained.load(run))
