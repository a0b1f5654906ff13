"""Faults on the way to and from the Hugging Face Hub (issue 48): each one clear line, a documented exit code, nothing
lost.

- The frame stride survives `python -m vidjax.export --to_hf`, the Hub and `python -m vidjax.convert --from_hf`: a run
  trained at stride 1 and loaded back by its Hub name predicts as the run does (the stride was lost before, and the
  default 4 flipped the prediction silently). A checkpoint that records no stride is read at 4, and says so.
- `python -m vidjax.push` to an existing repository (public or private) commits on top of it; --private makes an
  existing public one private, or says in one line that it cannot; --revision creates a missing branch (from main)
  and names REPO@BRANCH to load it by; a tag, a bad branch name or a bad --dataset id is refused before anything is
  created or written; an invalid token is named as such.
- Interrupted while the commit is in flight, push stops with one line saying the commit is all or nothing and that
  running it again pushes it, exit 130 (SIGINT) or 143 (SIGTERM): tests/test_interrupts.py's table, whose Hub holds
  the commit (`HubServer.hold_commits`).

The real huggingface_hub client talks to tests/hub_server.py on 127.0.0.1 (test_hub.py's `env` fixture).
"""

import json
import pathlib

import numpy as np
import pytest
import test_hub
from hub_server import TOKEN, HubServer
from test_predict import make_clip, trained_workdir

from vidjax import pretrained
from vidjax.commands import export, push
from vidjax.commands.convert import main as convert_main
from vidjax.convert import hf

ROOT = pathlib.Path(__file__).parent.parent
EXISTING, PRIVATE, TAGGED, OTHERS = "me/existing", "me/private", "me/tagged", "other-org/public"

env = test_hub.env  # the client pointed at this module's `server`, with caches of the test's own


@pytest.fixture(scope="module")
def server():
    with HubServer(forbidden=("other-org",)) as hub_server:
        hub_server.add(EXISTING, {"README.md": b"# an older model\n", "notes.txt": b"kept\n"})
        hub_server.add(PRIVATE, {"README.md": b"# private\n"}, private=True)
        hub_server.add(TAGGED, {"README.md": b"# tagged\n"}, tags=("v1",))
        hub_server.add(OTHERS, {"README.md": b"# someone else's\n"})
        yield hub_server


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny classifier trained 2 steps on clips of stride 1 (the synthetic data's)."""
    return trained_workdir("classification", tmp_path_factory)[0]


def logits(model, views):
    return np.asarray(model(model.preprocess(views)))


def one_error_line(capsys, *expected):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


# ------------------------------------------------------------------------------------------ the frame stride


def test_the_frame_stride_survives_export_the_hub_and_convert(env, server, run, tmp_path, capsys, caplog):
    original = pretrained.load(run)
    assert original.sampling_rate == 1 != pretrained.DEFAULT_SAMPLING_RATE
    assert hf.ASSUMED_SAMPLING_RATE == pretrained.DEFAULT_SAMPLING_RATE
    assert export.main(["--to_hf", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "records no frame stride" not in capsys.readouterr().err
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    spec = {"num_frames": 4, "sampling_rate": 1, "short_side": 32, "image_size": 32}
    assert processor[hf.CLIP_KEY] == spec
    assert processor["size"] == {"shortest_edge": 32} and processor["crop_size"] == {"height": 32, "width": 32}

    server.add("me/stride-1", {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()})
    clip = make_clip(tmp_path / "clip.mp4")
    views = original.read_views(clip)
    want = logits(original, views)
    # The default stride reads other frames, where the run's outputs differ (a 2-step model's logits are all
    # near 0): what a lost stride did silently.
    strided = original.read_views(clip, sampling_rate=pretrained.DEFAULT_SAMPLING_RATE)
    assert not np.array_equal(strided, views) and np.abs(logits(original, strided) - want).max() > 1e-4

    caplog.clear()
    by_name = pretrained.load("me/stride-1")
    assert by_name.sampling_rate == 1 and "records no frame stride" not in caplog.text
    assert {k: by_name.preprocessing[k] for k in spec if k != "sampling_rate"} == {
        k: original.preprocessing[k] for k in spec if k != "sampling_rate"}
    np.testing.assert_array_equal(by_name.read_views(clip), views)
    np.testing.assert_allclose(logits(by_name, views), want, atol=1e-6)  # transformers fixes the LayerNorm epsilon

    assert convert_main(["--from_hf", str(tmp_path / "hf"), "--out", str(tmp_path / "converted")]) == 0
    converted = pretrained.load(tmp_path / "converted")
    assert converted.sampling_rate == 1
    np.testing.assert_allclose(logits(converted, converted.read_views(clip)), want, atol=1e-6)


def test_a_checkpoint_without_a_stride_says_which_it_assumes(env, server, tmp_path, capsys, caplog):
    model = pretrained.load(_hf_repo(server))  # a transformers save_pretrained folder, as published
    assert model.sampling_rate is None
    lines = [r.getMessage() for r in caplog.records if "records no frame stride" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and f"read {pretrained.DEFAULT_SAMPLING_RATE} frames apart" in \
        lines[0] and "--sampling_rate" in lines[0], caplog.text
    # Exported again it records none either, and says so in one note.
    assert export.main(["--to_hf", "me/no-stride", "--out", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert f"records no frame stride, so {tmp_path / 'hf'} records none either" in err
    assert hf.CLIP_KEY not in json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())


def _hf_repo(server):
    if "me/no-stride" not in server.repos:
        server.add("me/no-stride", {p.name: p.read_bytes() for p in test_hub.CLS_SOURCE.iterdir()})
    return "me/no-stride"


# ------------------------------------------------------------------------------------------------------ push


def test_push_to_an_existing_repository_public_and_private(env, server, run, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    history = len(server.repos[EXISTING].commits)
    assert push.main([str(run), EXISTING]) == 0
    out = capsys.readouterr().out
    assert f"Uploaded {run} to {EXISTING}, branch main: " in out and f'load("{EXISTING}")' in out, out
    files = server.files(EXISTING)
    assert files["notes.txt"] == b"kept\n" and "vidjax.json" in files and b"vidjax" in files["README.md"]
    assert len(server.repos[EXISTING].commits) == history + 1 and not server.repos[EXISTING].private

    assert push.main([str(run), PRIVATE]) == 0  # stays private without --private
    assert server.repos[PRIVATE].private and "vidjax.json" in server.files(PRIVATE)
    assert "(now private)" not in capsys.readouterr().out
    test_hub.assert_same_params(pretrained.load(PRIVATE), pretrained.load(run))


def test_private_makes_an_existing_public_repository_private_or_says_it_cannot(env, server, run, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    server.add("me/public", {"README.md": b"# public\n"})
    assert push.main([str(run), "me/public", "--private"]) == 0
    assert "(now private)" in capsys.readouterr().out and server.repos["me/public"].private
    assert "vidjax.json" in server.files("me/public")

    before = dict(server.repos[OTHERS].refs)
    assert push.main([str(run), OTHERS, "--private"]) == 2
    one_error_line(capsys, f"{OTHERS} exists and is public, and --private could not make it private (the Hub "
                   "answered 403)", "Nothing was uploaded.")
    assert server.repos[OTHERS].refs == before and not server.repos[OTHERS].private


def test_revision_creates_the_branch_and_names_it_a_tag_or_bad_name_is_refused_first(env, server, run, monkeypatch,
                                                                                    capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert push.main([str(run), "me/branched", "--revision=nobranch"]) == 0
    out = capsys.readouterr().out
    assert "(created), branch nobranch" in out and 'load("me/branched@nobranch")' in out, out
    repo = server.repos["me/branched"]
    assert "vidjax.json" in server.files("me/branched", "nobranch") and "vidjax.json" not in server.files(
        "me/branched")
    assert pretrained.load("me/branched@nobranch").task == "classification"
    assert push.main([str(run), EXISTING, "--revision=exp/1"]) == 0  # an existing repository: branched from main
    assert "notes.txt" in server.files(EXISTING, "exp/1") and len(repo.refs) == 2

    for argv, expected in (([str(run), TAGGED, "--revision=v1"], ["'v1' is a tag of me/tagged", "give a branch"]),
                           ([str(run), "me/never", "--revision=bad..name"], ["'bad..name' is no branch name"]),
                           ([str(run), "me/never", "--revision= main"], ["is no branch name"]),
                           ([str(run), "me/never", "--dataset=not a dataset"], ["is no Hub dataset id"]),
                           ([str(run), "me/never", "--dataset=a--b/c", "--dry_run"], ["is no Hub dataset id"])):
        before = len(server.requests)
        assert push.main(argv) == 2
        one_error_line(capsys, *expected)
        writes = [r for r in server.requests[before:] if r[0] in ("POST", "PUT")]
        assert writes == [] and "me/never" not in server.repos, writes
    assert push.main([str(run), "me/never", "--dataset=kinetics400", "--dry_run"]) == 0  # a canonical dataset id
    capsys.readouterr()


def test_push_with_a_wrong_token_says_so(env, server, run, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_token")
    assert push.main([str(run), "me/wrong-token"]) == 2
    one_error_line(capsys, "rejected the token (invalid credentials)", "HF_TOKEN")
    assert "me/wrong-token" not in server.repos
