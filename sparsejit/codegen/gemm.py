"""Render the dense FC kernel: plan -> LLVM IR text (no LLVM calls here)."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np

from ..kernels.direct_conv import Epilogue
from ..kernels.gemm import GemmPlan, GemmWorkload
from .render import float_list, float_literal, render, splat, symbol


def kernel_symbol(layer: str, plan: GemmPlan) -> str:
    return symbol("sj_gemm", layer, plan.variant())


def render_gemm(layer: str, workload: GemmWorkload, plan: GemmPlan, bias: np.ndarray,
                epilogue: Epilogue, target_name: str) -> str:
    """`void NAME(ptr x, ptr y, ptr wt, i64 n0, i64 n1, i64 mt0, i64 mt1)`: rows [n0, n1) of
    X[N][C] and output-feature tiles [mt0, mt1) into Y[N][M]."""
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
    )
    return render("gemm_dense.ll.j2", k=k)
