"""What shape rules share: the `Info` of a tensor, their two exceptions, broadcasting.

A shape rule gets the node and one `Info` per input (None for an omitted one) and returns one
`Info` per output. Dims may be ints or symbolic strs (an unbound batch); a rule that needs the
size of a symbolic dim raises `SymbolicDim`, one that needs a value only known at run time
raises `Unknown`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError
from .ir import Dim, Node, Shape


@dataclass
class Info:
    """What is known of a tensor during inference: shape, dtype, and its data if computable."""

    shape: Shape
    dtype: np.dtype
    value: np.ndarray | None = None


class SymbolicDim(Exception):
    """A rule needs the size of a symbolic dim."""


class Unknown(Exception):
    """A rule needs data known only at run time (the message says which)."""


Rule = Callable[[Node, list[Info | None]], list[Info]]


# -- helpers ----------------------------------------------------------------------------------
def as_int(d: Dim) -> int:
    if isinstance(d, str):
        raise SymbolicDim(d)
    return int(d)


def product(dims: Shape) -> Dim:
    """Product of dims; a single (possibly symbolic) dim is itself."""
    if len(dims) == 1:
        return dims[0]
    return int(np.prod([as_int(d) for d in dims], dtype=np.int64))


def broadcast(node: Node, shapes: list[Shape]) -> Shape:
    """Multidirectional (numpy) broadcasting of shapes with possibly symbolic dims."""
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0}
        dims.discard(1)
        ints = {d for d in dims if isinstance(d, int)}
        if len(ints) > 1:
            raise ModelError(f"{node.describe()}: shapes {shapes} do not broadcast")
        # A symbolic dim meeting a number must be that number (checked at run time).
        out.append(ints.pop() if ints else (min(dims) if dims else 1))
    return tuple(out)


def known_value(info: Info | None, node: Node, what: str) -> np.ndarray:
    if info is None or info.value is None:
        raise Unknown(f"its {what} input is only known at run time")
    return info.value


def setting_value(node: Node, ins: list[Info | None], index: int, attr: str, what: str):
    """A config setting: the attribute, or the (known) value of input `index`."""
    if index < len(ins) and ins[index] is not None:
        return known_value(ins[index], node, what)
    return node.attrs.get(attr)


def same(node: Node, ins: list[Info | None]) -> list[Info]:
    return [Info(ins[0].shape, ins[0].dtype)]

