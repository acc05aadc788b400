"""Resident workers: the threads that run a model's driver calls beside the caller, waiting in
native code between calls.

A driver call on N threads needs N - 1 more threads to call the driver with their ids. Handing
each call to a Python thread pool costs ~0.1 ms (a condition variable and the GIL each way: on
this project's 2-vCPU VM a submit-and-result round trip took 124-164 us), several percent of a
network's call at batch 1. Instead each worker, once started, waits for the next call in
`sj_worker_loop` (templates/workers.ll.j2): spinning on its mailbox for SPIN_SECONDS after each
call, then parking (its thread ends; the next call starts another). A call posts into the
mailboxes, runs its own share, and waits until every worker has run its share. A call that
finds the workers in use by another Python thread's call falls back to the model's thread pool
(runtime/schedule.py: run_native). Worker threads are daemon threads: a process exits without
waiting for one to stop spinning.

The workers' module is the same for every model; it is compiled (or loaded from the object
cache) once per process and never unloaded, since a parked worker's thread may still be
returning through it.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from types import SimpleNamespace

import numpy as np

from .. import llvm
from ..codegen.render import KernelSource
from ..codegen.workers import (LOOP, MAILBOX_INTS, PARKED, POST, STOP, TICKS, WAIT,
                               render_workers)
from ..targets import Target
from .buffers import aligned_zeros
from .schedule import SCHED_YIELD, DriverFn, RunTable

# How long a worker spins after a call for the next one before it parks: a model called in a
# loop calls again well within it (its Python steps between calls take ~0.1-0.3 ms), and a
# parked worker costs one pool hand-off at the next call, no more.
SPIN_SECONDS = 2e-3

_Ptr = ctypes.c_void_p
_modules: dict[str, SimpleNamespace] = {}  # target name -> the loaded module's functions
_modules_lock = threading.Lock()


def _module(target: Target) -> SimpleNamespace:
    """The workers' functions for `target`, loaded once per process (the library kept forever)."""
    with _modules_lock:
        fns = _modules.get(target.name)
        if fns is None:
            source = KernelSource(lambda: render_workers(target.name), "workers", target.name)
            library = llvm.CodeLibrary(target)
            library.add_object(llvm.compile_source(source, target, 2)[0])
            library.finalize()
            fns = SimpleNamespace(
                library=library,
                loop=ctypes.CFUNCTYPE(ctypes.c_int64, _Ptr, ctypes.c_int64)(library.address(LOOP)),
                post=ctypes.CFUNCTYPE(ctypes.c_int64, _Ptr)(library.address(POST)),
                wait=ctypes.CFUNCTYPE(None, _Ptr)(library.address(WAIT)),
                stop=ctypes.CFUNCTYPE(None, _Ptr)(library.address(STOP)),
                ticks=ctypes.CFUNCTYPE(ctypes.c_int64)(library.address(TICKS)),
            )
            fns.ticks_per_second = _ticks_per_second(fns.ticks)
            _modules[target.name] = fns
        return fns


def _ticks_per_second(ticks) -> float:
    """The cycle counter's rate, from 5 ms of sleep (it runs at a constant rate on x86-64)."""
    t0, c0 = time.perf_counter(), ticks()
    time.sleep(5e-3)
    t1, c1 = time.perf_counter(), ticks()
    return max(1.0, (c1 - c0) / (t1 - t0))


class ResidentWorkers:
    """`threads` - 1 worker threads for one model's driver calls."""

    def __init__(self, threads: int, target: Target, spin_seconds: float | None = None) -> None:
        self.threads = threads
        spin_seconds = SPIN_SECONDS if spin_seconds is None else spin_seconds
        self._fns = _module(target)
        # one mailbox per worker, each two 64-byte lines: the state, then the call
        boxes = aligned_zeros(MAILBOX_INTS * 2 * max(1, threads - 1)).view(np.int64)
        self._boxes = boxes.reshape(-1, MAILBOX_INTS)
        self._boxes[:, 0] = PARKED
        self._boxes[:, 14] = SCHED_YIELD
        self._spin_ticks = int(spin_seconds * self._fns.ticks_per_second)
        self._in_use = threading.Lock()  # one call at a time uses the workers
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop, self._fns, self._boxes)

    def run(self, driver: DriverFn, table: RunTable) -> bool:
        """Run `table` on the calling thread and table.threads - 1 workers; False, having run
        nothing, when another call is using the workers (or they are closed)."""
        if not self._in_use.acquire(blocking=False):
            return False
        try:
            if self._closed:
                return False
            n, rows, barrier = table.threads, table.rows.ctypes.data, table.barrier.ctypes.data
            count = len(table.rows)
            address = ctypes.cast(driver, _Ptr).value
            boxes = self._boxes[:n - 1]
            for tid, box in enumerate(boxes, start=1):
                box[8:14] = (address, rows, count, tid, n, barrier)
                posted = self._fns.post(box.ctypes.data)
                if posted == 0:  # no worker waits on this mailbox: start one
                    threading.Thread(target=_work, args=(self._fns, box, self._spin_ticks),
                                     name=f"sparsejit-worker-{tid}", daemon=True).start()
                elif posted < 0:
                    raise RuntimeError(f"worker {tid}'s mailbox is in use (state {box[0]})")
            driver(rows, count, 0, n, barrier)
            for box in boxes:
                self._fns.wait(box.ctypes.data)
            return True
        finally:
            self._in_use.release()

    def close(self) -> None:
        """Stop the workers (each finishes a call in progress first); later runs return False."""
        with self._in_use:
            self._closed = True
        self._finalizer()


def _work(fns: SimpleNamespace, box: np.ndarray, spin_ticks: int) -> int:
    """A worker thread: waits in native code for calls until it parks (`box` and `fns` stay
    referenced while it runs)."""
    return fns.loop(box.ctypes.data, spin_ticks)


def _stop(fns: SimpleNamespace, boxes: np.ndarray) -> None:
    """Ask every waiting worker to return, and wait until none waits."""
    for box in boxes:
        fns.stop(box.ctypes.data)
