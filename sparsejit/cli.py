"""The `sparsejit` command line: compile, run, inspect, targets, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import SparseJitError


def _compile(args: argparse.Namespace):
    from .compiler import compile

    return compile(args.model, target=args.target, threads=args.threads, batch=args.batch)


def cmd_compile(args: argparse.Namespace) -> int:
    cm = _compile(args)
    print(cm.report())
    for directory, kind in ((args.emit_ir, "ll"), (args.emit_asm, "s")):
        if directory:
            out = Path(directory)
            out.mkdir(parents=True, exist_ok=True)
            for info in cm.layers:
                if info.ir:
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

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", help="ONNX file")
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


if __name__ == "__main__":
    sys.exit(main())
