"""Fuse epilogue ops into the kernel that produces their input.

A residual Add after a conv that will become a generated kernel is folded into it: the other
operand becomes the conv's fourth input (`attrs["residual"]`), added before the activation.
Relu, LeakyRelu and Clip after a node that `can_fuse(node)` accepts (a conv or FC layer that
will become a generated kernel) are folded into it as `attrs["activation"]`. Both only when the
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


def fuse_residual_adds(graph: Graph, can_fuse: Callable[[Graph, Node], bool]) -> None:
    """Add(conv(x), r) -> conv(x) with residual r, when both operands are same-shape 4-D
    activations (no broadcasting) and the conv has no activation yet (it applies after)."""
    for add in list(graph.nodes):
        if add.op not in ("Add", "Sum") or len(add.inputs) != 2:
            continue
        shapes = [graph.values[t].shape if t in graph.values else None for t in add.inputs]
        if (shapes[0] is None or shapes[0] != shapes[1] or len(shapes[0]) != 4
                or any(graph.const(t) is not None for t in add.inputs)):
            continue
        for src, other in (add.inputs, add.inputs[::-1]):
            conv = graph.producer(src)
            if (conv is None or conv.op != "Conv" or "activation" in conv.attrs
                    or "residual" in conv.attrs or not can_fuse(graph, conv)
                    or src in graph.outputs or len(graph.consumers(src)) != 1):
                continue
            while len(conv.inputs) < 3:
                conv.inputs.append("")
            conv.inputs.append(other)
            conv.attrs["residual"] = other
            conv.fused.append(add.op)
            conv.outputs[0] = add.outputs[0]
            graph.nodes.remove(add)
            graph.values.pop(src, None)
            break
