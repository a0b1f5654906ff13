"""TimeSformer: shapes per attention type, the divided block against a loop-by-loop reference, zero-initialised
temporal branch, CLS averaging, position-table resizing, and training (1 device and sharded) through the trainer."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config

from vidjax import config_lib
from vidjax.convert import hf_timesformer
from vidjax.convert.common import ConversionError, TensorSource, abstract_params, flatten_params, unflatten_params
from vidjax.models import timesformer

T, SIZE, PATCH, WIDTH = 4, 32, 8, 32
GRID = (SIZE // PATCH) ** 2  # 16 patches per frame


def tiny_config(**overrides):
    cfg = timesformer.default_config()
    cfg.update(dict(variant="Mu/8", width=WIDTH, depth=2, num_heads=2, num_frames=T, image_size=SIZE,
                    num_classes=5))
    cfg.update(overrides)
    return cfg


def build(cfg, seed=0):
    with nnx.use_eager_sharding(False):
        return timesformer.Model(cfg, rngs=nnx.Rngs(seed))


def flat_params(model):
    return {k: np.asarray(v) for k, v in flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def load_flat(cfg, flat):
    model = build(cfg, seed=1)
    nnx.update(model, unflatten_params(abstract_params("timesformer", cfg), flat))
    return model


def randomise(module, key, scale=0.3):
    """Every parameter of `module` replaced by noise (LayerNorm scales around 1), so nothing hides behind zeros."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    nnx.update(module, jax.tree.unflatten(treedef, noisy))


def video(batch=2, frames=T, size=SIZE, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, frames, size, size, 3))


@pytest.mark.parametrize("attention_type, tokens", [
    ("divided_space_time", 1 + GRID * T), ("joint_space_time", 1 + GRID * T), ("space_only", 1 + GRID)])
def test_shapes_per_attention_type(attention_type, tokens):
    model = build(tiny_config(attention_type=attention_type))
    out = model(video())
    assert out["logits"].shape == (2, 5) and out["logits"].dtype == jnp.float32
    assert out["last_hidden_state"].shape == (2, tokens, WIDTH)
    assert np.isfinite(np.asarray(out["logits"])).all()
    # The logits read the CLS token of the final (normed) hidden state.
    np.testing.assert_allclose(out["logits"], model.head(out["last_hidden_state"][:, 0]), rtol=1e-6, atol=1e-6)
    assert ("time_embed" in nnx.state(model)) == (attention_type != "space_only")
    assert ("temporal_fc" in nnx.state(model.blocks[0])) == (attention_type == "divided_space_time")

    backbone = build(tiny_config(attention_type=attention_type, head="none"))
    assert set(backbone(video())) == {"last_hidden_state"}


def test_bad_config_and_input_errors():
    with pytest.raises(ValueError, match="attention_type must be one of"):
        build(tiny_config(attention_type="divided"))
    with pytest.raises(ValueError, match="expects videos shaped \\(batch, 4, 32, 32, 3\\)"):
        build(tiny_config())(video(frames=6))
    with pytest.raises(config_lib.ConfigError, match="attention='axial' must be one of"):
        load_config("timesformer_k400", "attention=axial")
    with pytest.raises(config_lib.ConfigError, match="Unknown model variant 'X/16'"):
        load_config("timesformer_k400", "variant=X/16")


def reference_divided_block(block, x_BLD, frames, temporal=True):
    """A divided block written token group by token group (Python loops), the paper's description literally."""
    cls, patches = x_BLD[:, :1], x_BLD[:, 1:]
    p = patches.shape[1] // frames
    if temporal:  # one attention per patch position over its `frames` tokens (token index = p * frames + t)
        res = jnp.stack([block.temporal_attn(block.temporal_norm(patches[:, i * frames:(i + 1) * frames]))
                         for i in range(p)], axis=1).reshape(patches.shape)
        patches = patches + block.temporal_fc(res)
    cls_res, patch_res = [], []
    for t in range(frames):  # one attention per frame, over that frame's patches and a copy of the CLS token
        frame = jnp.concatenate([cls, patches[:, t::frames]], axis=1)
        out = block.attn(block.norm1(frame))
        cls_res.append(out[:, :1])
        patch_res.append(out[:, 1:])
    patch_res = jnp.stack(patch_res, axis=2).reshape(patches.shape)  # back to (p, t) token order
    x = jnp.concatenate([cls + sum(cls_res) / frames, patches + patch_res], axis=1)
    return x + block.mlp(block.norm2(x))


def test_divided_block_matches_loop_reference():
    model = build(tiny_config())
    block = model.blocks[0]
    randomise(block, jax.random.key(3), scale=0.1)
    x = jax.random.normal(jax.random.key(4), (2, 1 + GRID * T, WIDTH))
    np.testing.assert_allclose(block(x, T), reference_divided_block(block, x, T), rtol=1e-4, atol=1e-4)


def test_temporal_fc_zero_at_init_switches_the_temporal_branch_off():
    model = build(tiny_config())
    block = model.blocks[1]
    assert not np.any(np.asarray(block.temporal_fc.kernel[...])) and not np.any(np.asarray(block.temporal_fc.bias[...]))
    x = jax.random.normal(jax.random.key(5), (2, 1 + GRID * T, WIDTH))
    fresh = block(x, T)
    # At init the block is exactly the spatial block alone, whatever the temporal attention's weights are.
    np.testing.assert_allclose(fresh, reference_divided_block(block, x, T, temporal=False), rtol=1e-5, atol=1e-5)
    randomise(block.temporal_attn, jax.random.key(6))
    randomise(block.temporal_norm, jax.random.key(7))
    np.testing.assert_array_equal(block(x, T), fresh)
    # ...and the branch is live once temporal_fc has weights (so the check above is not vacuous).
    randomise(block.temporal_fc, jax.random.key(8))
    assert np.max(np.abs(np.asarray(block(x, T) - fresh))) > 1e-2


def test_cls_is_the_average_over_frames():
    """The CLS token sees every frame through the per-frame average: with no time table the clip's logits do not
    depend on frame order, and a clip of one frame repeated T times classifies as that frame alone (T=1)."""
    model = build(tiny_config())
    randomise(model, jax.random.key(9), scale=0.2)
    nnx.update(model, {"time_embed": jnp.zeros((T, WIDTH))})
    clip = video()
    shuffled = clip[:, jnp.array([2, 0, 3, 1])]
    np.testing.assert_allclose(model(shuffled)["logits"], model(clip)["logits"], rtol=1e-5, atol=1e-5)

    frame = clip[:, :1]
    flat = flat_params(model)
    flat["time_embed"] = np.zeros((1, WIDTH), np.float32)
    single = load_flat(tiny_config(num_frames=1), flat)
    np.testing.assert_allclose(model(jnp.repeat(frame, T, axis=1))["logits"], single(frame)["logits"],
                               rtol=1e-5, atol=1e-5)

    # With a time table the frames are told apart, and order matters.
    nnx.update(model, {"time_embed": jax.random.normal(jax.random.key(10), (T, WIDTH))})
    assert np.max(np.abs(np.asarray(model(shuffled)["logits"] - model(clip)["logits"]))) > 1e-3


def test_space_only_averages_frame_sequences_before_the_norm():
    model = build(tiny_config(attention_type="space_only"))
    randomise(model, jax.random.key(11), scale=0.2)
    clip = video()
    x = model.embed(clip)
    assert x.shape == (2 * T, 1 + GRID, WIDTH)
    for block in model.blocks:
        x = block(x, T)
    expected = model.norm(x.reshape(2, T, 1 + GRID, WIDTH).mean(axis=1))
    np.testing.assert_allclose(model(clip)["last_hidden_state"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_resize_positions():
    cfg = tiny_config()
    model = build(cfg)
    randomise(model, jax.random.key(12))
    params = flat_params(model)
    same = timesformer.resize_positions(params, cfg, cfg)
    assert same.keys() == params.keys() and all(same[k] is params[k] for k in params)

    dst = tiny_config(num_frames=8, image_size=64)
    resized = timesformer.resize_positions(params, cfg, dst)
    # Nearest, PyTorch's legacy rule: doubling repeats every entry, the CLS row is kept.
    np.testing.assert_array_equal(resized["time_embed"], np.repeat(params["time_embed"], 2, axis=0))
    grid = params["pos_embed"][1:].reshape(4, 4, WIDTH)
    np.testing.assert_array_equal(resized["pos_embed"][0], params["pos_embed"][0])
    np.testing.assert_array_equal(resized["pos_embed"][1:].reshape(8, 8, WIDTH),
                                  np.repeat(np.repeat(grid, 2, axis=0), 2, axis=1))
    big = load_flat(dst, resized)
    out = big(video(frames=8, size=64))
    assert out["last_hidden_state"].shape == (2, 1 + 64 * 8, WIDTH) and np.isfinite(out["logits"]).all()

    # Shrinking to 3 frames of 24 px (3x3 patches) picks floor(i * src/dst).
    small_cfg = tiny_config(num_frames=3, image_size=24)
    small = timesformer.resize_positions(params, cfg, small_cfg)
    np.testing.assert_array_equal(small["time_embed"], params["time_embed"][[0, 1, 2]])
    np.testing.assert_array_equal(small["pos_embed"][1:].reshape(3, 3, WIDTH), grid[[0, 1, 2]][:, [0, 1, 2]])
    assert load_flat(small_cfg, small)(video(frames=3, size=24))["logits"].shape == (2, 5)

    space_cfg = tiny_config(attention_type="space_only")
    space_params = flat_params(build(space_cfg))
    assert "time_embed" not in timesformer.resize_positions(space_params, space_cfg, tiny_config(
        attention_type="space_only", num_frames=8))


def test_converter_reads_config_and_rejects_what_it_cannot_map():
    """Details the parity fixtures do not vary: processor statistics, unsupported activations, stray tensors."""
    source = pathlib.Path(__file__).parent / "fixtures" / "parity" / "timesformer_joint" / "source"
    hf = json.loads((source / "config.json").read_text())
    arch = "TimesformerForVideoClassification"
    converted = hf_timesformer.from_hf(hf, TensorSource.from_hf_dir(source), arch)
    cfg = converted.model_config
    assert (cfg.attention_type, cfg.approximate_gelu, cfg.ln_eps) == ("joint_space_time", True, 1e-5)
    assert (cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.num_classes) == (32, 2, 2, 64, 5)
    assert converted.preprocessing["mean"] == [0.485, 0.456, 0.406]  # TimesformerVideoProcessor defaults
    assert converted.class_names == [f"class_{i}" for i in range(5)]

    with_processor = dict(hf, _preprocessor_config={"image_mean": [0.45] * 3, "image_std": [0.225] * 3})
    converted = hf_timesformer.from_hf(with_processor, TensorSource.from_hf_dir(source), arch)
    assert converted.preprocessing["mean"] == [0.45] * 3 and converted.preprocessing["std"] == [0.225] * 3

    with pytest.raises(ConversionError, match="hidden_act='quick_gelu' is not supported"):
        hf_timesformer.from_hf(dict(hf, hidden_act="quick_gelu"), TensorSource.from_hf_dir(source), arch)
    tensors = dict(TensorSource.from_hf_dir(source).tensors, **{"timesformer.extra.weight": np.zeros(3)})
    with pytest.raises(ConversionError, match="does not use: \\['timesformer.extra.weight'\\]"):
        hf_timesformer.from_hf(hf, TensorSource(tensors, "test"), arch)
