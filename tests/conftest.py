"""Shared fixtures: a private object cache for the tests that look at the cache, a private
tuning log for every test, the tiny model."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from sparsejit import models


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SPARSEJIT_CACHE_DIR pointed at an empty directory of this test's own."""
    path = tmp_path / "objcache"
    monkeypatch.setenv("SPARSEJIT_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session", autouse=True)
def private_tuning_log(tmp_path_factory: pytest.TempPathFactory):
    """compile() reads the tuning log: no test may see (or write) the user's own, where plans
    tuned on this machine would change which kernels the tests exercise."""
    path = tmp_path_factory.mktemp("tuning") / "tuning.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEJIT_TUNING_LOG", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_model() -> onnx.ModelProto:
    """The built-in tiny net (seed plan, batch 1). Treat it as read-only."""
    return models.build("tiny")


@pytest.fixture(scope="session")
def tiny_path(tiny_model: onnx.ModelProto, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny net saved as an .onnx file."""
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(tiny_model, str(path))
    return path
