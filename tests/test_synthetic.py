"""Tests for the procedurally generated default dataset, vidjax.data.synthetic."""

import pickle

import grain
import numpy as np
import pytest

from vidjax.data.synthetic import SPLITS, SyntheticVideoSource, class_names


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
        # Slow band covers speeds up to 0.041 of the side, fast from 0.05.
        band = int(np.hypot(dx, dy) / 48 > 0.0455)
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
