"""The generated repack kernel against `Layout.write`, on buffers that end at a guard page: NaN in
every source pad (a kernel that reads one and stores it shows), a sentinel in the whole
destination, and exact equality with a buffer built by numpy (sentinel, then `dst.write`)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen.repack import (
    block_range,
    kernel_symbol,
    lane_masks,
    render_plane_repack,
    render_repack,
    unmasked_blocks,
)
from sparsejit.kernels.direct_conv import ConvWorkload, plane_conv, plane_row_floats
from sparsejit.kernels.layout import Layout, PhasePlanes
from sparsejit.runtime.steps import ConvFn

from .conv_harness import SENTINEL, GuardedBuffer, runnable_targets

TARGETS = runnable_targets()


def load_kernel(ir: str, symbol: str, tgt):
    obj, _ = llvm.compile_object(ir, tgt, 2)
    lib = llvm.CodeLibrary(tgt)
    lib.add_object(obj)
    lib.finalize()
    return lib, ConvFn(lib.address(symbol))


def compile_repack(src: Layout, dst: Layout, offset: int, target_name: str):
    tgt = targets.get(target_name)
    v = tgt.vector_width
    ir = render_repack("case", src.channels, src, dst, offset, v, tgt.name)
    return load_kernel(ir, kernel_symbol("case", dst, v), tgt)


def run_guarded(fn, src: Layout, x: np.ndarray, dst_floats: int, images, channels) -> np.ndarray:
    """Call a repack kernel on a source ending right after its last interior row (an over-read
    past it faults) with NaN in its pads, into a sentinel-filled destination; return that."""
    batch = x.shape[0]
    src_buf = GuardedBuffer((batch - 1) * src.image_stride + src.channels * src.channel_stride)
    src_buf.array[:] = np.nan
    src.write(src_buf.array, x)
    dst_buf = GuardedBuffer(dst_floats)
    dst_buf.array[:] = SENTINEL
    fn(src_buf.array.ctypes.data, dst_buf.array.ctypes.data, None, *images, *channels)
    return dst_buf.array


def expected_buffer(src: Layout, dst: Layout, x: np.ndarray, offset: int, images, channels) -> np.ndarray:
    """A sentinel buffer holding what `dst.write` writes for source channels `channels` (at
    destination channels + offset) of images `images`, and the sentinel everywhere else."""
    n = x.shape[0]
    full = np.full(n * dst.image_stride, SENTINEL, np.float32)
    xd = np.zeros((n, dst.channels, dst.height, dst.width), np.float32)
    xd[:, offset:offset + src.channels] = x
    dst.write(full, xd)
    expected = np.full_like(full, SENTINEL)
    for i in range(*images):
        for k in range(dst.shifts):
            for c in range(offset + channels[0], offset + channels[1]):
                start = i * dst.image_stride + k * dst.shift_stride + c * dst.channel_stride
                expected[start:start + dst.channel_stride] = full[start:start + dst.channel_stride]
    return expected


def run_repack(src: Layout, dst: Layout, batch: int, target_name: str, offset: int = 0,
               images=None, channels=None, seed: int = 0) -> None:
    images = images or (0, batch)
    channels = channels or (0, src.channels)
    x = np.random.default_rng(seed).standard_normal(
        (batch, src.channels, src.height, src.width)).astype(np.float32)
    lib, fn = compile_repack(src, dst, offset, target_name)
    got = run_guarded(fn, src, x, batch * dst.image_stride, images, channels)

    expected = expected_buffer(src, dst, x, offset, images, channels)
    v = targets.get(target_name).vector_width
    what = (f"{src} -> {dst} offset {offset} images {images} channels {channels} on {target_name} "
            f"blocks {block_range(src.width, dst, v)} unmasked {unmasked_blocks(src.width, dst, v)} "
            f"seed {seed}")
    bad = np.flatnonzero(~((got == expected) | (np.isnan(got) & np.isnan(expected))))
    assert bad.size == 0, f"{bad.size} floats differ, first at {bad[:8].tolist()}: {what}"
    del lib


CASES = [
    # (batch, channels, height, width, source pads, destination pads, phases, shifts, align)
    (1, 1, 1, 1, (0, 0, 0, 0), (0, 0, 0, 0), 1, 1, 1),
    (1, 1, 1, 1, (1, 1, 1, 1), (2, 3, 1, 2), 4, 3, 16),
    (1, 3, 7, 5, (1, 1, 1, 1), (1, 2, 0, 1), 2, 1, 1),
    (1, 3, 7, 5, (0, 0, 0, 0), (0, 0, 0, 0), 2, 3, 4),  # copies 1, 2 lose their first columns
    (3, 3, 7, 16, (0, 2, 1, 3), (1, 1, 1, 1), 2, 2, 16),
    (1, 3, 7, 16, (0, 0, 0, 0), (0, 1, 0, 0), 4, 2, 1),
    (1, 3, 7, 17, (2, 0, 0, 1), (3, 3, 3, 3), 2, 3, 8),
    (1, 20, 1, 33, (0, 0, 0, 0), (0, 5, 0, 2), 4, 3, 16),
    (1, 3, 7, 33, (1, 1, 1, 1), (0, 0, 0, 0), 1, 1, 1),
    (1, 3, 7, 33, (0, 3, 0, 0), (1, 1, 1, 1), 1, 1, 16),
    (3, 3, 7, 57, (0, 0, 0, 0), (0, 0, 0, 0), 4, 1, 16),
    (1, 3, 7, 57, (0, 1, 0, 1), (0, 1, 0, 1), 1, 3, 1),  # phases 1, shifted copies
    (1, 3, 7, 57, (1, 1, 1, 1), (1, 1, 1, 1), 2, 2, 4),
    (1, 3, 1, 57, (0, 0, 0, 0), (0, 7, 2, 0), 4, 2, 1),
    (1, 3, 7, 17, (0, 0, 0, 0), (0, 40, 0, 0), 1, 1, 1),  # whole vector blocks of left pad
    (1, 3, 7, 17, (0, 0, 0, 0), (0, 70, 0, 0), 2, 2, 1),
    (3, 20, 7, 16, (0, 0, 0, 0), (0, 0, 0, 0), 1, 1, 1),  # plain to plain
]


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_repack_writes_what_layout_write_writes(case, target_name):
    batch, c, h, w, src_pads, dst_pads, phases, shifts, align = case
    src = Layout.padded(c, h, w, src_pads)
    dst = Layout.padded(c, h, w, dst_pads, phases=phases, align=align, shifts=shifts)
    run_repack(src, dst, batch, target_name)


@pytest.mark.parametrize("target_name", TARGETS)
def test_partial_ranges_and_a_channel_offset(target_name):
    v = targets.get(target_name).vector_width
    src = Layout.padded(20, 7, 33, (1, 1, 1, 1), align=v)
    concat = Layout.padded(29, 7, 33, (0, 2, 1, 1), align=v)  # the source at channels [6, 26)
    run_repack(src, concat, 3, target_name, offset=6, images=(1, 3), channels=(5, 17))
    phased = Layout.padded(25, 7, 33, (1, 1, 1, 1), phases=2, align=v, shifts=2)
    run_repack(src, phased, 3, target_name, offset=5, images=(0, 2), channels=(0, 20))
    run_repack(src, phased, 1, target_name, images=(0, 0), channels=(0, 20))  # no work
    run_repack(src, phased, 1, target_name, channels=(7, 7))


CONVS = [
    # (channels, height, width, kernel, stride, pads, producer pads): sparsejit's strided convs
    (3, 14, 14, (3, 3), (2, 2), (1, 1, 1, 1), (0, 0, 0, 0)),  # ResNet-50 3x3 stride 2
    (5, 13, 13, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1, 1, 1)),
    (4, 14, 14, (1, 1), (2, 2), (0, 0, 0, 0), (0, 0, 0, 0)),  # ResNet-50 downsample
    (3, 29, 29, (7, 7), (2, 2), (3, 3, 3, 3), (0, 0, 0, 0)),  # ResNet-50 stem, smaller image
    (3, 35, 35, (11, 11), (4, 4), (0, 0, 0, 0), (0, 0, 0, 0)),  # CaffeNet conv1, smaller image
]


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("conv", CONVS, ids=str)
def test_the_packs_of_strided_convs(conv, shifted, target_name):
    c, h, w, kernel, strides, pads, producer_pads = conv
    v = targets.get(target_name).vector_width
    wl = ConvWorkload(c, h, w, 8, kernel, strides, pads)
    src = Layout.padded(c, h, w, producer_pads, align=v)
    run_repack(src, wl.input_layout(v, shifted=shifted), 2, target_name)


def test_every_destination_position_has_one_lane():
    """Each (copy, channel row, phase, q) that Layout.write writes is stored by exactly one
    block lane, whichever blocks are masked."""
    for w, pad, phases, shifts, v in [(57, 3, 2, 4, 4), (17, 0, 4, 3, 16), (5, 9, 1, 2, 8), (1, 1, 4, 1, 4)]:
        dst = Layout.padded(1, 1, w, (0, pad, 0, 0), phases=phases, shifts=shifts)
        hits = np.zeros((shifts, dst.row_stride), int)
        for b in block_range(w, dst, v):
            _, stores = lane_masks(w, dst, v, b)
            for (p, k), mask in stores.items():
                for i in np.flatnonzero(mask):
                    hits[k, p * dst.phase_width + b * v + i - k] += 1
        want = np.zeros_like(hits)
        for k in range(shifts):
            for x in range(w):
                j = x + pad - k * phases
                if j >= 0:
                    want[k, (j % phases) * dst.phase_width + j // phases] = 1
        assert np.array_equal(hits, want), (w, pad, phases, shifts, v)


def test_wide_rows_take_the_unmasked_loop():
    dst = ConvWorkload(256, 56, 56, 128, (3, 3), (2, 2), (1, 1, 1, 1)).input_layout(8, shifted=True)
    assert unmasked_blocks(56, dst, 8) == range(1, 3)
    ir = render_repack("case", 256, Layout.padded(256, 56, 56), dst, 0, 8, "avx2")
    assert "\nfast:" in ir and "unmasked [1, 3)" in ir


def run_plane_repack(src: Layout, planes: PhasePlanes, batch: int, target_name: str,
                     images=None, channels=None, seed: int = 0) -> None:
    """The generated planes repack against PhasePlanes.write: NaN source pads, a guard page
    after the source, a sentinel everywhere the planes of other images / channels lie."""
    images, channels = images or (0, batch), channels or (0, src.channels)
    tgt = targets.get(target_name)
    v = tgt.vector_width
    lib, fn = load_kernel(render_plane_repack("case", src, planes, v, tgt.name),
                          kernel_symbol("case", planes, v), tgt)
    x = np.random.default_rng(seed).standard_normal(
        (batch, src.channels, src.height, src.width)).astype(np.float32)
    got = run_guarded(fn, src, x, batch * planes.image_stride, images, channels)
    written = np.full(batch * planes.image_stride, SENTINEL, np.float32)
    planes.write(written, x)
    expected = np.full_like(written, SENTINEL)
    per_channel = planes.stride ** 2 * planes.layout.channel_stride
    for i in range(*images):
        lo = i * planes.image_stride + channels[0] * per_channel
        hi = i * planes.image_stride + channels[1] * per_channel
        expected[lo:hi] = written[lo:hi]
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, (f"{bad.size} floats differ, first at {bad[:8].tolist()}: {src} -> "
                           f"{planes} images {images} channels {channels} on {target_name}")
    del lib


PLANE_CONVS = [
    # (channels, height, width, kernel, stride, pads, producer pads, extra row floats)
    (3, 35, 35, (11, 11), 4, (0, 0, 0, 0), (0, 0, 0, 0), 0),  # CaffeNet conv1, smaller image
    (3, 227, 227, (11, 11), 4, (0, 0, 0, 0), (0, 0, 0, 0), 0),  # CaffeNet conv1
    (5, 14, 14, (3, 3), 2, (1, 1, 1, 1), (1, 1, 1, 1), 1),  # ResNet-50 layer4.0.conv2
    (2, 13, 13, (3, 3), 2, (1, 1, 1, 1), (0, 0, 0, 0), 16),
    (2, 29, 30, (7, 7), 2, (3, 3, 3, 3), (0, 2, 1, 0), 0),
    (2, 11, 40, (5, 5), 3, (2, 1, 0, 2), (0, 0, 0, 0), 5),
]


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("conv", PLANE_CONVS, ids=str)
def test_the_phase_planes_of_strided_convs(conv, target_name):
    c, h, w, kernel, s, pads, producer_pads, extra = conv
    v = targets.get(target_name).vector_width
    wl = ConvWorkload(c, h, w, 8, kernel, (s, s), pads)
    planes, _ = plane_conv(wl, plane_row_floats(wl) + extra)
    src = Layout.padded(c, h, w, producer_pads, align=v)
    run_plane_repack(src, planes, 2, target_name)
    run_plane_repack(src, planes, 3, target_name, images=(1, 3), channels=(1, c))
