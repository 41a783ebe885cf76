"""`edgefleet build-module`: the `efm` C module (firmware/cmodule) as a native .mpy for a board's arch.

Linking a native .mpy needs MicroPython's own source tree (py/dynruntime.mk, tools/mpy_ld.py, which also
generates the module's qstrs): no registry we use ships it, so the user points --mpy-dir (or $MPY_DIR) at a
checkout. Before running make we check each ingredient and name exactly what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..board.boards import load_board
from ..errors import EdgefleetError
from ..paths import firmware_dir

log = logging.getLogger(__name__)

# Cross compilers dynruntime.mk uses per ARCH (CROSS prefix + gcc); rv32imc accepts riscv64-unknown-elf too.
TOOLCHAINS = {
    "x64": [""],
    "x86": [""],
    "xtensawin": ["xtensa-esp32-elf-"],
    "rv32imc": ["riscv32-unknown-elf-", "riscv64-unknown-elf-"],
}
TOOLCHAIN_HINTS = {
    "xtensawin": "install the ESP-IDF (it provides xtensa-esp32-elf-gcc) and source its export.sh",
    "rv32imc": "sudo apt-get install gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf (dynruntime.mk uses both)",
    "x64": "sudo apt-get install gcc",
}


def check_mpy_dir(mpy_dir: str | None) -> Path:
    if not mpy_dir:
        raise EdgefleetError("MicroPython source tree not given", hint="--mpy-dir PATH or MPY_DIR=PATH to a checkout "
                             "of github.com/micropython/micropython (py/dynruntime.mk and tools/mpy_ld.py are needed)")  # fmt: skip
    root = Path(mpy_dir).expanduser()
    for need in ("py/dynruntime.mk", "tools/mpy_ld.py"):
        if not (root / need).is_file():
            raise EdgefleetError(
                f"MicroPython source tree {root} lacks {need}", hint="point --mpy-dir at a full checkout"
            )
    return root


def find_cross(arch: str) -> str:
    prefixes = TOOLCHAINS.get(arch)
    if prefixes is None:
        raise EdgefleetError(f"no native-module toolchain known for arch {arch}")
    for prefix in prefixes:
        if shutil.which(prefix + "gcc"):
            return prefix
    want = " or ".join(p + "gcc" for p in prefixes)
    raise EdgefleetError(f"cross toolchain for {arch} missing: {want} not on PATH", hint=TOOLCHAIN_HINTS.get(arch))


def emlearn_headers() -> Path:
    try:
        import emlearn
    except ImportError as e:
        raise EdgefleetError(
            "emlearn headers missing: the emlearn package is not installed", hint="pip install emlearn"
        ) from e
    inc = Path(emlearn.includedir)
    if not (inc / "eml_trees.h").is_file():
        raise EdgefleetError(f"emlearn headers missing: no eml_trees.h in {inc}", hint="pip install -U emlearn")
    return inc


def check_linker_deps() -> None:
    """MicroPython's tools/mpy_ld.py reads ELF with pyelftools and libgcc.a with the `ar` package."""
    import importlib.util

    missing = [pkg for mod, pkg in (("elftools", "pyelftools"), ("ar", "ar")) if importlib.util.find_spec(mod) is None]
    if missing:
        raise EdgefleetError(f"MicroPython's mpy_ld.py needs {' and '.join(missing)}",
                             hint="pip install " + " ".join(missing) + " (in edgefleet's dev extras)")  # fmt: skip


def make_argv(arch: str, root: Path, inc: Path, work: Path, cross: str) -> list[str]:
    """make's command line. PYTHON goes on the command line: py/dynruntime.mk assigns PYTHON = python3 itself, so
    an environment variable is overridden and whatever python3 is first on PATH would run mpy_ld.py (and lack
    the pyelftools we checked in *our* interpreter). Command-line variables override the makefile's."""
    return ["make", "-C", str(work), f"ARCH={arch}", f"MPY_DIR={root}", f"EMLEARN_INCLUDE={inc}",
            f"BUILD={work / 'build'}", f"CROSS={cross}", f"PYTHON={sys.executable}"]  # fmt: skip


def build(board: str, mpy_dir: str | None, out: Path | None = None) -> Path:
    """Build efm.mpy for the board's arch in a scratch copy of firmware/cmodule, so the source tree never gets
    object files, .mpy or __pycache__; only efm.mpy is copied to `out` (default ./build/efm-<arch>)."""
    b = load_board(board)
    arch = b.arch
    root = check_mpy_dir(mpy_dir)
    cross = find_cross(arch)
    if not shutil.which("make"):
        raise EdgefleetError("`make` not found", hint="sudo apt-get install make")
    inc = emlearn_headers()
    check_linker_deps()
    src = firmware_dir() / "cmodule"
    target_dir = Path(out or Path.cwd() / "build" / f"efm-{arch}").resolve()
    with tempfile.TemporaryDirectory(prefix="efm-build-") as tmp:
        work = Path(tmp) / "cmodule"
        shutil.copytree(src, work, ignore=shutil.ignore_patterns("build*", "*.mpy", "__pycache__"))
        argv = make_argv(arch, root, inc, work, cross)
        log.info("building efm.mpy for %s (%s): %s", b.name, arch, " ".join(argv))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise EdgefleetError(f"building the C module failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        mpy = work / "efm.mpy"
        if not mpy.is_file():
            raise EdgefleetError(f"make succeeded but {mpy.name} was not produced")
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / "efm.mpy"
        shutil.copyfile(mpy, target)
    return target
