"""Lowering decisions: which kernel each node becomes, views, scratch copies, against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import pytest

import sparsejit

from .onnx_helpers import make_model, node_model, run_ort
from .tolerances import assert_close


def compiled_and_checked(model, feeds, threads=1):
    cm = sparsejit.compile(model, threads=threads)
    got = cm.run(feeds)
    for name, want in zip(cm.output_names, run_ort(model, feeds)):
        assert_close(got[name], want, what=name)
    return cm


def kinds(cm) -> dict[str, str]:
    return {info.name: info.kernel for info in cm.layers}


@pytest.mark.parametrize("size, stride", [(9, 2), (14, 2), (10, 3), (7, 2)])
def test_strided_1x1_conv_subsamples_then_runs_flat(size, stride):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 5, size, size)).astype(np.float32)
    w = rng.standard_normal((7, 5, 1, 1)).astype(np.float32) * (rng.random((7, 5, 1, 1)) < 0.3)
    model = node_model("Conv", {"x": x}, {"w": w}, strides=[stride, stride])
    cm = compiled_and_checked(model, {"x": x})
    k = kinds(cm)
    assert k["conv_node:subsample"].startswith("pool subsample")
    assert k["conv_node"].startswith("direct ") and "conv_node:pack" not in k


def _flat_map_size(vector_width: int) -> int:
    """A map size whose 3x3 convs run flat on this vector width (7 x 7 on 16 lanes, 3 x 3 on 8)."""
    from sparsejit.kernels.direct_conv import ConvWorkload, flat_pays, flat_rows
    from sparsejit.kernels.layout import Layout
    for size in (7, 3, 2, 1):
        lay = Layout.padded(1, size, size, (1, 1, 1, 1))
        run = flat_rows(ConvWorkload(1, size, size, 1, (3, 3), pads=(1, 1, 1, 1)), lay, lay, None,
                        vector_width)
        if run is not None and flat_pays(run, vector_width):
            return size
    raise AssertionError(f"no flat map size for {vector_width} lanes")


@pytest.mark.parametrize("batch", [1, 3])
def test_small_maps_share_a_layout_and_their_convs_run_flat(batch):
    """A residual block on a small map (a strided conv into it, 3x3 and 1x1 convs, a fused Add,
    a strided 1x1 shortcut, a global pool after): every tensor of the map gets the same padded
    rows, so the stride-1 convs and the subsampled shortcut run as flat runs."""
    from sparsejit import targets
    size = _flat_map_size(targets.host_target().vector_width)
    rng = np.random.default_rng(batch)

    def weight(m, c, k):
        return (rng.standard_normal((m, c, k, k)) * (rng.random((m, c, k, k)) < 0.4)).astype(np.float32)

    x = rng.standard_normal((batch, 6, 2 * size, 2 * size)).astype(np.float32)
    consts = {"w0": weight(8, 6, 3), "w1": weight(8, 8, 3), "w2": weight(12, 8, 1), "ws": weight(12, 6, 1)}
    nodes = [oh.make_node("Conv", ["x", "w0"], ["a"], name="down", pads=[1, 1, 1, 1], strides=[2, 2]),
             oh.make_node("Relu", ["a"], ["ar"], name="r0"),
             oh.make_node("Conv", ["ar", "w1"], ["b"], name="conv3x3", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["b"], ["br"], name="r1"),
             oh.make_node("Conv", ["br", "w2"], ["c"], name="conv1x1"),
             oh.make_node("Conv", ["x", "ws"], ["s"], name="shortcut", strides=[2, 2]),
             oh.make_node("Add", ["c", "s"], ["d"], name="add"),
             oh.make_node("Relu", ["d"], ["dr"], name="r2"),
             oh.make_node("GlobalAveragePool", ["dr"], ["y"], name="gap")]
    model = make_model(nodes, {"x": x}, ["y", "dr"], consts)
    cm = compiled_and_checked(model, {"x": x})
    flat = {i.name: i.spec.workload.flat_stride for i in cm.lowered().layers if i.spec is not None}
    assert flat["conv3x3"] == flat["conv1x1"] == flat["shortcut"] == size + 2, flat
    assert flat["down"] == 0  # strided: rows of phases, not a flat run


def test_concat_copies_into_the_output_and_flatten_is_a_view():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, 3, 1, 1)).astype(np.float32)
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
             oh.make_node("Concat", ["a", "b", "a"], ["cat"], name="cat", axis=1),
             oh.make_node("Flatten", ["cat"], ["flat"], name="flat"),
             oh.make_node("Relu", ["flat"], ["y"], name="relu")]
    model = make_model(nodes, {"x": x}, ["y", "cat"], {"w1": w1, "w2": w2})
    cm = compiled_and_checked(model, {"x": x})
    k = kinds(cm)
    # a repeated input ("a" twice) keeps the numpy Concat; distinct inputs get repack copies
    assert k["cat"] == "reference (numpy)"
    model = make_model(nodes[:2] + [oh.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1)]
                       + nodes[3:], {"x": x}, ["y", "cat"], {"w1": w1, "w2": w2})
    cm = compiled_and_checked(model, {"x": x}, threads=2)
    k = kinds(cm)
    assert k["cat:in0"].startswith("repack") and k["cat:in1"].startswith("repack")
    assert k["flat"] == "view (no copy)"


def test_a_view_keeps_its_base_buffer_alive():
    """flat = Flatten(p) is read after p's last direct reader: p's buffer must not be reused
    by tensors computed in between."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)  # 1x1: unpadded, same-size buffers
    nodes = [oh.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("Flatten", ["p"], ["flat"], name="flat"),
             oh.make_node("Conv", ["p", "w"], ["c1"], name="c1"),
             oh.make_node("Conv", ["c1", "w"], ["c2"], name="c2"),
             oh.make_node("Conv", ["c2", "w"], ["c3"], name="c3"),
             oh.make_node("Flatten", ["c3"], ["f3"], name="f3"),
             oh.make_node("Add", ["flat", "f3"], ["y"], name="add")]
    model = make_model(nodes, {"x": x}, ["y"], {"w": w})
    cm = compiled_and_checked(model, {"x": x})
    assert kinds(cm)["flat"] == "view (no copy)"


def test_pointwise_conv_inputs_get_vector_aligned_rows_unless_viewed():
    """Rows of a tensor only 1x1 convs read are rounded up to the vector (so each load of the
    conv is aligned), except a plain tensor a Flatten views (the view needs no copy)."""
    from sparsejit import targets
    v = targets.host_target().vector_width
    size = 3 * v // 2 + 1  # neither a multiple of the vector nor a small flat map
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, size, size)).astype(np.float32)
    w = (rng.standard_normal((4, 4, 1, 1)) * (rng.random((4, 4, 1, 1)) < 0.5)).astype(np.float32)
    nodes = [oh.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[1, 1]),
             oh.make_node("Conv", ["p", "w"], ["c1"], name="c1"),
             oh.make_node("Conv", ["c1", "w"], ["c2"], name="c2"),
             oh.make_node("Flatten", ["c2"], ["f"], name="flat"),
             oh.make_node("Conv", ["c2", "w"], ["c3"], name="c3")]
    model = make_model(nodes, {"x": x}, ["c3", "f"], {"w": w})
    cm = compiled_and_checked(model, {"x": x})
    layouts = cm.lowered().layouts
    assert layouts["p"].row_stride % v == 0 and layouts["c1"].row_stride % v == 0
    assert layouts["c2"].is_plain  # viewed by the Flatten
    assert kinds(cm)["flat"] == "view (no copy)"
