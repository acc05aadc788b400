"""Render a repack kernel: copy an activation from one layout into another (no LLVM calls here).

Three data movements use it: a strided conv packing its (phases 1) input into its phase-split,
possibly shifted-copies layout or into its S x S phase planes (layout.PhasePlanes: row phases
too), and Concat copying an input's channels into the output at a channel offset. The kernel
does what `dst.write(buffer, src.read(buffer, n))` does.

Blocks run along the destination phase rows: block b holds positions q in [b*V, b*V + V) of
every phase p, whose source columns are x = q*S + p - pad_left. For one b these are the S*V
consecutive source columns from b*V*S - pad_left: one load serves every phase (a shuffle picks
each phase's every S-th float). Copy k of a shifted layout holds at q - k what copy 0 holds at
q, so the same vectors are stored to every copy. Blocks that reach outside the source row or
into positions a copy does not have are rendered one by one with constant masks; the rest run
in an unmasked loop.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..kernels.layout import Layout, PhasePlanes
from .render import render, symbol


def kernel_symbol(layer: str, dst: Layout | PhasePlanes, vector_width: int) -> str:
    return symbol("sj_repack", layer, variant(dst, vector_width))


def variant(dst: Layout | PhasePlanes, vector_width: int) -> str:
    """p2s1_v16: 2 column phases, 1 copy; planes2_v16: 2 x 2 phase planes."""
    if isinstance(dst, PhasePlanes):
        return f"planes{dst.stride}_v{vector_width}"
    return f"p{dst.phases}s{dst.shifts}_v{vector_width}"


def block_columns(dst: Layout, vector_width: int, block: int) -> range:
    """The source columns (maybe outside [0, W)) block `block` loads: S*V consecutive ones."""
    span = dst.phases * vector_width
    start = block * span - dst.pad_left
    return range(start, start + span)


def block_range(width: int, dst: Layout, vector_width: int) -> range:
    """Blocks whose load holds at least one source column in [0, width)."""
    span = dst.phases * vector_width
    return range(dst.pad_left // span, -(-(width + dst.pad_left) // span))


def unmasked_blocks(width: int, dst: Layout, vector_width: int) -> range:
    """Blocks whose whole load lies inside the source row and whose lanes every copy k has
    (q >= k): they need no mask."""
    span = dst.phases * vector_width
    lo = max(-(-dst.pad_left // span), -(-(dst.shifts - 1) // vector_width))
    hi = (width + dst.pad_left) // span
    return range(lo, max(lo, hi))


def lane_masks(width: int, dst: Layout, vector_width: int, block: int) -> tuple[list[bool], dict]:
    """A block's load mask (source column inside the row) and, per (phase, copy), its store
    mask: the lane's column is inside the row and the copy has the position (q >= copy)."""
    cols = block_columns(dst, vector_width, block)
    load = [0 <= x < width for x in cols]
    stores = {}
    for p in range(dst.phases):
        for k in range(dst.shifts):
            stores[p, k] = [load[i * dst.phases + p] and block * vector_width + i >= k
                            for i in range(vector_width)]
    return load, stores


def mask_text(mask: list[bool]) -> str:
    return ", ".join("i1 true" if m else "i1 false" for m in mask)


def store_offset(dst: Layout, vector_width: int, phase: int, copy: int, block: int = 0) -> int:
    """Float offset, from copy 0's row start, of (phase, copy)'s position block*V in the row."""
    return copy * dst.shift_stride - copy + phase * dst.phase_step + block * vector_width


def edge_block(width: int, dst: Layout, vector_width: int, block: int) -> SimpleNamespace:
    """What the template needs to render one masked block."""
    load, stores = lane_masks(width, dst, vector_width, block)
    return SimpleNamespace(
        index=block, col=block_columns(dst, vector_width, block).start,
        full=all(load), load_mask=mask_text(load),
        stores=[SimpleNamespace(phase=p, copy=k, offset=store_offset(dst, vector_width, p, k, block),
                                full=all(m), mask=mask_text(m))
                for (p, k), m in stores.items() if any(m)])


def render_repack(layer: str, channels: int, src: Layout, dst: Layout, dst_channel_offset: int,
                  vector_width: int, target_name: str) -> str:
    """`void NAME(ptr in, ptr out, ptr unused, i64 n0, i64 n1, i64 c0, i64 c1)`: images
    [n0, n1), source channels [c0, c1) copied to destination channels dst_channel_offset + c."""
    assert (src.height, src.width) == (dst.height, dst.width), (src, dst)
    assert channels <= src.channels and dst_channel_offset + channels <= dst.channels, (src, dst)
    rows = SimpleNamespace(phases=1, out_row=dst.row_stride, pad_top=0, row_phase_step=0,
                           channel_offset=dst_channel_offset)
    origin = dst_channel_offset * dst.channel_stride + dst.pad_top * dst.row_stride
    return _render(layer, channels, src, dst, dst.channel_stride, origin, rows, vector_width,
                   target_name)


def render_plane_repack(layer: str, src: Layout, planes: PhasePlanes, vector_width: int,
                        target_name: str) -> str:
    """The same signature: source channels [c0, c1) of images [n0, n1) into their phase planes
    (padded row j goes to row phase j % S, plane row j // S)."""
    assert (src.height, src.width, src.channels) == (planes.height, planes.width, planes.channels)
    s, lay = planes.stride, planes.layout
    rows = SimpleNamespace(phases=s, out_row=lay.row_stride, pad_top=planes.pad_top,
                           row_phase_step=s * lay.channel_stride, channel_offset=0)
    return _render(layer, src.channels, src, planes, s * s * lay.channel_stride, 0, rows,
                   vector_width, target_name)


def _render(layer: str, channels: int, src: Layout, dst, out_ch: int, out_origin: int,
            rows: SimpleNamespace, vector_width: int, target_name: str) -> str:
    """`dst` is a Layout or PhasePlanes (its column phases, pad_left and copies); `rows` says
    where source row y goes: y * out_row, or with row phases j = y + pad_top to
    (j % phases) * row_phase_step + (j // phases) * out_row."""
    assert src.phases == 1 and src.shifts == 1, src
    v, s, w = vector_width, dst.phases, src.width
    blocks, fast = block_range(w, dst, v), unmasked_blocks(w, dst, v)
    k = SimpleNamespace(
        name=kernel_symbol(layer, dst, v), target=target_name, src=src, dst=dst,
        channels=channels, offset=rows.channel_offset, V=v, S=s, SV=s * v, H=src.height, W=w,
        in_img=src.image_stride, in_ch=src.channel_stride, in_row=src.row_stride,
        in_origin=src.pad_top * src.row_stride + src.pad_left,
        out_img=dst.image_stride, out_ch=out_ch, out_row=rows.out_row, out_origin=out_origin,
        row_phases=rows.phases, row_phase_step=rows.row_phase_step, pad_top=rows.pad_top,
        fast_lo=fast.start, fast_hi=fast.stop, fast_col=-dst.pad_left,
        prefix=[edge_block(w, dst, v, b) for b in blocks if b < fast.start],
        suffix=[edge_block(w, dst, v, b) for b in blocks if b >= fast.stop],
        fast_stores=[SimpleNamespace(phase=p, copy=c, offset=store_offset(dst, v, p, c))
                     for p in range(s) for c in range(dst.shifts)],
        phase_lanes=[", ".join(f"i32 {i * s + p}" for i in range(v)) for p in range(s)],
    )
    return render("repack.ll.j2", k=k)
