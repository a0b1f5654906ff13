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
That is the default variant, ``"label"``; three others carry other targets over the same background and noise.

Scene cue. ``scene_cue=True`` (the ``"label"`` variant, own looks) ties the background to the class, as a Kinetics scene
ties to its action (a pool to swimming): the grating's stripes run along the class's motion axis
(`scene_orientation`: horizontal stripes for right and left, vertical for up and down, one diagonal for each
diagonal pair), while its period, phase and colours and the rest of the look stay the clip's own. One frame then
tells the axis (4 ways for the default 8 classes) but not which way along it, which only the motion says. It is the
setting of SVT's runlocal (`configs/svt_k400.py`): matching views learns a scene that the views share, but not,
at that scale, a motion direction that nothing in the look hints at.

Variants. ``variant`` picks what the motion encodes and which target the element carries; each variant is named by the
key of that target (``VARIANTS``), and a task of `vidjax.tasks` names the one it trains on (its `synthetic_task`):

* ``"label"`` (default): the one object above; ``"label"`` int32, the class.
* ``"labels"``: 1 to 3 objects (the count drawn per clip, at most ``num_classes``), each moving with the
  motion of a different class drawn at random, with the same direction / speed-band layout as above;
  ``"labels"`` float32 multi-hot (num_classes,). The objects get different colour corners, so each stays
  identifiable when they cross, and are drawn largest first, so a smaller one is never hidden under a larger.
  Colours, sizes, shapes, draw order and positions are independent of the classes: a single frame shows how
  many classes are present (the object count) but not which.
* ``"targets"``: one object with a continuous velocity, direction uniform on the circle and speed uniform
  over the whole speed range (0.05 to 0.15 of the shorter side per frame, all bands together); ``"targets"``
  float32 (2,) = (vx, vy) / max speed in [-1, 1], named ``REGRESSION_TARGETS``: the per-frame displacement in
  pixels, x to the right and y up, divided by 0.15 * min(height, width). ``num_classes`` is not used.
* ``"captions"``: one object whose every attribute can be said in words, and ``"captions"``, a tuple of
  ``len(CAPTION_TEMPLATES)`` reference sentences saying it, e.g. "a small red disc moves up and to the left quickly
  over diagonal stripes", plus ``"label"`` int32, the direction class. ``num_classes`` is the number of directions
  and must be one of ``CAPTION_NUM_CLASSES`` (1, 2, 4, 8: multiples of 45 degrees, which have names;
  `direction_name`). The attributes, each drawn independently: direction (the label, laid out as above), speed
  ("slowly" / "quickly": the two bands of a two-band layout, 0.05 to 0.085 and 0.10 to 0.135 of the shorter side
  per frame), size ("small" / "large": radius 0.07 to 0.09 or 0.12 to 0.14 of the shorter side), colour (one of the
  eight corners of the RGB cube, jittered as above, named by ``CAPTION_COLOURS``), shape ("disc", "square",
  "diamond") and the background grating's orientation ("horizontal", "vertical" or "diagonal" stripes). The
  vocabulary is small (``caption_vocabulary``) and `caption_corpus` lists every sentence, for building a tokenizer
  offline.

Speeds. Objects move 0.05 to 0.15 of the shorter side per frame (1.6 to 4.8 px at 32 px). Slower objects, at
most a pixel or two per frame, left the direction invisible to a micro ViT over 8 x 8 patches: a Mu-sized
VideoMAE stayed at chance on 8 directions after 800 steps with speeds from 0.02, and reaches about 75% top-1 in
the same 800 steps with these (tests/test_finetune.py trains it).

Files. `write_files` writes a source's clips as H.264 mp4 files (`vidjax.data.encode`) with a list, so the file
sources (class folders, CSV lists), the dataset doctor and the commands that take video files can be tried
without data of one's own.
"""

import csv
import math
import operator
import os
from typing import NamedTuple

import numpy as np

from vidjax.fileio import atomic_output

MAX_DIRECTIONS = 16
MAX_SPEED_BANDS = 4
MAX_CLASSES = MAX_DIRECTIONS * MAX_SPEED_BANDS
MIN_SIZE = 16
SPLITS = ("train", "validation", "test")
VARIANTS = ("label", "labels", "targets", "captions")  # named by the target key each element carries
_ONE_OBJECT = ("label", "targets")  # the variants of one moving object, which `looks` may fix
_WRITABLE = (*_ONE_OBJECT, "captions")  # the variants `write_files` writes as video files and a list
CAPTION_COLUMN = "caption"  # `write_files`' list column of a clip's captions, ';'-separated
# The second word of the generators of the `looks` variant's fixed looks (seeded (seed, _LOOK_STREAM, look)).
_LOOK_STREAM = 7919
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
# Stripe orientations of the background grating, as (cycles down, cycles across) per image side, and their names:
# a grating whose phase changes across the image (x) only has vertical stripes.
_GRATINGS = ((0, 1), (1, 0), (1, 1), (1, -1))
_GRATING_NAMES = ("vertical", "horizontal", "diagonal", "diagonal")
# The scene_cue variant's grating per motion axis (0, 45, 90, 135 degrees counter-clockwise from "right"): stripes
# along the motion. Phase is constant along (x, y) with cycles_y * y + cycles_x * x fixed (y down), so (1, 1) runs
# up and to the right (45 degrees) and (1, -1) up and to the left (135).
_AXIS_GRATINGS = (1, 2, 0, 3)

# The captioning variant: direction words per angle (degrees counter-clockwise from "right"), the colour of each
# corner of the RGB cube (index bits r, g, b), the shape names (in `_Object.shape` order), sizes as ranges of the
# radius over the shorter side, and speeds as the bands of a two-band layout.
CAPTION_NUM_CLASSES = (1, 2, 4, 8)
_DIRECTION_WORDS = {
    0: "right",
    45: "up and to the right",
    90: "up",
    135: "up and to the left",
    180: "left",
    225: "down and to the left",
    270: "down",
    315: "down and to the right",
}
CAPTION_COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")
CAPTION_SHAPES = ("disc", "square", "diamond")
_CAPTION_SIZES = {"small": (0.07, 0.09), "large": (0.12, 0.14)}
_CAPTION_SPEEDS = (("slowly", "slow"), ("quickly", "fast"))  # (adverb, adjective) per band
# Every template says every attribute, so a model trained on any one reference learns to say all of them.
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} moves {direction} {speed} over {stripes} stripes",
    "a {speed_adjective} {size} {colour} {shape} moving {direction} on a background of {stripes} stripes",
    "the {colour} {shape} is {size} and moves {speed} {direction} across {stripes} stripes",
    "{stripes} stripes behind a {size} {colour} {shape} that moves {direction} {speed}",
)

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


def direction_name(label: int, num_classes: int = NUM_CLASSES) -> str:
    """The words for the direction of class ``label`` of the captioning variant, e.g. "up and to the left".

    ``num_classes`` directions are laid out as in the class scheme (the module docstring); it must be one of
    ``CAPTION_NUM_CLASSES``, whose directions fall on multiples of 45 degrees.
    """
    num_classes = _check_caption_classes(num_classes)
    label = _check_int("label", label, 0, num_classes - 1)
    return _DIRECTION_WORDS[360 * label // num_classes]


def scene_orientation(label: int, num_classes: int = NUM_CLASSES) -> int:
    """The background grating of class ``label``'s clips in the ``scene_cue`` variant, as an index into the
    gratings (vertical, horizontal, and the two diagonal stripes): the stripes run along the class's motion axis,
    the nearest of 0, 45, 90 and 135 degrees, so a direction and its opposite share one (the module docstring)."""
    num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
    label = _check_int("label", label, 0, num_classes - 1)
    directions, _ = _class_layout(num_classes)
    axis = math.floor(8 * (label % directions) / directions + 0.5) % 4  # 45-degree steps (ties up), mod 180
    return _AXIS_GRATINGS[axis]


def _check_caption_classes(num_classes: object) -> int:
    num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
    if num_classes not in CAPTION_NUM_CLASSES:
        raise ValueError(
            f"the captioning variant names each of num_classes directions in words, which needs num_classes in "
            f"{CAPTION_NUM_CLASSES} (directions at multiples of 45 degrees); got {num_classes}. Pass one of those.")
    return num_classes


class CaptionFacts(NamedTuple):
    """What a captioning clip shows, in the words its captions use (see the module docstring)."""

    direction: str
    speed: str
    size: str
    colour: str
    shape: str
    stripes: str


def caption_texts(facts: CaptionFacts) -> tuple[str, ...]:
    """The reference captions of a clip showing ``facts``: one per template of ``CAPTION_TEMPLATES``."""
    speed_adjective = dict(_CAPTION_SPEEDS)[facts.speed]
    return tuple(template.format(speed_adjective=speed_adjective, **facts._asdict()) for template in CAPTION_TEMPLATES)


def caption_corpus(num_classes: int = NUM_CLASSES) -> list[str]:
    """Every caption the captioning variant with ``num_classes`` directions can produce, in a fixed order."""
    num_classes = _check_caption_classes(num_classes)
    corpus = []
    for label in range(num_classes):
        for speed, _ in _CAPTION_SPEEDS:
            for size in _CAPTION_SIZES:
                for colour in CAPTION_COLOURS:
                    for shape in CAPTION_SHAPES:
                        for stripes in dict.fromkeys(_GRATING_NAMES):
                            facts = CaptionFacts(direction_name(label, num_classes), speed, size, colour, shape,
                                                 stripes)
                            corpus.extend(caption_texts(facts))
    return corpus


def caption_vocabulary() -> list[str]:
    """The sorted words of every caption the captioning variant can produce (any ``num_classes``)."""
    return sorted({word for caption in caption_corpus(max(CAPTION_NUM_CLASSES)) for word in caption.split()})


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

    Elements are ``{"video": uint8 (num_frames, height, width, 3), "index": int64}`` plus the target ``variant`` names
    (``VARIANTS``): ``"label"`` int32, ``"labels"`` float32 (num_classes,) (multi-hot), ``"targets"`` float32 (2,),
    or ``"captions"``, a tuple of ``len(CAPTION_TEMPLATES)`` reference sentences (str) in template order, with
    ``"label"`` int32 (the direction class); deterministic in
    ``(seed, split, index)``. ``class_names`` / ``target_names`` name the outputs (None where they do not apply).
    ``looks`` and ``scene_cue``: how the appearance varies, and whether the background follows the class (the module
    docstring).
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
        variant: str = "label",
        looks: int = 0,
        scene_cue: bool = False,
    ):
        self.num_examples = _check_int("num_examples", num_examples, 1)
        self.num_frames = _check_int("num_frames", num_frames, 1)
        self.height = _check_int("height", height, MIN_SIZE)
        self.width = _check_int("width", width, MIN_SIZE)
        self.num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
        self.seed = _check_int("seed", seed, 0)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} (the target its clips carry), got {variant!r}; pass "
                             f"one of those to SyntheticVideoSource.")
        if variant == "captions":
            _check_caption_classes(self.num_classes)
        self.looks = _check_int("looks", looks, 0)
        if self.looks and variant not in _ONE_OBJECT:
            raise ValueError(f"looks={looks} is for the one-object variants {_ONE_OBJECT}, not {variant!r}, whose "
                             f"objects or captions need a look of their own per clip; use looks=0.")
        if not isinstance(scene_cue, (bool, np.bool_)):
            raise ValueError(f"scene_cue must be True or False, got {scene_cue!r} of type {type(scene_cue).__name__}.")
        self.scene_cue = bool(scene_cue)
        if self.scene_cue and (variant != "label" or self.looks):
            raise ValueError(
                f"scene_cue=True draws the background's stripes from the class, which needs variant='label' with "
                f"looks=0 (got variant={variant!r}, looks={self.looks}); leave scene_cue False otherwise.")
        self.split = split
        self.variant = variant
        self._split_id = SPLITS.index(split)
        self._num_directions, self._num_speed_bands = _class_layout(self.num_classes)
        values = variant == "targets"
        self.class_names = None if values else class_names(self.num_classes)
        self.target_names = list(REGRESSION_TARGETS) if values else None

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        # Grain checkpoints compare reprs on restore: the default variant keeps the repr it always had.
        variant = "" if self.variant == "label" else f", variant={self.variant!r}"
        looks = f", looks={self.looks}" if self.looks else ""
        scene_cue = ", scene_cue=True" if self.scene_cue else ""
        return (
            f"SyntheticVideoSource(num_examples={self.num_examples}, num_frames={self.num_frames}, "
            f"height={self.height}, width={self.width}, num_classes={self.num_classes}, "
            f"seed={self.seed}, split={self.split!r}{variant}{looks}{scene_cue})"
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
        # With `looks` the background and the object's look are one of `looks` fixed ones, drawn by the clip's
        # generator independently of its label, and then made by a generator of (seed, look) alone, the same in every
        # split; the clip's own generator still draws the motion, the start and the noise.
        look = np.random.default_rng([self.seed, _LOOK_STREAM, rng.integers(self.looks)]) if self.looks else rng
        if self.variant == "captions":
            orientation = int(rng.integers(len(_GRATINGS)))  # a caption names it, so it is drawn up front
            video = self._background(rng, orientation)
        elif self.scene_cue:
            video = self._background(rng, scene_orientation(index % self.num_classes, self.num_classes))
        else:
            video = self._background(look)
        element = {"video": video}
        if self.variant == "label":
            label = index % self.num_classes
            self._draw_object(video, self._new_object(rng, *self._class_velocity(rng, label), look=look))
            element["label"] = np.int32(label)
        elif self.variant == "captions":
            label = index % self.num_classes
            element["label"] = np.int32(label)
            element["captions"] = caption_texts(self._draw_captioned(rng, video, label, orientation))
        elif self.variant == "labels":
            element["labels"] = self._draw_multilabel(rng, video)
        else:
            element["targets"] = self._draw_regression(rng, video, look)
        self._add_noise(rng, video)
        element["index"] = np.int64(index)
        return element

    # The whole clip stays uint8, with every value <= _MAX_CLEAN until the noise is added: at
    # these sizes the cost is memory traffic, four times lower than with a float32 clip.

    def _background(self, rng: np.random.Generator, orientation: int | None = None) -> np.ndarray:
        """Uint8 (T, H, W, 3) smooth periodic noise plus a grating, panning in a label-independent direction;
        ``orientation`` fixes the grating's orientation (an index into ``_GRATINGS``), else it is drawn."""
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
        if orientation is None:
            orientation = rng.integers(len(_GRATINGS))
        dir_y, dir_x = _GRATINGS[orientation]
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

    def _draw_regression(self, rng: np.random.Generator, video: np.ndarray, look: np.random.Generator
                         ) -> np.ndarray:
        """Draws one object with a random velocity; returns it as float32 (vx, vy) / max speed."""
        lo, hi = _SPEED_RANGE
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(lo, hi)
        unit = np.array([np.cos(angle), np.sin(angle)])
        self._draw_object(video, self._new_object(rng, *(speed * min(self.height, self.width) * unit), look=look))
        return (speed / hi * unit).astype(np.float32)

    def _draw_captioned(self, rng: np.random.Generator, video: np.ndarray, label: int, orientation: int
                        ) -> CaptionFacts:
        """Draws the captioning variant's object moving in direction ``label``; returns what the clip shows."""
        band, size, corner = rng.integers(len(_CAPTION_SPEEDS)), rng.integers(len(_CAPTION_SIZES)), rng.integers(8)
        velocity = self._velocity(rng, label, self.num_classes, band, len(_CAPTION_SPEEDS))
        size_name = list(_CAPTION_SIZES)[size]
        side = min(self.height, self.width)
        radius = np.clip(rng.uniform(*_CAPTION_SIZES[size_name]) * side, 2.0, side / 4)
        obj = self._new_object(rng, *velocity, corner=(corner >> np.arange(3)) & 1, radius=radius)
        self._draw_object(video, obj)
        return CaptionFacts(direction=direction_name(label, self.num_classes), speed=_CAPTION_SPEEDS[band][0],
                            size=size_name, colour=CAPTION_COLOURS[corner], shape=CAPTION_SHAPES[obj.shape],
                            stripes=_GRATING_NAMES[orientation])

    def _class_velocity(self, rng: np.random.Generator, label: int) -> tuple[float, float]:
        """Per-frame velocity in pixels (x right, y up) of an object of class ``label``: its direction and band."""
        return self._velocity(rng, label % self._num_directions, self._num_directions,
                              label // self._num_directions, self._num_speed_bands)

    def _velocity(self, rng: np.random.Generator, direction: int, num_directions: int, band: int,
                  num_bands: int) -> tuple[float, float]:
        """Per-frame velocity in pixels (x right, y up): direction ``direction`` of ``num_directions``, speed drawn
        in band ``band`` of ``num_bands`` (the class scheme of the module docstring)."""
        side = min(self.height, self.width)
        angle = 2 * np.pi * direction / num_directions
        lo, hi = _SPEED_RANGE
        band_width = (hi - lo) / num_bands
        band_lo = lo + band * band_width
        speed = rng.uniform(band_lo, band_lo + _SPEED_BAND_FILL * band_width) * side
        return speed * np.cos(angle), speed * np.sin(angle)

    def _new_object(
        self, rng: np.random.Generator, velocity_x: float, velocity_y: float, corner: np.ndarray | None = None,
        radius: float | None = None, look: np.random.Generator | None = None,
    ) -> _Object:
        """Draws a shape's appearance and start, independent of its motion; ``corner`` fixes its colour corner and
        ``radius`` its size (in pixels); ``look`` draws the appearance (size, shape, colour) when given, else ``rng``
        draws it; the start is always ``rng``'s."""
        h, w = self.height, self.width
        side = min(h, w)
        look = rng if look is None else look
        if radius is None:
            radius = np.clip(look.uniform(0.07, 0.14) * side, 2.0, side / 4)
        shape = look.integers(3)
        if corner is None:
            corner = look.integers(2, size=3)
        # A jittered corner of the RGB cube: every channel is far from the mid-grey background.
        colour = (np.abs(corner - look.uniform(0.0, 0.1, size=3)) * _MAX_CLEAN).astype(np.float32)
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


def write_files(source: SyntheticVideoSource, root: str | os.PathLike, fps: int = 25, crf: int = 18) -> str:
    """Writes every clip of `source` as an mp4 file under `root`, and a header CSV list of them; returns the list's
    path, ROOT/<split>.csv, whose paths are relative to ROOT (`CsvVideoSource(list, root=ROOT)` reads it back).

    The "label" variant: ROOT/<class name>/<split>_<index>.mp4, a class-folder tree (`FolderVideoSource(ROOT)`, the
    `folder` source) with the list's columns `path,label`. The "targets" variant: ROOT/<split>/<index>.mp4, columns
    `path,velocity_x,velocity_y` (`REGRESSION_TARGETS`). The "captions" variant: ROOT/<split>/<index>.mp4, columns
    `path,caption`, a clip's reference captions ';'-separated (the captioning lists' layout, which
    `CsvVideoSource(list, root=ROOT, caption_column="caption")` and `python -m vidjax.zeroshot --captions` read). Frame
    size and count are the source's (even sizes); `crf` is the H.264 quality (0 lossless, 18 visually lossless).
    """
    from vidjax.data import encode  # PyAV: only writing needs it; generating clips stays numpy alone

    if source.variant not in _WRITABLE:
        raise ValueError(f"write_files writes sources of the variants {_WRITABLE} (a class, two values or captions a "
                         f"clip); this one is {source.variant!r}.")
    root = os.fspath(root)
    rows = []
    for index in range(len(source)):
        element = source[index]
        if source.variant == "label":
            relative = os.path.join(source.class_names[int(element["label"])], f"{source.split}_{index:05d}.mp4")
            rows.append([relative, int(element["label"])])
        elif source.variant == "captions":
            relative = os.path.join(source.split, f"{index:05d}.mp4")
            rows.append([relative, ";".join(element["captions"])])
        else:
            relative = os.path.join(source.split, f"{index:05d}.mp4")
            rows.append([relative, *(f"{v:.6f}" for v in element["targets"])])
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        encode.write_mp4(path, element["video"], fps, crf=crf)
    list_path = os.path.join(root, f"{source.split}.csv")
    with atomic_output(list_path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow({"label": ["path", "label"], "captions": ["path", CAPTION_COLUMN]}.get(
            source.variant, ["path", *REGRESSION_TARGETS]))
        writer.writerows(rows)
    return os.path.abspath(list_path)
