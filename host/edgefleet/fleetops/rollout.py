"""Staged rollouts gated on health and on the model's behaviour (issue 13 item 4; docs/fleet.md "Rollouts").

A rollout offers one artifact (fleetops/ota.py) to the devices a TARGET names, stage by stage: each stage is a
random subset (cumulative fractions, 5%,25%,100% by default), offered, waited for (each device reports
confirmed, rolled_back or failed, or times out), soaked, then judged by the gate. A failing gate halts the
rollout and sends `ota_rollback` to every device this rollout updated; the devices of later stages never get
the artifact.

Why the state lives in the fleet database (tables `rollouts` and `rollout_devices`, own schema version
`rollout_schema_version`, valid on SQLite and PostgreSQL like the registry's): the host running a rollout may
crash or be stopped during a soak of hours; every step is written before the next one starts, so `rollout
resume ID` continues at the step where it stopped (re-publishing retained chunks and re-reading the devices'
retained status is idempotent), and `rollout pause|abort ID` from another shell takes effect at the next
check of the running process.

The gate reads what the collector writes (status_history, events): it needs a collector storing the fleet's
messages into the same database. Its checks and thresholds are in GateSettings and docs/fleet.md.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import secrets
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..broker.mosquitto import COLLECTOR_USER, OPERATOR_USER
from ..errors import EdgefleetError
from ..wire import ota as wire_ota
from ..wire import protocol
from . import ota
from .commands import OK, OperatorLink

log = logging.getLogger(__name__)

VERSION_TABLE = "rollout_schema_version"
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE rollouts (id TEXT PRIMARY KEY, artifact TEXT NOT NULL, sha256 TEXT NOT NULL, kind TEXT NOT NULL,"
        " version INTEGER NOT NULL, target TEXT NOT NULL, stages_json TEXT NOT NULL, soak_s DOUBLE PRECISION NOT NULL,"
        " gate_json TEXT NOT NULL, options_json TEXT NOT NULL, state TEXT NOT NULL, stage INTEGER NOT NULL,"
        " phase TEXT NOT NULL, phase_ms BIGINT NOT NULL, reason TEXT, gates_json TEXT NOT NULL,"
        " created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)",
        "CREATE TABLE rollout_devices (rollout TEXT NOT NULL, device TEXT NOT NULL, stage INTEGER NOT NULL,"
        " state TEXT NOT NULL, sha256 TEXT, got BIGINT NOT NULL DEFAULT 0, offered_ms BIGINT, done_ms BIGINT,"
        " reason TEXT, updated_ms BIGINT NOT NULL, PRIMARY KEY (rollout, device))",
    ],
]

# Rollout states; a running `start` stops at paused/aborted (another shell's `rollout pause|abort`).
RUNNING, PAUSED, HALTED, ABORTED, DONE = "running", "paused", "halted", "aborted", "done"
STATES = (RUNNING, PAUSED, HALTED, ABORTED, DONE)
# Phases of the current stage, in order (rollback only after a failing gate).
OFFER, WAIT, SOAK, GATE, ROLLBACK, FINISHED = "offer", "wait", "soak", "gate", "rollback", "finished"
# Device states: queued (not offered yet), then the node's reports, then what the host concluded.
QUEUED, OFFERED = "queued", "offered"
FINAL = ota.FINAL
DEFAULT_STAGES = "5%,25%,100%"
DEFAULT_SOAK_S = 600.0
DEFAULT_DB = "sqlite:///fleet.db"


def parse_duration(text: str | float) -> float:
    """`90`, `30s`, `10m`, `2h` -> seconds (a soak is minutes to hours; a bare number is seconds)."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        t = text.strip().lower()
        mult = {"s": 1, "m": 60, "h": 3600}.get(t[-1:])
        try:
            value = float(t[:-1] if mult else t) * (mult or 1)
        except ValueError:
            raise EdgefleetError(f"not a duration: {text!r}", hint="e.g. 30s, 10m, 2h or a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise EdgefleetError(f"a duration must be 0 or more seconds (got {text!r})")
    return value


def parse_stages(text: str | Sequence[float]) -> list[float]:
    """`5%,25%,100%` -> [0.05, 0.25, 1.0]: cumulative fractions of the target, strictly increasing, the last at
    most 100% (a rollout to less than 100% stops there: a canary)."""
    if isinstance(text, str):
        out = []
        for part in text.split(","):
            p = part.strip()
            if not p.endswith("%"):
                raise EdgefleetError(f"stage {p!r} is not a percentage", hint="e.g. --stages 5%,25%,100%")
            try:
                out.append(float(p[:-1]) / 100)
            except ValueError:
                raise EdgefleetError(f"stage {p!r} is not a percentage", hint="e.g. --stages 5%,25%,100%") from None
    else:
        out = [float(x) for x in text]
    if not out or any(not 0 < f <= 1 or not math.isfinite(f) for f in out):
        raise EdgefleetError("stages must be percentages above 0 and at most 100%", hint="e.g. --stages 5%,25%,100%")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise EdgefleetError("stages are cumulative: each must be larger than the one before", hint="5%,25%,100%")
    return out


def split_stages(devices: Sequence[str], fractions: Sequence[float], rng: random.Random) -> list[list[str]]:
    """Each stage a random subset: the devices shuffled once, stage i takes them up to ceil(f_i x n) (at least
    one more than the stage before while any is left; stages that would get none are dropped)."""
    order = sorted(set(devices))
    rng.shuffle(order)
    n, prev, out = len(order), 0, []
    for f in fractions:
        upto = min(n, max(prev + 1, math.ceil(f * n - 1e-9)))
        if upto > prev:
            out.append(order[prev:upto])
            prev = upto
    return out


@dataclass
class GateSettings:
    """What the gate after each stage's soak checks, and its thresholds (docs/fleet.md "What the gate measures").

    drift: total variation distance between the share of time the stage's devices spent in each decision (class
    or anomaly/normal) before the update and after it; 0 = same, 1 = disjoint. 0.5 by default: a retrained model
    of the same task moves a few classes by some percent, one that always answers the same class moves every
    other class's share to it (distance 1 - that class's share before).
    heap_drop: largest allowed fall of a device's free heap (lowest after vs median before), as a fraction.
    reconnects: MQTT reconnects a stage device may have during the soak beyond the median of the devices not
    updated (the rest) in the same time.
    extra_boots: boots allowed beyond the update's own reboot.
    baseline_s: how far before the offer the "before" window reaches."""

    drift: float = 0.5
    heap_drop: float = 0.3
    reconnects: int = 3
    extra_boots: int = 0
    baseline_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.drift <= 1:
            raise EdgefleetError(f"--gate-drift must be above 0 and at most 1 (got {self.drift})")
        if not 0 < self.heap_drop <= 1:
            raise EdgefleetError(f"--gate-heap-drop must be above 0 and at most 1 (got {self.heap_drop})")
        if self.reconnects < 0 or self.extra_boots < 0 or self.baseline_s <= 0:
            raise EdgefleetError("gate counts must be 0 or more and the baseline more than 0 s")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    value: float | None = None
    threshold: float | None = None


@dataclass
class GateResult:
    stage: int
    passed: bool
    checks: list[Check]
    at_ms: int

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "passed": self.passed,
            "at_ms": self.at_ms,
            "checks": [asdict(c) for c in self.checks],
        }

    @classmethod
    def from_dict(cls, d: dict) -> GateResult:
        return cls(d["stage"], d["passed"], [Check(**c) for c in d["checks"]], d["at_ms"])


# ---------------------------------------------------------------- the gate's statistics


def _body(raw: Any) -> dict:
    return raw if isinstance(raw, dict) else json.loads(raw)


def statuses(store, device: str, since_ms: int, until_ms: int) -> list[tuple[int, dict]]:
    """A device's online statuses the collector stored, received in [since_ms, until_ms], oldest first."""
    rows = store.execute(
        "SELECT received_ms, body FROM status_history WHERE device = ? AND state = 'online'"
        " AND received_ms >= ? AND received_ms <= ? ORDER BY received_ms, id",
        (device, since_ms, until_ms),
    ).fetchall()
    store.conn.rollback()
    return [(int(r[0]), _body(r[1])) for r in rows]


def decision_shares(
    store, device: str, since_ms: int, until_ms: int, carry_since_ms: int | None = None
) -> dict[tuple[str, str], float] | None:
    """The share of time a device's model spent in each decision ((kind, label)) in a window, from its class
    and anomaly events (the node sends one only when the decision changes: decision.py). Each event's decision
    lasts until the next event (node timestamps); the last one until the window's end (host clock, from when
    it was received). `carry_since_ms`: the decision in force when the window opens counts too, if its event
    came after that time: a new model's first decision usually comes before the node confirms the update, and
    a model that never changes its mind sends no other (it is not silent, it says one thing all the time).
    None when the device sent no such event in the window (nor one carried into it)."""
    rows = store.execute(
        "SELECT ts_ms, received_ms, kind, label FROM events WHERE device = ? AND kind IN ('class', 'anomaly')"
        " AND received_ms >= ? AND received_ms <= ? ORDER BY ts_ms, seq",
        (device, since_ms, until_ms),
    ).fetchall()
    carried = None  # (kind, label) in force when the window opens
    if carry_since_ms is not None:
        last = store.execute(
            "SELECT kind, label FROM events WHERE device = ? AND kind IN ('class', 'anomaly')"
            " AND received_ms >= ? AND received_ms < ? ORDER BY ts_ms DESC, seq DESC LIMIT 1",
            (device, carry_since_ms, since_ms),
        ).fetchone()
        carried = (last[0], last[1]) if last else None
    store.conn.rollback()
    if not rows and carried is None:
        return None
    held: dict[tuple[str, str], float] = {}
    if carried is not None:  # host clock on both ends: from the window's start to the first event in it
        held[carried] = float(max(0, (int(rows[0][1]) if rows else until_ms) - since_ms))
    for i, (ts, received, kind, label) in enumerate(rows):
        dur = max(0, int(rows[i + 1][0]) - int(ts)) if i + 1 < len(rows) else max(0, until_ms - int(received))
        held[(kind, label)] = held.get((kind, label), 0.0) + dur
    total = sum(held.values())
    if total <= 0:  # every event at one instant: count them instead
        held = {}
        for _ts, _r, kind, label in rows:
            held[(kind, label)] = held.get((kind, label), 0.0) + 1
        if carried is not None:
            held[carried] = held.get(carried, 0.0) + 1
        total = float(sum(held.values()))
    return {k: v / total for k, v in held.items()}


def mean_shares(shares: Sequence[dict]) -> dict:
    """The stage's distribution: each device's shares weighted equally."""
    out: dict = {}
    for s in shares:
        for k, v in s.items():
            out[k] = out.get(k, 0.0) + v / len(shares)
    return out


def total_variation(p: dict, q: dict) -> float:
    """Half the L1 distance between two distributions over labels: 0 = equal, 1 = disjoint."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _reconnects(sts: Sequence[tuple[int, dict]]) -> int:
    """MQTT reconnects in a run of statuses: the node's counter is per boot, so the rise within each boot."""
    by_boot: dict[Any, list[int]] = {}
    for _ms, b in sts:
        n = (b.get("counters") or {}).get("reconnects")
        if isinstance(n, int):
            by_boot.setdefault((b.get("log"), b.get("boot")), []).append(n)
    return sum(max(v) - min(v) for v in by_boot.values())


def gate(
    store,
    stage: int,
    kind: str,
    devices: dict[str, tuple[str, int | None, int | None]],
    rest: Sequence[str],
    now_ms: int,
    settings: GateSettings,
) -> GateResult:
    """Judge one stage. `devices`: device -> (final state, offered_ms, confirmed_ms); `rest`: target devices not
    updated (the comparison for reconnects). Reads the collector's status_history and events."""
    checks: list[Check] = []
    failed_ota = {d: st for d, (st, _o, _c) in devices.items() if st != ota.CONFIRMED}
    checks.append(
        Check(
            "ota",
            not failed_ota,
            "all confirmed" if not failed_ota else ", ".join(f"{d} {st}" for d, st in sorted(failed_ota.items())),
            float(len(failed_ota)),
            0.0,
        )
    )
    offered = [o for _s, o, _c in devices.values() if o is not None]
    window_start = min((c for _s, _o, c in devices.values() if c is not None), default=min(offered, default=now_ms))
    safe, boots, heap, recon = [], [], [], {}
    for d, (_st, off, conf) in sorted(devices.items()):
        off = off if off is not None else now_ms
        before = statuses(store, d, int(off - settings.baseline_s * 1000), off - 1)
        after = statuses(store, d, off, now_ms)
        if any(b.get("safe_mode") is True for _ms, b in after):
            safe.append(d)
        ref = [b["boot"] for _ms, b in before[-1:] if isinstance(b.get("boot"), int)]
        seen = [b["boot"] for _ms, b in after if isinstance(b.get("boot"), int)]
        if seen:
            base = ref[0] if ref else min(seen)
            extra = max(seen) - base - (1 if ref or max(seen) > base else 0)
            if extra > settings.extra_boots:
                boots.append(f"{d} +{extra}")
        hb = [b["heap_free"] for _ms, b in before if isinstance(b.get("heap_free"), int)]
        soak = [(ms, b) for ms, b in after if ms >= (conf if conf is not None else off)]
        ha = [b["heap_free"] for _ms, b in soak if isinstance(b.get("heap_free"), int)]
        if hb and ha:
            drop = (statistics.median(hb) - min(ha)) / max(1, statistics.median(hb))
            if drop > settings.heap_drop:
                heap.append(f"{d} -{drop:.0%}")
        recon[d] = _reconnects(soak)
    checks.append(Check("safe_mode", not safe, ", ".join(safe) or "none", float(len(safe)), 0.0))
    checks.append(
        Check("boots", not boots, ", ".join(boots) or "no boot beyond the update's", None, settings.extra_boots)
    )
    checks.append(Check("heap", not heap, ", ".join(heap) or "no drop beyond the threshold", None, settings.heap_drop))
    rest_recon = [_reconnects(statuses(store, d, window_start, now_ms)) for d in rest]
    base = statistics.median(rest_recon) if rest_recon else 0
    worse = {d: n for d, n in recon.items() if n > base + settings.reconnects}
    checks.append(
        Check(
            "reconnects",
            not worse,
            (", ".join(f"{d} {n}" for d, n in sorted(worse.items())) or "as the rest") + f" (rest median {base:g})",
            float(max(recon.values(), default=0)),
            base + settings.reconnects,
        )
    )
    if kind == "model":
        checks.append(_drift_check(store, devices, now_ms, settings))
    return GateResult(stage, all(c.passed for c in checks), checks, now_ms)


def _drift_check(store, devices: dict, now_ms: int, settings: GateSettings) -> Check:
    before, after, silent = [], [], []
    for d, (st, off, conf) in sorted(devices.items()):
        if st != ota.CONFIRMED or off is None or conf is None:
            continue  # a device that did not take the model is the ota check's failure
        b = decision_shares(store, d, int(off - settings.baseline_s * 1000), off - 1)
        a = decision_shares(store, d, conf, now_ms, carry_since_ms=off)
        if b is None:
            continue  # no previous model (or it was silent): nothing to compare with
        before.append(b)
        if a is None:
            silent.append(d)
        else:
            after.append(a)
    if not before:
        return Check(
            "drift", True, "no events of a previous model on these devices: nothing to compare", None, settings.drift
        )
    if silent and not after:
        return Check("drift", False, f"the new model sent no event ({', '.join(silent)})", 1.0, settings.drift)
    p, q = mean_shares(before), mean_shares(after)
    tvd = total_variation(p, q)
    top = max(q.items(), key=lambda kv: kv[1])
    detail = f"total variation {tvd:.2f} over {len(after)} device(s); after: {top[0][1]} {top[1]:.0%} of the time" + (
        f"; silent: {', '.join(silent)}" if silent else ""
    )
    return Check("drift", tvd <= settings.drift and not silent, detail, round(tvd, 4), settings.drift)


# ---------------------------------------------------------------- the database


@dataclass
class DeviceRow:
    device: str
    stage: int
    state: str
    sha256: str | None
    got: int
    offered_ms: int | None
    done_ms: int | None
    reason: str | None


@dataclass
class RolloutRow:
    id: str
    artifact: str
    sha256: str
    kind: str
    version: int
    target: str
    stages: list[list[str]]
    soak_s: float
    gate: GateSettings
    options: dict
    state: str
    stage: int
    phase: str
    phase_ms: int
    reason: str | None
    gates: dict[str, dict]
    created_ms: int
    updated_ms: int


_RCOLS = (
    "id, artifact, sha256, kind, version, target, stages_json, soak_s, gate_json, options_json, state, stage, phase,"
    " phase_ms, reason, gates_json, created_ms, updated_ms"
)


class RolloutStore:
    """The rollout tables in an open fleet database (Storage); every change is committed at once."""

    def __init__(self, store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        store.apply_migrations(VERSION_TABLE, MIGRATIONS)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _commit(self, sql: str, params: tuple) -> None:
        try:
            self.store.execute(sql, params)
            self.store.conn.commit()
        except BaseException:
            self.store.conn.rollback()
            raise

    def create(self, rid: str, art: ota.Artifact, target: str, stages: list[list[str]], soak_s: float,
               settings: GateSettings, options: dict) -> None:  # fmt: skip
        now = self.now_ms()
        try:
            self.store.execute(
                f"INSERT INTO rollouts ({_RCOLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (rid, art.path, art.sha256, art.kind, art.version, target, json.dumps(stages), soak_s,
                 json.dumps(asdict(settings)), json.dumps(options), RUNNING, 0, OFFER, now, "{}", now, now),
            )  # fmt: skip
            for i, devs in enumerate(stages):
                for d in devs:
                    self.store.execute(
                        "INSERT INTO rollout_devices (rollout, device, stage, state, got, updated_ms)"
                        " VALUES (?, ?, ?, ?, 0, ?)",
                        (rid, d, i, QUEUED, now),
                    )
            self.store.conn.commit()
        except BaseException:
            self.store.conn.rollback()
            raise

    def get(self, rid: str) -> RolloutRow:
        r = self.store.execute(f"SELECT {_RCOLS} FROM rollouts WHERE id = ?", (rid,)).fetchone()
        self.store.conn.rollback()
        if r is None:
            raise EdgefleetError(f"no rollout {rid!r} in this database", hint="edgefleet rollout status lists them")
        return RolloutRow(
            r[0], r[1], r[2], r[3], int(r[4]), r[5], json.loads(r[6]), float(r[7]), GateSettings(**json.loads(r[8])),
            json.loads(r[9]), r[10], int(r[11]), r[12], int(r[13]), r[14], json.loads(r[15]), int(r[16]), int(r[17]),
        )  # fmt: skip

    def all_rollouts(self) -> list[RolloutRow]:
        ids = [r[0] for r in self.store.execute("SELECT id FROM rollouts ORDER BY created_ms, id").fetchall()]
        self.store.conn.rollback()
        return [self.get(i) for i in ids]

    def state(self, rid: str) -> str:
        r = self.store.execute("SELECT state FROM rollouts WHERE id = ?", (rid,)).fetchone()
        self.store.conn.rollback()
        return r[0] if r else ABORTED

    def set(self, rid: str, **fields: Any) -> None:
        """Update rollout columns (state, stage, phase, phase_ms, reason) and updated_ms."""
        allowed = {"state", "stage", "phase", "phase_ms", "reason"}
        assert set(fields) <= allowed, fields
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._commit(f"UPDATE rollouts SET {cols}, updated_ms = ? WHERE id = ?", (*fields.values(), self.now_ms(), rid))

    def set_state_if(self, rid: str, new: str, allowed_from: Sequence[str]) -> bool:
        """Change the state only from one of `allowed_from` (one statement: a concurrent change is not lost)."""
        marks = ", ".join("?" * len(allowed_from))
        cur = self.store.execute(
            f"UPDATE rollouts SET state = ?, updated_ms = ? WHERE id = ? AND state IN ({marks})",
            (new, self.now_ms(), rid, *allowed_from),
        )
        n = cur.rowcount
        self.store.conn.commit()
        return n == 1

    def save_gate(self, rid: str, result: GateResult) -> None:
        row = self.get(rid)
        gates = dict(row.gates)
        gates[str(result.stage)] = result.as_dict()
        self._commit(
            "UPDATE rollouts SET gates_json = ?, updated_ms = ? WHERE id = ?", (json.dumps(gates), self.now_ms(), rid)
        )

    def devices(self, rid: str, stage: int | None = None) -> list[DeviceRow]:
        sql = "SELECT device, stage, state, sha256, got, offered_ms, done_ms, reason FROM rollout_devices WHERE rollout = ?"
        params: tuple = (rid,)
        if stage is not None:
            sql += " AND stage = ?"
            params = (rid, stage)
        rows = self.store.execute(sql + " ORDER BY stage, device", params).fetchall()
        self.store.conn.rollback()
        return [DeviceRow(r[0], int(r[1]), r[2], r[3], int(r[4]), r[5], r[6], r[7]) for r in rows]

    def set_device(self, rid: str, device: str, **fields: Any) -> None:
        allowed = {"state", "sha256", "got", "offered_ms", "done_ms", "reason"}
        assert set(fields) <= allowed, fields
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._commit(
            f"UPDATE rollout_devices SET {cols}, updated_ms = ? WHERE rollout = ? AND device = ?",
            (*fields.values(), self.now_ms(), rid, device),
        )


# ---------------------------------------------------------------- running a rollout


@dataclass
class Connection:
    """Where the fleet is: database, broker (operator login), secrets and broker directories of the registry."""

    db: str = DEFAULT_DB
    broker: str = f"mqtt://{OPERATOR_USER}@127.0.0.1:1883"
    password: str | None = None
    ca: str | None = None
    prefix: str = protocol.DEFAULT_PREFIX
    secrets_dir: str = "secrets"
    broker_dir: str = "broker"
    operator_users: Sequence[str] = (OPERATOR_USER,)
    collector_users: Sequence[str] = (COLLECTOR_USER,)


@dataclass
class RolloutOptions:
    """`rollout start`'s options, typed (the CLI builds this; a test or script can too).

    clock/sleep: injectable, so a test drives the soak and the gate's windows without waiting; wait_s: how long
    a stage waits for its devices' final reports (default: 2 x confirm_s + 120 s + 1 s per chunk); seed: the
    stages' random split (reproducible); offer_timeout_s: how long to wait for the acks of the offers and of
    ota_rollback (a device that does not ack is offline: a timeout, which fails the stage)."""

    artifact: str
    target: str
    stages: str | Sequence[float] = DEFAULT_STAGES
    soak_s: float = DEFAULT_SOAK_S
    gate: GateSettings = field(default_factory=GateSettings)
    kind: str | None = None
    version: int | None = None
    confirm_s: int = wire_ota.DEFAULT_CONFIRM_S
    chunk: int = wire_ota.DEFAULT_CHUNK
    wait_s: float | None = None
    seed: int | None = None
    offer_timeout_s: float = ota.OFFER_TIMEOUT_S


@dataclass
class Hooks:
    """Time and output, injectable: `clock()` in seconds since the epoch (the database's times and the gate's
    windows, compared with the collector's received_ms: a test may shift it, not replace it with another time
    base), `sleep(s)` (the soak waits with it: a test can make the soak instant), `say(line)` for progress,
    `progress_every_s` between progress lines of long waits, `poll_s` between checks of the database for
    pause/abort during a soak."""

    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    say: Callable[[str], None] = print
    progress_every_s: float = 10.0
    poll_s: float = 2.0


@dataclass
class RolloutResult:
    id: str
    state: str
    reason: str | None
    gates: list[GateResult]

    @property
    def ok(self) -> bool:
        return self.state in (DONE, PAUSED)


def start_rollout(opts: RolloutOptions, conn: Connection, hooks: Hooks | None = None) -> RolloutResult:
    """Create a rollout in the database (artifact checked, stages split) and run it. Returns when it is done,
    halted (gate failed, devices rolled back), paused or aborted."""
    hooks = hooks or Hooks()
    if opts.wait_s is not None and opts.wait_s <= 0:
        raise EdgefleetError("--wait must be more than 0 s")
    if not wire_ota.MIN_CONFIRM_S <= opts.confirm_s <= wire_ota.MAX_CONFIRM_S:
        raise EdgefleetError(f"--confirm-s must be {wire_ota.MIN_CONFIRM_S} to {wire_ota.MAX_CONFIRM_S}")
    if not wire_ota.MIN_CHUNK <= opts.chunk <= wire_ota.MAX_CHUNK:
        raise EdgefleetError(f"--chunk must be {wire_ota.MIN_CHUNK} to {wire_ota.MAX_CHUNK} bytes")
    fractions = parse_stages(opts.stages)
    with _open_registry(conn, create=False) as reg:
        art = ota.load_artifact(opts.artifact, opts.kind, opts.version, reg)
        devices = reg.targets(opts.target)
        for d in devices:
            ota.device_key(reg, d)  # every key readable before anything is sent
        rs = RolloutStore(reg.store, hooks.clock)
        stages = split_stages(devices, fractions, random.Random(opts.seed))
        rid = "r-" + secrets.token_hex(3)
        options = {"confirm_s": opts.confirm_s, "chunk": opts.chunk, "wait_s": opts.wait_s,
                   "offer_timeout_s": opts.offer_timeout_s}  # fmt: skip
        rs.create(rid, art, opts.target, stages, float(opts.soak_s), opts.gate, options)
    hooks.say(
        f"rollout {rid}: {art.kind} v{art.version} ({art.size} bytes, sha256 {art.sha256[:16]}) to {len(devices)} "
        f"device(s) in {len(stages)} stage(s): " + ", ".join(str(len(s)) for s in stages)
    )
    return Runner(rid, conn, hooks).run()


# The name an integration test or script looks for: create and run a rollout (the CLI's `rollout start`).
run_rollout = start_rollout


def resume_rollout(rid: str, conn: Connection, hooks: Hooks | None = None) -> RolloutResult:
    """Continue a rollout at the step where it stopped (a paused one, or one whose host crashed): the state is the
    database's. A halted, aborted or done rollout cannot resume."""
    hooks = hooks or Hooks()
    with _open_registry(conn, create=False) as reg:
        rs = RolloutStore(reg.store, hooks.clock)
        row = rs.get(rid)
        if row.state not in (RUNNING, PAUSED):
            raise EdgefleetError(f"rollout {rid} is {row.state}: nothing to resume", hint="start a new rollout")
        rs.set_state_if(rid, RUNNING, (RUNNING, PAUSED))
    hooks.say(f"rollout {rid}: resuming at stage {row.stage + 1}/{len(row.stages)}, step {row.phase}")
    return Runner(rid, conn, hooks).run()


def mark(rid: str, conn: Connection, new: str) -> str:
    """`rollout pause|abort`: change the state in the database (a running start acts on it at its next check).
    Pause only a running rollout; abort a running or paused one."""
    with _open_registry(conn, create=False) as reg:
        return mark_in(RolloutStore(reg.store), rid, new)


def mark_in(rs: RolloutStore, rid: str, new: str) -> str:
    """Pause or abort in an open rollout store (the CLI's `mark` and the console's buttons)."""
    allowed = {PAUSED: (RUNNING,), ABORTED: (RUNNING, PAUSED)}[new]
    row = rs.get(rid)
    if not rs.set_state_if(rid, new, allowed):
        verb = "pause" if new == PAUSED else "abort"
        raise EdgefleetError(f"rollout {rid} is {row.state}: cannot {verb} it")
    return new


def _open_registry(conn: Connection, create: bool):
    from .devices import Registry

    return Registry.open(
        conn.db, conn.secrets_dir, conn.broker_dir, conn.prefix, conn.collector_users, conn.operator_users, create
    )


class _Stop(Exception):
    """The database says paused or aborted: leave the run loop."""


class Runner:
    """Runs one rollout from its database state, one step at a time, writing the state after every step."""

    def __init__(self, rid: str, conn: Connection, hooks: Hooks) -> None:
        self.rid = rid
        self.conn = conn
        self.hooks = hooks

    def run(self) -> RolloutResult:
        with _open_registry(self.conn, create=False) as reg:
            self.reg = reg
            self.rs = RolloutStore(reg.store, self.hooks.clock)
            row = self.rs.get(self.rid)
            self.art = ota.load_artifact(row.artifact, row.kind, row.version, reg)
            if self.art.sha256 != row.sha256:
                raise EdgefleetError(
                    f"{row.artifact} changed since rollout {self.rid} started (sha256 {self.art.sha256[:16]}, "
                    f"was {row.sha256[:16]})",
                    hint="put the original file back, or abort this rollout and start a new one",
                )
            link = OperatorLink(
                self.conn.broker, self.conn.password, self.conn.prefix, self.conn.ca, watch_status=True, tag="rollout"
            )
            with link:
                self.link = link
                timeout = float(row.options.get("offer_timeout_s") or ota.OFFER_TIMEOUT_S)
                self.sender = ota.Sender(link, self.conn.prefix, timeout)
                try:
                    self._loop()
                except _Stop:
                    pass
            row = self.rs.get(self.rid)
            gates = [GateResult.from_dict(g) for _k, g in sorted(row.gates.items(), key=lambda kv: int(kv[0]))]
            return RolloutResult(self.rid, row.state, row.reason, gates)

    # -- helpers

    def _check(self) -> None:
        st = self.rs.state(self.rid)
        if st == PAUSED:
            self.hooks.say(f"rollout {self.rid}: paused (edgefleet rollout resume {self.rid} continues it)")
            raise _Stop
        if st == ABORTED:
            self._clear_all()
            self.hooks.say(f"rollout {self.rid}: aborted; devices keep what they installed")
            raise _Stop

    def _offers(self, devices: Sequence[str]) -> list[ota.DeviceOffer]:
        o = self.rs.get(self.rid).options
        chunk, confirm = int(o["chunk"]), int(o["confirm_s"])
        return [ota.make_offer(self.art, d, ota.device_key(self.reg, d), chunk, confirm) for d in devices]

    def _clear(self, offers: Sequence[ota.DeviceOffer]) -> None:
        self.sender.clear_chunks([(o.offer.size, o.offer.sha256, o.offer.chunk) for o in offers])

    def _clear_all(self) -> None:
        devs = [d.device for d in self.rs.devices(self.rid) if d.sha256]
        if devs:
            self._clear(self._offers(devs))

    def _wait_s(self) -> float:
        o = self.rs.get(self.rid).options
        if o.get("wait_s"):
            return float(o["wait_s"])
        return 2 * int(o["confirm_s"]) + 120 + wire_ota.n_chunks(self.art.size, int(o["chunk"]))

    def _counts(self, stage: int) -> str:
        devs = self.rs.devices(self.rid, stage)
        counts: dict[str, int] = {}
        for d in devs:
            counts[d.state] = counts.get(d.state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    # -- the steps

    def _loop(self) -> None:
        while True:
            self._check()
            row = self.rs.get(self.rid)
            if row.state != RUNNING:
                return
            if row.stage >= len(row.stages):
                self.rs.set(self.rid, state=DONE, phase=FINISHED)
                self.hooks.say(f"rollout {self.rid}: done, every stage passed its gate")
                return
            {OFFER: self._offer, WAIT: self._wait, SOAK: self._soak, GATE: self._gate, ROLLBACK: self._rollback}[
                row.phase
            ](row)
            if self.rs.get(self.rid).phase == FINISHED:
                return

    def _offer(self, row: RolloutRow) -> None:
        n = row.stage
        todo = [d.device for d in self.rs.devices(self.rid, n) if d.state == QUEUED]
        self.hooks.say(f"stage {n + 1}/{len(row.stages)}: offering to {len(todo)} device(s)")
        if todo:
            offers = self._offers(todo)
            for o in offers:
                self.rs.set_device(self.rid, o.device, sha256=o.offer.sha256)  # chunks to remove if we crash now
            sent = self.sender.publish_chunks(offers)
            log.info("published %d chunk bytes for %d device(s)", sent, len(offers))
            results = self.sender.offer(offers)
            now = self.rs.now_ms()
            for o, res in zip(offers, results, strict=True):
                state, detail = ota.offer_state(res)
                if state == ota.CONFIRMED:
                    self.rs.set_device(self.rid, o.device, state=state, offered_ms=now, done_ms=now, reason=detail)
                    self.reg.record_ota(o.device, self.art.kind, self._record())
                elif state == "downloading":
                    self.rs.set_device(self.rid, o.device, state=OFFERED, offered_ms=now, reason=detail or None)
                else:
                    self.rs.set_device(self.rid, o.device, state=state, offered_ms=now, done_ms=now, reason=detail)
                    self.hooks.say(f"  {o.device}: {state}: {detail}")
        self.rs.set(self.rid, phase=WAIT, phase_ms=self.rs.now_ms())

    def _wait(self, row: RolloutRow) -> None:
        n = row.stage
        devs = self.rs.devices(self.rid, n)
        todo = [d.device for d in devs if d.state not in FINAL and d.state != QUEUED]
        offers = self._offers([d.device for d in devs if d.sha256])
        if todo:
            self.sender.publish_chunks([o for o in offers if o.device in todo])  # after a crash: still there
            left = max(1.0, self._wait_s() - (self.rs.now_ms() - row.phase_ms) / 1000)
            self.hooks.say(f"stage {n + 1}/{len(row.stages)}: waiting up to {left:.0f} s for {len(todo)} device(s)")

            def changed(dev: str, rep: dict) -> None:
                self.rs.set_device(self.rid, dev, state=rep["state"], got=rep["got"])

            def progress(states: dict[str, str]) -> None:
                counts: dict[str, int] = {}
                for s in states.values():
                    counts[s] = counts.get(s, 0) + 1
                self.hooks.say(f"  stage {n + 1}: " + ", ".join(f"{c} {s}" for s, c in sorted(counts.items())))

            reports = ota.wait_reports(
                self.link, todo, self.art.kind, self.art.version, left, FINAL, changed, progress,
                lambda: self.rs.state(self.rid) != RUNNING, self.hooks.progress_every_s,
            )  # fmt: skip
            now = self.rs.now_ms()
            for d, rep in reports.items():
                self.rs.set_device(self.rid, d, state=rep.state, got=rep.got, done_ms=now, reason=rep.reason)
                if rep.state == ota.CONFIRMED:
                    self.reg.record_ota(d, self.art.kind, self._record())
            self._check()
        self._clear(offers)
        failed = [d for d in self.rs.devices(self.rid, n) if d.state != ota.CONFIRMED]
        self.hooks.say(f"stage {n + 1}/{len(row.stages)}: {self._counts(n)}")
        self.rs.set(self.rid, phase=GATE if failed else SOAK, phase_ms=self.rs.now_ms())

    def _record(self) -> dict:
        return {"ver": self.art.version, "sha256": self.art.sha256, "artifact": self.art.path, "rollout": self.rid}

    def _soak(self, row: RolloutRow) -> None:
        end = row.phase_ms / 1000 + row.soak_s
        next_say = 0.0
        while True:
            now = self.hooks.clock()
            if now >= end:
                break
            if now >= next_say:
                self.hooks.say(f"stage {row.stage + 1}/{len(row.stages)}: soaking, {end - now:.0f} s left")
                next_say = now + self.hooks.progress_every_s
            self.hooks.sleep(min(self.hooks.poll_s, end - now))
            self._check()
        self.rs.set(self.rid, phase=GATE, phase_ms=self.rs.now_ms())

    def _gate(self, row: RolloutRow) -> None:
        n = row.stage
        devs = self.rs.devices(self.rid, n)
        updated = {d.device for d in self.rs.devices(self.rid) if d.stage <= n}
        rest = [d.device for d in self.rs.devices(self.rid) if d.device not in updated]
        result = gate(
            self.reg.store, n, self.art.kind, {d.device: (d.state, d.offered_ms, d.done_ms) for d in devs}, rest,
            self.rs.now_ms(), row.gate,
        )  # fmt: skip
        self.rs.save_gate(self.rid, result)
        for c in result.checks:
            self.hooks.say(f"  gate {c.name:<10} {'pass' if c.passed else 'FAIL'}  {c.detail}")
        if result.passed:
            self.hooks.say(f"stage {n + 1}/{len(row.stages)}: gate passed")
            self.rs.set(self.rid, stage=n + 1, phase=OFFER, phase_ms=self.rs.now_ms())
        else:
            reason = f"stage {n + 1} gate failed: " + ", ".join(c.name for c in result.checks if not c.passed)
            self.hooks.say(f"rollout {self.rid}: {reason}; rolling back the updated devices")
            self.rs.set(self.rid, phase=ROLLBACK, phase_ms=self.rs.now_ms(), reason=reason)

    def _rollback(self, row: RolloutRow) -> None:
        """ota_rollback to every device this rollout updated (confirmed, or switched and not confirmed yet), then
        wait for their rolled_back reports. Devices that failed or rolled back by themselves need nothing."""
        devs = [
            d
            for d in self.rs.devices(self.rid)
            if d.state in (ota.CONFIRMED, "pending", OFFERED, "downloading", ota.TIMEOUT)
        ]
        targets = [d.device for d in devs]
        if targets:
            results = self.sender.rollback(targets, self.art.kind)
            for res in results:
                if res.result != OK:
                    self.hooks.say(f"  {res.device}: rollback {res.result}: {res.detail}")
            acked = [r.device for r in results if r.result == OK]
            self.hooks.say(f"rollback sent to {len(targets)} device(s), {len(acked)} acked; waiting for their reports")
            reports = ota.wait_reports(
                self.link, acked, self.art.kind, self.art.version, self._wait_s(), (ota.ROLLED_BACK, ota.FAILED),
                progress=lambda st: self.hooks.say("  rollback: " + ", ".join(f"{d} {s}" for d, s in sorted(st.items()))),
                progress_every_s=self.hooks.progress_every_s, any_version=True,
            )  # fmt: skip
            now = self.rs.now_ms()
            for d, rep in reports.items():
                self.rs.set_device(
                    self.rid,
                    d,
                    state=rep.state if rep.state != ota.TIMEOUT else "rollback_timeout",
                    done_ms=now,
                    reason=rep.reason,
                )
                if rep.state == ota.ROLLED_BACK:
                    self.reg.record_ota(d, self.art.kind, {**self._record(), "rolled_back": True})
            for r in results:
                if r.result != OK:
                    self.rs.set_device(self.rid, r.device, state="rollback_failed", done_ms=now, reason=r.detail)
            back = sum(1 for rep in reports.values() if rep.state == ota.ROLLED_BACK)
            self.hooks.say(f"rollout {self.rid}: {back} of {len(targets)} device(s) rolled back")
        self._clear_all()
        self.rs.set(self.rid, state=HALTED, phase=FINISHED, phase_ms=self.rs.now_ms())


# ---------------------------------------------------------------- status


def stage_counts(row: RolloutRow, devices: Sequence[DeviceRow]) -> list[dict]:
    """Per stage: devices, offered, downloading, confirmed, failed, rolled back, and the gate (None before it
    ran, else passed or not): what `rollout status` prints and the console's rollouts page draws."""
    out = []
    for i, devs in enumerate(row.stages):
        mine = [d for d in devices if d.stage == i]
        g = row.gates.get(str(i))
        out.append({
            "stage": i + 1,
            "devices": len(devs),
            "offered": sum(1 for d in mine if d.state != QUEUED),
            "downloading": sum(1 for d in mine if d.state in (OFFERED, "downloading", "pending")),
            "confirmed": sum(1 for d in mine if d.state == ota.CONFIRMED),
            "failed": sum(1 for d in mine if d.state in (ota.FAILED, ota.TIMEOUT, "rollback_failed",
                                                          "rollback_timeout")),
            "rolled_back": sum(1 for d in mine if d.state == ota.ROLLED_BACK),
            "gate": None if g is None else bool(g["passed"]),
        })  # fmt: skip
    return out


def render_status(row: RolloutRow, devices: Sequence[DeviceRow]) -> str:
    """`rollout status ID`: the rollout, one line per stage with counts, the gates' checks."""
    lines = [
        f"rollout {row.id}  {row.state}" + (f" ({row.reason})" if row.reason else ""),
        f"artifact  {row.artifact}: {row.kind} v{row.version}, sha256 {row.sha256[:16]}",
        f"target    {row.target}; soak {row.soak_s:g} s; gate drift {row.gate.drift:g}, heap drop "
        f"{row.gate.heap_drop:g}, reconnects +{row.gate.reconnects}, extra boots {row.gate.extra_boots}",
        f"now       stage {min(row.stage, len(row.stages) - 1) + 1}/{len(row.stages)}, step {row.phase}",
        "",
        "STAGE  DEVICES  OFFERED  DOWNLOADING  CONFIRMED  FAILED  ROLLED_BACK  GATE",
    ]
    for c in stage_counts(row, devices):
        g = c["gate"]
        gtxt = "-" if g is None else ("pass" if g else "FAIL")
        lines.append(
            f"{c['stage']:<5}  {c['devices']:<7}  {c['offered']:<7}  {c['downloading']:<11}  {c['confirmed']:<9}  "
            f"{c['failed']:<6}  {c['rolled_back']:<11}  {gtxt}"
        )
    for k in sorted(row.gates, key=int):
        g = row.gates[k]
        lines.append("")
        lines.append(f"gate of stage {int(k) + 1}: {'passed' if g['passed'] else 'FAILED'}")
        for c in g["checks"]:
            lines.append(f"  {c['name']:<10} {'pass' if c['passed'] else 'FAIL'}  {c['detail']}")
    problems = [d for d in devices if d.reason and d.state not in (QUEUED, OFFERED)]
    if problems:
        lines.append("")
        lines += [f"  {d.device}: {d.state}: {d.reason}" for d in problems]
    return "\n".join(lines)


def render_list(rows: Sequence[RolloutRow]) -> str:
    out = ["ROLLOUT   STATE    KIND    VERSION  TARGET  STAGE"]
    for r in rows:
        out.append(
            f"{r.id:<9} {r.state:<8} {r.kind:<7} {r.version:<8} {r.target}  {min(r.stage + 1, len(r.stages))}/{len(r.stages)}"
        )
    return "\n".join(out)


def device_stages(store) -> dict[str, str]:
    """Each device's part in its latest rollout, in a few words ("r-1a2b3c 1/3 confirmed, halted"), for the
    console's fleet table; {} while no rollout was ever started on this database."""
    if not store.has_table("rollout_devices"):
        return {}
    rows = store.execute(
        "SELECT d.device, d.rollout, d.stage, d.state, r.state, r.stages_json FROM rollout_devices d"
        " JOIN rollouts r ON r.id = d.rollout ORDER BY r.created_ms, d.updated_ms"
    ).fetchall()
    out = {}
    for dev, rid, stage, state, rstate, stages in rows:  # later rollouts overwrite earlier ones
        out[dev] = f"{rid} {stage + 1}/{len(json.loads(stages))} {state}, {rstate}"
    return out


def status_of(rid: str | None, conn: Connection) -> str:
    """The text `rollout status [ID]` prints (every rollout without an id)."""
    with _open_registry(conn, create=False) as reg:
        rs = RolloutStore(reg.store)
        if rid is None:
            return render_list(rs.all_rollouts())
        return render_status(rs.get(rid), rs.devices(rid))
