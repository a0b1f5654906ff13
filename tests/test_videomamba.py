"""VideoMamba: shapes, the bidirectional mixer, scan variants, bf16, position resizing, conversion, training."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_config, tiered, train_losses

from vidjax import platform, train
from vidjax.config_lib import ConfigError
from vidjax.models import videomamba
from vidjax.models.positions import resize_grid

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"


def tiny_config(**overrides):
    cfg = videomamba.default_config()
    cfg.update(dict(variant="Mu/8", width=32, depth=2, num_frames=4, image_size=32, num_classes=5, scan_chunk=8))
    cfg.update(overrides)
    return cfg


def build(cfg, seed=0):
    with nnx.use_eager_sharding(False):
        return videomamba.Model(cfg, rngs=nnx.Rngs(seed))


@nnx.jit
def run(model, video_BTHWC):
    return model(video_BTHWC)


def video(batch=2, frames=4, size=32, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, frames, size, size, 3))


def test_shapes_heads_and_errors():
    model = build(tiny_config())
    out = run(model, video())
    assert out["logits"].shape == (2, 5) and out["logits"].dtype == jnp.float32
    assert out["last_hidden_state"].shape == (2, 1 + 4 * 4 * 4, 32)  # CLS + frames x 4 x 4 patches
    backbone = run(build(tiny_config(head="none", tubelet_size=2)), video())
    assert set(backbone) == {"last_hidden_state"} and backbone["last_hidden_state"].shape == (2, 1 + 2 * 16, 32)
    with pytest.raises(ValueError, match=r"expects videos shaped \(batch, 4, 32, 32, 3\)"):
        model.embed(video(frames=8))
    with pytest.raises(ConfigError, match="Unknown model variant 'B/16'.*Mu, Ti, S, M"):
        build(tiny_config(variant="B/16"))
    with pytest.raises(ConfigError, match="scan='parallel'; choose one of 'auto', 'chunked', 'associative', "
                                          "'sequential', 'recurrent', 'pallas'"):
        build(tiny_config(scan="parallel"))
    with pytest.raises(ConfigError, match="'classification' or 'none'"):
        build(tiny_config(head="pretrain"))


def test_variant_sizes():
    for variant, (width, depth) in {"Ti/16": (192, 24), "S/16": (384, 24), "M/16": (576, 32)}.items():
        dims = videomamba.dims(tiny_config(variant=variant, width=0, depth=0))
        assert (dims["width"], dims["depth"], dims["patch"]) == (width, depth, 16)
        assert dims["d_inner"] == 2 * width and dims["dt_rank"] == -(-width // 16)


def test_block_signature_and_reference_init():
    with nnx.use_eager_sharding(False):
        block = videomamba.Block(48, rngs=nnx.Rngs(0))
    step = nnx.jit(lambda block, hidden, residual: block(hidden, residual))
    hidden, residual = step(block, jax.random.normal(jax.random.key(0), (2, 21, 48)), None)
    assert hidden.shape == residual.shape == (2, 21, 48) and residual.dtype == jnp.float32
    _, residual2 = step(block, hidden, residual)
    np.testing.assert_allclose(residual2, residual + hidden, rtol=1e-6)  # add -> norm -> mixer
    branch = block.mixer.forward_branch
    assert block.mixer.d_inner == 96 and branch.dt_rank == 3 and branch.d_state == 16
    np.testing.assert_allclose(-np.exp(branch.A_log[...]), -np.broadcast_to(np.arange(1, 17), (96, 16)), rtol=1e-6)
    np.testing.assert_array_equal(branch.D[...], 1.0)
    dt = jax.nn.softplus(branch.dt_bias[...])
    assert 0.001 - 1e-6 <= dt.min() and dt.max() <= 0.1 + 1e-6  # inverse softplus of dt in [1e-3, 0.1]


def test_depthwise_conv_is_torch_causal_conv():
    """y[t] = b + sum_k w[k] x[t-3+k]: Conv1d(padding=3) truncated to L; reverse = flip, conv, flip."""
    with nnx.use_eager_sharding(False):
        conv = videomamba.DepthwiseConv1d(6, 4, rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 9, 6)))
    w, b = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
    padded = np.pad(x, ((0, 0), (3, 0), (0, 0)))
    expected = b + sum(w[k] * padded[:, k:k + 9] for k in range(4))
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)
    flipped = np.asarray(conv(jnp.asarray(x[:, ::-1])))[:, ::-1]
    np.testing.assert_allclose(conv(jnp.asarray(x), reverse=True), flipped, rtol=1e-5, atol=1e-6)


def test_bidirectional_mixer_is_forward_plus_flipped_backward():
    """The reference: out_proj(branch_f(x, z) + flip(branch_b(flip(x), flip(z)))), a plain sum (no halving)."""
    with nnx.use_eager_sharding(False):
        mixer = videomamba.BiMamba(32, scan="chunked", scan_chunk=8, rngs=nnx.Rngs(0))
    h = jax.random.normal(jax.random.key(2), (2, 21, 32))  # 21 tokens: chunks of 8 with a padded last one
    x, z = mixer.in_proj(h)
    seq = dict(reverse=False, scan="sequential", scan_chunk=0)
    forward = mixer.forward_branch(x, z, **seq)
    backward = jnp.flip(mixer.backward_branch(jnp.flip(x, 1), jnp.flip(z, 1), **seq), 1)
    expected = mixer.out_proj(forward + backward)
    np.testing.assert_allclose(mixer(h), expected, atol=1e-5, rtol=1e-5)
    # The backward branch matters: the output is not the forward branch alone.
    assert float(jnp.abs(mixer(h) - mixer.out_proj(forward)).max()) > 1e-2


def test_auto_scan_is_recurrent_on_cpu_the_kernel_on_tpu_and_chunked_on_gpu():
    assert videomamba.default_config().scan == "auto"
    assert videomamba.resolve_scan("auto") == "recurrent"  # the test backend is the CPU
    scans = ("chunked", "associative", "sequential", "recurrent", "pallas")
    assert [videomamba.resolve_scan(s) for s in scans] == list(scans)
    for backend, scan in (("gpu", "chunked"), ("tpu", "pallas")):
        assert videomamba.resolve_scan("auto", backend) == scan
        assert platform.resolve(tiny_config(), backend).scan == scan
    # The model holds the resolved scan: built from "auto" here, from an explicit value anywhere.
    assert build(tiny_config()).layers[1].mixer.scan == "recurrent"
    assert build(platform.resolve(tiny_config(), "gpu")).layers[1].mixer.scan == "chunked"


def test_scans_agree_on_the_model():
    cfg = tiny_config(scan="sequential")
    reference = run(build(cfg), video())
    for scan in ("chunked", "associative", "recurrent", "auto"):
        out = run(build(tiny_config(scan=scan)), video())
        for key in ("logits", "last_hidden_state"):
            np.testing.assert_allclose(out[key], reference[key], atol=1e-5, rtol=0, err_msg=f"{scan} {key}")


def test_recurrent_scan_gradients_match_the_sequential_scan():
    """The CPU default (the recurrent scan's hand-written backward pass) against autodiff through the sequential
    reference: gradients of a loss on the logits for every parameter, the scan's A_log, D and dt_bias included."""
    grads = {}
    for scan in ("sequential", "recurrent"):
        graphdef, params = nnx.split(build(tiny_config(scan=scan)))

        def loss(params, graphdef=graphdef):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(video())["logits"]))

        grads[scan] = jax.tree.leaves_with_path(jax.jit(jax.grad(loss))(params))
    for (path, ref), (_, got) in zip(grads["sequential"], grads["recurrent"], strict=True):
        scale = max(1e-3, float(jnp.abs(ref).max()))
        np.testing.assert_allclose(got, ref, atol=1e-5 * scale, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("scan_layers", tiered([False, True], default=0))
def test_the_kernel_scan_equals_the_sequential_one_on_the_model_values_and_gradients(scan_layers):
    """scan="pallas" (the fused TPU kernel, in Pallas's TPU interpreter here) on the whole model: the logits and
    every parameter's gradient equal the sequential reference's."""
    from jax.experimental.pallas import tpu as pltpu

    results = {}
    for scan in ("sequential", "pallas"):
        graphdef, params = nnx.split(build(tiny_config(scan=scan, depth=2, scan_layers=scan_layers)))

        def loss(params, graphdef=graphdef):
            logits = nnx.merge(graphdef, params)(video(frames=4))["logits"]
            return jnp.sum(jnp.sin(logits)), logits

        with pltpu.force_tpu_interpret_mode():
            results[scan] = jax.jit(jax.grad(loss, has_aux=True))(params)
    (ref_grads, ref_logits), (grads, logits) = results["sequential"], results["pallas"]
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
    for (path, ref), (_, got) in zip(jax.tree.leaves_with_path(ref_grads), jax.tree.leaves_with_path(grads),
                                     strict=True):
        scale = max(1e-3, float(jnp.abs(ref).max()))
        np.testing.assert_allclose(got, ref, atol=1e-5 * scale, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_token_order_and_positions():
    """CLS first with the spatial CLS row and no temporal row; patches frame by frame, (t, h, w)."""
    model = build(tiny_config())
    pos, temporal = model.pos_embed[...], model.temporal_pos_embedding[...]
    model.temporal_pos_embedding[...] = jax.random.normal(jax.random.key(3), temporal.shape)
    model.cls_token[...] = jax.random.normal(jax.random.key(4), model.cls_token.shape)
    clip = video(batch=1)
    tokens = model.embed(clip)
    np.testing.assert_allclose(tokens[0, 0], model.cls_token[...] + pos[0], rtol=1e-6)
    patches = model.patch_embed(clip[0, 2, 8:16, 16:24].reshape(1, -1))[0]  # frame 2, row 1, column 2
    np.testing.assert_allclose(tokens[0, 1 + 2 * 16 + 1 * 4 + 2],
                               patches + pos[1 + 1 * 4 + 2] + model.temporal_pos_embedding[...][2], rtol=1e-5,
                               atol=1e-6)


def test_temporal_first_scans_each_position_frame_by_frame_and_returns_tokens_frame_by_frame():
    """token_order="temporal_first" only changes the order the scans read: the same parameters run on the permuted
    sequence, and last_hidden_state comes back in the spatial-first (t, h, w) order."""
    spatial, temporal = build(tiny_config()), build(tiny_config(token_order="temporal_first"))
    clip = video(batch=2)
    b, (t, h, w) = 2, spatial.grid
    base = spatial.embed(clip)
    permuted = jnp.concatenate([base[:, :1], jnp.swapaxes(base[:, 1:].reshape(b, t, h * w, 32), 1, 2)
                                .reshape(b, t * h * w, 32)], axis=1)
    np.testing.assert_array_equal(temporal.embed(clip), permuted)
    out = run(temporal, clip)
    # The reference: the spatial-first model (same parameters) fed the permuted sequence, its output put back in order.
    spatial.embed = lambda video_BTHWC: permuted
    expected = spatial(clip)["last_hidden_state"]
    expected = jnp.concatenate([expected[:, :1], jnp.swapaxes(expected[:, 1:].reshape(b, h * w, t, 32), 1, 2)
                                .reshape(b, t * h * w, 32)], axis=1)
    np.testing.assert_allclose(out["last_hidden_state"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["logits"], run(build(tiny_config()), clip)["logits"], atol=1e-4)  # the order matters
    with pytest.raises(ConfigError, match="token_order must be one of spatial_first, temporal_first; got 'random'"):
        build(tiny_config(token_order="random"))


def test_x_proj_init_std():
    for std in (0.02, 0.2):
        kernel = build(tiny_config(x_proj_init_std=std)).layers[0].mixer.forward_branch.x_proj.kernel[...]
        assert abs(float(np.std(kernel)) / std - 0.88) < 0.1  # a normal truncated at 2 std keeps 0.88 of it


@pytest.mark.slow
def test_sincos_start_keeps_the_cls_token_live():
    """A CLS input of exactly zero is dead in a Mamba block: RMSNorm(0) = 0, so z = 0 and the gate silu(z) zeroes the
    CLS output of every layer, and the head's input is the same for every clip. A sin-cos start leaves the spatial
    table's CLS row at zero; the CLS token's own N(0, 0.02) draw keeps the CLS live, so the head reads the clip and
    the gradient reaches every block."""
    model = build(tiny_config(position_init="sincos"))
    np.testing.assert_array_equal(model.pos_embed[...][0], 0.0)
    assert 0.0 < float(jnp.abs(model.cls_token[...]).max()) < 0.1
    clips = video(batch=4)
    cls_out = run(model, clips)["last_hidden_state"][:, 0]
    assert float(jnp.std(cls_out, axis=0).max()) > 1e-3  # differs from clip to clip
    graphdef, params = nnx.split(model, nnx.Param)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(clips)["logits"] ** 2))(params)
    for i in range(2):
        block = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
                 if jax.tree_util.keystr(path).startswith(f"['layers'][{i}]")]
        assert block and sum(float(jnp.sum(g ** 2)) for g in block) > 0.0, i


def test_bf16_compute_keeps_fp32_params():
    cfg = tiny_config(dtype="bfloat16")
    model = build(cfg)
    params = nnx.state(model, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    out = run(model, video())
    assert out["logits"].dtype == jnp.float32
    reference = run(build(tiny_config()), video())
    assert np.isfinite(np.asarray(out["last_hidden_state"])).all()
    np.testing.assert_allclose(out["logits"], reference["logits"], atol=0.15)

    def loss(model):
        return jnp.mean(model(video())["logits"] ** 2)

    grads = nnx.jit(nnx.grad(loss))(model)
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all() for g in leaves)


def test_resize_positions_matches_reference_interpolation():
    src_cfg = tiny_config()
    params = {"pos_embed": np.random.default_rng(0).standard_normal((17, 32)).astype(np.float32),
              "temporal_pos_embedding": np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32),
              "other": np.ones(3, np.float32)}
    same = videomamba.resize_positions(params, src_cfg, tiny_config())
    assert all(same[k] is params[k] for k in params)

    dst_cfg = tiny_config(num_frames=8, image_size=56)  # 4 -> 8 frames, 4x4 -> 7x7 patches
    out = videomamba.resize_positions(params, src_cfg, dst_cfg)
    assert out["pos_embed"].shape == (50, 32) and out["temporal_pos_embedding"].shape == (8, 32)
    np.testing.assert_array_equal(out["pos_embed"][0], params["pos_embed"][0])  # the CLS row is kept
    assert out["other"] is params["other"]
    # What the reference's run_class_finetuning.py computes: bicubic over the 4x4 patch grid (the CLS row apart),
    # linear over frames. resize_grid reproduces PyTorch's F.interpolate (tests/test_convert.py checks it).
    spatial = resize_grid(params["pos_embed"][1:], (4, 4), (7, 7), "cubic")
    np.testing.assert_allclose(out["pos_embed"][1:], spatial, atol=1e-6)
    temporal = resize_grid(params["temporal_pos_embedding"], (4,), (8,), "linear")
    np.testing.assert_allclose(out["temporal_pos_embedding"], temporal, atol=1e-6)
    # Interpolation, not repetition: output frame 1 sits at source position 0.25 (half-pixel centres).
    np.testing.assert_allclose(out["temporal_pos_embedding"][1], 0.75 * params["temporal_pos_embedding"][0]
                               + 0.25 * params["temporal_pos_embedding"][1], atol=1e-6)
    # The resized tables fit a model built for the new size.
    model = build(dst_cfg)
    assert model.pos_embed.shape == (50, 32) and model.temporal_pos_embedding.shape == (8, 32)


def test_converter_infers_the_config_from_shapes():
    from vidjax.convert.common import TensorSource
    from vidjax.convert.videomamba import from_videomamba

    src = TensorSource.from_file(FIXTURES / "videomamba_backbone_t2" / "source" / "checkpoint.pth")
    converted = from_videomamba(src)
    cfg = converted.model_config
    assert (cfg.width, cfg.depth, cfg.tubelet_size, cfg.num_frames, cfg.image_size) == (32, 2, 2, 8, 32)
    assert cfg.head == "none" and cfg.variant.endswith("/8") and cfg.d_state == 16 and cfg.dt_rank == 2
    assert converted.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert not [n for n in src.unused() if n.startswith("module.")]  # every tensor of the model was mapped
    image = from_videomamba(TensorSource.from_file(FIXTURES / "videomamba_image" / "source" / "checkpoint.pth"))
    assert (image.model_config.num_frames, image.model_config.head) == (1, "classification")
    np.testing.assert_array_equal(image.params["temporal_pos_embedding"], 0.0)


def test_masked_pretraining_file_converts_to_its_encoder_without_the_alignment_heads(caplog):
    """videomamba_pretrain.py's files: the final norm is `norm` (read as norm_f), the clip_decoder heads are left
    out in one line, and nothing else is left unread (the parity test checks the encoder's tokens)."""
    import logging

    from vidjax.convert.common import TensorSource
    from vidjax.convert.videomamba import from_videomamba

    src = TensorSource.from_file(FIXTURES / "videomamba_mask_pt" / "source" / "checkpoint.pth")
    with caplog.at_level(logging.INFO, logger="vidjax.convert.videomamba"):
        converted = from_videomamba(src)
    assert converted.model_config.head == "none" and not src.unused()
    np.testing.assert_array_equal(converted.params["norm_f/scale"], src.tensors["model.norm.weight"])
    assert not [k for k in converted.params if "clip" in k or "decoder" in k]
    (line,) = [r.getMessage() for r in caplog.records if "alignment heads" in r.getMessage()]
    assert "its 2 alignment heads (clip_decoder.*" in line and "head 'none'" in line


def small_train_config(**overrides):
    config = load_config("videomamba_k400", "runlocal")
    config.model.update(dict(width=32, depth=2, num_frames=4, image_size=32, scan_chunk=16))
    config.data.update(dict(num_frames=4, image_size=32, num_train=32, num_eval=32))
    config.update(dict(batch_size=16, total_steps=40, log_every=1, eval_every=0, eval_batches=1,
                       checkpoint_every=40, figure=False))
    config.optimizer.base_lr = 2e-3 * 256 / 16  # peak lr 2e-3
    config.optimizer.warmup_epochs = 2
    config.update(overrides)
    return config


@pytest.mark.slow
def test_runlocal_recipe_trains(tmp_path):
    """40 steps over 32 clips (20 epochs): the model fits its training clips, the loss falls well below ln 8."""
    config = small_train_config()
    assert config.task == "classification" and config.model.head == "classification"
    assert config.data.num_classes == config.model.num_classes == 8
    result = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    losses = train_losses(tmp_path)
    assert sorted(losses) == list(range(1, 41))
    first, last = np.mean([losses[s] for s in range(1, 5)]), np.mean([losses[s] for s in range(36, 41)])
    assert first > 1.9 and last < 0.8 * first, losses  # from about ln(8) = 2.08 (chance over 8 classes)
    assert 0.0 <= result["eval_top1"] <= 1.0
