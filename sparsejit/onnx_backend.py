"""sparsejit as an ONNX backend (onnx.backend.base.Backend), so onnx's backend test suite and
tools written against that interface can drive it.

    rep = sparsejit.onnx_backend.prepare(model, "CPU", target="host", threads=1)
    outputs = rep.run([x])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .compiler import compile
from .runtime.model import CompiledModel


class SparseJitRep(BackendRep):
    """A prepared model: run(inputs) with a list (in graph-input order) or a dict."""

    def __init__(self, model: CompiledModel) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        names = self.model.input_names
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            feeds = dict(zip(names, inputs))
        else:
            feeds = {names[0]: inputs}
        outs = self.model.run(feeds)
        return namedtupledict("Outputs", self.model.output_names)(
            *[outs[n] for n in self.model.output_names])


class SparseJitBackend(Backend):
    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper().startswith("CPU")

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", target: str = "host",
                threads: int | None = 1, **kwargs: Any) -> SparseJitRep:
        if not cls.supports_device(device):
            raise ValueError(f"sparsejit runs on the CPU only, not on '{device}'")
        return SparseJitRep(compile(model, target=target, threads=threads))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)


prepare = SparseJitBackend.prepare
run_model = SparseJitBackend.run_model
supports_device = SparseJitBackend.supports_device
is_compatible = SparseJitBackend.is_compatible
