"""The generated Softmax / LogSoftmax kernel against the numpy reference (and float64), on
buffers that end exactly at a guard page, with NaN in the input rows outside the range (a kernel
that read one would show NaN) and a sentinel in the output rows it must not write."""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen.softmax import kernel_symbol, render_softmax
from sparsejit.kernels.reference_nn import _softmax_core
from sparsejit.runtime.steps import ConvFn

from ..test_generated_code import external_declarations
from ..tolerances import ELEMENTWISE_RTOL, assert_close
from .conv_harness import SENTINEL, GuardedBuffer, runnable_targets

TARGETS = runnable_targets()
ROW_LENGTHS = [1, 3, 15, 16, 17, 100, 1000, 1001]


@cache
def kernel(target_name: str, rows_len: int, log: bool) -> tuple[ConvFn, llvm.CodeLibrary]:
    tgt = targets.get(target_name)
    ir = render_softmax("case", rows_len, log, tgt.vector_width, tgt.name)
    obj, _ = llvm.compile_object(ir, tgt, 2)
    lib = llvm.CodeLibrary(tgt)
    lib.add_object(obj)
    lib.finalize()
    return ConvFn(lib.address(kernel_symbol("case", log, tgt.vector_width))), lib


def tight(floats: int) -> np.ndarray:
    """`floats` float32s whose last one is the last byte before an inaccessible page."""
    padded = -(-floats // 16) * 16
    return GuardedBuffer(padded).array[padded - floats:]


def run(x: np.ndarray, target_name: str, log: bool, rows=None, in_place=False) -> np.ndarray:
    """The kernel on rows [r0, r1) of x; checks rows outside the range are neither read nor
    written. Returns the output rows [r0, r1)."""
    r, k = x.shape
    r0, r1 = rows or (0, r)
    fn, _ = kernel(target_name, k, log)
    src = tight(r * k).reshape(r, k)
    src[:] = np.nan
    src[r0:r1] = x[r0:r1]
    if in_place:
        src[:r0], src[r1:] = SENTINEL, SENTINEL
        dst = src
    else:
        dst = tight(r * k).reshape(r, k)
        dst[:] = SENTINEL
    fn(src.ctypes.data, dst.ctypes.data, None, 0, 1, r0, r1)
    untouched = np.concatenate([dst[:r0], dst[r1:]])
    assert np.all(untouched == SENTINEL), f"kernel wrote outside rows [{r0}, {r1}) of {x.shape}"
    return np.array(dst[r0:r1])


def check(x: np.ndarray, target_name: str, log: bool, rows=None, in_place=False, what="") -> np.ndarray:
    r0, r1 = rows or (0, x.shape[0])
    got = run(x, target_name, log, rows, in_place)
    name = "LogSoftmax" if log else "Softmax"
    with np.errstate(invalid="ignore"):  # inf - inf in the reference
        want = _softmax_core(x[r0:r1], 1, log)
    assert_close(got, want,
                 what=f"{name} {x.shape} rows [{r0}, {r1}) in_place={in_place} on {target_name} {what}")
    return got


def exact(x: np.ndarray, log: bool) -> np.ndarray:
    """The reference in float64 after its float32 x - max (whose rounding, up to half an ulp of
    x, is the reference's own): what is left is the error of the kernel's exp, sum and log."""
    t = (x - x.max(axis=1, keepdims=True)).astype(np.float64)
    s = np.exp(t).sum(axis=1, keepdims=True)
    return t - np.log(s) if log else np.exp(t) / s


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "logsoftmax"])
@pytest.mark.parametrize("k", ROW_LENGTHS)
def test_softmax_matches_the_reference(k, log, target_name):
    seed = 100 + k
    rng = np.random.default_rng(seed)
    for r in (1, 3, 8):
        x = (rng.standard_normal((r, k)) * 4).astype(np.float32)
        got = check(x, target_name, log, what=f"seed={seed}")
        # and close to exact: the kernel's exp and log are within about an ulp
        assert_close(got, exact(x, log), what=f"vs float64 {x.shape} on {target_name} seed={seed}",
                     rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_RTOL if log else 1e-30)


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "logsoftmax"])
@pytest.mark.parametrize("k", [3, 17, 1000])
def test_a_range_of_rows_and_in_place(k, log, target_name):
    x = np.random.default_rng(k).standard_normal((8, k)).astype(np.float32)
    for rows in [(0, 8), (2, 5), (7, 8), (0, 1)]:
        check(x, target_name, log, rows)
        check(x, target_name, log, rows, in_place=True)
    assert run(x, target_name, log, (4, 4)).shape == (0, k)  # an empty range touches nothing


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "logsoftmax"])
@pytest.mark.parametrize("k", [1, 5, 16, 1001])
def test_nan_and_infinities_give_the_reference_result(k, log, target_name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((7, k)).astype(np.float32)
    last = k - 1
    x[0, last // 2] = np.nan  # a NaN: the row is NaN
    x[1, last] = np.inf  # +inf: inf - inf is NaN, the row is NaN
    x[2, 0] = -np.inf  # -inf: exp gives 0 (LogSoftmax -inf), unless it is the only element
    x[3, :] = -np.inf  # all -inf: -inf + inf is NaN
    x[4, :] = np.nan
    x[5, ::2] = -np.inf
    x[6, 0], x[6, last] = np.inf, -np.inf
    check(x, target_name, log)
    check(x, target_name, log, in_place=True)


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "logsoftmax"])
@pytest.mark.parametrize("scale", [80.0, 1e4, 1e30])
def test_large_magnitudes(scale, log, target_name):
    rng = np.random.default_rng(3)
    x = (rng.uniform(-1, 1, (3, 1000)) * scale).astype(np.float32)
    x[2] = np.float32(scale)  # equal elements
    x[1, 5] = np.float32(scale) + 1e-3 * scale  # one dominant element
    check(x, target_name, log, what=f"scale={scale}")


@pytest.mark.parametrize("target_name", TARGETS)
def test_exp_over_its_range(target_name):
    """Rows [0, t] for t from 0 down to -120: exp(t) / (1 + exp(t)) lane by lane, every
    reduction step and the cut to 0 below exp(-87.3) (numpy's result there is denormal)."""
    t = np.linspace(-120, 0, 12001, dtype=np.float32)
    x = np.stack([np.zeros_like(t), t], axis=1)
    got = run(x, target_name, False)
    want = exact(x, False)
    assert_close(got, want, what=f"exp on {target_name}", rtol=ELEMENTWISE_RTOL, atol=1e-37)
    assert np.all(got[t < -87.34, 1] == 0) and np.all(got[:, 0] >= 0.5)


def calls(asm: str) -> list[str]:
    """Calls, and jumps to anything but a local label (a tail call), in assembly text."""
    found = re.findall(r"^\s*(call\w*|jmp\w*)\s+(\S+)", asm, re.M)
    return [" ".join(c) for c in found if c[0].startswith("call") or not c[1].startswith(".")]


@pytest.mark.parametrize("target_name", ["sse", "avx2", "avx512", "knl"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "logsoftmax"])
def test_the_module_calls_nothing_outside_itself(log, target_name):
    tgt = targets.get(target_name)
    ir = render_softmax("case", 1001, log, tgt.vector_width, tgt.name)
    assert external_declarations(ir) == []
    assert calls(llvm.assembly(ir, tgt)) == []


def test_the_check_sees_a_libm_call():
    """llvm.exp lowers to a call of expf: why the kernel computes exp itself."""
    ir = ("declare float @llvm.exp.f32(float)\n"
          "define float @f(float %a) {\n  %r = call float @llvm.exp.f32(float %a)\n  ret float %r\n}\n")
    assert external_declarations(ir) == []
    assert calls(llvm.assembly(ir, targets.get("avx2"))) != []


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="vector width"):
        render_softmax("case", 10, False, 2, "sse")
    with pytest.raises(ValueError, match="at least one"):
        render_softmax("case", 0, False, 4, "sse")
