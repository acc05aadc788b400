"""Render the pruned-FC row kernel: plan + packed tables -> LLVM IR text (no LLVM calls here)."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np

from ..kernels.direct_conv import Epilogue
from ..kernels.sparse_fc import SparseFcPlan, SparseFcTables, SparseFcWorkload
from .render import byte_string, float_literal, halving_steps, render, symbol

TEMPLATE = "fc_sparse_rows.ll.j2"


def kernel_symbol(layer: str, plan: SparseFcPlan) -> str:
    return symbol("sj_fc", layer, plan.variant())


def render_sparse_fc(layer: str, workload: SparseFcWorkload, plan: SparseFcPlan,
                     tables: SparseFcTables, bias: np.ndarray, epilogue: Epilogue,
                     target_name: str, target_features: str = "") -> str:
    """`void NAME(ptr x, ptr y, ptr unused, i64 n0, i64 n1, i64 m0, i64 m1)`: rows [n0, n1) of
    X[N][C] and output features [m0, m1) into Y[N][M], both row-major and contiguous.

    `target_features`, when given, is the target's LLVM feature string: the function then
    carries it plus "+fast-gather", without which LLVM 22 splits every AVX2 gather into scalar
    loads on CPUs it does not model as having fast gathers (Broadwell, our avx2 target)."""
    v = plan.vector_width
    blocks = plan.column_blocks(workload.in_features)
    assert len(tables.rows) == blocks * workload.out_features + 1
    assert len(bias) == workload.out_features
    table = tables.table if tables.table.size else np.zeros(1, np.uint8)  # LLVM has no c"" of [0 x i8]
    k = SimpleNamespace(
        name=kernel_symbol(layer, plan), target=target_name, digest=tables.digest[:16],
        plan=", ".join(f"{a}={b}" for a, b in asdict(plan).items()),
        workload=", ".join(f"{a}={b}" for a, b in asdict(workload).items()),
        nonzeros=tables.nonzeros, chunks=tables.chunks,
        V=v, IB=plan.index_bits, CB=plan.chunk_bytes(), WOFF=v * plan.index_bits // 8,
        A=plan.accumulators, blocks=plan.batch_blocks(),
        C=workload.in_features, M=workload.out_features,
        KB=blocks, KW=plan.block_width(workload.in_features),
        table=byte_string(table), table_bytes=table.size,
        rows=byte_string(tables.rows.astype("<i4")), rows_bytes=4 * len(tables.rows),
        bias=byte_string(np.asarray(bias, "<f4")), bias_bytes=4 * len(bias),
        halves=halving_steps(v), prefetch=plan.prefetch_bytes, scalar_loads=plan.scalar_loads,
        lane=_one_lane(epilogue),
        fn_attrs=f' "target-features"="{target_features},+fast-gather"' if target_features else "",
    )
    return render(TEMPLATE, k=k)


def _one_lane(epilogue: Epilogue) -> SimpleNamespace:
    """The activation macro's parameters for a <1 x float> (one output at a time)."""
    return SimpleNamespace(
        V=1, activation=epilogue.activation,
        alpha_vec=f"float {float_literal(epilogue.alpha)}",
        clip_min_vec=f"float {float_literal(epilogue.clip_min)}",
        clip_max_vec=f"float {float_literal(epilogue.clip_max)}",
    )
