"""Small conv and pruned FC layers (specs as lowering makes them) for the autotuner's tests."""

from __future__ import annotations

import numpy as np

from sparsejit import targets
from sparsejit.conv_layer import ConvSpec
from sparsejit.fc_layer import FcSpec
from sparsejit.kernels.direct_conv import ConvWorkload, Epilogue
from sparsejit.kernels.layout import Layout
from sparsejit.kernels.sparse_fc import SparseFcWorkload

HOST = targets.get("host")


def weights(wl: ConvWorkload, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (wl.out_channels, wl.in_channels // wl.group, *wl.kernel)
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (rng.random(shape) < density)


def make_spec(wl: ConvWorkload, density: float = 0.3, seed: int = 0, activation: str = "relu",
              out_pads: tuple[int, int, int, int] = (1, 1, 1, 1), name: str = "layer") -> ConvSpec:
    """A layer reading a padded, vector-aligned input (phase-split for strided convs happens in
    render_conv) and writing into a padded output, as between two 3x3 convs."""
    v = HOST.vector_width
    bias = np.random.default_rng(seed + 1).standard_normal(wl.out_channels).astype(np.float32)
    in_layout = Layout.padded(wl.in_channels, wl.height, wl.width, wl.pads, align=v)
    out_layout = Layout.padded(wl.out_channels, wl.out_height, wl.out_width, out_pads, align=v)
    return ConvSpec(name, wl, weights(wl, density, seed), bias, Epilogue(activation, 0.1), in_layout,
                    out_layout)


SPARSE_3X3 = ConvWorkload(40, 9, 20, 12, (3, 3), pads=(1, 1, 1, 1))
STRIDED = ConvWorkload(6, 11, 13, 8, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
GROUPED = ConvWorkload(8, 7, 9, 8, (3, 3), pads=(1, 1, 1, 1), group=2)


def make_fc_spec(in_features: int = 300, out_features: int = 37, density: float = 0.2,
                 seed: int = 0, activation: str = "relu") -> FcSpec:
    """A pruned FC layer as lowering makes it for the row kernel."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32)
    w *= rng.random(w.shape) < density
    bias = rng.standard_normal(out_features).astype(np.float32)
    return FcSpec("fc", SparseFcWorkload(in_features, out_features), w, bias,
                  Epilogue(activation, 0.1))
