"""Render a strided 2-D copy kernel (templates/strided_copy.ll.j2; no LLVM calls here)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from .render import render, symbol


@dataclass(frozen=True)
class StridedView:
    """Element (i, j) of a 2-D view lives at float offset origin + i * row + j * col."""

    origin: int
    row: int
    col: int


def kernel_symbol(layer: str) -> str:
    return symbol("sj_copy", layer)


def render_strided_copy(layer: str, src: StridedView, dst: StridedView, cols: int,
                        target_name: str) -> str:
    """`void NAME(ptr in, ptr out, ptr unused, i64 n0, i64 n1, i64 i0, i64 i1)`: rows [i0, i1)
    of `cols` elements each from the view `src` of `in` to the view `dst` of `out`."""
    if cols < 1:
        raise ValueError(f"a strided copy needs at least one column, got {cols}")
    k = SimpleNamespace(name=kernel_symbol(layer), target=target_name, J=cols,
                        IN_ORIGIN=src.origin, IN_I=src.row, IN_J=src.col,
                        OUT_ORIGIN=dst.origin, OUT_I=dst.row, OUT_J=dst.col)
    return render("strided_copy.ll.j2", k=k)
