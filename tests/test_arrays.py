"""The nonzero helpers agree with numpy's own functions, NaN, -0.0 and empty arrays included."""

import numpy as np
import pytest

from sparsejit.arrays import count_nonzeros, flat_nonzeros, nonzero_rows_cols


def _weights(seed: int, shape: tuple[int, ...], density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * (rng.random(shape) < density)
    if w.size:
        w.reshape(-1)[rng.integers(w.size)] = np.nan
        w.reshape(-1)[rng.integers(w.size)] = -0.0
    return w


@pytest.mark.parametrize("shape,density", [((7, 5, 3, 3), 0.1), ((64, 1), 1.0), ((3, 4), 0.0),
                                           ((0, 4), 0.5), ((1,), 1.0), ((33, 17), 0.5)])
def test_agree_with_numpy(shape, density):
    w = _weights(len(shape) * 7 + int(density * 10), shape, density)
    assert count_nonzeros(w) == np.count_nonzero(w)
    np.testing.assert_array_equal(flat_nonzeros(w), np.flatnonzero(w))
    mask = (w.reshape(w.shape[0], int(np.prod(w.shape[1:]))) if w.ndim > 1 else w[None]) != 0
    rows, cols = nonzero_rows_cols(mask)
    want_rows, want_cols = np.nonzero(mask)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)


def test_nan_counts_as_nonzero():
    w = np.array([0.0, np.nan, -0.0, 2.0], np.float32)
    assert count_nonzeros(w) == 2
    assert flat_nonzeros(w).tolist() == [1, 3]
