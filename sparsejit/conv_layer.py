"""One conv layer's kernel from its spec and a plan: input layout, pattern, IR (no LLVM calls).

The spec is what lowering knows about a layer once the graph is bound (workload, folded weights,
epilogue, the layouts its producer and consumers agreed on); the plan is the only free choice.
Lowering renders each layer once with its chosen plan; the autotuner renders the same spec
with many plans, so both go through `render_conv` and time exactly the code compile() makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codegen.direct_conv import kernel_symbol, render_direct_conv
from .codegen.render import KernelSource
from .kernels.direct_conv import (ConvWorkload, DirectConvPlan, Epilogue, Pattern, build_pattern, input_extent,
                                  packed_input, shifted_sums_misfit)
from .kernels.layout import Layout
from .targets import Target


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """Everything a conv kernel is generated from except its plan (a 1x1 conv over flat planes
    is already flattened: `workload` is the one the kernel computes)."""

    name: str
    workload: ConvWorkload
    weight: np.ndarray  # float32 [M, C/G, R, S], BatchNorm and scales folded in
    bias: np.ndarray  # float32 [M]
    epilogue: Epilogue
    in_layout: Layout  # the producer's buffer layout
    out_layout: Layout
    residual: Layout | None = None  # a fused Add's other operand, in its buffer's layout


@dataclass(frozen=True, eq=False)
class ConvCode:
    """A rendered kernel and what running it needs."""

    plan: DirectConvPlan
    pattern: Pattern
    in_layout: Layout  # the layout the kernel reads: the producer's, or its private packed copy
    pack: Layout | None  # the private copy's layout when the input is packed first, else None
    source: KernelSource
    symbol: str

    @property
    def ir(self) -> str:
        return self.source.text

    def input_floats(self, workload: ConvWorkload, images: int) -> int:
        """Floats the kernel's input buffer must hold for `images` images (its over-reads too)."""
        extent = input_extent(workload, self.in_layout, self.plan, self.pattern)
        return (images - 1) * self.in_layout.image_stride + max(self.in_layout.image_stride, extent)


def render_conv(spec: ConvSpec, plan: DirectConvPlan, target: Target) -> ConvCode:
    """The kernel of `spec` with `plan`. Raises ValueError when the plan cannot block this layer."""
    wl = spec.workload
    if plan.aligned_copies and wl.flat_stride:
        # a flat run's offsets assume the input rows flat_stride floats apart, as the producer
        # wrote them; shifted copies have rows of their own (a wrong answer, not a slow one)
        raise ValueError("aligned_copies needs row tiles, and this layer runs as one flat run "
                         f"per plane (rows {wl.flat_stride} floats apart)")
    pack = packed_input(wl, plan, target.vector_width)
    in_layout = pack or spec.in_layout
    if plan.shifted_sums and (misfit := shifted_sums_misfit(wl, in_layout, plan)):
        raise ValueError(f"{spec.name}: {misfit}")
    pattern = build_pattern(spec.weight, wl, in_layout, plan)
    source = KernelSource(
        lambda: render_direct_conv(spec.name, wl, plan, pattern, spec.bias, spec.epilogue,
                                   in_layout, spec.out_layout, target.name, spec.residual),
        "direct_conv", spec.name, wl, plan, pattern.digest, spec.bias, spec.epilogue, in_layout,
        spec.out_layout, target.name, spec.residual)
    return ConvCode(plan, pattern, in_layout, pack, source, kernel_symbol(spec.name, plan))
