"""Resident workers: the threads that run a model's driver calls beside the caller, waiting in
native code between calls.

A driver call on N threads needs N - 1 more threads to call the driver with their ids. Handing
each call to a Python thread pool costs ~0.1 ms (a condition variable and the GIL each way: on
this project's 2-vCPU VM a submit-and-result round trip took 124-164 us), several percent of a
network's call at batch 1. Instead each worker, once started, waits for the next call in
`sj_worker_loop` (templates/workers.ll.j2): spinning on its mailbox for SPIN_SECONDS after each
call, then sleeping on a futex for SLEEP_SECONDS (the next call wakes it), then parking (its
thread ends; the next call starts another). A call posts into the mailboxes and runs the table
itself too (the driver lets any thread claim any share); when it is through, it withdraws each
post no worker has taken yet and waits for those that were. A call that finds the workers in
use by another Python thread's call falls back to the model's thread pool (runtime/schedule.py:
run_native). Worker threads are daemon threads: a process exits without waiting for one to
stop spinning or sleeping.

The workers' module is the same for every model; it is compiled (or loaded from the object
cache) once per process and never unloaded, since a parked worker's thread may still be
returning through it.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading
import time
import weakref
from types import SimpleNamespace

import numpy as np

from .. import llvm
from ..codegen.render import KernelSource
from ..codegen.schedule import SPINS_BEFORE_YIELD
from ..codegen.workers import (IDLE, LOOP, MAILBOX_INTS, PARKED, POST, SLEEPING, STATES, STOP,
                               TICKS, WAIT, WITHDRAW, render_workers)
from ..targets import Target
from .buffers import aligned_zeros
from .schedule import SCHED_YIELD, DriverFn, RunTable

# How long a worker spins after a call for the next one before it parks: a model called in a
# loop calls again well within it (its Python steps between calls take ~0.1-0.3 ms), and a
# parked worker costs one pool hand-off at the next call, no more.
SPIN_SECONDS = 2e-3
# How long a worker then sleeps in the kernel, woken by the next call, before its thread ends.
# Waking it spares the caller a new thread's start in Python (~0.1 ms, the caller waiting for
# it), and only a post to a waiting worker can be withdrawn when the caller has run the whole
# call first. (Sleeping alone, before the driver let threads claim shares, measured no faster
# after a pause than a new thread: the late worker still held up each layer.) A sleeping thread
# costs nothing but its stack.
SLEEP_SECONDS = 10.0

_Ptr = ctypes.c_void_p


def _syscall_address() -> int:
    """libc's syscall(), through which a worker sleeps on a futex; 0 (workers park instead of
    sleeping) where there is none or futexes are not Linux x86-64's."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return 0
    try:
        return ctypes.cast(ctypes.CDLL(None).syscall, ctypes.c_void_p).value or 0
    except (OSError, AttributeError):
        return 0


SYSCALL = _syscall_address()
_modules: dict[str, SimpleNamespace] = {}  # target name -> the loaded module's functions
_modules_lock = threading.Lock()


def _module(target: Target) -> SimpleNamespace:
    """The workers' functions for `target`, loaded once per process (the library kept forever)."""
    with _modules_lock:
        fns = _modules.get(target.name)
        if fns is None:
            source = KernelSource(lambda: render_workers(target.name), "workers", target.name,
                                  STATES, SPINS_BEFORE_YIELD)
            library = llvm.CodeLibrary(target)
            library.add_object(llvm.compile_source(source, target, 2)[0])
            library.finalize()
            fns = SimpleNamespace(
                library=library,
                loop=ctypes.CFUNCTYPE(ctypes.c_int64, _Ptr, ctypes.c_int64,
                                      ctypes.c_int64)(library.address(LOOP)),
                post=ctypes.CFUNCTYPE(ctypes.c_int64, _Ptr)(library.address(POST)),
                withdraw=ctypes.CFUNCTYPE(ctypes.c_int64, _Ptr,
                                          ctypes.c_int64)(library.address(WITHDRAW)),
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

    def __init__(self, threads: int, target: Target, spin_seconds: float | None = None,
                 sleep_seconds: float | None = None) -> None:
        self.threads = threads
        spin_seconds = SPIN_SECONDS if spin_seconds is None else spin_seconds
        sleep_seconds = SLEEP_SECONDS if sleep_seconds is None else sleep_seconds
        self._fns = _module(target)
        # one mailbox per worker, each two 64-byte lines: the state, then the call
        boxes = aligned_zeros(MAILBOX_INTS * 2 * max(1, threads - 1)).view(np.int64)
        self._boxes = boxes.reshape(-1, MAILBOX_INTS)
        self._boxes[:, 0] = PARKED
        self._boxes[:, 2] = int(sleep_seconds)  # the futex's timeout: seconds, nanoseconds
        self._boxes[:, 3] = int(sleep_seconds % 1 * 1e9)
        self._boxes[:, 14] = SCHED_YIELD
        self._boxes[:, 15] = SYSCALL if sleep_seconds > 0 else 0  # 0: park instead of sleeping
        self._spin_ticks = int(spin_seconds * self._fns.ticks_per_second)
        self._sleep_ticks = int(sleep_seconds * self._fns.ticks_per_second)
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
            n, rows, sync = table.threads, table.rows.ctypes.data, table.sync.ctypes.data
            count = len(table.rows)
            address = ctypes.cast(driver, _Ptr).value
            boxes = self._boxes[:n - 1]
            table.begin()
            posts = []
            for tid, box in enumerate(boxes, start=1):
                box[8:14] = (address, rows, count, tid, n, sync)
                posted = self._fns.post(box.ctypes.data)
                if posted == 0:  # no worker waits on this mailbox: start one
                    threading.Thread(target=_work, args=(self._fns, box, self._spin_ticks,
                                                         self._sleep_ticks),
                                     name=f"sparsejit-worker-{tid}", daemon=True).start()
                elif posted < 0:
                    raise RuntimeError(f"worker {tid}'s mailbox is in use (state {box[0]})")
                posts.append(posted)
            driver(rows, count, 0, n, sync)
            for box, posted in zip(boxes, posts):
                if posted > 0:  # a worker not yet started on the call never will: it is done
                    self._fns.withdraw(box.ctypes.data, IDLE if posted == 1 else SLEEPING)
                self._fns.wait(box.ctypes.data)
            return True
        finally:
            self._in_use.release()

    def close(self) -> None:
        """Stop the workers (each finishes a call in progress first); later runs return False."""
        with self._in_use:
            self._closed = True
        self._finalizer()


def _work(fns: SimpleNamespace, box: np.ndarray, spin_ticks: int, sleep_ticks: int) -> int:
    """A worker thread: waits in native code for calls until it parks (`box` and `fns` stay
    referenced while it runs)."""
    return fns.loop(box.ctypes.data, spin_ticks, sleep_ticks)


def _stop(fns: SimpleNamespace, boxes: np.ndarray) -> None:
    """Ask every waiting worker to return, and wait until none waits."""
    for box in boxes:
        fns.stop(box.ctypes.data)
