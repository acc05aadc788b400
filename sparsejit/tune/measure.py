"""Build, verify and time one candidate plan of one conv layer (or pruned FC layer).

The kernel is rendered from the layer's spec exactly as compile() renders it (conv_layer.py),
compiled and loaded on its own, run once on random input and compared with the numpy reference
(output pads must stay untouched: the next layer reads them as zeros), then timed as the
runtime runs it: through the generated schedule driver, on as many threads as the runtime
would give the layer, each call waiting for the one before; a sample is one driver call over a table
of back-to-back calls, so the threads are handed work once per sample, not once per call as
a Python pool did before (its hand-off was in every small layer's time). A plan that reads a
packed input copy runs the generated repack kernel before each call, as the runtime does.
A pruned FC run row by row (`measure_fc`) is timed one call per sample on one thread, with its
table evicted from the caches before each call: in a network the layers between two calls pass
more data through the caches than they hold, so its table streams from memory, and which plan
is fastest changes with that (gathers or scalar loads of x on AMD Zen 4).
Every outcome is a
`Measurement`: a kernel that fails to compile, computes a wrong answer or exceeds the time bound
is a result to log, not an exception.
"""

from __future__ import annotations

import ctypes
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import llvm
from ..codegen.repack import kernel_symbol as repack_symbol
from ..codegen.repack import render_repack
from ..codegen.schedule import SYMBOL as DRIVER_SYMBOL
from ..codegen.schedule import schedule_source
from ..conv_layer import ConvCode, ConvSpec, render_conv
from ..fc_layer import FcSpec, render_fc
from ..kernels.direct_conv import DirectConvPlan, Epilogue, output_extent, parallel_units
from ..kernels.reference import conv2d
from ..kernels.sparse_fc import SparseFcPlan
from ..kernels.sparse_fc import reference as fc_reference
from ..runtime.buffers import aligned_zeros
from ..runtime.schedule import DriverFn, NativeRun, RunTable, build_table, run_native
from ..runtime.steps import ActivationKernel, Arena
from ..targets import Target

RTOL = 1e-4
ATOL = 1e-5  # scaled by the largest |reference| value: float32 sums round with their operands
SENTINEL = np.float32(-12345.5)  # fills the output buffer outside the interior
MIN_SAMPLES = 3  # fewer timed samples within the bound than this is a timeout
# A sample times enough back-to-back calls to last this long: a call of a small layer takes
# microseconds, no more than the timer and the ctypes call around it.
MIN_SAMPLE_S = 2e-4
# Split across threads, far longer: on this 2-vCPU VM a ResNet-50 14 x 14 conv (0.5 ms) timed
# 0.88-1.09x faster on 2 threads in 5 ms samples and 1.62-1.97x in 50 ms ones (rounds
# interleaved); within a sample a row now and then stalled 2-4 ms at the barrier (the host
# preempting a vCPU: a busy-loop sees such gaps 3x as often when both vCPUs are busy).
MIN_THREADED_SAMPLE_S = 2e-2
MAX_CALLS_PER_SAMPLE = 1000
# Streamed through the caches before each timed call of a pruned FC: more than the last level
# of this machine's caches holds (64 MiB where it is not known).
EVICT_MIN_BYTES = 64 << 20
_evict_buffer: np.ndarray | None = None
# (x, y, unused, n0, n1, m0, m1): a row kernel's signature, as the runtime calls it
FcFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


@dataclass
class Measurement:
    plan: DirectConvPlan | SparseFcPlan
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
        if code.pack is not None:
            library.add_object(llvm.compile_object(_repack_ir(spec, code, target), target, 2)[0])
        library.add_object(llvm.compile_source(schedule_source(target.name), target, 2)[0])
        library.finalize()
        kernel, driver = library.address(code.symbol), DriverFn(library.address(DRIVER_SYMBOL))
        repack = (None if code.pack is None else
                  library.address(repack_symbol(spec.name, code.pack, target.vector_width)))
    except Exception as exc:  # compile failures are results: the tuner moves on
        return Measurement(plan, "error", error=f"{type(exc).__name__}: {exc}")
    compile_s = time.perf_counter() - start
    pool = ThreadPoolExecutor(threads - 1) if threads > 1 else None
    if pool is not None:  # start the workers now: the first call's time sizes the samples
        for started in [pool.submit(time.sleep, 1e-3) for _ in range(threads - 1)]:
            started.result()
    try:
        result = _verify_and_time(spec, code, kernel, repack, driver, repeats, time_bound, pool,
                                  threads, seed)
    finally:
        if pool is not None:
            pool.shutdown()
    result.compile_s = compile_s
    del driver, library  # the code goes once nothing calls into it
    return result


def _repack_ir(spec: ConvSpec, code: ConvCode, target: Target) -> str:
    """The kernel copying the producer's layout into the plan's packed input (lower.py's)."""
    return render_repack(spec.name, spec.workload.in_channels, spec.in_layout, code.pack, 0,
                         target.vector_width, target.name)


def _verify_and_time(spec: ConvSpec, code: ConvCode, kernel: int, repack: int | None,
                     driver: DriverFn, repeats: int, time_bound: float,
                     pool: ThreadPoolExecutor | None, threads: int, seed: int) -> Measurement:
    wl, plan = spec.workload, code.plan
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, wl.in_channels, wl.height, wl.width)).astype(np.float32)
    src = aligned_zeros(code.input_floats(wl, 1))
    if code.pack is None:
        spec.in_layout.write(src, x)
    else:  # the producer's layout, which the repack kernel copies into src
        produced = aligned_zeros(spec.in_layout.image_stride)
        spec.in_layout.write(produced, x)
    dst = aligned_zeros(output_extent(wl, spec.out_layout, plan.vector_width))
    dst[:] = SENTINEL
    # a fused residual is timed against zeros: the reference then needs no change
    res = aligned_zeros(spec.residual.image_stride) if spec.residual is not None else None
    # the runtime's own steps (as lower.py makes them, for one image) over these buffers
    buffers = {"x": src, "y": dst} if repack is None else {"produced": produced, "x": src, "y": dst}
    if res is not None:
        buffers["residual"] = res
    arena = Arena(1, list(buffers.values()), {name: i for i, name in enumerate(buffers)}, {})
    conv = ActivationKernel(spec.name, "x", "y", None, parallel_units(wl, plan, code.pattern.blocks),
                            1, 2 * code.pattern.nonzeros * wl.out_height * wl.out_width,
                            None if res is None else "residual", address=kernel)
    call = [conv]
    if repack is not None:
        call.insert(0, ActivationKernel(f"{spec.name}:pack", "produced", "x", None, wl.in_channels,
                                        1, wl.in_channels * wl.height * wl.width, address=repack,
                                        into_scratch=True))
    tables: dict[int, RunTable] = {}

    def run(calls: int) -> float:
        """Seconds per call of `calls` back-to-back calls (each with its repack, if any)."""
        if calls not in tables:  # each call waits for the one before, as a network's layers do
            tables[calls] = build_table(NativeRun(tuple(call * calls)), arena, threads)
        start = time.perf_counter()
        run_native(driver, tables[calls], pool)
        return (time.perf_counter() - start) / calls

    first = time.perf_counter()
    run(1)
    first = time.perf_counter() - first
    expected = reference_output(spec, x)
    # a flattened pointwise conv stores its one row of H * W into the output's H rows
    got = np.array(spec.out_layout.read(dst, 1)).reshape(expected.shape)
    problem = mismatch(got, expected)
    outside = dst.copy()
    spec.out_layout.interior(outside, 1)[...] = SENTINEL
    if problem is None and not np.all((outside == SENTINEL) | (outside == 0)):
        problem = "wrote other than zeros outside the output interior"
    if problem is not None:
        return Measurement(plan, "wrong", error=problem)
    # the first call ran on cold caches: it overestimates a call, so samples err long
    sample_s = MIN_THREADED_SAMPLE_S if tables[1].threads > 1 else MIN_SAMPLE_S
    calls = int(min(MAX_CALLS_PER_SAMPLE, max(1, sample_s // max(first, 1e-9))))
    times = _time(run, repeats, calls, time_bound - first)
    if len(times) < min(MIN_SAMPLES, repeats):
        return Measurement(plan, "timeout", times=times, calls_per_sample=calls,
                           error=f"{len(times)} timed samples within the {time_bound:g} s bound")
    return Measurement(plan, "ok", float(np.median(times)), times, calls_per_sample=calls)


def _time(run, repeats: int, calls: int, bound: float) -> list[float]:
    """Up to `repeats` samples of seconds per call (`run(calls)`), stopping once they have
    taken `bound` seconds in all."""
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and spent <= bound:
        start = time.perf_counter()
        times.append(run(calls))
        spent += time.perf_counter() - start
    return times


def measure_fc(spec: FcSpec, plan: SparseFcPlan, target: Target, repeats: int = 15,
               time_bound: float = 2.0, seed: int = 0) -> Measurement:
    """Compile, verify and time `plan` on a pruned FC's `spec` (one image, one thread; its
    table evicted from the caches before each timed call)."""
    start = time.perf_counter()
    try:
        code = render_fc(spec, plan, target)
        library = llvm.CodeLibrary(target)
        library.add_object(llvm.compile_object(code.ir, target, plan.codegen_opt)[0])
        library.finalize()
        kernel = FcFn(library.address(code.symbol))
    except Exception as exc:  # compile failures are results: the tuner moves on
        return Measurement(plan, "error", error=f"{type(exc).__name__}: {exc}")
    compile_s = time.perf_counter() - start
    wl = spec.workload
    rng = np.random.default_rng(seed)
    x = aligned_zeros(wl.in_features).reshape(1, -1)
    x[...] = rng.standard_normal(x.shape)
    y = aligned_zeros(wl.out_features).reshape(1, -1)
    y[...] = SENTINEL

    def run() -> float:
        start = time.perf_counter()
        kernel(x.ctypes.data, y.ctypes.data, None, 0, 1, 0, wl.out_features)
        return time.perf_counter() - start

    first = run()
    expected = apply_epilogue(fc_reference(x, spec.weight, spec.bias).astype(np.float32),
                              spec.epilogue)
    problem = mismatch(y, expected)
    if problem is not None:
        return Measurement(plan, "wrong", error=problem, compile_s=compile_s)
    evict = _eviction_buffer()

    def evicted_run(_calls: int) -> float:
        evict[...] += 1.0  # every line of it written: the table's lines leave every cache level
        return run()

    times = _time(evicted_run, repeats, 1, time_bound - first)
    if len(times) < min(MIN_SAMPLES, repeats):
        return Measurement(plan, "timeout", times=times, compile_s=compile_s,
                           error=f"{len(times)} timed samples within the {time_bound:g} s bound")
    del kernel, library  # the code goes once nothing calls into it
    return Measurement(plan, "ok", float(np.median(times)), times, compile_s=compile_s)


def _eviction_buffer() -> np.ndarray:
    """A buffer twice the last-level cache (EVICT_MIN_BYTES at least), made once."""
    global _evict_buffer
    if _evict_buffer is None:
        size = EVICT_MIN_BYTES
        try:
            text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            size = max(size, 2 * int(text.rstrip("KMG")) * scale)
        except (OSError, ValueError):
            pass
        _evict_buffer = np.ones(size // 4, np.float32)
    return _evict_buffer
