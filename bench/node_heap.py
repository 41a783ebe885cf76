"""Where the whole node's heap goes, on the 64-bit pip unix port and (with --mp32) a 32-bit build, and the
smallest -X heapsize it runs in. The figures behind runtime.HEAP_FACTOR_64BIT and SIM_MACHINERY_BYTES.

    PYTHONPATH=host .venv/bin/python bench/node_heap.py [--mp32 /tmp/micropython32] [--min-heap] [--run-s 15]

Table: one row per boot step (tests/firmware/heap_parts.py: gc.mem_alloc() after gc.collect(), minus the
step before), marked `sim` (only the sim board spends it) or `board` (an ESP32 spends it too), then the
sums, the ratio 64/32, and with --min-heap the smallest heap (bisected to 1 KB) at which the whole node
(tests/firmware/fullnode.py: sampling, decision with models/basicmotions-rf, flash log, MQTT to mosquitto,
status every 2 s) runs --run-s seconds without a MemoryError or safe mode.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from edgefleet.board.boards import load_board  # noqa: E402
from edgefleet.broker.mosquitto import Mosquitto  # noqa: E402
from edgefleet.runtime import find_micropython, interpreter_bits, micropython_env  # noqa: E402

PARTS = ROOT / "tests" / "firmware" / "heap_parts.py"
FULLNODE = ROOT / "tests" / "firmware" / "fullnode.py"
MODEL = ROOT / "models" / "basicmotions-rf" / "model.efm"
BOARD = load_board("sim")


def parts(mp: str) -> list[tuple[str, str, int]]:
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [mp, "-X", "heapsize=400000", str(PARTS), str(BOARD.path), f"{d}/flash.img", str(MODEL)],
            env=micropython_env(executable=mp), cwd=d, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    return [(m[0], m[1], int(m[2])) for m in re.findall(r"^part (.+) (sim|board) (-?\d+)$", out, re.M)]


def runs_at(mp: str, heap: int, url: str, run_s: float) -> bool:
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "out"
        with log.open("w") as f:
            p = subprocess.Popen(
                [mp, "-X", f"heapsize={heap}", str(FULLNODE), str(BOARD.path), f"{d}/flash.img", "bench-heap", url,
                 str(MODEL), "3", "2"],
                env=micropython_env(extra_path=[FULLNODE.parent], executable=mp), cwd=d, stdout=f,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            time.sleep(run_s)
            alive = p.poll() is None
            p.send_signal(2)
            p.wait(10)
        text = log.read_text(errors="replace")
    bad = ("MemoryError", "memory allocation failed", "safe mode", "Traceback", "fatal")
    return alive and "fullnode: heap" in text and not any(b in text for b in bad)


def min_heap(mp: str, url: str, run_s: float, lo: int, hi: int) -> int:
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        if runs_at(mp, mid, url, run_s):
            hi = mid
        else:
            lo = mid
        print(f"  {Path(mp).name}: {lo}..{hi}", file=sys.stderr, flush=True)
    return hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mp32", help="a 32-bit MicroPython unix port (e.g. /tmp/micropython32)")
    ap.add_argument("--min-heap", action="store_true", help="also bisect the smallest heap (slow: minutes)")
    ap.add_argument("--run-s", type=float, default=15.0)
    args = ap.parse_args()
    mps = [find_micropython(use_env=False)] + ([args.mp32] if args.mp32 else [])
    bits = [interpreter_bits(mp) for mp in mps]
    cols = {b: parts(mp) for b, mp in zip(bits, mps, strict=True)}
    names = [(n, w) for n, w, _ in cols[bits[0]]]
    print(f"{'step':<66} {'where':<5} " + " ".join(f"{b:>3}-bit" for b in bits))
    for i, (n, w) in enumerate(names):
        print(f"{n:<66} {w:<5} " + " ".join(f"{cols[b][i][2]:>7}" for b in bits))
    sums = {b: {w: sum(v for _, ww, v in cols[b] if ww == w) for w in ("sim", "board")} for b in bits}
    for w in ("board", "sim"):
        print(f"{'sum ' + w:<72} " + " ".join(f"{sums[b][w]:>7}" for b in bits))
    total = {b: sums[b]["sim"] + sums[b]["board"] for b in bits}
    print(f"{'total in use after boot':<72} " + " ".join(f"{total[b]:>7}" for b in bits))
    if len(bits) == 2:
        print(
            f"ratio 64/32 of what is in use: {total[64] / total[32]:.2f} (board parts {sums[64]['board'] / sums[32]['board']:.2f})"
        )
    if args.min_heap:
        with tempfile.TemporaryDirectory() as d:
            broker = Mosquitto(data_dir=Path(d))
            broker.start()
            try:
                found = {
                    b: min_heap(mp, broker.url, args.run_s, total[b], 2 * total[b])
                    for b, mp in zip(bits, mps, strict=True)
                }
            finally:
                broker.stop()
        for b in bits:
            print(f"smallest -X heapsize, {b}-bit: {found[b]} ({found[b] - total[b]} above what is in use)")
        if len(bits) == 2:
            print(f"ratio 64/32 of the smallest heap: {found[64] / found[32]:.2f}")
        print(f"board heap {BOARD.heap_bytes}")


if __name__ == "__main__":
    main()
