"""Storage backends (SQLite and a real PostgreSQL): migrations, record identity across tables, dead letters."""

from __future__ import annotations

import pytest

from edgefleet.errors import EdgefleetError
from edgefleet.storage import Batch, open_storage


def _reading(dev: str, seq: int) -> tuple:
    return (dev, seq, 1000 + seq, "env", 0, '{"t":1.5}', 99)


def _event(dev: str, seq: int) -> tuple:
    return (dev, seq, 1000 + seq, 0, "class", "idle", 0.5, None, None, None, 99)


def test_migrations_run_once_and_reopen(db_url) -> None:
    s = open_storage(db_url)
    assert s.schema_version() == len(s.migrations) == 1
    s.close()
    s = open_storage(db_url)  # reopening applies nothing and keeps data
    try:
        assert s.schema_version() == 1
        rows = s.execute("SELECT count(*) FROM schema_version").fetchone()
        assert rows[0] == 1
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
