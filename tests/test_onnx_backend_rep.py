"""The ONNX backend's prepared model: inputs that decide shapes are compiled per value."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as oh

from sparsejit import onnx_backend
from sparsejit.errors import InputError
from sparsejit.frontend.onnx_import import import_graph
from tests.onnx_helpers import make_model

F32 = np.float32


def _reshape_model():
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Reshape", ["r", "shape"], ["y"])]
    return make_model(nodes, {"x": ((2, 6), F32), "shape": ((2,), np.int64)}, ["y"])


def _pytorch_flatten_model():
    # Shape(x) -> Gather -> Unsqueeze -> Concat -> Reshape: the target follows x's shape only.
    consts = {"zero": np.array(0, np.int64), "minus1": np.array([-1], np.int64),
              "ax": np.array([0], np.int64)}
    nodes = [oh.make_node("Shape", ["x"], ["s"]),
             oh.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             oh.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             oh.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             oh.make_node("Reshape", ["x", "target"], ["y"])]
    return make_model(nodes, {"x": ((2, 3, 4), F32)}, ["y"], consts)


def test_shape_deciding_inputs_follow_values_not_shapes():
    assert onnx_backend.shape_deciding_inputs(import_graph(_reshape_model())) == ["shape"]
    assert onnx_backend.shape_deciding_inputs(import_graph(_pytorch_flatten_model())) == []


def test_model_without_them_compiles_at_prepare():
    rep = onnx_backend.prepare(_pytorch_flatten_model())
    assert rep.model is not None
    x = np.arange(24, dtype=F32).reshape(2, 3, 4)
    np.testing.assert_array_equal(rep.run([x])[0], x.reshape(2, 12))


def test_one_compiled_model_per_distinct_value():
    rep = onnx_backend.prepare(_reshape_model())
    assert rep.model is None and rep.specialised == ["shape"]
    x = np.arange(-6, 6, dtype=F32).reshape(2, 6)
    for target in ([3, 4], [3, 4], [4, -1]):
        (y,) = rep.run({"x": x, "shape": np.array(target, np.int64)})
        np.testing.assert_array_equal(y, np.maximum(x, 0).reshape(target))
    assert len(rep._models) == 2


def test_specialised_input_of_the_wrong_dtype():
    rep = onnx_backend.prepare(_reshape_model())
    with pytest.raises(InputError, match="'shape': dtype float32, expected int64"):
        rep.run([np.zeros((2, 6), F32), np.array([3, 4], F32)])
    with pytest.raises(InputError, match="missing input 'shape'"):
        rep.run({"x": np.zeros((2, 6), F32)})
