"""V-JEPA 2's multi-block masks (`vidjax.data.multiblock`) against the official collator's rules
(facebookresearch/vjepa2 `src/masks/multiseq_multiblock3d.py`), by their statistics over many draws."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vidjax.config_lib import ConfigError
from vidjax.data import multiblock
from vidjax.data.multiblock import VJEPA2_MASKS, BlockMask

GRID = (8, 16, 16)  # 16 frames at 256 px, tubelet 2, patch 16: the published pre-training grid
TOKENS = GRID[0] * GRID[1] * GRID[2]


def attainable_sizes(grid, mask: BlockMask) -> set[tuple[int, int]]:
    """Every block (h, w) the official formula gives for a spatial scale and aspect ratio in their ranges."""
    _, height, width = grid
    sizes = set()
    for scale in np.linspace(*mask.spatial_scale, 401):
        keep = int(height * width * scale)
        for aspect in np.linspace(*mask.aspect_ratio, 2001):
            sizes.add((min(int(round(math.sqrt(keep * aspect))), height),
                       min(int(round(math.sqrt(keep / aspect))), width)))
    return sizes


def full_targets(seed: int, grid, mask: BlockMask, batch_size: int):
    """The untruncated target masks `draw(default_rng(seed), ...)` starts from, rebuilt from its first draws (the
    block size, then every example's blocks): size, starts (batch, blocks, 3), bool (batch, tokens)."""
    rng = np.random.default_rng(seed)
    size = multiblock.block_size(rng, grid, mask)
    starts = multiblock.block_starts(rng, grid, size, batch_size, mask.num_blocks)
    return size, starts, multiblock.target_masks(grid, size, starts, mask.max_context_duration(grid))


def as_mask(ids: np.ndarray, tokens: int = TOKENS) -> np.ndarray:
    out = np.zeros((len(ids), tokens), dtype=bool)
    np.put_along_axis(out, ids.astype(np.int64), True, axis=1)
    return out


def test_published_entries():
    """configs/train/vit{l,h,g}16/pretrain-256px-16f.yaml `mask:`: 8 blocks at 0.15, 2 at 0.7, both aspect ratio
    (0.75, 1.5), temporal scale 1.0, the context over every frame, no max_keep, no complement."""
    short, long = VJEPA2_MASKS
    assert (short.num_blocks, short.spatial_scale, long.num_blocks, long.spatial_scale) == (8, (0.15, 0.15), 2,
                                                                                          (0.7, 0.7))
    for m in VJEPA2_MASKS:
        assert m.aspect_ratio == (0.75, 1.5) and m.temporal_scale == (1.0, 1.0) and m.max_temporal_keep == 1.0
        assert m.max_keep is None and not (m.full_complement or m.pred_full_complement or m.inv_block)


@pytest.mark.parametrize("mask", VJEPA2_MASKS, ids=["short", "long"])
def test_block_sizes_follow_the_formula(mask):
    """Each batch's block: all time steps (temporal scale 1.0), int(h'w' * scale) tokens shaped by an aspect ratio
    in range, and over many batches both ends of the aspect range."""
    sizes = [multiblock.block_size(np.random.default_rng(seed), GRID, mask) for seed in range(1500)]
    assert {t for t, _, _ in sizes} == {GRID[0]}
    assert {(h, w) for _, h, w in sizes} <= attainable_sizes(GRID, mask)
    keep = int(GRID[1] * GRID[2] * mask.spatial_scale[0])
    for _, h, w in sizes:  # rounding h and w (by at most a half each) moves the area by about half a row and column
        assert abs(h * w - keep) <= 0.5 * (h + w) + 0.75
    aspects = np.array([h / w for _, h, w in sizes])
    low, high = mask.aspect_ratio
    assert aspects.min() < low + 0.15 and aspects.max() > high - 0.3  # the range's two ends are drawn
    assert ((aspects > low * 0.8) & (aspects < high * 1.25)).all()


def test_one_block_read_back_from_the_masks():
    """A wide single-block entry: the target read back from `draw` is one whole box whose time extent, spatial
    scale and aspect ratio the formula allows, and the draws span the configured ranges."""
    grid = (8, 14, 14)
    mask = BlockMask(spatial_scale=(0.2, 0.8), temporal_scale=(0.5, 1.0), aspect_ratio=(0.3, 3.0), num_blocks=1)
    allowed, extents = attainable_sizes(grid, mask), []
    for seed in range(300):
        context, target = multiblock.draw(np.random.default_rng(seed), grid, mask, 3)
        for row_context, row in zip(context, target, strict=True):
            coords = np.stack(np.unravel_index(row, grid))
            extent = tuple(int(v) for v in coords.max(axis=1) - coords.min(axis=1) + 1)
            assert len(row) == np.prod(extent)  # a whole box: nothing truncated, one size for the batch
            assert len(row_context) + len(row) == math.prod(grid)
            extents.append(extent)
    t, h, w = np.array(extents).T
    # t = max(1, int(8 * s)), s uniform in [0.5, 1): 4 to 7 (8 only at s = 1 exactly, as in the official draw)
    assert set(t.tolist()) == {4, 5, 6, 7}
    assert set(zip(h.tolist(), w.tolist(), strict=True)) <= allowed
    scale, aspect = h * w / (grid[1] * grid[2]), h / w
    assert scale.min() < 0.3 and scale.max() > 0.6
    assert aspect.min() < 0.45 and aspect.max() > 2.2


@pytest.mark.parametrize("mask", VJEPA2_MASKS, ids=["short", "long"])
def test_context_and_target_follow_the_collator(mask):
    """num_blocks blocks per example, one size a batch, the spatial pattern the same at every time step; the target
    is their union and the context its complement, each truncated to the batch's smallest count keeping the first
    indices; the two are disjoint and every row has the same length."""
    batch, redrawn = 24, 0
    for seed in range(40):
        context, target = multiblock.draw(np.random.default_rng(seed), GRID, mask, batch)
        size, starts, full = full_targets(seed, GRID, mask, batch)
        assert starts.shape == (batch, mask.num_blocks, 3) and (starts[..., 0] == 0).all() and size[0] == GRID[0]
        frames = full.reshape(batch, GRID[0], -1)
        assert (frames == frames[:, :1]).all()  # the same spatial mask at every time step
        counts = full.sum(axis=1)
        assert (counts >= size[1] * size[2] * GRID[0]).all() and (counts <= mask.num_blocks * np.prod(size)).all()
        kept = counts < TOKENS  # rows left as first drawn: those with no context were redrawn
        redrawn += int((~kept).sum())
        assert context.shape[1] <= (TOKENS - counts[kept]).min() and target.shape[1] <= counts[kept].min()
        if kept.all():
            assert context.shape == (batch, (TOKENS - counts).min()) and target.shape == (batch, counts.min())
        assert context.shape[0] == target.shape[0] == batch and context.shape[1] > 0
        assert context.dtype == target.dtype == np.int32
        for row in np.flatnonzero(kept):
            assert np.array_equal(context[row], np.flatnonzero(~full[row])[: context.shape[1]])
            assert np.array_equal(target[row], np.flatnonzero(full[row])[: target.shape[1]])
        assert not (as_mask(context) & as_mask(target)).any()
    # two long-range blocks 16 patches tall and 11 wide can cover the whole grid: such examples are redrawn (L194-204)
    assert redrawn < 0.05 * 40 * batch


@pytest.mark.parametrize("num_blocks,side", [(8, 6), (2, 13)], ids=["short", "long"])
def test_block_count_and_placement(num_blocks, side):
    """num_blocks square blocks (an exact scale, aspect ratio 1) placed uniformly where they fit whole: a position
    stays context with the product over the blocks of the share of placements that miss it, and the mean context
    of single-clip draws (nothing truncated) matches that expectation (one block fewer or more would not)."""
    height, width = GRID[1:]
    mask = BlockMask(spatial_scale=(side**2 / 256,) * 2, aspect_ratio=(1.0, 1.0), num_blocks=num_blocks)
    assert multiblock.block_size(np.random.default_rng(0), GRID, mask) == (GRID[0], side, side)
    rows = np.array([min(r, height - side) - max(0, r - side + 1) + 1 for r in range(height)]) / (height - side + 1)
    cols = np.array([min(c, width - side) - max(0, c - side + 1) + 1 for c in range(width)]) / (width - side + 1)
    miss = 1 - np.outer(rows, cols)  # a position's chance that one block misses it
    expected = {n: (miss**n).sum() for n in (num_blocks - 1, num_blocks, num_blocks + 1)}  # context a frame
    rng = np.random.default_rng(0)
    context = np.array([multiblock.draw(rng, GRID, mask, 1)[0].shape[1] / GRID[0] for _ in range(3000)])
    error = 5 * context.std() / math.sqrt(len(context))
    assert abs(context.mean() - expected[num_blocks]) < error
    assert all(abs(context.mean() - expected[n]) > error for n in (num_blocks - 1, num_blocks + 1))


def test_fixed_lengths_stack_across_batches():
    """`keep` fixes the lengths of every batch (JAX compiles one shape); official_keep's are the official batch
    minimum's median at its per-GPU batch, and the masks keep their rules."""
    spec = multiblock.MultiblockSpec.fixed(GRID)
    assert spec.keys() == ("context_ids_0", "target_ids_0", "context_ids_1", "target_ids_1")
    for (context_keep, target_keep), mask in zip(spec.keep, spec.masks, strict=True):
        assert 0 < context_keep and 0 < target_keep and context_keep + target_keep <= TOKENS
        assert target_keep >= GRID[0] * int(GRID[1] * GRID[2] * mask.spatial_scale[0]) * 0.8
    rng = np.random.default_rng(1)
    for _ in range(30):
        out = spec.draw(rng, 2)
        for i, (context_keep, target_keep) in enumerate(spec.keep):
            context, target = out[f"context_ids_{i}"], out[f"target_ids_{i}"]
            assert context.shape == (2, context_keep) and target.shape == (2, target_keep)
            assert not (as_mask(context) & as_mask(target)).any()
            assert (np.diff(context, axis=1) > 0).all() and (np.diff(target, axis=1) > 0).all()


def test_options_of_the_collator():
    """max_keep caps the context; full_complement makes the target the rest of the tokens; inv_block swaps the two;
    max_temporal_keep leaves the later frames to the target."""
    base = VJEPA2_MASKS[0]
    context, _ = multiblock.draw(np.random.default_rng(0), GRID, dataclasses.replace(base, max_keep=10), 6)
    assert context.shape == (6, 10)
    context, target = multiblock.draw(np.random.default_rng(0), GRID, dataclasses.replace(base, full_complement=True),
                                      6)
    assert target.shape == (6, TOKENS - context.shape[1]) and (as_mask(context) ^ as_mask(target)).all()
    plain = multiblock.draw(np.random.default_rng(0), GRID, base, 6)
    swapped = multiblock.draw(np.random.default_rng(0), GRID, dataclasses.replace(base, inv_block=True), 6)
    assert np.array_equal(plain[0], swapped[1]) and np.array_equal(plain[1], swapped[0])
    half = dataclasses.replace(base, max_temporal_keep=0.5)
    _, _, full = full_targets(3, GRID, half, 6)
    context, target = multiblock.draw(np.random.default_rng(3), GRID, half, 6)
    assert (context < TOKENS // 2).all() and full.reshape(6, GRID[0], -1)[:, 4:].all()


def test_deterministic_given_the_seed():
    first = multiblock.draw_all(np.random.default_rng(7), GRID, VJEPA2_MASKS, 8)
    again = multiblock.draw_all(np.random.default_rng(7), GRID, VJEPA2_MASKS, 8)
    other = multiblock.draw_all(np.random.default_rng(8), GRID, VJEPA2_MASKS, 8)
    assert all(np.array_equal(a, b) for pa, pb in zip(first, again, strict=True) for a, b in zip(pa, pb, strict=True))
    assert any(a.shape != b.shape or not np.array_equal(a, b) for pa, pb in zip(first, other, strict=True)
               for a, b in zip(pa, pb, strict=True))
    assert multiblock.official_keep(GRID, VJEPA2_MASKS[1], batches=20) == \
        multiblock.official_keep(GRID, VJEPA2_MASKS[1], batches=20)


def test_impossible_masks_are_named():
    with pytest.raises(ConfigError, match="empty context"):
        multiblock.draw(np.random.default_rng(0), (2, 4, 4), BlockMask(spatial_scale=(1.0, 1.0), aspect_ratio=(1, 1),
                                                                    num_blocks=1), 2)
    with pytest.raises(ConfigError, match="more than"):
        multiblock.draw(np.random.default_rng(0), GRID, VJEPA2_MASKS[0], 2, keep=(TOKENS, 1))
    with pytest.raises(ConfigError, match="spatial_scale"):
        BlockMask(spatial_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="one \\(context, target\\) length pair"):
        multiblock.MultiblockSpec(grid=GRID)
