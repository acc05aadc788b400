"""Tests of the built-in models: validity, shapes, layer names, pruning plans and determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sparsejit import models
from sparsejit.models.builder import NetBuilder, pool_out
from sparsejit.models.zoo import ARCHITECTURES

ort = pytest.importorskip("onnxruntime")

# Smallest convenient inputs: the layers (and so the plans) are those of the full nets.
SMALL = {"caffenet": 67, "vgg16": 32, "resnet50": 64, "googlenet": 64, "tiny": 32}
WEIGHT_OPS = ("Conv", "Gemm")


@pytest.fixture(scope="module")
def caffenet() -> onnx.ModelProto:
    # Built once: its 61M weights take a few seconds.
    return models.build("caffenet")


@pytest.fixture(scope="module")
def small_vgg16() -> onnx.ModelProto:
    # VGG's 14.7M conv weights do not shrink with the image; build them once.
    return models.build("vgg16", image_size=SMALL["vgg16"])


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def layer_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv/Gemm node name -> its weight tensor."""
    params = initializers(model)
    return {n.name: params[n.input[1]] for n in model.graph.node if n.op_type in WEIGHT_OPS}


def run(model: onnx.ModelProto, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's output and logits (the softmax's input) on a seeded random image."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    last = model_copy.graph.node[-1]
    if last.op_type == "Softmax":
        model_copy.graph.output.append(
            onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None)
        )
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    session = ort.InferenceSession(model_copy.SerializeToString())
    outputs = session.run(None, {model.graph.input[0].name: x})
    return outputs[0], outputs[-1]


def assert_sane_logits(y: np.ndarray) -> None:
    assert np.isfinite(y).all()
    assert 1e-3 < y.std() < 1e3


# ---- the zoo ------------------------------------------------------------------------------


def test_names():
    assert models.names() == ["caffenet", "vgg16", "resnet50", "googlenet", "tiny"]


@pytest.mark.parametrize("name", ["tiny", "googlenet", "resnet50"])
def test_full_size_models_are_valid_and_sane(name):
    model = models.build(name)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 13
    assert_sane_logits(run(model)[1])


def test_caffenet_runs(caffenet):
    onnx.checker.check_model(caffenet)
    prob, logits = run(caffenet)
    assert prob.shape == (1, 1000)
    assert np.isfinite(prob).all()
    np.testing.assert_allclose(prob.sum(), 1.0, rtol=1e-4)
    assert_sane_logits(logits)


def test_caffenet_layers(caffenet):
    nodes = {n.name: n for n in caffenet.graph.node}
    for name in ["conv1", "relu1", "pool1", "norm1", "conv2", "norm2", "conv3", "conv4",
                 "conv5", "pool5", "fc6", "relu6", "drop6", "fc7", "fc8", "prob"]:
        assert name in nodes
    weights = layer_weights(caffenet)
    assert weights["conv1"].shape == (96, 3, 11, 11)
    assert weights["conv2"].shape == (256, 48, 5, 5)
    assert weights["fc6"].shape == (4096, 9216)
    assert [a.i for a in nodes["conv4"].attribute if a.name == "group"] == [2]
    assert caffenet.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 227


def test_small_vgg16_is_valid_and_sane(small_vgg16):
    onnx.checker.check_model(small_vgg16)
    assert_sane_logits(run(small_vgg16)[1])


@pytest.mark.slow
def test_full_vgg16_is_valid_and_sane():
    model = models.build("vgg16")
    onnx.checker.check_model(model)
    assert layer_weights(model)["fc6"].shape == (4096, 25088)
    assert_sane_logits(run(model)[1])


@pytest.mark.parametrize("name, tensor, shape", [
    ("caffenet", "pool5", (256, 6, 6)),
    ("vgg16", "pool5", (512, 7, 7)),
    ("resnet50", "maxpool", (64, 56, 56)),
    ("resnet50", "layer2.0.conv2", (128, 28, 28)),
    ("resnet50", "layer4.2.relu3", (2048, 7, 7)),
    ("googlenet", "pool1/3x3_s2", (64, 56, 56)),  # 55 without Caffe's rounding up
    ("googlenet", "inception_3a/output", (256, 28, 28)),
    ("googlenet", "inception_4e/output", (832, 14, 14)),
    ("googlenet", "inception_5b/output", (1024, 7, 7)),
    ("googlenet", "pool5/7x7_s1", (1024, 1, 1)),
])
def test_canonical_shapes(name, tensor, shape):
    architecture, size = ARCHITECTURES[name]
    tracer = NetBuilder(name, (3, size, size), materialize=False)
    architecture(tracer)
    assert tracer.shapes[tensor] == shape


def test_pool_rounding():
    assert pool_out(112, 3, 2, 0, ceil=True) == 56
    assert pool_out(112, 3, 2, 0, ceil=False) == 55
    # The last window may not start in the right padding.
    assert pool_out(5, 2, 2, 1, ceil=True) == 3


def test_torchvision_and_bvlc_names():
    resnet = {n.name: n.op_type for n in models.build("resnet50", image_size=32).graph.node}
    assert resnet["layer1.0.conv1"] == "Conv"
    assert resnet["layer1.0.bn1"] == "BatchNormalization"
    assert resnet["layer1.0.downsample.0"] == "Conv"
    assert resnet["layer3.5.add"] == "Add"
    assert resnet["fc"] == "Gemm"
    assert sum(op == "Conv" for op in resnet.values()) == 53
    googlenet = {n.name: n.op_type for n in models.build("googlenet", image_size=32).graph.node}
    assert googlenet["inception_4d/5x5"] == "Conv"
    assert googlenet["inception_4d/output"] == "Concat"
    assert googlenet["loss3/classifier"] == "Gemm"
    assert sum(op == "Conv" for op in googlenet.values()) == 57


def test_tiny_covers_every_op_class():
    model = models.build("tiny")
    ops = {n.op_type for n in model.graph.node}
    assert ops >= {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "Concat",
                   "Add", "LRN", "Flatten", "Gemm", "Softmax"}
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in model.graph.node if n.op_type == "Conv"}
    assert attrs["conv3"]["group"] == 4
    assert attrs["conv4"]["group"] == 32  # depthwise
    assert attrs["conv2"]["strides"] == [2, 2]
    assert attrs["conv5b"]["dilations"] == [2, 2]
    assert run(model)[0].shape == (1, 10)


def test_batchnorm_statistics_are_plausible():
    params = initializers(models.build("tiny"))
    assert (params["bn1.running_var"] > 0).all()
    assert 0.5 < params["bn1.weight"].mean() < 1.5


# ---- batch, determinism, errors -----------------------------------------------------------


def test_symbolic_batch():
    model = models.build("tiny", batch=None)
    onnx.checker.check_model(model)
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "N"
    assert run(model, batch=3)[0].shape == (3, 10)


def test_static_batch():
    model = models.build("tiny", batch=4)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert run(model, batch=4)[0].shape == (4, 10)


@pytest.mark.parametrize("name", ["tiny", "googlenet"])
def test_same_seed_same_weights(name):
    size = SMALL[name]
    a = initializers(models.build(name, seed=3, image_size=size))
    b = initializers(models.build(name, seed=3, image_size=size))
    c = initializers(models.build(name, seed=4, image_size=size))
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    first_weight = next(iter(a))
    assert not np.array_equal(a[first_weight], c[first_weight])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        models.build("lenet")
    with pytest.raises(ValueError, match="sparsity"):
        models.build("tiny", sparsity="sparse")
    with pytest.raises(ValueError, match="sparsity"):
        models.density_plan("tiny", "1.5")
    with pytest.raises(ValueError, match="too small"):
        models.build("caffenet", image_size=32)


# ---- pruning plans ------------------------------------------------------------------------


def assert_densities_follow_plan(model: onnx.ModelProto, plan: dict[str, float]) -> None:
    weights = layer_weights(model)
    assert list(weights) == list(plan)
    for layer, w in weights.items():
        assert np.count_nonzero(w) == round(plan[layer] * w.size), layer


def test_caffenet_seed_densities(caffenet):
    plan = models.density_plan("caffenet", "seed")
    assert plan == {"conv1": 1.0, "conv2": 0.14, "conv3": 0.07, "conv4": 0.08, "conv5": 0.12,
                    "fc6": 0.10, "fc7": 0.16, "fc8": 0.26}
    assert_densities_follow_plan(caffenet, plan)


def test_vgg16_seed_densities(small_vgg16):
    assert_densities_follow_plan(small_vgg16, models.density_plan("vgg16", "seed"))


# The two big nets get one more plan each: the plans themselves are checked without weights.
@pytest.mark.parametrize("name, sparsity", [
    *((name, sparsity) for name in ("resnet50", "googlenet", "tiny")
      for sparsity in ("seed", "all", "dense", "0.05")),
    ("caffenet", "all"),
    ("vgg16", "0.05"),
])
def test_pruned_densities_follow_plan(name, sparsity):
    model = models.build(name, sparsity=sparsity, image_size=SMALL[name])
    assert_densities_follow_plan(model, models.density_plan(name, sparsity))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["caffenet", "vgg16"])
@pytest.mark.parametrize("sparsity", ["seed", "all", "dense", "0.05"])
def test_big_net_densities_follow_every_plan(name, sparsity):
    model = models.build(name, sparsity=sparsity)
    assert_densities_follow_plan(model, models.density_plan(name, sparsity))


def test_seed_plans():
    resnet = models.density_plan("resnet50", "seed")
    assert resnet["conv1"] == 1.0
    assert resnet["layer1.0.conv2"] == resnet["layer4.2.conv2"] == 0.10
    assert resnet["layer1.0.conv1"] == resnet["layer1.0.downsample.0"] == resnet["fc"] == 1.0
    googlenet = models.density_plan("googlenet", "seed")
    assert googlenet["conv1/7x7_s2"] == googlenet["conv2/3x3_reduce"] == 1.0
    assert googlenet["conv2/3x3"] == googlenet["inception_5b/5x5"] == 0.10
    assert googlenet["inception_3a/1x1"] == googlenet["inception_3a/pool_proj"] == 1.0
    vgg = models.density_plan("vgg16", "seed")
    assert vgg["conv1_1"] == vgg["fc6"] == 1.0
    assert {vgg[f"conv{s}_{i}"] for s, i in [(1, 2), (3, 3), (5, 3)]} == {0.10}
    tiny = models.density_plan("tiny", "seed")
    assert tiny["conv1"] == tiny["fc6"] == 1.0
    assert tiny["conv4"] == tiny["conv5a"] == 0.10


def test_all_dense_and_uniform_plans():
    caffenet_all = models.density_plan("caffenet", "all")
    assert caffenet_all["conv1"] == 1.0 and caffenet_all["conv3"] == 0.10
    assert caffenet_all["fc6"] == 0.10 and caffenet_all["fc8"] == 0.26
    resnet_all = models.density_plan("resnet50", "all")
    assert resnet_all["conv1"] == resnet_all["fc"] == 1.0
    assert resnet_all["layer1.0.conv1"] == resnet_all["layer1.0.downsample.0"] == 0.10
    assert set(models.density_plan("googlenet", "dense").values()) == {1.0}
    uniform = models.density_plan("caffenet", "0.05")
    assert uniform["conv1"] == uniform["fc6"] == 1.0 and uniform["conv5"] == 0.05


def test_pruned_weights_keep_scale():
    """Survivors are rescaled so a pruned layer keeps the dense layer's output variance."""
    dense = layer_weights(models.build("tiny", sparsity="dense"))["conv2"]
    pruned = layer_weights(models.build("tiny", sparsity="seed"))["conv2"]
    np.testing.assert_allclose(np.linalg.norm(pruned), np.linalg.norm(dense), rtol=1e-4)
    kept = pruned != 0
    ratio = pruned[kept] / dense[kept]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # same survivors, one scale
    assert np.abs(dense[kept]).min() >= np.abs(dense[~kept]).max()


# ---- prune_by_magnitude -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (5, 13), (8, 3, 3, 3)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.33, 0.5, 0.99, 1.0])
def test_prune_keeps_largest_exact_count(shape, density):
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    original = w.copy()
    pruned = models.prune_by_magnitude(w, density)
    assert pruned.shape == w.shape and pruned.dtype == w.dtype
    np.testing.assert_array_equal(w, original)  # the input is left alone
    kept = pruned != 0
    assert kept.sum() == round(density * w.size)
    np.testing.assert_array_equal(pruned[kept], w[kept])
    if 0 < kept.sum() < w.size:
        assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()
    assert not np.signbit(pruned[~kept]).any()  # +0.0, not -0.0


def test_prune_edge_densities():
    w = np.arange(1.0, 7.0).reshape(2, 3)
    np.testing.assert_array_equal(models.prune_by_magnitude(w, 1.0), w)
    np.testing.assert_array_equal(models.prune_by_magnitude(w, 0.0), np.zeros_like(w))
    np.testing.assert_array_equal(models.prune_by_magnitude(-w, 0.5), [[0, 0, 0], [-4, -5, -6]])
    with pytest.raises(ValueError):
        models.prune_by_magnitude(w, 1.1)


def test_prune_ties_are_deterministic():
    w = np.array([1.0, -2.0, 2.0, 1.0, 2.0, -1.0])
    # Three entries of magnitude 2 compete for two places: the lowest indices win.
    np.testing.assert_array_equal(models.prune_by_magnitude(w, 2 / 6), [0, -2, 2, 0, 0, 0])
    np.testing.assert_array_equal(models.prune_by_magnitude(np.ones(5), 0.4), [1, 1, 0, 0, 0])
