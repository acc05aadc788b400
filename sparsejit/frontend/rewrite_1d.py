"""Rewrite 1-D Conv and pools into 2-D ones with a height of 1, so later stages see only 2-D.

x (N, C, W) -> Unsqueeze(axes=[2]) -> (N, C, 1, W) -> 2-D op with kernel (1, k) -> Squeeze(axes=[2])
A constant conv weight is reshaped in place of an Unsqueeze. The 2-D op keeps the original node
name, so the layer is still found under the name the user knows.
"""

from __future__ import annotations

from ..graph.ir import Graph, Node, Value


def _to_2d(attrs: dict) -> dict:
    """1-D window attributes as 2-D ones with a unit height."""
    out = dict(attrs)
    if attrs.get("kernel_shape") is not None:
        out["kernel_shape"] = [1, *attrs["kernel_shape"]]
    out["strides"] = [1, *attrs["strides"]]
    out["dilations"] = [1, *attrs["dilations"]]
    begin, end = attrs["pads"]
    out["pads"] = [0, begin, 0, end]
    return out


def _unsqueezed(graph: Graph, tensor: str, owner: str, new_nodes: list[Node]) -> str:
    """`tensor` with a unit axis 2 inserted: a reshaped constant or a new Unsqueeze node."""
    out = graph.fresh_name(f"{tensor}__2d")
    data = graph.const(tensor)
    if data is not None:
        reshaped = data.reshape(data.shape[:2] + (1,) + data.shape[2:])
        graph.values[out] = Value(out, reshaped.dtype, reshaped.shape, reshaped)
        return out
    graph.values[out] = Value(out)
    new_nodes.append(
        Node("Unsqueeze", [tensor], [out], {"axes": [2]}, name=f"{owner}__unsqueeze_{tensor}")
    )
    return out


def is_1d(node: Node) -> bool:
    """A Conv or pool whose (normalised) window attributes are one-dimensional."""
    return node.op in ("Conv", "MaxPool", "AveragePool") and len(node.attrs["strides"]) == 1


def rewrite_1d(graph: Graph, node: Node) -> list[Node]:
    """The nodes that replace the 1-D `node`: Unsqueeze(s), the 2-D op, a Squeeze."""
    new_nodes: list[Node] = []
    inputs = [_unsqueezed(graph, node.inputs[0], node.name, new_nodes)]
    if node.op == "Conv":
        inputs.append(_unsqueezed(graph, node.inputs[1], node.name, new_nodes))
        inputs.extend(node.inputs[2:])  # the bias (M,) is unchanged
    y = node.outputs[0]
    y2d = graph.fresh_name(f"{y}__2d")
    graph.values[y2d] = Value(y2d)
    new_nodes.append(Node(node.op, inputs, [y2d], _to_2d(node.attrs), name=node.name))
    new_nodes.append(Node("Squeeze", [y2d], [y], {"axes": [2]}, name=f"{node.name}__squeeze"))
    return new_nodes


def rewrite_all_1d(graph: Graph) -> None:
    """Replace every 1-D Conv/MaxPool/AveragePool of the graph by its 2-D form."""
    nodes: list[Node] = []
    for node in graph.nodes:
        nodes.extend(rewrite_1d(graph, node) if is_1d(node) else [node])
    graph.nodes = nodes
