"""Direct sparse convolution: the workload, the plan (blocking) and the baked sparsity pattern.

For output channel m and each nonzero weight w at (c, r, s):
    out[m][y][x .. x+V) += w * in_pad[c][y*sh + r*dh][x*sw + s*dw .. +V)
With the input padded (and phase-split for sw > 1, see layout.py), the input address of every
nonzero is `tile_base(y, x) + offset(c, r, s)`: a constant per nonzero. The pattern of a block
of output channels is the sorted list of those offsets and the weights at them, which the
templates bake into the generated module (a constant table, or immediates in unrolled code).

Output channels are grouped in blocks of `channels_per_block` sharing one offset list (the union
of their nonzero positions; absent weights are zeros): 1 for unstructured sparsity, 4 or so for
dense layers, where every channel has every position. Groups need no special case: offsets name
absolute input channels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from ..arrays import count_nonzeros, nonzero_rows_cols
from .layout import Layout, PhasePlanes, round_up


@dataclass(frozen=True)
class ConvWorkload:
    """A 2-D convolution layer's shape (per image); what a plan and a tuning record key on."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    # 0: the kernel tiles output rows. > 0 (stride-1 convs whose input and output buffers have
    # rows this many floats apart, see `flat_rows`): it computes each output plane as one run
    # of positions y * flat_stride + x, the lanes between rows falling into the padding.
    flat_stride: int = 0

    @property
    def tile_rows(self) -> int:
        """Rows of the output positions the kernel tiles: 1 for a flat run."""
        return 1 if self.flat_stride else self.out_height

    @property
    def tile_width(self) -> int:
        """Positions per tiled row: the output width, or a flat run's length."""
        if self.flat_stride:
            return (self.out_height - 1) * self.flat_stride + self.out_width
        return self.out_width

    @property
    def out_height(self) -> int:
        (kh, _), (sh, _), (dh, _) = self.kernel, self.strides, self.dilations
        return (self.height + self.pads[0] + self.pads[2] - dh * (kh - 1) - 1) // sh + 1

    @property
    def out_width(self) -> int:
        (_, kw), (_, sw), (_, dw) = self.kernel, self.strides, self.dilations
        return (self.width + self.pads[1] + self.pads[3] - dw * (kw - 1) - 1) // sw + 1

    @property
    def dense_flops(self) -> int:
        cg = self.in_channels // self.group
        return 2 * self.out_channels * cg * self.kernel[0] * self.kernel[1] * self.out_height * self.out_width

    def column_shifts(self) -> int:
        """Distinct phase-column offsets of the kernel's columns: (s * dw) // sw for s < kw."""
        return (self.kernel[1] - 1) * self.dilations[1] // self.strides[1] + 1

    def input_layout(self, vector_width: int, shifted: bool = False) -> Layout:
        """The padded, phase-split input layout this conv packs its input into; with `shifted`,
        one copy per column shift so that every input load is vector-aligned."""
        return Layout.padded(self.in_channels, self.height, self.width, self.pads,
                             phases=self.strides[1], align=vector_width,
                             shifts=self.column_shifts() if shifted else 1)


LOOP_ORDERS = ("block_tile", "tile_block", "tile_chunk_block")
FORMS = ("table", "unrolled", "lanes")
# The lanes form transposes a block of V x V sums before storing a channel's positions: built
# for AVX-512 (16 lanes) and AVX2 (8); SSE's 4 lanes are not.
LANES_WIDTHS = (8, 16)
# vectors of output channels one lanes block may hold (each position's broadcast feeds that many FMAs)
LANES_MAX_VECTORS = 4
# accumulators of a lanes block of several vectors (16 registers: the rest hold the block's
# weight vectors and a broadcast)
LANES_ACCUMULATORS_NARROW = 12


@dataclass(frozen=True)
class DirectConvPlan:
    """Blocking and form of one direct-conv kernel: plain data a tuner can vary."""

    # "table": loop over a constant (offset, weights) table; "unrolled"; "lanes": a dense
    # block of `vector_width` output channels in the lanes, each input value broadcast
    form: str = "table"
    vector_width: int = 16
    rows_per_tile: int = 4  # output rows held in accumulators
    vectors_per_row: int = 1  # vectors per row held in accumulators
    channels_per_block: int = 1  # output channels sharing one offset list
    unroll: int = 2  # table form: nonzeros per loop iteration
    split_accumulators: bool = False  # one accumulator set per unrolled nonzero (short tiles)
    channel_chunk: int = 0  # input channels (per group) per pass; 0 = all in one pass
    # table form, per pass over input channels: channel blocks outside tiles ("block_tile") or
    # tiles outside blocks ("tile_block"); or "tile_chunk_block": every pass of a tile before
    # the next tile (its partial sums stay in cache between passes)
    loop_order: str = "block_tile"
    aligned_copies: bool = False  # pack one input copy per column shift: all loads aligned
    # table form: each entry summed in a frame of lanes as far left as its load lies past a
    # vector boundary, the sums rotated between frames: loads aligned (`shifted_sums_misfit`)
    shifted_sums: bool = False
    # what threads divide: output-channel blocks (each thread reads all of the input), or
    # output tiles (each reads its rows' input, mostly what it wrote as the layer before)
    split: str = "blocks"
    codegen_opt: int = 2
    # lanes form: output positions of a row summed at once (one accumulator each, at most
    # vector_width); 0: the rule of `lanes_positions`
    positions: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.form in FORMS, f"form must be one of {FORMS}"),
            (self.loop_order in LOOP_ORDERS, f"loop_order must be one of {LOOP_ORDERS}"),
            (self.vector_width in (1, 4, 8, 16), "vector_width must be 1, 4, 8 or 16"),
            (self.split in ("blocks", "tiles"), "split must be 'blocks' or 'tiles'"),
            (min(self.rows_per_tile, self.vectors_per_row, self.unroll,
                 self.channels_per_block) >= 1, "tile, unroll and block sizes must be >= 1"),
            (self.channel_chunk >= 0, "channel_chunk must be >= 0"),
            (self.form != "unrolled" or (self.channel_chunk == 0 and self.loop_order == "block_tile"
                                      and not self.aligned_copies),
             "the unrolled form runs one pass, in block_tile order, on unshifted input"),
            (self.form != "unrolled" or not self.shifted_sums, "shifted_sums needs the table form"),
            (not (self.shifted_sums and self.aligned_copies),
             "shifted_sums and aligned_copies are two ways to align loads: take one"),
            (self.codegen_opt in (0, 1, 2, 3), "codegen_opt must be 0..3"),
            (0 <= self.positions <= max(self.vector_width, 1), "positions must be 0..vector_width"),
            (self.form != "lanes" or (
                self.vector_width in LANES_WIDTHS and self.channels_per_block % self.vector_width == 0
                and self.channels_per_block <= LANES_MAX_VECTORS * self.vector_width
                and self.loop_order in ("block_tile", "tile_block")
                and not (self.aligned_copies or self.shifted_sums or self.split_accumulators)
                and self.split == "blocks" and self.unroll == 1
                and self.rows_per_tile == 1 and self.vectors_per_row == 1),
             f"the lanes form holds 1 to {LANES_MAX_VECTORS} vectors of output channels per block "
             f"(vector_width in {LANES_WIDTHS}, channels_per_block a multiple of it), passes in "
             "block_tile or tile_block order, split by blocks, "
             "unroll 1, 1 x 1 tiles"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (plan {self})")

    @property
    def accumulators(self) -> int:
        if self.form == "lanes":
            return (self.positions or self.vector_width) * self.channels_per_block // self.vector_width
        split = self.unroll if self.split_accumulators and self.form == "table" else 1
        return self.rows_per_tile * self.vectors_per_row * self.channels_per_block * split

    def variant(self) -> str:
        """Names the variant in kernel symbols, e.g. table_v16_r4x1_m1_u2."""
        if self.form == "lanes":
            blocks = self.channels_per_block // self.vector_width
            return (f"lanes_v{self.vector_width}_p{self.positions}" + (f"_w{blocks}" if blocks > 1 else "")
                    + (f"_c{self.channel_chunk}" if self.channel_chunk else ""))
        split = "s" if self.split_accumulators else ""
        chunk = f"_c{self.channel_chunk}" if self.channel_chunk else ""
        order = {"block_tile": "", "tile_block": "_tb", "tile_chunk_block": "_tcb"}[self.loop_order]
        aligned = "_a" if self.aligned_copies else ("_f" if self.shifted_sums else "")
        tiles = "_st" if self.split == "tiles" else ""
        return (f"{self.form}_v{self.vector_width}_r{self.rows_per_tile}x{self.vectors_per_row}"
                f"_m{self.channels_per_block}_u{self.unroll}{split}{chunk}{order}{aligned}{tiles}")

    def chunks(self, channels_per_group: int) -> int:
        """Passes over the input channels (each adds into the output's partial sums)."""
        if self.channel_chunk == 0 or self.channel_chunk >= channels_per_group:
            return 1
        return -(-channels_per_group // self.channel_chunk)


@dataclass(frozen=True)
class Epilogue:
    """What happens to an accumulator before it is stored: bias add, then an activation."""

    activation: str = "none"  # "none" | "relu" | "leaky_relu" | "clip"
    alpha: float = 0.0  # leaky_relu slope
    clip_min: float = float("-inf")
    clip_max: float = float("inf")


@dataclass
class Pattern:
    """The baked sparsity of a layer for one plan. Entries are grouped in segments, one per
    (input-channel chunk, block of output channels, frame), in the order the kernel visits
    them: segment `(chunk * blocks + block) * groups + group` spans entries
    [segment_start[s], segment_start[s + 1]). Without shifted sums there is one group, of frame
    0; with them, group g holds the entries summed in frame `frames[g]` (largest first)."""

    segment_start: np.ndarray  # int64 [chunks * blocks * groups + 1] into the entries
    offsets: np.ndarray  # int64 [entries]: input float offset per entry
    weights: np.ndarray  # float32 [entries, channels_per_block]
    channels: np.ndarray  # int64 [blocks, channels_per_block]: output channel, -1 = none
    nonzeros: int  # true nonzeros of the weight tensor
    chunks: int = 1
    frames: tuple[int, ...] = (0,)  # lanes each group's frame lies left of the output's
    digest: str = field(default="")  # sha256 of `arrays()` (hex), set by build_pattern

    @property
    def groups(self) -> int:
        return len(self.frames)

    @property
    def blocks(self) -> int:
        return len(self.channels)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays that define the pattern (what a cache key must cover)."""
        return (self.segment_start, self.offsets, self.weights, self.channels)

    @property
    def entries(self) -> int:
        return len(self.offsets)


def build_pattern(weight: np.ndarray, workload: ConvWorkload, layout: Layout,
                  plan: DirectConvPlan) -> Pattern:
    """Offsets and weights per block of output channels, from the weight tensor [M, C/G, R, S].

    Entries of a block are its union of nonzero positions in (c, r, s) order; the table form
    runs whole iterations of `unroll` entries and then the remainder one by one, so no
    zero-weight padding entries exist (they would turn an Inf input into NaN). With shifted
    sums an entry's offset leaves out its frame (`shifted_sums_misfit`), and the entries of a
    segment are grouped by frame."""
    m_total, cg, kh, kw = weight.shape
    mg = m_total // workload.group
    dh, dw = workload.dilations
    mb = plan.channels_per_block
    if workload.group > 1 and mg % mb:
        # a block shares one offset list, so it must not straddle two groups' input channels
        raise ValueError(f"channels_per_block={mb} must divide the {mg} output channels per group")
    blocks = -(-m_total // mb)
    k = cg * kh * kw
    # without padding channels a view: a copy of ResNet-50's 100 MB of weights took 0.2 s of
    # its warm compile, mostly first touches of the new memory
    if blocks * mb == m_total:
        w = np.asarray(weight, np.float32).reshape(m_total, k)
    else:
        w = np.zeros((blocks * mb, k), np.float32)
        w[:m_total] = weight.reshape(m_total, k)
    w_blocks = w.reshape(blocks, mb, k)
    channels = np.arange(blocks * mb, dtype=np.int64).reshape(blocks, mb)
    channels[channels >= m_total] = -1
    # input offset of every local position (c, r, s), and each block's input-channel base
    c_local = np.arange(k) // (kh * kw)
    local = tap_offsets(workload, layout, cg)
    group_of_block = (np.arange(blocks) * mb) // mg
    base = group_of_block * cg * layout.channel_stride
    used = (w_blocks[:, 0] != 0) if mb == 1 else np.any(w_blocks != 0, axis=1)
    block_idx, pos = nonzero_rows_cols(used)  # sorted by block, then position
    offsets = base[block_idx] + local[pos]
    group = np.zeros_like(offsets)
    frames: tuple[int, ...] = (0,)
    if plan.shifted_sums:  # group g: the entries of the g-th largest frame, loaded aligned
        frame = entry_frames(workload, layout, plan, offsets)
        frames = tuple(int(f) for f in np.unique(frame)[::-1]) or (0,)
        group = np.searchsorted(-np.array(frames), -frame)
        offsets = offsets - frame
    groups = len(frames)
    chunks = plan.chunks(cg)
    chunk_size = -(-cg // chunks)
    segment = ((c_local[pos] // chunk_size) * blocks + block_idx) * groups + group
    order = np.argsort(segment, kind="stable")  # by segment, (c, r, s) order kept within one
    block_idx, pos, segment, offsets = block_idx[order], pos[order], segment[order], offsets[order]
    counts = np.bincount(segment, minlength=chunks * blocks * groups)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    entries = int(starts[-1])
    weights = np.ascontiguousarray(w_blocks[block_idx, :, pos]).reshape(entries, mb)
    pattern = Pattern(starts, offsets, weights, channels, count_nonzeros(weight), chunks, frames)
    h = hashlib.sha256()
    for arr in pattern.arrays():
        data = np.ascontiguousarray(arr).tobytes()
        h.update(len(data).to_bytes(8, "little") + data)
    pattern.digest = h.hexdigest()  # kernel cache keys name the pattern by it
    return pattern


def tap_offsets(workload: ConvWorkload, layout: Layout, channels: int) -> np.ndarray:
    """Input offset (from the tile's first input) of every position (c, r, s) of the first
    `channels` input channels, in (c, r, s) order."""
    (kh, kw), (dh, dw) = workload.kernel, workload.dilations
    c, r, s = np.unravel_index(np.arange(channels * kh * kw), (channels, kh, kw))
    shift = (s * dw) // layout.phases
    if layout.shifts > 1:  # read copy `shift` at column 0: aligned
        assert layout.shifts > shift.max(), (layout, workload)
        shift = shift * layout.shift_stride
    return (c * layout.channel_stride + r * dh * layout.row_stride
            + ((s * dw) % layout.phases) * layout.phase_width + shift)


@dataclass(frozen=True)
class LanesWalk:
    """How a lanes kernel walks an image's output: `rows` rows of `columns` positions, in
    blocks of `positions` (the last block of a row may hold fewer); an output row's first input
    lies `in_row` floats past the previous row's."""

    rows: int
    columns: int
    in_row: int
    positions: int


def lanes_walk(workload: ConvWorkload, plan: DirectConvPlan, in_layout: Layout,
               out_layout: Layout) -> LanesWalk:
    """The output rows a lanes kernel walks: the output's own rows (a flattened pointwise conv
    storing into rows of its own, split_output_rows, reads its plain input W floats a row; a
    flat run's rows lie flat_stride apart), not the run the table kernels tile."""
    columns = lanes_columns(workload, out_layout)
    if split_output_rows(workload, out_layout):
        rows, in_row = out_layout.height, columns
    elif workload.flat_stride:
        rows, in_row = workload.out_height, workload.flat_stride
    else:
        rows, in_row = workload.out_height, workload.strides[0] * in_layout.row_stride
    taps = workload.kernel[0] * workload.kernel[1]
    vectors = plan.channels_per_block // plan.vector_width
    return LanesWalk(rows, columns, in_row,
                     plan.positions or lanes_positions(columns, plan.vector_width, taps, vectors))


def lanes_columns(workload: ConvWorkload, out_layout: Layout | None) -> int:
    """Positions per output row a lanes kernel walks (see lanes_walk)."""
    split = split_output_rows(workload, out_layout) if out_layout is not None else 0
    return split or workload.out_width


def lanes_positions(columns: int, vector_width: int, taps: int = 1, vectors: int = 1) -> int:
    """Positions per block of a row of `columns`: a divisor from half a vector to a vector, so
    every block is full, else blocks as even as can be (49 -> 13, 13, 13, 10). Which divisor
    first was measured on AMD Zen 4 (`tune.measure`, 3 interleaved rounds, unpruned): a conv with
    several taps half a vector (VGG-16 conv1_2 on 224 x 224: 113 GFLOP/s in blocks of 8, 110 of
    16, 102 of 14; conv2_2 on 112 x 112: 114 / 103 / 106; on 56 x 56 and 14 x 14 maps all
    within 1 %), a 1x1 conv 14, then the largest (256 -> 64 on 56 x 56 flattened: 104 of 14, 99
    of 16, 96 of 8; 1024 -> 256 on 14 x 14: 112 of 8, 14 and 16). A short last block (14 in
    12 + 2) ran 10 % slower. Blocks of several `vectors` of channels (AVX2's 16 registers) hold
    12 accumulators: 6 positions of 2 vectors, 4 of 3 (AMD Zen 3, 2 vectors: 6 positions the
    fastest, 4 0.7-0.9x of it, 7 (16 registers with the weights and a broadcast) spilled)."""
    if vectors > 1:
        return min(columns, LANES_ACCUMULATORS_NARROW // vectors)
    half = vector_width // 2
    first = half if taps > 1 else min(14, vector_width)
    preferred = [first, *range(vector_width, half - 1, -1)]
    for p in preferred:
        if p <= columns and columns % p == 0:
            return p
    return -(-columns // -(-columns // vector_width))


def parallel_units(workload: ConvWorkload, plan: DirectConvPlan, blocks: int) -> int:
    """Units of the kernel's (b0, b1) range, which threads divide: channel blocks, or tiles."""
    if plan.split == "tiles":
        ty, tx = tiles(workload, plan)
        return ty * tx
    return blocks


def tiles(workload: ConvWorkload, plan: DirectConvPlan) -> tuple[int, int]:
    """(row tiles, column tiles) covering the output."""
    vectors = -(-workload.tile_width // plan.vector_width)
    return (-(-workload.tile_rows // plan.rows_per_tile), -(-vectors // plan.vectors_per_row))


def input_extent(workload: ConvWorkload, layout: Layout, plan: DirectConvPlan,
                 pattern: Pattern) -> int:
    """Floats past an image's start that the kernel may read (garbage lanes of the last tiles
    included): the buffer holding the last image must extend this far."""
    ty, tx = tiles(workload, plan)
    v = plan.vector_width
    last_row = (ty * plan.rows_per_tile - 1) * workload.strides[0]  # 0 for a flat run
    last_col = (tx * plan.vectors_per_row - 1) * v
    max_offset = int(pattern.offsets.max()) if pattern.entries else 0
    return origin(workload, layout) + last_row * layout.row_stride + last_col + max_offset + v


def tails_into_padding(workload: ConvWorkload, out_layout: Layout, vector_width: int) -> bool:
    """Can the kernel store every output vector whole, zeros in its lanes past the width Q?
    (A flat run always can: `flat_rows` checks it.)

    A vector starting at column x0 < Q (a multiple of V) ends before round_up(Q, V). Stored at
    padded column pad_left + x, a lane x >= Q lands in the row's right padding or, past the
    row stride, in the next row's left padding (column < pad_left, as x < round_up(Q, V) <=
    row stride): never on another output, always where the buffer must hold zeros. The next
    row of a channel's last row is the next channel's top row, or for the last channel of the
    last image up to pad_left floats past the image (`output_extent` counts them)."""
    if workload.flat_stride:
        return True
    if split_output_rows(workload, out_layout):
        return False
    return (out_layout.phases == 1 and out_layout.shifts == 1
            and round_up(workload.out_width, vector_width) <= out_layout.row_stride)


def split_output_rows(workload: ConvWorkload, out_layout: Layout) -> int:
    """Positions per output row when the kernel computes a flattened pointwise conv (one run of
    H * W positions over a plain input, `lower.flattened`) into an output layout of H rows of
    its own (padded for a 3x3 conv that reads it, say): W, each output vector stored into the
    row it starts in and, past that row's end, the next one; 0 when the output's rows are the
    workload's."""
    if workload.flat_stride or workload.out_height != 1 or out_layout.height == 1:
        return 0
    assert out_layout.height * out_layout.width == workload.out_width, (workload, out_layout)
    return out_layout.width


def output_extent(workload: ConvWorkload, out_layout: Layout, vector_width: int) -> int:
    """Floats past an image's start that the kernel may write (zeros past the interior)."""
    if workload.flat_stride:
        last = ((out_layout.channels - 1) * out_layout.channel_stride + out_layout.interior_origin
                + round_up(workload.tile_width, vector_width))
        return max(out_layout.image_stride, last)
    if tails_into_padding(workload, out_layout, vector_width):
        return out_layout.image_stride + out_layout.pad_left
    return out_layout.image_stride


# A flat run is worth it when it needs at most this share of the vectors that row tiles need
# (a 7 x 7 map on 16 lanes: 4 vectors instead of 7, ResNet-50's last stage).
FLAT_MAX_VECTOR_SHARE = 0.85


def flat_rows(workload: ConvWorkload, in_layout: Layout, out_layout: Layout,
              residual: Layout | None, vector_width: int) -> ConvWorkload | None:
    """`workload` computed as one flat run per output plane, or None when that does not apply.

    For a stride-1 conv whose input, output (and residual) buffers all have rows Wp floats
    apart, output (y, x) and every tap's input are at base + y * Wp + x: the plane is one run
    p = y * Wp + x, 0 <= p < (P - 1) * Wp + Q, with constant tap offsets. Lanes with x >= Q
    are stored as zeros: at padded column pad_left + x they land in the row's right padding or
    the next row's left padding (x < Wp). Lanes past the run's end land in the padding after
    the plane's last row, before the next channel's interior if round_up(run, V) <= the channel
    stride (checked here). The residual is read through the same lane mask."""
    v = vector_width
    if workload.strides != (1, 1) or workload.flat_stride:
        return None
    wp = in_layout.row_stride
    layouts = [in_layout, out_layout] + ([residual] if residual is not None else [])
    if any(lay.phases != 1 or lay.shifts != 1 or lay.row_stride != wp for lay in layouts):
        return None
    flat = replace(workload, flat_stride=wp)
    if round_up(flat.tile_width, v) > out_layout.channel_stride:
        return None
    return flat


def flat_if_it_pays(workload: ConvWorkload, in_layout: Layout, out_layout: Layout,
                    residual: Layout | None, vector_width: int) -> ConvWorkload | None:
    """The flat run of `workload` when it applies and saves vectors, else None."""
    run = flat_rows(workload, in_layout, out_layout, residual, vector_width)
    return run if run is not None and flat_pays(run, vector_width) else None


def flat_pays(flat: ConvWorkload, vector_width: int) -> bool:
    """Does the flat run need clearly fewer vectors than tiling the output's rows?"""
    v = vector_width
    rows_vectors = flat.out_height * -(-flat.out_width // v)
    return -(-flat.tile_width // v) <= FLAT_MAX_VECTOR_SHARE * rows_vectors


def origin(workload: ConvWorkload, layout: Layout) -> int:
    """Offset of the conv's padded (0, 0) in a layout whose pads may exceed the conv's."""
    top, left = workload.pads[0], workload.pads[1]
    # left padding of its own, or (rows sharing their side padding) the previous row's right
    # padding, with a row above the first (lower.shared_side_pads)
    shared = (layout.pad_top > top and layout.pads[3] >= left - layout.pad_left
              and layout.phases == 1 and layout.shifts == 1)
    assert layout.pad_top >= top and (layout.pad_left >= left or shared), (layout, workload)
    if layout.phases > 1 or layout.shifts > 1:
        assert (layout.pad_top, layout.pad_left) == (top, left), "packed input must be exact"
        return 0
    return (layout.pad_top - top) * layout.row_stride + (layout.pad_left - left)


def packed_input(workload: ConvWorkload, plan: DirectConvPlan, vector_width: int) -> Layout | None:
    """The private copy of its input a kernel packs and reads (a strided conv's phase-split
    planes; aligned copies one per column shift), or None: it reads the producer's layout."""
    if workload.strides[1] != 1 or plan.aligned_copies:
        return workload.input_layout(vector_width, shifted=plan.aligned_copies)
    return None


def frame_lanes(workload: ConvWorkload, plan: DirectConvPlan) -> int:
    """Spare lanes of a tile's rows past the output width (a flat run: past the run), where a
    shifted frame may put sums; 0 when tiles do not hold rows whole (or the plan is no table)."""
    if plan.form != "table" or tiles(workload, plan)[1] != 1:
        return 0
    return min(plan.vector_width - 1, plan.vectors_per_row * plan.vector_width - workload.tile_width)


def entry_frames(workload: ConvWorkload, layout: Layout, plan: DirectConvPlan,
                 offsets: np.ndarray) -> np.ndarray:
    """The frame of each entry's input offset under shifted sums: how far its load lies past
    a vector boundary (from the image's start; every tile and row of a tile starts as far
    past one, `shifted_sums_misfit`), capped at `frame_lanes`."""
    lanes = frame_lanes(workload, plan)
    misaligned = (origin(workload, layout) + offsets) % plan.vector_width
    return np.minimum(misaligned, lanes)


def shifted_sums_misfit(workload: ConvWorkload, layout: Layout, plan: DirectConvPlan) -> str | None:
    """Why `plan` cannot take shifted sums on this layer's input, or None when it can.

    A table entry whose input lies f lanes past a vector boundary adds w * in[... + x + f]
    into output position x. With shifted sums it loads the aligned vector f lanes before that
    instead (lane l = x + f) into sums kept in a frame f lanes left of the output's; the kernel
    visits the entries frame by frame, largest first, rotating every accumulator row left by
    the difference between two frames (and by the last frame at the end), lanes entering from
    the row's next vector. So a tile must hold its rows whole, and frames reach at most the
    spare lanes past the row's end (`frame_lanes`): an entry further past a boundary takes
    the largest frame and a load that much misaligned. Rows starting on vectors (or one tile
    row) keep an entry's misalignment the same in every tile."""
    if plan.form != "table" or layout.shifts > 1:
        return "shifted sums need the table form on unshifted input"
    if tiles(workload, plan)[1] != 1:
        return "a tile must hold whole rows (vectors_per_row covering the output width)"
    if frame_lanes(workload, plan) == 0:
        return "the tile's rows have no lanes to spare past the output width"
    row_step = workload.strides[0] * layout.row_stride
    if row_step % plan.vector_width and (plan.rows_per_tile > 1 or workload.tile_rows > 1):
        return "tile rows do not start on vectors: an entry's misalignment varies by row"
    return None


# Phase planes are worth it when the flat run over them needs at most this share of the vectors
# that row tiles need. AMD Zen 4, AVX-512: CaffeNet conv1 (55 x 55 output, 11x11 s4) 196
# vectors against 220 (0.89), its kernel 1.08-1.12x faster alone (`tune.measure`), 1.03-1.05x
# with its repack in the network; ResNet-50 layer4.0.conv2 (7 x 7, 3x3 s2) 4 against 7, 2x
# alone at 10 % density, 1.6x in the network. Where the share is 1 (aligned 14 x 14 and 28 x
# 28 outputs), in-network A/B with the threshold at 1.0: ResNet-50 layer3.0.conv2 1.11x,
# layer2.0.conv2 0.77x (its flat run of 56 vectors tiles as 3 x 21 = 63): not taken.
PLANES_MAX_VECTOR_SHARE = 0.9


def plane_conv(workload: ConvWorkload, row_stride: int) -> tuple[PhasePlanes, ConvWorkload] | None:
    """A conv with strides (S, S), S > 1, as a stride-1 conv over its input's S x S phase planes
    (layout.PhasePlanes) whose rows are `row_stride` floats apart: input channel c's plane
    (r % S, s % S) holds the taps (r, s), at tap (r // S, s // S) of a ceil(K / S) kernel. None
    when that does not apply (unequal strides, dilations, 1x1 kernels: `subsampled` in lower.py
    takes those) or the rows are too short for the planes."""
    (sh, sw), (kh, kw) = workload.strides, workload.kernel
    if sh != sw or sh == 1 or workload.dilations != (1, 1) or workload.kernel == (1, 1):
        return None
    s = sh
    kp = (-(-kh // s), -(-kw // s))
    oh, ow = workload.out_height, workload.out_width
    top, left = workload.pads[0], workload.pads[1]
    if row_stride < plane_row_floats(workload):
        return None
    rows = max(oh + kp[0] - 1, -(-(workload.height + top) // s))
    channels = workload.in_channels * s * s
    layout = Layout(channels, oh + kp[0] - 1, ow + kp[1] - 1, rows=rows, phase_width=row_stride)
    planes = PhasePlanes(workload.in_channels, workload.height, workload.width, top, left, s, layout)
    conv = ConvWorkload(channels, oh + kp[0] - 1, ow + kp[1] - 1, workload.out_channels, kp,
                        group=workload.group)
    assert (conv.out_height, conv.out_width) == (oh, ow), (workload, conv)
    return planes, conv


def plane_row_floats(workload: ConvWorkload) -> int:
    """The shortest plane row of a strided conv's phase planes: the plane conv's input width,
    and room for every source column."""
    s, kw = workload.strides[1], workload.kernel[1]
    return max(workload.out_width + -(-kw // s) - 1, -(-(workload.width + workload.pads[1]) // s))


def plane_weights(weight: np.ndarray, stride: int) -> np.ndarray:
    """Weights [M, C/G, R, S] of a stride-S conv as those of its plane conv [M, C/G * S*S,
    ceil(R/S), ceil(S/S)]: plane (c * S + r % S) * S + s % S, tap (r // S, s // S)."""
    m, cg, kh, kw = weight.shape
    s = stride
    out = np.zeros((m, cg, s, s, -(-kh // s), -(-kw // s)), np.float32)
    for rp in range(s):
        for cp in range(s):
            taps = weight[:, :, rp::s, cp::s]
            out[:, :, rp, cp, :taps.shape[2], :taps.shape[3]] = taps
    return out.reshape(m, cg * s * s, out.shape[4], out.shape[5])


def planes_if_they_pay(workload: ConvWorkload, out_layout: Layout, residual: Layout | None,
                       vector_width: int) -> tuple[PhasePlanes, ConvWorkload] | None:
    """(planes, the flat run over them) for a strided conv whose output rows are far enough
    apart to run flat over its phase planes, when that needs clearly fewer vectors than tiling
    the output's rows; else None."""
    if out_layout.phases != 1 or out_layout.shifts != 1:
        return None
    planar = plane_conv(workload, out_layout.row_stride)
    if planar is None:
        return None
    planes, conv = planar
    run = flat_rows(conv, planes.layout, out_layout, residual, vector_width)
    if run is None:
        return None
    v = vector_width
    rows_vectors = workload.out_height * -(-workload.out_width // v)
    if -(-run.tile_width // v) > PLANES_MAX_VECTOR_SHARE * rows_vectors:
        return None
    return planes, run


def plane_output_pads(workload: ConvWorkload, pads: tuple[int, ...], vector_width: int
                      ) -> tuple[int, int, int, int] | None:
    """`pads` around a strided conv's output grown (right, then bottom) just enough for a flat
    run over its phase planes: rows as long as a plane row, and room after the last row for the
    run's last vector. None when the conv has no plane form."""
    width = plane_row_floats(workload)
    if plane_conv(workload, width) is None:
        return None
    top, left, bottom, right = pads
    oh, ow = workload.out_height, workload.out_width
    right = max(right, width - ow - left)
    stride = ow + left + right
    run = (oh - 1) * stride + ow
    while (oh + top + bottom) * stride < round_up(run, vector_width):
        bottom += 1
    return top, left, bottom, right
