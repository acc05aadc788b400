"""Render a Softmax / LogSoftmax kernel over rows of K floats -> LLVM IR text (no LLVM calls here).

exp is the template's own vector code (no libm: see tests/test_generated_code.py):
  t <= 0 (after subtracting the row max) is clamped to [CUT, TOP] (NaN -> CUT, so no poison
  from fptosi), k = rint(t * log2(e)), r = t - k * ln2 in two parts (Cody-Waite: LN2_HI has 9
  significant bits, so k * LN2_HI is exact with or without FMA), exp(r) by its Taylor polynomial
  of degree 7 on |r| <= ln2/2 (truncation error r^8/8! < 6e-9 relative, a tenth of an ulp),
  times 2^k built as the bits (k + 127) << 23. CUT = -126 ln2: below it the result would be
  denormal and is 0 instead; NaN inputs give NaN by a final select.
log(sum) for LogSoftmax is scalar, once per row, in double: sum = m * 2^e with m in
  [sqrt(1/2), sqrt(2)), log m = 2 atanh(u), u = (m - 1) / (m + 1), |u| < 0.172, by its series
  to u^13 (error < 1e-12), rounded to float at the end.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from .render import float_literal, render, splat, symbol

TEMPLATE = "softmax.ll.j2"
VECTOR_WIDTHS = (4, 8, 16)

LN2_HI = 0.693359375  # 0x3F318000: 9 significant bits
LN2_LO = float(np.float32(math.log(2.0) - LN2_HI))
CUT = float(np.nextafter(np.float32(-126 * math.log(2.0)), np.float32(0)))  # k >= -126 above it
TOP = 88.0  # exp(88) < FLT_MAX: only rows holding a NaN see t > 0, and their result is NaN
EXP_TAYLOR_DEGREE = 7
LOG_SERIES_TERMS = 6  # 1/3, 1/5, ..., 1/13


def kernel_symbol(layer: str, log: bool, vector_width: int) -> str:
    return symbol("sj_logsoftmax" if log else "sj_softmax", layer, f"v{vector_width}")


def render_softmax(layer: str, rows_len: int, log: bool, vector_width: int, target_name: str) -> str:
    """`void NAME(ptr x, ptr y, ptr unused, i64 n0, i64 n1, i64 r0, i64 r1)`: rows [r0, r1) of
    the contiguous row-major X[R][rows_len] -> Y[R][rows_len], Softmax (or LogSoftmax) of each
    row. n0 and n1 are ignored (pass 0, 1); R is not needed. Only rows [r0, r1) of X are read
    and of Y written; y may equal x (in place), so neither pointer is `noalias`."""
    if vector_width not in VECTOR_WIDTHS:
        raise ValueError(f"softmax vector width must be one of {VECTOR_WIDTHS}, not {vector_width}")
    if rows_len < 1:
        raise ValueError(f"softmax rows need at least one element, not {rows_len}")
    v = vector_width
    tail = rows_len % v

    def vec(value: float) -> str:
        return splat(v, f"float {float_literal(value)}")

    k = SimpleNamespace(
        name=kernel_symbol(layer, log, v), target=target_name, log=log,
        K=rows_len, V=v, NV=rows_len // v, TAIL=tail,
        tail_mask=", ".join(f"i1 {'true' if i < tail else 'false'}" for i in range(v)),
        halves=_halves(v),
        ninf=vec(-math.inf), zero=vec(0.0), cut=vec(CUT), top=vec(TOP), log2e=vec(1 / math.log(2.0)),
        neg_ln2_hi=vec(-LN2_HI), neg_ln2_lo=vec(-LN2_LO),
        taylor=[vec(1 / math.factorial(n)) for n in range(EXP_TAYLOR_DEGREE, -1, -1)],
        bias=splat(v, "i32 127"), shift=splat(v, "i32 23"),
        sqrt2=_double_literal(math.sqrt(2.0)), ln2_d=_double_literal(math.log(2.0)),
        atanh=[_double_literal(1 / (2 * n + 1)) for n in range(LOG_SERIES_TERMS, -1, -1)],
    )
    return render(TEMPLATE, k=k)


def _halves(v: int) -> list[tuple[int, str, str]]:
    """A horizontal reduction's steps: (width after the step, low-half lanes, high-half lanes)."""
    steps = []
    h = v // 2
    while h >= 1:
        steps.append((h, ", ".join(f"i32 {i}" for i in range(h)),
                      ", ".join(f"i32 {i}" for i in range(h, 2 * h))))
        h //= 2
    return steps


def _double_literal(value: float) -> str:
    return "0x%016X" % np.array(value, np.float64).view(np.uint64)
