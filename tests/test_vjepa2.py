"""V-JEPA 2: converted transformers checkpoints match their recorded outputs (encoder, predictor, classifier), clips of
16 and 32 frames, scanned and rematerialised blocks, and config errors."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidjax import pretrained
from vidjax.commands.convert import convert
from vidjax.config_lib import ConfigError
from vidjax.models import size_problems, vjepa2

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "parity"
ATOL = 1e-4  # max abs difference to transformers, fp32

TINY = dict(variant="Mu/16", width=32, depth=2, num_heads=2, mlp_dim=64, num_frames=16, image_size=32,
            predictor_width=24, predictor_depth=2, predictor_heads=2, num_mask_tokens=2, num_classes=5,
            num_pooler_layers=1)


def tiny_config(**overrides):
    cfg = vjepa2.default_config()
    cfg.update(dict(TINY, **overrides))
    return cfg


def build(cfg, seed=0):
    with nnx.use_eager_sharding(False):
        return vjepa2.Model(cfg, rngs=nnx.Rngs(seed))


def jitted(model):
    """model(video, context_ids, target_ids) compiled once per shape."""
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit)
    def run(state, video, context_ids, target_ids):
        return nnx.merge(graphdef, state)(video, context_ids, target_ids)

    return lambda video, context_ids=None, target_ids=None: run(state, video, context_ids, target_ids)


def converted(case, tmp_path):
    """The fixture's save_pretrained folder through `python -m vidjax.convert --from_hf`, loaded back."""
    convert(from_hf=str(FIXTURES / case / "source"), out=str(tmp_path / case))
    return pretrained.load(tmp_path / case), dict(np.load(FIXTURES / case / "io.npz"))


def assert_close(got, want, name):
    got = np.asarray(got)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=name)


def test_vjepa2_model_encoder_and_predictor_match_transformers(tmp_path):
    loaded, io = converted("vjepa2_model", tmp_path)
    assert loaded.model_name == "vjepa2" and loaded.config.head == "none" and loaded.config.predictor
    run = jitted(loaded.model)
    out = run(io["video"], io["context_ids"], io["target_ids"])
    for name in ("last_hidden_state", "predictor_output", "target_hidden_state"):
        assert_close(out[name], io[name], name)
    # 8 frames, twice the checkpoint's frames_per_clip: the rotary positions extend
    long = run(io["video_long"], io["context_ids_long"], io["target_ids_long"])
    assert_close(long["last_hidden_state"], io["last_hidden_state_long"], "last_hidden_state_long")
    assert_close(long["predictor_output"], io["predictor_output_long"], "predictor_output_long")
    # one frame, repeated to the tubelet
    assert_close(run(io["video_image"])["last_hidden_state"], io["last_hidden_state_image"], "last_hidden_state_image")
    # the same through the loaded checkpoint's forward
    public = loaded.forward(io["video"], context_ids=io["context_ids"], target_ids=io["target_ids"])
    assert_close(public["predictor_output"], io["predictor_output"], "forward predictor_output")
    with pytest.raises(ValueError, match="both"):
        loaded.forward(io["video"], context_ids=io["context_ids"])
    # the predictor does not depend on the order the context tokens come in (transformers sorts them)
    order = np.argsort(io["context_ids"], axis=1)
    shuffled = run(io["video"], np.take_along_axis(io["context_ids"], order, axis=1), io["target_ids"])
    np.testing.assert_allclose(shuffled["predictor_output"], out["predictor_output"], rtol=0, atol=1e-5)


def test_vjepa2_classifier_matches_transformers(tmp_path):
    loaded, io = converted("vjepa2_classification", tmp_path)
    cfg = loaded.config
    assert cfg.head == "classification" and cfg.num_classes == 5 and cfg.mlp_dim == 96 and cfg.ln_eps == 1e-5
    assert loaded.class_names == [f"action_{i}" for i in range(5)]
    out = loaded.forward(io["video"])
    assert_close(out["logits"], io["logits"], "logits")
    assert loaded(io["video"]).shape == (2, 5)
    assert_close(out["last_hidden_state"], io["last_hidden_state"], "last_hidden_state")


@pytest.mark.parametrize("frames", [16, 32])
def test_shapes_at_16_and_32_frames(frames):
    model = build(tiny_config(head="classification"))
    tokens = frames // 2 * 2 * 2
    rng = np.random.default_rng(frames)
    ids = np.stack([rng.permutation(tokens) for _ in range(2)])
    video = jax.random.normal(jax.random.key(0), (2, frames, 32, 32, 3))
    out = jitted(model)(video, ids[:, :tokens // 2], ids[:, tokens // 2:tokens // 2 + 5])
    assert out["last_hidden_state"].shape == (2, tokens, 32)
    assert out["predictor_output"].shape == out["target_hidden_state"].shape == (2, 5, 32)
    assert out["logits"].shape == (2, 5) and out["logits"].dtype == jnp.float32
    assert all(np.all(np.isfinite(v)) for v in out.values())


@pytest.mark.slow
def test_scanned_and_rematerialised_blocks_compute_the_same():
    video = jax.random.normal(jax.random.key(1), (1, 4, 32, 32, 3))
    ids = np.arange(8)[None]

    def value_and_grads(model):
        graphdef, state = nnx.split(model)

        def loss(state):
            out = nnx.merge(graphdef, state)(video, ids[:, :5], ids[:, 5:])
            return jnp.sum(out["predictor_output"] ** 2), out["last_hidden_state"]

        (value, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        return value, hidden, nnx.to_pure_dict(grads)

    # the same seed gives the same parameters, per block or stacked (layers.BlockStack)
    value, hidden, grads = value_and_grads(build(tiny_config(num_frames=4)))
    value_scan, hidden_scan, grads_scan = value_and_grads(build(tiny_config(num_frames=4, scan_layers=True,
                                                                            remat="full")))
    np.testing.assert_allclose(value_scan, value, rtol=1e-5)
    np.testing.assert_allclose(hidden_scan, hidden, rtol=0, atol=1e-5)
    for part in ("encoder", "predictor"):
        got, want = (g[part]["patch_embed" if part == "encoder" else "embed"]["kernel"] for g in (grads_scan, grads))
        assert np.any(want != 0)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=part)


def test_config_errors():
    with pytest.raises(ValueError, match="head"):
        build(tiny_config(head="pretrain"))
    with pytest.raises(ConfigError, match="SIZE"):
        vjepa2.dims(tiny_config(variant="Q/16"))
    assert vjepa2.dims(tiny_config(variant="g/16", width=0, depth=0, num_heads=0, mlp_dim=0)) == dict(
        width=1408, depth=40, num_heads=22, mlp_dim=6144, patch=16)
    problems = size_problems(tiny_config(predictor_heads=5))
    assert any("predictor_heads=5" in p for p in problems), problems
    model = build(tiny_config(predictor=False, num_frames=4))
    with pytest.raises(ValueError, match="without its predictor"):
        model(jnp.zeros((1, 4, 32, 32, 3)), np.arange(4)[None], np.arange(4, 6)[None])
