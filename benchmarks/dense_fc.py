"""Dense FC layers at batch 1: the tiled kernel against the one that skips zero inputs, and both
against onnxruntime and PyTorch, on each dense Gemm of a built-in model. Inputs: the
activations the network itself feeds the layer on the network benchmark's random image
("net"), and random inputs with a given fraction of zeros. Each layer runs alone (its weights
streamed from memory: VGG-16's fc6 is 411 MB); calls of all engines interleaved.

    python benchmarks/dense_fc.py vgg16 --threads 1
    python benchmarks/dense_fc.py vgg16 --threads 2 --zeros net,0,0.9

Writes benchmarks/results/dense-fc-<model>-<sparsity>-t<threads>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fair_environment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="vgg16")
    ap.add_argument("--sparsity", default="all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out of the peers")
    ap.add_argument("--zeros", default="net,0,0.5,0.9",
                    help="inputs: 'net' (the network's own activations) and fractions of zeros")
    args = ap.parse_args()
    fair_environment(args.threads)
    run(args)


def dense_gemms(proto):
    """(node, W[M][C], bias[M]) of every Gemm whose weights are constant and dense, W as the
    node multiplies it (transB folded)."""
    import numpy as np
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "Gemm" or node.input[1] not in consts:
            continue
        attrs = {a.name: a for a in node.attribute}
        w = consts[node.input[1]]
        w = w if attrs.get("transB") and attrs["transB"].i else w.T
        if np.count_nonzero(w) < 0.6 * w.size:
            continue  # pruned: the sparse FC kernels, not this benchmark's
        has_bias = len(node.input) > 2 and node.input[2] in consts
        bias = consts[node.input[2]] if has_bias else np.zeros(w.shape[0], np.float32)
        # copies: PyTorch takes only writable arrays, and initializers' arrays are not
        yield node, np.array(w, dtype=np.float32, order="C"), bias.astype(np.float32)


def network_inputs(proto, names, ort):
    """The values the network computes for tensors `names` on the benchmark's random image."""
    import numpy as np
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    values = sess.run(list(names), {proto.graph.input[0].name: x})
    return {n: v.reshape(1, -1) for n, v in zip(names, values)}


def run(args) -> None:
    import numpy as np
    import onnx.helper as oh
    import onnxruntime as ort
    from common import interleaved_medians, machine, save, table
    from onnx import TensorProto, numpy_helper

    import sparsejit
    from sparsejit import models

    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    if args.no_torch:
        torch = None
    proto = models.build(args.model, batch=1, sparsity=args.sparsity)
    layers = list(dense_gemms(proto))
    fed = network_inputs(proto, [node.input[0] for node, _, _ in layers], ort)
    rows = [["layer", "C -> M", "input", "zeros", "tiled ms", "skip ms", "ort ms"]
            + (["torch ms"] if torch else []) + ["skip vs tiled", "skip vs best peer", "skip GB/s"]]
    results = []
    rng = np.random.default_rng(1)
    for node, w, b in layers:
        m, c = w.shape
        gemm = oh.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
        graph = oh.make_graph([gemm], "fc", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, c])],
                              [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, m])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
        tiled = sparsejit.compile(model, threads=args.threads, plans={"fc": {"skip_zero_inputs": False}})
        skip = sparsejit.compile(model, threads=args.threads, plans={"fc": {"skip_zero_inputs": True}})
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        tw, tb = (torch.from_numpy(w), torch.from_numpy(b)) if torch else (None, None)
        for which in args.zeros.split(","):
            if which == "net":
                x = fed[node.input[0]]
            else:
                x = rng.standard_normal((1, c)).astype(np.float32)
                x[0, rng.permutation(c)[: int(round(float(which) * c))]] = 0.0
            x = np.ascontiguousarray(x, dtype=np.float32)
            zeros = float(np.mean(x == 0))
            expected = x.astype(np.float64) @ w.T.astype(np.float64) + b
            for cm in (tiled, skip):
                err = np.abs(cm(x) - expected).max() / max(1e-30, np.abs(expected).max())
                assert err < 1e-4, f"{node.name}: relative error {err:.2e}"
            peers = {"tiled": lambda: tiled(x), "skip": lambda: skip(x),
                     "ort": lambda: sess.run(None, {"x": x})}
            if torch is not None:
                tx = torch.from_numpy(x)

                def linear(tx=tx):
                    with torch.no_grad():
                        return torch.nn.functional.linear(tx, tw, tb)
                peers["torch"] = linear
            t = interleaved_medians(peers, args.repeats, per_call=args.threads == 1)
            best_peer = min(t["ort"], t.get("torch", float("inf")))
            read_bytes = 4 * m * c * (1 - zeros)
            rows.append([node.name, f"{c} -> {m}", which, f"{zeros:.0%}", f"{t['tiled'] * 1e3:.3f}",
                         f"{t['skip'] * 1e3:.3f}", f"{t['ort'] * 1e3:.3f}"]
                        + ([f"{t['torch'] * 1e3:.3f}"] if torch else [])
                        + [f"{t['tiled'] / t['skip']:.2f}x", f"{best_peer / t['skip']:.2f}x",
                           f"{read_bytes / t['skip'] / 1e9:.1f}"])
            results.append({"layer": node.name, "in_features": c, "out_features": m, "input": which,
                            "zero_fraction": zeros, **{f"{k}_s": v for k, v in t.items()}})
        tiled.close()
        skip.close()
    print(f"{args.model} ({args.sparsity}) dense FC layers, batch 1, {args.threads} thread(s); "
          f"medians of {args.repeats} calls, engines interleaved")
    print(table(rows))
    path = save(f"dense-fc-{args.model}-{args.sparsity}-t{args.threads}",
                {"machine": machine(), "args": vars(args), "layers": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
