"""Optimizer recipe: which parameters decay, the warm-up + cosine schedule, the linear lr scaling rule, layer decay."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from test_train import tiny_config

from vidjax import train
from vidjax.config_lib import ConfigError
from vidjax.models import timesformer, videomae, videomamba, vivit
from vidjax.train import optim


def test_weight_decay_only_on_weight_matrices():
    config = tiny_config()
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))
    flat = jax.tree_util.tree_flatten_with_path(optim.decay_mask(setup.abstract_state["params"]))[0]
    by_name = {}
    for path, decays in flat:
        by_name.setdefault(path[-1].key, set()).add(decays)
    assert by_name.pop("kernel") == by_name.pop("qkv") == by_name.pop("proj") == {True}
    # q/v biases are 2-D (heads, head_dim) and the mask token is a vector: none of them decay.
    assert set(by_name) == {"bias", "scale", "q_bias", "v_bias", "proj_bias", "mask_token"}
    assert all(values == {False} for values in by_name.values())


def test_warmup_cosine_schedule_and_lr_scaling():
    config = tiny_config(batch_size=512)
    config.optimizer.base_lr, config.optimizer.lr_batch_base, config.optimizer.min_lr = 1.5e-4, 256, 1e-5
    assert optim.peak_lr(config) == pytest.approx(3e-4)
    schedule = optim.make_schedule(config, total_steps=100, warmup_steps=10)
    lrs = np.array([schedule(s) for s in range(101)])
    assert lrs[0] == 0 and lrs[5] == pytest.approx(1.5e-4) and lrs[10] == pytest.approx(3e-4)
    assert (np.diff(lrs[:11]) > 0).all() and (np.diff(lrs[10:]) <= 1e-12).all()
    assert lrs[55] == pytest.approx(1e-5 + (3e-4 - 1e-5) / 2, rel=1e-4)  # cosine midpoint
    assert lrs[100] == pytest.approx(1e-5)


def test_wsd_schedule_warms_up_from_its_start_holds_then_cools_down():
    """V-JEPA 2's warm-up / stable / decay: from warmup_start x peak up to the peak, the peak, then linear to min_lr
    over the last cooldown_epochs."""
    config = tiny_config(batch_size=256)
    opt = config.optimizer
    opt.base_lr, opt.lr_batch_base, opt.min_lr, opt.schedule = 5.25e-4, 256, 1e-6, "wsd"
    opt.warmup_start, opt.cooldown_epochs = 1e-4 / 5.25e-4, 2.0
    schedule = optim.make_schedule(config, total_steps=100, warmup_steps=10, steps_per_epoch=10)
    lrs = np.array([schedule(s) for s in range(101)])
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx((1e-4 + 5.25e-4) / 2)
    assert np.allclose(lrs[10:81], 5.25e-4)  # stable until the cool-down's 20 steps
    assert lrs[90] == pytest.approx((5.25e-4 + 1e-6) / 2) and lrs[100] == pytest.approx(1e-6)
    assert (np.diff(lrs[80:]) < 0).all()
    opt.warmup_start = 2.0
    with pytest.raises(ConfigError, match="warmup_start in"):
        optim.make_schedule(config, total_steps=100, warmup_steps=10, steps_per_epoch=10)


# ---- layer-wise lr decay ----

def tiny_params(family, **overrides):
    """Abstract params of a tiny model (shapes only: layer ids read paths)."""
    module = {"videomae": videomae, "timesformer": timesformer, "vivit": vivit, "videomamba": videomamba}[family]
    cfg = module.default_config()
    cfg.update(dict(variant="Mu/8x2" if family == "vivit" else "Mu/8", width=32, depth=2, num_frames=4,
                    image_size=32, num_classes=5))
    if family != "videomamba":
        cfg.num_heads = 2
    cfg.update(overrides)
    with nnx.use_eager_sharding(False):
        return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: module.Model(cfg, rngs=nnx.Rngs(0)))))


def ids_by_group(params, groups):
    """{group prefix: set of ids of the parameters under it}; fails if a parameter is under no listed group."""
    ids, num_blocks = optim.layer_ids(params)
    found = {}
    for path, layer in jax.tree_util.tree_flatten_with_path(ids)[0]:
        name = "/".join(str(k.key) for k in path)
        group = [g for g in groups if name == g or name.startswith(g + "/")]
        assert len(group) == 1, (name, group)
        found.setdefault(group[0], set()).add(layer)
    return found, num_blocks


# Hand-listed: every top-level group of each family's tiny model (depth 2) and its layer id.
LAYER_IDS = {
    "videomae classification": (("videomae", dict(head="classification")), 2, {
        "encoder/patch_embed": 0, "encoder/transformer/blocks/0": 1, "encoder/transformer/blocks/1": 2,
        "fc_norm": 3, "head": 3}),
    "videomae cls-token head": (("videomae", dict(head="classification", use_mean_pooling=False)), 2, {
        "encoder/patch_embed": 0, "encoder/transformer/blocks/0": 1, "encoder/transformer/blocks/1": 2,
        "encoder/norm": 3, "head": 3}),
    "videomae pretrain": (("videomae", dict(head="pretrain", decoder_width=32, decoder_heads=2, decoder_depth=1)), 2, {
        "encoder/patch_embed": 0, "encoder/transformer/blocks/0": 1, "encoder/transformer/blocks/1": 2,
        "encoder/norm": 3, "encoder_to_decoder": 3, "mask_token": 3, "decoder/blocks/0": 3, "decoder_norm": 3,
        "decoder_head": 3}),
    "timesformer divided": (("timesformer", {}), 2, {
        "patch_embed": 0, "cls_token": 0, "pos_embed": 0, "time_embed": 0, "blocks/0": 1, "blocks/1": 2,
        "norm": 3, "head": 3}),
    "timesformer space_only": (("timesformer", dict(attention_type="space_only")), 2, {
        "patch_embed": 0, "cls_token": 0, "pos_embed": 0, "blocks/0": 1, "blocks/1": 2, "norm": 3, "head": 3}),
    "vivit joint": (("vivit", {}), 2, {
        "patch_embed": 0, "cls_token": 0, "pos_embed": 0, "transformer/blocks/0": 1, "transformer/blocks/1": 2,
        "norm": 3, "head": 3}),
    # Spatial blocks 1-2, then temporal blocks 3-4; what sits between the stacks takes the last spatial id.
    "vivit factorised_encoder": (("vivit", dict(model_type="factorised_encoder", temporal_depth=2)), 4, {
        "patch_embed": 0, "cls_token": 0, "pos_embed": 0, "transformer/blocks/0": 1, "transformer/blocks/1": 2,
        "spatial_norm": 2, "temporal_cls_token": 2, "temporal_pos_embed": 2, "temporal_transformer/blocks/0": 3,
        "temporal_transformer/blocks/1": 4, "norm": 5, "head": 5}),
    "vivit factorised_self_attention": (("vivit", dict(model_type="factorised_self_attention")), 2, {
        "patch_embed": 0, "pos_embed": 0, "blocks/0": 1, "blocks/1": 2, "norm": 3, "head": 3}),
    "vivit factorised_dot_product": (("vivit", dict(model_type="factorised_dot_product")), 2, {
        "patch_embed": 0, "pos_embed": 0, "blocks/0": 1, "blocks/1": 2, "norm": 3, "head": 3}),
    "videomamba": (("videomamba", {}), 2, {
        "patch_embed": 0, "cls_token": 0, "pos_embed": 0, "temporal_pos_embedding": 0, "layers/0": 1,
        "layers/1": 2, "norm_f": 3, "head": 3}),
    "videomamba backbone": (("videomamba", dict(head="none")), 2, {
        "patch_embed": 0, "cls_token": 0, "pos_embed": 0, "temporal_pos_embedding": 0, "layers/0": 1,
        "layers/1": 2, "norm_f": 3}),
}


@pytest.mark.parametrize("name", LAYER_IDS)
def test_layer_ids_of_every_model_family(name):
    (family, overrides), num_blocks, expected = LAYER_IDS[name]
    found, blocks = ids_by_group(tiny_params(family, **overrides), expected)
    assert blocks == num_blocks
    assert found == {group: {layer} for group, layer in expected.items()}


def test_layer_ids_accept_string_block_indices():
    """A params tree restored from a checkpoint may carry its list indices as strings."""
    params = tiny_params("timesformer")
    params["blocks"] = {str(i): block for i, block in params["blocks"].items()}
    found, _ = ids_by_group(params, ["patch_embed", "cls_token", "pos_embed", "time_embed", "blocks/0", "blocks/1",
                                     "norm", "head"])
    assert found["blocks/0"] == {1} and found["blocks/1"] == {2} and found["head"] == {3}


def test_layer_decay_scales_values():
    scales = optim.layer_decay_scales(tiny_params("vivit"), 0.5)
    assert scales["patch_embed"]["kernel"] == scales["cls_token"] == scales["pos_embed"] == 0.5 ** 3
    assert scales["transformer"]["blocks"][0]["attn"]["qkv"] == 0.5 ** 2
    assert scales["transformer"]["blocks"][1]["mlp"]["fc1"]["bias"] == 0.5
    assert scales["norm"]["scale"] == scales["head"]["kernel"] == 1.0
    ones = optim.layer_decay_scales(tiny_params("videomamba"), 1.0)
    assert set(jax.tree.leaves(ones)) == {1.0}
    with pytest.raises(ValueError, match=r"must be in \(0, 1\], got 1.5"):
        optim.layer_decay_scales(tiny_params("videomamba"), 1.5)


def test_unknown_layouts_raise():
    params = tiny_params("videomae", head="classification")
    params["adapter"] = {"kernel": np.zeros((2, 2))}
    with pytest.raises(ValueError, match="no layer id for parameter adapter/kernel"):
        optim.layer_ids(params)
    with pytest.raises(ValueError, match="block lists \\[\\].*layer_decay=1.0"):
        optim.layer_ids({"dense": {"kernel": np.zeros((2, 2))}})
    with pytest.raises(ValueError, match="block lists \\[blocks, layers\\]"):
        optim.layer_ids({"blocks": {0: {"w": np.zeros(1)}}, "layers": {0: {"w": np.zeros(1)}}})
    with pytest.raises(ValueError, match="numbered \\[0, 2\\], not 0..1"):
        optim.layer_ids({"blocks": {0: {"w": np.zeros(1)}, 2: {"w": np.zeros(1)}}})
    with pytest.raises(ValueError, match="'attn' is not a block index"):
        optim.layer_ids({"blocks": {"attn": {"w": np.zeros(1)}}})
    # The temporal stack of a factorised encoder alone is not a known model.
    with pytest.raises(ValueError, match="block lists \\[temporal_transformer/blocks\\]"):
        optim.layer_ids({"temporal_transformer": {"blocks": {0: {"w": np.zeros(1)}}}})


def _updates(tx, params, grads_per_step):
    """The updates of successive steps, all at the same params (so runs with different lrs stay comparable)."""

    def run(params, grads_per_step):
        state, out = tx.init(params), []
        for grads in grads_per_step:
            updates, state = tx.update(grads, state, params)
            out.append(updates)
        return out

    return jax.jit(run)(params, grads_per_step)


def _tiny_finetune_setup(layer_decay):
    """A trainer config, random params shaped as a tiny VideoMAE classifier's and two steps of random gradients."""
    config = tiny_config()
    config.optimizer.weight_decay = 0.05
    with config.unlocked():
        config.optimizer.layer_decay = layer_decay
    shapes = tiny_params("videomae", head="classification")
    rng = np.random.default_rng(0)
    params, *grads = (jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), shapes) for _ in range(3))
    return config, params, grads, optax.constant_schedule(1e-3)


def test_layer_decay_one_matches_the_plain_optimizer():
    config, params, grads, schedule = _tiny_finetune_setup(1.0)
    opt = config.optimizer
    plain = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=optim.decay_mask)
    expected = _updates(plain, params, grads)
    for tx in (optim.make_optimizer(config, schedule), optax.chain(plain, optim.scale_by_layer_decay(1.0))):
        for got, want in zip(_updates(tx, params, grads), expected, strict=True):
            jax.tree.map(np.testing.assert_array_equal, got, want)


def test_layer_decay_scales_the_whole_adamw_update():
    """Head unscaled, block i by decay**(L-i), patch embedding by decay**(L+1): lr and weight decay together."""
    decay, num_blocks = 0.5, 2
    config, params, grads, schedule = _tiny_finetune_setup(1.0)
    plain = _updates(optim.make_optimizer(config, schedule), params, grads)
    with config.unlocked():
        config.optimizer.layer_decay = decay
    decayed = _updates(optim.make_optimizer(config, schedule), params, grads)
    for got, want in zip(decayed, plain, strict=True):
        np.testing.assert_array_equal(got["head"]["kernel"], want["head"]["kernel"])
        np.testing.assert_array_equal(got["fc_norm"]["scale"], want["fc_norm"]["scale"])
        np.testing.assert_allclose(got["encoder"]["patch_embed"]["kernel"],
                                   decay ** (num_blocks + 1) * want["encoder"]["patch_embed"]["kernel"], rtol=1e-6)
        for i in range(num_blocks):
            got_block, want_block = (u["encoder"]["transformer"]["blocks"][i] for u in (got, want))
            np.testing.assert_allclose(got_block["attn"]["qkv"], decay ** (num_blocks - i) * want_block["attn"]["qkv"],
                                       rtol=1e-6)
    # The weight-decay term is scaled too: with zero gradients the update is -lr * wd * p * scale.
    zero = [jax.tree.map(np.zeros_like, params)]
    (update,) = _updates(optim.make_optimizer(config, schedule), params, zero)
    np.testing.assert_allclose(update["encoder"]["patch_embed"]["kernel"],
                               -1e-3 * 0.05 * decay ** 3 * params["encoder"]["patch_embed"]["kernel"], rtol=1e-5)


def test_layer_decay_config_is_checked_and_builds_a_trainer():
    config = tiny_config()
    with config.unlocked():
        config.optimizer.layer_decay = 0.0
    with pytest.raises(ConfigError, match=r"config.optimizer.layer_decay must be in \(0, 1\]"):
        optim.make_optimizer(config, optax.constant_schedule(1e-3))
    config.optimizer.layer_decay = 0.75
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))
    params = setup.abstract_state["params"]
    updates, _ = jax.eval_shape(setup.tx.update, params, setup.abstract_state["opt_state"], params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


# ---- SGD (TimeSformer's recipe) and the step schedule ----

def test_sgd_is_pytorch_nesterov_sgd_with_l2_weight_decay():
    """Three steps against PyTorch's SGD update (dampening 0): g += wd * p (kernels only); buf = m * buf + g;
    nesterov: p -= lr * (g + m * buf)."""
    config, params, grads, schedule = _tiny_finetune_setup(1.0)
    with config.unlocked():
        config.optimizer.update(name="sgd", momentum=0.9, nesterov=True, weight_decay=1e-4)
    tx = optim.make_optimizer(config, schedule)
    state, p = tx.init(params), params
    mask = optim.decay_mask(params)
    ref_p = params
    buf = jax.tree.map(np.zeros_like, params)
    for g in grads + grads[:1]:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        g_wd = jax.tree.map(lambda gi, pi, m: gi + (1e-4 * pi if m else 0.0), g, ref_p, mask)
        buf = jax.tree.map(lambda b, gi: 0.9 * b + gi, buf, g_wd)
        ref_p = jax.tree.map(lambda pi, gi, b: pi - 1e-3 * (gi + 0.9 * b), ref_p, g_wd, buf)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p, ref_p)
    with config.unlocked():
        config.optimizer.name = "lamb"
    with pytest.raises(ConfigError, match="config.optimizer.name must be one of adamw, sgd"):
        optim.make_optimizer(config, schedule)


def test_step_schedule_follows_epoch_boundaries_after_warmup():
    config = tiny_config(batch_size=8)
    config.optimizer.update(base_lr=0.005, lr_batch_base=8, schedule="steps", lr_steps=(11, 14),
                            lr_step_scales=(0.1, 0.01))
    schedule = optim.make_schedule(config, total_steps=150, warmup_steps=5, steps_per_epoch=10)
    lrs = np.array([float(schedule(s)) for s in range(150)])
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.005) and (np.diff(lrs[:6]) > 0).all()
    np.testing.assert_allclose(lrs[[6, 109, 110, 139, 140, 149]], [5e-3, 5e-3, 5e-4, 5e-4, 5e-5, 5e-5], rtol=1e-6)
    config.optimizer.lr_step_scales = (0.1,)
    with pytest.raises(ConfigError, match="lr_steps .* and lr_step_scales .* of the same length"):
        optim.make_schedule(config, total_steps=150, warmup_steps=0, steps_per_epoch=10)


def test_timesformer_recipe_is_the_published_sgd_one():
    from helpers import load_config

    config = load_config("timesformer_k400")
    opt = config.optimizer
    assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay, opt.schedule) == ("sgd", 0.9, True, 1e-4, "steps")
    assert optim.peak_lr(config) == pytest.approx(0.005) and config.batch_size == 8 and config.num_epochs == 15
    assert tuple(opt.lr_steps) == (11, 14) and tuple(opt.lr_step_scales) == (0.1, 0.01) and opt.warmup_epochs == 0
    train.build(config, 800, train.sharding.create_mesh(config.mesh, jax.devices()[:1]))  # builds as published


# ---- frozen parameters (a captioner's frozen encoder) and Adam's eps ----

def tiny_captioner_config(freeze_encoder):
    """A trainer config around a tiny captioner: a 2-block VideoMAE encoder on 4 x 32 x 32 clips, a linear projection
    and a 1-block GPT-2 decoder of width 32 with a 50-token vocabulary."""
    from vidjax import config_lib
    from vidjax.models import captioner

    config = config_lib.trainer_config()
    config.model_name = "captioner"
    config.model = captioner.default_config("videomae")
    config.model.encoder.update(dict(variant="Mu/8", width=32, depth=2, num_heads=2, num_frames=4, image_size=32))
    config.model.decoder.update(dict(vocab_size=50, n_positions=16, width=32, depth=1, num_heads=2))
    config.model.update(dict(projection="linear", freeze_encoder=freeze_encoder))
    config.data = config_lib.synthetic_data(num_frames=4, image_size=32)
    config.batch_size = 8
    return config


def _random_like(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), tree)


def _captioner_params_and_grads(config, steps):
    """Random params shaped as `config`'s captioner and `steps` random gradients, non-zero for every parameter."""
    shapes = train.build(config, 64, train.sharding.create_mesh(config.mesh, jax.devices()[:1])
                         ).abstract_state["params"]
    return _random_like(shapes, 0), [_random_like(shapes, 1 + i) for i in range(steps)]


def _apply(tx, params, grads_per_step):
    """(params after one update per gradient, final optimizer state)."""

    def run(params, grads_per_step):
        state = tx.init(params)
        for grads in grads_per_step:
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    return jax.jit(run)(params, grads_per_step)


def test_frozen_encoder_gets_no_update_no_weight_decay_and_no_moments():
    config = tiny_captioner_config(freeze_encoder=True)
    config.optimizer.update(weight_decay=0.5, grad_clip=1.0)  # random gradients have norms far above 1: clipping acts
    params, grads = _captioner_params_and_grads(config, steps=3)
    # Encoder gradients 1x, 10x, 100x: a clip that counted them would scale each step's trained gradients by a very
    # different factor (a constant factor would not show: Adam's update is nearly scale-free).
    for i, g in enumerate(grads):
        g["encoder"] = jax.tree.map(lambda x, i=i: x * 10.0 ** i, g["encoder"])
    schedule = optax.constant_schedule(1e-2)
    new, state = _apply(optim.make_optimizer(config, schedule), params, grads)

    jax.tree.map(np.testing.assert_array_equal, new["encoder"], params["encoder"])
    trained = {k: v for k, v in params.items() if k != "encoder"}
    assert set(trained) == {"decoder", "enc_to_dec_proj"}
    for path, moved in jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda a, b: bool((a != b).all()),
                                                                         new, params))[0]:
        assert moved != (path[0].key == "encoder"), path
    # The trained part follows the same optimizer run on it alone: clipping measured its gradients only.
    config.model.freeze_encoder = False
    alone, _ = _apply(optim.make_optimizer(config, schedule), trained,
                      [{k: v for k, v in g.items() if k != "encoder"} for g in grads])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 {k: v for k, v in new.items() if k != "encoder"}, alone)
    # Adam's two moments are kept for the trained parameters alone; the rest of the state is step counts.
    def nbytes(tree):
        return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree) if np.ndim(x))

    assert nbytes(state) == 2 * nbytes(trained) < nbytes(params)


def test_without_frozen_parameters_the_optimizer_state_is_the_plain_adamw_one():
    config = tiny_captioner_config(freeze_encoder=False)
    params, _ = _captioner_params_and_grads(config, steps=0)
    schedule = optax.constant_schedule(1e-3)
    opt = config.optimizer
    plain = optax.chain(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                                    mask=optim.decay_mask))
    got = jax.eval_shape(optim.make_optimizer(config, schedule).init, params)
    assert jax.tree.structure(got) == jax.tree.structure(jax.eval_shape(plain.init, params))
    config.model.freeze_encoder = True
    assert jax.tree.structure(jax.eval_shape(optim.make_optimizer(config, schedule).init, params)) != \
        jax.tree.structure(got)


def test_layer_decay_is_refused_for_a_captioner():
    config = tiny_captioner_config(freeze_encoder=True)
    config.optimizer.layer_decay = 0.75
    with pytest.raises(ConfigError, match="layer_decay=0.75.*model_name='captioner' has no such layout"):
        optim.make_optimizer(config, optax.constant_schedule(1e-3))


def test_adam_eps_reaches_the_update():
    """Adam's first step is -lr * g / (|g| + eps) (bias-corrected moments g and g**2): with |g| = 1e-6 eps matters."""
    config = tiny_config()
    assert config.optimizer.eps == 1e-8
    config.optimizer.weight_decay = 0.0
    params, grads = {"head": {"bias": np.zeros(3, np.float32)}}, {"head": {"bias": np.float32([1e-6, -1e-6, 2e-6])}}
    g = grads["head"]["bias"].astype(np.float64)
    for eps in (1e-8, 1e-3):
        config.optimizer.eps = eps
        tx = optim.make_optimizer(config, optax.constant_schedule(1e-3))
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(updates["head"]["bias"], -1e-3 * g / (np.abs(g) + eps), rtol=1e-5)


@pytest.mark.slow
def test_frozen_captioner_trainer_state_shards_and_checkpoints(tmp_path):
    """train.build + init_state over 8 devices (fsdp 2): the frozen encoder's moments are MaskedNodes in the state
    and in its shardings, the other moments are sharded as their parameter, and the state saves and restores."""
    from vidjax.train import checkpoint

    config = tiny_captioner_config(freeze_encoder=True)
    config.mesh.fsdp = 2
    setup = train.build(config, 64, train.sharding.create_mesh(config.mesh))
    state = setup.init_state()
    shardings = setup.state_shardings
    assert jax.tree.structure(state) == jax.tree.structure(shardings)
    for array, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert array.sharding == sharding
    adam = state["opt_state"].inner_states[optim.TRAINED].inner_state[0][0]
    adam_sh = shardings["opt_state"].inner_states[optim.TRAINED].inner_state[0][0]
    for moments, moment_sh in ((adam.mu, adam_sh.mu), (adam.nu, adam_sh.nu)):
        assert not jax.tree.leaves(moments["encoder"]) and not jax.tree.leaves(moment_sh["encoder"])
        assert moment_sh["decoder"] == shardings["params"]["decoder"]
    assert "fsdp" in shardings["params"]["decoder"]["wte"].spec  # the sharded case is exercised

    checkpointer = checkpoint.Checkpointer(str(tmp_path))
    checkpointer.save(0, state, None, config)
    checkpointer.wait()
    restored = checkpointer.restore(0, checkpoint.abstract_with_shardings(setup.abstract_state, shardings))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding == want.sharding
    checkpointer.close()
