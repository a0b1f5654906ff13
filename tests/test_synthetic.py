"""Tests for the procedurally generated default dataset, vidjax.data.synthetic."""

import hashlib
import pickle

import grain
import numpy as np
import pytest

from vidjax.data import synthetic
from vidjax.data.synthetic import REGRESSION_TARGETS, SPLITS, SyntheticVideoSource, class_names


def _object_masks(video: np.ndarray) -> np.ndarray:
    """(T, H, W) mask of the object: saturated in every channel, unlike the mid-grey texture."""
    return (np.abs(video.astype(np.float32) - 127.5) > 80).all(axis=-1)


def _circular_centroids(masks: np.ndarray) -> np.ndarray:
    """(T, 2) unit-circle angles (y, x) of each mask's centroid, on the wrapped-around image."""
    _, h, w = masks.shape
    ys = np.exp(2j * np.pi * (np.arange(h) + 0.5) / h)
    xs = np.exp(2j * np.pi * (np.arange(w) + 0.5) / w)
    cy = (masks.sum(axis=2) * ys).sum(axis=1)
    cx = (masks.sum(axis=1) * xs).sum(axis=1)
    return np.stack([np.angle(cy), np.angle(cx)], axis=1)


def _velocity(video: np.ndarray) -> np.ndarray:
    """Mean per-frame object motion (dx right, dy up) in pixels, robust to edge wrap-around."""
    _, h, w = video.shape[:3]
    angles = _circular_centroids(_object_masks(video))
    steps = np.angle(np.exp(1j * np.diff(angles, axis=0))).mean(axis=0)
    dy, dx = steps[0] * h / (2 * np.pi), steps[1] * w / (2 * np.pi)
    return np.array([dx, -dy])


def _first_frame_features(video: np.ndarray) -> np.ndarray:
    """Everything a single frame shows: object position (wrap-aware), size, colour statistics."""
    frame = video[:1]
    mask = _object_masks(frame)
    angles = _circular_centroids(mask)[0]
    return np.concatenate(
        [np.cos(angles), np.sin(angles), [mask.mean()], frame.reshape(-1, 3).mean(axis=0) / 255]
    )


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fits class means on the first half of the examples and scores on the second half."""
    features = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-9)
    half = len(labels) // 2
    train, test = slice(0, half), slice(half, None)
    classes = np.unique(labels)
    means = np.stack([features[train][labels[train] == c].mean(axis=0) for c in classes])
    distances = ((features[test][:, None, :] - means[None]) ** 2).sum(axis=-1)
    return float((classes[distances.argmin(axis=1)] == labels[test]).mean())


@pytest.mark.parametrize(
    "num_frames, height, width",
    [(16, 112, 112), (8, 32, 32), (1, 16, 16), (5, 17, 23), (3, 23, 17), (2, 16, 64)],
)
def test_element_shapes_and_dtypes(num_frames, height, width):
    source = SyntheticVideoSource(10, num_frames=num_frames, height=height, width=width, num_classes=4)
    assert len(source) == 10
    for index in (0, 7, 9):
        element = source[index]
        assert set(element) == {"video", "label", "index"}
        assert element["video"].shape == (num_frames, height, width, 3)
        assert element["video"].dtype == np.uint8
        assert element["label"].dtype == np.int32 and element["label"].shape == ()
        assert element["index"].dtype == np.int64 and element["index"] == index
        assert 0 <= element["label"] < 4


def test_deterministic_across_calls_instances_and_order():
    a = SyntheticVideoSource(20, num_frames=4, height=24, width=24)
    b = SyntheticVideoSource(20, num_frames=4, height=24, width=24)
    first = a[5]["video"]
    a[3], a[11]  # Interleaved calls must not change later elements.
    for element in (a[5], b[5], a[np.int64(5)], b[np.int32(5)]):
        np.testing.assert_array_equal(element["video"], first)
    assert not np.array_equal(a[5]["video"], a[6]["video"])


def test_seed_and_split_change_the_videos():
    kwargs = dict(num_examples=4, num_frames=4, height=24, width=24)
    videos = {
        (seed, split): SyntheticVideoSource(seed=seed, split=split, **kwargs)[2]["video"]
        for seed in (0, 1)
        for split in SPLITS
    }
    keys = list(videos)
    for i, key in enumerate(keys):
        for other in keys[i + 1 :]:
            assert not np.array_equal(videos[key], videos[other]), (key, other)


@pytest.mark.parametrize("num_examples, num_classes", [(103, 8), (50, 5), (64, 64), (7, 1)])
def test_labels_are_balanced(num_examples, num_classes):
    source = SyntheticVideoSource(num_examples, num_frames=1, height=16, width=16, num_classes=num_classes)
    labels = np.array([source[i]["label"] for i in range(num_examples)])
    counts = np.bincount(labels, minlength=num_classes)
    assert counts.sum() == num_examples and len(counts) == num_classes
    assert counts.max() - counts.min() <= 1


def test_class_names():
    assert class_names(4) == ["move_right", "move_up", "move_left", "move_down"]
    assert class_names(8)[1::2] == ["move_up_right", "move_up_left", "move_down_left", "move_down_right"]
    assert class_names(32)[0] == "move_right_slow" and class_names(32)[16] == "move_right_fast"
    for n in range(1, 65):
        names = class_names(n)
        assert len(names) == n == len(set(names))


def test_single_frame_carries_no_class_but_motion_does():
    source = SyntheticVideoSource(400, num_frames=4, height=32, width=32, num_classes=2)
    elements = [source[i] for i in range(len(source))]
    labels = np.array([e["label"] for e in elements])
    still = np.stack([_first_frame_features(e["video"]) for e in elements])
    motion = np.stack([_velocity(e["video"]) for e in elements])
    assert _nearest_centroid_accuracy(still, labels) < 0.65
    assert _nearest_centroid_accuracy(motion, labels) > 0.95


@pytest.mark.parametrize("num_classes", [4, 8, 16])
def test_motion_direction_gives_the_class(num_classes):
    source = SyntheticVideoSource(160, num_frames=8, height=48, width=40, num_classes=num_classes)
    hits = []
    for i in range(len(source)):
        element = source[i]
        dx, dy = _velocity(element["video"])
        direction = round(np.arctan2(dy, dx) / (2 * np.pi) * num_classes) % num_classes
        hits.append(direction == element["label"])
    assert np.mean(hits) > 0.9


def test_speed_band_gives_the_class_beyond_16():
    source = SyntheticVideoSource(128, num_frames=8, height=48, width=48, num_classes=32)
    hits = []
    for i in range(len(source)):
        element = source[i]
        dx, dy = _velocity(element["video"])
        direction = round(np.arctan2(dy, dx) / (2 * np.pi) * 16) % 16
        # Slow band covers speeds up to 0.085 of the side, fast from 0.10.
        band = int(np.hypot(dx, dy) / 48 > 0.0925)
        hits.append(direction + 16 * band == element["label"])
    assert np.mean(hits) > 0.9


@pytest.mark.parametrize("num_frames, height, width", [(64, 16, 16), (32, 17, 23)])
def test_object_never_leaves_the_frame(num_frames, height, width):
    source = SyntheticVideoSource(20, num_frames=num_frames, height=height, width=width)
    for i in range(len(source)):
        area = _object_masks(source[i]["video"]).sum(axis=(1, 2))
        # Wrap-around keeps the whole object drawn; only antialiasing moves the pixel count.
        assert area.min() > 0
        assert area.max() <= 2 * area.min() + 4


def test_index_errors():
    source = SyntheticVideoSource(5, num_frames=1, height=16, width=16)
    for index in (-1, 5, 100):
        with pytest.raises(IndexError, match=rf"index {index} is out of range .* valid indices are 0\.\.4"):
            source[index]
    with pytest.raises(TypeError):
        source[1.0]
    with pytest.raises(TypeError):
        source[True]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_examples=0), r"num_examples must be >= 1, got 0"),
        (dict(num_examples=3.0), r"num_examples must be an integer, got 3\.0"),
        (dict(num_examples=3, num_frames=0), r"num_frames must be >= 1, got 0"),
        (dict(num_examples=3, num_frames=True), r"num_frames must be an integer"),
        (dict(num_examples=3, height=15), r"height must be >= 16, got 15"),
        (dict(num_examples=3, width=8), r"width must be >= 16, got 8"),
        (dict(num_examples=3, num_classes=0), r"num_classes must be in \[1, 64\], got 0"),
        (dict(num_examples=3, num_classes=65), r"num_classes must be in \[1, 64\], got 65"),
        (dict(num_examples=3, seed=-1), r"seed must be >= 0, got -1"),
        (dict(num_examples=3, split="val"), r"split must be one of .*'validation'.*, got 'val'"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticVideoSource(**kwargs)


def test_class_names_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, 64\], got 65"):
        class_names(65)


def test_numpy_integer_arguments_and_repr():
    source = SyntheticVideoSource(np.int64(6), num_frames=np.int32(2), height=16, width=16, split="test")
    assert len(source) == 6 and isinstance(len(source), int)
    assert repr(source) == (
        "SyntheticVideoSource(num_examples=6, num_frames=2, height=16, width=16, num_classes=8, "
        "seed=0, split='test')"
    )


def test_works_as_a_grain_source_and_pickles():
    source = SyntheticVideoSource(12, num_frames=3, height=20, width=20, num_classes=3, seed=7)
    dataset = grain.MapDataset.source(source)
    assert len(dataset) == len(source)
    restored = pickle.loads(pickle.dumps(source))
    for index in (0, 4, 11):
        expected = source[index]
        for element in (dataset[index], restored[index]):
            np.testing.assert_array_equal(element["video"], expected["video"])
            assert element["label"] == expected["label"] and element["index"] == expected["index"]


# ---------------------------------------------------------------------------------------------------------------
# Task variants. The classification elements are pinned to their bytes: a change to them is deliberate.

_CLASSIFICATION_PINS = [
    (dict(num_examples=10, num_frames=4, height=32, width=32, num_classes=8), 0, 0, "e8feae2e77b9ac67", 1258224),
    (dict(num_examples=10, num_frames=4, height=32, width=32, num_classes=8), 3, 3, "2a5c033f472bc24e", 1708640),
    (dict(num_examples=10, num_frames=4, height=32, width=32, num_classes=8), 9, 1, "22d3cd4d6f0721b3", 1479849),
    (
        dict(num_examples=40, num_frames=3, height=17, width=23, num_classes=32, seed=5, split="validation"),
        1, 1, "b23eb8560bb09849", 444416,
    ),
    (
        dict(num_examples=40, num_frames=3, height=17, width=23, num_classes=32, seed=5, split="validation"),
        38, 6, "824aec101386d6d8", 389457,
    ),
    (
        dict(num_examples=5, num_frames=16, height=112, width=112, seed=2, split="test"),
        4, 4, "5bd6ce774101f921", 79048137,
    ),
]


@pytest.mark.parametrize("kwargs, index, label, digest, total", _CLASSIFICATION_PINS)
def test_classification_elements_are_unchanged(kwargs, index, label, digest, total):
    for source in (SyntheticVideoSource(**kwargs), SyntheticVideoSource(**kwargs, variant="label")):
        element = source[index]
        assert set(element) == {"video", "label", "index"}
        assert element["label"] == label
        assert hashlib.sha256(element["video"].tobytes()).hexdigest()[:16] == digest
        assert int(element["video"].sum(dtype=np.int64)) == total


def _corner_masks(video: np.ndarray) -> np.ndarray:
    """(8, T, H, W) masks of the pixels near each corner of the RGB cube (bits r, g, b of 0..7)."""
    bits = (np.arange(8)[:, None] >> np.arange(3)) & 1
    high, low = video > 207, video < 48
    return np.stack([np.where(b == 1, high, low).all(axis=-1) for b in bits])


def _step(masks: np.ndarray) -> np.ndarray:
    """Mean per-frame motion (dx right, dy up) in pixels of a (T, H, W) mask, robust to edge wrap-around."""
    _, h, w = masks.shape
    angles = _circular_centroids(masks)
    steps = np.angle(np.exp(1j * np.diff(angles, axis=0))).mean(axis=0)
    return np.array([steps[1] * w / (2 * np.pi), -steps[0] * h / (2 * np.pi)])


@pytest.mark.parametrize("variant, key, shape, dtype", [("labels", "labels", (6,), np.float32),
                                                     ("targets", "targets", (2,), np.float32)])
@pytest.mark.parametrize("num_frames, height, width", [(4, 32, 32), (1, 16, 16), (5, 17, 23), (2, 16, 64)])
def test_variant_shapes_and_dtypes(variant, key, shape, dtype, num_frames, height, width):
    source = SyntheticVideoSource(9, num_frames=num_frames, height=height, width=width, num_classes=6, variant=variant)
    for index in (0, 4, 8):
        element = source[index]
        assert set(element) == {"video", key, "index"}
        assert element["video"].shape == (num_frames, height, width, 3) and element["video"].dtype == np.uint8
        assert element[key].shape == shape and element[key].dtype == dtype
        assert element["index"].dtype == np.int64 and element["index"] == index


@pytest.mark.parametrize("variant", ["labels", "targets"])
def test_variants_are_deterministic_in_seed_split_and_index(variant):
    kwargs = dict(num_examples=6, num_frames=3, height=24, width=24, variant=variant)
    key = variant  # a variant is named by the target it carries
    a = SyntheticVideoSource(**kwargs)
    first = a[4]
    a[1], a[5]  # Interleaved calls must not change later elements.
    for element in (a[4], SyntheticVideoSource(**kwargs)[np.int64(4)]):
        np.testing.assert_array_equal(element["video"], first["video"])
        np.testing.assert_array_equal(element[key], first[key])
    videos = {
        (seed, split, index): SyntheticVideoSource(seed=seed, split=split, **kwargs)[index]["video"]
        for seed in (0, 1)
        for split in SPLITS
        for index in (2, 3)
    }
    keys = list(videos)
    for i, k in enumerate(keys):
        for other in keys[i + 1 :]:
            assert not np.array_equal(videos[k], videos[other]), (k, other)
    # A variant is a different clip from the classification element of the same index.
    assert not np.array_equal(a[4]["video"], SyntheticVideoSource(6, num_frames=3, height=24, width=24)[4]["video"])


@pytest.mark.parametrize("num_classes, most", [(8, 3), (2, 2), (1, 1)])
def test_multilabel_has_one_to_three_labels(num_classes, most):
    source = SyntheticVideoSource(120, num_frames=1, height=16, width=16, num_classes=num_classes, variant="labels")
    labels = np.stack([source[i]["labels"] for i in range(len(source))])
    assert set(np.unique(labels)) <= {0.0, 1.0}
    counts = labels.sum(axis=1).astype(int)
    assert set(counts) == set(range(1, most + 1))  # Every count from 1 to the most occurs.
    assert (labels.sum(axis=0) > 0).all()  # And every class.


def test_multilabel_objects_move_with_their_classes():
    num_classes, size = 8, 64
    source = SyntheticVideoSource(
        150, num_frames=8, height=size, width=size, num_classes=num_classes, variant="labels"
    )
    matches = []
    for i in range(len(source)):
        element = source[i]
        masks = _corner_masks(element["video"])
        # An object's colour shows in every frame; a stray background pixel near a corner colour does not add up.
        present = [m for m in masks if m.sum(axis=(1, 2)).min() >= 10]
        measured = set()
        for mask in present:
            dx, dy = _step(mask)
            measured.add(round(np.arctan2(dy, dx) / (2 * np.pi) * num_classes) % num_classes)
        matches.append(measured == set(np.flatnonzero(element["labels"])) and len(present) == element["labels"].sum())
    assert np.mean(matches) > 0.95


def _clean_render(monkeypatch) -> None:
    """Renders the objects over a flat grey background without noise, drawing the same random numbers."""
    background = SyntheticVideoSource._background
    monkeypatch.setattr(SyntheticVideoSource, "_background", lambda self, rng: np.full_like(background(self, rng), 128))
    monkeypatch.setattr(SyntheticVideoSource, "_add_noise", lambda self, rng, video: None)


def _weighted_step(video: np.ndarray) -> np.ndarray:
    """Per-frame motion (dx right, dy up) of the coverage-weighted centroid of the object on a flat grey clip."""
    weights = np.abs(video.astype(np.float64) - 128).sum(axis=-1)
    _, h, w = weights.shape
    ys = np.exp(2j * np.pi * (np.arange(h) + 0.5) / h)
    xs = np.exp(2j * np.pi * (np.arange(w) + 0.5) / w)
    angles = np.stack(
        [np.angle((weights.sum(axis=2) * ys).sum(axis=1)), np.angle((weights.sum(axis=1) * xs).sum(axis=1))]
    )
    steps = np.angle(np.exp(1j * np.diff(angles, axis=1)))
    return np.stack([steps[1] * w, -steps[0] * h], axis=-1) / (2 * np.pi)


def test_regression_targets_are_the_rendered_velocity(monkeypatch):
    size, count = 48, 100
    source = SyntheticVideoSource(count, num_frames=8, height=size, width=size, variant="targets")
    elements = [source[i] for i in range(count)]
    targets = np.stack([e["targets"] for e in elements])
    assert targets.dtype == np.float32 and np.abs(targets).max() <= 1.0
    speeds = np.hypot(targets[:, 0], targets[:, 1])
    # The whole speed range (0.05 to 0.15 of the side per frame) and every direction are used.
    assert 1 / 3 - 1e-6 <= speeds.min() < 0.4 and 0.9 < speeds.max() <= 1.0
    assert np.histogram(np.arctan2(targets[:, 1], targets[:, 0]), bins=4, range=(-np.pi, np.pi))[0].min() >= 10
    max_speed = 0.15 * size
    # The frames as served: the saturated object's centroid moves by the target.
    measured = np.stack([_step(_object_masks(e["video"])) for e in elements]) / max_speed
    np.testing.assert_allclose(measured, targets, atol=0.05)
    # A clean render of the same elements: each frame-to-frame displacement is the target, to the accuracy of
    # pixel sampling (0.04 is 0.15 px), and so, more closely, is their mean.
    _clean_render(monkeypatch)
    for element in elements:
        clean = source[int(element["index"])]
        np.testing.assert_array_equal(clean["targets"], element["targets"])
        steps = _weighted_step(clean["video"]) / max_speed
        np.testing.assert_allclose(steps, np.broadcast_to(element["targets"], steps.shape), atol=0.04)
        np.testing.assert_allclose(steps.mean(axis=0), element["targets"], atol=0.006)


def test_variant_targets_are_invisible_in_a_single_frame():
    regression = SyntheticVideoSource(400, num_frames=4, height=32, width=32, variant="targets")
    elements = [regression[i] for i in range(len(regression))]
    targets = np.stack([e["targets"] for e in elements])
    still = np.stack([_first_frame_features(e["video"]) for e in elements])
    motion = np.stack([_velocity(e["video"]) for e in elements])

    def held_out_r2(features):
        design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
        coef = np.linalg.lstsq(design[:200], targets[:200], rcond=None)[0]
        residual = targets[200:] - design[200:] @ coef
        return 1 - (residual**2).sum() / ((targets[200:] - targets[200:].mean(axis=0)) ** 2).sum()

    assert held_out_r2(still) < 0.1
    assert held_out_r2(motion) > 0.9

    # Which classes a multi-label clip holds: from one frame no better than chance, from the motion of its one object
    # (clips with one object) near perfect.
    multilabel = SyntheticVideoSource(1200, num_frames=4, height=32, width=32, num_classes=2, variant="labels")
    single = [e for e in (multilabel[i] for i in range(len(multilabel))) if e["labels"].sum() == 1]
    labels = np.array([e["labels"].argmax() for e in single])
    assert len(single) > 400
    still = np.stack([_first_frame_features(e["video"]) for e in single])
    motion = np.stack([_velocity(e["video"]) for e in single])
    assert _nearest_centroid_accuracy(still, labels) < 0.65
    assert _nearest_centroid_accuracy(motion, labels) > 0.95


def test_variant_names_repr_and_unknown_task():
    assert SyntheticVideoSource(3).class_names == class_names(8)
    assert SyntheticVideoSource(3).target_names is None
    multilabel = SyntheticVideoSource(3, num_classes=4, variant="labels")
    assert multilabel.class_names == ["move_right", "move_up", "move_left", "move_down"]
    regression = SyntheticVideoSource(3, variant="targets")
    assert regression.class_names is None and regression.target_names == list(REGRESSION_TARGETS)
    assert REGRESSION_TARGETS == ("velocity_x", "velocity_y")
    assert repr(regression).endswith("split='train', variant='targets')")
    assert "variant" not in repr(SyntheticVideoSource(3))  # Unchanged, so grain checkpoints still restore.
    with pytest.raises(ValueError, match=r"variant must be one of \('label', 'labels', 'targets', 'captions'\) \(the "
                                         r"target its clips carry\), got 'pretrain'"):
        SyntheticVideoSource(3, variant="pretrain")


@pytest.mark.parametrize("variant", ["labels", "targets"])
def test_variants_work_as_grain_sources_and_pickle(variant):
    source = SyntheticVideoSource(8, num_frames=2, height=20, width=20, num_classes=5, seed=3, variant=variant)
    key = variant  # a variant is named by the target it carries
    dataset = grain.MapDataset.source(source)
    restored = pickle.loads(pickle.dumps(source))
    assert repr(restored) == repr(source) and restored.variant == variant
    for index in (0, 7):
        expected = source[index]
        for element in (dataset[index], restored[index]):
            np.testing.assert_array_equal(element["video"], expected["video"])
            np.testing.assert_array_equal(element[key], expected[key])


@pytest.mark.parametrize("variant", ["label", "targets"])
def test_looks_share_backgrounds_and_objects_across_labels_and_splits(monkeypatch, variant):
    """looks=N: every clip's background and object look (size, shape, colour) is one of N, in every split, each
    look carrying many labels; the start and the motion stay the clip's own; looks=0 gives every clip its own."""
    backgrounds, objects = [], []
    background, new_object = SyntheticVideoSource._background, SyntheticVideoSource._new_object

    def record_background(self, rng, orientation=None):
        video = background(self, rng, orientation)
        backgrounds.append(video.copy())  # the clip draws on `video` in place
        return video

    def record_object(self, *args, **kwargs):
        objects.append(new_object(self, *args, **kwargs))
        return objects[-1]

    monkeypatch.setattr(SyntheticVideoSource, "_background", record_background)
    monkeypatch.setattr(SyntheticVideoSource, "_new_object", record_object)

    def looks_of(source):
        backgrounds.clear(), objects.clear()
        elements = [source[i] for i in range(len(source))]
        keys = [(bg.tobytes(), o.radius, o.shape, o.colour.tobytes())
                for bg, o in zip(backgrounds, objects, strict=True)]
        starts = {(o.start_y, o.start_x) for o in objects}
        return keys, elements, starts

    train, train_elements, starts = looks_of(SyntheticVideoSource(48, 4, 16, 16, variant=variant, looks=3))
    validation, _, _ = looks_of(SyntheticVideoSource(24, 4, 16, 16, variant=variant, looks=3, split="validation"))
    assert len(set(train)) == 3 and set(validation) <= set(train)
    assert len(starts) == 48  # each clip starts somewhere of its own
    if variant == "label":  # every look shows several directions: the look says nothing of the label
        labels = [int(e["label"]) for e in train_elements]
        for look in set(train):
            assert len({label for key, label in zip(train, labels, strict=True) if key == look}) >= 3
    one, _, _ = looks_of(SyntheticVideoSource(8, 4, 16, 16, variant=variant, looks=1))
    assert len(set(one)) == 1
    own, _, _ = looks_of(SyntheticVideoSource(8, 4, 16, 16, variant=variant))
    assert len(set(own)) == 8


def test_scene_cue_stripes_run_along_the_motion_axis():
    """scene_cue=True: each clip's background grating runs along its class's motion axis (the wave vector of the
    stripes, read from a frame's spectrum, is perpendicular to the object's measured velocity), a direction and its
    opposite share one, and the rest of the look stays the clip's own."""
    assert [synthetic.scene_orientation(label) for label in range(8)] == [1, 2, 0, 3, 1, 2, 0, 3]
    assert [synthetic.scene_orientation(label, 4) for label in range(4)] == [1, 0, 1, 0]  # right, up, left, down
    assert [synthetic.scene_orientation(label, 32) for label in (0, 16)] == [1, 1]  # one axis for both speed bands
    source = SyntheticVideoSource(32, 4, 64, 64, scene_cue=True)
    size = 64
    k = np.fft.fftfreq(size) * size
    low = (np.abs(k)[:, None] <= 3) & (np.abs(k)[None, :] <= 3)  # the smooth noise's few cycles, and the mean
    angles = []
    for index in range(len(source)):
        video = source[index]["video"]
        frame = video[0].astype(np.float32).mean(axis=-1)
        spectrum = np.abs(np.fft.fft2(frame - frame.mean()))
        spectrum[low] = 0
        ky, kx = np.unravel_index(np.argmax(spectrum), spectrum.shape)
        wave = np.array([k[kx], k[ky]])  # cycles across (x right) and down (y down)
        dx, dy_up = _velocity(video)
        motion = np.array([dx, -dy_up])  # in image coordinates, y down
        angles.append(abs(wave @ motion) / (np.linalg.norm(wave) * np.linalg.norm(motion)))
    assert max(angles) < 0.2, angles  # perpendicular: the stripes run along the motion
    plain = SyntheticVideoSource(32, 4, 64, 64)
    assert not np.array_equal(source[0]["video"], plain[0]["video"])
    assert [int(source[i]["label"]) for i in range(8)] == [int(plain[i]["label"]) for i in range(8)]
    assert repr(source).endswith("split='train', scene_cue=True)")
    with pytest.raises(ValueError, match=r"scene_cue=True .* needs variant='label' with looks=0 \(got "
                                         r"variant='targets', looks=0\)"):
        SyntheticVideoSource(3, variant="targets", scene_cue=True)
    with pytest.raises(ValueError, match=r"got variant='label', looks=2"):
        SyntheticVideoSource(3, looks=2, scene_cue=True)
    with pytest.raises(ValueError, match=r"scene_cue must be True or False, got 'yes'"):
        SyntheticVideoSource(3, scene_cue="yes")


def test_looks_repr_and_bad_values():
    assert repr(SyntheticVideoSource(3, looks=2)).endswith("split='train', looks=2)")
    with pytest.raises(ValueError, match=r"looks must be >= 0, got -1"):
        SyntheticVideoSource(3, looks=-1)
    with pytest.raises(ValueError, match=r"looks=2 is for the one-object variants .* not 'labels'"):
        SyntheticVideoSource(3, variant="labels", looks=2)


def test_write_files_gives_a_folder_tree_and_lists_the_file_sources_read_back(tmp_path):
    from vidjax.data import decode, sources

    clips = synthetic.SyntheticVideoSource(9, num_frames=6, height=32, width=48, split="validation")
    listed = synthetic.write_files(clips, tmp_path / "cls")
    assert listed == str(tmp_path / "cls" / "validation.csv")
    from_list = sources.CsvVideoSource(listed, root=tmp_path / "cls")
    from_folders = sources.FolderVideoSource(tmp_path / "cls")
    assert [int(from_list[i]["label"]) for i in range(9)] == [int(clips[i]["label"]) for i in range(9)]
    assert sorted(from_folders.class_names) == sorted(synthetic.class_names(8)) and len(from_folders) == 9
    element = from_list[4]
    assert element["path"].endswith("move_left/validation_00004.mp4")
    decoded = decode.decode_clip(element["path"], num_frames=6, sampling_rate=1)
    assert decoded.shape == (6, 32, 48, 3)
    # H.264 (4:2:0 chroma) is close to the clip, not exact; far closer than to another clip.
    error = np.abs(decoded.astype(int) - clips[4]["video"]).mean()
    assert error < 16 and error < np.abs(decoded.astype(int) - clips[5]["video"]).mean() / 2

    regression = synthetic.SyntheticVideoSource(3, num_frames=4, height=32, width=32, variant="targets")
    listed = synthetic.write_files(regression, tmp_path / "reg")
    read = sources.CsvVideoSource(listed, root=tmp_path / "reg", targets=synthetic.REGRESSION_TARGETS)
    np.testing.assert_allclose(read[2]["targets"], regression[2]["targets"], atol=1e-6)

    captioned = synthetic.SyntheticVideoSource(3, num_frames=4, height=32, width=32, variant="captions")
    listed = synthetic.write_files(captioned, tmp_path / "cap")
    read = sources.CsvVideoSource(listed, root=tmp_path / "cap", caption_column=synthetic.CAPTION_COLUMN)
    assert [tuple(read[i]["captions"]) for i in range(3)] == [tuple(captioned[i]["captions"]) for i in range(3)]
    assert read[1]["path"].endswith("train/00001.mp4")
    with pytest.raises(ValueError, match="variants .*'captions'.* this one is 'labels'"):
        synthetic.write_files(synthetic.SyntheticVideoSource(2, variant="labels"), tmp_path / "multi")
