"""Pruned fully connected layers, row by row with gathers: the workload, the plan, the tables.

Y[N][M] = act(X[N][C] @ W^T + bias) with W mostly zeros. Output row m's nonzeros (column c_j,
weight w_j) are stored in chunks of V (the vector width), the last chunk of a row padded with
(column 0, weight 0.0). Per chunk, its V columns come first (uint16, or uint32 for wide layers),
then its V weights (float32), so the kernel streams the whole table once per pass, front to
back. `rows[m]` is the first chunk of row m (`rows[M]` is the chunk count); a plan with column
blocks stores each block's rows in turn, columns counted from the block's first. The kernel gathers
x[n][c_j] for a chunk's columns and multiplies by its weights; a padding lane's weight is 0.0,
and the kernel leaves such lanes out so a NaN or Inf in x[n][0] never leaks into other rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from ..targets import Target
from .layout import round_up
from .select import apply_override


@dataclass(frozen=True)
class SparseFcWorkload:
    in_features: int  # C
    out_features: int  # M


@dataclass(frozen=True)
class SparseFcPlan:
    """Blocking of one pruned-FC kernel: plain data a tuner can vary."""

    vector_width: int = 8  # V: nonzeros per chunk, lanes per gather
    index_bits: int = 16  # column index width in the table (16 needs C <= 65536)
    batch_block: int = 1  # rows of X sharing one pass over the table (then halves, down to 1)
    accumulators: int = 2  # per row of X: chunks alternate between them (FMA latency)
    # software prefetch distance in the table (into L2, see the template); 0: none. AMD Zen 4,
    # CaffeNet's fc6 / fc7 / fc8 at batch 1 (in-process, interleaved): 2048 bytes into L1 2.1-2.3
    # / 1.1 / 0.29-0.31 ms, 8192 into L2 1.64-1.76 / 0.77 / 0.28 ms (fc6 from DRAM 10 -> 13-14
    # GB/s); 8192 into L1 no better than 2048, 4096 into L2 1.77 ms on fc6
    prefetch_bytes: int = 8192
    scalar_loads: bool = False  # x[n][c_j] by V scalar loads, not one vector gather
    # input features per column block (0: one block of all): the kernel sums each output over
    # the blocks in turn, so the slice of X a block gathers from stays in L1
    column_block: int = 0
    codegen_opt: int = 2

    def __post_init__(self) -> None:
        checks = [
            (self.vector_width in (4, 8, 16), "vector_width must be 4, 8 or 16"),
            (self.index_bits in (16, 32), "index_bits must be 16 or 32"),
            (self.batch_block in (1, 2, 4, 8), "batch_block must be 1, 2, 4 or 8"),
            (1 <= self.accumulators <= 4, "accumulators must be 1..4"),
            (self.prefetch_bytes >= 0, "prefetch_bytes must be >= 0"),
            (self.column_block >= 0, "column_block must be >= 0"),
            (self.codegen_opt in (0, 1, 2, 3), "codegen_opt must be 0..3"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (plan {self})")

    def variant(self) -> str:
        """Names the variant in kernel symbols, e.g. rows_v8_i16_b1_a2_p8192."""
        return (f"rows_v{self.vector_width}_i{self.index_bits}_b{self.batch_block}"
                f"_a{self.accumulators}_p{self.prefetch_bytes}{'_s' if self.scalar_loads else ''}"
                f"{f'_k{self.column_block}' if self.column_block else ''}")

    def batch_blocks(self) -> list[int]:
        """Block sizes the kernel runs, largest first: rows left over from whole blocks of
        `batch_block` go in halves (batch 3 at 4: a block of 2, then 1)."""
        return [self.batch_block >> i for i in range(self.batch_block.bit_length())]

    def chunk_bytes(self) -> int:
        return self.vector_width * (self.index_bits // 8 + 4)

    def column_blocks(self, in_features: int) -> int:
        """Column blocks of an input of `in_features` (at least one)."""
        if not self.column_block or self.column_block >= in_features:
            return 1
        return -(-in_features // self.column_block)

    def block_width(self, in_features: int) -> int:
        """Input features per column block (the last block may be narrower)."""
        return in_features if self.column_blocks(in_features) == 1 else self.column_block


# Rows of X a pass may gather from: beyond L1 (48 KB on recent Intel cores) every gather lane
# misses it, and fc6 (9216 inputs) at batch 8 ran 2.5x slower in blocks of 2 than row by row.
X_BLOCK_BYTES = 32 * 1024
# A row of X wider than that is gathered from in column blocks of at most this many bytes, the
# fewest that fit (CaffeNet's fc6, 9216 inputs: 3 of 3072): the slice stays in L1 beside the
# table streaming through it. AMD Zen 4, fc6 at batch 1 with its table from DRAM (interleaved
# calls, 96 MB streamed between them): 1.59 ms in one block, 1.05-1.09 ms in blocks of 2304-4608
# with scalar loads (1.45 ms with gathers); CaffeNet 1.08-1.10x (paired in-process, fc6
# 1.53-1.62 -> 1.19-1.22 ms). Not measured on the Xeon.
X_SLICE_BYTES = 16 * 1024


def choose_plan(workload: SparseFcWorkload, target: Target, override: dict | None = None,
                layer: str = "") -> SparseFcPlan:
    """The default plan on `target`, with `override` applied. Gathers of 8 lanes: on an Emerald
    Rapids core 16-lane gathers moved fewer lanes per second (fc6 at batch 1: 1.6 ms against
    1.15 ms). As many rows of X per pass as stay in L1 together; two accumulators per row only
    in blocks of 1 or 2 rows (4+ rows are 4+ independent FMA chains already, and 2 x 8 would
    spill on AVX2's 16 registers). A row of X wider than L1 is taken in column blocks
    (X_SLICE_BYTES), so the slice a pass reads stays in L1 too. From that slice V scalar loads
    beat a gather on every core measured: AMD Zen 4, batch 1, interleaved medians: 4096 x 1000
    at 26 % 0.71 -> 0.44 ms, 4096 x 4096 at 16 % 1.48 -> 1.21 ms, 1024 x 1024 at 10 % 0.096 ->
    0.076 ms; an Intel Ice Lake Xeon (slow gathers: Downfall's microcode fix, presumably),
    CaffeNet's fc6 / fc7 / fc8 at batch 1 (paired in-process A/B): 4.43 / 2.90 / 1.16 ms by
    gathers, 2.13 / 1.38 / 0.56 by scalar loads, the network 1.47x. Past L1 the gather's lanes
    wait on L2 together, the scalar loads one by one (Zen 4, 9216 x 4096 in one block: 1.91-2.07
    ms by scalar loads, 1.57-1.66 by gathers), which the column blocks avoid."""
    c = workload.in_features
    block = next(b for b in (8, 4, 2, 1) if b == 1 or b * c * 4 <= X_BLOCK_BYTES)
    width = column_block_width(c) if block * c * 4 > X_BLOCK_BYTES else 0
    plan = SparseFcPlan(vector_width=min(8, target.vector_width),
                        index_bits=index_bits_for(width or c), batch_block=block,
                        accumulators=2 if block <= 2 else 1,
                        scalar_loads=True, column_block=width)
    plan = apply_override(plan, override, layer)
    if "index_bits" not in (override or {}):  # as narrow as the overridden blocks allow
        plan = replace(plan, index_bits=index_bits_for(plan.block_width(c)))
    return plan


def column_block_width(in_features: int, slice_bytes: int = X_SLICE_BYTES) -> int:
    """Input features per column block: the fewest equal blocks (whole 64-byte lines) whose
    slice of a row of X fits `slice_bytes`; 0 when the whole row does."""
    if in_features * 4 <= slice_bytes:
        return 0
    blocks = -(-in_features * 4 // slice_bytes)
    return round_up(-(-in_features // blocks), 16)


def index_bits_for(in_features: int) -> int:
    """The narrowest column index that holds every column of an input of `in_features`."""
    return 16 if in_features <= 1 << 16 else 32


@dataclass(frozen=True)
class SparseFcTables:
    # int32 [blocks * M + 1]: first chunk of (column block b, row m) at b * M + m, chunks
    # ordered by block, then row
    rows: np.ndarray
    table: np.ndarray  # uint8 [chunks * chunk_bytes]: per chunk V columns, then V weights
    nonzeros: int
    digest: str  # sha256 of rows and table (hex)

    @property
    def chunks(self) -> int:
        return int(self.rows[-1])


def build_tables(weight_mc: np.ndarray, plan: SparseFcPlan) -> SparseFcTables:
    """The packed chunk table and row pointers of W[M][C] (little-endian, as the kernel reads),
    column block by column block; a chunk's columns count from its block's first.
    A NaN weight counts as a nonzero (it must reach the output, as in the dense product)."""
    m, c = weight_mc.shape
    width = plan.block_width(c)
    if plan.index_bits == 16 and width > 1 << 16:
        raise ValueError(f"index_bits=16 cannot address {width} input features (at most 65536)")
    # block by block: a block's temporaries (its nonzeros' rows and columns) are its share only
    starts, packs, nonzeros = [np.zeros(1, np.int64)], [], 0
    for c0 in range(0, c, width):
        block_starts, packed, count = _pack_rows(weight_mc[:, c0:c0 + width], plan)
        starts.append(block_starts[1:] + starts[-1][-1])
        packs.append(packed)
        nonzeros += count
    rows = np.concatenate(starts)
    if rows[-1] >= 1 << 31:
        raise ValueError(f"{rows[-1]} chunks overflow the kernel's 32-bit row pointers")
    table = np.concatenate(packs).view(np.uint8).reshape(-1)
    rows32 = rows.astype("<i4")
    h = hashlib.sha256(rows32.tobytes())
    h.update(table.tobytes())
    return SparseFcTables(rows32, table, nonzeros, h.hexdigest())


def _pack_rows(weight_mc: np.ndarray, plan: SparseFcPlan) -> tuple[np.ndarray, np.ndarray, int]:
    """(first chunk of each row, with the chunk count last; the chunks; the nonzeros) of
    W[M][C'] (one column block): each row's nonzeros in chunks of V, the last padded with
    (column 0, weight 0.0)."""
    m = weight_mc.shape[0]
    v = plan.vector_width
    rows_nz, cols_nz = np.nonzero(weight_mc != 0)  # row-major: sorted by row, then column
    counts = np.bincount(rows_nz, minlength=m)
    rows = np.concatenate([[0], np.cumsum(-(-counts // v))]).astype(np.int64)
    first_nz = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = rows[rows_nz] * v + (np.arange(len(rows_nz)) - first_nz[rows_nz])
    chunk = np.dtype([("cols", f"<u{plan.index_bits // 8}", (v,)), ("weights", "<f4", (v,))])
    cols = np.zeros(int(rows[-1]) * v, np.int64)
    weights = np.zeros(int(rows[-1]) * v, np.float32)
    cols[slot] = cols_nz
    weights[slot] = weight_mc[rows_nz, cols_nz]
    packed = np.empty(int(rows[-1]), chunk)
    packed["cols"] = cols.reshape(-1, v)
    packed["weights"] = weights.reshape(-1, v)
    return rows, packed, len(rows_nz)


def reference(x: np.ndarray, weight_mc: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """X @ W^T + bias (float64) with pruned weights absent: a NaN or Inf in x[n][c] reaches
    y[n][m] only when W[m][c] is nonzero (a dense product would spread it through the zeros)."""
    x64 = np.asarray(x, np.float64)
    w64 = np.asarray(weight_mc, np.float64)
    finite = np.isfinite(x64)
    y = np.where(finite, x64, 0.0) @ w64.T + np.asarray(bias, np.float64)
    for n in np.nonzero(~finite.all(axis=1))[0]:
        bad = ~finite[n]
        w_bad = w64[:, bad]
        with np.errstate(invalid="ignore"):  # Inf * 0 where the weight is pruned: dropped
            terms = np.where(w_bad != 0, x64[n, bad][None, :] * w_bad, 0.0)
        y[n] = y[n] + terms.sum(axis=1)
    return y
