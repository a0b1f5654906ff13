"""Tests for vidjax.visualize_lib: patchify/unpatchify, mask_video and the reconstruction figure."""

import os

import numpy as np
import pytest
from PIL import Image

from vidjax import visualize_lib


def test_patchify_token_layout_and_round_trip():
    rng = np.random.default_rng(0)
    video = rng.random((4, 8, 12, 3), dtype=np.float32)
    tokens = visualize_lib.patchify(video, tubelet=2, patch=4)
    assert tokens.shape == (2 * 2 * 3, 2 * 4 * 4 * 3)
    hp, wp = 2, 3
    for i, j, k in [(0, 0, 0), (1, 0, 2), (0, 1, 1), (1, 1, 2)]:
        expected = video[i * 2 : (i + 1) * 2, j * 4 : (j + 1) * 4, k * 4 : (k + 1) * 4].reshape(-1)
        np.testing.assert_array_equal(tokens[(i * hp + j) * wp + k], expected)
    np.testing.assert_array_equal(visualize_lib.unpatchify(tokens, 2, 4, 4, 8, 12), video)

    batch = rng.integers(0, 256, (3, 4, 8, 12, 3), dtype=np.uint8)
    batch_tokens = visualize_lib.patchify(batch, 2, 4)
    np.testing.assert_array_equal(batch_tokens[1], visualize_lib.patchify(batch[1], 2, 4))
    np.testing.assert_array_equal(visualize_lib.unpatchify(batch_tokens, 2, 4, 4, 8, 12), batch)


def test_patchify_shape_errors():
    with pytest.raises(ValueError, match="does not divide"):
        visualize_lib.patchify(np.zeros((3, 8, 8, 3)), 2, 4)
    with pytest.raises(ValueError, match="do not fit"):
        visualize_lib.unpatchify(np.zeros((5, 96)), 2, 4, 4, 8, 8)


def test_mask_video_greys_masked_patches_only():
    video = np.full((4, 8, 8, 3), 200, np.uint8)
    mask = np.zeros((2, 2, 2), bool)
    mask[1, 0, 1] = True
    out = visualize_lib.mask_video(video, mask, tubelet=2, patch=4)
    assert out.dtype == np.uint8 and np.all(video == 200)
    np.testing.assert_array_equal(out[2:4, 0:4, 4:8], 128)
    untouched = np.ones(out.shape[:3], bool)
    untouched[2:4, 0:4, 4:8] = False
    assert np.all(out[untouched] == 200)

    floats = visualize_lib.mask_video(video / 255.0, mask, 2, 4, fill=0.25)
    assert np.all(floats[2:4, 0:4, 4:8] == 0.25)
    with pytest.raises(ValueError, match="token grid"):
        visualize_lib.mask_video(video, np.zeros((2, 2, 3), bool), 2, 4)


@pytest.mark.parametrize("title", [None, "step 100"])
def test_reconstruction_figure_writes_png_grid(tmp_path, title):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (8, 32, 40, 3), dtype=np.uint8)
    mask = rng.random((4, 4, 5)) < 0.75
    masked = visualize_lib.mask_video(original, mask, tubelet=2, patch=8)
    # Float reconstruction overshooting [0, 1], as raw model output does.
    reconstruction = original / 255.0 + rng.normal(0, 0.2, original.shape)
    path = tmp_path / "figs" / "recon.png"
    visualize_lib.reconstruction_figure(original, masked, reconstruction, path, frames=4, title=title)

    assert os.listdir(path.parent) == ["recon.png"]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
        image.verify()
    # 32-px frames are upscaled x3 to 96x120 cells; 4 columns, 3 rows plus labels and margins.
    assert 4 * 120 < width < 4 * 120 + 200
    assert 3 * 96 < height < 3 * 96 + 100


def test_reconstruction_figure_title_adds_height_and_frames_capped(tmp_path):
    video = np.zeros((2, 100, 100, 3), np.uint8)
    sizes = []
    for title in (None, "title"):
        path = tmp_path / f"{title}.png"
        visualize_lib.reconstruction_figure(video, video, video, str(path), frames=4, title=title)
        with Image.open(path) as image:
            sizes.append(image.size)
    # Only 2 frames exist, so 2 columns of 100-px cells (no upscaling needed at 100 px).
    assert 2 * 100 < sizes[0][0] < 2 * 100 + 150
    assert sizes[0][0] == sizes[1][0] and sizes[1][1] > sizes[0][1]


def test_reconstruction_figure_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="share one shape"):
        visualize_lib.reconstruction_figure(
            np.zeros((4, 8, 8, 3)), np.zeros((4, 8, 8, 3)), np.zeros((2, 8, 8, 3)), tmp_path / "x.png"
        )
    assert not os.listdir(tmp_path)
