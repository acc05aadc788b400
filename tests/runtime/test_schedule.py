"""The schedule driver: runs of native steps, the table of kernel calls, threads claiming shares
and waiting for each layer to be done, a thread late or missing."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen.lrn import kernel_symbol, render_lrn
from sparsejit.codegen.schedule import CLAIMS_WORD, SYMBOL, render_schedule
from sparsejit.graph.ir import Node
from sparsejit.kernels.layout import Layout
from sparsejit.kernels.lrn import LRNWorkload
from sparsejit.kernels.reference import run_node
from sparsejit.runtime.buffers import aligned_zeros
from sparsejit.runtime.schedule import (SEGMENT_FLAG, DriverFn, NativeRun, build_table, group,
                                       new_sync, segments)
from sparsejit.runtime.steps import NativeRow, Step

from ..tolerances import assert_close


@dataclass
class FakeStep(Step):
    layer: str
    is_native: bool

    @property
    def native(self):
        return self.is_native


def test_runs_of_native_steps_are_grouped():
    steps = [FakeStep("in", False), FakeStep("a", True), FakeStep("b", True), FakeStep("py", False),
             FakeStep("c", True)]
    grouped = group(steps)
    assert [type(g).__name__ for g in grouped] == ["FakeStep", "NativeRun", "FakeStep", "NativeRun"]
    assert [s.layer for s in grouped[1].steps] == ["a", "b"] and grouped[3].steps == (steps[4],)


def test_rows_flag_the_barriers_and_image_splits():
    row = NativeRow(1, 2, 3, 4, images=5, units=6, by_image=True, threads=2)
    assert row.as_ints(wait_after=True) == [1, 2, 3, 4, 5, 6, 3, 2, 0, 0]  # ticks, padding
    assert row.as_ints(wait_after=False)[6] == 1


HOST = targets.get("host")
SHAPE = (1, 16, 3, 21)
LAYOUT = Layout.padded(16, 3, 21, (1, 1, 1, 2), align=HOST.vector_width)
WORKLOAD = LRNWorkload(16, 3, 21, size=5, alpha=2.0, beta=0.75, bias=1.0)


@pytest.fixture(scope="module")
def library():
    lib = llvm.CodeLibrary(HOST)
    lib.add_object(llvm.compile_object(render_schedule(HOST.name), HOST, 2)[0])
    lrn = render_lrn("chain", WORKLOAD, LAYOUT, LAYOUT, HOST.vector_width, HOST.name)
    lib.add_object(llvm.compile_object(lrn, HOST, 2)[0])
    lib.finalize()
    return lib


def chain_rows(library, shares: int, layers: int, seed: int = 0):
    """`layers` LRN rows ping-ponging between two buffers, channels cut into `shares` shares:
    each layer reads channels its neighbours' shares wrote in the layer before, so a layer
    started before the one before it is done, or a share not run, gives wrong numbers."""
    fn = library.address(kernel_symbol("chain", HOST.vector_width))
    x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32) * 3
    bufs = [aligned_zeros(LAYOUT.image_stride), aligned_zeros(LAYOUT.image_stride)]
    LAYOUT.write(bufs[0], x)
    rows = np.array([NativeRow(fn, bufs[i % 2].ctypes.data, bufs[1 - i % 2].ctypes.data, 0, 1, 16,
                               False, shares).as_ints(wait_after=i + 1 < layers)
                     for i in range(layers)], np.int64)
    node = Node("LRN", ["x"], ["y"], {"size": 5, "alpha": 2.0, "beta": 0.75, "bias": 1.0})
    want = x
    for _ in range(layers):
        want = run_node(node, [want])[0]
    return rows, bufs, want


def run_threads(driver, rows, sync, tids, threads, late: dict[int, float] | None = None):
    """Call the driver on thread 0 (this one) and on a thread per other id in `tids`, each of
    those `late[tid]` seconds late; returns once all have returned."""
    def call(tid: int) -> None:
        time.sleep((late or {}).get(tid, 0.0))
        driver(rows.ctypes.data, len(rows), tid, threads, sync.ctypes.data)

    others = [threading.Thread(target=call, args=(t,)) for t in tids if t != 0]
    for w in others:
        w.start()
    call(0)
    for w in others:
        w.join(timeout=30)
        assert not w.is_alive(), "a thread is stuck waiting"


def check_done(rows, sync, shares: int) -> None:
    """Every share of every row claimed once and counted once."""
    assert sync[0] == shares * len(rows), "a share ran twice or was not counted"
    assert (sync[CLAIMS_WORD:CLAIMS_WORD + len(rows)] == (1 << shares) - 1).all()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_chain_of_layers_across_threads_waits_for_each_layer(library, threads):
    driver = DriverFn(library.address(SYMBOL))
    layers = 40
    rows, bufs, want = chain_rows(library, threads, layers)
    sync = new_sync(layers)
    run_threads(driver, rows, sync, range(threads), threads)
    assert_close(np.array(LAYOUT.read(bufs[layers % 2], 1)), want, what=f"{threads} threads")
    check_done(rows, sync, threads)
    assert (rows[:, 8] > 0).all()  # thread 0 timed every row


@pytest.mark.parametrize("threads, tids, late", [
    (2, [0], {}),  # the worker never comes: the caller runs every share
    (3, [0, 2], {}),  # one of two workers never comes
    (2, [0, 1], {1: 0.2}),  # the worker comes after the caller has run the whole table
    (3, [0, 1, 2], {0: 0.05, 2: 0.1}),  # the caller itself late, then another
])
def test_threads_that_come_late_or_never_cost_nothing_but_their_shares(library, threads, tids, late):
    driver = DriverFn(library.address(SYMBOL))
    layers = 30
    rows, bufs, want = chain_rows(library, threads, layers, seed=threads)
    sync = new_sync(layers)
    run_threads(driver, rows, sync, tids, threads, late)
    assert_close(np.array(LAYOUT.read(bufs[layers % 2], 1)), want, what=f"threads {tids} late {late}")
    check_done(rows, sync, threads)


def test_a_model_runs_its_layers_in_few_driver_calls():
    import sparsejit
    from sparsejit import models

    cm = sparsejit.compile(models.build("tiny", batch=1), threads=1)
    runs = [item for item in cm.program().schedule if isinstance(item, NativeRun)]
    assert sum(len(r.steps) for r in runs) >= 8


def _row(layer: str, images: int, per_image: bool = True, threads: int = 1):
    return layer, NativeRow(1, 2, 3, 4, images, 6, False, threads, per_image=per_image)


def test_consecutive_per_image_rows_become_segments():
    calls = [_row("a", 4), _row("b", 4), _row("fc", 4, per_image=False), _row("c", 4),
             _row("d", 1), _row("e", 4), _row("f", 4), _row("g", 4)]
    items = segments(calls, threads=2)
    kinds = [item.layers if hasattr(item, "rows") else item[0] for item in items]
    assert kinds == [["a", "b"], "fc", "c", "d", ["e", "f", "g"]]
    assert items[0].threads == 2 and items[0].images == 4
    # fewer images than threads: rows stay split by units
    assert all(not hasattr(item, "rows") for item in segments(calls[:2], threads=8))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("images", [3, 5])
def test_a_segment_runs_every_image_through_every_layer(library, threads, images):
    """A segment header row then 12 LRN rows ping-ponging between two buffers of `images`
    images: a share of the header's images is run through all rows (no wait inside), the tail
    waits for the whole segment."""
    driver = DriverFn(library.address(SYMBOL))
    fn = library.address(kernel_symbol("chain", HOST.vector_width))
    x = np.random.default_rng(images).standard_normal((images, *SHAPE[1:])).astype(np.float32) * 3
    bufs = [aligned_zeros(images * LAYOUT.image_stride), aligned_zeros(images * LAYOUT.image_stride)]
    LAYOUT.write(bufs[0], x)
    layers = 12
    header = [0, 0, 0, 0, images, layers, SEGMENT_FLAG | 2, threads, 0, 0]
    body = [NativeRow(fn, bufs[i % 2].ctypes.data, bufs[1 - i % 2].ctypes.data, 0, images, 16,
                      False, threads, per_image=True).as_ints(wait_after=False)
            for i in range(layers)]
    tail = NativeRow(fn, bufs[0].ctypes.data, bufs[1].ctypes.data, 0, images, 16, False,
                     threads).as_ints(wait_after=False)  # after the segment's barrier
    rows = np.array([header, *body, tail], np.int64)
    sync = new_sync(len(rows))
    run_threads(driver, rows, sync, range(threads), threads)
    node = Node("LRN", ["x"], ["y"], {"size": 5, "alpha": 2.0, "beta": 0.75, "bias": 1.0})
    want = x
    for _ in range(layers + 1):
        want = run_node(node, [want])[0]
    assert_close(np.array(LAYOUT.read(bufs[1], images)), want, what=f"{threads} threads")
    # the header's shares and the tail's; the segment's rows are run inside the header's shares
    assert sync[0] == 2 * threads
    assert rows[-1, 8] > 0
    if threads == 1:  # thread 0 timed its rows (on more threads, others may take every share)
        assert (rows[1:, 8] > 0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_batch_runs_image_major_with_the_same_answer(threads):
    import sparsejit
    from sparsejit import models

    model = models.build("tiny", batch=4)
    cm = sparsejit.compile(model, threads=threads)
    x = np.random.default_rng(1).standard_normal(cm.input_shape(cm.input_names[0])).astype(np.float32)
    got = cm(x)
    prog = cm.program()
    arena = prog.new_arena()
    tables = [build_table(item, arena, threads) for item in prog.schedule if isinstance(item, NativeRun)]
    assert any((t.rows[:, 6] & SEGMENT_FLAG).any() for t in tables), "no image-major segment"
    single = sparsejit.compile(models.build("tiny", batch=1), threads=threads)
    per_image = np.concatenate([single(x[i:i + 1]) for i in range(4)])
    assert_close(got, per_image, what="batch of 4 against images one at a time")
