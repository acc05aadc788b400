"""The `sparsejit` command line: compile, run, inspect, autotune, targets, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import SparseJitError


def _model(args: argparse.Namespace):
    """The ONNX file named, or else a built-in model of that name (at --sparsity)."""
    from . import models

    if Path(args.model).exists() or args.model not in models.names():
        return args.model  # a missing file is compile()'s clear error
    try:
        return models.build(args.model, sparsity=args.sparsity)
    except ValueError as exc:  # a bad --sparsity
        raise SparseJitError(f"--sparsity: {exc}") from None


def _compile(args: argparse.Namespace):
    from .compiler import compile

    return compile(_model(args), target=args.target, threads=args.threads, batch=args.batch)


def cmd_compile(args: argparse.Namespace) -> int:
    cm = _compile(args)
    print(cm.report())
    for directory, kind in ((args.emit_ir, "ll"), (args.emit_asm, "s")):
        if directory:
            out = Path(directory)
            out.mkdir(parents=True, exist_ok=True)
            for info in cm.lowered().layers:
                if info.source is not None:
                    text = info.ir if kind == "ll" else cm.asm(info.name)
                    (out / f"{info.symbol}.{kind}").write_text(text)
            print(f"wrote {kind} files to {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cm = _compile(args)
    x = np.load(args.input)
    outs = cm.run({cm.input_names[0]: x})
    y = outs[cm.output_names[0]]
    if args.output:
        np.save(args.output, y)
        print(f"wrote {args.output}: shape {y.shape}, dtype {y.dtype}")
    else:
        np.set_printoptions(threshold=50, precision=5)
        print(f"{cm.output_names[0]}: shape {y.shape}\n{y}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    cm = _compile(args)
    print(cm.asm(args.layer) if args.asm else cm.ir(args.layer))
    return 0


def cmd_autotune(args: argparse.Namespace) -> int:
    from .tune import log as tuning_log
    from .tune.autotune import autotune

    log_path = args.log or tuning_log.default_path()
    results = autotune(_model(args), target=args.target, threads=args.threads, budget=args.budget,
                       repeats=args.repeats, time_bound=args.time_bound, layers=args.layers,
                       log_path=log_path, progress=not args.no_progress,
                       finalists=args.finalists, rounds=args.rounds)
    print(autotune_table(results))
    print(f"tuning log: {log_path} (compile() uses it for these layers from now on)")
    return 0


def autotune_table(results: dict) -> str:
    """Per layer: default and best median (over the confirmation rounds where they ran),
    speedup, the winning plan, candidates ok / tried, plans confirmed."""
    rows = [("layer", "default ms", "best ms", "speedup", "best plan", "ok/tried", "confirmed")]
    for name, r in results.items():
        ok = sum(m.status == "ok" for m in r.results)
        rows.append((name, _ms(r.default_s), _ms(r.best_s),
                     "" if r.speedup is None else f"{r.speedup:.2f}x", r.plan.variant(),
                     f"{ok}/{len(r.results)}", str(len(r.confirmed)) if r.confirmed else "no"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "failed" if seconds is None else f"{seconds * 1e3:.3f}"


def cmd_targets(args: argparse.Namespace) -> int:
    from . import targets

    for name in targets.names():
        t = targets.get(name)
        missing = ", ".join(targets.missing_features(t))
        runs = "runs here" if not missing else f"compile only (needs {missing})"
        print(f"{name:7s} cpu={t.cpu:15s} {t.vector_width:2d} x f32  {runs:12s}  {t.description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.model, target=args.target, threads=args.threads, repeats=args.repeats)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsejit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def model_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", help="ONNX file, or a built-in model: caffenet, vgg16, resnet50, "
                        "googlenet, tiny")
        sp.add_argument("--sparsity", default="seed",
                        help="a built-in model's pruning: seed (default), all, or a density")

    def model_args(sp: argparse.ArgumentParser) -> None:
        model_arg(sp)
        sp.add_argument("--target", default="host", help="host, sse, avx2, avx512 (default host)")
        sp.add_argument("--threads", type=int, default=None)
        sp.add_argument("--batch", type=int, default=None, help="bind a symbolic batch size")

    sp = sub.add_parser("compile", help="compile a model and print its per-layer report")
    model_args(sp)
    sp.add_argument("--emit-ir", metavar="DIR", help="write each kernel's LLVM IR to DIR")
    sp.add_argument("--emit-asm", metavar="DIR", help="write each kernel's assembly to DIR")
    sp.set_defaults(func=cmd_compile)

    sp = sub.add_parser("run", help="run a model on an input .npy")
    model_args(sp)
    sp.add_argument("--input", required=True, help="input array (.npy)")
    sp.add_argument("--output", help="where to save the first output (.npy)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("inspect", help="print the IR or assembly of one layer")
    model_args(sp)
    sp.add_argument("layer", help="layer name (ONNX node name, else its first output)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--ir", action="store_true", help="LLVM IR (default)")
    g.add_argument("--asm", action="store_true", help="assembly for the target")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("autotune", help="search each conv and pruned FC layer's plans; "
                        "compile() uses the best")
    model_arg(sp)
    sp.add_argument("--target", default="host", help="host, sse, avx2, avx512 (default host)")
    sp.add_argument("--threads", type=int, default=1,
                    help="threads per conv kernel while timing (FC layers: one)")
    sp.add_argument("--budget", type=int, default=24, help="candidate plans per layer (24)")
    sp.add_argument("--repeats", type=int, default=15, help="timed calls per candidate (15)")
    sp.add_argument("--time-bound", type=float, default=2.0,
                    help="seconds the timed calls of one candidate may take (2)")
    sp.add_argument("--finalists", type=int, default=3,
                    help="fastest candidates re-timed with the default in a confirmation round "
                    "(3; 0: none)")
    sp.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of the confirmation (3)")
    sp.add_argument("--layers", help="comma-separated conv or pruned FC layers to tune "
                    "(default all)")
    sp.add_argument("--log", help="tuning log to append to (default SPARSEJIT_TUNING_LOG, else "
                    "tuning.jsonl in the user cache dir)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_autotune)

    sp = sub.add_parser("targets", help="list targets and whether this host runs them")
    sp.set_defaults(func=cmd_targets)

    sp = sub.add_parser("demo", help="compile a built-in pruned model, check it, time it")
    sp.add_argument("model", nargs="?", default="caffenet",
                    help="caffenet (default), vgg16, resnet50, googlenet, tiny")
    sp.add_argument("--target", default="host")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--repeats", type=int, default=10)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SparseJitError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sparsejit: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sparsejit inspect ... | head`: the reader has gone
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
