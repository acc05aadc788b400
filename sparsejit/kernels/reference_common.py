"""Small helpers shared by the numpy reference ops: settings lookup and axis arithmetic."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError
from ..graph.ir import Node


def setting(node: Node, inputs: list[np.ndarray | None], index: int, attr: str) -> Any:
    """A setting that newer opsets pass as input `index` and older ones (or the frontend, once
    it is constant) as attribute `attr`: the runtime input wins when it is given."""
    if index < len(inputs) and inputs[index] is not None:
        return inputs[index]
    return node.attrs.get(attr)


def int_list(value: Any) -> list[int] | None:
    """An attribute or tensor of ints as a list (None stays None)."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def scalar(value: Any) -> Any:
    """A Python scalar from a scalar, 1-element tensor or None."""
    if value is None or np.isscalar(value):
        return value
    return np.asarray(value).reshape(-1)[0].item()


def norm_axis(axis: int, rank: int, node: Node) -> int:
    """`axis` in 0..rank-1 (ONNX allows negative axes counted from the end)."""
    if not -rank <= axis < rank:
        raise ModelError(f"{node.describe()}: axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0
