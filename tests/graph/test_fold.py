"""Constant folding and simplify: shape chains of PyTorch exports collapse, results unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as oh

from sparsejit.frontend.onnx_import import import_graph
from sparsejit.graph.fold import fold_constants, simplify
from sparsejit.kernels.reference import run_graph
from tests.onnx_helpers import check_against_ort, make_model, run_ort
from tests.tolerances import assert_close

F32, I64 = np.float32, np.int64


def _pytorch_flatten_model(opset: int):
    """conv -> relu -> x.view(x.size(0), -1) -> fc, as torch.onnx exports it."""
    unsq = (oh.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]) if opset < 13
            else oh.make_node("Unsqueeze", ["n", "ax0"], ["n1"]))
    nodes = [
        oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
        oh.make_node("Relu", ["c"], ["r"]),
        oh.make_node("Shape", ["r"], ["s"]),
        oh.make_node("Constant", [], ["idx"],
                     value=oh.make_tensor("i", TensorProto.INT64, [], [0])),
        oh.make_node("Gather", ["s", "idx"], ["n"], axis=0),
        unsq,
        oh.make_node("Constant", [], ["m1"], value_ints=[-1]),
        oh.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
        oh.make_node("Reshape", ["r", "shape"], ["flat"]),
        oh.make_node("Gemm", ["flat", "fc", "fcb"], ["y"], transB=1, name="fc"),
    ]
    rng = np.random.default_rng(11)
    consts = {"w": rng.standard_normal((4, 3, 3, 3)).astype(F32),
              "b": rng.standard_normal(4).astype(F32),
              "fc": rng.standard_normal((5, 4 * 6 * 6)).astype(F32),
              "fcb": rng.standard_normal(5).astype(F32),
              "ax0": np.array([0], I64)}
    model = make_model(nodes, {}, ["y"], consts, opset)
    model.graph.input.append(oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6]))
    return model


@pytest.mark.parametrize("opset", [9, 13])
def test_pytorch_shape_chain_folds_away(opset):
    model = _pytorch_flatten_model(opset)
    graph = import_graph(model)
    x = np.random.default_rng(12).standard_normal((2, 3, 6, 6)).astype(F32)
    simplify(graph, 2)
    assert [n.op for n in graph.topo_order()] == ["Conv", "Relu", "Reshape", "Gemm"]
    reshape = next(n for n in graph.nodes if n.op == "Reshape")
    np.testing.assert_array_equal(graph.const(reshape.inputs[1]), [2, -1])
    assert graph.values["flat"].shape == (2, 144)
    (expected,) = run_ort(model, {"x": x})
    assert_close(run_graph(graph, {"x": x})["y"], expected, what=f"folded chain opset {opset}")


def test_constant_subgraph_folds_and_settings_are_absorbed():
    # Clip bounds computed from constants: after folding they become attributes.
    nodes = [
        oh.make_node("Mul", ["six", "half"], ["hi"]),
        oh.make_node("Neg", ["hi"], ["lo"]),
        oh.make_node("Clip", ["x", "lo", "hi"], ["y"]),
    ]
    consts = {"six": np.array(6, F32), "half": np.array(0.5, F32)}
    x = np.linspace(-5, 5, 11).astype(F32)
    model = make_model(nodes, {"x": x}, ["y"], consts)
    graph = check_against_ort(model, {"x": x}, "constant clip bounds")
    simplify(graph, None)
    (clip,) = graph.nodes
    assert clip.inputs == ["x"] and clip.attrs["min"] == -3.0 and clip.attrs["max"] == 3.0


def test_fold_keeps_runtime_nodes_and_output_names():
    nodes = [oh.make_node("Add", ["a", "b"], ["c"]), oh.make_node("Mul", ["x", "c"], ["y"])]
    consts = {"a": np.ones(3, F32), "b": np.full(3, 2, F32)}
    graph = import_graph(make_model(nodes, {"x": np.zeros(3, F32)}, ["y"], consts))
    fold_constants(graph)
    assert [n.op for n in graph.nodes] == ["Mul"]
    np.testing.assert_array_equal(graph.const("c"), [3, 3, 3])
    assert graph.outputs == ["y"]


def test_shape_of_static_tensor_folds_after_inference():
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Shape", ["r"], ["y"])]
    model = make_model(nodes, {"x": np.zeros((2, 3), F32)}, ["y"])
    graph = import_graph(model)
    before = copy.deepcopy(graph)
    simplify(graph, None)
    assert graph.nodes == [] and graph.values["y"].is_const
    np.testing.assert_array_equal(graph.const("y"), [2, 3])
    assert len(before.nodes) == 2


def test_expand_and_constant_of_shape_chain():
    # ConstantOfShape(Shape(x)) + x, as exports of ones_like / zeros_like look.
    nodes = [oh.make_node("Shape", ["x"], ["s"]),
             oh.make_node("ConstantOfShape", ["s"], ["ones"],
                          value=oh.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             oh.make_node("Add", ["x", "ones"], ["y"])]
    x = np.arange(6, dtype=F32).reshape(2, 3)
    graph = check_against_ort(make_model(nodes, {"x": x}, ["y"]), {"x": x}, "ones_like")
    simplify(graph, None)
    assert [n.op for n in graph.nodes] == ["Add"]
