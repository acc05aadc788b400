"""Dense fully connected layers: the workload, the blocking plan and the packed weights.

Y[N][M] = act(X[N][C] @ W^T + bias), with W packed once at compile time tile by tile (M rounded
up to whole tiles of vectors, zero-filled) so every weight load is aligned, in bounds and
sequential. Or, skipping zero inputs (`skip_zero_inputs`, one row of X at a time), with W^T
packed row by row, so that a zero input skips the one contiguous row of weights it would
multiply. Pruned FC layers do not come here: they run on the direct sparse kernel (see select.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import round_up

# columns of W transposed at a time by pack_weights: 512 rows of a tile's output stay in cache
_PACK_COLUMNS = 512


@dataclass(frozen=True)
class GemmWorkload:
    in_features: int  # C
    out_features: int  # M


@dataclass(frozen=True)
class GemmPlan:
    vector_width: int = 16
    rows_per_tile: int = 1  # RN: rows of X per tile
    vectors_per_tile: int = 4  # CB: vectors of output features per tile
    codegen_opt: int = 2
    # sum only the rows of W^T whose input is nonzero, one row of X at a time (the weights
    # packed row-major W^T, the sums kept in Y): for a batch of one after a ReLU
    skip_zero_inputs: bool = False

    def __post_init__(self) -> None:
        if self.skip_zero_inputs and self.rows_per_tile != 1:
            raise ValueError("skip_zero_inputs takes one row of X at a time (rows_per_tile=1)")

    def variant(self) -> str:
        skip = "_skip0" if self.skip_zero_inputs else ""
        return f"dense_v{self.vector_width}_r{self.rows_per_tile}x{self.vectors_per_tile}{skip}"

    def padded_features(self, out_features: int) -> int:
        return round_up(out_features, self.vector_width * self.vectors_per_tile)

    def tiles(self, out_features: int) -> int:
        return self.padded_features(out_features) // (self.vector_width * self.vectors_per_tile)


def pack_weights(weight_mc: np.ndarray, plan: GemmPlan) -> np.ndarray:
    """W[M][C] -> tile-major [tiles][C][CB*V] float32, 64-byte aligned, zero padded, so the
    kernel streams each tile's weights sequentially (row-major W^T jumped Mp floats per step,
    a new page every few iterations, and ran at half the bandwidth). For `skip_zero_inputs`,
    row-major W^T [C][Mp] instead: the kernel reads whole rows (a thread a slice of each)."""
    m, c = weight_mc.shape
    from ..runtime.buffers import aligned_empty

    width = plan.vector_width * plan.vectors_per_tile
    tiles = plan.tiles(m)
    if plan.skip_zero_inputs:
        rows = aligned_empty(c * tiles * width).reshape(c, tiles * width)
        # in square blocks, both sides in cache: by column chunks alone (all M rows at once)
        # VGG-16's fc6 took 0.58 s, in blocks 0.30
        for m0 in range(0, m, _PACK_COLUMNS):
            for c0 in range(0, c, _PACK_COLUMNS):
                block = weight_mc[m0:m0 + _PACK_COLUMNS, c0:c0 + _PACK_COLUMNS]
                rows[c0:c0 + block.shape[1], m0:m0 + block.shape[0]] = block.T
        rows[:, m:] = 0.0
        return rows.reshape(-1)
    packed = aligned_empty(tiles * c * width)
    tile_major = packed.reshape(tiles, c, width)
    # Transposed a tile and a column chunk at a time: one whole-array transpose of VGG-16's
    # fc6 (4096 x 25088) strode through 400 MB and took 2.2 s of its 2.8 s warm compile; in
    # chunks whose source rows stay in cache it takes 0.3 s.
    for tile in range(tiles):
        rows = weight_mc[tile * width:(tile + 1) * width]
        for c0 in range(0, c, _PACK_COLUMNS):
            tile_major[tile, c0:c0 + _PACK_COLUMNS, :rows.shape[0]] = rows[:, c0:c0 + _PACK_COLUMNS].T
        tile_major[tile, :, rows.shape[0]:] = 0.0
    return packed

