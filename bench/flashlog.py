"""Write amplification of the node's flash log vs littlefs append+flush per record, on the simulated NOR flash.

Both run on the MicroPython unix port with the sim board's flash (node.sim.flash counts every programmed byte
and erased block). The log is fed one hour of node time at the default logging rates (env 1 Hz, imu logged
1 Hz, soil 0.1 Hz, air 0.25 Hz) on a virtual clock, once with the network up (the publisher acknowledges what
is flushed, so ack markers are written too) and once with it down. The baseline appends the same encoded
records to a littlefs file and flushes after each one, as a naive logger would.

    PYTHONPATH=host .venv/bin/python bench/flashlog.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from edgefleet.boards import load_board  # noqa: E402
from edgefleet.runtime import micropython_argv, micropython_env  # noqa: E402

MPY_BENCH = r"""
import json, os, sys
from array import array
from node import board as B
from node import records as R
from node.flashlog import FlashLog
from node.sim.flash import open_board_flash, mount_vfs

board = B.load(sys.argv[1])
img = sys.argv[2]
seconds = int(sys.argv[3])
baseline_n = int(sys.argv[4])
flush_bytes = int(sys.argv[5])
flush_s = int(sys.argv[6])
# (sensor, period ms, values)
SENSORS = (("env", 1000, array("f", [21.5, 40.2, 1013.2])),
           ("imu", 1000, array("f", [0.01, -0.02, 0.98, 0.1, 0.0, -0.3])),
           ("soil", 10000, array("f", [42.0])),
           ("air", 4000, array("f", [21.0, 40.0])))
CH = {"env": ("t", "h", "p"), "imu": ("ax", "ay", "az", "gx", "gy", "gz"), "soil": ("value",), "air": ("t", "h")}
T0 = 1764180000000

def schedule(seconds):
    # (t_ms, sensor index) in time order
    t = 0
    while t < seconds * 1000:
        for i, s in enumerate(SENSORS):
            if t % s[1] == 0:
                yield t, i
        t += 250

def run_log(acks):
    fl = open_board_flash(board, img + (".up" if acks else ".down"))
    off, size = B.partition(board, "log")
    now = [0]
    log = FlashLog(fl.partition(off, size), flush_bytes=flush_bytes, flush_ms=flush_s * 1000,
                   ticks_ms=lambda: now[0])
    rec_bytes = 0
    n = 0
    for t, i in schedule(seconds):
        now[0] = t
        if log.flush_due():
            log.flush()
            if acks:
                log.ack(log.durable)
        name, _, vals = SENSORS[i]
        log.reading(name, T0 + t, 0, CH[name], vals)
        rec_bytes += R.reading_size(name, len(vals))
        n += 1
        if acks and log.blen == 0:
            log.ack(log.durable)
    log.flush()
    return {"records": n, "record_bytes": rec_bytes, "programmed": fl.programmed, "erased": fl.erased,
            "dropped": log.dropped}

def run_littlefs():
    fl = open_board_flash(board, img + ".lfs")
    mount_vfs(fl, board, "/flash")
    p0, e0 = fl.programmed, fl.erased
    buf = bytearray(R.MAX_SIZE)
    tab = R.crc_table()
    rec_bytes = 0
    n = 0
    with open("log.bin", "ab") as f:
        for t, i in schedule(seconds):
            if n >= baseline_n:
                break
            name, _, vals = SENSORS[i]
            ln = R.put_reading(buf, 0, tab, n + 1, T0 + t, 0, name, vals, len(vals))
            f.write(memoryview(buf)[:ln])
            f.flush()
            rec_bytes += ln
            n += 1
    return {"records": n, "record_bytes": rec_bytes, "programmed": fl.programmed - p0, "erased": fl.erased - e0}

out = {"up": run_log(True), "down": run_log(False), "littlefs": run_littlefs()}
print("BENCH " + json.dumps(out))
"""


def main() -> int:
    board = load_board("sim")
    seconds, baseline_n, flush_bytes, flush_s = 3600, 1000, 256, 5
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench_flashlog.py"
        script.write_text(MPY_BENCH)
        argv = micropython_argv(
            board.heap_bytes,
            script,
            [str(board.path), str(Path(tmp) / "flash"), str(seconds), str(baseline_n), str(flush_bytes), str(flush_s)],
        )
        proc = subprocess.run(argv, env=micropython_env(), capture_output=True, text=True, timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode or line is None:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 1
    res = json.loads(line[6:])
    print(f"flash log write amplification, sim board, {seconds} s at the default logging rates")
    print(f"(flush at {flush_bytes} bytes or {flush_s} s; write amplification = bytes programmed / record bytes)")
    print(f"{'run':<34}{'records':>9}{'record B':>11}{'programmed B':>14}{'erases':>8}{'WA':>8}")
    rows = (
        ("flashlog, network up (acks)", res["up"]),
        ("flashlog, network down", res["down"]),
        ("littlefs append+flush per record", res["littlefs"]),
    )
    for name, r in rows:
        wa = r["programmed"] / r["record_bytes"]
        print(f"{name:<34}{r['records']:>9}{r['record_bytes']:>11}{r['programmed']:>14}{r['erased']:>8}{wa:>8.2f}")
    base = res["littlefs"]["programmed"] / res["littlefs"]["record_bytes"]
    ours = res["up"]["programmed"] / res["up"]["record_bytes"]
    print(
        f"ratio littlefs / flashlog (network up): {base / ours:.1f}x less flash written; goal WA <= 2: "
        f"{'met' if ours <= 2 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
