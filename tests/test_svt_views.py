"""SVT multi-view sampling: view frame indices, grouped augmented views, colour jitter and grayscale (numpy only)."""

import colorsys
import dataclasses

import numpy as np
import pytest

from vidjax.data import transforms as tr
from vidjax.data import views as vw


def rng(seed=0):
    return np.random.default_rng(seed)


def textured(t=3, h=24, w=32, seed=0, lo=40, hi=200):
    return np.random.default_rng(seed).integers(lo, hi + 1, size=(t, h, w, 3), dtype=np.uint8)


# Tiny views so a whole make_views call is milliseconds; the temporal settings are the reference's.
SMALL = dict(global_size=16, local_size=8)


# ---- spec and groups --------------------------------------------------------------------------------------------

def test_default_spec_is_the_reference_recipe():
    spec = vw.ViewSpec()
    assert (spec.num_frames, spec.sampling_rate, spec.window) == (8, 32, 256)
    assert (spec.num_global, spec.num_views, spec.view_frames) == (2, 10, (8,) * 10)
    assert (spec.global_size, spec.local_size, spec.global_scale, spec.local_scale) == (224, 96, (0.4, 1.0),
                                                                                       (0.05, 0.4))
    assert (spec.flip_p, spec.jitter_p, spec.grayscale_p) == (0.5, 0.8, 0.2)
    assert (spec.brightness, spec.contrast, spec.saturation, spec.hue) == (0.4, 0.4, 0.2, 0.0)
    groups = vw.view_groups(spec)
    assert [(g.key, g.shape, g.views, g.is_global) for g in groups] == [
        ("views_8x224", (2, 8, 224, 224, 3), (0, 1), (True, True)),
        ("views_8x96", (8, 8, 96, 96, 3), tuple(range(2, 10)), (False,) * 8)]


def test_rand_fr_groups_match_the_reference_batching():
    groups = vw.view_groups(vw.ViewSpec.rand_fr())
    assert [g.key for g in groups] == ["views_4x224", "views_8x224", "views_2x96", "views_4x96", "views_8x96",
                                       "views_16x96"]
    # MultiCropWrapper(vary_fr=True) splits the 10 views at [1, 2, 4, 6, 8, 10].
    assert [g.views for g in groups] == [(0,), (1,), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [all(g.is_global) for g in groups] == [True, True, False, False, False, False]


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_frames=(8,)), "exactly 2 global views"),
    (dict(local_scale=(0.5, 0.2)), "local_scale"),
    (dict(jitter_p=1.5), "jitter_p"),
    (dict(hue=0.7), "hue must be in"),
    (dict(interpolation="lanczos"), "interpolation"),
    (dict(local_frames=(8, 0)), "frame counts"),
])
def test_spec_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vw.ViewSpec(**kwargs)


# ---- temporal sampling ------------------------------------------------------------------------------------------

def test_globals_come_from_the_two_ends_of_the_window():
    spec = vw.ViewSpec()
    for seed in range(20):
        idx = vw.view_frame_indices(1000, spec, rng(seed))
        assert len(idx) == 10 and all(i.dtype == np.int64 for i in idx)
        g1, g2 = idx[0], idx[1]
        start = g1[0]
        assert 0 <= start <= 1000 - 256
        assert g1[-1] == start + 256 - 5  # the reference's linspace(0, L - 5)
        assert (g2[0], g2[-1]) == (start + 5, start + 255)  # linspace(5, L), L clamped to the last frame
        assert np.all(np.diff(g1) > 0) and np.all(np.diff(g2) > 0)


def test_local_windows_are_an_eighth_of_the_window_and_inside_it():
    spec = vw.ViewSpec()
    starts = set()
    for seed in range(50):
        idx = vw.view_frame_indices(300, spec, rng(seed))
        start = idx[0][0]
        for local in idx[2:]:
            assert start <= local[0] and local[-1] <= start + 255
            assert local[-1] - local[0] == 256 // 8
            starts.add(local[0] - start)
    assert min(starts) < 20 and max(starts) > 200  # spread over the window


def test_rand_fr_frame_counts():
    idx = vw.view_frame_indices(400, vw.ViewSpec.rand_fr(), rng(0))
    assert [len(i) for i in idx] == [4, 8, 2, 2, 4, 4, 8, 8, 16, 16]


def test_short_video_is_the_window():
    spec = vw.ViewSpec()
    for seed in range(10):
        idx = vw.view_frame_indices(40, spec, rng(seed))
        assert [len(i) for i in idx] == [8] * 10
        assert all(i.min() >= 0 and i.max() <= 39 for i in idx)
        assert (idx[0][0], idx[0][-1], idx[1][0], idx[1][-1]) == (0, 35, 5, 39)
        for local in idx[2:]:
            assert local[-1] - local[0] == 40 // 8
    one = vw.view_frame_indices(1, spec, rng(0))  # a single frame: every view repeats it
    assert all(np.array_equal(i, np.zeros(8)) for i in one)
    with pytest.raises(ValueError, match="0 frames"):
        vw.view_frame_indices(0, spec, rng(0))


def test_indices_are_deterministic_for_a_seed():
    spec = vw.ViewSpec.rand_fr()
    a = vw.view_frame_indices(500, spec, rng(3))
    b = vw.view_frame_indices(500, spec, rng(3))
    c = vw.view_frame_indices(500, spec, rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


# ---- views ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [vw.ViewSpec(num_frames=4, sampling_rate=2, **SMALL),
                                  vw.ViewSpec.rand_fr(num_frames=4, sampling_rate=4, **SMALL)])
def test_make_views_shapes_dtypes_and_determinism(spec):
    video = textured(t=20, h=20, w=28)
    idx = vw.view_frame_indices(len(video), spec, rng(1))
    out = vw.make_views(video, idx, spec, rng(2))
    groups = vw.view_groups(spec)
    assert list(out) == [g.key for g in groups]
    for g in groups:
        assert out[g.key].shape == g.shape and out[g.key].dtype == np.uint8
    again = vw.make_views(video, idx, spec, rng(2))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    other = vw.make_views(video, idx, spec, rng(5))
    assert not all(np.array_equal(out[k], other[k]) for k in out)


def test_make_views_from_only_the_decoded_frames():
    spec = vw.ViewSpec(num_frames=4, sampling_rate=8, **SMALL)
    video = textured(t=60, h=20, w=20)
    idx = vw.view_frame_indices(len(video), spec, rng(0))
    ids = vw.frames_to_decode(idx)
    assert np.all(np.diff(ids) > 0) and len(ids) < len(video)
    full = vw.make_views(video, idx, spec, rng(7))
    decoded = vw.make_views(video[ids], idx, spec, rng(7), frame_ids=ids)
    assert all(np.array_equal(full[k], decoded[k]) for k in full)
    with pytest.raises(ValueError, match="not among the given frames"):
        vw.make_views(video[ids[1:]], idx, spec, rng(7), frame_ids=ids[1:])


def test_views_take_their_frames_in_order():
    # Every frame a constant grey equal to its index: with no colour changes, a view's frames show its indices.
    spec = vw.ViewSpec(num_frames=4, sampling_rate=8, jitter_p=0.0, grayscale_p=0.0, **SMALL)
    video = np.repeat(np.arange(32, dtype=np.uint8)[:, None, None, None], 3, axis=-1) * np.ones((1, 12, 12, 3),
                                                                                               np.uint8)
    idx = vw.view_frame_indices(32, spec, rng(0))
    out = vw.make_views(video, idx, spec, rng(0))
    assert np.array_equal(out["views_4x16"][:, :, 0, 0, 0], np.stack(idx[:2]))
    assert np.array_equal(out["views_4x8"][:, :, 0, 0, 0], np.stack(idx[2:]))


def test_global_and_local_crop_scales():
    spec = vw.ViewSpec()
    for lo, hi in (spec.global_scale, spec.local_scale):
        fractions = []
        for seed in range(300):
            _, _, h, w = tr.random_resized_crop_box(240, 320, rng(seed), scale=(lo, hi))
            fractions.append(h * w / (240 * 320))
        fractions = np.array(fractions)
        # Rounding the sides to whole pixels moves the area a little; the draws cover the range (large crops that do
        # not fit the frame at the drawn aspect ratio are redrawn, so the top end is thinner).
        assert lo * 0.97 <= fractions.min() < lo + 0.1 * (hi - lo)
        assert hi - 0.1 * (hi - lo) < fractions.max() <= hi * 1.03


# ---- colour jitter and grayscale ---------------------------------------------------------------------------------

def test_color_jitter_with_zero_strengths_is_the_identity():
    video = textured()
    out = tr.color_jitter(video, rng(0), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert np.array_equal(out, video)


def test_color_jitter_is_the_same_for_every_frame_and_deterministic():
    video = np.repeat(textured(1), 4, axis=0)
    out = tr.color_jitter(video, rng(1), brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    assert out.dtype == np.uint8 and out.shape == video.shape and not np.array_equal(out, video)
    assert all(np.array_equal(out[0], f) for f in out)
    again = tr.color_jitter(video, rng(1), brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    assert np.array_equal(out, again)


def test_brightness_factors_span_the_range():
    video = np.full((1, 2, 2, 3), 100, np.uint8)
    values = [int(tr.color_jitter(video, rng(s), brightness=0.5, contrast=0, saturation=0)[0, 0, 0, 0])
              for s in range(300)]
    assert 50 <= min(values) < 55 and 145 < max(values) <= 150


def test_hue_shift_matches_colorsys():
    video = textured(1, 6, 7, lo=0, hi=255)
    shift = 0.3
    out = tr._shift_hue(video, shift)
    for r, g, b in [video[0, i, j] for i in range(6) for j in range(7)][:20]:
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        expected = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255
        got = out[0][(video[0] == (r, g, b)).all(-1)][0]
        assert np.all(np.abs(got - expected) <= 1.0)
    assert np.array_equal(tr._shift_hue(np.array([[[[255, 0, 0]]]], np.uint8), 1 / 3)[0, 0, 0], [0, 255, 0])
    assert np.array_equal(tr._shift_hue(video, 0.0), video)


def test_color_jitter_refuses_bad_strengths():
    with pytest.raises(ValueError, match=r"hue must be in \[0, 0.5\]"):
        tr.color_jitter(textured(), rng(0), brightness=0.4, contrast=0.4, saturation=0.2, hue=0.6)
    with pytest.raises(ValueError, match="saturation must be >= 0"):
        tr.color_jitter(textured(), rng(0), brightness=0.4, contrast=0.4, saturation=-0.1)


def test_grayscale_has_equal_channels_and_probability_p():
    video = textured()
    grey = tr.random_grayscale(video, rng(0), 1.0)
    assert grey.dtype == np.uint8 and grey.shape == video.shape
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    r, g, b = (video[..., c].astype(float) for c in range(3))
    assert np.abs(grey[..., 0] - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 1.0
    assert tr.random_grayscale(video, rng(0), 0.0) is video
    rate = np.mean([tr.random_grayscale(video, rng(s), 0.2) is not video for s in range(500)])
    assert 0.15 < rate < 0.25


def test_replace_keeps_the_spec_checked():
    with pytest.raises(ValueError, match="flip_p"):
        dataclasses.replace(vw.ViewSpec(), flip_p=-0.1)
