"""The dense FC's weight packing against the layout written out element by element.

The kernel itself runs in every network test (fc layers of CaffeNet, VGG-16, the small nets);
here the packing is pinned on its own, for out-feature counts below, at and above a tile and
input widths across the transpose's column chunk.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparsejit.kernels.gemm import GemmPlan, pack_weights


def packed_by_element(weight_mc: np.ndarray, plan: GemmPlan) -> np.ndarray:
    m, c = weight_mc.shape
    width = plan.vector_width * plan.vectors_per_tile
    out = np.zeros((plan.tiles(m), c, width), np.float32)
    for row in range(m):
        out[row // width, :, row % width] = weight_mc[row]
    return out.reshape(-1)


@pytest.mark.parametrize("plan", [GemmPlan(16, 1, 4), GemmPlan(8, 2, 3), GemmPlan(4, 1, 1)],
                         ids=lambda p: p.variant())
@pytest.mark.parametrize("m, c", [(1, 1), (5, 3), (64, 511), (65, 512), (130, 1300)])
def test_pack_weights_matches_the_element_layout(plan, m, c):
    weight = np.random.default_rng(m * 7919 + c).standard_normal((m, c)).astype(np.float32)
    packed = pack_weights(weight, plan)
    assert packed.ctypes.data % 64 == 0
    np.testing.assert_array_equal(packed, packed_by_element(weight, plan))


def test_pack_weights_zeroes_the_padding_even_from_dirty_memory():
    # aligned_empty does not clear; a padding lane left as garbage would leak into outputs
    # only if the kernel stored them, so pin it here where it is cheap to see.
    plan = GemmPlan(16, 1, 4)
    for _ in range(3):
        packed = pack_weights(np.ones((3, 700), np.float32), plan)
        lanes = packed.reshape(1, 700, 64)
        assert (lanes[:, :, :3] == 1).all() and (lanes[:, :, 3:] == 0).all()
