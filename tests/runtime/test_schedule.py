"""The schedule driver: runs of native steps, the table of kernel calls, threads and barriers."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from sparsejit import llvm, targets
from sparsejit.codegen.lrn import kernel_symbol, render_lrn
from sparsejit.codegen.schedule import SYMBOL, render_schedule
from sparsejit.graph.ir import Node
from sparsejit.kernels.layout import Layout
from sparsejit.kernels.lrn import LRNWorkload
from sparsejit.kernels.reference import run_node
from sparsejit.runtime.buffers import aligned_zeros
from sparsejit.runtime.schedule import (SEGMENT_FLAG, DriverFn, NativeRun, build_table, group,
                                       new_barrier, segments)
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
    assert row.as_ints(barrier_after=True) == [1, 2, 3, 4, 5, 6, 3, 2, 0, 0]  # ticks, padding
    assert row.as_ints(barrier_after=False)[6] == 1


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


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_chain_of_layers_across_threads_meets_at_barriers(library, threads):
    """40 LRN layers ping-ponging between two buffers, channels split across threads: each
    layer reads channels its neighbours' shares wrote in the layer before, so a missing or
    broken barrier gives wrong numbers (and a broken barrier release hangs: the timeout)."""
    driver = DriverFn(library.address(SYMBOL))
    fn = library.address(kernel_symbol("chain", HOST.vector_width))
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * 3
    bufs = [aligned_zeros(LAYOUT.image_stride), aligned_zeros(LAYOUT.image_stride)]
    LAYOUT.write(bufs[0], x)
    layers = 40
    rows = np.array([NativeRow(fn, bufs[i % 2].ctypes.data, bufs[1 - i % 2].ctypes.data, 0, 1, 16,
                               False, threads).as_ints(barrier_after=i + 1 < layers)
                     for i in range(layers)], np.int64)
    barrier = new_barrier()
    workers = [threading.Thread(target=driver, args=(rows.ctypes.data, layers, t, threads,
                                                     barrier.ctypes.data)) for t in range(1, threads)]
    for w in workers:
        w.start()
    driver(rows.ctypes.data, layers, 0, threads, barrier.ctypes.data)
    for w in workers:
        w.join(timeout=30)
        assert not w.is_alive(), "a thread is stuck at a barrier"
    node = Node("LRN", ["x"], ["y"], {"size": 5, "alpha": 2.0, "beta": 0.75, "bias": 1.0})
    want = x
    for _ in range(layers):
        want = run_node(node, [want])[0]
    assert_close(np.array(LAYOUT.read(bufs[layers % 2], 1)), want, what=f"{threads} threads")
    assert barrier[0] == 0  # every barrier released
    assert (rows[:, 8] > 0).all()  # thread 0 timed every row


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
    images: each thread runs its images through all rows (no barrier inside), the barrier after
    the segment releases; thread 0 timed its rows, not the header."""
    driver = DriverFn(library.address(SYMBOL))
    fn = library.address(kernel_symbol("chain", HOST.vector_width))
    x = np.random.default_rng(images).standard_normal((images, *SHAPE[1:])).astype(np.float32) * 3
    bufs = [aligned_zeros(images * LAYOUT.image_stride), aligned_zeros(images * LAYOUT.image_stride)]
    LAYOUT.write(bufs[0], x)
    layers = 12
    header = [0, 0, 0, 0, images, layers, SEGMENT_FLAG | 2, threads, 0, 0]
    body = [NativeRow(fn, bufs[i % 2].ctypes.data, bufs[1 - i % 2].ctypes.data, 0, images, 16,
                      False, threads, per_image=True).as_ints(barrier_after=False)
            for i in range(layers)]
    tail = NativeRow(fn, bufs[0].ctypes.data, bufs[1].ctypes.data, 0, images, 16, False,
                     threads).as_ints(barrier_after=False)  # after the segment's barrier
    rows = np.array([header, *body, tail], np.int64)
    barrier = new_barrier()
    workers = [threading.Thread(target=driver, args=(rows.ctypes.data, len(rows), t, threads,
                                                     barrier.ctypes.data)) for t in range(1, threads)]
    for w in workers:
        w.start()
    driver(rows.ctypes.data, len(rows), 0, threads, barrier.ctypes.data)
    for w in workers:
        w.join(timeout=30)
        assert not w.is_alive(), "a thread is stuck at a barrier"
    node = Node("LRN", ["x"], ["y"], {"size": 5, "alpha": 2.0, "beta": 0.75, "bias": 1.0})
    want = x
    for _ in range(layers + 1):
        want = run_node(node, [want])[0]
    assert_close(np.array(LAYOUT.read(bufs[1], images)), want, what=f"{threads} threads")
    assert barrier[0] == 0
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
