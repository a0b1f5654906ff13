"""Video transforms: determinism, video-consistent parameters, reference crop sets, RandAugment, erasing, test views."""

import itertools
import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from vidjax.data import transforms as tr


def rng(seed=0):
    return np.random.default_rng(seed)


def textured(t=3, h=24, w=32, seed=0, lo=40, hi=200):
    """A clip of random colours in [lo, hi] (not full range, so AutoContrast has something to stretch)."""
    return np.random.default_rng(seed).integers(lo, hi + 1, size=(t, h, w, 3), dtype=np.uint8)


def static(t=4, h=24, w=32):
    return np.repeat(textured(1, h, w), t, axis=0)


# ---- existing crops and resizing --------------------------------------------------------------------------------

def test_resize_short_side_matches_pil_per_frame():
    video = textured(2, 24, 40)
    out = tr.resize_short_side(video, 12)
    assert out.shape == (2, 12, 20, 3)
    expected = np.asarray(Image.fromarray(video[1]).resize((20, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[1], expected)
    assert tr.resize_short_side(video, 24) is video


def test_flip_is_all_frames_or_none_with_probability_p():
    video = textured(3)
    flipped = [not np.array_equal(tr.random_flip(video, rng(s)), video) for s in range(400)]
    assert 0.4 < np.mean(flipped) < 0.6
    out = tr.random_flip(video, rng(0), p=1.0)
    np.testing.assert_array_equal(out, video[:, :, ::-1])
    assert tr.random_flip(video, rng(0), p=0.0) is video


# ---- multi-scale crop ---------------------------------------------------------------------------------------------

def candidate_boxes(height, width, out, scales=(1, 0.875, 0.75, 0.66)):
    """VideoMAE's GroupMultiScaleCrop boxes, written independently of vidjax: (top, left, crop_h, crop_w)."""
    sides = [int(min(height, width) * s) for s in scales]
    snapped = [out if abs(s - out) < 3 else s for s in sides]
    boxes = set()
    for i, j in itertools.product(range(len(scales)), repeat=2):
        if abs(i - j) > 1:
            continue
        ch, cw = snapped[i], snapped[j]
        hq, wq = (height - ch) // 4, (width - cw) // 4
        # 3x3 grid of corners/edge centres/centre at 0, 2, 4 quarters, plus the four inner quarter points.
        grid = list(itertools.product((0, 2, 4), repeat=2)) + list(itertools.product((1, 3), repeat=2))
        assert len(grid) == 13
        boxes |= {(b * hq, a * wq, ch, cw) for a, b in grid}
    return boxes


@pytest.mark.parametrize("height,width,out", [(64, 96, 56), (64, 96, 62), (80, 48, 40)])
def test_multi_scale_crop_boxes_are_the_reference_set(height, width, out):
    expected = candidate_boxes(height, width, out)
    seen = {tr.multi_scale_crop_box(height, width, out, rng(s)) for s in range(4000)}
    assert seen == expected  # every box drawn is allowed, and every allowed box is drawn


def test_multi_scale_crop_output_is_the_box_resized():
    video = textured(4, 64, 96)
    out = tr.multi_scale_crop(video, 56, rng(3))
    assert out.shape == (4, 56, 56, 3) and out.dtype == np.uint8
    top, left, h, w = tr.multi_scale_crop_box(64, 96, 56, rng(3))
    crop = video[:, top : top + h, left : left + w]
    expected = np.stack([np.asarray(Image.fromarray(f).resize((56, 56), Image.Resampling.BILINEAR)) for f in crop])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(tr.multi_scale_crop(video, 56, rng(3)), out)
    assert not all(np.array_equal(tr.multi_scale_crop(video, 56, rng(s)), out) for s in range(4, 8))


def test_multi_scale_crop_without_fixed_offsets_stays_inside():
    for s in range(300):
        top, left, h, w = tr.multi_scale_crop_box(50, 70, 40, rng(s), fix_crop=False)
        assert 0 <= top <= 50 - h and 0 <= left <= 70 - w and min(h, w) >= int(50 * 0.66)


def test_random_resized_crop_box_area_and_ratio():
    for s in range(300):
        top, left, h, w = tr.random_resized_crop_box(60, 80, rng(s))
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        assert 0.08 * 4800 * 0.8 <= h * w <= 4800  # area fraction in [0.08, 1], up to rounding of the sides
        assert 0.75 * 0.85 <= w / h <= 4 / 3 / 0.85
    out = tr.random_resized_crop(textured(2, 60, 80), 32, rng(0))
    assert out.shape == (2, 32, 32, 3)


# ---- test-time views ------------------------------------------------------------------------------------------------

def coordinate_video(h, w, t=2):
    """Frame pixel (y, x) holds (y, x, frame index), so a crop reveals its position."""
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([np.stack([y, x, np.full_like(y, i)], -1) for i in range(t)]).astype(np.uint8)


def test_three_crop_positions_along_the_long_side():
    views = tr.three_crop(coordinate_video(24, 40))
    assert views.shape == (3, 2, 24, 24, 3)
    assert [int(v[0, 0, 0, 1]) for v in views] == [0, 8, 16]  # left, centre, right
    assert all(int(v[0, 0, 0, 0]) == 0 for v in views)
    views = tr.three_crop(coordinate_video(40, 24))
    assert [int(v[0, 0, 0, 0]) for v in views] == [0, 8, 16]  # top, centre, bottom
    views = tr.three_crop(coordinate_video(30, 40), size=20)  # centred along the short side
    assert [(int(v[0, 0, 0, 0]), int(v[0, 0, 0, 1])) for v in views] == [(5, 0), (5, 10), (5, 20)]


def test_multi_view_shapes_and_single_view_is_centre_crop():
    video = coordinate_video(24, 41, t=3)
    for n in (1, 2, 5):
        assert tr.multi_view(video, n).shape == (n, 3, 24, 24, 3)
    np.testing.assert_array_equal(tr.multi_view(video, 1)[0], tr.center_crop(video, 24))
    views = tr.multi_view(video, 5)
    assert [int(v[0, 0, 0, 1]) for v in views] == [int(i * 17 / 4) for i in range(5)]
    with pytest.raises(ValueError, match="num_crops"):
        tr.multi_view(video, 0)
    with pytest.raises(ValueError, match="larger than"):
        tr.multi_view(video, 3, size=30)


# ---- RandAugment ------------------------------------------------------------------------------------------------

def test_parse_rand_augment():
    config = tr.parse_rand_augment("rand-m7-n4-mstd0.5-inc1")
    assert config == tr.RandAugmentConfig(magnitude=7.0, num_ops=4, magnitude_std=0.5, increasing=True)
    assert config.ops == tr.RAND_AUGMENT_INCREASING_OPS and len(config.ops) == 15
    assert tr.parse_rand_augment("rand") == tr.RandAugmentConfig(10.0, 2, 0.0, False)
    assert tr.parse_rand_augment("rand-inc0-n3").ops == tr.RAND_AUGMENT_OPS
    for bad, message in [("rnd-m7", "start with 'rand'"), ("", "start with 'rand'"), ("rand-m7-x3", "section 'x3'"),
                         ("rand-m", "section 'm'"), ("rand-m7-m8", "twice"), ("rand-m11", r"\[0, 10\]"),
                         ("rand-n0", "at least 1"), ("rand-n2.5", "integers"), ("rand-inc2", "0 or 1"),
                         ("rand-m7--n2", "section ''"), ("rand-mstd-1", "section 'mstd'")]:
        with pytest.raises(ValueError, match=message):
            tr.parse_rand_augment(bad)


ALL_OPS = sorted(set(tr.RAND_AUGMENT_OPS) | set(tr.RAND_AUGMENT_INCREASING_OPS))


@pytest.mark.parametrize("name", ALL_OPS)
def test_each_op_changes_the_clip_identically_in_every_frame(name):
    video = static()
    out = tr.apply_augment_op(video, name, 7, rng(1))
    assert out.shape == video.shape and out.dtype == np.uint8
    assert not np.array_equal(out, video)
    assert all(np.array_equal(out[0], f) for f in out)
    # On a moving clip, equal frames still get equal outputs: one mapping for the whole clip.
    a, b = textured(1, seed=1)[0], textured(1, seed=2, lo=0, hi=255)[0]
    moving = tr.apply_augment_op(np.stack([a, b, a]), name, 7, rng(1))
    np.testing.assert_array_equal(moving[0], moving[2])
    np.testing.assert_array_equal(tr.apply_augment_op(video, name, 7, rng(1)), out)


def sign(seed):
    """The sign apply_augment_op draws first for a signed op with rng(seed)."""
    return -1.0 if rng(seed).random() > 0.5 else 1.0


def pil_reference(name, img, m, seed):
    level = m / 10
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Posterize":
        return ImageOps.posterize(img, int(level * 4))
    if name == "PosterizeIncreasing":
        return ImageOps.posterize(img, 4 - int(level * 4))
    if name == "Solarize":
        return ImageOps.solarize(img, int(level * 256))
    if name == "SolarizeIncreasing":
        return ImageOps.solarize(img, 256 - int(level * 256))
    if name == "SolarizeAdd":
        add = int(level * 110)
        return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
    enhance = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast, "Brightness": ImageEnhance.Brightness,
               "Sharpness": ImageEnhance.Sharpness}
    if name in enhance:
        return enhance[name](img).enhance(level * 1.8 + 0.1)
    if name.removesuffix("Increasing") in enhance:
        return enhance[name.removesuffix("Increasing")](img).enhance(1 + sign(seed) * level * 0.9)
    fill, bicubic = (128, 128, 128), Image.Resampling.BICUBIC
    if name == "Rotate":
        return img.rotate(sign(seed) * level * 30, resample=bicubic, fillcolor=fill)
    affine = {"ShearX": (1, sign(seed) * level * 0.3, 0, 0, 1, 0), "ShearY": (1, 0, 0, sign(seed) * level * 0.3, 1, 0),
              "TranslateXRel": (1, 0, sign(seed) * level * 0.45 * img.size[0], 0, 1, 0),
              "TranslateYRel": (1, 0, 0, 0, 1, sign(seed) * level * 0.45 * img.size[1])}[name]
    return img.transform(img.size, Image.Transform.AFFINE, affine, resample=bicubic, fillcolor=fill)


@pytest.mark.parametrize("name", ALL_OPS)
def test_one_frame_ops_match_pil(name):
    frame = textured(1, 20, 28, seed=5)
    for seed, m in [(0, 7.0), (1, 7.0), (2, 3.3)]:
        out = tr.apply_augment_op(frame, name, m, rng(seed))[0]
        expected = np.asarray(pil_reference(name, Image.fromarray(frame[0]), m, seed))
        np.testing.assert_array_equal(out, expected, err_msg=f"{name} m={m} seed={seed}")


def test_posterize_to_zero_bits_is_black():
    out = tr.apply_augment_op(static(), "PosterizeIncreasing", 10, rng(0))
    assert not out.any()


def test_rand_augment_deterministic_and_video_consistent():
    video = static()
    config = "rand-m7-n4-mstd0.5-inc1"
    outs = [tr.rand_augment(video, config, rng(s)) for s in range(12)]
    for out in outs:
        assert out.shape == video.shape and out.dtype == np.uint8
        assert all(np.array_equal(out[0], f) for f in out)
    np.testing.assert_array_equal(tr.rand_augment(video, tr.parse_rand_augment(config), rng(3)), outs[3])
    distinct = {o.tobytes() for o in outs}
    assert len(distinct) >= 10  # different draws, different augmentations (a draw may apply no op: p = 1/16)


def test_rand_augment_rejects_float_video():
    with pytest.raises(ValueError, match="uint8"):
        tr.rand_augment(static().astype(np.float32), "rand-m7", rng(0))


# ---- random erasing -----------------------------------------------------------------------------------------------

IMAGENET = tr.PRESETS["imagenet"]


def erased_box(original, out):
    """The (top, left, h, w) box where out differs from original; the same changed pixels in every frame."""
    changed = (out != original).any(-1)
    assert all(np.array_equal(changed[0], c) for c in changed)
    ys, xs = np.nonzero(changed[0])
    top, left, h, w = ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert changed[0].sum() == h * w  # a full rectangle
    return top, left, h, w


def test_random_erasing_box_statistics():
    video = np.full((2, 30, 40, 3), 7, np.uint8)  # far from the ImageNet mean colour that "const" fills with
    erased, areas, aspects = 0, [], []
    for s in range(2000):
        out = tr.random_erasing(video, rng(s), mean=IMAGENET[0], std=IMAGENET[1], mode="const")
        if out is video:
            continue
        erased += 1
        top, left, h, w = erased_box(video, out)
        areas.append(h * w / 1200)
        aspects.append(h / w)
        assert out[1, top, left].tolist() == [124, 116, 104]  # "const": the mean colour, round(255 * mean)
    assert abs(erased / 2000 - 0.25) < 0.035
    # Bounds up to the rounding of the sides to whole pixels.
    assert 0.02 * 0.7 <= min(areas) and max(areas) <= 1 / 3 * 1.2 and max(areas) > 0.25
    assert 0.3 * 0.7 <= min(aspects) and max(aspects) <= 1 / 0.3 * 1.3
    assert min(aspects) < 0.5 and max(aspects) > 2


def test_random_erasing_pixel_noise_is_the_normalised_normal():
    video = np.full((3, 64, 64, 3), 7, np.uint8)
    out = tr.random_erasing(video, rng(0), mean=IMAGENET[0], std=IMAGENET[1], prob=1.0, area=(0.3, 0.3))
    top, left, h, w = erased_box(video, out)
    noise = out[:, top : top + h, left : left + w].reshape(3, -1, 3).astype(np.float32) / 255
    z = (noise - np.array(IMAGENET[0])) / np.array(IMAGENET[1])  # what the device sees after normalising
    assert np.abs(z.mean((0, 1))).max() < 0.05 and np.abs(z.std((0, 1)) - 1).max() < 0.08
    assert not np.array_equal(noise[0], noise[1])  # fresh noise in every frame, in the same box
    np.testing.assert_array_equal(tr.random_erasing(video, rng(0), mean=IMAGENET[0], std=IMAGENET[1], prob=1.0,
                                                    area=(0.3, 0.3)), out)


def test_random_erasing_rand_mode_count_and_probability_edges():
    video = np.full((2, 40, 40, 3), 7, np.uint8)
    out = tr.random_erasing(video, rng(1), mean=IMAGENET[0], std=IMAGENET[1], prob=1.0, mode="rand")
    top, left, h, w = erased_box(video, out)
    box = out[:, top : top + h, left : left + w].reshape(-1, 3)
    assert (box == box[0]).all()  # one colour per box
    assert all(tr.random_erasing(video, rng(s), mean=IMAGENET[0], std=IMAGENET[1], prob=0.0) is video
               for s in range(50))
    for s in range(100):
        out = tr.random_erasing(video, rng(s), mean=(0.5,) * 3, std=(0.5,) * 3, prob=1.0, mode="const", max_count=3)
        changed = (out != video).any(-1)
        assert changed[0].any() and all(np.array_equal(changed[0], c) for c in changed)
    with pytest.raises(ValueError, match="mode"):
        tr.random_erasing(video, rng(0), mean=IMAGENET[0], std=IMAGENET[1], mode="noise")


# ---- normalisation presets --------------------------------------------------------------------------------------

def test_presets_and_resolver():
    assert tr.PRESETS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert tr.PRESETS["rescale"] == ((0, 0, 0), (1, 1, 1))
    assert tr.PRESETS["zero_centre"] == ((0.5,) * 3, (0.5,) * 3)
    assert tr.PRESETS["kinetics"] == ((0.45,) * 3, (0.225,) * 3)
    assert tr.resolve_normalization("kinetics") == tr.PRESETS["kinetics"]
    assert tr.resolve_normalization(mean=0.5, std=(0.2, 0.3, 0.4)) == ((0.5,) * 3, (0.2, 0.3, 0.4))
    for kwargs, message in [(dict(preset="imagenet21k"), "unknown normalisation preset"),
                            (dict(preset="imagenet", mean=0.5, std=0.5), "not both"),
                            (dict(mean=0.5), "preset .* or both"), (dict(mean=0.5, std=0), "positive"),
                            (dict(mean=(0.5, 0.5), std=0.5), "three")]:
        with pytest.raises(ValueError, match=message):
            tr.resolve_normalization(**kwargs)


# ---- repeated augmentation --------------------------------------------------------------------------------------

def finetune_augment(clip, r):
    clip = tr.rand_augment(clip, "rand-m7-n4-mstd0.5-inc1", r)
    clip = tr.random_flip(tr.random_resized_crop(clip, 16, r), r)
    return tr.random_erasing(clip, r, mean=IMAGENET[0], std=IMAGENET[1])


def test_repeated_augment_gives_k_different_clips_deterministically():
    video = textured(4, 24, 32)
    out = tr.repeated_augment(video, finetune_augment, rng(0), num_samples=3)
    assert out.shape == (3, 4, 16, 16, 3) and out.dtype == np.uint8
    assert len({o.tobytes() for o in out}) == 3
    np.testing.assert_array_equal(tr.repeated_augment(video, finetune_augment, rng(0), num_samples=3), out)
    assert not np.array_equal(tr.repeated_augment(video, finetune_augment, rng(1), num_samples=3), out)
    windows = np.stack([textured(4, 24, 32, seed=s) for s in range(2)])  # two temporal windows of one video
    out = tr.repeated_augment(windows, lambda c, r: tr.random_crop(c, 16, r), rng(0))
    assert out.shape == (2, 4, 16, 16, 3)
    with pytest.raises(ValueError, match="num_samples=3 but 2"):
        tr.repeated_augment(windows, finetune_augment, rng(0), num_samples=3)
    with pytest.raises(ValueError, match="num_samples >= 1"):
        tr.repeated_augment(video, finetune_augment, rng(0))


def test_pretrain_and_finetune_recipes_shapes():
    video = textured(4, 36, 48)
    pre = tr.random_flip(tr.multi_scale_crop(video, 32, rng(0)), rng(0))
    assert pre.shape == (4, 32, 32, 3)
    assert finetune_augment(video, rng(0)).shape == (4, 16, 16, 3)
    assert math.isclose(tr.MULTI_SCALE_CROP_SCALES[-1], 0.66)
