"""VideoMAE model: shapes, tube masks, visible-only encoding, target normalisation, position table, variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax import losses
from vidjax.config_lib import ConfigError
from vidjax.data.pipeline import tube_mask
from vidjax.models import get_model, layers, videomae


def tiny_config(**overrides):
    cfg = videomae.default_config()
    cfg.update(dict(variant="Mu/8", width=32, depth=2, num_heads=2, decoder_width=16, decoder_heads=2,
                    decoder_depth=1, num_frames=4, image_size=32))
    cfg.update(overrides)
    return cfg


def build(cfg):
    with nnx.use_eager_sharding(False):
        return videomae.Model(cfg, rngs=nnx.Rngs(0))


def masks(model, batch, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.stack([tube_mask(rng, model.encoder.grid, 0.9) for _ in range(batch)]))


def test_tube_mask_structure_and_count():
    rng = np.random.default_rng(0)
    grid = (8, 14, 14)  # the K400 ViT-B token grid: 16 frames / tubelet 2, 224 / 16
    for _ in range(5):
        mask = tube_mask(rng, grid, 0.9)
        assert mask.shape == (8 * 14 * 14,) and mask.dtype == bool
        per_time = mask.reshape(grid[0], -1)
        assert (per_time == per_time[0]).all(), "tube masking repeats one spatial mask at every time index"
        assert per_time[0].sum() == int(0.9 * 196) == 176
        assert mask.sum() == 176 * 8  # 160 of 1568 tokens stay visible
    assert not (tube_mask(np.random.default_rng(1), grid, 0.9) == tube_mask(np.random.default_rng(2), grid, 0.9)).all()


def test_pretrain_shapes_and_finite_loss():
    model = build(tiny_config())
    assert model.num_masked == int(0.9 * 16) * 2 == 28
    video = jax.random.normal(jax.random.key(0), (3, 4, 32, 32, 3))
    out = model(video, masks(model, 3))
    assert out["pred"].shape == out["target"].shape == (3, 28, 2 * 8 * 8 * 3)
    assert out["masked_ids"].shape == (3, 28)
    assert np.isfinite(float(out["loss"]))
    np.testing.assert_allclose(float(out["loss"]), float(jnp.mean((out["pred"] - out["target"]) ** 2)), rtol=1e-6)


@pytest.mark.parametrize("dual", [False, True], ids=["videomae", "v2_dual_masking"])
def test_pretraining_equals_the_whole_video_form(dual):
    """The step cuts the video into tokens once, channel by channel, embeds only the visible ones and predicts and
    compares channel by channel (for TPU's layouts): the same encoder states, predictions, targets and loss as the
    plain form (every token embedded then picked; the target of the whole video, then picked), to float rounding."""
    model = build(tiny_config())
    video = jax.random.normal(jax.random.key(0), (3, 4, 32, 32, 3))
    mask = masks(model, 3)
    kwargs = {}
    if dual:  # decode 10 of the 32 tokens, drawn apart from the encoder's mask
        rng = np.random.default_rng(1)
        decoder_mask = np.ones((3, 32), bool)
        for row in decoder_mask:
            row[rng.choice(32, 10, replace=False)] = False
        kwargs = dict(decoder_mask=jnp.asarray(decoder_mask), num_decoded=10)
    out = model(video, mask, **kwargs)

    visible_ids, masked_ids = videomae.split_mask(mask, model.num_masked)
    decoded_ids = videomae.split_mask(kwargs["decoder_mask"], 32 - 10)[0] if dual else masked_ids
    x_enc = model.encoder(video, visible_ids)
    np.testing.assert_allclose(out["last_hidden_state"], x_enc, rtol=1e-5, atol=1e-6)
    x = model.encoder_to_decoder(x_enc)
    table = jnp.asarray(layers.sincos_table(32, model.dec_width))
    y = model.decoder(jnp.concatenate([x + table[visible_ids], model.mask_token[...] + table[decoded_ids]], 1))
    pred = model.decoder_head(model.decoder_norm(y[:, -decoded_ids.shape[1]:]))
    whole = videomae.normalized_pixel_target(model.unnormalize(video), 2, 8)
    target = jnp.take_along_axis(whole, decoded_ids[..., None], axis=1)
    np.testing.assert_allclose(out["pred"], pred, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["target"], target, rtol=1e-5, atol=1e-5)
    per_token = jnp.mean((pred - target) ** 2, axis=-1)
    if dual:
        hidden = jnp.take_along_axis(mask, decoded_ids, axis=1)
        loss = jnp.sum(jnp.where(hidden, per_token, 0.0)) / jnp.sum(hidden)
    else:
        loss = jnp.mean(per_token)
    np.testing.assert_allclose(float(out["loss"]), float(loss), rtol=1e-5)


def test_encoder_sees_only_visible_tokens():
    model = build(tiny_config())
    mask = masks(model, 2)
    video = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))
    # Change only pixels under masked tokens: predictions must not move (targets do).
    pixel_mask = np.asarray(mask).reshape(2, 2, 4, 4).repeat(2, 1).repeat(8, 2).repeat(8, 3)[..., None]
    other = jnp.where(pixel_mask, video + 5.0, video)
    a, b = model(video, mask), model(other, mask)
    np.testing.assert_allclose(a["pred"], b["pred"], atol=1e-6)
    assert not np.allclose(a["target"], b["target"])
    # Changing a visible pixel does move them.
    c = model(jnp.where(pixel_mask, video, video + 5.0), mask)
    assert not np.allclose(a["pred"], c["pred"])


def test_masked_ids_follow_the_mask_in_increasing_order():
    model = build(tiny_config())
    mask = masks(model, 2)
    out = model(jnp.zeros((2, 4, 32, 32, 3)), mask)
    for row, ids in zip(np.asarray(mask), np.asarray(out["masked_ids"]), strict=False):
        np.testing.assert_array_equal(ids, np.flatnonzero(row))


def test_normalized_pixel_target_matches_reference_formula():
    rng = np.random.default_rng(0)
    video = rng.random((1, 4, 16, 16, 3)).astype(np.float32)
    target = np.asarray(videomae.normalized_pixel_target(jnp.asarray(video), 2, 8))
    # Token (t'=1, h'=0, w'=1): frames 2-3, rows 0-7, cols 8-15; pixels (t, h, w) x channel c.
    patch = video[0, 2:4, 0:8, 8:16].reshape(-1, 3)
    expected = (patch - patch.mean(0)) / (patch.std(0, ddof=1) + 1e-6)
    np.testing.assert_allclose(target[0, 1 * 4 + 0 * 2 + 1], expected.reshape(-1), rtol=1e-4, atol=1e-5)


def test_sincos_table_layout():
    table = layers.sincos_table(10, 8)
    pos, j = 7, 5
    angle = pos / 10000 ** (2 * (j // 2) / 8)
    assert table[pos, j] == pytest.approx(np.cos(angle), abs=1e-6)  # odd column: cosine
    assert table[pos, 4] == pytest.approx(np.sin(pos / 10000 ** (4 / 8)), abs=1e-6)  # even: sine


def test_classification_head():
    model = build(tiny_config(head="classification", num_classes=7))
    logits = model(jnp.zeros((2, 4, 32, 32, 3)))["logits"]
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_variants_and_errors():
    assert layers.vit_dims("B/16") == dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch=16)
    assert layers.vit_dims("S/16")["width"] == 384 and layers.vit_dims("L/16")["depth"] == 24
    assert layers.vit_dims("H/14")["patch"] == 14
    with pytest.raises(ConfigError, match="Unknown model variant 'X/16'"):
        layers.parse_variant("X/16")
    with pytest.raises(ConfigError, match="32x30|30x30 does not divide into tubelets of 2 frames and 8x8 patches"):
        build(tiny_config(image_size=30))
    with pytest.raises(ValueError, match="expects videos shaped"):
        build(tiny_config())(jnp.zeros((1, 4, 16, 16, 3)), jnp.zeros((1, 32), bool))
    with pytest.raises(ValueError, match="Unknown model_name 'videomea'"):
        get_model("videomea")


def test_parameter_count_matches_reference_vit_b():
    cfg = videomae.default_config()  # B/16, 16 x 224, pre-training
    abstract = nnx.eval_shape(lambda: build(cfg))
    encoder = sum(x.size for x in jax.tree.leaves(nnx.state(abstract.encoder)))
    # The reference ViT-B/16 VideoMAE encoder: 86.2M parameters (Conv3d 2x16x16 embed, 12 blocks, final norm).
    assert encoder == 86_227_200


def test_normalize_video_uses_the_model_preset():
    video = np.zeros((1, 1, 2, 2, 3), np.uint8)
    video[:, :, 1] = 255
    mean, std = np.array(videomae.default_config().pixel_mean), np.array(videomae.default_config().pixel_std)
    out = np.asarray(losses.normalize_video(jnp.asarray(video), mean, std))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0, 0], -mean / std, rtol=1e-5)
    np.testing.assert_allclose(out[0, 0, 1, 0], (1 - mean) / std, rtol=1e-5)


def test_attention_has_q_and_v_biases_but_no_k_bias():
    attn = build(tiny_config()).encoder.transformer.blocks[0].attn
    attn.q_bias[...] = jnp.ones_like(attn.q_bias[...])
    attn.v_bias[...] = jnp.ones_like(attn.v_bias[...])
    bias = np.asarray(attn.qkv_biases())
    assert bias.shape == (3, 2, 16)
    assert (bias[0] == 1).all() and (bias[1] == 0).all() and (bias[2] == 1).all()
    assert not hasattr(attn, "k_bias")
