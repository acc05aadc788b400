"""The public API as the README shows it: sparsejit.compile, calling, run, report, ir, asm."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper as oh

import sparsejit
from sparsejit import config, targets
from sparsejit.graph import weights
from tests.onnx_helpers import make_model, run_ort
from tests.tolerances import assert_close


@pytest.fixture(scope="module")
def cm(tiny_model) -> sparsejit.CompiledModel:
    return sparsejit.compile(tiny_model, target="host", threads=None)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    print("input seed=11")
    return np.random.default_rng(11).standard_normal((1, 3, 32, 32)).astype(np.float32)


def test_exports():
    for name in sparsejit.__all__:
        assert getattr(sparsejit, name) is not None, name
    assert issubclass(sparsejit.InputError, sparsejit.SparseJitError)
    assert issubclass(sparsejit.InputError, ValueError)
    with pytest.raises(AttributeError):
        sparsejit.no_such_thing  # noqa: B018


@pytest.mark.parametrize("form", ["path", "str", "bytes", "bytearray", "proto"])
def test_compile_accepts_path_bytes_and_proto(tiny_model, tiny_path, x, form):
    given = {"path": tiny_path, "str": str(tiny_path), "bytes": tiny_model.SerializeToString(),
             "bytearray": bytearray(tiny_model.SerializeToString()), "proto": tiny_model}[form]
    cm = sparsejit.compile(given)
    assert isinstance(cm, sparsejit.CompiledModel)
    assert_close(cm(x), run_ort(tiny_model, {"data": x})[0], what=f"compiled from {form}")


def test_defaults(cm):
    assert cm.target.name == "host"
    assert cm.threads == config.default_threads()
    assert cm.input_names == ["data"] and cm.output_names == ["prob"]
    assert cm.input_shape("data") == (1, 3, 32, 32)
    assert "tiny" in repr(cm) and "host" in repr(cm)


def test_call_returns_an_array_for_one_output(cm, tiny_model, x):
    y = cm(x)
    assert isinstance(y, np.ndarray) and y.shape == (1, 10) and y.dtype == np.float32
    assert_close(y, run_ort(tiny_model, {"data": x})[0], what="cm(x)")


def test_run_returns_a_dict_by_output_name(cm, x):
    outs = cm.run({"data": x})
    assert list(outs) == ["prob"]
    np.testing.assert_array_equal(outs["prob"], cm(x))


def two_output_model() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    nodes = [oh.make_node("Conv", ["a", "w"], ["feat"], pads=[1, 1, 1, 1]),  # no node name
             oh.make_node("Relu", ["feat"], ["act"], name="relu"),
             oh.make_node("Add", ["act", "b"], ["sum"], name="add")]
    return make_model(nodes, {"a": ((2, 2, 5, 5), np.float32), "b": ((2, 4, 5, 5), np.float32)},
                      ["sum", "feat"], {"w": w})


def test_several_outputs_and_inputs():
    model = two_output_model()
    cm = sparsejit.compile(model)
    rng = np.random.default_rng(4)
    print("input seed=4")
    a = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    b = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    got = cm(a, b)
    assert isinstance(got, tuple) and len(got) == 2
    want = run_ort(model, {"a": a, "b": b})
    for name, g, w in zip(("sum", "feat"), got, want):
        assert_close(g, w, what=name)
    outs = cm.run({"b": b, "a": a})  # by name, in any order
    assert list(outs) == ["sum", "feat"]
    for name, g in zip(outs, got):
        np.testing.assert_array_equal(outs[name], g)


def test_layers_are_named_by_node_name_else_first_output():
    cm = sparsejit.compile(two_output_model())
    names = [info.name for info in cm.layers]
    assert "feat" in names and "add" in names
    assert "define void" in cm.ir("feat")
    assert cm.ir("feat") == next(info.ir for info in cm.lowered().layers if info.name == "feat")


def test_report_lists_every_layer(cm, tiny_model):
    report = cm.report()
    print(report)
    lines = report.splitlines()
    assert "tiny" in lines[0] and "host" in lines[0] and "batch 1" in lines[0]
    header = lines[1]
    for column in ("layer", "op", "kernel", "density", "nonzeros", "obj KB"):
        assert column in header
    rows = {line.split()[0]: line for line in lines[3:]}
    assert list(rows) == [info.name for info in cm.layers]
    onnx_names = {n.name for n in tiny_model.graph.node}
    for info in cm.layers:
        row = rows[info.name]
        # kernels of their own for a node's parts: "conv2:pack" (a strided conv's packed input),
        # "concat5:in0" (a Concat input's copy, where it is not written in place)
        assert info.name.split(":")[0] in onnx_names or info.name.startswith("input:")
        assert re.search(rf"\b{info.op}\b", row) and info.kernel in row, row
        if info.source is not None and info.density is not None:
            assert f"{info.density:.3f}" in row and f" {info.nonzeros} " in row, row
            assert f"{info.code_bytes / 1024:.1f}" in row, row
        elif info.source is None:
            assert info.kernel in ("reference (numpy)", "view (no copy)", "in place (no copy)"), row
    assert "Conv+Relu" in report  # fused activations are shown
    assert "BatchNormalization" not in report  # folded into conv1


def test_pools_are_generated_kernels(cm):
    pools = [info for info in cm.layers if info.op in ("MaxPool", "AveragePool", "GlobalAveragePool")]
    assert pools and all(info.kernel.startswith("pool ") for info in pools)
    assert "; template: pool.ll.j2" in cm.ir(pools[0].name)


def test_ir_has_the_kernel_and_its_template(cm):
    ir = cm.ir("conv3")
    assert "define void" in ir
    assert re.search(r"^; template: conv_direct_(table|unrolled)\.ll\.j2", ir, re.M), ir[:300]
    assert "target: host" in ir
    assert re.search(r"^; template: gemm_dense\.ll\.j2", cm.ir("fc6"), re.M)


def test_asm_uses_fma(cm):
    asm = cm.asm("conv3")
    assert "vfmadd" in asm
    # the host target uses the widest vectors the host has: xmm (4), ymm (8) or zmm (16 floats)
    register = {4: "xmm", 8: "ymm", 16: "zmm"}[targets.host_target().vector_width]
    assert f"%{register}" in asm


def test_profile_times_every_layer(cm, x):
    times = cm.profile({"data": x}, repeats=2)
    assert {info.name for info in cm.layers} <= set(times)
    assert all(t >= 0 for t in times.values())
    # kernels are timed inside the driver (thread 0's cycle counts over each row)
    assert all(times[info.name] > 0 for info in cm.layers if info.source is not None)


def test_plans_override_a_layer(tiny_model, x):
    cm = sparsejit.compile(tiny_model, plans={"conv3": {"form": "table", "rows_per_tile": 4}})
    info = next(i for i in cm.layers if i.name == "conv3")
    assert info.kernel.startswith("direct table") and "_r4x" in info.kernel, info.kernel
    assert_close(cm(x), run_ort(tiny_model, {"data": x})[0], what="conv3 as a table kernel")


def test_a_loaded_model_keeps_code_not_what_it_was_generated_from(tiny_model, monkeypatch):
    """The running program drops kernel sources and conv specs (they hold the weights), and
    the model's graph holds pruned weights compacted; ir() and rebinding still work."""
    monkeypatch.setattr(weights, "MIN_ELEMENTS", 1)  # tiny's weights are all small
    cm = sparsejit.compile(tiny_model, threads=1)
    kernels = [info for info in cm.layers if info.source is not None]
    assert kernels and all(info.ir is None and info.spec is None for info in kernels)
    conv3_weight = next(n for n in cm.graph.nodes if n.name == "conv3").inputs[1]
    assert cm.graph.values[conv3_weight].const is None  # compacted (90 % zeros)
    assert "define void" in cm.ir("conv3")
    x = np.random.default_rng(0).standard_normal(cm.input_shape("data")).astype(np.float32)
    reference = sparsejit.compile(tiny_model, threads=1)  # compacts nothing at the default size
    assert_close(cm(x), reference(x), what="compacted weights")
