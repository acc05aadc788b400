"""Resident workers (runtime/workers.py): a driver call's other threads wait in native code
between calls; they park after a while and start again; a second caller falls back; close()
and a collected model stop them; a process exits with a worker spinning."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import sparsejit
from sparsejit import llvm, models, targets
from sparsejit.codegen.lrn import kernel_symbol, render_lrn
from sparsejit.codegen.schedule import SYMBOL, render_schedule
from sparsejit.codegen.workers import IDLE, PARKED
from sparsejit.graph.ir import Node
from sparsejit.kernels.layout import Layout
from sparsejit.kernels.lrn import LRNWorkload
from sparsejit.kernels.reference import run_node
from sparsejit.runtime.buffers import aligned_zeros
from sparsejit.runtime.schedule import DriverFn, RunTable, new_barrier
from sparsejit.runtime.steps import NativeRow
from sparsejit.runtime.workers import ResidentWorkers

from ..tolerances import assert_close

HOST = targets.get("host")
LAYOUT = Layout.padded(16, 3, 21, (1, 1, 1, 2), align=HOST.vector_width)
WORKLOAD = LRNWorkload(16, 3, 21, size=5, alpha=2.0, beta=0.75, bias=1.0)
LAYERS = 24


@pytest.fixture(scope="module")
def chain():
    """A driver and a table of LRN layers ping-ponging between two buffers, channels split
    across the threads (each layer reads what other threads wrote in the one before)."""
    lib = llvm.CodeLibrary(HOST)
    lib.add_object(llvm.compile_object(render_schedule(HOST.name), HOST, 2)[0])
    lrn = render_lrn("chain", WORKLOAD, LAYOUT, LAYOUT, HOST.vector_width, HOST.name)
    lib.add_object(llvm.compile_object(lrn, HOST, 2)[0])
    lib.finalize()
    return lib


def make_table(lib, threads: int, seed: int):
    fn = lib.address(kernel_symbol("chain", HOST.vector_width))
    x = np.random.default_rng(seed).standard_normal((1, 16, 3, 21)).astype(np.float32) * 3
    bufs = [aligned_zeros(LAYOUT.image_stride), aligned_zeros(LAYOUT.image_stride)]
    LAYOUT.write(bufs[0], x)
    rows = np.array([NativeRow(fn, bufs[i % 2].ctypes.data, bufs[1 - i % 2].ctypes.data, 0, 1, 16,
                               False, threads).as_ints(barrier_after=i + 1 < LAYERS)
                     for i in range(LAYERS)], np.int64)
    node = Node("LRN", ["x"], ["y"], {"size": 5, "alpha": 2.0, "beta": 0.75, "bias": 1.0})
    want = x
    for _ in range(LAYERS):
        want = run_node(node, [want])[0]
    return RunTable(rows, threads, new_barrier(), [f"l{i}" for i in range(LAYERS)]), bufs, want


def check(table, bufs, want, what):
    assert_close(np.array(LAYOUT.read(bufs[LAYERS % 2], 1)), want, what=what)
    assert table.barrier[0] == 0  # every barrier released


@pytest.mark.parametrize("threads", [2, 3])
def test_calls_run_on_the_workers_and_they_stay_between_calls(chain, threads):
    workers = ResidentWorkers(threads, HOST, spin_seconds=5.0)
    driver = DriverFn(chain.address(SYMBOL))
    try:
        for call in range(5):
            table, bufs, want = make_table(chain, threads, seed=call)
            assert workers.run(driver, table)
            check(table, bufs, want, f"{threads} threads, call {call}")
            assert (workers._boxes[:threads - 1, 0] == IDLE).all()  # waiting for the next
    finally:
        workers.close()
    assert (workers._boxes[:, 0] == PARKED).all()
    table, _, _ = make_table(chain, threads, seed=9)
    assert not workers.run(driver, table)  # closed: the caller falls back


def test_workers_park_and_start_again(chain):
    workers = ResidentWorkers(2, HOST, spin_seconds=1e-3)
    driver = DriverFn(chain.address(SYMBOL))
    try:
        for call in range(3):
            table, bufs, want = make_table(chain, 2, seed=call)
            assert workers.run(driver, table)
            check(table, bufs, want, f"call {call}")
            deadline = time.monotonic() + 10
            while workers._boxes[0, 0] != PARKED and time.monotonic() < deadline:
                time.sleep(1e-3)
            assert workers._boxes[0, 0] == PARKED, "the worker never parked"
    finally:
        workers.close()


def test_a_second_caller_falls_back_while_the_workers_are_in_use(chain):
    workers = ResidentWorkers(2, HOST)
    driver = DriverFn(chain.address(SYMBOL))
    try:
        assert workers._in_use.acquire()  # another call holds them
        table, _, _ = make_table(chain, 2, seed=0)
        assert not workers.run(driver, table)
        workers._in_use.release()
        table, bufs, want = make_table(chain, 2, seed=1)
        assert workers.run(driver, table)
        check(table, bufs, want, "after the other call")
    finally:
        workers.close()


def test_a_model_on_two_threads_uses_them_and_close_stops_them():
    cm = sparsejit.compile(models.build("tiny", batch=1), threads=2)
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = sparsejit.compile(models.build("tiny", batch=1), threads=1)(x)
    for _ in range(3):
        assert_close(cm(x), want, what="tiny on two threads")
    boxes = cm._workers._boxes
    assert boxes[0, 0] in (IDLE, PARKED) and boxes[0, 8] != 0  # a call went through them
    cm.close()
    assert (boxes[:, 0] == PARKED).all()
    assert_close(cm(x), want, what="tiny after close (the calling thread alone)")


def test_a_collected_model_stops_its_workers():
    cm = sparsejit.compile(models.build("tiny", batch=1), threads=2)
    x = np.zeros((1, 3, 32, 32), np.float32)
    cm(x)
    boxes = cm._workers._boxes
    del cm
    import gc

    gc.collect()
    assert (boxes[:, 0] == PARKED).all()


def test_a_process_exits_with_a_worker_waiting():
    """A worker spinning for its next call does not keep the interpreter from exiting."""
    code = textwrap.dedent("""
        import time, numpy as np, sparsejit
        from sparsejit import models
        import sparsejit.runtime.workers as w
        w.SPIN_SECONDS = 30.0
        cm = sparsejit.compile(models.build("tiny", batch=1), threads=2)
        cm(np.zeros((1, 3, 32, 32), np.float32))
        print("ran", flush=True)
    """)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ran" in out.stdout, out.stderr
    assert time.monotonic() - start < 30, "the process waited for the worker's spin to end"


def test_many_python_threads_share_the_workers():
    """Four Python threads calling one model: one at a time uses the workers, the others fall
    back to the pool; every answer right."""
    cm = sparsejit.compile(models.build("tiny", batch=1), threads=2)
    single = sparsejit.compile(models.build("tiny", batch=1), threads=1)
    xs = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)
          for i in range(4)]
    wants = [single(x) for x in xs]
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            for _ in range(10):
                assert_close(cm(xs[i]), wants[i], what=f"thread {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    cm.close()
