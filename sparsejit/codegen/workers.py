"""Render the resident workers' module (templates/workers.ll.j2): the loop a worker thread waits
in between driver calls, and the caller's post / withdraw / wait / stop. The same for every model."""

from __future__ import annotations

from types import SimpleNamespace

from .render import render
from .schedule import SPINS_BEFORE_YIELD

LOOP, POST, WITHDRAW, WAIT, STOP, TICKS = ("sj_worker_loop", "sj_worker_post", "sj_worker_withdraw",
                                           "sj_worker_wait", "sj_worker_stop", "sj_worker_ticks")
# mailbox states (word 0)
IDLE, POSTED, BUSY, PARKED, EXIT, SLEEPING = 0, 1, 2, 3, 4, 5
STATES = (IDLE, POSTED, BUSY, PARKED, EXIT, SLEEPING)
# two 64-byte lines: the state and the futex timeout (words 2-3), then the call (words 8..13)
# and the addresses of sched_yield and syscall (words 14, 15)
MAILBOX_INTS = 16


def render_workers(target_name: str) -> str:
    k = SimpleNamespace(target=target_name, loop=LOOP, post=POST, withdraw=WITHDRAW, wait=WAIT,
                        stop=STOP, ticks=TICKS, IDLE=IDLE, POSTED=POSTED, BUSY=BUSY, PARKED=PARKED,
                        EXIT=EXIT, SLEEPING=SLEEPING, spins_before_yield=SPINS_BEFORE_YIELD)
    return render("workers.ll.j2", k=k)
