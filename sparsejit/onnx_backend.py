"""sparsejit as an ONNX backend (onnx.backend.base.Backend), so onnx's backend test suite and
tools written against that interface can drive it.

    rep = sparsejit.onnx_backend.prepare(model, "CPU", target="host", threads=1)
    outputs = rep.run([x])

sparsejit compiles static shapes. A model that feeds a shape-deciding value (a Reshape target,
Slice bounds, Split sizes...) as a graph input is therefore compiled at run time, for the values
given, as the model with those inputs made constants; one compiled model is kept per distinct
set of values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .compiler import compile
from .errors import InputError
from .frontend.onnx_import import import_graph, load_model
from .graph.ir import Graph
from .graph.shapes import VALUE_INPUTS
from .runtime.model import CompiledModel


def shape_deciding_inputs(graph: Graph) -> list[str]:
    """The graph inputs whose values reach an input in VALUE_INPUTS, through any chain of nodes
    but Shape (its output is the shape of its input, known at compile time, not its values)."""
    stack = [node.inputs[i] for node in graph.nodes for i in VALUE_INPUTS.get(node.op, ())
             if i < len(node.inputs) and node.inputs[i]]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        producer = graph.producer(tensor)
        if producer is not None and producer.op != "Shape":
            stack.extend(t for t in producer.inputs if t)
    return [name for name in graph.inputs if name in seen]


def with_constant_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` where the graph inputs named in `values` are initializers."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    kept = [vi for vi in frozen.graph.input if vi.name not in values]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    frozen.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items())
    return frozen


class SparseJitRep(BackendRep):
    """A prepared model: run(inputs) with a list (in graph-input order) or a dict."""

    def __init__(self, model: onnx.ModelProto, **options: Any) -> None:
        self.proto, self.options = load_model(model), options
        graph = import_graph(self.proto)
        self.input_names, self.output_names = list(graph.inputs), list(graph.outputs)
        self.dtypes = {name: np.dtype(graph.values[name].dtype) for name in graph.inputs}
        self.specialised = shape_deciding_inputs(graph)
        self._models: dict[tuple, CompiledModel] = {}
        # The common case compiles now, as sparsejit.compile does.
        self.model = None if self.specialised else compile(self.proto, **options)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        elif isinstance(inputs, (list, tuple)):
            feeds = dict(zip(self.input_names, inputs))
        else:
            feeds = {self.input_names[0]: inputs}
        model = self.model
        if model is None:
            values = {name: self._value(name, feeds.pop(name, None)) for name in self.specialised}
            model = self._compiled_for(values)
        outs = model.run(feeds)
        return namedtupledict("Outputs", self.output_names)(*[outs[n] for n in self.output_names])

    def _value(self, name: str, x: Any) -> np.ndarray:
        if x is None:
            raise InputError(f"missing input '{name}'; the model takes {self.input_names}")
        x, want = np.asarray(x), self.dtypes[name]
        if x.dtype != want and not (x.dtype.kind == want.kind == "f"):
            raise InputError(f"input '{name}': dtype {x.dtype}, expected {want}")
        return x.astype(want, copy=False)

    def _compiled_for(self, values: dict[str, np.ndarray]) -> CompiledModel:
        key = tuple((n, v.dtype.str, v.shape, v.tobytes()) for n, v in values.items())
        if key not in self._models:
            self._models[key] = compile(with_constant_inputs(self.proto, values), **self.options)
        return self._models[key]


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
        return SparseJitRep(model, target=target, threads=threads)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)


prepare = SparseJitBackend.prepare
run_model = SparseJitBackend.run_model
supports_device = SparseJitBackend.supports_device
is_compatible = SparseJitBackend.is_compatible
