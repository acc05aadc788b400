"""autotune() on the tiny net, then compile() picking the tuned plans up from the log."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as oh

import sparsejit
from sparsejit import conv_layer
from sparsejit.errors import InputError
from sparsejit.kernels import select
from sparsejit.kernels.direct_conv import DirectConvPlan
from sparsejit.kernels.sparse_fc import SparseFcPlan
from sparsejit.tune import log
from tests.onnx_helpers import make_model, run_ort
from tests.test_cli import fails_cleanly, ok, sparsejit_cli
from tests.tolerances import assert_close

from .layers import HOST

TUNED = ["conv2", "conv3"]


@pytest.fixture(scope="module")
def tuned(tiny_model, tmp_path_factory) -> tuple[dict, Path]:
    path = tmp_path_factory.mktemp("tune") / "tuning.jsonl"
    results = sparsejit.autotune(tiny_model, budget=3, repeats=3, time_bound=1.0, layers=TUNED,
                                 log_path=path, progress=False, finalists=1, rounds=2)
    return results, path


@pytest.fixture
def x() -> np.ndarray:
    print("input seed=7")
    return np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)


def layer(cm, name: str):
    return next(info for info in cm.layers if info.name == name)


def test_autotune_measures_every_candidate_and_logs_it(tuned, tiny_model):
    results, path = tuned
    assert list(results) == TUNED
    default = {n: layer(sparsejit.compile(tiny_model, plans={n: {}}), n) for n in TUNED}
    records = log.read(path)
    searched = [rec for rec in records if not rec.get("confirmed")]
    assert len(searched) == 3 * len(TUNED)
    for name, r in results.items():
        assert isinstance(r.plan, DirectConvPlan) and r.speedup > 0
        plan, speedup = r[:2]
        assert (plan, speedup) == (r.plan, r.speedup)
        assert [m.status for m in r.results] == ["ok"] * 3, [m.error for m in r.results]
        assert default[name].kernel == f"direct {r.results[0].plan.variant()}"  # default first
        mine = [rec for rec in searched if rec["layer"] == name]
        assert {rec["workload_key"] for rec in mine} == {default[name].workload_key}
        assert all(rec["status"] == "ok" and len(rec["times"]) == 3 for rec in mine)
        # the confirmation round: the default and the search's fastest other plan, re-timed
        fastest_other = min(r.results[1:], key=lambda m: m.median_s).plan
        assert set(r.confirmed) == {r.results[0].plan, fastest_other}
        assert r.plan == min(r.confirmed, key=r.confirmed.get)
        assert r.best_s == r.confirmed[r.plan] and r.default_s == r.confirmed[r.results[0].plan]
        assert r.speedup == pytest.approx(r.default_s / r.best_s)
        final = [rec for rec in records if rec.get("confirmed") and rec["layer"] == name]
        assert len(final) == 2
        for rec in final:
            assert len(rec["round_medians"]) == 2 and len(rec["times"]) == 2 * 3
            assert rec["median_s"] == pytest.approx(float(np.median(rec["round_medians"])))
            assert rec["median_s"] == r.confirmed[DirectConvPlan(**rec["plan"])]


def test_confirmed_records_outrank_a_lucky_search_sample(tuned, tiny_model, tmp_path):
    results, path = tuned
    log_path = tmp_path / "lucky.jsonl"
    log_path.write_text(path.read_text())
    conv2 = results["conv2"]
    key = layer(sparsejit.compile(tiny_model), "conv2").workload_key
    lucky = next(m.plan for m in conv2.results if m.plan not in conv2.confirmed) \
        if len(conv2.confirmed) < len(conv2.results) else None
    if lucky is None:  # every searched plan was a finalist: log a new one
        lucky = replace(conv2.plan, unroll=3)
    log.append([log.make_record(key, HOST, asdict(lucky), "ok", 1e-9, [1e-9], None, threads=1)],
               log_path)  # faster than anything, but from one unconfirmed search sample
    assert DirectConvPlan(**log.best(key, HOST, log_path, threads=1)) == conv2.plan
    # without confirmed records the fastest sample wins, as before confirmation existed
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(line + "\n" for line in log_path.read_text().splitlines()
                             if '"confirmed": true' not in line))
    assert DirectConvPlan(**log.best(key, HOST, plain, threads=1)) == lucky


def test_no_finalists_means_the_search_decides(tiny_model, tmp_path):
    path = tmp_path / "t.jsonl"
    r = sparsejit.autotune(tiny_model, budget=2, repeats=2, time_bound=1.0, layers=["conv2"],
                           log_path=path, progress=False, finalists=0)["conv2"]
    assert r.confirmed == {} and not any(rec.get("confirmed") for rec in log.read(path))
    assert r.best_s == min(m.median_s for m in r.results)


def test_compile_uses_the_log(tuned, tiny_model, x, monkeypatch):
    results, path = tuned
    monkeypatch.setenv("SPARSEJIT_TUNING_LOG", str(path))
    cm = sparsejit.compile(tiny_model)
    for info in cm.layers:
        if info.name in TUNED:
            best = DirectConvPlan(**log.best(info.workload_key, HOST))
            assert info.tuned and info.kernel == f"direct {best.variant()} (tuned)", info.kernel
            assert best == results[info.name].plan  # this run's winner is the log's best
        else:
            assert not info.tuned and "tuned" not in info.kernel, info.name
    assert "(tuned)" in cm.report()
    assert_close(cm(x), run_ort(tiny_model, {"data": x})[0], what="tiny net with tuned plans")


def test_plans_timed_with_the_models_thread_count_win(tuned, tiny_model, tmp_path, monkeypatch):
    """A plan measured at the model's thread count beats a faster one measured at another."""
    results, path = tuned
    log_path = tmp_path / "threads.jsonl"
    log_path.write_text(path.read_text())
    conv3 = results["conv3"]
    ok = [r.plan for r in conv3.results if r.status == "ok"]
    at_one = layer(sparsejit.compile(tiny_model, threads=1), "conv3").workload_key
    chosen = next(p for p in ok if p != conv3.plan) if len(ok) > 1 else conv3.plan
    log.append([log.make_record(at_one, HOST, asdict(chosen), "ok", 1.0, [1.0], None, threads=3)],
               log_path)  # slow, but the only plan timed on 3 threads
    monkeypatch.setenv("SPARSEJIT_TUNING_LOG", str(log_path))
    on_three = layer(sparsejit.compile(tiny_model, threads=3), "conv3")
    assert on_three.kernel == f"direct {chosen.variant()} (tuned)"
    assert layer(sparsejit.compile(tiny_model, threads=1), "conv3").kernel == \
        f"direct {DirectConvPlan(**log.best(at_one, HOST, log_path, threads=1)).variant()} (tuned)"


def test_explicit_plans_win_over_the_log(tuned, tiny_model, x, monkeypatch):
    results, path = tuned
    monkeypatch.setenv("SPARSEJIT_TUNING_LOG", str(path))
    cm = sparsejit.compile(tiny_model, plans={"conv3": {}, "conv2": {"unroll": 1}})
    conv3, conv2 = layer(cm, "conv3"), layer(cm, "conv2")
    assert not conv3.tuned and conv3.kernel == f"direct {results['conv3'].results[0].plan.variant()}"
    assert not conv2.tuned and "_u1" in conv2.kernel
    assert_close(cm(x), run_ort(tiny_model, {"data": x})[0], what="explicit plans over the log")


def test_compile_skips_a_corrupted_log_line_and_a_stale_plan(tuned, tiny_model, tmp_path,
                                                            monkeypatch):
    _, path = tuned
    lines = path.read_text().splitlines()
    key3 = next(json.loads(line)["workload_key"] for line in lines if '"conv3"' in line)
    stale = log.make_record(key3, HOST, {"rows_per_tile": 1, "warp_size": 32}, "ok", 1e-12, [1e-12],
                            None, confirmed=True)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], "{oops", *lines[1:], json.dumps(stale)]) + "\n")
    monkeypatch.setenv("SPARSEJIT_TUNING_LOG", str(broken))
    with pytest.warns(UserWarning) as caught:
        cm = sparsejit.compile(tiny_model)
    messages = [str(w.message) for w in caught]
    assert any(f"{broken}:2:" in m and "not JSON" in m for m in messages), messages
    assert any("conv3" in m and "warp_size" in m for m in messages), messages
    assert layer(cm, "conv2").tuned and not layer(cm, "conv3").tuned


def test_wrong_candidates_are_logged_never_chosen(tiny_model, tmp_path, monkeypatch):
    real = conv_layer.build_pattern

    def corrupt_all_but_the_default(weight, workload, layout, plan):
        pattern = real(weight, workload, layout, plan)
        if plan != select.choose_conv(workload, weight, HOST) and pattern.entries:
            pattern.weights[0] += 1.0
        return pattern

    monkeypatch.setattr(conv_layer, "build_pattern", corrupt_all_but_the_default)
    path = tmp_path / "t.jsonl"
    r = sparsejit.autotune(tiny_model, budget=4, repeats=3, layers="conv3", log_path=path,
                           progress=False)["conv3"]
    assert [m.status for m in r.results] == ["ok", "wrong", "wrong", "wrong"]
    assert r.plan == r.results[0].plan and r.speedup == 1.0
    records = log.read(path)
    assert [rec["status"] for rec in records] == ["ok", "wrong", "wrong", "wrong"]
    assert all("max error" in rec["error"] for rec in records[1:])
    assert log.best(records[0]["workload_key"], HOST, path) == records[0]["plan"]


def test_unknown_layers_and_bad_arguments(tiny_model, tmp_path):
    with pytest.raises(InputError, match=r"conv99.*conv5c"):
        sparsejit.autotune(tiny_model, layers=["conv3", "conv99"], log_path=tmp_path / "t.jsonl")
    with pytest.raises(InputError, match="budget"):
        sparsejit.autotune(tiny_model, budget=0, log_path=tmp_path / "t.jsonl")
    for bad in ({"rounds": 0}, {"finalists": -1}, {"threads": 65}, {"threads": 0}):
        with pytest.raises(InputError, match=next(iter(bad))):
            sparsejit.autotune(tiny_model, log_path=tmp_path / "t.jsonl", **bad)
    assert not (tmp_path / "t.jsonl").exists()


def test_cli_autotune(tiny_path, tmp_path):
    path = tmp_path / "cli.jsonl"
    out = ok(sparsejit_cli("autotune", tiny_path, "--budget", "3", "--repeats", "3",
                           "--finalists", "1", "--rounds", "1", "--layers", "conv3,conv5a",
                           "--log", path))
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["layer", "default", "ms", "best"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"conv3", "conv5a"}
    for row in rows.values():
        assert row[3].endswith("x") and row[4].startswith(("table_", "unrolled_")) and row[5] == "3/3"
        assert row[6] == "2"  # the default and the fastest other plan, re-timed
    assert str(path) in out
    assert len(log.read(path)) == 6 + 2 * 2
    fails_cleanly(sparsejit_cli("autotune", tiny_path, "--layers", "pool4", "--log", path),
                  "pool4", "conv3")


@pytest.fixture(scope="module")
def fc_model() -> onnx.ModelProto:
    """A pruned conv, then two pruned FCs (the first with a Relu): the row kernel's layers."""
    rng = np.random.default_rng(3)

    def pruned(shape, density):
        w = rng.standard_normal(shape).astype(np.float32)
        return w * (rng.random(shape) < density)

    nodes = [oh.make_node("Conv", ["data", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("Flatten", ["r"], ["f"], name="flatten"),
             oh.make_node("Gemm", ["f", "w1", "b1"], ["g1"], name="fc1", transB=1),
             oh.make_node("Relu", ["g1"], ["h"], name="relu1"),
             oh.make_node("Gemm", ["h", "w2", "b2"], ["out"], name="fc2", transB=1)]
    consts = {"wc": pruned((8, 3, 3, 3), 0.4), "w1": pruned((96, 512), 0.15),
              "b1": rng.standard_normal(96).astype(np.float32), "w2": pruned((10, 96), 0.3),
              "b2": rng.standard_normal(10).astype(np.float32)}
    return make_model(nodes, {"data": ((1, 3, 8, 8), np.float32)}, ["out"], consts)


def test_pruned_fc_layers_are_tuned_logged_and_used(fc_model, tmp_path, monkeypatch):
    """autotune() searches the pruned FCs' row-kernel plans beside the convs, logs them under
    an FC workload key (timed on one thread whatever `threads` says), and compile() picks the
    fastest up; an explicit plan still wins; the answers match onnxruntime."""
    path = tmp_path / "fc.jsonl"
    results = sparsejit.autotune(fc_model, budget=3, repeats=3, time_bound=1.0, threads=2,
                                 log_path=path, progress=False, finalists=1, rounds=2)
    assert list(results) == ["conv", "fc1", "fc2"]
    untuned = sparsejit.compile(fc_model)
    for name in ("fc1", "fc2"):
        r = results[name]
        assert isinstance(r.plan, SparseFcPlan) and r.speedup > 0
        assert [m.status for m in r.results] == ["ok"] * 3, [m.error for m in r.results]
        info = layer(untuned, name)
        assert info.kernel == f"sparse-fc {r.results[0].plan.variant()}"  # the default first
        mine = [rec for rec in log.read(path) if rec["layer"] == name]
        assert {rec["workload_key"] for rec in mine} == {info.workload_key}
        assert all(rec["threads"] == 1 for rec in mine)
        assert info.workload_key != layer(untuned, "conv").workload_key
    monkeypatch.setenv("SPARSEJIT_TUNING_LOG", str(path))
    x = np.random.default_rng(9).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for threads in (1, 2):
        cm = sparsejit.compile(fc_model, threads=threads)
        for name in ("fc1", "fc2"):
            info = layer(cm, name)
            best = SparseFcPlan(**log.best(info.workload_key, HOST))
            assert info.tuned and info.kernel == f"sparse-fc {best.variant()} (tuned)"
            assert best == results[name].plan
        assert_close(cm(x), run_ort(fc_model, {"data": x})[0], what="pruned FCs with tuned plans")
        cm.close()
    explicit = sparsejit.compile(fc_model, plans={"fc1": {"accumulators": 1}})
    assert not layer(explicit, "fc1").tuned and layer(explicit, "fc2").tuned
    assert "_a1_" in layer(explicit, "fc1").kernel
