"""The collector survives every payload and its database (issue 10 items 1-3) and acks what it stored (issue 11).

Real mosquitto, the collector as a subprocess (`edgefleet collect`), real SQLite, the real PostgreSQL cluster of
the session (stopped and started mid-run), a real full filesystem (a tmpfs mount with size=).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from netnode_harness import wait_until
from test_collector import CollectorProc, assert_exactly_once, publish_run, wait_count
from test_protocol_hostile import EVERY_TYPE, HOSTILE, JSON, _paths, _valid, _with

from edgefleet.collect.storage import open_storage
from edgefleet.sim import fleetsim as fs
from edgefleet.sim.fleetsim import Publisher, StoredListener
from edgefleet.wire import protocol

_wait = functools.partial(wait_until, every=0.1)  # the shared poll loop, at this file's pace


@pytest.fixture
def collectors(mqtt_broker, db_url, tmp_path):
    """`edgefleet collect` children on the test's broker and database, killed if a test leaves one running."""
    procs: list[CollectorProc] = []

    def make(client_id: str = "collector-1", *extra: str) -> CollectorProc:
        c = CollectorProc(mqtt_broker, db_url, tmp_path / f"{client_id}.log", client_id, *extra)
        procs.append(c)
        return c

    yield make
    for c in procs:
        if c.alive():
            c.proc.kill()
            c.proc.wait()


def _stored_seqs(db_url: str) -> dict[tuple[str, str], set[int]]:
    """(device, log) -> seqs in readings and events."""
    store = open_storage(db_url, create=False)
    try:
        out: dict[tuple[str, str], set[int]] = {}
        for table in ("readings", "events"):
            for d, lg, q in store.execute(f"SELECT device, log, seq FROM {table}").fetchall():
                out.setdefault((d, lg), set()).add(int(q))
        return out
    finally:
        store.close()


def _db_ready(db_url: str) -> None:
    _wait(lambda: _can_open(db_url), 30, "the collector's schema")


def _can_open(db_url: str) -> bool:
    try:
        open_storage(db_url, create=False).close()
        return True
    except Exception:
        return False


def _refuse_ts(db_url: str, ts: int) -> None:
    """Make the real database refuse one record for its data (a constraint), as NUL did on PostgreSQL."""
    store = open_storage(db_url, create=False)
    try:
        if db_url.startswith("sqlite"):
            store.execute(
                f"CREATE TRIGGER refuse BEFORE INSERT ON readings WHEN NEW.ts_ms = {ts} "
                "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        else:
            store.execute(f"ALTER TABLE readings ADD CONSTRAINT refuse CHECK (ts_ms <> {ts})")
        store.conn.commit()
    finally:
        store.close()


def test_hostile_payloads_and_a_refused_write_never_stop_collection(mqtt_broker, db_url, collectors) -> None:
    """The nine shapes of issue 10 (and NUL, control characters, a bad UTF-8 label...) are dead-lettered whole;
    a message the database refuses is dead-lettered and the rest of its batch stored; all acked."""
    c = collectors("collector-1").start()
    _db_ready(db_url)
    _refuse_ts(db_url, 666)
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-hostile")
    pub.publish("edgefleet/ok1/telemetry", fs.telemetry_payload("ok1", 1, 20))
    for kind, path, value, _reason in HOSTILE:
        pub.publish(f"edgefleet/n1/{kind}", json.dumps(_with(kind, path, value)).encode())
    # One batch: good, refused by the database (ts 666), good.
    refused = dict(fs.reading(21, 666))
    pub.publish("edgefleet/ok1/telemetry", fs.telemetry_payload("ok1", 1, 20))  # a redelivery: duplicates
    pub.publish("edgefleet/ok2/telemetry", protocol.encode(protocol.telemetry("ok2", [refused], log=fs.LOG)))
    pub.publish("edgefleet/ok1/telemetry", fs.telemetry_payload("ok1", 21, 20))
    pub.drain()
    counts = wait_count(db_url, "dead_letter", len(HOSTILE) + 1, timeout=30)
    counts = wait_count(db_url, "readings", 40, timeout=30)
    assert c.alive(), c.log.read_text()[-3000:]
    assert counts["readings"] == 40 and counts["dead_letter"] == len(HOSTILE) + 1
    store = open_storage(db_url, create=False)
    try:
        dead = store.dead_letters()
    finally:
        store.close()
    reasons = sorted(r for _, _, r, _, _ in dead)
    assert sorted([h[3] for h in HOSTILE] + ["storage refused"]) == sorted(
        "storage refused" if r.startswith("storage refused") else r for r in reasons
    )
    # dead-lettered whole: the payload as sent
    assert all(size == len(p) for _, _, _, size, p in dead)
    # Everything was acked: a restart gets no redelivery (no new dead letters, no duplicates beyond the one sent).
    assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got
    c.start()
    time.sleep(1.0)
    pub.publish("edgefleet/ok1/telemetry", fs.telemetry_payload("ok1", 41, 20))
    pub.drain()
    wait_count(db_url, "readings", 60, timeout=30)
    store = open_storage(db_url, create=False)
    try:
        assert store.counts()["dead_letter"] == len(HOSTILE) + 1
        assert {r.device: r.duplicates for r in store.fleet()}["ok1"] == 20
    finally:
        store.close()
    pub.close()
    assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got


KINDS = ("telemetry", "event", "status", "ack", "cmd")


@st.composite
def bad_message(draw) -> tuple[str, bytes]:
    """A valid message of some kind with one field replaced by any JSON value (hostile text included), a field
    removed, or truncated; or random bytes. Only what protocol.parse refuses is kept: all must be dead letters."""
    kind = draw(st.sampled_from(KINDS))
    obj = _valid(kind)
    how = draw(st.integers(0, 9))
    if how < 6:
        path = draw(st.sampled_from(_paths(obj)))
        raw = json.dumps(_with(kind, path, draw(EVERY_TYPE | JSON))).encode()
    elif how < 7:
        raw = json.dumps(obj).encode()[: draw(st.integers(1, 40))]
    elif how < 9:
        del obj[draw(st.sampled_from(sorted(k for k in obj if k != "args")))]
        raw = json.dumps(obj).encode()
    else:
        raw = draw(st.binary(max_size=64))
    topic = f"edgefleet/bad/{kind}"
    try:
        protocol.parse("edgefleet", topic, raw)
    except protocol.ProtocolError:
        return topic, raw
    assume(False)  # still valid: not a bad message
    raise AssertionError  # unreachable


def test_live_barrage_of_generated_bad_messages(mqtt_broker, db_url, collectors) -> None:
    """About 2,000 hypothesis-generated bad messages (40 examples x 50) interleaved with valid telemetry from two
    devices: the collector stays up, every bad message is a dead letter, every valid record is stored once."""
    c = collectors("collector-1").start()
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-barrage", inflight=200)
    seqs = {"g1": 1, "g2": 1}
    sent_bad = [0]

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(st.lists(bad_message(), min_size=50, max_size=50))
    def barrage(bad: list[tuple[str, bytes]]) -> None:  # fmt: skip
        for i, (topic, raw) in enumerate(bad):
            pub.publish(topic, raw)
            if i % 10 == 0:
                d = "g1" if seqs["g1"] <= seqs["g2"] else "g2"
                if seqs[d] <= 1000:
                    pub.publish(f"edgefleet/{d}/telemetry", fs.telemetry_payload(d, seqs[d], 20))
                    seqs[d] += 20
        sent_bad[0] += len(bad)

    barrage()
    for d in seqs:  # top up to exactly 1,000 readings per device whatever hypothesis ran
        while seqs[d] <= 1000:
            pub.publish(f"edgefleet/{d}/telemetry", fs.telemetry_payload(d, seqs[d], 20))
            seqs[d] += 20
    pub.drain()
    pub.close()
    assert sent_bad[0] >= 1000
    counts = wait_count(db_url, "dead_letter", sent_bad[0], timeout=60)
    counts = wait_count(db_url, "readings", 2000, timeout=60)
    assert c.alive(), c.log.read_text()[-3000:]
    assert counts["dead_letter"] == sent_bad[0]
    assert_exactly_once(db_url, ["g1", "g2"], 1000)
    assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got


# ---------------------------------------------------------------- database outages


def _outage_lines(log: Path) -> tuple[int, int, int]:
    text = log.read_text()
    return text.count("database unavailable"), text.count("database available again"), text.count("connected to")


def _run_with_outage(mqtt_broker, db_url, c: CollectorProc, outage, devices=("o1", "o2"), per_device=3000) -> None:
    """Publish paced traffic; `outage()` runs mid-run (it returns when the database is back)."""
    listener = StoredListener(mqtt_broker.host, mqtt_broker.port)
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-outage", inflight=200)
    progress = [0]
    t = threading.Thread(target=publish_run, args=(pub, list(devices), per_device * len(devices), progress, 4.0))
    t.start()
    _wait(lambda: progress[0] > per_device // 2, 30, "traffic")
    wait_count(db_url, "readings", 1)
    acks_before = len(listener.acks)
    outage(c, listener, acks_before)
    t.join()
    pub.drain()
    pub.close()
    wait_count(db_url, "readings", per_device * len(devices), timeout=60)
    assert c.alive(), c.log.read_text()[-3000:]
    assert_exactly_once(db_url, list(devices), per_device)
    down, back, connects = _outage_lines(c.log)
    assert (down, back, connects) == (1, 1, 1), c.log.read_text()[-3000:]  # one line each, MQTT session kept
    # After the outage, the stored acks cover exactly what is in the database.
    _wait(lambda: listener.seqs() == _stored_seqs(db_url), 20, "stored acks of every committed record")
    listener.close()
    assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got


def test_postgresql_restart_mid_run(mqtt_broker, pg_cluster, tmp_path) -> None:
    db_url = pg_cluster.new_database()
    c = CollectorProc(mqtt_broker, db_url, tmp_path / "c.log").start()

    def outage(c, listener, acks_before) -> None:
        pg_cluster.stop_server()
        try:
            _wait(lambda: _outage_lines(c.log)[0] == 1, 30, "the outage log line")
            time.sleep(2.0)
            assert c.alive()
        finally:
            pg_cluster.start_server()

    try:
        _run_with_outage(mqtt_broker, db_url, c, outage)
    finally:
        if c.alive():
            c.proc.kill()
            c.proc.wait()


def test_sqlite_locked_for_long(mqtt_broker, tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path}/fleet.db"
    c = CollectorProc(mqtt_broker, db_url, tmp_path / "c.log", "collector-1", "--db-timeout", "0.5").start()

    def outage(c, listener, acks_before) -> None:
        conn = sqlite3.connect(tmp_path / "fleet.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # another writer holds the write lock for 4 s
        try:
            _wait(lambda: _outage_lines(c.log)[0] == 1, 30, "the outage log line")
            n = len(listener.acks)
            time.sleep(3.0)
            assert len(listener.acks) == n, "a stored ack was published while nothing could be committed"
        finally:
            conn.execute("ROLLBACK")
            conn.close()

    try:
        _run_with_outage(mqtt_broker, db_url, c, outage)
    finally:
        if c.alive():
            c.proc.kill()
            c.proc.wait()


@pytest.fixture
def small_fs(tmp_path):
    """A real 4 MB filesystem (tmpfs with size=), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk(mqtt_broker, small_fs, tmp_path) -> None:
    db_url = f"sqlite:///{small_fs}/fleet.db"
    c = CollectorProc(mqtt_broker, db_url, tmp_path / "c.log").start()

    def outage(c, listener, acks_before) -> None:
        filler = small_fs / "filler"
        with filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # ENOSPC: the disk is full
        try:
            _wait(lambda: _outage_lines(c.log)[0] == 1, 30, "the outage log line")
            time.sleep(1.0)
        finally:
            os.unlink(filler)

    try:
        _run_with_outage(mqtt_broker, db_url, c, outage, per_device=2000)
    finally:
        if c.alive():
            c.proc.kill()
            c.proc.wait()


# ---------------------------------------------------------------- end-to-end `stored` acks (issue 11)


def test_stored_acks_cover_exactly_what_was_committed(mqtt_broker, tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path}/fleet.db"
    c = CollectorProc(mqtt_broker, db_url, tmp_path / "c.log").start()
    listener = StoredListener(mqtt_broker.host, mqtt_broker.port)
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-acks")
    for first in range(1, 200, 20):
        pub.publish("edgefleet/a1/telemetry", fs.telemetry_payload("a1", first, 20))
    pub.publish("edgefleet/a1/telemetry", fs.telemetry_payload("a1", 1, 20))  # redelivery: acked again
    pub.publish("edgefleet/a1/event", fs.event_payload("a1", [fs.event(500), fs.event(502)]))
    pub.publish("edgefleet/a2/telemetry", fs.telemetry_payload("a2", 1, 5, log="ffffffff"))
    pub.publish("edgefleet/a3/telemetry", fs.telemetry_payload("a3", 1, 5, log=None))  # v1: no ack
    bad = protocol.telemetry("a2", [{**fs.reading(9, 1), "sensor": []}], log="ffffffff")  # dead letter, readable
    pub.publish("edgefleet/a2/telemetry", json.dumps(bad).encode())
    pub.drain()
    pub.close()
    want = {("a1", fs.LOG): set(range(1, 201)) | {500, 502}, ("a2", "ffffffff"): {1, 2, 3, 4, 5, 9}}
    _wait(lambda: listener.seqs() == want, 20, f"acks {want}")
    stored = _stored_seqs(db_url)
    assert stored[("a1", fs.LOG)] == want[("a1", fs.LOG)] and stored[("a3", "")] == set(range(1, 6))
    # batched: far fewer acks than records, each with merged ranges
    assert len(listener.acks) < 40
    assert all(a <= b for _, _, ranges, _, _ in listener.acks for a, b in ranges)
    listener.close()
    assert c.stop() == -signal.SIGINT  # drained, then died by the SIGINT it got


def test_shared_group_each_collector_acks_only_what_it_committed(mqtt_broker, tmp_path) -> None:
    """Two collectors in one $share group, each with its own database, so what each committed is known."""
    dbs = [f"sqlite:///{tmp_path}/fleet{i}.db" for i in (1, 2)]
    cs = [CollectorProc(mqtt_broker, dbs[i], tmp_path / f"c{i}.log", f"c{i}", "--group", "g").start() for i in (0, 1)]
    listener = StoredListener(mqtt_broker.host, mqtt_broker.port)
    pub = Publisher(mqtt_broker.host, mqtt_broker.port, "pub-share")
    try:
        publish_run(pub, ["s1", "s2", "s3"], 6000)
        pub.drain()
        _wait(
            lambda: sum(len(v) for db in dbs if _can_open(db) for v in _stored_seqs(db).values()) == 6000,
            60,
            "every record",
        )
        per = [_stored_seqs(db) for db in dbs]
        assert all(per), "the shared subscription gave one collector nothing: the test proves nothing"
        _wait(lambda: listener.seqs("c0") == per[0] and listener.seqs("c1") == per[1], 20, "each collector's acks")
    finally:
        pub.close()
        listener.close()
        for c in cs:
            c.stop()
