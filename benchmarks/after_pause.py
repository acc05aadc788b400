"""Calls after an idle pause: how long a two-thread model takes on each of its first calls after
the process slept, against its time back to back. A worker thread whose core is slow to wake
(or that the kernel starts on the caller's core) used to hold up every layer's barrier; since
session 23 the caller takes the shares a worker has not claimed.

    python benchmarks/after_pause.py fc --threads 2
    python benchmarks/after_pause.py resnet50 --threads 2 --rounds 20

"fc" is ResNet-50's classifier alone (2048 -> 1000, dense, random weights: ~0.1 ms a call);
any other name is a built-in model at batch 1 (every conv but the first 90 % sparse). Prints
the median of each call position after the pause, how many calls took over `--slow` times
the back-to-back median, and writes benchmarks/results/after-pause-<model>-t<threads>.json.
Only sparsejit's own timings: run it on two versions (e.g. an older commit's package first on
PYTHONPATH) to compare them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fair_environment, machine, save, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="fc")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=8, help="timed calls after each pause")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds of sleep before a round")
    ap.add_argument("--slow", type=float, default=5.0, help="a call this many times the "
                    "back-to-back median counts as stalled")
    args = ap.parse_args()
    fair_environment(args.threads)
    run(args)


def build(name: str):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sparsejit import models

    if name != "fc":
        return models.build(name, batch=1, sparsity="all"), "data"
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1000, 2048)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(1000).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "x"


def run(args) -> None:
    import numpy as np

    import sparsejit

    proto, input_name = build(args.model)
    cm = sparsejit.compile(proto, threads=args.threads)
    x = np.random.default_rng(1).standard_normal(cm.input_shape(input_name)).astype(np.float32)
    back_to_back = []
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0 or len(back_to_back) < 20:
        t0 = time.perf_counter()
        cm(x)
        back_to_back.append(time.perf_counter() - t0)
    steady = float(np.median(back_to_back[len(back_to_back) // 2:]))
    after = np.zeros((args.rounds, args.calls))
    for r in range(args.rounds):
        time.sleep(args.pause)
        for i in range(args.calls):
            t0 = time.perf_counter()
            cm(x)
            after[r, i] = time.perf_counter() - t0
    medians = np.median(after, axis=0)
    stalled = int((after[:, 1:] > args.slow * steady).sum())
    print(f"{args.model}, {args.threads} thread(s): back to back {steady * 1e3:.3f} ms; "
          f"{args.rounds} rounds of {args.calls} calls after {args.pause * 1e3:.0f} ms of sleep")
    print(table([["call after pause", *[str(i + 1) for i in range(args.calls)]],
                 ["median ms", *[f"{m * 1e3:.3f}" for m in medians]]]))
    print(f"calls 2-{args.calls} over {args.slow:g}x the back-to-back median: "
          f"{stalled} of {args.rounds * (args.calls - 1)}")
    path = save(f"after-pause-{args.model}-t{args.threads}", {
        "machine": machine(), "args": vars(args), "sparsejit": sparsejit.__file__,
        "back_to_back_s": steady, "after_pause_s": after.tolist(), "stalled": stalled})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
