"""The storage interface and the SQL both backends share.

Schema (v1): devices, readings, events, status_history, acks, dead_letter, schema_version. `(device, seq)` is a
record's identity: the primary key of readings and of events, and an insert into one table also checks the other,
so a seq is stored once across both. Redeliveries hit the key, are skipped (INSERT ... ON CONFLICT DO NOTHING /
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

DEAD_LETTER_CAP = 4096  # bytes of a rejected payload kept for diagnosis


@dataclass
class Batch:
    """What one transaction writes. Tuples are in the column order of the INSERTs below."""

    # (device, seq, ts_ms, sensor, flags, vals_json, received_ms)
    readings: dict[str, list[tuple]] = field(default_factory=dict)
    # (device, seq, ts_ms, flags, kind, label, score, model, action, sensor, received_ms)
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

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["gaps"] = [list(g) for g in self.gaps]
        return d


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Storage:
    """Backend-neutral logic. Subclasses set the dialect bits and the connection; SQL uses `?` placeholders."""

    name = "?"
    placeholder = "?"
    greatest = "max"
    migrations: ClassVar[list[list[str]]] = []
    insert_reading = ""
    insert_event = ""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    # -- dialect helpers
    def q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(self.q(sql), params)
        return cur

    def close(self) -> None:
        self.conn.close()

    # -- migrations
    def schema_version(self) -> int:
        row = self.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_ms BIGINT)")
        self.conn.commit()
        current = self.schema_version()
        for version, statements in enumerate(self.migrations, start=1):
            if version <= current:
                continue
            log.info("%s: applying schema migration %d", self.name, version)
            for sql in self.migration_statements(version, statements):
                self.conn.execute(sql)
            self.execute("INSERT INTO schema_version (version, applied_ms) VALUES (?, ?)", (version, now_ms()))
            self.conn.commit()

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
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        for stored, dup in per_dev.values():
            res.stored += stored
            res.duplicates += dup
        res.dead = len(batch.dead)
        return res

    def _insert_records(self, cur: Any, table: str, rows_by_dev: dict[str, list[tuple]]) -> dict[str, int]:
        """Insert readings or events, skipping known (device, seq); return how many were new per device."""
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
        records = "SELECT device, seq FROM readings UNION ALL SELECT device, seq FROM events"
        stats = {
            r[0]: (int(r[1]), int(r[2]), int(r[3]))
            for r in self.execute(f"SELECT device, count(*), min(seq), max(seq) FROM ({records}) s GROUP BY device")
        }
        gaps: dict[str, list[tuple[int, int]]] = {}
        gap_sql = (
            f"SELECT device, seq, nxt FROM (SELECT device, seq, LEAD(seq) OVER (PARTITION BY device ORDER BY seq) "
            f"AS nxt FROM ({records}) s) t WHERE nxt > seq + 1 ORDER BY device, seq"
        )
        for device, seq, nxt in self.execute(gap_sql):
            gaps.setdefault(device, []).append((int(seq) + 1, int(nxt) - 1))
        rows = []
        for r in self.execute(
            "SELECT device, state, state_ms, first_seen_ms, last_seen_ms, duplicates, status FROM devices "
            "ORDER BY device"
        ):
            device = r[0]
            count, lo, hi = stats.get(device, (0, None, None))
            dev_gaps = gaps.get(device, [])
            missing = sum(b - a + 1 for a, b in dev_gaps)
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
                    records=count,
                    duplicates=int(r[5]),
                    min_seq=lo,
                    max_seq=hi,
                    missing=missing,
                    gaps=dev_gaps[:max_gaps],
                    status=status,
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
        """(device, seq, ts_ms, sensor, flags, vals) sorted by device then seq, streamed."""
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
        sql = "SELECT device, seq, ts_ms, sensor, flags, vals FROM readings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY device, seq"
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
