"""The strided 2-D copy kernel against numpy, on guarded buffers with a sentinel elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen.strided_copy import StridedView, kernel_symbol, render_strided_copy
from sparsejit.runtime.steps import ConvFn

from .conv_harness import SENTINEL, GuardedBuffer


@pytest.mark.parametrize("rows, cols, transpose, rows_done", [
    (5, 3, True, (0, 5)), (17, 8, True, (3, 11)), (1, 1, False, (0, 1)), (9, 4, False, (2, 2))])
def test_copy_between_views(rows, cols, transpose, rows_done):
    tgt = targets.get("host")
    src = StridedView(2, 1, rows) if transpose else StridedView(1, cols + 1, 1)  # X[N][C] read as [C][N]
    dst = StridedView(3, 2 * cols + 5, 1)
    ir = render_strided_copy("t", src, dst, cols, tgt.name)
    lib = llvm.CodeLibrary(tgt)
    lib.add_object(llvm.compile_object(ir, tgt)[0])
    fn = ConvFn(lib.address(kernel_symbol("t")))
    n_src = src.origin + (rows - 1) * src.row + (cols - 1) * src.col + 1
    n_dst = dst.origin + (rows - 1) * dst.row + (cols - 1) * dst.col + 1
    a, b = GuardedBuffer(n_src), GuardedBuffer(n_dst)
    a.array[:] = np.random.default_rng(rows).standard_normal(n_src)
    b.array[:] = SENTINEL
    i0, i1 = rows_done
    fn(a.array.ctypes.data, b.array.ctypes.data, None, 0, 1, i0, i1)
    want = np.full(n_dst, SENTINEL, np.float32)
    for i in range(i0, i1):
        for j in range(cols):
            want[dst.origin + i * dst.row + j * dst.col] = a.array[src.origin + i * src.row + j * src.col]
    np.testing.assert_array_equal(b.array, want)


def test_no_columns_is_refused():
    with pytest.raises(ValueError, match="at least one column"):
        render_strided_copy("t", StridedView(0, 1, 1), StridedView(0, 1, 1), 0, "host")
