"""Machine ceilings for the kernels: fp32 FMA peak (independent chains in registers), and the
same with one aligned or one misaligned vector load per FMA, on one thread. The numbers sparse
kernels are measured against ("% of peak").

    python benchmarks/peak.py [--target host]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

CHAINS = 12
ITERS = 2_000_000


def kernel_ir(width: int, load: str) -> str:
    """A loop of CHAINS independent FMA chains; per FMA, optionally one vector load."""
    vt = f"<{width} x float>"
    lines = [f"declare {vt} @llvm.fmuladd.v{width}f32({vt}, {vt}, {vt})",
             "define void @peak(ptr %buf, i64 %iters, ptr %out) {",
             "entry:", "  br label %loop", "loop:", "  %i = phi i64 [0, %entry], [%i.next, %loop]"]
    for c in range(CHAINS):
        lines.append(f"  %a{c} = phi {vt} [zeroinitializer, %entry], [%b{c}, %loop]")
    # loads touch a 4 KB window (L1) at offsets that are multiples of the vector, or shifted by 1
    for c in range(CHAINS):
        if load == "none":
            operand = f"%a{(c + 1) % CHAINS}"
        else:
            shift = 1 if load == "misaligned" else 0
            lines.append(f"  %o{c} = and i64 %i, 7")
            lines.append(f"  %o{c}.s = mul i64 %o{c}, {width * 2}")
            lines.append(f"  %o{c}.t = add i64 %o{c}.s, {c * width + shift}")
            lines.append(f"  %p{c} = getelementptr float, ptr %buf, i64 %o{c}.t")
            lines.append(f"  %x{c} = load {vt}, ptr %p{c}, align 4")
            operand = f"%x{c}"
        lines.append(f"  %b{c} = call {vt} @llvm.fmuladd.v{width}f32({vt} {operand}, "
                     f"{vt} splat (float 0.5), {vt} %a{c})")
    lines += ["  %i.next = add i64 %i, 1", "  %more = icmp slt i64 %i.next, %iters",
              "  br i1 %more, label %loop, label %done", "done:"]
    acc = "%b0"
    for c in range(1, CHAINS):
        lines.append(f"  %s{c} = fadd {vt} {acc}, %b{c}")
        acc = f"%s{c}"
    lines += [f"  store {vt} {acc}, ptr %out, align 4", "  ret void", "}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="host")
    args = ap.parse_args()
    from sparsejit import llvm, targets

    tgt = targets.get(args.target)
    v = tgt.vector_width
    buf = np.ones(64 * 1024, np.float32)
    out = np.zeros(64, np.float32)
    results = {}
    for load in ("none", "aligned", "misaligned"):
        obj, _ = llvm.compile_object(kernel_ir(v, load), tgt, 2)
        lib = llvm.CodeLibrary(tgt)
        lib.add_object(obj)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)(lib.address("peak"))
        base = buf.ctypes.data + (-buf.ctypes.data) % 64
        fn(base, 1000, out.ctypes.data)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            fn(base, ITERS, out.ctypes.data)
            times.append(time.perf_counter() - start)
        gflops = 2 * v * CHAINS * ITERS / float(np.median(times)) / 1e9
        results[load] = gflops
        print(f"{tgt.name} ({tgt.cpu}, {v} x f32), {CHAINS} FMA chains, load per FMA = {load:10s}: "
              f"{gflops:6.1f} GFLOP/s")
    path = save(f"peak-{tgt.name}", {"machine": machine(), "target": tgt.name, "gflops": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
