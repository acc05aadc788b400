"""Shared helpers of the benchmark scripts: fair environment, timing, tables, the numpy peer.

numpy is imported inside the functions: `fair_environment` must change the BLAS settings before
the first import of numpy in the process.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEEPSPARSE_PEER = Path(__file__).resolve().parent / "deepsparse_peer.py"
DEFAULT_DEEPSPARSE_PYTHON = "/work/ds-venv/bin/python"


def fair_environment(threads: int) -> None:
    """OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set on these machines and slow numpy's BLAS;
    unset both in this process (never in tests) and pin every engine's thread count. Must run
    before numpy / onnxruntime / torch are imported by the caller's peers."""
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(var, None)
    assert "numpy" not in sys.modules, "fair_environment() must run before numpy is imported"
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def median_seconds(fn: Callable[[], object], repeats: int = 30, min_time: float = 0.2) -> float:
    """Median of `repeats` timed calls (at least `min_time` s of calls), after a warm-up."""
    import numpy as np

    fn()
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_time:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if len(times) > 20 * repeats:
            break
    return float(np.median(times))


SETTLE_S = 0.05  # pause before a peer's round of calls


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 30,
                        rounds: int = 5, per_call: bool = False) -> dict[str, float]:
    """Median seconds per call of each function, timed in `rounds` alternating rounds (A's
    calls, then B's, ..., again): the VM's speed drifts by up to ~30 % over minutes, which
    separately timed medians turn into a wrong ratio; interleaved, both see the same drift.
    Each round starts after a pause and an untimed call. With `per_call` the functions
    alternate call by call instead (A, B, A, B, ...), which follows drifts of seconds too: for
    single-threaded peers, which leave no worker threads spinning into the next one's call."""
    import numpy as np

    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    if per_call:
        for i in range(repeats):
            # each peer goes first every other time: neither always follows the same one
            order = list(fns.items()) if i % 2 else list(fns.items())[::-1]
            for name, fn in order:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        return {name: float(np.median(t)) for name, t in times.items()}
    per_round = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for name, fn in fns.items():
            # a peer's worker threads spin on for a while after its last call (onnxruntime's
            # do): let them go to sleep, so they do not take the next one's second core
            time.sleep(SETTLE_S)
            fn()
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def deepsparse_python() -> str | None:
    """The DeepSparse venv's python: $SPARSEJIT_DEEPSPARSE_PYTHON, else the default venv if present."""
    env = os.environ.get("SPARSEJIT_DEEPSPARSE_PYTHON")
    if env:
        return env
    return DEFAULT_DEEPSPARSE_PYTHON if Path(DEFAULT_DEEPSPARSE_PYTHON).exists() else None


def deepsparse_time(model, threads: int, batch: int, repeats: int) -> float | None:
    """Median seconds per run of `model` (an onnx.ModelProto) under DeepSparse, or None.

    DeepSparse 1.8 pins onnx 1.14 / numpy 1.26, so it lives in a venv of its own (see the README)
    and runs as a subprocess (benchmarks/deepsparse_peer.py) on a temp copy of the model, lowered
    to IR version 8 and opset <= 17. Prints a one-line note and returns None when the venv is
    missing or the run fails."""
    import onnx
    from onnx import version_converter

    python = deepsparse_python()
    if python is None:
        print(
            f"note: DeepSparse venv not found (set SPARSEJIT_DEEPSPARSE_PYTHON or create "
            f"{DEFAULT_DEEPSPARSE_PYTHON}); skipping the deepsparse peer"
        )
        return None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=13)
    if opset > 17:
        m = version_converter.convert_version(m, 17)
    m.ir_version = min(m.ir_version, 8)
    with tempfile.TemporaryDirectory(prefix="sparsejit-ds-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(m, str(path))
        env = dict(os.environ, NM_DISABLE_ANALYTICS="1")
        try:
            proc = subprocess.run(
                [python, str(DEEPSPARSE_PEER), str(path), str(threads), str(batch), str(repeats)],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"note: deepsparse peer failed: {exc}")
            return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"note: deepsparse peer failed (rc {proc.returncode}): {tail}")
        return None
    return float(json.loads(lines[-1])["median_s"])


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _padded(x, kernel, strides, pads, dilations):
    """x padded as the conv pads it, and the conv's output height and width."""
    import numpy as np

    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    p = (xp.shape[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    q = (xp.shape[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    return xp, p, q


def im2col(xs, kernel, strides, dilations, p, q):
    """The im2col matrix [C*R*S, P*Q] of one padded image xs[C, H, W] (a strided view per
    kernel tap, then one copy)."""
    import numpy as np

    kh, kw = kernel
    cols = np.empty((xs.shape[0], kh, kw, p, q), np.float32)
    for r in range(kh):
        for s in range(kw):
            r0, s0 = r * dilations[0], s * dilations[1]
            cols[:, r, s] = xs[
                :,
                r0 : r0 + strides[0] * (p - 1) + 1 : strides[0],
                s0 : s0 + strides[1] * (q - 1) + 1 : strides[1],
            ]
    return cols.reshape(-1, p * q)


def im2col_conv(x, w, strides, pads, dilations, group):
    """Dense conv the classic way: im2col + one BLAS GEMM per group."""
    import numpy as np

    n, m, cg = x.shape[0], w.shape[0], w.shape[1]
    xp, p, q = _padded(x, w.shape[2:], strides, pads, dilations)
    out = np.empty((n, m, p, q), np.float32)
    mg = m // group
    for b in range(n):
        for g in range(group):
            cols = im2col(xp[b, g * cg : (g + 1) * cg], w.shape[2:], strides, dilations, p, q)
            wg = w[g * mg : (g + 1) * mg].reshape(mg, -1)
            out[b, g * mg : (g + 1) * mg] = (wg @ cols).reshape(mg, p, q)
    return out


def csr_weights(w, group):
    """Per group, W[M/G, C/G, R, S] reshaped to [M/G, C/G*R*S] as a scipy.sparse.csr_matrix."""
    from scipy import sparse

    mg = w.shape[0] // group
    return [sparse.csr_matrix(w[g * mg : (g + 1) * mg].reshape(mg, -1)) for g in range(group)]


def csr_conv(x, csr, kernel, strides, pads, dilations):
    """Sparse conv the naive way: im2col + one scipy CSR x dense product per group (`csr` from
    csr_weights). scipy's product is single-threaded."""
    import numpy as np

    group, (mg, k) = len(csr), csr[0].shape
    cg = k // (kernel[0] * kernel[1])
    xp, p, q = _padded(x, kernel, strides, pads, dilations)
    out = np.empty((x.shape[0], mg * group, p, q), np.float32)
    for b in range(x.shape[0]):
        for g in range(group):
            cols = im2col(xp[b, g * cg : (g + 1) * cg], kernel, strides, dilations, p, q)
            out[b, g * mg : (g + 1) * mg] = (csr[g] @ cols).reshape(mg, p, q)
    return out


@dataclass
class ConvLayer:
    """One conv of a built-in model as a one-node ONNX model, with what the peers need."""

    node: object  # the graph node (BatchNorm folded in)
    model: object  # onnx.ModelProto: x -> Conv(w, b) -> y
    x_shape: tuple
    weight: object  # np.ndarray
    bias: object
    attrs: dict  # strides, dilations, group
    pads: list


def conv_layers(model: str, sparsity: str, batch: int, wanted: set[str] | None = None):
    """The conv layers of a built-in model (those in `wanted`, default all), in graph order."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from sparsejit import models
    from sparsejit.compiler import prepare_graph
    from sparsejit.graph import fold, passes

    g = prepare_graph(models.build(model, batch=batch, sparsity=sparsity))
    fold.simplify(g, batch)
    passes.remove_identities(g)
    passes.fold_batchnorm(g)
    for node in g.topo_order():
        if node.op != "Conv" or (wanted and node.name not in wanted):
            continue
        x_shape = g.value(node.inputs[0]).static_shape()
        w = g.const(node.inputs[1]).astype(np.float32)
        has_bias = len(node.inputs) > 2 and node.inputs[2]
        b = g.const(node.inputs[2]) if has_bias else np.zeros(w.shape[0], np.float32)
        attrs = {k: node.attrs[k] for k in ("strides", "dilations", "group")}
        pads = list(node.attrs["pads"])
        conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name=node.name, pads=pads,
                                kernel_shape=list(w.shape[2:]), **attrs)
        graph = helper.make_graph(
            [conv], node.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b.astype(np.float32), "b")])
        onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
        yield ConvLayer(node, onnx_model, x_shape, w, b, attrs, pads)


def kernel_seconds(cm, x, repeats: int) -> float:
    """Median time of a one-layer model's kernels (the conv's, and for a strided conv the one
    copying its input into the layout it reads), without the input write."""
    prog = cm.program(x.shape[0])
    write, *kernels = prog.steps
    arena = prog.new_arena()
    env = {"x": x}
    write.run(env, arena, cm._pool, cm.threads)

    def run_kernels() -> None:
        for step in kernels:
            step.run(env, arena, cm._pool, cm.threads)

    return median_seconds(run_kernels, repeats)


def conv_layer_arguments(description: str):
    """The argument parser shared by the per-conv-layer scripts (layers.py, tuned.py)."""
    import argparse

    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="caffenet")
    ap.add_argument("--sparsity", default="seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: every conv)")
    ap.add_argument("--repeats", type=int, default=30)
    return ap
