"""2-D pools as generated kernels: the workload of a MaxPool / AveragePool / Global*Pool node
and the per-axis window counts an average divides by.

The kernel reads the producer's padded buffer in place and writes its consumer's layout: it
clips every window to the input (the layout's pads are zeros, not the -inf a max pool pads
with), so pads are never read. An average's divisor is separable: the positions a window counts
(the data, or the data and the explicit padding, never ceil_mode's overhang) form an outer
product of a row mask and a column mask, so count[oy, ox] = rows[oy] * cols[ox].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.ir import Node
from .reference_nn import pool_out_size, resolved_pads

POOL_OPS = {"MaxPool": "max", "AveragePool": "avg", "GlobalMaxPool": "max", "GlobalAveragePool": "avg"}


@dataclass(frozen=True)
class PoolWorkload:
    kind: str  # "max" or "avg"
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("max", "avg"):
            raise ValueError(f"pool kind {self.kind!r}: expected 'max' or 'avg'")
        if min(self.kernel) < 1 or min(self.strides) < 1 or min(self.dilations) < 1:
            raise ValueError(f"pool kernel {self.kernel}, strides {self.strides}, dilations "
                             f"{self.dilations}: all must be >= 1")

    def _out(self, axis: int) -> int:
        size = (self.height, self.width)[axis]
        return pool_out_size(size, self.kernel[axis], self.strides[axis], self.dilations[axis],
                             self.pads[axis], self.pads[axis + 2], int(self.ceil_mode))

    @property
    def out_height(self) -> int:
        return self._out(0)

    @property
    def out_width(self) -> int:
        return self._out(1)

    def window_counts(self, axis: int) -> np.ndarray:
        """Per output position along `axis` (0 rows, 1 columns), how many window positions the
        average counts: data positions, plus explicit pads with count_include_pad."""
        size, k = (self.height, self.width)[axis], self.kernel[axis]
        s, d = self.strides[axis], self.dilations[axis]
        begin, end = self.pads[axis], self.pads[axis + 2]
        lo, hi = (-begin, size + end) if self.count_include_pad else (0, size)
        start = np.arange(self._out(axis))[:, None] * s - begin + np.arange(k)[None, :] * d
        return ((start >= lo) & (start < hi)).sum(axis=1).astype(np.float32)


def covers_whole_plane(wl: PoolWorkload) -> bool:
    """One window over the whole input (a global pool, or GoogLeNet's 7 x 7 AveragePool over a
    7 x 7 map): a reduction of each channel's plane, which a kernel vectorises along the plane's
    rows rather than along output columns, of which there is one."""
    return (wl.kernel == (wl.height, wl.width) and wl.pads == (0, 0, 0, 0)
            and wl.out_height == 1 and wl.out_width == 1)


def pool_workload(node: Node, channels: int, height: int, width: int) -> PoolWorkload:
    """The workload of a pool node over a (C, H, W) input."""
    kind = POOL_OPS[node.op]
    if node.op.startswith("Global"):
        return PoolWorkload(kind, channels, height, width, (height, width))
    a = node.attrs
    kernel = tuple(int(k) for k in a["kernel_shape"])
    pads = tuple(resolved_pads(node, (height, width), kernel))
    return PoolWorkload(kind, channels, height, width, kernel, tuple(a["strides"]), pads,
                        tuple(a["dilations"]), bool(a.get("ceil_mode", 0)),
                        bool(a.get("count_include_pad", 0)))


def pool_lowerable(node: Node) -> bool:
    """2-D pools with one output (MaxPool's optional Indices output stays with the reference)."""
    if node.op not in POOL_OPS or len([o for o in node.outputs if o]) != 1:
        return False
    if node.op.startswith("Global"):
        return True
    a = node.attrs
    return (len(a.get("kernel_shape") or ()) == 2 and int(a.get("storage_order", 0)) == 0)
