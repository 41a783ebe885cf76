"""Scale benchmark: the largest simulated fleet this machine runs at 1 reading/s per node with zero loss and
p99 flushed-to-stored latency under 2 s.

Each step runs N nodes (the real firmware on the MicroPython unix port, env sensor at 1 Hz, every reading logged,
other sensors off, no model) against mosquitto (per-device logins) and the collector (subprocess, SQLite) for
--run-s seconds, then drains every node and checks:
- zero loss: every seq 1..L of every node is stored (L = last seq on its flash after a clean stop);
- latency: logged (durable in the flash log) to stored. A node batches records in RAM up to 256 bytes or 5 s
  before they are durable and may be published (docs/firmware.md), so at 1 reading/s (37 bytes) the sample-to-
  stored latency includes up to 5 s of that batching by design (printed as "raw"). The flush time itself is not
  visible from the host; a record is appended before the flush that makes it durable, so per message (the records
  of one device stored together) stored time minus its newest sample's time is an upper bound of flushed-to-stored.
  Records sampled in the first 10 s (boot, connect) and in the last 6 s before the drain (whose delivery the
  drain's clean stop interrupts) are excluded.
N grows (--start, x --factor) while a step passes and the total time stays under --budget-s; the last passing N is
the answer. Printed per step: nodes, stored records/s, loss, p50/p99 latencies, RSS per node process (mean of
VmRSS, and the private part of it), CPU of the nodes and of the collector as a share of the machine (all cores).

Run: PYTHONPATH=host python bench/fleet.py [--start 20] [--factor 2] [--max 2560] [--run-s 40] [--budget-s 1200]
(it takes the whole machine for several minutes at the top steps)
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefleet.collect.launch import start_collector, stop_process
from edgefleet.sim.run import drain, stored_seqs, wait_collector_idle
from edgefleet.sim.simulate import Fleet

WARMUP_S = 10.0
DRAIN_MARGIN_S = 6.0  # > the log's 5 s flush period
CLK = os.sysconf("SC_CLK_TCK")
CONFIG = {"rates": {"env": 1, "imu": 0, "soil": 0, "air": 0}, "log_every": {"env": 1}, "model": None, "rule": None}


def cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / CLK
    except (OSError, IndexError):
        return 0.0


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def private_kb(pid: int) -> int:
    """Memory the process alone holds (Private_Clean + Private_Dirty): what each extra node really costs."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    except OSError:
        pass
    return total


def latencies(db: Path, t_from_ms: int, t_to_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(sample-to-stored per record, flushed-to-stored upper bound per message) inside [t_from_ms, t_to_ms)."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT device, ts_ms, received_ms FROM readings").fetchall()
    con.close()
    raw = np.asarray([r - t for _, t, r in rows if t_from_ms <= t < t_to_ms], dtype=float)
    # records stored together per device = one message (one flushed batch or more). A record is appended before
    # the flush that makes it durable, so the flush happened after the message's newest sample: received minus
    # that sample time is an upper bound of the message's flushed-to-stored latency.
    span: dict[tuple[str, int], tuple[int, int]] = {}
    for dev, ts, rec in rows:
        lo, hi = span.get((dev, rec), (ts, ts))
        span[(dev, rec)] = (min(lo, ts), max(hi, ts))
    flushed = np.asarray(
        [rec - hi for (_, rec), (lo, hi) in span.items() if lo >= t_from_ms and hi < t_to_ms], dtype=float
    )
    return raw, flushed


def step(n: int, run_s: float, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    db = work / "fleet.db"
    ids = [f"node-{i + 1:03d}" for i in range(n)]
    broker = Fleet.secure_broker(work, ids).start()
    fleet = Fleet(work, n, broker=broker, status_interval_s=30, config=CONFIG)
    collector = start_collector(fleet.collector_url(), db, work / "collector.log", client_id="bench-collector")
    try:
        fleet.start(stagger_s=0.02)
        t_start_ms = int(time.time() * 1000)
        time.sleep(WARMUP_S)
        pids = [nd.pid for nd in fleet.nodes if nd.pid]
        c0 = (cpu_s(collector.pid), sum(cpu_s(p) for p in pids), time.monotonic())
        time.sleep(max(1.0, run_s - WARMUP_S))
        c1 = (cpu_s(collector.pid), sum(cpu_s(p) for p in pids), time.monotonic())
        rss = [rss_kb(p) for p in pids]
        private = [private_kb(p) for p in pids]
        t_end_ms = int(time.time() * 1000)
        flash = drain(fleet, db, timeout=60, progress=False)
        wait_collector_idle(db)
    finally:
        fleet.close()
        stop_process(collector)
        broker.stop()
    seqs = stored_seqs(db)
    lost = sum(len(set(range(1, f["durable"] + 1)) - seqs.get(d, set())) for d, f in flash.items())
    # the drain stops every node: records of the last flush period before it wait for the drain boot, so they are
    # not steady state; anything sampled earlier and stored late still counts
    t_from, t_to = t_start_ms + int(WARMUP_S * 1000), t_end_ms - int(DRAIN_MARGIN_S * 1000)
    raw, flushed = latencies(db, t_from, t_to)
    wall = c1[2] - c0[2]
    cores = os.cpu_count() or 1
    logged = sum(f["durable"] for f in flash.values())
    return {
        "nodes": n,
        "lost": lost,
        "logged": logged,
        "rate": len(raw) / ((t_to - t_from) / 1000),  # readings sampled per second in the steady window
        "raw_p50": float(np.percentile(raw, 50)) if len(raw) else float("nan"),
        "raw_p99": float(np.percentile(raw, 99)) if len(raw) else float("nan"),
        "p50": float(np.percentile(flushed, 50)) if len(flushed) else float("nan"),
        "p99": float(np.percentile(flushed, 99)) if len(flushed) else float("nan"),
        "rss_kb": float(np.mean(rss)) if rss else 0.0,
        "private_kb": float(np.mean(private)) if private else 0.0,
        "collector_cpu": (c1[0] - c0[0]) / wall / cores,
        "nodes_cpu": (c1[1] - c0[1]) / wall / cores,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--start", type=int, default=20)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--max", type=int, default=2560)
    p.add_argument("--run-s", type=float, default=40)
    p.add_argument("--budget-s", type=float, default=1200)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    best = None
    n = args.start
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'nodes':>5} {'rec/s':>6} {'lost':>5} {'p50 ms':>7} {'p99 ms':>7} {'raw p99':>8} {'RSS/node':>9} {'private':>8} "
          f"{'collector CPU':>13} {'nodes CPU':>9}  result")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        while n <= args.max:
            r = step(n, args.run_s, Path(tmp) / f"n{n}")
            ok = r["lost"] == 0 and r["p99"] < 2000
            print(f"{r['nodes']:>5} {r['rate']:>6.1f} {r['lost']:>5} {r['p50']:>7.0f} {r['p99']:>7.0f} "
                  f"{r['raw_p99']:>8.0f} {r['rss_kb'] / 1024:>7.1f}MB {r['private_kb'] / 1024:>6.1f}MB {r['collector_cpu']:>12.1%} "
                  f"{r['nodes_cpu']:>9.1%}  {'pass' if ok else 'FAIL'}", flush=True)  # fmt: skip
            if not ok:
                break
            best = r
            elapsed = time.monotonic() - t0
            nxt = max(n + 1, int(n * args.factor))
            # a step costs about run_s + provisioning + drain; stop before the budget runs out
            if elapsed + (args.run_s + 20 + 0.15 * nxt) * 1.2 > args.budget_s:
                print(f"stopping: time budget {args.budget_s:.0f} s")
                break
            n = nxt
    if best is None:
        print(f"no fleet size passed (smallest tried: {args.start})")
        return 1
    print(f"\nlargest passing fleet: {best['nodes']} nodes at 1 reading/s each, zero loss, p99 flushed-to-stored "
          f"{best['p99']:.0f} ms (sample-to-stored p99 {best['raw_p99']:.0f} ms, incl. the 5 s flush batching); "
          f"RSS {best['rss_kb'] / 1024:.1f} MB per node process ({best['private_kb'] / 1024:.1f} MB private); collector {best['collector_cpu']:.1%} of the "
          f"machine's CPU; total {time.monotonic() - t0:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
