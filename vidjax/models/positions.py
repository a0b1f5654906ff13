"""Learned position tables resized to another token grid, as the PyTorch references resize theirs.

The models resize their tables here when a clip's grid differs from the config's (`resize_positions`), and
`vidjax.convert.common.resize` adapts a converted checkpoint to another frame count or image size through them.
Plain NumPy: no model knowledge, so the models and the converters above them both import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _cubic_taps(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic weights of the taps at offsets -1, 0, 1, 2 for fractional positions t (PyTorch's a = -0.75)."""
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interpolation_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """(n_out, n_in) matrix of PyTorch's 1-D `F.interpolate` (align_corners=False, no antialias) for `method`.

    "nearest" (source index floor(i * n_in / n_out)), "linear" or "cubic" (a = -0.75, border taps clamped). Applied
    separably over each axis these reproduce PyTorch's nearest / bilinear / trilinear / bicubic resizing, which the
    references use to adapt their position tables.
    """
    rows = np.arange(n_out)
    matrix = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    if method == "nearest":
        # PyTorch computes this index in float32; float64 would pick other rows where i * scale rounds to an integer.
        index = np.floor(rows.astype(np.float32) * (np.float32(n_in) / np.float32(n_out))).astype(np.int64)
        matrix[rows, np.minimum(index, n_in - 1)] = 1.0
        return matrix
    src = (rows + 0.5) * scale - 0.5
    if method == "linear":
        src = np.maximum(src, 0.0)
        low = np.floor(src).astype(np.int64)
        frac = src - low
        np.add.at(matrix, (rows, np.minimum(low, n_in - 1)), 1.0 - frac)
        np.add.at(matrix, (rows, np.minimum(low + 1, n_in - 1)), frac)
        return matrix
    if method == "cubic":
        base = np.floor(src)
        weights = _cubic_taps(src - base)
        for tap in range(4):
            np.add.at(matrix, (rows, np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)), weights[:, tap])
        return matrix
    raise ValueError(f"Unknown interpolation {method!r}; use 'nearest', 'linear' or 'cubic'.")


def resize_grid(table: np.ndarray, src_grid: Sequence[int], dst_grid: Sequence[int],
                method: str = "linear") -> np.ndarray:
    """Interpolates a learned table laid out over a grid: (prod(src_grid), D) -> (prod(dst_grid), D).

    Separable, with PyTorch's `F.interpolate(..., align_corners=False)` semantics per axis (see
    `interpolation_matrix`), computed in float64 and returned in the table's dtype.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    table = np.asarray(table)
    if src_grid == dst_grid:
        return table
    grid = table.astype(np.float64).reshape(*src_grid, table.shape[-1])
    for axis, (n_in, n_out) in enumerate(zip(src_grid, dst_grid, strict=True)):
        if n_in != n_out:
            grid = np.moveaxis(np.tensordot(interpolation_matrix(n_in, n_out, method), grid, axes=(1, axis)), 0, axis)
    return grid.reshape(-1, table.shape[-1]).astype(table.dtype)
