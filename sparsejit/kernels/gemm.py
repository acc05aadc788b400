"""Dense fully connected layers: the workload, the blocking plan and the packed weights.

Y[N][M] = act(X[N][C] @ W^T + bias), with W packed once at compile time tile by tile (M rounded
up to whole tiles of vectors, zero-filled) so every weight load is aligned, in bounds and
sequential. Pruned FC layers do not come here: they run on the direct sparse kernel (see select.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import round_up


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

    def variant(self) -> str:
        return f"dense_v{self.vector_width}_r{self.rows_per_tile}x{self.vectors_per_tile}"

    def padded_features(self, out_features: int) -> int:
        return round_up(out_features, self.vector_width * self.vectors_per_tile)

    def tiles(self, out_features: int) -> int:
        return self.padded_features(out_features) // (self.vector_width * self.vectors_per_tile)


def pack_weights(weight_mc: np.ndarray, plan: GemmPlan) -> np.ndarray:
    """W[M][C] -> tile-major [tiles][C][CB*V] float32, 64-byte aligned, zero padded, so the
    kernel streams each tile's weights sequentially (row-major W^T jumped Mp floats per step,
    a new page every few iterations, and ran at half the bandwidth)."""
    m, c = weight_mc.shape
    from ..runtime.buffers import aligned_empty

    width = plan.vector_width * plan.vectors_per_tile
    tiles = plan.tiles(m)
    padded = np.zeros((tiles * width, c), np.float32)
    padded[:m] = weight_mc
    packed = aligned_empty(tiles * c * width)
    packed.reshape(tiles, c, width)[...] = padded.reshape(tiles, width, c).transpose(0, 2, 1)
    return packed
