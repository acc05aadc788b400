"""Whole built-in models compiled and run against onnxruntime, at reduced image sizes.

Each case checks the pre-softmax logits (added as an extra graph output) and the final output,
and that the sparse kernels really ran: every Conv is a generated direct kernel, a pruned one
reports its low density, and FC layers are sparse-fc or dense-fc as their density says. Also:
targets, batch binding, threads per layer, and one model called from several Python threads.
"""

from __future__ import annotations

import threading
from functools import cache

import numpy as np
import onnx
import pytest

import sparsejit
from sparsejit import models
from sparsejit.errors import TargetError
from sparsejit.kernels.select import DENSE_THRESHOLD, FC_LANES_MIN_BATCH
from sparsejit.runtime import steps
from tests.kernels.conv_harness import runnable_targets
from tests.onnx_helpers import run_ort
from tests.tolerances import assert_close

# Small inputs: the layers (and so the kernels' densities) are those of the full nets.
SMALL = {"tiny": 32, "caffenet": 67, "resnet50": 64, "googlenet": 64, "vgg16": 32}
NAMES = list(SMALL)
SEED = 1234


# -- helpers ----------------------------------------------------------------------------------
def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose final Softmax's input is a second graph output (a net that ends
    in its logits, as ResNet-50 does, is returned as it is)."""
    if model.graph.node[-1].op_type != "Softmax":
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    last = copy.graph.node[-1]
    copy.graph.output.append(onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT,
                                                                None))
    return copy


def built(name: str, sparsity: str = "seed", batch: int | None = None) -> onnx.ModelProto:
    """The small built-in model with its logits as an extra output (built once per module)."""
    return _built(name, sparsity, batch)


@cache
def _built(name: str, sparsity: str, batch: int | None) -> onnx.ModelProto:
    return with_logits(models.build(name, batch=batch, sparsity=sparsity, image_size=SMALL[name]))


_COMPILED: dict[tuple, sparsejit.CompiledModel] = {}


def compiled(name: str, sparsity: str = "seed", threads: int = 2, batch: int | None = None,
             target: str = "host") -> sparsejit.CompiledModel:
    """built(name, sparsity, batch) compiled once per module, so its bindings are reused."""
    key = (name, sparsity, threads, batch, target)
    if key not in _COMPILED:
        _COMPILED[key] = sparsejit.compile(built(name, sparsity, batch), target=target,
                                           threads=threads)
    return _COMPILED[key]


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_models():
    yield
    for cm in _COMPILED.values():
        cm.close()
    _COMPILED.clear()
    _built.cache_clear()


def image(model: onnx.ModelProto, batch: int, seed: int) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    print(f"input {shape} seed={seed}")
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def expected(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in model.graph.output]
    return dict(zip(names, run_ort(model, {"data": x})))


def assert_outputs_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert list(got) == list(want), f"{what}: outputs {list(got)} != {list(want)}"
    for name in want:
        assert got[name].dtype == np.float32, f"{what}: {name} dtype {got[name].dtype}"
        assert_close(got[name], want[name], what=f"{what}: {name}")


def assert_sparse_kernels_ran(cm: sparsejit.CompiledModel, name: str, sparsity: str) -> None:
    """Every Conv became a direct kernel (two summed 1x1 convs one kernel named "a+b": see
    graph/merge.py) and every FC layer the FC kernel its density calls for; pruned layers
    report the density of their plan (a merged one, between its parts')."""
    layers = {part: info for info in cm.layers for part in info.name.split("+")}
    plan = models.density_plan(name, sparsity)
    missing = sorted(set(plan) - set(layers))
    assert not missing, f"{name}: weight layers missing from cm.layers: {missing}"
    for layer, planned in plan.items():
        info = layers[layer]
        what = f"{name}/{sparsity} layer {layer} ({info.op}, {info.kernel}, density {info.density})"
        if info.op == "Conv":
            assert info.kernel.startswith("direct "), what
        else:
            kind = "sparse-fc " if planned < DENSE_THRESHOLD else "dense-fc "
            assert info.kernel.startswith(kind), f"{what}: expected {kind.strip()}"
        parts = [plan[p] for p in info.name.split("+")]
        assert info.density is not None, what
        assert min(parts) - 0.01 < info.density < max(parts) + 0.01, what
        if planned < 1.0:
            assert info.density < 0.5, what
        assert info.source is not None, what
        assert info.code_bytes > 0, what
    for info in cm.layers:  # no conv anywhere falls back to numpy
        if info.op == "Conv":
            assert not info.kernel.startswith("reference"), f"{name}: {info.name} {info.kernel}"


def check_model(cm: sparsejit.CompiledModel, model: onnx.ModelProto, batch: int, seed: int,
                what: str) -> dict[str, np.ndarray]:
    x = image(model, batch, seed)
    got = cm.run({"data": x})
    assert_outputs_close(got, expected(model, x), f"{what} batch {batch}")
    return got


# -- every model, both plans, symbolic batch bound twice --------------------------------------
@pytest.mark.parametrize("sparsity", ["seed", "all"])
@pytest.mark.parametrize("name", NAMES)
def test_model_matches_onnxruntime(name, sparsity):
    model = built(name, sparsity)
    cm = compiled(name, sparsity)
    for batch in (1, 3):
        check_model(cm, model, batch, SEED + batch, f"{name}/{sparsity}")
        assert cm.program(batch).batch == batch
    assert_sparse_kernels_ran(cm, name, sparsity)


@pytest.mark.parametrize("name", NAMES)
def test_static_batch_matches_onnxruntime(name):
    model = built(name, "seed", batch=3)
    cm = compiled(name, "seed", threads=1, batch=3)
    assert cm.input_shape("data")[0] == 3
    got = check_model(cm, model, 3, SEED, f"{name} static batch 3")
    x = image(model, 3, SEED)  # the same weights with a symbolic batch, on 2 threads
    for out, value in compiled(name, "seed").run({"data": x}).items():
        assert_close(got[out], value, what=f"{name}: {out} static batch vs symbolic")
    # every layer bound at batch 3 (a pruned FC's copies into and out of the lanes layout move
    # (features, batch) tiles: the batch is their last dimension)
    assert all(info.in_shape[-1 if info.kernel == "strided copy" else 0] == 3
               for info in cm.layers if info.in_shape)
    assert_sparse_kernels_ran(cm, name, "seed")


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", NAMES)
def test_the_whole_network_is_one_driver_call(name, batch):
    """After the input copy, every layer of the built-in models runs in the schedule driver:
    no Python between layers (issue 3), at batch 1 and at a batch where FC layers change kernel."""
    cm = compiled(name, threads=1, batch=batch)
    kinds = [type(item).__name__ for item in cm.program(batch).schedule]
    assert kinds == ["WriteInput", "NativeRun"], kinds


@pytest.mark.parametrize("batch, kernel", [(1, "sparse-fc rows"),
                                           (FC_LANES_MIN_BATCH - 1, "sparse-fc rows"),
                                           (FC_LANES_MIN_BATCH, "sparse-fc lanes")])
def test_pruned_fc_layers_pick_their_kernel_by_batch(batch, kernel):
    """Below FC_LANES_MIN_BATCH pruned FC layers gather per image, from it on the images share
    the vector lanes; both match onnxruntime."""
    model = built("caffenet", batch=batch)
    cm = compiled("caffenet", threads=1, batch=batch)
    check_model(cm, model, batch, SEED, f"caffenet {kernel}")
    fcs = [info for info in cm.layers if info.name in ("fc6", "fc7", "fc8")]
    assert len(fcs) == 3 and all(info.kernel.startswith(kernel) for info in fcs), fcs


# (Binding a batch size renders every kernel again, seconds for the big nets even with a warm
# object cache: the cases below reuse the bindings made above where they can.)
@pytest.mark.parametrize("name", ["tiny", "caffenet", "googlenet"])
def test_one_or_two_threads_give_the_same_answer(name, monkeypatch):
    # split every kernel, however small (by default small ones run on the calling thread)
    monkeypatch.setattr(steps, "MIN_PARALLEL_FLOPS", 1)
    monkeypatch.setattr(steps, "NATIVE_MIN_PARALLEL_FLOPS", 1)
    model = built(name)
    x = image(model, 3, SEED)
    one = compiled(name, threads=1).run({"data": x})
    cm = sparsejit.compile(model, threads=2)  # fresh arenas: their driver tables split every layer
    two = cm.run({"data": x})
    tables = [t for arena in cm._free[3] for t in arena.tables.values()]
    assert tables and all(t.threads == 2 for t in tables)  # the driver ran on two threads
    for out in one:
        assert_close(two[out], one[out], what=f"{name}: {out} with 2 threads vs 1")


def test_a_closed_model_runs_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(steps, "MIN_PARALLEL_FLOPS", 1)
    monkeypatch.setattr(steps, "NATIVE_MIN_PARALLEL_FLOPS", 1)
    model = built("tiny")
    x = image(model, 2, SEED)
    cm = sparsejit.compile(model, threads=2)
    before = cm.run({"data": x})
    cm.close()
    after = cm.run({"data": x})
    for out in before:
        assert_close(after[out], before[out], what=f"{out} after close()")
    assert_outputs_close(after, expected(model, x), "tiny after close()")


# -- targets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "caffenet"])
def test_targets_give_the_same_answer(name):
    """Every target the host can run gives the reference's answer, and all agree with the
    widest of them; a target the host cannot run still compiles (for inspection) and refuses
    to run with a TargetError (tests/runtime/test_bad_input.py inspects its assembly)."""
    model = built(name)
    x = image(model, 2, SEED)
    want = expected(model, x)
    runnable = runnable_targets()
    assert len(runnable) >= 2, f"this host runs only {runnable}"
    results = {}
    for target in runnable:
        cm = compiled(name, target=target)
        assert cm.target.name == target
        results[target] = cm.run({"data": x})
        assert_outputs_close(results[target], want, f"{name} on {target}")
        assert_sparse_kernels_ran(cm, name, "seed")
    widest = runnable[-1]
    for target in runnable[:-1]:
        for out in want:
            assert_close(results[target][out], results[widest][out],
                         what=f"{name}: {out} on {target} vs {widest}")
    for target in sorted({"sse", "avx2", "avx512"} - set(runnable)):
        cm = compiled(name, target=target)
        with pytest.raises(TargetError, match="needs CPU features this host lacks"):
            cm.run({"data": x})


# -- batch binding ----------------------------------------------------------------------------
def test_compile_with_batch_binds_now():
    model = built("tiny")
    early = sparsejit.compile(model, batch=3, threads=1)
    assert early.layers[0].in_shape[0] == 3  # bound before any call
    assert "batch 3" in early.report().splitlines()[0]
    late = sparsejit.compile(model, threads=1)
    x = image(model, 3, SEED)
    got_early, got_late = early.run({"data": x}), late.run({"data": x})
    assert late.layers[0].in_shape[0] == 3  # bound by the call
    for out in got_early:
        np.testing.assert_array_equal(got_early[out], got_late[out], err_msg=out)
    assert_outputs_close(got_early, expected(model, x), "tiny compiled with batch=3")


def test_new_batch_size_rebinds():
    model = built("tiny")
    cm = sparsejit.compile(model, threads=2)
    for n, batch in enumerate((1, 2, 1, 4, 2)):
        got = check_model(cm, model, batch, SEED + n, "tiny rebinding")
        assert got["prob"].shape == (batch, 10)
    assert cm.layers[0].in_shape[0] == 1  # inspection shows the smallest bound batch


def test_bound_batch_does_not_leak_between_calls():
    """A batch-1 call after a batch-3 call sees only its own image."""
    model = built("tiny")
    cm = sparsejit.compile(model, threads=1)
    x = image(model, 3, SEED)
    three = cm.run({"data": x})
    one = cm.run({"data": x[1:2]})
    for out in one:
        assert_close(one[out], three[out][1:2], what=f"{out}: image 1 alone vs in a batch of 3")


# -- many Python threads at once --------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "resnet50"])
def test_concurrent_calls_from_python_threads(name):
    model = built(name)
    cm = compiled(name, threads=2)
    batches = (1, 3, 3, 1)  # threads share batch sizes (and so their arena free lists)
    inputs = [image(model, b, SEED + 10 * i) for i, b in enumerate(batches)]
    wants = [expected(model, x) for x in inputs]
    rounds = 4
    results: list[list[dict[str, np.ndarray]]] = [[] for _ in inputs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(inputs))

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            for _ in range(rounds):
                results[i].append(cm.run({"data": inputs[i]}))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a calling thread hung"
    assert not errors, errors
    for i, want in enumerate(wants):
        assert len(results[i]) == rounds
        for r, got in enumerate(results[i]):
            assert_outputs_close(got, want, f"{name}: thread {i} round {r}")


# -- the full-size models ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("caffenet", 227), ("resnet50", 224), ("googlenet", 224),
                                        ("vgg16", 224)])
def test_full_size_model_matches_onnxruntime(name, size):
    model = with_logits(models.build(name, batch=1))
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == size
    cm = sparsejit.compile(model)
    check_model(cm, model, 1, SEED, f"{name} at {size}")
    assert_sparse_kernels_ran(cm, name, "seed")
