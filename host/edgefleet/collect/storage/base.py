"""The storage interface and the SQL both backends share.

Schema (v2): devices, readings, events, status_history, acks, dead_letter, counters, schema_version.
`(device, log, seq)` is a record's identity (log = the node's flash-log id, '' for v1 nodes; seq restarts at 1
in a new log): the primary key of readings and of events, and an insert into one table also checks the other,
so a record is stored once across both. Redeliveries hit the key, are skipped (INSERT ... ON CONFLICT DO NOTHING /
INSERT OR IGNORE) and counted per device in devices.duplicates. Migrations are ordered lists of statements per
backend; `schema_version` records which ran, so an old database is upgraded in place when opened.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger(__name__)

DEAD_LETTER_CAP = 65_536  # bytes of a rejected payload kept (protocol.MAX_PAYLOAD: a valid-size one is kept whole)
DEAD_LETTER_MAX_ROWS = 100_000  # default cap of the dead_letter table (oldest pruned; `collect --dead-max-rows`)
DEAD_LETTER_MAX_BYTES = 256 * 1024 * 1024  # default cap of its payload bytes (`collect --dead-max-mb`)
SEQ_JUMP = 100_000  # a seq gap wider than this is a "seq jump" anomaly, not missing records (docs/collect.md)

# The per-boot counters of an online status (docs/protocol.md "status") kept per (device, log, boot) in
# boot_counters, so lifetime counters survive the node's reboots (fleet.lifetime). All of them only grow within a
# boot, so the row keeps each one's maximum: a redelivered, reordered or concurrently written status changes
# nothing. `seq` and `acked` are seqs of the log, not counts (max over the log, never summed).
BOOT_COUNTERS = (
    "sampled", "rejected", "logged", "dropped", "published", "reconnects", "corrupt", "stored", "resends",
    "stored_bad",
)  # fmt: skip
BOOT_SEQS = ("seq", "acked")


@dataclass
class Batch:
    """What one transaction writes. Tuples are in the column order of the INSERTs below."""

    # (device, log, seq, ts_ms, sensor, flags, vals_json, received_ms)
    readings: dict[str, list[tuple]] = field(default_factory=dict)
    # (device, log, seq, ts_ms, flags, kind, label, score, model, action, sensor, received_ms)
    events: dict[str, list[tuple]] = field(default_factory=dict)
    # (device, received_ms, state, retained, body_json)
    statuses: list[tuple] = field(default_factory=list)
    # (device, cmd_id, ok, body_json, received_ms)
    acks: list[tuple] = field(default_factory=list)
    # (received_ms, topic, reason, size, payload[:cap])
    dead: list[tuple] = field(default_factory=list)
    # device -> last received_ms of any valid message
    seen: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        n = sum(len(v) for v in self.readings.values()) + sum(len(v) for v in self.events.values())
        return n + len(self.statuses) + len(self.acks) + len(self.dead)


@dataclass
class WriteResult:
    stored: int = 0
    duplicates: int = 0
    dead: int = 0
    pruned: int = 0  # dead letters deleted to keep the table under its cap


@dataclass
class LogCounters:
    """A device's per-boot counters of one flash log, summed over its boots (each boot's row holds the maximum of
    each counter over that boot's statuses), with the highest seq a status reported in that log."""

    log: str
    boots: int
    seq: int
    acked: int
    first_ms: int
    last_ms: int
    counters: dict[str, int]


@dataclass
class DeviceRow:
    """Fleet status of one device: state from the retained status / last will, counters from the last *online*
    status (kept when the node goes offline), record bookkeeping and seq gaps from the stored records."""

    device: str
    state: str | None
    state_ms: int | None
    first_seen_ms: int
    last_seen_ms: int
    records: int
    duplicates: int
    min_seq: int | None
    max_seq: int | None
    missing: int
    gaps: list[tuple[int, int]]
    status: dict | None
    # Flash logs (protocol v2): how many this device has sent records from, the current one (of the record
    # received last) and when it was first heard; seq/gaps above are of the current log, records/missing of all.
    logs: int = 0
    log: str | None = None
    log_since_ms: int | None = None
    seq_jumps: int = 0  # gaps wider than SEQ_JUMP: a bad or hostile seq, not counted as missing
    # Lifetime inputs (fleet.lifetime): the last counters of every boot, and (count, min seq, max seq) of the
    # records stored per flash log.
    log_counters: list[LogCounters] = field(default_factory=list)
    log_stats: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["gaps"] = [list(g) for g in self.gaps]
        d.pop("log_counters", None)
        d.pop("log_stats", None)
        return d


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Storage:
    """Backend-neutral logic. Subclasses set the dialect bits and the connection; SQL uses `?` placeholders."""

    name = "?"
    placeholder = "?"
    greatest = "max"
    sum_fn = "total"  # SQLite's sum() raises on integer overflow (hostile counters); total() is a float
    migrations: ClassVar[list[list[str]]] = []
    insert_reading = ""
    insert_event = ""

    dead_max_rows = DEAD_LETTER_MAX_ROWS
    dead_max_bytes = DEAD_LETTER_MAX_BYTES

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    # -- outages (the collector retries these; anything else is a problem with the data it tried to write)
    def is_outage(self, exc: BaseException) -> bool:
        """True when `exc` says the database is unavailable (down, locked, full), not that the data is bad."""
        return False

    def reconnect(self) -> None:
        """Get a working connection after an outage (raises while the database is still unavailable)."""
        try:
            self.conn.rollback()
        except Exception:
            pass

    # -- dialect helpers
    def q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(self.q(sql), params)
        return cur

    def close(self) -> None:
        self.conn.close()

    def has_table(self, table: str) -> bool:
        """Whether another stage's table exists yet (a reader of the fleet database, such as the console, must
        not fail, nor abort a PostgreSQL transaction, on tables a stage creates only when first used)."""
        return (
            self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
            is not None
        )

    # -- migrations
    def schema_version(self) -> int:
        row = self.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> None:
        self.apply_migrations("schema_version", self.migrations, self.migration_statements)

    def apply_migrations(self, version_table: str, migrations: list[list[str]], statements_for: Any = None) -> int:
        """Run the migrations of one schema whose versions are kept in `version_table`, each in a transaction
        with its version row; returns the version now in place. The collector's tables are one schema
        (`schema_version`); another stage that keeps its own tables in the fleet database (the device registry,
        edgefleet.fleetops) has its own version table, so each upgrades in place without renumbering the other."""
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {version_table} (version INTEGER PRIMARY KEY, applied_ms BIGINT)"
        )
        self.conn.commit()
        row = self.execute(f"SELECT max(version) FROM {version_table}").fetchone()
        current = int(row[0] or 0)
        for version, statements in enumerate(migrations, start=1):
            if version <= current:
                continue
            what = "schema" if version_table == "schema_version" else version_table
            log.info("%s: applying %s migration %d", self.name, what, version)
            for sql in statements_for(version, statements) if statements_for else statements:
                self.conn.execute(sql)
            self.execute(f"INSERT INTO {version_table} (version, applied_ms) VALUES (?, ?)", (version, now_ms()))
            self.conn.commit()
            current = version
        return current

    def migration_statements(self, version: int, statements: list[str]) -> list[str]:
        return statements

    # -- the collector's write path
    def write(self, batch: Batch) -> WriteResult:
        """Write the batch in one transaction and commit. Raises on a database error (nothing committed)."""
        res = WriteResult()
        cur = self.conn.cursor()
        try:
            per_dev: dict[str, list[int]] = {}
            for table, rows_by_dev in (("readings", batch.readings), ("events", batch.events)):
                if not rows_by_dev:
                    continue
                stored_by_dev = self._insert_records(cur, table, rows_by_dev)
                for device, rows in rows_by_dev.items():
                    stored = stored_by_dev.get(device, 0)
                    counts = per_dev.setdefault(device, [0, 0])
                    counts[0] += stored
                    counts[1] += len(rows) - stored
            if batch.seen:
                g = self.greatest
                cur.executemany(
                    self.q(
                        "INSERT INTO devices (device, first_seen_ms, last_seen_ms, records, duplicates) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
                        f"last_seen_ms = {g}(devices.last_seen_ms, excluded.last_seen_ms), "
                        "records = devices.records + excluded.records, "
                        "duplicates = devices.duplicates + excluded.duplicates"
                    ),
                    [(d, ms, ms, *per_dev.get(d, (0, 0))) for d, ms in batch.seen.items()],
                )
            for device, received, state, retained, body in batch.statuses:
                cur.execute(
                    self.q(
                        "INSERT INTO status_history (device, received_ms, state, retained, body) VALUES (?, ?, ?, ?, ?)"
                    ),
                    (device, received, state, retained, body),
                )
                # The last will carries no counters: an offline state keeps the last online status beside it,
                # so fleet status and the console still show what the node reported before it went away.
                if state == "online":
                    cur.execute(
                        self.q("UPDATE devices SET state = ?, state_ms = ?, status = ? WHERE device = ?"),
                        (state, received, body, device),
                    )
                    self._note_boot(cur, device, received, body)
                else:
                    cur.execute(
                        self.q("UPDATE devices SET state = ?, state_ms = ? WHERE device = ?"), (state, received, device)
                    )
            if batch.acks:
                cur.executemany(
                    self.q("INSERT INTO acks (device, cmd_id, ok, body, received_ms) VALUES (?, ?, ?, ?, ?)"),
                    batch.acks,
                )
            if batch.dead:
                cur.executemany(
                    self.q(
                        "INSERT INTO dead_letter (received_ms, topic, reason, size, payload) VALUES (?, ?, ?, ?, ?)"
                    ),
                    batch.dead,
                )
                res.pruned = self._prune_dead(cur)
            self.conn.commit()
        except BaseException:
            try:
                self.conn.rollback()
            except Exception:
                pass
            raise
        for stored, dup in per_dev.values():
            res.stored += stored
            res.duplicates += dup
        res.dead = len(batch.dead)
        return res

    def _note_boot(self, cur: Any, device: str, received: int, body: str) -> None:
        """Keep the counters of this status' boot: each column the larger of the stored and the new value, keyed by
        (device, log, boot), so any number of deliveries in any order, by any number of collectors, give the same
        row (PostgreSQL's ON CONFLICT DO UPDATE locks the row; SQLite has one writer)."""
        st = json.loads(body)
        boot = st.get("boot")
        if not isinstance(boot, int) or isinstance(boot, bool):
            return  # the collector validated it (protocol.check_status); a row written by other means is skipped
        counters = st.get("counters") or {}

        def num(x: Any) -> int:
            return max(0, x) if isinstance(x, int) and not isinstance(x, bool) else 0

        vals = [num(st.get("uptime_s")), num(st.get("seq")), num(counters.get("acked"))]
        vals += [num(counters.get(c)) for c in BOOT_COUNTERS]
        cols = ("uptime_s", *BOOT_SEQS, *BOOT_COUNTERS)
        g = self.greatest
        cur.execute(
            self.q(
                f"INSERT INTO boot_counters (device, log, boot, first_ms, last_ms, {', '.join(cols)}) VALUES "
                f"({', '.join('?' * (5 + len(cols)))}) ON CONFLICT (device, log, boot) DO UPDATE SET "
                "first_ms = "
                + ("min" if g == "max" else "LEAST")
                + "(boot_counters.first_ms, excluded.first_ms), "
                + ", ".join(f"{c} = {g}(boot_counters.{c}, excluded.{c})" for c in ("last_ms", *cols))
            ),
            (device, st.get("log") or "", boot, received, received, *vals),
        )

    def log_counters(self, devices: list[str] | None = None) -> dict[str, list[LogCounters]]:
        """Every device's counters per flash log, summed over its boots in the database (one row per (device, log):
        the console lists thousands of devices, each with many boots), for fleet.lifetime."""
        sums = ", ".join(f"{self.sum_fn}({c})" for c in BOOT_COUNTERS)
        sql = (
            f"SELECT device, log, count(*), max(seq), max(acked), min(first_ms), max(last_ms), {sums} "
            "FROM boot_counters"
        )
        params: list = []
        if devices is not None:
            if not devices:
                return {}
            sql += " WHERE device IN (" + ",".join("?" * len(devices)) + ")"
            params = list(devices)
        out: dict[str, list[LogCounters]] = {}
        for r in self.execute(sql + " GROUP BY device, log ORDER BY device, min(first_ms)", params).fetchall():
            counters = {c: int(v) for c, v in zip(BOOT_COUNTERS, r[7:], strict=True)}
            out.setdefault(r[0], []).append(
                LogCounters(r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), counters)
            )
        return out

    def _prune_dead(self, cur: Any) -> int:
        """Delete the oldest dead letters beyond the row and byte caps; count them in counters. Why a cap: a
        device (or attacker) sending garbage forever must not fill the disk the good records need."""
        n, size = cur.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead_letter").fetchone()
        over_rows, over_bytes = int(n) - self.dead_max_rows, int(size) - self.dead_max_bytes
        if over_rows <= 0 and over_bytes <= 0:
            return 0
        rows = bytes_ = 0
        cutoff = None
        scan = self.conn.cursor()
        scan.execute("SELECT id, length(payload) FROM dead_letter ORDER BY id")
        while rows < over_rows or bytes_ < over_bytes:
            row = scan.fetchone()
            if row is None:
                break
            cutoff = row[0]
            rows += 1
            bytes_ += int(row[1])
        scan.close()
        if cutoff is None:
            return 0
        cur.execute(self.q("DELETE FROM dead_letter WHERE id <= ?"), (cutoff,))
        cur.execute(
            self.q(
                "INSERT INTO counters (name, value) VALUES ('dead_letter_pruned', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
            ),
            (rows,),
        )
        return rows

    def counter(self, name: str) -> int:
        row = self.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _insert_records(self, cur: Any, table: str, rows_by_dev: dict[str, list[tuple]]) -> dict[str, int]:
        """Insert readings or events, skipping known (device, log, seq); return how many were new per device."""
        sql = self.insert_reading if table == "readings" else self.insert_event
        out = {}
        for device, rows in rows_by_dev.items():
            cur.executemany(sql, rows)
            out[device] = max(cur.rowcount, 0)
        return out

    # -- reading back
    def counts(self) -> dict[str, int]:
        out = {}
        for table in ("readings", "events", "status_history", "acks", "dead_letter", "devices"):
            out[table] = int(self.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return out

    def dead_letters(self, limit: int = 1000) -> list[tuple]:
        """(received_ms, topic, reason, size, payload) newest last."""
        return [
            (r[0], r[1], r[2], r[3], bytes(r[4]))
            for r in self.execute(
                "SELECT received_ms, topic, reason, size, payload FROM dead_letter ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        ]

    def fleet(self, max_gaps: int = 20) -> list[DeviceRow]:
        records = (
            "SELECT device, log, seq, received_ms FROM readings UNION ALL "
            "SELECT device, log, seq, received_ms FROM events"
        )
        # per (device, log): count, min/max seq, first and last received
        logs: dict[str, list[tuple]] = {}
        for r in self.execute(
            f"SELECT device, log, count(*), min(seq), max(seq), min(received_ms), max(received_ms) "
            f"FROM ({records}) s GROUP BY device, log"
        ):
            logs.setdefault(r[0], []).append((r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6])))
        gaps: dict[tuple[str, str], list[tuple[int, int]]] = {}
        jumps: dict[str, int] = {}
        missing: dict[str, int] = {}
        gap_sql = (
            f"SELECT device, log, seq, nxt FROM (SELECT device, log, seq, LEAD(seq) OVER "
            f"(PARTITION BY device, log ORDER BY seq) AS nxt FROM ({records}) s) t WHERE nxt > seq + 1 "
            "ORDER BY device, log, seq"
        )
        for device, lg, seq, nxt in self.execute(gap_sql):
            width = int(nxt) - int(seq) - 1
            if width > SEQ_JUMP:
                jumps[device] = jumps.get(device, 0) + 1
                continue
            gaps.setdefault((device, lg), []).append((int(seq) + 1, int(nxt) - 1))
            missing[device] = missing.get(device, 0) + width
        per_log = self.log_counters()
        rows = []
        for r in self.execute(
            "SELECT device, state, state_ms, first_seen_ms, last_seen_ms, duplicates, status FROM devices "
            "ORDER BY device"
        ).fetchall():
            device = r[0]
            dev_logs = logs.get(device, [])
            current = max(dev_logs, key=lambda x: (x[5], x[4])) if dev_logs else None
            dev_gaps = gaps.get((device, current[0]), []) if current else []
            status = r[6]
            if isinstance(status, str):
                status = json.loads(status)
            rows.append(
                DeviceRow(
                    device=device,
                    state=r[1],
                    state_ms=r[2],
                    first_seen_ms=int(r[3]),
                    last_seen_ms=int(r[4]),
                    records=sum(x[1] for x in dev_logs),
                    duplicates=int(r[5]),
                    min_seq=current[2] if current else None,
                    max_seq=current[3] if current else None,
                    missing=missing.get(device, 0),
                    gaps=dev_gaps[:max_gaps],
                    status=status,
                    logs=len(dev_logs),
                    log=current[0] if current else None,
                    log_since_ms=current[4] if current else None,
                    seq_jumps=jumps.get(device, 0),
                    log_counters=per_log.get(device, []),
                    log_stats={x[0]: (x[1], x[2], x[3]) for x in dev_logs},
                )
            )
        return rows

    def iter_readings(
        self,
        devices: list[str] | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        sensors: list[str] | None = None,
    ) -> Iterator[tuple[str, int, int, str, int, dict]]:
        """(device, seq, ts_ms, sensor, flags, vals) sorted by device, flash log (first arrival), seq; streamed."""
        where, params = [], []
        if devices:
            where.append("device IN (" + ",".join("?" * len(devices)) + ")")
            params += devices
        if sensors:
            where.append("sensor IN (" + ",".join("?" * len(sensors)) + ")")
            params += sensors
        if since_ms is not None:
            where.append("ts_ms >= ?")
            params.append(since_ms)
        if until_ms is not None:
            where.append("ts_ms < ?")
            params.append(until_ms)
        # Several flash logs of one device (an erased log, a replaced board) each restart seq at 1: export them
        # one after the other, in the order their first record arrived, so seq still ascends within a run.
        sql = (
            "SELECT r.device, r.seq, r.ts_ms, r.sensor, r.flags, r.vals FROM readings r JOIN "
            "(SELECT device, log, min(received_ms) AS first_ms FROM readings GROUP BY device, log) f "
            "ON f.device = r.device AND f.log = r.log"
        )
        if where:
            sql += " WHERE " + " AND ".join("r." + w for w in where)
        sql += " ORDER BY r.device, f.first_ms, r.log, r.seq"
        cur = self._stream_cursor()
        cur.execute(self.q(sql), params)
        loads = json.loads
        while True:
            chunk = cur.fetchmany(5000)
            if not chunk:
                break
            for device, seq, ts, sensor, flags, vals in chunk:
                yield device, seq, ts, sensor, flags, (loads(vals) if isinstance(vals, str) else vals)

    def _stream_cursor(self) -> Any:
        return self.conn.cursor()
