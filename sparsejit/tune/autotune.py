"""sparsejit.autotune(): search each conv layer's plans, measure every candidate, log them all.

The model is compiled once the ordinary way to learn each conv layer's spec (workload, folded
weights, epilogue, layouts: exactly what compile() renders); then, layer by layer, every
candidate of the layer's search space is built, verified against the numpy reference and timed.
Each result is appended to the tuning log as soon as it is measured, so an interrupted run
keeps what it measured; compile() then picks the fastest verified plan per layer from the log.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from .. import targets
from ..conv_layer import ConvSpec
from ..errors import InputError
from ..kernels.direct_conv import DirectConvPlan
from ..targets import Target
from . import log as tuning_log
from . import space
from .measure import Measurement, measure


class LayerTuning(NamedTuple):
    """A layer's outcome: the winner and its speedup over the default plan (first two fields,
    so `plan, speedup = result[:2]`), the two medians, and every measurement."""

    plan: DirectConvPlan
    speedup: float | None  # default median / best median; None when the default failed
    default_s: float | None
    best_s: float | None
    results: list[Measurement]


def autotune(model: Any, target: str | Target = "host", threads: int = 1, budget: int = 24,
             repeats: int = 15, time_bound: float = 2.0, layers: list[str] | str | None = None,
             log_path: str | Path | None = None, progress: bool = True) -> dict[str, LayerTuning]:
    """Tune the conv layers of `model` (path, bytes or ModelProto) for `target`.

    budget: candidate plans per layer (the default plan is always one of them).
    repeats, time_bound: timed calls per candidate (median), and the seconds they may take.
    layers: names (or "a,b") of the conv layers to tune; default all.
    log_path: the tuning log to append to (default: SPARSEJIT_TUNING_LOG, else the user cache).
    Returns {layer: LayerTuning}; compile() uses the log from now on.
    """
    tgt = targets.get(target)
    targets.require_runnable(tgt)
    if budget < 1 or repeats < 1 or time_bound <= 0 or threads < 1:
        raise InputError(f"autotune needs budget, repeats, threads >= 1 and time_bound > 0; got "
                         f"budget={budget}, repeats={repeats}, threads={threads}, "
                         f"time_bound={time_bound}")
    path = Path(log_path) if log_path is not None else tuning_log.default_path()
    if path is None:
        raise InputError("the tuning log is off (SPARSEJIT_TUNING_LOG=off): give log_path")
    specs = _select(conv_specs(model, tgt), layers)
    outcomes: dict[str, LayerTuning] = {}
    done: dict[str, LayerTuning] = {}  # workload key -> outcome: identical layers tune once
    for key, spec in specs:
        if key not in done:
            done[key] = _tune_layer(spec, key, tgt, threads, budget, repeats, time_bound, path,
                                    progress)
        outcomes[spec.name] = done[key]
    return outcomes


def conv_specs(model: Any, target: Target) -> list[tuple[str, ConvSpec]]:
    """(workload key, spec) of every conv kernel of the model, in schedule order."""
    from ..compiler import compile

    cm = compile(model, target, threads=1)
    try:
        return [(info.workload_key, info.spec) for info in cm.lowered().layers
                if info.spec is not None]
    finally:
        cm.close()


def _select(specs: list[tuple[str, ConvSpec]], layers: list[str] | str | None):
    if layers is None:
        return specs
    wanted = [n.strip() for n in layers.split(",")] if isinstance(layers, str) else list(layers)
    known = [spec.name for _, spec in specs]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InputError(f"no conv layer(s) {unknown} to tune; conv layers: {known}")
    return [(key, spec) for key, spec in specs if spec.name in wanted]


def _tune_layer(spec: ConvSpec, key: str, target: Target, threads: int, budget: int, repeats: int,
                time_bound: float, path: Path, progress: bool) -> LayerTuning:
    plans = space.candidates(spec.workload, spec.weight, target, budget)
    results: list[Measurement] = []
    bar = tqdm(plans, desc=spec.name, unit="plan", disable=not progress, leave=True)
    for plan in bar:
        m = measure(spec, plan, target, repeats, time_bound, threads)
        results.append(m)
        tuning_log.append([_record(m, spec, key, target, threads)], path)
        best = _best(results)
        if best is not None:
            bar.set_postfix_str(f"best {best.median_s * 1e3:.3f} ms {best.plan.variant()}")
    bar.close()
    default, best = results[0], _best(results)
    default_s = default.median_s if default.status == "ok" else None
    if best is None:
        return LayerTuning(default.plan, None, None, None, results)
    speedup = default_s / best.median_s if default_s else None
    return LayerTuning(best.plan, speedup, default_s, best.median_s, results)


def _best(results: list[Measurement]) -> Measurement | None:
    ok = [m for m in results if m.status == "ok"]
    return min(ok, key=lambda m: m.median_s) if ok else None


def _record(m: Measurement, spec: ConvSpec, key: str, target: Target, threads: int) -> dict:
    return tuning_log.make_record(key, target, asdict(m.plan), m.status, m.median_s, m.times,
                                  m.error, layer=spec.name, workload=asdict(spec.workload),
                                  threads=threads, compile_s=round(m.compile_s, 4),
                                  calls_per_sample=m.calls_per_sample)
