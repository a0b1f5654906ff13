"""Mixup / CutMix of video batches: identity cases, lam relations, one box through every frame, labels, jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidjax import mixup

B, T, H, W, C = 4, 3, 16, 12, 3
NUM_CLASSES = 5
LABELS = np.array([0, 1, 2, 3], np.int32)  # sample i mixes with sample 3 - i: all pairs have different classes
SMOOTHING = 0.1
ON, OFF = 1 - SMOOTHING + SMOOTHING / NUM_CLASSES, SMOOTHING / NUM_CLASSES  # timm's smoothed one-hot values
# The settings the tests share (each set of keyword arguments is one compilation).
MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=SMOOTHING, num_classes=NUM_CLASSES)
CUTMIX = dict(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=SMOOTHING, num_classes=NUM_CLASSES)
BOTH = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=SMOOTHING, num_classes=NUM_CLASSES)


def clips(seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, H, W, C)).astype(np.float32))


@functools.cache
def _jitted(items):
    return jax.jit(functools.partial(mixup.mix, **dict(items)))


def mix(key, video, labels, **kwargs):
    """`mixup.mix` jitted (as the train step runs it), one compilation per set of keyword arguments."""
    return _jitted(tuple(sorted(kwargs.items())))(key, video, labels)


def recovered_lam(soft):
    """lam from the mixed smoothed labels of sample 0 (class 0, mixed with sample B-1 of class 3)."""
    return (float(soft[0, LABELS[0]]) - OFF) / (ON - OFF)


def smoothed_one_hot(labels):
    return np.where(np.eye(NUM_CLASSES)[labels] == 1, ON, OFF)


def is_cutmix(out, video):
    """True when every value is an exact copy of the clip's own or of its partner's."""
    return bool(((out == video) | (out == video[::-1])).all())


def test_both_alphas_zero_or_prob_zero_is_identity_with_smoothed_labels():
    video = clips()
    for kwargs in (dict(MIXUP, mixup_alpha=0.0), dict(BOTH, prob=0.0)):
        out, soft = mix(jax.random.key(0), video, LABELS, **kwargs)
        np.testing.assert_array_equal(out, video)
        np.testing.assert_allclose(soft, smoothed_one_hot(LABELS), rtol=1e-6)
    out, soft = mix(jax.random.key(0), video, LABELS, mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(soft, np.eye(NUM_CLASSES)[LABELS])


def test_mixup_blends_with_the_reversed_batch():
    video = clips()
    lams = []
    for seed in range(4):
        out, soft = mix(jax.random.key(seed), video, LABELS, **MIXUP)
        lam = recovered_lam(soft)
        y = smoothed_one_hot(LABELS)
        np.testing.assert_allclose(soft, lam * y + (1 - lam) * y[::-1], atol=1e-6)
        np.testing.assert_allclose(out, lam * video + (1 - lam) * video[::-1], atol=1e-6)
        lams.append(lam)
    assert all(0 < lam < 1 for lam in lams) and len(set(lams)) == 4


def test_cutmix_pastes_one_box_through_every_frame_with_lam_of_its_area():
    video = clips()
    flipped = np.asarray(video[::-1])
    for seed in range(6):
        out, soft = mix(jax.random.key(seed), video, LABELS, **CUTMIX)
        out = np.asarray(out)
        pasted = out == flipped  # random clips: a pixel equals the partner's only where it was pasted
        kept = out == np.asarray(video)
        assert (pasted ^ kept).all()  # every value is an exact copy of one of the two clips
        box = pasted[0, 0, :, :, 0]
        assert (pasted == box[None, None, :, :, None]).all()  # the same box on every sample, frame and channel
        rows, cols = box.any(axis=1), box.any(axis=0)
        np.testing.assert_array_equal(box, rows[:, None] & cols[None, :])  # a rectangle
        assert recovered_lam(soft) == pytest.approx(1 - box.mean(), abs=1e-5)  # lam = the box's true area


def test_cutmix_box_size_follows_lam():
    for seed, lam in enumerate([0.1, 0.3, 0.5, 0.75, 0.9, 1.0]):
        box, corrected = mixup.cutmix_box(jax.random.key(seed), jnp.float32(lam), H, W)
        box = np.asarray(box)
        cut_h, cut_w = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
        # timm's box: sides 2 * (cut // 2) around the centre, clipped to the frame.
        assert box.any(axis=1).sum() <= 2 * (cut_h // 2) and box.any(axis=0).sum() <= 2 * (cut_w // 2)
        assert float(corrected) == pytest.approx(1 - box.mean(), abs=1e-6)
    # A box that fits: centre far enough from the edges for a small cut; its area is exactly the asked one.
    areas = [np.asarray(mixup.cutmix_box(jax.random.key(s), jnp.float32(0.75), 64, 64)[0]).sum() for s in range(20)]
    assert max(areas) == 32 * 32 and min(areas) < 32 * 32  # sqrt(0.25) * 64 = 32; clipped at the edges


def test_switch_prob_picks_cutmix_or_mixup():
    video = clips()
    kinds = []
    for seed in range(12):
        out, soft = mix(jax.random.key(seed), video, LABELS, **BOTH)
        lam = recovered_lam(soft)
        if is_cutmix(out, video):
            kinds.append("cutmix")
        else:
            np.testing.assert_allclose(out, lam * video + (1 - lam) * video[::-1], atol=1e-6)
            kinds.append("mixup")
        np.testing.assert_allclose(np.asarray(soft).sum(axis=1), 1.0, rtol=1e-6)  # labels sum to 1
    assert 3 <= kinds.count("cutmix") <= 9, kinds  # switch_prob 0.5


def test_prob_is_the_share_of_mixed_batches():
    """Mixup alone here, so a mixed batch always differs from the input."""
    small = jnp.ones((2, 1, 4, 4, 1)) * jnp.array([0.0, 1.0])[:, None, None, None, None]
    mix_small = functools.partial(mixup.mix, mixup_alpha=0.8, cutmix_alpha=0.0, prob=0.3, num_classes=2)
    keys = jax.random.split(jax.random.key(0), 400)
    outs, _ = jax.jit(jax.vmap(lambda key: mix_small(key, small, jnp.array([0, 1]))))(keys)
    applied = np.asarray(jnp.any(outs != small[None], axis=(1, 2, 3, 4, 5)))
    assert 0.22 < applied.mean() < 0.38


@pytest.mark.parametrize("kwargs", [MIXUP, CUTMIX, BOTH], ids=["mixup", "cutmix", "both"])
def test_labels_sum_to_one(kwargs):
    video = clips()
    for seed in range(5):
        _, soft = mix(jax.random.key(seed), video, LABELS, **kwargs)
        np.testing.assert_allclose(np.asarray(soft).sum(axis=1), 1.0, rtol=1e-6)
        assert (np.asarray(soft) >= OFF - 1e-7).all()


def test_soft_and_multi_hot_labels_are_mixed_as_given():
    video = clips()
    multi_hot = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], np.float32)
    out, soft = mix(jax.random.key(3), video, multi_hot, mixup_alpha=0.8, cutmix_alpha=0.0)
    lam = float(soft[0, 1])  # class 1 is on in sample 0 and off in its partner, sample 3
    np.testing.assert_allclose(soft, lam * multi_hot + (1 - lam) * multi_hot[::-1], atol=1e-7)
    np.testing.assert_allclose(out, lam * video + (1 - lam) * video[::-1], atol=1e-6)
    _, smoothed = mix(jax.random.key(3), video, multi_hot, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.3)
    np.testing.assert_allclose(smoothed, multi_hot * 0.7 + 0.1, rtol=1e-6)


def test_deterministic_given_the_key_and_jit_matches_eager():
    video = clips()
    a = mix(jax.random.key(7), video, LABELS, **BOTH)
    b = mix(jax.random.key(7), video, LABELS, **BOTH)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = mix(jax.random.key(8), video, LABELS, **BOTH)
    assert not np.array_equal(a[0], c[0])
    eager = mixup.mix(jax.random.key(7), video, LABELS, **BOTH)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), a, eager)
    bf16, soft = jax.eval_shape(functools.partial(mixup.mix, **BOTH), jax.random.key(0), video.astype(jnp.bfloat16),
                                LABELS)
    assert (bf16.dtype, soft.dtype) == (jnp.bfloat16, jnp.float32)


def test_bad_arguments_are_explained():
    video = clips()
    with pytest.raises(ValueError, match="need num_classes"):
        mixup.mix(jax.random.key(0), video, LABELS, mixup_alpha=0.8, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="cutmix_alpha must be >= 0"):
        mixup.mix(jax.random.key(0), video, LABELS, mixup_alpha=0.8, cutmix_alpha=-1.0, num_classes=5)
    with pytest.raises(ValueError, match=r"switch_prob is a probability in \[0, 1\], got 2"):
        mixup.mix(jax.random.key(0), video, LABELS, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=2, num_classes=5)
    with pytest.raises(ValueError, match="video batch"):
        mixup.mix(jax.random.key(0), video[0], LABELS, mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=5)
    with pytest.raises(ValueError, match="4 videos but 3 labels"):
        mixup.mix(jax.random.key(0), video, LABELS[:3], mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=5)
    with pytest.raises(ValueError, match="3 classes but num_classes=5"):
        mixup.mix(jax.random.key(0), video, np.zeros((4, 3), np.float32), mixup_alpha=0.8, cutmix_alpha=0.0,
                  num_classes=5)
