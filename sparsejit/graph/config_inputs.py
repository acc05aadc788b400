"""Move constant configuration inputs (axes, pads, min/max, slice bounds...) into node attributes.

Newer opsets pass small settings as tensor inputs where older ones used attributes. Once such an
input is a constant, it is moved into `node.attrs` under the attribute name and its input slot is
emptied, so later stages read one form. An input that is only known at run time stays an input;
the reference reads the input first and the attribute otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ir import Graph, Node

# op -> ((input index, attribute name), ...)
CONFIG_INPUTS: dict[str, tuple[tuple[int, str], ...]] = {
    "Clip": ((1, "min"), (2, "max")),
    "Squeeze": ((1, "axes"),),
    "Unsqueeze": ((1, "axes"),),
    "Pad": ((1, "pads"), (2, "value"), (3, "axes")),
    "Slice": ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")),
    "Split": ((1, "split"),),
    "ReduceMean": ((1, "axes"),),
    "Dropout": ((1, "ratio"), (2, "training_mode")),
}

# Attributes that are scalars (the others are lists of ints).
_SCALAR_ATTRS = {"min", "max", "value", "ratio", "training_mode"}


def to_attr(name: str, data: np.ndarray) -> Any:
    """A constant input as the plain Python attribute value it stands for."""
    if name in _SCALAR_ATTRS:
        return np.asarray(data).reshape(-1)[0].item()
    return [int(v) for v in np.asarray(data).reshape(-1)]


def absorb_const_inputs(graph: Graph, node: Node) -> bool:
    """Move `node`'s constant configuration inputs into its attributes; True if any moved."""
    moved = False
    for index, attr in CONFIG_INPUTS.get(node.op, ()):
        if index >= len(node.inputs) or not node.inputs[index]:
            continue
        data = graph.const(node.inputs[index])
        if data is None:
            continue
        node.attrs[attr] = to_attr(attr, data)
        node.inputs[index] = ""
        moved = True
    # Omitted trailing inputs are simply absent, as in ONNX.
    while len(node.inputs) > 1 and not node.inputs[-1]:
        node.inputs.pop()
    return moved


def absorb_all(graph: Graph) -> None:
    """Absorb constant configuration inputs of every node."""
    for node in graph.nodes:
        absorb_const_inputs(graph, node)
