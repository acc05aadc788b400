"""Pruned weights kept compact between bindings.

A compiled model keeps its imported graph: it binds it again for a new batch size and lowers it
again for inspection. Kept dense, a pruned ResNet-50's weights cost ~100 MB, three times their
nonzeros; so large sparse constants wait as (flat index, value) pairs and are restored, dense,
into each working copy of the graph before the passes run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arrays import count_nonzeros, flat_nonzeros
from .ir import Graph

MIN_ELEMENTS = 4096  # smaller constants are not worth the bookkeeping
MAX_DENSITY = 0.5  # above it, 8 bytes per nonzero is no saving over 4 per element


@dataclass(frozen=True)
class CompactConst:
    shape: tuple[int, ...]
    dtype: np.dtype
    index: np.ndarray  # flat positions of the nonzeros (and NaNs), ascending
    values: np.ndarray

    def dense(self) -> np.ndarray:
        out = np.zeros(int(np.prod(self.shape)), self.dtype)
        out[self.index] = self.values
        return out.reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.values.nbytes


def compact_weights(graph: Graph) -> dict[str, CompactConst]:
    """Replace the graph's large sparse float constants (not graph outputs) by None and return
    them compacted; `restore_weights` puts them back into a copy."""
    store = {}
    for name, value in graph.values.items():
        c = value.const
        if (c is None or name in graph.outputs or c.dtype.kind != "f" or c.size < MIN_ELEMENTS):
            continue
        flat = c.reshape(-1)
        # counted before indexed: the index of a dense fc6 (103 M weights) alone is 800 MB
        if count_nonzeros(flat) > MAX_DENSITY * flat.size:  # NaN counts as nonzero: kept
            continue
        index = flat_nonzeros(flat)
        index = index.astype(np.int32 if flat.size < 2**31 else np.int64)
        store[name] = CompactConst(c.shape, c.dtype, index, flat[index].copy())
        value.const = None
    return store


def restore_weights(graph: Graph, store: dict[str, CompactConst]) -> None:
    for name, compact in store.items():
        graph.values[name].const = compact.dense()
