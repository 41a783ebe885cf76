"""Write amplification of the node's flash log vs littlefs append+flush per record, on the simulated NOR flash.

Both run on the MicroPython unix port with the sim board's flash (simboard.flash counts every programmed byte
and erased block). The log is fed one hour of node time at the default logging rates (env 1 Hz, imu logged
1 Hz, soil 0.1 Hz, air 0.25 Hz) on a virtual clock: today's per-record log with the collector's stored acks
every 5 s (so ack markers are written too), the same with records padded to 16-byte units (ESP32 flash
encryption), with the network down; beside it, in the same run, the previous batched log (git OLD_LOG_COMMIT)
and the baseline that appends the same encoded records to a littlefs file and flushes after each one.

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

from edgefleet.board.boards import load_board  # noqa: E402
from edgefleet.runtime import micropython_argv, micropython_env  # noqa: E402

# The last commit with the batched log (before issue 11), measured in the same run for comparison.
OLD_LOG_COMMIT = "5b3d2b4"

MPY_BENCH = r"""
import json, os, sys
from array import array
from node import board as B
from node import records as R
from node.flashlog import FlashLog
from simboard.flash import open_board_flash, mount_vfs

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

def run_log(name, acks, align):
    # Today's log: every record programmed when logged; the collector's stored acks arrive every flush_s
    # (one message per batch) for everything logged until then.
    fl = open_board_flash(board, img + "." + name)
    off, size = B.partition(board, "log")
    now = [0]
    log = FlashLog(fl.partition(off, size), align=align, ticks_ms=lambda: now[0])
    rec_bytes = 0
    n = 0
    next_ack = flush_s * 1000
    for t, i in schedule(seconds):
        now[0] = t
        if acks and t >= next_ack:
            log.ack(log.durable)
            next_ack += flush_s * 1000
        sname, _, vals = SENSORS[i]
        log.reading(sname, T0 + t, 0, CH[sname], vals)
        rec_bytes += R.reading_size(sname, len(vals))
        n += 1
    log.close()
    return {"records": n, "record_bytes": rec_bytes, "programmed": fl.programmed, "erased": fl.erased,
            "dropped": log.dropped, "erase_counts": log.erase_counts()}

def run_batch_log(acks):
    # The previous log (main before issue 11, module oldflashlog): records batched in RAM, programmed every
    # flush_bytes or flush_s; PUBACK acks written after each flush. A power cut lost the batch. It runs with its
    # own record format (oldrecords: 16-byte header, a 3-channel reading 37 bytes).
    import oldflashlog
    import oldrecords
    fl = open_board_flash(board, img + ".old")
    off, size = B.partition(board, "log")
    now = [0]
    log = oldflashlog.FlashLog(fl.partition(off, size), flush_bytes=flush_bytes, flush_ms=flush_s * 1000,
                               ticks_ms=lambda: now[0])
    rec_bytes = 0
    n = 0
    for t, i in schedule(seconds):
        now[0] = t
        if log.flush_due():
            log.flush()
            if acks:
                log.ack(log.durable)
        sname, _, vals = SENSORS[i]
        log.reading(sname, T0 + t, 0, CH[sname], vals)
        rec_bytes += oldrecords.reading_size(sname, len(vals))
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
    rec_bytes = 0
    n = 0
    with open("log.bin", "ab") as f:
        for t, i in schedule(seconds):
            if n >= baseline_n:
                break
            sname, _, vals = SENSORS[i]
            ln = R.put_reading(buf, 0, n + 1, T0 + t, 0, sname, vals, len(vals))
            f.write(memoryview(buf)[:ln])
            f.flush()
            rec_bytes += ln
            n += 1
    return {"records": n, "record_bytes": rec_bytes, "programmed": fl.programmed - p0, "erased": fl.erased - e0}

out = {"up": run_log("up", True, 1), "up16": run_log("up16", True, 16), "down": run_log("down", False, 1)}
try:
    out["old"] = run_batch_log(True)
except ImportError:
    pass
out["littlefs"] = run_littlefs()
print("BENCH " + json.dumps(out))
"""


def _old_source(path: str) -> str | None:
    """A firmware file as it was before issue 11 (the batched log), for the same-run comparison."""
    try:
        return subprocess.run(
            ["git", "show", f"{OLD_LOG_COMMIT}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    board = load_board("sim")
    seconds, baseline_n, flush_bytes, flush_s = 3600, 1000, 256, 5
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench_flashlog.py"
        script.write_text(MPY_BENCH)
        old_log = _old_source("firmware/node/flashlog.py")
        old_rec = _old_source("firmware/node/records.py")
        if old_log is not None and old_rec is not None:
            (Path(tmp) / "oldflashlog.py").write_text(
                old_log.replace("from node import records as R", "import oldrecords as R")
            )
            (Path(tmp) / "oldrecords.py").write_text(old_rec)
        argv = micropython_argv(
            board.heap_bytes * 4,  # the bench keeps a few logs' tables at once; the node's heap is tested elsewhere
            script,
            [str(board.path), str(Path(tmp) / "flash"), str(seconds), str(baseline_n), str(flush_bytes), str(flush_s)],
        )
        env = micropython_env(extra_path=[tmp])
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode or line is None:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 1
    res = json.loads(line[6:])
    print(f"flash log write amplification, sim board, {seconds} s at the default logging rates")
    print("(write amplification = bytes programmed / record bytes; erases = 4 KB sector erases)")
    print(f"{'run':<48}{'records':>9}{'record B':>11}{'programmed B':>14}{'erases':>8}{'WA':>7}")
    rows = [
        ("per-record log, stored acks every 5 s", res["up"]),
        ("per-record log, 16-byte units (flash encryption)", res["up16"]),
        ("per-record log, network down", res["down"]),
    ]
    if "old" in res:
        rows.append((f"old batched log ({flush_bytes} B / {flush_s} s), PUBACK acks", res["old"]))
    rows.append(("littlefs append+flush per record", res["littlefs"]))
    for name, r in rows:
        wa = r["programmed"] / r["record_bytes"]
        print(f"{name:<48}{r['records']:>9}{r['record_bytes']:>11}{r['programmed']:>14}{r['erased']:>8}{wa:>7.2f}")
    ec = res["up"]["erase_counts"]
    print(f"erases per log sector (network up, {len(ec)} sectors): min {min(ec)}, max {max(ec)}: {ec}")
    base = res["littlefs"]["programmed"] / res["littlefs"]["record_bytes"]
    ours = res["up"]["programmed"] / res["up"]["record_bytes"]
    ours16 = res["up16"]["programmed"] / res["up16"]["record_bytes"]
    print(f"ratio littlefs / per-record log: {base / ours:.1f}x less flash written")
    print(
        f"goal WA <= 1.25: {'met' if ours <= 1.25 else 'NOT met'} ({ours:.2f}); "
        f"with 16-byte units: {'met' if ours16 <= 1.25 else 'NOT met'} ({ours16:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
