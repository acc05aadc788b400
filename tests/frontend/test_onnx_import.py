"""Loading and importing ONNX models: errors, opsets, constants, attribute normalisation, 1-D."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from sparsejit.errors import ModelError, UnsupportedError
from sparsejit.frontend.onnx_import import import_graph, load_model
from tests.onnx_helpers import check_against_ort, make_model, node_model

F32 = np.float32


def _conv_model(opset: int = 13) -> onnx.ModelProto:
    w = np.ones((2, 3, 3, 3), F32)
    return node_model("Conv", {"x": np.zeros((1, 3, 5, 5), F32)}, {"w": w}, opset=opset)


# -- load_model ---------------------------------------------------------------------------------
def test_load_from_path_bytes_and_proto(tmp_path):
    model = _conv_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    for source in (str(path), path, model.SerializeToString(), model):
        proto = load_model(source)
        assert proto.graph.node[0].op_type == "Conv"


def test_load_external_data(tmp_path):
    model = _conv_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    graph = import_graph(load_model(path))
    assert graph.const("w").shape == (2, 3, 3, 3)


def test_missing_external_data_is_a_model_error(tmp_path):
    model = _conv_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="ext.onnx"):
        import_graph(load_model(path))


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff garbage", b"", b"hello world", b"\x08\x07"])
def test_malformed_bytes_are_a_model_error(data):
    with pytest.raises(ModelError):
        load_model(data)


def test_malformed_file_names_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(_conv_model().SerializeToString()[:40])
    with pytest.raises(ModelError, match="broken.onnx"):
        load_model(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="not a file"):
        load_model(tmp_path)


def test_wrong_type_is_a_model_error():
    with pytest.raises(ModelError, match="int"):
        load_model(42)


# -- opsets, ops, domains -----------------------------------------------------------------------
@pytest.mark.parametrize("opset,why", [(5, "consumed_inputs"), (29, "newer")])
def test_opset_outside_range(opset, why):
    with pytest.raises(UnsupportedError, match=f"opset {opset} .*{why}"):
        import_graph(_conv_model(opset))


def test_opset_is_recorded():
    assert import_graph(_conv_model(6)).opset == 6
    assert import_graph(_conv_model(28)).opset == 28


def test_unsupported_op_names_node_op_and_opset():
    node = oh.make_node("Resize", ["x"], ["y"], name="up1")
    model = make_model([node], {"x": np.zeros((1, 1, 2, 2), F32)}, ["y"], opset=13)
    with pytest.raises(UnsupportedError) as err:
        import_graph(model)
    assert str(err.value) == "node 'up1' (op Resize, opset 13) is not supported by sparsejit"


def test_unsupported_op_without_name_uses_its_output():
    node = oh.make_node("Erf", ["x"], ["erf_out"])
    model = make_model([node], {"x": np.zeros((2,), F32)}, ["erf_out"], opset=11)
    with pytest.raises(UnsupportedError, match="node 'erf_out' \\(op Erf, opset 11\\)"):
        import_graph(model)


def test_other_domain_is_unsupported():
    node = oh.make_node("Relu", ["x"], ["y"], name="r", domain="com.microsoft")
    model = make_model([node], {"x": np.zeros((2,), F32)}, ["y"])
    model.opset_import.append(oh.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedError, match="'r'.*com.microsoft"):
        import_graph(model)


def test_undefined_tensor_is_a_model_error():
    node = oh.make_node("Add", ["x", "ghost"], ["y"], name="add1")
    model = make_model([node], {"x": np.zeros((2,), F32)}, ["y"])
    with pytest.raises(ModelError, match="'add1'.*'ghost'"):
        import_graph(model)


# -- values -------------------------------------------------------------------------------------
def test_initializer_listed_as_input_is_a_constant():
    model = _conv_model()
    model.graph.input.append(oh.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 3, 3]))
    graph = import_graph(model)
    assert graph.inputs == ["x"]
    assert graph.values["w"].is_const and graph.values["w"].shape == (2, 3, 3, 3)


def test_input_shapes_dtypes_and_symbolic_dims():
    vi = oh.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, None, 5])
    vi.type.tensor_type.shape.dim[2].Clear()  # no dim_value, no dim_param
    model = make_model([oh.make_node("Relu", ["x"], ["y"])], {}, ["y"])
    model.graph.input.append(vi)
    graph = import_graph(model)
    value = graph.values["x"]
    assert value.dtype == np.float16
    assert value.shape == ("batch", 3, "dim2", 5)


def test_int_input_into_conv_is_unsupported():
    model = node_model("Conv", {"x": np.zeros((1, 3, 5, 5), np.int64)},
                       {"w": np.ones((2, 3, 3, 3), F32)})
    with pytest.raises(UnsupportedError, match="'x' is int64"):
        import_graph(model)


@pytest.mark.parametrize("attrs,expected", [
    ({"value": numpy_helper.from_array(np.arange(6, dtype=F32).reshape(2, 3))},
     np.arange(6, dtype=F32).reshape(2, 3)),
    ({"value_float": 1.5}, np.array(1.5, F32)),
    ({"value_floats": [1.0, 2.0]}, np.array([1.0, 2.0], F32)),
    ({"value_int": 7}, np.array(7, np.int64)),
    ({"value_ints": [1, -1]}, np.array([1, -1], np.int64)),
])
def test_constant_node_forms(attrs, expected):
    const = oh.make_node("Constant", [], ["c"], **attrs)
    add = oh.make_node("Identity", ["c"], ["y"])
    graph = import_graph(make_model([const, add], {}, ["y"]))
    got = graph.const("c")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    assert [n.op for n in graph.nodes] == ["Identity"]


def test_attributes_become_plain_python():
    node = oh.make_node("Pad", ["x"], ["y"], mode="reflect", pads=[0, 1, 0, 1])
    graph = import_graph(make_model([node], {"x": np.zeros((2, 3), F32)}, ["y"], opset=9))
    attrs = graph.nodes[0].attrs
    assert attrs["mode"] == "reflect" and isinstance(attrs["mode"], str)
    assert attrs["pads"] == [0, 1, 0, 1]


def test_duplicate_node_names_are_made_unique():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="n"),
             oh.make_node("Relu", ["a"], ["b"], name="n")]
    graph = import_graph(make_model(nodes, {"x": np.zeros(2, F32)}, ["b"]))
    assert sorted(n.name for n in graph.nodes) == ["n", "n_2"]


def test_sparse_initializer_is_densified():
    dense = np.zeros((2, 3, 1, 1), F32)
    dense[0, 1, 0, 0], dense[1, 2, 0, 0] = 2.0, -1.0
    values = numpy_helper.from_array(np.array([2.0, -1.0], F32), "w")
    indices = numpy_helper.from_array(np.array([1, 5], np.int64), "w_idx")
    model = node_model("Conv", {"x": np.zeros((1, 3, 4, 4), F32)}, {}, order=["x", "w"])
    model.graph.sparse_initializer.append(oh.make_sparse_tensor(values, indices, [2, 3, 1, 1]))
    graph = import_graph(model)
    np.testing.assert_array_equal(graph.const("w"), dense)


# -- attribute normalisation --------------------------------------------------------------------
def _attrs(op, feeds, consts=None, opset=13, **attrs):
    graph = import_graph(node_model(op, feeds, consts, opset=opset, **attrs))
    return next(n for n in graph.nodes if n.op == op).attrs


def test_conv_defaults_filled():
    a = _attrs("Conv", {"x": np.zeros((1, 3, 5, 5), F32)}, {"w": np.ones((2, 3, 3, 2), F32)})
    assert a == {"kernel_shape": [3, 2], "strides": [1, 1], "dilations": [1, 1],
                 "pads": [0, 0, 0, 0], "auto_pad": "NOTSET", "group": 1}


def test_conv_valid_auto_pad_is_resolved_at_import():
    a = _attrs("Conv", {"x": np.zeros((1, 3, 5, 5), F32)}, {"w": np.ones((2, 3, 3, 3), F32)},
               auto_pad="VALID", pads=[1, 1, 1, 1])
    assert a["auto_pad"] == "NOTSET" and a["pads"] == [0, 0, 0, 0]


def test_pool_defaults_filled():
    x = {"x": np.zeros((1, 3, 5, 5), F32)}
    a = _attrs("MaxPool", x, kernel_shape=[2, 2])
    assert a == {"kernel_shape": [2, 2], "strides": [1, 1], "dilations": [1, 1],
                 "pads": [0, 0, 0, 0], "auto_pad": "NOTSET", "ceil_mode": 0}
    a = _attrs("AveragePool", x, kernel_shape=[2, 2], opset=9)
    assert a["count_include_pad"] == 0 and a["ceil_mode"] == 0


@pytest.mark.parametrize("op,feeds,consts,opset,attrs,expected", [
    ("Gemm", {"a": np.zeros((2, 3), F32)}, {"b": np.zeros((3, 4), F32)}, 13, {},
     {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}),
    ("BatchNormalization", {"x": np.zeros((1, 2, 3, 3), F32)},
     {k: np.ones(2, F32) for k in "sbmv"}, 15, {}, {"epsilon": 1e-5}),
    ("LRN", {"x": np.zeros((1, 3, 2, 2), F32)}, None, 13, {"size": 3},
     {"size": 3, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}),
    ("LeakyRelu", {"x": np.zeros(2, F32)}, None, 13, {}, {"alpha": 0.01}),
    ("Softmax", {"x": np.zeros((2, 3), F32)}, None, 9, {}, {"axis": 1, "coerce_2d": True}),
    ("Softmax", {"x": np.zeros((2, 3), F32)}, None, 13, {}, {"axis": -1, "coerce_2d": False}),
    ("Flatten", {"x": np.zeros((2, 3), F32)}, None, 13, {}, {"axis": 1}),
    ("Reshape", {"x": np.zeros((2, 3), F32)}, {"s": np.array([6], np.int64)}, 13, {},
     {"allowzero": 0}),
    ("Squeeze", {"x": np.zeros((2, 1), F32)}, {"ax": np.array([1], np.int64)}, 13, {},
     {"axes": [1]}),
    ("Squeeze", {"x": np.zeros((2, 1), F32)}, None, 11, {"axes": [-1]}, {"axes": [-1]}),
    ("Unsqueeze", {"x": np.zeros(2, F32)}, {"ax": np.array([0], np.int64)}, 13, {},
     {"axes": [0]}),
    ("Clip", {"x": np.zeros(2, F32)}, None, 9, {"min": 0.0},
     {"min": 0.0, "max": float(np.finfo(F32).max)}),
    ("Clip", {"x": np.zeros(2, F32)}, {"lo": np.float32(0), "hi": np.float32(6)}, 13, {},
     {"min": 0.0, "max": 6.0}),
    ("Pad", {"x": np.zeros(2, F32)}, {"p": np.array([1, 2], np.int64)}, 13, {},
     {"mode": "constant", "pads": [1, 2], "value": 0.0, "axes": None}),
    ("Cast", {"x": np.zeros(2, F32)}, None, 13, {"to": TensorProto.INT64}, {"to": "int64"}),
    ("Dropout", {"x": np.zeros(2, F32)}, None, 9, {"ratio": 0.2},
     {"ratio": pytest.approx(0.2), "training_mode": 0}),
])
def test_normalised_attributes(op, feeds, consts, opset, attrs, expected):
    consts = {k: np.asarray(v) for k, v in (consts or {}).items()}
    graph = import_graph(node_model(op, feeds, consts, opset=opset, **attrs))
    node = graph.nodes[0]
    assert node.attrs == expected
    assert node.inputs == list(feeds)[:1] + list(consts)[: len(node.inputs) - 1]


def test_const_settings_inputs_are_absorbed():
    graph = import_graph(node_model("Clip", {"x": np.zeros(2, F32)},
                                    {"lo": np.float32(0), "hi": np.float32(6)}))
    assert graph.nodes[0].inputs == ["x"]


def test_runtime_settings_input_stays_an_input():
    model = node_model("Clip", {"x": np.zeros(2, F32), "lo": np.array(0.5, F32)})
    graph = import_graph(model)
    assert graph.nodes[0].inputs == ["x", "lo"]


def test_batchnorm_training_mode_is_unsupported():
    consts = {k: np.ones(2, F32) for k in "sbmv"}
    model = node_model("BatchNormalization", {"x": np.zeros((1, 2, 2, 2), F32)}, consts,
                       opset=15, training_mode=1)
    with pytest.raises(UnsupportedError, match="training"):
        import_graph(model)


def test_3d_conv_is_unsupported():
    model = node_model("Conv", {"x": np.zeros((1, 1, 3, 3, 3), F32)},
                       {"w": np.ones((1, 1, 2, 2, 2), F32)})
    with pytest.raises(UnsupportedError, match="3-D Conv"):
        import_graph(model)


# -- 1-D ops become 2-D -------------------------------------------------------------------------
def test_1d_conv_is_rewritten_as_2d():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 12)).astype(F32)
    w, b = rng.standard_normal((4, 3, 5)).astype(F32), rng.standard_normal(4).astype(F32)
    model = node_model("Conv", {"x": x}, {"w": w, "b": b}, pads=[2, 1], strides=[2],
                       dilations=[2])
    graph = check_against_ort(model, {"x": x}, "1-D conv seed 3")
    ops = sorted(n.op for n in graph.nodes)
    assert ops == ["Conv", "Squeeze", "Unsqueeze"]
    conv = next(n for n in graph.nodes if n.op == "Conv")
    assert conv.name == "conv_node"
    assert conv.attrs["pads"] == [0, 2, 0, 1] and conv.attrs["strides"] == [1, 2]
    assert conv.attrs["kernel_shape"] == [1, 5] and conv.attrs["dilations"] == [1, 2]
    assert graph.const(conv.inputs[1]).shape == (4, 3, 1, 5)


def test_1d_maxpool_is_rewritten_as_2d():
    x = np.random.default_rng(4).standard_normal((1, 2, 9)).astype(F32)
    model = node_model("MaxPool", {"x": x}, kernel_shape=[3], strides=[2], ceil_mode=1)
    graph = check_against_ort(model, {"x": x}, "1-D maxpool seed 4")
    pool = next(n for n in graph.nodes if n.op == "MaxPool")
    assert pool.attrs["kernel_shape"] == [1, 3]


# -- one small CNN in every opset form ----------------------------------------------------------
def _small_cnn(opset: int, rng: np.random.Generator) -> onnx.ModelProto:
    """conv -> BN -> clip(0, 6) -> maxpool -> dropout -> unsqueeze/squeeze -> view(n, -1) ->
    fc -> softmax, written the way `opset` requires."""
    i64 = np.int64

    def axes_node(op, x, y, axes):
        if opset < 13:
            return oh.make_node(op, [x], [y], axes=axes)
        return oh.make_node(op, [x, f"{y}_axes"], [y])

    clip = (oh.make_node("Clip", ["bn"], ["r"], min=0.0, max=6.0) if opset < 11
            else oh.make_node("Clip", ["bn", "zero_f", "six_f"], ["r"]))
    pool_attrs = {"ceil_mode": 1} if opset >= 10 else {}
    nodes = [
        oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        oh.make_node("BatchNormalization", ["c", "s", "beta", "mean", "var"], ["bn"]),
        clip,
        oh.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], **pool_attrs),
        oh.make_node("Dropout", ["p"], ["d"]),
        axes_node("Unsqueeze", "d", "u", [0]),
        axes_node("Squeeze", "u", "sq", [0]),
        oh.make_node("Shape", ["sq"], ["sh"]),
        oh.make_node("Gather", ["sh", "zero_i"], ["n"], axis=0),
        axes_node("Unsqueeze", "n", "n1", [0]),
        oh.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        oh.make_node("Reshape", ["sq", "shape"], ["f"]),
        oh.make_node("Gemm", ["f", "fc", "fcb"], ["g"], transB=1),
        oh.make_node("Softmax", ["g"], ["y"], axis=1),
    ]
    consts = {
        "w": rng.standard_normal((4, 3, 3, 3)).astype(F32), "b": rng.standard_normal(4).astype(F32),
        "s": rng.standard_normal(4).astype(F32), "beta": rng.standard_normal(4).astype(F32),
        "mean": rng.standard_normal(4).astype(F32), "var": (rng.random(4) + 0.5).astype(F32),
        "zero_f": np.array(0, F32), "six_f": np.array(6, F32), "zero_i": np.array(0, i64),
        "minus1": np.array([-1], i64), "fc": rng.standard_normal((5, 4 * 3 * 3)).astype(F32),
        "fcb": rng.standard_normal(5).astype(F32),
    }
    if opset >= 13:
        consts.update({f"{y}_axes": np.array([0], i64) for y in ("u", "sq", "n1")})
    x = rng.standard_normal((2, 3, 11, 11)).astype(F32)
    return make_model(nodes, {"x": x}, ["y"], consts, opset), x


@pytest.mark.parametrize("opset", [9, 10, 11, 12, 13, 15, 17, 18, 21])
def test_small_cnn_in_every_opset(opset):
    rng = np.random.default_rng(opset)
    model, x = _small_cnn(opset, rng)
    check_against_ort(model, {"x": x}, f"small cnn opset {opset} seed {opset}", batch=2)
