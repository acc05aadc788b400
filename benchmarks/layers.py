"""Per-layer benchmark: each conv of a built-in pruned model run alone by sparsejit and by the
dense peers (onnxruntime, numpy im2col + BLAS, PyTorch NCHW / channels-last when installed) and
the naive sparse way (im2col + scipy.sparse CSR weights, when scipy is installed), in the same
process and run. Prints ms, nonzero and dense-equivalent GFLOP/s and speedups; writes
benchmarks/results/layers-<model>.json.

    python benchmarks/layers.py caffenet --threads 1
    python benchmarks/layers.py resnet50 --sparsity all --layers 'layer3.0.conv2,layer4.0.conv2'
    python benchmarks/layers.py caffenet --deepsparse   # + DeepSparse per layer (its own venv)

scipy CSR and DeepSparse are sparse peers: reported in their own columns, not counted in
"vs best dense". scipy's sparse product runs on one thread whatever --threads says.
sparsejit is timed before and after the dense peers, and again after DeepSparse: "vs best
dense" uses the geometric mean of the first two, "vs deepsparse" that of the last two (the
machines here drift within seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import conv_layer_arguments, fair_environment  # noqa: E402


def main() -> None:
    ap = conv_layer_arguments(__doc__)
    ap.add_argument(
        "--plan", default="", help='JSON plan override for every layer, e.g. \'{"form": "table"}\''
    )
    ap.add_argument(
        "--deepsparse",
        action="store_true",
        help="also time DeepSparse (venv at $SPARSEJIT_DEEPSPARSE_PYTHON or /work/ds-venv)",
    )
    args = ap.parse_args()
    fair_environment(args.threads)
    run(args)


def run(args) -> None:
    import hashlib
    import json

    import numpy as np
    from common import (
        conv_layers,
        csr_conv,
        csr_weights,
        deepsparse_time,
        im2col_conv,
        kernel_seconds,
        machine,
        median_seconds,
        save,
        table,
    )

    import sparsejit

    wanted = set(filter(None, args.layers.split(",")))
    override = json.loads(args.plan) if args.plan else None

    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    try:
        import scipy.sparse  # noqa: F401

        has_scipy = True
    except ImportError:
        has_scipy = False

    rows = [
        [
            "layer",
            "shape",
            "density",
            "sparsejit ms",
            "kernel",
            "nz GF/s",
            "dense-eq GF/s",
            "ort ms",
            "numpy ms",
        ]
        + (["torch ms", "torch cl ms"] if torch else [])
        + ["vs best dense"]
        + (["scipy csr ms"] if has_scipy else [])
        + (["deepsparse ms", "vs deepsparse"] if args.deepsparse else [])
    ]
    results = []
    rng = np.random.default_rng(0)
    for layer in conv_layers(args.model, args.sparsity, args.batch, wanted):
        node, layer_model, x_shape, w, b = layer.node, layer.model, layer.x_shape, layer.weight, layer.bias
        attrs, pads = layer.attrs, layer.pads
        x = rng.standard_normal(x_shape).astype(np.float32)

        cm = sparsejit.compile(
            layer_model, threads=args.threads, plans={node.name: override} if override else None
        )
        info = next(i for i in cm.layers if i.name == node.name)
        t_sj = kernel_seconds(cm, x, args.repeats)
        y = cm(x)
        ref = (
            im2col_conv(x, w, node.attrs["strides"], pads, node.attrs["dilations"], node.attrs["group"])
            + b[None, :, None, None]
        )
        err = float(np.abs(y - ref).max() / max(1e-6, np.abs(ref).max()))
        assert err < 1e-3, f"{node.name}: sparsejit differs from im2col by {err}"

        peers = {}
        if ort is not None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(
                layer_model.SerializeToString(), so, providers=["CPUExecutionProvider"]
            )
            peers["ort"] = median_seconds(lambda: sess.run(None, {"x": x}), args.repeats)
        peers["numpy"] = median_seconds(
            lambda: im2col_conv(
                x, w, node.attrs["strides"], pads, node.attrs["dilations"], node.attrs["group"]
            ),
            max(5, args.repeats // 3),
        )
        if torch is not None:
            import torch.nn.functional as F

            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            tpad = (pads[1], pads[3], pads[0], pads[2])

            def torch_conv(xx, ww):
                with torch.no_grad():
                    return F.conv2d(
                        F.pad(xx, tpad),
                        ww,
                        None,
                        tuple(attrs["strides"]),
                        0,
                        tuple(attrs["dilations"]),
                        attrs["group"],
                    )

            peers["torch"] = median_seconds(lambda: torch_conv(tx, tw), args.repeats)
            txc, twc = tx.to(memory_format=torch.channels_last), tw.to(memory_format=torch.channels_last)
            peers["torch_cl"] = median_seconds(lambda: torch_conv(txc, twc), args.repeats)
        best = min(peers.values())
        # sparsejit again after its peers: the time compared is the geometric mean of the two
        # (this machine's speed drifts within seconds)
        t_sj_after = kernel_seconds(cm, x, args.repeats)
        t_sj = float(np.sqrt(t_sj * t_sj_after))
        csr_cols, t_csr = [], None
        if has_scipy:  # a sparse peer: not in `peers`, so not in `best`
            csr = csr_weights(w, attrs["group"])
            geometry = (w.shape[2:], attrs["strides"], pads, attrs["dilations"])
            y_csr = csr_conv(x, csr, *geometry) + b[None, :, None, None]
            err_csr = float(np.abs(y_csr - ref).max() / max(1e-6, np.abs(ref).max()))
            assert err_csr < 1e-3, f"{node.name}: scipy csr differs from im2col by {err_csr}"
            t_csr = median_seconds(lambda: csr_conv(x, csr, *geometry), max(5, args.repeats // 3))
            csr_cols = [f"{t_csr * 1e3:.3f}"]
        ds_cols, t_ds = [], None
        t_sj_around_ds = None
        if args.deepsparse:
            # DeepSparse runs in a subprocess for seconds: it is compared with sparsejit timed
            # right before and right after it (geometric mean)
            t_ds = deepsparse_time(layer_model, args.threads, args.batch, args.repeats)
            t_sj_around_ds = float(np.sqrt(t_sj_after * kernel_seconds(cm, x, args.repeats)))
            v = float("nan") if t_ds is None else t_ds
            ds_cols = [f"{v * 1e3:.3f}", f"{v / t_sj_around_ds:.2f}x"]
        flops = 2 * info.nonzeros * (int(np.prod(y.shape)) // w.shape[0])
        dense_flops = info.dense_flops
        rows.append(
            [
                node.name,
                "x".join(map(str, x_shape[1:]))
                + f"->{w.shape[0]} k{w.shape[2]} s{attrs['strides'][0]}"
                + (f" g{attrs['group']}" if attrs["group"] > 1 else ""),
                f"{info.density:.3f}",
                f"{t_sj * 1e3:.3f}",
                info.kernel.split(" ", 1)[1][:26],
                f"{flops / t_sj / 1e9:.1f}",
                f"{dense_flops / t_sj / 1e9:.1f}",
                f"{peers.get('ort', float('nan')) * 1e3:.3f}",
                f"{peers['numpy'] * 1e3:.3f}",
            ]
            + ([f"{peers['torch'] * 1e3:.3f}", f"{peers['torch_cl'] * 1e3:.3f}"] if torch else [])
            + [f"{best / t_sj:.2f}x"]
            + csr_cols
            + ds_cols
        )
        results.append(
            {
                "layer": node.name,
                "input": x_shape,
                "weight": list(w.shape),
                **attrs,
                "pads": pads,
                "density": info.density,
                "nonzeros": info.nonzeros,
                "kernel": info.kernel,
                "sparsejit_s": t_sj,
                "peers_s": peers,
                "speedup_vs_best_dense": best / t_sj,
                "scipy_csr_s": t_csr,
                "deepsparse_s": t_ds,
                "sparsejit_around_deepsparse_s": t_sj_around_ds,
                "nonzero_gflops": flops / t_sj / 1e9,
                "dense_equiv_gflops": dense_flops / t_sj / 1e9,
            }
        )
        cm.close()
    print(f"{args.model} ({args.sparsity}), batch {args.batch}, {args.threads} thread(s); "
          f"medians of {args.repeats} runs")
    print(table(rows))
    speedups = [r["speedup_vs_best_dense"] for r in results]
    if speedups:
        geomean = float(np.exp(np.mean(np.log(speedups))))
        print(f"geometric mean speedup over the best dense peer: {geomean:.2f}x")
    # a run of chosen layers gets a file of its own: it must not replace a full run's results
    chosen = f"-{hashlib.sha1(args.layers.encode()).hexdigest()[:6]}" if args.layers else ""
    path = save(
        f"layers-{args.model}-{args.sparsity}-b{args.batch}-t{args.threads}{chosen}",
        {"machine": machine(), "args": vars(args), "layers": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
