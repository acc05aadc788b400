"""Fuse an activation into the epilogue of the kernel that produces its input.

Relu, LeakyRelu and Clip after a node that `can_fuse(node)` accepts (a conv or FC layer that
will become a generated kernel) are folded into it as `attrs["activation"]` when the
intermediate tensor has no other reader and is not a graph output. Bias needs no pass: it is the
conv's third input and the kernel adds it in the same epilogue.
"""

from __future__ import annotations

from collections.abc import Callable

from .ir import Graph, Node

_ACTIVATIONS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "Clip": "clip"}


def _activation_attrs(node: Node) -> dict | None:
    if node.op == "Relu":
        return {"activation": "relu"}
    if node.op == "LeakyRelu":
        return {"activation": "leaky_relu", "activation_alpha": float(node.attrs.get("alpha", 0.01))}
    if node.op == "Clip":
        if any(t for t in node.inputs[1:]):  # bounds computed at run time
            return None
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
        return {"activation": "clip",
                "clip_min": float("-inf") if lo is None else float(lo),
                "clip_max": float("inf") if hi is None else float(hi)}
    return None


def fuse_activations(graph: Graph, can_fuse: Callable[[Graph, Node], bool]) -> None:
    for act in list(graph.nodes):
        if act.op not in _ACTIVATIONS or act not in graph.nodes:
            continue
        src = act.inputs[0]
        producer = graph.producer(src)
        if (producer is None or "activation" in producer.attrs or not can_fuse(graph, producer)
                or src in graph.outputs or len(graph.consumers(src)) != 1):
            continue
        attrs = _activation_attrs(act)
        if attrs is None:
            continue
        producer.attrs.update(attrs)
        producer.fused.append(act.op)
        out = act.outputs[0]
        producer.outputs[0] = out  # the producer now writes the activation's output directly
        graph.values[out].dtype = graph.values[src].dtype
        graph.nodes.remove(act)
        graph.values.pop(src, None)
