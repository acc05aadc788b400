"""Tuned against untuned, per conv layer: each layer of a built-in model compiled alone with its
default plan and with the tuning log's fastest plan, both timed in the same run.

    sparsejit autotune caffenet.onnx --budget 12         # fills the tuning log first
    python benchmarks/tuned.py caffenet --sparsity seed

Layers the log has no entry for are listed with the default plan only. Writes
benchmarks/results/tuned-<model>-<sparsity>-b<batch>-t<threads>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import conv_layer_arguments, fair_environment  # noqa: E402


def main() -> None:
    ap = conv_layer_arguments(__doc__)
    args = ap.parse_args()
    fair_environment(args.threads)
    run(args)


def run(args) -> None:
    import numpy as np
    from common import conv_layers, kernel_seconds, machine, save, table

    import sparsejit

    rows = [["layer", "default kernel", "default ms", "tuned kernel", "tuned ms", "tuned speedup"]]
    results = []
    rng = np.random.default_rng(0)
    wanted = set(filter(None, args.layers.split(",")))
    for layer in conv_layers(args.model, args.sparsity, args.batch, wanted):
        name = layer.node.name
        x = rng.standard_normal(layer.x_shape).astype(np.float32)
        default = sparsejit.compile(layer.model, threads=args.threads, plans={name: {}})  # {}: default
        tuned = sparsejit.compile(layer.model, threads=args.threads)  # the log's plan, if any
        info = {cm: next(i for i in cm.layers if i.name == name) for cm in (default, tuned)}
        y0, y1 = default(x), tuned(x)
        err = float(np.abs(y0 - y1).max() / max(1e-6, np.abs(y0).max()))
        assert err < 1e-3, f"{name}: tuned and default plans differ by {err}"
        t_default = kernel_seconds(default, x, args.repeats)
        t_tuned = kernel_seconds(tuned, x, args.repeats) if info[tuned].tuned else None
        rows.append([name, info[default].kernel.split(" ", 1)[1], f"{t_default * 1e3:.3f}",
                     info[tuned].kernel.split(" ", 1)[1] if t_tuned else "(not in the log)",
                     f"{t_tuned * 1e3:.3f}" if t_tuned else "",
                     f"{t_default / t_tuned:.2f}x" if t_tuned else ""])
        results.append({"layer": name, "default_kernel": info[default].kernel, "default_s": t_default,
                        "tuned_kernel": info[tuned].kernel if t_tuned else None, "tuned_s": t_tuned})
        default.close()
        tuned.close()
    print(f"{args.model} ({args.sparsity}), batch {args.batch}, {args.threads} thread(s); "
          f"medians of {args.repeats} runs")
    print(table(rows))
    path = save(f"tuned-{args.model}-{args.sparsity}-b{args.batch}-t{args.threads}",
                {"machine": machine(), "args": vars(args), "layers": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
