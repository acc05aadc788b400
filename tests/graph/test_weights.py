"""Compacting pruned constants between bindings: exact round trip, only where it saves."""

from __future__ import annotations

import numpy as np

from sparsejit.graph.ir import Graph, Value
from sparsejit.graph.weights import MIN_ELEMENTS, compact_weights, restore_weights


def graph_with(consts: dict[str, np.ndarray], outputs=()) -> Graph:
    g = Graph()
    for name, c in consts.items():
        g.values[name] = Value(name, c.dtype, c.shape, c)
    g.outputs = list(outputs)
    return g


def test_round_trip_is_exact_and_keeps_nan_and_negative_zero():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32) * (rng.random((64, 32, 3, 3)) < 0.1)
    w[0, 0, 0, 0], w[1, 0, 0, 0] = np.nan, np.inf
    g = graph_with({"w": w})
    store = compact_weights(g)
    assert g.values["w"].const is None and store["w"].nbytes < w.nbytes / 3
    copy = graph_with({"w": np.zeros(1, np.float32)})
    restore_weights(copy, store)
    back = copy.values["w"].const
    assert back.dtype == w.dtype and back.shape == w.shape
    np.testing.assert_array_equal(back, w)


def test_dense_small_integer_and_output_constants_stay():
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((100, 100)).astype(np.float32)
    small = np.zeros(MIN_ELEMENTS - 1, np.float32)
    ints = np.zeros(10 * MIN_ELEMENTS, np.int64)
    out = np.zeros(10 * MIN_ELEMENTS, np.float32)
    g = graph_with({"dense": dense, "small": small, "ints": ints, "out": out}, outputs=["out"])
    assert compact_weights(g) == {}
    assert all(g.values[n].const is not None for n in ("dense", "small", "ints", "out"))
