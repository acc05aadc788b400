"""Running a program's steps: each run of consecutive native steps is one call into the
generated schedule driver (codegen/schedule.py), with a table of its kernel calls built once per
arena; the other steps (graph inputs, numpy references) run from Python between runs.

With threads > 1 every thread calls the driver on the same table: the calling thread and
threads - 1 workers, woken once per run rather than once per layer. Each layer's work is cut
into shares that whichever thread comes first claims, and threads wait until a layer is done
before the next one: a worker that wakes late costs nothing, the caller takes its shares.
"""

from __future__ import annotations

import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..codegen.schedule import CLAIMS_WORD, MAX_SHARES, ROW_INTS, YIELD_WORD
from .buffers import aligned_zeros
from .steps import Arena, Step

# void sj_run_schedule(ptr table, i64 rows, i64 tid, i64 nthreads, ptr sync)
DriverFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_void_p)


def _sched_yield_address() -> int:
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):  # no libc symbol: waiting threads only pause
        return 0


SCHED_YIELD = _sched_yield_address()


def new_sync(rows: int) -> np.ndarray:
    """A driver call's sync block (codegen/schedule.py): the done counter, the address of
    sched_yield (which a thread waiting long calls), a claim word per row."""
    block = aligned_zeros(2 * (CLAIMS_WORD + rows)).view(np.int64)  # float32s: two per i64
    block[YIELD_WORD] = SCHED_YIELD
    return block


@dataclass(frozen=True)
class NativeRun:
    """Consecutive native steps, run by one driver call."""

    steps: tuple[Step, ...]

    @property
    def layer(self) -> str:
        return f"{self.steps[0].layer} .. {self.steps[-1].layer}"

    @functools.cached_property
    def written(self) -> tuple[str, ...]:
        """The tensors its steps write (computed once: a call exposes them after the run)."""
        return tuple(t for step in self.steps for t in step.writes())

    def writes(self) -> list[str]:
        return list(self.written)


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
    """A NativeRun's kernel calls with this arena's addresses, and their sync block."""

    rows: np.ndarray  # int64 [n, ROW_INTS]
    threads: int  # the threads a call runs on: the most shares of any row, at most the model's
    sync: np.ndarray  # new_sync(n)
    layers: list[str]  # the step of each row (steps without a call have no row)

    def begin(self) -> None:
        """Ready the sync block for a call: nothing done, nothing claimed. Only while no
        thread runs the table (a call's threads have all returned)."""
        self.sync[0] = 0
        self.sync[CLAIMS_WORD:] = 0

    def ticks(self) -> np.ndarray:
        """Thread 0's cycle-counter ticks per row, summed over the calls since `reset_ticks`."""
        return self.rows[:, 8].copy()

    def reset_ticks(self) -> None:
        self.rows[:, 8] = 0


SEGMENT_FLAG = 4  # a table row heading an image-major segment (templates/schedule.ll.j2)


@dataclass(frozen=True)
class _Segment:
    """Consecutive per-image rows over the same images, run image by image."""

    rows: list[NativeRow]
    layers: list[str]
    images: int
    threads: int


def segments(calls: list[tuple[str, NativeRow]], threads: int) -> list[tuple[str, NativeRow] | _Segment]:
    """The calls with each run of at least two consecutive per-image rows over the same
    images (at least one per thread) gathered into a segment. Image by image, an image's
    activations stay in cache from one layer to the next (a batch of 8 spills them), and each
    thread takes whole images, with no wait between the segment's layers."""
    out: list[tuple[str, NativeRow] | _Segment] = []
    i = 0
    while i < len(calls):
        j = i
        images = calls[i][1].images
        while (j < len(calls) and calls[j][1].per_image and calls[j][1].images == images
               and images >= max(2, threads)):
            j += 1
        if j - i >= 2:
            out.append(_Segment([row for _, row in calls[i:j]], [layer for layer, _ in calls[i:j]],
                                images, min(threads, images)))
            i = j
        else:
            out.append(calls[i])
            i += 1
    return out


def build_table(run: NativeRun, arena: Arena, threads: int) -> RunTable:
    calls = [(step.layer, row) for step in run.steps
             if (row := step.native_row(arena, threads)) is not None]
    items = segments(calls, threads)

    def shares_of(item) -> int:
        return item.threads if isinstance(item, _Segment) else item[1].threads

    most = max((shares_of(item) for item in items), default=1)
    ints: list[list[int]] = []
    layers: list[str] = []
    if most > MAX_SHARES:
        raise ValueError(f"a driver call's rows take at most {MAX_SHARES} shares, not {most}")
    for i, item in enumerate(items):
        # on several threads, every row but the last waits until all of it is done: any thread
        # may have run any share of it (or of the rows before), and the next row may read it
        wait = most > 1 and i + 1 < len(items)
        if isinstance(item, _Segment):
            ints.append([0, 0, 0, 0, item.images, len(item.rows),
                         SEGMENT_FLAG | (2 if wait else 0), item.threads, 0, 0])
            layers.append(f"images one by one: {item.layers[0]} .. {item.layers[-1]}")
            ints.extend(row.as_ints(wait_after=False) for row in item.rows)
            layers.extend(item.layers)
        else:
            layer, row = item
            ints.append(row.as_ints(wait_after=wait))
            layers.append(layer)
    rows = np.array(ints, np.int64).reshape(len(ints), ROW_INTS)
    return RunTable(rows, min(most, threads), new_sync(len(ints)), layers)


def run_native(driver: DriverFn, table: RunTable, pool: ThreadPoolExecutor | None) -> None:
    """One driver call over `table`: on the calling thread and table.threads - 1 of the pool's."""
    rows, count, sync = table.rows.ctypes.data, len(table.rows), table.sync.ctypes.data
    if count == 0:
        return
    table.begin()
    if table.threads == 1:
        driver(rows, count, 0, 1, sync)
        return
    if pool is None:
        raise RuntimeError(f"a table for {table.threads} threads needs a worker pool")
    n = table.threads
    futures = [pool.submit(driver, rows, count, tid, n, sync) for tid in range(1, n)]
    driver(rows, count, 0, n, sync)
    for future in futures:
        future.result()
