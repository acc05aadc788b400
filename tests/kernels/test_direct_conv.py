"""The direct-conv kernel family against the numpy reference, on every target the host runs.

Sweeps kernel sizes 1/3/5/7/11, strides 1/2/4, pads, dilations, groups incl. depthwise, batch 1
and 3, densities 0 / one nonzero / 0.05 / 0.5 / 1, output widths below, at, above and at
multiples of the vector width, both forms (table and unrolled), and blockings around the edges.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import replace

import numpy as np
import pytest

from sparsejit import targets
from sparsejit.errors import InvalidPlanError
from sparsejit.kernels import select
from sparsejit.kernels.direct_conv import (LOOP_ORDERS, ConvWorkload, DirectConvPlan, flat_pays, flat_rows,
                                          entry_frames, frame_lanes, parallel_units, plane_conv,
                                          plane_row_floats, plane_weights, shifted_sums_misfit,
                                          split_output_rows, tails_into_padding, tap_offsets)
from sparsejit.kernels.reference import conv2d
from sparsejit.kernels.layout import Layout
from sparsejit.lower import flattened

from .conv_harness import ConvCase, run_case, runnable_targets, with_plan

TARGETS = runnable_targets()
WIDTHS = {"sse": 4, "avx2": 8, "avx512": 16}


def _width_cases(v: int) -> list[ConvCase]:
    """3x3 pad-1 convs whose output width is below, at, above and a multiple of the vector."""
    return [ConvCase(5, 6, w, 7, (3, 3), pads=(1, 1, 1, 1), density=0.5)
            for w in sorted({1, v - 1, v, v + 1, 2 * v, 3 * v - 1})]


SHAPES = [
    # kernel sizes
    ConvCase(3, 9, 11, 4, (1, 1)),
    ConvCase(6, 13, 13, 8, (3, 3), pads=(1, 1, 1, 1)),
    ConvCase(4, 12, 14, 5, (5, 5), pads=(2, 2, 2, 2)),
    ConvCase(3, 15, 17, 4, (7, 7), strides=(2, 2), pads=(3, 3, 3, 3)),
    ConvCase(3, 35, 35, 6, (11, 11), strides=(4, 4)),
    # strides, asymmetric pads, rectangular kernels and strides
    ConvCase(4, 14, 15, 6, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    ConvCase(4, 13, 21, 3, (3, 5), strides=(1, 2), pads=(0, 2, 1, 0)),
    ConvCase(5, 16, 19, 4, (2, 3), strides=(4, 1), pads=(1, 0, 0, 2)),
    # dilations
    ConvCase(4, 15, 16, 5, (3, 3), pads=(2, 2, 2, 2), dilations=(2, 2)),
    ConvCase(3, 17, 18, 4, (3, 3), strides=(2, 2), pads=(3, 1, 3, 1), dilations=(3, 1)),
    # groups and depthwise
    ConvCase(8, 11, 12, 12, (3, 3), pads=(1, 1, 1, 1), group=4),
    ConvCase(6, 10, 10, 6, (3, 3), pads=(1, 1, 1, 1), group=6),
    ConvCase(6, 10, 13, 12, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), group=6),
    # batch 3, and a layout whose pads exceed the conv's (shared by several consumers)
    ConvCase(4, 9, 10, 5, (3, 3), pads=(1, 1, 1, 1), batch=3),
    ConvCase(4, 9, 10, 5, (3, 3), pads=(0, 1, 0, 1), batch=3, in_extra_pads=(2, 1, 1, 3)),
]

DENSITIES = [0.0, "one", 0.05, 0.5, 1.0]


def _ids(cases):
    return [str(c) for c in cases]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("form", ["table", "unrolled"])
@pytest.mark.parametrize("case", SHAPES, ids=_ids(SHAPES))
def test_shapes(case, form, target):
    seed = zlib.crc32(f"{case}{form}{target}".encode()) % 10_000
    plan = run_case(with_plan(case, form=form), target, seed)
    assert plan.form == form


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", SHAPES, ids=_ids(SHAPES))
def test_shapes_aligned_copies(case, target):
    """One input copy per column shift (every load aligned), incl. strided and dilated convs."""
    seed = zlib.crc32(f"{case}aligned{target}".encode()) % 10_000
    plan = run_case(with_plan(case, form="table", aligned_copies=True), target, seed)
    assert plan.aligned_copies


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("density", DENSITIES, ids=str)
@pytest.mark.parametrize("form", ["table", "unrolled"])
@pytest.mark.parametrize("batch", [1, 3])
def test_densities(density, form, batch, target):
    case = ConvCase(6, 9, 19, 8, (3, 3), pads=(1, 1, 1, 1), batch=batch, density=density)
    run_case(with_plan(case, form=form), target, seed=7 + batch)


@pytest.mark.parametrize("target", TARGETS)
def test_widths_around_vector(target):
    for i, case in enumerate(_width_cases(WIDTHS[target])):
        for form in ("table", "unrolled"):
            run_case(with_plan(case, form=form), target, seed=100 + i)


BLOCKINGS = [
    dict(rows_per_tile=1, vectors_per_row=1, unroll=1),
    dict(rows_per_tile=5, vectors_per_row=1, unroll=3),  # tiles past the last row
    dict(rows_per_tile=2, vectors_per_row=3, unroll=2),  # tiles past the last vector
    dict(rows_per_tile=1, vectors_per_row=1, unroll=4, split_accumulators=True),
    dict(rows_per_tile=3, vectors_per_row=2, channels_per_block=4, unroll=1),  # union patterns
    dict(rows_per_tile=2, vectors_per_row=1, channels_per_block=3, unroll=2),  # padded last block
    dict(rows_per_tile=2, vectors_per_row=1, channels_per_block=2, codegen_opt=0),
]
# table form only: input-channel passes (partial sums through the output) and loop orders
TABLE_BLOCKINGS = [
    dict(rows_per_tile=3, vectors_per_row=1, channel_chunk=2, unroll=2),
    dict(rows_per_tile=2, vectors_per_row=2, channel_chunk=4, loop_order="tile_block"),
    dict(rows_per_tile=4, vectors_per_row=1, channel_chunk=5, channels_per_block=2, unroll=3,
         split_accumulators=True),
    dict(rows_per_tile=1, vectors_per_row=3, loop_order="tile_block"),
    dict(rows_per_tile=2, vectors_per_row=2, channel_chunk=3, loop_order="tile_chunk_block"),
    dict(rows_per_tile=3, vectors_per_row=1, channel_chunk=5, channels_per_block=2, unroll=3,
         loop_order="tile_chunk_block"),
    dict(rows_per_tile=2, vectors_per_row=1, loop_order="tile_chunk_block"),  # one pass
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("form", ["table", "unrolled"])
@pytest.mark.parametrize("blocking", BLOCKINGS, ids=str)
def test_blockings(blocking, form, target):
    case = ConvCase(6, 11, 2 * WIDTHS[target] + 3, 8, (3, 3), pads=(1, 1, 1, 1), batch=2,
                    density=0.3, plan=dict(blocking, form=form))
    run_case(case, target, seed=11)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("blocking", TABLE_BLOCKINGS, ids=str)
@pytest.mark.parametrize("group", [1, 2])
def test_channel_passes(blocking, group, target):
    case = ConvCase(12, 9, WIDTHS[target] + 5, 8, (3, 3), pads=(1, 1, 1, 1), group=group, batch=2,
                    density=0.4, plan=dict(blocking, form="table"))
    plan = run_case(case, target, seed=13)
    assert plan.channel_chunk == blocking.get("channel_chunk", 0)


SPLIT_TILE_PLANS = [
    dict(form="table", rows_per_tile=2, vectors_per_row=1),
    dict(form="table", rows_per_tile=3, vectors_per_row=2, channel_chunk=4, loop_order="tile_block"),
    dict(form="table", rows_per_tile=2, vectors_per_row=1, channel_chunk=5, loop_order="tile_chunk_block"),
    dict(form="table", rows_per_tile=1, vectors_per_row=1, channel_chunk=3, channels_per_block=2),
    dict(form="unrolled", rows_per_tile=2, vectors_per_row=1),
    dict(form="unrolled", rows_per_tile=4, vectors_per_row=2, channels_per_block=3),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("plan", SPLIT_TILE_PLANS, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_split_by_tiles(plan, residual, target):
    """Threads dividing output tiles instead of channel blocks: each range of tiles computes
    every channel of its rows (the harness calls the kernel over uneven pieces of the range),
    partial last tiles and passes included."""
    for seed, (h, w) in enumerate([(9, 2 * WIDTHS[target] + 3), (4, WIDTHS[target] - 1)]):
        case = ConvCase(12, h, w, 7, (3, 3), pads=(1, 1, 1, 1), batch=2, density=0.3,
                        residual=residual, plan=dict(plan, split="tiles"))
        ran = run_case(case, target, seed=40 + seed)
        assert ran.split == "tiles"
    flat = ConvCase(6, 7, 7, 5, (3, 3), pads=(1, 1, 1, 1), batch=2, density=0.4, flat=True,
                    out_pads=(1, 0, 1, 0), residual=residual,
                    plan=dict(plan, split="tiles", rows_per_tile=1, vectors_per_row=1))
    run_case(flat, target, seed=47)


def test_split_units_are_tiles_or_blocks():
    wl = ConvWorkload(8, 20, 40, 16, (3, 3), pads=(1, 1, 1, 1))
    tiles_plan = DirectConvPlan(rows_per_tile=3, vectors_per_row=2, split="tiles")
    assert parallel_units(wl, tiles_plan, blocks=16) == 7 * 2  # 20 rows / 3, 3 vectors / 2
    assert parallel_units(wl, replace(tiles_plan, split="blocks"), blocks=16) == 16
    with pytest.raises(ValueError, match="split"):
        DirectConvPlan(split="rows")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("plan", [{"form": "table"}, {"form": "table", "channel_chunk": 2},
                                  {"form": "table", "channels_per_block": 2, "rows_per_tile": 4},
                                  {"form": "unrolled", "rows_per_tile": 4}], ids=str)
@pytest.mark.parametrize("out_plain", [False, True], ids=["padded-out", "plain-out"])
def test_vector_tails(out_plain, plan, target):
    """Lanes past the output width: into a padded output a vector is stored whole with zeros
    there (the harness's guard page ends the buffer, its bottom pad is 0, so a tail of the last
    row that runs past the image faults if the extent misses it); into a plain array, whose
    next row starts right after the last column, through a mask."""
    v = WIDTHS[target]
    for width in sorted({v - 1, v + 1, 2 * v + 3}):
        case = ConvCase(5, 7, width, 6, (3, 3), pads=(1, 1, 1, 1), batch=2, density=0.5,
                        plan=plan, out_plain=out_plain, out_pads=(1, 2, 0, 1))
        wl = case.workload()
        out = (Layout(6, wl.out_height, wl.out_width) if out_plain
               else Layout.padded(6, wl.out_height, wl.out_width, case.out_pads, align=v))
        assert tails_into_padding(wl, out, v) == (not out_plain)
        run_case(case, target, seed=width)


FLAT_CASES = [
    # (in channels, height, width, out channels, kernel, pads, extra input pads, dilations, group)
    (6, 7, 7, 5, (3, 3), (1, 1, 1, 1), (0, 0, 0, 0), (1, 1), 1),  # ResNet-50's last stage
    (8, 7, 7, 6, (1, 1), (0, 0, 0, 0), (1, 1, 1, 1), (1, 1), 1),  # a 1x1 conv in that stage
    (4, 5, 3, 4, (3, 3), (1, 1, 1, 1), (1, 0, 2, 1), (1, 1), 2),  # odd width, grouped
    (3, 9, 6, 4, (3, 3), (2, 2, 2, 2), (0, 0, 0, 0), (2, 2), 1),  # dilated
    (5, 6, 5, 3, (5, 5), (2, 2, 2, 2), (0, 1, 0, 0), (1, 1), 1),  # 5 x 5
]
FLAT_PLANS = [{}, {"form": "table", "vectors_per_row": 1}, {"form": "table", "channel_chunk": 2},
              {"form": "table", "channels_per_block": 2}, {"form": "unrolled"}]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("plan", FLAT_PLANS, ids=str)
@pytest.mark.parametrize("density", [0.0, "one", 0.3, 1.0], ids=str)
@pytest.mark.parametrize("shape", FLAT_CASES, ids=str)
def test_flat_runs(shape, density, plan, target):
    """Small maps whose tensors share one row stride run as one flat run per plane: lanes between
    rows and past the run's end are stored as zeros into the padding (guard page after the
    buffer), the residual (NaN outside its interior) is read through the same mask."""
    c, h, w, m, kernel, pads, extra, dilations, group = shape
    for residual, batch in ((False, 1), (True, 2)):
        case = ConvCase(c, h, w, m, kernel, pads=pads, dilations=dilations, group=group,
                        batch=batch, density=density, plan=plan, in_extra_pads=extra,
                        out_pads=(1, 0, 1, 0), residual=residual, flat=True)
        ran = run_case(case, target, seed=zlib.crc32(repr((shape, batch)).encode()))
        assert ran.rows_per_tile == 1


SPLIT_PLANS = [{}, {"form": "table", "vectors_per_row": 3}, {"form": "table", "channel_chunk": 3},
               {"form": "table", "channels_per_block": 2, "vectors_per_row": 2},
               {"form": "table", "rows_per_tile": 2}, {"form": "table", "split": "tiles"},
               {"form": "unrolled", "vectors_per_row": 2}]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("plan", SPLIT_PLANS, ids=str)
@pytest.mark.parametrize("density", [0.0, "one", 0.3, 1.0], ids=str)
def test_flat_pointwise_runs_store_into_padded_rows(density, plan, target):
    """A pointwise conv over a plain input runs its planes as one row of H * W positions and
    stores each vector into the output's padded rows: whole within a row, in two masked pieces
    across a row's end (widths of one vector, odd and several vectors; aligned rows and not;
    the pads must stay untouched and the guard page after the last row catches over-writes)."""
    v = WIDTHS[target]
    for height, width, out_pads, out_plain, batch in (
            (3, v, (1, 1, 1, 1), False, 2), (4, v + 3, (1, 1, 0, 1), False, 1),
            (5, 2 * v + 5, (0, 2, 0, 0), True, 2), (2, 3 * v, (2, 0, 1, 1), True, 1)):
        case = ConvCase(7, height, width, 9, (1, 1), batch=batch, density=density, plan=plan,
                        out_pads=out_pads, out_plain=out_plain, split=True, activation="leaky_relu")
        run_case(case, target, seed=zlib.crc32(repr((height, width, density)).encode()))


def test_flat_pointwise_runs_split_stores_only_where_they_fit():
    """The split form needs a plain input, rows a vector wide and no residual; a plain output
    (or a slice of a wider tensor's channels) takes the plain flat run instead."""
    wl = ConvWorkload(8, 6, 20, 4, (1, 1))
    plain = Layout(8, 6, 20)
    padded = Layout.padded(4, 6, 20, (1, 1, 1, 1), align=16)
    flat, flat_in, out, res = flattened(wl, plain, padded, None, 16)
    assert (flat.height, flat.width) == (1, 120) and out == padded and res is None
    assert split_output_rows(flat, out) == 20 and not tails_into_padding(flat, out, 16)
    assert flattened(wl, plain, padded, None, 32) is None  # rows shorter than a vector
    assert flattened(wl, plain, padded, Layout(4, 6, 20), 16) is None  # a residual
    assert flattened(wl, Layout.padded(8, 6, 20, (0, 0, 0, 4)), padded, None, 16) is None
    sliced = Layout(12, 6, 20).in_channel_slice(4)
    _, _, out, _ = flattened(wl, plain, sliced, None, 16)
    assert (out.height, out.width, out.image_stride) == (1, 120, 12 * 120)
    assert split_output_rows(flat, out) == 0


def test_flat_run_needs_equal_row_strides_and_room():
    """No flat run across different row strides, for strided convs, or when the last vector's
    tail would reach the next channel's interior; it pays only where it saves vectors."""
    wl = ConvWorkload(4, 7, 7, 4, (3, 3), pads=(1, 1, 1, 1))
    padded = Layout.padded(4, 7, 7, (1, 1, 1, 1))
    assert flat_rows(wl, padded, padded, None, 16).flat_stride == 9
    assert flat_rows(wl, padded, padded, None, 16).tile_width == 6 * 9 + 7
    aligned = Layout.padded(4, 7, 7, (1, 1, 1, 1), align=16)
    assert flat_rows(wl, padded, aligned, None, 16) is None
    assert flat_rows(wl, padded, padded, aligned, 16) is None
    strided = ConvWorkload(4, 14, 14, 4, (3, 3), (2, 2), pads=(1, 1, 1, 1))
    assert flat_rows(strided, padded, padded, None, 16) is None
    tight = Layout(4, 7, 7)  # 1x1 on plain planes: the run's tail reaches the next channel
    pointwise = ConvWorkload(4, 7, 7, 4, (1, 1))
    assert flat_rows(pointwise, tight, tight, None, 16) is None
    assert flat_pays(flat_rows(wl, padded, padded, None, 16), 16)  # 4 vectors, not 7
    assert not flat_pays(flat_rows(wl, padded, padded, None, 8), 8)  # 8, not 7
    wide = ConvWorkload(4, 56, 56, 4, (3, 3), pads=(1, 1, 1, 1))  # 203 vectors, not 224
    big = Layout.padded(4, 56, 56, (1, 1, 1, 1))
    assert not flat_pays(flat_rows(wide, big, big, None, 16), 16)


RESIDUAL_PLANS = [{"form": "table"}, {"form": "table", "channel_chunk": 2},
                  {"form": "table", "channel_chunk": 2, "loop_order": "tile_chunk_block"},
                  {"form": "table", "channels_per_block": 2}, {"form": "unrolled"},
                  {"form": "unrolled", "channels_per_block": 2}]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("plan", RESIDUAL_PLANS, ids=str)
def test_fused_residual(plan, target):
    """A fused Add: the residual (in a layout with other pads, NaN outside its interior) is
    added before the activation (in passes over input channels: the first pass starts from it)."""
    case = ConvCase(6, 7, WIDTHS[target] + 3, 4, (3, 3), pads=(1, 1, 1, 1), batch=2, density=0.4,
                    residual=True, plan=plan)
    run_case(case, target, seed=21)


@pytest.mark.parametrize("activation", ["none", "relu", "leaky_relu"])
def test_epilogues(activation):
    case = ConvCase(4, 8, 9, 5, (3, 3), pads=(1, 1, 1, 1), density=0.5, activation=activation)
    run_case(case, TARGETS[-1], seed=3)


def test_random_mix():
    """A seeded random sweep over the whole space (printed seed reproduces a failure)."""
    rng = np.random.default_rng(2026)
    for i in range(40):
        k = int(rng.choice([1, 3, 5, 7]))
        s = (int(rng.choice([1, 2, 4])), int(rng.choice([1, 2])))
        d = (int(rng.choice([1, 2])), int(rng.choice([1, 3])))
        group = int(rng.choice([1, 2, 3]))
        cin, cout = group * int(rng.integers(1, 4)), group * int(rng.integers(1, 4))
        pads = tuple(int(p) for p in rng.integers(0, k, 4))
        h = int(rng.integers(d[0] * (k - 1) + 1, 24))
        w = int(rng.integers(d[1] * (k - 1) + 1, 40))
        case = ConvCase(cin, h, w, cout, (k, k), s, pads, d, group, int(rng.choice([1, 2])),
                        density=float(rng.choice([0.05, 0.3, 1.0])),
                        plan=dict(form=str(rng.choice(["table", "unrolled"])),
                                  rows_per_tile=int(rng.integers(1, 5)),
                                  vectors_per_row=int(rng.integers(1, 3)),
                                  unroll=int(rng.integers(1, 4))))
        target = TARGETS[i % len(TARGETS)]
        if case.plan["form"] == "table":
            align = str(rng.choice(["none", "copies", "sums"]))
            case.plan.update(channel_chunk=int(rng.choice([0, 1, 2])),
                             loop_order=str(rng.choice(LOOP_ORDERS)),
                             aligned_copies=align == "copies")
            if align == "sums":
                case = _framed(case, target, rows=case.plan["rows_per_tile"])
        run_case(case, target, seed=int(rng.integers(1 << 30)))


def test_plan_sweep_is_complete():
    """The sweep above covers what the kernel family claims (guards against silent shrinking)."""
    kernels = {c.kernel[0] for c in SHAPES}
    strides = {s for c in SHAPES for s in c.strides}
    assert {1, 3, 5, 7, 11} <= kernels and {1, 2, 4} <= strides
    assert any(c.group == c.in_channels == c.out_channels for c in SHAPES)  # depthwise
    assert set(itertools.chain([0.0, 1.0, "one"])) <= set(DENSITIES)


FIRST_CONVS = [
    ConvCase(3, 23, 41, 16, (7, 7), strides=(2, 2), pads=(3, 3, 3, 3), batch=2, density=1.0),
    ConvCase(3, 39, 43, 16, (11, 11), strides=(4, 4), batch=1, density=1.0),
    ConvCase(1, 9, 37, 8, (3, 3), pads=(1, 1, 1, 1), batch=2, density=1.0),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", FIRST_CONVS, ids=_ids(FIRST_CONVS))
def test_first_conv_default_blocks_several_channels(case, target):
    """A dense conv over few input channels (an image's first conv) blocks several output
    channels per input load, as measured best for the target's register file, within the
    registers (sums, broadcasts, an input vector); 7 channels fit no block: a dense conv's
    blocks (`select.dense_block`)."""
    plan = run_case(case, target, seed=17)
    tgt = targets.get(target)
    mb, cb = select.FIRST_CONV_BLOCKS[tgt.vector_registers][0 if case.out_channels % 3 == 0 else -1]
    wl = case.workload()
    vectors = -(-wl.out_width // WIDTHS[target])
    assert plan.channels_per_block == mb
    assert (plan.rows_per_tile, plan.vectors_per_row) == select.first_conv_tile(
        wl.tile_rows, vectors, cb)
    assert plan.accumulators + mb + 1 <= tgt.vector_registers
    # few taps: unrolled (its code fits), else the table loop
    weights = case.out_channels * case.in_channels * case.kernel[0] * case.kernel[1]
    fits = select.unrolled_fits(weights, plan.rows_per_tile, plan.vectors_per_row)
    assert plan.form == ("unrolled" if fits else "table")
    odd = run_case(replace(case, out_channels=7), target, seed=18)
    assert odd.channels_per_block == select.dense_block(7, tgt)[0]


@pytest.mark.parametrize("target", TARGETS)
def test_dense_grouped_convs_default_blocks_divide_their_groups(target):
    """A dense grouped conv's default blocks divide its output channels per group (a block
    shares one offset list, so it must not straddle two groups); ungrouped, a last block may
    fall short (20 channels in blocks of 3 on AVX2, as ungrouped)."""
    cases = [ConvCase(16, 9, 10, 40, (3, 3), pads=(1, 1, 1, 1), group=2, density=1.0),
             ConvCase(18, 7, 9, 40, (1, 1), group=2, density=1.0),
             ConvCase(6, 7, 9, 20, (3, 3), pads=(1, 1, 1, 1), density=1.0)]
    for i, case in enumerate(cases):
        plan = run_case(case, target, seed=40 + i)
        if case.group > 1:
            assert plan.form == "table", plan
            assert (case.out_channels // case.group) % plan.channels_per_block == 0, plan
        elif target == "avx2":
            assert plan.channels_per_block == 3, plan


PLANE_CONVS = [
    # (batch, channels, height, width, out channels, kernel, stride, pads, group)
    (1, 3, 35, 35, 4, (11, 11), 4, (0, 0, 0, 0), 1),  # CaffeNet conv1, smaller image
    (2, 4, 14, 14, 6, (3, 3), 2, (1, 1, 1, 1), 1),  # ResNet-50 layer4.0.conv2
    (1, 3, 29, 30, 5, (7, 7), 2, (3, 3, 3, 3), 1),  # ResNet-50 stem, smaller, uneven
    (1, 4, 13, 11, 4, (2, 5), 3, (1, 0, 2, 2), 2),  # unequal kernel and pads, groups
    (1, 2, 9, 9, 3, (4, 4), 2, (0, 1, 1, 0), 1),  # kernel a multiple of the stride
    (1, 1, 5, 5, 1, (5, 5), 5, (0, 0, 0, 0), 1),  # one output, one tap per plane
]


@pytest.mark.parametrize("case", PLANE_CONVS, ids=str)
def test_a_strided_conv_is_a_stride_1_conv_over_its_phase_planes(case):
    """numpy: the planes that PhasePlanes.write fills, convolved (stride 1, no pads) with
    plane_weights, are the strided conv of the image; positions past the image stay zero."""
    n, c, h, w, m, kernel, s, pads, group = case
    rng = np.random.default_rng(h * w)
    wl = ConvWorkload(c, h, w, m, kernel, (s, s), pads, group=group)
    planes, conv = plane_conv(wl, plane_row_floats(wl) + 3)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((m, c // group, *kernel)).astype(np.float32)
    weight *= rng.random(weight.shape) < 0.6
    buf = np.zeros(n * planes.image_stride, np.float32)
    planes.write(buf, x)
    assert np.count_nonzero(buf) == np.count_nonzero(x)  # every source float once, nothing else
    got = conv2d(np.array(planes.layout.read(buf, n)), plane_weights(weight, s), None, (1, 1),
                 (0, 0, 0, 0), (1, 1), group)
    want = conv2d(x, weight, None, (s, s), pads, (1, 1), group)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.count_nonzero(plane_weights(weight, s)) == np.count_nonzero(weight)


def test_plane_conv_needs_equal_strides_and_long_enough_rows():
    wl = ConvWorkload(3, 35, 35, 4, (11, 11), (4, 4))
    assert plane_conv(wl, plane_row_floats(wl) - 1) is None
    assert plane_conv(replace(wl, strides=(4, 2)), 64) is None
    assert plane_conv(replace(wl, strides=(1, 1)), 64) is None
    assert plane_conv(replace(wl, dilations=(2, 2)), 64) is None
    assert plane_conv(ConvWorkload(3, 14, 14, 4, (1, 1), (2, 2)), 64) is None  # subsampled instead


def test_unrolled_blocks_give_each_channel_only_its_own_nonzeros():
    """In the unrolled form the channels of a block share each loaded input vector of the
    block's union of positions, but a channel gets an FMA only where its own weight is nonzero:
    one FMA per nonzero and accumulator (tests/runtime/test_bad_input.py checks that an Inf
    input then reaches only the channels with a weight there)."""
    from sparsejit.codegen.direct_conv import render_direct_conv
    from sparsejit.kernels.direct_conv import Epilogue, build_pattern

    wl = ConvWorkload(4, 6, 9, 4, (3, 3), pads=(1, 1, 1, 1))
    w = np.zeros((4, 4, 3, 3), np.float32)
    w[0, 0, 0, 0] = w[0, 1, 1, 1] = w[1, 2, 2, 2] = w[2, 0, 0, 0] = w[3, 3, 1, 0] = 1.5
    plan = DirectConvPlan(form="unrolled", vector_width=16, rows_per_tile=2, vectors_per_row=1,
                          channels_per_block=2)
    layout = Layout.padded(4, 6, 9, (1, 1, 1, 1), align=16)
    out = Layout.padded(4, 6, 9, (1, 1, 1, 1), align=16)
    pattern = build_pattern(w, wl, layout, plan)
    assert pattern.entries == 5  # block 0's union is 3 positions, block 1's 2
    ir = render_direct_conv("u", wl, plan, pattern, np.zeros(4, np.float32), Epilogue(), layout,
                            out, "avx512")
    assert ir.count("call <16 x float> @llvm.fmuladd") == 5 * plan.rows_per_tile
    case = ConvCase(4, 6, 9, 4, (3, 3), pads=(1, 1, 1, 1), density=0.3,
                    plan=dict(form="unrolled", channels_per_block=2))
    for target in TARGETS:
        run_case(case, target, seed=31)


def test_one_tile_kernels_with_large_tables_prefetch_them():
    """A layer run in one tile streams its table once per image; past PREFETCH_MIN_TABLE_BYTES
    the kernel prefetches it ahead (prefetches past the table's end must not fault: the harness
    checks the answer, and reads and writes against guard pages)."""
    from sparsejit.codegen import direct_conv as codegen
    from sparsejit.kernels.direct_conv import Epilogue, build_pattern, tiles

    case = ConvCase(1024, 4, 4, 1024, (1, 1), density=0.1, batch=2)
    wl = case.workload()
    w = (np.arange(1024 * 1024).reshape(1024, 1024, 1, 1) % 10 == 0).astype(np.float32)
    plan = select.choose_conv(wl, w, targets.get("avx512"))
    layout = Layout.padded(1024, 4, 4, (0, 0, 0, 0), align=16)
    pattern = build_pattern(w, wl, layout, plan)
    assert tiles(wl, plan) == (1, 1)
    assert pattern.entries * 8 > codegen.PREFETCH_MIN_TABLE_BYTES
    ir = codegen.render_direct_conv("p", wl, plan, pattern, np.zeros(1024, np.float32), Epilogue(),
                                    layout, layout, "avx512")
    assert "call void @llvm.prefetch.p0(ptr %pf" in ir
    for target in TARGETS:
        run_case(case, target, seed=7)


def test_blocks_inside_tiles_prefetch_the_next_blocks_cells():
    """Where a tile's channel blocks are the inner loop, each block fetches the next block's
    output cells for writing (one channel stride times MB on); not where blocks are outside the
    tiles or where a fused residual is read first. The last block's prefetches point past the
    output: the harness checks the answer against guard pages around every buffer."""
    from sparsejit.codegen import direct_conv as codegen
    from sparsejit.kernels.direct_conv import Epilogue, build_pattern

    wl = ConvWorkload(8, 5, 20, 6, (3, 3), pads=(1, 1, 1, 1))
    w = np.random.default_rng(3).standard_normal((6, 8, 3, 3)).astype(np.float32)
    layout = Layout.padded(8, 5, 20, (1, 1, 1, 1), align=16)
    out = Layout.padded(6, 5, 20, (1, 1, 1, 1), align=16)

    def ir(order, residual=None, mb=2):
        plan = DirectConvPlan(form="table", vector_width=16, rows_per_tile=2, vectors_per_row=2,
                              channels_per_block=mb, loop_order=order)
        pattern = build_pattern(w, wl, layout, plan)
        return codegen.render_direct_conv("n", wl, plan, pattern, np.zeros(6, np.float32),
                                          Epilogue(), layout, out, "avx512", residual)

    prefetch = f"ptr %op0.1.1, i64 {2 * out.channel_stride}\n  call void @llvm.prefetch.p0(ptr %pfo1.1, i32 1"
    assert prefetch in ir("tile_block")
    assert prefetch in ir("tile_chunk_block")
    assert "%pfo" not in ir("block_tile")
    assert "%pfo" not in ir("tile_block", residual=out)
    for target in TARGETS:
        for order in ("tile_block", "tile_chunk_block"):
            run_case(ConvCase(8, 5, 20, 6, (3, 3), pads=(1, 1, 1, 1), density=0.3, batch=2,
                              plan=dict(form="table", loop_order=order, channels_per_block=2)),
                     target, seed=5)


@pytest.mark.parametrize("shifted", [False, True])
def test_passes_inside_whole_row_tiles_prefetch_the_next_tiles_input(shifted, monkeypatch):
    """Over inputs past NEXT_TILE_INPUT_MIN_BYTES (forced to 0 here), a kernel with its passes
    inside tiles of whole rows has each block fetch its share of the next tile's new input rows
    of the pass (the last tile's point past the image: the harness checks the answer against
    guard pages); not with blocks outside tiles, one pass, or tiles narrower than a row."""
    from sparsejit.codegen import direct_conv as codegen
    from sparsejit.kernels.direct_conv import Epilogue, build_pattern, tiles

    monkeypatch.setattr(codegen, "NEXT_TILE_INPUT_MIN_BYTES", 0)
    wl = ConvWorkload(8, 7, 13, 6, (3, 3), pads=(1, 1, 1, 1))
    w = np.random.default_rng(4).standard_normal((6, 8, 3, 3)).astype(np.float32)
    layout = Layout.padded(8, 7, 13, (1, 1, 1, 1), align=16)
    out = Layout.padded(6, 7, 13, (1, 1, 1, 1), align=16)

    def next_tile(order="tile_chunk_block", chunk=4, cb=1):
        plan = DirectConvPlan(form="table", vector_width=16, rows_per_tile=2, vectors_per_row=cb,
                              channel_chunk=chunk, loop_order=order)
        pattern = build_pattern(w, wl, layout, plan)
        ir = codegen.render_direct_conv("t", wl, plan, pattern, np.zeros(6, np.float32),
                                        Epilogue(), layout, out, "avx512")
        found = codegen.next_tile_input(wl, plan, pattern, layout, out)
        assert (found is not None) == ("%nt.line" in ir)
        return found

    found = next_tile()
    # 4 channels x 2 new rows x 4 lines (a row's 18 floats and a vector: 34, from any lane)
    assert (found.lines, found.rows, found.row_lines) == (32, 2, 4)
    assert found.skip == 4 * layout.row_stride and found.chunk == 4
    assert next_tile("tile_block") is None and next_tile(chunk=0) is None
    narrow = ConvWorkload(8, 7, 40, 6, (3, 3), pads=(1, 1, 1, 1))
    plan = DirectConvPlan(form="table", vector_width=16, rows_per_tile=2, vectors_per_row=1,
                          channel_chunk=4, loop_order="tile_chunk_block")
    wide = Layout.padded(8, 7, 40, (1, 1, 1, 1), align=16)
    assert codegen.next_tile_input(narrow, plan, build_pattern(w, narrow, wide, plan), wide,
                                   Layout.padded(6, 7, 40, (1, 1, 1, 1), align=16)) is None
    for target in TARGETS:
        case = ConvCase(8, 7, 13, 6, (3, 3), pads=(1, 1, 1, 1), density=0.4, batch=2,
                        plan=dict(form="table", loop_order="tile_chunk_block", channel_chunk=4,
                                  rows_per_tile=2, vectors_per_row=-(-13 // WIDTHS[target]),
                                  shifted_sums=False))
        if shifted:
            case = _framed(case, target, channel_chunk=4, loop_order="tile_chunk_block")
        ran = run_case(case, target, seed=9)
        assert ran.shifted_sums == shifted and tiles(case.workload(), ran) == (4, 1)


def _framed(case: ConvCase, target: str, rows: int = 2, **plan) -> ConvCase:
    """`case` with shifted sums and tiles holding its rows whole, with lanes to spare for the
    frames of its column shifts and of the lead of an input whose pads exceed the conv's."""
    wl = case.workload()
    lead = 0 if wl.strides[1] > 1 else case.in_extra_pads[1]
    reach = wl.out_width + max(1, wl.column_shifts() - 1 + lead)
    return with_plan(case, **{"form": "table", "shifted_sums": True, "rows_per_tile": rows,
                              "vectors_per_row": -(-reach // WIDTHS[target]), **plan})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", SHAPES, ids=_ids(SHAPES))
def test_shapes_shifted_sums(case, target):
    """Each entry summed in a frame as many lanes left as its load lies past a vector boundary
    (then loaded aligned), the sums rotated between frames: strided (phase planes), dilated,
    grouped, 1x1 (one frame, 0, or the lead's), 5 x 5 to 11 x 11 (frames capped by the spare
    lanes), a layout with extra pads (every frame shifted by a lead)."""
    seed = zlib.crc32(f"{case}framed{target}".encode()) % 10_000
    assert run_case(_framed(case, target), target, seed).shifted_sums


FRAMED_BLOCKINGS = [
    dict(unroll=1),
    dict(rows_per_tile=5, unroll=3),  # tiles past the last row
    dict(unroll=4, rows_per_tile=1, split_accumulators=True),  # sets summed per frame
    dict(channels_per_block=3, unroll=2),  # union patterns, padded last block
    dict(channel_chunk=2, unroll=2),  # passes: partial sums added in the output's frame
    dict(channel_chunk=5, loop_order="tile_block", channels_per_block=2),
    dict(channel_chunk=3, loop_order="tile_chunk_block"),
    dict(channel_chunk=4, split="tiles"),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("blocking", FRAMED_BLOCKINGS, ids=str)
@pytest.mark.parametrize("extra_left", [0, 3], ids=["aligned", "lead3"])
def test_shifted_sums_blockings(blocking, extra_left, target):
    """Shifted sums with every other knob, a fused residual, batch 2, and an input whose rows
    carry extra left pads (every entry's frame grows by them)."""
    v = WIDTHS[target]
    for i, (width, kernel, dil) in enumerate([(v - 2, (3, 3), 1), (2 * v - 4, (5, 5), 1),
                                              (v + 3, (3, 3), 2)]):
        pad = (kernel[1] - 1) * dil // 2
        case = ConvCase(12, 7, width, 7, kernel, pads=(pad,) * 4, dilations=(dil, dil), batch=2,
                        density=0.4, residual=i == 1, in_extra_pads=(1, extra_left, 0, 2))
        framed = _framed(case, target, **blocking)
        ran = run_case(framed, target, seed=60 + i)
        assert ran.shifted_sums and ran.channel_chunk == blocking.get("channel_chunk", 0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("density", DENSITIES, ids=str)
def test_shifted_sums_densities(density, target):
    """No entries, one, some and all, on every target (frames without entries still rotate)."""
    case = ConvCase(6, 9, WIDTHS[target] + 5, 8, (3, 3), pads=(1, 1, 1, 1), batch=2,
                    density=density, plan=dict(channel_chunk=4))
    assert run_case(_framed(case, target), target, seed=71).shifted_sums


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rows_apart", [16, 7], ids=["rows-on-vectors", "rows-7-apart"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_shifted_sums_flat_run(residual, rows_apart, target):
    """A flat run (one tile row: its entries' misalignments are the same in every image) over
    rows 16 floats apart with the interior 3 lanes into its row, or 7 apart (as ResNet-50's 7 x 7
    maps, 9): frames capped by the run's spare lanes, the sums rotated across its vectors; the
    default plan takes them where they align every load."""
    extra = (0, 3, 0, 6) if rows_apart == 16 else (0, 0, 0, 0)
    run = 4 * rows_apart + 5
    plan = dict(form="table", vectors_per_row=-(-(run + 8) // WIDTHS[target]))
    if rows_apart != 16:  # whether frames pay there depends on the target: asked for
        plan["shifted_sums"] = True
    case = ConvCase(4, 5, 5, 6, (3, 3), pads=(1, 1, 1, 1), in_extra_pads=extra,
                    batch=2, density=0.5, out_pads=(1, 0, 1, 0), residual=residual, flat=True,
                    plan=plan)
    assert run_case(case, target, seed=73).shifted_sums
    one = with_plan(case, channel_chunk=2, rows_per_tile=1, shifted_sums=True)
    assert run_case(one, target, seed=74).shifted_sums


def test_shifted_sums_misfits_and_frames():
    """Where frames cannot hold the sums the reason is given; an entry's frame is its load's
    distance past a vector boundary, capped by the spare lanes of the tile's rows."""
    wl = ConvWorkload(8, 14, 14, 8, (3, 3), pads=(1, 1, 1, 1))
    aligned = Layout.padded(8, 14, 14, (1, 1, 1, 1), align=16)
    plan = DirectConvPlan(rows_per_tile=14, vectors_per_row=1, shifted_sums=True)
    assert shifted_sums_misfit(wl, aligned, plan) is None
    assert frame_lanes(wl, plan) == 2  # 14 of 16 lanes used
    taps = tap_offsets(wl, aligned, 1)
    assert entry_frames(wl, aligned, plan, taps).tolist() == [0, 1, 2] * 3
    wider = Layout.padded(8, 14, 14, (1, 2, 1, 1), align=16)  # one more left pad: 1 lane on
    assert entry_frames(wl, wider, plan, tap_offsets(wl, wider, 1)).tolist() == [1, 2, 2] * 3
    assert frame_lanes(wl, replace(plan, vectors_per_row=2)) == 15
    assert "whole rows" in shifted_sums_misfit(replace(wl, width=40), aligned,
                                                replace(plan, vectors_per_row=2))
    assert "no lanes to spare" in shifted_sums_misfit(replace(wl, width=16), aligned, plan)
    rows9 = Layout.padded(8, 14, 14, (1, 1, 1, 1), align=9)
    assert "do not start on vectors" in shifted_sums_misfit(wl, rows9, plan)
    assert "table form" in shifted_sums_misfit(wl, aligned, replace(plan, shifted_sums=False,
                                                                    form="unrolled"))
    with pytest.raises(ValueError, match="table form"):
        DirectConvPlan(form="unrolled", shifted_sums=True)
    with pytest.raises(ValueError, match="take one"):
        DirectConvPlan(aligned_copies=True, shifted_sums=True)


# The lanes form (a vector of output channels in the lanes: 16 on AVX-512, 8 on AVX2) runs
# where the host has those; on SSE its plan is an InvalidPlanError (test_select.py).
LANES_TARGETS = [t for t in TARGETS if WIDTHS[t] in (8, 16)]


@pytest.mark.parametrize("target", LANES_TARGETS)
@pytest.mark.parametrize("density", [1.0, 0.5, "one", 0.0], ids=str)
@pytest.mark.parametrize("case", SHAPES, ids=_ids(SHAPES))
def test_lanes_shapes(case, density, target):
    """Every kernel size, stride, pad, dilation and batch of SHAPES; groups whose blocks of a
    vector of channels would straddle two groups are refused, not run."""
    case = with_plan(replace(case, density=density, out_channels=case.out_channels + 13),
                     form="lanes")
    wl = case.workload()
    if select.lanes_fit(wl, targets.get(target)) is not None:
        with pytest.raises(InvalidPlanError, match="straddle"):
            run_case(case, target, seed=1)
        return
    seed = zlib.crc32(f"{case}lanes".encode()) % 10_000
    assert run_case(case, target, seed).form == "lanes"


@pytest.mark.parametrize("target", LANES_TARGETS)
@pytest.mark.parametrize("order", ["block_tile", "tile_block"])
@pytest.mark.parametrize("positions", [0, 1, 5, "vector"], ids=lambda p: f"p{p}")
def test_lanes_widths_and_blocks(positions, order, target):
    """Output widths below, at and above a vector and its multiples, in blocks of any number of
    positions up to a vector (a last block of fewer), 16 to 48 output channels (a last block of
    padding channels), grouped in blocks of 16 channels, the residual and each activation;
    channel blocks outside rows and inside."""
    positions = WIDTHS[target] if positions == "vector" else positions
    for i, width in enumerate((1, 7, 15, 16, 17, 33, 56)):
        for m, group, residual, activation, out_plain in (
                (16, 1, False, "relu", False), (35, 1, True, "leaky_relu", True),
                (48, 3, True, "none", False)):
            case = ConvCase(6 * group, 4, width, m if group == 1 else 16 * group, (3, 3),
                            pads=(1, 1, 1, 1), group=group, batch=2, density=0.8,
                            residual=residual, activation=activation, out_plain=out_plain,
                            plan={"form": "lanes", "positions": positions, "loop_order": order})
            ran = run_case(case, target, seed=300 + i)
            assert (ran.positions, ran.loop_order) == (positions, order)


@pytest.mark.parametrize("target", LANES_TARGETS)
@pytest.mark.parametrize("vectors", [1, 2, 3, 4])
def test_lanes_blocks_of_several_vectors(vectors, target):
    """Blocks of 1-4 vectors of channels (AVX2's default is 2: each broadcast feeds both
    vectors' FMAs; with more vectors than positions the broadcasts come first and each weight
    vector feeds every position): every vector's sums transposed and stored to its own
    channels, the last block's padding channels and positions masked, the residual read per
    channel."""
    v = WIDTHS[target]
    for i, (width, m, group, positions) in enumerate(((1, 5, 1, 0), (7, 2 * v * vectors + 3, 1, 0),
                                                      (17, v * vectors * 2, 2, 5), (56, 35, 1, 0))):
        case = ConvCase(4 * group, 3, width, m, (3, 3), pads=(1, 1, 1, 1), group=group, batch=2,
                        density=0.9, residual=i % 2 == 1, activation="relu",
                        plan={"form": "lanes", "channels_per_block": v * vectors,
                              "positions": positions})
        ran = run_case(case, target, seed=700 + 10 * vectors + i)
        assert ran.channels_per_block == v * vectors


@pytest.mark.parametrize("target", LANES_TARGETS)
@pytest.mark.parametrize("form", ["lanes", "table"])
def test_output_over_its_residual(form, target):
    """The output written over the residual it adds (the runtime's in-place slot): each element
    read before any store reaches it. On AVX2 the lanes form stores whole vectors from blocks
    of fewer positions, blending in the next block's residual, not overwriting it; rows of 6-
    position blocks whose last block ends within a vector of the row's end, or stores masked."""
    v = WIDTHS[target]
    for i, (width, m, positions, activation) in enumerate(((56, 35, 0, "relu"), (20, 16, 0, "none"),
                                                           (13, 40, 5, "leaky_relu"), (5, 16, 0, "relu"))):
        plan = {"form": form, "positions": positions} if form == "lanes" else {"form": form}
        case = ConvCase(6, 4, width, m, (3, 3), pads=(1, 1, 1, 1), batch=2, density=0.9,
                        residual_in_place=True, activation=activation, plan=plan)
        assert run_case(case, target, seed=900 + i).form == form
    if v == 8:  # blocks of 6 on AVX2: those ending a vector before the row does store whole
        from sparsejit.codegen.direct_conv import wide_blocks
        assert [wide_blocks(w, 6, w // 6, 8) for w in (56, 20, 13, 5)] == [9, 3, 1, 0]
        assert wide_blocks(56, 8, 7, 8) == 0 and wide_blocks(56, 6, 9, 16) == 0


@pytest.mark.parametrize("target", LANES_TARGETS)
@pytest.mark.parametrize("order", ["block_tile", "tile_block"])
@pytest.mark.parametrize("vectors", [1, 2, 4])
def test_lanes_passes_over_input_channels(vectors, order, target):
    """Passes over input channels (the last one shorter): the first adds the bias and the
    residual (also over its own output, before the store reaches it), later ones the partial
    sums stored, the last activates; blocks storing whole vectors (AVX2) blend the next block's
    partial sums back; passes with no entries (one nonzero); groups; batch 2; flat runs."""
    v = WIDTHS[target]
    cases = [  # (in channels, width, out channels, group, density, residual, in place, activation)
        (20, 56, 2 * v * vectors + 3, 1, 0.9, True, False, "relu"),
        (20, 13, v * vectors, 1, 0.9, True, True, "leaky_relu"),
        (12, 29, v * vectors + 5, 1, "one", False, False, "clip"),
        (24, 7, 2 * v * vectors, 2, 0.8, True, True, "relu"),
        (9, 5, v * vectors, 1, 1.0, False, False, "none"),
    ]
    for i, (c, width, m, group, density, residual, in_place, activation) in enumerate(cases):
        case = ConvCase(c, 4, width, m, (3, 3), pads=(1, 1, 1, 1), group=group, batch=2,
                        density=density, residual=residual, residual_in_place=in_place,
                        activation=activation,
                        plan={"form": "lanes", "channels_per_block": v * vectors, "channel_chunk": 4,
                              "loop_order": order})
        ran = run_case(case, target, seed=1100 + 10 * vectors + i)
        assert ran.chunks(c // group) == -(-c // group // 4) > 1
    flat = ConvCase(10, 5, 9, 2 * v + 1, (1, 1), batch=2, density=0.9, residual=True, flat=True,
                    in_extra_pads=(0, 1, 0, 2), out_pads=(1, 0, 1, 0),
                    plan={"form": "lanes", "channel_chunk": 3, "loop_order": order})
    assert run_case(flat, target, seed=1199).chunks(10) == 4


@pytest.mark.parametrize("target", LANES_TARGETS)
@pytest.mark.parametrize("density", [1.0, "one"], ids=str)
@pytest.mark.parametrize("shape", FLAT_CASES, ids=str)
def test_lanes_flat_runs(shape, density, target):
    """Layouts of one row stride (a flat run for the table kernels): the lanes form walks the
    output's own rows; the residual (NaN outside its interior) is read only inside."""
    c, h, w, m, kernel, pads, extra, dilations, group = shape
    for residual, batch in ((False, 1), (True, 2)):
        case = ConvCase(c, h, w, 16 * group + 1 if group == 1 else 16 * group, kernel, pads=pads,
                        dilations=dilations, group=group, batch=batch, density=density,
                        plan={"form": "lanes"}, in_extra_pads=extra, out_pads=(1, 0, 1, 0),
                        residual=residual, flat=True)
        assert run_case(case, target, seed=zlib.crc32(repr((shape, batch)).encode())).form == "lanes"


@pytest.mark.parametrize("target", LANES_TARGETS)
@pytest.mark.parametrize("density", [1.0, 0.3], ids=str)
def test_lanes_flattened_pointwise_into_padded_rows(density, target):
    """A pointwise conv over a plain input, flattened, whose output has rows of its own: the
    lanes form stores each row's positions into that row (guard page after the buffer, pads
    untouched)."""
    for height, width, out_pads, out_plain, batch in (
            (3, 16, (1, 1, 1, 1), False, 2), (4, 19, (1, 1, 0, 1), False, 1),
            (5, 37, (0, 2, 0, 0), True, 2)):
        case = ConvCase(7, height, width, 21, (1, 1), batch=batch, density=density,
                        plan={"form": "lanes"}, out_pads=out_pads, out_plain=out_plain,
                        split=True, activation="leaky_relu")
        assert run_case(case, target, seed=height).form == "lanes"


@pytest.mark.parametrize("v, shuffles", [(8, 24), (16, 64)])
def test_lanes_transpose_plan_transposes(v, shuffles):
    """The epilogue's shuffles, simulated: value i of row p ends in lane p of column i."""
    from sparsejit.codegen.direct_conv import transpose_plan

    stages, columns = transpose_plan(v)
    assert len(stages) == shuffles
    values = [np.arange(v) + 100 * row for row in range(v)]
    for s in stages:
        mask = [int(item.split()[1]) for item in s.mask.split(", ")]
        assert s.dst == len(values) and len(mask) == v
        values.append(np.concatenate([values[s.a], values[s.b]])[mask])
    for column in range(v):
        assert list(values[columns[column]]) == [100 * row + column for row in range(v)]
