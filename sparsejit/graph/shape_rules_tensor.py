"""Shape rules of the layout and shape-arithmetic ops (Reshape, Concat, Slice, Gather...).

Rules fill shape-dependent attributes: Transpose perm, Squeeze axes and Split sizes when
absent, and make axis attributes non-negative.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..kernels.reference_common import int_list, norm_axis
from ..kernels.reference_tensor import slice_bounds, split_sizes
from .ir import Dim, Node, Shape
from .shape_common import (
    Info,
    Rule,
    SymbolicDim,
    Unknown,
    as_int,
    broadcast,
    known_value,
    product,
    setting_value,
)


def _concat(node: Node, ins: list[Info | None]) -> list[Info]:
    present = [i for i in ins if i is not None]
    rank = len(present[0].shape)
    axis = node.attrs["axis"] = norm_axis(node.attrs["axis"], rank, node)
    out = list(present[0].shape)
    for info in present[1:]:
        if len(info.shape) != rank:
            raise ModelError(f"{node.describe()}: inputs of different ranks")
        for i, (d0, d) in enumerate(zip(out, info.shape)):
            if i != axis and d0 != d and isinstance(d0, int) and isinstance(d, int):
                raise ModelError(
                    f"{node.describe()}: input shapes {present[0].shape} and {info.shape} differ"
                    f" outside axis {axis}"
                )
    out[axis] = sum(as_int(i.shape[axis]) for i in present) if len(present) > 1 else out[axis]
    return [Info(tuple(out), present[0].dtype)]


def _flatten(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    axis = node.attrs["axis"]
    if not -len(shape) <= axis <= len(shape):
        raise ModelError(f"{node.describe()}: axis {axis} out of range for rank {len(shape)}")
    axis = node.attrs["axis"] = axis + len(shape) if axis < 0 else axis
    left = product(shape[:axis]) if axis else 1
    right = product(shape[axis:]) if axis < len(shape) else 1
    return [Info((left, right), ins[0].dtype)]


def reshape_shape(node: Node, shape: Shape, target: list[int]) -> Shape:
    """Reshape's output shape; the input may carry one symbolic dim that -1 takes over."""
    out: list[Dim] = [
        shape[i] if d == 0 and not node.attrs["allowzero"] else d for i, d in enumerate(target)
    ]
    in_syms = [d for d in shape if isinstance(d, str)]
    out_syms = [d for d in out if isinstance(d, str)]
    left = list(in_syms)
    for d in out_syms:
        if d not in left:
            raise SymbolicDim(d)
        left.remove(d)
    in_n = int(np.prod([d for d in shape if isinstance(d, int)], dtype=np.int64))
    out_n = int(np.prod([d for d in out if isinstance(d, int) and d != -1], dtype=np.int64))
    if -1 in out:
        if not left:
            if out_n == 0 or in_n % out_n:
                raise ModelError(f"{node.describe()}: cannot reshape {shape} to {target}")
            out[out.index(-1)] = in_n // out_n
        elif len(left) == 1 and in_n == out_n:
            out[out.index(-1)] = left[0]
        else:
            raise SymbolicDim(left[0])
    elif left:
        raise SymbolicDim(left[0])
    elif in_n != out_n:
        raise ModelError(f"{node.describe()}: cannot reshape {shape} ({in_n} elements) to {target}")
    return tuple(out)


def _reshape(node: Node, ins: list[Info | None]) -> list[Info]:
    target = int_list(known_value(ins[1], node, "shape"))
    return [Info(reshape_shape(node, ins[0].shape, target), ins[0].dtype)]


def _transpose(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    perm = node.attrs.get("perm")
    if perm is None:
        perm = node.attrs["perm"] = list(range(len(shape)))[::-1]
    if sorted(perm) != list(range(len(shape))):
        raise ModelError(f"{node.describe()}: perm {perm} does not fit rank {len(shape)}")
    return [Info(tuple(shape[p] for p in perm), ins[0].dtype)]


def _axes(node: Node, ins: list[Info | None], rank: int) -> list[int] | None:
    """Squeeze/Unsqueeze/ReduceMean axes, non-negative for `rank`; the attribute is updated."""
    from_input = len(ins) > 1 and ins[1] is not None
    axes = int_list(setting_value(node, ins, 1, "axes", "axes"))
    if axes is None:
        return None
    axes = [norm_axis(a, rank, node) for a in axes]
    if not from_input:
        node.attrs["axes"] = axes
    return axes


def _squeeze(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    axes = _axes(node, ins, len(shape))
    if axes is None:  # every unit dim; a symbolic one might be 1 or not
        for d in shape:
            if isinstance(d, str):
                raise SymbolicDim(d)
        axes = node.attrs["axes"] = [i for i, d in enumerate(shape) if d == 1]
    for a in axes:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise ModelError(f"{node.describe()}: cannot squeeze axis {a} of shape {shape}")
    return [Info(tuple(d for i, d in enumerate(shape) if i not in axes), ins[0].dtype)]


def _unsqueeze(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    n_axes = len(int_list(setting_value(node, ins, 1, "axes", "axes")))
    axes = _axes(node, ins, len(shape) + n_axes)
    out: list[Dim] = []
    rest = iter(shape)
    for i in range(len(shape) + n_axes):
        out.append(1 if i in axes else next(rest))
    return [Info(tuple(out), ins[0].dtype)]


def _pad(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    pads = int_list(setting_value(node, ins, 1, "pads", "pads"))
    axes = int_list(setting_value(node, ins, 3, "axes", "axes"))
    rank = len(shape)
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank, node) for a in axes]
    if pads is None or len(pads) != 2 * len(axes):
        raise ModelError(f"{node.describe()}: pads {pads} do not fit rank {len(shape)}")
    out = list(shape)
    for i, a in enumerate(axes):
        if pads[i] or pads[i + len(axes)]:
            out[a] = as_int(shape[a]) + pads[i] + pads[i + len(axes)]
    return [Info(tuple(out), ins[0].dtype)]


def _shape(node: Node, ins: list[Info | None]) -> list[Info]:
    dims = ins[0].shape[node.attrs["start"] : node.attrs["end"]]
    static = all(isinstance(d, int) for d in dims)
    value = np.array(dims, np.int64) if static else None
    return [Info((len(dims),), np.dtype(np.int64), value)]


def _gather(node: Node, ins: list[Info | None]) -> list[Info]:
    data, indices = ins[0], ins[1]
    axis = node.attrs["axis"] = norm_axis(node.attrs["axis"], len(data.shape), node)
    shape = data.shape[:axis] + tuple(indices.shape) + data.shape[axis + 1 :]
    return [Info(shape, data.dtype)]


def _slice(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    starts = int_list(setting_value(node, ins, 1, "starts", "starts"))
    ends = int_list(setting_value(node, ins, 2, "ends", "ends"))
    axes = int_list(setting_value(node, ins, 3, "axes", "axes")) or list(range(len(starts)))
    steps = int_list(setting_value(node, ins, 4, "steps", "steps")) or [1] * len(starts)
    out = list(shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = norm_axis(a, len(shape), node)
        dim = as_int(shape[a])
        out[a] = len(range(dim)[slice_bounds(s, e, st, dim)])
    return [Info(tuple(out), ins[0].dtype)]


def _split(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    axis = node.attrs["axis"] = norm_axis(node.attrs["axis"], len(shape), node)
    dim = as_int(shape[axis])
    given = int_list(setting_value(node, ins, 1, "split", "split"))
    sizes = split_sizes(node, dim, given)
    if sum(sizes) != dim or len(sizes) != len(node.outputs):
        raise ModelError(f"{node.describe()}: split {sizes} does not fit dim {dim}")
    if given is None:
        node.attrs["split"] = sizes
    return [Info(shape[:axis] + (n,) + shape[axis + 1 :], ins[0].dtype) for n in sizes]


def _reduce_mean(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = ins[0].shape
    axes = _axes(node, ins, len(shape))
    if not axes:
        if node.attrs["noop_with_empty_axes"]:
            return [Info(shape, ins[0].dtype)]
        axes = list(range(len(shape)))
    keep = node.attrs["keepdims"]
    out = tuple(1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)
    return [Info(out, ins[0].dtype)]


def _expand(node: Node, ins: list[Info | None]) -> list[Info]:
    target = tuple(int_list(known_value(ins[1], node, "shape")))
    return [Info(broadcast(node, [ins[0].shape, target]), ins[0].dtype)]


def _constant_of_shape(node: Node, ins: list[Info | None]) -> list[Info]:
    shape = tuple(int_list(known_value(ins[0], node, "shape")))
    return [Info(shape, np.asarray(node.attrs["value"]).dtype)]


def _needs_values(what: str) -> Rule:
    # Ops whose output shape is their input data: the driver evaluates them once all is known.
    def rule(node: Node, ins: list[Info | None]) -> list[Info]:
        raise Unknown(f"its {what} input is only known at run time")

    return rule


TENSOR_RULES: dict[str, Rule] = {
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
    "Range": _needs_values("start/limit/delta"),
    "ConstantOfShape": _constant_of_shape,
}
