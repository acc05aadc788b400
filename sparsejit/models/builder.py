"""A small layer-by-layer ONNX graph builder with seeded, He-scaled, magnitude-pruned weights.

Each method appends one node named like the original framework's layer, whose output tensor
carries the same name, and chains from the previous layer unless given `x`. The builder tracks
per-sample shapes so the zoo reads like a layer list (no in-channel or fc-size bookkeeping).
With `materialize=False` it records the architecture only, which is how density plans are
computed without generating weights.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .pruning import WeightLayer, prune_in_place

OPSET = 13
BN_EPSILON = 1e-5


def conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """Output extent of a convolution along one spatial axis."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def pool_out(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Output extent of a pooling along one axis; `ceil` rounds up as Caffe pools do."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    # A rounded-up last window must still start inside the image (or its left padding).
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """Gaussian weights with std sqrt(2 / fan_in), so ReLU nets keep their activation scale."""
    std = np.float32(math.sqrt(2.0 / fan_in))
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= std
    # float32 draws are exactly 0.0 about once in 8M; in a dense layer such an entry would
    # read as a pruned weight, so it becomes a typical (nonzero) value instead.
    w[w == 0] = std
    return w


def prune_keeping_energy(w: np.ndarray, density: float) -> None:
    """Magnitude-prune `w` in place, then rescale the survivors to the dense tensor's L2 norm.

    Pruned nets are fine-tuned to recover their accuracy; without that step every pruned layer
    would shrink activations (by ~0.66x at 10 %) and deep nets would fade to zero.
    """
    flat = w.reshape(-1)
    dense_energy = float(np.dot(flat, flat))
    prune_in_place(flat, density)
    kept_energy = float(np.dot(flat, flat))
    if kept_energy > 0.0:
        flat *= np.float32(math.sqrt(dense_energy / kept_energy))


class NetBuilder:
    """Builds one CNN graph; see the module docstring."""

    def __init__(
        self,
        name: str,
        input_shape: tuple[int, int, int],
        *,
        batch: int | None = 1,
        seed: int = 0,
        densities: dict[str, float] | None = None,
        materialize: bool = True,
        input_name: str = "data",
    ) -> None:
        self.name = name
        self.batch: int | str = "N" if batch is None else batch
        self.seed = seed
        self.densities = densities or {}
        self.materialize = materialize
        self.input_name = input_name
        self.nodes: list[onnx.NodeProto] = []
        # Weights go straight into the model proto as they are made, so only one tensor at a
        # time also exists as an array (VGG-16 holds 550 MB of them).
        self.proto = onnx.ModelProto()
        self.layers: list[WeightLayer] = []
        self.shapes: dict[str, tuple[int, ...]] = {input_name: tuple(input_shape)}
        self.last = input_name

    # ---- layers with weights -------------------------------------------------------------

    def conv(
        self, name: str, out_channels: int, kernel: int, *, stride: int = 1, pad: int = 0,
        group: int = 1, dilation: int = 1, bias: bool = True, x: str | None = None,
    ) -> str:
        x = x or self.last
        c, h, w = self.shapes[x]
        if c % group or out_channels % group:
            raise ValueError(f"{name}: channels {c}->{out_channels} not divisible by {group=}")
        fan_in = c // group * kernel * kernel
        inputs = [x, self._weight(name, (out_channels, c // group, kernel, kernel), fan_in)]
        if bias:
            inputs.append(self._bias(name, out_channels))
        self.layers.append(WeightLayer(name, "Conv", (kernel, kernel)))
        out = (out_channels, conv_out(h, kernel, stride, pad, dilation),
               conv_out(w, kernel, stride, pad, dilation))
        return self._node(
            "Conv", name, inputs, out, kernel_shape=[kernel, kernel], strides=[stride, stride],
            pads=[pad] * 4, dilations=[dilation, dilation], group=group,
        )

    def gemm(self, name: str, out_features: int, *, x: str | None = None) -> str:
        """A fully connected layer: y = x W^T + b, W stored (out, in) as Caffe and torch do."""
        x = x or self.last
        (in_features,) = self.shapes[x]
        weight = self._weight(name, (out_features, in_features), in_features)
        self.layers.append(WeightLayer(name, "Gemm"))
        return self._node(
            "Gemm", name, [x, weight, self._bias(name, out_features)], (out_features,), transB=1
        )

    def bn(self, name: str, *, gamma_mean: float = 1.0, x: str | None = None) -> str:
        """Inference BatchNormalization with plausible trained statistics."""
        x = x or self.last
        channels = self.shapes[x][0]
        inputs = [x] + [f"{name}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
        if self.materialize:
            rng = self._rng(name)
            gamma = gamma_mean * (1.0 + 0.1 * rng.standard_normal(channels))
            beta = 0.05 * rng.standard_normal(channels)
            mean = 0.1 * rng.standard_normal(channels)
            var = rng.uniform(0.5, 1.5, channels)
            for tensor, value in zip(inputs[1:], (gamma, beta, mean, var)):
                self._initializer(tensor, value.astype(np.float32))
        return self._node("BatchNormalization", name, inputs, self.shapes[x], epsilon=BN_EPSILON)

    # ---- parameter-free layers -----------------------------------------------------------

    def relu(self, name: str, *, x: str | None = None) -> str:
        x = x or self.last
        return self._node("Relu", name, [x], self.shapes[x])

    def maxpool(self, name: str, kernel: int, stride: int, *, pad: int = 0, ceil: bool = False,
                x: str | None = None) -> str:
        return self._pool("MaxPool", name, kernel, stride, pad, ceil, x)

    def avgpool(self, name: str, kernel: int, stride: int, *, pad: int = 0, ceil: bool = False,
                x: str | None = None) -> str:
        return self._pool("AveragePool", name, kernel, stride, pad, ceil, x)

    def global_avgpool(self, name: str, *, x: str | None = None) -> str:
        x = x or self.last
        return self._node("GlobalAveragePool", name, [x], (self.shapes[x][0], 1, 1))

    def lrn(self, name: str, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
            bias: float = 1.0, *, x: str | None = None) -> str:
        """Cross-channel LRN; ONNX, like Caffe, divides alpha by `size`."""
        x = x or self.last
        return self._node("LRN", name, [x], self.shapes[x], size=size, alpha=alpha, beta=beta,
                          bias=bias)

    def flatten(self, name: str, *, x: str | None = None) -> str:
        x = x or self.last
        return self._node("Flatten", name, [x], (math.prod(self.shapes[x]),), axis=1)

    def dropout(self, name: str, *, x: str | None = None) -> str:
        """Inference-mode Dropout: the identity (the training ratio is irrelevant, so omitted)."""
        x = x or self.last
        return self._node("Dropout", name, [x], self.shapes[x])

    def softmax(self, name: str, *, x: str | None = None) -> str:
        x = x or self.last
        return self._node("Softmax", name, [x], self.shapes[x], axis=-1)

    def concat(self, name: str, inputs: Sequence[str]) -> str:
        """Concatenate on channels; the spatial extents must agree."""
        spatial = {self.shapes[i][1:] for i in inputs}
        if len(spatial) != 1:
            raise ValueError(f"{name}: cannot concat spatial shapes {sorted(spatial)}")
        channels = sum(self.shapes[i][0] for i in inputs)
        return self._node("Concat", name, list(inputs), (channels, *spatial.pop()), axis=1)

    def add(self, name: str, a: str, b: str) -> str:
        if self.shapes[a] != self.shapes[b]:
            raise ValueError(f"{name}: cannot add {self.shapes[a]} and {self.shapes[b]}")
        return self._node("Add", name, [a, b], self.shapes[a])

    # ---- output --------------------------------------------------------------------------

    def model(self, doc: str = "") -> onnx.ModelProto:
        """The ONNX model whose single output is the last layer built; call it once."""
        def info(tensor: str) -> onnx.ValueInfoProto:
            dims = [self.batch, *self.shapes[tensor]]
            return helper.make_tensor_value_info(tensor, TensorProto.FLOAT, dims)

        # Filled in place rather than through make_graph/make_model, which copy their
        # arguments, initializers included.
        model = self.proto
        opset = helper.make_opsetid("", OPSET)
        model.opset_import.append(opset)
        model.ir_version = helper.find_min_ir_version_for([opset])
        model.producer_name = "sparsejit.models"
        model.graph.name = self.name
        model.graph.doc_string = doc
        model.graph.node.extend(self.nodes)
        model.graph.input.append(info(self.input_name))
        model.graph.output.append(info(self.last))
        return model

    # ---- helpers -------------------------------------------------------------------------

    def _node(self, op: str, name: str, inputs: list[str], out_shape: tuple[int, ...],
              **attrs: object) -> str:
        if name in self.shapes:
            raise ValueError(f"duplicate layer name '{name}'")
        if any(d < 1 for d in out_shape):
            raise ValueError(f"{name}: output shape {out_shape} is empty; input image too small")
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        self.shapes[name] = tuple(out_shape)
        self.last = name
        return name

    def _pool(self, op: str, name: str, kernel: int, stride: int, pad: int, ceil: bool,
              x: str | None) -> str:
        x = x or self.last
        c, h, w = self.shapes[x]
        out = (c, pool_out(h, kernel, stride, pad, ceil), pool_out(w, kernel, stride, pad, ceil))
        attrs: dict[str, object] = {"kernel_shape": [kernel, kernel], "strides": [stride, stride],
                                    "pads": [pad] * 4}
        if ceil:
            attrs["ceil_mode"] = 1
        return self._node(op, name, [x], out, **attrs)

    def _rng(self, tensor: str) -> np.random.Generator:
        # One stream per tensor: weights depend on (seed, name) only, not on build order or on
        # the shapes of earlier layers, so variants of a net share their common weights.
        return np.random.default_rng([self.seed, zlib.crc32(tensor.encode())])

    def _weight(self, layer: str, shape: tuple[int, ...], fan_in: int) -> str:
        tensor = f"{layer}.weight"
        if self.materialize:
            w = he_normal(self._rng(tensor), shape, fan_in)
            density = self.densities.get(layer, 1.0)
            if density < 1.0:
                prune_keeping_energy(w, density)
            self._initializer(tensor, w)
        return tensor

    def _bias(self, layer: str, size: int) -> str:
        tensor = f"{layer}.bias"
        if self.materialize:
            bias = 0.01 * self._rng(tensor).standard_normal(size, dtype=np.float32)
            self._initializer(tensor, bias)
        return tensor

    def _initializer(self, tensor: str, value: np.ndarray) -> None:
        init = self.proto.graph.initializer.add()
        init.name = tensor
        init.data_type = TensorProto.FLOAT
        init.dims.extend(value.shape)
        init.raw_data = value.astype("<f4", copy=False).tobytes()  # ONNX is little-endian
