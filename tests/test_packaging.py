"""The wheel ships the templates where the installed package looks for them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_templates(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("sparsejit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("sparsejit/templates/")}
    in_repo = {p.name for p in (ROOT / "templates").glob("*.ll.j2")}
    assert in_repo and in_repo <= shipped, f"templates missing from the wheel: {in_repo - shipped}"
