"""Build, verify and time one candidate plan of one conv layer.

The kernel is rendered from the layer's spec exactly as compile() renders it (conv_layer.py),
compiled and loaded on its own, run once on random input and compared with the numpy reference
(output pads must stay untouched: the next layer reads them as zeros), then timed as the
runtime step runs it: packing the input copy first when the plan needs one. Every outcome is a
`Measurement`: a kernel that fails to compile, computes a wrong answer or exceeds the time bound
is a result to log, not an exception.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import llvm
from ..conv_layer import ConvCode, ConvSpec, render_conv
from ..kernels.direct_conv import DirectConvPlan, Epilogue, output_extent, parallel_units
from ..kernels.reference import conv2d
from ..runtime.buffers import aligned_zeros
from ..runtime.steps import ConvFn, parallel
from ..targets import Target

RTOL = 1e-4
ATOL = 1e-5  # scaled by the largest |reference| value: float32 sums round with their operands
SENTINEL = np.float32(-12345.5)  # fills the output buffer outside the interior
MIN_SAMPLES = 3  # fewer timed samples within the bound than this is a timeout
# A sample times enough back-to-back calls to last this long: a call of a small layer takes
# microseconds, no more than the timer and the ctypes call around it.
MIN_SAMPLE_S = 2e-4
MAX_CALLS_PER_SAMPLE = 1000


@dataclass
class Measurement:
    plan: DirectConvPlan
    status: str  # "ok" | "wrong" | "error" | "timeout"
    median_s: float | None = None
    times: list[float] = field(default_factory=list)  # seconds per call, one per sample
    error: str | None = None
    compile_s: float = 0.0
    calls_per_sample: int = 1


def reference_output(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """What the layer must compute: conv, bias, then the fused activation."""
    wl = spec.workload
    y = conv2d(x, spec.weight, spec.bias, wl.strides, wl.pads, wl.dilations, wl.group)
    return apply_epilogue(y, spec.epilogue)


def apply_epilogue(y: np.ndarray, ep: Epilogue) -> np.ndarray:
    if ep.activation == "relu":
        return np.maximum(y, np.float32(0))
    if ep.activation == "leaky_relu":
        return np.where(y < 0, y * np.float32(ep.alpha), y).astype(np.float32)
    if ep.activation == "clip":
        return np.clip(y, np.float32(ep.clip_min), np.float32(ep.clip_max))
    return y


def mismatch(got: np.ndarray, expected: np.ndarray) -> str | None:
    """None when `got` matches within tolerance, else what is wrong."""
    if not np.all(np.isfinite(got)):
        return f"{int(np.count_nonzero(~np.isfinite(got)))} non-finite outputs"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = np.abs(got.astype(np.float64) - expected)
    bound = ATOL * scale + RTOL * np.abs(expected)
    if np.all(err <= bound):
        return None
    worst = int(np.argmax(err - bound))
    return (f"max error {err.max():.3g} over {int(np.count_nonzero(err > bound))} outputs "
            f"(worst at flat index {worst}: got {got.ravel()[worst]}, "
            f"expected {expected.ravel()[worst]})")


def measure(spec: ConvSpec, plan: DirectConvPlan, target: Target, repeats: int = 15,
            time_bound: float = 2.0, threads: int = 1, seed: int = 0) -> Measurement:
    """Compile, verify and time `plan` on `spec` (one image; `target` must run on this host)."""
    start = time.perf_counter()
    try:
        code = render_conv(spec, plan, target)
        library = llvm.CodeLibrary(target)
        library.add_object(llvm.compile_object(code.ir, target, plan.codegen_opt)[0])
        library.finalize()
        fn = ConvFn(library.address(code.symbol))
    except Exception as exc:  # compile failures are results: the tuner moves on
        return Measurement(plan, "error", error=f"{type(exc).__name__}: {exc}")
    compile_s = time.perf_counter() - start
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        result = _verify_and_time(spec, code, fn, repeats, time_bound, pool, threads, seed)
    finally:
        if pool is not None:
            pool.shutdown()
    result.compile_s = compile_s
    del fn, library  # the engine (and its code) goes once nothing calls into it
    return result


def _verify_and_time(spec: ConvSpec, code: ConvCode, fn, repeats: int, time_bound: float,
                     pool: ThreadPoolExecutor | None, threads: int, seed: int) -> Measurement:
    wl, plan = spec.workload, code.plan
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, wl.in_channels, wl.height, wl.width)).astype(np.float32)
    src = aligned_zeros(code.input_floats(wl, 1))
    if code.pack is None:
        spec.in_layout.write(src, x)
    dst = aligned_zeros(output_extent(wl, spec.out_layout, plan.vector_width))
    dst[:] = SENTINEL
    in_ptr, out_ptr = src.ctypes.data, dst.ctypes.data
    units = parallel_units(spec.workload, plan, code.pattern.blocks)
    # a fused residual is timed against zeros: the reference then needs no change
    res = aligned_zeros(spec.residual.image_stride) if spec.residual is not None else None
    res_ptr = None if res is None else res.ctypes.data

    def run() -> None:  # as runtime.steps.ActivationKernel runs it for one image
        if code.pack is not None:
            code.pack.write(src, x)
        parallel(pool, threads, lambda b0, b1: fn(in_ptr, out_ptr, res_ptr, 0, 1, b0, b1), units)

    first = time.perf_counter()
    run()
    first = time.perf_counter() - first
    got = np.array(spec.out_layout.read(dst, 1))
    problem = mismatch(got, reference_output(spec, x))
    outside = dst.copy()
    spec.out_layout.interior(outside, 1)[...] = SENTINEL
    if problem is None and not np.all((outside == SENTINEL) | (outside == 0)):
        problem = "wrote other than zeros outside the output interior"
    if problem is not None:
        return Measurement(plan, "wrong", error=problem)
    # the first call ran on cold caches: it overestimates a call, so samples err long
    calls = int(min(MAX_CALLS_PER_SAMPLE, max(1, MIN_SAMPLE_S // max(first, 1e-9))))
    times = _time(run, repeats, calls, time_bound - first)
    if len(times) < min(MIN_SAMPLES, repeats):
        return Measurement(plan, "timeout", times=times, calls_per_sample=calls,
                           error=f"{len(times)} timed samples within the {time_bound:g} s bound")
    return Measurement(plan, "ok", float(np.median(times)), times, calls_per_sample=calls)


def _time(run, repeats: int, calls: int, bound: float) -> list[float]:
    """Up to `repeats` samples of seconds per call (each the mean of `calls` calls), stopping
    once they have taken `bound` seconds in all."""
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and spent <= bound:
        start = time.perf_counter()
        for _ in range(calls):
            run()
        elapsed = time.perf_counter() - start
        times.append(elapsed / calls)
        spent += elapsed
    return times

