"""sparsejit.autotune(): search each conv layer's (and pruned FC layer's) plans, measure every
candidate, log them all.

The model is compiled once the ordinary way to learn each conv layer's spec (workload, folded
weights, epilogue, layouts: exactly what compile() renders), and each pruned FC's that runs row
by row (below batch 3, as tuning times one image); then, layer by layer, every
candidate of the layer's search space is built, verified against the numpy reference and timed.
Each result is appended to the tuning log as soon as it is measured, so an interrupted run
keeps what it measured. A search's fastest candidate is often only the luckiest on a noisy
machine (VMs here drift by up to 30 % within minutes), so a confirmation round then re-times the
default and the fastest few in interleaved rounds, and logs each finalist's median over rounds
as a "confirmed" record; compile() picks the fastest confirmed plan per layer, or the fastest
verified one where no run confirmed any.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from .. import targets
from ..codegen.schedule import MAX_SHARES
from ..conv_layer import ConvSpec
from ..errors import InputError
from ..fc_layer import FcSpec
from ..kernels.direct_conv import DirectConvPlan
from ..kernels.sparse_fc import SparseFcPlan
from ..targets import Target
from . import log as tuning_log
from . import space
from .measure import Measurement, measure, measure_fc

Spec = ConvSpec | FcSpec
Plan = DirectConvPlan | SparseFcPlan


class LayerTuning(NamedTuple):
    """A layer's outcome: the winner and its speedup over the default plan (first two fields,
    so `plan, speedup = result[:2]`), the two medians, and every measurement."""

    plan: Plan
    speedup: float | None  # default median / best median; None when the default failed
    default_s: float | None
    best_s: float | None
    results: list[Measurement]
    confirmed: dict[Plan, float] = {}  # finalist -> median over confirmation rounds


def autotune(model: Any, target: str | Target = "host", threads: int = 1, budget: int = 24,
             repeats: int = 15, time_bound: float = 2.0, layers: list[str] | str | None = None,
             log_path: str | Path | None = None, progress: bool = True, finalists: int = 3,
             rounds: int = 3) -> dict[str, LayerTuning]:
    """Tune the conv layers and pruned FC layers of `model` (path, bytes or ModelProto) for
    `target`. FC layers are timed on one thread whatever `threads` says (their records say so).

    budget: candidate plans per layer (the default plan is always one of them).
    repeats, time_bound: timed calls per candidate (median), and the seconds they may take.
    layers: names (or "a,b") of the layers to tune; default all.
    log_path: the tuning log to append to (default: SPARSEJIT_TUNING_LOG, else the user cache).
    finalists, rounds: the confirmation round re-times the default and the `finalists` fastest
    other candidates, interleaved, `rounds` times (finalists=0: no confirmation).
    Returns {layer: LayerTuning}; compile() uses the log from now on.
    """
    tgt = targets.get(target)
    targets.require_runnable(tgt)
    if (budget < 1 or repeats < 1 or time_bound <= 0 or not 1 <= threads <= MAX_SHARES
            or finalists < 0 or rounds < 1):
        raise InputError(f"autotune needs budget, repeats, rounds >= 1, threads 1-{MAX_SHARES}, "
                         f"finalists >= 0 "
                         f"and time_bound > 0; got budget={budget}, repeats={repeats}, "
                         f"threads={threads}, rounds={rounds}, finalists={finalists}, "
                         f"time_bound={time_bound}")
    path = Path(log_path) if log_path is not None else tuning_log.default_path()
    if path is None:
        raise InputError("the tuning log is off (SPARSEJIT_TUNING_LOG=off): give log_path")
    specs = _select(layer_specs(model, tgt), layers)
    outcomes: dict[str, LayerTuning] = {}
    done: dict[str, LayerTuning] = {}  # workload key -> outcome: identical layers tune once
    for key, spec in specs:
        if key not in done:
            done[key] = _tune_layer(spec, key, tgt, threads, budget, repeats, time_bound, path,
                                    progress, finalists, rounds)
        outcomes[spec.name] = done[key]
    return outcomes


def layer_specs(model: Any, target: Target) -> list[tuple[str, Spec]]:
    """(workload key, spec) of every conv kernel and pruned-FC row kernel of the model, in
    schedule order."""
    from ..compiler import compile

    cm = compile(model, target, threads=1)
    try:
        return [(info.workload_key, info.spec) for info in cm.lowered().layers
                if info.spec is not None]
    finally:
        cm.close()


def _select(specs: list[tuple[str, Spec]], layers: list[str] | str | None):
    if layers is None:
        return specs
    wanted = [n.strip() for n in layers.split(",")] if isinstance(layers, str) else list(layers)
    known = [spec.name for _, spec in specs]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise InputError(f"no conv or pruned FC layer(s) {unknown} to tune; those layers: {known}")
    return [(key, spec) for key, spec in specs if spec.name in wanted]


def _candidates(spec: Spec, target: Target, threads: int, budget: int) -> list[Plan]:
    if isinstance(spec, FcSpec):
        return space.fc_candidates(spec.workload, target, budget)
    return space.candidates(spec.workload, spec.weight, target, budget, threads=threads,
                            in_layout=spec.in_layout, out_layout=spec.out_layout)


def _measure(spec: Spec, plan: Plan, target: Target, repeats: int, time_bound: float,
             threads: int) -> Measurement:
    if isinstance(spec, FcSpec):
        return measure_fc(spec, plan, target, repeats, time_bound)
    return measure(spec, plan, target, repeats, time_bound, threads)


def _timed_threads(spec: Spec, threads: int) -> int:
    """The threads a layer's records are timed with (an FC's on one)."""
    return 1 if isinstance(spec, FcSpec) else threads


def _tune_layer(spec: Spec, key: str, target: Target, threads: int, budget: int, repeats: int,
                time_bound: float, path: Path, progress: bool, finalists: int,
                rounds: int) -> LayerTuning:
    plans = _candidates(spec, target, threads, budget)
    threads = _timed_threads(spec, threads)
    results: list[Measurement] = []
    bar = tqdm(plans, desc=spec.name, unit="plan", disable=not progress, leave=True)
    for plan in bar:
        m = _measure(spec, plan, target, repeats, time_bound, threads)
        results.append(m)
        tuning_log.append([_record(m, spec, key, target, threads)], path)
        best = _best(results)
        if best is not None:
            bar.set_postfix_str(f"best {best.median_s * 1e3:.3f} ms {best.plan.variant()}")
    bar.close()
    default = results[0]
    confirmed = _confirm(spec, key, target, threads, repeats, time_bound, path, results,
                         finalists, rounds, progress) if finalists else {}
    # the confirmed medians where the round ran, else the search's
    medians = confirmed or {m.plan: m.median_s for m in results if m.status == "ok"}
    if not medians:
        return LayerTuning(default.plan, None, None, None, results)
    plan = min(medians, key=medians.get)
    default_s = medians.get(default.plan)
    speedup = default_s / medians[plan] if default_s else None
    return LayerTuning(plan, speedup, default_s, medians[plan], results, confirmed)


def _confirm(spec: Spec, key: str, target: Target, threads: int, repeats: int,
             time_bound: float, path: Path, results: list[Measurement], finalists: int,
             rounds: int, progress: bool) -> dict[Plan, float]:
    """Re-time the default and the `finalists` fastest other verified plans, each round all of
    them in turn (so all see the same drift), and log each one's median over the rounds."""
    ok = sorted((m for m in results[1:] if m.status == "ok"), key=lambda m: m.median_s)
    chosen = ([results[0]] if results[0].status == "ok" else []) + ok[:finalists]
    if len(chosen) < 2:  # nothing to compare: the search's one verified plan stands
        return {}
    medians: dict[Plan, list[float]] = {m.plan: [] for m in chosen}
    samples: dict[Plan, list[float]] = {m.plan: [] for m in chosen}
    last: dict[Plan, Measurement] = {}
    bar = tqdm(total=rounds * len(chosen), desc=f"{spec.name} confirm", unit="plan",
               disable=not progress, leave=True)
    for _ in range(rounds):
        for plan in medians:
            m = _measure(spec, plan, target, repeats, time_bound, threads)
            bar.update()
            if m.status == "ok":
                medians[plan].append(m.median_s)
                samples[plan] += m.times
                last[plan] = m
    bar.close()
    confirmed = {plan: float(np.median(ms)) for plan, ms in medians.items() if ms}
    tuning_log.append([_record(replace(last[plan], median_s=confirmed[plan], times=samples[plan]),
                               spec, key, target, threads, confirmed=True,
                               round_medians=medians[plan]) for plan in confirmed], path)
    return confirmed


def _best(results: list[Measurement]) -> Measurement | None:
    ok = [m for m in results if m.status == "ok"]
    return min(ok, key=lambda m: m.median_s) if ok else None


def _record(m: Measurement, spec: Spec, key: str, target: Target, threads: int,
            **extra: Any) -> dict:
    return tuning_log.make_record(key, target, asdict(m.plan), m.status, m.median_s, m.times,
                                  m.error, layer=spec.name, workload=asdict(spec.workload),
                                  threads=threads, compile_s=round(m.compile_s, 4),
                                  calls_per_sample=m.calls_per_sample, **extra)
