"""ViViT: the four model types, model 4's head split, 2D kernel inflation, position resizing, and training."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config, run_steps

from vidjax import config_lib, train
from vidjax.convert import common
from vidjax.models import vivit
from vidjax.patches import patchify

TINY = dict(variant="Mu/8x2", width=32, depth=2, num_heads=2, mlp_dim=64, temporal_depth=1, num_frames=4,
            image_size=32)


def tiny_model_config(model_type, **overrides):
    cfg = vivit.default_config()
    cfg.update(dict(TINY, model_type=model_type, num_classes=5, head_init_scale=1.0))
    cfg.update(overrides)
    return cfg


def build(cfg, seed=0):
    with nnx.use_eager_sharding(False):
        return vivit.Model(cfg, rngs=nnx.Rngs(seed))


def flat_params(model):
    return {k: np.asarray(v) for k, v in common.flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def with_params(cfg, flat):
    model = build(cfg)
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, common.unflatten_params(common.abstract_params("vivit", cfg), flat))
    return nnx.merge(graphdef, state)


def video(frames=4, size=32, batch=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, frames, size, size, 3))


# (last_hidden_state length, with the default classifier) for a 4 x 32 x 32 clip: a (2, 4, 4) token grid.
EXPECTED_TOKENS = {"joint": 1 + 32, "factorised_encoder": 1 + 2, "factorised_self_attention": 32,
                   "factorised_dot_product": 32}


@pytest.mark.parametrize("model_type", vivit.MODEL_TYPES)
def test_shapes_and_determinism(model_type):
    model = build(tiny_model_config(model_type))
    out = model(video())
    assert out["logits"].shape == (2, 5) and out["logits"].dtype == jnp.float32
    assert out["last_hidden_state"].shape == (2, EXPECTED_TOKENS[model_type], 32)
    assert np.all(np.isfinite(out["logits"]))
    np.testing.assert_array_equal(model(video())["logits"], out["logits"])
    headless = build(tiny_model_config(model_type, head="none", drop_path=0.1))
    hidden = headless(video(), rng=jax.random.key(1))
    assert set(hidden) == {"last_hidden_state"}
    assert hidden["last_hidden_state"].shape == (2, EXPECTED_TOKENS[model_type], 32)


def test_factorised_encoder_gap_and_model_types_have_their_parameters():
    gap = build(tiny_model_config("factorised_encoder", classifier="gap"))
    assert gap.cls_token is None and gap.temporal_cls_token is None
    assert gap.pos_embed.shape == (16, 32) and gap.temporal_pos_embed.shape == (2, 32)
    assert gap(video())["last_hidden_state"].shape == (2, 2, 32)
    joint = build(tiny_model_config("joint"))
    assert joint.pos_embed.shape == (33, 32) and joint.cls_token.shape == (32,)
    fsa = build(tiny_model_config("factorised_self_attention"))
    assert fsa.pos_embed.shape == (32, 32)
    assert {"norm_space", "attn_space", "norm_time", "attn_time", "norm_mlp", "mlp"} <= set(
        nnx.to_pure_dict(nnx.state(fsa.blocks[0], nnx.Param)))


def test_config_errors():
    for bad in ("B/16", "B16x2", "Q/16x2", "B/16x0", "B/x2"):
        with pytest.raises(config_lib.ConfigError, match="SIZE/PATCHxTUBELET"):
            vivit.parse_variant(bad)
    assert vivit.parse_variant("Mu/8x4") == ("Mu", 8, 4)
    with pytest.raises(config_lib.ConfigError, match="no place"):
        build(tiny_model_config("factorised_dot_product", classifier="token"))
    with pytest.raises(config_lib.ConfigError, match="choose one of joint"):
        build(tiny_model_config("spacetime"))
    with pytest.raises(config_lib.ConfigError, match="num_heads=3 is odd"):
        build(tiny_model_config("factorised_dot_product", width=24, num_heads=3))
    with pytest.raises(config_lib.ConfigError, match="attention_order"):
        build(tiny_model_config("factorised_self_attention", attention_order="space_space"))
    with pytest.raises(config_lib.ConfigError, match="does not divide"):
        build(tiny_model_config("joint", num_frames=5))


def test_factorised_dot_product_head_split():
    """Heads [:H/2] attend over time at each location, heads [H/2:] within each frame (scenic's order)."""
    t, s, heads, k = 3, 4, 4, 8
    q, key, v = (np.asarray(jax.random.normal(jax.random.key(i), (2, t * s, heads, k))) for i in range(3))
    out = np.asarray(vivit.factorised_dot_product_attention(jnp.asarray(q), jnp.asarray(key), jnp.asarray(v), t=t))
    frame, location = np.arange(t * s) // s, np.arange(t * s) % s
    allowed = {"time": location[:, None] == location[None, :], "space": frame[:, None] == frame[None, :]}
    for h in range(heads):
        mask = allowed["time" if h < heads // 2 else "space"]
        logits = np.einsum("bqk,bpk->bqp", q[:, :, h], key[:, :, h]) / np.sqrt(k)
        logits = np.where(mask[None], logits, -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[:, :, h], np.einsum("bqp,bpk->bqk", weights, v[:, :, h]), atol=1e-5)


def test_time_groups_round_trip():
    x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 12, 5)  # t=3 frames of s=4 locations
    groups = vivit._time_groups(x, 3)
    assert groups.shape == (8, 3, 5)
    np.testing.assert_array_equal(groups[1 * 4 + 2], x[1, [2, 6, 10]])  # clip 1, location 2, over its 3 frames
    np.testing.assert_array_equal(vivit._from_time_groups(groups, 2), x)


@pytest.mark.parametrize("method", ["central_frame", "filter"])
@pytest.mark.parametrize("tubelet", [2, 3])
def test_inflate_2d(method, tubelet):
    """A static clip through the inflated kernel gives the 2D patch embedding's output, for both methods."""
    patch, width = 4, 6
    rng = np.random.default_rng(0)
    kernel_2d = rng.standard_normal((patch * patch * 3, width)).astype(np.float32)
    kernel = vivit.inflate_2d(kernel_2d, tubelet, method)
    assert kernel.shape == (tubelet * patch * patch * 3, width) and kernel.dtype == np.float32
    frame = rng.standard_normal((8, 8, 3)).astype(np.float32)
    static = np.broadcast_to(frame, (tubelet, 8, 8, 3))
    expected = patchify(frame[None], 1, patch) @ kernel_2d
    np.testing.assert_allclose(patchify(static, tubelet, patch) @ kernel, expected, rtol=1e-5, atol=1e-5)

    # On a moving clip: central_frame sees only frame tubelet // 2, filter the mean of the frames' 2D outputs.
    clip = rng.standard_normal((tubelet, 8, 8, 3)).astype(np.float32)
    per_frame = np.stack([patchify(f[None], 1, patch) @ kernel_2d for f in clip])
    want = per_frame[tubelet // 2] if method == "central_frame" else per_frame.mean(0)
    np.testing.assert_allclose(patchify(clip, tubelet, patch) @ kernel, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'central_frame' or 'filter'"):
        vivit.inflate_2d(kernel_2d, tubelet, "average")


@pytest.mark.parametrize("model_type", [
    pytest.param(kind, marks=pytest.mark.slow) if kind == "factorised_encoder" else kind for kind in vivit.MODEL_TYPES])
def test_resize_positions(model_type):
    src = tiny_model_config(model_type)
    params = flat_params(build(src))
    same = vivit.resize_positions(params, src, src)
    assert all(np.array_equal(same[k], params[k]) for k in params)

    dst = tiny_model_config(model_type, num_frames=8, image_size=48)  # token grid (2, 4, 4) -> (4, 6, 6)
    resized = vivit.resize_positions(params, src, dst)
    out = with_params(dst, resized)(video(frames=8, size=48))
    assert out["logits"].shape == (2, 5) and np.all(np.isfinite(out["logits"]))
    if model_type in ("joint", "factorised_encoder"):
        np.testing.assert_array_equal(resized["pos_embed"][0], params["pos_embed"][0])  # the CLS row is kept
    if model_type == "factorised_encoder":
        assert resized["pos_embed"].shape == (1 + 36, 32) and resized["temporal_pos_embed"].shape == (1 + 4, 32)
    else:
        assert resized["pos_embed"].shape == (int(model_type == "joint") + 4 * 36, 32)
    with pytest.raises(config_lib.ConfigError, match="model_type differs"):
        vivit.resize_positions(params, src, tiny_model_config("joint" if model_type != "joint" else
                                                              "factorised_encoder"))


# ---------------------------------------------------------------------------------------------------- training

def tiny_train_config(model_type, *, total_steps, num_train=64, depth=2):
    config = load_config("vivit_k400", f"runlocal,model_type={model_type}")
    config.model.update(dict(TINY, head_init_scale=1.0, depth=depth))
    config.model.num_classes = config.data.num_classes
    config.data = config_lib.synthetic_data(num_frames=4, image_size=32, num_classes=config.data.num_classes,
                                            num_train=num_train, num_eval=16)
    config.batch_size = 8
    config.total_steps = total_steps
    config.optimizer.base_lr = 2e-3 * 256 / 8
    config.optimizer.warmup_epochs = 0.5
    config.log_every, config.eval_every, config.checkpoint_every = 1, 0, total_steps
    return config


def test_configs_resolve():
    full = load_config("vivit_k400")
    assert full.model.model_type == "factorised_encoder" and full.model.variant == "B/16x2"
    assert (full.model.num_frames, full.data.sampling_rate, full.model.image_size) == (32, 2, 224)
    local = load_config("vivit_k400", "runlocal,model_type=factorised_dot_product")
    assert local.task == "classification" and local.model.head == "classification"
    assert local.data.source == "synthetic" and local.data.num_classes == local.model.num_classes == 8
    train.check_config(local)
    build(local.model)
    with pytest.raises(config_lib.ConfigError, match="Unknown ViViT variant"):
        load_config("vivit_k400", "variant=B/16")
    with pytest.raises(config_lib.ConfigError, match="choose one of"):
        load_config("vivit_k400", "model_type=space_time")


@pytest.mark.slow  # the trainer's sharding: tests/test_strategies.py
@pytest.mark.parametrize("model_type", vivit.MODEL_TYPES)
def test_sharded_steps_match_single_device(model_type):
    """2 steps of the trainer's jitted step on one device and on a (data 2, fsdp 2, tensor 2) mesh of 8: the same
    losses. (The whole trainer over such a mesh is tests/test_train.py's; each strategy on its own, per family,
    tests/test_strategies.py's.)"""
    # One block per stack: compiles faster.
    single, _ = run_steps(tiny_train_config(model_type, total_steps=2, depth=1), jax.devices()[:1])
    config = tiny_train_config(model_type, total_steps=2, depth=1)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    losses, state = run_steps(config, jax.devices())
    np.testing.assert_allclose(losses, single, rtol=1e-5)
    pos = state["params"]["pos_embed"]
    assert len(pos.sharding.device_set) == 8  # the position table's embed axis is split by fsdp
