"""Bad models, bad inputs and odd arrays: a clear sparsejit error naming the culprit, or (for the
documented conversions) the right answer. Never a crash, a hang or a silently wrong result."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as oh

import sparsejit
from sparsejit import InputError, ModelError, TargetError, UnsupportedError
from sparsejit.targets import Target
from tests.onnx_helpers import make_model, node_model, run_ort
from tests.tolerances import assert_close

SHAPE = (2, 3, 8, 8)


# -- a small conv + relu + pool + gemm net ----------------------------------------------------
def chain_model(batch: int | str = SHAPE[0], density: float = 1.0, seed: int = 0,
                outputs: tuple[str, ...] = ("y",)) -> onnx.ModelProto:
    """conv(3x3, pad 1) -> relu -> maxpool 2x2 -> flatten -> gemm, on a (batch, 3, 8, 8) input.
    `density` < 1 keeps only the largest conv weights (a pruned, sparse conv)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    if density < 1.0:
        w[np.abs(w) < np.quantile(np.abs(w), 1.0 - density)] = 0.0
    consts = {"w": w, "b": rng.standard_normal(8).astype(np.float32),
              "fw": rng.standard_normal((10, 8 * 4 * 4)).astype(np.float32),
              "fb": rng.standard_normal(10).astype(np.float32)}
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("Flatten", ["p"], ["f"], name="flatten"),
             oh.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    return make_model(nodes, {"x": ((batch, *SHAPE[1:]), np.float32)}, list(outputs), consts)


@pytest.fixture(scope="module")
def chain() -> onnx.ModelProto:
    return chain_model()


@pytest.fixture(scope="module")
def cm(chain) -> sparsejit.CompiledModel:
    return sparsejit.compile(chain, threads=2)


def data(shape=SHAPE, seed: int = 0) -> np.ndarray:
    print(f"input {shape} seed={seed}")
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check(cm: sparsejit.CompiledModel, model: onnx.ModelProto, given, as_float32: np.ndarray,
          what: str) -> None:
    """cm(given) == onnxruntime on the float32 array `given` stands for."""
    want = run_ort(model, {"x": as_float32})
    got = cm(given)
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(got, want):
        assert g.dtype == np.float32, what
        assert_close(g, w, what=what)


# -- models that cannot be compiled -----------------------------------------------------------
@pytest.mark.parametrize("op, opset, attrs", [
    ("Einsum", 13, {"equation": "ij->ji"}),
    ("HardSwish", 14, {}),
    ("ConvTranspose", 11, {}),
])
def test_unsupported_op_names_node_op_and_opset(op, opset, attrs):
    x = data((2, 3))
    consts = {"w": np.ones((3, 2, 1), np.float32)} if op == "ConvTranspose" else None
    model = node_model(op, {"x": x[None] if consts else x}, consts, opset=opset, **attrs)
    with pytest.raises(UnsupportedError) as err:
        sparsejit.compile(model)
    msg = str(err.value)
    assert f"{op.lower()}_node" in msg and op in msg and f"opset {opset}" in msg, msg


def test_unsupported_op_in_a_nameless_node_names_its_output():
    node = oh.make_node("Einsum", ["x"], ["summed"], equation="ij->ji")
    with pytest.raises(UnsupportedError, match="summed.*Einsum"):
        sparsejit.compile(make_model([node], {"x": data((2, 3))}, ["summed"]))


@pytest.mark.parametrize("opset", [3, 99])
def test_unsupported_opset(opset):
    with pytest.raises(UnsupportedError, match=f"opset {opset}"):
        sparsejit.compile(node_model("Relu", {"x": data((2, 3))}, opset=opset))


def _bytes_cases(chain: onnx.ModelProto) -> dict[str, bytes]:
    good = chain.SerializeToString()
    return {"random": np.random.default_rng(0).bytes(4000), "truncated": good[:len(good) // 3],
            "empty": b"", "text": b"hello, not a model\n", "json": b'{"graph": {}}'}


@pytest.mark.parametrize("case", ["random", "truncated", "empty", "text", "json"])
def test_malformed_bytes_and_files(chain, case, tmp_path):
    blob = _bytes_cases(chain)[case]
    with pytest.raises(ModelError):
        sparsejit.compile(blob)
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(blob)
    with pytest.raises(ModelError, match=f"{case}.onnx"):
        sparsejit.compile(path)
    with pytest.raises(ModelError, match=f"{case}.onnx"):
        sparsejit.compile(str(path))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        sparsejit.compile(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="not a file"):
        sparsejit.compile(tmp_path)


@pytest.mark.parametrize("thing", [42, None, [b"bytes"], np.zeros(3)])
def test_not_a_model(thing):
    with pytest.raises(ModelError, match="path, bytes or onnx.ModelProto"):
        sparsejit.compile(thing)


def test_malformed_graphs_name_the_culprit():
    x = data((1, 3, 8, 8))
    cycle = [oh.make_node("Add", ["x", "b2"], ["b1"], name="a"),
             oh.make_node("Relu", ["b1"], ["b2"], name="r")]
    with pytest.raises(ModelError, match="cycle"):
        sparsejit.compile(make_model(cycle, {"x": x}, ["b2"]))
    dangling = [oh.make_node("Relu", ["nowhere"], ["y"], name="r")]
    with pytest.raises(ModelError, match="'r'.*'nowhere'"):
        sparsejit.compile(make_model(dangling, {"x": x}, ["y"]))
    with pytest.raises(ModelError, match="output 'z'"):
        sparsejit.compile(make_model([oh.make_node("Relu", ["x"], ["y"])], {"x": x}, ["z"]))
    bad_conv = node_model("Conv", {"x": x}, {"w": np.ones((4, 5, 3, 3), np.float32)})
    with pytest.raises(ModelError, match="conv_node.*channels"):
        sparsejit.compile(bad_conv)


def test_bad_compile_arguments(chain):
    with pytest.raises(TargetError, match="'pentium'.*known targets"):
        sparsejit.compile(chain, target="pentium")
    with pytest.raises(InputError, match="threads"):
        sparsejit.compile(chain, threads=-1)
    with pytest.raises(InputError, match="threads"):
        sparsejit.compile(chain, threads="two")
    with pytest.raises(InputError, match="threads must be at most 64"):
        sparsejit.compile(chain, threads=65)
    with pytest.raises(InputError, match="batch"):
        sparsejit.compile(chain_model(batch="N"), batch=0)


# -- bad inputs at call time ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.str_])
def test_wrong_dtype(cm, dtype):
    x = np.zeros(SHAPE, dtype)
    with pytest.raises(InputError, match=re.escape(f"input 'x': dtype {x.dtype}")):
        cm(x)


@pytest.mark.parametrize("shape, match", [
    ((3, 8, 8), "rank 3"),
    ((1, 2, 3, 8, 8), "rank 5"),
    ((), "rank 0"),
    ((2, 3, 8, 7), "dimension 3 is 7"),
    ((2, 4, 8, 8), "dimension 1 is 4"),
    ((3, 3, 8, 8), "dimension 0 is 3"),  # a static batch of 2
])
def test_wrong_rank_or_shape(cm, shape, match):
    with pytest.raises(InputError, match=f"input 'x': {match}"):
        cm(np.zeros(shape, np.float32))


def test_wrong_names_and_counts(cm):
    x = data()
    with pytest.raises(InputError, match=r"missing \['x'\], unknown \['data'\]"):
        cm.run({"data": x})
    with pytest.raises(InputError, match=r"missing \['x'\]"):
        cm.run({})
    with pytest.raises(InputError, match=r"unknown \['extra'\]"):
        cm.run({"x": x, "extra": x})
    with pytest.raises(InputError, match="takes 1 input"):
        cm(x, x)
    with pytest.raises(InputError, match="takes 1 input"):
        cm()
    with pytest.raises(InputError, match="dict of inputs"):
        cm.run([x])
    with pytest.raises(InputError, match="dict of inputs"):
        cm.run(x)


def test_inputs_that_are_not_arrays(cm):
    with pytest.raises(InputError, match="input 'x'"):
        cm([[1.0, 2.0], [3.0]])  # ragged
    with pytest.raises(InputError, match="input 'x'"):
        cm(None)
    with pytest.raises(InputError, match="input 'x'"):
        cm("a string")


def test_symbolic_batch_errors():
    cm = sparsejit.compile(chain_model(batch="N"), threads=1)
    with pytest.raises(InputError, match="batch size 0"):
        cm(np.zeros((0, *SHAPE[1:]), np.float32))
    two = make_model([oh.make_node("Add", ["a", "b"], ["y"], name="add")],
                     {"a": (("N", 3), np.float32), "b": (("N", 3), np.float32)}, ["y"])
    with pytest.raises(InputError, match="input 'b': batch 3 differs from 2"):
        sparsejit.compile(two)(np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32))


# -- documented conversions give the right answer ---------------------------------------------
def _variants(x: np.ndarray) -> dict[str, np.ndarray | list]:
    """Ways of passing the data of x that sparsejit converts."""
    wide = np.zeros((*x.shape[:2], x.shape[2] * 2, x.shape[3]), np.float32)
    wide[:, :, ::2] = x
    transposed = np.ascontiguousarray(x.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)
    flipped = np.ascontiguousarray(x[:, :, ::-1])[:, :, ::-1]
    readonly = x.copy()
    readonly.setflags(write=False)
    return {
        "strided": wide[:, :, ::2],
        "transposed": transposed,
        "reversed": flipped,
        "fortran": np.asfortranarray(x),
        "float64": x.astype(np.float64),
        "float16-exact": x.astype(np.float16),  # compared on the float16 values
        "big-endian": x.astype(">f4"),
        "readonly": readonly,
        "list": x.tolist(),
    }


@pytest.mark.parametrize("kind", list(_variants(data())))
def test_converted_inputs_give_the_right_answer(cm, chain, kind):
    x = data()
    given = _variants(x)[kind]
    if kind == "strided":
        assert not given.flags.c_contiguous
    exact = np.asarray(given).astype(np.float32)
    check(cm, chain, given, exact, f"input passed as {kind}")


def unaligned_copy(x: np.ndarray, offset: int) -> np.ndarray:
    """x's data at `offset` bytes past a 64-byte boundary (offset 1 is not even float-aligned)."""
    raw = np.zeros(x.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    out = raw[start:start + x.nbytes].view(np.float32).reshape(x.shape)
    out[...] = x
    assert out.ctypes.data % 64 == offset
    return out


@pytest.mark.parametrize("density", [1.0, 0.2])
@pytest.mark.parametrize("kind", ["unaligned-4", "unaligned-1", "strided", "transposed"])
def test_fc_reads_odd_arrays_directly(density, kind):
    """A 2-D graph input feeding an FC kernel (dense-fc or sparse-fc) straight away."""
    rng = np.random.default_rng(7)
    print("seed=7")
    w = rng.standard_normal((40, 37)).astype(np.float32)
    w[rng.random(w.shape) > density] = 0.0
    x = rng.standard_normal((5, 37)).astype(np.float32)
    model = node_model("Gemm", {"x": x}, {"w": w}, transB=1)
    cm = sparsejit.compile(model)
    fc = next(info for info in cm.layers if info.name == "gemm_node")
    assert fc.kernel.startswith("dense-fc" if density == 1.0 else "sparse-fc")
    given = {"unaligned-4": lambda: unaligned_copy(x, 4), "unaligned-1": lambda: unaligned_copy(x, 1),
             "strided": lambda: np.repeat(x, 2, axis=1)[:, ::2],
             "transposed": lambda: np.ascontiguousarray(x.T).T}[kind]()
    np.testing.assert_array_equal(given, x)
    assert_close(cm(given), run_ort(model, {"x": x})[0], what=f"FC input {kind}")


def test_inputs_are_not_modified_and_outputs_are_fresh(cm, chain):
    x = data()
    keep = x.copy()
    y1 = cm(x)
    np.testing.assert_array_equal(x, keep)
    y1[...] = 123.0  # the caller owns its result
    y2 = cm(x)
    assert_close(y2, run_ort(chain, {"x": x})[0], what="second call after mutating the first result")


# -- NaN and Inf ------------------------------------------------------------------------------
def nonfinite_input(batch: int = 4) -> np.ndarray:
    """Image 0: a NaN 2x2 block at (3..4, 3..4) of channel 0: after the 3x3 conv the NaNs cover
    rows/cols 2..5, whole 2x2 pool windows (so MaxPool's NaN rule does not matter); image 1: +Inf
    at one pixel; image 2: -Inf at one; image 3 is finite."""
    x = data((batch, *SHAPE[1:]), seed=5)
    x[0, 0, 3:5, 3:5] = np.nan
    x[1, 1, 5, 5] = np.inf
    x[2, 2, 0, 6] = -np.inf
    return x


@pytest.mark.parametrize("outputs", [("y",), ("r",), ("c", "p", "y")])
def test_nan_and_inf_propagate_like_onnxruntime(outputs):
    """Dense conv (+ fused relu when its output is not read elsewhere), pool and gemm."""
    model = chain_model(batch=4, outputs=outputs)
    cm = sparsejit.compile(model, threads=2)
    x = nonfinite_input()
    got = cm.run({"x": x})
    for name, want in zip(outputs, run_ort(model, {"x": x})):
        assert np.isnan(want).any() and not np.isnan(want[3]).any()
        assert_close(got[name], want, what=f"{name} with NaN/Inf inputs")


def test_maxpool_propagates_nan():
    """MaxPool in sparsejit gives NaN whenever its window holds one. (onnxruntime's MaxPool
    only does when the NaN is the last element of the window it visits, so the two are
    compared where the window is finite, and sparsejit's NaNs must include onnxruntime's.)"""
    x = data((1, 2, 4, 4), seed=3)
    x[0, 0, 0, 0] = np.nan  # first in its window
    x[0, 1, 3, 3] = np.nan  # last in its window
    model = node_model("MaxPool", {"x": x}, kernel_shape=[2, 2], strides=[2, 2])
    got = sparsejit.compile(model)(x)
    want = run_ort(model, {"x": x})[0]
    windows = x.reshape(1, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, 2, 2, 4)
    has_nan = np.isnan(windows).any(axis=-1)
    np.testing.assert_array_equal(np.isnan(got), has_nan)
    assert np.isnan(got[np.isnan(want)]).all()
    np.testing.assert_array_equal(got[~has_nan], want[~has_nan])


def structural_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 conv, pad 1, in float64, summing only the nonzero weights' products: a pruned weight
    is absent, so 0 * NaN and 0 * Inf never happen."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.broadcast_to(b.astype(np.float64)[None, :, None, None], (n, w.shape[0], h, wd)).copy()
    with np.errstate(invalid="ignore"):
        for ci in range(c):
            for ky in range(3):
                for kx in range(3):
                    tap = w[:, ci, ky, kx].astype(np.float64)[None, :, None, None]
                    window = xp[:, ci, ky:ky + h, kx:kx + wd][:, None]
                    out += np.where(tap != 0, tap * window, 0.0)
    return out.astype(np.float32)


@pytest.mark.parametrize("plan", [{"form": "table"}, {"form": "unrolled"},
                                  {"form": "unrolled", "channels_per_block": 2}], ids=str)
def test_pruned_weights_are_absent_for_nan_and_inf(plan):
    """A sparse conv multiplies only its nonzero weights: a NaN/Inf input reaches the outputs
    of those weights alone (a dense framework's 0 * NaN = NaN does not happen). This is the
    semantics of pruning, and it differs from onnxruntime on such inputs. The unrolled form's
    channel blocks share input loads, not FMAs: a channel's zero at another's position is absent
    too."""
    form = plan["form"]
    model = chain_model(batch=4, density=0.3, outputs=("c",))
    cm = sparsejit.compile(model, threads=1, plans={"conv": plan})
    info = next(i for i in cm.layers if i.name == "conv")
    assert info.kernel.startswith(f"direct {form}") and info.density < 0.5, info.kernel
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    x = nonfinite_input()
    want = structural_conv(x, consts["w"], consts["b"])
    assert_close(cm(x), want, what=f"sparse {form} conv with NaN/Inf inputs")


# -- inspection -------------------------------------------------------------------------------
def test_ir_of_unknown_layer_lists_the_known_ones(cm):
    with pytest.raises(KeyError, match="no_such_layer.*conv, pool, fc"):
        cm.ir("no_such_layer")
    with pytest.raises(KeyError, match="no_such_layer"):
        cm.asm("no_such_layer")


@pytest.mark.parametrize("layer, op, kind", [("flatten", "Flatten", "view")])
def test_ir_of_a_layer_without_kernel_says_so(cm, layer, op, kind):
    with pytest.raises(KeyError, match=f"'{layer}' \\({op}\\) has no kernel \\({kind}"):
        cm.ir(layer)
    with pytest.raises(KeyError, match="has no kernel"):
        cm.asm(layer)


@pytest.mark.parametrize("target, width, register, absent", [
    ("sse", 4, "xmm", "ymm"), ("avx2", 8, "ymm", "zmm"), ("avx512", 16, "zmm", None)])
def test_other_targets_can_be_inspected(chain, target, width, register, absent):
    cm = sparsejit.compile(chain, target=target)
    ir = cm.ir("conv")
    assert f"target: {target}" in ir and f"<{width} x float>" in ir
    asm = cm.asm("conv")
    assert register in asm
    if absent:
        assert absent not in asm


def test_foreign_target_compiles_for_inspection_only(chain):
    """A target whose features the host lacks compiles and shows its IR and assembly; calling
    it is a TargetError naming the missing feature."""
    foreign = Target("foreign", "skylake-avx512", "+avx512f,+fma4", 16, 32, "a CPU with FMA4")
    cm = sparsejit.compile(chain, target=foreign)
    assert "define void" in cm.ir("conv")
    assert "zmm" in cm.asm("conv")
    assert "foreign" in cm.report()
    with pytest.raises(TargetError, match="fma4"):
        cm(data())


# -- outputs the graph folds away -------------------------------------------------------------
def test_constant_outputs_are_returned():
    """An output that folds to a constant (Shape of the input, an Identity of an initializer)
    is still returned, for every batch size."""
    nodes = [oh.make_node("Shape", ["x"], ["shape"], name="shape"),
             oh.make_node("Identity", ["c"], ["copy"], name="copy"),
             oh.make_node("Relu", ["x"], ["y"], name="relu")]
    c = np.arange(3, dtype=np.float32)
    model = make_model(nodes, {"x": (("N", 3), np.float32)}, ["shape", "copy", "y"], {"c": c})
    cm = sparsejit.compile(model)
    for batch in (2, 5):
        x = data((batch, 3), seed=batch)
        got = cm(x)
        for name, g, w in zip(("shape", "copy", "y"), got, run_ort(model, {"x": x})):
            assert g.dtype == w.dtype, name
            np.testing.assert_array_equal(g, w, err_msg=name)


def test_output_that_is_an_input(tmp_path: Path):
    x = data((2, 3))
    model = make_model([oh.make_node("Relu", ["x"], ["y"], name="relu")], {"x": x}, ["y", "x"])
    y, same = sparsejit.compile(model)(x)
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


# -- plan overrides ---------------------------------------------------------------------------
@pytest.mark.parametrize("plans, match", [
    ({"conv": {"no_such_field": 1}}, r"layer 'conv': unknown plan field"),
    ({"conv": {"form": "bogus"}}, r"layer 'conv': invalid plan"),
    ({"conv": {"rows_per_tile": 0}}, r"layer 'conv': invalid plan"),
    ({"no_such_layer": {"form": "table"}}, r"plans given for \['no_such_layer'\]"),
])
def test_bad_plan_overrides_are_clear_errors(plans, match):
    model = chain_model(batch=1, density=0.3, outputs=("c",))
    with pytest.raises(sparsejit.errors.InvalidPlanError, match=match):
        sparsejit.compile(model, threads=1, batch=1, plans=plans)


def test_nan_and_inf_through_a_dense_conv_of_many_channels_match_onnxruntime():
    """A dense conv past the first (6 input channels: the lanes form on AVX-512 hosts, dense
    blocks elsewhere) stores its weights, zeros too, as a dense engine does: NaN and Inf reach
    the same outputs as in onnxruntime."""
    from sparsejit import targets

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6, 9, 11)).astype(np.float32)
    x[0, 0, 4, 4] = np.nan
    x[1, 5, 0, 10] = np.inf
    x[2, 2, 8, 0] = -np.inf
    w = rng.standard_normal((20, 6, 3, 3)).astype(np.float32)
    w[3, :, 1, 1] = 0.0  # stored zeros: 0 x Inf is NaN here as in onnxruntime
    model = node_model("Conv", {"x": x}, {"w": w}, pads=[1, 1, 1, 1])
    cm = sparsejit.compile(model, threads=2)
    lanes = targets.host_target().vector_width == 16
    assert cm.layers[0].kernel.startswith("direct lanes") == lanes, cm.layers[0].kernel
    want = run_ort(model, {"x": x})[0]
    assert np.isnan(want).any() and np.isinf(want).any()
    assert_close(cm(x), want, what="dense conv with NaN/Inf inputs")
