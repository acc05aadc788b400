"""Merging two summed pointwise convs into one conv over their joined inputs (graph/merge.py):
the rewrite keeps results (reference before and after; compiled against onnxruntime), and
leaves alone every Add it cannot merge."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import helper as oh
from onnx import numpy_helper

import sparsejit
from sparsejit import targets
from sparsejit.compiler import _block_alike
from sparsejit.frontend.onnx_import import import_graph
from sparsejit.graph.fold import simplify
from sparsejit.graph.merge import merge_summed_pointwise_convs
from sparsejit.kernels.reference import run_graph
from tests.onnx_helpers import make_model, run_ort
from tests.tolerances import assert_close

F32 = np.float32


def _pruned(rng, shape, density):
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(F32)


def _block(seed, batch=1, size=9, stride=2, ca=5, cb=7, m=11, density=(0.3, 0.3), bias=(True, False),
           relu=True, attrs_a=None, attrs_b=None, extra_reader=False, kernel_b=1):
    """y = [Relu](Conv(a, Wa) + Conv(x, Wb, strides)) where a = Relu(x') at the output size."""
    rng = np.random.default_rng(seed)
    out = -(-size // stride)
    x = rng.standard_normal((batch, cb, size, size)).astype(F32)
    a = rng.standard_normal((batch, ca, out, out)).astype(F32)
    consts = {"wa": _pruned(rng, (m, ca, 1, 1), density[0]),
              "wb": _pruned(rng, (m, cb, kernel_b, kernel_b), density[1])}
    ins_a, ins_b = ["ar", "wa"], ["x", "wb"]
    if bias[0]:
        consts["ba"] = rng.standard_normal(m).astype(F32)
        ins_a.append("ba")
    if bias[1]:
        consts["bb"] = rng.standard_normal(m).astype(F32)
        ins_b.append("bb")
    nodes = [oh.make_node("Relu", ["a"], ["ar"], name="pre"),
             oh.make_node("Conv", ins_a, ["ca"], name="conv_a", **(attrs_a or {})),
             oh.make_node("Conv", ins_b, ["cb"], name="conv_b", strides=[stride, stride], **(attrs_b or {})),
             oh.make_node("Add", ["ca", "cb"], ["s"], name="add")]
    outputs = ["y"]
    nodes.append(oh.make_node("Relu", ["s"], ["y"], name="post") if relu
                 else oh.make_node("Identity", ["s"], ["y"], name="post"))
    if extra_reader:
        nodes.append(oh.make_node("Neg", ["cb"], ["nb"], name="neg"))
        outputs.append("nb")
    model = make_model(nodes, {"a": a, "x": x}, outputs, consts)
    return model, {"a": a, "x": x}


def _merged_graph(model, batch):
    graph = import_graph(model)
    simplify(graph, batch)
    before = copy.deepcopy(graph)
    merge_summed_pointwise_convs(graph, _block_alike(targets.get("avx512")))
    return before, graph


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("bias", [(True, True), (False, True), (False, False)])
def test_the_sum_of_two_pointwise_convs_becomes_one_conv(stride, bias):
    model, feeds = _block(stride, batch=2, stride=stride, bias=bias)
    before, graph = _merged_graph(model, 2)
    ops = sorted(n.op for n in graph.nodes)
    want = ["Concat", "Conv", "Relu", "Relu"] + (["MaxPool"] if stride > 1 else [])
    assert ops == sorted(want), ops
    (conv,) = [n for n in graph.nodes if n.op == "Conv"]
    assert conv.name == "conv_a+conv_b" and conv.outputs == ["s"]
    assert graph.const(conv.inputs[1]).shape == (11, 12, 1, 1)
    want_out, got_out = run_graph(before, feeds), run_graph(graph, feeds)
    assert_close(got_out["y"], want_out["y"], what=f"merged, stride {stride}")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size, stride, density", [
    (9, 2, (0.3, 0.3)),  # odd map, rows not a multiple of the vector
    (14, 2, (0.1, 0.1)),
    (7, 1, (0.0, 0.3)),  # one conv pruned away entirely
    (5, 1, (1.0, 1.0)),  # both dense
    (16, 3, (0.3, 0.3)),
])
def test_merged_block_compiles_to_the_onnxruntime_answer(batch, size, stride, density):
    model, feeds = _block(size + batch, batch=batch, size=size, stride=stride, density=density,
                          ca=6, cb=9, m=17, bias=(True, True))
    cm = sparsejit.compile(model, threads=1)
    names = {info.name for info in cm.layers}
    assert "conv_a+conv_b" in names and "conv_a" not in names, names
    got = cm.run(feeds)
    (want,) = run_ort(model, feeds)
    assert_close(got["y"], want, what=f"merged block {size} / {stride}")


def test_the_single_nonzero_of_each_conv_lands_in_the_right_output():
    """One nonzero per conv: output channel 3 reads input channel 2 of a, channel 8 reads input
    channel 6 of x (the joined input's channel ca + 6)."""
    model, feeds = _block(1, size=12, stride=2, density=(0.0, 0.0), bias=(False, False), relu=False)
    for init in model.graph.initializer:
        if init.name in ("wa", "wb"):
            w = np.zeros(tuple(init.dims), F32)
            w[(3, 2) if init.name == "wa" else (8, 6)] = 2.0 if init.name == "wa" else -1.5
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    got = sparsejit.compile(model, threads=1).run(feeds)["y"]
    want = np.zeros_like(got)
    want[:, 3] = 2.0 * np.maximum(feeds["a"][:, 2], 0)
    want[:, 8] = -1.5 * feeds["x"][:, 6, ::2, ::2]
    assert_close(got, want, what="one nonzero each")


def _case(case):
    """A model whose Add of two conv outputs must not merge, and its feeds."""
    if case == "both_strided":
        return _pair((6, 3, 1, 1), (6, 4, 1, 1), (1, 3, 8, 8), (1, 4, 8, 8),
                     {"strides": [2, 2]}, {"strides": [2, 2]})
    if case == "padded":  # a padded 1x1 conv's output is larger than its input
        return _pair((6, 3, 1, 1), (6, 4, 1, 1), (1, 3, 5, 5), (1, 4, 7, 7), {"pads": [1, 1, 1, 1]}, {})
    if case == "grouped":
        return _pair((6, 3, 1, 1), (6, 2, 1, 1), (1, 3, 5, 5), (1, 4, 5, 5), {}, {"group": 2})
    if case == "broadcast":  # 1 output channel + 6: numpy broadcasting, not a sum of two convs
        return _pair((1, 3, 1, 1), (6, 4, 1, 1), (1, 3, 5, 5), (1, 4, 5, 5), {}, {})
    kw = {"other_reader": dict(extra_reader=True),
          "3x3": dict(kernel_b=3, attrs_b={"pads": [1, 1, 1, 1]}, stride=1, size=5),
          "dense_and_sparse": dict(density=(1.0, 0.1)),
          "dilated": dict(attrs_b={"dilations": [2, 2]}, stride=1, size=5)}[case]
    return _block(7, **kw)


@pytest.mark.parametrize("case", ["other_reader", "both_strided", "padded", "grouped", "3x3",
                                  "dense_and_sparse", "dilated", "broadcast"])
def test_adds_that_cannot_merge_are_left(case):
    model, feeds = _case(case)
    before, graph = _merged_graph(model, 1)
    assert sorted(n.op for n in graph.nodes) == sorted(n.op for n in before.nodes), case
    got = sparsejit.compile(model, threads=1).run(feeds)
    for name, want in zip(got, run_ort(model, feeds)):
        assert_close(got[name], want, what=case)


def _pair(wa_shape, wb_shape, a_shape, x_shape, attrs_a, attrs_b, seed=11):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(a_shape).astype(F32)
    x = rng.standard_normal(x_shape).astype(F32)
    consts = {"wa": _pruned(rng, wa_shape, 0.3), "wb": _pruned(rng, wb_shape, 0.3)}
    nodes = [oh.make_node("Conv", ["a", "wa"], ["ca"], name="conv_a", **attrs_a),
             oh.make_node("Conv", ["x", "wb"], ["cb"], name="conv_b", **attrs_b),
             oh.make_node("Add", ["ca", "cb"], ["y"], name="add")]
    return make_model(nodes, {"a": a, "x": x}, ["y"], consts), {"a": a, "x": x}
