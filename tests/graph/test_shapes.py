"""Shape inference: per-op rules, auto_pad resolution, batch binding and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as oh

from sparsejit.errors import InputError, ModelError
from sparsejit.frontend.onnx_import import import_graph
from sparsejit.graph.shapes import infer_shapes
from tests.onnx_helpers import make_model, node_model

F32, I64 = np.float32, np.int64


def _symbolic_model(nodes, outputs, consts=None, shape=("N", 3, 8, 8), opset=13):
    model = make_model(nodes, {}, outputs, consts, opset)
    model.graph.input.append(oh.make_tensor_value_info("x", TensorProto.FLOAT, list(shape)))
    return model


def _conv(**attrs):
    return oh.make_node("Conv", ["x", "w"], ["y"], name="conv1", **attrs)


@pytest.mark.parametrize("attrs,in_hw,out_hw,pads", [
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (8, 9), (4, 5), [0, 1, 1, 1]),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (8, 9), (4, 5), [1, 1, 0, 1]),
    ({"auto_pad": "SAME_UPPER"}, (7, 7), (7, 7), [1, 1, 1, 1]),
    ({"pads": [0, 1, 2, 3], "strides": [1, 2]}, (8, 8), (8, 5), [0, 1, 2, 3]),
    ({"dilations": [2, 2]}, (9, 9), (5, 5), [0, 0, 0, 0]),
])
def test_conv_shapes_and_auto_pad(attrs, in_hw, out_hw, pads):
    consts = {"w": np.ones((5, 3, 3, 3), F32)}
    graph = import_graph(_symbolic_model([_conv(**attrs)], ["y"], consts, ("N", 3, *in_hw)))
    infer_shapes(graph, 4)
    assert graph.values["y"].shape == (4, 5, *out_hw)
    conv = graph.nodes[0]
    assert conv.attrs["pads"] == pads and conv.attrs["auto_pad"] == "NOTSET"


def test_channel_mismatch_names_the_node():
    consts = {"w": np.ones((8, 48, 3, 3), F32)}
    model = _symbolic_model([_conv(group=2)], ["y"], consts, (1, 96 + 4, 8, 8))
    graph = import_graph(model)
    graph.nodes[0].name = "conv2"
    with pytest.raises(ModelError, match="node 'conv2' \\(Conv\\): input has 100 channels, "
                                         "weight expects 48 x group 2"):
        infer_shapes(graph, 1)


def test_too_small_input_is_a_model_error():
    graph = import_graph(_symbolic_model([_conv()], ["y"], {"w": np.ones((2, 3, 3, 3), F32)},
                                         (1, 3, 2, 2)))
    with pytest.raises(ModelError, match="conv1.*too small"):
        infer_shapes(graph, 1)


@pytest.mark.parametrize("kw,ceil,out", [(3, 0, 3), (3, 1, 4), (2, 1, 4)])
def test_pool_ceil_mode_shapes(kw, ceil, out):
    node = oh.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kw, kw], strides=[2, 2],
                        ceil_mode=ceil)
    graph = import_graph(_symbolic_model([node], ["y"], shape=(1, 3, 8, 8)))
    infer_shapes(graph, None)
    assert graph.values["y"].shape == (1, 3, out, out)


def test_batch_binds_first_dim_only():
    graph = import_graph(_symbolic_model([oh.make_node("Relu", ["x"], ["y"])], ["y"]))
    infer_shapes(graph, 3)
    assert graph.values["x"].shape == (3, 3, 8, 8) and graph.values["y"].shape == (3, 3, 8, 8)


def test_symbolic_spatial_dim_names_input_and_dim():
    model = _symbolic_model([oh.make_node("Relu", ["x"], ["y"])], ["y"], shape=("N", 3, "H", 8))
    with pytest.raises(ModelError, match="input 'x' has symbolic dim 2 \\('H'\\)"):
        infer_shapes(import_graph(model), 1)


def test_bad_batch_is_an_input_error():
    graph = import_graph(_symbolic_model([oh.make_node("Relu", ["x"], ["y"])], ["y"]))
    with pytest.raises(InputError):
        infer_shapes(graph, 0)


def test_unbound_batch_propagates_symbolically():
    nodes = [
        _conv(pads=[1, 1, 1, 1]),
        oh.make_node("GlobalAveragePool", ["y"], ["g"]),
        oh.make_node("Flatten", ["g"], ["f"]),
        oh.make_node("Gemm", ["f", "fc"], ["out"]),
        oh.make_node("Reshape", ["out", "s"], ["r"]),
    ]
    consts = {"w": np.ones((5, 3, 3, 3), F32), "fc": np.ones((5, 10), F32),
              "s": np.array([-1, 2, 5], I64)}
    graph = import_graph(_symbolic_model(nodes, ["r"], consts))
    infer_shapes(graph, None)
    assert graph.values["y"].shape == ("N", 5, 8, 8)
    assert graph.values["out"].shape == ("N", 10)
    assert graph.values["r"].shape == ("N", 2, 5)


def test_shape_chain_with_unbound_batch_asks_for_a_batch():
    nodes = [
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Slice", ["s", "zero", "one"], ["n"]),
        oh.make_node("Concat", ["n", "m1"], ["shape"], axis=0),
        oh.make_node("Reshape", ["x", "shape"], ["y"], name="reshape1"),
    ]
    consts = {"zero": np.array([0], I64), "one": np.array([1], I64), "m1": np.array([-1], I64)}
    graph = import_graph(_symbolic_model(nodes, ["y"], consts))
    with pytest.raises(ModelError, match="reshape1.*give a batch size"):
        infer_shapes(graph, None)
    infer_shapes(graph, 2)
    assert graph.values["y"].shape == (2, 192)


@pytest.mark.parametrize("op,feeds,consts,attrs,opset,expected", [
    ("Unsqueeze", {"x": (3, 4)}, {"a": np.array([0, -1], I64)}, {}, 13, (1, 3, 4, 1)),
    ("Squeeze", {"x": (3, 1, 4, 1)}, None, {}, 13, (3, 4)),
    ("Transpose", {"x": (2, 3, 4)}, None, {}, 13, (4, 3, 2)),
    ("Flatten", {"x": (2, 3, 4)}, None, {"axis": 0}, 13, (1, 24)),
    ("Concat", {"a": (2, 3), "b": (2, 5)}, None, {"axis": -1}, 13, (2, 8)),
    ("Slice", {"x": (10, 4)}, {"s": np.array([8], I64), "e": np.array([1], I64),
                               "a": np.array([0], I64), "st": np.array([-3], I64)},
     {}, 13, (3, 4)),
    ("Pad", {"x": (2, 3)}, {"p": np.array([1, 0, 2, -1], I64)}, {}, 13, (5, 2)),
    ("MatMul", {"a": (4, 1, 2, 3), "b": (5, 3, 6)}, None, {}, 13, (4, 5, 2, 6)),
    ("Gather", {"x": (4, 5, 6)}, {"i": np.array([[0, 1]], I64)}, {"axis": 1}, 13, (4, 1, 2, 6)),
    ("ReduceMean", {"x": (2, 3, 4)}, None, {"axes": [1], "keepdims": 0}, 13, (2, 4)),
    ("Expand", {"x": (3, 1)}, {"s": np.array([2, 1, 5], I64)}, {}, 13, (2, 3, 5)),
])
def test_layout_shapes(op, feeds, consts, attrs, opset, expected):
    feeds = {k: np.zeros(v, F32) for k, v in feeds.items()}
    graph = import_graph(node_model(op, feeds, consts, opset=opset, **attrs))
    infer_shapes(graph, None)
    assert graph.values["y0"].shape == expected


def test_split_fills_sizes_and_dtypes():
    model = node_model("Split", {"x": np.zeros((7, 2), F32)}, n_outputs=3, opset=18,
                       num_outputs=3)
    graph = import_graph(model)
    infer_shapes(graph, None)
    assert [graph.values[f"y{i}"].shape for i in range(3)] == [(3, 2), (3, 2), (1, 2)]
    assert graph.nodes[0].attrs["split"] == [3, 3, 1]


def test_dtypes_are_inferred():
    nodes = [oh.make_node("Shape", ["x"], ["s"]), oh.make_node("Cast", ["x"], ["c"], to=7),
             oh.make_node("Equal", ["c", "c"], ["e"])]
    graph = import_graph(_symbolic_model(nodes, ["s", "e"]))
    infer_shapes(graph, 1)
    assert graph.values["s"].dtype == I64 and graph.values["s"].shape == (4,)
    assert graph.values["c"].dtype == I64 and graph.values["e"].dtype == np.bool_


def test_broadcast_mismatch_names_the_node():
    model = node_model("Add", {"a": np.zeros((2, 3), F32), "b": np.zeros((4,), F32)})
    with pytest.raises(ModelError, match="add_node.*do not broadcast"):
        infer_shapes(import_graph(model), None)


def test_gemm_inner_dim_mismatch():
    model = node_model("Gemm", {"a": np.zeros((2, 3), F32)}, {"b": np.zeros((4, 5), F32)})
    with pytest.raises(ModelError, match="gemm_node.*inner dims"):
        infer_shapes(import_graph(model), None)
