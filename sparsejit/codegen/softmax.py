"""Render a Softmax / LogSoftmax kernel over rows of K floats -> LLVM IR text (no LLVM calls here).

exp is the template's own vector code (no libm: see tests/test_generated_code.py). Its argument
t = x - max is <= 0 or -inf, except in a row holding a NaN, where it may be anything:
  c = max(t, CUT) (a NaN stays NaN); s = c * log2(e) + MAGIC, which rounds to an integer: k =
  s - MAGIC, and the low bits of s hold k, so (bits(s) << 23) + bits(1.0) are the bits of 2^k
  (no fptosi, so no poison for any input); r = c - k * ln2 in two parts (Cody-Waite: LN2_HI has
  9 significant bits, so k * LN2_HI is exact with or without FMA); exp(r) by its Taylor
  polynomial of degree 7 on |r| <= ln2/2 (truncation r^8/8! < 6e-9 relative, a tenth of an
  ulp); then times 2^k. Below CUT = -126 ln2 the result would be denormal and is 0 instead.
  A NaN t gives a NaN r, so a NaN result whatever 2^k's bits are; any t > 0 lies in a NaN row,
  whose sum, and so every output, is NaN.
log(sum) for LogSoftmax is scalar, once per row, in double: sum = m * 2^e with m in
  [sqrt(1/2), sqrt(2)), log m = 2 atanh(u), u = (m - 1) / (m + 1), |u| < 0.172, by its series
  to u^13 (error < 1e-12), rounded to float at the end; a NaN sum gives NaN.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from .render import float_literal, halving_steps, render, symbol

TEMPLATE = "softmax.ll.j2"
VECTOR_WIDTHS = (4, 8, 16)

LN2_HI = 0.693359375  # 0x3F318000: 9 significant bits
LN2_LO = float(np.float32(math.log(2.0) - LN2_HI))
CUT = float(np.nextafter(np.float32(-126 * math.log(2.0)), np.float32(0)))  # k >= -126 above it
MAGIC = 1.5 * 2**23  # t * log2(e) + MAGIC rounds to an integer k, held in the low mantissa bits
EXP_TAYLOR_DEGREE = 7
LOG_SERIES_TERMS = 6  # 1/3, 1/5, ..., 1/13
UNROLL = {"max": 4, "sum": 4, "out": 1}  # vectors per loop iteration (accumulators) per pass


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
        return f"splat (float {float_literal(value)})"

    k = SimpleNamespace(
        name=kernel_symbol(layer, log, v), target=target_name, log=log,
        K=rows_len, V=v, NV=rows_len // v, TAIL=tail,
        tail_mask=", ".join(f"i1 {'true' if i < tail else 'false'}" for i in range(v)),
        halves=halving_steps(v), unroll=SimpleNamespace(**UNROLL),
        ninf=vec(-math.inf), cut=vec(CUT), log2e=vec(1 / math.log(2.0)),
        neg_ln2_hi=vec(-LN2_HI), neg_ln2_lo=vec(-LN2_LO),
        taylor=[vec(1 / math.factorial(n)) for n in range(EXP_TAYLOR_DEGREE, -1, -1)],
        magic=vec(MAGIC),
        sqrt2=_double_literal(math.sqrt(2.0)), ln2_d=_double_literal(math.log(2.0)),
        atanh=[_double_literal(1 / (2 * n + 1)) for n in range(LOG_SERIES_TERMS, -1, -1)],
    )
    return render(TEMPLATE, k=k)


def _double_literal(value: float) -> str:
    return "0x%016X" % np.array(value, np.float64).view(np.uint64)
