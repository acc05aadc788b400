"""sparsejit.compile(): model in, CompiledModel out. The pipeline, stage by stage.

    load (frontend) -> import to graph IR -> [per batch size: bind shapes, fold constants,
    remove identities, fold BatchNorm and scale-shifts, merge summed pointwise convs, fuse
    residual Adds and activations -> lower (choose, render, compile, schedule)] -> CompiledModel
"""

from __future__ import annotations

import copy
import operator
import os
from typing import Any

import onnx

from . import config, targets
from .codegen.schedule import MAX_SHARES
from .errors import InputError
from .frontend.onnx_import import import_graph, load_model
from .graph import fold, passes
from .graph.fuse import fuse_activations, fuse_residual_adds
from .graph.ir import Graph, Node, Value
from .graph.merge import merge_summed_pointwise_convs
from .graph.weights import CompactConst, compact_weights, restore_weights
from .kernels import select
from .lower import Program, conv_lowerable, fc_weights, lower
from .runtime.model import CompiledModel
from .targets import Target


def _kernel_layer(graph: Graph, node: Node) -> bool:
    """Will this node become a generated kernel (so an activation can fuse into it)?"""
    return conv_lowerable(graph, node) or (node.op in ("Gemm", "MatMul")
                                           and fc_weights(graph, node) is not None)


def _block_alike(target: Target):
    """Would lowering block both weights alike (both sparse or both dense) on `target`? (The
    convs merged are pointwise, of one group: the lanes form's thresholds where the target takes
    them, `select.lanes_thresholds`.)"""
    lanes = select.lanes_thresholds(target)

    def alike(wa, wb) -> bool:
        return select.conv_is_dense(wa, lanes) == select.conv_is_dense(wb, lanes)
    return alike


def bind(graph: Graph, batch: int, target: Target, plans: dict[str, dict] | None = None,
         load: bool = True, weights: dict[str, CompactConst] | None = None,
         threads: int | None = None) -> Program:
    """Bind the batch size, run the graph passes and lower the result (on a copy of the graph,
    with its compacted weights restored)."""
    g = copy.deepcopy(graph)
    restore_weights(g, weights or {})
    fold.simplify(g, batch)
    passes.remove_identities(g)
    passes.fold_batchnorm(g)
    passes.fold_scale_shift(g)
    fold.simplify(g, batch)
    merge_summed_pointwise_convs(g, _block_alike(target))
    fuse_residual_adds(g, conv_lowerable)
    fuse_activations(g, _kernel_layer)
    _materialize_constant_outputs(g)
    return lower(g, target, batch, plans, load=load, threads=threads)


def _materialize_constant_outputs(graph: Graph) -> None:
    """A graph output that folded to a constant (e.g. Shape(x), or an Identity of an
    initializer) is produced by an Identity step, so every output is in the run's results."""
    for out in graph.outputs:
        value = graph.values.get(out)
        if value is None or value.const is None or out in graph.inputs:
            continue
        src = graph.fresh_name(f"{out}:const")
        graph.values[src] = Value(src, value.dtype, value.shape, value.const)
        graph.values[out] = Value(out, value.dtype, value.shape, None)
        graph.nodes.append(Node("Identity", [src], [out], name=graph.fresh_name(f"{out}:identity")))


def _check_threads(threads: Any) -> int | None:
    try:
        n = None if threads is None else operator.index(threads)
    except TypeError:
        n = -1
    if n is not None and n < 0:
        raise InputError(f"threads must be a positive int (or None for the default), got {threads!r}")
    if n is not None and n > MAX_SHARES:
        raise InputError(f"threads must be at most {MAX_SHARES} (a layer's work is cut into at most "
                         f"{MAX_SHARES} shares), got {threads!r}")
    return n


def prepare_graph(model: str | os.PathLike | bytes | onnx.ModelProto) -> Graph:
    """Load and import a model (path, bytes or ModelProto) into the graph IR."""
    return import_graph(load_model(model))


def compile(model: Any, target: str | Target = "host", threads: int | None = None,
            batch: int | None = None, plans: dict[str, dict] | None = None) -> CompiledModel:
    """Compile an ONNX model (path, bytes or onnx.ModelProto) to a native callable.

    target: 'host', 'sse', 'avx2', 'avx512' (see `sparsejit targets`); any target compiles,
        running needs the host to have its features.
    threads: worker threads per layer, at most 64 (default: the cores this process may use,
        up to 64).
    batch: binds a symbolic batch dimension now (else at the first call).
    plans: per-layer overrides of the kernel plan, e.g. {"conv3": {"form": "unrolled"}}.
    """
    tgt = targets.get(target)
    threads = _check_threads(threads)
    graph = prepare_graph(model)
    weights = compact_weights(graph)  # the model keeps its graph: pruned weights stay compact
    n_threads = threads if threads else min(config.default_threads(), MAX_SHARES)
    name = graph.name or "model"
    cm = CompiledModel(graph, tgt, n_threads,
                       lambda b, load: bind(graph, b, tgt, plans, load=load, weights=weights,
                                            threads=n_threads), name)
    static = cm._static_batch()
    if batch is not None and static is not None and batch != static:
        raise InputError(f"model '{name}' has a static batch of {static}: batch={batch} cannot be "
                         "bound (only a symbolic batch dimension can)")
    if batch is not None or static is not None:
        cm.program(batch if batch is not None else static)
    return cm
