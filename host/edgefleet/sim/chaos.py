"""Fault injection on a whole fleet: real mosquitto, real collector process, real node processes.

During the run (run_chaos; each fault at a fixed point of the schedule, random choices seeded):
  - the collector is kill -9'd and restarted;
  - the broker is stopped for `outage_s` (nodes keep logging to flash), and one node's flash gets a corrupted
    block (a full log sector that still holds records not yet stored);
  - mosquitto is kill -9'd mid-run with persistence on (it loses what it got since its last autosave);
  - the collector stays away longer than the broker's queue limit (max_queued_messages made small here, so the
    broker drops messages it already PUBACKed to the nodes);
  - the broker is killed and restarted with its persistence file deleted (every session and queue gone);
  - all at once: broker killed + persistence deleted, collector killed, random nodes SIGKILLed (power cuts).
Nodes free flash only on the collector's `stored` acks (docs/protocol.md) and resend from flash after
log.stored_timeout_s, so none of this may lose a record. Then every node is drained (drain_all) and the
invariant is checked per node over seq 1..L (L = the last seq on its flash when it was stopped):

  every seq is stored exactly once, except
  - one gap of at most power_cut_loss() seqs per SIGKILL of that node (docs/firmware.md: a power cut loses at
    most the record being written: firmware/node/flashlog.py POWER_CUT_LOSS),
  - seqs inside the corrupted sector (docs/firmware.md: the rest of a corrupt sector is skipped and counted),
  - as many as the node counted `dropped` (log full; not expected in these runs).

"Exactly once" is what the database holds: (device, log, seq) is the primary key, redeliveries are counted as
duplicates. Used by tests/host/test_fleet_faults.py (short) and bench/chaos.py (longer, more nodes).
"""

from __future__ import annotations

import json
import logging
import random
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..broker.mosquitto import Mosquitto
from ..collect.launch import start_collector, stop_process
from .run import shut_down, stored_seqs, wait_collector_idle
from .simulate import Fleet, default_scenarios, power_cut_loss

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


# The broker's per-client queue in these runs: small, so a collector outage of a few seconds overflows it.
QUEUE_LIMIT = 40
DROP_LINE = "Outgoing messages are being dropped"  # what mosquitto logs when a client's queue is full
AUTOSAVE_S = 2  # mosquitto autosave_interval in these runs (default config: 30)
STORED_TIMEOUT_S = 5  # node config log.stored_timeout_s in these runs (default 30): resends come sooner


def log_size(broker: Mosquitto) -> int:
    """Where the broker's log ends now: wait_queue_overflow looks only past it."""
    return broker.log_path.stat().st_size if broker.log_path.exists() else 0


def wait_queue_overflow(broker: Mosquitto, since: int, timeout_s: float) -> float:
    """Waits until the broker logs dropping a queued message after byte `since` of its log (this outage
    passed the queue limit), so the phase is an event, not a guess at how fast the nodes fill the queue.
    Returns the seconds waited; raises after `timeout_s` without one."""
    t0 = time.monotonic()
    while True:
        with broker.log_path.open("rb") as f:
            f.seek(since)
            if DROP_LINE.encode() in f.read():
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"the broker dropped nothing in {timeout_s:.0f} s more of collector outage")
        time.sleep(0.2)


def tune_broker(broker: Mosquitto, queue: int, autosave_s: int) -> None:
    """Rewrites the broker's max_queued_messages and autosave_interval (take effect at its next start): a small
    queue, so a short collector outage overflows it; a short autosave, so there is a persistence file to
    delete whenever the broker is killed (a kill -9 still loses what came since the last save)."""
    text = broker.conf.read_text()
    text = re.sub(r"^max_queued_messages \d+$", f"max_queued_messages {queue}", text, flags=re.M)
    text = re.sub(r"^autosave_interval \d+$", f"autosave_interval {autosave_s}", text, flags=re.M)
    broker.conf.write_text(text)


def wipe_persistence(broker: Mosquitto) -> list[str]:
    """Deletes the stopped broker's persistence file(s): every session, subscription and queue is gone."""
    gone = []
    for f in broker.data_dir.glob("*.db"):
        f.unlink()
        gone.append(f.name)
    return gone


def drain_all(fleet: Fleet, db: Path, timeout: float = 150, quiet_s: float = 4 * STORED_TIMEOUT_S) -> dict[str, dict]:
    """Stops every node cleanly, reads its flash log, boots it again and waits until the database holds every
    seq 1..durable of every node, or nothing new arrived for quiet_s (records lost to a corrupted block never
    come), then stops the fleet. Returns each node's flash state at the first stop."""
    fleet.stop()
    flash = {nd.device_id: fleet.inspect(nd.index) for nd in fleet.nodes}
    log.info("drain: %d records on flash not yet stored", sum(f["durable"] - f["acked"] for f in flash.values()))
    fleet.start(provision=False)
    deadline = time.monotonic() + timeout
    last_missing, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        seqs = stored_seqs(db)
        missing = sum(1 for d, f in flash.items() for s in range(1, f["durable"] + 1) if s not in seqs.get(d, ()))
        if missing == 0:
            break
        if missing != last_missing:
            last_missing, since = missing, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.5)
    fleet.stop()
    return flash


def run_chaos(
    work: Path,
    n_nodes: int = 5,
    run_s: float = 80,
    outage_s: float = 30,
    seed: int = 7,
    model: Path | None = None,
    heap_extra: int = 0,
) -> ChaosResult:
    """One fleet run with every fault; returns the figures (callers assert / print them).

    The schedule has three phases: [0, outage_at + outage_s]: the collector kill and the broker outage with node
    kills and the corrupted block; then the broker faults of issue 11 in the rest of run_s: mosquitto kill -9,
    a collector outage past the broker's queue limit, a broker restarted without its persistence, and all of
    them at once with node SIGKILLs."""
    rnd = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "fleet.db"
    ids = [f"node-{i + 1:03d}" for i in range(n_nodes)]
    broker = Fleet.secure_broker(work, ids)
    tune_broker(broker, QUEUE_LIMIT, AUTOSAVE_S)
    broker.start()
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
                      heap_extra=heap_extra, status_interval_s=5,
                      config={"log_every": {"imu": 1}, "log": {"stored_timeout_s": STORED_TIMEOUT_S}})  # fmt: skip
        url = fleet.collector_url()
        collector = start_collector(url, db, work / "collector.log", client_id="chaos-collector")
        fleet.start()
        outage_at = max(8.0, run_s * 0.1)
        late = outage_at + outage_s  # start of the second phase
        rest = max(30.0, run_s - late)

        def at(frac: float) -> float:
            return late + rest * frac

        plan = [
            (outage_at * 0.4, "kill collector"),
            (outage_at * 0.6, "start collector"),
            (outage_at, "stop broker"),
            (outage_at + outage_s * 0.3, "kill nodes"),
            (outage_at + outage_s * 0.5, "start nodes"),
            (outage_at + outage_s * 0.8, "corrupt"),
            (late, "start broker"),
            (at(0.10), "kill -9 broker"),
            (at(0.14), "start broker"),
            (at(0.20), "kill collector for long"),  # down past the broker's queue limit
            (at(0.45), "start collector past the queue limit"),
            (at(0.55), "kill -9 broker, delete persistence"),
            (at(0.60), "start broker"),
            (at(0.76), "all at once"),
            (at(0.80), "start broker"),
            (at(0.82), "start nodes"),
            (at(0.84), "start collector"),
        ]
        killed: list[int] = []
        log_mark = 0
        for when, action in sorted(plan):
            time.sleep(max(0.0, when - (time.monotonic() - t0)))
            if action == "kill collector for long":
                log_mark = log_size(broker)
                stop_process(collector, sig_kill=True)
                note("collector killed (SIGKILL) until its queue on the broker overflows")
            elif action == "kill collector":
                stop_process(collector, sig_kill=True)
                note("collector killed (SIGKILL)")
            elif action == "start collector":
                collector = start_collector(url, db, work / "collector.log", client_id="chaos-collector")
                note("collector started again")
            elif action == "start collector past the queue limit":
                waited = wait_queue_overflow(broker, since=log_mark, timeout_s=30.0)
                collector = start_collector(url, db, work / "collector.log", client_id="chaos-collector")
                note(f"collector started again after the broker dropped from its queue ({waited:.1f} s more wait)")
            elif action == "stop broker":
                broker.stop()
                note(f"broker stopped for {outage_s:.0f} s")
            elif action == "start broker":
                broker.start()
                note("broker started again")
            elif action == "kill -9 broker":
                broker.stop(kill=True)
                note("broker killed (SIGKILL, persistence on: what it got since its last autosave is gone)")
            elif action == "kill -9 broker, delete persistence":
                broker.stop(kill=True)
                note(f"broker killed, persistence deleted ({', '.join(wipe_persistence(broker)) or 'none yet'})")
            elif action == "all at once":
                broker.stop(kill=True)
                gone = wipe_persistence(broker)
                stop_process(collector, sig_kill=True)
                killed = rnd.sample(range(n_nodes), max(1, n_nodes // 2))
                for i in killed:
                    fleet.kill(i)
                note(f"all at once: broker killed + persistence deleted ({', '.join(gone) or 'none'}), collector "
                     f"killed, SIGKILL " + ", ".join(fleet.nodes[i].device_id for i in killed))  # fmt: skip
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
        time.sleep(max(0.0, late + rest - (time.monotonic() - t0)))
        note("run over: draining every node")
        flash = drain_all(fleet, db)
        wait_collector_idle(db)
        note("drained")
        figures = check(fleet, db, flash, corrupted)
    finally:
        shut_down(fleet, collector, broker)
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
