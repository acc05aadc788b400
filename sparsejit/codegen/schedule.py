"""Render the schedule driver: the one generated function that runs a table of kernel calls
(see templates/schedule.ll.j2). It is the same for every model of a target."""

from __future__ import annotations

from types import SimpleNamespace

from .render import KernelSource, render

SYMBOL = "sj_run_schedule"
ROW_INTS = 10  # i64s per table row: the call (8), thread 0's ticks over the row, padding
# The sync block of a call (templates/schedule.ll.j2): the done counter, sched_yield's address
# on the next 64-byte line, then a claim word per row (a bit per share, so at most 64 shares)
YIELD_WORD = 8
CLAIMS_WORD = 16
MAX_SHARES = 64

# Pauses (~40-140 cycles each) a waiting thread spins before it starts yielding its core: a few
# tens of microseconds, longer than a typical layer's imbalance, short next to a time slice.
SPINS_BEFORE_YIELD = 1 << 10


def render_schedule(target_name: str) -> str:
    """`void sj_run_schedule(ptr table, i64 rows, i64 tid, i64 nthreads, ptr sync)`."""
    k = SimpleNamespace(name=SYMBOL, target=target_name, spins_before_yield=SPINS_BEFORE_YIELD,
                        row=ROW_INTS, yield_word=YIELD_WORD, claims_word=CLAIMS_WORD)
    return render("schedule.ll.j2", k=k)


def schedule_source(target_name: str) -> KernelSource:
    """The driver's source for the object cache, keyed by the layout constants it is rendered with."""
    return KernelSource(lambda: render_schedule(target_name), "schedule", target_name,
                        (ROW_INTS, YIELD_WORD, CLAIMS_WORD, SPINS_BEFORE_YIELD))
