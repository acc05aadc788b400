"""Memory of a compiled built-in model: the process's resident set at each stage (before any
import, after building the ONNX model, after sparsejit.compile, after the first call) against
what the model needs at least: its weights as CSR and its activation arena. Also the size of
the generated code. Each model runs in a fresh subprocess; writes
benchmarks/results/memory-<model>-<sparsity>-b<batch>-t<threads>.json.

    python benchmarks/memory.py                           # pruned ResNet-50 (sparsity "all")
    python benchmarks/memory.py --models caffenet,resnet50 --sparsity seed

RSS is VmRSS from /proc/self/status; peak RSS is getrusage's ru_maxrss. After each stage the
process frees what it can (gc.collect, then glibc's malloc_trim) and is measured again: that
"kept" RSS (split into anonymous and file-backed pages, e.g. LLVM's code) is what the stage
still holds, and the next stage starts from it ("RSS growth" counts from the built model's kept
RSS). "compile, as measured" is the ratio asked for: compile's RSS growth / (CSR + arena).

CSR counts 4 B per nonzero value, 4 B per column index and 4 B per row pointer (rows + 1) of
every Conv / Gemm / MatMul weight among the ONNX initializers; the arena is the sum of one
arena's slot, scratch and flat buffers; code is the object bytes of every kernel (a warm object
cache loads them; SPARSEJIT_CACHE_DIR=off measures a cold compile).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fair_environment, machine, save, table  # noqa: E402

MIB = 2**20


def status_bytes(*fields: str) -> list[int]:
    """Fields of /proc/self/status (VmRSS, RssAnon, RssFile, ...) in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            values[key] = int(rest.split()[0]) * 1024
    return [values.get(f, 0) for f in fields]


def release_free_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS (glibc only)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def stage(name: str) -> dict:
    """RSS now, then RSS once garbage and the allocator's free pages are released, and the peak."""
    (rss,) = status_bytes("VmRSS")
    release_free_memory()
    kept, anon, file = status_bytes("VmRSS", "RssAnon", "RssFile")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "stage": name,
        "rss_bytes": rss,
        "kept_rss_bytes": kept,
        "kept_anon_bytes": anon,
        "kept_file_bytes": file,
        "peak_rss_bytes": peak,
    }


def csr_bytes(proto) -> tuple[int, int, int]:
    """(CSR bytes, dense fp32 bytes, nonzeros) of the Conv / Gemm / MatMul weights of an ONNX
    model, counted from its initializers (rows = output channels or features)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    csr = dense = nonzeros = 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        rows = w.shape[0] if node.op_type == "Conv" or trans_b else w.shape[-1]
        nz = int(np.count_nonzero(w))
        csr += nz * 8 + (rows + 1) * 4
        dense += w.size * 4
        nonzeros += nz
    return csr, dense, nonzeros


def arena_bytes(prog) -> int:
    """Bytes of one activation arena: slots, scratch and flat buffers (aliases are views)."""
    arena = prog.new_arena()
    return (
        sum(s.nbytes for s in arena.slots)
        + sum(s.nbytes for s in arena.scratch.values())
        + sum(arena.views[t].nbytes for t in prog.flat)
    )


def measure(model: str, sparsity: str, batch: int, threads: int) -> dict:
    """Run in a fresh process before numpy is imported: every stage's RSS, then the sizes."""
    fair_environment(threads)
    stages = [stage("start (no imports)")]
    import numpy as np

    import sparsejit
    from sparsejit import models

    stages.append(stage("after imports"))
    proto = models.build(model, batch=batch, sparsity=sparsity)
    stages.append(stage("after models.build"))
    cm = sparsejit.compile(proto, threads=threads)
    stages.append(stage("after sparsejit.compile"))
    x = np.random.default_rng(0).standard_normal(cm.input_shape("data")).astype(np.float32)
    cm(x)
    stages.append(stage("after first call"))

    layers = cm.layers
    csr, dense, nonzeros = csr_bytes(proto)
    sizes = {
        "weights_csr_bytes": csr,
        "weights_dense_fp32_bytes": dense,
        "weight_nonzeros": nonzeros,
        "arena_bytes": arena_bytes(cm.program()),
        "code_bytes": sum(info.code_bytes for info in layers),
        "kernels": sum(1 for info in layers if info.source is not None),
        "kernels_cached": sum(1 for info in layers if info.cached),
    }
    cm.close()
    return {"stages": stages, "sizes": sizes}


def summarize(result: dict) -> dict:
    """RSS growth of compile (as measured, and kept once freed) and of compile + first call, each
    over CSR + arena. Growth is counted from what the built model kept."""
    by_name = {s["stage"]: s for s in result["stages"]}
    start = by_name["after models.build"]["kept_rss_bytes"]
    compiled, called = by_name["after sparsejit.compile"], by_name["after first call"]
    needed = result["sizes"]["weights_csr_bytes"] + result["sizes"]["arena_bytes"]
    growth = {
        "compile": compiled["rss_bytes"] - start,
        "compile_kept": compiled["kept_rss_bytes"] - start,
        "compile_and_call_kept": called["kept_rss_bytes"] - start,
    }
    return {
        "csr_plus_arena_bytes": needed,
        **{f"{k}_rss_growth_bytes": v for k, v in growth.items()},
        **{f"{k}_growth_over_csr_plus_arena": v / needed for k, v in growth.items()},
    }


def report(args: dict, result: dict) -> str:
    mib = lambda b: f"{b / MIB:.1f}"  # noqa: E731
    sizes, summary = result["sizes"], result["summary"]
    rows = [["stage", "RSS MiB", "kept MiB", "kept anon", "kept file", "peak RSS MiB"]]
    for s in result["stages"]:
        rows.append(
            [s["stage"]]
            + [mib(s[k]) for k in ("rss_bytes", "kept_rss_bytes", "kept_anon_bytes", "kept_file_bytes")]
            + [mib(s["peak_rss_bytes"])]
        )
    size_rows = [
        ["size", "MiB"],
        [f"weights dense fp32 ({sizes['weight_nonzeros']} nonzeros)", mib(sizes["weights_dense_fp32_bytes"])],
        ["weights CSR (8 B / nonzero + 4 B / row)", mib(sizes["weights_csr_bytes"])],
        ["activation arena (slots + scratch + flat)", mib(sizes["arena_bytes"])],
        [f"generated code ({sizes['kernels']} kernels' objects)", mib(sizes["code_bytes"])],
        ["CSR + arena", mib(summary["csr_plus_arena_bytes"])],
    ]
    growth_rows = [["RSS growth from the built model's kept RSS", "MiB", "/ (CSR + arena)"]]
    for key, label in [
        ("compile", "compile, as measured"),
        ("compile_kept", "compile, kept"),
        ("compile_and_call_kept", "compile + first call, kept"),
    ]:
        growth_rows.append(
            [
                label,
                mib(summary[f"{key}_rss_growth_bytes"]),
                f"{summary[f'{key}_growth_over_csr_plus_arena']:.1f}x",
            ]
        )
    return "\n".join(
        [
            f"{args['model']} ({args['sparsity']}), batch {args['batch']}, {args['threads']} "
            f"thread(s); object cache: {sizes['kernels_cached']}/{sizes['kernels']} kernels cached",
            table(rows),
            "",
            table(size_rows),
            "",
            table(growth_rows),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--sparsity", default="all")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)  # measure this model, print JSON
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.sparsity, args.batch, args.threads)))
        return
    for model in args.models.split(","):
        run = {"model": model, "sparsity": args.sparsity, "batch": args.batch, "threads": args.threads}
        cmd = [sys.executable, __file__, "--child", model]
        cmd += [f"--{k}={v}" for k, v in run.items() if k != "model"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through
        if proc.returncode != 0:
            sys.exit(f"{model}: measuring failed (rc {proc.returncode})")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["summary"] = summarize(result)
        print(report(run, result))
        name = f"memory-{model}-{args.sparsity}-b{args.batch}-t{args.threads}"
        path = save(name, {"machine": machine(), "args": run, **result})
        print(f"wrote {path}\n")


if __name__ == "__main__":
    main()
