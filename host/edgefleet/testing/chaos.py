"""Fault injection on a whole fleet: real mosquitto, real collector process, real node processes.

During the run: the collector is kill -9'd and restarted (twice), the broker is stopped for `outage_s`, random
nodes are SIGKILLed and booted again, and one node's flash gets a corrupted block (a full log sector that still
holds unacknowledged records, written while the broker was away). Then every node is drained (see demo.drain) and
the invariant is checked per node over seq 1..L (L = the last seq on its flash when it was stopped):

  every seq is stored exactly once, except
  - one gap of at most power_cut_loss() seqs per SIGKILL of that node (docs/firmware.md: a power cut loses at
    most the record being written: firmware/node/flashlog.py POWER_CUT_LOSS),
  - seqs inside the corrupted sector (docs/firmware.md: the rest of a corrupt sector is skipped and counted),
  - as many as the node counted `dropped` (log full; not expected in these runs).

"Exactly once" is what the database holds: (device, seq) is the primary key, redeliveries are counted as duplicates.
Used by tests/host/test_fleet_faults.py (short) and bench/chaos.py (longer, more nodes).
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..demo import drain, start_collector, stop_process, stored_seqs, wait_collector_idle
from ..simulate import Fleet, default_scenarios, power_cut_loss

log = logging.getLogger(__name__)


@dataclass
class NodeFigures:
    device: str
    last_seq: int  # L: last seq on flash at the drain stop
    stored: int  # distinct seqs <= L in the database
    missing: int
    gaps: list[tuple[int, int]]  # (first seq, length)
    kills: int
    lost_power_cut: int  # missing seqs explained by SIGKILLs
    lost_corrupt: int  # missing seqs inside the corrupted sector
    dropped: int
    unexplained: list[tuple[int, int]] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.device}: seq 1..{self.last_seq}, stored {self.stored}, missing {self.missing} "
                f"(power cuts: {self.kills} kills -> {self.lost_power_cut}; corrupt block: {self.lost_corrupt}; "
                f"dropped: {self.dropped}), unexplained gaps {self.unexplained}")  # fmt: skip


@dataclass
class ChaosResult:
    nodes: list[NodeFigures]
    duplicates: int  # redeliveries the collector stored once
    dead_letters: int
    corrupted: dict | None
    events: list[str]
    records: int

    @property
    def unexplained(self) -> int:
        return sum(len(n.unexplained) for n in self.nodes)

    def report(self) -> str:
        lines = [*self.events, "", *(n.line() for n in self.nodes)]
        lines.append(
            f"total: {self.records} records stored, {sum(n.missing for n in self.nodes)} missing of which "
            f"{sum(n.lost_power_cut for n in self.nodes)} in power-cut windows and "
            f"{sum(n.lost_corrupt for n in self.nodes)} in the corrupted block, {self.duplicates} duplicate "
            f"deliveries stored once, {self.dead_letters} dead letters, {self.unexplained} unexplained gaps"
        )
        return "\n".join(lines)


def runs(missing: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in missing:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out


def check(fleet: Fleet, db: Path, flash: dict[str, dict], corrupted: dict | None) -> list[NodeFigures]:
    seqs = stored_seqs(db)
    out = []
    for nd in fleet.nodes:
        f = flash[nd.device_id]
        last = f["durable"]
        have = seqs.get(nd.device_id, set())
        missing = [s for s in range(1, last + 1) if s not in have]
        gaps = runs(missing)
        lost_corrupt = 0
        rest = []
        for a, n in gaps:
            if corrupted and corrupted["device"] == nd.device_id and corrupted["first_seq"] <= a and \
                    a + n - 1 <= corrupted["last_seq"]:  # fmt: skip
                lost_corrupt += n
            else:
                rest.append((a, n))
        dropped = int((fleet.status().get(nd.device_id, {}).get("counters") or {}).get("dropped", 0))
        # power cuts: at most one gap per SIGKILL, each at most the window
        cut = [g for g in rest if g[1] <= power_cut_loss()]
        unexplained = [g for g in rest if g[1] > power_cut_loss()]
        if len(cut) > nd.kills:
            unexplained += cut[nd.kills :]
            cut = cut[: nd.kills]
        if unexplained and dropped >= sum(n for _, n in unexplained):
            unexplained = []
        out.append(NodeFigures(nd.device_id, last, len([s for s in have if s <= last]), len(missing), gaps, nd.kills,
                               sum(n for _, n in cut), lost_corrupt, dropped, unexplained))  # fmt: skip
    return out


def run_chaos(
    work: Path,
    n_nodes: int = 5,
    run_s: float = 80,
    outage_s: float = 30,
    seed: int = 7,
    model: Path | None = None,
    heap_extra: int = 0,
) -> ChaosResult:
    """One fleet run with every fault; returns the figures (callers assert / print them)."""
    rnd = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "fleet.db"
    ids = [f"node-{i + 1:03d}" for i in range(n_nodes)]
    broker = Fleet.secure_broker(work, ids).start()
    events: list[str] = []
    t0 = time.monotonic()

    def note(msg: str) -> None:
        events.append(f"t={time.monotonic() - t0:5.1f}s  {msg}")
        log.info("chaos: %s", msg)

    collector = None
    corrupted = None
    fleet = None
    try:
        # imu logged at 10 Hz: ~12 records/s per node, so a 30 s outage fills whole log sectors (one to corrupt)
        fleet = Fleet(work, n_nodes, broker=broker, model=model, scenarios=default_scenarios(work, n_nodes, run_s, seed),
                      heap_extra=heap_extra, status_interval_s=5, config={"log_every": {"imu": 1}})  # fmt: skip
        url = fleet.collector_url()
        collector = start_collector(url, db, work / "collector.log", client_id="chaos-collector")
        fleet.start()
        # schedule: (time fraction of run_s, action)
        outage_at = max(8.0, run_s * 0.15)
        plan = [
            (outage_at * 0.4, "kill collector"),
            (outage_at * 0.6, "start collector"),
            (outage_at, "stop broker"),
            (outage_at + outage_s * 0.3, "kill nodes"),
            (outage_at + outage_s * 0.5, "start nodes"),
            (outage_at + outage_s * 0.8, "corrupt"),
            (outage_at + outage_s, "start broker"),
            (outage_at + outage_s + (run_s - outage_at - outage_s) * 0.3, "kill nodes"),
            (outage_at + outage_s + (run_s - outage_at - outage_s) * 0.4, "kill collector"),
            (outage_at + outage_s + (run_s - outage_at - outage_s) * 0.5, "start nodes"),
            (outage_at + outage_s + (run_s - outage_at - outage_s) * 0.6, "start collector"),
        ]
        killed: list[int] = []
        for at, action in sorted(plan):
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            if action == "kill collector":
                stop_process(collector, sig_kill=True)
                note("collector killed (SIGKILL)")
            elif action == "start collector":
                collector = start_collector(url, db, work / "collector.log", client_id="chaos-collector")
                note("collector started again")
            elif action == "stop broker":
                broker.stop()
                note(f"broker stopped for {outage_s:.0f} s")
            elif action == "start broker":
                broker.start()
                note("broker started again")
            elif action == "kill nodes":
                killed = rnd.sample(range(n_nodes), max(1, n_nodes // 3))
                for i in killed:
                    fleet.kill(i)
                note("SIGKILL " + ", ".join(fleet.nodes[i].device_id for i in killed))
            elif action == "start nodes":
                for i in killed:
                    fleet.restart(i)
                note("booted again " + ", ".join(fleet.nodes[i].device_id for i in killed))
            elif action == "corrupt":
                i = next(k for k in range(n_nodes) if k not in killed)
                fleet.stop_node(i)
                corrupted = fleet.corrupt_block(i)
                fleet.restart(i)
                note(f"{corrupted['device']}: flash log sector {corrupted['sector']} corrupted (seq "
                     f"{corrupted['first_seq']}-{corrupted['last_seq']}, acked up to {corrupted['acked']})")  # fmt: skip
        time.sleep(max(0.0, run_s - (time.monotonic() - t0)))
        note("run over: draining every node")
        flash = drain(fleet, db, timeout=120, progress=False)
        wait_collector_idle(db)
        note("drained")
        figures = check(fleet, db, flash, corrupted)
    finally:
        if fleet is not None:
            fleet.close()
        if collector is not None:
            stop_process(collector)
        broker.stop()
    con = sqlite3.connect(db)
    try:
        dups = con.execute("SELECT COALESCE(SUM(duplicates), 0) FROM devices").fetchone()[0]
        dead = con.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]
        records = con.execute("SELECT (SELECT COUNT(*) FROM readings) + (SELECT COUNT(*) FROM events)").fetchone()[0]
    finally:
        con.close()
    result = ChaosResult(figures, int(dups), int(dead), corrupted, events, int(records))
    (work / "chaos.json").write_text(json.dumps({"report": result.report()}, indent=1))
    return result
