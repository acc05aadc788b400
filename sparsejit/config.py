"""Every environment knob sparsejit reads, in one place.

SPARSEJIT_CACHE_DIR   object cache directory (default: the user cache dir); "off" disables it
SPARSEJIT_LOADER      "elf" (default): load generated code with sparsejit's own ELF loader, falling
                      back to MCJIT for objects it does not support; "mcjit": always MCJIT
SPARSEJIT_DEBUG       1: log compile steps; 2: also print each layer's plan; 3: also its IR
SPARSEJIT_THREADS     default thread count when compile(threads=None)
SPARSEJIT_TUNING_LOG  the autotuner's JSON-lines log (default: tuning.jsonl in the user cache
                      dir); "off" makes compile() ignore tuning results
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path | None:
    """Where compiled objects are cached, or None when caching is off."""
    value = os.environ.get("SPARSEJIT_CACHE_DIR")
    if value is not None and value.strip().lower() in ("off", "0", "none", ""):
        return None
    if value:
        return Path(value).expanduser()
    return Path(platformdirs.user_cache_dir("sparsejit"))


def tuning_log() -> Path | None:
    """The tuning log compile() reads and autotune() appends to, or None when it is off."""
    value = os.environ.get("SPARSEJIT_TUNING_LOG")
    if value is not None and value.strip().lower() in ("off", "0", "none", ""):
        return None
    if value:
        return Path(value).expanduser()
    return Path(platformdirs.user_cache_dir("sparsejit")) / "tuning.jsonl"


def loader() -> str:
    """How generated objects are loaded: "elf" (sparsejit's loader, MCJIT as fallback) or
    "mcjit"."""
    value = os.environ.get("SPARSEJIT_LOADER", "elf").strip().lower() or "elf"
    if value not in ("elf", "mcjit"):
        raise ValueError(f"SPARSEJIT_LOADER must be 'elf' or 'mcjit', not {value!r}")
    return value


def debug_level() -> int:
    try:
        return int(os.environ.get("SPARSEJIT_DEBUG", "0"))
    except ValueError:
        return 0


def default_threads() -> int:
    value = os.environ.get("SPARSEJIT_THREADS")
    if value:
        return max(1, int(value))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
