"""The on-disk object cache, each test with SPARSEJIT_CACHE_DIR at its own empty directory:
hits, corrupted entries (detected, recompiled, never loaded), caching off, an unwritable
directory, and what the key distinguishes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as oh

import sparsejit
from sparsejit import llvm, objcache, targets
from sparsejit.codegen import render as render_mod
from tests.kernels.conv_harness import runnable_targets
from tests.onnx_helpers import make_model, run_ort
from tests.tolerances import assert_close

SHAPE = (2, 3, 8, 8)

DRIVER = 1  # the schedule driver: one object per target, cached like a kernel


def small_net(seed: int = 0) -> onnx.ModelProto:
    """A pruned conv (+ relu), a dense conv and an FC: three kernels that compile quickly."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w1[np.abs(w1) < 1.2] = 0.0
    consts = {"w1": w1, "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32),
              "fw": rng.standard_normal((4 * 8 * 8, 5)).astype(np.float32)}
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             oh.make_node("Flatten", ["c2"], ["f"], name="flatten"),
             oh.make_node("MatMul", ["f", "fw"], ["y"], name="fc")]
    return make_model(nodes, {"x": (SHAPE, np.float32)}, ["y"], consts)


@pytest.fixture(scope="module")
def net() -> onnx.ModelProto:
    return small_net()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    print("input seed=3")
    return np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)


def entries(root: Path) -> list[Path]:
    """The cache's object entries: not the record of LLVM's answers about the host, which the
    first compile of a process writes (so counting it would depend on the order of tests)."""
    host = objcache.key("host-info", llvm._host_fingerprint())
    return sorted(p for p in root.rglob("*.o") if p.stem != host)


def kernels(cm: sparsejit.CompiledModel) -> list:
    return [info for info in cm.layers if info.source is not None]


def compile_checked(net: onnx.ModelProto, x: np.ndarray, **kwargs) -> sparsejit.CompiledModel:
    cm = sparsejit.compile(net, **kwargs)
    assert_close(cm(x), run_ort(net, {"x": x})[0], what=f"compiled with {kwargs}")
    return cm


def test_second_compile_loads_every_kernel_from_the_cache(cache_dir, net, x):
    first = compile_checked(net, x)
    assert len(kernels(first)) == 3
    assert not any(info.cached for info in kernels(first))
    assert len(entries(cache_dir)) == 3 + DRIVER
    second = compile_checked(net, x)
    assert all(info.cached for info in kernels(second))
    assert [i.code_bytes for i in kernels(second)] == [i.code_bytes for i in kernels(first)]
    np.testing.assert_array_equal(second(x), first(x))
    assert "cached" in second.report()
    assert len(entries(cache_dir)) == 3 + DRIVER


def _truncate(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


def _flip_payload(blob: bytes) -> bytes:
    i = len(blob) - 100  # inside the object code
    return blob[:i] + bytes([blob[i] ^ 0x40]) + blob[i + 1:]


def _flip_digest(blob: bytes) -> bytes:
    return blob[:8] + bytes([blob[8] ^ 1]) + blob[9:]


def _flip_length(blob: bytes) -> bytes:
    return blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]


def _bad_magic(blob: bytes) -> bytes:
    return b"NOTSPJIT" + blob[8:]


def _header_only_part(blob: bytes) -> bytes:
    return blob[:20]


def _empty(blob: bytes) -> bytes:
    return b""


def _extra_byte(blob: bytes) -> bytes:
    return blob + b"\0"


CORRUPTIONS = [_truncate, _flip_payload, _flip_digest, _flip_length, _bad_magic, _header_only_part,
               _empty, _extra_byte]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupted_entries_are_detected_and_recompiled(cache_dir, net, x, corrupt):
    compile_checked(net, x)
    paths = entries(cache_dir)
    good = {p: p.read_bytes() for p in paths}
    for p in paths:
        p.write_bytes(corrupt(good[p]))
    with pytest.warns(UserWarning, match="corrupted cache entry") as caught:
        cm = compile_checked(net, x)
    assert len([w for w in caught if "corrupted cache entry" in str(w.message)]) == len(paths)
    assert not any(info.cached for info in kernels(cm)), "a corrupted entry was loaded"
    # recompiled and written again: the next compile hits, without warnings
    assert {p: p.read_bytes() for p in entries(cache_dir)} == good
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = compile_checked(net, x)
    assert all(info.cached for info in kernels(again))


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_load_rejects_corrupted_entries(cache_dir, corrupt):
    key = objcache.key("some ir", "cpu")
    payload = bytes(range(256)) * 4
    objcache.store(key, payload)
    assert objcache.load(key) == payload
    (path,) = entries(cache_dir)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.warns(UserWarning, match=str(path.name)):
        assert objcache.load(key) is None
    assert not path.exists()  # removed, so the warning comes once
    assert objcache.load(key) is None


def test_cache_off(monkeypatch, tmp_path, net, x):
    monkeypatch.setenv("SPARSEJIT_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default location
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first = compile_checked(net, x)
    second = compile_checked(net, x)
    assert not any(info.cached for info in kernels(first) + kernels(second))
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize("how", ["under-a-file", "read-only"])
def test_unwritable_cache_dir_only_warns(monkeypatch, tmp_path, net, x, how):
    if how == "under-a-file":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        root = blocker / "cache"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
    monkeypatch.setenv("SPARSEJIT_CACHE_DIR", str(root))
    try:
        with pytest.warns(UserWarning, match="could not write cache entry"):
            cm = compile_checked(net, x)
        assert not any(info.cached for info in kernels(cm))
    finally:
        if how == "read-only":
            root.chmod(0o700)


def test_a_target_is_part_of_the_key(cache_dir, net, x):
    """Objects of one target are never loaded for another. Two targets this host can run (the
    widest and the next), so both are also checked against onnxruntime."""
    narrow, wide = runnable_targets()[-2:]
    first = compile_checked(net, x, target=narrow)
    assert len(entries(cache_dir)) == 3 + DRIVER
    second = compile_checked(net, x, target=wide)
    assert not any(info.cached for info in kernels(second)), f"{wide} loaded {narrow}'s objects"
    assert len(entries(cache_dir)) == 6 + 2 * DRIVER
    assert all(info.cached for info in kernels(compile_checked(net, x, target=narrow)))
    assert all(info.cached for info in kernels(compile_checked(net, x, target=wide)))
    assert first.ir(kernels(first)[0].name) != second.ir(kernels(second)[0].name)


def test_the_ir_text_and_codegen_level_are_part_of_the_key(cache_dir, net):
    """compile_object keys on the IR text (compile() itself keys on what the IR is rendered
    from, so a warm compile does not render it: see the test below)."""
    cm = sparsejit.compile(net, target="avx512")
    ir = cm.ir(kernels(cm)[0].name)
    target = targets.get("avx512")
    _, hit = llvm.compile_object(ir, target)
    assert not hit
    _, hit = llvm.compile_object(ir, target)
    assert hit
    _, hit = llvm.compile_object(ir + "\n; one more comment\n", target)
    assert not hit
    _, hit = llvm.compile_object(ir, target, opt=1)
    assert not hit
    _, hit = llvm.compile_object(ir, targets.get("avx2"))
    assert not hit
    _, hit = llvm.compile_object(ir + "\n; one more comment\n", target)
    assert hit


def test_other_weights_are_other_entries(cache_dir, x):
    """Same layer names and shapes, other weights: other kernels, not a stale hit."""
    first = compile_checked(small_net(seed=0), x)
    cm = compile_checked(small_net(seed=1), x)
    seen = {info.ir for info in kernels(first.lowered())}
    irs = {info.name: info.ir for info in kernels(cm.lowered())}
    for info in kernels(cm):  # the dense FC's code does not carry its weights: it may hit
        assert info.cached == (irs[info.name] in seen), info.name
    assert not kernels(cm)[0].cached and not kernels(cm)[1].cached
    assert len(entries(cache_dir)) == 3 + DRIVER + sum(not info.cached for info in kernels(cm))


def test_key_parts_are_separated():
    assert objcache.key("ab", "c") != objcache.key("a", "bc")
    assert objcache.key("a") != objcache.key("a", "")
    assert objcache.key("x", "y") == objcache.key("x", "y")


def test_an_entry_under_another_key_is_not_loaded(cache_dir):
    """An entry copied (or renamed) to another key's path passes its checksum but names its own
    key: it is rejected, so a model never runs another model's kernel."""
    objcache.store(objcache.key("a"), b"object A")
    objcache.store(objcache.key("b"), b"object B")
    path_a = next(p for p in entries(cache_dir) if p.stem == objcache.key("a"))
    path_b = next(p for p in entries(cache_dir) if p.stem == objcache.key("b"))
    path_b.write_bytes(path_a.read_bytes())
    with pytest.warns(UserWarning, match="not the entry for this key"):
        assert objcache.load(objcache.key("b")) is None
    assert objcache.load(objcache.key("a")) == b"object A"


def test_a_warm_compile_does_not_render_ir(cache_dir, net, x, monkeypatch):
    compile_checked(net, x)
    renders = []
    environment = render_mod.environment
    monkeypatch.setattr(render_mod, "environment", lambda: renders.append(1) or environment())
    cm = compile_checked(net, x)
    assert all(info.cached for info in kernels_no_render(cm)) and renders == []
    assert "define void" in cm.ir(kernels(cm)[0].name)  # rendered on demand
    assert renders


def kernels_no_render(cm: sparsejit.CompiledModel) -> list:
    return [info for info in cm.layers if info.source is not None]


def test_a_changed_renderer_changes_every_source_key(monkeypatch):
    """compile() keys a kernel on what it is rendered from (not its IR text): an edit to a
    template or to a codegen module that fills one in must miss the cache, not load old code."""
    before = render_mod.KernelSource(lambda: "", "conv", 1).key
    real = Path.read_bytes

    def edited(path: Path) -> bytes:
        data = real(path)
        return data + b"\n# edited\n" if path.name == "direct_conv.py" else data

    render_mod.templates_digest.cache_clear()
    monkeypatch.setattr(Path, "read_bytes", edited)
    try:
        assert render_mod.KernelSource(lambda: "", "conv", 1).key != before
    finally:
        monkeypatch.undo()
        render_mod.templates_digest.cache_clear()
    assert render_mod.KernelSource(lambda: "", "conv", 1).key == before
