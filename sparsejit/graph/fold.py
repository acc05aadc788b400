"""Constant folding: evaluate with the reference every node whose inputs are all known at
compile time, and replace it by constants; `simplify` alternates it with shape inference.

Shape of a tensor whose shape is static folds too, so the Shape -> Gather -> Unsqueeze ->
Concat -> Reshape chains of PyTorch exports collapse into a constant Reshape target.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..kernels.reference import run_node
from .config_inputs import absorb_all
from .ir import Graph, Node, Value
from .shapes import infer_shapes


def _static_shape(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    shape = graph.value(tensor).shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def _evaluate(graph: Graph, node: Node) -> list[np.ndarray] | None:
    """The node's outputs if they can be computed now, else None."""
    if node.op == "Shape":
        shape = _static_shape(graph, node.inputs[0])
        if shape is None:
            return None
        return [np.array(shape, np.int64)[node.attrs.get("start", 0) : node.attrs.get("end")]]
    inputs = [graph.const(t) for t in node.inputs]
    if any(x is None for t, x in zip(node.inputs, inputs) if t):
        return None
    try:
        return run_node(node, inputs)
    except (ValueError, IndexError, TypeError) as exc:
        raise ModelError(f"{node.describe()}: cannot evaluate it on constants: {exc}") from None


def fold_constants(graph: Graph) -> None:
    """Replace every node computable at compile time by constant values (one topological pass,
    so whole constant chains fold); then move constant settings inputs into attributes."""
    folded: set[int] = set()
    for node in graph.topo_order():
        outputs = _evaluate(graph, node)
        if outputs is None:
            continue
        for name, data in zip(node.outputs, outputs):
            if name:
                graph.values[name] = Value(name, data.dtype, tuple(data.shape), data)
        folded.add(id(node))
    graph.nodes = [n for n in graph.nodes if id(n) not in folded]
    absorb_all(graph)


def simplify(graph: Graph, batch: int | None) -> None:
    """Shape inference and constant folding until nothing changes; then drop dead nodes."""
    while True:
        infer_shapes(graph, batch)
        before = len(graph.nodes)
        fold_constants(graph)
        if len(graph.nodes) == before:
            break
    graph.remove_unused()
