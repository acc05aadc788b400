"""Thread scaling per layer and for the whole network: a built-in model compiled for 1 and for N
threads in one process, each layer's time taken from the schedule driver's per-row cycle
counts (CompiledModel.profile), calls of the two interleaved so drift hits both alike.

    python benchmarks/scaling.py resnet50 --threads 2
    python benchmarks/scaling.py caffenet --sparsity seed --top 10

Writes benchmarks/results/scaling-<model>-<sparsity>-b<batch>-t<threads>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fair_environment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="resnet50")
    ap.add_argument("--sparsity", default="", help="default: seed for caffenet, all otherwise")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--top", type=int, default=0, help="print only the N slowest layers (0: all)")
    args = ap.parse_args()
    fair_environment(args.threads)
    run(args)


def run(args) -> None:
    import time

    import numpy as np
    from common import machine, save, table

    import sparsejit
    from sparsejit import models

    sparsity = args.sparsity or ("seed" if args.model == "caffenet" else "all")
    proto = models.build(args.model, batch=args.batch, sparsity=sparsity)
    one = sparsejit.compile(proto, threads=1)
    many = sparsejit.compile(proto, threads=args.threads)
    x = np.random.default_rng(0).standard_normal(one.input_shape("data")).astype(np.float32)
    layers: dict[str, list[list[float]]] = {}
    walls: list[list[float]] = [[], []]
    for _ in range(args.repeats):
        for k, cm in enumerate((one, many)):
            start = time.perf_counter()
            for layer, seconds in cm.profile({"data": x}, repeats=1).items():
                layers.setdefault(layer, [[], []])[k].append(seconds)
            walls[k].append(time.perf_counter() - start)
    ops = {info.name: info.op for info in one.layers}
    med = {name: (float(np.median(a)), float(np.median(b))) for name, (a, b) in layers.items()}
    order = sorted(med, key=lambda n: -med[n][0])
    shown = order[:args.top] if args.top else order
    rows = [["layer", "op", "1 thread ms", f"{args.threads} threads ms", "scaling"]]
    for name in shown:
        t1, tn = med[name]
        rows.append([name, ops.get(name, ""), f"{t1 * 1e3:.3f}", f"{tn * 1e3:.3f}",
                     f"{t1 / tn:.2f}x" if tn > 0 else ""])
    w1, wn = float(np.median(walls[0])), float(np.median(walls[1]))
    rows.append(["whole network (profiled calls)", "", f"{w1 * 1e3:.2f}", f"{wn * 1e3:.2f}",
                 f"{w1 / wn:.2f}x"])
    print(f"{args.model} ({sparsity}), batch {args.batch}: 1 vs {args.threads} threads, "
          f"medians of {args.repeats} interleaved runs")
    print(table(rows))
    path = save(f"scaling-{args.model}-{sparsity}-b{args.batch}-t{args.threads}",
                {"machine": machine(), "args": vars(args),
                 "layers": [{"layer": n, "op": ops.get(n, ""), "one_s": med[n][0], "many_s": med[n][1]}
                            for n in order],
                 "network": {"one_s": w1, "many_s": wn}})
    print(f"wrote {path}")
    one.close()
    many.close()


if __name__ == "__main__":
    main()
