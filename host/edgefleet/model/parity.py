"""Parity between (a) the trained model, (b) emlearn's C code compiled with gcc, (c) the node's runner on
MicroPython, plus our C core (firmware/cmodule) on the same model file. Used by convert, tests and bench.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgefleetError
from ..paths import firmware_dir
from ..runtime import find_micropython, micropython_env

CSRC = Path(__file__).with_name("csrc")
# Runs on the unix port, beside the simulated board it is not part of (firmware/simboard/).
NODE_SCRIPT = firmware_dir() / "simboard" / "node_infer.py"
ESP32_HEAP = 110 * 1024


def emlearn_include() -> Path:
    try:
        import emlearn
    except ImportError as e:
        raise EdgefleetError("emlearn is not installed", hint="pip install emlearn") from e
    return Path(emlearn.includedir)


def find_gcc() -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise EdgefleetError("no C compiler (gcc) found", hint="sudo apt-get install gcc")
    return gcc


def _compile(sources: list[Path], out: Path, includes: list[Path], defines: list[str]) -> None:
    # -ffp-contract=off as in firmware/cmodule's builds: no fused multiply-add, features round like the definition
    argv = [find_gcc(), "-std=c11", "-Wall", "-Werror", "-O2", "-ffp-contract=off", *[f"-I{p}" for p in includes],
            *[f"-D{d}" for d in defines], *map(str, sources), "-o", str(out), "-lm"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise EdgefleetError(f"gcc failed on {sources[0].name}:\n{proc.stderr.strip()[-3000:]}")


def build_emlearn_harness(
    model_dir: Path, work: Path, int16_input: bool, float_output: bool, net: bool = False, elliptic: bool = False
) -> Path:
    """gcc -Wall -Werror: the generated model.h inside a small harness (CI's check of every model.h)."""
    exe = work / "emlearn_harness"
    defines = (["EFM_INPUT_INT16"] if int16_input else []) + (["EFM_OUTPUT_FLOAT"] if float_output else [])
    defines += (["EFM_NET"] if net else []) + (["EFM_ELLIPTIC"] if elliptic else [])
    _compile([CSRC / "emlearn_harness.c"], exe, [model_dir, emlearn_include()], defines)
    return exe


def build_core_harness(work: Path) -> Path:
    exe = work / "efm_harness"
    core = firmware_dir() / "cmodule"
    _compile([CSRC / "efm_harness.c", core / "efm_core.c"], exe, [core, emlearn_include()], [])
    return exe


def build_features_harness(model_dir: Path, work: Path) -> Path:
    """The all-C baseline: efm_core's features + quantization and emlearn's model.h forest, per window."""
    exe = work / "features_harness"
    core = firmware_dir() / "cmodule"
    _compile([CSRC / "features_harness.c"], exe, [model_dir, core, emlearn_include()], [])
    return exe


def run_features_harness(
    exe: Path, efm: Path, windows: np.ndarray, work: Path, repeat: int
) -> tuple[np.ndarray, float, float]:
    """(classes, µs per window for features + quantization + forest, µs of it for features)."""
    inp = work / "windows.bin"
    np.ascontiguousarray(windows, dtype="<f4").tofile(inp)
    proc = subprocess.run([str(exe), str(efm), str(inp), str(windows.shape[1]), str(windows.shape[2]), str(repeat)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    m = re.search(r"us_per_window=([\d.]+) us_features=([\d.]+)", proc.stderr)
    return np.array([int(v) for v in proc.stdout.split()]), float(m.group(1)), float(m.group(2))


def run_emlearn(exe: Path, rows: np.ndarray, work: Path, float_output: bool) -> np.ndarray:
    inp = work / "emlearn_in.bin"
    rows.tofile(inp)
    out = subprocess.run([str(exe), str(inp), str(rows.shape[1])], capture_output=True, text=True, check=True).stdout
    return np.array([float(v) if float_output else int(v) for v in out.split()])


def run_core(exe: Path, efm: Path, q: np.ndarray, work: Path) -> tuple[np.ndarray, np.ndarray]:
    inp = work / "core_in.bin"
    q.astype("<i2").tofile(inp)
    proc = subprocess.run([str(exe), str(efm), str(inp)], capture_output=True, text=True)
    if proc.returncode:
        raise EdgefleetError(f"C core failed on {efm}: {proc.stderr.strip()}")
    vals = np.array([line.split() for line in proc.stdout.splitlines()], dtype=float).reshape(-1, 2)
    return vals[:, 0].astype(int), vals[:, 1]


@dataclass
class NodeRun:
    index: np.ndarray
    score: np.ndarray
    q: np.ndarray
    us_per_infer: float
    backend: str
    model_ram: int
    us_per_features: float


def run_node(efm: Path, windows: np.ndarray, n_features: int, heap: int = ESP32_HEAP, key: bytes | None = None,
             repeat: int = 1, timeout: float = 600, extra_path: list[Path] | None = None) -> NodeRun:  # fmt: skip
    """(c): the firmware's runner on the MicroPython unix port, within the board's heap.

    extra_path: more MICROPYPATH entries, e.g. a directory holding the built efm.mpy C module."""
    with tempfile.TemporaryDirectory() as tmp:
        win = Path(tmp) / "windows.bin"
        out = Path(tmp) / "out.bin"
        np.ascontiguousarray(windows, dtype="<f4").tofile(win)
        argv = [find_micropython(), "-X", f"heapsize={heap}", str(NODE_SCRIPT), str(efm), str(win),
                str(len(windows)), str(out), key.hex() if key else "-", str(repeat)]  # fmt: skip
        proc = subprocess.run(
            argv, env=micropython_env(extra_path or []), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode:
            raise EdgefleetError(f"node runner failed on MicroPython:\n{(proc.stdout + proc.stderr)[-3000:]}")
        m = re.search(r"backend=(\S+) us_per_infer=([\d.]+) model_ram=(\d+) us_per_features=([\d.]+)", proc.stdout)
        rec = np.dtype([("idx", "<i4"), ("score", "<f4"), ("q", "<i2", (n_features,))])
        data = np.fromfile(out, dtype=rec)
    return NodeRun(data["idx"], data["score"], data["q"], float(m.group(2)) if m else float("nan"),
                   m.group(1) if m else "?", int(m.group(3)) if m else -1, float(m.group(4)) if m else float("nan"))  # fmt: skip


def agreement(a: np.ndarray, b: np.ndarray, regress: bool = False, rtol: float = 1e-4) -> float:
    if len(a) == 0:
        return 1.0
    if regress:
        return float(np.mean(np.isclose(a, b, rtol=rtol, atol=1e-6)))
    return float(np.mean(np.asarray(a) == np.asarray(b)))
