"""The `sparsejit` command line, run as `python -m sparsejit.cli` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsejit import models
from tests.onnx_helpers import run_ort
from tests.tolerances import assert_close

KERNEL_LAYERS = ["conv1", "conv2:pack", "conv2", "norm2", "conv3", "conv4", "pool4", "conv5a", "conv5b",
                 "pool5c", "conv5c", "pool5", "fc6", "fc7", "prob"]  # concat5's inputs are written in place


def sparsejit_cli(*args: str | Path, cwd: Path | None = None,
                  timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsejit.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def fails_cleanly(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, a one-line 'sparsejit: error: ...' on stderr naming `words`, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "sparsejit: error:" in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in {result.stderr!r}"
    return result.stderr


def test_targets():
    out = ok(sparsejit_cli("targets"))
    lines = out.splitlines()
    for name in ("host", "sse", "avx2", "avx512", "knl"):
        assert any(line.startswith(name) for line in lines), out
    assert all("runs here" in line for line in lines if line.startswith(("sse", "avx2", "host")))


def test_compile_emits_ir_and_asm(tiny_path, tmp_path):
    ir_dir, asm_dir = tmp_path / "ir", tmp_path / "asm"
    out = ok(sparsejit_cli("compile", tiny_path, "--emit-ir", ir_dir, "--emit-asm", asm_dir))
    for layer in KERNEL_LAYERS + ["flatten", "concat5"]:  # the report lists every layer
        assert layer in out, out
    lls, ss = sorted(ir_dir.glob("*.ll")), sorted(asm_dir.glob("*.s"))
    assert len(lls) == len(ss) == len(KERNEL_LAYERS)
    assert [p.stem for p in lls] == [p.stem for p in ss]
    for ll in lls:
        text = ll.read_text()
        assert "define void" in text and text.startswith("; sparsejit kernel"), ll
    for s in ss:
        text = s.read_text()
        assert f".globl\t{s.stem}" in text and "\tret" in text, s
        if s.stem.startswith(("sj_conv", "sj_gemm")):  # pools and LRN multiply-add nothing
            assert "vfmadd" in text, s


def test_compile_for_another_target_and_batch(tmp_path):
    path = tmp_path / "tiny_n.onnx"
    path.write_bytes(models.build("tiny", batch=None).SerializeToString())  # batch dim "N"
    out = ok(sparsejit_cli("compile", path, "--target", "sse", "--batch", "2"))
    assert "target sse" in out and "batch 2" in out and "2x16x32x32" in out
    asm = ok(sparsejit_cli("inspect", path, "conv1", "--target", "sse", "--asm"))
    assert "xmm" in asm and "ymm" not in asm and "zmm" not in asm


def test_run_writes_the_output(tiny_model, tiny_path, tmp_path):
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    print("input seed=5")
    np.save(tmp_path / "x.npy", x)
    out = ok(sparsejit_cli("run", tiny_path, "--input", "x.npy", "--output", "y.npy", cwd=tmp_path))
    assert "y.npy" in out
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32
    assert_close(y, run_ort(tiny_model, {"data": x})[0], what="sparsejit run")


def test_run_prints_without_output(tiny_path, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    out = ok(sparsejit_cli("run", tiny_path, "--input", tmp_path / "x.npy"))
    assert "prob: shape (1, 10)" in out


def test_run_with_a_bad_input_fails_cleanly(tiny_path, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 31, 32), np.float32))
    fails_cleanly(sparsejit_cli("run", tiny_path, "--input", tmp_path / "x.npy"), "input 'data'",
                  "dimension 2 is 31")
    fails_cleanly(sparsejit_cli("run", tiny_path, "--input", tmp_path / "missing.npy"),
                  "missing.npy")


@pytest.mark.parametrize("flag, expect", [("--ir", "define void"), ("--asm", "vfmadd"),
                                          (None, "define void")])
def test_inspect(tiny_path, flag, expect):
    out = ok(sparsejit_cli("inspect", tiny_path, "conv3", *([flag] if flag else [])))
    assert expect in out
    assert "conv3" in out


def test_built_in_models_by_name(tmp_path):
    """A built-in model's name where no such file exists (cwd: an empty directory), at
    --sparsity; a file of that name takes precedence."""
    out = ok(sparsejit_cli("inspect", "tiny", "conv3", "--sparsity", "0.2", "--asm", cwd=tmp_path))
    assert "vfmadd" in out or "mulps" in out
    report = ok(sparsejit_cli("compile", "tiny", "--sparsity", "dense", cwd=tmp_path))
    assert "tiny" in report and "conv3" in report
    fails_cleanly(sparsejit_cli("compile", "tiny", "--sparsity", "lots", cwd=tmp_path),
                  "--sparsity", "lots")
    (tmp_path / "tiny").write_bytes(b"not a model")
    fails_cleanly(sparsejit_cli("compile", "tiny", cwd=tmp_path), "tiny")


def test_a_closed_pipe_is_not_a_traceback(tiny_path):
    proc = subprocess.Popen([sys.executable, "-m", "sparsejit.cli", "inspect", str(tiny_path),
                             "conv3", "--asm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # as `| head -c 10` does
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0 and b"Traceback" not in err, err


def test_inspect_unknown_layer(tiny_path):
    err = fails_cleanly(sparsejit_cli("inspect", tiny_path, "conv99"), "conv99", "conv3")
    assert len(err.strip().splitlines()) == 1


def test_inspect_layer_without_kernel(tiny_path):
    fails_cleanly(sparsejit_cli("inspect", tiny_path, "flatten", "--asm"), "flatten", "no kernel")


@pytest.mark.parametrize("args, words", [
    (["compile", "missing.onnx"], ["missing.onnx", "does not exist"]),
    (["compile", "TINY", "--target", "pentium"], ["pentium", "known targets"]),
    (["compile", "TINY", "--batch", "2"], ["static batch of 1", "batch=2"]),
    (["compile", "TINY", "--threads", "-3"], ["threads", "-3"]),
])
def test_bad_model_or_target(tiny_path, tmp_path, args, words):
    args = [str(tiny_path) if a == "TINY" else a for a in args]
    fails_cleanly(sparsejit_cli(*args, cwd=tmp_path), *words)


def test_malformed_model_file(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    fails_cleanly(sparsejit_cli("compile", "junk.onnx", cwd=tmp_path), "junk.onnx")


def test_unsupported_op(tmp_path):
    model = models.build("tiny")
    next(n for n in model.graph.node if n.name == "norm2").op_type = "MeanVarianceNormalization"
    path = tmp_path / "odd.onnx"
    path.write_bytes(model.SerializeToString())
    fails_cleanly(sparsejit_cli("compile", path), "norm2", "MeanVarianceNormalization", "opset 13")


def test_usage_errors_exit_2():
    result = sparsejit_cli("inspect")
    assert result.returncode == 2 and "usage:" in result.stderr
    result = sparsejit_cli("frobnicate")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_demo_tiny():
    out = ok(sparsejit_cli("demo", "tiny", "--repeats", "2"))
    assert "OK" in out
    assert "conv3" in out and "onnxruntime" in out
