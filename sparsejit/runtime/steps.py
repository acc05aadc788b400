"""The steps a compiled model runs, in schedule order, and the arena of buffers they share.

A step reads and writes tensors through an `Arena`: planned 4-D activations live in aligned
slot buffers (their interiors are NCHW views), other float tensors in contiguous arena arrays,
views (Flatten) in their base's buffer, anything else in the call's environment. A kernel step
describes its call as a `NativeRow` for the schedule driver (runtime/schedule.py); `run` makes
the same call from Python through ctypes (the autotuner's and tests' way). Reference steps run
numpy.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.ir import Node
from ..kernels.layout import Layout
from .buffers import aligned_zeros

# (in, out, residual or NULL, n0, n1, b0, b1)
ConvFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)
GemmFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


@dataclass
class Arena:
    """The buffers of one in-flight call: slot arrays, tensor views, private scratch."""

    batch: int
    slots: list[np.ndarray]
    slot_of: dict[str, int]
    layouts: dict[str, Layout]
    scratch: dict[str, np.ndarray] = field(default_factory=dict)
    views: dict[str, np.ndarray] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # floats into its slot (a Concat's part)
    tables: dict[tuple[int, int], Any] = field(default_factory=dict)  # (schedule index, threads) -> table

    @classmethod
    def allocate(cls, batch: int, sizes: list[int], slot_of: dict[str, int],
                 layouts: dict[str, Layout], images: dict[str, int],
                 scratch_sizes: dict[str, int], flat: dict[str, tuple[int, ...]],
                 aliases: dict[str, tuple[str, tuple[int, ...]]],
                 offsets: dict[str, int] | None = None) -> Arena:
        """`images[t]` is tensor t's dim 0: the batch, except after ops that change dim 0.
        `flat` tensors (not 4-D activations) get contiguous buffers of their shape; `aliases`
        are views (tensor -> (base tensor, shape)) of a flat tensor or of a plain 4-D one;
        `offsets` place tensors inside their slot (a Concat's inputs written in place)."""
        arena = cls(batch, [aligned_zeros(s) for s in sizes], slot_of, layouts,
                    offsets=dict(offsets or {}))
        arena.scratch = {k: aligned_zeros(s) for k, s in scratch_sizes.items()}
        arena.views = {t: layouts[t].interior(arena.buffer(t), images[t]) for t in slot_of}
        for t, shape in flat.items():
            arena.views[t] = aligned_zeros(int(np.prod(shape))).reshape(shape)
        for t, (base, shape) in aliases.items():
            size = int(np.prod(shape))
            data = arena.slots[slot_of[base]][:size] if base in slot_of else arena.views[base].reshape(-1)
            arena.views[t] = data.reshape(shape)  # a view: base is contiguous (lowering checked)
        return arena

    def buffer(self, name: str) -> np.ndarray:
        """The buffer of a planned tensor, a step's scratch buffer by its name, or a flat
        tensor's (contiguous) array."""
        scratch = self.scratch.get(name)
        if scratch is not None:
            return scratch
        slot = self.slot_of.get(name)
        if slot is None:
            return self.views[name]
        return self.slots[slot][self.offsets.get(name, 0):]


@dataclass(frozen=True)
class NativeRow:
    """One kernel call as the schedule driver makes it: fn(a, b, c, n0, n1, u0, u1) over
    `images` images and `units` work units, split across threads by units (or by images)."""

    fn: int  # the kernel's address
    a: int
    b: int
    c: int
    images: int
    units: int
    by_image: bool
    threads: int  # how many threads take a share
    per_image: bool = False  # each image is computed alone: may run image by image (a segment)

    def as_ints(self, wait_after: bool) -> list[int]:
        """The driver's table row (codegen/schedule.py ROW_INTS long; ticks start at 0)."""
        return [self.fn, self.a, self.b, self.c, self.images, self.units,
                int(self.by_image) | (2 if wait_after else 0), self.threads, 0, 0]


class Step:
    """One unit of the schedule. `layer` names it in reports and errors."""

    layer: str

    def run(self, env: dict[str, np.ndarray], arena: Arena, pool: ThreadPoolExecutor | None,
            threads: int) -> None:
        raise NotImplementedError

    @property
    def native(self) -> bool:
        """True when the step is one kernel call the schedule driver can make."""
        return False

    def native_row(self, arena: Arena, threads: int) -> NativeRow | None:
        """The step's kernel call with this arena's addresses; None: nothing to call."""
        raise NotImplementedError(f"step {self.layer} runs in Python")

    def writes(self) -> list[str]:
        """The tensors the step defines."""
        raise NotImplementedError


def split_range(total: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, total))
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


# Handing work to a Python thread costs ~0.1-0.3 ms of wake-up latency here, so a kernel is
# split only when each share is well above that.
MIN_PARALLEL_FLOPS = 20_000_000


# In the schedule driver threads wait for each layer in spin loops (microseconds, not a Python
# hand-off): splitting pays from much smaller layers. Measured at 2 threads (batch 1): a 20 M threshold
# scaled CaffeNet / ResNet-50 / GoogLeNet 1.20 / 1.06 / 1.16x, 1 M 1.74 / 1.69 / 1.39x,
# 250 k 1.75 / 1.69 / 1.60x.
NATIVE_MIN_PARALLEL_FLOPS = 250_000


def useful_threads(threads: int, flops: int, units: int, min_flops: int | None = None) -> int:
    """How many of `threads` a job of `flops` over `units` work units is worth splitting into,
    each share at least `min_flops` (default MIN_PARALLEL_FLOPS)."""
    per_thread = MIN_PARALLEL_FLOPS if min_flops is None else min_flops
    return max(1, min(threads, flops // max(1, per_thread), units))


def parallel(pool: ThreadPoolExecutor | None, threads: int, work: Callable[[int, int], None],
             total: int, flops: int = MIN_PARALLEL_FLOPS * 8) -> None:
    """Run work(begin, end) over [0, total) in up to `threads` contiguous chunks, the first on
    the calling thread; small jobs (under MIN_PARALLEL_FLOPS per extra thread) run inline."""
    chunks = split_range(total, useful_threads(threads, flops, total))
    if pool is None or len(chunks) <= 1:
        for begin, end in chunks:
            work(begin, end)
        return
    futures = [pool.submit(work, b, e) for b, e in chunks[1:]]
    work(*chunks[0])
    for future in futures:
        future.result()


@dataclass
class WriteInput(Step):
    """Copy (and convert) a graph input into its padded buffer."""

    layer: str
    tensor: str
    planned: bool

    def writes(self):
        return [self.tensor]

    def run(self, env, arena, pool, threads):
        x = env[self.tensor]
        if self.planned:
            arena.views[self.tensor][...] = x
            env[self.tensor] = arena.views[self.tensor]


@dataclass
class ActivationKernel(Step):
    """A generated kernel from one planned 4-D activation buffer to another (a direct conv, a
    pool, LRN, a repack), split across threads by channel blocks or images. Input and output
    name tensors or scratch buffers (see Arena.buffer)."""

    layer: str
    input: str
    output: str
    fn: Callable
    units: int  # of the kernel's (b0, b1) range: channel blocks, or a conv's tiles (plan.split)
    images: int  # the input's dim 0
    flops: int = MIN_PARALLEL_FLOPS * 8  # nonzero flops of one call: decides whether to split
    residual: str | None = None  # a fused Add's other operand, added in the epilogue
    # the kernel reads each residual element before it first writes the same output element
    # (a table plan's passes start from it): the output may take the residual's buffer
    residual_in_place: bool = False
    address: int = 0  # of fn
    into_scratch: bool = False  # output is a private scratch buffer (a strided conv's packed input)

    def writes(self):
        return [] if self.into_scratch else [self.output]

    @property
    def native(self):
        return True

    def _by_image(self, threads: int) -> bool:
        return self.units < threads and self.images > 1

    def native_row(self, arena, threads):
        res = arena.buffer(self.residual).ctypes.data if self.residual else 0
        by_image = self._by_image(threads)
        units = self.images if by_image else self.units
        return NativeRow(self.address, arena.buffer(self.input).ctypes.data,
                         arena.buffer(self.output).ctypes.data, res, self.images, self.units,
                         by_image, useful_threads(threads, self.flops, units, NATIVE_MIN_PARALLEL_FLOPS),
                         per_image=self.images > 1)

    def run(self, env, arena, pool, threads):
        src, dst = arena.buffer(self.input), arena.buffer(self.output)
        n = self.images
        in_ptr, out_ptr = src.ctypes.data, dst.ctypes.data
        res = arena.buffer(self.residual).ctypes.data if self.residual else None
        if not self._by_image(threads):
            parallel(pool, threads, lambda b0, b1: self.fn(in_ptr, out_ptr, res, 0, n, b0, b1),
                     self.units, self.flops)
        else:
            parallel(pool, threads,
                     lambda n0, n1: self.fn(in_ptr, out_ptr, res, n0, n1, 0, self.units),
                     n, self.flops)
        if not self.into_scratch:
            env[self.output] = arena.views[self.output]


@dataclass
class FlatKernel(Step):
    """A generated kernel between flat arena tensors: an FC layer (dense over packed weights,
    or pruned with its table baked in) X[N][C] -> Y[N][M], or a softmax over rows; split across
    threads by `units` (tiles of output features, output features, or rows)."""

    layer: str
    input: str
    output: str
    fn: Callable
    weights: np.ndarray | None  # the dense kernel's packed weights (its third argument)
    units: int
    images: int  # rows of X, the kernel's n range (a softmax takes its rows as units instead)
    flops: int = MIN_PARALLEL_FLOPS * 8
    address: int = 0

    def writes(self):
        return [self.output]

    @property
    def native(self):
        return True

    def _pointers(self, arena: Arena) -> tuple[int, int, int]:
        w = 0 if self.weights is None else self.weights.ctypes.data
        return arena.views[self.input].ctypes.data, arena.views[self.output].ctypes.data, w

    def native_row(self, arena, threads):
        x, y, w = self._pointers(arena)
        return NativeRow(self.address, x, y, w, self.images, self.units, False,
                         useful_threads(threads, self.flops, self.units, NATIVE_MIN_PARALLEL_FLOPS))

    def run(self, env, arena, pool, threads):
        x, y, w = self._pointers(arena)
        n = self.images
        parallel(pool, threads, lambda u0, u1: self.fn(x, y, w or None, 0, n, u0, u1), self.units,
                 self.flops)
        env[self.output] = arena.views[self.output]


@dataclass
class Alias(Step):
    """A step with nothing to run whose output is already in its buffer: a Flatten/Reshape of a
    contiguous arena tensor (a view of the same buffer), or a Concat whose inputs were all
    written into its channels."""

    layer: str
    output: str

    def writes(self):
        return [self.output]

    @property
    def native(self):
        return True

    def native_row(self, arena, threads):
        return None  # nothing to run

    def run(self, env, arena, pool, threads):
        env[self.output] = arena.views[self.output]


@dataclass
class Reference(Step):
    """An op run by its numpy reference (pools, LRN, concat, softmax, ...)."""

    layer: str
    node: Node
    consts: dict[str, np.ndarray]
    run_node: Callable
    planned_outputs: frozenset[str]

    def writes(self):
        return list(self.node.outputs)

    def run(self, env, arena, pool, threads):
        args = [None if not t else self.consts[t] if t in self.consts else env[t]
                for t in self.node.inputs]
        results = self.run_node(self.node, args)
        for name, value in zip(self.node.outputs, results):
            if name in self.planned_outputs:
                arena.views[name][...] = value
                env[name] = arena.views[name]
            else:
                env[name] = value

