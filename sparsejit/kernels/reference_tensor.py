"""Numpy reference of the layout and shape-arithmetic ops (Reshape, Concat, Slice, Gather...).

Integer tensors of shape chains stay int64.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph.ir import Node
from .reference_common import int_list, norm_axis, scalar, setting

Arrays = list[np.ndarray | None]


def _concat(node: Node, inputs: Arrays) -> list[np.ndarray]:
    arrays = [x for x in inputs if x is not None]
    axis = norm_axis(node.attrs["axis"], arrays[0].ndim, node)
    return [np.concatenate(arrays, axis=axis)]


def _flatten(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    axis = node.attrs["axis"]
    axis = axis + x.ndim if axis < 0 else axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    cols = int(np.prod(x.shape[axis:], dtype=np.int64))
    return [x.reshape(rows, cols)]


def reshape_target(in_shape: tuple[int, ...], shape: list[int], allowzero: int) -> list[int]:
    """The output shape of Reshape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(shape)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(in_shape, dtype=np.int64))
        out[out.index(-1)] = total // known if known else 0
    return out


def _reshape(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    target = reshape_target(x.shape, int_list(inputs[1]), node.attrs["allowzero"])
    return [x.reshape(target)]


def _transpose(node: Node, inputs: Arrays) -> list[np.ndarray]:
    perm = node.attrs.get("perm")
    return [np.transpose(inputs[0], perm)]


def _squeeze(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    axes = int_list(setting(node, inputs, 1, "axes"))
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    return [np.squeeze(x, axis=tuple(norm_axis(a, x.ndim, node) for a in axes))]


def _unsqueeze(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    axes = int_list(setting(node, inputs, 1, "axes"))
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(norm_axis(a, rank, node) for a in axes))]


def _pad(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    pads = int_list(setting(node, inputs, 1, "pads"))
    value = scalar(setting(node, inputs, 2, "value"))
    axes = int_list(setting(node, inputs, 3, "axes"))
    axes = list(range(x.ndim)) if axes is None else [norm_axis(a, x.ndim, node) for a in axes]
    begin, end = [0] * x.ndim, [0] * x.ndim
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + len(axes)]
    # Negative pads crop; crop first, then pad with what is left.
    x = x[tuple(slice(max(-b, 0), n - max(-e, 0)) for n, b, e in zip(x.shape, begin, end))]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    mode = node.attrs["mode"]
    if mode == "constant":
        fill = 0 if value is None else value
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(fill, x.dtype))]
    return [np.pad(x, widths, mode=mode)]


def _shape(node: Node, inputs: Arrays) -> list[np.ndarray]:
    shape = np.array(inputs[0].shape, np.int64)
    return [shape[node.attrs.get("start", 0) : node.attrs.get("end")]]


def _gather(node: Node, inputs: Arrays) -> list[np.ndarray]:
    data, indices = inputs[0], inputs[1]
    axis = norm_axis(node.attrs["axis"], data.ndim, node)
    return [np.take(data, indices.astype(np.int64), axis=axis)]


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """A Python slice with ONNX Slice semantics (negative indices, clamping, negative steps)."""
    if step == 0:
        raise ModelError("Slice step 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)  # end -1 means "past the first element"


def slice_index(node: Node, rank: int, shape: tuple[int, ...], inputs: Arrays) -> tuple:
    """The numpy index that implements node's Slice on a tensor of `shape`."""
    starts = int_list(setting(node, inputs, 1, "starts"))
    ends = int_list(setting(node, inputs, 2, "ends"))
    axes = int_list(setting(node, inputs, 3, "axes")) or list(range(len(starts)))
    steps = int_list(setting(node, inputs, 4, "steps")) or [1] * len(starts)
    index = [slice(None)] * rank
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = norm_axis(a, rank, node)
        index[a] = slice_bounds(s, e, st, shape[a])
    return tuple(index)


def _slice(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    return [x[slice_index(node, x.ndim, x.shape, inputs)]]


def split_sizes(node: Node, dim: int, split: list[int] | None) -> list[int]:
    """Chunk lengths of Split: given, or equal chunks (the last one smaller) per output."""
    if split is not None:
        return split
    parts = len(node.outputs)
    chunk = -(-dim // parts)
    return [min(chunk, max(dim - i * chunk, 0)) for i in range(parts)]


def _split(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    axis = norm_axis(node.attrs["axis"], x.ndim, node)
    sizes = split_sizes(node, x.shape[axis], int_list(setting(node, inputs, 1, "split")))
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _reduce_mean(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    axes = int_list(setting(node, inputs, 1, "axes"))
    if not axes:
        if node.attrs["noop_with_empty_axes"]:
            return [x]
        axes = list(range(x.ndim))
    axes_t = tuple(norm_axis(a, x.ndim, node) for a in axes)
    y = np.mean(x, axis=axes_t, keepdims=bool(node.attrs["keepdims"]))
    return [np.asarray(y).astype(x.dtype, copy=False)]


def _expand(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    shape = np.broadcast_shapes(x.shape, tuple(int_list(inputs[1])))
    return [np.array(np.broadcast_to(x, shape))]


def _range(node: Node, inputs: Arrays) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return [(start + np.arange(count) * delta).astype(start.dtype)]


def _constant_of_shape(node: Node, inputs: Arrays) -> list[np.ndarray]:
    value = node.attrs["value"]
    return [np.full(tuple(int_list(inputs[0])), value[0], dtype=value.dtype)]


TENSOR_OPS = {
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Pad": _pad,
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Split": _split,
    "ReduceMean": _reduce_mean,
    "Expand": _expand,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
}
