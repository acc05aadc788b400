"""Render a direct-conv kernel: plan + pattern + layouts -> LLVM IR text (no LLVM calls here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np

from ..kernels.direct_conv import (LANES_WIDTHS, ConvWorkload, DirectConvPlan, Epilogue, Pattern,
                                   lanes_walk, origin, shifted_sums_misfit, split_output_rows,
                                   tails_into_padding, tiles)
from ..kernels.layout import Layout
from .render import byte_string, float_list, float_literal, i32_list, render, splat, symbol

TEMPLATES = {"table": "conv_direct_table.ll.j2", "unrolled": "conv_direct_unrolled.ll.j2",
             "lanes": "conv_dense_lanes.ll.j2"}
# A table kernel with one tile per image (a pruned FC with the batch in the lanes, a small map
# run in one tile) streams its table once per image, which a large table does from L3 or DRAM:
# it prefetches the table this far ahead into L2. AMD Zen 4: CaffeNet's fc6 / fc7 / fc8 at batch
# 8 4.7 / 3.4 / 1.4 -> 3.0 / 2.3 / 1.0 ms (the hardware prefetcher alone kept fc6 near 6.5 GB/s,
# as in the row kernel: kernels/sparse_fc.py); in ResNet-50 (in-network A/B) the 7 x 7 layers
# (0.8-1.9 MB tables) 1.02-1.14x, the 14 x 14 3x3 convs in one tile (470 KB) 0.97-1.00x, the
# layers of two tiles 0.97-1.05x (not taken).
TABLE_PREFETCH_BYTES = 8192
PREFETCH_MIN_TABLE_BYTES = 512 * 1024


def next_block_prefetch(plan: DirectConvPlan, out_layout: Layout, residual: Layout | None) -> int:
    """Floats from a block's output cells to the next block's (same tile, MB channels on), which
    a table kernel fetches for writing while this block computes; 0 for none. Only where the
    blocks are a tile's inner loop: the next block's cells, one channel plane on, are not a
    stream the hardware prefetcher follows, and each was an L2 or L3 miss when first stored to.
    AMD Zen 4, paired in-process A/B at batch 1 on one thread: ResNet-50 1.033-1.037x (its
    56 x 56 3x3 convs 1.2x), GoogLeNet 1.065x, VGG-16 1.030x, CaffeNet 1.026x; ResNet-50 1.026x at
    batch 8, 1.011x on two threads. Not with a fused residual, whose first read already pulls each
    cell in (it overwrites that residual, runtime/buffers.py): 1.003x in the network, 0.94-0.96x
    for those convs alone."""
    if plan.form != "table" or plan.loop_order == "block_tile" or residual is not None:
        return 0
    return plan.channels_per_block * out_layout.channel_stride


# A table kernel running every pass inside a tile ("tile_chunk_block") over tiles of whole rows
# reads, at each tile and pass, RB x SH new input rows of each of the pass's channels: a row
# in each of 16-64 channel planes, more streams than the hardware prefetcher follows. Where an
# image's input and output together exceed half of L3 they come from DRAM, so each channel block
# fetches its share of the next tile's new rows into L2. AMD Zen 4, VGG-16 conv1_2 (13 + 13 MB)
# in the network: 1.079x on one thread, 1.034x on two (its output prefetched a tile ahead too:
# 0.99x); conv2_1 and conv2_2, whose input stays in L3, 1.00x / 0.98x on one, 0.95x on two.
NEXT_TILE_INPUT_MIN_BYTES = 16 << 20


@dataclass(frozen=True)
class NextTileInput:
    """What a block of a pass prefetches: its share of the `lines` (channels x rows x
    row_lines) of the next tile's new input rows, `skip` floats past the tile's input base."""
    lines: int
    row_lines: int
    rows: int
    skip: int
    row_stride: int
    channel_stride: int
    chunk: int  # input channels per pass


def next_tile_input(workload: ConvWorkload, plan: DirectConvPlan, pattern: Pattern,
                    in_layout: Layout, out_layout: Layout) -> NextTileInput | None:
    """The next tile's new input rows a table kernel prefetches, or None: only with passes
    inside tiles of whole rows (the next tile lies RB rows down), plain input rows, and an
    image's input and output over NEXT_TILE_INPUT_MIN_BYTES."""
    ty, tx = tiles(workload, plan)
    if (plan.form != "table" or plan.loop_order != "tile_chunk_block" or pattern.chunks < 2
            or tx != 1 or ty < 2 or workload.group != 1 or in_layout.phases != 1
            or workload.flat_stride
            or 4 * (in_layout.image_stride + out_layout.image_stride) <= NEXT_TILE_INPUT_MIN_BYTES):
        return None
    (kh, kw), (sh, sw), (dh, dw) = workload.kernel, workload.strides, workload.dilations
    v = plan.vector_width
    # a row's reach, a vector more for shifted sums' aligned loads; the first line may be partial
    width = (plan.vectors_per_row * v - 1) * sw + (kw - 1) * dw + 1 + v
    row_lines = -(-width // 16) + 1
    rows = plan.rows_per_tile * sh
    chunk = -(-workload.in_channels // pattern.chunks)
    extent = (plan.rows_per_tile - 1) * sh + (kh - 1) * dh + 1
    return NextTileInput(chunk * rows * row_lines, row_lines, rows, extent * in_layout.row_stride,
                         in_layout.row_stride, in_layout.channel_stride, chunk)


def kernel_symbol(layer: str, plan: DirectConvPlan) -> str:
    return symbol("sj_conv", layer, plan.variant())


def render_direct_conv(layer: str, workload: ConvWorkload, plan: DirectConvPlan, pattern: Pattern,
                       bias: np.ndarray, epilogue: Epilogue, in_layout: Layout,
                       out_layout: Layout, target_name: str,
                       residual: Layout | None = None) -> str:
    """The IR module of one conv layer's kernel:
    `void NAME(ptr in, ptr out, ptr res, i64 n0, i64 n1, i64 b0, i64 b1)` computes images
    [n0, n1) and channel blocks [b0, b1); with `residual` (a fused Add), it adds the tensor at
    `res` (in that layout) before the activation, else `res` is unused."""
    assert out_layout.phases == 1 and (residual is None or residual.phases == 1)
    if plan.form == "lanes":
        return _render_lanes(layer, workload, plan, pattern, bias, epilogue, in_layout, out_layout,
                             target_name, residual)
    v = plan.vector_width
    ty, tx = tiles(workload, plan)
    sh = workload.strides[0]
    mb = plan.channels_per_block
    if plan.shifted_sums and (misfit := shifted_sums_misfit(workload, in_layout, plan)):
        raise ValueError(f"{layer}: {misfit}")  # its sums would be wrong, not slow
    split_row = split_output_rows(workload, out_layout)
    # a vector spans at most two output rows; the split stores know no residual
    assert not split_row or (split_row >= v and residual is None), (layer, workload, out_layout)
    table = np.concatenate([pattern.offsets[:, None].astype(np.int32),
                            pattern.weights.view(np.int32)], axis=1)
    k = SimpleNamespace(
        **_described(layer, workload, plan, pattern, target_name),
        **_epilogue_fields(v, epilogue, residual),
        V=v, RB=plan.rows_per_tile, CB=plan.vectors_per_row, MB=mb, UK=plan.unroll,
        sets=plan.unroll if plan.split_accumulators else 1,
        # rows and positions per row the kernel tiles (a flat run: one row, see flat_rows)
        M=workload.out_channels, P=workload.tile_rows, Q=workload.tile_width, TY=ty, TX=tx,
        flat_stride=workload.flat_stride,
        flat_stride_vec=splat(v, f"i32 {workload.flat_stride}"),
        out_width_vec=splat(v, f"i32 {workload.out_width}"),
        tail_store=tails_into_padding(workload, out_layout, v),
        split_row=split_row,
        split_gap=out_layout.row_stride - split_row,
        in_img=in_layout.image_stride,
        in_tile_row=sh * in_layout.row_stride,
        in_origin=origin(workload, in_layout),
        # shifted sums: group g's frame, and the lanes the sums rotate by after each group
        NS=pattern.groups, frames=pattern.frames,
        rotate_by=[a - b for a, b in zip(pattern.frames, pattern.frames[1:] + (0,))],
        rotate=[", ".join(f"i32 {i + n}" for i in range(v)) for n in range(v + 1)],
        acc_offset=[[r * sh * in_layout.row_stride + c * v for c in range(plan.vectors_per_row)]
                    for r in range(plan.rows_per_tile)],
        out_img=out_layout.image_stride,
        out_ch=out_layout.channel_stride,
        out_row=out_layout.row_stride,
        out_origin=out_layout.interior_origin,
        iota=", ".join(f"i32 {i}" for i in range(v)),
        # lane positions are i32: one compare per mask, not two (a plane is < 2**31 floats)
        Qvec=splat(v, f"i32 {workload.tile_width}"),
        starts=i32_list(pattern.segment_start),
        NCH=pattern.chunks,
        order=plan.loop_order,
        split=plan.split,
        **inside(workload, plan, pattern.blocks),
        prefetch=TABLE_PREFETCH_BYTES if ty * tx == 1 and table.nbytes > PREFETCH_MIN_TABLE_BYTES else 0,
        bias=float_list(bias),
        next_block_cells=next_block_prefetch(plan, out_layout, residual),
        next_tile=next_tile_input(workload, plan, pattern, in_layout, out_layout),
        table=byte_string(table.astype("<i4")),
        table_bytes=table.size * 4,
        weights=byte_string(pattern.weights.astype("<f4")) if plan.form == "unrolled" else "",
        weights_bytes=pattern.weights.size * 4,
        block_entries=_block_entries(pattern) if plan.form == "unrolled" else [],
    )
    if plan.form == "unrolled" and pattern.weights.size == 0:
        k.weights, k.weights_bytes = "\\00\\00\\00\\00", 4
    return render(TEMPLATES[plan.form], k=k)


def _described(layer: str, workload: ConvWorkload, plan: DirectConvPlan, pattern: Pattern,
               target_name: str) -> dict:
    """The fields naming a kernel and what its header comment says about it."""
    return dict(
        name=kernel_symbol(layer, plan),
        template=TEMPLATES[plan.form],
        target=target_name,
        digest=pattern.digest[:16],
        plan=", ".join(f"{key}={val}" for key, val in asdict(plan).items()),
        workload=", ".join(f"{key}={val}" for key, val in asdict(workload).items()),
        nonzeros=pattern.nonzeros,
        entries=pattern.entries,
        blocks=pattern.blocks,
    )


def _epilogue_fields(v: int, epilogue: Epilogue, residual: Layout | None) -> dict:
    """The fields of the epilogue: the activation's constants and the residual's layout."""
    return dict(
        activation=epilogue.activation,
        residual=residual is not None,
        res_img=residual.image_stride if residual else 0,
        res_ch=residual.channel_stride if residual else 0,
        res_row=residual.row_stride if residual else 0,
        res_origin=residual.interior_origin if residual else 0,
        alpha_vec=splat(v, f"float {float_literal(epilogue.alpha)}"),
        clip_min_vec=splat(v, f"float {float_literal(epilogue.clip_min)}"),
        clip_max_vec=splat(v, f"float {float_literal(epilogue.clip_max)}"),
    )


def inside(workload: ConvWorkload, plan: DirectConvPlan, blocks: int) -> dict[str, list[bool]]:
    """What holds in every tile and block, so the kernel need not test it: channel j of every
    block is a real output channel (`chan_inside`), row r of every tile an output row
    (`row_inside`), vector c of every tile starts before the row's end (`vector_inside`) or
    lies wholly within it (`lanes_inside`; never in a flat run, whose lanes between rows are
    not outputs). The last block and tile are the ones that can fall short."""
    v, rb, cb, mb = plan.vector_width, plan.rows_per_tile, plan.vectors_per_row, plan.channels_per_block
    ty, tx = tiles(workload, plan)
    last_y, last_x = (ty - 1) * rb, (tx - 1) * cb * v
    q = workload.tile_width
    return {
        "chan_inside": [(blocks - 1) * mb + j < workload.out_channels for j in range(mb)],
        "row_inside": [last_y + r < workload.tile_rows for r in range(rb)],
        "vector_inside": [last_x + c * v < q for c in range(cb)],
        "lanes_inside": [not workload.flat_stride and last_x + (c + 1) * v <= q for c in range(cb)],
    }


def _block_entries(pattern: Pattern) -> list[SimpleNamespace]:
    """Per block, the unrolled form's straight-line code: for each entry (entry index, input
    offset, [(channel j, index of j's previous FMA or -1)]) and each channel's last FMA (or -1).
    A channel's zero weights at the block's union positions get no FMA: channels of a block
    share each loaded input vector, not the work of each other's nonzeros."""
    starts, w = pattern.segment_start, pattern.weights
    blocks = []
    for b in range(pattern.blocks):
        last = [-1] * w.shape[1]
        entries = []
        for i, e in enumerate(range(int(starts[b]), int(starts[b + 1]))):
            uses = [(j, last[j]) for j in np.flatnonzero(w[e]).tolist()]
            for j, _ in uses:
                last[j] = i
            entries.append((e, int(pattern.offsets[e]), uses))
        blocks.append(SimpleNamespace(entries=entries, last=last))
    return blocks


def _render_lanes(layer: str, workload: ConvWorkload, plan: DirectConvPlan, pattern: Pattern,
                  bias: np.ndarray, epilogue: Epilogue, in_layout: Layout, out_layout: Layout,
                  target_name: str, residual: Layout | None) -> str:
    """The lanes form's module (templates/conv_dense_lanes.ll.j2): same signature as the table
    kernels', its channel blocks `channels_per_block` channels each (whole vectors)."""
    v, mb = plan.vector_width, plan.channels_per_block
    assert v in LANES_WIDTHS and mb % v == 0 and pattern.weights.shape[1] == mb, (layer, plan)
    walk = lanes_walk(workload, plan, in_layout, out_layout)
    full, rest = divmod(walk.columns, walk.positions)
    chunks = plan.chunks(workload.in_channels // workload.group)
    assert pattern.segment_start.size == chunks * pattern.blocks + 1, (layer, plan)
    m = workload.out_channels
    padded_bias = np.zeros(pattern.blocks * mb, np.float32)
    padded_bias[:m] = bias
    offsets = pattern.offsets.astype(np.int32) if pattern.entries else np.zeros(1, np.int32)
    weights = pattern.weights.astype("<f4") if pattern.entries else np.zeros(mb, "<f4")
    stages, transposed = transpose_plan(v)
    k = SimpleNamespace(
        **_described(layer, workload, plan, pattern, target_name),
        **_epilogue_fields(v, epilogue, residual),
        V=v, MB=mb, W=mb // v, M=m,
        rows=walk.rows, columns=walk.columns, P=walk.positions, full=full, rest=rest,
        wide=wide_blocks(walk.columns, walk.positions, full, v),
        chunks=chunks, outer="chunk" if chunks > 1 else "image",
        rows_outer=plan.loop_order == "tile_block",
        count_masks={n: ", ".join("i1 true" if i < n else "i1 false" for i in range(v))
                     for n in (walk.positions, rest)},
        chan_inside=[(pattern.blocks - 1) * mb + c < m for c in range(mb)],
        in_img=in_layout.image_stride,
        in_row=walk.in_row,
        in_origin=origin(workload, in_layout),
        out_img=out_layout.image_stride,
        out_ch=out_layout.channel_stride,
        out_row=out_layout.row_stride,
        out_origin=out_layout.interior_origin,
        starts=i32_list(pattern.segment_start),
        offsets=i32_list(offsets),
        offsets_count=len(offsets),
        weights=byte_string(weights),
        weights_bytes=weights.size * 4,
        bias=float_list(padded_bias),
        transpose=stages,
        transposed=transposed,
    )
    return render(TEMPLATES["lanes"], k=k)


# Vector widths without mask registers (AVX2): there the lanes form stores whole vectors where it
# may (templates/conv_dense_lanes.ll.j2: epilogue), a masked store (vmaskmovps) being slow. AMD
# Zen 3, unpruned 3x3 convs in blocks of 6 positions, one conv alone, old and new alternated in
# one process (12 rounds): 64 -> 64 on 56 x 56 and 128 -> 128 on 28 x 28 1.06x, on 112 x 112
# 1.00x; unpruned ResNet-50 1.02x (within this VM's noise: unchanged layers moved 0.93-1.2x).
WIDE_STORE_WIDTHS = (8,)


def wide_blocks(columns: int, positions: int, full: int, v: int) -> int:
    """How many of a row's `full` blocks of `positions` (< v) a lanes kernel stores as whole
    vectors: those ending at least a vector before the row does (a whole vector from a later
    one would cross the row's end). 0 on widths with mask registers and for full vectors."""
    if v not in WIDE_STORE_WIDTHS or positions >= v:
        return 0
    return min(full, max(0, (columns - v) // positions + 1))


def transpose_plan(v: int) -> tuple[list[SimpleNamespace], list[int]]:
    """Shuffles transposing v rows of v lanes (values 0..v-1; each shuffle's result is the next
    value number) and the value holding each column: interleave 32-bit then 64-bit pairs within
    128-bit lanes, then gather 128-bit lanes (in two steps for v = 16). Each is one two-input
    instruction: for v = 16 64 of them (vunpck*, vshuff32x4), for v = 8 24 (vunpck*, vshufps,
    vperm2f128). Checked against numpy by the tests."""
    assert v in LANES_WIDTHS, v
    stages: list[SimpleNamespace] = []

    def shuffle(a: int, b: int, mask: list[int]) -> int:
        stages.append(SimpleNamespace(dst=v + len(stages), a=a, b=b,
                                      mask=", ".join(f"i32 {i}" for i in mask)))
        return stages[-1].dst

    def within_lanes(pattern: list[int]) -> list[int]:
        return [lane * 4 + i if i < 4 else v + lane * 4 + i - 4 for lane in range(v // 4) for i in pattern]

    lo32, hi32 = within_lanes([0, 4, 1, 5]), within_lanes([2, 6, 3, 7])
    lo64, hi64 = within_lanes([0, 1, 4, 5]), within_lanes([2, 3, 6, 7])

    def lanes_of(picks: list[tuple[int, int]]) -> list[int]:
        return [src * v + lane * 4 + i for src, lane in picks for i in range(4)]

    # pairs[2i], pairs[2i + 1]: rows 2i and 2i + 1 interleaved; quads[4g + c]: rows 4g..4g+3 of
    # column c (and c + 4, c + 8, ... in the 128-bit lanes above)
    pairs = [x for i in range(v // 2) for x in (shuffle(2 * i, 2 * i + 1, lo32), shuffle(2 * i, 2 * i + 1, hi32))]
    quads: list[int] = []
    for g in range(v // 4):
        t0, t1, t2, t3 = pairs[4 * g:4 * g + 4]
        quads += [shuffle(t0, t2, lo64), shuffle(t0, t2, hi64), shuffle(t1, t3, lo64), shuffle(t1, t3, hi64)]
    columns = [0] * v
    if v == 8:
        for j in range(4):
            for h in range(2):
                columns[4 * h + j] = shuffle(quads[j], quads[4 + j], lanes_of([(0, h), (1, h)]))
        return stages, columns
    for j in range(4):
        for h in range(2):
            halves = lanes_of([(0, 2 * h), (0, 2 * h + 1), (1, 2 * h), (1, 2 * h + 1)])
            a = shuffle(quads[j], quads[4 + j], halves)
            b = shuffle(quads[8 + j], quads[12 + j], halves)
            for e in range(2):
                picks = [(0, e), (0, 2 + e), (1, e), (1, 2 + e)]
                columns[4 * (2 * h + e) + j] = shuffle(a, b, lanes_of(picks))
    return stages, columns
