"""Running a program's steps: each run of consecutive native steps is one call into the
generated schedule driver (codegen/schedule.py), with a table of its kernel calls built once per
arena; the other steps (graph inputs, numpy references) run from Python between runs.

With threads > 1 every thread calls the driver on the same table: the calling thread and
threads - 1 pool workers, woken once per run rather than once per layer, meeting at a spin
barrier after each layer whose output other threads read.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..codegen.schedule import ROW_INTS
from .buffers import aligned_zeros
from .steps import Arena, Step

# void sj_run_schedule(ptr table, i64 rows, i64 tid, i64 nthreads, ptr barrier)
DriverFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_void_p)


def _sched_yield_address() -> int:
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):  # no libc symbol: waiting threads only pause
        return 0


SCHED_YIELD = _sched_yield_address()


def new_barrier() -> np.ndarray:
    """The driver's barrier: a counter, a generation (separate 64-byte lines), then the address
    of sched_yield, which a thread waiting long calls."""
    block = aligned_zeros(48).view(np.int64)
    block[16] = SCHED_YIELD
    return block


@dataclass(frozen=True)
class NativeRun:
    """Consecutive native steps, run by one driver call."""

    steps: tuple[Step, ...]

    @property
    def layer(self) -> str:
        return f"{self.steps[0].layer} .. {self.steps[-1].layer}"

    def writes(self) -> list[str]:
        return [t for step in self.steps for t in step.writes()]


def group(steps: list[Step]) -> list[Step | NativeRun]:
    """The schedule with each maximal run of native steps gathered into a NativeRun."""
    out: list[Step | NativeRun] = []
    pending: list[Step] = []
    for step in steps:
        if step.native:
            pending.append(step)
            continue
        if pending:
            out.append(NativeRun(tuple(pending)))
            pending = []
        out.append(step)
    if pending:
        out.append(NativeRun(tuple(pending)))
    return out


@dataclass
class RunTable:
    """A NativeRun's kernel calls with this arena's addresses, and its barrier."""

    rows: np.ndarray  # int64 [n, ROW_INTS]
    threads: int  # the most threads any row uses
    barrier: np.ndarray  # two counters on separate 64-byte lines
    layers: list[str]  # the step of each row (steps without a call have no row)

    def ticks(self) -> np.ndarray:
        """Thread 0's cycle-counter ticks per row, summed over the calls since `reset_ticks`."""
        return self.rows[:, 8].copy()

    def reset_ticks(self) -> None:
        self.rows[:, 8] = 0


def build_table(run: NativeRun, arena: Arena, threads: int) -> RunTable:
    calls = [(step.layer, row) for step in run.steps
             if (row := step.native_row(arena, threads)) is not None]
    native = [row for _, row in calls]
    most = max((row.threads for row in native), default=1)
    rows = np.zeros((max(1, len(native)), ROW_INTS), np.int64)[:len(native)]
    for i, row in enumerate(native):
        # a barrier after a row when this row or the next ran on several threads: the next
        # row's threads may read what another thread of this one wrote (and vice versa)
        following = native[i + 1].threads if i + 1 < len(native) else 1
        rows[i] = row.as_ints(barrier_after=most > 1 and max(row.threads, following) > 1
                              and i + 1 < len(native))
    return RunTable(rows, most, new_barrier(), [layer for layer, _ in calls])


def run_native(driver: DriverFn, table: RunTable, pool: ThreadPoolExecutor | None) -> None:
    rows, count, barrier = table.rows.ctypes.data, len(table.rows), table.barrier.ctypes.data
    if count == 0:
        return
    if table.threads == 1:
        driver(rows, count, 0, 1, barrier)
        return
    if pool is None:
        raise RuntimeError(f"a table for {table.threads} threads needs a worker pool")
    n = table.threads
    futures = [pool.submit(driver, rows, count, tid, n, barrier) for tid in range(1, n)]
    driver(rows, count, 0, n, barrier)
    for future in futures:
        future.result()
