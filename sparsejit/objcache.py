"""The on-disk object cache: compiled object code keyed by a hash of everything that made it.

An entry is `MAGIC | key | sha256(payload) | len(payload) | payload`, written atomically. A
truncated, corrupted or misplaced entry (its key is not the one asked for) fails the check, is
reported as a warning, and is recompiled: never loaded. The directory comes from
`config.cache_dir()` (SPARSEJIT_CACHE_DIR).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import warnings
from pathlib import Path

from . import __version__, config

MAGIC = b"SPJITOB2"
FORMAT_VERSION = "3"  # 2: large code model objects; 3: key in the entry header
_HEADER = struct.Struct("<8s32s32sQ")


def key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in (FORMAT_VERSION, __version__, *parts):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _path(k: str) -> Path | None:
    root = config.cache_dir()
    return None if root is None else root / k[:2] / f"{k}.o"


def load(k: str) -> bytes | None:
    path = _path(k)
    if path is None or not path.exists():
        return None
    try:
        blob = path.read_bytes()
        magic, stored_key, digest, length = _HEADER.unpack_from(blob)
        payload = blob[_HEADER.size:]
        if magic != MAGIC or stored_key != bytes.fromhex(k):
            raise ValueError("not the entry for this key")
        if length != len(payload) or hashlib.sha256(payload).digest() != digest:
            raise ValueError("checksum or length mismatch")
        return payload
    except (OSError, ValueError, struct.error) as exc:
        warnings.warn(f"sparsejit: ignoring corrupted cache entry {path} ({exc}); recompiling",
                      stacklevel=3)
        try:
            path.unlink()
        except OSError:
            pass
        return None


def store(k: str, payload: bytes) -> None:
    path = _path(k)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        header = _HEADER.pack(MAGIC, bytes.fromhex(k), hashlib.sha256(payload).digest(), len(payload))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(header + payload)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full cache dir must not stop compilation
        warnings.warn(f"sparsejit: could not write cache entry {path}: {exc}", stacklevel=3)
