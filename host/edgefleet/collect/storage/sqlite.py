"""SQLite backend: the embedded default for one machine.

WAL journal, and `synchronous=NORMAL` by default. The durability argument: in WAL mode a commit appends the
transaction to the WAL file with write(); with NORMAL, SQLite does not fsync on every commit, only at checkpoints.
A crash of the collector process (kill -9, an exception, OOM) therefore never loses a committed transaction: the
data is in the OS page cache and the kernel writes it out. Only a crash of the whole machine (kernel panic, power
loss) can lose the last transactions since the previous checkpoint, and those messages were already acknowledged
to the broker. Where that matters, `--durability full` sets `synchronous=FULL` (an fsync per batch commit; the
collector batches, so the cost is one fsync per few thousand readings, not per reading).
"""

from __future__ import annotations

import sqlite3
from itertools import chain
from pathlib import Path
from typing import Any

from ...errors import EdgefleetError
from .base import BOOT_COUNTERS, Storage

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE devices (device TEXT PRIMARY KEY, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,"
        " state TEXT, state_ms INTEGER, status TEXT, records INTEGER NOT NULL DEFAULT 0,"
        " duplicates INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE readings (device TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,"
        " sensor TEXT NOT NULL, flags INTEGER NOT NULL, vals TEXT NOT NULL, received_ms INTEGER NOT NULL,"
        " PRIMARY KEY (device, seq)) WITHOUT ROWID",
        "CREATE TABLE events (device TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,"
        " flags INTEGER NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, score REAL NOT NULL, model TEXT,"
        " action TEXT, sensor TEXT, received_ms INTEGER NOT NULL, PRIMARY KEY (device, seq)) WITHOUT ROWID",
        "CREATE TABLE status_history (id INTEGER PRIMARY KEY, device TEXT NOT NULL, received_ms INTEGER NOT NULL,"
        " state TEXT NOT NULL, retained INTEGER NOT NULL, body TEXT NOT NULL)",
        "CREATE INDEX status_history_device ON status_history (device, received_ms)",
        "CREATE TABLE acks (id INTEGER PRIMARY KEY, device TEXT NOT NULL, cmd_id TEXT, ok INTEGER NOT NULL,"
        " body TEXT NOT NULL, received_ms INTEGER NOT NULL)",
        "CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, topic TEXT NOT NULL,"
        " reason TEXT NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL)",
    ],
    # v2 (protocol v2): records keyed by (device, log, seq); v1 records keep log ''. SQLite cannot change a
    # primary key, so the tables are copied (one transaction: the INSERT opens it, the DDL joins it).
    [
        "DROP TABLE IF EXISTS readings_v2",
        "DROP TABLE IF EXISTS events_v2",
        "CREATE TABLE readings_v2 (device TEXT NOT NULL, log TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL,"
        " ts_ms INTEGER NOT NULL, sensor TEXT NOT NULL, flags INTEGER NOT NULL, vals TEXT NOT NULL,"
        " received_ms INTEGER NOT NULL, PRIMARY KEY (device, log, seq)) WITHOUT ROWID",
        "CREATE TABLE events_v2 (device TEXT NOT NULL, log TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL,"
        " ts_ms INTEGER NOT NULL, flags INTEGER NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, score REAL NOT NULL,"
        " model TEXT, action TEXT, sensor TEXT, received_ms INTEGER NOT NULL, PRIMARY KEY (device, log, seq))"
        " WITHOUT ROWID",
        "INSERT INTO readings_v2 (device, log, seq, ts_ms, sensor, flags, vals, received_ms)"
        " SELECT device, '', seq, ts_ms, sensor, flags, vals, received_ms FROM readings",
        "INSERT INTO events_v2 (device, log, seq, ts_ms, flags, kind, label, score, model, action, sensor,"
        " received_ms) SELECT device, '', seq, ts_ms, flags, kind, label, score, model, action, sensor, received_ms"
        " FROM events",
        "DROP TABLE readings",
        "DROP TABLE events",
        "ALTER TABLE readings_v2 RENAME TO readings",
        "ALTER TABLE events_v2 RENAME TO events",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ],
    # v3: the last counters of every boot of every node (lifetime counters that survive reboots, fleet.lifetime),
    # filled from the status history an older database already holds.
    [
        "CREATE TABLE boot_counters (device TEXT NOT NULL, log TEXT NOT NULL, boot INTEGER NOT NULL,"
        " first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, uptime_s INTEGER NOT NULL, seq INTEGER NOT NULL,"
        " acked INTEGER NOT NULL, "
        + ", ".join(f"{c} INTEGER NOT NULL" for c in BOOT_COUNTERS)
        + ", PRIMARY KEY (device, log, boot)) WITHOUT ROWID",
        "INSERT INTO boot_counters SELECT device, coalesce(json_extract(body, '$.log'), ''),"
        " json_extract(body, '$.boot'), min(received_ms), max(received_ms),"
        " max(max(0, coalesce(json_extract(body, '$.uptime_s'), 0))), max(max(0, coalesce(json_extract(body, '$.seq'), 0))),"
        " max(max(0, coalesce(json_extract(body, '$.counters.acked'), 0))), "
        + ", ".join(f"max(max(0, coalesce(json_extract(body, '$.counters.{c}'), 0)))" for c in BOOT_COUNTERS)
        + " FROM status_history WHERE state = 'online' AND json_type(body, '$.boot') = 'integer'"
        " GROUP BY 1, 2, 3",
    ],
]


class SqliteStorage(Storage):
    name = "sqlite"
    migrations = MIGRATIONS
    insert_reading = (
        "INSERT OR IGNORE INTO readings (device, log, seq, ts_ms, sensor, flags, vals, received_ms) "
        "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8"
        " WHERE NOT EXISTS (SELECT 1 FROM events WHERE device = ?1 AND log = ?2 AND seq = ?3)"
    )
    insert_event = (
        "INSERT OR IGNORE INTO events (device, log, seq, ts_ms, flags, kind, label, score, model, action, sensor,"
        " received_ms) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12"
        " WHERE NOT EXISTS (SELECT 1 FROM readings WHERE device = ?1 AND log = ?2 AND seq = ?3)"
    )

    # Readings go in as multi-row INSERTs (ROWS_PER_INSERT rows per statement): one sqlite3_step, and one release
    # of the GIL, per 500 rows instead of per row, which measured ~2x faster per row while the MQTT thread runs.
    ROWS_PER_INSERT = 500

    def _insert_records(self, cur: Any, table: str, rows_by_dev: dict[str, list[tuple]]) -> dict[str, int]:
        if table != "readings":
            return super()._insert_records(cur, table, rows_by_dev)
        out = {}
        for device, rows in rows_by_dev.items():
            seqs = [r[2] for r in rows]
            taken = {
                (row[0], row[1])
                for row in cur.execute(
                    "SELECT log, seq FROM events WHERE device = ? AND seq BETWEEN ? AND ?",
                    (device, min(seqs), max(seqs)),
                )
            }
            if taken:  # a (log, seq) already used by an event is the same record id: a duplicate, not a reading
                rows = [r for r in rows if (r[1], r[2]) not in taken]
            stored = 0
            n = self.ROWS_PER_INSERT
            for i in range(0, len(rows), n):
                chunk = rows[i : i + n]
                cur.execute(self._multi_insert(len(chunk)), tuple(chain.from_iterable(chunk)))
                stored += cur.rowcount
            out[device] = stored
        return out

    _multi_sql: dict[int, str] = {}  # noqa: RUF012 - a cache of SQL text by row count

    @classmethod
    def _multi_insert(cls, n: int) -> str:
        sql = cls._multi_sql.get(n)
        if sql is None:
            sql = cls._multi_sql[n] = (
                "INSERT OR IGNORE INTO readings (device, log, seq, ts_ms, sensor, flags, vals, received_ms) VALUES "
                + ",".join(["(?,?,?,?,?,?,?,?)"] * n)
            )
        return sql

    def is_outage(self, exc: BaseException) -> bool:
        # "database is locked" (another writer past busy_timeout), "database or disk is full", "disk I/O error"
        return isinstance(exc, sqlite3.OperationalError)

    @classmethod
    def open(
        cls, url: str, durability: str = "normal", create: bool = True, busy_timeout_s: float = 30.0
    ) -> SqliteStorage:
        if not url.startswith("sqlite:///"):
            raise EdgefleetError(
                f"bad SQLite URL {url!r}: a host part is not allowed",
                hint=f"three slashes for a relative path (sqlite:///{url[len('sqlite://') :]}), "
                "four for an absolute one (sqlite:////var/lib/fleet.db)",
            )
        # sqlite:///fleet.db -> "fleet.db" (relative), sqlite:////abs/fleet.db -> "/abs/fleet.db"
        path = url[len("sqlite:///") :]
        if not path:
            raise EdgefleetError(f"no file in {url!r}", hint="sqlite:///fleet.db or sqlite:////abs/path/fleet.db")
        if path != ":memory:" and not Path(path).parent.exists():
            raise EdgefleetError(f"directory of {path} does not exist")
        if not create and path != ":memory:" and not Path(path).is_file():
            raise EdgefleetError(
                f"no database at {path}", hint="check --db; `edgefleet collect` creates the database when it starts"
            )
        try:
            conn = sqlite3.connect(path, check_same_thread=False, timeout=busy_timeout_s, isolation_level="DEFERRED")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=" + ("FULL" if durability == "full" else "NORMAL"))
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            store = cls(conn)
            store.migrate()
        except sqlite3.DatabaseError as e:
            raise EdgefleetError(f"cannot open SQLite database {path}: {e}") from None
        return store
