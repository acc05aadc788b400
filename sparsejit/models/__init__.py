"""The built-in models: CaffeNet, VGG-16, ResNet-50, GoogLeNet and a tiny test net, as pruned ONNX.

    model = sparsejit.models.build("caffenet")                 # paper densities, batch 1
    model = sparsejit.models.build("resnet50", sparsity="0.05", batch=None, image_size=64)
    sparsejit.models.density_plan("caffenet", "seed")["conv3"]  # 0.07

Weights are random (seeded, He-scaled) rather than trained: the compiler's speed depends on
each layer's shape and sparsity, not on what the net recognises.
"""

from __future__ import annotations

import onnx

from .builder import NetBuilder
from .pruning import plan_densities, prune_by_magnitude
from .zoo import ARCHITECTURES, Architecture

__all__ = ["build", "density_plan", "names", "prune_by_magnitude"]


def names() -> list[str]:
    """The names `build` accepts."""
    return list(ARCHITECTURES)


def density_plan(name: str, sparsity: str = "seed") -> dict[str, float]:
    """Layer (Conv/Gemm node) name -> fraction of its weights kept, in graph order.

    sparsity: "seed" (Park et al. 2017 densities), "all" (every conv but the first at 0.10),
    "dense", or a density such as "0.05" applied to every conv but the first.
    """
    architecture, size = _architecture(name)
    # Only the layer list matters here, so the architecture is traced without weights.
    tracer = NetBuilder(name, (3, size, size), materialize=False)
    architecture(tracer)
    return plan_densities(name, sparsity, tracer.layers)


def build(
    name: str,
    *,
    batch: int | None = 1,
    seed: int = 0,
    sparsity: str = "seed",
    image_size: int | None = None,
) -> onnx.ModelProto:
    """The ONNX model (opset 13) of built-in net `name`, pruned as `density_plan` says.

    batch=None makes the batch dimension symbolic ("N"). image_size overrides the canonical
    square input size (227 for caffenet, 32 for tiny, 224 otherwise) for smaller test variants;
    the fully connected sizes follow. The input is named "data".
    """
    architecture, size = _architecture(name)
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be positive or None, got {batch}")
    size = size if image_size is None else image_size
    builder = NetBuilder(name, (3, size, size), batch=batch, seed=seed,
                         densities=density_plan(name, sparsity))
    architecture(builder)
    return builder.model(doc=f"sparsejit built-in {name}, seed={seed}, sparsity={sparsity}")


def _architecture(name: str) -> tuple[Architecture, int]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}': choose from {', '.join(names())}") from None
