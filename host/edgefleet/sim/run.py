"""Running a simulated fleet against a collector: what the demo, the chaos run and the fleet bench share.

Why here and not in the demo: the chaos run and bench/fleet.py drain a fleet and read what the collector stored
exactly as the demo does; the demo is one user of these, not their owner. The collector process itself is
started by edgefleet.collect.launch.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import time
from pathlib import Path

from ..broker.mosquitto import Mosquitto
from ..collect.launch import stop_process
from .simulate import Fleet

log = logging.getLogger(__name__)


def stored_seqs(db: Path) -> dict[str, set[int]]:
    """Every seq stored per device (readings and events) in the collector's SQLite file, read-only; empty
    while the collector has not created its tables yet."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        out: dict[str, set[int]] = {}
        for table in ("readings", "events"):
            for dev, seq in con.execute(f"SELECT device, seq FROM {table}"):
                out.setdefault(dev, set()).add(seq)
        return out
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def drain(fleet: Fleet, db: Path, timeout: float = 90, progress: bool = True) -> dict[str, dict]:
    """Stops every node cleanly, reads its flash log, boots it again until the collector stored everything up to
    the last durable seq (or timeout), and stops it. Returns each node's flash state at the first stop."""
    from tqdm import tqdm

    fleet.stop()
    flash = {nd.device_id: fleet.inspect(nd.index) for nd in fleet.nodes}
    pending = {d: f["durable"] - f["acked"] for d, f in flash.items()}
    log.info("drain: %d records on flash not yet acknowledged by the broker", sum(pending.values()))
    fleet.start(provision=False)
    deadline = time.monotonic() + timeout
    with tqdm(total=len(fleet.nodes), desc="drain", unit="node", disable=not progress) as bar:
        done: set[str] = set()
        while time.monotonic() < deadline:
            seqs = stored_seqs(db)
            for d, f in flash.items():
                if d not in done and max(seqs.get(d, {0})) >= f["durable"]:
                    done.add(d)
                    bar.update(1)
            if len(done) == len(flash):
                break
            time.sleep(0.5)
    if len(done) < len(flash):
        log.warning("drain: %d node(s) not drained within %.0f s", len(flash) - len(done), timeout)
    fleet.stop()
    return flash


def wait_collector_idle(db: Path, quiet_s: float = 2.0, timeout: float = 30) -> None:
    """Until the number of stored records stops changing for quiet_s (the collector's queue is empty)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = sum(len(s) for s in stored_seqs(db).values())
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.25)


def shut_down(fleet: Fleet | None, collector: subprocess.Popen | None, broker: Mosquitto) -> None:
    """The end of a run, in the order that loses nothing: the nodes first (they flush their logs and the broker
    publishes their last wills), then the collector (it commits what it has), then the broker."""
    if fleet is not None:
        fleet.close()
    if collector is not None:
        stop_process(collector)
    broker.stop()
