"""Shared fixtures: a private object cache for the tests that look at the cache, the tiny model."""

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
