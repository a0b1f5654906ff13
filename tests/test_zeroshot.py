"""Zero-shot use of a video-text checkpoint (issue 50, item 3), on the tiny transformers VideoPrismClipModel of
tests/fixtures/parity/videoprism_clip (scripts/parity/videoprism.py, torch only there): its texts tokenise to the ids
and mask transformers' tokenizer gave with the processor's settings; zero-shot scores rank the texts as transformers'
logits do; `python -m vidjax.zeroshot` scores videos the tests write against labels (as `predict --labels` does)
and searches extract's `--pool=video` embeddings with text, reporting recall@1/5/10; bad input is one `error:` line
with exit status 2."""

import json
import pathlib
import re

import numpy as np
import pytest
from test_predict import make_clip

from vidjax import metrics, pretrained
from vidjax.commands import extract, predict, zeroshot
from vidjax.commands.convert import convert
from vidjax.convert.hf import TOKENIZER_DIR
from vidjax.tokenizer import TextTooLongError, TextTowerTokenizer, TokenizerError

CASES = pathlib.Path(__file__).parent / "fixtures" / "parity"
CLIP = CASES / "videoprism_clip"
LABELS = ["a video of a cat", "a dog running", "cats", "A person playing the guitar"]


@pytest.fixture(scope="module")
def io():
    return dict(np.load(CLIP / "io.npz"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zeroshot")
    convert(from_hf=str(CLIP / "source"), out=str(folder / "clip"))
    convert(from_hf=str(CASES / "videoprism_video" / "source"), out=str(folder / "video"))
    return {"clip": str(folder / "clip"), "video": str(folder / "video")}


@pytest.fixture(scope="module")
def clip(checkpoints):
    return pretrained.load(checkpoints["clip"])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zeroshot_videos")
    bad = folder / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return {"a": make_clip(folder / "a.mp4", 0), "b": make_clip(folder / "b.mp4", 1),
            "c": make_clip(folder / "c.mp4", 2), "bad": str(bad), "folder": folder}


def test_texts_tokenise_to_transformers_ids_and_mask(io):
    """The fixture's texts (whole words, a word spelt from pieces, an upper-case letter outside the vocabulary) give
    the ids and mask transformers' VideoPrismTokenizer gave with VideoPrismProcessor's padding, though the file
    carries a saved call's padding and truncation (to 8), which transformers ignores too."""
    assert io["texts"].tolist() == LABELS
    tokenizer = TextTowerTokenizer.from_directory(CLIP / "source")
    ids, mask = tokenizer.encode_padded(LABELS, io["input_ids"].shape[1])
    np.testing.assert_array_equal(ids, io["input_ids"])
    np.testing.assert_array_equal(mask, io["attention_mask"])
    assert tokenizer.encode("a video of a cat a video of a cat") == [3, 4, 5, 3, 6, 3, 4, 5, 3, 6]  # not cut to 8
    assert tokenizer.encode("A")[-1] == 2  # <unk>, no </s> appended
    with pytest.raises(TextTooLongError, match="'a video of a cat a video of a cat' is 10 tokens, more than the text "
                                               "tower's 8 positions"):
        tokenizer.encode_padded(["cats", "a video of a cat a video of a cat"], 8)


def test_a_tokenizer_folder_without_tokenizer_json_names_the_fix(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(TokenizerError, match="spiece.model only: write tokenizer.json beside it"):
        TextTowerTokenizer.from_directory(tmp_path)
    # Any other tokenizer is read as a vidjax trainer frames captions, [start] + tokens + [end]: one without a start
    # and an end token is refused naming them.
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1},
                                                                   "unk_token": "a"}}))
    with pytest.raises(TokenizerError, match="names no start / end tokens"):
        TextTowerTokenizer.from_directory(tmp_path)


def test_zero_shot_scores_rank_labels_as_transformers_logits(clip, io):
    """`zero_shot(video, texts)` from text gives transformers' logits_per_text (softmax over the texts, per video)
    to 1e-4, so the same ranking; a temperature sharpens the probabilities and keeps the ranking."""
    probs = clip.zero_shot(io["video"], LABELS)
    np.testing.assert_allclose(probs, io["logits_per_text"].T, rtol=0, atol=1e-4)
    for v in range(len(probs)):
        assert np.argsort(-probs[v]).tolist() == np.argsort(-io["logits_per_text"][:, v]).tolist()
    sharp = clip.zero_shot(io["video"], LABELS, temperature=0.01)
    assert [np.argsort(-row).tolist() for row in sharp] == [np.argsort(-row).tolist() for row in probs]
    assert sharp.max() > probs.max() + 0.1
    ids, mask = clip.tokenize(LABELS)
    np.testing.assert_array_equal(ids, io["input_ids"])


def expected_scores(model, path, labels):
    """What the command should print for one video: the zero-shot probabilities of its centre clip."""
    views = model.read_views(path)
    return model.zero_shot(model.preprocess(views), labels)[0]


def parse_ranked(text):
    """{path: [(label, score), ...]} of the command's text output."""
    out, path = {}, None
    for line in text.splitlines():
        if not line.startswith("  "):
            path = line
            out[path] = []
        else:
            label, score = line.strip().rsplit("  ", 1)
            out[path].append((label.strip(), float(score)))
    return out


def test_zeroshot_command_ranks_labels_for_each_video(checkpoints, clip, videos, capsys, tmp_path):
    labels = LABELS[:3]
    code = zeroshot.main([f"--checkpoint={checkpoints['clip']}", videos["a"], videos["bad"], videos["b"],
                          f"--labels={';'.join(labels)};", f"--json={tmp_path / 'z.json'}"])
    captured = capsys.readouterr()
    assert code == 1  # one video failed, the others scored
    assert "bad.mp4" in captured.err and "1 of 3 videos failed to decode" in captured.err
    shown = parse_ranked(captured.out)
    report = json.loads((tmp_path / "z.json").read_text())
    assert report["labels"] == labels and report["videos"][1]["error"]
    for name in ("a", "b"):
        want = expected_scores(clip, videos[name], labels)
        order = np.argsort(-want, kind="stable")
        assert [label for label, _ in shown[videos[name]]] == [labels[i] for i in order]
        np.testing.assert_allclose([s for _, s in shown[videos[name]]], want[order], atol=1e-3)
        entry = next(e for e in report["videos"] if e["path"] == videos[name])
        np.testing.assert_allclose(entry["aggregate"]["probabilities"], want, atol=1e-5)

    # predict --labels scores the same way, its JSON a classifier's with the labels as classes.
    code = predict.main([f"--checkpoint={checkpoints['clip']}", videos["a"], "--labels_file", str(write_labels(
        tmp_path, labels)), "--top_k=2", "--json=-"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["task"] == "classification" and report["labels"] == labels
    want = expected_scores(clip, videos["a"], labels)
    np.testing.assert_allclose(report["videos"][0]["aggregate"]["probabilities"], want, atol=1e-5)
    assert [r["label"] for r in report["videos"][0]["aggregate"]["top_k"]] == [labels[i] for i in
                                                                             np.argsort(-want)[:2]]


def write_labels(folder, labels):
    path = folder / "labels.txt"
    path.write_text("\n".join(["", *labels, "  "]) + "\n")
    return path


def test_retrieval_over_extracted_embeddings_reports_recall(checkpoints, clip, videos, capsys, tmp_path):
    """extract --pool=video of a captions list, then zeroshot --features: each query's videos ranked by cosine,
    and with --captions the recall@1/5/10 and median rank of metrics.retrieval_metrics over every caption."""
    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption\na.mp4,a video of a cat;cats\nb.mp4,a dog running\n"
                        "c.mp4,A person playing the guitar\nmissing.mp4,a red ball\n")
    root = str(videos["folder"])
    features = str(tmp_path / "videos.npz")
    assert extract.main([f"--checkpoint={checkpoints['clip']}", f"--csv={captions}", "--caption_column=caption",
                         f"--root={root}", "--pool=video", f"--out={features}"]) == 1  # missing.mp4
    capsys.readouterr()
    with np.load(features) as data:
        paths, rows, stored = data["paths"].tolist(), data["features"], data["captions"].tolist()
    assert stored == ["a video of a cat;cats", "a dog running", "A person playing the guitar"]
    np.testing.assert_allclose(rows[0], np.asarray(clip.forward(clip.preprocess(clip.read_views(videos["a"])))[
        "video_embeds"])[0], atol=1e-5)

    code = zeroshot.main([f"--checkpoint={checkpoints['clip']}", f"--features={features}", "--labels=cats",
                          f"--captions={captions}", f"--root={root}", "--top_k=2", f"--json={tmp_path / 'r.json'}"])
    captured = capsys.readouterr()
    assert code == 0
    texts = ["a video of a cat", "cats", "a dog running", "A person playing the guitar"]
    similarity = clip.text_features(texts) @ rows.T
    want = metrics.retrieval_metrics(similarity, np.array([0, 0, 1, 2]))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["retrieval"]["captions"] == 4 and report["retrieval"]["left_out"] == 1
    for key, value in want.items():
        assert report["retrieval"][key] == pytest.approx(value)
    assert f"recall@1 {want['recall_at_1']:.3f}, recall@5 1.000, recall@10 1.000" in captured.out
    assert "1 captions of videos not in" in captured.err
    query = report["queries"][0]
    assert query["query"] == "cats" and [p for p, _ in query["top_k"]] == [paths[i] for i in
                                                                          np.argsort(-similarity[1])[:2]]
    lines = captured.out.splitlines()
    assert lines[0] == "cats" and lines[1].startswith(f"  {query['top_k'][0][0]}")


def test_features_that_are_no_whole_npz_are_one_line(tmp_path):
    np.savez(tmp_path / "whole.npz", features=np.zeros((2, 4), np.float32), paths=np.array(["a.mp4", "b.mp4"]))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:200])  # a copy cut short
    np.save(tmp_path / "array.npy", np.zeros((2, 4)))
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    for name, said in (("cut.npz", "is a damaged .npz (not a whole zip file); copy it again, or extract again."),
                       ("array.npy", "cannot be read as an .npz (one .npy array, not an .npz archive)"),
                       ("list.txt", "cannot be read as an .npz"), ("none.npz", "cannot be read as an .npz")):
        with pytest.raises(ValueError, match=re.escape(said)):
            zeroshot.read_features(str(tmp_path / name))
    features, paths = zeroshot.read_features(str(tmp_path / "whole.npz"))
    assert features.shape == (2, 4) and list(paths) == ["a.mp4", "b.mp4"]


@pytest.mark.parametrize("case", ["empty", "blank_file", "twice", "too_long", "vision_only", "no_tokenizer",
                                  "clip_without_labels", "mean_features"])
def test_bad_input_is_one_line_and_exit_2(case, checkpoints, videos, capsys, tmp_path):
    clip_dir = checkpoints["clip"]
    args = [videos["a"]]
    if case == "no_tokenizer":
        clip_dir = str(tmp_path / "clip_without_tokenizer")
        convert(from_hf=str(CLIP / "source"), out=clip_dir)
        for file in (pathlib.Path(clip_dir) / TOKENIZER_DIR).iterdir():
            file.unlink()
        (pathlib.Path(clip_dir) / TOKENIZER_DIR).rmdir()
    if case == "mean_features":
        listed = tmp_path / "list.txt"
        listed.write_text(f"{videos['a']} 0\n")
        extract.main([f"--checkpoint={clip_dir}", f"--csv={listed}", f"--out={tmp_path / 'mean.npz'}"])
        capsys.readouterr()
        args = [f"--features={tmp_path / 'mean.npz'}"]
    flags = {"empty": ["--labels=;  ;"], "blank_file": [f"--labels_file={write_labels(tmp_path, [])}"],
             "twice": ["--labels=cats;a dog running;cats"], "too_long": ["--labels=cats;a video of a cat a video of "
                                                                         "a cat"],
             "vision_only": ["--labels=cats"], "no_tokenizer": ["--labels=cats"], "clip_without_labels": [],
             "mean_features": ["--labels=cats"]}[case]
    checkpoint = checkpoints["video"] if case == "vision_only" else clip_dir
    wanted = {"empty": "--labels=';  ;' gives an empty label list; give at least one label",
              "blank_file": "gives an empty label list", "twice": "gives 'cats' twice",
              "too_long": "the label 'a video of a cat a video of a cat' is 10 tokens, more than the 8 the text tower",
              "vision_only": "is a videoprism checkpoint with no text tower (head 'video'), so it cannot score text",
              "no_tokenizer": "video-text checkpoint has no tokenizer",
              "clip_without_labels": "is a video-text checkpoint of videoprism: it scores videos against text, so "
                                     "give it labels",
              "mean_features": "was extracted with --pool=mean; text searches the video embedding"}[case]
    mains = [zeroshot.main] if case in ("mean_features", "clip_without_labels") else [zeroshot.main, predict.main]
    if case == "clip_without_labels":
        mains = [predict.main]
    for main in mains:
        code = main([f"--checkpoint={checkpoint}", *args, *flags])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("error: ") and wanted in lines[0], err
