"""The ends of the opset range: opset 6 forms (legacy broadcast, is_test, spatial, Gemm's
broadcast), and the check that opsets 22..MAX_OPSET change only element types of supported ops.

onnxruntime runs opset 7 and later only, so opset 6 results are checked against numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from sparsejit.errors import ModelError, UnsupportedError
from sparsejit.frontend.onnx_import import MAX_OPSET, SUPPORTED_OPS, import_graph
from sparsejit.graph.fold import simplify
from sparsejit.kernels.reference import run_graph
from tests.onnx_helpers import make_model, node_model

F32 = np.float32
RNG = np.random.default_rng(6)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The reference's outputs, before and after simplification (both must agree)."""
    graph = import_graph(model)
    before = run_graph(graph, feeds)
    simplify(graph, None)
    after = run_graph(graph, feeds)
    for name in graph.outputs:
        np.testing.assert_array_equal(before[name], after[name])
    return [before[name] for name in graph.outputs]


# -- opset 6 broadcast ---------------------------------------------------------------------------
@pytest.mark.parametrize("op,fn", [("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply),
                                   ("Div", np.divide), ("Pow", np.power)])
@pytest.mark.parametrize("b_shape,axis,aligned", [
    ((3, 4), 1, (3, 4, 1)),  # the middle dims: B gets a trailing unit dim
    ((2,), 0, (2, 1, 1, 1)),
    ((4, 5), None, (4, 5)),  # no axis: suffix matching, as numpy
    ((4, 5), 2, (4, 5)),
    ((2, 1, 4, 1), 0, (2, 1, 4, 1)),  # same rank: unit dims broadcast
])
def test_legacy_broadcast_with_constant_b(op, fn, b_shape, axis, aligned):
    a = RNG.uniform(0.5, 2.0, (2, 3, 4, 5)).astype(F32)
    b = RNG.uniform(0.5, 2.0, b_shape).astype(F32)
    attrs = {"broadcast": 1} if axis is None else {"broadcast": 1, "axis": axis}
    model = node_model(op, {"a": a}, {"b": b}, opset=6, **attrs)
    (y,) = _run(model, {"a": a})
    np.testing.assert_allclose(y, fn(a, b.reshape(aligned)), rtol=1e-6)


def test_legacy_broadcast_of_a_runtime_b_onto_an_intermediate():
    # A is an intermediate (its rank comes from ONNX shape inference), B a graph input: an
    # Unsqueeze aligns it.
    x = RNG.standard_normal((2, 3, 4, 5)).astype(F32)
    b = RNG.standard_normal((3,)).astype(F32)
    nodes = [oh.make_node("Relu", ["x"], ["r"]),
             oh.make_node("Mul", ["r", "b"], ["y"], broadcast=1, axis=1)]
    graph = import_graph(make_model(nodes, {"x": x, "b": b}, ["y"], opset=6))
    assert sorted(n.op for n in graph.nodes) == ["Mul", "Relu", "Unsqueeze"]
    (y,) = _run(make_model(nodes, {"x": x, "b": b}, ["y"], opset=6), {"x": x, "b": b})
    np.testing.assert_allclose(y, np.maximum(x, 0) * b[:, None, None], rtol=1e-6)


def test_legacy_equal_with_axis():
    a = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    b = np.array([1, 5], np.int64)
    model = node_model("Equal", {"a": a}, {"b": b}, opset=6, broadcast=1, axis=0)
    (y,) = _run(model, {"a": a})
    np.testing.assert_array_equal(y, a == b[:, None])


def test_legacy_broadcast_that_does_not_fit_is_a_model_error():
    model = node_model("Add", {"a": np.zeros((2, 3), F32)}, {"b": np.zeros((3, 4), F32)},
                       opset=6, broadcast=1, axis=1)
    with pytest.raises(ModelError, match="'add_node'.*axis 1"):
        import_graph(model)


def test_opset_7_broadcasts_the_numpy_way():
    # From opset 7 the attributes are gone: the same shapes broadcast from the last dims.
    a, b = np.ones((2, 3), F32), np.arange(3, dtype=F32)
    (y,) = _run(node_model("Add", {"a": a}, {"b": b}, opset=7), {"a": a})
    np.testing.assert_array_equal(y, a + b)


# -- opset 6 attributes ------------------------------------------------------------------------
def _bn_model(opset: int, **attrs) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    x = RNG.standard_normal((2, 3, 4, 4)).astype(F32)
    s, b, m = (RNG.standard_normal(3).astype(F32) for _ in range(3))
    v = RNG.uniform(0.5, 2.0, 3).astype(F32)
    model = node_model("BatchNormalization", {"x": x}, {"s": s, "b": b, "m": m, "v": v},
                       opset=opset, **attrs)
    c = (slice(None), None, None)
    expected = (x - m[c]) / np.sqrt(v[c] + 1e-5) * s[c] + b[c]
    return model, x, expected


@pytest.mark.parametrize("opset,attrs", [
    (6, {"is_test": 1, "momentum": 0.9}),
    (6, {"is_test": 1, "spatial": 1}),
    (7, {"spatial": 1, "momentum": 0.9}),
    (8, {}),
])
def test_legacy_batchnorm_inference(opset, attrs):
    model, x, expected = _bn_model(opset, **attrs)
    (y,) = _run(model, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,extra", [
    ("BatchNormalization", {k: np.ones(3, F32) for k in "sbmv"}),
    ("Dropout", {}),
])
def test_opset_6_without_is_test_is_training(op, extra):
    model = node_model(op, {"x": np.zeros((1, 3, 2, 2), F32)}, extra, opset=6)
    with pytest.raises(UnsupportedError, match="without is_test=1 runs in training mode"):
        import_graph(model)


def test_opset_6_dropout_in_test_mode_is_an_identity():
    x = RNG.standard_normal((2, 3)).astype(F32)
    (y,) = _run(node_model("Dropout", {"x": x}, opset=6, is_test=1, ratio=0.3), {"x": x})
    np.testing.assert_array_equal(y, x)


def test_opset_6_batchnorm_spatial_0_is_unsupported():
    model, _, _ = _bn_model(6, is_test=1, spatial=0)
    with pytest.raises(UnsupportedError, match="spatial=0"):
        import_graph(model)


def test_opset_6_gemm_broadcast_attribute():
    a = RNG.standard_normal((4, 5)).astype(F32)
    w, c = RNG.standard_normal((3, 5)).astype(F32), RNG.standard_normal(3).astype(F32)
    model = node_model("Gemm", {"a": a}, {"w": w, "c": c}, opset=6, broadcast=1, transB=1)
    (y,) = _run(model, {"a": a})
    np.testing.assert_allclose(y, a @ w.T + c, rtol=1e-5, atol=1e-6)


# -- element types ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64])
def test_small_int_inputs_run_in_the_reference(dtype):
    a = np.array([[1, 2], [3, 4]], dtype)
    (y,) = _run(node_model("Add", {"a": a, "b": a}), {"a": a, "b": a})
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, a + a)


@pytest.mark.parametrize("to", [TensorProto.BFLOAT16, TensorProto.FLOAT8E5M2, TensorProto.INT4])
def test_cast_to_types_outside_numpy_is_unsupported(to):
    with pytest.raises(UnsupportedError, match="Cast to"):
        import_graph(node_model("Cast", {"x": np.zeros(2, F32)}, to=to))


def test_pad_wrap_mode():
    x = np.arange(6, dtype=F32).reshape(2, 3)
    model = node_model("Pad", {"x": x}, {"p": np.array([0, 1, 0, 2], np.int64)}, mode="wrap",
                       opset=19)
    (y,) = _run(model, {"x": x})
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (1, 2)), mode="wrap"))


# -- opsets past 21 ---------------------------------------------------------------------------
# The only changes past opset 21 that are more than new element types, and why they are moot.
_KNOWN_NEW_ATTRIBUTES = {
    ("Cast", "round_mode"),  # applies to float8e8m0 only, which sparsejit refuses
    ("Range", "stash_type"),  # applies to float16/bfloat16 inputs only
}


def _signature(schema: onnx.defs.OpSchema) -> tuple:
    attrs = {(name, a.type, a.required) for name, a in schema.attributes.items()}
    inputs = [(i.name, i.option) for i in schema.inputs]
    outputs = [(o.name, o.option) for o in schema.outputs]
    return attrs, inputs, outputs


@pytest.mark.parametrize("op", sorted(SUPPORTED_OPS))
def test_opsets_past_21_only_add_element_types(op):
    """Raising MAX_OPSET needs the new opsets' changes of every supported op to be checked."""
    old = onnx.defs.get_schema(op, 21)
    old_attrs, old_inputs, old_outputs = _signature(old)
    for opset in range(22, MAX_OPSET + 1):
        schema = onnx.defs.get_schema(op, opset)
        if schema.since_version <= 21:
            continue
        attrs, inputs, outputs = _signature(schema)
        new = {(op, name) for name, _, _ in attrs - old_attrs}
        assert new <= _KNOWN_NEW_ATTRIBUTES, f"{op}-{schema.since_version} adds {new}"
        assert (inputs, outputs) == (old_inputs, old_outputs), f"{op}-{schema.since_version}"
