"""Jinja2 environment over templates/ and the literal formatting the templates share.

Templates are rendered with StrictUndefined: a missing parameter is an error, not empty text.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import numpy as np


def _template_dir() -> Path:
    """templates/ installed inside the package (sparsejit/templates), else the source tree's."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "templates", package.parent / "templates"):
        if any(candidate.glob("*.ll.j2")):
            return candidate
    raise FileNotFoundError(f"sparsejit templates not found next to {package}")


@lru_cache(maxsize=1)
def environment():
    # imported here: a warm load takes every object from the cache and renders nothing, and
    # jinja2's import is 30 ms of a 0.8 s warm compile
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@lru_cache(maxsize=1)
def templates_digest() -> str:
    """A hash of every template's text and of the codegen modules that fill them in: part of
    each kernel's source key (a key names what a kernel is rendered from, not its IR text, so a
    change to a renderer must change it too, or a warm cache would serve the old code)."""
    h = hashlib.sha256()
    renderers = sorted(Path(__file__).resolve().parent.glob("*.py"))
    for path in sorted(_template_dir().glob("*.j2")) + renderers:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class KernelSource:
    """A kernel's IR, rendered only when needed, and a key naming everything it is rendered
    from: a warm object cache then loads the object without rendering (or hashing) the IR."""

    def __init__(self, render_fn, *key_parts: object) -> None:
        h = hashlib.sha256(templates_digest().encode())
        for part in key_parts:
            data = part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode()
            h.update(len(data).to_bytes(8, "little") + data)
        self.key = h.hexdigest()
        self._render = render_fn
        self._text: str | None = None

    @property
    def available(self) -> bool:
        """False once released: the text can no longer be rendered from here."""
        return self._render is not None

    @property
    def text(self) -> str:
        if self._text is None:
            if self._render is None:
                raise RuntimeError("kernel source released after compilation (re-lower to render it)")
            self._text = self._render()
        return self._text

    def release(self) -> None:
        """Drop the render closure and the text: they hold the layer's weights and pattern."""
        self._render = None
        self._text = None


def render(template: str, **params: object) -> str:
    return environment().get_template(template).render(**params)


def symbol(*parts: str) -> str:
    """A C-like symbol from parts (layer names may hold '/', '.', ':')."""
    return "_".join(re.sub(r"[^A-Za-z0-9_]", "_", p) for p in parts)


def i32_list(values: np.ndarray) -> str:
    """`i32 a, i32 b, ...` for an integer or float32 array (floats as their bit patterns)."""
    arr = np.ascontiguousarray(values)
    if arr.dtype == np.float32:
        arr = arr.view(np.int32)
    if arr.size == 0:
        return ""
    return "i32 " + ", i32 ".join(map(str, arr.astype(np.int64).ravel().tolist()))


def float_literal(value: float) -> str:
    """An exact LLVM IR float literal (the f32 value as the hex of its double)."""
    as_double = float(np.float32(value))
    return "0x%016X" % np.array(as_double, np.float64).view(np.uint64)


def float_list(values: np.ndarray) -> str:
    arr = np.asarray(values, np.float32).astype(np.float64).view(np.uint64).ravel()
    return ", ".join("float 0x%016X" % v for v in arr.tolist())


def halving_steps(vector_width: int) -> list[tuple[int, str, str]]:
    """A horizontal reduction's steps: (width after the step, low-half lanes, high-half lanes)."""
    steps = []
    h = vector_width // 2
    while h >= 1:
        steps.append((h, ", ".join(f"i32 {i}" for i in range(h)),
                      ", ".join(f"i32 {i}" for i in range(h, 2 * h))))
        h //= 2
    return steps


def splat(vector_width: int, element: str) -> str:
    """Elements of a constant vector, e.g. splat(4, 'float 0.0') -> 'float 0.0, float 0.0, ...'."""
    return ", ".join([element] * vector_width)


_HEX_ESCAPES = np.frombuffer("".join("\\%02X" % i for i in range(256)).encode(), np.uint8).reshape(256, 3)


def byte_string(values: np.ndarray) -> str:
    """The bytes of an array as an LLVM `c"..."` body. Large tables go in this form: LLVM parses
    one string token ~20x faster than a list of typed integers, and numpy escapes it fast."""
    raw = np.frombuffer(np.ascontiguousarray(values).tobytes(), np.uint8)
    return _HEX_ESCAPES[raw].tobytes().decode("ascii")
