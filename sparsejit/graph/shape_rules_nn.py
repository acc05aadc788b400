"""Shape rules of the neural-network and elementwise ops (conv, pools, Gemm, broadcasting...).

Rules also settle attributes that depend on shapes: auto_pad becomes explicit pads, a missing
Conv kernel_shape is taken from the weight, Softmax axes are made non-negative.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError, UnsupportedError
from ..kernels.reference_common import norm_axis
from ..kernels.reference_nn import conv_out_size, pool_out_size, resolved_pads
from .ir import Node
from .shape_common import Info, Rule, as_int, broadcast, same


# -- conv and pools ---------------------------------------------------------------------------
def _resolve_auto_pad(node: Node, spatial: tuple[int, int], kernel: list[int]) -> None:
    node.attrs["pads"] = resolved_pads(node, spatial, kernel)
    node.attrs["auto_pad"] = "NOTSET"


def _spatial_input(node: Node, info: Info) -> tuple[int, int]:
    if len(info.shape) == 5:
        raise UnsupportedError(f"{node.describe()}: 3-D {node.op} is not supported")
    if len(info.shape) != 4:
        raise ModelError(f"{node.describe()}: expects a 4-D NCHW input, got shape {info.shape}")
    h, w = info.shape[2:]
    if isinstance(h, str) or isinstance(w, str):
        raise ModelError(f"{node.describe()}: spatial dims must be static, got {info.shape}")
    return h, w


def _check_out(node: Node, out: tuple[int, int], x: Info) -> None:
    if min(out) < 1:
        raise ModelError(f"{node.describe()}: input {x.shape} is too small: output {out}")


def _conv(node: Node, ins: list[Info | None]) -> list[Info]:
    x, w = ins[0], ins[1]
    h, wd = _spatial_input(node, x)
    if len(w.shape) != 4:
        raise ModelError(f"{node.describe()}: weight shape {w.shape} is not 4-D")
    m, cg, kh, kw = (as_int(d) for d in w.shape)
    a, c, group = node.attrs, x.shape[1], node.attrs["group"]
    if c != cg * group:
        raise ModelError(
            f"{node.describe()}: input has {c} channels, weight expects {cg} x group {group}"
            f" = {cg * group}"
        )
    if m % group:
        raise ModelError(f"{node.describe()}: {m} output channels do not split in {group} groups")
    if a.get("kernel_shape") is None:
        a["kernel_shape"] = [kh, kw]
    elif list(a["kernel_shape"]) != [kh, kw]:
        raise ModelError(
            f"{node.describe()}: kernel_shape {a['kernel_shape']} but weight shape {w.shape}"
        )
    if len(ins) > 2 and ins[2] is not None and tuple(ins[2].shape) != (m,):
        raise ModelError(f"{node.describe()}: bias shape {ins[2].shape}, expected ({m},)")
    _resolve_auto_pad(node, (h, wd), [kh, kw])
    p, s, d = a["pads"], a["strides"], a["dilations"]
    out = (
        conv_out_size(h, kh, s[0], d[0], p[0], p[2]),
        conv_out_size(wd, kw, s[1], d[1], p[1], p[3]),
    )
    _check_out(node, out, x)
    return [Info((x.shape[0], m) + out, x.dtype)]


def _pool(node: Node, ins: list[Info | None]) -> list[Info]:
    x, a = ins[0], node.attrs
    h, w = _spatial_input(node, x)
    k = a["kernel_shape"]
    _resolve_auto_pad(node, (h, w), k)
    p, s, d, ceil = a["pads"], a["strides"], a["dilations"], a.get("ceil_mode", 0)
    out = (
        pool_out_size(h, k[0], s[0], d[0], p[0], p[2], ceil),
        pool_out_size(w, k[1], s[1], d[1], p[1], p[3], ceil),
    )
    _check_out(node, out, x)
    return [Info(x.shape[:2] + out, x.dtype)]


def _global_pool(node: Node, ins: list[Info | None]) -> list[Info]:
    x = ins[0]
    return [Info(x.shape[:2] + (1,) * (len(x.shape) - 2), x.dtype)]


# -- dense and normalisation ------------------------------------------------------------------
def _gemm(node: Node, ins: list[Info | None]) -> list[Info]:
    a, b = ins[0].shape, ins[1].shape
    if len(a) != 2 or len(b) != 2:
        raise ModelError(f"{node.describe()}: Gemm needs 2-D inputs, got {a} and {b}")
    m, k = (a[1], a[0]) if node.attrs["transA"] else a
    k2, n = (b[1], b[0]) if node.attrs["transB"] else b
    if isinstance(k, int) and isinstance(k2, int) and k != k2:
        raise ModelError(f"{node.describe()}: inner dims differ: A {a} and B {b}")
    if len(ins) > 2 and ins[2] is not None:
        broadcast(node, [(m, n), ins[2].shape])
    return [Info((m, n), ins[0].dtype)]


def _matmul(node: Node, ins: list[Info | None]) -> list[Info]:
    a, b = ins[0].shape, ins[1].shape
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    k, k2 = a2[-1], b2[-2]
    if isinstance(k, int) and isinstance(k2, int) and k != k2:
        raise ModelError(f"{node.describe()}: inner dims differ: {a} @ {b}")
    batch = broadcast(node, [a2[:-2], b2[:-2]]) if len(a2) > 2 or len(b2) > 2 else ()
    out = batch + (a2[-2],) * (len(a) > 1) + (b2[-1],) * (len(b) > 1)
    return [Info(out, ins[0].dtype)]


def _batchnorm(node: Node, ins: list[Info | None]) -> list[Info]:
    x = ins[0]
    c = x.shape[1]
    for info in ins[1:5]:
        if tuple(info.shape) != (c,) and isinstance(c, int):
            raise ModelError(f"{node.describe()}: parameter shape {info.shape}, expected ({c},)")
    return [Info(x.shape, x.dtype)]


def _softmax(node: Node, ins: list[Info | None]) -> list[Info]:
    node.attrs["axis"] = norm_axis(node.attrs["axis"], len(ins[0].shape), node)
    return same(node, ins)


# -- elementwise ------------------------------------------------------------------------------
def _broadcasting(dtype_from: int | None = 0, dtype: str | None = None) -> Rule:
    def rule(node: Node, ins: list[Info | None]) -> list[Info]:
        present = [i for i in ins if i is not None]
        shape = broadcast(node, [i.shape for i in present])
        out_dtype = np.dtype(dtype) if dtype else ins[dtype_from].dtype
        return [Info(shape, out_dtype)]

    return rule


def _dropout(node: Node, ins: list[Info | None]) -> list[Info]:
    return [Info(ins[0].shape, ins[0].dtype), Info(ins[0].shape, np.dtype(bool))]


def _cast(node: Node, ins: list[Info | None]) -> list[Info]:
    return [Info(ins[0].shape, np.dtype(node.attrs["to"]))]


NN_RULES: dict[str, Rule] = {
    "Conv": _conv,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Dropout": _dropout,
    "Cast": _cast,
    "Equal": _broadcasting(dtype="bool"),
    "Where": _broadcasting(dtype_from=1),
    **{op: _broadcasting() for op in ["Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min"]},
    **dict.fromkeys(
        ["Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Exp", "Sqrt", "Neg", "Abs", "Floor",
         "Ceil", "Identity", "LRN"],
        same,
    ),
}
