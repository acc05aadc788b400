"""How far apart two CPUs are: the time to hand a cache line from one to the other and back.

Two threads, pinned to two CPUs, pass a counter back and forth through one cache line (each
waits for the other's value, then writes the next); the median over batches of 1000 handoffs is
the one-way latency. On the 2-vCPU VM of sessions 8-17 it is either ~25-30 ns (the vCPUs share
an L3) or ~160-170 ns (they do not: the host moved one to another core complex), switching
every few seconds, and two-thread runs are 1.6x slower in the second mode (README,
Performance): the network benchmark prints it beside every two-thread row.

    python benchmarks/handoff.py            # CPUs 0 and 1, five probes
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import threading
import time

PINGPONG_IR = """
define void @pingpong(ptr %flag, i64 %first, i64 %end, i64 %role) nounwind {
entry:
  %any = icmp slt i64 %first, %end
  br i1 %any, label %step, label %exit

step:
  %i = phi i64 [ %first, %entry ], [ %i.next, %passed ]
  %twice = shl i64 %i, 1
  %odd = add i64 %twice, 1
  %even = add i64 %twice, 2
  ; role 0 writes 2i+1 and waits for 2i+2; role 1 waits for 2i+1 and writes 2i+2
  %leader = icmp eq i64 %role, 0
  %awaited = select i1 %leader, i64 %even, i64 %odd
  br i1 %leader, label %send.first, label %wait

send.first:
  store atomic i64 %odd, ptr %flag release, align 64
  br label %wait

wait:
  %seen = load atomic i64, ptr %flag acquire, align 64
  %arrived = icmp eq i64 %seen, %awaited
  br i1 %arrived, label %answer, label %wait

answer:
  br i1 %leader, label %passed, label %send.second

send.second:
  store atomic i64 %even, ptr %flag release, align 64
  br label %passed

passed:
  %i.next = add i64 %i, 1
  %more = icmp slt i64 %i.next, %end
  br i1 %more, label %step, label %exit

exit:
  ret void
}
"""

_PINGPONG = None


def _pingpong():
    """The compiled ping-pong (compiled once per process, by sparsejit's own LLVM layer)."""
    global _PINGPONG
    if _PINGPONG is None:
        from sparsejit import targets
        from sparsejit.llvm import CodeLibrary, compile_object

        host = targets.get("host")
        obj, _ = compile_object(PINGPONG_IR, host)
        library = CodeLibrary(host)
        library.add_object(obj)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_int64)(library.address("pingpong"))
        _PINGPONG = (library, fn)  # the library keeps the code mapped
    return _PINGPONG[1]


def handoff_ns(cpus: tuple[int, int] = (0, 1), batches: int = 100, batch: int = 1000) -> float:
    """Median one-way handoff time in ns between `cpus` over `batches` batches (neither thread
    is the caller's: its CPU affinity stays as it is). NaN when the CPUs are not both usable."""
    if not hasattr(os, "sched_setaffinity") or not set(cpus) <= os.sched_getaffinity(0):
        return float("nan")
    fn = _pingpong()
    flag = (ctypes.c_int64 * 16)()  # 128 bytes: one whole aligned line lies inside
    line = (ctypes.addressof(flag) + 63) // 64 * 64
    times: list[float] = []

    def follower() -> None:
        os.sched_setaffinity(0, {cpus[1]})
        fn(line, 0, batches * batch, 1)

    def leader() -> None:
        os.sched_setaffinity(0, {cpus[0]})
        for k in range(batches):
            start = time.perf_counter()
            fn(line, k * batch, (k + 1) * batch, 0)
            times.append((time.perf_counter() - start) / (2 * batch))

    threads = [threading.Thread(target=follower), threading.Thread(target=leader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statistics.median(times) * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", default="0,1", help="two CPUs (default 0,1)")
    ap.add_argument("--probes", type=int, default=5)
    args = ap.parse_args()
    a, b = (int(c) for c in args.cpus.split(","))
    for _ in range(args.probes):
        print(f"{handoff_ns((a, b)):.1f} ns one way, CPUs {a} and {b}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
