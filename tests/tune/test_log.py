"""The tuning log: keys, round trip, best(), corrupted lines, the cache of the parsed log."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import platformdirs
import pytest

from sparsejit import config, targets
from sparsejit.kernels.direct_conv import DirectConvPlan
from sparsejit.tune import log

from .layers import SPARSE_3X3, weights

HOST, AVX2 = targets.get("host"), targets.get("avx2")


def plan(**fields) -> dict:
    return asdict(DirectConvPlan(**fields))


def rec(key: str, target=HOST, status: str = "ok", median: float | None = 1e-3, **fields) -> dict:
    times = [] if median is None else [median, median * 1.1, median * 0.9]
    return log.make_record(key, target, plan(**fields), status, median, times,
                           None if status == "ok" else "boom")


def test_workload_key_is_the_shape_and_the_pattern_not_the_values():
    w = weights(SPARSE_3X3, 0.3, seed=1)
    key = log.workload_key(SPARSE_3X3, w)
    assert key == log.workload_key(SPARSE_3X3, w * 2.5)  # same positions, other values
    other = w.copy()
    flat = other.reshape(-1)
    i, j = int(np.flatnonzero(flat)[0]), int(np.flatnonzero(flat == 0)[0])
    flat[i], flat[j] = 0.0, 1.0  # one nonzero moved: same shape, same density
    assert log.workload_key(SPARSE_3X3, other) != key
    assert log.workload_key(replace(SPARSE_3X3, pads=(0, 0, 0, 0)), w) != key
    assert len(key) == 64 and int(key, 16) >= 0


def test_round_trip_and_record_fields(tmp_path):
    path = tmp_path / "sub" / "tuning.jsonl"
    records = [rec("a", rows_per_tile=2), rec("a", status="wrong", median=None)]
    assert log.append(records, path) == path
    log.append([rec("b")], path)
    back = log.read(path)
    assert back[:2] == json.loads(json.dumps(records)) and back[2]["workload_key"] == "b"
    first = back[0]
    assert first["version"] == 1 and first["target"] == {"cpu": HOST.cpu, "features": HOST.features}
    assert first["plan"]["rows_per_tile"] == 2 and first["status"] == "ok"
    assert len(first["times"]) == 3 and first["error"] is None
    assert first["sparsejit"] and first["llvm"].startswith("llvmlite") and "T" in first["time"]
    assert back[1]["status"] == "wrong" and back[1]["error"] == "boom"
    assert len(path.read_text().splitlines()) == 3  # one line per record


def test_best_is_the_fastest_ok_record_of_this_key_and_target(tmp_path):
    path = tmp_path / "t.jsonl"
    log.append([
        rec("k", median=3e-3, rows_per_tile=1),
        rec("k", median=1e-3, rows_per_tile=2),  # the answer
        rec("k", median=2e-3, rows_per_tile=3),
        rec("k", status="wrong", median=1e-9, rows_per_tile=4),  # fast but wrong
        rec("k", status="timeout", median=None, rows_per_tile=5),
        rec("k", target=AVX2, median=1e-6, rows_per_tile=6, vector_width=8),  # another target
        rec("other", median=1e-7, rows_per_tile=7),  # another workload
    ], path)
    assert log.best("k", HOST, path)["rows_per_tile"] == 2
    assert log.best("k", AVX2, path)["rows_per_tile"] == 6
    assert log.best("other", HOST, path)["rows_per_tile"] == 7
    assert log.best("k", targets.get("sse"), path) is None
    assert log.best("unknown", HOST, path) is None
    assert log.best("k", HOST, tmp_path / "missing.jsonl") is None


def test_best_prefers_plans_timed_with_the_models_thread_count(tmp_path):
    path = tmp_path / "t.jsonl"
    one = [log.make_record("k", HOST, plan(rows_per_tile=r), "ok", m, [m], None, threads=1)
           for r, m in ((1, 2e-3), (2, 3e-3))]
    two = [log.make_record("k", HOST, plan(rows_per_tile=r), "ok", m, [m], None, threads=2)
           for r, m in ((3, 1.5e-3), (4, 1e-3))]
    log.append(one + two, path)
    assert log.best("k", HOST, path, threads=1)["rows_per_tile"] == 1
    assert log.best("k", HOST, path, threads=2)["rows_per_tile"] == 4
    assert log.best("k", HOST, path, threads=8)["rows_per_tile"] == 4  # untuned count: any
    assert log.best("k", HOST, path)["rows_per_tile"] == 4


def test_a_corrupted_line_is_skipped_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "t.jsonl"
    log.append([rec("k", median=2e-3, rows_per_tile=1)], path)
    with open(path, "a") as f:
        f.write('{"version": 1, "workload_key": "k", "status": "ok", "median_s": 1e-9, "pl\n')
        f.write("\n")  # blank lines are not records, and not errors
        f.write(json.dumps({**rec("k", median=1e-9), "version": 99}) + "\n")
        f.write(json.dumps({**rec("k", median=1e-9), "status": "fast"}) + "\n")
        f.write(json.dumps({**rec("k"), "median_s": None}) + "\n")
        f.write("[1, 2]\n")
    log.append([rec("k", median=1e-3, rows_per_tile=2)], path)
    with pytest.warns(UserWarning) as caught:
        records = log.read(path)
    assert [r["plan"]["rows_per_tile"] for r in records] == [1, 2]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 5, messages
    for line, words in ((2, "not JSON"), (4, "version 99"), (5, "unknown status"),
                        (6, "median_s"), (7, "not a JSON object")):
        assert any(f"{path}:{line}:" in m and words in m for m in messages), (line, messages)
    with pytest.warns(UserWarning) as caught:  # best() reads the same way
        assert log.best("k", HOST, path)["rows_per_tile"] == 2
    assert len(caught) == 5 and f"{path}:2:" in str(caught[0].message)


def test_the_parsed_log_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    log.append([rec("k", median=2e-3, rows_per_tile=1)], path)
    reads = []
    real_read = log.read
    monkeypatch.setattr(log, "read", lambda p=None: reads.append(p) or real_read(p))
    for _ in range(3):
        assert log.best("k", HOST, path)["rows_per_tile"] == 1
    assert len(reads) == 1
    log.append([rec("k", median=1e-3, rows_per_tile=2)], path)
    assert log.best("k", HOST, path)["rows_per_tile"] == 2
    assert len(reads) == 2


def test_the_default_path_and_off(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEJIT_TUNING_LOG", str(tmp_path / "mine.jsonl"))
    assert config.tuning_log() == tmp_path / "mine.jsonl"
    log.append([rec("k")], None)
    assert (tmp_path / "mine.jsonl").exists() and log.best("k", HOST)["rows_per_tile"] == 4
    monkeypatch.setenv("SPARSEJIT_TUNING_LOG", "off")
    assert config.tuning_log() is None and log.best("k", HOST) is None
    with pytest.raises(ValueError, match="off"):
        log.append([rec("k")])
    monkeypatch.delenv("SPARSEJIT_TUNING_LOG")
    assert config.tuning_log() == Path(platformdirs.user_cache_dir("sparsejit")) / "tuning.jsonl"
