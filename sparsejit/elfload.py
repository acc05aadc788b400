"""Loading the x86-64 ELF objects LLVM emits for the kernels into executable memory, without LLVM.

MCJIT keeps LLVM's machinery resident for as long as the code runs (its engine, a copy of every
object file and the pages of libLLVM it touched: ~100 MiB for a pruned ResNet-50, more than the
model's weights and activations), so a warm load maps the objects itself: one anonymous mapping
per library holding every allocated section (code, then read-only data, then writable data and
a GOT), relocated, then made read+execute / read-only; large read-only data starts on a 2 MiB
boundary and asks for transparent huge pages. Only what LLVM's large-code-model PIC
objects use is supported; anything else (another machine, a relocation type not listed, a
symbol that cannot be resolved) raises `Unsupported`, and `llvm.CodeLibrary` falls back to MCJIT.

Undefined symbols resolve to the globals of the other objects in the same library, else to
the process's own symbols (libc/libm, via dlsym).
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import struct
import sys
import weakref
from dataclasses import dataclass, field


class Unsupported(Exception):
    """The objects cannot be loaded by this loader (the message says why)."""


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")

_SHT_PROGBITS, _SHT_SYMTAB, _SHT_STRTAB, _SHT_RELA, _SHT_NOBITS, _SHT_REL = 1, 2, 3, 4, 8, 9
_SHT_X86_64_UNWIND = 0x70000001  # .eh_frame: unwind tables, needed only to unwind through the
# code (exceptions, some profilers); MCJIT registers them, this loader does not load them
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 0x1, 0x2, 0x4
_SHN_UNDEF, _SHN_LORESERVE, _SHN_ABS, _SHN_COMMON = 0, 0xFF00, 0xFFF1, 0xFFF2
_STB_LOCAL = 0
_GOT_SYMBOL = "_GLOBAL_OFFSET_TABLE_"

# relocation type: (width in bytes, signed, uses a GOT slot). See the x86-64 psABI, table 4.9.
_R_64, _R_PC32, _R_GOT32, _R_PLT32, _R_GOTPCREL, _R_32, _R_32S = 1, 2, 3, 4, 9, 10, 11
_R_PC64, _R_GOTOFF64, _R_GOTPC32, _R_GOT64, _R_GOTPCREL64, _R_GOTPC64 = 24, 25, 26, 27, 28, 29
_R_GOTPCRELX, _R_REX_GOTPCRELX = 41, 42
_RELOCATIONS = {
    _R_64: (8, False), _R_PC32: (4, True), _R_PLT32: (4, True), _R_GOTPCREL: (4, True),
    _R_32: (4, False), _R_32S: (4, True), _R_PC64: (8, True), _R_GOTOFF64: (8, True),
    _R_GOTPC32: (4, True), _R_GOT64: (8, True), _R_GOTPCREL64: (8, True),
    _R_GOTPC64: (8, True), _R_GOTPCRELX: (4, True), _R_REX_GOTPCRELX: (4, True),
}
_GOT_SLOT_TYPES = {_R_GOTPCREL, _R_GOT64, _R_GOTPCREL64, _R_GOTPCRELX, _R_REX_GOTPCRELX}

PAGE = mmap.PAGESIZE
# Read-only data this large (the sparse tables of big layers) starts on a 2 MiB boundary and is
# marked for transparent huge pages, where the kernel offers them (Linux's "madvise" mode, the
# default of many distributions, gives them only to memory that asks). AMD Zen 4, CaffeNet at
# batch 1, whose 45 MB of FC tables stream from DRAM at every call (paired in-process A/B, both
# orders, 7 processes; the same code against itself: 1.00-1.02x): 1.04-1.09x, and its call times
# vary less from process to process; ResNet-50, VGG-16 and GoogLeNet, whose tables mostly come
# from L2 and L3, 1.00-1.01x. Why is not measured (no counters here): a TLB walk per 2 MiB of
# table instead of per 4 KiB is the likely part.
HUGE_PAGE = 2 << 20
HUGE_PAGE_MIN_BYTES = HUGE_PAGE
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)


@dataclass
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    address: int = 0  # once placed


@dataclass
class _Symbol:
    name: str
    bind: int
    shndx: int
    value: int


@dataclass
class _Object:
    """One parsed relocatable object: its sections, symbols and relocations (by section)."""

    data: bytes
    sections: list[_Section]
    symbols: list[_Symbol]
    relocations: list[tuple[int, list[tuple[int, int, int, int]]]] = field(default_factory=list)


def supported_platform() -> str | None:
    """None when this process can run the loader's output, else why not."""
    if sys.platform != "linux":
        return f"platform {sys.platform}"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"machine {platform.machine()}"
    return None


def _cstring(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    if offset >= len(table) or end < 0:
        raise Unsupported(f"string offset {offset} outside its table")
    return table[offset:end].decode("utf-8", "replace")


def _parse(data: bytes) -> _Object:
    if len(data) < _EHDR.size:
        raise Unsupported("object shorter than an ELF header")
    (ident, e_type, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum,
     shstrndx) = _EHDR.unpack_from(data)
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise Unsupported("not a little-endian ELF64 object")
    if e_type != 1 or machine != 62:
        raise Unsupported(f"ELF type {e_type} machine {machine}: not an x86-64 relocatable object")
    if shentsize != _SHDR.size or shoff + shnum * shentsize > len(data) or shstrndx >= shnum:
        raise Unsupported("section header table outside the object")
    raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    for s in raw:
        if s[1] != _SHT_NOBITS and s[4] + s[5] > len(data):
            raise Unsupported("a section lies outside the object")
    names = data[raw[shstrndx][4]:raw[shstrndx][4] + raw[shstrndx][5]]
    sections = [_Section(_cstring(names, s[0]) if s[0] or names else "", s[1], s[2], s[4], s[5],
                         s[6], s[7], max(1, s[8])) for s in raw]
    symbols: list[_Symbol] = []
    symtab = [s for s in sections if s.type == _SHT_SYMTAB]
    if len(symtab) > 1:
        raise Unsupported("more than one symbol table")
    if symtab:
        table = symtab[0]
        if table.link >= len(sections):
            raise Unsupported("symbol table without its string table")
        strtab = sections[table.link]
        strings = data[strtab.offset:strtab.offset + strtab.size]
        for i in range(table.size // _SYM.size):
            st_name, info, _, shndx, value, _ = _SYM.unpack_from(data, table.offset + i * _SYM.size)
            symbols.append(_Symbol(_cstring(strings, st_name) if st_name else "", info >> 4,
                                   shndx, value))
    obj = _Object(data, sections, symbols)
    for sec in sections:
        if sec.type == _SHT_X86_64_UNWIND:
            sec.flags &= ~_SHF_ALLOC
    for sec in sections:
        if sec.type == _SHT_REL:
            raise Unsupported(f"REL relocations in {sec.name}")
        if sec.type != _SHT_RELA:
            continue
        if sec.info >= len(sections):
            raise Unsupported(f"{sec.name} relocates a section that does not exist")
        target = sections[sec.info]
        if not target.flags & _SHF_ALLOC:
            continue  # debug or other non-loaded sections
        entries = []
        for i in range(sec.size // _RELA.size):
            r_offset, r_info, addend = _RELA.unpack_from(data, sec.offset + i * _RELA.size)
            sym, kind = r_info >> 32, r_info & 0xFFFFFFFF
            if kind not in _RELOCATIONS:
                raise Unsupported(f"relocation type {kind} in {sec.name}")
            if sym >= len(symbols) or r_offset + _RELOCATIONS[kind][0] > target.size:
                raise Unsupported(f"relocation outside {target.name} or its symbols")
            entries.append((r_offset, sym, kind, addend))
        obj.relocations.append((sec.info, entries))
    for sec in sections:
        if sec.flags & _SHF_ALLOC and sec.type not in (_SHT_PROGBITS, _SHT_NOBITS):
            if sec.size:
                raise Unsupported(f"allocated section {sec.name} of type {sec.type:#x}")
        if sec.flags & _SHF_ALLOC and sec.align > PAGE:
            raise Unsupported(f"section {sec.name} aligned to {sec.align}")
    for s in symbols:
        if s.shndx == _SHN_COMMON or (_SHN_LORESERVE <= s.shndx != _SHN_ABS):
            raise Unsupported(f"symbol {s.name} in special section {s.shndx:#x}")
    return obj


def _region(flags: int) -> int:
    """0: code (read+execute), 1: read-only data, 2: writable data."""
    if flags & _SHF_EXECINSTR:
        return 0
    return 2 if flags & _SHF_WRITE else 1


_libc = None


def _libc_functions():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = libc
    return _libc


def _process_symbol(name: str) -> int | None:
    try:
        return ctypes.cast(getattr(ctypes.CDLL(None), name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


class LoadedCode:
    """Objects mapped, relocated and protected; `address(name)` of their global symbols. The
    memory is unmapped by `close()` or when the object is collected: callers keep it alive as
    long as they call into it, as they keep an MCJIT engine."""

    def __init__(self, objects: list[bytes]) -> None:
        reason = supported_platform()
        if reason is not None:
            raise Unsupported(reason)
        parsed = [_parse(bytes(o)) for o in objects]
        # place every allocated section in its region, then the GOT at the end of read-only data
        sizes = [0, 0, 0]
        placements = []  # (object, section index, region, offset)
        for oi, obj in enumerate(parsed):
            for si, sec in enumerate(obj.sections):
                if sec.flags & _SHF_ALLOC:
                    region = _region(sec.flags)
                    offset = _round_up(sizes[region], sec.align)
                    sizes[region] = offset + sec.size
                    placements.append((oi, si, region, offset))
        got_slots: dict[tuple[int, str], int] = {}
        for oi, obj in enumerate(parsed):
            for _, entries in obj.relocations:
                for _, sym, kind, _ in entries:
                    if kind in _GOT_SLOT_TYPES:
                        got_slots.setdefault(self._slot_key(parsed, oi, sym), len(got_slots))
        got_offset = _round_up(sizes[1], 16)
        sizes[1] = got_offset + 8 * max(1, len(got_slots))
        spans = [_round_up(s, PAGE) for s in sizes]
        huge = spans[1] >= HUGE_PAGE_MIN_BYTES
        # room to move the read-only data up to the next 2 MiB boundary (never touched: no memory)
        self.size = sum(spans) + (HUGE_PAGE if huge else 0)
        libc = _libc_functions()
        base = libc.mmap(None, self.size, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise MemoryError(f"mmap of {self.size} bytes for generated code failed "
                              f"(errno {ctypes.get_errno()})")
        self.base = base
        self._finalizer = weakref.finalize(self, libc.munmap, base, self.size)
        data = _round_up(base + spans[0], HUGE_PAGE) if huge else base + spans[0]
        starts = [data - spans[0], data, data + spans[1]]
        if huge:  # before the data is copied in: its first touch then takes huge pages
            libc.madvise(data, spans[1], _MADV_HUGEPAGE)  # a hint: without THP it changes nothing
        try:
            for oi, si, region, offset in placements:
                sec = parsed[oi].sections[si]
                sec.address = starts[region] + offset
                if sec.type == _SHT_PROGBITS:
                    ctypes.memmove(sec.address, parsed[oi].data[sec.offset:sec.offset + sec.size],
                                   sec.size)
            self._symbols = self._globals(parsed)
            got = starts[1] + got_offset
            self._fill_got(parsed, got_slots, got)
            for oi, obj in enumerate(parsed):
                for si, entries in obj.relocations:
                    self._relocate(parsed, oi, obj.sections[si], entries, got, got_slots)
            for start, span, prot in ((starts[0], spans[0], mmap.PROT_READ | mmap.PROT_EXEC),
                                      (starts[1], spans[1], mmap.PROT_READ)):
                if span and libc.mprotect(start, span, prot) != 0:
                    raise Unsupported(f"mprotect refused (errno {ctypes.get_errno()}): "
                                      "this system does not allow executable mappings")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _slot_key(parsed: list[_Object], oi: int, sym: int) -> tuple[int, str]:
        s = parsed[oi].symbols[sym]
        # a local symbol is one object's; a global one is shared by name
        return (oi, f"#{sym}") if s.bind == _STB_LOCAL else (-1, s.name)

    @staticmethod
    def _globals(parsed: list[_Object]) -> dict[str, int]:
        table: dict[str, int] = {}
        for obj in parsed:
            for s in obj.symbols:
                if s.bind != _STB_LOCAL and s.shndx != _SHN_UNDEF and s.name:
                    if s.name in table:
                        raise Unsupported(f"symbol {s.name} defined twice")
                    table[s.name] = (s.value if s.shndx == _SHN_ABS
                                     else obj.sections[s.shndx].address + s.value)
        return table

    def _symbol_address(self, parsed: list[_Object], oi: int, sym: int, got: int) -> int:
        s = parsed[oi].symbols[sym]
        if s.shndx == _SHN_ABS:
            return s.value
        if s.shndx != _SHN_UNDEF:
            sec = parsed[oi].sections[s.shndx]
            if not sec.flags & _SHF_ALLOC:
                raise Unsupported(f"relocation against unloaded section {sec.name}")
            return sec.address + s.value
        if s.name == _GOT_SYMBOL:
            return got
        if s.name in self._symbols:
            return self._symbols[s.name]
        address = _process_symbol(s.name)
        if not address:
            raise Unsupported(f"undefined symbol {s.name}")
        return address

    def _fill_got(self, parsed, got_slots, got) -> None:
        for (oi, name), slot in got_slots.items():
            if oi < 0:
                obj_index, sym = next((i, j) for i, o in enumerate(parsed)
                                      for j, s in enumerate(o.symbols) if s.name == name)
            else:
                obj_index, sym = oi, int(name[1:])
            ctypes.c_uint64.from_address(got + 8 * slot).value = \
                self._symbol_address(parsed, obj_index, sym, got)

    def _relocate(self, parsed, oi, sec: _Section, entries, got, got_slots) -> None:
        for r_offset, sym, kind, addend in entries:
            place = sec.address + r_offset
            s = self._symbol_address(parsed, oi, sym, got)
            g = 8 * got_slots[self._slot_key(parsed, oi, sym)] if kind in _GOT_SLOT_TYPES else 0
            if kind in (_R_64, _R_32, _R_32S):
                value = s + addend
            elif kind in (_R_PC32, _R_PLT32, _R_PC64):
                value = s + addend - place
            elif kind == _R_GOTOFF64:
                value = s + addend - got
            elif kind in (_R_GOTPC32, _R_GOTPC64):
                value = got + addend - place
            elif kind == _R_GOT64:
                value = g + addend
            else:  # GOTPCREL, GOTPCREL64, GOTPCRELX, REX_GOTPCRELX: the slot, PC-relative
                value = got + g + addend - place
            width, signed = _RELOCATIONS[kind]
            bits = 8 * width
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            if width == 8:
                value &= (1 << 64) - 1  # 64-bit fields wrap like the hardware's arithmetic
            elif not low <= value <= high:
                raise Unsupported(f"relocation type {kind} in {sec.name} out of range")
            (ctypes.c_uint64 if width == 8 else ctypes.c_uint32).from_address(place).value = \
                value & ((1 << bits) - 1)

    def address(self, symbol: str) -> int:
        try:
            return self._symbols[symbol]
        except KeyError:
            raise KeyError(f"symbol '{symbol}' not found in compiled code") from None

    def close(self) -> None:
        self._finalizer()
