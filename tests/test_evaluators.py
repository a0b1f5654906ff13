"""Evaluators beside the tasks (vidjax/evaluators/): config.evals runs several, each at its own cadence, over its
own data, under its own metric prefix; `python -m vidjax.evaluate` runs the same ones on the checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_finetune import task_config
from test_probe_attentive import one_token_classes
from test_train import tiny_config

from vidjax import evaluators, models, train
from vidjax.commands import evaluate
from vidjax.config_lib import ConfigError
from vidjax.metric_writer import read_metrics
from vidjax.models import ParamKeys, captioner, svt, videomae, vjepa2
from vidjax.tasks import readout_of, training_of

HEAD_METRICS = ("loss", "top1", "top5", "macro_f1", "decode_failures")


def test_two_evaluators_log_each_at_its_own_cadence_and_prefix(tmp_path):
    """top-1 on the eval split every 2 steps, and on its two-crop views (another data setting, its first batch)
    every 3: each writes its own rows (split = its name) at its own steps, plus both at the last; the run's result
    and `evaluate` on the checkpoint give the same final figures."""
    config = task_config("classification", total_steps=6, checkpoint_every=6, eval_every=5)
    config.data.synthetic_task = training_of("classification").synthetic_task
    config.figure = True
    config.evals = dict(top1=dict(every=2),
                        views=dict(type="classification", every=3, data=dict(test_num_crops=2), batches=1,
                                   prefix="two_view_"))
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    rows = read_metrics(tmp_path)
    assert {row["split"] for row in rows} == {"train", "top1", "views"}  # no default "eval" evaluator beside them
    top1 = [row for row in rows if row["split"] == "top1"]
    views = [row for row in rows if row["split"] == "views"]
    assert [row["step"] for row in top1] == [2, 4, 6]  # its own every=2, not config.eval_every
    assert [row["step"] for row in views] == [3, 6]
    assert all(set(row) == {"step", "split", *(f"top1_{m}" for m in HEAD_METRICS)} for row in top1)
    assert all(set(row) == {"step", "split", *(f"two_view_{m}" for m in HEAD_METRICS)} for row in views)
    for name, row in (("top1", top1[-1]), ("two_view", views[-1])):
        assert 0.0 <= row[f"{name}_top1"] <= 1.0 and row[f"{name}_decode_failures"] == 0
        assert result[f"{name}_top1"] == row[f"{name}_top1"]
    # Each evaluator draws its own confusion matrix.
    assert (tmp_path / "confusion_matrix_top1.png").exists() and (tmp_path / "confusion_matrix_views.png").exists()
    # The evaluate command runs the evaluators the run's config names, on the same weights.
    again = evaluate.evaluate_checkpoint(None, str(tmp_path), str(tmp_path / "eval" / "out.json"))
    assert again == {k: v for k, v in result.items() if k.startswith(("top1_", "two_view_"))}
    assert (tmp_path / "eval" / "out.png").exists() and (tmp_path / "eval" / "out_views.png").exists()


def test_without_config_evals_the_task_gives_one_default_evaluator():
    config = task_config("classification", eval_every=7, eval_batches=3)
    assert evaluators.entries(config) == {"eval": {}}
    spec = training_of("classification")
    (settings,) = [evaluators._settings(config, spec, name, entry)
                   for name, entry in evaluators.entries(config).items()]
    assert (settings["type"], settings["every"], settings["batches"], settings["prefix"]) == (
        "classification", 7, 3, "eval_")
    assert evaluators.config_problems(config, spec) == []
    assert evaluators.get("knn").evaluates_init and evaluators.get("attentive").evaluates_init
    assert not evaluators.get("classification").evaluates_init


def test_scheduled_runs_every_n_steps_and_at_the_last():
    scheduled = evaluators.Scheduled("x", None, every=3, prefix="x_", init=False)
    assert [s for s in range(1, 11) if scheduled.due(s, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 11) if evaluators.Scheduled("y", None, 0, "y_", False).due(s, 10)] == [10]


def test_config_evals_problems_name_their_keys():
    config = task_config("classification")
    config.evals = dict(
        a=dict(type="nope"),
        b=dict(type="knn"),
        c=dict(every=-1, batches=1.5, split="test", colour="red"),
        d=dict(data=dict(no_such_key=1)),
        e=dict(prefix="a_"),
        train=dict(),
        f=dict(label_space="k500"),
        g=dict(type="attentive", bank="test", depth=0, heads=-1, lr=0, weight_decay="big", epochs=2.5, seed="one"))
    config.evals.a.prefix = "a_"
    problems = "\n".join(evaluators.config_problems(config, training_of("classification")))
    assert "config.evals.a.type='nope'; choose one of attentive, captioning, classification, knn" in problems
    assert ("config.evals.b.type='knn' measures a task whose model_name='svt' (config.task='classification' has "
            "None); its evaluators are attentive, classification, linear." in problems), problems
    assert "config.evals.c.every=-1 must be a whole number >= 0" in problems
    assert "config.evals.c.batches=1.5" in problems
    assert "config.evals.c.split='test'; choose one of eval, train" in problems
    assert "config.evals.c has unknown keys ['colour']" in problems and "classification's label_space" in problems
    assert "config.evals.d.data: " in problems and "no_such_key" in problems
    assert "config.evals.e.prefix='a_' must be a string no other evaluation uses (config.evals.a has it)" in problems
    assert "config.evals.train: 'train' names the training rows" in problems
    assert "config.evals.f.label_space='k500'; choose ''" in problems
    assert "config.evals.g.bank='test': the probe's training clips come from one of eval, train." in problems
    assert "config.evals.g.depth=0 must be a whole number >= 1." in problems
    assert "config.evals.g.heads=-1 must be a whole number >= 0." in problems
    assert "config.evals.g.epochs=2.5 must be a whole number >= 1." in problems
    assert "config.evals.g.lr=0 must be a number above 0." in problems
    assert "config.evals.g.weight_decay='big' must be a number >= 0." in problems
    assert "config.evals.g.seed='one' must be a whole number (default: config.seed)." in problems
    with pytest.raises(ConfigError, match="config.evals.a.type='nope'"):
        train.check_config(config)


def test_every_task_has_a_readout_and_a_default_evaluator_that_measures_it():
    from vidjax import tasks
    from vidjax.tasks import readout

    for name in tasks.available():
        spec, reads = tasks.training_of(name), tasks.readout_of(name)
        assert isinstance(reads, readout.Readout)
        assert evaluators.get(spec.evaluator).lacks(spec) == {}  # measured by what it is, not by its name
        if reads.probes:  # a head: its scores are measured by its evaluator and by a probe alike
            assert isinstance(reads, readout.HeadReadout)


def test_an_evaluator_computes_with_the_contracts_the_run_hands_it():
    """An evaluator imports no task module (tests/test_layering.py): the reconstruction evaluator's loss is the
    reconstruction of the training spec in its context, and a task without the member an evaluator needs says so."""
    config = tiny_config()
    context = train.eval_context(config, None, metadata={}, sources={})
    assert (context.spec, context.readout) == (training_of(config.task), readout_of(config.task))

    class Fixed(type(context.spec)):
        def reconstruct(self, config, model, batch, rng=None):
            return {"loss": jnp.float32(1.5)}

    context.spec = Fixed()
    out = evaluators.get("reconstruction")(context).batch_outputs(None, {"video": None, "decode_failures": 0})
    assert out == {"loss": 1.5, "decode_failures": 0}
    with pytest.raises(NotImplementedError, match="captioning evaluator reads its training spec's caption_losses"):
        training_of("classification").caption_losses(None, {})
    with pytest.raises(NotImplementedError, match="'classification' writes no captions"):
        readout_of("classification").decode_captions(config, np.zeros((1, 3), np.int32))
    with pytest.raises(NotImplementedError, match="reconstruction evaluator reads its training spec's reconstruct"):
        training_of("classification").reconstruct(config, None, {})


@pytest.mark.parametrize("stored, variant", [("classification", "label"), ("multilabel", "labels"),
                                             ("regression", "targets"), ("captioning", "captions"),
                                             ("pretrain", "label"), ("labels", "labels")])
def test_a_stored_config_of_an_earlier_version_names_its_embedded_variant_in_todays_terms(stored, variant):
    """Checkpoints written before the embedded dataset's variants were named by their batch keys stored the task's
    name in config.data.synthetic_task; `evaluate` reads them through `tasks.upgrade_stored_config`, which gives
    the variant that task trains on (and leaves today's values alone)."""
    from vidjax import tasks

    config = task_config("classification")
    config.data.synthetic_task = stored
    assert tasks.upgrade_stored_config(config) is config and config.data.synthetic_task == variant


@pytest.mark.slow
def test_attentive_probe_on_a_runs_encoder_logs_it_and_its_initial_weights(tmp_path):
    """The attentive evaluator on a VideoMAE pre-training (its encoder's tokens): the probe's top-1 and top-5 of the
    trained and (at step 0) the initial weights, each in [0, 1]; `evaluate` on the checkpoint gives the same figures
    (the same weights, the same probe seed)."""
    config = tiny_config(total_steps=2, checkpoint_every=2)
    config.evals = dict(probe=dict(type="attentive", epochs=10))
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    names = {f"probe_attentive_top{k}{init}" for k in (1, 5) for init in ("", "_init")}
    assert names <= result.keys() and result["probe_decode_failures"] == 0
    for init in ("", "_init"):
        assert 0.0 <= result[f"probe_attentive_top1{init}"] <= result[f"probe_attentive_top5{init}"] <= 1.0
    rows = {row["step"]: row for row in read_metrics(tmp_path) if row["split"] == "probe"}
    assert sorted(rows) == [0, 2] and rows[0]["probe_attentive_top1_init"] == result["probe_attentive_top1_init"]
    again = evaluate.evaluate_checkpoint(None, str(tmp_path), str(tmp_path / "eval" / "out.json"))
    assert {k: again[k] for k in ("probe_attentive_top1", "probe_attentive_top5")} == {
        k: result[k] for k in ("probe_attentive_top1", "probe_attentive_top5")}


def attentive_evaluator(config, **options):
    context = train.eval_context(config, None, metadata={}, sources={})
    return evaluators.get("attentive")(context, name="probe", **options)


def test_attentive_probe_scores_well_on_tokens_that_carry_the_class():
    """Its metrics on bank and eval tokens where one marked token carries the class (test_probe_attentive): near
    perfect; a split without labels is refused, naming what is missing."""
    x, label = one_token_classes(n=200, seed=4)
    evaluator = attentive_evaluator(task_config("classification"), heads=4)
    evaluator.bank = {"tokens": x[:160], "label": label[:160]}
    scores = evaluator.metrics({"tokens": x[160:], "label": label[160:]})
    assert set(scores) == {"attentive_top1", "attentive_top5"} and scores["attentive_top1"] >= 0.95, scores
    assert scores["attentive_top5"] == 1.0  # 8 classes (config.data.num_classes), 4 of them used
    with pytest.raises(ValueError, match="needs labelled 'eval' and 'train' splits"):
        evaluator.metrics({"tokens": x[160:]})
    evaluator = attentive_evaluator(task_config("classification"), heads=5)
    evaluator.bank = {"tokens": x[:160], "label": label[:160]}
    with pytest.raises(ValueError, match=r"config.evals.probe.heads=5 does not divide the feature dimension 32"):
        evaluator.metrics({"tokens": x[160:], "label": label[160:]})


def test_attentive_probe_reads_each_familys_tokens():
    """Any encoder: the tokens come from the part `models.tokens_part` names (the one place extract reads too); a
    V-JEPA 2 model without a head (pre-training's) gives them itself, as model(video)["last_hidden_state"], float32,
    and several eval views side by side."""
    assert models.tokens_part("videomae", videomae.default_config()) == "encoder"  # head "pretrain"
    assert models.tokens_part("svt", svt.default_config()) == "backbone"
    assert models.tokens_part("captioner", captioner.default_config()) == "encoder"
    chunked = captioner.default_config()
    chunked.num_chunks = 2
    with pytest.raises(ValueError, match="encodes 2 chunks per clip"):
        models.tokens_part("captioner", chunked)
    config = task_config("classification")
    config.model_name = "vjepa2"
    config.model = vjepa2.default_config()
    config.model.update(variant="Mu/16", width=32, depth=1, num_heads=2, mlp_dim=64, num_frames=4, image_size=32,
                        head="none", predictor=False)
    assert models.tokens_part("vjepa2", config.model) == ""
    with nnx.use_eager_sharding(False):
        model = vjepa2.Model(config.model, rngs=ParamKeys(0))
    video = jax.random.normal(jax.random.key(0), (2, 2, 4, 32, 32, 3))  # 2 clips x 2 views
    evaluator = attentive_evaluator(config)
    one = evaluator.batch_outputs(model, {"video": video[:, 0], "label": jnp.array([1, 2])})
    tokens = model(video[:, 0])["last_hidden_state"]
    assert one["tokens"].dtype == jnp.float32 and one["tokens"].shape == tokens.shape == (2, 8, 32)
    np.testing.assert_array_equal(one["tokens"], tokens)
    np.testing.assert_array_equal(one["label"], [1, 2])
    both = evaluator.batch_outputs(model, {"video": video})
    np.testing.assert_allclose(both["tokens"], jnp.concatenate([tokens, model(video[:, 1])["last_hidden_state"]], 1),
                               atol=1e-5)


def test_linear_probe_on_mean_pooled_tokens_of_a_run_and_of_its_initial_weights(tmp_path):
    """The linear evaluator: a linear layer on the mean of the encoder's tokens, trained on the bank split; near
    perfect where the mean carries the class, chance-free figures of the trained and (step 0) the initial weights of a
    run, which `evaluate` reproduces; the probe's settings checked as the attentive probe's are."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, 240)
    centres = rng.standard_normal((4, 16)) * 3
    tokens = centres[label][:, None, :] + rng.standard_normal((240, 5, 16))  # 5 noisy tokens around the class centre
    context = train.eval_context(task_config("classification"), None, metadata={}, sources={})
    evaluator = evaluators.get("linear")(context, name="lin")
    evaluator.bank = {"features": tokens[:200].mean(1).astype(np.float32), "label": label[:200]}
    scores = evaluator.metrics({"features": tokens[200:].mean(1).astype(np.float32), "label": label[200:]})
    assert set(scores) == {"linear_top1", "linear_top5"} and scores["linear_top1"] >= 0.95, scores

    config = tiny_config(total_steps=2, checkpoint_every=2)
    config.evals = dict(lin=dict(type="linear", epochs=5))
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    for init in ("", "_init"):
        assert 0.0 <= result[f"lin_linear_top1{init}"] <= result[f"lin_linear_top5{init}"] <= 1.0
    again = evaluate.evaluate_checkpoint(None, str(tmp_path), str(tmp_path / "eval" / "out.json"))
    assert again["lin_linear_top1"] == result["lin_linear_top1"]

    config.evals = dict(lin=dict(type="linear", depth=2, epochs=0))
    problems = "\n".join(evaluators.config_problems(config, training_of(config.task)))
    assert "config.evals.lin.epochs=0 must be a whole number >= 1." in problems
    assert "config.evals.lin has unknown keys ['depth']" in problems, problems
