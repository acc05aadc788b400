"""sparsejit: compile pruned CNNs into native code whose kernels carry each layer's sparsity.

    cm = sparsejit.compile("pruned.onnx", target="host")
    y = cm(x)
    print(cm.report()); print(cm.ir("conv3")); print(cm.asm("conv3"))
    sparsejit.autotune("pruned.onnx")  # search each conv layer's plans; compile() uses the winners
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    CacheError,
    InputError,
    ModelError,
    SparseJitError,
    TargetError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "CompiledModel",
    "InputError",
    "ModelError",
    "SparseJitError",
    "TargetError",
    "UnsupportedError",
    "__version__",
    "autotune",
    "compile",
    "onnx_backend",
]


def __getattr__(name: str) -> Any:
    # The pipeline (onnx, llvmlite) loads on first use, so `import sparsejit` and the CLI's
    # help stay fast and submodules import without pulling in every stage.
    if name == "compile":
        from .compiler import compile

        return compile
    if name == "autotune":
        from .tune.autotune import autotune

        return autotune
    if name == "CompiledModel":
        from .runtime.model import CompiledModel

        return CompiledModel
    if name == "onnx_backend":
        # import_module, not `from . import`: that would look the name up here again, forever.
        return importlib.import_module(".onnx_backend", __name__)
    raise AttributeError(f"module 'sparsejit' has no attribute '{name}'")
