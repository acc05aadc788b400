"""The one place test tolerances live."""

from __future__ import annotations

import numpy as np

RTOL = 1e-4
ATOL = 1e-5
# Kernels that compute exp / log themselves (softmax) against a float64 reference: an ulp or so
# from exp, one from the division, a few from the float32 sum (measured: up to 3.5 eps = 4e-7).
ELEMENTWISE_RTOL = 1e-6


def assert_close(actual: np.ndarray, expected: np.ndarray, *, what: str, rtol: float = RTOL,
                 atol: float = ATOL) -> None:
    """Elementwise |a - e| <= atol + rtol * |e|, with atol scaled by the data's magnitude (sums
    of many float32 products carry rounding proportional to the operands, not the result).
    NaN must match NaN and infinities must match exactly."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    finite = np.isfinite(expected)
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), f"{what}: NaN positions differ"
    assert np.array_equal(actual[~finite & ~np.isnan(expected)],
                          expected[~finite & ~np.isnan(expected)]), f"{what}: infinities differ"
    if not finite.any():
        return
    scale = max(1.0, float(np.abs(expected[finite]).max()))
    err = np.abs(actual[finite].astype(np.float64) - expected[finite])
    bound = atol * scale + rtol * np.abs(expected[finite])
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (
        f"{what}: max error {err.max():.3g} (worst at flat index {worst}: got "
        f"{actual[finite].ravel()[worst]}, expected {expected[finite].ravel()[worst]})")
