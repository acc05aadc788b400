"""The dense FC's weight packing against the layout written out element by element, and the
kernel that skips zero inputs against numpy.

The tiled kernel runs in every network test (fc layers of CaffeNet, VGG-16, the small nets);
here the packing is pinned on its own, for out-feature counts below, at and above a tile and
input widths across the transpose's column chunk. The zero-skipping kernel is run here over
input densities from none to all, inputs past its chunk of gathered indices, output widths
that end in a partial vector, threads splitting the outputs, and NaN / Inf / -0.0 inputs.
"""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import pytest

import sparsejit
from sparsejit import targets
from sparsejit.codegen.gemm import SKIP_CHUNK_INPUTS
from sparsejit.errors import InvalidPlanError
from sparsejit.kernels.gemm import GemmPlan, pack_weights

from ..onnx_helpers import make_model, node_model
from ..tolerances import assert_close


def packed_by_element(weight_mc: np.ndarray, plan: GemmPlan) -> np.ndarray:
    m, c = weight_mc.shape
    width = plan.vector_width * plan.vectors_per_tile
    out = np.zeros((plan.tiles(m), c, width), np.float32)
    for row in range(m):
        out[row // width, :, row % width] = weight_mc[row]
    return out.reshape(-1)


@pytest.mark.parametrize("plan", [GemmPlan(16, 1, 4), GemmPlan(8, 2, 3), GemmPlan(4, 1, 1)],
                         ids=lambda p: p.variant())
@pytest.mark.parametrize("m, c", [(1, 1), (5, 3), (64, 511), (65, 512), (130, 1300)])
def test_pack_weights_matches_the_element_layout(plan, m, c):
    weight = np.random.default_rng(m * 7919 + c).standard_normal((m, c)).astype(np.float32)
    packed = pack_weights(weight, plan)
    assert packed.ctypes.data % 64 == 0
    np.testing.assert_array_equal(packed, packed_by_element(weight, plan))


def test_pack_weights_zeroes_the_padding_even_from_dirty_memory():
    # aligned_empty does not clear; a padding lane left as garbage would leak into outputs
    # only if the kernel stored them, so pin it here where it is cheap to see.
    plan = GemmPlan(16, 1, 4)
    for _ in range(3):
        packed = pack_weights(np.ones((3, 700), np.float32), plan)
        lanes = packed.reshape(1, 700, 64)
        assert (lanes[:, :, :3] == 1).all() and (lanes[:, :, 3:] == 0).all()


def test_pack_weights_for_skipping_zero_inputs_is_w_transposed_row_major_zero_padded():
    plan = GemmPlan(16, 1, 4, skip_zero_inputs=True)
    weight = np.random.default_rng(3).standard_normal((70, 1300)).astype(np.float32)
    packed = pack_weights(weight, plan)
    assert packed.ctypes.data % 64 == 0
    rows = packed.reshape(1300, 128)
    np.testing.assert_array_equal(rows[:, :70], weight.T)
    assert (rows[:, 70:] == 0).all()


def _fc(c: int, m: int, activation: bool = False, batch: int = 1):
    """y = x @ W^T + b (then ReLU) for a (batch, c) input, with its W and b."""
    rng = np.random.default_rng(c * 31 + m)
    w = rng.standard_normal((m, c)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    nodes = [oh.make_node("Gemm", ["x", "w", "b"], ["g" if activation else "y"], name="fc",
                          transB=1)]
    if activation:
        nodes.append(oh.make_node("Relu", ["g"], ["y"], name="act"))
    x = np.zeros((batch, c), np.float32)
    return make_model(nodes, {"x": x}, ["y"], {"w": w, "b": b}), w, b


def _with_zeros(rng, shape, zero_fraction):
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < zero_fraction] = 0.0
    return x


def _expected(x, w, b, relu=False):
    y = x.astype(np.float64) @ w.T.astype(np.float64) + b
    return np.maximum(y, 0) if relu else y


SKIP = {"fc": {"skip_zero_inputs": True}}


@pytest.mark.parametrize("target", ["sse", "avx2", "avx512"])
@pytest.mark.parametrize("c, m", [(1, 1), (5, 17), (37, 16), (300, 70), (SKIP_CHUNK_INPUTS + 3, 33)])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.5, 1.0])
def test_skipping_zero_inputs_matches_numpy(target, c, m, zero_fraction):
    if not targets.can_run(targets.get(target)):
        pytest.skip(f"the host cannot run {target} code")
    model, w, b = _fc(c, m, activation=True)
    rng = np.random.default_rng(c + m)
    x = _with_zeros(rng, (1, c), zero_fraction)
    for threads in (1, 2, 3):
        cm = sparsejit.compile(model, target=target, threads=threads, plans=SKIP)
        assert cm.lowered().layers[0].kernel.endswith("_skip0")
        assert_close(cm(x), _expected(x, w, b, relu=True),
                     what=f"fc {c}->{m} {target} {threads} threads, {zero_fraction:.0%} zeros")


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_skipping_zero_inputs_with_one_nonzero_input(position):
    c, m = 4100, 40  # past one chunk of gathered indices, and an odd group of rows left
    model, w, b = _fc(c, m)
    x = np.zeros((1, c), np.float32)
    x[0, {"first": 0, "middle": c // 2, "last": c - 1}[position]] = 1.5
    cm = sparsejit.compile(model, threads=2, plans=SKIP)
    assert_close(cm(x), _expected(x, w, b), what=f"one nonzero input, {position}")


def test_skipping_zero_inputs_sums_nan_and_inf_inputs_and_skips_negative_zero():
    c, m = 64, 20
    model, w, b = _fc(c, m)
    x = np.zeros((1, c), np.float32)
    x[0, 3], x[0, 10], x[0, 11], x[0, 12] = np.nan, np.inf, -0.0, 2.0
    got = sparsejit.compile(model, plans=SKIP)(x)
    assert np.isnan(got).all()  # NaN times any weight
    x[0, 3] = 0.0
    got = sparsejit.compile(model, plans=SKIP)(x)
    expected = (np.float64(np.inf) * w[:, 10] + 2.0 * w[:, 12] + b).astype(np.float32)
    assert_close(got, expected[None], what="an Inf input")


def test_skipping_zero_inputs_at_batch_two_takes_each_image_on_its_own():
    c, m = 300, 70
    model, w, b = _fc(c, m, activation=True, batch=2)
    x = _with_zeros(np.random.default_rng(5), (2, c), 0.5)
    cm = sparsejit.compile(model, threads=2, plans=SKIP)
    assert cm.lowered().layers[0].kernel.endswith("_r1x4_skip0")
    assert_close(cm(x), _expected(x, w, b, relu=True), what="batch 2, skipping zero inputs")
    with pytest.raises(InvalidPlanError, match="fc.*rows_per_tile"):
        sparsejit.compile(model, plans={"fc": {"skip_zero_inputs": True, "rows_per_tile": 2}})(x)


def test_skipping_zero_inputs_is_refused_for_weights_that_are_not_finite():
    model, w, b = _fc(30, 8)
    w[2, 5] = np.inf
    model = make_model([oh.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
                       {"x": np.zeros((1, 30), np.float32)}, ["y"], {"w": w, "b": b})
    with pytest.raises(InvalidPlanError, match="fc.*finite"):
        sparsejit.compile(model, plans=SKIP)


def _pooled_fc(activation_op: str, pool_op: str, w_inf: bool = False):
    """conv -> activation -> pool -> flatten -> Gemm, the shape of VGG-16's fc6."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    cw = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    fw = rng.standard_normal((10, 6 * 4 * 4)).astype(np.float32)
    if w_inf:
        fw[0, 0] = np.inf
    act = ([oh.make_node("LeakyRelu", ["c"], ["a"], name="act", alpha=0.1)] if activation_op == "LeakyRelu"
           else [oh.make_node(activation_op, ["c"], ["a"], name="act")])
    pool = oh.make_node(pool_op, ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    nodes = [oh.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]), *act, pool,
             oh.make_node("Flatten", ["p"], ["f"], name="flat"),
             oh.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1)]
    return make_model(nodes, {"x": x}, ["y"], {"cw": cw, "fw": fw}), x


@pytest.mark.parametrize("activation_op, pool_op, skips", [
    ("Relu", "MaxPool", True), ("Relu", "AveragePool", False), ("LeakyRelu", "MaxPool", False)])
def test_a_dense_fc_after_a_relu_and_max_pool_skips_zero_inputs_at_batch_one(activation_op, pool_op, skips):
    from ..onnx_helpers import run_ort
    model, x = _pooled_fc(activation_op, pool_op)
    cm = sparsejit.compile(model)
    fc = next(layer for layer in cm.lowered().layers if layer.name == "fc")
    assert fc.kernel.startswith("dense-fc") and fc.kernel.endswith("_skip0") == skips, fc.kernel
    assert_close(cm(x), run_ort(model, {"x": x})[0], what=f"{activation_op} {pool_op} fc")


def test_a_dense_fc_with_an_infinite_weight_does_not_skip_zero_inputs():
    from ..onnx_helpers import run_ort
    model, x = _pooled_fc("Relu", "MaxPool", w_inf=True)
    cm = sparsejit.compile(model)
    fc = next(layer for layer in cm.lowered().layers if layer.name == "fc")
    assert not fc.kernel.endswith("_skip0"), fc.kernel
    assert_close(cm(x), run_ort(model, {"x": x})[0], what="an Inf weight")
