"""Procedurally generated, labelled video dataset: the embedded default that needs no download.

A clip shows one shape (a disc, square or diamond of random size and saturated colour)
moving in a straight line at constant speed over a random background texture that pans slowly
in whole-pixel steps, plus mild per-pixel noise (uniform in [0, 3]). The texture is smooth noise plus
a stronger horizontal, vertical or diagonal grating of period 4, 8 or 16 px, so that image patches have
structure that visible neighbours predict: a masked autoencoder has something to learn beyond a patch's mean. Everything
is drawn from an RNG seeded by ``(seed, split, index)``, so an element is bit-identical
however and whenever it is asked for. Pure numpy: a 16x112x112 clip takes about 2 ms on one CPU core.

Class scheme. The label is the object's motion, so it can only be read from two or more
frames. With ``num_classes`` = N, the classes are laid out as D directions x S speed bands::

    S = ceil(N / 16)          # one speed band up to 16 classes, at most 4 bands (N <= 64)
    D = ceil(N / S)           # directions evenly spaced on the circle
    label c  ->  direction k = c % D at 360 * k / D degrees counter-clockwise from "right"
                 (towards the top of the image at 90 degrees), speed band b = c // D.

So N <= 16 is pure direction (N = 4: right, up, left, down; N = 8 adds the diagonals), and
e.g. N = 32 is 16 directions x {slow, fast}. Speeds are per frame, as a fraction of the
shorter image side, so the motion statistics do not depend on ``num_frames``.

The object wraps around the image edges (the texture is periodic too). A bounded straight
path would leak the class through position alone (a right-mover starts on the left), and a
bounce would reverse the motion mid-clip; with wrap-around the object's position in any
single frame is uniform whatever the class, so a single frame carries no class information,
while the whole object is always rendered inside the frame (split across an edge at times).
Appearance, background and start position are independent of the label; labels are
``index % num_classes``, so class counts over any source differ by at most one.
That is the default task, "classification"; two variants carry other targets over the same background and noise.

Tasks. ``task`` picks what the motion encodes and which target the element carries:

* ``"classification"`` (default): the one object above; ``"label"`` int32.
* ``"multilabel"``: 1 to 3 objects (the count drawn per clip, at most ``num_classes``), each moving with the
  motion of a different class drawn at random, with the same direction / speed-band layout as above;
  ``"labels"`` float32 multi-hot (num_classes,). The objects get different colour corners, so each stays
  identifiable when they cross, and are drawn largest first, so a smaller one is never hidden under a larger.
  Colours, sizes, shapes, draw order and positions are independent of the classes: a single frame shows how
  many classes are present (the object count) but not which.
* ``"regression"``: one object with a continuous velocity, direction uniform on the circle and speed uniform
  over the whole speed range (0.05 to 0.15 of the shorter side per frame, all bands together); ``"targets"``
  float32 (2,) = (vx, vy) / max speed in [-1, 1], named ``REGRESSION_TARGETS``: the per-frame displacement in
  pixels, x to the right and y up, divided by 0.15 * min(height, width). ``num_classes`` is not used.

Speeds. Objects move 0.05 to 0.15 of the shorter side per frame (1.6 to 4.8 px at 32 px). Slower objects, at
most a pixel or two per frame, left the direction invisible to a micro ViT over 8 x 8 patches: a Mu-sized
VideoMAE stayed at chance on 8 directions after 800 steps with speeds from 0.02, and reaches about 75% top-1 in
the same 800 steps with these (tests/test_finetune.py trains it).
"""

import math
import operator
from typing import NamedTuple

import numpy as np

MAX_DIRECTIONS = 16
MAX_SPEED_BANDS = 4
MAX_CLASSES = MAX_DIRECTIONS * MAX_SPEED_BANDS
MIN_SIZE = 16
SPLITS = ("train", "validation", "test")
TASKS = ("classification", "multilabel", "regression")
REGRESSION_TARGETS = ("velocity_x", "velocity_y")
# Objects per multi-label clip: enough to need per-object motion, few enough that they rarely overlap.
MAX_OBJECTS = 3
NUM_CLASSES = 8  # the default: 8 motion directions at one speed (config.data.num_classes 0 means this)

# Per-frame speed range, as a fraction of the shorter image side; split into bands with gaps
# so that neighbouring speed classes stay separable.
_SPEED_RANGE = (0.05, 0.15)
_SPEED_BAND_FILL = 0.7

# A diamond (L1 ball) scaled by this has the area of the disc of the same radius.
_DIAMOND_SCALE = math.sqrt(math.pi / 2)

# Power of two, so that masking random bytes gives uniform noise.
_NOISE_LEVELS = 4
# Largest value before noise, leaving headroom for it in uint8.
_MAX_CLEAN = 255 - (_NOISE_LEVELS - 1)

_COMPASS = {
    0: "right",
    45: "up_right",
    90: "up",
    135: "up_left",
    180: "left",
    225: "down_left",
    270: "down",
    315: "down_right",
}
_BAND_NAMES = {
    2: ("slow", "fast"),
    3: ("slow", "medium", "fast"),
    4: ("very_slow", "slow", "fast", "very_fast"),
}


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}.")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {allowed}, got {value}; pass a value in that range.")
    return value


def _class_layout(num_classes: int) -> tuple[int, int]:
    """Returns (num_directions, num_speed_bands) for ``num_classes`` (see module docstring)."""
    bands = math.ceil(num_classes / MAX_DIRECTIONS)
    return math.ceil(num_classes / bands), bands


def class_names(num_classes: int) -> list[str]:
    """Human-readable names of the labels of a ``SyntheticVideoSource`` with ``num_classes``."""
    num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
    directions, bands = _class_layout(num_classes)
    names = []
    for label in range(num_classes):
        degrees = 360 * (label % directions) / directions
        name = "move_" + _COMPASS.get(degrees, f"{degrees:g}deg")
        if bands > 1:
            name += "_" + _BAND_NAMES[bands][label // directions]
        names.append(name)
    return names


def _periodic_taps(coords: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two grid nodes around each of ``coords`` on a ring of ``cells``, and the linear weight."""
    lower = np.floor(coords)
    frac = coords - lower
    lower = lower.astype(np.int64) % cells
    return lower, (lower + 1) % cells, frac


class _Object(NamedTuple):
    """One moving shape: per-frame velocity in pixels (x right, y up), then its appearance and start."""

    velocity_x: float
    velocity_y: float
    radius: float
    shape: int
    colour: np.ndarray
    start_y: float
    start_x: float


class SyntheticVideoSource:
    """Random-access source (grain protocol) of procedurally generated clips whose targets are the motion.

    Elements are ``{"video": uint8 (num_frames, height, width, 3), "index": int64}`` plus, by ``task``,
    ``"label"`` int32, ``"labels"`` float32 (num_classes,) or ``"targets"`` float32 (2,); deterministic in
    ``(seed, split, index)``. ``class_names`` / ``target_names`` name the outputs (None where they do not apply).
    """

    def __init__(
        self,
        num_examples: int,
        num_frames: int = 16,
        height: int = 112,
        width: int = 112,
        num_classes: int = NUM_CLASSES,
        seed: int = 0,
        split: str = "train",
        task: str = "classification",
    ):
        self.num_examples = _check_int("num_examples", num_examples, 1)
        self.num_frames = _check_int("num_frames", num_frames, 1)
        self.height = _check_int("height", height, MIN_SIZE)
        self.width = _check_int("width", width, MIN_SIZE)
        self.num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
        self.seed = _check_int("seed", seed, 0)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}; pass one of those to SyntheticVideoSource.")
        self.split = split
        self.task = task
        self._split_id = SPLITS.index(split)
        self._num_directions, self._num_speed_bands = _class_layout(self.num_classes)
        regression = task == "regression"
        self.class_names = None if regression else class_names(self.num_classes)
        self.target_names = list(REGRESSION_TARGETS) if regression else None

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        # Grain checkpoints compare reprs on restore: the default task keeps the repr it always had.
        task = "" if self.task == "classification" else f", task={self.task!r}"
        return (
            f"SyntheticVideoSource(num_examples={self.num_examples}, num_frames={self.num_frames}, "
            f"height={self.height}, width={self.width}, num_classes={self.num_classes}, "
            f"seed={self.seed}, split={self.split!r}{task})"
        )

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if isinstance(index, bool):
            raise TypeError(f"index must be an integer, got {index!r}.")
        index = operator.index(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(
                f"index {index} is out of range for {self!r}; valid indices are 0..{self.num_examples - 1}."
            )
        rng = np.random.default_rng([self.seed, self._split_id, index])
        video = self._background(rng)
        element = {"video": video}
        if self.task == "classification":
            label = index % self.num_classes
            self._draw_object(video, self._new_object(rng, *self._class_velocity(rng, label)))
            element["label"] = np.int32(label)
        elif self.task == "multilabel":
            element["labels"] = self._draw_multilabel(rng, video)
        else:
            element["targets"] = self._draw_regression(rng, video)
        self._add_noise(rng, video)
        element["index"] = np.int64(index)
        return element

    # The whole clip stays uint8, with every value <= _MAX_CLEAN until the noise is added: at
    # these sizes the cost is memory traffic, four times lower than with a float32 clip.

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Uint8 (T, H, W, 3) smooth periodic noise plus a grating, panning in a label-independent direction."""
        t, h, w = self.num_frames, self.height, self.width
        # Low-contrast and mid-grey, so that the saturated object always stands out.
        cells_y, cells_x = np.minimum(rng.integers(2, 7, size=2), [h // 4, w // 4])
        base = rng.uniform(0.35, 0.65, size=3) * 255
        grid = base + rng.uniform(-0.05, 0.05, size=(cells_y, cells_x, 3)) * 255
        start_y, start_x = rng.uniform(0, [cells_y, cells_x])
        below_y, above_y, frac_y = _periodic_taps((np.arange(h) + 0.5) * (cells_y / h) + start_y, cells_y)
        below_x, above_x, frac_x = _periodic_taps((np.arange(w) + 0.5) * (cells_x / w) + start_x, cells_x)
        columns = grid[:, below_x] + frac_x[:, None] * (grid[:, above_x] - grid[:, below_x])
        texture = columns[below_y] + frac_y[:, None, None] * (columns[above_y] - columns[below_y])
        # A grating whose period (4, 8 or 16 px) divides common patch sizes and, where it can, the frame: most
        # patches then show the same normalised pattern, which a masked autoencoder learns to fill in quickly.
        # Whole cycles across each side keep it periodic, so panning wraps it like the noise.
        periods = [p for p in (4, 8, 16) if 2 * p <= min(h, w)] or [min(h, w) // 2]
        period = rng.choice(periods)
        dir_y, dir_x = ((0, 1), (1, 0), (1, 1), (1, -1))[rng.integers(4)]
        cycles_y, cycles_x = dir_y * max(1, round(h / period)), dir_x * max(1, round(w / period))
        phase = (cycles_y * np.arange(h)[:, None] / h + cycles_x * np.arange(w)[None, :] / w) * 2 * np.pi
        grating = np.cos(phase + rng.uniform(0, 2 * np.pi))[:, :, None] * rng.uniform(0.08, 0.2, size=3) * 255
        texture = np.rint(np.clip(texture + grating, 0, _MAX_CLEAN)).astype(np.uint8)

        # Whole-pixel steps let every frame be a plain copy of a window of the periodic texture.
        pan_angle = rng.uniform(0, 2 * np.pi)
        pan_speed = rng.uniform(0.0, 0.01) * min(h, w)
        frames = np.arange(t)
        offset_y = np.rint(pan_speed * np.sin(pan_angle) * frames).astype(np.int64) % h
        offset_x = np.rint(pan_speed * np.cos(pan_angle) * frames).astype(np.int64) % w
        tiled = np.tile(texture, (2, 2, 1)).reshape(2 * h, 2 * w * 3)
        windows = np.lib.stride_tricks.sliding_window_view(tiled, (h, w * 3))
        return windows[offset_y, 3 * offset_x].reshape(t, h, w, 3)

    def _draw_multilabel(self, rng: np.random.Generator, video: np.ndarray) -> np.ndarray:
        """Draws 1 to MAX_OBJECTS objects of different classes and colours; returns the float32 multi-hot."""
        count = rng.integers(1, min(MAX_OBJECTS, self.num_classes) + 1)
        classes = rng.choice(self.num_classes, size=count, replace=False)
        # Different corners of the RGB cube (bits r, g, b of 0..7): no two objects share a colour.
        corners = (rng.choice(8, size=count, replace=False)[:, None] >> np.arange(3)) & 1
        objects = [
            self._new_object(rng, *self._class_velocity(rng, c), corner=k)
            for c, k in zip(classes, corners, strict=True)
        ]
        # Largest first, so a smaller object is drawn over a larger one, never hidden under it.
        for obj in sorted(objects, key=lambda o: -o.radius):
            self._draw_object(video, obj)
        labels = np.zeros(self.num_classes, np.float32)
        labels[classes] = 1.0
        return labels

    def _draw_regression(self, rng: np.random.Generator, video: np.ndarray) -> np.ndarray:
        """Draws one object with a random velocity; returns it as float32 (vx, vy) / max speed."""
        lo, hi = _SPEED_RANGE
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(lo, hi)
        unit = np.array([np.cos(angle), np.sin(angle)])
        self._draw_object(video, self._new_object(rng, *(speed * min(self.height, self.width) * unit)))
        return (speed / hi * unit).astype(np.float32)

    def _class_velocity(self, rng: np.random.Generator, label: int) -> tuple[float, float]:
        """Per-frame velocity in pixels (x right, y up) of an object of class ``label``: its direction and band."""
        side = min(self.height, self.width)
        direction, band = label % self._num_directions, label // self._num_directions
        angle = 2 * np.pi * direction / self._num_directions
        lo, hi = _SPEED_RANGE
        band_width = (hi - lo) / self._num_speed_bands
        band_lo = lo + band * band_width
        speed = rng.uniform(band_lo, band_lo + _SPEED_BAND_FILL * band_width) * side
        return speed * np.cos(angle), speed * np.sin(angle)

    def _new_object(
        self, rng: np.random.Generator, velocity_x: float, velocity_y: float, corner: np.ndarray | None = None
    ) -> _Object:
        """Draws a shape's appearance and start, independent of its motion; ``corner`` fixes its colour corner."""
        h, w = self.height, self.width
        side = min(h, w)
        radius = np.clip(rng.uniform(0.07, 0.14) * side, 2.0, side / 4)
        shape = rng.integers(3)
        if corner is None:
            corner = rng.integers(2, size=3)
        # A jittered corner of the RGB cube: every channel is far from the mid-grey background.
        colour = (np.abs(corner - rng.uniform(0.0, 0.1, size=3)) * _MAX_CLEAN).astype(np.float32)
        start_y, start_x = rng.uniform(0, [h, w])
        return _Object(velocity_x, velocity_y, radius, shape, colour, start_y, start_x)

    def _draw_object(self, video: np.ndarray, obj: _Object) -> None:
        """Alpha-blends the moving shape ``obj`` into ``video``, in place."""
        t, h, w = self.num_frames, self.height, self.width
        radius, shape = obj.radius, obj.shape
        frames = np.arange(t)
        # Image y grows downwards, so "up" (90 degrees) is negative y.
        centre_y = obj.start_y - obj.velocity_y * frames
        centre_x = obj.start_x + obj.velocity_x * frames

        # Only a window around the object is touched, which keeps the cost independent of the
        # image size. It covers the shape plus the antialiasing ramp; with radius <= side / 4 it
        # is narrower than the image, so its wrapped pixel indices are unique.
        scale = _DIAMOND_SCALE if shape == 2 else 1.0
        half = math.ceil(scale * radius + 1)
        steps = np.arange(-half, half + 1)
        rows = np.floor(centre_y).astype(np.int64)[:, None] + steps
        cols = np.floor(centre_x).astype(np.int64)[:, None] + steps
        dy = np.abs(rows + 0.5 - centre_y[:, None]).astype(np.float32)[:, :, None]
        dx = np.abs(cols + 0.5 - centre_x[:, None]).astype(np.float32)[:, None, :]
        if shape == 0:
            distance = np.sqrt(dy * dy + dx * dx)
        elif shape == 1:
            distance = np.maximum(dy, dx)
        else:
            distance = (dy + dx) / np.float32(scale)
        # One pixel of linear ramp antialiases the edge, so sub-pixel motion is visible.
        alpha = np.clip(np.float32(radius + 0.5) - distance, 0.0, 1.0).reshape(-1, 1)

        # The modulo makes the object wrap around the image edges (see module docstring).
        pixel = (frames[:, None, None] * h + (rows % h)[:, :, None]) * w + (cols % w)[:, None, :]
        pixel = pixel.ravel()
        pixels = video.reshape(-1, 3)
        patch = pixels[pixel].astype(np.float32)
        patch += alpha * (obj.colour - patch)
        pixels[pixel] = np.rint(patch)

    def _add_noise(self, rng: np.random.Generator, video: np.ndarray) -> None:
        """Adds per-pixel noise, uniform in [0, _NOISE_LEVELS), to ``video`` in place."""
        # Raw generator output, masked, is several times cheaper than rng.integers; the
        # headroom above _MAX_CLEAN means the uint8 add cannot wrap around.
        raw = rng.bit_generator.random_raw(-(-video.size // 8)).view(np.uint8)[: video.size]
        raw &= _NOISE_LEVELS - 1
        video += raw.reshape(video.shape)
