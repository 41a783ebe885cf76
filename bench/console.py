"""Console read paths: a day of a 10 Hz device charted through the server-side downsampling, against the raw
query of the same range (every reading fetched and decoded: what a chart without downsampling would need), and
the fleet list of thousands of devices. SQLite and a throwaway PostgreSQL (skipped with a message when the
PostgreSQL server binaries are missing), in the same run.

    PYTHONPATH=host .venv/bin/python bench/console.py [--hours 24] [--rate 10] [--devices 5000] [--boots 20] [--no-pg]

Printed per backend: rows in the range, raw query seconds, downsampled seconds (points drawn), the ratio, and the
fleet list time for --devices devices, each with the last counters of --boots boots (the lifetime counters the
fleet list sums).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HOST = Path(__file__).resolve().parents[1] / "host"
sys.path.insert(0, str(HOST))

from edgefleet.collect.storage import Batch, open_storage  # noqa: E402
from edgefleet.console import data  # noqa: E402
from edgefleet.errors import EdgefleetError  # noqa: E402

T0 = 1_764_000_000_000


def fill(url: str, hours: float, rate: float, devices: int, boots: int = 1) -> tuple[int, int]:
    """One device `dev-0` with `hours` of imu readings at `rate` Hz plus env at 1 Hz; `devices` others with the last
    status per boot (`boots` of them) and 20 readings each. Returns the range (since, until) of dev-0."""
    s = open_storage(url)
    n = int(hours * 3600 * rate)
    step = int(1000 / rate)
    env_every = max(1, int(rate))
    seq = 0
    batch: list[tuple] = []
    for i in range(n):
        seq += 1
        ts = T0 + i * step
        vals = {"ax": round((i % 97) / 97, 3), "ay": 0.1, "az": 1.0, "gx": 0.5, "gy": -0.5, "gz": float(i % 13)}
        batch.append(("dev-0", "a1b2c3d4", seq, ts, "imu", 0, json.dumps(vals, separators=(",", ":")), ts))
        if i % env_every == 0:
            seq += 1
            env = {"temperature": 21.0 + (i % 600) / 600, "humidity": 45.0}
            batch.append(("dev-0", "a1b2c3d4", seq, ts, "env", 0, json.dumps(env, separators=(",", ":")), ts))
        if len(batch) >= 50_000:
            s.write(Batch(readings={"dev-0": batch}, seen={"dev-0": ts}))
            batch = []
    if batch:
        s.write(Batch(readings={"dev-0": batch}, seen={"dev-0": batch[-1][3]}))
    status = [
        json.dumps({"v": 1, "state": "online", "fw": "0.1.0", "model": "m", "heap_free": 60000, "boot": boot,
                    "seq": 20 * boot // boots, "safe_mode": False, "error": None, "counters": {"logged": 20 // boots},
                    "e_buffer": 1.0, "r_noise": 0.0})
        for boot in range(1, boots + 1)
    ]  # fmt: skip
    for start in range(1, devices, 1000):
        b = Batch()
        for d in range(start, min(devices, start + 1000)):
            dev = f"dev-{d}"
            b.readings[dev] = [(dev, "", k, T0 + k * 1000, "env", 0, '{"temperature":20.5}', T0) for k in range(1, 21)]
            b.statuses += [(dev, T0 + i, "online", True, body) for i, body in enumerate(status)]
            b.seen[dev] = T0
        s.write(b)
    s.close()
    return T0, T0 + n * step


def measure(url: str, since: int, until: int, points: int) -> dict:
    s = open_storage(url)
    try:
        t = time.perf_counter()
        raw = data.raw_readings(s, "dev-0", since, until)
        raw_s = time.perf_counter() - t
        s.conn.rollback()
        t = time.perf_counter()
        ser = data.series(s, "dev-0", since, until, points)
        down_s = time.perf_counter() - t
        drawn = sum(len(v["ts"]) for v in ser.sensors.values())
        s.conn.rollback()
        t = time.perf_counter()
        rows = data.fleet_rows(s)
        fleet_s = time.perf_counter() - t
    finally:
        s.close()
    return {"rows": raw, "raw_s": raw_s, "down_s": down_s, "drawn": drawn, "fleet_s": fleet_s, "devices": len(rows)}


def report(name: str, r: dict) -> None:
    print(
        f"{name:10} {r['rows']:>9} rows  raw {r['raw_s']:6.2f} s  downsampled {r['down_s']:6.3f} s "
        f"({r['drawn']} points)  ratio {r['down_s'] / r['raw_s']:.3f}  |  fleet list {r['devices']} devices "
        f"{r['fleet_s']:.3f} s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24, help="hours of data of the charted device (default 24)")
    ap.add_argument("--rate", type=float, default=10, help="imu samples per second (default 10)")
    ap.add_argument("--devices", type=int, default=5000, help="devices in the fleet list (default 5000)")
    ap.add_argument("--boots", type=int, default=20, help="boots per device in the fleet list (default 20)")
    ap.add_argument("--points", type=int, default=1500, help="points per sensor asked of the server (default 1500)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        t = time.perf_counter()
        since, until = fill(url, a.hours, a.rate, a.devices, a.boots)
        print(f"filled SQLite in {time.perf_counter() - t:.0f} s")
        report("sqlite", measure(url, since, until, a.points))
    if a.no_pg:
        return 0
    from edgefleet.sim.postgres import PostgresCluster

    try:
        cluster = PostgresCluster().start()
    except EdgefleetError as e:
        print(f"postgresql: skipped ({e})")
        return 0
    try:
        url = cluster.new_database()
        t = time.perf_counter()
        since, until = fill(url, a.hours, a.rate, a.devices, a.boots)
        print(f"filled PostgreSQL in {time.perf_counter() - t:.0f} s")
        report("postgresql", measure(url, since, until, a.points))
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
