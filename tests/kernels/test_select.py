"""The default plan choice (kernels/select.py): the rules its constants promise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sparsejit import targets
from sparsejit.errors import InvalidPlanError
from sparsejit.kernels import direct_conv, select
from sparsejit.kernels.direct_conv import ConvWorkload
from sparsejit.kernels.layout import Layout


def _weight(wl: ConvWorkload, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (wl.out_channels, wl.in_channels // wl.group, *wl.kernel)
    return np.where(rng.random(shape) < density, rng.standard_normal(shape), 0).astype(np.float32)


@pytest.mark.parametrize("wl", [
    ConvWorkload(256, 56, 56, 64, (1, 1)),
    ConvWorkload(512, 28, 28, 128, (1, 1)),
    ConvWorkload(2048, 7, 7, 512, (1, 1), flat_stride=9),
    ConvWorkload(128, 112, 112, 128, (3, 3), pads=(1, 1, 1, 1)),
    ConvWorkload(512, 28, 28, 512, (3, 3), pads=(1, 1, 1, 1)),
    ConvWorkload(256, 56, 56, 256, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
], ids=str)
def test_sparse_passes_keep_the_slice_within_budget(wl):
    tgt = targets.get("avx512")
    plan = select.choose_conv(wl, _weight(wl, 0.1), tgt)
    # a large output (112 x 112 x 128 here) takes its passes inside its tiles, on half the budget
    big = 4 * wl.out_channels * wl.tile_rows * wl.tile_width > select.PASSES_IN_TILES_OUTPUT_BYTES
    inside = big and plan.channel_chunk != 0
    budget = select.pass_slice_bytes(wl) // 2 if inside else select.pass_slice_bytes(wl)
    assert plan.form == "table"
    assert plan.loop_order == ("tile_chunk_block" if inside else "tile_block")
    channels = plan.channel_chunk or wl.in_channels
    slice_bytes = 4 * select.tile_input_floats(wl, plan.rows_per_tile, plan.vectors_per_row,
                                               plan.vector_width)
    taps = wl.kernel[0] * wl.kernel[1]
    fitting = [c for c in select.PASS_CHANNELS if c * slice_bytes <= budget]
    if plan.channel_chunk and plan.channel_chunk not in fitting + [select.PASS_CHANNELS[0]]:
        # grown past the slice budget only because a smaller pass had too few nonzeros
        assert 0.1 * taps * plan.channel_chunk / 2 < select.PASS_MIN_ENTRIES * 1.1
        assert plan.channel_chunk / 2 >= (fitting[-1] if fitting else select.PASS_CHANNELS[0])
        return
    # the largest measured pass size whose slice fits, unless even the smallest does not
    assert channels * slice_bytes <= budget or channels == select.PASS_CHANNELS[0]
    if plan.channel_chunk:
        bigger = 2 * plan.channel_chunk
        assert bigger * slice_bytes > budget or bigger > max(select.PASS_CHANNELS)
        assert plan.channel_chunk < wl.in_channels


def test_large_outputs_take_their_passes_inside_their_tiles():
    """VGG-16 conv1_2 (14 MB of output): every pass of a tile before the next tile, passes
    narrower than the slice budget alone gives; its tile stays the one chosen without it. A
    56 x 56 layer (3.2 MB of partial sums) and a one-pass layer keep pass order."""
    tgt = targets.get("avx512")
    conv1_2 = ConvWorkload(64, 224, 224, 64, (3, 3), pads=(1, 1, 1, 1))
    plan = select.choose_conv(conv1_2, _weight(conv1_2, 0.1), tgt)
    assert (plan.loop_order, plan.channel_chunk) == ("tile_chunk_block", 16)
    # the budget its tile was chosen by would give 32 channels, in pass order
    chunk, order = select.sparse_passes(conv1_2, 0.1, plan.rows_per_tile, plan.vectors_per_row, 16,
                                        select.PASS_SLICE_BYTES)
    assert (chunk, order) == (32, "tile_block")
    small = ConvWorkload(256, 56, 56, 256, (3, 3), pads=(1, 1, 1, 1))
    assert 4 * 256 * 56 * 56 > select.PASSES_IN_TILES_OUTPUT_BYTES // 2
    assert select.choose_conv(small, _weight(small, 0.1), tgt).loop_order == "tile_block"
    one_pass = ConvWorkload(64, 56, 56, 256, (1, 1))  # 3.2 MB of output, 64 channels: one pass
    plan = select.choose_conv(one_pass, _weight(one_pass, 0.1), tgt)
    assert (plan.channel_chunk, plan.loop_order) == (0, "tile_block")


def test_sparse_passes_grow_until_they_have_entries():
    """A 1x1 conv on a 28 x 28 map (7 x 2 tiles): 64 channels fit the slice budget; at 30 %
    they hold enough nonzeros, at 10 % the pass doubles, at 1 % no pass can: one pass."""
    wl = ConvWorkload(1024, 28, 28, 256, (1, 1))
    at_30, at_10, at_1 = (select.sparse_passes(wl, d, 7, 2, 16)[0] for d in (0.30, 0.10, 0.01))
    assert at_30 == 64 and at_10 == 128 and at_1 == 0
    assert at_10 * 0.10 >= select.PASS_MIN_ENTRIES > at_30 * 0.10  # 64 at 10 %: too few


def test_several_taps_take_passes_within_the_smaller_budget():
    """A 3x3 conv on a 7 x 7 map runs flat (336 bytes of input per channel and tile): 64-channel
    passes (21 KB), not the 128 (43 KB) a 1x1 conv's budget allows; a 1x1 conv on the same map
    keeps 256 (64 KB)."""
    tgt = targets.get("avx512")
    three = ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1), flat_stride=9)
    assert select.choose_conv(three, _weight(three, 0.1), tgt).channel_chunk == 64
    assert select.sparse_passes(three, 0.1, 1, 4, 16, select.PASS_SLICE_BYTES)[0] == 128
    one = ConvWorkload(2048, 7, 7, 512, (1, 1), flat_stride=9)
    assert select.choose_conv(one, _weight(one, 0.1), tgt).channel_chunk == 256


def test_one_vector_of_outputs_and_grouped_single_pass_keep_blocks_outside():
    tgt = targets.get("avx512")
    lanes_fc = ConvWorkload(9216, 1, 8, 4096, (1, 1))  # a pruned FC, batch 8 in the lanes
    plan = select.choose_conv(lanes_fc, _weight(lanes_fc, 0.1), tgt)
    assert (plan.channel_chunk, plan.loop_order) == (0, "block_tile")
    grouped = ConvWorkload(32, 27, 27, 64, (5, 5), pads=(2, 2, 2, 2), group=2)  # 16 per group
    assert select.sparse_passes(grouped, 0.1, 9, 2, 16) == (0, "block_tile")
    ungrouped = replace(grouped, in_channels=64, group=1)  # 1.9 KB slices: 16 channels in 40 KB
    assert select.sparse_passes(ungrouped, 0.1, 9, 2, 16) == (16, "tile_block")


def test_tile_input_floats_counts_the_halo():
    v = 16
    three = ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1))
    assert select.tile_input_floats(three, 4, 4, v) == (4 + 2) * (64 + 2)
    strided = ConvWorkload(64, 56, 56, 64, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    assert select.tile_input_floats(strided, 2, 1, v) == (2 * 1 + 2 + 1) * (15 * 2 + 2 + 1)
    flat = ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1), flat_stride=9)
    assert select.tile_input_floats(flat, 1, 4, v) == 64 + 2 * 9 + 2


@pytest.mark.parametrize("rows, vectors, accumulators, tile", [
    (112, 7, 2, (2, 1)),    # ResNet-50 conv1: 1 x 2 would leave the 4th tile of a row half empty
    (55, 4, 2, (1, 2)),     # CaffeNet conv1: 2 x 1 pads a 56th row, 1 x 2 wastes nothing
    (224, 14, 2, (1, 2)),   # VGG-16 conv1_1: no waste either way, the wider rows
    (112, 14, 4, (2, 2)),   # AVX2's 4 accumulators over 14 vectors: 1 x 4 pads 2 of 16
    (1, 1, 2, (1, 1)),      # a single output: no split fits, one accumulator
    (5, 1, 4, (4, 1)),      # one vector per row: the accumulators go to rows
])
def test_first_conv_tile_pads_the_fewest_outputs(rows, vectors, accumulators, tile):
    assert select.first_conv_tile(rows, vectors, accumulators) == tile
    rb, cb = tile
    assert rb <= rows and cb <= vectors


@pytest.mark.parametrize("wl", [
    ConvWorkload(64, 112, 112, 128, (3, 3), pads=(1, 1, 1, 1)),    # VGG-16 conv2_1
    ConvWorkload(64, 224, 224, 64, (3, 3), pads=(1, 1, 1, 1)),     # VGG-16 conv1_2
    ConvWorkload(256, 56, 56, 64, (1, 1)),
    ConvWorkload(512, 28, 28, 512, (3, 3), pads=(1, 1, 1, 1)),
], ids=str)
def test_sparse_tile_is_near_best_with_enough_channels_per_pass(wl):
    """A sparse layer's tile is the first near-best tile (by work, then widest rows) whose
    passes over input channels take PASS_ENOUGH_CHANNELS, or the most that any allows."""
    tgt = targets.get("avx512")
    plan = select.choose_conv(wl, _weight(wl, 0.1), tgt)
    vectors = -(-wl.tile_width // 16)
    near = select._near_best_tiles(wl.tile_rows, vectors, select.accumulator_budget(tgt))
    tile = (plan.rows_per_tile, plan.vectors_per_row)
    fits = select._l1_tile(wl, 0.1, vectors, select.accumulator_budget(tgt), 16)
    if fits is not None:  # a tile whose passes fit L1 goes first (test_l1_tiles)
        assert tile == fits
        return
    assert tile in near
    cg = wl.in_channels // wl.group

    def channels(t):  # tiles are chosen by what the 1x1 budget allows
        return select.sparse_passes(wl, 0.1, *t, 16, select.PASS_SLICE_BYTES)[0] or cg
    enough = min(select.PASS_ENOUGH_CHANNELS, max(map(channels, near)))
    assert channels(tile) >= enough
    assert all(channels(t) < enough for t in near[:near.index(tile)])


@pytest.mark.parametrize("wl, tile, chunk", [
    (ConvWorkload(128, 28, 28, 128, (3, 3), pads=(1, 1, 1, 1)), (4, 2), 32),  # 26 KB, not 7 x 2's 39
    (ConvWorkload(512, 28, 28, 128, (1, 1)), (4, 2), 128),  # 64 KB, not 7 x 2's 112
    (ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)), (4, 4), 16),  # already fits
    (ConvWorkload(256, 14, 14, 256, (3, 3), pads=(1, 1, 1, 1)), None, 32),  # 7 x 1: 18 % more work
    (ConvWorkload(128, 28, 28, 512, (1, 1)), None, 0),  # one pass
    # strided: phase-split rows twice as long; 20 % more work allowed, slices up to 40 KB
    (ConvWorkload(128, 56, 56, 128, (3, 3), (2, 2), (1, 1, 1, 1)), (4, 2), 16),
    (ConvWorkload(256, 28, 28, 256, (3, 3), (2, 2), (1, 1, 1, 1)), (7, 1), 16),
], ids=str)
def test_l1_tiles(wl, tile, chunk):
    """Layers of several passes take a tile within 15 % of the least work, as wide as the
    widest, whose slices fit L1, with the most channels per pass; 14 x 14 maps and one-pass
    layers keep the tile chosen by work."""
    tgt = targets.get("avx512")
    vectors = -(-wl.tile_width // 16)
    assert select._l1_tile(wl, 0.1, vectors, select.accumulator_budget(tgt), 16) == tile
    plan = select.choose_conv(wl, _weight(wl, 0.1), tgt)
    if tile is not None:
        assert (plan.rows_per_tile, plan.vectors_per_row) == tile
    assert plan.channel_chunk == chunk


def test_sparse_tile_keeps_wide_rows_that_have_enough_channels():
    """AVX2 VGG-16 conv2_2: 1 x 14 already passes 32 channels; it is not traded for 5 x 2 in
    one pass (7.4 ms against 9.5). Its output is large, so its passes then go inside its tiles,
    16 channels each (on Zen 4 at 8 lanes: 6.9 ms against 9.1 for 32-channel passes in order)."""
    wl = ConvWorkload(128, 112, 112, 128, (3, 3), pads=(1, 1, 1, 1))
    plan = select.choose_conv(wl, _weight(wl, 0.1), targets.get("avx2"))
    assert (plan.rows_per_tile, plan.vectors_per_row) == (1, 14)
    assert select.sparse_passes(wl, 0.1, 1, 14, 8, select.PASS_SLICE_BYTES) == (32, "tile_block")
    assert (plan.channel_chunk, plan.loop_order) == (16, "tile_chunk_block")


def test_phase_plane_weights_of_a_dense_conv_stay_dense():
    """A dense 3x3 stride-2 conv over its phase planes has 9 of 16 taps per plane set: its
    weight density is 0.56, but over the taps some channel uses it is 1: dense blocking."""
    from sparsejit.kernels.direct_conv import plane_conv, plane_row_floats, plane_weights

    wl = ConvWorkload(16, 14, 14, 32, (3, 3), (2, 2), (1, 1, 1, 1))
    _, conv = plane_conv(wl, plane_row_floats(wl))
    dense = plane_weights(_weight(wl, 1.0), 2)
    assert select.density(dense) == pytest.approx(9 / 16) and select.used_tap_density(dense) == 1.0
    tgt = targets.get("avx512")
    assert select.choose_conv(conv, dense, tgt).channels_per_block > 1
    sparse = plane_weights(_weight(wl, 0.1), 2)
    assert select.used_tap_density(sparse) < 0.2
    assert select.choose_conv(conv, sparse, tgt).channels_per_block == 1


@pytest.mark.parametrize("target, wl, density, dense", [
    # AVX2, blocks of 4 channels. 1x1: they win from ~0.55 (1.07-1.26x the sparse plan at 0.6)
    ("avx2", ConvWorkload(256, 56, 56, 64, (1, 1)), 0.5, False),
    ("avx2", ConvWorkload(1024, 14, 14, 256, (1, 1)), 0.58, True),
    # more taps: sparse sums in shifted frames win up to ~0.8 (1.15-1.36x at 0.6)
    ("avx2", ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)), 0.65, False),
    ("avx2", ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1)), 0.75, False),
    ("avx2", ConvWorkload(256, 14, 14, 256, (3, 3), pads=(1, 1, 1, 1)), 0.9, True),
    ("avx2", ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)), 1.0, True),
    # a first conv (3 input channels) keeps the FC layers' threshold
    ("avx2", ConvWorkload(3, 224, 224, 64, (7, 7), (2, 2), (3, 3, 3, 3)), 0.7, True),
    # AVX-512, the lanes form. 1x1: it wins from ~0.45-0.55; more taps: from ~0.57-0.73
    ("avx512", ConvWorkload(256, 56, 56, 64, (1, 1)), 0.45, False),
    ("avx512", ConvWorkload(1024, 14, 14, 256, (1, 1)), 0.53, True),
    ("avx512", ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)), 0.65, False),
    ("avx512", ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1)), 0.75, True),
    # on 7 x 7 maps (the sparse kernels lose a quarter of their lanes) from 0.85 of those
    ("avx512", ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1)), 0.62, True),
    ("avx512", ConvWorkload(512, 14, 14, 512, (3, 3), pads=(1, 1, 1, 1)), 0.62, False),
    ("avx512", ConvWorkload(512, 7, 7, 2048, (1, 1)), 0.45, True),
    ("avx512", ConvWorkload(512, 1, 49, 2048, (1, 1)), 0.45, True),  # the same, flattened
    ("avx512", ConvWorkload(512, 14, 14, 2048, (1, 1)), 0.45, False),
    # a first conv keeps the table form's own blocking
    ("avx512", ConvWorkload(3, 224, 224, 64, (7, 7), (2, 2), (3, 3, 3, 3)), 0.55, False),
], ids=str)
def test_dense_kernels_from_the_density_where_they_win(target, wl, density, dense):
    weight = _weight(wl, density)
    tgt = targets.get(target)
    lanes = select.lanes_thresholds(tgt) and select.lanes_fit(wl, tgt) is None
    assert select.conv_is_dense(weight, lanes, positions=wl.out_height * wl.out_width) == dense
    plan = select.choose_conv(wl, weight, tgt)
    dense_plan = plan.form == "lanes" if target == "avx512" else plan.channels_per_block > 1
    assert dense_plan == dense, plan


@pytest.mark.parametrize("target, vectors", [("avx512", 4), ("avx2", 14), ("sse", 12)])
def test_flat_pointwise_tiles_read_runs_of_each_plane(target, vectors):
    """A sparse 1x1 conv run flat over 56 x 56 planes takes tiles of 4 vectors on AVX-512 (256
    bytes of each plane: Zen 5's best) and as many as its accumulators allow on narrower
    vectors (AVX2 on Zen 3: 128-byte runs per plane ran 1.45-1.8x slower)."""
    flat = ConvWorkload(256, 1, 3136, 64, (1, 1))
    plan = select.choose_conv(flat, _weight(flat, 0.1), targets.get(target))
    assert (plan.rows_per_tile, plan.vectors_per_row) == (1, vectors), plan
    assert vectors == select.FLAT_POINTWISE_VECTORS.get(
        targets.get(target).vector_width, select.accumulator_budget(targets.get(target)))


def test_pointwise_one_vector_columns_tile_in_at_most_8_rows():
    """ResNet-50's 14 x 14 pointwise convs on AVX-512 (one vector per row): 2 tiles of 7 rows,
    not one of 14; 3x3 convs on the same map and wider maps keep their tiles."""
    tgt = targets.get("avx512")
    pointwise = ConvWorkload(1024, 14, 14, 256, (1, 1))
    assert select.choose_conv(pointwise, _weight(pointwise, 0.1), tgt).rows_per_tile == 7
    assert select.pointwise_column_rows(pointwise, 14, 1, 1) == 7
    assert select.pointwise_column_rows(pointwise, 17, 1, 1) == 6  # 3 tiles of at most 8
    assert select.pointwise_column_rows(pointwise, 8, 1, 1) == 8
    assert select.pointwise_column_rows(pointwise, 14, 1, 2) == 14  # two vectors per row
    three = ConvWorkload(256, 14, 14, 256, (3, 3), pads=(1, 1, 1, 1))
    assert select.pointwise_column_rows(three, 14, 1, 1) == 14
    assert select.choose_conv(three, _weight(three, 0.1), tgt).rows_per_tile == 14


def _given_the_producer(wl: ConvWorkload, density: float = 0.1):
    """(weight, the producer's layout: padded rows rounded to 16 lanes, the AVX-512 plan chosen
    given that layout)."""
    w = _weight(wl, density)
    produced = Layout.padded(wl.in_channels, wl.height, wl.width, wl.pads, align=16)
    return w, produced, select.choose_conv(wl, w, targets.get("avx512"), in_layout=produced)


def test_sparse_table_plans_sum_in_shifted_frames_given_the_producers_layout():
    """choose_conv takes shifted sums for a sparse table plan whose tiles hold the rows and the
    frame (ResNet-50's 14 x 14 3x3 conv: 14 x 1 tiles, 14 + 2 lanes of 16), strided ones on
    their phase-split copy; not without the producer's layout, not for dense layers, not
    where the user's tile leaves no room, and never against the user's explicit word."""
    host = targets.get("avx512")
    wl = ConvWorkload(256, 14, 14, 256, (3, 3), pads=(1, 1, 1, 1))
    w, produced, plan = _given_the_producer(wl)
    assert plan.shifted_sums and (plan.rows_per_tile, plan.vectors_per_row) == (14, 1)
    assert not select.choose_conv(wl, w, host).shifted_sums
    assert not select.choose_conv(wl, np.ones_like(w), host, in_layout=produced).shifted_sums
    strided = ConvWorkload(128, 56, 56, 128, (3, 3), (2, 2), (1, 1, 1, 1))
    assert select.choose_conv(strided, _weight(strided, 0.1), host,
                              in_layout=Layout.padded(128, 56, 56, (1, 1, 1, 1), align=16)).shifted_sums
    narrow = select.choose_conv(replace(wl, width=30), w, host, {"vectors_per_row": 1},
                                in_layout=Layout.padded(256, 14, 30, (1, 1, 1, 1), align=16))
    assert not narrow.shifted_sums  # 30 columns in tiles of 16: not whole rows
    assert not select.choose_conv(wl, w, host, {"shifted_sums": False}, in_layout=produced).shifted_sums
    pointwise = ConvWorkload(256, 14, 14, 256, (1, 1))
    assert not select.choose_conv(pointwise, _weight(pointwise, 0.1), host,
                                  in_layout=Layout.padded(256, 14, 14, align=16)).shifted_sums


def test_shifted_sums_where_their_frames_align_half_the_loads():
    """7 x 7 maps run flat: rows 9 floats apart leave 3 lanes to spare, the frames would align
    about a fifth of the loads (ResNet-50: 0.94x), not taken; rows 11 apart (GoogLeNet, whose
    5x5 convs pad its maps by 2) leave 7, half the loads aligned (1.05-1.16x), taken."""
    host = targets.get("avx512")
    resnet = ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1), flat_stride=9)
    rows9 = Layout.padded(512, 7, 7, (1, 1, 1, 1))
    assert not select.choose_conv(resnet, _weight(resnet, 0.1), host, in_layout=rows9).shifted_sums
    googlenet = ConvWorkload(832, 7, 7, 320, (3, 3), pads=(1, 1, 1, 1), flat_stride=11)
    rows11 = Layout.padded(832, 7, 7, (2, 2, 2, 2))
    plan = select.choose_conv(googlenet, _weight(googlenet, 0.1), host, in_layout=rows11)
    assert plan.shifted_sums and plan.vectors_per_row * 16 - googlenet.tile_width == 7


def test_rows_a_multiple_of_the_vector_take_a_wider_tile_for_frames():
    """VGG-16's 112- and 224-column 3x3 convs fill their vectors: no lane to spare for a frame.
    Given the producer's layout they take rows whole and one vector wider (1 x 8: the most
    rows whose 16-channel slices fit L1, 25 KB; 224: one row of 15, whose slices fit in no
    tile), with frames; an override of the tile keeps it."""
    host = targets.get("avx512")
    for width, tile in ((112, (1, 8)), (224, (1, 15))):
        wl = ConvWorkload(64, 20, width, 64, (3, 3), pads=(1, 1, 1, 1))
        w = _weight(wl, 0.1)
        produced = Layout.padded(64, 20, width, (1, 1, 1, 1), align=16)
        plan = select.choose_conv(wl, w, host, in_layout=produced)
        assert plan.shifted_sums and (plan.rows_per_tile, plan.vectors_per_row) == tile
        assert not select.choose_conv(wl, w, host).shifted_sums  # no layout, no frames
        kept = select.choose_conv(wl, w, host, {"vectors_per_row": 7}, in_layout=produced)
        assert kept.vectors_per_row == 7 and not kept.shifted_sums


def test_framed_passes_carry_enough_entries():
    """A 56 x 56 3x3 conv, whose L1 rule gives 4 x 4 tiles with 16-channel passes (14 entries
    per output channel at 10 %), takes 2 x 4 tiles with 32 once its sums are framed (each pass
    rotates every accumulator); without frames, with passes inside tiles (VGG-16's 224 x 224,
    1-row tiles) or with the user's chunk, it keeps its passes."""
    host = targets.get("avx512")
    wl = ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1))
    w, produced, plan = _given_the_producer(wl)
    assert plan.shifted_sums and (plan.rows_per_tile, plan.vectors_per_row) == (2, 4)
    assert plan.channel_chunk == 32 and plan.loop_order == "tile_block"
    assert 0.1 * 32 * 9 >= select.PASS_MIN_ENTRIES_FRAMED > 0.1 * 16 * 9
    unframed = select.choose_conv(wl, w, host)
    assert (unframed.rows_per_tile, unframed.channel_chunk) == (4, 16)
    kept = select.choose_conv(wl, w, host, {"channel_chunk": 16}, in_layout=produced)
    assert kept.shifted_sums and kept.channel_chunk == 16 and kept.rows_per_tile == 4
    big = ConvWorkload(64, 224, 224, 64, (3, 3), pads=(1, 1, 1, 1))
    plan = select.choose_conv(big, _weight(big, 0.1), host,
                              in_layout=Layout.padded(64, 224, 224, (1, 1, 1, 1), align=16))
    assert plan.loop_order == "tile_chunk_block" and plan.channel_chunk == 16


def test_framed_passes_of_small_tiles_carry_enough_fmas():
    """A flat 7 x 7-output strided conv over its phase planes (a 2x2 conv over 4 x 512 plane
    channels, one tile of 4 vectors): 128-channel passes carry 29 entries but only 115 FMAs per
    block, so they take 256 channels; a 7 x 7 3x3 conv passing 64 channels (58 entries, 230
    FMAs) keeps them."""
    host = targets.get("avx512")
    planes = ConvWorkload(2048, 8, 8, 512, (2, 2), flat_stride=8)
    w = _weight(planes, 0.056, seed=3)
    plan = select.choose_conv(planes, w, host, in_layout=Layout(2048, 8, 8))
    assert plan.shifted_sums and plan.channel_chunk == 256, plan
    assert 0.056 * 256 * 4 * 4 >= select.PASS_MIN_FRAMED_FMAS > 0.056 * 128 * 4 * 4
    unframed = select.choose_conv(planes, w, host)
    assert not unframed.shifted_sums and unframed.channel_chunk == 128
    rows8 = ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1), flat_stride=8)
    plan = select.choose_conv(rows8, _weight(rows8, 0.1), host,
                              in_layout=Layout.padded(512, 7, 7, (2, 0, 1, 1)))
    assert plan.shifted_sums and plan.channel_chunk == 64, plan


def test_dense_layers_visit_every_channel_block_per_tile():
    """A dense layer's tile input stays in L1 while every block of channels reads it (tiles
    outside blocks), in one pass too (48 input channels); an image's first conv, a few
    channels deep, keeps blocks outside tiles. (AVX2, on a map narrower than its lanes form
    takes; on AVX-512 dense layers run the lanes form, below.)"""
    host = targets.get("avx2")
    narrow = ConvWorkload(48, 14, 14, 96, (3, 3), pads=(1, 1, 1, 1))
    plan = select.choose_conv(narrow, np.ones((96, 48, 3, 3), np.float32), host)
    assert plan.channels_per_block == 3 and plan.channel_chunk == 0
    assert plan.loop_order == "tile_block"
    first = ConvWorkload(3, 224, 224, 64, (7, 7), (2, 2), (3, 3, 3, 3))
    assert select.choose_conv(first, np.ones((64, 3, 7, 7), np.float32), host).loop_order == "block_tile"


def test_avx2_lanes_form_sums_many_input_channels_in_passes():
    """On AVX2 a dense conv over more than 128 input channels (per group) runs the lanes form
    in passes of 64 (a block's weights for a pass stay near L1); 128 or fewer in one pass; AVX-512
    in one pass (not measured there); an override names its own."""
    avx2, avx512 = targets.get("avx2"), targets.get("avx512")

    def plan(c: int, target, override=None):
        wl = ConvWorkload(c, 28, 28, 64, (3, 3), pads=(1, 1, 1, 1))
        return select.choose_conv(wl, np.ones((64, c, 3, 3), np.float32), target, override)

    assert plan(256, avx2).form == "lanes" and plan(256, avx2).channel_chunk == 64
    assert plan(128, avx2).channel_chunk == 0 and plan(512, avx512).channel_chunk == 0
    assert plan(256, avx2, {"channel_chunk": 0}).channel_chunk == 0
    assert plan(256, avx2, {"channel_chunk": 32}).form == "lanes"


def test_dense_pointwise_convs_with_weights_in_l2_run_one_pass():
    """A dense 1x1 conv over more than 96 input channels runs in passes of 64, but in one pass
    where all its weights fit DENSE_ONE_PASS_WEIGHT_BYTES and a tile's slice over every channel
    DENSE_ONE_PASS_SLICE_BYTES; convs with more taps keep their passes."""
    avx2 = targets.get("avx2")

    def chunk(c: int, size: int, m: int, k: int = 1) -> int:
        wl = ConvWorkload(c, size, size, m, (k, k), pads=(k // 2,) * 4)
        return select.choose_conv(wl, np.ones((m, c, k, k), np.float32), avx2).channel_chunk

    assert chunk(128, 28, 512) == 0 and chunk(256, 56, 128) == 0  # 256 and 128 KB of weights
    assert chunk(512, 28, 256) == 64 and chunk(512, 7, 2048) == 64 and chunk(256, 14, 1024) == 64
    assert chunk(128, 14, 32, 3) == 64  # 147 KB, but 9 taps
    assert chunk(64, 56, 256) == 0  # 64 channels: one pass anyway


def test_dense_blocks_take_the_most_fmas_per_load():
    """With FMA, a dense table block holds the channels and accumulators that run the most
    FMAs per load within the registers: 3 x 4 on AVX2 (12 sums, 3 broadcasts and an input
    vector: 16 registers), 4 x 6 on AVX-512; a last block's padded channels count as lost, so
    2 channels per group take 2 x 6; a grouped conv's blocks divide its channels per group.
    Without FMA (SSE) the largest block dividing the channels."""
    avx2, avx512, sse = (targets.get(n) for n in ("avx2", "avx512", "sse"))
    assert select.dense_block(64, avx2) == (3, 4) and select.dense_block(2, avx2) == (2, 6)
    mb, per_channel = select.dense_block(256, avx2)
    assert mb * per_channel + mb + 1 <= avx2.vector_registers
    assert select.dense_block(20, avx2) == (3, 4) and select.dense_block(20, avx2, grouped=True) == (2, 6)
    assert select.dense_block(64, avx512) == (4, 6)
    assert select.dense_block(64, sse) == (4, 2) and select.dense_block(6, sse)[0] == 3
    narrow = ConvWorkload(64, 14, 14, 64, (3, 3), pads=(1, 1, 1, 1))
    plan = select.choose_conv(narrow, np.ones((64, 64, 3, 3), np.float32), avx2)
    assert (plan.channels_per_block, plan.rows_per_tile * plan.vectors_per_row) == (3, 4), plan


def test_dense_layers_take_the_lanes_form_on_avx512():
    """Dense layers on AVX-512 put 16 output channels in the lanes (every lane an output
    whatever the map's width), unless a plan override names table blocking; an image's first
    conv (a few input channels) keeps its own blocking; AVX2 keeps dense blocks for 1x1 convs
    (below)."""
    host = targets.get("avx512")
    pointwise = ConvWorkload(1024, 14, 14, 256, (1, 1))
    dense = np.ones((256, 1024, 1, 1), np.float32)
    plan = select.choose_conv(pointwise, dense, host)
    assert plan.form == "lanes" and plan.channels_per_block == 16
    assert plan.accumulators == plan.positions == 14  # the rows of 14: one block each
    assert select.choose_conv(pointwise, dense, host, {"positions": 7}).positions == 7
    table = select.choose_conv(pointwise, dense, host, {"rows_per_tile": 2, "channel_chunk": 128})
    assert table.form == "table" and table.channels_per_block == 4
    passes = select.choose_conv(pointwise, dense, host, {"channel_chunk": 128})
    assert passes.form == "lanes" and passes.chunks(1024) == 8
    assert select.choose_conv(pointwise, dense, targets.get("avx2")).form == "table"
    first = ConvWorkload(3, 224, 224, 64, (7, 7), (2, 2), (3, 3, 3, 3))
    assert select.choose_conv(first, np.ones((64, 3, 7, 7), np.float32), host).form == "table"
    sparse = select.choose_conv(pointwise, _weight(pointwise, 0.1), host)
    assert sparse.form == "table" and sparse.channels_per_block == 1
    # asked for where it cannot run: an error naming the layer, not a wrong kernel
    with pytest.raises(InvalidPlanError, match="'pw'.*AVX2, AVX-512"):
        select.choose_conv(pointwise, dense, targets.get("sse"), {"form": "lanes"}, "pw")
    grouped = ConvWorkload(48, 14, 14, 48, (3, 3), pads=(1, 1, 1, 1), group=6)
    with pytest.raises(InvalidPlanError, match="'g'.*straddle"):
        select.choose_conv(grouped, _weight(grouped, 1.0), host, {"form": "lanes"}, "g")
    assert select.choose_conv(grouped, _weight(grouped, 1.0), host).form == "table"


@pytest.mark.parametrize("wl, form", [
    (ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)), "lanes"),
    (ConvWorkload(128, 28, 28, 128, (3, 3), pads=(1, 1, 1, 1)), "lanes"),
    (ConvWorkload(128, 112, 112, 128, (3, 3), pads=(1, 1, 1, 1)), "lanes"),
    (ConvWorkload(64, 28, 28, 32, (5, 5), pads=(2, 2, 2, 2)), "lanes"),
    (ConvWorkload(64, 28, 28, 64, (3, 3), pads=(1, 1, 1, 1), group=4), "lanes"),  # 16 a group
    (ConvWorkload(64, 28, 28, 64, (3, 3), pads=(1, 1, 1, 1), group=8), "table"),  # 8 a group
    (ConvWorkload(256, 14, 14, 256, (3, 3), pads=(1, 1, 1, 1)), "table"),
    (ConvWorkload(512, 7, 7, 512, (3, 3), pads=(1, 1, 1, 1)), "table"),
    (ConvWorkload(256, 56, 56, 64, (1, 1)), "table"),
    (ConvWorkload(3, 224, 224, 64, (7, 7), (2, 2), (3, 3, 3, 3)), "table"),
], ids=str)
def test_dense_layers_on_avx2_take_the_lanes_form_on_wide_maps(wl, form):
    """On AVX2 the lanes form holds two vectors of channels (16) and 6 positions (12 sums in 16
    registers), over at most 64 input channels four vectors (32) and 3 positions where blocks of
    32 divide the channels, and runs dense convs with several taps on maps at least 28 wide,
    where it beat the table form's dense blocks; 1x1 convs, narrower maps, first convs and
    groups of channels a block would straddle keep dense table blocks. Its thresholds are the
    table form's."""
    avx2 = targets.get("avx2")
    plan = select.choose_conv(wl, _weight(wl, 1.0), avx2)
    assert plan.form == form, plan
    wide = wl.in_channels // wl.group <= 64 and (wl.out_channels // wl.group) % 32 == 0
    if form == "lanes":
        assert (plan.channels_per_block, plan.positions, plan.accumulators) == (
            (32, 3, 12) if wide else (16, 6, 12))
    else:
        assert plan.channels_per_block > 1
    assert not select.lanes_thresholds(avx2) and select.lanes_thresholds(targets.get("avx512"))
    assert select.choose_conv(wl, _weight(wl, 0.75), avx2).channels_per_block == (
        1 if wl.kernel != (1, 1) and wl.in_channels > 4 else plan.channels_per_block)


def test_lanes_rows_outside_blocks_where_the_input_outweighs_the_weights():
    """VGG-16's conv2_2 (6.4 MB of input, 0.6 MB of weights) walks rows outside its channel
    blocks; conv4_2 (1.6 MB of input, 9.4 MB of weights) blocks outside rows."""
    host = targets.get("avx512")
    for wl, order in ((ConvWorkload(128, 112, 112, 128, (3, 3), pads=(1, 1, 1, 1)), "tile_block"),
                      (ConvWorkload(512, 28, 28, 512, (3, 3), pads=(1, 1, 1, 1)), "block_tile")):
        assert select.choose_conv(wl, _weight(wl, 1.0), host).loop_order == order


@pytest.mark.parametrize("columns, taps, positions", [
    (56, 1, 14), (196, 1, 14), (3136, 1, 14), (28, 1, 14), (48, 1, 16), (16, 1, 16),
    (49, 1, 13), (7, 1, 7), (1, 1, 1), (17, 1, 9), (33, 1, 11),
    (224, 9, 8), (112, 9, 8), (56, 9, 8), (28, 9, 14), (14, 9, 14), (7, 9, 7), (49, 9, 13)])
def test_lanes_positions_fill_blocks(columns, taps, positions):
    """A row's positions in blocks of half a vector to a vector, every block full where a
    divisor allows (half a vector first for several taps, 14 first for one), else as even as
    can be. Blocks of several vectors of channels (AVX2) take 12 sums' worth of positions."""
    assert direct_conv.lanes_positions(columns, 16, taps) == positions
    assert direct_conv.lanes_positions(columns, 8, taps, vectors=2) == min(6, columns)
    assert direct_conv.lanes_positions(columns, 8, taps, vectors=3) == min(4, columns)


def test_large_pointwise_convs_split_their_tiles_between_threads():
    """On several threads a 1x1 conv over a map of TILES_SPLIT_MIN_POSITIONS or more splits
    its output tiles, anything else (one thread, 3x3, strided, smaller maps) its channel
    blocks; an override of the split wins."""
    avx512 = targets.get("avx512")
    big = ConvWorkload(256, 56, 56, 64, (1, 1))
    plan = select.choose_conv(big, _weight(big, 0.1), avx512, threads=2)
    assert plan.split == "tiles"
    assert select.choose_conv(big, _weight(big, 0.1), avx512).split == "blocks"
    assert select.choose_conv(big, _weight(big, 0.1), avx512, {"split": "blocks"},
                              threads=2).split == "blocks"
    # the rest of the plan is the one-thread plan's
    assert replace(plan, split="blocks") == select.choose_conv(big, _weight(big, 0.1), avx512)
    for wl in (ConvWorkload(512, 28, 28, 128, (1, 1)),
               ConvWorkload(64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)),
               ConvWorkload(256, 112, 112, 64, (1, 1), strides=(2, 2))):
        assert select.choose_conv(wl, _weight(wl, 0.1), avx512, threads=2).split == "blocks", wl
    # with the producer's layout (shifted sums considered) too
    produced = Layout.padded(256, 56, 56, align=16)
    assert select.choose_conv(big, _weight(big, 0.1), avx512, in_layout=produced,
                              threads=2).split == "tiles"


def test_flat_runs_storing_into_rows_of_their_own_take_one_pass():
    """A flattened pointwise conv whose output has rows of its own (split stores) runs its
    input channels in one pass, unless an override asks for passes; into plain planes it
    keeps the passes its slices want."""
    avx512 = targets.get("avx512")
    flat = ConvWorkload(512, 1, 28 * 28, 128, (1, 1))
    weight = _weight(flat, 0.1)
    padded = Layout.padded(128, 28, 28, (1, 1, 1, 1), align=16)
    plain = Layout(128, 1, 28 * 28)
    assert select.choose_conv(flat, weight, avx512, out_layout=plain).channel_chunk > 0
    assert select.choose_conv(flat, weight, avx512, out_layout=padded).channel_chunk == 0
    assert select.choose_conv(flat, weight, avx512, {"channel_chunk": 64},
                              out_layout=padded).channel_chunk == 64
