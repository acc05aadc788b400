"""Counting and finding nonzeros in weight tensors, in the forms numpy runs fastest.

numpy's nonzero and count_nonzero run a scalar loop over float arrays but vectorised ones over
booleans: on a 512 x 512 x 3 x 3 float32 weight at 10 % density, `np.flatnonzero(w)` 7.4 ms
against 1.2 ms for `np.flatnonzero(w != 0)`, `np.count_nonzero(w)` 1.0 ms against 0.24 ms,
and a 2-D `np.nonzero` of a boolean mask 6.5 ms. A warm compile of a pruned ResNet-50 scans
its 100 MB of weights several times, so these forms are a tenth of it. NaN != 0, so a NaN
weight counts as a nonzero, as in numpy's own functions.
"""

from __future__ import annotations

import numpy as np


def count_nonzeros(a: np.ndarray) -> int:
    """np.count_nonzero(a), through a boolean mask."""
    return int(np.count_nonzero(np.asarray(a) != 0))


def flat_nonzeros(a: np.ndarray) -> np.ndarray:
    """np.flatnonzero(a) (ascending flat positions), through a boolean mask."""
    return np.flatnonzero(np.asarray(a) != 0)


def nonzero_rows_cols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero of a 2-D mask (row-major order) from its flat positions."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])
