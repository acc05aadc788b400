"""One pruned FC layer's row kernel from its spec and a plan: packed tables and IR (no LLVM calls).

As for conv layers (conv_layer.py): lowering renders each pruned FC that runs row by row once,
with its chosen plan; the autotuner renders the same spec with many plans, so both go through
`render_fc` and time exactly the code compile() makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codegen.render import KernelSource
from .codegen.sparse_fc import kernel_symbol, render_sparse_fc
from .kernels.direct_conv import Epilogue
from .kernels.sparse_fc import SparseFcPlan, SparseFcTables, SparseFcWorkload, build_tables
from .targets import Target


@dataclass(frozen=True, eq=False)
class FcSpec:
    """Everything a pruned FC row kernel is generated from except its plan."""

    name: str
    workload: SparseFcWorkload
    weight: np.ndarray  # float32 [M, C]
    bias: np.ndarray  # float32 [M]
    epilogue: Epilogue


@dataclass(frozen=True, eq=False)
class FcCode:
    """A rendered kernel and its tables."""

    plan: SparseFcPlan
    tables: SparseFcTables
    source: KernelSource
    symbol: str

    @property
    def ir(self) -> str:
        return self.source.text


def render_fc(spec: FcSpec, plan: SparseFcPlan, target: Target) -> FcCode:
    """The kernel of `spec` with `plan`. Raises ValueError when the plan cannot hold the layer
    (16-bit column indices for a block wider than 65536 inputs, too many chunks)."""
    tables = build_tables(spec.weight, plan)
    name, wl, bias, epilogue = spec.name, spec.workload, spec.bias, spec.epilogue
    source = KernelSource(
        lambda: render_sparse_fc(name, wl, plan, tables, bias, epilogue, target.name,
                                 target.features),
        "sparse_fc", name, wl, plan, tables.rows, tables.table, bias, epilogue, target.name,
        target.features)
    return FcCode(plan, tables, source, kernel_symbol(name, plan))
