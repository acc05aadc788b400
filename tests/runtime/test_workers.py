"""Resident workers (runtime/workers.py): a driver call's other threads wait in native code
between calls; they sleep after a while and the next call wakes the same thread; they park
later and start again; a call whose worker never comes runs on the caller; a second caller
falls back; close() and a collected model stop them, spinning or asleep; a process exits with
a worker spinning or asleep; a forked child runs a model without its parent's workers."""

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
from sparsejit.codegen.workers import IDLE, PARKED, SLEEPING
from sparsejit.graph.ir import Node
from sparsejit.kernels.layout import Layout
from sparsejit.kernels.lrn import LRNWorkload
from sparsejit.kernels.reference import run_node
from sparsejit.runtime.buffers import aligned_zeros
from sparsejit.runtime.schedule import DriverFn, RunTable, new_sync
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
                               False, threads).as_ints(wait_after=i + 1 < LAYERS)
                     for i in range(LAYERS)], np.int64)
    node = Node("LRN", ["x"], ["y"], {"size": 5, "alpha": 2.0, "beta": 0.75, "bias": 1.0})
    want = x
    for _ in range(LAYERS):
        want = run_node(node, [want])[0]
    return RunTable(rows, threads, new_sync(LAYERS), [f"l{i}" for i in range(LAYERS)]), bufs, want


def check(table, bufs, want, what):
    assert_close(np.array(LAYOUT.read(bufs[LAYERS % 2], 1)), want, what=what)
    assert table.sync[0] == LAYERS * table.threads  # every share run once


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


def worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sparsejit-worker-")}


def wait_for_state(workers: ResidentWorkers, state: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while workers._boxes[0, 0] != state and time.monotonic() < deadline:
        time.sleep(1e-3)
    assert workers._boxes[0, 0] == state, f"the worker never {what} (state {workers._boxes[0, 0]})"


def test_workers_sleep_and_the_next_call_wakes_the_same_thread(chain):
    before = worker_threads()
    workers = ResidentWorkers(2, HOST, spin_seconds=1e-3, sleep_seconds=60.0)
    driver = DriverFn(chain.address(SYMBOL))
    try:
        started = None
        for call in range(3):
            table, bufs, want = make_table(chain, 2, seed=call)
            start = time.monotonic()
            assert workers.run(driver, table)
            # not woken, the sleeper would take the call only at its timeout, a minute later
            assert time.monotonic() - start < 10, "the call did not wake the sleeping worker"
            check(table, bufs, want, f"call {call}")
            wait_for_state(workers, SLEEPING, "went to sleep")
            threads = worker_threads() - before
            assert len(threads) == 1, threads
            started = started or threads
            assert threads == started, "a new thread ran the call instead of the sleeping one"
    finally:
        workers.close()
    assert workers._boxes[0, 0] == PARKED  # close() woke the sleeper and it returned
    (thread,) = started
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("sleep_seconds", [0.0, 1e-3])
def test_workers_park_and_start_again(chain, sleep_seconds):
    """After spinning (and sleeping, when it does) a worker parks, its thread ends, and the next
    call starts another."""
    workers = ResidentWorkers(2, HOST, spin_seconds=1e-3, sleep_seconds=sleep_seconds)
    driver = DriverFn(chain.address(SYMBOL))
    try:
        for call in range(3):
            table, bufs, want = make_table(chain, 2, seed=call)
            assert workers.run(driver, table)
            check(table, bufs, want, f"call {call}")
            wait_for_state(workers, PARKED, "parked")
    finally:
        workers.close()


@pytest.mark.parametrize("state", [IDLE, SLEEPING])
def test_a_call_whose_worker_never_comes_runs_on_the_caller_and_withdraws_the_post(chain, state):
    """A mailbox that says a worker spins (or sleeps) with no thread behind it: a worker whose
    core is slow to wake. The caller runs every share itself, takes its post back and returns."""
    workers = ResidentWorkers(2, HOST)
    driver = DriverFn(chain.address(SYMBOL))
    workers._boxes[0, 0] = state
    table, bufs, want = make_table(chain, 2, seed=7)
    result: list[bool] = []
    caller = threading.Thread(target=lambda: result.append(workers.run(driver, table)))
    caller.start()
    caller.join(30)
    try:
        assert not caller.is_alive(), "the caller waited for a worker that never came"
        assert result == [True]
        check(table, bufs, want, "the caller alone")
        assert workers._boxes[0, 0] == state  # the post withdrawn, the mailbox as it was
    finally:
        workers._boxes[0, 0] = PARKED  # no thread to stop
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
    assert boxes[0, 0] in (IDLE, SLEEPING) and boxes[0, 8] != 0  # a call went through them
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


@pytest.mark.parametrize("how", ["spinning", "asleep"])
def test_a_process_exits_with_a_worker_waiting(how):
    """A worker spinning for its next call, or asleep, does not keep the interpreter from
    exiting."""
    spin = "30.0" if how == "spinning" else "1e-3"
    code = textwrap.dedent(f"""
        import time, numpy as np, sparsejit
        from sparsejit import models
        import sparsejit.runtime.workers as w
        w.SPIN_SECONDS = {spin}
        w.SLEEP_SECONDS = 60.0
        cm = sparsejit.compile(models.build("tiny", batch=1), threads=2)
        cm(np.zeros((1, 3, 32, 32), np.float32))
        time.sleep(0.1)
        print("ran", int(cm._workers._boxes[0, 0]), flush=True)
    """)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and "ran" in out.stdout, out.stderr
    assert out.stdout.split()[-1] == str(IDLE if how == "spinning" else SLEEPING)
    assert time.monotonic() - start < 30, f"the process waited for the worker {how}"


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


def test_a_forked_child_runs_a_model_whose_workers_it_did_not_inherit():
    """fork() copies the mailboxes but not the worker threads: the child's calls find a mailbox
    that says a worker spins or sleeps, run every share themselves and withdraw the post."""
    import os
    import select
    import signal

    cm = sparsejit.compile(models.build("tiny", batch=1), threads=2)
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = cm(x)  # the parent's worker now spins, then sleeps
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: two calls, the answer down the pipe, no Python cleanup
        try:
            cm(x)
            os.write(write_end, cm(x).tobytes())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + 60
    while len(data) < want.nbytes and time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(read_end, want.nbytes) if ready else b""
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    if len(data) < want.nbytes:
        os.kill(pid, signal.SIGKILL)  # stuck waiting for a worker it does not have
    _, status = os.waitpid(pid, 0)
    assert status == 0 and len(data) == want.nbytes, "the child's call did not finish"
    assert_close(np.frombuffer(data, np.float32).reshape(want.shape), want, what="tiny in a child")
    cm.close()
