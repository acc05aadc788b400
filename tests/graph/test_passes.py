"""Graph passes: identities removed, BatchNorm and per-channel scale/shift folded into convs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as oh

from sparsejit.frontend.onnx_import import import_graph, load_model
from sparsejit.graph.fold import simplify
from sparsejit.graph.passes import fold_batchnorm, fold_scale_shift, remove_identities
from sparsejit.kernels.reference import run_graph
from tests.onnx_helpers import make_model, run_ort
from tests.tolerances import assert_close

F32 = np.float32


def _rng(seed):
    return np.random.default_rng(seed)


def _same_results(before, after, feeds, what):
    want, got = run_graph(before, feeds), run_graph(after, feeds)
    assert set(want) == set(got)
    for name in want:
        assert_close(got[name], want[name], what=f"{what}: {name}")


# -- identities ---------------------------------------------------------------------------------
def test_identity_in_the_middle_is_removed():
    nodes = [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Identity", ["a"], ["b"]),
             oh.make_node("Dropout", ["b"], ["c"]), oh.make_node("Neg", ["c"], ["y"])]
    x = {"x": np.linspace(-1, 1, 5).astype(F32)}
    graph = import_graph(make_model(nodes, x, ["y"]))
    before = copy.deepcopy(graph)
    remove_identities(graph)
    assert [n.op for n in graph.topo_order()] == ["Relu", "Neg"]
    assert graph.nodes[1].inputs == ["a"] and "b" not in graph.values
    _same_results(before, graph, x, "identity removal")


def test_identity_producing_a_graph_output_keeps_its_name():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="relu1"),
             oh.make_node("Identity", ["a"], ["y"])]
    x = {"x": np.linspace(-1, 1, 5).astype(F32)}
    graph = import_graph(make_model(nodes, x, ["y"]))
    remove_identities(graph)
    (relu,) = graph.nodes
    assert relu.outputs == ["y"] and relu.name == "relu1" and "a" not in graph.values
    np.testing.assert_array_equal(run_graph(graph, x)["y"], np.maximum(x["x"], 0))


def test_pass_through_of_a_graph_input_is_kept():
    graph = import_graph(make_model([oh.make_node("Identity", ["x"], ["y"])],
                                    {"x": np.zeros(2, F32)}, ["y"]))
    remove_identities(graph)
    assert [n.op for n in graph.nodes] == ["Identity"]


def test_dropout_whose_mask_is_used_is_kept():
    nodes = [oh.make_node("Dropout", ["x"], ["a", "m"]), oh.make_node("Cast", ["m"], ["y"], to=1)]
    graph = import_graph(make_model(nodes, {"x": np.zeros(2, F32)}, ["a", "y"]))
    remove_identities(graph)
    assert "Dropout" in [n.op for n in graph.nodes]


# -- batchnorm ----------------------------------------------------------------------------------
def _conv_bn_model(seed, with_bias=True, extra_reader=False, group=1):
    rng = _rng(seed)
    conv_in = ["x", "w", "b"] if with_bias else ["x", "w"]
    nodes = [oh.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1], group=group, name="conv1"),
             oh.make_node("BatchNormalization", ["c", "s", "beta", "mean", "var"], ["y"],
                          epsilon=1e-3, name="bn1")]
    outputs = ["y"]
    if extra_reader:
        nodes.append(oh.make_node("Relu", ["c"], ["r"]))
        outputs.append("r")
    consts = {"w": rng.standard_normal((6, 4 // group, 3, 3)).astype(F32),
              "b": rng.standard_normal(6).astype(F32), "s": rng.standard_normal(6).astype(F32),
              "beta": rng.standard_normal(6).astype(F32),
              "mean": rng.standard_normal(6).astype(F32),
              "var": (rng.random(6) + 0.5).astype(F32)}
    x = {"x": rng.standard_normal((2, 4, 7, 7)).astype(F32)}
    return import_graph(make_model(nodes, x, outputs, consts)), x


@pytest.mark.parametrize("seed,with_bias,group", [(0, True, 1), (1, False, 1), (2, True, 2)])
def test_batchnorm_folds_into_conv(seed, with_bias, group):
    graph, x = _conv_bn_model(seed, with_bias, group=group)
    before = copy.deepcopy(graph)
    fold_batchnorm(graph)
    (conv,) = graph.nodes
    assert conv.op == "Conv" and conv.name == "conv1" and conv.outputs == ["y"]
    assert len(conv.inputs) == 3 and graph.const(conv.inputs[1]).dtype == F32
    np.testing.assert_array_equal(graph.const("w"), before.const("w"))  # original untouched
    _same_results(before, graph, x, f"BN fold seed {seed}")


def test_folded_weights_are_within_an_ulp_of_the_float64_fold():
    """The fold multiplies float32 weights by a float32 scale (no float64 copy of the weights):
    each weight within one float32 ulp of W * s computed in float64 and rounded."""
    graph, _ = _conv_bn_model(3)
    w, s, var = graph.const("w"), graph.const("s"), graph.const("var")
    exact = (w.astype(np.float64) * (s.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-3))
             [:, None, None, None]).astype(F32)
    fold_batchnorm(graph)
    (conv,) = graph.nodes
    got = graph.const(conv.inputs[1])
    assert got.dtype == F32
    assert np.all(np.abs(got - exact) <= np.spacing(np.abs(exact)))


def test_batchnorm_with_other_reader_of_conv_is_left():
    graph, _x = _conv_bn_model(3, extra_reader=True)
    fold_batchnorm(graph)
    assert sorted(n.op for n in graph.nodes) == ["BatchNormalization", "Conv", "Relu"]


def test_batchnorm_after_non_conv_is_left():
    rng = _rng(4)
    nodes = [oh.make_node("Relu", ["x"], ["r"]),
             oh.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"])]
    consts = {k: (rng.random(3) + 0.5).astype(F32) for k in "sbmv"}
    graph = import_graph(make_model(nodes, {"x": np.zeros((1, 3, 2, 2), F32)}, ["y"], consts))
    fold_batchnorm(graph)
    assert [n.op for n in graph.nodes] == ["Relu", "BatchNormalization"]


def test_shared_weights_are_not_corrupted():
    rng = _rng(5)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c1"], name="c1"),
             oh.make_node("Conv", ["x", "w"], ["c2"], name="c2"),
             oh.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["y1"])]
    consts = {"w": rng.standard_normal((3, 2, 1, 1)).astype(F32),
              **{k: (rng.random(3) + 0.5).astype(F32) for k in "sbmv"}}
    x = {"x": rng.standard_normal((1, 2, 3, 3)).astype(F32)}
    graph = import_graph(make_model(nodes, x, ["y1", "c2"], consts))
    before = copy.deepcopy(graph)
    fold_batchnorm(graph)
    assert len(graph.nodes) == 2
    _same_results(before, graph, x, "shared weights seed 5")


@pytest.mark.parametrize("shared", [False, True])
def test_a_writable_weight_read_by_one_conv_is_folded_in_place(shared):
    """bind() folds on a deep copy, whose constants are writable: a weight the conv alone reads
    is scaled in place (no second 100 MB for ResNet-50) and leaves the graph under its old
    name; a shared one is copied, its other reader still seeing the original."""
    rng = _rng(6)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c1"], name="c1"),
             oh.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["y1"]),
             oh.make_node("Mul", ["y1", "k"], ["y2"])]
    outputs = ["y2"]
    if shared:
        nodes.append(oh.make_node("Conv", ["x", "w"], ["c2"], name="c2"))
        outputs.append("c2")
    consts = {"w": rng.standard_normal((3, 2, 3, 3)).astype(F32),
              "k": rng.standard_normal((3, 1, 1)).astype(F32),
              **{k: (rng.random(3) + 0.5).astype(F32) for k in "sbmv"}}
    x = {"x": rng.standard_normal((1, 2, 5, 5)).astype(F32)}
    before = import_graph(make_model(nodes, x, outputs, consts))
    graph = copy.deepcopy(before)
    w = graph.const("w")
    assert w.flags.writeable
    fold_batchnorm(graph)
    fold_scale_shift(graph)
    conv = graph.node("c1")
    assert [n.op for n in graph.nodes].count("Conv") == len(outputs) and len(graph.nodes) == len(outputs)
    assert (graph.const(conv.inputs[1]) is w) == (not shared)
    assert ("w" in graph.values) == shared
    if shared:
        np.testing.assert_array_equal(graph.const("w"), before.const("w"))
    _same_results(before, graph, x, f"in-place fold, shared={shared}")


def test_a_weight_passed_on_by_a_bias_fold_is_not_scaled_in_place_for_its_other_reader():
    """conv c1 shares w with c2; an Add after c1 folds into c1's bias and hands w on under a
    new name; the Mul after it must not scale that array in place (c2 still reads it)."""
    rng = _rng(7)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c1"], name="c1"),
             oh.make_node("Add", ["c1", "a"], ["y1"]),
             oh.make_node("Mul", ["y1", "k"], ["y2"]),
             oh.make_node("Conv", ["x", "w"], ["c2"], name="c2")]
    consts = {"w": rng.standard_normal((3, 2, 3, 3)).astype(F32),
              "a": rng.standard_normal((3, 1, 1)).astype(F32),
              "k": rng.standard_normal((3, 1, 1)).astype(F32)}
    x = {"x": rng.standard_normal((1, 2, 5, 5)).astype(F32)}
    before = import_graph(make_model(nodes, x, ["y2", "c2"], consts))
    graph = copy.deepcopy(before)
    fold_scale_shift(graph)
    assert sorted(n.op for n in graph.nodes) == ["Conv", "Conv"]
    np.testing.assert_array_equal(graph.const("w"), before.const("w"))
    _same_results(before, graph, x, "bias fold then scale, shared weight")


# -- scale / shift ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,op,shape,conv_first", [
    (0, "Mul", (6, 1, 1), True), (1, "Mul", (1, 6, 1, 1), False), (2, "Add", (6, 1, 1), False),
    (3, "Sub", (1, 6, 1, 1), True), (4, "Mul", (), True), (5, "Add", (1,), True),
])
def test_scale_shift_folds_into_conv(seed, op, shape, conv_first):
    rng = _rng(seed)
    c = rng.standard_normal(shape).astype(F32)
    ins = ["c", "k"] if conv_first else ["k", "c"]
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv1"),
             oh.make_node(op, ins, ["y"])]
    consts = {"w": rng.standard_normal((6, 3, 3, 3)).astype(F32), "k": c}
    x = {"x": rng.standard_normal((2, 3, 5, 5)).astype(F32)}
    graph = import_graph(make_model(nodes, x, ["y"], consts))
    before = copy.deepcopy(graph)
    fold_scale_shift(graph)
    assert [n.op for n in graph.nodes] == ["Conv"] and graph.nodes[0].outputs == ["y"]
    _same_results(before, graph, x, f"{op} {shape} seed {seed}")


def test_scale_shift_chain_folds_completely():
    rng = _rng(6)
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["c"]),
             oh.make_node("Mul", ["c", "scale"], ["m"]),
             oh.make_node("Add", ["m", "shift"], ["y"])]
    consts = {"w": rng.standard_normal((4, 2, 1, 1)).astype(F32),
              "b": rng.standard_normal(4).astype(F32),
              "scale": rng.standard_normal((4, 1, 1)).astype(F32),
              "shift": rng.standard_normal((1, 4, 1, 1)).astype(F32)}
    x = {"x": rng.standard_normal((1, 2, 3, 3)).astype(F32)}
    graph = import_graph(make_model(nodes, x, ["y"], consts))
    before = copy.deepcopy(graph)
    fold_scale_shift(graph)
    assert [n.op for n in graph.nodes] == ["Conv"]
    _same_results(before, graph, x, "scale-shift chain seed 6")


@pytest.mark.parametrize("shape", [(1, 6, 5, 5), (6, 5, 1), (5,)])
def test_non_per_channel_constant_is_left(shape):
    rng = _rng(7)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"]), oh.make_node("Mul", ["c", "k"], ["y"])]
    consts = {"w": rng.standard_normal((6, 3, 1, 1)).astype(F32),
              "k": rng.standard_normal(shape).astype(F32)}
    graph = import_graph(make_model(nodes, {"x": np.zeros((1, 3, 5, 5), F32)}, ["y"], consts))
    fold_scale_shift(graph)
    assert [n.op for n in graph.nodes] == ["Conv", "Mul"]


def test_sub_with_constant_first_is_left():
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"]), oh.make_node("Sub", ["k", "c"], ["y"])]
    consts = {"w": np.ones((2, 1, 1, 1), F32), "k": np.ones((2, 1, 1), F32)}
    graph = import_graph(make_model(nodes, {"x": np.zeros((1, 1, 2, 2), F32)}, ["y"], consts))
    fold_scale_shift(graph)
    assert len(graph.nodes) == 2


# -- whole models: the onnx backend's "light" zoo (opset 9, weights from ConstantOfShape) -------
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
_FAST = {"squeezenet", "shufflenet", "resnet50", "bvlc_alexnet"}


def _light_params():
    for name in ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                 "shufflenet", "squeezenet", "vgg19", "zfnet512"]:
        marks = [] if name in _FAST else [pytest.mark.slow]
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_light_params()))
def test_light_model_pipeline_matches_onnxruntime(name):
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not installed")
    proto = load_model(path)
    graph = import_graph(proto)
    (x_name,) = graph.inputs
    shape = [d if isinstance(d, int) else 1 for d in graph.values[x_name].shape]
    x = _rng(0).standard_normal(shape).astype(F32)
    simplify(graph, 1)
    remove_identities(graph)
    fold_batchnorm(graph)
    fold_scale_shift(graph)
    simplify(graph, 1)
    ops = {n.op for n in graph.nodes}
    assert not ops & {"ConstantOfShape", "Shape", "Dropout", "Identity"}, ops
    # the light models' weights are constants, so some nets' logits grow to ~1e10 with all
    # classes equal up to rounding: a softmax there turns one float32 ulp (~1e3) into 0 or 1.
    # The logits are compared always, the probabilities where rounding cannot decide them.
    last = proto.graph.node[-1]
    logits = last.input[0] if last.op_type == "Softmax" else None
    ort_proto = onnx.ModelProto()
    ort_proto.CopyFrom(proto)
    if logits:
        ort_proto.graph.output.append(oh.make_empty_tensor_value_info(logits))
    expected = run_ort(ort_proto, {x_name: x})
    ours = run_graph(graph, {x_name: x}, keep_all=True)
    if logits:
        assert_close(ours[logits], expected[1], what=f"{name} seed 0, logits {logits}")
    if logits is None or np.abs(expected[1]).max() < 1e4:
        assert_close(ours[graph.outputs[0]], expected[0], what=f"{name} seed 0")
