"""Numpy reference of the neural-network ops: conv, pools, Gemm/MatMul, BN, LRN, softmax.

Written to be obviously right rather than fast: they are the oracle of the JIT kernels.
Spatial tensors are NCHW; pads are [top, left, bottom, right].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ModelError
from ..graph.ir import Node
from .reference_common import norm_axis

Arrays = list[np.ndarray | None]


# -- output sizes (shared with shape inference) -----------------------------------------------
def conv_out_size(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int) -> int:
    """Output length of a convolution along one axis."""
    return (size + begin + end - ((kernel - 1) * dilation + 1)) // stride + 1


def pool_out_size(
    size: int, kernel: int, stride: int, dilation: int, begin: int, end: int, ceil_mode: int
) -> int:
    """Output length of a pool; with ceil_mode a last window must not start in the end padding."""
    span = size + begin + end - ((kernel - 1) * dilation + 1)
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + begin:
        out -= 1
    return out


def same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """(begin, end) padding of auto_pad SAME_UPPER (extra at the end) or SAME_LOWER."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _windows(
    xp: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
    out_hw: tuple[int, int],
):
    """Yield (r, s, view): for each kernel position, the input elements it meets in every window."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilations, out_hw
    for r in range(kh):
        for s in range(kw):
            y0, x0 = r * dh, s * dw
            yield r, s, xp[..., y0 : y0 + sh * (oh - 1) + 1 : sh, x0 : x0 + sw * (ow - 1) + 1 : sw]


def resolved_pads(node: Node, spatial: Sequence[int], kernel: Sequence[int]) -> list[int]:
    """The node's pads [t, l, b, r], computing auto_pad SAME_* from the input size if still set
    (shape inference normally does this; the reference does not rely on it)."""
    a = node.attrs
    if a.get("auto_pad", "NOTSET") == "NOTSET":
        return list(a["pads"])
    upper = a["auto_pad"] == "SAME_UPPER"
    (t, b), (lft, r) = (
        same_pads(spatial[i], kernel[i], a["strides"][i], a["dilations"][i], upper)
        for i in range(2)
    )
    return [t, lft, b, r]


def epilogue(node: Node, y: np.ndarray) -> np.ndarray:
    """Apply an activation fused into a Conv/Gemm/MatMul by the fuse pass (attrs "activation"),
    so a fused node still runs correctly in the reference."""
    act = node.attrs.get("activation")
    if act is None:
        return y
    if act == "relu":
        return np.maximum(y, y.dtype.type(0))
    if act == "leaky_relu":
        return np.where(y >= 0, y, y * y.dtype.type(node.attrs.get("activation_alpha", 0.01)))
    if act == "clip":
        lo, hi = node.attrs.get("clip_min", -np.inf), node.attrs.get("clip_max", np.inf)
        return np.minimum(np.maximum(y, y.dtype.type(lo)), y.dtype.type(hi))
    raise ModelError(f"{node.describe()}: unknown fused activation '{act}'")


# -- convolution ------------------------------------------------------------------------------
def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """2-D convolution (cross-correlation, as ONNX), NCHW, weights (M, C/group, KH, KW).

    For each kernel position (r, s) the strided input view is multiplied by the (M, C) slice
    of the weights, one matrix product per group, and summed."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    if c != cg * group or m % group:
        raise ValueError(f"conv2d: input {x.shape} and weight {w.shape} disagree at group {group}")
    pt, pl, pb, pr = pads
    oh = conv_out_size(h, kh, strides[0], dilations[0], pt, pb)
    ow = conv_out_size(wd, kw, strides[1], dilations[1], pl, pr)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    xg = xp.reshape(n, group, cg, xp.shape[2], xp.shape[3])
    wg = w.reshape(group, m // group, cg, kh, kw)
    dtype = np.result_type(x.dtype, w.dtype)
    out = np.zeros((n, group, m // group, oh * ow), dtype)
    for r, s, view in _windows(xg, (kh, kw), strides, dilations, (oh, ow)):
        # (1, G, M/G, C/G) @ (N, G, C/G, OH*OW) -> (N, G, M/G, OH*OW)
        out += np.matmul(wg[None, :, :, :, r, s], view.reshape(n, group, cg, oh * ow))
    out = out.reshape(n, m, oh, ow)
    if b is not None:
        out += b.reshape(1, m, 1, 1).astype(dtype)
    return out


def _conv(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    a = node.attrs
    if x.ndim != 4:
        raise ModelError(f"{node.describe()}: the reference runs 2-D convs only, got {x.shape}")
    pads = resolved_pads(node, x.shape[2:], w.shape[2:])
    return [epilogue(node, conv2d(x, w, b, a["strides"], pads, a["dilations"], a["group"]))]


# -- pooling ----------------------------------------------------------------------------------
def _pool_geometry(x: np.ndarray, node: Node) -> tuple[list[int], tuple[int, int], list[int]]:
    """(pads, output size, end padding needed by ceil_mode windows past the padded edge)."""
    a = node.attrs
    if x.ndim != 4:
        raise ModelError(f"{node.describe()}: the reference runs 2-D pools only, got {x.shape}")
    k, st, d = a["kernel_shape"], a["strides"], a["dilations"]
    pads = resolved_pads(node, x.shape[2:], k)
    out, extra = [], []
    for i in range(2):
        size = x.shape[2 + i]
        o = pool_out_size(size, k[i], st[i], d[i], pads[i], pads[i + 2], a.get("ceil_mode", 0))
        reach = (o - 1) * st[i] + (k[i] - 1) * d[i] + 1
        out.append(o)
        extra.append(max(reach - (size + pads[i] + pads[i + 2]), 0))
    return pads, (out[0], out[1]), extra


def _max_pool(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x, a = inputs[0], node.attrs
    (pt, pl, pb, pr), out_hw, (eh, ew) = _pool_geometry(x, node)
    # (no padded copy when nothing is padded; maxima accumulate in place: it is also the
    # runtime's pool, and memory traffic is its cost)
    if pt or pb or pl or pr or eh or ew:
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)), constant_values=-np.inf)
    views = _windows(x, a["kernel_shape"], a["strides"], a["dilations"], out_hw)
    y = np.array(next(views)[2], dtype=x.dtype)
    for _, _, view in views:
        np.maximum(y, view, out=y)
    return [y]


def _average_pool(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x, a = inputs[0], node.attrs
    (pt, pl, pb, pr), out_hw, (eh, ew) = _pool_geometry(x, node)
    h, w = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + eh), (pl, pr + ew)))
    # Which positions count in a window's divisor: the data only, or the data and the explicit
    # padding; never the extra cells that ceil_mode windows reach past the padded edge.
    rows, cols = np.zeros(xp.shape[2], np.float32), np.zeros(xp.shape[3], np.float32)
    if a["count_include_pad"]:
        rows[: pt + h + pb], cols[: pl + w + pr] = 1, 1
    else:
        rows[pt : pt + h], cols[pl : pl + w] = 1, 1
    mask = np.outer(rows, cols)
    total = np.zeros(x.shape[:2] + out_hw, x.dtype)
    count = np.zeros(out_hw, np.float32)
    windows = zip(
        _windows(xp, a["kernel_shape"], a["strides"], a["dilations"], out_hw),
        _windows(mask, a["kernel_shape"], a["strides"], a["dilations"], out_hw),
    )
    for (_, _, view), (_, _, mview) in windows:
        total += view
        count += mview
    return [(total / count).astype(x.dtype)]


def _global_average_pool(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype)]


def _global_max_pool(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x = inputs[0]
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


# -- dense and normalisation ------------------------------------------------------------------
def _gemm(node: Node, inputs: Arrays) -> list[np.ndarray]:
    a_, b_ = inputs[0], inputs[1]
    c_ = inputs[2] if len(inputs) > 2 else None
    at = node.attrs
    a_ = a_.T if at["transA"] else a_
    b_ = b_.T if at["transB"] else b_
    y = a_ @ b_
    if at["alpha"] != 1.0:
        y = y * at["alpha"]
    if c_ is not None:
        y = y + (c_ if at["beta"] == 1.0 else c_ * at["beta"])
    return [epilogue(node, y.astype(a_.dtype, copy=False))]


def _matmul(node: Node, inputs: Arrays) -> list[np.ndarray]:
    return [epilogue(node, np.matmul(inputs[0], inputs[1]))]


def _channel(v: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector (C,) shaped to broadcast over NC... tensors."""
    return v.reshape((1, -1) + (1,) * (rank - 2))


def _batchnorm(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x, scale, bias, mean, var = inputs[:5]
    r = x.ndim
    inv = 1.0 / np.sqrt(var.astype(np.float64) + node.attrs["epsilon"])
    y = (x - _channel(mean, r)) * _channel((scale * inv).astype(x.dtype), r) + _channel(bias, r)
    return [y.astype(x.dtype, copy=False)]


def _lrn(node: Node, inputs: Arrays) -> list[np.ndarray]:
    x, a = inputs[0], node.attrs
    size = a["size"]
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    sq = np.square(x)
    widths = [(0, 0)] * x.ndim
    widths[1] = (before, after)
    sqp = np.pad(sq, widths)
    c = x.shape[1]
    square_sum = sum(sqp[:, i : i + c] for i in range(size))
    y = x / (a["bias"] + (a["alpha"] / size) * square_sum) ** a["beta"]
    return [y.astype(x.dtype, copy=False)]


def _softmax_core(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)  # exp never overflows
    e = np.exp(shifted)
    s = e.sum(axis=axis, keepdims=True)
    return shifted - np.log(s) if log else e / s


def _softmax_op(log: bool):
    def run(node: Node, inputs: Arrays) -> list[np.ndarray]:
        x = inputs[0]
        axis = norm_axis(node.attrs["axis"], x.ndim, node)
        if node.attrs["coerce_2d"]:  # opset < 13: normalise over all dims from `axis` on
            rows = int(np.prod(x.shape[:axis], dtype=np.int64))
            y = _softmax_core(x.reshape(rows, -1), 1, log).reshape(x.shape)
        else:
            y = _softmax_core(x, axis, log)
        return [y.astype(x.dtype, copy=False)]

    return run


NN_OPS = {
    "Conv": _conv,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "GlobalMaxPool": _global_max_pool,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "LRN": _lrn,
    "Softmax": _softmax_op(log=False),
    "LogSoftmax": _softmax_op(log=True),
}
