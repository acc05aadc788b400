"""Build small ONNX models with onnx.helper and compare the reference with onnxruntime on them."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper as oh
from onnx import numpy_helper

from sparsejit.frontend.onnx_import import import_graph
from sparsejit.graph.fold import simplify
from sparsejit.graph.ir import Graph
from sparsejit.graph.shapes import infer_shapes
from sparsejit.kernels.reference import run_graph
from tests.tolerances import assert_close


def _ir_version(opset: int) -> int:
    return 10 if opset >= 21 else 9 if opset >= 19 else 8


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray | tuple],
    outputs: list[str],
    consts: dict[str, np.ndarray] | None = None,
    opset: int = 13,
) -> onnx.ModelProto:
    """A model of `nodes`: runtime inputs given by example arrays (or (shape, np dtype) pairs),
    initializers from `consts`, outputs with no declared type."""
    infos = []
    for name, x in inputs.items():
        shape, dtype = (x.shape, x.dtype) if isinstance(x, np.ndarray) else x
        elem = oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
        infos.append(oh.make_tensor_value_info(name, elem, list(shape)))
    graph = oh.make_graph(
        nodes,
        "test",
        infos,
        [oh.make_empty_tensor_value_info(o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (consts or {}).items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = _ir_version(opset)
    return model


def node_model(
    op: str,
    feeds: dict[str, np.ndarray],
    consts: dict[str, np.ndarray] | None = None,
    order: list[str] | None = None,
    opset: int = 13,
    n_outputs: int = 1,
    **attrs,
) -> onnx.ModelProto:
    """A one-node model; `order` lists the node's inputs ('' for an omitted one), by default
    the feeds then the constants."""
    consts = consts or {}
    names = order if order is not None else [*feeds, *consts]
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = oh.make_node(op, names, outputs, name=f"{op.lower()}_node", **attrs)
    return make_model([node], feeds, outputs, consts, opset)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_against_ort(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str, batch: int | None = None
) -> Graph:
    """Reference == onnxruntime on every output, with the right dtype; inferred shapes == the
    actual ones; and the same again after simplify (folding must not change results)."""
    expected = run_ort(model, feeds)
    graph = import_graph(model)
    names = graph.outputs
    got = run_graph(graph, feeds)
    for name, exp in zip(names, expected):
        assert got[name].dtype == exp.dtype, f"{what}: {name} dtype {got[name].dtype}"
        if exp.dtype.kind in "biu":
            np.testing.assert_array_equal(got[name], exp, err_msg=what)
        else:
            assert_close(got[name], exp, what=f"{what}: {name}")
    shaped = copy.deepcopy(graph)
    infer_shapes(shaped, batch)
    for name, exp in zip(names, expected):
        value = shaped.values[name]
        assert value.shape == exp.shape, f"{what}: inferred {name} {value.shape} != {exp.shape}"
        assert value.dtype == exp.dtype, f"{what}: inferred {name} dtype {value.dtype}"
    simplified = copy.deepcopy(graph)
    simplify(simplified, batch)
    again = run_graph(simplified, feeds)
    for name, exp in zip(names, expected):
        if exp.dtype.kind in "biu":
            np.testing.assert_array_equal(again[name], exp, err_msg=f"{what} (simplified)")
        else:
            assert_close(again[name], exp, what=f"{what}: {name} (simplified)")
    return graph
