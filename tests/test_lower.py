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
