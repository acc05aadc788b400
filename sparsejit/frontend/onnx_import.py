"""Load an ONNX model and translate it into the graph IR, with attributes normalised.

`load_model` reads a path, bytes or ModelProto and turns every failure into a ModelError.
`import_graph` checks the opset and ops, makes initializers and Constant nodes into constant
values, normalises attributes (onnx_attrs), moves constant settings inputs into attributes
(config_inputs) and rewrites 1-D convs and pools into 2-D ones (rewrite_1d).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import ModelError, UnsupportedError
from ..graph.config_inputs import absorb_all
from ..graph.ir import Graph, Node, Value
from .legacy_broadcast import rewrite_legacy_broadcast
from .onnx_attrs import SUPPORTED_DTYPES, attr_to_python, normalize_attrs, tensor_to_array
from .rewrite_1d import rewrite_all_1d

# Opset 6 is the first in which every supported op has its released form (older ones carry the
# experimental `consumed_inputs` attributes and attribute-form settings such as Reshape's shape).
# Opsets 22..28 change only which element types the supported ops accept (plus Cast's round_mode,
# for float8e8m0 only, Range's stash_type, for float16/bfloat16 only, and the pools' note that
# ceil_mode windows starting in the end padding are dropped, as sparsejit does); tests/frontend
# checks this against onnx.defs: raise MAX_OPSET only after checking what the next opset changes.
MIN_OPSET, MAX_OPSET = 6, 28

SUPPORTED_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Relu", "LeakyRelu", "Clip", "Sigmoid", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "LRN", "Concat", "Add", "Sum",
    "Mul", "Sub", "Div", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Softmax",
    "LogSoftmax", "Pad", "Dropout", "Identity", "Constant", "ConstantOfShape", "Shape", "Gather",
    "Cast", "Slice", "Split", "Tanh", "Exp", "Sqrt", "Neg", "Abs", "Pow", "ReduceMean", "Max",
    "Min", "Expand", "Range", "Equal", "Where", "Floor", "Ceil",
})

# Ops whose first input must be floating point: an int graph input may not feed them.
_FLOAT_ONLY = frozenset({
    "Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "BatchNormalization", "LRN", "Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Exp", "Sqrt",
})
_DEFAULT_DOMAINS = ("", "ai.onnx")


# -- loading ----------------------------------------------------------------------------------
def load_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """The ModelProto of a path, serialized bytes or ModelProto; ModelError if unreadable.

    External tensor data stored next to a model file is loaded with it."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _check_proto(_parse(bytes(model), "the given bytes"), "the given bytes")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ModelError(f"model file '{path}' does not exist")
        if not path.is_file():
            raise ModelError(f"model path '{path}' is not a file")
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except Exception as exc:
            raise ModelError(f"cannot read '{path.name}' as an ONNX model: {exc}") from None
        return _check_proto(proto, f"'{path.name}'")
    raise ModelError(
        f"cannot load a model from a {type(model).__name__}: give a path, bytes or onnx.ModelProto"
    )


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:
        raise ModelError(f"cannot parse {what} as an ONNX model: {exc}") from None
    return proto


def _check_proto(proto: onnx.ModelProto, what: str) -> onnx.ModelProto:
    # Protobuf parses many non-ONNX byte strings without complaint: demand the basic fields.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise ModelError(f"{what} is not an ONNX model (no ir_version, graph or opset_import)")
    return proto


# -- import -----------------------------------------------------------------------------------
def import_graph(proto: onnx.ModelProto) -> Graph:
    """The graph IR of `proto`: supported ops only, attributes normalised, 2-D convs only."""
    opset = default_opset(proto)
    g = proto.graph
    graph = Graph(opset=opset, name=g.name or "model")
    for tensor in g.initializer:
        _add_const(graph, tensor.name, tensor_to_array(tensor, f"initializer '{tensor.name}'"))
    for sparse in g.sparse_initializer:
        _add_const(graph, sparse.values.name, _densify(sparse))
    for vi in g.input:
        if vi.name not in graph.values:
            graph.inputs.append(vi.name)
            graph.values[vi.name] = _input_value(vi)
    names: set[str] = set()
    for proto_node in g.node:
        node = _translate_node(graph, proto_node, opset, names)
        if node is not None:
            graph.nodes.append(node)
    graph.outputs = [o.name for o in g.output]
    _check_defined(graph)
    _drop_unused_extra_outputs(graph)
    rewrite_legacy_broadcast(graph, proto)
    for node in graph.nodes:
        weight = graph.const(node.inputs[1]) if node.op == "Conv" else None
        node.attrs = normalize_attrs(node, opset, weight)
    absorb_all(graph)
    for node in graph.nodes:
        _check_after_absorb(node)
    rewrite_all_1d(graph)
    _check_input_dtypes(graph)
    graph.sort()
    return graph


def default_opset(proto: onnx.ModelProto) -> int:
    """The opset of the default ONNX domain; UnsupportedError outside MIN_OPSET..MAX_OPSET."""
    versions = [o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelError("the model imports no opset of the default ONNX domain")
    opset = int(versions[0])
    supported = f"opset {opset} is not supported by sparsejit (supported: {MIN_OPSET}..{MAX_OPSET})"
    if opset < MIN_OPSET:
        raise UnsupportedError(
            f"{supported}: before opset 6 ops carry the experimental consumed_inputs attribute "
            "and older forms (e.g. Reshape's shape attribute); convert the model to a newer "
            "opset with onnx.version_converter"
        )
    if opset > MAX_OPSET:
        raise UnsupportedError(f"{supported}: it is newer than the ops sparsejit implements")
    return opset


def _add_const(graph: Graph, name: str, data: np.ndarray) -> None:
    graph.values[name] = Value(name, data.dtype, tuple(int(d) for d in data.shape), data)


def _densify(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A sparse initializer (pruned weights stored as COO) as a dense array."""
    name = sparse.values.name
    values = tensor_to_array(sparse.values, f"sparse initializer '{name}'")
    indices = tensor_to_array(sparse.indices, f"indices of sparse initializer '{name}'")
    shape = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(shape, values.dtype)
    if indices.ndim == 2:  # one row of coordinates per nonzero
        dense[tuple(indices.T.astype(np.int64))] = values
    else:  # linear indices
        dense.reshape(-1)[indices.astype(np.int64)] = values
    return dense


def _input_value(vi: onnx.ValueInfoProto) -> Value:
    """A runtime graph input: dtype and shape from its declared type; symbolic dims as str."""
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedError(f"input '{vi.name}' is not a tensor")
    tt = vi.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except Exception:
        raise UnsupportedError(
            f"input '{vi.name}' has unsupported element type {tt.elem_type}") from None
    if dtype.name not in SUPPORTED_DTYPES:
        raise UnsupportedError(f"input '{vi.name}' has type {dtype}, not supported by sparsejit")
    shape = None
    if tt.HasField("shape"):
        shape = tuple(_dim(d, i) for i, d in enumerate(tt.shape.dim))
    return Value(vi.name, dtype, shape)


def _dim(dim: Any, index: int) -> int | str:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.dim_param:
        return str(dim.dim_param)
    return "N" if index == 0 else f"dim{index}"


def _translate_node(
    graph: Graph, proto_node: onnx.NodeProto, opset: int, names: set[str]
) -> Node | None:
    """One ONNX node as an IR node (None for Constant nodes, which become constant values)."""
    op, name = proto_node.op_type, proto_node.name
    label = name or (proto_node.output[0] if proto_node.output else op)
    if proto_node.domain not in _DEFAULT_DOMAINS:
        raise UnsupportedError(
            f"node '{label}' (op {op}, domain '{proto_node.domain}') is not supported by "
            "sparsejit: only the default ONNX domain is"
        )
    if op not in SUPPORTED_OPS:
        raise UnsupportedError(
            f"node '{label}' (op {op}, opset {opset}) is not supported by sparsejit"
        )
    where = f"node '{label}' ({op})"
    attrs = {a.name: attr_to_python(a, where) for a in proto_node.attribute}
    outputs = list(proto_node.output)
    while outputs and not outputs[-1]:  # omitted optional outputs
        outputs.pop()
    for out in outputs:
        if out and out in graph.values:
            raise ModelError(f"{where}: tensor '{out}' is defined twice")
    if op == "Constant":
        _add_const(graph, outputs[0], constant_value(attrs, where))
        return None
    node = Node(op, list(proto_node.input), outputs, attrs, name=name)
    node.name = _unique(node.name, names)
    for out in outputs:
        if out:
            graph.values[out] = Value(out)
    return node


def _unique(name: str, names: set[str]) -> str:
    # Node names are how users address layers: duplicates would make them ambiguous.
    unique, i = name, 1
    while unique in names:
        i += 1
        unique = f"{name}_{i}"
    names.add(unique)
    return unique


def constant_value(attrs: dict[str, Any], where: str) -> np.ndarray:
    """The tensor a Constant node holds, from whichever attribute form it uses."""
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], np.int64)
    kinds = ", ".join(sorted(attrs)) or "none"
    raise UnsupportedError(f"{where}: Constant with attribute {kinds} is not supported")


def _check_defined(graph: Graph) -> None:
    for node in graph.nodes:
        for t in node.inputs:
            if t and t not in graph.values:
                raise ModelError(f"{node.describe()} reads tensor '{t}', which is never defined")
    for t in graph.outputs:
        if t not in graph.values:
            raise ModelError(f"graph output '{t}' is never defined")


def _drop_unused_extra_outputs(graph: Graph) -> None:
    """Drop optional training outputs (MaxPool indices, BN statistics) that nobody reads."""
    read = {t for n in graph.nodes for t in n.inputs} | set(graph.outputs)
    for node in graph.nodes:
        if node.op not in ("MaxPool", "BatchNormalization") or len(node.outputs) < 2:
            continue
        if any(t in read for t in node.outputs[1:]):
            raise UnsupportedError(f"{node.describe()}: its extra outputs are not supported")
        for t in node.outputs[1:]:
            graph.values.pop(t, None)
        del node.outputs[1:]


def _check_after_absorb(node: Node) -> None:
    if node.op == "Dropout" and node.attrs.get("training_mode"):
        raise UnsupportedError(f"{node.describe()}: Dropout in training mode")


def _check_input_dtypes(graph: Graph) -> None:
    for name in graph.inputs:
        dtype = graph.values[name].dtype
        if dtype.kind == "f":
            continue
        for node in graph.consumers(name):
            if node.op in _FLOAT_ONLY:
                raise UnsupportedError(
                    f"input '{name}' is {dtype} but feeds {node.describe()}, which needs floats"
                )
