"""vidjax.probe --probe=attentive: a learned weighted pool over the tokens of `extract --pool=tokens`, then a
linear layer; the refusals of pooled features for it, and of token features for the other probes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax.commands import probe

NUM_CLASSES, NUM_TOKENS, DIM = 4, 64, 8
MARKER = 0  # the dimension that marks the one token carrying the answer


def write_features(path, features, **arrays):
    np.savez(path, features=np.asarray(features, np.float32),
             paths=np.array([f"v{i}.mp4" for i in range(len(features))]), **arrays)
    return str(path)


def one_token_classes(n=240, seed=0):
    """(n, NUM_TOKENS, DIM) tokens and labels: the class is carried by ONE marked token at a random position.

    Every token is noise (std 1) but the marked one: MARKER = 5 and 3 in dimension 1 + class, 0 elsewhere. The
    mean over the tokens keeps 1 / NUM_TOKENS of the class signal under noise of std 1 / sqrt(NUM_TOKENS) (a
    linear probe on it stays near chance); a pool that finds the marked token reads the class off it.
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
    """Regression: the target is dim 1 of the one marked token (+4 in dim MARKER); the other tokens' dim 1 is noise
    of the same size."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, num_tokens, DIM))
    marked = rng.integers(0, num_tokens, n)
    x[np.arange(n), marked, MARKER] += 4.0
    return x.astype(np.float32), x[np.arange(n), marked, 1:2].copy()


def report_of(tmp_path, stem="f"):
    return json.loads((tmp_path / f"{stem}.probe.json").read_text())


def test_attentive_finds_the_one_token_that_mean_pooling_washes_out(tmp_path, capsys):
    x, label = one_token_classes()
    names = np.array(["a", "b", "c", "d"])
    tokens = write_features(tmp_path / "f.npz", x, label=label, class_names=names)
    mean = write_features(tmp_path / "mean.npz", x.mean(axis=1), label=label, class_names=names)
    flags = ["--task=classification", "--epochs=60", "--lr=0.03", "--batch_size=32"]
    assert probe.main([f"--features={mean}", *flags]) == 0
    assert report_of(tmp_path, "mean")["metrics"]["top1"] <= 0.45  # chance is 0.25 on 48 held-out rows
    capsys.readouterr()
    assert probe.main([f"--features={tokens}", "--probe=attentive", *flags]) == 0
    report = report_of(tmp_path)
    assert report["metrics"]["top1"] >= 0.95, report["metrics"]
    assert set(report["metrics"]) == {"top1", "macro_f1"}  # the same score() path; no top5 with 4 classes
    assert report["probe"] == "attentive" and report["num_tokens"] == NUM_TOKENS and report["feature_dim"] == DIM
    assert report["num_train"] == 192 and report["num_eval"] == 48
    assert [r["class"] for r in report["per_class"]] == ["a", "b", "c", "d"]
    assert capsys.readouterr().out.startswith("attentive probe, classification, 192 training rows")


def test_attentive_pool_weights_the_marked_token(monkeypatch):
    """The trained pool puts nearly all its weight on the marked token."""
    x, label = one_token_classes(n=160, seed=1)
    trained, apply = {}, probe._apply

    def keep(params, features):  # train_probe scores x_eval with the trained parameters: keep them
        trained.update(params)
        return apply(params, features)

    monkeypatch.setattr(probe, "_apply", keep)
    probe.train_probe("classification", x, label, x[:8], num_outputs=NUM_CLASSES, probe="attentive", epochs=60,
                      lr=0.03, batch_size=32)
    standardised = (x[:8] - x.mean(axis=(0, 1))) / x.std(axis=(0, 1))  # as train_probe standardises
    weights = np.asarray(jax.nn.softmax(jnp.asarray(standardised) @ trained["score"], axis=-1))
    marked = np.argmax(x[:8, :, MARKER], axis=1)
    assert (np.argmax(weights, axis=1) == marked).all() and weights[np.arange(8), marked].min() > 0.8, weights.max(1)
    # attentive_pool is that weighted average.
    pooled = np.asarray(probe.attentive_pool(trained["score"], jnp.asarray(standardised)))
    np.testing.assert_allclose(pooled, np.einsum("bn,bnd->bd", weights, standardised), rtol=1e-4, atol=1e-4)


def test_attentive_regression_and_eval_features(tmp_path):
    x, targets = one_token_values(n=300)
    train = write_features(tmp_path / "f.npz", x[:240], targets=targets[:240], target_names=np.array(["speed"]))
    evaluation = write_features(tmp_path / "e.npz", x[240:], targets=targets[240:], target_names=np.array(["speed"]))
    assert probe.main([f"--features={train}", f"--eval_features={evaluation}", "--task=regression",
                       "--probe=attentive", "--epochs=60", "--lr=0.03", "--batch_size=32"]) == 0
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
    assert probe.main([f"--features={tokens}", "--task=multilabel", "--probe=attentive", "--epochs=60", "--lr=0.03",
                       "--batch_size=32"]) == 0
    report = report_of(tmp_path)
    assert report["metrics"]["mAP"] >= 0.95 and "per_class" not in report, report["metrics"]


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
    assert "(40, 8)" in err and "--probe=attentive" in err and "extract with --pool=tokens" in err
    # Token (N, L, D) features for the other probes: use --probe=attentive or pool them when extracting.
    for kind in ("linear", "mlp", "svm"):
        assert probe.main([f"--features={tokens}", "--task=classification", f"--probe={kind}"]) == 2
        err = capsys.readouterr().err
        assert "(40, 64, 8)" in err and "use --probe=attentive" in err, kind
        assert "extract with --pool=mean or --pool=cls" in err
    # --eval_features must be tokens too.
    assert probe.main([f"--features={tokens}", f"--eval_features={pooled}", "--task=classification",
                       "--probe=attentive"]) == 2
    assert "extract with --pool=tokens" in capsys.readouterr().err
    # --pca does not apply to it.
    assert probe.main([f"--features={tokens}", "--task=classification", "--probe=attentive", "--pca=4"]) == 2
    assert "--pca=4 does not apply to --probe=attentive" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.probe.json"))
    # train_probe itself refuses the wrong layout.
    with pytest.raises(probe.ProbeError, match="takes features shaped"):
        probe.train_probe("classification", x.mean(axis=1), label, x.mean(axis=1), num_outputs=4, probe="attentive")
    with pytest.raises(probe.ProbeError, match="takes features shaped"):
        probe.train_probe("classification", x, label, x, num_outputs=4, probe="linear")
