"""V-JEPA 2's multi-block masks: which tokens of a clip the context encoder sees and which the predictor predicts.

vidjax's own numpy code after the official mask collator, facebookresearch/vjepa2 `src/masks/multiseq_multiblock3d.py`
(commit c2963a4; "L" numbers below are its lines), with the published pre-training masks of
`configs/train/vitl16/pretrain-256px-16f.yaml` L41-67 (the same entries in vith16 and vitg16, pretrain and cooldown).

The official rules:
- The grid is (duration, height, width) = (frames // tubelet, crop // patch, crop // patch) (L103-104), here the
  model's token grid (t', h', w') itself; tokens are flattened in (t', h', w') raster order, as `vidjax.patches`.
- One generator per `mask:` entry (L28-47), read with these defaults: spatial_scale, temporal_scale, aspect_ratio,
  num_blocks (`npred`), max_temporal_keep 1.0, max_keep None, full_complement False, pred_full_complement False,
  inv_block False. Each entry is a separate (context, target) pair for the batch; training runs the encoder and the
  predictor once per pair and averages the L1 loss over the pairs (`app/vjepa/train.py` L434-447, and one predictor
  mask token per entry, L204).
- The published entries (`VJEPA2_MASKS`): short-range, num_blocks 8, spatial_scale (0.15, 0.15); long-range,
  num_blocks 2, spatial_scale (0.7, 0.7); both aspect_ratio (0.75, 1.5), temporal_scale (1.0, 1.0),
  max_temporal_keep 1.0, max_keep null, full_complement false.
- Block size (`_sample_block_size`, L129-153), three uniform draws in this order: a temporal scale s_t in
  [min_t, max_t] and t = max(1, int(duration * s_t)); a spatial scale s in [min_s, max_s] and
  keep = int(height * width * s); an aspect ratio a in [min_ar, max_ar]; then h = int(round(sqrt(keep * a))),
  w = int(round(sqrt(keep / a))), each clipped to the grid. The aspect ratio is height over width.
- The size is drawn once per call, i.e. once per batch, shared by all its examples and blocks (L179-187), from a
  generator seeded by the collator's step counter (L122-127, L179-181), the same on every rank.
- Placement (`_sample_block_mask`, L155-170): top, left and start uniform integers in [0, height - h],
  [0, width - w] and [0, duration - t] (drawn from torch's global generator, per example and block); the block
  (start:start+t, top:top+h, left:left+w) is masked. With temporal_scale 1.0, t = duration and start = 0: the
  block's spatial rectangle is the same at every time step. Frames from max_context_duration =
  max(1, int(duration * max_temporal_keep)) on (L115-117) are masked too (L166-167): never context, always target.
- Per example (L191-209): the context mask is the product of num_blocks block masks, so the target (predictor)
  tokens are the union of the blocks and the context (encoder) tokens its complement, both as ascending flat
  indices (`torch.argwhere(mask == 0)` / `torch.nonzero(mask)`). An example whose context is empty is redrawn.
- Equal lengths (L190, L206-215): every example's context is truncated to the batch's smallest context count
  (min_keep_enc, and to max_keep when given), every target to the smallest target count (min_keep_pred), keeping
  the first indices in raster order, so the tokens cut are those of the latest frames. A context token cut is
  neither seen nor predicted; a target token cut is not predicted.
- full_complement (L216-223): the target is the complement of the truncated context (all the same length);
  pred_full_complement (L224-231): the context is the complement of the truncated target; inv_block (L236-239):
  the two are swapped (predict the context from the block).

Here every draw comes from the one `np.random.Generator` passed in (the block size first, then the placements), so a
seed gives the same masks; `draw` follows the rules above for one batch. JAX compiles a step for each shape, and the
official batch minimum changes from batch to batch (a recompile per new length): `draw(..., keep=(context, target))`
gives every batch the same fixed lengths instead, by redrawing an example's placements until it has at least that
many of each and truncating as above; `official_keep` estimates the counts the official collator typically keeps
(the median over batches of its batch minimum at its per-GPU batch size, 24 in the published configs).

What that truncation means, measured here on the published 16-frame grid (8, 16, 16), 2,048 tokens: an example's
context averages 781 tokens (short-range) and 385 (long-range), its target 1,267 and 1,663; the official batch-of-24
minimum keeps a median of 496 / 128 context and 976 / 1,440 target tokens (`official_keep`), the context taken from
the earliest frames. With those fixed lengths about 7% of examples are redrawn (6.5% short-range, 7.7% long-range;
1.1% of long-range examples have no context at all and are redrawn by the official rule too), which slightly favours
examples with more of both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from vidjax.config_lib import ConfigError

MAX_ATTEMPTS = 1000  # redraws of one example's placements before the keep (or a non-empty context) is called impossible


@dataclasses.dataclass(frozen=True)
class BlockMask:
    """One entry of the official `mask:` list, by its keys and with its defaults (`_MaskGenerator`'s, L32-46, L81-96):
    `BlockMask(**entry)` reads an entry of the official yaml."""

    spatial_scale: tuple[float, float] = (0.15, 0.15)  # a block's share of a frame's tokens, uniform in this range
    temporal_scale: tuple[float, float] = (1.0, 1.0)  # a block's share of the time steps, uniform in this range
    aspect_ratio: tuple[float, float] = (0.75, 1.5)  # a block's height over width, uniform in this range
    num_blocks: int = 8  # blocks per example, all of the batch's one size; the target is their union
    max_temporal_keep: float = 1.0  # the context spans at most this share of the time steps (the rest: target)
    max_keep: int | None = None  # at most this many context tokens
    full_complement: bool = False  # the target is every token not in the (truncated) context
    pred_full_complement: bool = False  # the context is every token not in the (truncated) target
    inv_block: bool = False  # context and target swapped

    def __post_init__(self):
        for name in ("spatial_scale", "temporal_scale", "aspect_ratio"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))  # a yaml or config list
            low, high = getattr(self, name)
            if not 0 < low <= high or (name != "aspect_ratio" and high > 1):
                raise ConfigError(f"BlockMask.{name} must be a range (low, high) with 0 < low <= high"
                                  f"{' <= 1' if name != 'aspect_ratio' else ''}, got {(low, high)}.")
        if self.num_blocks < 1:
            raise ConfigError(f"BlockMask.num_blocks must be at least 1, got {self.num_blocks}.")
        if not 0 < self.max_temporal_keep <= 1:
            raise ConfigError(f"BlockMask.max_temporal_keep must be in (0, 1], got {self.max_temporal_keep}.")

    def max_context_duration(self, grid: tuple[int, int, int]) -> int:
        """Time steps the context may span (L115-117): max(1, int(t' * max_temporal_keep))."""
        return max(1, int(grid[0] * self.max_temporal_keep))


# The published pre-training masks (configs/train/vit{l,h,g}16/*.yaml, `mask:`): short-range and long-range blocks.
VJEPA2_MASKS = (
    BlockMask(spatial_scale=(0.15, 0.15), num_blocks=8),
    BlockMask(spatial_scale=(0.7, 0.7), num_blocks=2),
)
OFFICIAL_BATCH_SIZE = 24  # the published per-GPU batch (`data.batch_size` of pretrain-256px-16f.yaml), over which
# the official collator takes its minimum


def block_size(rng: np.random.Generator, grid: tuple[int, int, int], mask: BlockMask) -> tuple[int, int, int]:
    """One block size (t, h, w) drawn as `_sample_block_size` (L129-153) does: temporal scale, spatial scale, then
    aspect ratio, each uniform in its range."""
    duration, height, width = grid
    low, high = mask.temporal_scale
    t = max(1, int(duration * (low + float(rng.random()) * (high - low))))
    low, high = mask.spatial_scale
    keep = int(height * width * (low + float(rng.random()) * (high - low)))
    low, high = mask.aspect_ratio
    aspect = low + float(rng.random()) * (high - low)
    h = min(int(round(math.sqrt(keep * aspect))), height)
    w = min(int(round(math.sqrt(keep / aspect))), width)
    return t, h, w


def block_starts(rng: np.random.Generator, grid: tuple[int, int, int], size: tuple[int, int, int], count: int,
                 num_blocks: int) -> np.ndarray:
    """Int (count, num_blocks, 3) corners (start, top, left) of blocks of `size`, uniform over the places a block
    fits whole (L157-159)."""
    (duration, height, width), (t, h, w) = grid, size
    return np.stack([rng.integers(0, duration - t + 1, (count, num_blocks)),
                     rng.integers(0, height - h + 1, (count, num_blocks)),
                     rng.integers(0, width - w + 1, (count, num_blocks))], axis=-1)


def target_masks(grid: tuple[int, int, int], size: tuple[int, int, int], starts: np.ndarray,
                 max_context_duration: int | None = None) -> np.ndarray:
    """Bool (count, t'*h'*w'), True = target: the union of each row's blocks (`starts`, (count, blocks, 3), of
    `size`) and every token from time step `max_context_duration` on; the context is its complement."""
    duration, height, width = grid
    steps, rows, cols = np.arange(duration), np.arange(height), np.arange(width)
    target = np.zeros((len(starts), duration, height, width), dtype=bool)
    for b in range(starts.shape[1]):
        spans = [(axis >= starts[:, b, i, None]) & (axis < starts[:, b, i, None] + size[i])
                 for i, axis in enumerate((steps, rows, cols))]  # (count, extent) bool per axis
        target |= spans[0][:, :, None, None] & spans[1][:, None, :, None] & spans[2][:, None, None, :]
    if max_context_duration is not None and max_context_duration < duration:
        target[:, max_context_duration:] = True
    return target.reshape(len(starts), -1)


def _first(selected: np.ndarray, count: int) -> np.ndarray:
    """Int32 (rows, count): the first `count` flat indices of each row's True entries, ascending."""
    order = np.argsort(~selected, axis=1, kind="stable")  # each row's True positions first, in order
    return order[:, :count].astype(np.int32)


def draw(rng: np.random.Generator, grid: tuple[int, int, int], mask: BlockMask, batch_size: int, *,
         keep: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One batch's (context, target) token indices under `mask`: int32 (batch_size, K_context) and
    (batch_size, K_target), each row ascending, the two disjoint.

    As the official generator (the module's docstring): one block size for the batch, then each example's blocks;
    an example with an empty context is redrawn; the lengths are the batch's smallest counts (keep None), or the
    fixed `keep` = (context, target), an example with fewer of either redrawn; then max_keep, the complements and
    inv_block."""
    grid = tuple(int(v) for v in grid)
    tokens = grid[0] * grid[1] * grid[2]
    size = block_size(rng, grid, mask)
    need_context, need_target = (1, 0) if keep is None else (max(1, int(keep[0])), int(keep[1]))
    if need_context + need_target > tokens:
        raise ConfigError(f"multi-block keep={keep} asks for more than the {tokens} tokens of the {grid} grid.")
    target = target_masks(grid, size, block_starts(rng, grid, size, batch_size, mask.num_blocks),
                          mask.max_context_duration(grid))
    for attempt in range(MAX_ATTEMPTS + 1):
        counts = target.sum(axis=1)
        short = (tokens - counts < need_context) | (counts < need_target)
        if not short.any():
            break
        if attempt == MAX_ATTEMPTS:
            raise ConfigError(f"multi-block masks of {mask.num_blocks} blocks of size {size} over the {grid} grid left "
                              f"{'an empty context' if keep is None else f'fewer tokens than keep={keep}'} in "
                              f"{MAX_ATTEMPTS} redraws: choose smaller blocks or fewer of them, or a smaller keep.")
        target[short] = target_masks(grid, size, block_starts(rng, grid, size, int(short.sum()), mask.num_blocks),
                                     mask.max_context_duration(grid))
    counts = target.sum(axis=1)
    keep_context = int((tokens - counts).min()) if keep is None else need_context
    keep_target = int(counts.min()) if keep is None else need_target
    if mask.max_keep is not None:
        keep_context = min(keep_context, int(mask.max_keep))
    context = _first(~target, keep_context)
    if mask.full_complement:
        taken = np.zeros_like(target)
        np.put_along_axis(taken, context, True, axis=1)
        target_ids = _first(~taken, tokens - keep_context)
    else:
        target_ids = _first(target, keep_target)
        if mask.pred_full_complement:
            taken = np.zeros_like(target)
            np.put_along_axis(taken, target_ids, True, axis=1)
            context = _first(~taken, tokens - keep_target)
    if mask.inv_block:
        return target_ids, context
    return context, target_ids


def draw_all(rng: np.random.Generator, grid: tuple[int, int, int], masks: Sequence[BlockMask], batch_size: int, *,
             keep: Sequence[tuple[int, int]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`draw` for every entry of `masks` in turn (the official collator's list, L69-73), with its `keep` if given."""
    return [draw(rng, grid, mask, batch_size, keep=None if keep is None else keep[i]) for i, mask in enumerate(masks)]


@functools.lru_cache(maxsize=64)  # 200 simulated batches: once per (grid, mask, batch), not per config read
def official_keep(grid: tuple[int, int, int], mask: BlockMask, batch_size: int = OFFICIAL_BATCH_SIZE,
                  batches: int = 200, seed: int = 0) -> tuple[int, int]:
    """Fixed (context, target) lengths for `draw(keep=...)`: the medians over `batches` simulated batches of the
    official collator's batch minima at `batch_size`, so that a fixed-length run keeps as many tokens as the
    official one typically does. Deterministic (`seed`)."""
    rng = np.random.default_rng(seed)
    plain = dataclasses.replace(mask, max_keep=None, full_complement=False, pred_full_complement=False,
                                inv_block=False)
    lengths = []
    for _ in range(batches):
        context, target = draw(rng, grid, plain, batch_size)
        lengths.append((context.shape[1], target.shape[1]))
    context_median, target_median = np.median(np.array(lengths), axis=0)
    return int(context_median), int(target_median)


@dataclasses.dataclass(frozen=True)
class MultiblockSpec:
    """The multi-block masks a task would have the input path draw for every clip: over the model's token `grid`,
    one (context, target) pair of fixed lengths per entry of `masks` (`keep`, one (context, target) per entry), so
    that examples drawn one by one stack into batches of one shape. `fixed` takes the lengths from `official_keep`."""

    grid: tuple[int, int, int]
    masks: tuple[BlockMask, ...] = VJEPA2_MASKS
    keep: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if len(self.keep) != len(self.masks):
            raise ConfigError(f"MultiblockSpec.keep needs one (context, target) length pair per mask entry "
                              f"({len(self.masks)}), got {len(self.keep)}; MultiblockSpec.fixed computes them.")

    @classmethod
    def fixed(cls, grid: tuple[int, int, int], masks: Sequence[BlockMask] = VJEPA2_MASKS,
              batch_size: int = OFFICIAL_BATCH_SIZE) -> MultiblockSpec:
        """A spec whose lengths are `official_keep`'s for each entry at the official per-GPU `batch_size`."""
        grid = tuple(int(v) for v in grid)
        return cls(grid=grid, masks=tuple(masks), keep=tuple(official_keep(grid, m, batch_size) for m in masks))

    def keys(self) -> tuple[str, ...]:
        """The batch keys, per entry i: "context_ids_i", "target_ids_i"."""
        return tuple(f"{kind}_ids_{i}" for i in range(len(self.masks)) for kind in ("context", "target"))

    def draw(self, rng: np.random.Generator, count: int = 1) -> dict[str, np.ndarray]:
        """`count` clips' masks by `keys`, int32 (count, length) each: `draw_all` with the fixed lengths (a block
        size per call, shared by the `count` clips)."""
        pairs = draw_all(rng, self.grid, self.masks, count, keep=self.keep)
        out = {}
        for i, (context, target) in enumerate(pairs):
            out[f"context_ids_{i}"], out[f"target_ids_{i}"] = context, target
        return out
