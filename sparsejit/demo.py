"""`sparsejit demo`: compile a built-in pruned model, check it against references, time it."""

from __future__ import annotations

import time

import numpy as np

from .errors import SparseJitError


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def run_demo(name: str = "caffenet", target: str = "host", threads: int | None = None,
             repeats: int = 10) -> int:
    from . import models
    from .compiler import compile, prepare_graph
    from .kernels.reference import run_graph

    print(f"building the pruned '{name}' (seeded random weights, magnitude-pruned) ...")
    proto = models.build(name, batch=1)
    start = time.perf_counter()
    cm = compile(proto, target=target, threads=threads)
    compile_s = time.perf_counter() - start
    x = np.random.default_rng(0).standard_normal(cm.input_shape(cm.input_names[0])).astype(np.float32)
    feeds = {cm.input_names[0]: x}
    out_name = cm.output_names[0]
    y = cm.run(feeds)[out_name]
    # sparsejit is timed before the references run: the numpy reference's BLAS and onnxruntime
    # leave worker threads spinning for a while after a call, which take the cores sparsejit's
    # threads need (CaffeNet on 2 threads: 7.98 ms timed after them, 2.87 ms before)
    timings = {"sparsejit": _median_ms(lambda: cm.run(feeds), repeats)}
    profile = cm.profile(feeds, repeats=max(3, repeats // 2))

    graph = prepare_graph(proto)
    ref = run_graph(graph, feeds)[out_name]
    err = float(np.abs(y - ref).max() / max(1e-30, np.abs(ref).max()))
    print(f"compiled in {compile_s:.2f} s for target {cm.target.name} ({cm.target.cpu}); "
          f"max relative error vs the numpy reference: {err:.2e}")
    ok = err < 1e-3
    timings["numpy reference (dense)"] = _median_ms(lambda: run_graph(graph, feeds),
                                                    max(3, repeats // 3))
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ort_y = sess.run(None, feeds)[0]
        ort_err = float(np.abs(y - ort_y).max() / max(1e-30, np.abs(ort_y).max()))
        print(f"max relative error vs onnxruntime: {ort_err:.2e}")
        ok = ok and ort_err < 1e-3
        timings["onnxruntime (dense)"] = _median_ms(lambda: sess.run(None, feeds), repeats)
    except ImportError:
        print("onnxruntime not installed: skipping that comparison (pip install onnxruntime)")

    print()
    print(cm.report())
    print()
    print(f"{'layer':28s} {'kernel':34s} {'ms':>8s} {'GFLOP/s (dense-eq)':>19s}")
    for info in cm.layers:
        ms = 1e3 * profile.get(info.name, 0.0)
        gflops = info.dense_flops / (ms * 1e6) if info.dense_flops and ms else 0.0
        if ms >= 0.01:
            print(f"{info.name:28s} {info.kernel:34s} {ms:8.3f} {gflops:19.1f}")
    print()
    base = timings["sparsejit"]
    for label, ms in timings.items():
        print(f"{label:26s} {ms:9.2f} ms   {ms / base:5.2f}x the time of sparsejit")
    if not ok:
        raise SparseJitError("demo output does not match the reference")
    print("\nresult matches the references: OK")
    return 0
