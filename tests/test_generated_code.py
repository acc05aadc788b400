"""Properties every generated module must have, whatever the kernel.

No module may call an external symbol: an object with a call to a libm/libc function (llvm.pow
lowers to powf), loaded into MCJIT with the large code model, corrupted the constant loads of
every object loaded after it in the same library (found when the schedule driver called
sched_yield: an LRN kernel loaded next returned inf). Kernels use intrinsics that lower to
instructions, and the driver gets sched_yield's address as data.
"""

from __future__ import annotations

import re

import pytest

import sparsejit
from sparsejit import models
from sparsejit.codegen.schedule import render_schedule


@pytest.fixture(scope="module")
def tiny():
    return sparsejit.compile(models.build("tiny", batch=1), threads=1)


def external_declarations(ir: str) -> list[str]:
    return [name for name in re.findall(r"^declare [^@]*@([\w.$]+)\(", ir, re.M)
            if not name.startswith("llvm.")]


def test_kernels_declare_only_intrinsics(tiny):
    kernels = [info for info in tiny.lowered().layers if info.source is not None]
    assert len({info.kernel.split()[0] for info in kernels}) >= 4  # conv, pool, lrn, fc kinds
    for info in kernels:
        assert external_declarations(info.ir) == [], info.name


def test_the_driver_declares_only_intrinsics():
    assert external_declarations(render_schedule("host")) == []


def test_the_check_sees_an_external_call():
    assert external_declarations("declare float @powf(float)\ndeclare i32 @llvm.x(i32)\n") == ["powf"]
