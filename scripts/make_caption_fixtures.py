r"""Writes tests/fixtures/captions/coco_reference.json: caption cases scored by the COCO caption evaluation.

The reference scores come from pycocoevalcap's pure-Python scorers (Bleu(4), Rouge(), Cider(): corpus-level
compute_score on tokenised lower-case text; its PTBTokenizer, which needs Java, is not used).
tests/test_caption_metrics.py checks that vidjax.metrics.caption_scores gives the same values.

pycocoevalcap is not a vidjax dependency: install it in a venv of its own and run this by hand, then commit the
JSON (it does not import vidjax):
  python3 -m venv /tmp/cocoenv && /tmp/cocoenv/bin/pip install pycocoevalcap
  /tmp/cocoenv/bin/python scripts/make_caption_fixtures.py            # or --out PATH, --items N, --seed S

Cases: hand-made ones that each exercise one part of the definitions (brevity penalty, closest reference length,
clipping, several references, an empty prediction, CIDEr's IDF over a single item) and one seeded random split
(short captions over a small vocabulary, so that n-grams of every order overlap, with 1-5 references per item).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import random

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "captions" / "coco_reference.json"
VOCAB = ("a", "the", "man", "woman", "dog", "cat", "is", "runs", "plays", "on", "in", "with", "ball", "red", "park")

# (name, predictions, references): one prediction and a list of references per item.
HAND_CASES = [
    ("identical", ["a cat sits on the mat", "two dogs run in a park"],
     [["a cat sits on the mat"], ["two dogs run in a park"]]),
    ("no_overlap", ["green trees sway", "an old car"],
     [["a cat sits on the mat"], ["two dogs run in a park"]]),
    ("shorter_than_references", ["a cat", "two dogs run"],
     [["a cat sits on the mat"], ["two dogs run in a park"]]),
    ("longer_than_references", ["a small cat sits on the old red mat today", "two big dogs run fast in a green park"],
     [["a cat sits on the mat"], ["two dogs run in a park"]]),
    ("several_references", ["a man is playing a guitar", "a woman cooks food in a kitchen", "a dog runs"],
     [["a man plays a guitar", "someone is playing the guitar on stage", "a man is playing guitar"],
      ["a woman is cooking", "a lady prepares a meal in the kitchen"],
      ["a dog is running on the grass", "the dog runs", "a brown dog runs fast across a field"]]),
    # Closest reference lengths 4 and 6 tie for a 5-word prediction: BLEU takes the shorter.
    ("closest_length_tie", ["a man rides a horse", "a girl sings"],
     [["a man rides horses", "the man is riding a brown horse"], ["a girl is singing a song", "a girl sings"]]),
    ("repeated_words_clipping", ["the the the the the the the", "a cat a cat a cat"],
     [["the cat is on the mat", "there is a cat on the mat"], ["a cat sits", "the cat is a pet"]]),
    ("empty_prediction", ["", "a dog plays with a ball"],
     [["a dog plays"], ["a dog plays with a red ball", "the dog plays"]]),
    # CIDEr's IDF is log(1) - log(1) = 0 for every n-gram of a one-item split, so CIDEr-D is 0.
    ("single_item", ["a man is playing a guitar"], [["a man is playing a guitar", "a man plays guitar"]]),
]


def random_case(rng: random.Random, items: int) -> tuple[list[str], list[list[str]]]:
    """`items` predictions of 0-12 words (a few empty, some a copy or an edit of a reference), 1-5 references each."""

    def sentence(low: int, high: int) -> list[str]:
        return [rng.choice(VOCAB) for _ in range(rng.randint(low, high))]

    predictions, references = [], []
    for _ in range(items):
        refs = [sentence(1, 12) for _ in range(rng.randint(1, 5))]
        kind = rng.random()
        if kind < 0.03:
            prediction = []
        elif kind < 0.15:
            prediction = list(rng.choice(refs))
        elif kind < 0.5:
            prediction = list(rng.choice(refs))
            for _ in range(rng.randint(1, 3)):
                prediction.insert(rng.randint(0, len(prediction)), rng.choice(VOCAB))
                del prediction[rng.randrange(len(prediction))]
        else:
            prediction = sentence(1, 12)
        predictions.append(" ".join(prediction))
        references.append([" ".join(r) for r in refs])
    return predictions, references


def coco_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    res = {i: [p] for i, p in enumerate(predictions)}
    gts = {i: list(r) for i, r in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out.update(rougeL=float(rouge), cider=float(cider))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="JSON file to write (default: %(default)s)")
    parser.add_argument("--items", type=int, default=200, help="items in the random split (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split (default: %(default)s)")
    args = parser.parse_args()

    cases = [{"name": name, "predictions": preds, "references": refs, "scores": coco_scores(preds, refs)}
             for name, preds, refs in HAND_CASES]
    preds, refs = random_case(random.Random(args.seed), args.items)
    cases.append({"name": f"random_{args.items}_seed{args.seed}", "predictions": preds, "references": refs,
                  "scores": coco_scores(preds, refs)})
    fixture = {
        "made_by": "scripts/make_caption_fixtures.py",
        "pycocoevalcap": importlib.metadata.version("pycocoevalcap"),
        "scorers": "Bleu(4).compute_score(verbose=0), Rouge().compute_score, Cider().compute_score: corpus scores",
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    for case in cases:
        print(f"{case['name']:26s}", " ".join(f"{k}={v:.4f}" for k, v in case["scores"].items()))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
