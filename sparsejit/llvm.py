"""The one module that talks to LLVM (llvmlite): targets, verification, object code, loading.

Everything else in sparsejit produces or consumes plain strings and bytes. IR text goes in;
object code (cached on disk by a content hash, see `objcache`) and assembly text come out;
`CodeLibrary` loads object code into an MCJIT engine and hands out function addresses.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import TYPE_CHECKING

import llvmlite
import llvmlite.binding as llvm

from . import objcache

if TYPE_CHECKING:  # targets asks this module for the host's cpu: no import back at runtime
    from .targets import Target

_lock = threading.RLock()
_initialised = False


def _init() -> None:
    global _initialised
    with _lock:
        if not _initialised:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialised = True


def llvm_version() -> str:
    return ".".join(map(str, llvm.llvm_version_info))


def toolchain_id() -> str:
    """Identifies the compiler in cache keys: a new llvmlite or LLVM is a cache miss."""
    return f"llvmlite-{llvmlite.__version__}/llvm-{llvm_version()}"


def host_cpu_name() -> str:
    _init()
    return llvm.get_host_cpu_name()


def host_features() -> frozenset[str]:
    _init()
    feats = llvm.get_host_cpu_features()
    return frozenset(name for name, on in feats.items() if on)


@cache
def _target_machine(cpu: str, features: str, opt: int) -> llvm.TargetMachine:
    return _new_target_machine(cpu, features, opt)


def _new_target_machine(cpu: str, features: str, opt: int) -> llvm.TargetMachine:
    _init()
    target = llvm.Target.from_triple("x86_64-unknown-linux-gnu")
    # The large code model: MCJIT maps each object's code and constant sections separately,
    # and with many kernels loaded they can land more than 2 GB apart, which the small model's
    # 32-bit PC-relative references cannot reach (LLVM then aborts the process in
    # finalize_object). The cost is one 64-bit address load per table, outside the loops.
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic",
                                        codemodel="large")


def _parse(ir_text: str) -> llvm.ModuleRef:
    try:
        module = llvm.parse_assembly(ir_text)
        module.verify()
    except RuntimeError as exc:  # llvmlite reports parse and verify errors this way
        first = ir_text.splitlines()[0] if ir_text else ""
        raise RuntimeError(f"generated IR does not verify ({first}): {exc}") from None
    return module


def _configure(module: llvm.ModuleRef, target: Target, opt: int) -> llvm.TargetMachine:
    tm = _target_machine(target.cpu, target.features, opt)
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    return tm


def compile_object(ir_text: str, target: Target, opt: int = 2) -> tuple[bytes, bool]:
    """Object code for `ir_text`; from the disk cache when present. Returns (object, was_cached).

    `opt` is the codegen level: the IR is rendered already in SSA form by the templates, so no
    IR pass pipeline runs (on big unrolled kernels it cost minutes and made slower code).
    """
    key = objcache.key(ir_text, target.cpu, target.features, str(opt), toolchain_id())
    cached = objcache.load(key)
    if cached is not None:
        return cached, True
    obj = _emit_object(ir_text, target, opt)
    objcache.store(key, obj)
    return obj, False


def _emit_object(ir_text: str, target: Target, opt: int) -> bytes:
    with _lock:
        module = _parse(ir_text)
        tm = _configure(module, target, opt)
        return tm.emit_object(module)


def compile_source(source, target: Target, opt: int = 2) -> tuple[bytes, bool]:
    """Like compile_object for a `KernelSource`: keyed by what the IR is rendered from, so a
    cached kernel is loaded without rendering its IR."""
    key = objcache.key("source", source.key, target.cpu, target.features, str(opt), toolchain_id())
    cached = objcache.load(key)
    if cached is not None:
        return cached, True
    obj = _emit_object(source.text, target, opt)
    objcache.store(key, obj)
    return obj, False


def assembly(ir_text: str, target: Target, opt: int = 2) -> str:
    with _lock:
        module = _parse(ir_text)
        tm = _configure(module, target, opt)
        return tm.emit_assembly(module)


def verify(ir_text: str) -> None:
    with _lock:
        _init()
        _parse(ir_text)


class CodeLibrary:
    """Object files loaded into one MCJIT engine; frozen once `finalize()` has run."""

    def __init__(self, target: Target) -> None:
        _init()
        self.target = target
        with _lock:
            # an MCJIT engine takes ownership of its target machine: never share a cached one
            self._tm = _new_target_machine(target.cpu, target.features, 2)
            empty = llvm.parse_assembly("")
            empty.triple = self._tm.triple
            self._engine = llvm.create_mcjit_compiler(empty, self._tm)
        self._finalized = False

    def add_object(self, obj: bytes) -> None:
        if self._finalized:
            raise RuntimeError("CodeLibrary is finalized; create a new one to add code")
        with _lock:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))

    def finalize(self) -> None:
        with _lock:
            self._engine.finalize_object()
        self._finalized = True

    def address(self, symbol: str) -> int:
        if not self._finalized:
            self.finalize()
        addr = self._engine.get_function_address(symbol)
        if not addr:
            raise KeyError(f"symbol '{symbol}' not found in compiled code")
        return addr
