"""Storage backends (SQLite and a real PostgreSQL): migrations, record identity across tables, dead letters."""

from __future__ import annotations

import pytest

from edgefleet.collect.storage import Batch, open_storage
from edgefleet.errors import EdgefleetError

LOG = "0a1b2c3d"


def _reading(dev: str, seq: int, log: str = LOG, received: int = 99) -> tuple:
    return (dev, log, seq, 1000 + seq, "env", 0, '{"t":1.5}', received)


def _event(dev: str, seq: int, log: str = LOG) -> tuple:
    return (dev, log, seq, 1000 + seq, 0, "class", "idle", 0.5, None, None, None, 99)


def test_migrations_run_once_and_reopen(db_url) -> None:
    s = open_storage(db_url)
    assert s.schema_version() == len(s.migrations) == 3
    s.close()
    s = open_storage(db_url)  # reopening applies nothing and keeps data
    try:
        assert s.schema_version() == 3
        rows = s.execute("SELECT count(*) FROM schema_version").fetchone()
        assert rows[0] == 3
    finally:
        s.close()


def test_seq_is_unique_across_readings_and_events(db_url) -> None:
    s = open_storage(db_url)
    try:
        b = Batch(readings={"n1": [_reading("n1", 1), _reading("n1", 2), _reading("n1", 2)]},
                  events={"n1": [_event("n1", 2), _event("n1", 3)]}, seen={"n1": 99})  # fmt: skip
        res = s.write(b)
        # Readings go first: seq 2 is a reading, its event twin and the in-batch repeat are duplicates.
        assert (res.stored, res.duplicates) == (3, 2)
        assert s.counts()["readings"] == 2 and s.counts()["events"] == 1
        res = s.write(Batch(events={"n1": [_event("n1", 1)]}, readings={"n2": [_reading("n2", 1)]},
                            seen={"n1": 100, "n2": 100}))  # fmt: skip
        assert (res.stored, res.duplicates) == (1, 1)
        rows = {r.device: r for r in s.fleet()}
        assert (rows["n1"].records, rows["n1"].duplicates, rows["n1"].last_seen_ms) == (3, 3, 100)
        assert (rows["n2"].records, rows["n2"].duplicates) == (1, 0)
    finally:
        s.close()


def test_dead_letters_keep_reason_and_capped_payload(db_url) -> None:
    s = open_storage(db_url)
    try:
        s.write(Batch(dead=[(5, "edgefleet/x/telemetry", "malformed JSON", 10_000, b"\x00\xff" * 100)]))
        (d,) = s.dead_letters()
        assert d == (5, "edgefleet/x/telemetry", "malformed JSON", 10_000, b"\x00\xff" * 100)
    finally:
        s.close()


def test_bad_urls_are_user_errors(tmp_path) -> None:
    with pytest.raises(EdgefleetError, match="unsupported database URL"):
        open_storage("mysql://localhost/x")
    with pytest.raises(EdgefleetError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/missing/f.db")
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    with pytest.raises(EdgefleetError, match="cannot open SQLite"):
        open_storage(f"sqlite:///{tmp_path}/junk.db")
    with pytest.raises(EdgefleetError, match="cannot connect to PostgreSQL"):
        open_storage("postgresql://nobody@127.0.0.1:1/none")


def test_v1_database_is_migrated_to_log_keys_keeping_its_records(db_url) -> None:
    from edgefleet.collect.storage import base

    s = open_storage(db_url)
    s.close()
    # Rebuild the database as schema v1 with records, as a collector of the previous release left it.
    s = open_storage(db_url)
    cls = type(s)
    s.close()
    if db_url.startswith("sqlite"):
        import sqlite3

        path = db_url[len("sqlite:///") :]
        import os

        os.unlink(path)
        conn = sqlite3.connect(path)
    else:
        import psycopg

        conn = psycopg.connect(db_url, autocommit=True)
        for t in (
            "readings",
            "events",
            "devices",
            "status_history",
            "acks",
            "dead_letter",
            "counters",
            "boot_counters",
            "schema_version",
        ):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ms BIGINT)")
    old = cls(conn)
    for sql in old.migration_statements(1, cls.migrations[0]):
        conn.execute(sql)
    ph = "?" if db_url.startswith("sqlite") else "%s"
    conn.execute(f"INSERT INTO schema_version VALUES (1, {ph})", (base.now_ms(),))
    conn.execute(f"INSERT INTO readings VALUES ('n1', 1, 5, 'env', 0, {ph}, 9)", ('{"t":1}',))
    conn.execute("INSERT INTO events VALUES ('n1', 2, 6, 0, 'class', 'x', 0.5, NULL, NULL, NULL, 9)")
    conn.execute("INSERT INTO devices (device, first_seen_ms, last_seen_ms, records) VALUES ('n1', 9, 9, 2)")
    conn.commit()
    conn.close()
    s = open_storage(db_url)
    try:
        assert s.schema_version() == 3
        assert s.counts()["readings"] == 1 and s.counts()["events"] == 1
        # the old records are log '' (v1); the same seq in a new log is a new record, in the old log a duplicate
        res = s.write(
            Batch(readings={"n1": [_reading("n1", 1, ""), _reading("n1", 1), _reading("n1", 2)]}, seen={"n1": 100})
        )
        assert (res.stored, res.duplicates) == (2, 1)
        (row,) = s.fleet()
        assert (row.records, row.logs) == (4, 2)
    finally:
        s.close()


def test_new_log_is_stored_and_shown_and_seq_jumps_are_anomalies(db_url) -> None:
    s = open_storage(db_url)
    try:
        old = [_reading("n1", q, "11111111", 100 + q) for q in (1, 2, 3, 5)]
        s.write(Batch(readings={"n1": old}, seen={"n1": 105}))
        # the board's log was erased: seq restarts at 1 under a new log id; then one hostile seq
        new = [_reading("n1", q, "22222222", 200 + q) for q in (1, 2, 4, 9_100_005)]
        res = s.write(Batch(readings={"n1": new}, seen={"n1": 300}))
        assert (res.stored, res.duplicates) == (4, 0)
        (row,) = s.fleet()
        assert (row.records, row.logs, row.log, row.log_since_ms) == (8, 2, "22222222", 201)
        assert row.missing == 2  # seq 4 of the old log, seq 3 of the new one; not 9 million
        assert row.seq_jumps == 1
        assert (row.min_seq, row.max_seq, row.gaps) == (1, 9_100_005, [(3, 3)])
    finally:
        s.close()


def test_dead_letter_table_is_capped_oldest_pruned(db_url) -> None:
    s = open_storage(db_url)
    s.dead_max_rows, s.dead_max_bytes = 5, 1000
    try:
        for i in range(8):
            s.write(Batch(dead=[(i, "edgefleet/x/telemetry", "malformed JSON", 100, bytes([i]) * 100)]))
        assert [d[0] for d in s.dead_letters()] == [3, 4, 5, 6, 7]
        assert s.counter("dead_letter_pruned") == 3
        res = s.write(Batch(dead=[(9, "edgefleet/x/telemetry", "big", 900, b"x" * 900)]))
        assert res.pruned == 4  # 5 * 100 + 900 bytes: the 4 oldest go, 7 and 9 make exactly 1000
        assert [d[0] for d in s.dead_letters()] == [7, 9]
        assert s.counter("dead_letter_pruned") == 7
    finally:
        s.close()


def test_readers_do_not_create_databases_and_two_slashes_are_refused(tmp_path) -> None:
    with pytest.raises(EdgefleetError, match="no database at"):
        open_storage(f"sqlite:///{tmp_path}/typo.db", create=False)
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(EdgefleetError, match="host part") as e:
        open_storage("sqlite://x.db")
    assert "sqlite:///x.db" in e.value.hint


def test_export_order_runs_each_flash_log_in_arrival_order(db_url) -> None:
    s = open_storage(db_url)
    try:
        # the log that arrived first is exported first, although its id sorts last
        new = [_reading("n1", q, "00000000", 500 + q) for q in (2, 1)]
        old = [_reading("n1", q, "ffffffff", 100 + q) for q in (3, 1, 2)]
        s.write(Batch(readings={"n1": new + old}, seen={"n1": 600}))
        assert [r[1] for r in s.iter_readings()] == [1, 2, 3, 1, 2]
    finally:
        s.close()
