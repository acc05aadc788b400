"""The graph IR every pipeline stage reads and rewrites: values, nodes and the graph over networkx.

A `Graph` holds nodes in a list (their order is irrelevant: the schedule sorts them) and a table
of `Value`s keyed by tensor name. A value is either a constant (`const` holds its numpy array) or
an activation produced at run time (by a node, or a graph input). Shapes are tuples of ints once
inferred; a symbolic dimension is a str until the batch is bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from ..errors import ModelError

Dim = int | str
Shape = tuple[Dim, ...]


@dataclass
class Value:
    """A tensor: its name, dtype, shape (None while unknown), and its data if constant."""

    name: str
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    shape: Shape | None = None
    const: np.ndarray | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def static_shape(self) -> tuple[int, ...]:
        """The shape as ints; a clear error if it is unknown or still symbolic."""
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            raise ModelError(f"tensor '{self.name}' has no static shape (got {self.shape})")
        return tuple(int(d) for d in self.shape)


@dataclass
class Node:
    """One op. `attrs` hold plain Python data (ints, floats, str, lists, numpy arrays).

    `name` is the ONNX node name, or its first output when the node has none; it is how users
    refer to a layer (cm.ir("conv3")). `fused` records epilogue ops folded into this node
    (e.g. ["Relu"]), for the report.
    """

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    fused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.outputs[0] if self.outputs else self.op

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def describe(self) -> str:
        return f"node '{self.name}' ({self.op})"


@dataclass
class Graph:
    """Nodes, values, graph inputs/outputs (runtime inputs only: no constants) and the opset."""

    nodes: list[Node] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    opset: int = 13
    name: str = "model"

    # -- lookup -------------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        try:
            return self.values[name]
        except KeyError:
            raise ModelError(f"tensor '{name}' is used but never defined") from None

    def const(self, name: str) -> np.ndarray | None:
        """The constant data of tensor `name`, or None if it is computed at run time.
        The empty name (an omitted optional input) is None too."""
        if not name:
            return None
        v = self.values.get(name)
        return None if v is None else v.const

    def fresh_name(self, base: str) -> str:
        """A tensor name not used yet in the graph: `base`, or `base_2`, `base_3`..."""
        name, i = base, 1
        while name in self.values:
            i += 1
            name = f"{base}_{i}"
        return name

    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    # -- structure ----------------------------------------------------------------------------
    def to_networkx(self) -> nx.DiGraph:
        """Nodes by index; an edge producer -> consumer labelled with the tensor between them."""
        g = nx.DiGraph()
        made_by: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            g.add_node(i)
            for out in node.outputs:
                made_by[out] = i
        for i, node in enumerate(self.nodes):
            for t in node.inputs:
                if t in made_by:
                    g.add_edge(made_by[t], i, tensor=t)
        return g

    def topo_order(self) -> list[Node]:
        """Nodes in a deterministic topological order (ties broken by original position)."""
        g = self.to_networkx()
        try:
            order = list(nx.lexicographical_topological_sort(g))
        except nx.NetworkXUnfeasible:
            raise ModelError(f"graph '{self.name}' has a cycle") from None
        return [self.nodes[i] for i in order]

    def sort(self) -> None:
        self.nodes = self.topo_order()

    def remove_unused(self) -> None:
        """Drop nodes whose outputs nobody reads, and values nobody refers to."""
        live = set(self.outputs)
        kept: list[Node] = []
        for node in reversed(self.topo_order()):
            if any(o in live for o in node.outputs):
                kept.append(node)
                live.update(t for t in node.inputs if t)
        self.nodes = kept[::-1]
        used = live | set(self.inputs)
        self.values = {k: v for k, v in self.values.items() if k in used}

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)
