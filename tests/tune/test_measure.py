"""Measuring one candidate: every valid plan verifies; wrong, broken and slow ones are results."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sparsejit import conv_layer, fc_layer
from sparsejit.kernels import select
from sparsejit.kernels.direct_conv import ConvWorkload
from sparsejit.tune import measure as measure_mod
from sparsejit.kernels.sparse_fc import choose_plan as choose_fc_plan
from sparsejit.tune.measure import measure, measure_fc
from sparsejit.tune.space import candidates, fc_candidates

from .layers import GROUPED, HOST, SPARSE_3X3, STRIDED, make_fc_spec, make_spec


@pytest.mark.parametrize("wl, density, activation", [
    (SPARSE_3X3, 0.3, "relu"),
    (SPARSE_3X3, 1.0, "none"),
    (STRIDED, 0.5, "leaky_relu"),
    (GROUPED, 0.3, "relu"),
    (ConvWorkload(24, 1, 37, 8, (1, 1)), 0.5, "clip"),  # a flattened pointwise conv
], ids=["sparse", "dense", "strided", "grouped", "pointwise"])
def test_every_candidate_of_a_small_space_verifies(wl, density, activation):
    spec = make_spec(wl, density, activation=activation)
    plans = candidates(wl, spec.weight, HOST, budget=6)
    results = [measure(spec, p, HOST, repeats=3, time_bound=1.0) for p in plans]
    for r in results:
        assert r.status == "ok", f"{r.plan.variant()}: {r.status} {r.error}"
        assert 1 <= len(r.times) <= 3 and r.median_s == pytest.approx(np.median(r.times))
        assert r.median_s > 0 and r.calls_per_sample >= 1


@pytest.mark.parametrize("override", [{"aligned_copies": True}, {"form": "unrolled"},
                                      {"channel_chunk": 16, "loop_order": "tile_block"},
                                      {"rows_per_tile": 1, "unroll": 4, "split_accumulators": True}])
def test_each_knob_verifies(override):
    spec = make_spec(SPARSE_3X3, 0.2)
    plan = select.apply_override(select.choose_conv(SPARSE_3X3, spec.weight, HOST), override, "x")
    r = measure(spec, plan, HOST, repeats=2)
    assert r.status == "ok", r.error


def test_a_wrong_kernel_is_caught(monkeypatch):
    real = conv_layer.build_pattern

    def corrupted(*args):
        pattern = real(*args)
        pattern.weights[len(pattern.weights) // 2] += 1.0  # one weight off by one
        return pattern

    monkeypatch.setattr(conv_layer, "build_pattern", corrupted)
    spec = make_spec(SPARSE_3X3, 0.3, activation="none")
    r = measure(spec, select.choose_conv(SPARSE_3X3, spec.weight, HOST), HOST, repeats=3)
    assert r.status == "wrong" and "max error" in r.error
    assert r.median_s is None and r.times == []


def test_a_kernel_writing_into_the_output_pads_is_caught(monkeypatch):
    spec = make_spec(SPARSE_3X3, 0.3)
    # the kernel is told the output interior starts one row early: it writes into the top pad
    shifted = replace(spec.out_layout, pad_top=0, rows=spec.out_layout.rows)
    real = conv_layer.render_direct_conv
    monkeypatch.setattr(conv_layer, "render_direct_conv",
                        lambda *a: real(*a[:7], shifted, *a[8:]))
    plan = select.choose_conv(SPARSE_3X3, spec.weight, HOST)
    r = measure(spec, plan, HOST, repeats=3)
    assert r.status == "wrong" and "max error" in r.error
    # with the values check out of the way, the pads check alone catches it
    monkeypatch.setattr(measure_mod, "mismatch", lambda got, expected: None)
    r = measure(spec, plan, HOST, repeats=3)
    assert r.status == "wrong" and r.error == "wrote other than zeros outside the output interior"


def test_a_plan_that_cannot_block_the_layer_is_an_error():
    spec = make_spec(GROUPED, 0.5)  # 4 output channels per group
    plan = replace(select.choose_conv(GROUPED, spec.weight, HOST), channels_per_block=3)
    r = measure(spec, plan, HOST)
    assert r.status == "error" and "channels_per_block=3" in r.error


def test_a_compile_failure_is_an_error(monkeypatch):
    monkeypatch.setattr(measure_mod.llvm, "compile_object",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("generated IR does not verify")))
    spec = make_spec(SPARSE_3X3)
    r = measure(spec, select.choose_conv(SPARSE_3X3, spec.weight, HOST), HOST)
    assert r.status == "error" and "does not verify" in r.error


def test_the_time_bound(monkeypatch):
    spec = make_spec(SPARSE_3X3)
    plan = select.choose_conv(SPARSE_3X3, spec.weight, HOST)
    r = measure(spec, plan, HOST, repeats=1000, time_bound=1e-9)
    assert r.status == "timeout" and "bound" in r.error
    # A million calls take seconds on any machine, so the bound must stop the timing early.
    r = measure(spec, plan, HOST, repeats=1_000_000, time_bound=0.05)
    assert r.status == "ok" and 3 <= len(r.times) < 1_000_000  # stopped early, still a median


def test_threads_split_the_channel_blocks_as_the_runtime_does():
    spec = make_spec(SPARSE_3X3, 0.3)
    r = measure(spec, select.choose_conv(SPARSE_3X3, spec.weight, HOST), HOST, repeats=3, threads=2)
    assert r.status == "ok", r.error


@pytest.mark.parametrize("wl, threads_used", [
    (ConvWorkload(64, 28, 28, 64, (3, 3), pads=(1, 1, 1, 1)), 2),  # ~6 M nonzero FLOPs
    (SPARSE_3X3, 1),  # too small to split: the runtime would run it on one thread
])
def test_threads_get_one_table_of_calls_per_sample(monkeypatch, wl, threads_used):
    """Each sample is one driver call over a table of back-to-back calls (barriers between
    split ones), on the threads the runtime would give the layer: the threads are handed work
    once per sample, not once per call."""
    seen = []
    real = measure_mod.run_native

    def recording(driver, table, pool):
        seen.append((table.threads, table.rows.copy()))
        real(driver, table, pool)

    monkeypatch.setattr(measure_mod, "run_native", recording)
    spec = make_spec(wl, 0.1)
    r = measure(spec, select.choose_conv(wl, spec.weight, HOST), HOST, repeats=4, threads=2)
    assert r.status == "ok", r.error
    assert len(seen) == 1 + len(r.times)  # the verifying call, then one per sample
    for threads, rows in seen[1:]:
        assert threads == threads_used and len(rows) == r.calls_per_sample
        barriers = (rows[:, 6] & 2) != 0
        assert list(barriers) == [threads_used > 1] * (len(rows) - 1) + [False]


@pytest.mark.parametrize("wl, override", [(STRIDED, {}), (SPARSE_3X3, {"aligned_copies": True})],
                         ids=["strided", "aligned-copies"])
def test_a_packed_input_is_copied_by_the_repack_kernel_before_each_call(monkeypatch, wl, override):
    """As the runtime runs it: the generated repack (producer's layout -> the plan's packed
    copy) then the conv, call after call, both in the timed table."""
    seen = []
    real = measure_mod.run_native

    def recording(driver, table, pool):
        seen.append(table.rows.copy())
        real(driver, table, pool)

    monkeypatch.setattr(measure_mod, "run_native", recording)
    spec = make_spec(wl, 0.3)
    plan = select.apply_override(select.choose_conv(wl, spec.weight, HOST), override, "x")
    r = measure(spec, plan, HOST, repeats=3, threads=2)
    assert r.status == "ok", r.error
    for rows in seen:
        repacks, convs = rows[0::2, 0], rows[1::2, 0]
        assert len(repacks) == len(convs) and len(set(repacks)) == 1 and len(set(convs)) == 1
        assert repacks[0] != convs[0]
        assert (rows[0::2, 2] == rows[1::2, 1]).all()  # the repack writes what the conv reads


@pytest.mark.parametrize("in_features, density, activation", [
    (300, 0.2, "relu"), (1000, 0.05, "clip"), (70, 1.0, "leaky_relu"), (64, 0.0, "none")])
def test_every_fc_candidate_verifies(in_features, density, activation):
    """A pruned FC's candidates (chunk widths, accumulators, prefetch, loads, column blocks)
    each compile, match the reference and are timed."""
    spec = make_fc_spec(in_features, 37, density, activation=activation)
    for plan in fc_candidates(spec.workload, HOST, budget=8):
        r = measure_fc(spec, plan, HOST, repeats=3)
        assert r.status == "ok", (plan, r.error)
        assert r.median_s > 0 and len(r.times) == 3


def test_a_wrong_fc_kernel_is_caught(monkeypatch):
    real = fc_layer.build_tables

    def corrupted(weight, plan):
        tables = real(weight, plan)
        chunk = plan.chunk_bytes()
        weights = tables.table.reshape(-1, chunk)[:, plan.vector_width * plan.index_bits // 8:]
        weights.view(np.float32)[len(weights) // 2, 0] += 1.0  # one weight off by one
        return tables

    monkeypatch.setattr(fc_layer, "build_tables", corrupted)
    spec = make_fc_spec(300, 37, 0.3, activation="none")
    r = measure_fc(spec, choose_fc_plan(spec.workload, HOST), HOST, repeats=3)
    assert r.status == "wrong" and "max error" in r.error and r.times == []


def test_an_fc_plan_that_cannot_hold_the_layer_is_an_error_and_the_time_bound_holds():
    spec = make_fc_spec(70_000, 4, 0.01)
    one_block = replace(choose_fc_plan(spec.workload, HOST), column_block=0, index_bits=16)
    r = measure_fc(spec, one_block, HOST)
    assert r.status == "error" and "65536" in r.error
    plan = choose_fc_plan(spec.workload, HOST)
    assert measure_fc(spec, plan, HOST, repeats=1000, time_bound=1e-9).status == "timeout"
    r = measure_fc(spec, plan, HOST, repeats=1_000_000, time_bound=0.05)
    assert r.status == "ok" and 3 <= len(r.times) < 1_000_000


def test_a_flat_run_storing_into_padded_rows_verifies():
    """A flattened pointwise conv (one row of H * W) that stores into a 3x3 conv's padded
    rows: the measured output is compared row by row with the reference."""
    from sparsejit.kernels.layout import Layout
    v = HOST.vector_width
    wl = ConvWorkload(24, 1, 6 * (v + 3), 8, (1, 1))
    spec = make_spec(wl, 0.4)
    spec = replace(spec, in_layout=Layout(24, 1, wl.width),
                   out_layout=Layout.padded(8, 6, v + 3, (1, 1, 1, 1), align=v))
    for plan in candidates(wl, spec.weight, HOST, budget=4, out_layout=spec.out_layout):
        r = measure(spec, plan, HOST, repeats=2, time_bound=1.0)
        assert r.status == "ok", f"{plan.variant()}: {r.error}"
