"""Per-layer speedup of sparsejit over the best dense peer against the layer's weight density,
from the JSON files benchmarks/layers.py writes (no timing here). One marker and colour per
model (and density plan); writes a PNG.

    python benchmarks/plot.py                                  # every results/layers-*.json
    python benchmarks/plot.py results/layers-caffenet-seed-b1-t1.json --out caffenet.png

The files plotted together must share a thread count and batch (the title names them): pick
with --threads / --batch when the results directory holds several.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402

MARKERS = "osD^vP*Xph"
DENSITY_TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


def load(paths: list[Path], threads: int | None, batch: int | None) -> list[dict]:
    """The layers-*.json payloads to plot: those of the wanted threads and batch, which must be
    unique among what is left."""
    runs = [json.loads(p.read_text()) for p in paths]
    runs = [r for r in runs if threads in (None, r["args"]["threads"])]
    runs = [r for r in runs if batch in (None, r["args"]["batch"])]
    if not runs:
        sys.exit("no layers-*.json results match (run benchmarks/layers.py first)")
    combos = sorted({(r["args"]["threads"], r["args"]["batch"]) for r in runs})
    if len(combos) > 1:
        found = ", ".join(f"--threads {t} --batch {b}" for t, b in combos)
        sys.exit(f"results for several thread counts / batches; pick one of: {found}")
    return runs


def title(runs: list[dict]) -> str:
    machines = sorted(
        {f"{m.get('cpu', '?')} ({m.get('cpus', '?')} cpus)" for m in (r["machine"] for r in runs)}
    )
    args = runs[0]["args"]
    return (
        "sparsejit per-layer speedup over the best dense engine\n"
        f"{' / '.join(machines)}; {args['threads']} thread(s), batch {args['batch']}"
    )


def plot(runs: list[dict], out: Path, linear: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    for i, run in enumerate(sorted(runs, key=lambda r: (r["args"]["model"], r["args"]["sparsity"]))):
        rows = [r for r in run["layers"] if r.get("speedup_vs_best_dense") is not None]
        args = run["args"]
        label = f"{args['model']} ({args['sparsity']})" + (" plan override" if args.get("plan") else "")
        ax.scatter(
            [r["density"] for r in rows],
            [r["speedup_vs_best_dense"] for r in rows],
            marker=MARKERS[i % len(MARKERS)],
            color=f"C{i % 10}",
            label=f"{label}: {len(rows)} layers",
            alpha=0.8,
        )
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    if not linear:
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xticks([t for t in DENSITY_TICKS if lo <= t <= hi])
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("weight density (nonzeros / weights)" + ("" if linear else ", log scale"))
    ax.set_ylabel("speedup over the best dense engine (x)")
    ax.set_title(title(runs), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="layers-*.json (default: all in results/)")
    ap.add_argument("--out", type=Path, default=RESULTS / "speedup-vs-density.png")
    ap.add_argument("--threads", type=int, default=None, help="only results of this thread count")
    ap.add_argument("--batch", type=int, default=None, help="only results of this batch")
    ap.add_argument("--linear", action="store_true", help="linear density axis (default: log)")
    args = ap.parse_args()
    runs = load(args.files or sorted(RESULTS.glob("layers-*.json")), args.threads, args.batch)
    plot(runs, args.out, args.linear)
    print(f"wrote {args.out} ({sum(len(r['layers']) for r in runs)} layers from {len(runs)} file(s))")


if __name__ == "__main__":
    main()
