"""Compilation targets: the LLVM cpu and features, the vector width, and whether the host can run them.

Any target can be compiled and inspected on any x86-64 machine; running code needs the host to
have the target's features (`require_runnable` says which are missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .errors import TargetError


@dataclass(frozen=True)
class Target:
    """What the code generator needs to know about a CPU."""

    name: str
    cpu: str
    features: str  # LLVM feature string, e.g. "+avx2,+fma"
    vector_width: int  # f32 lanes per vector register
    vector_registers: int  # architectural vector registers (accumulator budget)
    description: str = ""

    @property
    def triple(self) -> str:
        return "x86_64-unknown-linux-gnu"

    def required_features(self) -> frozenset[str]:
        return frozenset(f[1:] for f in self.features.split(",") if f.startswith("+"))


# LLVM 22 no longer knows AVX512ER/PF, so cpu='knl' code is plain AVX-512F; we still name a
# Skylake-SP cpu for running so the scheduling model matches machines people have.
_TARGETS = {
    "sse": Target("sse", "silvermont", "+sse4.2,+popcnt", 4, 16,
                  "Atom (Silvermont): SSE4.2, 4 x f32"),
    "avx2": Target("avx2", "broadwell", "+avx2,+fma,+avx,+sse4.2", 8, 16,
                   "Xeon Broadwell: AVX2 + FMA, 8 x f32"),
    "avx512": Target("avx512", "skylake-avx512", "+avx512f,+avx512vl,+avx512bw,+avx512dq,+avx2,+fma",
                     16, 32, "Knights Landing / Skylake-SP: AVX-512F, 16 x f32"),
    "knl": Target("knl", "knl", "+avx512f,+avx512cd,+avx2,+fma", 16, 32,
                  "Knights Landing as LLVM models it (inspection; runs on AVX-512F hosts)"),
}


@lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """The host's CPU features as LLVM names them (only the ones set)."""
    from . import llvm

    return llvm.host_features()


@lru_cache(maxsize=1)
def host_target() -> Target:
    from . import llvm

    cpu = llvm.host_cpu_name()
    feats = host_features()
    if "avx512f" in feats:
        width, regs = 16, 32
    elif "avx2" in feats and "fma" in feats:
        width, regs = 8, 16
    else:
        width, regs = 4, 16
    feature_str = ",".join(f"+{f}" for f in sorted(feats))
    return Target("host", cpu, feature_str, width, regs, f"this machine ({cpu})")


def names() -> list[str]:
    return ["host", *_TARGETS]


def get(name: str | Target) -> Target:
    """The target called `name` ('host', 'sse', 'avx2', 'avx512', 'knl')."""
    if isinstance(name, Target):
        return name
    if name == "host":
        return host_target()
    try:
        return _TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target '{name}'; known targets: {', '.join(names())}") from None


def missing_features(target: Target) -> list[str]:
    return sorted(target.required_features() - host_features())


def can_run(target: Target) -> bool:
    return not missing_features(target)


def require_runnable(target: Target) -> None:
    missing = missing_features(target)
    if missing:
        raise TargetError(
            f"target '{target.name}' (cpu {target.cpu}) needs CPU features this host lacks: "
            f"{', '.join(missing)}. Compile it for inspection only (cm.ir / cm.asm), "
            "or choose target='host'."
        )
