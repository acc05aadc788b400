"""Shape and dtype inference: fill Value.shape and Value.dtype of every tensor of the graph.

Walks the nodes in topological order with the per-op rules of shape_rules_nn/_tensor. Besides
shapes it tracks the data of tensors that can be computed at compile time (constants, and
Shape of a statically shaped tensor, and what is computed from them with the reference), so the
Shape -> Gather -> Concat -> Reshape chains of PyTorch exports get their shapes in one pass.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError, ModelError, UnsupportedError
from ..kernels.reference import run_node
from .ir import Graph, Node
from .shape_common import Info, SymbolicDim, Unknown
from .shape_rules_nn import NN_RULES
from .shape_rules_tensor import TENSOR_RULES

RULES = {**NN_RULES, **TENSOR_RULES}

# The inputs whose data, not just their shape, decide an op's output shape (a Reshape target,
# Slice bounds, Split sizes...): inference needs them known at compile time.
VALUE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "ReduceMean": (1,),
    "Pad": (1, 3),
}

# Outputs up to this many elements are computed during inference when their inputs are known
# (shape arithmetic needs them); bigger ones (weights from ConstantOfShape, transposed
# constants) are left to constant folding, so they are not computed twice.
SMALL = 1 << 16


def infer_shapes(graph: Graph, batch: int | None) -> None:
    """Fill shape and dtype of every value; bind symbolic batch dims of the inputs to `batch`.

    ModelError if an input has a symbolic dim other than the first, or if a shape cannot be
    inferred (the error names the node and why)."""
    _bind_inputs(graph, batch)
    infos: dict[str, Info | None] = {}
    for name, value in graph.values.items():
        if value.is_const:
            infos[name] = Info(value.const.shape, value.const.dtype, value.const)
    for name in graph.inputs:
        value = graph.values[name]
        infos[name] = Info(value.shape, value.dtype)
    first_unknown: tuple[str, Node, str] | None = None
    for node in graph.topo_order():
        for t in node.inputs:
            if t and t not in infos:
                raise ModelError(f"{node.describe()} reads '{t}', which nothing produces")
        outs, reason = _infer_node(node, [infos[t] if t else None for t in node.inputs])
        for name, info in zip(node.outputs, outs):
            if name:
                infos[name] = info
        if reason and first_unknown is None:
            first_unknown = (node.outputs[0], node, reason)
    if first_unknown is not None:
        tensor, node, reason = first_unknown
        symbolic = any(isinstance(d, str) for t in graph.inputs for d in graph.values[t].shape)
        hint = " (it may depend on the symbolic batch dim: give a batch size)" if symbolic else ""
        raise ModelError(
            f"cannot infer the shape of '{tensor}', output of {node.describe()}: {reason}{hint}"
        )
    for name, info in infos.items():
        value = graph.values[name]
        value.shape, value.dtype = tuple(info.shape), info.dtype


def _bind_inputs(graph: Graph, batch: int | None) -> None:
    # A static graph's batch is merely its first input's dim 0, which is 0 for an empty tensor;
    # binding a symbolic dim needs a positive one.
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0:
            raise InputError(f"batch must be a positive int, got {batch!r}")
        batch = int(batch)
    for name in graph.inputs:
        value = graph.values[name]
        if value.shape is None:
            raise ModelError(f"input '{name}' has no declared shape")
        dims = list(value.shape)
        for i, d in enumerate(dims):
            if not isinstance(d, str):
                continue
            if i > 0:
                raise ModelError(
                    f"input '{name}' has symbolic dim {i} ('{d}'): sparsejit needs every dim"
                    " but the batch (dim 0) to be static"
                )
            if batch == 0:
                raise InputError(f"batch must be a positive int to bind '{d}' of input '{name}'")
            if batch is not None:
                dims[0] = batch
        value.shape = tuple(dims)


def _infer_node(node: Node, ins: list[Info | None]) -> tuple[list[Info | None], str | None]:
    """The output infos of one node, and why they are unknown (None if they are known)."""
    if any(info is None for t, info in zip(node.inputs, ins) if t):
        return [None] * len(node.outputs), None  # an upstream shape is unknown: reported there
    rule = RULES.get(node.op)
    if rule is None:
        raise UnsupportedError(f"{node.describe()}: no shape rule for op {node.op}")
    outs: list[Info | None] = [None] * len(node.outputs)
    reason = None
    try:
        outs = list(rule(node, ins))
    except Unknown as exc:
        reason = str(exc)
    except SymbolicDim as exc:
        raise ModelError(
            f"{node.describe()}: needs the size of symbolic dim '{exc}'; give a batch size"
        ) from None
    known = all(info.value is not None for info in ins if info is not None)
    if known and (reason is not None or all(_size(o.shape) <= SMALL for o in outs)):
        # Everything is known at compile time: compute the data (and so the exact shape).
        try:
            values = run_node(node, [None if i is None else i.value for i in ins])
        except (ValueError, IndexError, TypeError) as exc:
            raise ModelError(f"{node.describe()}: cannot evaluate it on constants: {exc}") from None
        return [Info(v.shape, v.dtype, v) for v in values], None
    return outs, reason


def _size(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) else SMALL
    return n
