"""PostgreSQL backend (psycopg 3): for fleets that outgrow one machine, and for several collectors at once.

Readings become a TimescaleDB hypertable (partitioned on ts_ms, one chunk per day) when the `timescaledb`
extension is available in the server; detection is `pg_available_extensions`, so a plain PostgreSQL gets plain
tables and the same behaviour. A hypertable's unique keys must contain its time column, so there the key is
(device, seq, ts_ms): a redelivery repeats ts, so it is still recognised and skipped.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, ClassVar

from ...errors import EdgefleetError
from ...redact import redact_text
from .base import BOOT_COUNTERS, Storage

log = logging.getLogger(__name__)

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE devices (device TEXT PRIMARY KEY, first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,"
        " state TEXT, state_ms BIGINT, status JSONB, records BIGINT NOT NULL DEFAULT 0,"
        " duplicates BIGINT NOT NULL DEFAULT 0)",
        "@readings",
        "CREATE TABLE events (device TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,"
        " flags INTEGER NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, score DOUBLE PRECISION NOT NULL,"
        " model TEXT, action TEXT, sensor TEXT, received_ms BIGINT NOT NULL, PRIMARY KEY (device, seq))",
        "CREATE TABLE status_history (id BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, received_ms BIGINT NOT NULL,"
        " state TEXT NOT NULL, retained BOOLEAN NOT NULL, body JSONB NOT NULL)",
        "CREATE INDEX status_history_device ON status_history (device, received_ms)",
        "CREATE TABLE acks (id BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, cmd_id TEXT, ok BOOLEAN NOT NULL,"
        " body JSONB NOT NULL, received_ms BIGINT NOT NULL)",
        "CREATE TABLE dead_letter (id BIGSERIAL PRIMARY KEY, received_ms BIGINT NOT NULL, topic TEXT NOT NULL,"
        " reason TEXT NOT NULL, size INTEGER NOT NULL, payload BYTEA NOT NULL)",
    ],
    # v2 (protocol v2): records keyed by (device, log, seq); v1 records keep log ''. Transactional DDL.
    [
        "ALTER TABLE readings ADD COLUMN log TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE events ADD COLUMN log TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE readings DROP CONSTRAINT readings_pkey",
        "@readings_pkey",
        "ALTER TABLE events DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (device, log, seq)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    ],
    # v3: the last counters of every boot of every node (lifetime counters that survive reboots, fleet.lifetime),
    # filled from the status history an older database already holds.
    [
        "CREATE TABLE boot_counters (device TEXT NOT NULL, log TEXT NOT NULL, boot BIGINT NOT NULL,"
        " first_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL, uptime_s BIGINT NOT NULL, seq BIGINT NOT NULL,"
        " acked BIGINT NOT NULL, "
        + ", ".join(f"{c} BIGINT NOT NULL" for c in BOOT_COUNTERS)
        + ", PRIMARY KEY (device, log, boot))",
        "INSERT INTO boot_counters SELECT device, coalesce(body->>'log', ''), (body->>'boot')::bigint,"
        " min(received_ms), max(received_ms), max(GREATEST(0, coalesce((body->>'uptime_s')::bigint, 0))),"
        " max(GREATEST(0, coalesce((body->>'seq')::bigint, 0))),"
        " max(GREATEST(0, coalesce((body->'counters'->>'acked')::bigint, 0))), "
        + ", ".join(f"max(GREATEST(0, coalesce((body->'counters'->>'{c}')::bigint, 0)))" for c in BOOT_COUNTERS)
        + " FROM status_history WHERE state = 'online' AND jsonb_typeof(body->'boot') = 'number'"
        " GROUP BY 1, 2, 3",
    ],
]

READINGS_PLAIN = (
    "CREATE TABLE readings (device TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL, sensor TEXT NOT NULL,"
    " flags INTEGER NOT NULL, vals JSONB NOT NULL, received_ms BIGINT NOT NULL, PRIMARY KEY (device, seq))"
)
READINGS_HYPER = [
    "CREATE EXTENSION IF NOT EXISTS timescaledb",
    READINGS_PLAIN.replace("PRIMARY KEY (device, seq)", "PRIMARY KEY (device, seq, ts_ms)"),
    "SELECT create_hypertable('readings', 'ts_ms', chunk_time_interval => 86400000)",
]


class PostgresStorage(Storage):
    name = "postgresql"
    placeholder = "%s"

    def has_table(self, table: str) -> bool:
        return self.execute("SELECT to_regclass(?)", (table,)).fetchone()[0] is not None

    greatest = "GREATEST"
    sum_fn = "sum"  # bigint sums are numeric: no overflow
    migrations = MIGRATIONS
    # Records go in with COPY into a temporary staging table, then one INSERT ... SELECT per table that skips
    # known (device, seq), also those in the other table: one round trip per batch instead of one per row.
    columns: ClassVar[dict[str, str]] = {
        "readings": "device, log, seq, ts_ms, sensor, flags, vals, received_ms",
        "events": "device, log, seq, ts_ms, flags, kind, label, score, model, action, sensor, received_ms",
    }
    hypertable = False
    url = ""

    def is_outage(self, exc: BaseException) -> bool:
        import psycopg

        # OperationalError covers a lost connection, AdminShutdown (restart) and class 53 (disk full, out of
        # memory); InterfaceError a connection psycopg already knows is closed.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or self.conn.closed

    def reconnect(self) -> None:
        import psycopg

        if not self.conn.closed:
            try:
                self.conn.rollback()
                self.conn.execute("SELECT 1")
                self.conn.rollback()
                return
            except psycopg.Error:
                pass
        try:
            self.conn.close()
        except psycopg.Error:
            pass
        self.conn = psycopg.connect(self.url, autocommit=False, connect_timeout=5)

    @classmethod
    def open(cls, url: str) -> PostgresStorage:
        try:
            import psycopg
        except ImportError:
            raise EdgefleetError(
                "PostgreSQL support needs psycopg 3", hint="pip install 'edgefleet[pg]' (psycopg[binary])"
            ) from None
        try:
            conn = psycopg.connect(url, autocommit=False)
        except psycopg.Error as e:
            raise EdgefleetError(f"cannot connect to PostgreSQL: {redact_text(str(e).strip(), url)}") from None
        store = cls(conn)
        store.url = url
        try:
            store.migrate()
        except psycopg.Error as e:
            conn.close()
            raise EdgefleetError(f"cannot set up the PostgreSQL schema: {redact_text(str(e).strip(), url)}") from None
        return store

    def migrate(self) -> None:
        super().migrate()
        row = self.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        self.hypertable = row is not None
        self.conn.commit()

    def migration_statements(self, version: int, statements: list[str]) -> list[str]:
        out = []
        for sql in statements:
            if sql == "@readings_pkey":
                hyper = self.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
                out.append("ALTER TABLE readings ADD PRIMARY KEY (device, log, seq" + (", ts_ms)" if hyper else ")"))
                continue
            if sql != "@readings":
                out.append(sql)
                continue
            available = self.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
            if available:
                log.info("postgresql: TimescaleDB available, readings is a hypertable")
                out += READINGS_HYPER
            else:
                log.info("postgresql: no TimescaleDB, readings is a plain table")
                out.append(READINGS_PLAIN)
        return out

    def _insert_records(self, cur: Any, table: str, rows_by_dev: dict[str, list[tuple]]) -> dict[str, int]:
        other = "events" if table == "readings" else "readings"
        cols = self.columns[table]
        stage = "stage_" + table
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
            for rows in rows_by_dev.values():
                for row in rows:
                    copy.write_row(row)
        cur.execute(
            f"WITH ins AS (INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {other} o WHERE o.device = s.device AND o.log = s.log AND o.seq = s.seq) "
            "ON CONFLICT DO NOTHING RETURNING device) SELECT device, count(*) FROM ins GROUP BY device"
        )
        return {device: int(n) for device, n in cur.fetchall()}

    def _stream_cursor(self) -> Any:
        # A server-side cursor, so exporting millions of rows does not load them all into memory.
        return self.conn.cursor(name="edgefleet_export_" + uuid.uuid4().hex[:8])
