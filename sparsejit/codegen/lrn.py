"""Render the LRN kernel: workload + layouts + vector width -> LLVM IR text (no LLVM calls here)."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

from ..kernels.layout import Layout
from ..kernels.lrn import LRNWorkload, flat_plane
from .render import float_literal, render, splat, symbol


def kernel_symbol(layer: str, vector_width: int) -> str:
    return symbol("sj_lrn", layer, f"v{vector_width}")


def render_lrn(layer: str, workload: LRNWorkload, in_layout: Layout, out_layout: Layout,
               vector_width: int, target_name: str) -> str:
    """`void NAME(ptr in, ptr out, ptr unused, i64 n0, i64 n1, i64 c0, i64 c1)`: images [n0, n1)
    and output channels [c0, c1), read from the interior of `in_layout` and written to the
    interior of `out_layout` (pads are neither read nor written)."""
    workload.check_layout(in_layout, "input")
    workload.check_layout(out_layout, "output")
    if vector_width not in (4, 8, 16):
        raise ValueError(f"LRN vector width must be 4, 8 or 16, not {vector_width}")
    if workload.power_form is None:
        raise ValueError(f"LRN beta {workload.beta}: the kernel raises to 0.5, 0.75 or 1 only")
    v = vector_width
    flat = flat_plane(workload, in_layout, out_layout)
    rows, row_floats = (1, workload.height * workload.width) if flat else (workload.height, workload.width)
    tail = row_floats % v
    k = SimpleNamespace(
        name=kernel_symbol(layer, v), target=target_name,
        workload=", ".join(f"{a}={b}" for a, b in asdict(workload).items()),
        layouts=f"in {_describe(in_layout)}; out {_describe(out_layout)}",
        V=v, C=workload.channels, SIZE=workload.size, BEFORE=workload.before, AFTER=workload.after,
        ROWS=rows, NV=row_floats // v, TAIL=tail, flat=flat,
        in_img=in_layout.image_stride, in_ch=in_layout.channel_stride, in_row=in_layout.row_stride,
        in_origin=in_layout.interior_origin,
        out_img=out_layout.image_stride, out_ch=out_layout.channel_stride,
        out_row=out_layout.row_stride, out_origin=out_layout.interior_origin,
        tail_mask=", ".join(f"i1 {'true' if i < tail else 'false'}" for i in range(v)),
        power=workload.power_form,
        scale_vec=splat(v, f"float {float_literal(workload.scale)}"),
        bias_vec=splat(v, f"float {float_literal(workload.bias)}"),
    )
    return render("lrn.ll.j2", k=k)


def _describe(layout: Layout) -> str:
    return (f"pad_top={layout.pad_top} pad_left={layout.pad_left} rows={layout.rows} "
            f"row_stride={layout.row_stride} image_stride={layout.image_stride}")
