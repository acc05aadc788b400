"""sparsejit's own loader of LLVM's objects (elfload.py): the relocations LLVM's large-code-model
objects use (constant tables, jump tables, calls between objects and into libm), malformed and
unsupported objects (an `Unsupported`, never a crash), and that compile() loads through it and a
warm process never loads LLVM."""

from __future__ import annotations

import ctypes
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import sparsejit
from sparsejit import elfload, llvm, targets
from tests.test_objcache import small_net

pytestmark = pytest.mark.skipif(elfload.supported_platform() is not None,
                                reason="the ELF loader runs on x86-64 Linux only")

HOST = targets.host_target()

# a constant table read at a variable index (GOTOFF64), a dense switch LLVM lowers to a jump
# table in .rodata (PC64 entries), and a store into a writable global
TABLE_IR = """
@table = private unnamed_addr constant [8 x float] [float 1.5, float 2.5, float 3.5, float 4.5,
  float 5.5, float 6.5, float 7.5, float 8.5], align 64
@counter = internal global i64 0, align 8

define float @lookup(i64 %i) {
  %p = getelementptr [8 x float], ptr @table, i64 0, i64 %i
  %v = load float, ptr %p, align 4
  %c = load i64, ptr @counter, align 8
  %c1 = add i64 %c, 1
  store i64 %c1, ptr @counter, align 8
  ret float %v
}

define i64 @count() {
  %c = load i64, ptr @counter, align 8
  ret i64 %c
}

define i64 @pick(i64 %i) {
entry:
  switch i64 %i, label %other [ i64 0, label %a  i64 1, label %b  i64 2, label %c
                               i64 3, label %d  i64 4, label %e  i64 5, label %f ]
a:
  ret i64 11
b:
  ret i64 23
c:
  ret i64 37
d:
  ret i64 41
e:
  ret i64 53
f:
  ret i64 67
other:
  ret i64 -1
}
"""

# calls a function of another object (through the GOT) and libm's expf
CALLER_IR = """
declare float @lookup(i64)
declare float @expf(float)

define float @twice_lookup_exp(i64 %i) {
  %v = call float @lookup(i64 %i)
  %e = call float @expf(float %v)
  %r = fmul float %e, 2.0
  ret float %r
}
"""


def objects(*irs: str) -> list[bytes]:
    return [llvm.compile_object(ir, HOST, 2)[0] for ir in irs]


def fn(code, name, restype, *argtypes):
    return ctypes.CFUNCTYPE(restype, *argtypes)(code.address(name))


def test_tables_jump_tables_and_writable_globals_load_and_run():
    code = elfload.LoadedCode(objects(TABLE_IR))
    lookup = fn(code, "lookup", ctypes.c_float, ctypes.c_int64)
    pick = fn(code, "pick", ctypes.c_int64, ctypes.c_int64)
    count = fn(code, "count", ctypes.c_int64)
    assert [lookup(i) for i in range(8)] == [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]
    assert count() == 8
    assert [pick(i) for i in range(-1, 8)] == [-1, 11, 23, 37, 41, 53, 67, -1, -1]
    code.close()


def test_calls_between_objects_and_into_libm_resolve():
    code = elfload.LoadedCode(objects(TABLE_IR, CALLER_IR))
    f = fn(code, "twice_lookup_exp", ctypes.c_float, ctypes.c_int64)
    for i in range(8):
        assert f(i) == pytest.approx(2 * math.exp(1.5 + i), rel=1e-6)


def test_the_same_code_as_mcjit_gives_the_same_answers(monkeypatch):
    libraries = {}
    for loader in ("elf", "mcjit"):
        monkeypatch.setenv("SPARSEJIT_LOADER", loader)
        lib = llvm.CodeLibrary(HOST)
        for obj in objects(TABLE_IR, CALLER_IR):
            lib.add_object(obj)
        lib.finalize()
        assert lib.loader == loader
        libraries[loader] = lib
    results = {loader: [fn(lib, "twice_lookup_exp", ctypes.c_float, ctypes.c_int64)(i)
                        for i in range(8)] for loader, lib in libraries.items()}
    assert results["elf"] == results["mcjit"]


def test_code_is_not_writable_and_data_is_not_executable():
    code = elfload.LoadedCode(objects(TABLE_IR))
    address = code.address("pick")
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                assert perms.startswith("r-x"), line
                break
        else:
            pytest.fail("the code's page is not mapped")


def big_table_ir(floats: int) -> str:
    """A constant table of `floats` values (value i at index i) and a function reading it."""
    data = struct.pack(f"<{floats}f", *range(floats))
    text = "".join(f"\\{b:02x}" for b in data)
    return (f'@big = private unnamed_addr constant [{4 * floats} x i8] c"{text}", align 64\n'
            "define float @read_big(i64 %i) {\n"
            "  %p = getelementptr float, ptr @big, i64 %i\n"
            "  %v = load float, ptr %p, align 4\n"
            "  ret float %v\n}\n")


def mappings() -> list[tuple[int, int, list[str]]]:
    """(start, end, VmFlags) of every mapping of this process, from /proc/self/smaps."""
    found, span = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if line.startswith("VmFlags:"):
                found.append((*span, line.split()[1:]))
            elif "-" in head and ":" not in head:
                span = tuple(int(x, 16) for x in head.split("-"))
    return found


def mapping_of(address: int) -> tuple[int, int, list[str]]:
    return next(m for m in mappings() if m[0] <= address < m[1])


def test_large_read_only_data_starts_on_a_huge_page_and_asks_for_huge_pages():
    """Read-only data of at least HUGE_PAGE_MIN_BYTES (big sparse tables) starts on a 2 MiB
    boundary, right after the code, in a mapping marked for transparent huge pages (VmFlags
    "hg"); small data is not marked. Either way every value reads back."""
    floats = elfload.HUGE_PAGE_MIN_BYTES // 4 + 4096
    code = elfload.LoadedCode(objects(big_table_ir(floats)))
    read = fn(code, "read_big", ctypes.c_float, ctypes.c_int64)
    assert [read(i) for i in (0, 1, 4096, floats - 1)] == [0.0, 1.0, 4096.0, float(floats - 1)]
    _, code_end, code_flags = mapping_of(code.address("read_big"))
    data_start, _, data_flags = mapping_of(code_end)
    assert "ex" in code_flags and "hg" not in code_flags
    assert data_start == code_end and data_start % elfload.HUGE_PAGE == 0
    assert "ex" not in data_flags
    if Path("/sys/kernel/mm/transparent_hugepage").exists():  # a kernel with THP marks it
        assert "hg" in data_flags
    code.close()

    small = elfload.LoadedCode(objects(TABLE_IR))
    _, small_code_end, _ = mapping_of(small.address("lookup"))
    assert "hg" not in mapping_of(small_code_end)[2]
    small.close()


def test_unknown_symbols_are_a_key_error():
    code = elfload.LoadedCode(objects(TABLE_IR))
    with pytest.raises(KeyError, match="no_such_kernel"):
        code.address("no_such_kernel")


def _mutated(obj: bytes, offset: int, fmt: str, value) -> bytes:
    data = bytearray(obj)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize("mutation", ["empty", "truncated", "not elf", "big endian",
                                      "aarch64", "shared object", "section past the end",
                                      "unresolvable symbol"])
def test_objects_it_cannot_load_are_unsupported_not_a_crash(mutation):
    obj = objects(TABLE_IR)[0]
    shoff = struct.unpack_from("<Q", obj, 0x28)[0]
    bad = {
        "empty": b"",
        "truncated": obj[: len(obj) // 3],
        "not elf": b"\0" * len(obj),
        "big endian": _mutated(obj, 5, "<B", 2),
        "aarch64": _mutated(obj, 0x12, "<H", 183),
        "shared object": _mutated(obj, 0x10, "<H", 3),
        # the second section header's offset field (sh_offset at +0x18)
        "section past the end": _mutated(obj, shoff + 64 + 0x18, "<Q", len(obj) + 4096),
    }.get(mutation)
    if mutation == "unresolvable symbol":
        bad = objects("declare void @sj_not_a_symbol_anywhere()\n"
                      "define void @f() {\n  call void @sj_not_a_symbol_anywhere()\n  ret void\n}\n")[0]
    with pytest.raises(elfload.Unsupported):
        elfload.LoadedCode([bad])


def test_compile_loads_its_kernels_with_the_elf_loader():
    cm = sparsejit.compile(small_net(), threads=1)
    assert cm.program().library.loader == "elf", cm.program().library.fallback_reason


def test_mcjit_can_be_asked_for_and_computes_the_same(monkeypatch):
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y_elf = sparsejit.compile(small_net(), threads=1)(x)
    monkeypatch.setenv("SPARSEJIT_LOADER", "mcjit")
    cm = sparsejit.compile(small_net(), threads=1)
    assert cm.program().library.loader == "mcjit"
    np.testing.assert_array_equal(cm(x), y_elf)


def test_a_bad_loader_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("SPARSEJIT_LOADER", "dlopen")
    lib = llvm.CodeLibrary(HOST)
    with pytest.raises(ValueError, match="SPARSEJIT_LOADER"):
        lib.finalize()


def test_a_warm_process_never_loads_llvm(tmp_path):
    """The second process finds every object and LLVM's host answers in the cache: it compiles
    and runs without importing llvmlite.binding (whose pages are most of MCJIT's memory)."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        import sparsejit
        from tests.test_objcache import small_net
        cm = sparsejit.compile(small_net(), threads=1)
        y = cm(np.ones((2, 3, 8, 8), np.float32))
        print(cm.program().library.loader, "llvmlite.binding" in sys.modules)
    """)
    env = dict(os.environ, SPARSEJIT_CACHE_DIR=str(tmp_path), SPARSEJIT_TUNING_LOG="off")
    env.pop("SPARSEJIT_LOADER", None)
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout.split() == ["elf", "True"]  # cold: LLVM compiled the kernels
    assert runs[1].stdout.split() == ["elf", "False"]


def test_a_corrupted_host_entry_is_asked_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEJIT_CACHE_DIR", str(tmp_path))
    llvm._host_info.cache_clear()
    try:
        first = llvm._host_info()
        entries = list(tmp_path.rglob("*.o"))
        assert len(entries) == 1
        entries[0].write_bytes(entries[0].read_bytes()[:-3] + b"xyz")
        llvm._host_info.cache_clear()
        with pytest.warns(UserWarning, match="corrupted cache entry"):
            again = llvm._host_info()
        assert again == first
        assert again["cpu"] == llvm._llvm().get_host_cpu_name()
    finally:
        llvm._host_info.cache_clear()
