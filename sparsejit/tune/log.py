"""The tuning log: one JSON record per measured candidate plan, appended, never rewritten.

A record is keyed by the layer's workload key (kind, shape, density and nonzero pattern: two
layers of one shape but different patterns are different workloads) and the target's cpu and features.
Failures are recorded too, so a log says what was tried; an autotuner's confirmation round
adds one "confirmed" record per re-timed finalist, which outranks unconfirmed ones. Reading
skips, with a warning naming the file and line, any line that does not parse or is of another
format version; `best` answers compile()'s question "is there a tuned plan for this layer?" from
an index rebuilt only when the file changes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, config
from ..kernels.direct_conv import ConvWorkload
from ..kernels.sparse_fc import SparseFcWorkload
from ..targets import Target

VERSION = 1
STATUSES = ("ok", "wrong", "error", "timeout")
_REQUIRED = {"workload_key": str, "target": dict, "plan": dict, "status": str}

_lock = threading.Lock()
# path -> ((mtime_ns, size), {(workload_key, cpu, features): fastest ok record})
_index_cache: dict[Path, tuple[tuple[int, int], dict[tuple, dict]]] = {}


def workload_key(workload: ConvWorkload, weight: np.ndarray) -> str:
    """sha256 of the workload's fields, the weight density and the nonzero pattern (not values:
    they do not change the code's speed, the positions do)."""
    nonzero = np.ascontiguousarray(weight) != 0
    pattern = hashlib.sha256(np.packbits(nonzero).tobytes() + repr(weight.shape).encode())
    layer = asdict(workload)
    if not layer["flat_stride"]:  # keys from before flat runs existed stay valid
        del layer["flat_stride"]
    fields = {**layer, "density": round(float(nonzero.mean()) if nonzero.size else 0.0, 6),
              "pattern": pattern.hexdigest()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def fc_workload_key(workload: SparseFcWorkload, weight: np.ndarray) -> str:
    """As workload_key, for a pruned FC run row by row (its kind in the key: no conv's key
    can equal it)."""
    nonzero = np.ascontiguousarray(weight) != 0
    pattern = hashlib.sha256(np.packbits(nonzero).tobytes() + repr(weight.shape).encode())
    fields = {"kind": "sparse_fc_rows", **asdict(workload),
              "density": round(float(nonzero.mean()) if nonzero.size else 0.0, 6),
              "pattern": pattern.hexdigest()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def target_key(target: Target) -> dict[str, str]:
    return {"cpu": target.cpu, "features": target.features}


def default_path() -> Path | None:
    return config.tuning_log()


def make_record(workload_key: str, target: Target, plan: dict, status: str,
                median_s: float | None, times: list[float], error: str | None,
                **extra: Any) -> dict:
    """A log record; `extra` adds informative fields (layer name, workload) that readers ignore."""
    from .. import llvm

    assert status in STATUSES, status
    return {"version": VERSION, "workload_key": workload_key, "target": target_key(target),
            "plan": plan, "status": status, "median_s": median_s, "times": list(times),
            "error": error, "sparsejit": __version__, "llvm": llvm.toolchain_id(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **extra}


def append(records: list[dict], path: Path | None = None) -> Path:
    """Append records to the log (created with its directory when missing), one line each."""
    path = Path(path) if path is not None else default_path()
    if path is None:
        raise ValueError("the tuning log is off (SPARSEJIT_TUNING_LOG=off): give a log path")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    # one write of whole lines in append mode: concurrent tuners interleave lines, not bytes
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return path


def read(path: Path | None = None) -> list[dict]:
    """Every valid record of the log, in file order; [] when there is no log."""
    path = Path(path) if path is not None else default_path()
    if path is None or not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record, problem = _parse(line)
            if problem:
                warnings.warn(f"sparsejit: {path}:{number}: skipping tuning record ({problem})",
                              stacklevel=2)
            else:
                records.append(record)
    return records


def _parse(line: str) -> tuple[dict | None, str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    if record.get("version") != VERSION:
        return None, f"format version {record.get('version')!r}, this sparsejit reads {VERSION}"
    for name, kind in _REQUIRED.items():
        if not isinstance(record.get(name), kind):
            return None, f"field '{name}' missing or not a {kind.__name__}"
    target = record["target"]
    if not (isinstance(target.get("cpu"), str) and isinstance(target.get("features"), str)):
        return None, "target needs 'cpu' and 'features' strings"
    if record["status"] not in STATUSES:
        return None, f"unknown status {record['status']!r}"
    median = record.get("median_s")
    if record["status"] == "ok" and not (isinstance(median, (int, float)) and median > 0):
        return None, "an 'ok' record needs a positive median_s"
    return record, None


def _build_index(records: list[dict]) -> dict[tuple, dict]:
    """Fastest 'ok' record per (workload, cpu, features, threads), and per (workload, cpu,
    features, None) over every thread count: a lookup for a thread count nobody tuned falls
    back to the fastest plan measured at any. Where a key has confirmed records (an
    autotuner's re-timed finalists), only those compete: a search's single lucky sample on a
    noisy machine does not beat a plan re-timed over several rounds."""
    index: dict[tuple, dict] = {}
    for r in records:
        if r["status"] != "ok":
            continue
        threads = r.get("threads")
        for t in {threads if isinstance(threads, int) else None, None}:
            k = (r["workload_key"], r["target"]["cpu"], r["target"]["features"], t)
            if k not in index or _beats(r, index[k]):
                index[k] = r
    return index


def _beats(record: dict, held: dict) -> bool:
    confirmed, held_confirmed = record.get("confirmed") is True, held.get("confirmed") is True
    if confirmed != held_confirmed:
        return confirmed
    return record["median_s"] < held["median_s"]


def _index(path: Path) -> dict[tuple, dict]:
    try:
        st = os.stat(path)
    except OSError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size)
    with _lock:
        cached = _index_cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    index = _build_index(read(path))
    with _lock:
        _index_cache[path] = (stamp, index)
    return index


def best_record(workload_key: str, target: Target, path: Path | None = None,
                threads: int | None = None) -> dict | None:
    """The fastest 'ok' record for this workload on this target (same cpu and features),
    measured with `threads` threads when the log has one, else at any thread count."""
    path = Path(path) if path is not None else default_path()
    if path is None:
        return None
    t = target_key(target)
    index = _index(path.resolve())
    base = (workload_key, t["cpu"], t["features"])
    return index.get((*base, threads)) or index.get((*base, None))


def best(workload_key: str, target: Target, path: Path | None = None,
         threads: int | None = None) -> dict | None:
    """The plan fields of the fastest 'ok' record for this workload and target (preferring
    those timed with `threads` threads), or None."""
    record = best_record(workload_key, target, path, threads)
    return None if record is None else dict(record["plan"])
