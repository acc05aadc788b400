"""Unstructured magnitude pruning, and the per-layer density plans the built-in models follow.

A plan maps each weight layer (Conv or Gemm node name) to the fraction of its weights kept.
The "seed" plans reproduce the densities of Park et al. 2017 ("Faster CNNs with direct sparse
convolutions and guided pruning"); the others are sweeps over the same layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Park et al. 2017, table of CaffeNet layer densities (conv1 is left dense there too).
CAFFENET_SEED = {
    "conv1": 1.0, "conv2": 0.14, "conv3": 0.07, "conv4": 0.08, "conv5": 0.12,
    "fc6": 0.10, "fc7": 0.16, "fc8": 0.26,
}
DEFAULT_CONV_DENSITY = 0.10
NAMED_PLANS = ("seed", "all", "dense")


@dataclass(frozen=True)
class WeightLayer:
    """What a plan needs to know about a layer: its name, op ("Conv"/"Gemm") and kernel."""

    name: str
    op: str
    kernel: tuple[int, ...] = ()


def prune_by_magnitude(w: np.ndarray, density: float) -> np.ndarray:
    """A copy of `w` keeping only its round(density * w.size) largest-magnitude entries.

    Ties at the threshold go to the lowest flat (C-order) indices, so the result depends on
    nothing but `w` and `density`.
    """
    out = np.array(w, order="C", copy=True)
    prune_in_place(out.reshape(-1), density)
    return out


def prune_in_place(flat: np.ndarray, density: float) -> None:
    """prune_by_magnitude on a 1-D array, overwriting it (saves a copy of a 400 MB fc6)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    keep = round(density * flat.size)
    if keep == flat.size:
        return
    if keep == 0:
        flat[:] = 0
        return
    mag = np.abs(flat)
    kth = mag.size - keep
    # Partitioning finds the keep-th largest magnitude in linear time; a full sort of a
    # 37M-entry fc6 would dominate model construction.
    mag.partition(kth)
    threshold = mag[kth]
    np.abs(flat, out=mag)
    keep_mask = mag > threshold
    missing = keep - int(np.count_nonzero(keep_mask))
    keep_mask[np.flatnonzero(mag == threshold)[:missing]] = True
    # copyto, not a multiply by the mask: that would leave -0.0 where negatives were pruned.
    np.copyto(flat, 0, where=np.logical_not(keep_mask, out=keep_mask))


def parse_sparsity(sparsity: str | float) -> str | float:
    """A named plan ("seed", "all", "dense") or a uniform conv density in [0, 1]."""
    text = str(sparsity).strip().lower()
    if text in NAMED_PLANS:
        return text
    try:
        density = float(text)
    except ValueError:
        raise ValueError(
            f"unknown sparsity '{sparsity}': use one of {', '.join(NAMED_PLANS)} "
            "or a density such as '0.05'"
        ) from None
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"sparsity density must be in [0, 1], got {sparsity}")
    return density


def plan_densities(
    net: str, sparsity: str | float, layers: Sequence[WeightLayer]
) -> dict[str, float]:
    """Density of every weight layer of `net` (in graph order) under the `sparsity` plan."""
    plan = parse_sparsity(sparsity)
    first_conv = next((layer.name for layer in layers if layer.op == "Conv"), None)
    return {
        layer.name: _layer_density(net, plan, layer, layer.name == first_conv)
        for layer in layers
    }


def _layer_density(net: str, plan: str | float, layer: WeightLayer, is_first: bool) -> float:
    if plan == "dense":
        return 1.0
    if layer.op != "Conv":
        # Fully connected layers are pruned only where the paper did (CaffeNet).
        keep_fc_seed = net == "caffenet" and plan in ("seed", "all")
        return CAFFENET_SEED.get(layer.name, 1.0) if keep_fc_seed else 1.0
    if is_first:
        # The first conv sees only 3 input channels: too few weights to be worth pruning.
        return 1.0
    if isinstance(plan, float):
        return plan
    if plan == "all":
        return DEFAULT_CONV_DENSITY
    return _seed_conv_density(net, layer)


def _seed_conv_density(net: str, layer: WeightLayer) -> float:
    if net == "caffenet":
        return CAFFENET_SEED.get(layer.name, DEFAULT_CONV_DENSITY)
    if net in ("resnet50", "googlenet"):
        # The paper prunes only the spatial (3x3, 5x5) convs; 1x1 convs are plain GEMMs.
        return DEFAULT_CONV_DENSITY if max(layer.kernel, default=1) > 1 else 1.0
    return DEFAULT_CONV_DENSITY
