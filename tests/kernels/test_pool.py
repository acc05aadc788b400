"""The generated pool kernel against the numpy reference, on buffers that end at a guard page,
with NaN in every input pad (reading one would show) and a sentinel around the output."""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen import pool as pool_codegen
from sparsejit.codegen.pool import kernel_symbol, render_pool, unmasked_blocks
from sparsejit.graph.ir import Node
from sparsejit.kernels.layout import Layout
from sparsejit.kernels.pool import PoolWorkload, pool_workload
from sparsejit.kernels.reference import run_node
from sparsejit.runtime.steps import ConvFn

from ..tolerances import assert_close
from .conv_harness import SENTINEL, GuardedBuffer, runnable_targets

TARGETS = runnable_targets()


def pool_node(op: str, kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1),
              ceil_mode=0, count_include_pad=0) -> Node:
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads),
             "dilations": list(dilations), "auto_pad": "NOTSET", "ceil_mode": ceil_mode}
    if op == "AveragePool":
        attrs["count_include_pad"] = count_include_pad
    if op.startswith("Global"):
        attrs = {}
    return Node(op, ["x"], ["y"], attrs, name="pool")


def run_pool(node: Node, shape, target_name: str, seed: int = 0, in_pads=(1, 2, 0, 3),
             out_pads=(0, 1, 2, 0), channels=None, x=None) -> None:
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    tgt = targets.get(target_name)
    v = tgt.vector_width
    wl = pool_workload(node, c, h, w)
    in_layout = Layout.padded(c, h, w, in_pads, align=v)
    out_layout = Layout.padded(c, wl.out_height, wl.out_width, out_pads, align=v)
    ir = render_pool("case", wl, in_layout, out_layout, v, tgt.name)
    obj, _ = llvm.compile_object(ir, tgt, 2)
    lib = llvm.CodeLibrary(tgt)
    lib.add_object(obj)
    lib.finalize()
    fn = ConvFn(lib.address(kernel_symbol("case", wl, v, in_layout)))

    if x is None:
        x = rng.standard_normal(shape).astype(np.float32)
    src = GuardedBuffer(n * in_layout.image_stride)
    src.array[:] = np.nan  # pads: a kernel that reads one produces NaN
    in_layout.write(src.array, x)
    dst = GuardedBuffer(n * out_layout.image_stride)
    dst.array[:] = SENTINEL
    c0, c1 = channels or (0, c)
    fn(src.array.ctypes.data, dst.array.ctypes.data, None, 0, n, c0, c1)

    expected = run_node(node, [x])[0][:, c0:c1]
    got = np.array(out_layout.read(dst.array, n))
    what = (f"{node.op} {wl} x{shape} on {target_name}, {pool_codegen.pool_form(wl, in_layout)} form, "
            f"unmasked blocks {unmasked_blocks(wl, v)}")
    assert_close(got[:, c0:c1], expected, what=what)
    untouched = dst.array.copy()
    out_layout.interior(untouched, n)[:, c0:c1] = SENTINEL
    assert np.all(untouched == SENTINEL), f"kernel wrote outside its output channels: {what}"


CASES = [
    # (op, kwargs, input shape)
    ("MaxPool", dict(kernel=(2, 2), strides=(2, 2)), (1, 3, 224 // 8, 224 // 8)),
    ("MaxPool", dict(kernel=(2, 2), strides=(2, 2)), (2, 2, 70, 70)),  # VGG-like, 35 outputs
    ("MaxPool", dict(kernel=(3, 3), strides=(2, 2)), (1, 3, 55, 55)),  # CaffeNet
    ("MaxPool", dict(kernel=(3, 3), strides=(2, 2), ceil_mode=1), (1, 2, 56, 56)),  # GoogLeNet
    ("MaxPool", dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), (1, 3, 28, 28)),
    ("MaxPool", dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (3, 2, 112, 112)),  # ResNet
    ("MaxPool", dict(kernel=(3, 3), strides=(3, 3), pads=(0, 2, 1, 0), dilations=(2, 1)), (1, 2, 17, 31)),
    ("MaxPool", dict(kernel=(1, 5), strides=(1, 4), pads=(0, 4, 0, 3)), (1, 2, 3, 9)),
    ("MaxPool", dict(kernel=(2, 3), strides=(1, 2), ceil_mode=1, dilations=(2, 2)), (1, 2, 9, 40)),
    ("AveragePool", dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), (1, 3, 14, 14)),
    ("AveragePool", dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), count_include_pad=1),
     (1, 3, 17, 33)),
    ("AveragePool", dict(kernel=(5, 5), strides=(3, 3)), (2, 3, 14, 14)),  # GoogLeNet aux
    ("AveragePool", dict(kernel=(7, 7), strides=(1, 1)), (1, 5, 7, 7)),
    ("AveragePool", dict(kernel=(3, 2), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=1,
                         count_include_pad=1), (1, 2, 10, 15)),
    ("AveragePool", dict(kernel=(2, 2), strides=(2, 2), ceil_mode=1), (1, 2, 5, 21)),
    ("GlobalAveragePool", {}, (2, 5, 7, 7)),
    ("GlobalAveragePool", {}, (1, 3, 1, 1)),
    ("GlobalMaxPool", {}, (1, 4, 13, 19)),
    # one window over the whole plane (pool_plane.ll.j2): rows of whole vectors, of a masked
    # tail, of both; a window pool as large as its input
    ("GlobalAveragePool", {}, (2, 3, 5, 40)),
    ("GlobalMaxPool", {}, (1, 3, 9, 32)),
    ("GlobalAveragePool", {}, (1, 2, 3, 3)),
    ("AveragePool", dict(kernel=(5, 37), strides=(1, 1)), (1, 2, 5, 37)),
    ("MaxPool", dict(kernel=(3, 3), strides=(2, 2), ceil_mode=1), (2, 3, 3, 3)),
    # overlapping windows over maps shorter than the window (every window row clamped), tall
    # and dilated-free windows with pads and ceil mode: the separable kernel's edges
    ("MaxPool", dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), (1, 2, 1, 5)),
    ("MaxPool", dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), (2, 2, 2, 1)),
    ("AveragePool", dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=1),
     (1, 3, 1, 3)),
    ("AveragePool", dict(kernel=(4, 3), strides=(1, 2), pads=(2, 1, 2, 1), ceil_mode=1), (1, 3, 5, 18)),
    ("MaxPool", dict(kernel=(5, 2), strides=(2, 1), pads=(2, 0, 2, 1), ceil_mode=1), (2, 3, 9, 40)),
]


@pytest.fixture(params=["any", "window"])
def form(request, monkeypatch):
    """Each pool as codegen chooses it (small planes with overlapping windows: the separable
    kernel), then with every such pool forced to the window kernel."""
    if request.param == "window":
        monkeypatch.setattr(pool_codegen, "SEPARABLE_MAX_PLANE_BYTES", 0)
    return request.param


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("op,kwargs,shape", CASES, ids=lambda c: str(c))
def test_pool_matches_the_reference(op, kwargs, shape, target_name, form):
    run_pool(pool_node(op, **kwargs), shape, target_name)


def test_forms_follow_windows_and_plane_sizes():
    """Overlapping windows over a small plane: separable; over a plane past L1's size, or
    windows that do not overlap: the window kernel; one window per plane: the plane kernel."""
    three = pool_workload(pool_node("MaxPool", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), 8, 28, 28)
    small = Layout.padded(8, 28, 28, (1, 1, 1, 1), align=16)
    large = Layout.padded(8, 112, 112, (1, 1, 1, 1), align=16)
    assert pool_codegen.pool_form(three, small) == "separable"
    assert pool_codegen.pool_form(three, large) == "window"
    two = pool_workload(pool_node("MaxPool", kernel=(2, 2), strides=(2, 2)), 8, 28, 28)
    assert pool_codegen.pool_form(two, small) == "window"
    dilated = pool_workload(pool_node("MaxPool", kernel=(3, 3), strides=(1, 1), dilations=(2, 1)), 8, 28, 28)
    assert pool_codegen.pool_form(dilated, small) == "window"
    assert pool_codegen.pool_form(pool_workload(pool_node("GlobalMaxPool"), 8, 28, 28), large) == "plane"
    assert pool_codegen.carried_rows(three) == 1
    assert pool_codegen.carried_rows(pool_workload(pool_node("AveragePool", kernel=(5, 5), strides=(1, 1)), 8, 9, 9)) == 4


@pytest.mark.parametrize("target_name", TARGETS)
def test_unpadded_layouts_and_a_channel_range(target_name):
    node = pool_node("MaxPool", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    run_pool(node, (2, 6, 19, 37), target_name, in_pads=(0, 0, 0, 0), out_pads=(0, 0, 0, 0),
             channels=(2, 5))


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_nan_and_inf_propagate_as_in_the_reference(op, form):
    x = np.random.default_rng(1).standard_normal((1, 2, 9, 20)).astype(np.float32)
    x[0, 0, 3, 4], x[0, 1, 0, 0], x[0, 1, 8, 19] = np.nan, np.inf, -np.inf
    run_pool(pool_node(op, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), x.shape,
             TARGETS[-1], x=x)


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("kernel, strides, pads", [((3, 3), (1, 1), (1, 1, 1, 1)),
                                                   ((2, 2), (2, 2), (0, 0, 0, 0)),
                                                   ((1, 4), (1, 3), (0, 1, 0, 2)),
                                                   ((5, 5), (2, 2), (2, 2, 2, 2))])
def test_max_pool_windows_with_a_nan_anywhere_are_nan(target_name, kernel, strides, pads, form):
    """A NaN in any position of a window (first, middle or last column, before or after the
    window's largest value) makes the window's max NaN; windows without one keep their max,
    whatever infinities they hold. (The max itself is x86's, which drops a NaN operand.)"""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 11, 21)).astype(np.float32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=flat.size // 15, replace=False)
    flat[picks[:len(picks) // 2]] = np.nan
    flat[picks[len(picks) // 2:]] = rng.choice([np.inf, -np.inf, 50.0], size=len(picks) - len(picks) // 2)
    run_pool(pool_node("MaxPool", kernel=kernel, strides=strides, pads=pads), x.shape,
             target_name, x=x)


@pytest.mark.parametrize("target_name", TARGETS)
@pytest.mark.parametrize("op", ["GlobalMaxPool", "GlobalAveragePool"])
def test_whole_plane_pools_keep_nan_and_infinities(target_name, op):
    """A NaN anywhere in a channel (a whole vector, the masked tail, the last row) makes its max
    and mean NaN; infinities survive a max and make a mean infinite; the tail's masked lanes
    are never taken for data (every input pad holds NaN)."""
    x = np.random.default_rng(5).standard_normal((2, 6, 4, 21)).astype(np.float32)
    x[0, 0, 1, 3] = x[0, 1, 3, 20] = x[1, 2, 0, 17] = np.nan
    x[0, 3, 2, 5] = np.inf
    x[1, 4, 3, 20] = -np.inf
    x[1, 5] = -3.0  # all negative: a max that let a zero in would show
    run_pool(pool_node(op), x.shape, target_name, x=x)
    run_pool(pool_node(op), x.shape, target_name, x=x, channels=(1, 4), in_pads=(0, 0, 0, 0))


def test_windows_over_the_whole_plane_reduce_the_plane():
    from sparsejit.codegen.pool import pool_variant
    from sparsejit.kernels.pool import covers_whole_plane

    assert covers_whole_plane(pool_workload(pool_node("GlobalAveragePool"), 8, 7, 7))
    assert covers_whole_plane(pool_workload(pool_node("AveragePool", kernel=(7, 7), strides=(1, 1)), 8, 7, 7))
    assert not covers_whole_plane(pool_workload(pool_node("AveragePool", kernel=(7, 7), strides=(1, 1),
                                                          pads=(1, 1, 1, 1)), 8, 7, 7))
    assert not covers_whole_plane(pool_workload(pool_node("MaxPool", kernel=(2, 2)), 8, 4, 4))
    small = Layout.padded(8, 7, 7, (1, 1, 1, 1), align=16)
    assert pool_variant(pool_workload(pool_node("GlobalMaxPool"), 8, 7, 7), 16, small) == "plane_max_v16"
    assert pool_variant(pool_workload(pool_node("MaxPool", kernel=(2, 2)), 8, 4, 4), 16, small) == "max_v16"


def test_window_counts_follow_count_include_pad():
    wl = PoolWorkload("avg", 1, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=False)
    assert wl.window_counts(0).tolist() == [2, 3, 2]
    with_pads = PoolWorkload("avg", 1, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=True)
    assert with_pads.window_counts(1).tolist() == [3, 3, 3]


def test_bad_workloads_are_refused():
    with pytest.raises(ValueError, match="kind"):
        PoolWorkload("min", 1, 4, 4, (2, 2))
    with pytest.raises(ValueError, match="strides"):
        PoolWorkload("max", 1, 4, 4, (2, 2), (0, 1))
