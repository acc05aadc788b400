"""Whole-network benchmark: the built-in pruned models run end to end by sparsejit and by
onnxruntime (which runs the same pruned ONNX dense), in the same process and run. Prints ms per
inference, images/s, compile time and speedups; writes benchmarks/results/networks-*.json.
On several threads each row also shows how far apart CPUs 0 and 1 were just before and after
its timing (one-way cache-line handoff, benchmarks/handoff.py): on a VM whose vCPUs move
between core complexes it tells which placement a row ran in.

    python benchmarks/networks.py --models caffenet,resnet50 --threads 1 --batch 1
    python benchmarks/networks.py --models caffenet --deepsparse   # + DeepSparse (its own venv)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fair_environment  # noqa: E402

DEFAULT_MODELS = "caffenet,resnet50,vgg16,googlenet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument(
        "--sparsity", default="", help="plan for all models (default: seed for caffenet, all otherwise)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=0, help="square input size (default: the model's own)")
    ap.add_argument(
        "--deepsparse",
        action="store_true",
        help="also time DeepSparse (venv at $SPARSEJIT_DEEPSPARSE_PYTHON or /work/ds-venv)",
    )
    args = ap.parse_args()
    fair_environment(args.threads)
    run(args)


def run(args) -> None:
    import numpy as np
    from common import deepsparse_time, interleaved_medians, machine, median_seconds, save, table
    from handoff import handoff_ns

    import sparsejit
    from sparsejit import models

    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    rows = [
        ["model", "sparsity", "compile s", "sparsejit ms", "overhead", "img/s", "ort ms", "vs ort"]
        + (["deepsparse ms", "vs deepsparse"] if args.deepsparse else [])
        + ["max rel err"]
        + (["handoff ns"] if args.threads > 1 else [])
    ]
    results = []
    for name in args.models.split(","):
        sparsity = args.sparsity or ("seed" if name == "caffenet" else "all")
        proto = models.build(name, batch=args.batch, sparsity=sparsity, image_size=args.image_size or None)
        start = time.perf_counter()
        cm = sparsejit.compile(proto, threads=args.threads)
        compile_s = time.perf_counter() - start
        x = np.random.default_rng(0).standard_normal(cm.input_shape("data")).astype(np.float32)
        sess = None
        if ort is not None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        peers = {"sparsejit": lambda: cm(x)}
        if sess is not None:
            peers["ort"] = lambda: sess.run(None, {"data": x})
        # the vCPUs' distance before and after (this VM: ~30 ns sharing an L3, ~165 apart)
        handoff = [handoff_ns()] if args.threads > 1 else []
        # one thread: alternate call by call (no peer leaves worker threads spinning)
        medians = interleaved_medians(peers, args.repeats, per_call=args.threads == 1)
        if handoff:
            handoff.append(handoff_ns())
        t_sj = medians["sparsejit"]
        overhead = framework_overhead(cm, x, args.repeats)
        entry = {
            "model": name,
            "sparsity": sparsity,
            "batch": args.batch,
            "threads": args.threads,
            "compile_s": compile_s,
            "sparsejit_s": t_sj,
            "overhead": overhead,
        }
        if handoff:
            entry["handoff_ns"] = handoff
        t_ort, err = float("nan"), float("nan")
        if sess is not None:
            y_ort = sess.run(None, {"data": x})[0]
            err = float(np.abs(cm(x) - y_ort).max() / max(1e-30, np.abs(y_ort).max()))
            t_ort = medians["ort"]
            entry.update(ort_s=t_ort, max_rel_err=err)
        ds_cols = []
        if args.deepsparse:
            # DeepSparse runs in its own process: sparsejit is timed again right after it, and
            # the ratio uses the mean of sparsejit's medians before and after (drift, see above)
            t_ds = deepsparse_time(proto, args.threads, args.batch, args.repeats)
            t_sj_around = (t_sj + median_seconds(lambda: cm(x), args.repeats)) / 2
            entry.update(deepsparse_s=t_ds, sparsejit_around_deepsparse_s=t_sj_around)
            t_ds = float("nan") if t_ds is None else t_ds
            ds_cols = [f"{t_ds * 1e3:.2f}", f"{t_ds / t_sj_around:.2f}x"]
        rows.append(
            [
                name,
                sparsity,
                f"{compile_s:.1f}",
                f"{t_sj * 1e3:.2f}",
                f"{overhead * 100:.1f} %",
                f"{args.batch / t_sj:.1f}",
                f"{t_ort * 1e3:.2f}",
                f"{t_ort / t_sj:.2f}x",
            ]
            + ds_cols
            + [f"{err:.1e}"]
            + (["/".join(f"{h:.0f}" for h in handoff)] if handoff else [])
        )
        results.append(entry)
        cm.close()
    how = "call by call" if args.threads == 1 else "in 5 rounds"
    print(f"batch {args.batch}, {args.threads} thread(s); medians of {args.repeats} runs, sparsejit and "
          f"onnxruntime interleaved {how}")
    print(table(rows))
    # a run of some models only does not overwrite the table of all four
    subset = "" if args.models == DEFAULT_MODELS else args.models.replace(",", "-") + "-"
    path = save(
        f"networks-{subset}b{args.batch}-t{args.threads}" + (f"-{args.image_size}px" if args.image_size else ""),
        {"machine": machine(), "args": vars(args), "results": results},
    )
    print(f"wrote {path}")


def framework_overhead(cm, x, repeats: int) -> float:
    """What a call adds to its schedule-driver calls (input checks and copy, Python around and
    between driver calls, output copies), as a fraction of the call: the median over calls of
    (the call's time - its driver calls' time), both taken in the same call (separately timed
    runs of calls and of driver calls drifted apart by more than the overhead on this VM), over
    the median call."""
    import time

    import numpy as np

    inside: list[float] = []
    drive = cm.drive

    def timed_drive(driver, table) -> None:
        start = time.perf_counter()
        drive(driver, table)
        inside.append(time.perf_counter() - start)

    cm(x)
    calls, outside = [], []
    cm.drive = timed_drive  # this instance only, for these calls
    try:
        for _ in range(max(repeats, 50)):
            inside.clear()
            start = time.perf_counter()
            cm(x)
            call = time.perf_counter() - start
            calls.append(call)
            outside.append(call - sum(inside))
    finally:
        del cm.drive
    return float(np.median(outside)) / float(np.median(calls))


if __name__ == "__main__":
    main()
