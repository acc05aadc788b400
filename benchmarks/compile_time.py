"""Compile time of a built-in model in fresh processes: cold (object cache off: every kernel
rendered and compiled by LLVM) and warm (every object from the cache). Each run is a new
process that imports sparsejit, builds the ONNX model, then times `sparsejit.compile()`; the
table gives the median and range over the runs, and the import + build time before it.

    python benchmarks/compile_time.py                     # pruned ResNet-50, 5 runs each
    python benchmarks/compile_time.py --models resnet50,vgg16 --runs 3 [--loader mcjit]

Writes benchmarks/results/compile-time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save, table  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import sparsejit
from sparsejit import models
proto = models.build(sys.argv[1], sparsity=sys.argv[2])
t1 = time.perf_counter()
cm = sparsejit.compile(proto, threads=1)
t2 = time.perf_counter()
print(json.dumps({"setup_s": t1 - t0, "compile_s": t2 - t1,
                  "loader": cm.program().library.loader,
                  "llvm_loaded": "llvmlite.binding" in sys.modules}))
"""


def run_child(model: str, sparsity: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, sparsity], env=env,
                         capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--sparsity", default="all", help="built-in sparsity (default all)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--loader", choices=("elf", "mcjit"), default="elf")
    args = ap.parse_args()
    env = dict(os.environ, SPARSEJIT_TUNING_LOG="off", SPARSEJIT_LOADER=args.loader)
    results, rows = {}, [["model", "mode", "compile s (median)", "range", "imports + build s",
                          "loader", "LLVM loaded"]]
    with tempfile.TemporaryDirectory() as cache:
        for model in args.models.split(","):
            runs = {"cold": [run_child(model, args.sparsity, dict(env, SPARSEJIT_CACHE_DIR="off"))
                             for _ in range(args.runs)]}
            run_child(model, args.sparsity, dict(env, SPARSEJIT_CACHE_DIR=cache))  # fills it
            runs["warm"] = [run_child(model, args.sparsity, dict(env, SPARSEJIT_CACHE_DIR=cache))
                            for _ in range(args.runs)]
            results[model] = runs
            for mode, rs in runs.items():
                times = sorted(r["compile_s"] for r in rs)
                setup = sorted(r["setup_s"] for r in rs)
                rows.append([model, mode, f"{times[len(times) // 2]:.2f}",
                             f"{times[0]:.2f}-{times[-1]:.2f}", f"{setup[len(setup) // 2]:.2f}",
                             ",".join(sorted({r['loader'] for r in rs})),
                             ",".join(sorted({str(r['llvm_loaded']) for r in rs}))])
    print(table(rows))
    path = save("compile-time", {"machine": machine(), "args": vars(args), "runs": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
