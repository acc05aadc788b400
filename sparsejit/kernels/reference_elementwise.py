"""Numpy reference of the elementwise ops: activations, arithmetic with broadcasting, Cast, Where.

Results keep the input dtype (float32 stays float32); NaN and Inf propagate as numpy does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

import numpy as np

from ..graph.ir import Node
from .reference_common import scalar, setting

Arrays = list[np.ndarray | None]


def _unary(fn: Callable[[np.ndarray], np.ndarray]):
    def run(node: Node, inputs: Arrays) -> list[np.ndarray]:
        x = inputs[0]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return [np.asarray(fn(x)).astype(x.dtype, copy=False)]

    return run


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows: written per sign
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))  # NaN stays NaN


def _leaky_relu(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    return [np.where(x >= 0, x, x * x.dtype.type(node.attrs["alpha"])).astype(x.dtype)]


def _clip(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    lo, hi = scalar(setting(node, inputs, 1, "min")), scalar(setting(node, inputs, 2, "max"))
    y = x
    # Bounds are applied one at a time in x's dtype (an infinite bound on ints means none).
    if lo is not None and not (x.dtype.kind in "iu" and np.isinf(lo)):
        y = np.maximum(y, np.asarray(lo).astype(x.dtype))
    if hi is not None and not (x.dtype.kind in "iu" and np.isinf(hi)):
        y = np.minimum(y, np.asarray(hi).astype(x.dtype))
    return [np.array(y, dtype=x.dtype, copy=True)]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and np.result_type(a, b).kind in "iu":
        # ONNX integer division truncates toward zero (numpy's // floors).
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) ^ (b < 0), -q, q).astype(a.dtype)
    return a / b


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], keep_dtype: bool = True):
    def run(node: Node, inputs: Arrays) -> list[np.ndarray]:
        a, b = inputs[0], inputs[1]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            y = np.asarray(fn(a, b))
        return [y.astype(a.dtype, copy=False) if keep_dtype else y]

    return run


def _variadic(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(node: Node, inputs: Arrays) -> list[np.ndarray]:
        arrays = [x for x in inputs if x is not None]
        y = reduce(fn, arrays[1:], arrays[0].copy())
        return [np.asarray(y).astype(arrays[0].dtype, copy=False)]

    return run


def _where(node: Node, inputs: Arrays) -> list[np.ndarray]:
    cond, x, y = inputs[:3]
    return [np.where(cond.astype(bool), x, y).astype(x.dtype, copy=False)]


def _cast(node: Node, inputs: Arrays) -> list[np.ndarray]:
    with np.errstate(invalid="ignore", over="ignore"):
        return [inputs[0].astype(np.dtype(node.attrs["to"]))]


def _identity(node: Node, inputs: Arrays) -> list[np.ndarray]:
    return [inputs[0]]


def _dropout(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    return [x, np.ones(x.shape, bool)]  # inference: nothing dropped, mask all true


ELEMENTWISE_OPS = {
    "Relu": _unary(_relu),
    "Sigmoid": _unary(_sigmoid),
    "Tanh": _unary(np.tanh),
    "Exp": _unary(np.exp),
    "Sqrt": _unary(np.sqrt),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_div),
    "Pow": _binary(np.power),
    "Equal": _binary(np.equal, keep_dtype=False),
    "Sum": _variadic(np.add),
    "Max": _variadic(np.maximum),
    "Min": _variadic(np.minimum),
    "Where": _where,
    "Cast": _cast,
    "Identity": _identity,
    "Dropout": _dropout,
}
