"""vidjax.probe --probe=attentive: V-JEPA 2's attentive probe (a learned query cross-attending to the tokens of
`extract --pool=tokens`, then a linear layer); the refusals of pooled features for it, and of token features for the
other probes."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax import tasks
from vidjax.commands import probe
from vidjax.evaluators import probes
from vidjax.models import ParamKeys

NUM_CLASSES, NUM_TOKENS, DIM = 4, 64, 32
MARKER = 0  # the dimension that marks the one token carrying the answer


def write_features(path, features, **arrays):
    np.savez(path, features=np.asarray(features, np.float32),
             paths=np.array([f"v{i}.mp4" for i in range(len(features))]), **arrays)
    return str(path)


def one_token_classes(n=240, seed=0):
    """(n, NUM_TOKENS, DIM) tokens and labels: the class is carried by ONE marked token at a random position.

    Every token is noise (std 1) but the marked one: MARKER = 5 and 3 in dimension 1 + class, 0 elsewhere. The
    mean over the tokens keeps 1 / NUM_TOKENS of the class signal under noise of std 1 / sqrt(NUM_TOKENS) (a
    linear probe on it stays near chance); a pooler that finds the marked token reads the class off it. The probe's
    keys are LayerNorm'ed tokens, each scaled to unit variance: over DIM = 32 dimensions the marked token's pattern
    stands out from every noise token's (over 8, the largest of 63 noise tokens often comes close to it).
    """
    rng = np.random.default_rng(seed)
    label = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
    x = rng.standard_normal((n, NUM_TOKENS, DIM))
    marked = rng.integers(0, NUM_TOKENS, n)
    x[np.arange(n), marked] = 0.0
    x[np.arange(n), marked, 1 + label] = 3.0
    x[np.arange(n), marked, MARKER] = 5.0
    return x.astype(np.float32), label


def one_token_values(n=240, seed=0, num_tokens=16):
    """Regression: the target, drawn from N(0, 1), is dim 1 of the one marked token (MARKER = 5, 0 elsewhere); dim 1
    of the other tokens is noise of the same size."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, num_tokens, DIM))
    marked = rng.integers(0, num_tokens, n)
    targets = rng.standard_normal((n, 1))
    x[np.arange(n), marked] = 0.0
    x[np.arange(n), marked, MARKER] = 5.0
    x[np.arange(n), marked, 1] = targets[:, 0]
    return x.astype(np.float32), targets.astype(np.float32)


def report_of(tmp_path, stem="f"):
    return json.loads((tmp_path / f"{stem}.probe.json").read_text())


def test_attentive_finds_the_one_token_that_mean_pooling_washes_out(tmp_path, capsys):
    x, label = one_token_classes()
    names = np.array(["a", "b", "c", "d"])
    tokens = write_features(tmp_path / "f.npz", x, label=label, class_names=names)
    mean = write_features(tmp_path / "mean.npz", x.mean(axis=1), label=label, class_names=names)
    assert probe.main([f"--features={mean}", "--task=classification", "--epochs=60", "--lr=0.03",
                       "--batch_size=32"]) == 0
    assert report_of(tmp_path, "mean")["metrics"]["top1"] <= 0.45  # chance is 0.25 on 48 held-out rows
    capsys.readouterr()
    # The attentive probe with its own defaults (probes.DEFAULTS["attentive"]), written into the report.
    assert probe.main([f"--features={tokens}", "--probe=attentive", "--task=classification"]) == 0
    report = report_of(tmp_path)
    assert report["metrics"]["top1"] >= 0.95, report["metrics"]
    assert set(report["metrics"]) == {"top1", "macro_f1"}  # the same score() path; no top5 with 4 classes
    assert report["probe"] == "attentive" and report["num_tokens"] == NUM_TOKENS and report["feature_dim"] == DIM
    assert (report["heads"], report["depth"]) == (16, 1)  # 16 heads divide 32; the cross-attention block alone
    assert (report["epochs"], report["lr"]) == (30, 0.01)
    assert report["num_train"] == 192 and report["num_eval"] == 48
    assert [r["class"] for r in report["per_class"]] == ["a", "b", "c", "d"]
    assert capsys.readouterr().out.startswith("attentive probe, classification, 192 training rows")


@pytest.mark.slow
def test_the_trained_probe_reads_the_marked_token_wherever_it_is():
    """Its predictions follow the marked token: the same whatever the order of the tokens (no positions: a query
    attending to a set) and whatever the noise tokens hold, and the class written into the marked token is the class
    predicted. The same seed trains the same probe."""
    x, label = one_token_classes(n=200, seed=1)
    train, clips, clip_label = x[:160], x[160:], label[160:]

    def fit():
        return probes.fit_probe(tasks.readout_of("classification"), train, label[:160], num_outputs=NUM_CLASSES,
                                probe="attentive", heads=4, seed=3)

    fitted = fit()
    scores = fitted.scores(clips)
    assert (scores.argmax(1) == clip_label).mean() >= 0.95
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(fitted.scores(clips[:, rng.permutation(NUM_TOKENS)]), scores, atol=1e-5)
    marked = np.argmax(clips[:, :, MARKER], axis=1)
    rows = np.arange(len(clips))
    renoised = rng.standard_normal(clips.shape).astype(np.float32)
    renoised[rows, marked] = clips[rows, marked]
    assert (fitted.scores(renoised).argmax(1) == clip_label).mean() >= 0.95
    other = (clip_label + 1) % NUM_CLASSES
    moved = clips.copy()
    moved[rows, marked, 1:1 + NUM_CLASSES] = 0.0
    moved[rows, marked, 1 + other] = 3.0
    assert (fitted.scores(moved).argmax(1) == other).mean() >= 0.95
    np.testing.assert_array_equal(fit().scores(clips), scores)


def test_depth_counts_the_pooler_blocks_as_vjepa2_evals_do():
    """depth 1: the cross-attention block alone; depth 3: two self-attention blocks over the tokens before it (V-JEPA
    2's num_probe_blocks). Either way one vector of class scores per clip, whatever the order of the tokens."""
    x = jnp.asarray(one_token_classes(n=3)[0])
    for depth, blocks in ((1, 0), (3, 2)):
        with nnx.use_eager_sharding(False):
            module = probes.AttentiveProbe(DIM, NUM_CLASSES, heads=4, depth=depth, rngs=ParamKeys(0))
        assert (0 if module.pooler.blocks is None else len(module.pooler.blocks.blocks)) == blocks
        scores = module(x)
        assert scores.shape == (3, NUM_CLASSES) and scores.dtype == jnp.float32
        np.testing.assert_allclose(module(x[:, ::-1]), scores, atol=1e-5)


def test_attentive_regression_and_eval_features(tmp_path):
    x, targets = one_token_values(n=300)
    train = write_features(tmp_path / "f.npz", x[:240], targets=targets[:240], target_names=np.array(["speed"]))
    evaluation = write_features(tmp_path / "e.npz", x[240:], targets=targets[240:], target_names=np.array(["speed"]))
    assert probe.main([f"--features={train}", f"--eval_features={evaluation}", "--task=regression",
                       "--probe=attentive"]) == 0
    metrics = report_of(tmp_path)["metrics"]
    assert metrics["ccc_speed"] > 0.9 and set(metrics) == {"ccc_speed", "ccc_mean", "mse"}, metrics
    # The linear probe on the same tokens mean-pooled finds little of it.
    train = write_features(tmp_path / "m.npz", x[:240].mean(axis=1), targets=targets[:240])
    evaluation = write_features(tmp_path / "me.npz", x[240:].mean(axis=1), targets=targets[240:])
    assert probe.main([f"--features={train}", f"--eval_features={evaluation}", "--task=regression", "--epochs=60",
                       "--lr=0.03", "--batch_size=32"]) == 0
    assert report_of(tmp_path, "m")["metrics"]["ccc_mean"] < 0.5


def test_attentive_multilabel(tmp_path):
    x, label = one_token_classes(n=200, seed=3)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[label]
    tokens = write_features(tmp_path / "f.npz", x, labels=labels)
    assert probe.main([f"--features={tokens}", "--task=multilabel", "--probe=attentive"]) == 0
    report = report_of(tmp_path)
    assert report["metrics"]["mAP"] >= 0.95 and "per_class" not in report, report["metrics"]


@pytest.mark.slow
def test_attentive_grid_over_lr(tmp_path, capsys):
    x, label = one_token_classes(n=160, seed=2)
    tokens = write_features(tmp_path / "f.npz", x, label=label)
    assert probe.main([f"--features={tokens}", "--task=classification", "--probe=attentive", "--grid",
                       "--epochs=30", "--batch_size=32"]) == 0
    grid = report_of(tmp_path)["grid"]
    assert [set(t) for t in grid["tried"]] == [{"lr", "top1"}] * len(probe.GRID_LR)
    assert grid["chosen"]["lr"] in probe.GRID_LR and grid["metric"] == "top1"
    assert capsys.readouterr().out.startswith("grid: chose lr=")


def test_refusals(tmp_path, capsys):
    x, label = one_token_classes(n=40)
    tokens = write_features(tmp_path / "tokens.npz", x, label=label)
    pooled = write_features(tmp_path / "pooled.npz", x.mean(axis=1), label=label)
    # Pooled (N, D) features for the attentive probe: extract with --pool=tokens.
    assert probe.main([f"--features={pooled}", "--task=classification", "--probe=attentive"]) == 2
    err = capsys.readouterr().err
    assert "(40, 32)" in err and "--probe=attentive" in err and "extract with --pool=tokens" in err
    # Token (N, L, D) features for the other probes: use --probe=attentive or pool them when extracting.
    for kind in ("linear", "mlp", "svm"):
        assert probe.main([f"--features={tokens}", "--task=classification", f"--probe={kind}"]) == 2
        err = capsys.readouterr().err
        assert "(40, 64, 32)" in err and "use --probe=attentive" in err, kind
        assert "extract with --pool=mean or --pool=cls" in err
    # --eval_features must be tokens too.
    assert probe.main([f"--features={tokens}", f"--eval_features={pooled}", "--task=classification",
                       "--probe=attentive"]) == 2
    assert "extract with --pool=tokens" in capsys.readouterr().err
    # --pca does not apply to it.
    assert probe.main([f"--features={tokens}", "--task=classification", "--probe=attentive", "--pca=4"]) == 2
    assert "--pca=4 does not apply to --probe=attentive" in capsys.readouterr().err
    # Heads that do not split the 32 dimensions evenly, and a pooler without its cross-attention block.
    assert probe.main([f"--features={tokens}", "--task=classification", "--probe=attentive", "--heads=5"]) == 2
    assert ("--heads=5 does not divide the feature dimension 32 (each head takes an equal share of it): choose one "
            "of [1, 2, 4, 8, 16, 32], or 0 for the default." in capsys.readouterr().err)
    assert probe.main([f"--features={tokens}", "--task=classification", "--probe=attentive", "--depth=0"]) == 2
    assert "--depth=0 must be at least 1" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.probe.json"))
    # train_probe itself refuses the wrong layout.
    with pytest.raises(probe.ProbeError, match="takes features shaped"):
        probe.train_probe(probes.CLASS_LABELS, x.mean(axis=1), label, x.mean(axis=1), num_outputs=4,
                          probe="attentive")
    with pytest.raises(probe.ProbeError, match="takes features shaped"):
        probe.train_probe(probes.CLASS_LABELS, x, label, x, num_outputs=4, probe="linear")
