"""A tester for the direct-conv kernel family: builds a layer from random weights of a given
density, renders and compiles its kernel for a target, runs it on buffers that end at a
PROT_NONE guard page (an over-read or over-write faults), and compares with the numpy reference.
Pads and lanes the kernel must not touch are filled with a sentinel and checked afterwards.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass, field, replace

import numpy as np

from sparsejit import llvm, targets
from sparsejit.codegen.direct_conv import kernel_symbol, render_direct_conv
from sparsejit.kernels import select
from sparsejit.kernels.direct_conv import (
    ConvWorkload,
    DirectConvPlan,
    Epilogue,
    build_pattern,
    flat_rows,
    input_extent,
    origin,
    output_extent,
    packed_input,
    parallel_units,
    split_output_rows,
)
from sparsejit.kernels.layout import Layout
from sparsejit.lower import flattened
from sparsejit.kernels.reference import conv2d
from sparsejit.runtime.steps import ConvFn

from ..tolerances import assert_close

SENTINEL = np.float32(-12345.5)
_libc = ctypes.CDLL(None, use_errno=True)
_PAGE = mmap.PAGESIZE


class GuardedBuffer:
    """`floats` float32s, 64-byte aligned, ending (within 64 bytes) at an inaccessible page."""

    def __init__(self, floats: int) -> None:
        nbytes = -(-floats * 4 // 64) * 64
        data_pages = -(-nbytes // _PAGE)
        self._map = mmap.mmap(-1, (data_pages + 1) * _PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        guard = base + data_pages * _PAGE
        if _libc.mprotect(ctypes.c_void_p(guard), _PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect failed")
        offset = data_pages * _PAGE - nbytes
        self.array = np.frombuffer(self._map, np.float32, floats, offset)


@dataclass
class ConvCase:
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    batch: int = 1
    density: float | str = 0.5  # or "one": a single nonzero
    plan: dict = field(default_factory=dict)  # overrides of the default plan
    activation: str = "relu"
    out_pads: tuple[int, int, int, int] = (1, 2, 0, 1)  # the consumer's padding around the output
    in_extra_pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # producer layout pads beyond the conv's
    residual: bool = False  # a fused Add: a tensor (in a layout of its own) added before the activation
    # a residual the output is written over (its layout and buffer), as the runtime may place it
    residual_in_place: bool = False
    out_plain: bool = False  # the output is a plain NCHW array (no pads, no row alignment)
    flat: bool = False  # input, output and residual rows equally far apart: the kernel runs flat
    # a pointwise conv over a plain input run as one row of H * W positions, its vectors stored
    # into the output's padded rows (lower.flattened)
    split: bool = False

    def workload(self) -> ConvWorkload:
        return ConvWorkload(self.in_channels, self.height, self.width, self.out_channels,
                            self.kernel, self.strides, self.pads, self.dilations, self.group)

    def __str__(self) -> str:
        return (f"C{self.in_channels}x{self.height}x{self.width}->M{self.out_channels} "
                f"k{self.kernel} s{self.strides} p{self.pads} d{self.dilations} g{self.group} "
                f"n{self.batch} density={self.density} plan={self.plan} act={self.activation}")


def random_weights(case: ConvCase, rng: np.random.Generator) -> np.ndarray:
    shape = (case.out_channels, case.in_channels // case.group, *case.kernel)
    w = rng.standard_normal(shape).astype(np.float32)
    if case.density == "one":
        keep = np.zeros(w.size, bool)
        keep[rng.integers(w.size)] = True
        return (w.ravel() * keep).reshape(shape)
    return w * (rng.random(shape) < float(case.density))


def run_case(case: ConvCase, target_name: str, seed: int) -> DirectConvPlan:
    """Compile and check one case; returns the plan that ran. Fails with the seed in the message."""
    rng = np.random.default_rng(seed)
    tgt = targets.get(target_name)
    wl = case.workload()
    w = random_weights(case, rng)
    bias = rng.standard_normal(case.out_channels).astype(np.float32)
    x = rng.standard_normal((case.batch, case.in_channels, case.height, case.width)).astype(np.float32)
    v = tgt.vector_width
    if case.flat:
        return _run_flat_case(case, tgt, wl, w, bias, x, rng, seed)
    if case.split:
        return _run_split_case(case, tgt, wl, w, bias, x, rng, seed)
    # the producer's layout; the kernel reads it unless it packs a copy of its own (as lowering)
    pads = tuple(a + b for a, b in zip(case.pads, case.in_extra_pads))
    produced = Layout.padded(wl.in_channels, wl.height, wl.width, pads, align=v)
    plan = select.choose_conv(wl, w, tgt, case.plan, in_layout=produced)
    in_layout = packed_input(wl, plan, v) or produced
    out_layout = (Layout(case.out_channels, wl.out_height, wl.out_width) if case.out_plain else
                  Layout.padded(case.out_channels, wl.out_height, wl.out_width, case.out_pads, align=v))
    pattern = build_pattern(w, wl, in_layout, plan)
    # (a frame's aligned load may start before the tile's first input, never before the image)
    assert pattern.entries == 0 or origin(wl, in_layout) + pattern.offsets.min() >= 0
    res_layout = (out_layout if case.residual_in_place else
                  Layout.padded(case.out_channels, wl.out_height, wl.out_width, (2, 1, 0, 3), align=v)
                  if case.residual else None)
    return _check(case, tgt, wl, plan, w, bias, x, rng, seed, in_layout, out_layout, res_layout,
                  pattern)


def _run_flat_case(case, tgt, wl, w, bias, x, rng, seed) -> DirectConvPlan:
    """Layouts whose rows are all one stride apart (as lowering gives a small map's tensors), so
    the kernel computes each plane as one flat run (kernels/direct_conv.py: flat_rows)."""
    pads = tuple(a + b for a, b in zip(case.pads, case.in_extra_pads))
    in_layout = Layout.padded(wl.in_channels, wl.height, wl.width, pads)
    spare = in_layout.row_stride - wl.out_width  # the output's row padding, left and right
    out_pads = (case.out_pads[0], spare // 2, case.out_pads[2], spare - spare // 2)
    out_layout = Layout.padded(case.out_channels, wl.out_height, wl.out_width, out_pads)
    res_layout = (Layout.padded(case.out_channels, wl.out_height, wl.out_width,
                                (out_pads[0], spare - spare // 2, out_pads[2], spare // 2))
                  if case.residual else None)
    flat = flat_rows(wl, in_layout, out_layout, res_layout, tgt.vector_width)
    assert flat is not None, f"{case}: no flat run on {tgt.name} with {in_layout}, {out_layout}"
    plan = select.choose_conv(flat, w, tgt, case.plan, in_layout=in_layout)
    pattern = build_pattern(w, flat, in_layout, plan)
    return _check(case, tgt, flat, plan, w, bias, x, rng, seed, in_layout, out_layout, res_layout,
                  pattern)


def _run_split_case(case, tgt, wl, w, bias, x, rng, seed) -> DirectConvPlan:
    """A pointwise conv over a plain input into padded (and, with `out_plain` False, aligned)
    output rows: one run of H * W positions, each vector stored into the row or two it falls in
    (kernels/direct_conv.py: split_output_rows)."""
    v = tgt.vector_width
    in_layout = Layout(wl.in_channels, wl.height, wl.width)
    out_layout = Layout.padded(case.out_channels, wl.out_height, wl.out_width, case.out_pads,
                               align=1 if case.out_plain else v)
    flat = flattened(wl, in_layout, out_layout, None, v)
    assert flat is not None and split_output_rows(flat[0], out_layout) == wl.width, case
    flat_wl, flat_in, _, _ = flat
    plan = select.choose_conv(flat_wl, w, tgt, case.plan, in_layout=flat_in)
    pattern = build_pattern(w, flat_wl, flat_in, plan)
    return _check(case, tgt, flat_wl, plan, w, bias, x, rng, seed, flat_in, out_layout, None,
                  pattern)


def _check(case, tgt, wl, plan, w, bias, x, rng, seed, in_layout, out_layout, res_layout,
           pattern) -> DirectConvPlan:
    """Run the kernel of `plan` on guarded buffers and compare with the numpy reference."""
    v = tgt.vector_width
    target_name = tgt.name
    ir = render_direct_conv("case", wl, plan, pattern, bias, Epilogue(case.activation, 0.1),
                            in_layout, out_layout, tgt.name, res_layout)
    obj, _ = llvm.compile_object(ir, tgt, plan.codegen_opt)
    lib = llvm.CodeLibrary(tgt)
    lib.add_object(obj)
    lib.finalize()
    fn = ConvFn(lib.address(kernel_symbol("case", plan)))

    n = case.batch
    in_floats = (n - 1) * in_layout.image_stride + max(in_layout.image_stride,
                                                        input_extent(wl, in_layout, plan, pattern))
    src = GuardedBuffer(in_floats)
    src.array[:] = 0
    if x.shape[2] != in_layout.height:  # a flattened pointwise conv reads its planes as one row
        in_layout.write(src.array, x.reshape(n, x.shape[1], in_layout.height, -1))
    else:
        in_layout.write(src.array, x)
    dst = GuardedBuffer((n - 1) * out_layout.image_stride + output_extent(wl, out_layout, v))
    dst.array[:] = SENTINEL
    res_ptr, res_data = None, None
    if res_layout is not None:
        res_data = rng.standard_normal((n, case.out_channels, wl.out_height, wl.out_width)).astype(np.float32)
        if case.residual_in_place:  # each element must be read before it is written
            res_layout.write(dst.array, res_data)
            res_ptr = dst.array.ctypes.data
        else:
            res = GuardedBuffer(n * res_layout.image_stride)
            res.array[:] = np.nan  # the kernel must read the residual's interior only
            res_layout.write(res.array, res_data)
            res_ptr = res.array.ctypes.data
    # the unit range (channel blocks, or tiles: plan.split) in uneven pieces, as threads take it
    units = parallel_units(wl, plan, pattern.blocks)
    cuts = sorted({0, units, *(int(c) for c in rng.integers(0, units + 1, 2))})
    for u0, u1 in zip(cuts, cuts[1:]):
        fn(src.array.ctypes.data, dst.array.ctypes.data, res_ptr, 0, n, u0, u1)

    expected = conv2d(x, w, bias, wl.strides, wl.pads, wl.dilations, wl.group)
    if res_data is not None:
        expected = expected + res_data
    if case.activation == "relu":
        expected = np.maximum(expected, 0)
    elif case.activation == "leaky_relu":
        expected = np.where(expected < 0, expected * np.float32(0.1), expected)
    got = np.array(out_layout.read(dst.array, n))
    what = f"{case} on {target_name} [{plan.variant()}] seed={seed}"
    assert_close(got, expected, what=what)
    # outside the interior a kernel may write zeros (vector tails into the padding), nothing else
    untouched = dst.array.copy()
    out_layout.interior(untouched, n)[...] = SENTINEL
    assert np.all((untouched == SENTINEL) | (untouched == 0)), \
        f"kernel wrote other than zeros outside the output interior: {what}"
    del lib
    return plan


def runnable_targets() -> list[str]:
    return [t for t in ("sse", "avx2", "avx512") if targets.can_run(targets.get(t))]


def with_plan(case: ConvCase, **plan) -> ConvCase:
    return replace(case, plan={**case.plan, **plan})
