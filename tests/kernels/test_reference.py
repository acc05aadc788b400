"""The numpy reference of every op against onnxruntime, on one-node models over attribute sets.

Each case imports the model (so attribute normalisation is exercised too), runs the reference,
checks inferred shapes, and runs again after simplify. Random data is seeded per case; the seed
is in the test id.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from sparsejit.frontend.onnx_import import SUPPORTED_OPS
from sparsejit.graph.ir import Node
from sparsejit.kernels.reference import REFERENCE_OPS, conv2d, run_node
from tests.onnx_helpers import check_against_ort, node_model
from tests.tolerances import assert_close

I64 = np.int64


def pos(*shape):
    return ("pos", shape)


def _make(spec, rng):
    if isinstance(spec, (np.ndarray, np.generic)):
        return np.asarray(spec)
    if isinstance(spec, tuple) and spec and spec[0] == "pos":
        return (np.abs(rng.standard_normal(spec[1])) + 0.1).astype(np.float32)
    return rng.standard_normal(spec).astype(np.float32)


def C(op, feeds, consts=None, opset=13, order=None, n_outputs=1, tag="", **attrs):
    """One test case; the id spells op, tag and opset."""
    return (op, feeds, consts or {}, opset, order, n_outputs, attrs, f"{op}-{tag}-op{opset}")


X4 = (2, 4, 9, 9)
CASES = [
    # -- Conv -------------------------------------------------------------------------------
    C("Conv", {"x": X4}, {"w": (6, 4, 3, 3), "b": (6,)}, pads=[1, 1, 1, 1], tag="3x3pad1"),
    C("Conv", {"x": X4}, {"w": (6, 4, 3, 3)}, strides=[2, 2], pads=[0, 1, 2, 1], tag="asym"),
    C("Conv", {"x": X4}, {"w": (5, 4, 3, 2)}, dilations=[2, 3], pads=[2, 1, 0, 3], tag="dil"),
    C("Conv", {"x": (1, 4, 8, 8)}, {"w": (6, 2, 3, 3), "b": (6,)}, group=2, tag="group2"),
    C("Conv", {"x": (1, 6, 7, 7)}, {"w": (6, 1, 3, 3)}, group=6, pads=[1] * 4, tag="depthwise"),
    C("Conv", {"x": (1, 3, 9, 8)}, {"w": (4, 3, 3, 3)}, strides=[2, 2], auto_pad="SAME_UPPER",
      tag="same_upper"),
    C("Conv", {"x": (1, 3, 8, 9)}, {"w": (4, 3, 4, 4)}, auto_pad="SAME_LOWER", tag="same_lower"),
    C("Conv", {"x": (1, 3, 8, 9)}, {"w": (4, 3, 3, 3)}, auto_pad="VALID", tag="valid"),
    C("Conv", {"x": (2, 8, 7, 7)}, {"w": (4, 8, 1, 1)}, strides=[2, 2], kernel_shape=[1, 1],
      tag="1x1s2"),
    C("Conv", {"x": (2, 3, 11)}, {"w": (4, 3, 3), "b": (4,)}, pads=[1, 2], strides=[2],
      tag="1d"),
    C("Conv", {"x": (1, 4, 10)}, {"w": (4, 2, 3)}, group=2, strides=[2],
      auto_pad="SAME_UPPER", tag="1d_same_group"),
    C("Conv", {"x": X4}, {"w": (6, 4, 3, 3), "b": (6,)}, opset=9, pads=[1, 0, 1, 0], tag="old"),
    # -- pools ------------------------------------------------------------------------------
    C("MaxPool", {"x": X4}, kernel_shape=[3, 3], strides=[2, 2], tag="k3s2"),
    C("MaxPool", {"x": (1, 2, 8, 8)}, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
      tag="ceil"),
    C("MaxPool", {"x": (1, 2, 5, 5)}, kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
      ceil_mode=1, tag="ceil_start_in_pad"),
    C("MaxPool", {"x": (1, 2, 9, 7)}, kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1],
      tag="asym"),
    C("MaxPool", {"x": (1, 2, 9, 9)}, kernel_shape=[2, 2], dilations=[2, 2], ceil_mode=1,
      strides=[2, 2], opset=12, tag="dil_ceil"),
    C("MaxPool", {"x": (1, 2, 9, 8)}, kernel_shape=[3, 3], strides=[2, 2],
      auto_pad="SAME_UPPER", tag="same_upper"),
    C("MaxPool", {"x": (1, 2, 9, 8)}, kernel_shape=[4, 4], strides=[3, 3],
      auto_pad="SAME_LOWER", tag="same_lower"),
    C("MaxPool", {"x": (1, 2, 9)}, kernel_shape=[3], strides=[2], pads=[1, 1], tag="1d"),
    C("MaxPool", {"x": X4}, kernel_shape=[3, 3], opset=9, tag="old"),
    C("AveragePool", {"x": X4}, kernel_shape=[3, 3], strides=[2, 2], tag="k3s2"),
    C("AveragePool", {"x": (1, 2, 7, 7)}, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
      count_include_pad=0, tag="pad_exclude"),
    C("AveragePool", {"x": (1, 2, 7, 7)}, kernel_shape=[3, 3], pads=[1, 2, 0, 1],
      count_include_pad=1, tag="pad_include"),
    C("AveragePool", {"x": (1, 2, 8, 8)}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
      ceil_mode=1, count_include_pad=1, tag="ceil_include"),
    C("AveragePool", {"x": (1, 2, 8, 8)}, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
      count_include_pad=0, tag="ceil_exclude"),
    C("AveragePool", {"x": (1, 2, 5, 5)}, kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
      ceil_mode=1, count_include_pad=1, tag="ceil_start_in_pad"),
    C("AveragePool", {"x": (1, 2, 9, 8)}, kernel_shape=[3, 3], strides=[2, 2],
      auto_pad="SAME_UPPER", tag="same_upper"),
    C("AveragePool", {"x": (1, 2, 9, 9)}, kernel_shape=[2, 2], dilations=[2, 2], pads=[1] * 4,
      count_include_pad=1, opset=19, tag="dil"),
    C("AveragePool", {"x": (1, 2, 10)}, kernel_shape=[3], strides=[2], pads=[1, 1],
      count_include_pad=1, tag="1d"),
    C("GlobalAveragePool", {"x": X4}),
    C("GlobalMaxPool", {"x": X4}),
    # -- dense ------------------------------------------------------------------------------
    C("Gemm", {"a": (3, 5)}, {"b": (5, 4), "c": (4,)}, tag="plain"),
    C("Gemm", {"a": (5, 3)}, {"b": (4, 5), "c": (3, 4)}, transA=1, transB=1, alpha=0.5,
      beta=2.0, tag="trans_alpha_beta"),
    C("Gemm", {"a": (3, 5)}, {"b": (4, 5), "c": (1, 4)}, transB=1, tag="transB", opset=9),
    C("Gemm", {"a": (3, 5)}, {"b": (5, 4), "c": np.float32(0.5).reshape(())}, tag="scalar_c"),
    C("Gemm", {"a": (3, 5)}, {"b": (5, 4)}, tag="no_c", opset=11),
    C("MatMul", {"a": (3, 5)}, {"b": (5, 4)}, tag="2d"),
    C("MatMul", {"a": (2, 3, 5)}, {"b": (5, 4)}, tag="batched"),
    C("MatMul", {"a": (5,)}, {"b": (2, 5, 4)}, tag="vec_left"),
    C("MatMul", {"a": (2, 1, 3, 5), "b": (3, 5, 2)}, tag="broadcast"),
    C("BatchNormalization", {"x": X4}, {"s": (4,), "b": (4,), "m": (4,), "v": pos(4)},
      epsilon=1e-3, opset=9, tag="old"),
    C("BatchNormalization", {"x": (2, 3, 5)}, {"s": (3,), "b": (3,), "m": (3,), "v": pos(3)},
      opset=15, tag="3d"),
    C("LRN", {"x": (1, 7, 4, 4)}, size=3, tag="size3"),
    C("LRN", {"x": (1, 7, 4, 4)}, size=3, alpha=0.01, beta=0.5, bias=2.0, tag="attrs"),
    C("LRN", {"x": (2, 9, 3, 3)}, size=5, alpha=1e-2, tag="size5"),
    # -- elementwise ------------------------------------------------------------------------
    *[C(op, {"x": (2, 3, 4)}) for op in
      ["Relu", "Sigmoid", "Tanh", "Exp", "Neg", "Abs", "Floor", "Ceil", "LeakyRelu"]],
    C("Sqrt", {"x": pos(2, 3, 4)}),
    C("LeakyRelu", {"x": (2, 3, 4)}, alpha=0.2, tag="alpha"),
    C("Clip", {"x": (2, 3, 4)}, opset=9, min=-0.5, max=0.6, tag="attrs"),
    C("Clip", {"x": (2, 3, 4)}, opset=9, tag="attr_defaults"),
    C("Clip", {"x": (2, 3, 4)}, {"lo": np.float32(-0.3), "hi": np.float32(0.2)}, tag="inputs"),
    C("Clip", {"x": (2, 3, 4)}, {"hi": np.float32(0.2)}, order=["x", "", "hi"], tag="max_only"),
    C("Clip", {"x": (2, 3, 4)}, {"lo": np.float32(0.1)}, order=["x", "lo"], tag="min_only"),
    C("Clip", {"x": (2, 3, 4)}, tag="no_bounds"),
    C("Add", {"a": (2, 3, 4, 5)}, {"b": (5,)}, tag="bcast_last"),
    C("Sub", {"a": (2, 3, 1, 5), "b": (1, 4, 1)}, tag="bcast_both"),
    C("Mul", {"a": (3, 1)}, {"b": (1, 4)}, tag="outer"),
    C("Div", {"a": (2, 3, 4, 4)}, {"b": pos(3, 1, 1)}, tag="per_channel"),
    C("Div", {"a": np.array([7, -7, 6, -1], I64)}, {"b": np.array([2, 2, -4, 3], I64)},
      tag="int_trunc"),
    C("Pow", {"a": pos(2, 3)}, {"b": (3,)}, tag="float"),
    C("Pow", {"a": (2, 3)}, {"b": np.array(2, I64)}, tag="int_exp", opset=15),
    C("Sum", {"a": (2, 3, 4), "b": (3, 1), "c": (4,)}, tag="3inputs"),
    C("Max", {"a": (2, 3, 4), "b": (3, 1)}, tag="bcast"),
    C("Min", {"a": (2, 3, 4), "b": (4,), "c": (1, 1, 1)}, tag="bcast3"),
    C("Max", {"a": (2, 3)}, tag="single"),
    C("Equal", {"a": np.array([1, 2, 3], I64)}, {"b": np.array([[1], [3]], I64)}, tag="int"),
    C("Equal", {"a": np.array([1.0, 2.5], np.float32)}, {"b": np.array([2.5], np.float32)},
      tag="float"),
    C("Where", {"c": np.array([[True, False, True]]), "a": (2, 3)}, {"b": (3,)}, tag="bcast"),
    C("Cast", {"x": (2, 3)}, to=7, tag="to_int64"),
    C("Cast", {"x": np.array([1, -2, 3], I64)}, to=1, tag="to_float"),
    C("Cast", {"x": np.array([0.0, 1.5, -2.0], np.float32)}, to=9, tag="to_bool"),
    C("Identity", {"x": (2, 3)}),
    C("Dropout", {"x": (2, 3)}, opset=9, ratio=0.3, tag="old"),
    C("Dropout", {"x": (2, 3)}, n_outputs=2, tag="mask"),
    # -- softmax ----------------------------------------------------------------------------
    C("Softmax", {"x": (2, 3, 4, 5)}, opset=9, tag="coerce_default"),
    C("Softmax", {"x": (2, 3, 4, 5)}, opset=11, axis=2, tag="coerce_axis2"),
    C("Softmax", {"x": (2, 3, 4, 5)}, axis=1, tag="single_axis1"),
    C("Softmax", {"x": (2, 3, 4)}, tag="default"),
    C("LogSoftmax", {"x": (2, 3, 4)}, opset=9, tag="coerce"),
    C("LogSoftmax", {"x": (2, 3, 4)}, axis=1, tag="axis1"),
    C("Softmax", {"x": np.array([[1000.0, 0.0, -1000.0]], np.float32)}, tag="large"),
    # -- layout -----------------------------------------------------------------------------
    C("Concat", {"a": (2, 3, 4), "b": (2, 1, 4)}, axis=1, tag="axis1"),
    C("Concat", {"a": (2, 3)}, {"b": (2, 2)}, axis=-1, tag="neg"),
    C("Concat", {"a": np.array([1], I64)}, {"b": np.array([-1, 4], I64)}, axis=0, tag="int"),
    *[C("Flatten", {"x": (2, 3, 4, 5)}, axis=a, tag=f"axis{a}") for a in (0, 1, 2, -1, 4)],
    C("Flatten", {"x": (2, 3, 4, 5)}, opset=9, tag="default"),
    C("Reshape", {"x": (2, 3, 4)}, {"s": np.array([0, -1, 2], I64)}, tag="zero_minus1"),
    C("Reshape", {"x": (2, 3, 4)}, {"s": np.array([4, 6], I64)}, opset=14, allowzero=1,
      tag="allowzero"),
    C("Transpose", {"x": (2, 3, 4)}, perm=[1, 2, 0], tag="perm"),
    C("Transpose", {"x": (2, 3, 4)}, tag="default"),
    C("Squeeze", {"x": (2, 1, 3, 1)}, opset=9, axes=[1, -1], tag="attr"),
    C("Squeeze", {"x": (2, 1, 3, 1)}, {"ax": np.array([3], I64)}, tag="input"),
    C("Squeeze", {"x": (2, 1, 3, 1)}, tag="all"),
    C("Unsqueeze", {"x": (2, 3)}, opset=11, axes=[0, -1], tag="attr"),
    C("Unsqueeze", {"x": (2, 3)}, {"ax": np.array([1, -1], I64)}, tag="input"),
    C("Pad", {"x": (2, 3, 4)}, opset=9, pads=[0, 1, 2, 0, 2, 1], value=1.5, tag="attr"),
    C("Pad", {"x": (2, 3, 4)}, {"p": np.array([0, 1, 2, 0, 2, 1], I64),
                                "v": np.float32(-2.0)}, tag="input"),
    C("Pad", {"x": (2, 3, 4)}, {"p": np.array([0, 0, 2, 0, 1, 3], I64)}, mode="reflect",
      tag="reflect"),
    C("Pad", {"x": (2, 3, 4)}, {"p": np.array([0, 2, 1, 0, 1, 3], I64)}, mode="edge",
      tag="edge"),
    C("Pad", {"x": (2, 3, 4)}, {"p": np.array([0, -1, 2, 0, 1, -2], I64)}, tag="negative"),
    C("Pad", {"x": (2, 3, 4)}, {"p": np.array([1, 2, 0, 1], I64), "v": np.float32(3.0),
                                "ax": np.array([0, -1], I64)}, opset=18, tag="axes"),
    C("Shape", {"x": (2, 3, 4)}),
    C("Shape", {"x": (2, 3, 4, 5)}, opset=15, start=1, end=-1, tag="start_end"),
    C("Gather", {"x": (5, 3)}, {"i": np.array([0, -1, 2], I64)}, tag="axis0_neg"),
    C("Gather", {"x": (2, 5, 3)}, {"i": np.array([[1, 0], [4, 4]], I64)}, axis=1,
      tag="axis1_2d"),
    C("Gather", {"x": np.array([2, 3, 4], I64)}, {"i": np.array(0, I64)}, tag="scalar"),
    C("Slice", {"x": (5, 6)}, opset=9, starts=[1, 0], ends=[4, 100], axes=[0, 1], tag="attr"),
    C("Slice", {"x": (5, 6)}, {"s": np.array([-1, 5], I64), "e": np.array([-100, 0], I64),
                              "a": np.array([0, 1], I64), "st": np.array([-2, -2], I64)},
      tag="neg_steps"),
    C("Slice", {"x": (5, 6, 3)}, {"s": np.array([1], I64), "e": np.array([2**63 - 1], I64)},
      tag="no_axes"),
    C("Split", {"x": (6, 4)}, n_outputs=3, opset=11, tag="equal"),
    C("Split", {"x": (2, 7)}, n_outputs=2, opset=11, axis=1, split=[3, 4], tag="attr"),
    C("Split", {"x": (2, 7)}, {"sp": np.array([5, 2], I64)}, n_outputs=2, axis=-1,
      tag="input"),
    C("Split", {"x": (7, 2)}, n_outputs=3, opset=18, num_outputs=3, tag="uneven"),
    C("ReduceMean", {"x": (2, 3, 4)}, axes=[1, -1], tag="keep"),
    C("ReduceMean", {"x": (2, 3, 4)}, axes=[0], keepdims=0, tag="drop"),
    C("ReduceMean", {"x": (2, 3, 4)}, tag="all"),
    C("ReduceMean", {"x": (2, 3, 4)}, {"ax": np.array([2], I64)}, opset=18, tag="input"),
    C("Expand", {"x": (3, 1)}, {"s": np.array([2, 1, 4], I64)}),
    C("Range", {}, {"a": np.float32(1.0), "l": np.float32(4.5), "d": np.float32(0.5)},
      tag="float"),
    C("Range", {}, {"a": np.array(10, I64), "l": np.array(2, I64), "d": np.array(-3, I64)},
      tag="int"),
    C("ConstantOfShape", {}, {"s": np.array([2, 3], I64)}, tag="default"),
    C("ConstantOfShape", {}, {"s": np.array([4], I64)}, value=np.array([7], I64) , tag="int"),
]


def _params():
    for seed, (op, feeds, consts, opset, order, n_out, attrs, name) in enumerate(CASES):
        yield pytest.param(op, feeds, consts, opset, order, n_out, attrs, seed,
                           id=f"{name}-seed{seed}")


@pytest.mark.parametrize("op,feeds,consts,opset,order,n_outputs,attrs,seed", list(_params()))
def test_op_matches_onnxruntime(op, feeds, consts, opset, order, n_outputs, attrs, seed):
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    feeds = {k: _make(v, rng) for k, v in feeds.items()}
    consts = {k: _make(v, rng) for k, v in consts.items()}
    if "value" in attrs and isinstance(attrs["value"], np.ndarray):
        attrs = {**attrs, "value": numpy_helper.from_array(attrs["value"])}
    model = node_model(op, feeds, consts, order, opset, n_outputs, **attrs)
    check_against_ort(model, feeds, f"{op} {attrs} opset {opset} seed {seed}")


def test_every_supported_op_has_a_reference():
    assert SUPPORTED_OPS - {"Constant"} <= set(REFERENCE_OPS)


def test_cases_cover_every_op():
    assert SUPPORTED_OPS - {"Constant"} <= {case[0] for case in CASES}


# -- conv2d, the oracle of the JIT kernels -----------------------------------------------------
def _naive_conv(x, w, b, strides, pads, dilations, group):
    """Direct 7-loop definition, for small sizes only."""
    n, _c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((n, m, oh, ow))
    for mo in range(m):
        g = mo // (m // group)
        for ci in range(cg):
            for r in range(kh):
                for s in range(kw):
                    y0, x0 = r * dilations[0], s * dilations[1]
                    patch = xp[:, g * cg + ci, y0 : y0 + strides[0] * (oh - 1) + 1 : strides[0],
                               x0 : x0 + strides[1] * (ow - 1) + 1 : strides[1]]
                    y[:, mo] += w[mo, ci, r, s] * patch
        if b is not None:
            y[:, mo] += b[mo]
    return y


@pytest.mark.parametrize("seed,shape,wshape,strides,pads,dil,group", [
    (0, (1, 3, 7, 7), (4, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, (2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (0, 2, 1, 0), (1, 2), 2),
    (2, (1, 5, 6, 6), (5, 1, 3, 3), (1, 2), (2, 2, 2, 2), (2, 1), 5),
    (3, (1, 2, 5, 5), (3, 2, 1, 1), (3, 3), (0, 0, 0, 0), (1, 1), 1),
])
def test_conv2d_matches_naive_loops(seed, shape, wshape, strides, pads, dil, group):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    b = rng.standard_normal(wshape[0]).astype(np.float32)
    y = conv2d(x, w, b, strides, pads, dil, group)
    assert y.dtype == np.float32
    assert_close(y, _naive_conv(x, w, b, strides, pads, dil, group), what=f"conv2d seed {seed}")


@pytest.mark.parametrize("what,x_shape,w_shape,strides,pads,group", [
    ("alexnet_conv1", (1, 3, 227, 227), (96, 3, 11, 11), (4, 4), (0, 0, 0, 0), 1),
    ("resnet_56x56x256", (1, 256, 56, 56), (256, 256, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    ("depthwise_56x56x256", (1, 256, 56, 56), (256, 1, 3, 3), (1, 1), (1, 1, 1, 1), 256),
])
def test_conv2d_is_fast_enough(what, x_shape, w_shape, strides, pads, group):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    start = time.perf_counter()
    conv2d(x, w, None, strides, pads, (1, 1), group)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{what}: {elapsed:.2f} s"


# -- edge semantics -----------------------------------------------------------------------------
def _node(op, **attrs):
    return Node(op, ["x"], ["y"], attrs)


def test_nan_and_inf_propagate_and_float32_stays_float32():
    x = np.array([np.nan, -np.inf, np.inf, -1.0, 2.0], np.float32)
    (y,) = run_node(_node("Relu"), [x])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [np.nan, 0, np.inf, 0, 2])
    (y,) = run_node(_node("Sigmoid"), [x])
    assert y.dtype == np.float32 and np.isnan(y[0]) and y[1] == 0 and y[2] == 1
    (y,) = run_node(_node("Clip", min=-0.5, max=0.5), [x])
    np.testing.assert_array_equal(y, [np.nan, -0.5, 0.5, -0.5, 0.5])


def test_fused_activation_is_applied_by_the_reference():
    x = np.ones((1, 1, 3, 3), np.float32)
    w = -np.ones((1, 1, 1, 1), np.float32)
    node = Node("Conv", ["x", "w"], ["y"], {"strides": [1, 1], "pads": [0] * 4,
                                           "dilations": [1, 1], "group": 1, "activation": "relu"})
    (y,) = run_node(node, [x, w, None])
    assert (y == 0).all()


def test_clip_on_ints_keeps_ints():
    x = np.array([-5, 0, 5], np.int64)
    (y,) = run_node(Node("Clip", ["x"], ["y"], {"min": float("-inf"), "max": 3.0}), [x])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [-5, 0, 3])


@pytest.mark.parametrize("size", [1, 2, 4, 5])
def test_lrn_follows_the_onnx_formula(size):
    """onnxruntime only takes odd sizes: check even ones against the spec's own definition."""
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 6, 3, 3)).astype(np.float32)
    alpha, beta, bias = 0.02, 0.75, 1.5
    node = Node("LRN", ["x"], ["y"], {"size": size, "alpha": alpha, "beta": beta, "bias": bias})
    (y,) = run_node(node, [x])
    expected = np.empty_like(x, dtype=np.float64)
    before, after = (size - 1) // 2, size // 2  # floor and ceil of (size - 1) / 2
    for c in range(6):
        lo, hi = max(0, c - before), min(5, c + after)
        square_sum = (x[:, lo : hi + 1].astype(np.float64) ** 2).sum(axis=1)
        expected[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    assert y.dtype == np.float32
    assert_close(y, expected, what=f"LRN size {size} seed {size}")


# -- random sweeps of the window ops against onnxruntime ---------------------------------------
@pytest.mark.parametrize("seed", range(40), ids=lambda s: f"seed{s}")
def test_random_pool_matches_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    op = ["MaxPool", "AveragePool"][seed % 2]
    k = [int(v) for v in rng.integers(1, 5, 2)]
    attrs = {"kernel_shape": k, "strides": [int(v) for v in rng.integers(1, 4, 2)],
             "dilations": [int(v) for v in rng.integers(1, 3, 2)],
             "pads": [int(rng.integers(0, k[i % 2])) for i in range(4)],
             "ceil_mode": int(rng.integers(0, 2))}
    if op == "AveragePool":
        attrs["count_include_pad"] = int(rng.integers(0, 2))
    x = rng.standard_normal((1, 2, *rng.integers(10, 14, 2))).astype(np.float32)
    model = node_model(op, {"x": x}, opset=19, **attrs)
    check_against_ort(model, {"x": x}, f"{op} {attrs} seed {seed}")


@pytest.mark.parametrize("seed", range(30), ids=lambda s: f"seed{s}")
def test_random_conv_matches_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    group, cg, mg = int(rng.choice([1, 2, 3])), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    k = [int(v) for v in rng.integers(1, 5, 2)]
    attrs = {"strides": [int(v) for v in rng.integers(1, 4, 2)], "group": group}
    if seed % 3:
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 4)]
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, 2)]
    else:  # onnxruntime takes no dilations with SAME_*
        attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    x = rng.standard_normal((2, cg * group, *rng.integers(8, 14, 2))).astype(np.float32)
    consts = {"w": rng.standard_normal((mg * group, cg, *k)).astype(np.float32),
              "b": rng.standard_normal(mg * group).astype(np.float32)}
    model = node_model("Conv", {"x": x}, consts, **attrs)
    check_against_ort(model, {"x": x}, f"Conv {attrs} seed {seed}")
