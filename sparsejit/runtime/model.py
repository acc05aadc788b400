"""CompiledModel: the callable a user gets from sparsejit.compile().

It keeps the imported graph with its batch dimension open and a Program per bound batch size
(bound at compile time with batch=N, or at the first call with a new batch). Each call takes an
arena of buffers from a free list, so several Python threads can call one model at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import llvm, targets
from ..errors import InputError, SparseJitError
from ..graph.ir import Graph
from ..targets import Target
from .schedule import NativeRun, build_table, run_native
from .workers import ResidentWorkers
from .steps import Arena


def _spread(times: dict[str, list[float]], run: NativeRun, table, seconds: float) -> None:
    """A driver call's wall time shared among its rows by their ticks (steps without a call,
    views, take none)."""
    ticks = table.ticks()
    total = int(ticks.sum())
    share = {layer: seconds * int(tick) / total if total else 0.0
             for layer, tick in zip(table.layers, ticks)}
    for step in run.steps:
        times.setdefault(step.layer, []).append(share.get(step.layer, 0.0))


class CompiledModel:
    def __init__(self, graph: Graph, target: Target, threads: int,
                 bind: Callable[[int, bool], Any], name: str = "model") -> None:
        self.graph = graph
        self.target = target
        self.threads = threads
        self.name = name
        self._bind_fn = bind
        self._runnable = targets.can_run(target)
        self._programs: dict[int, Any] = {}
        self._free: dict[int, list[Arena]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads) if threads > 1 and self._runnable else None
        # driver calls on several threads go to resident workers; the pool runs the rest
        self._workers = ResidentWorkers(threads, target) if self._pool is not None else None
        self._inspection = None  # the last lowered() program

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def input_shape(self, name: str) -> tuple:
        return tuple(self.graph.value(name).shape or ())

    def _static_batch(self) -> int | None:
        for name in self.graph.inputs:
            shape = self.graph.value(name).shape
            if shape and isinstance(shape[0], int):
                return shape[0]
        return None

    def _check_inputs(self, feeds: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(feeds, Mapping):
            raise InputError(f"model '{self.name}': run() takes a dict of inputs by name "
                             f"{self.graph.inputs}, got a {type(feeds).__name__} "
                             "(call the model itself for positional inputs)")
        unknown = sorted(set(feeds) - set(self.graph.inputs))
        missing = [n for n in self.graph.inputs if n not in feeds]
        if unknown or missing:
            raise InputError(f"model '{self.name}' takes inputs {self.graph.inputs}; "
                             f"missing {missing}, unknown {unknown}")
        checked: dict[str, np.ndarray] = {}
        batch = None
        for name in self.graph.inputs:
            value = self.graph.value(name)
            x = feeds[name]
            if not isinstance(x, np.ndarray):
                try:
                    x = np.asarray(x)
                except Exception as exc:
                    raise InputError(f"input '{name}': cannot convert {type(x).__name__} to an "
                                     f"array ({exc})") from None
            want = np.dtype(value.dtype)
            if x.dtype != want:
                if want.kind == "f" and x.dtype.kind == "f":
                    x = x.astype(want)  # documented: float64/float16 inputs are converted
                else:
                    raise InputError(f"input '{name}': dtype {x.dtype}, expected {want} "
                                     "(float inputs of other widths are converted; ints are not)")
            shape = value.shape or ()
            if x.ndim != len(shape):
                raise InputError(f"input '{name}': rank {x.ndim} (shape {x.shape}), "
                                 f"expected rank {len(shape)} {tuple(shape)}")
            for axis, (got, exp) in enumerate(zip(x.shape, shape)):
                if isinstance(exp, int) and got != exp:
                    raise InputError(f"input '{name}': dimension {axis} is {got}, expected {exp} "
                                     f"(shape {x.shape}, expected {tuple(shape)})")
            if shape and isinstance(shape[0], str):
                if batch is not None and batch != x.shape[0]:
                    raise InputError(f"input '{name}': batch {x.shape[0]} differs from {batch}")
                batch = x.shape[0]
            if batch == 0:
                raise InputError(f"input '{name}': batch size 0")
            checked[name] = x
        static = self._static_batch()
        return checked, batch if batch is not None else (static if static is not None else 1)

    # -- programs -------------------------------------------------------------------------------
    def program(self, batch: int | None = None):
        """The lowered program for `batch` (default: the bound or static batch, else 1)."""
        if batch is None:
            batch = self._static_batch() or (min(self._programs) if self._programs else 1)
        with self._lock:
            prog = self._programs.get(batch)
        if prog is None:
            prog = self._bind_fn(batch, self._runnable)
            with self._lock:
                prog = self._programs.setdefault(batch, prog)
        return prog

    def _acquire(self, prog) -> Arena:
        with self._lock:
            free = self._free.setdefault(prog.batch, [])
            if free:
                return free.pop()
        return prog.new_arena()

    def _release(self, arena: Arena) -> None:
        with self._lock:
            self._free.setdefault(arena.batch, []).append(arena)

    # -- running --------------------------------------------------------------------------------
    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Dict of inputs by graph input name -> dict of outputs by graph output name."""
        return self._run(feeds, None)

    def profile(self, feeds: dict[str, Any], repeats: int = 5) -> dict[str, float]:
        """Median seconds per step (layer name -> s) over `repeats` runs, as the model runs
        (driver calls included): a kernel's time is thread 0's cycle-counter ticks over its row
        (the shares it ran and the wait after it) scaled by its driver call's wall time."""
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):
            self._run(feeds, samples)
        return {k: float(np.median(v)) for k, v in samples.items()}

    def drive(self, driver, table) -> None:
        """One driver call over `table`: on the resident workers, else (another call holds them,
        or closed) on the thread pool, else on the calling thread."""
        workers = self._workers
        if workers is None or not workers.run(driver, table):
            run_native(driver, table, self._pool)

    def _run(self, feeds: dict[str, Any], times: dict[str, list[float]] | None):
        """Run the program; with `times`, collect each layer's seconds."""
        if not self._runnable:
            targets.require_runnable(self.target)
        feeds, batch = self._check_inputs(feeds)
        prog = self.program(batch)
        arena = self._acquire(prog)
        try:
            env: dict[str, np.ndarray] = dict(feeds)
            for index, item in enumerate(prog.schedule):
                start = time.perf_counter() if times is not None else 0.0
                try:
                    if isinstance(item, NativeRun):
                        threads = self.threads if self._pool is not None else 1
                        table = arena.tables.get((index, threads))
                        if table is None:
                            table = arena.tables[index, threads] = build_table(item, arena, threads)
                        table.reset_ticks()
                        self.drive(prog.driver, table)
                        if times is not None:
                            _spread(times, item, table, time.perf_counter() - start)
                        for tensor in item.written:
                            env[tensor] = arena.views[tensor]
                    else:
                        item.run(env, arena, self._pool, self.threads)
                except SparseJitError:
                    raise
                except Exception as exc:  # name the layer that failed
                    raise SparseJitError(f"layer '{item.layer}' failed: {exc}") from exc
                if times is not None and not isinstance(item, NativeRun):
                    times.setdefault(item.layer, []).append(time.perf_counter() - start)
            return {name: np.array(env[name] if name in env else self.graph.const(name), copy=True)
                    for name in self.graph.outputs}
        finally:
            self._release(arena)

    def __call__(self, *inputs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        if len(inputs) != len(self.graph.inputs):
            raise InputError(f"model '{self.name}' takes {len(self.graph.inputs)} input(s) "
                             f"{self.graph.inputs}, got {len(inputs)}")
        outs = self.run(dict(zip(self.graph.inputs, inputs)))
        values = tuple(outs[n] for n in self.graph.outputs)
        return values[0] if len(values) == 1 else values

    # -- inspection -----------------------------------------------------------------------------
    @property
    def layers(self):
        return self.program().layers

    def _layer(self, name: str):
        for info in self.layers:
            if info.name == name:
                return info
        known = ", ".join(i.name for i in self.layers if i.source is not None)
        raise KeyError(f"no layer '{name}' in model '{self.name}'; layers with kernels: {known}")

    def lowered(self, batch: int | None = None):
        """The program for `batch` lowered again with its kernel sources and conv specs kept
        and no code loaded (objects come from the cache): what ir(), asm(), the CLI's --emit-ir
        and the autotuner read. The running program drops them once its code is loaded: they
        hold every layer's weights and pattern. The last one is kept until close()."""
        prog = self.program(batch)
        with self._lock:
            cached = self._inspection
        if cached is not None and cached.batch == prog.batch:
            return cached
        inspection = self._bind_fn(prog.batch, False)
        with self._lock:
            self._inspection = inspection
        return inspection

    def _source_layer(self, name: str, what: str):
        info = self._layer(name)
        if info.source is None:
            raise KeyError(f"layer '{name}' ({info.op}) has no kernel ({info.kernel}): no {what}")
        if info.ir is not None:  # a program that was never loaded keeps its sources
            return info
        return next(i for i in self.lowered().layers if i.name == name)

    def ir(self, layer: str) -> str:
        """The LLVM IR module generated for `layer` (its ONNX node name)."""
        return self._source_layer(layer, "IR").ir

    def asm(self, layer: str) -> str:
        """The assembly of `layer`'s kernel for the compiled target."""
        info = self._source_layer(layer, "assembly")
        return llvm.assembly(info.ir, self.target, info.opt)

    def report(self) -> str:
        """A table: per layer, op, kernel, shapes, density, nonzeros, object size, compile time."""
        prog = self.program()
        rows = [("layer", "op", "kernel", "input", "output", "density", "nonzeros", "obj KB",
                 "compile")]
        for i in prog.layers:
            fused = f"+{'+'.join(i.fused)}" if i.fused else ""
            rows.append((i.name, i.op + fused, i.kernel, "x".join(map(str, i.in_shape)),
                         "x".join(map(str, i.out_shape)),
                         "" if i.density is None else f"{i.density:.3f}",
                         "" if i.nonzeros is None else str(i.nonzeros),
                         f"{i.code_bytes / 1024:.1f}" if i.code_bytes else "",
                         ("cached" if i.cached else f"{i.compile_seconds:.2f}s") if i.source else ""))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [f"model '{self.name}' on target {self.target.name} ({self.target.cpu}, "
                 f"{self.target.vector_width} x f32), batch {prog.batch}, threads {self.threads}"]
        for n, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def close(self) -> None:
        """Stop the worker threads (later calls run on the calling thread only) and drop the
        inspection program."""
        self._inspection = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            workers, self._workers = self._workers, None
            if workers is not None:
                workers.close()
            pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return (f"<CompiledModel '{self.name}' target={self.target.name} inputs={self.graph.inputs} "
                f"outputs={self.graph.outputs}>")

