"""Render the dense FC kernel: plan -> LLVM IR text (no LLVM calls here)."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np

from ..kernels.direct_conv import Epilogue
from ..kernels.gemm import GemmPlan, GemmWorkload
from .render import float_list, float_literal, render, splat, symbol


# Skipping zero inputs: rows of W^T summed side by side per vector of Y, and inputs scanned per
# chunk (the chunk's list of nonzero inputs, 4 bytes each, lives on the stack). Groups of 2, 4
# and 8 rows ran within the noise of each other on VGG-16's fc6 (AMD Zen 4); one row at a time
# streamed at 60 % of that (a store of Y per vector of weights fills the core's window).
SKIP_ROWS_PER_GROUP = 4
SKIP_CHUNK_INPUTS = 4096


def gemm_key(plan: GemmPlan) -> tuple:
    """What the kernel's code depends on beyond its arguments: the skip kernel's shape."""
    return (SKIP_ROWS_PER_GROUP, SKIP_CHUNK_INPUTS) if plan.skip_zero_inputs else ()


def kernel_symbol(layer: str, plan: GemmPlan) -> str:
    return symbol("sj_gemm", layer, plan.variant())


def render_gemm(layer: str, workload: GemmWorkload, plan: GemmPlan, bias: np.ndarray,
                epilogue: Epilogue, target_name: str) -> str:
    """`void NAME(ptr x, ptr y, ptr wt, i64 n0, i64 n1, i64 mt0, i64 mt1)`: rows [n0, n1) of
    X[N][C] and output-feature tiles [mt0, mt1) into Y[N][M] (`wt` packed by pack_weights)."""
    v = plan.vector_width
    mp = plan.padded_features(workload.out_features)
    padded_bias = np.zeros(mp, np.float32)
    padded_bias[:workload.out_features] = bias
    k = SimpleNamespace(
        name=kernel_symbol(layer, plan), target=target_name,
        plan=", ".join(f"{a}={b}" for a, b in asdict(plan).items()),
        workload=", ".join(f"{a}={b}" for a, b in asdict(workload).items()),
        V=v, RN=plan.rows_per_tile, CB=plan.vectors_per_tile,
        C=workload.in_features, M=workload.out_features, Mp=mp,
        bias=float_list(padded_bias),
        iota=", ".join(f"i64 {i}" for i in range(v)),
        Mvec=splat(v, f"i64 {workload.out_features}"),
        activation=epilogue.activation,
        alpha_vec=splat(v, f"float {float_literal(epilogue.alpha)}"),
        clip_min_vec=splat(v, f"float {float_literal(epilogue.clip_min)}"),
        clip_max_vec=splat(v, f"float {float_literal(epilogue.clip_max)}"),
        G=SKIP_ROWS_PER_GROUP, CHUNK=SKIP_CHUNK_INPUTS,
        tail_mask=", ".join(f"i1 {'true' if i < workload.out_features % v else 'false'}"
                            for i in range(v)),
    )
    return render("gemm_dense_skip.ll.j2" if plan.skip_zero_inputs else "gemm_dense.ll.j2", k=k)
