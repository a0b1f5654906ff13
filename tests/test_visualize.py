"""vidjax.visualize (reconstruction PNG + GIF of a pre-training checkpoint) and the visible-patch statistics."""

import pathlib

import numpy as np
import pytest
from PIL import Image
from test_predict import make_clip, trained_workdir

from vidjax import pretrained, visualize_lib
from vidjax.commands import visualize
from vidjax.patches import unpatchify
from vidjax.pretrained import reconstruction


def video_of_tokens(tokens, grid, tubelet, patch):
    """(T, H, W, 3) video whose token k has the pixels tokens[k] (P, 3)."""
    t, h, w = grid
    return unpatchify(tokens.reshape(len(tokens), -1), tubelet, patch, t * tubelet, h * patch, w * patch)


def token_stats(tokens, ids):
    return tokens[ids].mean(axis=1).mean(axis=0), tokens[ids].std(axis=1, ddof=1).mean(axis=0)


def test_visible_patch_stats_nearest_in_the_same_frame():
    rng = np.random.default_rng(0)
    tokens = rng.random((9, 4, 3)).astype(np.float32)  # a 3x3 grid of 2x2 patches, one time slice
    video = video_of_tokens(tokens, (1, 3, 3), 1, 2)
    mean, std = visualize_lib.visible_patch_stats(video, np.array([0, 4]), tubelet=1, patch=2)
    assert mean.shape == std.shape == (2, 1, 3)
    # Corner (0, 0), with the centre hidden too: 1 and 3 at distance 1, then 2 and 6 at distance 2 (5 and 7 are
    # sqrt(5) away). Centre (1, 1): its four edge neighbours 1, 3, 5, 7.
    for row, ids in enumerate(([1, 3, 2, 6], [1, 3, 5, 7])):
        want_mean, want_std = token_stats(tokens, ids)
        np.testing.assert_allclose(mean[row, 0], want_mean, rtol=1e-6)
        np.testing.assert_allclose(std[row, 0], want_std, rtol=1e-6)


def test_visible_patch_stats_borrow_from_other_frames_when_a_slice_is_hidden():
    # Grid (2 time slices, 1 row, 2 columns) of 2-frame tubelets of 1x1 patches.
    tokens = np.random.default_rng(1).random((4, 2, 3)).astype(np.float32)
    video = video_of_tokens(tokens, (2, 1, 2), 2, 1)
    mean, _ = visualize_lib.visible_patch_stats(video, np.array([2, 3]), tubelet=2, patch=1, neighbours=1)
    # Token 2 = (1, 0, 0): nearest visible is token 0 = (0, 0, 0); token 3 = (1, 0, 1): token 1.
    np.testing.assert_allclose(mean[:, 0], tokens[[0, 1]].mean(axis=1), rtol=1e-6)


def test_reconstruct_with_estimated_or_true_stats():
    tokens = np.random.default_rng(2).random((9, 4, 3)).astype(np.float32)
    video = video_of_tokens(tokens, (1, 3, 3), 1, 2)
    pred = np.zeros((1, 12), np.float32)  # predicts "the patch's mean" for the hidden centre patch
    estimated = visualize_lib.reconstruct(video, pred, np.array([4]), 1, 2, true_stats=False)
    true = visualize_lib.reconstruct(video, pred, np.array([4]), 1, 2, true_stats=True)
    np.testing.assert_allclose(estimated[0, 2:4, 2:4], np.broadcast_to(token_stats(tokens, [1, 3, 5, 7])[0],
                                                                        (2, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(true[0, 2:4, 2:4], np.broadcast_to(tokens[4].mean(axis=0), (2, 2, 3)), rtol=1e-5)
    visible = np.ones((6, 6), bool)
    visible[2:4, 2:4] = False
    np.testing.assert_array_equal(estimated[0][visible], video[0][visible])
    assert "4 nearest visible patches" in visualize_lib.stats_note(True, False)
    assert "TRUE mean/std" in visualize_lib.stats_note(True, True)


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    return trained_workdir("pretrain", tmp_path_factory)[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("visualize") / "clip.mp4", seed=3, num_frames=30)


def test_visualize_writes_png_and_gif(pretrain_run, clip, tmp_path, capsys):
    titles = {}
    for name, flags in (("estimated", []), ("true", ["--use_true_stats"])):
        prefix = tmp_path / name
        assert visualize.main([f"--checkpoint={pretrain_run}", clip, f"--out={prefix}", *flags]) == 0
        assert f"Wrote {prefix}.png and {prefix}.gif (4 frames)" in capsys.readouterr().out
        with Image.open(f"{prefix}.png") as png:
            assert png.format == "PNG"
            titles[name] = png.text["Title"]
        with Image.open(f"{prefix}.gif") as gif:
            assert gif.format == "GIF" and gif.n_frames == 4 and gif.is_animated
            # Three panels of the 32-px clip, upscaled x3 to 96 px, side by side.
            assert gif.size[0] > 3 * 96 and 96 < gif.size[1] < 96 + 40
    assert titles["estimated"].startswith("videomae Mu/8, clip.mp4, 90% of patches masked;")
    assert "estimated from the 4 nearest visible patches" in titles["estimated"] and "TRUE" not in titles["estimated"]
    assert "TRUE mean/std (peeks at the hidden pixels)" in titles["true"]
    with Image.open(tmp_path / "estimated.png") as a, Image.open(tmp_path / "true.png") as b:
        assert a.size == b.size and np.any(np.asarray(a) != np.asarray(b))


def test_visualize_refusals(pretrain_run, clip, tmp_path_factory, tmp_path, capsys):
    classifier, _ = trained_workdir("classification", tmp_path_factory)
    assert visualize.main([f"--checkpoint={classifier}", clip, f"--out={tmp_path / 'x'}"]) == 2
    assert "reconstructions need a VideoMAE pre-training checkpoint" in capsys.readouterr().err
    assert visualize.main([f"--checkpoint={pretrain_run}", clip, f"--out={tmp_path / 'x'}", "--mask_ratio=0.05"]) == 2
    assert "--mask_ratio=0.05 hides 0 of the 16 patches" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage")
    assert visualize.main([f"--checkpoint={pretrain_run}", str(bad), f"--out={tmp_path / 'x'}"]) == 1
    assert "cannot decode video" in capsys.readouterr().err
    assert not list(tmp_path.glob("x.*"))


def test_the_mask_is_the_checkpoints_own_unless_the_flag_gives_a_ratio(pretrain_run, clip, tmp_path):
    """Without --mask_ratio the mask follows the checkpoint's `patches.MaskSpec` (config.model.mask_ratio over its
    token grid, as its pre-training drew masks); a ratio given replaces the spec's."""
    import dataclasses

    model = pretrained.load(pretrain_run)
    config = model.config.copy_and_resolve_references()
    with config.unlocked():
        config.mask_ratio = 0.75
    model = dataclasses.replace(model, config=config)
    masks = reconstruction.mask_spec(model)
    assert (masks.ratio, masks.grid, masks.num_masked) == (0.75, (2, 4, 4), 24)  # 12 of each frame's 16 patches
    own = reconstruction.render(model, clip, str(tmp_path / "own"))
    same = reconstruction.render(model, clip, str(tmp_path / "same"), mask_ratio=0.75)
    other = reconstruction.render(model, clip, str(tmp_path / "other"), mask_ratio=0.5)
    assert ", 75% of patches masked;" in own["title"] and ", 50% of patches masked;" in other["title"]
    gifs = [pathlib.Path(result["gif"]).read_bytes() for result in (own, same, other)]
    assert gifs[0] == gifs[1] != gifs[2]
