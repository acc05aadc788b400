"""The one module that talks to LLVM (llvmlite): targets, verification, object code, loading.

Everything else in sparsejit produces or consumes plain strings and bytes. IR text goes in;
object code (cached on disk by a content hash, see `objcache`) and assembly text come out;
`CodeLibrary` loads object code (with sparsejit's own ELF loader, else into an MCJIT engine)
and hands out function addresses.
"""

from __future__ import annotations

import hashlib
import json
import platform
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import llvmlite

from . import config, elfload, objcache

if TYPE_CHECKING:  # targets asks this module for the host's cpu: no import back at runtime
    import llvmlite.binding

    from .targets import Target

_lock = threading.RLock()
_binding = None


def _llvm():
    """llvmlite.binding, imported and initialised on first use: loading LLVM maps ~40 MiB of
    the process (35 of them libLLVM's pages), which a warm compile, whose objects come from the
    cache and load with elfload, never needs."""
    global _binding
    with _lock:
        if _binding is None:
            import llvmlite.binding as binding

            binding.initialize_native_target()
            binding.initialize_native_asmprinter()
            _binding = binding
    return _binding


def _host_fingerprint() -> str:
    """What LLVM's answers about this host depend on: the CPU as the kernel reports it (model and
    flags: a VM moved to another CPU changes them) and the llvmlite build."""
    h = hashlib.sha256(f"{llvmlite.__version__}\0{platform.machine()}\0".encode())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block
            if line.split(":")[0].strip() in ("vendor_id", "cpu family", "model", "model name",
                                              "stepping", "flags"):
                h.update(line.encode())
    except OSError:
        return ""  # no stable fingerprint: always ask LLVM
    return h.hexdigest()


@cache
def _host_info() -> dict:
    """LLVM's host cpu name, host features and version, remembered in the object cache per host
    fingerprint so that a warm process need not load LLVM to form its cache keys."""
    fingerprint = _host_fingerprint()
    key = objcache.key("host-info", fingerprint) if fingerprint else None
    if key is not None:
        payload = objcache.load(key)
        if payload is not None:
            try:
                info = json.loads(payload)
                if {"cpu", "features", "llvm"} <= info.keys():
                    return info
            except ValueError:
                pass
    llvm = _llvm()
    features = llvm.get_host_cpu_features()
    info = {"cpu": llvm.get_host_cpu_name(),
            "features": sorted(name for name, on in features.items() if on),
            "llvm": ".".join(map(str, llvm.llvm_version_info))}
    if key is not None:
        objcache.store(key, json.dumps(info).encode())
    return info


def llvm_version() -> str:
    return _host_info()["llvm"]


def toolchain_id() -> str:
    """Identifies the compiler in cache keys: a new llvmlite or LLVM is a cache miss."""
    return f"llvmlite-{llvmlite.__version__}/llvm-{llvm_version()}"


def host_cpu_name() -> str:
    return _host_info()["cpu"]


def host_features() -> frozenset[str]:
    return frozenset(_host_info()["features"])


@cache
def _target_machine(cpu: str, features: str, opt: int) -> llvmlite.binding.TargetMachine:
    return _new_target_machine(cpu, features, opt)


def _new_target_machine(cpu: str, features: str, opt: int) -> llvmlite.binding.TargetMachine:
    target = _llvm().Target.from_triple("x86_64-unknown-linux-gnu")
    # The large code model: MCJIT maps each object's code and constant sections separately,
    # and with many kernels loaded they can land more than 2 GB apart, which the small model's
    # 32-bit PC-relative references cannot reach (LLVM then aborts the process in
    # finalize_object). The cost is one 64-bit address load per table, outside the loops.
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic",
                                        codemodel="large")


def _parse(ir_text: str) -> llvmlite.binding.ModuleRef:
    try:
        module = _llvm().parse_assembly(ir_text)
        module.verify()
    except RuntimeError as exc:  # llvmlite reports parse and verify errors this way
        first = ir_text.splitlines()[0] if ir_text else ""
        raise RuntimeError(f"generated IR does not verify ({first}): {exc}") from None
    return module


def _configure(module: llvmlite.binding.ModuleRef, target: Target, opt: int) -> llvmlite.binding.TargetMachine:
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
        _parse(ir_text)


class CodeLibrary:
    """Object files loaded together; frozen once `finalize()` has run. By default (config.loader)
    they are mapped by sparsejit's own ELF loader (elfload.py), which keeps none of LLVM
    resident; objects it does not support, or `SPARSEJIT_LOADER=mcjit`, load into an MCJIT
    engine. `loader` says which ("elf" or "mcjit") once finalized."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._objects: list[bytes] = []
        self._loaded = None
        self.loader: str | None = None
        self.fallback_reason: str | None = None  # why the ELF loader was not used
        self._finalized = False

    def add_object(self, obj: bytes) -> None:
        if self._finalized:
            raise RuntimeError("CodeLibrary is finalized; create a new one to add code")
        self._objects.append(obj)

    def finalize(self) -> None:
        if self._finalized:
            return
        if config.loader() == "elf":
            try:
                self._loaded = elfload.LoadedCode(self._objects)
                self.loader = "elf"
            except elfload.Unsupported as exc:
                self.fallback_reason = str(exc)
        else:
            self.fallback_reason = "SPARSEJIT_LOADER=mcjit"
        if self._loaded is None:
            self._loaded = _MCJITCode(self.target, self._objects)
            self.loader = "mcjit"
        self._objects = []  # the loaded code no longer needs them
        self._finalized = True

    def address(self, symbol: str) -> int:
        if not self._finalized:
            self.finalize()
        return self._loaded.address(symbol)


class _MCJITCode:
    """Objects loaded into one MCJIT engine (which keeps them and LLVM's pages resident)."""

    def __init__(self, target: Target, objects: list[bytes]) -> None:
        llvm = _llvm()
        with _lock:
            # an MCJIT engine takes ownership of its target machine: never share a cached one
            self._tm = _new_target_machine(target.cpu, target.features, 2)
            empty = llvm.parse_assembly("")
            empty.triple = self._tm.triple
            self._engine = llvm.create_mcjit_compiler(empty, self._tm)
            for obj in objects:
                self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self._engine.finalize_object()

    def address(self, symbol: str) -> int:
        addr = self._engine.get_function_address(symbol)
        if not addr:
            raise KeyError(f"symbol '{symbol}' not found in compiled code")
        return addr
