"""Buffer planning by liveness: slots reused after their tenant's last reader, or taken in place."""

from __future__ import annotations

import numpy as np

from sparsejit.runtime.buffers import ALIGN_BYTES, Lifetime, aligned_empty, plan_buffers


def test_aligned_empty_starts_on_a_cache_line():
    for floats in (1, 15, 17, 1000):
        assert aligned_empty(floats).ctypes.data % ALIGN_BYTES == 0
        assert aligned_empty(floats).shape == (floats,)


def test_a_slot_is_reused_only_after_its_last_reader_and_for_an_equal_key():
    slots, sizes = plan_buffers([
        Lifetime("a", "k", 10, 0, 1),
        Lifetime("b", "k", 20, 1, 2),  # a is read at step 1: b, written there, needs its own
        Lifetime("c", "k", 5, 2, 3),   # a is free after step 1
        Lifetime("d", "other", 5, 3, 4),  # a different layout never shares
    ])
    assert slots["a"] == slots["c"] != slots["b"]
    assert slots["d"] not in (slots["a"], slots["b"])
    assert sizes[slots["a"]] == 10 and sizes[slots["b"]] == 20


def test_an_output_takes_its_residuals_slot_at_the_residuals_last_read():
    lifetimes = [Lifetime("x", "k", 8, 0, 2), Lifetime("res", "k", 8, 1, 2),
                 Lifetime("y", "k", 12, 2, 3, in_place_of="res")]
    slots, sizes = plan_buffers(lifetimes)
    assert slots["y"] == slots["res"] != slots["x"] and sizes[slots["y"]] == 12
    # not when the residual is read again later, nor under another layout
    later = [lifetimes[0], Lifetime("res", "k", 8, 1, 3), lifetimes[2]]
    assert plan_buffers(later)[0]["y"] not in (plan_buffers(later)[0]["res"],)
    other = [lifetimes[0], lifetimes[1], Lifetime("y", "k2", 8, 2, 3, in_place_of="res")]
    slots, _ = plan_buffers(other)
    assert slots["y"] != slots["res"]


def test_in_place_prefers_the_residuals_slot_over_an_older_free_one():
    slots, _ = plan_buffers([Lifetime("old", "k", 8, 0, 0), Lifetime("res", "k", 8, 0, 1),
                             Lifetime("y", "k", 8, 1, 2, in_place_of="res")])
    assert slots["y"] == slots["res"]
    assert np.unique(list(slots.values())).size == 2
