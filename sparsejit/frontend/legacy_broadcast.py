"""Rewrite the opset 6 broadcast of binary ops (attributes `broadcast` and `axis`) as numpy's.

Before opset 7, Add/Sub/Mul/Div/Pow/Equal broadcast B to A only with broadcast=1, aligning B's
dims with A's from `axis` on (A (2,3,4,5) + B (3,4) with axis=1), or with A's last dims when
`axis` is absent. Numpy broadcasting always aligns the last dims, so the suffix form (and
broadcast=0, where the shapes are equal) already means the same; with an axis, B gets trailing
unit dims: a reshaped constant, or an Unsqueeze node for a tensor computed at run time. A's rank
comes from the declared shapes, or from ONNX shape inference when A is an intermediate.
"""

from __future__ import annotations

import onnx

from ..errors import ModelError, UnsupportedError
from ..graph.ir import Graph, Node, Value

LEGACY_BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Equal"})
LAST_LEGACY_OPSET = 6  # opset 7 introduced multidirectional (numpy) broadcasting


class _Ranks:
    """Tensor ranks: declared or constant shapes first, ONNX shape inference when needed."""

    def __init__(self, graph: Graph, proto: onnx.ModelProto) -> None:
        self.graph, self.proto = graph, proto
        self.inferred: dict[str, int] | None = None

    def __call__(self, tensor: str) -> int | None:
        value = self.graph.values.get(tensor)
        if value is not None and value.shape is not None:
            return len(value.shape)
        if self.inferred is None:
            self.inferred = _inferred_ranks(self.proto)
        return self.inferred.get(tensor)


def _inferred_ranks(proto: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # an unreadable model fails later with a precise error
        return {}
    g = inferred.graph
    ranks = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            ranks[vi.name] = len(tt.shape.dim)
    return ranks


def _trailing_units(node: Node, rank_a: int | None, rank_b: int | None) -> int:
    """How many unit dims B needs after its own so that numpy aligns it at `axis`."""
    if rank_a is None or rank_b is None:
        raise UnsupportedError(
            f"{node.describe()}: opset 6 broadcast with axis needs the ranks of its inputs, "
            "which are unknown (declare the shapes of the graph inputs)"
        )
    axis = int(node.attrs["axis"])
    axis = axis + rank_a if axis < 0 else axis
    trailing = rank_a - axis - rank_b
    if not 0 <= axis < max(rank_a, 1) or trailing < 0:
        raise ModelError(
            f"{node.describe()}: cannot broadcast a rank-{rank_b} B at axis {node.attrs['axis']}"
            f" of a rank-{rank_a} A"
        )
    return trailing


def _aligned(graph: Graph, node: Node, tensor: str, rank: int, count: int) -> tuple[str, Node | None]:
    """`tensor` with `count` unit dims appended: a reshaped constant, or an Unsqueeze's output."""
    out = graph.fresh_name(f"{tensor}__aligned")
    data = graph.const(tensor)
    if data is not None:
        reshaped = data.reshape(data.shape + (1,) * count)
        graph.values[out] = Value(out, reshaped.dtype, reshaped.shape, reshaped)
        return out, None
    graph.values[out] = Value(out)
    axes = list(range(rank, rank + count))
    return out, Node("Unsqueeze", [tensor], [out], {"axes": axes}, name=f"{node.name}__align")


def rewrite_legacy_broadcast(graph: Graph, proto: onnx.ModelProto) -> None:
    """Make every opset-6 binary op of `graph` broadcast the numpy way (in place)."""
    if graph.opset > LAST_LEGACY_OPSET:
        return
    ranks = _Ranks(graph, proto)
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op in LEGACY_BROADCAST_OPS and node.attrs.get("broadcast") and "axis" in node.attrs:
            a, b = node.inputs[0], node.inputs[1]
            rank_b = ranks(b)
            count = _trailing_units(node, ranks(a), rank_b)
            if count:
                aligned, unsqueeze = _aligned(graph, node, b, rank_b, count)
                node.inputs[1] = aligned
                nodes.extend([unsqueeze] if unsqueeze is not None else [])
        nodes.append(node)
    graph.nodes = nodes
