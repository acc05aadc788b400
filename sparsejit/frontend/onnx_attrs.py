"""Turn ONNX node attributes into plain Python and fill every default, per op and opset.

After `normalize_attrs`, later stages read attributes under fixed names and never need to know
an ONNX default or which opset moved what. Spatial ops get 2-D lists: pads as
[top, left, bottom, right] (1-D ops are rewritten into 2-D ones separately, see rewrite_1d).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, UnsupportedError
from ..graph.ir import Node

_A = onnx.AttributeProto
# The element types sparsejit computes with: numpy's own (bfloat16, float8, int4... are not).
SUPPORTED_DTYPES = frozenset({
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
    "float32", "float64",
})
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def tensor_to_array(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    """A TensorProto as a numpy array, with a ModelError naming `what` if it cannot be read."""
    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception as exc:
        raise ModelError(f"cannot read {what}: {exc}") from None


def attr_to_python(attr: onnx.AttributeProto, where: str) -> Any:
    """One attribute as int, float, str, list or numpy array."""
    kind = attr.type
    if kind == _A.INT:
        return int(attr.i)
    if kind == _A.FLOAT:
        return float(attr.f)
    if kind == _A.STRING:
        return attr.s.decode("utf-8", errors="replace")
    if kind == _A.INTS:
        return [int(v) for v in attr.ints]
    if kind == _A.FLOATS:
        return [float(v) for v in attr.floats]
    if kind == _A.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in attr.strings]
    if kind == _A.TENSOR:
        return tensor_to_array(attr.t, f"attribute '{attr.name}' of {where}")
    if kind == _A.TENSORS:
        return [tensor_to_array(t, f"attribute '{attr.name}' of {where}") for t in attr.tensors]
    raise UnsupportedError(
        f"{where}: attribute '{attr.name}' has type "
        f"{_A.AttributeType.Name(kind)}, which sparsejit does not read"
    )


# -- helpers ----------------------------------------------------------------------------------
def _spatial(node: Node, key: str, rank: int, fill: int) -> list[int]:
    value = node.attrs.get(key)
    if value is None:
        return [fill] * rank
    if len(value) != rank:
        raise ModelError(f"{node.describe()}: '{key}' has {len(value)} entries, expected {rank}")
    return [int(v) for v in value]


def _spatial_rank(node: Node, weight_rank: int | None) -> int:
    """How many spatial dims a conv/pool has, from kernel_shape or the weight constant."""
    kernel = node.attrs.get("kernel_shape")
    if kernel is not None:
        return len(kernel)
    if weight_rank is not None:
        return weight_rank - 2
    for key in ("strides", "dilations"):
        if node.attrs.get(key) is not None:
            return len(node.attrs[key])
    if node.attrs.get("pads") is not None:
        return len(node.attrs["pads"]) // 2
    return 2  # nothing says otherwise; shape inference checks it against the input


def _window(node: Node, weight: np.ndarray | None) -> dict[str, Any]:
    """kernel_shape, strides, dilations, pads (begin..., end...), auto_pad for Conv and pools."""
    rank = _spatial_rank(node, None if weight is None else weight.ndim)
    if rank not in (1, 2):
        raise UnsupportedError(
            f"{node.describe()}: {rank}-D {node.op} is not supported (only 1-D and 2-D)"
        )
    kernel = node.attrs.get("kernel_shape")
    if kernel is None and weight is not None:
        kernel = list(weight.shape[2:])
    auto_pad = str(node.attrs.get("auto_pad", "NOTSET")) or "NOTSET"
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ModelError(f"{node.describe()}: unknown auto_pad '{auto_pad}'")
    pads = _spatial(node, "pads", 2 * rank, 0) if auto_pad == "NOTSET" else [0] * (2 * rank)
    if auto_pad == "VALID":  # no padding at all: nothing left to resolve later
        auto_pad = "NOTSET"
    if any(p < 0 for p in pads):
        raise ModelError(f"{node.describe()}: negative pads {pads}")
    return {
        "kernel_shape": None if kernel is None else [int(k) for k in kernel],
        "strides": _spatial(node, "strides", rank, 1),
        "dilations": _spatial(node, "dilations", rank, 1),
        "pads": pads,
        "auto_pad": auto_pad,
    }


# -- per-op normalisers: (node, opset, weight constant or None) -> new attrs -------------------
def _conv(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    return {**_window(node, weight), "group": int(node.attrs.get("group", 1))}


def _maxpool(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    if node.attrs.get("kernel_shape") is None:
        raise ModelError(f"{node.describe()}: MaxPool has no kernel_shape")
    return {**_window(node, None), "ceil_mode": int(node.attrs.get("ceil_mode", 0))}


def _avgpool(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    if node.attrs.get("kernel_shape") is None:
        raise ModelError(f"{node.describe()}: AveragePool has no kernel_shape")
    return {
        **_window(node, None),
        "ceil_mode": int(node.attrs.get("ceil_mode", 0)),
        "count_include_pad": int(node.attrs.get("count_include_pad", 0)),
    }


def _gemm(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    a = node.attrs
    return {
        "alpha": float(a.get("alpha", 1.0)),
        "beta": float(a.get("beta", 1.0)),
        "transA": int(a.get("transA", 0)),
        "transB": int(a.get("transB", 0)),
    }


def _legacy_test_mode(node: Node, opset: int) -> None:
    """Opset 6 BatchNormalization and Dropout run in training mode unless is_test is set."""
    if opset < 7 and not int(node.attrs.get("is_test", 0)):
        raise UnsupportedError(
            f"{node.describe()}: {node.op} (opset {opset}) without is_test=1 runs in training "
            "mode, which sparsejit does not support"
        )


def _batchnorm(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    if int(node.attrs.get("training_mode", 0)) != 0:
        raise UnsupportedError(f"{node.describe()}: BatchNormalization in training mode")
    _legacy_test_mode(node, opset)
    # spatial (opsets 6..8) = 1 is the one per-channel form of later opsets: same math.
    if int(node.attrs.get("spatial", 1)) != 1:
        raise UnsupportedError(f"{node.describe()}: BatchNormalization with spatial=0")
    return {"epsilon": float(node.attrs.get("epsilon", 1e-5))}


def _lrn(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    if "size" not in node.attrs:
        raise ModelError(f"{node.describe()}: LRN has no size")
    a = node.attrs
    return {
        "size": int(a["size"]),
        "alpha": float(a.get("alpha", 1e-4)),
        "beta": float(a.get("beta", 0.75)),
        "bias": float(a.get("bias", 1.0)),
    }


def _clip(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    if opset < 11:  # attribute form; its defaults are the float limits, not infinities
        return {
            "min": float(node.attrs.get("min", -_FLOAT32_MAX)),
            "max": float(node.attrs.get("max", _FLOAT32_MAX)),
        }
    return {"min": float("-inf"), "max": float("inf")}  # inputs, absorbed when constant


def _softmax(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    # Before opset 13 the input is coerced to 2-D at `axis` (default 1) and normalised per row;
    # from 13 on, the softmax runs along the single axis (default -1).
    legacy = opset < 13
    return {"axis": int(node.attrs.get("axis", 1 if legacy else -1)), "coerce_2d": legacy}


def _axis(default: int | None) -> Callable[[Node, int, Any], dict[str, Any]]:
    def normalise(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
        if "axis" not in node.attrs and default is None:
            raise ModelError(f"{node.describe()}: {node.op} has no axis")
        return {"axis": int(node.attrs.get("axis", default))}

    return normalise


def _axes_list(node: Node) -> list[int] | None:
    axes = node.attrs.get("axes")
    return None if axes is None else [int(v) for v in axes]


def _squeeze(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    return {"axes": _axes_list(node)}


def _unsqueeze(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    if opset < 13 and node.attrs.get("axes") is None:
        raise ModelError(f"{node.describe()}: Unsqueeze has no axes")
    return {"axes": _axes_list(node)}


def _pad(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    mode = str(node.attrs.get("mode", "constant"))
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise UnsupportedError(f"{node.describe()}: Pad mode '{mode}' is not supported")
    pads = node.attrs.get("pads")
    return {
        "mode": mode,
        "pads": None if pads is None else [int(p) for p in pads],
        "value": float(node.attrs.get("value", 0.0)),
        "axes": None,
    }


def _transpose(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    perm = node.attrs.get("perm")
    return {"perm": None if perm is None else [int(p) for p in perm]}


def _slice(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("starts", "ends", "axes", "steps"):
        value = node.attrs.get(key)
        out[key] = None if value is None else [int(v) for v in value]
    return out


def _split(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    split = node.attrs.get("split")
    return {
        "axis": int(node.attrs.get("axis", 0)),
        "split": None if split is None else [int(s) for s in split],
    }


def _reduce_mean(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    return {
        "axes": _axes_list(node),
        "keepdims": int(node.attrs.get("keepdims", 1)),
        "noop_with_empty_axes": int(node.attrs.get("noop_with_empty_axes", 0)),
    }


def _cast(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    to = node.attrs.get("to")
    if to is None:
        raise ModelError(f"{node.describe()}: Cast has no 'to'")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(to)))
    except Exception:
        raise UnsupportedError(f"{node.describe()}: Cast to type {to} is not supported") from None
    if dtype.name not in SUPPORTED_DTYPES:
        raise UnsupportedError(f"{node.describe()}: Cast to {dtype} is not supported")
    return {"to": dtype.name}


def _constant_of_shape(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    value = node.attrs.get("value")
    if value is None:
        value = np.zeros(1, np.float32)
    return {"value": np.asarray(value).reshape(-1)[:1]}


def _shape(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    end = node.attrs.get("end")
    return {"start": int(node.attrs.get("start", 0)), "end": None if end is None else int(end)}


def _leaky_relu(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    return {"alpha": float(node.attrs.get("alpha", 0.01))}


def _dropout(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    _legacy_test_mode(node, opset)
    return {"ratio": float(node.attrs.get("ratio", 0.5)), "training_mode": 0}


def _reshape(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    return {"allowzero": int(node.attrs.get("allowzero", 0))}


def _none(node: Node, opset: int, weight: np.ndarray | None) -> dict[str, Any]:
    return {}


NORMALISERS: dict[str, Callable[[Node, int, Any], dict[str, Any]]] = {
    "Conv": _conv,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "Gemm": _gemm,
    "BatchNormalization": _batchnorm,
    "LRN": _lrn,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Flatten": _axis(1),
    "Concat": _axis(None),
    "Gather": _axis(0),
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Pad": _pad,
    "Slice": _slice,
    "Split": _split,
    "ReduceMean": _reduce_mean,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Shape": _shape,
    "Dropout": _dropout,
}


def normalize_attrs(node: Node, opset: int, weight: np.ndarray | None = None) -> dict[str, Any]:
    """The node's attributes with every default filled, under the names sparsejit uses.

    `weight` is the Conv weight constant when known (it gives kernel_shape and the rank).
    Attributes an op does not use are dropped."""
    return NORMALISERS.get(node.op, _none)(node, opset, weight)
