"""The search space of one conv layer (or pruned FC layer): which plans the autotuner tries, in
which order.

A dense layer whose default is the lanes form (output channels in the lanes: every dense conv
on AVX-512, those with several taps on wide maps on AVX2) starts from it (its knobs: positions
per block, the loop order and, on AVX2, the vectors of channels per block), then the table
form's space. The knobs of the
table forms are the register block (rows x vectors of accumulators, within the target's register
budget), the output-channel block, the table loop's unroll, the input-channel chunk, the loop
order, aligned loads (input copies per column shift, or sums in shifted frames), the form (the
unrolled form only while its code stays small) and, tuned for several threads, how threads
divide the layer (channel blocks or output tiles).
The default plan comes first, so every tuning run measures the baseline; then neighbours of the
default (one knob changed: where the heuristics of select.py are most likely off by one step),
then a seeded sample of the whole space (knobs that only pay off together). A pruned FC run
row by row has its own knobs (`fc_candidates`): chunk width, accumulators, prefetch distance,
scalar loads or gathers, column blocks.
"""

from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import dataclass, replace

import numpy as np

from ..kernels import select
from ..kernels.direct_conv import LOOP_ORDERS, ConvWorkload, DirectConvPlan, packed_input, shifted_sums_misfit
from ..kernels.layout import Layout
from ..kernels.sparse_fc import SparseFcPlan, SparseFcWorkload, column_block_width, index_bits_for
from ..kernels.sparse_fc import choose_plan as choose_fc_plan
from ..targets import Target

# the lanes form's positions per block tried besides the rule's (lanes_positions), by vector
# width; the vectors of channels per block tried (select.lanes_vectors: the default's)
LANES_POSITIONS = {16: (8, 12, 16), 8: (4, 5, 6)}
LANES_VECTORS = {16: (), 8: (1, 2, 3, 4)}
# and its passes over input channels (0: one pass) tried besides the default's
LANES_CHUNKS = (0, 32, 64)
SPARSE_BLOCKS = (1, 2, 4)
DENSE_BLOCKS = (4, 6, 8)
UNROLLS = (1, 2, 4)
CHUNKS = (0, 16, 32, 64, 128)
ORDERS = LOOP_ORDERS
# A register block covering more than this much padded output (rows rounded up to whole tiles,
# vectors to whole row blocks) mostly computes garbage lanes: not worth a measurement.
MAX_TILE_WASTE = 1.25


@dataclass(frozen=True)
class _Layer:
    """What the validity rules need to know about the layer."""

    registers: int  # accumulator budget
    nonzeros: int
    dense: bool
    out_rows: int
    out_vectors: int
    out_per_group: int
    in_per_group: int
    group: int
    workload: ConvWorkload
    in_layout: Layout | None  # the producer's layout (shifted sums must fit it)


@dataclass(frozen=True)
class _Knobs:
    form: str
    tile: tuple[int, int]
    block: int
    unroll: int
    chunk: int
    order: str
    aligned: str  # "none", "copies" (aligned_copies) or "sums" (shifted_sums)
    split: str


def candidates(workload: ConvWorkload, weight: np.ndarray, target: Target, budget: int = 24,
               seed: int = 0, threads: int = 1,
               in_layout: Layout | None = None,
               out_layout: Layout | None = None) -> list[DirectConvPlan]:
    """At most `budget` distinct valid plans for this layer: the default first, then neighbours
    of the default and a sample of the whole space, chosen deterministically from `seed`.
    `threads`: what the plans will be timed on (the split between threads is a knob only
    when there are several); `in_layout`: the producer's layout of the input (without it,
    no plan sums in shifted frames, which must fit it); `out_layout`: the consumer's (the
    default's passes depend on it)."""
    default = select.choose_conv(workload, weight, target, in_layout=in_layout, threads=threads,
                                 out_layout=out_layout)
    if budget <= 1:
        return [default]
    if default.form != "lanes":
        return _around(default, workload, weight, target, budget, seed, threads, in_layout)
    # a dense layer in the lanes form: its block sizes and other loop order, then the table
    # form's space
    v = default.vector_width
    other_order = "block_tile" if default.loop_order == "tile_block" else "tile_block"
    vectors = default.channels_per_block // v
    lanes = [replace(default, positions=p) for p in LANES_POSITIONS[v]
             if p != default.positions and p * vectors <= select.accumulator_budget(target)]
    lanes.append(replace(default, loop_order=other_order))
    lanes += [replace(default, channels_per_block=w * v, positions=0) for w in LANES_VECTORS[v]
              if w * v != default.channels_per_block]
    per_group = workload.in_channels // workload.group
    lanes += [replace(default, channel_chunk=c) for c in LANES_CHUNKS
              if c != default.channel_chunk and c < per_group]
    table = select.choose_conv(workload, weight, target, {"form": "table"}, in_layout=in_layout,
                               threads=threads, out_layout=out_layout)
    room = budget - 1 - len(lanes)
    rest = _around(table, workload, weight, target, room, seed, threads, in_layout) if room > 0 else []
    return [default, *lanes, *rest][:budget]


def _around(default: DirectConvPlan, workload: ConvWorkload, weight: np.ndarray, target: Target,
            budget: int, seed: int, threads: int, in_layout: Layout | None) -> list[DirectConvPlan]:
    """`default`, then neighbours of it and a sample of the table and unrolled forms' space."""
    if budget <= 1:
        return [default]
    layer = _layer(workload, weight, target, in_layout)
    axes = _axes(workload, layer, default, threads)
    base = _knobs_of(default)
    seen = {_canonical(default)}
    near = _distinct((_plan(k, default, layer) for k in _neighbours(base, axes)), seen)
    wide = _distinct((_plan(_Knobs(*values), default, layer)
                      for values in itertools.product(*axes.values())), seen)
    rng = random.Random(seed * 1_000_003 + zlib.crc32(repr(workload).encode()))
    rng.shuffle(near)
    rng.shuffle(wide)
    room = budget - 1
    take_near = min(len(near), max(room - len(wide), (room + 1) // 2))
    return [default, *near[:take_near], *wide[:room - take_near]]


def _layer(workload: ConvWorkload, weight: np.ndarray, target: Target,
           in_layout: Layout | None) -> _Layer:
    return _Layer(select.accumulator_budget(target), int(np.count_nonzero(weight)),
                  select.conv_is_dense(weight, select.lanes_thresholds(target)
                                       and select.lanes_fit(workload, target) is None,
                                       positions=workload.out_height * workload.out_width),
                  workload.tile_rows, -(-workload.tile_width // target.vector_width),
                  workload.out_channels // workload.group, workload.in_channels // workload.group,
                  workload.group, workload, in_layout)


def _axes(workload: ConvWorkload, layer: _Layer, default: DirectConvPlan,
          threads: int) -> dict[str, list]:
    """The values of every knob, the default's included (field order of _Knobs)."""
    blocks = sorted({*(DENSE_BLOCKS if layer.dense else SPARSE_BLOCKS), default.channels_per_block})
    tiles = sorted({(rb, cb)
                    for rb in range(1, min(layer.out_rows, layer.registers) + 1)
                    for cb in range(1, min(layer.out_vectors, layer.registers) + 1)
                    if rb * cb <= layer.registers and _tile_waste(layer, rb, cb) <= MAX_TILE_WASTE}
                   | {(default.rows_per_tile, default.vectors_per_row)})
    chunks = sorted({c for c in CHUNKS if c < layer.in_per_group} | {default.channel_chunk})
    # copies only change kernels with more than one column shift and need row tiles (a flat
    # run reads its input's rows as they lie); frames must fit the producer's layout
    aligned = ["none"]
    if workload.column_shifts() > 1 and not workload.flat_stride:
        aligned.append("copies")
    if layer.in_layout is not None:
        aligned.append("sums")
    return {"form": ["table", "unrolled"], "tile": tiles, "block": blocks,
            "unroll": sorted({*UNROLLS, default.unroll}), "chunk": chunks, "order": list(ORDERS),
            "aligned": sorted(set(aligned) | {_aligned_of(default)}),
            "split": ["blocks", "tiles"] if threads > 1 else [default.split]}


def _tile_waste(layer: _Layer, rows: int, vectors: int) -> float:
    covered = -(-layer.out_rows // rows) * rows * -(-layer.out_vectors // vectors) * vectors
    return covered / (layer.out_rows * layer.out_vectors)


def _aligned_of(plan: DirectConvPlan) -> str:
    return "copies" if plan.aligned_copies else "sums" if plan.shifted_sums else "none"


def _knobs_of(plan: DirectConvPlan) -> _Knobs:
    return _Knobs(plan.form, (plan.rows_per_tile, plan.vectors_per_row), plan.channels_per_block,
                  plan.unroll, plan.channel_chunk, plan.loop_order, _aligned_of(plan), plan.split)


def _neighbours(base: _Knobs, axes: dict[str, list]):
    """Every knob setting that differs from `base` in one knob."""
    for name, values in axes.items():
        for value in values:
            if value != getattr(base, name):
                yield replace(base, **{name: value})


def _plan(k: _Knobs, default: DirectConvPlan, layer: _Layer) -> DirectConvPlan | None:
    """The plan for these knob values, or None when it is invalid for this layer or target."""
    rb, cb = k.tile
    accumulators = rb * cb * k.block
    if accumulators > layer.registers or k.block > layer.out_per_group:
        return None
    if layer.group > 1 and layer.out_per_group % k.block:
        return None  # a block must not straddle two groups (build_pattern's rule)
    if k.form == "unrolled" and not select.unrolled_fits(layer.nonzeros, rb, cb):
        return None
    # short register blocks: one accumulator set per unrolled nonzero hides the FMA latency
    # (select.py's rule), as long as the sets still fit
    split = (k.form == "table" and accumulators < 4 and k.unroll > 1
             and accumulators * k.unroll <= layer.registers)
    try:
        plan = replace(default, form=k.form, rows_per_tile=rb, vectors_per_row=cb,
                       channels_per_block=k.block, unroll=k.unroll, split_accumulators=split,
                       channel_chunk=k.chunk, loop_order=k.order,
                       aligned_copies=k.aligned == "copies", shifted_sums=k.aligned == "sums",
                       split=k.split)
    except ValueError:  # e.g. the unrolled form with channel passes
        return None
    if plan.shifted_sums:  # the frame must hold the tile's rows on this input
        read = packed_input(layer.workload, plan, plan.vector_width) or layer.in_layout
        if shifted_sums_misfit(layer.workload, read, plan) is not None:
            return None
    return plan


def _canonical(plan: DirectConvPlan) -> DirectConvPlan:
    """Plans that run the same loops compare equal: the unrolled form has no loop to unroll, and
    with one pass, passes inside tiles are tiles outside blocks."""
    if plan.form == "unrolled":
        return replace(plan, unroll=1, split_accumulators=False)
    if plan.channel_chunk == 0 and plan.loop_order == "tile_chunk_block":
        return replace(plan, loop_order="tile_block")
    return plan


def _distinct(plans, seen: set[DirectConvPlan]) -> list[DirectConvPlan]:
    out = []
    for plan in plans:
        if plan is not None and _canonical(plan) not in seen:
            seen.add(_canonical(plan))
            out.append(plan)
    return out


# The pruned-FC row kernel's knobs besides the chunk width (the target's vector widths up to
# its own): accumulators per row of X, the table's prefetch distance, scalar loads or gathers
# of x, and column blocks whose slices of a row of X take these many bytes (besides none).
FC_ACCUMULATORS = (1, 2, 4)
FC_PREFETCH_BYTES = (0, 4096, 8192, 16384)
FC_SLICE_BYTES = (8 * 1024, 16 * 1024, 32 * 1024)


def fc_candidates(workload: SparseFcWorkload, target: Target, budget: int = 24,
                  seed: int = 0) -> list[SparseFcPlan]:
    """At most `budget` distinct valid plans for a pruned FC run row by row: the default first,
    then neighbours of the default (one knob changed) and a sample of the whole space, chosen
    deterministically from `seed`. Rows of X go in the default's blocks (tuning times one image;
    the blocks only matter for batches)."""
    default = choose_fc_plan(workload, target)
    if budget <= 1:
        return [default]
    axes = {
        "vector_width": [v for v in (4, 8, 16) if v <= target.vector_width],
        "accumulators": list(FC_ACCUMULATORS),
        "prefetch_bytes": list(FC_PREFETCH_BYTES),
        "scalar_loads": [False, True],
        "column_block": [0, *(column_block_width(workload.in_features, b) for b in FC_SLICE_BYTES)],
    }
    axes = {name: sorted(set(values) | {getattr(default, name)}) for name, values in axes.items()}
    near = [replace(default, **{name: value}) for name, values in axes.items()
            for value in values if value != getattr(default, name)]
    wide = [replace(default, **dict(zip(axes, values)))
            for values in itertools.product(*axes.values())]
    seen = {default}
    near, wide = _distinct_fc(near, seen, workload), _distinct_fc(wide, seen, workload)
    rng = random.Random(seed * 1_000_003 + zlib.crc32(repr(workload).encode()))
    rng.shuffle(near)
    rng.shuffle(wide)
    room = budget - 1
    take_near = min(len(near), max(room - len(wide), (room + 1) // 2))
    return [default, *near[:take_near], *wide[:room - take_near]]


def _distinct_fc(plans, seen: set[SparseFcPlan], workload: SparseFcWorkload) -> list[SparseFcPlan]:
    """Plans not seen yet, each with the narrowest column index its blocks allow."""
    out = []
    for plan in plans:
        plan = replace(plan, index_bits=index_bits_for(plan.block_width(workload.in_features)))
        if plan not in seen:
            seen.add(plan)
            out.append(plan)
    return out
