"""Cost of the node's sampling path on the MicroPython unix port: driver read vs read + cleaning vs a full
sampler cycle (read, clean, sink), per sensor of the sim board, in esp32-devkitc's heap.

Prints microseconds per reading and the ratios against the bare driver read measured in the same process,
so the numbers say how much cleaning adds, not how fast this machine is. Run:
    PYTHONPATH=host .venv/bin/python bench/sampling_cost.py
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from edgefleet.board.boards import load_board
from edgefleet.paths import project_root
from edgefleet.runtime import micropython_argv, micropython_env

SCRIPT = r"""
import time, sys
from array import array
from node import board as bm
from node import appboot as hwm
from node.clean import Cleaner
from node.sampler import Sampler

class Null:
    def reading(self, *a): return 0
    def event(self, *a): return 0

N = 1000
b = bm.load(sys.argv[1])
cfg = {"rates": {"env": 1, "imu": 100, "soil": 1, "air": 0.5}, "log_every": {"env": 1, "imu": 10, "soil": 10, "air": 2}}
h = hwm.build(b, cfg)
h.sim.scenario.set_time(0.0)
s = Sampler(h, cfg, Null())
def best(fn):
    # the machine is shared: the fastest of 5 rounds is the cost, the rest is other people's load
    m = None
    for _ in range(5):
        t0 = time.ticks_us()
        fn()
        d = time.ticks_diff(time.ticks_us(), t0) / N
        m = d if m is None or d < m else m
    return m

for sl in s.slots:
    sen = sl.sensor
    out = array("f", [0.0] * len(sen.channels))
    c = Cleaner(sen.kind, sen.channels, 1, limits=getattr(sen, "limits", None))
    cleaned = array("f", out)
    sen.read(out)

    def read():
        for i in range(N):
            sen.read(out)

    def read_clean():
        for i in range(N):
            sen.read(out)
            c.process(out, cleaned)

    def cycle():
        for i in range(N):
            s.cycle(sl)

    r = best(read)
    rc = best(read_clean)
    cy = best(cycle)
    print("%-5s %-8s read %7.1f us  read+clean %7.1f us (x%.2f)  cycle %7.1f us (x%.2f)  clean alone %6.1f us"
          % (sl.name, sen.kind, r, rc, rc / r, cy, cy / r, rc - r))
"""


def main() -> None:
    board = load_board("esp32-devkitc")
    sim = project_root() / "boards" / "sim.json"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(SCRIPT)
        script = f.name
    try:
        argv = micropython_argv(board.heap_bytes, script, [str(sim)])
        out = subprocess.run(argv, env=micropython_env(), capture_output=True, text=True, timeout=300)
    finally:
        Path(script).unlink()
    print(out.stdout + out.stderr, end="")
    if out.returncode:
        raise SystemExit(out.returncode)


if __name__ == "__main__":
    main()
