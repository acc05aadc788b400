"""The search space: the default first, distinct valid plans within the register budget."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sparsejit import targets
from sparsejit.kernels import select
from sparsejit.kernels.direct_conv import ConvWorkload, lanes_positions
from sparsejit.kernels.sparse_fc import SparseFcWorkload, choose_plan, index_bits_for
from sparsejit.tune.space import FC_ACCUMULATORS, FC_PREFETCH_BYTES, LANES_POSITIONS, candidates, fc_candidates

from .layers import GROUPED, SPARSE_3X3, STRIDED, weights

CASES = {
    "sparse": (SPARSE_3X3, 0.3),
    "dense": (SPARSE_3X3, 1.0),
    "strided": (STRIDED, 0.5),
    "grouped": (GROUPED, 0.3),
    "pointwise": (ConvWorkload(256, 1, 49, 64, (1, 1)), 0.2),
}


def _canonical(plan):
    """Plans that run the same loops: the unrolled form has no loop to unroll; with one pass,
    passes inside tiles are tiles outside blocks."""
    if plan.form == "unrolled":
        return replace(plan, unroll=1, split_accumulators=False)
    if plan.channel_chunk == 0 and plan.loop_order == "tile_chunk_block":
        return replace(plan, loop_order="tile_block")
    return plan


@pytest.mark.parametrize("target_name", ["sse", "avx2", "avx512"])
@pytest.mark.parametrize("case", list(CASES))
def test_candidates_are_distinct_valid_plans_default_first(case, target_name):
    wl, density = CASES[case]
    w = weights(wl, density, seed=3)
    tgt = targets.get(target_name)
    plans = candidates(wl, w, tgt, budget=40)
    assert plans[0] == select.choose_conv(wl, w, tgt)
    assert 1 < len(plans) <= 40
    assert len({_canonical(p) for p in plans}) == len(plans), "duplicates"
    registers = select.accumulator_budget(tgt)
    cg, mg = wl.in_channels // wl.group, wl.out_channels // wl.group
    for p in plans:
        what = f"{case} {target_name} {p.variant()}"
        assert p.vector_width == tgt.vector_width, what
        assert p.accumulators <= registers, what
        assert p.channel_chunk == 0 or p.channel_chunk < cg, what
        assert wl.group == 1 or mg % p.channels_per_block == 0, what
        if p.form == "unrolled" and p is not plans[0]:
            assert select.unrolled_fits(int((w != 0).sum()), p.rows_per_tile, p.vectors_per_row)
        if p.aligned_copies:
            assert wl.column_shifts() > 1, what


def test_dense_layers_block_more_channels():
    wl, _ = CASES["sparse"]
    host = targets.get("avx512")
    sparse = {p.channels_per_block for p in candidates(wl, weights(wl, 0.2, 1), host, 200)}
    dense_plans = candidates(wl, weights(wl, 1.0, 1), host, 200)
    dense = {p.channels_per_block for p in dense_plans if p.form != "lanes"}
    assert sparse <= {1, 2, 4} and dense <= {4, 6, 8}
    assert len(sparse) > 1 and len(dense) > 1
    # on AVX-512 a dense layer's default is the lanes form, its positions per block tried first
    lanes = [p for p in dense_plans if p.form == "lanes"]
    assert dense_plans[:len(lanes)] == lanes and len(lanes) >= 1 + len(LANES_POSITIONS)
    assert {p.positions for p in lanes} >= {*LANES_POSITIONS, lanes[0].positions}
    assert {p.loop_order for p in lanes} == {"block_tile", "tile_block"}
    assert all(p.channels_per_block == 16 for p in lanes)


def test_avx2_dense_layers_try_lanes_blocks_of_one_to_four_vectors():
    """On AVX2 a dense 3x3 conv on a wide map defaults to the lanes form; its space tries
    blocks of 1 to 4 vectors of channels, each within the registers, and passes over fewer
    input channels than the conv has."""
    wl = ConvWorkload(64, 28, 28, 96, (3, 3), pads=(1, 1, 1, 1))
    avx2 = targets.get("avx2")
    plans = candidates(wl, weights(wl, 1.0, 1), avx2, 40)
    lanes = [p for p in plans if p.form == "lanes"]
    assert plans[0].form == "lanes" and plans[0].channels_per_block == 8 * select.lanes_vectors(wl, 8)
    assert {p.channels_per_block for p in lanes} == {8, 16, 24, 32}
    assert {p.channel_chunk for p in lanes} == {0, 32}  # passes below the 64 input channels
    for p in lanes:  # positions 0: the rule's, resolved when the kernel is rendered
        w = p.channels_per_block // 8
        positions = p.positions or lanes_positions(wl.out_width, 8, 9, w)
        assert positions * w <= select.accumulator_budget(avx2), p


def test_deterministic_and_budgeted():
    wl, density = CASES["sparse"]
    w = weights(wl, density, seed=5)
    host = targets.get("avx512")
    assert candidates(wl, w, host, 12) == candidates(wl, w, host, 12)
    assert candidates(wl, w, host, 12, seed=1) != candidates(wl, w, host, 12)
    assert candidates(wl, w, host, 1) == [select.choose_conv(wl, w, host)]
    small = candidates(wl, w, host, 5)
    assert len(small) == 5 and small[0] == candidates(wl, w, host, 30)[0]


def test_the_space_covers_every_knob():
    wl, density = CASES["sparse"]
    plans = candidates(wl, weights(wl, density, seed=2), targets.get("avx512"), budget=10_000)
    assert {p.form for p in plans} == {"table", "unrolled"}
    assert {p.loop_order for p in plans} == {"block_tile", "tile_block", "tile_chunk_block"}
    assert {p.aligned_copies for p in plans} == {False, True}
    assert {p.unroll for p in plans if p.form == "table"} == {1, 2, 4}
    assert {p.channel_chunk for p in plans} == {0, 16, 32}  # < 40 channels
    assert len({(p.rows_per_tile, p.vectors_per_row) for p in plans}) > 5


def test_threads_add_the_split_knob():
    wl, density = CASES["sparse"]
    w, host = weights(wl, density, seed=2), targets.get("avx512")
    assert {p.split for p in candidates(wl, w, host, budget=10_000)} == {"blocks"}
    plans = candidates(wl, w, host, budget=10_000, threads=2)
    assert {p.split for p in plans} == {"blocks", "tiles"} and plans[0].split == "blocks"
    assert any(p == replace(plans[0], split="tiles") for p in plans)  # a neighbour of the default


def test_flat_runs_get_no_aligned_copies():
    """Shifted copies have rows of their own, a flat run reads its input's rows as they lie:
    the combination computed wrong answers (the tuner's check caught them), so it is not
    searched."""
    wl = replace(ConvWorkload(32, 9, 9, 32, (3, 3)), flat_stride=9)  # a 7 x 7 map run flat
    plans = candidates(wl, weights(wl, 0.1, seed=3), targets.get("avx512"), budget=10_000)
    assert plans and not any(p.aligned_copies for p in plans)


def test_shifted_sums_are_searched_where_they_fit_the_producers_layout():
    """Given the producer's layout, the space has plans with and without shifted sums, and
    every one with them fits (a tile holding its rows whole, with lanes to spare); without the
    layout (which frames must fit) none is proposed."""
    from sparsejit.kernels.direct_conv import packed_input, shifted_sums_misfit
    from sparsejit.kernels.layout import Layout

    wl = ConvWorkload(32, 14, 14, 32, (3, 3), pads=(1, 1, 1, 1))
    w = weights(wl, 0.1, seed=4)
    host = targets.get("avx512")
    produced = Layout.padded(32, 14, 14, (1, 1, 1, 1), align=16)
    plans = candidates(wl, w, host, budget=10_000, in_layout=produced)
    assert plans[0].shifted_sums  # the default, 14 x 1 tiles
    assert {p.shifted_sums for p in plans} == {False, True}
    for p in plans:
        if p.shifted_sums:
            read = packed_input(wl, p, 16) or produced
            assert shifted_sums_misfit(wl, read, p) is None, p.variant()
    assert not any(p.shifted_sums for p in candidates(wl, w, host, budget=10_000))
    # a 7 x 7 map run flat, rows 9 floats apart: frames (within the run's spare lanes), no copies
    flat = replace(ConvWorkload(32, 9, 9, 32, (3, 3)), flat_stride=9)
    odd = Layout.padded(32, 7, 7, (1, 1, 1, 1))
    flat_plans = candidates(flat, weights(flat, 0.1, seed=3), host, budget=10_000, in_layout=odd)
    assert not any(p.aligned_copies for p in flat_plans)
    assert all(shifted_sums_misfit(flat, odd, p) is None for p in flat_plans if p.shifted_sums)
    assert any(p.shifted_sums for p in flat_plans)


@pytest.mark.parametrize("target_name", ["sse", "avx2", "avx512"])
@pytest.mark.parametrize("in_features", [300, 9216, 70_000])
def test_fc_candidates_are_distinct_valid_plans_default_first(in_features, target_name):
    """A pruned FC's space: the default first, then distinct plans of chunk widths the target
    has, each with the narrowest column index its blocks allow; deterministic; within budget."""
    tgt = targets.get(target_name)
    wl = SparseFcWorkload(in_features, 40)
    plans = fc_candidates(wl, tgt, budget=30)
    assert plans[0] == choose_plan(wl, tgt) and len(plans) == len(set(plans)) <= 30
    assert plans == fc_candidates(wl, tgt, budget=30)
    for plan in plans:
        assert plan.vector_width <= tgt.vector_width
        assert plan.index_bits == index_bits_for(plan.block_width(in_features))
        assert plan.batch_block == plans[0].batch_block
    assert fc_candidates(wl, tgt, budget=1) == plans[:1]


def test_the_fc_space_covers_every_knob():
    """With room for all of it, every value of every FC knob is tried (one knob changed from
    the default), column blocks among them for inputs wider than the smallest slice."""
    wl = SparseFcWorkload(9216, 40)
    plans = fc_candidates(wl, targets.get("avx512"), budget=10_000)
    assert {p.vector_width for p in plans} == {4, 8, 16}
    assert {p.accumulators for p in plans} == set(FC_ACCUMULATORS)
    assert {p.prefetch_bytes for p in plans} == set(FC_PREFETCH_BYTES)
    assert {p.scalar_loads for p in plans} == {False, True}
    assert {p.column_blocks(9216) for p in plans} == {1, 2, 3, 5}
