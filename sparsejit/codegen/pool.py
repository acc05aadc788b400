"""Render a pool kernel: workload + layouts -> LLVM IR text (no LLVM calls here)."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np

from ..kernels.layout import Layout
from ..kernels.pool import PoolWorkload, covers_whole_plane
from .render import float_list, float_literal, render, splat, symbol


# The separable kernel walks down a column of output blocks, which streams a large plane
# badly: AMD Zen 4, in the network, GoogLeNet (3x3 pools over 14 KB planes and smaller, 1.2-2.2x
# alone) 1.024x, CaffeNet 1.032x; but ResNet-50's 3x3 stride-2 max pool over 112 x 112 (58 KB
# planes) 0.155 -> 0.191 ms. Planes up to L1's size take it.
SEPARABLE_MAX_PLANE_BYTES = 32 * 1024


def pool_form(workload: PoolWorkload, in_layout: Layout) -> str:
    """Which kernel computes the pool: "plane" (one window over each whole plane,
    `render_plane_pool`), "separable" (windows overlapping along rows, over a small plane:
    pool_separable.ll.j2) or "window" (pool.ll.j2: any pool)."""
    if covers_whole_plane(workload):
        return "plane"
    if carried_rows(workload) and in_layout.channel_stride * 4 <= SEPARABLE_MAX_PLANE_BYTES:
        return "separable"
    return "window"


def pool_variant(workload: PoolWorkload, vector_width: int, in_layout: Layout) -> str:
    """Names the kernel: its form (unless a window pool), kind and vector width."""
    form = pool_form(workload, in_layout)
    return f"{'' if form == 'window' else form + '_'}{workload.kind}_v{vector_width}"


def kernel_symbol(layer: str, workload: PoolWorkload, vector_width: int, in_layout: Layout) -> str:
    return symbol("sj_pool", layer, pool_variant(workload, vector_width, in_layout))


def carried_rows(wl: PoolWorkload) -> int:
    """Window rows an output row shares with the next one's (whose row values the separable
    kernel carries over): KH - SY when windows overlap and rows are not dilated, else none."""
    kh, sy = wl.kernel[0], wl.strides[0]
    return kh - sy if wl.dilations[0] == 1 and sy < kh else 0


def unmasked_blocks(wl: PoolWorkload, vector_width: int) -> tuple[int, int]:
    """[lo, hi): the vector blocks of an output row whose window loads all lie inside the
    input row and whose outputs are all real, so they need no masks."""
    v, sx = vector_width, wl.strides[1]
    blocks = -(-wl.out_width // v)

    def inside(ob: int) -> bool:
        col0 = ob * v * sx - wl.pads[1]
        last = col0 + (wl.kernel[1] - 1) * wl.dilations[1] + sx * v - 1
        return (ob + 1) * v <= wl.out_width and col0 >= 0 and last < wl.width

    inner = [ob for ob in range(blocks) if inside(ob)]
    return (inner[0], inner[-1] + 1) if inner else (0, 0)


def load_masks(wl: PoolWorkload, vector_width: int) -> list[list[int]]:
    """Per block ob and window column kx: which of the SX*V loaded columns lie in the row."""
    v, sx = vector_width, wl.strides[1]
    blocks = -(-wl.out_width // v)
    masks = []
    for ob in range(blocks):
        for kx in range(wl.kernel[1]):
            start = ob * v * sx - wl.pads[1] + kx * wl.dilations[1]
            masks.append([int(0 <= start + i < wl.width) for i in range(sx * v)])
    return masks


def store_masks(wl: PoolWorkload, vector_width: int) -> list[list[int]]:
    v = vector_width
    return [[int(ob * v + i < wl.out_width) for i in range(v)] for ob in range(-(-wl.out_width // v))]


def reduction_tree(leaves: int) -> list[tuple[int, int, int]]:
    """(node, a, b) steps combining nodes 0..leaves-1 pairwise, level by level; new nodes are
    numbered from `leaves` on and the last step's node is the root (no steps for one leaf)."""
    level, steps, next_id = list(range(leaves)), [], leaves
    while len(level) > 1:
        paired = []
        for i in range(0, len(level) - 1, 2):
            steps.append((next_id, level[i], level[i + 1]))
            paired.append(next_id)
            next_id += 1
        level = paired + level[len(level) - len(level) % 2:]
    return steps


def render_pool(layer: str, wl: PoolWorkload, in_layout: Layout, out_layout: Layout,
                vector_width: int, target_name: str) -> str:
    """`void NAME(ptr in, ptr out, ptr unused, i64 n0, i64 n1, i64 c0, i64 c1)`: images
    [n0, n1), channels [c0, c1) of the pool, input and output in their (phases 1) layouts."""
    assert in_layout.phases == 1 and out_layout.phases == 1
    assert in_layout.shifts == 1 and out_layout.shifts == 1
    if pool_form(wl, in_layout) == "plane":
        return render_plane_pool(layer, wl, in_layout, out_layout, vector_width, target_name)
    v, sx = vector_width, wl.strides[1]
    blocks = -(-wl.out_width // v)
    lo, hi = unmasked_blocks(wl, v)
    init = "float 0xFFF0000000000000" if wl.kind == "max" else "float 0.0"
    tree = reduction_tree(wl.kernel[1])
    cols = np.zeros(blocks * v, np.float32)
    cols[:wl.out_width] = wl.window_counts(1)
    cols[wl.out_width:] = 1.0  # lanes past the row end are never stored: keep them finite
    k = SimpleNamespace(
        name=kernel_symbol(layer, wl, v, in_layout), target=target_name,
        workload=", ".join(f"{a}={b}" for a, b in asdict(wl).items()),
        kind=wl.kind, V=v, SX=sx, SXV=sx * v, SY=wl.strides[0],
        KH=wl.kernel[0], KW=wl.kernel[1], DY=wl.dilations[0], DX=wl.dilations[1],
        PT=wl.pads[0], PL=wl.pads[1], H=wl.height, OH=wl.out_height, OW=wl.out_width,
        OWB=blocks, inner_lo=lo, inner_hi=hi,
        in_img=in_layout.image_stride, in_ch=in_layout.channel_stride,
        in_row=in_layout.row_stride, in_origin=in_layout.pad_top * in_layout.row_stride + in_layout.pad_left,
        out_img=out_layout.image_stride, out_ch=out_layout.channel_stride,
        out_row=out_layout.row_stride,
        out_origin=out_layout.interior_origin,
        init_vec=splat(v, init), init_wide=splat(sx * v, init),
        nan_vec=splat(v, "float 0x7FF8000000000000"),
        stride_lanes=", ".join(f"i32 {i * sx}" for i in range(v)),
        tree=tree, root=tree[-1][0] if tree else 0,
        load_masks=load_masks(wl, v), store_masks=store_masks(wl, v),
        mask_vectors=v < 16,  # no mask registers: vectors of i32 (_pool_common.ll.j2)
        rows=float_list(wl.window_counts(0)), cols=float_list(cols),
        CARRY=carried_rows(wl),
    )
    separable = pool_form(wl, in_layout) == "separable"
    return render("pool_separable.ll.j2" if separable else "pool.ll.j2", k=k)


def render_plane_pool(layer: str, wl: PoolWorkload, in_layout: Layout, out_layout: Layout,
                      vector_width: int, target_name: str) -> str:
    """A pool whose one window is the whole plane, with `render_pool`'s signature: each
    channel's interior rows summed or maxed lane-wise, then reduced across the lanes."""
    assert covers_whole_plane(wl)
    v = vector_width
    full, tail = divmod(wl.width, v)
    init = "float 0xFFF0000000000000" if wl.kind == "max" else "float 0.0"
    k = SimpleNamespace(
        name=kernel_symbol(layer, wl, v, in_layout), target=target_name,
        workload=", ".join(f"{a}={b}" for a, b in asdict(wl).items()),
        kind=wl.kind, V=v, H=wl.height, W=wl.width, full=full, tail=tail,
        vectors=full + (1 if tail else 0),
        tail_mask=", ".join(f"i1 {int(i < tail)}" for i in range(v)),
        count=float_literal(float(wl.height * wl.width)),
        in_img=in_layout.image_stride, in_ch=in_layout.channel_stride, in_row=in_layout.row_stride,
        in_origin=in_layout.interior_origin,
        out_img=out_layout.image_stride, out_ch=out_layout.channel_stride,
        out_origin=out_layout.interior_origin,
        init_vec=splat(v, init),
    )
    return render("pool_plane.ll.j2", k=k)
