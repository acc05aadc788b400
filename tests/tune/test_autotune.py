"""autotune() on the tiny net, then compile() picking the tuned plans up from the log."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import sparsejit
from sparsejit import conv_layer
from sparsejit.errors import InputError
from sparsejit.kernels import select
from sparsejit.kernels.direct_conv import DirectConvPlan
from sparsejit.tune import log
from tests.onnx_helpers import run_ort
from tests.test_cli import fails_cleanly, ok, sparsejit_cli
from tests.tolerances import assert_close

from .layers import HOST

TUNED = ["conv2", "conv3"]


@pytest.fixture(scope="module")
def tuned(tiny_model, tmp_path_factory) -> tuple[dict, Path]:
    path = tmp_path_factory.mktemp("tune") / "tuning.jsonl"
    results = sparsejit.autotune(tiny_model, budget=3, repeats=3, time_bound=1.0, layers=TUNED,
                                 log_path=path, progress=False)
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
    assert len(records) == 3 * len(TUNED)
    for name, r in results.items():
        assert isinstance(r.plan, DirectConvPlan) and r.speedup > 0
        plan, speedup = r[:2]
        assert (plan, speedup) == (r.plan, r.speedup)
        assert [m.status for m in r.results] == ["ok"] * 3, [m.error for m in r.results]
        assert default[name].kernel == f"direct {r.results[0].plan.variant()}"  # default first
        assert r.best_s == min(m.median_s for m in r.results)
        assert r.speedup == pytest.approx(r.default_s / r.best_s)
        mine = [rec for rec in records if rec["layer"] == name]
        assert {rec["workload_key"] for rec in mine} == {default[name].workload_key}
        assert all(rec["status"] == "ok" and len(rec["times"]) == 3 for rec in mine)


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
                            None)
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
    assert not (tmp_path / "t.jsonl").exists()


def test_cli_autotune(tiny_path, tmp_path):
    path = tmp_path / "cli.jsonl"
    out = ok(sparsejit_cli("autotune", tiny_path, "--budget", "3", "--repeats", "3",
                           "--layers", "conv3,conv5a", "--log", path))
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["layer", "default", "ms", "best"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"conv3", "conv5a"}
    for row in rows.values():
        assert row[3].endswith("x") and row[4].startswith(("table_", "unrolled_")) and row[5] == "3/3"
    assert str(path) in out
    assert len(log.read(path)) == 6
    fails_cleanly(sparsejit_cli("autotune", tiny_path, "--layers", "pool4", "--log", path),
                  "pool4", "conv3")
