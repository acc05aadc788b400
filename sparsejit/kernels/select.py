"""The decision point: which algorithm and blocking each layer runs with.

`choose_conv` and `choose_fc` look at a layer's workload, its weights and the target and return
a plan (plain frozen data). Overrides (from tests, the CLI or a tuning log) replace the default
choice. Later algorithms (sparse Winograd, activation-sparse) join here as further choices.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from ..arrays import count_nonzeros
from ..errors import InvalidPlanError
from ..targets import Target
from .direct_conv import (LANES_WIDTHS, ConvWorkload, DirectConvPlan, entry_frames, lanes_columns,
                          lanes_positions, origin, packed_input, shifted_sums_misfit, split_output_rows,
                          tap_offsets)
from .gemm import GemmPlan
from .layout import Layout

# Above this weight density a layer is "dense": channels are blocked together, since every
# channel has every position (union patterns then cost nothing). FC layers, and convs with few
# input channels (first convs), use DENSE_THRESHOLD; other convs the density where the dense
# kernel overtakes one sparse offset list per channel, measured on AMD Zen 4 (both forms of a
# layer timed interleaved by tune.measure, random weights, session 24). Blocks of 4 channels
# (the table form): a 1x1 conv's sparse kernel runs ~45-55 nonzero GFLOP/s, its dense one ~90,
# crossing at 0.5-0.6 (256 -> 64 on 56 x 56: dense 1.10x at 0.5; 1024 -> 256 on 14 x 14:
# sparse 1.19x at 0.5, dense 1.07x at 0.6); a conv with more taps sums sparse in shifted
# frames (aligned loads, ~60-83 GFLOP/s), the dense blocks load misaligned, crossing at 0.71
# (512 x 7 x 7), 0.78-0.82 (stride 2 on 56 x 56 and 28 x 28), 0.85 (64 x 56 x 56) and 0.90
# (256 x 14 x 14). The lanes form (AVX-512, 101-116 GFLOP/s) crosses earlier: 1x1 convs at
# 0.43 (256 -> 64 on 56 x 56, 512 -> 2048 on 7 x 7) and 0.55 (1024 -> 256 on 14 x 14), 3x3
# convs at 0.57 (7 x 7), 0.65 (stride 2, 56 x 56), 0.70 (14 x 14) and 0.73 (56 x 56).
# (The rule was 0.6 for every conv: a 60 %-dense 3x3 conv ran 0.74-0.87x of its sparse plan.)
DENSE_THRESHOLD = 0.6
POINTWISE_DENSE_THRESHOLD = 0.55
SPATIAL_DENSE_THRESHOLD = 0.8
LANES_POINTWISE_DENSE_THRESHOLD = 0.5
LANES_SPATIAL_DENSE_THRESHOLD = 0.7
# On maps of at most this many output positions (ResNet-50's 7 x 7) the sparse kernels leave a
# quarter of their lanes idle (49 positions in 4 vectors) and the lanes form wins earlier: 1x1
# at 0.43, 3x3 at 0.57 (512 -> 512, 60 % dense: sparse 2.23 ms, lanes ~2.1): its thresholds
# times this factor.
LANES_SMALL_MAP_POSITIONS = 64
LANES_SMALL_MAP_FACTOR = 0.85
# A dense conv with at most this many input channels per group is an image's first conv.
FEW_INPUT_CHANNELS = 4

# The unrolled form's code must stay small enough to live in L1i/L2 (DESIGN.md: multi-MB
# unrolled kernels are bound by instruction fetch). Estimated bytes of code per FMA:
UNROLLED_BYTES_PER_FMA = 8
UNROLLED_MAX_CODE_BYTES = 32 * 1024


def apply_override(plan, override: dict | None, layer: str):
    """`plan` with the fields of `override` replaced; a clear error for unknown or bad values."""
    if not override:
        return plan
    if isinstance(plan, DirectConvPlan) and override.get("form") == "lanes" and plan.form != "lanes":
        # the lanes form has blocking of its own: asking for it asks for that
        plan = lanes_plan(plan.vector_width, plan.codegen_opt)
    if isinstance(plan, DirectConvPlan) and override.get("form") == "unrolled":
        # asking for the unrolled form asks for its one pass too (an explicit pass field that
        # contradicts it is still an error)
        plan = _unrolled(plan)
    if isinstance(plan, GemmPlan) and override.get("skip_zero_inputs"):
        # skipping zero inputs takes one row of X at a time (an explicit rows_per_tile above 1
        # is still an error)
        plan = replace(plan, rows_per_tile=1, vectors_per_tile=4)
    known = {f.name for f in fields(plan)}
    unknown = sorted(set(override) - known)
    if unknown:
        raise InvalidPlanError(f"layer '{layer}': unknown plan field(s) {unknown}; "
                               f"{type(plan).__name__} has {sorted(known)}")
    try:
        return replace(plan, **override)
    except (AssertionError, TypeError, ValueError) as exc:
        raise InvalidPlanError(f"layer '{layer}': invalid plan {override}: {exc}") from None


def density(weight: np.ndarray) -> float:
    return float(count_nonzeros(weight)) / max(1, weight.size)


def dense_threshold(weight: np.ndarray, lanes: bool, positions: int | None = None) -> float:
    """The used-tap density from which a conv with this weight [M, C/G, R, S] and `positions`
    output positions per plane (None: not known) runs a dense kernel, the lanes form where
    `lanes` (see DENSE_THRESHOLD)."""
    if weight.shape[1] <= FEW_INPUT_CHANNELS:
        return DENSE_THRESHOLD
    pointwise = weight.shape[2:] == (1, 1)
    if not lanes:
        return POINTWISE_DENSE_THRESHOLD if pointwise else SPATIAL_DENSE_THRESHOLD
    threshold = LANES_POINTWISE_DENSE_THRESHOLD if pointwise else LANES_SPATIAL_DENSE_THRESHOLD
    small = positions is not None and positions <= LANES_SMALL_MAP_POSITIONS
    return threshold * LANES_SMALL_MAP_FACTOR if small else threshold


def conv_is_dense(weight: np.ndarray, lanes: bool, nonzeros: int | None = None,
                  positions: int | None = None) -> bool:
    """Does a conv with this weight [M, C/G, R, S] (and `positions` output positions per plane)
    run a dense kernel (the lanes form where `lanes`, see lanes_fit)?"""
    return used_tap_density(weight, nonzeros) >= dense_threshold(weight, lanes, positions)


def used_tap_density(weight: np.ndarray, nonzeros: int | None = None) -> float:
    """Density over the (input channel, tap) positions some output channel uses: what decides
    dense blocking, as positions no channel uses are in no offset list. A strided conv over its
    phase planes (direct_conv.plane_weights) has taps no channel uses (a 3x3 kernel padded to
    2 x 2 taps of 2 x 2 planes: 9 of 16) and stays as dense as the conv it computes."""
    used = np.any(weight.reshape(weight.shape[0], -1) != 0, axis=0)
    nonzeros = count_nonzeros(weight) if nonzeros is None else nonzeros
    return nonzeros / max(1, weight.shape[0] * int(np.count_nonzero(used)))


def accumulator_budget(target: Target) -> int:
    """Vector registers a kernel may hold accumulators in: the rest holds the loaded input
    vectors and the broadcast weights."""
    if target.vector_registers > 16:
        return target.vector_registers - 6
    # 16 registers: the sparse loop's FMAs take their input from memory, so a broadcast weight
    # and the next one beside the sums (14 x ymm on Zen 3: CaffeNet conv3 7 x 2 0.68 ms, 5 x 2
    # 0.72); without FMA (SSE) a multiply needs a temporary too
    return target.vector_registers - (2 if "+fma" in target.features.split(",") else 4)


# An image's first conv (3 input channels, 147-363 taps per output channel): (channels,
# accumulators per channel) blocks, several channels sharing each input load, in the order
# measured best per register file; first_conv_tile splits the accumulators into rows x vectors.
# 32 registers (AVX-512): 8 x 2, CaffeNet conv1 1.53 ms (0.93x the best dense engine) against
# 1.50-2.49 ms for 4 x 4, ResNet-50 conv1 1.72 ms against 2.49 for 4 x 6. 16 registers (AVX2,
# Zen 3): 3 x 4 on CaffeNet conv1 2.98 ms, 4 x 2 3.32, 2 x 5 4.1, 8 x 2 (spilling) 7.8;
# ResNet-50 conv1 (64 channels) 4 x 2 3.0-3.3 ms, 2 x 5 3.2.
FIRST_CONV_BLOCKS = {32: ((8, 2),), 16: ((3, 4), (4, 2))}


def first_conv_block(target: Target, channels_per_group: int) -> tuple[int, int] | None:
    """(channels per block, accumulators per channel) for a first conv, or None for the general
    dense blocking: the first measured block that divides the channels and fits the registers
    (sums, one broadcast per channel and an input vector)."""
    for mb, cb in FIRST_CONV_BLOCKS.get(target.vector_registers, ()):
        if channels_per_group % mb == 0 and mb * cb + mb + 1 <= target.vector_registers:
            return mb, cb
    return None


def first_conv_tile(rows: int, vectors: int, accumulators: int) -> tuple[int, int]:
    """(rows_per_tile, vectors_per_row) for a first conv's `accumulators` per channel: of the
    splits rows x vectors = accumulators, the one that computes the fewest padded outputs
    (tiles past the edge), the widest rows among equals. ResNet-50 conv1 (112 wide, 7
    vectors of 16): 2 rows x 1 vector 1.18 ms against 1.34 for 1 x 2, whose fourth tile is half
    empty; CaffeNet conv1 (4 vectors) and VGG-16 conv1_1 (14) keep 1 x 2 (2 x 1 1.29 ms on
    CaffeNet conv1 against 1.20)."""
    splits = [(rb, accumulators // rb) for rb in range(1, accumulators + 1)
              if accumulators % rb == 0 and accumulators // rb <= max(1, vectors)
              and rb <= max(1, rows)]
    if not splits:
        return 1, min(accumulators, max(1, vectors))
    return min(splits, key=lambda t: (-(-rows // t[0]) * -(-vectors // t[1]) * t[0] * t[1],
                                      -t[1]))


# A sparse 1x1 conv whose rows are one vector wide tiles its column in tiles of at most this
# many rows. AMD Zen 4, ResNet-50's and GoogLeNet's 14 x 14 pointwise convs: 7 x 1 instead of
# 14 x 1 (both with 128-channel passes) 1.10x and 1.09x over the 13 and 20 changed layers
# (in-process A/B, 7 interleaved rounds; networks 1.015x and 1.013x), 1.10-1.15x per layer in
# benchmarks/tuned.py, and the autotuner picked 7 x 1 on its own. Not so for 3x3 convs on the
# same maps (7 x 1 0.90x). Why is not known; not measured on the Xeon.
POINTWISE_COLUMN_ROWS = 8


def pointwise_column_rows(workload: ConvWorkload, rows: int, vectors_per_row: int,
                          vectors: int) -> int:
    """`rows` per tile, or for a pointwise conv tiling a one-vector column, the fewest tiles of
    at most POINTWISE_COLUMN_ROWS rows (14 rows: 2 tiles of 7)."""
    if (workload.kernel != (1, 1) or vectors != 1 or vectors_per_row != 1
            or rows <= POINTWISE_COLUMN_ROWS):
        return rows
    tiles = -(-rows // POINTWISE_COLUMN_ROWS)
    return -(-rows // tiles)


def unrolled_fits(nonzeros: int, rows_per_tile: int, vectors_per_row: int) -> bool:
    """Is the unrolled form's estimated code small enough (one FMA per nonzero and vector)?"""
    fmas = nonzeros * rows_per_tile * vectors_per_row
    return fmas * UNROLLED_BYTES_PER_FMA <= UNROLLED_MAX_CODE_BYTES


# Work per table entry besides its FMAs, in FMA-equivalents (offset load, weight broadcast, loop
# step), for choosing a tile: a tile of rb x cb accumulators costs rb * cb + this per entry.
ENTRY_OVERHEAD = 3


def _tile(rows: int, vectors: int, budget: int) -> tuple[int, int]:
    """(rows_per_tile, vectors_per_row) with at most `budget` accumulators, minimising the work
    over the whole output: tiles x (accumulators + ENTRY_OVERHEAD) per entry, so the waste of a
    last partial tile is weighed against the entry overhead small tiles pay more often. On AVX2
    (14 accumulators) CaffeNet conv3 (13 rows x 2 vectors) gets 7 x 2: 0.68 ms, against 0.90
    for the 2 x 2 that minimising waste alone chose; AVX-512's earlier choices (13 x 1 there,
    9 x 2 on 27 x 27, 4 x 4 on 56 x 56) stay. Sparse layers pick among the near-best tiles
    by their passes over input channels (_sparse_tile)."""
    return _near_best_tiles(rows, vectors, budget)[0]


def _near_best_tiles(rows: int, vectors: int, budget: int,
                     slack: float = 1.10) -> list[tuple[int, int]]:
    """The tiles whose work (as in _tile) is within `slack` of the least, best first: the
    widest rows (contiguous input, fewer passes over the table), then the least work."""
    costs = {}
    for cb in range(1, min(vectors, budget) + 1):
        for rb in range(1, min(rows, budget // cb) + 1):
            costs[rb, cb] = -(-rows // rb) * -(-vectors // cb) * (rb * cb + ENTRY_OVERHEAD)
    least = min(costs.values())
    return sorted((tile for tile, cost in costs.items() if cost <= least * slack),
                  key=lambda tile: (-tile[1], costs[tile]))


# A pass over input channels touches, per tile, the slice of input its channels' taps read; it
# should stay near L1 while every output channel block reads it, so a pass takes as many
# channels as keep the slice within this (Intel Xeon, 48 KB L1d, ResNet-50 and VGG-16 at 10 %:
# 3x3 convs best at 39-51 KB slices (VGG-16 conv2_2: 16 channels, 36 KB, 1.05x over 32
# channels, 73 KB); 1x1 convs at 57-64 KB (layer1.1.conv1 64 channels 1.40x over one pass,
# layer4.1.conv1 at 7x7 128-256 channels 1.2-1.4x); 2x the slice: 0.8x).
PASS_SLICE_BYTES = 64 * 1024
# Kernels with several taps read each input row at several offsets: on AMD Zen 4 (32 KiB L1d)
# their slices are best at most ~1.25 L1 (`tune.measure`, 3 interleaved rounds, ResNet-50 at
# 10 %): 7 x 7 3x3 convs 64 channels (21 KB) 1.16x over 128 (43 KB); 56 x 56 ones 16 (25 KB)
# 1.04x over 32 (50 KB); 28 x 28 and 14 x 14 ones keep 32 (39 and 37 KB; 16 channels 1.01x and
# 0.96x). The Xeon's 3x3 slices of 39-51 KB (above) fit this too.
PASS_SLICE_BYTES_TAPS = 40 * 1024
PASS_CHANNELS = (16, 32, 64, 128, 256)
# A pass reloads and stores the tile's partial sums: it needs enough nonzeros per output
# channel to amortise that. 1x1 convs at 10 %: on the Xeon of sessions 5-7, 64-channel passes
# (6 nonzeros) gained 1.2-1.4x over one pass; on AMD Zen 4, whose zmm stores take two cycles,
# 128-channel ones (12) are faster still: ResNet-50's 25 pointwise convs 1.12x (1.16x on 2
# threads), the network 1.05x, GoogLeNet's 28 1.09x (in-process A/B, 7 interleaved rounds).
# 24 changed 3x3 layers' tiles too (VGG-16 conv2_x 0.91-0.94x); 12 changes no 3x3 plan of the
# built-in models. Not re-measured on the Xeon.
PASS_MIN_ENTRIES = 12
# A tile whose passes take this many channels is not traded for a narrower one with more.
PASS_ENOUGH_CHANNELS = 32


def tile_input_floats(workload: ConvWorkload, rows: int, vectors: int, v: int) -> int:
    """Floats of one input channel that a tile of `rows` x `vectors` outputs reads."""
    (kh, kw), (sh, sw), (dh, dw) = workload.kernel, workload.strides, workload.dilations
    if workload.flat_stride:
        return vectors * v + (kh - 1) * dh * workload.flat_stride + (kw - 1) * dw
    return ((rows - 1) * sh + (kh - 1) * dh + 1) * ((vectors * v - 1) * sw + (kw - 1) * dw + 1)


def pass_slice_bytes(workload: ConvWorkload) -> int:
    """The most bytes of input a tile's pass should read: less for kernels with several taps."""
    return PASS_SLICE_BYTES if workload.kernel == (1, 1) else PASS_SLICE_BYTES_TAPS


def sparse_passes(workload: ConvWorkload, weight_density: float, rows: int, vectors: int,
                  v: int, slice_bytes_max: int | None = None) -> tuple[int, str]:
    """(channel_chunk, loop_order) of a sparse layer: input channels per pass so a tile's slice
    of a pass stays near L1, and tiles outside channel blocks, so that every block reads the
    slice while it is there (VGG-16's 224x224 layers: 2.2x over blocks outside). A layer whose
    outputs are one vector (a pruned FC with the batch in the lanes) keeps one pass: there
    each pass had ~3 nonzeros per 32 channels and chunking made it 2x slower."""
    cg = workload.in_channels // workload.group
    taps = workload.kernel[0] * workload.kernel[1]
    if workload.tile_rows * workload.tile_width <= v:
        return 0, "block_tile"
    slice_bytes = 4 * tile_input_floats(workload, rows, vectors, v)
    if slice_bytes_max is None:
        slice_bytes_max = pass_slice_bytes(workload)
    fitting = [c for c in PASS_CHANNELS if c * slice_bytes <= slice_bytes_max]
    chunk = fitting[-1] if fitting else PASS_CHANNELS[0]
    while weight_density * chunk * taps < PASS_MIN_ENTRIES and chunk < cg:
        chunk *= 2
    if chunk < cg:
        return chunk, "tile_block"
    # one pass: tiles outside blocks still keep a tile's input in cache for every block, but
    # with groups every group's slice would be in use at once
    return 0, "tile_block" if workload.group == 1 else "block_tile"


# A layer with several passes whose output (per image) exceeds this runs every pass of a tile
# before the next tile ("tile_chunk_block"): pass by pass, the partial sums of the whole output
# go through memory at every pass. Its tiles' partial sums stay in cache between passes, so
# the passes may be narrower too (slices within half the budget). AMD Zen 4 (1 MiB L2, 32 MiB
# L3), VGG-16 at 10 % (interleaved rounds of `tune.measure`): conv1_2 (14 MB of output) 1.14x
# with the order alone, 1.34x with 16-channel passes too; conv2_2 (7.5 MB) 1.10x and 1.21x; the
# avx2 target on the same machine 1.16x and 1.32x (1 x 14 tiles). Not above: conv3_2 (3.8 MB)
# 1.02x and 0.99x, conv4_2 (2 MB) 1.00x and 0.90x (32 passes of 16 channels), ResNet-50's
# 56 x 56 and 28 x 28 layers (< 2 MB) 0.99-1.02x.
PASSES_IN_TILES_OUTPUT_BYTES = 4 << 20


def passes_in_tiles(workload: ConvWorkload, weight_density: float, rows: int, vectors: int,
                    v: int, chunk: int, order: str) -> tuple[int, str]:
    """(channel_chunk, loop_order) of a sparse layer whose passes go inside its tiles when its
    output is large (PASSES_IN_TILES_OUTPUT_BYTES); else `chunk` and `order` as they are."""
    output_bytes = 4 * workload.out_channels * workload.tile_rows * workload.tile_width
    if chunk == 0 or output_bytes <= PASSES_IN_TILES_OUTPUT_BYTES:
        return chunk, order
    narrower, _ = sparse_passes(workload, weight_density, rows, vectors, v,
                                pass_slice_bytes(workload) // 2)
    return narrower or chunk, "tile_chunk_block"


# A layer of several passes takes the first tile within this much of the least work whose
# passes' input slices fit L1 (PASS_L1_BYTES; 1x1 convs: PASS_SLICE_BYTES), when one does.
# AMD Zen 4 (32 KiB L1d), ResNet-50 at 10 %, what `sparsejit autotune` found and this rule now
# picks: its 28 x 28 3x3 convs 4 x 2 with 32-channel passes (26 KB) 1.05-1.06x over 7 x 2 (39
# KB), its 512 -> 128 1x1 convs 4 x 2 (64 KB) 1.07x over 7 x 2 (112 KB); 14 x 14 maps keep
# 14 x 1 (7 x 1 is 18 % more work; measured 0.95x), and one-pass layers keep their tiles.
L1_TILE_SLACK = 1.15
PASS_L1_BYTES = 32 * 1024
# A strided conv reads rows of a phase-split copy twice as long per output: its slices are so
# large that fitting them pays for more work. ResNet-50 layer2.0.conv2 (56 -> 28, 128
# channels): 4 x 2 with 16-channel passes (37 KB) 1.15x over 7 x 2 (62 KB); layer3.0.conv2
# (28 -> 14): 7 x 1 (32 KB, 18 % more work than 14 x 1) 1.17x over 14 x 1 (61 KB).
STRIDED_L1_TILE_SLACK = 1.20


def _l1_tile(workload: ConvWorkload, weight_density: float, vectors: int, budget: int,
             v: int) -> tuple[int, int] | None:
    """Of the tiles within L1_TILE_SLACK of the least work (strided convs: within
    STRIDED_L1_TILE_SLACK, slices up to PASS_SLICE_BYTES_TAPS), with the widest rows, whose
    passes (as choose_conv sizes them) read input slices that fit L1, the one whose passes
    take the most channels, then the least work (28 x 28 3x3 convs: 4 x 2 with 32 channels,
    0.415 ms, not 10 x 2 with 16, 0.472); None when the layer runs one pass or no tile's
    slices fit."""
    strided = workload.strides != (1, 1)
    fit = pass_slice_bytes(workload) if workload.kernel == (1, 1) or strided else PASS_L1_BYTES
    fitting = []
    tiles = _near_best_tiles(workload.tile_rows, vectors, budget,
                             STRIDED_L1_TILE_SLACK if strided else L1_TILE_SLACK)
    # rows as wide as the widest near-best tile's: 56 x 56 3x3 convs in 12 x 1 tiles with 32
    # channels ran 0.712 ms, in 4 x 4 with 16 0.438
    for rb, cb in (tile for tile in tiles if tile[1] == tiles[0][1]):
        chunk, order = sparse_passes(workload, weight_density, rb, cb, v)
        chunk, _ = passes_in_tiles(workload, weight_density, rb, cb, v, chunk, order)
        if not chunk:
            return None
        if chunk * 4 * tile_input_floats(workload, rb, cb, v) <= fit:
            fitting.append((chunk, (rb, cb)))
    if not fitting:
        return None
    most = max(chunk for chunk, _ in fitting)
    return next(tile for chunk, tile in fitting if chunk == most)


# A sparse 1x1 conv run flat over whole planes (one row of H * W positions, `lower.flattened`)
# takes tiles of this many vectors: every output channel's entries reload the tile's slice of
# each input channel, which stays in L1 only for short tiles (4 vectors x 128 channels: 32 KB),
# while the least-work tiles (_near_best_tiles) would take 25-26 vectors (213 KB per pass).
# AMD Zen 5, ResNet-50 at 10 % (`tune.measure`, 3 interleaved rounds), 1 x 4 against 1 x 26:
# layer1.1.conv1 (56 x 56, 256 -> 64) 0.124 against 0.145 ms, layer2.0.conv1 (256 -> 128) 0.211
# against 0.245, layer3.0.conv1 (28 x 28, 512 -> 256) 0.227 against 0.256; 1 x 3 and 1 x 6 within
# 3 %, 1 x 8 4-9 % and 1 x 12 10-26 % slower, 1 x 2 slower still. That is 256 bytes of each
# input plane per tile. On AVX2 4 vectors are 128 bytes, and AMD Zen 3 ran such tiles far
# slower than ones as wide as the accumulators allow (14 vectors, 448 bytes): ResNet-50 at 10 %,
# in the network (two compiled models alternated call by call, 12 rounds of per-layer
# profiles), its 56 x 56 pointwise convs 1.45-1.8x (layer1.1.conv1 1.20 -> 0.78 ms), 1 x 14
# against 1 x 8 0.82-1.11x (most of the 28 x 28 ones 0.82-0.94x). Each tile of a 56 x 56 x 256
# input reads 256 planes 12.5 KB apart: short runs per plane seem to starve the prefetchers
# there. By vector width; a width not listed takes tiles as wide as the budget.
FLAT_POINTWISE_VECTORS = {16: 4}


def _sparse_tile(workload: ConvWorkload, weight_density: float, vectors: int, budget: int,
                 v: int) -> tuple[int, int]:
    """A sparse layer's tile: one whose passes fit L1 (`_l1_tile`), else the first near-best
    tile whose input slice lets a pass take at least PASS_ENOUGH_CHANNELS (or the most any of
    them allows). AVX-512, VGG-16 conv2_1 and conv2_2 (112 x 112): 2 x 7 with 32-channel passes
    3.32 / 6.67 ms against 3.89 / 7.48 for 3 x 7, whose 73 KB slice left 16 channels. More
    channels do not pay for narrower rows: AVX2 conv2_2 with 1 x 14 and 32 channels 7.4 ms, 5 x
    2 in one 128-channel pass 9.5."""
    flat_vectors = FLAT_POINTWISE_VECTORS.get(v, budget)
    if workload.tile_rows == 1 and workload.kernel == (1, 1) and vectors > flat_vectors:
        return 1, flat_vectors
    fits = _l1_tile(workload, weight_density, vectors, budget, v)
    if fits is not None:
        return fits
    cg = workload.in_channels // workload.group
    tiles = _near_best_tiles(workload.tile_rows, vectors, budget)
    # tiles were chosen (and measured) by what passes PASS_SLICE_BYTES allows
    channels = [sparse_passes(workload, weight_density, rb, cb, v, PASS_SLICE_BYTES)[0] or cg
                for rb, cb in tiles]
    enough = min(PASS_ENOUGH_CHANNELS, max(channels))
    return next(tile for tile, c in zip(tiles, channels) if c >= enough)


# On several threads, a pointwise conv over a large map splits its output tiles between them, not
# its channel blocks. By blocks every thread reads the whole input (ResNet-50's 56 x 56 x 256:
# 3.2 MB, more than an L2, so from L3 by both) and writes a share of channel planes the next
# layer's threads read across the whole; by tiles each reads and writes its own band of rows
# (a 1x1 tile reads no halo). AMD Zen 4, 2 threads, ResNet-50 at batch 1, two compiled models
# alternated in blocks of 20 calls: its 56 x 56 conv3s (64 -> 256) 1.5x, conv1s (256 -> 64)
# 1.1-1.2x, layer2.0.conv1 1.15x; the network 1.002-1.025x when the VM's two vCPUs scale well
# (10-10.6 ms), 1.12-1.15x when they do not (16-18 ms; in that mode, it seems, what one thread
# reads of the other's output costs most); GoogLeNet 1.011x, ResNet-50 at batch 8 1.003x. The
# 28 x 28 ones too: 1.02-1.035x more in the slow mode, but their conv1s 0.97x in the fast one
# and the merged conv3 + downsample 0.70x (not taken). 3x3 convs by tiles run slower (README).
TILES_SPLIT_MIN_POSITIONS = 56 * 56


# A dense table-form block of `mb` channels loads, per entry, its offset, one input vector per
# accumulator of a channel and one broadcast weight per channel, and runs mb x that many FMAs:
# with FMA, blocks are chosen for the most FMAs per load. On 16 registers (AVX2) 3 channels x 4
# accumulators (12 FMAs per 8 loads) beat 4 x 2 (8 per 7), whose 8 sums also barely cover the
# FMA latency. AMD Zen 3, unpruned ResNet-50 compiled both ways in one process, alternated:
# 1.09x in all; 1x1 convs 1.03-1.25x (but 256 -> 1024 on 14 x 14 0.91-1.04x), 3x3 convs on
# 14 x 14 and 7 x 7 1.15-1.46x, the stride-2 3x3 convs over phase planes 0.83-0.96x. On 32
# registers (AVX-512) the rule keeps 4 x 6. Without FMA (SSE) a product takes a register of its
# own and 2 x 6 ran ResNet-50 0.90x: there the largest block dividing the channels stays.
DENSE_BLOCK_CHANNELS = (4, 3, 2, 1)


def dense_block(channels: int, target: Target, grouped: bool = False) -> tuple[int, int]:
    """(channels per block, accumulators per channel) of a dense table-form kernel for
    `channels` output channels per group (see DENSE_BLOCK_CHANNELS); in a grouped conv the
    blocks divide them (a block must not straddle two groups)."""
    budget = accumulator_budget(target)
    # beside the sums: the block's broadcast weights and an input vector
    spare = target.vector_registers - 1

    def per_channel(mb: int) -> int:
        return max(1, min(budget, spare - mb) // mb)

    def fmas_per_load(mb: int) -> tuple[float, int]:
        useful = channels / (-(-channels // mb) * mb)  # a last block's padding is lost work
        return mb * per_channel(mb) * useful / (per_channel(mb) + mb + 1), mb

    dividing = [m for m in DENSE_BLOCK_CHANNELS if channels % m == 0]
    if "+fma" in target.features.split(","):
        mb = max(dividing if grouped else DENSE_BLOCK_CHANNELS, key=fmas_per_load)
    else:
        mb = dividing[0]
    return mb, per_channel(mb)


def default_split(workload: ConvWorkload, threads: int) -> str:
    """What threads divide by default: a large pointwise conv's tiles, else channel blocks."""
    if (threads > 1 and workload.kernel == (1, 1) and workload.strides == (1, 1)
            and workload.out_height * workload.out_width >= TILES_SPLIT_MIN_POSITIONS):
        return "tiles"
    return "blocks"


def choose_conv(workload: ConvWorkload, weight: np.ndarray, target: Target,
                override: dict | None = None, layer: str = "",
                in_layout: Layout | None = None, threads: int = 1,
                out_layout: Layout | None = None) -> DirectConvPlan:
    """The default direct-conv plan for this layer on this target and number of threads, with
    `override` applied. Given the layout its producer writes (`in_layout`), a sparse table plan
    also sums in shifted frames where its tiles allow (`with_shifted_sums`), or takes whole
    rows a vector wider for them (`_framed_tile`), unless `override` says (shifted_sums, or a
    tile). Given the output's (`out_layout`), a flat run storing into rows of their own runs
    in one pass."""
    v = target.vector_width
    nonzeros = count_nonzeros(weight)  # counted once: compile() runs this per layer
    weight_density = nonzeros / max(1, weight.size)
    misfit = lanes_fit(workload, target)  # None: the lanes form can run this layer here
    dense = conv_is_dense(weight, lanes_thresholds(target) and misfit is None, nonzeros,
                          workload.out_height * workload.out_width)
    vectors = -(-workload.tile_width // v)
    budget = accumulator_budget(target)
    mg = workload.out_channels // workload.group
    cg = workload.in_channels // workload.group
    first_conv = first_conv_block(target, mg) if dense and cg <= FEW_INPUT_CHANNELS else None
    override = override or {}
    if override.get("form") == "lanes" or (
            dense and cg > FEW_INPUT_CHANNELS and misfit is None
            and lanes_pays(workload, target, out_layout)
            and override.get("form", "lanes") == "lanes" and override.keys() <= LANES_FIELDS):
        if v not in LANES_WIDTHS:
            raise InvalidPlanError(f"layer '{layer}': {misfit}")
        plan = apply_override(lanes_plan(v, rows_outer=lanes_rows_outer(workload),
                                         channel_chunk=lanes_passes(workload, v),
                                         vectors=lanes_vectors(workload, v)), override, layer)
        misfit = lanes_fit(workload, target, plan.channels_per_block)
        if misfit is not None:
            raise InvalidPlanError(f"layer '{layer}': {misfit}")
        if "positions" in override:
            return plan
        return replace(plan, positions=lanes_positions(
            lanes_columns(workload, out_layout), v, workload.kernel[0] * workload.kernel[1],
            plan.channels_per_block // v))
    if first_conv is not None:
        mb, accumulators = first_conv
        rb, cb = first_conv_tile(workload.tile_rows, vectors, accumulators)
    elif dense:
        mb, per_channel = dense_block(mg, target, workload.group > 1)
        rb, cb = _tile(workload.tile_rows, vectors, per_channel)
    else:
        mb = 1
        rb, cb = _sparse_tile(workload, weight_density, vectors, budget, v)
        rb = pointwise_column_rows(workload, rb, cb, vectors)
    split = default_split(workload, threads)
    split_stores = out_layout is not None and split_output_rows(workload, out_layout) > 0
    plan = _tile_plan(workload, weight_density, nonzeros, dense, first_conv is not None, mb, rb, cb, v,
                      split, split_stores)
    plan = apply_override(plan, override, layer)
    if dense or in_layout is None or "shifted_sums" in override:
        return plan

    def reframed(tile: tuple[int, int], chunk: int | None = None) -> DirectConvPlan:
        """The sparse plan of `tile` (passes of `chunk` channels), in frames where it can be."""
        other = _tile_plan(workload, weight_density, nonzeros, False, False, 1, *tile, v, split)
        if chunk is not None:
            other = replace(other, channel_chunk=chunk)
        return with_shifted_sums(workload, apply_override(other, override, layer), in_layout)

    framed = with_shifted_sums(workload, plan, in_layout)
    if framed.shifted_sums:
        if override.keys() & (TILE_FIELDS | {"channel_chunk"}):
            return framed
        fewer = _fewer_framed_passes(workload, weight_density, framed, budget, v)
        longer = reframed(*fewer) if fewer is not None else framed
        return longer if longer.shifted_sums else framed
    if override.keys() & TILE_FIELDS:
        return framed
    wide = _framed_tile(workload, weight_density, budget, v)  # rows whole, lanes to spare
    wider = reframed(wide) if wide is not None else framed
    return wider if wider.shifted_sums else framed


# A dense 1x1 conv runs in one pass over its input channels when all its weights stay in L2
# (at most DENSE_ONE_PASS_WEIGHT_BYTES) and a tile's input slice over every channel stays near
# L1 (at most DENSE_ONE_PASS_SLICE_BYTES); else in passes of 64 channels. AMD Zen 3, unpruned
# ResNet-50 in the network, passes against one pass, alternated (two runs): 128 -> 512 on 28 x 28
# (256 KB of weights, 16 KB slices) one pass 1.11-1.36x, 256 -> 128 on 56 x 56 (128 KB, 32 KB)
# 1.15-1.34x, layer1.0's merged 1x1 convs (128 -> 256 on 56 x 56) 1.14x; 512 -> 256 on 28 x 28
# (512 KB, 64 KB) 1.08x and 0.98x, left in passes; with more weights passes win or tie:
# 256 -> 1024 and 1024 -> 256 on 14 x 14 (1 MB) 0.97-1.05x, 512 -> 2048 on 7 x 7 (4 MB) 0.84x,
# 2048 -> 512 0.7x.
DENSE_ONE_PASS_WEIGHT_BYTES = 256 * 1024
DENSE_ONE_PASS_SLICE_BYTES = 64 * 1024


def dense_pointwise_one_pass(workload: ConvWorkload, rows: int, vectors: int, v: int) -> bool:
    """Does a dense 1x1 conv tiled `rows` x `vectors` run in one pass (see
    DENSE_ONE_PASS_WEIGHT_BYTES)?"""
    if workload.kernel != (1, 1):
        return False
    cg = workload.in_channels // workload.group
    weights = 4 * cg * workload.out_channels
    return (weights <= DENSE_ONE_PASS_WEIGHT_BYTES
            and 4 * cg * tile_input_floats(workload, rows, vectors, v) <= DENSE_ONE_PASS_SLICE_BYTES)


def _tile_plan(workload: ConvWorkload, weight_density: float, nonzeros: int, dense: bool,
               first_conv: bool, mb: int, rb: int, cb: int, v: int,
               thread_split: str, split_stores: bool = False) -> DirectConvPlan:
    """The plan of a tile of rb x cb accumulators (and mb channels per block): its unroll,
    passes and loop order, its form; threads divide it by `thread_split`. A flat run storing
    into rows of their own (`split_stores`) takes the table form in one pass."""
    cg = workload.in_channels // workload.group
    split = rb * cb * mb < 4
    unroll = 4 if split else 2
    if dense:
        # dense layers visit every channel block per tile, so the tile's input stays in L1
        # while the weights stream; in one pass too (AMD Zen 4, `tune.measure`, 3 interleaved
        # rounds: CaffeNet conv1 over its 48 phase planes 1.05x, ResNet-50's dense 64 -> 256 1x1
        # convs 1.01-1.04x); an image's first conv, whose tile input is a few channels, keeps
        # blocks outside tiles (ResNet-50 conv1 0.99x)
        chunk = 64 if cg > 96 and not dense_pointwise_one_pass(workload, rb, cb, v) else 0
        order = "tile_block" if chunk or not first_conv else "block_tile"
    else:
        chunk, order = sparse_passes(workload, weight_density, rb, cb, v)
        chunk, order = passes_in_tiles(workload, weight_density, rb, cb, v, chunk, order)
    if split_stores:
        # Each pass after the first would store its partial sums and load them back through
        # the split (two masked loads per vector, misaligned; two masked stores and a branch
        # where a vector crosses a row's end); and the unrolled form repeats that epilogue per
        # channel block, code that in a network comes cold from L2. AMD Zen 5, ResNet-50:
        # layer2.1.conv1 (28 x 28, 512 -> 128, seed densities) 0.54-0.60 ms in 64-channel
        # passes, 0.47-0.49 in one (`tune.measure`, 3 interleaved rounds); layer1.0.conv1
        # (56 x 56, 64 -> 64, 10 %) in the network 0.097 ms unrolled, 0.055 as a table.
        chunk = 0
    plan = DirectConvPlan(form="table", vector_width=v, rows_per_tile=rb, vectors_per_row=cb,
                          channels_per_block=mb, unroll=unroll, split_accumulators=split,
                          channel_chunk=chunk, loop_order=order, split=thread_split)
    # unrolled where its code stays small: sparse layers, and first convs with few taps (VGG-16
    # conv1_1, 27 taps: 2.01 -> 1.71 ms on Zen 4; 147- and 363-tap first convs do not fit)
    if (not dense or first_conv) and not split_stores and unrolled_fits(nonzeros, rb, cb):
        plan = _unrolled(plan)
    return plan


# Plan fields that fix a tile: an override naming one keeps it.
TILE_FIELDS = {"form", "rows_per_tile", "vectors_per_row", "channels_per_block"}
# A sparse layer whose tiles leave no lanes for frames (rows a multiple of the vector: VGG-16's
# 112 and 224 columns) may take rows one vector wider, whole, when that adds at most this much
# work, with the most rows whose passes' slices fit L1. AMD Zen 4, 10 % density (`tune.measure`,
# 3 interleaved rounds): conv2_1 and conv2_2 2 x 8 with frames 1.10-1.11x over 2 x 7 without,
# 1 x 8 (16-channel slices of 25 KB) 1.07-1.10x over 2 x 8 (33 KB), 3 x 8 (42 KB) 0.93x; conv1_2
# 1 x 15 (46 KB: no tile of its 15 vectors fits) 1.13x over 2 x 7.
FRAMED_TILE_MAX_WORK = 1.15


def _framed_tile(workload: ConvWorkload, weight_density: float, budget: int,
                 v: int) -> tuple[int, int] | None:
    """A tile of whole rows with lanes to spare for every column shift's frame, within
    FRAMED_TILE_MAX_WORK of the row's vectors and the budget, with the most rows whose passes'
    slices fit L1 (PASS_L1_BYTES; else one row); None when there is none."""
    shifts = workload.column_shifts()
    vectors = -(-workload.tile_width // v)
    cb = -(-(workload.tile_width + shifts - 1) // v)
    if shifts < 2 or cb > budget or cb > FRAMED_TILE_MAX_WORK * vectors:
        return None
    for rb in range(min(budget // cb, workload.tile_rows), 0, -1):
        chunk, _ = sparse_passes(workload, weight_density, rb, cb, v)
        channels = chunk or workload.in_channels // workload.group
        slice_bytes = 4 * tile_input_floats(workload, rb, cb, v) * channels
        if slice_bytes <= PASS_L1_BYTES:
            return rb, cb
    return 1, cb


# A framed pass pays per accumulator for its sums' rotations between frames (and the partial
# sums' load and store), so framed passes over input channels take at least this many table
# entries per output channel: tiles whose passes of that many channels read input slices within
# PASS_SLICE_BYTES_TAPS, among those within FRAMED_PASSES_TILE_SLACK of the least work. AMD Zen 4,
# 10 % density (`tune.measure`, 3 interleaved rounds): 56 x 56 3x3 convs, which the L1 rule
# gave 4 x 4 tiles with 16-channel passes (14 entries; 25 KB slices), with 32-channel passes:
# 2 x 4 (34 KB) 1.16x (ResNet-50 layer1.1.conv2) and 1.20x (VGG-16 conv3_2), 3 x 4 (42 KB)
# 1.12-1.13x, 4 x 4 (50 KB) 1.05-1.08x; 64 channels 1.01-1.05x; GoogLeNet conv2/3x3 2 x 4
# 1.15x. Networks (in-process A/B, calls alternated): ResNet-50 1.009x, GoogLeNet 1.030x,
# VGG-16 1.036x. Not for passes inside tiles: VGG-16 conv1_2 and conv2_2 (1-row tiles, 16
# channels) 0.94-0.96x with 32.
PASS_MIN_ENTRIES_FRAMED = 24
FRAMED_PASSES_TILE_SLACK = 1.20
# ... and at least this many FMAs per block per pass (entries x accumulators), for what each
# block's pass costs besides (its segment bounds, bias, loop setup): a tile of few accumulators
# needs longer passes. ResNet-50 layer4.0.conv2 over its phase planes (a 2x2 conv over 2048
# plane channels, 8 x 8, one 4-vector tile): 128-channel passes (29 entries, 115 FMAs) 0.491 ms,
# 256 (230 FMAs, 75 KB slices) 0.432, 1.14x; layer4.1.conv2 (7 x 7 in rows of 8, 4 vectors)
# already passes 64 channels (58 entries, 230 FMAs): 32 0.85x, 128 0.88x.
PASS_MIN_FRAMED_FMAS = 192


def _fewer_framed_passes(workload: ConvWorkload, weight_density: float, plan: DirectConvPlan,
                         budget: int, v: int) -> tuple[tuple[int, int], int] | None:
    """(tile, channels per pass) for a framed plan whose passes carry fewer than
    PASS_MIN_ENTRIES_FRAMED entries per output channel (a tile of the rows' width whose slices
    stay within the budget, else none) or fewer than PASS_MIN_FRAMED_FMAS FMAs per block; None
    when it has enough."""
    cg = workload.in_channels // workload.group
    taps = workload.kernel[0] * workload.kernel[1]
    if not plan.channel_chunk or plan.loop_order != "tile_block":
        return None

    def entries(channels: int) -> float:
        return weight_density * channels * taps

    tile, chunk = (plan.rows_per_tile, plan.vectors_per_row), plan.channel_chunk
    if entries(chunk) < PASS_MIN_ENTRIES_FRAMED:
        while entries(chunk) < PASS_MIN_ENTRIES_FRAMED and chunk < cg:
            chunk *= 2
        vectors = -(-workload.tile_width // v)
        tiles = _near_best_tiles(workload.tile_rows, vectors, budget, FRAMED_PASSES_TILE_SLACK)
        tile = next(((rb, cb) for rb, cb in tiles if cb == plan.vectors_per_row
                     and chunk * 4 * tile_input_floats(workload, rb, cb, v) <= PASS_SLICE_BYTES_TAPS),
                    None)
        if chunk >= cg or tile is None:
            return None
    while entries(chunk) * tile[0] * tile[1] < PASS_MIN_FRAMED_FMAS and 2 * chunk < cg:
        chunk *= 2
    unchanged = tile == (plan.rows_per_tile, plan.vectors_per_row) and chunk == plan.channel_chunk
    return None if unchanged else (tile, chunk)


# Shifted sums are taken where their frames align at least this share of a kernel's loads
# (and more than without them). AMD Zen 4, AVX-512, 10 % density (`tune.measure`, 3 interleaved
# rounds): every load aligned: ResNet-50's 3x3 convs 1.25x (56 x 56), 1.35x (28 x 28), 1.32x
# (14 x 14), 1.17-1.20x strided (two of three column shifts aligned already); VGG-16 conv3_1
# 1.23x, conv4_2 1.31x, conv5_1 1.30x; CaffeNet conv2 (5x5) 1.44x, conv3 / conv4 1.31x. Half:
# GoogLeNet's 7 x 7 maps run flat (rows 11 floats apart, 7 lanes to spare) 1.05-1.16x, its 14 x
# 14 5x5 convs (3 of 5 column shifts within 2 spare lanes) 1.13x; ResNet-50 layer4.0.conv2 0.98x.
# Less: ResNet-50's 7 x 7 3x3 convs (rows 9 apart, 3 lanes to spare: 22 %) 0.94x.
FRAMES_MIN_ALIGNED_SHARE = 0.5


def with_shifted_sums(workload: ConvWorkload, plan: DirectConvPlan, in_layout: Layout) -> DirectConvPlan:
    """`plan` summing in shifted frames (`shifted_sums_misfit`) when its tiles allow it and the
    frames align enough of its loads (FRAMES_MIN_ALIGNED_SHARE), else `plan`."""
    if plan.form != "table" or plan.aligned_copies:
        return plan
    framed = replace(plan, shifted_sums=True)
    read = packed_input(workload, framed, plan.vector_width) or in_layout
    if shifted_sums_misfit(workload, read, framed) is not None:
        return plan
    # the taps of enough channels to see how their planes fall across vector boundaries
    taps = tap_offsets(workload, read, min(workload.in_channels // workload.group, 16))
    misaligned = (origin(workload, read) + taps) % plan.vector_width
    aligned = float(np.mean(entry_frames(workload, read, framed, taps) == misaligned))
    pays = aligned >= FRAMES_MIN_ALIGNED_SHARE and aligned > float(np.mean(misaligned == 0))
    return framed if pays else plan


# what a plan override may name and still leave a dense layer the lanes form (other fields
# are the table forms' blocking)
LANES_FIELDS = {"form", "positions", "codegen_opt", "channel_chunk"}


# Vectors of output channels per lanes block, by vector width. AVX-512 (32 registers): one,
# 16 positions fit beside it (sums of up to 16 accumulators). AVX2 (16 registers): two, so each
# broadcast feeds two FMAs (AMD Zen 3, unpruned, against the table form's dense blocks of 4
# channels x 2 vectors. Alone (`tune.measure`, interleaved rounds): 2 vectors x 6 positions
# VGG-16 conv1_2 1.28x, conv2_2 1.22x, ResNet-50 layer1.0.conv2 1.13-1.22x, layer2.1.conv2
# 1.23-1.25x; one vector x 8 positions 0.65-0.9x; 3 x 4 level with the table; 2 x 7 spills.
# In the network (two compiled models alternated, per-layer profiles): ResNet-50's 3x3 convs
# on 56 x 56 and 28 x 28 maps 1.04-1.29x, VGG-16's 0.90-1.33x, 1.03x summed).
LANES_VECTORS = {16: 1, 8: 2}
# On AVX2, convs over at most this many input channels (per group) take blocks of 4 vectors x 3
# positions (one broadcast per 4 FMAs, MLAS's AVX2 shape) where whole blocks of 32 channels
# divide the output channels. AMD Zen 3, unpruned, in the network (alternated): faster in every
# run, by no more than that VM's noise: ResNet-50's layer1 3x3 convs (64 -> 64 on 56 x 56) 1.05x
# and 1.09-1.12x, VGG-16 conv1_2 1.03x, 1.07x and 1.07x, conv2_1 1.02-1.03x and 1.12x (in that
# run unchanged layers moved 0.97-1.15x); alone 1.04x (session 27). Over 128 channels mixed:
# ResNet-50's layer2 0.88-1.07x, VGG-16 conv2_2 0.99x, conv3_x / conv4_x 0.90-0.96x.
LANES_WIDE_BLOCK_MAX_CHANNELS = 64
LANES_WIDE_BLOCK_VECTORS = 4
# AVX2's lanes form runs only convs with several taps on maps at least this wide: elsewhere
# the table form's dense blocks were as fast or faster (Zen 3, as above: 1x1 convs 0.75-1.1x,
# 14 x 14 and 7 x 7 maps 0.85-0.93x; 28 x 28 VGG-16 conv4_2 1.03x, 56 x 56 conv3_2 0.94-1.0x).
LANES_AVX2_MIN_COLUMNS = 28


def lanes_thresholds(target: Target) -> bool:
    """Are this target's dense thresholds the lanes form's? On AVX-512, where it runs every
    dense conv. On AVX2 it runs only some (`lanes_pays`), a little faster than the table form's
    dense blocks there; their thresholds stay."""
    return target.vector_width == 16


def lanes_pays(workload: ConvWorkload, target: Target, out_layout: Layout | None) -> bool:
    """Does a dense conv (not an image's first) take the lanes form by default here?"""
    if target.vector_width == 16:
        return True
    taps = workload.kernel[0] * workload.kernel[1]
    return taps > 1 and lanes_columns(workload, out_layout) >= LANES_AVX2_MIN_COLUMNS


def lanes_vectors(workload: ConvWorkload, vector_width: int) -> int:
    """Vectors of output channels per block of the lanes form's default plan for this conv."""
    wide = LANES_WIDE_BLOCK_VECTORS * vector_width
    if (vector_width == 8 and workload.in_channels // workload.group <= LANES_WIDE_BLOCK_MAX_CHANNELS
            and (workload.out_channels // workload.group) % wide == 0):
        return LANES_WIDE_BLOCK_VECTORS
    return LANES_VECTORS[vector_width]


def lanes_plan(vector_width: int, codegen_opt: int = 2, rows_outer: bool = False,
               channel_chunk: int = 0, vectors: int | None = None) -> DirectConvPlan:
    """The lanes form's plan: `vectors` (default LANES_VECTORS) vectors of output channels per
    block, positions by rule, rows outside blocks ("tile_block") or inside, in passes of
    `channel_chunk` input channels (0: one pass)."""
    vectors = vectors or LANES_VECTORS[vector_width]
    return DirectConvPlan(form="lanes", vector_width=vector_width, rows_per_tile=1, vectors_per_row=1,
                          channels_per_block=vector_width * vectors, unroll=1,
                          codegen_opt=codegen_opt, channel_chunk=channel_chunk,
                          loop_order="tile_block" if rows_outer else "block_tile")


# On AVX2 the lanes form sums convs over more than LANES_PASS_MIN_CHANNELS input channels (per
# group) in passes of LANES_PASS_CHANNELS: a block's weights for one pass (16 channels x 64 x 9
# taps: 37 KB) and the pass's input stay nearer L1 than a whole conv's (295 KB per block for 512
# channels, more than half of Zen 3's 512 KB L2), at the cost of storing and reloading partial
# sums. AMD Zen 3, unpruned VGG-16 compiled both ways in one process, alternated: conv3_2 /
# conv3_3 (256 -> 256 on 56 x 56) 1.21x, conv4_2 / conv4_3 (512 -> 512 on 28 x 28) 1.33x, conv4_1
# (256 -> 512) 1.02x, the whole network 1.12x; 128 channels 0.93-1.0x alone (VGG-16 conv3_1
# 1.01x), so not there. Passes of 16 and 32 channels were no faster (0.9-1.0x of 64). AVX-512
# (1 MB L2 on the Zen 4s measured) keeps one pass: not measured with passes.
LANES_PASS_MIN_CHANNELS = 128
LANES_PASS_CHANNELS = 64


def lanes_passes(workload: ConvWorkload, vector_width: int) -> int:
    """The lanes form's default `channel_chunk` for this conv (0: one pass)."""
    if vector_width == 8 and workload.in_channels // workload.group > LANES_PASS_MIN_CHANNELS:
        return LANES_PASS_CHANNELS
    return 0


def lanes_rows_outer(workload: ConvWorkload) -> bool:
    """Does the lanes form walk rows outside channel blocks? Where an image's input outweighs
    the weights: each block would stream the whole input through the caches again (VGG-16
    conv2_2, 6.4 MB of input for 8 blocks: 62 GFLOP/s), where a row's inputs, read by every
    block in turn, stay in L2 while the weights stream (conv4_2's 9.4 MB of weights would
    stream once per row: there blocks stay outside)."""
    taps = workload.kernel[0] * workload.kernel[1]
    weights = workload.out_channels * (workload.in_channels // workload.group) * taps
    return workload.in_channels * workload.height * workload.width > weights


def lanes_fit(workload: ConvWorkload, target: Target, channels: int | None = None) -> str | None:
    """Why the lanes form cannot run this layer on this target in blocks of `channels` output
    channels (default: LANES_VECTORS vectors), or None when it can."""
    v = target.vector_width
    if v not in LANES_WIDTHS:
        return f"the lanes form needs 8- or 16-float vectors (AVX2, AVX-512), not {v}"
    mg = workload.out_channels // workload.group
    block = channels or v * LANES_VECTORS[v]
    if workload.group > 1 and mg % block:
        return (f"the lanes form's blocks of {block} channels must not straddle groups "
                f"({mg} output channels per group)")
    return None


def _unrolled(plan: DirectConvPlan) -> DirectConvPlan:
    return replace(plan, form="unrolled", channel_chunk=0, loop_order="block_tile",
                   aligned_copies=False)


def fc_is_sparse(weight: np.ndarray) -> bool:
    return density(weight) < DENSE_THRESHOLD


# From this batch on a pruned FC layer runs on the direct-conv kernel with the images in the
# vector lanes (one pass over the table for all of them) rather than gathering per image: on
# CaffeNet's fc6 the gather kernel took ~1 ms per image at any batch, the lanes kernel 2.9 ms
# at batch 1 and 3.6 ms at batch 8. AMD Zen 4, once both prefetch their tables into L2,
# CaffeNet's three FCs (in-process A/B, network profiles): batch 2 rows 6.23 ms, lanes 6.57;
# batch 3 rows 9.27, lanes 6.52.
FC_LANES_MIN_BATCH = 3


def choose_fc(weight: np.ndarray, batch: int) -> str:
    """The FC kernel for W[M][C] at `batch`: "dense" (packed GEMM), "rows" (pruned, gathers per
    image) or "batch_lanes" (pruned, the batch in the vector lanes)."""
    if not fc_is_sparse(weight):
        return "dense"
    return "batch_lanes" if batch >= FC_LANES_MIN_BATCH else "rows"


# Rows of X a dense FC tile takes at most: every pass over a tile's rows streams W once, so
# a batch in one pass reads W once. 32 registers (AVX-512) hold 8 rows x 2 vectors of sums:
# VGG-16's fc6 (411 MB of weights) at batch 8 27.7 -> 16.4 ms on AMD Zen 4 (in-process, one
# thread); 16 registers hold 4 x 2 beside a weight vector pair and a broadcast.
GEMM_MAX_ROWS = {32: 8, 16: 4}


# A dense FC at batch 1 whose input comes out of a ReLU (through max pools and reshapes) skips
# the rows of W^T its zero inputs would multiply: VGG-16's fc6 (411 MB of weights, DRAM-bound;
# 41 % of its inputs zero on the benchmark's random image) 13.5 -> 10.1 ms on one thread, 11.7
# -> 7.1 on two; the network 1.07x / 1.12x (AMD Zen 4, in-process A/B). On an input with no
# zeros the row-by-row kernel streams slower than the tiled one on one thread (ResNet-50's fc
# after its average pool: 0.41 against 0.32 ms), so it is not the default there; at batch 2
# and more the images' zeros differ and W would be read once per image.
SKIP_ZERO_INPUTS_MAX_BATCH = 1


def choose_gemm(target: Target, batch: int, override: dict | None = None,
                layer: str = "", sparse_input: bool = False) -> GemmPlan:
    """The dense FC plan at `batch`; `sparse_input`: its input is rectified (many exact zeros)
    and its weights finite, so skipping zero inputs changes no result."""
    if sparse_input and batch <= SKIP_ZERO_INPUTS_MAX_BATCH:
        plan = GemmPlan(vector_width=target.vector_width, rows_per_tile=1, vectors_per_tile=4,
                        skip_zero_inputs=True)
    else:
        rows = min(batch, GEMM_MAX_ROWS.get(target.vector_registers, 4))
        plan = GemmPlan(vector_width=target.vector_width, rows_per_tile=rows,
                        vectors_per_tile=4 if rows <= 2 else 2)
    return apply_override(plan, override, layer)
