"""Tests for the caption metrics of vidjax.metrics: pycocoevalcap's scores, hand-worked values, input errors."""

import json
import math
import pathlib

import pytest

from vidjax import metrics

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "captions" / "coco_reference.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_caption_scores_match_pycocoevalcap(case, normalize):
    # Fixture text is already lower-case words, so normalising must not change a score.
    scores = metrics.caption_scores(case["predictions"], case["references"], normalize=normalize)
    assert sorted(scores) == sorted(KEYS)
    for key in KEYS:
        assert abs(scores[key] - case["scores"][key]) <= 1e-6, (key, scores[key], case["scores"][key])


def test_fixture_has_the_random_split():
    random_cases = [c for c in CASES if c["name"].startswith("random_")]
    assert len(random_cases) == 1 and len(random_cases[0]["predictions"]) == 200
    assert {len(refs) for refs in random_cases[0]["references"]} == {1, 2, 3, 4, 5}


def test_bleu1_clipping_by_hand():
    # 7 predicted unigrams, all "the"; the reference has "the" twice, so 2 are credited: BLEU-1 = 2/7.
    # Prediction 7 words, reference 6: no brevity penalty. (pycocoevalcap's 1e-15 / 1e-9 terms are below 1e-9.)
    scores = metrics.caption_scores(["the the the the the the the"], [["the cat is on the mat"]])
    assert scores["bleu1"] == pytest.approx(2 / 7, abs=1e-9)


def test_bleu_brevity_penalty_by_hand():
    # "a cat": both unigrams and the bigram match (p1 = p2 = 1), c = 2 against r = 6: BP = exp(1 - 6/2) = e^-2.
    # No trigram exists, so BLEU-3 = (1 * 1 * 1e-15 / 1e-9)^(1/3) * e^-2 = 0.01 * e^-2.
    # (The 1e-9 added to each n-gram count moves p1, p2 by about 1e-9 relative.)
    scores = metrics.caption_scores(["a cat"], [["a cat sits on the mat"]])
    assert scores["bleu1"] == pytest.approx(math.exp(-2), rel=1e-8)
    assert scores["bleu2"] == pytest.approx(math.exp(-2), rel=1e-8)
    assert scores["bleu3"] == pytest.approx(0.01 * math.exp(-2), rel=1e-6)


def test_bleu_closest_reference_length_tie_takes_the_shorter():
    # Item 1 (5 words): references of 4 and 6 words tie at distance 1, the shorter (4) is taken; unigrams a, man,
    # rides, horse match ("a" twice in the prediction, once in each reference: clipped to 1): 4 of 5.
    # Item 2 (3 words) equals its second reference: 3 of 3, length 3. c = 8 >= r = 4 + 3 = 7: no penalty.
    # BLEU-1 = 7/8 (with r = 6 + 3 = 9 it would be 7/8 * exp(1 - 9/8)).
    scores = metrics.caption_scores(
        ["a man rides a horse", "a girl sings"],
        [["a man rides horses", "the man is riding a brown horse"], ["a girl is singing a song", "a girl sings"]])
    assert scores["bleu1"] == pytest.approx(7 / 8, abs=1e-9)


def test_rouge_l_by_hand():
    # LCS("a cat on the mat", "a cat sits on the mat") = 5: P = 5/5, R = 5/6,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 5/6 / (5/6 + 1.44) = 0.894428...
    scores = metrics.caption_scores(["a cat on the mat"], [["a cat sits on the mat"]])
    assert scores["rougeL"] == pytest.approx(2.44 * (5 / 6) / (5 / 6 + 1.44), abs=1e-12)
    assert scores["rougeL"] == pytest.approx(0.8944281, abs=1e-7)


def test_cider_by_hand():
    # N = 2 items, IDF = log 2 - log df. "a" is in both items' references: IDF 0. Item 1 equals its reference:
    # cosine 1 for unigrams (only "dog" weighs) and bigrams, and no 3- or 4-grams: (1 + 1 + 0 + 0) / 4 * 10 = 5.
    # Item 2: "cat" and "a bird" are not shared and "a" weighs 0, so every cosine is 0. CIDEr-D = (5 + 0) / 2.
    scores = metrics.caption_scores(["a dog", "a cat"], [["a dog"], ["a bird"]])
    assert scores["cider"] == pytest.approx(2.5, abs=1e-12)
    # One item: every IDF is log 1 - log 1 = 0, so CIDEr-D is 0 even for a perfect prediction.
    single = metrics.caption_scores(["a dog runs fast"], [["a dog runs fast"]])
    assert single["cider"] == 0.0
    assert single["bleu4"] == pytest.approx(1.0) and single["rougeL"] == 1.0


def test_bleu4_of_a_caption_without_4grams_is_small_not_zero():
    # As in pycocoevalcap: 3 words have no 4-gram, p4 = 1e-15 / 1e-9 = 1e-6, BLEU-4 = (1 * 1 * 1 * 1e-6)^(1/4).
    scores = metrics.caption_scores(["a dog runs"], [["a dog runs"]])
    assert scores["bleu3"] == pytest.approx(1.0)
    assert scores["bleu4"] == pytest.approx(1e-6 ** 0.25, rel=1e-6)


def test_empty_prediction_scores_zero():
    scores = metrics.caption_scores(["", "a dog"], [["a cat"], ["a dog"]])
    assert scores["rougeL"] == pytest.approx(0.5)  # 0 for the empty item, 1 for "a dog"
    assert metrics.caption_scores([""], [["a dog"]]) == {key: 0.0 for key in KEYS}


@pytest.mark.parametrize("raw, expected", [
    ("A man is playing a guitar.", "a man is playing a guitar"),
    ("  Two   dogs,\trunning!\n", "two dogs running"),
    ("A man's T-shirt (red)...", "a man 's t-shirt red"),
    ("He can't stop -- it's 3.5 km; ok?", "he ca n't stop it 's 3.5 km ok"),
    ('"Quoted" dogs\' ball at 10:30, 1,000 times', "quoted dogs ball at 10:30 1,000 times"),
    ("\u201cHi\u201d, it\u2019s me", "hi it 's me"),
    ("... !", ""),
])
def test_normalize_caption(raw, expected):
    assert metrics.normalize_caption(raw) == expected
    assert metrics.normalize_caption(expected) == expected  # idempotent


def test_caption_scores_normalizes_raw_text_by_default():
    raw = metrics.caption_scores(["A dog, running!"], [["A dog is running.", "The dog runs"]])
    clean = metrics.caption_scores(["a dog running"], [["a dog is running", "the dog runs"]], normalize=False)
    assert raw == clean
    as_given = metrics.caption_scores(["A dog, running!"], [["A dog is running.", "The dog runs"]], normalize=False)
    assert as_given["bleu1"] < raw["bleu1"]


def test_constant_caption():
    captions = ["a dog runs", "A dog runs.", "a cat sits", "a cat  sits", "a bird flies"]
    # Normalised, "a dog runs" and "a cat sits" both occur twice: the tie goes to the alphabetically first.
    assert metrics.constant_caption(captions) == "a cat sits"
    assert metrics.constant_caption(captions[::-1]) == "a cat sits"
    # As given (whitespace runs aside), "a cat sits" is the only caption that occurs twice.
    assert metrics.constant_caption(captions, normalize=False) == "a cat sits"
    assert metrics.constant_caption(["b", "a c", "b", "", "...", "", ""]) == "b"  # captions without words are skipped
    assert metrics.constant_caption(iter(["x y", "x  y", "z"])) == "x y"


def test_constant_caption_errors():
    with pytest.raises(ValueError, match="single string"):
        metrics.constant_caption("a dog runs")
    with pytest.raises(ValueError, match="no caption with words among the 0 captions"):
        metrics.constant_caption([])
    with pytest.raises(ValueError, match="no caption with words among the 2 captions"):
        metrics.constant_caption(["", "?!"])


@pytest.mark.parametrize("predictions, references, message", [
    (["a", "b"], [["a"]], r"got 2 predictions but 1 reference lists"),
    ([], [], r"no items to score"),
    (["a dog"], [[]], r"references\[0\] is an empty list; every item needs at least one reference"),
    (["a dog", "a cat"], ["a dog", "a cat"], r"references\[0\] is the string 'a dog', not a list"),
    ("a dog", [["a dog"]], r"got a single string"),
    (["a dog", None], [["a dog"], ["a cat"]], r"predictions\[1\] must be a string, got NoneType"),
    (["a dog"], [["a dog", 3]], r"references\[0\]\[1\] must be a string, got int"),
    (["a dog"], [["a dog", " ... "]], r"references\[0\]\[1\] = ' \.\.\. ' has no words after normalize_caption"),
])
def test_caption_scores_errors(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        metrics.caption_scores(predictions, references)


def test_caption_scores_empty_reference_without_normalize():
    with pytest.raises(ValueError, match=r"references\[1\]\[0\] = '  ' has no words; remove empty references"):
        metrics.caption_scores(["a", "b"], [["a"], ["  "]], normalize=False)
