"""VideoMAE V2 dual masking: the running-cell decoder mask against the official generator, the loss mask against
the official engine, the model's V2 forward (shapes, loss, gradients, jit, V1 equivalence) and the input path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import input_spec, run_steps, tiny_family_config

from vidjax import config_lib, sharding, train
from vidjax.config_lib import ConfigError
from vidjax.data import pipeline
from vidjax.data.pipeline import running_cell_mask, running_cell_masks, tube_mask
from vidjax.evaluators import reconstruction
from vidjax.models import videomae
from vidjax.patches import MaskSpec
from vidjax.tasks import pretrain

# --------------------------------------------------------------------------------------------------------------------
# The official algorithm (OpenGVLab/VideoMAEv2, dataset/masking_generator.py: `Cell`, `RunningCellMaskingGenerator`),
# transcribed as the reference. 1 = masked from the decoder (not decoded).


class OfficialCell:
    def __init__(self, num_masks, num_patches):
        self.num_masks = num_masks
        self.num_patches = num_patches
        self.size = num_masks + num_patches
        self.queue = np.hstack([np.ones(num_masks), np.zeros(num_patches)])
        self.queue_ptr = 0

    def set_ptr(self, pos=-1):
        self.queue_ptr = np.random.randint(self.size) if pos < 0 else pos

    def get_cell(self):
        cell_idx = (np.arange(self.size) + self.queue_ptr) % self.size
        return self.queue[cell_idx]

    def run_cell(self):
        self.queue_ptr += 1


class OfficialRunningCellMaskingGenerator:
    def __init__(self, input_size, mask_ratio=0.5):
        self.frames, self.height, self.width = input_size
        num_masks_per_cell = int(4 * mask_ratio)
        assert 0 < num_masks_per_cell < 4
        self.cell = OfficialCell(num_masks_per_cell, 4 - num_masks_per_cell)
        self.cell_size = self.cell.size
        mask_list = []
        for ptr_pos in range(self.cell_size):
            self.cell.set_ptr(ptr_pos)
            mask = []
            for _ in range(self.frames):
                self.cell.run_cell()
                mask_unit = self.cell.get_cell().reshape(2, 2)
                mask_map = np.tile(mask_unit, [self.height // 2, self.width // 2])
                mask.append(mask_map.flatten())
            mask_list.append(np.stack(mask, axis=0))
        self.all_mask_maps = np.stack(mask_list, axis=0)  # (cell_size, frames, height * width)


def official_loss_mask(bool_masked_pos, decode_masked_pos):
    """engine_for_pretraining.py: `cal_loss_mask = bool_masked_pos[~decode_masked_pos].reshape(B, -1)`."""
    return bool_masked_pos[~decode_masked_pos].reshape(len(bool_masked_pos), -1)


# --------------------------------------------------------------------------------------------------------------------


def tiny_config(**overrides):
    cfg = videomae.default_config()
    cfg.update(dict(variant="Mu/8", width=32, depth=2, num_heads=2, decoder_width=16, decoder_heads=2,
                    decoder_depth=1, num_frames=4, image_size=32, decoder_mask_type="run_cell"))
    cfg.update(overrides)
    return cfg


def build(cfg):
    with nnx.use_eager_sharding(False):
        return videomae.Model(cfg, rngs=nnx.Rngs(0))


def dual_masks(grid, batch, seed=0):
    """(tube masks, running-cell masks) for `batch` clips: tube 0.9, each phase in turn."""
    rng = np.random.default_rng(seed)
    phases = running_cell_masks(grid, 0.5)
    mask = np.stack([tube_mask(rng, grid, 0.9) for _ in range(batch)])
    return mask, np.stack([phases[i % 4] for i in range(batch)])


@pytest.mark.parametrize("grid", [(8, 14, 14), (2, 4, 4), (4, 2, 6), (3, 2, 2)])
@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.75])
def test_running_cell_masks_equal_the_official_generator(grid, ratio):
    official = OfficialRunningCellMaskingGenerator(grid, ratio).all_mask_maps.reshape(4, -1).astype(bool)
    ours = running_cell_masks(grid, ratio)
    assert ours.shape == (4, np.prod(grid)) and ours.dtype == bool
    np.testing.assert_array_equal(ours, official)  # phase by phase, in the official order
    assert {m.tobytes() for m in ours} == {m.tobytes() for m in official}
    assert len({m.tobytes() for m in ours}) == 4
    hidden = int(4 * ratio)
    per_frame = ours.reshape(4, grid[0], -1).sum(-1)
    assert (per_frame == grid[1] * grid[2] * hidden // 4).all()
    drawn = {running_cell_mask(np.random.default_rng(seed), grid, ratio).tobytes() for seed in range(40)}
    assert drawn == {m.tobytes() for m in official}  # every draw is a phase, and every phase gets drawn
    one = running_cell_mask(np.random.default_rng(0), grid, ratio)
    assert one.shape == (np.prod(grid),) and one.dtype == bool and one.flags.writeable


def test_running_cell_mask_errors():
    with pytest.raises(ValueError, match="even number of patches"):
        running_cell_masks((2, 3, 4))
    with pytest.raises(ValueError, match="1 to 3"):
        running_cell_masks((2, 4, 4), 0.2)
    with pytest.raises(ValueError, match="1 to 3"):
        running_cell_masks((2, 4, 4), 1.0)
    with pytest.raises(ConfigError, match="even number of patches"):
        build(tiny_config(image_size=24))  # 3x3 patches
    with pytest.raises(ConfigError, match="decoder_mask_type must be"):
        build(tiny_config(decoder_mask_type="random"))
    with pytest.raises(ConfigError, match="decoder_mask_ratio=0.1"):
        build(tiny_config(decoder_mask_ratio=0.1))
    build(tiny_config(image_size=24, decoder_mask_type="none"))  # V1 takes any grid


@pytest.mark.parametrize("grid", [(8, 14, 14), (2, 4, 4), (4, 2, 6)])
def test_decoded_ids_and_loss_mask_follow_the_official_engine(grid):
    """Tube x running cell, every phase: the positions decoded and the loss mask are the official engine's."""
    n = int(np.prod(grid))
    mask, dmask = dual_masks(grid, 8, seed=sum(grid))
    num_decoded = n // 2
    decoded_ids, _ = videomae.split_mask(jnp.asarray(dmask), n - num_decoded)
    loss_mask = np.asarray(jnp.take_along_axis(jnp.asarray(mask), decoded_ids, axis=1))
    for row in range(8):
        np.testing.assert_array_equal(np.asarray(decoded_ids[row]), np.flatnonzero(~dmask[row]))
    np.testing.assert_array_equal(loss_mask, official_loss_mask(mask, dmask))
    assert loss_mask.sum() == official_loss_mask(mask, dmask).sum()


def test_model_loss_mask_counts_equal_the_official_engine():
    model = build(tiny_config())
    assert model.num_decoded == 32 // 2
    video = jax.random.normal(jax.random.key(0), (4, 4, 32, 32, 3))
    for seed in range(3):
        mask, dmask = dual_masks(model.encoder.grid, 4, seed)  # one clip per phase
        out = model(video, jnp.asarray(mask), decoder_mask=jnp.asarray(dmask))
        reference = official_loss_mask(mask, dmask)
        np.testing.assert_array_equal(np.asarray(out["loss_mask"]), reference)
        assert int(out["loss_mask"].sum()) == int(reference.sum())
        np.testing.assert_array_equal(np.asarray(out["masked_ids"]), np.stack([np.flatnonzero(m) for m in mask]))


@pytest.mark.slow
def test_v2_forward_shapes_loss_and_gradients():
    model = build(tiny_config())
    b, n, p = 3, 32, 2 * 8 * 8 * 3
    video = jax.random.normal(jax.random.key(1), (b, 4, 32, 32, 3))
    mask, dmask = dual_masks(model.encoder.grid, b, seed=5)
    out = model(video, jnp.asarray(mask), decoder_mask=jnp.asarray(dmask))
    assert set(out) == {"loss", "pred", "target", "decoded_ids", "loss_mask", "masked_ids", "last_hidden_state"}
    assert out["pred"].shape == out["target"].shape == (b, n // 2, p) and out["pred"].dtype == jnp.float32
    assert out["decoded_ids"].shape == out["loss_mask"].shape == (b, n // 2) and out["loss_mask"].dtype == bool
    assert out["masked_ids"].shape == (b, model.num_masked)
    assert out["last_hidden_state"].shape == (b, n - model.num_masked, 32)
    assert np.isfinite(float(out["loss"]))
    # The loss, recomputed in numpy the official way: per-token MSE over the patch, summed over the decoded tokens
    # the encoder masked, over their count in the whole batch.
    pred, target, lm = (np.asarray(out[k], np.float64) for k in ("pred", "target", "loss_mask"))
    per_token = np.mean((pred - target) ** 2, axis=-1)
    np.testing.assert_allclose(float(out["loss"]), (per_token * lm).sum() / lm.sum(), rtol=1e-5)
    # The target is the full target at the decoded positions.
    full = np.asarray(model.pixel_target(video))
    np.testing.assert_allclose(target, np.take_along_axis(full, np.asarray(out["decoded_ids"])[..., None], 1),
                               rtol=1e-6, atol=1e-6)

    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def loss_fn(params, video, mask, dmask):
        return nnx.merge(graphdef, params)(video, mask, decoder_mask=dmask)["loss"]

    loss = loss_fn(params, video, jnp.asarray(mask), jnp.asarray(dmask))
    np.testing.assert_allclose(float(loss), float(out["loss"]), rtol=1e-5)
    grads = jax.grad(loss_fn)(params, video, jnp.asarray(mask), jnp.asarray(dmask))
    norms = {jax.tree_util.keystr(path): float(jnp.linalg.norm(g))
             for path, g in jax.tree_util.tree_leaves_with_path(grads)}
    assert all(np.isfinite(v) for v in norms.values())
    for part in ("mask_token", "decoder_head", "encoder_to_decoder", "patch_embed"):
        assert any(v > 0 for k, v in norms.items() if part in k), (part, norms)
    # Another phase / tube draw: same shapes, so the jitted function is reused (static shapes).
    mask2, dmask2 = dual_masks(model.encoder.grid, b, seed=6)
    loss_fn(params, video, jnp.asarray(mask2), jnp.asarray(dmask2[::-1].copy()))
    assert loss_fn._cache_size() == 1


def test_without_decoder_mask_the_model_is_v1():
    """decoder_mask None: VideoMAE V1's outputs; and a decoder mask that decodes exactly the encoder-masked tokens
    (the official default when decoder masking is off: `decoder_mask_map = 1 - encoder_mask_map`) gives them too."""
    model = build(tiny_config())
    v1_model = build(tiny_config(decoder_mask_type="none"))
    video = jax.random.normal(jax.random.key(2), (2, 4, 32, 32, 3))
    mask, _ = dual_masks(model.encoder.grid, 2, seed=3)
    mask = jnp.asarray(mask)
    out = model(video, mask)
    ref = v1_model(video, mask)
    assert set(out) == set(ref) == {"loss", "pred", "target", "masked_ids", "last_hidden_state"}
    for key in out:
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(ref[key]))
    assert out["pred"].shape == (2, model.num_masked, 2 * 8 * 8 * 3)
    np.testing.assert_allclose(float(out["loss"]), float(jnp.mean((out["pred"] - out["target"]) ** 2)), rtol=1e-6)
    same = v1_model(video, mask, decoder_mask=~mask, num_decoded=model.num_masked)
    np.testing.assert_array_equal(np.asarray(same["decoded_ids"]), np.asarray(out["masked_ids"]))
    assert bool(same["loss_mask"].all())
    for key in ("pred", "target", "masked_ids", "last_hidden_state"):
        np.testing.assert_allclose(np.asarray(same[key]), np.asarray(out[key]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(same["loss"]), float(out["loss"]), rtol=1e-5)
    with pytest.raises(ValueError, match="num_decoded"):
        v1_model(video, mask, decoder_mask=~mask)


def test_input_path_emits_decoder_masks():
    config = tiny_family_config("videomae", decoder_mask_type="run_cell")
    grid = (2, 4, 4)
    phases = {m.tobytes() for m in running_cell_masks(grid)}
    for split in ("train", "eval"):
        source = pipeline.make_source(config.data, split)
        batch = next(iter(pipeline.make_dataset(config, split, source, input_spec(config))))
        assert batch["decoder_mask"].shape == batch["mask"].shape == (8, 32)
        assert batch["decoder_mask"].dtype == bool
        assert ((~batch["decoder_mask"]).sum(1) == 16).all()
        assert all(m.tobytes() in phases for m in batch["decoder_mask"])
    # The tube masks are V1's: the decoder masks are drawn after them.
    v1 = tiny_family_config("videomae")
    source = pipeline.make_source(v1.data, "train")
    v1_batch = next(iter(pipeline.make_dataset(v1, "train", source, input_spec(v1))))
    assert "decoder_mask" not in v1_batch
    source = pipeline.make_source(config.data, "train")
    v2_batch = next(iter(pipeline.make_dataset(config, "train", source, input_spec(config))))
    np.testing.assert_array_equal(v2_batch["mask"], v1_batch["mask"])


def test_repeated_samples_get_one_decoder_mask_each():
    data = config_lib.synthetic_data(num_frames=4, image_size=32, num_train=4, num_eval=4)
    data.num_samples = 3
    grid = (2, 4, 4)
    preprocess = pipeline.Preprocess(data=data, source=None, train=True, pixel_mean=(0.5,) * 3,
                                     pixel_std=(0.25,) * 3, masks=MaskSpec(grid, 0.9, decoder_kind="run_cell"))
    rng = np.random.default_rng(0)
    element = {"video": rng.integers(0, 256, (8, 40, 48, 3), dtype=np.uint8), "index": np.int32(0),
               "label": np.int32(1)}
    out = preprocess(element, np.random.default_rng(1))
    assert out["video"].shape == (3, 4, 32, 32, 3)
    assert out["mask"].shape == out["decoder_mask"].shape == (3, 32) and out["decoder_mask"].dtype == bool
    phases = {m.tobytes() for m in running_cell_masks(grid)}
    assert all(m.tobytes() in phases for m in out["decoder_mask"])
    batch = {k: np.stack([v, v]) for k, v in out.items()}
    flat = pipeline._flatten_samples(batch)
    assert flat["decoder_mask"].shape == (6, 32) and flat["mask"].shape == (6, 32)
    np.testing.assert_array_equal(flat["decoder_mask"][:3], out["decoder_mask"])


def test_a_train_step_runs_with_decoder_masking(tmp_path):
    config = tiny_family_config("videomae", decoder_mask_type="run_cell")
    losses, _ = run_steps(config, jax.devices()[:1], steps=2)
    assert all(np.isfinite(losses)), losses
    # The end-of-training figure draws the decoded-and-masked tokens.
    config.data.num_eval = 8
    mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
    source = pipeline.make_source(config.data, "train")
    setup = train.build(config, len(source), mesh)
    path = tmp_path / "reconstruction.png"
    reconstruction.write_reconstruction_figure(config, setup, pretrain.TRAINING, setup.init_state()["params"],
                                               pipeline.make_source(config.data, "eval"), str(path))
    assert path.stat().st_size > 0
