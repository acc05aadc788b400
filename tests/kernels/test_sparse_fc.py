"""The pruned-FC row kernel (gathers) against the numpy reference, on every target the host runs.

Sweeps densities 0 / one nonzero / 0.05 / 0.26 / 1, input and output widths below, at and above
the chunk width, batch 1, 3 and 8, both index widths, every blocking, column blocks, partial
ranges of rows and outputs, the epilogues, and NaN/Inf inputs. X and Y end exactly at a PROT_NONE page, so a read
past x[n1-1][C-1] or a write past y[n1-1][M-1] faults; untouched outputs must keep a sentinel.
"""

from __future__ import annotations

import ctypes
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen.sparse_fc import kernel_symbol, render_sparse_fc
from sparsejit.kernels.direct_conv import Epilogue
from sparsejit.kernels.layout import round_up
from sparsejit.kernels.sparse_fc import (
    X_SLICE_BYTES,
    SparseFcPlan,
    SparseFcWorkload,
    build_tables,
    choose_plan,
    reference,
)

from ..tolerances import assert_close
from .conv_harness import SENTINEL, GuardedBuffer, runnable_targets

TARGETS = runnable_targets()
# (x, y, unused, n0, n1, m0, m1)
FcFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
EPILOGUES = {
    "none": Epilogue("none"),
    "relu": Epilogue("relu"),
    "leaky_relu": Epilogue("leaky_relu", alpha=0.1),
    "clip": Epilogue("clip", clip_min=-0.5, clip_max=0.75),
}


@dataclass
class FcCase:
    in_features: int
    out_features: int
    batch: int = 1
    density: float | str = 0.26  # or "one": a single nonzero
    activation: str = "relu"
    plan: dict = field(default_factory=dict)  # overrides of the default plan

    def __str__(self) -> str:
        return (f"C{self.in_features}->M{self.out_features} n{self.batch} "
                f"density={self.density} act={self.activation} plan={self.plan}")


def guarded(rows: int, cols: int, fill: float) -> np.ndarray:
    """A rows x cols float32 array whose last element is the last float before a PROT_NONE page."""
    count = rows * cols
    flat = GuardedBuffer(max(16, round_up(count, 16))).array  # whole 64-byte lines: no slack
    arr = flat[flat.size - count:].reshape(rows, cols)
    arr[...] = fill
    return arr


def random_weights(case: FcCase, rng: np.random.Generator) -> np.ndarray:
    shape = (case.out_features, case.in_features)
    w = rng.standard_normal(shape).astype(np.float32)
    if case.density == "one":
        keep = np.zeros(w.size, bool)
        keep[rng.integers(w.size)] = True
        return (w.ravel() * keep).reshape(shape)
    return w * (rng.random(shape) < float(case.density))


def activate(y: np.ndarray, epilogue: Epilogue) -> np.ndarray:
    if epilogue.activation == "relu":
        return np.maximum(y, 0)
    if epilogue.activation == "leaky_relu":
        return np.where(y < 0, y * np.float32(epilogue.alpha), y)
    if epilogue.activation == "clip":
        return np.minimum(np.maximum(y, np.float32(epilogue.clip_min)), np.float32(epilogue.clip_max))
    return y


class Kernel:
    """One case's kernel, compiled and loaded for a target."""

    def __init__(self, case: FcCase, weight: np.ndarray, bias: np.ndarray, target_name: str) -> None:
        tgt = targets.get(target_name)
        wl = SparseFcWorkload(case.in_features, case.out_features)
        self.plan = choose_plan(wl, tgt, case.plan)
        self.epilogue = EPILOGUES[case.activation]
        tables = build_tables(weight, self.plan)
        ir = render_sparse_fc("case", wl, self.plan, tables, bias, self.epilogue, tgt.name,
                              tgt.features)
        obj, _ = llvm.compile_object(ir, tgt, self.plan.codegen_opt)
        self._lib = llvm.CodeLibrary(tgt)
        self._lib.add_object(obj)
        self._lib.finalize()
        self.fn = FcFn(self._lib.address(kernel_symbol("case", self.plan)))

    def __call__(self, x: np.ndarray, y: np.ndarray, n0: int, n1: int, m0: int, m1: int) -> None:
        self.fn(x.ctypes.data, y.ctypes.data, None, n0, n1, m0, m1)


def check_ranges(case: FcCase, target_name: str, seed: int, ranges=None,
                 x_values: np.ndarray | None = None, weight: np.ndarray | None = None) -> SparseFcPlan:
    """Run rows [n0, n1) x outputs [m0, m1) per range (default: everything) against the
    reference; X holds only rows [0, n1) (rows before n0 are NaN: reading them shows), Y keeps
    the sentinel outside the range. Fails with the seed in the message."""
    rng = np.random.default_rng(seed)
    n, m, c = case.batch, case.out_features, case.in_features
    w = random_weights(case, rng) if weight is None else weight
    bias = rng.standard_normal(m).astype(np.float32)
    x_all = rng.standard_normal((n, c)).astype(np.float32) if x_values is None else x_values
    kernel = Kernel(case, w, bias, target_name)
    expected = activate(reference(x_all, w, bias), kernel.epilogue)
    for n0, n1, m0, m1 in ranges or [(0, n, 0, m)]:
        what = (f"{case} rows [{n0},{n1}) outputs [{m0},{m1}) on {target_name} "
                f"[{kernel.plan.variant()}] seed={seed}")
        x = guarded(n1, c, np.nan)
        x[n0:] = x_all[n0:n1]
        y = guarded(n1, m, SENTINEL)
        kernel(x, y, n0, n1, m0, m1)
        assert_close(y[n0:n1, m0:m1], expected[n0:n1, m0:m1], what=what)
        untouched = y.copy()
        untouched[n0:n1, m0:m1] = SENTINEL
        assert np.all(untouched == SENTINEL), f"kernel wrote outside its range: {what}"
    return kernel.plan


def seed_of(*parts: object) -> int:
    return zlib.crc32(repr(parts).encode()) % 10_000


DENSITIES = [0.0, "one", 0.05, 0.26, 1.0]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("density", DENSITIES, ids=str)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_densities(density, batch, target):
    case = FcCase(300, 33, batch, density)
    check_ranges(case, target, seed_of(case, target))


SHAPES = [(1, 1), (1, 5), (17, 1), (17, 5), (17, 33), (300, 5), (300, 33), (33, 17)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shapes(shape, target):
    """Inputs and outputs below, at and above the chunk width (rows with a partial last chunk)."""
    for batch in (1, 3):
        case = FcCase(*shape, batch=batch, density=0.4)
        check_ranges(case, target, seed_of(case, target))


BLOCKINGS = [
    dict(batch_block=1, accumulators=1),
    dict(batch_block=2, accumulators=2),
    dict(batch_block=4, accumulators=3),
    dict(batch_block=8, accumulators=1, prefetch_bytes=0),
    dict(batch_block=8, accumulators=4, index_bits=32),
    dict(vector_width=4, batch_block=4),
    dict(vector_width=16, batch_block=2, prefetch_bytes=64),
    dict(index_bits=32, vector_width=16, batch_block=1, codegen_opt=0),
    dict(scalar_loads=True, batch_block=1, accumulators=2),
    dict(scalar_loads=True, batch_block=4, index_bits=32, vector_width=4),
    dict(scalar_loads=True, batch_block=2, vector_width=16),
    dict(scalar_loads=False, batch_block=2, accumulators=2),
    dict(column_block=16, batch_block=1, accumulators=2),
    dict(column_block=32, batch_block=2, scalar_loads=True),
    dict(column_block=48, batch_block=4, index_bits=32, vector_width=4),
    dict(column_block=64, batch_block=8, vector_width=16),  # 70 columns: blocks of 64 and 6
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("blocking", BLOCKINGS, ids=str)
@pytest.mark.parametrize("batch", [3, 8])
def test_blockings(blocking, batch, target):
    """Every block size, the halves a batch that is not a whole block leaves, both index
    widths and chunk widths other than the target's (scalarised where it has no such gather),
    column blocks (the last one narrower)."""
    case = FcCase(70, 19, batch, 0.3, plan=blocking)
    plan = check_ranges(case, target, seed_of(case, target))
    assert plan.batch_block == blocking["batch_block"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("index_bits", [16, 32])
def test_index_bits(index_bits, target):
    case = FcCase(300, 33, 3, 0.26, plan={"index_bits": index_bits})
    assert check_ranges(case, target, seed_of(case, target)).index_bits == index_bits


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("column_block", [0, 16])
def test_partial_ranges(column_block, target):
    """Sub-ranges of rows and outputs (as threads split the work), empty ones included."""
    case = FcCase(45, 21, 8, 0.3, plan={"batch_block": 4, "column_block": column_block})
    ranges = [(0, 8, 0, 21), (2, 7, 3, 4), (1, 8, 5, 21), (5, 6, 0, 1), (3, 3, 0, 21),
              (0, 8, 7, 7), (4, 8, 20, 21)]
    check_ranges(case, target, seed_of(case, target), ranges)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("density", DENSITIES, ids=str)
def test_column_blocks(density, target):
    """Rows summed over column blocks: blocks where a row has no nonzero, every block empty,
    a last block of one column, wide inputs (the default blocks of CaffeNet's fc6)."""
    for c, width, batch in [(97, 32, 1), (97, 96, 3), (40, 8, 8), (9216, 0, 1)]:
        case = FcCase(c, 23, batch, density, plan={"column_block": width} if width else {})
        plan = check_ranges(case, target, seed_of(case, target))
        assert plan.column_blocks(c) == (-(-c // width) if width else 3)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("activation", list(EPILOGUES))
def test_epilogues(activation, target):
    case = FcCase(40, 13, 3, 0.5, activation=activation)
    check_ranges(case, target, seed_of(case, target))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("activation", ["relu", "clip"])
def test_nan_and_inf_reach_only_nonzero_columns(activation, target):
    """x[n][0] is NaN (padding lanes point at column 0) and other columns NaN or +-Inf: only
    outputs whose row has a nonzero weight in such a column may become NaN or Inf."""
    rng = np.random.default_rng(5)
    c, m, n = 37, 11, 3
    case = FcCase(c, m, n, 0.2, activation=activation)
    w = random_weights(case, rng)
    w[:, 0] = 0
    w[3, 0] = 1.5  # one row uses column 0
    w[:, 9] = 0
    w[[1, 4], 9] = [2.0, -0.5]
    w[:, 20] = 0
    w[6, 20] = 1.0
    x = rng.standard_normal((n, c)).astype(np.float32)
    x[:, 0] = np.nan
    x[1, 9] = np.inf
    x[2, 20] = -np.inf
    check_ranges(case, target, 17, x_values=x, weight=w)
    for scalar_loads in (False, True):
        case = FcCase(c, m, n, 0.2, activation=activation, plan={"scalar_loads": scalar_loads})
        check_ranges(case, target, 17, x_values=x, weight=w)
        # blocks of 10 columns: padding lanes point at each block's first column (0, 10, 20)
        x_blocks = x.copy()
        x_blocks[:, 10] = np.nan
        case = FcCase(c, m, n, 0.2, activation=activation,
                      plan={"scalar_loads": scalar_loads, "column_block": 10})
        check_ranges(case, target, 17, x_values=x_blocks, weight=w)


def test_gathers_in_assembly():
    """A plan with gathers (not the default's scalar loads): LLVM 22 emits hardware gathers on
    the AVX-512 and AVX2 targets (given the features, which carry +fast-gather for Broadwell)
    and none on SSE4.2, which has no gather."""
    w = random_weights(FcCase(64, 8, density=0.3), np.random.default_rng(0))
    for name, gather in [("avx512", "vgatherdps"), ("avx2", "vgatherdps"), ("sse", None)]:
        tgt = targets.get(name)
        wl = SparseFcWorkload(64, 8)
        plan = choose_plan(wl, tgt, {"scalar_loads": False})
        ir = render_sparse_fc("asm", wl, plan, build_tables(w, plan), np.zeros(8, np.float32),
                              Epilogue("relu"), tgt.name, tgt.features)
        asm = llvm.assembly(ir, tgt, plan.codegen_opt)
        if gather:
            assert gather in asm, f"{name}: no {gather} in the kernel"
        else:
            assert "gather" not in asm, f"{name}: a gather instruction on a target without one"


def test_tables_layout():
    """Chunks of V (columns, then weights), padded with (0, 0.0); row pointers per row."""
    w = np.zeros((3, 10), np.float32)
    w[0, [1, 4, 9]] = [1, 2, 3]
    w[2, 2:8] = np.arange(1, 7)
    plan = SparseFcPlan(vector_width=4, index_bits=16)
    t = build_tables(w, plan)
    assert t.rows.tolist() == [0, 1, 1, 3] and t.nonzeros == 9 and t.chunks == 3
    chunks = t.table.view(np.dtype([("c", "<u2", (4,)), ("w", "<f4", (4,))]))
    assert chunks["c"].tolist() == [[1, 4, 9, 0], [2, 3, 4, 5], [6, 7, 0, 0]]
    assert chunks["w"].tolist() == [[1, 2, 3, 0], [1, 2, 3, 4], [5, 6, 0, 0]]
    wide = build_tables(w, SparseFcPlan(vector_width=4, index_bits=32))
    assert wide.table.size == 3 * 32
    # column blocks of 4: chunks ordered by block, then row; columns counted from the block's
    blocked = build_tables(w, SparseFcPlan(vector_width=4, index_bits=16, column_block=4))
    # cells (block, row): (0,0) [1], (0,2) [2,3], (1,0) [4], (1,2) [4..7], (2,0) [9]
    assert blocked.rows.tolist() == [0, 1, 1, 2, 3, 3, 4, 5, 5, 5]
    chunks = blocked.table.view(np.dtype([("c", "<u2", (4,)), ("w", "<f4", (4,))]))
    assert chunks["c"].tolist() == [[1, 0, 0, 0], [2, 3, 0, 0], [0, 0, 0, 0], [0, 1, 2, 3],
                                    [1, 0, 0, 0]]
    assert chunks["w"].tolist() == [[1, 0, 0, 0], [1, 2, 0, 0], [2, 0, 0, 0], [3, 4, 5, 6],
                                    [3, 0, 0, 0]]


def test_plan_checks():
    with pytest.raises(ValueError, match="index_bits"):
        SparseFcPlan(index_bits=8)
    with pytest.raises(ValueError, match="batch_block"):
        SparseFcPlan(batch_block=3)
    with pytest.raises(ValueError, match="vector_width"):
        SparseFcPlan(vector_width=2)
    with pytest.raises(ValueError, match="65536"):
        build_tables(np.ones((1, 65537), np.float32), SparseFcPlan(index_bits=16))
    assert build_tables(np.ones((1, 65536), np.float32), SparseFcPlan(index_bits=16)).chunks == 8192
    wide = choose_plan(SparseFcWorkload(70_000, 4), targets.get("avx2"))
    assert wide.index_bits == 16 and wide.batch_block == 1 and wide.column_block == 3904
    one_block = choose_plan(SparseFcWorkload(70_000, 4), targets.get("avx2"), {"column_block": 0})
    assert one_block.index_bits == 32 and one_block.column_blocks(70_000) == 1
    with pytest.raises(ValueError, match="column_block"):
        SparseFcPlan(column_block=-1)


def test_rows_of_x_past_l1_go_in_column_blocks_and_x_is_loaded_by_scalars():
    """A row of X wider than L1 (CaffeNet's fc6, 9216 inputs) is taken in the fewest column
    blocks whose slices fit X_SLICE_BYTES; narrower ones (fc7, fc8) in one. The default plan
    then loads x by scalars (its slice is in L1), on AMD and Intel cores alike."""
    from dataclasses import replace

    zen = replace(targets.get("avx512"), cpu="znver4")
    intel = replace(targets.get("avx512"), cpu="icelake-server")
    for target in (zen, intel, targets.get("avx2")):
        fc6 = choose_plan(SparseFcWorkload(9216, 4096), target)
        assert fc6.column_block == 3072 and fc6.column_blocks(9216) == 3 and fc6.scalar_loads
        assert fc6.column_block * 4 <= X_SLICE_BYTES
        for narrow in (SparseFcWorkload(4096, 4096), SparseFcWorkload(1024, 1000)):
            plan = choose_plan(narrow, target)
            assert plan.scalar_loads and plan.column_blocks(narrow.in_features) == 1
    assert choose_plan(SparseFcWorkload(9216, 4096), targets.get("avx512")).column_block == 3072
