"""Graph rewrites that do not change results: drop Identity/Dropout, fold BatchNormalization and
per-channel scale/shift into the preceding conv's constant weights and bias.

Each pass is a plain function that edits the graph in place. Folding needs the conv weight (and
bias, if any) and the folded parameters to be constants, and the conv output to feed only the
folded node; otherwise the node is left as it is (the reference runs it).
"""

from __future__ import annotations

import numpy as np

from .ir import Graph, Node, Value


def _read_elsewhere(graph: Graph, tensor: str, reader: Node | None = None) -> bool:
    """True if `tensor` is a graph output or read by a node other than `reader`."""
    if tensor in graph.outputs:
        return True
    return any(n is not reader for n in graph.consumers(tensor))


def _replace_uses(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if t == old else t for t in node.inputs]


def _rename(graph: Graph, old: str, new: str) -> None:
    """Rename tensor `old` to `new` everywhere (its producer, readers and value)."""
    for node in graph.nodes:
        node.outputs = [new if t == old else t for t in node.outputs]
    _replace_uses(graph, old, new)
    value = graph.values.pop(old)
    value.name = new
    graph.values[new] = value


def _drop(graph: Graph, node: Node) -> None:
    graph.nodes = [n for n in graph.nodes if n is not node]


def _remove_identity(graph: Graph, node: Node) -> bool:
    x, y = node.inputs[0], node.outputs[0]
    if any(_read_elsewhere(graph, t) for t in node.outputs[1:] if t):
        return False  # the Dropout mask is used
    data = graph.const(x)
    if y not in graph.outputs:
        _drop(graph, node)
        _replace_uses(graph, y, x)
        graph.values.pop(y, None)
    elif data is not None:
        _drop(graph, node)
        graph.values[y] = Value(y, data.dtype, data.shape, data)
    elif graph.producer(x) is not None and x not in graph.outputs:
        # Keep the graph output's name: the producer writes it directly.
        _drop(graph, node)
        graph.values.pop(y, None)
        _rename(graph, x, y)
    else:
        return False  # a graph input (or output) passed through: nothing to rewire
    for t in node.outputs[1:]:
        graph.values.pop(t, None)
    return True


def remove_identities(graph: Graph) -> None:
    """Remove Identity and (inference) Dropout nodes, rewiring their readers to their input.

    When the removed output is a graph output, the producer's output takes its name instead;
    a pass-through of a graph input or of another graph output is kept."""
    for node in list(graph.nodes):
        if node.op in ("Identity", "Dropout"):
            _remove_identity(graph, node)


def _conv_feeding(graph: Graph, node: Node, tensor: str) -> Node | None:
    """The Conv with constant weights that produces `tensor` for `node` alone, or None."""
    conv = graph.producer(tensor)
    if conv is None or conv.op != "Conv" or _read_elsewhere(graph, tensor, node):
        return None
    if graph.const(conv.inputs[1]) is None:
        return None
    if len(conv.inputs) > 2 and conv.inputs[2] and graph.const(conv.inputs[2]) is None:
        return None
    return conv


def _conv_params(graph: Graph, conv: Node) -> tuple[np.ndarray, np.ndarray]:
    """The conv's weight, in at least float32, and bias (zeros if it has none) in float64, for
    folding. The weight is not widened to float64: a float32 product of it and a float32
    scale is within an ulp of the float64 one rounded, and converting ResNet-50's 25 M weights
    to float64 and back took a quarter of a warm compile (0.25 of 0.87 s)."""
    w = graph.const(conv.inputs[1])
    b = graph.const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
    b = np.zeros(w.shape[0]) if b is None else b
    return w.astype(np.promote_types(w.dtype, np.float32), copy=False), b.astype(np.float64)


def _scaled_weights(graph: Graph, conv: Node, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`w` [M, ...] (the conv's weight, from _conv_params) times the per-output-channel factors
    `v` [M], in w's dtype: in place when w is the constant itself and read by this conv alone
    (bind() folds on its own deep copy of the graph). New arrays cost ResNet-50's warm compile
    0.3 s in first touches of 100 MB here."""
    factors = v.astype(w.dtype).reshape((-1,) + (1,) * (w.ndim - 1))
    name = conv.inputs[1]
    readers = graph.consumers(name)
    if (w is graph.const(name) and w.flags.writeable and name not in graph.outputs
            and len(readers) == 1 and readers[0] is conv and not _shared(graph, name, w)):
        del graph.values[name]  # its data is now the folded weight, under a new name
        return np.multiply(w, factors, out=w)
    return w * factors


def _shared(graph: Graph, name: str, data: np.ndarray) -> bool:
    """Does another constant of the graph hold (part of) `data`? A bias-only fold passes the
    weight on as it is, so two names can hold one array."""
    return any(v.const is not None and np.may_share_memory(v.const, data)
               for other, v in graph.values.items() if other != name)


def _set_conv_params(
    graph: Graph, conv: Node, w: np.ndarray, b: np.ndarray, dtype: np.dtype, absorbed: Node
) -> None:
    """Give `conv` new weight/bias constants (new names: the old ones may be shared) and make it
    write the output of the `absorbed` node, which is removed."""
    names = []
    for suffix, data in (("W", w), ("B", b)):
        name = graph.fresh_name(f"{conv.name}__{suffix}_folded")
        data = data.astype(dtype, copy=False)  # no copy of what is already dtype
        graph.values[name] = Value(name, data.dtype, data.shape, data)
        names.append(name)
    conv.inputs = [conv.inputs[0], *names]
    old, new = conv.outputs[0], absorbed.outputs[0]
    conv.outputs[0] = new
    graph.values.pop(old, None)
    _drop(graph, absorbed)


def fold_batchnorm(graph: Graph) -> None:
    """Fold each BatchNormalization that directly follows a Conv (read by nothing else) into
    the conv: W' = W * s, b' = (b - mean) * s + beta with s = scale / sqrt(var + eps)."""
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization":
            continue
        conv = _conv_feeding(graph, bn, bn.inputs[0])
        params = [graph.const(t) for t in bn.inputs[1:5]]
        if conv is None or any(p is None for p in params):
            continue
        scale, beta, mean, var = (p.astype(np.float64) for p in params)
        w, b = _conv_params(graph, conv)
        s = scale / np.sqrt(var + bn.attrs["epsilon"])
        dtype = graph.const(conv.inputs[1]).dtype
        w = _scaled_weights(graph, conv, w, s)
        _set_conv_params(graph, conv, w, (b - mean) * s + beta, dtype, bn)


def per_channel(c: np.ndarray, channels: int) -> np.ndarray | None:
    """A constant that broadcasts over an (N, M, H, W) conv output along M only, as (M,);
    None if it varies along another axis (or could change the output's shape)."""
    if c.ndim > 4:
        return None
    c4 = c.reshape((1,) * (4 - c.ndim) + c.shape)
    if c4.shape[0] != 1 or c4.shape[2:] != (1, 1) or c4.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c4.reshape(-1), (channels,)).astype(np.float64)


def _fold_one_scale_shift(graph: Graph, node: Node) -> bool:
    sides = (0, 1) if node.op in ("Mul", "Add") else (0,)  # Sub: only conv - c
    for side in sides:
        conv = _conv_feeding(graph, node, node.inputs[side])
        c = graph.const(node.inputs[1 - side])
        if conv is None or c is None or node.inputs[0] == node.inputs[1]:
            continue
        dtype = graph.const(conv.inputs[1]).dtype
        v = per_channel(c, graph.const(conv.inputs[1]).shape[0])
        if v is None or c.dtype != dtype:
            continue
        w, b = _conv_params(graph, conv)
        if node.op == "Mul":
            w, b = _scaled_weights(graph, conv, w, v), b * v
        else:
            b = b + v if node.op == "Add" else b - v
        _set_conv_params(graph, conv, w, b, dtype, node)
        return True
    return False


def fold_scale_shift(graph: Graph) -> None:
    """Fold Mul/Add (and Sub) by a per-output-channel or scalar constant that directly follows
    a Conv into its weights and bias (the BN of TF-converted models); repeats for chains."""
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op in ("Mul", "Add", "Sub") and _fold_one_scale_shift(graph, node):
                changed = True
