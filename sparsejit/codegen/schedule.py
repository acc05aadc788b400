"""Render the schedule driver: the one generated function that runs a table of kernel calls
(see templates/schedule.ll.j2). It is the same for every model of a target."""

from __future__ import annotations

from types import SimpleNamespace

from .render import render

SYMBOL = "sj_run_schedule"
ROW_INTS = 10  # i64s per table row: the call (8), thread 0's ticks over the row, padding

# Pauses (~40-140 cycles each) a waiting thread spins before it starts yielding its core: a few
# tens of microseconds, longer than a typical layer's imbalance, short next to a time slice.
SPINS_BEFORE_YIELD = 1 << 10


def render_schedule(target_name: str) -> str:
    """`void sj_run_schedule(ptr table, i64 rows, i64 tid, i64 nthreads, ptr barrier)`."""
    k = SimpleNamespace(name=SYMBOL, target=target_name, spins_before_yield=SPINS_BEFORE_YIELD,
                        row=ROW_INTS)
    return render("schedule.ll.j2", k=k)
