"""Merge two pointwise convs whose outputs are summed into one conv over their joined inputs.

A ResNet block that changes shape adds two 1x1 convs: conv3 over the block's last activation and
the downsample over its input. Run apart, the downsample writes a whole output tensor that conv3
then reads back as its residual, and each conv stores every output once per few nonzeros (64 of
them per output at 10 % of 64 channels is ~6 FMAs per store). As one conv over the two inputs
joined along channels, weights [Wa | Wb] and bias ba + bb, the sum never leaves the registers.
A strided operand is first subsampled (a 1x1 MaxPool with its strides: what lowering does for a
strided 1x1 conv anyway).

    Add(Conv(a, Wa, ba), Conv(b, Wb, bb))  ->  Conv(Concat(a, MaxPool1x1_s(b)), [Wa | Wb], ba + bb)

The result differs from the two convs only in the order of the float additions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ir import Graph, Node, Value


def _pointwise_conv(graph: Graph, tensor: str, add: Node) -> Node | None:
    """The ungrouped, unpadded 1x1 Conv with constant weights producing `tensor` for `add` only."""
    conv = graph.producer(tensor)
    if conv is None or conv.op != "Conv" or tensor in graph.outputs:
        return None
    if any(n is not add for n in graph.consumers(tensor)):
        return None
    a = conv.attrs
    w = graph.const(conv.inputs[1])
    if w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or w.dtype != np.float32:
        return None
    if len(conv.inputs) > 2 and conv.inputs[2] and graph.const(conv.inputs[2]) is None:
        return None
    if (int(a.get("group", 1)) != 1 or any(a.get("pads", ())) or a.get("auto_pad", "NOTSET") != "NOTSET"
            or any(d != 1 for d in a.get("dilations", ())) or "residual" in a or "activation" in a):
        return None
    x = graph.values.get(conv.inputs[0])
    if x is None or x.const is not None or x.shape is None or len(x.shape) != 4:
        return None
    return conv


def _bias(graph: Graph, conv: Node, channels: int) -> np.ndarray:
    if len(conv.inputs) > 2 and conv.inputs[2]:
        return graph.const(conv.inputs[2]).astype(np.float32).reshape(-1)
    return np.zeros(channels, np.float32)


def merge_summed_pointwise_convs(graph: Graph,
                                 compatible: Callable[[np.ndarray, np.ndarray], bool]) -> None:
    """Rewrite every Add of two pointwise convs' outputs (same shape, each read by the Add
    alone, at most one of the two strided) as one conv over their concatenated inputs, where
    `compatible(wa, wb)` accepts their weights (lowering would block both alike: a pruned and
    a dense conv kept apart, or the pruned one would run dense)."""
    for add in list(graph.nodes):
        if add.op not in ("Add", "Sum") or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            continue
        convs = [_pointwise_conv(graph, t, add) for t in add.inputs]
        if any(c is None for c in convs):
            continue
        shapes = [graph.values[t].shape for t in add.inputs]
        if shapes[0] != shapes[1] or graph.values[add.outputs[0]].shape != shapes[0]:
            continue
        # the stride-1 conv first: its input is the one read at every position as it is
        convs.sort(key=lambda c: tuple(c.attrs.get("strides", (1, 1))) != (1, 1))
        first, second = convs
        if tuple(first.attrs.get("strides", (1, 1))) != (1, 1):
            continue
        if not compatible(graph.const(first.inputs[1]), graph.const(second.inputs[1])):
            continue
        _merge(graph, add, first, second)


def _merge(graph: Graph, add: Node, first: Node, second: Node) -> None:
    wa, wb = graph.const(first.inputs[1]), graph.const(second.inputs[1])
    out = add.outputs[0]
    a_in, b_in = first.inputs[0], second.inputs[0]
    n, _, h, w = graph.values[out].shape
    strides = tuple(second.attrs.get("strides", (1, 1)))
    if strides != (1, 1):
        sub = graph.fresh_name(f"{second.name}:subsample")
        graph.values[sub] = Value(sub, np.dtype(np.float32), (n, wb.shape[1], h, w))
        graph.nodes.append(Node("MaxPool", [b_in], [sub], name=sub, attrs={
            "kernel_shape": [1, 1], "strides": list(strides), "dilations": [1, 1],
            "pads": [0, 0, 0, 0], "auto_pad": "NOTSET", "ceil_mode": 0, "storage_order": 0}))
        b_in = sub
    name = f"{first.name}+{second.name}"
    joined = graph.fresh_name(f"{name}:inputs")
    graph.values[joined] = Value(joined, np.dtype(np.float32), (n, wa.shape[1] + wb.shape[1], h, w))
    graph.nodes.append(Node("Concat", [a_in, b_in], [joined], name=joined, attrs={"axis": 1}))
    weight = np.concatenate([wa, wb], axis=1)
    bias = _bias(graph, first, wa.shape[0]) + _bias(graph, second, wb.shape[0])
    w_name, b_name = graph.fresh_name(f"{name}__W"), graph.fresh_name(f"{name}__B")
    graph.values[w_name] = Value(w_name, weight.dtype, weight.shape, weight)
    graph.values[b_name] = Value(b_name, bias.dtype, bias.shape, bias)
    conv = Node("Conv", [joined, w_name, b_name], [out], name=name, attrs={
        "kernel_shape": [1, 1], "strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0],
        "auto_pad": "NOTSET", "group": 1})
    conv.fused = ["Add"]
    for old in (first, second, add):
        graph.nodes.remove(old)
    graph.nodes.append(conv)
    for t in (first.outputs[0], second.outputs[0]):
        graph.values.pop(t, None)
    for t in first.inputs[1:] + second.inputs[1:]:  # the old weights, unless shared
        if t and t not in graph.outputs and not graph.consumers(t):
            graph.values.pop(t, None)
