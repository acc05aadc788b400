"""The LRN kernel against the numpy reference, on every target the host runs.

Sweeps window sizes 1/2/3/5 (even sizes reach one channel further up), channel counts 1/3/17/96
(and 256), row widths 1/7/16/17/33 around the vector widths, padded and unpadded layouts (both
unpadded: one flat row per channel), batch 1 and 3, partial image and channel ranges, the betas
with a kernel form (0.75, 0.5, 1; others are refused), and NaN/Inf inputs. Buffers end
exactly at a PROT_NONE page; output pads, untouched images and channels hold a sentinel, input
pads hold NaN, and the input must be left as it was.
"""

from __future__ import annotations

import ctypes
import zlib
from dataclasses import dataclass, replace

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen.lrn import kernel_symbol, render_lrn
from sparsejit.graph.ir import Node
from sparsejit.kernels.layout import Layout
from sparsejit.kernels.lrn import LRNWorkload
from sparsejit.kernels.reference import run_node

from ..tolerances import RTOL, assert_close
from .conv_harness import SENTINEL, GuardedBuffer, runnable_targets

TARGETS = runnable_targets()
LRNFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                         ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
PADS = (1, 2, 1, 3)  # top, left, bottom, right


@dataclass(frozen=True)
class LRNCase:
    channels: int
    height: int
    width: int
    size: int = 5
    beta: float = 0.75
    alpha: float = 0.9  # large enough that every channel of the window moves the result
    bias: float = 1.3
    batch: int = 1
    in_pads: tuple[int, int, int, int] = PADS
    out_pads: tuple[int, int, int, int] = (2, 1, 0, 2)
    images: tuple[int, int] | None = None  # [n0, n1); None: all
    channel_range: tuple[int, int] | None = None  # [c0, c1); None: all
    specials: bool = False  # NaN and +-Inf in the input

    def workload(self) -> LRNWorkload:
        return LRNWorkload(self.channels, self.height, self.width, self.size, self.alpha, self.beta,
                           self.bias)


def _guarded(floats: int) -> np.ndarray:
    """`floats` float32s whose last one ends exactly at a PROT_NONE page."""
    whole = -(-floats // 16) * 16
    return GuardedBuffer(whole).array[whole - floats:]


def _input(case: LRNCase, rng: np.random.Generator) -> np.ndarray:
    shape = (case.batch, case.channels, case.height, case.width)
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    if case.specials:
        flat = x.ravel()
        spots = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
        flat[spots] = [np.nan, np.inf, -np.inf, np.nan, np.inf, -np.inf][:len(spots)]
    return x


def run_lrn(case: LRNCase, target_name: str, seed: int, x: np.ndarray | None = None,
            rtol: float = RTOL) -> str:
    """Compile, run and check one case (on `x`, else random data); returns the IR. Fails with
    the seed in the message."""
    rng = np.random.default_rng(seed)
    tgt = targets.get(target_name)
    v = tgt.vector_width
    wl = case.workload()
    shape = (case.channels, case.height, case.width)
    in_layout = Layout.padded(*shape, case.in_pads, align=v if any(case.in_pads) else 1)
    out_layout = Layout.padded(*shape, case.out_pads, align=v if any(case.out_pads) else 1)
    ir = render_lrn("case", wl, in_layout, out_layout, v, tgt.name)
    obj, _ = llvm.compile_object(ir, tgt)
    lib = llvm.CodeLibrary(tgt)
    lib.add_object(obj)
    fn = LRNFn(lib.address(kernel_symbol("case", v)))

    n = case.batch
    n0, n1 = case.images or (0, n)
    c0, c1 = case.channel_range or (0, case.channels)
    if x is None:
        x = _input(case, rng)
    src = _guarded(n * in_layout.image_stride)
    src[:] = np.nan  # pads: a kernel reading them would spread NaN
    in_layout.write(src, x)
    src_before = src.copy()
    dst = _guarded(n * out_layout.image_stride)
    dst[:] = SENTINEL
    fn(src.ctypes.data, dst.ctypes.data, None, n0, n1, c0, c1)

    attrs = {"size": case.size, "alpha": case.alpha, "beta": case.beta, "bias": case.bias}
    with np.errstate(invalid="ignore", over="ignore"):  # inf / inf, overflowing squares
        expected = run_node(Node("LRN", ["x"], ["y"], attrs), [x])[0][n0:n1, c0:c1]
    what = f"{case} on {target_name} seed={seed}"
    got = np.array(out_layout.interior(dst, n)[n0:n1, c0:c1])
    assert_close(got, expected, what=what, rtol=rtol)
    untouched = dst.copy()
    out_layout.interior(untouched, n)[n0:n1, c0:c1] = SENTINEL
    assert np.all(untouched == SENTINEL), f"kernel wrote outside its images/channels/interior: {what}"
    assert np.array_equal(src, src_before, equal_nan=True), f"kernel wrote its input: {what}"
    del lib
    return ir


def _seed(case: LRNCase, target: str) -> int:
    return zlib.crc32(f"{case}{target}".encode()) % 10_000


WIDTHS = [1, 7, 16, 17, 33]
SIZE_CHANNELS = [LRNCase(c, 3, WIDTHS[i % len(WIDTHS)], size=s)
                 for i, (s, c) in enumerate((s, c) for s in (1, 2, 3, 5) for c in (1, 3, 17, 96))]
LAYOUTS = {"padded_in": (PADS, (0, 0, 0, 0)), "padded_out": ((0, 0, 0, 0), PADS),
           "both_padded": (PADS, (2, 1, 0, 2)), "unpadded": ((0, 0, 0, 0), (0, 0, 0, 0))}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", SIZE_CHANNELS, ids=str)
def test_sizes_and_channels(case, target):
    run_lrn(case, target, _seed(case, target))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("layouts", list(LAYOUTS))
@pytest.mark.parametrize("width", WIDTHS)
def test_widths_and_layouts(width, layouts, target):
    in_pads, out_pads = LAYOUTS[layouts]
    batch = 3 if layouts == "unpadded" else 1
    case = LRNCase(17, 4, width, size=5, batch=batch, in_pads=in_pads, out_pads=out_pads)
    ir = run_lrn(case, target, _seed(case, target))
    flat_rows = layouts == "unpadded"
    assert ("rows per channel: 1 x" in ir) == flat_rows or case.height == 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("beta, form", [(0.75, "sqrt_sqrt"), (0.5, "sqrt"), (1.0, "identity")])
def test_betas(beta, form, target):
    case = LRNCase(17, 3, 17, size=3, beta=beta, batch=2)
    ir = run_lrn(case, target, _seed(case, target))
    assert f"; power: {form} " in ir
    body = ir.split("define", 1)[1]
    assert "@llvm.pow." not in body
    assert body.count("@llvm.sqrt.") == {"sqrt_sqrt": 8, "sqrt": 4}.get(form, 0)


RANGES = [
    LRNCase(17, 3, 7, batch=3, images=(1, 3), channel_range=(2, 15)),
    LRNCase(17, 3, 7, size=2, batch=3, images=(0, 1), channel_range=(16, 17)),
    LRNCase(17, 3, 7, size=4, batch=3, images=(2, 3), channel_range=(0, 1)),
    LRNCase(96, 2, 33, batch=3, images=(1, 2), channel_range=(40, 41)),
    LRNCase(5, 2, 17, batch=2, images=(1, 1), channel_range=(0, 5)),  # nothing to do
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", RANGES, ids=str)
def test_partial_ranges(case, target):
    run_lrn(case, target, _seed(case, target))


def test_other_betas_are_refused():
    wl = LRNCase(3, 2, 5, beta=0.6).workload()
    assert wl.power_form is None
    with pytest.raises(ValueError, match="beta 0.6"):
        render_lrn("case", wl, Layout(3, 2, 5), Layout(3, 2, 5), 16, "host")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("beta", [0.75, 0.5])
def test_nan_and_inf_propagate(beta, target):
    case = LRNCase(9, 3, 17, size=5, beta=beta, batch=2, specials=True)
    run_lrn(case, target, _seed(case, target))


@pytest.mark.parametrize("target", TARGETS)
def test_squares_that_overflow_give_zero(target):
    """x = 1e20: its square is +inf, so t = +inf and x / t^beta = 0, for its neighbours in the
    window too (not NaN)."""
    case = LRNCase(6, 2, 9, beta=0.75, batch=1)
    x = np.random.default_rng(4).standard_normal((1, 6, 2, 9)).astype(np.float32)
    x[0, 2, 1, 3], x[0, 4, 0, 0] = 1e20, -3e19
    run_lrn(case, target, 0, x=x)


@pytest.mark.parametrize("target", TARGETS)
def test_many_channels(target):
    """256 channels with the CaffeNet/GoogLeNet constants and with large alpha."""
    for case in (LRNCase(256, 2, 19, alpha=1e-4), LRNCase(256, 2, 19, alpha=3.0, bias=0.5)):
        run_lrn(case, target, _seed(case, target))


def test_render_checks_layouts():
    wl = LRNWorkload(4, 5, 6, 5, 1e-4, 0.75, 1.0)
    good = Layout.padded(4, 5, 6)
    with pytest.raises(ValueError, match="does not match"):
        render_lrn("x", wl, Layout.padded(4, 5, 7), good, 8, "avx2")
    with pytest.raises(ValueError, match="one phase"):
        render_lrn("x", wl, good, Layout.padded(4, 5, 6, phases=2), 8, "avx2")
    with pytest.raises(ValueError, match="vector width"):
        render_lrn("x", wl, good, good, 2, "avx2")
    with pytest.raises(ValueError, match="positive"):
        LRNWorkload(4, 5, 6, 0, 1e-4, 0.75, 1.0)


def test_header_and_symbol():
    wl = LRNWorkload(4, 5, 6, 5, 1e-4, 0.75, 1.0)
    ir = render_lrn("pool1/norm1", wl, Layout.padded(4, 5, 6), Layout.padded(4, 5, 6), 16, "avx512")
    assert kernel_symbol("pool1/norm1", 16) == "sj_lrn_pool1_norm1_v16"
    assert ir.startswith("; sparsejit kernel sj_lrn_pool1_norm1_v16\n; template: lrn.ll.j2")
    llvm.verify(ir)
    assert replace(wl, size=4).window(0) == (0, 3) and replace(wl, size=4).window(3) == (2, 4)
