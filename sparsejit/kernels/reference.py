"""The numpy reference of every supported op: dispatch by op type, and a whole-graph runner.

It is the independent oracle of the JIT kernels, evaluates constants at compile time, and runs
the ops sparsejit does not compile. Each op is `fn(node, inputs) -> outputs`, with None for an
omitted optional input; attributes are the normalised ones of the frontend.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError, ModelError, UnsupportedError
from ..graph.ir import Graph, Node
from .reference_elementwise import ELEMENTWISE_OPS
from .reference_nn import NN_OPS, conv2d
from .reference_tensor import TENSOR_OPS

__all__ = ["REFERENCE_OPS", "conv2d", "run_graph", "run_node"]

RefOp = Callable[[Node, list[np.ndarray | None]], list[np.ndarray]]

REFERENCE_OPS: dict[str, RefOp] = {**NN_OPS, **ELEMENTWISE_OPS, **TENSOR_OPS}


def run_node(node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    """Evaluate one node on numpy inputs; one array per node output."""
    fn = REFERENCE_OPS.get(node.op)
    if fn is None:
        raise UnsupportedError(f"{node.describe()}: no reference implementation")
    try:
        outputs = fn(node, [None if x is None else np.asarray(x) for x in inputs])
    except KeyError as exc:  # a node built by hand, without the frontend's normalised attrs
        raise ModelError(
            f"{node.describe()}: attribute {exc} is missing (normalise attributes with "
            "sparsejit.frontend.onnx_attrs.normalize_attrs)"
        ) from None
    return [np.asarray(y) for y in outputs[: len(node.outputs)]]


def run_graph(
    graph: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False
) -> dict[str, np.ndarray]:
    """Run the whole graph with the reference: the graph outputs by name (every tensor computed,
    constants aside, if keep_all). Feeds are used as given, without dtype conversion."""
    missing = [name for name in graph.inputs if name not in feeds]
    if missing:
        raise InputError(f"missing input(s) {missing}; the graph takes {graph.inputs}")
    env: dict[str, np.ndarray] = {name: np.asarray(feeds[name]) for name in graph.inputs}
    for node in graph.topo_order():
        args = [_lookup(graph, env, t) for t in node.inputs]
        for name, y in zip(node.outputs, run_node(node, args)):
            if name:
                env[name] = y
    if keep_all:
        return env
    return {t: _lookup(graph, env, t) for t in graph.outputs}


def _lookup(graph: Graph, env: dict[str, np.ndarray], tensor: str) -> np.ndarray | None:
    """A computed tensor, else a constant; None for an omitted input ('')."""
    if not tensor:
        return None
    return env[tensor] if tensor in env else graph.value(tensor).const
