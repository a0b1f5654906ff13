"""SVT / DINO building blocks: the multi-view loss, centre, EMA and schedules against hand-computed values, the DINO
head, TimeSformer's run-time table resize against resized weights, multi-crop views, and weighted k-NN."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from vidjax import losses, metrics
from vidjax.convert.common import abstract_params, flatten_params, unflatten_params
from vidjax.models import get_model, svt, timesformer

T, SIZE, WIDTH = 4, 32, 32  # 4 frames of 32 px, 8 px patches: a 4 x 4 grid


def backbone_config(**overrides) -> ml_collections.ConfigDict:
    cfg = timesformer.default_config()
    cfg.update(dict(variant="Mu/8", width=WIDTH, depth=1, num_heads=2, num_frames=T, image_size=SIZE, head="none"))
    cfg.update(overrides)
    return cfg


def svt_config() -> ml_collections.ConfigDict:
    cfg = svt.default_config()
    cfg.backbone.update(dict(variant="Mu/8", width=WIDTH, depth=1, num_heads=2, num_frames=T, image_size=SIZE))
    cfg.update(dict(head_hidden_dim=64, head_bottleneck_dim=16, out_dim=32))
    return cfg


def abstract(module, cfg):
    """`module.Model(cfg)` with shapes only: nothing is initialised, so no initializer compiles (minutes on CPU
    over a file like this one); tests fill the parameters with `random_params` or copied values."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: module.Model(cfg, rngs=nnx.Rngs(0)))


def random_params(module: nnx.Module, seed: int, scale: float = 0.3) -> nnx.Module:
    """Every parameter of `module` set to numpy noise (LayerNorm scales around 1), so zero-initialised tables and
    branches take part in the comparisons."""
    rng = np.random.default_rng(seed)

    def noise(path, x):
        centre = 1.0 if any(getattr(k, "key", None) == "scale" for k in path) else 0.0
        return jnp.asarray(centre + scale * rng.normal(size=x.shape), jnp.float32)

    nnx.update(module, jax.tree_util.tree_map_with_path(noise, nnx.state(module, nnx.Param)))
    return module


def param_names(model) -> set[str]:
    return set(flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


# Jitted forward passes: on CPU one compilation per clip shape costs far less than running every op eagerly.
@nnx.jit
def hidden(model, clip):
    return model(clip)["last_hidden_state"]


@nnx.jit
def svt_logits(model, clip):
    return model(clip)["logits"]


def video(batch=2, frames=T, size=SIZE, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, frames, size, size, 3)), jnp.float32)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------------- loss


def test_dino_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    student = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(4)]  # 2 global, then 2 local views
    teacher = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(2)]
    center = np.array([0.5, -0.2, 0.1], np.float32)
    for student_temp, teacher_temp in ((0.1, 0.04), (0.2, 0.07)):
        # ce[i, v]: batch-mean cross-entropy of teacher view i's centred, sharpened softmax against student view v.
        ce = np.zeros((2, 4))
        for i in range(2):
            q = softmax((teacher[i].astype(np.float64) - center) / teacher_temp)
            for v in range(4):
                log_p = np.log(softmax(student[v].astype(np.float64) / student_temp))
                ce[i, v] = np.mean(-(q * log_p).sum(axis=1))
        # Student views 0 and 1 are the teacher's own views 0 and 1: those two pairs are skipped, 6 remain.
        expected = (ce.sum() - ce[0, 0] - ce[1, 1]) / 6
        got = losses.dino_loss([jnp.asarray(s) for s in student], [jnp.asarray(t) for t in teacher],
                               jnp.asarray(center), student_temp=student_temp, teacher_temp=teacher_temp)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5)

    # The centre matters (a non-constant one changes the targets); a constant shift of it does not (softmax).
    base = losses.dino_loss(student, teacher, jnp.asarray(center))
    shifted = losses.dino_loss(student, teacher, jnp.asarray(center + 3.0))
    np.testing.assert_allclose(float(shifted), float(base), rtol=1e-5)
    assert abs(float(losses.dino_loss(student, teacher, jnp.zeros(3))) - float(base)) > 1e-3

    with pytest.raises(ValueError, match="one shape for every view"):
        losses.dino_loss(student[:3] + [np.zeros((2, 4), np.float32)], teacher, jnp.asarray(center))


def test_no_gradient_reaches_the_teacher_or_the_centre():
    rng = np.random.default_rng(1)
    student = [jnp.asarray(rng.normal(size=(2, 3)), jnp.float32) for _ in range(4)]
    teacher = [jnp.asarray(rng.normal(size=(2, 3)), jnp.float32) for _ in range(2)]
    center = jnp.asarray([0.1, 0.0, -0.1])
    grad_t, grad_c = jax.grad(lambda t, c: losses.dino_loss(student, t, c), argnums=(0, 1))(teacher, center)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grad_t) and float(jnp.abs(grad_c).max()) == 0.0
    grad_s = jax.grad(lambda s: losses.dino_loss(s, teacher, center))(student)
    assert all(float(jnp.abs(g).max()) > 0.0 for g in grad_s)


def test_update_center_and_ema_update():
    center = jnp.asarray([1.0, 2.0, 3.0])
    teacher = [jnp.asarray([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), jnp.asarray([[0.0, 0.0, 6.0], [4.0, 4.0, -2.0]])]
    # Mean over the 4 rows of both views: (2, 2, 2); 0.9 * (1, 2, 3) + 0.1 * (2, 2, 2).
    np.testing.assert_allclose(losses.update_center(center, teacher), [1.1, 2.0, 2.9], rtol=1e-6)
    np.testing.assert_allclose(losses.update_center(center, teacher, momentum=0.5), [1.5, 2.0, 2.5], rtol=1e-6)

    teacher_params = {"a": jnp.asarray([1.0, 2.0]), "b": {"c": jnp.asarray([4.0], jnp.bfloat16)}}
    student_params = {"a": jnp.asarray([3.0, 6.0]), "b": {"c": jnp.asarray([0.0], jnp.bfloat16)}}
    new = losses.ema_update(teacher_params, student_params, 0.75)
    np.testing.assert_allclose(new["a"], [1.5, 3.0])  # 0.75 * teacher + 0.25 * student
    assert new["b"]["c"].dtype == jnp.bfloat16 and float(new["b"]["c"][0]) == 3.0
    # Nothing flows back to the student through the average.
    grad = jax.grad(lambda s: losses.ema_update(teacher_params["a"], s, 0.75).sum())(student_params["a"])
    np.testing.assert_array_equal(grad, [0.0, 0.0])


def test_schedules_first_middle_last_steps():
    total = 100
    iters = np.arange(total)  # DINO's cosine_scheduler: final + (base - final) / 2 * (1 + cos(pi * it / len(iters)))
    momentum = losses.teacher_momentum_schedule(total)
    reference = 1.0 + 0.5 * (0.996 - 1.0) * (1 + np.cos(np.pi * iters / total))
    for step, value in ((0, 0.996), (50, 0.998), (99, reference[99]), (total, 1.0)):
        np.testing.assert_allclose(float(momentum(step)), value, rtol=1e-7, atol=1e-7)
    weight_decay = losses.weight_decay_schedule(total)
    for step, value in ((0, 0.04), (50, 0.22), (99, 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * 0.99))),
                        (total, 0.4)):
        np.testing.assert_allclose(float(weight_decay(step)), value, rtol=1e-6)

    # Per epoch, np.linspace(0.02, 0.04, 3) = 0.02, 0.03, 0.04 over the 3 warm-up epochs, then 0.04.
    temp = losses.teacher_temp_schedule(steps_per_epoch=10, warmup_epochs=3, warmup_temp=0.02, temp=0.04)
    for step, value in ((0, 0.02), (9, 0.02), (10, 0.03), (25, 0.04), (1000, 0.04)):
        np.testing.assert_allclose(float(temp(step)), value, rtol=1e-6)
    np.testing.assert_allclose(float(losses.teacher_temp_schedule(10)(0)), 0.04)  # SVT: no warm-up, 0.04
    one = losses.teacher_temp_schedule(10, warmup_epochs=1, warmup_temp=0.02)  # linspace(0.02, 0.04, 1) = [0.02]
    assert [round(float(one(s)), 6) for s in (0, 10)] == [0.02, 0.04]
    assert float(jax.jit(momentum)(jnp.asarray(50))) == pytest.approx(0.998)


def test_teacher_entropy():
    # Logits (0, 0.04 ln 3) at temperature 0.04: probabilities (1/4, 3/4), entropy -(1/4 ln 1/4 + 3/4 ln 3/4).
    logits = jnp.asarray([[0.0, 0.04 * math.log(3.0)]] * 2)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(float(losses.teacher_entropy(logits, jnp.zeros(2), 0.04)), expected, rtol=1e-5)
    # Uniform targets have entropy log K; the centre is subtracted before sharpening.
    np.testing.assert_allclose(float(losses.teacher_entropy([jnp.ones((3, 5))], jnp.ones(5))), math.log(5), rtol=1e-6)


def test_teacher_batch_entropy_tells_sharp_targets_from_collapse():
    # Three rows, each one-hot at temperature 0.04 (a gap of 4 in logits: e^-100), on outputs 0, 1, 2 of 4: the
    # batch-mean is (1/3, 1/3, 1/3, 0), entropy ln 3, while each row's entropy is about 0.
    spread = jnp.asarray([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    np.testing.assert_allclose(float(losses.teacher_batch_entropy(spread, jnp.zeros(4))), math.log(3), rtol=1e-5)
    assert float(losses.teacher_entropy(spread, jnp.zeros(4))) < 1e-6
    # Every row on output 2 (one dimension taking over): 0; the centre is subtracted first, so a centre that
    # cancels output 2's lead leaves uniform rows, and the batch entropy is ln 4.
    collapsed = jnp.asarray([[0, 0, 4.0, 0]] * 3)
    assert float(losses.teacher_batch_entropy([collapsed[:2], collapsed[2:]], jnp.zeros(4))) < 1e-6
    np.testing.assert_allclose(float(losses.teacher_batch_entropy(collapsed, jnp.asarray([0, 0, 4.0, 0]))),
                               math.log(4), rtol=1e-6)


# ------------------------------------------------------------------------------------------------------- head


def test_dino_head():
    with nnx.use_eager_sharding(False):
        head = svt.DINOHead(WIDTH, 32, hidden_dim=64, bottleneck_dim=16, rngs=nnx.Rngs(0))
    kernels = [np.asarray(dense.kernel[...]) for dense in head.mlp]
    assert [k.shape for k in kernels] == [(WIDTH, 64), (64, 64), (64, 16)]
    assert abs(float(np.concatenate([k.ravel() for k in kernels]).std()) - 0.02) < 0.002
    assert all(not np.asarray(dense.bias[...]).any() for dense in head.mlp)
    v = np.asarray(head.last_layer.kernel[...])
    assert v.shape == (16, 32) and np.abs(v).max() <= 1 / math.sqrt(16)  # PyTorch's default Linear init

    random_params(head, seed=3)
    x = np.random.default_rng(4).normal(size=(3, WIDTH)).astype(np.float32)
    # By hand: Linear, exact GELU, Linear, exact GELU, Linear, L2 normalise, then unit-norm columns.
    gelu = np.vectorize(lambda a: 0.5 * a * (1 + math.erf(a / math.sqrt(2))))
    params = [(np.asarray(d.kernel[...], np.float64), np.asarray(d.bias[...], np.float64)) for d in head.mlp]
    h = x
    for i, (kernel, bias) in enumerate(params):
        h = (h if i == 0 else gelu(h)) @ kernel + bias
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    v = np.asarray(head.last_layer.kernel[...], np.float64)
    run = nnx.jit(lambda h, x: (h(x), h.bottleneck(x)))
    out, bottleneck = run(head, jnp.asarray(x))
    assert out.shape == (3, 32) and out.dtype == jnp.float32
    np.testing.assert_allclose(bottleneck, z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(bottleneck, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, z @ (v / np.linalg.norm(v, axis=0)), rtol=1e-4, atol=1e-5)
    # Each output unit's weight is a direction: scaling a column of the stored kernel changes nothing.
    head.last_layer.kernel[...] = jnp.asarray(v * np.linspace(0.1, 9.0, 32)[None, :], jnp.float32)
    np.testing.assert_allclose(run(head, jnp.asarray(x))[0], out, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------- run-time resize


@pytest.mark.parametrize("frames, size", [(2, 24), (6, 48)])  # fewer / more frames and patches (3x3, 6x6)
def test_runtime_resize_equals_resized_weights(frames, size):
    cfg = backbone_config(resize_at_runtime=True)
    model = random_params(abstract(timesformer, cfg), seed=7)
    params = {k: np.asarray(v) for k, v in flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}
    dst = backbone_config(num_frames=frames, image_size=size)
    resized = abstract(timesformer, dst)
    flat = timesformer.resize_positions(params, cfg, dst)
    nnx.update(resized, unflatten_params(abstract_params("timesformer", dst), flat))
    clip = video(frames=frames, size=size, seed=2)
    np.testing.assert_allclose(hidden(model, clip), hidden(resized, clip), rtol=1e-5, atol=1e-5)


def test_runtime_resize_is_opt_in_and_changes_nothing_at_the_config_size():
    plain = random_params(abstract(timesformer, backbone_config()), seed=8)
    resizing = abstract(timesformer, backbone_config(resize_at_runtime=True))
    nnx.update(resizing, nnx.state(plain, nnx.Param))
    clip = video()
    np.testing.assert_array_equal(hidden(plain, clip), hidden(resizing, clip))
    with pytest.raises(ValueError, match="resize_at_runtime=True"):
        plain(video(frames=2))
    assert timesformer.default_config().resize_at_runtime is False


# ------------------------------------------------------------------------------------------------------ model


def test_svt_model_outputs_and_parameter_names():
    cfg = svt_config()
    model = random_params(abstract(svt, cfg), seed=9)
    assert get_model("svt") is svt
    params = param_names(model)
    # The backbone's parameters are a plain head-less TimeSformer's, so its converted weights load unchanged.
    assert {k.removeprefix("backbone/") for k in params if k.startswith("backbone/")} == param_names(
        abstract(timesformer, cfg.backbone))
    assert {k for k in params if not k.startswith("backbone/")} == {
        "head/mlp/0/kernel", "head/mlp/0/bias", "head/mlp/1/kernel", "head/mlp/1/bias", "head/mlp/2/kernel",
        "head/mlp/2/bias", "head/last_layer/kernel"}

    clip = video(frames=2, size=16)  # any view size: the backbone resizes its tables

    @nnx.jit
    def outputs_and_parts(m, x):
        out = m(x)
        return out, m.backbone(x)["last_hidden_state"][:, 0], m.head(out["cls"])

    out, cls, logits = outputs_and_parts(model, clip)
    assert out["cls"].shape == (2, WIDTH) and out["logits"].shape == (2, 32) and out["logits"].dtype == jnp.float32
    np.testing.assert_allclose(out["cls"], cls, rtol=1e-6)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-6)

    published = svt.default_config()
    bb = published.backbone
    assert (bb.variant, bb.num_frames, bb.image_size, bb.attention_type, bb.qkv_bias, bb.ln_eps, bb.drop_path,
            bb.head, bb.resize_at_runtime) == ("B/16", 8, 224, "divided_space_time", True, 1e-6, 0.1, "none", True)
    assert (published.head_hidden_dim, published.head_bottleneck_dim, published.out_dim) == (2048, 256, 65536)
    with pytest.raises(ValueError, match="backbone.head='classification'"):
        bad = svt_config()
        bad.backbone.head = "classification"
        abstract(svt, bad)


def test_views_groups_by_shape_and_keeps_the_order(monkeypatch):
    model = random_params(abstract(svt, svt_config()), seed=10)
    views = [video(frames=4, size=32, seed=1), video(frames=2, size=16, seed=2), video(frames=4, size=32, seed=3)]
    alone = [svt_logits(model, v) for v in views]
    calls, heads = [], []
    call, head = timesformer.Model.__call__, svt.DINOHead.__call__
    monkeypatch.setattr(timesformer.Model, "__call__",
                        lambda self, v, **kw: calls.append(v.shape) or call(self, v, **kw))
    monkeypatch.setattr(svt.DINOHead, "__call__", lambda self, x: heads.append(x.shape) or head(self, x))
    logits = nnx.jit(lambda m, vs: m.views(vs))(model, views)
    # One backbone call per shape, in order of first appearance: views 0 and 2 (4 frames of 32 px) go together;
    # then one head call over the CLS of all six rows, as the reference's MultiCropWrapper.
    assert calls == [(4, 4, 32, 32, 3), (2, 2, 16, 16, 3)]
    assert heads == [(6, WIDTH)]
    assert len(logits) == len(views)
    for got, expected in zip(logits, alone, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_head_batch_norm_uses_the_statistics_of_every_view():
    """head_use_bn (DINO's use_bn_in_head): BatchNorm1d in training mode after each hidden Linear, over the rows of
    all the views together, so a view's logits depend on the other views; without it they do not."""
    cfg = svt_config()
    cfg.head_use_bn = True
    model = random_params(abstract(svt, cfg), seed=11)
    assert [tuple(n.scale.shape) for n in model.head.norms] == [(64,), (64,)]
    x = np.random.default_rng(5).normal(size=(6, WIDTH)).astype(np.float32)
    gelu = np.vectorize(lambda a: 0.5 * a * (1 + math.erf(a / math.sqrt(2))))
    h = x.astype(np.float64)
    for i, dense in enumerate(model.head.mlp):
        if i:
            norm = model.head.norms[i - 1]
            mean, var = h.mean(axis=0), h.var(axis=0)  # biased variance, as BatchNorm1d normalises in training
            h = gelu((h - mean) / np.sqrt(var + 1e-5) * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...]))
        h = h @ np.asarray(dense.kernel[...], np.float64) + np.asarray(dense.bias[...], np.float64)
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    bottleneck = nnx.jit(lambda m, x: m.head.bottleneck(x))(model, jnp.asarray(x))
    np.testing.assert_allclose(bottleneck, z, rtol=1e-4, atol=1e-5)

    views = [video(frames=4, size=32, seed=1), video(frames=2, size=16, seed=2)]
    together = nnx.jit(lambda m, vs: m.views(vs))(model, views)
    assert not np.allclose(together[0], svt_logits(model, views[0]), atol=1e-3)  # the locals' rows take part
    cls = jnp.concatenate([hidden(model.backbone, v)[:, 0] for v in views], axis=0)
    expected = nnx.jit(lambda m, c: m.head(c))(model, cls)
    np.testing.assert_allclose(jnp.concatenate(together, axis=0), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- k-NN


def test_knn_hand_computed_two_classes():
    train = [[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]  # classes 0, 1, 1; the last is (1, 1)/sqrt(2) once normalised
    labels = [0, 1, 1]
    test = [[1.0, 0.2]]
    norm = math.sqrt(1.04)
    sims = [1.0 / norm, 0.2 / norm, 1.2 / (norm * math.sqrt(2.0))]  # 0.981, 0.196, 0.832
    # k=2: the neighbours are train 0 (class 0) and train 2 (class 1), each voting exp(sim / T).
    scores = metrics.knn_classify(train, labels, test, num_classes=2, k=2, temperature=0.5)
    np.testing.assert_allclose(scores, [[math.exp(sims[0] / 0.5), math.exp(sims[2] / 0.5)]], rtol=1e-6)
    # k=3 adds train 1's vote to class 1: exp(1.664) + exp(0.392) = 6.76 against class 0's exp(1.961) = 7.11.
    scores = metrics.knn_classify(train, labels, test, num_classes=2, k=3, temperature=0.5)
    np.testing.assert_allclose(scores[0], [math.exp(sims[0] / 0.5), math.exp(sims[2] / 0.5) + math.exp(sims[1] / 0.5)],
                               rtol=1e-6)
    assert metrics.knn_top1(train, labels, test, [0], num_classes=2, k=3, temperature=0.5) == 1.0
    # At T=5 the votes are nearly even, so two neighbours outvote one: exp(0.166) + exp(0.039) = 2.22 > exp(0.196).
    assert metrics.knn_top1(train, labels, test, [1], num_classes=2, k=3, temperature=5.0) == 1.0
    with pytest.raises(ValueError, match="k=4 neighbours"):
        metrics.knn_classify(train, labels, test, num_classes=2, k=4)


def test_knn_separable_clusters_and_chunking():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    train_labels = np.repeat(np.arange(3), 20)
    test_labels = np.tile(np.arange(3), 11)
    train = centres[train_labels] + rng.normal(size=(60, 16))
    test = centres[test_labels] + rng.normal(size=(33, 16))
    assert metrics.knn_top1(train, train_labels, test, test_labels, num_classes=3) == 1.0
    whole = metrics.knn_classify(train, train_labels, test, 3, k=5)
    chunked = metrics.knn_classify(train * 7.0, train_labels, test, 3, k=5, chunk_size=4)  # scale-free: L2-normalised
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
